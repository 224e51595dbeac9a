//! The harness the end-to-end tests and the benchmarks share: start the real `opcenter`
//! binary on port 0 and learn its address from its `listening on HOST:PORT` line, the
//! configuration such a server starts from, and a WebSocket client at the level of JSON
//! values that waits for replies by id and reads close codes.
//!
//! Owns: running a server process for a test or a benchmark, and the test client. Must
//! never: leave a server running (dropping a [`ServerProcess`] kills it, also when an
//! assertion panics), use a fixed port, or serve the load tool's measuring paths: the
//! [`Client`] panics on anything unexpected, which is what a test wants and a load tool
//! does not.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::wire::{self, Encoding, Ws};

/// How long a server may take to print `listening on` (a cold start replays the journal).
pub const START_WITHIN: Duration = Duration::from_secs(30);

/// How long a test waits for an expected frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The TOML a server under test starts from: port 0, `data_dir`, `secret`, a short
/// graceful-shutdown bound (a test waits for it), then `extra` (it may add tables
/// other than `[server]`, `[storage]` and `[auth]`).
pub fn config_toml(data_dir: &Path, secret: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_s = 5\n\
         [storage]\ndata_dir = {:?}\n\
         [auth]\njwt_secret = \"{secret}\"\n{extra}\n",
        data_dir.display().to_string()
    )
}

/// `opcenter serve` as a child process; killed (SIGKILL) and reaped on drop.
pub struct ServerProcess {
    child: Child,
    /// The address it printed on `listening on`.
    pub addr: SocketAddr,
    /// Time from spawn to the `listening on` line.
    pub ready_after: Duration,
}

impl ServerProcess {
    /// Spawns `bin serve --config config` (logging at `warn`, stderr inherited) and waits
    /// up to [`START_WITHIN`] for its `listening on` line.
    pub fn start(bin: &Path, config: &Path) -> anyhow::Result<ServerProcess> {
        Self::spawn(bin, config, &[], Stdio::inherit())
    }

    /// [`ServerProcess::start`] with extra environment variables (test-only switches).
    pub fn start_with_env(bin: &Path, config: &Path, env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        Self::spawn(bin, config, env, Stdio::inherit())
    }

    /// Like [`ServerProcess::start`], with the server's stderr written to `log` (a
    /// test reads from it why the server stopped).
    pub fn start_logged(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<ServerProcess> {
        let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        Self::spawn(bin, config, &[], Stdio::from(file))
    }

    fn spawn(
        bin: &Path,
        config: &Path,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> anyhow::Result<ServerProcess> {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        // Built before waiting, so an error below still kills the child on drop.
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_after: Duration::ZERO,
        };
        // A thread reads the line (so a silent server times out instead of hanging the
        // caller), then keeps draining stdout so the server never blocks writing to it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(addr) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(START_WITHIN)
            .map_err(|e| anyhow!("no `listening on` line from the server ({e})"))?;
        server.ready_after = started.elapsed();
        server.addr = addr.parse().with_context(|| format!("address {addr:?}"))?;
        Ok(server)
    }

    /// The server's OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `within` for the server to exit by itself; its status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap: a crash, no graceful stop.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit: the operator's graceful stop.
    pub fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a read produced.
#[derive(Debug)]
pub enum Got {
    /// A data frame, decoded.
    Frame(Value),
    /// The connection ended, with the close code if the server sent one.
    Closed(Option<u16>),
}

/// A WebSocket client of one encoding that speaks in JSON values and panics on anything
/// unexpected (a failed connect, a frame that does not decode, a missing reply).
pub struct Client {
    /// The socket, for tests that write raw frames or split it.
    pub ws: Ws,
    /// The session's encoding.
    pub enc: Encoding,
    next_id: u64,
    /// Frames that arrived while [`Client::request`] waited for its reply.
    backlog: VecDeque<Value>,
}

impl Client {
    /// Opens the WebSocket of `server` (`HOST:PORT`) without saying hello.
    pub async fn connect(server: &str, enc: Encoding) -> Client {
        Client {
            ws: wire::open(server).await.expect("connect"),
            enc,
            next_id: 1,
            backlog: VecDeque::new(),
        }
    }

    /// Connects and says hello; panics unless `ok`. Returns the ok reply.
    pub async fn login(server: &str, enc: Encoding, token: &str) -> (Client, Value) {
        let mut c = Client::connect(server, enc).await;
        let ok = c
            .request(json!({"type":"hello","token":token,"protocol":1}))
            .await;
        assert_eq!(ok["type"], "ok", "hello failed: {ok}");
        (c, ok)
    }

    /// `v` as a frame of the session's encoding.
    pub fn encode(&self, v: &Value) -> Message {
        self.enc.encode(v)
    }

    /// Sends `v` as is.
    pub async fn send(&mut self, v: Value) {
        let m = self.encode(&v);
        self.ws.send(m).await.expect("send");
    }

    /// Sends any frame, ignoring a failure (the server may already have closed).
    pub async fn send_raw(&mut self, m: Message) {
        let _ = self.ws.send(m).await;
    }

    /// Sends `v` with a fresh `id` and waits for the reply with that id; frames that
    /// arrive meanwhile are kept for [`Client::recv`] (events may precede their
    /// command's reply).
    pub async fn request(&mut self, mut v: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.send(v).await;
        let mut skipped = Vec::new();
        let reply = loop {
            let f = self.recv().await;
            if (f["type"] == "ok" || f["type"] == "error") && f["id"] == json!(id) {
                break f;
            }
            skipped.push(f);
        };
        self.backlog.extend(skipped);
        reply
    }

    /// Next frame or close, within [`WAIT`].
    pub async fn next(&mut self) -> Got {
        self.next_within(WAIT).await.expect("a frame within the wait")
    }

    /// Next frame or close, or `None` if nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Got> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None | Some(Err(_))) => return Some(Got::Closed(None)),
                Ok(Some(Ok(m))) => m,
            };
            match m {
                Message::Close(f) => return Some(Got::Closed(f.map(|f| u16::from(f.code)))),
                Message::Text(_) | Message::Binary(_) => {
                    let v = wire::decode(&m).unwrap_or_else(|| panic!("undecodable frame {m:?}"));
                    return Some(Got::Frame(v));
                }
                _ => continue,
            }
        }
    }

    /// The next frame (kept ones first); panics if the connection closes.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        match self.next().await {
            Got::Frame(v) => v,
            Got::Closed(c) => panic!("closed ({c:?}) while waiting for a frame"),
        }
    }

    /// The first frame for which `pred` holds, dropping the others.
    pub async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Waits for an event of `topic` with `change` (any change if None).
    pub async fn event(&mut self, topic: &str, change: Option<&str>) -> Value {
        self.recv_until(|f| {
            f["type"] == "event" && f["topic"] == topic && change.is_none_or(|c| f["change"] == c)
        })
        .await
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Got::Closed(code) => return code,
                Got::Frame(_) => continue,
            }
        }
    }
}
