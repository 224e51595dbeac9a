//! Hostile numbers (issue 10, item 9): random command sequences whose every
//! client-supplied number is drawn from the extremes (`i64::MIN`/`MAX`, 0, -1,
//! NaN, ±infinity, `f64::MAX`, `u32::MAX`, `usize::MAX`), at extreme clock values
//! and with extreme timing config. Tests run in a debug build, where any integer
//! overflow panics: the property is that nothing panics and the engine's
//! cross-references still agree. Must never: use private engine state.

mod common;

use common::*;
use opcenter_core::*;
use proptest::prelude::*;

const T0: i64 = 1_764_300_000_000;

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        Just(-1),
        Just(MIN_FIX_AT_MS),
        (-120_000i64..120_000).prop_map(|d| T0 + d),
        any::<i64>(),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::MIN_POSITIVE),
        Just(-0.0),
        -1.0f64..1.0,
        any::<f64>(),
    ]
}

fn location() -> impl Strategy<Value = Location> {
    // Mostly valid places, so commands get past validation to the arithmetic.
    prop_oneof![
        1 => (float(), float()).prop_map(|(lat, lon)| Location { lat, lon }),
        4 => (-0.05f64..0.05, -0.05f64..0.05).prop_map(|(lat, lon)| Location { lat, lon }),
        1 => Just(Location { lat: 90.0, lon: 180.0 }),
        1 => Just(Location { lat: -90.0, lon: -180.0 }),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Hello(usize),
    Available(usize),
    Fix(usize, Location, Option<f64>, Option<f64>, Option<i64>),
    Create(u8, u32, Location, bool),
    Move(usize, Location, Option<u8>),
    Assign(usize, usize),
    Ack(usize, usize),
    Decline(usize, usize),
    Offline(usize),
    Emergency(usize, Option<Location>),
    Tick,
    Recommend(usize, Location),
}

fn step() -> impl Strategy<Value = Step> {
    let u = 0usize..2;
    let i = 0usize..4;
    let fix = (
        u.clone(),
        location(),
        proptest::option::of(float()),
        proptest::option::of(float()),
        proptest::option::of(int()),
    );
    let create = (
        any::<u8>(),
        prop_oneof![Just(u32::MAX), Just(0), 1u32..4, any::<u32>()],
        location(),
        any::<bool>(),
    );
    let count = prop_oneof![Just(usize::MAX), Just(0), 1usize..5, any::<usize>()];
    prop_oneof![
        2 => u.clone().prop_map(Step::Hello),
        2 => u.clone().prop_map(Step::Available),
        // Fixes carry most of the client's numbers: drawn most often.
        6 => fix.prop_map(|(u, l, h, s, t)| Step::Fix(u, l, h, s, t)),
        1 => create.prop_map(|(p, n, l, m)| Step::Create(p, n, l, m)),
        1 => (i.clone(), location(), proptest::option::of(any::<u8>())).prop_map(|(i, l, p)| Step::Move(i, l, p)),
        1 => (i.clone(), u.clone()).prop_map(|(i, u)| Step::Assign(i, u)),
        1 => (u.clone(), i.clone()).prop_map(|(u, i)| Step::Ack(u, i)),
        1 => (u.clone(), i.clone()).prop_map(|(u, i)| Step::Decline(u, i)),
        1 => u.clone().prop_map(Step::Offline),
        1 => (u, proptest::option::of(location())).prop_map(|(u, l)| Step::Emergency(u, l)),
        1 => Just(Step::Tick),
        1 => (count, location()).prop_map(|(n, l)| Step::Recommend(n, l)),
    ]
}

fn uid(i: usize) -> String {
    format!("U-{i}")
}

fn iid(i: usize) -> String {
    format!("I-{:06}", i + 1)
}

fn run(e: &mut Engine, s: &Step, now: i64) {
    let (actor, cmd) = match s.clone() {
        Step::Hello(u) => (
            tab(&uid(u)),
            Command::RegisterUnit(UnitProfile {
                agency: None,
                id: uid(u),
                callsign: None,
                kind: None,
                capabilities: vec![],
            }),
        ),
        Step::Available(u) => (
            tab(&uid(u)),
            Command::SetStatus {
                unit_id: uid(u),
                status: UnitStatus::Available,
            },
        ),
        Step::Fix(u, location, heading, speed, at_ms) => (
            tab(&uid(u)),
            Command::Position {
                unit_id: uid(u),
                fix: PositionFix {
                    location,
                    heading,
                    speed,
                    accuracy: speed,
                    at_ms,
                },
            },
        ),
        Step::Create(priority, units_needed, location, manual) => {
            let mut n = NewIncident::call("theft", priority, location);
            n.units_needed = units_needed;
            if manual {
                n.dispatch = DispatchMode::Manual;
            }
            (disp(), Command::CreateIncident(n))
        }
        Step::Move(i, location, priority) => (
            disp(),
            Command::UpdateIncident {
                incident_id: iid(i),
                patch: IncidentPatch {
                    location: Some(location),
                    priority,
                    ..IncidentPatch::default()
                },
            },
        ),
        Step::Assign(i, u) => (
            disp(),
            Command::Assign {
                incident_id: iid(i),
                unit_id: uid(u),
                force: true,
            },
        ),
        Step::Ack(u, i) => (
            tab(&uid(u)),
            Command::Ack {
                unit_id: uid(u),
                incident_id: iid(i),
            },
        ),
        Step::Decline(u, i) => (
            tab(&uid(u)),
            Command::Decline {
                unit_id: uid(u),
                incident_id: iid(i),
                reason: None,
            },
        ),
        Step::Offline(u) => (Actor::system(), Command::UnitOffline { unit_id: uid(u) }),
        Step::Emergency(u, location) => (
            tab(&uid(u)),
            Command::Emergency {
                unit_id: uid(u),
                active: true,
                location,
            },
        ),
        Step::Tick => (Actor::system(), Command::Tick),
        Step::Recommend(count, location) => {
            let q = RecommendQuery {
                agencies: None,
                target: RecommendTarget::Location(location),
                count,
                required: None,
            };
            let _ = e.recommend(&q, now);
            let q = RecommendQuery {
                agencies: None,
                target: RecommendTarget::Incident(iid(0)),
                count,
                required: None,
            };
            let _ = e.recommend(&q, now);
            return;
        }
    };
    let before = e.snapshot();
    if e.apply(&actor, cmd, now).is_err() {
        assert_eq!(e.snapshot(), before, "a refused command changed state");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn extreme_numbers_never_panic_or_break_invariants(
        steps in proptest::collection::vec((step(), int()), 1..60),
        ack in prop_oneof![Just(i64::MAX), Just(1), Just(30_000)],
        grace in prop_oneof![Just(i64::MAX), Just(0), Just(15_000)],
        skew in prop_oneof![Just(i64::MAX), Just(0), Just(30_000)],
        age in prop_oneof![Just(i64::MAX), Just(0), Just(120_000)],
    ) {
        let cfg = EngineConfig {
            ack_timeout_ms: ack,
            offline_grace_ms: grace,
            max_clock_skew_ms: skew,
            max_position_age_ms: age,
            ..EngineConfig::default()
        };
        let mut e = Engine::new(cfg.clone());
        for (s, now) in &steps {
            run(&mut e, s, *now);
        }
        check_invariants(&e);
        // What was recorded rebuilds an engine without a panic either.
        let mut r = Engine::from_snapshot(cfg, e.snapshot());
        r.sessions_lost(i64::MAX);
        r.apply(&Actor::system(), Command::Tick, i64::MAX).unwrap();
    }
}
