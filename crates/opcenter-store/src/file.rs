//! `FileJournal`: the embedded journal, a CRC-framed segmented append-only log plus
//! snapshot files in one directory. Owns recovery (scan, torn-tail truncation),
//! group commit, segment rolling, the read index and compaction. Must never
//! acknowledge an append that is not on disk, and never open over damaged history
//! as if it were fine.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::frame::{self, Bad, HEADER_LEN};
use crate::fsutil::{self, parse_seq_name, seq_name, sync_dir, write_atomic};
use crate::{Journal, Record, SnapshotWrite, StoreError, snapshot};

const SEGMENT_PREFIX: &str = "journal-";
const SEGMENT_SUFFIX: &str = ".log";
const EPOCH_FILE: &str = "epoch";
/// One sparse index entry per this many bytes of a segment: 64 KiB means `read_from`
/// reads at most ~64 KiB it does not need, and 1M records of 300 B cost ~5 000 entries.
const INDEX_EVERY: u64 = 64 * 1024;

/// Settings of a [`FileJournal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `fdatasync` every batch before `append_batch` returns (default `true`). Turn off
    /// only for load tests: with `false`, "acknowledged" no longer means durable.
    pub fsync: bool,
    /// A new segment is started before a batch once the current one holds at least this
    /// many bytes (default 64 MiB). Batches never span segments.
    pub segment_bytes: u64,
    /// The active segment is grown ahead of the data by writing this many zero bytes
    /// at a time (default 1 MiB; 0 turns it off). A batch then overwrites blocks that
    /// already exist, so its `fdatasync` changes no file-system metadata and skips the
    /// file-system journal commit: measured here, about half the latency, and far less
    /// exposed to other processes' dirty pages (see README.md).
    pub preallocate_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            segment_bytes: 64 << 20,
            preallocate_bytes: 1 << 20,
        }
    }
}

/// One segment file `journal-<start>.log`.
#[derive(Debug)]
struct Segment {
    /// Seq of its first record (also in its name).
    start: u64,
    path: PathBuf,
    /// Committed bytes: everything after is zeros (preallocated) or nothing.
    len: u64,
    /// File size on disk: `len` plus the preallocated zero tail.
    alloc: u64,
    /// Seq of its last record; `start - 1` while empty.
    last_seq: u64,
    /// Sparse (seq, byte offset) pairs, ascending, first one at offset 0 when non-empty.
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.last_seq < self.start
    }

    fn push_index(&mut self, seq: u64, offset: u64) {
        if self
            .index
            .last()
            .is_none_or(|&(_, at)| offset - at >= INDEX_EVERY)
        {
            self.index.push((seq, offset));
        }
    }
}

/// The embedded journal. See the crate docs for the format and the recovery rules.
#[derive(Debug)]
pub struct FileJournal {
    dir: PathBuf,
    opts: Options,
    epoch: String,
    /// Ascending by `start`, contiguous in seq; the last one is the one appended to.
    segments: Vec<Segment>,
    /// Open append handle of `segments.last()`; `None` before the first append.
    active: Option<File>,
    last_seq: u64,
    /// Set when an append failed: the file tail is unknown until reopened.
    poisoned: bool,
    /// Reused encode buffer so a batch costs no allocation once warm.
    buf: Vec<u8>,
    /// Holds the directory's exclusive advisory lock for as long as it is open.
    _lock: File,
    /// Serializes snapshot writes, which run outside `&mut self` (see
    /// [`Journal::prepare_snapshot`]): two writes of one seq share a tmp file.
    snapshot_writes: Arc<Mutex<()>>,
}

/// What a scan of one segment's bytes found.
struct Scan {
    /// Bytes up to the end of the last complete batch.
    committed_len: u64,
    /// Seq of the last record of the last complete batch (`start - 1` if none).
    committed_last: u64,
    /// Where the run of valid, in-order frames stops (>= `committed_len`).
    stop: usize,
    /// Why it stopped; `None` if at the end of the data.
    bad: Option<Bad>,
    /// Valid frames after `committed_len` (a torn batch's surviving prefix).
    uncommitted: u64,
    index: Vec<(u64, u64)>,
}

fn scan(path: &Path, data: &[u8], start: u64) -> Result<Scan, StoreError> {
    let mut off = 0usize;
    let mut expected = start;
    let mut in_batch = false;
    let mut seg = Segment {
        start,
        path: PathBuf::new(),
        len: 0,
        alloc: 0,
        last_seq: start - 1,
        index: Vec::new(),
    };
    let mut uncommitted = 0;
    let bad = loop {
        if off == data.len() {
            break None;
        }
        let f = match frame::decode(&data[off..]) {
            Ok(f) => f,
            Err(bad) => break Some(bad),
        };
        if f.seq != expected {
            if f.seq > expected {
                // A valid checksum means we wrote this frame: a real gap, never garbage.
                return Err(StoreError::SeqGap {
                    path: path.into(),
                    expected,
                    found: f.seq,
                });
            }
            // An older seq is stale bytes (e.g. a reused disk block after a crash).
            break Some(Bad::Crc);
        }
        if f.start == in_batch {
            return Err(StoreError::corrupt(
                path,
                off as u64,
                "batch start/end flags out of order",
            ));
        }
        seg.push_index(f.seq, off as u64);
        in_batch = !f.end;
        off += f.total_len();
        expected += 1;
        uncommitted += 1;
        if f.end {
            seg.len = off as u64;
            seg.last_seq = f.seq;
            uncommitted = 0;
        }
    };
    let committed_len = seg.len;
    seg.index.retain(|&(_, at)| at < committed_len);
    Ok(Scan {
        committed_len,
        committed_last: seg.last_seq,
        stop: off,
        bad,
        uncommitted,
        index: seg.index,
    })
}

/// Looks past a damaged spot at `from` for proof that a later batch was written: then
/// the damaged batch had been fsynced (we write a batch only after the previous one's
/// fsync returned) and so may have been acknowledged, and truncating would lose it.
/// Proof is a valid frame that starts a batch after the torn one (`seq > torn_start`),
/// or any valid frame after a valid batch end. The only frames a crash can leave behind
/// the damage are those of the one unfinished batch, which prove neither.
fn later_batch_after(data: &[u8], from: usize, committed_last: u64) -> Option<usize> {
    let torn_start = committed_last + 1;
    // A seq can only be this far ahead if every byte in between were headers.
    let hi = committed_last + 1 + (data.len() / HEADER_LEN) as u64;
    let mut seen_end = false;
    let mut off = from;
    while off + HEADER_LEN <= data.len() {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&data[off + 8..off + 16]);
        let seq = u64::from_le_bytes(seq);
        // Cheap filter first so garbage tails cost one compare per byte, not a CRC.
        if seq > committed_last
            && seq <= hi
            && let Ok(f) = frame::decode(&data[off..])
        {
            if seen_end || (f.start && f.seq > torn_start) {
                return Some(off);
            }
            seen_end |= f.end;
            off += f.total_len();
            continue;
        }
        off += 1;
    }
    None
}

/// Grows `file` from `from` to `to` bytes with real zeros (not a sparse `set_len`, whose
/// holes would still need block allocation at the first write) and makes the new size
/// durable, so later batches overwrite allocated blocks.
fn preallocate(file: &mut File, from: u64, to: u64, fsync: bool) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    file.seek(SeekFrom::Start(from))?;
    let mut left = to - from;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        file.write_all(&ZEROS[..n])?;
        left -= n as u64;
    }
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

impl FileJournal {
    /// Opens the journal in `dir`, creating the directory and a new epoch if it holds
    /// no journal yet, and recovering it otherwise (see the crate docs, "Recovery").
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<FileJournal, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
        // One writer per directory: a second server on the same data would
        // interleave appends. The lock dies with the process, even on kill -9.
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("open lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { dir }),
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &lock_path)(e)),
        }

        let mut starts = Vec::new();
        let mut has_snapshots = false;
        let mut has_epoch = false;
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == EPOCH_FILE {
                has_epoch = true;
            } else if name.ends_with(fsutil::TMP_SUFFIX) {
                // A snapshot or epoch write that crashed before its rename: never valid.
                let p = entry.path();
                fs::remove_file(&p).map_err(StoreError::io("remove leftover", &p))?;
            } else if name.starts_with(SEGMENT_PREFIX) && name.ends_with(SEGMENT_SUFFIX) {
                let start = parse_seq_name(name, SEGMENT_PREFIX, SEGMENT_SUFFIX)
                    .filter(|&s| s >= 1)
                    .ok_or_else(|| StoreError::corrupt(entry.path(), 0, "unparsable segment file name"))?;
                starts.push(start);
            } else if snapshot::parse_name(name).is_some() {
                has_snapshots = true;
            }
        }
        starts.sort_unstable();

        let epoch_path = dir.join(EPOCH_FILE);
        let epoch = if has_epoch {
            let raw = fs::read_to_string(&epoch_path).map_err(StoreError::io("read epoch", &epoch_path))?;
            let epoch = raw.trim().to_string();
            if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(StoreError::corrupt(
                    &epoch_path,
                    0,
                    "epoch file is empty or not text",
                ));
            }
            epoch
        } else if !starts.is_empty() || has_snapshots {
            return Err(StoreError::MissingEpoch { dir });
        } else {
            let epoch = fsutil::new_epoch();
            // Always fsynced, whatever `opts.fsync` says: once, and it names the history.
            write_atomic(&epoch_path, format!("{epoch}\n").as_bytes(), true)?;
            epoch
        };

        let snapshots = snapshot::list(&dir)?;
        let mut segments: Vec<Segment> = Vec::with_capacity(starts.len());
        let count = starts.len();
        for (i, &start) in starts.iter().enumerate() {
            let path = dir.join(seq_name(SEGMENT_PREFIX, start, SEGMENT_SUFFIX));
            let expected = match segments.last() {
                Some(prev) => prev.last_seq + 1,
                // Older segments may be compacted away, but only behind a snapshot.
                None => snapshots.last().map_or(1, |&s| s + 1).min(start),
            };
            if start != expected {
                return Err(StoreError::SeqGap {
                    path,
                    expected,
                    found: start,
                });
            }
            let data = fs::read(&path).map_err(StoreError::io("read segment", &path))?;
            let s = scan(&path, &data, start)?;
            let is_last = i + 1 == count;
            let zero_tail = data[s.committed_len as usize..].iter().all(|&b| b == 0);
            let mut alloc = data.len() as u64;
            if !zero_tail {
                let at = s.stop;
                let reason = s.bad.map_or("unfinished batch", Bad::as_str);
                if !is_last {
                    return Err(StoreError::corrupt(
                        &path,
                        at as u64,
                        format!("{reason} in a sealed segment"),
                    ));
                }
                if let Some(later) = later_batch_after(&data, at + 1, s.committed_last) {
                    return Err(StoreError::corrupt(
                        &path,
                        at as u64,
                        format!("{reason}, followed by a later committed batch at byte {later}"),
                    ));
                }
                let dropped = data.len() as u64 - s.committed_len;
                tracing::warn!(
                    path = %path.display(),
                    offset = s.committed_len,
                    dropped_bytes = dropped,
                    dropped_records = s.uncommitted,
                    reason,
                    "journal: truncating torn tail (an unacknowledged batch)"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(StoreError::io("open", &path))?;
                f.set_len(s.committed_len)
                    .map_err(StoreError::io("truncate", &path))?;
                f.sync_all().map_err(StoreError::io("fsync", &path))?;
                alloc = s.committed_len;
            }
            segments.push(Segment {
                start,
                path,
                len: s.committed_len,
                alloc,
                last_seq: s.committed_last,
                index: s.index,
            });
        }

        let last_seq = segments.last().map_or(0, |s| s.last_seq);
        if let Some(&snap) = snapshots.last()
            && snap > last_seq
        {
            return Err(StoreError::SnapshotAhead { seq: snap, last_seq });
        }
        let active = match segments.last() {
            Some(seg) => Some(
                OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(StoreError::io("open for append", &seg.path))?,
            ),
            None => None,
        };
        tracing::debug!(dir = %dir.display(), epoch, last_seq, segments = segments.len(), "journal opened");
        Ok(FileJournal {
            dir,
            opts,
            epoch,
            segments,
            active,
            last_seq,
            poisoned: false,
            buf: Vec::new(),
            _lock: lock,
            snapshot_writes: Arc::default(),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of segment files (for metrics and tests).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// True after a failed append; every later append fails until the journal is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Starts a new segment if there is none or the active one is full.
    fn roll_if_needed(&mut self) -> Result<(), StoreError> {
        let full = match self.segments.last() {
            None => true,
            Some(seg) => seg.len >= self.opts.segment_bytes && seg.len > 0,
        };
        if !full {
            return Ok(());
        }
        // Seal the old segment at its exact length: only the active one has a zero tail.
        if let (Some(seg), Some(file)) = (self.segments.last_mut(), self.active.as_ref())
            && seg.alloc > seg.len
        {
            file.set_len(seg.len)
                .map_err(StoreError::io("trim segment", &seg.path))?;
            if self.opts.fsync {
                file.sync_all()
                    .map_err(StoreError::io("fsync segment", &seg.path))?;
            }
            seg.alloc = seg.len;
        }
        let start = self.last_seq + 1;
        let path = self.dir.join(seq_name(SEGMENT_PREFIX, start, SEGMENT_SUFFIX));
        // `create_new`: a file by that name would be history we did not scan; never clobber it.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io("create segment", &path))?;
        if self.opts.fsync {
            sync_dir(&self.dir)?;
        }
        self.segments.push(Segment {
            start,
            path,
            len: 0,
            alloc: 0,
            last_seq: start - 1,
            index: Vec::new(),
        });
        self.active = Some(file);
        Ok(())
    }

    fn try_append(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError> {
        self.roll_if_needed()?;
        let first = self.last_seq + 1;
        let n = payloads.len();
        self.buf.clear();
        for (i, p) in payloads.iter().enumerate() {
            frame::encode(&mut self.buf, first + i as u64, p, i == 0, i + 1 == n);
        }
        // Both exist: `roll_if_needed` just made sure of a segment and its handle.
        let (Some(seg), Some(file)) = (self.segments.last_mut(), self.active.as_mut()) else {
            unreachable!("roll_if_needed leaves an active segment");
        };
        let end = seg.len + self.buf.len() as u64;
        if end > seg.alloc && self.opts.preallocate_bytes > 0 {
            let target = end.max(seg.alloc + self.opts.preallocate_bytes);
            preallocate(file, seg.alloc, target, self.opts.fsync)
                .map_err(StoreError::io("preallocate segment", &seg.path))?;
            seg.alloc = target;
        }
        // Group commit: the whole batch in one write and one fdatasync.
        file.seek(SeekFrom::Start(seg.len))
            .map_err(StoreError::io("seek segment", &seg.path))?;
        file.write_all(&self.buf)
            .map_err(StoreError::io("write segment", &seg.path))?;
        if self.opts.fsync {
            file.sync_data()
                .map_err(StoreError::io("fsync segment", &seg.path))?;
        }
        let mut off = seg.len;
        for (i, p) in payloads.iter().enumerate() {
            seg.push_index(first + i as u64, off);
            off += (HEADER_LEN + p.len()) as u64;
        }
        seg.len = off;
        seg.alloc = seg.alloc.max(off);
        seg.last_seq = first + n as u64 - 1;
        self.last_seq = seg.last_seq;
        Ok(first..=self.last_seq)
    }

    /// Reads records of one segment with seq >= `from` into `out`, up to `max` in all.
    fn read_segment(
        &self,
        seg: &Segment,
        from: u64,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), StoreError> {
        let at = seg
            .index
            .partition_point(|&(seq, _)| seq <= from)
            .saturating_sub(1);
        let (mut seq_at, mut off) = seg.index.get(at).copied().unwrap_or((seg.start, 0));
        let mut file = File::open(&seg.path).map_err(StoreError::io("open segment", &seg.path))?;
        file.seek(SeekFrom::Start(off))
            .map_err(StoreError::io("seek segment", &seg.path))?;
        // `take`: bytes past the committed length are not ours to return.
        let mut r = BufReader::with_capacity(256 * 1024, file.take(seg.len - off));
        let mut head = [0u8; HEADER_LEN];
        while off < seg.len && out.len() < max {
            let bad = |off: u64, why: &str| StoreError::corrupt(&seg.path, off, why);
            r.read_exact(&mut head)
                .map_err(StoreError::io("read segment", &seg.path))?;
            let (f, crc) = frame::parse_header(&head).map_err(|b| bad(off, b.as_str()))?;
            if f.seq != seq_at {
                return Err(StoreError::SeqGap {
                    path: seg.path.clone(),
                    expected: seq_at,
                    found: f.seq,
                });
            }
            let mut payload = vec![0u8; f.payload_len];
            r.read_exact(&mut payload)
                .map_err(StoreError::io("read segment", &seg.path))?;
            // Checked again on read: the file may have rotted since open.
            if !frame::crc_ok(&head, &payload, crc) {
                return Err(bad(off, "checksum mismatch"));
            }
            if f.seq >= from {
                out.push(Record { seq: f.seq, payload });
            }
            off += f.total_len() as u64;
            seq_at += 1;
        }
        Ok(())
    }

    /// A writer for the snapshot at `seq`, refused if the journal lacks that seq.
    fn snapshot_writer(&self, seq: u64) -> Result<snapshot::Writer, StoreError> {
        if seq > self.last_seq {
            return Err(StoreError::SnapshotAhead {
                seq,
                last_seq: self.last_seq,
            });
        }
        Ok(snapshot::Writer {
            dir: self.dir.clone(),
            seq,
            fsync: self.opts.fsync,
            serial: Arc::clone(&self.snapshot_writes),
        })
    }

    /// Seq up to which the snapshots cover history, for compaction: the OLDER of the
    /// two kept snapshots, so that if the newest is found damaged, the fallback one can
    /// still be replayed forward from the journal.
    fn covered_seq(&self) -> Result<Option<u64>, StoreError> {
        let snaps = snapshot::list(&self.dir)?;
        Ok(snaps.get(snaps.len().saturating_sub(snapshot::KEEP)).copied())
    }
}

impl Journal for FileJournal {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn first_seq(&self) -> u64 {
        self.segments.first().map_or(self.last_seq + 1, |s| s.start)
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError> {
        crate::check_batch(self.poisoned, payloads)?;
        if payloads.is_empty() {
            #[allow(clippy::reversed_empty_ranges)] // documented: an empty batch is an empty range
            return Ok(self.last_seq + 1..=self.last_seq);
        }
        let result = self.try_append(payloads);
        if let Err(e) = &result {
            tracing::error!(error = %e, "journal append failed; refusing appends until reopened");
            self.poisoned = true;
        }
        result
    }

    fn read_from(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, StoreError> {
        let first_seq = self.first_seq();
        if after_seq + 1 < first_seq {
            return Err(StoreError::Compacted { after_seq, first_seq });
        }
        let from = after_seq + 1;
        let mut out = Vec::new();
        if from > self.last_seq || max == 0 {
            return Ok(out);
        }
        let mut i = self
            .segments
            .partition_point(|s| s.start <= from)
            .saturating_sub(1);
        while i < self.segments.len() && out.len() < max {
            let seg = &self.segments[i];
            if !seg.is_empty() && seg.last_seq >= from {
                self.read_segment(seg, from, max, &mut out)?;
            }
            i += 1;
        }
        Ok(out)
    }

    fn write_snapshot(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.snapshot_writer(seq)?.store(bytes)
    }

    // Compaction needs no part in the writers' serialization: it only reads the
    // list of snapshots, and the seq that list shows covered only ever grows.
    fn prepare_snapshot(&self, seq: u64) -> Result<Option<Box<dyn SnapshotWrite>>, StoreError> {
        Ok(Some(Box::new(self.snapshot_writer(seq)?)))
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        snapshot::latest(&self.dir)
    }

    fn compact(&mut self, keep_events: u64) -> Result<u64, StoreError> {
        let Some(covered) = self.covered_seq()? else {
            return Ok(self.first_seq());
        };
        // Every seq >= keep_from stays: the last `keep_events` ones and all the snapshot needs.
        let keep_from = (self.last_seq.saturating_sub(keep_events) + 1).min(covered + 1);
        let mut removed = 0;
        // The active segment always stays, so `last_seq` remains provable after a restart.
        while self.segments.len() > 1 && self.segments[1].start <= keep_from {
            // Oldest first: a crash midway still leaves a contiguous run of segments.
            let seg = &self.segments[0];
            fs::remove_file(&seg.path).map_err(StoreError::io("remove segment", &seg.path))?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            if self.opts.fsync {
                sync_dir(&self.dir)?;
            }
            tracing::info!(removed, first_seq = self.first_seq(), "journal compacted");
        }
        Ok(self.first_seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk, for real: the active handle is swapped for `/dev/full`, whose every
    /// write fails with ENOSPC. The append must fail, poison, and not move `last_seq`.
    #[cfg(target_os = "linux")]
    #[test]
    fn full_disk_append_fails_and_poisons() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
        j.append_batch(&[b"one"]).unwrap();
        j.active = Some(OpenOptions::new().write(true).open("/dev/full").unwrap());
        let err = j.append_batch(&[b"two"]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.raw_os_error() == Some(28)),
            "{err}"
        );
        assert!(matches!(j.append_batch(&[b"three"]), Err(StoreError::Poisoned)));
        assert_eq!(j.last_seq(), 1);
        drop(j);
        let j = FileJournal::open(dir.path(), Options::default()).unwrap();
        assert_eq!(j.last_seq(), 1);
    }

    #[test]
    fn scan_stops_at_stale_older_frames() {
        let mut data = Vec::new();
        frame::encode(&mut data, 5, b"a", true, true);
        frame::encode(&mut data, 2, b"old", true, true);
        let s = scan(Path::new("x"), &data, 5).unwrap();
        assert_eq!(s.committed_last, 5);
        assert_eq!(s.bad, Some(Bad::Crc));
        let mut gap = Vec::new();
        frame::encode(&mut gap, 5, b"a", true, true);
        frame::encode(&mut gap, 7, b"b", true, true);
        assert!(matches!(
            scan(Path::new("x"), &gap, 5),
            Err(StoreError::SeqGap { .. })
        ));
    }
}
