//! Addresses over real sockets: `GET /v1/geocode` (ranking, roles, bad
//! input, no gazetteer) and `incident.create` with an `address` and no
//! `location`, placed by the gazetteer before the engine dispatches it.
//! Must never: assert on timing.

use serde_json::{Value, json};

use opcenter_proto::auth::Role;

use crate::common::*;

const CSV: &str = "street,house,building,lat,lon\n\
    ул. Абая,12,,51.2300,51.3700\n\
    ул. Абая,12-14,,51.2302,51.3702\n\
    проспект Абая,12,,51.2500,51.3900\n\
    улица Жангир хана,3,\"ТРЦ \"\"Атриум\"\"\",51.2100,51.3600\n\
    Dostyk avenue,9,,51.2000,51.4000\n";

const GEOJSON: &str = r#"{"type":"FeatureCollection","features":[
  {"type":"Feature","properties":{"addr:street":"ул. Курмангазы","addr:housenumber":"101"},
   "geometry":{"type":"Point","coordinates":[51.3650,51.2150]}}]}"#;

/// A server whose gazetteer is `text` written to `name` (or none).
async fn server(file: Option<(&str, &str)>) -> (TestServer, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let extra = match file {
        Some((name, text)) => {
            let path = files.path().join(name);
            std::fs::write(&path, text).unwrap();
            format!("[gazetteer]\nfile = {:?}\n", path.display().to_string())
        }
        None => String::new(),
    };
    (TestServer::start(&extra).await, files)
}

/// Percent-encodes a query value (UTF-8 bytes outside the unreserved set).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn geocode(srv: &TestServer, role: Role, query: &str) -> (u16, Value) {
    let tok = match role {
        Role::Unit => unit_token("U-1"),
        _ => token(role, "someone"),
    };
    let (status, body) = http(srv.addr, "GET", &format!("/v1/geocode?{query}"), Some(&tok), None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn labels(body: &Value) -> Vec<&str> {
    body["matches"]
        .as_array()
        .unwrap_or_else(|| panic!("no matches in {body}"))
        .iter()
        .map(|m| m["label"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn geocode_ranks_matches_in_either_script_and_checks_its_input() {
    let (srv, _files) = server(Some(("addresses.csv", CSV))).await;
    // The street type ranks its street first; both spellings agree.
    for q in ["пр. Абая 12", "Abaya avenue 12", "ПРОСПЕКТ абая 12"] {
        let (status, body) = geocode(&srv, Role::Dispatcher, &format!("q={}", enc(q))).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(labels(&body)[0], "проспект Абая, 12", "{q}: {body}");
    }
    let (_, body) = geocode(&srv, Role::Supervisor, &format!("q={}", enc("ул. Абая 12"))).await;
    assert_eq!(
        labels(&body),
        ["ул. Абая, 12", "проспект Абая, 12", "ул. Абая, 12-14"]
    );
    let first = &body["matches"][0];
    assert_eq!(first["street"], "ул. Абая");
    assert_eq!(first["house"], "12");
    assert_eq!(first["location"], json!({"lat": 51.23, "lon": 51.37}));
    // A range, a building name, a Latin name from a Cyrillic query.
    let (_, body) = geocode(&srv, Role::Dispatcher, &format!("q={}", enc("Абая 14"))).await;
    assert_eq!(labels(&body), ["ул. Абая, 12-14"]);
    let (_, body) = geocode(&srv, Role::Dispatcher, &format!("q={}", enc("атриум"))).await;
    assert_eq!(labels(&body), ["улица Жангир хана, 3 (ТРЦ \"Атриум\")"]);
    assert_eq!(body["matches"][0]["building"], "ТРЦ \"Атриум\"");
    let (_, body) = geocode(&srv, Role::Dispatcher, &format!("q={}", enc("достык 9"))).await;
    assert_eq!(labels(&body), ["Dostyk avenue, 9"]);
    // `limit`, and nothing found is an empty list, not an error.
    let (_, body) = geocode(&srv, Role::Dispatcher, &format!("q={}&limit=1", enc("абая"))).await;
    assert_eq!(labels(&body).len(), 1);
    let (status, body) = geocode(&srv, Role::Dispatcher, &format!("q={}", enc("Лермонтова 5"))).await;
    assert_eq!((status, labels(&body).len()), (200, 0));
    // Bad input names what is wrong.
    for (query, says) in [
        ("limit=3".to_string(), "q:"),
        ("q=".to_string(), "q:"),
        (format!("q={}&limit=0", enc("абая")), "limit"),
        (format!("q={}&limit=51", enc("абая")), "limit"),
        (format!("q={}&limit=x", enc("абая")), "limit"),
        (format!("q={}", "a".repeat(600)), "q:"),
    ] {
        let (status, body) = geocode(&srv, Role::Dispatcher, &query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    // Units and intake may not look addresses up.
    for role in [Role::Unit, Role::Intake] {
        let (status, _) = geocode(&srv, role, "q=abaya").await;
        assert_eq!(status, 403, "{role:?}");
    }
    let (status, _) = http(srv.addr, "GET", "/v1/geocode?q=abaya", None, None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_address_only_create_is_placed_by_the_gazetteer_and_dispatched() {
    let (srv, _files) = server(Some(("addresses.csv", CSV))).await;
    let host = srv.host();
    // A unit beside проспект Абая 12, another 2 km off beside ул. Абая 12.
    let _near = tablet(&host, Encoding::Json, "NEAR", 51.2501, 51.3901).await;
    let _far = tablet(&host, Encoding::Msgpack, "FAR", 51.2301, 51.3701).await;
    let (mut c, _) = console(&host, Encoding::Json).await;
    let ok = c
        .request(json!({"type":"incident.create","category":"theft","priority":2,
                        "address":"пр. Абая, д. 12"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let inc = &ok["incident"];
    assert_eq!(inc["location"], json!({"lat": 51.25, "lon": 51.39}), "{ok}");
    assert_eq!(
        inc["address"], "пр. Абая, д. 12",
        "the dispatcher's words are kept"
    );
    assert_eq!(inc["units"], json!(["NEAR"]), "{ok}");
    // Given a location, the address is only text: the location wins.
    let ok = c
        .request(json!({"type":"incident.create","category":"theft","priority":4,
                        "address":"пр. Абая 12","location":{"lat":51.2,"lon":51.4},"dispatch":"manual"}))
        .await;
    assert_eq!(
        ok["incident"]["location"],
        json!({"lat": 51.2, "lon": 51.4}),
        "{ok}"
    );
    // Nothing matches: bad_request naming the address; no incident was made.
    let err = c
        .request(json!({"type":"incident.create","category":"theft","priority":2,
                        "address":"ул. Несуществующая 7"}))
        .await;
    assert_eq!(err["code"], "bad_request", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("ул. Несуществующая 7"),
        "{err}"
    );
    // Neither location nor address.
    for body in [
        json!({"type":"incident.create","category":"theft","priority":2}),
        json!({"type":"incident.create","category":"theft","priority":2,"address":"  "}),
    ] {
        let err = c.request(body.clone()).await;
        assert_eq!(err["code"], "bad_request", "{body}: {err}");
        assert!(err["message"].as_str().unwrap().contains("location"), "{err}");
    }
    // A tablet may not create, by address or otherwise.
    let mut t = tablet(&host, Encoding::Json, "T-3", 51.1, 51.1).await;
    let err = t
        .request(json!({"type":"incident.create","category":"theft","priority":2,"address":"абая 12"}))
        .await;
    assert_eq!(err["code"], "forbidden", "{err}");
}

#[tokio::test]
async fn geojson_gazetteers_load_and_without_one_addresses_are_refused_by_name() {
    let (srv, _files) = server(Some(("addresses.geojson", GEOJSON))).await;
    let (status, body) = geocode(&srv, Role::Dispatcher, "q=kurmangazy+101").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(labels(&body), ["ул. Курмангазы, 101"]);
    assert_eq!(
        body["matches"][0]["location"],
        json!({"lat": 51.215, "lon": 51.365})
    );
    srv.stop().await;

    let (srv, _files) = server(None).await;
    let (status, body) = geocode(&srv, Role::Dispatcher, "q=abaya").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let (mut c, _) = console(&srv.host(), Encoding::Msgpack).await;
    let err = c
        .request(json!({"type":"incident.create","category":"theft","priority":2,"address":"ул. Абая 12"}))
        .await;
    assert_eq!(err["code"], "bad_request", "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("ул. Абая 12") && msg.contains("gazetteer"), "{err}");
}
