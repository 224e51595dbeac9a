//! The citizen's answer: what the 102 app may show about a report it sent with
//! `POST /v1/reports`, by the same idempotency key (`GET /v1/reports/{key}`).
//!
//! The read model folds every incident event into this book: for each incident
//! created through the gateway (key scope `gateway`) it remembers the key, the
//! incident id and the first time the incident reached each step
//! (`received` → `unit_assigned` → `unit_on_the_way` → `unit_on_scene` →
//! `closed`). A key answers until `dispatch.key_ttl_h` after its create, like
//! the engine's key book; after that it is forgotten (404).
//!
//! After a restart the book is rebuilt from the state snapshot (keys, current
//! status) and the newest events the read model keeps: a step that happened
//! before the restart and is no longer in that history has no time (`at_ms`
//! absent), but the status is always the incident's own.
//!
//! Owns: the key → progress map and its expiry. Must never: say anything about
//! officers beyond "a unit" (no unit id, callsign, position or note), nor keep
//! a key past its TTL.

use std::collections::HashMap;
use std::sync::Arc;

use opcenter_core::{Incident, IncidentStatus, KeyRecord, KeyScope};
use serde::Serialize;

/// The steps, in order, as the app sees them.
pub(crate) const STEPS: [&str; 5] = [
    "received",
    "unit_assigned",
    "unit_on_the_way",
    "unit_on_scene",
    "closed",
];

fn step_of(status: IncidentStatus) -> usize {
    match status {
        IncidentStatus::Pending => 0,
        IncidentStatus::Dispatched => 1,
        IncidentStatus::EnRoute => 2,
        IncidentStatus::OnScene => 3,
        IncidentStatus::Closed => 4,
    }
}

/// One report's progress.
#[derive(Debug, Clone)]
struct Progress {
    incident_id: String,
    /// The create (ms): the TTL counts from here.
    at_ms: i64,
    /// The current step.
    step: usize,
    /// When each step was first reached (ms), if known.
    reached: [Option<i64>; 5],
}

/// One step of the answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Step {
    pub(crate) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) at_ms: Option<i64>,
}

/// The body of `GET /v1/reports/{key}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ReportStatus {
    pub(crate) key: String,
    /// The report's reference (the incident id).
    pub(crate) incident_id: String,
    /// The current step.
    pub(crate) status: &'static str,
    /// The steps up to the current one, oldest first.
    pub(crate) steps: Vec<Step>,
}

/// Gateway keys and their reports' progress.
#[derive(Debug, Default)]
pub(crate) struct CitizenBook {
    by_key: HashMap<String, Progress>,
    key_of: HashMap<String, String>,
    ttl_ms: i64,
    last_expire_ms: i64,
}

impl CitizenBook {
    /// A book whose keys live `ttl_ms` (`dispatch.key_ttl_h`) after their create,
    /// started from the engine state's keys and incidents.
    pub(crate) fn new(ttl_ms: i64, keys: &[Arc<KeyRecord>], incidents: &[Arc<Incident>]) -> Self {
        let mut book = CitizenBook {
            ttl_ms,
            ..Default::default()
        };
        for k in keys.iter().filter(|k| k.scope == KeyScope::Gateway) {
            let step = if k.retired.is_some() { 4 } else { 0 };
            let mut reached = [None; 5];
            reached[0] = Some(k.at_ms);
            if let Some(r) = &k.retired {
                reached[4] = Some(r.closed_ms);
            }
            book.key_of.insert(k.incident_id.clone(), k.key.clone());
            book.by_key.insert(
                k.key.clone(),
                Progress {
                    incident_id: k.incident_id.clone(),
                    at_ms: k.at_ms,
                    step,
                    reached,
                },
            );
        }
        for i in incidents {
            book.fold(i);
        }
        book
    }

    /// Takes an incident as an event (or the start state) shows it.
    pub(crate) fn fold(&mut self, inc: &Incident) {
        let key = match (&inc.key, inc.key_scope) {
            (Some(k), Some(KeyScope::Gateway)) => k.clone(),
            _ => match self.key_of.get(&inc.id) {
                Some(k) => k.clone(),
                None => return,
            },
        };
        self.key_of.entry(inc.id.clone()).or_insert_with(|| key.clone());
        let p = self.by_key.entry(key).or_insert_with(|| Progress {
            incident_id: inc.id.clone(),
            at_ms: inc.created_ms,
            step: 0,
            reached: [None; 5],
        });
        if p.incident_id != inc.id {
            return;
        }
        p.reached[0].get_or_insert(inc.received_ms.unwrap_or(inc.created_ms));
        let step = step_of(inc.status);
        p.step = step;
        // Reaching a step passes the ones before it (an assignment acked in the
        // same batch as it was made); those without a time of their own stay without.
        if step > 0 {
            p.reached[step].get_or_insert(inc.updated_ms);
        }
    }

    /// The answer for `key` at `now_ms`; None when unknown or expired.
    pub(crate) fn status(&self, key: &str, now_ms: i64) -> Option<ReportStatus> {
        let p = self.by_key.get(key)?;
        if now_ms.saturating_sub(p.at_ms) >= self.ttl_ms {
            return None;
        }
        Some(ReportStatus {
            key: key.to_string(),
            incident_id: p.incident_id.clone(),
            status: STEPS[p.step],
            steps: (0..=p.step)
                .map(|s| Step {
                    status: STEPS[s],
                    at_ms: p.reached[s],
                })
                .collect(),
        })
    }

    /// Forgets keys older than the TTL.
    pub(crate) fn expire(&mut self, now_ms: i64) {
        let ttl = self.ttl_ms;
        let key_of = &mut self.key_of;
        self.by_key.retain(|_, p| {
            let keep = now_ms.saturating_sub(p.at_ms) < ttl;
            if !keep {
                key_of.remove(&p.incident_id);
            }
            keep
        });
    }

    /// Expires at most once a minute (a pass over every key).
    pub(crate) fn tick(&mut self, now_ms: i64) {
        if now_ms.saturating_sub(self.last_expire_ms) >= 60_000 {
            self.last_expire_ms = now_ms;
            self.expire(now_ms);
        }
    }

    /// How many keys it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(id: &str, key: Option<&str>, status: IncidentStatus, updated_ms: i64) -> Incident {
        let mut i: Incident = serde_json::from_value(serde_json::json!({
            "id": id, "category": "theft", "priority": 3, "status": "pending",
            "location": {"lat": 51.23, "lon": 51.37}, "source": "app", "units": [],
            "required": [], "units_needed": 1, "notes": [], "possible_duplicates": [],
            "dispatch": "auto", "agencies": ["police"], "kinds": [], "declined_by": [],
            "created_ms": 1_000, "updated_ms": updated_ms,
        }))
        .expect("incident json");
        i.key = key.map(str::to_string);
        i.key_scope = key.map(|_| KeyScope::Gateway);
        i.status = status;
        i
    }

    #[test]
    fn steps_follow_the_incident_and_the_key_expires() {
        let mut b = CitizenBook::new(10_000, &[], &[]);
        b.fold(&incident("I-1", Some("k1"), IncidentStatus::Pending, 1_000));
        assert_eq!(b.status("k1", 2_000).unwrap().status, "received");
        // Later events of the incident need not carry the key.
        b.fold(&incident("I-1", None, IncidentStatus::Dispatched, 1_500));
        b.fold(&incident("I-1", None, IncidentStatus::OnScene, 3_000));
        let s = b.status("k1", 4_000).unwrap();
        assert_eq!(s.status, "unit_on_scene");
        let got: Vec<(&str, Option<i64>)> = s.steps.iter().map(|s| (s.status, s.at_ms)).collect();
        assert_eq!(
            got,
            [
                ("received", Some(1_000)),
                ("unit_assigned", Some(1_500)),
                ("unit_on_the_way", None),
                ("unit_on_scene", Some(3_000)),
            ]
        );
        assert!(b.status("k1", 11_000).is_none(), "expired");
        assert!(b.status("other", 4_000).is_none());
        b.expire(11_000);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn console_keys_are_not_reports() {
        let mut b = CitizenBook::new(10_000, &[], &[]);
        let mut i = incident("I-2", Some("k2"), IncidentStatus::Pending, 1_000);
        i.key_scope = Some(KeyScope::Console);
        b.fold(&i);
        assert!(b.status("k2", 2_000).is_none());
    }
}
