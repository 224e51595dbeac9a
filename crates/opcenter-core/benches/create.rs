//! The cost of one create as the open incidents pile up: what
//! `benches/failover.sh` does to a region (2 000 keyed `theft` creates a second
//! at uniform random places over 0.5° × 0.5°, auto dispatch, no units, none
//! closed). Applies N creates to one engine, one engine-second apart every
//! RATE of them, and prints the mean µs per create of each block of 25 000 (the
//! engine thread's own cost: no journal, no network) and its slowest create
//! (where the engine's hash maps grow), then the time of a
//! retention pass (a `Tick` a minute later) over all of them. Plain timing with
//! `Instant`. Owns no product code.
//!
//! Run: `cargo bench -p opcenter-core --bench create [-- N [RATE]]` (default
//! 400 000 creates, 2 000 a second).

// A benchmark measures wall time; the crate's rule (time as an argument) is for
// engine code, not for this harness.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use opcenter_core::*;

const BLOCK: usize = 25_000;

fn main() {
    let mut args = std::env::args().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let n = args.next().unwrap_or(400_000);
    let rate = args.next().unwrap_or(2_000).max(1);
    let start = 1_700_000_000_000_i64;
    let mut engine = Engine::new(EngineConfig::default());
    let disp = Actor::dispatcher("disp-1");
    // A fixed linear congruential sequence: the same places every run.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut uniform = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut block = Instant::now();
    let mut duplicates = 0usize;
    // The slowest create of the block (a hash map that grows rehashes every
    // entry within one create).
    let mut slowest = 0f64;
    for i in 0..n {
        let location = Location {
            lat: 51.0 + uniform() * 0.5,
            lon: 51.0 + uniform() * 0.5,
        };
        let new = NewIncident {
            key: Some(format!("fo-{i}")),
            ..NewIncident::call("theft", 2, location)
        };
        let now = start + (i / rate) as i64 * 1_000;
        let one = Instant::now();
        let out = engine.apply(&disp, Command::CreateIncident(new), now).unwrap();
        slowest = slowest.max(one.elapsed().as_secs_f64() * 1e3);
        if let Reply::Created { incident, .. } = out.reply {
            duplicates += incident.possible_duplicates.len();
        }
        if (i + 1) % BLOCK == 0 {
            let us = block.elapsed().as_secs_f64() * 1e6 / BLOCK as f64;
            println!(
                "open {:>7}: {us:>7.1} µs per create | slowest {slowest:>7.2} ms | possible duplicates per create {:.1}",
                i + 1,
                duplicates as f64 / BLOCK as f64
            );
            duplicates = 0;
            slowest = 0.0;
            block = Instant::now();
        }
    }
    // A retention pass (once a minute of engine time, and the first tick of an
    // engine that just took over) with all of them open: nothing is due.
    let mut now = start + (n / rate) as i64 * 1_000;
    let mut took = Vec::new();
    for _ in 0..5 {
        now += 61_000;
        let t = Instant::now();
        engine.apply(&Actor::system(), Command::Tick, now).unwrap();
        took.push(t.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    println!(
        "retention pass with {n} open: ms median {:.2} max {:.2}",
        took[2], took[4]
    );
}
