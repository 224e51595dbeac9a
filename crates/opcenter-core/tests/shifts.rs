//! Round-the-clock duty (issue 15, item 7) against the engine, time passed in:
//! a roster unit's `on_duty` window puts it on and off duty at Tick; off-duty
//! units are never auto-dispatched or recommended; a unit whose shift ends
//! while it holds an incident keeps it (`shift_ended`) and goes off duty when
//! it is let go. Must never: reach into private engine state.

mod common;

use common::*;
use opcenter_core::*;

/// 2025-11-28 00:00 UTC.
const DAY0: i64 = 1_764_288_000_000;
const MIN: i64 = 60_000;
/// Uralsk: UTC+5.
const OFFSET_MIN: i64 = 300;

/// The UTC ms of local time `h:m` on day 0 (local = UTC + 5 h).
fn local(h: i64, m: i64) -> i64 {
    DAY0 + (h * 60 + m - OFFSET_MIN) * MIN
}

fn window(text: &str) -> DutyWindow {
    DutyWindow::parse(text).unwrap_or_else(|| panic!("{text:?} is a window"))
}

/// An engine with a day patrol `DAY` ("08:00-20:00") and a night patrol
/// `NIGHT` ("20:00-08:00"), both with tablets online and positioned near the
/// origin (DAY nearer).
fn engine() -> Engine {
    let shift = |id: &str, w: &str| RosterUnit {
        on_duty: Some(window(w)),
        callsign: Some(format!("{id} patrol")),
        kind: Some("patrol_car".into()),
        ..roster(id)
    };
    let c = EngineConfig {
        local_offset_min: OFFSET_MIN,
        roster: vec![shift("DAY", "08:00-20:00"), shift("NIGHT", "20:00-08:00")],
        ..EngineConfig::default()
    };
    let mut e = Engine::new(c);
    let t = local(7, 0);
    for (id, lon) in [("DAY", 0.001), ("NIGHT", 0.002)] {
        let profile = UnitProfile {
            id: id.into(),
            callsign: None,
            kind: None,
            capabilities: Vec::new(),
            agency: None,
        };
        e.apply(&tab(id), Command::RegisterUnit(profile), t).unwrap();
        pos(&mut e, id, at(0.0, lon), t).unwrap();
    }
    e
}

fn tick(e: &mut Engine, now: i64) -> Vec<Event> {
    let out = e.apply(&disp(), Command::Tick, now).unwrap().events;
    check_invariants(e);
    out
}

fn status(e: &Engine, id: &str) -> UnitStatus {
    e.unit(id).unwrap().status
}

/// Unit ids of the `shift` events among `events`.
fn shifted(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|ev| ev.change == Change::Shift)
        .filter_map(|ev| match &ev.body {
            EventBody::Unit(u) => Some(u.id.clone()),
            _ => None,
        })
        .collect()
}

fn recommend(e: &Engine, now: i64) -> Vec<String> {
    let q = RecommendQuery {
        target: RecommendTarget::Location(at(0.0, 0.0)),
        count: 5,
        required: None,
        agencies: None,
    };
    e.recommend(&q, now)
        .unwrap()
        .candidates
        .into_iter()
        .map(|c| c.unit_id)
        .collect()
}

#[test]
fn windows_parse_and_wrap_midnight() {
    let day = window("08:00-20:00");
    assert_eq!((day.from_min, day.to_min), (480, 1200));
    assert_eq!(day.to_string(), "08:00-20:00");
    // (window, local minute, inside)
    let table = [
        ("08:00-20:00", 7 * 60 + 59, false),
        ("08:00-20:00", 8 * 60, true),
        ("08:00-20:00", 19 * 60 + 59, true),
        ("08:00-20:00", 20 * 60, false),
        ("20:00-08:00", 20 * 60, true),
        ("20:00-08:00", 0, true),
        ("20:00-08:00", 7 * 60 + 59, true),
        ("20:00-08:00", 8 * 60, false),
        ("00:00-00:00", 13 * 60, true),
        ("9:30-17:45", 9 * 60 + 30, true),
    ];
    for (w, minute, inside) in table {
        assert_eq!(window(w).contains(minute), inside, "{w} at {minute}");
    }
    for bad in [
        "",
        "08:00",
        "08:00-24:00",
        "8-20",
        "08:60-09:00",
        "08:00-20:00-21:00",
        "ab:cd-01:00",
    ] {
        assert_eq!(DutyWindow::parse(bad), None, "{bad:?}");
    }
    // Local = UTC + offset, across the UTC day boundary.
    assert_eq!(DutyWindow::local_minute(local(8, 0), OFFSET_MIN), 480);
    assert_eq!(DutyWindow::local_minute(local(2, 30), OFFSET_MIN), 150);
    assert_eq!(DutyWindow::local_minute(DAY0 - MIN, 0), 1439);
}

#[test]
fn the_window_puts_units_on_and_off_duty_and_off_duty_units_are_never_sent() {
    let mut e = engine();
    assert_eq!(e.unit("DAY").unwrap().on_duty.as_deref(), Some("08:00-20:00"));
    // 07:00: the night patrol is on, the day patrol off.
    let ev = tick(&mut e, local(7, 0));
    assert_eq!(shifted(&ev), ["DAY", "NIGHT"]);
    assert_eq!(status(&e, "DAY"), UnitStatus::OffDuty);
    assert_eq!(status(&e, "NIGHT"), UnitStatus::Available);
    assert_eq!(e.unit("DAY").unwrap().on_shift, Some(false));
    assert_eq!(
        recommend(&e, local(7, 0)),
        ["NIGHT"],
        "off duty is never recommended"
    );
    // Nothing changes within the window: no events.
    assert!(shifted(&tick(&mut e, local(7, 30))).is_empty());
    // 08:00: shift change.
    let t = local(8, 0);
    pos(&mut e, "DAY", at(0.0, 0.001), t).unwrap();
    pos(&mut e, "NIGHT", at(0.0, 0.002), t).unwrap();
    assert_eq!(shifted(&tick(&mut e, t)), ["DAY", "NIGHT"]);
    assert_eq!(status(&e, "DAY"), UnitStatus::Available);
    assert_eq!(status(&e, "NIGHT"), UnitStatus::OffDuty);
    assert_eq!(recommend(&e, t), ["DAY"]);
    // The nearer night patrol is off duty: the day patrol gets the call.
    let i = create(&mut e, NewIncident::call("theft", 2, at(0.0, 0.0025)), t);
    assert_eq!(i.units, ["DAY"]);
    // The night patrol is not sent even when nobody else is free.
    let j = create(&mut e, NewIncident::call("theft", 2, at(0.0, 0.002)), t);
    assert!(j.units.is_empty(), "{:?}", j.units);
    assert_eq!(e.pending_queue().count(), 1);
}

#[test]
fn a_unit_whose_shift_ends_on_a_call_keeps_it_and_goes_off_duty_when_let_go() {
    let mut e = engine();
    let t = local(19, 50);
    pos(&mut e, "DAY", at(0.0, 0.001), t).unwrap();
    tick(&mut e, t);
    let i = create(&mut e, NewIncident::call("assault", 1, at(0.0, 0.0)), t);
    assert_eq!(i.units, ["DAY"]);
    e.apply(
        &tab("DAY"),
        Command::Ack {
            unit_id: "DAY".into(),
            incident_id: i.id.clone(),
        },
        t,
    )
    .unwrap();
    // 20:00: the shift ends; the call is not dropped.
    let end = local(20, 0);
    let ev = tick(&mut e, end);
    assert!(shifted(&ev).contains(&"DAY".to_string()));
    let day = e.unit("DAY").unwrap();
    assert_eq!(day.status, UnitStatus::EnRoute);
    assert!(day.shift_ended, "dispatchers are warned");
    assert_eq!(day.incident_id.as_deref(), Some(i.id.as_str()));
    assert_eq!(e.incident(&i.id).unwrap().units, ["DAY"]);
    // The warning is on the units topic, with the whole unit.
    assert!(ev.iter().any(|ev| ev.change == Change::Shift
        && matches!(&ev.body, EventBody::Unit(u) if u.id == "DAY" && u.shift_ended)));
    // The officer arrives and the dispatcher closes: off duty, warning cleared.
    e.apply(
        &tab("DAY"),
        Command::SetStatus {
            unit_id: "DAY".into(),
            status: UnitStatus::OnScene,
        },
        end + MIN,
    )
    .unwrap();
    assert!(e.unit("DAY").unwrap().shift_ended);
    e.apply(
        &disp(),
        Command::CloseIncident {
            incident_id: i.id.clone(),
            disposition: "resolved".into(),
        },
        end + 2 * MIN,
    )
    .unwrap();
    let day = e.unit("DAY").unwrap();
    assert_eq!(day.status, UnitStatus::OffDuty);
    assert!(!day.shift_ended);
    pos(&mut e, "NIGHT", at(0.0, 0.002), end + 2 * MIN).unwrap();
    assert_eq!(recommend(&e, end + 2 * MIN), ["NIGHT"]);
    check_invariants(&e);
}

#[test]
fn a_unit_past_its_shift_that_declines_or_misses_the_offer_goes_off_duty() {
    for declines in [true, false] {
        let mut e = engine();
        // 10 s before the shift ends (the ack timeout is 30 s).
        let t = local(20, 0) - 10_000;
        pos(&mut e, "DAY", at(0.0, 0.001), t).unwrap();
        pos(&mut e, "NIGHT", at(0.0, 0.002), t).unwrap();
        tick(&mut e, t);
        let i = create(&mut e, NewIncident::call("theft", 3, at(0.0, 0.0)), t);
        assert_eq!(i.units, ["DAY"]);
        tick(&mut e, local(20, 0));
        assert!(e.unit("DAY").unwrap().shift_ended);
        if declines {
            e.apply(
                &tab("DAY"),
                Command::Decline {
                    unit_id: "DAY".into(),
                    incident_id: i.id.clone(),
                    reason: None,
                },
                local(20, 0),
            )
            .unwrap();
        } else {
            // The ack deadline passes.
            tick(&mut e, local(20, 0) + 25_000);
        }
        let day = e.unit("DAY").unwrap();
        assert_eq!(day.status, UnitStatus::OffDuty, "declines: {declines}");
        assert!(!day.shift_ended);
        // The call moved on to the night patrol, now on duty.
        let inc = e.incident(&i.id).unwrap();
        assert_eq!(inc.units, ["NIGHT"], "declines: {declines}");
    }
}

#[test]
fn a_status_set_by_hand_stands_until_the_next_shift_change_and_a_restart_repeats_nothing() {
    let mut e = engine();
    tick(&mut e, local(19, 0));
    assert_eq!(status(&e, "DAY"), UnitStatus::Available);
    tick(&mut e, local(20, 0));
    assert_eq!(status(&e, "DAY"), UnitStatus::OffDuty);
    // The officer stays on for an hour.
    e.apply(
        &tab("DAY"),
        Command::SetStatus {
            unit_id: "DAY".into(),
            status: UnitStatus::Available,
        },
        local(20, 5),
    )
    .unwrap();
    assert!(shifted(&tick(&mut e, local(20, 6))).is_empty());
    assert_eq!(status(&e, "DAY"), UnitStatus::Available);
    // A restart from a snapshot: the next tick neither repeats the 20:00
    // change nor undoes the overtime.
    let mut r = Engine::from_snapshot(e.config().clone(), e.snapshot());
    assert!(shifted(&tick(&mut r, local(20, 7))).is_empty());
    assert_eq!(status(&r, "DAY"), UnitStatus::Available);
    // The NIGHT patrol leaves early by hand; the 08:00 change next morning
    // still ends its shift (a no-op on its status) and starts DAY's.
    r.apply(
        &tab("NIGHT"),
        Command::SetStatus {
            unit_id: "NIGHT".into(),
            status: UnitStatus::OffDuty,
        },
        local(21, 0),
    )
    .unwrap();
    r.apply(
        &tab("DAY"),
        Command::SetStatus {
            unit_id: "DAY".into(),
            status: UnitStatus::OffDuty,
        },
        local(21, 0),
    )
    .unwrap();
    let next_morning = local(8, 0) + 24 * 60 * MIN;
    assert_eq!(shifted(&tick(&mut r, next_morning)), ["DAY", "NIGHT"]);
    assert_eq!(status(&r, "DAY"), UnitStatus::Available);
    assert_eq!(status(&r, "NIGHT"), UnitStatus::OffDuty);
}
