//! The on-disk record frame (format 2): encoding, decoding and CRC checking of one
//! record. Owns the byte layout; must never touch files (callers hand it byte slices).
//!
//! ```text
//! offset 0  u32 LE  len | flags   bits 0..30 payload length, bit 30 BATCH_END, bit 31 BATCH_START
//! offset 4  u32 LE  crc32         over bytes 0..4, 8..48 and the payload
//! offset 8  u64 LE  seq
//! offset 16 [u8;32] chain hash    h_seq = SHA-256(h_seq-1 ‖ seq LE ‖ payload), see `chain.rs`
//! offset 48 [u8]    payload
//! ```
//!
//! The CRC catches accidents; the chain hash is what catches a record rewritten with
//! a valid CRC (see `chain.rs` and docs/records.md). Format 1 had no hash (16-byte
//! header); [`is_v1_frame`] recognises it only to refuse an old data directory.
//!
//! The two flag bits make a batch recognisable on disk, so recovery can keep whole
//! batches only (a command's events are all there or none are) and can tell a torn
//! last batch from damage in front of a later, acknowledged batch.

/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 48;
/// Bytes in a format-1 frame header (no chain hash).
const V1_HEADER_LEN: usize = 16;
/// Largest payload the journal accepts (16 MiB); a larger length field is corruption.
pub const MAX_PAYLOAD: usize = 16 << 20;

const FLAG_START: u32 = 1 << 31;
const FLAG_END: u32 = 1 << 30;
const LEN_MASK: u32 = FLAG_END - 1;

/// A decoded, CRC-checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub seq: u64,
    /// The chain hash stored with the record (after it).
    pub hash: [u8; 32],
    pub payload_len: usize,
    /// First record of an append batch.
    pub start: bool,
    /// Last record of an append batch: everything up to here was written by one
    /// `append_batch` call that may have been acknowledged.
    pub end: bool,
}

impl Frame {
    pub(crate) fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }
}

/// Why bytes do not form a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes than the header or the header's length says (a torn write).
    Short,
    /// Length field beyond [`MAX_PAYLOAD`].
    Length,
    /// The checksum does not match.
    Crc,
}

impl Bad {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Bad::Short => "truncated record",
            Bad::Length => "impossible record length",
            Bad::Crc => "checksum mismatch",
        }
    }
}

/// Appends one framed record to `buf`.
pub(crate) fn encode(buf: &mut Vec<u8>, seq: u64, hash: &[u8; 32], payload: &[u8], start: bool, end: bool) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    // Cannot truncate: MAX_PAYLOAD < 2^30, checked by every caller before encoding.
    let mut word = payload.len() as u32;
    if start {
        word |= FLAG_START;
    }
    if end {
        word |= FLAG_END;
    }
    let word = word.to_le_bytes();
    let seq = seq.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&word);
    h.update(&seq);
    h.update(hash);
    h.update(payload);
    buf.extend_from_slice(&word);
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.extend_from_slice(&seq);
    buf.extend_from_slice(hash);
    buf.extend_from_slice(payload);
}

/// Parses the header in `head` without checking the CRC (the payload may not be at hand).
/// Returns the frame and the stored CRC.
pub(crate) fn parse_header(head: &[u8; HEADER_LEN]) -> Result<(Frame, u32), Bad> {
    let word = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&head[8..16]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&head[16..48]);
    let payload_len = (word & LEN_MASK) as usize;
    if payload_len > MAX_PAYLOAD {
        return Err(Bad::Length);
    }
    let frame = Frame {
        seq: u64::from_le_bytes(seq),
        hash,
        payload_len,
        start: word & FLAG_START != 0,
        end: word & FLAG_END != 0,
    };
    Ok((frame, crc))
}

/// Checks a frame's CRC given its header bytes and payload.
pub(crate) fn crc_ok(head: &[u8; HEADER_LEN], payload: &[u8], stored: u32) -> bool {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[0..4]);
    h.update(&head[8..HEADER_LEN]);
    h.update(payload);
    h.finalize() == stored
}

/// Whether `buf` starts with a valid format-1 frame of seq `seq` (16-byte header,
/// no chain hash): the mark of a data directory written before the chain existed.
pub(crate) fn is_v1_frame(buf: &[u8], seq: u64) -> bool {
    let Some(head) = buf.first_chunk::<V1_HEADER_LEN>() else {
        return false;
    };
    let word = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let len = (word & LEN_MASK) as usize;
    let Some(payload) = buf.get(V1_HEADER_LEN..V1_HEADER_LEN + len) else {
        return false;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&head[0..4]);
    h.update(&head[8..16]);
    h.update(payload);
    h.finalize() == crc && head[8..16] == seq.to_le_bytes()
}

/// Decodes and verifies the frame at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Result<Frame, Bad> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(Bad::Short);
    };
    let (frame, crc) = parse_header(head)?;
    let Some(payload) = buf.get(HEADER_LEN..frame.total_len()) else {
        return Err(Bad::Short);
    };
    if !crc_ok(head, payload, crc) {
        return Err(Bad::Crc);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_flags() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, &[7; 32], b"hello", true, false);
        encode(&mut buf, 8, &[8; 32], b"", false, true);
        let a = decode(&buf).unwrap();
        assert_eq!(
            a,
            Frame {
                seq: 7,
                hash: [7; 32],
                payload_len: 5,
                start: true,
                end: false
            }
        );
        assert_eq!(&buf[HEADER_LEN..a.total_len()], b"hello");
        let b = decode(&buf[a.total_len()..]).unwrap();
        assert_eq!(
            b,
            Frame {
                seq: 8,
                hash: [8; 32],
                payload_len: 0,
                start: false,
                end: true
            }
        );
    }

    #[test]
    fn detects_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, &[1; 32], b"payload", true, true);
        assert_eq!(decode(&buf[..buf.len() - 1]), Err(Bad::Short));
        assert_eq!(decode(&buf[..3]), Err(Bad::Short));
        let mut flipped = buf.clone();
        flipped[HEADER_LEN + 2] ^= 1;
        assert_eq!(decode(&flipped), Err(Bad::Crc));
        // A flipped flag bit is caught by the CRC too.
        let mut flag = buf.clone();
        flag[3] ^= 0x40;
        assert_eq!(decode(&flag), Err(Bad::Crc));
        // So is a changed chain hash.
        let mut hash = buf.clone();
        hash[20] ^= 1;
        assert_eq!(decode(&hash), Err(Bad::Crc));
        let mut huge = buf;
        huge[0..4].copy_from_slice(&(LEN_MASK).to_le_bytes());
        assert_eq!(decode(&huge), Err(Bad::Length));
    }
}
