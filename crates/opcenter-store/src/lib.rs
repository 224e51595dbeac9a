//! opcenter-store: the durable event journal and the snapshot store.
//!
//! Owns durability: a record is on disk (written and `fdatasync`ed) before
//! [`Journal::append_batch`] returns `Ok`, and history that was acknowledged is never
//! silently dropped on open. Must never know what a record means: payloads are opaque
//! bytes, and this crate depends on no other opcenter crate.
//!
//! # Layout
//!
//! - `lib.rs` — the [`Journal`] trait, [`Record`], these docs.
//! - `error.rs` — [`StoreError`].
//! - `frame.rs` — the record frame on disk (length, flags, CRC, seq, hash, payload).
//! - `chain.rs` — the audit hash chain: link, segment header, checkpoints.
//! - `file.rs` — [`FileJournal`]: segments, recovery, group commit, read index,
//!   compaction.
//! - `snapshot.rs` — snapshot files, atomic write, keep-the-latest-two, and the
//!   writer that stores them without the journal (`Journal::prepare_snapshot`).
//! - `fsutil.rs` — atomic replace, directory fsync, file names, epoch ids.
//! - `mem.rs` — [`MemJournal`], the same contract in memory for tests.
//!
//! # How the hub uses it
//!
//! The engine thread owns the journal (`Box<dyn Journal>` or a concrete type). Per
//! batch of commands: apply them, collect the events' encoded bytes, call
//! `append_batch` once (one write, one fsync: group commit), and only after `Ok`
//! reply to clients and fan out with the returned seqs. On `Err` nothing of the batch
//! may be acknowledged; the journal is then poisoned (see below).
//!
//! At start: `latest_snapshot()` → state at seq S, then `read_from(S, chunk)` in a loop
//! through the same `apply`. For a resume `since {epoch, seq}`: if the epoch differs or
//! [`Journal::reaches_back`] is false, answer `recovered: false`; `read_from` returns
//! [`StoreError::Compacted`] too, so the race with compaction is also detected.
//!
//! # Directory layout of `FileJournal`
//!
//! ```text
//! <dir>/epoch                              random id, written once (tmp+fsync+rename)
//! <dir>/journal-00000000000000000001.log   segment, named by its first seq
//! <dir>/journal-00000000000000231842.log   ...the last one is appended to
//! <dir>/snapshot-00000000000000200000.bin  the two newest snapshots
//! ```
//!
//! A segment (format 2) starts with a 48-byte header (magic `OPCJRNL2`, the chain hash
//! before its first record, CRC). A record is `[len|flags u32][crc32 u32][seq u64]
//! [chain hash 32 B][payload]`, little endian; the CRC covers everything but itself.
//!
//! # Audit hash chain (`chain.rs`, docs/records.md)
//!
//! `h_n = SHA-256(h_{n-1} ‖ seq_n LE ‖ payload_n)`, `h_0` = zeros; each frame stores
//! its `h_n`. Open checks every link, every segment header against the previous
//! segment, and every retained checkpoint (`<dir>/chain-checkpoints`, one line per
//! `Options::checkpoint_records` records or `checkpoint_interval`), and fails with
//! [`StoreError::ChainBroken`] unless `Options::accept_broken_chain`. [`verify`] is the
//! same walk, read-only and lock-free. Compaction keeps the segment before an empty
//! one, so the first retained segment's header always holds the base. A format-1
//! directory (before the chain) is refused with [`StoreError::OldFormat`]. Two flag bits mark the first and
//! the last record of each `append_batch`, so a batch is atomic on disk: recovery keeps
//! whole batches only. A batch never spans two segments; a new segment starts before
//! a batch once the current one holds `segment_bytes` (64 MiB by default).
//!
//! The active segment is grown ahead of its data by `preallocate_bytes` of real zeros
//! (1 MiB by default), so a batch overwrites blocks that already exist and its
//! `fdatasync` has no file-system metadata to commit (about half the latency measured
//! here). A zero tail after the last record is therefore normal and is kept on open; a
//! segment is trimmed to its exact length when the next one starts.
//!
//! # Recovery (on open)
//!
//! Every segment is read once, sequentially, and each frame's CRC and seq checked
//! (1M records of 300 B: see README.md for the measured time). The sparse index
//! (one `(seq, offset)` per 64 KiB) is built on the way, so `read_from` seeks straight
//! to the right 64 KiB of the right segment.
//!
//! - **Zero tail** — only zero bytes after the last complete batch: preallocation,
//!   kept as is.
//! - **Torn tail** — the last segment ends in a short, bad-CRC, or impossible-length
//!   frame, or in a batch without its end mark: the file is truncated back to the end
//!   of the last complete batch, with a `warn!` naming the bytes and records dropped,
//!   and the journal opens. Such a batch was never fsynced, so never acknowledged.
//! - **Damage in the middle** — a bad frame in a sealed (non-last) segment, or a bad
//!   frame in the last one that is followed by a valid later batch (a batch is written
//!   only after the previous one's fsync returned, so a later batch proves the damaged
//!   one may have been acknowledged): open fails with [`StoreError::Corrupt`]. Surviving
//!   pages of the one torn batch itself do not count as a later batch, so a crash that
//!   persisted a batch's pages out of order still recovers.
//! - **Missing history** — segments or snapshots but no `epoch` file
//!   ([`StoreError::MissingEpoch`]), a seq gap between or inside segments, or a first
//!   segment that starts after the newest snapshot + 1 ([`StoreError::SeqGap`]), an
//!   unreadable file or directory ([`StoreError::Io`]): open fails. It never starts
//!   empty over existing data.
//!
//! # Append failures: poisoned, not retried
//!
//! After any failed append (write, fsync, segment creation) the journal refuses all
//! further appends with [`StoreError::Poisoned`] until reopened. Truncating back and
//! carrying on was the alternative, but after a failed `fsync` the kernel may have
//! dropped the dirty pages and cleared the error, so a retry can "succeed" without the
//! data on disk (PostgreSQL's fsyncgate). Reopening runs recovery, which sees exactly
//! what is on disk. The hub should treat poisoning as fatal for the engine (stop
//! accepting writes, alert, let the supervisor restart).
//!
//! # Why a hand-written segment log and not redb
//!
//! DESIGN.md suggests redb. Both were measured in the same criterion run
//! (`benches/append.rs`: redb 4.1, one write transaction per batch,
//! `Durability::Immediate`, a table `u64 -> &[u8]` keyed by seq; 300-byte JSON
//! records; files on the real disk). The figures, the command and the machine's load
//! are in README.md. Five runs on a loaded machine; each ratio is taken within one
//! run (the two stores alternate), median of the five, range in brackets:
//!
//! | measured                                | which is faster, by how much                 |
//! |-----------------------------------------|----------------------------------------------|
//! | durable records/s, batch of 1           | segment log 1.10× (0.89–4.7×: faster in 4/5) |
//! | durable records/s, batch of 16          | segment log 1.35× (1.18–4.0×)                |
//! | durable records/s, batch of 64          | segment log 1.51× (1.13–2.8×)                |
//! | open 1M records, after a clean shutdown | redb ~200× (5 ms vs 1.1 s)                   |
//! | open 1M records, after a crash          | segment log 3.6× (3.4–5.7×)                  |
//! | file size, 1M records of 300 B          | segment log 316 MB, redb 1 028 MB            |
//!
//! The segment log is kept, for these reasons:
//! 1. **Durable throughput.** The log was faster at batches of 16 and 64 in every
//!    run, and at batch 1 in four runs of five. At batch 1 on this congested disk both
//!    mostly wait for the one `fdatasync`, so the gap there is small (median 10%).
//!    It is not because redb syncs more often: its default durable commit is one
//!    `fdatasync` too (two only with `set_two_phase_commit` or `set_quick_repair`).
//!    By its source, a redb commit writes the B-tree pages the transaction changed and
//!    the header, at separate offsets, before that sync; the journal writes one
//!    contiguous run of bytes into blocks that already exist.
//! 2. **Restart after a crash.** A crash, not a clean shutdown, is the restart that
//!    must be quick. The journal's open is the same full scan either way. redb's open
//!    after a clean shutdown reads a few pages and wins by far, but after a crash it
//!    repairs by walking the whole file: 3.6× the journal's scan, 3.8 s (median; 3.0–
//!    5.2 s) against 1.1 s on this loaded machine, above the 3 s restart goal
//!    (DESIGN.md) in four runs of five. redb's `set_quick_repair` would shorten that
//!    repair at the cost of a second sync per commit; it was not measured.
//! 3. **Shape.** Events are only appended and read in order from a seq: no keys to
//!    look up, no updates. The log maps 1:1 to a JetStream stream (below), so the
//!    embedded journal and a clustered one have the same shape.
//!
//! The cost: the recovery rules above are our own code, about 270 lines of `file.rs`
//! (`scan`, `later_batch_after`, `open`) plus the frame decoder, and only this
//! crate's tests check them, where redb's recovery is tested by its own users.
//!
//! # The same trait on NATS JetStream (DESIGN.md, "Growing past one machine")
//!
//! | `Journal`             | JetStream                                                    |
//! |-----------------------|--------------------------------------------------------------|
//! | one journal           | one stream per region, e.g. `OPC_<region>`                    |
//! | `epoch`               | the stream's name + creation id (recreated stream = new epoch) |
//! | `append_batch`        | publish each record with `Nats-Expected-Last-Sequence` = `last_seq` (single-writer fencing), or an atomic batch publish; ack = durable on a quorum |
//! | seq                   | stream sequence                                              |
//! | `read_from(after, n)` | ordered consumer with `DeliverPolicy::ByStartSequence(after + 1)` |
//! | `first_seq`/`last_seq`| stream info `first_seq` / `last_seq`                          |
//! | snapshots             | a KV or Object Store bucket, key = region, value = seq + bytes |
//! | `compact`             | `max_msgs` retention (plus purge up to the snapshot seq)      |
//! | poisoned              | a failed expected-sequence publish: another writer or a lost ack; re-read and re-fence |
//!
//! # One writer per directory
//!
//! `FileJournal::open` takes an exclusive advisory lock on `<dir>/LOCK` (held until
//! the journal is dropped; the OS releases it when the process dies, even on
//! `kill -9`). A second opener gets [`StoreError::Locked`].
#![deny(missing_docs)]

mod chain;
mod error;
mod file;
mod frame;
mod fsutil;
mod mem;
mod snapshot;

use std::ops::RangeInclusive;
use std::sync::{Mutex, PoisonError};

pub use chain::{ChainBreak, Checkpoint, GENESIS, Hash, hex, link, read_checkpoints, unhex};
pub use error::StoreError;
pub use file::{FileJournal, JournalReader, Options, Verified, verify};
pub use frame::MAX_PAYLOAD;
pub use mem::MemJournal;

/// The checks every implementation makes before it touches storage: a poisoned
/// journal takes nothing, and no record may exceed [`MAX_PAYLOAD`].
pub(crate) fn check_batch(poisoned: bool, payloads: &[&[u8]]) -> Result<(), StoreError> {
    if poisoned {
        return Err(StoreError::Poisoned);
    }
    if let Some(p) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD) {
        return Err(StoreError::RecordTooLarge {
            len: p.len(),
            max: MAX_PAYLOAD,
        });
    }
    Ok(())
}

/// A snapshot write prepared by [`Journal::prepare_snapshot`]: the same atomic
/// discipline as [`Journal::write_snapshot`], without the journal.
pub trait SnapshotWrite: Send {
    /// Stores `bytes` as the snapshot this writer was prepared for.
    fn write(self: Box<Self>, bytes: &[u8]) -> Result<(), StoreError>;
}

/// Stores a snapshot of a journal shared behind a mutex (the hub's engine thread
/// appends through the same mutex), holding the mutex only to prepare the write
/// when the journal allows it: a commit then never waits behind a snapshot's
/// fsync. Falls back to [`Journal::write_snapshot`] under the mutex otherwise.
/// A poisoned mutex is recovered: the journal guards its own state.
pub fn write_snapshot_shared(
    journal: &Mutex<Box<dyn Journal>>,
    seq: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let lock = || journal.lock().unwrap_or_else(PoisonError::into_inner);
    // Bound first: the guard must be dropped before the write, not at the end of
    // the `match`.
    let prepared = lock().prepare_snapshot(seq)?;
    match prepared {
        Some(writer) => writer.write(bytes),
        None => lock().write_snapshot(seq, bytes),
    }
}

/// One journal record: its seq and its opaque bytes (an encoded event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the one global sequence; the first record ever has seq 1.
    pub seq: u64,
    /// The bytes given to `append_batch`.
    pub payload: Vec<u8>,
}

/// A durable, append-only, totally ordered log of opaque records plus snapshots.
///
/// Implemented by [`FileJournal`] (embedded), [`MemJournal`] (tests), and on paper by a
/// JetStream stream (see the crate docs). Object safe: `Box<dyn Journal>` works.
pub trait Journal: Send {
    /// The journal's identity: created with it, unchanged across restarts, different
    /// for a new data directory. Clients resume only within the same epoch.
    fn epoch(&self) -> &str;

    /// Seq of the oldest record still retained; `last_seq() + 1` when none are.
    fn first_seq(&self) -> u64;

    /// Seq of the newest durable record; 0 when nothing was ever appended.
    fn last_seq(&self) -> u64;

    /// Appends the payloads as one batch with consecutive seqs, durable (fsynced) before
    /// returning, and returns their seqs. An empty batch does no I/O and returns the
    /// empty range `last_seq + 1 ..= last_seq`.
    ///
    /// On `Err`, nothing of the batch counts as saved and the journal is poisoned: every
    /// later append fails with [`StoreError::Poisoned`] until reopened (except
    /// [`StoreError::RecordTooLarge`], which is checked before any I/O).
    fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError>;

    /// Starts appending the payloads as one batch and returns the seqs they get.
    /// A [`pipelined`](Journal::pipelined) journal returns before the batch is
    /// durable: nothing of it may be acknowledged to anyone until
    /// [`wait_durable`](Journal::wait_durable) covers its last seq, and later
    /// batches may be submitted meanwhile (they follow it in order). The default
    /// is [`append_batch`](Journal::append_batch): durable on return. Errors as
    /// for `append_batch`.
    fn submit_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError> {
        self.append_batch(payloads)
    }

    /// Waits until every submitted record up to `seq` is durable. On `Err` no
    /// record not yet durable counts as saved, and the journal is poisoned. The
    /// default has nothing in flight.
    fn wait_durable(&mut self, seq: u64) -> Result<(), StoreError> {
        let _ = seq;
        Ok(())
    }

    /// True when [`submit_batch`](Journal::submit_batch) returns before the batch
    /// is durable, so a writer gains by keeping several batches in flight.
    fn pipelined(&self) -> bool {
        false
    }

    /// Up to `max` records with seq > `after_seq`, in order (empty if there are none
    /// yet). [`StoreError::Compacted`] if some of them are no longer retained, i.e.
    /// `after_seq + 1 < first_seq()`.
    fn read_from(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, StoreError>;

    /// Stores `bytes` as the state after every event up to `seq` (<= `last_seq`),
    /// atomically (tmp file, fsync, rename, fsync dir); keeps the newest two.
    fn write_snapshot(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError>;

    /// Checks a snapshot at `seq` (<= `last_seq`) and hands back a writer that
    /// stores it without borrowing the journal, so the slow part (write, fsync,
    /// rename, prune) can run while others append. `Ok(None)`, the default: this
    /// journal has no such path, use [`Journal::write_snapshot`]. Writes made by
    /// such writers are serialized among themselves and with `write_snapshot`.
    fn prepare_snapshot(&self, seq: u64) -> Result<Option<Box<dyn SnapshotWrite>>, StoreError> {
        let _ = seq;
        Ok(None)
    }

    /// The newest snapshot that verifies, as `(seq, bytes)`; `None` if none was written.
    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// The seq of the newest complete snapshot, without reading it (another
    /// process may have written it: a takeover need not write its own at once).
    /// The default reads it; a journal that can list its snapshots says so.
    fn latest_snapshot_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.latest_snapshot()?.map(|(seq, _)| seq))
    }

    /// Drops old history that is both older than the last `keep_events` events and
    /// covered by a snapshot (by the older of the two kept ones, so the fallback
    /// snapshot stays replayable). [`FileJournal`] drops whole segments only and never
    /// the active one. Returns the new `first_seq()`.
    fn compact(&mut self, keep_events: u64) -> Result<u64, StoreError>;

    /// Whether every record after `after_seq` is still here, so a client that has seen
    /// up to `after_seq` (in this epoch) can resume with `recovered: true`.
    fn reaches_back(&self, after_seq: u64) -> bool {
        after_seq + 1 >= self.first_seq() && after_seq <= self.last_seq()
    }
}
