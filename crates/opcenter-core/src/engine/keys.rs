//! The idempotency key book: which create a key stood for, per key space.
//!
//! A key is looked up in its own scope (the app gateway and the consoles never
//! see each other's keys), and remembers a digest of the body it came with, so
//! the same key with a different body is a conflict instead of a silent "here
//! is the first incident". A key lives `dispatch.key_ttl_h` after the create;
//! if its incident is retired from memory before that, the record keeps only
//! how it ended, and a late retry (whose body is by definition the first
//! create's) gets the incident rebuilt from that body: its id, `closed`, the
//! disposition. Notes, units and the reporter left memory with the incident
//! (they are what make it big, and personal data should go with it);
//! `GET /v1/incidents/{id}` still has them from the journal.
//!
//! Owns: the (scope, key) → record map and its expiry. Must never: decide
//! whether a create goes ahead (the engine does), or keep a key past its TTL.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::NewIncident;
use crate::model::{Incident, IncidentId, IncidentStatus, KeyScope, Location};

/// One remembered key (what snapshots store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Whose key space.
    pub scope: KeyScope,
    /// The client's key.
    pub key: String,
    /// The incident the first create made.
    pub incident_id: IncidentId,
    /// Digest of the first create's category, priority, location and description.
    pub body: u64,
    /// When the first create happened (ms): the TTL counts from here.
    pub at_ms: i64,
    /// How the incident ended, once retention took it out of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<Retired>,
}

/// What a key remembers of its retired incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retired {
    /// The incident's disposition.
    pub disposition: Option<String>,
    /// When it closed (ms).
    pub closed_ms: i64,
}

impl KeyRecord {
    /// The retired incident as a retry of its create sees it, rebuilt from the
    /// retry's body (equal to the first create's: the digests matched).
    pub(super) fn retired_incident(&self, n: &NewIncident) -> Option<Incident> {
        let r = self.retired.as_ref()?;
        Some(Incident {
            id: self.incident_id.clone(),
            key: Some(self.key.clone()),
            key_scope: Some(self.scope),
            category: n.category.clone(),
            priority: n.priority,
            status: IncidentStatus::Closed,
            location: n.location,
            address: n.address.clone(),
            description: n.description.clone(),
            reporter: None,
            source: n.source.clone(),
            units: Vec::new(),
            required: n.required.clone(),
            units_needed: n.units_needed,
            disposition: r.disposition.clone(),
            notes: Vec::new(),
            possible_duplicates: Vec::new(),
            dispatch: n.dispatch,
            agencies: n.agencies.clone().unwrap_or_default(),
            district: None,
            beat: None,
            selection: Default::default(),
            kinds: Vec::new(),
            run_card: None,
            declined_by: Vec::new(),
            emergency_unit: None,
            received_ms: None,
            created_ms: self.at_ms,
            updated_ms: r.closed_ms,
        })
    }
}

/// A stable digest of the fields that make two creates "the same body"
/// (FNV-1a: it is stored in snapshots, so it must not change between builds).
pub(crate) fn body_digest(
    category: &str,
    priority: u8,
    location: Location,
    description: Option<&str>,
) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&(category.len() as u64).to_le_bytes());
    eat(category.as_bytes());
    eat(&[priority]);
    eat(&location.lat.to_bits().to_le_bytes());
    eat(&location.lon.to_bits().to_le_bytes());
    match description {
        Some(d) => {
            eat(&[1]);
            eat(d.as_bytes());
        }
        None => eat(&[0]),
    }
    h
}

/// The digest of a create command's body.
pub(crate) fn digest_of(n: &NewIncident) -> u64 {
    body_digest(&n.category, n.priority, n.location, n.description.as_deref())
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct KeyBook {
    map: super::hashed::HashedMap<(KeyScope, String), Arc<KeyRecord>>,
    /// Every live key by its create time: expiry takes the due ones from the
    /// front instead of scanning the map.
    by_age: BTreeSet<(i64, KeyScope, String)>,
}

impl KeyBook {
    /// The record of `key` in `scope`, if it is still alive.
    pub(super) fn get(&self, scope: KeyScope, key: &str) -> Option<&KeyRecord> {
        self.map.get(&(scope, key.to_string())).map(Arc::as_ref)
    }

    /// Remembers the key of a newly seen incident (a create, or its first event
    /// on replay), unless it is already known.
    pub(super) fn remember(&mut self, inc: &Incident) {
        let Some(key) = &inc.key else { return };
        let scope = inc.key_scope.unwrap_or(KeyScope::Console);
        let by_age = &mut self.by_age;
        self.map.get_or_insert_with((scope, key.clone()), || {
            by_age.insert((inc.created_ms, scope, key.clone()));
            Arc::new(KeyRecord {
                scope,
                key: key.clone(),
                incident_id: inc.id.clone(),
                body: body_digest(
                    &inc.category,
                    inc.priority,
                    inc.location,
                    inc.description.as_deref(),
                ),
                at_ms: inc.created_ms,
                retired: None,
            })
        });
    }

    /// Puts a record back as a snapshot stored it.
    pub(super) fn restore(&mut self, rec: Arc<KeyRecord>) {
        self.by_age.insert((rec.at_ms, rec.scope, rec.key.clone()));
        self.map.insert((rec.scope, rec.key.clone()), rec);
    }

    /// The incident is leaving memory: a live key keeps a copy for late retries.
    pub(super) fn retire(&mut self, inc: &Incident) {
        let Some(key) = &inc.key else { return };
        let scope = inc.key_scope.unwrap_or(KeyScope::Console);
        if let Some(rec) = self.map.get_mut(&(scope, key.clone()))
            && rec.incident_id == inc.id
        {
            Arc::make_mut(rec).retired = Some(Retired {
                disposition: inc.disposition.clone(),
                closed_ms: inc.updated_ms,
            });
        }
    }

    /// Forgets every key created at or before `cutoff_ms`.
    pub(super) fn expire(&mut self, cutoff_ms: i64) {
        while let Some((at_ms, _, _)) = self.by_age.first()
            && *at_ms <= cutoff_ms
        {
            let Some((at_ms, scope, key)) = self.by_age.pop_first() else {
                break;
            };
            let slot = (scope, key);
            // A record restored over this one since keeps its own entry.
            if self.map.get(&slot).is_some_and(|r| r.at_ms == at_ms) {
                self.map.remove(&slot);
            }
        }
    }

    /// How many keys are alive.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Every live record, in no particular order ([`super::EngineSnapshot::sort`]
    /// orders them). Shared, not copied: a later change copies the one it changes.
    pub(super) fn records(&self) -> Vec<Arc<KeyRecord>> {
        self.map.values().cloned().collect()
    }
}
