//! The demo city (work in progress).

use std::future::Future;
use std::net::SocketAddr;

/// Options of `opcenter demo`'s simulated city.
#[derive(Debug, Clone, clap::Args)]
pub struct CityArgs {
    /// Number of patrol units.
    #[arg(long, default_value_t = 300)]
    pub patrols: usize,
}

/// Drives the city against the server at `server` until `shutdown` resolves.
pub async fn run_city(
    args: CityArgs,
    server: SocketAddr,
    jwt_secret: Vec<u8>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let _ = (args, server, jwt_secret);
    shutdown.await;
    Ok(())
}
