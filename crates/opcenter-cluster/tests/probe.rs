//! The connection probe against a real nats-server behind a relay that can stop
//! passing one connection's bytes to the server (the stall seen after takeovers:
//! the client keeps receiving while nothing it writes reaches the server).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use opcenter_cluster::testing::{NatsCluster, Relay, runtime};
use opcenter_cluster::{Connect, ProbeSettings, connect, keep_connection};
use tokio::sync::watch;

/// Probes often, with a timeout a busy CI machine does not reach on a working
/// connection (the tests count every stuck probe).
const SETTINGS: ProbeSettings = ProbeSettings {
    every: Duration::from_millis(100),
    timeout: Duration::from_secs(1),
};

/// The next message on `sub` within `wait`, as text.
async fn next_text(sub: &mut async_nats::Subscriber, wait: Duration) -> Option<String> {
    let m = tokio::time::timeout(wait, sub.next()).await.ok()??;
    Some(String::from_utf8_lossy(&m.payload).into_owned())
}

/// Publishes "after" on the connection in `link` until `seen` gets it (10 s at most).
async fn reaches_the_server(
    link: &watch::Receiver<async_nats::Client>,
    seen: &mut async_nats::Subscriber,
) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let client = link.borrow().clone();
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                client.publish("probe.test", "after".into()),
            )
            .await;
            if next_text(seen, Duration::from_millis(200)).await.as_deref() == Some("after") {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// What is published on the connection in `link` reaches the server again
/// within 10 s, after at least one stuck probe and one new connection through
/// the relay.
async fn assert_recovered(
    link: &watch::Receiver<async_nats::Client>,
    seen: &mut async_nats::Subscriber,
    stuck: &AtomicU64,
    relay: &Relay,
) {
    assert!(reaches_the_server(link, seen).await, "not recovered within 10 s");
    assert!(stuck.load(Ordering::SeqCst) >= 1);
    assert_eq!(relay.accepted(), 2, "one new connection through the relay");
}

/// Opens a new connection through `relay`.
fn through(relay: &Relay) -> Connect {
    let url = relay.url();
    Box::new(move || {
        let url = url.clone();
        Box::pin(async move { connect(&url).await.map_err(|e| e.to_string()) })
    })
}

/// A client through `relay`, a watcher straight on the server subscribed to
/// `probe.test`, and the probe keeping the client (new ones through the relay); checks that a
/// working connection is left alone. Returns the watch, the watcher's
/// subscription and the stuck-probe count.
async fn probed(
    relay: &Relay,
    nats: &NatsCluster,
) -> (
    watch::Receiver<async_nats::Client>,
    async_nats::Subscriber,
    Arc<AtomicU64>,
) {
    let client = connect(&relay.url()).await.unwrap();
    let watcher = connect(&nats.urls()).await.unwrap();
    let mut seen = watcher.subscribe("probe.test").await.unwrap();
    watcher.flush().await.unwrap();
    let stuck = Arc::new(AtomicU64::new(0));
    let counted = stuck.clone();
    let (link, rx) = watch::channel(client.clone());
    tokio::spawn(keep_connection(
        link,
        "test",
        SETTINGS,
        through(relay),
        move || {
            counted.fetch_add(1, Ordering::SeqCst);
        },
    ));
    client.publish("probe.test", "before".into()).await.unwrap();
    assert_eq!(
        next_text(&mut seen, Duration::from_secs(5)).await.as_deref(),
        Some("before")
    );
    // A connection that works is left alone (several probes' time).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        stuck.load(Ordering::SeqCst),
        0,
        "a working connection was counted stuck"
    );
    assert_eq!(relay.accepted(), 1);
    std::mem::forget(watcher); // keeps `seen` subscribed
    (rx, seen, stuck)
}

#[test]
fn a_connection_whose_messages_stop_reaching_the_server_is_replaced() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    runtime().block_on(async {
        let relay = Relay::start(nats.nodes()[0].port).unwrap();
        let (link, mut seen, stuck) = probed(&relay, &nats).await;
        let client = link.borrow().clone();

        relay.freeze(0);
        client.publish("probe.test", "frozen".into()).await.unwrap();
        assert_eq!(
            next_text(&mut seen, Duration::from_millis(300)).await,
            None,
            "the relay passed a frozen byte on"
        );

        // The probe finds the stuck connection and replaces it: what is published
        // reaches the server again (the client's own keep-alive would take minutes).
        assert_recovered(&link, &mut seen, &stuck, &relay).await;
    });
}

#[test]
fn a_client_whose_writes_wait_on_the_socket_is_replaced_by_a_new_connection() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    runtime().block_on(async {
        let relay = Relay::start(nats.nodes()[0].port).unwrap();
        let (link, mut seen, stuck) = probed(&relay, &nats).await;
        let old = link.borrow().clone();

        // Frozen, and flooded: the socket's send queue and then the client's
        // command queue fill, so the client cannot even take a reconnect request.
        relay.freeze(0);
        let (flood, sent) = (old.clone(), Arc::new(AtomicU64::new(0)));
        let counted = sent.clone();
        tokio::spawn(async move {
            let payload = bytes::Bytes::from(vec![b'x'; 60_000]);
            while flood.publish("probe.flood", payload.clone()).await.is_ok() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Until the flood's publishes wait (the queue is full).
        let mut last = u64::MAX;
        while sent.load(Ordering::SeqCst) != last {
            last = sent.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            tokio::time::timeout(Duration::from_secs(1), old.force_reconnect())
                .await
                .is_err(),
            "the flood did not fill the client's queue: this test needs it stuck"
        );

        // The probe opens a new connection through the relay (not frozen) and
        // hands it over: what is published on it reaches the server.
        assert_recovered(&link, &mut seen, &stuck, &relay).await;
    });
}
