//! The EIDO export (NENA-STA-021 JSON, `eidoVersion` "1.0"): one incident, its
//! call, our agency, its assigned units (emergency resources), locations and notes,
//! as one document whose components point at each other with `{"$ref": <$id>}`.
//!
//! Owns the mapping from our model to EIDO fields and registry values; the table
//! is in docs/records.md and must change with it. Must never: read state itself
//! (the caller hands it a consistent incident and its units).

use opcenter_core::{Incident, IncidentStatus, Location, Unit, UnitStatus};
use serde_json::{Value, json};

/// The EIDO version this module writes.
pub(crate) const EIDO_VERSION: &str = "1.0";

/// Our agency's identifier in EIDO documents (the `$id` of the agency component
/// and the domain of every other `$id`). Not configurable yet.
pub(crate) const AGENCY_ID: &str = "opcenter.police.local";

/// The incident status registry value of one of ours.
pub(crate) fn incident_status(status: IncidentStatus) -> &'static str {
    match status {
        IncidentStatus::Pending => "Active.Pending",
        IncidentStatus::Dispatched => "Active.Dispatched",
        IncidentStatus::EnRoute => "Active.Enroute",
        IncidentStatus::OnScene => "Active.OnScene",
        IncidentStatus::Closed => "Closed",
    }
}

/// Primary (availability) and secondary (activity) unit status registry values.
pub(crate) fn unit_status(status: UnitStatus) -> (&'static str, &'static [&'static str]) {
    match status {
        UnitStatus::Available => ("Available", &[]),
        UnitStatus::Dispatched => ("NotAvailable", &["Dispatched"]),
        UnitStatus::EnRoute => ("NotAvailable", &["AcknowledgedTransmission", "Enroute"]),
        UnitStatus::OnScene => ("NotAvailable", &["OnScene"]),
        UnitStatus::Busy => ("ConditionallyAvailable", &[]),
        UnitStatus::OffDuty => ("NotAvailable", &["OutOfService"]),
        UnitStatus::Unresponsive => ("NotAvailable", &[]),
    }
}

/// Our status names as the protocol spells them (`en_route`...), for the
/// `...Internal...` fields that carry our own code next to the registry value.
pub(crate) fn ours<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Unix ms → RFC 3339 UTC with milliseconds (`2026-11-30T23:59:01.250Z`).
pub(crate) fn timestamp(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// Text for XML and HTML bodies (notes are HTML5 in EIDO, locations PIDF-LO XML).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A PIDF-LO document with a geodetic point (and the address as free text).
fn pidf_lo(entity: &str, loc: &Location, address: Option<&str>, at_ms: i64) -> String {
    let civic = address.map_or(String::new(), |a| {
        format!(
            "<ca:civicAddress xmlns:ca=\"urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr\">\
             <ca:LOC>{}</ca:LOC></ca:civicAddress>",
            escape(a)
        )
    });
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:gp=\"urn:ietf:params:xml:ns:pidf:geopriv10\" \
         xmlns:gml=\"http://www.opengis.net/gml\" entity=\"{}\">\
         <tuple id=\"loc\"><status><gp:geopriv><gp:location-info>\
         <gml:Point srsName=\"urn:ogc:def:crs:EPSG::4326\"><gml:pos>{} {}</gml:pos></gml:Point>\
         {civic}</gp:location-info><gp:usage-rules/><gp:method>GPS</gp:method></gp:geopriv>\
         </status><timestamp>{}</timestamp></tuple></presence>",
        escape(entity),
        loc.lat,
        loc.lon,
        timestamp(at_ms)
    )
}

fn reference(id: &str) -> Value {
    json!({ "$ref": id })
}

/// The fields every component starts with (EIDO's Prologue).
fn prologue(id: &str, at_ms: i64) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("$id".into(), json!(id));
    m.insert("lastUpdateTimeStamp".into(), json!(timestamp(at_ms)));
    m.insert("updatedByAgencyReference".into(), reference(AGENCY_ID));
    m
}

fn component(id: &str, at_ms: i64, fields: Value) -> Value {
    let mut m = prologue(id, at_ms);
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m)
}

fn agent_id(sub: &str) -> String {
    format!("{sub}@{AGENCY_ID}")
}

/// The EIDO document of `incident` with `units`, its assigned units as they are now.
pub(crate) fn document(incident: &Incident, units: &[Unit]) -> Value {
    let id = &incident.id;
    let urn = |kind: &str, local: &str| format!("urn:emergency:uid:{kind}:{local}:{AGENCY_ID}");
    let incident_id = urn("incidentid", id);
    let call_id = urn("callid", id);
    let location_id = urn("locationid", id);
    let updated = incident.updated_ms;

    // Agents: everyone who wrote a note, and each unit's crew as one agent.
    let mut agents: Vec<(String, &'static str)> = Vec::new();
    let mut add_agent = |sub: &str, role: &'static str| {
        let aid = agent_id(sub);
        if !agents.iter().any(|(a, _)| *a == aid) {
            agents.push((aid, role));
        }
    };

    let mut notes = Vec::new();
    if let Some(text) = &incident.description {
        notes.push(component(
            &urn("noteid", &format!("{id}-0")),
            incident.created_ms,
            json!({ "notesActionComments": escape(text) }),
        ));
    }
    for (i, note) in incident.notes.iter().enumerate() {
        add_agent(&note.by, "Dispatching");
        notes.push(component(
            &urn("noteid", &format!("{id}-{}", i + 1)),
            note.at_ms,
            json!({
                "notesActionComments": escape(&note.text),
                "agentReference": reference(&agent_id(&note.by)),
            }),
        ));
    }
    let note_refs: Vec<Value> = notes
        .iter()
        .map(|n| reference(n["$id"].as_str().unwrap_or_default()))
        .collect();

    let mut locations = vec![component(
        &location_id,
        incident.created_ms,
        json!({
            "locationTypeDescriptionRegistryText": "IncidentLocation",
            "locationByValue": pidf_lo(&incident_id, &incident.location, incident.address.as_deref(), incident.created_ms),
        }),
    )];

    let mut resources = Vec::new();
    for unit in units {
        add_agent(&unit.id, "Responding");
        let (primary, secondary) = unit_status(unit.status);
        let mut fields = json!({
            "emergencyResourceTypeCommonRegistryText": "LawEnforcement",
            "emergencyResourceTypeInternalText": unit.kind.clone().unwrap_or_else(|| "patrol".into()),
            "resourceAttributeRegistryText": if unit.capabilities.is_empty() { json!([]) } else { json!(["Other"]) },
            "resourceAttributeInternalText": unit.capabilities,
            "emergencyResourceName": unit.callsign.clone().unwrap_or_else(|| unit.id.clone()),
            "primaryUnitStatusRegistryText": primary,
            "secondaryUnitStatusRegistryText": secondary,
            "unitStatusInternal": [ours(&unit.status)],
            "agentReference": [reference(&agent_id(&unit.id))],
        });
        if let (Some(loc), Some(at)) = (unit.location, unit.location_ms) {
            let lid = urn("locationid", &format!("{id}-{}", unit.id));
            locations.push(component(
                &lid,
                at,
                json!({
                    "locationTypeDescriptionRegistryText": "UnitLocation",
                    "locationByValue": pidf_lo(&unit.id, &loc, None, at),
                }),
            ));
            fields["unitLocationReference"] = reference(&lid);
            fields["unitDestinationReference"] = reference(&location_id);
        }
        resources.push(component(&urn("unitid", &unit.id), updated, fields));
    }

    let mut inc = json!({
        "incidentTypeCommonRegistryText": "Law Enforcement",
        "incidentTypeInternalCode": incident.category,
        "incidentTypeInternalText": incident.category,
        "incidentStatusCommonRegistryText": [incident_status(incident.status)],
        "incidentStatusInternalText": [ours(&incident.status)],
        "internalIncidentId": id,
        "incidentPriorityInternalText": format!("P{}", incident.priority),
        "incidentCommonPriorityNumber": incident.priority,
        "locationReference": [reference(&location_id)],
        "notesReference": note_refs,
    });
    if let Some(disposition) = &incident.disposition {
        inc["dispositionComponent"] = json!([component(
            &urn("dispositionid", id),
            updated,
            json!({
                "dispositionCommonRegistryCode": disposition,
                "dispositionPrimaryIndicator": true,
                "dispositionDescriptionText": disposition,
            }),
        )]);
    }

    let call = component(
        &call_id,
        incident.created_ms,
        json!({
            "standardPrimaryCallType": "emergency",
            "localCallType": incident.source,
            "direction": "incoming",
            "callStartTimestamp": timestamp(incident.created_ms),
            "callStateRegistryText": "callEnded",
            "agencyReference": [reference(AGENCY_ID)],
            "locationReference": [reference(&location_id)],
            "emergencyResourceReference": resources
                .iter()
                .map(|r| reference(r["$id"].as_str().unwrap_or_default()))
                .collect::<Vec<_>>(),
        }),
    );
    let agency = component(
        AGENCY_ID,
        updated,
        json!({
            "agencyRoleDescriptionRegistryText": ["CallReceiving", "Dispatch"],
            "agencyType": ["police"],
        }),
    );
    let agent_components: Vec<Value> = agents
        .iter()
        .map(|(aid, role)| {
            component(
                aid,
                updated,
                json!({ "agentRoleRegistryText": [role], "agencyReference": reference(AGENCY_ID) }),
            )
        })
        .collect();

    let mut doc = prologue(&incident_id, updated);
    doc.extend(
        json!({
            "eidoVersion": EIDO_VERSION,
            "issuingElementIdentification": AGENCY_ID,
            // One incident per document: the schema makes this one an object.
            "incidentComponent": component(&incident_id, updated, inc),
            "callComponent": [call],
            "agencyComponent": [agency],
            "agentComponent": agent_components,
            "emergencyResourceComponent": resources,
            "locationComponent": locations,
            "notesComponent": notes,
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp(1_796_083_141_250), "2026-11-30T23:59:01.250Z");
    }

    #[test]
    fn text_is_escaped_for_html_and_xml() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
