//! The simulated week at a small scale (the full city is `benches/week.rs`):
//! retention keeps what the engine holds, and its snapshot, flat from day 2 to
//! day 7, and a retired incident is still there for a late retry of its key.

use opcenter_core::EngineConfig;

use crate::week_driver::{WeekShape, run_week, table};

#[test]
fn a_week_holds_on_day_7_what_it_held_on_day_2() {
    let shape = WeekShape {
        days: 7,
        incidents_per_day: 300,
        units: 20,
        position_every_ms: 60_000,
        seed: 7,
    };
    let figures = run_week(shape, EngineConfig::default(), |_, _| {});
    eprintln!("{}", table(&figures));
    let (d2, d7) = (figures[1], figures[6]);
    assert!(d7.created >= 7 * 300 - 1, "{d7:?}");
    // Without retention day 7 would hold 3.5x day 2: the bound is real.
    let within = |a: usize, b: usize| (a as f64 - b as f64).abs() <= 0.2 * b as f64;
    assert!(
        within(d7.incidents_held, d2.incidents_held),
        "held {d2:?} → {d7:?}"
    );
    assert!(
        within(d7.snapshot_bytes, d2.snapshot_bytes),
        "snapshot {d2:?} → {d7:?}"
    );
    // Keys live 72 h: from day 3 on they are flat too.
    assert!(
        within(d7.keys_held, figures[2].keys_held),
        "keys {:?} → {d7:?}",
        figures[2]
    );
    assert!(d7.incidents_held < d7.created as usize / 4, "{d7:?}");
}
