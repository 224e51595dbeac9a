//! The demo city's gazetteer: house addresses along the streets of
//! [`crate::streets`], so the console's address field finds what the streets layer
//! draws. Houses stand every [`HOUSE_SPACING_M`] along each street (not bridges or
//! the river), odd numbers on the left side, even on the right, [`SIDE_M`] off the
//! centre line; every seventh even house is a building spanning two numbers
//! (`14-16`), every ninth odd house has a neighbour with a letter (`9а`), and the
//! house nearest each of the city's crowded places (its modular post) carries a
//! building name (`Центральный рынок`). Street names
//! are the Cyrillic ones (`улица Абая`); the gazetteer matches Latin spellings too.
//!
//! ILLUSTRATIVE DEMO DATA, like the streets: not the addresses of Uralsk.
//!
//! Owns: pure generation (no I/O, no RNG). `cargo run -p opcenter-sim --example
//! addresses > config/uralsk-addresses.csv` writes the committed file; a test checks
//! the file still matches this code.

use crate::geo::{City, LatLon, POSTS, distance_m};
use crate::streets::{Street, round6, streets};

/// Distance between houses along one side of a street, metres.
pub const HOUSE_SPACING_M: f64 = 100.0;
/// Distance of a house from its street's centre line, metres.
pub const SIDE_M: f64 = 15.0;
/// No house closer than this to either end of a street, metres.
const END_GAP_M: f64 = 30.0;

/// Named buildings at the demo city's crowded places ([`crate::geo::POSTS`], by
/// code): each names the plain house nearest its post, so typing "рынок" finds
/// the address beside the central market's modular post.
const BUILDINGS: [(&str, &str); 10] = [
    ("STATION", "Железнодорожный вокзал"),
    ("BUS", "Автовокзал"),
    ("MARKET", "Центральный рынок"),
    ("SQUARE", "Акимат города"),
    ("MALL", "ТРЦ Сити"),
    ("STADIUM", "Центральный стадион"),
    ("UNI", "Университет"),
    ("RIVER", "Лодочная станция"),
    ("PARK", "Городской парк"),
    ("HOSP", "Областная больница"),
];

/// One address of the generated gazetteer.
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    /// The street's Cyrillic name.
    pub street: String,
    /// `7`, `12-14`, `9а`.
    pub house: String,
    /// A building name, if any.
    pub building: Option<String>,
    /// Where it stands (6 decimals).
    pub location: LatLon,
}

/// The point `along` metres down the polyline `xy`, and the unit normal to its
/// left there (local metres).
fn walk(xy: &[(f64, f64)], along: f64) -> Option<((f64, f64), (f64, f64))> {
    let mut left = along;
    for w in xy.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let len = (x1 - x0).hypot(y1 - y0);
        if len <= 0.0 {
            continue;
        }
        if left <= len {
            let t = left / len;
            let (dx, dy) = ((x1 - x0) / len, (y1 - y0) / len);
            return Some(((x0 + t * (x1 - x0), y0 + t * (y1 - y0)), (-dy, dx)));
        }
        left -= len;
    }
    None
}

/// The addresses of one street, in house-number order per side.
fn houses(city: &City, s: &Street, out: &mut Vec<Address>) {
    let xy: Vec<(f64, f64)> = s.points.iter().map(|p| city.to_xy(*p)).collect();
    let length: f64 = xy
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).hypot(w[1].1 - w[0].1))
        .sum();
    let mut place = |along: f64, side: f64, house: String| {
        if let Some(((x, y), (nx, ny))) = walk(&xy, along) {
            let p = city.to_latlon(x + side * nx, y + side * ny);
            out.push(Address {
                street: s.name_ru.clone(),
                house,
                building: None,
                location: LatLon {
                    lat: round6(p.lat),
                    lon: round6(p.lon),
                },
            });
        }
    };
    let mut i = 0usize;
    let mut skip_even = false;
    loop {
        let along = END_GAP_M + i as f64 * HOUSE_SPACING_M;
        if along > length - END_GAP_M {
            break;
        }
        let odd = 2 * i + 1;
        let even = 2 * i + 2;
        place(along, SIDE_M, odd.to_string());
        if odd.is_multiple_of(9) {
            place(along + HOUSE_SPACING_M / 3.0, SIDE_M, format!("{odd}а"));
        }
        if skip_even {
            skip_even = false;
        } else if even.is_multiple_of(14) && along + HOUSE_SPACING_M <= length - END_GAP_M {
            // One building over two numbers, between their places.
            place(
                along + HOUSE_SPACING_M / 2.0,
                -SIDE_M,
                format!("{even}-{}", even + 2),
            );
            skip_even = true;
        } else {
            place(along, -SIDE_M, even.to_string());
        }
        i += 1;
    }
}

/// Every address of `city`'s streets, street by street in [`streets`] order.
pub fn addresses(city: &City) -> Vec<Address> {
    let mut out = Vec::new();
    for s in streets(city).iter().filter(|s| s.kind.is_addressable()) {
        houses(city, s, &mut out);
    }
    for (code, name) in BUILDINGS {
        let Some(post) = POSTS.iter().find(|p| p.code == code) else {
            continue;
        };
        let at = city.to_latlon(post.x, post.y);
        let nearest = out
            .iter()
            .enumerate()
            .filter(|(_, a)| a.building.is_none() && a.house.bytes().all(|b| b.is_ascii_digit()))
            .map(|(i, a)| (distance_m(at, a.location), i))
            .min_by(|x, y| x.0.total_cmp(&y.0));
        if let Some((_, i)) = nearest {
            out[i].building = Some(name.to_string());
        }
    }
    out
}

/// One CSV field, quoted when it needs it (RFC 4180).
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The committed file's text for `city`: the gazetteer's CSV format
/// (`street,house,building,lat,lon`; docs/gazetteer.md).
pub fn csv_text(city: &City) -> String {
    let mut text = String::from("street,house,building,lat,lon\n");
    for a in addresses(city) {
        text.push_str(&format!(
            "{},{},{},{:.6},{:.6}\n",
            field(&a.street),
            field(&a.house),
            field(a.building.as_deref().unwrap_or("")),
            a.location.lat,
            a.location.lon
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// Distance from `p` to the polyline `xy`, metres.
    fn to_line(p: (f64, f64), xy: &[(f64, f64)]) -> f64 {
        xy.windows(2)
            .map(|w| {
                let ((x0, y0), (x1, y1)) = (w[0], w[1]);
                let (dx, dy) = (x1 - x0, y1 - y0);
                let l2 = dx * dx + dy * dy;
                let t = if l2 > 0.0 {
                    (((p.0 - x0) * dx + (p.1 - y0) * dy) / l2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                (p.0 - x0 - t * dx).hypot(p.1 - y0 - t * dy)
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn every_address_lies_beside_its_street_and_is_unique() {
        let city = City::URALSK;
        let lines: HashMap<String, Vec<(f64, f64)>> = streets(&city)
            .into_iter()
            .filter(|s| s.kind.is_addressable())
            .map(|s| (s.name_ru, s.points.iter().map(|p| city.to_xy(*p)).collect()))
            .collect();
        let all = addresses(&city);
        assert!(all.len() > 5_000, "{}", all.len());
        let mut seen = HashSet::new();
        for a in &all {
            let line = &lines[&a.street];
            let d = to_line(city.to_xy(a.location), line);
            assert!(
                (SIDE_M - 1.0..=SIDE_M + 1.0).contains(&d),
                "{} {} is {d:.1} m from its street",
                a.street,
                a.house
            );
            assert!(city.contains(a.location), "{} {}", a.street, a.house);
            assert!(
                seen.insert((a.street.clone(), a.house.clone())),
                "{} {} twice",
                a.street,
                a.house
            );
        }
        // Every addressable street has houses; ranges, letters and buildings exist.
        let streets_with: HashSet<&str> = all.iter().map(|a| a.street.as_str()).collect();
        assert_eq!(streets_with.len(), lines.len());
        assert!(all.iter().any(|a| a.house.contains('-')));
        assert!(all.iter().any(|a| a.house.ends_with('а')));
        // Each named building stands near its post (within a block).
        for (code, name) in BUILDINGS {
            let post = POSTS.iter().find(|p| p.code == code).expect("a post");
            let a = all
                .iter()
                .find(|a| a.building.as_deref() == Some(name))
                .expect(name);
            let d = distance_m(city.to_latlon(post.x, post.y), a.location);
            assert!(d < 300.0, "{name} is {d:.0} m from its post");
        }
    }

    #[test]
    fn the_committed_file_matches_the_generator() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/uralsk-addresses.csv");
        let committed = std::fs::read_to_string(path).expect("config/uralsk-addresses.csv");
        assert!(
            committed == csv_text(&City::URALSK),
            "config/uralsk-addresses.csv is stale: \
             cargo run -p opcenter-sim --example addresses > config/uralsk-addresses.csv"
        );
        assert!(committed.len() < 2_000_000, "{} bytes", committed.len());
    }

    #[test]
    fn the_committed_file_is_consistent_with_the_committed_streets() {
        // Each street name in the addresses file names a line of the streets file.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/");
        let streets: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{dir}uralsk-streets.geojson")).expect("streets"),
        )
        .expect("GeoJSON");
        let names: HashSet<&str> = streets["features"]
            .as_array()
            .expect("features")
            .iter()
            .filter_map(|f| f["properties"]["name_ru"].as_str())
            .collect();
        let csv = std::fs::read_to_string(format!("{dir}uralsk-addresses.csv")).expect("addresses");
        for line in csv.lines().skip(1) {
            let street = line.split(',').next().unwrap_or_default();
            assert!(names.contains(street), "{street} is not on the streets layer");
        }
    }
}
