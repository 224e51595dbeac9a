//! Durable appends/s through a region's JetStream stream: sequential vs pipelined,
//! one record vs group commit per message, on a single nats-server and on a 3-node
//! cluster (R3). Starts its own servers. Prints the median of 3 runs.
//!
//! `cargo bench -p opcenter-cluster --bench append` (env `OPC_BENCH_RUNS` = runs).

use std::time::{Duration, Instant};

use opcenter_cluster::testing::NatsCluster;
use opcenter_cluster::{JetStreamJournal, JournalOptions};
use opcenter_store::Journal;

const RECORD: [u8; 300] = [7; 300];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One run of `batches` appends of `per` records; returns records/s (and latencies
/// when sequential).
fn run(j: &mut JetStreamJournal, batches: usize, per: usize, pipelined: bool) -> (f64, Vec<Duration>) {
    let batch: Vec<&[u8]> = vec![&RECORD[..]; per];
    let mut lat = Vec::with_capacity(batches);
    let t = Instant::now();
    for _ in 0..batches {
        if pipelined {
            j.submit(&batch).unwrap();
        } else {
            let t0 = Instant::now();
            j.append_batch(&batch).unwrap();
            lat.push(t0.elapsed());
        }
    }
    j.wait_acked().unwrap();
    ((batches * per) as f64 / t.elapsed().as_secs_f64(), lat)
}

fn main() {
    let runs: usize = std::env::var("OPC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for (label, nodes, replicas) in [("single node", 1, 1), ("R3, 3 nodes", 3, 3)] {
        let Some(nats) = NatsCluster::start_or_skip(nodes) else {
            return;
        };
        let cases: [(&str, usize, usize, bool); 4] = [
            ("sequential, 1 record/msg", 2000, 1, false),
            ("sequential, 32 records/msg", 500, 32, false),
            ("pipelined, 1 record/msg", 20000, 1, true),
            ("pipelined, 32 records/msg", 2000, 32, true),
        ];
        for (k, (name, batches, per, pipelined)) in cases.into_iter().enumerate() {
            let mut rates = Vec::new();
            let mut lats = Vec::new();
            for r in 0..runs {
                // A fresh region per run: the same stream length at every start.
                let opts = JournalOptions::new(format!("b{k}r{r}")).replicas(replicas);
                let mut j = JetStreamJournal::connect(&nats.urls(), opts).unwrap();
                let (rate, lat) = run(&mut j, batches, per, pipelined);
                rates.push(rate);
                lats.extend(lat);
            }
            lats.sort();
            let lat = if lats.is_empty() {
                String::new()
            } else {
                format!(
                    "  append p50 {:.0} µs p99 {:.0} µs",
                    pct(&lats, 0.5).as_secs_f64() * 1e6,
                    pct(&lats, 0.99).as_secs_f64() * 1e6
                )
            };
            println!(
                "{label:12} {name:28} median {:>8.0} records/s (runs: {}){lat}",
                median(rates.clone()),
                rates
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        // The runtime choice: the caller's runtime handle vs a runtime of our own.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut rates = Vec::new();
        for r in 0..runs {
            let client = rt.block_on(opcenter_cluster::connect(&nats.urls())).unwrap();
            let opts = JournalOptions::new(format!("h{r}")).replicas(replicas);
            let mut j = JetStreamJournal::open(rt.handle().clone(), client, opts).unwrap();
            rates.push(run(&mut j, 2000, 1, false).0);
        }
        println!(
            "{label:12} {:28} median {:>8.0} records/s",
            "sequential, shared runtime",
            median(rates)
        );
    }
}
