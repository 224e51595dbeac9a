//! The trivial sender (`opcenter_sim::trivial`) as a process: `cargo run --release -p
//! opcenter-sim --example trivial_sender -- [PORT]` listens on 127.0.0.1:PORT (0 = any
//! free port) and prints `listening on ADDR`, like `benches/node-ws-hub/hub.js`.
//!
//! Must never: listen on anything but loopback.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    tokio::task::LocalSet::new()
        .run_until(opcenter_sim::trivial::serve(listener))
        .await
}
