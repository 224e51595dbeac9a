//! One journal message = one committed batch. Owns the message layout (payload
//! framing, the `Opc-First-Seq` header and the chain headers); must never know what
//! a record means.
//!
//! Payload: for each record, `[len u32 LE][h_n, 32 bytes][bytes]`, where `h_n` is
//! the record's audit chain hash (`opcenter_store::link`, see `chain.rs`). Header
//! `Opc-First-Seq`: the journal seq of the first record (the rest follow
//! contiguously); `Opc-Chain-Prev`: the hash before the first record (hex);
//! `Opc-Chain`: the hash after the last one (hex; equal to `Opc-Chain-Prev` in a
//! message without records, the takeover marker). The stream sequence is
//! JetStream's message counter and is *not* the record seq: one message holds a
//! whole batch, because 2.9 has no atomic multi-message publish.

use bytes::{BufMut, Bytes, BytesMut};
use opcenter_store::Hash;

/// Header carrying the journal seq of the batch's first record.
pub const FIRST_SEQ_HEADER: &str = "Opc-First-Seq";

/// Header carrying the chain hash before the message's first record (64 hex).
pub const CHAIN_PREV_HEADER: &str = "Opc-Chain-Prev";

/// Header carrying the chain hash after the message's last record (64 hex).
pub const CHAIN_HEADER: &str = "Opc-Chain";

/// Bytes of framing per record in a message payload: length and chain hash.
pub(crate) const FRAME_OVERHEAD: usize = 4 + 32;

/// Encodes records with their chain hashes as one message payload.
pub(crate) fn encode(records: &[(Hash, &[u8])]) -> Bytes {
    let len = records.iter().map(|(_, p)| p.len() + FRAME_OVERHEAD).sum();
    let mut buf = BytesMut::with_capacity(len);
    for (h, p) in records {
        // A record is at most opcenter_store::MAX_PAYLOAD (checked before), far below u32.
        buf.put_u32_le(p.len() as u32);
        buf.put_slice(h);
        buf.put_slice(p);
    }
    buf.freeze()
}

/// Splits a message payload into `(stored h_n, record bytes)`; `None` if the framing
/// is broken.
pub(crate) fn decode_chained(payload: &[u8]) -> Option<Vec<(Hash, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let hash: Hash = rest.get(4..36)?.try_into().ok()?;
        let body = rest.get(36..36 + len)?;
        out.push((hash, body));
        rest = &rest[36 + len..];
    }
    Some(out)
}

/// Splits a message payload back into records; `None` if the framing is broken.
pub(crate) fn decode(payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    Some(
        decode_chained(payload)?
            .into_iter()
            .map(|(_, p)| p.to_vec())
            .collect(),
    )
}

/// Number of records in a payload without copying them; `None` if broken.
pub(crate) fn count(payload: &[u8]) -> Option<u64> {
    let mut n = 0;
    let mut rest = payload;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest = rest.get(36 + len..)?;
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_count() {
        let recs: [(Hash, &[u8]); 3] = [([1; 32], b"a"), ([2; 32], b""), ([3; 32], b"hello")];
        let p = encode(&recs);
        assert_eq!(count(&p), Some(3));
        assert_eq!(
            decode(&p).unwrap(),
            vec![b"a".to_vec(), vec![], b"hello".to_vec()]
        );
        assert_eq!(decode_chained(&p).unwrap(), recs.to_vec());
        assert_eq!(count(&p[..p.len() - 1]), None);
        assert_eq!(decode(&p[..3]), None);
        assert_eq!(decode(&p[..20]), None);
    }
}
