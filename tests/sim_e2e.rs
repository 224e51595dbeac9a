//! End to end: the real `opcenter serve` on a free port, and `opcenter sim` against it
//! as a separate process, as an operator would run them. Checks the load tool's LOST
//! invariant: every acknowledged incident is assigned or pending at the end.
//!
//! Owns: process orchestration for this check. Must never: leave a server running
//! (a Drop guard kills it, also when an assertion panics) or use a fixed port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &str = "sim-e2e-secret";

/// Kills and reaps the child when dropped, so a failed assertion leaves no server.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `opcenter serve` on port 0 with a temp data dir; returns the guard, the
/// address it printed, and the temp dir (kept alive by the caller).
fn start_server() -> (Guard, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("opcenter.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\ndata_dir = {:?}\n\n[auth]\njwt_secret = \"{SECRET}\"\n",
            data.to_str().expect("utf-8 temp path")
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_opcenter"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn opcenter serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = Guard(child);
    // Read `listening on HOST:PORT` on a thread (so a silent server times out instead
    // of hanging the test), then keep draining stdout so the server never blocks on it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(addr) = line.trim().strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server printed `listening on HOST:PORT`");
    (guard, addr, dir)
}

#[test]
fn sim_loses_no_incident() {
    let (_server, addr, _dir) = start_server();
    let out = Command::new(env!("CARGO_BIN_EXE_opcenter"))
        .args(["sim", "--server", &addr, "--secret", SECRET])
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
