//! Fan-out of live events: who receives which committed event.
//!
//! Owned by the engine thread alone (no locks): right after a commit it queues
//! each event to the sessions subscribed to its topic, encoding it at most once
//! per encoding and handing every recipient the same buffer. A `subscribe` is
//! registered here on the same thread, between two commits, and reserves its
//! reply's place in the session's queue at that moment; the read model
//! ([`crate::read_model`]) fills the place with the snapshot or replay at
//! exactly that cut. That is what keeps PROTOCOL.md section 6: the snapshot
//! reflects every event up to the cut, replayed events are ≤ it, live events
//! queued behind the reply are > it, none missing or repeated — while the
//! expensive part (the snapshot) runs off this thread.
//!
//! Owns: the incidents/units/assignments subscriber lists. Must never: encode
//! per subscriber what is the same for all, or build a snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use opcenter_core::{Event, EventBody, Topic};
use opcenter_proto::Encoding;
use opcenter_proto::client::{SubTopic, Subscribe};
use opcenter_proto::server::EventFrame;

use crate::frame::Prepared;
use crate::outbox::Outbox;
use crate::{metric, wire};

/// Subscriber lists for the event topics.
pub(crate) struct Fanout {
    incidents: Vec<Arc<Outbox>>,
    /// With the subscription, for its `agencies` filter.
    units: Vec<(Arc<Outbox>, Arc<Subscribe>)>,
    assignments: HashMap<String, Vec<Arc<Outbox>>>,
    /// Tablets with an assignment queued but not yet woken: woken first.
    to_wake_first: Vec<Arc<Outbox>>,
    /// Other sessions with events queued but not yet woken.
    to_wake: Vec<Arc<Outbox>>,
    /// Deliveries queued since the last wake (counted once per batch, not per event).
    deliveries: u64,
    /// [`metric::EVENT_DELIVERIES`], looked up once.
    deliveries_total: metrics::Counter,
    /// [`metric::SOCKET_WRITES`]: the writes [`Fanout::wake`] makes itself.
    writes: metrics::Counter,
    /// The region these events are of, for sessions subscribed to several
    /// regions ([`Outbox::region_tags`]); `None` in one process.
    region: Option<Arc<str>>,
}

/// An event's frame per encoding ([`Encoding::index`]), where made.
pub(crate) type EventFrames = [Option<Prepared>; 2];

/// Encodes and frames an event lazily, once per encoding (and once more per
/// encoding with its region, for multi-region subscriptions). Only the
/// untagged frames are handed to the read model's shared frame cache.
struct Lazy<'a> {
    seq: u64,
    event: &'a Event,
    region: Option<&'a str>,
    frames: EventFrames,
    tagged: EventFrames,
}

impl<'a> Lazy<'a> {
    fn new(seq: u64, event: &'a Event, region: Option<&'a str>) -> Self {
        Lazy {
            seq,
            event,
            region,
            frames: [None, None],
            tagged: [None, None],
        }
    }

    fn get(&mut self, outbox: &Outbox) -> Option<&Prepared> {
        match self.region.filter(|_| outbox.region_tags()) {
            Some(region) => {
                let slot = &mut self.tagged[outbox.encoding.index()];
                if slot.is_none() {
                    *slot = encode_frame(self.seq, self.event, outbox.encoding, Some(region));
                }
                slot.as_ref()
            }
            None => frame_of(&mut self.frames, self.seq, self.event, outbox.encoding),
        }
    }
}

/// The event's frame in `encoding` from `frames`, encoded and kept there first
/// if missing (`None` only if it cannot be encoded).
pub(crate) fn frame_of<'f>(
    frames: &'f mut EventFrames,
    seq: u64,
    event: &Event,
    encoding: Encoding,
) -> Option<&'f Prepared> {
    let slot = &mut frames[encoding.index()];
    if slot.is_none() {
        *slot = encode_frame(seq, event, encoding, None);
    }
    slot.as_ref()
}

/// The event's frame in `encoding`, tagged with `region` when given (a
/// multi-region subscription's); `None` only if it cannot be encoded.
pub(crate) fn encode_frame(
    seq: u64,
    event: &Event,
    encoding: Encoding,
    region: Option<&str>,
) -> Option<Prepared> {
    wire::message(encoding, &EventFrame::new(seq, event).in_region(region)).map(|m| Prepared::of(&m))
}

impl Fanout {
    /// Empty lists, for the events of `region`.
    pub(crate) fn new(region: Option<Arc<str>>) -> Self {
        Fanout {
            incidents: Vec::new(),
            units: Vec::new(),
            assignments: HashMap::new(),
            to_wake_first: Vec::new(),
            to_wake: Vec::new(),
            deliveries: 0,
            deliveries_total: metrics::counter!(metric::EVENT_DELIVERIES),
            writes: metrics::counter!(metric::SOCKET_WRITES),
            region,
        }
    }

    /// Queues a committed event for its subscribers. Writers are woken by
    /// [`Fanout::wake`], once per batch. `read_at`: when the `incident.create`
    /// that caused it was read; an assignment carries it to the tablet's writer,
    /// which records the time until it is on the socket.
    ///
    /// Returns the untagged frames it made (one per encoding some recipient
    /// uses): the read model keeps them for `since` replays
    /// ([`crate::read_model`]), so an event is encoded once per encoding for
    /// live delivery and replays alike. Region-tagged frames are not returned.
    pub(crate) fn publish(&mut self, seq: u64, event: &Event, read_at: Option<Instant>) -> EventFrames {
        let mut lazy = Lazy::new(seq, event, self.region.as_deref());
        let urgent = event.topic() == Topic::Assignments;
        let filtered: Vec<Arc<Outbox>>;
        let list: &[Arc<Outbox>] = match event.topic() {
            Topic::Incidents => &self.incidents,
            Topic::Units => {
                let agency = match &event.body {
                    EventBody::Unit(u) => u.agency.as_deref(),
                    _ => None,
                };
                filtered = self
                    .units
                    .iter()
                    .filter(|(_, sub)| sub.wants_agency(agency))
                    .map(|(o, _)| o.clone())
                    .collect();
                &filtered
            }
            Topic::Assignments => match event.assignment_unit().and_then(|u| self.assignments.get(u)) {
                Some(list) => list,
                None => &[],
            },
        };
        let (to_wake, read_at) = if urgent {
            (&mut self.to_wake_first, read_at)
        } else {
            (&mut self.to_wake, None)
        };
        for outbox in list {
            if let Some(frame) = lazy.get(outbox)
                && outbox.push_deferred(frame.clone(), read_at)
            {
                to_wake.push(outbox.clone());
            }
        }
        self.deliveries += list.len() as u64;
        lazy.frames
    }

    /// Sends every session's queued events: tablets with a new assignment
    /// first (the latency that matters most), then everyone else. Each is
    /// written once per batch however many events it got, here when its socket
    /// takes it now, else by its writer, woken once ([`Outbox::wake`]).
    pub(crate) fn wake(&mut self) {
        self.wake_first();
        if self.deliveries > 0 {
            self.deliveries_total
                .increment(std::mem::take(&mut self.deliveries));
        }
        let writes: u64 = self.to_wake.drain(..).map(|o| u64::from(o.wake())).sum();
        if writes > 0 {
            self.writes.increment(writes);
        }
    }

    /// Sends the tablets' new assignments only ([`Fanout::wake`] sends the rest).
    pub(crate) fn wake_first(&mut self) {
        let writes: u64 = self.to_wake_first.drain(..).map(|o| u64::from(o.wake())).sum();
        if writes > 0 {
            self.writes.increment(writes);
        }
    }

    /// Drops sessions that closed from every list.
    pub(crate) fn prune_closed(&mut self) {
        self.incidents.retain(|o| !o.is_closed());
        self.units.retain(|(o, _)| !o.is_closed());
        self.assignments.retain(|_, list| {
            list.retain(|o| !o.is_closed());
            !list.is_empty()
        });
    }

    /// Takes `outbox` off every list.
    pub(crate) fn remove(&mut self, outbox: &Arc<Outbox>) {
        self.remove_from_topics(outbox);
        for list in self.assignments.values_mut() {
            list.retain(|o| !Arc::ptr_eq(o, outbox));
        }
    }

    /// Takes `outbox` off the `incidents` and `units` lists.
    fn remove_from_topics(&mut self, outbox: &Arc<Outbox>) {
        self.incidents.retain(|o| !Arc::ptr_eq(o, outbox));
        self.units.retain(|(o, _)| !Arc::ptr_eq(o, outbox));
    }

    /// Registers a `subscribe` for live events after the current cut, replacing
    /// the session's earlier subscription, and reserves the reply's place in its
    /// queue. Returns the reservation (`None`: the session is closed).
    pub(crate) fn register(
        &mut self,
        outbox: &Arc<Outbox>,
        unit: Option<&str>,
        sub: &Subscribe,
    ) -> Option<u64> {
        // Off its own lists only: a session is only ever on the assignments
        // list of its own unit, so the other units' lists (one per tablet) need
        // no scan on this thread for each re-subscribe.
        self.remove_from_topics(outbox);
        if let Some(list) = unit.and_then(|u| self.assignments.get_mut(u)) {
            list.retain(|o| !Arc::ptr_eq(o, outbox));
        }
        let token = outbox.reserve()?;
        let wants = |t: SubTopic| sub.topics.contains(&t);
        if wants(SubTopic::Incidents) {
            self.incidents.push(outbox.clone());
        }
        if wants(SubTopic::Units) {
            self.units.push((outbox.clone(), Arc::new(sub.clone())));
        }
        if let (true, Some(u)) = (wants(SubTopic::Assignments), unit) {
            self.assignments
                .entry(u.to_string())
                .or_default()
                .push(outbox.clone());
        }
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcenter_core::{Actor, Command, Engine, EngineConfig, Location, NewIncident};

    fn incidents() -> Subscribe {
        Subscribe {
            topics: vec![SubTopic::Incidents],
            area: None,
            agencies: None,
            since: None,
            regions: None,
            since_by_region: Default::default(),
        }
    }

    /// A re-subscribe replaces the session's place on every list it was on,
    /// its unit's assignments list included, and leaves the others alone.
    #[test]
    fn a_resubscribe_replaces_the_sessions_places_only() {
        let all = Subscribe {
            topics: vec![SubTopic::Incidents, SubTopic::Units, SubTopic::Assignments],
            ..incidents()
        };
        let mut fanout = Fanout::new(None);
        let tablet = Outbox::new("t".into(), Encoding::Json, 1 << 20);
        let other = Outbox::new("o".into(), Encoding::Json, 1 << 20);
        let console = Outbox::new("c".into(), Encoding::Json, 1 << 20);
        for _ in 0..3 {
            for (o, unit) in [(&tablet, Some("U1")), (&other, Some("U2")), (&console, None)] {
                let token = fanout.register(o, unit, &all).unwrap();
                o.fill(token, Vec::new());
            }
        }
        assert_eq!(fanout.incidents.len(), 3);
        assert_eq!(fanout.units.len(), 3);
        assert_eq!(fanout.assignments["U1"].len(), 1);
        assert!(Arc::ptr_eq(&fanout.assignments["U1"][0], &tablet));
        assert_eq!(fanout.assignments["U2"].len(), 1);
        assert_eq!(fanout.assignments.len(), 2, "a console is on no assignments list");
        // A narrower re-subscribe takes the session off the topics it dropped.
        let token = fanout.register(&tablet, Some("U1"), &incidents()).unwrap();
        tablet.fill(token, Vec::new());
        assert!(fanout.assignments["U1"].is_empty());
        assert_eq!(fanout.units.len(), 2);
        assert_eq!(fanout.incidents.len(), 3);
    }

    /// A desk session (region tags on) gets the event with its region, a
    /// single-region one without; only the untagged frame is handed back for
    /// the shared frame cache.
    #[tokio::test]
    async fn tagged_frames_are_made_apart_and_not_returned_for_the_cache() {
        let mut engine = Engine::new(EngineConfig::default());
        let at = Location { lat: 51.0, lon: 51.0 };
        let cmd = Command::CreateIncident(NewIncident::call("c".to_string(), 3, at));
        let event = engine
            .apply(&Actor::system(), cmd, 1_700_000_000_000)
            .unwrap()
            .events
            .into_iter()
            .find(|e| e.topic() == Topic::Incidents)
            .unwrap();
        let mut fanout = Fanout::new(Some(Arc::from("west")));
        let desk = Outbox::new("desk".into(), Encoding::Json, 1 << 20);
        desk.set_region_tags(true);
        let single = Outbox::new("single".into(), Encoding::Json, 1 << 20);
        for o in [&desk, &single] {
            let token = fanout.register(o, None, &incidents()).unwrap();
            o.fill(token, Vec::new());
        }
        let frames = fanout.publish(7, &event, None);
        fanout.wake();
        async fn text(o: &Outbox) -> String {
            let d = o.drain().await;
            assert_eq!(d.frames.len(), 1);
            String::from_utf8(d.frames[0].payload().to_vec()).unwrap()
        }
        assert!(text(&desk).await.contains("\"region\":\"west\""));
        let untagged = text(&single).await;
        assert!(!untagged.contains("region"), "{untagged}");
        let returned = frames[Encoding::Json.index()].as_ref().unwrap();
        assert_eq!(std::str::from_utf8(returned.payload()).unwrap(), untagged);
        assert!(frames[Encoding::MsgPack.index()].is_none());

        // With the desk session alone, no frame is returned at all.
        fanout.remove(&single);
        assert_eq!(fanout.publish(8, &event, None), [None, None]);
    }
}
