//! The `opcenter` binary: `serve`, `demo`, `sim`, `token`, `report` and `audit` (verify, head, show).
//!
//! Owns: argument parsing, logging set-up, signals. Must never: hold server
//! logic (that is `opcenter-hub`) or client logic (`opcenter-sim`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use opcenter_hub::{Server, Settings};
use opcenter_proto::auth::{Claims, Role, mint_token};

#[derive(Parser)]
#[command(
    name = "opcenter",
    version,
    about = "Real-time dispatch server for a police operations center"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (HTTP + WebSocket on `server.listen`).
    Serve {
        /// TOML config layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start even if the journal's audit hash chain is broken (every break is
        /// logged at error level; the history can no longer be proven unaltered).
        #[arg(long)]
        accept_broken_chain: bool,
    },
    /// The server on embedded defaults plus a simulated city driving it.
    Demo {
        /// TOML config layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        city: opcenter_sim::city::CityArgs,
    },
    /// Load generator against a running server (speaks only the protocol).
    Sim(opcenter_sim::load::LoadArgs),
    /// Print a signed token (JWT) for a role, with the configured secret.
    Token {
        /// dispatcher | supervisor | unit | intake
        #[arg(long)]
        role: Role,
        /// The token's `sub` (default: the unit id, or the role name).
        #[arg(long)]
        sub: Option<String>,
        /// Unit id (required for role unit).
        #[arg(long)]
        unit: Option<String>,
        /// Unit callsign claim.
        #[arg(long)]
        callsign: Option<String>,
        /// Unit kind claim.
        #[arg(long)]
        kind: Option<String>,
        /// Unit capabilities claim (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        caps: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 12 * 3600)]
        ttl_s: u64,
        /// Config whose `auth.jwt_secret` signs the token.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Reports computed from a journal: a stopped server's data directory, or a
    /// region's stream on NATS (read-only; the region's engine may be running).
    #[command(subcommand)]
    Report(ReportCmd),
    /// The audit trail: hash chains, checkpoints, incident timelines (docs/records.md).
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
enum ReportCmd {
    /// Response times (docs/records.md): count, p50, p90, share within target.
    ResponseTimes {
        /// Period start: ms since the epoch or RFC 3339 (default: 24 h before --to).
        #[arg(long)]
        from: Option<String>,
        /// Period end, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
        /// priority | category | district | shift
        #[arg(long, default_value = "priority")]
        group: String,
        /// CSV (docs/records.md lists the columns) instead of a table.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// The JSON of `GET /v1/reports/response-times` instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: JournalSource,
    },
}

/// A duration in ms as seconds for the table, `-` when there is none.
fn secs(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{:.0}", ms as f64 / 1000.0))
}

/// The report as a table for a terminal: one line per group and interval.
fn print_table(r: &opcenter_core::report::Report) {
    println!(
        "incidents created {} .. {}: {} (response within target: {}){}",
        opcenter_core::report::format_time(r.from_ms),
        opcenter_core::report::format_time(r.to_ms),
        r.incidents,
        r.response
            .within_target
            .map_or_else(|| "-".into(), |w| format!("{:.1} %", w * 100.0)),
        if r.partial_incidents > 0 {
            format!(
                "; {} incidents left out: their creation is no longer in the journal",
                r.partial_incidents
            )
        } else {
            String::new()
        }
    );
    println!(
        "{:<16} {:<12} {:>7} {:>8} {:>8} {:>8}",
        r.group.as_str(),
        "interval",
        "count",
        "p50 s",
        "p90 s",
        "target"
    );
    for g in &r.groups {
        for s in &g.intervals {
            println!(
                "{:<16} {:<12} {:>7} {:>8} {:>8} {:>8}",
                g.key,
                s.interval.as_str(),
                s.count,
                secs(s.p50_ms),
                secs(s.p90_ms),
                s.within_target
                    .map_or_else(String::new, |w| format!("{:.1}%", w * 100.0))
            );
        }
    }
}

/// Where `audit` and `report` read: a data directory (file journal) or a
/// region's stream on NATS.
#[derive(clap::Args)]
struct JournalSource {
    /// The server's `storage.data_dir` (the file journal).
    #[arg(long, conflicts_with_all = ["nats", "region"])]
    data_dir: Option<PathBuf>,
    /// NATS server URL(s), comma-separated (the region's stream; with --region).
    #[arg(long, requires = "region")]
    nats: Option<String>,
    /// The region whose stream `OPC_<region>` to read (with --nats, or the
    /// `[cluster]` of --config).
    #[arg(long)]
    region: Option<String>,
    /// A config: with a `[cluster]` section, its NATS servers and region; without
    /// one, its `storage.data_dir`. `report` also takes its `[reports]` targets and
    /// shifts, and without any of these reads the default `storage.data_dir`.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// A [`JournalSource`] resolved.
enum Source {
    Dir(PathBuf),
    Region { urls: String, region: String },
}

impl JournalSource {
    /// Resolves with the config loaded only when it is what says where to read.
    fn resolve(self) -> anyhow::Result<Source> {
        let settings = match (&self.data_dir, &self.nats, &self.config) {
            (None, None, Some(config)) => Some(load_settings(Some(config))?),
            _ => None,
        };
        self.resolve_in(settings.as_ref())
    }

    /// Resolves against `settings` (the loaded --config, or the defaults) when
    /// neither --data-dir nor --nats is given.
    fn resolve_in(self, settings: Option<&Settings>) -> anyhow::Result<Source> {
        if let Some(dir) = self.data_dir {
            return Ok(Source::Dir(dir));
        }
        if let (Some(urls), Some(region)) = (self.nats, &self.region) {
            return Ok(Source::Region {
                urls,
                region: region.clone(),
            });
        }
        let Some(settings) = settings else {
            anyhow::bail!("say where to read: --data-dir D, --nats URL --region R, or --config FILE");
        };
        Ok(match &settings.cluster {
            Some(c) => Source::Region {
                urls: c.nats.join(","),
                region: self.region.unwrap_or_else(|| c.region.clone()),
            },
            None => Source::Dir(settings.data_dir.clone()),
        })
    }
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the chain (read-only; a server may be running) and name the first
    /// broken record. Exit status 1 if the chain does not hold.
    Verify {
        #[command(flatten)]
        source: JournalSource,
    },
    /// Print the newest checkpoint (seq, hash) for publishing outside the server.
    Head {
        #[command(flatten)]
        source: JournalSource,
    },
    /// The timeline of one incident from the journal: every change, who made
    /// it (sub, role, session) and when. Read-only; a server may be running.
    Show {
        /// The incident id.
        #[arg(long)]
        incident: String,
        /// JSON (the body of `GET /v1/incidents/{id}/timeline`) instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: JournalSource,
    },
}

/// A client of the NATS servers `urls` (comma-separated).
async fn connect_nats(urls: &str) -> anyhow::Result<async_nats::Client> {
    opcenter_cluster::connect(urls)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {urls}: {e}"))
}

/// Refuses a region whose stream does not exist: opening the journal of one
/// (`audit show`, `report`) would create it empty.
async fn require_stream(urls: &str, region: &str) -> anyhow::Result<()> {
    let names = opcenter_cluster::RegionNames::new(region)?;
    async_nats::jetstream::new(connect_nats(urls).await?)
        .get_stream(&names.stream)
        .await
        .map_err(|e| anyhow::anyhow!("region {region}: no stream {} on {urls}: {e}", names.stream))?;
    Ok(())
}

/// `opcenter audit verify` on a region's stream; `Ok(false)` when broken.
async fn verify_region(urls: &str, region: &str) -> anyhow::Result<bool> {
    use opcenter_store::hex;
    let started = std::time::Instant::now();
    let client = connect_nats(urls).await?;
    let v = opcenter_cluster::verify_region(client, region)
        .await
        .with_context(|| format!("verifying region {region}'s stream"))?;
    let w = &v.walk;
    let records = w.last_seq.saturating_sub(w.first_seq.saturating_sub(1));
    println!(
        "stream {}: records {}..={} ({records}) in {} message(s), {} takeover(s), {} checkpoint(s) \
         ({} compared), walked in {:.3} s",
        v.stream,
        w.first_seq,
        w.last_seq,
        w.messages,
        w.takeovers,
        v.checkpoints,
        w.checkpoints_checked,
        started.elapsed().as_secs_f64()
    );
    if let Some(base) = &w.base {
        println!("base {} (hash before seq {})", hex(base), w.first_seq);
    }
    println!("head {} (seq {})", hex(&w.head), w.last_seq);
    match w.breaks.first() {
        None => {
            println!("OK: every link holds");
            Ok(true)
        }
        Some(first) => {
            println!("BROKEN: first broken record: {first}");
            for b in &w.breaks[1..] {
                println!("BROKEN: also {b}");
            }
            Ok(false)
        }
    }
}

/// `opcenter audit ...`; `Ok(false)` when the chain is broken.
async fn audit(cmd: AuditCmd) -> anyhow::Result<bool> {
    use opcenter_store::hex;
    match cmd {
        AuditCmd::Verify { source } => {
            let data_dir = match source.resolve()? {
                Source::Dir(d) => d,
                Source::Region { urls, region } => return verify_region(&urls, &region).await,
            };
            let started = std::time::Instant::now();
            let v = opcenter_store::verify(&data_dir)
                .with_context(|| format!("verifying the journal in {}", data_dir.display()))?;
            let records = (v.last_seq + 1).saturating_sub(v.first_seq);
            println!(
                "records {}..={} ({records}), {} checkpoint(s), walked in {:.3} s",
                v.first_seq,
                v.last_seq,
                v.checkpoints,
                started.elapsed().as_secs_f64()
            );
            println!("base {} (hash before seq {})", hex(&v.base), v.first_seq);
            println!("head {} (seq {})", hex(&v.head), v.last_seq);
            let log = opcenter_hub::verify_audit_log(&data_dir)
                .with_context(|| format!("verifying the audit log in {}", data_dir.display()))?;
            println!(
                "audit log {}: {} line(s), {} occurrence(s), head {}",
                opcenter_hub::AUDIT_LOG_FILE,
                log.lines,
                log.occurrences,
                hex(&log.head)
            );
            let log_ok = match &log.first_break {
                None => true,
                Some((line, why)) => {
                    println!(
                        "BROKEN: audit log {}: first broken line {line}: {why}",
                        opcenter_hub::AUDIT_LOG_FILE
                    );
                    false
                }
            };
            match v.breaks.first() {
                None if log_ok => {
                    println!("OK: every link holds");
                    Ok(true)
                }
                None => Ok(false),
                Some(first) => {
                    println!(
                        "BROKEN: first broken record: seq {} in segment {} at byte {}: {}",
                        first.seq,
                        first.path.display(),
                        first.offset,
                        first.reason
                    );
                    for b in &v.breaks[1..] {
                        println!("BROKEN: also {b}");
                    }
                    Ok(false)
                }
            }
        }
        AuditCmd::Head { source } => {
            let data_dir = match source.resolve()? {
                Source::Dir(d) => d,
                Source::Region { urls, region } => {
                    let client = connect_nats(&urls).await?;
                    let Some(cp) = opcenter_cluster::region_head(client, &region).await? else {
                        anyhow::bail!(
                            "no checkpoint yet for region {region} (one is put every \
                             storage.audit_checkpoint_records records or audit_checkpoint_s seconds)"
                        );
                    };
                    println!("seq {} hash {} unix_ms {}", cp.seq, hex(&cp.hash), cp.unix_ms);
                    return Ok(true);
                }
            };
            let cps = opcenter_store::read_checkpoints(&data_dir)
                .with_context(|| format!("reading checkpoints in {}", data_dir.display()))?;
            let Some(cp) = cps.last() else {
                anyhow::bail!(
                    "no checkpoint yet in {} (one is written every storage.audit_checkpoint_records \
                     records or audit_checkpoint_s seconds)",
                    data_dir.display()
                );
            };
            println!("seq {} hash {} unix_ms {}", cp.seq, hex(&cp.hash), cp.unix_ms);
            Ok(true)
        }
        AuditCmd::Show {
            incident,
            json,
            source,
        } => {
            let (t, place) = match source.resolve()? {
                Source::Dir(data_dir) => (
                    opcenter_hub::timeline_in_dir(&data_dir, &incident)
                        .with_context(|| format!("reading the journal in {}", data_dir.display()))?,
                    format!("the journal in {}", data_dir.display()),
                ),
                Source::Region { urls, region } => {
                    require_stream(&urls, &region).await?;
                    let id = incident.clone();
                    let r = region.clone();
                    let t =
                        tokio::task::spawn_blocking(move || opcenter_hub::timeline_in_region(&urls, &r, &id))
                            .await?
                            .with_context(|| format!("reading region {region}'s stream"))?;
                    (t, format!("region {region}'s stream"))
                }
            };
            if t.steps.is_empty() {
                anyhow::bail!(
                    "no incident {incident} in {place} (records {}..={})",
                    t.first_seq,
                    t.last_seq
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", t.to_text());
            }
            Ok(true)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the `listening on` line and tokens.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

fn load_settings(config: Option<&PathBuf>) -> anyhow::Result<Settings> {
    Settings::load(config.map(PathBuf::as_path)).context("loading configuration")
}

async fn start(settings: Settings) -> anyhow::Result<Server> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let server = Server::start(listener, settings)
        .await
        .context("starting the server")?;
    Ok(server)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long the runtime waits, once the command returned, for blocking tasks
/// still running (a journal call blocked in NATS, a join of the engine thread).
/// `serve` already spent up to `server.shutdown_timeout_s` closing down; what is
/// left after this is abandoned, so a fenced engine always exits (non-zero).
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(run());
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    outcome
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve {
            config,
            accept_broken_chain,
        } => {
            init_tracing();
            let mut settings = load_settings(config.as_ref())?;
            if accept_broken_chain {
                tracing::warn!("--accept-broken-chain: a broken audit chain will not stop this start");
                settings.accept_broken_chain = true;
            }
            // An engine node may wait as a standby for its region's lease, with its
            // `/healthz` answering meanwhile: it says where it listens before that.
            let engine_node = settings
                .cluster
                .as_ref()
                .is_some_and(|c| c.role != opcenter_hub::ClusterRole::Hub);
            let listener = TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?;
            if engine_node {
                println!("listening on {}", listener.local_addr()?);
            }
            // A standby engine waits in `start` for its region's lease: SIGTERM or
            // Ctrl-C then stops it cleanly (it holds nothing yet).
            let server = tokio::select! {
                server = Server::start(listener, settings) => server.context("starting the server")?,
                () = shutdown_signal() => {
                    tracing::info!("stopped before serving (a standby, or still starting)");
                    return Ok(());
                }
            };
            if !engine_node {
                println!("listening on {}", server.local_addr()?);
            }
            server.serve(shutdown_signal()).await?;
        }
        Cmd::Demo { config, city } => {
            init_tracing();
            let settings = load_settings(config.as_ref())?;
            let secret = settings.jwt_secret.clone().into_bytes();
            let server = start(settings).await?;
            let addr = server.local_addr()?;
            println!("listening on {addr}");
            let token = mint_token(
                &secret,
                &Claims::new("demo-dispatcher", Role::Dispatcher, now_s(), 12 * 3600),
            );
            let supervisor = mint_token(
                &secret,
                &Claims::new("demo-supervisor", Role::Supervisor, now_s(), 12 * 3600),
            );
            println!("console (dispatcher): http://{addr}/?token={token}");
            println!("console (supervisor): http://{addr}/?token={supervisor}");
            // The city stops first and the server only after it, so a call or report
            // the city is sending at Ctrl-C is answered, not refused by a closed port.
            let city_stop = tokio_util::sync::CancellationToken::new();
            let server_stop = tokio_util::sync::CancellationToken::new();
            let city_task = tokio::spawn({
                let city_stop = city_stop.clone();
                async move { opcenter_sim::city::run_city(city, addr, secret, city_stop.cancelled_owned()).await }
            });
            let serving = tokio::spawn({
                let server_stop = server_stop.clone();
                server.serve(async move { server_stop.cancelled().await })
            });
            shutdown_signal().await;
            city_stop.cancel();
            if let Ok(Err(e)) = city_task.await {
                tracing::warn!(error = %e, "city ended with an error");
            }
            server_stop.cancel();
            serving.await.context("server task")??;
        }
        Cmd::Sim(args) => {
            init_tracing();
            opcenter_sim::load::run_load(args).await?;
        }
        Cmd::Token {
            role,
            sub,
            unit,
            callsign,
            kind,
            caps,
            ttl_s,
            config,
        } => {
            let settings = load_settings(config.as_ref())?;
            if role == Role::Unit && unit.is_none() {
                anyhow::bail!("--unit is required for --role unit");
            }
            let sub = sub
                .or_else(|| unit.clone())
                .unwrap_or_else(|| role.as_str().to_string());
            let mut claims = Claims::new(sub, role, now_s(), ttl_s);
            claims.unit = unit;
            claims.callsign = callsign;
            claims.kind = kind;
            claims.caps = (!caps.is_empty()).then_some(caps);
            println!("{}", mint_token(settings.jwt_secret.as_bytes(), &claims));
        }
        Cmd::Report(ReportCmd::ResponseTimes {
            from,
            to,
            group,
            csv,
            json,
            source,
        }) => {
            let settings = load_settings(source.config.as_ref())?;
            let now_ms = i64::try_from(now_s()).unwrap_or(i64::MAX).saturating_mul(1000);
            let query =
                opcenter_hub::ReportQuery::parse(from.as_deref(), to.as_deref(), Some(&group), now_ms)?;
            let report = match source.resolve_in(Some(&settings))? {
                Source::Dir(dir) => opcenter_hub::report_offline(&dir, query, &settings.reports)
                    .with_context(|| format!("report over {}", dir.display()))?,
                Source::Region { urls, region } => {
                    require_stream(&urls, &region).await?;
                    let r = region.clone();
                    let cfg = settings.reports.clone();
                    tokio::task::spawn_blocking(move || {
                        opcenter_hub::report_in_region(&urls, &r, query, &cfg)
                    })
                    .await?
                    .with_context(|| format!("report over region {region}'s stream"))?
                }
            };
            if csv {
                print!("{}", report.to_csv());
            } else if json {
                println!("{}", serde_json::json!({ "report": report }));
            } else {
                print_table(&report);
            }
        }
        Cmd::Audit(cmd) => {
            if !audit(cmd).await? {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
