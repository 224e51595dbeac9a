//! Benchmarks of the durable journal against the design it was chosen over: the
//! segment log (`FileJournal`) and redb (one write transaction per batch,
//! `Durability::Immediate`, a table keyed by seq), side by side in the same run.
//! Measures durable group-commit throughput (fsync on) for batches of 1, 16 and 64
//! records of 300 bytes, and the time to open a store of 1 000 000 such records
//! (for redb: after a clean shutdown, and after a crash, when it repairs). Owns no
//! product code; must never run with fsync off in the append group (that would
//! measure the page cache, not durability).
//!
//! Run: `cargo bench -p opcenter-store --bench append`. Set `OPC_BENCH_DIR` to put the
//! data on a particular disk (default: the system temp dir; it must not be a tmpfs,
//! where fsync is free).

use std::hint::black_box;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opcenter_store::{FileJournal, Journal, Options};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const RECORD: usize = 300;
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("OPC_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir in OPC_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// A JSON event of exactly `RECORD` bytes, shaped like the hub's (neither store
/// compresses, so only the size matters; the shape keeps the example honest).
fn payload(i: usize) -> Vec<u8> {
    let mut s = format!(
        r#"{{"type":"event","kind":"incident.created","seq":{i},"at":"2026-11-30T22:40:00.000Z","incident":{{"id":"inc-{i:08}","priority":2,"nature":"burglary in progress","location":{{"lat":48.85{i:04},"lon":2.35{i:04}}},"address":"12 rue de la Paix","requires":["k9"]}},"note":""#
    );
    while s.len() < RECORD - 3 {
        s.push('x');
    }
    s.push_str(r#""}}"#);
    assert_eq!(s.len(), RECORD, "payload size");
    s.into_bytes()
}

/// Appends one batch to redb as the hub would append it to a journal: one write
/// transaction, durable before `commit` returns, keys = the next seqs.
fn redb_append(db: &Database, next_seq: &mut u64, batch: &[&[u8]]) {
    let mut tx = db.begin_write().expect("begin_write");
    tx.set_durability(Durability::Immediate).expect("set_durability");
    {
        let mut t = tx.open_table(EVENTS).expect("open_table");
        for p in batch {
            t.insert(*next_seq, *p).expect("insert");
            *next_seq += 1;
        }
    }
    tx.commit().expect("commit");
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_fsync");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    // The two stores alternate at each batch size, so a burst of load from the other
    // processes on this machine hits both rather than one.
    for batch in [1usize, 16, 64] {
        let records: Vec<Vec<u8>> = (0..batch).map(payload).collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        g.throughput(Throughput::Elements(batch as u64));

        let dir = tempdir();
        let mut j = FileJournal::open(dir.path(), Options::default()).expect("open");
        g.bench_function(format!("journal_batch_{batch}x{RECORD}B"), |b| {
            b.iter(|| black_box(j.append_batch(&refs).expect("append")))
        });

        let dir = tempdir();
        let db = Database::create(dir.path().join("events.redb")).expect("redb create");
        let mut next_seq = 1u64;
        g.bench_function(format!("redb_batch_{batch}x{RECORD}B"), |b| {
            b.iter(|| redb_append(&db, &mut next_seq, &refs))
        });
    }
    // The floor on this disk right now: the same bytes as a 16-record batch, written
    // with one write + one fdatasync into a preallocated file, no journal code at all.
    let dir = tempdir();
    let path = dir.path().join("floor.bin");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&vec![0u8; 64 << 20]).expect("preallocate");
    f.sync_all().expect("fsync");
    let bytes = vec![7u8; 16 * (RECORD + 16)];
    g.throughput(Throughput::Elements(16));
    g.bench_function("floor_raw_fdatasync_16x300B", |b| {
        let mut at = 0u64;
        b.iter(|| {
            if at + bytes.len() as u64 > 64 << 20 {
                at = 0;
            }
            f.seek(SeekFrom::Start(at)).expect("seek");
            f.write_all(&bytes).expect("write");
            f.sync_data().expect("fdatasync");
            at += bytes.len() as u64;
        })
    });
    g.finish();
}

/// What a restart needs from redb before serving: the database open, and the first
/// and last seq (the journal's `first_seq`/`last_seq`).
fn redb_open(path: &Path) -> (Database, u64, u64) {
    let db = Database::open(path).expect("redb open");
    let (first, last) = {
        let tx = db.begin_read().expect("begin_read");
        let t = tx.open_table(EVENTS).expect("open_table");
        let first = t.first().expect("first").expect("not empty").0.value();
        let last = t.last().expect("last").expect("not empty").0.value();
        (first, last)
    };
    (db, first, last)
}

fn open_1m(c: &mut Criterion) {
    const N: usize = 1_000_000;
    const BUILD_BATCH: usize = 1000;
    let mut g = c.benchmark_group("open");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let records: Vec<Vec<u8>> = (0..BUILD_BATCH).map(payload).collect();
    let batch: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    g.throughput(Throughput::Elements(N as u64));

    // Both stores are opened with their files in the page cache: 24 GiB of RAM holds
    // them, as it would on a server restarted without a reboot.
    let jdir = tempdir();
    {
        // Without fsync: the journal's files are the same either way.
        let mut j = FileJournal::open(
            jdir.path(),
            Options {
                fsync: false,
                ..Options::default()
            },
        )
        .expect("open");
        for _ in 0..N / BUILD_BATCH {
            j.append_batch(&batch).expect("append");
        }
    }
    // The journal always scans everything on open, clean shutdown or not.
    g.bench_function(format!("journal_1M_records_{RECORD}B"), |b| {
        b.iter_batched(
            || (),
            |()| {
                let j = FileJournal::open(jdir.path(), Options::default()).expect("open");
                assert_eq!(j.last_seq(), N as u64);
                j
            },
            BatchSize::PerIteration,
        )
    });
    drop(jdir);

    let rdir = tempdir();
    let clean = rdir.path().join("clean.redb");
    let crashed = rdir.path().join("crashed.redb");
    let image = rdir.path().join("crash-image.redb");
    {
        let db = Database::create(&clean).expect("redb create");
        let mut next_seq = 1u64;
        // Durable commits, as the hub would make them: redb frees the pages a commit
        // replaced only at a durable commit, so a build with `Durability::None` leaves
        // a file about three times larger than this one.
        for _ in 0..N / BUILD_BATCH {
            redb_append(&db, &mut next_seq, &batch);
        }
        // A copy taken while the database is open, right after a durable commit, is
        // what kill -9 or a power cut after that commit leaves: the header still says
        // "open", so the next open must repair (walk the whole file).
        std::fs::copy(&clean, &image).expect("copy crash image");
    }
    eprintln!(
        "redb file: {} MB for {N} records of {RECORD} B",
        std::fs::metadata(&clean).expect("stat").len() >> 20
    );
    g.bench_function(format!("redb_clean_1M_records_{RECORD}B"), |b| {
        b.iter_batched(
            || (),
            |()| {
                let (db, first, last) = redb_open(&clean);
                assert_eq!((first, last), (1, N as u64));
                db
            },
            BatchSize::PerIteration,
        )
    });
    // Each open repairs (and so rewrites) the file: every iteration starts from a fresh
    // copy of the crash image, made outside the timed part.
    g.bench_function(format!("redb_after_crash_1M_records_{RECORD}B"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::fs::copy(&image, &crashed).expect("copy crash image");
                let t0 = Instant::now();
                let (db, first, last) = redb_open(&crashed);
                total += t0.elapsed();
                assert_eq!((first, last), (1, N as u64));
                drop(db);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, append, open_1m);
criterion_main!(benches);
