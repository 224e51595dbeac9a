//! Server-to-client WebSocket frames (RFC 6455 section 5.2), prepared once: the
//! header and payload of an unmasked final frame in one shared buffer, so an
//! event that goes to a thousand sessions is framed once and the same bytes are
//! written to every socket (cloning a [`Prepared`] is a reference count).
//!
//! Owns: the frame layout of what the server sends. Must never: mask (a server
//! never masks), fragment, or hold anything but one whole frame.

use axum::extract::ws::Message;
use bytes::{BufMut, Bytes, BytesMut};
use opcenter_proto::Encoding;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One whole frame, ready for the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Prepared {
    bytes: Bytes,
    /// Header length (2, 4 or 10 bytes).
    header: u8,
}

impl Prepared {
    /// A final frame of `opcode` around `payload`.
    fn new(opcode: u8, payload: &[u8]) -> Self {
        let mut b = Self::head(opcode, payload.len());
        let header = b.len() as u8;
        b.put_slice(payload);
        Prepared {
            bytes: b.freeze(),
            header,
        }
    }

    /// A buffer holding the header of a final frame of `opcode` with a payload
    /// of `len` bytes, with room for the payload.
    fn head(opcode: u8, len: usize) -> BytesMut {
        let header = match len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        };
        let mut b = BytesMut::with_capacity(header + len);
        b.put_u8(0x80 | opcode);
        match header {
            2 => b.put_u8(len as u8),
            4 => {
                b.put_u8(126);
                b.put_u16(len as u16);
            }
            _ => {
                b.put_u8(127);
                b.put_u64(len as u64);
            }
        }
        b
    }

    /// The frame of `message` (a text, binary, ping, pong or close message).
    pub(crate) fn of(message: &Message) -> Self {
        match message {
            Message::Text(t) => Prepared::new(OP_TEXT, t.as_bytes()),
            Message::Binary(b) => Prepared::new(OP_BINARY, b),
            Message::Ping(p) => Prepared::new(OP_PING, p),
            Message::Pong(p) => Prepared::new(OP_PONG, p),
            Message::Close(c) => match c {
                Some(c) => Prepared::close(c.code, c.reason.as_str()),
                None => Prepared::new(OP_CLOSE, &[]),
            },
        }
    }

    /// A data frame of `encoding` (text for JSON, binary for MessagePack)
    /// whose payload is `parts` one after the other. JSON parts must together
    /// be UTF-8 (they are serde_json's output and ASCII punctuation).
    pub(crate) fn data(encoding: Encoding, parts: &[&[u8]]) -> Self {
        let opcode = match encoding {
            Encoding::Json => OP_TEXT,
            Encoding::MsgPack => OP_BINARY,
        };
        let len = parts.iter().map(|p| p.len()).sum();
        let mut b = Self::head(opcode, len);
        parts.iter().for_each(|p| b.put_slice(p));
        Prepared {
            header: (b.len() - len) as u8,
            bytes: b.freeze(),
        }
    }

    /// A close frame with `code` and `reason` (cut to the 123 bytes a control
    /// frame leaves for it, at a character boundary).
    pub(crate) fn close(code: u16, reason: &str) -> Self {
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = Vec::with_capacity(2 + cut);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        Prepared::new(OP_CLOSE, &payload)
    }

    /// An empty ping.
    pub(crate) fn ping() -> Self {
        Prepared::new(OP_PING, &[])
    }

    /// The whole frame.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Payload bytes (what the per-session queue bound counts).
    pub(crate) fn payload_len(&self) -> usize {
        self.bytes.len() - self.header as usize
    }

    /// The payload.
    #[cfg(test)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.bytes[self.header as usize..]
    }
}

/// True when the whole frames in `bytes` (unmasked, as a server writes them)
/// include a close frame.
pub(crate) fn has_close(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        if opcode == OP_CLOSE {
            return true;
        }
        let (header, len) = match bytes[at + 1] & 0x7f {
            126 => (
                4,
                bytes
                    .get(at + 2..at + 4)
                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize),
            ),
            127 => (
                10,
                bytes
                    .get(at + 2..at + 10)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, |b| u64::from_be_bytes(b) as usize),
            ),
            n => (2, n as usize),
        };
        at += header + len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::CloseFrame;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message as TMessage;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// What tungstenite's own client reads from our bytes, message by message.
    async fn read_as_client(bytes: Vec<u8>, n: usize) -> Vec<TMessage> {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        server.write_all(&bytes).await.unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(ws.next().await.unwrap().unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_client_reads_every_length_form_and_kind() {
        let long = "é".repeat(40_000); // 80 000 bytes: the 64-bit length form
        let mid = "x".repeat(300); // the 16-bit form
        let messages = [
            Message::Text("hi".into()),
            Message::Text(mid.clone().into()),
            Message::Text(long.clone().into()),
            Message::Binary(Bytes::from_static(b"\x81\xa1a\x01")),
            Message::Ping(Bytes::new()),
            Message::Close(Some(CloseFrame {
                code: 4008,
                reason: "event queue overflow".into(),
            })),
        ];
        let mut wire = Vec::new();
        for m in &messages {
            wire.extend_from_slice(Prepared::of(m).as_bytes());
        }
        let got = read_as_client(wire, messages.len()).await;
        assert_eq!(got[0], TMessage::text("hi"));
        assert_eq!(got[1], TMessage::text(mid));
        assert_eq!(got[2], TMessage::text(long));
        assert_eq!(got[3], TMessage::binary(Bytes::from_static(b"\x81\xa1a\x01")));
        assert!(matches!(got[4], TMessage::Ping(_)));
        let TMessage::Close(Some(c)) = &got[5] else {
            panic!("{:?}", got[5])
        };
        assert_eq!(
            (u16::from(c.code), c.reason.as_str()),
            (4008, "event queue overflow")
        );
    }

    #[test]
    fn a_close_is_found_behind_other_frames() {
        let pong = Prepared::of(&Message::Pong(Bytes::from_static(b"abc")));
        let big = Prepared::of(&Message::Binary(vec![8u8; 300].into()));
        let close = Prepared::close(1000, "bye");
        let mut bytes = Vec::new();
        for f in [&pong, &big] {
            bytes.extend_from_slice(f.as_bytes());
        }
        assert!(!has_close(&bytes));
        bytes.extend_from_slice(close.as_bytes());
        assert!(has_close(&bytes));
        assert!(!has_close(&[]));
    }

    #[test]
    fn payload_length_excludes_the_header() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let p = Prepared::of(&Message::Binary(vec![7u8; len].into()));
            assert_eq!(p.payload_len(), len);
            assert_eq!(p.payload(), &vec![7u8; len][..]);
        }
    }

    #[test]
    fn a_frame_from_parts_is_the_frame_of_the_whole() {
        for len in [0usize, 60, 125, 126, 65_535, 65_536] {
            let whole = vec![b'x'; len];
            let (a, b) = whole.split_at(len / 3);
            let text = Prepared::data(Encoding::Json, &[a, b]);
            assert_eq!(
                text,
                Prepared::of(&Message::Text(String::from_utf8(whole.clone()).unwrap().into()))
            );
            let binary = Prepared::data(Encoding::MsgPack, &[a, b]);
            assert_eq!(binary, Prepared::of(&Message::Binary(whole.into())));
        }
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character() {
        let p = Prepared::close(1000, &"ж".repeat(100));
        assert!(p.payload_len() <= 125);
        assert!(std::str::from_utf8(&p.payload()[2..]).is_ok());
    }
}
