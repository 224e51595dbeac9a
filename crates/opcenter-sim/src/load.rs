//! The load tool (work in progress).

/// Options of `opcenter sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8102")]
    pub server: String,
}

/// Runs the load described by `args` and prints its report.
pub async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not implemented yet")
}
