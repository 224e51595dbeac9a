//! Fan-out: who receives which event, and the history `since` resumes from.
//!
//! Owned by the engine thread alone (no locks): it publishes each committed
//! event to the sessions subscribed to its topic, encoding it at most once per
//! encoding and handing every recipient the same buffer. Subscriptions are
//! registered on the same thread right after a commit, which is what makes the
//! cut of a `subscribe` exact: the snapshot reflects every event up to it,
//! replayed events are ≤ it, live events are > it.
//!
//! Owns: subscriber lists, in-memory history, position batching. Must never:
//! encode per subscriber what is the same for all.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Message;

use opcenter_core::{Engine, Event, Incident, PositionItem, Topic, Unit};
use opcenter_proto::Encoding;
use opcenter_proto::client::{Area, SubTopic, Subscribe};
use opcenter_proto::server::{EventFrame, SubscribeOk};
use opcenter_store::Journal;

use crate::outbox::Outbox;
use crate::{metric, record, wire};

/// Subscriber lists and history.
pub(crate) struct Fanout {
    incidents: Vec<Arc<Outbox>>,
    units: Vec<Arc<Outbox>>,
    positions: Vec<(Arc<Outbox>, Option<Area>)>,
    assignments: HashMap<String, Vec<Arc<Outbox>>>,
    history: VecDeque<(u64, Arc<Event>)>,
    memory_history: usize,
    staged_positions: HashMap<String, PositionItem>,
    /// Tablets with an assignment queued but not yet woken: woken first.
    to_wake_first: Vec<Arc<Outbox>>,
    /// Other sessions with events queued but not yet woken.
    to_wake: Vec<Arc<Outbox>>,
    /// Deliveries queued since the last wake (counted once per batch, not per event).
    deliveries: u64,
}

/// Encodes an event lazily, once per encoding.
struct Lazy<'a> {
    seq: u64,
    event: &'a Event,
    frames: [Option<Message>; 2],
}

impl<'a> Lazy<'a> {
    fn new(seq: u64, event: &'a Event) -> Self {
        Lazy {
            seq,
            event,
            frames: [None, None],
        }
    }

    fn get(&mut self, encoding: Encoding) -> Option<&Message> {
        let slot = &mut self.frames[encoding.index()];
        if slot.is_none() {
            *slot = wire::message(encoding, &EventFrame::new(self.seq, self.event));
        }
        slot.as_ref()
    }
}

impl Fanout {
    /// Empty lists; `history` seeds the in-memory history (oldest first).
    pub(crate) fn new(memory_history: usize, history: Vec<(u64, Arc<Event>)>) -> Self {
        Fanout {
            incidents: Vec::new(),
            units: Vec::new(),
            positions: Vec::new(),
            assignments: HashMap::new(),
            history: history.into(),
            memory_history: memory_history.max(1),
            staged_positions: HashMap::new(),
            to_wake_first: Vec::new(),
            to_wake: Vec::new(),
            deliveries: 0,
        }
    }

    /// Queues a committed event for its subscribers and records it for resumes.
    /// Writers are woken by [`Fanout::wake`], once per batch.
    pub(crate) fn publish(&mut self, seq: u64, event: Arc<Event>) {
        let mut lazy = Lazy::new(seq, &event);
        let urgent = event.topic() == Topic::Assignments;
        let list: &[Arc<Outbox>] = match event.topic() {
            Topic::Incidents => &self.incidents,
            Topic::Units => &self.units,
            Topic::Assignments => match event.assignment_unit().and_then(|u| self.assignments.get(u)) {
                Some(list) => list,
                None => &[],
            },
        };
        let to_wake = if urgent {
            &mut self.to_wake_first
        } else {
            &mut self.to_wake
        };
        for outbox in list {
            if let Some(frame) = lazy.get(outbox.encoding)
                && outbox.push_deferred(frame.clone())
            {
                to_wake.push(outbox.clone());
            }
        }
        self.deliveries += list.len() as u64;
        self.history.push_back((seq, event));
        while self.history.len() > self.memory_history {
            self.history.pop_front();
        }
    }

    /// Wakes every writer with queued events: tablets with a new assignment
    /// first (the latency that matters most), then everyone else. Each wakes
    /// once per batch however many events it got, so it drains and flushes once.
    pub(crate) fn wake(&mut self) {
        metrics::counter!(metric::EVENT_DELIVERIES).increment(std::mem::take(&mut self.deliveries));
        for outbox in self.to_wake_first.drain(..).chain(self.to_wake.drain(..)) {
            outbox.wake();
        }
    }

    /// Keeps an accepted fix for the next position batch (latest per unit wins).
    pub(crate) fn stage_position(&mut self, item: PositionItem) {
        self.staged_positions.insert(item.unit_id.clone(), item);
    }

    /// Sends the staged positions: one shared frame per encoding for subscribers
    /// without an area, a filtered one for each subscriber with an area.
    pub(crate) fn flush_positions(&mut self) {
        if self.staged_positions.is_empty() {
            return;
        }
        let items: Arc<[Arc<PositionItem>]> =
            self.staged_positions.drain().map(|(_, i)| Arc::new(i)).collect();
        let mut shared: [Option<Message>; 2] = [None, None];
        for (outbox, area) in &self.positions {
            match area {
                None => {
                    let slot = &mut shared[outbox.encoding.index()];
                    if slot.is_none() {
                        let refs: Vec<&PositionItem> = items.iter().map(|i| i.as_ref()).collect();
                        *slot = wire::positions_frame(outbox.encoding, &refs);
                    }
                    if let Some(frame) = slot {
                        outbox.push_positions(frame, &items);
                    }
                }
                Some(area) => {
                    let inside: Arc<[Arc<PositionItem>]> = items
                        .iter()
                        .filter(|i| area.contains(i.lat, i.lon))
                        .cloned()
                        .collect();
                    if inside.is_empty() {
                        continue;
                    }
                    let refs: Vec<&PositionItem> = inside.iter().map(|i| i.as_ref()).collect();
                    if let Some(frame) = wire::positions_frame(outbox.encoding, &refs) {
                        outbox.push_positions(&frame, &inside);
                    }
                }
            }
        }
    }

    /// Drops sessions that closed from every list.
    pub(crate) fn prune_closed(&mut self) {
        self.incidents.retain(|o| !o.is_closed());
        self.units.retain(|o| !o.is_closed());
        self.positions.retain(|(o, _)| !o.is_closed());
        self.assignments.retain(|_, list| {
            list.retain(|o| !o.is_closed());
            !list.is_empty()
        });
    }

    fn remove(&mut self, outbox: &Arc<Outbox>) {
        self.incidents.retain(|o| !Arc::ptr_eq(o, outbox));
        self.units.retain(|o| !Arc::ptr_eq(o, outbox));
        self.positions.retain(|(o, _)| !Arc::ptr_eq(o, outbox));
        for list in self.assignments.values_mut() {
            list.retain(|o| !Arc::ptr_eq(o, outbox));
        }
    }

    /// Serves a `subscribe` at cut `seq`: reply, then replayed events (or the
    /// snapshot inside the reply), then registration for live events. A second
    /// `subscribe` on a session replaces the first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn subscribe(
        &mut self,
        engine: &Engine,
        journal: &dyn Journal,
        epoch: &str,
        seq: u64,
        outbox: Arc<Outbox>,
        id: Option<u64>,
        unit: Option<String>,
        sub: Subscribe,
    ) {
        self.remove(&outbox);
        let wants = |t: SubTopic| sub.topics.contains(&t);
        let event_topics: Vec<Topic> = [
            (SubTopic::Incidents, Topic::Incidents),
            (SubTopic::Units, Topic::Units),
            (SubTopic::Assignments, Topic::Assignments),
        ]
        .into_iter()
        .filter(|(s, _)| wants(*s))
        .map(|(_, t)| t)
        .collect();
        let matches = |e: &Event| {
            event_topics.contains(&e.topic())
                && (e.topic() != Topic::Assignments || e.assignment_unit() == unit.as_deref())
        };

        let replay = sub
            .since
            .as_ref()
            .filter(|s| s.epoch == epoch && s.seq <= seq)
            .and_then(|s| self.replay_after(journal, s.seq, seq, &matches));
        let recovered = replay.is_some();
        // Not recovered: the snapshot goes in the reply. A tablet's snapshot is its
        // own unit and its own open incident.
        let (incidents, units): (Option<Vec<&Incident>>, Option<Vec<&Unit>>) = match (&unit, recovered) {
            (_, true) => (None, None),
            (Some(u), false) => {
                let me = engine.unit(u);
                let inc = me
                    .and_then(|m| m.incident_id.as_deref())
                    .and_then(|i| engine.incident(i));
                (Some(inc.into_iter().collect()), Some(me.into_iter().collect()))
            }
            (None, false) => (
                Some(engine.open_incidents().collect()),
                Some(engine.units().collect()),
            ),
        };
        let reply = wire::ok_if_asked(
            outbox.encoding,
            id,
            SubscribeOk {
                epoch,
                seq,
                recovered,
                incidents,
                units,
            },
        );
        if let Some(m) = reply {
            outbox.push(m);
        }
        for (s, event) in replay.unwrap_or_default() {
            if let Some(m) = wire::message(outbox.encoding, &EventFrame::new(s, &event)) {
                outbox.push(m);
            }
        }

        if wants(SubTopic::Incidents) {
            self.incidents.push(outbox.clone());
        }
        if wants(SubTopic::Units) {
            self.units.push(outbox.clone());
        }
        if wants(SubTopic::Positions) {
            self.positions.push((outbox.clone(), sub.area));
        }
        if let (true, Some(u)) = (wants(SubTopic::Assignments), unit) {
            self.assignments.entry(u).or_default().push(outbox);
        }
    }

    /// Events after `after` up to `cut` that match, from memory or the journal;
    /// `None` when the history no longer reaches back that far.
    fn replay_after(
        &self,
        journal: &dyn Journal,
        after: u64,
        cut: u64,
        matches: &dyn Fn(&Event) -> bool,
    ) -> Option<Vec<(u64, Arc<Event>)>> {
        if after == cut {
            return Some(Vec::new());
        }
        let in_memory = self.history.front().is_some_and(|(first, _)| *first <= after + 1);
        if in_memory {
            return Some(
                self.history
                    .iter()
                    .filter(|(s, e)| *s > after && *s <= cut && matches(e))
                    .cloned()
                    .collect(),
            );
        }
        if !journal.reaches_back(after) {
            return None;
        }
        let mut out = Vec::new();
        let mut from = after;
        while from < cut {
            let records = journal.read_from(from, 4096).ok()?;
            if records.is_empty() {
                break;
            }
            for rec in records {
                if rec.seq > cut {
                    return Some(out);
                }
                from = rec.seq;
                let event = record::decode_event(&rec).ok()?;
                if matches(&event) {
                    out.push((rec.seq, Arc::new(event)));
                }
            }
        }
        Some(out)
    }
}
