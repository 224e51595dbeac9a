//! The hub's side of the journal: how an engine event becomes a journal record
//! and back, how an engine snapshot is stored, and the typed error of the
//! durability path (recovery, group commit, snapshots). Every payload the hub
//! writes to or reads from a [`Journal`] goes through here.
//!
//! Records are MessagePack with field names, so a field added later reads as
//! its default from older records. A record is the event's own map (`change`,
//! `body`) plus `actor`: who caused it ([`Origin`], the audit trail). The actor
//! is in the journal only, never on the wire; records written before it existed
//! read with no actor.
//!
//! Owns: the record format. Must never: decide when to write (the engine
//! thread does) or swallow a store error into a string.

use opcenter_core::{Actor, ActorKind, Change, EngineSnapshot, Event, EventBody, Incident};
use opcenter_store::{Journal, Record, StoreError};
use serde::{Deserialize, Serialize};

/// Why the journal could not be read, written or replayed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DurabilityError {
    /// The store refused an operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the records after `after` failed.
    #[error("journal after seq {after}: {source}")]
    Read { after: u64, source: StoreError },
    /// A stored snapshot does not decode as an engine snapshot.
    #[error("snapshot at seq {seq}: {source}")]
    BadSnapshot {
        seq: u64,
        source: rmp_serde::decode::Error,
    },
    /// A record does not decode as an engine event.
    #[error("journal record {seq}: {source}")]
    BadRecord {
        seq: u64,
        source: rmp_serde::decode::Error,
    },
    /// An event or snapshot could not be encoded (a serializer bug).
    #[error("encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: rmp_serde::encode::Error,
    },
    /// The journal failed earlier: the engine may hold changes it lacks, so
    /// nothing more is written from it.
    #[error("the journal failed: no snapshot")]
    Unhealthy,
}

/// Who caused an event and when: stored beside every event in its journal
/// record (the audit trail, docs/records.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The token's `sub` (`system` for the server's own timers).
    pub sub: String,
    /// `dispatcher`, `supervisor`, `unit`, `intake` or `system`.
    pub role: String,
    /// The WebSocket session that sent the command; none for HTTP requests and
    /// the server's own timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the engine applied it (unix ms, the batch's clock).
    pub at_ms: i64,
    /// The hub's call id of a command forwarded over NATS (role `engine`): a new
    /// engine rebuilds its call memory from these after a takeover, so a call
    /// retried across the handover is answered, not applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
}

impl Origin {
    /// `actor` acting through `session` (if any) at `at_ms`.
    pub(crate) fn new(actor: &Actor, session: Option<&str>, at_ms: i64) -> Origin {
        let role = match actor.kind {
            ActorKind::Dispatcher => "dispatcher",
            ActorKind::Supervisor => "supervisor",
            ActorKind::Unit(_) => "unit",
            ActorKind::Intake => "intake",
            ActorKind::System => "system",
        };
        Origin {
            sub: actor.sub.clone(),
            role: role.to_string(),
            session: session.map(str::to_string),
            at_ms,
            call: None,
        }
    }
}

/// The record as written: the event's fields plus its actor.
#[derive(Serialize)]
struct StoredRef<'a> {
    change: &'a Change,
    body: &'a EventBody,
    actor: &'a Origin,
}

/// The record as read: the actor is absent from records older than it.
#[derive(Deserialize)]
struct Stored {
    change: Change,
    body: EventBody,
    #[serde(default)]
    actor: Option<Origin>,
}

/// An event and who caused it, as a journal payload.
pub(crate) fn encode_event(event: &Event, actor: &Origin) -> Result<Vec<u8>, DurabilityError> {
    let stored = StoredRef {
        change: &event.change,
        body: &event.body,
        actor,
    };
    rmp_serde::to_vec_named(&stored).map_err(|source| DurabilityError::Encode {
        what: "event",
        source,
    })
}

/// The event a journal record holds and who caused it (`None` in records
/// written before the actor was stored).
pub(crate) fn decode_with_origin(record: &Record) -> Result<(Event, Option<Origin>), DurabilityError> {
    let s: Stored = rmp_serde::from_slice(&record.payload).map_err(|source| DurabilityError::BadRecord {
        seq: record.seq,
        source,
    })?;
    Ok((
        Event {
            change: s.change,
            body: s.body,
        },
        s.actor,
    ))
}

/// The largest journal record one event may make: half a console's event queue
/// (`hub.session_queue_bytes`), so every subscriber can take the change without
/// being closed, and at most half the store's own limit, so events the server
/// makes by itself on an incident that size (timeouts, dispatch) still fit.
pub(crate) fn max_record_bytes(session_queue_bytes: usize) -> usize {
    (session_queue_bytes / 2).min(opcenter_store::MAX_PAYLOAD / 2)
}

/// The newest state of incident `id` the journal still holds (a retired
/// incident: see `opcenter_core`'s retention), or `None`. A scan of the
/// retained history from `first_seq`, one chunk per `read_chunk(after)` call (so
/// a caller sharing the journal with the writer can lock per chunk), decoding
/// only records that contain the id's bytes.
pub(crate) fn find_incident(
    first_seq: u64,
    mut read_chunk: impl FnMut(u64) -> Result<Vec<Record>, DurabilityError>,
    id: &str,
) -> Result<Option<Incident>, DurabilityError> {
    let needle = id.as_bytes();
    if needle.is_empty() {
        return Ok(None);
    }
    let mut found = None;
    let mut after = first_seq.saturating_sub(1);
    loop {
        let records = read_chunk(after)?;
        let Some(last) = records.last() else { break };
        after = last.seq;
        for rec in records
            .iter()
            .filter(|r| r.payload.windows(needle.len()).any(|w| w == needle))
        {
            if let EventBody::Incident(inc) = decode_event(rec)?.body
                && inc.id == id
            {
                found = Some(inc);
            }
        }
    }
    Ok(found)
}

/// The event a journal record holds.
pub(crate) fn decode_event(record: &Record) -> Result<Event, DurabilityError> {
    rmp_serde::from_slice(&record.payload).map_err(|source| DurabilityError::BadRecord {
        seq: record.seq,
        source,
    })
}

/// An engine snapshot as the bytes [`Journal::write_snapshot`] stores.
pub(crate) fn encode_snapshot(snapshot: &EngineSnapshot) -> Result<Vec<u8>, DurabilityError> {
    rmp_serde::to_vec_named(snapshot).map_err(|source| DurabilityError::Encode {
        what: "snapshot",
        source,
    })
}

/// The engine snapshot stored at `seq`.
pub(crate) fn decode_snapshot(seq: u64, bytes: &[u8]) -> Result<EngineSnapshot, DurabilityError> {
    rmp_serde::from_slice(bytes).map_err(|source| DurabilityError::BadSnapshot { seq, source })
}

/// Up to `max` records after `after`, with the position in the error.
pub(crate) fn read_from(
    journal: &dyn Journal,
    after: u64,
    max: usize,
) -> Result<Vec<Record>, DurabilityError> {
    journal
        .read_from(after, max)
        .map_err(|source| DurabilityError::Read { after, source })
}

#[cfg(test)]
mod tests {
    use opcenter_store::MemJournal;

    use super::*;

    #[test]
    fn a_record_that_is_not_an_event_names_its_seq() {
        let mut journal = MemJournal::with_epoch("e");
        journal.append_batch(&[b"not msgpack of an event"]).unwrap();
        let records = read_from(&journal, 0, 10).unwrap();
        let err = decode_event(&records[0]).unwrap_err();
        assert!(
            matches!(err, DurabilityError::BadRecord { seq: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("journal record 1: "), "{err}");
    }

    #[test]
    fn a_snapshot_round_trips() {
        let engine = opcenter_core::Engine::new(opcenter_core::EngineConfig::default());
        let bytes = encode_snapshot(&engine.snapshot()).unwrap();
        decode_snapshot(7, &bytes).unwrap();
        let err = decode_snapshot(7, b"\xc1").unwrap_err();
        assert!(err.to_string().starts_with("snapshot at seq 7: "), "{err}");
    }
}
