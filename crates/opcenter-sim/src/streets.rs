//! The demo city's street net: named polylines on the same disc and local metric frame
//! as [`crate::geo::City`], so the console's streets layer, the gazetteer's addresses
//! and the simulated patrols all describe one city. A 500 m grid clipped to the disc,
//! a ring road, the Chagan river running north–south west of the centre (Zachagansky
//! district lies beyond it), an embankment on its east bank and a few bridges.
//!
//! ILLUSTRATIVE DEMO DATA: the names are common Kazakh and Russian street names, the
//! layout is made up; it is not a survey of Uralsk.
//!
//! Owns: pure generation (no I/O, no RNG: the same city always gives the same streets).
//! `cargo run -p opcenter-sim --example streets > config/uralsk-streets.geojson` writes
//! the committed file; a test checks the file still matches this code.

use serde_json::{Value, json};

use crate::geo::{City, LatLon};

/// What a polyline is; the gazetteer gives house numbers only to [`StreetKind::is_addressable`] kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreetKind {
    /// A main road (проспект).
    Avenue,
    /// A street (улица).
    Street,
    /// A lane (переулок).
    Lane,
    /// A river bank road (набережная).
    Embankment,
    /// A bridge span over the river: part of the street named in it, no houses.
    Bridge,
    /// A river's centre line (drawn, not a street).
    River,
}

impl StreetKind {
    /// The GeoJSON `kind` property.
    pub fn as_str(self) -> &'static str {
        match self {
            StreetKind::Avenue => "avenue",
            StreetKind::Street => "street",
            StreetKind::Lane => "lane",
            StreetKind::Embankment => "embankment",
            StreetKind::Bridge => "bridge",
            StreetKind::River => "river",
        }
    }

    /// Whether houses stand along it (not a bridge, not a river).
    pub fn is_addressable(self) -> bool {
        !matches!(self, StreetKind::Bridge | StreetKind::River)
    }
}

/// One named polyline.
#[derive(Debug, Clone, PartialEq)]
pub struct Street {
    /// Latin name, e.g. "Abay avenue".
    pub name: String,
    /// Cyrillic name, e.g. "проспект Абая".
    pub name_ru: String,
    /// What it is.
    pub kind: StreetKind,
    /// The line, west to east or south to north, in degrees (6 decimals).
    pub points: Vec<LatLon>,
}

/// Distance between parallel streets, metres.
pub const GRID_M: f64 = 500.0;
/// Radius of the ring road, metres from the centre.
pub const RING_M: f64 = 7_000.0;
/// North–south lines of the bridged east–west streets (local y, metres).
pub const BRIDGE_Y: [f64; 3] = [-2_000.0, 500.0, 3_000.0];

/// The river's centre line at local northing `y`: it meanders around 2.9 km west of
/// the centre, so the river embankment post (geo::POSTS) stands on its west bank.
pub fn river_x(y: f64) -> f64 {
    -2_900.0 + 250.0 * (y / 1_400.0).sin()
}

/// The river's east bank road, metres east of the centre line.
const EMBANKMENT_OFFSET_M: f64 = 150.0;
/// East–west streets on the west bank stop this far from the centre line.
const WEST_BANK_GAP_M: f64 = 150.0;
/// How far the ends of a bridge reach past the centre line on either side.
const BRIDGE_HALF_M: f64 = 120.0;
/// Points along curved lines (river, embankment, ring), metres apart.
const CURVE_STEP_M: f64 = 250.0;

/// Latin and Cyrillic stems of the named streets east of the river, in the order
/// they are handed out (east–west streets south to north, then north–south lines
/// west to east). The stem is used with the kind: "{stem} street" / "улица {stem}".
const NAMES: [(&str, &str); 52] = [
    ("Saraishyk", "Сарайшык"),
    ("Alash", "Алаш"),
    ("Kenesary", "Кенесары"),
    ("Abylai Khan", "Абылай хана"),
    ("Tole bi", "Толе би"),
    ("Kazybek bi", "Казыбек би"),
    ("Aiteke bi", "Айтеке би"),
    ("Dina Nurpeisova", "Дины Нурпеисовой"),
    ("Isatay", "Исатая"),
    ("Makhambet", "Махамбета"),
    ("Kirov", "Кирова"),
    ("Frunze", "Фрунзе"),
    ("Stroiteley", "Строителей"),
    ("Abay", "Абая"),
    ("Kosmicheskaya", "Космическая"),
    ("Pobedy", "Победы"),
    ("Tselinnaya", "Целинная"),
    ("Zavodskaya", "Заводская"),
    ("Polevaya", "Полевая"),
    ("Shkolnaya", "Школьная"),
    ("Stepnaya", "Степная"),
    ("Vokzalnaya", "Вокзальная"),
    ("Sadovaya", "Садовая"),
    ("Beibitshilik", "Бейбитшилик"),
    ("Sholokhov", "Шолохова"),
    ("Zhaiyk", "Жайык"),
    ("Karasu", "Карасу"),
    ("Satpaev", "Сатпаева"),
    ("Eurasia", "Евразия"),
    ("Auezov", "Ауэзова"),
    ("Zheltoksan", "Желтоксан"),
    ("Dostyk", "Достык"),
    ("Akzhaik", "Акжайык"),
    ("Baimagambetov", "Баймагамбетова"),
    ("Lomonosov", "Ломоносова"),
    ("Kurmangazy", "Курмангазы"),
    ("Chekhov", "Чехова"),
    ("Gogol", "Гоголя"),
    ("Lermontov", "Лермонтова"),
    ("Tolstoy", "Толстого"),
    ("Shokan Valikhanov", "Шокана Уалиханова"),
    ("Zhastar", "Жастар"),
    ("Ykylas", "Ыкыласа"),
    ("Mukhit", "Мухита"),
    ("Bolashak", "Болашак"),
    ("Gagarin", "Гагарина"),
    ("Chapaev", "Чапаева"),
    ("Kazhymukan", "Кажымукана"),
    ("Temir Masin", "Темира Масина"),
    ("Tauelsizdik", "Тауелсиздик"),
    ("Zhambyl", "Жамбыла"),
    ("Pushkin", "Пушкина"),
];

/// The stems that are avenues (the main roads through the centre).
const AVENUES: [&str; 4] = ["Abay", "Dostyk", "Eurasia", "Kurmangazy"];

fn named(stem: (&str, &str), kind: StreetKind) -> (String, String) {
    let (en, ru) = stem;
    match kind {
        StreetKind::Avenue => (format!("{en} avenue"), format!("проспект {ru}")),
        StreetKind::Lane => (format!("{en} lane"), format!("переулок {ru}")),
        _ => (format!("{en} street"), format!("улица {ru}")),
    }
}

/// `v` to 6 decimals (~0.1 m in degrees).
pub(crate) fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn line(city: &City, xy: impl IntoIterator<Item = (f64, f64)>) -> Vec<LatLon> {
    xy.into_iter()
        .map(|(x, y)| {
            let p = city.to_latlon(x, y);
            LatLon {
                lat: round6(p.lat),
                lon: round6(p.lon),
            }
        })
        .collect()
}

/// `from..=to` in steps of about `step` (the ends exact).
fn span(from: f64, to: f64, step: f64) -> Vec<f64> {
    let n = ((to - from) / step).ceil().max(1.0) as usize;
    (0..=n)
        .map(|i| from + (to - from) * i as f64 / n as f64)
        .collect()
}

/// Grid offsets `-k*GRID_M..=k*GRID_M` strictly inside the ring road.
fn grid_lines() -> Vec<f64> {
    let k = ((RING_M - 1.0) / GRID_M).floor() as i64;
    (-k..=k).map(|i| i as f64 * GRID_M).collect()
}

/// Half the chord of the ring road at offset `o` from the centre.
fn half_chord(o: f64) -> f64 {
    (RING_M * RING_M - o * o).max(0.0).sqrt()
}

/// The street net of `city`: the river first (drawn under everything), then the
/// ring road, the embankment, east–west streets south to north, north–south lines
/// west to east, and the bridges. Every street name is unique.
pub fn streets(city: &City) -> Vec<Street> {
    let mut out = Vec::new();
    let mut push = |name: (String, String), kind: StreetKind, points: Vec<LatLon>| {
        out.push(Street {
            name: name.0,
            name_ru: name.1,
            kind,
            points,
        });
    };
    // The river runs through and beyond the city.
    let reach = city.radius_m + 500.0;
    push(
        ("Chagan river".into(), "река Чаган".into()),
        StreetKind::River,
        line(
            city,
            span(-reach, reach, CURVE_STEP_M)
                .into_iter()
                .map(|y| (river_x(y), y)),
        ),
    );
    let ring = span(0.0, std::f64::consts::TAU, CURVE_STEP_M / RING_M);
    push(
        ("Ring road".into(), "Кольцевая дорога".into()),
        StreetKind::Avenue,
        line(
            city,
            ring.into_iter().map(|a| (RING_M * a.cos(), RING_M * a.sin())),
        ),
    );
    let bank = span(-3_500.0, 4_000.0, CURVE_STEP_M);
    push(
        ("Chagan embankment".into(), "набережная Чагана".into()),
        StreetKind::Embankment,
        line(
            city,
            bank.into_iter().map(|y| (river_x(y) + EMBANKMENT_OFFSET_M, y)),
        ),
    );
    let mut stems = NAMES.iter().copied();
    let mut next_name = || {
        let stem = stems.next().expect("NAMES covers every east-bank street");
        let kind = if AVENUES.contains(&stem.0) {
            StreetKind::Avenue
        } else {
            StreetKind::Street
        };
        (named(stem, kind), kind)
    };
    let west_numbered = |n: usize, ns: bool| -> (String, String) {
        if ns {
            (format!("Zarechnaya line {n}"), format!("Заречная линия {n}"))
        } else {
            (format!("Zarechny lane {n}"), format!("Заречный переулок {n}"))
        }
    };
    // East–west streets: east of the river (the whole chord when bridged), and a
    // numbered lane on the west bank for the unbridged ones.
    let mut west_lanes = 0;
    for y in grid_lines() {
        let h = half_chord(y);
        let bridged = BRIDGE_Y.contains(&y);
        let bank = river_x(y) + EMBANKMENT_OFFSET_M;
        let from = if bridged { -h } else { bank.max(-h) };
        if from < h {
            let (name, kind) = next_name();
            push(
                name,
                kind,
                line(city, span(from, h, GRID_M).into_iter().map(|x| (x, y))),
            );
        }
        let west_end = river_x(y) - WEST_BANK_GAP_M;
        if !bridged && -h < west_end - GRID_M / 2.0 {
            west_lanes += 1;
            push(
                west_numbered(west_lanes, false),
                StreetKind::Lane,
                line(city, span(-h, west_end, GRID_M).into_iter().map(|x| (x, y))),
            );
        }
    }
    // North–south lines never cross the river: the ones it would cross are left out.
    let mut west_lines = 0;
    for x in grid_lines() {
        let h = half_chord(x);
        let points = line(city, span(-h, h, GRID_M).into_iter().map(|y| (x, y)));
        if x > -2_900.0 + 250.0 + EMBANKMENT_OFFSET_M {
            let (name, kind) = next_name();
            push(name, kind, points);
        } else if x < -2_900.0 - 250.0 - WEST_BANK_GAP_M {
            west_lines += 1;
            push(west_numbered(west_lines, true), StreetKind::Street, points);
        }
    }
    // Bridge spans, named after the street they carry (the ring road crosses twice).
    let ring_cross = |north: bool| {
        // Where the ring meets the river: solve x² + y² = R² with x = river_x(y), by bisection.
        let (mut lo, mut hi) = if north { (0.0, RING_M) } else { (-RING_M, 0.0) };
        let f = |y: f64| river_x(y).powi(2) + y * y - RING_M * RING_M;
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if (f(lo) < 0.0) == (f(mid) < 0.0) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    };
    let carried: Vec<(String, String, f64)> = BRIDGE_Y
        .iter()
        .map(|&y| {
            let s = out
                .iter()
                .find(|s| {
                    s.kind != StreetKind::River
                        && s.points.len() > 1
                        && (city.to_xy(s.points[0]).1 - y).abs() < 1.0
                        && (city.to_xy(s.points[1]).1 - y).abs() < 1.0
                })
                .expect("a bridged street exists");
            (s.name.clone(), s.name_ru.clone(), y)
        })
        .chain([true, false].map(|n| {
            (
                "Ring road".to_string(),
                "Кольцевая дорога".to_string(),
                ring_cross(n),
            )
        }))
        .collect();
    for (en, ru, y) in carried {
        let x = river_x(y);
        let (en, ru) = (format!("{en} bridge"), format!("мост, {ru}"));
        out.push(Street {
            name: en,
            name_ru: ru,
            kind: StreetKind::Bridge,
            points: line(city, [(x - BRIDGE_HALF_M, y), (x + BRIDGE_HALF_M, y)]),
        });
    }
    out
}

/// `streets` as a GeoJSON FeatureCollection of LineStrings with `name`, `name_ru`
/// and `kind` properties: the format of `console.streets_file`.
pub fn geojson(streets: &[Street]) -> Value {
    let features: Vec<Value> = streets
        .iter()
        .map(|s| {
            let coords: Vec<[f64; 2]> = s.points.iter().map(|p| [p.lon, p.lat]).collect();
            json!({
                "type": "Feature",
                "properties": {"name": s.name, "name_ru": s.name_ru, "kind": s.kind.as_str()},
                "geometry": {"type": "LineString", "coordinates": coords},
            })
        })
        .collect();
    json!({
        "type": "FeatureCollection",
        "note": "Illustrative demo streets around Uralsk (Oral), generated by opcenter-sim's streets module: NOT a survey.",
        "features": features,
    })
}

/// The committed file's text for `city`: one feature per line, so diffs stay readable.
pub fn geojson_text(city: &City) -> String {
    let doc = geojson(&streets(city));
    let mut text = String::from("{\"type\":\"FeatureCollection\",\n\"note\":");
    text.push_str(&doc["note"].to_string());
    text.push_str(",\n\"features\":[\n");
    let features = doc["features"].as_array().expect("features");
    for (i, f) in features.iter().enumerate() {
        text.push_str(&f.to_string());
        text.push_str(if i + 1 < features.len() { ",\n" } else { "\n" });
    }
    text.push_str("]}\n");
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_and_streets_stay_in_the_city() {
        let city = City::URALSK;
        let all = streets(&city);
        let mut seen = HashSet::new();
        for s in all.iter().filter(|s| s.kind != StreetKind::Bridge) {
            assert!(seen.insert(s.name.clone()), "duplicate {}", s.name);
            assert!(seen.insert(s.name_ru.clone()), "duplicate {}", s.name_ru);
        }
        for s in all.iter().filter(|s| s.kind != StreetKind::River) {
            assert!(s.points.len() >= 2, "{}", s.name);
            for p in &s.points {
                assert!(city.contains(*p), "{} leaves the city at {p:?}", s.name);
            }
        }
        assert_eq!(all.iter().filter(|s| s.kind == StreetKind::Bridge).count(), 5);
    }

    #[test]
    fn only_bridges_and_bridged_streets_cross_the_river() {
        let city = City::URALSK;
        for s in streets(&city) {
            if matches!(s.kind, StreetKind::River | StreetKind::Bridge) || s.name == "Ring road" {
                continue;
            }
            let sides: HashSet<bool> = s
                .points
                .iter()
                .map(|p| {
                    let (x, y) = city.to_xy(*p);
                    x < river_x(y)
                })
                .collect();
            let bridged = BRIDGE_Y
                .iter()
                .any(|&by| (city.to_xy(s.points[0]).1 - by).abs() < 1.0)
                && s.points.len() > 1
                && (city.to_xy(s.points[1]).1 - city.to_xy(s.points[0]).1).abs() < 1.0;
            assert!(
                sides.len() == 1 || bridged,
                "{} crosses the river without a bridge",
                s.name
            );
        }
    }

    #[test]
    fn the_committed_file_matches_the_generator() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/uralsk-streets.geojson");
        let committed = std::fs::read_to_string(path).expect("config/uralsk-streets.geojson");
        assert!(
            committed == geojson_text(&City::URALSK),
            "config/uralsk-streets.geojson is stale: \
             cargo run -p opcenter-sim --example streets > config/uralsk-streets.geojson"
        );
        assert!(committed.len() < 1_000_000);
    }
}
