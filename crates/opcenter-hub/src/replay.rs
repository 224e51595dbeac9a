//! `since` replays served a bounded step at a time, and the cache of event
//! frames they share.
//!
//! A resume `since` a seq far back (50 000 events, read from the journal on
//! disk) used to be served in one go on the read-model thread: every commit,
//! position batch and snapshot queued behind it waited until the last event was
//! decoded and encoded. Here a resume becomes a [`Job`]: the read model
//! ([`crate::read_model`]) runs one [`Job::step`] (`hub.replay_step_events`
//! events) at a time, round robin over the jobs, and serves everything waiting
//! in its channel (committed batches, snapshots, lookups) and the due position
//! batch before the next step. Each step hands its frames to the session's
//! queue just before the place the engine thread reserved for the reply
//! ([`crate::outbox::Outbox::fill_part`]), so a session still receives every
//! seq once, in order, and then the live events queued behind the place.
//!
//! The [`FrameCache`] keeps each event's frame per encoding (the live fan-out's
//! own frames, handed over with the committed batch, or the ones a replay made),
//! up to `hub.frame_cache_bytes`, evicting the lowest seqs first: N resumes of
//! the same range decode and encode each event once, not N times. The cache
//! holds untagged frames only: a national desk's multi-region subscription
//! replays with frames tagged with the region ([`Job::new`]'s `region`), made
//! per job and not kept.
//!
//! Owns: replay jobs and the frame cache. Must never: hold the journal lock for
//! more than one chunk of a step, or send a frame twice or out of order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use opcenter_core::{Event, EventBody, Topic};
use opcenter_proto::client::{SubTopic, Subscribe};

use crate::fanout::{EventFrames, encode_frame, frame_of};
use crate::frame::Prepared;
use crate::metric;
use crate::outbox::{CloseReason, Outbox, codes};
use crate::read_model::{SharedJournal, lock};
use crate::record;

/// Records read from the journal per lock hold: the engine thread's next
/// commit waits for at most one such read.
pub(crate) const JOURNAL_CHUNK: usize = 1024;

/// Which committed events a subscription receives.
pub(crate) struct Filter {
    topics: Vec<Topic>,
    /// The tablet's unit: only its own assignments.
    unit: Option<String>,
    sub: Subscribe,
}

impl Filter {
    /// The filter of `sub` from a session of `unit` (a tablet) or none.
    pub(crate) fn new(sub: &Subscribe, unit: Option<String>) -> Self {
        let topics = [
            (SubTopic::Incidents, Topic::Incidents),
            (SubTopic::Units, Topic::Units),
            (SubTopic::Assignments, Topic::Assignments),
        ]
        .into_iter()
        .filter(|(s, _)| sub.topics.contains(s))
        .map(|(_, t)| t)
        .collect();
        Filter {
            topics,
            unit,
            sub: sub.clone(),
        }
    }

    /// True when the subscription receives `e`.
    pub(crate) fn matches(&self, e: &Event) -> bool {
        self.topics.contains(&e.topic())
            && (e.topic() != Topic::Assignments || e.assignment_unit() == self.unit.as_deref())
            && match &e.body {
                EventBody::Unit(u) => self.sub.wants_agency(u.agency.as_deref()),
                _ => true,
            }
    }
}

/// One cached event: the event (to match filters and to encode what is
/// missing) and its frames.
struct Cached {
    event: Arc<Event>,
    frames: EventFrames,
    /// What this entry counts against the bound.
    weight: usize,
}

impl Cached {
    /// Frames' bytes plus the event itself, taken as large as its largest
    /// frame (at least [`MIN_EVENT_WEIGHT`]): an estimate, not an allocator count.
    fn weigh(&self) -> usize {
        let lens = self.frames.iter().flatten().map(|f| f.as_bytes().len());
        lens.clone().sum::<usize>() + lens.max().unwrap_or(0).max(MIN_EVENT_WEIGHT)
    }
}

/// What an event without frames is taken to weigh.
const MIN_EVENT_WEIGHT: usize = 256;

/// Event frames by seq, bounded in (estimated) bytes.
pub(crate) struct FrameCache {
    cap: usize,
    bytes: usize,
    entries: BTreeMap<u64, Cached>,
    /// Frames handed out since the last [`FrameCache::trim`]: (from the cache, encoded).
    counts: (u64, u64),
}

impl FrameCache {
    /// An empty cache of at most `cap` bytes (0: keeps nothing between steps).
    pub(crate) fn new(cap: usize) -> Self {
        FrameCache {
            cap,
            bytes: 0,
            entries: BTreeMap::new(),
            counts: (0, 0),
        }
    }

    /// Keeps `event` at `seq` with the frames already made for it (if it is
    /// not kept yet). Call [`FrameCache::trim`] after a run of inserts.
    pub(crate) fn insert(&mut self, seq: u64, event: Arc<Event>, frames: EventFrames) {
        self.entries.entry(seq).or_insert_with(|| {
            let mut c = Cached {
                event,
                frames,
                weight: 0,
            };
            c.weight = c.weigh();
            self.bytes += c.weight;
            c
        });
    }

    /// False when the cache is off (`hub.frame_cache_bytes = 0`).
    pub(crate) fn keeps_any(&self) -> bool {
        self.cap > 0
    }

    fn contains(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }

    /// The event at `seq`, if kept, and its frame in `encoding` when `wanted`
    /// by the subscription (encoded and kept now if missing). `None`: not kept.
    /// With a `region` the frame is tagged with it: encoded for this call and
    /// not kept (the cache holds the frames every session shares).
    fn frame(
        &mut self,
        seq: u64,
        encoding: opcenter_proto::Encoding,
        region: Option<&str>,
        wanted: impl Fn(&Event) -> bool,
    ) -> Option<Option<Prepared>> {
        let c = self.entries.get_mut(&seq)?;
        if !wanted(&c.event) {
            return Some(None);
        }
        if region.is_some() {
            self.counts.1 += 1;
            return Some(encode_frame(seq, &c.event, encoding, region));
        }
        let had = c.frames[encoding.index()].is_some();
        let frame = frame_of(&mut c.frames, seq, &c.event, encoding).cloned();
        if had {
            self.counts.0 += 1;
        } else {
            self.counts.1 += 1;
            let weight = c.weigh();
            self.bytes = self.bytes + weight - c.weight;
            c.weight = weight;
        }
        Some(frame)
    }

    /// Drops the lowest seqs until the cache fits its bound (a resume starts
    /// at some seq and reads forward; the newest events are wanted most).
    pub(crate) fn trim(&mut self) {
        while self.bytes > self.cap {
            let Some((_, c)) = self.entries.pop_first() else {
                break;
            };
            self.bytes -= c.weight;
        }
        metrics::gauge!(metric::REPLAY_CACHE_BYTES).set(self.bytes as f64);
        let (cached, encoded) = std::mem::take(&mut self.counts);
        metrics::counter!(metric::REPLAY_FRAMES, "source" => "cache").increment(cached);
        metrics::counter!(metric::REPLAY_FRAMES, "source" => "encoded").increment(encoded);
    }
}

/// Where a step finds events it has not cached: the in-memory history, then
/// the journal.
pub(crate) struct Sources<'a> {
    pub(crate) cache: &'a mut FrameCache,
    /// The newest events, oldest first, consecutive seqs.
    pub(crate) history: &'a VecDeque<(u64, Arc<Event>)>,
    pub(crate) journal: &'a SharedJournal,
}

impl Sources<'_> {
    /// Caches the events from `seq` on (up to `upto`) that are not cached yet:
    /// from memory if there, else one chunk from the journal.
    fn load(&mut self, seq: u64, upto: u64) -> Result<(), String> {
        let in_memory = |s: u64| {
            self.history
                .binary_search_by_key(&s, |(h, _)| *h)
                .ok()
                .map(|i| self.history[i].1.clone())
        };
        if let Some(event) = in_memory(seq) {
            let mut s = seq;
            let mut next = Some(event);
            while let Some(event) = next {
                self.cache.insert(s, event, [None, None]);
                s += 1;
                next = (s <= upto && !self.cache.contains(s))
                    .then(|| in_memory(s))
                    .flatten();
            }
            return Ok(());
        }
        let max = ((upto - seq + 1) as usize).min(JOURNAL_CHUNK);
        let records = record::read_from(&**lock(self.journal), seq - 1, max).map_err(|e| e.to_string())?;
        if records.first().map(|r| r.seq) != Some(seq) {
            return Err(format!("the journal no longer holds seq {seq}"));
        }
        for rec in records {
            if !self.cache.contains(rec.seq) {
                let event = record::decode_event(&rec).map_err(|e| e.to_string())?;
                self.cache.insert(rec.seq, Arc::new(event), [None, None]);
            }
        }
        Ok(())
    }
}

/// A `since` resume in progress: the events after `at` up to `cut` are still
/// to be sent into the place `slot` of `outbox`.
pub(crate) struct Job {
    outbox: Arc<Outbox>,
    slot: u64,
    filter: Filter,
    /// The region its frames are tagged with (a multi-region subscription).
    region: Option<Arc<str>>,
    /// Last seq sent (or skipped by the filter).
    at: u64,
    cut: u64,
}

/// What a step left to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More steps to run.
    More,
    /// Every event up to the cut was handed over, or the session is gone.
    Done,
}

impl Job {
    /// A resume of the events after `after` up to `cut` (`after < cut`) into
    /// `slot`, whose `ok` reply was already put there; its event frames are
    /// tagged with `region` when given.
    pub(crate) fn new(
        outbox: Arc<Outbox>,
        slot: u64,
        filter: Filter,
        region: Option<Arc<str>>,
        after: u64,
        cut: u64,
    ) -> Self {
        Job {
            outbox,
            slot,
            filter,
            region,
            at: after,
            cut,
        }
    }

    /// True when this job replays into `outbox`.
    pub(crate) fn is_for(&self, outbox: &Arc<Outbox>) -> bool {
        Arc::ptr_eq(&self.outbox, outbox)
    }

    /// Ends the replay where it is (the session subscribed again): the rest is
    /// not sent, what queued behind the reserved place goes on.
    pub(crate) fn abandon(self) {
        self.outbox.fill_part(self.slot, Vec::new(), true);
    }

    /// The oldest seq this job still needs from the journal (compaction must
    /// keep it).
    pub(crate) fn needs_from(&self) -> u64 {
        self.at + 1
    }

    /// Sends up to `events` more events (those the subscription receives) and
    /// ends the reservation after the last one. A journal that no longer holds
    /// what the job needs (or cannot be read) closes the session with 4008: the
    /// client resumes again and gets a snapshot if that is all the server can give.
    pub(crate) fn step(&mut self, sources: &mut Sources<'_>, events: usize) -> Progress {
        if self.outbox.is_closed() {
            return Progress::Done;
        }
        let end = self.cut.min(self.at.saturating_add(events.max(1) as u64));
        let mut frames = Vec::new();
        let encoding = self.outbox.encoding;
        while self.at < end {
            let seq = self.at + 1;
            let region = self.region.as_deref();
            let found = match sources
                .cache
                .frame(seq, encoding, region, |e| self.filter.matches(e))
            {
                Some(found) => found,
                None => {
                    if let Err(e) = sources.load(seq, end) {
                        tracing::warn!(session = %self.outbox.session, error = %e, "replay interrupted");
                        self.outbox.close(CloseReason {
                            code: codes::OVERFLOW,
                            reason: "replay interrupted: resume with since",
                            flush_first: false,
                        });
                        return Progress::Done;
                    }
                    continue;
                }
            };
            frames.extend(found);
            self.at = seq;
        }
        let last = self.at >= self.cut;
        if !self.outbox.fill_part(self.slot, frames, last) || last {
            return Progress::Done;
        }
        Progress::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcenter_core::{Actor, Command, Engine, EngineConfig, Location, NewIncident};
    use opcenter_proto::Encoding;

    /// `n` committed `incident` events from a real engine.
    fn events(n: usize) -> Vec<Arc<Event>> {
        let mut engine = Engine::new(EngineConfig::default());
        let mut out = Vec::new();
        for i in 0..n {
            let at = Location { lat: 51.0, lon: 51.0 };
            let cmd = Command::CreateIncident(NewIncident::call(format!("c{i}"), 3, at));
            let applied = engine.apply(&Actor::system(), cmd, 1_700_000_000_000).unwrap();
            out.extend(applied.events.into_iter().map(Arc::new));
        }
        out
    }

    #[test]
    fn an_event_is_encoded_once_per_encoding_and_the_cache_keeps_its_bound() {
        let evs = events(3);
        let mut cache = FrameCache::new(usize::MAX);
        for (i, e) in evs.iter().enumerate() {
            cache.insert(i as u64 + 1, e.clone(), [None, None]);
        }
        let a = cache.frame(1, Encoding::Json, None, |_| true).unwrap().unwrap();
        let b = cache.frame(1, Encoding::Json, None, |_| true).unwrap().unwrap();
        assert_eq!(
            a.as_bytes().as_ptr(),
            b.as_bytes().as_ptr(),
            "the same buffer, not re-encoded"
        );
        let m = cache
            .frame(1, Encoding::MsgPack, None, |_| true)
            .unwrap()
            .unwrap();
        assert_ne!(a, m);
        assert_eq!(
            cache.frame(2, Encoding::Json, None, |_| false),
            Some(None),
            "filtered out"
        );
        assert_eq!(cache.frame(9, Encoding::Json, None, |_| true), None, "not kept");

        // A region-tagged frame (a desk's multi-region replay) carries the
        // region and is not kept: the cached frame stays the untagged one.
        let before = (cache.bytes, cache.entries[&1].weight);
        let tagged = cache
            .frame(1, Encoding::Json, Some("west"), |_| true)
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(tagged.payload()).unwrap();
        assert!(text.contains("\"region\":\"west\""), "{text}");
        assert!(!std::str::from_utf8(a.payload()).unwrap().contains("region"));
        let again = cache.frame(1, Encoding::Json, None, |_| true).unwrap().unwrap();
        assert_eq!(
            again.as_bytes().as_ptr(),
            a.as_bytes().as_ptr(),
            "the untagged one is kept"
        );
        assert_eq!((cache.bytes, cache.entries[&1].weight), before);

        // Bound to one entry's weight: the lowest seqs go first.
        let one = cache.entries[&3].weight;
        cache.cap = one;
        cache.trim();
        assert_eq!(cache.entries.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(cache.bytes, one);
        cache.cap = 0;
        cache.trim();
        assert!(cache.entries.is_empty());
        assert_eq!(cache.bytes, 0);
    }
}
