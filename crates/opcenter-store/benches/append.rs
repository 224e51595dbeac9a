//! Benchmarks of the file journal: durable group-commit throughput (fsync on) for
//! batches of 1, 16 and 64 records of 300 bytes, and the time to open (recover) a
//! journal of 1 000 000 records. Owns no product code; must never run with fsync off
//! in the append group (that would measure the page cache, not durability).
//!
//! Run: `cargo bench -p opcenter-store --bench append`. Set `OPC_BENCH_DIR` to put the
//! data on a particular disk (default: the system temp dir; it must not be a tmpfs,
//! where fsync is free).

use std::hint::black_box;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use opcenter_store::{FileJournal, Journal, Options};

const RECORD: usize = 300;

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("OPC_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir in OPC_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// A deterministic payload (seeded, no rand needed): only its size matters here.
fn payload(i: usize) -> Vec<u8> {
    (0..RECORD).map(|j| (i.wrapping_mul(31) + j) as u8).collect()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_fsync");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for batch in [1usize, 16, 64] {
        let dir = tempdir();
        let mut j = FileJournal::open(dir.path(), Options::default()).expect("open");
        let records: Vec<Vec<u8>> = (0..batch).map(payload).collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}x{RECORD}B"), |b| {
            b.iter(|| black_box(j.append_batch(&refs).expect("append")))
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

fn open_1m(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let mut g = c.benchmark_group("open");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for size in [100usize, RECORD] {
        let dir = tempdir();
        {
            // Built without fsync: we measure open, not the build.
            let mut j = FileJournal::open(
                dir.path(),
                Options {
                    fsync: false,
                    ..Options::default()
                },
            )
            .expect("open");
            let rec = vec![7u8; size];
            let batch: Vec<&[u8]> = (0..1000).map(|_| rec.as_slice()).collect();
            for _ in 0..N / 1000 {
                j.append_batch(&batch).expect("append");
            }
        }
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function(format!("1M_records_{size}B"), |b| {
            b.iter_batched(
                || (),
                |()| {
                    let j = FileJournal::open(dir.path(), Options::default()).expect("open");
                    assert_eq!(j.last_seq(), N as u64);
                    j
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, append, open_1m);
criterion_main!(benches);
