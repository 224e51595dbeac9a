//! Bad input over real sockets: every shape of garbage gets the documented
//! error or close, the server keeps serving everyone else, and no incident is
//! lost.

use crate::common::*;
use futures_util::SinkExt;
use opcenter_proto::auth::{Claims, Role, mint_token};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn dispatcher(srv: &TestServer, enc: Encoding) -> Client {
    Client::login(&srv.host(), enc, &token(Role::Dispatcher, "d1"))
        .await
        .0
}

/// The `error` reply to the next frame.
async fn error_of(c: &mut Client) -> serde_json::Value {
    let f = c.recv_until(|f| f["type"] == "error").await;
    assert!(f.get("id").is_some(), "error always carries id (maybe null): {f}");
    f
}

#[tokio::test]
async fn garbage_frames_get_bad_request_with_null_id_and_the_session_goes_on() {
    let srv = TestServer::start("").await;
    let mut c = dispatcher(&srv, Encoding::Json).await;
    c.send_raw(Message::Text("this is not json".into())).await;
    let e = error_of(&mut c).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].is_null()),
        (Some("bad_request"), true)
    );
    // A binary frame in a JSON session: bad_request, session goes on.
    c.send_raw(Message::Binary(vec![0x93, 1, 2, 3].into())).await;
    assert_eq!(error_of(&mut c).await["code"], "bad_request");
    assert_eq!(c.request(json!({"type":"ping"})).await["type"], "ok");

    let mut m = dispatcher(&srv, Encoding::Msgpack).await;
    m.send_raw(Message::Binary(vec![0xc1, 0xff, 0xfe].into())).await;
    let e = error_of(&mut m).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].is_null()),
        (Some("bad_request"), true)
    );
    assert_eq!(m.request(json!({"type":"ping"})).await["type"], "ok");
}

#[tokio::test]
async fn wrong_types_and_out_of_range_values_are_bad_request() {
    let srv = TestServer::start("").await;
    let mut c = dispatcher(&srv, Encoding::Json).await;
    let cases = [
        json!({"type":"incident.create","category":"theft","priority":"high","location":{"lat":51.0,"lon":51.0}}),
        json!({"type":"incident.create","category":"theft","priority":2,"location":{"lat":91.0,"lon":51.0}}),
        json!({"type":"incident.create","category":"theft","priority":0,"location":{"lat":51.0,"lon":51.0}}),
        json!({"type":"incident.create","category":"theft","priority":6,"location":{"lat":51.0,"lon":51.0}}),
        json!({"type":"incident.create","category":"","priority":2,"location":{"lat":51.0,"lon":51.0}}),
        json!({"type":"incident.create","category":"theft","priority":2,"location":"here"}),
        json!({"type":"incident.recommend"}),
        json!({"id":"seven"}),
        json!({"no_type":true}),
    ];
    for case in cases {
        let r = c.request(case.clone()).await;
        assert_eq!(r["code"], "bad_request", "{case} → {r}");
    }
    let r = c.request(json!({"type":"incident.teleport"})).await;
    assert_eq!(r["code"], "unknown_type");
    let r = c
        .request(json!({"type":"incident.close","incident_id":"I-999999","disposition":"x"}))
        .await;
    assert_eq!(r["code"], "not_found");
}

#[tokio::test]
async fn nan_coordinates_in_msgpack_are_bad_request() {
    #[derive(serde::Serialize)]
    struct Fix {
        #[serde(rename = "type")]
        t: &'static str,
        id: u64,
        lat: f64,
        lon: f64,
    }
    let srv = TestServer::start("").await;
    let (mut t, _) = Client::login(&srv.host(), Encoding::Msgpack, &unit_token("P-1")).await;
    let frame = rmp_serde::to_vec_named(&Fix {
        t: "unit.position",
        id: 42,
        lat: f64::NAN,
        lon: 51.0,
    })
    .unwrap();
    t.send_raw(Message::Binary(frame.into())).await;
    let e = error_of(&mut t).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("bad_request"), Some(42))
    );
}

#[tokio::test]
async fn a_70_kb_frame_closes_1009_and_others_are_unaffected() {
    let srv = TestServer::start("").await;
    let mut other = dispatcher(&srv, Encoding::Json).await;
    let mut c = dispatcher(&srv, Encoding::Json).await;
    let big = json!({"type":"incident.note","incident_id":"I-1","text":"x".repeat(70_000)});
    c.send_raw(Message::Text(big.to_string().into())).await;
    assert_eq!(c.closed().await, Some(1009));
    assert_eq!(other.request(create(51.0, 51.0)).await["type"], "ok");
}

#[tokio::test]
async fn a_flood_of_bad_frames_closes_1008_and_nothing_is_lost() {
    let srv = TestServer::start("").await;
    let mut other = dispatcher(&srv, Encoding::Json).await;
    let kept = other.request(create(51.0, 51.0)).await;
    let mut c = dispatcher(&srv, Encoding::Json).await;
    for _ in 0..200 {
        if c.ws.send(Message::Text("{bad".into())).await.is_err() {
            break;
        }
    }
    let mut errors = 0;
    let code = loop {
        match c.next().await {
            Got::Frame(f) => {
                assert_eq!(f["code"], "bad_request");
                errors += 1;
            }
            Got::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1008));
    assert!(errors >= 1);
    let id = kept["incident"]["id"].as_str().unwrap();
    let (status, body) = incident_over_http(srv.addr, id, Role::Dispatcher, "d").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(other.request(json!({"type":"ping"})).await["type"], "ok");
}

#[tokio::test]
async fn a_unit_sending_another_units_position_is_forbidden() {
    let srv = TestServer::start("").await;
    let (mut t, _) = Client::login(&srv.host(), Encoding::Json, &unit_token("P-1")).await;
    let r = t
        .request(json!({"type":"unit.position","unit_id":"P-2","lat":51.0,"lon":51.0}))
        .await;
    assert_eq!(r["code"], "forbidden");
}

#[tokio::test]
async fn a_supervisor_creating_an_incident_is_forbidden() {
    let srv = TestServer::start("").await;
    let (mut s, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let r = s.request(create(51.0, 51.0)).await;
    assert_eq!(r["code"], "forbidden");
}

#[tokio::test]
async fn a_command_before_hello_is_unauthenticated_then_4001() {
    let srv = TestServer::start("").await;
    let mut c = Client::connect(&srv.host(), Encoding::Json).await;
    c.send(json!({"type":"ping","id":1})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("unauthenticated"), Some(1))
    );
    assert_eq!(c.closed().await, Some(4001));
}

#[tokio::test]
async fn an_expired_token_is_unauthorized_then_4001() {
    let srv = TestServer::start("").await;
    let expired = mint_token(
        SECRET.as_bytes(),
        &Claims::new("d1", Role::Dispatcher, now_s() - 7200, 60),
    );
    let mut c = Client::connect(&srv.host(), Encoding::Msgpack).await;
    c.send(json!({"type":"hello","id":1,"token":expired,"protocol":1}))
        .await;
    assert_eq!(c.recv().await["code"], "unauthorized");
    assert_eq!(c.closed().await, Some(4001));
}

#[tokio::test]
async fn alg_none_and_wrong_secret_are_unauthorized_then_4001() {
    /// base64url of `{"alg":"none","typ":"JWT"}`.
    const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let srv = TestServer::start("").await;
    let claims = Claims::new("d1", Role::Dispatcher, now_s(), 600);
    // A genuine payload under an unsigned `alg: none` header.
    let signed = mint_token(SECRET.as_bytes(), &claims);
    let none = format!("{ALG_NONE_HEADER}.{}.", signed.split('.').nth(1).unwrap());
    let wrong = mint_token(b"not-the-server-secret", &claims);
    for bad in [none, wrong, "garbage".to_string()] {
        let mut c = Client::connect(&srv.host(), Encoding::Json).await;
        c.send(json!({"type":"hello","id":1,"token":bad,"protocol":1}))
            .await;
        assert_eq!(c.recv().await["code"], "unauthorized");
        assert_eq!(c.closed().await, Some(4001));
    }
}

#[tokio::test]
async fn no_hello_in_time_closes_4002() {
    let srv = TestServer::start("[hub]\nhello_timeout_s = 1\n").await;
    let mut c = Client::connect(&srv.host(), Encoding::Json).await;
    assert_eq!(c.closed().await, Some(4002));
}

#[tokio::test]
async fn intake_may_only_hello_and_ping_on_the_websocket() {
    let srv = TestServer::start("").await;
    let (mut i, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Intake, "app")).await;
    assert_eq!(i.request(json!({"type":"ping"})).await["type"], "ok");
    assert_eq!(i.request(create(51.0, 51.0)).await["code"], "forbidden");
    assert_eq!(
        i.request(json!({"type":"subscribe","topics":["incidents"]}))
            .await["code"],
        "forbidden"
    );
}

#[tokio::test]
async fn a_session_over_its_command_budget_gets_rate_limited_and_goes_on() {
    let srv = TestServer::start("[hub]\nsession_rate_per_s = 5.0\nsession_burst = 5\n").await;
    let mut c = dispatcher(&srv, Encoding::Json).await; // hello is not counted
    for id in 1..=20u64 {
        c.send(json!({"type":"ping","id":id})).await;
    }
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..20 {
        let f = c.recv().await;
        match f["type"].as_str() {
            Some("ok") => ok += 1,
            _ => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                limited += 1;
            }
        }
    }
    assert!(
        (5..=7).contains(&ok),
        "burst of 5 (plus what refilled meanwhile): {ok}"
    );
    assert_eq!(ok + limited, 20);
    // The session is still open and the budget refills.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(c.request(json!({"type":"ping"})).await["type"], "ok");
}
