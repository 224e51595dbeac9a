//! What the engine can be asked to do: commands (they change state and yield
//! events) and queries (read-only). Commands are plain data so they can be queued,
//! logged and replayed in tests; the clock arrives beside them as `now_ms`.
//!
//! Owns: command and query shapes. Must never: validate against state (the engine
//! does that) or know about wire encodings.

use serde::{Deserialize, Serialize};

use crate::model::{Capability, DispatchMode, IncidentId, Location, Reporter, UnitId, UnitStatus};

/// Who issues a command: the engine checks "own incident" rules with it and
/// stamps notes with `sub`. Role gating (which role may send which command) is
/// the hub's job; the engine trusts the kind it is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// The token's `sub` (author of notes).
    pub sub: String,
    /// What the actor is.
    pub kind: ActorKind,
}

/// The kinds of actors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ActorKind {
    /// A dispatcher console: may act on any incident or unit.
    Dispatcher,
    /// A supervisor (read-only on the wire; may query).
    Supervisor,
    /// A patrol tablet, acting for this unit only.
    Unit(UnitId),
    /// The citizens' reporting gateway.
    Intake,
    /// The server itself (timers, recovery, tests).
    System,
}

impl Actor {
    /// The server itself.
    pub fn system() -> Self {
        Actor {
            sub: "system".into(),
            kind: ActorKind::System,
        }
    }
    /// A dispatcher with this `sub`.
    pub fn dispatcher(sub: impl Into<String>) -> Self {
        Actor {
            sub: sub.into(),
            kind: ActorKind::Dispatcher,
        }
    }
    /// The tablet of `unit_id`, with token `sub`.
    pub fn unit(sub: impl Into<String>, unit_id: impl Into<UnitId>) -> Self {
        Actor {
            sub: sub.into(),
            kind: ActorKind::Unit(unit_id.into()),
        }
    }
    /// The unit this actor speaks for, if it is a tablet.
    pub fn unit_id(&self) -> Option<&str> {
        match &self.kind {
            ActorKind::Unit(id) => Some(id),
            _ => None,
        }
    }
}

/// A unit's identity as its token (or the roster) describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitProfile {
    /// Unit id (`unit` claim).
    pub id: UnitId,
    /// `callsign` claim.
    pub callsign: Option<String>,
    /// `kind` claim.
    pub kind: Option<String>,
    /// `caps` claim.
    pub capabilities: Vec<Capability>,
    /// `agency` claim (must be one of `dispatch.agencies`).
    #[serde(default)]
    pub agency: Option<String>,
}

/// The fields of `incident.create` (and `POST /v1/reports`), unchecked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewIncident {
    /// Non-empty category.
    pub category: String,
    /// 1..=5.
    pub priority: u8,
    /// Where.
    pub location: Location,
    /// Street address.
    pub address: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// `call` when the client gave none.
    pub source: String,
    /// Idempotency key: a repeat returns the first incident, unchanged.
    pub key: Option<String>,
    /// ≥ 1.
    pub units_needed: u32,
    /// Capabilities each unit must have.
    pub required: Vec<Capability>,
    /// Auto (default) or manual dispatch.
    pub dispatch: DispatchMode,
    /// The citizen who reported it (`POST /v1/reports` only).
    #[serde(default)]
    pub reporter: Option<Reporter>,
    /// When the call was received (the console opened the form) or the app
    /// report reached the HTTP gateway (ms); `None` means at creation. The
    /// response-time report measures received → created from it.
    #[serde(default)]
    pub received_ms: Option<i64>,
    /// Agencies whose units may be sent; `None` means `dispatch.default_agencies`
    /// (or a run card's).
    #[serde(default)]
    pub agencies: Option<Vec<String>>,
    /// Which of `units_needed` / `required` the client gave: those win over a
    /// run card's plan.
    #[serde(default)]
    pub given: Given,
}

/// Fields of a create the client set explicitly (the rest a run card may fill).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Given {
    /// `units_needed` was in the command.
    pub units_needed: bool,
    /// `required` was in the command.
    pub required: bool,
}

impl NewIncident {
    /// A minimal auto-dispatched phone call, handy in tests and the simulator.
    pub fn call(category: impl Into<String>, priority: u8, location: Location) -> Self {
        NewIncident {
            category: category.into(),
            priority,
            location,
            address: None,
            description: None,
            source: "call".into(),
            key: None,
            units_needed: 1,
            required: Vec::new(),
            dispatch: DispatchMode::Auto,
            reporter: None,
            received_ms: None,
            agencies: None,
            given: Given::default(),
        }
    }
}

/// The fields `incident.update` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IncidentPatch {
    /// New category (non-empty).
    pub category: Option<String>,
    /// New priority (1..=5).
    pub priority: Option<u8>,
    /// New location.
    pub location: Option<Location>,
    /// New address.
    pub address: Option<String>,
    /// New description.
    pub description: Option<String>,
}

/// One GPS fix from a tablet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PositionFix {
    /// Where.
    pub location: Location,
    /// Degrees from north.
    pub heading: Option<f64>,
    /// Metres per second.
    pub speed: Option<f64>,
    /// Accuracy radius in metres.
    pub accuracy: Option<f64>,
    /// When the fix was taken; `None` means "now" (timed on arrival).
    pub at_ms: Option<i64>,
}

/// A state-changing request to the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A tablet said hello: create the unit on first sight (roster details win
    /// over the token's), otherwise leave it as it is.
    RegisterUnit(UnitProfile),
    /// `incident.create`, `POST /v1/reports`.
    CreateIncident(NewIncident),
    /// `incident.update`.
    UpdateIncident {
        /// Which incident.
        incident_id: IncidentId,
        /// What changes.
        patch: IncidentPatch,
    },
    /// `incident.close`.
    CloseIncident {
        /// Which incident.
        incident_id: IncidentId,
        /// How it ended.
        disposition: String,
    },
    /// `incident.assign`: a dispatcher puts a unit on an incident.
    Assign {
        /// Which incident.
        incident_id: IncidentId,
        /// Which unit.
        unit_id: UnitId,
        /// Take the unit off its current incident if it has one.
        force: bool,
    },
    /// `incident.note`.
    Note {
        /// Which incident.
        incident_id: IncidentId,
        /// At most 4096 bytes.
        text: String,
    },
    /// `unit.position` (the actor's own unit, or any for the system).
    Position {
        /// Whose fix.
        unit_id: UnitId,
        /// The fix.
        fix: PositionFix,
    },
    /// `unit.status`.
    SetStatus {
        /// Which unit.
        unit_id: UnitId,
        /// The new status.
        status: UnitStatus,
    },
    /// `assignment.ack`.
    Ack {
        /// The acknowledging unit.
        unit_id: UnitId,
        /// Its incident.
        incident_id: IncidentId,
    },
    /// `assignment.decline`.
    Decline {
        /// The declining unit.
        unit_id: UnitId,
        /// The declined incident.
        incident_id: IncidentId,
        /// Why, as the officer typed it.
        reason: Option<String>,
    },
    /// `unit.emergency` (the panic button).
    Emergency {
        /// The unit in trouble.
        unit_id: UnitId,
        /// Pressed (true) or cleared (false).
        active: bool,
        /// Where; default the unit's last position.
        location: Option<Location>,
    },
    /// The last session of this unit's tablet ended (the hub counts sessions;
    /// a `RegisterUnit` at the next hello brings it back online).
    UnitOffline {
        /// The unit that lost its last session.
        unit_id: UnitId,
    },
    /// Timers: ack timeouts, offline grace running out, positions going stale.
    Tick,
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterUnit(_) => "register_unit",
            Command::CreateIncident(_) => "incident.create",
            Command::UpdateIncident { .. } => "incident.update",
            Command::CloseIncident { .. } => "incident.close",
            Command::Assign { .. } => "incident.assign",
            Command::Note { .. } => "incident.note",
            Command::Position { .. } => "unit.position",
            Command::SetStatus { .. } => "unit.status",
            Command::Ack { .. } => "assignment.ack",
            Command::Decline { .. } => "assignment.decline",
            Command::Emergency { .. } => "unit.emergency",
            Command::UnitOffline { .. } => "unit_offline",
            Command::Tick => "tick",
        }
    }
}

/// What `incident.recommend` asks about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecommendTarget {
    /// An existing incident (its location and `required`; units that declined it
    /// are left out).
    Incident(IncidentId),
    /// A bare location.
    Location(Location),
}

/// `incident.recommend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendQuery {
    /// Incident or location.
    pub target: RecommendTarget,
    /// How many candidates (default 3).
    pub count: usize,
    /// Capabilities; `None` means the incident's own (or none for a location).
    pub required: Option<Vec<Capability>>,
    /// Agencies; `None` means the incident's own (or `dispatch.default_agencies`
    /// for a location).
    #[serde(default)]
    pub agencies: Option<Vec<String>>,
}
