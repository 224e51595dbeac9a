//! The upgraded connection under a session, split in two: tokio-tungstenite
//! reads (frames, limits, control frames), and the session's frames are written
//! to the socket as they are, [`Prepared`] once and shared: a batch in one
//! vectored write (`writev`), no copy per session. Two parties write: the
//! session's writer task ([`Sink`]) and, without waiting, the thread that
//! queued the events ([`Socket::try_write`], see [`crate::outbox`]); the
//! session's [`crate::outbox::Outbox`] lock decides whose turn it is, so their
//! bytes never interleave. What tungstenite writes on its own while reading
//! (the pong to a ping, the echo of a client's close) is not lost: its write
//! side is a [`Control`] buffer that the writer sends before anything else.
//!
//! Owns: the opening handshake's answer, the split, and every byte written to a
//! session's socket. Must never: let two writers interleave partial frames
//! (one write turn at a time, and tungstenite only ever appends whole control
//! frames to [`Control`]).

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::frame::Prepared;
use crate::metric;

/// At most this many buffers per `writev` (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 1024;

/// Checks an upgrade request's headers (RFC 6455 4.2.1); the `101` answer, or
/// why it is refused (a `400`; the same texts as axum's own extractor).
pub(crate) fn accept(headers: &HeaderMap) -> Result<Response, &'static str> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::CONNECTION, "upgrade") {
        return Err("Connection header did not include 'upgrade'");
    }
    if !has(header::UPGRADE, "websocket") {
        return Err("`Upgrade` header did not include 'websocket'");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err("`Sec-WebSocket-Version` header did not include '13'");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err("`Sec-WebSocket-Key` header missing");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // A base64 string is a valid header value.
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|_| "bad `Sec-WebSocket-Key`")?,
    );
    Ok(r)
}

/// What tungstenite wrote by itself, waiting for the writer.
#[derive(Default)]
pub(crate) struct Control {
    bytes: Mutex<Vec<u8>>,
    notify: Notify,
    /// tungstenite wrote a close frame (the echo of the client's): the
    /// connection takes nothing more.
    peer_closed: AtomicBool,
}

impl Control {
    /// Waits until tungstenite wrote bytes that are not sent yet.
    pub(crate) async fn pending(&self) {
        self.notify.notified().await
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Nothing of tungstenite's is waiting and the peer's close was not echoed:
    /// frames may go to the socket without the writer.
    pub(crate) fn clear(&self) -> bool {
        !self.peer_closed.load(Ordering::Acquire)
            && self.bytes.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// The read half, as tungstenite sees its socket: reads go to the connection,
/// writes to the [`Control`] buffer.
pub(crate) struct ReadSide {
    read: OwnedReadHalf,
    control: Arc<Control>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut bytes = self.control.bytes.lock().unwrap_or_else(|e| e.into_inner());
        // tungstenite hands over whole frames (its write buffer is off). Flagged
        // before the bytes are visible: a writer that takes the echo of a close
        // also sees the flag, and sends nothing after it.
        if crate::frame::has_close(buf) {
            self.control.peer_closed.store(true, Ordering::Release);
        }
        bytes.extend_from_slice(buf);
        drop(bytes);
        self.control.notify.notify_one();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The reading side of a session.
pub(crate) struct Stream {
    ws: WebSocketStream<ReadSide>,
}

impl Stream {
    /// The next message (`None` at the end).
    pub(crate) async fn next(&mut self) -> Option<Result<Message, WsError>> {
        self.ws.next().await
    }
}

/// The socket's write half, shared by the session's writer ([`Sink`]) and
/// whoever queues its events ([`crate::outbox::Outbox::wake`]). Writes only in
/// the caller's write turn (the outbox decides).
pub(crate) struct Socket {
    write: OwnedWriteHalf,
    control: Arc<Control>,
}

impl Socket {
    /// Writes what the socket takes now, without waiting: the number of bytes
    /// written (`WouldBlock` when none). `None` when frames may not go
    /// directly (tungstenite has bytes waiting, or the peer's close was
    /// echoed): the writer must send them.
    pub(crate) fn try_write(&self, parts: &[IoSlice<'_>]) -> Option<std::io::Result<usize>> {
        if !self.control.clear() {
            return None;
        }
        Some(self.write.try_write_vectored(&parts[..parts.len().min(MAX_IOV)]))
    }
}

/// The writing side of a session: whole frames, one vectored write per batch.
pub(crate) struct Sink {
    /// `None` once closed.
    socket: Option<Arc<Socket>>,
    control: Arc<Control>,
    writes: metrics::Counter,
}

impl Sink {
    /// The buffer of what tungstenite writes (see [`Control::pending`]).
    pub(crate) fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// The socket, for writes that do not wait ([`Socket::try_write`]);
    /// `None` once closed.
    pub(crate) fn socket(&self) -> Option<Arc<Socket>> {
        self.socket.clone()
    }

    /// Writes the control bytes waiting, then `frames` (see [`Sink::write_from`]).
    pub(crate) async fn write<'a>(
        &mut self,
        frames: impl IntoIterator<Item = &'a Prepared>,
    ) -> std::io::Result<()> {
        self.write_from(0, frames).await
    }

    /// Writes `frames`, the first of them from byte `skip` (a write that did
    /// not wait stopped inside it), with the control bytes waiting right after
    /// that first frame's rest (or first, when `skip` is 0): whole frames in
    /// order, one vectored write for all while the socket takes them.
    pub(crate) async fn write_from<'a>(
        &mut self,
        skip: usize,
        frames: impl IntoIterator<Item = &'a Prepared>,
    ) -> std::io::Result<()> {
        let Some(socket) = &self.socket else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        let mut frames = frames.into_iter();
        let head = match skip {
            0 => None,
            _ => frames.next().map(|f| &f.as_bytes()[skip..]),
        };
        let control = self.control.take();
        let mut parts: Vec<IoSlice<'_>> = Vec::new();
        parts.extend(head.map(IoSlice::new));
        if !control.is_empty() {
            parts.push(IoSlice::new(&control));
        }
        // After a close echo nothing may follow (RFC 6455 5.5.1).
        if !self.control.peer_closed.load(Ordering::Acquire) {
            parts.extend(frames.map(|f| IoSlice::new(f.as_bytes())));
        }
        if parts.is_empty() {
            return Ok(());
        }
        self.writes.increment(1);
        write_all(&socket.write, &mut parts).await
    }

    /// Sends a close frame (unless the client's close was already echoed);
    /// the write side is shut once the queue lets go of the socket too
    /// ([`crate::outbox::Outbox::close`]).
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if self.socket.is_some() {
            let peer_closed = self.control.peer_closed.load(Ordering::Acquire);
            let frame = (!peer_closed).then(|| Prepared::close(code, reason));
            let _ = self.write(frame.iter()).await;
            // The last owner of the write half shuts it on drop (a FIN after the
            // close frame): this sink now, or the queue when it lets go.
            self.socket = None;
        }
    }
}

/// Writes all of `parts`, waiting for the socket when it is full.
async fn write_all(write: &OwnedWriteHalf, mut parts: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !parts.is_empty() {
        let n = match write.try_write_vectored(&parts[..parts.len().min(MAX_IOV)]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                write.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// Splits an upgraded connection into the session's two sides; `None` when
/// it is not a TCP connection served by [`axum::serve`] (every one here is).
pub(crate) async fn split(upgraded: Upgraded, config: WebSocketConfig) -> Option<(Sink, Stream)> {
    let parts = hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded).ok()?;
    Some(split_tcp(parts.io.into_inner(), parts.read_buf.to_vec(), config).await)
}

/// Splits a TCP connection past its opening handshake (`read`: what was read
/// of it already) into the session's two sides.
pub(crate) async fn split_tcp(tcp: TcpStream, read: Vec<u8>, config: WebSocketConfig) -> (Sink, Stream) {
    let (read_half, write) = tcp.into_split();
    let control = Arc::new(Control::default());
    let side = ReadSide {
        read: read_half,
        control: control.clone(),
    };
    let ws = WebSocketStream::from_partially_read(side, read, Role::Server, Some(config)).await;
    (
        Sink {
            socket: Some(Arc::new(Socket {
                write,
                control: control.clone(),
            })),
            control,
            writes: metrics::counter!(metric::SOCKET_WRITES),
        },
        Stream { ws },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_valid_upgrade_gets_the_rfc_accept_key() {
        let r = accept(&headers(&GOOD)).unwrap();
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn each_missing_header_is_refused() {
        for (skip, (name, _)) in GOOD.iter().enumerate() {
            let partial: Vec<_> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert!(accept(&headers(&partial)).is_err(), "without {name}");
        }
    }
}
