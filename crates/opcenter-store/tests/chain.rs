//! Integration tests of the journal's audit hash chain on real files: a clean
//! journal verifies, the chain continues across restart and compaction, a record
//! rewritten with a valid CRC is named by `verify` and refused by `open`, a chain
//! rewritten from some record on is caught by a checkpoint, and a format-1 data
//! directory is refused. Owns no product code; must never depend on timing.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opcenter_store::{
    FileJournal, GENESIS, Hash, Journal, Options, StoreError, link, read_checkpoints, verify,
};

const SEGMENT_HEADER: usize = 48;
const FRAME_HEADER: usize = 48;

fn opts() -> Options {
    Options {
        segment_bytes: 2048,
        checkpoint_records: 0,
        checkpoint_interval: Duration::ZERO,
        ..Options::default()
    }
}

fn fill(j: &mut FileJournal, batches: u64, size: u64) {
    for _ in 0..batches {
        let first = j.last_seq() + 1;
        let owned: Vec<Vec<u8>> = (first..first + size)
            .map(|s| format!("event {s} {}", "y".repeat((s % 40) as usize)).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        j.append_batch(&refs).unwrap();
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

/// One frame on disk: (offset, seq, payload length).
fn frames(data: &[u8]) -> Vec<(usize, u64, usize)> {
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER;
    while off + FRAME_HEADER <= data.len() {
        let word = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
        if word == 0 {
            break;
        }
        let len = (word & ((1 << 30) - 1)) as usize;
        let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap());
        out.push((off, seq, len));
        off += FRAME_HEADER + len;
    }
    out
}

/// Recomputes a frame's CRC after it was edited, as a forger would.
fn fix_crc(data: &mut [u8], off: usize, len: usize) {
    let mut h = crc32fast::Hasher::new();
    h.update(&data[off..off + 4]);
    h.update(&data[off + 8..off + FRAME_HEADER + len]);
    let crc = h.finalize().to_le_bytes();
    data[off + 4..off + 8].copy_from_slice(&crc);
}

/// The chain recomputed from the records `read_from` returns, from `base`.
fn recompute(j: &FileJournal, base: Hash) -> Hash {
    let after = j.first_seq() - 1;
    j.read_from(after, usize::MAX)
        .unwrap()
        .iter()
        .fold(base, |h, r| link(&h, r.seq, &r.payload))
}

#[test]
fn a_clean_journal_verifies_and_the_chain_continues_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), opts()).unwrap();
    fill(&mut j, 30, 3);
    let (seq, head) = j.chain_head();
    assert_eq!(seq, 90);
    assert_eq!(
        head,
        recompute(&j, GENESIS),
        "the stored head is the chain over the records"
    );
    drop(j);
    assert!(segments(dir.path()).len() > 2, "the test spans several segments");

    let v = verify(dir.path()).unwrap();
    assert!(v.breaks.is_empty(), "{:?}", v.breaks);
    assert_eq!((v.first_seq, v.last_seq, v.base, v.head), (1, 90, GENESIS, head));

    let mut j = FileJournal::open(dir.path(), opts()).unwrap();
    assert_eq!(j.chain_head(), (90, head));
    fill(&mut j, 5, 2);
    assert_eq!(j.chain_head().1, recompute(&j, GENESIS));
    drop(j);
    let v = verify(dir.path()).unwrap();
    assert!(v.breaks.is_empty(), "{:?}", v.breaks);
    assert_eq!(v.last_seq, 100);
}

#[test]
fn a_record_rewritten_with_a_valid_crc_is_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), opts()).unwrap();
    fill(&mut j, 20, 2);
    drop(j);
    let seg = segments(dir.path())[1].clone();
    let mut data = fs::read(&seg).unwrap();
    let (off, seq, len) = frames(&data)[2];
    data[off + FRAME_HEADER + len / 2] ^= 0x01;
    fix_crc(&mut data, off, len);
    fs::write(&seg, &data).unwrap();

    let v = verify(dir.path()).unwrap();
    assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
    assert_eq!(v.breaks[0].seq, seq);
    assert_eq!(v.breaks[0].path, seg);
    assert_eq!(v.breaks[0].offset, off as u64);

    match FileJournal::open(dir.path(), opts()) {
        Err(StoreError::ChainBroken { first, count }) => {
            assert_eq!((first.seq, count), (seq, 1));
        }
        other => panic!("expected ChainBroken, got {other:?}"),
    }
    let accept = Options {
        accept_broken_chain: true,
        ..opts()
    };
    let mut j = FileJournal::open(dir.path(), accept).unwrap();
    assert_eq!(j.last_seq(), 40);
    fill(&mut j, 1, 1);
    drop(j);
    // The break stays on record; nothing after it is blamed.
    let v = verify(dir.path()).unwrap();
    assert_eq!(v.breaks.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![seq]);
}

#[test]
fn a_chain_rewritten_from_a_record_on_is_caught_by_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let every5 = Options {
        checkpoint_records: 5,
        preallocate_bytes: 0,
        segment_bytes: 1 << 20,
        ..opts()
    };
    let mut j = FileJournal::open(dir.path(), every5.clone()).unwrap();
    fill(&mut j, 12, 1);
    let head = j.chain_head();
    drop(j);
    let cps = read_checkpoints(dir.path()).unwrap();
    assert_eq!(cps.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![5, 10]);
    assert_eq!(verify(dir.path()).unwrap().head, head.1);

    // A forger who can write the store edits record 7 and re-chains everything after
    // it, hashes and CRCs: every link holds, only the checkpoint at 10 disagrees.
    let seg = segments(dir.path())[0].clone();
    let mut data = fs::read(&seg).unwrap();
    let fr = frames(&data);
    let mut prev: Hash = data[fr[5].0 + 16..fr[5].0 + 48].try_into().unwrap();
    for &(off, seq, len) in &fr[6..] {
        if seq == 7 {
            data[off + FRAME_HEADER] ^= 0x01;
        }
        let h = link(&prev, seq, &data[off + FRAME_HEADER..off + FRAME_HEADER + len]);
        data[off + 16..off + 48].copy_from_slice(&h);
        fix_crc(&mut data, off, len);
        prev = h;
    }
    fs::write(&seg, &data).unwrap();
    let v = verify(dir.path()).unwrap();
    assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
    assert_eq!(v.breaks[0].seq, 10);
    assert!(
        v.breaks[0].reason.contains("checkpoint"),
        "{}",
        v.breaks[0].reason
    );

    // Cutting records off the end is caught the same way.
    let dir2 = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir2.path(), every5).unwrap();
    fill(&mut j, 12, 1);
    drop(j);
    let seg = segments(dir2.path())[0].clone();
    let data = fs::read(&seg).unwrap();
    let cut = frames(&data)[8].0; // keep seqs 1..=8, drop 9..=12
    fs::write(&seg, &data[..cut]).unwrap();
    let v = verify(dir2.path()).unwrap();
    assert_eq!(v.last_seq, 8);
    assert_eq!(v.breaks.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![10]);
}

#[test]
fn the_chain_stays_verifiable_across_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::open(dir.path(), opts()).unwrap();
    fill(&mut j, 60, 1);
    let full = recompute(&j, GENESIS);
    j.write_snapshot(40, b"s40").unwrap();
    j.write_snapshot(50, b"s50").unwrap();
    let first = j.compact(0).unwrap();
    assert!(first > 1, "something was compacted");
    drop(j);

    let v = verify(dir.path()).unwrap();
    assert!(v.breaks.is_empty(), "{:?}", v.breaks);
    assert_eq!(v.first_seq, first);
    assert_ne!(
        v.base, GENESIS,
        "the base is the hash before the first retained record"
    );
    assert_eq!(v.head, full);

    let mut j = FileJournal::open(dir.path(), opts()).unwrap();
    assert_eq!(recompute(&j, v.base), full);
    fill(&mut j, 10, 1);
    drop(j);
    let v = verify(dir.path()).unwrap();
    assert!(v.breaks.is_empty(), "{:?}", v.breaks);
    assert_eq!(v.last_seq, 70);
}

#[test]
fn a_format_1_data_directory_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    // A format-1 frame: [len|flags][crc][seq][payload], no segment header, no hash.
    let payload = b"old event";
    let word = (payload.len() as u32 | 1 << 31 | 1 << 30).to_le_bytes();
    let seq = 1u64.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&word);
    h.update(&seq);
    h.update(payload);
    let mut data = word.to_vec();
    data.extend_from_slice(&h.finalize().to_le_bytes());
    data.extend_from_slice(&seq);
    data.extend_from_slice(payload);
    fs::write(dir.path().join("epoch"), "0123456789abcdef\n").unwrap();
    fs::write(dir.path().join("journal-00000000000000000001.log"), &data).unwrap();

    let err = FileJournal::open(dir.path(), opts()).unwrap_err();
    assert!(matches!(err, StoreError::OldFormat { .. }), "{err}");
    assert!(err.to_string().contains("new, empty data directory"), "{err}");
    assert!(matches!(verify(dir.path()), Err(StoreError::OldFormat { .. })));
    // Refused, not repaired: the old segment is untouched.
    assert_eq!(
        fs::read(dir.path().join("journal-00000000000000000001.log")).unwrap(),
        data
    );
}
