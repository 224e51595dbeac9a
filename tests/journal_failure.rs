//! The journal failing while the server runs (disk full, I/O error): the server
//! stops acknowledging (`internal`, `/healthz` 503), and what it shows clients
//! afterwards is only what the journal holds — never a change it could not save.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use opcenter_proto::auth::Role;
use opcenter_store::{Journal, MemJournal, Record, StoreError};
use serde_json::json;

/// A journal that fails every append once `fail` is set, like a full disk.
struct FailingJournal {
    inner: MemJournal,
    fail: Arc<AtomicBool>,
}

impl Journal for FailingJournal {
    fn epoch(&self) -> &str {
        self.inner.epoch()
    }
    fn first_seq(&self) -> u64 {
        self.inner.first_seq()
    }
    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }
    fn append_batch(&mut self, payloads: &[&[u8]]) -> Result<RangeInclusive<u64>, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        self.inner.append_batch(payloads)
    }
    fn read_from(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, StoreError> {
        self.inner.read_from(after_seq, max)
    }
    fn write_snapshot(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.write_snapshot(seq, bytes)
    }
    fn latest_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.latest_snapshot()
    }
    fn compact(&mut self, keep_events: u64) -> Result<u64, StoreError> {
        self.inner.compact(keep_events)
    }
}

#[tokio::test]
async fn a_journal_failure_stops_acknowledging_and_shows_only_what_was_saved() {
    let dir = tempfile::tempdir().unwrap();
    let settings = opcenter_hub::Settings::from_toml(&config_toml(dir.path(), "")).unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let journal = FailingJournal {
        inner: MemJournal::new(),
        fail: fail.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = opcenter_hub::Server::start_with_journal(listener, settings, Box::new(journal))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stop_rx.await;
    }));
    let host = addr.to_string();

    let (mut d, _) = Client::login(&host, Encoding::Json, &token(Role::Dispatcher, "d1")).await;
    let saved = d.request(create(51.23, 51.37)).await;
    assert_eq!(saved["type"], "ok", "{saved}");
    assert_eq!(http(addr, "GET", "/healthz", None, None).await.0, 200);

    fail.store(true, Ordering::SeqCst);
    let refused = d.request(create(51.24, 51.38)).await;
    assert_eq!(refused["code"], "internal", "{refused}");
    assert_eq!(http(addr, "GET", "/healthz", None, None).await.0, 503);
    // Even with the disk back, this process keeps refusing: the journal's tail is unknown.
    fail.store(false, Ordering::SeqCst);
    assert_eq!(d.request(create(51.25, 51.39)).await["code"], "internal");
    let (status, body) = http(
        addr,
        "POST",
        "/v1/reports",
        Some(&token(Role::Intake, "app")),
        Some(&json!({"key":"k","category":"theft","location":{"lat":51.2,"lon":51.3}}).to_string()),
    )
    .await;
    assert_eq!(status, 500, "{body}");

    // What clients see is what was saved: the first incident only.
    let (mut c, snap) = console(&host, Encoding::Msgpack).await;
    let open: Vec<&str> = snap["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(open, vec![saved["incident"]["id"].as_str().unwrap()]);
    let id = saved["incident"]["id"].as_str().unwrap();
    assert_eq!(incident_over_http(addr, id, Role::Dispatcher, "d").await.0, 200);
    assert_eq!(c.request(json!({"type":"ping"})).await["type"], "ok");

    let _ = stop_tx.send(());
    serving.await.unwrap().unwrap();
}
