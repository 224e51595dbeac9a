//! Districts and beats from GeoJSON (`[[zones]]` files): each Feature of a
//! FeatureCollection (or a lone Feature) with a `Polygon` or `MultiPolygon`
//! geometry becomes one [`Zone`], named by a property. Coordinates stay in
//! GeoJSON order (`[lon, lat]`); the engine checks the shapes.
//!
//! Owns: reading GeoJSON into zones. Must never: read files (the settings
//! loader hands the text in) or decide containment (opcenter-core's `zones`).

use serde_json::Value;

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
        .map(|(i, f)| feature(f, how).map_err(|e| format!("feature {i}: {e}")))
        .collect()
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
