//! opcenter-cluster: a region's durable stream and coordination on NATS JetStream.
//!
//! Owns the region's JetStream resources (stream `OPC_<region>` on subject
//! `journal.<region>`, snapshot KV bucket `OPC_<region>_snap`) and
//! [`JetStreamJournal`], the [`opcenter_store::Journal`] trait on that stream. Must
//! never know what a record means (payloads are opaque, as in opcenter-store) and
//! never speak the client wire protocol.
//!
//! # Layout
//!
//! - `lib.rs` — these docs, [`connect`].
//! - `error.rs` — [`ClusterError`] and its mapping into `StoreError`.
//! - `region.rs` — [`RegionNames`], stream creation, [`open_kv_bucket`] (the KV
//!   workaround for nats-server 2.9, reused by the lease of the failover issue).
//! - `codec.rs` — one message = one batch: record framing with each record's chain
//!   hash, `Opc-First-Seq` and chain headers.
//! - `chain.rs` — the audit chain on the stream: [`ChainWalk`], checkpoints in
//!   `OPC_<region>_chain`, [`verify_region`].
//! - `journal.rs` — [`JetStreamJournal`]: fenced, idempotent, pipelined appends; reads.
//! - `lease.rs` — [`Lease`]: which engine of a region may write (failover).
//! - `probe.rs` — [`keep_connection`]: finds a connection stuck one way and
//!   replaces it.
//! - `follow.rs` — [`Follower`]: records from an ordered consumer as the stream grows.
//! - `snapshot.rs` — chunked snapshots in the KV bucket.
//! - `testing.rs` — [`testing::NatsCluster`]: real nats-server processes for tests.
//!
//! # How the hub uses it
//!
//! The engine thread opens `JetStreamJournal::open(handle, client, opts)` (or
//! `connect(urls, opts)` with a runtime of its own) and uses it as a
//! `Box<dyn Journal>` exactly like `FileJournal`. For throughput it can call
//! [`JetStreamJournal::submit`] per committed batch and [`JetStreamJournal::wait_acked`]
//! before replying to the batch's clients, keeping several batches in flight. An
//! `Err(StoreError::Fenced)` (from [`ClusterError::Fenced`]) means another engine
//! appended: stop serving commands and exit. Hubs build their read model with
//! [`Follower::start`]`(js, region, after_seq)` and `next_batch().await`, and
//! watch [`stream_epoch`] for a replaced stream. The epoch is the stream's name and
//! creation time: a recreated stream has another epoch.
#![deny(missing_docs)]

mod chain;
mod codec;
mod error;
mod follow;
mod journal;
mod lease;
mod probe;
mod region;
mod snapshot;
pub mod testing;

pub use chain::{ChainWalk, RegionVerified, StreamBreak, region_head, verify_region};
pub use codec::{CHAIN_HEADER, CHAIN_PREV_HEADER, FIRST_SEQ_HEADER};
pub use error::ClusterError;
pub use follow::{Follower, stream_epoch, stream_head};
pub use journal::{JetStreamJournal, JournalOptions, TAKEOVER_HEADER};
pub use lease::{Lease, LeaseValue, lease_bucket, lease_holder};
pub use probe::{Connect, ProbeSettings, keep_connection};
pub use region::{RegionNames, open_kv_bucket};

/// Connects to a comma-separated list of `nats://host:port` URLs, retrying the first
/// connection and reconnecting forever after (the list lets the client move to
/// another server of the cluster when one dies).
pub async fn connect(urls: &str) -> Result<async_nats::Client, Box<dyn std::error::Error + Send + Sync>> {
    let addrs = urls
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(addrs)
        .await?)
}
