//! The engine lease of a region: which engine process may write the region's
//! stream. Owns the lease bucket (`OPC_<region>_lease`, one key = the region), taking
//! the lease (create-if-absent), renewing it (update at the revision we hold), and
//! releasing it; must never overwrite a lease it does not hold (no plain `put`).
//!
//! nats-server 2.9 has no per-message TTL, so the bucket's `max_age` is the lease
//! TTL: a value not renewed within the TTL expires and the key is absent again, so
//! a standby's create succeeds. The holder renews every TTL/3. The lease only
//! chooses *who* writes; the stream's `Nats-Expected-Last-Sequence` is what keeps a
//! stale holder from ever appending (fencing, see `journal.rs`).
//!
//! The lease's epoch is the bucket revision of the create that took it: revisions
//! are the bucket stream's sequence numbers, which only grow, even across expiry.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{ClusterError, RegionNames, open_kv_bucket};

/// What the lease key holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The holder's node name (`cluster.node`).
    pub node: String,
    /// The lease epoch: the bucket revision of the create that took it (0 while
    /// being taken, before that revision is known).
    pub epoch: u64,
    /// The stream sequence of the holder's takeover message (0 until it is appended).
    pub stream_seq: u64,
}

/// A held lease. Dropping it does not release it (it expires after the TTL);
/// [`Lease::release`] hands over at once on a clean stop.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    value: LeaseValue,
    revision: u64,
    ttl: Duration,
    /// When the request of the last successful write left: the server stored it
    /// later, so the lease expires no earlier than this plus the TTL.
    written_at: Instant,
}

/// Opens (creating if needed) the region's lease bucket with `max_age` = `ttl`.
pub async fn lease_bucket(
    js: &jetstream::Context,
    names: &RegionNames,
    replicas: usize,
    ttl: Duration,
) -> Result<kv::Store, ClusterError> {
    open_kv_bucket(js, &names.lease_bucket, replicas, 1, ttl).await
}

/// The current holder of the region's lease, if any.
pub async fn lease_holder(
    bucket: &kv::Store,
    names: &RegionNames,
) -> Result<Option<LeaseValue>, ClusterError> {
    let entry = bucket
        .entry(names.region.as_str())
        .await
        .map_err(|e| ClusterError::nats("read lease")(e.into()))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| serde_json::from_slice(&e.value).ok()))
}

fn encode(v: &LeaseValue) -> Bytes {
    // A struct of a string and two integers always serializes.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

impl Lease {
    /// Takes the lease if nobody holds it: `Ok(None)` when another node does.
    pub async fn try_take(
        bucket: &kv::Store,
        names: &RegionNames,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, ClusterError> {
        let mut value = LeaseValue {
            node: node.to_owned(),
            epoch: 0,
            stream_seq: 0,
        };
        let sent = Instant::now();
        let revision = match bucket.create(names.region.as_str(), encode(&value)).await {
            Ok(r) => r,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(ClusterError::nats("take lease")(e.into())),
        };
        value.epoch = revision;
        let mut lease = Lease {
            kv: bucket.clone(),
            key: names.region.clone(),
            value,
            revision,
            ttl,
            written_at: sent,
        };
        // Write the epoch into the value: the same CAS as a renewal.
        lease.renew().await?;
        Ok(Some(lease))
    }

    /// Waits until the lease is free and takes it, trying every `poll` (each try
    /// is one create-if-absent on the bucket).
    pub async fn take(
        bucket: &kv::Store,
        names: &RegionNames,
        node: &str,
        ttl: Duration,
        poll: Duration,
    ) -> Result<Lease, ClusterError> {
        let pause = poll.max(Duration::from_millis(10));
        loop {
            match Lease::try_take(bucket, names, node, ttl).await {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => {}
                // A leader election of the bucket, a reconnect: try again.
                Err(e @ ClusterError::Nats { .. }) => {
                    tracing::debug!(error = %e, "lease not taken; retrying");
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Writes the value again at the revision we hold. `Err(LeaseLost)` when the key
    /// moved on (it expired and another node took it); other errors are transient
    /// (the caller keeps trying until [`Lease::expired`]).
    ///
    /// A renewal whose answer we gave up on (a timeout during a leader election of
    /// the bucket) may still have been stored: the key then holds *our* value at a
    /// newer revision. A refused renewal therefore reads the key, and if it holds
    /// this node and epoch, carries on from that revision instead of losing the lease.
    pub async fn renew(&mut self) -> Result<(), ClusterError> {
        let mut adopted = false;
        loop {
            let sent = Instant::now();
            match self
                .kv
                .update(self.key.as_str(), encode(&self.value), self.revision)
                .await
            {
                Ok(r) => {
                    self.revision = r;
                    self.written_at = sent;
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if !adopted && let Some(revision) = self.our_newer_revision().await {
                        tracing::info!(
                            from = self.revision,
                            to = revision,
                            "an earlier renewal of ours was stored after all: renewing at its revision"
                        );
                        self.revision = revision;
                        adopted = true;
                        continue;
                    }
                    return Err(ClusterError::LeaseLost {
                        region: self.key.clone(),
                        reason: format!("the lease key moved past revision {}: {e}", self.revision),
                    });
                }
                Err(e) => return Err(ClusterError::nats("renew lease")(e.into())),
            }
        }
    }

    /// The key's revision if it is newer than ours and holds our node and epoch.
    async fn our_newer_revision(&self) -> Option<u64> {
        let entry = self.kv.entry(self.key.as_str()).await.ok()??;
        let value: LeaseValue = serde_json::from_slice(&entry.value).ok()?;
        (entry.operation == kv::Operation::Put
            && entry.revision > self.revision
            && value.node == self.value.node
            && value.epoch == self.value.epoch)
            .then_some(entry.revision)
    }

    /// Sets the stream sequence of our takeover message in the lease value
    /// (written by the next [`Lease::renew`]).
    pub fn set_stream_seq(&mut self, stream_seq: u64) {
        self.value.stream_seq = stream_seq;
    }

    /// Whether the TTL has passed since the last successful write was sent: the
    /// key may have expired and another node may hold the lease.
    pub fn expired(&self) -> bool {
        self.written_at.elapsed() >= self.ttl
    }

    /// The time left before [`Lease::expired`].
    pub fn remaining(&self) -> Duration {
        self.ttl.saturating_sub(self.written_at.elapsed())
    }

    /// What the key holds while we hold it.
    pub fn value(&self) -> &LeaseValue {
        &self.value
    }

    /// The lease's epoch.
    pub fn epoch(&self) -> u64 {
        self.value.epoch
    }

    /// The lease TTL (the bucket's `max_age`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Deletes the key if we still hold it, so a standby takes over without
    /// waiting for the TTL (a clean stop).
    pub async fn release(self) -> Result<(), ClusterError> {
        self.kv
            .delete_expect_revision(self.key.as_str(), Some(self.revision))
            .await
            .map_err(|e| ClusterError::nats("release lease")(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::NatsCluster;

    async fn bucket(urls: &str, ttl: Duration) -> (kv::Store, RegionNames) {
        let client = crate::connect(urls).await.unwrap();
        let js = jetstream::new(client);
        let names = RegionNames::new("lz").unwrap();
        // A freshly started server may still elect its meta leader: retry.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lease_bucket(&js, &names, 1, ttl).await {
                Ok(b) => return (b, names),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("lease bucket not ready: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("lease bucket: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_renewals_keep_it_and_a_lapsed_lease_passes_to_the_standby() {
        let Some(nats) = NatsCluster::start_or_skip(1) else {
            return;
        };
        let ttl = Duration::from_secs(2);
        let (b, names) = bucket(&nats.urls(), ttl).await;

        let mut a = Lease::try_take(&b, &names, "a", ttl)
            .await
            .unwrap()
            .expect("free lease");
        assert!(a.epoch() > 0);
        assert!(Lease::try_take(&b, &names, "b", ttl).await.unwrap().is_none());
        a.set_stream_seq(42);
        a.renew().await.unwrap();
        let held = lease_holder(&b, &names).await.unwrap().unwrap();
        assert_eq!(
            held,
            LeaseValue {
                node: "a".into(),
                epoch: a.epoch(),
                stream_seq: 42
            }
        );

        // Renewing well inside the TTL keeps it for longer than one TTL.
        for _ in 0..6 {
            tokio::time::sleep(ttl / 3).await;
            a.renew().await.unwrap();
            assert!(Lease::try_take(&b, &names, "b", ttl).await.unwrap().is_none());
        }

        // a stops renewing (paused); b waits for the lapse and takes it.
        let b_lease = tokio::time::timeout(
            Duration::from_secs(30),
            Lease::take(&b, &names, "b", ttl, ttl / 6),
        )
        .await
        .expect("b takes the lapsed lease")
        .unwrap();
        assert!(b_lease.epoch() > a.epoch(), "epochs only grow");
        assert!(a.expired());
        // a wakes up: its renewal is refused, never overwrites b's lease.
        let err = a.renew().await.unwrap_err();
        assert!(matches!(err, ClusterError::LeaseLost { .. }), "{err}");
        assert_eq!(lease_holder(&b, &names).await.unwrap().unwrap().node, "b");

        // A clean release hands over at once.
        b_lease.release().await.unwrap();
        let c = Lease::try_take(&b, &names, "c", ttl)
            .await
            .unwrap()
            .expect("released lease is free");
        assert_eq!(lease_holder(&b, &names).await.unwrap().unwrap().node, "c");
        drop(c);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewal_stored_after_we_gave_up_on_it_is_adopted_not_taken_for_a_lost_lease() {
        let Some(nats) = NatsCluster::start_or_skip(1) else {
            return;
        };
        let ttl = Duration::from_secs(30);
        let (b, names) = bucket(&nats.urls(), ttl).await;
        let mut a = Lease::try_take(&b, &names, "a", ttl)
            .await
            .unwrap()
            .expect("free lease");
        // A renewal of ours the server stored but whose answer never reached us.
        let mut stale = Lease {
            kv: a.kv.clone(),
            key: a.key.clone(),
            value: a.value.clone(),
            revision: a.revision,
            ttl,
            written_at: a.written_at,
        };
        stale.renew().await.unwrap();
        a.renew().await.expect("our own newer revision is adopted");
        assert!(a.revision > stale.revision);
        // Another node's value at a newer revision is a lost lease.
        b.update(
            names.region.as_str(),
            encode(&LeaseValue {
                node: "b".into(),
                epoch: 99,
                stream_seq: 0,
            }),
            a.revision,
        )
        .await
        .unwrap();
        let err = a.renew().await.unwrap_err();
        assert!(matches!(err, ClusterError::LeaseLost { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_takers_get_exactly_one_lease() {
        let Some(nats) = NatsCluster::start_or_skip(1) else {
            return;
        };
        let ttl = Duration::from_secs(3);
        let (b, names) = bucket(&nats.urls(), ttl).await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (b, names) = (b.clone(), names.clone());
            tasks.push(tokio::spawn(async move {
                Lease::try_take(&b, &names, &format!("n{i}"), ttl)
                    .await
                    .unwrap()
                    .is_some()
            }));
        }
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(won, 1);
    }
}
