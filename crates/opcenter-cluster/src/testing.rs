//! Real `nats-server` processes for tests and benchmarks: a single JetStream node or
//! a 3-node cluster (for R3 streams) on free loopback ports, each with its own temp
//! store directory. Owns starting, readiness (JetStream up, meta leader elected),
//! `kill -9`, restart and cleanup on drop; must never be used by production code.
//!
//! ```no_run
//! let Some(nats) = opcenter_cluster::testing::NatsCluster::start_or_skip(3) else { return };
//! let urls = nats.urls(); // "nats://127.0.0.1:p1,nats://127.0.0.1:p2,..."
//! ```

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the `nats-server` binary (else it is looked up on `PATH`).
pub const NATS_SERVER_ENV: &str = "OPCENTER_NATS_SERVER";

/// How long [`NatsCluster::wait_ready`] waits by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A multi-threaded runtime with one worker, for tests that drive async NATS calls
/// from a plain `#[test]` (the journal's blocking calls run beside it).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("start a tokio runtime")
}

/// The `nats-server` binary, if installed.
pub fn nats_server_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(NATS_SERVER_ENV) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// One server of a [`NatsCluster`].
#[derive(Debug)]
pub struct NatsNode {
    /// Its `server_name` (`n0`, `n1`, ...), as stream info reports leaders.
    pub name: String,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Monitoring (HTTP) port on 127.0.0.1.
    pub http_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Whether its process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A set of `nats-server` processes with JetStream; killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<NatsNode>,
    // Dropped last: the servers' store directories and logs.
    dir: tempfile::TempDir,
}

/// `n` distinct free loopback ports (held together while picking so none repeats).
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// GET `path` on the monitoring port; `(status, body)`.
fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

impl NatsCluster {
    /// Starts `n` servers (1 = a single node; more = one cluster with routes between
    /// all of them) and waits until they are ready. `Ok(None)` if nats-server is not
    /// installed.
    pub fn start(n: usize) -> io::Result<Option<NatsCluster>> {
        let Some(bin) = nats_server_path() else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new().prefix("opc-nats-").tempdir()?;
        let ports = free_ports(n * 3)?;
        let routes: Vec<String> = (0..n)
            .map(|i| format!("\"nats-route://127.0.0.1:{}\"", ports[3 * i + 2]))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            let (port, http_port, route_port) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let store = dir.path().join(&name);
            fs::create_dir_all(&store)?;
            let mut conf = format!(
                "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http_port}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n",
                store.display()
            );
            if n > 1 {
                let others: Vec<&str> = routes
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, r)| r.as_str())
                    .collect();
                // `no_advertise`: a client knows only the URLs it was given (no
                // discovered servers), so one URL and a stopped server is a partition.
                conf.push_str(&format!(
                    "cluster {{ name: \"opc\"\n listen: \"127.0.0.1:{route_port}\"\n no_advertise: true\n routes: [{}] }}\n",
                    others.join(", ")
                ));
            }
            let conf_path = dir.path().join(format!("{name}.conf"));
            fs::write(&conf_path, conf)?;
            nodes.push(NatsNode {
                log: dir.path().join(format!("{name}.log")),
                name,
                port,
                http_port,
                conf: conf_path,
                child: None,
            });
        }
        let mut c = NatsCluster { bin, nodes, dir };
        for i in 0..n {
            c.spawn(i)?;
        }
        c.wait_ready(READY_TIMEOUT)?;
        Ok(Some(c))
    }

    /// [`start`](Self::start), printing why and returning `None` when nats-server is
    /// not installed (the test then returns early: a visible skip), except under
    /// CI (`CI` set), where that panics. Panics if an installed server fails to start.
    pub fn start_or_skip(n: usize) -> Option<NatsCluster> {
        match NatsCluster::start(n) {
            Ok(Some(c)) => Some(c),
            // CI installs it: a skip there would hide every cluster test.
            Ok(None) if std::env::var_os("CI").is_some() => {
                panic!("nats-server is not installed, and CI is set: the cluster tests must run")
            }
            Ok(None) => {
                eprintln!(
                    "SKIPPED: nats-server is not installed (apt-get install nats-server, or set {NATS_SERVER_ENV})"
                );
                None
            }
            Err(e) => panic!("nats-server did not start: {e}"),
        }
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// The servers.
    pub fn nodes(&self) -> &[NatsNode] {
        &self.nodes
    }

    /// Client URLs of all servers, comma-separated (async-nats takes the list).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsNode::url).collect::<Vec<_>>().join(",")
    }

    /// Index of the server with `server_name` `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The temp directory holding store dirs, configs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// `kill -9` server `i` and reap it.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill()?; // SIGKILL on unix
            c.wait()?;
        }
        Ok(())
    }

    /// Starts server `i` again on the same ports and store, and waits until every
    /// running server is ready.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        self.spawn(i)?;
        self.wait_ready(READY_TIMEOUT)
    }

    /// Waits until every running server answers `/healthz` with ok and, in a cluster,
    /// knows the JetStream meta leader.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let clustered = self.nodes.len() > 1;
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            loop {
                if let Some(status) = self.nodes[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    self.nodes[i].child = None;
                    return Err(io::Error::other(format!(
                        "nats-server {} exited ({status}):\n{}",
                        self.nodes[i].name,
                        self.log(i)
                    )));
                }
                if self.node_ready(i, clustered) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nats-server {} not ready in {timeout:?}:\n{}",
                            self.nodes[i].name,
                            self.log(i)
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn node_ready(&self, i: usize, clustered: bool) -> bool {
        let port = self.nodes[i].http_port;
        let healthy = matches!(http_get(port, "/healthz"), Ok((200, body)) if body.contains("ok"));
        if !healthy {
            return false;
        }
        if !clustered {
            return true;
        }
        let Ok((200, body)) = http_get(port, "/jsz") else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/meta_cluster/leader")?.as_str().map(|l| !l.is_empty()))
            .unwrap_or(false)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
    }
}

/// A TCP relay in front of one server, on a loopback port of its own, that can
/// stop passing one connection's bytes on: after [`Relay::freeze`]`(i)`, what the
/// `i`-th connection's client sends is no longer read or passed to the server,
/// while the server's bytes still reach the client (a connection stuck one way).
/// Other connections pass freely. Threads of its own, so any runtime (or none)
/// may drive its clients; a frozen connection's thread ends when the relay is dropped.
#[derive(Debug)]
pub struct Relay {
    port: u16,
    frozen: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// Starts relaying connections to `127.0.0.1:server_port`.
    pub fn start(server_port: u16) -> io::Result<Relay> {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let relay = Relay {
            port,
            frozen: Default::default(),
            accepted: Default::default(),
            dropped: Default::default(),
        };
        let (frozen, accepted, dropped) = (
            relay.frozen.clone(),
            relay.accepted.clone(),
            relay.dropped.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let i = accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    continue;
                };
                let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let (frozen, dropped) = (frozen.clone(), dropped.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_in.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while frozen.lock().unwrap_or_else(|e| e.into_inner()).contains(&i) {
                            if dropped.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        if server_out.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
                let (mut server_in, mut client_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = io::copy(&mut server_in, &mut client_out);
                    let _ = client_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(relay)
    }

    /// `nats://127.0.0.1:<port>` of the relay.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops passing on what the `i`-th accepted connection (0-based) sends; the
    /// bytes already read are held, nothing more is read from it.
    pub fn freeze(&self, i: usize) {
        self.frozen.lock().unwrap_or_else(|e| e.into_inner()).push(i);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.dropped.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
