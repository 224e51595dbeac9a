//! Retention and idempotency keys in the pure engine, time passed in: a closed
//! incident leaves memory and snapshots `retain_closed_ms` after it closed, a
//! key lives `key_ttl_ms` after its create (in its own key space), and the same
//! key with a different body is a conflict that changes nothing.

mod common;

use common::*;
use opcenter_core::*;

const T0: i64 = 1_764_300_000_000;
const HOUR: i64 = 3_600_000;

fn gateway() -> Actor {
    Actor {
        sub: "gw".into(),
        kind: ActorKind::Intake,
    }
}

fn keyed(key: &str) -> NewIncident {
    let mut n = NewIncident::call("theft", 3, at(51.23, 51.37));
    n.key = Some(key.into());
    n.dispatch = DispatchMode::Manual;
    n
}

fn created(a: Applied) -> (Incident, bool) {
    match a.reply {
        Reply::Created { incident, new } => (incident, new),
        other => panic!("{other:?}"),
    }
}

fn tick(e: &mut Engine, now: i64) {
    e.apply(&Actor::system(), Command::Tick, now).unwrap();
}

#[test]
fn a_closed_incident_is_retired_after_retain_closed_and_its_key_after_the_ttl() {
    let mut e = Engine::new(EngineConfig::default());
    let (inc, new) = created(
        e.apply(&gateway(), Command::CreateIncident(keyed("k")), T0)
            .unwrap(),
    );
    assert!(new);
    let open = created(
        e.apply(&disp(), Command::CreateIncident(keyed("open")), T0)
            .unwrap(),
    )
    .0;
    let close = Command::CloseIncident {
        incident_id: inc.id.clone(),
        disposition: "resolved".into(),
    };
    e.apply(&disp(), close, T0 + HOUR).unwrap();
    tick(&mut e, T0 + 25 * HOUR - 60_000);
    assert!(e.incident(&inc.id).is_some(), "retired early");
    assert!(e.take_retired().is_empty());
    tick(&mut e, T0 + 25 * HOUR + 60_000);
    assert!(e.incident(&inc.id).is_none(), "not retired");
    // Readers with their own copy (the hub's read model) learn exactly which, once.
    assert_eq!(e.take_retired(), vec![inc.id.clone()]);
    assert!(e.take_retired().is_empty());
    assert!(
        e.incident(&open.id).is_some(),
        "an open incident is never retired"
    );
    let snap = e.snapshot();
    assert!(snap.incidents.iter().all(|i| i.id != inc.id));
    // The key outlives the incident: a retry gets it back, closed, not a new one.
    let (again, new) = created(
        e.apply(&gateway(), Command::CreateIncident(keyed("k")), T0 + 30 * HOUR)
            .unwrap(),
    );
    assert!(!new);
    assert_eq!(
        (again.id.as_str(), again.status),
        (inc.id.as_str(), IncidentStatus::Closed)
    );
    assert_eq!(again.disposition.as_deref(), Some("resolved"));
    // And it survives a snapshot round trip.
    let mut restored = Engine::from_snapshot(EngineConfig::default(), e.snapshot());
    let (same, new) = created(
        restored
            .apply(&gateway(), Command::CreateIncident(keyed("k")), T0 + 30 * HOUR)
            .unwrap(),
    );
    assert!(!new);
    assert_eq!(same.id, inc.id);
    // After 72 h the key is forgotten: the same key makes a new incident.
    tick(&mut e, T0 + 72 * HOUR + 60_000);
    assert_eq!(e.keys_held(), 0);
    let (fresh, new) = created(
        e.apply(&gateway(), Command::CreateIncident(keyed("k")), T0 + 73 * HOUR)
            .unwrap(),
    );
    assert!(new);
    assert_ne!(fresh.id, inc.id);
}

/// Retention takes incidents in the order they closed, not the order they were
/// made, and an engine rebuilt from a snapshot retires (and expires keys)
/// exactly as the one that wrote it.
#[test]
fn incidents_leave_in_the_order_they_closed_and_a_restored_engine_agrees() {
    let mut e = Engine::new(EngineConfig::default());
    let ids: Vec<IncidentId> = (0..4)
        .map(|i| {
            let n = keyed(&format!("k{i}"));
            created(e.apply(&disp(), Command::CreateIncident(n), T0 + i).unwrap())
                .0
                .id
        })
        .collect();
    // Made 0, 1, 2, 3; closed 2 first, then 0, then 1; 3 stays open.
    for (k, id) in [(2usize, 1i64), (0, 2), (1, 3)] {
        let close = Command::CloseIncident {
            incident_id: ids[k].clone(),
            disposition: "resolved".into(),
        };
        e.apply(&disp(), close, T0 + id * HOUR).unwrap();
    }
    let mut restored = Engine::from_snapshot(EngineConfig::default(), e.snapshot());
    let retain = EngineConfig::default().retain_closed_ms;
    for engine in [&mut e, &mut restored] {
        tick(engine, T0 + HOUR + retain + 60_000);
        assert_eq!(engine.take_retired(), vec![ids[2].clone()]);
        tick(engine, T0 + 3 * HOUR + retain + 60_000);
        assert_eq!(engine.take_retired(), vec![ids[0].clone(), ids[1].clone()]);
        tick(engine, T0 + 200 * HOUR);
        assert!(engine.take_retired().is_empty(), "an open one stays");
        assert!(engine.incident(&ids[3]).is_some());
        assert_eq!(engine.incidents_held(), 1);
        // Keys: all four expired by now, whether their incident left or not.
        assert_eq!(engine.keys_held(), 0);
    }
}

#[test]
fn keys_are_per_source_and_a_different_body_is_a_conflict_that_changes_nothing() {
    let mut e = Engine::new(EngineConfig::default());
    let (app, _) = created(
        e.apply(&gateway(), Command::CreateIncident(keyed("k")), T0)
            .unwrap(),
    );
    let (console, new) = created(e.apply(&disp(), Command::CreateIncident(keyed("k")), T0).unwrap());
    assert!(new, "the consoles' key space is their own");
    assert_ne!(app.id, console.id);
    let before = e.snapshot();
    for change in [
        |n: &mut NewIncident| n.category = "assault".into(),
        |n: &mut NewIncident| n.priority = 1,
        |n: &mut NewIncident| n.location = at(51.0, 51.0),
        |n: &mut NewIncident| n.description = Some("other".into()),
    ] {
        let mut n = keyed("k");
        change(&mut n);
        let err = e
            .apply(&gateway(), Command::CreateIncident(n), T0 + 1)
            .unwrap_err();
        assert_eq!(err.code(), "conflict", "{err}");
    }
    assert_eq!(e.snapshot(), before);
}

#[test]
fn notes_stop_at_max_notes() {
    let config = EngineConfig {
        max_notes: 3,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(config);
    let (inc, _) = created(e.apply(&disp(), Command::CreateIncident(keyed("n")), T0).unwrap());
    let note = |text: &str| Command::Note {
        incident_id: inc.id.clone(),
        text: text.into(),
    };
    for i in 0..3 {
        e.apply(&disp(), note(&format!("n{i}")), T0).unwrap();
    }
    let err = e.apply(&disp(), note("one more"), T0).unwrap_err();
    assert_eq!(err.code(), "too_large");
    assert_eq!(e.incident(&inc.id).unwrap().notes.len(), 3);
}
