//! The upgraded connection under a session, split in two: tokio-tungstenite
//! reads (frames, limits, control frames), and the session's writer writes
//! [`Prepared`] frames to the socket itself, a whole batch in one buffer and one
//! `write`. What tungstenite writes on its own while reading (the pong to a
//! ping, the echo of a client's close) is not lost: its write side is a
//! [`Control`] buffer that the writer sends before anything else.
//!
//! Owns: the opening handshake's answer, the split, and every byte written to a
//! session's socket. Must never: let two writers interleave partial frames
//! (there is one writer, [`Sink`], and tungstenite only ever appends whole
//! control frames to [`Control`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::frame::Prepared;
use crate::metric;

type Io = TokioIo<Upgraded>;

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
}

/// The read half, as tungstenite sees its socket: reads go to the connection,
/// writes to the [`Control`] buffer.
pub(crate) struct ReadSide {
    read: ReadHalf<Io>,
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

/// The writing side of a session: whole frames, one `write` per batch.
pub(crate) struct Sink {
    write: WriteHalf<Io>,
    control: Arc<Control>,
    buf: Vec<u8>,
    closed: bool,
}

impl Sink {
    /// The buffer of what tungstenite writes (see [`Control::pending`]).
    pub(crate) fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Writes the control bytes waiting, then `frames`, in one buffer.
    pub(crate) async fn write<'a>(
        &mut self,
        frames: impl IntoIterator<Item = &'a Prepared>,
    ) -> std::io::Result<()> {
        if self.closed {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let control = self.control.take();
        self.buf.clear();
        self.buf.extend_from_slice(&control);
        // After a close echo nothing may follow (RFC 6455 5.5.1).
        if !self.control.peer_closed.load(Ordering::Acquire) {
            for f in frames {
                self.buf.extend_from_slice(f.as_bytes());
            }
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        metrics::counter!(metric::SOCKET_WRITES).increment(1);
        let r = self.write.write_all(&self.buf).await;
        // A burst's buffer is not kept for a session that is quiet afterwards.
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        r
    }

    /// Sends a close frame (unless the client's close was already echoed) and
    /// shuts the write side.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if !self.closed {
            let frame =
                (!self.control.peer_closed.load(Ordering::Acquire)).then(|| Prepared::close(code, reason));
            let _ = self.write(frame.iter()).await;
            let _ = self.write.shutdown().await;
            self.closed = true;
        }
    }
}

/// Splits an upgraded connection into the session's two sides.
pub(crate) async fn split(upgraded: Upgraded, config: WebSocketConfig) -> (Sink, Stream) {
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    let control = Arc::new(Control::default());
    let side = ReadSide {
        read,
        control: control.clone(),
    };
    let ws = WebSocketStream::from_raw_socket(side, Role::Server, Some(config)).await;
    (
        Sink {
            write,
            control: control.clone(),
            buf: Vec::new(),
            closed: false,
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
