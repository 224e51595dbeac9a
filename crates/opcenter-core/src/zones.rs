//! Districts and beats: the zones of a region and the question "which district
//! and beat is this point in". GeoJSON draws edges as straight lines in lon/lat,
//! so containment is planar point-in-polygon in (lon, lat) degrees; the zones'
//! bounding boxes sit in an rstar R-tree so a lookup tests only the few
//! polygons whose box holds the point.
//!
//! **Edges.** The crossing test is half-open (a ring edge counts when one end is
//! strictly above the point's latitude and the other at or below it, and only
//! crossings strictly east of the point count), so a point on an edge two
//! adjacent zones share lies in exactly one of them, never both, never neither
//! (away from the region's outer boundary). A hole's edge follows the same
//! rule. Where zones of one kind overlap (a drawing error), the first in
//! config order wins.
//!
//! Owns: zone shapes, their validation and the lookup. Must never: read files
//! or parse GeoJSON (the hub does; this crate has no JSON), or panic on input.

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::model::Location;

/// District or beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    /// A police district (a beat belongs to one).
    District,
    /// A patrol beat inside a district.
    Beat,
}

/// One polygon: its exterior ring, then its holes. Points are `[lon, lat]`
/// (GeoJSON order); a ring may or may not repeat its first point at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Polygon {
    /// Exterior ring first, then holes.
    pub rings: Vec<Vec<[f64; 2]>>,
}

/// A district or beat: a name and one or more polygons (a multipolygon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Zone {
    /// Its name, as incidents and units carry it (`district`, `beat`).
    pub id: String,
    /// District or beat.
    pub kind: ZoneKind,
    /// For a beat: the district it belongs to.
    #[serde(default)]
    pub district: Option<String>,
    /// Its area: any point inside one of them (and outside its holes).
    pub polygons: Vec<Polygon>,
}

impl Zone {
    /// Shape rules: a name, at least one polygon, rings of ≥ 3 distinct finite
    /// points inside lon/lat bounds.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |m: String| Err(CoreError::BadRequest(format!("zone {:?}: {m}", self.id)));
        if self.id.trim().is_empty() {
            return Err(CoreError::BadRequest("a zone needs a name".into()));
        }
        if self.polygons.is_empty() {
            return bad("no polygon".into());
        }
        for p in &self.polygons {
            if p.rings.is_empty() {
                return bad("a polygon without an exterior ring".into());
            }
            for r in &p.rings {
                if ring_len(r) < 3 {
                    return bad("a ring needs at least 3 points".into());
                }
                for pt in r {
                    if let Err(e) = Location::new(pt[1], pt[0]) {
                        return bad(format!("point {pt:?}: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// True when the point lies in one of its polygons (see the module docs
    /// for points on edges).
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        self.polygons.iter().any(|p| p.contains(lon, lat))
    }

    fn bbox(&self) -> AABB<[f64; 2]> {
        let pts = self
            .polygons
            .iter()
            .flat_map(|p| p.rings.first().into_iter().flatten());
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for p in pts {
            lo = [lo[0].min(p[0]), lo[1].min(p[1])];
            hi = [hi[0].max(p[0]), hi[1].max(p[1])];
        }
        AABB::from_corners(lo, hi)
    }
}

/// Points of a ring without the closing repeat of the first.
fn ring_len(r: &[[f64; 2]]) -> usize {
    match (r.first(), r.last()) {
        (Some(a), Some(b)) if r.len() > 1 && a == b => r.len() - 1,
        _ => r.len(),
    }
}

impl Polygon {
    /// Inside the exterior ring and in no hole (even-odd over all rings).
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        let mut inside = false;
        for r in &self.rings {
            if crosses_odd(r, lon, lat) {
                inside = !inside;
            }
        }
        inside
    }
}

/// The half-open crossing test: an odd number of ring edges cross the ray
/// going east from the point.
fn crosses_odd(ring: &[[f64; 2]], x: f64, y: f64) -> bool {
    let n = ring_len(ring);
    let mut odd = false;
    let mut j = n.wrapping_sub(1);
    for i in 0..n {
        let (a, b) = (ring[i], ring[j]);
        if (a[1] > y) != (b[1] > y) {
            let cross_x = a[0] + (y - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
            if x < cross_x {
                odd = !odd;
            }
        }
        j = i;
    }
    odd
}

/// Where a point lies: its district and beat (either may be none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The district's name.
    pub district: Option<String>,
    /// The beat's name.
    pub beat: Option<String>,
}

/// The zones of a region, indexed by bounding box.
#[derive(Debug, Default)]
pub struct ZoneMap {
    zones: Vec<Zone>,
    tree: RTree<GeomWithData<Rectangle<[f64; 2]>, u32>>,
}

impl ZoneMap {
    /// Indexes `zones` (checked with [`Zone::validate`]; a beat naming a
    /// district that is not among them is refused).
    pub fn new(zones: Vec<Zone>) -> Result<Self, CoreError> {
        for z in &zones {
            z.validate()?;
            if z.kind == ZoneKind::Beat
                && let Some(d) = &z.district
                && !zones.iter().any(|x| x.kind == ZoneKind::District && &x.id == d)
            {
                return Err(CoreError::BadRequest(format!(
                    "beat {:?} names district {d:?}, which is not a zone",
                    z.id
                )));
            }
        }
        let entries = zones
            .iter()
            .enumerate()
            .map(|(i, z)| GeomWithData::new(Rectangle::from_aabb(z.bbox()), i as u32))
            .collect();
        Ok(ZoneMap {
            tree: RTree::bulk_load(entries),
            zones,
        })
    }

    /// True when no zone is configured.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// The district and beat `at` lies in. A beat's own `district` fills the
    /// district when no district polygon holds the point.
    pub fn locate(&self, at: Location) -> Placement {
        let p = [at.lon, at.lat];
        let mut hits: Vec<u32> = self
            .tree
            .locate_all_at_point(p)
            .map(|e| e.data)
            .filter(|&i| self.zones[i as usize].contains(at.lon, at.lat))
            .collect();
        // Config order decides overlaps, not the tree's.
        hits.sort_unstable();
        let first = |k: ZoneKind| {
            hits.iter()
                .map(|&i| &self.zones[i as usize])
                .find(|z| z.kind == k)
        };
        let beat = first(ZoneKind::Beat);
        let district = first(ZoneKind::District)
            .map(|z| z.id.clone())
            .or_else(|| beat.and_then(|b| b.district.clone()));
        Placement {
            district,
            beat: beat.map(|b| b.id.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<[f64; 2]> {
        vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    }

    fn zone(id: &str, kind: ZoneKind, polygons: Vec<Vec<Vec<[f64; 2]>>>) -> Zone {
        Zone {
            id: id.into(),
            kind,
            district: None,
            polygons: polygons.into_iter().map(|rings| Polygon { rings }).collect(),
        }
    }

    fn at(lon: f64, lat: f64) -> Location {
        Location { lat, lon }
    }

    #[test]
    fn a_point_on_a_shared_edge_is_in_exactly_one_zone() {
        // West | East share the edge lon = 1; North / South share lat = 1 in the east.
        let map = ZoneMap::new(vec![
            zone("West", ZoneKind::District, vec![vec![square(0.0, 0.0, 1.0, 2.0)]]),
            zone(
                "EastS",
                ZoneKind::District,
                vec![vec![square(1.0, 0.0, 2.0, 1.0)]],
            ),
            zone(
                "EastN",
                ZoneKind::District,
                vec![vec![square(1.0, 1.0, 2.0, 2.0)]],
            ),
        ])
        .unwrap();
        // On the vertical shared edge, on the horizontal one, and on the corner
        // where all three meet; plus a sloped shared edge below.
        for (lon, lat) in [(1.0, 0.5), (1.0, 1.5), (1.5, 1.0), (1.0, 1.0)] {
            let owners: Vec<&str> = map
                .zones
                .iter()
                .filter(|z| z.contains(lon, lat))
                .map(|z| z.id.as_str())
                .collect();
            assert_eq!(owners.len(), 1, "({lon}, {lat}) is in {owners:?}");
            assert_eq!(map.locate(at(lon, lat)).district.as_deref(), Some(owners[0]));
        }
        let tri_a = vec![[0.0, 0.0], [1.0, 0.0], [0.3, 1.0]];
        let tri_b = vec![[1.0, 0.0], [1.3, 1.0], [0.3, 1.0]];
        let a = zone("A", ZoneKind::Beat, vec![vec![tri_a]]);
        let b = zone("B", ZoneKind::Beat, vec![vec![tri_b]]);
        for t in [0.1, 0.25, 0.5, 0.77, 0.9] {
            // Points on the shared edge from (1, 0) to (0.3, 1).
            let (lon, lat) = (1.0 - 0.7 * t, t);
            assert!(a.contains(lon, lat) != b.contains(lon, lat), "t = {t}");
        }
    }

    #[test]
    fn holes_are_outside_and_islands_in_holes_are_inside() {
        let donut = zone(
            "Ring",
            ZoneKind::Beat,
            vec![
                vec![square(0.0, 0.0, 10.0, 10.0), square(3.0, 3.0, 7.0, 7.0)],
                // An island inside the hole: a second polygon.
                vec![square(4.0, 4.0, 6.0, 6.0)],
            ],
        );
        assert!(donut.contains(1.0, 1.0));
        assert!(!donut.contains(3.5, 5.0), "in the hole");
        assert!(donut.contains(5.0, 5.0), "on the island");
        assert!(!donut.contains(11.0, 5.0));
        let map = ZoneMap::new(vec![donut]).unwrap();
        assert_eq!(map.locate(at(3.5, 5.0)), Placement::default());
        assert_eq!(map.locate(at(5.0, 5.0)).beat.as_deref(), Some("Ring"));
    }

    #[test]
    fn a_multipolygon_holds_all_its_parts_and_nothing_between() {
        let z = zone(
            "Islands",
            ZoneKind::District,
            vec![vec![square(0.0, 0.0, 1.0, 1.0)], vec![square(5.0, 5.0, 6.0, 6.0)]],
        );
        let map = ZoneMap::new(vec![z]).unwrap();
        assert_eq!(map.locate(at(0.5, 0.5)).district.as_deref(), Some("Islands"));
        assert_eq!(map.locate(at(5.5, 5.5)).district.as_deref(), Some("Islands"));
        // Inside the bounding box of the whole, outside both parts.
        assert_eq!(map.locate(at(3.0, 3.0)).district, None);
    }

    #[test]
    fn a_beat_names_its_district_and_bad_shapes_are_refused() {
        let mut beat = zone("B-1", ZoneKind::Beat, vec![vec![square(0.0, 0.0, 1.0, 1.0)]]);
        beat.district = Some("Central".into());
        let central = zone(
            "Central",
            ZoneKind::District,
            vec![vec![square(-1.0, -1.0, 0.5, 2.0)]],
        );
        let map = ZoneMap::new(vec![beat.clone(), central.clone()]).unwrap();
        let p = map.locate(at(0.25, 0.5));
        assert_eq!(
            (p.district.as_deref(), p.beat.as_deref()),
            (Some("Central"), Some("B-1"))
        );
        // Outside the district polygon but inside the beat: the beat's district.
        assert_eq!(map.locate(at(0.75, 0.5)).district.as_deref(), Some("Central"));
        assert!(ZoneMap::new(vec![beat.clone()]).is_err(), "unknown district");
        let line = zone(
            "L",
            ZoneKind::District,
            vec![vec![vec![[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]],
        );
        assert!(ZoneMap::new(vec![line]).is_err());
        let far = zone("F", ZoneKind::District, vec![vec![square(0.0, 0.0, 1.0, 95.0)]]);
        assert!(ZoneMap::new(vec![far]).is_err());
    }
}
