//! The warm standby: while an engine node waits for its region's lease
//! ([`crate::failover`]), it opens the region's journal as the engine will, loads
//! the latest snapshot once and follows the stream, applying every record to its
//! own copy of the state ([`Replay::apply`], the replay path; it never appends)
//! and noting the call ids of forwarded commands ([`crate::bridge::Recall`]). At
//! takeover the engine replays only the tail from where the standby stood, so a
//! takeover does not grow with the region's state. It keeps the read model's
//! copy of the state too ([`crate::read_model::ReadCopy`]), folded with every
//! record it applies, so the new engine's read model starts from it instead of
//! copying the engine's state and building its maps while the engine serves.
//!
//! The journal is re-read every [`REREAD`] (its tail and the audit chain walked
//! that far), so at takeover the chain walk is as short as the replay; the
//! distance to the stream's end is `opcenter_standby_lag_records`. Every
//! [`LIST_SNAPSHOTS_EVERY`] re-reads it also lists the region's snapshots (not
//! reading them), so the new engine's next snapshot is due after the newest one
//! the active engine wrote, and no takeover waits for that listing.
//!
//! Owns: the standby's copy of the state and its follower. Must never append,
//! answer a command, or hand over a state that does not continue the journal's
//! stream (another epoch, a compacted gap: the takeover then recovers cold).

use std::time::{Duration, Instant};

use opcenter_cluster::{ClusterError, Follower, JetStreamJournal};
use opcenter_store::Journal;
use tokio_util::sync::CancellationToken;

use crate::bridge::Recall;
use crate::engine_task::Replay;
use crate::record::DurabilityError;
use crate::{ClusterSettings, Settings, metric};

/// How often the standby re-reads the journal's tail (and walks the chain that far).
const REREAD: Duration = Duration::from_secs(1);
/// Re-reads between two listings of the region's snapshots (a listing walks the
/// bucket's keys: ~0.3 s at 300 000 incidents).
const LIST_SNAPSHOTS_EVERY: u32 = 10;
/// How long the follower may read nothing while the stream holds more before its
/// consumer is created again (its NATS server went away).
const STALLED: Duration = Duration::from_secs(3);

/// The journal of a standby, dropped off the runtime: it owns a runtime of its
/// own, which must not be dropped on a runtime thread (a standby stopped by
/// SIGTERM drops it with the waiting task).
pub(crate) struct OwnJournal(Option<JetStreamJournal>);

impl OwnJournal {
    fn get(&self) -> &JetStreamJournal {
        self.0
            .as_ref()
            .expect("an OwnJournal holds its journal until taken")
    }
}

impl Drop for OwnJournal {
    fn drop(&mut self) {
        if let Some(j) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("opcenter-drop-journal".into())
                .spawn(move || drop(j));
        }
    }
}

/// What a warm standby hands to the takeover: the engine's journal and the state
/// it followed.
pub(crate) struct Warm {
    pub(crate) journal: OwnJournal,
    pub(crate) replay: Replay,
    /// The stream's epoch the state belongs to.
    pub(crate) epoch: String,
    /// Records applied while following (after the load).
    pub(crate) followed: u64,
    /// The seq of the newest snapshot in the region's bucket, as last listed.
    pub(crate) newest_snapshot: u64,
}

impl Warm {
    /// The journal, now the caller's to drop off the runtime.
    pub(crate) fn take_journal(&mut self) -> JetStreamJournal {
        self.journal
            .0
            .take()
            .expect("a Warm holds its journal until taken")
    }
}

/// A standby's following task; [`Standby::finish`] stops it and takes its state.
/// Dropped (a standby stopped before it took over), it stops the task.
pub(crate) struct Standby {
    stop: tokio_util::sync::DropGuard,
    task: tokio::task::JoinHandle<Option<Warm>>,
}

impl Standby {
    /// Starts loading and following (see the module docs).
    pub(crate) fn start(
        settings: &Settings,
        cluster: &ClusterSettings,
        client: &async_nats::Client,
    ) -> Standby {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            settings.clone(),
            cluster.clone(),
            async_nats::jetstream::new(client.clone()),
            stop.clone(),
        ));
        Standby {
            stop: stop.drop_guard(),
            task,
        }
    }

    /// Stops following and returns the state (waiting for a load in progress to
    /// end); `None` when the standby has none to give (the load failed).
    pub(crate) async fn finish(self) -> Option<Warm> {
        drop(self.stop);
        self.task.await.ok().flatten()
    }
}

/// Opens the journal and loads the state; `None` once `stop` is cancelled.
async fn load(settings: &Settings, cluster: &ClusterSettings, stop: &CancellationToken) -> Option<Warm> {
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let started = Instant::now();
        let journal = match crate::open_region_journal(cluster, settings).await {
            Ok(j) => OwnJournal(Some(j)),
            Err(e) => {
                tracing::warn!(error = %e, "standby: cannot open the region's journal yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let config = settings.engine.clone();
        let memory_history = crate::memory_history(settings);
        let key_ttl_ms = settings.engine.key_ttl_ms;
        let loaded = tokio::task::spawn_blocking(move || {
            let j = journal.get();
            let r = (|| {
                let mut replay = Replay::load(config, j, memory_history, Some(Recall::default()))?;
                // The calls of the newest records the snapshot already holds
                // (the replay notes the rest).
                let end = j.last_seq();
                let from = end
                    .saturating_sub(crate::bridge::RECALL_RECORDS)
                    .max(j.first_seq().saturating_sub(1));
                if let Some(calls) = replay.calls.as_mut()
                    && from < replay.seq
                {
                    calls.scan(j, from, replay.seq);
                }
                let replayed = replay.catch_up(j)?;
                replay.keep_read_copy(key_ttl_ms);
                Ok::<_, DurabilityError>((replay, replayed))
            })();
            (journal, r)
        })
        .await;
        let (journal, loaded) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "standby: the load panicked");
                return None;
            }
        };
        match loaded {
            Ok((replay, replayed)) => {
                let epoch = journal.get().epoch().to_owned();
                tracing::info!(
                    snapshot_seq = replay.snapshot_seq,
                    replayed,
                    seq = replay.seq,
                    ms = started.elapsed().as_millis() as u64,
                    "standby: state loaded; following the stream"
                );
                let newest_snapshot = replay.snapshot_seq;
                return Some(Warm {
                    journal,
                    replay,
                    epoch,
                    followed: 0,
                    newest_snapshot,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "standby: cannot load the region's state; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Loads, then follows until `stop`; loads again when the stream no longer
/// continues the state (replaced, compacted past it).
async fn run(
    settings: Settings,
    cluster: ClusterSettings,
    js: async_nats::jetstream::Context,
    stop: CancellationToken,
) -> Option<Warm> {
    'load: loop {
        let mut warm = load(&settings, &cluster, &stop).await?;
        'follow: loop {
            if stop.is_cancelled() {
                return Some(warm);
            }
            let mut follower = match Follower::start(&js, &cluster.region, warm.replay.seq).await {
                Ok(f) if f.epoch() == warm.epoch => f,
                Ok(f) => {
                    tracing::warn!(now = %f.epoch(), was = %warm.epoch, "standby: the stream was replaced; loading again");
                    continue 'load;
                }
                Err(ClusterError::Compacted { .. }) => {
                    tracing::warn!("standby: the stream was compacted past the state; loading again");
                    continue 'load;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "standby: cannot follow the stream yet; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return Some(warm),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'follow,
                    }
                }
            };
            let mut reread = tokio::time::interval(REREAD);
            let mut rereads = 0u32;
            // Since when the follower has stood at this stream seq behind the stream's end.
            let mut behind: Option<(u64, Instant)> = None;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Some(warm),
                    b = follower.next_batch() => match b {
                        Some(Ok(records)) => {
                            for rec in &records {
                                if let Err(e) = warm.replay.apply(rec) {
                                    tracing::error!(error = %e, "standby: a record cannot be applied; loading again");
                                    continue 'load;
                                }
                            }
                            warm.followed += records.len() as u64;
                        }
                        Some(Err(ClusterError::Corrupt { .. })) => {
                            tracing::warn!("standby: the stream does not continue the state; loading again");
                            continue 'load;
                        }
                        other => {
                            tracing::warn!(error = ?other.and_then(Result::err), "standby: stream consumer ended; following again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue 'follow;
                        }
                    },
                    _ = reread.tick() => {
                        let journal = warm.journal;
                        rereads = rereads.wrapping_add(1);
                        let list = rereads % LIST_SNAPSHOTS_EVERY == 1;
                        let reread = tokio::task::spawn_blocking(move || {
                            let mut j = journal;
                            let r = j.0.as_mut().map(JetStreamJournal::reopen);
                            let newest = j.0.as_ref().filter(|_| list).map(Journal::latest_snapshot_seq);
                            (j, r, newest)
                        })
                        .await;
                        let Ok((journal, result, newest)) = reread else {
                            tracing::error!("standby: re-reading the journal panicked");
                            return None;
                        };
                        warm.journal = journal;
                        match newest {
                            Some(Ok(Some(seq))) => {
                                warm.newest_snapshot = warm.newest_snapshot.max(seq);
                                metrics::gauge!(metric::STANDBY_NEWEST_SNAPSHOT_SEQ).set(warm.newest_snapshot as f64);
                            }
                            Some(Err(e)) => tracing::warn!(error = %e, "standby: cannot list the region's snapshots; next time"),
                            _ => {}
                        }
                        if let Some(Err(e)) = result {
                            tracing::warn!(error = %e, "standby: cannot re-read the journal's tail; next time");
                            continue;
                        }
                        let j = warm.journal.get();
                        if j.epoch() != warm.epoch {
                            tracing::warn!("standby: the stream was replaced; loading again");
                            continue 'load;
                        }
                        let lag = j.last_seq().saturating_sub(warm.replay.seq);
                        metrics::gauge!(metric::STANDBY_LAG_RECORDS).set(lag as f64);
                        metrics::gauge!(metric::STANDBY_FOLLOWED_RECORDS).set(warm.followed as f64);
                        // The stream holds records this follower has not read and it
                        // has read nothing for `STALLED`: its consumer's server is gone.
                        let read = follower.stream_seq();
                        if lag == 0 {
                            behind = None;
                        } else {
                            match behind {
                                Some((at, since)) if at == read && since.elapsed() >= STALLED => {
                                    tracing::warn!(read, lag, "standby: stream consumer stalled; following again");
                                    continue 'follow;
                                }
                                Some((at, _)) if at == read => {}
                                _ => behind = Some((read, Instant::now())),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The takeover of a warm standby: applies the tail of `journal` (re-read up to
/// the takeover message) to the followed state; returns it and how many records
/// the tail held. `None` when the state does not continue this stream (another
/// epoch), `Some(Err)` when the tail cannot be read (compacted past the state):
/// the caller recovers cold. Runs on a blocking thread.
pub(crate) fn replay_tail(
    journal: &dyn Journal,
    mut replay: Replay,
    epoch: &str,
) -> Option<Result<(Replay, u64), DurabilityError>> {
    if journal.epoch() != epoch {
        tracing::warn!(now = %journal.epoch(), followed = %epoch, "the stream was replaced while standing by: recovering cold");
        return None;
    }
    Some(replay.catch_up(journal).map(|tail| (replay, tail)))
}
