//! End to end: the real `opcenter serve` on a free port, and `opcenter sim` against it
//! as a separate process, as an operator would run them. Checks the load tool's LOST
//! invariant: every acknowledged incident is assigned or pending at the end.
//!
//! Owns: the sim-against-server check. Must never: leave a server running (the
//! harness kills it on drop, also when an assertion panics) or use a fixed port.

use std::process::{Command, Stdio};

use crate::common::*;

#[test]
fn sim_loses_no_incident() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = BinServer::start(&dir.path().join("data"), "");
    let out = Command::new(env!("CARGO_BIN_EXE_opcenter"))
        .args(["sim", "--server", &server.host(), "--secret", SECRET])
        .args(["--tablets", "50", "--consoles", "3", "--supervisors", "1"])
        .args([
            "--incident-rate",
            "20",
            "--position-rate",
            "100",
            "--duration",
            "5",
            "--json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run opcenter sim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = opcenter_sim_report(&stdout);
    let inc = &report["incidents"];
    let n = |k: &str| {
        inc[k]
            .as_u64()
            .unwrap_or_else(|| panic!("incidents.{k} in {report}"))
    };
    assert_eq!(n("lost"), 0, "lost incidents: {report}");
    assert!(n("created") > 0, "nothing created: {report}");
    assert_eq!(n("assigned") + n("pending"), n("created"), "{report}");
    assert_eq!(report["connect_failures"], 0, "{report}");
    assert!(out.status.success(), "sim exited with {:?}", out.status);
}

/// The last JSON line of the sim's stdout.
fn opcenter_sim_report(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report in sim stdout: {stdout:?}"));
    serde_json::from_str(line).expect("report is JSON")
}

/// `opcenter sim --readers`: each read kind's round trips are timed in
/// `latency.read`, answered without errors, and the server's CPU per read is
/// reported (benches/reads.sh reads these fields).
#[test]
fn sim_readers_time_every_read_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Closed-loop readers send thousands of reads a second: lift the budget.
    let server = BinServer::start_with_env(
        &dir.path().join("data"),
        "",
        &[
            ("OPCENTER_HUB__SESSION_RATE_PER_S", "1000000000"),
            ("OPCENTER_HUB__SESSION_BURST", "1000000000"),
        ],
    );
    let pid = server.pid().to_string();
    for kind in ["ping", "ws-ping", "recommend", "resume"] {
        let out = Command::new(env!("CARGO_BIN_EXE_opcenter"))
            .args(["sim", "--server", &server.host(), "--secret", SECRET])
            .args(["--tablets", "20", "--consoles", "0", "--supervisors", "0"])
            .args([
                "--producers",
                "0",
                "--incident-rate",
                "0",
                "--position-rate",
                "20",
            ])
            .args(["--readers", "2", "--read-kind", kind, "--pid", &pid])
            .args(["--duration", "2", "--no-verify", "--json"])
            .stderr(Stdio::inherit())
            .output()
            .expect("run opcenter sim");
        let report = opcenter_sim_report(&String::from_utf8_lossy(&out.stdout));
        assert!(out.status.success(), "{kind}: sim exited with {:?}", out.status);
        assert_eq!(report["reads"]["kind"], kind, "{report}");
        let count = report["reads"]["count"].as_u64().expect("reads.count");
        assert!(count > 0, "{kind}: no read answered: {report}");
        assert_eq!(report["latency"]["read"]["count"], count, "{report}");
        assert_eq!(report["reads"]["errors"], 0, "{kind}: {report}");
        assert!(
            report["server_process"]["cpu_us_per_read"]
                .as_f64()
                .is_some_and(|us| us > 0.0),
            "{kind}: {report}"
        );
    }
}
