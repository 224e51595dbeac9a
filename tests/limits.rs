//! Load limits over real sockets: `hub.max_connections` (503 + `Retry-After` at
//! the upgrade, open sessions unaffected), the reports gateway's rate limit
//! (429 `rate_limited` + `Retry-After`), the weighted per-session command
//! budget, `/metrics` behind `http.metrics_token`, and every refusal counted.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use opcenter_proto::auth::Role;

/// One raw HTTP/1.1 exchange: status, lower-cased headers, body (read up to
/// its `Content-Length`; a 101 has none). Raw because the refusals under test
/// live in the headers, and an upgrade request keeps the connection open.
async fn raw_http(addr: SocketAddr, head: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let mut lines = head.lines();
            let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let length: usize = header(&headers, "content-length").map_or(0, |v| v.parse().unwrap());
            if body.len() >= length {
                return (status, headers, body.to_string());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

const UPGRADE: &str = "GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

/// The value of `opcenter_refusals_total{limit="…"}` (0 when never counted).
async fn refusals(addr: SocketAddr, limit: &str, metrics_token: Option<&str>) -> u64 {
    let (status, body) = http(addr, "GET", "/metrics", metrics_token, None).await;
    assert_eq!(status, 200, "{body}");
    let label = format!("limit=\"{limit}\"");
    body.lines()
        .filter(|l| l.starts_with("opcenter_refusals_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn past_max_connections_the_upgrade_is_503_and_open_sessions_go_on() {
    let srv = TestServer::start("[hub]\nmax_connections = 2\n").await;
    let before = refusals(srv.addr, "max_connections", None).await;
    let (mut a, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Dispatcher, "a")).await;
    // The second counts from the upgrade on, before any hello.
    let mut b = Client::connect(&srv.host(), Encoding::Json).await;

    let (status, headers, body) = raw_http(srv.addr, UPGRADE, "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("5"));
    assert!(body.contains("hub.max_connections"), "{body}");
    assert!(refusals(srv.addr, "max_connections", None).await > before);

    // Both open sessions are untouched.
    assert_eq!(a.request(json!({"type":"ping"})).await["type"], "ok");
    let hello = b
        .request(json!({"type":"hello","token":token(Role::Supervisor, "b"),"protocol":1}))
        .await;
    assert_eq!(hello["type"], "ok", "{hello}");

    // A slot freed by a session that ended is taken again.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, _) = raw_http(srv.addr, UPGRADE, "").await;
        if status == 101 {
            break;
        }
        assert_eq!(status, 503);
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn report(key: &str) -> String {
    json!({"key":key,"category":"theft","priority":3,"location":{"lat":51.23,"lon":51.37}}).to_string()
}

#[tokio::test]
async fn reports_past_the_rate_limit_are_429_with_retry_after() {
    // A burst of 3, then one every 10 s: the 4th at once is refused.
    let srv = TestServer::start("[http]\nreports_per_s = 0.1\nreports_burst = 3\n").await;
    let before = refusals(srv.addr, "reports_rate", None).await;
    let intake = token(Role::Intake, "app-gateway");
    let post = format!(
        "POST /v1/reports HTTP/1.1\r\nAuthorization: Bearer {intake}\r\nContent-Type: application/json"
    );
    for i in 0..3 {
        let (status, _, body) = raw_http(srv.addr, &post, &report(&format!("k-{i}"))).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, headers, body) = raw_http(srv.addr, &post, &report("k-3")).await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(refusals(srv.addr, "reports_rate", None).await, before + 1);
    // Nothing was created for the refused one.
    let dispatcher = token(Role::Dispatcher, "d1");
    let (mut console, _) = Client::login(&srv.host(), Encoding::Json, &dispatcher).await;
    let ok = console
        .request(json!({"type":"subscribe","topics":["incidents"]}))
        .await;
    let keys: Vec<&str> = ok["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(!keys.contains(&"k-3"));
}

#[tokio::test]
async fn the_command_budget_weighs_a_snapshot_far_above_a_ping() {
    // 1 000 tokens at once, one more every 100 s: one snapshot spends them
    // all, while a hundred pings spend a tenth.
    let srv = TestServer::start("[hub]\nsession_rate_per_s = 0.01\nsession_burst = 1000\n").await;
    let before = refusals(srv.addr, "command_budget", None).await;
    let (mut pinger, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "p")).await;
    for _ in 0..100 {
        let r = pinger.request(json!({"type":"ping"})).await;
        assert_eq!(r["type"], "ok", "{r}");
    }
    let (mut reader, _) = Client::login(&srv.host(), Encoding::Json, &token(Role::Supervisor, "r")).await;
    let r = reader
        .request(json!({"type":"subscribe","topics":["incidents","units"]}))
        .await;
    assert_eq!(r["type"], "ok", "{r}");
    let r = reader.request(json!({"type":"ping"})).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "rate_limited", "{r}");
    // A refused command leaves the session open, and is counted.
    assert!(refusals(srv.addr, "command_budget", None).await > before);
    assert!(!matches!(
        reader.next_within(std::time::Duration::from_millis(200)).await,
        Some(Got::Closed(_))
    ));
}

#[tokio::test]
async fn metrics_want_the_token_when_one_is_set() {
    let secret_token = "metrics-scraper-token-0123456789";
    let srv = TestServer::start(&format!("[http]\nmetrics_token = \"{secret_token}\"\n")).await;
    let (status, body) = http(srv.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("opcenter_"), "{body}");
    let (status, _) = http(
        srv.addr,
        "GET",
        "/metrics",
        Some("metrics-scraper-token-0123456788"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    // A session token is not the metrics token.
    let (status, _) = http(
        srv.addr,
        "GET",
        "/metrics",
        Some(&token(Role::Supervisor, "s")),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert!(refusals(srv.addr, "metrics_auth", Some(secret_token)).await >= 3);
    // Without the key, /metrics stays open (the default).
    let open = TestServer::start("").await;
    let (status, _) = http(open.addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
}
