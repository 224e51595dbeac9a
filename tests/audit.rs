//! The audit hash chain end to end, with the real binary: a day's journal verifies
//! across a restart, `audit head` prints the newest checkpoint, one byte of a record
//! rewritten with a valid CRC is named by `audit verify`, `serve` refuses to start
//! over it, and `serve --accept-broken-chain` starts. Owns no product code.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opcenter_proto::auth::Role;

use crate::common::{Client, Encoding, create, http, token};
use opcenter_sim::harness::{self, ServerProcess};

fn opcenter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opcenter"))
}

/// A config over `data` with a checkpoint every 3 records.
fn config(data: &Path) -> PathBuf {
    let text = harness::config_toml(data, crate::common::SECRET, "")
        .replace("[storage]\n", "[storage]\naudit_checkpoint_records = 3\n");
    let path = data.with_extension("toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `opcenter audit <what> --data-dir data`: (success, stdout).
fn audit(what: &str, data: &Path) -> (bool, String) {
    let out = opcenter()
        .args(["audit", what, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{stdout}{stderr}"))
}

async fn create_incidents(server: &ServerProcess, n: usize) {
    let (mut d, _) = Client::login(
        &server.addr.to_string(),
        Encoding::Json,
        &token(Role::Dispatcher, "d1"),
    )
    .await;
    for i in 0..n {
        let ok = d.request(create(51.2 + i as f64 * 0.01, 51.3)).await;
        assert_eq!(ok["type"], "ok", "{ok}");
    }
}

/// The frame after the segment header of the newest segment: (offset, payload len).
fn first_frame(seg: &[u8]) -> (usize, usize) {
    let off = 48;
    let word = u32::from_le_bytes(seg[off..off + 4].try_into().unwrap());
    (off, (word & ((1 << 30) - 1)) as usize)
}

#[tokio::test]
async fn a_rewritten_record_is_named_and_the_server_refuses_it_unless_told() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = config(&data);
    let bin = Path::new(env!("CARGO_BIN_EXE_opcenter"));

    let mut server = ServerProcess::start(bin, &cfg).unwrap();
    create_incidents(&server, 4).await;
    assert!(server.terminate().unwrap().success());
    // The chain continues across a restart.
    let mut server = ServerProcess::start(bin, &cfg).unwrap();
    create_incidents(&server, 3).await;
    assert!(server.terminate().unwrap().success());

    let (ok, out) = audit("verify", &data);
    assert!(ok, "{out}");
    assert!(out.contains("OK: every link holds"), "{out}");
    let (ok, head) = audit("head", &data);
    assert!(ok, "{head}");
    let seq: u64 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(seq >= 3, "{head}");
    assert!(head.contains(" hash ") && head.contains(" unix_ms "), "{head}");

    // One byte of the first record flipped, its CRC fixed up: only the chain sees it.
    let seg = data.join("journal-00000000000000000001.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let (off, len) = first_frame(&bytes);
    bytes[off + 48 + len / 2] ^= 0x01;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[off..off + 4]);
    crc.update(&bytes[off + 8..off + 48 + len]);
    bytes[off + 4..off + 8].copy_from_slice(&crc.finalize().to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();

    let (ok, out) = audit("verify", &data);
    assert!(!ok, "verify must fail: {out}");
    let named = format!(
        "first broken record: seq 1 in segment {} at byte {off}",
        seg.display()
    );
    assert!(out.contains(&named), "{out}");

    // `serve` refuses, with the reason on stderr.
    let mut child = opcenter()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve kept running over a broken chain");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("audit chain broken at seq 1"), "{stderr}");
    assert!(stderr.contains("--accept-broken-chain"), "{stderr}");

    // ...and starts when told to, logging the break loudly.
    let mut child = opcenter()
        .args(["serve", "--accept-broken-chain", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().parse().unwrap();
    let (status, _) = http(addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("AUDIT CHAIN BROKEN"), "{stderr}");
}
