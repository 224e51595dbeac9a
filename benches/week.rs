//! The simulated week at full scale (issue 10, item 4): 7 days of a city of
//! 3 000 incidents a day, 300 units sending a fix every 10 s, driven through the
//! pure engine with time passed in (`tests/week_driver.rs`, shared with the
//! small `cargo test` variant). A plain `main` (harness = false) that prints the
//! per-day table for docs/durability.md, then the restart after the week:
//!
//! 1. every event of the week is written through `FileJournal` (fsync off,
//!    encoded exactly as the hub does), with an engine snapshot every 50 000
//!    events and compaction to `hub.history_events` as the hub does;
//! 2. the real binary (`opcenter serve`) is timed from spawn to `listening on`
//!    on that data dir (median of 5, SIGKILL after each).
//!
//! `WEEK_DAYS`, `WEEK_INCIDENTS`, `WEEK_UNITS`, `WEEK_POSITION_MS` change the shape.
//! Owns: these measurements. Must never: write outside its temp dir.

#[path = "../tests/week_driver.rs"]
mod week_driver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opcenter_core::EngineConfig;
use opcenter_sim::harness::{self, ServerProcess};
use opcenter_store::{FileJournal, Journal, Options};

use week_driver::{WeekShape, run_week, table};

const SECRET: &str = "week-bench-secret-that-is-long-enough";
const SNAPSHOT_EVERY: u64 = 50_000;
const HISTORY: u64 = 100_000;
const RUNS: usize = 5;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let shape = WeekShape {
        days: env_num("WEEK_DAYS", 7),
        incidents_per_day: env_num("WEEK_INCIDENTS", 3_000),
        units: env_num("WEEK_UNITS", 300),
        position_every_ms: env_num("WEEK_POSITION_MS", 10_000),
        seed: 7,
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let opts = Options {
        fsync: false,
        ..Options::default()
    };
    let mut journal = FileJournal::open(&data, opts).unwrap();
    let mut last_snapshot = 0u64;
    let started = Instant::now();
    let figures = run_week(shape, EngineConfig::default(), |events, engine| {
        let payloads: Vec<Vec<u8>> = events
            .iter()
            .map(|e| rmp_serde::to_vec_named(e).unwrap())
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        journal.append_batch(&refs).unwrap();
        if journal.last_seq() - last_snapshot >= SNAPSHOT_EVERY {
            last_snapshot = journal.last_seq();
            let snap = rmp_serde::to_vec_named(&engine.snapshot()).unwrap();
            journal.write_snapshot(last_snapshot, &snap).unwrap();
            journal.compact(HISTORY).unwrap();
        }
    });
    let took = started.elapsed();
    println!(
        "{shape:?}: simulated in {:.1} s (journal and snapshots included)\n",
        took.as_secs_f64()
    );
    println!("{}", table(&figures));
    let (d2, d7) = (figures[1.min(figures.len() - 1)], figures[figures.len() - 1]);
    println!(
        "day {} vs day 2: incidents held {:+.1} %, snapshot {:+.1} %",
        d7.day,
        (d7.incidents_held as f64 / d2.incidents_held as f64 - 1.0) * 100.0,
        (d7.snapshot_bytes as f64 / d2.snapshot_bytes as f64 - 1.0) * 100.0
    );
    println!(
        "journal after the week: {} events (first retained {}), {} snapshot(s) behind it, last at seq {last_snapshot}",
        journal.last_seq(),
        journal.first_seq(),
        if last_snapshot > 0 { "with" } else { "no" }
    );
    drop(journal);
    time_restarts(tmp.path(), &data);
}

fn time_restarts(tmp: &Path, data: &Path) {
    let config = tmp.join("week.toml");
    std::fs::write(&config, harness::config_toml(data, SECRET, "")).unwrap();
    let bin: PathBuf =
        std::env::var_os("OPCENTER_BIN").map_or_else(|| env!("CARGO_BIN_EXE_opcenter").into(), PathBuf::from);
    let mut runs: Vec<Duration> = Vec::new();
    for _ in 0..RUNS {
        let mut server = ServerProcess::start(&bin, &config).unwrap();
        server.kill();
        runs.push(server.ready_after);
    }
    runs.sort();
    let ms: Vec<String> = runs
        .iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect();
    println!(
        "restart after the week: median {:.0} ms to `listening on` (runs: {} ms)",
        runs[runs.len() / 2].as_secs_f64() * 1e3,
        ms.join(", ")
    );
}
