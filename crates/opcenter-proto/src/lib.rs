//! opcenter-proto: the wire contract of `shared/PROTOCOL.md` as Rust types,
//! shared by the server, the load tool and the tests.
//!
//! # Layout
//! - [`auth`]: token claims, HS256 minting and verification.
//! - [`codec`]: JSON and MessagePack framing.
//! - [`client`]: commands clients send, decoded and checked.
//! - [`server`]: replies, errors, events and position batches the server sends.
//! - [`geojson`]: districts and beats read from GeoJSON (`[[zones]]` files).
//! - [`error`]: protocol error codes.
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod codec;
pub mod error;
pub mod geojson;
pub mod server;

pub use client::{ClientMessage, Frame, decode_frame};
pub use codec::Encoding;
pub use error::{ErrorCode, FrameError};
