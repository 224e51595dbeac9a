//! The dispatch engine: the single owner of incidents, units and the spatial
//! index. `apply(actor, command, now_ms)` validates, mutates and returns the
//! events that describe the change; a refused command returns a [`CoreError`]
//! and leaves state exactly as it was. Time is always an argument.
//!
//! Owns: every rule of `shared/PROTOCOL.md` section 5. Must never: do I/O, read
//! the clock, panic on any input.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::command::{Actor, Command, RecommendQuery};
use crate::error::CoreError;
use crate::event::Event;
use crate::model::{Capability, Incident, IncidentId, Location, Unit, UnitId, UnitStatus};

/// Engine tunables (the `dispatch.*` config keys, in engine units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// `dispatch.ack_timeout_s` in ms.
    pub ack_timeout_ms: i64,
    /// `dispatch.max_position_age_s` in ms.
    pub max_position_age_ms: i64,
    /// `dispatch.max_distance_m`.
    pub max_distance_m: f64,
    /// `dispatch.emergency_units`.
    pub emergency_units: u32,
    /// `dispatch.duplicate_radius_m`.
    pub duplicate_radius_m: f64,
    /// `dispatch.duplicate_window_s` in ms.
    pub duplicate_window_ms: i64,
    /// `dispatch.max_clock_skew_s` in ms: a fix further in the future is refused.
    pub max_clock_skew_ms: i64,
    /// `dispatch.max_speed_mps`: a fix implying a faster move is refused.
    pub max_speed_mps: f64,
    /// `dispatch.index_slack_m`: a unit is re-indexed only when it moves further
    /// than this from its indexed point (queries widen by it and re-rank exactly).
    pub index_slack_m: f64,
    /// Units known before any hello (the config roster).
    pub roster: Vec<RosterUnit>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ack_timeout_ms: 30_000,
            max_position_age_ms: 120_000,
            max_distance_m: 50_000.0,
            emergency_units: 2,
            duplicate_radius_m: 300.0,
            duplicate_window_ms: 600_000,
            max_clock_skew_ms: 30_000,
            max_speed_mps: 100.0,
            index_slack_m: 25.0,
            roster: Vec::new(),
        }
    }
}

/// A unit as the config roster describes it. Roster details win over token claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RosterUnit {
    /// Unit id.
    pub id: UnitId,
    /// Radio callsign.
    pub callsign: Option<String>,
    /// Kind (`car`, `post`, …).
    pub kind: Option<String>,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Status before its first hello (default `off_duty`).
    pub status: Option<UnitStatus>,
    /// A stationary post's fixed location: its position never goes stale.
    pub location: Option<Location>,
}

/// The result of a successful command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Durable changes, in order.
    pub events: Vec<Event>,
    /// What the issuing client's `ok` carries.
    pub reply: Reply,
    /// An accepted position fix for the live feed (positions are not events).
    pub position: Option<PositionItem>,
}

/// What the issuing client's `ok` reply carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Reply {
    /// Nothing extra.
    #[default]
    None,
    /// `incident`.
    Incident(Incident),
    /// `incident` from a create; `new` is false when the idempotency key repeated.
    Created {
        /// The incident (after auto-dispatch ran).
        incident: Incident,
        /// False when `key` matched an earlier create.
        new: bool,
    },
    /// `unit`.
    Unit(Unit),
    /// A tablet's hello: its unit and its open assignment.
    Registered {
        /// The unit.
        unit: Unit,
        /// Its incident, if it holds one.
        incident: Option<Incident>,
    },
}

/// A position for the live feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionItem {
    /// Whose.
    pub unit_id: UnitId,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Degrees from north.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Metres per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// When the fix was taken.
    pub at_ms: i64,
}

/// One `incident.recommend` candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The unit.
    pub unit_id: UnitId,
    /// Great-circle metres to the target.
    pub distance_m: f64,
}

/// Why fewer candidates than asked were found (first that applies, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    /// No unit is available at all.
    NoUnitsAvailable,
    /// Available units lack a required capability.
    MissingCapability,
    /// Suitable units exist but their positions are too old (or missing).
    PositionsStale,
    /// Suitable, fresh units are all beyond `max_distance_m`.
    OutOfRange,
}

/// `incident.recommend`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Nearest first.
    pub candidates: Vec<Candidate>,
    /// Set when fewer than `count` were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<Shortfall>,
}

/// Everything needed to rebuild an engine: what snapshots store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// Every incident, open and closed.
    pub incidents: Vec<Incident>,
    /// Every unit.
    pub units: Vec<Unit>,
    /// The number the next incident id gets.
    pub next_incident_no: u64,
}

/// The dispatch engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    incidents: HashMap<IncidentId, Incident>,
    units: HashMap<UnitId, Unit>,
}

impl Engine {
    /// A new engine with the roster's units in place.
    pub fn new(config: EngineConfig) -> Self {
        let _ = &config;
        unimplemented!("engine work in progress")
    }

    /// Applies one command at time `now_ms`. On error, state is unchanged.
    pub fn apply(&mut self, actor: &Actor, command: Command, now_ms: i64) -> Result<Applied, CoreError> {
        let _ = (actor, command, now_ms);
        unimplemented!("engine work in progress")
    }

    /// `incident.recommend`: same eligibility as auto-dispatch, read-only.
    pub fn recommend(&self, query: &RecommendQuery, now_ms: i64) -> Result<Recommendation, CoreError> {
        let _ = (query, now_ms);
        unimplemented!("engine work in progress")
    }

    /// Rebuilds state from a recorded event (recovery): upserts its object and
    /// derives the indexes (pending queue, keys, spatial index, ack deadlines).
    pub fn restore(&mut self, event: &Event) {
        let _ = event;
        unimplemented!("engine work in progress")
    }

    /// All state needed to rebuild this engine.
    pub fn snapshot(&self) -> EngineSnapshot {
        unimplemented!("engine work in progress")
    }

    /// An engine rebuilt from a snapshot (then `restore` the journal tail).
    pub fn from_snapshot(config: EngineConfig, snapshot: EngineSnapshot) -> Self {
        let _ = (config, snapshot);
        unimplemented!("engine work in progress")
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// An incident by id, open or closed.
    pub fn incident(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }

    /// A unit by id.
    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.units.get(id)
    }

    /// Open incidents, in no particular order.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values().filter(|i| i.is_open())
    }

    /// Every unit, in no particular order.
    pub fn units(&self) -> impl Iterator<Item = &Unit> {
        self.units.values()
    }
}
