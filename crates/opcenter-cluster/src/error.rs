//! The cluster crate's one error type. Owns the variants, their messages, and the
//! mapping into [`StoreError`] for the [`Journal`](opcenter_store::Journal) trait; must
//! never carry a "maybe saved" state: every `Err` from an append means "not
//! acknowledged by JetStream".

use std::time::Duration;

use opcenter_store::StoreError;

/// Everything that can go wrong between the journal and JetStream.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Another writer appended to the region's stream: our expected last stream
    /// sequence is stale (JetStream error 10071, "wrong last sequence"). The journal is
    /// poisoned; the caller must stop writing (fencing).
    #[error("fenced: stream {stream} moved past sequence {expected_last} (another writer appended)")]
    Fenced {
        /// The region's stream.
        stream: String,
        /// The last stream sequence this writer knew of.
        expected_last: u64,
    },
    /// JetStream did not take the publish before the retry deadline (no responders
    /// during a leader election, ack timeouts, no connection).
    #[error("{op}: JetStream unavailable for {waited:?} (last error: {last})")]
    Unavailable {
        /// What we were doing.
        op: &'static str,
        /// How long we retried.
        waited: Duration,
        /// The last error seen.
        last: String,
    },
    /// A NATS or JetStream call failed in a way that retrying will not fix.
    #[error("{op}: {source}")]
    Nats {
        /// What we were doing, e.g. "create stream".
        op: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A message in the stream or the snapshot bucket is not what this crate writes
    /// (missing header, bad frame, sequence that does not continue).
    #[error("corrupt data in {stream} at stream sequence {stream_seq}: {reason}")]
    Corrupt {
        /// The stream or bucket.
        stream: String,
        /// The stream sequence of the bad message (0 if not known).
        stream_seq: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// A region name that cannot be used in stream names and subjects.
    #[error("invalid region name {0:?}: use ASCII letters, digits, '-' and '_'")]
    InvalidRegion(String),
    /// A record larger than one message can carry (the server's max payload less
    /// room for headers). Checked before any I/O: does not poison.
    #[error("record of {len} bytes exceeds the maximum of {max}")]
    RecordTooLarge {
        /// Payload size asked for.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Records after `after_seq` were compacted away (purged from the stream).
    #[error("events after seq {after_seq} are no longer retained (oldest is {first_seq})")]
    Compacted {
        /// The seq the caller wanted to read after.
        after_seq: u64,
        /// The oldest seq still in the stream.
        first_seq: u64,
    },
    /// This engine no longer holds the region's lease (another node took it, or it
    /// could not renew it within the TTL): it must stop writing and serving.
    #[error("lease of region {region} lost: {reason}")]
    LeaseLost {
        /// The region.
        region: String,
        /// Why.
        reason: String,
    },
    /// The region's audit hash chain does not hold (`chain.rs`): a record, a header
    /// or a checkpoint was changed, or records are missing. The engine does not
    /// start on it unless `accept_broken_chain`.
    #[error(
        "audit chain broken in stream {stream}: first broken record: {first} ({breaks} break(s) in all); \
         the engine does not start on it: check the stream (`opcenter audit verify --region`), \
         or start with --accept-broken-chain to serve anyway"
    )]
    ChainBroken {
        /// The region's stream.
        stream: String,
        /// The first break, as `seq S in stream message M: reason`.
        first: String,
        /// Breaks found in all.
        breaks: usize,
    },
    /// An earlier append failed; reopen the journal (which re-reads the stream's tail).
    #[error("journal is poisoned by an earlier failed append; reopen it to recover")]
    Poisoned,
}

impl ClusterError {
    pub(crate) fn nats(
        op: &'static str,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> ClusterError {
        move |source| ClusterError::Nats { op, source }
    }

    /// The [`ClusterError`] inside a [`StoreError`] returned by
    /// [`JetStreamJournal`](crate::JetStreamJournal)'s `Journal` methods, if there is
    /// one: e.g. to tell an outage (`Unavailable`) from a corrupt stream.
    pub fn of(err: &StoreError) -> Option<&ClusterError> {
        match err {
            StoreError::Io { source, .. } => source.get_ref()?.downcast_ref::<ClusterError>(),
            _ => None,
        }
    }

    /// Whether this is the fencing error (another writer appended).
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClusterError::Fenced { .. })
    }
}

impl From<ClusterError> for StoreError {
    /// `Poisoned`, `Fenced`, `RecordTooLarge` and `Compacted` map to the store's
    /// variants of the same meaning; everything else travels as the
    /// source of a [`StoreError::Io`] (the trait's error type is closed), where
    /// [`ClusterError::of`] finds it again.
    fn from(err: ClusterError) -> StoreError {
        match err {
            ClusterError::Poisoned => StoreError::Poisoned,
            fenced @ ClusterError::Fenced { .. } => StoreError::Fenced {
                reason: fenced.to_string(),
            },
            ClusterError::RecordTooLarge { len, max } => StoreError::RecordTooLarge { len, max },
            ClusterError::Compacted { after_seq, first_seq } => {
                StoreError::Compacted { after_seq, first_seq }
            }
            err => StoreError::Io {
                op: "jetstream",
                path: "nats".into(),
                source: std::io::Error::other(err),
            },
        }
    }
}
