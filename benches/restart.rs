//! Restart benchmark (DESIGN.md: "Restart with 1 000 000 journal events: serving
//! again within 3 s") and durable create throughput ("group commit makes it
//! ≥ 20 000/s"). A plain `main` (harness = false) that prints figures; results and
//! the command live in docs/durability.md.
//!
//! 1. Drives `opcenter_core::Engine::apply` through a realistic day (units come on
//!    duty, incidents are created, auto-dispatched, acknowledged, noted, closed) until
//!    the journal holds `RESTART_EVENTS` events (default 1 000 000), written with
//!    `FileJournal` (fsync off, group-commit-sized batches) and encoded exactly as
//!    the hub does (`rmp_serde::to_vec_named(&Event)`).
//! 2. A second data dir holds the same journal plus a snapshot written the way the
//!    hub writes it, `SNAPSHOT_LAG` events before the end (the hub snapshots every
//!    50 000 events, so on average half of that is replayed).
//! 3. Times the real binary (`opcenter serve`) from spawn to `listening on`, then
//!    kills it with SIGKILL (a graceful stop would write a final snapshot).
//! 4. Durable creates per second: the binary over a fresh data dir with fsync on,
//!    `CONNS` dispatchers each pipelining up to `WINDOW` `incident.create`s.
//!
//! Owns: these measurements. Must never: write outside its temp dirs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use opcenter_proto::auth::Role;
use opcenter_sim::harness::{self, ServerProcess};
use opcenter_sim::wire::{self, Encoding};
use opcenter_store::{FileJournal, Journal, Options};

#[path = "common/day.rs"]
mod day;

const SECRET: &str = "restart-bench-secret-of-at-least-32-bytes";
const SNAPSHOT_LAG: u64 = 25_000;
const RUNS: usize = 5;
const CONNS: usize = 8;
const WINDOW: usize = 256;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `target` events into `dir`; returns the seq and bytes of the engine
/// snapshot taken `SNAPSHOT_LAG` events before the end.
fn build_journal(dir: &Path, target: u64) -> (u64, Vec<u8>) {
    let opts = Options {
        fsync: false,
        ..Options::default()
    };
    let mut journal = FileJournal::open(dir, opts).unwrap();
    day::build(target, SNAPSHOT_LAG, |batch| {
        journal.append_batch(batch).unwrap();
        journal.last_seq()
    })
}

fn write_config(dir: &Path, data: &Path) -> std::path::PathBuf {
    let config = dir.join(format!("{}.toml", data.file_name().unwrap().to_string_lossy()));
    std::fs::write(&config, harness::config_toml(data, SECRET, "")).unwrap();
    config
}

/// Spawns the server and waits for its `listening on` line.
fn spawn(config: &Path) -> ServerProcess {
    // OPCENTER_BIN compares another build (e.g. the previous commit) on the same data.
    let bin =
        std::env::var_os("OPCENTER_BIN").map_or_else(|| env!("CARGO_BIN_EXE_opcenter").into(), PathBuf::from);
    ServerProcess::start(&bin, config).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_restarts(label: &str, tmp: &Path, data: &Path) {
    let config = write_config(tmp, data);
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let mut server = spawn(&config);
        server.kill();
        runs.push(server.ready_after);
    }
    let ms: Vec<String> = runs
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect();
    println!(
        "restart {label}: median {:.0} ms to `listening on` (runs: {} ms)",
        median(runs).as_secs_f64() * 1e3,
        ms.join(", ")
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn durable_creates(tmp: &Path, seconds: f64) {
    let data = tmp.join("throughput");
    let config = write_config(tmp, &data);
    let mut server = spawn(&config);
    let addr = server.addr.to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (oks, took) = rt.block_on(async move {
        let token = wire::token(SECRET.as_bytes(), Role::Dispatcher, "bench");
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CONNS {
            let (addr, token) = (addr.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let (ws, _) = wire::connect(&addr, &token, Encoding::Json).await.unwrap();
                let (mut tx, mut rx) = ws.split();
                let (mut sent, mut oks, mut in_flight) = (0u64, 0u64, 0usize);
                loop {
                    while in_flight < WINDOW && Instant::now() < deadline {
                        sent += 1;
                        let lat = 51.15 + (sent % 997) as f64 * 1e-4;
                        let body = serde_json::json!({"type":"incident.create","id":sent,"category":"theft","priority":3,
                            "location":{"lat":lat,"lon":51.3 + c as f64 * 0.01},"dispatch":"manual"});
                        tx.feed(body.to_string().into()).await.unwrap();
                        in_flight += 1;
                    }
                    tx.flush().await.unwrap();
                    if in_flight == 0 {
                        return oks;
                    }
                    let m = rx.next().await.unwrap().unwrap();
                    let text = m.into_text().unwrap();
                    if text.contains("\"type\":\"ok\"") {
                        oks += 1;
                        in_flight -= 1;
                    } else if text.contains("\"type\":\"error\"") {
                        panic!("create refused: {text}");
                    }
                }
            }));
        }
        let mut oks = 0;
        for t in tasks {
            oks += t.await.unwrap();
        }
        (oks, started.elapsed())
    });
    server.kill();
    println!(
        "durable creates (fsync on, {CONNS} connections x {WINDOW} in flight, JSON): {oks} in {:.1} s = {:.0}/s",
        took.as_secs_f64(),
        oks as f64 / took.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let events = env_u64("RESTART_EVENTS", 1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("journal-only");
    let started = Instant::now();
    let (snap_seq, snap) = build_journal(&plain, events);
    let j = FileJournal::open(
        &plain,
        Options {
            fsync: false,
            ..Options::default()
        },
    )
    .unwrap();
    let last = j.last_seq();
    drop(j);
    println!(
        "built {last} events ({:.0} MiB in {} segments' files) in {:.1} s",
        dir_bytes(&plain) as f64 / (1 << 20) as f64,
        std::fs::read_dir(&plain).unwrap().count() - 1,
        started.elapsed().as_secs_f64()
    );
    let with_snap = tmp.path().join("with-snapshot");
    copy_dir(&plain, &with_snap);
    let mut j = FileJournal::open(
        &with_snap,
        Options {
            fsync: false,
            ..Options::default()
        },
    )
    .unwrap();
    j.write_snapshot(snap_seq, &snap).unwrap();
    drop(j);
    println!(
        "snapshot at seq {snap_seq}: {:.1} MiB, {} events after it",
        snap.len() as f64 / (1 << 20) as f64,
        last - snap_seq
    );

    time_restarts(
        &format!("{last} events, no snapshot (replay all)"),
        tmp.path(),
        &plain,
    );
    time_restarts(
        &format!("{last} events, snapshot {} before the end", last - snap_seq),
        tmp.path(),
        &with_snap,
    );

    let seconds = env_u64("THROUGHPUT_SECONDS", 5) as f64;
    if seconds > 0.0 {
        durable_creates(tmp.path(), seconds);
    }
}
