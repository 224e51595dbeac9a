//! The NATS command bridge between hub nodes and a region's engine node.
//!
//! A hub forwards what its clients send as one NATS request on `cmd.<region>`
//! ([`Call`]: the decoded command and its actor, or a tablet's hello / bye, or a
//! recommendation query) and gets one [`Answer`]: the engine's reply and the
//! journal seq that made it durable, sent only after JetStream's publish ack (the
//! engine thread replies after its commit, exactly as to a local session). Each
//! call carries an id unique to the hub process; a hub retries a call that timed
//! out or found no engine with the same id until `cluster.command_timeout_s`, and
//! the engine answers a repeated id from its memory instead of applying it twice.
//! With no engine answering in time the client gets `internal` ("not saved"),
//! never an `ok`.
//!
//! Position fixes do not need an answer and are not journaled: hubs publish them
//! on `pos.<region>.in`, and the engine publishes each batch's accepted fixes on
//! `pos.<region>.out`, which every hub fans out to its `positions` subscribers.
//!
//! The engine side also counts each unit's remote sessions (hub id + session id),
//! so a unit goes offline when its last session on any hub ends.
//!
//! Owns: the subjects, the call/answer encoding (MessagePack, named fields), the
//! retry and deduplication of calls. Must never: apply a command itself (that is
//! the engine thread's) or answer a call before the engine thread did.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use opcenter_core::{
    Actor, Command, Incident, PositionFix, PositionItem, RecommendQuery, Recommendation, Reply, Unit,
    UnitProfile,
};
use opcenter_proto::ErrorCode;

use crate::audit_log::{self, AuditLog};
use crate::engine_task::{EngineQueue, RemoteOrigin, RemoteOutcome, ReplyTo, Request};

/// Calls remembered by the engine for deduplication (a retry comes within
/// `cluster.command_timeout_s`, so far fewer than this are ever needed).
const REMEMBERED_CALLS: usize = 100_000;

/// Records scanned at an engine's start for the call ids of commands applied
/// shortly before (a call is retried for at most 120 s; far fewer records than
/// this are appended in that time on one region).
pub(crate) const RECALL_RECORDS: u64 = 20_000;

/// How long one attempt of a call waits before it is sent again (same id).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// A forwarded command whose hub deadline is less than this away when the engine
/// thread gets to it is not applied (answered `internal`): its answer would come
/// after the hub gave up. Under overload (the backlog after a takeover) this keeps
/// the engine on calls that can still be answered instead of on abandoned ones.
pub(crate) const SHED_MARGIN: Duration = Duration::from_millis(500);

/// First pause before retrying a call that found no engine subscribed; each
/// further one doubles, up to [`NO_ENGINE_PAUSE_MAX`]. A new engine's announcement
/// (`engine.<region>.active`) ends every pause at once, so the pause only bounds
/// how long a missed announcement can delay a call, not the handover.
const NO_ENGINE_PAUSE: Duration = Duration::from_millis(250);

/// The longest pause between attempts of a call while no engine is subscribed.
/// Without the backoff every waiting call polled every 250 ms: at 2 000 creates/s
/// and 3 s without an engine, ~24 000 requests/s (each answered "no responders")
/// on the servers and the hub while the new engine was starting.
const NO_ENGINE_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The pause before attempt `attempt` (1-based count of "no responders" so far)
/// of call number `n`: doubling from [`NO_ENGINE_PAUSE`] up to
/// [`NO_ENGINE_PAUSE_MAX`], plus up to a quarter more spread by the call number,
/// so the waiting calls do not poll in step.
fn no_engine_pause(attempt: u32, n: u64, (first, max): (Duration, Duration)) -> Duration {
    let base = first
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(max);
    let spread = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56; // 0..=255
    base + base.mul_f64(spread as f64 / 1024.0)
}

/// How long a new engine waits for the server to confirm its subscriptions
/// before it announces itself anyway (the hubs' calls then retry on their
/// backoff until it is subscribed).
pub(crate) const SUBSCRIBE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The subjects of one region.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    /// `cmd.<region>`: calls (request/reply).
    pub(crate) cmd: String,
    /// `pos.<region>.in`: position fixes from hubs to the engine.
    pub(crate) pos_in: String,
    /// `pos.<region>.out`: accepted fixes from the engine to the hubs.
    pub(crate) pos_out: String,
}

impl Subjects {
    pub(crate) fn new(region: &str) -> Subjects {
        Subjects {
            cmd: format!("cmd.{region}"),
            pos_in: format!("pos.{region}.in"),
            pos_out: format!("pos.{region}.out"),
        }
    }
}

/// One forwarded request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Call {
    /// Unique per hub process and call; the same on every retry.
    pub(crate) id: String,
    pub(crate) body: CallBody,
    /// What was left of the hub's `cluster.command_timeout_s` when this attempt
    /// was sent, in ms (0: not given, an older hub). Past it the hub has answered
    /// `internal`, so the engine sheds a command still queued then ([`SHED_MARGIN`]).
    #[serde(default)]
    pub(crate) budget_ms: u64,
}

/// What a hub asks of the engine.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CallBody {
    /// A state-changing command of a client of the hub, with the hub's session
    /// that sent it (`<hub node id>/<session>`; none for the reports gateway).
    Command {
        actor: Actor,
        command: Command,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// A tablet's hello on a hub: register the unit, count the session.
    Hello {
        session: String,
        actor: Actor,
        profile: UnitProfile,
    },
    /// A tablet's session on a hub ended.
    Bye { session: String, unit: String },
    /// `incident.recommend` (read-only, but on the engine's live positions).
    Recommend { query: RecommendQuery },
}

/// A fix forwarded on `pos.<region>.in`.
#[derive(Debug, Serialize, Deserialize)]
struct PositionCall {
    actor: Actor,
    unit_id: String,
    fix: PositionFix,
}

/// The engine's answer to a [`Call`].
// One per forwarded command, moved once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// Applied and durable up to `seq`.
    Done { seq: u64, reply: WireReply },
    /// Refused (or not saved): the error the client gets.
    Refused { code: String, message: String },
    /// `incident.recommend`'s result.
    Recommended(Recommendation),
}

/// [`Reply`] on the wire between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum WireReply {
    None,
    Incident(Incident),
    Created { incident: Incident, new: bool },
    Unit(Unit),
    Registered { unit: Unit, incident: Option<Incident> },
}

impl From<Reply> for WireReply {
    fn from(r: Reply) -> Self {
        match r {
            Reply::None => WireReply::None,
            Reply::Incident(i) => WireReply::Incident(i),
            Reply::Created { incident, new } => WireReply::Created { incident, new },
            Reply::Unit(u) => WireReply::Unit(u),
            Reply::Registered { unit, incident } => WireReply::Registered { unit, incident },
        }
    }
}

impl From<WireReply> for Reply {
    fn from(r: WireReply) -> Self {
        match r {
            WireReply::None => Reply::None,
            WireReply::Incident(i) => Reply::Incident(i),
            WireReply::Created { incident, new } => Reply::Created { incident, new },
            WireReply::Unit(u) => Reply::Unit(u),
            WireReply::Registered { unit, incident } => Reply::Registered { unit, incident },
        }
    }
}

impl Answer {
    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Answer {
        Answer::Refused {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }

    fn from_outcome(o: RemoteOutcome) -> Answer {
        match o.result {
            Ok(reply) => Answer::Done {
                seq: o.seq,
                reply: reply.into(),
            },
            Err((code, message)) => Answer::refused(code, message),
        }
    }
}

/// The error code of its wire name (`internal` for a name this build lacks).
pub(crate) fn error_code(name: &str) -> ErrorCode {
    ErrorCode::from_wire(name).unwrap_or(ErrorCode::Internal)
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    // Named fields: the core types skip absent optional fields when serializing.
    rmp_serde::to_vec_named(v).map(Bytes::from).unwrap_or_default()
}

// ---------------------------------------------------------------- hub side

/// A hub node's end: forwards calls with retries, publishes position fixes.
pub(crate) struct Forwarder {
    /// The connection for the calls (not the follower's): the current one,
    /// replaced by a new one when its probe finds it stuck.
    link: watch::Receiver<async_nats::Client>,
    subjects: Subjects,
    /// Unique per process: prefixes call ids and session keys.
    node_id: String,
    counter: AtomicU64,
    /// `cluster.command_timeout_s`.
    deadline: Duration,
    /// The sessions' runtime: fixes are published from the feed thread.
    handle: tokio::runtime::Handle,
    /// This hub's tablet sessions the engine registered (session key → actor,
    /// profile): announced again to a new engine after a takeover.
    tablets: Mutex<HashMap<String, (Actor, UnitProfile)>>,
    /// Counts the engines' announcements (`engine.<region>.active`): a call
    /// waiting for an engine retries as soon as it changes.
    announced: tokio::sync::watch::Sender<u64>,
    /// The first and the longest "no engine" pause ([`no_engine_pause`]).
    no_engine_pauses: (Duration, Duration),
    /// Attempts that found no engine subscribed, since start.
    no_engine_attempts: AtomicU64,
}

impl Forwarder {
    /// Must be called on the runtime that serves the sessions.
    pub(crate) fn new(
        link: watch::Receiver<async_nats::Client>,
        region: &str,
        deadline: Duration,
    ) -> Forwarder {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Forwarder {
            link,
            subjects: Subjects::new(region),
            node_id: format!("hub-{}-{nanos:x}", std::process::id()),
            counter: AtomicU64::new(1),
            deadline,
            handle: tokio::runtime::Handle::current(),
            tablets: Mutex::new(HashMap::new()),
            announced: tokio::sync::watch::Sender::new(0),
            no_engine_pauses: (NO_ENGINE_PAUSE, NO_ENGINE_PAUSE_MAX),
            no_engine_attempts: AtomicU64::new(0),
        }
    }

    /// Listens for a new active engine of the region (a takeover): then sends the
    /// hello of every tablet connected here again, so the new engine learns which
    /// units are online (it starts their offline grace at recovery). Moves to a
    /// new connection with the calls; ends when the subscription does.
    pub(crate) fn watch_takeovers(self: &Arc<Self>) {
        let me = self.clone();
        let region = self.subjects.cmd.trim_start_matches("cmd.").to_owned();
        self.handle.spawn(async move {
            let subject = crate::failover::active_subject(&region);
            let mut link = me.link.clone();
            let mut sub = None;
            loop {
                if sub.is_none() {
                    let client = link.borrow_and_update().clone();
                    match client.subscribe(subject.clone()).await {
                        Ok(s) => sub = Some(s),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch for engine takeovers: tablets are not re-announced");
                            return;
                        }
                    }
                }
                let Some(s) = sub.as_mut() else { return };
                let msg = tokio::select! {
                    Ok(()) = link.changed() => {
                        sub = None; // subscribe on the new connection
                        continue;
                    }
                    msg = s.next() => match msg {
                        Some(m) => m,
                        None => return,
                    },
                };
                me.announced.send_modify(|n| *n += 1);
                let tablets: Vec<(String, (Actor, UnitProfile))> = me
                    .tablets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                tracing::info!(
                    engine = %String::from_utf8_lossy(&msg.payload),
                    tablets = tablets.len(),
                    "a new engine took the region over: announcing this hub's tablets"
                );
                for (session, (actor, profile)) in tablets {
                    let me = me.clone();
                    tokio::spawn(async move {
                        let unit = profile.id.clone();
                        if let Answer::Refused { message, .. } =
                            me.call(CallBody::Hello { session, actor, profile }).await
                        {
                            tracing::warn!(%unit, %message, "a tablet's re-announcement was refused");
                        }
                    });
                }
            }
        });
    }

    /// Keeps the registry of [`Forwarder::watch_takeovers`] up to date.
    fn track(&self, body: &CallBody) {
        let mut t = self.tablets.lock().unwrap_or_else(|e| e.into_inner());
        match body {
            CallBody::Hello {
                session,
                actor,
                profile,
            } => {
                t.insert(session.clone(), (actor.clone(), profile.clone()));
            }
            CallBody::Bye { session, .. } => {
                t.remove(session);
            }
            _ => {}
        }
    }

    pub(crate) fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// A session of this hub as the engine knows it (unique across hubs).
    pub(crate) fn session_key(&self, session: &str) -> String {
        format!("{}/{session}", self.node_id)
    }

    /// Sends `body` to the engine and waits for its answer, retrying with the
    /// same id through timeouts and engine restarts until the deadline; then
    /// `internal`: the change may or may not have been saved, so never `ok`.
    /// While no engine is subscribed, it waits for the next engine's announcement
    /// (or a backoff pause, [`no_engine_pause`]) between attempts.
    pub(crate) async fn call(&self, body: CallBody) -> Answer {
        self.track(&body);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut call = Call {
            id: format!("{}-{n}", self.node_id),
            body,
            budget_ms: 0,
        };
        let until = Instant::now() + self.deadline;
        let mut attempts = 0u32;
        let mut no_engine = 0u32;
        let mut announced = self.announced.subscribe();
        loop {
            attempts += 1;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(call = %call.id, attempts, "no engine answered the call in time");
                return Answer::refused(
                    ErrorCode::Internal,
                    format!(
                        "no engine answered within {} s: the change may not have been saved; retry it",
                        self.deadline.as_secs()
                    ),
                );
            }
            call.budget_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
            let request = async_nats::Request::new()
                .payload(encode(&call))
                .timeout(Some(ATTEMPT_TIMEOUT.min(left)));
            // An announcement from now on ends a "no engine" pause.
            announced.borrow_and_update();
            // The connection of the moment (the probe may have replaced a stuck one).
            let client = self.link.borrow().clone();
            match client.send_request(self.subjects.cmd.clone(), request).await {
                Ok(msg) => match rmp_serde::from_slice::<Answer>(&msg.payload) {
                    Ok(a) => return a,
                    Err(e) => {
                        return Answer::refused(
                            ErrorCode::Internal,
                            format!("bad answer from the engine: {e}"),
                        );
                    }
                },
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    no_engine += 1;
                    self.no_engine_attempts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(crate::metric::CALLS_NO_ENGINE).increment(1);
                    let pause = no_engine_pause(no_engine, n, self.no_engine_pauses).min(left);
                    tokio::select! {
                        _ = announced.changed() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                // Timed out, or the connection is moving to another server: same id again.
                Err(e) => tracing::debug!(call = %call.id, error = %e, "call attempt failed; retrying"),
            }
        }
    }

    /// Publishes a tablet's fix for the engine (no answer: a fix is superseded by the next).
    pub(crate) fn position(&self, actor: Actor, unit_id: String, fix: PositionFix) {
        let payload = encode(&PositionCall { actor, unit_id, fix });
        let client = self.link.borrow().clone();
        let subject = self.subjects.pos_in.clone();
        self.handle.spawn(async move {
            if let Err(e) = client.publish(subject, payload).await {
                tracing::debug!(error = %e, "position not forwarded");
            }
        });
    }
}

/// Decodes a batch of accepted fixes from `pos.<region>.out`.
pub(crate) fn decode_positions(payload: &[u8]) -> Option<Vec<PositionItem>> {
    rmp_serde::from_slice(payload).ok()
}

// ------------------------------------------------------------- engine side

enum Seen {
    /// Being applied; the reply subject of the call's latest attempt. Only that
    /// one is answered: each attempt has an inbox of its own, and the hub sends
    /// the next only after it gave up on the one before (an answer to it would
    /// be dropped at the hub, after crowding the connection: after a takeover,
    /// thousands of calls are retried while the new engine works through them).
    Pending(async_nats::Subject),
    Done(Bytes),
}

#[derive(Default)]
struct Memory {
    calls: HashMap<String, Seen>,
    order: VecDeque<String>,
    /// Each unit's sessions on hubs.
    unit_sessions: HashMap<String, HashSet<String>>,
}

/// Role `engine`: what the NATS command bridge needs once serving starts.
pub(crate) struct EngineBridge {
    /// The connection for the hubs (not the lease's, not the journal's): the
    /// current one, replaced by a new one when its probe finds it stuck.
    pub(crate) link: watch::Receiver<async_nats::Client>,
    pub(crate) region: String,
    /// Each batch's accepted fixes, from the engine thread.
    pub(crate) positions: mpsc::UnboundedReceiver<Vec<PositionItem>>,
}

/// Serves `cmd.<region>` and `pos.<region>.in` into the engine thread's queue,
/// and publishes its accepted fixes on `pos.<region>.out`, until `stop`.
/// `subscribed` is told once the server has both subscriptions (dropped if they
/// failed). Reading the calls never waits for a publish: answers and fixes are
/// sent by tasks of their own, so a connection slow to take them does not leave
/// the calls unread (the subscription's buffer full, calls dropped).
/// When the probe replaces the connection (`link`), both subscriptions move to
/// the new one and every later answer and fix leaves on it.
/// `recalled`: calls applied before this engine started, with their answers.
pub(crate) async fn serve_engine(
    bridge: EngineBridge,
    recalled: Vec<(String, Bytes)>,
    queue: EngineQueue,
    audit: AuditLog,
    stop: CancellationToken,
    subscribed: oneshot::Sender<()>,
) {
    let EngineBridge {
        mut link,
        region,
        positions,
    } = bridge;
    let subjects = Subjects::new(&region);
    let first = link.borrow_and_update().clone();
    let Some((mut cmds, mut fixes)) = subscribe_hub_subjects(&first, &subjects).await else {
        tracing::error!("no hub can reach this engine");
        return;
    };
    let _ = subscribed.send(());
    metrics::gauge!(crate::metric::SERVING_SINCE).set(crate::engine_task::now_ms() as f64 / 1e3);
    tracing::info!(subject = %subjects.cmd, "engine serving hub nodes");
    tokio::spawn(publish_positions(
        link.clone(),
        subjects.pos_out.clone(),
        positions,
        stop.clone(),
    ));
    let mut m = Memory::default();
    if !recalled.is_empty() {
        tracing::info!(
            calls = recalled.len(),
            "calls applied before this engine started are remembered"
        );
    }
    for (id, answer) in recalled {
        m.order.push_back(id.clone());
        m.calls.insert(id, Seen::Done(answer));
    }
    let memory = Arc::new(Mutex::new(m));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Ok(()) = link.changed() => {
                let new = link.borrow_and_update().clone();
                // The old subscriptions end with the old connection's last holder.
                if let Some((c, f)) = subscribe_hub_subjects(&new, &subjects).await {
                    (cmds, fixes) = (c, f);
                    tracing::info!(subject = %subjects.cmd, "engine serving hub nodes on a new connection");
                }
            }
            Some(msg) = cmds.next() => {
                let Some(reply_to) = msg.reply.clone() else { continue };
                let call: Call = match rmp_serde::from_slice(&msg.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        audit.record(audit_log::Entry {
                            kind: audit_log::Kind::BadFrame,
                            reason: "bad_call".into(),
                            subject: "-".into(),
                            role: None,
                            session: None,
                            component: "engine",
                            detail: e.to_string(),
                        });
                        let a = encode(&Answer::refused(ErrorCode::BadRequest, format!("bad call: {e}")));
                        send_answer(&link, reply_to, a);
                        continue;
                    }
                };
                if let Some((reply_to, answer)) = remember(&memory, &call.id, reply_to) {
                    send_answer(&link, reply_to, answer);
                    continue;
                }
                let expires = (call.budget_ms > 0)
                    .then(|| Instant::now() + Duration::from_millis(call.budget_ms));
                tokio::spawn(answer(link.clone(), queue.clone(), memory.clone(), call, expires));
            }
            Some(msg) = fixes.next() => {
                if let Ok(p) = rmp_serde::from_slice::<PositionCall>(&msg.payload) {
                    // Nobody waits for a fix's outcome; a full queue drops it (the next one comes).
                    let (tx, _) = oneshot::channel();
                    let _ = queue.try_send(Request::Command {
                        actor: p.actor,
                        command: Command::Position { unit_id: p.unit_id, fix: p.fix },
                        reply: ReplyTo::Remote(tx, RemoteOrigin::default()),
                        received: Instant::now(),
                    });
                }
            }
        }
    }
    tracing::info!("engine stopped serving hub nodes");
}

/// Subscribes `client` to the hubs' calls and fixes and waits until its server
/// has both (logged if it cannot say); `None` (logged) if a subscription failed.
async fn subscribe_hub_subjects(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> Option<(async_nats::Subscriber, async_nats::Subscriber)> {
    let subscribed = match (
        client.subscribe(subjects.cmd.clone()).await,
        client.subscribe(subjects.pos_in.clone()).await,
    ) {
        (Ok(c), Ok(f)) => (c, f),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot subscribe to the hubs' subjects");
            return None;
        }
    };
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "subscriptions to the hubs' subjects not confirmed");
    }
    Some(subscribed)
}

/// Sends an answer from a task of its own (the caller goes on reading calls).
/// On the connection of the moment, like every answer.
fn send_answer(link: &watch::Receiver<async_nats::Client>, reply_to: async_nats::Subject, answer: Bytes) {
    let client = link.borrow().clone();
    tokio::spawn(async move {
        let _ = client.publish(reply_to, answer).await;
    });
}

/// Publishes the engine's accepted fixes on `pos.<region>.out` until `stop`.
async fn publish_positions(
    link: watch::Receiver<async_nats::Client>,
    subject: String,
    mut positions: mpsc::UnboundedReceiver<Vec<PositionItem>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            batch = positions.recv() => match batch {
                Some(batch) => {
                    let client = link.borrow().clone();
                    let _ = client.publish(subject.clone(), encode(&batch)).await;
                }
                None => return,
            },
        }
    }
}

/// Records a call; `Some((reply_to, answer))` when it was answered before (a retry).
fn remember(
    memory: &Mutex<Memory>,
    id: &str,
    reply_to: async_nats::Subject,
) -> Option<(async_nats::Subject, Bytes)> {
    let mut m = memory.lock().unwrap_or_else(|e| e.into_inner());
    match m.calls.get_mut(id) {
        Some(Seen::Pending(latest)) => {
            *latest = reply_to;
            // Answered with the first attempt's outcome; nothing to send now.
            None
        }
        Some(Seen::Done(bytes)) => Some((reply_to, bytes.clone())),
        None => {
            m.calls.insert(id.to_owned(), Seen::Pending(reply_to));
            m.order.push_back(id.to_owned());
            while m.order.len() > REMEMBERED_CALLS {
                if let Some(old) = m.order.pop_front() {
                    m.calls.remove(&old);
                }
            }
            None
        }
    }
}

/// Applies one call through the engine thread and answers every attempt of it.
/// `expires`: the hub's deadline as this engine sees it (commands only).
async fn answer(
    link: watch::Receiver<async_nats::Client>,
    queue: EngineQueue,
    memory: Arc<Mutex<Memory>>,
    call: Call,
    expires: Option<Instant>,
) {
    let answer = match call.body {
        CallBody::Command {
            actor,
            command,
            session,
        } => {
            // The engine thread logs its own `forbidden` answers, with this session.
            let origin = RemoteOrigin {
                call: Some(call.id.clone()),
                session,
                expires,
            };
            command_answer(&queue, actor, command, origin).await
        }
        CallBody::Hello {
            session,
            actor,
            profile,
        } => {
            {
                let mut m = memory.lock().unwrap_or_else(|e| e.into_inner());
                m.unit_sessions
                    .entry(profile.id.clone())
                    .or_default()
                    .insert(session);
            }
            command_answer(
                &queue,
                actor,
                Command::RegisterUnit(profile),
                RemoteOrigin::default(),
            )
            .await
        }
        CallBody::Bye { session, unit } => {
            let last = {
                let mut m = memory.lock().unwrap_or_else(|e| e.into_inner());
                let last = m
                    .unit_sessions
                    .get_mut(&unit)
                    .is_some_and(|s| s.remove(&session) && s.is_empty());
                if last {
                    m.unit_sessions.remove(&unit);
                }
                last
            };
            if last {
                command_answer(
                    &queue,
                    Actor::system(),
                    Command::UnitOffline { unit_id: unit },
                    // The hub session whose end it was, as on a single node.
                    RemoteOrigin {
                        call: None,
                        session: Some(session),
                        expires: None,
                    },
                )
                .await
            } else {
                Answer::Done {
                    seq: 0,
                    reply: WireReply::None,
                }
            }
        }
        CallBody::Recommend { query } => {
            let (tx, rx) = oneshot::channel();
            if queue
                .send(Request::RemoteRecommend { query, reply: tx })
                .await
                .is_err()
            {
                Answer::refused(ErrorCode::Internal, "the engine is shutting down")
            } else {
                match rx.await {
                    Ok(Ok(r)) => Answer::Recommended(r),
                    Ok(Err((code, message))) => Answer::refused(code, message),
                    Err(_) => Answer::refused(ErrorCode::Internal, "the engine stopped"),
                }
            }
        }
    };
    let bytes = encode(&answer);
    if let Some(reply_to) = answered(&memory, call.id, bytes.clone()) {
        // The connection of the moment: the one the call came in on may be stuck.
        let client = link.borrow().clone();
        let _ = client.publish(reply_to, bytes).await;
    }
}

/// Records call `id`'s answer; the reply subject of its latest attempt, if one waits.
fn answered(memory: &Mutex<Memory>, id: String, bytes: Bytes) -> Option<async_nats::Subject> {
    let mut m = memory.lock().unwrap_or_else(|e| e.into_inner());
    match m.calls.insert(id, Seen::Done(bytes)) {
        Some(Seen::Pending(latest)) => Some(latest),
        _ => None,
    }
}

async fn command_answer(queue: &EngineQueue, actor: Actor, command: Command, origin: RemoteOrigin) -> Answer {
    let (tx, rx) = oneshot::channel();
    let req = Request::Command {
        actor,
        command,
        reply: ReplyTo::Remote(tx, origin),
        received: Instant::now(),
    };
    if queue.send(req).await.is_err() {
        return Answer::refused(ErrorCode::Internal, "the engine is shutting down");
    }
    match rx.await {
        Ok(o) => Answer::from_outcome(o),
        Err(_) => Answer::refused(ErrorCode::Internal, "the engine stopped before answering"),
    }
}

/// The call ids of forwarded commands found in the stream, with the answer each
/// one got: built from the records an engine replays (or a warm standby
/// applies while following), so that a call the previous engine applied and a hub
/// retries is answered from here, not applied again. Keeps the calls of the
/// newest [`RECALL_RECORDS`] records.
#[derive(Default)]
pub(crate) struct Recall {
    /// call id → (last seq, created an incident, last incident, last unit)
    found: HashMap<String, (u64, bool, Option<Incident>, Option<Unit>)>,
    /// Call ids by the seq they were first seen at, oldest first.
    order: VecDeque<(u64, String)>,
    /// The seq of the last record observed.
    last: u64,
}

impl Recall {
    /// Notes the record `seq` (`event`) written for call `call`.
    pub(crate) fn observe(&mut self, seq: u64, event: &opcenter_core::Event, call: String) {
        use opcenter_core::{Change, EventBody};
        self.last = self.last.max(seq);
        let entry = match self.found.get_mut(&call) {
            Some(e) => e,
            None => {
                self.order.push_back((seq, call.clone()));
                self.found.entry(call).or_insert((0, false, None, None))
            }
        };
        entry.0 = seq;
        match &event.body {
            EventBody::Incident(i) => {
                entry.1 |= event.change == Change::Created;
                entry.2 = Some(i.clone());
            }
            EventBody::Assignment { incident, .. } => entry.2 = Some(incident.clone()),
            EventBody::Unit(u) => entry.3 = Some(u.clone()),
        }
        self.prune();
    }

    /// Forgets the calls first seen more than [`RECALL_RECORDS`] records ago.
    fn prune(&mut self) {
        let keep_after = self.last.saturating_sub(RECALL_RECORDS);
        while let Some((seq, _)) = self.order.front() {
            if *seq > keep_after {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.found.remove(&id);
            }
        }
    }

    /// Every call remembered with its answer, in the order they were first seen.
    pub(crate) fn answers(mut self) -> Vec<(String, Bytes)> {
        self.order
            .into_iter()
            .filter_map(|(_, id)| {
                let (seq, created, incident, unit) = self.found.remove(&id)?;
                let reply = match (incident, unit) {
                    (Some(incident), _) if created => WireReply::Created { incident, new: true },
                    (Some(incident), _) => WireReply::Incident(incident),
                    (None, Some(unit)) => WireReply::Unit(unit),
                    (None, None) => WireReply::None,
                };
                Some((id, encode(&Answer::Done { seq, reply })))
            })
            .collect()
    }

    /// Observes the records `after + 1 ..= upto` of `journal`; `false` when they
    /// could not be read (logged: a retried call may then apply twice).
    pub(crate) fn scan(&mut self, journal: &dyn opcenter_store::Journal, mut after: u64, upto: u64) -> bool {
        while after < upto {
            let records = match crate::record::read_from(journal, after, 4096) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read recent calls: a retried call may apply twice");
                    return false;
                }
            };
            if records.is_empty() {
                return true;
            }
            for rec in records {
                if rec.seq > upto {
                    return true;
                }
                after = rec.seq;
                if let Ok((event, Some(origin))) = crate::record::decode_with_origin(&rec)
                    && let Some(call) = origin.call
                {
                    self.observe(rec.seq, &event, call);
                }
            }
        }
        true
    }
}

/// The answers of the calls whose commands are in the newest [`RECALL_RECORDS`]
/// records of `journal` (each record of a forwarded command carries its call id):
/// an engine that took the region over cold answers a call the old engine applied
/// but could not answer from these, instead of applying it again (a warm standby
/// has its [`Recall`] from following). The answer is rebuilt from the command's
/// events: `Created` when it created an incident (the incident as its last event
/// left it), else the last incident or unit it touched.
pub(crate) fn recall(journal: &crate::read_model::SharedJournal) -> Vec<(String, Bytes)> {
    use crate::read_model::lock;
    let (first, last) = {
        let j = lock(journal);
        (j.first_seq(), j.last_seq())
    };
    let mut calls = Recall::default();
    // Locked per chunk, like the read model's scans.
    let mut at = last.saturating_sub(RECALL_RECORDS).max(first.saturating_sub(1));
    while at < last {
        let upto = (at + 4096).min(last);
        if !calls.scan(&**lock(journal), at, upto) {
            break;
        }
        at = upto;
    }
    calls.answers()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_attempt_of_a_call_is_answered_and_a_retry_after_is_answered_at_once() {
        let memory = Mutex::new(Memory::default());
        let inbox = |n: &str| async_nats::Subject::from(format!("_INBOX.hub.{n}"));
        assert_eq!(
            remember(&memory, "c1", inbox("a1")),
            None,
            "a new call is applied"
        );
        assert_eq!(
            remember(&memory, "c1", inbox("a2")),
            None,
            "a retry while it is applied waits"
        );
        assert_eq!(remember(&memory, "c1", inbox("a3")), None);
        let answer = Bytes::from_static(b"ok");
        assert_eq!(
            answered(&memory, "c1".into(), answer.clone()),
            Some(inbox("a3")),
            "only the attempt the hub still waits on"
        );
        assert_eq!(
            remember(&memory, "c1", inbox("a4")),
            Some((inbox("a4"), answer)),
            "a retry after the answer gets it at once"
        );
        assert_eq!(
            answered(&memory, "c2".into(), Bytes::new()),
            None,
            "nobody waits on an unknown call"
        );
    }

    #[test]
    fn calls_in_the_journal_are_recalled_with_their_answer_and_others_are_not() {
        use opcenter_core::{Engine, EngineConfig, Location, NewIncident};
        use opcenter_store::{Journal, MemJournal};
        let mut engine = Engine::new(EngineConfig::default());
        let actor = Actor::dispatcher("d1");
        let mut journal = MemJournal::with_epoch("t");
        let mut create = |call: Option<&str>, lat: f64| {
            let n = NewIncident::call("theft", 2, Location { lat, lon: 51.3 });
            let applied = engine.apply(&actor, Command::CreateIncident(n), 1_000).unwrap();
            let mut origin = crate::record::Origin::new(&actor, None, 1_000);
            origin.call = call.map(str::to_owned);
            let records: Vec<Vec<u8>> = applied
                .events
                .iter()
                .map(|e| crate::record::encode_event(e, &origin).unwrap())
                .collect();
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            let seqs = journal.append_batch(&refs).unwrap();
            let Reply::Created { incident, .. } = applied.reply else {
                panic!("not a create reply")
            };
            (*seqs.end(), incident.id)
        };
        let (seq_a, id_a) = create(Some("hub-1-7"), 51.2);
        let _ = create(None, 51.21);
        let journal: crate::read_model::SharedJournal = Arc::new(Mutex::new(Box::new(journal)));
        let recalled = recall(&journal);
        assert_eq!(recalled.len(), 1, "only the forwarded command has a call id");
        assert_eq!(recalled[0].0, "hub-1-7");
        match rmp_serde::from_slice::<Answer>(&recalled[0].1).unwrap() {
            Answer::Done {
                seq,
                reply: WireReply::Created { incident, new: true },
            } => {
                assert_eq!(seq, seq_a, "answered at the command's last record");
                assert_eq!(incident.id, id_a);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_engine_pauses_double_up_to_the_cap_and_spread_across_calls() {
        let p = (NO_ENGINE_PAUSE, NO_ENGINE_PAUSE_MAX);
        for n in 0..1_000u64 {
            for (attempt, base) in [(1, 250), (2, 500), (3, 1_000), (4, 1_000), (40, 1_000)] {
                let pause = no_engine_pause(attempt, n, p);
                let base = Duration::from_millis(base);
                assert!(
                    pause >= base && pause <= base + base / 4,
                    "{attempt} {n}: {pause:?}"
                );
            }
        }
        let spread: HashSet<Duration> = (0..100).map(|n| no_engine_pause(1, n, p)).collect();
        assert!(spread.len() > 50, "calls do not pause in step: {}", spread.len());
    }

    /// A call that found no engine waits for the next engine's announcement, not
    /// for the end of its pause: with pauses of a minute, only the announcement
    /// can get it answered within the test's 30 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_waiting_for_an_engine_is_sent_again_when_one_announces_itself() {
        use opcenter_cluster::testing::NatsCluster;
        let Some(nats) = NatsCluster::start_or_skip(1) else {
            return;
        };
        let client = opcenter_cluster::connect(&nats.urls()).await.unwrap();
        let mut forwarder = Forwarder::new(watch::channel(client.clone()).1, "fo", Duration::from_secs(120));
        forwarder.no_engine_pauses = (Duration::from_secs(60), Duration::from_secs(60));
        let forwarder = Arc::new(forwarder);
        forwarder.watch_takeovers();
        let call = tokio::spawn({
            let f = forwarder.clone();
            async move {
                f.call(CallBody::Bye {
                    session: "s1".into(),
                    unit: "u1".into(),
                })
                .await
            }
        });
        // Until the first attempt found nobody (and the hub's watch is subscribed).
        tokio::time::timeout(Duration::from_secs(30), async {
            while forwarder.no_engine_attempts.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the call's first attempt found no engine");
        client.flush().await.unwrap();
        // A stand-in engine: subscribed first, then announced, as serve_engine does.
        let engine = opcenter_cluster::connect(&nats.urls()).await.unwrap();
        let mut cmds = engine.subscribe("cmd.fo").await.unwrap();
        engine.flush().await.unwrap();
        let answering = tokio::spawn({
            let engine = engine.clone();
            async move {
                let msg = cmds.next().await.expect("the call arrives");
                let call: Call = rmp_serde::from_slice(&msg.payload).unwrap();
                let done = Answer::Done {
                    seq: 7,
                    reply: WireReply::None,
                };
                engine.publish(msg.reply.unwrap(), encode(&done)).await.unwrap();
                engine.flush().await.unwrap();
                call.id
            }
        });
        crate::failover::announce_active(&engine, "fo", "b", 2).await;
        let answer = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("answered after the announcement, not after the minute's pause")
            .unwrap();
        assert!(matches!(answer, Answer::Done { seq: 7, .. }), "{answer:?}");
        let id = answering.await.unwrap();
        assert!(id.starts_with(&forwarder.node_id), "{id}");
        assert_eq!(forwarder.no_engine_attempts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn error_codes_round_trip_by_name() {
        for c in ErrorCode::ALL {
            assert_eq!(error_code(c.as_str()), c);
        }
        assert_eq!(error_code("something_new"), ErrorCode::Internal);
    }

    #[test]
    fn calls_and_answers_survive_the_wire() {
        let call = Call {
            id: "hub-1-7".into(),
            body: CallBody::Bye {
                session: "s".into(),
                unit: "P-1".into(),
            },
            budget_ms: 9_500,
        };
        let back: Call = rmp_serde::from_slice(&encode(&call)).unwrap();
        assert_eq!(back.id, "hub-1-7");
        assert_eq!(back.budget_ms, 9_500);
        assert!(matches!(back.body, CallBody::Bye { ref unit, .. } if unit == "P-1"));
        let a: Answer = rmp_serde::from_slice(&encode(&Answer::refused(ErrorCode::Conflict, "no"))).unwrap();
        assert!(matches!(a, Answer::Refused { ref code, .. } if code == "conflict"));
    }
}
