//! The root package's integration tests, linked as one binary (`autotests = false`
//! in Cargo.toml, one `[[test]]`): CI links and starts one test executable instead
//! of one per file. Each module below is one former test file; `common` is what
//! they share on top of `opcenter_sim::harness`.
//!
//! Run one group with `cargo test --test tests durability::`.

mod common;

mod audit;
mod audit_stream;
mod auth;
mod bad_input;
mod bounds;
mod citizen;
mod cli;
mod cluster;
mod cluster_desk;
mod cluster_roles;
mod durability;
mod eido;
mod failover;
mod geocode;
mod http;
mod hub_e2e;
mod journal_failure;
mod limits;
mod liveness;
mod reads;
mod records;
mod report;
mod sim_e2e;
mod week;
mod week_driver;
mod zones;

/// `autotests = false` means a new file in `tests/` is not built unless it has a
/// `mod` line above: fail loudly instead of silently skipping it.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let this = std::fs::read_to_string(dir.join("tests.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let is_module = path.extension().is_some_and(|e| e == "rs") || path.join("mod.rs").is_file();
        if is_module && stem != "tests" && !this.contains(&format!("mod {stem};")) {
            missing.push(stem.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "tests/ files without a `mod` line in tests/tests.rs: {missing:?}"
    );
}
