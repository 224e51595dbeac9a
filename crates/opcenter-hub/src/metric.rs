//! The names of every metric the hub records, in one place: `/metrics` is an
//! interface that dashboards and alerts depend on, so a name is spelled once
//! and a typo is a compile error, not a silently empty graph.
//!
//! Owns: metric names (labels are documented beside each). Must never: record
//! anything itself.

/// Counter: commands by `type` and `outcome` (`ok`, `error`, `refused`,
/// `rate_limited`, `internal`).
pub(crate) const COMMANDS: &str = "opcenter_commands_total";
/// Histogram: receipt of an `incident.create` → its reply queued, seconds.
pub(crate) const CREATE_SECONDS: &str = "opcenter_create_seconds";
/// Histogram: receipt of an `incident.create` → the engine thread applies it
/// (its wait for the engine thread), seconds.
pub(crate) const CREATE_QUEUED_SECONDS: &str = "opcenter_create_queued_seconds";
/// Histogram: receipt of an `incident.create` → its assignments queued to the tablets.
pub(crate) const ASSIGNMENT_SECONDS: &str = "opcenter_assignment_seconds";
/// Histogram: an `incident.create` frame read from the socket → the assignment
/// it caused written to the tablet's socket, seconds (one per tablet session
/// that received it; includes the commit, the queue and the write).
pub(crate) const ASSIGNMENT_WRITTEN_SECONDS: &str = "opcenter_assignment_written_seconds";
/// Histogram: one group commit (append + fsync), seconds.
pub(crate) const JOURNAL_APPEND_SECONDS: &str = "opcenter_journal_append_seconds";
/// Histogram: events per group commit (has its own buckets).
pub(crate) const JOURNAL_BATCH_EVENTS: &str = "opcenter_journal_batch_events";
/// Counter: events queued to sessions.
pub(crate) const EVENT_DELIVERIES: &str = "opcenter_event_deliveries_total";
/// Counter: writes to session sockets (one per batch written: compare with
/// `opcenter_event_deliveries_total` for deliveries per write).
pub(crate) const SOCKET_WRITES: &str = "opcenter_socket_writes_total";
/// Counter: event frames of `since` replays, by `source`: `cache` (made
/// before, by the live fan-out or an earlier replay) or `encoded` (made now).
pub(crate) const REPLAY_FRAMES: &str = "opcenter_replay_frames_total";
/// Gauge: estimated bytes held by the replay frame cache (`hub.frame_cache_bytes`).
pub(crate) const REPLAY_CACHE_BYTES: &str = "opcenter_replay_cache_bytes";
/// Counter: milliseconds the read-model thread paused because snapshots, replays
/// and lookups were over `hub.reads_share`.
pub(crate) const READS_PACED_MS: &str = "opcenter_reads_paced_milliseconds_total";
/// Counter: sessions closed because their queue overflowed (4008).
pub(crate) const QUEUE_OVERFLOWS: &str = "opcenter_queue_overflows_total";
/// Gauge: open sessions by `role`.
pub(crate) const CONNECTIONS: &str = "opcenter_connections";
/// Counter: closes the server sent, by `code`.
pub(crate) const CLOSES: &str = "opcenter_closes_total";
/// Counter: frames answered with an error, by `code`.
pub(crate) const FRAME_ERRORS: &str = "opcenter_frame_errors_total";
/// Counter: requests refused by a load limit, by `limit`: `max_connections`
/// (WebSocket upgrade answered 503), `reports_rate` (`POST /v1/reports`
/// answered 429), `command_budget` (a session's command answered
/// `rate_limited`). `/metrics` refusals for a missing or wrong token are
/// `metrics_auth`.
pub(crate) const REFUSALS: &str = "opcenter_refusals_total";
/// Counter: lease renewals of an active engine by `outcome` (`ok`, `error`:
/// transient, retried; `lost`: the engine stops).
pub(crate) const LEASE_RENEWALS: &str = "opcenter_lease_renewals_total";
/// Counter: takeovers of the region by this engine process (0 or 1).
pub(crate) const TAKEOVERS: &str = "opcenter_takeovers_total";
/// Counter: appends refused because another engine wrote the stream (fenced).
pub(crate) const FENCED_APPENDS: &str = "opcenter_fenced_appends_total";
/// Counter: hub calls an engine did not apply because the hub's deadline had
/// (nearly) passed while they were queued (the hub answered `internal` already).
pub(crate) const CALLS_SHED: &str = "opcenter_calls_shed_total";
/// Counter (a hub node): attempts of calls that found no engine subscribed
/// (each is followed by a pause that the next engine's announcement ends).
pub(crate) const CALLS_NO_ENGINE: &str = "opcenter_call_no_engine_total";
/// Counter: probes of a NATS connection that did not come back through the
/// server within `cluster.probe_timeout_ms`, each followed by a new connection
/// that replaces it, by `connection` (`engine`: an engine's to the hubs; `hub`:
/// a hub's for its calls to the engine).
pub(crate) const NATS_PROBE_RECONNECTS: &str = "opcenter_nats_probe_reconnects_total";
/// Gauge (an engine node): when it began serving the hubs' commands (`cmd.<region>`
/// subscribed), Unix seconds: after a takeover, the end of the time without an
/// engine as the engine sees it.
pub(crate) const SERVING_SINCE: &str = "opcenter_engine_serving_since_seconds";
/// Gauge: 1 when the read model started from the copy a warm standby kept as it
/// followed the stream (a takeover), 0 when it copied the recovered state.
pub(crate) const READ_COPY_FROM_STANDBY: &str = "opcenter_read_copy_from_standby";
/// Gauge: seconds the read model took to start: building its copy of the
/// state, or, from a standby's copy, only taking it over.
pub(crate) const READ_MODEL_START_SECONDS: &str = "opcenter_read_model_start_seconds";
/// Gauge: seconds the last recovery (snapshot load + stream replay) took.
pub(crate) const REPLAY_SECONDS: &str = "opcenter_replay_seconds";
/// Gauge (a standby engine): records of the region's stream its followed state
/// is behind the stream's end, as of its last re-read (every second).
pub(crate) const STANDBY_LAG_RECORDS: &str = "opcenter_standby_lag_records";
/// Gauge: records replayed by the last recovery: everything after the snapshot
/// (a cold start), or only the tail a warm standby had not followed yet (a takeover).
pub(crate) const REPLAYED_RECORDS: &str = "opcenter_replayed_records";
/// Gauge (a standby engine): records its state has applied while following the
/// stream since it loaded (what a takeover does not replay).
pub(crate) const STANDBY_FOLLOWED_RECORDS: &str = "opcenter_standby_followed_records";
/// Gauge (a standby engine): the seq of the newest snapshot in the region's
/// bucket as it last listed them (its takeover's next snapshot is due
/// `storage.snapshot_every_events` after it).
pub(crate) const STANDBY_NEWEST_SNAPSHOT_SEQ: &str = "opcenter_standby_newest_snapshot_seq";
/// Gauge: the record seq the last recovery replayed from: its snapshot's (a cold
/// start; 0 without one), or where the warm standby's state stood (a takeover).
pub(crate) const REPLAY_FROM_SEQ: &str = "opcenter_replay_from_seq";
