//! opcenter-sim: a synthetic city and a load generator that speak only
//! `shared/PROTOCOL.md` over real sockets, like any outside client.
//!
//! # Layout
//! - [`geo`]: the seeded city model (geometry, fleet, posts, call mix, Poisson stream).
//! - [`wire`]: WebSocket client side of the contract (hello, encodings, typed frames).
//! - [`http`]: a minimal HTTP/1.1 client for `/v1/reports` and `/v1/incidents/{id}`.
//! - [`stats`]: HDR percentiles and `/proc` readings for reports.
//! - [`streets`]: the demo city's named street polylines, river and bridges (the
//!   console's streets layer and the gazetteer's streets).
//! - [`city`]: the living demo city (patrols, posts, calls) driven against a server.
//! - [`load`]: the load tool behind `opcenter sim`, including the fan-out comparison.
//! - [`rawws`]: raw WebSocket framing for the fan-out benchmark's receiver and the
//!   trivial sender (many frames per read, pre-encoded frames out).
//! - [`trivial`]: the trivial sender, a ceiling for the fan-out receiver.
//! - [`harness`]: what tests and benchmarks share: the real binary on port 0 and a
//!   panicking JSON-value client on top of [`wire`].
//!
//! Must never: link the server's crates or reach into its state; everything goes over
//! the wire.
#![deny(missing_docs)]

pub mod addresses;
pub mod city;
pub mod geo;
pub mod harness;
pub mod http;
pub mod load;
pub mod rawws;
pub mod stats;
pub mod streets;
pub mod trivial;
pub mod wire;
