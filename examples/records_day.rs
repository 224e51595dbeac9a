//! One simulated day of the demo city (3 000 incidents through create, dispatch,
//! ack, on scene, note and close; 300 units sending a fix every 10 s: the engine
//! driven with time passed in by `tests/week_driver.rs`) written to a file journal,
//! and optionally to a region's stream on NATS, for timing `opcenter audit verify`
//! and `opcenter report` on it (docs/records.md, "Measured").
//!
//! ```sh
//! cargo run --example records_day -- DIR [NATS_URL REGION]
//! ```
//!
//! The day is Monday 1 December 2025 (UTC). Records are the events as the engine
//! emits them (MessagePack, named fields), without the hub's actor.
//! Owns: nothing but that filling. Must never: write into a journal that holds records.

#[path = "../tests/week_driver.rs"]
mod week_driver;

use std::time::Instant;

use opcenter_core::EngineConfig;
use opcenter_store::{FileJournal, Journal, Options};

use week_driver::{WeekShape, run_week};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: records_day DIR [NATS_URL REGION]");
        std::process::exit(2);
    };
    let shape = WeekShape {
        days: 1,
        incidents_per_day: 3_000,
        units: 300,
        position_every_ms: 10_000,
        seed: 7,
    };
    let opts = Options {
        fsync: false,
        ..Options::default()
    };
    let mut file = FileJournal::open(dir, opts).expect("open the file journal");
    assert_eq!(file.last_seq(), 0, "{dir} already holds records");
    let mut nats = args.get(1).zip(args.get(2)).map(|(url, region)| {
        let j =
            opcenter_cluster::JetStreamJournal::connect(url, opcenter_cluster::JournalOptions::new(region))
                .expect("open the region's stream");
        assert_eq!(j.last_seq(), 0, "region {region} already holds records");
        j
    });
    let started = Instant::now();
    let figures = run_week(shape, EngineConfig::default(), |events, _| {
        let payloads: Vec<Vec<u8>> = events
            .iter()
            .map(|e| rmp_serde::to_vec_named(e).expect("encode an event"))
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        file.append_batch(&refs).expect("append to the file journal");
        if let Some(j) = nats.as_mut() {
            j.submit(&refs).expect("append to the stream");
        }
    });
    if let Some(j) = nats.as_mut() {
        j.wait_acked().expect("the stream acknowledged the day");
    }
    let day = figures.last().expect("one day");
    println!(
        "{shape:?}: {} incidents, {} records, {} positions, written in {:.1} s",
        day.created,
        file.last_seq(),
        day.positions,
        started.elapsed().as_secs_f64()
    );
}
