//! The root package's integration tests, linked as one binary (`autotests = false`
//! in Cargo.toml, one `[[test]]`): CI links and starts one test executable instead
//! of one per file. Each module below is one former test file; `common` is what
//! they share on top of `opcenter_sim::harness`.
//!
//! Run one group with `cargo test --test tests durability::`.

mod common;

mod bad_input;
mod cli;
mod durability;
mod http;
mod hub_e2e;
mod journal_failure;
mod reads;
mod sim_e2e;
