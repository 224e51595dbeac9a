//! Reads off the engine thread, over real sockets: a subscribe snapshot far
//! larger than a session's queue bound reaches a console that reads normally,
//! the cut stays exact while writes go on, deep `since` resumes served step by
//! step between commits still deliver every seq once and in order, and a dead
//! engine thread is visible (`/healthz` 503, the process exits non-zero).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use opcenter_proto::auth::Role;

use crate::common::*;

/// A city's worth of state: 20 000 roster units and 5 000 open incidents.
const UNITS: usize = 20_000;
const INCIDENTS: usize = 5_000;

fn roster(n: usize) -> String {
    let mut toml = String::with_capacity(n * 40);
    for i in 0..n {
        let _ = writeln!(toml, "[[roster]]\nid = \"R-{i:05}\"\nkind = \"car\"");
    }
    toml
}

/// Creates `n` incidents over one dispatcher session, 100 in flight at a time;
/// returns their ids.
async fn create_many(dispatcher: &mut Client, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let base = chunk * 100;
        let end = (base + 100).min(n);
        for i in base..end {
            let mut req = create(51.0 + (i % 100) as f64 * 0.01, 51.0 + (i / 100) as f64 * 0.01);
            // Distinct categories: no growing `possible_duplicates` lists.
            req["category"] = json!(format!("{tag}-{i}"));
            req["id"] = json!(i as u64 + 1);
            dispatcher.send(req).await;
        }
        for i in base..end {
            let ok = dispatcher.recv_until(|f| f["id"] == json!(i as u64 + 1)).await;
            assert_eq!(ok["type"], "ok", "{ok}");
            ids.push(ok["incident"]["id"].as_str().unwrap().to_string());
        }
    }
    ids
}

#[tokio::test]
async fn a_console_receives_the_snapshot_of_a_large_city_without_being_closed() {
    // A 1 MiB queue bound, far below this snapshot.
    let queue_bytes = 1_048_576usize;
    let srv = TestServer::start(&format!(
        "[hub]\nsession_queue_bytes = {queue_bytes}\n{}",
        roster(UNITS)
    ))
    .await;
    let (mut dispatcher, _) =
        Client::login(&srv.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let created = create_many(&mut dispatcher, INCIDENTS, "big").await;

    let (mut console, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let ok = console
        .request(json!({"type":"subscribe","topics":["incidents","units","positions"]}))
        .await;
    assert_eq!(
        ok["type"],
        "ok",
        "{}",
        &ok.to_string()[..200.min(ok.to_string().len())]
    );
    let size = ok.to_string().len();
    assert!(
        size > queue_bytes,
        "the snapshot ({size} B) should exceed the queue bound"
    );
    assert_eq!(ok["units"].as_array().unwrap().len(), UNITS);
    let incidents = ok["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), INCIDENTS);
    let mut in_snapshot: Vec<&str> = incidents.iter().map(|i| i["id"].as_str().unwrap()).collect();
    in_snapshot.sort_unstable();
    let mut expected: Vec<&str> = created.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(in_snapshot, expected);

    // Still a live session, and live events follow the snapshot.
    assert_eq!(console.request(json!({"type":"ping"})).await["type"], "ok");
    let last = create_many(&mut dispatcher, 1, "after").await;
    let ev = console
        .recv_until(|f| f["type"] == "event" && f["incident"]["id"] == json!(last[0]))
        .await;
    assert!(ev["seq"].as_u64().unwrap() > ok["seq"].as_u64().unwrap());
}

/// Subscribes while a dispatcher keeps creating: every incident is either in
/// the snapshot (created at or before the cut) or arrives once as a live
/// `created` event after it, in seq order — none missing, none twice.
#[tokio::test]
async fn the_cut_is_exact_while_writes_go_on() {
    let srv = TestServer::start("").await;
    let host = srv.host();
    let writer = tokio::spawn({
        let host = host.clone();
        async move {
            let (mut dispatcher, _) =
                Client::login(&host, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
            create_many(&mut dispatcher, 600, "cut").await
        }
    });
    let mut consoles = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (mut c, _) = Client::login(&host, Encoding::Json, &token(Role::Supervisor, "s1")).await;
        let ok = c
            .request(json!({"type":"subscribe","topics":["incidents"]}))
            .await;
        assert_eq!(ok["type"], "ok", "{ok}");
        consoles.push((c, ok));
    }
    let created = writer.await.unwrap();
    for (mut c, ok) in consoles {
        let cut = ok["seq"].as_u64().unwrap();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for i in ok["incidents"].as_array().unwrap() {
            *seen.entry(i["id"].as_str().unwrap().to_string()).or_default() += 1;
        }
        let mut prev = cut;
        // Until every created incident was seen (a missing one times out).
        while created.iter().any(|id| !seen.contains_key(id)) {
            let f = c.recv().await;
            if f["type"] != "event" {
                continue;
            }
            let seq = f["seq"].as_u64().unwrap();
            assert!(seq > prev, "events after the cut, in order: {seq} after {prev}");
            prev = seq;
            let id = f["incident"]["id"].as_str().unwrap().to_string();
            if f["change"] == "created" {
                *seen.entry(id).or_default() += 1;
            }
        }
        // Anything still queued would be a repeat.
        while let Some(Got::Frame(f)) = c.next_within(Duration::from_millis(200)).await {
            if f["type"] == "event" && f["change"] == "created" {
                *seen
                    .entry(f["incident"]["id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        for id in &created {
            assert_eq!(
                seen.get(id),
                Some(&1),
                "{id} seen {:?} times (cut {cut})",
                seen.get(id)
            );
        }
    }
}

/// A supervisor's `incidents` + `units` subscribe reply in `enc`.
async fn snapshot(host: &str, enc: Encoding) -> serde_json::Value {
    let (mut c, _) = Client::login(host, enc, &token(Role::Supervisor, "s1")).await;
    let ok = c
        .request(json!({"type":"subscribe","topics":["incidents","units"]}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    ok
}

/// The consoles' snapshot is kept between subscribes (`opcenter-hub`'s
/// `snapshot.rs`): subscribes at the same cut get the same snapshot in both
/// encodings, and every change after it is in the next one: a new incident, a
/// note on an incident already in the kept snapshot, and a unit's position fix
/// (which moves no seq).
#[tokio::test]
async fn subscribes_at_the_same_cut_share_a_snapshot_and_see_every_change_after_it() {
    let srv = TestServer::start("").await;
    let host = srv.host();
    // Off duty (no `unit.status`): no auto-dispatch moves the state under the test.
    let (mut t1, _) = Client::login(&host, Encoding::Json, &unit_token("T-1")).await;
    // The first fix a minute back, so the second (111 m on) is within the speed limit.
    let now_ms = now_s() * 1000;
    let ok = t1
        .request(json!({"type":"unit.position","lat":51.0,"lon":51.0,"at_ms":now_ms - 60_000}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let (mut d, _) = Client::login(&host, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let ids = create_many(&mut d, 5, "same-cut").await;

    let first = snapshot(&host, Encoding::Json).await;
    let again = snapshot(&host, Encoding::Json).await;
    let packed = snapshot(&host, Encoding::Msgpack).await;
    assert_eq!(first["seq"], again["seq"], "nothing was written in between");
    assert_eq!(first["seq"], packed["seq"]);
    for key in ["incidents", "units"] {
        assert_eq!(first[key], again[key], "{key}");
        assert_eq!(first[key], packed[key], "{key}");
    }
    assert_eq!(first["incidents"].as_array().unwrap().len(), 5);

    let ok = d
        .request(json!({"type":"incident.note","incident_id":ids[0],"text":"second look"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let noted_seq = first["seq"].as_u64().unwrap() + 1;
    let moved = snapshot(&host, Encoding::Json).await;
    let ok = t1
        .request(json!({"type":"unit.position","lat":51.001,"lon":51.0,"at_ms":now_ms}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let after_fix = snapshot(&host, Encoding::Json).await;
    let later = create_many(&mut d, 1, "after").await;
    let last = snapshot(&host, Encoding::Json).await;
    let last_packed = snapshot(&host, Encoding::Msgpack).await;

    let incident = |snap: &serde_json::Value, id: &str| {
        snap["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == json!(id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in the snapshot at {}", snap["seq"]))
    };
    let unit = |snap: &serde_json::Value| {
        snap["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == "T-1")
            .cloned()
            .expect("T-1 in the snapshot")
    };
    assert_eq!(moved["seq"].as_u64().unwrap(), noted_seq, "{}", moved["seq"]);
    let notes = &incident(&moved, &ids[0])["notes"];
    assert_eq!(notes.as_array().unwrap().len(), 1, "{notes}");
    assert_eq!(notes[0]["text"], "second look");
    assert_eq!(incident(&moved, &ids[1]), incident(&first, &ids[1]));
    assert_eq!(unit(&moved)["location"], json!({"lat":51.0,"lon":51.0}));
    // The fix moved the unit, not the seq.
    assert_eq!(after_fix["seq"], moved["seq"]);
    assert_eq!(unit(&after_fix)["location"], json!({"lat":51.001,"lon":51.0}));
    assert!(last["seq"].as_u64().unwrap() > noted_seq);
    assert_eq!(last["incidents"].as_array().unwrap().len(), 6);
    incident(&last, &later[0]);
    assert_eq!(incident(&last, &ids[0])["notes"][0]["text"], "second look");
    assert_eq!(unit(&last)["location"], json!({"lat":51.001,"lon":51.0}));
    for key in ["incidents", "units"] {
        assert_eq!(last[key], last_packed[key], "{key}");
    }
}

/// The value of the counter or gauge line `name` (with its labels) on `/metrics`.
async fn metric_value(srv: &TestServer, name: &str) -> f64 {
    let (status, body) = http(srv.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A server keeping `memory` events in memory and replaying `step` per step,
/// with `n` incidents created by the dispatcher it returns.
async fn with_history(memory: usize, step: usize, n: usize) -> (TestServer, Client) {
    let srv = TestServer::start(&format!(
        "[hub]\nmemory_history_events = {memory}\nreplay_step_events = {step}\n"
    ))
    .await;
    let (mut dispatcher, _) =
        Client::login(&srv.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    create_many(&mut dispatcher, n, "before").await;
    (srv, dispatcher)
}

/// Six `since` resumes at different depths, JSON and MessagePack, most of them
/// deeper than the 100 events kept in memory (so read from the journal), each
/// served 64 events per step while a dispatcher keeps creating: every session
/// receives every seq after its `since` exactly once, in order, through the
/// replay and on into the live events. A second round of the same resumes is
/// served from the frame cache, with the same result.
#[tokio::test]
async fn resumes_interleaved_with_commits_deliver_every_seq_once_in_order() {
    let (srv, _dispatcher) = with_history(100, 64, 600).await;
    let host = srv.host();
    let (mut probe, _) = Client::login(&host, Encoding::Json, &token(Role::Supervisor, "p")).await;
    let ok = probe
        .request(json!({"type":"subscribe","topics":["incidents"]}))
        .await;
    let epoch = ok["epoch"].as_str().unwrap().to_string();
    let head = ok["seq"].as_u64().unwrap();
    assert!(head >= 600, "{head}");
    let cached_before = metric_value(&srv, "opcenter_replay_frames_total{source=\"cache\"}").await;

    for round in 0..2 {
        let writer = tokio::spawn({
            let host = host.clone();
            async move {
                let (mut d, _) = Client::login(&host, Encoding::Json, &token(Role::Dispatcher, "d2")).await;
                create_many(&mut d, 200, &format!("during-{round}")).await
            }
        });
        let mut sessions = Vec::new();
        for (i, depth) in [head, 500, 350, 200, 90, 10].into_iter().enumerate() {
            let enc = if i % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::Msgpack
            };
            let (mut c, _) = Client::login(&host, enc, &token(Role::Supervisor, "s1")).await;
            let since = head - depth;
            let ok = c
                .request(json!({"type":"subscribe","topics":["incidents","units"],
                    "since":{"epoch":epoch,"seq":since}}))
                .await;
            assert_eq!(ok["type"], "ok", "{ok}");
            assert_eq!(ok["recovered"], true, "since {since}: {ok}");
            assert!(ok["seq"].as_u64().unwrap() >= head, "{ok}");
            sessions.push((c, since));
        }
        writer.await.unwrap();
        // The newest seq once the writer is done: a fresh snapshot's cut.
        let (mut last_probe, _) = Client::login(&host, Encoding::Json, &token(Role::Supervisor, "p")).await;
        let last = last_probe
            .request(json!({"type":"subscribe","topics":["incidents"]}))
            .await["seq"]
            .as_u64()
            .unwrap();
        for (mut c, since) in sessions {
            let mut expect = since + 1;
            while expect <= last {
                let f = c.recv().await;
                if f["type"] != "event" {
                    continue;
                }
                let seq = f["seq"].as_u64().unwrap();
                assert_eq!(seq, expect, "round {round}, since {since}, {:?}: {f}", c.enc);
                expect += 1;
            }
            // Anything more would be a repeat.
            while let Some(Got::Frame(f)) = c.next_within(Duration::from_millis(200)).await {
                assert_ne!(f["type"], "event", "round {round}, since {since}: {f}");
            }
        }
    }
    // The second round replays 1 750 events (plus what came in before each cut),
    // all from the cache; the first round already shares some between sessions.
    let cached = metric_value(&srv, "opcenter_replay_frames_total{source=\"cache\"}").await - cached_before;
    assert!(cached >= 1_750.0, "frames served from the cache: {cached}");
}

/// A `subscribe` sent while a deep replay is still in progress replaces it:
/// the second reply arrives, and after it only events past its cut, live.
#[tokio::test]
async fn a_subscribe_during_a_replay_replaces_it() {
    let (srv, mut dispatcher) = with_history(10, 8, 300).await;
    let host = srv.host();
    let (mut c, _) = Client::login(&host, Encoding::Msgpack, &token(Role::Supervisor, "s1")).await;
    let first = c
        .request(json!({"type":"subscribe","topics":["incidents"]}))
        .await;
    let epoch = first["epoch"].clone();
    // Both sent at once: the second arrives while the first is replaying.
    c.send(json!({"type":"subscribe","topics":["incidents"],"since":{"epoch":epoch,"seq":1},"id":100}))
        .await;
    c.send(json!({"type":"subscribe","topics":["incidents"],"id":101}))
        .await;
    let mut cut = None;
    let mut last = String::new();
    loop {
        let f = c.recv().await;
        match cut {
            None if f["id"] == 101 => {
                assert_eq!(f["type"], "ok", "{f}");
                cut = f["seq"].as_u64();
                last = create_many(&mut dispatcher, 1, "after").await.remove(0);
            }
            None => {}
            Some(cut) => {
                assert_eq!(f["type"], "event", "{f}");
                assert!(f["seq"].as_u64().unwrap() > cut, "after the second reply: {f}");
                if f["incident"]["id"] == json!(last) {
                    break;
                }
            }
        }
    }
}

/// Test-only switch read by the engine thread (see `engine_task::PANIC_ENV`).
const PANIC_ENV: &str = "OPCENTER_TEST_PANIC_ENGINE_ON";

#[tokio::test]
async fn a_dead_engine_turns_healthz_503_and_the_process_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut srv = BinServer::start_with_env(&data, "", &[(PANIC_ENV, "incident.note")]);
    assert_eq!(http(srv.addr, "GET", "/healthz", None, None).await.0, 200);
    let (mut dispatcher, _) =
        Client::login(&srv.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let created = create_many(&mut dispatcher, 1, "ok").await;
    dispatcher
        .send(json!({"type":"incident.note","incident_id":created[0],"text":"boom","id":99}))
        .await;
    let died = Instant::now();
    // Poll /healthz until it says 503 (or the server is already gone). The bound
    // is generous for a loaded machine; the time it took is printed, not asserted.
    let mut status = 200;
    while died.elapsed() < Duration::from_secs(20) {
        match opcenter_sim::http::HttpClient::new(&srv.host())
            .request("GET", "/healthz", None, None)
            .await
        {
            Ok(r) => status = r.status,
            Err(_) => break,
        }
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("healthz {status} after {:?}", died.elapsed());
    assert_eq!(status, 503, "a dead engine must not look healthy");
    // `shutdown_timeout_s = 5` in the test config, plus the engine join's second.
    let exit = srv
        .wait_exit(Duration::from_secs(10))
        .expect("the process exits by itself");
    eprintln!("exited {exit:?} after {:?}", died.elapsed());
    assert!(!exit.success(), "{exit:?}");
}
