//! The engine thread: the single writer of all dispatch state.
//!
//! Sessions and HTTP handlers send [`Request`]s over one bounded channel. The
//! thread takes everything queued (a batch), applies each command through
//! `opcenter_core::Engine::apply`, appends all resulting events to the journal
//! in one group commit (one write, one fsync), and only then fans the events
//! out, hands the batch to the read model and sends replies: acknowledged
//! means durable, and no client ever sees an event that a crash could take
//! back. Subscriptions are registered after the batch is published, so a
//! snapshot and its cut always agree; the snapshot itself is built by the read
//! model ([`crate::read_model`]), which also does the position batches, the
//! incident lookups and the periodic state snapshot: this thread only writes.
//!
//! Two queues feed it: `unit.emergency` and priority 1 creates take the urgent
//! one, drained first, so a panic button never waits behind bulk work (a
//! backlog of position fixes, a storm of re-subscribes).
//!
//! It runs on its own OS thread because the fsync blocks; nothing else touches
//! the engine or the subscriber lists, so the hot path has no locks (the
//! journal's lock is uncontended except while the read model reads a chunk).
//!
//! If the thread ends while the server is serving (a panic, a bug), a guard
//! marks the engine stopped: `/healthz` turns 503 and the server shuts down
//! with an error, so a service manager restarts it.
//!
//! Owns: ordering, durability before visibility, replies. Must never: let a
//! reply or event out before its events are in the journal, or build a read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use opcenter_core::{
    Actor, Applied, Command, CoreError, Engine, EngineConfig, Event, Incident, RecommendQuery, Reply,
};
use opcenter_proto::ErrorCode;
use opcenter_proto::auth::Role;
use opcenter_proto::client::Subscribe;
use opcenter_proto::server::{Empty, HelloOk, IncidentBody, RecommendOk, UnitBody};
use opcenter_store::Journal;
use tokio_util::sync::CancellationToken;

use crate::engine_view::EngineView;
use crate::fanout::Fanout;
use crate::fixes::{FixInbox, Numbered};
use crate::outbox::{CloseReason, Outbox};
use crate::read_model::{self, Committed, ReadRequest, SharedJournal};
use crate::record::{self, DurabilityError, Origin};
use crate::{metric, wire};

/// Test-only fault injection: when this environment variable names a command
/// (`incident.note`, …), the engine thread panics on applying one, so tests can
/// show what a dead engine looks like from outside. Never set it in production.
pub(crate) const PANIC_ENV: &str = "OPCENTER_TEST_PANIC_ENGINE_ON";

/// Where a command's outcome goes.
pub(crate) enum ReplyTo {
    /// A WebSocket session: `ok` (if it gave an `id`) or `error` into its queue.
    Session { outbox: Arc<Outbox>, id: Option<u64> },
    /// An HTTP handler waiting for the created incident (and whether it is new).
    Http(oneshot::Sender<Result<(Incident, bool), (ErrorCode, String)>>),
    /// A hub node's command, forwarded over NATS ([`crate::bridge`]): the engine's
    /// reply and the seq the journal reached when it was acknowledged, with where
    /// the call came from and its deadline ([`RemoteOrigin`]).
    Remote(oneshot::Sender<RemoteOutcome>, RemoteOrigin),
}

/// Where a hub's forwarded command came from, for its records' actor.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteOrigin {
    /// The hub's call id.
    pub(crate) call: Option<String>,
    /// The hub's session (`<hub node id>/<session>`) that sent the command.
    pub(crate) session: Option<String>,
    /// The hub's deadline as this engine sees it: a command reached after it
    /// (less [`crate::bridge::SHED_MARGIN`]) is shed, not applied.
    pub(crate) expires: Option<Instant>,
}

/// A command's outcome for a hub node: the reply, and the last seq of the commit
/// that made it durable (the hub answers once its stream follower got that far).
pub(crate) struct RemoteOutcome {
    pub(crate) result: Result<Reply, (ErrorCode, String)>,
    pub(crate) seq: u64,
}

/// A unit of work for the engine thread.
pub(crate) enum Request {
    /// A state-changing command.
    Command {
        actor: Actor,
        command: Command,
        reply: ReplyTo,
        /// When the session received it (latency metrics).
        received: Instant,
    },
    /// A session's `hello` succeeded: register a unit (if it is one), reply `ok`.
    Hello {
        outbox: Arc<Outbox>,
        id: Option<u64>,
        actor: Actor,
        role: Role,
        /// For units: the token's profile.
        profile: Option<opcenter_core::UnitProfile>,
    },
    /// `subscribe`, already checked against the role.
    Subscribe {
        outbox: Arc<Outbox>,
        id: Option<u64>,
        /// The tablet's unit, for `assignments`.
        unit: Option<String>,
        subscribe: Subscribe,
    },
    /// A national desk's session subscribed elsewhere: it leaves this region's
    /// subscriber lists (events and positions).
    Unsubscribe { outbox: Arc<Outbox> },
    /// `incident.recommend` (read-only).
    Recommend {
        outbox: Arc<Outbox>,
        id: Option<u64>,
        query: RecommendQuery,
    },
    /// A unit's session ended (sent only for sessions whose hello was for a
    /// unit): when it was the unit's last, the engine marks the unit offline.
    Bye {
        /// The session (the outbox's id).
        session: String,
        /// Its unit.
        unit: String,
    },
    /// `incident.recommend` forwarded by a hub node ([`crate::bridge`]).
    RemoteRecommend {
        query: RecommendQuery,
        reply: oneshot::Sender<Result<opcenter_core::Recommendation, (ErrorCode, String)>>,
    },
    /// Timers: ack timeouts, offline grace, position batches.
    Tick,
}

/// How a session whose unit could not be registered ends (after its `error`).
pub(crate) const REGISTRATION_FAILED: CloseReason = CloseReason {
    code: 4001,
    reason: "unit registration failed",
    flush_first: true,
};

/// A command applied in the current batch, waiting for the commit to be answered.
struct Outcome {
    reply: ReplyTo,
    result: Result<Applied, CoreError>,
    name: &'static str,
    received: Instant,
    /// Its events assigned a unit (for the assignment latency histogram).
    assigned: bool,
}

/// State the engine thread shares with the rest of the server (read-only there).
/// The last seq is not here: only the engine thread needs it, and the journal has it.
pub(crate) struct Shared {
    /// The journal's epoch.
    pub(crate) epoch: String,
    /// False once the journal failed: the server refuses to acknowledge anything.
    pub(crate) healthy: AtomicBool,
    /// Set (with the reason) when another writer appended to the region's stream:
    /// this server must stop serving and exit (`Server::serve` watches it).
    pub(crate) fenced: tokio::sync::watch::Sender<Option<String>>,
    /// Cancelled when the engine thread or the read model thread ends.
    pub(crate) stopped: CancellationToken,
    /// Set (with the reason) when a hub node finds the region's stream replaced
    /// or lost: every client is closed with 4008 and the node stops.
    pub(crate) replaced: tokio::sync::watch::Sender<Option<String>>,
    /// The region's name on NATS (`None` in one process): what events and
    /// position batches carry to a multi-region subscription.
    pub(crate) region: Option<Arc<str>>,
}

impl Request {
    /// Takes the urgent lane: a panic button, a priority 1 create.
    pub(crate) fn is_urgent(&self) -> bool {
        match self {
            Request::Command { command, .. } => match command {
                Command::Emergency { .. } => true,
                Command::CreateIncident(new) => new.priority == 1,
                _ => false,
            },
            _ => false,
        }
    }
}

/// The engine thread's two queues and its inbox of fixes ([`crate::fixes`]), as
/// senders see them.
#[derive(Clone)]
pub(crate) struct EngineQueue {
    normal: mpsc::Sender<Numbered>,
    urgent: mpsc::Sender<Numbered>,
    fixes: Arc<FixInbox>,
}

/// The receiving ends of an [`EngineQueue`].
pub(crate) struct EngineRx {
    pub(crate) normal: mpsc::Receiver<Numbered>,
    pub(crate) urgent: mpsc::Receiver<Numbered>,
    fixes: Arc<FixInbox>,
    /// Fixes are waiting: take them by then even if no request comes.
    fixes_due: Option<tokio::time::Instant>,
    /// Each lane's senders are all gone and it is empty.
    urgent_closed: bool,
    normal_closed: bool,
}

/// The refusal of a hub's call shed at its deadline. It starts like the hub's own
/// timeout (`no engine answered within`), which the console shows as "switching
/// over"; unlike that one it is sure the change was not saved.
pub(crate) const SHED_MESSAGE: &str = "no engine answered within the hub's deadline: the engine was busy and did not apply it (not saved); retry it";

/// The name of a position fix command.
const POSITION: &str = "unit.position";

/// Requests taken from the normal lane into one batch (one group commit), at most.
const MAX_BATCH: usize = 1024;

/// What woke the engine thread.
enum Woke {
    Urgent(Option<Numbered>),
    Normal(Option<Numbered>),
    /// A fix landed in an empty inbox.
    FixLanded,
    /// The fixes waiting are due.
    FixesDue,
}

impl EngineRx {
    /// Fills `batch` (empty on entry) with the next batch: waits for a first
    /// request (the urgent lane wins a tie) or for waiting fixes to be due
    /// ([`crate::fixes::COALESCE`] after the first), then takes every queued
    /// urgent request, tops up from the normal lane to [`MAX_BATCH`] and takes
    /// the fixes sent before them. The urgent requests lead the batch, so they
    /// are applied (and take seqs) first. False once both lanes are closed and
    /// nothing is left.
    fn next_batch(&mut self, waiter: &tokio::runtime::Runtime, batch: &mut Vec<Request>) -> bool {
        loop {
            if self.urgent_closed && self.normal_closed {
                self.fixes.close();
                self.fill(None, batch);
                return !batch.is_empty();
            }
            let EngineRx {
                normal,
                urgent,
                fixes,
                fixes_due,
                urgent_closed,
                normal_closed,
            } = self;
            let due = *fixes_due;
            let woke = waiter.block_on(async {
                tokio::select! {
                    biased;
                    r = urgent.recv(), if !*urgent_closed => Woke::Urgent(r),
                    r = normal.recv(), if !*normal_closed => Woke::Normal(r),
                    _ = fixes.landed(), if due.is_none() => Woke::FixLanded,
                    _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => Woke::FixesDue,
                }
            });
            match woke {
                Woke::Urgent(Some(r)) | Woke::Normal(Some(r)) => {
                    self.fill(Some(r), batch);
                    return true;
                }
                Woke::Urgent(None) => self.urgent_closed = true,
                Woke::Normal(None) => self.normal_closed = true,
                Woke::FixLanded => {
                    self.fixes_due = Some(tokio::time::Instant::now() + crate::fixes::COALESCE);
                }
                Woke::FixesDue => {
                    self.fill(None, batch);
                    if !batch.is_empty() {
                        return true;
                    }
                }
            }
        }
    }

    /// [`EngineRx::next_batch`] without waiting: false when nothing is queued now
    /// (or both lanes are closed and nothing is left).
    fn try_next_batch(&mut self, batch: &mut Vec<Request>) -> bool {
        let first = match self.urgent.try_recv() {
            Ok(r) => Some(r),
            Err(_) => self.normal.try_recv().ok(),
        };
        if first.is_none() && self.fixes.is_empty() {
            return false;
        }
        self.fill(first, batch);
        !batch.is_empty()
    }

    /// `batch` = `first`, every queued urgent request, then normal ones up to
    /// [`MAX_BATCH`] with the fixes sent before them, urgent ones first and the
    /// rest in the order they were sent.
    fn fill(&mut self, first: Option<Numbered>, batch: &mut Vec<Request>) {
        let mut urgent = Vec::new();
        let mut normal = Vec::new();
        if let Some(first) = first {
            match first.1.is_urgent() {
                true => urgent.push(first),
                false => normal.push(first),
            }
        }
        while let Ok(r) = self.urgent.try_recv() {
            urgent.push(r);
        }
        let room = MAX_BATCH.saturating_sub(urgent.len());
        let mut emptied = room > 0;
        while normal.len() < room {
            match self.normal.try_recv() {
                Ok(r) => normal.push(r),
                Err(_) => break,
            }
            emptied = normal.len() < room;
        }
        // With requests left in the lane, only the fixes sent before the last one
        // taken: a later request of the same session may still be in the lane.
        let limit = match emptied {
            true => u64::MAX,
            false => normal.iter().map(|(n, _)| *n).max().unwrap_or(0),
        };
        let drained = self.fixes.take_before(limit, &mut normal);
        self.fixes_due = (!drained).then(tokio::time::Instant::now);
        // Usually in order already (fixes alone, or a lane without races).
        if !normal.is_sorted_by_key(|(n, _)| *n) {
            normal.sort_by_key(|(n, _)| *n);
        }
        batch.extend(urgent.into_iter().chain(normal).map(|(_, r)| r));
    }
}

/// A batch applied to the engine and submitted to the journal; its events,
/// replies and read-model copy wait until the journal says it is durable
/// ([`EngineTask::finish`]).
struct InFlight {
    now: i64,
    outcomes: Vec<Outcome>,
    /// Served after the batch is finished (hellos, subscribes, recommends, ticks).
    later: Vec<Request>,
    /// Seqs of the submitted events (`first..=last`, empty when there are none),
    /// or why nothing of the batch can be saved.
    submitted: Result<(u64, u64), DurabilityError>,
    events: BatchEvents,
    positions: Vec<opcenter_core::PositionItem>,
    /// The engine's state right after this batch (every `snapshot_every` events).
    state: Option<Box<opcenter_core::EngineSnapshot>>,
    retired: Vec<String>,
    next_incident_no: u64,
}

/// Two queues of `capacity` each, and an inbox of as many fixes when
/// `fix_inbox` (the engine thread's: a hub's feed thread takes only the lanes).
pub(crate) fn engine_queue(capacity: usize, fix_inbox: bool) -> (EngineQueue, EngineRx) {
    let (normal, normal_rx) = mpsc::channel(capacity);
    let (urgent, urgent_rx) = mpsc::channel(capacity);
    let fixes = Arc::new(FixInbox::new(capacity, fix_inbox));
    (
        EngineQueue {
            normal,
            urgent,
            fixes: fixes.clone(),
        },
        EngineRx {
            normal: normal_rx,
            urgent: urgent_rx,
            fixes,
            fixes_due: None,
            urgent_closed: false,
            normal_closed: false,
        },
    )
}

impl EngineQueue {
    fn lane(&self, req: &Request) -> &mpsc::Sender<Numbered> {
        if req.is_urgent() {
            &self.urgent
        } else {
            &self.normal
        }
    }

    /// A fix into the inbox, if it takes it (else it comes back).
    fn to_inbox(&self, req: Request) -> Option<Request> {
        if !crate::fixes::is_fix(&req) || self.normal.is_closed() {
            return Some(req);
        }
        self.fixes.push(req)
    }

    /// Queues `req` in its lane (a fix in the inbox), waiting for room (the backpressure).
    pub(crate) async fn send(&self, req: Request) -> Result<(), mpsc::error::SendError<Request>> {
        let Some(req) = self.to_inbox(req) else {
            return Ok(());
        };
        let n = self.fixes.number();
        self.lane(&req)
            .send((n, req))
            .await
            .map_err(|e| mpsc::error::SendError(e.0.1))
    }

    /// Queues `req` if its lane (or the inbox, for a fix) has room; false if it
    /// had none (or is closed).
    pub(crate) fn try_send(&self, req: Request) -> bool {
        let Some(req) = self.to_inbox(req) else {
            return true;
        };
        let n = self.fixes.number();
        self.lane(&req).try_send((n, req)).is_ok()
    }

    /// True once the engine thread is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.normal.is_closed()
    }
}

/// Cancels [`Shared::stopped`] when dropped: at the end of a thread's run, or
/// while a panic unwinds it. Creating one also arms [`mark_stopped_on_panic`]
/// for the current thread.
pub(crate) struct StopGuard(pub(crate) Arc<Shared>, pub(crate) &'static str);

impl StopGuard {
    pub(crate) fn new(shared: Arc<Shared>, thread: &'static str) -> Self {
        mark_stopped_on_panic(shared.stopped.clone());
        StopGuard(shared, thread)
    }
}

thread_local! {
    static ON_PANIC: std::cell::RefCell<Option<CancellationToken>> = const { std::cell::RefCell::new(None) };
}

/// Makes a panic on this thread cancel `token` before anything else the panic
/// hook does: the default hook may first capture a backtrace (with
/// `RUST_BACKTRACE` set, a second or more), and `/healthz` must not say 200
/// meanwhile. The process-wide hook is installed once and calls the previous one.
fn mark_stopped_on_panic(token: CancellationToken) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = ON_PANIC.try_with(|t| {
                if let Ok(t) = t.try_borrow()
                    && let Some(t) = t.as_ref()
                {
                    t.cancel();
                }
            });
            previous(info);
        }));
    });
    ON_PANIC.with(|t| *t.borrow_mut() = Some(token));
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                thread = self.1,
                "thread panicked: the server is no longer serving"
            );
        }
        self.0.stopped.cancel();
    }
}

/// Events' journal records, or why they could not be encoded.
type Encoded = Result<Vec<Vec<u8>>, DurabilityError>;

fn encode_all(events: &[Event], origin: &Origin) -> Encoded {
    events.iter().map(|e| record::encode_event(e, origin)).collect()
}

/// One batch's events beside their journal records, each event encoded once:
/// a command's size check ([`EngineTask::refuse_oversized`]) and the group
/// commit use the same bytes.
#[derive(Default)]
struct BatchEvents {
    events: Vec<Event>,
    /// `records[i]` is `events[i]` encoded, while `failed` is `None`.
    records: Vec<Vec<u8>>,
    /// `read_at[i]`: when the `incident.create` that caused `events[i]` was read.
    read_at: Vec<Option<Instant>>,
    /// An event that could not be encoded fails the whole commit, typed.
    failed: Option<DurabilityError>,
}

impl BatchEvents {
    fn push(&mut self, events: Vec<Event>, origin: &Origin) {
        let records = encode_all(&events, origin);
        self.push_encoded(events, records, None);
    }

    fn push_encoded(&mut self, events: Vec<Event>, records: Encoded, read_at: Option<Instant>) {
        self.read_at.extend(std::iter::repeat_n(read_at, events.len()));
        match records {
            Ok(r) => self.records.extend(r),
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
        self.events.extend(events);
    }
}

/// Runs the engine thread until every sender of `rx` is gone.
pub(crate) struct EngineTask {
    /// The engine, shared with the sessions' reads between batches.
    engine: Arc<EngineView>,
    journal: SharedJournal,
    /// The journal's last durable seq: only this thread appends, so the copy is exact.
    last_seq: u64,
    /// The last seq submitted (durable or still in flight); `last_seq` when
    /// nothing is in flight.
    submitted_seq: u64,
    /// Batches in flight at once on a pipelined journal ([`Journal::pipelined`]):
    /// applied and submitted, their replies held until the journal says they are
    /// durable (`cluster.pipeline_depth`). 1 on a journal that is durable on
    /// return (the file journal).
    depth: usize,
    fanout: Fanout,
    reads: std::sync::mpsc::Sender<ReadRequest>,
    shared: Arc<Shared>,
    last_prune: Instant,
    /// Open sessions per unit that registered: the engine hears of a unit's first
    /// session (its hello) and its last one ending (`UnitOffline`), nothing between.
    unit_sessions: HashMap<String, HashSet<String>>,
    /// See [`record::max_record_bytes`].
    max_record: usize,
    /// Every this many events the engine's state is copied to the read model,
    /// which serializes and stores it (`storage.snapshot_every_events`).
    snapshot_every: u64,
    /// Seq of the last state copy handed over.
    last_state_seq: u64,
    /// See [`PANIC_ENV`].
    panic_on: Option<String>,
    /// Role `engine`: every batch's accepted position fixes also go to the hub
    /// nodes (published on `pos.<region>.out` by [`crate::bridge`]).
    positions_out: Option<mpsc::UnboundedSender<Vec<opcenter_core::PositionItem>>>,
    /// The refused-action log: the engine's own `forbidden` answers go there.
    audit: Option<crate::audit_log::AuditLog>,
}

/// What recovery yields: the engine, the seq of the snapshot it started from,
/// and the newest events (oldest first) to seed the in-memory history.
pub(crate) type Recovered = (Engine, u64, Vec<(u64, Arc<Event>)>);

/// Rebuilds the engine from the journal's latest snapshot and the events after it.
pub(crate) fn recover(
    config: EngineConfig,
    journal: &dyn Journal,
    memory_history: usize,
) -> Result<Recovered, DurabilityError> {
    recover_counted(config, journal, memory_history).map(|(r, _)| r)
}

/// [`recover`], and how many records it replayed after the snapshot.
pub(crate) fn recover_counted(
    config: EngineConfig,
    journal: &dyn Journal,
    memory_history: usize,
) -> Result<(Recovered, u64), DurabilityError> {
    let started = Instant::now();
    let mut replay = Replay::load(config, journal, memory_history, None)?;
    let replayed = replay.catch_up(journal)?;
    tracing::info!(
        snapshot_seq = replay.snapshot_seq,
        replayed,
        last_seq = journal.last_seq(),
        ms = started.elapsed().as_millis() as u64,
        "state recovered"
    );
    Ok((replay.into_recovered(), replayed))
}

/// A region's state rebuilt from a journal (its latest snapshot, then the events
/// after it), kept current by applying further records in order: a recovery, a
/// warm standby following the stream ([`crate::standby`]), the tail a standby
/// replays at takeover. Every record goes through [`Replay::apply`], the one
/// replay path; it never appends.
pub(crate) struct Replay {
    pub(crate) engine: Engine,
    /// The seq of the snapshot the state started from.
    pub(crate) snapshot_seq: u64,
    /// The seq of the last record applied.
    pub(crate) seq: u64,
    /// The newest events (oldest first), at most `memory_history`.
    history: std::collections::VecDeque<(u64, Arc<Event>)>,
    memory_history: usize,
    /// The call ids of forwarded commands among the records applied (a standby's).
    pub(crate) calls: Option<crate::bridge::Recall>,
    /// The read model's copy of the state, kept at [`Replay::seq`] (a standby's:
    /// see [`Replay::keep_read_copy`]).
    read_copy: Option<crate::read_model::ReadCopy>,
}

impl Replay {
    /// The journal's latest snapshot (or an empty engine); `calls`: also collect
    /// the call ids of the records applied from then on.
    pub(crate) fn load(
        config: EngineConfig,
        journal: &dyn Journal,
        memory_history: usize,
        calls: Option<crate::bridge::Recall>,
    ) -> Result<Replay, DurabilityError> {
        let (engine, snapshot_seq) = match journal.latest_snapshot()? {
            Some((seq, bytes)) => (
                Engine::from_snapshot(config, record::decode_snapshot(seq, &bytes)?),
                seq,
            ),
            None => (Engine::new(config), 0),
        };
        Ok(Replay {
            engine,
            snapshot_seq,
            seq: snapshot_seq,
            history: std::collections::VecDeque::new(),
            memory_history,
            calls,
            read_copy: None,
        })
    }

    /// From now on also keeps the read model's copy of the state (built here
    /// from the engine's state, then folded with every record applied), so a
    /// takeover hands it over instead of building it while the new engine
    /// starts serving.
    pub(crate) fn keep_read_copy(&mut self, key_ttl_ms: i64) {
        let start = crate::read_model::Start {
            state: self.engine.state(),
            seq: self.seq,
            history: self.history.iter().cloned().collect(),
        };
        let mut copy = crate::read_model::ReadCopy::new(start, key_ttl_ms, self.memory_history);
        copy.set_next_incident_no(self.engine.next_incident_no());
        self.read_copy = Some(copy);
    }

    /// The read copy kept since [`Replay::keep_read_copy`], at [`Replay::seq`].
    pub(crate) fn take_read_copy(&mut self) -> Option<crate::read_model::ReadCopy> {
        self.read_copy.take()
    }

    /// Applies one record (the next one: `seq` must follow [`Replay::seq`]).
    pub(crate) fn apply(&mut self, rec: &opcenter_store::Record) -> Result<(), DurabilityError> {
        let event = match &mut self.calls {
            Some(calls) => {
                let (event, origin) = record::decode_with_origin(rec)?;
                if let Some(call) = origin.and_then(|o| o.call) {
                    calls.observe(rec.seq, &event, call);
                }
                event
            }
            None => record::decode_event(rec)?,
        };
        self.engine.restore(&event);
        let event = Arc::new(event);
        if let Some(copy) = &mut self.read_copy {
            copy.apply(rec.seq, event.clone());
            copy.trim();
            copy.set_next_incident_no(self.engine.next_incident_no());
        }
        if self.memory_history > 0 {
            self.history.push_back((rec.seq, event));
            if self.history.len() > self.memory_history {
                self.history.pop_front();
            }
        }
        self.seq = rec.seq;
        Ok(())
    }

    /// Applies every record of `journal` after [`Replay::seq`]; returns how many.
    pub(crate) fn catch_up(&mut self, journal: &dyn Journal) -> Result<u64, DurabilityError> {
        let mut replayed = 0u64;
        loop {
            let records = record::read_from(journal, self.seq, 4096)?;
            if records.is_empty() {
                return Ok(replayed);
            }
            for rec in &records {
                self.apply(rec)?;
                replayed += 1;
            }
        }
    }

    /// The engine, the snapshot's seq and the newest events.
    pub(crate) fn into_recovered(self) -> Recovered {
        (self.engine, self.snapshot_seq, self.history.into())
    }
}

impl EngineTask {
    /// An engine thread over a recovered engine and its journal.
    pub(crate) fn new(
        engine: Engine,
        journal: SharedJournal,
        reads: std::sync::mpsc::Sender<ReadRequest>,
        shared: Arc<Shared>,
        settings: &crate::settings::Settings,
        snapshot_seq: u64,
    ) -> Self {
        let (last_seq, pipelined) = {
            let j = read_model::lock(&journal);
            (j.last_seq(), j.pipelined())
        };
        EngineTask {
            engine: EngineView::new(engine),
            journal,
            last_seq,
            submitted_seq: last_seq,
            depth: match (&settings.cluster, pipelined) {
                (Some(c), true) => c.pipeline_depth,
                _ => 1,
            },
            fanout: Fanout::new(shared.region.clone()),
            reads,
            shared,
            last_prune: Instant::now(),
            unit_sessions: HashMap::new(),
            max_record: record::max_record_bytes(settings.hub.session_queue_bytes),
            snapshot_every: settings.snapshot_every_events,
            last_state_seq: snapshot_seq,
            panic_on: std::env::var(PANIC_ENV).ok().filter(|v| !v.is_empty()),
            positions_out: None,
            audit: None,
        }
    }

    /// The engine's state as the sessions read it between batches.
    pub(crate) fn view(&self) -> Arc<EngineView> {
        self.engine.clone()
    }

    /// Also hands each batch's accepted position fixes to `out` (role `engine`).
    /// Logs the engine's `forbidden` answers into `audit` (a unit acting on an
    /// incident that is not its own: the session's role check allowed the type).
    pub(crate) fn with_audit(mut self, audit: crate::audit_log::AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    pub(crate) fn with_positions_out(
        mut self,
        out: Option<mpsc::UnboundedSender<Vec<opcenter_core::PositionItem>>>,
    ) -> Self {
        self.positions_out = out;
        self
    }

    /// The thread's loop: batch (urgent lane first), apply, commit, publish, reply.
    pub(crate) fn run(mut self, mut rx: EngineRx) {
        let _guard = StopGuard::new(self.shared.clone(), "engine");
        // A one-thread runtime only to wait on two queues at once; the work
        // itself is synchronous.
        let waiter = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "engine thread: no runtime to wait on its queues");
                return;
            }
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut in_flight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
        // Closed from a batch's first apply until no batch is in flight: the
        // sessions read the engine only while everything it holds is durable.
        let view = self.engine.clone();
        let mut gate = None;
        loop {
            if in_flight.is_empty() {
                gate = None;
            }
            // Wait for work only when nothing is in flight; else take what is
            // queued now, and finish the oldest batch when nothing is or the
            // pipeline is full.
            let got = match in_flight.is_empty() {
                true => rx.next_batch(&waiter, &mut batch),
                false => rx.try_next_batch(&mut batch),
            };
            if got {
                gate.get_or_insert_with(|| view.batch());
                let f = self.apply_batch(&mut batch);
                // A batch that cannot be saved ends the pipeline: everything before
                // it is finished first, then it is refused and the engine rolled back.
                let failed = f.submitted.is_err();
                in_flight.push_back(f);
                if in_flight.len() < self.depth && !failed {
                    continue;
                }
                if failed {
                    while let Some(f) = in_flight.pop_front() {
                        self.finish(f);
                    }
                    continue;
                }
            } else if in_flight.is_empty() {
                break;
            }
            if let Some(f) = in_flight.pop_front() {
                self.finish(f);
            }
        }
        if let Err(e) = self.write_snapshot() {
            tracing::warn!(error = %e, "final snapshot failed");
        }
        tracing::info!("engine thread stopped");
    }

    /// Applies a batch and submits its events to the journal (the group commit);
    /// nothing of it leaves the engine thread until [`EngineTask::finish`].
    fn apply_batch(&mut self, batch: &mut Vec<Request>) -> InFlight {
        let now = now_ms();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut later: Vec<Request> = Vec::new();
        let mut events = BatchEvents::default();
        let mut positions = Vec::new();
        let healthy = self.shared.healthy.load(Ordering::Relaxed);
        for req in batch.drain(..) {
            match req {
                Request::Command {
                    actor,
                    command,
                    reply,
                    received,
                } => {
                    let name = command.name();
                    if self.panic_on.as_deref() == Some(name) {
                        panic!("{PANIC_ENV}={name}: test-only fault injection");
                    }
                    if !healthy {
                        fail(
                            reply,
                            ErrorCode::Internal,
                            "the journal failed: nothing can be saved",
                        );
                        continue;
                    }
                    if let ReplyTo::Remote(
                        _,
                        RemoteOrigin {
                            expires: Some(expires),
                            ..
                        },
                    ) = &reply
                        && Instant::now() + crate::bridge::SHED_MARGIN >= *expires
                    {
                        metrics::counter!(metric::CALLS_SHED).increment(1);
                        fail(reply, ErrorCode::Internal, SHED_MESSAGE);
                        continue;
                    }
                    let mut assigned = false;
                    if name == "incident.create" {
                        // How long it waited for the engine thread (queued behind
                        // other requests, or the thread busy or not scheduled).
                        metrics::histogram!(metric::CREATE_QUEUED_SECONDS)
                            .record(received.elapsed().as_secs_f64());
                    }
                    let result = self.engine.engine().apply(&actor, command, now);
                    // A command that changed nothing on record (most fixes) has no
                    // records to encode, so no origin to build.
                    let result = match result {
                        Ok(applied) if applied.events.is_empty() => Ok((applied, Ok(Vec::new()))),
                        result => {
                            let origin = origin_of(&actor, &reply, now);
                            if let (Err(e), Some(audit)) = (&result, &self.audit)
                                && ErrorCode::from(e) == ErrorCode::Forbidden
                            {
                                audit.record(crate::audit_log::Entry {
                                    kind: crate::audit_log::Kind::Forbidden,
                                    reason: name.to_string(),
                                    subject: origin.sub.clone(),
                                    role: Some(origin.role.clone()),
                                    session: origin.session.clone(),
                                    component: "engine",
                                    detail: e.to_string(),
                                });
                            }
                            result.and_then(|applied| self.refuse_oversized(applied, &events.events, &origin))
                        }
                    };
                    let result = result.map(|(mut applied, records)| {
                        // The events move to the batch; the reply keeps what it needs.
                        let own = std::mem::take(&mut applied.events);
                        assigned = own.iter().any(|e| e.change == opcenter_core::Change::Assigned);
                        let create = (name == "incident.create").then_some(received);
                        events.push_encoded(own, records, create);
                        if let Some(p) = applied.position.take() {
                            positions.push(p);
                        }
                        applied
                    });
                    outcomes.push(Outcome {
                        reply,
                        result,
                        name,
                        received,
                        assigned,
                    });
                }
                Request::Tick => {
                    if healthy {
                        let ticked = self.engine.engine().apply(&Actor::system(), Command::Tick, now);
                        match ticked {
                            Ok(applied) => {
                                events.push(applied.events, &Origin::new(&Actor::system(), None, now))
                            }
                            Err(e) => tracing::error!(error = %e, "tick refused"),
                        }
                    }
                    later.push(Request::Tick);
                }
                Request::Hello {
                    outbox,
                    id,
                    actor,
                    role,
                    profile,
                } => {
                    // A tablet's first hello creates its unit: that is an event, so
                    // the `ok` (which carries the unit) waits for the commit.
                    // A tablet whose unit cannot be registered is told why and
                    // closed: it must not stay signed in as a unit that is not there.
                    if let Some(p) = profile {
                        let unit = p.id.clone();
                        if !healthy {
                            outbox.push_error(id, ErrorCode::Internal, "the journal failed");
                            outbox.close(REGISTRATION_FAILED);
                            continue;
                        }
                        let registered = self.engine.engine().apply(&actor, Command::RegisterUnit(p), now);
                        match registered {
                            Ok(applied) => {
                                events.push(applied.events, &Origin::new(&actor, Some(&outbox.session), now))
                            }
                            Err(e) => {
                                outbox.push_error(id, (&e).into(), &e.to_string());
                                outbox.close(REGISTRATION_FAILED);
                                continue;
                            }
                        }
                        self.unit_sessions
                            .entry(unit)
                            .or_default()
                            .insert(outbox.session.clone());
                    }
                    later.push(Request::Hello {
                        outbox,
                        id,
                        actor,
                        role,
                        profile: None,
                    });
                }
                Request::Bye { session, unit } => {
                    let last = match self.unit_sessions.get_mut(&unit) {
                        Some(open) => open.remove(&session) && open.is_empty(),
                        None => false,
                    };
                    if !last {
                        continue;
                    }
                    self.unit_sessions.remove(&unit);
                    if healthy {
                        let offline = Command::UnitOffline { unit_id: unit };
                        let applied = self.engine.engine().apply(&Actor::system(), offline, now);
                        match applied {
                            // The session whose end it was.
                            Ok(applied) => events.push(
                                applied.events,
                                &Origin::new(&Actor::system(), Some(&session), now),
                            ),
                            Err(e) => tracing::error!(error = %e, "unit offline refused"),
                        }
                    }
                }
                other => later.push(other),
            }
        }

        // Group commit: everything this batch changed, in one append.
        let submitted = self.submit(&mut events);
        // The engine's own state (retention, idempotency keys) right after this
        // batch is what a restart needs; taking it (a reference per object, not
        // a copy) is the only snapshot work done here, and it reaches the read
        // model only once the batch is durable.
        let state = (submitted.is_ok()
            && self.submitted_seq.saturating_sub(self.last_state_seq) >= self.snapshot_every)
            .then(|| {
                self.last_state_seq = self.submitted_seq;
                Box::new(self.engine.read().state())
            });
        // One access each: a guard never lives across another.
        let retired = self.engine.engine().take_retired();
        let next_incident_no = self.engine.read().next_incident_no();
        InFlight {
            now,
            outcomes,
            later,
            submitted,
            events,
            positions,
            state,
            retired,
            next_incident_no,
        }
    }

    /// Once the journal says a batch is durable: its events to the subscribers
    /// and the read model, then its replies, then the requests served after it.
    /// If it cannot be made durable: every command of it is refused.
    fn finish(&mut self, f: InFlight) {
        let InFlight {
            now,
            outcomes,
            later,
            submitted,
            mut events,
            positions,
            state,
            retired,
            next_incident_no,
        } = f;
        let durable = match submitted {
            Ok((first, last)) => self.durable(first, last, events.events.len()),
            Err(e) => Err(self.failed(e)),
        };
        match durable {
            Ok(first_seq) => {
                let read_at = std::mem::take(&mut events.read_at);
                let events: Vec<Arc<Event>> = events.events.into_iter().map(Arc::new).collect();
                let frames: Vec<_> = events
                    .iter()
                    .zip(read_at)
                    .enumerate()
                    .map(|(i, (event, read_at))| self.fanout.publish(first_seq + i as u64, event, read_at))
                    .collect();
                // Tablets' assignments now; everyone else's events after the
                // replies are queued, so a batch written to many consoles by
                // this thread does not hold its own `ok`s back (they queue
                // behind the events in each session, so the order is kept).
                self.fanout.wake_first();
                if let Some(out) = self.positions_out.as_ref().filter(|_| !positions.is_empty()) {
                    let _ = out.send(positions.clone());
                }
                if !events.is_empty() || !positions.is_empty() || state.is_some() || !retired.is_empty() {
                    // The read model may be gone only while shutting down.
                    let _ = self.reads.send(ReadRequest::Committed(Committed {
                        first_seq,
                        events,
                        frames,
                        positions,
                        next_incident_no,
                        state,
                        retired,
                    }));
                }
                // Accepted fixes are counted once per batch: they are most of the commands.
                let mut fixes_ok = 0u64;
                for Outcome {
                    reply,
                    result,
                    name,
                    received,
                    assigned,
                } in outcomes
                {
                    if name == POSITION && result.is_ok() {
                        fixes_ok += 1;
                        deliver(reply, result, self.last_seq);
                        continue;
                    }
                    let outcome = if result.is_ok() { "ok" } else { "error" };
                    metrics::counter!(metric::COMMANDS, "type" => name, "outcome" => outcome).increment(1);
                    if name == "incident.create" {
                        let took = received.elapsed().as_secs_f64();
                        metrics::histogram!(metric::CREATE_SECONDS).record(took);
                        // Receipt of the create → its assignments queued to the tablets
                        // (they were published above, before any reply).
                        if assigned {
                            metrics::histogram!(metric::ASSIGNMENT_SECONDS).record(took);
                        }
                    }
                    deliver(reply, result, self.last_seq);
                }
                if fixes_ok > 0 {
                    metrics::counter!(metric::COMMANDS, "type" => POSITION, "outcome" => "ok")
                        .increment(fixes_ok);
                }
                self.fanout.wake();
            }
            Err(e) => {
                tracing::error!(error = %e, "journal append failed: refusing to acknowledge from now on");
                self.shared.healthy.store(false, Ordering::SeqCst);
                for Outcome { reply, name, .. } in outcomes {
                    metrics::counter!(metric::COMMANDS, "type" => name, "outcome" => "internal").increment(1);
                    fail(reply, ErrorCode::Internal, "could not make the change durable");
                }
                // Stop only now: the refusals above are in the sessions' outboxes,
                // which the shutdown flushes before closing with 1001.
                if let DurabilityError::Store(fenced @ opcenter_store::StoreError::Fenced { .. }) = &e {
                    metrics::counter!(metric::FENCED_APPENDS).increment(1);
                    self.shared.fenced.send_replace(Some(fenced.to_string()));
                }
            }
        }

        for req in later {
            self.serve_after_commit(req, now);
        }
    }

    fn serve_after_commit(&mut self, req: Request, now: i64) {
        match req {
            Request::Hello {
                outbox,
                id,
                actor,
                role,
                ..
            } => hello_ok(
                &self.engine.read(),
                &self.shared.epoch,
                self.last_seq,
                &outbox,
                id,
                &actor,
                role,
            ),
            Request::Subscribe {
                outbox,
                id,
                unit,
                subscribe,
            } => {
                register_subscription(
                    &mut self.fanout,
                    &self.reads,
                    self.last_seq,
                    outbox,
                    id,
                    unit,
                    subscribe,
                );
            }
            Request::Unsubscribe { outbox } => unregister_subscription(&mut self.fanout, &self.reads, outbox),
            Request::Recommend { outbox, id, query } => {
                let recommended = self.engine.read().recommend(&query, now);
                answer_recommend(&outbox, id, recommended)
            }
            Request::RemoteRecommend { query, reply } => {
                let _ = reply.send(
                    self.engine
                        .read()
                        .recommend(&query, now)
                        .map_err(|e| ((&e).into(), e.to_string())),
                );
            }
            Request::Tick => {
                // Closed sessions only cost a skipped push until pruned: once a second is enough.
                if self.last_prune.elapsed() >= std::time::Duration::from_secs(1) {
                    self.last_prune = Instant::now();
                    self.fanout.prune_closed();
                }
            }
            // Commands were applied before the commit and never reach this list.
            Request::Command { reply, .. } => fail(reply, ErrorCode::Internal, "command out of order"),
            Request::Bye { .. } => {}
        }
    }

    /// A command whose record would be too large for the journal or a console
    /// queue is answered `too_large` and undone, so it can neither fail the
    /// group commit (and with it the batch and the server's health) nor close
    /// every console that receives it. Undoing rebuilds the engine from the
    /// journal plus the batch's earlier, accepted events: slow, but only ever on
    /// this refusal, which the engine's own bounds (`dispatch.max_notes`, string
    /// lengths) make rare.
    /// On success the command's journal records come back with it, encoded once
    /// for both this check and the commit.
    fn refuse_oversized(
        &mut self,
        applied: Applied,
        accepted: &[Event],
        origin: &Origin,
    ) -> Result<(Applied, Encoded), CoreError> {
        let records = encode_all(&applied.events, origin);
        let largest = match &records {
            Ok(r) => r.iter().map(Vec::len).max().unwrap_or(0),
            // Not a size problem: the commit fails with the typed error.
            Err(_) => 0,
        };
        if largest <= self.max_record {
            return Ok((applied, records));
        }
        // The journal must hold the batches in flight before it is read back
        // (a failure here fails them at their finish, the journal poisoned).
        if self.submitted_seq > self.last_seq {
            let _ = read_model::lock(&self.journal).wait_durable(self.submitted_seq);
        }
        let recovered = recover(
            self.engine.read().config().clone(),
            &**read_model::lock(&self.journal),
            0,
        );
        match recovered {
            Ok((mut engine, _, _)) => {
                for e in accepted {
                    engine.restore(e);
                }
                *self.engine.engine() = engine;
            }
            // The journal cannot be read back: stop acknowledging, as after a failed append.
            Err(e) => {
                tracing::error!(error = %e, "could not undo an oversized command");
                self.shared.healthy.store(false, Ordering::SeqCst);
            }
        }
        Err(CoreError::TooLarge(format!(
            "the change would be a {largest}-byte record, over the {} bytes allowed",
            self.max_record
        )))
    }

    /// Submits the batch's events to the journal; returns their seqs
    /// (`first..=last`, empty when there are none). On `Err` nothing of the batch
    /// is saved: the engine is rolled back at [`EngineTask::finish`], after the
    /// batches before it.
    fn submit(&mut self, batch: &mut BatchEvents) -> Result<(u64, u64), DurabilityError> {
        let next = self.submitted_seq + 1;
        if let Some(e) = batch.failed.take() {
            return Err(e);
        }
        if batch.events.is_empty() {
            return Ok((next, next - 1));
        }
        let refs: Vec<&[u8]> = batch.records.iter().map(Vec::as_slice).collect();
        let range = read_model::lock(&self.journal).submit_batch(&refs)?;
        self.submitted_seq = *range.end();
        Ok((*range.start(), *range.end()))
    }

    /// Waits until the batch `first..=last` (`count` events) is durable; returns
    /// `first`. On `Err` nothing of it is saved: the engine is rolled back to the
    /// journal (unless fenced: then it stops).
    fn durable(&mut self, first: u64, last: u64, count: usize) -> Result<u64, DurabilityError> {
        if count == 0 {
            return Ok(first);
        }
        // An earlier batch failed: this one was applied on top of it.
        if !self.shared.healthy.load(Ordering::SeqCst) {
            return Err(self.failed(DurabilityError::Unhealthy));
        }
        let started = Instant::now();
        let waited = read_model::lock(&self.journal).wait_durable(last);
        match waited {
            Ok(()) => {
                self.last_seq = last;
                metrics::histogram!(metric::JOURNAL_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::histogram!(metric::JOURNAL_BATCH_EVENTS).record(count as f64);
                Ok(first)
            }
            Err(e) => Err(self.failed(e.into())),
        }
    }

    /// A batch could not be saved: everything submitted after the last durable
    /// seq is lost with it. Another engine writes this region (fenced): nothing
    /// of ours may be acknowledged or snapshotted again, the caller refuses the
    /// batch's commands first, then stops the server. Otherwise the engine is
    /// rolled back to what the journal holds.
    fn failed(&mut self, e: DurabilityError) -> DurabilityError {
        self.submitted_seq = self.last_seq;
        // The first failure rolls back; the batches in flight behind it find the
        // journal poisoned (or the server unhealthy) and need no second one.
        let rolled_back_already = matches!(
            &e,
            DurabilityError::Unhealthy
                | DurabilityError::Store(
                    opcenter_store::StoreError::Fenced { .. } | opcenter_store::StoreError::Poisoned
                )
        );
        if !rolled_back_already {
            self.roll_back();
        }
        e
    }

    /// The engine already applied this batch, but none of it is durable:
    /// rebuild it from what the journal holds, so reads (GET, subscribe
    /// snapshots) and a final snapshot never show unacknowledged changes.
    fn roll_back(&mut self) {
        let recovered = recover(
            self.engine.read().config().clone(),
            &**read_model::lock(&self.journal),
            0,
        );
        match recovered {
            Ok((engine, _, _)) => *self.engine.engine() = engine,
            Err(re) => tracing::error!(error = %re, "could not roll the engine back to the journal"),
        }
    }

    /// The final snapshot, at shutdown (the periodic ones are the read model's).
    fn write_snapshot(&mut self) -> Result<(), DurabilityError> {
        if self.last_seq == 0 {
            return Ok(());
        }
        read_model::store_snapshot(
            &self.journal,
            &self.shared,
            self.last_seq,
            &self.engine.read().snapshot(),
        )
    }
}

/// `hello`'s `ok` at `seq`: for a tablet also its unit and open incident.
pub(crate) fn hello_ok(
    engine: &Engine,
    epoch: &str,
    seq: u64,
    outbox: &Outbox,
    id: Option<u64>,
    actor: &Actor,
    role: Role,
) {
    let unit = actor.unit_id().and_then(|u| engine.unit(u));
    let incident = unit.map(|u| u.incident_id.as_deref().and_then(|i| engine.incident(i)));
    let body = HelloOk {
        session: &outbox.session,
        role: role.as_str(),
        epoch,
        seq,
        unit,
        incident,
    };
    if let Some(m) = wire::ok(outbox.encoding, id, body) {
        outbox.push(m);
    }
}

/// Registers a subscription between two commits, with its reply's place
/// reserved; the read model (at exactly this cut, since every batch up to it
/// went there first) fills the place.
pub(crate) fn register_subscription(
    fanout: &mut Fanout,
    reads: &std::sync::mpsc::Sender<ReadRequest>,
    cut: u64,
    outbox: Arc<Outbox>,
    id: Option<u64>,
    unit: Option<String>,
    subscribe: Subscribe,
) {
    if let Some(slot) = fanout.register(&outbox, unit.as_deref(), &subscribe) {
        let _ = reads.send(ReadRequest::Subscribe {
            cut,
            outbox,
            slot,
            id,
            unit,
            subscribe,
        });
    }
}

/// Takes a session off every subscriber list of this region (a desk's session
/// that subscribed to other regions).
pub(crate) fn unregister_subscription(
    fanout: &mut Fanout,
    reads: &std::sync::mpsc::Sender<ReadRequest>,
    outbox: Arc<Outbox>,
) {
    fanout.remove(&outbox);
    let _ = reads.send(ReadRequest::Unsubscribe { outbox });
}

/// Who a command's records name: its actor, through the session (or the hub's
/// session and call) it came from.
fn origin_of(actor: &Actor, reply: &ReplyTo, now: i64) -> Origin {
    let session = match reply {
        ReplyTo::Session { outbox, .. } => Some(outbox.session.as_str()),
        // A hub node's command: the hub's session, as the bridge carried it.
        ReplyTo::Remote(_, o) => o.session.as_deref(),
        ReplyTo::Http(_) => None,
    };
    let mut origin = Origin::new(actor, session, now);
    if let ReplyTo::Remote(_, o) = reply {
        origin.call = o.call.clone();
    }
    origin
}

/// Answers a command; `seq` is the journal's last seq after its commit.
pub(crate) fn deliver(reply: ReplyTo, result: Result<Applied, CoreError>, seq: u64) {
    match reply {
        ReplyTo::Remote(tx, ..) => {
            let _ = tx.send(RemoteOutcome {
                result: result.map(|a| a.reply).map_err(|e| ((&e).into(), e.to_string())),
                seq,
            });
        }
        ReplyTo::Session { outbox, id } => {
            outbox.command_answered();
            match result {
                Ok(applied) => {
                    let Some(id) = id else { return };
                    let msg = match &applied.reply {
                        Reply::None | Reply::Registered { .. } => {
                            wire::ok(outbox.encoding, Some(id), Empty {})
                        }
                        Reply::Incident(incident) | Reply::Created { incident, .. } => {
                            wire::ok(outbox.encoding, Some(id), IncidentBody { incident })
                        }
                        Reply::Unit(unit) => wire::ok(outbox.encoding, Some(id), UnitBody { unit }),
                    };
                    if let Some(m) = msg {
                        outbox.push(m);
                    }
                }
                Err(e) => outbox.push_error(id, (&e).into(), &e.to_string()),
            }
        }
        ReplyTo::Http(tx) => {
            let _ = tx.send(match result {
                Ok(Applied {
                    reply: Reply::Created { incident, new },
                    ..
                }) => Ok((incident, new)),
                Ok(Applied {
                    reply: Reply::Incident(incident),
                    ..
                }) => Ok((incident, true)),
                Ok(_) => Err((ErrorCode::Internal, "unexpected engine reply".into())),
                Err(e) => Err(((&e).into(), e.to_string())),
            });
        }
    }
}

pub(crate) fn fail(reply: ReplyTo, code: ErrorCode, message: &str) {
    match reply {
        ReplyTo::Remote(tx, ..) => {
            let _ = tx.send(RemoteOutcome {
                result: Err((code, message.into())),
                seq: 0,
            });
        }
        ReplyTo::Session { outbox, id } => {
            outbox.command_answered();
            outbox.push_error(id, code, message)
        }
        ReplyTo::Http(tx) => {
            let _ = tx.send(Err((code, message.into())));
        }
    }
}

/// Queues a recommendation (or why there is none) for the session that asked,
/// wherever it was made: on the engine thread after a batch, or on the session's
/// task from the [`EngineView`] between batches.
pub(crate) fn answer_recommend(
    outbox: &Outbox,
    id: Option<u64>,
    recommended: Result<opcenter_core::Recommendation, CoreError>,
) {
    match recommended {
        Ok(r) => {
            metrics::counter!(metric::COMMANDS, "type" => "incident.recommend", "outcome" => "ok")
                .increment(1);
            if let Some(m) = wire::ok_if_asked(
                outbox.encoding,
                id,
                RecommendOk {
                    candidates: &r.candidates,
                    shortfall: r.shortfall,
                },
            ) {
                outbox.push(m);
            }
        }
        Err(e) => {
            metrics::counter!(metric::COMMANDS, "type" => "incident.recommend", "outcome" => "error")
                .increment(1);
            outbox.push_error(id, (&e).into(), &e.to_string());
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch: the only clock the engine sees.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixes::test_fix as fix;
    use opcenter_core::{ActorKind, Location, NewIncident};

    fn create(priority: u8) -> Request {
        let at = Location { lat: 51.2, lon: 51.4 };
        Request::Command {
            actor: Actor {
                sub: "d".into(),
                kind: ActorKind::Dispatcher,
            },
            command: Command::CreateIncident(NewIncident::call("fire", priority, at)),
            reply: ReplyTo::Http(oneshot::channel().0),
            received: Instant::now(),
        }
    }

    fn emergency() -> Request {
        Request::Command {
            actor: Actor {
                sub: "A-1".into(),
                kind: ActorKind::Unit("A-1".into()),
            },
            command: Command::Emergency {
                unit_id: "A-1".into(),
                active: true,
                location: None,
            },
            reply: ReplyTo::Http(oneshot::channel().0),
            received: Instant::now(),
        }
    }

    /// The runtime [`EngineRx::next_batch`] waits on, as the engine thread's.
    fn waiter() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// What a batch holds, in order: `E` emergency, `1`..`5` a create of that
    /// priority, `F` a fix, `T` a tick.
    fn kinds(batch: &[Request]) -> String {
        batch
            .iter()
            .map(|r| match r {
                Request::Command {
                    command: Command::Emergency { .. },
                    ..
                } => 'E',
                Request::Command {
                    command: Command::CreateIncident(new),
                    ..
                } => char::from(b'0' + new.priority),
                Request::Command {
                    command: Command::Position { .. },
                    ..
                } => 'F',
                Request::Tick => 'T',
                _ => '?',
            })
            .collect()
    }

    /// A normal lane full of bulk work (ticks, a priority 3 create) neither
    /// refuses nor delays a panic button or a priority 1 create: they still find
    /// room, and the next batch applies them before everything queued earlier.
    #[test]
    fn urgent_requests_pass_a_full_normal_lane() {
        let (queue, mut rx) = engine_queue(3, true);
        assert!(queue.try_send(Request::Tick));
        assert!(queue.try_send(create(3)));
        assert!(queue.try_send(Request::Tick));
        assert!(!queue.try_send(Request::Tick), "the normal lane is full");
        assert!(!queue.try_send(create(2)), "priority 2 is normal work");
        assert!(queue.try_send(emergency()), "a panic button finds room");
        assert!(queue.try_send(create(1)), "a priority 1 create finds room");

        let waiter = waiter();
        let mut batch = Vec::new();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(kinds(&batch), "E1T3T");
    }

    /// Urgent work queued behind more than a batch of bulk work is in the very
    /// next batch, first; the bulk work follows in order.
    #[test]
    fn urgent_requests_lead_even_behind_more_than_a_batch() {
        let (queue, mut rx) = engine_queue(MAX_BATCH * 2, true);
        for _ in 0..MAX_BATCH * 2 {
            assert!(queue.try_send(Request::Tick));
        }
        assert!(queue.try_send(create(1)));
        let waiter = waiter();
        let mut batch = Vec::new();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(&kinds(&batch)[..2], "1T");
        batch.clear();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(kinds(&batch), "T".repeat(MAX_BATCH));
        drop(queue);
        batch.clear();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert!(!rx.next_batch(&waiter, &mut batch), "both lanes closed and empty");
    }

    /// Fixes skip the lanes (into the inbox) but a batch applies them in the order
    /// they were sent among the lane's requests; fixes alone make a batch too.
    #[test]
    fn fixes_are_batched_in_the_order_they_were_sent() {
        let (queue, mut rx) = engine_queue(8, true);
        assert!(queue.try_send(fix(51.1)));
        assert!(queue.try_send(Request::Tick));
        assert!(queue.try_send(fix(51.2)));
        assert!(queue.try_send(create(3)));
        assert!(queue.try_send(fix(51.3)));
        assert!(queue.try_send(emergency()));
        assert_eq!(rx.normal.len(), 2, "fixes are not in the lane");
        let waiter = waiter();
        let mut batch = Vec::new();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(kinds(&batch), "EFTF3F");
        // Fixes alone: the engine is woken for them (after the coalescing delay).
        assert!(queue.try_send(fix(51.4)));
        assert!(queue.try_send(fix(51.5)));
        batch.clear();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(kinds(&batch), "FF");
        // Fixes sent before the lanes closed are still applied.
        assert!(queue.try_send(fix(51.6)));
        drop(queue);
        batch.clear();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(kinds(&batch), "F");
        batch.clear();
        assert!(!rx.next_batch(&waiter, &mut batch));
    }

    /// A batch that leaves requests in the lane takes only the fixes sent before
    /// the last request it took: a fix never overtakes an earlier request.
    #[test]
    fn a_fix_waits_for_the_requests_sent_before_it() {
        let (queue, mut rx) = engine_queue(MAX_BATCH * 2, true);
        assert!(queue.try_send(fix(51.1)));
        for _ in 0..=MAX_BATCH {
            assert!(queue.try_send(Request::Tick));
        }
        assert!(queue.try_send(fix(51.2)));
        let waiter = waiter();
        let mut batch = Vec::new();
        assert!(rx.next_batch(&waiter, &mut batch));
        // Fixes do not count against the batch's size.
        assert_eq!(kinds(&batch), format!("F{}", "T".repeat(MAX_BATCH)));
        batch.clear();
        assert!(rx.next_batch(&waiter, &mut batch));
        assert_eq!(kinds(&batch), "TF");
    }

    /// A queue without an inbox (a hub's feed thread) sends fixes over the lane.
    #[test]
    fn without_an_inbox_fixes_take_the_lane() {
        let (queue, rx) = engine_queue(8, false);
        assert!(queue.try_send(fix(51.1)));
        assert_eq!(rx.normal.len(), 1);
    }

    /// A remote create whose hub deadline is `expires`, and the receiver of its outcome.
    fn remote_create(key: &str, expires: Instant) -> (Request, oneshot::Receiver<RemoteOutcome>) {
        let (tx, rx) = oneshot::channel();
        let mut new = NewIncident::call("theft", 2, Location { lat: 51.2, lon: 51.4 });
        new.key = Some(key.into());
        let req = Request::Command {
            actor: Actor {
                sub: "d".into(),
                kind: ActorKind::Dispatcher,
            },
            command: Command::CreateIncident(new),
            reply: ReplyTo::Remote(
                tx,
                RemoteOrigin {
                    call: Some(format!("hub-1-{key}")),
                    session: None,
                    expires: Some(expires),
                },
            ),
            received: Instant::now(),
        };
        (req, rx)
    }

    /// Applies `command` as `actor` and appends its events to `journal`; the
    /// created incident's id, if it made one.
    fn apply_and_append(
        engine: &mut Engine,
        journal: &mut dyn opcenter_store::Journal,
        actor: &Actor,
        command: Command,
        now_ms: i64,
    ) -> Option<String> {
        let applied = engine.apply(actor, command, now_ms).expect("applied");
        let origin = record::Origin::new(actor, None, now_ms);
        let payloads: Vec<Vec<u8>> = applied
            .events
            .iter()
            .map(|e| record::encode_event(e, &origin).unwrap())
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        journal.append_batch(&refs).unwrap();
        match applied.reply {
            Reply::Created { incident, .. } => Some(incident.id),
            _ => None,
        }
    }

    /// A warm standby's read copy (built after its load, then folded with each
    /// record it follows) is the copy the read model would build from the
    /// engine's state at the same seq: the same incidents, units, history, next
    /// number and citizens' report progress. A takeover hands it over instead
    /// of building that one.
    #[test]
    fn a_followed_read_copy_equals_the_copy_of_the_engines_state() {
        use opcenter_core::{PositionFix, UnitProfile};
        let settings = crate::settings::Settings::from_toml("").unwrap();
        let ttl = settings.engine.key_ttl_ms;
        let mut journal = opcenter_store::MemJournal::with_epoch("t");
        let mut active = Engine::new(settings.engine.clone());
        let dispatcher = Actor {
            sub: "d".into(),
            kind: ActorKind::Dispatcher,
        };
        let intake = Actor {
            sub: "app".into(),
            kind: ActorKind::Intake,
        };
        let t0 = 1_800_000_000_000i64;
        let mut keys = Vec::new();
        // Part one: units, reports and calls, then a snapshot the standby loads.
        for u in 0..3 {
            let id = format!("U-{u}");
            let tablet = Actor {
                sub: id.clone(),
                kind: ActorKind::Unit(id.clone()),
            };
            let profile = UnitProfile {
                id: id.clone(),
                ..UnitProfile::default()
            };
            apply_and_append(
                &mut active,
                &mut journal,
                &tablet,
                Command::RegisterUnit(profile),
                t0,
            );
            let fix = PositionFix {
                location: Location {
                    lat: 51.2 + f64::from(u) * 0.01,
                    lon: 51.4,
                },
                at_ms: Some(t0),
                heading: None,
                speed: None,
                accuracy: None,
            };
            let fix = Command::Position {
                unit_id: id.clone(),
                fix,
            };
            apply_and_append(&mut active, &mut journal, &tablet, fix, t0);
            let available = Command::SetStatus {
                unit_id: id,
                status: opcenter_core::UnitStatus::Available,
            };
            apply_and_append(&mut active, &mut journal, &tablet, available, t0);
        }
        let mut incidents = Vec::new();
        for n in 0..8i64 {
            let mut new = NewIncident::call(
                "theft",
                3,
                Location {
                    lat: 51.2,
                    lon: 51.4 + n as f64 * 0.001,
                },
            );
            let actor = if n % 2 == 0 {
                let key = format!("report-{n}");
                new.key = Some(key.clone());
                keys.push(key);
                &intake
            } else {
                &dispatcher
            };
            incidents.extend(apply_and_append(
                &mut active,
                &mut journal,
                actor,
                Command::CreateIncident(new),
                t0 + n,
            ));
        }
        let snapshot = record::encode_snapshot(&active.snapshot()).unwrap();
        journal.write_snapshot(journal.last_seq(), &snapshot).unwrap();
        let memory_history = 5;
        let mut standby = Replay::load(settings.engine.clone(), &journal, memory_history, None).unwrap();
        standby.catch_up(&journal).unwrap();
        standby.keep_read_copy(ttl);
        // Part two, followed: more reports, a unit's ack, closes.
        for n in 8..12i64 {
            let key = format!("report-{n}");
            let mut new = NewIncident::call(
                "fire",
                2,
                Location {
                    lat: 51.21,
                    lon: 51.41,
                },
            );
            new.key = Some(key.clone());
            keys.push(key);
            incidents.extend(apply_and_append(
                &mut active,
                &mut journal,
                &intake,
                Command::CreateIncident(new),
                t0 + 100 + n,
            ));
        }
        let assigned = active
            .units()
            .find_map(|u| u.incident_id.clone().map(|i| (u.id.clone(), i)));
        let (unit_id, incident_id) = assigned.expect("auto-dispatch put a unit on an incident");
        let tablet = Actor {
            sub: unit_id.clone(),
            kind: ActorKind::Unit(unit_id.clone()),
        };
        let ack = Command::Ack {
            unit_id,
            incident_id: incident_id.clone(),
        };
        apply_and_append(&mut active, &mut journal, &tablet, ack, t0 + 200);
        for id in [&incidents[0], &incidents[9]] {
            let close = Command::CloseIncident {
                incident_id: id.clone(),
                disposition: "resolved".into(),
            };
            apply_and_append(&mut active, &mut journal, &dispatcher, close, t0 + 300);
        }
        let followed = standby.catch_up(&journal).unwrap();
        assert!(followed > 10, "the standby followed part two: {followed} records");
        let seq = standby.seq;
        assert_eq!(seq, journal.last_seq());
        let warm = standby.take_read_copy().expect("kept");
        let (engine, _, history) = standby.into_recovered();
        let start = read_model::Start {
            state: engine.state(),
            seq,
            history,
        };
        let cold = read_model::ReadCopy::new(start, ttl, memory_history);
        assert_eq!(engine.state().incidents.len(), 12);
        assert!(warm.same_as(&cold), "the followed copy differs from the engine's");
        // The citizens' reports: as the active engine's read model showed them
        // (it folded every event from the first); the copy of the state knows
        // only the step times of the events still in its history.
        let mut always_on = read_model::ReadCopy::new(
            read_model::Start {
                state: Engine::new(settings.engine.clone()).state(),
                seq: 0,
                history: Vec::new(),
            },
            ttl,
            memory_history,
        );
        for rec in record::read_from(&journal, 0, 1000).unwrap() {
            always_on.apply(rec.seq, Arc::new(record::decode_event(&rec).unwrap()));
        }
        let now = t0 + 400;
        for key in &keys {
            let status = warm.report_status(key, now).expect("report known");
            assert_eq!(
                Some(&status),
                always_on.report_status(key, now).as_ref(),
                "report {key}"
            );
            let copied = cold.report_status(key, now).expect("report known");
            assert_eq!(
                (&copied.incident_id, copied.status),
                (&status.incident_id, status.status)
            );
        }
        let closed = warm.report_status("report-0", now).unwrap();
        assert_eq!(closed.status, "closed", "{closed:?}");
        assert!(
            closed.steps[1].at_ms.is_some(),
            "the step times of part one are kept: {closed:?}"
        );
    }

    #[test]
    fn a_remote_command_past_its_hub_deadline_is_answered_internal_and_not_applied() {
        let settings = crate::settings::Settings::from_toml("").unwrap();
        let journal: SharedJournal = Arc::new(std::sync::Mutex::new(Box::new(
            opcenter_store::MemJournal::with_epoch("t"),
        )));
        let shared = Arc::new(Shared {
            epoch: "t".into(),
            healthy: std::sync::atomic::AtomicBool::new(true),
            stopped: CancellationToken::new(),
            fenced: tokio::sync::watch::channel(None).0,
            replaced: tokio::sync::watch::channel(None).0,
            region: None,
        });
        let (reads, _reads_rx) = std::sync::mpsc::channel();
        let engine = Engine::new(settings.engine.clone());
        let mut task = EngineTask::new(engine, journal.clone(), reads, shared, &settings, 0);
        let now = Instant::now();
        // The hub gives up at `now`; one still 10 s away is applied.
        let (late, late_rx) = remote_create("late", now);
        let (soon, soon_rx) = remote_create("soon", now + crate::bridge::SHED_MARGIN / 2);
        let (fresh, fresh_rx) = remote_create("fresh", now + std::time::Duration::from_secs(10));
        let applied = task.apply_batch(&mut vec![late, soon, fresh]);
        task.finish(applied);
        for mut rx in [late_rx, soon_rx] {
            let out = rx.try_recv().expect("answered");
            assert!(
                matches!(&out.result, Err((ErrorCode::Internal, m)) if m == SHED_MESSAGE),
                "shed: {:?}",
                out.result.err()
            );
        }
        let mut fresh_rx = fresh_rx;
        let out = fresh_rx.try_recv().expect("answered");
        assert!(matches!(out.result, Ok(Reply::Created { new: true, .. })));
        // Only the fresh create is in the journal, and only one incident exists.
        assert_eq!(task.engine.read().open_incidents().count(), 1);
        let seq = read_model::lock(&journal).last_seq();
        assert!(
            seq >= 1 && out.seq == seq,
            "journal at {seq}, answered at {}",
            out.seq
        );
        let records = record::read_from(&**read_model::lock(&journal), 0, 100).unwrap();
        let calls: Vec<_> = records
            .iter()
            .filter_map(|r| record::decode_with_origin(r).ok())
            .filter_map(|(_, origin)| origin.and_then(|o| o.call))
            .collect();
        assert_eq!(calls, vec!["hub-1-fresh".to_string()]);
    }
}
