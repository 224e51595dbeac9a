//! Geometry on the sphere: haversine metres and the unit-sphere embedding used by
//! the spatial index. Chord length between unit vectors orders exactly like
//! great-circle distance, so Euclidean nearest-neighbour search on these points is
//! correct at any latitude, across the antimeridian and at the poles.
//!
//! Owns: pure math. Must never: depend on engine state.

use crate::model::Location;

/// Mean Earth radius in metres used by the protocol for every distance.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres between two locations (haversine).
pub fn haversine_m(a: Location, b: Location) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    // `min(1.0)` guards asin against rounding just above 1 for antipodal points.
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// The location as a point on the unit sphere (x towards 0°E on the equator, z north).
pub fn to_unit_vector(loc: Location) -> [f64; 3] {
    let (lat, lon) = (loc.lat.to_radians(), loc.lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

/// Squared chord length on the unit sphere that corresponds to `metres` along the
/// great circle (monotone, so it can bound an rstar query).
pub fn chord2_for_metres(metres: f64) -> f64 {
    let angle = (metres / EARTH_RADIUS_M).min(std::f64::consts::PI);
    let chord = 2.0 * (angle / 2.0).sin();
    chord * chord
}

/// Great-circle metres for a squared chord length on the unit sphere.
pub fn metres_for_chord2(chord2: f64) -> f64 {
    let chord = chord2.max(0.0).sqrt().min(2.0);
    2.0 * (chord / 2.0).asin() * EARTH_RADIUS_M
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_known_distance() {
        // One degree of latitude is about 111.195 km on this sphere.
        let d = haversine_m(Location { lat: 0.0, lon: 0.0 }, Location { lat: 1.0, lon: 0.0 });
        assert!((d - 111_195.08).abs() < 1.0, "{d}");
    }

    #[test]
    fn chord_round_trip() {
        for m in [1.0, 150.0, 20_000.0, 5_000_000.0] {
            let back = metres_for_chord2(chord2_for_metres(m));
            assert!((back - m).abs() < 1e-3 * m.max(1.0), "{m} -> {back}");
        }
    }

    #[test]
    fn antimeridian_is_close() {
        let a = Location {
            lat: 10.0,
            lon: 179.999,
        };
        let b = Location {
            lat: 10.0,
            lon: -179.999,
        };
        assert!(haversine_m(a, b) < 300.0);
        let (pa, pb) = (to_unit_vector(a), to_unit_vector(b));
        let c2: f64 = (0..3).map(|i| (pa[i] - pb[i]).powi(2)).sum();
        assert!((metres_for_chord2(c2) - haversine_m(a, b)).abs() < 0.01);
    }
}
