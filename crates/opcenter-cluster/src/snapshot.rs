//! Snapshots of a region's state in a JetStream KV bucket, in chunks. Owns the key
//! layout, the manifest, the CRC check and "keep the newest two"; must never touch
//! the journal stream.
//!
//! A KV value is one NATS message, so it is limited by the server's `max_payload`
//! (1 MiB by default). A snapshot is therefore stored as chunks `c.<seq>.<i>` and
//! then a manifest `m.<seq>` = `"<seq> <len> <chunks> <crc32>"`: the manifest is
//! written last, so a snapshot without one (a crash mid-write) is ignored, and a
//! reader verifies the CRC over the reassembled bytes. (The object store would do the
//! chunking for us, but async-nats builds it only with a TLS crypto backend, a C build
//! this workspace avoids.)

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::ClusterError;

/// How many snapshots are kept (as `FileJournal` does): the newest, and one fallback.
pub(crate) const KEEP: usize = 2;

#[derive(Clone)]
pub(crate) struct SnapshotStore {
    kv: kv::Store,
    bucket: String,
    chunk_bytes: usize,
    /// Held (by a blocked OS thread, never across an `.await` of a runtime
    /// thread) for each whole write: writes of two snapshots never interleave.
    writes: Arc<Mutex<()>>,
}

fn manifest_key(seq: u64) -> String {
    format!("m.{seq:020}")
}

fn chunk_key(seq: u64, i: usize) -> String {
    format!("c.{seq:020}.{i}")
}

impl SnapshotStore {
    pub(crate) fn new(kv: kv::Store, bucket: String, chunk_bytes: usize) -> SnapshotStore {
        SnapshotStore {
            kv,
            bucket,
            chunk_bytes: chunk_bytes.max(1),
            writes: Arc::default(),
        }
    }

    /// Serializes whole writes: hold the guard around [`SnapshotStore::write`].
    pub(crate) fn serialize(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn corrupt(&self, reason: String) -> ClusterError {
        ClusterError::Corrupt {
            stream: format!("KV_{}", self.bucket),
            stream_seq: 0,
            reason,
        }
    }

    /// Seqs of the snapshots that have a manifest, ascending.
    pub(crate) async fn seqs(&self) -> Result<Vec<u64>, ClusterError> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(k) => k
                .try_collect()
                .await
                .map_err(|e| ClusterError::nats("list snapshot keys")(e.into()))?,
            Err(e) => return Err(ClusterError::nats("list snapshot keys")(e.into())),
        };
        let mut seqs: Vec<u64> = keys
            .iter()
            .filter_map(|k| k.strip_prefix("m.")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    pub(crate) async fn write(&self, seq: u64, bytes: &[u8]) -> Result<(), ClusterError> {
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(self.chunk_bytes).collect()
        };
        for (i, c) in chunks.iter().enumerate() {
            self.kv
                .put(chunk_key(seq, i), Bytes::copy_from_slice(c))
                .await
                .map_err(|e| ClusterError::nats("put snapshot chunk")(e.into()))?;
        }
        let manifest = format!(
            "{seq} {} {} {}",
            bytes.len(),
            chunks.len(),
            crc32fast::hash(bytes)
        );
        self.kv
            .put(manifest_key(seq), manifest.into())
            .await
            .map_err(|e| ClusterError::nats("put snapshot manifest")(e.into()))?;
        let seqs = self.seqs().await?;
        for &old in seqs.iter().rev().skip(KEEP) {
            self.remove(old).await?;
        }
        Ok(())
    }

    /// Removes the manifest first, so no reader starts on a snapshot losing its chunks.
    async fn remove(&self, seq: u64) -> Result<(), ClusterError> {
        let chunks = match self.manifest(seq).await? {
            Some((_, _, n, _)) => n,
            None => 0,
        };
        self.kv
            .purge(manifest_key(seq))
            .await
            .map_err(|e| ClusterError::nats("purge snapshot manifest")(e.into()))?;
        for i in 0..chunks {
            self.kv
                .purge(chunk_key(seq, i))
                .await
                .map_err(|e| ClusterError::nats("purge snapshot chunk")(e.into()))?;
        }
        Ok(())
    }

    /// `(seq, len, chunks, crc)`, `None` if there is no such manifest.
    async fn manifest(&self, seq: u64) -> Result<Option<(u64, usize, usize, u32)>, ClusterError> {
        let Some(v) = self
            .kv
            .get(manifest_key(seq))
            .await
            .map_err(|e| ClusterError::nats("get snapshot manifest")(e.into()))?
        else {
            return Ok(None);
        };
        let text =
            std::str::from_utf8(&v).map_err(|_| self.corrupt(format!("manifest {seq} is not text")))?;
        let f: Vec<&str> = text.split(' ').collect();
        let parsed = (|| {
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })();
        parsed
            .map(Some)
            .ok_or_else(|| self.corrupt(format!("bad manifest for snapshot {seq}: {text:?}")))
    }

    /// The snapshot at `seq` if it is complete and its CRC matches.
    async fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, ClusterError> {
        let Some((mseq, len, chunks, crc)) = self.manifest(seq).await? else {
            return Ok(None);
        };
        if mseq != seq {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(len);
        for i in 0..chunks {
            match self
                .kv
                .get(chunk_key(seq, i))
                .await
                .map_err(|e| ClusterError::nats("get snapshot chunk")(e.into()))?
            {
                Some(c) => out.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
        Ok((out.len() == len && crc32fast::hash(&out) == crc).then_some(out))
    }

    /// The seq of the newest snapshot at or below `max_seq` with a manifest
    /// (written last, so its chunks are all there), without reading it.
    pub(crate) async fn latest_seq(&self, max_seq: u64) -> Result<Option<u64>, ClusterError> {
        Ok(self.seqs().await?.into_iter().rev().find(|&seq| seq <= max_seq))
    }

    /// The newest snapshot at or below `max_seq` that verifies; an older one if the
    /// newest is damaged. A snapshot past `max_seq` (the stream's end) cannot belong
    /// to this stream: e.g. the final snapshot of a node of a deleted stream, written
    /// after it reconnected to the recreated one. Loading it would skip the records.
    pub(crate) async fn latest(&self, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>, ClusterError> {
        for seq in self.seqs().await?.into_iter().rev() {
            if seq > max_seq {
                tracing::warn!(seq, max_seq, bucket = %self.bucket, "snapshot past the stream's end (from another stream); ignored");
                continue;
            }
            match self.read(seq).await? {
                Some(bytes) => return Ok(Some((seq, bytes))),
                None => {
                    tracing::warn!(seq, bucket = %self.bucket, "snapshot incomplete or damaged; trying an older one")
                }
            }
        }
        Ok(None)
    }
}
