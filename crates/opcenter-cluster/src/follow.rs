//! `Follower`: a region's stream read from async code as it grows, batch by batch
//! (the hub's read model, a standby engine's catch-up). Owns turning ordered-consumer
//! messages back into contiguous records; must never append.

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use opcenter_store::Record;

use crate::journal::{
    batch_bounds, epoch_of, fresh_info, locate, message_bounds, ordered_from, stream_corrupt,
};
use crate::region::RegionNames;
use crate::{ClusterError, codec};

/// The epoch of region `region`'s stream as it is now (`None`: there is no such
/// stream): a hub compares it with the epoch it serves to notice a replaced stream.
pub async fn stream_epoch(js: &jetstream::Context, region: &str) -> Result<Option<String>, ClusterError> {
    Ok(stream_head(js, region).await?.map(|(epoch, _)| epoch))
}

/// The epoch of region `region`'s stream and its last stream sequence, as they
/// are now (`None`: there is no such stream). A follower whose
/// [`Follower::stream_seq`] stays behind that sequence is not being fed.
pub async fn stream_head(
    js: &jetstream::Context,
    region: &str,
) -> Result<Option<(String, u64)>, ClusterError> {
    let names = RegionNames::new(region)?;
    match js.get_stream(&names.stream).await {
        Ok(mut stream) => {
            let info = fresh_info(&mut stream).await?;
            Ok(Some((epoch_of(&info), info.state.last_sequence)))
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(je)
                if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(ClusterError::nats("get stream")(e.into())),
    }
}

/// Reads a region's records in order from an ordered consumer, waiting for new ones.
pub struct Follower {
    names: RegionNames,
    epoch: String,
    messages: consumer::pull::Ordered,
    /// The record seq the next record must have.
    next_seq: u64,
    /// The stream sequence of the last message read (or skipped as known).
    stream_seq: u64,
}

impl Follower {
    /// Follows region `region` from the record after `after_seq` (0 = from the
    /// start). [`ClusterError::Compacted`] if those records were purged; a stream that
    /// does not exist yet is an error (the engine creates it).
    pub async fn start(
        js: &jetstream::Context,
        region: &str,
        after_seq: u64,
    ) -> Result<Follower, ClusterError> {
        let names = RegionNames::new(region)?;
        let mut stream = js
            .get_stream(&names.stream)
            .await
            .map_err(|e| ClusterError::nats("get stream")(e.into()))?;
        let info = fresh_info(&mut stream).await?;
        let st = &info.state;
        let start = if st.messages == 0 {
            st.last_sequence + 1
        } else {
            let (first, _) = message_bounds(&stream, &names, st.first_sequence).await?;
            if after_seq + 1 < first {
                return Err(ClusterError::Compacted {
                    after_seq,
                    first_seq: first,
                });
            }
            let (lf, lc) = message_bounds(&stream, &names, st.last_sequence).await?;
            if after_seq + 1 >= lf + lc {
                st.last_sequence + 1
            } else {
                locate(
                    &stream,
                    &names,
                    st.first_sequence,
                    st.last_sequence,
                    after_seq + 1,
                )
                .await?
            }
        };
        let messages = ordered_from(&stream, &names, start).await?;
        Ok(Follower {
            epoch: epoch_of(&info),
            names,
            messages,
            next_seq: after_seq + 1,
            stream_seq: start - 1,
        })
    }

    /// The stream's epoch when following started (compare with the engine's).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The record seq the next record will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The stream sequence of the last message read: what the stream holds past it
    /// has not reached this follower yet.
    pub fn stream_seq(&self) -> u64 {
        self.stream_seq
    }

    /// The next records (one stored batch, less any already seen), waiting for
    /// them; `None` when the consumer ends. A batch that does not continue the seq
    /// is [`ClusterError::Corrupt`]: the stream was replaced or damaged.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<Record>, ClusterError>> {
        loop {
            let m = match self.messages.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(ClusterError::nats("consume")(e.into()))),
            };
            let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            self.stream_seq = self.stream_seq.max(stream_seq);
            let (first, count) = match batch_bounds(&self.names, stream_seq, m.headers.as_ref(), &m.payload) {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            if first > self.next_seq {
                return Some(Err(stream_corrupt(
                    &self.names,
                    stream_seq,
                    format!("batch starts at seq {first}, expected {}", self.next_seq),
                )));
            }
            if first + count <= self.next_seq {
                continue; // all seen already (the start was inside an earlier batch)
            }
            let Some(recs) = codec::decode(&m.payload) else {
                return Some(Err(stream_corrupt(&self.names, stream_seq, "bad record framing")));
            };
            let skip = (self.next_seq - first) as usize;
            let out: Vec<Record> = recs
                .into_iter()
                .enumerate()
                .skip(skip)
                .map(|(i, payload)| Record {
                    seq: first + i as u64,
                    payload,
                })
                .collect();
            self.next_seq = first + count;
            return Some(Ok(out));
        }
    }
}
