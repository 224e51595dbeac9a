//! The liveness probe of a long-lived NATS connection: a numbered message to an
//! inbox of its own, through the server and back, on a timer; and what is done
//! when one does not come back.
//!
//! The client's own keep-alive cannot see a connection that still receives but no
//! longer gets its messages to the server: every message received resets the
//! client's ping timer, so under a flood of requests it never pings. Such a
//! connection was seen after takeovers: the engine's answers stopped reaching its
//! server for seconds (4 MB waiting in the socket's send queue, the server's
//! receive queue empty) while the hubs' retries kept arriving. Its client cannot
//! take a reconnect request then (`force_reconnect`): the request waits in the
//! client's command queue behind the publishes that wait on the socket. So the
//! holders get a new connection instead, through a watch, and move their
//! subscriptions and publishes to it; the old client ends when its last holder
//! drops it. Owns only the probe's subscription.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::connection::State;
use futures_util::StreamExt;
use tokio::sync::watch;

/// How often a connection is probed and how long a probe may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Pause between probes.
    pub every: Duration,
    /// A probe not back within this counts the connection as stuck.
    pub timeout: Duration,
}

/// Opens the new connection that replaces a stuck one.
pub type Connect =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<async_nats::Client, String>> + Send>> + Send>;

/// How one probe went.
enum Probe {
    Back,
    Late,
    Failed(String),
}

/// Sends probe `number` to `inbox` and waits up to `timeout` for it on `replies`
/// (earlier probes that came back late are passed over).
async fn probe_once(
    client: &async_nats::Client,
    inbox: &str,
    replies: &mut async_nats::Subscriber,
    number: u64,
    timeout: Duration,
) -> Probe {
    let text = number.to_string();
    let round_trip = tokio::time::timeout(timeout, async {
        client
            .publish(inbox.to_owned(), text.clone().into())
            .await
            .map_err(|e| e.to_string())?;
        while let Some(m) = replies.next().await {
            if m.payload.as_ref() == text.as_bytes() {
                return Ok(());
            }
        }
        Err("the probe's subscription ended".to_owned())
    });
    match round_trip.await {
        Ok(Ok(())) => Probe::Back,
        Ok(Err(e)) => Probe::Failed(e),
        Err(_) => Probe::Late,
    }
}

/// Probes the connection in `current` for as long as the returned future is
/// polled (run it in a task of its own, and end it with the connection's owner).
/// `label` names the connection in the logs; `on_stuck` is called for each probe
/// that did not come back in time, before `connect` opens the connection that
/// replaces it in `current` (if that fails, the old one is probed on). Probes are
/// skipped while the client is reconnecting on its own.
pub async fn keep_connection(
    current: watch::Sender<async_nats::Client>,
    label: &'static str,
    settings: ProbeSettings,
    mut connect: Connect,
    mut on_stuck: impl FnMut() + Send,
) {
    loop {
        let client = current.borrow().clone();
        let inbox = client.new_inbox();
        let mut replies = match client.subscribe(inbox.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(connection = label, error = %e, "cannot subscribe the connection probe; trying again");
                tokio::time::sleep(settings.every).await;
                continue;
            }
        };
        let mut number = 0u64;
        // Probes this client until it is replaced.
        loop {
            tokio::time::sleep(settings.every).await;
            if client.connection_state() != State::Connected {
                continue;
            }
            number += 1;
            let sent = tokio::time::Instant::now();
            match probe_once(&client, &inbox, &mut replies, number, settings.timeout).await {
                Probe::Back => {
                    tracing::trace!(
                        connection = label,
                        rtt_us = sent.elapsed().as_micros() as u64,
                        "probe back"
                    );
                    continue;
                }
                Probe::Failed(e) => {
                    tracing::warn!(connection = label, error = %e, "connection probe failed");
                    break; // subscribe again
                }
                // It broke on its own meanwhile: the client is reconnecting already.
                Probe::Late if client.connection_state() != State::Connected => continue,
                Probe::Late => {}
            }
            tracing::warn!(
                connection = label,
                timeout_ms = settings.timeout.as_millis() as u64,
                "a probe did not come back through the NATS server in time: the connection is stuck"
            );
            on_stuck();
            match connect().await {
                Ok(new) => {
                    current.send_replace(new);
                    tracing::info!(connection = label, "moved to a new connection");
                    break;
                }
                Err(e) => {
                    tracing::warn!(connection = label, error = %e, "cannot open a new connection; probing on")
                }
            }
        }
    }
}
