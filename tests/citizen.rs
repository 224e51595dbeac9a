//! The citizen's answer over real sockets (issue 15): `GET /v1/reports/{key}`
//! follows an app report through a whole incident (received, a unit assigned,
//! on the way, on scene, closed) with times and nothing about the officers;
//! only intake tokens may ask; an unknown or expired key answers 404.
//! Must never: assert on timing (it polls until the read side has caught up).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use opcenter_proto::auth::Role;

use crate::common::*;

const AT: (f64, f64) = (51.2300, 51.3700);

fn report(key: &str) -> String {
    json!({"key":key,"category":"theft","priority":2,"location":{"lat":AT.0,"lon":AT.1 + 0.001},
           "description":"bike stolen","reporter":{"name":"Aigul","phone":"+7 700 000 00 00"}})
    .to_string()
}

/// Polls the report's status until it is `want` (the read side follows the
/// engine's commits; a reply can come before the read copy has the batch).
async fn status_until(srv: &TestServer, intake: &str, key: &str, want: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = http(srv.addr, "GET", &format!("/v1/reports/{key}"), Some(intake), None).await;
        if code == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["status"] == want {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{key}: never {want}; last {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_report_is_followed_through_its_whole_incident() {
    let srv = TestServer::start("").await;
    let host = srv.host();
    let intake = token(Role::Intake, "app-gateway");
    let mut tab = tablet(&host, Encoding::Json, "P-7", AT.0, AT.1).await;
    let (mut desk, _) = console(&host, Encoding::Json).await;

    let (code, body) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&intake),
        Some(&report("c-1")),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["incident"]["id"].as_str().unwrap().to_string();

    // Auto-dispatch sends P-7, the only unit.
    let assigned = status_until(&srv, &intake, "c-1", "unit_assigned").await;
    assert_eq!(assigned["incident_id"], id.as_str());
    assert_eq!(assigned["key"], "c-1");

    let ok = tab
        .request(json!({"type":"assignment.ack","incident_id":id}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    status_until(&srv, &intake, "c-1", "unit_on_the_way").await;

    let ok = tab
        .request(json!({"type":"unit.status","status":"on_scene"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    status_until(&srv, &intake, "c-1", "unit_on_scene").await;

    let ok = desk
        .request(json!({"type":"incident.close","incident_id":id,"disposition":"resolved"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let closed = status_until(&srv, &intake, "c-1", "closed").await;

    // Every step, in order, each with a time, none before the one before it.
    let steps = closed["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "received",
            "unit_assigned",
            "unit_on_the_way",
            "unit_on_scene",
            "closed"
        ]
    );
    let times: Vec<i64> = steps
        .iter()
        .map(|s| s["at_ms"].as_i64().expect("a time for every step"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Nothing about the officers, nor about the reporter.
    let text = closed.to_string();
    for secret in ["P-7", "Aigul", "+7 700", "resolved", "lat", "units"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let fields: Vec<&String> = closed.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["incident_id", "key", "status", "steps"]);
}

#[tokio::test]
async fn only_the_gateway_asks_and_unknown_keys_are_404() {
    let srv = TestServer::start("").await;
    let intake = token(Role::Intake, "app-gateway");
    let (code, body) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&intake),
        Some(&report("c-2")),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    status_until(&srv, &intake, "c-2", "received").await;

    let err = |b: &str| serde_json::from_str::<Value>(b).unwrap()["error"]["code"].clone();
    let (code, body) = http(srv.addr, "GET", "/v1/reports/c-2", None, None).await;
    assert_eq!((code, err(&body)), (401, json!("unauthorized")));
    let desk = token(Role::Dispatcher, "d1");
    let (code, body) = http(srv.addr, "GET", "/v1/reports/c-2", Some(&desk), None).await;
    assert_eq!((code, err(&body)), (403, json!("forbidden")));
    let (code, body) = http(srv.addr, "GET", "/v1/reports/never-sent", Some(&intake), None).await;
    assert_eq!((code, err(&body)), (404, json!("not_found")));

    // A console's own key is not a citizen's report.
    let (mut c, _) = console(&srv.host(), Encoding::Json).await;
    let mut body = create(AT.0, AT.1);
    body["key"] = json!("desk-key");
    let ok = c.request(body).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let (code, _) = http(srv.addr, "GET", "/v1/reports/desk-key", Some(&intake), None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn an_expired_key_answers_404() {
    let dir = tempfile::tempdir().unwrap();
    // dispatch.key_ttl_h counts in hours; the test shortens the same setting.
    let srv = TestServer::start_tuned(dir, "", |s| s.engine.key_ttl_ms = 1_500).await;
    let intake = token(Role::Intake, "app-gateway");
    let (code, body) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&intake),
        Some(&report("c-3")),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let sent = Instant::now();
    let status = status_until(&srv, &intake, "c-3", "received").await;
    assert_eq!(status["key"], "c-3");
    // Well past the TTL (no timing assertion: only that it is gone afterwards).
    tokio::time::sleep(Duration::from_millis(3_000).saturating_sub(sent.elapsed())).await;
    let (code, body) = http(srv.addr, "GET", "/v1/reports/c-3", Some(&intake), None).await;
    assert_eq!(code, 404, "{body}");
}
