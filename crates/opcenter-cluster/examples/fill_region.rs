//! Fills a region's JetStream stream with a busy day's history, fast, for the
//! cluster replay benchmark (`benches/cluster/replay.sh`): the same records as
//! `benches/restart.rs` writes to a file journal (`benches/common/day.rs`),
//! appended with pipelined publishes, and the engine snapshot `SNAPSHOT_LAG`
//! events before the end written to the region's KV bucket, as a running engine
//! node would have left them.
//!
//! ```sh
//! cargo build --release -p opcenter-cluster --example fill_region
//! target/release/examples/fill_region nats://127.0.0.1:4222 zko 1000000 [replicas=1] [snapshot=yes|no]
//! ```
//!
//! Prints one line: events, messages' seconds, appends/s, snapshot seq and size.
//! Owns: nothing but that filling. Must never: append to a stream that already
//! holds records (it refuses, to keep a benchmark's history exactly known).

use std::time::Instant;

use opcenter_cluster::{JetStreamJournal, JournalOptions};
use opcenter_store::Journal;

#[path = "../../../benches/common/day.rs"]
mod day;

/// The hub snapshots every 50 000 events by default: on average half is replayed.
const SNAPSHOT_LAG: u64 = 25_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let url = arg(0, "nats://127.0.0.1:4222");
    let region = arg(1, "zko");
    let target: u64 = arg(2, "1000000").parse().expect("events: a number");
    let replicas: usize = arg(3, "1").parse().expect("replicas: a number");
    let with_snapshot = arg(4, "yes") == "yes";

    let opts = JournalOptions::new(&region).replicas(replicas);
    let mut journal = JetStreamJournal::connect(&url, opts).expect("connect to NATS");
    assert_eq!(
        journal.last_seq(),
        0,
        "region {region}'s stream already holds records: delete it or pick another region"
    );
    let started = Instant::now();
    let (snap_seq, snap) = day::build(target, SNAPSHOT_LAG, |batch| {
        *journal.submit(batch).expect("append").end()
    });
    let last = journal.wait_acked().expect("every append acknowledged");
    let took = started.elapsed().as_secs_f64();
    let messages = journal.stream_info().expect("stream info").state.messages;
    if with_snapshot {
        journal
            .write_snapshot(snap_seq, &snap)
            .expect("write the snapshot");
    }
    println!(
        "region {region}: {last} events in {messages} messages, {took:.1} s ({:.0} events/s pipelined, generation included); snapshot {}",
        last as f64 / took,
        if with_snapshot {
            format!(
                "at seq {snap_seq} ({:.1} MiB, {} events after it)",
                snap.len() as f64 / (1 << 20) as f64,
                last - snap_seq
            )
        } else {
            "none".to_owned()
        }
    );
}
