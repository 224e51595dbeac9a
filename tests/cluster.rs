//! A region on NATS JetStream, end to end: the real `opcenter` binary in the `both`
//! role (`[cluster]` section) over real `nats-server` processes on loopback. The
//! whole incident flow and a graceful restart (KV snapshot + replay); `kill -9` of
//! the node during a burst of creates; two nodes for one region (the second stands
//! by and takes over, tests/failover.rs has the rest); an R3
//! cluster losing its stream leader during creates. Each test prints `SKIPPED` and
//! returns when nats-server is not installed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use opcenter_cluster::testing::NatsCluster;
use opcenter_cluster::{JetStreamJournal, JournalOptions};
use opcenter_proto::auth::Role;
use opcenter_store::Journal;

use crate::common::*;

pub(crate) const REGION: &str = "zko";

/// The `[cluster]` table of a `both` node of [`REGION`] on `urls` (comma-separated).
fn cluster_toml(urls: &str, replicas: usize) -> String {
    node_toml(urls, "both", replicas)
}

/// The `[cluster]` table of a node of [`REGION`] in `role` on `urls`.
pub(crate) fn node_toml(urls: &str, role: &str, replicas: usize) -> String {
    let list: Vec<String> = urls.split(',').map(|u| format!("{u:?}")).collect();
    format!(
        "[cluster]\nnats = [{}]\nregion = \"{REGION}\"\nrole = \"{role}\"\nreplicas = {replicas}\n",
        list.join(", ")
    )
}

/// Every record seq in the region's stream, read straight from JetStream (a reader
/// never appends, so it fences no one), and the stream's epoch.
pub(crate) async fn stream_seqs(urls: &str) -> (String, Vec<u64>) {
    region_stream_seqs(urls, REGION).await
}

/// [`stream_seqs`] of any region's stream.
pub(crate) async fn region_stream_seqs(urls: &str, region: &str) -> (String, Vec<u64>) {
    let (urls, region) = (urls.to_owned(), region.to_owned());
    tokio::task::spawn_blocking(move || {
        let j = JetStreamJournal::connect(&urls, JournalOptions::new(region)).expect("open the stream");
        let mut seqs = Vec::new();
        loop {
            let recs = j.read_from(seqs.last().copied().unwrap_or(0), 4096).unwrap();
            if recs.is_empty() {
                break;
            }
            seqs.extend(recs.iter().map(|r| r.seq));
        }
        (j.epoch().to_owned(), seqs)
    })
    .await
    .unwrap()
}

/// `1..=n`, the only shape the stream's record seqs may have.
fn assert_contiguous(seqs: &[u64]) {
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "stream record seqs not contiguous at index {i}");
    }
}

fn dispatcher() -> String {
    token(Role::Dispatcher, "d1")
}

fn incident_id(f: &Value) -> String {
    f["incident"]["id"].as_str().unwrap_or_default().to_owned()
}

/// Logs in a dispatcher and subscribes to incidents, resuming `since` if given.
async fn incidents(host: &str, since: Option<(&str, u64)>) -> (Client, Value, Value) {
    let (mut c, hello) = Client::login(host, Encoding::Json, &dispatcher()).await;
    let mut sub = json!({"type":"subscribe","topics":["incidents"]});
    if let Some((epoch, seq)) = since {
        sub["since"] = json!({"epoch":epoch,"seq":seq});
    }
    let ok = c.request(sub).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    (c, hello, ok)
}

/// Sends a create with `id` and waits up to `wait` for its reply (an R3 leader
/// election delays it by seconds; the harness's request waits less).
async fn create_within(c: &mut Client, id: u64, wait: Duration) -> Value {
    let mut body = create(51.2 + (id % 50) as f64 * 0.001, 51.3);
    body["id"] = json!(id);
    c.send(body).await;
    let until = tokio::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Some(Got::Frame(f)) if (f["type"] == "ok" || f["type"] == "error") && f["id"] == json!(id) => {
                return f;
            }
            Some(Got::Frame(_)) => {}
            other => panic!("no reply to create {id} within {wait:?}: {other:?}"),
        }
    }
}

/// The open incidents of a subscribe snapshot, by id.
fn open_incidents(snapshot: &Value) -> HashMap<String, Value> {
    snapshot["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_owned(), i.clone()))
        .collect()
}

/// One nats-server, a temp dir and the `[cluster]` table for it (`None`: skipped).
fn single_server() -> Option<(NatsCluster, tempfile::TempDir, String)> {
    let nats = NatsCluster::start_or_skip(1)?;
    let extra = cluster_toml(&nats.urls(), 1);
    Some((nats, tempfile::tempdir().unwrap(), extra))
}

#[tokio::test]
async fn incident_flow_and_graceful_restart_on_a_single_nats_server() {
    let Some((nats, tmp, extra)) = single_server() else {
        return;
    };
    let data = tmp.path().join("data");
    let mut node = BinServer::start(&data, &extra);
    crate::hub_e2e::full_flow_on(&node.host(), Encoding::Json, Encoding::Msgpack).await;
    // The flow's tablets closed as it returned; each one's `offline` event commits
    // once the server has seen its session end. Wait for both, so that no event
    // of the flow lands after the seq read below.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mut c, _) = Client::login(&node.host(), Encoding::Json, &dispatcher()).await;
        let snap = c.request(json!({"type":"subscribe","topics":["units"]})).await;
        let units = snap["units"].as_array().cloned().unwrap_or_default();
        if units.len() >= 2 && units.iter().all(|u| u["online"] == json!(false)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flow's tablets still online: {snap}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_c, hello, sub) = incidents(&node.host(), None).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let last = hello["seq"].as_u64().unwrap();
    let (stream_epoch, seqs) = stream_seqs(&nats.urls()).await;
    assert_eq!(epoch, stream_epoch, "the epoch is the stream's identity");
    assert_contiguous(&seqs);
    assert_eq!(
        seqs.len() as u64,
        last,
        "every event of the flow is in the stream"
    );

    // SIGTERM writes the final snapshot to the KV bucket; the restart loads it.
    assert!(node.terminate().success());
    let node = BinServer::start(&data, &extra);
    let (_d, hello2, sub2) = incidents(&node.host(), Some((&epoch, 0))).await;
    assert_eq!(hello2["epoch"], epoch.as_str());
    assert_eq!(hello2["seq"].as_u64().unwrap(), last);
    assert_eq!(sub2["recovered"], true, "{sub2}");
    let (_e, _, snap) = incidents(&node.host(), None).await;
    assert_eq!(
        snap["incidents"], sub["incidents"],
        "state after snapshot + replay"
    );
}

#[tokio::test]
async fn kill_9_of_the_node_during_creates_loses_nothing_acknowledged() {
    let Some((nats, tmp, extra)) = single_server() else {
        return;
    };
    let data = tmp.path().join("data");
    let mut node = BinServer::start(&data, &extra);
    let _t1 = tablet(&node.host(), Encoding::Json, "P-1", 51.23, 51.37).await;
    let (c, hello, sub) = incidents(&node.host(), None).await;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();
    let cut_before = sub["seq"].as_u64().unwrap();
    let (sink, mut stream) = c.ws.split();

    let writer = spawn_create_burst(sink);
    let mut acked: HashMap<String, Value> = HashMap::new();
    let mut seen: BTreeMap<u64, (String, String)> = BTreeMap::new(); // seq -> (change, incident)
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, stream.next()).await {
        let f: Value = match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => break,
            _ => continue,
        };
        match f["type"].as_str() {
            Some("ok") => {
                acked.insert(incident_id(&f), f["incident"].clone());
            }
            Some("event") => {
                let seq = f["seq"].as_u64().unwrap();
                assert!(
                    seen.keys().next_back().is_none_or(|&l| seq > l),
                    "seq {seq} not increasing"
                );
                seen.insert(seq, (f["change"].as_str().unwrap().to_owned(), incident_id(&f)));
            }
            Some("error") => panic!("create refused before the crash: {f}"),
            _ => {}
        }
        if !killed && acked.len() >= 300 {
            node.kill9();
            killed = true;
        }
        assert!(Instant::now() < deadline, "stream did not end");
    }
    assert!(killed, "not killed mid-stream ({} acked)", acked.len());
    writer.abort();
    let max_seen = *seen.keys().next_back().unwrap();

    // Straight from the stream: contiguous, and holding everything a client saw.
    let (stream_epoch, seqs) = stream_seqs(&nats.urls()).await;
    assert_eq!(stream_epoch, epoch);
    assert_contiguous(&seqs);
    assert!(
        seqs.len() as u64 >= max_seen,
        "stream ends at {} < {max_seen} seen",
        seqs.len()
    );

    let node = BinServer::start(&data, &extra);
    // Its killed predecessor's lease lapses first (a clean stop releases it).
    node.wait_active().await;
    let (mut d, hello2, snap) = incidents(&node.host(), None).await;
    assert_eq!(hello2["epoch"], epoch.as_str(), "epoch changed across kill -9");
    assert_eq!(
        hello2["seq"].as_u64().unwrap(),
        seqs.len() as u64,
        "restarted at the stream's end"
    );
    let open = open_incidents(&snap);
    for id in acked.keys() {
        assert!(open.contains_key(id), "acknowledged incident {id} lost");
    }

    // `since` from before the burst replays every seq once, in order, same meaning.
    let (mut r, _, ok) = incidents(&node.host(), Some((&epoch, cut_before))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    let new = d.request(create(51.25, 51.35)).await;
    assert_eq!(new["type"], "ok", "{new}");
    let new_id = incident_id(&new);
    let mut replayed: BTreeMap<u64, (String, String)> = BTreeMap::new();
    loop {
        let f = r.recv().await;
        if f["type"] != "event" {
            continue;
        }
        let seq = f["seq"].as_u64().unwrap();
        assert!(
            replayed.keys().next_back().is_none_or(|&l| seq > l),
            "replay repeats or reorders {seq}"
        );
        let done = f["change"] == "created" && incident_id(&f) == new_id;
        replayed.insert(seq, (f["change"].as_str().unwrap().to_owned(), incident_id(&f)));
        if done {
            assert!(seq > max_seen, "new event reused seq {seq}");
            break;
        }
    }
    for (seq, meaning) in &seen {
        assert_eq!(
            replayed.get(seq),
            Some(meaning),
            "seq {seq} missing or changed in the replay"
        );
    }
    for id in acked.keys() {
        assert!(
            replayed.values().any(|(c, i)| c == "created" && i == id),
            "no replayed `created` for acknowledged {id}"
        );
    }
    eprintln!(
        "kill -9 after {} acknowledged creates (max seq seen {max_seen}, stream end {})",
        acked.len(),
        seqs.len()
    );
}

#[tokio::test]
async fn a_second_node_for_the_region_stands_by_and_takes_over_when_the_first_dies() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let extra = cluster_toml(&nats.urls(), 1);
    let mut a = BinServer::start(&tmp.path().join("a"), &extra);
    let (mut on_a, hello_a, _) = incidents(&a.host(), None).await;
    assert_eq!(on_a.request(create(51.23, 51.37)).await["type"], "ok");

    // B finds the region's lease held: it stands by (healthy), serving nothing else.
    let b = BinServer::start(&tmp.path().join("b"), &extra);
    assert_eq!(
        http(b.addr, "GET", "/healthz", None, None).await,
        (200, "ok standby\n".to_owned())
    );
    assert_eq!(http(a.addr, "GET", "/healthz", None, None).await.1, "ok active\n");
    assert_eq!(on_a.request(create(51.24, 51.37)).await["type"], "ok");

    // A dies: B takes the lease once it lapses, fences A's stream position, serves.
    a.kill9();
    let until = Instant::now() + Duration::from_secs(60);
    while http(b.addr, "GET", "/healthz", None, None).await.1 != "ok active\n" {
        assert!(Instant::now() < until, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut on_b, hello_b, snap) = incidents(&b.host(), None).await;
    assert_eq!(hello_b["epoch"], hello_a["epoch"], "one region, one stream");
    assert_eq!(open_incidents(&snap).len(), 2, "{snap}");
    assert_eq!(on_b.request(create(51.26, 51.37)).await["type"], "ok");
    let (_, seqs) = stream_seqs(&nats.urls()).await;
    assert_contiguous(&seqs);
    let (_c, hello, snap) = incidents(&b.host(), None).await;
    assert_eq!(hello["seq"].as_u64().unwrap(), seqs.len() as u64);
    assert_eq!(open_incidents(&snap).len(), 3, "{snap}");
    drop(b);
}

#[tokio::test]
async fn r3_cluster_loses_its_stream_leader_during_creates_and_nothing_acknowledged_is_lost() {
    let Some(mut nats) = NatsCluster::start_or_skip(3) else {
        return;
    };
    let urls = nats.urls();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let extra = cluster_toml(&urls, 3);
    let mut node = BinServer::start(&data, &extra);
    let (mut c, _, _) = incidents(&node.host(), None).await;

    let leader = {
        let urls = urls.clone();
        tokio::task::spawn_blocking(move || {
            let j = JetStreamJournal::connect(&urls, JournalOptions::new(REGION).replicas(3)).unwrap();
            (0..100)
                .find_map(|_| {
                    let l = j.stream_info().ok()?.cluster?.leader;
                    if l.is_none() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    l
                })
                .expect("the stream has a leader")
        })
        .await
        .unwrap()
    };
    let victim = nats.index_of(&leader).unwrap();

    // Sequential creates; the leader dies after the 20th. Every one must be ok'd
    // (the node retries through the election), none refused.
    let mut acked = Vec::new();
    let mut slowest = Duration::ZERO;
    for id in 1..=60u64 {
        if id == 21 {
            nats.kill(victim).unwrap();
        }
        let started = Instant::now();
        let reply = create_within(&mut c, id, Duration::from_secs(40)).await;
        assert_eq!(
            reply["type"], "ok",
            "create {id} around the leader's death: {reply}"
        );
        slowest = slowest.max(started.elapsed());
        acked.push(incident_id(&reply));
    }

    // Restart the node on the two surviving servers: state = the stream's.
    node.kill9();
    let node = BinServer::start(&data, &extra);
    node.wait_active().await;
    let (_d, _, snap) = incidents(&node.host(), None).await;
    let open = open_incidents(&snap);
    for id in &acked {
        assert!(open.contains_key(id), "acknowledged incident {id} lost");
    }
    let (_, seqs) = stream_seqs(&urls).await;
    assert_contiguous(&seqs);
    eprintln!("R3: leader {leader} killed; 60 creates acknowledged, slowest {slowest:?}");
}
