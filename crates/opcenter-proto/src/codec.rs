//! Frame encodings: JSON (text frames) and MessagePack (binary frames, named maps,
//! float64 coordinates). A session's first frame fixes its encoding.
//!
//! Owns: bytes ⇄ serde values. Must never: accept a top-level value that is not
//! a map (MessagePack arrays would otherwise decode positionally into structs).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A session's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Text frames holding JSON.
    Json,
    /// Binary frames holding MessagePack maps with string keys.
    MsgPack,
}

impl Encoding {
    /// Both encodings, in a fixed order (used to index per-encoding caches).
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// 0 for JSON, 1 for MessagePack.
    pub fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
        }
    }
}

/// Serializes `value` in `encoding`. Our own message types always serialize, so
/// a failure here is a bug; it is reported rather than panicking.
pub fn encode<T: Serialize>(encoding: Encoding, value: &T) -> Result<Bytes, String> {
    match encoding {
        Encoding::Json => serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| e.to_string()),
        Encoding::MsgPack => rmp_serde::to_vec_named(value)
            .map(Bytes::from)
            .map_err(|e| e.to_string()),
    }
}

/// True when the frame's top-level value is a map (`{` in JSON, a map header in
/// MessagePack). Checked before any typed decode.
pub fn is_map(encoding: Encoding, frame: &[u8]) -> bool {
    match encoding {
        Encoding::Json => frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        Encoding::MsgPack => matches!(frame.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
    }
}

/// Decodes a typed value from a frame (unknown fields are ignored).
pub fn decode<T: DeserializeOwned>(encoding: Encoding, frame: &[u8]) -> Result<T, String> {
    match encoding {
        Encoding::Json => serde_json::from_slice(frame).map_err(|e| e.to_string()),
        Encoding::MsgPack => rmp_serde::from_slice(frame).map_err(|e| e.to_string()),
    }
}
