//! Encoding of outgoing frames into WebSocket messages: JSON becomes a text
//! message, MessagePack a binary one. Every helper here encodes once; callers
//! clone the resulting `Message` (a reference-counted buffer) per recipient.
//!
//! Owns: serde value → `Message`. Must never: be called per subscriber for a
//! frame that is the same for all of them.

use axum::extract::ws::{Message, Utf8Bytes};
use serde::Serialize;

use opcenter_core::PositionItem;
use opcenter_proto::server::{ErrorReply, OkReply, PositionsFrame};
use opcenter_proto::{Encoding, ErrorCode, codec};

/// Encodes `value` as one message in `encoding`; `None` only on a serializer bug
/// (logged).
pub(crate) fn message<T: Serialize>(encoding: Encoding, value: &T) -> Option<Message> {
    match codec::encode(encoding, value) {
        Ok(bytes) => Some(match encoding {
            // serde_json only ever produces UTF-8.
            Encoding::Json => Message::Text(Utf8Bytes::try_from(bytes).ok()?),
            Encoding::MsgPack => Message::Binary(bytes),
        }),
        Err(e) => {
            tracing::error!(error = %e, "could not encode an outgoing frame");
            None
        }
    }
}

/// An `ok` reply.
pub(crate) fn ok<B: Serialize>(encoding: Encoding, id: Option<u64>, body: B) -> Option<Message> {
    message(encoding, &OkReply::new(id, body))
}

/// An `ok` reply to a command that may have been sent without `id`: without
/// one, success gets no reply (the contract, section 3), so this is `None`.
pub(crate) fn ok_if_asked<B: Serialize>(encoding: Encoding, id: Option<u64>, body: B) -> Option<Message> {
    id.and_then(|id| ok(encoding, Some(id), body))
}

/// An `error` reply.
pub(crate) fn error(encoding: Encoding, id: Option<u64>, code: ErrorCode, text: &str) -> Option<Message> {
    message(encoding, &ErrorReply::new(id, code, text))
}

/// A `positions` batch; with `region` for a multi-region subscription.
pub(crate) fn positions_frame(
    encoding: Encoding,
    items: &[&PositionItem],
    region: Option<&str>,
) -> Option<Message> {
    message(encoding, &PositionsFrame::new(items).in_region(region))
}
