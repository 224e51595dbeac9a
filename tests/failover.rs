//! Failover of a region's engine, end to end with real processes: two `role =
//! "engine"` nodes (one active, one standby on the region's lease) and a hub, over
//! real nats-servers on loopback. `kill -9` of the active engine under pipelined
//! creates on a 3-node R3 cluster (every acknowledged create in the stream exactly
//! once, the standby serves, the hub's console resumes with `since`); SIGSTOP of
//! the active engine until the standby took over, then SIGCONT (the old engine
//! appends nothing and exits non-zero); a partition (the active engine's only NATS
//! server stops until the standby took over, then comes back: the old engine
//! appends nothing and exits non-zero). Each test prints `SKIPPED` and returns when
//! nats-server is not installed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use opcenter_cluster::testing::NatsCluster;
use opcenter_proto::auth::Role;

use crate::cluster::{node_toml, stream_seqs};
use crate::common::*;

async fn healthz(e: &BinServer) -> String {
    http(e.addr, "GET", "/healthz", None, None).await.1
}

/// Sends a create with `key` (id `id`) and waits up to 60 s for its reply; an
/// `internal` refusal ("no engine answered", the change may or may not be saved)
/// is retried with the same key. Returns the `ok` and how many refusals came first.
async fn create_retrying(c: &mut Client, id: u64, key: &str, lat: f64) -> (Value, u32) {
    let mut body = create(lat, 51.37);
    body["key"] = json!(key);
    body["id"] = json!(id);
    let until = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    loop {
        c.send(body.clone()).await;
        let reply = loop {
            let left = until.saturating_duration_since(Instant::now());
            match c.next_within(left).await {
                Some(Got::Frame(f)) if f["id"] == id && (f["type"] == "ok" || f["type"] == "error") => {
                    break f;
                }
                Some(Got::Frame(_)) => {}
                other => panic!("no reply to create {key} within 60 s: {other:?}"),
            }
        };
        if reply["type"] == "ok" {
            return (reply, refused);
        }
        assert_eq!(reply["code"], "internal", "{reply}");
        refused += 1;
    }
}

/// The end of a stale-engine test: `a` exits non-zero by itself, the stream's
/// records are still `before` (nothing of `a` after the takeover), and `b` serves.
async fn old_engine_exits_having_appended_nothing(
    a: &mut BinServer,
    b: &BinServer,
    urls: &str,
    before: Vec<u64>,
    d: &mut Client,
) {
    let status = a
        .wait_exit(Duration::from_secs(60))
        .expect("the old engine exits");
    assert!(!status.success(), "old engine exited with {status}");
    let (_, after) = stream_seqs(urls).await;
    assert_eq!(before, after, "the old engine appended after the takeover");
    let ok = d.request(create(51.25, 51.37)).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(healthz(b).await, "ok active\n");
}

/// An engine node `name` of the region on the NATS servers `urls` (comma-separated).
fn engine(tmp: &tempfile::TempDir, name: &str, urls: &str, replicas: usize) -> BinServer {
    let extra = format!("{}node = \"{name}\"\n", node_toml(urls, "engine", replicas));
    BinServer::start(&tmp.path().join(name), &extra)
}

/// Engines `a` (active) and `b` (standby) and one hub of the region on `nats`.
///
/// An engine says `listening on` before it contends for the lease (its `/healthz`
/// answers `ok standby` meanwhile), so `b` starts only once `a` is active: two
/// engines started together may elect either one.
async fn region(
    nats: &NatsCluster,
    tmp: &tempfile::TempDir,
    replicas: usize,
) -> (BinServer, BinServer, BinServer) {
    let a = engine(tmp, "a", &nats.urls(), replicas);
    a.wait_active().await;
    let b = engine(tmp, "b", &nats.urls(), replicas);
    let hub = BinServer::start(&tmp.path().join("hub"), &node_toml(&nats.urls(), "hub", replicas));
    (a, b, hub)
}

#[tokio::test]
async fn kill_9_of_the_active_engine_under_pipelined_creates_the_standby_serves_nothing_lost_or_doubled() {
    let Some(nats) = NatsCluster::start_or_skip(3) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, b, hub) = region(&nats, &tmp, 3).await;
    let h = hub.host();
    assert_eq!(healthz(&a).await, "ok active\n");
    assert_eq!(healthz(&b).await, "ok standby\n");

    let (mut console, hello) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let ok = console
        .request(json!({"type":"subscribe","topics":["incidents"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let cut = ok["seq"].as_u64().unwrap();

    // Pipelined creates without keys: a create the old engine applied but could not
    // answer is retried by the hub against the new one, which answers it from the
    // call ids in the stream instead of applying it again.
    const N: u64 = 400;
    let (w, _) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "w")).await;
    let (mut sink, mut stream) = w.ws.split();
    let writer = tokio::spawn(async move {
        for i in 1..=N {
            let mut body = create(51.2 + (i % 100) as f64 * 0.001, 51.3 + (i / 100) as f64 * 0.001);
            body["id"] = json!(i);
            if sink.feed(Message::Text(body.to_string().into())).await.is_err() {
                return sink;
            }
            if i % 8 == 0 {
                let _ = sink.flush().await;
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }
        let _ = sink.flush().await;
        sink
    });

    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut refused = HashSet::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    while acked.len() + refused.len() < N as usize {
        assert!(Instant::now() < deadline, "not every create was answered");
        let m = match tokio::time::timeout(Duration::from_secs(90), stream.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("hub connection ended: {other:?}"),
        };
        let Message::Text(t) = m else { continue };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        match f["type"].as_str() {
            Some("ok") => {
                let prev = acked.insert(
                    f["id"].as_u64().unwrap(),
                    f["incident"]["id"].as_str().unwrap().to_owned(),
                );
                assert!(prev.is_none(), "two replies to one create: {f}");
            }
            // Never a fake ok; a create no engine answered in time is refused.
            Some("error") => {
                assert_eq!(f["code"], "internal", "{f}");
                refused.insert(f["id"].as_u64().unwrap());
            }
            _ => {}
        }
        if !killed && acked.len() >= 100 {
            a.kill9();
            killed = true;
        }
    }
    let _sink = writer.await.unwrap();
    assert!(killed, "the active engine was not killed mid-burst");
    b.wait_active().await;

    // The stream: record seqs contiguous, each acknowledged create exactly once.
    let (stream_epoch, seqs) = stream_seqs(&nats.urls()).await;
    assert_eq!(stream_epoch, epoch);
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "stream record seqs not contiguous at index {i}");
    }
    // The console on the hub stayed; a new one resumes with `since` from before the
    // burst: both see one `created` per acknowledged incident, nothing repeated.
    let (mut d, _) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "d2")).await;
    let last = d.request(create(51.25, 51.35)).await;
    assert_eq!(last["type"], "ok", "the standby serves: {last}");
    let last_id = last["incident"]["id"].as_str().unwrap().to_owned();
    let (mut resumed, _) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "d3")).await;
    let ok = resumed
        .request(json!({"type":"subscribe","topics":["incidents"],"since":{"epoch":epoch,"seq":cut}}))
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    for c in [&mut console, &mut resumed] {
        let mut created: HashMap<String, u64> = HashMap::new();
        let mut places = HashSet::new();
        let mut last_seq = cut;
        loop {
            let f = c.recv().await;
            if f["type"] != "event" {
                continue;
            }
            let seq = f["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "seq {seq} repeated or out of order");
            last_seq = seq;
            if f["change"] == "created" {
                let at = f["incident"]["location"].to_string();
                assert!(
                    places.insert(at.clone()),
                    "two incidents created at {at}: a create applied twice"
                );
                *created
                    .entry(f["incident"]["id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                if f["incident"]["id"] == last_id.as_str() {
                    break;
                }
            }
        }
        for id in acked.values() {
            assert_eq!(created.get(id), Some(&1), "acknowledged {id} not exactly once");
        }
        // No request made two incidents (N creates + the last one at most).
        assert!(created.len() <= N as usize + 1, "{} incidents", created.len());
    }
    eprintln!(
        "engine a killed after 100 acks: {} acknowledged, {} refused (internal), stream end {}",
        acked.len(),
        refused.len(),
        seqs.len()
    );
}

#[tokio::test]
async fn sigstop_of_the_active_engine_the_standby_takes_over_and_the_old_one_appends_nothing_and_exits() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, b, hub) = region(&nats, &tmp, 1).await;
    let h = hub.host();
    let (mut d, _) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    assert_eq!(d.request(create(51.23, 51.37)).await["type"], "ok");
    assert_eq!(healthz(&a).await, "ok active\n");
    assert_eq!(healthz(&b).await, "ok standby\n");

    a.signal("STOP");
    b.wait_active().await;
    // Commands through the hub reach the new engine.
    let ok = d.request(create(51.24, 51.37)).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let (_, before) = stream_seqs(&nats.urls()).await;

    // A wakes up: its renewal is refused (or its next append fenced): it stops,
    // non-zero, and the stream holds no record of it after the takeover.
    a.signal("CONT");
    old_engine_exits_having_appended_nothing(&mut a, &b, &nats.urls(), before, &mut d).await;
}

#[tokio::test]
async fn partition_of_the_active_engine_the_standby_takes_over_and_the_old_one_appends_nothing_and_exits() {
    let Some(mut nats) = NatsCluster::start_or_skip(3) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let node = |i: usize| nats.nodes()[i].url();
    let (n0, others) = (node(0), format!("{},{}", node(1), node(2)));
    // a knows only n0 (the test servers advertise no other URL); b and the hub
    // know only n1 and n2.
    let mut a = engine(&tmp, "a", &n0, 3);
    a.wait_active().await;
    let b = engine(&tmp, "b", &others, 3);
    let hub = BinServer::start(&tmp.path().join("hub"), &node_toml(&others, "hub", 3));
    let (mut d, _) = Client::login(&hub.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    assert_eq!(d.request(create(51.23, 51.37)).await["type"], "ok");
    assert_eq!(healthz(&a).await, "ok active\n");
    assert_eq!(healthz(&b).await, "ok standby\n");

    // Cut a off: its only server stops. b takes over once the lease lapsed (and,
    // if n0 led the lease bucket or the stream, once n1/n2 elected a new leader).
    nats.kill(0).unwrap();
    b.wait_active().await;
    // The hub may still be re-creating its consumer of the stream (its server may
    // have been n0): the create is retried like any client would.
    let started = Instant::now();
    let (ok, refused) = create_retrying(&mut d, 100, "after-takeover", 51.24).await;
    eprintln!(
        "partition: first create after the takeover took {:?} ({refused} refusals first)",
        started.elapsed()
    );
    assert_eq!(ok["type"], "ok", "the new engine serves: {ok}");
    let (_, before) = stream_seqs(&others).await;

    // n0 comes back: a reconnects, learns it lost the lease, appends nothing and
    // exits non-zero.
    nats.restart(0).unwrap();
    old_engine_exits_having_appended_nothing(&mut a, &b, &nats.urls(), before, &mut d).await;
}
