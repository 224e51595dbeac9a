//! The engine's configuration: the `dispatch.*` tunables and the roster of units
//! known before any hello. Plain data, checked by the hub's settings loader; the
//! engine reads it and never changes it.

use serde::{Deserialize, Serialize};

use crate::model::{Capability, Location, UnitId, UnitStatus};

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
    /// `dispatch.offline_grace_s` in ms: a unit whose last session ended longer
    /// ago than this is not eligible, and its unacknowledged offer moves on.
    pub offline_grace_ms: i64,
    /// `dispatch.index_slack_m`: a unit is re-indexed only when it moves further
    /// than this from its indexed point (queries widen by it and re-rank exactly).
    pub index_slack_m: f64,
    /// `dispatch.max_notes`: notes one incident may hold; the next is `too_large`.
    pub max_notes: usize,
    /// `storage.retain_closed_h` in ms: a closed incident leaves memory this long
    /// after it closed.
    pub retain_closed_ms: i64,
    /// `dispatch.key_ttl_h` in ms: an idempotency key is forgotten this long
    /// after its create.
    pub key_ttl_ms: i64,
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
            offline_grace_ms: 15_000,
            max_notes: 200,
            retain_closed_ms: 24 * 3_600_000,
            key_ttl_ms: 72 * 3_600_000,
            roster: Vec::new(),
        }
    }
}

/// A unit as the config roster describes it. Roster details win over token claims.
///
/// Unknown keys are refused (like every other config section): a mistyped
/// `capabilites` or `tablets` would otherwise silently run with the default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Read strictly (only `lat`, `lon`): the wire `Location` itself stays
    /// lenient, as the protocol fixes it.
    #[serde(default, deserialize_with = "strict_location")]
    pub location: Option<Location>,
    /// False for a post reached by radio or phone (no tablet): never
    /// auto-dispatched or recommended; a dispatcher assigns it (default true).
    #[serde(default = "yes")]
    pub tablet: bool,
}

fn yes() -> bool {
    true
}

/// A roster `location` with nothing but `lat` and `lon`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterLocation {
    lat: f64,
    lon: f64,
}

fn strict_location<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Location>, D::Error> {
    let loc = Option::<RosterLocation>::deserialize(d)?;
    Ok(loc.map(|l| Location {
        lat: l.lat,
        lon: l.lon,
    }))
}
