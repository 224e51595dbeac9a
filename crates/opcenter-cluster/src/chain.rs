//! The audit hash chain on a region's stream: checking it message by message
//! ([`ChainWalk`]), the checkpoint bucket (`OPC_<region>_chain`), and the
//! read-only walk of a whole region for `opcenter audit verify` ([`verify_region`]).
//! Owns what a break on the stream is; must never decide whether a break stops a
//! server (that is [`JournalOptions::accept_broken_chain`](crate::JournalOptions)).
//!
//! The chain is the file journal's, unchanged (`opcenter_store::link`):
//! `h_n = SHA-256(h_{n-1} ‖ seq_n as u64 LE ‖ record bytes)`, with seq the record
//! seq (not the stream sequence). Every record's `h_n` is stored next to it in the
//! message payload (`codec.rs`), every message carries the hash before its first
//! record (`Opc-Chain-Prev`) and after its last (`Opc-Chain`). So each link is
//! checked locally and a changed record is named exactly. A takeover message (no
//! records) carries the hash its writer replayed in both headers: it must equal
//! the hash of the record before it, so a new writer that does not continue the
//! chain shows as a break at the takeover.
//!
//! Checkpoints: the writer puts `Checkpoint::line()` (`<seq> <hash> <unix ms> <crc>`)
//! under key `head` of the KV bucket `OPC_<region>_chain` (history 64) after the
//! batch it names was acknowledged, every `checkpoint_records` records or at the
//! first append `checkpoint_interval` after the last one.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use opcenter_store::{Checkpoint, GENESIS, Hash, link, unhex};

use crate::ClusterError;
use crate::codec::{self, CHAIN_HEADER, CHAIN_PREV_HEADER, FIRST_SEQ_HEADER};
use crate::region::{self, RegionNames};

/// Key of the newest checkpoint in the chain bucket (its history holds older ones).
pub(crate) const CHECKPOINT_KEY: &str = "head";

/// Checkpoints kept in the bucket's history.
pub(crate) const CHECKPOINT_HISTORY: i64 = 64;

/// A place where the stream's chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBreak {
    /// The record whose link fails (for a message-level break, the message's first
    /// record seq; for a checkpoint, its seq).
    pub seq: u64,
    /// The stream sequence of the message where it shows (0 for a checkpoint).
    pub stream_seq: u64,
    /// What does not match.
    pub reason: String,
}

impl std::fmt::Display for StreamBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.stream_seq == 0 {
            write!(f, "seq {} (checkpoint): {}", self.seq, self.reason)
        } else {
            write!(
                f,
                "seq {} in stream message {}: {}",
                self.seq, self.stream_seq, self.reason
            )
        }
    }
}

fn header_hash(headers: Option<&HeaderMap>, name: &str) -> Option<Hash> {
    unhex(headers?.get(name)?.as_str())
}

/// Checks messages in stream order. Feed it every message from the oldest retained
/// one ([`message`](Self::message)), then [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct ChainWalk {
    /// Hash before the first record walked (the first message's `Opc-Chain-Prev`).
    pub base: Option<Hash>,
    /// The stored hash of the last record walked: where a writer continues.
    pub head: Hash,
    /// Record seq of the first record walked (0 before any).
    pub first_seq: u64,
    /// Record seq of the last record walked (0 before any).
    pub last_seq: u64,
    /// Messages walked, takeover messages among them.
    pub messages: u64,
    /// Takeover messages walked.
    pub takeovers: u64,
    /// Every break, in stream order.
    pub breaks: Vec<StreamBreak>,
    /// Checkpoints still to compare, by seq.
    pending_checkpoints: HashMap<u64, Hash>,
    /// Checkpoints compared.
    pub checkpoints_checked: usize,
    started: bool,
}

impl Default for ChainWalk {
    fn default() -> Self {
        ChainWalk::new(&[])
    }
}

impl ChainWalk {
    /// A walk that also compares these checkpoints when it meets their seqs.
    pub fn new(checkpoints: &[Checkpoint]) -> ChainWalk {
        ChainWalk {
            base: None,
            head: GENESIS,
            first_seq: 0,
            last_seq: 0,
            messages: 0,
            takeovers: 0,
            breaks: Vec::new(),
            pending_checkpoints: checkpoints.iter().map(|c| (c.seq, c.hash)).collect(),
            checkpoints_checked: 0,
            started: false,
        }
    }

    fn brk(&mut self, seq: u64, stream_seq: u64, reason: impl Into<String>) {
        self.breaks.push(StreamBreak {
            seq,
            stream_seq,
            reason: reason.into(),
        });
    }

    /// Checks one message (its stream sequence, headers and payload).
    pub fn message(&mut self, stream_seq: u64, headers: Option<&HeaderMap>, payload: &[u8]) {
        self.messages += 1;
        let expect = self.last_seq + 1;
        let Some(first) = headers
            .and_then(|h| h.get(FIRST_SEQ_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok())
        else {
            self.brk(expect, stream_seq, "no Opc-First-Seq header");
            return;
        };
        let Some(records) = codec::decode_chained(payload) else {
            self.brk(first, stream_seq, "bad record framing");
            return;
        };
        let prev = header_hash(headers, CHAIN_PREV_HEADER);
        let after = header_hash(headers, CHAIN_HEADER);
        let (Some(prev), Some(after)) = (prev, after) else {
            self.brk(
                first,
                stream_seq,
                "no Opc-Chain-Prev / Opc-Chain header (a message not written by a chaining writer)",
            );
            self.skip_to(first, &records);
            return;
        };
        if !self.started {
            self.started = true;
            self.base = Some(prev);
            self.head = prev;
            self.first_seq = first;
            self.last_seq = first.saturating_sub(1);
        } else {
            if first != expect {
                let why = if first > expect {
                    format!("records {expect}..={} are missing before this message", first - 1)
                } else {
                    format!(
                        "the message starts at seq {first}, but seq {} was already read",
                        expect - 1
                    )
                };
                self.brk(first, stream_seq, why);
            }
            if prev != self.head {
                let what = if records.is_empty() {
                    "the takeover message's Opc-Chain-Prev is not the hash of the record before it: \
                     the new writer did not continue the chain"
                } else {
                    "Opc-Chain-Prev is not the stored hash of the record before it: \
                     a record before this one was removed or this message was changed"
                };
                self.brk(first, stream_seq, what);
            }
        }
        if records.is_empty() {
            self.takeovers += 1;
            if after != prev {
                self.brk(
                    first,
                    stream_seq,
                    "a message without records whose Opc-Chain differs from its Opc-Chain-Prev",
                );
            }
            self.head = after;
            return;
        }
        let mut stored_prev = prev;
        for (i, (stored, body)) in records.iter().enumerate() {
            let seq = first + i as u64;
            if link(&stored_prev, seq, body) != *stored {
                self.brk(
                    seq,
                    stream_seq,
                    "the record's hash is not SHA-256(previous hash, seq, record): this record, \
                     or the hash before it, was changed",
                );
            }
            if let Some(cp) = self.pending_checkpoints.remove(&seq) {
                self.checkpoints_checked += 1;
                if cp != *stored {
                    self.brk(
                        seq,
                        0,
                        "the checkpoint's hash differs from the stream's: the stream was re-chained \
                         from this record or before",
                    );
                }
            }
            stored_prev = *stored;
        }
        if after != stored_prev {
            self.brk(
                first + records.len() as u64 - 1,
                stream_seq,
                "Opc-Chain is not the stored hash of the message's last record",
            );
        }
        // Later links are checked against what is stored, so one change is named once.
        self.head = stored_prev;
        self.last_seq = first + records.len() as u64 - 1;
    }

    fn skip_to(&mut self, first: u64, records: &[(Hash, &[u8])]) {
        if !self.started {
            self.started = true;
            self.first_seq = first;
        }
        if let Some((h, _)) = records.last() {
            self.head = *h;
            self.last_seq = first + records.len() as u64 - 1;
        }
    }

    /// Ends the walk: a checkpoint beyond the last record means acknowledged records
    /// were cut off; one before the first retained record cannot be checked (counted
    /// in the return value).
    pub fn finish(&mut self) -> usize {
        let mut unchecked = 0;
        let mut left: Vec<(u64, Hash)> = self.pending_checkpoints.drain().collect();
        left.sort();
        for (seq, _) in left {
            if seq > self.last_seq {
                self.brk(
                    seq,
                    0,
                    format!(
                        "a checkpoint names seq {seq}, beyond the stream's last record {}: \
                         acknowledged records were cut off",
                        self.last_seq
                    ),
                );
            } else {
                unchecked += 1;
            }
        }
        unchecked
    }
}

/// The region's checkpoint bucket (created if absent, like the snapshot bucket).
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    names: &RegionNames,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    region::open_kv_bucket(
        js,
        &names.chain_bucket,
        replicas,
        CHECKPOINT_HISTORY,
        Duration::ZERO,
    )
    .await
}

/// Every checkpoint in the bucket's history, oldest first (damaged entries skipped
/// with a warning).
pub(crate) async fn read_checkpoints(store: &kv::Store) -> Result<Vec<Checkpoint>, ClusterError> {
    let mut out = Vec::new();
    let mut entries = store
        .history(CHECKPOINT_KEY)
        .await
        .map_err(|e| ClusterError::nats("checkpoint history")(e.into()))?;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| ClusterError::nats("checkpoint history")(e.into()))?;
        if entry.operation != kv::Operation::Put {
            continue;
        }
        match std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|t| Checkpoint::parse(t.trim_end()))
        {
            Some(cp) => out.push(cp),
            None => tracing::warn!(revision = entry.revision, "skipping a damaged checkpoint entry"),
        }
    }
    Ok(out)
}

/// Puts a checkpoint into the bucket.
pub(crate) async fn put_checkpoint(store: &kv::Store, cp: &Checkpoint) -> Result<(), ClusterError> {
    let line = cp.line();
    store
        .put(CHECKPOINT_KEY, line.trim_end().to_owned().into())
        .await
        .map_err(|e| ClusterError::nats("put checkpoint")(e.into()))?;
    Ok(())
}

/// What [`verify_region`] found.
#[derive(Debug, Clone)]
pub struct RegionVerified {
    /// The stream.
    pub stream: String,
    /// The walk (range, base, head, breaks in stream order).
    pub walk: ChainWalk,
    /// Checkpoints in the bucket.
    pub checkpoints: usize,
    /// The newest checkpoint, if any.
    pub newest_checkpoint: Option<Checkpoint>,
}

/// Walks the region's whole stream read-only (nothing is created: a missing stream
/// is an error) and compares the checkpoints: `opcenter audit verify --region`.
pub async fn verify_region(client: async_nats::Client, region: &str) -> Result<RegionVerified, ClusterError> {
    let names = RegionNames::new(region)?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(&names.stream)
        .await
        .map_err(|e| ClusterError::nats("get the region's stream")(e.into()))?;
    let checkpoints = match js.get_key_value(&names.chain_bucket).await {
        Ok(store) => read_checkpoints(&store).await?,
        Err(_) => Vec::new(),
    };
    let info = crate::journal::fresh_info(&mut stream).await?;
    let mut walk = ChainWalk::new(&checkpoints);
    if info.state.messages > 0 {
        crate::journal::walk_messages(
            &stream,
            &names,
            info.state.first_sequence,
            info.state.last_sequence,
            |s, h, p| {
                walk.message(s, h, p);
                Ok(false)
            },
        )
        .await?;
    }
    walk.finish();
    Ok(RegionVerified {
        stream: names.stream,
        walk,
        checkpoints: checkpoints.len(),
        newest_checkpoint: checkpoints.last().copied(),
    })
}

/// The newest checkpoint of a region, if one was written: `opcenter audit head --region`.
pub async fn region_head(
    client: async_nats::Client,
    region: &str,
) -> Result<Option<Checkpoint>, ClusterError> {
    let names = RegionNames::new(region)?;
    let js = jetstream::new(client);
    let Ok(store) = js.get_key_value(&names.chain_bucket).await else {
        return Ok(None);
    };
    Ok(read_checkpoints(&store).await?.pop())
}
