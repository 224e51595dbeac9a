//! The dispatch engine: the single owner of incidents, units and the spatial
//! index. `apply(actor, command, now_ms)` validates, mutates and returns the
//! events that describe the change; a refused command returns a [`CoreError`]
//! and leaves state exactly as it was. Time is always an argument.
//!
//! Owns: every rule of `shared/PROTOCOL.md` section 5, and the maps of incidents
//! and units. The state derived from them lives beside this file, one structure
//! per file with its invariant: `pending.rs` (the queue of incidents short of
//! units), `duplicates.rs` (open incidents by category and place),
//! `deadlines.rs` (ack deadlines and offline grace ends, in due order), and
//! [`crate::index`] (assignable units). `config.rs` and `reply.rs` hold the plain
//! data going in and out. Must never: do I/O, read the clock, panic on any input.

mod config;
mod deadlines;
mod duplicates;
mod hashed;
mod keys;
mod pending;
mod reply;
mod retention;

pub use config::{DEFAULT_AGENCY, DutyWindow, EngineConfig, RosterUnit, RunCard};
pub use duplicates::MAX_POSSIBLE_DUPLICATES;
pub use keys::KeyRecord;
pub use reply::{Applied, Candidate, PositionItem, Recommendation, Reply, Shortfall};
// Where they were before `check` owned them; callers may still name them here.
pub use crate::check::{MAX_RECOMMEND, MAX_UNITS_NEEDED};

use deadlines::Deadlines;
use duplicates::DuplicateIndex;
use hashed::HashedMap;
use keys::KeyBook;
use pending::{PendingKey, PendingQueue};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::check;
use crate::command::{
    Actor, ActorKind, Command, IncidentPatch, NewIncident, PositionFix, RecommendQuery, RecommendTarget,
    UnitProfile,
};
use crate::error::CoreError;
use crate::event::{Change, Event, EventBody};
use crate::index::{Query, UnitIndex};
use crate::model::{
    Capability, DispatchMode, Incident, IncidentId, IncidentStatus, KeyScope, Location, MAX_NOTE_BYTES, Note,
    Selection, Unit, UnitId, UnitStatus,
};
use crate::zones::ZoneMap;

/// Everything needed to rebuild an engine: what snapshots store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// Every incident, open and closed.
    pub incidents: Vec<Arc<Incident>>,
    /// Every unit.
    pub units: Vec<Unit>,
    /// The number the next incident id gets.
    pub next_incident_no: u64,
    /// Idempotency keys still alive (those of retired incidents carry them).
    #[serde(default)]
    pub keys: Vec<Arc<KeyRecord>>,
}

impl EngineSnapshot {
    /// Puts everything in a fixed order (incidents and units by id, keys by
    /// creation time), so equal states encode to equal bytes.
    pub fn sort(&mut self) {
        self.incidents.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        self.units.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        self.keys.sort_unstable_by(|a, b| {
            (a.at_ms, &a.key, &a.incident_id).cmp(&(b.at_ms, &b.key, &b.incident_id))
        });
    }
}

/// How often (at most) Tick takes stale units out of the tree, in ms.
const PRUNE_EVERY_MIN_MS: i64 = 1_000;
/// Category of the incidents the panic button makes.
pub const EMERGENCY_CATEGORY: &str = "officer_emergency";

/// The dispatch engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    incidents: HashedMap<IncidentId, Arc<Incident>>,
    units: HashMap<UnitId, Unit>,
    /// Available units with a position (see [`crate::index`]).
    index: UnitIndex,
    /// Roster posts with a fixed location: never stale.
    fixed: HashSet<UnitId>,
    /// Auto incidents short of units, served first-come within priority.
    pending: PendingQueue,
    /// Open incidents by category and place, behind `possible_duplicates`.
    duplicates: DuplicateIndex,
    /// Idempotency keys alive, per key space (see `keys.rs`).
    keys: KeyBook,
    /// Unacknowledged assignments by deadline: Tick is O(expired).
    deadlines: Deadlines,
    /// Offline units by the end of their grace (`offline_since_ms + grace`).
    lapses: Deadlines,
    /// The config roster by id: its values win over claims, snapshots and replay.
    roster: HashMap<UnitId, RosterUnit>,
    /// Districts and beats: every incident is placed in them at creation.
    zones: ZoneMap,
    /// Roster units by the beat they patrol (auto-dispatch prefers them there).
    beat_units: HashMap<String, Vec<UnitId>>,
    /// The open emergency incident of a unit that pressed its panic button.
    open_emergency: HashMap<UnitId, IncidentId>,
    /// The number the next incident id gets.
    next_no: u64,
    /// Last stale-position pruning (private; not behaviour, only tree size).
    last_prune_ms: i64,
    /// Last retention pass (see `retention.rs`).
    last_retire_ms: i64,
    /// Closed incidents held, by when they closed (their last change): a
    /// retention pass takes the due ones from the front (see `retention.rs`).
    closed: BTreeSet<(i64, IncidentId)>,
    /// The minute (ms / 60 000) of the last shift pass (see `shifts`).
    last_shift_minute: i64,
    /// Roster units with an `on_duty` window, sorted by id (events in a fixed order).
    shift_units: Vec<(UnitId, DutyWindow)>,
    /// Incidents retired since the last [`Engine::take_retired`] (readers that
    /// keep their own copy drop them too; retiring makes no event).
    retired: Vec<IncidentId>,
}

fn incident_no(id: &str) -> u64 {
    id.strip_prefix("I-").and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::BadRequest(msg.into())
}

impl Engine {
    /// A new engine with the roster's units in place.
    pub fn new(config: EngineConfig) -> Self {
        let mut engine = Engine {
            index: UnitIndex::new(config.index_slack_m),
            fixed: HashSet::new(),
            incidents: HashedMap::default(),
            units: HashMap::new(),
            pending: PendingQueue::default(),
            duplicates: DuplicateIndex::default(),
            keys: KeyBook::default(),
            deadlines: Deadlines::default(),
            lapses: Deadlines::default(),
            roster: HashMap::new(),
            // The hub's settings loader refuses bad zones with the reason; an
            // engine built around it gets none rather than a panic.
            zones: ZoneMap::new(config.zones.clone()).unwrap_or_default(),
            beat_units: HashMap::new(),
            open_emergency: HashMap::new(),
            next_no: 1,
            last_prune_ms: i64::MIN,
            last_retire_ms: i64::MIN,
            closed: BTreeSet::new(),
            last_shift_minute: i64::MIN,
            shift_units: Vec::new(),
            retired: Vec::new(),
            config,
        };
        for r in engine.config.roster.clone() {
            // A roster can only start a unit free, busy or off duty: the other
            // statuses need an incident (or a missed ack) the roster cannot give.
            let status = match r.status {
                Some(s @ (UnitStatus::Available | UnitStatus::Busy | UnitStatus::OffDuty)) => s,
                _ => UnitStatus::OffDuty,
            };
            if r.location.is_some_and(|l| l.validate().is_ok()) {
                engine.fixed.insert(r.id.clone());
            }
            if let Some(b) = &r.beat {
                engine.beat_units.entry(b.clone()).or_default().push(r.id.clone());
            }
            if let Some(w) = r.on_duty {
                engine.shift_units.push((r.id.clone(), w));
            }
            engine.roster.insert(r.id.clone(), r.clone());
            let mut unit = Unit::new(r.id.clone());
            unit.status = status;
            engine.upsert_unit(unit);
        }
        engine.shift_units.sort_by(|a, b| a.0.cmp(&b.0));
        engine
    }

    /// The roster's values (callsign, kind, capabilities, fixed location,
    /// `tablet`) replace whatever a snapshot, the journal or a token says.
    fn roster_wins(&self, unit: &mut Unit) {
        let Some(r) = self.roster.get(&unit.id) else {
            return;
        };
        unit.callsign.clone_from(&r.callsign);
        unit.kind.clone_from(&r.kind);
        unit.capabilities.clone_from(&r.capabilities);
        unit.tablet = r.tablet;
        if r.agency.is_some() {
            unit.agency.clone_from(&r.agency);
        }
        unit.post = r.post;
        unit.district.clone_from(&r.district);
        unit.beat.clone_from(&r.beat);
        unit.on_duty = r.on_duty.map(|w| w.to_string());
        if let Some(l) = r.location.filter(|l| l.validate().is_ok()) {
            unit.location = Some(l);
        }
    }

    /// After a restart no session is live: every unit that was online is offline
    /// since `now_ms`, so a tablet reconnecting within the grace loses nothing.
    /// Units already offline keep their time. No events (the hub calls this once,
    /// after recovery; the next change of each unit carries it).
    pub fn sessions_lost(&mut self, now_ms: i64) {
        let online: Vec<UnitId> = self
            .units
            .values()
            .filter(|u| u.online)
            .map(|u| u.id.clone())
            .collect();
        for id in online {
            if let Some(mut u) = self.units.get(&id).cloned() {
                u.online = false;
                u.offline_since_ms = Some(now_ms);
                self.upsert_unit(u);
            }
        }
    }

    /// Applies one command at time `now_ms`. On error, state is unchanged.
    pub fn apply(&mut self, actor: &Actor, command: Command, now_ms: i64) -> Result<Applied, CoreError> {
        let mut ev = Vec::new();
        let mut position = None;
        let reply = match command {
            Command::RegisterUnit(profile) => self.register(actor, profile, now_ms, &mut ev)?,
            Command::UnitOffline { unit_id } => self.offline(actor, &unit_id, now_ms, &mut ev)?,
            Command::CreateIncident(new) => self.create(actor, new, now_ms, &mut ev)?,
            Command::UpdateIncident { incident_id, patch } => {
                self.update(actor, &incident_id, patch, now_ms, &mut ev)?
            }
            Command::CloseIncident {
                incident_id,
                disposition,
            } => self.close(actor, &incident_id, disposition, now_ms, &mut ev)?,
            Command::Assign {
                incident_id,
                unit_id,
                force,
            } => self.assign(actor, &incident_id, &unit_id, force, now_ms, &mut ev)?,
            Command::Note { incident_id, text } => self.note(actor, &incident_id, text, now_ms, &mut ev)?,
            Command::Position { unit_id, fix } => {
                position = self.position(actor, &unit_id, fix, now_ms, &mut ev)?;
                Reply::None
            }
            Command::SetStatus { unit_id, status } => {
                self.set_status(actor, &unit_id, status, now_ms, &mut ev)?
            }
            Command::Ack { unit_id, incident_id } => {
                self.ack(actor, &unit_id, &incident_id, now_ms, &mut ev)?
            }
            Command::Decline {
                unit_id,
                incident_id,
                reason,
            } => self.decline(actor, &unit_id, &incident_id, reason, now_ms, &mut ev)?,
            Command::Emergency {
                unit_id,
                active,
                location,
            } => self.emergency(actor, &unit_id, active, location, now_ms, &mut ev)?,
            Command::Tick => {
                self.tick(now_ms, &mut ev);
                Reply::None
            }
        };
        Ok(Applied {
            events: ev,
            reply,
            position,
        })
    }

    /// `incident.recommend`: same eligibility as auto-dispatch, read-only.
    pub fn recommend(&self, query: &RecommendQuery, now_ms: i64) -> Result<Recommendation, CoreError> {
        check::recommend_count(i64::try_from(query.count).unwrap_or(i64::MAX))?;
        if let Some(req) = &query.required {
            check::capabilities(req)?;
        }
        if let Some(a) = &query.agencies {
            self.known_agencies(a)?;
        }
        let (location, required, exclude, agencies, kinds) = match &query.target {
            RecommendTarget::Location(loc) => {
                loc.validate()?;
                let agencies = query
                    .agencies
                    .clone()
                    .unwrap_or_else(|| self.config.default_agencies.clone());
                let required = query.required.clone().unwrap_or_default();
                (*loc, required, Vec::new(), agencies, Vec::new())
            }
            RecommendTarget::Incident(id) => {
                let inc = self
                    .incidents
                    .get(id)
                    .ok_or_else(|| CoreError::NotFound(format!("incident {id} not found")))?;
                let required = query.required.clone().unwrap_or_else(|| inc.required.clone());
                let agencies = query
                    .agencies
                    .clone()
                    .unwrap_or_else(|| self.agencies_of(inc).to_vec());
                (
                    inc.location,
                    required,
                    Self::exclusions(inc),
                    agencies,
                    inc.kinds.clone(),
                )
            }
        };
        let found = self.index.nearest(&Query {
            location,
            k: query.count,
            max_distance_m: self.config.max_distance_m,
            required: &required,
            now_ms,
            max_age_ms: self.config.max_position_age_ms,
            exclude: &exclude,
            agencies: &agencies,
            kinds: &kinds,
        });
        let candidates: Vec<Candidate> = found
            .into_iter()
            .map(|(unit_id, distance_m)| Candidate { unit_id, distance_m })
            .collect();
        let shortfall = (candidates.len() < query.count)
            .then(|| self.shortfall(&required, &exclude, (&agencies, &kinds), candidates.len(), now_ms));
        Ok(Recommendation {
            candidates,
            shortfall,
        })
    }

    /// Why only `found` units qualify (`shared/PROTOCOL.md` section 3): apply the
    /// filters in order (available, live and not declined, capability, fresh position,
    /// range) and name the first after which no more units remain than were
    /// found. Range is last, so it is named when every earlier filter left more.
    /// This is a scan of the fleet, run only on a shortfall.
    fn shortfall(
        &self,
        required: &[Capability],
        exclude: &[UnitId],
        (agencies, kinds): (&[String], &[String]),
        found: usize,
        now_ms: i64,
    ) -> Shortfall {
        let (mut available, mut capable, mut fresh) = (0usize, 0usize, 0usize);
        for u in self.units.values() {
            // Offline past the grace, a radio-only post, or another agency's
            // unit: not available to this incident.
            if u.status != UnitStatus::Available
                || exclude.contains(&u.id)
                || !u
                    .agency
                    .as_deref()
                    .is_some_and(|a| agencies.iter().any(|x| x == a))
                || !(kinds.is_empty() || u.kind.as_ref().is_some_and(|k| kinds.contains(k)))
                || !u.tablet
                || !self.is_live(u, now_ms)
            {
                continue;
            }
            available += 1;
            if !u.has_all(required) {
                continue;
            }
            capable += 1;
            if u.location.is_some() && self.is_fresh(u, now_ms) {
                fresh += 1;
            }
        }
        if available <= found {
            Shortfall::NoUnitsAvailable
        } else if capable <= found {
            Shortfall::MissingCapability
        } else if fresh <= found {
            Shortfall::PositionsStale
        } else {
            Shortfall::OutOfRange
        }
    }

    /// Rebuilds state from a recorded event (recovery): upserts its object and
    /// derives the indexes (pending queue, keys, spatial index, ack deadlines).
    /// `assignments` events are a per-tablet view of an incident whose own event
    /// is on the `incidents` topic, so they are skipped.
    pub fn restore(&mut self, event: &Event) {
        match &event.body {
            EventBody::Incident(inc) => self.upsert_incident(Arc::new(inc.clone())),
            EventBody::Unit(unit) => self.upsert_unit(unit.clone()),
            EventBody::Assignment { .. } => {}
        }
    }

    /// All state needed to rebuild this engine, in no particular order. The
    /// incidents and keys are shared with the engine, not copied (a change made
    /// after copies only the object it changes), so this costs a reference count
    /// per object: the engine thread takes one every `snapshot_every_events`
    /// records, and a takeover takes one before it serves.
    pub fn state(&self) -> EngineSnapshot {
        EngineSnapshot {
            incidents: self.incidents.values().cloned().collect(),
            units: self.units.values().cloned().collect(),
            next_incident_no: self.next_no,
            keys: self.keys.records(),
        }
    }

    /// [`Engine::state`] sorted ([`EngineSnapshot::sort`]), so equal engines
    /// give equal snapshots.
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut state = self.state();
        state.sort();
        state
    }

    /// The number the next incident id gets (a read model's snapshot carries it).
    pub fn next_incident_no(&self) -> u64 {
        self.next_no
    }

    /// An engine rebuilt from a snapshot (then `restore` the journal tail).
    pub fn from_snapshot(config: EngineConfig, snapshot: EngineSnapshot) -> Self {
        let mut engine = Engine::new(config);
        for unit in snapshot.units {
            engine.upsert_unit(unit);
        }
        for rec in snapshot.keys {
            engine.keys.restore(rec);
        }
        for inc in snapshot.incidents {
            engine.upsert_incident(inc);
        }
        engine.next_no = engine.next_no.max(snapshot.next_incident_no);
        engine
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// An incident by id, open or closed.
    pub fn incident(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id).map(Arc::as_ref)
    }

    /// A unit by id.
    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.units.get(id)
    }

    /// Open incidents, in no particular order.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values().map(Arc::as_ref).filter(|i| i.is_open())
    }

    /// Every unit, in no particular order.
    pub fn units(&self) -> impl Iterator<Item = &Unit> {
        self.units.values()
    }

    /// Auto-dispatched incidents still short of units, in the order they will be
    /// served (priority, then oldest first).
    pub fn pending_queue(&self) -> impl Iterator<Item = &IncidentId> {
        self.pending.ids()
    }

    /// How many units are in the spatial index (available, positioned, not pruned).
    pub fn indexed_units(&self) -> usize {
        self.index.indexed_len()
    }

    // ----- derived state -------------------------------------------------------

    /// Replaces (or inserts) a unit and re-derives its index entry and deadlines.
    /// The roster's values win here, so neither a snapshot, the journal nor a
    /// token can override them (the config may have changed since).
    fn upsert_unit(&mut self, mut unit: Unit) {
        self.roster_wins(&mut unit);
        if unit.agency.is_none() {
            unit.agency = Some(self.config.home_agency().to_string());
        }
        let id = unit.id.clone();
        let ack = unit
            .ack_deadline_ms
            .filter(|_| unit.status == UnitStatus::Dispatched);
        self.deadlines.set(&id, ack);
        self.lapses.set(&id, self.lapse_of(&unit));
        self.units.insert(id.clone(), unit);
        self.sync_index(&id);
    }

    /// The first ms at which an offline unit is no longer live (offline for
    /// more than the grace); `None` while online, or for a unit never seen.
    fn lapse_of(&self, u: &Unit) -> Option<i64> {
        if u.online {
            return None;
        }
        u.offline_since_ms
            .map(|t| t.saturating_add(self.config.offline_grace_ms).saturating_add(1))
    }

    /// Online, or offline for no longer than the grace. A unit no tablet ever
    /// connected for is not live.
    fn is_live(&self, u: &Unit, now_ms: i64) -> bool {
        u.online || self.lapse_of(u).is_some_and(|t| now_ms < t)
    }

    /// Replaces (or inserts) an incident and re-derives queue, open set, keys.
    fn upsert_incident(&mut self, inc: Arc<Incident>) {
        let id = inc.id.clone();
        let no = incident_no(&id);
        self.next_no = self.next_no.max(no.saturating_add(1));
        if !self.incidents.contains_key(&id) {
            self.keys.remember(&inc);
        }
        if let Some(old) = self.incidents.insert(id.clone(), inc)
            && let Some(u) = &old.emergency_unit
            && self.open_emergency.get(u) == Some(&id)
        {
            self.open_emergency.remove(u);
        }
        self.reindex_incident(&id);
    }

    /// Files an incident in the pending queue, the open set and the emergency map
    /// according to its current state.
    fn reindex_incident(&mut self, id: &str) {
        let Some(inc) = self.incidents.get(id) else { return };
        let no = incident_no(id);
        self.pending.file(inc, no);
        self.duplicates.file(inc, no);
        if !inc.is_open() {
            self.closed.insert((inc.updated_ms, id.to_string()));
        }
        if let Some(u) = inc.emergency_unit.clone() {
            if inc.is_open() {
                self.open_emergency.insert(u, id.to_string());
            } else if self.open_emergency.get(&u).map(String::as_str) == Some(id) {
                self.open_emergency.remove(&u);
            }
        }
    }

    /// Brings the spatial index in line with a unit; true when it entered the tree.
    fn sync_index(&mut self, id: &str) -> bool {
        let Some(u) = self.units.get(id) else { return false };
        let fixed = self.fixed.contains(id);
        let live_until = if u.online {
            i64::MAX
        } else {
            self.lapse_of(u).map_or(i64::MIN, |t| t.saturating_sub(1))
        };
        // A radio-only post, or a unit no tablet ever connected for, is never in
        // the tree; an offline one stays there until its grace runs out.
        let assignable = u.status == UnitStatus::Available && u.tablet && live_until != i64::MIN;
        self.index.set_live_until(id, live_until);
        let agency = u.agency.as_deref().unwrap_or(self.config.home_agency());
        self.index
            .set_traits(id, agency, u.kind.as_deref(), self.reach_of(u));
        self.index
            .sync(id, &u.capabilities, assignable, u.location, u.location_ms, fixed)
    }

    /// How far a unit may be sent: a post only within `dispatch.post_radius_m`.
    fn reach_of(&self, u: &Unit) -> f64 {
        if u.is_post() {
            self.config.post_radius_m
        } else {
            f64::INFINITY
        }
    }

    /// The agencies an incident's units may come from (its own, or the
    /// defaults for one recorded before agencies existed).
    fn agencies_of<'a>(&'a self, inc: &'a Incident) -> &'a [String] {
        if inc.agencies.is_empty() {
            &self.config.default_agencies
        } else {
            &inc.agencies
        }
    }

    /// Every agency named must be one of `dispatch.agencies`.
    fn known_agencies(&self, list: &[String]) -> Result<(), CoreError> {
        check::agencies(list)?;
        match list.iter().find(|a| !self.config.knows_agency(a)) {
            Some(a) => Err(bad(format!(
                "agency {a:?} is not one of dispatch.agencies {:?}",
                self.config.agencies
            ))),
            None => Ok(()),
        }
    }

    fn set_deadline(&mut self, unit_id: &str, deadline: Option<i64>) {
        let Some(u) = self.units.get_mut(unit_id) else {
            return;
        };
        u.ack_deadline_ms = deadline;
        self.deadlines.set(unit_id, deadline);
    }

    fn is_fresh(&self, u: &Unit, now_ms: i64) -> bool {
        self.fixed.contains(&u.id)
            || u.location_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= self.config.max_position_age_ms)
    }

    fn exclusions(inc: &Incident) -> Vec<UnitId> {
        let mut ex = inc.declined_by.clone();
        if let Some(u) = &inc.emergency_unit {
            ex.push(u.clone());
        }
        ex
    }

    /// Recomputes an open incident's status from its units, stamps it and refiles it.
    fn refresh_incident(&mut self, id: &str, now_ms: i64) {
        let status = {
            let Some(inc) = self.incidents.get(id) else { return };
            if !inc.is_open() {
                IncidentStatus::Closed
            } else if inc.units.is_empty() {
                IncidentStatus::Pending
            } else {
                let st = |s: UnitStatus| {
                    inc.units
                        .iter()
                        .any(|u| self.units.get(u).is_some_and(|u| u.status == s))
                };
                if st(UnitStatus::OnScene) {
                    IncidentStatus::OnScene
                } else if st(UnitStatus::EnRoute) {
                    IncidentStatus::EnRoute
                } else {
                    IncidentStatus::Dispatched
                }
            }
        };
        if let Some(inc) = self.incidents.get_mut(id).map(Arc::make_mut) {
            inc.status = status;
            inc.updated_ms = inc.updated_ms.max(now_ms);
        }
        self.reindex_incident(id);
    }

    // ----- events --------------------------------------------------------------

    fn emit_incident(&self, id: &str, change: Change, ev: &mut Vec<Event>) {
        if let Some(inc) = self.incidents.get(id) {
            ev.push(Event {
                change,
                body: EventBody::Incident(Incident::clone(inc)),
            });
        }
    }

    fn emit_unit(&self, id: &str, change: Change, ev: &mut Vec<Event>) {
        if let Some(u) = self.units.get(id) {
            ev.push(Event {
                change,
                body: EventBody::Unit(u.clone()),
            });
        }
    }

    /// One tablet's view of an incident. The reporter's personal data goes only
    /// to a unit that is on the incident (a unit just taken off it gets the
    /// incident without it).
    fn emit_assignment(&self, unit_id: &str, incident_id: &str, change: Change, ev: &mut Vec<Event>) {
        if let Some(inc) = self.incidents.get(incident_id) {
            let mut incident = Incident::clone(inc);
            if !inc.units.iter().any(|u| u == unit_id) {
                incident.reporter = None;
            }
            ev.push(Event {
                change,
                body: EventBody::Assignment {
                    unit_id: unit_id.to_string(),
                    incident,
                },
            });
        }
    }

    /// The incident's event, then one `assignments` event per assigned unit.
    fn emit_incident_all(&self, id: &str, change: Change, ev: &mut Vec<Event>) {
        self.emit_incident(id, change, ev);
        if let Some(inc) = self.incidents.get(id) {
            for u in &inc.units {
                self.emit_assignment(u, id, change, ev);
            }
        }
    }

    // ----- dispatch ------------------------------------------------------------

    /// Puts a unit on an incident: `dispatched`, ack deadline, out of the tree.
    /// The caller has checked that the unit holds no other incident.
    fn attach(&mut self, incident_id: &str, unit_id: &str, selection: Selection, now_ms: i64) {
        let deadline = now_ms.saturating_add(self.config.ack_timeout_ms);
        if let Some(u) = self.units.get_mut(unit_id) {
            u.status = UnitStatus::Dispatched;
            u.incident_id = Some(incident_id.to_string());
        }
        self.set_deadline(unit_id, Some(deadline));
        self.sync_index(unit_id);
        if let Some(inc) = self.incidents.get_mut(incident_id).map(Arc::make_mut) {
            if !inc.units.iter().any(|u| u == unit_id) {
                inc.units.push(unit_id.to_string());
            }
            inc.selection.insert(unit_id.to_string(), selection);
        }
    }

    /// Takes a unit off its incident (if any) and gives it `status`; returns the
    /// incident it held. The incident is refreshed; the index is synced unless
    /// `defer_index` (the caller re-dispatches first, then syncs).
    fn detach(
        &mut self,
        unit_id: &str,
        status: UnitStatus,
        now_ms: i64,
        defer_index: bool,
    ) -> Option<IncidentId> {
        self.set_deadline(unit_id, None);
        // `shift_ended` holds only while the unit holds an incident.
        let held = self.units.get_mut(unit_id).and_then(|u| {
            u.status = status;
            u.shift_ended = false;
            u.incident_id.take()
        });
        if let Some(iid) = &held {
            if let Some(inc) = self.incidents.get_mut(iid).map(Arc::make_mut) {
                inc.units.retain(|u| u != unit_id);
                inc.selection.remove(unit_id);
            }
            self.refresh_incident(iid, now_ms);
        }
        if !defer_index {
            self.sync_index(unit_id);
        }
        held
    }

    /// Auto-dispatch: fills an open auto incident's missing units with the nearest
    /// eligible ones. Returns how many were assigned.
    fn dispatch(&mut self, incident_id: &str, now_ms: i64, ev: &mut Vec<Event>) -> usize {
        let (query_loc, need, required, exclude, agencies, beat, kinds, carded) = {
            let Some(inc) = self.incidents.get(incident_id) else {
                return 0;
            };
            if !inc.is_open() || inc.dispatch != DispatchMode::Auto {
                return 0;
            }
            let have = inc.units.len() as u32;
            if have >= inc.units_needed {
                return 0;
            }
            (
                inc.location,
                (inc.units_needed - have) as usize,
                inc.required.clone(),
                Self::exclusions(inc),
                self.agencies_of(inc).to_vec(),
                self.beat_candidates(inc, now_ms),
                inc.kinds.clone(),
                inc.run_card.is_some(),
            )
        };
        let nearest = self.index.nearest(&Query {
            location: query_loc,
            // Enough that `need` remain after the beat's units are taken out.
            k: need + beat.len(),
            max_distance_m: self.config.max_distance_m,
            required: &required,
            now_ms,
            max_age_ms: self.config.max_position_age_ms,
            exclude: &exclude,
            agencies: &agencies,
            kinds: &kinds,
        });
        let mut picked = self.prefer_beat(nearest, beat, need);
        if carded {
            for (_, s) in &mut picked {
                if *s == Selection::Nearest {
                    *s = Selection::RunCard;
                }
            }
        }
        if picked.is_empty() {
            return 0;
        }
        for (uid, selection) in &picked {
            self.attach(incident_id, uid, *selection, now_ms);
        }
        self.refresh_incident(incident_id, now_ms);
        for (uid, _) in &picked {
            self.emit_unit(uid, Change::Dispatched, ev);
        }
        self.emit_incident(incident_id, Change::Dispatched, ev);
        for (uid, _) in &picked {
            self.emit_assignment(uid, incident_id, Change::Assigned, ev);
        }
        picked.len()
    }

    /// The run card for a new incident: the most specific whose trigger holds
    /// (ties: the first in config order), if any.
    fn run_card_for(
        &self,
        category: &str,
        priority: u8,
        place: &crate::zones::Placement,
        now_ms: i64,
    ) -> Option<&RunCard> {
        let minute = (now_ms.div_euclid(60_000) + self.config.local_offset_min).rem_euclid(1_440);
        let hour = (minute / 60) as u8;
        let mut best: Option<&RunCard> = None;
        for c in &self.config.run_cards {
            if c.matches(
                category,
                priority,
                place.district.as_deref(),
                place.beat.as_deref(),
                hour,
            ) && best.is_none_or(|b| c.specificity() > b.specificity())
            {
                best = Some(c);
            }
        }
        best
    }

    /// The eligible units assigned to `inc`'s beat, nearest first, with metres.
    fn beat_candidates(&self, inc: &Incident, now_ms: i64) -> Vec<(UnitId, f64)> {
        let Some(ids) = inc.beat.as_ref().and_then(|b| self.beat_units.get(b)) else {
            return Vec::new();
        };
        let mut found: Vec<(UnitId, f64)> = ids
            .iter()
            .filter_map(|id| self.units.get(id))
            .filter(|u| self.eligible(u, inc, now_ms))
            .filter_map(|u| u.location.map(|l| (u.id.clone(), l.distance_m(&inc.location))))
            .collect();
        found.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        found
    }

    /// Picks up to `need` units: for each, the nearest unit assigned to the
    /// beat unless the nearest of all is more than `dispatch.beat_preference_m`
    /// closer. Both lists are nearest first; a beat unit is labelled `beat`
    /// whichever list it came from.
    fn prefer_beat(
        &self,
        nearest: Vec<(UnitId, f64)>,
        beat: Vec<(UnitId, f64)>,
        need: usize,
    ) -> Vec<(UnitId, Selection)> {
        let mut out: Vec<(UnitId, Selection)> = Vec::with_capacity(need);
        let (mut n, mut b) = (nearest.into_iter().peekable(), beat.iter().peekable());
        while out.len() < need {
            let taken = |id: &str, out: &[(UnitId, Selection)]| out.iter().any(|(u, _)| u == id);
            while n.peek().is_some_and(|(id, _)| taken(id, &out)) {
                n.next();
            }
            while b.peek().is_some_and(|(id, _)| taken(id, &out)) {
                b.next();
            }
            let take_beat = match (n.peek(), b.peek()) {
                (None, None) => break,
                (_, None) => false,
                (None, Some(_)) => true,
                (Some((_, dn)), Some((_, db))) => db - dn <= self.config.beat_preference_m,
            };
            let id = if take_beat {
                b.next().map(|(id, _)| id.clone())
            } else {
                n.next().map(|(id, _)| id)
            };
            let Some(id) = id else { break };
            let selection = if beat.iter().any(|(u, _)| *u == id) {
                Selection::Beat
            } else {
                Selection::Nearest
            };
            out.push((id, selection));
        }
        out
    }

    /// True when `unit` could be auto-dispatched to `inc` right now.
    fn eligible(&self, unit: &Unit, inc: &Incident, now_ms: i64) -> bool {
        unit.status == UnitStatus::Available
            && unit.incident_id.is_none()
            && unit.tablet
            && self.is_live(unit, now_ms)
            && self.is_fresh(unit, now_ms)
            && unit.has_all(&inc.required)
            && !inc.declined_by.contains(&unit.id)
            && inc.emergency_unit.as_deref() != Some(unit.id.as_str())
            && unit
                .agency
                .as_deref()
                .is_some_and(|a| self.agencies_of(inc).iter().any(|x| x == a))
            && (inc.kinds.is_empty() || unit.kind.as_ref().is_some_and(|k| inc.kinds.contains(k)))
            && unit.location.is_some_and(|l| {
                let d = l.distance_m(&inc.location);
                d <= self.config.max_distance_m && d <= self.reach_of(unit)
            })
    }

    /// A unit may have become eligible: serve the pending queue in order
    /// (priority, then oldest), dispatching each incident it qualifies for, until
    /// the unit is taken or the queue ends.
    fn serve_pending(&mut self, unit_id: &str, now_ms: i64, ev: &mut Vec<Event>) {
        // Walk the queue from where the last round stopped; dispatching usually
        // takes the unit out of the index, which ends the loop.
        let mut after: Option<PendingKey> = None;
        while self.index.is_indexed(unit_id) {
            let Some(unit) = self.units.get(unit_id) else {
                return;
            };
            let next = self.pending.next_after(after.as_ref(), |id| {
                self.incidents
                    .get(id)
                    .is_some_and(|inc| self.eligible(unit, inc, now_ms))
            });
            let Some(key) = next else { return };
            self.dispatch(key.id(), now_ms, ev);
            after = Some(key);
        }
    }

    // ----- commands ------------------------------------------------------------

    /// Forbidden unless the actor is not a tablet, or is this unit's tablet.
    fn own_unit(actor: &Actor, unit_id: &str) -> Result<(), CoreError> {
        match actor.unit_id() {
            Some(me) if me != unit_id => Err(CoreError::Forbidden(format!(
                "unit {me} may not act for unit {unit_id}"
            ))),
            _ => Ok(()),
        }
    }

    /// Forbidden for tablets (dispatcher-only commands).
    fn not_a_unit(actor: &Actor, what: &str) -> Result<(), CoreError> {
        if actor.unit_id().is_some() {
            Err(CoreError::Forbidden(format!("a unit may not {what}")))
        } else {
            Ok(())
        }
    }

    fn get_incident(&self, id: &str) -> Result<&Incident, CoreError> {
        self.incidents
            .get(id)
            .map(Arc::as_ref)
            .ok_or_else(|| CoreError::NotFound(format!("incident {id} not found")))
    }

    fn get_unit(&self, id: &str) -> Result<&Unit, CoreError> {
        self.units
            .get(id)
            .ok_or_else(|| CoreError::NotFound(format!("unit {id} not found")))
    }

    /// For a tablet: the incident must be the one assigned to it.
    fn own_incident(&self, actor: &Actor, incident_id: &str) -> Result<(), CoreError> {
        if let Some(me) = actor.unit_id() {
            let mine = self.units.get(me).and_then(|u| u.incident_id.as_deref());
            if mine != Some(incident_id) {
                return Err(CoreError::Forbidden(format!(
                    "incident {incident_id} is not assigned to unit {me}"
                )));
            }
        }
        Ok(())
    }

    fn open_incident(&self, id: &str) -> Result<&Incident, CoreError> {
        let inc = self.get_incident(id)?;
        if inc.is_open() {
            Ok(inc)
        } else {
            Err(CoreError::Conflict(format!("incident {id} is closed")))
        }
    }

    /// A tablet's hello: creates the unit (`created`), or brings it back online
    /// (`online`); a unit not on the roster takes its token's profile each time
    /// (`profile` when only that changed). A roster unit keeps the roster's.
    fn register(
        &mut self,
        actor: &Actor,
        p: UnitProfile,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        check::unit_identity(&p.id, p.callsign.as_deref(), p.kind.as_deref(), &p.capabilities)?;
        if let Some(a) = &p.agency
            && !self.roster.contains_key(&p.id)
        {
            self.known_agencies(std::slice::from_ref(a))?;
        }
        Self::own_unit(actor, &p.id)?;
        let change = match self.units.get(&p.id).cloned() {
            None => {
                let mut unit = Unit::new(p.id.clone());
                unit.callsign = p.callsign;
                unit.kind = p.kind;
                unit.capabilities = p.capabilities;
                unit.agency = p.agency;
                unit.online = true;
                self.upsert_unit(unit);
                Some(Change::Created)
            }
            Some(mut unit) => {
                let was_online = unit.online;
                let mut profiled = false;
                let agency = p.agency.or_else(|| Some(self.config.home_agency().to_string()));
                let differs = unit.callsign != p.callsign
                    || unit.kind != p.kind
                    || unit.capabilities != p.capabilities
                    || unit.agency != agency;
                if differs && !self.roster.contains_key(&p.id) {
                    unit.callsign = p.callsign;
                    unit.kind = p.kind;
                    unit.capabilities = p.capabilities;
                    unit.agency = agency;
                    profiled = true;
                }
                unit.online = true;
                unit.offline_since_ms = None;
                self.upsert_unit(unit);
                match (was_online, profiled) {
                    (false, _) => Some(Change::Online),
                    (true, true) => Some(Change::Profile),
                    (true, false) => None,
                }
            }
        };
        if let Some(c) = change {
            self.emit_unit(&p.id, c, ev);
            // Back (or newly able): it may be what a short incident waits for.
            self.serve_pending(&p.id, now_ms, ev);
        }
        let unit = self.get_unit(&p.id)?.clone();
        let incident = unit
            .incident_id
            .as_ref()
            .and_then(|i| self.incidents.get(i))
            .map(|i| Incident::clone(i));
        Ok(Reply::Registered { unit, incident })
    }

    /// The last session of a unit's tablet ended: offline since `now_ms`. Nothing
    /// else changes until the grace runs out (see `tick`).
    fn offline(
        &mut self,
        actor: &Actor,
        unit_id: &str,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        Self::not_a_unit(actor, "report a unit offline")?;
        let mut unit = self.get_unit(unit_id)?.clone();
        if !unit.online {
            return Ok(Reply::None);
        }
        unit.online = false;
        unit.offline_since_ms = Some(now_ms);
        self.upsert_unit(unit);
        self.emit_unit(unit_id, Change::Offline, ev);
        Ok(Reply::None)
    }

    /// Makes an incident (validated by the caller), emits its creation and runs
    /// auto-dispatch. Returns its id.
    fn make_incident(
        &mut self,
        n: NewIncident,
        scope: KeyScope,
        emergency_unit: Option<UnitId>,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> IncidentId {
        let no = self.next_no;
        self.next_no = self.next_no.saturating_add(1);
        let id = format!("I-{no:06}");
        let possible_duplicates = self.duplicates.near(
            &n.category,
            n.location,
            self.config.duplicate_radius_m,
            now_ms.saturating_sub(self.config.duplicate_window_ms),
        );
        let change = if emergency_unit.is_some() {
            Change::Emergency
        } else {
            Change::Created
        };
        let source = if n.source.trim().is_empty() {
            "call".to_string()
        } else {
            n.source
        };
        let key_scope = n.key.is_some().then_some(scope);
        let place = self.zones.locate(n.location);
        // The panic button follows its own rule (dispatch.emergency_units).
        let card = match emergency_unit {
            Some(_) => None,
            None => self
                .run_card_for(&n.category, n.priority, &place, now_ms)
                .cloned(),
        };
        let plan = card.clone().unwrap_or_default();
        let units_needed = match plan.units_needed {
            Some(u) if !n.given.units_needed => u,
            _ => n.units_needed,
        };
        let required = match plan.required {
            Some(r) if !n.given.required => r,
            _ => n.required,
        };
        let agencies = match n.agencies {
            Some(a) => a,
            // Anyone near an officer in trouble goes, whatever their agency.
            None if emergency_unit.is_some() => self.config.agencies.clone(),
            None => plan
                .agencies
                .unwrap_or_else(|| self.config.default_agencies.clone()),
        };
        let inc = Incident {
            id: id.clone(),
            key: n.key,
            key_scope,
            category: n.category,
            priority: n.priority,
            status: IncidentStatus::Pending,
            location: n.location,
            address: n.address,
            description: n.description,
            reporter: n.reporter.filter(|r| !r.is_empty()),
            source,
            units: Vec::new(),
            required,
            units_needed,
            disposition: None,
            notes: Vec::new(),
            possible_duplicates,
            dispatch: n.dispatch,
            agencies,
            district: place.district,
            beat: place.beat,
            selection: Default::default(),
            kinds: plan.kinds.unwrap_or_default(),
            run_card: card.map(|c| c.name),
            declined_by: Vec::new(),
            emergency_unit,
            // Checked by `check::received_time`; a clock a little ahead is
            // taken as "now", so received → created is never negative.
            received_ms: n.received_ms.map(|r| r.min(now_ms)),
            created_ms: now_ms,
            updated_ms: now_ms,
        };
        self.upsert_incident(Arc::new(inc));
        self.emit_incident(&id, change, ev);
        self.dispatch(&id, now_ms, ev);
        id
    }

    fn create(
        &mut self,
        actor: &Actor,
        n: NewIncident,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        Self::not_a_unit(actor, "create incidents")?;
        let scope = match actor.kind {
            ActorKind::Intake => KeyScope::Gateway,
            _ => KeyScope::Console,
        };
        if let Some(k) = &n.key
            && let Some(rec) = self.keys.get(scope, k)
        {
            if rec.body != keys::digest_of(&n) {
                return Err(CoreError::Conflict(format!(
                    "key {k} was used for a different incident ({})",
                    rec.incident_id
                )));
            }
            let existing = self.incidents.get(&rec.incident_id).map(|i| Incident::clone(i));
            if let Some(incident) = existing.or_else(|| rec.retired_incident(&n)) {
                return Ok(Reply::Created { incident, new: false });
            }
        }
        n.validate()?;
        if let Some(r) = n.received_ms {
            check::received_time(r, now_ms, self.config.max_clock_skew_ms)?;
        }
        if let Some(a) = &n.agencies {
            self.known_agencies(a)?;
        }
        let id = self.make_incident(n, scope, None, now_ms, ev);
        Ok(Reply::Created {
            incident: self.get_incident(&id)?.clone(),
            new: true,
        })
    }

    fn update(
        &mut self,
        actor: &Actor,
        id: &str,
        patch: IncidentPatch,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        Self::not_a_unit(actor, "update incidents")?;
        patch.validate()?;
        self.open_incident(id)?;
        if patch == IncidentPatch::default() {
            return Ok(Reply::Incident(self.get_incident(id)?.clone()));
        }
        if let Some(inc) = self.incidents.get_mut(id).map(Arc::make_mut) {
            if let Some(c) = patch.category {
                inc.category = c;
            }
            if let Some(p) = patch.priority {
                inc.priority = p;
            }
            if let Some(l) = patch.location {
                inc.location = l;
                // A moved incident lies where it now is.
                let place = self.zones.locate(l);
                inc.district = place.district;
                inc.beat = place.beat;
            }
            if patch.address.is_some() {
                inc.address = patch.address;
            }
            if patch.description.is_some() {
                inc.description = patch.description;
            }
        }
        self.refresh_incident(id, now_ms);
        self.emit_incident_all(id, Change::Updated, ev);
        // A new location (or priority) may let a short incident be served now.
        self.dispatch(id, now_ms, ev);
        Ok(Reply::Incident(self.get_incident(id)?.clone()))
    }

    fn close(
        &mut self,
        actor: &Actor,
        id: &str,
        disposition: String,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        if disposition.trim().is_empty() || disposition.len() > MAX_NOTE_BYTES {
            return Err(bad(format!("disposition must be 1..={MAX_NOTE_BYTES} bytes")));
        }
        self.get_incident(id)?;
        self.own_incident(actor, id)?;
        self.open_incident(id)?;
        let units = self.get_incident(id)?.units.clone();
        if let Some(inc) = self.incidents.get_mut(id).map(Arc::make_mut) {
            inc.status = IncidentStatus::Closed;
            inc.disposition = Some(disposition);
            inc.updated_ms = inc.updated_ms.max(now_ms);
        }
        // Units stay listed on the closed incident (who handled it) but are free.
        for u in &units {
            self.set_deadline(u, None);
            let free = self.free_status(u);
            if let Some(unit) = self.units.get_mut(u) {
                unit.status = free;
                unit.shift_ended = false;
                unit.incident_id = None;
            }
            self.sync_index(u);
        }
        self.reindex_incident(id);
        self.emit_incident(id, Change::Closed, ev);
        for u in &units {
            self.emit_unit(u, Change::Closed, ev);
            self.emit_assignment(u, id, Change::Closed, ev);
        }
        let reply = self.get_incident(id)?.clone();
        for u in &units {
            self.serve_pending(u, now_ms, ev);
        }
        Ok(Reply::Incident(reply))
    }

    fn assign(
        &mut self,
        actor: &Actor,
        id: &str,
        unit_id: &str,
        force: bool,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        Self::not_a_unit(actor, "assign units")?;
        self.get_incident(id)?;
        let unit = self.get_unit(unit_id)?;
        self.open_incident(id)?;
        if unit.incident_id.as_deref() == Some(id) {
            // Already on it: a retried assign is not an error.
            return Ok(Reply::Incident(self.get_incident(id)?.clone()));
        }
        if unit.status == UnitStatus::OffDuty {
            return Err(CoreError::Conflict(format!("unit {unit_id} is off duty")));
        }
        if let Some(other) = unit.incident_id.clone() {
            if !force {
                return Err(CoreError::Conflict(format!(
                    "unit {unit_id} holds incident {other} (use force)"
                )));
            }
            let ended = unit.shift_ended;
            self.detach(unit_id, UnitStatus::Busy, now_ms, true);
            self.emit_incident(&other, Change::Unassigned, ev);
            self.emit_assignment(unit_id, &other, Change::Unassigned, ev);
            self.attach(id, unit_id, Selection::Manual, now_ms);
            // Its shift is still over: the new incident is its last.
            if let Some(u) = self.units.get_mut(unit_id) {
                u.shift_ended = ended;
            }
            self.finish_assign(id, unit_id, now_ms, ev);
            // The unit is busy with the new incident: the old one goes on.
            self.dispatch(&other, now_ms, ev);
        } else {
            self.attach(id, unit_id, Selection::Manual, now_ms);
            self.finish_assign(id, unit_id, now_ms, ev);
        }
        Ok(Reply::Incident(self.get_incident(id)?.clone()))
    }

    fn finish_assign(&mut self, id: &str, unit_id: &str, now_ms: i64, ev: &mut Vec<Event>) {
        // A dispatcher's explicit choice overrides an earlier decline.
        if let Some(inc) = self.incidents.get_mut(id).map(Arc::make_mut) {
            inc.declined_by.retain(|u| u != unit_id);
        }
        self.refresh_incident(id, now_ms);
        self.emit_unit(unit_id, Change::Dispatched, ev);
        self.emit_incident(id, Change::Dispatched, ev);
        self.emit_assignment(unit_id, id, Change::Assigned, ev);
    }

    fn note(
        &mut self,
        actor: &Actor,
        id: &str,
        text: String,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        if text.trim().is_empty() || text.len() > MAX_NOTE_BYTES {
            return Err(bad(format!("note text must be 1..={MAX_NOTE_BYTES} bytes")));
        }
        let held = self.get_incident(id)?.notes.len();
        self.own_incident(actor, id)?;
        self.open_incident(id)?;
        if held >= self.config.max_notes {
            return Err(CoreError::TooLarge(format!(
                "incident {id} holds {held} notes, the most it may (dispatch.max_notes)"
            )));
        }
        self.push_note(id, &actor.sub, text, now_ms);
        self.emit_incident_all(id, Change::Noted, ev);
        Ok(Reply::Incident(self.get_incident(id)?.clone()))
    }

    /// Adds a note unless the incident already holds `max_notes` (the server's
    /// own notes, on a decline or a cleared panic button, are then left out
    /// rather than failing the command they describe).
    fn push_note(&mut self, id: &str, by: &str, text: String, now_ms: i64) {
        let max = self.config.max_notes;
        if let Some(inc) = self.incidents.get_mut(id).map(Arc::make_mut)
            && inc.notes.len() < max
        {
            inc.notes.push(Note {
                at_ms: now_ms,
                by: by.to_string(),
                text,
            });
            inc.updated_ms = inc.updated_ms.max(now_ms);
        }
    }

    fn position(
        &mut self,
        actor: &Actor,
        unit_id: &str,
        fix: PositionFix,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Option<PositionItem>, CoreError> {
        fix.validate()?;
        Self::own_unit(actor, unit_id)?;
        // One lookup for the checks and the update (this is the hottest command).
        let max_skew_ms = self.config.max_clock_skew_ms;
        let max_speed_mps = self.config.max_speed_mps;
        let unit = self
            .units
            .get_mut(unit_id)
            .ok_or_else(|| CoreError::NotFound(format!("unit {unit_id} not found")))?;
        if let Some(at) = fix.at_ms {
            check::fix_time(at, now_ms, max_skew_ms)?;
        }
        let at = fix.at_ms.unwrap_or(now_ms);
        if let Some(last) = unit.location_ms {
            if at < last {
                // Older than what we have: never move a unit backwards.
                return Ok(None);
            }
            if let Some(prev) = unit.location {
                // Fixes less than a second apart count as a second (GPS jitter).
                let dt_s = (at.saturating_sub(last) as f64 / 1000.0).max(1.0);
                let speed = prev.distance_m(&fix.location) / dt_s;
                if speed > max_speed_mps {
                    return Err(bad(format!(
                        "fix implies {speed:.0} m/s, above the {max_speed_mps} m/s limit"
                    )));
                }
            }
        }
        let available = unit.status == UnitStatus::Available;
        unit.location = Some(fix.location);
        unit.location_ms = Some(at);
        unit.heading = fix.heading;
        unit.speed = fix.speed;
        let entered = self.index.update_position(unit_id, fix.location, at);
        if available && (entered || !self.pending.is_empty()) {
            self.serve_pending(unit_id, now_ms, ev);
        }
        Ok(Some(PositionItem {
            unit_id: unit_id.to_string(),
            lat: fix.location.lat,
            lon: fix.location.lon,
            heading: fix.heading,
            speed: fix.speed,
            at_ms: at,
        }))
    }

    fn set_status(
        &mut self,
        actor: &Actor,
        unit_id: &str,
        status: UnitStatus,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        if matches!(status, UnitStatus::Dispatched | UnitStatus::Unresponsive) {
            return Err(bad(format!("status {} cannot be set", status.as_str())));
        }
        Self::own_unit(actor, unit_id)?;
        let unit = self.get_unit(unit_id)?;
        let held = unit.incident_id.clone();
        let current = unit.status;
        if current == status {
            return Ok(Reply::Unit(unit.clone()));
        }

        match (status, held) {
            (UnitStatus::EnRoute | UnitStatus::OnScene, None) => {
                return Err(CoreError::Conflict(format!(
                    "unit {unit_id} holds no incident to be {} for",
                    status.as_str()
                )));
            }
            (UnitStatus::EnRoute | UnitStatus::OnScene, Some(iid)) => {
                self.set_deadline(unit_id, None);
                if let Some(u) = self.units.get_mut(unit_id) {
                    u.status = status;
                }
                self.refresh_incident(&iid, now_ms);
                let change = match (status, current) {
                    (UnitStatus::OnScene, _) => Change::OnScene,
                    (_, UnitStatus::Dispatched) => Change::Acknowledged,
                    _ => Change::Status,
                };
                self.emit_unit(unit_id, change, ev);
                self.emit_incident_all(&iid, change, ev);
            }
            (_, Some(iid)) => {
                if actor.unit_id().is_some() {
                    return Err(CoreError::Conflict(format!(
                        "unit {unit_id} holds incident {iid}: close or decline it first"
                    )));
                }
                // A dispatcher takes the unit off; its incident goes on without it.
                self.detach(unit_id, status, now_ms, true);
                self.emit_unit(unit_id, Change::Status, ev);
                self.emit_incident(&iid, Change::Unassigned, ev);
                self.emit_assignment(unit_id, &iid, Change::Unassigned, ev);
                self.dispatch(&iid, now_ms, ev);
                if self.sync_index(unit_id) {
                    self.serve_pending(unit_id, now_ms, ev);
                }
            }
            (_, None) => {
                if let Some(u) = self.units.get_mut(unit_id) {
                    u.status = status;
                }
                let entered = self.sync_index(unit_id);
                self.emit_unit(unit_id, Change::Status, ev);
                if entered {
                    self.serve_pending(unit_id, now_ms, ev);
                }
            }
        }
        Ok(Reply::Unit(self.get_unit(unit_id)?.clone()))
    }

    /// Checks that `unit_id` exists, the actor may act for it, the incident exists
    /// and is the unit's own (Forbidden for its tablet, Conflict for others).
    fn held_by(&self, actor: &Actor, unit_id: &str, incident_id: &str) -> Result<(), CoreError> {
        Self::own_unit(actor, unit_id)?;
        let unit = self.get_unit(unit_id)?;
        self.get_incident(incident_id)?;
        if unit.incident_id.as_deref() != Some(incident_id) {
            let msg = format!("incident {incident_id} is not assigned to unit {unit_id}");
            return Err(if actor.unit_id().is_some() {
                CoreError::Forbidden(msg)
            } else {
                CoreError::Conflict(msg)
            });
        }
        Ok(())
    }

    fn ack(
        &mut self,
        actor: &Actor,
        unit_id: &str,
        incident_id: &str,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        self.held_by(actor, unit_id, incident_id)?;
        if self.get_unit(unit_id)?.status == UnitStatus::Dispatched {
            self.set_deadline(unit_id, None);
            if let Some(u) = self.units.get_mut(unit_id) {
                u.status = UnitStatus::EnRoute;
            }
            self.refresh_incident(incident_id, now_ms);
            self.emit_unit(unit_id, Change::Acknowledged, ev);
            self.emit_incident_all(incident_id, Change::Acknowledged, ev);
        }
        // Already acknowledged (en route / on scene): a retry, nothing changes.
        Ok(Reply::Incident(self.get_incident(incident_id)?.clone()))
    }

    fn decline(
        &mut self,
        actor: &Actor,
        unit_id: &str,
        incident_id: &str,
        reason: Option<String>,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        if reason.as_ref().is_some_and(|r| r.len() > MAX_NOTE_BYTES) {
            return Err(bad(format!("reason must be at most {MAX_NOTE_BYTES} bytes")));
        }
        self.held_by(actor, unit_id, incident_id)?;
        if let Some(inc) = self.incidents.get_mut(incident_id).map(Arc::make_mut)
            && !inc.declined_by.iter().any(|u| u == unit_id)
        {
            inc.declined_by.push(unit_id.to_string());
        }
        if let Some(r) = reason.filter(|r| !r.trim().is_empty()) {
            self.push_note(
                incident_id,
                &actor.sub,
                format!("declined by {unit_id}: {r}"),
                now_ms,
            );
        }
        let free = self.free_status(unit_id);
        self.detach(unit_id, free, now_ms, false);
        self.emit_unit(unit_id, Change::Declined, ev);
        self.emit_incident(incident_id, Change::Declined, ev);
        self.emit_assignment(unit_id, incident_id, Change::Unassigned, ev);
        self.dispatch(incident_id, now_ms, ev);
        self.serve_pending(unit_id, now_ms, ev);
        Ok(Reply::None)
    }

    fn emergency(
        &mut self,
        actor: &Actor,
        unit_id: &str,
        active: bool,
        location: Option<Location>,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> Result<Reply, CoreError> {
        if let Some(l) = &location {
            l.validate()?;
        }
        Self::own_unit(actor, unit_id)?;
        let unit = self.get_unit(unit_id)?;
        let open = self.open_emergency.get(unit_id).cloned();
        if !active {
            // Cleared: the incident stays open for a dispatcher to close; it gets a
            // note so everyone sees the officer cleared the alarm.
            let Some(iid) = open else { return Ok(Reply::None) };
            let text = format!("panic button cleared by unit {unit_id}");
            self.push_note(&iid, &actor.sub, text, now_ms);
            self.emit_incident_all(&iid, Change::Emergency, ev);
            return Ok(Reply::Incident(self.get_incident(&iid)?.clone()));
        }
        if let Some(iid) = open {
            // Pressed again while its emergency is open: the same incident.
            return Ok(Reply::Incident(self.get_incident(&iid)?.clone()));
        }
        let Some(at) = location.or(unit.location) else {
            return Err(bad(format!("unit {unit_id} has no position: give a location")));
        };
        let who = unit.callsign.clone().unwrap_or_else(|| unit_id.to_string());
        let n = NewIncident {
            category: EMERGENCY_CATEGORY.to_string(),
            priority: 1,
            location: at,
            address: None,
            description: Some(format!("panic button pressed by {who}")),
            source: "patrol".to_string(),
            key: None,
            units_needed: self.config.emergency_units.clamp(1, MAX_UNITS_NEEDED),
            required: Vec::new(),
            dispatch: DispatchMode::Auto,
            reporter: None,
            received_ms: None,
            agencies: None,
            given: crate::command::Given::default(),
        };
        let iid = self.make_incident(n, KeyScope::Console, Some(unit_id.to_string()), now_ms, ev);
        Ok(Reply::Incident(self.get_incident(&iid)?.clone()))
    }

    fn tick(&mut self, now_ms: i64, ev: &mut Vec<Event>) {
        while let Some((deadline, unit_id)) = self.deadlines.pop_due(now_ms) {
            let Some(u) = self.units.get_mut(&unit_id) else {
                continue;
            };
            if u.status != UnitStatus::Dispatched || u.ack_deadline_ms != Some(deadline) {
                continue;
            }
            // The deadline is already out of the set; forget it on the unit too.
            u.ack_deadline_ms = None;
            let missed = self.missed_status(&unit_id);
            let Some(iid) = self.detach(&unit_id, missed, now_ms, false) else {
                continue;
            };
            self.emit_unit(&unit_id, Change::AckTimeout, ev);
            self.emit_incident(&iid, Change::AckTimeout, ev);
            self.emit_assignment(&unit_id, &iid, Change::Unassigned, ev);
            self.dispatch(&iid, now_ms, ev);
        }
        // Offline past the grace: an offer it could not see moves on now, not at
        // the ack deadline; it leaves the tree at the next prune below.
        while let Some((lapse, unit_id)) = self.lapses.pop_due(now_ms) {
            let Some(u) = self.units.get(&unit_id) else {
                continue;
            };
            if u.status != UnitStatus::Dispatched || self.lapse_of(u) != Some(lapse) {
                continue;
            }
            let missed = self.missed_status(&unit_id);
            let Some(iid) = self.detach(&unit_id, missed, now_ms, false) else {
                continue;
            };
            self.emit_unit(&unit_id, Change::Offline, ev);
            self.emit_incident(&iid, Change::Offline, ev);
            self.emit_assignment(&unit_id, &iid, Change::Unassigned, ev);
            self.dispatch(&iid, now_ms, ev);
        }
        let every = (self.config.max_position_age_ms / 4).max(PRUNE_EVERY_MIN_MS);
        if now_ms.saturating_sub(self.last_prune_ms) >= every {
            self.last_prune_ms = now_ms;
            self.index.prune_stale(now_ms, self.config.max_position_age_ms);
        }
        self.shifts(now_ms, ev);
        self.retire(now_ms);
    }

    // ----- shifts ---------------------------------------------------------------

    /// The status a unit goes to when its incident lets it go: off duty if its
    /// shift ended while it held the incident, else available.
    fn free_status(&self, unit_id: &str) -> UnitStatus {
        if self.units.get(unit_id).is_some_and(|u| u.shift_ended) {
            UnitStatus::OffDuty
        } else {
            UnitStatus::Available
        }
    }

    /// The status a unit that missed its offer goes to: off duty if its shift
    /// is over, else unresponsive.
    fn missed_status(&self, unit_id: &str) -> UnitStatus {
        if self.free_status(unit_id) == UnitStatus::OffDuty {
            UnitStatus::OffDuty
        } else {
            UnitStatus::Unresponsive
        }
    }

    /// Roster shifts (`on_duty`), once per minute: a unit whose window opened
    /// since the last change the engine applied goes from off duty to
    /// available; one whose window closed goes off duty, unless it holds an
    /// incident: it keeps it (`shift_ended`) and goes off duty when it is let
    /// go. A unit's `on_shift` records the last change applied, so a restart
    /// neither repeats one nor misses one, and a status set by hand in between
    /// (an officer staying on, or leaving early) stands until the next change.
    fn shifts(&mut self, now_ms: i64, ev: &mut Vec<Event>) {
        let minute = now_ms.div_euclid(60_000);
        if minute == self.last_shift_minute || self.shift_units.is_empty() {
            return;
        }
        self.last_shift_minute = minute;
        let local = DutyWindow::local_minute(now_ms, self.config.local_offset_min);
        for (id, window) in self.shift_units.clone() {
            let on = window.contains(local);
            let Some(u) = self.units.get_mut(&id) else {
                continue;
            };
            if u.on_shift == Some(on) {
                continue;
            }
            u.on_shift = Some(on);
            let mut freed = false;
            if on {
                u.shift_ended = false;
                if u.status == UnitStatus::OffDuty {
                    u.status = UnitStatus::Available;
                    freed = true;
                }
            } else if u.incident_id.is_some() {
                u.shift_ended = true;
            } else {
                u.status = UnitStatus::OffDuty;
            }
            let entered = self.sync_index(&id);
            self.emit_unit(&id, Change::Shift, ev);
            if freed && entered {
                self.serve_pending(&id, now_ms, ev);
            }
        }
    }
}
