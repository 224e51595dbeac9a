//! opcenter-core: the dispatch engine of opcenter, pure and deterministic.
//!
//! It has no networking, no tokio, no clock and no files: every command arrives
//! with the time it should be applied at, so tests and journal replay run the
//! exact same code the server runs.
//!
//! # Layout
//! - [`model`]: incidents, units, locations and their statuses (wire names).
//! - [`geo`]: haversine metres and the unit-sphere embedding.
//! - [`index`]: the rstar index of assignable units (nearest eligible unit).
//! - [`command`]: commands and queries the engine accepts.
//! - [`check`]: their shape rules and limits, shared with the wire decoder.
//! - [`event`]: the durable changes it returns.
//! - [`engine`]: the rules of `shared/PROTOCOL.md` section 5, with the state it
//!   derives (pending queue, duplicate index) and its config and reply types.
//! - [`gazetteer`]: addresses (street, house, building) and the ranked geocode.
//! - [`zones`]: districts and beats, point-in-polygon over an R-tree of boxes.
//! - [`error`]: why a command was refused.
//! - [`report`]: the response-time report, folded from incident events.
#![deny(missing_docs)]

pub mod check;
pub mod command;
pub mod engine;
pub mod error;
pub mod event;
pub mod gazetteer;
pub mod geo;
pub mod index;
pub mod model;
pub mod report;
pub mod zones;

pub use check::{MAX_RECOMMEND, MAX_UNITS_NEEDED, MIN_FIX_AT_MS};
pub use command::{
    Actor, ActorKind, Command, Given, IncidentPatch, NewIncident, PositionFix, RecommendQuery,
    RecommendTarget, UnitProfile,
};
pub use engine::{
    Applied, Candidate, DutyWindow, Engine, EngineConfig, EngineSnapshot, KeyRecord, PositionItem,
    Recommendation, Reply, RosterUnit, RunCard, Shortfall,
};
pub use error::CoreError;
pub use event::{Change, Event, EventBody, Topic};
pub use model::{
    Capability, DispatchMode, Incident, IncidentId, IncidentStatus, KeyScope, Location, MAX_NOTE_BYTES, Note,
    Reporter, Selection, Unit, UnitId, UnitStatus,
};
