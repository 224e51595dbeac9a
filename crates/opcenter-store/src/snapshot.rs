//! Snapshot files `snapshot-<seq>.bin`: a CRC-checked header plus opaque bytes.
//! Owns their format, atomic writing and the "keep the latest two" rule; must never
//! interpret the snapshot bytes (they belong to the engine).
//!
//! ```text
//! 0  8 bytes  magic "OPCSNAP1"
//! 8  u64 LE   seq the snapshot covers (state after applying every event <= seq)
//! 16 u64 LE   payload length
//! 24 u32 LE   crc32 of bytes 8..24 and the payload
//! 28 [u8]     payload
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::fsutil::{parse_seq_name, seq_name, write_atomic};
use crate::{SnapshotWrite, StoreError};

const MAGIC: &[u8; 8] = b"OPCSNAP1";
const HEADER: usize = 28;
pub(crate) const PREFIX: &str = "snapshot-";
pub(crate) const SUFFIX: &str = ".bin";
/// How many snapshots stay on disk: the newest, plus one to fall back to if the newest
/// is found damaged.
pub(crate) const KEEP: usize = 2;

pub(crate) fn parse_name(name: &str) -> Option<u64> {
    parse_seq_name(name, PREFIX, SUFFIX)
}

pub(crate) fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(seq_name(PREFIX, seq, SUFFIX))
}

fn crc(seq: u64, len: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Writes a snapshot atomically and returns its path.
pub(crate) fn write(dir: &Path, seq: u64, bytes: &[u8], fsync: bool) -> Result<PathBuf, StoreError> {
    let len = bytes.len() as u64;
    let mut buf = Vec::with_capacity(HEADER + bytes.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc(seq, len, bytes).to_le_bytes());
    buf.extend_from_slice(bytes);
    let p = path(dir, seq);
    write_atomic(&p, &buf, fsync)?;
    Ok(p)
}

/// A `FileJournal` snapshot write, off the journal: `serial` (one per journal)
/// keeps two writes from sharing the tmp file or pruning under each other.
pub(crate) struct Writer {
    pub(crate) dir: PathBuf,
    pub(crate) seq: u64,
    pub(crate) fsync: bool,
    pub(crate) serial: Arc<Mutex<()>>,
}

impl Writer {
    pub(crate) fn store(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        write(&self.dir, self.seq, bytes, self.fsync)?;
        prune(&self.dir)
    }
}

impl SnapshotWrite for Writer {
    fn write(self: Box<Self>, bytes: &[u8]) -> Result<(), StoreError> {
        self.store(bytes)
    }
}

/// Reads and verifies one snapshot file.
pub(crate) fn read(path: &Path) -> Result<(u64, Vec<u8>), StoreError> {
    let mut data = fs::read(path).map_err(StoreError::io("read snapshot", path))?;
    let bad = |offset: u64, reason: &str| StoreError::corrupt(path, offset, reason);
    if data.len() < HEADER || &data[0..8] != MAGIC {
        return Err(bad(0, "not a snapshot file (bad magic or too short)"));
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (seq, len) = (word(8), word(16));
    let stored = u32::from_le_bytes([data[24], data[25], data[26], data[27]]);
    if len != (data.len() - HEADER) as u64 {
        return Err(bad(16, "length field does not match file size"));
    }
    if crc(seq, len, &data[HEADER..]) != stored {
        return Err(bad(24, "checksum mismatch"));
    }
    data.drain(..HEADER);
    Ok((seq, data))
}

/// Snapshot seqs present in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// The newest snapshot that verifies. A damaged newest one is skipped with a warning
/// (the older one is still covered by the journal; see `FileJournal::compact`).
pub(crate) fn latest(dir: &Path) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let seqs = list(dir)?;
    let mut last_err = None;
    for &seq in seqs.iter().rev() {
        match read(&path(dir, seq)) {
            Ok(found) => return Ok(Some(found)),
            Err(e) => {
                tracing::warn!(seq, error = %e, "snapshot unreadable, trying an older one");
                last_err = Some(e);
            }
        }
    }
    // Snapshots exist but none verifies: starting from nothing would silently lose
    // the compacted history, so report the damage instead.
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Deletes all but the newest [`KEEP`] snapshots.
pub(crate) fn prune(dir: &Path) -> Result<(), StoreError> {
    let seqs = list(dir)?;
    for &seq in seqs.iter().rev().skip(KEEP) {
        let p = path(dir, seq);
        fs::remove_file(&p).map_err(StoreError::io("remove old snapshot", &p))?;
    }
    Ok(())
}
