//! Unit liveness over real sockets (issue 10, item 1): a tablet that closed its
//! socket is not dispatched after `dispatch.offline_grace_s`, a reconnect within
//! the grace keeps it assignable, an unacknowledged offer moves on after the
//! grace (not the ack timeout); a failed unit registration closes the session;
//! hostile fix times; `subscribe`/`incident.recommend` without `id`; roster
//! values after a restart. Grace values are 1 s so no test sleeps long.

use crate::common::*;
use opcenter_proto::auth::{Claims, Role, mint_token};
use serde_json::{Value, json};
use std::time::Duration;

// Uralsk: A-1 ~200 m from the scene, B-1 ~3 km away.
const SCENE: (f64, f64) = (51.2300, 51.3700);
const A1: (f64, f64) = (51.2318, 51.3700);
const B1: (f64, f64) = (51.2570, 51.3700);

const GRACE_1S: &str = "[dispatch]\noffline_grace_s = 1\ntick_ms = 50\n";

fn priority_1() -> Value {
    json!({"type":"incident.create","category":"assault","priority":1,
           "location":{"lat":SCENE.0,"lon":SCENE.1}})
}

/// Waits for the console's `units` event saying `unit` went offline.
async fn seen_offline(console: &mut Client, unit: &str) -> Value {
    console
        .recv_until(|f| f["type"] == "event" && f["change"] == "offline" && f["unit"]["id"] == unit)
        .await
}

#[tokio::test]
async fn a_tablet_gone_past_the_grace_is_not_dispatched() {
    let srv = TestServer::start(GRACE_1S).await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let a = tablet(&srv.host(), Encoding::Json, "A-1", A1.0, A1.1).await;
    let _b = tablet(&srv.host(), Encoding::Json, "B-1", B1.0, B1.1).await;
    drop(a);
    let ev = seen_offline(&mut console, "A-1").await;
    assert_eq!(ev["unit"]["online"], json!(false), "{ev}");
    assert!(ev["unit"]["offline_since_ms"].is_i64(), "{ev}");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // The scenario: the priority 1 incident goes to B-1, not the gone A-1.
    let ok = console.request(priority_1()).await;
    assert_eq!(ok["incident"]["units"], json!(["B-1"]), "{ok}");
    let r = console
        .request(json!({"type":"incident.recommend","location":{"lat":SCENE.0,"lon":SCENE.1},"count":2}))
        .await;
    let ids: Vec<&str> = r["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["unit_id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&"A-1"), "{r}");
}

#[tokio::test]
async fn a_tablet_back_within_the_grace_stays_assignable() {
    let srv = TestServer::start("[dispatch]\noffline_grace_s = 2\ntick_ms = 50\n").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let a = tablet(&srv.host(), Encoding::Json, "A-1", A1.0, A1.1).await;
    let _b = tablet(&srv.host(), Encoding::Json, "B-1", B1.0, B1.1).await;
    drop(a);
    seen_offline(&mut console, "A-1").await;
    // Back at once, with nothing but its hello (status and position are kept).
    let (mut a, hello) = Client::login(&srv.host(), Encoding::Json, &unit_token("A-1")).await;
    assert_eq!(hello["unit"]["online"], json!(true), "{hello}");
    assert_eq!(hello["unit"]["status"], "available", "{hello}");
    let ok = a
        .request(json!({"type":"subscribe","topics":["assignments"]}))
        .await;
    assert_eq!(ok["type"], "ok");
    // Past when the first outage's grace would have run out.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let ok = console.request(priority_1()).await;
    assert_eq!(ok["incident"]["units"], json!(["A-1"]), "{ok}");
    a.event("assignments", Some("assigned")).await;
}

#[tokio::test]
async fn an_offer_to_a_gone_tablet_moves_on_after_the_grace_not_the_ack_timeout() {
    // Ack timeout 60 s: far longer than the harness waits, so only the grace can
    // move the offer on in time.
    let srv = TestServer::start("[dispatch]\noffline_grace_s = 1\nack_timeout_s = 60\ntick_ms = 50\n").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let mut a = tablet(&srv.host(), Encoding::Json, "A-1", A1.0, A1.1).await;
    let mut b = tablet(&srv.host(), Encoding::Json, "B-1", B1.0, B1.1).await;
    let ok = console.request(priority_1()).await;
    assert_eq!(ok["incident"]["units"], json!(["A-1"]), "{ok}");
    let id = ok["incident"]["id"].clone();
    a.event("assignments", Some("assigned")).await;
    drop(a);
    let got = b.event("assignments", Some("assigned")).await;
    assert_eq!(got["incident"]["id"], id);
    let inc = console
        .recv_until(|f| f["type"] == "event" && f["topic"] == "incidents" && f["change"] == "offline")
        .await;
    assert_eq!(inc["incident"]["id"], id, "{inc}");
}

#[tokio::test]
async fn a_unit_that_cannot_register_is_told_why_and_closed() {
    let srv = TestServer::start("").await;
    let long_id = "U".repeat(200);
    let token = mint_token(SECRET.as_bytes(), &Claims::unit(&long_id, now_s(), 3600));
    let mut c = Client::connect(&srv.host(), Encoding::Json).await;
    c.send(json!({"type":"hello","id":1,"token":token,"protocol":1}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["id"], json!(1), "{reply}");
    assert_eq!(c.closed().await, Some(4001));
}

#[tokio::test]
async fn fix_times_before_2020_or_past_the_skew_are_refused() {
    let srv = TestServer::start("").await;
    let mut t = tablet(&srv.host(), Encoding::Json, "A-1", A1.0, A1.1).await;
    let future = opcenter_sim::wire::now_ms() + 3_600_000;
    for at_ms in [
        json!(0),
        json!(1_577_836_799_999u64),
        json!(future),
        json!(i64::MAX),
    ] {
        let r = t
            .request(json!({"type":"unit.position","lat":A1.0,"lon":A1.1,"at_ms":at_ms}))
            .await;
        assert_eq!(r["code"], "bad_request", "{at_ms}: {r}");
    }
    // The session goes on.
    let ok = t.request(json!({"type":"ping"})).await;
    assert_eq!(ok["type"], "ok");
}

#[tokio::test]
async fn subscribe_and_recommend_without_id_are_answered_only_on_failure() {
    let srv = TestServer::start("").await;
    let (mut c, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    c.send(json!({"type":"subscribe","topics":["incidents"]})).await;
    c.send(json!({"type":"incident.recommend","location":{"lat":SCENE.0,"lon":SCENE.1}}))
        .await;
    c.send(json!({"type":"ping","id":99})).await;
    let next = c.recv().await;
    assert_eq!(next["id"], json!(99), "a reply to a command without id: {next}");
    // Failures without id are still answered (id null).
    c.send(json!({"type":"incident.recommend","location":{"lat":SCENE.0,"lon":SCENE.1},"count":0}))
        .await;
    let err = c.recv().await;
    assert_eq!(err["type"], "error", "{err}");
    assert!(err["id"].is_null(), "{err}");
}

#[tokio::test]
async fn roster_values_win_after_a_restart_and_units_start_offline() {
    let roster = |callsign: &str, tablet: bool| {
        format!(
            "[[roster]]\nid = \"P-1\"\ncallsign = \"{callsign}\"\nkind = \"car\"\ncapabilities = [\"k9\"]\ntablet = {tablet}\n"
        )
    };
    let srv = TestServer::start(&roster("Old", true)).await;
    let mut claims = Claims::unit("P-1", now_s(), 3600);
    claims.callsign = Some("from-token".into());
    let token = mint_token(SECRET.as_bytes(), &claims);
    let (_t, hello) = Client::login(&srv.host(), Encoding::Json, &token).await;
    assert_eq!(hello["unit"]["callsign"], "Old", "{hello}");
    assert_eq!(hello["unit"]["online"], json!(true), "{hello}");
    let dir = srv.stop().await;
    // The shutdown did not take it offline: the grace runs from the restart.
    let restarted = opcenter_sim::wire::now_ms() as i64;
    let srv = TestServer::start_in(dir, &roster("New", false)).await;
    let (_c, snap) = console(&srv.host(), Encoding::Json).await;
    let units = snap["units"].as_array().unwrap();
    let p1 = units.iter().find(|u| u["id"] == "P-1").expect("P-1 in snapshot");
    assert_eq!(p1["callsign"], "New", "{p1}");
    assert_eq!(p1["tablet"], json!(false), "{p1}");
    assert_eq!(p1["online"], json!(false), "{p1}");
    assert!(p1["offline_since_ms"].as_i64().unwrap() >= restarted, "{p1}");
}

#[tokio::test]
async fn a_non_roster_unit_takes_its_token_claims_at_each_hello() {
    let srv = TestServer::start("").await;
    let (mut console, _) = console(&srv.host(), Encoding::Json).await;
    let t = tablet(&srv.host(), Encoding::Json, "X-1", A1.0, A1.1).await;
    let k9 = json!({"type":"incident.recommend","location":{"lat":SCENE.0,"lon":SCENE.1},
                    "count":1,"required":["k9"]});
    let r = console.request(k9.clone()).await;
    assert_eq!(r["candidates"], json!([]), "{r}");
    drop(t);
    seen_offline(&mut console, "X-1").await;
    // Its next token says it now has a dog: the unit takes the new claims.
    let (_t, hello) = Client::login(&srv.host(), Encoding::Json, &unit_token_with_caps("X-1", &["k9"])).await;
    assert_eq!(hello["unit"]["capabilities"], json!(["k9"]), "{hello}");
    let ev = console
        .recv_until(|f| f["type"] == "event" && f["change"] == "online" && f["unit"]["id"] == "X-1")
        .await;
    assert_eq!(ev["unit"]["capabilities"], json!(["k9"]), "{ev}");
    let r = console.request(k9).await;
    assert_eq!(r["candidates"][0]["unit_id"], "X-1", "{r}");
}
