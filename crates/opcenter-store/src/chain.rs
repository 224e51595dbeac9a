//! The journal's audit hash chain: the link function, the segment header that
//! carries the hash before a segment's first record, and the checkpoint file.
//! Owns the chain's definition; must never decide what a break means for the
//! server (that is the caller's policy, `Options::accept_broken_chain`).
//!
//! ```text
//! h_0 = 32 zero bytes
//! h_n = SHA-256(h_{n-1} ‖ seq_n as u64 LE ‖ payload_n)
//! ```
//!
//! The seq is hashed with the payload so a record cannot be moved to another place
//! in the chain. Every frame stores its `h_n` (`frame.rs`), so a check is local:
//! record n is fine when `SHA-256(stored h_{n-1} ‖ seq ‖ payload) == stored h_n`,
//! and a verifier names the first record whose link does not hold.
//!
//! Segment header (format 2), written with a segment's first batch:
//!
//! ```text
//! 0  8 bytes  magic "OPCJRNL2"
//! 8  [u8;32]  h of the record before the segment's first one (the chain's base
//!             once older segments are compacted away)
//! 40 u32 LE   crc32 of bytes 0..40
//! 44 4 bytes  zero
//! ```
//!
//! Checkpoints: `<dir>/chain-checkpoints`, one line per checkpoint, appended and
//! fsynced after the batch it names is durable:
//! `<seq> <h_seq, 64 hex> <unix ms> <crc32 of the text before it, 8 hex>`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::StoreError;

/// A chain hash.
pub type Hash = [u8; 32];

/// The hash before the first record ever written.
pub const GENESIS: Hash = [0; 32];

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"OPCJRNL2";
/// Bytes of the segment header in front of the first frame.
pub(crate) const SEGMENT_HEADER_LEN: usize = 48;
pub(crate) const CHECKPOINT_FILE: &str = "chain-checkpoints";

/// `h_n` from `h_{n-1}` and record n.
pub fn link(prev: &Hash, seq: u64, payload: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// Lower-case hex of a hash.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash from 64 hex digits (either case).
pub fn unhex(text: &str) -> Option<Hash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Appends a segment header with base `prev` to `buf`.
pub(crate) fn encode_segment_header(buf: &mut Vec<u8>, prev: &Hash) {
    let at = buf.len();
    buf.extend_from_slice(SEGMENT_MAGIC);
    buf.extend_from_slice(prev);
    let crc = crc32fast::hash(&buf[at..at + 40]);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
}

/// What the first bytes of a segment are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SegmentHead {
    /// No data yet (empty, or the zero tail of preallocation).
    Empty,
    /// A valid header: the hash before the segment's first record.
    Base(Hash),
    /// Anything else: a torn first write, damage, or a format-1 segment.
    Bad,
}

pub(crate) fn parse_segment_header(data: &[u8]) -> SegmentHead {
    let head = &data[..data.len().min(SEGMENT_HEADER_LEN)];
    if head.iter().all(|&b| b == 0) {
        return SegmentHead::Empty;
    }
    if head.len() < SEGMENT_HEADER_LEN || &head[0..8] != SEGMENT_MAGIC {
        return SegmentHead::Bad;
    }
    let crc = u32::from_le_bytes([head[40], head[41], head[42], head[43]]);
    if crc32fast::hash(&head[..40]) != crc {
        return SegmentHead::Bad;
    }
    let mut base = [0u8; 32];
    base.copy_from_slice(&head[8..40]);
    SegmentHead::Base(base)
}

/// One published point of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last record it covers.
    pub seq: u64,
    /// `h_seq`.
    pub hash: Hash,
    /// When it was written (Unix milliseconds, the server's clock).
    pub unix_ms: u64,
}

impl Checkpoint {
    /// The checkpoint as one line (with its trailing newline):
    /// `<seq> <hash hex> <unix ms> <crc32 hex>`. The NATS journal stores the same
    /// line (without the newline) in its checkpoint bucket.
    pub fn line(&self) -> String {
        let text = format!("{} {} {}", self.seq, hex(&self.hash), self.unix_ms);
        format!("{text} {:08x}\n", crc32fast::hash(text.as_bytes()))
    }

    /// A checkpoint from one line without its newline; `None` when damaged.
    pub fn parse(line: &str) -> Option<Checkpoint> {
        let (text, crc) = line.rsplit_once(' ')?;
        if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(text.as_bytes()) {
            return None;
        }
        let mut parts = text.split(' ');
        let seq = parts.next()?.parse().ok()?;
        let hash = unhex(parts.next()?)?;
        let unix_ms = parts.next()?.parse().ok()?;
        parts
            .next()
            .is_none()
            .then_some(Checkpoint { seq, hash, unix_ms })
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends one checkpoint line and (with `fsync`) makes it durable.
pub(crate) fn append_checkpoint(dir: &Path, cp: &Checkpoint, fsync: bool) -> Result<(), StoreError> {
    let path = dir.join(CHECKPOINT_FILE);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(StoreError::io("open checkpoints", &path))?;
    f.write_all(cp.line().as_bytes())
        .map_err(StoreError::io("write checkpoint", &path))?;
    if fsync {
        f.sync_data()
            .map_err(StoreError::io("fsync checkpoints", &path))?;
    }
    Ok(())
}

/// Every checkpoint in `dir`, oldest first. A damaged last line is a checkpoint
/// write torn by a crash and is skipped with a warning; a damaged line before a
/// good one is corruption.
pub fn read_checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, StoreError> {
    let path = dir.join(CHECKPOINT_FILE);
    let text = match fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("read checkpoints", &path)(e)),
    };
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut torn: Option<u64> = None;
    for line in text.split_inclusive('\n') {
        if let Some(at) = torn {
            return Err(StoreError::corrupt(&path, at, "damaged checkpoint line"));
        }
        match line.strip_suffix('\n').and_then(Checkpoint::parse) {
            Some(cp) => out.push(cp),
            None => torn = Some(offset),
        }
        offset += line.len() as u64;
    }
    if let Some(at) = torn {
        tracing::warn!(path = %path.display(), offset = at, "skipping a torn last checkpoint line");
    }
    Ok(out)
}

/// A place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The record whose link fails (or the checkpoint's seq).
    pub seq: u64,
    /// The segment (or checkpoint file) where it shows.
    pub path: PathBuf,
    /// Byte offset of that record's frame (or segment header) in `path`.
    pub offset: u64,
    /// What does not match.
    pub reason: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seq {} in {} at byte {}: {}",
            self.seq,
            self.path.display(),
            self.offset,
            self.reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_lines_round_trip_and_reject_damage() {
        let cp = Checkpoint {
            seq: 42,
            hash: link(&GENESIS, 1, b"x"),
            unix_ms: 1_700_000_000_000,
        };
        let line = cp.line();
        assert_eq!(Checkpoint::parse(line.trim_end()), Some(cp));
        let damaged = line.replacen("42", "43", 1);
        assert_eq!(Checkpoint::parse(damaged.trim_end()), None);
    }

    #[test]
    fn segment_header_round_trips() {
        let mut buf = Vec::new();
        encode_segment_header(&mut buf, &[9; 32]);
        assert_eq!(buf.len(), SEGMENT_HEADER_LEN);
        assert_eq!(parse_segment_header(&buf), SegmentHead::Base([9; 32]));
        assert_eq!(parse_segment_header(&[0; 10]), SegmentHead::Empty);
        buf[12] ^= 1;
        assert_eq!(parse_segment_header(&buf), SegmentHead::Bad);
    }

    #[test]
    fn links_depend_on_every_input() {
        let a = link(&GENESIS, 1, b"a");
        assert_ne!(a, link(&GENESIS, 2, b"a"));
        assert_ne!(a, link(&GENESIS, 1, b"b"));
        assert_ne!(a, link(&[1; 32], 1, b"a"));
        assert_eq!(hex(&a).len(), 64);
        assert_eq!(unhex(&hex(&a)), Some(a));
    }
}
