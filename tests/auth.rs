//! Token checks over real sockets: `nbf` honoured, `auth.issuer` and
//! `auth.audience` required and checked when set, on the WebSocket `hello`
//! and on the HTTP API alike.

use serde_json::json;

use crate::common::*;
use opcenter_proto::auth::{Claims, Role, mint_token};

fn signed(claims: &Claims) -> String {
    mint_token(SECRET.as_bytes(), claims)
}

/// The `hello` reply's error code, or "ok".
async fn hello(server: &str, token: &str) -> String {
    let mut c = Client::connect(server, Encoding::Json).await;
    let r = c
        .request(json!({"type":"hello","token":token,"protocol":1}))
        .await;
    if r["type"] == "ok" {
        "ok".into()
    } else {
        r["code"].as_str().unwrap_or("?").into()
    }
}

#[tokio::test]
async fn a_token_is_refused_before_its_nbf() {
    let srv = TestServer::start("").await;
    let mut early = Claims::new("d1", Role::Dispatcher, now_s(), 3600);
    early.nbf = Some(now_s() + 600);
    assert_eq!(hello(&srv.host(), &signed(&early)).await, "unauthorized");
    let (status, _) = http(srv.addr, "GET", "/v1/incidents/I-1", Some(&signed(&early)), None).await;
    assert_eq!(status, 401);
    early.nbf = Some(now_s().saturating_sub(5));
    assert_eq!(hello(&srv.host(), &signed(&early)).await, "ok");
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    // The test config ends inside its [auth] table: these keys land there.
    let srv = TestServer::start("issuer = \"city-idp\"\naudience = \"opcenter-uralsk\"\n").await;
    let mut claims = Claims::new("d1", Role::Dispatcher, now_s(), 3600);
    // Neither claim: refused, now that the server expects them.
    assert_eq!(hello(&srv.host(), &signed(&claims)).await, "unauthorized");
    claims.iss = Some("city-idp".into());
    claims.aud = Some("opcenter-uralsk".into());
    assert_eq!(hello(&srv.host(), &signed(&claims)).await, "ok");
    let (status, body) = http(
        srv.addr,
        "GET",
        "/v1/incidents/I-404",
        Some(&signed(&claims)),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    claims.aud = Some("opcenter-elsewhere".into());
    assert_eq!(hello(&srv.host(), &signed(&claims)).await, "unauthorized");
    let (status, _) = http(
        srv.addr,
        "GET",
        "/v1/incidents/I-404",
        Some(&signed(&claims)),
        None,
    )
    .await;
    assert_eq!(status, 401);
    claims.aud = Some("opcenter-uralsk".into());
    claims.iss = Some("someone-else".into());
    assert_eq!(hello(&srv.host(), &signed(&claims)).await, "unauthorized");
}
