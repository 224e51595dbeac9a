//! Helpers shared by the engine's integration tests: a tiny fleet builder and
//! an engine-equivalence check. Must never: hide assertions the tests should make.
#![allow(dead_code)]

use opcenter_core::*;

/// A dispatcher actor.
pub(crate) fn disp() -> Actor {
    Actor::dispatcher("disp-1")
}

/// The tablet of `id`.
pub(crate) fn tab(id: &str) -> Actor {
    Actor::unit(format!("sub-{id}"), id)
}

/// A roster entry with only an id (everything else unset or default).
pub(crate) fn roster(id: &str) -> RosterUnit {
    RosterUnit {
        id: id.into(),
        callsign: None,
        kind: None,
        capabilities: Vec::new(),
        status: None,
        location: None,
        tablet: true,
        agency: None,
        post: None,
        district: None,
        beat: None,
        on_duty: None,
    }
}

/// A location.
pub(crate) fn at(lat: f64, lon: f64) -> Location {
    Location { lat, lon }
}

/// Registers `id` with `caps`, makes it available and gives it a fix at `now`.
pub(crate) fn unit(e: &mut Engine, id: &str, caps: &[&str], loc: Location, now: i64) {
    let profile = UnitProfile {
        agency: None,
        id: id.into(),
        callsign: None,
        kind: None,
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
    };
    e.apply(&tab(id), Command::RegisterUnit(profile), now).unwrap();
    e.apply(
        &tab(id),
        Command::SetStatus {
            unit_id: id.into(),
            status: UnitStatus::Available,
        },
        now,
    )
    .unwrap();
    pos(e, id, loc, now).unwrap();
}

/// A fix for `id` taken at `now`.
pub(crate) fn pos(e: &mut Engine, id: &str, loc: Location, now: i64) -> Result<Applied, CoreError> {
    e.apply(
        &tab(id),
        Command::Position {
            unit_id: id.into(),
            fix: PositionFix {
                location: loc,
                heading: None,
                speed: None,
                accuracy: None,
                at_ms: Some(now),
            },
        },
        now,
    )
}

/// Creates an incident as a dispatcher; returns it after dispatch.
pub(crate) fn create(e: &mut Engine, n: NewIncident, now: i64) -> Incident {
    match e.apply(&disp(), Command::CreateIncident(n), now).unwrap().reply {
        Reply::Created { incident, .. } => incident,
        r => panic!("unexpected reply {r:?}"),
    }
}

/// Asserts the cross-references between incidents and units agree.
pub(crate) fn check_invariants(e: &Engine) {
    let snap = e.snapshot();
    for u in &snap.units {
        if let Some(iid) = &u.incident_id {
            let inc = e.incident(iid).expect("unit holds a missing incident");
            assert!(inc.is_open(), "{} holds closed {}", u.id, iid);
            assert!(inc.units.contains(&u.id), "{} not in {}'s units", u.id, iid);
            assert!(
                !inc.declined_by.contains(&u.id),
                "{} holds declined {}",
                u.id,
                iid
            );
            assert!(
                matches!(
                    u.status,
                    UnitStatus::Dispatched | UnitStatus::EnRoute | UnitStatus::OnScene
                ),
                "{} holds {} while {:?}",
                u.id,
                iid,
                u.status
            );
        } else {
            assert!(
                !matches!(
                    u.status,
                    UnitStatus::Dispatched | UnitStatus::EnRoute | UnitStatus::OnScene
                ),
                "{} is {:?} without an incident",
                u.id,
                u.status
            );
        }
        assert_eq!(
            u.ack_deadline_ms.is_some(),
            u.status == UnitStatus::Dispatched,
            "{}",
            u.id
        );
        assert!(
            !u.shift_ended || u.incident_id.is_some(),
            "{}: shift_ended without an incident",
            u.id
        );
    }
    for inc in snap.incidents.iter().filter(|i| i.is_open()) {
        for uid in &inc.units {
            let u = e.unit(uid).expect("incident lists a missing unit");
            assert_eq!(
                u.incident_id.as_deref(),
                Some(inc.id.as_str()),
                "{} / {}",
                inc.id,
                uid
            );
        }
        let mut dedup = inc.units.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), inc.units.len(), "duplicate unit on {}", inc.id);
        assert_eq!(
            inc.units.is_empty(),
            inc.status == IncidentStatus::Pending,
            "{}",
            inc.id
        );
    }
}
