//! The audit trail end to end (issue 14 part A): a scripted incident (create,
//! dispatch, decline, reassign, ack, note, on scene, close) whose timeline, from
//! `GET /v1/incidents/{id}/timeline` and from `opcenter audit show` on the files,
//! names each step's actor (sub, role, session); refused commands, failed sign-ins,
//! rate limits and timeline reads in the refused-action log; and `audit verify`
//! naming an altered line of that log. Owns no product code.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use opcenter_proto::auth::Role;

use crate::common::{Client, Encoding, TestServer, http, tablet, token};

fn opcenter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opcenter"))
}

/// `opcenter audit <args> --data-dir data`: (success, stdout, stderr).
fn audit(args: &[&str], data: &Path) -> (bool, String, String) {
    let out = opcenter()
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(reply: &Value) {
    assert_eq!(reply["type"], "ok", "{reply}");
}

/// The incident steps of a timeline as (change, sub, role, session).
fn incident_steps(t: &Value) -> Vec<(String, String, String, String)> {
    t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["topic"] == "incidents")
        .map(|s| {
            let a = &s["actor"];
            let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
            (
                text(&s["change"]),
                text(&a["sub"]),
                text(&a["role"]),
                text(&a["session"]),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_scripted_incident_has_every_step_with_its_actor_and_refusals_are_logged() {
    let server = TestServer::start("").await;
    let host = server.host();
    let (mut d, hello) = Client::login(&host, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let d_session = hello["session"].as_str().unwrap().to_string();
    let mut a = tablet(&host, Encoding::Json, "P-A", 51.23, 51.37).await;
    let mut b = tablet(&host, Encoding::Json, "P-B", 51.24, 51.38).await;

    let mut body = json!({"type":"incident.create","category":"theft","priority":2,
        "location":{"lat":51.231,"lon":51.371},"dispatch":"manual"});
    body["source"] = json!("call");
    let created = d.request(body).await;
    ok(&created);
    let id = created["incident"]["id"].as_str().unwrap().to_string();
    ok(&d
        .request(json!({"type":"incident.assign","incident_id":id,"unit_id":"P-A"}))
        .await);
    a.event("assignments", Some("assigned")).await;
    ok(&a
        .request(json!({"type":"assignment.decline","incident_id":id,"reason":"flat tyre"}))
        .await);
    ok(&d
        .request(json!({"type":"incident.assign","incident_id":id,"unit_id":"P-B"}))
        .await);
    b.event("assignments", Some("assigned")).await;
    ok(&b.request(json!({"type":"assignment.ack","incident_id":id})).await);
    ok(&d
        .request(json!({"type":"incident.note","incident_id":id,"text":"caller rang back"}))
        .await);
    ok(&b.request(json!({"type":"unit.status","status":"on_scene"})).await);
    ok(&d
        .request(json!({"type":"incident.close","incident_id":id,"disposition":"resolved"}))
        .await);

    // A refused command: a supervisor may not write notes.
    let (mut s, _) = Client::login(&host, Encoding::Json, &token(Role::Supervisor, "s1")).await;
    let refused = s
        .request(json!({"type":"incident.note","incident_id":id,"text":"x"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // A tablet writing on an incident that is no longer its own: the role allows
    // notes, the engine refuses.
    let not_mine = a
        .request(json!({"type":"incident.note","incident_id":id,"text":"not mine"}))
        .await;
    assert_eq!(not_mine["code"], "forbidden", "{not_mine}");
    // A frame the server cannot use (an unknown message type).
    let bad_frame = s
        .request(json!({"type":"incident.teleport","incident_id":id}))
        .await;
    assert_eq!(bad_frame["type"], "error", "{bad_frame}");
    let bad_code = bad_frame["code"].as_str().unwrap().to_owned();
    // A failed sign-in over the WebSocket and one over HTTP.
    let mut bad = Client::connect(&host, Encoding::Json).await;
    bad.send(json!({"type":"hello","id":1,"token":"not-a-jwt"})).await;
    assert_eq!(bad.recv().await["code"], "unauthorized");
    let (status, _) = http(
        server.addr,
        "GET",
        &format!("/v1/incidents/{id}"),
        Some("forged"),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // The timeline over HTTP: supervisor only.
    let path = format!("/v1/incidents/{id}/timeline");
    let dispatcher = token(Role::Dispatcher, "d1");
    let (status, _) = http(server.addr, "GET", &path, Some(&dispatcher), None).await;
    assert_eq!(status, 403);
    let supervisor = token(Role::Supervisor, "s1");
    let (status, body) = http(server.addr, "GET", &path, Some(&supervisor), None).await;
    assert_eq!(status, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    let steps = incident_steps(&t);
    let changes: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        changes,
        vec![
            "created",
            "dispatched",
            "declined",
            "dispatched",
            "acknowledged",
            "noted",
            "on_scene",
            "closed"
        ],
        "{t:#}"
    );
    let who: Vec<(&str, &str)> = steps.iter().map(|s| (s.1.as_str(), s.2.as_str())).collect();
    assert_eq!(
        who,
        vec![
            ("d1", "dispatcher"),
            ("d1", "dispatcher"),
            ("P-A", "unit"),
            ("d1", "dispatcher"),
            ("P-B", "unit"),
            ("d1", "dispatcher"),
            ("P-B", "unit"),
            ("d1", "dispatcher"),
        ]
    );
    for (change, sub, _, session) in &steps {
        if sub == "d1" {
            assert_eq!(session, &d_session, "{change}");
        } else {
            assert_ne!(session, "-", "{change}: a tablet's step names its session");
            assert_ne!(session, &d_session, "{change}");
        }
    }
    let whats: Vec<&str> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["topic"] == "incidents")
        .map(|s| s["what"].as_str().unwrap())
        .collect();
    assert!(whats[2].contains("declined by P-A"), "{whats:?}");
    assert!(whats[3].contains("units +P-B"), "{whats:?}");
    assert!(whats[5].contains("note by d1: \"caller rang back\""), "{whats:?}");
    assert!(whats[7].contains("disposition resolved"), "{whats:?}");
    // Unit records while on the incident are there too, with their actor.
    assert!(
        t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["topic"] == "units"
                && s["unit"] == "P-B"
                && s["change"] == "on_scene"
                && s["actor"]["sub"] == "P-B"),
        "{t:#}"
    );
    let (status, _) = http(
        server.addr,
        "GET",
        "/v1/incidents/I-424242/timeline",
        Some(&supervisor),
        None,
    )
    .await;
    assert_eq!(status, 404);

    drop((d, a, b, s, bad));
    let dir = server.stop().await;
    let data = dir.path();

    // The refused-action log, written at the latest by the graceful stop.
    let lines = opcenter_hub::read_audit_log(data).unwrap();
    let has = |kind: opcenter_hub::AuditKind, pred: &dyn Fn(&opcenter_hub::AuditLine) -> bool| {
        lines.iter().any(|l| l.kind == kind && pred(l))
    };
    use opcenter_hub::AuditKind as K;
    assert!(
        has(K::Forbidden, &|l| l.subject == "s1"
            && l.reason == "incident.note"
            && l.role.as_deref() == Some("supervisor")
            && l.component == "ws"),
        "{lines:#?}"
    );
    assert!(
        has(K::SigninFailed, &|l| l.component == "ws"
            && l.reason == "bad_token"),
        "{lines:#?}"
    );
    assert!(
        has(K::SigninFailed, &|l| l.component == "http"
            && l.reason == "bad_token"),
        "{lines:#?}"
    );
    assert!(
        has(K::Forbidden, &|l| l.subject == "d1" && l.component == "http"),
        "{lines:#?}"
    );
    assert!(
        has(K::AuditRead, &|l| l.subject == "s1"
            && l.reason == format!("timeline:{id}")
            && l.detail.contains(": ok, ")),
        "{lines:#?}"
    );
    assert!(
        has(K::AuditRead, &|l| l.detail.ends_with("not_found")),
        "{lines:#?}"
    );
    assert!(
        has(K::Forbidden, &|l| l.subject == "P-A"
            && l.reason == "incident.note"
            && l.component == "engine"
            && l.role.as_deref() == Some("unit")
            && l.session.is_some()),
        "{lines:#?}"
    );
    assert!(
        has(K::BadFrame, &|l| l.subject == "s1"
            && l.reason == bad_code
            && l.component == "ws"
            && l.session.is_some()),
        "{lines:#?}"
    );

    // The same timeline from the files, with the binary.
    let (ok_, out, err) = audit(&["show", "--incident", &id, "--json"], data);
    assert!(ok_, "{err}");
    let from_files: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(from_files["steps"], t["steps"]);
    let (ok_, text, err) = audit(&["show", "--incident", &id], data);
    assert!(ok_, "{err}");
    assert!(
        text.contains(&format!("d1 (dispatcher, session {d_session})")),
        "{text}"
    );
    assert!(text.contains("P-A (unit, session "), "{text}");
    assert!(text.contains("declined by P-A"), "{text}");
    let (ok_, _, err) = audit(&["show", "--incident", "I-424242"], data);
    assert!(!ok_ && err.contains("no incident I-424242"), "{err}");

    // Both chains hold; then one altered line of the log is named.
    let (ok_, out, err) = audit(&["verify"], data);
    assert!(ok_, "{out}{err}");
    assert!(out.contains("OK: every link holds"), "{out}");
    let log = data.join(opcenter_hub::AUDIT_LOG_FILE);
    let text = std::fs::read_to_string(&log).unwrap();
    let n = text.lines().position(|l| l.contains("\"s1\"")).unwrap() + 1;
    std::fs::write(&log, text.replacen("\"s1\"", "\"s2\"", 1)).unwrap();
    let (ok_, out, _) = audit(&["verify"], data);
    assert!(!ok_, "{out}");
    assert!(out.contains(&format!("first broken line {n}:")), "{out}");
}

#[tokio::test]
async fn a_rate_limited_flood_is_aggregated_with_its_count() {
    let server = TestServer::start("[hub]\nsession_rate_per_s = 1.0\nsession_burst = 1\n").await;
    let (mut d, _) = Client::login(&server.host(), Encoding::Json, &token(Role::Dispatcher, "d9")).await;
    let mut limited = 0;
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let r = d.request(json!({"type":"ping"})).await;
        if r["code"] == "rate_limited" {
            limited += 1;
        }
    }
    let seconds = started.elapsed().as_secs() as usize;
    assert!(limited > 0);
    drop(d);
    let dir = server.stop().await;
    let lines = opcenter_hub::read_audit_log(dir.path()).unwrap();
    let mine: Vec<_> = lines
        .iter()
        .filter(|l| l.kind == opcenter_hub::AuditKind::RateLimited && l.subject == "d9")
        .collect();
    let total: u64 = mine.iter().map(|l| l.count).sum();
    assert_eq!(total, limited, "{mine:#?}");
    // Aggregated: one line per second the flood lasted (two more for the
    // windows it started and ended in), not one per refusal.
    assert!(
        mine.len() <= seconds + 2,
        "{} lines over {seconds} s: {mine:#?}",
        mine.len()
    );
    assert!(
        mine.iter()
            .all(|l| l.reason == "command_budget" && l.detail == "ping"),
        "{mine:#?}"
    );
}
