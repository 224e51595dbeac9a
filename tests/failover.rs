//! Failover of a region's engine, end to end with real processes: two `role =
//! "engine"` nodes (one active, one standby on the region's lease) and a hub, over
//! real nats-servers on loopback. `kill -9` of the active engine under pipelined
//! creates on a 3-node R3 cluster (every acknowledged create in the stream exactly
//! once, the standby serves, the hub's console resumes with `since`); SIGSTOP of
//! the active engine until the standby took over, then SIGCONT (the old engine
//! appends nothing and exits non-zero); a partition (the active engine's only NATS
//! server stops until the standby took over, then comes back: the old engine
//! appends nothing and exits non-zero); a rolling restart of every process (3
//! nats-servers, 2 engines, 2 hubs) under steady keyed creates: nothing lost or
//! doubled, no error but retried commands. Each test prints `SKIPPED` and returns when
//! nats-server is not installed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use opcenter_cluster::testing::NatsCluster;
use opcenter_cluster::{JetStreamJournal, JournalOptions};
use opcenter_proto::auth::Role;
use opcenter_store::Journal;

use crate::cluster::{REGION, node_toml, stream_seqs};
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

/// `n` creates by `d` on a grid `per_row` wide (0.001° apart), each acknowledged.
async fn create_grid(d: &mut Client, n: u64, per_row: u64) {
    for i in 0..n {
        let ok = d
            .request(create(
                51.2 + (i % per_row) as f64 * 0.001,
                51.3 + (i / per_row) as f64 * 0.001,
            ))
            .await;
        assert_eq!(ok["type"], "ok", "{ok}");
    }
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

/// The replies to `n` pipelined creates read from `stream`, `victim` killed -9
/// once `kill_after` are acknowledged: acknowledged id → incident id, and the ids
/// refused `internal` (never any other error, never two replies to one create).
async fn replies_killing<S>(
    stream: &mut S,
    n: u64,
    victim: &mut BinServer,
    kill_after: usize,
) -> (BTreeMap<u64, String>, HashSet<u64>)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut refused = HashSet::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    while acked.len() + refused.len() < n as usize {
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
        if !killed && acked.len() >= kill_after {
            victim.kill9();
            killed = true;
        }
    }
    assert!(killed, "the active engine was not killed mid-burst");
    (acked, refused)
}

/// Reads `c`'s incident events after `cut` up to the creation of `last_id`: seqs
/// strictly increasing (nothing repeated), no two incidents created at one place
/// (a create applied twice), every id of `acked` created exactly once, and at most
/// `most` incidents created.
async fn assert_created_once<'a>(
    c: &mut Client,
    cut: u64,
    last_id: &str,
    acked: impl IntoIterator<Item = &'a String>,
    most: usize,
) {
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
            if f["incident"]["id"] == last_id {
                break;
            }
        }
    }
    for id in acked {
        assert_eq!(created.get(id), Some(&1), "acknowledged {id} not exactly once");
    }
    assert!(created.len() <= most, "{} incidents", created.len());
}

/// A dispatcher console on hub `h` subscribed to incidents: it, the epoch and
/// the seq of its subscription.
async fn incidents_console(h: &str) -> (Client, String, u64) {
    let (mut console, hello) = Client::login(h, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let ok = console
        .request(json!({"type":"subscribe","topics":["incidents"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    (console, epoch, ok["seq"].as_u64().unwrap())
}

/// A dispatcher console on hub `h` resuming incidents `since` `(epoch, cut)`.
async fn resumed_console(h: &str, epoch: &str, cut: u64) -> Client {
    let (mut resumed, _) = Client::login(h, Encoding::Json, &token(Role::Dispatcher, "d3")).await;
    let ok = resumed
        .request(json!({"type":"subscribe","topics":["incidents"],"since":{"epoch":epoch,"seq":cut}}))
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    resumed
}

/// The stream's record seqs are `1..=n`; returns n.
async fn assert_stream_contiguous(urls: &str, epoch: &str) -> usize {
    let (stream_epoch, seqs) = stream_seqs(urls).await;
    assert_eq!(stream_epoch, epoch);
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "stream record seqs not contiguous at index {i}");
    }
    seqs.len()
}

/// The value of gauge or counter `name` in `e`'s `/metrics` (`None`: not there).
/// When an engine began serving the hubs' commands (Unix seconds, a gauge).
const SERVING_SINCE: &str = "opcenter_engine_serving_since_seconds";

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn metric(e: &BinServer, name: &str) -> Option<f64> {
    let (status, body) = http(e.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (up to 60 s) until standby `e` says it is `ok standby` and has followed
/// the stream to its end (`opcenter_standby_lag_records` 0) with at least
/// `followed` records applied while following; returns how many it followed.
async fn wait_standby_caught_up(e: &BinServer, followed: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if healthz(e).await == "ok standby\n" {
            let lag = metric(e, "opcenter_standby_lag_records").await;
            let done = metric(e, "opcenter_standby_followed_records").await;
            if let (Some(0.0), Some(done)) = (lag, done)
                && done >= followed
            {
                return done;
            }
        }
        assert!(
            Instant::now() < until,
            "the standby never caught up with the stream"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

    let (mut console, epoch, cut) = incidents_console(&h).await;

    // Pipelined creates without keys: a create the old engine applied but could not
    // answer is retried by the hub against the new one, which answers it from the
    // call ids in the stream instead of applying it again.
    const N: u64 = 400;
    let (w, _) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "w")).await;
    let (sink, mut stream) = w.ws.split();
    let writer = spawn_pipelined_creates(sink, N, Duration::from_millis(4));
    let (acked, refused) = replies_killing(&mut stream, N, &mut a, 100).await;
    let _sink = writer.await.unwrap();
    b.wait_active().await;

    // The stream: record seqs contiguous, each acknowledged create exactly once.
    let records = assert_stream_contiguous(&nats.urls(), &epoch).await;
    // One audit chain through both engines' takeover markers.
    crate::audit_stream::assert_chain_holds(&nats.urls(), 2).await;
    // The console on the hub stayed; a new one resumes with `since` from before the
    // burst: both see one `created` per acknowledged incident, nothing repeated.
    let (mut d, _) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "d2")).await;
    let last = d.request(create(51.25, 51.35)).await;
    assert_eq!(last["type"], "ok", "the standby serves: {last}");
    let last_id = last["incident"]["id"].as_str().unwrap().to_owned();
    let mut resumed = resumed_console(&h, &epoch, cut).await;
    for c in [&mut console, &mut resumed] {
        // No request made two incidents (N creates + the last one at most).
        assert_created_once(c, cut, &last_id, acked.values(), N as usize + 1).await;
    }
    eprintln!(
        "engine a killed after 100 acks: {} acknowledged, {} refused (internal), stream end {records}",
        acked.len(),
        refused.len(),
    );
}

/// Three handovers in one region under pipelined creates (kill a → b serves,
/// restart a as the standby; kill b → a serves, restart b; kill a → b serves):
/// after each, every acknowledged create is in the stream exactly once, the console
/// that stayed on the hub and one resuming with `since` see each once, nothing
/// repeated, and the new engine replayed only the tail its warm standby had not
/// followed (a cold recovery replays every record: there is no snapshot yet).
#[tokio::test]
async fn three_kill_9_handovers_in_one_region_each_lose_nothing_and_double_nothing() {
    let Some(nats) = NatsCluster::start_or_skip(3) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let urls = nats.urls();
    let (a, b, hub) = region(&nats, &tmp, 3).await;
    let h = hub.host();
    let (mut console, epoch, cut) = incidents_console(&h).await;

    const N: u64 = 300;
    let names = ["a", "b"];
    let mut engines = [a, b];
    let mut active = 0;
    let mut acked_all: Vec<String> = Vec::new();
    let mut d = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, "d2"))
        .await
        .0;
    for round in 0..3u64 {
        let standby = 1 - active;
        // A few creates the standby follows before the burst: with it caught up,
        // the tail it replays at takeover is at most the burst.
        let mut this_round = Vec::new();
        for i in 0..20 {
            let ok = d
                .request(create(51.1 + round as f64 * 0.01, 51.1 + i as f64 * 0.001))
                .await;
            assert_eq!(ok["type"], "ok", "{ok}");
            this_round.push(ok["incident"]["id"].as_str().unwrap().to_owned());
        }
        wait_standby_caught_up(&engines[standby], 0.0).await;
        let before_burst = assert_stream_contiguous(&urls, &epoch).await;
        // A standby does not serve the hubs' commands: no such time yet.
        assert_eq!(metric(&engines[standby], SERVING_SINCE).await, None);
        let before_kill = unix_seconds();

        let (w, _) = Client::login(&h, Encoding::Json, &token(Role::Dispatcher, &format!("w{round}"))).await;
        let (sink, mut stream) = w.ws.split();
        let writer = spawn_pipelined_creates_from(sink, round * N + 1, N, Duration::from_millis(4));
        let (acked, refused) = replies_killing(&mut stream, N, &mut engines[active], 100).await;
        let _sink = writer.await.unwrap();
        engines[standby].wait_active().await;
        this_round.extend(acked.into_values());

        let serving = metric(&engines[standby], SERVING_SINCE)
            .await
            .expect("the new engine says when it began serving");
        assert!(
            (before_kill..=unix_seconds()).contains(&serving),
            "handover {}: serving since {serving}, the kill came after {before_kill}",
            round + 1
        );
        let records = assert_stream_contiguous(&urls, &epoch).await;
        let from = metric(&engines[standby], "opcenter_replay_from_seq").await;
        let replayed = metric(&engines[standby], "opcenter_replayed_records").await;
        eprintln!(
            "handover {}: {} killed, {} refused (internal), stream end {records}, \
             the new engine replayed {replayed:?} records after seq {from:?}",
            round + 1,
            names[active],
            refused.len()
        );
        // Warm: it replayed from where it had followed to (at least the stream's end
        // before the burst); cold it would replay from 0 (there is no snapshot).
        let from = from.expect("the new engine says where it replayed from");
        assert!(
            from >= before_burst as f64,
            "handover {}: replayed from seq {from}, the standby had followed {before_burst}",
            round + 1
        );

        // The new engine serves; a console resuming from before the first burst
        // and the one that stayed see every acknowledged create exactly once.
        let last = d.request(create(51.25, 51.35 + round as f64 * 0.001)).await;
        assert_eq!(last["type"], "ok", "the new engine serves: {last}");
        let last_id = last["incident"]["id"].as_str().unwrap().to_owned();
        this_round.push(last_id.clone());
        acked_all.extend(this_round.iter().cloned());
        let mut resumed = resumed_console(&h, &epoch, cut).await;
        let most = (round as usize + 1) * (N as usize + 21);
        assert_created_once(&mut resumed, cut, &last_id, &acked_all, most).await;
        // The console that stayed reads on from the previous round.
        assert_created_once(&mut console, cut, &last_id, &this_round, N as usize + 21).await;

        // The killed engine comes back as the standby.
        let name = names[active];
        engines[active] = engine(&tmp, name, &urls, 3);
        active = standby;
    }
    crate::audit_stream::assert_chain_holds(&urls, 4).await;
}

/// A warm standby that followed the stream replays only the tail at takeover: it
/// loads the snapshot once and applies every record while standing by, so after it
/// caught up nothing is left to replay (a cold recovery would replay every record).
#[tokio::test]
async fn a_warm_standby_that_followed_the_stream_replays_only_the_tail_at_takeover() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, b, hub) = region(&nats, &tmp, 1).await;
    let (mut d, _) = Client::login(&hub.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    wait_standby_caught_up(&b, 0.0).await;
    const N: u64 = 200;
    let first = d.request(create(51.19, 51.29)).await;
    let first_id = first["incident"]["id"].as_str().expect("an id").to_owned();
    create_grid(&mut d, N, 20).await;
    let followed = wait_standby_caught_up(&b, N as f64).await;
    assert_eq!(
        metric(&a, "opcenter_read_copy_from_standby").await,
        Some(0.0),
        "the first engine copied its recovered state"
    );
    a.kill9();
    b.wait_active().await;
    // The new engine's read model took the standby's followed copy over, and it
    // holds what was created before the kill.
    assert_eq!(metric(&b, "opcenter_read_copy_from_standby").await, Some(1.0));
    let (status, body) = incident_over_http(b.addr, &first_id, Role::Dispatcher, "d1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&first_id), "{body}");
    let (_, seqs) = stream_seqs(&nats.urls()).await;
    let replayed = metric(&b, "opcenter_replayed_records").await.expect("replayed");
    let from = metric(&b, "opcenter_replay_from_seq")
        .await
        .expect("replayed from");
    eprintln!(
        "the standby followed {followed} records; {} in the stream; replayed {replayed} after seq {from} at takeover",
        seqs.len()
    );
    assert!(seqs.len() as u64 >= N);
    assert!(
        from >= N as f64,
        "replayed from seq {from}, not from where it had followed to"
    );
    // Only what the active engine appended after the standby's last read (its own
    // timers, if any) is left: never the records it followed.
    assert!(replayed < 10.0, "replayed {replayed} records at takeover");
    let ok = d.request(create(51.25, 51.35)).await;
    assert_eq!(ok["type"], "ok", "the new engine serves: {ok}");
}

/// A takeover does not write a snapshot at once: the active engine wrote them
/// while the standby stood by (which loaded none: the stream was empty), the
/// standby listed them, and the new engine's next one is due
/// `snapshot_every_events` after the newest of those. (Before, a takeover
/// copied and wrote the whole state at its first batch: 133 MB at 250 000
/// incidents, while the handover's backlog waited.)
#[tokio::test]
async fn a_takeover_writes_its_first_snapshot_only_when_one_is_due() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let every = [("OPCENTER_STORAGE__SNAPSHOT_EVERY_EVENTS", "100")];
    let extra = |name: &str| format!("{}node = \"{name}\"\n", node_toml(&nats.urls(), "engine", 1));
    let mut a = BinServer::start_with_env(&tmp.path().join("a"), &extra("a"), &every);
    a.wait_active().await;
    let b = BinServer::start_with_env(&tmp.path().join("b"), &extra("b"), &every);
    let hub = BinServer::start(&tmp.path().join("hub"), &node_toml(&nats.urls(), "hub", 1));
    let (mut d, _) = Client::login(&hub.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    wait_standby_caught_up(&b, 0.0).await;
    create_grid(&mut d, 150, 10).await;
    // The active engine's snapshots, as the standby lists them (every 10 s).
    let until = Instant::now() + Duration::from_secs(30);
    let newest = loop {
        let listed = metric(&b, "opcenter_standby_newest_snapshot_seq")
            .await
            .unwrap_or(0.0);
        if listed >= 100.0 {
            break listed as u64;
        }
        assert!(
            Instant::now() < until,
            "the standby never listed a snapshot past seq 100 ({listed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let urls = nats.urls();
    let in_bucket = || {
        let urls = urls.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                JetStreamJournal::connect(&urls, JournalOptions::new(REGION))
                    .expect("open the stream")
                    .latest_snapshot_seq()
                    .expect("list the snapshots")
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(in_bucket().await, Some(newest), "the active engine wrote it");
    wait_standby_caught_up(&b, 1.0).await;
    a.kill9();
    b.wait_active().await;
    let (_, seqs) = stream_seqs(&urls).await;
    let end = *seqs.last().unwrap();
    assert!(
        end < newest + 100,
        "a snapshot is due only after {}: the stream ends at {end}",
        newest + 100
    );
    // A few commands: each is a batch that would have taken the snapshot.
    for i in 0..5u64 {
        let ok = d.request(create(51.25, 51.35 + i as f64 * 0.001)).await;
        assert_eq!(ok["type"], "ok", "the new engine serves: {ok}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        in_bucket().await,
        Some(newest),
        "the new engine wrote a snapshot before one was due"
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
    crate::audit_stream::assert_chain_holds(&nats.urls(), 2).await;
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
    crate::audit_stream::assert_chain_holds(&nats.urls(), 2).await;
}

/// What a writer of the rolling-restart test saw.
#[derive(Default)]
struct Written {
    /// Create key → incident id, for every acknowledged create.
    acked: BTreeMap<String, String>,
    /// Creates sent again with their key: after an `internal` refusal or a
    /// connection its hub closed.
    retried: u32,
    /// Any other error reply (none may come).
    errors: Vec<Value>,
}

/// One dispatcher creating keyed incidents one at a time (about 40/s) through
/// whichever hub of `hubs` answers, until `stop`; a create without an answer (its
/// hub went away) or refused `internal` is sent again with the same key.
async fn rolling_writer(
    w: usize,
    hubs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Written {
    use std::sync::atomic::Ordering;
    let mut out = Written::default();
    let mut conn: Option<opcenter_sim::wire::Ws> = None;
    let mut pick = w;
    let mut pending: Option<Value> = None;
    let (mut n, mut req) = (0u64, 0u64);
    let tok = token(Role::Dispatcher, &format!("w{w}"));
    loop {
        if pending.is_none() {
            if stop.load(Ordering::SeqCst) {
                return out;
            }
            n += 1;
            let mut body = create(51.2 + n as f64 * 0.0001, 51.3 + w as f64 * 0.01);
            body["key"] = json!(format!("w{w}-{n}"));
            pending = Some(body);
        }
        let Some(ws) = conn.as_mut() else {
            let host = {
                let hubs = hubs.lock().unwrap();
                hubs[pick % hubs.len()].clone()
            };
            pick += 1;
            if let Ok(mut ws) = opcenter_sim::wire::open(&host).await {
                let hello = json!({"type":"hello","token":tok,"protocol":1,"id":0});
                if ws.send(Message::Text(hello.to_string().into())).await.is_ok()
                    && matches!(reply_to(&mut ws, 0).await, Some(r) if r["type"] == "ok")
                {
                    conn = Some(ws);
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        req += 1;
        let mut body = pending.clone().unwrap();
        body["id"] = json!(req);
        let reply = match ws.send(Message::Text(body.to_string().into())).await {
            Ok(()) => reply_to(ws, req).await,
            Err(_) => None,
        };
        match reply {
            Some(r) if r["type"] == "ok" => {
                let key = body["key"].as_str().unwrap().to_owned();
                out.acked
                    .insert(key, r["incident"]["id"].as_str().unwrap().to_owned());
                progress.fetch_add(1, Ordering::SeqCst);
                pending = None;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Some(r) if r["code"] == "internal" => out.retried += 1,
            Some(r) => {
                out.errors.push(r);
                pending = None;
            }
            // The hub closed the connection (a restart): the same key through the other.
            None => {
                out.retried += 1;
                conn = None;
            }
        }
    }
}

/// The reply with `id` (skipping other frames), or `None` when the connection
/// ends; panics when nothing came for 60 s.
async fn reply_to(ws: &mut opcenter_sim::wire::Ws, id: u64) -> Option<Value> {
    loop {
        let m = match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => return None,
            Err(_) => panic!("no reply to command {id} within 60 s"),
        };
        let Message::Text(t) = m else {
            if matches!(m, Message::Close(_)) {
                return None;
            }
            continue;
        };
        let f: Value = serde_json::from_str(t.as_str()).unwrap();
        if f["id"] == id && (f["type"] == "ok" || f["type"] == "error") {
            return Some(f);
        }
    }
}

#[tokio::test]
async fn rolling_restart_of_every_process_under_steady_load_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let Some(mut nats) = NatsCluster::start_or_skip(3) else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let urls = nats.urls();
    let a = engine(&tmp, "a", &urls, 3);
    a.wait_active().await;
    let mut engines = vec![("a", a), ("b", engine(&tmp, "b", &urls, 3))];
    let hub = |name: &str| BinServer::start(&tmp.path().join(name), &node_toml(&urls, "hub", 3));
    let mut hub_procs = [hub("h1"), hub("h2")];
    let hubs = Arc::new(std::sync::Mutex::new(
        hub_procs.iter().map(BinServer::host).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(rolling_writer(w, hubs.clone(), stop.clone(), progress.clone())))
        .collect();
    // After each restart the load goes on: 20 more acknowledged creates.
    let goes_on = |what: String| {
        let progress = progress.clone();
        async move {
            let from = progress.load(Ordering::SeqCst);
            let until = Instant::now() + Duration::from_secs(60);
            while progress.load(Ordering::SeqCst) < from + 20 {
                assert!(Instant::now() < until, "no progress after {what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            eprintln!("rolling restart: {what} done at {:?}", started.elapsed());
        }
    };
    // What a supervisor does: an engine that exited is started again. One exits
    // when a NATS restart held up its lease renewals past the TTL and the standby
    // took the lease (a failover, not a loss).
    let mut failovers = 0;
    let mut supervise = |engines: &mut Vec<(&str, BinServer)>| {
        for (name, e) in engines.iter_mut() {
            if let Some(status) = e.wait_exit(Duration::ZERO) {
                eprintln!("rolling restart: engine {name} exited ({status}); starting it again");
                assert!(!status.success());
                *e = engine(&tmp, name, &urls, 3);
                failovers += 1;
            }
        }
    };
    goes_on("the start".into()).await;

    for i in 0..3 {
        nats.restart(i).unwrap();
        goes_on(format!("nats-server n{i}")).await;
        supervise(&mut engines);
    }
    // The standby, then the active engine (a clean stop hands the lease over).
    for role in ["ok standby\n", "ok active\n"] {
        let mut which = None;
        let until = Instant::now() + Duration::from_secs(60);
        while which.is_none() {
            assert!(Instant::now() < until, "no engine says {role:?}");
            supervise(&mut engines);
            for (i, (_, e)) in engines.iter().enumerate() {
                // An engine exiting right now does not answer: the next round tells.
                let said = opcenter_sim::http::HttpClient::new(&e.host())
                    .request("GET", "/healthz", None, None)
                    .await
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned());
                if said.is_ok_and(|s| s == role) {
                    which = Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (name, e) = &mut engines[which.unwrap()];
        assert!(e.terminate().success(), "engine {name} stopped cleanly");
        *e = engine(&tmp, name, &urls, 3);
        goes_on(format!("engine {name} ({})", role.trim())).await;
        supervise(&mut engines);
    }
    for (i, name) in ["h1", "h2"].into_iter().enumerate() {
        assert!(hub_procs[i].terminate().success());
        hub_procs[i] = hub(name);
        hubs.lock().unwrap()[i] = hub_procs[i].host();
        goes_on(format!("hub {name}")).await;
    }

    stop.store(true, Ordering::SeqCst);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut retried = 0;
    for w in writers {
        let out = w.await.unwrap();
        assert!(
            out.errors.is_empty(),
            "errors other than a retried command: {:?}",
            out.errors
        );
        retried += out.retried;
        acked.extend(out.acked);
    }
    // Every acknowledged create is in the state exactly once, and nothing else is:
    // a create retried after its hub went away was not applied twice.
    let ids: HashSet<&str> = acked.values().map(String::as_str).collect();
    assert_eq!(ids.len(), acked.len(), "two keys acknowledged with one incident");
    let hosts = hubs.lock().unwrap().clone();
    for host in hosts {
        let (mut c, _) = Client::login(&host, Encoding::Json, &token(Role::Dispatcher, "check")).await;
        let ok = c
            .request(json!({"type":"subscribe","topics":["incidents"]}))
            .await;
        assert_eq!(ok["type"], "ok", "{ok}");
        let open: HashSet<&str> = ok["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            open, ids,
            "the incidents on {host} are not exactly the acknowledged creates"
        );
    }
    let (_, seqs) = stream_seqs(&urls).await;
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "stream record seqs not contiguous at index {i}");
    }
    eprintln!(
        "rolling restart: {} creates acknowledged, {retried} retried, {failovers} engine(s) restarted after a lost lease, {:?}",
        acked.len(),
        started.elapsed()
    );
}
