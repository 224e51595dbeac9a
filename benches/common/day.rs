//! A busy dispatch day driven straight through `opcenter_core::Engine::apply`, as
//! journal records: units come on duty, incidents are created, auto-dispatched,
//! acknowledged, noted and closed. Shared by the restart benchmarks of both
//! journals (`benches/restart.rs` on `FileJournal`, the cluster crate's
//! `fill_region` example on a JetStream stream) so they replay the same history.
//!
//! Records are encoded as the hub reads them (`rmp_serde::to_vec_named(&Event)`;
//! the actor field is optional there) and the snapshot as the hub writes it.
//!
//! Owns: the generated history. Must never: write anything itself (the caller's
//! `append` does).

use std::collections::VecDeque;

use opcenter_core::{
    Actor, Command as Cmd, Engine, EngineConfig, Event, Location, NewIncident, PositionFix, Reply,
    UnitProfile, UnitStatus,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The day's clock starts here (unix ms); each incident advances it by 1 s.
const T0: i64 = 1_764_300_000_000;
/// Units on duty.
const UNITS: usize = 2_000;
/// Events per append (the size of a busy group commit).
const BATCH: usize = 64;

fn loc(rng: &mut StdRng) -> Location {
    Location {
        lat: rng.random_range(51.15..51.31),
        lon: rng.random_range(51.25..51.49),
    }
}

/// Generates records until `append` reports `target` events written. `append`
/// takes one batch of encoded records and returns the journal's last seq after
/// it. Returns the seq and bytes of the engine snapshot taken `snapshot_lag`
/// events before the end (the end itself for a target smaller than the fleet).
pub(crate) fn build(
    target: u64,
    snapshot_lag: u64,
    mut append: impl FnMut(&[&[u8]]) -> u64,
) -> (u64, Vec<u8>) {
    let config = EngineConfig {
        max_position_age_ms: i64::MAX / 4,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let mut rng = StdRng::seed_from_u64(4);
    let disp = Actor::dispatcher("bench");
    let mut now = T0;
    let mut pending: Vec<Event> = Vec::new();
    let mut snapshot: Option<(u64, Vec<u8>)> = None;
    let mut flush = |pending: &mut Vec<Event>| -> u64 {
        let payloads: Vec<Vec<u8>> = pending
            .iter()
            .map(|e| rmp_serde::to_vec_named(e).expect("an event encodes"))
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        pending.clear();
        append(&refs)
    };
    for i in 0..UNITS {
        let id = format!("P-{i:04}");
        let profile = UnitProfile {
            agency: None,
            id: id.clone(),
            callsign: Some(format!("Patrol {i}")),
            kind: Some("car".into()),
            capabilities: if i % 10 == 0 {
                vec!["k9".into()]
            } else {
                Vec::new()
            },
        };
        let actor = Actor::unit(id.clone(), id.clone());
        pending.extend(
            engine
                .apply(&actor, Cmd::RegisterUnit(profile), now)
                .expect("registration applies")
                .events,
        );
        let fix = PositionFix {
            location: loc(&mut rng),
            heading: None,
            speed: None,
            accuracy: None,
            at_ms: None,
        };
        let position = Cmd::Position {
            unit_id: id.clone(),
            fix,
        };
        engine.apply(&actor, position, now).expect("a fix applies");
        let st = Cmd::SetStatus {
            unit_id: id,
            status: UnitStatus::Available,
        };
        pending.extend(engine.apply(&actor, st, now).expect("status applies").events);
    }
    let mut last_seq = flush(&mut pending);
    let mut open: VecDeque<String> = VecDeque::new();
    while last_seq < target {
        now += 1_000;
        // A call comes in; the nearest unit takes it and acknowledges.
        let mut n = NewIncident::call(
            ["theft", "noise", "traffic", "assault"][rng.random_range(0..4)],
            rng.random_range(1..=5),
            loc(&mut rng),
        );
        n.address = Some(format!("{} Dostyk street", rng.random_range(1..300)));
        n.description = Some("caller reports a disturbance near the entrance, two people involved".into());
        let applied = engine
            .apply(&disp, Cmd::CreateIncident(n), now)
            .expect("a create applies");
        let inc = match &applied.reply {
            Reply::Created { incident, .. } => incident.clone(),
            other => panic!("create replied {other:?}"),
        };
        pending.extend(applied.events);
        if let Some(u) = inc.units.first() {
            let unit = Actor::unit(u.clone(), u.clone());
            let ack = Cmd::Ack {
                unit_id: u.clone(),
                incident_id: inc.id.clone(),
            };
            pending.extend(engine.apply(&unit, ack, now).expect("an ack applies").events);
            let note = Cmd::Note {
                incident_id: inc.id.clone(),
                text: "on our way".into(),
            };
            if let Ok(a) = engine.apply(&unit, note, now) {
                pending.extend(a.events);
            }
            open.push_back(inc.id.clone());
        }
        // Keep ~30 % of the fleet busy: close the oldest open incident.
        while open.len() > UNITS * 3 / 10 {
            let Some(id) = open.pop_front() else { break };
            let close = Cmd::CloseIncident {
                incident_id: id,
                disposition: "resolved".into(),
            };
            pending.extend(engine.apply(&disp, close, now).expect("a close applies").events);
        }
        if pending.len() >= BATCH {
            last_seq = flush(&mut pending);
        }
        if snapshot.is_none() && last_seq >= target.saturating_sub(snapshot_lag) {
            if !pending.is_empty() {
                last_seq = flush(&mut pending);
            }
            let snap = rmp_serde::to_vec_named(&engine.snapshot()).expect("a snapshot encodes");
            snapshot = Some((last_seq, snap));
        }
    }
    if !pending.is_empty() {
        last_seq = flush(&mut pending);
    }
    snapshot.unwrap_or_else(|| {
        let snap = rmp_serde::to_vec_named(&engine.snapshot()).expect("a snapshot encodes");
        (last_seq, snap)
    })
}
