//! The read model: a copy of the dispatch state, fed by committed batches,
//! that answers every heavy read so the engine thread only writes.
//!
//! The engine thread sends each [`Committed`] batch (first seq, events, the
//! position fixes it accepted) over an unbounded channel right after the
//! commit, and never waits for this thread. This thread folds the batch into
//! its own incidents and units, keeps the last `hub.history_events` events
//! (up to 20 000 in memory) and then serves, in channel order:
//! - `subscribe`: the snapshot at the cut, or the replay of a `since` resume
//!   from memory or (deep resumes) from the journal on disk, into the place the
//!   engine thread reserved in the session's queue when it registered the
//!   subscription (see [`crate::fanout`]). Because the engine thread sends the
//!   batch before the subscribe, the state here is exactly at the cut. A
//!   replay is a [`Job`] served `hub.replay_step_events` at a time
//!   ([`crate::replay`]): everything waiting in the channel and a due position
//!   batch go before each next step;
//! - position batches to `positions` subscribers, per area, every
//!   `hub.position_interval_ms`;
//! - `GET /v1/incidents/{id}` and `GET /v1/incidents/{id}/eido`;
//! - the periodic state snapshot (serialize, write, fsync, compact).
//!
//! Its only input is the [`Committed`] message, not engine internals: on a hub
//! node (role `hub`) the feed thread ([`crate::mirror`]) sends the same message
//! for each batch it follows from the region's stream.
//!
//! The thread runs `hub.reads_nice` below the engine thread and the network
//! workers ([`lower_priority`]): on a small machine a burst of deep resumes
//! would otherwise take the CPU the single writer needs to dispatch.
//!
//! Owns: the read copy, the in-memory history, the positions subscribers.
//! Must never: block the engine thread (the channel is unbounded and the
//! journal lock is taken one bounded chunk at a time), or hold commits and
//! positions behind more than one replay step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use tokio::sync::oneshot;

use opcenter_core::{EngineSnapshot, Event, EventBody, Incident, PositionItem, Unit};
use opcenter_proto::client::{SubTopic, Subscribe};
use opcenter_proto::server::{OkReply, SubscribeOk, Subscribed};
use opcenter_store::Journal;

use crate::engine_task::Shared;
use crate::fanout::EventFrames;
use crate::frame::Prepared;
use crate::outbox::Outbox;
use crate::record::{self, DurabilityError};
use crate::replay::{Filter, FrameCache, JOURNAL_CHUNK, Job, Progress, Sources};
use crate::snapshot::SnapshotCache;
use crate::wire;

/// The journal, shared by the engine thread (appends) and the read model
/// (deep resumes, snapshots). Each holder takes it for one bounded step.
pub(crate) type SharedJournal = Arc<Mutex<Box<dyn Journal>>>;

/// Locks the journal; a panic elsewhere while holding it leaves the journal
/// itself consistent (its own poisoning guards appends), so recover the guard.
pub(crate) fn lock(journal: &SharedJournal) -> MutexGuard<'_, Box<dyn Journal>> {
    journal.lock().unwrap_or_else(|e| e.into_inner())
}

/// One group commit, as the read model needs it.
pub(crate) struct Committed {
    /// Seq of `events[0]` (or the next seq, when `events` is empty).
    pub(crate) first_seq: u64,
    pub(crate) events: Vec<Arc<Event>>,
    /// The frames the live fan-out made for each of `events` (may be empty):
    /// kept for replays so they do not encode the same event again.
    pub(crate) frames: Vec<EventFrames>,
    /// Position fixes accepted in this batch (not journaled).
    pub(crate) positions: Vec<PositionItem>,
    /// The engine's next incident number after this batch (for snapshots).
    pub(crate) next_incident_no: u64,
    /// Every `storage.snapshot_every_events`: the engine's state after this
    /// batch (with its retention and idempotency keys), to serialize and store
    /// here rather than on the engine thread.
    pub(crate) state: Option<Box<EngineSnapshot>>,
    /// Incidents the engine retired (`storage.retain_closed_h`) since the last
    /// batch: the read copy drops them too, and lookups go to the journal.
    pub(crate) retired: Vec<String>,
}

/// What the read model serves.
pub(crate) enum ReadRequest {
    Committed(Committed),
    /// A `subscribe` the engine thread registered at `cut`, reply in `slot`.
    Subscribe {
        cut: u64,
        outbox: Arc<Outbox>,
        slot: u64,
        id: Option<u64>,
        unit: Option<String>,
        subscribe: Subscribe,
    },
    /// The session left this region's subscriptions (a desk's session).
    Unsubscribe {
        outbox: Arc<Outbox>,
    },
    /// `GET /v1/incidents/{id}`.
    GetIncident {
        incident_id: String,
        reply: oneshot::Sender<Option<Incident>>,
    },
    /// `GET /v1/reports/{key}`: a citizen's report's progress.
    ReportStatus {
        key: String,
        reply: oneshot::Sender<Option<crate::citizen::ReportStatus>>,
    },
    /// `GET /v1/incidents/{id}/eido`: the incident and its assigned units, read
    /// together so the export is one consistent moment.
    GetIncidentWithUnits {
        incident_id: String,
        reply: oneshot::Sender<Option<(Incident, Vec<Unit>)>>,
    },
}

impl ReadRequest {
    /// Snapshots, replays and lookups: the work [`Budget`] paces (a committed
    /// batch is folded at once, whatever the budget).
    fn is_heavy(&self) -> bool {
        !matches!(self, ReadRequest::Committed(_))
    }
}

/// The share of the time the read thread may spend on heavy reads (`hub.reads_share`
/// of wall time, with up to [`Budget::BURST`] saved up): on a small machine a
/// loop of re-subscribing consoles would otherwise keep a core busy that the
/// engine thread and the network workers need to dispatch.
struct Budget {
    /// 1.0: no pacing.
    share: f64,
    /// Seconds of heavy work that may run now (negative: owed).
    credit: f64,
    last: Instant,
}

impl Budget {
    const BURST: f64 = 0.25;

    fn new(share: f64) -> Self {
        Budget {
            share,
            credit: Self::BURST,
            last: Instant::now(),
        }
    }

    fn spend(&mut self, took: Duration) {
        if self.share < 1.0 {
            self.credit -= took.as_secs_f64();
        }
    }

    /// How long to wait before more heavy work, if over the share.
    fn over(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.share;
        self.last = now;
        self.credit = (self.credit + earned).min(Self::BURST);
        (self.credit < 0.0).then(|| Duration::from_secs_f64(-self.credit / self.share))
    }
}

/// The read copy of the state: incidents, units, the newest events and the
/// citizens' report progress, at one seq. The read model builds it from a
/// recovered state on its own thread ([`ReadCopy::new`]); a warm standby keeps
/// one as it follows the stream ([`crate::engine_task::Replay`]) and hands it
/// over, so a takeover neither copies the engine's state nor rebuilds these maps.
pub(crate) struct ReadCopy {
    incidents: HashMap<String, Arc<Incident>>,
    units: HashMap<String, Unit>,
    next_incident_no: u64,
    /// Last seq folded in.
    seq: u64,
    history: VecDeque<(u64, Arc<Event>)>,
    memory_history: usize,
    /// Gateway keys and their reports' progress (`GET /v1/reports/{key}`).
    citizen: crate::citizen::CitizenBook,
}

impl ReadCopy {
    /// The copy of a recovered state (`memory_history`: events kept in memory).
    pub(crate) fn new(start: Start, key_ttl_ms: i64, memory_history: usize) -> Self {
        let mut citizen =
            crate::citizen::CitizenBook::new(key_ttl_ms, &start.state.keys, &start.state.incidents);
        // The retained history gives the times of steps taken before the start.
        for (_, e) in &start.history {
            if let EventBody::Incident(inc) = &e.body {
                citizen.fold(inc);
            }
        }
        ReadCopy {
            citizen,
            incidents: start
                .state
                .incidents
                .into_iter()
                .map(|i| (i.id.clone(), i))
                .collect(),
            units: start.state.units.into_iter().map(|u| (u.id.clone(), u)).collect(),
            next_incident_no: start.state.next_incident_no,
            seq: start.seq,
            history: start.history.into(),
            memory_history: memory_history.max(1),
        }
    }

    /// Folds in the event at `seq` (the history is trimmed by [`ReadCopy::trim`]).
    pub(crate) fn apply(&mut self, seq: u64, event: Arc<Event>) {
        match &event.body {
            EventBody::Incident(inc) => {
                self.citizen.fold(inc);
                self.incidents.insert(inc.id.clone(), Arc::new(inc.clone()));
            }
            EventBody::Unit(unit) => {
                self.units.insert(unit.id.clone(), unit.clone());
            }
            // A per-tablet view of an incident whose own event is on `incidents`.
            EventBody::Assignment { .. } => {}
        }
        self.history.push_back((seq, event));
        self.seq = seq;
    }

    /// Keeps the newest `memory_history` events.
    pub(crate) fn trim(&mut self) {
        while self.history.len() > self.memory_history {
            self.history.pop_front();
        }
    }

    /// The engine's next incident number, as of the last event folded in.
    pub(crate) fn set_next_incident_no(&mut self, no: u64) {
        self.next_incident_no = no;
    }

    /// Last seq folded in.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The same incidents, units, next number, seq and history (by seq and
    /// event) as `other`.
    #[cfg(test)]
    pub(crate) fn same_as(&self, other: &ReadCopy) -> bool {
        let same_history = self.history.len() == other.history.len()
            && self
                .history
                .iter()
                .zip(&other.history)
                .all(|((a, ea), (b, eb))| a == b && ea == eb);
        self.incidents == other.incidents
            && self.units == other.units
            && self.next_incident_no == other.next_incident_no
            && self.seq == other.seq
            && same_history
    }

    /// A citizen's report's progress, as `GET /v1/reports/{key}` gives it.
    #[cfg(test)]
    pub(crate) fn report_status(&self, key: &str, now_ms: i64) -> Option<crate::citizen::ReportStatus> {
        self.citizen.status(key, now_ms)
    }

    /// Takes the units as the engine holds them now (a takeover marks every
    /// unit's session lost without an event) and stands at `seq`, the
    /// journal's end (a takeover record follows the last event).
    pub(crate) fn restart_at<'a>(&mut self, units: impl Iterator<Item = &'a Unit>, seq: u64) {
        self.units = units.map(|u| (u.id.clone(), u.clone())).collect();
        self.seq = seq;
    }
}

/// Where a read model starts.
pub(crate) enum ReadStart {
    /// A recovered state, to copy on the read model's thread.
    Cold(Start),
    /// A warm standby's copy, current to the engine's state.
    Warm(ReadCopy),
}

impl ReadStart {
    /// The copy to start from (built here for [`ReadStart::Cold`]).
    pub(crate) fn into_copy(self, key_ttl_ms: i64, memory_history: usize) -> ReadCopy {
        match self {
            ReadStart::Cold(start) => ReadCopy::new(start, key_ttl_ms, memory_history),
            ReadStart::Warm(copy) => copy,
        }
    }
}

/// The read copy and what it serves.
pub(crate) struct ReadModel {
    copy: ReadCopy,
    journal: SharedJournal,
    shared: Arc<Shared>,
    /// Positions subscribers, with their subscription (`area`, `agencies`).
    positions: Vec<(Arc<Outbox>, Subscribe)>,
    staged: HashMap<String, PositionItem>,
    position_interval: Duration,
    last_flush: Instant,
    history_events: u64,
    /// `since` replays in progress, served round robin one step at a time.
    jobs: VecDeque<Job>,
    replay_step: usize,
    cache: FrameCache,
    /// The consoles' subscribe snapshot, encoded per object and per batch.
    snapshots: SnapshotCache,
    budget: Budget,
}

/// Where the read model starts: the recovered state at `seq`.
pub(crate) struct Start {
    pub(crate) state: EngineSnapshot,
    pub(crate) seq: u64,
    /// The newest events, oldest first.
    pub(crate) history: Vec<(u64, Arc<Event>)>,
}

impl ReadModel {
    pub(crate) fn new(
        copy: ReadCopy,
        journal: SharedJournal,
        shared: Arc<Shared>,
        settings: &crate::settings::Settings,
    ) -> Self {
        ReadModel {
            copy,
            journal,
            shared,
            positions: Vec::new(),
            staged: HashMap::new(),
            position_interval: settings.hub.position_interval,
            last_flush: Instant::now(),
            history_events: settings.hub.history_events,
            jobs: VecDeque::new(),
            replay_step: settings.hub.replay_step_events.max(1),
            cache: FrameCache::new(settings.hub.frame_cache_bytes),
            snapshots: SnapshotCache::default(),
            budget: Budget::new(settings.hub.reads_share),
        }
    }

    /// Serves until the engine thread and every other sender are gone.
    /// Call from the read model's own thread: it lowers that thread's priority.
    ///
    /// Each turn serves one request from the channel; only when the channel is
    /// empty does it run one step of the next replay job (and it waits for the
    /// channel only when there are no jobs). So a committed batch, a snapshot or
    /// a due position batch waits for at most one replay step.
    pub(crate) fn run(mut self, rx: std::sync::mpsc::Receiver<ReadRequest>) {
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        loop {
            let wait = self.position_interval.saturating_sub(self.last_flush.elapsed());
            let next = if self.jobs.is_empty() {
                rx.recv_timeout(wait)
                    .map_err(|e| e == RecvTimeoutError::Disconnected)
            } else {
                rx.try_recv().map_err(|e| e == TryRecvError::Disconnected)
            };
            match next {
                Ok(req) if req.is_heavy() => {
                    self.pace();
                    let started = Instant::now();
                    self.serve(req);
                    self.budget.spend(started.elapsed());
                }
                Ok(req) => self.serve(req),
                Err(true) => break,
                Err(false) => {
                    self.pace();
                    let started = Instant::now();
                    self.step_a_job();
                    self.budget.spend(started.elapsed());
                }
            }
            if self.last_flush.elapsed() >= self.position_interval {
                self.last_flush = Instant::now();
                self.flush_positions();
            }
        }
        tracing::info!("read model stopped");
    }

    /// Waits while heavy reads are over their share (`hub.reads_share`),
    /// sending the due position batches meanwhile.
    fn pace(&mut self) {
        while let Some(wait) = self.budget.over() {
            let to_flush = self.position_interval.saturating_sub(self.last_flush.elapsed());
            let pause = wait.min(to_flush).max(Duration::from_millis(1));
            std::thread::sleep(pause);
            metrics::counter!(crate::metric::READS_PACED_MS).increment(pause.as_millis() as u64);
            if self.last_flush.elapsed() >= self.position_interval {
                self.last_flush = Instant::now();
                self.flush_positions();
            }
        }
    }

    /// One step of the replay job whose turn it is; it goes to the back of the
    /// line unless it is done.
    fn step_a_job(&mut self) {
        let Some(mut job) = self.jobs.pop_front() else {
            return;
        };
        let mut sources = Sources {
            cache: &mut self.cache,
            history: &self.copy.history,
            journal: &self.journal,
        };
        if job.step(&mut sources, self.replay_step) == Progress::More {
            self.jobs.push_back(job);
        }
        self.cache.trim();
    }

    fn serve(&mut self, req: ReadRequest) {
        match req {
            ReadRequest::Committed(mut batch) => {
                let state = batch.state.take();
                for id in std::mem::take(&mut batch.retired) {
                    self.copy.incidents.remove(&id);
                    self.snapshots.changed_incident(&id);
                }
                self.fold(batch);
                if let Some(mut state) = state {
                    // Sorted here, off the engine thread: equal states store equal bytes.
                    state.sort();
                    self.store_state(&state);
                }
            }
            ReadRequest::Subscribe {
                cut,
                outbox,
                slot,
                id,
                unit,
                subscribe,
            } => {
                debug_assert_eq!(cut, self.copy.seq, "the batch precedes its subscribers");
                self.subscribe(cut, outbox, slot, id, unit, subscribe);
            }
            ReadRequest::Unsubscribe { outbox } => {
                self.positions.retain(|(o, _)| !Arc::ptr_eq(o, &outbox));
                // A replay into it from this region stops where it is.
                self.abandon_replay(&outbox);
            }
            ReadRequest::GetIncident { incident_id, reply } => {
                // Retention took closed incidents out of memory; the journal has them.
                let found = self
                    .copy
                    .incidents
                    .get(&incident_id)
                    .map(|i| Incident::clone(i))
                    .or_else(|| self.journal_incident(&incident_id));
                let _ = reply.send(found);
            }
            ReadRequest::ReportStatus { key, reply } => {
                let now = crate::engine_task::now_ms();
                self.copy.citizen.tick(now);
                let _ = reply.send(self.copy.citizen.status(&key, now));
            }
            ReadRequest::GetIncidentWithUnits { incident_id, reply } => {
                let found = self
                    .copy
                    .incidents
                    .get(&incident_id)
                    .map(|i| Incident::clone(i))
                    .or_else(|| self.journal_incident(&incident_id))
                    .map(|i| {
                        let units = i
                            .units
                            .iter()
                            .filter_map(|u| self.copy.units.get(u).cloned())
                            .collect();
                        (i, units)
                    });
                let _ = reply.send(found);
            }
        }
    }

    fn fold(&mut self, batch: Committed) {
        let mut frames = batch.frames.into_iter();
        for (i, event) in batch.events.into_iter().enumerate() {
            let seq = batch.first_seq + i as u64;
            if self.cache.keeps_any() {
                self.cache
                    .insert(seq, event.clone(), frames.next().unwrap_or_default());
            }
            match &event.body {
                EventBody::Incident(inc) => self.snapshots.changed_incident(&inc.id),
                EventBody::Unit(unit) => self.snapshots.changed_unit(&unit.id),
                EventBody::Assignment { .. } => {}
            }
            self.copy.apply(seq, event);
        }
        self.copy.trim();
        self.cache.trim();
        for p in batch.positions {
            if let Some(u) = self.copy.units.get_mut(&p.unit_id) {
                self.snapshots.changed_unit(&p.unit_id);
                u.location = Some(opcenter_core::Location {
                    lat: p.lat,
                    lon: p.lon,
                });
                u.location_ms = Some(p.at_ms);
                u.heading = p.heading;
                u.speed = p.speed;
            }
            self.staged.insert(p.unit_id.clone(), p);
        }
        self.copy.next_incident_no = batch.next_incident_no;
    }

    /// Sends the staged positions: one shared frame per encoding for subscribers
    /// without an area, a filtered one for each subscriber with an area.
    fn flush_positions(&mut self) {
        self.positions.retain(|(o, _)| !o.is_closed());
        if self.staged.is_empty() {
            return;
        }
        let items: Arc<[Arc<PositionItem>]> = self.staged.drain().map(|(_, i)| Arc::new(i)).collect();
        // One frame per encoding, and per encoding with the region.
        let mut shared: [Option<Message>; 4] = [None, None, None, None];
        let units = &self.copy.units;
        let agency_of = |i: &PositionItem| units.get(&i.unit_id).and_then(|u| u.agency.as_deref());
        for (outbox, sub) in &self.positions {
            let region = self.shared.region.as_deref().filter(|_| outbox.region_tags());
            match (sub.area, &sub.agencies) {
                (None, None) => {
                    let slot = &mut shared[outbox.encoding.index() + 2 * usize::from(region.is_some())];
                    if slot.is_none() {
                        let refs: Vec<&PositionItem> = items.iter().map(|i| i.as_ref()).collect();
                        *slot = wire::positions_frame(outbox.encoding, &refs, region);
                    }
                    if let Some(frame) = slot {
                        outbox.push_positions_of(region, frame, &items);
                    }
                }
                _ => {
                    let inside: Arc<[Arc<PositionItem>]> = items
                        .iter()
                        .filter(|i| sub.area.is_none_or(|a| a.contains(i.lat, i.lon)))
                        .filter(|i| sub.wants_agency(agency_of(i)))
                        .cloned()
                        .collect();
                    if inside.is_empty() {
                        continue;
                    }
                    let refs: Vec<&PositionItem> = inside.iter().map(|i| i.as_ref()).collect();
                    if let Some(frame) = wire::positions_frame(outbox.encoding, &refs, region) {
                        outbox.push_positions_of(region, &frame, &inside);
                    }
                }
            }
        }
    }

    /// Ends the replay into `outbox` in progress, if any, where it is.
    fn abandon_replay(&mut self, outbox: &Arc<Outbox>) {
        if let Some(job) = self
            .jobs
            .iter()
            .position(|j| j.is_for(outbox))
            .and_then(|at| self.jobs.remove(at))
        {
            job.abandon();
        }
    }

    /// Fills the reserved place with the reply: the snapshot inside it, or the
    /// `ok` of a `since` resume followed by a replay [`Job`] for the events
    /// after `since` up to the cut. Then registers for positions.
    fn subscribe(
        &mut self,
        cut: u64,
        outbox: Arc<Outbox>,
        slot: u64,
        id: Option<u64>,
        unit: Option<String>,
        sub: Subscribe,
    ) {
        // A new subscription replaces the session's previous one, and with it
        // a replay still in progress: its reply is the new starting point.
        self.abandon_replay(&outbox);
        let wants = |t: SubTopic| sub.topics.contains(&t);
        let epoch = self.shared.epoch.as_str();
        let after = sub
            .since
            .as_ref()
            .filter(|s| s.epoch == epoch && s.seq <= cut && self.reaches_back(s.seq))
            .map(|s| s.seq);
        let recovered = after.is_some();
        // A multi-region subscription: each region answers `subscribed`, with
        // it, and its replayed events carry it too.
        let region = self.shared.region.clone().filter(|_| outbox.region_tags());
        let reply: Vec<Prepared> = match (&unit, recovered) {
            // A console's snapshot: every open incident and every unit (of its
            // agencies), the same bytes for every console until the next batch.
            (None, false) => {
                let body = SubscribeOk {
                    epoch,
                    seq: cut,
                    recovered,
                    incidents: Some(Vec::new()),
                    units: Some(Vec::new()),
                };
                let incidents = self
                    .copy
                    .incidents
                    .values()
                    .map(Arc::as_ref)
                    .filter(|i| i.is_open());
                let units = self
                    .copy
                    .units
                    .values()
                    .filter(|u| sub.wants_agency(u.agency.as_deref()));
                let (enc, agencies) = (outbox.encoding, &sub.agencies);
                match region.as_deref() {
                    Some(r) => {
                        let envelope = Subscribed::new(id, r, body);
                        self.snapshots.reply(enc, &envelope, agencies, incidents, units)
                    }
                    // Without an `id` the client asked for no reply (PROTOCOL.md §3).
                    None => id.and_then(|id| {
                        let envelope = OkReply::new(Some(id), body);
                        self.snapshots.reply(enc, &envelope, agencies, incidents, units)
                    }),
                }
                .into_iter()
                .collect()
            }
            // A tablet's snapshot is its own unit and its own open incident;
            // a recovered resume has none.
            (unit, recovered) => {
                let (incidents, units) = match (unit, recovered) {
                    (Some(u), false) => {
                        let me = self.copy.units.get(u);
                        let inc = me
                            .and_then(|m| m.incident_id.as_deref())
                            .and_then(|i| self.copy.incidents.get(i))
                            .map(Arc::as_ref);
                        (Some(inc.into_iter().collect()), Some(me.into_iter().collect()))
                    }
                    _ => (None, None),
                };
                let body = SubscribeOk {
                    epoch,
                    seq: cut,
                    recovered,
                    incidents,
                    units,
                };
                match region.as_deref() {
                    Some(r) => wire::message(outbox.encoding, &Subscribed::new(id, r, body)),
                    // Without an `id` the client asked for no reply (PROTOCOL.md §3).
                    None => wire::ok_if_asked(outbox.encoding, id, body),
                }
                .map(|m| Prepared::of(&m))
                .into_iter()
                .collect()
            }
        };
        match after {
            Some(after) if after < cut => {
                outbox.fill_part(slot, reply, false);
                let filter = Filter::new(&sub, unit);
                self.jobs
                    .push_back(Job::new(outbox.clone(), slot, filter, region, after, cut));
            }
            _ => outbox.fill(slot, reply),
        }

        self.positions.retain(|(o, _)| !Arc::ptr_eq(o, &outbox));
        if wants(SubTopic::Positions) {
            self.positions.push((outbox, sub));
        }
    }

    /// Whether every event after `after` is still here (in memory or in the
    /// journal) to replay.
    fn reaches_back(&self, after: u64) -> bool {
        after == self.copy.seq
            || self
                .copy
                .history
                .front()
                .is_some_and(|(first, _)| *first <= after + 1)
            || lock(&self.journal).reaches_back(after)
    }

    /// A retired incident from the journal (retention took it out of memory),
    /// read one chunk per lock hold, as deep resumes are: commits go on meanwhile.
    fn journal_incident(&self, id: &str) -> Option<Incident> {
        let first = lock(&self.journal).first_seq();
        let chunk = |after| record::read_from(&**lock(&self.journal), after, JOURNAL_CHUNK);
        record::find_incident(first, chunk, id)
            .inspect_err(|e| tracing::warn!(error = %e, "journal lookup failed"))
            .ok()
            .flatten()
    }

    /// Stores the engine's state copy at the current seq, then compacts.
    fn store_state(&mut self, state: &EngineSnapshot) {
        if let Err(e) = self.write_snapshot(state) {
            tracing::warn!(error = %e, "snapshot failed; the next one retries");
            return;
        }
        // Replays in progress keep what they still need to read.
        let needed = self.jobs.iter().map(Job::needs_from).min();
        let keep = needed.map_or(self.history_events, |from| {
            self.history_events.max(self.copy.seq.saturating_sub(from) + 1)
        });
        match lock(&self.journal).compact(keep) {
            Ok(first) => tracing::debug!(first_seq = first, "journal compacted"),
            Err(e) => tracing::warn!(error = %e, "compaction failed"),
        }
    }

    /// Serializes the engine's state copy (here, off the engine thread) and
    /// stores it. The copy was taken right after a commit, so it never holds
    /// anything the journal lacks.
    fn write_snapshot(&mut self, state: &EngineSnapshot) -> Result<(), DurabilityError> {
        store_snapshot(&self.journal, &self.shared, self.copy.seq, state)
    }
}

/// Stores `state` as the snapshot at `seq`: both the read model's periodic
/// snapshots and the engine thread's final one at shutdown. Refused once the
/// journal failed: the state may then hold changes the journal lacks, and a
/// snapshot would make them durable behind the clients' backs.
/// Encoding, writing and fsyncing run without the journal lock (the lock only
/// checks the seq), so commits never wait behind a snapshot.
pub(crate) fn store_snapshot(
    journal: &SharedJournal,
    shared: &Shared,
    seq: u64,
    state: &EngineSnapshot,
) -> Result<(), DurabilityError> {
    if !shared.healthy.load(Ordering::SeqCst) {
        return Err(DurabilityError::Unhealthy);
    }
    let started = Instant::now();
    let bytes = record::encode_snapshot(state)?;
    opcenter_store::write_snapshot_shared(journal, seq, &bytes)?;
    tracing::info!(
        seq,
        bytes = bytes.len(),
        ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn heavy_reads_past_their_share_wait_in_proportion() {
        let mut b = super::Budget::new(0.5);
        assert_eq!(b.over(), None, "a burst is saved up at start");
        b.spend(std::time::Duration::from_secs(10));
        // 9.75 s owed at half a core: 19.5 s to wait, less the time since.
        let wait = b.over().expect("over the share");
        assert!(wait <= std::time::Duration::from_millis(19_500), "{wait:?}");
        let mut free = super::Budget::new(1.0);
        free.spend(std::time::Duration::from_secs(10));
        assert_eq!(free.over(), None, "1.0: no pacing");
    }
}
