//! `MemJournal`: the same [`Journal`] contract held in memory, for engine and hub
//! tests. Owns nothing durable and must never be used where "acknowledged means
//! durable" is promised.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use crate::{Journal, Record, StoreError, fsutil, snapshot};

/// An in-memory journal with the same semantics as [`FileJournal`](crate::FileJournal),
/// compaction per record instead of per segment, and a switch to make appends fail.
#[derive(Debug, Clone)]
pub struct MemJournal {
    epoch: String,
    records: VecDeque<Record>,
    last_seq: u64,
    /// Newest last, at most [`snapshot::KEEP`].
    snapshots: Vec<(u64, Vec<u8>)>,
    fail_appends: bool,
    poisoned: bool,
}

impl Default for MemJournal {
    fn default() -> Self {
        Self::new()
    }
}

impl MemJournal {
    /// An empty journal with a fresh random epoch.
    pub fn new() -> MemJournal {
        MemJournal::with_epoch(fsutil::new_epoch())
    }

    /// An empty journal with a given epoch (deterministic tests).
    pub fn with_epoch(epoch: impl Into<String>) -> MemJournal {
        MemJournal {
            epoch: epoch.into(),
            records: VecDeque::new(),
            last_seq: 0,
            snapshots: Vec::new(),
            fail_appends: false,
            poisoned: false,
        }
    }

    /// While `on`, every append fails with an I/O error and poisons the journal, as a
    /// full disk would: lets the hub test its "not acknowledged" path.
    pub fn fail_appends(&mut self, on: bool) {
        self.fail_appends = on;
    }

    /// Simulates a restart: clears the poisoned flag, keeps everything appended.
    pub fn reopen(&mut self) {
        self.poisoned = false;
    }
}

impl Journal for MemJournal {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn first_seq(&self) -> u64 {
        self.records.front().map_or(self.last_seq + 1, |r| r.seq)
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError> {
        crate::check_batch(self.poisoned, payloads)?;
        if self.fail_appends && !payloads.is_empty() {
            self.poisoned = true;
            return Err(StoreError::Io {
                op: "write (simulated)",
                path: "memory".into(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        let first = self.last_seq + 1;
        for (i, p) in payloads.iter().enumerate() {
            self.records.push_back(Record {
                seq: first + i as u64,
                payload: p.to_vec(),
            });
        }
        self.last_seq += payloads.len() as u64;
        Ok(first..=self.last_seq)
    }

    fn read_from(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, StoreError> {
        let first_seq = self.first_seq();
        if after_seq + 1 < first_seq {
            return Err(StoreError::Compacted { after_seq, first_seq });
        }
        let skip = (after_seq + 1 - first_seq) as usize;
        Ok(self.records.iter().skip(skip).take(max).cloned().collect())
    }

    fn write_snapshot(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        if seq > self.last_seq {
            return Err(StoreError::SnapshotAhead {
                seq,
                last_seq: self.last_seq,
            });
        }
        self.snapshots.retain(|(s, _)| *s != seq);
        self.snapshots.push((seq, bytes.to_vec()));
        self.snapshots.sort_by_key(|(s, _)| *s);
        let excess = self.snapshots.len().saturating_sub(snapshot::KEEP);
        self.snapshots.drain(..excess);
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.snapshots.last().cloned())
    }

    fn compact(&mut self, keep_events: u64) -> Result<u64, StoreError> {
        // Same rule as FileJournal: covered by the older of the kept snapshots.
        let Some(&(covered, _)) = self.snapshots.first() else {
            return Ok(self.first_seq());
        };
        let keep_from = (self.last_seq.saturating_sub(keep_events) + 1).min(covered + 1);
        while self.records.front().is_some_and(|r| r.seq < keep_from) {
            self.records.pop_front();
        }
        Ok(self.first_seq())
    }
}
