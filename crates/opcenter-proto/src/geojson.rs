//! Districts and beats from GeoJSON (`[[zones]]` files): each Feature of a
//! FeatureCollection (or a lone Feature) with a `Polygon` or `MultiPolygon`
//! geometry becomes one [`Zone`], named by a property. Coordinates stay in
//! GeoJSON order (`[lon, lat]`); the engine checks the shapes.
//!
//! Gazetteer files in GeoJSON: each `Point` Feature is one address (see
//! [`addresses_from_geojson`]).
//!
//! Owns: reading GeoJSON into zones and addresses. Must never: read files (the settings
//! loader hands the text in) or decide containment (opcenter-core's `zones`).

use serde_json::Value;

use opcenter_core::gazetteer::Address;
use opcenter_core::model::Location;
use opcenter_core::zones::{Polygon, Zone, ZoneKind};

/// How a `[[zones]]` file maps onto zones.
#[derive(Debug, Clone, Copy)]
pub struct ZoneFile<'a> {
    /// District or beat, for every feature of the file.
    pub kind: ZoneKind,
    /// The property holding a zone's name (e.g. `name`).
    pub name_property: &'a str,
    /// For beats: the property naming the district it belongs to.
    pub district_property: &'a str,
}

/// Parses `text` into zones; the error names the feature (by position) and
/// what is wrong with it.
pub fn zones_from_geojson(text: &str, how: ZoneFile<'_>) -> Result<Vec<Zone>, String> {
    each_feature(text, |f| feature(f, how))
}

/// Parses every Feature of a FeatureCollection (or a lone Feature) with `one`;
/// the error names the feature by position.
fn each_feature<T>(text: &str, one: impl Fn(&Value) -> Result<T, String>) -> Result<Vec<T>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let features: Vec<&Value> = match doc["type"].as_str() {
        Some("FeatureCollection") => doc["features"]
            .as_array()
            .ok_or("a FeatureCollection without `features`")?
            .iter()
            .collect(),
        Some("Feature") => vec![&doc],
        other => return Err(format!("expected a FeatureCollection or Feature, not {other:?}")),
    };
    features
        .into_iter()
        .enumerate()
        .map(|(i, f)| one(f).map_err(|e| format!("feature {i}: {e}")))
        .collect()
}

/// A gazetteer in GeoJSON: one `Point` Feature per address, with the
/// properties `street`, `house` and `building`? — or OpenStreetMap's
/// `addr:street`, `addr:housenumber` and `name`, so an Overpass export loads
/// as it is. A house number may be a JSON number.
pub fn addresses_from_geojson(text: &str) -> Result<Vec<Address>, String> {
    each_feature(text, |f| {
        let props = &f["properties"];
        let text = |keys: &[&str]| {
            keys.iter().find_map(|k| match &props[*k] {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let street = text(&["street", "addr:street"]).ok_or("no `street` (or `addr:street`) property")?;
        let g = &f["geometry"];
        if g["type"].as_str() != Some("Point") {
            return Err(format!("geometry must be a Point, not {}", g["type"]));
        }
        let c = &g["coordinates"];
        let (Some(lon), Some(lat)) = (c[0].as_f64(), c[1].as_f64()) else {
            return Err(format!("coordinates {c} are not [lon, lat]"));
        };
        Ok(Address {
            street,
            house: text(&["house", "addr:housenumber"]).unwrap_or_default(),
            building: text(&["building", "name"]).filter(|b| b != "yes"),
            location: Location::new(lat, lon).map_err(|e| e.to_string())?,
        })
    })
}

fn feature(f: &Value, how: ZoneFile<'_>) -> Result<Zone, String> {
    let props = &f["properties"];
    let text = |key: &str| match &props[key] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let id = text(how.name_property).ok_or_else(|| format!("no `{}` property", how.name_property))?;
    let district = match how.kind {
        ZoneKind::Beat => text(how.district_property),
        ZoneKind::District => None,
    };
    let g = &f["geometry"];
    let coords = &g["coordinates"];
    let polygons = match g["type"].as_str() {
        Some("Polygon") => vec![polygon(coords)?],
        Some("MultiPolygon") => coords
            .as_array()
            .ok_or("MultiPolygon coordinates must be an array")?
            .iter()
            .map(polygon)
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "zone {id:?}: geometry must be Polygon or MultiPolygon, not {other:?}"
            ));
        }
    };
    Ok(Zone {
        id,
        kind: how.kind,
        district,
        polygons,
    })
}

fn polygon(v: &Value) -> Result<Polygon, String> {
    let rings = v
        .as_array()
        .ok_or("polygon coordinates must be an array of rings")?
        .iter()
        .map(|ring| {
            ring.as_array()
                .ok_or("a ring must be an array of positions")?
                .iter()
                .map(|p| match (p[0].as_f64(), p[1].as_f64()) {
                    (Some(lon), Some(lat)) => Ok([lon, lat]),
                    _ => Err(format!("position {p} is not [lon, lat]")),
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Polygon { rings })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOW: ZoneFile<'static> = ZoneFile {
        kind: ZoneKind::Beat,
        name_property: "name",
        district_property: "district",
    };

    #[test]
    fn polygons_and_multipolygons_with_holes_are_read() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"name":"B-1","district":"Central"},
           "geometry":{"type":"Polygon","coordinates":[[[0,0],[4,0],[4,4],[0,4],[0,0]],[[1,1],[2,1],[2,2],[1,1]]]}},
          {"type":"Feature","properties":{"name":7},
           "geometry":{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],[[[5,5],[6,5],[6,6],[5,5]]]]}}]}"#;
        let z = zones_from_geojson(text, HOW).unwrap();
        assert_eq!(z[0].id, "B-1");
        assert_eq!(z[0].district.as_deref(), Some("Central"));
        assert_eq!(z[0].polygons[0].rings.len(), 2);
        assert!(!z[0].contains(1.5, 1.2), "in the hole");
        assert_eq!((z[1].id.as_str(), z[1].polygons.len()), ("7", 2));
    }

    #[test]
    fn addresses_load_from_points_in_either_property_naming() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"street":"ул. Абая","house":"12а","building":"ТЦ"},
           "geometry":{"type":"Point","coordinates":[51.37,51.2]}},
          {"type":"Feature","properties":{"addr:street":"Dostyk avenue","addr:housenumber":9,"building":"yes"},
           "geometry":{"type":"Point","coordinates":[51.38,51.21]}}]}"#;
        let a = addresses_from_geojson(text).unwrap();
        assert_eq!((a[0].street.as_str(), a[0].house.as_str()), ("ул. Абая", "12а"));
        assert_eq!(a[0].building.as_deref(), Some("ТЦ"));
        assert_eq!((a[0].location.lat, a[0].location.lon), (51.2, 51.37));
        assert_eq!((a[1].house.as_str(), a[1].building.as_deref()), ("9", None));
        for (text, says) in [
            (
                r#"{"type":"Feature","properties":{},"geometry":null}"#,
                "`street`",
            ),
            (
                r#"{"type":"Feature","properties":{"street":"x"},"geometry":{"type":"Polygon","coordinates":[]}}"#,
                "Point",
            ),
            (
                r#"{"type":"Feature","properties":{"street":"x"},"geometry":{"type":"Point","coordinates":[0,95]}}"#,
                "lat",
            ),
        ] {
            let e = addresses_from_geojson(text).unwrap_err();
            assert!(e.contains(says) && e.starts_with("feature 0"), "{text}: {e}");
        }
    }

    #[test]
    fn what_is_wrong_is_named() {
        for (text, says) in [
            ("[]", "FeatureCollection"),
            (r#"{"type":"Feature","properties":{},"geometry":null}"#, "`name`"),
            (
                r#"{"type":"Feature","properties":{"name":"x"},"geometry":{"type":"Point","coordinates":[0,0]}}"#,
                "Polygon or MultiPolygon",
            ),
            (
                r#"{"type":"Feature","properties":{"name":"x"},"geometry":{"type":"Polygon","coordinates":[[[0,"a"]]]}}"#,
                "[lon, lat]",
            ),
        ] {
            let e = zones_from_geojson(text, HOW).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
