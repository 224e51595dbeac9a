//! Raw RFC 6455 framing for the fan-out benchmark, both ends: a receiver that reads
//! many frames per `read(2)` into one large buffer (no per-message allocation, no
//! message type), and the trivial sender (`examples/trivial_sender.rs`) that writes
//! pre-encoded frames. tokio-tungstenite stays the client of every other role; this
//! exists because a benchmark's receiver must cost far less per frame than the hub
//! it measures.
//!
//! Owns: the opening handshake (client and server side), frame headers, masking,
//! and a buffered frame reader. Must never: accept fragmented data frames silently
//! (neither peer under test fragments; the reader refuses them) or be used to
//! reach into a server by anything but its public `/v1/ws` endpoint.

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Appends one final frame (`opcode`, `payload`) to `out`; `mask` for a client's frames
/// (RFC 6455 5.3: a client masks everything it sends, a server nothing).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        None => out.extend_from_slice(payload),
        Some(m) => {
            out.extend_from_slice(&m);
            let at = out.len();
            out.extend_from_slice(payload);
            unmask(m, &mut out[at..]);
        }
    }
}

/// XORs `data` with `mask` (masking and unmasking are the same operation).
pub fn unmask(mask: [u8; 4], data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (`OP_*`).
    pub opcode: u8,
    /// Bytes of header, including the masking key.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
    /// Masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
}

/// Parses the header at the start of `buf`; `None` until enough bytes are there.
pub fn parse_head(buf: &[u8]) -> Option<Head> {
    let b0 = *buf.first()?;
    let b1 = *buf.get(1)?;
    let (mut at, len) = match b1 & 0x7f {
        126 => (4, u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize),
        n => (2, n as usize),
    };
    let mask = if b1 & 0x80 != 0 {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    Some(Head {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        header_len: at,
        payload_len: len,
        mask,
    })
}

/// Reads whole frames out of a large buffer: one `read(2)` may bring hundreds.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// A reader with `capacity` bytes of buffer, holding `leftover` bytes already read
    /// past the handshake.
    pub fn new(capacity: usize, leftover: &[u8]) -> Self {
        let mut buf = vec![0; capacity.max(leftover.len() * 2).max(4096)];
        buf[..leftover.len()].copy_from_slice(leftover);
        FrameReader {
            buf,
            start: 0,
            end: leftover.len(),
        }
    }

    /// The next complete frame already buffered (payload unmasked), if any.
    pub fn next_frame(&mut self) -> anyhow::Result<Option<(Head, &[u8])>> {
        let Some(h) = parse_head(&self.buf[self.start..self.end]) else {
            return Ok(None);
        };
        let total = h.header_len + h.payload_len;
        if self.end - self.start < total {
            return Ok(None);
        }
        if !h.fin || h.opcode == OP_CONT {
            bail!("fragmented frame (opcode {}): not supported here", h.opcode);
        }
        let p = self.start + h.header_len..self.start + total;
        self.start += total;
        if let Some(m) = h.mask {
            unmask(m, &mut self.buf[p.clone()]);
        }
        Ok(Some((h, &self.buf[p])))
    }

    /// Reads more bytes from `r` (after every buffered frame was taken); `Ok(0)` at
    /// end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // A frame larger than the buffer: grow to hold it whole.
        if let Some(h) = parse_head(&self.buf[..self.end]) {
            let need = h.header_len + h.payload_len;
            if need > self.buf.len() {
                self.buf.resize(need, 0);
            }
        }
        if self.end == self.buf.len() {
            let len = self.buf.len();
            self.buf.resize(len * 2, 0);
        }
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// The client side of the opening handshake on `tcp` for `ws://host/v1/ws`; returns
/// the bytes read past the response (frames the server sent straight after it).
pub async fn client_handshake(tcp: &mut TcpStream, host: &str) -> anyhow::Result<Vec<u8>> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let (head, rest) = read_http_head(tcp).await?;
    let status_ok = head.starts_with("HTTP/1.1 101");
    let accept = header(&head, "sec-websocket-accept");
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if !status_ok || accept != Some(want.as_str()) {
        bail!(
            "websocket handshake refused: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(rest)
}

/// The server side of the opening handshake: reads the request, answers 101; returns
/// the bytes read past the request.
pub async fn server_handshake(tcp: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let (head, rest) = read_http_head(tcp).await?;
    let key = header(&head, "sec-websocket-key").context("no Sec-WebSocket-Key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(resp.as_bytes()).await?;
    Ok(rest)
}

/// Reads up to the blank line ending an HTTP head; returns it and what followed.
async fn read_http_head(tcp: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(at) = crate::wire::find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).into_owned();
            return Ok((head, buf[at + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            bail!("HTTP head over 16 KiB");
        }
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` (lower case) in an HTTP head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_form() {
        for len in [0usize, 5, 125, 126, 430, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                encode(OP_TEXT, &payload, mask, &mut out);
                encode(OP_PING, b"x", mask, &mut out);
                // Every prefix but the whole is incomplete.
                let mut r = FrameReader::new(16, &out[..out.len() - 1]);
                let (h, p) = r.next_frame().unwrap().unwrap();
                assert_eq!((h.opcode, h.payload_len, h.mask), (OP_TEXT, len, mask));
                assert_eq!(p, &payload[..]);
                assert!(r.next_frame().unwrap().is_none());
                let mut r = FrameReader::new(16, &out);
                r.next_frame().unwrap().unwrap();
                let (h, p) = r.next_frame().unwrap().unwrap();
                assert_eq!((h.opcode, p), (OP_PING, &b"x"[..]));
            }
        }
    }

    #[test]
    fn header_matches_tungstenite_for_the_same_frame() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        for len in [3usize, 300, 70_000] {
            let payload = vec![b'a'; len];
            let mut ours = Vec::new();
            encode(OP_BINARY, &payload, None, &mut ours);
            let mut theirs = Vec::new();
            Frame::message(payload, OpCode::Data(Data::Binary), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn fragments_are_refused() {
        let mut out = vec![0x01, 0x01, b'a'];
        encode(OP_TEXT, b"b", None, &mut out);
        let mut r = FrameReader::new(64, &out);
        assert!(r.next_frame().is_err());
    }

    #[tokio::test]
    async fn handshake_both_sides_then_frames_over_loopback() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let left = server_handshake(&mut s).await.unwrap();
            let mut r = FrameReader::new(4096, &left);
            let text = loop {
                if let Some((h, p)) = r.next_frame().unwrap() {
                    assert!(h.mask.is_some());
                    break p.to_vec();
                }
                assert!(r.fill(&mut s).await.unwrap() > 0);
            };
            let mut out = Vec::new();
            encode(OP_TEXT, &text, None, &mut out);
            s.write_all(&out).await.unwrap();
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let left = client_handshake(&mut c, &addr.to_string()).await.unwrap();
        let mut out = Vec::new();
        encode(OP_TEXT, b"echo me", Some([9, 8, 7, 6]), &mut out);
        c.write_all(&out).await.unwrap();
        let mut r = FrameReader::new(4096, &left);
        let got = loop {
            if let Some((h, p)) = r.next_frame().unwrap() {
                assert_eq!((h.opcode, h.mask), (OP_TEXT, None));
                break p.to_vec();
            }
            assert!(r.fill(&mut c).await.unwrap() > 0);
        };
        assert_eq!(got, b"echo me");
        server.await.unwrap();
    }
}
