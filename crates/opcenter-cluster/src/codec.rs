//! One journal message = one committed batch. Owns the message layout (payload
//! framing and the `Opc-First-Seq` header); must never know what a record means.
//!
//! Payload: for each record, `[len u32 LE][bytes]`. Header `Opc-First-Seq`: the
//! journal seq of the first record (the rest follow contiguously). The stream
//! sequence is JetStream's message counter and is *not* the record seq: one message
//! holds a whole batch, because 2.9 has no atomic multi-message publish.

use bytes::{BufMut, Bytes, BytesMut};

/// Header carrying the journal seq of the batch's first record.
pub const FIRST_SEQ_HEADER: &str = "Opc-First-Seq";

/// Bytes of framing per record in a message payload.
pub(crate) const FRAME_OVERHEAD: usize = 4;

/// Encodes records as one message payload.
pub(crate) fn encode(payloads: &[&[u8]]) -> Bytes {
    let len = payloads.iter().map(|p| p.len() + FRAME_OVERHEAD).sum();
    let mut buf = BytesMut::with_capacity(len);
    for p in payloads {
        // A record is at most opcenter_store::MAX_PAYLOAD (checked before), far below u32.
        buf.put_u32_le(p.len() as u32);
        buf.put_slice(p);
    }
    buf.freeze()
}

/// Splits a message payload back into records; `None` if the framing is broken.
pub(crate) fn decode(payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let body = rest.get(4..4 + len)?;
        out.push(body.to_vec());
        rest = &rest[4 + len..];
    }
    Some(out)
}

/// Number of records in a payload without copying them; `None` if broken.
pub(crate) fn count(payload: &[u8]) -> Option<u64> {
    let mut n = 0;
    let mut rest = payload;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest = rest.get(4 + len..)?;
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_count() {
        let recs: [&[u8]; 3] = [b"a", b"", b"hello"];
        let p = encode(&recs);
        assert_eq!(count(&p), Some(3));
        assert_eq!(
            decode(&p).unwrap(),
            vec![b"a".to_vec(), vec![], b"hello".to_vec()]
        );
        assert_eq!(count(&p[..p.len() - 1]), None);
        assert_eq!(decode(&p[..3]), None);
    }
}
