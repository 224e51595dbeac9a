//! Writes the demo city's gazetteer (addresses along its streets) to stdout:
//! `cargo run -p opcenter-sim --example addresses > config/uralsk-addresses.csv`.
//!
//! Must never: differ from `opcenter_sim::addresses::csv_text`; it only prints it.

fn main() {
    print!(
        "{}",
        opcenter_sim::addresses::csv_text(&opcenter_sim::geo::City::URALSK)
    );
}
