//! The region's rules (issue 15) against the engine, time passed in: agencies
//! in dispatch, recommend and the pending queue; posts sent only within
//! `dispatch.post_radius_m`. Must never: reach into private engine state.

mod common;

use common::*;
use opcenter_core::*;

const T0: i64 = 1_764_300_000_000;

fn cfg() -> EngineConfig {
    EngineConfig {
        agencies: vec!["police".into(), "national_guard".into()],
        default_agencies: vec!["police".into()],
        ..EngineConfig::default()
    }
}

/// Registers `id` of `agency` (None: no claim) and makes it available at `loc`.
fn agent(e: &mut Engine, id: &str, agency: Option<&str>, kind: Option<&str>, loc: Location) {
    let profile = UnitProfile {
        id: id.into(),
        callsign: None,
        kind: kind.map(str::to_string),
        capabilities: Vec::new(),
        agency: agency.map(str::to_string),
    };
    e.apply(&tab(id), Command::RegisterUnit(profile), T0).unwrap();
    e.apply(
        &tab(id),
        Command::SetStatus {
            unit_id: id.into(),
            status: UnitStatus::Available,
        },
        T0,
    )
    .unwrap();
    pos(e, id, loc, T0).unwrap();
}

/// An `agencies` field as a command gives it.
type Asked = Option<Vec<String>>;

fn agencies(list: &[&str]) -> Asked {
    Some(list.iter().map(|s| s.to_string()).collect())
}

/// A police car 1.1 km away, a Guard unit 110 m away, a claimless car 2.2 km away.
fn mixed() -> Engine {
    let mut e = Engine::new(cfg());
    agent(&mut e, "POL", Some("police"), None, at(0.0, 0.01));
    agent(&mut e, "NG", Some("national_guard"), None, at(0.0, 0.001));
    agent(&mut e, "CAR", None, None, at(0.0, 0.02));
    e
}

#[test]
fn a_unit_without_an_agency_belongs_to_the_first_configured_one() {
    let e = mixed();
    assert_eq!(e.unit("CAR").unwrap().agency.as_deref(), Some("police"));
    assert_eq!(e.unit("NG").unwrap().agency.as_deref(), Some("national_guard"));
}

#[test]
fn dispatch_sends_only_the_incidents_agencies() {
    // (agencies on the create, units_needed) -> units sent, nearest first.
    let table: [(Asked, u32, &[&str]); 5] = [
        (None, 1, &["POL"]),
        (None, 3, &["POL", "CAR"]),
        (agencies(&["police"]), 1, &["POL"]),
        (agencies(&["national_guard"]), 2, &["NG"]),
        (agencies(&["national_guard", "police"]), 3, &["NG", "POL", "CAR"]),
    ];
    for (asked, needed, want) in table {
        let mut e = mixed();
        let mut n = NewIncident::call("riot", 2, at(0.0, 0.0));
        n.units_needed = needed;
        n.agencies = asked.clone();
        let i = create(&mut e, n, T0);
        assert_eq!(i.units, want, "agencies {asked:?}");
        let expected = asked.unwrap_or_else(|| vec!["police".into()]);
        assert_eq!(i.agencies, expected);
        check_invariants(&e);
    }
}

#[test]
fn an_unknown_agency_is_a_bad_request_naming_it() {
    let mut e = mixed();
    let mut n = NewIncident::call("riot", 2, at(0.0, 0.0));
    n.agencies = agencies(&["army"]);
    let err = e.apply(&disp(), Command::CreateIncident(n), T0).unwrap_err();
    assert!(
        matches!(&err, CoreError::BadRequest(m) if m.contains("army")),
        "{err:?}"
    );
    let p = UnitProfile {
        id: "X".into(),
        agency: Some("army".into()),
        ..UnitProfile::default()
    };
    let err = e.apply(&tab("X"), Command::RegisterUnit(p), T0).unwrap_err();
    assert!(
        matches!(&err, CoreError::BadRequest(m) if m.contains("army")),
        "{err:?}"
    );
    assert!(e.unit("X").is_none());
}

#[test]
fn recommend_applies_the_agency_filter_and_counts_other_agencies_as_unavailable() {
    let e = mixed();
    let ids = |r: &Recommendation| r.candidates.iter().map(|c| c.unit_id.clone()).collect::<Vec<_>>();
    // (agencies asked, want candidates, shortfall)
    let table: [(Asked, &[&str], Option<Shortfall>); 4] = [
        (None, &["POL", "CAR"], Some(Shortfall::NoUnitsAvailable)),
        (
            agencies(&["national_guard"]),
            &["NG"],
            Some(Shortfall::NoUnitsAvailable),
        ),
        (
            agencies(&["police", "national_guard"]),
            &["NG", "POL", "CAR"],
            None,
        ),
        (
            agencies(&["police"]),
            &["POL", "CAR"],
            Some(Shortfall::NoUnitsAvailable),
        ),
    ];
    for (asked, want, short) in table {
        let q = RecommendQuery {
            target: RecommendTarget::Location(at(0.0, 0.0)),
            count: 3,
            required: None,
            agencies: asked.clone(),
        };
        let r = e.recommend(&q, T0).unwrap();
        assert_eq!(ids(&r), want, "agencies {asked:?}");
        assert_eq!(r.shortfall, short, "agencies {asked:?}");
    }
}

#[test]
fn recommend_for_an_incident_uses_its_agencies() {
    let mut e = mixed();
    let mut n = NewIncident::call("riot", 2, at(0.0, 0.0));
    n.dispatch = DispatchMode::Manual;
    n.agencies = agencies(&["national_guard"]);
    let i = create(&mut e, n, T0);
    let q = RecommendQuery {
        target: RecommendTarget::Incident(i.id),
        count: 3,
        required: None,
        agencies: None,
    };
    let r = e.recommend(&q, T0).unwrap();
    let ids: Vec<_> = r.candidates.iter().map(|c| c.unit_id.as_str()).collect();
    assert_eq!(ids, ["NG"]);
}

#[test]
fn the_pending_queue_waits_for_a_unit_of_its_agency() {
    let mut e = Engine::new(cfg());
    let mut n = NewIncident::call("riot", 2, at(0.0, 0.0));
    n.agencies = agencies(&["national_guard"]);
    let i = create(&mut e, n, T0);
    assert!(i.units.is_empty());
    // A police car becoming available next door does not take it...
    agent(&mut e, "POL", Some("police"), None, at(0.0, 0.0001));
    assert!(e.incident(&i.id).unwrap().units.is_empty());
    // ...a Guard unit far off (but in range) does.
    agent(&mut e, "NG", Some("national_guard"), None, at(0.0, 0.1));
    assert_eq!(e.incident(&i.id).unwrap().units, ["NG"]);
    check_invariants(&e);
}

#[test]
fn an_officer_emergency_calls_every_agency() {
    let mut e = mixed();
    let a = e
        .apply(
            &tab("CAR"),
            Command::Emergency {
                unit_id: "CAR".into(),
                active: true,
                location: None,
            },
            T0,
        )
        .unwrap();
    let Reply::Incident(i) = a.reply else {
        panic!("{:?}", a.reply)
    };
    assert_eq!(i.agencies, ["police", "national_guard"]);
    // The two nearest other units to CAR (at 0.02): POL at 0.01, NG at 0.001.
    assert_eq!(i.units, ["POL", "NG"]);
}

/// A modular post at the origin and a patrol car `car_lon` degrees east.
fn post_and_car(post_kind: &str, car_lon: f64) -> Engine {
    let mut c = cfg();
    c.roster.push(RosterUnit {
        on_duty: None,
        id: "MP-1".into(),
        callsign: Some("Modular post 1".into()),
        kind: Some(post_kind.into()),
        capabilities: Vec::new(),
        status: Some(UnitStatus::Available),
        location: Some(at(0.0, 0.0)),
        tablet: true,
        agency: None,
        post: Some(1),
        district: Some("Central".into()),
        beat: None,
    });
    let mut e = Engine::new(c);
    let p = UnitProfile {
        id: "MP-1".into(),
        ..UnitProfile::default()
    };
    e.apply(&tab("MP-1"), Command::RegisterUnit(p), T0).unwrap();
    agent(&mut e, "CAR", None, None, at(0.0, car_lon));
    e
}

#[test]
fn a_post_is_sent_only_within_the_post_radius() {
    // 0.0044° of longitude at the equator is ~489 m, 0.0046° ~512 m.
    // (post kind, incident lon, car lon) -> who is sent.
    let table = [
        ("modular_post", 0.0044, 0.05, "MP-1"),
        ("modular_post", 0.0046, 0.05, "CAR"),
        ("district_post", 0.0044, 0.05, "MP-1"),
        ("district_post", 0.0046, 0.05, "CAR"),
        // Any other kind is a mobile unit: nearest wins however far.
        ("post", 0.02, 0.05, "MP-1"),
    ];
    for (kind, inc_lon, car_lon, want) in table {
        let mut e = post_and_car(kind, car_lon);
        let unit = e.unit("MP-1").unwrap();
        assert_eq!((unit.post, unit.district.as_deref()), (Some(1), Some("Central")));
        let i = create(&mut e, NewIncident::call("robbery", 1, at(0.0, inc_lon)), T0);
        assert_eq!(i.units, [want], "{kind} at {inc_lon}");
    }
}

#[test]
fn a_post_outside_its_radius_is_not_recommended_and_the_shortfall_says_range() {
    let mut e = post_and_car("modular_post", 0.05);
    // Take the car away: only the post is left, 512 m off.
    e.apply(
        &disp(),
        Command::SetStatus {
            unit_id: "CAR".into(),
            status: UnitStatus::OffDuty,
        },
        T0,
    )
    .unwrap();
    let q = |lon: f64| RecommendQuery {
        target: RecommendTarget::Location(at(0.0, lon)),
        count: 1,
        required: None,
        agencies: None,
    };
    let r = e.recommend(&q(0.0046), T0).unwrap();
    assert!(r.candidates.is_empty());
    assert_eq!(r.shortfall, Some(Shortfall::OutOfRange));
    let r = e.recommend(&q(0.0044), T0).unwrap();
    assert_eq!(r.candidates[0].unit_id, "MP-1");
}

#[test]
fn a_pending_incident_beyond_the_radius_is_not_served_by_a_post() {
    let mut c = cfg();
    c.post_radius_m = 300.0;
    c.roster.push(RosterUnit {
        on_duty: None,
        id: "DP-7".into(),
        callsign: None,
        kind: Some("district_post".into()),
        capabilities: Vec::new(),
        status: Some(UnitStatus::OffDuty),
        location: Some(at(0.0, 0.0)),
        tablet: true,
        agency: None,
        post: Some(7),
        district: None,
        beat: None,
    });
    let mut e = Engine::new(c);
    let far = create(&mut e, NewIncident::call("theft", 3, at(0.0, 0.004)), T0); // ~445 m
    let near = create(&mut e, NewIncident::call("theft", 4, at(0.0, 0.002)), T0); // ~222 m
    let p = UnitProfile {
        id: "DP-7".into(),
        ..UnitProfile::default()
    };
    e.apply(&tab("DP-7"), Command::RegisterUnit(p), T0).unwrap();
    e.apply(
        &tab("DP-7"),
        Command::SetStatus {
            unit_id: "DP-7".into(),
            status: UnitStatus::Available,
        },
        T0,
    )
    .unwrap();
    // Priority 3 comes first in the queue, but it lies beyond the radius.
    assert!(e.incident(&far.id).unwrap().units.is_empty());
    assert_eq!(e.incident(&near.id).unwrap().units, ["DP-7"]);
    check_invariants(&e);
}

/// Metres north of the equator, in degrees of latitude.
fn north(m: f64) -> f64 {
    m / 111_195.0
}

fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> zones::Polygon {
    zones::Polygon {
        rings: vec![vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
    }
}

/// District `Central` around the origin, beat `B-1` the part east of lon 0;
/// roster unit `BEAT-1` patrols B-1, `CAR` patrols no beat.
fn beat_region() -> Engine {
    beat_region_with(Vec::new(), 0)
}

/// [`beat_region`] with run cards, at local time UTC + `offset_min`.
fn beat_region_with(run_cards: Vec<RunCard>, offset_min: i64) -> Engine {
    let mut c = cfg();
    c.run_cards = run_cards;
    c.local_offset_min = offset_min;
    c.zones = vec![
        zones::Zone {
            id: "Central".into(),
            kind: zones::ZoneKind::District,
            district: None,
            polygons: vec![square(-0.5, -0.5, 0.5, 0.5)],
        },
        zones::Zone {
            id: "B-1".into(),
            kind: zones::ZoneKind::Beat,
            district: Some("Central".into()),
            polygons: vec![square(0.0, -0.5, 0.5, 0.5)],
        },
    ];
    c.roster.push(RosterUnit {
        kind: Some("car".into()),
        district: Some("Central".into()),
        beat: Some("B-1".into()),
        ..roster("BEAT-1")
    });
    Engine::new(c)
}

#[test]
fn incidents_are_placed_in_their_district_and_beat() {
    let mut e = beat_region();
    let i = create(&mut e, NewIncident::call("theft", 3, at(0.1, 0.1)), T0);
    assert_eq!(
        (i.district.as_deref(), i.beat.as_deref()),
        (Some("Central"), Some("B-1"))
    );
    let i = create(&mut e, NewIncident::call("theft", 3, at(0.1, -0.1)), T0);
    assert_eq!(
        (i.district.as_deref(), i.beat.as_deref()),
        (Some("Central"), None)
    );
    let i = create(&mut e, NewIncident::call("theft", 3, at(0.1, 0.9)), T0);
    assert_eq!((i.district.as_deref(), i.beat.as_deref()), (None, None));
    // Moved into the beat: placed again.
    let a = e
        .apply(
            &disp(),
            Command::UpdateIncident {
                incident_id: i.id,
                patch: IncidentPatch {
                    location: Some(at(0.1, 0.1)),
                    ..IncidentPatch::default()
                },
            },
            T0,
        )
        .unwrap();
    let Reply::Incident(i) = a.reply else { panic!() };
    assert_eq!(i.beat.as_deref(), Some("B-1"));
}

#[test]
fn the_beat_unit_is_preferred_unless_another_is_more_than_the_preference_closer() {
    // Incident at (0, 0.01), inside B-1. (beat unit metres north, car metres
    // south, incident lon) -> (unit sent, selection). beat_preference_m = 1500.
    let table = [
        (500.0, 1_000.0, 0.01, "BEAT-1", Selection::Beat),
        (2_000.0, 1_000.0, 0.01, "BEAT-1", Selection::Beat),
        (2_400.0, 1_000.0, 0.01, "BEAT-1", Selection::Beat),
        (2_600.0, 1_000.0, 0.01, "CAR", Selection::Nearest),
        (5_000.0, 100.0, 0.01, "CAR", Selection::Nearest),
        // Outside the beat (west of lon 0): plain nearest.
        (2_000.0, 1_000.0, -0.0001, "CAR", Selection::Nearest),
        (500.0, 1_000.0, -0.0001, "BEAT-1", Selection::Nearest),
    ];
    for (beat_m, car_m, lon, want, why) in table {
        let mut e = beat_region();
        agent(&mut e, "BEAT-1", None, None, at(north(beat_m), lon));
        agent(&mut e, "CAR", None, None, at(-north(car_m), lon));
        let i = create(&mut e, NewIncident::call("theft", 3, at(0.0, lon)), T0);
        assert_eq!(i.units, [want], "beat {beat_m} m, car {car_m} m, lon {lon}");
        assert_eq!(
            i.selection.get(want),
            Some(&why),
            "beat {beat_m} m, car {car_m} m"
        );
        check_invariants(&e);
    }
}

#[test]
fn with_two_needed_the_beat_unit_comes_first_and_a_manual_assign_says_manual() {
    let mut e = beat_region();
    agent(&mut e, "BEAT-1", None, None, at(north(2_000.0), 0.01));
    agent(&mut e, "CAR", None, None, at(-north(1_000.0), 0.01));
    agent(&mut e, "FAR", None, None, at(-north(9_000.0), 0.01));
    let mut n = NewIncident::call("fight", 2, at(0.0, 0.01));
    n.units_needed = 2;
    let i = create(&mut e, n, T0);
    assert_eq!(i.units, ["BEAT-1", "CAR"]);
    assert_eq!(i.selection.get("CAR"), Some(&Selection::Nearest));
    let a = e
        .apply(
            &disp(),
            Command::Assign {
                incident_id: i.id.clone(),
                unit_id: "FAR".into(),
                force: false,
            },
            T0,
        )
        .unwrap();
    let Reply::Incident(i) = a.reply else { panic!() };
    assert_eq!(i.selection.get("FAR"), Some(&Selection::Manual));
    // A unit taken off the incident leaves the selection with it.
    e.apply(
        &tab("CAR"),
        Command::Decline {
            unit_id: "CAR".into(),
            incident_id: i.id.clone(),
            reason: None,
        },
        T0,
    )
    .unwrap();
    assert!(!e.incident(&i.id).unwrap().selection.contains_key("CAR"));
    check_invariants(&e);
}

fn card(name: &str) -> RunCard {
    RunCard {
        name: name.into(),
        ..RunCard::default()
    }
}

/// 12:00 UTC on a day.
const NOON: i64 = 1_764_331_200_000;

#[test]
fn the_most_specific_matching_run_card_wins() {
    let cards = vec![
        RunCard {
            category: Some("fight".into()),
            units_needed: Some(2),
            ..card("fight")
        },
        RunCard {
            category: Some("fight".into()),
            district: Some("Central".into()),
            units_needed: Some(3),
            ..card("fight-central")
        },
        RunCard {
            // As specific as fight-central: listed later, loses the tie.
            category: Some("fight".into()),
            priority: Some(1),
            units_needed: Some(9),
            ..card("fight-p1")
        },
        RunCard {
            beat: Some("B-1".into()),
            units_needed: Some(4),
            ..card("beat-b1")
        },
        RunCard {
            category: Some("fight".into()),
            beat: Some("B-1".into()),
            hours: Some([22, 6]),
            units_needed: Some(5),
            ..card("night-fight-b1")
        },
    ];
    // (category, priority, lon (east of 0 is beat B-1), UTC hour) -> card
    let table = [
        ("theft", 3, -0.1, 12, None),
        ("fight", 3, 0.9, 12, Some("fight")),
        ("fight", 3, -0.1, 12, Some("fight-central")),
        ("fight", 1, -0.1, 12, Some("fight-central")),
        ("fight", 1, 0.9, 12, Some("fight-p1")),
        ("theft", 3, 0.1, 12, Some("beat-b1")),
        // beat-b1 ties fight-central (2 points each): the first listed wins.
        ("fight", 3, 0.1, 12, Some("fight-central")),
        ("fight", 3, 0.1, 23, Some("night-fight-b1")),
        ("fight", 3, 0.1, 5, Some("night-fight-b1")),
        ("fight", 3, 0.1, 6, Some("fight-central")),
        ("fight", 3, 0.9, 23, Some("fight")),
    ];
    for (category, priority, lon, hour, want) in table {
        let mut e = beat_region_with(cards.clone(), 0);
        let now = NOON + (hour - 12) * 3_600_000;
        let i = create(&mut e, NewIncident::call(category, priority, at(0.0, lon)), now);
        assert_eq!(
            i.run_card.as_deref(),
            want,
            "{category} p{priority} lon {lon} {hour}h"
        );
        let by_name = cards.iter().find(|c| Some(c.name.as_str()) == want);
        assert_eq!(i.units_needed, by_name.map_or(1, |c| c.units_needed.unwrap()));
    }
}

#[test]
fn hours_are_local_and_the_dispatchers_values_win_over_the_card() {
    let cards = vec![RunCard {
        category: Some("riot".into()),
        hours: Some([18, 20]),
        units_needed: Some(3),
        required: Some(vec!["shield".into()]),
        agencies: Some(vec!["national_guard".into()]),
        kinds: Some(vec!["guard_patrol".into()]),
        ..card("evening-riot")
    }];
    // 14:00 UTC is 19:00 at UTC+5.
    let now = NOON + 2 * 3_600_000;
    let mut e = beat_region_with(cards.clone(), 300);
    let i = create(&mut e, NewIncident::call("riot", 2, at(0.0, -0.1)), now);
    assert_eq!(i.run_card.as_deref(), Some("evening-riot"));
    assert_eq!(
        (i.units_needed, i.required.clone()),
        (3, vec!["shield".to_string()])
    );
    assert_eq!(
        (i.agencies.clone(), i.kinds.clone()),
        (
            vec!["national_guard".to_string()],
            vec!["guard_patrol".to_string()]
        )
    );
    let mut n = NewIncident::call("riot", 2, at(0.0, -0.1));
    n.units_needed = 1;
    n.required = Vec::new();
    n.given = Given {
        units_needed: true,
        required: true,
    };
    n.agencies = agencies(&["police"]);
    let i = create(&mut e, n, now);
    assert_eq!(i.run_card.as_deref(), Some("evening-riot"));
    assert_eq!(
        (i.units_needed, i.required.len(), i.agencies.clone()),
        (1, 0, vec!["police".to_string()])
    );
    assert_eq!(
        i.kinds,
        ["guard_patrol"],
        "what the dispatcher did not say comes from the card"
    );
    // At UTC+0 the same instant is 14:00: no card.
    let mut e = beat_region_with(cards, 0);
    let i = create(&mut e, NewIncident::call("riot", 2, at(0.0, -0.1)), now);
    assert_eq!(i.run_card, None);
}

#[test]
fn a_run_cards_kinds_choose_the_units_and_say_run_card() {
    let cards = vec![RunCard {
        category: Some("riot".into()),
        agencies: Some(vec!["police".into(), "national_guard".into()]),
        kinds: Some(vec!["guard_patrol".into()]),
        ..card("riot")
    }];
    let mut e = beat_region_with(cards, 0);
    agent(&mut e, "CAR", None, Some("car"), at(0.0, -0.001));
    agent(
        &mut e,
        "NG",
        Some("national_guard"),
        Some("guard_patrol"),
        at(0.0, -0.05),
    );
    let i = create(&mut e, NewIncident::call("riot", 2, at(0.0, -0.0011)), T0);
    assert_eq!(i.units, ["NG"]);
    assert_eq!(i.selection.get("NG"), Some(&Selection::RunCard));
    let q = RecommendQuery {
        target: RecommendTarget::Incident(i.id.clone()),
        count: 2,
        required: None,
        agencies: None,
    };
    let r = e.recommend(&q, T0).unwrap();
    assert!(r.candidates.is_empty(), "the car is of another kind: {r:?}");
    assert_eq!(r.shortfall, Some(Shortfall::NoUnitsAvailable));
}
