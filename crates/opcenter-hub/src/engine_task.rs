//! The engine thread: the single writer of all dispatch state.
//!
//! Sessions and HTTP handlers send [`Request`]s over one bounded channel. The
//! thread takes everything queued (a batch), applies each command through
//! `opcenter_core::Engine::apply`, appends all resulting events to the journal
//! in one group commit (one write, one fsync), and only then fans the events
//! out and sends replies: acknowledged means durable, and no client ever sees
//! an event that a crash could take back. Subscriptions and queries are served
//! after the batch is published, so a snapshot and its cut always agree.
//!
//! It runs on its own OS thread because the fsync blocks; nothing else touches
//! the engine, the journal or the subscriber lists, so the hot path has no locks.
//!
//! Owns: ordering, durability before visibility, replies. Must never: let a
//! reply or event out before its events are in the journal.

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

use crate::fanout::Fanout;
use crate::outbox::Outbox;
use crate::record::{self, DurabilityError};
use crate::{metric, wire};

/// Where a command's outcome goes.
pub(crate) enum ReplyTo {
    /// A WebSocket session: `ok` (if it gave an `id`) or `error` into its queue.
    Session { outbox: Arc<Outbox>, id: Option<u64> },
    /// An HTTP handler waiting for the created incident (and whether it is new).
    Http(oneshot::Sender<Result<(Incident, bool), (ErrorCode, String)>>),
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
    /// `incident.recommend` (read-only).
    Recommend {
        outbox: Arc<Outbox>,
        id: Option<u64>,
        query: RecommendQuery,
    },
    /// `GET /v1/incidents/{id}`.
    GetIncident {
        incident_id: String,
        reply: oneshot::Sender<Option<Incident>>,
    },
    /// Timers: ack timeouts, position batches.
    Tick,
}

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
}

/// Runs the engine thread until every sender of `rx` is gone.
pub(crate) struct EngineTask {
    engine: Engine,
    journal: Box<dyn Journal>,
    fanout: Fanout,
    shared: Arc<Shared>,
    snapshot_every: u64,
    history_events: u64,
    last_snapshot_seq: u64,
    position_interval: std::time::Duration,
    last_position_flush: Instant,
    last_prune: Instant,
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
    let started = Instant::now();
    let (mut engine, snap_seq) = match journal.latest_snapshot()? {
        Some((seq, bytes)) => (
            Engine::from_snapshot(config, record::decode_snapshot(seq, &bytes)?),
            seq,
        ),
        None => (Engine::new(config), 0),
    };
    let mut history = std::collections::VecDeque::new();
    let mut after = snap_seq;
    let mut replayed = 0u64;
    loop {
        let records = record::read_from(journal, after, 4096)?;
        if records.is_empty() {
            break;
        }
        for rec in records {
            let event = record::decode_event(&rec)?;
            engine.restore(&event);
            history.push_back((rec.seq, Arc::new(event)));
            if history.len() > memory_history {
                history.pop_front();
            }
            after = rec.seq;
            replayed += 1;
        }
    }
    tracing::info!(
        snapshot_seq = snap_seq,
        replayed,
        last_seq = journal.last_seq(),
        ms = started.elapsed().as_millis() as u64,
        "state recovered"
    );
    Ok((engine, snap_seq, history.into()))
}

impl EngineTask {
    /// An engine thread over a recovered engine and its journal.
    pub(crate) fn new(
        engine: Engine,
        journal: Box<dyn Journal>,
        fanout: Fanout,
        shared: Arc<Shared>,
        settings: &crate::settings::Settings,
        last_snapshot_seq: u64,
    ) -> Self {
        EngineTask {
            engine,
            journal,
            fanout,
            shared,
            snapshot_every: settings.snapshot_every_events,
            history_events: settings.hub.history_events,
            last_snapshot_seq,
            position_interval: settings.hub.position_interval,
            last_position_flush: Instant::now(),
            last_prune: Instant::now(),
        }
    }

    /// The thread's loop: batch, apply, commit, publish, reply.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(1024);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
        if let Err(e) = self.write_snapshot() {
            tracing::warn!(error = %e, "final snapshot failed");
        }
        tracing::info!("engine thread stopped");
    }

    fn process(&mut self, batch: &mut Vec<Request>) {
        let now = now_ms();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut later: Vec<Request> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
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
                    if !healthy {
                        fail(
                            reply,
                            ErrorCode::Internal,
                            "the journal failed: nothing can be saved",
                        );
                        continue;
                    }
                    let mut assigned = false;
                    let result = self.engine.apply(&actor, command, now).map(|mut applied| {
                        // The events move to the batch; the reply keeps what it needs.
                        let own = std::mem::take(&mut applied.events);
                        assigned = own.iter().any(|e| e.change == opcenter_core::Change::Assigned);
                        events.extend(own);
                        if let Some(p) = applied.position.take() {
                            self.fanout.stage_position(p);
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
                        match self.engine.apply(&Actor::system(), Command::Tick, now) {
                            Ok(applied) => events.extend(applied.events),
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
                    if let Some(p) = profile {
                        if !healthy {
                            outbox.push_error(id, ErrorCode::Internal, "the journal failed");
                            continue;
                        }
                        match self.engine.apply(&actor, Command::RegisterUnit(p), now) {
                            Ok(applied) => events.extend(applied.events),
                            Err(e) => {
                                outbox.push_error(id, (&e).into(), &e.to_string());
                                continue;
                            }
                        }
                    }
                    later.push(Request::Hello {
                        outbox,
                        id,
                        actor,
                        role,
                        profile: None,
                    });
                }
                other => later.push(other),
            }
        }

        // Group commit: everything this batch changed, in one append.
        let committed = self.commit(&events);
        match committed {
            Ok(first_seq) => {
                for (i, event) in events.into_iter().enumerate() {
                    self.fanout.publish(first_seq + i as u64, Arc::new(event));
                }
                self.fanout.wake();
                for Outcome {
                    reply,
                    result,
                    name,
                    received,
                    assigned,
                } in outcomes
                {
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
                    deliver(reply, result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal append failed: refusing to acknowledge from now on");
                self.shared.healthy.store(false, Ordering::SeqCst);
                for Outcome { reply, name, .. } in outcomes {
                    metrics::counter!(metric::COMMANDS, "type" => name, "outcome" => "internal").increment(1);
                    fail(reply, ErrorCode::Internal, "could not make the change durable");
                }
            }
        }

        for req in later {
            self.serve_after_commit(req, now);
        }
        self.maybe_snapshot();
    }

    fn serve_after_commit(&mut self, req: Request, now: i64) {
        match req {
            Request::Hello {
                outbox,
                id,
                actor,
                role,
                ..
            } => {
                let seq = self.journal.last_seq();
                let unit = actor.unit_id().and_then(|u| self.engine.unit(u));
                let incident = unit.map(|u| u.incident_id.as_deref().and_then(|i| self.engine.incident(i)));
                let body = HelloOk {
                    session: &outbox.session,
                    role: role.as_str(),
                    epoch: &self.shared.epoch,
                    seq,
                    unit,
                    incident,
                };
                if let Some(m) = wire::ok(outbox.encoding, id, body) {
                    outbox.push(m);
                }
            }
            Request::Subscribe {
                outbox,
                id,
                unit,
                subscribe,
            } => {
                let seq = self.journal.last_seq();
                self.fanout.subscribe(
                    &self.engine,
                    &*self.journal,
                    &self.shared.epoch,
                    seq,
                    outbox,
                    id,
                    unit,
                    subscribe,
                );
            }
            Request::Recommend { outbox, id, query } => match self.engine.recommend(&query, now) {
                Ok(r) => {
                    metrics::counter!(metric::COMMANDS, "type" => "incident.recommend", "outcome" => "ok")
                        .increment(1);
                    if let Some(m) = wire::ok(
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
            },
            Request::GetIncident { incident_id, reply } => {
                let _ = reply.send(self.engine.incident(&incident_id).cloned());
            }
            Request::Tick => {
                if self.last_position_flush.elapsed() >= self.position_interval {
                    self.last_position_flush = Instant::now();
                    self.fanout.flush_positions();
                }
                // Closed sessions only cost a skipped push until pruned: once a second is enough.
                if self.last_prune.elapsed() >= std::time::Duration::from_secs(1) {
                    self.last_prune = Instant::now();
                    self.fanout.prune_closed();
                }
            }
            // Commands were applied before the commit and never reach this list.
            Request::Command { reply, .. } => fail(reply, ErrorCode::Internal, "command out of order"),
        }
    }

    /// Appends the batch's events; returns the seq of the first one.
    fn commit(&mut self, events: &[Event]) -> Result<u64, DurabilityError> {
        let next = self.journal.last_seq() + 1;
        if events.is_empty() {
            return Ok(next);
        }
        let mut payloads = Vec::with_capacity(events.len());
        for e in events {
            payloads.push(record::encode_event(e)?);
        }
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        match self.journal.append_batch(&refs) {
            Ok(range) => {
                metrics::histogram!(metric::JOURNAL_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::histogram!(metric::JOURNAL_BATCH_EVENTS).record(events.len() as f64);
                Ok(*range.start())
            }
            Err(e) if opcenter_cluster::ClusterError::of(&e).is_some_and(|c| c.is_fenced()) => {
                // Another engine writes this region: nothing of ours may be
                // acknowledged or snapshotted again; the server stops and exits.
                self.shared.fenced.send_replace(Some(e.to_string()));
                Err(e.into())
            }
            Err(e) => {
                // The engine already applied this batch, but none of it is durable:
                // rebuild it from what the journal holds, so reads (GET, subscribe
                // snapshots) and a final snapshot never show unacknowledged changes.
                match recover(self.engine.config().clone(), &*self.journal, 0) {
                    Ok((engine, _, _)) => self.engine = engine,
                    Err(re) => tracing::error!(error = %re, "could not roll the engine back to the journal"),
                }
                Err(e.into())
            }
        }
    }

    fn maybe_snapshot(&mut self) {
        if !self.shared.healthy.load(Ordering::Relaxed) {
            return;
        }
        let last = self.journal.last_seq();
        if last.saturating_sub(self.last_snapshot_seq) < self.snapshot_every {
            return;
        }
        if let Err(e) = self.write_snapshot() {
            tracing::warn!(error = %e, "snapshot failed; will retry");
            return;
        }
        match self.journal.compact(self.history_events) {
            Ok(first) => tracing::debug!(first_seq = first, "journal compacted"),
            Err(e) => tracing::warn!(error = %e, "compaction failed"),
        }
    }

    fn write_snapshot(&mut self) -> Result<(), DurabilityError> {
        // After a journal failure the engine may hold changes the journal lacks:
        // a snapshot of it would make them durable behind the clients' backs.
        if !self.shared.healthy.load(Ordering::SeqCst) {
            return Err(DurabilityError::Unhealthy);
        }
        let seq = self.journal.last_seq();
        if seq == self.last_snapshot_seq {
            return Ok(());
        }
        let started = Instant::now();
        let bytes = record::encode_snapshot(&self.engine.snapshot())?;
        self.journal.write_snapshot(seq, &bytes)?;
        self.last_snapshot_seq = seq;
        tracing::info!(
            seq,
            bytes = bytes.len(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }
}

fn deliver(reply: ReplyTo, result: Result<Applied, CoreError>) {
    match reply {
        ReplyTo::Session { outbox, id } => match result {
            Ok(applied) => {
                let Some(id) = id else { return };
                let msg = match &applied.reply {
                    Reply::None | Reply::Registered { .. } => wire::ok(outbox.encoding, Some(id), Empty {}),
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
        },
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

fn fail(reply: ReplyTo, code: ErrorCode, message: &str) {
    match reply {
        ReplyTo::Session { outbox, id } => outbox.push_error(id, code, message),
        ReplyTo::Http(tx) => {
            let _ = tx.send(Err((code, message.into())));
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
