//! Shared helpers of the end-to-end tests: a server on port 0 (in-process or
//! the real binary) with its own data directory, tokens, and a WebSocket client
//! that speaks JSON or MessagePack the way an outside client would.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use opcenter_proto::auth::{Claims, Role, mint_token};

/// The secret every test server uses.
pub(crate) const SECRET: &str = "e2e-test-secret";

/// How long a test waits for an expected frame before failing.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) fn token(role: Role, sub: &str) -> String {
    mint_token(SECRET.as_bytes(), &Claims::new(sub, role, now_s(), 3600))
}

pub(crate) fn unit_token(unit: &str) -> String {
    mint_token(SECRET.as_bytes(), &Claims::unit(unit, now_s(), 3600))
}

pub(crate) fn unit_token_with_caps(unit: &str, caps: &[&str]) -> String {
    let mut c = Claims::unit(unit, now_s(), 3600);
    c.caps = Some(caps.iter().map(|s| s.to_string()).collect());
    mint_token(SECRET.as_bytes(), &c)
}

/// The TOML every test server starts from, plus `extra` (later keys win).
pub(crate) fn config_toml(data_dir: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_s = 5\n\
         [storage]\ndata_dir = {:?}\n\
         [auth]\njwt_secret = \"{SECRET}\"\n{extra}\n",
        data_dir.display().to_string()
    )
}

/// A server running inside the test process.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts on port 0 with a fresh data dir and `extra` TOML.
    pub(crate) async fn start(extra: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    /// Starts over an existing data dir.
    pub(crate) async fn start_in(dir: tempfile::TempDir, extra: &str) -> TestServer {
        let settings = opcenter_hub::Settings::from_toml(&config_toml(dir.path(), extra)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = opcenter_hub::Server::start(listener, settings).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns the data dir for a restart.
    pub(crate) async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("shutdown in time")
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub(crate) fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The real binary, started with `serve --config`, killed on drop.
pub(crate) struct BinServer {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) config: PathBuf,
}

impl BinServer {
    /// Starts `opcenter serve` over `data_dir` and waits for `listening on`.
    pub(crate) fn start(data_dir: &Path, extra: &str) -> BinServer {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, config_toml(data_dir, extra)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_opcenter"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server printed `listening on`");
        BinServer {
            child,
            addr: addr.parse().unwrap(),
            config,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// SIGKILL.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Enc {
    Json,
    MsgPack,
}

/// A WebSocket client speaking one encoding.
pub(crate) struct Client {
    pub(crate) ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub(crate) enc: Enc,
    next_id: u64,
    /// Frames that arrived while [`Client::request`] waited for its reply.
    backlog: std::collections::VecDeque<Value>,
}

/// What a read produced.
#[derive(Debug)]
pub(crate) enum Got {
    Frame(Value),
    Closed(Option<u16>),
}

impl Client {
    pub(crate) async fn connect(url: &str, enc: Enc) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        Client {
            ws,
            enc,
            next_id: 1,
            backlog: Default::default(),
        }
    }

    /// Connects and says hello; panics unless `ok`. Returns the ok reply.
    pub(crate) async fn login(url: &str, enc: Enc, token: &str) -> (Client, Value) {
        let mut c = Client::connect(url, enc).await;
        let ok = c
            .request(json!({"type":"hello","token":token,"protocol":1}))
            .await;
        assert_eq!(ok["type"], "ok", "hello failed: {ok}");
        (c, ok)
    }

    pub(crate) fn encode(&self, v: &Value) -> Message {
        match self.enc {
            Enc::Json => Message::Text(v.to_string().into()),
            Enc::MsgPack => Message::Binary(rmp_serde::to_vec_named(v).unwrap().into()),
        }
    }

    pub(crate) async fn send(&mut self, v: Value) {
        let m = self.encode(&v);
        self.ws.send(m).await.expect("send");
    }

    pub(crate) async fn send_raw(&mut self, m: Message) {
        let _ = self.ws.send(m).await;
    }

    /// Sends `v` with a fresh `id` and waits for the reply with that id (events
    /// that arrive meanwhile are skipped).
    pub(crate) async fn request(&mut self, mut v: Value) -> Value {
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
        // Keep what arrived meanwhile (events may precede their command's reply).
        self.backlog.extend(skipped);
        reply
    }

    /// Next frame or close, within [`WAIT`].
    pub(crate) async fn next(&mut self) -> Got {
        self.next_within(WAIT).await.expect("a frame within the wait")
    }

    pub(crate) async fn next_within(&mut self, wait: Duration) -> Option<Got> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Got::Closed(None)),
                Ok(Some(Err(_))) => return Some(Got::Closed(None)),
                Ok(Some(Ok(m))) => m,
            };
            match m {
                Message::Text(t) => return Some(Got::Frame(serde_json::from_str(t.as_str()).unwrap())),
                Message::Binary(b) => return Some(Got::Frame(rmp_serde::from_slice(&b).unwrap())),
                Message::Close(f) => return Some(Got::Closed(f.map(|f| u16::from(f.code)))),
                _ => continue,
            }
        }
    }

    pub(crate) async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        match self.next().await {
            Got::Frame(v) => v,
            Got::Closed(c) => panic!("closed ({c:?}) while waiting for a frame"),
        }
    }

    pub(crate) async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Waits for an event of `topic` with `change` (any change if None).
    pub(crate) async fn event(&mut self, topic: &str, change: Option<&str>) -> Value {
        self.recv_until(|f| {
            f["type"] == "event" && f["topic"] == topic && change.is_none_or(|c| f["change"] == c)
        })
        .await
    }

    /// Reads until the server closes; returns the close code.
    pub(crate) async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Got::Closed(code) => return code,
                Got::Frame(_) => continue,
            }
        }
    }
}

/// Close code as a number.
pub(crate) fn code(c: CloseCode) -> u16 {
    c.into()
}

/// A tablet that is available at `(lat, lon)`.
pub(crate) async fn tablet(url: &str, enc: Enc, unit: &str, lat: f64, lon: f64) -> Client {
    tablet_with(url, enc, &unit_token(unit), lat, lon).await
}

pub(crate) async fn tablet_with(url: &str, enc: Enc, token: &str, lat: f64, lon: f64) -> Client {
    let (mut c, _) = Client::login(url, enc, token).await;
    let ok = c
        .request(json!({"type":"subscribe","topics":["assignments"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = c
        .request(json!({"type":"unit.status","status":"available"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = c
        .request(json!({"type":"unit.position","lat":lat,"lon":lon}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    c
}

/// A dispatcher console subscribed to incidents and units.
pub(crate) async fn console(url: &str, enc: Enc) -> (Client, Value) {
    let (mut c, _) = Client::login(url, enc, &token(Role::Dispatcher, "d1")).await;
    let ok = c
        .request(json!({"type":"subscribe","topics":["incidents","units"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    (c, ok)
}

/// An incident.create body at `(lat, lon)`.
pub(crate) fn create(lat: f64, lon: f64) -> Value {
    json!({"type":"incident.create","category":"theft","priority":2,"location":{"lat":lat,"lon":lon}})
}

/// Plain HTTP/1.1 request over a fresh connection; returns (status, body).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    if let Some(b) = body {
        let _ = s.write_all(b.as_bytes()).await;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Bodies here are small and unchunked except when hyper chunks them.
    (status, dechunk(&body))
}

fn dechunk(body: &str) -> String {
    let trimmed = body.trim_start();
    if trimmed.starts_with('{') || trimmed.is_empty() || !trimmed.contains("\r\n") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((len, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            break;
        }
        out.push_str(&after[..n.min(after.len())]);
        rest = after.get(n + 2..).unwrap_or("");
    }
    out
}
