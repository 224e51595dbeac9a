//! One test per dispatch rule of `shared/PROTOCOL.md` section 5 (and the engine
//! brief), with time passed in: no test sleeps. Must never: reach into private
//! engine state (only the public API), or depend on wall-clock time.

mod common;

use common::*;
use opcenter_core::*;

const T0: i64 = 1_764_300_000_000;

fn cfg() -> EngineConfig {
    EngineConfig::default()
}

fn call(lat: f64, lon: f64) -> NewIncident {
    NewIncident::call("theft", 3, at(lat, lon))
}

fn status(e: &mut Engine, who: &Actor, id: &str, s: UnitStatus, now: i64) -> Result<Applied, CoreError> {
    e.apply(
        who,
        Command::SetStatus {
            unit_id: id.into(),
            status: s,
        },
        now,
    )
}

fn ack(e: &mut Engine, u: &str, i: &str, now: i64) -> Result<Applied, CoreError> {
    e.apply(
        &tab(u),
        Command::Ack {
            unit_id: u.into(),
            incident_id: i.into(),
        },
        now,
    )
}

fn decline(e: &mut Engine, u: &str, i: &str, now: i64) -> Result<Applied, CoreError> {
    e.apply(
        &tab(u),
        Command::Decline {
            unit_id: u.into(),
            incident_id: i.into(),
            reason: Some("flat tyre".into()),
        },
        now,
    )
}

fn close(e: &mut Engine, who: &Actor, i: &str, now: i64) -> Result<Applied, CoreError> {
    e.apply(
        who,
        Command::CloseIncident {
            incident_id: i.into(),
            disposition: "resolved".into(),
        },
        now,
    )
}

fn assign(e: &mut Engine, i: &str, u: &str, force: bool, now: i64) -> Result<Applied, CoreError> {
    e.apply(
        &disp(),
        Command::Assign {
            incident_id: i.into(),
            unit_id: u.into(),
            force,
        },
        now,
    )
}

fn inc(e: &Engine, id: &str) -> Incident {
    e.incident(id).unwrap().clone()
}

fn st(e: &Engine, id: &str) -> UnitStatus {
    e.unit(id).unwrap().status
}

/// A fleet along the equator: A at 0.01°, B at 0.02°, C at 0.03° east.
fn three() -> Engine {
    let mut e = Engine::new(cfg());
    unit(&mut e, "A", &[], at(0.0, 0.01), T0);
    unit(&mut e, "B", &["k9"], at(0.0, 0.02), T0);
    unit(&mut e, "C", &["k9", "medic"], at(0.0, 0.03), T0);
    e
}

#[test]
fn auto_dispatch_picks_nearest_and_sets_deadline() {
    let mut e = three();
    let i = create(&mut e, call(0.0, 0.0), T0 + 5);
    assert_eq!(i.id, "I-000001");
    assert_eq!(i.units, vec!["A"]);
    assert_eq!(i.status, IncidentStatus::Dispatched);
    let a = e.unit("A").unwrap();
    assert_eq!(a.status, UnitStatus::Dispatched);
    assert_eq!(a.incident_id.as_deref(), Some("I-000001"));
    assert_eq!(a.ack_deadline_ms, Some(T0 + 5 + cfg().ack_timeout_ms));
    check_invariants(&e);
}

#[test]
fn dispatch_events_carry_whole_objects_and_assignment() {
    let mut e = three();
    let out = e
        .apply(&disp(), Command::CreateIncident(call(0.0, 0.0)), T0)
        .unwrap();
    let changes: Vec<(Topic, Change)> = out.events.iter().map(|ev| (ev.topic(), ev.change)).collect();
    assert_eq!(
        changes,
        vec![
            (Topic::Incidents, Change::Created),
            (Topic::Units, Change::Dispatched),
            (Topic::Incidents, Change::Dispatched),
            (Topic::Assignments, Change::Assigned),
        ]
    );
    assert_eq!(out.events[3].assignment_unit(), Some("A"));
    match &out.events[2].body {
        EventBody::Incident(i) => assert_eq!(i.units, vec!["A"]),
        b => panic!("{b:?}"),
    }
}

#[test]
fn eligibility_skips_busy_stale_incapable_far_and_off_duty() {
    let mut e = three();
    status(&mut e, &tab("A"), "A", UnitStatus::Busy, T0).unwrap();
    let mut n = call(0.0, 0.0);
    n.required = vec!["medic".into()];
    let i = create(&mut e, n, T0);
    assert_eq!(i.units, vec!["C"], "B lacks medic, A is busy");
    // Stale: B's fix is too old at this time; A off duty; nobody left.
    let later = T0 + cfg().max_position_age_ms + 1;
    status(&mut e, &tab("A"), "A", UnitStatus::OffDuty, later).unwrap();
    let i = create(&mut e, call(0.0, 0.0), later);
    assert!(i.units.is_empty());
    assert_eq!(i.status, IncidentStatus::Pending);
    // Far: a fresh unit beyond max_distance is not used.
    let mut e = Engine::new(cfg());
    unit(&mut e, "F", &[], at(0.0, 1.0), T0); // ~111 km > 50 km
    let i = create(&mut e, call(0.0, 0.0), T0);
    assert!(i.units.is_empty());
}

#[test]
fn roster_posts_never_go_stale_and_roster_details_win() {
    let mut c = cfg();
    c.roster.push(RosterUnit {
        on_duty: None,
        agency: None,
        post: None,
        district: None,
        beat: None,
        id: "POST-1".into(),
        callsign: Some("Gate".into()),
        kind: Some("post".into()),
        capabilities: vec!["k9".into()],
        status: Some(UnitStatus::Available),
        location: Some(at(0.0, 0.01)),
        tablet: true,
    });
    let mut e = Engine::new(c);
    let p = UnitProfile {
        agency: None,
        id: "POST-1".into(),
        callsign: Some("other".into()),
        kind: None,
        capabilities: vec![],
    };
    let out = e.apply(&tab("POST-1"), Command::RegisterUnit(p), T0).unwrap();
    // Its tablet's hello brings it online; the roster profile stays.
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].change, Change::Online);
    match out.reply {
        Reply::Registered { unit, incident } => {
            assert_eq!(unit.callsign.as_deref(), Some("Gate"));
            assert_eq!(unit.capabilities, vec!["k9"]);
            assert!(incident.is_none());
        }
        r => panic!("{r:?}"),
    }
    let i = create(&mut e, call(0.0, 0.0), T0 + 86_400_000);
    assert_eq!(i.units, vec!["POST-1"]);
}

#[test]
fn units_needed_gets_distinct_nearest_units_and_waits_for_the_rest() {
    let mut e = three();
    let mut n = call(0.0, 0.0);
    n.units_needed = 4;
    let i = create(&mut e, n, T0);
    assert_eq!(i.units, vec!["A", "B", "C"]);
    assert_eq!(e.pending_queue().cloned().collect::<Vec<_>>(), vec![i.id.clone()]);
    unit(&mut e, "D", &[], at(0.0, 0.3), T0 + 1);
    assert_eq!(inc(&e, &i.id).units, vec!["A", "B", "C", "D"]);
    assert_eq!(e.pending_queue().count(), 0);
    check_invariants(&e);
}

#[test]
fn pending_queue_is_priority_then_first_come() {
    let mut e = Engine::new(cfg());
    let p3_old = create(&mut e, NewIncident::call("theft", 3, at(0.0, 0.0)), T0);
    let p1 = create(&mut e, NewIncident::call("assault", 1, at(0.0, 0.0)), T0 + 1);
    let p3_new = create(&mut e, NewIncident::call("noise", 3, at(0.0, 0.0)), T0 + 2);
    let order: Vec<_> = e.pending_queue().cloned().collect();
    assert_eq!(order, vec![p1.id.clone(), p3_old.id.clone(), p3_new.id.clone()]);
    unit(&mut e, "A", &[], at(0.0, 0.01), T0 + 3);
    assert_eq!(inc(&e, &p1.id).units, vec!["A"]);
    unit(&mut e, "B", &[], at(0.0, 0.01), T0 + 4);
    assert_eq!(inc(&e, &p3_old.id).units, vec!["B"]);
    // Closing p1 frees A, which picks up the last one at once.
    close(&mut e, &disp(), &p1.id, T0 + 5).unwrap();
    assert_eq!(inc(&e, &p3_new.id).units, vec!["A"]);
    check_invariants(&e);
}

#[test]
fn pending_served_when_first_position_or_status_arrives() {
    let mut e = Engine::new(cfg());
    let i = create(&mut e, call(0.0, 0.0), T0);
    let p = UnitProfile {
        agency: None,
        id: "A".into(),
        ..Default::default()
    };
    e.apply(&tab("A"), Command::RegisterUnit(p), T0).unwrap();
    pos(&mut e, "A", at(0.0, 0.01), T0).unwrap();
    assert!(inc(&e, &i.id).units.is_empty(), "off duty");
    let out = status(&mut e, &tab("A"), "A", UnitStatus::Available, T0 + 1).unwrap();
    assert!(out.events.iter().any(|ev| ev.change == Change::Assigned));
    assert_eq!(inc(&e, &i.id).units, vec!["A"]);

    let mut e = Engine::new(cfg());
    let i = create(&mut e, call(0.0, 0.0), T0);
    let p = UnitProfile {
        agency: None,
        id: "B".into(),
        ..Default::default()
    };
    e.apply(&tab("B"), Command::RegisterUnit(p), T0).unwrap();
    status(&mut e, &tab("B"), "B", UnitStatus::Available, T0).unwrap();
    let out = pos(&mut e, "B", at(0.0, 0.01), T0 + 1).unwrap();
    assert!(out.position.is_some());
    assert_eq!(inc(&e, &i.id).units, vec!["B"]);
}

#[test]
fn pending_served_when_a_stale_unit_reports_again() {
    let mut e = Engine::new(cfg());
    unit(&mut e, "A", &[], at(0.0, 0.01), T0);
    let later = T0 + cfg().max_position_age_ms + 10;
    e.apply(&Actor::system(), Command::Tick, later).unwrap();
    let i = create(&mut e, call(0.0, 0.0), later);
    assert!(i.units.is_empty());
    pos(&mut e, "A", at(0.0, 0.01), later + 1).unwrap();
    assert_eq!(inc(&e, &i.id).units, vec!["A"]);
}

#[test]
fn manual_incidents_are_never_auto_dispatched() {
    let mut e = three();
    let mut n = call(0.0, 0.0);
    n.dispatch = DispatchMode::Manual;
    let i = create(&mut e, n, T0);
    assert!(i.units.is_empty());
    assert_eq!(e.pending_queue().count(), 0);
    unit(&mut e, "D", &[], at(0.0, 0.001), T0 + 1);
    assert!(inc(&e, &i.id).units.is_empty());
    assign(&mut e, &i.id, "B", false, T0 + 2).unwrap();
    // Decline sends it back to pending for a dispatcher, not to the next unit.
    decline(&mut e, "B", &i.id, T0 + 3).unwrap();
    let now = inc(&e, &i.id);
    assert!(now.units.is_empty());
    assert_eq!(now.status, IncidentStatus::Pending);
    assert_eq!(now.declined_by, vec!["B"]);
    // Ack timeout, too.
    assign(&mut e, &i.id, "C", false, T0 + 4).unwrap();
    e.apply(&Actor::system(), Command::Tick, T0 + 4 + cfg().ack_timeout_ms)
        .unwrap();
    assert_eq!(st(&e, "C"), UnitStatus::Unresponsive);
    assert!(inc(&e, &i.id).units.is_empty());
    check_invariants(&e);
}

#[test]
fn ack_and_on_scene_move_the_incident_along() {
    let mut e = three();
    let i = create(&mut e, call(0.0, 0.0), T0);
    let out = ack(&mut e, "A", &i.id, T0 + 1).unwrap();
    assert!(matches!(out.reply, Reply::Incident(ref x) if x.status == IncidentStatus::EnRoute));
    assert_eq!(st(&e, "A"), UnitStatus::EnRoute);
    assert_eq!(e.unit("A").unwrap().ack_deadline_ms, None);
    assert!(out.events.iter().any(|ev| ev.assignment_unit() == Some("A")));
    // A repeated ack changes nothing.
    assert!(ack(&mut e, "A", &i.id, T0 + 2).unwrap().events.is_empty());
    status(&mut e, &tab("A"), "A", UnitStatus::OnScene, T0 + 3).unwrap();
    assert_eq!(inc(&e, &i.id).status, IncidentStatus::OnScene);
    // No timeout after an ack.
    let out = e
        .apply(&Actor::system(), Command::Tick, T0 + 10 * cfg().ack_timeout_ms)
        .unwrap();
    assert!(out.events.is_empty());
}

#[test]
fn en_route_status_acts_like_an_ack() {
    let mut e = three();
    let i = create(&mut e, call(0.0, 0.0), T0);
    let out = status(&mut e, &tab("A"), "A", UnitStatus::EnRoute, T0 + 1).unwrap();
    assert_eq!(out.events[0].change, Change::Acknowledged);
    assert_eq!(inc(&e, &i.id).status, IncidentStatus::EnRoute);
}

#[test]
fn ack_timeout_makes_unit_unresponsive_and_moves_on() {
    let mut e = three();
    let i = create(&mut e, call(0.0, 0.0), T0);
    let deadline = T0 + cfg().ack_timeout_ms;
    assert!(
        e.apply(&Actor::system(), Command::Tick, deadline - 1)
            .unwrap()
            .events
            .is_empty()
    );
    let out = e.apply(&Actor::system(), Command::Tick, deadline).unwrap();
    assert!(out.events.iter().any(|ev| ev.change == Change::AckTimeout));
    assert_eq!(st(&e, "A"), UnitStatus::Unresponsive);
    assert_eq!(e.unit("A").unwrap().incident_id, None);
    assert_eq!(inc(&e, &i.id).units, vec!["B"]);
    // An unresponsive unit comes back by setting a status.
    status(&mut e, &tab("A"), "A", UnitStatus::Available, deadline + 1).unwrap();
    assert_eq!(st(&e, "A"), UnitStatus::Available);
    check_invariants(&e);
}

#[test]
fn decline_frees_unit_and_never_returns_to_a_decliner() {
    let mut e = three();
    let i = create(&mut e, call(0.0, 0.0), T0);
    let out = decline(&mut e, "A", &i.id, T0 + 1).unwrap();
    assert!(out.events.iter().any(|ev| ev.change == Change::Declined));
    assert_eq!(st(&e, "A"), UnitStatus::Available);
    assert_eq!(inc(&e, &i.id).units, vec!["B"]);
    decline(&mut e, "B", &i.id, T0 + 2).unwrap();
    decline(&mut e, "C", &i.id, T0 + 3).unwrap();
    let now = inc(&e, &i.id);
    assert!(now.units.is_empty(), "all declined: pending, not back to A");
    assert_eq!(now.status, IncidentStatus::Pending);
    assert_eq!(now.declined_by, vec!["A", "B", "C"]);
    // Recommend leaves decliners out too.
    let r = e
        .recommend(
            &RecommendQuery {
                agencies: None,
                target: RecommendTarget::Incident(i.id.clone()),
                count: 3,
                required: None,
            },
            T0 + 4,
        )
        .unwrap();
    assert!(r.candidates.is_empty());
    // A dispatcher may still assign a decliner explicitly.
    assign(&mut e, &i.id, "A", false, T0 + 5).unwrap();
    assert_eq!(inc(&e, &i.id).units, vec!["A"]);
    check_invariants(&e);
}

#[test]
fn decline_frees_a_unit_for_the_pending_queue() {
    let mut e = Engine::new(cfg());
    unit(&mut e, "A", &[], at(0.0, 0.01), T0);
    let first = create(&mut e, call(0.0, 0.0), T0);
    let second = create(&mut e, call(0.0, 0.02), T0 + 1);
    assert!(second.units.is_empty());
    decline(&mut e, "A", &first.id, T0 + 2).unwrap();
    assert_eq!(inc(&e, &second.id).units, vec!["A"]);
    assert!(inc(&e, &first.id).units.is_empty());
}

#[test]
fn close_frees_units_and_is_terminal() {
    let mut e = three();
    let mut n = call(0.0, 0.0);
    n.units_needed = 2;
    let i = create(&mut e, n, T0);
    let out = close(&mut e, &tab("A"), &i.id, T0 + 1).unwrap();
    let assigned: Vec<_> = out.events.iter().filter_map(|ev| ev.assignment_unit()).collect();
    assert_eq!(assigned, vec!["A", "B"]);
    let closed = inc(&e, &i.id);
    assert_eq!(closed.status, IncidentStatus::Closed);
    assert_eq!(closed.disposition.as_deref(), Some("resolved"));
    assert_eq!(st(&e, "A"), UnitStatus::Available);
    assert_eq!(st(&e, "B"), UnitStatus::Available);
    let conflict = |r: Result<Applied, CoreError>| assert!(matches!(r, Err(CoreError::Conflict(_))), "{r:?}");
    conflict(close(&mut e, &disp(), &i.id, T0 + 2));
    conflict(assign(&mut e, &i.id, "C", false, T0 + 2));
    conflict(e.apply(
        &disp(),
        Command::Note {
            incident_id: i.id.clone(),
            text: "x".into(),
        },
        T0 + 2,
    ));
    conflict(e.apply(
        &disp(),
        Command::UpdateIncident {
            incident_id: i.id.clone(),
            patch: IncidentPatch {
                priority: Some(1),
                ..Default::default()
            },
        },
        T0 + 2,
    ));
}

#[test]
fn assign_conflicts_unless_forced_and_force_moves_the_other_incident_on() {
    let mut e = three();
    let first = create(&mut e, call(0.0, 0.0), T0);
    assert_eq!(first.units, vec!["A"]);
    let mut n = call(0.0, 0.0);
    n.dispatch = DispatchMode::Manual;
    let second = create(&mut e, n, T0 + 1);
    assert!(matches!(
        assign(&mut e, &second.id, "A", false, T0 + 2),
        Err(CoreError::Conflict(_))
    ));
    let out = assign(&mut e, &second.id, "A", true, T0 + 2).unwrap();
    assert!(out.events.iter().any(|ev| ev.change == Change::Unassigned));
    assert_eq!(inc(&e, &second.id).units, vec!["A"]);
    assert_eq!(
        inc(&e, &first.id).units,
        vec!["B"],
        "first goes to the next nearest"
    );
    assert!(matches!(
        assign(&mut e, "I-999999", "A", false, T0),
        Err(CoreError::NotFound(_))
    ));
    assert!(matches!(
        assign(&mut e, &second.id, "ZZ", false, T0),
        Err(CoreError::NotFound(_))
    ));
    status(&mut e, &disp(), "C", UnitStatus::OffDuty, T0 + 3).unwrap();
    assert!(matches!(
        assign(&mut e, &second.id, "C", false, T0 + 3),
        Err(CoreError::Conflict(_))
    ));
    check_invariants(&e);
}

#[test]
fn emergency_dispatches_other_units_at_the_officers_position() {
    let mut e = three();
    unit(&mut e, "D", &[], at(0.0, 0.04), T0);
    let out = e
        .apply(
            &tab("A"),
            Command::Emergency {
                unit_id: "A".into(),
                active: true,
                location: None,
            },
            T0 + 1,
        )
        .unwrap();
    assert_eq!(out.events[0].change, Change::Emergency);
    let Reply::Incident(i) = out.reply else { panic!() };
    assert_eq!(i.category, "officer_emergency");
    assert_eq!(i.priority, 1);
    assert_eq!(i.source, "patrol");
    assert_eq!(i.location, at(0.0, 0.01));
    assert_eq!(i.units, vec!["B", "C"], "two nearest OTHER units");
    assert_eq!(i.emergency_unit.as_deref(), Some("A"));
    // Pressing again returns the same incident.
    let again = e
        .apply(
            &tab("A"),
            Command::Emergency {
                unit_id: "A".into(),
                active: true,
                location: None,
            },
            T0 + 2,
        )
        .unwrap();
    assert!(again.events.is_empty());
    // Cleared: a note on the open emergency.
    let out = e
        .apply(
            &tab("A"),
            Command::Emergency {
                unit_id: "A".into(),
                active: false,
                location: None,
            },
            T0 + 3,
        )
        .unwrap();
    assert_eq!(out.events[0].change, Change::Emergency);
    assert_eq!(inc(&e, &i.id).notes.len(), 1);
    // No position: BadRequest.
    let p = UnitProfile {
        agency: None,
        id: "X".into(),
        ..Default::default()
    };
    e.apply(&tab("X"), Command::RegisterUnit(p), T0).unwrap();
    let r = e.apply(
        &tab("X"),
        Command::Emergency {
            unit_id: "X".into(),
            active: true,
            location: None,
        },
        T0,
    );
    assert!(matches!(r, Err(CoreError::BadRequest(_))));
    // Someone else's panic button: forbidden.
    let r = e.apply(
        &tab("B"),
        Command::Emergency {
            unit_id: "A".into(),
            active: true,
            location: None,
        },
        T0,
    );
    assert!(matches!(r, Err(CoreError::Forbidden(_))));
}

#[test]
fn possible_duplicates_same_category_near_and_recent() {
    let mut e = Engine::new(cfg());
    let a = create(&mut e, call(0.0, 0.0), T0);
    let _other_cat = create(&mut e, NewIncident::call("noise", 3, at(0.0, 0.0)), T0);
    let _far = create(&mut e, call(0.0, 0.1), T0);
    let b = create(&mut e, call(0.0, 0.001), T0 + 1000);
    assert_eq!(b.possible_duplicates, vec![a.id.clone()]);
    close(&mut e, &disp(), &b.id, T0 + 2000).unwrap();
    let c = create(&mut e, call(0.0, 0.0), T0 + 3000);
    assert_eq!(
        c.possible_duplicates,
        vec![a.id.clone()],
        "closed ones are not duplicates"
    );
    let late = create(&mut e, call(0.0, 0.0), T0 + cfg().duplicate_window_ms + 1000);
    assert_eq!(
        late.possible_duplicates,
        vec![c.id.clone()],
        "a is out of the window"
    );
}

#[test]
fn idempotency_key_returns_the_first_incident_without_events() {
    let mut e = Engine::new(cfg());
    let mut n = call(0.0, 0.0);
    n.key = Some("k-1".into());
    let first = create(&mut e, n.clone(), T0);
    let out = e.apply(&disp(), Command::CreateIncident(n), T0 + 5).unwrap();
    assert!(out.events.is_empty());
    assert_eq!(
        out.reply,
        Reply::Created {
            incident: first,
            new: false
        }
    );
}

#[test]
fn position_rules_old_future_and_too_fast() {
    let mut e = three();
    let out = pos(&mut e, "A", at(0.0, 0.0101), T0 - 1).unwrap();
    assert!(
        out.position.is_none() && out.events.is_empty(),
        "older fix ignored"
    );
    assert_eq!(e.unit("A").unwrap().location, Some(at(0.0, 0.01)));
    let future = e.apply(
        &tab("A"),
        Command::Position {
            unit_id: "A".into(),
            fix: PositionFix {
                location: at(0.0, 0.01),
                heading: None,
                speed: None,
                accuracy: None,
                at_ms: Some(T0 + cfg().max_clock_skew_ms + 1),
            },
        },
        T0,
    );
    assert!(matches!(future, Err(CoreError::BadRequest(_))));
    // 1° in 10 s is ~11 km/s.
    assert!(matches!(
        pos(&mut e, "A", at(0.0, 1.01), T0 + 10_000),
        Err(CoreError::BadRequest(_))
    ));
    let out = e
        .apply(
            &tab("A"),
            Command::Position {
                unit_id: "A".into(),
                fix: PositionFix {
                    location: at(0.0, 0.0102),
                    heading: Some(90.0),
                    speed: Some(3.0),
                    accuracy: None,
                    at_ms: None,
                },
            },
            T0 + 20_000,
        )
        .unwrap();
    let p = out.position.unwrap();
    assert_eq!((p.at_ms, p.heading), (T0 + 20_000, Some(90.0)));
    assert_eq!(e.unit("A").unwrap().location_ms, Some(T0 + 20_000));
    // Someone else's position: forbidden.
    assert!(matches!(
        e.apply(
            &tab("B"),
            Command::Position {
                unit_id: "A".into(),
                fix: PositionFix {
                    location: at(0.0, 0.0),
                    heading: None,
                    speed: None,
                    accuracy: None,
                    at_ms: None
                }
            },
            T0 + 30_000
        ),
        Err(CoreError::Forbidden(_))
    ));
}

#[test]
fn register_creates_once() {
    let mut e = Engine::new(cfg());
    let p = UnitProfile {
        agency: None,
        id: "P-1".into(),
        callsign: Some("Alpha".into()),
        kind: Some("car".into()),
        capabilities: vec!["k9".into()],
    };
    let out = e
        .apply(&tab("P-1"), Command::RegisterUnit(p.clone()), T0)
        .unwrap();
    assert_eq!(out.events.len(), 1);
    assert_eq!(
        (out.events[0].topic(), out.events[0].change),
        (Topic::Units, Change::Created)
    );
    assert_eq!(st(&e, "P-1"), UnitStatus::OffDuty);
    status(&mut e, &tab("P-1"), "P-1", UnitStatus::Busy, T0).unwrap();
    let out = e
        .apply(&tab("P-1"), Command::RegisterUnit(p.clone()), T0)
        .unwrap();
    assert!(out.events.is_empty());
    assert_eq!(st(&e, "P-1"), UnitStatus::Busy);
    assert!(matches!(
        e.apply(&tab("P-2"), Command::RegisterUnit(p), T0),
        Err(CoreError::Forbidden(_))
    ));
}

#[test]
fn status_rules() {
    let mut e = three();
    for s in [UnitStatus::Dispatched, UnitStatus::Unresponsive] {
        assert!(matches!(
            status(&mut e, &disp(), "A", s, T0),
            Err(CoreError::BadRequest(_))
        ));
    }
    assert!(matches!(
        status(&mut e, &tab("A"), "A", UnitStatus::EnRoute, T0),
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        status(&mut e, &tab("B"), "A", UnitStatus::Busy, T0),
        Err(CoreError::Forbidden(_))
    ));
    assert!(matches!(
        status(&mut e, &disp(), "Q", UnitStatus::Busy, T0),
        Err(CoreError::NotFound(_))
    ));
    let i = create(&mut e, call(0.0, 0.0), T0);
    assert!(matches!(
        status(&mut e, &tab("A"), "A", UnitStatus::Available, T0),
        Err(CoreError::Conflict(_))
    ));
    // A dispatcher takes it off; the incident goes to the next unit.
    status(&mut e, &disp(), "A", UnitStatus::Busy, T0 + 1).unwrap();
    assert_eq!(inc(&e, &i.id).units, vec!["B"]);
    assert_eq!(e.unit("A").unwrap().incident_id, None);
    check_invariants(&e);
}

#[test]
fn actors_may_only_act_on_their_own() {
    let mut e = three();
    let i = create(&mut e, call(0.0, 0.0), T0);
    let forbidden =
        |r: Result<Applied, CoreError>| assert!(matches!(r, Err(CoreError::Forbidden(_))), "{r:?}");
    forbidden(ack(&mut e, "B", &i.id, T0));
    forbidden(decline(&mut e, "B", &i.id, T0));
    forbidden(close(&mut e, &tab("B"), &i.id, T0));
    forbidden(e.apply(
        &tab("B"),
        Command::Note {
            incident_id: i.id.clone(),
            text: "hi".into(),
        },
        T0,
    ));
    forbidden(e.apply(
        &tab("B"),
        Command::Ack {
            unit_id: "A".into(),
            incident_id: i.id.clone(),
        },
        T0,
    ));
    forbidden(e.apply(&tab("B"), Command::CreateIncident(call(0.0, 0.0)), T0));
    // Its own: fine, and notes are signed with the token sub.
    let out = e
        .apply(
            &tab("A"),
            Command::Note {
                incident_id: i.id.clone(),
                text: "arriving".into(),
            },
            T0,
        )
        .unwrap();
    assert!(out.events.iter().any(|ev| ev.assignment_unit() == Some("A")));
    assert_eq!(inc(&e, &i.id).notes[0].by, "sub-A");
}

#[test]
fn bad_input_is_refused_and_state_unchanged() {
    let mut e = three();
    let i = create(&mut e, call(0.0, 0.0), T0);
    let before = e.snapshot();
    let mut bads: Vec<NewIncident> = Vec::new();
    for (lat, lon) in [(f64::NAN, 0.0), (0.0, f64::INFINITY), (91.0, 0.0), (0.0, -180.5)] {
        bads.push(call(lat, lon));
    }
    for p in [0u8, 6, 255] {
        bads.push(NewIncident::call("x", p, at(0.0, 0.0)));
    }
    bads.push(NewIncident::call("  ", 3, at(0.0, 0.0)));
    for n in [0u32, 51, u32::MAX] {
        let mut b = call(0.0, 0.0);
        b.units_needed = n;
        bads.push(b);
    }
    for b in bads {
        let r = e.apply(&disp(), Command::CreateIncident(b.clone()), T0 + 1);
        assert!(matches!(r, Err(CoreError::BadRequest(_))), "{b:?} -> {r:?}");
    }
    let long = "x".repeat(MAX_NOTE_BYTES + 1);
    let cmds = vec![
        Command::Note {
            incident_id: i.id.clone(),
            text: long,
        },
        Command::UpdateIncident {
            incident_id: i.id.clone(),
            patch: IncidentPatch {
                priority: Some(9),
                ..Default::default()
            },
        },
        Command::UpdateIncident {
            incident_id: i.id.clone(),
            patch: IncidentPatch {
                location: Some(at(100.0, 0.0)),
                ..Default::default()
            },
        },
        Command::UpdateIncident {
            incident_id: "I-424242".into(),
            patch: IncidentPatch::default(),
        },
        Command::CloseIncident {
            incident_id: "nope".into(),
            disposition: "x".into(),
        },
        Command::Ack {
            unit_id: "nope".into(),
            incident_id: i.id.clone(),
        },
        Command::Position {
            unit_id: "nope".into(),
            fix: PositionFix {
                location: at(0.0, 0.0),
                heading: None,
                speed: None,
                accuracy: None,
                at_ms: None,
            },
        },
        Command::Position {
            unit_id: "A".into(),
            fix: PositionFix {
                location: at(0.0, 0.0),
                heading: Some(f64::NAN),
                speed: None,
                accuracy: None,
                at_ms: None,
            },
        },
        Command::Ack {
            unit_id: "B".into(),
            incident_id: i.id.clone(),
        },
    ];
    for c in cmds {
        let r = e.apply(&disp(), c.clone(), T0 + 1);
        assert!(r.is_err(), "{c:?} -> {r:?}");
    }
    assert_eq!(e.snapshot(), before);
}

#[test]
fn recommend_ranks_and_explains_shortfall() {
    let mut e = three();
    let q = |target: RecommendTarget, count: usize, required: Option<Vec<String>>| RecommendQuery {
        agencies: None,
        target,
        count,
        required,
    };
    let r = e
        .recommend(&q(RecommendTarget::Location(at(0.0, 0.0)), 3, None), T0)
        .unwrap();
    let ids: Vec<_> = r.candidates.iter().map(|c| c.unit_id.as_str()).collect();
    assert_eq!(ids, vec!["A", "B", "C"]);
    assert!((r.candidates[0].distance_m - 1111.95).abs() < 1.0);
    assert_eq!(r.shortfall, None);
    let r = e
        .recommend(&q(RecommendTarget::Location(at(0.0, 0.0)), 4, None), T0)
        .unwrap();
    assert_eq!(r.shortfall, Some(Shortfall::NoUnitsAvailable));
    let r = e
        .recommend(
            &q(
                RecommendTarget::Location(at(0.0, 0.0)),
                3,
                Some(vec!["k9".into()]),
            ),
            T0,
        )
        .unwrap();
    assert_eq!(r.candidates.len(), 2);
    assert_eq!(r.shortfall, Some(Shortfall::MissingCapability));
    let r = e
        .recommend(
            &q(RecommendTarget::Location(at(0.0, 0.0)), 1, None),
            T0 + 10_000_000,
        )
        .unwrap();
    assert_eq!(r.shortfall, Some(Shortfall::PositionsStale));
    let r = e
        .recommend(&q(RecommendTarget::Location(at(0.0, 2.0)), 1, None), T0)
        .unwrap();
    assert_eq!(r.shortfall, Some(Shortfall::OutOfRange));
    let mut n = call(0.0, 0.0);
    n.dispatch = DispatchMode::Manual;
    n.required = vec!["medic".into()];
    let i = create(&mut e, n, T0);
    let r = e
        .recommend(&q(RecommendTarget::Incident(i.id.clone()), 1, None), T0)
        .unwrap();
    assert_eq!(r.candidates[0].unit_id, "C");
    assert!(matches!(
        e.recommend(&q(RecommendTarget::Incident("I-777777".into()), 1, None), T0),
        Err(CoreError::NotFound(_))
    ));
    assert!(matches!(
        e.recommend(&q(RecommendTarget::Location(at(f64::NAN, 0.0)), 1, None), T0),
        Err(CoreError::BadRequest(_))
    ));
}

/// `recommend` at `loc` for `count` units with `required`, at `now`.
fn recommend_at(e: &Engine, loc: Location, count: usize, required: &[&str], now: i64) -> Recommendation {
    let query = RecommendQuery {
        agencies: None,
        target: RecommendTarget::Location(loc),
        count,
        required: Some(required.iter().map(|c| c.to_string()).collect()),
    };
    e.recommend(&query, now).unwrap()
}

// The shortfall names the first filter (availability, capability, freshness,
// range) after which no more units remain than were found: PROTOCOL.md section 3.
// Each case below has more available units than it found but fewer than `count`,
// which an "fewer than count" rule would have called `no_units_available`.

#[test]
fn shortfall_is_missing_capability_when_available_units_lack_it() {
    let mut e = Engine::new(cfg());
    unit(&mut e, "A", &[], at(0.0, 0.01), T0);
    unit(&mut e, "B", &["medic"], at(0.0, 0.02), T0);
    let r = recommend_at(&e, at(0.0, 0.0), 3, &["k9"], T0);
    assert!(r.candidates.is_empty());
    assert_eq!(r.shortfall, Some(Shortfall::MissingCapability));
}

#[test]
fn shortfall_is_positions_stale_when_old_or_missing_fixes_leave_too_few() {
    let mut e = Engine::new(cfg());
    unit(&mut e, "A", &[], at(0.0, 0.01), T0);
    // B's last fix is long gone; C never sent one.
    unit(
        &mut e,
        "B",
        &[],
        at(0.0, 0.02),
        T0 - 10 * cfg().max_position_age_ms,
    );
    e.apply(
        &tab("C"),
        Command::RegisterUnit(UnitProfile {
            agency: None,
            id: "C".into(),
            ..Default::default()
        }),
        T0,
    )
    .unwrap();
    status(&mut e, &tab("C"), "C", UnitStatus::Available, T0).unwrap();
    let r = recommend_at(&e, at(0.0, 0.0), 4, &[], T0);
    let ids: Vec<_> = r.candidates.iter().map(|c| c.unit_id.as_str()).collect();
    assert_eq!(ids, vec!["A"]);
    assert_eq!(r.shortfall, Some(Shortfall::PositionsStale));
}

#[test]
fn shortfall_is_out_of_range_when_fresh_capable_units_are_too_far() {
    let mut e = Engine::new(cfg());
    // About 111 and 122 km east of the scene, beyond the default 50 km.
    unit(&mut e, "A", &["k9"], at(0.0, 1.0), T0);
    unit(&mut e, "B", &["k9"], at(0.0, 1.1), T0);
    let r = recommend_at(&e, at(0.0, 0.0), 3, &["k9"], T0);
    assert!(r.candidates.is_empty());
    assert_eq!(r.shortfall, Some(Shortfall::OutOfRange));
    // One in range, one not: the one found, and range is still the reason.
    unit(&mut e, "C", &["k9"], at(0.0, 0.01), T0);
    let r = recommend_at(&e, at(0.0, 0.0), 3, &["k9"], T0);
    assert_eq!(r.candidates.len(), 1);
    assert_eq!(r.shortfall, Some(Shortfall::OutOfRange));
}

#[test]
fn shortfall_is_no_units_available_when_decliners_and_off_duty_units_leave_too_few() {
    let mut e = Engine::new(cfg());
    unit(&mut e, "A", &[], at(0.0, 0.01), T0);
    unit(&mut e, "B", &[], at(0.0, 0.02), T0);
    unit(&mut e, "C", &[], at(0.0, 0.03), T0);
    status(&mut e, &tab("C"), "C", UnitStatus::OffDuty, T0).unwrap();
    let mut n = call(0.0, 0.0);
    n.dispatch = DispatchMode::Manual;
    let i = create(&mut e, n, T0);
    e.apply(
        &disp(),
        Command::Assign {
            incident_id: i.id.clone(),
            unit_id: "A".into(),
            force: false,
        },
        T0,
    )
    .unwrap();
    decline(&mut e, "A", &i.id, T0).unwrap();
    // A is available again but declined this incident; C is off duty.
    let query = RecommendQuery {
        agencies: None,
        target: RecommendTarget::Incident(i.id.clone()),
        count: 2,
        required: None,
    };
    let r = e.recommend(&query, T0).unwrap();
    let ids: Vec<_> = r.candidates.iter().map(|c| c.unit_id.as_str()).collect();
    assert_eq!(ids, vec!["B"]);
    assert_eq!(r.shortfall, Some(Shortfall::NoUnitsAvailable));
    // For a bare location A counts again: two found, none left out, still short.
    let r = recommend_at(&e, at(0.0, 0.0), 3, &[], T0);
    assert_eq!(r.candidates.len(), 2);
    assert_eq!(r.shortfall, Some(Shortfall::NoUnitsAvailable));
}

#[test]
fn recommend_count_outside_1_to_max_is_bad_request() {
    let e = three();
    for count in [0, MAX_RECOMMEND + 1] {
        let query = RecommendQuery {
            agencies: None,
            target: RecommendTarget::Location(at(0.0, 0.0)),
            count,
            required: None,
        };
        assert!(
            matches!(e.recommend(&query, T0), Err(CoreError::BadRequest(_))),
            "{count}"
        );
    }
}

/// Replays a scenario's events through `restore` on a snapshot of its start and
/// checks the result equals the original engine, then that both behave the same.
#[test]
fn snapshot_plus_restore_reproduces_the_engine() {
    let mut e = three();
    let start = e.snapshot();
    let mut events = Vec::new();
    let mut run = |e: &mut Engine, who: Actor, c: Command, now: i64| {
        if let Ok(a) = e.apply(&who, c, now) {
            events.extend(a.events);
        }
    };
    let mut n = call(0.0, 0.0);
    n.units_needed = 2;
    n.key = Some("abc".into());
    run(&mut e, disp(), Command::CreateIncident(n.clone()), T0);
    run(
        &mut e,
        disp(),
        Command::CreateIncident(NewIncident::call("x", 1, at(0.0, 0.0))),
        T0 + 1,
    );
    run(
        &mut e,
        tab("A"),
        Command::Decline {
            unit_id: "A".into(),
            incident_id: "I-000001".into(),
            reason: None,
        },
        T0 + 2,
    );
    run(&mut e, Actor::system(), Command::Tick, T0 + 40_000);
    let mid = e.snapshot();
    let mut r = Engine::from_snapshot(cfg(), start);
    for ev in &events {
        r.restore(ev);
    }
    assert_eq!(r.snapshot(), mid);
    // Same future: the pending queue, keys, deadlines and index were rebuilt.
    let mut r2 = Engine::from_snapshot(cfg(), mid);
    for eng in [&mut e, &mut r, &mut r2] {
        let dup = eng
            .apply(&disp(), Command::CreateIncident(n.clone()), T0 + 41_000)
            .unwrap();
        assert!(dup.events.is_empty());
    }
    let script = [
        (
            tab("A"),
            Command::SetStatus {
                unit_id: "A".into(),
                status: UnitStatus::Available,
            },
        ),
        (
            tab("B"),
            Command::SetStatus {
                unit_id: "B".into(),
                status: UnitStatus::Available,
            },
        ),
        (Actor::system(), Command::Tick),
        (disp(), Command::CreateIncident(call(0.0, 0.02))),
    ];
    let mut outs: Vec<Vec<Result<Applied, CoreError>>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for (k, eng) in [&mut e, &mut r, &mut r2].into_iter().enumerate() {
        for (i, (who, c)) in script.iter().enumerate() {
            outs[k].push(eng.apply(who, c.clone(), T0 + 42_000 + i as i64 * 40_000));
        }
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0], outs[2]);
    assert_eq!(e.snapshot(), r.snapshot());
}

/// `state()` shares the engine's incidents and keys instead of copying them: a
/// change made after it must not show in it (the engine copies what it changes).
#[test]
fn state_is_unchanged_by_later_commands() {
    let mut e = three();
    let mut n = call(0.0, 0.0);
    n.key = Some("k-1".into());
    let i = create(&mut e, n, T0);
    let before = e.snapshot();
    let mut state = e.state();
    e.apply(
        &disp(),
        Command::CloseIncident {
            incident_id: i.id.clone(),
            disposition: "resolved".into(),
        },
        T0 + 1,
    )
    .unwrap();
    create(&mut e, call(0.0, 0.01), T0 + 2);
    assert_ne!(e.snapshot(), before, "the commands changed the engine");
    state.sort();
    assert_eq!(state, before);
    assert!(state.incidents.iter().all(|x| x.is_open()));
}

#[test]
fn snapshot_serde_round_trip() {
    let mut e = three();
    create(&mut e, call(0.0, 0.0), T0);
    let snap = e.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: EngineSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    let e2 = Engine::from_snapshot(cfg(), back);
    assert_eq!(e2.snapshot(), snap);
    assert_eq!(e2.indexed_units(), 2);
}

#[test]
fn update_requeues_and_may_dispatch() {
    let mut e = Engine::new(cfg());
    unit(&mut e, "A", &[], at(0.0, 1.0), T0);
    let i = create(&mut e, call(0.0, 0.0), T0);
    assert!(i.units.is_empty(), "out of range");
    let out = e
        .apply(
            &disp(),
            Command::UpdateIncident {
                incident_id: i.id.clone(),
                patch: IncidentPatch {
                    location: Some(at(0.0, 0.99)),
                    ..Default::default()
                },
            },
            T0 + 1,
        )
        .unwrap();
    assert_eq!(out.events[0].change, Change::Updated);
    assert_eq!(inc(&e, &i.id).units, vec!["A"]);
}

#[test]
fn possible_duplicates_follow_edits_and_are_capped() {
    use opcenter_core::engine::MAX_POSSIBLE_DUPLICATES;
    let mut e = Engine::new(cfg());
    let a = create(&mut e, call(0.0, 0.0), T0);
    // Moved away and re-categorised: no longer a duplicate of new calls here.
    let patch = opcenter_core::IncidentPatch {
        category: Some("noise".into()),
        ..Default::default()
    };
    e.apply(
        &disp(),
        Command::UpdateIncident {
            incident_id: a.id.clone(),
            patch,
        },
        T0 + 1,
    )
    .unwrap();
    let b = create(&mut e, call(0.0, 0.0), T0 + 2);
    assert!(b.possible_duplicates.is_empty(), "{:?}", b.possible_duplicates);
    let n = create(&mut e, NewIncident::call("noise", 3, at(0.0, 0.0)), T0 + 3);
    assert_eq!(n.possible_duplicates, vec![a.id.clone()]);
    // Hundreds of reports of one event: the list holds the newest few only.
    let mut ids = vec![b.id.clone()];
    for i in 0..(MAX_POSSIBLE_DUPLICATES as i64 + 5) {
        ids.push(create(&mut e, call(0.0, 0.0), T0 + 10 + i).id);
    }
    let last = create(&mut e, call(0.0, 0.0), T0 + 1000);
    let newest = ids[ids.len() - MAX_POSSIBLE_DUPLICATES..].to_vec();
    assert_eq!(last.possible_duplicates, newest);
}
