//! Failover of an engine node (roles `engine` and `both`): waiting as a standby
//! for the region's lease, taking the region over (the takeover message that
//! fences the old writer), keeping the lease while active, and announcing a new
//! active engine to the hubs. Owns the standby's `/healthz` and the lease's
//! metrics; must never let this process append after it knows the lease is lost.
//!
//! Order of a takeover: take the lease (create-if-absent), open the journal (read
//! the stream's end), append the takeover message expecting exactly that end (if
//! someone appended since, re-read the end and try again while the lease is
//! held), then recover state (snapshot + replay, in `Server::start`), then serve.
//! Replaying after the takeover message means nothing can be appended under the
//! replay: the old engine is fenced from the takeover message on.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use opcenter_cluster::{ClusterError, JetStreamJournal, Lease, RegionNames};

use crate::standby::Standby;
use crate::{ClusterSettings, HubError, Settings, metric};

/// How often a fenced takeover is retried (re-reading the stream's end) before
/// this node steps down: the old engine's last in-flight batches land meanwhile.
const TAKEOVER_ATTEMPTS: u32 = 20;

/// Subject on which a new active engine announces itself (core NATS): hubs
/// re-announce their connected tablets so the engine learns who is online.
pub(crate) fn active_subject(region: &str) -> String {
    format!("engine.{region}.active")
}

fn cluster_error(cluster: &ClusterSettings) -> impl Fn(ClusterError) -> HubError + '_ {
    |source| HubError::Cluster {
        region: cluster.region.clone(),
        source,
    }
}

/// A node that holds the region's lease: its listener, the lease and its bucket,
/// and the warm standby's following (`None`: the lease was free at start).
pub(crate) type Held = (
    TcpListener,
    Lease,
    async_nats::jetstream::kv::Store,
    RegionNames,
    Option<Standby>,
);

/// Waits (as a standby) until this node holds the region's lease. Meanwhile the
/// listener answers `/healthz` 200 `ok standby`, `/metrics`, and everything else
/// 503, and the standby keeps a warm copy of the state ([`crate::standby`]),
/// handed back for the takeover to finish.
///
/// `lease_client` is a connection for the lease alone (the bucket, its renewals):
/// the commands, replies and the standby's reads go over `client`, so a burst of
/// them (the backlog after a takeover) never delays a renewal behind it.
pub(crate) async fn wait_for_lease(
    listener: TcpListener,
    settings: &Settings,
    cluster: &ClusterSettings,
    lease_client: &async_nats::Client,
    client: &async_nats::Client,
) -> Result<Held, HubError> {
    let names = RegionNames::new(&cluster.region).map_err(cluster_error(cluster))?;
    let js = async_nats::jetstream::new(lease_client.clone());
    let bucket = retry_transient(cluster.publish_deadline, || {
        opcenter_cluster::lease_bucket(&js, &names, cluster.replicas, cluster.lease_ttl)
    })
    .await
    .map_err(cluster_error(cluster))?;
    if let Some(lease) = opcenter_cluster::Lease::try_take(&bucket, &names, &cluster.node, cluster.lease_ttl)
        .await
        .ok()
        .flatten()
    {
        return Ok((listener, lease, bucket, names, None));
    }
    let holder = opcenter_cluster::lease_holder(&bucket, &names)
        .await
        .ok()
        .flatten();
    tracing::info!(
        region = %cluster.region,
        node = %cluster.node,
        active = ?holder.as_ref().map(|h| h.node.as_str()),
        "standby: another engine holds the region's lease; waiting for it to lapse"
    );
    // Serve the standby's health on a second handle of the same socket: the
    // active server takes over the socket when this one stops.
    let std_listener = listener.into_std()?;
    let standby_listener = TcpListener::from_std(std_listener.try_clone()?)?;
    let listener = TcpListener::from_std(std_listener)?;
    let stop = CancellationToken::new();
    let token = settings.metrics_token.clone();
    let handle = crate::metrics_handle();
    let router = Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok standby\n") }))
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| async move {
                crate::http::metrics_text(token.as_deref(), &headers, &handle)
            }),
        )
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "standby engine: another engine of the region is active\n",
            )
        });
    let stopped = stop.clone();
    let standby = tokio::spawn(async move {
        axum::serve(standby_listener, router)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
    });
    let warm = Standby::start(settings, cluster, client);
    let taken = Lease::take(
        &bucket,
        &names,
        &cluster.node,
        cluster.lease_ttl,
        cluster.lease_poll,
    )
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), standby).await;
    let lease = taken.map_err(cluster_error(cluster))?;
    Ok((listener, lease, bucket, names, Some(warm)))
}

/// Appends the takeover message (see the module docs); returns the journal and the
/// message's stream sequence. Runs on a blocking thread (the journal blocks).
/// `reread`: read the stream's end first (a warm standby's journal was opened
/// long ago).
pub(crate) async fn take_over(
    mut journal: JetStreamJournal,
    cluster: &ClusterSettings,
    epoch: u64,
    reread: bool,
) -> Result<(JetStreamJournal, u64), HubError> {
    let marker = format!("{} {epoch}", cluster.node);
    let (journal, result) = tokio::task::spawn_blocking(move || {
        if reread && let Err(e) = journal.reopen() {
            return (journal, Err(e));
        }
        let mut last = None;
        for _ in 0..TAKEOVER_ATTEMPTS {
            match journal.append_takeover(&marker) {
                Ok(seq) => return (journal, Ok(seq)),
                Err(e) if e.is_fenced() => {
                    tracing::info!(error = %e, "takeover: the old engine appended meanwhile; reading the end again");
                    std::thread::sleep(Duration::from_millis(100));
                    if let Err(e) = journal.reopen() {
                        return (journal, Err(e));
                    }
                    last = Some(e);
                }
                Err(e) => return (journal, Err(e)),
            }
        }
        (journal, Err(last.unwrap_or(ClusterError::Poisoned)))
    })
    .await?;
    let seq = result.map_err(cluster_error(cluster))?;
    metrics::counter!(metric::TAKEOVERS).increment(1);
    tracing::info!(region = %cluster.region, node = %cluster.node, epoch, stream_seq = seq, "took the region over");
    Ok((journal, seq))
}

/// Keeps the lease while active: renews every TTL/3; when it is lost (another
/// node holds it) sends the reason on `lost` and ends. On `stop` returns the lease (for a clean release).
///
/// A renewal that fails or times out is not simply retried: the key is read back,
/// and if another node or epoch holds it the lease is lost now (an engine with
/// nothing to append would otherwise never be fenced). An announcement of a
/// higher epoch on `engine.<region>.active` also means lost, whatever the lease
/// bucket answers.
async fn keep_lease(
    bucket: async_nats::jetstream::kv::Store,
    names: RegionNames,
    mut lease: Lease,
    mut takeovers: Option<async_nats::Subscriber>,
    takeover_seq: watch::Receiver<u64>,
    lost: watch::Sender<Option<String>>,
    stop: CancellationToken,
) -> Option<Lease> {
    let every = lease.ttl() / 3;
    let outcome = loop {
        let announced = async {
            match takeovers.as_mut() {
                Some(sub) => sub.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return Some(lease),
            msg = announced => {
                match msg {
                    Some(msg) => match newer_engine(&msg.payload, lease.epoch()) {
                        Some(why) => break why,
                        None => continue,
                    },
                    // The subscription ended (the client closed): renewals still tell.
                    None => {
                        takeovers = None;
                        continue;
                    }
                }
            }
            _ = tokio::time::sleep(every) => {}
        }
        lease.set_stream_seq(*takeover_seq.borrow());
        let wait = lease.remaining().max(lease.ttl() / 3);
        let failed = match tokio::time::timeout(wait, lease.renew()).await {
            Ok(Ok(())) => {
                metrics::counter!(metric::LEASE_RENEWALS, "outcome" => "ok").increment(1);
                continue;
            }
            Ok(Err(e @ ClusterError::LeaseLost { .. })) => {
                // The key lapsed (e.g. a NATS leader election outlasted the TTL).
                // If nobody took it meanwhile, take it again: no other engine has
                // appended (our appends are still accepted), so we are still the writer.
                match Lease::try_take(&bucket, &names, &lease.value().node, lease.ttl()).await {
                    Ok(Some(mut again)) => {
                        again.set_stream_seq(*takeover_seq.borrow());
                        metrics::counter!(metric::LEASE_RENEWALS, "outcome" => "retaken").increment(1);
                        tracing::warn!(
                            epoch = again.epoch(),
                            "the lease had lapsed and nobody took it: taken again"
                        );
                        lease = again;
                        continue;
                    }
                    _ => break e.to_string(),
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {wait:?}"),
        };
        // A transient failure (a leader election of the bucket, a reconnect after
        // this process was paused): who holds the key now? Another node or epoch
        // means lost; ours, absent or unreadable means keep trying (past the TTL a
        // standby may take it, and its takeover message fences our next append).
        metrics::counter!(metric::LEASE_RENEWALS, "outcome" => "error").increment(1);
        match tokio::time::timeout(wait, lease_taken_by_another(&bucket, &names, &lease)).await {
            Ok(Some(why)) => break why,
            _ => tracing::warn!(error = %failed, expired = lease.expired(), "lease renewal failed; retrying"),
        }
    };
    metrics::counter!(metric::LEASE_RENEWALS, "outcome" => "lost").increment(1);
    tracing::error!(reason = %outcome, "lease lost: this engine stops appending and serving");
    lost.send_replace(Some(format!("lease lost: {outcome}")));
    None
}

/// `Some(why)` when the lease key names another holder than `lease` (another
/// node, or another epoch of ours: a restarted process of this node).
async fn lease_taken_by_another(
    bucket: &async_nats::jetstream::kv::Store,
    names: &RegionNames,
    lease: &Lease,
) -> Option<String> {
    let holder = opcenter_cluster::lease_holder(bucket, names).await.ok()??;
    let ours = lease.value();
    (holder.node != ours.node || holder.epoch != ours.epoch).then(|| {
        format!(
            "the lease key is held by {} (epoch {}), not by us (epoch {})",
            holder.node, holder.epoch, ours.epoch
        )
    })
}

/// `Some(why)` when an announcement (`"<node> <epoch>"`) names an epoch above
/// `ours`: another engine took the region over.
fn newer_engine(announcement: &[u8], ours: u64) -> Option<String> {
    let text = String::from_utf8_lossy(announcement);
    let (node, epoch) = text.trim().rsplit_once(' ')?;
    let epoch: u64 = epoch.parse().ok()?;
    (epoch > ours).then(|| format!("{node} announced itself active with epoch {epoch} (ours {ours})"))
}

/// Tells the hubs a new engine is active (they re-announce their tablets).
pub(crate) async fn announce_active(client: &async_nats::Client, region: &str, node: &str, epoch: u64) {
    let body = format!("{node} {epoch}");
    if let Err(e) = client.publish(active_subject(region), body.into()).await {
        tracing::warn!(error = %e, "could not announce the takeover to the hubs");
    }
    let _ = client.flush().await;
}

/// Runs `op` again on transient NATS errors until `deadline`.
async fn retry_transient<T, F, Fut>(deadline: Duration, mut op: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match op().await {
            Err(ClusterError::Nats { op: what, source }) if tokio::time::Instant::now() < until => {
                tracing::debug!(op = what, error = %source, "lease bucket not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            res => return res,
        }
    }
}

/// An active engine's lease, kept by a task from the moment it was taken
/// (replay may take longer than the TTL).
pub(crate) struct Active {
    /// The NATS connection of the bridge and the announcement.
    pub(crate) client: async_nats::Client,
    /// The lease's epoch.
    pub(crate) epoch: u64,
    /// Set to the reason when the lease is lost.
    pub(crate) lost: watch::Receiver<Option<String>>,
    /// The stream sequence of the takeover message, for the lease value.
    pub(crate) takeover_seq: watch::Sender<u64>,
    /// Stops the keeper, which then hands the lease back for release.
    stop: CancellationToken,
    keeper: tokio::task::JoinHandle<Option<Lease>>,
}

impl Active {
    /// Starts keeping `lease`.
    pub(crate) fn keep(
        bucket: async_nats::jetstream::kv::Store,
        names: RegionNames,
        lease: Lease,
        client: async_nats::Client,
    ) -> Active {
        let (lost_tx, lost) = watch::channel(None);
        let (takeover_seq, seq_rx) = watch::channel(0);
        let stop = CancellationToken::new();
        let epoch = lease.epoch();
        let (watcher, keeper_stop) = (client.clone(), stop.clone());
        let keeper = tokio::spawn(async move {
            // Subscribed before the first renewal, so a takeover announced while
            // this engine replays is not missed.
            let takeovers = match watcher.subscribe(active_subject(&names.region)).await {
                Ok(sub) => Some(sub),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for takeovers: only the lease tells");
                    None
                }
            };
            keep_lease(bucket, names, lease, takeovers, seq_rx, lost_tx, keeper_stop).await
        });
        Active {
            client,
            epoch,
            lost,
            takeover_seq,
            stop,
            keeper,
        }
    }

    /// A clean stop: deletes the lease key (if still ours) so a standby takes over
    /// without waiting for the TTL.
    ///
    /// Bounded: the keeper may be inside a NATS call that waits for its own
    /// timeout (every server gone); after 2 s the lease is left to lapse.
    pub(crate) async fn release(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(2), self.keeper).await {
            Ok(Ok(Some(lease))) => {
                match tokio::time::timeout(Duration::from_secs(2), lease.release()).await {
                    Ok(Ok(())) => tracing::info!("lease released"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "lease not released: it lapses after its TTL"),
                    Err(_) => tracing::warn!("lease release timed out: it lapses after its TTL"),
                }
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("the lease keeper did not stop in time: the lease lapses after its TTL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcenter_cluster::testing::NatsCluster;

    #[test]
    fn only_an_announcement_of_a_higher_epoch_means_lost() {
        assert!(newer_engine(b"b 12", 11).is_some());
        assert!(newer_engine(b"b 11", 11).is_none(), "our own announcement");
        assert!(newer_engine(b"old 3", 11).is_none());
        assert!(newer_engine(b"garbage", 11).is_none());
    }

    /// A bucket of `ttl` on a fresh one-node cluster, and a lease of node `a` in it.
    async fn held(
        nats: &NatsCluster,
        ttl: Duration,
    ) -> (
        async_nats::Client,
        async_nats::jetstream::kv::Store,
        RegionNames,
        Lease,
    ) {
        let client = opcenter_cluster::connect(&nats.urls()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let names = RegionNames::new("fo").unwrap();
        // A freshly started server may still elect its meta leader.
        let bucket = retry_transient(Duration::from_secs(30), || {
            opcenter_cluster::lease_bucket(&js, &names, 1, ttl)
        })
        .await
        .unwrap();
        let lease = Lease::take(&bucket, &names, "a", ttl, ttl / 6).await.unwrap();
        (client, bucket, names, lease)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_key_read_back_tells_whether_another_node_holds_the_lease() {
        let Some(nats) = NatsCluster::start_or_skip(1) else {
            return;
        };
        let ttl = Duration::from_secs(1);
        let (_client, bucket, names, a) = held(&nats, ttl).await;
        assert_eq!(lease_taken_by_another(&bucket, &names, &a).await, None);
        // a stops renewing; b takes the lapsed lease: a's read-back says lost.
        let b = tokio::time::timeout(
            Duration::from_secs(30),
            Lease::take(&bucket, &names, "b", ttl, ttl / 6),
        )
        .await
        .expect("b takes the lapsed lease")
        .unwrap();
        let why = lease_taken_by_another(&bucket, &names, &a)
            .await
            .expect("held by b");
        assert!(why.contains("held by b"), "{why}");
        assert_eq!(lease_taken_by_another(&bucket, &names, &b).await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_active_engine_that_hears_a_higher_epoch_announced_knows_its_lease_is_lost() {
        let Some(nats) = NatsCluster::start_or_skip(1) else {
            return;
        };
        // A long TTL: the renewals keep succeeding, only the announcement tells.
        let ttl = Duration::from_secs(30);
        let (client, bucket, names, lease) = held(&nats, ttl).await;
        let epoch = lease.epoch();
        let mut active = Active::keep(bucket, names, lease, client.clone());
        // The keeper subscribes in its task: announce until it has heard.
        let heard = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                announce_active(&client, "fo", "b", epoch + 1).await;
                if tokio::time::timeout(Duration::from_millis(200), active.lost.changed())
                    .await
                    .is_ok()
                {
                    return active.lost.borrow().clone();
                }
            }
        })
        .await
        .expect("the keeper heard the takeover");
        let why = heard.expect("lost");
        assert!(why.contains("b announced itself active"), "{why}");
        assert!(
            active.keeper.await.unwrap().is_none(),
            "a lost lease is not handed back for release"
        );
    }
}
