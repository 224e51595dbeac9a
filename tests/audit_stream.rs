//! The audit chain on a region's NATS stream, end to end with real `opcenter serve`
//! processes over a real nats-server: an engine and a hub chain every record (the
//! engine's takeover marker included), `opcenter audit verify|head|show --nats
//! --region` read it, the actor of a command sent through the hub names the hub's
//! session, and so does the engine's refused-action log line for a command it
//! refused; a forged stream (one record's bytes changed, every hash left as
//! written) is named by `audit verify`, stops an engine from starting, and
//! `--accept-broken-chain` starts it anyway, logging the break loudly. `opcenter
//! report --nats/--region` and `--config` read the running region's stream and
//! give the engine's own report.
//! Each test prints `SKIPPED` and returns when nats-server is not installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use opcenter_cluster::testing::NatsCluster;
use opcenter_cluster::{FIRST_SEQ_HEADER, JetStreamJournal, JournalOptions};
use opcenter_proto::auth::Role;
use opcenter_sim::harness::{self, ServerProcess};

use crate::common::{Client, Encoding, http, token};

const REGION: &str = "zko";

fn opcenter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opcenter"))
}

/// A config of a node in `role` over `data`, a checkpoint every 2 records.
fn config(data: &Path, urls: &str, role: &str) -> PathBuf {
    let text = harness::config_toml(
        data,
        crate::common::SECRET,
        &crate::cluster::node_toml(urls, role, 1),
    )
    .replace("[storage]\n", "[storage]\naudit_checkpoint_records = 2\n");
    let path = data.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `opcenter <args>`: (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = opcenter().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stdout, stderr)
}

/// `opcenter audit <args>`: (success, stdout + stderr).
fn audit(args: &[&str]) -> (bool, String) {
    let (ok, stdout, stderr) = run(&[&["audit"], args].concat());
    (ok, format!("{stdout}{stderr}"))
}

/// A node in `role` over `<tmp>/<name>`, active: its config and process.
async fn start_active(tmp: &Path, urls: &str, name: &str, role: &str) -> (PathBuf, ServerProcess) {
    let cfg = config(&tmp.join(name), urls, role);
    let node = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_opcenter")), &cfg).unwrap();
    wait_active(node.addr).await;
    (cfg, node)
}

/// The region's audit chain holds from its first record to its last, through at
/// least `takeovers` takeover markers (a failover leaves one unbroken chain).
pub(crate) async fn assert_chain_holds(urls: &str, takeovers: u64) {
    let client = opcenter_cluster::connect(urls).await.unwrap();
    let v = opcenter_cluster::verify_region(client, REGION).await.unwrap();
    assert!(
        v.walk.breaks.is_empty(),
        "the chain is broken: {:?}",
        v.walk.breaks
    );
    assert!(
        v.walk.takeovers >= takeovers,
        "{} takeover(s) in the chain, expected at least {takeovers}",
        v.walk.takeovers
    );
}

/// Waits (up to 60 s) for `/healthz` to say `ok active`.
async fn wait_active(addr: std::net::SocketAddr) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(addr, "GET", "/healthz", None, None).await;
        if status == 200 && body == "ok active\n" {
            return;
        }
        assert!(Instant::now() < until, "not active: /healthz {status} {body:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A dispatcher creates incidents with these descriptions; returns the ids and the
/// session id of its `hello`.
async fn create(host: &str, descriptions: &[&str]) -> (Vec<String>, String) {
    let (mut d, hello) = Client::login(host, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let session = hello["session"].as_str().expect("a session id").to_owned();
    let mut ids = Vec::new();
    for (i, text) in descriptions.iter().enumerate() {
        let ok = d
            .request(json!({"type":"incident.create","category":"theft","priority":2,
                "description":text,"location":{"lat":51.2 + i as f64 * 0.01,"lon":51.3}}))
            .await;
        assert_eq!(ok["type"], "ok", "{ok}");
        ids.push(ok["incident"]["id"].as_str().unwrap().to_owned());
    }
    (ids, session)
}

#[tokio::test]
async fn a_hubs_session_is_on_the_record_and_the_region_verifies() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_opcenter"));
    let (engine_cfg, mut engine) = start_active(tmp.path(), &urls, "engine", "engine").await;
    let hub = ServerProcess::start(bin, &config(&tmp.path().join("hub"), &urls, "hub")).unwrap();

    let (ids, session) = create(&hub.addr.to_string(), &["first", "second", "third"]).await;

    let (ok, out) = audit(&["verify", "--nats", &urls, "--region", REGION]);
    assert!(ok, "{out}");
    assert!(out.contains("OK: every link holds"), "{out}");
    assert!(
        out.contains("1 takeover(s)"),
        "the engine's takeover marker is in the chain: {out}"
    );
    // Three creates (each may auto-dispatch nothing: no units) and a checkpoint every 2.
    let (ok, head) = audit(&["head", "--config", engine_cfg.to_str().unwrap()]);
    assert!(ok, "{head}");
    let seq: u64 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(seq >= 2, "{head}");

    // The actor of a command that came through the hub names the hub's session.
    let (ok, out) = audit(&[
        "show",
        "--incident",
        &ids[1],
        "--json",
        "--nats",
        &urls,
        "--region",
        REGION,
    ]);
    assert!(ok, "{out}");
    let t: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let actor = &t["steps"][0]["actor"];
    assert_eq!(actor["sub"], "d1", "{t}");
    assert_eq!(actor["role"], "dispatcher", "{t}");
    let recorded = actor["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {t}"));
    assert!(
        recorded.ends_with(&format!("/{session}")),
        "the hub's session {session} is not on the record: {recorded}"
    );
    assert!(actor["call"].is_string(), "the hub's call id: {t}");

    // A tablet on the hub writing on an incident not assigned to it: the hub's role
    // check passes it, the engine refuses it and logs it with the hub's session.
    let (mut tablet, hello) = Client::login(
        &hub.addr.to_string(),
        Encoding::Json,
        &crate::common::unit_token("P-X"),
    )
    .await;
    let tablet_session = hello["session"].as_str().unwrap().to_owned();
    let refused = tablet
        .request(json!({"type":"incident.note","incident_id":ids[0],"text":"not mine"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert!(engine.terminate().unwrap().success());
    let lines = opcenter_hub::read_audit_log(&tmp.path().join("engine")).unwrap();
    assert!(
        lines.iter().any(|l| l.kind == opcenter_hub::AuditKind::Forbidden
            && l.component == "engine"
            && l.subject == "P-X"
            && l.reason == "incident.note"
            && l.session
                .as_deref()
                .is_some_and(|s| s.ends_with(&format!("/{tablet_session}")))),
        "{lines:#?}"
    );
}

/// Replaces the region's stream with a copy of itself in which `from` is replaced
/// by `to` (same length) in one record; returns that record's seq.
async fn forge_stream(urls: &str, from: &[u8], to: &[u8]) -> u64 {
    let client = opcenter_cluster::connect(urls).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let name = format!("OPC_{REGION}");
    let mut stream = js.get_stream(&name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut msgs = Vec::new();
    for s in 1..=last {
        let m = stream.get_raw_message(s).await.unwrap();
        msgs.push((m.headers, m.payload.to_vec()));
    }
    js.delete_stream(&name).await.unwrap();
    let u = urls.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut opts = JournalOptions::new(REGION);
        opts.verify_chain = false;
        drop(JetStreamJournal::connect(&u, opts).unwrap());
    })
    .await
    .unwrap();
    let mut forged_seq = None;
    for (headers, mut payload) in msgs {
        let found = forged_seq
            .is_none()
            .then(|| payload.windows(from.len()).position(|w| w == from))
            .flatten();
        if let Some(at) = found {
            payload[at..at + from.len()].copy_from_slice(to);
            // Which record: walk the `[len u32][hash 32][bytes]` frames.
            let first: u64 = headers.get(FIRST_SEQ_HEADER).unwrap().as_str().parse().unwrap();
            let (mut pos, mut i) = (0usize, 0u64);
            loop {
                let len = u32::from_le_bytes(payload[pos..pos + 4].try_into().unwrap()) as usize;
                if at < pos + 36 + len {
                    break;
                }
                pos += 36 + len;
                i += 1;
            }
            forged_seq = Some(first + i);
        }
        js.publish_with_headers(format!("journal.{REGION}"), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    forged_seq.expect("the text to forge is in the stream")
}

/// `opcenter serve --accept-broken-chain`: the child and its address.
fn serve_accepting(cfg: &Path, log: &Path) -> (Child, std::net::SocketAddr) {
    let mut child = opcenter()
        .args(["serve", "--accept-broken-chain", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test]
async fn a_forged_record_is_named_and_stops_the_engine_unless_accepted() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_opcenter"));
    let (cfg, mut node) = start_active(tmp.path(), &urls, "node", "both").await;
    create(&node.addr.to_string(), &["one", "chain-marker-AAAA", "three"]).await;
    assert!(node.terminate().unwrap().success());
    let (ok, out) = audit(&["verify", "--nats", &urls, "--region", REGION]);
    assert!(ok, "{out}");

    // The description of the second incident rewritten; every hash left as written.
    let seq = forge_stream(&urls, b"chain-marker-AAAA", b"chain-marker-BAAA").await;
    let (ok, out) = audit(&["verify", "--nats", &urls, "--region", REGION]);
    assert!(!ok, "verify must fail: {out}");
    assert!(
        out.contains(&format!(
            "BROKEN: first broken record: seq {seq} in stream message"
        )),
        "{out}"
    );
    assert_eq!(out.matches("BROKEN").count(), 1, "named once: {out}");

    // The engine refuses to start on it, naming the record...
    let log = tmp.path().join("refused.log");
    let mut refused = ServerProcess::start_logged(bin, &cfg, &log).unwrap();
    let status = refused
        .wait_exit(Duration::from_secs(90))
        .expect("the engine kept running over a broken chain");
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("audit chain broken"), "{stderr}");
    assert!(
        stderr.contains(&format!("seq {seq} in stream message")),
        "{stderr}"
    );
    assert!(stderr.contains("--accept-broken-chain"), "{stderr}");

    // ...and starts when told to, logging the break loudly; appends continue.
    let log = tmp.path().join("accepted.log");
    let (mut child, addr) = serve_accepting(&cfg, &log);
    wait_active(addr).await;
    create(&addr.to_string(), &["after the forgery"]).await;
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("AUDIT CHAIN BROKEN"), "{stderr}");
    let (ok, out) = audit(&["verify", "--nats", &urls, "--region", REGION]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "BROKEN: first broken record: seq {seq} in stream message"
        )),
        "{out}"
    );
    assert_eq!(out.matches("BROKEN").count(), 1, "still the one break: {out}");
    // A read of the messages after it shows the chain went on past the forgery.
    let client = opcenter_cluster::connect(&urls).await.unwrap();
    let v = opcenter_cluster::verify_region(client, REGION).await.unwrap();
    assert!(v.walk.last_seq > seq, "{:?}", v.walk);
}

/// `opcenter report response-times <args>` with `--from`/`--to`: its stdout.
fn report_cli(args: &[&str], from: i64, to: i64) -> String {
    let (from, to) = (from.to_string(), to.to_string());
    let head = ["report", "response-times", "--from", &from, "--to", &to];
    let (ok, stdout, stderr) = run(&[&head[..], args].concat());
    assert!(ok, "{stderr}");
    stdout
}

#[tokio::test]
async fn the_report_reads_a_regions_stream_while_its_engine_runs() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, node) = start_active(tmp.path(), &urls, "node", "both").await;
    let from = opcenter_sim::wire::now_ms() as i64 - 60_000;
    create(&node.addr.to_string(), &["one", "two", "three"]).await;
    let to = opcenter_sim::wire::now_ms() as i64 + 60_000;

    // The running engine's own report over HTTP, JSON and CSV.
    let path = format!("/v1/reports/response-times?from={from}&to={to}&group=priority");
    let sup = token(Role::Supervisor, "sup");
    let (status, body) = http(node.addr, "GET", &path, Some(&sup), None).await;
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(live["report"]["incidents"], 3, "{live}");
    let (status, csv) = http(node.addr, "GET", &format!("{path}&format=csv"), Some(&sup), None).await;
    assert_eq!(status, 200, "{csv}");

    // The CLI on the stream, by --nats/--region and by the node's --config: the same.
    let by_nats = ["--nats", &urls, "--region", REGION];
    let by_config = ["--config", cfg.to_str().unwrap()];
    for source in [&by_nats[..], &by_config[..]] {
        let json_out = report_cli(&[&["--json"], source].concat(), from, to);
        let got: Value = serde_json::from_str(&json_out).unwrap_or_else(|e| panic!("{e}: {json_out}"));
        assert_eq!(got, live, "{source:?}");
        assert_eq!(
            report_cli(&[&["--csv"], source].concat(), from, to),
            csv,
            "{source:?}"
        );
    }

    // A region without a stream: refused, and not created by the asking.
    let (ok, _, stderr) = run(&["report", "response-times", "--nats", &urls, "--region", "nowhere"]);
    assert!(
        !ok && stderr.contains("region nowhere: no stream OPC_nowhere"),
        "{stderr}"
    );
    let client = opcenter_cluster::connect(&urls).await.unwrap();
    let js = async_nats::jetstream::new(client);
    assert!(
        js.get_stream("OPC_nowhere").await.is_err(),
        "the report created a stream"
    );

    // No NATS server to ask: refused, naming the servers.
    let (ok, _, stderr) = run(&[
        "report",
        "response-times",
        "--nats",
        "nats://127.0.0.1:1",
        "--region",
        REGION,
    ]);
    assert!(!ok && stderr.contains("nats://127.0.0.1:1"), "{stderr}");
    drop(node);
}
