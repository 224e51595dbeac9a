//! A region split into roles on NATS, end to end: one `opcenter serve` with
//! `role = "engine"` and two with `role = "hub"` (real processes) over a real
//! nats-server on loopback. The incident flow across two hubs (same events, same
//! seq on both; positions reach a supervisor on the other hub); `kill -9` of a
//! hub under load and its console resuming on the other hub with `since`
//! (nothing missing, nothing repeated); `kill -9` of the engine during a burst of
//! creates and its restart (every acknowledged create kept, `since` still works);
//! a hub without an engine (`internal`, never `ok`); a hub whose stream is
//! deleted (clients closed with 4008, the hub exits); an engine whose answers
//! stop reaching NATS, and a hub whose calls do (the connection found by the
//! probe and replaced).
//! Each test prints `SKIPPED` and returns when nats-server is not installed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use opcenter_cluster::testing::{NatsCluster, Relay};
use opcenter_proto::auth::Role;

use crate::cluster::stream_seqs;
use crate::common::*;

/// The `[cluster]` table of a node of the test region in `role` on `urls`.
fn role_toml(urls: &str, role: &str) -> String {
    crate::cluster::node_toml(urls, role, 1)
}

/// One nats-server, an engine and two hubs (`None`: nats-server missing, skipped).
struct Region {
    nats: NatsCluster,
    tmp: tempfile::TempDir,
    engine: BinServer,
    hubs: Vec<BinServer>,
}

impl Region {
    fn start(hubs: usize) -> Option<Region> {
        let nats = NatsCluster::start_or_skip(1)?;
        let tmp = tempfile::tempdir().unwrap();
        let engine = BinServer::start(&tmp.path().join("engine"), &role_toml(&nats.urls(), "engine"));
        let hubs = (0..hubs)
            .map(|i| {
                BinServer::start(
                    &tmp.path().join(format!("hub{i}")),
                    &role_toml(&nats.urls(), "hub"),
                )
            })
            .collect();
        Some(Region {
            nats,
            tmp,
            engine,
            hubs,
        })
    }

    fn hub(&self, i: usize) -> String {
        self.hubs[i].host()
    }

    fn restart_engine(&mut self) {
        self.engine = BinServer::start(
            &self.tmp.path().join("engine"),
            &role_toml(&self.nats.urls(), "engine"),
        );
    }
}

/// A client of `role` subscribed to `topics`, resuming `since` if given.
async fn subscribed(
    host: &str,
    role: Role,
    topics: &[&str],
    since: Option<(&str, u64)>,
) -> (Client, Value, Value) {
    let (mut c, hello) = Client::login(host, Encoding::Json, &token(role, "d1")).await;
    let mut sub = json!({"type":"subscribe","topics":topics});
    if let Some((epoch, seq)) = since {
        sub["since"] = json!({"epoch":epoch,"seq":seq});
    }
    let ok = c.request(sub).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    (c, hello, ok)
}

/// What an event means: topic, change, object id.
fn meaning(f: &Value) -> (String, String, String) {
    let topic = f["topic"].as_str().unwrap_or_default().to_owned();
    let id = match topic.as_str() {
        "units" => f["unit"]["id"].as_str(),
        _ => f["incident"]["id"].as_str(),
    };
    (
        topic,
        f["change"].as_str().unwrap_or_default().to_owned(),
        id.unwrap_or_default().to_owned(),
    )
}

/// Reads events into `seen` (checking each seq is new and increasing) until one
/// satisfies `done`.
async fn events_until(
    c: &mut Client,
    seen: &mut BTreeMap<u64, (String, String, String)>,
    done: impl Fn(&Value) -> bool,
) {
    loop {
        let f = c.recv().await;
        if f["type"] != "event" {
            continue;
        }
        let seq = f["seq"].as_u64().unwrap();
        assert!(
            seen.keys().next_back().is_none_or(|&l| seq > l),
            "seq {seq} repeated or out of order"
        );
        seen.insert(seq, meaning(&f));
        if done(&f) {
            return;
        }
    }
}

fn created(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |f: &Value| f["topic"] == "incidents" && f["change"] == "created" && f["incident"]["id"] == id
}

#[tokio::test]
async fn one_engine_two_hubs_run_the_flow_and_agree_on_every_seq() {
    let Some(region) = Region::start(2) else {
        return;
    };
    let (a, b) = (region.hub(0), region.hub(1));
    let topics = ["incidents", "units", "positions"];
    let (mut sup_a, hello_a, _) = subscribed(&a, Role::Supervisor, &topics, None).await;
    let (mut sup_b, hello_b, _) = subscribed(&b, Role::Supervisor, &topics, None).await;
    let (stream_epoch, _) = stream_seqs(&region.nats.urls()).await;
    assert_eq!(
        hello_a["epoch"],
        stream_epoch.as_str(),
        "the epoch is the stream's identity"
    );
    assert_eq!(hello_b["epoch"], stream_epoch.as_str());

    // Console on hub A, tablets on hub B.
    crate::hub_e2e::full_flow_across(&a, &b, Encoding::Json, Encoding::Msgpack).await;

    // A last create marks the end; both supervisors saw the same events, same seqs.
    let (mut console, _) = console(&a, Encoding::Json).await;
    let ok = console.request(create(51.3, 51.4)).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let marker = ok["incident"]["id"].as_str().unwrap().to_owned();
    let (mut seen_a, mut seen_b) = (BTreeMap::new(), BTreeMap::new());
    events_until(&mut sup_a, &mut seen_a, created(&marker)).await;
    events_until(&mut sup_b, &mut seen_b, created(&marker)).await;
    assert_eq!(seen_a, seen_b, "the two hubs disagree on the events");
    let (_, seqs) = stream_seqs(&region.nats.urls()).await;
    let last = *seen_a.keys().next_back().unwrap();
    assert!(
        seqs.len() as u64 >= last,
        "a hub served seq {last} the stream lacks"
    );
    assert!(
        seen_a.values().any(|(t, c, _)| t == "incidents" && c == "closed"),
        "the flow's close reached the supervisors: {seen_a:?}"
    );

    // A tablet on hub B moves; the supervisor on hub A gets the fix.
    let mut tablet = tablet(&b, Encoding::Json, "P-MOVE", 51.30, 51.40).await;
    tablet
        .send(json!({"type":"unit.position","lat":51.3001,"lon":51.4001}))
        .await;
    let pos = sup_a
        .recv_until(|f| {
            f["type"] == "positions"
                && f["items"].as_array().is_some_and(|i| {
                    i.iter()
                        .any(|p| p["unit_id"] == "P-MOVE" && p["lat"] == json!(51.3001))
                })
        })
        .await;
    assert_eq!(pos["type"], "positions");

    // A recommendation asked on hub A is the engine's, on its live positions:
    // the tablet that just moved (on hub B) is the nearest available unit.
    let rec = console
        .request(json!({"type":"incident.recommend","location":{"lat":51.3001,"lon":51.4001},"count":1}))
        .await;
    assert_eq!(rec["type"], "ok", "{rec}");
    assert_eq!(rec["candidates"][0]["unit_id"], "P-MOVE", "{rec}");

    // GET /v1/incidents/{id} on hub B answers from its own read model.
    let (status, body) = incident_over_http(region.hubs[1].addr, &marker, Role::Dispatcher, "d1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&marker), "{body}");
}

#[tokio::test]
async fn kill_9_of_a_hub_its_console_resumes_on_the_other_hub() {
    let Some(mut region) = Region::start(2) else {
        return;
    };
    let (a, b) = (region.hub(0), region.hub(1));
    let (reference, _, ref_ok) = subscribed(&b, Role::Dispatcher, &["incidents"], None).await;
    let (watcher, hello, watch_ok) = subscribed(&a, Role::Dispatcher, &["incidents"], None).await;
    let cut = ref_ok["seq"]
        .as_u64()
        .unwrap()
        .max(watch_ok["seq"].as_u64().unwrap());
    let epoch = hello["epoch"].as_str().unwrap().to_owned();

    // The load: sequential creates through hub B, each acknowledged.
    const CREATES: u64 = 150;
    let writer_host = b.clone();
    let writer = tokio::spawn(async move {
        let (mut w, _) = Client::login(&writer_host, Encoding::Json, &token(Role::Dispatcher, "w")).await;
        let mut ids = Vec::new();
        for i in 0..CREATES {
            let ok = w.request(create(51.2 + (i % 50) as f64 * 0.001, 51.3)).await;
            assert_eq!(ok["type"], "ok", "create {i}: {ok}");
            ids.push(ok["incident"]["id"].as_str().unwrap().to_owned());
        }
        ids
    });

    // The console on hub A reads until hub A dies under it.
    let mut before: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
    let mut watcher = watcher;
    while before.len() < 40 {
        let f = watcher.recv().await;
        if f["type"] == "event" {
            let seq = f["seq"].as_u64().unwrap();
            assert!(before.keys().next_back().is_none_or(|&l| seq > l));
            before.insert(seq, meaning(&f));
        }
    }
    region.hubs[0].kill9();
    // Whatever hub A sent before it died still counts as seen.
    while let Some(Got::Frame(f)) = watcher.next_within(Duration::from_secs(5)).await {
        if f["type"] == "event" {
            let seq = f["seq"].as_u64().unwrap();
            assert!(before.keys().next_back().is_none_or(|&l| seq > l));
            before.insert(seq, meaning(&f));
        }
    }
    let last_seen = *before.keys().next_back().unwrap();

    // It reconnects to hub B and resumes from the last seq it saw.
    let (mut resumed, hello_b, ok) =
        subscribed(&b, Role::Dispatcher, &["incidents"], Some((&epoch, last_seen))).await;
    assert_eq!(
        hello_b["epoch"],
        epoch.as_str(),
        "both hubs serve the stream's epoch"
    );
    assert_eq!(ok["recovered"], true, "{ok}");
    let ids = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the writer finished")
        .unwrap();
    let last_id = ids.last().unwrap().clone();
    let mut after = BTreeMap::new();
    events_until(&mut resumed, &mut after, created(&last_id)).await;
    let mut reference_seen = BTreeMap::new();
    let mut reference = reference;
    events_until(&mut reference, &mut reference_seen, created(&last_id)).await;

    assert!(
        after.keys().next().is_none_or(|&s| s > last_seen),
        "the resume repeated a seq"
    );
    reference_seen.retain(|s, _| *s > cut);
    before.retain(|s, _| *s > cut);
    let mut union = before.clone();
    union.extend(after);
    assert_eq!(
        union.len(),
        reference_seen.len(),
        "missing or repeated events across the hub's death"
    );
    assert_eq!(
        union, reference_seen,
        "the resumed console's events differ from hub B's"
    );
    let created_ids: HashSet<&String> = union
        .values()
        .filter(|(_, c, _)| c == "created")
        .map(|(_, _, id)| id)
        .collect();
    for id in &ids {
        assert!(created_ids.contains(id), "acknowledged create {id} not seen");
    }
    eprintln!(
        "hub killed after seq {last_seen}; {} events seen in all, {} creates",
        union.len(),
        ids.len()
    );
}

#[tokio::test]
async fn kill_9_of_the_engine_during_creates_loses_nothing_acknowledged() {
    let Some(mut region) = Region::start(1) else {
        return;
    };
    let a = region.hub(0);
    let (c, hello, sub) = subscribed(&a, Role::Dispatcher, &["incidents"], None).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let cut_before = sub["seq"].as_u64().unwrap();
    let (sink, mut stream) = c.ws.split();

    // Pipelined creates with ids 1..=N.
    const N: u64 = 600;
    let writer = spawn_pipelined_creates(sink, N, Duration::from_millis(2));

    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut refused: BTreeSet<u64> = BTreeSet::new();
    let mut killed_at = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    while (acked.len() + refused.len()) < N as usize {
        assert!(Instant::now() < deadline, "not every create was answered");
        let m = match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("hub connection ended: {other:?}"),
        };
        let Message::Text(t) = m else { continue };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        match f["type"].as_str() {
            Some("ok") => {
                acked.insert(
                    f["id"].as_u64().unwrap(),
                    f["incident"]["id"].as_str().unwrap().to_owned(),
                );
            }
            // Never a fake ok: a create the engine could not answer in time is refused.
            Some("error") => {
                assert_eq!(f["code"], "internal", "{f}");
                refused.insert(f["id"].as_u64().unwrap());
            }
            _ => {}
        }
        if killed_at.is_none() && acked.len() >= 150 {
            region.engine.kill9();
            killed_at = Some(acked.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
            region.restart_engine();
        }
    }
    let _sink = writer.await.unwrap();
    assert!(killed_at.is_some(), "the engine was not killed mid-burst");
    region.engine.wait_active().await;

    let (stream_epoch, seqs) = stream_seqs(&region.nats.urls()).await;
    assert_eq!(stream_epoch, epoch, "the restart kept the stream (and the epoch)");
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "stream record seqs not contiguous at index {i}");
    }

    // The restarted engine's own state and the hub's both hold every acknowledged create.
    for host in [region.engine.host(), a.clone()] {
        let (_d, _, snap) = subscribed(&host, Role::Dispatcher, &["incidents"], None).await;
        let open: HashSet<&str> = snap["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        for id in acked.values() {
            assert!(
                open.contains(id.as_str()),
                "acknowledged incident {id} lost ({host})"
            );
        }
    }

    // `since` from before the burst replays a `created` for every acknowledged create.
    let (mut r, _, ok) = subscribed(&a, Role::Dispatcher, &["incidents"], Some((&epoch, cut_before))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    let (mut d, _) = Client::login(&a, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let new = d.request(create(51.25, 51.35)).await;
    assert_eq!(new["type"], "ok", "{new}");
    let new_id = new["incident"]["id"].as_str().unwrap().to_owned();
    let mut replayed = BTreeMap::new();
    events_until(&mut r, &mut replayed, created(&new_id)).await;
    let created_ids: HashSet<&String> = replayed
        .values()
        .filter(|(_, c, _)| c == "created")
        .map(|(_, _, id)| id)
        .collect();
    for id in acked.values() {
        assert!(
            created_ids.contains(id),
            "no replayed `created` for acknowledged {id}"
        );
    }
    eprintln!(
        "engine killed after {} acks; {} acknowledged, {} refused (internal), stream end {}",
        killed_at.unwrap(),
        acked.len(),
        refused.len(),
        seqs.len()
    );
}

/// `opcenter_nats_probe_reconnects_total{connection="<label>"}` on `node` (0 if absent).
async fn probe_reconnects(node: &BinServer, label: &str) -> f64 {
    let (status, body) = http(node.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "/metrics: {body}");
    let name = format!("opcenter_nats_probe_reconnects_total{{connection=\"{label}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(name.as_str())?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Which node of [`call_through_a_frozen_connection`] reaches NATS through the relay.
#[derive(Clone, Copy, PartialEq)]
enum Relayed {
    /// Its connections, in order: the one to the hubs, the lease's, the journal's.
    Engine,
    /// Its connections, in order: the journal's, the follower's, the calls'.
    Hub,
}

/// An engine and a hub on one nats-server, `relayed` reaching it through a relay.
/// After a first create, the relay stops passing on what that node's connection
/// `frozen` sends; a second create must still be answered `ok`, once (the probe
/// replaced the connection), and each create applied once.
async fn call_through_a_frozen_connection(relayed: Relayed, frozen: usize) {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let relay = Relay::start(nats.nodes()[0].port).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let url = |node| match relayed == node {
        true => relay.url(),
        false => nats.urls(),
    };
    // A probe timeout well above the default: a busy CI machine must not make a
    // working connection look stuck (the counts below are exact). Found within
    // 3.25 s, a call's third attempt (every 2 s) still beats its 10 s deadline.
    let toml = |node, role| role_toml(&url(node), role) + "probe_timeout_ms = 3000\n";
    let engine = BinServer::start(&tmp.path().join("engine"), &toml(Relayed::Engine, "engine"));
    let hub = BinServer::start(&tmp.path().join("hub"), &toml(Relayed::Hub, "hub"));
    let (node, label) = match relayed {
        Relayed::Engine => (&engine, "engine"),
        Relayed::Hub => (&hub, "hub"),
    };
    let (mut d, _) = Client::login(&hub.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let first = d.request(create(51.2, 51.3)).await;
    assert_eq!(first["type"], "ok", "{first}");
    assert_eq!(relay.accepted(), 3, "the node's three NATS connections");
    assert_eq!(probe_reconnects(node, label).await, 0.0);

    // The node still receives on it, but nothing it sends reaches the server (as
    // in the stalls after takeovers), until its probe finds it.
    relay.freeze(frozen);
    let second = d.request(create(51.21, 51.31)).await;
    assert_eq!(
        second["type"], "ok",
        "answered over the {label}'s new connection: {second}"
    );
    assert!(probe_reconnects(node, label).await >= 1.0);
    assert_eq!(relay.accepted(), 4, "the {label} opened one new connection");
    let (_e, _, snap) = subscribed(&engine.host(), Role::Dispatcher, &["incidents"], None).await;
    assert_eq!(
        snap["incidents"].as_array().map(Vec::len),
        Some(2),
        "each create once: {snap}"
    );
}

#[tokio::test]
async fn an_engine_whose_answers_stop_reaching_nats_moves_to_a_new_connection_and_the_call_is_answered() {
    call_through_a_frozen_connection(Relayed::Engine, 0).await;
}

#[tokio::test]
async fn a_hub_whose_calls_stop_reaching_nats_moves_to_a_new_connection_and_the_call_is_answered() {
    call_through_a_frozen_connection(Relayed::Hub, 2).await;
}

#[tokio::test]
async fn a_hub_without_an_engine_refuses_commands_and_never_fakes_an_ok() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let extra = role_toml(&nats.urls(), "hub") + "command_timeout_s = 2\n";
    let hub = BinServer::start(&tmp.path().join("hub"), &extra);
    let (mut c, hello, ok) = subscribed(&hub.host(), Role::Dispatcher, &["incidents"], None).await;
    assert_eq!(hello["seq"], 0);
    assert_eq!(ok["incidents"], json!([]));
    let reply = c.request(create(51.2, 51.3)).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "internal", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("no engine answered"),
        "{reply}"
    );
    // Reads go on: the hub still answers from its read model.
    let (_d, _, again) = subscribed(&hub.host(), Role::Dispatcher, &["incidents"], None).await;
    assert_eq!(again["seq"], 0);
    let (_, seqs) = stream_seqs(&nats.urls()).await;
    assert!(seqs.is_empty(), "a hub appended to the stream: {seqs:?}");
}

#[tokio::test]
async fn a_hub_whose_stream_is_replaced_closes_its_clients_with_4008_and_exits() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let urls = nats.urls();
    let engine = BinServer::start(&tmp.path().join("engine"), &role_toml(&urls, "engine"));
    let hub_config = tmp.path().join("hub.toml");
    std::fs::write(
        &hub_config,
        config_toml(&tmp.path().join("hub"), &role_toml(&urls, "hub")),
    )
    .unwrap();
    let hub_log = tmp.path().join("hub.log");
    let mut hub = opcenter_sim::harness::ServerProcess::start_logged(
        std::path::Path::new(env!("CARGO_BIN_EXE_opcenter")),
        &hub_config,
        &hub_log,
    )
    .expect("the hub printed `listening on`");
    let (mut c, _, _) = subscribed(&hub.addr.to_string(), Role::Dispatcher, &["incidents"], None).await;
    assert_eq!(c.request(create(51.2, 51.3)).await["type"], "ok");

    // The stream is deleted (an operator's mistake, a restore): what the hub
    // serves belongs to an epoch that no longer exists.
    let deleted = tokio::task::spawn_blocking(move || {
        let j =
            opcenter_cluster::JetStreamJournal::connect(&urls, opcenter_cluster::JournalOptions::new("zko"))
                .expect("open the stream");
        let js = j.jetstream().clone();
        let stream = j.names().stream.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move { js.delete_stream(&stream).await.map(|_| ()) })
    })
    .await
    .unwrap();
    deleted.expect("stream deleted");

    assert_eq!(c.closed().await, Some(4008), "the client is told to reload");
    let status = hub
        .wait_exit(Duration::from_secs(30))
        .expect("the hub exits after closing its clients");
    assert!(!status.success(), "hub exited with {status}");
    let log = std::fs::read_to_string(&hub_log).unwrap();
    assert!(
        log.contains("replaced or lost"),
        "the log does not say why: {log}"
    );
    drop(engine);
}
