//! The store's one error type. Owns the variants and their messages; must never
//! carry a "maybe saved" state: every `Err` from an append means "not acknowledged".

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the journal or the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system I/O call failed (open, read, write, fsync, rename, ...).
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing, e.g. "fsync segment".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// Data on disk is damaged in a way that recovery must not paper over
    /// (bad record in the middle of the log, a damaged sealed segment, a bad epoch file).
    #[error("corrupt journal data in {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the first bad byte we found.
        offset: u64,
        /// Human-readable cause.
        reason: String,
    },
    /// Segments or snapshots exist but the `epoch` file does not: refusing to mint a new
    /// epoch over old data (clients would resume against the wrong history).
    #[error("journal directory {dir} has data but no epoch file")]
    MissingEpoch {
        /// The data directory.
        dir: PathBuf,
    },
    /// Another process holds the directory's lock: two writers would interleave
    /// their appends and corrupt the journal.
    #[error("journal directory {dir} is in use by another process")]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// Sequence numbers on disk are not contiguous (a segment was lost or renamed).
    #[error("sequence gap in {path}: expected seq {expected}, found {found}")]
    SeqGap {
        /// The file where the gap shows.
        path: PathBuf,
        /// The seq that should have come next.
        expected: u64,
        /// The seq actually found.
        found: u64,
    },
    /// An earlier append failed; the on-disk tail is unknown until the journal is reopened.
    #[error("journal is poisoned by an earlier failed append; reopen it to recover")]
    Poisoned,
    /// Another writer appended to a shared journal (a region's stream) after this
    /// one last did: this writer's view is stale and it must stop writing. A
    /// journal with one writer by construction (the file journal's lock) never
    /// returns it. Poisons the journal like any failed append.
    #[error("fenced: {reason}")]
    Fenced {
        /// What the journal saw.
        reason: String,
    },
    /// A payload is larger than [`MAX_PAYLOAD`](crate::MAX_PAYLOAD).
    #[error("record of {len} bytes exceeds the maximum of {max}")]
    RecordTooLarge {
        /// Payload size asked for.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `read_from` asked for events older than the oldest one still retained
    /// (compacted away): the caller must fall back to a snapshot (`recovered: false`).
    #[error("events after seq {after_seq} are no longer retained (oldest is {first_seq})")]
    Compacted {
        /// The seq the caller wanted to read after.
        after_seq: u64,
        /// The oldest seq still in the journal.
        first_seq: u64,
    },
    /// The directory was written by a version before the audit chain (format 1:
    /// segments without a header, frames without a hash). Refused, not migrated: a
    /// chain computed now would vouch for history nobody can vouch for.
    #[error(
        "{path} is a format-1 journal segment (written before the audit hash chain, opcenter < 0.2); \
         this version reads only format 2. Keep that directory as the archive of its period and \
         start this server on a new, empty data directory"
    )]
    OldFormat {
        /// The first format-1 segment found.
        path: PathBuf,
    },
    /// The audit hash chain does not hold: a record was changed after it was written
    /// (with a valid CRC), or a checkpoint disagrees with the records.
    #[error("audit chain broken at {first} ({count} break(s) in all)")]
    ChainBroken {
        /// The first break, in seq order.
        first: crate::ChainBreak,
        /// How many breaks were found.
        count: usize,
    },
    /// A snapshot was offered for a seq the journal does not have yet.
    #[error("snapshot seq {seq} is beyond the journal's last seq {last_seq}")]
    SnapshotAhead {
        /// The snapshot's seq.
        seq: u64,
        /// The journal's last durable seq.
        last_seq: u64,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
