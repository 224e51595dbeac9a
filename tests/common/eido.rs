//! The EIDO validator the tests share: NENA's schema (the copy in
//! `tests/data/eido/`) converted to a JSON Schema, the export fetched over HTTP,
//! and the check that a document validates and every `$ref` in it resolves.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::http;

pub(crate) const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/eido");

/// NENA's OpenAPI 3.0 components as a draft-07 JSON Schema for one EIDO document.
///
/// The conversion: `components.schemas` become `definitions`; every
/// `$ref: '#/components/schemas/X'` becomes `#/definitions/X`; a `$ref` to the
/// NIEM component files (`NIEMComponents/*.yaml`, not published with the schema)
/// becomes `{}` (anything), which only loosens person/vehicle/organization/item
/// details we never export; `nullable: true` (OpenAPI's, none in 1.0.0 but handled)
/// becomes a `"null"` alternative of `type`. Only a `$ref` whose value is a string is
/// a reference: `properties: {$ref: {...}}` is EIDO's property named `$ref`.
pub(crate) fn eido_schema() -> Value {
    let text = std::fs::read_to_string(format!("{DATA}/openapi.yaml")).unwrap();
    let api: Value = serde_norway::from_str(&text).expect("the schema copy is valid YAML");
    let mut defs = api["components"]["schemas"].clone();
    convert(&mut defs);
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": defs,
        "$ref": "#/definitions/EmergencyIncidentDataObjectType",
    })
}

fn convert(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let local = r.strip_prefix("#/components/schemas/").map(str::to_owned);
                match local {
                    Some(name) => {
                        m.insert("$ref".into(), json!(format!("#/definitions/{name}")));
                    }
                    None => {
                        m.clear();
                        return;
                    }
                }
            }
            if m.remove("nullable") == Some(Value::Bool(true))
                && let Some(t) = m.get("type").cloned()
            {
                m.insert("type".into(), json!([t, "null"]));
            }
            m.values_mut().for_each(convert);
        }
        Value::Array(a) => a.iter_mut().for_each(convert),
        _ => {}
    }
}

pub(crate) fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

pub(crate) fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&eido_schema()).expect("the converted schema compiles")
}

/// Every string value of `key` in `v`, at any depth: `$ref` gives every reference
/// (only a string-valued `$ref` is one), `$id` every component's id.
fn strings_of(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(s)) = m.get(key) {
                out.push(s.clone());
            }
            m.values().for_each(|x| strings_of(x, key, out));
        }
        Value::Array(a) => a.iter().for_each(|x| strings_of(x, key, out)),
        _ => {}
    }
}

/// `GET /v1/incidents/{id}/eido`: the status and the body as JSON (null if not).
pub(crate) async fn get_eido(addr: SocketAddr, id: &str, token: Option<&str>) -> (u16, Value) {
    let (status, body) = http(addr, "GET", &format!("/v1/incidents/{id}/eido"), token, None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `doc` validates against the schema and each of its `$ref`s names a
/// component's `$id` in it.
pub(crate) fn assert_valid(v: &jsonschema::Validator, doc: &Value) {
    assert_eq!(errors(v, doc), Vec::<String>::new(), "{doc:#}");
    let (mut all_refs, mut all_ids) = (Vec::new(), Vec::new());
    strings_of(doc, "$ref", &mut all_refs);
    strings_of(doc, "$id", &mut all_ids);
    for r in &all_refs {
        assert!(all_ids.contains(r), "$ref {r} has no component in {doc:#}");
    }
}
