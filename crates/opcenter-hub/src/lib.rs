//! opcenter-hub: the tokio server of opcenter — HTTP and the WebSocket hub of
//! `shared/PROTOCOL.md` in front of the single-writer dispatch engine.
//!
//! # Layout
//! - `settings`: config file + environment → checked [`Settings`].
//! - `engine_task`: the engine thread (single writer, group commit, replies).
//! - `mirror`: a hub node's feed thread in the engine thread's place (role
//!   `hub`): a follower of the region's stream feeds the read model and fanout,
//!   commands go to the engine node.
//! - `bridge`: the NATS command bridge between hub nodes and the engine node.
//! - this file: start-up by role, and the national desk (`cluster.regions`): one
//!   `Region` (queue, read model, epoch, journal) per region served, which
//!   sessions and HTTP handlers pick by the region a client names.
//! - `failover`: an engine node's lease: standby wait, takeover, fencing on loss.
//! - `record`: the journal record codec and the durability path's errors.
//! - `fanout`: live-event subscriber lists (on the engine thread).
//! - `read_model`: the read copy fed by committed batches: subscribe snapshots,
//!   `since` resumes, position batches, incident lookups, periodic snapshots.
//! - `snapshot`: the subscribe snapshot's bytes, kept per object and per
//!   committed batch.
//! - `replay`: `since` replays served a bounded step at a time, and the frame
//!   cache they share.
//! - `outbox`: one session's bounded outbound queue.
//! - `session`: one WebSocket session: hello, role matrix, reader and writer.
//! - `http`: reports gateway, incident lookup, health, metrics, console files.
//! - `eido`: an incident as an EIDO document (NENA-STA-021).
//! - `audit_log`: the refused-action log (failed sign-ins, `forbidden`, rate
//!   limits, audit reads), chained like the journal, floods aggregated.
//! - `audit_timeline`: an incident's timeline (who did what, when) from the journal.
//! - `wire`: outgoing frames → WebSocket messages, encoded once.
//! - `limit`: token buckets (session command budget, reports rate limit).
//! - `metric`: the name of every metric on `/metrics`.
//! - `report`: the response-time report over a journal (live or offline).
//!
//! The public API is what the binary and the tests use: [`Settings`],
//! [`Server::start`] (open the journal, recover, start the engine thread), then
//! [`Server::serve`] with any future as the shutdown signal, and [`HubError`].
#![deny(missing_docs)]

mod audit_log;
mod audit_timeline;
mod bridge;
mod citizen;
mod eido;
mod engine_task;
mod engine_view;
mod failover;
mod fanout;
mod fixes;
mod frame;
mod http;
mod limit;
mod metric;
mod mirror;
mod outbox;
mod priority;
mod read_model;
mod record;
mod replay;
mod report;
mod session;
mod settings;
mod snapshot;
mod standby;
mod wire;
mod ws_io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use dashmap::DashMap;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use opcenter_core::Engine;
use opcenter_store::{FileJournal, Journal, MemJournal, Options};

pub use audit_log::{
    AUDIT_LOG_FILE, AuditLogError, Kind as AuditKind, Line as AuditLine, LogVerified,
    read_lines as read_audit_log, verify as verify_audit_log,
};
pub use audit_timeline::{
    Step as TimelineStep, Timeline, TimelineError, timeline_in_dir, timeline_in_region,
};
pub use record::Origin as RecordActor;
pub use report::{ReportError, ReportQuery, report_in_region, report_offline};
pub use settings::{ClusterRole, ClusterSettings, ConsoleSettings, HubSettings, Settings, SettingsError};

use engine_task::{EngineQueue, EngineTask, Request, Shared, StopGuard};
use outbox::{CloseReason, Outbox, codes};
use read_model::{ReadModel, ReadRequest};
use record::DurabilityError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Socket trouble.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Another server holds the data directory: two writers would interleave,
    /// so this one does not start at all.
    #[error(transparent)]
    Locked(opcenter_store::StoreError),
    /// The journal's audit hash chain is broken: refusing to build on history that
    /// cannot be proven unaltered (`Settings::accept_broken_chain` starts anyway).
    #[error(
        "{0}; the server does not start on it: `opcenter audit verify --data-dir DIR` lists \
         the breaks, `opcenter serve --accept-broken-chain` starts anyway"
    )]
    BrokenChain(opcenter_store::StoreError),
    /// The data directory is of a format this version does not read.
    #[error(transparent)]
    OldFormat(opcenter_store::StoreError),
    /// The task that opened or replayed the journal panicked.
    #[error("recovery: the task opening or replaying the journal failed")]
    Recovery(#[from] tokio::task::JoinError),
    /// The engine thread (or the read model thread) ended while serving: the
    /// server shut down instead of answering without it.
    #[error("the engine thread stopped: the server shut down")]
    EngineStopped,
    /// The region's stream could not be opened (NATS unreachable, JetStream off,
    /// a stream this journal cannot read).
    #[error("region {region}: cannot open its JetStream journal: {source}")]
    Cluster {
        /// `cluster.region`.
        region: String,
        /// Why.
        source: opcenter_cluster::ClusterError,
    },
    /// The refused-action log (`<data_dir>/audit-log.jsonl`) could not be opened.
    #[error("audit log: {0}")]
    AuditLog(#[from] AuditLogError),
    /// Another engine appended to the region's stream: this one stopped serving
    /// so that it never acknowledges a command that is not in the stream.
    #[error("fenced: another engine writes this region; stopped serving ({0})")]
    Fenced(String),
    /// A national desk could not recover one of its regions from its stream.
    #[error("national desk: region {region} cannot be read: {reason}")]
    DeskRegion {
        /// The region (one of `cluster.regions`).
        region: String,
        /// Why.
        reason: String,
    },
    /// A hub node found the region's stream replaced or lost: it closed its
    /// clients with 4008 (they reload) and stopped; a restart follows the new stream.
    #[error("the region's stream was replaced or lost: clients closed with 4008 ({0})")]
    StreamReplaced(String),
}

/// One region's half of a server: the queue of the thread that changes its
/// state, its read model, its epoch and health, its journal. A server has one;
/// a national desk (`cluster.regions`) has one per region.
pub(crate) struct Region {
    /// The engine thread's (or a hub's feed thread's) queues: an urgent lane and the rest.
    pub(crate) engine_tx: EngineQueue,
    /// The read model's queue (incident lookups).
    pub(crate) reads: std::sync::mpsc::Sender<ReadRequest>,
    /// Epoch, health, the region's name.
    pub(crate) shared: Arc<Shared>,
    /// The journal, for reports and timeline scans that read its history
    /// (one chunk per lock hold, off the engine and read-model threads).
    pub(crate) journal: read_model::SharedJournal,
    /// The engine's committed state between batches, where this process runs the
    /// region's engine (`None` on a hub node): `incident.recommend` is answered
    /// from it on the session's task ([`engine_view`]).
    pub(crate) view: Option<Arc<engine_view::EngineView>>,
}

/// What every request handler and session shares.
pub(crate) struct App {
    pub(crate) settings: Settings,
    /// The regions served: one, or a national desk's, its own (`cluster.region`) first.
    pub(crate) regions: Vec<Region>,
    /// Live sessions by id (shutdown closes them all).
    pub(crate) sessions: DashMap<String, Arc<Outbox>>,
    pub(crate) session_counter: AtomicU64,
    /// Upgraded WebSocket connections still open (`hub.max_connections`),
    /// counted from the upgrade, before `hello`: a socket costs the same
    /// whether or not it ever authenticates.
    pub(crate) connections: AtomicUsize,
    /// The reports gateway's rate limit (`http.reports_per_s`, `http.reports_burst`).
    pub(crate) reports_bucket: Mutex<limit::TokenBucket>,
    /// Prometheus renderer.
    pub(crate) metrics: PrometheusHandle,
    /// The refused-action log.
    pub(crate) audit: audit_log::AuditLog,
}

impl App {
    /// This server's own region (a desk's first): hellos, byes, health.
    pub(crate) fn home(&self) -> &Region {
        &self.regions[0]
    }

    /// True on a national desk (several regions).
    pub(crate) fn is_desk(&self) -> bool {
        self.regions.len() > 1
    }

    /// The region a client named for a command or a read: `None` is the
    /// server's own, except on a desk, which must be told; a name must be one
    /// this server serves (a single process serves no named region).
    pub(crate) fn region(&self, name: Option<&str>) -> Result<&Region, (opcenter_proto::ErrorCode, String)> {
        let bad = |m: String| Err((opcenter_proto::ErrorCode::BadRequest, m));
        match name {
            None if self.is_desk() => bad(format!(
                "this national desk serves regions {:?}: name one with `region`",
                self.region_names()
            )),
            None => Ok(self.home()),
            Some(n) => match self
                .regions
                .iter()
                .find(|r| r.shared.region.as_deref() == Some(n))
            {
                Some(r) => Ok(r),
                None => bad(format!(
                    "region {n:?} is not served here (regions: {:?})",
                    self.region_names()
                )),
            },
        }
    }

    /// The names of the regions served (none in one process).
    pub(crate) fn region_names(&self) -> Vec<&str> {
        self.regions
            .iter()
            .filter_map(|r| r.shared.region.as_deref())
            .collect()
    }
}

/// Buckets (seconds) of the dispatch path's latency histograms.
const DISPATCH_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.1, 0.25, 1.0,
];

fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(metric::JOURNAL_BATCH_EVENTS.into()),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
                        ],
                    )
                })
                .and_then(|b| {
                    // The dispatch path's own figures (issue 13's ≤ 2 ms p99, the
                    // reads-vs-dispatch ratio) and its stages: fine enough to
                    // read a p99 from.
                    [
                        metric::ASSIGNMENT_WRITTEN_SECONDS,
                        metric::CREATE_QUEUED_SECONDS,
                        metric::CREATE_SECONDS,
                        metric::ASSIGNMENT_SECONDS,
                    ]
                    .into_iter()
                    .try_fold(b, |b, name| {
                        b.set_buckets_for_metric(
                            metrics_exporter_prometheus::Matcher::Full(name.into()),
                            &DISPATCH_BUCKETS,
                        )
                    })
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program's): render ours
                // from a private recorder so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Events kept in memory for fast resumes (older ones are read from the journal).
pub(crate) fn memory_history(settings: &Settings) -> usize {
    settings.hub.memory_history_events
}

/// A started server: state recovered, engine thread running, not yet serving.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    /// Each region's engine (or feed) thread.
    engine_threads: Vec<std::thread::JoinHandle<()>>,
    /// Role `engine`: the command bridge to start with serving.
    bridge: Option<bridge::EngineBridge>,
    /// Roles `engine` and `both`: the region's lease this engine holds.
    active: Option<failover::Active>,
    /// Role `engine` after a warm standby's takeover: the calls it noted while
    /// following (else they are read from the stream at serving).
    recalled: Option<Recalled>,
    /// The NATS connections that carry commands, probed while serving
    /// (`cluster.probe_interval_ms`).
    probed: Vec<Probed>,
}

/// A NATS connection that carries commands (an engine's to the hubs, a hub's
/// forwarder's), probed while serving and replaced when stuck.
struct Probed {
    /// `engine` or `hub`: the metric's label.
    label: &'static str,
    /// The connection; its holders follow the watch when it is replaced.
    link: tokio::sync::watch::Sender<async_nats::Client>,
}

/// What changes the state in this process.
enum Node {
    /// The engine thread: one process (no `[cluster]`), role `both` or `engine`
    /// (then it also hands accepted fixes to the bridge).
    Engine {
        positions_out: Option<tokio::sync::mpsc::UnboundedSender<Vec<opcenter_core::PositionItem>>>,
    },
    /// Role `hub`: the feed thread over a follower of the region's stream.
    Hub {
        forward: Arc<bridge::Forwarder>,
        client: async_nats::Client,
        region: String,
    },
}

impl Server {
    /// Opens the journal under `settings.data_dir`, rebuilds state from it, and
    /// starts the engine thread. A journal that cannot be opened (or replayed)
    /// does not stop the server: it serves with `/healthz` 503 and refuses every command with
    /// `internal`, and never starts empty over data it could not read.
    ///
    /// With a `[cluster]` section the journal is the region's JetStream stream
    /// instead, and a stream that cannot be opened stops the start with
    /// [`HubError::Cluster`]. With `cluster.regions` (a national desk) every
    /// listed region is started as a hub node of its own in this process.
    pub async fn start(listener: TcpListener, settings: Settings) -> Result<Server, HubError> {
        if let Some(cluster) = settings.cluster.clone().filter(|c| !c.regions.is_empty()) {
            return Self::start_desk(listener, settings, cluster).await;
        }
        if let Some(cluster) = settings.cluster.clone() {
            // An engine waits as a standby until it holds the region's lease, then
            // fences the old writer with its takeover message before it replays.
            let (listener, active, standby) = match cluster.role {
                ClusterRole::Hub => (listener, None, None),
                ClusterRole::Engine | ClusterRole::Both => {
                    let client = connect_nats(&cluster).await?;
                    let lease_client = connect_nats(&cluster).await?;
                    let (listener, lease, bucket, names, standby) =
                        failover::wait_for_lease(listener, &settings, &cluster, &lease_client, &client)
                            .await?;
                    (
                        listener,
                        Some(failover::Active::keep(bucket, names, lease, client)),
                        standby,
                    )
                }
            };
            // A warm standby hands over the engine's journal (re-read before the
            // takeover message) and the state it followed.
            let warm = match standby {
                Some(s) => s.finish().await,
                None => None,
            };
            let (mut journal, warm) = match warm {
                Some(mut w) => (w.take_journal(), Some(w)),
                None => (open_region_journal(&cluster, &settings).await?, None),
            };
            if let Some(a) = &active {
                let (j, seq) = failover::take_over(journal, &cluster, a.epoch, warm.is_some()).await?;
                a.takeover_seq.send_replace(seq);
                journal = j;
            }
            let journal = Box::new(journal);
            let mut forwarder_link = None;
            let node = match cluster.role {
                ClusterRole::Both => Node::Engine { positions_out: None },
                ClusterRole::Engine => {
                    let client = match &active {
                        Some(a) => a.client.clone(),
                        None => connect_nats(&cluster).await?,
                    };
                    let (tx, positions) = tokio::sync::mpsc::unbounded_channel();
                    let (recovered, recalled) = recover_taken_over(&settings, journal, warm).await?;
                    let mut server = Self::start_recovered(
                        listener,
                        settings,
                        recovered,
                        Node::Engine {
                            positions_out: Some(tx),
                        },
                    )?;
                    server.recalled = recalled;
                    let (link, follower) = tokio::sync::watch::channel(client);
                    server.probed.push(Probed {
                        label: "engine",
                        link,
                    });
                    server.bridge = Some(bridge::EngineBridge {
                        link: follower,
                        region: cluster.region.clone(),
                        positions,
                    });
                    server.active = active;
                    return Ok(server);
                }
                ClusterRole::Hub => {
                    let client = connect_nats(&cluster).await?;
                    // The calls to the engine have a connection of their own.
                    let (calls, link) = tokio::sync::watch::channel(connect_nats(&cluster).await?);
                    forwarder_link = Some(calls);
                    let forward = Arc::new(bridge::Forwarder::new(
                        link,
                        &cluster.region,
                        cluster.command_timeout,
                    ));
                    forward.watch_takeovers();
                    Node::Hub {
                        forward,
                        client,
                        region: cluster.region.clone(),
                    }
                }
            };
            let (recovered, _) = recover_taken_over(&settings, journal, warm).await?;
            let mut server = Self::start_recovered(listener, settings, recovered, node)?;
            server
                .probed
                .extend(forwarder_link.map(|link| Probed { label: "hub", link }));
            server.active = active;
            return Ok(server);
        }
        let opened = {
            let dir = settings.data_dir.clone();
            let opts = Options {
                fsync: settings.fsync,
                checkpoint_records: settings.audit_checkpoint_records,
                checkpoint_interval: settings.audit_checkpoint_interval,
                accept_broken_chain: settings.accept_broken_chain,
                ..Options::default()
            };
            tokio::task::spawn_blocking(move || FileJournal::open(dir, opts)).await?
        };
        match opened {
            Ok(journal) => Self::start_with_journal(listener, settings, Box::new(journal)).await,
            // Another server owns this data: refuse to start at all rather than
            // answer clients while the other one is the writer.
            Err(e @ opcenter_store::StoreError::Locked { .. }) => Err(HubError::Locked(e)),
            Err(e @ opcenter_store::StoreError::ChainBroken { .. }) => Err(HubError::BrokenChain(e)),
            Err(e @ opcenter_store::StoreError::OldFormat { .. }) => Err(HubError::OldFormat(e)),
            Err(e) => Self::launch_unavailable(listener, settings, e.into()),
        }
    }

    /// Like [`Server::start`] over a journal the caller opened (another
    /// implementation of [`Journal`], or a test double that fails on demand).
    pub async fn start_with_journal(
        listener: TcpListener,
        settings: Settings,
        journal: Box<dyn Journal>,
    ) -> Result<Server, HubError> {
        Self::start_node(listener, settings, journal, Node::Engine { positions_out: None }).await
    }

    async fn start_node(
        listener: TcpListener,
        settings: Settings,
        journal: Box<dyn Journal>,
        node: Node,
    ) -> Result<Server, HubError> {
        let recovered = recover_region(&settings, journal).await?;
        Self::start_recovered(listener, settings, recovered, node)
    }

    fn start_recovered(
        listener: TcpListener,
        settings: Settings,
        recovered: Result<Recovered, DurabilityError>,
        node: Node,
    ) -> Result<Server, HubError> {
        match recovered {
            Ok(recovered) => Self::launch(listener, settings, recovered, node),
            Err(e) => Self::launch_unavailable(listener, settings, e),
        }
    }

    /// A national desk (`cluster.regions`, role `hub`): each region as a hub node
    /// of its own (its stream read-only, its recovery, a feed thread over a
    /// follower, commands forwarded to its engine), one NATS connection for all
    /// and one for all their calls.
    /// A region that cannot be opened or read stops the start.
    async fn start_desk(
        listener: TcpListener,
        settings: Settings,
        cluster: ClusterSettings,
    ) -> Result<Server, HubError> {
        let client = connect_nats(&cluster).await?;
        // The calls to the regions' engines have a connection of their own.
        let (calls, link) = tokio::sync::watch::channel(connect_nats(&cluster).await?);
        let audit = audit_log::AuditLog::open(&settings.data_dir, settings.fsync)?;
        let mut regions = Vec::new();
        for name in &cluster.regions {
            let one = ClusterSettings {
                region: name.clone(),
                ..cluster.clone()
            };
            let journal = Box::new(open_region_journal(&one, &settings).await?);
            let recovered = recover_region(&settings, journal)
                .await?
                .map_err(|e| HubError::DeskRegion {
                    region: name.clone(),
                    reason: e.to_string(),
                })?;
            let forward = Arc::new(bridge::Forwarder::new(
                link.clone(),
                name,
                cluster.command_timeout,
            ));
            forward.watch_takeovers();
            let node = Node::Hub {
                forward,
                client: client.clone(),
                region: name.clone(),
            };
            let named = Some(Arc::from(name.as_str()));
            regions.push(start_region(&settings, named, recovered, true, node, &audit)?);
        }
        tracing::info!(regions = ?cluster.regions, "national desk serving");
        let mut server = Self::assemble(listener, settings, regions, audit)?;
        server.probed.push(Probed {
            label: "hub",
            link: calls,
        });
        Ok(server)
    }

    /// Whatever keeps us from the data (it cannot be opened, or the engine cannot
    /// read what it holds): serve, but refuse to acknowledge, and never start
    /// empty over it.
    fn launch_unavailable(
        listener: TcpListener,
        settings: Settings,
        error: DurabilityError,
    ) -> Result<Server, HubError> {
        tracing::error!(
            error = %error,
            dir = %settings.data_dir.display(),
            "journal unavailable: serving read-only, refusing to acknowledge anything"
        );
        let recovered = Recovered {
            engine: Engine::new(settings.engine.clone()),
            journal: Box::new(MemJournal::with_epoch("unavailable")),
            snapshot_seq: 0,
            history: Vec::new(),
            read_copy: None,
        };
        let node = Node::Engine { positions_out: None };
        // Over data that could not be read, nothing is written to the data dir.
        let audit = audit_log::AuditLog::disabled();
        let region = start_region(&settings, None, recovered, false, node, &audit)?;
        Self::assemble(listener, settings, vec![region], audit)
    }

    /// One region (`cluster.region`, or none in one process) over its recovered state.
    fn launch(
        listener: TcpListener,
        settings: Settings,
        recovered: Recovered,
        node: Node,
    ) -> Result<Server, HubError> {
        let name = settings.cluster.as_ref().map(|c| Arc::from(c.region.as_str()));
        let audit = audit_log::AuditLog::open(&settings.data_dir, settings.fsync)?;
        let region = start_region(&settings, name, recovered, true, node, &audit)?;
        Self::assemble(listener, settings, vec![region], audit)
    }

    /// The server around its started regions (the first is its own).
    fn assemble(
        listener: TcpListener,
        settings: Settings,
        regions: Vec<(Region, std::thread::JoinHandle<()>)>,
        audit: audit_log::AuditLog,
    ) -> Result<Server, HubError> {
        if settings.uses_dev_secret() {
            tracing::warn!("running with the development JWT secret: set auth.jwt_secret for real use");
        }
        let (regions, engine_threads) = regions.into_iter().unzip();
        let reports_bucket = limit::TokenBucket::new(settings.reports_rate.0, settings.reports_rate.1);
        let app = Arc::new(App {
            settings,
            regions,
            sessions: DashMap::new(),
            session_counter: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            reports_bucket: Mutex::new(reports_bucket),
            metrics: metrics_handle(),
            audit,
        });
        Ok(Server {
            listener,
            app,
            engine_threads,
            bridge: None,
            active: None,
            recalled: None,
            probed: Vec::new(),
        })
    }

    /// The address it listens on (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets every
    /// session flush and close with 1001, and returns within
    /// `server.shutdown_timeout_s`. On a region's stream, it also stops when
    /// another engine appended (fencing) and then returns [`HubError::Fenced`].
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), HubError> {
        let Server {
            listener,
            app,
            engine_threads,
            bridge,
            active,
            recalled,
            probed,
        } = self;
        let stop_ticks = tokio_util::sync::CancellationToken::new();
        if let Some(cluster) = &app.settings.cluster
            && let Some(probe) = cluster.probe
        {
            for p in probed {
                let urls = cluster.nats.join(",");
                let connect: opcenter_cluster::Connect = Box::new(move || {
                    let urls = urls.clone();
                    Box::pin(async move { opcenter_cluster::connect(&urls).await.map_err(|e| e.to_string()) })
                });
                let (label, stop) = (p.label, stop_ticks.clone());
                let count = move || {
                    metrics::counter!(metric::NATS_PROBE_RECONNECTS, "connection" => label).increment(1)
                };
                tokio::spawn(async move {
                    tokio::select! {
                        _ = opcenter_cluster::keep_connection(p.link, label, probe, connect, count) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        }
        if let Some(a) = &active {
            // A lost lease: refuse everything from now on (another engine may
            // already append), then stop like a fenced append does.
            let mut lost = a.lost.clone();
            let shared = app.home().shared.clone();
            tokio::spawn(async move {
                if let Ok(why) = lost.wait_for(Option::is_some).await {
                    shared.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
                    shared.fenced.send_replace(why.clone());
                }
            });
        }
        if let Some(b) = bridge {
            // Calls the previous engine applied (and maybe never answered) are
            // answered from the stream, not applied again.
            let recalled = match recalled {
                Some(r) => r,
                None => {
                    let journal = app.home().journal.clone();
                    tokio::task::spawn_blocking(move || bridge::recall(&journal))
                        .await
                        .unwrap_or_default()
                }
            };
            let (subscribed, serving) = tokio::sync::oneshot::channel();
            tokio::spawn(bridge::serve_engine(
                b,
                recalled,
                app.home().engine_tx.clone(),
                app.audit.clone(),
                stop_ticks.clone(),
                subscribed,
            ));
            // The hubs send their waiting calls on the announcement: announce
            // only once they find the subscription (or it failed, logged there).
            let _ = tokio::time::timeout(bridge::SUBSCRIBE_CONFIRM_TIMEOUT, serving).await;
        }
        if let (Some(a), Some(cluster)) = (&active, &app.settings.cluster) {
            failover::announce_active(&a.client, &cluster.region, &cluster.node, a.epoch).await;
        }
        for region in &app.regions {
            tokio::spawn(tick_loop(
                region.engine_tx.clone(),
                app.settings.tick,
                stop_ticks.clone(),
            ));
        }
        // A desk stops as a whole when any of its regions does.
        for region in app.regions.iter().skip(1) {
            tokio::spawn(stop_with(region.shared.clone(), app.home().shared.clone()));
        }

        let router = Router::new()
            .route("/v1/ws", get(http::websocket))
            .route("/v1/reports", post(http::post_report))
            .route("/v1/incidents/{id}", get(http::get_incident))
            .route("/v1/reports/response-times", get(http::response_times))
            .route("/v1/reports/{key}", get(http::get_report_status))
            .route("/v1/incidents/{id}/eido", get(http::get_incident_eido))
            .route("/v1/incidents/{id}/timeline", get(http::get_incident_timeline))
            .route("/v1/console/config", get(http::console_config))
            .route("/v1/zones", get(http::get_zones))
            .route("/v1/streets", get(http::get_streets))
            .route("/v1/geocode", get(http::geocode))
            .route("/healthz", get(http::healthz))
            .route("/metrics", get(http::metrics))
            .route("/", get(http::console_index))
            .route("/console/{file}", get(http::console_asset))
            .fallback(http::not_found)
            .with_state(app.clone());

        // Shut down on the caller's signal, when the engine (or read model)
        // thread ends under us (serving without it would answer 200 while
        // refusing every command), or when another engine fenced this one.
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<bool>();
        let stopped = app.home().shared.stopped.clone();
        let mut fenced_rx = app.home().shared.fenced.subscribe();
        let mut replaced_rx = app.home().shared.replaced.subscribe();
        // After an engine death keep answering `/healthz` 503 for a moment
        // before the listener closes, so a health check sees why we go.
        let show_503 = (app.settings.shutdown_timeout / 2).min(Duration::from_secs(2));
        let graceful = async move {
            let engine_died = tokio::select! {
                _ = shutdown => false,
                _ = stopped.cancelled() => true,
                _ = fenced_rx.wait_for(Option::is_some) => false,
                _ = replaced_rx.wait_for(Option::is_some) => false,
            };
            let _ = signalled_tx.send(engine_died);
            if engine_died {
                tokio::time::sleep(show_503).await;
            }
        };
        // Replies and events are small frames that must leave now: no Nagle delay.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serving = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(graceful)
                .await
        });
        let engine_died = signalled_rx.await.unwrap_or(false);
        let fenced_why = app.home().shared.fenced.subscribe().borrow().clone();
        let replaced_why = app.home().shared.replaced.subscribe().borrow().clone();
        if let Some(why) = fenced_why.as_deref() {
            tracing::error!(
                reason = why,
                "fenced: another engine appended to this region's stream; stopping (nothing more is acknowledged)"
            );
        } else if engine_died {
            tracing::error!("engine stopped while serving: shutting down so a supervisor can restart");
        }
        tracing::info!(
            sessions = app.sessions.len(),
            "shutting down: closing sessions with 1001"
        );
        let deadline = tokio::time::Instant::now() + app.settings.shutdown_timeout;
        // A replaced stream: what the clients hold belongs to another epoch, so
        // they reconnect and reload (4008), not just wait for this server (1001).
        let close = match replaced_why {
            Some(_) => CloseReason {
                code: codes::OVERFLOW,
                reason: "the region's stream was replaced: reconnect and reload",
                flush_first: true,
            },
            None => CloseReason {
                code: codes::GOING_AWAY,
                reason: "server shutdown",
                flush_first: true,
            },
        };
        for entry in app.sessions.iter() {
            entry.value().close(close);
        }
        while !app.sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !app.sessions.is_empty() {
            tracing::warn!(
                left = app.sessions.len(),
                "shutdown deadline passed with sessions still open"
            );
        }
        stop_ticks.cancel();
        let _ = tokio::time::timeout_at(deadline, serving).await;
        // What the audit log gathered this second is written before we go.
        let audit = app.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
        // The engine thread ends when the last sender is gone; sessions that
        // outlived the deadline may still hold one, so do not wait past it.
        // The last reference may hold a journal, whose own runtime must not be
        // dropped on a runtime thread (tokio panics): drop it on a blocking one.
        let dropped = tokio::task::spawn_blocking(move || drop(app));
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), dropped).await;
        let waited = tokio::task::spawn_blocking(move || {
            for thread in engine_threads {
                let _ = thread.join();
            }
        });
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), waited).await;
        if let Some(why) = fenced_why {
            return Err(HubError::Fenced(why));
        }
        if let Some(a) = active {
            a.release().await;
        }
        if let Some(why) = replaced_why {
            return Err(HubError::StreamReplaced(why));
        }
        if engine_died {
            return Err(HubError::EngineStopped);
        }
        Ok(())
    }
}

/// Rebuilds a region's state from its journal (latest snapshot + replay), off
/// the runtime. The inner error: the journal could not be read (it is dropped).
async fn recover_region(
    settings: &Settings,
    journal: Box<dyn Journal>,
) -> Result<Result<Recovered, DurabilityError>, HubError> {
    let memory_history = memory_history(settings);
    let config = settings.engine.clone();
    let started = std::time::Instant::now();
    let (journal, recovered) = tokio::task::spawn_blocking(move || {
        let r = engine_task::recover_counted(config, &*journal, memory_history).map(
            |((mut engine, snap, history), replayed)| {
                // No session survived the restart: the grace runs from now.
                engine.sessions_lost(engine_task::now_ms());
                metrics::gauge!(metric::REPLAYED_RECORDS).set(replayed as f64);
                metrics::gauge!(metric::REPLAY_FROM_SEQ).set(snap as f64);
                (engine, snap, history)
            },
        );
        (journal, r)
    })
    .await?;
    metrics::gauge!(metric::REPLAY_SECONDS).set(started.elapsed().as_secs_f64());
    match recovered {
        Ok((engine, snapshot_seq, history)) => Ok(Ok(Recovered {
            engine,
            journal,
            snapshot_seq,
            history,
            read_copy: None,
        })),
        Err(e) => {
            // A journal may own a runtime (JetStream's), which must not be
            // dropped on a runtime thread.
            tokio::task::spawn_blocking(move || drop(journal)).await?;
            Ok(Err(e))
        }
    }
}

/// The answers of the calls found in the stream (see [`bridge::Recall`]).
type Recalled = Vec<(String, bytes::Bytes)>;

/// A takeover's recovery: a warm standby's state plus the stream's tail after it,
/// with the call ids it noted while following; or, without a warm state (or with
/// one that does not continue the stream), the cold recovery of
/// [`recover_region`] (the calls are then read from the stream at serving).
async fn recover_taken_over(
    settings: &Settings,
    journal: Box<dyn Journal>,
    warm: Option<standby::Warm>,
) -> Result<(Result<Recovered, DurabilityError>, Option<Recalled>), HubError> {
    let Some(standby::Warm {
        replay,
        epoch,
        followed,
        newest_snapshot,
        ..
    }) = warm
    else {
        return Ok((recover_region(settings, journal).await?, None));
    };
    let started = std::time::Instant::now();
    let (journal, tail) = tokio::task::spawn_blocking(move || {
        let tail = standby::replay_tail(&*journal, replay, &epoch).map(|r| {
            r.map(|(mut replay, tail)| {
                let calls = replay.calls.take().map(bridge::Recall::answers);
                (replay, tail, calls)
            })
        });
        (journal, tail)
    })
    .await?;
    match tail {
        Some(Ok((mut replay, tail, calls))) => {
            let ms = started.elapsed();
            metrics::gauge!(metric::REPLAY_SECONDS).set(ms.as_secs_f64());
            metrics::gauge!(metric::REPLAYED_RECORDS).set(tail as f64);
            metrics::gauge!(metric::REPLAY_FROM_SEQ).set((replay.seq - tail) as f64);
            tracing::info!(
                snapshot_seq = replay.snapshot_seq,
                newest_snapshot,
                followed,
                replayed = tail,
                last_seq = replay.seq,
                calls = calls.as_ref().map_or(0, Vec::len),
                ms = ms.as_millis() as u64,
                "state recovered: the warm standby's state and the stream's tail"
            );
            // The active engine kept writing snapshots while this one stood by:
            // the next is due `snapshot_every_events` after the newest of them
            // (as the standby last listed them), not at once.
            let snapshot_seq = replay.snapshot_seq.max(newest_snapshot);
            // The copy folds every record the replay applied; one that does not
            // stand where the engine does is dropped (the read model copies).
            let seq = replay.seq;
            let read_copy = replay.take_read_copy().filter(|c| c.seq() == seq);
            let (mut engine, _, history) = replay.into_recovered();
            // No session survived the takeover: the grace runs from now.
            engine.sessions_lost(engine_task::now_ms());
            let recovered = Recovered {
                engine,
                journal,
                snapshot_seq,
                history,
                read_copy,
            };
            Ok((Ok(recovered), calls))
        }
        other => {
            if let Some(Err(e)) = other {
                tracing::warn!(error = %e, "the warm standby's state does not continue the stream: recovering cold");
            }
            Ok((recover_region(settings, journal).await?, None))
        }
    }
}

/// A region's state as recovered from its journal.
struct Recovered {
    engine: Engine,
    journal: Box<dyn Journal>,
    snapshot_seq: u64,
    history: Vec<(u64, Arc<opcenter_core::Event>)>,
    /// A warm standby's read copy, at the engine's state (see [`standby`]).
    read_copy: Option<read_model::ReadCopy>,
}

/// Starts one region's threads over its recovered state: the read model, and
/// the thread that changes the state (`node`: the engine thread, or a hub's
/// feed thread over a follower of the region's stream).
fn start_region(
    settings: &Settings,
    name: Option<Arc<str>>,
    recovered: Recovered,
    healthy: bool,
    node: Node,
    audit: &audit_log::AuditLog,
) -> Result<(Region, std::thread::JoinHandle<()>), HubError> {
    // The recorder first: the fan-out looks its counters up once, when made.
    let _ = metrics_handle();
    let Recovered {
        engine,
        journal,
        snapshot_seq,
        history,
        read_copy,
    } = recovered;
    let shared = Arc::new(Shared {
        epoch: journal.epoch().to_string(),
        healthy: AtomicBool::new(healthy),
        stopped: tokio_util::sync::CancellationToken::new(),
        fenced: tokio::sync::watch::channel(None).0,
        replaced: tokio::sync::watch::channel(None).0,
        region: name,
    });
    // A hub's recovery read the stream while the engine kept appending: it
    // starts where its replay ended, not where the stream ended at opening.
    let seq = match &node {
        Node::Hub { .. } => history.last().map_or(snapshot_seq, |(s, _)| *s),
        Node::Engine { .. } => journal.last_seq(),
    };
    let started = std::time::Instant::now();
    // A warm standby's copy is the engine's state already; otherwise the
    // state is copied here (the engine thread owns the engine from now on).
    let start = match read_copy {
        Some(mut copy) => {
            copy.restart_at(engine.units(), seq);
            read_model::ReadStart::Warm(copy)
        }
        None => read_model::ReadStart::Cold(read_model::Start {
            state: engine.state(),
            seq,
            history,
        }),
    };
    let journal = Arc::new(std::sync::Mutex::new(journal));
    let fix_inbox = matches!(node, Node::Engine { .. });
    let (engine_tx, engine_rx) = engine_task::engine_queue(settings.hub.engine_queue, fix_inbox);
    let (reads, reads_rx) = std::sync::mpsc::channel();
    let state_ms = started.elapsed().as_millis() as u64;
    // The read model's maps are built on its own thread: a takeover's engine
    // serves meanwhile (what it sends the read model waits in the channel).
    let guard_shared = shared.clone();
    let reads_nice = settings.hub.reads_nice;
    let (model_journal, model_shared) = (journal.clone(), shared.clone());
    let model_settings = settings.clone();
    std::thread::Builder::new()
        .name("opcenter-reads".into())
        .spawn(move || {
            let _guard = StopGuard::new(guard_shared, "read model");
            let built = std::time::Instant::now();
            let history = memory_history(&model_settings);
            let warm = matches!(start, read_model::ReadStart::Warm(_));
            let copy = start.into_copy(model_settings.engine.key_ttl_ms, history);
            let model = ReadModel::new(copy, model_journal, model_shared, &model_settings);
            metrics::gauge!(metric::READ_COPY_FROM_STANDBY).set(if warm { 1.0 } else { 0.0 });
            metrics::gauge!(metric::READ_MODEL_START_SECONDS).set(built.elapsed().as_secs_f64());
            tracing::info!(ms = built.elapsed().as_millis() as u64, warm, "read model built");
            priority::renice_this_thread(reads_nice, "hub.reads_nice");
            model.run(reads_rx)
        })?;
    let mut view = None;
    let thread = match node {
        Node::Engine { positions_out } => {
            let task = EngineTask::new(
                engine,
                journal.clone(),
                reads.clone(),
                shared.clone(),
                settings,
                snapshot_seq,
            )
            .with_positions_out(positions_out)
            .with_audit(audit.clone());
            view = Some(task.view());
            let engine_nice = settings.hub.engine_nice;
            std::thread::Builder::new()
                .name("opcenter-engine".into())
                .spawn(move || {
                    priority::renice_this_thread(engine_nice, "hub.engine_nice");
                    task.run(engine_rx)
                })?
        }
        Node::Hub {
            forward,
            client,
            region,
        } => {
            let (feed_tx, feed_rx) = tokio::sync::mpsc::unbounded_channel();
            let pos_out = forward.subjects().pos_out.clone();
            let js = async_nats::jetstream::new(client.clone());
            tokio::spawn(mirror::follow(
                js,
                client,
                region,
                shared.epoch.clone(),
                seq,
                pos_out,
                feed_tx.clone(),
            ));
            let feed = mirror::Mirror::new(engine, seq, reads.clone(), shared.clone(), forward, feed_tx);
            std::thread::Builder::new()
                .name("opcenter-hub-feed".into())
                .spawn(move || feed.run(engine_rx, feed_rx))?
        }
    };
    let region = Region {
        engine_tx,
        reads,
        shared,
        journal,
        view,
    };
    tracing::info!(
        state_ms,
        ms = started.elapsed().as_millis() as u64,
        "region started"
    );
    Ok((region, thread))
}

/// Opens the region's stream as this node's journal: the engine's (roles
/// `both` and `engine`), or a read-only one for a hub's recovery, deep resumes
/// and lookups (a hub never appends, so it fences no one). The journal runs its
/// own one-thread runtime, so NATS I/O never waits behind the sessions' tasks.
pub(crate) async fn open_region_journal(
    cluster: &ClusterSettings,
    settings: &Settings,
) -> Result<opcenter_cluster::JetStreamJournal, HubError> {
    let mut opts = opcenter_cluster::JournalOptions::new(cluster.region.clone()).replicas(cluster.replicas);
    opts.publish_deadline = cluster.publish_deadline;
    // An engine walks the audit chain before it writes; a hub never appends.
    opts.verify_chain = cluster.role != ClusterRole::Hub;
    opts.accept_broken_chain = settings.accept_broken_chain;
    opts.checkpoint_records = settings.audit_checkpoint_records;
    opts.checkpoint_interval = settings.audit_checkpoint_interval;
    let urls = cluster.nats.join(",");
    tracing::info!(region = %cluster.region, nats = %urls, replicas = cluster.replicas, "opening the region's JetStream journal");
    tokio::task::spawn_blocking(move || opcenter_cluster::JetStreamJournal::connect(&urls, opts))
        .await?
        .map_err(|source| HubError::Cluster {
            region: cluster.region.clone(),
            source,
        })
}

/// A NATS connection of this node's own (commands, positions, the follower; an
/// engine opens a second one for its lease alone), on the sessions' runtime.
async fn connect_nats(cluster: &ClusterSettings) -> Result<async_nats::Client, HubError> {
    opcenter_cluster::connect(&cluster.nats.join(","))
        .await
        .map_err(|e| HubError::Cluster {
            region: cluster.region.clone(),
            source: opcenter_cluster::ClusterError::Nats {
                op: "connect",
                source: e,
            },
        })
}

/// A desk's other region `from` stopping (its thread ended, its stream was
/// replaced) stops the desk: `to` is the desk's own region, which `serve` watches.
async fn stop_with(from: Arc<Shared>, to: Arc<Shared>) {
    let mut replaced = from.replaced.subscribe();
    tokio::select! {
        _ = from.stopped.cancelled() => to.stopped.cancel(),
        Ok(why) = replaced.wait_for(Option::is_some) => {
            let why = why.clone();
            to.replaced.send_replace(why);
        }
        _ = to.stopped.cancelled() => {}
    }
}

/// Drives timers: one `Tick` per `every` (skipped when the engine is busy).
async fn tick_loop(tx: EngineQueue, every: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {
                if !tx.try_send(Request::Tick) && tx.is_closed() {
                    return;
                }
            }
        }
    }
}
