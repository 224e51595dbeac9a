//! The shape rules of commands: ranges and limits that hold whatever the state.
//! The wire decoder (opcenter-proto) and the engine both call these, so a rule,
//! its type and its message exist once.
//!
//! Owns: the limits (`MAX_UNITS_NEEDED`, `MAX_RECOMMEND`, …) and the checks that
//! turn a wire integer into the engine's narrower type. Must never: look at
//! engine state (unknown ids, permissions are the engine's).

use crate::command::{IncidentPatch, NewIncident, PositionFix};
use crate::error::CoreError;
use crate::model::{Capability, Reporter};

/// The most urgent priority.
pub const PRIORITY_MIN: u8 = 1;
/// The least urgent priority.
pub const PRIORITY_MAX: u8 = 5;
/// The most units one incident may ask for.
pub const MAX_UNITS_NEEDED: u32 = 50;
/// The most candidates `incident.recommend` returns.
pub const MAX_RECOMMEND: usize = 100;
/// How many candidates `incident.recommend` returns when the client gives no `count`.
pub const DEFAULT_RECOMMEND: usize = 3;
/// The most capabilities a command may require.
pub const MAX_REQUIRED: usize = 32;
/// The longest category, callsign, unit kind or capability, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 64;
/// The longest street address, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 512;
/// The longest incident description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// The longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// The longest id (unit id, token `sub`), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The longest reporter name or phone (`POST /v1/reports`), in bytes.
pub const MAX_REPORTER_BYTES: usize = 128;
/// The most capabilities a unit (token `caps`, roster) may have.
pub const MAX_CAPABILITIES: usize = 32;

/// The earliest position time accepted: 2020-01-01T00:00:00Z, in ms. Earlier is
/// a tablet with a reset clock (or a hostile number), never a real fix.
pub const MIN_FIX_AT_MS: i64 = 1_577_836_800_000;

/// A fix's `at_ms` against the server's `now_ms`: not before [`MIN_FIX_AT_MS`],
/// not more than `max_skew_ms` ahead.
pub fn fix_time(at_ms: i64, now_ms: i64, max_skew_ms: i64) -> Result<(), CoreError> {
    if at_ms < MIN_FIX_AT_MS {
        return Err(bad(format!(
            "fix at_ms {at_ms} is before 2020-01-01 ({MIN_FIX_AT_MS})"
        )));
    }
    if at_ms > now_ms.saturating_add(max_skew_ms) {
        return Err(bad(format!(
            "fix at_ms {at_ms} is more than {max_skew_ms} ms in the future"
        )));
    }
    Ok(())
}

/// How long before its creation an incident may say it was received: a form
/// left open longer than a day is a console with a wrong clock, not a call.
pub const MAX_RECEIVED_AGE_MS: i64 = 24 * 3600 * 1000;

/// `received_ms` of `incident.create` against the server's `now_ms`: not more
/// than [`MAX_RECEIVED_AGE_MS`] before it, not more than `max_skew_ms` after.
pub fn received_time(received_ms: i64, now_ms: i64, max_skew_ms: i64) -> Result<(), CoreError> {
    if received_ms < now_ms.saturating_sub(MAX_RECEIVED_AGE_MS) {
        return Err(bad(format!(
            "received_ms {received_ms} is more than 24 h before now ({now_ms})"
        )));
    }
    if received_ms > now_ms.saturating_add(max_skew_ms) {
        return Err(bad(format!(
            "received_ms {received_ms} is more than {max_skew_ms} ms in the future"
        )));
    }
    Ok(())
}

fn bad(msg: String) -> CoreError {
    CoreError::BadRequest(msg)
}

/// A priority as the wire gives it (any integer) → the engine's `u8`, 1..=5.
pub fn priority(p: i64) -> Result<u8, CoreError> {
    match u8::try_from(p) {
        Ok(v) if (PRIORITY_MIN..=PRIORITY_MAX).contains(&v) => Ok(v),
        _ => Err(bad(format!("priority {p} out of {PRIORITY_MIN}..{PRIORITY_MAX}"))),
    }
}

/// `units_needed` as the wire gives it → the engine's `u32`, 1..=[`MAX_UNITS_NEEDED`].
pub fn units_needed(n: i64) -> Result<u32, CoreError> {
    match u32::try_from(n) {
        Ok(v) if (1..=MAX_UNITS_NEEDED).contains(&v) => Ok(v),
        _ => Err(bad(format!("units_needed {n} out of 1..{MAX_UNITS_NEEDED}"))),
    }
}

/// `incident.recommend`'s `count` as the wire gives it → 1..=[`MAX_RECOMMEND`].
pub fn recommend_count(n: i64) -> Result<usize, CoreError> {
    match usize::try_from(n) {
        Ok(v) if (1..=MAX_RECOMMEND).contains(&v) => Ok(v),
        _ => Err(bad(format!("count {n} out of 1..{MAX_RECOMMEND}"))),
    }
}

/// A string field no longer than `max` bytes (`what` names it in the message).
pub fn at_most(what: &str, s: &str, max: usize) -> Result<(), CoreError> {
    if s.len() > max {
        Err(bad(format!("{what} is {} bytes, at most {max}", s.len())))
    } else {
        Ok(())
    }
}

/// An optional string field no longer than `max` bytes.
pub fn opt_at_most(what: &str, s: Option<&str>, max: usize) -> Result<(), CoreError> {
    s.map_or(Ok(()), |s| at_most(what, s, max))
}

/// A category must say something, in at most [`MAX_NAME_BYTES`].
pub fn category(c: &str) -> Result<(), CoreError> {
    if c.trim().is_empty() {
        return Err(bad("category must not be empty".into()));
    }
    at_most("category", c, MAX_NAME_BYTES)
}

/// Required capabilities: at most [`MAX_REQUIRED`], none empty or over [`MAX_NAME_BYTES`].
pub fn capabilities(caps: &[Capability]) -> Result<(), CoreError> {
    if caps.len() > MAX_REQUIRED {
        return Err(bad(format!("at most {MAX_REQUIRED} required capabilities")));
    }
    capability_names(caps)
}

fn capability_names(caps: &[Capability]) -> Result<(), CoreError> {
    if caps.iter().any(|c| c.is_empty()) {
        return Err(bad("a capability must not be empty".into()));
    }
    caps.iter()
        .try_for_each(|c| at_most("capability", c, MAX_NAME_BYTES))
}

/// A unit's identity as a token or the roster gives it: id 1..=[`MAX_ID_BYTES`],
/// callsign and kind ≤ [`MAX_NAME_BYTES`], at most [`MAX_CAPABILITIES`] capabilities
/// of ≤ [`MAX_NAME_BYTES`] each.
pub fn unit_identity(
    id: &str,
    callsign: Option<&str>,
    kind: Option<&str>,
    caps: &[Capability],
) -> Result<(), CoreError> {
    if id.trim().is_empty() || id.len() > MAX_ID_BYTES {
        return Err(bad(format!("unit id must be 1..={MAX_ID_BYTES} bytes")));
    }
    opt_at_most("callsign", callsign, MAX_NAME_BYTES)?;
    opt_at_most("kind", kind, MAX_NAME_BYTES)?;
    if caps.len() > MAX_CAPABILITIES {
        return Err(bad(format!("at most {MAX_CAPABILITIES} capabilities")));
    }
    capability_names(caps)
}

/// The reporter of a citizen's report: name and phone ≤ [`MAX_REPORTER_BYTES`].
pub fn reporter(r: &Reporter) -> Result<(), CoreError> {
    opt_at_most("reporter.name", r.name.as_deref(), MAX_REPORTER_BYTES)?;
    opt_at_most("reporter.phone", r.phone.as_deref(), MAX_REPORTER_BYTES)
}

/// The most agencies a command may name.
pub const MAX_AGENCIES: usize = 16;

/// An `agencies` list as a command gives it: 1..=[`MAX_AGENCIES`] names, none
/// empty or over [`MAX_NAME_BYTES`]. Whether each is configured is the engine's.
pub fn agencies(list: &[String]) -> Result<(), CoreError> {
    if list.is_empty() || list.len() > MAX_AGENCIES {
        return Err(bad(format!("agencies must name 1..={MAX_AGENCIES} agencies")));
    }
    for a in list {
        if a.is_empty() {
            return Err(bad("an agency must not be empty".into()));
        }
        at_most("agency", a, MAX_NAME_BYTES)?;
    }
    Ok(())
}

/// Address and description within their bounds.
fn free_text(address: Option<&str>, description: Option<&str>) -> Result<(), CoreError> {
    opt_at_most("address", address, MAX_ADDRESS_BYTES)?;
    opt_at_most("description", description, MAX_DESCRIPTION_BYTES)
}

impl NewIncident {
    /// Every shape rule of `incident.create`: category, priority, location,
    /// `units_needed`, `required`, a non-empty `key`.
    pub fn validate(&self) -> Result<(), CoreError> {
        category(&self.category)?;
        priority(i64::from(self.priority))?;
        self.location.validate()?;
        units_needed(i64::from(self.units_needed))?;
        capabilities(&self.required)?;
        free_text(self.address.as_deref(), self.description.as_deref())?;
        if self.key.as_deref().is_some_and(str::is_empty) {
            return Err(bad("key must not be empty".into()));
        }
        opt_at_most("key", self.key.as_deref(), MAX_KEY_BYTES)?;
        at_most("source", &self.source, MAX_NAME_BYTES)?;
        if let Some(a) = &self.agencies {
            agencies(a)?;
        }
        self.reporter.as_ref().map_or(Ok(()), reporter)
    }
}

impl IncidentPatch {
    /// Every shape rule of `incident.update`: the fields it sets are as
    /// `incident.create` would accept them.
    pub fn validate(&self) -> Result<(), CoreError> {
        if let Some(c) = &self.category {
            category(c)?;
        }
        if let Some(p) = self.priority {
            priority(i64::from(p))?;
        }
        if let Some(l) = &self.location {
            l.validate()?;
        }
        free_text(self.address.as_deref(), self.description.as_deref())
    }
}

impl PositionFix {
    /// Every shape rule of `unit.position`: a valid location; heading, speed and
    /// accuracy finite and not negative; heading below 360.
    pub fn validate(&self) -> Result<(), CoreError> {
        self.location.validate()?;
        for (name, v) in [
            ("heading", self.heading),
            ("speed", self.speed),
            ("accuracy", self.accuracy),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(bad(format!("{name} must be a finite, non-negative number")));
            }
        }
        if self.heading.is_some_and(|h| h >= 360.0) {
            return Err(bad("heading must be in [0, 360)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_integers_outside_the_engine_types_are_refused_not_truncated() {
        // 257 would wrap to 1 in a u8, 2^32 + 1 to 1 in a u32.
        assert!(priority(257).is_err());
        assert!(units_needed((1 << 32) + 1).is_err());
        assert!(recommend_count(-1).is_err());
        assert_eq!(priority(5), Ok(5));
        assert_eq!(units_needed(MAX_UNITS_NEEDED as i64), Ok(MAX_UNITS_NEEDED));
        assert_eq!(recommend_count(MAX_RECOMMEND as i64), Ok(MAX_RECOMMEND));
        assert!(priority(0).is_err() && units_needed(0).is_err() && recommend_count(0).is_err());
    }

    #[test]
    fn every_string_field_is_bounded_at_its_limit() {
        let loc = crate::model::Location { lat: 51.0, lon: 51.0 };
        let at = |n: usize| "x".repeat(n);
        let ok = NewIncident::call(at(MAX_NAME_BYTES), 3, loc);
        assert_eq!(ok.validate(), Ok(()));
        let mut n = ok.clone();
        n.category = at(MAX_NAME_BYTES + 1);
        assert!(matches!(n.validate(), Err(CoreError::BadRequest(m)) if m.contains("category")));
        for (field, max) in [
            ("address", MAX_ADDRESS_BYTES),
            ("description", MAX_DESCRIPTION_BYTES),
            ("key", MAX_KEY_BYTES),
        ] {
            for (len, good) in [(max, true), (max + 1, false)] {
                let mut n = ok.clone();
                match field {
                    "address" => n.address = Some(at(len)),
                    "description" => n.description = Some(at(len)),
                    _ => n.key = Some(at(len)),
                }
                assert_eq!(n.validate().is_ok(), good, "{field} of {len} bytes");
            }
        }
        let mut n = ok.clone();
        n.required = vec![at(MAX_NAME_BYTES + 1)];
        assert!(n.validate().is_err());
        let patch = IncidentPatch {
            description: Some(at(MAX_DESCRIPTION_BYTES + 1)),
            ..IncidentPatch::default()
        };
        assert!(patch.validate().is_err());
        assert!(unit_identity("P-1", Some(&at(64)), Some("car"), &[]).is_ok());
        assert!(unit_identity("P-1", Some(&at(65)), None, &[]).is_err());
        assert!(unit_identity("P-1", None, Some(&at(65)), &[]).is_err());
        assert!(unit_identity(&at(129), None, None, &[]).is_err());
        assert!(unit_identity("P-1", None, None, &vec!["k9".into(); MAX_CAPABILITIES + 1]).is_err());
    }
}
