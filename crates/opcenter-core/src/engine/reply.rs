//! What the engine hands back: the result of a command ([`Applied`]: events,
//! the issuing client's [`Reply`], a live [`PositionItem`]) and of a query
//! ([`Recommendation`] of [`Candidate`]s, with a [`Shortfall`] when short).
//! Plain data: the hub encodes it, the engine never reads it back.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::model::{Incident, Unit, UnitId};

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
// The variants are whole objects by design (the hub encodes them once); boxing
// would change the public shape the hub is written against.
#[allow(clippy::large_enum_variant)]
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

/// Why fewer candidates than asked were found: the filter that brought the list
/// down to what was found. The filters apply in the order of the variants; the
/// reason is the first after which no more units remain than were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    /// Too few units are available (and not excluded: decliners, the officer in
    /// an emergency).
    NoUnitsAvailable,
    /// Too few available units have every required capability.
    MissingCapability,
    /// Too few of those have a fresh position (a missing one counts as stale).
    PositionsStale,
    /// Too few of those lie within `max_distance_m`.
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
