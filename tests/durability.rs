//! Fault tests of the durability contract (PROTOCOL.md §6, §9: "acknowledged means
//! durable"), each against the real `opcenter serve` binary over a real data
//! directory: kill -9 in the middle of a stream of creates, a torn journal tail,
//! a corrupt data directory, a graceful restart while a console is away, idempotency
//! keys across restarts, and the epoch's life.
//!
//! Owns: these end-to-end fault scenarios. Must never: use a fixed port or a shared
//! data directory, or leave a server running (BinServer kills it on drop).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use opcenter_proto::auth::Role;

/// Fast timers for every server here.
const EXTRA: &str = "[dispatch]\ntick_ms = 50\n";

/// A temp dir and the data directory inside it (the config file goes beside it).
fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    (tmp, data)
}

fn dispatcher() -> String {
    token(Role::Dispatcher, "d1")
}

async fn get_incident(server: &BinServer, id: &str) -> (u16, Value) {
    let (status, body) = http(
        server.addr,
        "GET",
        &format!("/v1/incidents/{id}"),
        Some(&dispatcher()),
        None,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn post_report(server: &BinServer, body: &Value) -> (u16, Value) {
    let (status, text) = http(
        server.addr,
        "POST",
        "/v1/reports",
        Some(&token(Role::Intake, "gateway")),
        Some(&body.to_string()),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The id of the object an event carries (incident or unit).
fn object_id(ev: &Value) -> String {
    let obj = if ev["incident"].is_object() {
        &ev["incident"]
    } else {
        &ev["unit"]
    };
    obj["id"].as_str().unwrap_or_default().to_string()
}

/// Every segment of a journal, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("journal-") && n.ends_with(".log")
        })
        .collect();
    v.sort();
    v
}

/// One frame on disk: `[len|flags u32][crc u32][seq u64][hash 32 B][payload]` (opcenter-store).
#[derive(Debug, Clone, Copy)]
struct Frame {
    offset: usize,
    len: usize,
    seq: u64,
    batch_start: bool,
}

/// Walks the frames of a segment up to its zero (preallocated) tail. Test-side
/// parsing only: CRCs are not checked, the server does that.
fn frames(data: &[u8]) -> Vec<Frame> {
    // Format 2 (opcenter-store): a 48-byte segment header, then frames with a
    // 48-byte header (length word, CRC, seq, chain hash).
    const SEGMENT_HEADER: usize = 48;
    const HEADER: usize = 48;
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER;
    while off + HEADER <= data.len() {
        let word = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
        if word == 0 {
            break;
        }
        let payload = (word & ((1 << 30) - 1)) as usize;
        let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap());
        out.push(Frame {
            offset: off,
            len: HEADER + payload,
            seq,
            batch_start: word & (1 << 31) != 0,
        });
        off += HEADER + payload;
    }
    out
}

/// Name → bytes of every file in `dir`.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Logs in a dispatcher and subscribes to `topics`, optionally resuming `since`.
async fn subscribed(
    server: &BinServer,
    topics: &[&str],
    since: Option<(&str, u64)>,
) -> (Client, Value, Value) {
    let (mut c, hello) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    let mut sub = json!({"type":"subscribe","topics":topics});
    if let Some((epoch, seq)) = since {
        sub["since"] = json!({"epoch":epoch,"seq":seq});
    }
    let ok = c.request(sub).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    (c, hello, ok)
}

/// Reads events until the `created` event of incident `id`; returns all events read
/// (that one included), in arrival order.
async fn events_until_created(c: &mut Client, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = c.recv().await;
        if f["type"] != "event" {
            continue;
        }
        let done = f["change"] == "created" && f["topic"] == "incidents" && object_id(&f) == id;
        out.push(f);
        if done {
            return out;
        }
    }
}

async fn create_ok(c: &mut Client, body: Value) -> Value {
    let ok = c.request(body).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    ok["incident"].clone()
}

#[tokio::test]
async fn kill_9_during_a_stream_of_creates_loses_nothing_acknowledged() {
    let (_tmp, data) = data_dir();
    let mut server = BinServer::start(&data, EXTRA);
    // Two tablets, so the first creates are dispatched and later ones stay pending.
    let _t1 = tablet(&server.host(), Encoding::Json, "P-1", 51.23, 51.37).await;
    let _t2 = tablet(&server.host(), Encoding::Json, "P-2", 51.24, 51.38).await;

    let (c, hello, sub) = subscribed(&server, &["incidents"], None).await;
    let epoch = hello["epoch"].as_str().unwrap().to_string();
    let cut_before = sub["seq"].as_u64().unwrap();
    let (sink, mut stream) = c.ws.split();

    let writer = spawn_create_burst(sink);

    // Everything the server said before it died counts as delivered.
    let mut acked: HashMap<String, Value> = HashMap::new(); // incident id -> ok'd incident
    let mut seen: BTreeMap<u64, (String, String)> = BTreeMap::new(); // seq -> (change, incident id)
    let mut latest: HashMap<String, (u64, Value)> = HashMap::new(); // incident id -> newest seen state
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a frame or the end");
        let m = match next {
            Some(Ok(m)) => m,
            Some(Err(_)) | None => break,
        };
        let f: Value = match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => break,
            _ => continue,
        };
        match f["type"].as_str() {
            Some("ok") => {
                let inc = f["incident"].clone();
                acked.insert(inc["id"].as_str().unwrap().to_string(), inc);
            }
            Some("event") => {
                let seq = f["seq"].as_u64().unwrap();
                let id = object_id(&f);
                assert!(
                    seen.keys().next_back().is_none_or(|&last| seq > last),
                    "seq {seq} not increasing"
                );
                seen.insert(seq, (f["change"].as_str().unwrap().to_string(), id.clone()));
                latest.insert(id, (seq, f["incident"].clone()));
            }
            Some("error") => panic!("create refused before the crash: {f}"),
            _ => {}
        }
        if !killed && acked.len() >= 400 {
            server.kill9();
            killed = true;
        }
        assert!(Instant::now() < deadline, "stream did not end");
    }
    assert!(
        killed,
        "the server was not killed mid-stream ({} acked)",
        acked.len()
    );
    writer.abort();
    let max_seen = *seen.keys().next_back().unwrap();

    let server = BinServer::start(&data, EXTRA);
    let (mut d, hello2, snap) = subscribed(&server, &["incidents"], None).await;
    assert_eq!(hello2["epoch"], epoch.as_str(), "epoch changed across kill -9");
    assert!(
        hello2["seq"].as_u64().unwrap() >= max_seen,
        "seq went back: {hello2} < {max_seen}"
    );

    // Every acknowledged incident is there, in the newest state a client saw.
    let open: HashMap<String, Value> = snap["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i.clone()))
        .collect();
    for (id, ok_inc) in &acked {
        let want = latest.get(id).map_or(ok_inc, |(_, inc)| inc);
        let got = open
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged incident {id} lost"));
        assert_eq!(got["status"], want["status"], "{id}");
        assert_eq!(got["units"], want["units"], "{id}");
        assert_eq!(got["location"], want["location"], "{id}");
    }
    for (i, id) in acked.keys().enumerate().filter(|(i, _)| i % 50 == 0) {
        let (status, body) = get_incident(&server, id).await;
        assert_eq!(status, 200, "GET {id} #{i}: {body}");
        assert_eq!(body["incident"]["id"], id.as_str());
    }

    // Resuming from before the stream replays the same seqs with the same meaning.
    let (mut r, _, ok) = subscribed(&server, &["incidents"], Some((&epoch, cut_before))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    // And resuming from the last seq seen works too.
    let (_r2, _, ok2) = subscribed(&server, &["incidents"], Some((&epoch, max_seen))).await;
    assert_eq!(ok2["recovered"], true, "{ok2}");

    let new = create_ok(&mut d, create(51.25, 51.35)).await;
    let new_id = new["id"].as_str().unwrap();
    assert!(!acked.contains_key(new_id), "incident id {new_id} reused");
    let replay = events_until_created(&mut r, new_id).await;
    let (live, replayed) = replay.split_last().unwrap();
    let live_seq = live["seq"].as_u64().unwrap();
    assert!(
        live_seq > max_seen,
        "new event seq {live_seq} <= {max_seen} delivered before the crash"
    );
    let mut last = cut_before;
    let mut created: Vec<String> = Vec::new();
    for ev in replayed {
        let seq = ev["seq"].as_u64().unwrap();
        assert!(seq > last, "replay not strictly increasing at {seq}");
        last = seq;
        if let Some((change, id)) = seen.get(&seq) {
            assert_eq!(
                (ev["change"].as_str().unwrap(), object_id(ev).as_str()),
                (change.as_str(), id.as_str()),
                "seq {seq} reused"
            );
        }
        if ev["change"] == "created" {
            created.push(object_id(ev));
        }
    }
    for seq in seen.keys() {
        assert!(
            replayed.iter().any(|e| e["seq"] == *seq),
            "seq {seq} seen before the crash is missing from the replay"
        );
    }
    for id in acked.keys() {
        assert!(
            created.contains(id),
            "no replayed `created` for acknowledged {id}"
        );
    }
    eprintln!(
        "kill -9 after {} acknowledged creates, {} events seen (max seq {max_seen}); {} incidents after restart",
        acked.len(),
        seen.len(),
        open.len()
    );
}

#[tokio::test]
async fn torn_last_record_is_dropped_and_the_rest_kept() {
    let (_tmp, data) = data_dir();
    let mut server = BinServer::start(&data, EXTRA);
    let (mut d, hello) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    let epoch = hello["epoch"].clone();
    let mut ids = Vec::new();
    for i in 0..6 {
        // One request at a time: one batch each.
        let inc = create_ok(&mut d, create(51.2 + i as f64 * 0.01, 51.3)).await;
        ids.push(inc["id"].as_str().unwrap().to_string());
    }
    server.kill9();

    // 1. Garbage after the last batch (a torn, never acknowledged write): all kept.
    let seg = segments(&data).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let fr = frames(&bytes);
    let end = fr.last().map(|f| f.offset + f.len).unwrap();
    let last_seq = fr.last().unwrap().seq;
    let mut torn = bytes.clone();
    // A header that claims seq last+1 and a 200-byte payload, then 11 bytes of it.
    let mut head = Vec::new();
    head.extend_from_slice(&((200u32) | (1 << 31)).to_le_bytes());
    head.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    head.extend_from_slice(&(last_seq + 1).to_le_bytes());
    head.extend_from_slice(b"torn write!");
    if torn.len() < end + head.len() {
        torn.resize(end + head.len(), 0);
    }
    torn[end..end + head.len()].copy_from_slice(&head);
    std::fs::write(&seg, &torn).unwrap();

    let mut server = BinServer::start(&data, EXTRA);
    let (status, _) = http(server.addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200, "a torn tail must not stop the server");
    for id in &ids {
        assert_eq!(
            get_incident(&server, id).await.0,
            200,
            "{id} lost to a torn tail after it"
        );
    }
    let (_, hello) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    assert_eq!(hello["epoch"], epoch);
    assert_eq!(
        hello["seq"].as_u64().unwrap(),
        last_seq,
        "seq after dropping the torn write"
    );
    server.kill9();
    let after = std::fs::read(&seg).unwrap();
    assert!(
        after.len() <= end || after[end..].iter().all(|&b| b == 0),
        "torn bytes still there"
    );

    // 2. The last batch itself cut mid-record: that batch goes, the ones before stay.
    let bytes = std::fs::read(&seg).unwrap();
    let fr = frames(&bytes);
    let last_batch = fr.iter().rev().find(|f| f.batch_start).copied().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len((last_batch.offset + last_batch.len - 5) as u64)
        .unwrap();
    drop(f);

    let server = BinServer::start(&data, EXTRA);
    let (status, _) = http(server.addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let (lost, kept) = ids.split_last().unwrap();
    for id in kept {
        assert_eq!(get_incident(&server, id).await.0, 200, "{id} lost");
    }
    assert_eq!(
        get_incident(&server, lost).await.0,
        404,
        "{lost} was in the cut batch"
    );
    let (mut d, hello) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    assert_eq!(hello["epoch"], epoch);
    assert_eq!(hello["seq"].as_u64().unwrap(), last_batch.seq - 1);
    // It carries on writing after the cut.
    let inc = create_ok(&mut d, create(51.3, 51.3)).await;
    assert_eq!(get_incident(&server, inc["id"].as_str().unwrap()).await.0, 200);
}

/// Checks that a server over a damaged data dir is up but refuses to acknowledge.
async fn assert_refuses(server: &BinServer) {
    let (status, _) = http(server.addr, "GET", "/healthz", None, None).await;
    assert_ne!(status, 200, "/healthz over a damaged journal");
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    let err = d.request(create(51.2, 51.3)).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "internal", "{err}");
    let (status, body) = post_report(
        server,
        &json!({"key":"r-damaged","category":"noise","location":{"lat":51.2,"lon":51.3}}),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
}

#[tokio::test]
async fn corrupt_data_dir_refuses_to_acknowledge() {
    // A bit flip in the middle of the journal, with later batches behind it.
    let (_tmp, data) = data_dir();
    let mut server = BinServer::start(&data, EXTRA);
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    for i in 0..5 {
        create_ok(&mut d, create(51.2 + i as f64 * 0.01, 51.3)).await;
    }
    server.kill9();
    let seg = segments(&data).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let fr = frames(&bytes);
    assert!(fr.len() >= 5, "{fr:?}");
    let victim = fr[1];
    for b in &mut bytes[victim.offset + 20..victim.offset + 24] {
        *b ^= 0x5a;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let before = files(&data);

    let mut server = BinServer::start(&data, EXTRA);
    assert_refuses(&server).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(files(&data), before, "the damaged data dir was modified");

    // The data dir path is a regular file.
    let (_tmp2, not_a_dir) = data_dir();
    std::fs::write(&not_a_dir, b"not a directory\n").unwrap();
    let mut server = BinServer::start(&not_a_dir, EXTRA);
    assert_refuses(&server).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"not a directory\n");

    // An epoch file gone while segments remain: history without its name.
    let (_tmp3, data3) = data_dir();
    let mut server = BinServer::start(&data3, EXTRA);
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    create_ok(&mut d, create(51.2, 51.3)).await;
    server.kill9();
    std::fs::remove_file(data3.join("epoch")).unwrap();
    let before = files(&data3);
    let mut server = BinServer::start(&data3, EXTRA);
    assert_refuses(&server).await;
    server.kill9();
    assert_eq!(files(&data3), before, "a journal without its epoch was modified");
}

#[tokio::test]
async fn graceful_restart_during_resume_replays_each_missed_event_once() {
    let (_tmp, data) = data_dir();
    let mut server = BinServer::start(&data, EXTRA);
    let topics = ["incidents", "units"];
    let (mut a, hello, _) = subscribed(&server, &topics, None).await;
    let epoch = hello["epoch"].as_str().unwrap().to_string();
    let (mut b, _, _) = subscribed(&server, &topics, None).await;
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;

    // Manual: it must not take the tablet that comes later.
    let mut manual = create(51.2, 51.3);
    manual["dispatch"] = json!("manual");
    let first = create_ok(&mut d, manual).await;
    let a_seen = events_until_created(&mut a, first["id"].as_str().unwrap()).await;
    let a_last = a_seen.last().unwrap()["seq"].as_u64().unwrap();
    drop(a); // the console goes away

    // While it is away: a tablet comes, takes an incident, acknowledges; more creates.
    let mut tab = tablet(&server.host(), Encoding::Json, "P-7", 51.21, 51.31).await;
    let taken = create_ok(&mut d, create(51.21, 51.31)).await;
    assert_eq!(taken["units"], json!(["P-7"]), "{taken}");
    let ok = tab
        .request(json!({"type":"assignment.ack","incident_id":taken["id"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    for i in 0..20 {
        create_ok(&mut d, create(51.22 + i as f64 * 0.001, 51.32)).await;
    }

    // SIGTERM: it must exit 0 within shutdown_timeout_s (5 s in the test config).
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The always-connected console has everything up to the shutdown, then 1001.
    let mut b_events: Vec<Value> = Vec::new();
    let code = loop {
        match b.next().await {
            Got::Frame(f) if f["type"] == "event" => b_events.push(f),
            Got::Frame(_) => {}
            Got::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1001), "sessions close 1001 on shutdown");
    let missed: Vec<&Value> = b_events
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > a_last)
        .collect();
    assert!(missed.len() >= 24, "too few events to compare: {}", missed.len());
    let b_max = b_events.last().unwrap()["seq"].as_u64().unwrap();

    let server = BinServer::start(&data, EXTRA);
    let (mut a, _, ok) = subscribed(&server, &topics, Some((&epoch, a_last))).await;
    assert_eq!(ok["recovered"], true, "{ok}");
    assert_eq!(ok["epoch"], epoch.as_str());
    assert!(ok["seq"].as_u64().unwrap() >= b_max, "{ok}");
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    let live = create_ok(&mut d, create(51.25, 51.35)).await;
    let got = events_until_created(&mut a, live["id"].as_str().unwrap()).await;
    let (live_ev, replayed) = got.split_last().unwrap();

    let seqs: Vec<u64> = replayed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "replay not strictly increasing: {seqs:?}"
    );
    assert!(
        replayed.len() >= missed.len(),
        "replay shorter than what was missed"
    );
    for (i, want) in missed.iter().enumerate() {
        let got = &replayed[i];
        assert_eq!(got["seq"], want["seq"], "replay #{i}: {got} vs {want}");
        assert_eq!(got["change"], want["change"], "replay #{i}");
        assert_eq!(got["topic"], want["topic"], "replay #{i}");
        assert_eq!(object_id(got), object_id(want), "replay #{i}");
        assert_eq!(got.get("incident"), want.get("incident"), "replay #{i}");
        assert_eq!(got.get("unit"), want.get("unit"), "replay #{i}");
    }
    // Anything after those happened after the shutdown (e.g. timers at restart).
    for extra in &replayed[missed.len()..] {
        assert!(extra["seq"].as_u64().unwrap() > b_max, "{extra}");
    }
    let live_seq = live_ev["seq"].as_u64().unwrap();
    assert!(
        live_seq > b_max && live_seq > ok["seq"].as_u64().unwrap(),
        "live seq {live_seq}"
    );
    // And live events keep flowing after the replay.
    let next = create_ok(&mut d, create(51.26, 51.36)).await;
    let more = events_until_created(&mut a, next["id"].as_str().unwrap()).await;
    assert!(more.iter().all(|e| e["seq"].as_u64().unwrap() > live_seq));
}

#[tokio::test]
async fn idempotency_key_survives_restart() {
    let (_tmp, data) = data_dir();
    let mut server = BinServer::start(&data, EXTRA);
    let report = json!({"key":"app-7f3a","category":"noise","location":{"lat":51.23,"lon":51.37},"description":"loud"});
    let (status, first) = post_report(&server, &report).await;
    assert_eq!(status, 201, "{first}");
    let report_id = first["incident"]["id"].clone();
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    let mut keyed = create(51.24, 51.36);
    keyed["key"] = json!("call-0042");
    let ws_first = create_ok(&mut d, keyed.clone()).await;
    server.kill9();

    let server = BinServer::start(&data, EXTRA);
    let (status, again) = post_report(&server, &report).await;
    assert_eq!(status, 200, "a repeated key after kill -9: {again}");
    assert_eq!(again["incident"]["id"], report_id);
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &dispatcher()).await;
    let ws_again = create_ok(&mut d, keyed).await;
    assert_eq!(ws_again["id"], ws_first["id"], "{ws_again}");
    // A new key still makes a new incident.
    let (status, other) = post_report(
        &server,
        &json!({"key":"app-7f3b","category":"noise","location":{"lat":51.23,"lon":51.37}}),
    )
    .await;
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["incident"]["id"], report_id);
}

#[tokio::test]
async fn epoch_is_new_for_a_new_data_dir() {
    let (_tmp1, one) = data_dir();
    let (_tmp2, two) = data_dir();
    let mut s1 = BinServer::start(&one, EXTRA);
    let s2 = BinServer::start(&two, EXTRA);
    let (_, h1) = Client::login(&s1.host(), Encoding::Json, &dispatcher()).await;
    let (_, h2) = Client::login(&s2.host(), Encoding::Json, &dispatcher()).await;
    let e1 = h1["epoch"].as_str().unwrap().to_string();
    assert!(!e1.is_empty());
    assert_ne!(h1["epoch"], h2["epoch"], "two data dirs share an epoch");
    assert_eq!(std::fs::read_to_string(one.join("epoch")).unwrap().trim(), e1);

    // Unchanged across a graceful restart and across kill -9.
    assert!(s1.terminate().success());
    let mut s1 = BinServer::start(&one, EXTRA);
    let (mut d, h) = Client::login(&s1.host(), Encoding::Json, &dispatcher()).await;
    assert_eq!(h["epoch"], e1.as_str());
    create_ok(&mut d, create(51.2, 51.3)).await;
    s1.kill9();
    let s1 = BinServer::start(&one, EXTRA);
    let (_, h) = Client::login(&s1.host(), Encoding::Json, &dispatcher()).await;
    assert_eq!(h["epoch"], e1.as_str());
    // A client of another epoch is told it did not recover, and gets the snapshot.
    let (_c, _, ok) = subscribed(&s1, &["incidents"], Some((h2["epoch"].as_str().unwrap(), 0))).await;
    assert_eq!(ok["recovered"], false, "{ok}");
    assert_eq!(ok["incidents"].as_array().unwrap().len(), 1, "{ok}");
}
