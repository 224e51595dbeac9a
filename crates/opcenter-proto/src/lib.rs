//! opcenter-proto: the wire contract of `shared/PROTOCOL.md` as Rust types.
//!
//! # Layout
//! - [`auth`]: token claims, HS256 minting and verification.
#![deny(missing_docs)]

pub mod auth;
