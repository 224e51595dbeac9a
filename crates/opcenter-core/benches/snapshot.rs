//! The cost of `Engine::snapshot` with many open incidents: the engine thread
//! takes one every `storage.snapshot_every_events` records, and a takeover takes
//! one before it serves (issue 12). Builds an engine with 5 000 units and N keyed,
//! manually dispatched incidents (what `benches/failover.sh` leaves open: 32 000
//! per trial), then times `state()` and `snapshot()` (median and max of 7 each) and
//! the drop of what they returned. Plain timing with `Instant`. Owns no product code.
//!
//! Run: `cargo bench -p opcenter-core --bench snapshot [-- N]` (default 250 000).

// A benchmark measures wall time; the crate's rule (time as an argument) is for
// engine code, not for this harness.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use opcenter_core::*;

const UNITS: usize = 5_000;
const RUNS: usize = 7;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(250_000);
    let now = 1_700_000_000_000_i64;
    let mut engine = Engine::new(EngineConfig::default());
    for u in 0..UNITS {
        let id = format!("u{u}");
        let profile = UnitProfile {
            id: id.clone(),
            capabilities: vec!["patrol".into()],
            ..UnitProfile::default()
        };
        engine
            .apply(
                &Actor::unit(format!("sub-{id}"), &id),
                Command::RegisterUnit(profile),
                now,
            )
            .unwrap();
    }
    let disp = Actor::dispatcher("disp-1");
    let built = Instant::now();
    for i in 0..n {
        let location = Location {
            lat: 51.0 + (i % 1000) as f64 / 2000.0,
            lon: 51.0 + ((i / 1000) % 1000) as f64 / 2000.0,
        };
        let new = NewIncident {
            key: Some(format!("fo-1-{i}")),
            dispatch: DispatchMode::Manual,
            ..NewIncident::call("theft", 2, location)
        };
        engine
            .apply(&disp, Command::CreateIncident(new), now + i as i64 / 2)
            .unwrap();
    }
    eprintln!(
        "engine: {n} incidents, {UNITS} units, built in {} ms",
        built.elapsed().as_millis()
    );
    // `state()` is what the engine thread and a takeover take; `snapshot()`
    // also sorts (tests, the final snapshot at shutdown).
    for (name, sorted) in [("state", false), ("snapshot", true)] {
        let mut took = Vec::new();
        let mut dropped = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let snap = black_box(if sorted { engine.snapshot() } else { engine.state() });
            took.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            drop(snap);
            dropped.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (p50, max) = median_max(&mut took);
        let (d50, dmax) = median_max(&mut dropped);
        println!(
            "{name}() of {n} incidents: ms median {p50:.1} max {max:.1} | drop ms median {d50:.1} max {dmax:.1}"
        );
    }
}

/// The median and the maximum of `v`.
fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}
