//! The liveness probe of a long-lived NATS connection: a numbered message to an
//! inbox of its own, through the server and back, on a timer.
//!
//! The client's own keep-alive cannot see a connection that still receives but no
//! longer gets its messages to the server: every message received resets the
//! client's ping timer, so under a flood of requests it never pings. Such a
//! connection (seen after a takeover: the engine's answers stopped reaching its
//! server for seconds while the hubs' retries kept arriving) is found here, by a
//! probe that did not come back in time, and made to reconnect. Owns nothing but
//! the probe's subscription.

use std::time::Duration;

use async_nats::connection::State;
use futures_util::StreamExt;

/// How often a connection is probed and how long a probe may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Pause between probes.
    pub every: Duration,
    /// A probe not back within this makes the client reconnect.
    pub timeout: Duration,
}

/// Probes `client` for as long as the returned future is polled (run it in a task
/// of its own and abort or drop it with the connection's owner). `label` names the
/// connection in the logs; `on_stuck` is called for each probe that did not come
/// back in time, just before the client is told to reconnect. Probes are skipped
/// while the client is already reconnecting.
pub async fn probe_connection(
    client: async_nats::Client,
    label: &'static str,
    settings: ProbeSettings,
    mut on_stuck: impl FnMut() + Send,
) {
    let inbox = client.new_inbox();
    let mut replies = loop {
        match client.subscribe(inbox.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(connection = label, error = %e, "cannot subscribe the connection probe; trying again");
                tokio::time::sleep(settings.every).await;
            }
        }
    };
    let mut number = 0u64;
    loop {
        tokio::time::sleep(settings.every).await;
        if client.connection_state() != State::Connected {
            continue;
        }
        number += 1;
        let sent = tokio::time::Instant::now();
        let round_trip = tokio::time::timeout(settings.timeout, async {
            client
                .publish(inbox.clone(), number.to_string().into())
                .await
                .map_err(|e| e.to_string())?;
            // Earlier probes that came back late are passed over.
            while let Some(m) = replies.next().await {
                if m.payload.as_ref() == number.to_string().as_bytes() {
                    return Ok(());
                }
            }
            Err("the probe's subscription ended".to_owned())
        })
        .await;
        match round_trip {
            Ok(Ok(())) => {
                tracing::trace!(
                    connection = label,
                    rtt_us = sent.elapsed().as_micros() as u64,
                    "probe back"
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(connection = label, error = %e, "connection probe failed");
                if client.connection_state() == State::Disconnected {
                    continue;
                }
                return;
            }
            Err(_) if client.connection_state() != State::Connected => {
                // It broke on its own meanwhile: the client is reconnecting already.
            }
            Err(_) => {
                tracing::warn!(
                    connection = label,
                    timeout_ms = settings.timeout.as_millis() as u64,
                    "a probe did not come back through the NATS server in time: the connection is stuck; reconnecting"
                );
                on_stuck();
                match tokio::time::timeout(settings.timeout, client.force_reconnect()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(connection = label, error = %e, "cannot ask the client to reconnect")
                    }
                    Err(_) => tracing::error!(
                        connection = label,
                        "the client did not take the reconnect request in time: its connection task is stuck"
                    ),
                }
            }
        }
    }
}
