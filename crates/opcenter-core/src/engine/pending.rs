//! The pending queue: open auto-dispatched incidents still short of units, in the
//! order they are served (priority 1 before 2, then older before newer, then
//! creation order).
//!
//! Invariant: an incident is queued iff it is open, `dispatch: auto` and has fewer
//! units than it needs; it is queued exactly once, under the key of its current
//! priority, and `keys[id]` is that key. The engine re-files an incident after
//! every change that may touch those facts ([`PendingQueue::file`]).
//!
//! Owns: the ordered set and the key each incident is filed under. Must never:
//! decide eligibility of a unit (the engine walks the queue with its own rule).

use std::collections::BTreeSet;
use std::ops::Bound::{Excluded, Unbounded};

use crate::model::{DispatchMode, Incident, IncidentId};

/// Where an incident stands in the queue. Field order is the serving order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PendingKey {
    priority: u8,
    created_ms: i64,
    /// The incident number (creation order), then the id itself.
    no: u64,
    id: IncidentId,
}

impl PendingKey {
    /// The incident filed under this key.
    pub(super) fn id(&self) -> &IncidentId {
        &self.id
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct PendingQueue {
    queue: BTreeSet<PendingKey>,
    keys: super::hashed::HashedMap<IncidentId, PendingKey>,
}

impl PendingQueue {
    /// Queues `inc` under its current key when it is short of units, and takes
    /// it out otherwise.
    pub(super) fn file(&mut self, inc: &Incident, no: u64) {
        if let Some(old) = self.keys.remove(&inc.id) {
            self.queue.remove(&old);
        }
        let short = inc.is_open()
            && inc.dispatch == DispatchMode::Auto
            && (inc.units.len() as u32) < inc.units_needed;
        if short {
            let key = PendingKey {
                priority: inc.priority,
                created_ms: inc.created_ms,
                no,
                id: inc.id.clone(),
            };
            self.queue.insert(key.clone());
            self.keys.insert(inc.id.clone(), key);
        }
    }

    /// True when no incident waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The queued incidents in serving order.
    pub(super) fn ids(&self) -> impl Iterator<Item = &IncidentId> {
        self.queue.iter().map(|k| &k.id)
    }

    /// The first key after `after` (from the start when `None`) whose incident
    /// `wanted` accepts: a walk that can resume where the last one stopped even
    /// though dispatching in between changed the queue.
    pub(super) fn next_after(
        &self,
        after: Option<&PendingKey>,
        mut wanted: impl FnMut(&IncidentId) -> bool,
    ) -> Option<PendingKey> {
        let lower = match after {
            Some(k) => Excluded(k),
            None => Unbounded,
        };
        self.queue
            .range::<PendingKey, _>((lower, Unbounded))
            .find(|k| wanted(&k.id))
            .cloned()
    }
}
