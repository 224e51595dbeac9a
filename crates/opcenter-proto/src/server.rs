//! Messages the server sends: `ok` replies, `error`s, `event`s and `positions`
//! batches, as borrowed serde views so an event is encoded straight from the
//! engine's objects, once per encoding.
//!
//! Owns: the shapes of outgoing frames. Must never: decide who receives them.

use serde::Serialize;

use opcenter_core::{Candidate, Event, EventBody, Incident, PositionItem, Shortfall, Unit};

use crate::error::ErrorCode;

/// `{"type":"ok","id":…, …fields of B}`.
#[derive(Debug, Serialize)]
pub struct OkReply<B: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: Option<u64>,
    #[serde(flatten)]
    body: B,
}

impl<B: Serialize> OkReply<B> {
    /// An ok reply to command `id` carrying `body`'s fields.
    pub fn new(id: Option<u64>, body: B) -> Self {
        OkReply { kind: "ok", id, body }
    }
}

/// `{"type":"error","id":…,"code":…,"message":…}`; `id` is null when unknown.
#[derive(Debug, Serialize)]
pub struct ErrorReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: Option<u64>,
    code: &'static str,
    message: &'a str,
}

impl<'a> ErrorReply<'a> {
    /// An error reply.
    pub fn new(id: Option<u64>, code: ErrorCode, message: &'a str) -> Self {
        ErrorReply {
            kind: "error",
            id,
            code: code.as_str(),
            message,
        }
    }
}

/// An ok reply with no extra fields.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// The hello reply.
#[derive(Debug, Serialize)]
pub struct HelloOk<'a> {
    /// Server-made session id.
    pub session: &'a str,
    /// The token's role.
    pub role: &'static str,
    /// The journal's epoch.
    pub epoch: &'a str,
    /// The last seq at hello time.
    pub seq: u64,
    /// For units: the unit as it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a Unit>,
    /// For units: its open assignment, or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<Option<&'a Incident>>,
}

/// The subscribe reply.
#[derive(Debug, Serialize)]
pub struct SubscribeOk<'a> {
    /// The epoch.
    pub epoch: &'a str,
    /// The cut.
    pub seq: u64,
    /// True when `since` was honoured by a replay.
    pub recovered: bool,
    /// Snapshot of open incidents (not recovered, topic incidents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incidents: Option<Vec<&'a Incident>>,
    /// Snapshot of units (not recovered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<&'a Unit>>,
}

/// `incident` field.
#[derive(Debug, Serialize)]
pub struct IncidentBody<'a> {
    /// The incident.
    pub incident: &'a Incident,
}

/// `unit` field.
#[derive(Debug, Serialize)]
pub struct UnitBody<'a> {
    /// The unit.
    pub unit: &'a Unit,
}

/// The recommend reply.
#[derive(Debug, Serialize)]
pub struct RecommendOk<'a> {
    /// Nearest first.
    pub candidates: &'a [Candidate],
    /// Why fewer than asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<Shortfall>,
}

/// `{"type":"event","seq":…,"topic":…,"change":…,"incident"|"unit":{…}}`.
#[derive(Debug, Serialize)]
pub struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    topic: &'static str,
    change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    incident: Option<&'a Incident>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a Unit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
}

impl<'a> EventFrame<'a> {
    /// The wire view of `event` with its global `seq`.
    pub fn new(seq: u64, event: &'a Event) -> Self {
        let (incident, unit, unit_id) = match &event.body {
            EventBody::Incident(i) => (Some(i), None, None),
            EventBody::Unit(u) => (None, Some(u), None),
            EventBody::Assignment { unit_id, incident } => (Some(incident), None, Some(unit_id.as_str())),
        };
        EventFrame {
            kind: "event",
            seq,
            topic: event.topic().as_str(),
            change: event.change.as_str(),
            incident,
            unit,
            unit_id,
            region: None,
        }
    }

    /// The same event tagged with its region (a multi-region subscription).
    pub fn in_region(self, region: Option<&'a str>) -> Self {
        EventFrame { region, ..self }
    }
}

/// `{"type":"positions","items":[…]}`.
#[derive(Debug, Serialize)]
pub struct PositionsFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    items: &'a [&'a PositionItem],
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
}

impl<'a> PositionsFrame<'a> {
    /// A batch of position items.
    pub fn new(items: &'a [&'a PositionItem]) -> Self {
        PositionsFrame {
            kind: "positions",
            items,
            region: None,
        }
    }

    /// The same batch tagged with its region (a multi-region subscription).
    pub fn in_region(self, region: Option<&'a str>) -> Self {
        PositionsFrame { region, ..self }
    }
}

/// `{"type":"subscribed","id":…,"region":…,"epoch":…,"seq":…,…}`: one region's
/// answer to a multi-region `subscribe` (a national desk): the fields of the
/// single-region `ok` reply, plus the region.
#[derive(Debug, Serialize)]
pub struct Subscribed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: Option<u64>,
    region: &'a str,
    #[serde(flatten)]
    body: SubscribeOk<'a>,
}

impl<'a> Subscribed<'a> {
    /// Region `region`'s part of the reply to `subscribe` `id`.
    pub fn new(id: Option<u64>, region: &'a str, body: SubscribeOk<'a>) -> Self {
        Subscribed {
            kind: "subscribed",
            id,
            region,
            body,
        }
    }
}
