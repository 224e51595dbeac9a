//! One incident's timeline, answered from the journal: every record touching
//! it (its own events, the assignments sent to tablets, the status changes of
//! units while on it), each with who caused it (the record's [`Origin`]), when,
//! and what changed compared with the state before. Used by
//! `GET /v1/incidents/{id}/timeline` and `opcenter audit show`.
//!
//! The journal is read one chunk per call of the caller's reader, and only
//! records containing the id's bytes (or a unit on the incident) are decoded.
//!
//! Owns: what a timeline entry says. Must never: show a reporter's personal
//! data (the timeline names the reporter's presence, not who it is).

use std::collections::HashSet;
use std::path::Path;

use opcenter_core::{Event, EventBody, Incident, Unit};
use opcenter_store::{Journal, JournalReader, Record, StoreError};
use serde::Serialize;

use crate::record::{self, DurabilityError, Origin};

/// Records decoded per reader call.
const CHUNK: usize = 1024;
/// Longest note text quoted in an entry.
const NOTE_QUOTE: usize = 200;

/// One step of an incident's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    /// The journal record's seq.
    pub seq: u64,
    /// When the engine applied it (unix ms); the record's actor time, or the
    /// incident's `updated_ms` for records older than the actor.
    pub at_ms: i64,
    /// Who: `sub`, `role`, `session` (absent in records older than the actor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Origin>,
    /// `incidents`, `units` or `assignments`.
    pub topic: &'static str,
    /// The event's `change` (wire name).
    pub change: &'static str,
    /// The unit, for unit and assignment records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// What changed, for people.
    pub what: String,
}

/// An incident's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// The incident.
    pub incident_id: String,
    /// The oldest record the journal still holds: history before it was
    /// compacted away (`hub.history_events`), so a timeline starting after it
    /// is complete only if its first step is `created`.
    pub first_seq: u64,
    /// The newest record read.
    pub last_seq: u64,
    /// Oldest first.
    pub steps: Vec<Step>,
}

/// Why a timeline could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// The journal could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be read or decoded.
    #[error("{0}")]
    Record(String),
}

impl From<DurabilityError> for TimelineError {
    fn from(e: DurabilityError) -> Self {
        TimelineError::Record(e.to_string())
    }
}

/// The timeline of `id` from records after `first_seq - 1`, read one chunk per
/// `read_chunk(after)` call until it returns none.
pub(crate) fn collect(
    first_seq: u64,
    mut read_chunk: impl FnMut(u64, usize) -> Result<Vec<Record>, DurabilityError>,
    id: &str,
) -> Result<Timeline, DurabilityError> {
    let mut t = Timeline {
        incident_id: id.to_string(),
        first_seq,
        last_seq: first_seq.saturating_sub(1),
        steps: Vec::new(),
    };
    if id.is_empty() {
        return Ok(t);
    }
    let needle = id.as_bytes();
    let mut before: Option<Incident> = None;
    // Units on the incident now: their next record (even one leaving it) belongs here.
    let mut on_it: HashSet<String> = HashSet::new();
    let mut after = first_seq.saturating_sub(1);
    loop {
        let records = read_chunk(after, CHUNK)?;
        let Some(last) = records.last() else { break };
        after = last.seq;
        t.last_seq = last.seq;
        for rec in &records {
            let mentions = rec.payload.windows(needle.len()).any(|w| w == needle);
            if !mentions && on_it.is_empty() {
                continue;
            }
            let (event, actor) = record::decode_with_origin(rec)?;
            if let Some(step) = step(rec.seq, &event, actor, id, &mut before, &mut on_it) {
                t.steps.push(step);
            }
        }
    }
    Ok(t)
}

fn step(
    seq: u64,
    event: &Event,
    actor: Option<Origin>,
    id: &str,
    before: &mut Option<Incident>,
    on_it: &mut HashSet<String>,
) -> Option<Step> {
    let change = event.change.as_str();
    let (topic, unit, what, at) = match &event.body {
        EventBody::Incident(inc) if inc.id == id => {
            let what = describe(before.as_ref(), inc);
            on_it.clear();
            on_it.extend(inc.units.iter().cloned());
            let at = inc.updated_ms;
            *before = Some(inc.clone());
            ("incidents", None, what, at)
        }
        EventBody::Assignment { unit_id, incident } if incident.id == id => (
            "assignments",
            Some(unit_id.clone()),
            format!("{unit_id}'s tablet told ({} event)", event.change.as_str()),
            incident.updated_ms,
        ),
        EventBody::Unit(u) if u.incident_id.as_deref() == Some(id) || on_it.contains(&u.id) => {
            if u.incident_id.as_deref() != Some(id) {
                on_it.remove(&u.id);
            }
            (
                "units",
                Some(u.id.clone()),
                describe_unit(u, id),
                u.location_ms.unwrap_or(0),
            )
        }
        _ => return None,
    };
    let at_ms = actor.as_ref().map_or(at, |a| a.at_ms);
    Some(Step {
        seq,
        at_ms,
        actor,
        topic,
        change,
        unit,
        what,
    })
}

/// What changed from `old` to `new`, in a line.
fn describe(old: Option<&Incident>, new: &Incident) -> String {
    let Some(old) = old else {
        let place = new
            .address
            .clone()
            .unwrap_or_else(|| format!("{:.5},{:.5}", new.location.lat, new.location.lon));
        let mut s = format!(
            "created: P{} {} at {place}, source {}, status {}",
            new.priority,
            new.category,
            new.source,
            crate::eido::ours(&new.status)
        );
        if new.reporter.is_some() {
            s.push_str(", with reporter contact");
        }
        if !new.units.is_empty() {
            s.push_str(&format!(", units {}", new.units.join(",")));
        }
        return s;
    };
    let mut parts = Vec::new();
    if old.status != new.status {
        parts.push(format!(
            "status {} -> {}",
            crate::eido::ours(&old.status),
            crate::eido::ours(&new.status)
        ));
    }
    let added: Vec<&str> = new
        .units
        .iter()
        .filter(|u| !old.units.contains(u))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = old
        .units
        .iter()
        .filter(|u| !new.units.contains(u))
        .map(String::as_str)
        .collect();
    if !added.is_empty() {
        parts.push(format!("units +{}", added.join(",+")));
    }
    if !removed.is_empty() {
        parts.push(format!("units -{}", removed.join(",-")));
    }
    for d in new.declined_by.iter().filter(|u| !old.declined_by.contains(u)) {
        parts.push(format!("declined by {d}"));
    }
    if old.priority != new.priority {
        parts.push(format!("priority P{} -> P{}", old.priority, new.priority));
    }
    if old.category != new.category {
        parts.push(format!("category {} -> {}", old.category, new.category));
    }
    if old.location != new.location || old.address != new.address {
        parts.push("location changed".to_string());
    }
    if old.description != new.description {
        parts.push("description changed".to_string());
    }
    for n in new.notes.iter().skip(old.notes.len()) {
        let mut text = n.text.clone();
        if text.len() > NOTE_QUOTE {
            let mut at = NOTE_QUOTE;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
            text.push('…');
        }
        parts.push(format!("note by {}: {text:?}", n.by));
    }
    if old.disposition != new.disposition
        && let Some(d) = &new.disposition
    {
        parts.push(format!("disposition {d}"));
    }
    if parts.is_empty() {
        parts.push("no visible change".to_string());
    }
    parts.join("; ")
}

fn describe_unit(u: &Unit, id: &str) -> String {
    let mut s = format!("unit {} status {}", u.id, crate::eido::ours(&u.status));
    if u.incident_id.as_deref() != Some(id) {
        s.push_str(", off the incident");
    }
    if !u.online {
        s.push_str(", offline");
    }
    s
}

/// The timeline of `id` from the journal in `dir`, read-only (a server may be
/// running): `opcenter audit show`.
pub fn timeline_in_dir(dir: &Path, id: &str) -> Result<Timeline, TimelineError> {
    let reader = JournalReader::open(dir)?;
    if let Some(b) = reader.breaks.first() {
        tracing::warn!(first_break = %b, "the journal's audit chain is broken: the timeline may show altered records");
    }
    let first = reader.first_seq();
    Ok(collect(
        first,
        |after, max| {
            reader
                .read_from(after, max)
                .map_err(|source| DurabilityError::Read { after, source })
        },
        id,
    )?)
}

/// A region's stream on NATS opened for reading by a tool (`audit show`,
/// `report`): its own runtime, the chain not walked (`audit verify` does that).
/// Blocks: call it off any async runtime.
pub(crate) fn open_region(urls: &str, region: &str) -> Result<opcenter_cluster::JetStreamJournal, String> {
    let mut opts = opcenter_cluster::JournalOptions::new(region);
    opts.verify_chain = false;
    opcenter_cluster::JetStreamJournal::connect(urls, opts)
        .map_err(|e| format!("opening region {region}'s stream: {e}"))
}

/// The timeline of `id` from a region's stream on NATS (`urls`: comma-separated),
/// read-only: `opcenter audit show --region`. Blocks (a runtime of its own): call it
/// off any async runtime. The chain is not walked here (`audit verify` does that).
pub fn timeline_in_region(urls: &str, region: &str, id: &str) -> Result<Timeline, TimelineError> {
    let journal = open_region(urls, region).map_err(TimelineError::Record)?;
    Ok(collect(
        journal.first_seq(),
        |after, max| {
            journal
                .read_from(after, max)
                .map_err(|source| DurabilityError::Read { after, source })
        },
        id,
    )?)
}

impl Timeline {
    /// For people: one line per step.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "incident {} — {} step(s) (journal records {}..={})\n",
            self.incident_id,
            self.steps.len(),
            self.first_seq,
            self.last_seq
        );
        if self.steps.first().is_none_or(|s| s.change != "created") && self.first_seq > 1 {
            out.push_str(
                "note: the journal no longer holds its first records (compacted): the start may be missing\n",
            );
        }
        for s in &self.steps {
            let who = match &s.actor {
                Some(a) => format!(
                    "{} ({}{})",
                    a.sub,
                    a.role,
                    a.session
                        .as_ref()
                        .map(|x| format!(", session {x}"))
                        .unwrap_or_default()
                ),
                None => "(actor not recorded)".to_string(),
            };
            out.push_str(&format!(
                "{}  #{:<8} {:<11} {:<13} {:<40} {}\n",
                crate::eido::timestamp(s.at_ms),
                s.seq,
                s.topic,
                s.change,
                who,
                s.what
            ));
        }
        out
    }
}
