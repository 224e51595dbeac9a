//! The HTTP side over real sockets: the citizens' reports gateway with
//! idempotency (exactly one 201 even when retries race), body limits, auth,
//! incident lookup, health and metrics, and the console's files.

use crate::common::*;
use opcenter_proto::auth::Role;
use serde_json::{Value, json};

fn report(key: &str) -> String {
    json!({"key":key,"category":"theft","priority":2,"location":{"lat":51.23,"lon":51.37},
           "description":"bike stolen","reporter":{"name":"Aigul","phone":"+7 700 000 00 00"}})
    .to_string()
}

#[tokio::test]
async fn reports_are_idempotent_by_key_even_when_retries_race() {
    let srv = TestServer::start("").await;
    let intake = token(Role::Intake, "app-gateway");
    let (status, body) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&intake),
        Some(&report("k-1")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["incident"]["source"], "app");
    assert_eq!(first["incident"]["key"], "k-1");
    let (status, body) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&intake),
        Some(&report("k-1")),
    )
    .await;
    assert_eq!(status, 200);
    let again: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["incident"]["id"], first["incident"]["id"]);

    // 20 racing retries of a new key: exactly one 201, all the same incident.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (addr, intake) = (srv.addr, intake.clone());
        tasks.push(tokio::spawn(async move {
            http(
                addr,
                "POST",
                "/v1/reports",
                Some(&intake),
                Some(&report("k-race")),
            )
            .await
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(status == 200 || status == 201, "{status} {body}");
        created += usize::from(status == 201);
        let v: Value = serde_json::from_str(&body).unwrap();
        ids.insert(v["incident"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!((created, ids.len()), (1, 1));
}

#[tokio::test]
async fn report_errors() {
    let srv = TestServer::start("[http]\nmax_body_bytes = 2048\n").await;
    let intake = token(Role::Intake, "app");
    let err = |body: &str| {
        serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let (s, b) = http(srv.addr, "POST", "/v1/reports", None, Some(&report("a"))).await;
    assert_eq!((s, err(&b)), (401, "unauthorized".into()));
    let (s, b) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some("not.a.jwt"),
        Some(&report("a")),
    )
    .await;
    assert_eq!((s, err(&b)), (401, "unauthorized".into()));
    let (s, b) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&token(Role::Supervisor, "s")),
        Some(&report("a")),
    )
    .await;
    assert_eq!((s, err(&b)), (403, "forbidden".into()));
    let big = json!({"key":"b","category":"theft","location":{"lat":51.0,"lon":51.0},"description":"x".repeat(5000)});
    let (s, b) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&intake),
        Some(&big.to_string()),
    )
    .await;
    assert_eq!((s, err(&b)), (413, "too_large".into()));
    for bad in [
        "{not json".to_string(),
        json!({"category":"theft","location":{"lat":51.0,"lon":51.0}}).to_string(),
        json!({"key":"c","category":"theft","location":{"lat":95.0,"lon":51.0}}).to_string(),
        json!({"key":"c","category":"theft","priority":9,"location":{"lat":51.0,"lon":51.0}}).to_string(),
    ] {
        let (s, b) = http(srv.addr, "POST", "/v1/reports", Some(&intake), Some(&bad)).await;
        assert_eq!((s, err(&b)), (400, "bad_request".into()), "{bad}");
    }
}

#[tokio::test]
async fn incident_lookup_health_metrics_and_console() {
    let srv = TestServer::start("").await;
    let (_, body) = http(
        srv.addr,
        "POST",
        "/v1/reports",
        Some(&token(Role::Intake, "app")),
        Some(&report("k")),
    )
    .await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["incident"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/incidents/{id}");
    for role in [Role::Dispatcher, Role::Supervisor] {
        let (s, b) = http(srv.addr, "GET", &path, Some(&token(role, "x")), None).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(
            serde_json::from_str::<Value>(&b).unwrap()["incident"]["id"],
            json!(id)
        );
    }
    assert_eq!(http(srv.addr, "GET", &path, None, None).await.0, 401);
    assert_eq!(
        http(srv.addr, "GET", &path, Some(&unit_token("P-1")), None)
            .await
            .0,
        403
    );
    let (s, b) = http(
        srv.addr,
        "GET",
        "/v1/incidents/I-424242",
        Some(&token(Role::Dispatcher, "d")),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["error"]["code"],
        "not_found"
    );

    assert_eq!(http(srv.addr, "GET", "/healthz", None, None).await.0, 200);
    let (s, metrics) = http(srv.addr, "GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    assert!(metrics.contains("opcenter_commands_total"), "{metrics}");
    let (s, page) = http(srv.addr, "GET", "/", None, None).await;
    assert_eq!(s, 200);
    assert!(page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"));
    let (s, cfg) = http(srv.addr, "GET", "/v1/console/config", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&cfg).unwrap()["center"]["lat"],
        json!(51.23)
    );
}
