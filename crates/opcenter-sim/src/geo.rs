//! The city model shared by the demo and the load tool: a disc around a centre, local
//! metric coordinates, seeded generators for waypoints, patrol fleets, police posts and
//! a Poisson stream of citizens' calls with a realistic mix.
//!
//! Owns: pure, seeded generation (no I/O, no clock). Must never: read the wall clock
//! or an unseeded RNG, so a seed always gives the same city.

use rand::Rng;

// The sphere, its radius and the haversine are the engine's: the simulator
// measures distances exactly as dispatch does.
pub use opcenter_core::Location as LatLon;
pub use opcenter_core::geo::{EARTH_RADIUS_M, haversine_m as distance_m};

/// A round city: centre and radius, with a local east/north metric frame.
#[derive(Debug, Clone, Copy)]
pub struct City {
    /// Centre.
    pub center: LatLon,
    /// Radius, metres.
    pub radius_m: f64,
}

impl City {
    /// Uralsk (Oral), Kazakhstan: about 15 km across.
    pub const URALSK: City = City {
        center: LatLon {
            lat: 51.23,
            lon: 51.37,
        },
        radius_m: 7_500.0,
    };

    /// Local (east, north) metres → degrees (equirectangular; exact enough at city scale).
    pub fn to_latlon(&self, x: f64, y: f64) -> LatLon {
        let lat = self.center.lat + (y / EARTH_RADIUS_M).to_degrees();
        let lon = self.center.lon + (x / (EARTH_RADIUS_M * self.center.lat.to_radians().cos())).to_degrees();
        LatLon { lat, lon }
    }

    /// Degrees → local (east, north) metres.
    pub fn to_xy(&self, p: LatLon) -> (f64, f64) {
        let y = (p.lat - self.center.lat).to_radians() * EARTH_RADIUS_M;
        let x = (p.lon - self.center.lon).to_radians() * EARTH_RADIUS_M * self.center.lat.to_radians().cos();
        (x, y)
    }

    /// Whether `p` lies inside the city disc (with a metre of slack for rounding).
    pub fn contains(&self, p: LatLon) -> bool {
        distance_m(self.center, p) <= self.radius_m + 1.0
    }

    /// A uniformly random point of the disc, in local metres.
    pub fn random_xy(&self, rng: &mut impl Rng) -> (f64, f64) {
        let r = self.radius_m * rng.random::<f64>().sqrt();
        let a = rng.random::<f64>() * std::f64::consts::TAU;
        (r * a.cos(), r * a.sin())
    }

    /// A random point, denser towards the centre (where people and incidents are):
    /// half uniform over the disc, half within a third of the radius.
    pub fn random_incident_xy(&self, rng: &mut impl Rng) -> (f64, f64) {
        let (x, y) = self.random_xy(rng);
        if rng.random_bool(0.5) {
            (x / 3.0, y / 3.0)
        } else {
            (x, y)
        }
    }

    /// A patrol route from `from` to `to` along a street grid (Uralsk's centre is a
    /// grid): one leg east/west and one north/south. Returns the corner and the target.
    /// Of the two possible corners at least one lies inside the disc when both ends do
    /// (their squared norms add up to at most 2R²); that one is taken.
    pub fn grid_route(&self, from: (f64, f64), to: (f64, f64)) -> [(f64, f64); 2] {
        let a = (to.0, from.1);
        let b = (from.0, to.1);
        let corner = if a.0.hypot(a.1) <= b.0.hypot(b.1) { a } else { b };
        [corner, to]
    }
}

/// Time to the next event of a Poisson process with mean interval `mean_s` seconds.
pub fn exp_interval(rng: &mut impl Rng, mean_s: f64) -> f64 {
    // 1 - U lies in (0, 1], so the log is finite.
    -(1.0 - rng.random::<f64>()).ln() * mean_s
}

/// Street speed of a patrol, m/s (29–61 km/h).
pub fn patrol_speed(rng: &mut impl Rng) -> f64 {
    rng.random_range(8.0..17.0)
}

/// A patrol unit's kind and capabilities: a realistic mix where most cars are
/// general patrols and a minority carry a traffic, medic or k9 speciality.
pub fn fleet_profile(rng: &mut impl Rng) -> (&'static str, Vec<&'static str>) {
    let r: f64 = rng.random();
    let (kind, mut caps) = if r < 0.60 {
        ("patrol_car", vec!["patrol"])
    } else if r < 0.78 {
        ("traffic_car", vec!["patrol", "traffic"])
    } else if r < 0.90 {
        ("patrol_car", vec!["patrol", "medic"])
    } else if r < 0.96 {
        ("k9_van", vec!["patrol", "k9"])
    } else {
        ("motorcycle", vec!["traffic"])
    };
    if rng.random_bool(0.15) {
        caps.push("english");
    }
    (kind, caps)
}

/// A police post at a crowded place: name and offset from the centre in metres.
#[derive(Debug, Clone, Copy)]
pub struct Post {
    /// Short id suffix.
    pub code: &'static str,
    /// Place description.
    pub place: &'static str,
    /// East offset, metres.
    pub x: f64,
    /// North offset, metres.
    pub y: f64,
}

/// Ten posts at crowded kinds of place. Offsets are illustrative (a plausible layout
/// for a city of this size), not surveyed coordinates.
pub const POSTS: [Post; 10] = [
    Post {
        code: "STATION",
        place: "railway station",
        x: -1_800.0,
        y: 2_600.0,
    },
    Post {
        code: "BUS",
        place: "bus terminal",
        x: 2_300.0,
        y: 1_900.0,
    },
    Post {
        code: "MARKET",
        place: "central market",
        x: 300.0,
        y: 500.0,
    },
    Post {
        code: "SQUARE",
        place: "main square",
        x: -200.0,
        y: -300.0,
    },
    Post {
        code: "MALL",
        place: "shopping mall",
        x: 1_500.0,
        y: -1_200.0,
    },
    Post {
        code: "STADIUM",
        place: "stadium",
        x: -2_500.0,
        y: -900.0,
    },
    Post {
        code: "UNI",
        place: "university campus",
        x: 900.0,
        y: 2_100.0,
    },
    Post {
        code: "RIVER",
        place: "river embankment",
        x: -3_200.0,
        y: 300.0,
    },
    Post {
        code: "PARK",
        place: "city park",
        x: -900.0,
        y: 1_100.0,
    },
    Post {
        code: "HOSP",
        place: "regional hospital",
        x: 2_900.0,
        y: -2_400.0,
    },
];

/// What a generated call asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSpec {
    /// Category.
    pub category: &'static str,
    /// 1 (most urgent) ..= 5.
    pub priority: u8,
    /// Required capabilities.
    pub required: Vec<&'static str>,
    /// Units needed.
    pub units_needed: u32,
    /// A line of description.
    pub description: &'static str,
}

struct CallKind {
    category: &'static str,
    weight: f64,
    /// Priority weights for 1..=5.
    prio: [f64; 5],
    /// An optional required capability and the chance a call asks for it.
    required: Option<(&'static str, f64)>,
    /// Chance the call needs two units.
    two_units: f64,
    texts: &'static [&'static str],
}

/// The call mix, weighted roughly like an urban 102 line: many thefts, disputes and
/// noise complaints, fewer accidents, few violent or fire calls.
const CALL_MIX: &[CallKind] = &[
    CallKind {
        category: "theft",
        weight: 22.0,
        prio: [0.0, 0.1, 0.5, 0.3, 0.1],
        required: None,
        two_units: 0.0,
        texts: &[
            "phone snatched at a bus stop",
            "bicycle stolen from a yard",
            "shoplifter held by security",
        ],
    },
    CallKind {
        category: "traffic_accident",
        weight: 16.0,
        prio: [0.1, 0.35, 0.45, 0.1, 0.0],
        required: Some(("traffic", 0.5)),
        two_units: 0.1,
        texts: &[
            "two cars collided at a crossing",
            "car hit a pedestrian",
            "minor collision, drivers arguing",
        ],
    },
    CallKind {
        category: "domestic",
        weight: 14.0,
        prio: [0.15, 0.45, 0.35, 0.05, 0.0],
        required: None,
        two_units: 0.3,
        texts: &[
            "shouting and crying next door",
            "husband threatening wife",
            "family dispute turning violent",
        ],
    },
    CallKind {
        category: "noise",
        weight: 14.0,
        prio: [0.0, 0.0, 0.15, 0.45, 0.4],
        required: None,
        two_units: 0.0,
        texts: &[
            "loud music after midnight",
            "party in the flat above",
            "car alarm for an hour",
        ],
    },
    CallKind {
        category: "assault",
        weight: 9.0,
        prio: [0.4, 0.45, 0.15, 0.0, 0.0],
        required: Some(("medic", 0.4)),
        two_units: 0.4,
        texts: &[
            "fight outside a bar",
            "man beaten in an underpass",
            "group attacking a passer-by",
        ],
    },
    CallKind {
        category: "suspicious_person",
        weight: 12.0,
        prio: [0.0, 0.15, 0.45, 0.3, 0.1],
        required: Some(("k9", 0.1)),
        two_units: 0.0,
        texts: &[
            "man checking car doors",
            "someone loitering by the school",
            "unattended bag at a stop",
        ],
    },
    CallKind {
        category: "fire",
        weight: 4.0,
        prio: [0.5, 0.4, 0.1, 0.0, 0.0],
        required: None,
        two_units: 0.3,
        texts: &[
            "smoke from a flat window",
            "car on fire in a courtyard",
            "rubbish bins burning",
        ],
    },
    CallKind {
        category: "missing_person",
        weight: 3.0,
        prio: [0.2, 0.5, 0.3, 0.0, 0.0],
        required: Some(("k9", 0.5)),
        two_units: 0.2,
        texts: &[
            "child did not come home from school",
            "elderly man with dementia wandered off",
        ],
    },
    CallKind {
        category: "drunk_disorderly",
        weight: 6.0,
        prio: [0.0, 0.1, 0.4, 0.4, 0.1],
        required: None,
        two_units: 0.0,
        texts: &[
            "drunk man harassing shoppers",
            "intoxicated person lying on the pavement",
        ],
    },
];

fn weighted<'a, T>(rng: &mut impl Rng, items: &'a [T], weight: impl Fn(&T) -> f64) -> &'a T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut x = rng.random::<f64>() * total;
    for it in items {
        x -= weight(it);
        if x < 0.0 {
            return it;
        }
    }
    // Rounding can leave x at a hair above zero after the last item.
    &items[items.len() - 1]
}

/// Draws one call from the mix.
pub fn random_call(rng: &mut impl Rng) -> CallSpec {
    let k = weighted(rng, CALL_MIX, |k| k.weight);
    let prios = [1u8, 2, 3, 4, 5];
    let priority = *weighted(rng, &prios, |p| k.prio[(*p - 1) as usize]);
    let required = match k.required {
        Some((cap, p)) if rng.random_bool(p) => vec![cap],
        _ => vec![],
    };
    let units_needed = if rng.random_bool(k.two_units) { 2 } else { 1 };
    let description = k.texts[rng.random_range(0..k.texts.len())];
    CallSpec {
        category: k.category,
        priority,
        required,
        units_needed,
        description,
    }
}

/// How an incident ended.
pub fn random_disposition(rng: &mut impl Rng) -> &'static str {
    weighted(
        rng,
        &[
            ("resolved", 40.0),
            ("report_taken", 25.0),
            ("arrest", 8.0),
            ("warning_issued", 15.0),
            ("unfounded", 8.0),
            ("referred", 4.0),
        ],
        |d| d.1,
    )
    .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn same_seed_same_city() {
        let gen_all = |seed| {
            let mut r = StdRng::seed_from_u64(seed);
            let calls: Vec<_> = (0..50).map(|_| random_call(&mut r)).collect();
            let pts: Vec<_> = (0..50).map(|_| City::URALSK.random_xy(&mut r)).collect();
            let fleet: Vec<_> = (0..50).map(|_| fleet_profile(&mut r)).collect();
            (calls, pts, fleet)
        };
        assert_eq!(gen_all(7), gen_all(7));
        assert_ne!(gen_all(7).1, gen_all(8).1);
    }

    #[test]
    fn poisson_mean_is_roughly_right() {
        let mut r = StdRng::seed_from_u64(1);
        let n = 20_000;
        let mean = (0..n).map(|_| exp_interval(&mut r, 7.0)).sum::<f64>() / n as f64;
        assert!((mean - 7.0).abs() < 0.25, "mean {mean}");
        // Exponential: the share below the mean is 1 - 1/e ≈ 0.632.
        let below = (0..n).filter(|_| exp_interval(&mut r, 7.0) < 7.0).count() as f64 / n as f64;
        assert!((below - 0.632).abs() < 0.02, "share below mean {below}");
    }

    #[test]
    fn waypoints_and_posts_lie_inside_the_city() {
        let c = City::URALSK;
        let mut r = StdRng::seed_from_u64(3);
        for _ in 0..5_000 {
            let (x, y) = c.random_xy(&mut r);
            assert!(c.contains(c.to_latlon(x, y)));
            let (x, y) = c.random_incident_xy(&mut r);
            assert!(c.contains(c.to_latlon(x, y)));
        }
        for p in POSTS {
            assert!(c.contains(c.to_latlon(p.x, p.y)), "{}", p.place);
        }
    }

    #[test]
    fn local_frame_round_trips_and_matches_great_circle() {
        let c = City::URALSK;
        let p = c.to_latlon(3_000.0, -4_000.0);
        let (x, y) = c.to_xy(p);
        assert!((x - 3_000.0).abs() < 1e-6 && (y + 4_000.0).abs() < 1e-6);
        let d = distance_m(c.center, p);
        assert!((d - 5_000.0).abs() < 5.0, "{d}");
    }

    #[test]
    fn call_mix_is_plausible() {
        let mut r = StdRng::seed_from_u64(11);
        let calls: Vec<_> = (0..10_000).map(|_| random_call(&mut r)).collect();
        let share = |cat| calls.iter().filter(|c| c.category == cat).count() as f64 / 10_000.0;
        assert!(share("theft") > 0.15 && share("theft") < 0.30);
        assert!(share("fire") > 0.01 && share("fire") < 0.08);
        assert!(calls.iter().all(|c| (1..=5).contains(&c.priority)));
        assert!(
            calls
                .iter()
                .filter(|c| c.category == "noise")
                .all(|c| c.priority >= 3)
        );
        assert!(calls.iter().any(|c| c.required == vec!["k9"]));
    }

    #[test]
    fn fleet_mix_has_specialists_and_speeds_are_street_speeds() {
        let mut r = StdRng::seed_from_u64(5);
        let fleet: Vec<_> = (0..1_000).map(|_| fleet_profile(&mut r)).collect();
        for cap in ["traffic", "medic", "k9"] {
            let n = fleet.iter().filter(|(_, c)| c.contains(&cap)).count();
            assert!(n > 30 && n < 400, "{cap}: {n}");
        }
        assert!((0..1_000).all(|_| (8.0..17.0).contains(&patrol_speed(&mut r))));
    }
}
