//! The dispatch model: incidents, units, locations and their lifecycles, named
//! exactly as `shared/PROTOCOL.md` section 4 names them. These types serialize to
//! the wire shape directly (serde), so the protocol crate never re-spells them.
//!
//! Owns: data shapes and their local validation. Must never: hold behaviour that
//! needs other objects (that is the engine's), do I/O or read a clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::geo;

/// A unit's id as its token's `unit` claim gives it (e.g. `P-101`).
pub type UnitId = String;
/// An incident's id, made by the engine (e.g. `I-000042`).
pub type IncidentId = String;
/// A capability a unit has and an incident may require (e.g. `k9`, `medic`).
pub type Capability = String;

/// A point on the Earth in degrees (WGS84 treated as a sphere for distances).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
}

impl Location {
    /// Builds a checked location: finite, lat in [-90, 90], lon in [-180, 180].
    pub fn new(lat: f64, lon: f64) -> Result<Self, CoreError> {
        let loc = Location { lat, lon };
        loc.validate()?;
        Ok(loc)
    }

    /// Checks the ranges of a location that arrived unchecked (e.g. deserialized).
    pub fn validate(&self) -> Result<(), CoreError> {
        if !self.lat.is_finite() || !self.lon.is_finite() {
            return Err(CoreError::BadRequest("coordinates must be finite".into()));
        }
        if !(-90.0..=90.0).contains(&self.lat) {
            return Err(CoreError::BadRequest(format!(
                "lat {} out of [-90, 90]",
                self.lat
            )));
        }
        if !(-180.0..=180.0).contains(&self.lon) {
            return Err(CoreError::BadRequest(format!(
                "lon {} out of [-180, 180]",
                self.lon
            )));
        }
        Ok(())
    }

    /// Great-circle distance in metres (haversine, R = 6 371 008.8 m).
    pub fn distance_m(&self, other: &Location) -> f64 {
        geo::haversine_m(*self, *other)
    }
}

/// Where an incident is in its life. `pending → dispatched → en_route → on_scene → closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// No unit assigned yet (or all assignments were declined / timed out).
    Pending,
    /// At least one unit assigned, none has acknowledged.
    Dispatched,
    /// A unit acknowledged and is on its way.
    EnRoute,
    /// A unit reported arrival.
    OnScene,
    /// Closed with a disposition; terminal.
    Closed,
}

impl IncidentStatus {
    /// True for every status but `closed`.
    pub fn is_open(self) -> bool {
        self != IncidentStatus::Closed
    }
}

/// A unit's availability as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    /// Free to take an incident.
    Available,
    /// Assigned an incident, not yet acknowledged.
    Dispatched,
    /// Acknowledged and driving to the scene.
    EnRoute,
    /// At the scene of its incident.
    OnScene,
    /// Occupied with something that is not a dispatched incident.
    Busy,
    /// Not on shift.
    OffDuty,
    /// Did not acknowledge an assignment in time.
    Unresponsive,
}

impl UnitStatus {
    /// Every status, for parsers and tests.
    pub const ALL: [UnitStatus; 7] = [
        UnitStatus::Available,
        UnitStatus::Dispatched,
        UnitStatus::EnRoute,
        UnitStatus::OnScene,
        UnitStatus::Busy,
        UnitStatus::OffDuty,
        UnitStatus::Unresponsive,
    ];

    /// The protocol's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitStatus::Available => "available",
            UnitStatus::Dispatched => "dispatched",
            UnitStatus::EnRoute => "en_route",
            UnitStatus::OnScene => "on_scene",
            UnitStatus::Busy => "busy",
            UnitStatus::OffDuty => "off_duty",
            UnitStatus::Unresponsive => "unresponsive",
        }
    }
}

/// Whether the engine picks units for an incident by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchMode {
    /// The engine assigns the nearest eligible units (default).
    #[default]
    Auto,
    /// Only a dispatcher assigns; never auto-dispatched, not even from the queue.
    Manual,
}

/// Why a unit was put on an incident (`selection` on the incident).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The nearest eligible unit.
    Nearest,
    /// A unit assigned to the incident's beat, preferred over a nearer one
    /// (or it was the nearest as well).
    Beat,
    /// The nearest eligible unit for an incident whose plan a run card made.
    RunCard,
    /// A dispatcher assigned it (`incident.assign`).
    Manual,
}

/// A note on an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// When it was written (ms since the epoch).
    pub at_ms: i64,
    /// The author's token `sub`.
    pub by: String,
    /// The text, at most [`MAX_NOTE_BYTES`] bytes of UTF-8.
    pub text: String,
}

/// The longest note text accepted, in bytes of UTF-8.
pub const MAX_NOTE_BYTES: usize = 4096;

/// The citizen who reported an incident through the app gateway
/// (`POST /v1/reports`). Personal data: the hub sends it to dispatchers,
/// supervisors and the units assigned to the incident, never to other units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reporter {
    /// The name they gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The phone number they gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

impl Reporter {
    /// True when it names nobody (nothing to keep).
    pub fn is_empty(&self) -> bool {
        self.name.as_deref().is_none_or(str::is_empty) && self.phone.as_deref().is_none_or(str::is_empty)
    }
}

/// Whose key space an idempotency key belongs to: the citizens' app gateway and
/// the consoles never see each other's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// `POST /v1/reports`.
    Gateway,
    /// `incident.create` on the WebSocket (dispatcher consoles, the server itself).
    Console,
}

/// An incident as the protocol shows it (section 4), plus the fields we add:
/// `dispatch` (auto or manual) and `declined_by` (units that declined it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Server-made id.
    pub id: IncidentId,
    /// The client's idempotency key, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key space `key` belongs to (set with `key`; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_scope: Option<KeyScope>,
    /// What happened (`theft`, `assault`, `officer_emergency`, …); never empty.
    pub category: String,
    /// 1 (most urgent) ..= 5.
    pub priority: u8,
    /// Where it is in its lifecycle.
    pub status: IncidentStatus,
    /// Where it happened.
    pub location: Location,
    /// Street address as the caller gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Free text from the caller or dispatcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who reported it through the app (our addition; personal data, see [`Reporter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporter: Option<Reporter>,
    /// `call`, `app`, `post`, `patrol`, or another string.
    pub source: String,
    /// Units currently assigned, in assignment order.
    pub units: Vec<UnitId>,
    /// Capabilities every assigned unit must have.
    pub required: Vec<Capability>,
    /// How many units it needs (≥ 1).
    pub units_needed: u32,
    /// How it ended (`cancelled` for a cancelled call); set when closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
    /// Notes, oldest first.
    pub notes: Vec<Note>,
    /// Open incidents of the same category nearby at creation time.
    pub possible_duplicates: Vec<IncidentId>,
    /// Auto or manual dispatch (our addition).
    pub dispatch: DispatchMode,
    /// The agencies whose units auto-dispatch and recommend consider (our
    /// addition; set at creation from `agencies` or `dispatch.default_agencies`).
    /// Empty only on incidents recorded before agencies existed: they take
    /// `dispatch.default_agencies`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agencies: Vec<String>,
    /// The district its location lies in (`[[zones]]`; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub district: Option<String>,
    /// The beat its location lies in (`[[zones]]`; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beat: Option<String>,
    /// Only units of these kinds (a run card's `kinds`; empty: any kind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// The run card whose plan it got, if any (our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_card: Option<String>,
    /// Why each assigned unit was chosen, by unit id (our addition).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selection: BTreeMap<UnitId, Selection>,
    /// Units that declined it; it is never offered to them again (our addition).
    #[serde(default)]
    pub declined_by: Vec<UnitId>,
    /// For an `officer_emergency` incident: the unit whose panic button made it.
    /// It is never dispatched to its own emergency (our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_unit: Option<UnitId>,
    /// When the call or report was received, if before creation (`received_ms`
    /// of `incident.create`, or the HTTP receipt of an app report; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_ms: Option<i64>,
    /// Creation time (ms).
    pub created_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
}

impl Incident {
    /// True unless closed.
    pub fn is_open(&self) -> bool {
        self.status.is_open()
    }
}

/// A patrol unit or a stationary post as the protocol shows it (section 4), plus
/// `heading`, `speed`, `ack_deadline_ms` (when its current assignment times out),
/// and its liveness: `online`, `offline_since_ms`, `tablet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// The unit id from its token (`unit` claim) or the roster.
    pub id: UnitId,
    /// Radio callsign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callsign: Option<String>,
    /// Kind of unit (`car`, `foot`, `post`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// What it can do.
    pub capabilities: Vec<Capability>,
    /// The agency it serves (`police`, `national_guard`, …; our addition): from
    /// the roster, else the token's `agency` claim, else the first of
    /// `dispatch.agencies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    /// A post's number (roster `post`; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<u32>,
    /// The district a post or patrol belongs to (roster `district`; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub district: Option<String>,
    /// The beat it patrols (roster `beat`; our addition): auto-dispatch prefers
    /// it for incidents in that beat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beat: Option<String>,
    /// Its availability.
    pub status: UnitStatus,
    /// Last accepted position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Time of the last accepted position fix (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_ms: Option<i64>,
    /// Degrees clockwise from north, from the last fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Metres per second, from the last fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// The incident it holds (assigned, acknowledged or on scene).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<IncidentId>,
    /// When an unacknowledged assignment times out (ms); set only while `dispatched`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_deadline_ms: Option<i64>,
    /// True while at least one session of its tablet is open.
    #[serde(default)]
    pub online: bool,
    /// When its last session ended (or the server restarted without it); `None`
    /// while online, and for a unit no tablet ever connected for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since_ms: Option<i64>,
    /// False for a roster post reached by radio or phone: never auto-dispatched,
    /// a dispatcher assigns it (shown only when false).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tablet: bool,
    /// Its shift from the roster (`"08:00-20:00"`, local time = UTC +
    /// `dispatch.local_offset_min`; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_duty: Option<String>,
    /// Whether its shift was on at the last shift change the engine applied
    /// (set for units with `on_duty`; our addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_shift: Option<bool>,
    /// Its shift ended while it held an incident: it keeps the incident and
    /// goes off duty when it is closed or the unit is taken off (our addition;
    /// dispatchers are warned).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shift_ended: bool,
}

fn yes() -> bool {
    true
}

// serde's skip_serializing_if hands a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(b: &bool) -> bool {
    *b
}

// serde's skip_serializing_if hands a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl Unit {
    /// A unit that has only an id: off duty, nowhere, offline, with a tablet.
    pub fn new(id: impl Into<UnitId>) -> Self {
        Unit {
            id: id.into(),
            callsign: None,
            kind: None,
            capabilities: Vec::new(),
            agency: None,
            post: None,
            district: None,
            beat: None,
            status: UnitStatus::OffDuty,
            location: None,
            location_ms: None,
            heading: None,
            speed: None,
            incident_id: None,
            ack_deadline_ms: None,
            online: false,
            offline_since_ms: None,
            tablet: true,
            on_duty: None,
            on_shift: None,
            shift_ended: false,
        }
    }

    /// True for a stationary post (kind `district_post` or `modular_post`): it
    /// is auto-dispatched only within `dispatch.post_radius_m`.
    pub fn is_post(&self) -> bool {
        self.kind.as_deref().is_some_and(is_post_kind)
    }

    /// True when it has every capability in `required`.
    pub fn has_all(&self, required: &[Capability]) -> bool {
        required.iter().all(|c| self.capabilities.iter().any(|h| h == c))
    }
}

/// Unit kinds that are stationary posts: officers leave them only for what
/// happens around them (`dispatch.post_radius_m`).
pub const POST_KINDS: [&str; 2] = ["district_post", "modular_post"];

/// True when `kind` is one of [`POST_KINDS`].
pub fn is_post_kind(kind: &str) -> bool {
    POST_KINDS.contains(&kind)
}
