//! Geocode latency: `Gazetteer::lookup` over 100 000 generated addresses
//! (2 000 streets of 50 houses, Cyrillic names, every tenth house a building),
//! with the queries a dispatcher types: a full address in Cyrillic, the same in
//! Latin, a street prefix while typing, a one-letter typo, a building name, and
//! the first keystroke (one letter: the widest prefix).
//! Prints p50 / p99 / max per query kind and overall; the goal (issue 15) is
//! p99 under 1 ms. Plain timing with `Instant`, not criterion: the goal is a
//! percentile, which criterion does not report. Owns no product code.
//!
//! Run: `cargo bench -p opcenter-core --bench gazetteer` (release profile).

// A benchmark measures wall time; the crate's rule (time as an argument) is for
// engine code, not for this harness.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use opcenter_core::gazetteer::{Address, Gazetteer, fold};
use opcenter_core::model::Location;

const STREETS: usize = 2_000;
const HOUSES: usize = 50;
const QUERIES: usize = 20_000;

/// xorshift64*: a fixed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SYLLABLES: [&str; 24] = [
    "ка", "ра", "су", "бе", "то", "ли", "ман", "жан", "гир", "аб", "ай", "ку", "сы", "тал", "ер", "нур",
    "бол", "ат", "ес", "ен", "қа", "өр", "мұ", "шо",
];
const KINDS: [&str; 4] = ["ул.", "пр.", "пер.", "б-р"];

fn street_name(rng: &mut Rng) -> String {
    let n = 2 + rng.below(3);
    let mut s: String = (0..n).map(|_| SYLLABLES[rng.below(SYLLABLES.len())]).collect();
    // Capitalise the first letter, as a file would.
    let first: String = s.chars().next().unwrap().to_uppercase().collect();
    s.replace_range(..s.chars().next().unwrap().len_utf8(), &first);
    s
}

fn main() {
    let mut rng = Rng(0x5EED_0015);
    let mut addresses = Vec::with_capacity(STREETS * HOUSES);
    let mut names = Vec::with_capacity(STREETS);
    for s in 0..STREETS {
        let name = street_name(&mut rng);
        let street = format!("{} {name}", KINDS[s % KINDS.len()]);
        for h in 1..=HOUSES {
            let house = match h % 17 {
                0 => format!("{h}а"),
                5 => format!("{h}-{}", h + 2),
                _ => h.to_string(),
            };
            addresses.push(Address {
                street: street.clone(),
                house,
                building: (h % 10 == 0).then(|| format!("БЦ {}", street_name(&mut rng))),
                location: Location {
                    lat: 51.1 + (s as f64) * 1e-4,
                    lon: 51.2 + (h as f64) * 1e-4,
                },
            });
        }
        names.push((street, name));
    }
    let started = Instant::now();
    let g = Gazetteer::new(addresses.clone()).expect("a valid gazetteer");
    println!("built {} addresses in {:?}", g.len(), started.elapsed());

    let kinds = ["cyrillic", "latin", "prefix", "typo", "building", "1 letter"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut found = 0usize;
    for i in 0..QUERIES {
        let (street, name) = &names[rng.below(names.len())];
        let house = 1 + rng.below(HOUSES);
        let kind = i % kinds.len();
        let q = match kind {
            0 => format!("{street} {house}"),
            1 => format!("{} {house}", fold(name).join(" ")),
            2 => name.chars().take(3).collect(),
            3 => {
                let mut c: Vec<char> = name.chars().collect();
                let at = 1 + rng.below(c.len() - 1);
                c[at] = 'ы';
                format!("{} {house}", c.into_iter().collect::<String>())
            }
            4 => {
                let a = &addresses[rng.below(addresses.len() / 10) * 10 + 9];
                a.building.clone().unwrap()
            }
            // The first keystroke: every street and building starting with it.
            _ => name.chars().take(1).collect(),
        };
        let t = Instant::now();
        let m = black_box(g.lookup(black_box(&q), 5));
        times[kind].push(t.elapsed());
        found += usize::from(!m.is_empty());
    }
    let report = |label: &str, v: &mut Vec<Duration>| {
        v.sort();
        let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        println!(
            "{label:>9}: n={:>6} p50={:>9.1?} p99={:>9.1?} max={:>9.1?}",
            v.len(),
            p(0.5),
            p(0.99),
            v[v.len() - 1]
        );
    };
    for (k, v) in kinds.iter().zip(times.iter_mut()) {
        report(k, v);
    }
    let mut all: Vec<Duration> = times.into_iter().flatten().collect();
    report("all", &mut all);
    println!("queries with a match: {found}/{QUERIES}");
}
