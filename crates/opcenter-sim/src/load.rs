//! The load tool behind `opcenter sim`: many tablets, consoles, supervisors and
//! incident producers against one server, open-loop, with HDR percentiles of the
//! latencies that matter to a dispatch room and a LOST check at the end.
//!
//! What is measured (all on this machine's wall clock, microseconds):
//! - `create_ok`: a producer's `incident.create` send → its `ok` reply.
//! - `create_assignment`: that send → the `assignments` event on the chosen tablet (the
//!   send time travels in the incident's `description` as `load:<µs>`).
//! - `fanout`: that send → the `created` event on each subscribed console.
//! - `position_staleness`: a tablet's fix `at_ms` → the supervisor receiving it (ms
//!   resolution of `at_ms`, rounded: ±0.5 ms).
//!
//! `--fanout` runs only consoles and producers (no tablets, no positions), for the
//! comparison with `benches/node-ws-hub`; `--no-verify` skips the HTTP LOST check for a
//! peer that has no HTTP API. In that mode the consoles are raw receivers
//! ([`crate::rawws`]: a large socket buffer, many frames per read, no per-message
//! allocation), so the tool can take far more than a hub sends, and `--window N`
//! closes the loop: a burst stays at most N events ahead of the slowest console.
//!
//! Owns: load generation and its report. Must never: target anything but the
//! `--server` it is given, run unbounded in time, or print anything but the report on
//! stdout (progress goes to stderr).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use opcenter_proto::auth::{DEV_SECRET, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::geo::{self, City};
use crate::http::HttpClient;
use crate::rawws::{self, FrameReader};
use crate::stats::{self, Latency, ProcSample, Summary};
use crate::wire::{self, Encoding, Frame, Ws};

/// Options of `opcenter sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Server address (HOST:PORT); only loopback targets are sensible here.
    #[arg(long, default_value = "127.0.0.1:8102")]
    pub server: String,
    /// JWT secret the server verifies tokens with.
    #[arg(long, default_value = DEV_SECRET)]
    pub secret: String,
    /// Patrol tablets (one WebSocket each, role unit).
    #[arg(long, default_value_t = 100)]
    pub tablets: usize,
    /// Dispatcher consoles subscribed to `incidents`.
    #[arg(long, default_value_t = 5)]
    pub consoles: usize,
    /// Supervisors subscribed to `positions`.
    #[arg(long, default_value_t = 1)]
    pub supervisors: usize,
    /// Dispatcher connections that create incidents (the rate is split among them).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Incidents created per second, in total.
    #[arg(long, default_value_t = 10.0)]
    pub incident_rate: f64,
    /// Position fixes sent per second, in total across tablets.
    #[arg(long, default_value_t = 1000.0)]
    pub position_rate: f64,
    /// Length of the measured window, seconds (connecting comes before it).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Session encoding of every connection.
    #[arg(long, value_enum, default_value_t = Encoding::Json)]
    pub encoding: Encoding,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Server process id: report its CPU% and RSS from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// How long a tablet keeps an incident before closing it, ms.
    #[arg(long, default_value_t = 300)]
    pub hold_ms: u64,
    /// A tablet's delay before `assignment.ack`, ms.
    #[arg(long, default_value_t = 20)]
    pub ack_delay_ms: u64,
    /// After the window: how long to wait for outstanding replies and deliveries, s.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Connections set up concurrently.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// RNG seed (locations, categories).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fan-out mode: consoles and producers only (no tablets, supervisors, positions).
    #[arg(long)]
    pub fanout: bool,
    /// Instead of a rate, create this many incidents as fast as possible at the start.
    #[arg(long)]
    pub burst: Option<u64>,
    /// Skip the HTTP LOST check (for a peer without `GET /v1/incidents/{id}`).
    #[arg(long)]
    pub no_verify: bool,
    /// Supervisors that re-subscribe (incidents, units, positions) in a loop for the
    /// whole window, reading every reply in full: the reads-vs-dispatch benchmark.
    /// Odd-numbered ones resume with `since` `--resubscribe-depth` events back.
    #[arg(long, default_value_t = 0)]
    pub resubscribers: usize,
    /// How far back (events) the `since` resumes of `--resubscribers` reach.
    #[arg(long, default_value_t = 50_000)]
    pub resubscribe_depth: u64,
    /// Closed loop for a `--burst`: never more than this many creates beyond what the
    /// slowest console has received (fan-out mode).
    #[arg(long)]
    pub window: Option<u64>,
    /// Consoles connect to these addresses, round-robin, instead of `--server`
    /// (repeat the option): one console population spread over several hub nodes
    /// of a region. Everything else stays on `--server`.
    #[arg(long = "console-server", value_name = "HOST:PORT")]
    pub console_servers: Vec<String>,
    /// More process ids (repeat the option; e.g. a region's engine and other hub
    /// nodes): each one's CPU seconds over the same span as `server_process.cpu_s`.
    #[arg(long = "also-pid", value_name = "PID")]
    pub also_pids: Vec<u32>,
    /// Dispatcher sessions that each send one read (`--read-kind`), wait for its
    /// reply and send the next, for the whole window: `latency.read` in the report.
    #[arg(long, default_value_t = 0)]
    pub readers: usize,
    /// What the `--readers` send.
    #[arg(long, value_enum, default_value_t = ReadKind::Ping)]
    pub read_kind: ReadKind,
}

/// What a `--readers` session sends, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadKind {
    /// `ping` with an `id`: answered `ok` by the session.
    Ping,
    /// `incident.recommend` at a random location in the city (3 candidates).
    Recommend,
    /// `subscribe` to `incidents` with `since` the cut of the previous reply: a
    /// resume from memory (the reply is timed; its replay, if any, is read after).
    Resume,
    /// A WebSocket ping control frame, answered with a pong by the WebSocket layer:
    /// the floor of a round trip through the server's socket code.
    WsPing,
}

impl LoadArgs {
    /// The address console `i` connects to.
    fn console_server(&self, i: usize) -> &str {
        match self.console_servers.len() {
            0 => &self.server,
            n => &self.console_servers[i % n],
        }
    }
}

/// Shared counters, bumped by every connection task.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    creates_sent: AtomicU64,
    creates_ok: AtomicU64,
    create_errors: AtomicU64,
    assignments: AtomicU64,
    closes_ok: AtomicU64,
    other_errors: AtomicU64,
    positions_sent: AtomicU64,
    position_items: AtomicU64,
    events: AtomicU64,
    created_events: AtomicU64,
    resubscribes: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
    first_send_us: AtomicU64,
    last_delivery_us: AtomicU64,
}

struct Shared {
    args: LoadArgs,
    secret: Vec<u8>,
    run: String,
    city: City,
    /// Fired when the measured window opens.
    go: CancellationToken,
    /// Fired when the window closes: stop creating and moving.
    stop_load: CancellationToken,
    /// Fired when the run ends: close every connection.
    cancel: CancellationToken,
    connect_slots: Semaphore,
    c: Counters,
    create_ok: Latency,
    create_assignment: Latency,
    fanout: Latency,
    staleness: Latency,
    read: Latency,
    created_ids: Mutex<Vec<String>>,
    /// `created` events received so far, per console (the `--window` closed loop).
    delivered: Vec<AtomicU64>,
    /// Notified when a console's `delivered` moved.
    progress: tokio::sync::Notify,
    /// Payload bytes of the `created` events received (raw consoles).
    created_bytes: AtomicU64,
    error_codes: Mutex<BTreeMap<String, u64>>,
    error_samples: Mutex<BTreeMap<String, String>>,
}

impl Shared {
    fn error(&self, code: &str) {
        *self
            .error_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code.to_owned())
            .or_default() += 1;
    }

    /// Books an error reply and keeps the first message of each code as a sample.
    fn error_reply(&self, f: &Frame) {
        let code = f.code.as_deref().unwrap_or("?");
        self.error(code);
        let mut samples = self.error_samples.lock().unwrap_or_else(|e| e.into_inner());
        if !samples.contains_key(code) {
            let msg = f.message.as_deref().unwrap_or("");
            samples.insert(code.to_owned(), msg.chars().take(200).collect());
        }
    }
}

/// The JSON report (`--json`).
#[derive(Debug, Serialize)]
pub struct Report {
    /// Address under load.
    pub server: String,
    /// Session encoding.
    pub encoding: Encoding,
    /// Fan-out mode.
    pub fanout_mode: bool,
    /// Planned connections per role.
    pub planned: BTreeMap<&'static str, u64>,
    /// Connections set up.
    pub connected: u64,
    /// Connections that failed to set up.
    pub connect_failures: u64,
    /// Connections the server closed during the run.
    pub disconnects: u64,
    /// Seconds spent connecting.
    pub connect_s: f64,
    /// The measured window, seconds.
    pub window_s: f64,
    /// Incident counts.
    pub incidents: IncidentCounts,
    /// Latency percentiles.
    pub latency: Latencies,
    /// Throughput.
    pub throughput: Throughput,
    /// Error replies by code.
    pub errors: BTreeMap<String, u64>,
    /// The first error message seen for each code.
    pub error_samples: BTreeMap<String, String>,
    /// Server process readings (`--pid`).
    pub server_process: Option<ServerProc>,
    /// The load tool's own CPU seconds from the window's start to the end of the settle
    /// phase (it shares the machine with the server).
    pub tool_cpu_s: Option<f64>,
    /// `--also-pid` processes: CPU seconds of each from the window's start to the end
    /// of the settle phase, by pid (absent: the process was gone).
    pub also_cpu_s: BTreeMap<u32, f64>,
    /// The load tool's own CPU microseconds per position fix it sent, over the
    /// window (what one fix costs the tool: its ceiling is about 1e6 / this per
    /// core it gets). `None` without fixes.
    pub tool_cpu_us_per_fix: Option<f64>,
    /// `--readers`: what they sent and how many round trips they completed.
    pub reads: Option<Reads>,
}

/// The closed-loop readers' tally (`--readers`).
#[derive(Debug, Serialize)]
pub struct Reads {
    /// What each reader sent.
    pub kind: ReadKind,
    /// Readers.
    pub readers: usize,
    /// Round trips completed in the window (replies of any type).
    pub count: u64,
    /// Of those, answered `error`.
    pub errors: u64,
    /// Round trips per second.
    pub per_s: f64,
}

/// Incident counts. Invariant checked: `created == assigned + pending + lost`.
#[derive(Debug, Serialize, Default)]
pub struct IncidentCounts {
    /// `incident.create` commands sent.
    pub sent: u64,
    /// Answered `ok` (acknowledged, hence durable).
    pub created: u64,
    /// Answered `error`.
    pub create_errors: u64,
    /// Sent but never answered before the end.
    pub unanswered: u64,
    /// Created and, at the end, holding or having held a unit (dispatched … closed).
    pub assigned: Option<u64>,
    /// Created and still `pending` at the end.
    pub pending: Option<u64>,
    /// Created but not found, or in no valid state (exit status 1 when > 0).
    pub lost: Option<u64>,
    /// `assignments` events received by tablets.
    pub assignment_frames: u64,
    /// Incidents closed by tablets.
    pub closed_by_tablets: u64,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Serialize)]
pub struct Latencies {
    /// create → ok.
    pub create_ok: Summary,
    /// create → assignment event on the tablet.
    pub create_assignment: Summary,
    /// create → `created` event on each console.
    pub fanout: Summary,
    /// position `at_ms` → supervisor receive.
    pub position_staleness: Summary,
    /// A `--readers` read: the request written → its reply read (closed loop).
    pub read: Summary,
}

/// Throughput over the window.
#[derive(Debug, Serialize)]
pub struct Throughput {
    /// Position fixes sent per second.
    pub positions_sent_per_s: f64,
    /// Position items received by supervisors per second.
    pub position_items_per_s: f64,
    /// Event frames received by consoles per second.
    pub console_events_per_s: f64,
    /// `created` deliveries to consoles.
    pub created_deliveries: u64,
    /// `created` deliveries expected (`created × consoles`).
    pub created_deliveries_expected: u64,
    /// `created` deliveries per second, from the first create sent to the last delivery.
    pub deliveries_per_s: f64,
    /// Subscribes completed per second by `--resubscribers` (reply read in full).
    pub resubscribes_per_s: f64,
    /// Mean payload bytes of a `created` event as received (fan-out mode).
    pub created_bytes_mean: Option<f64>,
}

/// CPU and memory of the server process.
#[derive(Debug, Serialize)]
pub struct ServerProc {
    /// Server process id.
    pub pid: u32,
    /// CPU over the window, % of one core.
    pub cpu_percent: f64,
    /// CPU seconds from the window's start to the end of the settle phase.
    pub cpu_s: f64,
    /// `created` deliveries per server CPU second (the fan-out cost, whoever the
    /// bottleneck of the run was).
    pub deliveries_per_cpu_s: f64,
    /// Server CPU microseconds per `created` delivery (the inverse of the above).
    pub cpu_us_per_delivery: Option<f64>,
    /// Server CPU microseconds per position fix the tablets sent, over the window
    /// (the window's CPU ÷ fixes sent in it). `None` without fixes.
    pub cpu_us_per_fix: Option<f64>,
    /// Server CPU microseconds per `--readers` round trip (all of the server's CPU
    /// over the span: subtract a run without readers for the reads' own share).
    pub cpu_us_per_read: Option<f64>,
    /// RSS before connecting, KiB.
    pub rss_kib_before: u64,
    /// RSS with every connection set up, KiB.
    pub rss_kib_connected: u64,
    /// RSS at the end, KiB.
    pub rss_kib_end: u64,
    /// (connected − before) / connections, bytes.
    pub rss_bytes_per_connection: f64,
}

/// Runs the load described by `args` and prints its report. Fails (non-zero exit)
/// when an acknowledged incident was lost.
pub async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let mut args = args;
    if args.fanout {
        args.tablets = 0;
        args.supervisors = 0;
        args.position_rate = 0.0;
    }
    let planned_conns =
        args.tablets + args.consoles + args.supervisors + args.producers + args.resubscribers + args.readers;
    if let Some(limit) = stats::open_files_limit()
        && (limit as usize) < planned_conns + 64
    {
        eprintln!(
            "warning: open-files limit {limit} < {} connections + slack; raise it (`ulimit -n 65536`)",
            planned_conns
        );
    }
    let sh = Arc::new(Shared {
        secret: args.secret.as_bytes().to_vec(),
        run: format!("{:x}", wire::now_us()),
        city: City::URALSK,
        go: CancellationToken::new(),
        stop_load: CancellationToken::new(),
        cancel: CancellationToken::new(),
        connect_slots: Semaphore::new(args.connect_concurrency.max(1)),
        c: Counters::default(),
        create_ok: Latency::default(),
        create_assignment: Latency::default(),
        fanout: Latency::default(),
        staleness: Latency::default(),
        read: Latency::default(),
        created_ids: Mutex::new(Vec::new()),
        delivered: (0..args.consoles).map(|_| AtomicU64::new(0)).collect(),
        progress: tokio::sync::Notify::new(),
        created_bytes: AtomicU64::new(0),
        error_codes: Mutex::new(BTreeMap::new()),
        error_samples: Mutex::new(BTreeMap::new()),
        args,
    });
    let a = &sh.args;
    let proc0 = a.pid.and_then(|p| stats::proc_sample(p).ok());

    // Set up every connection before the window opens; each task signals `connected`.
    let t_connect = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut rng = StdRng::seed_from_u64(a.seed);
    for i in 0..a.supervisors {
        tasks.spawn(run_task(supervisor(sh.clone(), i)));
    }
    for i in 0..a.consoles {
        if a.fanout {
            tasks.spawn(run_task(raw_console(sh.clone(), i)));
        } else {
            tasks.spawn(run_task(console(sh.clone(), i)));
        }
    }
    for i in 0..a.resubscribers {
        tasks.spawn(run_task(resubscriber(sh.clone(), i)));
    }
    for i in 0..a.readers {
        tasks.spawn(run_task(reader(sh.clone(), i, rng.random())));
    }
    for i in 0..a.tablets {
        tasks.spawn(run_task(tablet(sh.clone(), i, rng.random())));
    }
    for i in 0..a.producers {
        tasks.spawn(run_task(producer(sh.clone(), i, rng.random())));
    }
    let total = planned_conns as u64;
    let setup_deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = sh.c.connected.load(Relaxed) + sh.c.connect_failures.load(Relaxed);
        if done >= total || Instant::now() > setup_deadline {
            break;
        }
        progress(&sh, "connect", t_connect.elapsed().as_secs_f64(), None);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    // Let the server settle after the connection storm before sampling memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let proc_connected = a.pid.and_then(|p| stats::proc_sample(p).ok());
    let also_connected: Vec<_> = a.also_pids.iter().map(|&p| stats::proc_sample(p).ok()).collect();
    let tool_connected = stats::proc_sample(std::process::id()).ok();

    // The measured window.
    let t0 = Instant::now();
    sh.go.cancel();
    let mut last = (0u64, 0u64, 0u64, t0);
    while t0.elapsed().as_secs_f64() < a.duration {
        tokio::time::sleep(Duration::from_secs(1).min(Duration::from_secs_f64(a.duration / 4.0))).await;
        let now = Instant::now();
        let cur = (
            sh.c.positions_sent.load(Relaxed),
            sh.c.position_items.load(Relaxed),
            sh.c.events.load(Relaxed),
        );
        let dt = (now - last.3).as_secs_f64().max(1e-3);
        let rates = (
            (cur.0 - last.0) as f64 / dt,
            (cur.1 - last.1) as f64 / dt,
            (cur.2 - last.2) as f64 / dt,
        );
        progress(&sh, "load", t0.elapsed().as_secs_f64(), Some(rates));
        last = (cur.0, cur.1, cur.2, now);
    }
    sh.stop_load.cancel();
    let window_s = t0.elapsed().as_secs_f64();
    let proc_window = a.pid.and_then(|p| stats::proc_sample(p).ok());
    let tool_window = stats::proc_sample(std::process::id()).ok();

    // Settle: wait for replies and deliveries still in flight, bounded.
    let settle_end = Instant::now() + Duration::from_secs_f64(a.settle);
    while Instant::now() < settle_end {
        let c = &sh.c;
        let answered = c.creates_ok.load(Relaxed) + c.create_errors.load(Relaxed);
        let delivered = c.created_events.load(Relaxed) >= c.creates_ok.load(Relaxed) * a.consoles as u64;
        let burst_sent = a.burst.is_none_or(|b| c.creates_sent.load(Relaxed) >= b);
        if burst_sent && answered >= c.creates_sent.load(Relaxed) && delivered && a.tablets == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let proc_settled = a.pid.and_then(|p| stats::proc_sample(p).ok());
    let also_cpu_s = a
        .also_pids
        .iter()
        .zip(&also_connected)
        .filter_map(|(&pid, p1)| {
            let (p1, ps) = (p1.as_ref()?, stats::proc_sample(pid).ok()?);
            Some((
                pid,
                ps.cpu_ticks.saturating_sub(p1.cpu_ticks) as f64 / stats::USER_HZ,
            ))
        })
        .collect();
    let tool_settled = stats::proc_sample(std::process::id()).ok();
    sh.cancel.cancel();
    while tasks.join_next().await.is_some() {}
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    let proc_end = a.pid.and_then(|p| stats::proc_sample(p).ok());

    let c = &sh.c;
    let created_ids = std::mem::take(&mut *sh.created_ids.lock().unwrap_or_else(|e| e.into_inner()));
    let mut inc = IncidentCounts {
        sent: c.creates_sent.load(Relaxed),
        created: c.creates_ok.load(Relaxed),
        create_errors: c.create_errors.load(Relaxed),
        assignment_frames: c.assignments.load(Relaxed),
        closed_by_tablets: c.closes_ok.load(Relaxed),
        ..Default::default()
    };
    inc.unanswered = inc.sent.saturating_sub(inc.created + inc.create_errors);
    if !a.no_verify {
        let v = verify(&sh, &created_ids).await;
        inc.assigned = Some(v.assigned);
        inc.pending = Some(v.pending);
        inc.lost = Some(v.lost);
    }

    let first = c.first_send_us.load(Relaxed);
    let last_d = c.last_delivery_us.load(Relaxed);
    let created_deliveries = c.created_events.load(Relaxed);
    let span_s = if last_d > first && first > 0 {
        (last_d - first) as f64 / 1e6
    } else {
        0.0
    };
    let report = Report {
        server: a.server.clone(),
        encoding: a.encoding,
        fanout_mode: a.fanout,
        planned: BTreeMap::from([
            ("tablets", a.tablets as u64),
            ("consoles", a.consoles as u64),
            ("supervisors", a.supervisors as u64),
            ("resubscribers", a.resubscribers as u64),
            ("producers", a.producers as u64),
            ("readers", a.readers as u64),
        ]),
        connected: c.connected.load(Relaxed),
        connect_failures: c.connect_failures.load(Relaxed),
        disconnects: c.disconnects.load(Relaxed),
        connect_s,
        window_s,
        incidents: inc,
        latency: Latencies {
            create_ok: sh.create_ok.summary(),
            create_assignment: sh.create_assignment.summary(),
            fanout: sh.fanout.summary(),
            position_staleness: sh.staleness.summary(),
            read: sh.read.summary(),
        },
        throughput: Throughput {
            positions_sent_per_s: c.positions_sent.load(Relaxed) as f64 / window_s,
            position_items_per_s: c.position_items.load(Relaxed) as f64 / window_s,
            console_events_per_s: c.events.load(Relaxed) as f64 / window_s,
            created_deliveries,
            created_deliveries_expected: c.creates_ok.load(Relaxed) * a.consoles as u64,
            deliveries_per_s: if span_s > 0.0 {
                created_deliveries as f64 / span_s
            } else {
                0.0
            },
            resubscribes_per_s: c.resubscribes.load(Relaxed) as f64 / window_s,
            created_bytes_mean: (created_deliveries > 0 && a.fanout)
                .then(|| sh.created_bytes.load(Relaxed) as f64 / created_deliveries as f64),
        },
        tool_cpu_s: tool_connected
            .zip(tool_settled)
            .map(|(t0, t1)| t1.cpu_ticks.saturating_sub(t0.cpu_ticks) as f64 / stats::USER_HZ),
        also_cpu_s,
        tool_cpu_us_per_fix: tool_connected.zip(tool_window).and_then(|(t0, t1)| {
            per_fix(
                t1.cpu_ticks.saturating_sub(t0.cpu_ticks),
                c.positions_sent.load(Relaxed),
            )
        }),
        reads: (a.readers > 0).then(|| Reads {
            kind: a.read_kind,
            readers: a.readers,
            count: c.reads.load(Relaxed),
            errors: c.read_errors.load(Relaxed),
            per_s: c.reads.load(Relaxed) as f64 / window_s,
        }),
        errors: sh.error_codes.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        error_samples: sh.error_samples.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        server_process: match (a.pid, proc0, proc_connected, proc_window, proc_settled, proc_end) {
            (Some(pid), Some(p0), Some(p1), Some(pw), Some(ps), Some(pe)) => {
                let mut sp = server_proc(pid, p0, p1, pw, pe, window_s, c);
                sp.cpu_s = ps.cpu_ticks.saturating_sub(p1.cpu_ticks) as f64 / stats::USER_HZ;
                sp.deliveries_per_cpu_s = if sp.cpu_s > 0.0 {
                    created_deliveries as f64 / sp.cpu_s
                } else {
                    0.0
                };
                if created_deliveries > 0 {
                    sp.cpu_us_per_delivery = Some(sp.cpu_s * 1e6 / created_deliveries as f64);
                }
                let reads = c.reads.load(Relaxed);
                if reads > 0 {
                    sp.cpu_us_per_read = Some(sp.cpu_s * 1e6 / reads as f64);
                }
                Some(sp)
            }
            _ => None,
        },
    };
    let human = human_report(&report);
    if a.json {
        eprint!("{human}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{human}");
    }
    if let Some(lost) = report.incidents.lost
        && lost > 0
    {
        bail!("{lost} acknowledged incident(s) LOST");
    }
    Ok(())
}

/// CPU microseconds per fix: `ticks` of CPU (`/proc/<pid>/stat`) over `fixes`.
fn per_fix(ticks: u64, fixes: u64) -> Option<f64> {
    (fixes > 0).then(|| ticks as f64 / stats::USER_HZ * 1e6 / fixes as f64)
}

fn server_proc(
    pid: u32,
    p0: ProcSample,
    p1: ProcSample,
    pw: ProcSample,
    pe: ProcSample,
    window_s: f64,
    c: &Counters,
) -> ServerProc {
    let conns = c.connected.load(Relaxed).max(1) as f64;
    ServerProc {
        pid,
        cpu_percent: (pw.cpu_ticks.saturating_sub(p1.cpu_ticks)) as f64 / stats::USER_HZ / window_s * 100.0,
        cpu_s: 0.0,
        deliveries_per_cpu_s: 0.0,
        cpu_us_per_delivery: None,
        cpu_us_per_fix: per_fix(
            pw.cpu_ticks.saturating_sub(p1.cpu_ticks),
            c.positions_sent.load(Relaxed),
        ),
        cpu_us_per_read: None,
        rss_kib_before: p0.rss_kib,
        rss_kib_connected: p1.rss_kib,
        rss_kib_end: pe.rss_kib,
        rss_bytes_per_connection: (p1.rss_kib as f64 - p0.rss_kib as f64) * 1024.0 / conns,
    }
}

fn human_report(r: &Report) -> String {
    let mut s = String::new();
    let i = &r.incidents;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    s += &format!(
        "opcenter sim: {} ({:?}{}) connected {} (failed {}, dropped {}) in {:.1}s; window {:.1}s\n",
        r.server,
        r.encoding,
        if r.fanout_mode { ", fan-out" } else { "" },
        r.connected,
        r.connect_failures,
        r.disconnects,
        r.connect_s,
        r.window_s
    );
    s += &format!(
        "incidents: sent {} created {} errors {} unanswered {} | assigned {} pending {} LOST {} | \
         assignment frames {} closed {}\n",
        i.sent,
        i.created,
        i.create_errors,
        i.unanswered,
        opt(i.assigned),
        opt(i.pending),
        opt(i.lost),
        i.assignment_frames,
        i.closed_by_tablets
    );
    let l = &r.latency;
    s += &format!("create → ok          {}\n", l.create_ok.line());
    s += &format!("create → assignment  {}\n", l.create_assignment.line());
    s += &format!("create → console     {}\n", l.fanout.line());
    s += &format!("position staleness   {}\n", l.position_staleness.line());
    if let Some(r) = &r.reads {
        s += &format!(
            "read ({:?} ×{})      {}\n  {} round trips ({} errors) at {:.0}/s\n",
            r.kind,
            r.readers,
            l.read.line(),
            r.count,
            r.errors,
            r.per_s
        );
    }
    let t = &r.throughput;
    s += &format!(
        "positions sent {:.0}/s received {:.0}/s | console events {:.0}/s | created deliveries {}/{} at {:.0}/s\n",
        t.positions_sent_per_s,
        t.position_items_per_s,
        t.console_events_per_s,
        t.created_deliveries,
        t.created_deliveries_expected,
        t.deliveries_per_s
    );
    if r.planned.get("resubscribers").is_some_and(|n| *n > 0) {
        s += &format!(
            "resubscribes {:.1}/s (snapshot or since replay, read in full)\n",
            t.resubscribes_per_s
        );
    }
    if !r.errors.is_empty() {
        s += &format!(
            "error replies: {:?} (first of each: {:?})\n",
            r.errors, r.error_samples
        );
    }
    if let Some(p) = &r.server_process {
        s += &format!(
            "server pid {}: CPU {:.0}% of a core; RSS {} → {} → {} KiB; {:.0} B per connection\n",
            p.pid,
            p.cpu_percent,
            p.rss_kib_before,
            p.rss_kib_connected,
            p.rss_kib_end,
            p.rss_bytes_per_connection
        );
        if let Some(us) = p.cpu_us_per_delivery {
            s += &format!("server CPU per created delivery: {us:.3} µs\n");
        }
        if let Some(us) = p.cpu_us_per_fix {
            s += &format!("server CPU per position fix: {us:.2} µs\n");
        }
        if let Some(us) = p.cpu_us_per_read {
            s += &format!("server CPU per read (all of its CPU over the window): {us:.2} µs\n");
        }
    }
    if let Some(t) = r.tool_cpu_s {
        s += &format!("load tool CPU {t:.2} s (window start → settled)\n");
    }
    if let Some(us) = r.tool_cpu_us_per_fix {
        s += &format!("load tool CPU per position fix: {us:.2} µs\n");
    }
    s
}

fn progress(sh: &Shared, phase: &str, t: f64, rates: Option<(f64, f64, f64)>) {
    let c = &sh.c;
    let mut line = format!(
        "[{phase} {t:5.1}s] conns {}/{} failed {} | created {}/{} assigned {} | errors {}",
        c.connected.load(Relaxed),
        sh.args.tablets
            + sh.args.consoles
            + sh.args.supervisors
            + sh.args.producers
            + sh.args.resubscribers
            + sh.args.readers,
        c.connect_failures.load(Relaxed),
        c.creates_ok.load(Relaxed),
        c.creates_sent.load(Relaxed),
        c.assignments.load(Relaxed),
        c.create_errors.load(Relaxed) + c.other_errors.load(Relaxed),
    );
    if let Some((ptx, prx, ev)) = rates {
        line += &format!(" | pos tx {ptx:.0}/s rx {prx:.0}/s | events {ev:.0}/s");
    }
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}

/// Runs one connection's task; its failures are already counted, so only log them.
async fn run_task(f: impl Future<Output = anyhow::Result<()>>) {
    if let Err(e) = f.await {
        tracing::debug!("connection task: {e:#}");
    }
}

/// Sets up a connection under the concurrency limit: connect, hello, then `setup`.
/// Counts it as connected or failed.
async fn open_session(sh: &Shared, addr: &str, token: &str) -> anyhow::Result<Ws> {
    // The semaphore is never closed.
    let _slot = sh.connect_slots.acquire().await.expect("semaphore open");
    let r = tokio::select! {
        r = wire::connect(addr, token, sh.args.encoding) => r,
        _ = sh.cancel.cancelled() => Err(anyhow::anyhow!("cancelled")),
    };
    match r {
        Ok((ws, _ok)) => Ok(ws),
        Err(e) => {
            sh.c.connect_failures.fetch_add(1, Relaxed);
            Err(e)
        }
    }
}

/// Sends `v` and waits for the reply to its `id`; counts a failure as a failed setup.
async fn setup_cmd(sh: &Shared, ws: &mut Ws, v: serde_json::Value) -> anyhow::Result<Frame> {
    let id = v["id"].as_u64().unwrap_or(0);
    let r = async {
        ws.send(sh.args.encoding.encode(&v)).await?;
        wire::await_reply(ws, id, Duration::from_secs(30))
            .await
            .map(|(f, _)| f)
    }
    .await;
    if r.is_err() {
        sh.c.connect_failures.fetch_add(1, Relaxed);
    }
    r
}

/// What a read from the socket means for the task loop.
enum Read {
    Frame(Message),
    Closed,
}

fn classify(r: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Read {
    match r {
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Read::Closed,
        Some(Ok(m)) => Read::Frame(m),
    }
}

async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Books an error reply.
fn book_error(sh: &Shared, f: &Frame) {
    sh.c.other_errors.fetch_add(1, Relaxed);
    sh.error_reply(f);
}

/// Per-connection tallies, flushed into the shared ones in batches so a hot fan-out
/// does not bounce shared cache lines on every frame.
#[derive(Default)]
struct Local {
    events: u64,
    created: u64,
    last_us: u64,
    fan: Vec<u64>,
    items: u64,
    stale: Vec<u64>,
}

impl Local {
    fn flush(&mut self, sh: &Shared) {
        let c = &sh.c;
        if self.events > 0 {
            c.events.fetch_add(std::mem::take(&mut self.events), Relaxed);
        }
        if self.created > 0 {
            c.created_events
                .fetch_add(std::mem::take(&mut self.created), Relaxed);
            c.last_delivery_us.fetch_max(self.last_us, Relaxed);
        }
        if !self.fan.is_empty() {
            sh.fanout.record_all(self.fan.drain(..));
        }
        if self.items > 0 {
            c.position_items
                .fetch_add(std::mem::take(&mut self.items), Relaxed);
        }
        if !self.stale.is_empty() {
            sh.staleness.record_all(self.stale.drain(..));
        }
    }
}

/// A dispatcher console: subscribes to `incidents` and times each `created` event
/// against the send time carried in its description, without decoding the frame.
async fn console(sh: Arc<Shared>, i: usize) -> anyhow::Result<()> {
    let name = format!("load-console-{i}");
    let addr = sh.args.console_server(i).to_owned();
    listen(sh, &addr, Role::Dispatcher, &name, "incidents", |sh, local, m| {
        if let Some(bytes) = wire::payload(m) {
            count_event(sh, local, bytes);
        }
    })
    .await
}

/// Counts one event a console received; true when it was a timed `created` event.
fn count_event(sh: &Shared, local: &mut Local, bytes: &[u8]) -> bool {
    local.events += 1;
    let created = wire::find(bytes, br#""change":"created""#).is_some()
        || wire::find(bytes, b"\xa6change\xa7created").is_some();
    let timed = created
        && wire::number_after(bytes, b"load:").is_some_and(|sent| {
            let now = wire::now_us();
            local.created += 1;
            local.last_us = local.last_us.max(now);
            local.fan.push(now.saturating_sub(sent));
            true
        });
    if local.events >= 512 {
        local.flush(sh);
    }
    timed
}

/// Connects a raw console: handshake, `hello`, `subscribe incidents`, each answered.
async fn raw_setup(
    sh: &Shared,
    server: &str,
    token: &str,
) -> anyhow::Result<(tokio::net::TcpStream, FrameReader)> {
    let setup = [
        json!({"type": "hello", "id": 1, "token": token, "protocol": 1}),
        json!({"type": "subscribe", "id": 2, "topics": ["incidents"]}),
    ];
    let (tcp, reader, _) = raw_connect(sh, server, &setup).await?;
    Ok((tcp, reader))
}

/// A raw connection: handshake, then each of `setup` (commands with an `id`) sent
/// and answered `ok`; the replies, in order.
async fn raw_connect(
    sh: &Shared,
    server: &str,
    setup: &[serde_json::Value],
) -> anyhow::Result<(tokio::net::TcpStream, FrameReader, Vec<Frame>)> {
    let addr = tokio::net::lookup_host(server)
        .await?
        .next()
        .context("no address")?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Large kernel buffers: a console that falls behind by a whole burst still does
    // not push back on the hub.
    sock.set_recv_buffer_size(RAW_SOCKET_BUFFER)?;
    let mut tcp = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let left = rawws::client_handshake(&mut tcp, server).await?;
    let mut reader = FrameReader::new(RAW_READ_BUFFER, &left);
    let enc = sh.args.encoding;
    let mut replies = Vec::with_capacity(setup.len());
    for cmd in setup {
        let id = cmd["id"].as_u64().unwrap_or(0);
        raw_send(&mut tcp, enc, cmd).await?;
        let reply = tokio::time::timeout(Duration::from_secs(30), raw_reply(&mut tcp, &mut reader, id))
            .await
            .with_context(|| format!("no reply to command {id}"))??;
        if reply.ty != "ok" {
            bail!("command {id}: {} {:?}", reply.ty, reply.code);
        }
        replies.push(reply);
    }
    Ok((tcp, reader, replies))
}

/// Kernel receive buffer of a raw console socket, bytes.
const RAW_SOCKET_BUFFER: u32 = 4 << 20;
/// User-space read buffer of a raw console, bytes (one `read` takes up to this much).
const RAW_READ_BUFFER: usize = 256 * 1024;

/// Sends one command as a masked frame.
async fn raw_send(
    tcp: &mut tokio::net::TcpStream,
    enc: Encoding,
    v: &serde_json::Value,
) -> anyhow::Result<()> {
    let (op, bytes) = match enc.encode(v) {
        Message::Text(t) => (rawws::OP_TEXT, t.as_bytes().to_vec()),
        Message::Binary(b) => (rawws::OP_BINARY, b.to_vec()),
        _ => unreachable!("encode makes data frames"),
    };
    let mut out = Vec::with_capacity(bytes.len() + 14);
    rawws::encode(op, &bytes, Some(rand::random()), &mut out);
    tcp.write_all(&out).await?;
    Ok(())
}

/// A raw data frame decoded (`None`: a control frame or not a frame we know).
fn raw_frame(opcode: u8, payload: &[u8]) -> Option<Frame> {
    match opcode {
        rawws::OP_TEXT => serde_json::from_slice(payload).ok(),
        rawws::OP_BINARY => rmp_serde::from_slice(payload).ok(),
        _ => None,
    }
}

/// Reads frames until the reply to `id`.
async fn raw_reply(tcp: &mut tokio::net::TcpStream, r: &mut FrameReader, id: u64) -> anyhow::Result<Frame> {
    loop {
        while let Some((h, p)) = r.next_frame()? {
            if h.opcode == rawws::OP_CLOSE {
                bail!("closed by server");
            }
            if let Some(f) = raw_frame(h.opcode, p).filter(|f| f.id == Some(id)) {
                return Ok(f);
            }
        }
        if r.fill(tcp).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// A fan-out console on a raw socket: everything a read brings is counted before the
/// next read; pings are answered; its `created` count feeds the `--window`.
async fn raw_console(sh: Arc<Shared>, i: usize) -> anyhow::Result<()> {
    let token = wire::token(&sh.secret, Role::Dispatcher, &format!("load-console-{i}"));
    let setup = {
        // The semaphore is never closed.
        let _slot = sh.connect_slots.acquire().await.expect("semaphore open");
        tokio::select! {
            r = raw_setup(&sh, sh.args.console_server(i), &token) => r,
            _ = sh.cancel.cancelled() => Err(anyhow::anyhow!("cancelled")),
        }
    };
    let (mut tcp, mut reader) = match setup {
        Ok(x) => x,
        Err(e) => {
            sh.c.connect_failures.fetch_add(1, Relaxed);
            return Err(e);
        }
    };
    sh.c.connected.fetch_add(1, Relaxed);
    let mut local = Local::default();
    let (mut delivered, mut bytes) = (0u64, 0u64);
    let mut pongs = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let cancelled = sh.cancel.cancelled();
    tokio::pin!(cancelled);
    'run: loop {
        while let Some((h, p)) = reader.next_frame()? {
            match h.opcode {
                rawws::OP_TEXT | rawws::OP_BINARY if count_event(&sh, &mut local, p) => {
                    delivered += 1;
                    bytes += p.len() as u64;
                }
                rawws::OP_PING => rawws::encode(rawws::OP_PONG, p, Some(rand::random()), &mut pongs),
                rawws::OP_CLOSE => {
                    if !sh.cancel.is_cancelled() {
                        sh.c.disconnects.fetch_add(1, Relaxed);
                    }
                    break 'run;
                }
                _ => {}
            }
        }
        if !pongs.is_empty() {
            tcp.write_all(&pongs).await?;
            pongs.clear();
        }
        if sh.delivered[i].swap(delivered, Relaxed) != delivered {
            sh.progress.notify_one();
        }
        tokio::select! {
            n = reader.fill(&mut tcp) => {
                if !matches!(n, Ok(1..)) {
                    if !sh.cancel.is_cancelled() { sh.c.disconnects.fetch_add(1, Relaxed); }
                    break;
                }
            }
            _ = tick.tick() => local.flush(&sh),
            _ = &mut cancelled => break,
        }
    }
    local.flush(&sh);
    sh.created_bytes.fetch_add(bytes, Relaxed);
    let mut close = Vec::new();
    rawws::encode(
        rawws::OP_CLOSE,
        &1000u16.to_be_bytes(),
        Some(rand::random()),
        &mut close,
    );
    let _ = tcp.write_all(&close).await;
    Ok(())
}

/// A `--readers` session: from the window's start to its end, sends one read
/// (`--read-kind`), waits for its reply (the reply to its `id`, or the pong with its
/// payload) and records the round trip, then sends the next. A raw socket, as the
/// fan-out consoles: the tool adds as little as it can to what it measures. Pings
/// from the server are answered on the way; other frames (a resume's replay) are
/// read and dropped.
async fn reader(sh: Arc<Shared>, i: usize, seed: u64) -> anyhow::Result<()> {
    let kind = sh.args.read_kind;
    let enc = sh.args.encoding;
    let token = wire::token(&sh.secret, Role::Dispatcher, &format!("load-reader-{i}"));
    let mut setup = vec![json!({"type": "hello", "id": 1, "token": token, "protocol": 1})];
    if kind == ReadKind::Resume {
        setup.push(json!({"type": "subscribe", "id": 2, "topics": ["incidents"]}));
    }
    let connected = {
        // The semaphore is never closed.
        let _slot = sh.connect_slots.acquire().await.expect("semaphore open");
        tokio::select! {
            r = raw_connect(&sh, &sh.args.server, &setup) => r,
            _ = sh.cancel.cancelled() => Err(anyhow::anyhow!("cancelled")),
        }
    };
    let (mut tcp, mut frames, replies) = match connected {
        Ok(x) => x,
        Err(e) => {
            sh.c.connect_failures.fetch_add(1, Relaxed);
            return Err(e);
        }
    };
    sh.c.connected.fetch_add(1, Relaxed);
    let mut cut = replies
        .last()
        .map(|f| (f.epoch.clone().unwrap_or_default(), f.seq.unwrap_or(0)))
        .unwrap_or_default();
    tokio::select! {
        _ = sh.go.cancelled() => {}
        _ = sh.cancel.cancelled() => return Ok(()),
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut out, mut pongs, mut took) = (Vec::new(), Vec::new(), Vec::new());
    let mut id = 10u64;
    while !sh.stop_load.is_cancelled() {
        id += 1;
        out.clear();
        let request = match kind {
            ReadKind::WsPing => None,
            ReadKind::Ping => Some(json!({"type": "ping", "id": id})),
            ReadKind::Recommend => {
                let (x, y) = sh.city.random_xy(&mut rng);
                let p = sh.city.to_latlon(x, y);
                Some(
                    json!({"type": "incident.recommend", "id": id, "location": {"lat": p.lat, "lon": p.lon}}),
                )
            }
            ReadKind::Resume => Some(json!({"type": "subscribe", "id": id, "topics": ["incidents"],
                "since": {"epoch": cut.0, "seq": cut.1}})),
        };
        match request.map(|r| enc.encode(&r)) {
            None => rawws::encode(rawws::OP_PING, &id.to_be_bytes(), Some(rand::random()), &mut out),
            Some(Message::Text(t)) => {
                rawws::encode(rawws::OP_TEXT, t.as_bytes(), Some(rand::random()), &mut out)
            }
            Some(Message::Binary(b)) => rawws::encode(rawws::OP_BINARY, &b, Some(rand::random()), &mut out),
            Some(_) => unreachable!("encode makes data frames"),
        }
        let sent = std::time::Instant::now();
        tcp.write_all(&out).await?;
        let mut answered = false;
        while !answered {
            while let Some((h, p)) = frames.next_frame()? {
                match h.opcode {
                    rawws::OP_PONG if kind == ReadKind::WsPing && p == id.to_be_bytes() => answered = true,
                    rawws::OP_PING => rawws::encode(rawws::OP_PONG, p, Some(rand::random()), &mut pongs),
                    rawws::OP_CLOSE => {
                        if !sh.cancel.is_cancelled() {
                            sh.c.disconnects.fetch_add(1, Relaxed);
                        }
                        return Ok(());
                    }
                    op => {
                        let Some(f) = raw_frame(op, p).filter(|f| f.id == Some(id)) else {
                            continue;
                        };
                        answered = true;
                        if f.ty == "error" {
                            sh.c.read_errors.fetch_add(1, Relaxed);
                            sh.error_reply(&f);
                        } else if let (Some(epoch), Some(seq)) = (f.epoch, f.seq) {
                            cut = (epoch, seq);
                        }
                    }
                }
            }
            if answered {
                // Timed before anything else: the pongs owed go after.
                took.push(sent.elapsed().as_micros() as u64);
            }
            if !pongs.is_empty() {
                tcp.write_all(&pongs).await?;
                pongs.clear();
            }
            if answered {
                break;
            }
            let n = tokio::select! {
                n = tokio::time::timeout(Duration::from_secs(60), frames.fill(&mut tcp)) => {
                    n.context("no reply in 60 s")??
                }
                _ = sh.cancel.cancelled() => return Ok(()),
            };
            if n == 0 {
                if !sh.cancel.is_cancelled() {
                    sh.c.disconnects.fetch_add(1, Relaxed);
                }
                return Ok(());
            }
        }
        if took.len() >= 1024 {
            sh.c.reads.fetch_add(took.len() as u64, Relaxed);
            sh.read.record_all(took.drain(..));
        }
    }
    sh.c.reads.fetch_add(took.len() as u64, Relaxed);
    sh.read.record_all(took.drain(..));
    Ok(())
}

/// True while a `--window` closed loop holds the producers back: the creates not yet
/// received by the slowest console reach the window.
fn window_full(sh: &Shared) -> bool {
    let Some(w) = sh.args.window else { return false };
    let Some(slowest) = sh.delivered.iter().map(|d| d.load(Relaxed)).min() else {
        return false;
    };
    // A refused create is never delivered: it does not count against the window.
    let live =
        sh.c.creates_sent
            .load(Relaxed)
            .saturating_sub(sh.c.create_errors.load(Relaxed));
    live >= slowest + w
}

/// A supervisor's map: subscribes to `positions` and measures each item's staleness.
async fn supervisor(sh: Arc<Shared>, i: usize) -> anyhow::Result<()> {
    let name = format!("load-supervisor-{i}");
    let addr = sh.args.server.clone();
    listen(sh, &addr, Role::Supervisor, &name, "positions", |sh, local, m| {
        let Some(f) = wire::decode::<Frame>(m) else { return };
        if let Some(items) = f.items {
            let now = wire::now_us();
            local.items += items.len() as u64;
            local.stale.extend(
                items
                    .iter()
                    .filter(|p| p.at_ms > 0)
                    .map(|p| now.saturating_sub(p.at_ms * 1000)),
            );
            if local.stale.len() >= 4096 {
                local.flush(sh);
            }
        } else if f.ty == "error" {
            book_error(sh, &f);
        }
    })
    .await
}

/// A supervisor that re-subscribes in a loop during the window: even ones take
/// the full snapshot each time, odd ones resume with `since` `resubscribe_depth`
/// events before the last cut (from memory or, deeper, from the journal). Every
/// frame is read, as a console that reads normally does.
async fn resubscriber(sh: Arc<Shared>, i: usize) -> anyhow::Result<()> {
    let name = format!("load-resubscriber-{i}");
    let token = wire::token(&sh.secret, Role::Supervisor, &name);
    let mut ws = open_session(&sh, &sh.args.server, &token).await?;
    let topics = ["incidents", "units", "positions"];
    let first = setup_cmd(
        &sh,
        &mut ws,
        json!({"type": "subscribe", "id": 2, "topics": topics}),
    )
    .await?;
    sh.c.connected.fetch_add(1, Relaxed);
    let mut cut = (first.epoch.unwrap_or_default(), first.seq.unwrap_or(0));
    tokio::select! {
        _ = sh.go.cancelled() => {}
        _ = sh.cancel.cancelled() => return Ok(()),
    }
    let mut id = 3u64;
    while !sh.stop_load.is_cancelled() {
        let mut req = json!({"type": "subscribe", "id": id, "topics": topics});
        if i % 2 == 1 {
            req["since"] = json!({"epoch": cut.0, "seq": cut.1.saturating_sub(sh.args.resubscribe_depth)});
        }
        ws.send(sh.args.encoding.encode(&req)).await?;
        // Reads (and drops) the previous reply's replay and live frames on the way.
        let reply = tokio::select! {
            r = wire::await_reply(&mut ws, id, Duration::from_secs(60)) => r?.0,
            _ = sh.cancel.cancelled() => break,
        };
        if reply.ty == "ok" {
            cut = (reply.epoch.unwrap_or(cut.0), reply.seq.unwrap_or(cut.1));
            // A `since` reply comes before its replay: read the replay in full
            // before asking again, as a console catching up does.
            tokio::select! {
                r = until_replayed(&mut ws, cut.1, Duration::from_secs(60)) => r?,
                _ = sh.cancel.cancelled() => break,
            };
            sh.c.resubscribes.fetch_add(1, Relaxed);
        } else {
            book_error(&sh, &reply);
        }
        id += 1;
    }
    close(&mut ws).await;
    Ok(())
}

/// Reads until the replay after a `subscribe` reply at `cut` is over: the server
/// sends no position batch and no live event (seq > `cut`) before the last
/// replayed event, so the first of either marks the end.
async fn until_replayed(ws: &mut Ws, cut: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("replay not over in time")?
            .context("connection closed")??;
        if let Message::Close(c) = &msg {
            bail!("closed by server: {c:?}");
        }
        // Only the type and seq: a replay is tens of thousands of frames, and
        // this tool's tablets share its threads.
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            ty: String,
            seq: Option<u64>,
        }
        let Some(f) = wire::decode::<Head>(&msg) else {
            continue;
        };
        if f.ty == "positions" || (f.ty == "event" && f.seq.is_some_and(|s| s > cut)) {
            return Ok(());
        }
    }
}

/// A read-only session on one topic: every frame goes to `on_frame`, whose
/// counts are flushed to the shared totals in batches (every 200 ms at least).
async fn listen(
    sh: Arc<Shared>,
    addr: &str,
    role: Role,
    name: &str,
    topic: &str,
    mut on_frame: impl FnMut(&Shared, &mut Local, &Message),
) -> anyhow::Result<()> {
    let token = wire::token(&sh.secret, role, name);
    let mut ws = open_session(&sh, addr, &token).await?;
    setup_cmd(
        &sh,
        &mut ws,
        json!({"type": "subscribe", "id": 2, "topics": [topic]}),
    )
    .await?;
    sh.c.connected.fetch_add(1, Relaxed);
    let mut local = Local::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    // Pinned once: a fresh `cancelled()` per loop turn would re-register a waiter on the
    // shared token for every frame.
    let cancelled = sh.cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            r = ws.next() => match classify(r) {
                Read::Closed => {
                    if !sh.cancel.is_cancelled() { sh.c.disconnects.fetch_add(1, Relaxed); }
                    break;
                }
                Read::Frame(m) => on_frame(&sh, &mut local, &m),
            },
            _ = tick.tick() => local.flush(&sh),
            _ = &mut cancelled => break,
        }
    }
    local.flush(&sh);
    close(&mut ws).await;
    Ok(())
}

/// What a tablet does next with its incident.
enum Next {
    Ack(String),
    Close(String),
}

/// A patrol tablet: says it is available, moves about sending fixes at its share of
/// `--position-rate`, acks assignments and closes them after `--hold-ms`.
async fn tablet(sh: Arc<Shared>, i: usize, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let unit = format!("L-{i}");
    let (kind, caps) = geo::fleet_profile(&mut rng);
    let token = wire::unit_token(&sh.secret, &unit, &format!("Load {i}"), kind, &caps);
    let enc = sh.args.encoding;
    let mut ws = open_session(&sh, &sh.args.server, &token).await?;
    let (mut x, mut y) = sh.city.random_xy(&mut rng);
    let mut heading: f64 = rng.random_range(0.0..360.0);
    let fix = |x: f64, y: f64, heading: f64| {
        let p = sh.city.to_latlon(x, y);
        let (h, at_ms) = (wire::heading(heading), (wire::now_us() + 500) / 1000);
        match enc {
            // The hot path of the tool: format directly (f64 Display is valid JSON for
            // finite numbers) instead of building a `Value`.
            Encoding::Json => Message::text(format!(
                r#"{{"type":"unit.position","lat":{},"lon":{},"heading":{h},"speed":10.0,"at_ms":{at_ms}}}"#,
                p.lat, p.lon
            )),
            Encoding::Msgpack => enc.encode(&json!({"type": "unit.position", "lat": p.lat, "lon": p.lon,
                "heading": h, "speed": 10.0, "at_ms": at_ms})),
        }
    };
    setup_cmd(
        &sh,
        &mut ws,
        json!({"type": "subscribe", "id": 2, "topics": ["assignments"]}),
    )
    .await?;
    ws.send(fix(x, y, heading)).await?;
    setup_cmd(
        &sh,
        &mut ws,
        json!({"type": "unit.status", "id": 3, "status": "available"}),
    )
    .await?;
    sh.c.connected.fetch_add(1, Relaxed);

    let a = &sh.args;
    let period = if a.position_rate > 0.0 && a.tablets > 0 {
        Some(Duration::from_secs_f64(a.tablets as f64 / a.position_rate))
    } else {
        None
    };
    // Until the window opens the tablet only answers; after it closes it stops moving.
    let mut ticker: Option<tokio::time::Interval> = None;
    let mut next: Option<(Instant, Next)> = None;
    let mut current: Option<String> = None;
    let mut cmd_id = 10u64;
    let cancelled = sh.cancel.cancelled();
    tokio::pin!(cancelled);
    let go = sh.go.cancelled();
    tokio::pin!(go);
    let mut started = false;
    loop {
        let due = next.as_ref().map(|n| n.0);
        tokio::select! {
            r = ws.next() => match classify(r) {
                Read::Closed => {
                    if !sh.cancel.is_cancelled() { sh.c.disconnects.fetch_add(1, Relaxed); }
                    break;
                }
                Read::Frame(m) => {
                    let Some(f) = wire::decode::<Frame>(&m) else { continue };
                    match f.ty.as_str() {
                        "event" if f.topic.as_deref() == Some("assignments") => {
                            let Some(inc) = f.incident else { continue };
                            let mine = inc.units.contains(&unit) && inc.status != "closed";
                            if f.change.as_deref() == Some("assigned") && mine && current.as_deref() != Some(&inc.id) {
                                sh.c.assignments.fetch_add(1, Relaxed);
                                if let Some(sent) = inc.description.as_deref()
                                    .and_then(|d| wire::number_after(d.as_bytes(), b"load:")) {
                                    sh.create_assignment.record(wire::now_us().saturating_sub(sent));
                                }
                                next = Some((Instant::now() + Duration::from_millis(a.ack_delay_ms), Next::Ack(inc.id.clone())));
                                current = Some(inc.id);
                            } else if !mine && current.as_deref() == Some(&inc.id) {
                                // Taken off it (timeout, reassignment, closed by a dispatcher).
                                current = None;
                                next = None;
                            }
                        }
                        "ok" if f.incident.as_ref().is_some_and(|i| i.status == "closed") => {
                            sh.c.closes_ok.fetch_add(1, Relaxed);
                        }
                        "error" => book_error(&sh, &f),
                        _ => {}
                    }
                }
            },
            _ = async { tokio::time::sleep_until(due.unwrap_or_else(Instant::now)).await }, if due.is_some() => {
                // `due` is Some, so `next` is too.
                let (_, what) = next.take().expect("pending action");
                cmd_id += 1;
                match what {
                    Next::Ack(inc) => {
                        ws.send(enc.encode(&json!({"type": "assignment.ack", "id": cmd_id, "incident_id": inc}))).await?;
                        next = Some((Instant::now() + Duration::from_millis(a.hold_ms), Next::Close(inc)));
                    }
                    Next::Close(inc) => {
                        ws.send(enc.encode(&json!({"type": "incident.close", "id": cmd_id, "incident_id": inc,
                            "disposition": "resolved"}))).await?;
                        current = None;
                    }
                }
            }
            _ = &mut go, if !started && period.is_some() => {
                started = true;
                // Spread the tablets' ticks over one period.
                let p = period.expect("checked in the guard");
                let phase = p.mul_f64(rng.random::<f64>());
                let mut t = tokio::time::interval_at(Instant::now() + phase, p);
                t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                ticker = Some(t);
            }
            _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => {
                if sh.stop_load.is_cancelled() {
                    ticker = None;
                    continue;
                }
                heading = (heading + rng.random_range(-30.0..30.0)).rem_euclid(360.0);
                let (nx, ny) = (x + 10.0 * heading.to_radians().sin(), y + 10.0 * heading.to_radians().cos());
                if (nx * nx + ny * ny).sqrt() < sh.city.radius_m {
                    (x, y) = (nx, ny);
                } else {
                    heading = (heading + 180.0).rem_euclid(360.0);
                }
                ws.send(fix(x, y, heading)).await?;
                sh.c.positions_sent.fetch_add(1, Relaxed);
            }
            _ = &mut cancelled => break,
        }
    }
    close(&mut ws).await;
    Ok(())
}

/// A dispatcher that creates incidents, open-loop at its share of `--incident-rate`
/// (or a `--burst`), pipelining commands and matching replies by id.
async fn producer(sh: Arc<Shared>, p: usize, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = &sh.args;
    let token = wire::token(&sh.secret, Role::Dispatcher, &format!("load-producer-{p}"));
    let enc = a.encoding;
    let mut ws = open_session(&sh, &sh.args.server, &token).await?;
    sh.c.connected.fetch_add(1, Relaxed);
    let share = |total: f64| total / a.producers.max(1) as f64;
    let mut burst_left = a.burst.map(|b| {
        let base = b / a.producers.max(1) as u64;
        base + u64::from((p as u64) < b % a.producers.max(1) as u64)
    });
    let period = (a.burst.is_none() && a.incident_rate > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / share(a.incident_rate)));
    let mut pending: HashMap<u64, u64> = HashMap::new();
    let mut ids = Vec::new();
    let mut next_id = 10u64;
    let mut next_due: Option<Instant> = None;
    let mut started = false;
    let cancelled = sh.cancel.cancelled();
    tokio::pin!(cancelled);
    let go = sh.go.cancelled();
    tokio::pin!(go);
    loop {
        // A burst is sent whole, even past the window; a rate stops with it.
        let sending = started
            && (burst_left.is_some_and(|b| b > 0) || (period.is_some() && !sh.stop_load.is_cancelled()));
        if sh.stop_load.is_cancelled() && pending.is_empty() && burst_left.is_none_or(|b| b == 0) {
            // Nothing more to send or hear; wait for the end.
            (&mut cancelled).await;
            break;
        }
        let held = sending && window_full(&sh);
        let due = if !sending || held {
            None
        } else if burst_left.is_some() {
            Some(Instant::now())
        } else {
            next_due
        };
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = ws.next() => match classify(r) {
                Read::Closed => {
                    if !sh.cancel.is_cancelled() { sh.c.disconnects.fetch_add(1, Relaxed); }
                    break;
                }
                Read::Frame(m) => {
                    let Some(f) = wire::decode::<Frame>(&m) else { continue };
                    let Some(sent) = f.id.and_then(|id| pending.remove(&id)) else {
                        if f.ty == "error" { book_error(&sh, &f); }
                        continue;
                    };
                    if f.ty == "ok" {
                        sh.create_ok.record(wire::now_us().saturating_sub(sent));
                        sh.c.creates_ok.fetch_add(1, Relaxed);
                        if let Some(inc) = f.incident { ids.push(inc.id); }
                    } else {
                        sh.c.create_errors.fetch_add(1, Relaxed);
                        sh.error_reply(&f);
                    }
                }
            },
            // A console moved: look at the window again.
            _ = sh.progress.notified(), if held => {}
            _ = &mut go, if !started => {
                started = true;
                next_due = Some(Instant::now() + period.unwrap_or_default().mul_f64(p as f64 / a.producers.max(1) as f64));
            }
            _ = async { tokio::time::sleep_until(due.unwrap_or_else(Instant::now)).await }, if due.is_some() => {
                // Send every command that is due (at most 64 before reading again), one flush.
                let now = Instant::now();
                let mut n = 0;
                while n < 64 {
                    let is_due = match (&mut burst_left, period, next_due) {
                        (Some(left), _, _) => *left > 0 && !window_full(&sh),
                        (None, Some(_), Some(d)) => d <= now,
                        _ => false,
                    };
                    if !is_due { break; }
                    let send_us = wire::now_us();
                    let id = next_id;
                    next_id += 1;
                    let call = geo::random_call(&mut rng);
                    let (x, y) = sh.city.random_incident_xy(&mut rng);
                    let loc = sh.city.to_latlon(x, y);
                    let cmd = json!({"type": "incident.create", "id": id, "category": call.category,
                        "priority": call.priority, "location": {"lat": loc.lat, "lon": loc.lon},
                        "description": format!("load:{send_us}"), "source": "call",
                        "key": format!("load-{}-{p}-{id}", sh.run)});
                    ws.feed(enc.encode(&cmd)).await?;
                    pending.insert(id, send_us);
                    let _ = sh.c.first_send_us.compare_exchange(0, send_us, Relaxed, Relaxed);
                    sh.c.creates_sent.fetch_add(1, Relaxed);
                    n += 1;
                    match (&mut burst_left, period) {
                        (Some(left), _) => *left -= 1,
                        (None, Some(per)) => next_due = next_due.map(|d| d + per),
                        _ => {}
                    }
                }
                ws.flush().await?;
            }
        }
    }
    sh.created_ids
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(ids);
    close(&mut ws).await;
    Ok(())
}

/// The outcome of the LOST check.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Holding or having held a unit.
    pub assigned: u64,
    /// Still waiting for a unit.
    pub pending: u64,
    /// Not found, or unreadable.
    pub lost: u64,
}

/// Classifies one `GET /v1/incidents/{id}` answer.
pub fn classify_incident(status: u16, body: &[u8]) -> Verdict {
    let mut v = Verdict::default();
    let parsed = (status == 200)
        .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
        .flatten();
    let inc = parsed.as_ref().map(|p| &p["incident"]);
    match inc.and_then(|i| i["status"].as_str()) {
        Some("pending") => v.pending = 1,
        Some("dispatched" | "en_route" | "on_scene") => v.assigned = 1,
        // Closed by its tablet: it was assigned. Closed with no unit ever is not ours.
        Some("closed")
            if inc
                .and_then(|i| i["units"].as_array())
                .is_some_and(|u| !u.is_empty()) =>
        {
            v.assigned = 1
        }
        _ => v.lost = 1,
    }
    v
}

/// Asks the server, over HTTP, where every acknowledged incident is.
async fn verify(sh: &Arc<Shared>, ids: &[String]) -> Verdict {
    let token = wire::token(&sh.secret, Role::Dispatcher, "load-verifier");
    let chunks: Vec<Vec<String>> = ids
        .chunks(ids.len().div_ceil(4).max(1))
        .map(|c| c.to_vec())
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for chunk in chunks {
        let (server, token, sh) = (sh.args.server.clone(), token.clone(), sh.clone());
        set.spawn(async move {
            let mut http = HttpClient::new(&server);
            let mut v = Verdict::default();
            for id in chunk {
                let path = format!("/v1/incidents/{}", percent_encode(&id));
                let one = match http.request("GET", &path, Some(&token), None).await {
                    Ok(r) => {
                        if r.status != 200 {
                            sh.error(&format!("http_{}", r.status));
                        }
                        classify_incident(r.status, &r.body)
                    }
                    Err(e) => {
                        sh.error("http_failed");
                        tracing::warn!("GET {path}: {e:#}");
                        Verdict {
                            lost: 1,
                            ..Default::default()
                        }
                    }
                };
                v.assigned += one.assigned;
                v.pending += one.pending;
                v.lost += one.lost;
            }
            v
        });
    }
    let mut total = Verdict::default();
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            total.assigned += v.assigned;
            total.pending += v.pending;
            total.lost += v.lost;
        }
    }
    total
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a whole `--json` report back (for tests and scripts).
pub fn parse_report(stdout: &str) -> anyhow::Result<serde_json::Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON report line")?;
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_incident_states() {
        let body =
            |s: &str, units: &str| format!(r#"{{"incident":{{"id":"I1","status":"{s}","units":{units}}}}}"#);
        assert_eq!(
            classify_incident(200, body("pending", "[]").as_bytes()).pending,
            1
        );
        assert_eq!(
            classify_incident(200, body("en_route", r#"["L-1"]"#).as_bytes()).assigned,
            1
        );
        assert_eq!(
            classify_incident(200, body("closed", r#"["L-1"]"#).as_bytes()).assigned,
            1
        );
        assert_eq!(classify_incident(200, body("closed", "[]").as_bytes()).lost, 1);
        assert_eq!(
            classify_incident(404, br#"{"error":{"code":"not_found"}}"#).lost,
            1
        );
        assert_eq!(classify_incident(200, b"garbage").lost, 1);
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(percent_encode("I-01H~x.y_z"), "I-01H~x.y_z");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn report_serialises_and_reads_back() {
        let s = Summary::of(&hdrhistogram::Histogram::new(3).unwrap());
        let r = Report {
            server: "127.0.0.1:1".into(),
            encoding: Encoding::Msgpack,
            fanout_mode: false,
            planned: BTreeMap::new(),
            connected: 3,
            connect_failures: 0,
            disconnects: 0,
            connect_s: 0.1,
            window_s: 1.0,
            incidents: IncidentCounts {
                created: 2,
                assigned: Some(1),
                pending: Some(1),
                lost: Some(0),
                ..Default::default()
            },
            latency: Latencies {
                create_ok: s,
                create_assignment: s,
                fanout: s,
                position_staleness: s,
                read: s,
            },
            throughput: Throughput {
                positions_sent_per_s: 0.0,
                position_items_per_s: 0.0,
                console_events_per_s: 0.0,
                created_deliveries: 0,
                created_deliveries_expected: 0,
                deliveries_per_s: 0.0,
                resubscribes_per_s: 0.0,
                created_bytes_mean: None,
            },
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            server_process: None,
            tool_cpu_s: None,
            also_cpu_s: BTreeMap::new(),
            tool_cpu_us_per_fix: None,
            reads: Some(Reads {
                kind: ReadKind::WsPing,
                readers: 2,
                count: 10,
                errors: 0,
                per_s: 10.0,
            }),
        };
        let out = format!("noise\n{}\n", serde_json::to_string(&r).unwrap());
        let v = parse_report(&out).unwrap();
        assert_eq!(v["incidents"]["lost"], 0);
        assert_eq!(v["encoding"], "msgpack");
        assert_eq!(v["latency"]["create_ok"]["count"], 0);
        assert_eq!(v["reads"]["kind"], "ws-ping");
        assert_eq!(v["latency"]["read"]["count"], 0);
        assert!(human_report(&r).contains("LOST 0"));
    }
}
