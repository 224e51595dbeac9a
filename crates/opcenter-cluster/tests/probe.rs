//! The connection probe against a real nats-server behind a relay that can stop
//! passing one connection's bytes to the server (the stall seen after takeovers:
//! the client keeps receiving while nothing it writes reaches the server).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use opcenter_cluster::testing::{NatsCluster, Relay, runtime};
use opcenter_cluster::{ProbeSettings, connect, probe_connection};

/// The next message on `sub` within `wait`, as text.
async fn next_text(sub: &mut async_nats::Subscriber, wait: Duration) -> Option<String> {
    let m = tokio::time::timeout(wait, sub.next()).await.ok()??;
    Some(String::from_utf8_lossy(&m.payload).into_owned())
}

#[test]
fn a_connection_whose_messages_stop_reaching_the_server_is_reconnected() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    runtime().block_on(async {
        let relay = Relay::start(nats.nodes()[0].port).unwrap();
        let client = connect(&relay.url()).await.unwrap();
        let watcher = connect(&nats.urls()).await.unwrap();
        let mut seen = watcher.subscribe("probe.test").await.unwrap();
        watcher.flush().await.unwrap();
        let stuck = Arc::new(AtomicU64::new(0));
        let counted = stuck.clone();
        let settings = ProbeSettings {
            every: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
        };
        tokio::spawn(probe_connection(client.clone(), "test", settings, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));

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
            "a working connection was reconnected"
        );
        assert_eq!(relay.accepted(), 1);

        relay.freeze(0);
        client.publish("probe.test", "frozen".into()).await.unwrap();
        assert_eq!(
            next_text(&mut seen, Duration::from_millis(300)).await,
            None,
            "the relay passed a frozen byte on"
        );

        // The probe finds the stuck connection and the client reconnects: what it
        // publishes reaches the server again (the client's own keep-alive would take minutes).
        let back = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let _ = client.publish("probe.test", "after".into()).await;
                if let Some(text) = next_text(&mut seen, Duration::from_millis(200)).await {
                    return text;
                }
            }
        })
        .await
        .expect("the stuck connection was not reconnected within 10 s");
        assert_eq!(back, "after");
        assert!(stuck.load(Ordering::SeqCst) >= 1);
        assert_eq!(relay.accepted(), 2, "one reconnection through the relay");
    });
}
