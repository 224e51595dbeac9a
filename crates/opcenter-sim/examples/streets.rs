//! Writes the demo city's streets layer to stdout:
//! `cargo run -p opcenter-sim --example streets > config/uralsk-streets.geojson`.
//!
//! Must never: differ from `opcenter_sim::streets::geojson_text`; it only prints it.

fn main() {
    print!(
        "{}",
        opcenter_sim::streets::geojson_text(&opcenter_sim::geo::City::URALSK)
    );
}
