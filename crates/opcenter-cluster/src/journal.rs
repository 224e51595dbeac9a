//! `JetStreamJournal`: the [`Journal`] contract on a region's JetStream stream. Owns
//! the single-writer append path (expected last sequence, `Nats-Msg-Id`, retry
//! through leader elections, pipelining), the mapping from record seq to stream
//! sequence for reads, compaction by purge, and the blocking bridge from the engine's
//! OS thread into tokio. Must never decide what a record means, and never report an
//! append as saved before JetStream acknowledged it.
//!
//! # Sequences
//!
//! Two counters: the *record seq* (`Record::seq`, the per-region seq clients see,
//! contiguous from 1) and the *stream sequence* (JetStream's message counter). One
//! message holds a whole batch; its `Opc-First-Seq` header gives the first record seq.
//!
//! # Appends
//!
//! Each message is published with `Nats-Expected-Last-Sequence` = the stream sequence
//! of our previous message and `Nats-Msg-Id` = `<writer>:<first record seq>`. So:
//! - another writer appended in between → error 10071 → [`ClusterError::Fenced`];
//! - a publish whose ack was lost and is sent again is acked as a duplicate with the
//!   original sequence (the server's duplicate window is 2 minutes, far above the
//!   retry deadline), never stored twice. Where a server answers a retry with 10071
//!   instead, the message at the expected position is read back and its `Nats-Msg-Id`
//!   compared, so our own earlier copy is recognised and not taken for a fence (a
//!   read back that fails, as during an election, is retried until the deadline;
//!   it is never taken for a fence either).
//! - "no responders", timeouts and disconnections (an R3 stream electing a new leader
//!   takes 5–9 s on 2.9) are retried with the same id until `publish_deadline`.
//!
//! `submit` publishes without waiting and `wait_acked` collects the acks in order, so
//! several batches can be in flight (the expected sequences are predicted: each
//! message adds exactly one). A message sent while its predecessor is still in
//! flight also carries `Nats-Expected-Last-Msg-Id` = the predecessor's id: if the
//! predecessor was refused (another writer got in first), a predicted sequence
//! alone could match the other writer's message, and this one would land after it;
//! with the id it is refused too (error 10070, taken as fenced like 10071). The
//! first message in flight carries no id: its expected sequence is exact, and the
//! server forgets message ids after the 2-minute duplicate window. When any ack in
//! the window fails, every unacknowledged message is sent again one by one, in
//! order, with the same ids and expected sequences: the ones already stored come
//! back as duplicates.
//!
//! # The audit chain
//!
//! Every record carries its chain hash and every message the hashes before and
//! after it (`codec.rs`, `chain.rs`). The writer continues from the stored hash of
//! the last record it read at open (or the takeover marker's), so the chain runs
//! unbroken across a failover. With `verify_chain` an open (and a `reopen`) walks
//! every message it has not walked yet and refuses a broken chain with
//! [`ClusterError::ChainBroken`] unless `accept_broken_chain`. Checkpoints go to the
//! region's chain bucket after the batch they name was acknowledged.
//!
//! Batches in flight are chained at submit, in submit order, each from the hash
//! after the one submitted before it. When one is refused every batch behind it is
//! refused too (the `Nats-Expected-Last-Msg-Id` above), the journal is poisoned and
//! the submitted chain head falls back to the acknowledged one with the record seqs.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use opcenter_store::{
    Checkpoint, GENESIS, Hash, Journal, Record, SnapshotWrite, StoreError, hex, link, unhex,
};

use crate::ClusterError;
use crate::chain::{self, ChainWalk};
use crate::codec::{self, CHAIN_HEADER, CHAIN_PREV_HEADER, FIRST_SEQ_HEADER};
use crate::region::{self, RegionNames};
use crate::snapshot::{self, SnapshotStore};

/// Settings of a [`JetStreamJournal`].
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// The region: stream `OPC_<region>`, subject `journal.<region>`.
    pub region: String,
    /// Copies of the stream and the snapshot bucket: 1 on a single server, 3 on a
    /// 3-node cluster (the durable setup). Used only when creating them.
    pub replicas: usize,
    /// How long a publish is retried (same `Nats-Msg-Id`) before the append fails.
    /// Must stay well below the stream's 2-minute duplicate window.
    pub publish_deadline: Duration,
    /// How long one publish waits for its ack before it is sent again.
    pub ack_timeout: Duration,
    /// This writer's identity in `Nats-Msg-Id`; a random one when `None`.
    pub writer_id: Option<String>,
    /// Most messages in flight in [`JetStreamJournal::submit`] before it waits.
    pub max_in_flight: usize,
    /// A chain checkpoint is put into the chain bucket once this many records were
    /// acknowledged since the last one (0 = never by count).
    pub checkpoint_records: u64,
    /// ...or at the first acknowledged batch this long after the last one (zero =
    /// never by time).
    pub checkpoint_interval: Duration,
    /// Walk the chain of every message at open and `reopen` (an engine). A hub,
    /// which never appends, turns it off and takes the tail hash from the last
    /// message's header.
    pub verify_chain: bool,
    /// Open even if the walk finds breaks, logging each at `error` ("AUDIT CHAIN
    /// BROKEN"); appends then continue from the stored hashes.
    pub accept_broken_chain: bool,
}

impl JournalOptions {
    /// Defaults for a region: R1, 30 s publish deadline, 2 s ack timeout, 256 in
    /// flight, a checkpoint every 10 000 records or 5 minutes, the chain verified.
    pub fn new(region: impl Into<String>) -> JournalOptions {
        JournalOptions {
            region: region.into(),
            replicas: 1,
            publish_deadline: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(2),
            writer_id: None,
            max_in_flight: 256,
            checkpoint_records: 10_000,
            checkpoint_interval: Duration::from_secs(300),
            verify_chain: true,
            accept_broken_chain: false,
        }
    }

    /// The same with `replicas` copies.
    pub fn replicas(mut self, replicas: usize) -> JournalOptions {
        self.replicas = replicas;
        self
    }
}

/// Where the blocking calls run their futures.
enum Rt {
    /// A runtime of our own (one worker thread), for callers without one.
    Owned(tokio::runtime::Runtime),
    /// The caller's runtime; we block the calling (non-runtime) thread on it.
    Shared(tokio::runtime::Handle),
}

impl Rt {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match self {
            Rt::Owned(rt) => rt.block_on(f),
            Rt::Shared(h) => h.block_on(f),
        }
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match self {
            Rt::Owned(rt) => rt.handle(),
            Rt::Shared(h) => h,
        }
    }
}

/// A message published but not yet acknowledged.
struct Pending {
    first: u64,
    count: u64,
    /// Stream sequence this message must follow.
    expected_last: u64,
    msg_id: String,
    /// `Nats-Msg-Id` of the message this one must follow, when that one was still
    /// in flight at submit time: a predicted `expected_last` alone would let this
    /// message land after another writer's one if its predecessor was refused.
    expected_last_id: Option<String>,
    payload: Bytes,
    ack: Option<PublishAckFuture>,
    /// A takeover message's [`TAKEOVER_HEADER`] value (no records in it).
    takeover: Option<String>,
    /// Chain hash before the first record, and after the last.
    prev: Hash,
    chain: Hash,
}

/// A snapshot prepared by [`JetStreamJournal`]'s `prepare_snapshot`: writes it
/// to the bucket from the calling (non-runtime) thread, without the journal.
struct KvSnapshotWriter {
    handle: tokio::runtime::Handle,
    snapshots: SnapshotStore,
    seq: u64,
    deadline: Duration,
}

impl JetStreamJournal {
    /// The writer of a snapshot at `seq` (refused past the acknowledged end).
    fn snapshot_writer(&self, seq: u64) -> Result<KvSnapshotWriter, StoreError> {
        if seq > self.last_seq {
            return Err(StoreError::SnapshotAhead {
                seq,
                last_seq: self.last_seq,
            });
        }
        Ok(KvSnapshotWriter {
            handle: self.rt.handle().clone(),
            snapshots: self.snapshots.clone(),
            seq,
            deadline: self.opts.publish_deadline,
        })
    }
}

impl SnapshotWrite for KvSnapshotWriter {
    // Chunks and manifest are plain puts under fixed keys: writing again is harmless.
    fn write(self: Box<Self>, bytes: &[u8]) -> Result<(), StoreError> {
        let KvSnapshotWriter {
            handle,
            snapshots,
            seq,
            deadline,
        } = *self;
        let _serial = snapshots.serialize();
        Ok(handle.block_on(retry_nats(deadline, "write snapshot", || {
            snapshots.write(seq, bytes)
        }))?)
    }
}

/// Header of a takeover message: a message with no records that a new engine
/// appends (with the expected last sequence of the end it read) before it writes,
/// so that any older writer's next append is fenced. Value: `<node> <lease epoch>`.
pub const TAKEOVER_HEADER: &str = "Opc-Takeover";

/// The region's journal on JetStream. See the module docs.
pub struct JetStreamJournal {
    rt: Rt,
    js: jetstream::Context,
    stream: stream::Stream,
    names: RegionNames,
    opts: JournalOptions,
    epoch: String,
    writer: String,
    max_message_bytes: usize,
    /// Record seq of the oldest retained record.
    first_seq: u64,
    /// Record seq of the newest acknowledged record.
    last_seq: u64,
    /// Stream sequences of the oldest retained and the newest acknowledged message.
    stream_first: u64,
    stream_last: u64,
    /// In order; the front is the oldest.
    pending: VecDeque<Pending>,
    submitted_last: u64,
    submitted_stream_last: u64,
    poisoned: bool,
    /// `(record seq, stream sequence)` of a message that starts at that record: where
    /// the last read stopped, so a replay loop needs no search per call.
    cursor: Mutex<Option<(u64, u64)>>,
    snapshots: SnapshotStore,
    /// The chain's stored hash after `last_seq` (acknowledged) and after
    /// `submitted_last`.
    chain_head: Hash,
    submitted_head: Hash,
    /// The verification walk so far (with `verify_chain`) and the last stream
    /// sequence it has walked.
    walk: ChainWalk,
    walked_stream: u64,
    chain_kv: kv::Store,
    /// Record seq and time of the last checkpoint.
    checkpoint_at: (u64, Instant),
}

/// Room left in a message for headers (ids, sequences) under the server's max payload.
const HEADER_ROOM: usize = 1024;

/// Below this many messages to read, direct gets beat creating a consumer.
const DIRECT_READ_MAX: u64 = 4;

pub(crate) fn stream_corrupt(
    names: &RegionNames,
    stream_seq: u64,
    reason: impl Into<String>,
) -> ClusterError {
    ClusterError::Corrupt {
        stream: names.stream.clone(),
        stream_seq,
        reason: reason.into(),
    }
}

/// `(first record seq, record count)` of a journal message.
pub(crate) fn batch_bounds(
    names: &RegionNames,
    stream_seq: u64,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<(u64, u64), ClusterError> {
    let first = headers
        .and_then(|h| h.get(FIRST_SEQ_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or_else(|| stream_corrupt(names, stream_seq, "no Opc-First-Seq header"))?;
    let count =
        codec::count(payload).ok_or_else(|| stream_corrupt(names, stream_seq, "bad record framing"))?;
    Ok((first, count))
}

/// `(first record seq, record count)` of the message at `stream_seq`, by direct get.
pub(crate) async fn message_bounds(
    stream: &stream::Stream,
    names: &RegionNames,
    stream_seq: u64,
) -> Result<(u64, u64), ClusterError> {
    let m = stream
        .get_raw_message(stream_seq)
        .await
        .map_err(|e| ClusterError::nats("get message")(e.into()))?;
    batch_bounds(names, stream_seq, Some(&m.headers), &m.payload)
}

/// Stream sequence of the message holding record `seq`, by a binary search over
/// direct gets of messages `lo..=hi` (the message at `lo` must start at or before
/// `seq`).
pub(crate) async fn locate(
    stream: &stream::Stream,
    names: &RegionNames,
    mut lo: u64,
    mut hi: u64,
    seq: u64,
) -> Result<u64, ClusterError> {
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let (first, _) = message_bounds(stream, names, mid).await?;
        if first <= seq {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// The stream's info, fresh from the server.
pub(crate) async fn fresh_info(stream: &mut stream::Stream) -> Result<stream::Info, ClusterError> {
    stream
        .info()
        .await
        .cloned()
        .map_err(|e| ClusterError::nats("stream info")(e.into()))
}

/// Messages of the region's subject from stream sequence `start` on, through an
/// ordered consumer (ephemeral, recreated by the client after a gap or a failover).
pub(crate) async fn ordered_from(
    stream: &stream::Stream,
    names: &RegionNames,
    start: u64,
) -> Result<consumer::pull::Ordered, ClusterError> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: names.subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::nats("create ordered consumer")(e.into()))?;
    consumer
        .messages()
        .await
        .map_err(|e| ClusterError::nats("consume")(e.into()))
}

/// Calls `f` with every message of stream sequences `from..=to` in order (direct
/// gets for a few, an ordered consumer for more), until it returns `Ok(true)`
/// (enough) or an error.
pub(crate) async fn walk_messages(
    stream: &stream::Stream,
    names: &RegionNames,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, Option<&HeaderMap>, &[u8]) -> Result<bool, ClusterError>,
) -> Result<(), ClusterError> {
    if from > to {
        return Ok(());
    }
    if to + 1 - from <= DIRECT_READ_MAX {
        for s in from..=to {
            let m = stream
                .get_raw_message(s)
                .await
                .map_err(|e| ClusterError::nats("get message")(e.into()))?;
            if f(s, Some(&m.headers), &m.payload)? {
                break;
            }
        }
        return Ok(());
    }
    let mut msgs = ordered_from(stream, names, from).await?;
    while let Some(m) = msgs.next().await {
        let m = m.map_err(|e| ClusterError::nats("consume")(e.into()))?;
        let s = m
            .info()
            .map_err(|e| ClusterError::nats("message info")(e))?
            .stream_sequence;
        if f(s, m.headers.as_ref(), &m.payload)? || s >= to {
            break;
        }
    }
    Ok(())
}

/// The journal's epoch for a stream: its name and creation time. A stream deleted and
/// created again under the same name gets another one.
pub(crate) fn epoch_of(info: &stream::Info) -> String {
    format!("{}@{}", info.config.name, info.created.unix_timestamp_nanos())
}

impl JetStreamJournal {
    /// Connects to `urls` (comma-separated `nats://host:port` list) on a runtime of
    /// its own (one worker thread) and opens the region's journal.
    pub fn connect(urls: &str, opts: JournalOptions) -> Result<JetStreamJournal, ClusterError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("opc-nats")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::nats("start runtime")(e.into()))?;
        let client = rt
            .block_on(crate::connect(urls))
            .map_err(ClusterError::nats("connect"))?;
        Self::open_on(Rt::Owned(rt), client, opts)
    }

    /// Opens the region's journal over `client`, blocking the calling thread on the
    /// caller's runtime `handle` (the engine's own OS thread; never a runtime thread:
    /// `Handle::block_on` panics there). The runtime must be multi-threaded: its
    /// workers drive the connection while this thread waits. Creates the stream and
    /// the snapshot bucket if they do not exist.
    pub fn open(
        handle: tokio::runtime::Handle,
        client: async_nats::Client,
        opts: JournalOptions,
    ) -> Result<JetStreamJournal, ClusterError> {
        Self::open_on(Rt::Shared(handle), client, opts)
    }

    fn open_on(
        rt: Rt,
        client: async_nats::Client,
        opts: JournalOptions,
    ) -> Result<JetStreamJournal, ClusterError> {
        let names = RegionNames::new(&opts.region)?;
        let max_message_bytes = (client.server_info().max_payload)
            .saturating_sub(HEADER_ROOM)
            .max(4096);
        // The context spawns its acker task on the current runtime.
        let mut js = {
            let _in_runtime = rt.handle().enter();
            jetstream::new(client)
        };
        js.set_timeout(opts.ack_timeout);
        let writer = opts
            .writer_id
            .clone()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        // A cluster that has just started (or is electing a meta leader) answers
        // these with timeouts: retried until the publish deadline, like appends.
        let (stream, kv, chain_kv, checkpoints) =
            rt.block_on(retry_nats(opts.publish_deadline, "open journal", || async {
                let stream =
                    region::open_or_create_stream(&js, region::journal_stream_config(&names, opts.replicas))
                        .await?;
                let kv =
                    region::open_kv_bucket(&js, &names.snapshot_bucket, opts.replicas, 1, Duration::ZERO)
                        .await?;
                let chain_kv = chain::open_bucket(&js, &names, opts.replicas).await?;
                let checkpoints = chain::read_checkpoints(&chain_kv).await?;
                Ok::<_, ClusterError>((stream, kv, chain_kv, checkpoints))
            }))?;
        let snapshots = SnapshotStore::new(kv, names.snapshot_bucket.clone(), max_message_bytes);
        let mut j = JetStreamJournal {
            rt,
            js,
            stream,
            names,
            opts,
            epoch: String::new(),
            writer,
            max_message_bytes,
            first_seq: 1,
            last_seq: 0,
            stream_first: 1,
            stream_last: 0,
            pending: VecDeque::new(),
            submitted_last: 0,
            submitted_stream_last: 0,
            poisoned: false,
            cursor: Mutex::new(None),
            snapshots,
            chain_head: GENESIS,
            submitted_head: GENESIS,
            walk: ChainWalk::new(&checkpoints),
            walked_stream: 0,
            chain_kv,
            checkpoint_at: (checkpoints.last().map_or(0, |c| c.seq), Instant::now()),
        };
        j.load_tail()?;
        Ok(j)
    }

    /// Reads the stream's identity, its first and last messages: where appends go on.
    fn load_tail(&mut self) -> Result<(), ClusterError> {
        let names = &self.names;
        let stream = &self.stream;
        let deadline = self.opts.publish_deadline;
        let (info, first, last) = self.rt.block_on(retry_nats(deadline, "open journal", || async {
            let info = fresh_info(&mut stream.clone()).await?;
            let st = &info.state;
            if st.messages == 0 {
                if st.last_sequence > 0 {
                    // Compaction never purges the last message, so an empty stream
                    // with history was purged by someone else: the records are gone.
                    return Err(stream_corrupt(
                        names,
                        st.last_sequence,
                        "stream has history but no messages (purged outside the journal)",
                    ));
                }
                return Ok((info, None, None));
            }
            let first = message_bounds(stream, names, st.first_sequence).await?;
            let last = message_bounds(stream, names, st.last_sequence).await?;
            Ok((info, Some(first), Some(last)))
        }))?;
        self.epoch = epoch_of(&info);
        self.stream_first = info.state.first_sequence.max(1);
        self.stream_last = info.state.last_sequence;
        match (first, last) {
            (Some((f, _)), Some((lf, lc))) => {
                self.first_seq = f;
                self.last_seq = lf + lc - 1;
            }
            _ => {
                self.first_seq = 1;
                self.last_seq = 0;
                self.stream_first = self.stream_last + 1;
            }
        }
        self.submitted_last = self.last_seq;
        self.submitted_stream_last = self.stream_last;
        self.load_chain_head()?;
        self.submitted_head = self.chain_head;
        Ok(())
    }

    /// The chain's hash at the stream's end: walked and checked with `verify_chain`
    /// (see the module docs), else read from the last message's `Opc-Chain`.
    fn load_chain_head(&mut self) -> Result<(), ClusterError> {
        if self.stream_last == 0 || self.stream_last < self.stream_first {
            // Nothing retained: a new stream.
            self.chain_head = GENESIS;
            return Ok(());
        }
        if !self.opts.verify_chain {
            let last = self.stream_last;
            let stream = &self.stream;
            let m = self.rt.block_on(retry_nats(
                self.opts.publish_deadline,
                "read the chain head",
                || async {
                    stream
                        .get_raw_message(last)
                        .await
                        .map_err(|e| ClusterError::nats("get message")(e.into()))
                },
            ))?;
            self.chain_head = m
                .headers
                .get(CHAIN_HEADER)
                .and_then(|v| unhex(v.as_str()))
                .ok_or_else(|| stream_corrupt(&self.names, last, "no Opc-Chain header"))?;
            return Ok(());
        }
        if self.walked_stream + 1 < self.stream_first {
            // Compacted past what we walked (by another writer): start again.
            self.walk = ChainWalk::new(&[]);
        }
        let from = (self.walked_stream + 1).max(self.stream_first);
        // A warm standby re-reads every second: only the first walk is news.
        let first_walk = self.walked_stream == 0;
        let before = self.walk.breaks.len();
        let started = Instant::now();
        if from <= self.stream_last {
            let (stream, names, to) = (&self.stream, &self.names, self.stream_last);
            let walk = &mut self.walk;
            let snapshot = walk.clone();
            *walk = self
                .rt
                .block_on(retry_nats(self.opts.publish_deadline, "verify the chain", || {
                    let mut w = snapshot.clone();
                    async move {
                        walk_messages(stream, names, from, to, |s, h, p| {
                            w.message(s, h, p);
                            Ok(false)
                        })
                        .await?;
                        Ok(w)
                    }
                }))?;
        }
        self.walked_stream = self.stream_last;
        let mut walk = self.walk.clone();
        walk.finish();
        let new_breaks = &walk.breaks[before.min(walk.breaks.len())..];
        if !first_walk && new_breaks.is_empty() {
            tracing::debug!(
                stream = %self.names.stream,
                from,
                to = self.stream_last,
                took_ms = started.elapsed().as_millis() as u64,
                "audit chain walked on"
            );
        } else {
            tracing::info!(
                stream = %self.names.stream,
                records = walk.last_seq.saturating_sub(walk.first_seq.saturating_sub(1)),
                messages = walk.messages,
                takeovers = walk.takeovers,
                checkpoints = walk.checkpoints_checked,
                head = %hex(&walk.head),
                took_ms = started.elapsed().as_millis() as u64,
                "audit chain walked"
            );
        }
        if let Some(first) = new_breaks.first() {
            if !self.opts.accept_broken_chain {
                return Err(ClusterError::ChainBroken {
                    stream: self.names.stream.clone(),
                    first: first.to_string(),
                    breaks: new_breaks.len(),
                });
            }
            for b in new_breaks {
                tracing::error!(stream = %self.names.stream, r#break = %b, "AUDIT CHAIN BROKEN (accepted by --accept-broken-chain)");
            }
            // Reported once: later reopens report only new ones.
            self.walk.breaks = walk.breaks.clone();
        }
        self.chain_head = walk.head;
        Ok(())
    }

    /// Puts a checkpoint for `last_seq` when one is due (see [`JournalOptions`]).
    /// A failed put is logged and tried again at the next acknowledged batch.
    fn maybe_checkpoint(&mut self) {
        let (at_seq, at) = self.checkpoint_at;
        if self.last_seq <= at_seq {
            return;
        }
        let by_count =
            self.opts.checkpoint_records > 0 && self.last_seq - at_seq >= self.opts.checkpoint_records;
        let by_time =
            !self.opts.checkpoint_interval.is_zero() && at.elapsed() >= self.opts.checkpoint_interval;
        if !(by_count || by_time) {
            return;
        }
        let cp = Checkpoint {
            seq: self.last_seq,
            hash: self.chain_head,
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        match self.rt.block_on(chain::put_checkpoint(&self.chain_kv, &cp)) {
            Ok(()) => self.checkpoint_at = (cp.seq, Instant::now()),
            Err(e) => {
                tracing::warn!(error = %e, seq = cp.seq, "could not put a chain checkpoint; retrying later")
            }
        }
    }

    /// The chain's hash after the newest acknowledged record (or takeover).
    pub fn chain_head(&self) -> Hash {
        self.chain_head
    }

    /// Forgets what is in flight and the poisoned state, and reads the stream's tail
    /// again, as a fresh open would: after a fencing error, a standby re-reads where
    /// the other writer left the stream (then replays from its own `last_seq`).
    pub fn reopen(&mut self) -> Result<(), ClusterError> {
        self.pending.clear();
        self.poisoned = false;
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.load_tail()
    }

    /// The region's names (stream, subject, snapshot bucket).
    pub fn names(&self) -> &RegionNames {
        &self.names
    }

    /// This writer's identity, the prefix of its `Nats-Msg-Id`s.
    pub fn writer_id(&self) -> &str {
        &self.writer
    }

    /// Stream sequence of the newest acknowledged message (the next append expects it).
    pub fn stream_last_seq(&self) -> u64 {
        self.stream_last
    }

    /// Record seq of the newest record submitted (acknowledged or still in flight).
    pub fn submitted_last_seq(&self) -> u64 {
        self.submitted_last
    }

    /// Number of messages published and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The stream's current info from the server: state (messages, sequences) and, on
    /// a cluster, which server leads it.
    pub fn stream_info(&self) -> Result<stream::Info, ClusterError> {
        let mut s = self.stream.clone();
        self.rt.block_on(fresh_info(&mut s))
    }

    /// The JetStream context (for the hub's consumers and the lease bucket).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    fn poison<T>(&mut self, err: ClusterError) -> Result<T, ClusterError> {
        self.poisoned = true;
        self.pending.clear();
        self.submitted_last = self.last_seq;
        self.submitted_stream_last = self.stream_last;
        self.submitted_head = self.chain_head;
        Err(err)
    }

    /// Publishes `payloads` as one batch (several messages only if it exceeds the
    /// server's max payload) without waiting for the ack, and returns the seqs the
    /// records get once [`wait_acked`](Self::wait_acked) succeeds. Nothing may be
    /// acknowledged to clients before that. Waits for older acks when
    /// `max_in_flight` messages are outstanding.
    pub fn submit(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, ClusterError> {
        if self.poisoned {
            return Err(ClusterError::Poisoned);
        }
        // A record must fit one message: checked before any I/O, so not poisoning.
        let max = opcenter_store::MAX_PAYLOAD.min(self.max_message_bytes - codec::FRAME_OVERHEAD);
        if let Some(p) = payloads.iter().find(|p| p.len() > max) {
            return Err(ClusterError::RecordTooLarge { len: p.len(), max });
        }
        let first = self.submitted_last + 1;
        if payloads.is_empty() {
            return Ok(first..=self.submitted_last);
        }
        // Cut the batch into messages that fit the server's max payload.
        let mut groups: Vec<&[&[u8]]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, p) in payloads.iter().enumerate() {
            let n = p.len() + codec::FRAME_OVERHEAD;
            if i > start && bytes + n > self.max_message_bytes {
                groups.push(&payloads[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += n;
        }
        groups.push(&payloads[start..]);
        for g in groups {
            while self.pending.len() >= self.opts.max_in_flight.max(1) {
                self.ack_front()?;
            }
            let first = self.submitted_last + 1;
            let prev = self.submitted_head;
            let mut h = prev;
            let chained: Vec<(Hash, &[u8])> = g
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    h = link(&h, first + i as u64, p);
                    (h, *p)
                })
                .collect();
            let p = Pending {
                first,
                count: g.len() as u64,
                expected_last: self.submitted_stream_last,
                msg_id: format!("{}:{}", self.writer, first),
                expected_last_id: self.pending.back().map(|q| q.msg_id.clone()),
                payload: codec::encode(&chained),
                ack: None,
                takeover: None,
                prev,
                chain: h,
            };
            self.submitted_head = h;
            let sent = self.rt.block_on(publish(&self.js, &self.names.subject, &p));
            self.submitted_last += p.count;
            self.submitted_stream_last += 1;
            // A failed send is retried by the ack path like a failed ack.
            self.pending.push_back(Pending { ack: sent.ok(), ..p });
        }
        Ok(first..=self.submitted_last)
    }

    /// Appends a takeover message (no records, header [`TAKEOVER_HEADER`] =
    /// `marker`) right after the stream's end as this journal last read it, and
    /// returns its stream sequence. From then on every other writer's append is
    /// fenced. `Err(Fenced)` when someone appended since: [`reopen`](Self::reopen)
    /// (re-read the end) and try again, or step down. Record seqs do not move.
    pub fn append_takeover(&mut self, marker: &str) -> Result<u64, ClusterError> {
        self.wait_acked()?;
        let p = Pending {
            first: self.last_seq + 1,
            count: 0,
            expected_last: self.stream_last,
            // Not `<writer>:<first>`: the next batch starts at the same seq and must
            // not be taken for a duplicate of this message.
            msg_id: format!("{}:takeover:{}", self.writer, self.stream_last),
            expected_last_id: None,
            payload: Bytes::new(),
            ack: None,
            takeover: Some(marker.to_owned()),
            // The hash this writer replayed: the chain runs on through the marker.
            prev: self.chain_head,
            chain: self.chain_head,
        };
        match self.rt.block_on(publish_retrying(
            &self.js,
            &self.stream,
            &self.names,
            &p,
            &self.opts,
        )) {
            Ok(()) => {
                self.stream_last = p.expected_last + 1;
                self.submitted_stream_last = self.stream_last;
                Ok(self.stream_last)
            }
            Err(e) => self.poison(e),
        }
    }

    /// Waits until every submitted message is acknowledged; returns the newest
    /// durable record seq. On `Err` nothing unacknowledged counts as saved and the
    /// journal is poisoned.
    pub fn wait_acked(&mut self) -> Result<u64, ClusterError> {
        while !self.pending.is_empty() {
            self.ack_front()?;
        }
        Ok(self.last_seq)
    }

    /// Waits for the oldest pending ack; on failure resends every pending message in
    /// order (see the module docs).
    fn ack_front(&mut self) -> Result<(), ClusterError> {
        let Some(p) = self.pending.front_mut() else {
            return Ok(());
        };
        let expected = p.expected_last + 1;
        let ack = p.ack.take();
        let res = match ack {
            Some(f) => self.rt.block_on(ack_seq(f)),
            None => Err("not sent".to_owned()),
        };
        match res {
            Ok(seq) if seq == expected => {
                self.commit_front();
                Ok(())
            }
            Ok(seq) => {
                let err = stream_corrupt(
                    &self.names,
                    seq,
                    format!("ack at stream sequence {seq}, expected {expected}"),
                );
                self.poison(err)
            }
            Err(_) => {
                // Drop the other acks: their fate is learned again by resending.
                for q in &mut self.pending {
                    q.ack = None;
                }
                while let Some(p) = self.pending.front() {
                    match self.rt.block_on(publish_retrying(
                        &self.js,
                        &self.stream,
                        &self.names,
                        p,
                        &self.opts,
                    )) {
                        Ok(()) => self.commit_front(),
                        Err(e) => return self.poison(e),
                    }
                }
                Ok(())
            }
        }
    }

    fn commit_front(&mut self) {
        if let Some(p) = self.pending.pop_front() {
            self.last_seq = p.first + p.count - 1;
            self.stream_last = p.expected_last + 1;
            self.chain_head = p.chain;
            self.maybe_checkpoint();
        }
    }

    /// Stream sequence of the message holding record `seq` (which must be retained:
    /// `first_seq <= seq <= last_seq`): the cursor, else a binary search.
    async fn locate(&self, seq: u64) -> Result<u64, ClusterError> {
        if let Some((rec, s)) = *self.cursor.lock().unwrap_or_else(|p| p.into_inner())
            && rec == seq
        {
            return Ok(s);
        }
        locate(
            &self.stream,
            &self.names,
            self.stream_first,
            self.stream_last,
            seq,
        )
        .await
    }

    async fn get_bounds(&self, stream_seq: u64) -> Result<(u64, u64), ClusterError> {
        message_bounds(&self.stream, &self.names, stream_seq).await
    }

    /// Records after `after` from messages `from..=self.stream_last`, at most `max`.
    async fn read_messages(&self, from: u64, after: u64, max: usize) -> Result<Vec<Record>, ClusterError> {
        let mut out = Vec::new();
        let end = self.stream_last;
        let mut take = |stream_seq: u64, headers: Option<&HeaderMap>, payload: &[u8]| {
            let (first, _) = batch_bounds(&self.names, stream_seq, headers, payload)?;
            let recs = codec::decode(payload)
                .ok_or_else(|| stream_corrupt(&self.names, stream_seq, "bad record framing"))?;
            let expect = out.last().map_or(first, |r: &Record| r.seq + 1);
            if first != expect && !out.is_empty() {
                return Err(stream_corrupt(
                    &self.names,
                    stream_seq,
                    format!("batch starts at seq {first}, expected {expect}"),
                ));
            }
            for (i, payload) in recs.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq > after && out.len() < max {
                    out.push(Record { seq, payload });
                }
            }
            let next = first + codec::count(payload).unwrap_or(0);
            Ok::<_, ClusterError>((out.len() >= max, next))
        };
        let mut last_pos = None;
        walk_messages(&self.stream, &self.names, from, end, |s, headers, payload| {
            let (full, next) = take(s, headers, payload)?;
            last_pos = Some((next, s + 1));
            Ok(full)
        })
        .await?;
        if let Some(pos) = last_pos {
            *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(pos);
        }
        Ok(out)
    }

    /// [`Journal::read_from`] with the crate's error type, for
    /// `after_seq + 1 >= first_seq` (checked by the caller).
    fn read(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, ClusterError> {
        if after_seq >= self.last_seq || max == 0 {
            return Ok(Vec::new());
        }
        // Reads, too, meet leader elections (the stream's, the meta layer's for the
        // consumer): retried until the publish deadline.
        self.rt
            .block_on(retry_nats(self.opts.publish_deadline, "read", || async {
                let from = self.locate(after_seq + 1).await?;
                self.read_messages(from, after_seq, max).await
            }))
    }

    /// [`Journal::compact`] with the crate's error type.
    pub fn compact_stream(&mut self, keep_events: u64) -> Result<u64, ClusterError> {
        let seqs = self.rt.block_on(self.snapshots.seqs())?;
        // The older of the kept snapshots bounds what may go, so the fallback stays
        // replayable.
        let Some(&covered) = seqs.iter().rev().take(snapshot::KEEP).next_back() else {
            return Ok(self.first_seq);
        };
        let target = self.last_seq.saturating_sub(keep_events).min(covered);
        if target < self.first_seq || self.last_seq == 0 {
            return Ok(self.first_seq);
        }
        // Whole messages only, and never the last one (it tells where appends go on).
        let keep_from = (target + 1).min(self.last_seq);
        let (s, first) = self.rt.block_on(async {
            let s = self.locate(keep_from).await?;
            let (first, _) = self.get_bounds(s).await?;
            self.stream
                .purge()
                .sequence(s)
                .await
                .map_err(|e| ClusterError::nats("purge stream")(e.into()))?;
            Ok::<_, ClusterError>((s, first))
        })?;
        self.stream_first = s;
        self.first_seq = first;
        Ok(first)
    }
}

/// Sends one message; the returned future resolves to its ack.
async fn publish(js: &jetstream::Context, subject: &str, p: &Pending) -> Result<PublishAckFuture, String> {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, p.msg_id.as_str());
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        p.expected_last.to_string().as_str(),
    );
    if let Some(id) = &p.expected_last_id {
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID, id.as_str());
    }
    headers.insert(FIRST_SEQ_HEADER, p.first.to_string().as_str());
    headers.insert(CHAIN_PREV_HEADER, hex(&p.prev).as_str());
    headers.insert(CHAIN_HEADER, hex(&p.chain).as_str());
    if let Some(t) = &p.takeover {
        headers.insert(TAKEOVER_HEADER, t.as_str());
    }
    js.publish_with_headers(subject.to_owned(), headers, p.payload.clone())
        .await
        .map_err(|e| e.to_string())
}

/// Awaiting an ack, reduced to "stored at this stream sequence" or a reason.
async fn ack_seq(f: PublishAckFuture) -> Result<u64, String> {
    f.await.map(|a| a.sequence).map_err(|e| e.to_string())
}

/// Publishes `p` until it is acknowledged, JetStream refuses it for good, or
/// `publish_deadline` passes.
async fn publish_retrying(
    js: &jetstream::Context,
    stream: &stream::Stream,
    names: &RegionNames,
    p: &Pending,
    opts: &JournalOptions,
) -> Result<(), ClusterError> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        let last = match publish(js, &names.subject, p).await {
            Err(e) => e,
            Ok(f) => match f.await {
                Ok(ack) if ack.sequence == p.expected_last + 1 => return Ok(()),
                Ok(ack) => {
                    return Err(stream_corrupt(
                        names,
                        ack.sequence,
                        format!(
                            "ack at stream sequence {}, expected {} (duplicate: {})",
                            ack.sequence,
                            p.expected_last + 1,
                            ack.duplicate
                        ),
                    ));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId
                    ) =>
                {
                    // Ours, stored by an earlier attempt whose ack we lost?
                    return match stored_by_us(stream, p, start, opts.publish_deadline).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(ClusterError::Fenced {
                            stream: names.stream.clone(),
                            expected_last: p.expected_last,
                        }),
                        Err(last) => Err(ClusterError::Unavailable {
                            op: "publish",
                            waited: start.elapsed(),
                            last,
                        }),
                    };
                }
                Err(e) if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded) => {
                    return Err(ClusterError::nats("publish")(e.into()));
                }
                Err(e) => e.to_string(),
            },
        };
        let waited = start.elapsed();
        if waited >= opts.publish_deadline {
            return Err(ClusterError::Unavailable {
                op: "publish",
                waited,
                last,
            });
        }
        tracing::debug!(msg_id = %p.msg_id, error = %last, "publish not acknowledged; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

/// Runs `op` again while it fails with a NATS error (a leader election of the
/// stream, of the snapshot bucket or of the meta layer), until `deadline` has passed.
async fn retry_nats<T, F, Fut>(deadline: Duration, what: &'static str, mut op: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let start = Instant::now();
    loop {
        match op().await {
            Err(ClusterError::Nats { op, source }) => {
                if start.elapsed() >= deadline {
                    return Err(ClusterError::Nats { op, source });
                }
                tracing::debug!(what, op, error = %source, "JetStream call failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            res => return res,
        }
    }
}

/// Whether the message right after `p.expected_last` carries `p`'s `Nats-Msg-Id`:
/// `Ok(false)` only when the stream answers with another message or none. A read
/// that fails (a leader election; the retry that got 10071 may have reached a
/// new leader first) is tried again until `deadline` from `start`, then `Err`:
/// not knowing is not a fence.
async fn stored_by_us(
    stream: &stream::Stream,
    p: &Pending,
    start: Instant,
    deadline: Duration,
) -> Result<bool, String> {
    loop {
        match stream.get_raw_message(p.expected_last + 1).await {
            Ok(m) => {
                return Ok(m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .is_some_and(|v| v.as_str() == p.msg_id));
            }
            Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => return Ok(false),
            Err(e) if start.elapsed() >= deadline => return Err(e.to_string()),
            Err(e) => {
                tracing::debug!(msg_id = %p.msg_id, error = %e, "cannot read back the message at the expected position; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Journal for JetStreamJournal {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn first_seq(&self) -> u64 {
        self.first_seq
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let range = self.submit(payloads)?;
        self.wait_acked()?;
        Ok(range)
    }

    fn submit_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        Ok(self.submit(payloads)?)
    }

    fn wait_durable(&mut self, seq: u64) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        while self.last_seq < seq && !self.pending.is_empty() {
            self.ack_front()?;
        }
        if self.last_seq < seq {
            // Never submitted: nothing can make it durable.
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    fn pipelined(&self) -> bool {
        true
    }

    fn read_from(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, StoreError> {
        if after_seq + 1 < self.first_seq {
            return Err(StoreError::Compacted {
                after_seq,
                first_seq: self.first_seq,
            });
        }
        Ok(self.read(after_seq, max)?)
    }

    fn write_snapshot(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        Box::new(self.snapshot_writer(seq)?).write(bytes)
    }

    // A snapshot is a few hundred KV puts (133 MB at 250 000 incidents): written
    // under the journal's lock, it held every append behind it for seconds. The
    // writer needs only the bucket and the runtime. Compaction needs no part in
    // the writers' serialization: it lists manifests, written last.
    fn prepare_snapshot(&self, seq: u64) -> Result<Option<Box<dyn SnapshotWrite>>, StoreError> {
        Ok(Some(Box::new(self.snapshot_writer(seq)?)))
    }

    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let snapshots = &self.snapshots;
        let max_seq = self.last_seq;
        Ok(self
            .rt
            .block_on(retry_nats(self.opts.publish_deadline, "latest snapshot", || {
                snapshots.latest(max_seq)
            }))?)
    }

    fn latest_snapshot_seq(&self) -> Result<Option<u64>, StoreError> {
        let snapshots = &self.snapshots;
        let max_seq = self.last_seq;
        Ok(self.rt.block_on(retry_nats(
            self.opts.publish_deadline,
            "latest snapshot seq",
            || snapshots.latest_seq(max_seq),
        ))?)
    }

    fn compact(&mut self, keep_events: u64) -> Result<u64, StoreError> {
        Ok(self.compact_stream(keep_events)?)
    }
}
