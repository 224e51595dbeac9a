//! The simulated week (issue 10, item 4): drives the pure engine in-process
//! through days of a city, time passed as the argument, and reads what the
//! engine holds at the end of each day. Shared by the `cargo test` variant
//! (`tests/week.rs`, a small city) and the full-scale benchmark
//! (`benches/week.rs`, 3 000 incidents a day, 300 units, positions every 10 s).
//!
//! The day: calls arrive evenly; 30 % come from the citizens' app (an
//! idempotency key and a reporter; one in twenty is retried with the same key),
//! the rest from a console (one in five with a key). The nearest unit is
//! dispatched, acknowledges after 20 s, is on scene after 5 min, writes two
//! notes and closes the incident 20 to 40 min after it was assigned. Every unit
//! sends a fix every `position_every_ms` and drifts at walking-to-driving speed.
//!
//! Owns: the week's workload. Must never: read the clock (time is simulated).
#![allow(dead_code)]

use std::collections::BTreeMap;

use opcenter_core::{
    Actor, ActorKind, Change, Command, Engine, EngineConfig, Event, EventBody, Location, NewIncident,
    PositionFix, Reporter, UnitProfile, UnitStatus,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Monday 1 December 2025, 00:00 UTC.
pub(crate) const WEEK_T0: i64 = 1_764_547_200_000;
/// One day in ms.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The size of the simulated city.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WeekShape {
    /// Days simulated.
    pub(crate) days: u32,
    /// Calls per day.
    pub(crate) incidents_per_day: u32,
    /// Units on duty all week.
    pub(crate) units: usize,
    /// Every unit sends a fix this often (ms).
    pub(crate) position_every_ms: i64,
    /// The random seed.
    pub(crate) seed: u64,
}

/// What the engine held at the end of one day.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DayFigures {
    /// 1-based day number.
    pub(crate) day: u32,
    /// Incidents in memory (open and closed within retention).
    pub(crate) incidents_held: usize,
    /// Of which open.
    pub(crate) open: usize,
    /// Idempotency keys alive.
    pub(crate) keys_held: usize,
    /// The engine snapshot as the hub stores it (MessagePack, named fields), bytes.
    pub(crate) snapshot_bytes: usize,
    /// Incidents created so far.
    pub(crate) created: u64,
    /// Events the engine emitted so far (what the journal would hold).
    pub(crate) events: u64,
    /// Position fixes applied so far.
    pub(crate) positions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Ack,
    OnScene,
    Note,
    Close,
}

fn city(rng: &mut StdRng) -> Location {
    Location {
        lat: rng.random_range(51.15..51.31),
        lon: rng.random_range(51.25..51.49),
    }
}

/// Runs the week; `sink` receives every batch of events in order (a journal
/// writer, or nothing). Returns one line of figures per day.
pub(crate) fn run_week(
    shape: WeekShape,
    config: EngineConfig,
    mut sink: impl FnMut(&[Event], &Engine),
) -> Vec<DayFigures> {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let mut engine = Engine::new(config);
    let disp = Actor::dispatcher("week-disp");
    let app = Actor {
        sub: "week-gateway".into(),
        kind: ActorKind::Intake,
    };
    let mut now = WEEK_T0;
    let mut events = 0u64;
    let mut positions = 0u64;
    let mut created = 0u64;
    let mut emit = |evs: Vec<Event>, engine: &Engine, events: &mut u64| {
        if !evs.is_empty() {
            *events += evs.len() as u64;
            sink(&evs, engine);
        }
    };
    let mut where_: Vec<Location> = Vec::with_capacity(shape.units);
    for i in 0..shape.units {
        let id = format!("P-{i:04}");
        let me = Actor::unit(id.clone(), id.clone());
        let profile = UnitProfile {
            agency: None,
            id: id.clone(),
            callsign: Some(format!("Patrol {i}")),
            kind: Some("car".into()),
            capabilities: Vec::new(),
        };
        let a = engine.apply(&me, Command::RegisterUnit(profile), now).unwrap();
        emit(a.events, &engine, &mut events);
        let st = Command::SetStatus {
            unit_id: id,
            status: UnitStatus::Available,
        };
        let a = engine.apply(&me, st, now).unwrap();
        emit(a.events, &engine, &mut events);
        where_.push(city(&mut rng));
    }
    // (when, step) → (unit, incident); BTreeMap keeps them in time order.
    let mut plan: BTreeMap<(i64, u64), (Step, String, String)> = BTreeMap::new();
    let mut plan_no = 0u64;
    let call_every = DAY_MS / i64::from(shape.incidents_per_day.max(1));
    let mut next_call = now + call_every / 2;
    let mut figures = Vec::new();
    let end = WEEK_T0 + DAY_MS * i64::from(shape.days);
    let mut day_end = WEEK_T0 + DAY_MS;
    while now < end {
        now += shape.position_every_ms;
        // Positions: a fix per unit, drifting up to ~8 m/s.
        for (i, loc) in where_.iter_mut().enumerate() {
            let step = shape.position_every_ms as f64 / 1000.0 * 8.0 / 111_000.0;
            loc.lat = (loc.lat + rng.random_range(-step..step)).clamp(51.15, 51.31);
            loc.lon = (loc.lon + rng.random_range(-step..step)).clamp(51.25, 51.49);
            let id = format!("P-{i:04}");
            let me = Actor::unit(id.clone(), id.clone());
            let fix = PositionFix {
                location: *loc,
                heading: None,
                speed: None,
                accuracy: None,
                at_ms: Some(now),
            };
            if let Ok(a) = engine.apply(&me, Command::Position { unit_id: id, fix }, now) {
                emit(a.events, &engine, &mut events);
                positions += 1;
            }
        }
        // Calls due in this step.
        let mut fresh: Vec<Event> = Vec::new();
        while next_call <= now {
            created += 1;
            let mut n = NewIncident::call(
                ["theft", "noise", "traffic", "assault", "domestic"][rng.random_range(0..5)],
                rng.random_range(1..=5),
                city(&mut rng),
            );
            n.address = Some(format!("{} Dostyk street", rng.random_range(1..300)));
            n.description =
                Some("caller reports a disturbance near the entrance, two people involved".into());
            let from_app = rng.random_bool(0.3);
            let actor = if from_app {
                n.source = "app".into();
                n.key = Some(format!("app-{created}"));
                n.reporter = Some(Reporter {
                    name: Some("citizen".into()),
                    phone: Some(format!("+7 701 {:07}", created % 10_000_000)),
                });
                &app
            } else {
                if rng.random_bool(0.2) {
                    n.key = Some(format!("console-{created}"));
                }
                &disp
            };
            let retry = from_app && rng.random_bool(0.05);
            // Calls are taken at the step's time: the simulated clock has one tick per step.
            if let Ok(a) = engine.apply(actor, Command::CreateIncident(n.clone()), now) {
                fresh.extend(a.events);
            }
            if retry {
                let again = engine.apply(actor, Command::CreateIncident(n), now).unwrap();
                assert!(again.events.is_empty(), "a retried key made events");
            }
            next_call += call_every;
        }
        // What the assigned units do, at the times planned (before the tick, so
        // an acknowledgement planned inside the ack timeout beats it).
        let due: Vec<(i64, u64)> = plan.range(..=(now, u64::MAX)).map(|(k, _)| *k).collect();
        for k in due {
            let Some((step, unit, inc)) = plan.remove(&k) else {
                continue;
            };
            let me = Actor::unit(unit.clone(), unit.clone());
            let cmd = match step {
                Step::Ack => Command::Ack {
                    unit_id: unit.clone(),
                    incident_id: inc.clone(),
                },
                Step::OnScene => Command::SetStatus {
                    unit_id: unit.clone(),
                    status: UnitStatus::OnScene,
                },
                Step::Note => Command::Note {
                    incident_id: inc.clone(),
                    text: "spoke to the caller; witnesses being identified".into(),
                },
                Step::Close => Command::CloseIncident {
                    incident_id: inc.clone(),
                    disposition: "resolved".into(),
                },
            };
            // A step may have been overtaken (incident closed, unit reassigned).
            if let Ok(a) = engine.apply(&me, cmd, k.0) {
                fresh.extend(a.events);
            }
        }
        let tick = engine.apply(&Actor::system(), Command::Tick, now).unwrap();
        fresh.extend(tick.events);
        for e in &fresh {
            if let (Change::Assigned, EventBody::Assignment { unit_id, incident }) = (e.change, &e.body) {
                let close_after = rng.random_range(20..=40) * 60_000;
                for (after, step) in [
                    (20_000, Step::Ack),
                    (300_000, Step::OnScene),
                    (360_000, Step::Note),
                    (600_000, Step::Note),
                    (close_after, Step::Close),
                ] {
                    plan_no += 1;
                    plan.insert(
                        (now + after, plan_no),
                        (step, unit_id.clone(), incident.id.clone()),
                    );
                }
            }
        }
        emit(fresh, &engine, &mut events);
        if now >= day_end {
            let snapshot_bytes = rmp_serde::to_vec_named(&engine.snapshot()).unwrap().len();
            figures.push(DayFigures {
                day: figures.len() as u32 + 1,
                incidents_held: engine.incidents_held(),
                open: engine.open_incidents().count(),
                keys_held: engine.keys_held(),
                snapshot_bytes,
                created,
                events,
                positions,
            });
            day_end += DAY_MS;
        }
    }
    figures
}

/// The figures as a Markdown table (docs/durability.md).
pub(crate) fn table(figures: &[DayFigures]) -> String {
    let mut s = String::from(
        "| day | incidents created | held at day end | open | keys alive | snapshot bytes | events | positions |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.day, f.created, f.incidents_held, f.open, f.keys_held, f.snapshot_bytes, f.events, f.positions
        ));
    }
    s
}
