//! Unit liveness, radio-only posts, roster precedence and hostile fix times,
//! with time passed in (issue 10, items 1, 9 and the second half of 10). Must
//! never: reach into private engine state or depend on wall-clock time.

mod common;

use common::*;
use opcenter_core::*;

const T0: i64 = 1_764_300_000_000;
const GRACE: i64 = 15_000;

/// A 200 m away (the scenario), B 5 km away.
fn two() -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    assert_eq!(e.config().offline_grace_ms, GRACE);
    unit(&mut e, "A", &[], at(0.0, 0.0018), T0);
    unit(&mut e, "B", &[], at(0.0, 0.045), T0);
    e
}

fn offline(e: &mut Engine, id: &str, now: i64) -> Applied {
    e.apply(&Actor::system(), Command::UnitOffline { unit_id: id.into() }, now)
        .unwrap()
}

fn hello(e: &mut Engine, id: &str, caps: &[&str], now: i64) -> Applied {
    let p = UnitProfile {
        agency: None,
        id: id.into(),
        callsign: Some(format!("cs-{id}")),
        kind: None,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
    };
    e.apply(&tab(id), Command::RegisterUnit(p), now).unwrap()
}

fn tick(e: &mut Engine, now: i64) -> Applied {
    e.apply(&Actor::system(), Command::Tick, now).unwrap()
}

fn near(e: &Engine, count: usize, now: i64) -> Recommendation {
    let q = RecommendQuery {
        agencies: None,
        target: RecommendTarget::Location(at(0.0, 0.0)),
        count,
        required: None,
    };
    e.recommend(&q, now).unwrap()
}

fn ids(r: &Recommendation) -> Vec<&str> {
    r.candidates.iter().map(|c| c.unit_id.as_str()).collect()
}

fn p1() -> NewIncident {
    NewIncident::call("assault", 1, at(0.0, 0.0))
}

#[test]
fn a_unit_offline_past_the_grace_is_not_dispatched_nor_recommended() {
    let mut e = two();
    let out = offline(&mut e, "A", T0 + 1_000);
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].change, Change::Offline);
    let a = e.unit("A").unwrap();
    assert!(!a.online);
    assert_eq!(a.offline_since_ms, Some(T0 + 1_000));
    // Still within the grace: nothing changes for dispatch.
    assert_eq!(ids(&near(&e, 2, T0 + 1_000 + GRACE)), vec!["A", "B"]);
    // Past it: only B, and A counts as "not available" for the shortfall.
    let r = near(&e, 2, T0 + 1_001 + GRACE);
    assert_eq!(ids(&r), vec!["B"]);
    assert_eq!(r.shortfall, Some(Shortfall::NoUnitsAvailable));
    let i = create(&mut e, p1(), T0 + 1_001 + GRACE);
    assert_eq!(i.units, vec!["B"]);
    check_invariants(&e);
}

#[test]
fn a_unit_offline_past_the_grace_does_not_take_a_pending_incident() {
    let mut e = Engine::new(EngineConfig::default());
    unit(&mut e, "A", &[], at(0.0, 0.0018), T0);
    offline(&mut e, "A", T0);
    let i = create(&mut e, p1(), T0 + GRACE + 1);
    assert!(i.units.is_empty());
    // A fix from a stale link (it still reaches us) does not make it eligible.
    pos(&mut e, "A", at(0.0, 0.0019), T0 + GRACE + 2).unwrap();
    assert!(e.incident(&i.id).unwrap().units.is_empty());
    // Its tablet says hello again: back online, it takes the waiting incident.
    let out = hello(&mut e, "A", &[], T0 + GRACE + 3);
    assert_eq!(out.events[0].change, Change::Online);
    assert_eq!(e.incident(&i.id).unwrap().units, vec!["A"]);
    check_invariants(&e);
}

#[test]
fn reconnecting_within_the_grace_changes_nothing_for_dispatch() {
    let mut e = two();
    offline(&mut e, "A", T0);
    let out = hello(&mut e, "A", &[], T0 + GRACE - 1);
    assert_eq!(out.events[0].change, Change::Online);
    let a = e.unit("A").unwrap();
    assert!(a.online);
    assert_eq!(a.offline_since_ms, None);
    // Long after the old grace would have run out, A is still the nearest.
    tick(&mut e, T0 + 5 * GRACE);
    let i = create(&mut e, p1(), T0 + 5 * GRACE);
    assert_eq!(i.units, vec!["A"]);
}

#[test]
fn an_offered_assignment_moves_on_after_the_grace_not_the_ack_timeout() {
    let mut e = two();
    let i = create(&mut e, p1(), T0 + 1);
    assert_eq!(i.units, vec!["A"]);
    offline(&mut e, "A", T0 + 2);
    assert!(tick(&mut e, T0 + 2 + GRACE).events.is_empty());
    let out = tick(&mut e, T0 + 3 + GRACE);
    let changes: Vec<_> = out.events.iter().map(|ev| (ev.change, ev.topic())).collect();
    assert!(changes.contains(&(Change::Offline, Topic::Units)), "{changes:?}");
    assert!(
        changes.contains(&(Change::Offline, Topic::Incidents)),
        "{changes:?}"
    );
    assert!(
        changes.contains(&(Change::Unassigned, Topic::Assignments)),
        "{changes:?}"
    );
    assert_eq!(e.unit("A").unwrap().status, UnitStatus::Unresponsive);
    assert_eq!(e.unit("A").unwrap().incident_id, None);
    // Well before the 30 s ack timeout, the next unit has it.
    assert!(GRACE + 3 < EngineConfig::default().ack_timeout_ms);
    assert_eq!(e.incident(&i.id).unwrap().units, vec!["B"]);
    check_invariants(&e);
}

#[test]
fn an_offered_unit_back_within_the_grace_keeps_its_offer() {
    let mut e = two();
    let i = create(&mut e, p1(), T0 + 1);
    offline(&mut e, "A", T0 + 2);
    hello(&mut e, "A", &[], T0 + 3);
    assert!(tick(&mut e, T0 + 3 + GRACE).events.is_empty());
    assert_eq!(e.incident(&i.id).unwrap().units, vec!["A"]);
    assert_eq!(e.unit("A").unwrap().status, UnitStatus::Dispatched);
}

#[test]
fn a_radio_post_is_never_auto_dispatched_or_recommended_but_can_be_assigned() {
    let mut c = EngineConfig::default();
    c.roster.push(RosterUnit {
        on_duty: None,
        agency: None,
        post: None,
        district: None,
        beat: None,
        id: "GATE".into(),
        callsign: Some("Gate".into()),
        kind: Some("post".into()),
        capabilities: vec![],
        status: Some(UnitStatus::Available),
        location: Some(at(0.0, 0.0001)),
        tablet: false,
    });
    let mut e = Engine::new(c);
    assert!(!e.unit("GATE").unwrap().tablet);
    let r = near(&e, 1, T0);
    assert!(r.candidates.is_empty());
    assert_eq!(r.shortfall, Some(Shortfall::NoUnitsAvailable));
    let i = create(&mut e, p1(), T0);
    assert!(i.units.is_empty());
    let out = e
        .apply(
            &disp(),
            Command::Assign {
                incident_id: i.id.clone(),
                unit_id: "GATE".into(),
                force: false,
            },
            T0 + 1,
        )
        .unwrap();
    match out.reply {
        Reply::Incident(inc) => assert_eq!(inc.units, vec!["GATE"]),
        r => panic!("{r:?}"),
    }
    check_invariants(&e);
}

#[test]
fn a_restart_counts_the_grace_from_the_restart() {
    let e = two();
    let snap = e.snapshot();
    // Both were online at the crash; the hub calls sessions_lost at recovery.
    let mut r = Engine::from_snapshot(EngineConfig::default(), snap);
    let restart = T0 + 3_600_000;
    r.sessions_lost(restart);
    let a = r.unit("A").unwrap();
    assert!(!a.online);
    assert_eq!(a.offline_since_ms, Some(restart));
    pos(&mut r, "A", at(0.0, 0.0018), restart).unwrap();
    pos(&mut r, "B", at(0.0, 0.045), restart).unwrap();
    assert_eq!(ids(&near(&r, 2, restart + GRACE)), vec!["A", "B"]);
    assert!(near(&r, 2, restart + GRACE + 1).candidates.is_empty());
}

#[test]
fn roster_values_win_over_snapshot_and_journal() {
    let roster = |callsign: &str, tablet: bool| RosterUnit {
        on_duty: None,
        agency: None,
        post: None,
        district: None,
        beat: None,
        id: "P-1".into(),
        callsign: Some(callsign.into()),
        kind: Some("car".into()),
        capabilities: vec!["k9".into()],
        status: None,
        location: None,
        tablet,
    };
    let mut c = EngineConfig::default();
    c.roster.push(roster("Old", true));
    let mut e = Engine::new(c);
    let out = hello(&mut e, "P-1", &["medic"], T0);
    let event = out.events[0].clone();
    assert_eq!(e.unit("P-1").unwrap().capabilities, vec!["k9"]);
    let snap = e.snapshot();

    let mut c2 = EngineConfig::default();
    c2.roster.push(roster("New", false));
    let from_snap = Engine::from_snapshot(c2.clone(), snap);
    let mut replayed = Engine::new(c2);
    replayed.restore(&event);
    for eng in [&from_snap, &replayed] {
        let u = eng.unit("P-1").unwrap();
        assert_eq!(u.callsign.as_deref(), Some("New"));
        assert_eq!(u.capabilities, vec!["k9"]);
        assert!(!u.tablet);
    }
}

#[test]
fn a_non_roster_unit_takes_its_token_profile_at_each_hello() {
    let mut e = Engine::new(EngineConfig::default());
    unit(&mut e, "X", &[], at(0.0, 0.001), T0);
    let q = RecommendQuery {
        agencies: None,
        target: RecommendTarget::Location(at(0.0, 0.0)),
        count: 1,
        required: Some(vec!["k9".into()]),
    };
    assert!(e.recommend(&q, T0).unwrap().candidates.is_empty());
    // Same session count (still online): a changed claim is a `profile` event.
    let out = hello(&mut e, "X", &["k9"], T0 + 1);
    assert_eq!(out.events[0].change, Change::Profile);
    assert_eq!(e.unit("X").unwrap().callsign.as_deref(), Some("cs-X"));
    assert_eq!(ids(&e.recommend(&q, T0 + 1).unwrap()), vec!["X"]);
    // The same claims again: no event.
    assert!(hello(&mut e, "X", &["k9"], T0 + 2).events.is_empty());
}

#[test]
fn fix_times_before_2020_or_too_far_ahead_are_bad_requests() {
    let mut e = two();
    let before = e.snapshot();
    let fix_at = |e: &mut Engine, at_ms: i64| {
        let fix = PositionFix {
            location: at(0.0, 0.0018),
            heading: None,
            speed: None,
            accuracy: None,
            at_ms: Some(at_ms),
        };
        e.apply(
            &tab("A"),
            Command::Position {
                unit_id: "A".into(),
                fix,
            },
            T0,
        )
    };
    for at_ms in [i64::MIN, -1, 0, MIN_FIX_AT_MS - 1, T0 + 30_001, i64::MAX] {
        let r = fix_at(&mut e, at_ms);
        assert!(matches!(r, Err(CoreError::BadRequest(_))), "{at_ms}: {r:?}");
    }
    assert_eq!(e.snapshot(), before);
    // The bounds themselves pass (2020-01-01 is older than the last fix, so it
    // is accepted and ignored).
    assert!(fix_at(&mut e, MIN_FIX_AT_MS).unwrap().position.is_none());
    assert!(fix_at(&mut e, T0 + 30_000).unwrap().position.is_some());
}
