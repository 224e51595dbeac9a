//! The `opcenter` command line: tokens signed with the configured secret (file
//! and environment), and clear refusals of bad configuration or arguments.

use std::process::Command;

use opcenter_proto::auth::{DEV_SECRET, Role, verify_token};

fn opcenter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opcenter"))
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn token_uses_the_embedded_dev_secret_by_default() {
    let token = stdout_of(opcenter().args(["token", "--role", "dispatcher", "--sub", "alice"]));
    let claims = verify_token(DEV_SECRET.as_bytes(), &token).unwrap();
    assert_eq!((claims.sub.as_str(), claims.role), ("alice", Role::Dispatcher));
}

#[test]
fn token_for_a_unit_carries_its_claims() {
    let token = stdout_of(opcenter().args([
        "token",
        "--role",
        "unit",
        "--unit",
        "P-101",
        "--callsign",
        "Alpha",
        "--caps",
        "k9,medic",
    ]));
    let claims = verify_token(DEV_SECRET.as_bytes(), &token).unwrap();
    assert_eq!(claims.unit.as_deref(), Some("P-101"));
    assert_eq!(claims.sub, "P-101");
    assert_eq!(claims.callsign.as_deref(), Some("Alpha"));
    assert_eq!(claims.caps, Some(vec!["k9".to_string(), "medic".to_string()]));
}

#[test]
fn environment_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[auth]\njwt_secret = \"from-the-file-123\"\n").unwrap();
    let from_file = stdout_of(
        opcenter()
            .args(["token", "--role", "supervisor", "--config"])
            .arg(&file),
    );
    assert!(verify_token(b"from-the-file-123", &from_file).is_ok());
    let from_env = stdout_of(
        opcenter()
            .args(["token", "--role", "supervisor", "--config"])
            .arg(&file)
            .env("OPCENTER_AUTH__JWT_SECRET", "from-the-env-456"),
    );
    assert!(verify_token(b"from-the-env-456", &from_env).is_ok());
}

#[test]
fn bad_arguments_and_config_are_refused_clearly() {
    let out = opcenter().args(["token", "--role", "unit"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--unit"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[hub]\nmax_frame_bytes = 10\n").unwrap();
    let out = opcenter()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub.max_frame_bytes"), "{err}");
}
