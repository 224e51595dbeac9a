//! Property tests of the engine: (1) its choice of units equals the brute-force
//! haversine minimum over eligible units, for fleets near the poles and across
//! the antimeridian, with positions moving inside and beyond the index slack;
//! (2) random command sequences keep the engine's invariants, never panic, and
//! snapshot + restore of the events reproduces the engine. Case counts are kept
//! modest so the crate's tests stay fast in debug builds.
//! Must never: use private engine state or wall-clock time.

mod common;

use common::*;
use opcenter_core::*;
use proptest::prelude::*;

const T0: i64 = 1_764_300_000_000;

fn wrap_lon(lon: f64) -> f64 {
    let mut l = lon;
    while l > 180.0 {
        l -= 360.0;
    }
    while l < -180.0 {
        l += 360.0;
    }
    l
}

/// Cluster centres that stress the geometry: both poles, the antimeridian, a city.
const CENTRES: [(f64, f64); 5] = [
    (89.9, 0.0),
    (-89.95, 120.0),
    (10.0, 179.99),
    (-35.0, -179.995),
    (51.2, 7.0),
];

#[derive(Debug, Clone)]
struct FleetUnit {
    dlat: f64,
    dlon: f64,
    available: bool,
    caps: (bool, bool),
    age_ms: i64,
    moves: Vec<(f64, f64)>,
}

fn fleet_unit() -> impl Strategy<Value = FleetUnit> {
    (
        -0.4f64..0.4,
        -0.6f64..0.6,
        prop::bool::weighted(0.7),
        (any::<bool>(), any::<bool>()),
        prop_oneof![Just(0i64), Just(60_000), Just(119_000), Just(200_000)],
        prop::collection::vec((-0.01f64..0.01, -0.01f64..0.01), 0..3),
    )
        .prop_map(|(dlat, dlon, available, caps, age_ms, moves)| FleetUnit {
            dlat,
            dlon,
            available,
            caps,
            age_ms,
            moves,
        })
}

fn place(c: (f64, f64), dlat: f64, dlon: f64) -> Location {
    let mut lat = c.0 + dlat;
    let mut lon = c.1 + dlon;
    if lat > 90.0 {
        lat = 180.0 - lat;
        lon += 180.0;
    }
    if lat < -90.0 {
        lat = -180.0 - lat;
        lon += 180.0;
    }
    at(lat, wrap_lon(lon))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn choice_equals_brute_force(
        centre in 0usize..CENTRES.len(),
        fleet in prop::collection::vec(fleet_unit(), 1..40),
        target in (-0.3f64..0.3, -0.5f64..0.5),
        req in (any::<bool>(), any::<bool>()),
        needed in 1u32..4,
        slack in prop_oneof![Just(0.0f64), Just(25.0), Just(800.0)],
    ) {
        let c = CENTRES[centre];
        let config = EngineConfig {
            max_speed_mps: 1e9,
            index_slack_m: slack,
            max_distance_m: 40_000.0,
            ..EngineConfig::default()
        };
        let now = T0 + 1_000_000;
        let mut e = Engine::new(config.clone());
        for (i, f) in fleet.iter().enumerate() {
            let id = format!("U{i:02}");
            let mut caps = Vec::new();
            if f.caps.0 { caps.push("k9"); }
            if f.caps.1 { caps.push("medic"); }
            let mut loc = place(c, f.dlat, f.dlon);
            let t = now - f.age_ms;
            let first = t - 10 * (f.moves.len() as i64 + 1);
            unit(&mut e, &id, &caps, loc, first);
            for (k, (a, b)) in f.moves.iter().enumerate() {
                loc = place(c, f.dlat + a, f.dlon + b);
                pos(&mut e, &id, loc, first + 10 * (k as i64 + 1)).unwrap();
            }
            // The last fix (possibly a big jump back to the base point).
            pos(&mut e, &id, place(c, f.dlat, f.dlon), t).unwrap();
            if !f.available {
                e.apply(&tab(&id), Command::SetStatus { unit_id: id.clone(), status: UnitStatus::Busy }, t).unwrap();
            }
        }
        let loc = place(c, target.0, target.1);
        let mut required = Vec::new();
        if req.0 { required.push("k9".to_string()); }
        if req.1 { required.push("medic".to_string()); }

        let mut brute: Vec<f64> = e
            .units()
            .filter(|u| u.status == UnitStatus::Available)
            .filter(|u| u.has_all(&required))
            .filter(|u| u.location_ms.is_some_and(|t| now - t <= config.max_position_age_ms))
            .filter_map(|u| u.location.map(|l| l.distance_m(&loc)))
            .filter(|d| *d <= config.max_distance_m)
            .collect();
        brute.sort_by(|a, b| a.partial_cmp(b).unwrap());

        // recommend first (read-only), then the real dispatch.
        let rec = e.recommend(&RecommendQuery {
agencies: None,
            target: RecommendTarget::Location(loc),
            count: 5,
            required: Some(required.clone()),
        }, now).unwrap();
        let got: Vec<f64> = rec.candidates.iter().map(|c| c.distance_m).collect();
        let want: Vec<f64> = brute.iter().take(5).copied().collect();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert!((g - w).abs() <= 1e-6 * w.max(1.0), "recommend {got:?} vs brute {want:?}");
        }
        prop_assert_eq!(rec.shortfall.is_some(), want.len() < 5);

        let mut n = NewIncident::call("theft", 2, loc);
        n.required = required.clone();
        n.units_needed = needed;
        let inc = create(&mut e, n, now);
        let mut chosen: Vec<f64> = inc
            .units
            .iter()
            .map(|u| e.unit(u).unwrap().location.unwrap().distance_m(&loc))
            .collect();
        chosen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let want: Vec<f64> = brute.iter().take(needed as usize).copied().collect();
        prop_assert_eq!(chosen.len(), want.len());
        for (g, w) in chosen.iter().zip(&want) {
            prop_assert!((g - w).abs() <= 1e-6 * w.max(1.0), "chosen {chosen:?} vs brute {want:?}");
        }
        check_invariants(&e);
    }
}

/// One step of a random session.
#[derive(Debug, Clone)]
enum Step {
    Create {
        dlat: f64,
        dlon: f64,
        priority: u8,
        needed: u32,
        manual: bool,
        k9: bool,
        key: Option<u8>,
    },
    Close {
        inc: usize,
        by_unit: bool,
    },
    Assign {
        inc: usize,
        unit: usize,
        force: bool,
    },
    Ack {
        unit: usize,
        own: bool,
        inc: usize,
    },
    Decline {
        unit: usize,
        own: bool,
        inc: usize,
    },
    Status {
        unit: usize,
        status: usize,
        by_dispatcher: bool,
    },
    Position {
        unit: usize,
        dlat: f64,
        dlon: f64,
        back_ms: i64,
    },
    Emergency {
        unit: usize,
        active: bool,
    },
    Note {
        inc: usize,
        unit: Option<usize>,
    },
    Update {
        inc: usize,
        priority: u8,
        dlat: f64,
    },
    Tick,
}

const UNITS: usize = 6;

fn step() -> impl Strategy<Value = Step> {
    let u = 0..UNITS;
    let i = 0usize..10;
    prop_oneof![
        3 => (-0.1f64..0.1, -0.1f64..0.1, 0u8..7, 0u32..4, prop::bool::weighted(0.2), any::<bool>(), prop::option::of(0u8..3))
            .prop_map(|(dlat, dlon, priority, needed, manual, k9, key)| Step::Create { dlat, dlon, priority, needed, manual, k9, key }),
        1 => (i.clone(), any::<bool>()).prop_map(|(inc, by_unit)| Step::Close { inc, by_unit }),
        1 => (i.clone(), u.clone(), any::<bool>()).prop_map(|(inc, unit, force)| Step::Assign { inc, unit, force }),
        2 => (u.clone(), prop::bool::weighted(0.8), i.clone()).prop_map(|(unit, own, inc)| Step::Ack { unit, own, inc }),
        2 => (u.clone(), prop::bool::weighted(0.8), i.clone()).prop_map(|(unit, own, inc)| Step::Decline { unit, own, inc }),
        2 => (u.clone(), 0usize..7, any::<bool>()).prop_map(|(unit, status, by_dispatcher)| Step::Status { unit, status, by_dispatcher }),
        3 => (u.clone(), -0.05f64..0.05, -0.05f64..0.05, prop_oneof![Just(0i64), Just(5_000)])
            .prop_map(|(unit, dlat, dlon, back_ms)| Step::Position { unit, dlat, dlon, back_ms }),
        1 => (u.clone(), any::<bool>()).prop_map(|(unit, active)| Step::Emergency { unit, active }),
        1 => (i.clone(), prop::option::of(u.clone())).prop_map(|(inc, unit)| Step::Note { inc, unit }),
        1 => (i, 0u8..7, -0.2f64..0.2).prop_map(|(inc, priority, dlat)| Step::Update { inc, priority, dlat }),
        2 => Just(Step::Tick),
    ]
}

/// A snapshot with the position fields of units cleared.
fn without_positions(mut s: EngineSnapshot) -> EngineSnapshot {
    for u in &mut s.units {
        u.location = None;
        u.location_ms = None;
        u.heading = None;
        u.speed = None;
    }
    s
}

fn uid(i: usize) -> String {
    format!("U{i}")
}

fn iid(i: usize) -> String {
    format!("I-{:06}", i + 1)
}

fn to_command(s: &Step, e: &Engine) -> (Actor, Command) {
    let own_inc = |u: usize, fallback: usize| {
        e.unit(&uid(u))
            .and_then(|x| x.incident_id.clone())
            .unwrap_or_else(|| iid(fallback))
    };
    match s.clone() {
        Step::Create {
            dlat,
            dlon,
            priority,
            needed,
            manual,
            k9,
            key,
        } => {
            let mut n = NewIncident::call("theft", priority, at(51.0 + dlat, 7.0 + dlon));
            n.units_needed = needed;
            n.dispatch = if manual {
                DispatchMode::Manual
            } else {
                DispatchMode::Auto
            };
            if k9 {
                n.required = vec!["k9".into()];
            }
            n.key = key.map(|k| format!("key-{k}"));
            (disp(), Command::CreateIncident(n))
        }
        Step::Close { inc, by_unit } => {
            let actor = if by_unit { tab(&uid(inc % UNITS)) } else { disp() };
            (
                actor,
                Command::CloseIncident {
                    incident_id: iid(inc),
                    disposition: "done".into(),
                },
            )
        }
        Step::Assign { inc, unit, force } => (
            disp(),
            Command::Assign {
                incident_id: iid(inc),
                unit_id: uid(unit),
                force,
            },
        ),
        Step::Ack { unit, own, inc } => {
            let incident_id = if own { own_inc(unit, inc) } else { iid(inc) };
            (
                tab(&uid(unit)),
                Command::Ack {
                    unit_id: uid(unit),
                    incident_id,
                },
            )
        }
        Step::Decline { unit, own, inc } => {
            let incident_id = if own { own_inc(unit, inc) } else { iid(inc) };
            (
                tab(&uid(unit)),
                Command::Decline {
                    unit_id: uid(unit),
                    incident_id,
                    reason: None,
                },
            )
        }
        Step::Status {
            unit,
            status,
            by_dispatcher,
        } => {
            let actor = if by_dispatcher { disp() } else { tab(&uid(unit)) };
            (
                actor,
                Command::SetStatus {
                    unit_id: uid(unit),
                    status: UnitStatus::ALL[status],
                },
            )
        }
        Step::Position {
            unit,
            dlat,
            dlon,
            back_ms,
        } => {
            let fix = PositionFix {
                location: at(51.0 + dlat, 7.0 + dlon),
                heading: None,
                speed: None,
                accuracy: None,
                // Sometimes a fix from long ago: it must be ignored.
                at_ms: if back_ms > 0 { Some(T0 - back_ms) } else { None },
            };
            (
                tab(&uid(unit)),
                Command::Position {
                    unit_id: uid(unit),
                    fix,
                },
            )
        }
        Step::Emergency { unit, active } => (
            tab(&uid(unit)),
            Command::Emergency {
                unit_id: uid(unit),
                active,
                location: None,
            },
        ),
        Step::Note { inc, unit } => {
            let actor = unit.map(|u| tab(&uid(u))).unwrap_or_else(disp);
            (
                actor,
                Command::Note {
                    incident_id: iid(inc),
                    text: "note".into(),
                },
            )
        }
        Step::Update { inc, priority, dlat } => (
            disp(),
            Command::UpdateIncident {
                incident_id: iid(inc),
                patch: IncidentPatch {
                    priority: Some(priority),
                    location: Some(at(51.0 + dlat, 7.0)),
                    ..Default::default()
                },
            },
        ),
        Step::Tick => (Actor::system(), Command::Tick),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_sessions_keep_invariants_and_replay(
        steps in prop::collection::vec((step(), 0i64..15_000), 1..70),
        split in 0usize..70,
    ) {
        // U0 and U1 work short shifts that open and close during the run
        // (steps are up to 15 s apart, a run up to ~17 min).
        let minute = u16::try_from((T0 / 60_000).rem_euclid(1440)).unwrap();
        let shift = |id: &str, from: u16, to: u16| RosterUnit {
            on_duty: Some(DutyWindow { from_min: (minute + from) % 1440, to_min: (minute + to) % 1440 }),
            ..roster(id)
        };
        let config = EngineConfig {
            max_speed_mps: 1e9,
            roster: vec![shift("U0", 2, 6), shift("U1", 1439, 4)],
            ..EngineConfig::default()
        };
        let mut e = Engine::new(config.clone());
        let start = e.snapshot();
        let mut now = T0;
        let mut events: Vec<Event> = Vec::new();
        for u in 0..UNITS {
            unit(&mut e, &uid(u), if u % 2 == 0 { &["k9"] } else { &[] }, at(51.0 + u as f64 * 0.01, 7.0), now);
        }
        // Registration events: replay them through apply's own output next time.
        let mut replay = Engine::new(config.clone());
        for u in 0..UNITS {
            unit(&mut replay, &uid(u), if u % 2 == 0 { &["k9"] } else { &[] }, at(51.0 + u as f64 * 0.01, 7.0), now);
        }
        let mut mid: Option<(EngineSnapshot, usize)> = None;
        for (k, (s, dt)) in steps.iter().enumerate() {
            if k == split {
                mid = Some((e.snapshot(), events.len()));
            }
            now += dt;
            let (actor, cmd) = to_command(s, &e);
            let before = e.snapshot();
            let declined_before: Vec<(String, Vec<String>)> =
                before.incidents.iter().map(|i| (i.id.clone(), i.declined_by.clone())).collect();
            match e.apply(&actor, cmd.clone(), now) {
                Ok(a) => {
                    // No auto-dispatch ever hands a unit an incident it declined
                    // (a dispatcher's explicit assign is the documented exception).
                    if !matches!(cmd, Command::Assign { .. }) {
                        for ev in &a.events {
                            if let (Change::Assigned, EventBody::Assignment { unit_id, incident }) = (ev.change, &ev.body) {
                                let declined = declined_before.iter().any(|(i, d)| i == &incident.id && d.contains(unit_id));
                                prop_assert!(!declined, "{unit_id} re-assigned declined {}", incident.id);
                            }
                        }
                    }
                    events.extend(a.events);
                }
                Err(_) => prop_assert_eq!(e.snapshot(), before, "a refused command changed state"),
            }
            check_invariants(&e);
        }
        let _ = start;
        // Events replayed on the same starting point give the same engine, up to
        // positions: they are not events (PROTOCOL.md section 6), so a unit's
        // location is as of its last event.
        for ev in &events {
            replay.restore(ev);
        }
        prop_assert_eq!(without_positions(replay.snapshot()), without_positions(e.snapshot()));
        // And from a mid-run snapshot plus the tail.
        if let Some((snap, from)) = mid {
            let mut r = Engine::from_snapshot(config.clone(), snap);
            for ev in &events[from..] {
                r.restore(ev);
            }
            prop_assert_eq!(without_positions(r.snapshot()), without_positions(e.snapshot()));
            // Both behave the same from here on, once every unit has a new fix.
            now += 1;
            for u in 0..UNITS {
                let fix = PositionFix { location: at(51.0, 7.0 + u as f64 * 0.01), heading: None, speed: None, accuracy: None, at_ms: None };
                let c = Command::Position { unit_id: uid(u), fix };
                prop_assert_eq!(e.apply(&tab(&uid(u)), c.clone(), now), r.apply(&tab(&uid(u)), c, now));
            }
            prop_assert_eq!(r.snapshot(), e.snapshot());
            let probe = [
                (Actor::system(), Command::Tick),
                (disp(), Command::CreateIncident(NewIncident::call("theft", 1, at(51.0, 7.0)))),
                (tab("U0"), Command::SetStatus { unit_id: "U0".into(), status: UnitStatus::Available }),
            ];
            for (i, (a, c)) in probe.iter().enumerate() {
                let t = now + 1 + i as i64 * 60_000;
                prop_assert_eq!(e.apply(a, c.clone(), t), r.apply(a, c.clone(), t));
            }
        }
    }
}
