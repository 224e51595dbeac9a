//! End-to-end tests of the WebSocket hub over real sockets, in both encodings:
//! the dispatch flow, recommend, decline, ack timeout, the pending queue,
//! multi-unit incidents, resume and snapshot, the slow consumer, the role
//! matrix and shutdown. Every server runs on port 0 with its own data dir.

use crate::common::*;
use opcenter_proto::auth::Role;
use serde_json::{Value, json};

// Uralsk: a tablet ~150 m from the scene and one ~3 km away.
const SCENE: (f64, f64) = (51.2300, 51.3700);
const NEAR: (f64, f64) = (51.2310, 51.3715);
const FAR: (f64, f64) = (51.2570, 51.3700);

async fn full_flow(enc_console: Encoding, enc_tablet: Encoding) {
    let srv = TestServer::start("").await;
    full_flow_on(&srv.host(), enc_console, enc_tablet).await;
}

/// The whole incident flow (create, assignment, ack, close) against the server at
/// `host`, whatever its journal (the cluster tests run it over JetStream).
pub(crate) async fn full_flow_on(host: &str, enc_console: Encoding, enc_tablet: Encoding) {
    full_flow_across(host, host, enc_console, enc_tablet).await;
}

/// The flow with the console on `console_host` and the tablets on `tablet_host`
/// (two hub nodes of one region, or the same server twice).
pub(crate) async fn full_flow_across(
    console_host: &str,
    tablet_host: &str,
    enc_console: Encoding,
    enc_tablet: Encoding,
) {
    let (mut console, _) = console(console_host, enc_console).await;
    let mut near = tablet(tablet_host, enc_tablet, "P-NEAR", NEAR.0, NEAR.1).await;
    let _far = tablet(tablet_host, enc_tablet, "P-FAR", FAR.0, FAR.1).await;

    let ok = console.request(create(SCENE.0, SCENE.1)).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let incident = &ok["incident"];
    let id = incident["id"].as_str().unwrap().to_string();
    assert_eq!(incident["status"], "dispatched");
    assert_eq!(incident["units"], json!(["P-NEAR"]));

    // The nearest tablet gets the assignment with the incident's details.
    let a = near.event("assignments", Some("assigned")).await;
    assert_eq!(a["incident"]["id"], json!(id));
    assert_eq!(a["incident"]["location"]["lat"], json!(SCENE.0));

    let ok = near
        .request(json!({"type":"assignment.ack","incident_id":id}))
        .await;
    assert_eq!(ok["incident"]["status"], "en_route", "{ok}");
    let seen = console
        .recv_until(|f| f["type"] == "event" && f["incident"]["status"] == "en_route")
        .await;
    assert_eq!(seen["incident"]["id"], json!(id));

    let ok = console
        .request(json!({"type":"incident.close","incident_id":id,"disposition":"resolved"}))
        .await;
    assert_eq!(ok["incident"]["status"], "closed", "{ok}");
    let unit = console
        .recv_until(|f| {
            f["type"] == "event"
                && f["topic"] == "units"
                && f["unit"]["id"] == "P-NEAR"
                && f["unit"]["status"] == "available"
        })
        .await;
    assert!(
        unit["unit"].get("incident_id").is_none_or(Value::is_null),
        "{unit}"
    );
}

#[tokio::test]
async fn full_dispatch_flow_json() {
    full_flow(Encoding::Json, Encoding::Json).await;
}

#[tokio::test]
async fn full_dispatch_flow_msgpack() {
    full_flow(Encoding::Msgpack, Encoding::Msgpack).await;
}

#[tokio::test]
async fn msgpack_frames_are_named_maps_with_float_coordinates() {
    let srv = TestServer::start("").await;
    let (mut c, _) = Client::login(&srv.host(), Encoding::Msgpack, &token(Role::Dispatcher, "d1")).await;
    c.send(json!({"type":"incident.create","id":1,"category":"theft","priority":2,"location":{"lat":51.0,"lon":51.0}}))
        .await;
    let raw = loop {
        use futures_util::StreamExt;
        match c.ws.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Binary(b) => break b,
            _ => continue,
        }
    };
    // Decoded with a generic MessagePack reader: a map with string keys.
    let v: rmpv::Value = rmpv::decode::read_value(&mut &raw[..]).unwrap();
    let map = v.as_map().expect("a map");
    assert!(map.iter().all(|(k, _)| k.is_str()));
    let incident = map
        .iter()
        .find(|(k, _)| k.as_str() == Some("incident"))
        .unwrap()
        .1
        .as_map()
        .unwrap();
    let loc = incident
        .iter()
        .find(|(k, _)| k.as_str() == Some("location"))
        .unwrap()
        .1
        .as_map()
        .unwrap();
    assert!(
        loc.iter().all(|(_, v)| v.is_f64()),
        "coordinates are float64: {loc:?}"
    );
}

#[tokio::test]
async fn recommend_lists_nearest_first_with_shortfall() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let _a = tablet(&srv.host(), Encoding::Json, "P-A", FAR.0, FAR.1).await;
    let _b = tablet(&srv.host(), Encoding::Msgpack, "P-B", NEAR.0, NEAR.1).await;
    let r = console
        .request(json!({"type":"incident.recommend","location":{"lat":SCENE.0,"lon":SCENE.1},"count":3}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let c = r["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0]["unit_id"], "P-B");
    assert_eq!(c[1]["unit_id"], "P-A");
    assert!(c[0]["distance_m"].as_f64().unwrap() < c[1]["distance_m"].as_f64().unwrap());
    assert_eq!(r["shortfall"], "no_units_available");
    let r = console
        .request(json!({"type":"incident.recommend","location":{"lat":SCENE.0,"lon":SCENE.1},"count":1,"required":["k9"]}))
        .await;
    assert_eq!(r["candidates"], json!([]));
    assert_eq!(r["shortfall"], "missing_capability");
    // A degree of latitude north (~111 km) both units are fresh but beyond the
    // default 50 km: the range filter is what left none.
    let r = console
        .request(
            json!({"type":"incident.recommend","location":{"lat":SCENE.0 + 1.0,"lon":SCENE.1},"count":3}),
        )
        .await;
    assert_eq!(r["candidates"], json!([]));
    assert_eq!(r["shortfall"], "out_of_range");
}

/// The units a recommendation at the scene names, nearest first.
async fn recommended(console: &mut Client) -> Vec<Value> {
    let r = console
        .request(json!({"type":"incident.recommend","location":{"lat":SCENE.0,"lon":SCENE.1},"count":3}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    r["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["unit_id"].clone())
        .collect()
}

/// A recommendation is made from committed state, on the session's task or the
/// engine thread: a tablet's status change acknowledged just before is in it,
/// every time.
#[tokio::test]
async fn recommend_reflects_a_status_change_acknowledged_just_before() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let mut near = tablet(&srv.host(), Encoding::Json, "P-NEAR", NEAR.0, NEAR.1).await;
    let _far = tablet(&srv.host(), Encoding::Json, "P-FAR", FAR.0, FAR.1).await;
    for round in 0..25 {
        let ok = near.request(json!({"type":"unit.status","status":"busy"})).await;
        assert_eq!(ok["type"], "ok", "{ok}");
        assert_eq!(
            recommended(&mut console).await,
            vec![json!("P-FAR")],
            "round {round}"
        );
        let ok = near
            .request(json!({"type":"unit.status","status":"available"}))
            .await;
        assert_eq!(ok["type"], "ok", "{ok}");
        assert_eq!(
            recommended(&mut console).await,
            vec![json!("P-NEAR"), json!("P-FAR")],
            "round {round}"
        );
    }
}

/// A dispatcher's `incident.recommend` sent right behind its own `unit.status`,
/// without waiting for that reply, reflects it: the session never answers a read
/// from state that has not taken its earlier commands yet.
#[tokio::test]
async fn recommend_right_behind_a_dispatchers_own_command_reflects_it() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let _near = tablet(&srv.host(), Encoding::Json, "P-NEAR", NEAR.0, NEAR.1).await;
    let _far = tablet(&srv.host(), Encoding::Json, "P-FAR", FAR.0, FAR.1).await;
    for round in 0..25u64 {
        let (status, want) = match round % 2 {
            0 => ("busy", json!(["P-FAR"])),
            _ => ("available", json!(["P-NEAR", "P-FAR"])),
        };
        let (set, ask) = (1000 + 2 * round, 1001 + 2 * round);
        console
            .send(json!({"type":"unit.status","id":set,"unit_id":"P-NEAR","status":status}))
            .await;
        console
            .send(json!({"type":"incident.recommend","id":ask,"location":{"lat":SCENE.0,"lon":SCENE.1},"count":3}))
            .await;
        // Both replies, whichever comes first (events between them are dropped).
        let (mut ok, mut r) = (Value::Null, Value::Null);
        while ok.is_null() || r.is_null() {
            let v = console
                .recv_until(|v| v["id"] == json!(set) || v["id"] == json!(ask))
                .await;
            match v["id"] == json!(set) {
                true => ok = v,
                false => r = v,
            }
        }
        assert_eq!(ok["type"], "ok", "{ok}");
        let units: Vec<Value> = r["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["unit_id"].clone())
            .collect();
        assert_eq!(json!(units), want, "round {round}: {r}");
    }
}

#[tokio::test]
async fn decline_sends_the_incident_to_the_next_unit_never_back() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let mut near = tablet(&srv.host(), Encoding::Json, "P-NEAR", NEAR.0, NEAR.1).await;
    let mut far = tablet(&srv.host(), Encoding::Json, "P-FAR", FAR.0, FAR.1).await;
    let ok = console.request(create(SCENE.0, SCENE.1)).await;
    let id = ok["incident"]["id"].as_str().unwrap().to_string();
    near.event("assignments", Some("assigned")).await;
    let ok = near
        .request(json!({"type":"assignment.decline","incident_id":id,"reason":"flat tyre"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let a = far.event("assignments", Some("assigned")).await;
    assert_eq!(a["incident"]["id"], json!(id));
    // The decliner is available again and never gets it back, even when the far unit declines too.
    let ok = far
        .request(json!({"type":"assignment.decline","incident_id":id}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let pending = console
        .recv_until(|f| {
            f["type"] == "event" && f["incident"]["id"] == json!(id) && f["incident"]["status"] == "pending"
        })
        .await;
    assert_eq!(pending["incident"]["units"], json!([]));
    assert!(
        near.next_within(std::time::Duration::from_millis(300))
            .await
            .is_none_or(|g| match g {
                Got::Frame(f) => f["change"] != "assigned",
                Got::Closed(_) => false,
            })
    );
}

#[tokio::test]
async fn ack_timeout_marks_unresponsive_and_moves_on() {
    let srv = TestServer::start("[dispatch]\nack_timeout_s = 1\ntick_ms = 50\n").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let mut near = tablet(&srv.host(), Encoding::Json, "P-NEAR", NEAR.0, NEAR.1).await;
    let mut far = tablet(&srv.host(), Encoding::Json, "P-FAR", FAR.0, FAR.1).await;
    let ok = console.request(create(SCENE.0, SCENE.1)).await;
    let id = ok["incident"]["id"].as_str().unwrap().to_string();
    near.event("assignments", Some("assigned")).await;
    // No ack from the near unit: after ~1 s the far one gets it.
    let a = far.event("assignments", Some("assigned")).await;
    assert_eq!(a["incident"]["id"], json!(id));
    let u = console
        .recv_until(|f| {
            f["type"] == "event" && f["unit"]["id"] == "P-NEAR" && f["unit"]["status"] == "unresponsive"
        })
        .await;
    assert_eq!(u["topic"], "units");
    let gone = near.event("assignments", None).await;
    assert_ne!(gone["change"], "assigned", "{gone}");
}

#[tokio::test]
async fn pending_incidents_are_served_by_priority_when_a_unit_frees_up() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let mut low = create(SCENE.0, SCENE.1);
    low["priority"] = json!(4);
    let low = console.request(low).await;
    assert_eq!(low["incident"]["status"], "pending");
    let mut urgent = create(SCENE.0, SCENE.1);
    urgent["priority"] = json!(1);
    urgent["category"] = json!("assault");
    let urgent = console.request(urgent).await;
    assert_eq!(urgent["incident"]["status"], "pending");
    // A unit comes on duty: it takes the priority-1 incident although it is newer.
    let mut t = tablet(&srv.host(), Encoding::Json, "P-1", NEAR.0, NEAR.1).await;
    let a = t.event("assignments", Some("assigned")).await;
    assert_eq!(a["incident"]["id"], urgent["incident"]["id"]);
}

#[tokio::test]
async fn units_needed_gets_distinct_nearest_units() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let _a = tablet(&srv.host(), Encoding::Json, "P-A", NEAR.0, NEAR.1).await;
    let _b = tablet(&srv.host(), Encoding::Json, "P-B", 51.2330, 51.3700).await;
    let _c = tablet(&srv.host(), Encoding::Json, "P-C", FAR.0, FAR.1).await;
    let mut req = create(SCENE.0, SCENE.1);
    req["units_needed"] = json!(2);
    let ok = console.request(req).await;
    assert_eq!(ok["incident"]["units"], json!(["P-A", "P-B"]), "{ok}");
}

#[tokio::test]
async fn tablet_reconnect_gets_its_assignment_in_hello() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let t = tablet(&srv.host(), Encoding::Json, "P-1", NEAR.0, NEAR.1).await;
    let ok = console.request(create(SCENE.0, SCENE.1)).await;
    drop(t);
    let (_t, hello) = Client::login(&srv.host(), Encoding::Msgpack, &unit_token("P-1")).await;
    assert_eq!(hello["role"], "unit");
    assert_eq!(hello["unit"]["id"], "P-1");
    assert_eq!(hello["incident"]["id"], ok["incident"]["id"]);
}

#[tokio::test]
async fn resume_with_since_replays_exactly_and_bad_epoch_gets_snapshot() {
    let srv = TestServer::start("").await;
    let (mut a, sub) = console(&srv.host(), Encoding::Json).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    a.request(create(SCENE.0, SCENE.1)).await;
    let first = a.event("incidents", Some("created")).await;
    let last_seq = first["seq"].as_u64().unwrap();
    drop(a);

    // Meanwhile, two more incidents.
    let (mut other, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Dispatcher, "d2")).await;
    let i2 = other.request(create(SCENE.0, SCENE.1)).await;
    let i3 = other.request(create(SCENE.0, SCENE.1)).await;

    let (mut b, _) = Client::login(&srv.host(), Encoding::Msgpack, &token(Role::Dispatcher, "d1")).await;
    let ok = b
        .request(json!({"type":"subscribe","topics":["incidents"],"since":{"epoch":epoch,"seq":last_seq}}))
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    let cut = ok["seq"].as_u64().unwrap();
    let e2 = b.event("incidents", None).await;
    let e3 = b.event("incidents", None).await;
    assert_eq!(e2["incident"]["id"], i2["incident"]["id"]);
    assert_eq!(e3["incident"]["id"], i3["incident"]["id"]);
    assert!(last_seq < e2["seq"].as_u64().unwrap() && e2["seq"].as_u64() < e3["seq"].as_u64());
    assert!(e3["seq"].as_u64().unwrap() <= cut);
    // Then live, with a larger seq and nothing repeated.
    let i4 = other.request(create(SCENE.0, SCENE.1)).await;
    let e4 = b.event("incidents", None).await;
    assert_eq!(e4["incident"]["id"], i4["incident"]["id"]);
    assert!(e4["seq"].as_u64().unwrap() > cut);

    let (mut c, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let ok = c
        .request(json!({"type":"subscribe","topics":["incidents"],"since":{"epoch":"other-epoch","seq":1}}))
        .await;
    assert_eq!(ok["recovered"], false);
    assert_eq!(
        ok["incidents"].as_array().unwrap().len(),
        4,
        "snapshot of open incidents: {ok}"
    );
    assert!(ok["units"].is_array());
}

#[tokio::test]
async fn positions_reach_supervisors_inside_their_area_only() {
    // A fast speed limit so the test may jump the unit 3 km at once.
    let srv =
        TestServer::start("[hub]\nposition_interval_ms = 20\n[dispatch]\nmax_speed_mps = 100000.0\n").await;
    let (mut all, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "s1")).await;
    all.request(json!({"type":"subscribe","topics":["positions"]}))
        .await;
    let (mut boxed, _) = Client::login(&srv.host(), Encoding::Msgpack, &token(Role::Supervisor, "s2")).await;
    boxed
        .request(json!({"type":"subscribe","topics":["positions"],"area":{"south":51.25,"west":51.0,"north":51.3,"east":52.0}}))
        .await;
    let mut t = tablet(&srv.host(), Encoding::Json, "P-1", NEAR.0, NEAR.1).await;
    let p = all.recv_until(|f| f["type"] == "positions").await;
    assert_eq!(p["items"][0]["unit_id"], "P-1");
    // Inside the box only after moving north.
    let ok = t
        .request(json!({"type":"unit.position","lat":FAR.0,"lon":FAR.1}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let p = boxed.recv_until(|f| f["type"] == "positions").await;
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    assert_eq!(p["items"][0]["lat"], json!(FAR.0));
    // An older fix never moves the unit backwards (one before 2020 is refused:
    // tests/liveness.rs).
    let older = opcenter_sim::wire::now_ms() - 60_000;
    let ok = t
        .request(json!({"type":"unit.position","lat":NEAR.0,"lon":NEAR.1,"at_ms":older}))
        .await;
    assert_eq!(ok["type"], "ok");
    let (mut console, snap) = console(&srv.host(), Encoding::Json).await;
    let unit = snap["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "P-1")
        .unwrap()
        .clone();
    assert_eq!(unit["location"]["lat"], json!(FAR.0));
    // The console that read the snapshot is a live session.
    assert_eq!(console.request(json!({"type":"ping"})).await["type"], "ok");
}

/// Fixes without an `id` wait in the engine's inbox for its next batch: a
/// tablet's burst of them is applied in the order sent and before the tablet's
/// next command; an older fix in the burst never wins, the last one does, for
/// consoles and supervisors alike.
#[tokio::test]
async fn a_burst_of_fixes_applies_in_order_before_the_next_command_and_the_latest_wins() {
    let srv = TestServer::start("[hub]\nposition_interval_ms = 20\n").await;
    let (mut sup, _) = Client::login(&srv.host(), Encoding::Msgpack, &token(Role::Supervisor, "s1")).await;
    sup.request(json!({"type":"subscribe","topics":["positions"]}))
        .await;
    let mut t = tablet(&srv.host(), Encoding::Json, "P-1", NEAR.0, NEAR.1).await;
    // 300 fixes 5 m apart going north, 1 ms apart, after the tablet's first fix.
    let at = opcenter_sim::wire::now_ms() + 1_000;
    let lat = |i: u64| NEAR.0 + i as f64 * 0.000045;
    for i in 1..=300 {
        t.send(json!({"type":"unit.position","lat":lat(i),"lon":NEAR.1,"at_ms":at + i}))
            .await;
        if i == 150 {
            // Older than what the unit has by then: accepted, never applied.
            t.send(json!({"type":"unit.position","lat":FAR.0,"lon":FAR.1,"at_ms":at}))
                .await;
        }
    }
    let ok = t
        .request(json!({"type":"unit.status","status":"available"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let (_console, snap) = console(&srv.host(), Encoding::Json).await;
    let unit = snap["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "P-1")
        .unwrap()
        .clone();
    assert_eq!(unit["location"]["lat"], json!(lat(300)), "{unit}");
    assert_eq!(unit["location"]["lon"], json!(NEAR.1), "{unit}");
    // Supervisors see the unit end at the last fix, never at the older one.
    let last = json!(lat(300));
    loop {
        let p = sup.recv_until(|f| f["type"] == "positions").await;
        let items = p["items"].as_array().unwrap();
        assert!(items.iter().all(|i| i["lat"] != json!(FAR.0)), "{p}");
        if items.iter().any(|i| i["unit_id"] == "P-1" && i["lat"] == last) {
            break;
        }
    }
    // No error for any of them (an error would have come before the status's `ok`).
    t.send(json!({"type":"ping","id":999})).await;
    loop {
        let f = t.recv().await;
        assert_ne!(f["type"], "error", "{f}");
        if f["id"] == 999 {
            break;
        }
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_4008_and_others_keep_going() {
    let srv = TestServer::start("[hub]\nmax_frame_bytes = 8192\nsession_queue_bytes = 262144\n").await;
    let (mut slow, _) = console(&srv.host(), Encoding::Json).await; // never reads again
    let (mut fast, _) = console(&srv.host(), Encoding::Json).await;
    let (mut dispatcher, _) =
        Client::login(&srv.host(), Encoding::Json, &token(Role::Dispatcher, "d9")).await;
    // ~4.5 KB per event (a description at its 4096-byte bound): enough to fill the
    // slow reader's socket buffers and then its 256 KiB queue, while bursts of 20
    // stay well inside everyone's queue.
    let description = "x".repeat(4096);
    let mut last_id = String::new();
    for i in 0..3000u64 {
        let mut req = create(SCENE.0, SCENE.1);
        req["description"] = json!(description);
        // Distinct categories: no growing `possible_duplicates` lists.
        req["category"] = json!(format!("cat-{i}"));
        req["id"] = json!(i + 1000);
        dispatcher.send(req).await;
        if i % 20 == 19 {
            let ok = dispatcher.recv_until(|f| f["id"] == json!(i + 1000)).await;
            last_id = ok["incident"]["id"].as_str().unwrap().to_string();
            // The fast console keeps up.
            fast.recv_until(|f| f["type"] == "event" && f["incident"]["id"] == json!(last_id))
                .await;
        }
    }
    assert!(!last_id.is_empty());
    assert_eq!(slow.closed().await, Some(4008));
    // Nothing lost: the fast console saw the last one; the server still serves.
    let ok = dispatcher.request(json!({"type":"ping"})).await;
    assert_eq!(ok["type"], "ok");
}

#[tokio::test]
async fn role_matrix() {
    let srv = TestServer::start("").await;
    let host = srv.host();
    let _t = tablet(&host, Encoding::Json, "P-1", NEAR.0, NEAR.1).await;
    let (mut d, _) = Client::login(&host, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let (mut s, _) = Client::login(&host, Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let (mut u, _) = Client::login(&host, Encoding::Json, &unit_token("P-2")).await;
    let (mut i, _) = Client::login(&host, Encoding::Json, &token(Role::Intake, "app")).await;
    let inc = d.request(create(SCENE.0, SCENE.1)).await;
    let id = inc["incident"]["id"].as_str().unwrap().to_string();

    let code = |v: &Value| v["code"].as_str().unwrap_or("ok").to_string();
    let rows: Vec<(Value, [&str; 4])> = vec![
        // (command, [dispatcher, supervisor, unit P-2, intake])
        (
            create(SCENE.0, SCENE.1),
            ["ok", "forbidden", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"incident.update","incident_id":id,"priority":3}),
            ["ok", "forbidden", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"incident.recommend","incident_id":id}),
            ["ok", "forbidden", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"incident.note","incident_id":id,"text":"hi"}),
            ["ok", "forbidden", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"subscribe","topics":["incidents"]}),
            ["ok", "ok", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"subscribe","topics":["assignments"]}),
            ["forbidden", "forbidden", "ok", "forbidden"],
        ),
        (
            json!({"type":"unit.position","lat":51.0,"lon":51.0}),
            ["forbidden", "forbidden", "ok", "forbidden"],
        ),
        (
            json!({"type":"unit.position","unit_id":"P-1","lat":51.0,"lon":51.0}),
            ["forbidden", "forbidden", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"unit.status","status":"busy","unit_id":"P-2"}),
            ["ok", "forbidden", "ok", "forbidden"],
        ),
        (
            json!({"type":"unit.status","status":"busy","unit_id":"P-1"}),
            ["ok", "forbidden", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"assignment.ack","incident_id":id}),
            ["forbidden", "forbidden", "forbidden", "forbidden"],
        ),
        (
            json!({"type":"incident.close","incident_id":id,"disposition":"x"}),
            ["ok", "forbidden", "forbidden", "forbidden"],
        ),
        (json!({"type":"ping"}), ["ok", "ok", "ok", "ok"]),
    ];
    for (cmd, expect) in rows {
        for (k, client) in [&mut d, &mut s, &mut u, &mut i].into_iter().enumerate() {
            let r = client.request(cmd.clone()).await;
            assert_eq!(code(&r), expect[k], "{cmd} as client {k}: {r}");
        }
    }
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let srv = TestServer::start("").await;
    let (mut c, _) = console(&srv.host(), Encoding::Json).await;
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(c.closed().await, Some(1001));
    stopping.await.unwrap();
}

#[tokio::test]
async fn emergency_creates_priority_1_incident_and_sends_other_units() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let mut officer = tablet(&srv.host(), Encoding::Json, "P-SOS", SCENE.0, SCENE.1).await;
    let mut a = tablet(&srv.host(), Encoding::Json, "P-A", NEAR.0, NEAR.1).await;
    let mut b = tablet(&srv.host(), Encoding::Json, "P-B", FAR.0, FAR.1).await;
    let ok = officer
        .request(json!({"type":"unit.emergency","active":true}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let inc = &ok["incident"];
    assert_eq!(inc["category"], "officer_emergency");
    assert_eq!(inc["priority"], 1);
    let mut units: Vec<String> = inc["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().into())
        .collect();
    units.sort();
    assert_eq!(units, vec!["P-A", "P-B"]);
    a.event("assignments", Some("assigned")).await;
    b.event("assignments", Some("assigned")).await;
    console
        .recv_until(|f| f["type"] == "event" && f["incident"]["category"] == "officer_emergency")
        .await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_4010_and_a_live_one_is_kept() {
    let srv = TestServer::start("[hub]\nping_interval_s = 1\nidle_timeout_s = 2\n").await;
    let (mut silent, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let (mut live, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "s2")).await;
    // The live client keeps reading, so its WebSocket layer answers the server's pings.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        assert!(
            live.next_within(std::time::Duration::from_millis(200))
                .await
                .is_none(),
            "nothing to read yet"
        );
    }
    // The silent one never read: no pong went out, so the server gave up on it.
    assert_eq!(silent.closed().await, Some(4010));
    assert_eq!(live.request(json!({"type":"ping"})).await["type"], "ok");
}

/// The `_count` of histogram `name` in the server's `/metrics` (0 while never recorded).
async fn histogram_count(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (status, body) = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "{body}");
    let line = format!("{name}_count ");
    body.lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_creates_assignment_written_to_the_tablet_is_counted_once() {
    // Its own process: the metrics recorder is per process, so no other test's
    // creates can count here.
    const WRITTEN: &str = "opcenter_assignment_written_seconds";
    let tmp = tempfile::tempdir().unwrap();
    let srv = BinServer::start(&tmp.path().join("data"), "");
    let mut near = tablet(&srv.host(), Encoding::Msgpack, "P-NEAR", NEAR.0, NEAR.1).await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    // A create with no unit to assign (nobody within reach) writes no assignment.
    let ok = console.request(create(-33.9, 18.4)).await;
    assert_eq!(ok["incident"]["status"], "pending", "{ok}");
    assert_eq!(histogram_count(srv.addr, WRITTEN).await, 0);

    let ok = console.request(create(SCENE.0, SCENE.1)).await;
    assert_eq!(ok["incident"]["units"], json!(["P-NEAR"]), "{ok}");
    near.event("assignments", Some("assigned")).await;
    // The writer records after its write returns, which may be a moment after the
    // tablet read the frame.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut count = 0;
    while count == 0 && std::time::Instant::now() < deadline {
        count = histogram_count(srv.addr, WRITTEN).await;
        if count == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(count, 1, "one create, one tablet: one sample");
    // The queue-side histogram counts both creates' receipt; only the one
    // that assigned a unit reached a tablet.
    assert_eq!(histogram_count(srv.addr, "opcenter_assignment_seconds").await, 1);
}
