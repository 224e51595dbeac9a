//! Per-unit deadlines in due order, so Tick costs O(expired), not O(fleet). The
//! engine keeps two: unacknowledged assignments (`ack_deadline_ms`) and offline
//! units whose grace runs out (`offline_since_ms + offline_grace_ms`).
//!
//! Invariant: a unit is in the set at most once, at the time `due[id]` says. The
//! engine mirrors that time on the unit it belongs to and re-sets it (or clears
//! it) on every change; Tick takes what is due and re-checks the unit.
//!
//! Owns: the ordered set and each unit's entry. Must never: decide what an expiry
//! means (the engine's tick does).

use std::collections::{BTreeSet, HashMap};

use crate::model::UnitId;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    by_time: BTreeSet<(i64, UnitId)>,
    due: HashMap<UnitId, i64>,
}

impl Deadlines {
    /// Sets (`Some`) or clears (`None`) the deadline of `unit`.
    pub(super) fn set(&mut self, unit: &str, at: Option<i64>) {
        if let Some(old) = self.due.remove(unit) {
            self.by_time.remove(&(old, unit.to_string()));
        }
        if let Some(t) = at {
            self.by_time.insert((t, unit.to_string()));
            self.due.insert(unit.to_string(), t);
        }
    }

    /// Takes the earliest deadline at or before `now_ms` out of the set.
    pub(super) fn pop_due(&mut self, now_ms: i64) -> Option<(i64, UnitId)> {
        let (t, _) = self.by_time.first()?;
        if *t > now_ms {
            return None;
        }
        let (t, unit) = self.by_time.pop_first()?;
        self.due.remove(&unit);
        Some((t, unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_due_order_and_a_reset_replaces_the_old_time() {
        let mut d = Deadlines::default();
        d.set("A", Some(30));
        d.set("B", Some(10));
        d.set("A", Some(5));
        d.set("C", Some(20));
        d.set("C", None);
        assert_eq!(d.pop_due(4), None);
        assert_eq!(d.pop_due(100), Some((5, "A".into())));
        assert_eq!(d.pop_due(100), Some((10, "B".into())));
        assert_eq!(d.pop_due(100), None);
    }
}
