//! The dispatch engine: the single owner of incidents, units and the spatial
//! index. `apply(actor, command, now_ms)` validates, mutates and returns the
//! events that describe the change; a refused command returns a [`CoreError`]
//! and leaves state exactly as it was. Time is always an argument.
//!
//! Owns: every rule of `shared/PROTOCOL.md` section 5. Must never: do I/O, read
//! the clock, panic on any input.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound::{Excluded, Unbounded};

use rstar::RTree;
use rstar::primitives::GeomWithData;
use serde::{Deserialize, Serialize};

use crate::command::{
    Actor, Command, IncidentPatch, NewIncident, PositionFix, RecommendQuery, RecommendTarget, UnitProfile,
};
use crate::error::CoreError;
use crate::event::{Change, Event, EventBody};
use crate::geo;
use crate::index::{Query, UnitIndex};
use crate::model::{
    Capability, DispatchMode, Incident, IncidentId, IncidentStatus, Location, MAX_NOTE_BYTES, Note, Unit,
    UnitId, UnitStatus,
};

/// Engine tunables (the `dispatch.*` config keys, in engine units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// `dispatch.ack_timeout_s` in ms.
    pub ack_timeout_ms: i64,
    /// `dispatch.max_position_age_s` in ms.
    pub max_position_age_ms: i64,
    /// `dispatch.max_distance_m`.
    pub max_distance_m: f64,
    /// `dispatch.emergency_units`.
    pub emergency_units: u32,
    /// `dispatch.duplicate_radius_m`.
    pub duplicate_radius_m: f64,
    /// `dispatch.duplicate_window_s` in ms.
    pub duplicate_window_ms: i64,
    /// `dispatch.max_clock_skew_s` in ms: a fix further in the future is refused.
    pub max_clock_skew_ms: i64,
    /// `dispatch.max_speed_mps`: a fix implying a faster move is refused.
    pub max_speed_mps: f64,
    /// `dispatch.index_slack_m`: a unit is re-indexed only when it moves further
    /// than this from its indexed point (queries widen by it and re-rank exactly).
    pub index_slack_m: f64,
    /// Units known before any hello (the config roster).
    pub roster: Vec<RosterUnit>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ack_timeout_ms: 30_000,
            max_position_age_ms: 120_000,
            max_distance_m: 50_000.0,
            emergency_units: 2,
            duplicate_radius_m: 300.0,
            duplicate_window_ms: 600_000,
            max_clock_skew_ms: 30_000,
            max_speed_mps: 100.0,
            index_slack_m: 25.0,
            roster: Vec::new(),
        }
    }
}

/// A unit as the config roster describes it. Roster details win over token claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RosterUnit {
    /// Unit id.
    pub id: UnitId,
    /// Radio callsign.
    pub callsign: Option<String>,
    /// Kind (`car`, `post`, …).
    pub kind: Option<String>,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Status before its first hello (default `off_duty`).
    pub status: Option<UnitStatus>,
    /// A stationary post's fixed location: its position never goes stale.
    pub location: Option<Location>,
}

/// The result of a successful command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Durable changes, in order.
    pub events: Vec<Event>,
    /// What the issuing client's `ok` carries.
    pub reply: Reply,
    /// An accepted position fix for the live feed (positions are not events).
    pub position: Option<PositionItem>,
}

/// What the issuing client's `ok` reply carries.
// The variants are whole objects by design (the hub encodes them once); boxing
// would change the public shape the hub is written against.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Reply {
    /// Nothing extra.
    #[default]
    None,
    /// `incident`.
    Incident(Incident),
    /// `incident` from a create; `new` is false when the idempotency key repeated.
    Created {
        /// The incident (after auto-dispatch ran).
        incident: Incident,
        /// False when `key` matched an earlier create.
        new: bool,
    },
    /// `unit`.
    Unit(Unit),
    /// A tablet's hello: its unit and its open assignment.
    Registered {
        /// The unit.
        unit: Unit,
        /// Its incident, if it holds one.
        incident: Option<Incident>,
    },
}

/// A position for the live feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionItem {
    /// Whose.
    pub unit_id: UnitId,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Degrees from north.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Metres per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// When the fix was taken.
    pub at_ms: i64,
}

/// One `incident.recommend` candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The unit.
    pub unit_id: UnitId,
    /// Great-circle metres to the target.
    pub distance_m: f64,
}

/// Why fewer candidates than asked were found (first that applies, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    /// No unit is available at all.
    NoUnitsAvailable,
    /// Available units lack a required capability.
    MissingCapability,
    /// Suitable units exist but their positions are too old (or missing).
    PositionsStale,
    /// Suitable, fresh units are all beyond `max_distance_m`.
    OutOfRange,
}

/// `incident.recommend`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Nearest first.
    pub candidates: Vec<Candidate>,
    /// Set when fewer than `count` were found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<Shortfall>,
}

/// Everything needed to rebuild an engine: what snapshots store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// Every incident, open and closed.
    pub incidents: Vec<Incident>,
    /// Every unit.
    pub units: Vec<Unit>,
    /// The number the next incident id gets.
    pub next_incident_no: u64,
}

/// A pending-queue key: priority first (1 before 2), then older before newer, then
/// the incident number (creation order) and the id itself.
type QueueKey = (u8, i64, u64, IncidentId);

/// How often (at most) Tick takes stale units out of the tree, in ms.
const PRUNE_EVERY_MIN_MS: i64 = 1_000;
/// The most units one incident may ask for.
pub const MAX_UNITS_NEEDED: u32 = 50;
/// The most candidates `incident.recommend` returns.
pub const MAX_RECOMMEND: usize = 100;
/// Category of the incidents the panic button makes.
pub const EMERGENCY_CATEGORY: &str = "officer_emergency";

/// The most `possible_duplicates` an incident lists (the newest ones): enough for
/// a dispatcher to compare side by side, and it keeps every incident event small
/// even when hundreds of reports of one event pour in.
pub const MAX_POSSIBLE_DUPLICATES: usize = 20;

/// The dispatch engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    incidents: HashMap<IncidentId, Incident>,
    units: HashMap<UnitId, Unit>,
    /// Available units with a position (see [`crate::index`]).
    index: UnitIndex,
    /// Roster posts with a fixed location: never stale.
    fixed: HashSet<UnitId>,
    /// Auto incidents short of units, served first-come within priority.
    pending: BTreeSet<QueueKey>,
    /// The key each queued incident is filed under (priority may change).
    queued: HashMap<IncidentId, QueueKey>,
    /// Open incidents by category, as points on the unit sphere: the nearby
    /// same-category lookup behind `possible_duplicates` without a scan.
    open_by_category: HashMap<String, RTree<GeomWithData<[f64; 3], IncidentId>>>,
    /// Where each open incident is filed in `open_by_category`.
    open_filed: HashMap<IncidentId, (String, [f64; 3])>,
    /// Idempotency keys seen, forever.
    keys: HashMap<String, IncidentId>,
    /// Unacknowledged assignments by deadline: Tick is O(expired).
    deadlines: BTreeSet<(i64, UnitId)>,
    /// The open emergency incident of a unit that pressed its panic button.
    open_emergency: HashMap<UnitId, IncidentId>,
    /// The number the next incident id gets.
    next_no: u64,
    /// Last stale-position pruning (private; not behaviour, only tree size).
    last_prune_ms: i64,
}

fn incident_no(id: &str) -> u64 {
    id.strip_prefix("I-").and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::BadRequest(msg.into())
}

fn check_priority(p: u8) -> Result<(), CoreError> {
    if (1..=5).contains(&p) {
        Ok(())
    } else {
        Err(bad(format!("priority {p} out of 1..=5")))
    }
}

fn check_category(c: &str) -> Result<(), CoreError> {
    if c.trim().is_empty() {
        Err(bad("category must not be empty"))
    } else {
        Ok(())
    }
}

fn check_caps(caps: &[Capability]) -> Result<(), CoreError> {
    if caps.len() > 32 {
        return Err(bad("at most 32 required capabilities"));
    }
    if caps.iter().any(|c| c.is_empty()) {
        return Err(bad("a capability must not be empty"));
    }
    Ok(())
}

fn check_optional_finite(name: &str, v: Option<f64>) -> Result<(), CoreError> {
    match v {
        Some(x) if !x.is_finite() => Err(bad(format!("{name} must be finite"))),
        _ => Ok(()),
    }
}

impl Engine {
    /// A new engine with the roster's units in place.
    pub fn new(config: EngineConfig) -> Self {
        let mut engine = Engine {
            index: UnitIndex::new(config.index_slack_m),
            fixed: HashSet::new(),
            incidents: HashMap::new(),
            units: HashMap::new(),
            pending: BTreeSet::new(),
            queued: HashMap::new(),
            open_by_category: HashMap::new(),
            open_filed: HashMap::new(),
            keys: HashMap::new(),
            deadlines: BTreeSet::new(),
            open_emergency: HashMap::new(),
            next_no: 1,
            last_prune_ms: i64::MIN,
            config,
        };
        for r in engine.config.roster.clone() {
            // A roster can only start a unit free, busy or off duty: the other
            // statuses need an incident (or a missed ack) the roster cannot give.
            let status = match r.status {
                Some(s @ (UnitStatus::Available | UnitStatus::Busy | UnitStatus::OffDuty)) => s,
                _ => UnitStatus::OffDuty,
            };
            let location = r.location.filter(|l| l.validate().is_ok());
            if location.is_some() {
                engine.fixed.insert(r.id.clone());
            }
            let unit = Unit {
                id: r.id.clone(),
                callsign: r.callsign,
                kind: r.kind,
                capabilities: r.capabilities,
                status,
                location,
                location_ms: None,
                heading: None,
                speed: None,
                incident_id: None,
                ack_deadline_ms: None,
            };
            engine.upsert_unit(unit);
        }
        engine
    }

    /// Applies one command at time `now_ms`. On error, state is unchanged.
    pub fn apply(&mut self, actor: &Actor, command: Command, now_ms: i64) -> Result<Applied, CoreError> {
        let mut ev = Vec::new();
        let mut position = None;
        let reply = match command {
            Command::RegisterUnit(profile) => self.register(actor, profile, &mut ev)?,
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
        if query.count > MAX_RECOMMEND {
            return Err(bad(format!("count must be at most {MAX_RECOMMEND}")));
        }
        if let Some(req) = &query.required {
            check_caps(req)?;
        }
        let (location, required, exclude) = match &query.target {
            RecommendTarget::Location(loc) => {
                loc.validate()?;
                (*loc, query.required.clone().unwrap_or_default(), Vec::new())
            }
            RecommendTarget::Incident(id) => {
                let inc = self
                    .incidents
                    .get(id)
                    .ok_or_else(|| CoreError::NotFound(format!("incident {id} not found")))?;
                let required = query.required.clone().unwrap_or_else(|| inc.required.clone());
                (inc.location, required, Self::exclusions(inc))
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
        });
        let candidates: Vec<Candidate> = found
            .into_iter()
            .map(|(unit_id, distance_m)| Candidate { unit_id, distance_m })
            .collect();
        let shortfall = if candidates.len() < query.count {
            Some(self.shortfall(location, &required, &exclude, query.count, now_ms))
        } else {
            None
        };
        Ok(Recommendation {
            candidates,
            shortfall,
        })
    }

    /// Why fewer than `count` units qualify: the first filter (availability,
    /// capability, freshness, range) that leaves fewer than `count` units. This is
    /// a scan of the fleet, run only on a shortfall.
    fn shortfall(
        &self,
        location: Location,
        required: &[Capability],
        exclude: &[UnitId],
        count: usize,
        now_ms: i64,
    ) -> Shortfall {
        let (mut available, mut capable, mut fresh) = (0usize, 0usize, 0usize);
        for u in self.units.values() {
            if u.status != UnitStatus::Available || exclude.contains(&u.id) {
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
        let _ = location;
        if available < count {
            Shortfall::NoUnitsAvailable
        } else if capable < count {
            Shortfall::MissingCapability
        } else if fresh < count {
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
            EventBody::Incident(inc) => self.upsert_incident(inc.clone()),
            EventBody::Unit(unit) => self.upsert_unit(unit.clone()),
            EventBody::Assignment { .. } => {}
        }
    }

    /// All state needed to rebuild this engine (sorted by id, so equal engines
    /// give equal snapshots).
    pub fn snapshot(&self) -> EngineSnapshot {
        let mut incidents: Vec<Incident> = self.incidents.values().cloned().collect();
        incidents.sort_by(|a, b| a.id.cmp(&b.id));
        let mut units: Vec<Unit> = self.units.values().cloned().collect();
        units.sort_by(|a, b| a.id.cmp(&b.id));
        EngineSnapshot {
            incidents,
            units,
            next_incident_no: self.next_no,
        }
    }

    /// An engine rebuilt from a snapshot (then `restore` the journal tail).
    pub fn from_snapshot(config: EngineConfig, snapshot: EngineSnapshot) -> Self {
        let mut engine = Engine::new(config);
        for unit in snapshot.units {
            engine.upsert_unit(unit);
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
        self.incidents.get(id)
    }

    /// A unit by id.
    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.units.get(id)
    }

    /// Open incidents, in no particular order.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values().filter(|i| i.is_open())
    }

    /// Every unit, in no particular order.
    pub fn units(&self) -> impl Iterator<Item = &Unit> {
        self.units.values()
    }

    /// Auto-dispatched incidents still short of units, in the order they will be
    /// served (priority, then oldest first).
    pub fn pending_queue(&self) -> impl Iterator<Item = &IncidentId> {
        self.pending.iter().map(|k| &k.3)
    }

    /// How many units are in the spatial index (available, positioned, not pruned).
    pub fn indexed_units(&self) -> usize {
        self.index.indexed_len()
    }

    // ----- derived state -------------------------------------------------------

    /// Replaces (or inserts) a unit and re-derives its index entry and deadline.
    fn upsert_unit(&mut self, unit: Unit) {
        let id = unit.id.clone();
        if let Some(old) = self.units.get(&id)
            && let Some(d) = old.ack_deadline_ms
        {
            self.deadlines.remove(&(d, id.clone()));
        }
        if unit.status == UnitStatus::Dispatched
            && let Some(d) = unit.ack_deadline_ms
        {
            self.deadlines.insert((d, id.clone()));
        }
        self.units.insert(id.clone(), unit);
        self.sync_index(&id);
    }

    /// Replaces (or inserts) an incident and re-derives queue, open set, keys.
    fn upsert_incident(&mut self, inc: Incident) {
        let id = inc.id.clone();
        let no = incident_no(&id);
        self.next_no = self.next_no.max(no + 1);
        if let Some(k) = &inc.key {
            self.keys.insert(k.clone(), id.clone());
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
        let open = inc.is_open();
        let short = open && inc.dispatch == DispatchMode::Auto && (inc.units.len() as u32) < inc.units_needed;
        let key = (inc.priority, inc.created_ms, no, inc.id.clone());
        let filing = (inc.category.clone(), geo::to_unit_vector(inc.location));
        let emergency = inc.emergency_unit.clone();
        if let Some(old) = self.queued.remove(id) {
            self.pending.remove(&old);
        }
        if short {
            self.pending.insert(key.clone());
            self.queued.insert(id.to_string(), key);
        }
        // Re-file only when it moved, changed category, or closed: most incident
        // changes (dispatch, ack, notes) leave the duplicate index as it is.
        let filed_same = open && self.open_filed.get(id) == Some(&filing);
        if !filed_same {
            if let Some((category, point)) = self.open_filed.remove(id)
                && let Some(tree) = self.open_by_category.get_mut(&category)
            {
                tree.remove(&GeomWithData::new(point, id.to_string()));
                if tree.size() == 0 {
                    self.open_by_category.remove(&category);
                }
            }
            if open {
                let (category, point) = filing;
                self.open_by_category
                    .entry(category.clone())
                    .or_default()
                    .insert(GeomWithData::new(point, id.to_string()));
                self.open_filed.insert(id.to_string(), (category, point));
            }
        }
        if let Some(u) = emergency {
            if open {
                self.open_emergency.insert(u, id.to_string());
            } else if self.open_emergency.get(&u).map(String::as_str) == Some(id) {
                self.open_emergency.remove(&u);
            }
        }
    }

    /// Open incidents of the same category within `duplicate_radius_m` created
    /// within `duplicate_window_ms`, oldest first, at most [`MAX_POSSIBLE_DUPLICATES`]
    /// (the newest ones when there are more).
    fn possible_duplicates(&self, n: &NewIncident, now_ms: i64) -> Vec<IncidentId> {
        let Some(tree) = self.open_by_category.get(&n.category) else {
            return Vec::new();
        };
        let since = now_ms.saturating_sub(self.config.duplicate_window_ms);
        let centre = geo::to_unit_vector(n.location);
        let reach = geo::chord2_for_metres(self.config.duplicate_radius_m);
        let mut found: Vec<(i64, u64, &Incident)> = tree
            .locate_within_distance(centre, reach)
            .filter_map(|g| self.incidents.get(&g.data))
            .filter(|o| {
                o.is_open()
                    && o.created_ms >= since
                    && o.location.distance_m(&n.location) <= self.config.duplicate_radius_m
            })
            .map(|o| (o.created_ms, incident_no(&o.id), o))
            .collect();
        found.sort_unstable_by_key(|(created, no, _)| (*created, *no));
        let skip = found.len().saturating_sub(MAX_POSSIBLE_DUPLICATES);
        found
            .into_iter()
            .skip(skip)
            .map(|(_, _, o)| o.id.clone())
            .collect()
    }

    /// Brings the spatial index in line with a unit; true when it entered the tree.
    fn sync_index(&mut self, id: &str) -> bool {
        let Some(u) = self.units.get(id) else { return false };
        let fixed = self.fixed.contains(id);
        self.index.sync(
            id,
            &u.capabilities,
            u.status == UnitStatus::Available,
            u.location,
            u.location_ms,
            fixed,
        )
    }

    fn set_deadline(&mut self, unit_id: &str, deadline: Option<i64>) {
        let Some(u) = self.units.get_mut(unit_id) else {
            return;
        };
        if let Some(d) = u.ack_deadline_ms.take() {
            self.deadlines.remove(&(d, unit_id.to_string()));
        }
        if let Some(d) = deadline {
            u.ack_deadline_ms = Some(d);
            self.deadlines.insert((d, unit_id.to_string()));
        }
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
        if let Some(inc) = self.incidents.get_mut(id) {
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
                body: EventBody::Incident(inc.clone()),
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

    fn emit_assignment(&self, unit_id: &str, incident_id: &str, change: Change, ev: &mut Vec<Event>) {
        if let Some(inc) = self.incidents.get(incident_id) {
            ev.push(Event {
                change,
                body: EventBody::Assignment {
                    unit_id: unit_id.to_string(),
                    incident: inc.clone(),
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
    fn attach(&mut self, incident_id: &str, unit_id: &str, now_ms: i64) {
        let deadline = now_ms.saturating_add(self.config.ack_timeout_ms);
        if let Some(u) = self.units.get_mut(unit_id) {
            u.status = UnitStatus::Dispatched;
            u.incident_id = Some(incident_id.to_string());
        }
        self.set_deadline(unit_id, Some(deadline));
        self.sync_index(unit_id);
        if let Some(inc) = self.incidents.get_mut(incident_id)
            && !inc.units.iter().any(|u| u == unit_id)
        {
            inc.units.push(unit_id.to_string());
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
        let held = self.units.get_mut(unit_id).and_then(|u| {
            u.status = status;
            u.incident_id.take()
        });
        if let Some(iid) = &held {
            if let Some(inc) = self.incidents.get_mut(iid) {
                inc.units.retain(|u| u != unit_id);
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
        let (query_loc, need, required, exclude) = {
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
            )
        };
        let picked = self.index.nearest(&Query {
            location: query_loc,
            k: need,
            max_distance_m: self.config.max_distance_m,
            required: &required,
            now_ms,
            max_age_ms: self.config.max_position_age_ms,
            exclude: &exclude,
        });
        if picked.is_empty() {
            return 0;
        }
        for (uid, _) in &picked {
            self.attach(incident_id, uid, now_ms);
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

    /// True when `unit` could be auto-dispatched to `inc` right now.
    fn eligible(&self, unit: &Unit, inc: &Incident, now_ms: i64) -> bool {
        unit.status == UnitStatus::Available
            && unit.incident_id.is_none()
            && self.is_fresh(unit, now_ms)
            && unit.has_all(&inc.required)
            && !inc.declined_by.contains(&unit.id)
            && inc.emergency_unit.as_deref() != Some(unit.id.as_str())
            && unit
                .location
                .is_some_and(|l| l.distance_m(&inc.location) <= self.config.max_distance_m)
    }

    /// A unit may have become eligible: serve the pending queue in order
    /// (priority, then oldest), dispatching each incident it qualifies for, until
    /// the unit is taken or the queue ends.
    fn serve_pending(&mut self, unit_id: &str, now_ms: i64, ev: &mut Vec<Event>) {
        // Walk the queue (priority, then age) from where the last round stopped,
        // cloning only the key of an incident this unit qualifies for; dispatching
        // it usually takes the unit out of the index, which ends the loop.
        let mut after: Option<QueueKey> = None;
        while self.index.is_indexed(unit_id) {
            let Some(unit) = self.units.get(unit_id) else {
                return;
            };
            let lower = match &after {
                Some(k) => Excluded(k),
                None => Unbounded,
            };
            let next = self
                .pending
                .range::<QueueKey, _>((lower, Unbounded))
                .find(|key| {
                    self.incidents
                        .get(&key.3)
                        .is_some_and(|inc| self.eligible(unit, inc, now_ms))
                })
                .cloned();
            let Some(key) = next else { return };
            self.dispatch(&key.3, now_ms, ev);
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

    fn register(&mut self, actor: &Actor, p: UnitProfile, ev: &mut Vec<Event>) -> Result<Reply, CoreError> {
        if p.id.trim().is_empty() || p.id.len() > 128 {
            return Err(bad("unit id must be 1..=128 bytes"));
        }
        Self::own_unit(actor, &p.id)?;
        if !self.units.contains_key(&p.id) {
            let unit = Unit {
                id: p.id.clone(),
                callsign: p.callsign,
                kind: p.kind,
                capabilities: p.capabilities,
                status: UnitStatus::OffDuty,
                location: None,
                location_ms: None,
                heading: None,
                speed: None,
                incident_id: None,
                ack_deadline_ms: None,
            };
            self.upsert_unit(unit);
            self.emit_unit(&p.id, Change::Created, ev);
        }
        let unit = self.get_unit(&p.id)?.clone();
        let incident = unit
            .incident_id
            .as_ref()
            .and_then(|i| self.incidents.get(i))
            .cloned();
        Ok(Reply::Registered { unit, incident })
    }

    fn validate_new(n: &NewIncident) -> Result<(), CoreError> {
        check_category(&n.category)?;
        check_priority(n.priority)?;
        n.location.validate()?;
        if n.units_needed == 0 || n.units_needed > MAX_UNITS_NEEDED {
            return Err(bad(format!("units_needed must be 1..={MAX_UNITS_NEEDED}")));
        }
        check_caps(&n.required)?;
        if n.key.as_deref().is_some_and(str::is_empty) {
            return Err(bad("key must not be empty"));
        }
        Ok(())
    }

    /// Makes an incident (validated by the caller), emits its creation and runs
    /// auto-dispatch. Returns its id.
    fn make_incident(
        &mut self,
        n: NewIncident,
        emergency_unit: Option<UnitId>,
        now_ms: i64,
        ev: &mut Vec<Event>,
    ) -> IncidentId {
        let no = self.next_no;
        self.next_no += 1;
        let id = format!("I-{no:06}");
        let possible_duplicates = self.possible_duplicates(&n, now_ms);
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
        let inc = Incident {
            id: id.clone(),
            key: n.key,
            category: n.category,
            priority: n.priority,
            status: IncidentStatus::Pending,
            location: n.location,
            address: n.address,
            description: n.description,
            source,
            units: Vec::new(),
            required: n.required,
            units_needed: n.units_needed,
            disposition: None,
            notes: Vec::new(),
            possible_duplicates,
            dispatch: n.dispatch,
            declined_by: Vec::new(),
            emergency_unit,
            created_ms: now_ms,
            updated_ms: now_ms,
        };
        self.upsert_incident(inc);
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
        if let Some(k) = &n.key
            && let Some(existing) = self.keys.get(k).and_then(|id| self.incidents.get(id))
        {
            return Ok(Reply::Created {
                incident: existing.clone(),
                new: false,
            });
        }
        Self::validate_new(&n)?;
        let id = self.make_incident(n, None, now_ms, ev);
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
        if let Some(c) = &patch.category {
            check_category(c)?;
        }
        if let Some(p) = patch.priority {
            check_priority(p)?;
        }
        if let Some(l) = &patch.location {
            l.validate()?;
        }
        self.open_incident(id)?;
        if patch == IncidentPatch::default() {
            return Ok(Reply::Incident(self.get_incident(id)?.clone()));
        }
        if let Some(inc) = self.incidents.get_mut(id) {
            if let Some(c) = patch.category {
                inc.category = c;
            }
            if let Some(p) = patch.priority {
                inc.priority = p;
            }
            if let Some(l) = patch.location {
                inc.location = l;
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
        if let Some(inc) = self.incidents.get_mut(id) {
            inc.status = IncidentStatus::Closed;
            inc.disposition = Some(disposition);
            inc.updated_ms = inc.updated_ms.max(now_ms);
        }
        // Units stay listed on the closed incident (who handled it) but are free.
        for u in &units {
            self.set_deadline(u, None);
            if let Some(unit) = self.units.get_mut(u) {
                unit.status = UnitStatus::Available;
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
            self.detach(unit_id, UnitStatus::Busy, now_ms, true);
            self.emit_incident(&other, Change::Unassigned, ev);
            self.emit_assignment(unit_id, &other, Change::Unassigned, ev);
            self.attach(id, unit_id, now_ms);
            self.finish_assign(id, unit_id, now_ms, ev);
            // The unit is busy with the new incident: the old one goes on.
            self.dispatch(&other, now_ms, ev);
        } else {
            self.attach(id, unit_id, now_ms);
            self.finish_assign(id, unit_id, now_ms, ev);
        }
        Ok(Reply::Incident(self.get_incident(id)?.clone()))
    }

    fn finish_assign(&mut self, id: &str, unit_id: &str, now_ms: i64, ev: &mut Vec<Event>) {
        // A dispatcher's explicit choice overrides an earlier decline.
        if let Some(inc) = self.incidents.get_mut(id) {
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
        self.get_incident(id)?;
        self.own_incident(actor, id)?;
        self.open_incident(id)?;
        self.push_note(id, &actor.sub, text, now_ms);
        self.emit_incident_all(id, Change::Noted, ev);
        Ok(Reply::Incident(self.get_incident(id)?.clone()))
    }

    fn push_note(&mut self, id: &str, by: &str, text: String, now_ms: i64) {
        if let Some(inc) = self.incidents.get_mut(id) {
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
        fix.location.validate()?;
        check_optional_finite("heading", fix.heading)?;
        check_optional_finite("speed", fix.speed)?;
        check_optional_finite("accuracy", fix.accuracy)?;
        Self::own_unit(actor, unit_id)?;
        // One lookup for the checks and the update (this is the hottest command).
        let max_skew_ms = self.config.max_clock_skew_ms;
        let max_speed_mps = self.config.max_speed_mps;
        let unit = self
            .units
            .get_mut(unit_id)
            .ok_or_else(|| CoreError::NotFound(format!("unit {unit_id} not found")))?;
        let at = fix.at_ms.unwrap_or(now_ms);
        if at > now_ms.saturating_add(max_skew_ms) {
            return Err(bad(format!(
                "fix at_ms {at} is more than {max_skew_ms} ms in the future"
            )));
        }
        if let Some(last) = unit.location_ms {
            if at < last {
                // Older than what we have: never move a unit backwards.
                return Ok(None);
            }
            if let Some(prev) = unit.location {
                // Fixes less than a second apart count as a second (GPS jitter).
                let dt_s = ((at - last) as f64 / 1000.0).max(1.0);
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
        if let Some(inc) = self.incidents.get_mut(incident_id)
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
        self.detach(unit_id, UnitStatus::Available, now_ms, false);
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
        };
        let iid = self.make_incident(n, Some(unit_id.to_string()), now_ms, ev);
        Ok(Reply::Incident(self.get_incident(&iid)?.clone()))
    }

    fn tick(&mut self, now_ms: i64, ev: &mut Vec<Event>) {
        while let Some((deadline, unit_id)) = self.deadlines.first().cloned() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let Some(u) = self.units.get_mut(&unit_id) else {
                continue;
            };
            if u.status != UnitStatus::Dispatched || u.ack_deadline_ms != Some(deadline) {
                continue;
            }
            // The deadline is already out of the set; forget it on the unit too.
            u.ack_deadline_ms = None;
            let Some(iid) = self.detach(&unit_id, UnitStatus::Unresponsive, now_ms, false) else {
                continue;
            };
            self.emit_unit(&unit_id, Change::AckTimeout, ev);
            self.emit_incident(&iid, Change::AckTimeout, ev);
            self.emit_assignment(&unit_id, &iid, Change::Unassigned, ev);
            self.dispatch(&iid, now_ms, ev);
        }
        let every = (self.config.max_position_age_ms / 4).max(PRUNE_EVERY_MIN_MS);
        if now_ms.saturating_sub(self.last_prune_ms) >= every {
            self.last_prune_ms = now_ms;
            self.index.prune_stale(now_ms, self.config.max_position_age_ms);
        }
    }
}
