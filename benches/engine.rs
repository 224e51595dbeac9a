//! Criterion benches of the dispatch engine (opcenter-core), seeded, at 1 000,
//! 10 000 and 100 000 units (half busy, a tenth holding the `k9` capability the
//! incidents require): nearest eligible unit, recommend top 3, position update,
//! and a full create → assign → ack → close cycle. After criterion's medians it
//! prints p50/p99 of 100 000 individually timed queries (DESIGN.md asks for p99).
//! Results and the command live in docs/engine.md.
//!
//! Owns: engine benchmarks. Must never: touch the network or disk, or use an
//! unseeded random source.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use opcenter_core::{
    Actor, Command, Engine, EngineConfig, Location, NewIncident, PositionFix, RecommendQuery,
    RecommendTarget, Reply, UnitProfile, UnitStatus,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const T0: i64 = 1_764_300_000_000;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// The city: a 0.45° × 0.7° box around (51.2, 7.0), about 50 km × 50 km.
const LAT: (f64, f64) = (50.975, 51.425);
const LON: (f64, f64) = (6.65, 7.35);

struct Fleet {
    engine: Engine,
    ids: Vec<String>,
    /// Current position and heading (degrees) per unit, for the movement model.
    pos: Vec<(f64, f64, f64)>,
    now: i64,
    rng: StdRng,
}

fn random_loc(rng: &mut StdRng) -> Location {
    Location {
        lat: rng.random_range(LAT.0..LAT.1),
        lon: rng.random_range(LON.0..LON.1),
    }
}

/// `n` units in the city; half busy, a tenth with `k9`, all with a fresh fix.
fn fleet(n: usize) -> Fleet {
    let mut rng = StdRng::seed_from_u64(0x0C_E7_7E_12 ^ n as u64);
    // BENCH_SLACK_M tries another `dispatch.index_slack_m` (default 25 m).
    let slack = std::env::var("BENCH_SLACK_M").ok().and_then(|v| v.parse().ok());
    let config = EngineConfig {
        index_slack_m: slack.unwrap_or(EngineConfig::default().index_slack_m),
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let sys = Actor::system();
    let mut ids = Vec::with_capacity(n);
    let mut pos = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("P-{i:06}");
        let k9 = rng.random_bool(0.1);
        let profile = UnitProfile {
            agency: None,
            id: id.clone(),
            callsign: None,
            kind: Some("car".into()),
            capabilities: if k9 { vec!["k9".into()] } else { Vec::new() },
        };
        engine.apply(&sys, Command::RegisterUnit(profile), T0).unwrap();
        let status = if rng.random_bool(0.5) {
            UnitStatus::Busy
        } else {
            UnitStatus::Available
        };
        engine
            .apply(
                &sys,
                Command::SetStatus {
                    unit_id: id.clone(),
                    status,
                },
                T0,
            )
            .unwrap();
        let l = random_loc(&mut rng);
        engine.apply(&sys, position(&id, l), T0).unwrap();
        pos.push((l.lat, l.lon, rng.random_range(0.0..360.0)));
        ids.push(id);
    }
    Fleet {
        engine,
        ids,
        pos,
        now: T0,
        rng,
    }
}

fn position(id: &str, location: Location) -> Command {
    Command::Position {
        unit_id: id.to_string(),
        fix: PositionFix {
            location,
            heading: None,
            speed: None,
            accuracy: None,
            at_ms: None,
        },
    }
}

fn k9_query(loc: Location, count: usize) -> RecommendQuery {
    RecommendQuery {
        agencies: None,
        target: RecommendTarget::Location(loc),
        count,
        required: Some(vec!["k9".into()]),
    }
}

impl Fleet {
    /// One fix: a random unit drives 0–15 m along its heading, turning a little
    /// (a car at urban speed with ~1 Hz fixes). The clock stands still so that
    /// millions of iterations never make the fleet's positions stale; fixes within
    /// a second of each other count as a second apart in the speed check.
    fn move_one(&mut self) -> Command {
        let i = self.rng.random_range(0..self.ids.len());
        let (lat, lon, heading) = &mut self.pos[i];
        *heading += self.rng.random_range(-20.0..20.0);
        let step_m = self.rng.random_range(0.0..15.0);
        let h = heading.to_radians();
        *lat = (*lat + step_m * h.cos() / 111_195.0).clamp(LAT.0, LAT.1);
        *lon = (*lon + step_m * h.sin() / (111_195.0 * lat.to_radians().cos())).clamp(LON.0, LON.1);
        position(&self.ids[i], Location { lat: *lat, lon: *lon })
    }

    fn update(&mut self) {
        let cmd = self.move_one();
        let id = match &cmd {
            Command::Position { unit_id, .. } => unit_id.clone(),
            _ => unreachable!("move_one makes positions"),
        };
        black_box(
            self.engine
                .apply(&Actor::unit("bench", id), cmd, self.now)
                .unwrap(),
        );
    }

    /// create (auto, k9) → assigned → ack → close; returns the create's unit count.
    fn cycle(&mut self) -> usize {
        let loc = random_loc(&mut self.rng);
        let mut n = NewIncident::call("theft", 2, loc);
        n.required = vec!["k9".into()];
        let disp = Actor::dispatcher("bench");
        let inc = match self
            .engine
            .apply(&disp, Command::CreateIncident(n), self.now)
            .unwrap()
            .reply
        {
            Reply::Created { incident, .. } => incident,
            _ => unreachable!("create replies Created"),
        };
        let assigned = inc.units.len();
        if let Some(u) = inc.units.first() {
            let ack = Command::Ack {
                unit_id: u.clone(),
                incident_id: inc.id.clone(),
            };
            self.engine.apply(&disp, ack, self.now).unwrap();
        }
        let close = Command::CloseIncident {
            incident_id: inc.id,
            disposition: "done".into(),
        };
        self.engine.apply(&disp, close, self.now).unwrap();
        assigned
    }
}

fn benches(c: &mut Criterion) {
    for &n in &SIZES {
        let mut f = fleet(n);
        let mut g = c.benchmark_group(format!("engine/{n}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("nearest_eligible_k9", n), |b| {
            b.iter(|| {
                let loc = random_loc(&mut f.rng);
                black_box(f.engine.recommend(&k9_query(loc, 1), f.now).unwrap())
            })
        });
        g.bench_function(BenchmarkId::new("recommend_top3_k9", n), |b| {
            b.iter(|| {
                let loc = random_loc(&mut f.rng);
                black_box(f.engine.recommend(&k9_query(loc, 3), f.now).unwrap())
            })
        });
        // The engine's cost alone: the random walk, the command and the actor are
        // made before the clock starts (`iter_custom`), as the hub hands them over.
        g.bench_function(BenchmarkId::new("position_update", n), |b| {
            b.iter_custom(|iters| {
                let prepared: Vec<(Actor, Command)> = (0..iters)
                    .map(|_| {
                        let cmd = f.move_one();
                        let Command::Position { unit_id, .. } = &cmd else {
                            unreachable!("move_one makes positions")
                        };
                        (Actor::unit("bench", unit_id.clone()), cmd)
                    })
                    .collect();
                let start = Instant::now();
                for (actor, cmd) in prepared {
                    black_box(f.engine.apply(&actor, cmd, f.now).unwrap());
                }
                start.elapsed()
            })
        });
        g.bench_function(BenchmarkId::new("create_assign_ack_close", n), |b| {
            b.iter(|| black_box(f.cycle()))
        });
        g.finish();
    }
}

fn pct(mut v: Vec<u64>) -> (f64, f64, f64) {
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    (at(0.5), at(0.99), at(0.999))
}

/// p50 / p99 / p99.9 of individually timed operations (µs) at 100 000 units.
fn percentiles() {
    const N: usize = 100_000;
    let mut f = fleet(100_000);
    // Each series is warmed up first with N / 10 untimed operations: right after the
    // fleet is built (and the criterion fleets freed) the first thousands of calls
    // fault in allocator pages and caches, which otherwise lands in the p99.
    let time = |f: &mut Fleet, op: &mut dyn FnMut(&mut Fleet)| -> Vec<u64> {
        for _ in 0..N / 10 {
            op(f);
        }
        let mut v = Vec::with_capacity(N);
        for _ in 0..N {
            let t = Instant::now();
            op(f);
            v.push(t.elapsed().as_nanos() as u64);
        }
        v
    };
    let locs: Vec<Location> = (0..N).map(|_| random_loc(&mut f.rng)).collect();
    let mut k = 0;
    let nearest = time(&mut f, &mut |f| {
        k = (k + 1) % N;
        black_box(f.engine.recommend(&k9_query(locs[k], 1), f.now).unwrap());
    });
    let top3 = time(&mut f, &mut |f| {
        k = (k + 1) % N;
        black_box(f.engine.recommend(&k9_query(locs[k], 3), f.now).unwrap());
    });
    // Positions: the command is built outside the timed region.
    for _ in 0..N / 10 {
        f.update();
    }
    let mut upd = Vec::with_capacity(N);
    for _ in 0..N {
        let cmd = f.move_one();
        let actor = Actor::system();
        let t = Instant::now();
        black_box(f.engine.apply(&actor, cmd, f.now).unwrap());
        upd.push(t.elapsed().as_nanos() as u64);
    }
    // The dispatch itself: create (k9 required, auto) incl. choosing and assigning.
    let mut create = Vec::with_capacity(N / 10);
    let disp = Actor::dispatcher("bench");
    for _ in 0..N / 10 {
        let mut n = NewIncident::call("theft", 2, random_loc(&mut f.rng));
        n.required = vec!["k9".into()];
        let t = Instant::now();
        let out = f.engine.apply(&disp, Command::CreateIncident(n), f.now).unwrap();
        create.push(t.elapsed().as_nanos() as u64);
        if let Reply::Created { incident, .. } = out.reply {
            let close = Command::CloseIncident {
                incident_id: incident.id,
                disposition: "done".into(),
            };
            f.engine.apply(&disp, close, f.now).unwrap();
        }
    }
    println!("\npercentiles at 100000 units (µs): p50 / p99 / p99.9");
    for (name, v) in [
        ("nearest_eligible_k9", nearest),
        ("recommend_top3_k9", top3),
        ("position_update", upd),
        ("create_with_dispatch_k9", create),
    ] {
        let (p50, p99, p999) = pct(v);
        println!("  {name:<26} {p50:>7.2} / {p99:>7.2} / {p999:>7.2}");
    }
}

fn main() {
    let listing = std::env::args().any(|a| a == "--list" || a == "--test");
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    if !listing {
        percentiles();
    }
}
