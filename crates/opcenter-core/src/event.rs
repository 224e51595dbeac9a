//! Events: the durable record of every state change. Each carries the whole new
//! state of its object and why it changed, so a client (or recovery) can upsert
//! by id without a state machine of its own. The hub gives each event its global
//! `seq`; the engine does not number them.
//!
//! Owns: event shapes and topic routing. Must never: encode to bytes.

use serde::{Deserialize, Serialize};

use crate::model::{Incident, Unit, UnitId};

/// Why an object changed (`change` on the wire). Clients must accept values they
/// do not know, so adding variants is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Incident created / unit seen for the first time.
    Created,
    /// Fields edited (`incident.update`).
    Updated,
    /// Units assigned (incident), or a unit assigned to an incident (unit).
    Dispatched,
    /// Assignment delivered to a tablet (`assignments` topic).
    Assigned,
    /// A unit acknowledged.
    Acknowledged,
    /// A unit declined.
    Declined,
    /// A unit did not acknowledge in time.
    AckTimeout,
    /// A unit arrived.
    OnScene,
    /// A note was added.
    Noted,
    /// Closed.
    Closed,
    /// A unit's status changed for another reason.
    Status,
    /// An officer pressed (or cleared) the panic button.
    Emergency,
    /// A unit was taken off an incident (forced reassignment, timeout, decline).
    Unassigned,
    /// A unit's tablet opened a session after having none (profile refreshed).
    Online,
    /// A unit's last session ended; or (on the incident) its unacknowledged
    /// offer moved on because it stayed offline past `dispatch.offline_grace_s`.
    Offline,
    /// A unit's profile (callsign, kind, capabilities) changed at a hello.
    Profile,
    /// A unit's roster shift (`on_duty`) began or ended.
    Shift,
}

impl Change {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Dispatched => "dispatched",
            Change::Assigned => "assigned",
            Change::Acknowledged => "acknowledged",
            Change::Declined => "declined",
            Change::AckTimeout => "ack_timeout",
            Change::OnScene => "on_scene",
            Change::Noted => "noted",
            Change::Closed => "closed",
            Change::Status => "status",
            Change::Emergency => "emergency",
            Change::Unassigned => "unassigned",
            Change::Online => "online",
            Change::Offline => "offline",
            Change::Profile => "profile",
            Change::Shift => "shift",
        }
    }
}

/// The topics a client can subscribe to for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Every incident change.
    Incidents,
    /// Every unit change (not positions).
    Units,
    /// One unit's own assignments.
    Assignments,
}

impl Topic {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Incidents => "incidents",
            Topic::Units => "units",
            Topic::Assignments => "assignments",
        }
    }
}

/// The object an event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventBody {
    /// `topic: incidents`.
    Incident(Incident),
    /// `topic: units`.
    Unit(Unit),
    /// `topic: assignments`, for `unit_id`'s tablet only.
    Assignment {
        /// The tablet this is for.
        unit_id: UnitId,
        /// The incident, whole.
        incident: Incident,
    },
}

/// One durable change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Why.
    pub change: Change,
    /// What, whole.
    pub body: EventBody,
}

impl Event {
    /// The topic that carries it.
    pub fn topic(&self) -> Topic {
        match self.body {
            EventBody::Incident(_) => Topic::Incidents,
            EventBody::Unit(_) => Topic::Units,
            EventBody::Assignment { .. } => Topic::Assignments,
        }
    }

    /// For `assignments` events, the unit whose tablet receives it.
    pub fn assignment_unit(&self) -> Option<&str> {
        match &self.body {
            EventBody::Assignment { unit_id, .. } => Some(unit_id),
            _ => None,
        }
    }
}
