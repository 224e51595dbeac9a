//! opcenter-sim: a synthetic city and a load generator that speak only
//! `shared/PROTOCOL.md` over real sockets, like any outside client.
//!
//! # Layout
//! - [`city`]: the living demo city (patrols, posts, calls) driven against a server.
//! - [`load`]: the load tool behind `opcenter sim`, with HDR-histogram percentiles.
#![deny(missing_docs)]

pub mod city;
pub mod load;
