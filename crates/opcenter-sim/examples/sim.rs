//! The load tool without the server binary: `cargo run --release -p opcenter-sim --example
//! sim -- ARGS` takes the same arguments as `opcenter sim` (handy for driving the Node
//! peer in `benches/node-ws-hub` from a build that does not link the server).
//!
//! Must never: differ from `opcenter sim` in behaviour; it only parses and calls.

use clap::Parser;

/// `opcenter sim`'s arguments.
#[derive(Parser)]
#[command(name = "sim")]
struct Cli {
    #[command(flatten)]
    args: opcenter_sim::load::LoadArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    opcenter_sim::load::run_load(Cli::parse().args).await
}
