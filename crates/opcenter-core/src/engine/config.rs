//! The engine's configuration: the `dispatch.*` tunables and the roster of units
//! known before any hello. Plain data, checked by the hub's settings loader; the
//! engine reads it and never changes it.

use serde::{Deserialize, Serialize};

use crate::model::{Capability, Location, UnitId, UnitStatus};
use crate::zones::Zone;

/// The agency of the built-in defaults.
pub const DEFAULT_AGENCY: &str = "police";

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
    /// `dispatch.agencies`: the agencies units may serve. The first is the home
    /// agency of a unit whose roster entry and token name none. Never empty.
    pub agencies: Vec<String>,
    /// `dispatch.default_agencies`: whose units an incident created without
    /// `agencies` may get.
    pub default_agencies: Vec<String>,
    /// `dispatch.post_radius_m`: a post (kind `district_post`/`modular_post`)
    /// is auto-dispatched and recommended only within this distance.
    pub post_radius_m: f64,
    /// `dispatch.beat_preference_m`: a unit assigned to the incident's beat is
    /// sent unless another eligible unit is more than this much closer.
    pub beat_preference_m: f64,
    /// Districts and beats (`[[zones]]`), in config order.
    pub zones: Vec<Zone>,
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
            agencies: vec![DEFAULT_AGENCY.to_string()],
            default_agencies: vec![DEFAULT_AGENCY.to_string()],
            post_radius_m: 500.0,
            beat_preference_m: 1_500.0,
            zones: Vec::new(),
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
    /// False for a post reached by radio or phone (no tablet): never
    /// auto-dispatched or recommended; a dispatcher assigns it (default true).
    #[serde(default = "yes")]
    pub tablet: bool,
    /// The agency it serves (default: the first of `dispatch.agencies`).
    #[serde(default)]
    pub agency: Option<String>,
    /// A post's number.
    #[serde(default)]
    pub post: Option<u32>,
    /// The district it belongs to.
    #[serde(default)]
    pub district: Option<String>,
    /// The beat it patrols.
    #[serde(default)]
    pub beat: Option<String>,
}

impl EngineConfig {
    /// The agency of a unit that names none.
    pub fn home_agency(&self) -> &str {
        self.agencies.first().map_or(DEFAULT_AGENCY, String::as_str)
    }

    /// True when `agency` is one of `dispatch.agencies`.
    pub fn knows_agency(&self, agency: &str) -> bool {
        self.agencies.iter().any(|a| a == agency)
    }
}

fn yes() -> bool {
    true
}
