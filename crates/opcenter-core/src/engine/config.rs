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
    /// Response plans (`[[run_cards]]`), in config order.
    pub run_cards: Vec<RunCard>,
    /// `dispatch.local_offset_min`: local time minus UTC, for run cards' `hours`.
    pub local_offset_min: i64,
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
            run_cards: Vec::new(),
            local_offset_min: 0,
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
    /// Its shift (`"08:00-20:00"`, local time = UTC + `dispatch.local_offset_min`;
    /// `"20:00-08:00"` runs over midnight): the engine puts it on duty when the
    /// window opens and off duty when it closes (see [`DutyWindow`]).
    #[serde(default)]
    pub on_duty: Option<DutyWindow>,
}

/// A daily shift window `[from, to)` in local minutes of the day; `from > to`
/// wraps midnight; `from == to` is round the clock. Written `"HH:MM-HH:MM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutyWindow {
    /// First minute of the shift (0..1440).
    pub from_min: u16,
    /// First minute after it (0..1440).
    pub to_min: u16,
}

/// Minutes in a day.
const DAY_MIN: i64 = 24 * 60;

impl DutyWindow {
    /// Parses `"HH:MM-HH:MM"`.
    pub fn parse(text: &str) -> Option<DutyWindow> {
        let (a, b) = text.trim().split_once('-')?;
        Some(DutyWindow {
            from_min: hhmm(a)?,
            to_min: hhmm(b)?,
        })
    }

    /// True when local minute of the day `minute` lies in the window.
    pub fn contains(self, minute: u16) -> bool {
        let (from, to) = (self.from_min, self.to_min);
        if from == to {
            true
        } else if from < to {
            (from..to).contains(&minute)
        } else {
            minute >= from || minute < to
        }
    }

    /// The local minute of the day at `now_ms` (UTC ms) with local = UTC +
    /// `offset_min`.
    pub fn local_minute(now_ms: i64, offset_min: i64) -> u16 {
        let m = now_ms
            .div_euclid(60_000)
            .saturating_add(offset_min)
            .rem_euclid(DAY_MIN);
        u16::try_from(m).unwrap_or(0)
    }
}

impl std::fmt::Display for DutyWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", t(self.from_min), t(self.to_min))
    }
}

/// `HH:MM` as minutes of the day.
fn hhmm(text: &str) -> Option<u16> {
    let (h, m) = text.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Serialize for DutyWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DutyWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DutyWindow::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("on_duty {text:?} is not a window \"HH:MM-HH:MM\""))
        })
    }
}

/// A response plan: when an incident matches the trigger (every condition set),
/// it is sent what the plan says, unless the dispatcher said otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCard {
    /// Its name (the incident's `run_card`).
    pub name: String,
    /// Trigger: this category.
    #[serde(default)]
    pub category: Option<String>,
    /// Trigger: this priority.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Trigger: the incident lies in this district.
    #[serde(default)]
    pub district: Option<String>,
    /// Trigger: the incident lies in this beat.
    #[serde(default)]
    pub beat: Option<String>,
    /// Trigger: local hour of creation in `[from, to)` (wraps midnight when
    /// from > to), local = UTC + `dispatch.local_offset_min`.
    #[serde(default)]
    pub hours: Option<[u8; 2]>,
    /// Plan: units to send.
    #[serde(default)]
    pub units_needed: Option<u32>,
    /// Plan: capabilities each unit must have.
    #[serde(default)]
    pub required: Option<Vec<Capability>>,
    /// Plan: agencies to take units from.
    #[serde(default)]
    pub agencies: Option<Vec<String>>,
    /// Plan: only units of these kinds.
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
}

impl RunCard {
    /// How specific the trigger is: one point per condition, two for a beat
    /// (a beat is narrower than a district). The most specific matching card
    /// wins; among equals, the first in config order.
    pub fn specificity(&self) -> u32 {
        u32::from(self.category.is_some())
            + u32::from(self.priority.is_some())
            + u32::from(self.district.is_some())
            + 2 * u32::from(self.beat.is_some())
            + u32::from(self.hours.is_some())
    }

    /// True when every condition set holds.
    pub fn matches(
        &self,
        category: &str,
        priority: u8,
        district: Option<&str>,
        beat: Option<&str>,
        local_hour: u8,
    ) -> bool {
        self.category.as_deref().is_none_or(|c| c == category)
            && self.priority.is_none_or(|p| p == priority)
            && self.district.as_deref().is_none_or(|d| Some(d) == district)
            && self.beat.as_deref().is_none_or(|b| Some(b) == beat)
            && self.hours.is_none_or(|[from, to]| {
                if from <= to {
                    (from..to).contains(&local_hour)
                } else {
                    local_hour >= from || local_hour < to
                }
            })
    }
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
