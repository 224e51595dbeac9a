//! Messages a client sends (`shared/PROTOCOL.md` section 3) and their decoding:
//! first the envelope (`type`, `id`), then the typed body for that `type`, then
//! checks of ranges and shapes, so every frame ends as a [`ClientMessage`] or a
//! [`FrameError`] carrying the protocol error code. Commands the engine runs are
//! parsed straight into opcenter-core's types ([`NewIncident`], [`IncidentPatch`],
//! [`RecommendQuery`]), checked by [`opcenter_core::check`]: a rule and its
//! message live there once, and nothing after this module checks them again.
//!
//! Owns: wire shapes of commands. Must never: look at server state (unknown ids,
//! permissions on objects are the engine's), or restate a limit of the engine.

/// The citizen who reported (the incident's `reporter`).
pub use opcenter_core::Reporter;
use serde::Deserialize;

use opcenter_core::check::{self, DEFAULT_RECOMMEND};
use opcenter_core::{
    Capability, CoreError, DispatchMode, Given, IncidentPatch, Location, MAX_NOTE_BYTES, NewIncident,
    PositionFix, RecommendQuery, RecommendTarget, UnitStatus,
};

use crate::codec::{self, Encoding};
use crate::error::{ErrorCode, FrameError};

/// `area` of a positions subscription (degrees). `west > east` crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
pub struct Area {
    /// Southern edge.
    pub south: f64,
    /// Western edge.
    pub west: f64,
    /// Northern edge.
    pub north: f64,
    /// Eastern edge.
    pub east: f64,
}

impl Area {
    /// True when the point lies inside (edges included).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let lat_ok = lat >= self.south && lat <= self.north;
        let lon_ok = if self.west <= self.east {
            lon >= self.west && lon <= self.east
        } else {
            lon >= self.west || lon <= self.east
        };
        lat_ok && lon_ok
    }

    fn validate(&self) -> Result<(), String> {
        let all = [self.south, self.west, self.north, self.east];
        if all.iter().any(|v| !v.is_finite()) {
            return Err("area edges must be finite".into());
        }
        if !(-90.0..=90.0).contains(&self.south) || !(-90.0..=90.0).contains(&self.north) {
            return Err("area south/north must be in [-90, 90]".into());
        }
        if !(-180.0..=180.0).contains(&self.west) || !(-180.0..=180.0).contains(&self.east) {
            return Err("area west/east must be in [-180, 180]".into());
        }
        if self.south > self.north {
            return Err("area south is north of north".into());
        }
        Ok(())
    }
}

/// `since` of a resuming subscription.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    /// The epoch the client last saw.
    pub epoch: String,
    /// The last seq it saw.
    pub seq: u64,
}

/// A subscription topic, including `positions` (which is not an event topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubTopic {
    /// Incident events.
    Incidents,
    /// Unit events.
    Units,
    /// Position batches.
    Positions,
    /// A tablet's own assignments.
    Assignments,
}

impl SubTopic {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "incidents" => SubTopic::Incidents,
            "units" => SubTopic::Units,
            "positions" => SubTopic::Positions,
            "assignments" => SubTopic::Assignments,
            _ => return None,
        })
    }
}

/// `hello`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Hello {
    /// The JWT.
    pub token: String,
    /// Protocol version (1).
    #[serde(default)]
    pub protocol: Option<u32>,
}

/// `subscribe`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Topics, deduplicated.
    pub topics: Vec<SubTopic>,
    /// Area filter for positions.
    pub area: Option<Area>,
    /// Agency filter for `units` events, the snapshot's units and positions
    /// (our addition); `None` means every agency.
    pub agencies: Option<Vec<String>>,
    /// Resume point.
    pub since: Option<Since>,
    /// A national desk's multi-region subscription (our addition): the regions,
    /// deduplicated, in the client's order. `None`: the server's own region,
    /// unchanged on the wire.
    pub regions: Option<Vec<String>>,
    /// Resume points of a multi-region subscription, by region (only regions
    /// named in `regions`).
    pub since_by_region: std::collections::BTreeMap<String, Since>,
}

impl Subscribe {
    /// True when a unit of `agency` passes the `agencies` filter (no filter:
    /// every unit; a unit without an agency passes only without a filter).
    pub fn wants_agency(&self, agency: Option<&str>) -> bool {
        match (&self.agencies, agency) {
            (None, _) => true,
            (Some(list), Some(a)) => list.iter().any(|x| x == a),
            (Some(_), None) => false,
        }
    }
}

#[derive(Deserialize)]
struct RawSubscribe {
    topics: Vec<String>,
    #[serde(default)]
    area: Option<Area>,
    #[serde(default)]
    agencies: Option<Vec<String>>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    regions: Option<Vec<String>>,
    #[serde(default)]
    since_by_region: Option<std::collections::BTreeMap<String, Since>>,
}

#[derive(Deserialize)]
struct RawCreate {
    category: String,
    priority: i64,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    units_needed: Option<i64>,
    #[serde(default)]
    required: Option<Vec<Capability>>,
    #[serde(default)]
    dispatch: Option<DispatchMode>,
    #[serde(default)]
    received_ms: Option<i64>,
    agencies: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawUpdate {
    incident_id: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// `incident.close`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Close {
    /// Which incident.
    pub incident_id: String,
    /// How it ended.
    pub disposition: String,
}

/// `incident.assign`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Assign {
    /// Which incident.
    pub incident_id: String,
    /// Which unit.
    pub unit_id: String,
    /// Take the unit off its current incident.
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize)]
struct RawRecommend {
    #[serde(default)]
    incident_id: Option<String>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    required: Option<Vec<Capability>>,
    #[serde(default)]
    agencies: Option<Vec<String>>,
}

/// `unit.position`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// The unit named in the frame, if any (must be the session's own).
    pub unit_id: Option<String>,
    /// The fix.
    pub fix: PositionFix,
}

#[derive(Deserialize)]
struct RawPosition {
    #[serde(default)]
    unit_id: Option<String>,
    lat: f64,
    lon: f64,
    #[serde(default)]
    heading: Option<f64>,
    #[serde(default)]
    speed: Option<f64>,
    #[serde(default)]
    accuracy: Option<f64>,
    #[serde(default)]
    at_ms: Option<i64>,
}

/// `unit.status`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Status {
    /// The new status.
    pub status: UnitStatus,
    /// Which unit (dispatchers must name one; units may name only their own).
    #[serde(default)]
    pub unit_id: Option<String>,
}

/// `assignment.ack`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Ack {
    /// The incident acknowledged.
    pub incident_id: String,
}

/// `assignment.decline`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Decline {
    /// The incident declined.
    pub incident_id: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `incident.note`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Note {
    /// Which incident.
    pub incident_id: String,
    /// ≤ 4096 bytes of UTF-8.
    pub text: String,
}

/// `unit.emergency`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Emergency {
    /// Pressed or cleared.
    pub active: bool,
    /// Where (default: the unit's last position).
    #[serde(default)]
    pub location: Option<Location>,
}

/// A decoded, checked client command.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `hello`.
    Hello(Hello),
    /// `subscribe`.
    Subscribe(Subscribe),
    /// `incident.create`.
    IncidentCreate(NewIncident),
    /// `incident.create` with an `address` and no `location`: placed by the
    /// hub's gazetteer before it reaches the engine.
    IncidentCreateAt(Unplaced),
    /// `incident.update`.
    IncidentUpdate {
        /// Which incident.
        incident_id: String,
        /// What changes.
        patch: IncidentPatch,
    },
    /// `incident.close`.
    IncidentClose(Close),
    /// `incident.assign`.
    IncidentAssign(Assign),
    /// `incident.recommend`: exactly one of incident or location, count in range.
    IncidentRecommend(RecommendQuery),
    /// `incident.note`.
    IncidentNote(Note),
    /// `unit.position`.
    UnitPosition(Position),
    /// `unit.status`.
    UnitStatus(Status),
    /// `assignment.ack`.
    AssignmentAck(Ack),
    /// `assignment.decline`.
    AssignmentDecline(Decline),
    /// `unit.emergency`.
    UnitEmergency(Emergency),
    /// `ping`.
    Ping,
}

impl ClientMessage {
    /// The wire `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "hello",
            ClientMessage::Subscribe(_) => "subscribe",
            ClientMessage::IncidentCreate(_) | ClientMessage::IncidentCreateAt(_) => "incident.create",
            ClientMessage::IncidentUpdate { .. } => "incident.update",
            ClientMessage::IncidentClose(_) => "incident.close",
            ClientMessage::IncidentAssign(_) => "incident.assign",
            ClientMessage::IncidentRecommend(_) => "incident.recommend",
            ClientMessage::IncidentNote(_) => "incident.note",
            ClientMessage::UnitPosition(_) => "unit.position",
            ClientMessage::UnitStatus(_) => "unit.status",
            ClientMessage::AssignmentAck(_) => "assignment.ack",
            ClientMessage::AssignmentDecline(_) => "assignment.decline",
            ClientMessage::UnitEmergency(_) => "unit.emergency",
            ClientMessage::Ping => "ping",
        }
    }
}

/// A decoded frame: the client's `id` and its command.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The client's `id`, if it sent one.
    pub id: Option<u64>,
    /// The command.
    pub message: ClientMessage,
    /// The region a command is for (our addition, a national desk's routing);
    /// `None`: the server's own region.
    pub region: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    region: Option<String>,
}

/// Decodes and checks one frame in the session's encoding.
pub fn decode_frame(encoding: Encoding, bytes: &[u8]) -> Result<Frame, FrameError> {
    if !codec::is_map(encoding, bytes) {
        return Err(FrameError::new(
            None,
            ErrorCode::BadRequest,
            "a frame must be a map with a string `type`",
        ));
    }
    let envelope: Envelope = codec::decode(encoding, bytes)
        .map_err(|e| FrameError::new(None, ErrorCode::BadRequest, format!("malformed frame: {e}")))?;
    let id = envelope.id;
    let Some(kind) = envelope.kind else {
        return Err(FrameError::new(id, ErrorCode::BadRequest, "missing `type`"));
    };
    let bad = |e: String| FrameError::new(id, ErrorCode::BadRequest, e);
    let body = |e: String| bad(format!("{kind}: {e}"));
    let checked = |e: CoreError| body(e.to_string());
    let message = match kind.as_str() {
        "hello" => ClientMessage::Hello(codec::decode(encoding, bytes).map_err(body)?),
        "ping" => ClientMessage::Ping,
        "subscribe" => {
            let raw: RawSubscribe = codec::decode(encoding, bytes).map_err(body)?;
            ClientMessage::Subscribe(check_subscribe(raw).map_err(body)?)
        }
        "incident.create" => {
            let raw: RawCreate = codec::decode(encoding, bytes).map_err(body)?;
            let placed = raw.location.is_some();
            let new = check_create(raw).map_err(checked)?;
            if placed {
                ClientMessage::IncidentCreate(new)
            } else {
                ClientMessage::IncidentCreateAt(Unplaced { incident: new })
            }
        }
        "incident.update" => {
            let raw: RawUpdate = codec::decode(encoding, bytes).map_err(body)?;
            let patch = check_update(&raw).map_err(checked)?;
            ClientMessage::IncidentUpdate {
                incident_id: raw.incident_id,
                patch,
            }
        }
        "incident.close" => ClientMessage::IncidentClose(codec::decode(encoding, bytes).map_err(body)?),
        "incident.assign" => ClientMessage::IncidentAssign(codec::decode(encoding, bytes).map_err(body)?),
        "incident.recommend" => {
            let raw: RawRecommend = codec::decode(encoding, bytes).map_err(body)?;
            ClientMessage::IncidentRecommend(check_recommend(raw).map_err(checked)?)
        }
        "incident.note" => {
            let note: Note = codec::decode(encoding, bytes).map_err(body)?;
            if note.text.len() > MAX_NOTE_BYTES {
                return Err(body(format!(
                    "text is {} bytes, at most {MAX_NOTE_BYTES}",
                    note.text.len()
                )));
            }
            ClientMessage::IncidentNote(note)
        }
        "unit.position" => {
            let raw: RawPosition = codec::decode(encoding, bytes).map_err(body)?;
            ClientMessage::UnitPosition(check_position(raw).map_err(checked)?)
        }
        "unit.status" => ClientMessage::UnitStatus(codec::decode(encoding, bytes).map_err(body)?),
        "assignment.ack" => ClientMessage::AssignmentAck(codec::decode(encoding, bytes).map_err(body)?),
        "assignment.decline" => {
            ClientMessage::AssignmentDecline(codec::decode(encoding, bytes).map_err(body)?)
        }
        "unit.emergency" => {
            let e: Emergency = codec::decode(encoding, bytes).map_err(body)?;
            if let Some(loc) = &e.location {
                loc.validate().map_err(checked)?;
            }
            ClientMessage::UnitEmergency(e)
        }
        other => {
            return Err(FrameError::new(
                id,
                ErrorCode::UnknownType,
                format!("unknown type {other:?}"),
            ));
        }
    };
    Ok(Frame {
        id,
        message,
        region: envelope.region,
    })
}

fn check_subscribe(raw: RawSubscribe) -> Result<Subscribe, String> {
    let mut topics = Vec::new();
    for t in &raw.topics {
        let topic = SubTopic::parse(t).ok_or_else(|| format!("unknown topic {t:?}"))?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    if topics.is_empty() {
        return Err("topics must name at least one topic".into());
    }
    if let Some(area) = &raw.area {
        area.validate()?;
    }
    if let Some(a) = &raw.agencies {
        check::agencies(a).map_err(|e| e.to_string())?;
    }
    let regions = match raw.regions {
        None => None,
        Some(list) => {
            let mut regions: Vec<String> = Vec::new();
            for r in list {
                if r.is_empty() || r.len() > 64 {
                    return Err(format!("regions: {r:?} is not a region name"));
                }
                if !regions.contains(&r) {
                    regions.push(r);
                }
            }
            if regions.is_empty() {
                return Err("regions must name at least one region".into());
            }
            Some(regions)
        }
    };
    let since_by_region = raw.since_by_region.unwrap_or_default();
    match &regions {
        None if !since_by_region.is_empty() => {
            return Err("since_by_region needs regions".into());
        }
        Some(_) if raw.since.is_some() => {
            return Err("a subscription with regions resumes with since_by_region, not since".into());
        }
        Some(list) => {
            if let Some(r) = since_by_region.keys().find(|r| !list.contains(r)) {
                return Err(format!("since_by_region names {r:?}, which regions does not"));
            }
        }
        None => {}
    }
    Ok(Subscribe {
        topics,
        area: raw.area,
        agencies: raw.agencies,
        since: raw.since,
        regions,
        since_by_region,
    })
}

/// An `incident.create` that gave an `address` and no `location`; checked in
/// every other way. Only [`Unplaced::place`] turns it into a command, so the
/// stand-in location it carries meanwhile never reaches the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Unplaced {
    incident: NewIncident,
}

impl Unplaced {
    /// The address to look up (never empty).
    pub fn address(&self) -> &str {
        self.incident.address.as_deref().unwrap_or_default()
    }

    /// The incident, at the location the gazetteer found for its address.
    pub fn place(mut self, at: Location) -> NewIncident {
        self.incident.location = at;
        self.incident
    }
}

fn check_create(raw: RawCreate) -> Result<NewIncident, CoreError> {
    let priority = check::priority(raw.priority)?;
    let location = match raw.location {
        Some(l) => l,
        // Checked and replaced by `Unplaced::place` before the engine sees it.
        None if raw.address.as_deref().is_some_and(|a| !a.trim().is_empty()) => {
            Location { lat: 0.0, lon: 0.0 }
        }
        None => {
            return Err(CoreError::BadRequest(
                "missing `location` (or an `address` for the gazetteer to place)".into(),
            ));
        }
    };
    location.validate()?;
    check::category(&raw.category)?;
    let units_needed = check::units_needed(raw.units_needed.unwrap_or(1))?;
    // What the dispatcher said wins over a run card's plan.
    let given = Given {
        units_needed: raw.units_needed.is_some(),
        required: raw.required.is_some(),
    };
    let new = NewIncident {
        category: raw.category,
        priority,
        location,
        address: raw.address,
        description: raw.description,
        source: raw
            .source
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "call".into()),
        key: raw.key.filter(|k| !k.is_empty()),
        units_needed,
        required: raw.required.unwrap_or_default(),
        dispatch: raw.dispatch.unwrap_or_default(),
        reporter: None,
        // Bounded against the clock by the engine (`check::received_time`).
        received_ms: raw.received_ms,
        agencies: raw.agencies,
        given,
    };
    // Every other bound (string lengths, key, capabilities) is core's.
    new.validate()?;
    Ok(new)
}

fn check_update(raw: &RawUpdate) -> Result<IncidentPatch, CoreError> {
    let priority = raw.priority.map(check::priority).transpose()?;
    let patch = IncidentPatch {
        category: raw.category.clone(),
        priority,
        location: raw.location,
        address: raw.address.clone(),
        description: raw.description.clone(),
    };
    patch.validate()?;
    Ok(patch)
}

fn check_recommend(raw: RawRecommend) -> Result<RecommendQuery, CoreError> {
    let count = raw.count.map_or(Ok(DEFAULT_RECOMMEND), check::recommend_count)?;
    if let Some(loc) = &raw.location {
        loc.validate()?;
    }
    let one_of = |msg: &str| Err(CoreError::BadRequest(msg.into()));
    let target = match (raw.incident_id, raw.location) {
        (Some(id), None) => RecommendTarget::Incident(id),
        (None, Some(loc)) => RecommendTarget::Location(loc),
        (None, None) => return one_of("give incident_id or location"),
        (Some(_), Some(_)) => return one_of("give incident_id or location, not both"),
    };
    if let Some(a) = &raw.agencies {
        check::agencies(a)?;
    }
    Ok(RecommendQuery {
        target,
        count,
        required: raw.required,
        agencies: raw.agencies,
    })
}

fn check_position(raw: RawPosition) -> Result<Position, CoreError> {
    let fix = PositionFix {
        location: Location {
            lat: raw.lat,
            lon: raw.lon,
        },
        heading: raw.heading,
        speed: raw.speed,
        accuracy: raw.accuracy,
        at_ms: raw.at_ms,
    };
    fix.validate()?;
    Ok(Position {
        unit_id: raw.unit_id,
        fix,
    })
}

/// The body of `POST /v1/reports` (section 8).
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// Idempotency key (required).
    pub key: String,
    /// Category.
    pub category: String,
    /// Priority (default 3).
    #[serde(default)]
    pub priority: Option<i64>,
    /// Where.
    pub location: Location,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Street address.
    #[serde(default)]
    pub address: Option<String>,
    /// Who reported it.
    #[serde(default)]
    pub reporter: Option<Reporter>,
}

impl Report {
    /// Checks the report and turns it into an auto-dispatched `app` incident.
    pub fn into_new_incident(self) -> Result<NewIncident, String> {
        if self.key.is_empty() {
            return Err("key must not be empty".into());
        }
        let raw = RawCreate {
            category: self.category,
            priority: self.priority.unwrap_or(3),
            location: Some(self.location),
            address: self.address,
            description: self.description,
            source: Some("app".into()),
            key: Some(self.key),
            units_needed: None,
            required: None,
            dispatch: None,
            // The gateway's own receipt time is set by the HTTP handler.
            received_ms: None,
            agencies: None,
        };
        // Personal data stays in its own field, never in `description`, so the
        // hub can keep it from units not on the incident.
        let mut new = check_create(raw).map_err(|e| e.to_string())?;
        if let Some(r) = self.reporter {
            check::reporter(&r).map_err(|e| e.to_string())?;
            new.reporter = Some(r).filter(|r| !r.is_empty());
        }
        Ok(new)
    }
}

/// Parses and checks a `POST /v1/reports` body (JSON) into the incident it
/// creates. The HTTP handler calls exactly this, and so does the fuzz target
/// `report_body`: any bytes give an incident or a message, never a panic.
pub fn parse_report(body: &[u8]) -> Result<NewIncident, String> {
    let report: Report = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    report.into_new_incident()
}
