//! Retention: what leaves memory so a center that runs for years holds about a
//! day of history, not all of it. A closed incident is retired
//! `storage.retain_closed_h` after it closed (its last change: a closed incident
//! never changes again); idempotency keys expire `dispatch.key_ttl_h` after
//! their create. Both run on `Tick`, with time passed in, at most once a
//! minute of engine time (once a second when `retain_closed_h` is 0). A pass
//! takes the due incidents from the front of the engine's closed set (ordered
//! by when they closed) and the due keys from the front of the key book's
//! expiry order: its cost is what it retires, not what the engine holds (a
//! region with hundreds of thousands of open incidents pays nothing for them).
//! Retiring emits no event: the journal still holds every change, and the hub
//! answers `GET /v1/incidents/{id}` for a retired incident from it.
//!
//! Owns: when an object is old enough to go. Must never: retire an open
//! incident, or a key before its TTL.

use super::Engine;
use crate::model::IncidentId;

/// How often (engine time) retention looks for work.
pub(super) const RETIRE_EVERY_MS: i64 = 60_000;

impl Engine {
    /// Retires closed incidents and expires keys that are old enough at `now_ms`.
    pub(super) fn retire(&mut self, now_ms: i64) {
        let every = RETIRE_EVERY_MS.min(self.config.retain_closed_ms.max(1_000));
        if now_ms.saturating_sub(self.last_retire_ms) < every {
            return;
        }
        self.last_retire_ms = now_ms;
        let cutoff = now_ms.saturating_sub(self.config.retain_closed_ms);
        while let Some((closed_ms, _)) = self.closed.first()
            && *closed_ms <= cutoff
        {
            let Some((_, id)) = self.closed.pop_first() else {
                break;
            };
            // Still closed, and closed that long ago (a later change, were there
            // one, is filed again under its own time).
            let due = self
                .incidents
                .get(&id)
                .is_some_and(|i| !i.is_open() && i.updated_ms <= cutoff);
            if due && let Some(inc) = self.incidents.remove(&id) {
                self.keys.retire(&inc);
                self.retired.push(id);
            }
        }
        self.keys.expire(now_ms.saturating_sub(self.config.key_ttl_ms));
    }

    /// The incidents retired since the last call, so a reader that keeps its own
    /// copy of the incidents (the hub's read model) retires exactly the same ones.
    pub fn take_retired(&mut self) -> Vec<IncidentId> {
        std::mem::take(&mut self.retired)
    }

    /// How many incidents are held in memory (open and recently closed).
    pub fn incidents_held(&self) -> usize {
        self.incidents.len()
    }

    /// How many idempotency keys are alive.
    pub fn keys_held(&self) -> usize {
        self.keys.len()
    }
}
