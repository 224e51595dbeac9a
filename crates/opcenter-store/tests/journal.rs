//! Integration tests of the journal contract on real files in temp dirs: round trips
//! across segment rolls, epochs, torn-tail recovery, refusal to open damaged history,
//! append failures, snapshots and compaction. Owns no product code; must never depend
//! on timing.

use std::fs;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use opcenter_store::{FileJournal, Journal, MemJournal, Options, StoreError, write_snapshot_shared};

fn small_segments() -> Options {
    Options {
        segment_bytes: 1024,
        ..Options::default()
    }
}

fn payload(seq: u64) -> Vec<u8> {
    format!("event-{seq:06}-{}", "x".repeat((seq % 50) as usize)).into_bytes()
}

/// Appends `n` batches of `size` records with `payload(seq)` contents.
fn fill(j: &mut dyn Journal, batches: usize, size: usize) {
    for _ in 0..batches {
        let first = j.last_seq() + 1;
        let owned: Vec<Vec<u8>> = (0..size as u64).map(|i| payload(first + i)).collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let range = j.append_batch(&refs).unwrap();
        assert_eq!(range, first..=first + size as u64 - 1);
    }
}

fn check_all(j: &dyn Journal, after: u64) {
    let got = j.read_from(after, usize::MAX).unwrap();
    let want: Vec<u64> = (after + 1..=j.last_seq()).collect();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
    for r in got {
        assert_eq!(r.payload, payload(r.seq), "payload of seq {}", r.seq);
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("journal-"))
        .collect();
    v.sort();
    v
}

fn flip_byte(path: &Path, at: u64) {
    let mut data = fs::read(path).unwrap();
    data[at as usize] ^= 0xFF;
    fs::write(path, data).unwrap();
}

/// Bytes of the segment header (magic, chain base, CRC) in front of the first frame.
const SEGMENT_HEADER: u64 = 48;
/// Bytes of a frame header (length, CRC, seq, chain hash).
const FRAME_HEADER: u64 = 48;

/// Byte offset of the record with index `i` (0-based) in a segment of records
/// `first..` written by `fill`.
fn offset_of(first: u64, i: u64) -> u64 {
    SEGMENT_HEADER
        + (0..i)
            .map(|k| FRAME_HEADER + payload(first + k).len() as u64)
            .sum::<u64>()
}

/// The contract shared by both implementations.
fn contract(j: &mut dyn Journal) {
    assert_eq!(j.last_seq(), 0);
    assert_eq!(j.first_seq(), 1);
    assert!(j.read_from(0, 10).unwrap().is_empty());
    assert!(j.append_batch(&[]).unwrap().is_empty());
    fill(j, 20, 7);
    assert_eq!(j.last_seq(), 140);
    check_all(j, 0);
    check_all(j, 63);
    check_all(j, 139);
    check_all(j, 140);
    let page = j.read_from(10, 5).unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert!(j.read_from(500, 5).unwrap().is_empty());
    assert!(j.reaches_back(0) && j.reaches_back(140) && !j.reaches_back(141));
    assert!(matches!(
        j.write_snapshot(141, b"x"),
        Err(StoreError::SnapshotAhead { .. })
    ));
    assert_eq!(j.latest_snapshot().unwrap(), None);
    let big = vec![0u8; opcenter_store::MAX_PAYLOAD + 1];
    assert!(matches!(
        j.append_batch(&[&big]),
        Err(StoreError::RecordTooLarge { .. })
    ));
    // Too large is checked before any I/O: not poisoned.
    fill(j, 1, 1);
}

#[test]
fn file_journal_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    contract(&mut j);
}

#[test]
fn mem_journal_meets_the_contract() {
    contract(&mut MemJournal::new());
}

#[test]
fn round_trip_across_segment_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
        fill(&mut j, 30, 1);
        fill(&mut j, 10, 16);
        fill(&mut j, 3, 64);
        assert!(
            j.segment_count() > 5,
            "rolled into {} segments",
            j.segment_count()
        );
        check_all(&j, 0);
    }
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(j.last_seq(), 30 + 160 + 192);
    for after in [0, 1, 29, 30, 31, 100, 250, 381, 382] {
        check_all(&j, after);
    }
    // Every segment is named after its first record.
    for (p, _) in segments(dir.path()).iter().zip(0..) {
        let name = p.file_name().unwrap().to_str().unwrap();
        let start: u64 = name["journal-".len()..name.len() - 4].parse().unwrap();
        assert_eq!(j.read_from(start - 1, 1).unwrap()[0].seq, start);
    }
    fill(&mut j, 2, 5);
    check_all(&j, 370);
}

#[test]
fn sparse_index_reads_from_every_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(
        dir.path(),
        Options {
            fsync: false,
            segment_bytes: 1 << 20,
            ..Options::default()
        },
    )
    .unwrap();
    // ~5 000 records of ~60 B: a few segments, many index entries each.
    fill(&mut j, 100, 50);
    drop(j);
    let j = FileJournal::open(dir.path(), Options::default()).unwrap();
    for after in (0..5000).step_by(97) {
        let got = j.read_from(after, 3).unwrap();
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![after + 1, after + 2, after + 3]
        );
        assert_eq!(got[0].payload, payload(after + 1));
    }
}

#[test]
fn epoch_is_stable_across_reopen_and_new_for_a_new_dir() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let e1 = FileJournal::open(a.path(), Options::default())
        .unwrap()
        .epoch()
        .to_string();
    let mut j = FileJournal::open(a.path(), Options::default()).unwrap();
    assert_eq!(j.epoch(), e1);
    fill(&mut j, 1, 1);
    drop(j);
    assert_eq!(
        FileJournal::open(a.path(), Options::default()).unwrap().epoch(),
        e1
    );
    let e2 = FileJournal::open(b.path(), Options::default())
        .unwrap()
        .epoch()
        .to_string();
    assert_ne!(e1, e2);
    assert_eq!(e1.len(), 32);
}

#[test]
fn torn_tail_mid_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 10, 1);
    drop(j);
    let seg = &segments(dir.path())[0];
    // The file has a preallocated zero tail: cut inside the last record itself.
    let len = offset_of(1, 10);
    fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.last_seq(), 9);
    check_all(&j, 0);
    assert_eq!(fs::metadata(seg).unwrap().len(), offset_of(1, 9));
    assert_eq!(j.append_batch(&[&payload(10)]).unwrap(), 10..=10);
    drop(j);
    let j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.last_seq(), 10);
    check_all(&j, 0);
}

#[test]
fn torn_tail_garbage_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 10, 1);
    drop(j);
    let seg = &segments(dir.path())[0];
    let mut data = fs::read(seg).unwrap();
    // Garbage right after the last record, inside the preallocated zeros.
    let len = offset_of(1, 10);
    data[len as usize..len as usize + 37].fill(0xAB);
    fs::write(seg, data).unwrap();

    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.last_seq(), 10);
    assert_eq!(fs::metadata(seg).unwrap().len(), len);
    fill(&mut j, 1, 3);
    check_all(&j, 0);
}

#[test]
fn torn_batch_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 2, 1);
    fill(&mut j, 1, 5); // seqs 3..=7
    drop(j);
    let seg = &segments(dir.path())[0];
    // Cut inside record 5 (third of the last batch): records 3 and 4 are intact but
    // their batch is not, so they go too.
    let cut = offset_of(1, 4) + 20;
    fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.last_seq(), 2);
    assert_eq!(fs::metadata(seg).unwrap().len(), offset_of(1, 2));
}

#[test]
fn torn_batch_with_pages_persisted_out_of_order_recovers() {
    // A crash may persist a later page of the unacknowledged batch but not an earlier
    // one: the batch's surviving tail must not be taken for a later committed batch.
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 3, 1);
    fill(&mut j, 1, 6); // seqs 4..=9
    drop(j);
    let seg = &segments(dir.path())[0];
    let mut data = fs::read(seg).unwrap();
    let (from, to) = (offset_of(1, 4) as usize, offset_of(1, 6) as usize); // records 5, 6
    data[from..to].fill(0);
    fs::write(seg, data).unwrap();

    let j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.last_seq(), 3);
    check_all(&j, 0);
}

#[test]
fn corrupt_middle_record_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 10, 1);
    drop(j);
    let seg = &segments(dir.path())[0];
    let before = fs::read(seg).unwrap();
    flip_byte(seg, offset_of(1, 4) + FRAME_HEADER + 2); // payload of seq 5
    let err = FileJournal::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // Nothing was truncated.
    assert_eq!(fs::metadata(seg).unwrap().len(), before.len() as u64);
}

#[test]
fn corrupt_second_to_last_single_batch_fails_open() {
    // Batch 9 was followed by batch 10, so batch 9 was fsynced and maybe acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 10, 1);
    drop(j);
    let seg = &segments(dir.path())[0];
    flip_byte(seg, offset_of(1, 8) + 2); // length word of seq 9
    let err = FileJournal::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn corrupt_sealed_segment_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    fill(&mut j, 100, 1);
    drop(j);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    // Cut the tail of a sealed segment: "torn" there is never acceptable.
    let len = fs::metadata(&segs[0]).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let err = FileJournal::open(dir.path(), small_segments()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn missing_segment_is_a_seq_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    fill(&mut j, 100, 1);
    drop(j);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1]).unwrap();
    let err = FileJournal::open(dir.path(), small_segments()).unwrap_err();
    assert!(matches!(err, StoreError::SeqGap { .. }), "{err}");
    // The oldest one missing without a snapshot covering it: also a gap.
    fs::remove_file(&segs[0]).unwrap();
    let err = FileJournal::open(dir.path(), small_segments()).unwrap_err();
    assert!(matches!(err, StoreError::SeqGap { .. }), "{err}");
}

#[test]
fn missing_epoch_with_data_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 1, 1);
    drop(j);
    fs::remove_file(dir.path().join("epoch")).unwrap();
    let err = FileJournal::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(err, StoreError::MissingEpoch { .. }), "{err}");
    assert!(
        !dir.path().join("epoch").exists(),
        "must not mint a new epoch over old data"
    );
}

#[test]
fn data_dir_that_is_a_file_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"hello").unwrap();
    let err = FileJournal::open(&file, Options::default()).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
}

#[test]
fn failed_append_poisons_until_reopened() {
    // Tests run as root, so chmod cannot make the dir read-only. Instead the path of
    // the first segment is taken by a directory: creating the segment fails, as it
    // would on a read-only or full file system.
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    let blocker = dir.path().join("journal-00000000000000000001.log");
    fs::create_dir(&blocker).unwrap();
    let err = j.append_batch(&[b"a"]).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(j.is_poisoned());
    assert_eq!(j.last_seq(), 0);
    fs::remove_dir(&blocker).unwrap();
    assert!(matches!(j.append_batch(&[b"a"]), Err(StoreError::Poisoned)));
    drop(j);
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.append_batch(&[b"a"]).unwrap(), 1..=1);
}

#[test]
fn failed_roll_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    fill(&mut j, 1, 30); // over 1 KiB: the next batch rolls to journal-31
    fs::create_dir(dir.path().join("journal-00000000000000000031.log")).unwrap();
    assert!(matches!(j.append_batch(&[b"a"]), Err(StoreError::Io { .. })));
    assert!(matches!(j.append_batch(&[b"a"]), Err(StoreError::Poisoned)));
    assert_eq!(j.last_seq(), 30);
    check_all(&j, 0);
}

#[test]
fn mem_journal_failure_switch_poisons() {
    let mut j = MemJournal::with_epoch("e");
    fill(&mut j, 1, 2);
    j.fail_appends(true);
    assert!(matches!(j.append_batch(&[b"a"]), Err(StoreError::Io { .. })));
    j.fail_appends(false);
    assert!(matches!(j.append_batch(&[b"a"]), Err(StoreError::Poisoned)));
    j.reopen();
    assert_eq!(j.append_batch(&[b"a"]).unwrap(), 3..=3);
}

#[test]
fn snapshots_latest_wins_and_two_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 10, 1);
    j.write_snapshot(3, b"three").unwrap();
    assert_eq!(j.latest_snapshot().unwrap(), Some((3, b"three".to_vec())));
    j.write_snapshot(7, b"seven").unwrap();
    j.write_snapshot(9, b"nine").unwrap();
    assert_eq!(j.latest_snapshot().unwrap(), Some((9, b"nine".to_vec())));
    let mut snaps: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    snaps.sort();
    assert_eq!(
        snaps,
        [
            "snapshot-00000000000000000007.bin",
            "snapshot-00000000000000000009.bin"
        ]
    );
    drop(j);
    let j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.latest_snapshot().unwrap(), Some((9, b"nine".to_vec())));

    // A damaged newest snapshot falls back to the older one.
    flip_byte(&dir.path().join(&snaps[1]), 30);
    assert_eq!(j.latest_snapshot().unwrap(), Some((7, b"seven".to_vec())));
    // Both damaged: an error, not "no snapshot".
    flip_byte(&dir.path().join(&snaps[0]), 30);
    assert!(matches!(j.latest_snapshot(), Err(StoreError::Corrupt { .. })));
}

/// The hub's engine thread appends through the same mutex the snapshot writer
/// takes. Here the snapshot's tmp file is a FIFO that nobody reads yet, so the
/// write (1 MiB, far more than a pipe holds) is stuck in the middle for as long
/// as the test wants, with no timing involved: a commit must still complete.
#[test]
fn a_commit_completes_while_a_snapshot_write_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        // A FIFO cannot be fsynced; what this test checks is the lock, not the disk.
        fsync: false,
        ..Options::default()
    };
    let mut j = FileJournal::open(dir.path(), opts).unwrap();
    fill(&mut j, 3, 1);
    let shared: Arc<Mutex<Box<dyn Journal>>> = Arc::new(Mutex::new(Box::new(j)));
    let tmp = dir.path().join("snapshot-00000000000000000003.bin.tmp");
    // Not the `mkfifo` command: a fork would hold copies of the other tests'
    // directory-lock descriptors until it execs, and fail their lock checks.
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    mknodat(CWD, &tmp, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();

    let snapshot = vec![7u8; 1 << 20];
    let writer = {
        let (shared, snapshot) = (Arc::clone(&shared), snapshot.clone());
        std::thread::spawn(move || write_snapshot_shared(&shared, 3, &snapshot))
    };
    // Opening the read end returns once the writer has opened the write end:
    // from then on its write is in progress and cannot finish until read.
    let (opened_tx, opened) = mpsc::channel();
    let fifo = tmp.clone();
    std::thread::spawn(move || opened_tx.send(fs::File::open(fifo).unwrap()));
    let mut reader = opened
        .recv_timeout(Duration::from_secs(120))
        .expect("the snapshot writer never opened its tmp file");

    let (appended_tx, appended) = mpsc::channel();
    let appender = Arc::clone(&shared);
    std::thread::spawn(move || {
        let range = appender.lock().unwrap().append_batch(&[b"during the snapshot"]);
        appended_tx.send(range.map_err(|e| e.to_string()))
    });
    let range = appended
        .recv_timeout(Duration::from_secs(120))
        .expect("the commit waited behind the snapshot write");
    assert_eq!(range, Ok(4..=4));

    let mut written = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut written).unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(written.len(), 28 + snapshot.len(), "header + the whole payload");
    assert!(written.ends_with(&snapshot));

    // The FIFO was renamed into place; swap it for a real snapshot write.
    fs::remove_file(dir.path().join("snapshot-00000000000000000003.bin")).unwrap();
    write_snapshot_shared(&shared, 4, b"four").unwrap();
    let j = shared.lock().unwrap();
    assert_eq!(j.latest_snapshot().unwrap(), Some((4, b"four".to_vec())));
    assert_eq!(j.read_from(3, 10).unwrap()[0].payload, b"during the snapshot");
}

#[test]
fn a_journal_without_a_separate_snapshot_path_writes_under_the_lock() {
    let mut mem = MemJournal::new();
    fill(&mut mem, 2, 1);
    let shared: Mutex<Box<dyn Journal>> = Mutex::new(Box::new(mem));
    write_snapshot_shared(&shared, 2, b"two").unwrap();
    let j = shared.lock().unwrap();
    assert_eq!(j.latest_snapshot().unwrap(), Some((2, b"two".to_vec())));
    assert!(matches!(
        write_snapshot_shared(
            &Mutex::new(Box::new(MemJournal::new()) as Box<dyn Journal>),
            1,
            b"x"
        ),
        Err(StoreError::SnapshotAhead { .. })
    ));
}

#[test]
fn compaction_drops_only_covered_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    fill(&mut j, 100, 1);
    let before = j.segment_count();
    // No snapshot: nothing may go, however small keep_events is.
    assert_eq!(j.compact(0).unwrap(), 1);
    assert_eq!(j.segment_count(), before);

    j.write_snapshot(50, b"s50").unwrap();
    // keep_events wins when it is the stricter bound: the last 60 stay.
    let first1 = j.compact(60).unwrap();
    assert!(first1 > 1 && first1 <= 41, "first_seq {first1}");
    // keep_events 10 would allow dropping up to 90, but the snapshot only covers 50.
    let first = j.compact(10).unwrap();
    assert!(first >= first1 && first <= 51, "first_seq {first}");
    assert_eq!(first, j.first_seq());
    assert!(j.segment_count() < before);
    check_all(&j, first - 1);
    assert!(j.reaches_back(first - 1));
    assert!(!j.reaches_back(first - 2));
    assert!(matches!(j.read_from(0, 10), Err(StoreError::Compacted { first_seq, .. }) if first_seq == first));

    // The older kept snapshot (50) bounds compaction, so falling back to it still works.
    j.write_snapshot(100, b"s100").unwrap();
    let first3 = j.compact(0).unwrap();
    assert_eq!(first3, first, "snapshot 50 is still the fallback");
    j.write_snapshot(100, b"s100 again").unwrap(); // same seq rewritten: still two kept
    fill(&mut j, 20, 1);
    j.write_snapshot(120, b"s120").unwrap(); // now 100 and 120 are kept
    let first3 = j.compact(0).unwrap();
    assert!(first3 > 51 && first3 <= 101, "first_seq {first3}");
    fill(&mut j, 50, 1);
    drop(j);

    let j = FileJournal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(j.first_seq(), first3);
    assert_eq!(j.last_seq(), 170);
    check_all(&j, first3 - 1);
}

#[test]
fn compaction_never_drops_the_active_segment() {
    let mut m = MemJournal::new();
    fill(&mut m, 10, 1);
    m.write_snapshot(10, b"s").unwrap();
    assert_eq!(m.compact(0).unwrap(), 11);
    assert!(m.reaches_back(10));
    assert!(m.read_from(10, 5).unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    fill(&mut j, 10, 1);
    j.write_snapshot(10, b"s").unwrap();
    j.compact(0).unwrap();
    assert_eq!(j.segment_count(), 1);
    drop(j);
    let j = FileJournal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(j.last_seq(), 10);
}

#[test]
fn preallocated_zero_tail_is_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    fill(&mut j, 10, 3);
    drop(j);
    let seg = &segments(dir.path())[0];
    let len = fs::metadata(seg).unwrap().len();
    assert_eq!(len, 1 << 20, "grown ahead by preallocate_bytes");
    let mut j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(fs::metadata(seg).unwrap().len(), len, "zeros are not truncated");
    fill(&mut j, 1, 2);
    drop(j);
    let j = FileJournal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(j.last_seq(), 32);
    check_all(&j, 0);
}

#[test]
fn file_journal_without_preallocation_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        preallocate_bytes: 0,
        ..small_segments()
    };
    let mut j = FileJournal::open(dir.path(), opts.clone()).unwrap();
    contract(&mut j);
    drop(j);
    let j = FileJournal::open(dir.path(), opts).unwrap();
    check_all(&j, 0);
}

#[test]
fn sealed_segments_are_trimmed_to_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), small_segments()).unwrap();
    fill(&mut j, 100, 1);
    drop(j);
    let segs = segments(dir.path());
    let mut seq = 1;
    for seg in &segs[..segs.len() - 1] {
        let len = fs::metadata(seg).unwrap().len();
        let mut n = 0;
        while offset_of(seq, n) < len {
            n += 1;
        }
        assert_eq!(
            offset_of(seq, n),
            len,
            "{} ends on a record boundary",
            seg.display()
        );
        seq += n;
    }
}

#[test]
fn a_second_opener_of_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = opcenter_store::FileJournal::open(dir.path(), opcenter_store::Options::default()).unwrap();
    let second = opcenter_store::FileJournal::open(dir.path(), opcenter_store::Options::default());
    assert!(
        matches!(second, Err(opcenter_store::StoreError::Locked { .. })),
        "{second:?}"
    );
    drop(first);
    assert!(opcenter_store::FileJournal::open(dir.path(), opcenter_store::Options::default()).is_ok());
}
