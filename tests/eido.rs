//! The EIDO export against NENA's schema: the validator is first proven on NENA's
//! own sample (valid) and on broken copies (invalid), then an incident that was
//! created, dispatched, acknowledged, reached, noted and closed on a real server is
//! exported with `GET /v1/incidents/{id}/eido` and validated, with its `$ref`s
//! resolving inside the document. Owns no product code.

use serde_json::{Value, json};

use opcenter_proto::auth::Role;

use crate::common::eido::{DATA, assert_valid, errors, get_eido, validator};
use crate::common::{Client, Encoding, TestServer, console, tablet, token, unit_token};

#[test]
fn the_validator_accepts_nenas_sample_and_rejects_broken_documents() {
    let v = validator();
    let text = std::fs::read_to_string(format!("{DATA}/sample-call-transfer.json")).unwrap();
    let sample: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(errors(&v, &sample), Vec::<String>::new());

    let mut no_version = sample.clone();
    no_version.as_object_mut().unwrap().remove("eidoVersion");
    assert!(!errors(&v, &no_version).is_empty(), "eidoVersion is required");
    let mut bad_agency = sample.clone();
    bad_agency["agencyComponent"][0]
        .as_object_mut()
        .unwrap()
        .remove("agencyType");
    assert!(!errors(&v, &bad_agency).is_empty(), "agencyType is required");
    let mut bad_ref = sample;
    bad_ref["callComponent"][0]["agentReference"] = json!([{"id": "no $ref"}]);
    assert!(!errors(&v, &bad_ref).is_empty(), "a reference needs $ref");
}

#[tokio::test]
async fn an_incidents_eido_export_validates_against_the_schema() {
    let server = TestServer::start("").await;
    let mut unit = tablet(&server.host(), Encoding::Json, "P-7", 51.23, 51.37).await;
    let (mut d, _) = console(&server.host(), Encoding::Json).await;
    let mut body = json!({"type":"incident.create","category":"theft","priority":1,
        "location":{"lat":51.231,"lon":51.371},"address":"Dostyk 12 <rear>",
        "description":"bike taken & seen \"running\""});
    body["source"] = json!("call");
    let ok = d.request(body).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let id = ok["incident"]["id"].as_str().unwrap().to_string();
    assert_eq!(ok["incident"]["units"], json!(["P-7"]), "{ok}");
    unit.event("assignments", Some("assigned")).await;
    let ok = unit
        .request(json!({"type":"assignment.ack","incident_id":id}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = unit
        .request(json!({"type":"unit.status","status":"on_scene"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = d
        .request(json!({"type":"incident.note","incident_id":id,"text":"suspect gone <north>"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");

    let dispatcher = token(Role::Dispatcher, "d1");
    let (status, doc) = get_eido(server.addr, &id, Some(&dispatcher)).await;
    assert_eq!(status, 200, "{doc}");
    let v = validator();
    assert_valid(&v, &doc);
    assert_eq!(doc["eidoVersion"], "1.0");
    assert_eq!(doc["incidentComponent"]["internalIncidentId"], json!(id));
    assert_eq!(
        doc["incidentComponent"]["incidentStatusCommonRegistryText"],
        json!(["Active.OnScene"])
    );
    let unit_doc = &doc["emergencyResourceComponent"][0];
    assert_eq!(unit_doc["primaryUnitStatusRegistryText"], "NotAvailable");
    assert_eq!(unit_doc["secondaryUnitStatusRegistryText"], json!(["OnScene"]));
    assert_eq!(unit_doc["unitStatusInternal"], json!(["on_scene"]));
    let notes: Vec<&str> = doc["notesComponent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["notesActionComments"].as_str().unwrap())
        .collect();
    assert_eq!(
        notes,
        vec![
            "bike taken &amp; seen &quot;running&quot;",
            "suspect gone &lt;north&gt;"
        ]
    );

    // Closed: a disposition component, still valid.
    let ok = d
        .request(json!({"type":"incident.close","incident_id":id,"disposition":"resolved"}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let supervisor = token(Role::Supervisor, "s1");
    let (status, doc) = get_eido(server.addr, &id, Some(&supervisor)).await;
    assert_eq!(status, 200, "{doc}");
    assert_valid(&v, &doc);
    let inc = &doc["incidentComponent"];
    assert_eq!(inc["incidentStatusCommonRegistryText"], json!(["Closed"]));
    assert_eq!(
        inc["dispositionComponent"][0]["dispositionCommonRegistryCode"],
        "resolved"
    );

    // Who may ask.
    assert_eq!(get_eido(server.addr, &id, None).await.0, 401);
    assert_eq!(get_eido(server.addr, &id, Some(&unit_token("P-7"))).await.0, 403);
    assert_eq!(get_eido(server.addr, "I-999999", Some(&dispatcher)).await.0, 404);
    drop::<Client>(unit);
}
