//! The response-time report end to end: a scripted shift over the real binary
//! (create, dispatch, decline and automatic reassignment, forced reassignment,
//! ack, arrival, note, close, an app report, refused commands), then
//! `GET /v1/reports/response-times` in JSON and CSV, `opcenter report
//! response-times` offline on the stopped server's data directory, and the
//! endpoint again after a restart; every incident of the shift exported as EIDO
//! and validated against NENA's schema. Expected figures are computed here by hand
//! from the event times the server reported to a supervisor's console.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};

use opcenter_proto::auth::Role;

use crate::common::eido::{assert_valid, get_eido, validator};
use crate::common::{BinServer, Client, Encoding, console, http, tablet, token};

/// Unit positions: A and B near X, C near W, D near Y.
const A: (f64, f64) = (51.230, 51.370);
const B: (f64, f64) = (51.240, 51.370);
const C: (f64, f64) = (51.300, 51.500);
const D: (f64, f64) = (51.310, 51.510);

/// The P1 target in this test (seconds): W's arrival waits longer than it.
const EXTRA: &str = "[dispatch]\nack_timeout_s = 600\nmax_position_age_s = 3600\n\
                     [reports]\nutc_offset_min = 300\n[reports.target_s]\np1 = 1\n";

fn loc(p: (f64, f64)) -> Value {
    json!({"lat": p.0 + 0.0001, "lon": p.1 + 0.0001})
}

async fn ok(c: &mut Client, v: Value) -> Value {
    let r = c.request(v).await;
    assert_eq!(r["type"], "ok", "{r}");
    r
}

/// A manual-dispatch incident made by the desk; its id.
async fn manual(desk: &mut Client, category: &str, priority: u8, at: (f64, f64)) -> String {
    let r = ok(
        desk,
        json!({"type":"incident.create","category":category,"priority":priority,"location":loc(at),"dispatch":"manual"}),
    )
    .await;
    r["incident"]["id"].as_str().unwrap().to_string()
}

async fn assign(desk: &mut Client, incident: &str, unit: &str, force: bool) {
    ok(
        desk,
        json!({"type":"incident.assign","incident_id":incident,"unit_id":unit,"force":force}),
    )
    .await;
}

async fn close(by: &mut Client, incident: &str, disposition: &str) {
    ok(
        by,
        json!({"type":"incident.close","incident_id":incident,"disposition":disposition}),
    )
    .await;
}

/// One incident's milestones as the script's named events give them.
#[derive(Default, Debug)]
struct Times {
    priority: u8,
    received: i64,
    created: i64,
    dispatched: Option<i64>,
    acknowledged: Option<i64>,
    on_scene: Option<i64>,
    closed: Option<i64>,
}

impl Times {
    fn intervals(&self) -> [Option<i64>; 6] {
        let d = |a: Option<i64>, b: Option<i64>| Some(b? - a?);
        [
            Some(self.created - self.received),
            d(Some(self.created), self.dispatched),
            d(self.dispatched, self.acknowledged),
            d(self.acknowledged, self.on_scene),
            d(Some(self.created), self.on_scene),
            d(self.on_scene, self.closed),
        ]
    }
}

const INTERVALS: [&str; 6] = [
    "intake",
    "processing",
    "acknowledge",
    "travel",
    "response",
    "on_scene",
];

/// Hand-made milestones from the observed events: `created`, then the first
/// `dispatched`, `acknowledged`, `on_scene` and the `closed` event of each incident.
fn times_from(events: &[Value]) -> BTreeMap<String, Times> {
    let mut out: BTreeMap<String, Times> = BTreeMap::new();
    for e in events {
        let inc = &e["incident"];
        let id = inc["id"].as_str().unwrap().to_string();
        let at = inc["updated_ms"].as_i64().unwrap();
        let t = out.entry(id).or_default();
        match e["change"].as_str().unwrap() {
            "created" => {
                t.priority = inc["priority"].as_u64().unwrap() as u8;
                t.created = inc["created_ms"].as_i64().unwrap();
                t.received = inc["received_ms"].as_i64().unwrap_or(t.created);
            }
            "dispatched" => {
                t.dispatched.get_or_insert(at);
            }
            "acknowledged" => {
                t.acknowledged.get_or_insert(at);
            }
            "on_scene" => {
                t.on_scene.get_or_insert(at);
            }
            "closed" => t.closed = Some(at),
            _ => {}
        }
    }
    out
}

/// Nearest rank, as docs/records.md defines it.
fn nearest_rank(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// What the report must say for priority groups, by hand.
fn expected_by_priority(times: &BTreeMap<String, Times>, targets_s: [i64; 5]) -> Value {
    let mut groups = Vec::new();
    for p in 1..=5u8 {
        let members: Vec<&Times> = times.values().filter(|t| t.priority == p).collect();
        if members.is_empty() {
            continue;
        }
        let mut intervals = Vec::new();
        for (i, name) in INTERVALS.iter().enumerate() {
            let mut v: Vec<i64> = members.iter().filter_map(|t| t.intervals()[i]).collect();
            v.sort_unstable();
            let within = (*name == "response" && !v.is_empty()).then(|| {
                v.iter()
                    .filter(|&&d| d <= targets_s[usize::from(p) - 1] * 1000)
                    .count() as f64
                    / v.len() as f64
            });
            intervals.push(json!({
                "interval": name, "count": v.len(),
                "p50_ms": nearest_rank(&v, 50), "p90_ms": nearest_rank(&v, 90),
                "within_target": within,
            }));
        }
        groups.push(json!({"key": p.to_string(), "incidents": members.len(), "intervals": intervals}));
    }
    Value::Array(groups)
}

async fn get(server: &BinServer, path: &str, role: Role) -> (u16, String) {
    http(server.addr, "GET", path, Some(&token(role, "sup")), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_shift_reports_the_hand_computed_figures_live_offline_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = BinServer::start(&data, EXTRA);
    let host = server.host();
    let from = opcenter_sim::wire::now_ms() as i64 - 60_000;

    let (mut watch, _) = Client::login(&host, Encoding::Json, &token(Role::Supervisor, "sup")).await;
    ok(&mut watch, json!({"type":"subscribe","topics":["incidents"]})).await;
    let (mut desk, _) = console(&host, Encoding::Json).await;
    let mut a = tablet(&host, Encoding::Json, "R-A", A.0, A.1).await;
    let mut b = tablet(&host, Encoding::Msgpack, "R-B", B.0, B.1).await;
    let mut c = tablet(&host, Encoding::Json, "R-C", C.0, C.1).await;
    let mut d = tablet(&host, Encoding::Json, "R-D", D.0, D.1).await;

    // X (P1, a call whose form opened 45 s before): auto to A, A declines, the
    // engine reassigns to B; B acknowledges, arrives; a note; the desk closes.
    let received = opcenter_sim::wire::now_ms() as i64 - 45_000;
    let x = ok(
        &mut desk,
        json!({"type":"incident.create","category":"assault","priority":1,"location":loc(A),"received_ms":received}),
    )
    .await;
    let x_id = x["incident"]["id"].as_str().unwrap().to_string();
    assert_eq!(x["incident"]["units"], json!(["R-A"]), "{x}");
    assert_eq!(x["incident"]["received_ms"], json!(received));
    ok(
        &mut a,
        json!({"type":"assignment.decline","incident_id":x_id,"reason":"flat tyre"}),
    )
    .await;
    b.event("assignments", Some("assigned")).await;
    ok(&mut b, json!({"type":"assignment.ack","incident_id":x_id})).await;
    ok(&mut b, json!({"type":"unit.status","status":"on_scene"})).await;
    ok(
        &mut desk,
        json!({"type":"incident.note","incident_id":x_id,"text":"two suspects"}),
    )
    .await;
    close(&mut desk, &x_id, "arrest").await;

    // W (P1, manual): the desk assigns C; C arrives after more than the 1 s
    // target and closes it itself.
    let w_id = manual(&mut desk, "assault", 1, C).await;
    assign(&mut desk, &w_id, "R-C", false).await;
    ok(&mut c, json!({"type":"assignment.ack","incident_id":w_id})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    ok(&mut c, json!({"type":"unit.status","status":"on_scene"})).await;
    close(&mut c, &w_id, "report taken").await;

    // Y (P3, manual): assigned D, then D is taken by force for V (P2) and the
    // desk reassigns Y to A, who acknowledges and arrives; the desk closes Y.
    let y_id = manual(&mut desk, "theft", 3, D).await;
    assign(&mut desk, &y_id, "R-D", false).await;
    let v_id = manual(&mut desk, "noise", 2, D).await;
    assign(&mut desk, &v_id, "R-D", true).await;
    assign(&mut desk, &y_id, "R-A", false).await;
    ok(&mut a, json!({"type":"assignment.ack","incident_id":y_id})).await;
    ok(&mut a, json!({"type":"unit.status","status":"on_scene"})).await;
    close(&mut desk, &y_id, "no offence").await;
    ok(&mut d, json!({"type":"assignment.ack","incident_id":v_id})).await;

    // Refused: A closing V (not its own), a received_ms an hour in the future.
    let r = a
        .request(json!({"type":"incident.close","incident_id":v_id,"disposition":"x"}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let future = opcenter_sim::wire::now_ms() as i64 + 3_600_000;
    let r = desk
        .request(json!({"type":"incident.create","category":"theft","priority":2,"location":loc(B),"received_ms":future}))
        .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    assert!(r["message"].as_str().unwrap().contains("received_ms"), "{r}");

    // Z (P2, the citizens' app): received at the HTTP gateway, auto to B, acknowledged.
    let body = json!({"key":"z-1","category":"theft","priority":2,"location":loc(B)}).to_string();
    let (status, z) = http(
        server.addr,
        "POST",
        "/v1/reports",
        Some(&token(Role::Intake, "app")),
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{z}");
    let z: Value = serde_json::from_str(&z).unwrap();
    let z_id = z["incident"]["id"].as_str().unwrap().to_string();
    assert_eq!(z["incident"]["units"], json!(["R-B"]), "{z}");
    let (z_recv, z_created) = (
        z["incident"]["received_ms"].as_i64(),
        z["incident"]["created_ms"].as_i64(),
    );
    assert!(z_recv.is_some() && z_recv <= z_created, "{z}");
    b.event("assignments", Some("assigned")).await;
    ok(&mut b, json!({"type":"assignment.ack","incident_id":z_id})).await;

    // Every incident event the supervisor saw, up to Z's acknowledgement.
    let mut events = Vec::new();
    loop {
        let e = watch.event("incidents", None).await;
        let last = e["incident"]["id"] == json!(z_id) && e["change"] == "acknowledged";
        events.push(e);
        if last {
            break;
        }
    }
    let times = times_from(&events);
    assert_eq!(times.len(), 5, "{times:?}");
    assert_eq!(
        times[&x_id].created - times[&x_id].received,
        times[&x_id].created - received
    );
    assert!(
        times[&w_id].intervals()[4].unwrap() > 1000,
        "W arrived after its sleep"
    );
    let targets = [1, 900, 1800, 3600, 7200];
    let want = expected_by_priority(&times, targets);

    let to = opcenter_sim::wire::now_ms() as i64 + 60_000;
    let path = format!("/v1/reports/response-times?from={from}&to={to}&group=priority");
    let (status, body) = get(&server, &path, Role::Supervisor).await;
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).unwrap();
    let report = &live["report"];
    assert_eq!(report["groups"], want, "report {report:#}");
    assert_eq!(report["incidents"], 5);
    assert_eq!(report["partial_incidents"], 0);
    assert_eq!(
        report["by_hour"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        5
    );
    let mut all: Vec<i64> = times.values().filter_map(|t| t.intervals()[4]).collect();
    all.sort_unstable();
    assert_eq!(report["response"]["count"], all.len());
    assert_eq!(report["response"]["p90_ms"], json!(nearest_rank(&all, 90)));

    // CSV: the same figures, one row per group and interval.
    let (status, csv) = get(&server, &format!("{path}&format=csv"), Role::Supervisor).await;
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("group,key,interval,count,p50_ms,p90_ms,within_target")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), want.as_array().unwrap().len() * 6, "{csv}");
    let p1 = &want[0]["intervals"][4];
    let share = p1["within_target"].as_f64().unwrap();
    assert_eq!(
        rows[4],
        format!(
            "priority,1,response,2,{},{},{share:.4}",
            p1["p50_ms"], p1["p90_ms"]
        ),
        "{csv}"
    );

    // Shifts: by hand in UTC+5 (08:00-20:00 local is 03:00-15:00 UTC).
    let (_, body) = get(
        &server,
        &format!("/v1/reports/response-times?from={from}&to={to}&group=shift"),
        Role::Supervisor,
    )
    .await;
    let shifts: Value = serde_json::from_str(&body).unwrap();
    let mut want_shifts: BTreeMap<String, u64> = BTreeMap::new();
    for t in times.values() {
        let local_min = (t.created / 60_000 + 300).rem_euclid(1440);
        let key = if (480..1200).contains(&local_min) {
            "08:00-20:00"
        } else {
            "20:00-08:00"
        };
        *want_shifts.entry(key.into()).or_default() += 1;
    }
    let got_shifts: BTreeMap<String, u64> = shifts["report"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_string(),
                g["incidents"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_shifts, want_shifts);

    // Refusals: a dispatcher, no token, each bad parameter named.
    assert_eq!(get(&server, &path, Role::Dispatcher).await.0, 403);
    assert_eq!(http(server.addr, "GET", &path, None, None).await.0, 401);
    for (query, param) in [
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("group=weekday", "group"),
        ("format=xml", "format"),
        ("from=2000&to=1000", "from"),
    ] {
        let (status, body) = get(
            &server,
            &format!("/v1/reports/response-times?{query}"),
            Role::Supervisor,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{param}: ")),
            "{body}"
        );
    }

    // The shift's incidents as EIDO documents, each valid against NENA's schema:
    // X (declined, reassigned, noted, closed), W (closed by its unit), Y (its
    // unit taken by force, reassigned, closed), V (took Y's unit), Z (the app's).
    let v = validator();
    let sup = token(Role::Supervisor, "sup");
    let mut docs = BTreeMap::new();
    for id in [&x_id, &w_id, &y_id, &v_id, &z_id] {
        let (status, doc) = get_eido(server.addr, id, Some(&sup)).await;
        assert_eq!(status, 200, "{id}: {doc}");
        assert_valid(&v, &doc);
        assert_eq!(doc["incidentComponent"]["internalIncidentId"], json!(id));
        docs.insert(id.clone(), doc);
    }
    for (id, disposition) in [(&x_id, "arrest"), (&w_id, "report taken"), (&y_id, "no offence")] {
        let inc = &docs[id]["incidentComponent"];
        assert_eq!(inc["incidentStatusCommonRegistryText"], json!(["Closed"]), "{id}");
        assert_eq!(
            inc["dispositionComponent"][0]["dispositionCommonRegistryCode"], disposition,
            "{id}"
        );
    }
    let x_notes: Vec<&Value> = docs[&x_id]["notesComponent"].as_array().unwrap().iter().collect();
    assert!(
        x_notes
            .iter()
            .any(|n| n["notesActionComments"] == "two suspects" && n["agentReference"]["$ref"].is_string()),
        "X's note with its author: {x_notes:#?}"
    );
    for (id, unit) in [(&v_id, "R-D"), (&z_id, "R-B")] {
        let doc = &docs[id];
        assert_ne!(
            doc["incidentComponent"]["incidentStatusCommonRegistryText"],
            json!(["Closed"])
        );
        let units: Vec<&str> = doc["emergencyResourceComponent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["$id"].as_str().unwrap())
            .collect();
        assert_eq!(units.len(), 1, "{id}: {units:?}");
        assert!(
            units[0].starts_with(&format!("urn:emergency:uid:unitid:{unit}:")),
            "{id}: {units:?}"
        );
    }
    assert_eq!(
        docs[&z_id]["callComponent"][0]["localCallType"], z["incident"]["source"],
        "Z's source: {z}"
    );

    // Offline, from the journal of the stopped server: the same report.
    drop((watch, desk, a, b, c, d));
    server.terminate();
    let offline = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_opcenter"))
            .args(["report", "response-times", format, "--group", "priority"])
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .arg("--config")
            .arg(&server.config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(serde_json::from_str::<Value>(&offline("--json")).unwrap(), live);
    assert_eq!(offline("--csv"), csv);

    // After a restart the server reads the same history.
    let server = BinServer::start(&data, EXTRA);
    let (status, body) = get(&server, &path, Role::Supervisor).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), live);
}

#[test]
fn the_cli_refuses_a_directory_without_a_journal_and_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let out = Command::new(env!("CARGO_BIN_EXE_opcenter"))
        .args(["report", "response-times", "--data-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no journal here"),
        "{out:?}"
    );
    assert!(!missing.exists(), "the report must not create a journal");
    let out = Command::new(env!("CARGO_BIN_EXE_opcenter"))
        .args(["report", "response-times", "--group", "weekday", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group: "),
        "{out:?}"
    );
}
