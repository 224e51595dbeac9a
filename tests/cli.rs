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
    std::fs::write(
        &file,
        "[auth]\njwt_secret = \"from-the-file-123-of-at-least-32-bytes\"\n",
    )
    .unwrap();
    let from_file = stdout_of(
        opcenter()
            .args(["token", "--role", "supervisor", "--config"])
            .arg(&file),
    );
    assert!(verify_token(b"from-the-file-123-of-at-least-32-bytes", &from_file).is_ok());
    let from_env = stdout_of(
        opcenter()
            .args(["token", "--role", "supervisor", "--config"])
            .arg(&file)
            .env(
                "OPCENTER_AUTH__JWT_SECRET",
                "from-the-env-456-of-at-least-32-bytes",
            ),
    );
    assert!(verify_token(b"from-the-env-456-of-at-least-32-bytes", &from_env).is_ok());
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

/// Runs `opcenter serve --config FILE` with `toml` (plus `env`) and returns its
/// stderr; panics if it started (it would print `listening on` and keep running).
fn serve_refuses(toml: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!("[storage]\ndata_dir = {:?}\n{toml}", data.display().to_string()),
    )
    .unwrap();
    let mut cmd = opcenter();
    cmd.args(["serve", "--config"]).arg(&file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that did start would run for ever: give it 10 s to refuse.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("serve started: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_refuses_the_dev_secret_off_loopback() {
    let err = serve_refuses("[server]\nlisten = \"0.0.0.0:0\"\n", &[]);
    assert!(err.contains("auth.jwt_secret"), "{err}");
    assert!(err.contains("loopback"), "{err}");
    // The same from the environment.
    let err = serve_refuses("", &[("OPCENTER_SERVER__LISTEN", "0.0.0.0:0")]);
    assert!(err.contains("auth.jwt_secret"), "{err}");
}

#[test]
fn serve_refuses_a_short_secret() {
    let err = serve_refuses("[auth]\njwt_secret = \"only-twenty-one-bytes\"\n", &[]);
    assert!(err.contains("auth.jwt_secret"), "{err}");
    assert!(err.contains("32 bytes"), "{err}");
}

#[test]
fn serve_refuses_unknown_keys_and_sections_by_name() {
    let err = serve_refuses("[hub]\nmax_conections = 10\n", &[]);
    assert!(err.contains("max_conections"), "{err}");
    let err = serve_refuses("[dispach]\nack_timeout_s = 5\n", &[]);
    assert!(err.contains("dispach"), "{err}");
    let err = serve_refuses("", &[("OPCENTER_HUB__MAX_CONECTIONS", "10")]);
    assert!(err.contains("max_conections"), "{err}");
}

#[test]
fn serve_refuses_unknown_keys_in_a_roster_entry_by_name() {
    let err = serve_refuses(
        "[[roster]]\nid = \"POST-1\"\nkind = \"post\"\ntablets = false\n",
        &[],
    );
    assert!(err.contains("tablets"), "{err}");
    let err = serve_refuses(
        "[[roster]]\nid = \"POST-1\"\nlocation = { lat = 51.2, lon = 51.3, altitude = 9.0 }\n",
        &[],
    );
    assert!(err.contains("altitude"), "{err}");
}
