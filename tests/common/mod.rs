//! What the end-to-end tests share beyond `opcenter_sim::harness`: the one test secret
//! and its tokens, a server inside the test process or the real binary on port 0 with
//! its own data directory, the usual clients (tablet, console) and a one-shot HTTP call.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use opcenter_proto::auth::{Claims, Role, mint_token};
use opcenter_sim::harness::{self, ServerProcess};
pub(crate) mod eido;

pub(crate) use opcenter_sim::harness::{Client, Got, WAIT};
use opcenter_sim::http::HttpClient;
pub(crate) use opcenter_sim::wire::Encoding;

/// The secret every test server uses.
pub(crate) const SECRET: &str = "e2e-test-secret-of-at-least-32-bytes";

pub(crate) fn now_s() -> u64 {
    opcenter_sim::wire::now_ms() / 1000
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
    harness::config_toml(data_dir, SECRET, extra)
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
        Self::start_tuned(dir, extra, |_| {}).await
    }

    /// Starts over `dir` with settings `tune` adjusts after loading (for keys in
    /// `[storage]`, which `extra` cannot reopen).
    pub(crate) async fn start_tuned(
        dir: tempfile::TempDir,
        extra: &str,
        tune: impl FnOnce(&mut opcenter_hub::Settings),
    ) -> TestServer {
        let mut settings = opcenter_hub::Settings::from_toml(&config_toml(dir.path(), extra)).unwrap();
        // `hub.reads_nice` is niceness against the whole machine: on a shared CI box
        // the read-model thread would wait behind unrelated processes (compilers, other
        // tests), not behind this server, and its large snapshots would miss `WAIT`.
        // Tests check what is served, not when; the unit test in read_model.rs checks
        // the priority itself.
        settings.hub.reads_nice = 0;
        tune(&mut settings);
        // After an in-process stop the old server's last sessions may hold the data
        // directory's lock for a moment longer (a process exit would release it at
        // once): a restart waits for it rather than failing.
        let started = std::time::Instant::now();
        let server = loop {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            match opcenter_hub::Server::start(listener, settings.clone()).await {
                Ok(server) => break server,
                Err(opcenter_hub::HubError::Locked(e)) if started.elapsed() < Duration::from_secs(20) => {
                    eprintln!("data dir still locked by the stopped server ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("server start: {e}"),
            }
        };
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

    /// `HOST:PORT`, what [`Client::connect`] takes.
    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
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
    process: ServerProcess,
    pub(crate) addr: SocketAddr,
    pub(crate) config: PathBuf,
}

impl BinServer {
    /// Starts `opcenter serve` over `data_dir` and waits for `listening on`.
    pub(crate) fn start(data_dir: &Path, extra: &str) -> BinServer {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`BinServer::start`] with extra environment variables.
    pub(crate) fn start_with_env(data_dir: &Path, extra: &str, env: &[(&str, &str)]) -> BinServer {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, config_toml(data_dir, extra)).unwrap();
        let process = ServerProcess::start_with_env(Path::new(env!("CARGO_BIN_EXE_opcenter")), &config, env)
            .expect("server printed `listening on`");
        BinServer {
            addr: process.addr,
            process,
            config,
        }
    }

    /// `HOST:PORT`, what [`Client::connect`] takes.
    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The server's process id (`opcenter sim --pid`).
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILL.
    pub(crate) fn kill9(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then wait for exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate().unwrap()
    }

    /// Waits (up to 60 s) until `/healthz` says `ok active`: an engine node of a
    /// region on NATS restarted after kill -9 stands by until its old lease lapses.
    pub(crate) async fn wait_active(&self) {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = http(self.addr, "GET", "/healthz", None, None).await;
            if status == 200 && body == "ok active\n" {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "not active: /healthz {status} {body:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) with `kill(1)`.
    pub(crate) fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits up to `within` for the server to exit by itself.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(within)
    }
}

/// A tablet that is available at `(lat, lon)`.
pub(crate) async fn tablet(server: &str, enc: Encoding, unit: &str, lat: f64, lon: f64) -> Client {
    tablet_with(server, enc, &unit_token(unit), lat, lon).await
}

pub(crate) async fn tablet_with(server: &str, enc: Encoding, token: &str, lat: f64, lon: f64) -> Client {
    let (mut c, _) = Client::login(server, enc, token).await;
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
pub(crate) async fn console(server: &str, enc: Encoding) -> (Client, Value) {
    let (mut c, _) = Client::login(server, enc, &token(Role::Dispatcher, "d1")).await;
    let ok = c
        .request(json!({"type":"subscribe","topics":["incidents","units"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    (c, ok)
}

/// Sends pipelined creates with ids 1..=20 000 in bursts of 16 until the socket
/// breaks: the load of the `kill -9` tests.
pub(crate) fn spawn_create_burst<S>(mut sink: S) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Sink<tokio_tungstenite::tungstenite::Message> + Unpin + Send + 'static,
{
    use futures_util::SinkExt;
    tokio::spawn(async move {
        for i in 1..=20_000u64 {
            let mut body = create(
                51.2 + (i % 100) as f64 * 0.001,
                51.3 + (i / 100 % 100) as f64 * 0.001,
            );
            body["id"] = json!(i);
            let frame = tokio_tungstenite::tungstenite::Message::Text(body.to_string().into());
            if sink.feed(frame).await.is_err() {
                return;
            }
            if i % 16 == 0 {
                if sink.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let _ = sink.flush().await;
    })
}

/// Sends `n` pipelined creates with ids 1..=n (a flush and a `pause` every 8),
/// stopping early if the socket breaks; hands the sink back at the end.
pub(crate) fn spawn_pipelined_creates<S>(sink: S, n: u64, pause: Duration) -> tokio::task::JoinHandle<S>
where
    S: futures_util::Sink<tokio_tungstenite::tungstenite::Message> + Unpin + Send + 'static,
{
    spawn_pipelined_creates_from(sink, 1, n, pause)
}

/// [`spawn_pipelined_creates`] with ids (and places) `first..first + n`.
pub(crate) fn spawn_pipelined_creates_from<S>(
    mut sink: S,
    first: u64,
    n: u64,
    pause: Duration,
) -> tokio::task::JoinHandle<S>
where
    S: futures_util::Sink<tokio_tungstenite::tungstenite::Message> + Unpin + Send + 'static,
{
    use futures_util::SinkExt;
    tokio::spawn(async move {
        for i in first..first + n {
            let mut body = create(51.2 + (i % 100) as f64 * 0.001, 51.3 + (i / 100) as f64 * 0.001);
            body["id"] = json!(i);
            let frame = tokio_tungstenite::tungstenite::Message::Text(body.to_string().into());
            if sink.feed(frame).await.is_err() {
                return sink;
            }
            if i % 8 == 0 {
                let _ = sink.flush().await;
                tokio::time::sleep(pause).await;
            }
        }
        let _ = sink.flush().await;
        sink
    })
}

/// An incident.create body at `(lat, lon)`.
pub(crate) fn create(lat: f64, lon: f64) -> Value {
    json!({"type":"incident.create","category":"theft","priority":2,"location":{"lat":lat,"lon":lon}})
}

/// `GET /v1/incidents/{id}` as `role` (token subject `sub`); returns (status, body).
pub(crate) async fn incident_over_http(addr: SocketAddr, id: &str, role: Role, sub: &str) -> (u16, String) {
    let path = format!("/v1/incidents/{id}");
    http(addr, "GET", &path, Some(&token(role, sub)), None).await
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let r = HttpClient::new(&addr.to_string())
        .request(method, path, token, body.map(str::as_bytes))
        .await
        .expect("an HTTP response");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}
