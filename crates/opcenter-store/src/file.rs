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

use std::time::{Duration, Instant};

use crate::chain::{self, ChainBreak, Checkpoint, GENESIS, Hash, SEGMENT_HEADER_LEN, SegmentHead};
use crate::frame::{self, Bad, HEADER_LEN};
use crate::fsutil::{self, parse_seq_name, seq_name, sync_dir, write_atomic};
use crate::{Journal, Record, SnapshotWrite, StoreError, snapshot};

const SEGMENT_PREFIX: &str = "journal-";
const SEGMENT_SUFFIX: &str = ".log";
const EPOCH_FILE: &str = "epoch";
/// One sparse index entry per this many bytes of a segment: 64 KiB means `read_from`
/// reads at most ~64 KiB it does not need, and 1M records of 300 B cost ~5 000 entries.
const INDEX_EVERY: u64 = 64 * 1024;
/// At most this many chain breaks are collected (the first one is what counts).
const MAX_BREAKS: usize = 100;

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
    /// A chain checkpoint is written once this many records were appended since the
    /// last one (default 10 000; 0 = never by count).
    pub checkpoint_records: u64,
    /// ...or at the first append this long after the last one (default 5 min;
    /// zero = never by time).
    pub checkpoint_interval: Duration,
    /// Open even if the audit chain is broken, logging every break at `error`
    /// (default `false`: [`StoreError::ChainBroken`]).
    pub accept_broken_chain: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            segment_bytes: 64 << 20,
            preallocate_bytes: 1 << 20,
            checkpoint_records: 10_000,
            checkpoint_interval: Duration::from_secs(300),
            accept_broken_chain: false,
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
    /// Sparse (seq, byte offset) pairs, ascending, the first one at the first frame.
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
    /// Chain hash of the last record (the base of the first segment when empty).
    head: Hash,
    /// Seq of the newest checkpoint, and when this process last wrote one (or opened).
    checkpoint_seq: u64,
    checkpoint_at: Instant,
    /// Holds the directory's exclusive advisory lock for as long as it is open.
    _lock: File,
    /// Serializes snapshot writes, which run outside `&mut self` (see
    /// [`Journal::prepare_snapshot`]): two writes of one seq share a tmp file.
    snapshot_writes: Arc<Mutex<()>>,
}

/// What a scan of one segment's bytes found.
struct Scan {
    /// Bytes up to the end of the last complete batch (0 if none: the header
    /// counts as part of the first batch).
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
    /// Stored chain hash of the last committed record (the base if none).
    head: Hash,
    /// Links that do not hold, among the committed records.
    breaks: Vec<ChainBreak>,
}

/// The chain as it reaches a segment: the hash of the record before it (if any
/// segment came before) and the checkpoints to compare with on the way.
struct ChainIn<'a> {
    prev: Option<Hash>,
    checkpoints: &'a [Checkpoint],
}

impl ChainIn<'_> {
    fn check_point(&self, seq: u64, hash: &Hash, path: &Path, offset: u64, breaks: &mut Vec<ChainBreak>) {
        if let Ok(i) = self.checkpoints.binary_search_by_key(&seq, |c| c.seq)
            && self.checkpoints[i].hash != *hash
            && breaks.len() < MAX_BREAKS
        {
            breaks.push(ChainBreak {
                seq,
                path: path.into(),
                offset,
                reason: format!(
                    "stored hash {} differs from the checkpoint written at unix ms {} ({})",
                    chain::hex(hash),
                    self.checkpoints[i].unix_ms,
                    chain::hex(&self.checkpoints[i].hash)
                ),
            });
        }
    }
}

fn scan(path: &Path, data: &[u8], start: u64, chain_in: &ChainIn<'_>) -> Result<Scan, StoreError> {
    let mut breaks = Vec::new();
    let mut prev = chain_in.prev.unwrap_or(GENESIS);
    let mut bad = None;
    let mut off = 0usize;
    match chain::parse_segment_header(data) {
        // Nothing written yet; any non-zero byte after is a torn first write, judged
        // by the zero-tail rule of the caller.
        SegmentHead::Empty => bad = Some(Bad::Short),
        SegmentHead::Bad => {
            if frame::is_v1_frame(data, start) {
                return Err(StoreError::OldFormat { path: path.into() });
            }
            bad = Some(Bad::Crc);
        }
        SegmentHead::Base(base) => {
            match chain_in.prev {
                Some(p) if p != base => breaks.push(ChainBreak {
                    seq: start,
                    path: path.into(),
                    offset: 0,
                    reason: format!(
                        "segment header's base {} is not the previous segment's last hash {}",
                        chain::hex(&base),
                        chain::hex(&p)
                    ),
                }),
                // The first retained segment: its base is the chain's anchor.
                None => chain_in.check_point(start - 1, &base, path, 0, &mut breaks),
                _ => {}
            }
            prev = base;
            off = SEGMENT_HEADER_LEN;
        }
    }
    let base = prev;
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
    let mut head = base;
    let mut uncommitted = 0;
    while bad.is_none() && off < data.len() {
        let f = match frame::decode(&data[off..]) {
            Ok(f) => f,
            Err(b) => {
                bad = Some(b);
                break;
            }
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
            bad = Some(Bad::Crc);
            break;
        }
        if f.start == in_batch {
            return Err(StoreError::corrupt(
                path,
                off as u64,
                "batch start/end flags out of order",
            ));
        }
        let payload = &data[off + HEADER_LEN..off + f.total_len()];
        if chain::link(&prev, f.seq, payload) != f.hash && breaks.len() < MAX_BREAKS {
            breaks.push(ChainBreak {
                seq: f.seq,
                path: path.into(),
                offset: off as u64,
                reason: "the record's hash is not SHA-256(previous hash, seq, payload): \
                         this record, or the hash before it, was changed"
                    .into(),
            });
        }
        chain_in.check_point(f.seq, &f.hash, path, off as u64, &mut breaks);
        prev = f.hash;
        seg.push_index(f.seq, off as u64);
        in_batch = !f.end;
        off += f.total_len();
        expected += 1;
        uncommitted += 1;
        if f.end {
            seg.len = off as u64;
            seg.last_seq = f.seq;
            head = f.hash;
            uncommitted = 0;
        }
    }
    let committed_len = seg.len;
    let committed_last = seg.last_seq;
    seg.index.retain(|&(_, at)| at < committed_len);
    // A torn batch's frames are about to be dropped: their links are not history.
    breaks.retain(|b| b.seq <= committed_last);
    Ok(Scan {
        committed_len,
        committed_last,
        stop: off,
        bad,
        uncommitted,
        index: seg.index,
        head,
        breaks,
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

/// What is in a data directory, by file name.
struct Listing {
    /// First seqs of the segment files, ascending.
    starts: Vec<u64>,
    has_snapshots: bool,
    has_epoch: bool,
}

/// Lists `dir`; with `clean`, deletes leftovers of atomic writes that crashed.
fn list_dir(dir: &Path, clean: bool) -> Result<Listing, StoreError> {
    let mut starts = Vec::new();
    let mut has_snapshots = false;
    let mut has_epoch = false;
    for entry in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == EPOCH_FILE {
            has_epoch = true;
        } else if name.ends_with(fsutil::TMP_SUFFIX) {
            // A snapshot or epoch write that crashed before its rename: never valid.
            if clean {
                let p = entry.path();
                fs::remove_file(&p).map_err(StoreError::io("remove leftover", &p))?;
            }
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
    Ok(Listing {
        starts,
        has_snapshots,
        has_epoch,
    })
}

/// The segments as recovered, and the chain through them.
struct Loaded {
    segments: Vec<Segment>,
    /// Stored hash of the last committed record (the base, or genesis, if none).
    head: Hash,
    breaks: Vec<ChainBreak>,
}

/// Reads and checks every segment (see the crate docs, "Recovery"). With `repair`,
/// a torn tail is truncated; without, it is only left out (a read-only walk).
fn load_segments(
    dir: &Path,
    starts: &[u64],
    checkpoints: &[Checkpoint],
    repair: bool,
) -> Result<Loaded, StoreError> {
    let snapshots = snapshot::list(dir)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(starts.len());
    let mut head = GENESIS;
    let mut breaks = Vec::new();
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
        let chain_in = ChainIn {
            prev: segments.last().map(|_| head),
            checkpoints,
        };
        let s = scan(&path, &data, start, &chain_in)?;
        head = s.head;
        breaks.extend(s.breaks.iter().cloned());
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
            if !repair {
                // A reader (`audit verify`) next to a live writer may see the
                // batch being written: stop before it, change nothing.
                segments.push(Segment {
                    start,
                    path,
                    len: s.committed_len,
                    alloc: data.len() as u64,
                    last_seq: s.committed_last,
                    index: s.index,
                });
                continue;
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
    // A checkpoint is written only after its batch was durable: one beyond the end
    // means acknowledged records were cut off the end of the journal.
    if let Some(cp) = checkpoints.iter().rev().find(|c| c.seq > last_seq)
        && breaks.len() < MAX_BREAKS
    {
        breaks.push(ChainBreak {
            seq: cp.seq,
            path: dir.join(chain::CHECKPOINT_FILE),
            offset: 0,
            reason: format!(
                "a checkpoint names seq {} (written at unix ms {}) but the journal ends at seq {last_seq}: \
                 records were removed from its end",
                cp.seq, cp.unix_ms
            ),
        });
    }
    breaks.sort_by_key(|b| b.seq);
    Ok(Loaded {
        segments,
        head,
        breaks,
    })
}

/// The result of [`verify`]: where the chain starts and ends, and where it breaks.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Oldest retained record (`last_seq + 1` if none).
    pub first_seq: u64,
    /// Newest committed record.
    pub last_seq: u64,
    /// The hash before `first_seq`: genesis, or the base kept when older segments
    /// were compacted away.
    pub base: Hash,
    /// Stored hash of `last_seq`.
    pub head: Hash,
    /// Checkpoints in the file (older ones than `first_seq - 1` cannot be compared).
    pub checkpoints: usize,
    /// Every break found (at most 100), in seq order; empty when the chain holds.
    pub breaks: Vec<ChainBreak>,
}

/// Walks the chain of the journal in `dir` without changing anything or taking the
/// lock (a server may be running): every record's link, every segment header, and
/// every checkpoint that still has its record. Damage that recovery itself refuses
/// (bad CRC in the middle, seq gaps, a format-1 directory) is an `Err`.
pub fn verify(dir: &Path) -> Result<Verified, StoreError> {
    let (loaded, checkpoints) = load_read_only(dir)?;
    let last_seq = loaded.segments.last().map_or(0, |s| s.last_seq);
    let first_seq = loaded.segments.first().map_or(last_seq + 1, |s| s.start);
    let base = match loaded.segments.first() {
        Some(seg) => match chain::parse_segment_header(&read_head(&seg.path)?) {
            SegmentHead::Base(b) => b,
            _ => GENESIS,
        },
        None => GENESIS,
    };
    Ok(Verified {
        first_seq,
        last_seq,
        base,
        head: loaded.head,
        checkpoints: checkpoints.len(),
        breaks: loaded.breaks,
    })
}

/// The segments of `dir` and its checkpoints, walked without the lock or repair.
fn load_read_only(dir: &Path) -> Result<(Loaded, Vec<Checkpoint>), StoreError> {
    let listing = list_dir(dir, false)?;
    if !listing.has_epoch && (!listing.starts.is_empty() || listing.has_snapshots) {
        return Err(StoreError::MissingEpoch { dir: dir.into() });
    }
    let checkpoints = chain::read_checkpoints(dir)?;
    let loaded = load_segments(dir, &listing.starts, &checkpoints, false)?;
    Ok((loaded, checkpoints))
}

fn read_head(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::with_capacity(SEGMENT_HEADER_LEN);
    File::open(path)
        .and_then(|f| f.take(SEGMENT_HEADER_LEN as u64).read_to_end(&mut buf))
        .map_err(StoreError::io("read segment header", path))?;
    Ok(buf)
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

        let Listing {
            starts,
            has_snapshots,
            has_epoch,
        } = list_dir(&dir, true)?;

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

        let checkpoints = chain::read_checkpoints(&dir)?;
        let Loaded {
            segments,
            head,
            breaks,
        } = load_segments(&dir, &starts, &checkpoints, true)?;
        if let Some(first) = breaks.first() {
            if !opts.accept_broken_chain {
                return Err(StoreError::ChainBroken {
                    first: first.clone(),
                    count: breaks.len(),
                });
            }
            for b in &breaks {
                tracing::error!(
                    seq = b.seq,
                    path = %b.path.display(),
                    offset = b.offset,
                    reason = %b.reason,
                    "AUDIT CHAIN BROKEN: opening anyway because the broken chain was accepted \
                     (--accept-broken-chain); this history can no longer be proven unaltered"
                );
            }
        }
        let snapshots = snapshot::list(&dir)?;
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
            head,
            checkpoint_seq: checkpoints.last().map_or(0, |c| c.seq),
            checkpoint_at: Instant::now(),
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
        // Both exist: `roll_if_needed` just made sure of a segment and its handle.
        let (Some(seg), Some(file)) = (self.segments.last_mut(), self.active.as_mut()) else {
            unreachable!("roll_if_needed leaves an active segment");
        };
        // The header goes out with the segment's first batch, so it is durable (or
        // torn) together with it and recovery needs no rule of its own for it.
        if seg.len == 0 {
            chain::encode_segment_header(&mut self.buf, &self.head);
        }
        let header_len = self.buf.len() as u64;
        let mut head = self.head;
        for (i, p) in payloads.iter().enumerate() {
            let seq = first + i as u64;
            head = chain::link(&head, seq, p);
            frame::encode(&mut self.buf, seq, &head, p, i == 0, i + 1 == n);
        }
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
        let mut off = seg.len + header_len;
        for (i, p) in payloads.iter().enumerate() {
            seg.push_index(first + i as u64, off);
            off += (HEADER_LEN + p.len()) as u64;
        }
        seg.len = off;
        seg.alloc = seg.alloc.max(off);
        seg.last_seq = first + n as u64 - 1;
        self.last_seq = seg.last_seq;
        self.head = head;
        Ok(first..=self.last_seq)
    }

    /// The chain's head: the last seq and its hash (the base or genesis if none).
    pub fn chain_head(&self) -> (u64, Hash) {
        (self.last_seq, self.head)
    }

    /// Writes a checkpoint of the current head now (nothing if it is already the
    /// newest checkpoint) and returns it.
    pub fn checkpoint(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        if self.last_seq == 0 || self.last_seq == self.checkpoint_seq {
            return Ok(None);
        }
        let cp = Checkpoint {
            seq: self.last_seq,
            hash: self.head,
            unix_ms: chain::now_ms(),
        };
        chain::append_checkpoint(&self.dir, &cp, self.opts.fsync)?;
        self.checkpoint_seq = cp.seq;
        self.checkpoint_at = Instant::now();
        Ok(Some(cp))
    }

    /// After an append: a checkpoint if enough records or time have passed. A failed
    /// checkpoint does not fail the append (its batch is durable and acknowledged);
    /// it is logged and tried again at the next append.
    fn checkpoint_if_due(&mut self) {
        let o = &self.opts;
        let by_count = o.checkpoint_records > 0
            && self.last_seq.saturating_sub(self.checkpoint_seq) >= o.checkpoint_records;
        let by_time =
            !o.checkpoint_interval.is_zero() && self.checkpoint_at.elapsed() >= o.checkpoint_interval;
        if (by_count || by_time)
            && let Err(e) = self.checkpoint()
        {
            tracing::error!(error = %e, "writing the audit chain checkpoint failed; retrying at the next append");
        }
    }

    /// Reads records of one segment with seq >= `from` into `out`, up to `max` in all.
    fn read_segment(seg: &Segment, from: u64, max: usize, out: &mut Vec<Record>) -> Result<(), StoreError> {
        let at = seg
            .index
            .partition_point(|&(seq, _)| seq <= from)
            .saturating_sub(1);
        let (mut seq_at, mut off) = seg
            .index
            .get(at)
            .copied()
            .unwrap_or((seg.start, SEGMENT_HEADER_LEN as u64));
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

/// `Journal::read_from` over committed `segments` ending at `last_seq`.
fn read_segments(
    segments: &[Segment],
    last_seq: u64,
    after_seq: u64,
    max: usize,
) -> Result<Vec<Record>, StoreError> {
    let first_seq = segments.first().map_or(last_seq + 1, |s| s.start);
    if after_seq + 1 < first_seq {
        return Err(StoreError::Compacted { after_seq, first_seq });
    }
    let from = after_seq + 1;
    let mut out = Vec::new();
    if from > last_seq || max == 0 {
        return Ok(out);
    }
    let mut i = segments.partition_point(|s| s.start <= from).saturating_sub(1);
    while i < segments.len() && out.len() < max {
        let seg = &segments[i];
        if !seg.is_empty() && seg.last_seq >= from {
            FileJournal::read_segment(seg, from, max, &mut out)?;
        }
        i += 1;
    }
    Ok(out)
}

/// A read-only view of the committed records in a journal directory, for tools
/// (`opcenter audit show`): no lock is taken and nothing is changed, so a server
/// may be running; records it commits after [`JournalReader::open`] are not seen.
/// Opening walks and checks every record as [`verify`] does; a broken chain is
/// not an error here (`breaks` says where), damage recovery refuses is.
pub struct JournalReader {
    segments: Vec<Segment>,
    last_seq: u64,
    /// Where the chain does not hold (empty when it does).
    pub breaks: Vec<ChainBreak>,
}

impl JournalReader {
    /// Loads the segment list of the journal in `dir`.
    pub fn open(dir: &Path) -> Result<JournalReader, StoreError> {
        let (loaded, _) = load_read_only(dir)?;
        let last_seq = loaded.segments.last().map_or(0, |s| s.last_seq);
        Ok(JournalReader {
            segments: loaded.segments,
            last_seq,
            breaks: loaded.breaks,
        })
    }

    /// Oldest retained record (`last_seq() + 1` if none).
    pub fn first_seq(&self) -> u64 {
        self.segments.first().map_or(self.last_seq + 1, |s| s.start)
    }

    /// Newest committed record at open.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Up to `max` records after `after_seq`, as `Journal::read_from`.
    pub fn read_from(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, StoreError> {
        read_segments(&self.segments, self.last_seq, after_seq, max)
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
        match &result {
            Ok(_) => self.checkpoint_if_due(),
            Err(e) => {
                tracing::error!(error = %e, "journal append failed; refusing appends until reopened");
                self.poisoned = true;
            }
        }
        result
    }

    fn read_from(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, StoreError> {
        read_segments(&self.segments, self.last_seq, after_seq, max)
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
        // The active segment always stays, so `last_seq` remains provable after a restart;
        // and so does the segment before an empty one, because the chain's base after
        // compaction is the header of the first remaining segment, which an empty
        // segment does not have yet.
        while self.segments.len() > 1 && self.segments[1].start <= keep_from && !self.segments[1].is_empty() {
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
        let no_chain = ChainIn {
            prev: None,
            checkpoints: &[],
        };
        let mut data = Vec::new();
        chain::encode_segment_header(&mut data, &GENESIS);
        frame::encode(&mut data, 5, &chain::link(&GENESIS, 5, b"a"), b"a", true, true);
        frame::encode(&mut data, 2, &GENESIS, b"old", true, true);
        let s = scan(Path::new("x"), &data, 5, &no_chain).unwrap();
        assert!(s.breaks.is_empty());
        assert_eq!(s.committed_last, 5);
        assert_eq!(s.bad, Some(Bad::Crc));
        let mut gap = Vec::new();
        chain::encode_segment_header(&mut gap, &GENESIS);
        frame::encode(&mut gap, 5, &GENESIS, b"a", true, true);
        frame::encode(&mut gap, 7, &GENESIS, b"b", true, true);
        assert!(matches!(
            scan(Path::new("x"), &gap, 5, &no_chain),
            Err(StoreError::SeqGap { .. })
        ));
    }
}
