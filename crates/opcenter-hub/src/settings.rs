//! Configuration: the embedded `config/default.toml`, an optional TOML file and
//! `OPCENTER_<SECTION>__<KEY>` environment variables, merged by the `config`
//! crate, then checked once into [`Settings`]. Nothing else reads raw config.
//!
//! Owns: key names, defaults, validation. Must never: be re-parsed at run time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use opcenter_core::report::ReportConfig;
use opcenter_core::{EngineConfig, RosterUnit};

/// The embedded defaults (`config/default.toml`).
const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// The development secret of the embedded defaults: refused off loopback, logged on it.
use opcenter_proto::auth::{DEV_SECRET, MIN_SECRET_BYTES};

/// A configuration that could not be loaded or is out of range.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or environment could not be read or parsed.
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range.
    #[error("config: {key}: {problem}")]
    Invalid {
        /// The key, e.g. `hub.max_frame_bytes`.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    storage: RawStorage,
    auth: RawAuth,
    dispatch: RawDispatch,
    hub: RawHub,
    http: RawHttp,
    console: RawConsole,
    reports: RawReports,
    #[serde(default)]
    roster: Vec<RosterUnit>,
    #[serde(default)]
    zones: Vec<RawZones>,
    #[serde(default)]
    run_cards: Vec<opcenter_core::RunCard>,
    #[serde(default)]
    cluster: Option<RawCluster>,
    #[serde(default)]
    gazetteer: RawGazetteer,
}

/// `[gazetteer]`: the address file behind `GET /v1/geocode` and address-only creates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGazetteer {
    #[serde(default)]
    file: Option<PathBuf>,
}

/// Reads the gazetteer file: `.csv`, or GeoJSON points (`.geojson`, `.json`).
fn load_gazetteer(
    file: Option<&Path>,
) -> Result<Option<std::sync::Arc<opcenter_core::gazetteer::Gazetteer>>, SettingsError> {
    use opcenter_core::gazetteer::Gazetteer;
    let Some(path) = file else {
        return Ok(None);
    };
    let at = |e: &dyn std::fmt::Display| SettingsError::Invalid {
        key: "gazetteer.file",
        problem: format!("{}: {e}", path.display()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    let g = match ext.to_ascii_lowercase().as_str() {
        "csv" => Gazetteer::from_csv(&text).map_err(|e| at(&e))?,
        "geojson" | "json" => {
            let addresses = opcenter_proto::geojson::addresses_from_geojson(&text).map_err(|e| at(&e))?;
            Gazetteer::new(addresses).map_err(|e| at(&e))?
        }
        _ => return Err(at(&"want a .csv, .geojson or .json file")),
    };
    Ok(Some(std::sync::Arc::new(g)))
}

/// One `[[zones]]` entry: a GeoJSON file of districts or of beats.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZones {
    file: PathBuf,
    kind: opcenter_core::zones::ZoneKind,
    #[serde(default = "name_property")]
    name_property: String,
    #[serde(default = "district_property")]
    district_property: String,
}

fn name_property() -> String {
    "name".into()
}

fn district_property() -> String {
    "district".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    shutdown_timeout_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: PathBuf,
    fsync: bool,
    snapshot_every_events: u64,
    retain_closed_h: u64,
    audit_checkpoint_records: u64,
    audit_checkpoint_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwt_secret: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    ack_timeout_s: u64,
    max_position_age_s: u64,
    max_distance_m: f64,
    emergency_units: u32,
    duplicate_radius_m: f64,
    duplicate_window_s: u64,
    max_clock_skew_s: u64,
    max_speed_mps: f64,
    index_slack_m: f64,
    tick_ms: u64,
    offline_grace_s: u64,
    max_notes: usize,
    key_ttl_h: u64,
    agencies: Vec<String>,
    default_agencies: Vec<String>,
    post_radius_m: f64,
    beat_preference_m: f64,
    local_offset_min: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    max_frame_bytes: usize,
    history_events: u64,
    session_queue_bytes: usize,
    position_interval_ms: u64,
    hello_timeout_s: u64,
    ping_interval_s: u64,
    idle_timeout_s: u64,
    max_bad_frames: u32,
    engine_queue: usize,
    session_rate_per_s: f64,
    session_burst: u32,
    max_connections: usize,
    reads_nice: i32,
    engine_nice: i32,
    memory_history_events: usize,
    replay_step_events: usize,
    frame_cache_bytes: usize,
    reads_share: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_body_bytes: usize,
    reports_per_s: f64,
    reports_burst: u32,
    #[serde(default)]
    metrics_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nats: Vec<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    regions: Option<Vec<String>>,
    role: String,
    #[serde(default = "default_replicas")]
    replicas: usize,
    #[serde(default = "default_publish_deadline_s")]
    publish_deadline_s: u64,
    #[serde(default = "default_command_timeout_s")]
    command_timeout_s: u64,
    #[serde(default = "default_lease_ttl_s")]
    lease_ttl_s: u64,
    #[serde(default = "default_lease_poll_ms")]
    lease_poll_ms: u64,
    #[serde(default)]
    node: Option<String>,
    #[serde(default = "default_pipeline_depth")]
    pipeline_depth: usize,
    #[serde(default = "default_probe_interval_ms")]
    probe_interval_ms: u64,
    #[serde(default = "default_probe_timeout_ms")]
    probe_timeout_ms: u64,
}

fn default_probe_interval_ms() -> u64 {
    250
}

fn default_probe_timeout_ms() -> u64 {
    1_000
}

fn default_pipeline_depth() -> usize {
    8
}

fn default_lease_ttl_s() -> u64 {
    3
}

fn default_lease_poll_ms() -> u64 {
    100
}

fn default_command_timeout_s() -> u64 {
    10
}

fn default_replicas() -> usize {
    1
}

fn default_publish_deadline_s() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    center_lat: f64,
    center_lon: f64,
    radius_m: f64,
    #[serde(default)]
    districts_file: Option<PathBuf>,
    #[serde(default)]
    streets_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReports {
    utc_offset_min: i32,
    shift_starts: Vec<String>,
    target_s: RawTargets,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargets {
    p1: u32,
    p2: u32,
    p3: u32,
    p4: u32,
    p5: u32,
}

fn check_reports(r: RawReports) -> Result<ReportConfig, SettingsError> {
    let invalid = |key: &'static str, problem: String| SettingsError::Invalid { key, problem };
    if !(-840..=840).contains(&r.utc_offset_min) {
        return Err(invalid(
            "reports.utc_offset_min",
            format!("{} must be in -840..=840 (minutes)", r.utc_offset_min),
        ));
    }
    let mut starts = Vec::with_capacity(r.shift_starts.len());
    for s in &r.shift_starts {
        let m = opcenter_core::report::parse_hhmm(s)
            .ok_or_else(|| invalid("reports.shift_starts", format!("{s:?} is not a time HH:MM")))?;
        starts.push(m);
    }
    starts.sort_unstable();
    let n = starts.len();
    starts.dedup();
    if starts.is_empty() || starts.len() != n {
        return Err(invalid(
            "reports.shift_starts",
            "needs at least one start and no repeats".into(),
        ));
    }
    let t = r.target_s;
    let target_s = [t.p1, t.p2, t.p3, t.p4, t.p5];
    if target_s.contains(&0) {
        return Err(invalid(
            "reports.target_s",
            "every target must be > 0 seconds".into(),
        ));
    }
    Ok(ReportConfig {
        target_s,
        shift_starts_min: starts,
        utc_offset_min: r.utc_offset_min,
    })
}

/// The environment variables that are config keys: `OPCENTER_<SECTION>__<KEY>`.
/// An `OPCENTER_` variable without `__` is not one (tools use `OPCENTER_BIN`),
/// but a mistyped section or key with `__` is, and is refused like a mistyped
/// line in a file.
fn config_env(vars: impl Iterator<Item = (String, String)>) -> config::Map<String, String> {
    vars.filter(|(name, _)| {
        name.strip_prefix("OPCENTER_")
            .is_some_and(|rest| rest.contains("__"))
    })
    .collect()
}

/// Checked settings of one server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `server.shutdown_timeout_s`.
    pub shutdown_timeout: std::time::Duration,
    /// `storage.data_dir`.
    pub data_dir: PathBuf,
    /// `storage.fsync`.
    pub fsync: bool,
    /// `storage.snapshot_every_events`.
    pub snapshot_every_events: u64,
    /// `storage.audit_checkpoint_records` (0 = never by count).
    pub audit_checkpoint_records: u64,
    /// `storage.audit_checkpoint_s` (0 = never by time).
    pub audit_checkpoint_interval: std::time::Duration,
    /// Start over a broken audit chain (logged at `error`). Not a config key: only
    /// `opcenter serve --accept-broken-chain` sets it, per start.
    pub accept_broken_chain: bool,
    /// `auth.jwt_secret`.
    pub jwt_secret: String,
    /// `auth.issuer` and `auth.audience`: what every token must carry, if set.
    pub expect: opcenter_proto::auth::Expect,
    /// The engine's part (`dispatch.*` and the roster).
    pub engine: EngineConfig,
    /// `dispatch.tick_ms`.
    pub tick: std::time::Duration,
    /// `hub.*`.
    pub hub: HubSettings,
    /// `http.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `http.reports_per_s` (0 = unlimited) and `http.reports_burst`.
    pub reports_rate: (f64, u32),
    /// `http.metrics_token`: when set, `/metrics` wants it as a Bearer token.
    pub metrics_token: Option<String>,
    /// `console.*`.
    pub console: ConsoleSettings,
    /// `cluster.*`: `None` (no `[cluster]` section) is the single process on the
    /// file journal.
    pub cluster: Option<ClusterSettings>,
    /// `reports.*`: targets and shifts of the response-time report.
    pub reports: ReportConfig,
    /// The addresses (`[gazetteer] file`), if configured.
    pub gazetteer: Option<std::sync::Arc<opcenter_core::gazetteer::Gazetteer>>,
}

/// What a node does in a region on NATS (`cluster.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    /// The region's single writer only (not built yet: refused at start).
    Engine,
    /// A stateless hub only (not built yet: refused at start).
    Hub,
    /// Engine and hub in one process, the journal on the region's stream.
    Both,
}

impl ClusterRole {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Engine => "engine",
            ClusterRole::Hub => "hub",
            ClusterRole::Both => "both",
        }
    }
}

/// `cluster.*`, checked.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `cluster.nats`: the NATS servers' URLs (`nats://host:port`).
    pub nats: Vec<String>,
    /// `cluster.region`: names the stream `OPC_<region>` and its subjects. On a
    /// national desk: the first of `regions` (hello replies come from it).
    pub region: String,
    /// `cluster.regions` (role `hub` only): a national desk serves every region
    /// named here, each from its own follower and read model. Empty: one region.
    pub regions: Vec<String>,
    /// `cluster.role`.
    pub role: ClusterRole,
    /// `cluster.replicas`: copies of the stream when this node creates it (1 or 3).
    pub replicas: usize,
    /// `cluster.publish_deadline_s`: how long an append is retried (leader
    /// elections) before the journal is declared failed.
    pub publish_deadline: std::time::Duration,
    /// `cluster.command_timeout_s` (role `hub`): how long a forwarded command is
    /// retried (same call id) while no engine answers, before `internal`.
    pub command_timeout: std::time::Duration,
    /// `cluster.lease_ttl_s` (roles `engine`, `both`): the engine lease's time to
    /// live; the holder renews it every third of it, a standby takes it once it lapses.
    pub lease_ttl: std::time::Duration,
    /// `cluster.lease_poll_ms` (roles `engine`, `both`): how often a standby
    /// tries to take the lease while another node holds it; the time a lapse
    /// goes unnoticed is at most this.
    pub lease_poll: std::time::Duration,
    /// `cluster.node`: this process's name in the lease (default `<host>-<pid>`).
    pub node: String,
    /// `cluster.pipeline_depth` (roles `engine`, `both`): batches appended to the
    /// stream at once, each held (replies and events) until its publish ack.
    pub pipeline_depth: usize,
    /// `cluster.probe_interval_ms` and `cluster.probe_timeout_ms`: how the
    /// connection carrying the commands (an engine's to the hubs, a hub's to the
    /// engine) is probed through its server; a probe not back in time counts
    /// it stuck, and the node moves to a new connection. `None`:
    /// interval 0, not probed.
    pub probe: Option<opcenter_cluster::ProbeSettings>,
}

/// `hub.*`, checked.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `hub.max_frame_bytes`.
    pub max_frame_bytes: usize,
    /// `hub.history_events`.
    pub history_events: u64,
    /// `hub.session_queue_bytes`.
    pub session_queue_bytes: usize,
    /// `hub.position_interval_ms`.
    pub position_interval: std::time::Duration,
    /// `hub.hello_timeout_s`.
    pub hello_timeout: std::time::Duration,
    /// `hub.ping_interval_s`.
    pub ping_interval: std::time::Duration,
    /// `hub.idle_timeout_s`.
    pub idle_timeout: std::time::Duration,
    /// `hub.max_bad_frames`.
    pub max_bad_frames: u32,
    /// `hub.engine_queue`.
    pub engine_queue: usize,
    /// `hub.session_rate_per_s`: commands per second one session may send on
    /// average (0 = unlimited); beyond it, `rate_limited`.
    pub session_rate_per_s: f64,
    /// `hub.session_burst`: how many commands a session may send at once.
    pub session_burst: u32,
    /// `hub.max_connections`: open WebSocket sessions at most.
    pub max_connections: usize,
    /// `hub.reads_nice`: how much lower (0..=19, 0 = unchanged) the read-model
    /// thread's OS scheduling priority is than the rest of the process.
    pub reads_nice: i32,
    /// `hub.engine_nice`: how much higher (−20..=0, 0 = unchanged) the engine
    /// thread's OS scheduling priority is than the rest of the process (needs
    /// `CAP_SYS_NICE`; refused, it is logged and the thread runs unchanged).
    pub engine_nice: i32,
    /// `hub.memory_history_events`: the newest events kept decoded in memory
    /// for `since` resumes (at most `history_events`); older ones are read from
    /// the journal.
    pub memory_history_events: usize,
    /// `hub.replay_step_events`: events a `since` replay serves per step before
    /// the read model serves commits, snapshots and positions again.
    pub replay_step_events: usize,
    /// `hub.frame_cache_bytes`: bytes (estimated) of event frames kept for
    /// `since` replays, so N resumes of a range encode each event once.
    pub frame_cache_bytes: usize,
    /// `hub.reads_share`: the share (0 < x ≤ 1) of one core's time the read
    /// thread may spend on snapshots, replays and lookups; 1 = no pacing.
    pub reads_share: f64,
}

/// `console.*`, checked.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// Initial map centre.
    pub center: opcenter_core::Location,
    /// Half-width of the initial view, metres.
    pub radius_m: f64,
    /// District boundaries (GeoJSON text), read at start-up.
    pub districts: Option<String>,
    /// `console.streets_file`: the streets layer (a GeoJSON FeatureCollection,
    /// compact text), read and checked at start-up; served by `GET /v1/streets`.
    pub streets: Option<String>,
}

/// Reads `console.streets_file`: a GeoJSON FeatureCollection whose features are
/// LineStrings or MultiLineStrings (anything else would not draw as a street).
fn load_streets(path: &Path) -> Result<String, SettingsError> {
    let bad = |problem: String| SettingsError::Invalid {
        key: "console.streets_file",
        problem: format!("{}: {problem}", path.display()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if doc["type"] != "FeatureCollection" {
        return Err(bad("not a GeoJSON FeatureCollection".into()));
    }
    let features = doc["features"]
        .as_array()
        .ok_or_else(|| bad("no `features` array".into()))?;
    for (i, f) in features.iter().enumerate() {
        let kind = &f["geometry"]["type"];
        if kind != "LineString" && kind != "MultiLineString" {
            return Err(bad(format!(
                "feature {i}: geometry {kind} is not a LineString or MultiLineString"
            )));
        }
    }
    Ok(doc.to_string())
}

/// Reads every `[[zones]]` file and checks the whole as the engine will use
/// it (shapes, beats naming known districts).
fn load_zones(entries: &[RawZones]) -> Result<Vec<opcenter_core::zones::Zone>, SettingsError> {
    let mut zones = Vec::new();
    for z in entries {
        let at = |e: String| SettingsError::Invalid {
            key: "zones.file",
            problem: format!("{}: {e}", z.file.display()),
        };
        let text = std::fs::read_to_string(&z.file).map_err(|e| at(e.to_string()))?;
        let how = opcenter_proto::geojson::ZoneFile {
            kind: z.kind,
            name_property: &z.name_property,
            district_property: &z.district_property,
        };
        zones.extend(opcenter_proto::geojson::zones_from_geojson(&text, how).map_err(at)?);
    }
    opcenter_core::zones::ZoneMap::new(zones.clone()).map_err(|e| SettingsError::Invalid {
        key: "zones",
        problem: e.to_string(),
    })?;
    Ok(zones)
}

/// A run card's trigger and plan hold values an incident.create could hold,
/// and name only configured agencies and zones.
fn check_run_card(
    c: &opcenter_core::RunCard,
    agencies: &[String],
    zones: &[opcenter_core::zones::Zone],
) -> Result<(), SettingsError> {
    use opcenter_core::check;
    let bad = |problem: String| SettingsError::Invalid {
        key: "run_cards",
        problem: format!("card {:?}: {problem}", c.name),
    };
    if c.name.trim().is_empty() {
        return Err(bad("needs a name".into()));
    }
    if let Some(p) = c.priority {
        check::priority(i64::from(p)).map_err(|e| bad(e.to_string()))?;
    }
    if let Some(n) = c.units_needed {
        check::units_needed(i64::from(n)).map_err(|e| bad(e.to_string()))?;
    }
    if let Some(r) = &c.required {
        check::capabilities(r).map_err(|e| bad(e.to_string()))?;
    }
    if let Some(a) = &c.agencies {
        check::agencies(a).map_err(|e| bad(e.to_string()))?;
        if let Some(x) = a.iter().find(|x| !agencies.contains(x)) {
            return Err(bad(format!("{x:?} is not one of dispatch.agencies")));
        }
    }
    if let Some([from, to]) = c.hours
        && (from > 23 || to > 24 || from == to)
    {
        return Err(bad(
            "hours must be [from, to] with from in 0..=23, to in 0..=24, from != to".into(),
        ));
    }
    for z in [&c.district, &c.beat].into_iter().flatten() {
        if !zones.iter().any(|x| &x.id == z) {
            return Err(bad(format!("{z:?} is not a zone")));
        }
    }
    Ok(())
}

impl Settings {
    /// Loads the embedded defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Self::load_with_env(file, true)
    }

    /// Like [`Settings::load`]; `env: false` ignores the environment (tests).
    pub fn load_with_env(file: Option<&Path>, env: bool) -> Result<Settings, SettingsError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        if env {
            builder = builder.add_source(
                Environment::with_prefix("OPCENTER")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(config_env(std::env::vars()))),
            );
        }
        let mut raw: Raw = builder.build()?.try_deserialize()?;
        // A `[[zones]]` file is found beside the config file that names it.
        if let Some(dir) = file.and_then(Path::parent) {
            for z in raw.zones.iter_mut().filter(|z| z.file.is_relative()) {
                z.file = dir.join(&z.file);
            }
            // So is the streets layer.
            if let Some(f) = raw.console.streets_file.as_mut().filter(|f| f.is_relative()) {
                *f = dir.join(&*f);
            }
            if let Some(g) = raw.gazetteer.file.as_mut().filter(|g| g.is_relative()) {
                *g = dir.join(&*g);
            }
        }
        Self::check(raw)
    }

    /// Settings from a TOML string layered over the defaults (no environment).
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        let raw: Raw = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(File::from_str(text, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        Self::check(raw)
    }

    fn check(raw: Raw) -> Result<Settings, SettingsError> {
        let invalid = |key: &'static str, problem: &str| SettingsError::Invalid {
            key,
            problem: problem.into(),
        };
        let listen: SocketAddr = raw.server.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                &format!("{e} (want HOST:PORT, e.g. 127.0.0.1:8102)"),
            )
        })?;
        if raw.auth.jwt_secret.len() < MIN_SECRET_BYTES {
            return Err(invalid(
                "auth.jwt_secret",
                &format!("must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"),
            ));
        }
        // Anyone who read the source can sign any token with it: fine on a
        // developer's own machine, never reachable from a network.
        if raw.auth.jwt_secret == DEV_SECRET && !listen.ip().is_loopback() {
            return Err(invalid(
                "auth.jwt_secret",
                &format!(
                    "is the development secret, which is refused unless server.listen is a \
                     loopback address (it is {listen}): set a secret of your own"
                ),
            ));
        }
        for (key, v) in [
            ("auth.issuer", &raw.auth.issuer),
            ("auth.audience", &raw.auth.audience),
        ] {
            if v.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(key, "must not be empty when set"));
            }
        }
        let d = &raw.dispatch;
        if d.ack_timeout_s == 0 {
            return Err(invalid("dispatch.ack_timeout_s", "must be > 0"));
        }
        for (key, v) in [
            ("dispatch.max_distance_m", d.max_distance_m),
            ("dispatch.duplicate_radius_m", d.duplicate_radius_m),
            ("dispatch.max_speed_mps", d.max_speed_mps),
            ("dispatch.index_slack_m", d.index_slack_m),
            ("dispatch.post_radius_m", d.post_radius_m),
            ("dispatch.beat_preference_m", d.beat_preference_m),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(SettingsError::Invalid {
                    key,
                    problem: format!("{v} must be a finite number ≥ 0"),
                });
            }
        }
        for (key, list) in [
            ("dispatch.agencies", &d.agencies),
            ("dispatch.default_agencies", &d.default_agencies),
        ] {
            opcenter_core::check::agencies(list).map_err(|e| invalid(key, &e.to_string()))?;
        }
        if let Some(a) = d.default_agencies.iter().find(|a| !d.agencies.contains(a)) {
            return Err(invalid(
                "dispatch.default_agencies",
                &format!("{a:?} is not one of dispatch.agencies"),
            ));
        }
        if d.max_notes == 0 {
            return Err(invalid("dispatch.max_notes", "must be > 0"));
        }
        if d.key_ttl_h == 0 {
            return Err(invalid("dispatch.key_ttl_h", "must be > 0"));
        }
        if d.tick_ms == 0 || d.tick_ms > 10_000 {
            return Err(invalid("dispatch.tick_ms", "must be in 1..=10000"));
        }
        let h = &raw.hub;
        if h.max_frame_bytes < 1024 {
            return Err(invalid("hub.max_frame_bytes", "must be ≥ 1024"));
        }
        if h.session_queue_bytes < h.max_frame_bytes {
            return Err(invalid(
                "hub.session_queue_bytes",
                "must be ≥ hub.max_frame_bytes",
            ));
        }
        if h.engine_queue == 0 || h.position_interval_ms == 0 || h.ping_interval_s == 0 {
            return Err(invalid(
                "hub",
                "engine_queue, position_interval_ms and ping_interval_s must be > 0",
            ));
        }
        if h.idle_timeout_s <= h.ping_interval_s {
            return Err(invalid(
                "hub.idle_timeout_s",
                "must be longer than hub.ping_interval_s",
            ));
        }
        if !h.session_rate_per_s.is_finite() || h.session_rate_per_s < 0.0 {
            return Err(invalid(
                "hub.session_rate_per_s",
                "must be a finite number ≥ 0 (0 = unlimited)",
            ));
        }
        if h.max_connections == 0 {
            return Err(invalid("hub.max_connections", "must be > 0"));
        }
        if !(h.reads_share > 0.0 && h.reads_share <= 1.0) {
            return Err(invalid("hub.reads_share", "must be > 0 and ≤ 1 (1 = no pacing)"));
        }
        if h.replay_step_events == 0 {
            return Err(invalid("hub.replay_step_events", "must be > 0"));
        }
        // Negative would raise the thread above the engine (and needs privileges).
        if !(0..=19).contains(&h.reads_nice) {
            return Err(invalid("hub.reads_nice", "must be between 0 (unchanged) and 19"));
        }
        // Positive would put the engine below the sessions it serves.
        if !(-20..=0).contains(&h.engine_nice) {
            return Err(invalid(
                "hub.engine_nice",
                "must be between -20 and 0 (unchanged)",
            ));
        }
        if raw.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be > 0"));
        }
        if !raw.http.reports_per_s.is_finite() || raw.http.reports_per_s < 0.0 {
            return Err(invalid(
                "http.reports_per_s",
                "must be a finite number ≥ 0 (0 = unlimited)",
            ));
        }
        if raw.http.metrics_token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("http.metrics_token", "must not be empty when set"));
        }
        let center = opcenter_core::Location::new(raw.console.center_lat, raw.console.center_lon)
            .map_err(|e| invalid("console.center_lat", &e.to_string()))?;
        let districts = match &raw.console.districts_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| invalid("console.districts_file", &format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        let streets = raw
            .console
            .streets_file
            .as_deref()
            .map(load_streets)
            .transpose()?;
        let cluster = match raw.cluster {
            None => None,
            Some(c) => Some(check_cluster(c)?),
        };
        let reports = check_reports(raw.reports)?;
        for unit in &raw.roster {
            if unit.id.is_empty() {
                return Err(invalid("roster", "every roster unit needs an id"));
            }
            if let Some(loc) = &unit.location {
                loc.validate()
                    .map_err(|e| invalid("roster.location", &e.to_string()))?;
            }
            if let Some(a) = unit.agency.as_ref().filter(|a| !d.agencies.contains(a)) {
                return Err(invalid(
                    "roster.agency",
                    &format!("unit {}: {a:?} is not one of dispatch.agencies", unit.id),
                ));
            }
            if unit
                .kind
                .as_deref()
                .is_some_and(opcenter_core::model::is_post_kind)
                && unit.location.is_none()
            {
                return Err(invalid(
                    "roster.location",
                    &format!("post {} (kind {:?}) needs its fixed location", unit.id, unit.kind),
                ));
            }
        }
        let zones = load_zones(&raw.zones)?;
        let gazetteer = load_gazetteer(raw.gazetteer.file.as_deref())?;
        if d.local_offset_min.abs() > 14 * 60 {
            return Err(invalid(
                "dispatch.local_offset_min",
                "must be within ±840 (±14 h)",
            ));
        }
        for c in &raw.run_cards {
            check_run_card(c, &d.agencies, &zones)?;
        }
        let s = |v: u64| (v as i64).saturating_mul(1000);
        let engine = EngineConfig {
            ack_timeout_ms: s(d.ack_timeout_s),
            max_position_age_ms: s(d.max_position_age_s),
            max_distance_m: d.max_distance_m,
            emergency_units: d.emergency_units,
            duplicate_radius_m: d.duplicate_radius_m,
            duplicate_window_ms: s(d.duplicate_window_s),
            max_clock_skew_ms: s(d.max_clock_skew_s),
            max_speed_mps: d.max_speed_mps,
            index_slack_m: d.index_slack_m,
            offline_grace_ms: s(d.offline_grace_s),
            max_notes: d.max_notes,
            retain_closed_ms: s(raw.storage.retain_closed_h.saturating_mul(3600)),
            key_ttl_ms: s(d.key_ttl_h.saturating_mul(3600)),
            agencies: d.agencies.clone(),
            default_agencies: d.default_agencies.clone(),
            post_radius_m: d.post_radius_m,
            beat_preference_m: d.beat_preference_m,
            zones,
            run_cards: raw.run_cards,
            local_offset_min: d.local_offset_min,
            roster: raw.roster,
        };
        let secs = std::time::Duration::from_secs;
        let millis = std::time::Duration::from_millis;
        Ok(Settings {
            listen,
            shutdown_timeout: secs(raw.server.shutdown_timeout_s),
            data_dir: raw.storage.data_dir,
            fsync: raw.storage.fsync,
            snapshot_every_events: raw.storage.snapshot_every_events.max(1),
            audit_checkpoint_records: raw.storage.audit_checkpoint_records,
            audit_checkpoint_interval: secs(raw.storage.audit_checkpoint_s),
            accept_broken_chain: false,
            jwt_secret: raw.auth.jwt_secret,
            expect: opcenter_proto::auth::Expect {
                issuer: raw.auth.issuer,
                audience: raw.auth.audience,
            },
            engine,
            tick: millis(d.tick_ms),
            hub: HubSettings {
                max_frame_bytes: h.max_frame_bytes,
                history_events: h.history_events,
                session_queue_bytes: h.session_queue_bytes,
                position_interval: millis(h.position_interval_ms),
                hello_timeout: secs(h.hello_timeout_s),
                ping_interval: secs(h.ping_interval_s),
                idle_timeout: secs(h.idle_timeout_s),
                max_bad_frames: h.max_bad_frames.max(1),
                session_rate_per_s: h.session_rate_per_s,
                session_burst: h.session_burst.max(1),
                engine_queue: h.engine_queue,
                max_connections: h.max_connections,
                reads_nice: h.reads_nice,
                engine_nice: h.engine_nice,
                memory_history_events: h.memory_history_events.min(h.history_events as usize),
                replay_step_events: h.replay_step_events,
                frame_cache_bytes: h.frame_cache_bytes,
                reads_share: h.reads_share,
            },
            max_body_bytes: raw.http.max_body_bytes,
            reports_rate: (raw.http.reports_per_s, raw.http.reports_burst.max(1)),
            metrics_token: raw.http.metrics_token,
            console: ConsoleSettings {
                center,
                radius_m: raw.console.radius_m,
                districts,
                streets,
            },
            cluster,
            reports,
            gazetteer,
        })
    }

    /// True when running with the development secret.
    pub fn uses_dev_secret(&self) -> bool {
        self.jwt_secret == DEV_SECRET
    }

    /// Verifies a session or API token the way this server is configured:
    /// signature, `exp`, `nbf`, and `auth.issuer` / `auth.audience` when set.
    pub fn verify_token(
        &self,
        token: &str,
    ) -> Result<opcenter_proto::auth::Claims, opcenter_proto::auth::AuthError> {
        opcenter_proto::auth::verify_token_expecting(self.jwt_secret.as_bytes(), token, &self.expect)
    }
}

/// `<hostname>-<pid>`: unique per process on a machine, readable in the lease.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

/// `Ok` if `value` of `key` is in `range`, else the error naming both.
fn within(key: &'static str, value: u64, range: std::ops::RangeInclusive<u64>) -> Result<(), SettingsError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(SettingsError::Invalid {
        key,
        problem: format!("{value}: want {}..={}", range.start(), range.end()),
    })
}

fn check_cluster(c: RawCluster) -> Result<ClusterSettings, SettingsError> {
    let invalid = |key: &'static str, problem: String| SettingsError::Invalid { key, problem };
    if c.nats.is_empty() {
        return Err(invalid(
            "cluster.nats",
            "list at least one server, e.g. [\"nats://127.0.0.1:4222\"]".into(),
        ));
    }
    for url in &c.nats {
        if url.contains(',') || url.trim().is_empty() {
            return Err(invalid("cluster.nats", format!("{url:?}: one URL per list item")));
        }
    }
    let region_ok = |r: &str| {
        !r.is_empty()
            && r.len() <= 64
            && r.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    };
    let bad_region = |key, r: &str| {
        invalid(
            key,
            format!("{r:?}: 1..=64 letters, digits, '_' or '-' (it names a stream)"),
        )
    };
    let regions = c.regions.unwrap_or_default();
    if let Some(r) = regions.iter().find(|r| !region_ok(r)) {
        return Err(bad_region("cluster.regions", r));
    }
    if regions.iter().enumerate().any(|(i, r)| regions[..i].contains(r)) {
        return Err(invalid("cluster.regions", "a region is named twice".into()));
    }
    let region = match (c.region, regions.first()) {
        (Some(r), _) if !region_ok(&r) => return Err(bad_region("cluster.region", &r)),
        (Some(r), Some(first)) if &r != first => {
            return Err(invalid(
                "cluster.region",
                format!("{r:?}: on a desk, omit it or name the first of cluster.regions ({first:?})"),
            ));
        }
        (Some(r), _) => r,
        (None, Some(first)) => first.clone(),
        (None, None) => {
            return Err(invalid(
                "cluster.region",
                "missing: name the region (or, on a national desk, list cluster.regions)".into(),
            ));
        }
    };
    let role = match c.role.as_str() {
        "engine" => ClusterRole::Engine,
        "hub" => ClusterRole::Hub,
        "both" => ClusterRole::Both,
        other => {
            return Err(invalid(
                "cluster.role",
                format!("{other:?}: want \"engine\", \"hub\" or \"both\""),
            ));
        }
    };
    if !regions.is_empty() && role != ClusterRole::Hub {
        return Err(invalid(
            "cluster.regions",
            "a national desk is a hub: give role = \"hub\" (an engine writes one region)".into(),
        ));
    }
    if c.replicas != 1 && c.replicas != 3 {
        return Err(invalid(
            "cluster.replicas",
            format!("{}: want 1 or 3", c.replicas),
        ));
    }
    // The stream's duplicate window is 2 minutes: a retry after it could store twice.
    if c.publish_deadline_s == 0 || c.publish_deadline_s > 90 {
        return Err(invalid(
            "cluster.publish_deadline_s",
            format!(
                "{}: want 1..=90 (below the stream's 2-minute duplicate window)",
                c.publish_deadline_s
            ),
        ));
    }
    // A retry must reach the engine while it still remembers the call.
    within("cluster.command_timeout_s", c.command_timeout_s, 1..=120)?;
    within("cluster.lease_ttl_s", c.lease_ttl_s, 1..=60)?;
    // A poll slower than the lease lives would miss whole lapses' worth of time.
    within(
        "cluster.lease_poll_ms",
        c.lease_poll_ms,
        10..=c.lease_ttl_s * 1_000,
    )?;
    within("cluster.pipeline_depth", c.pipeline_depth as u64, 1..=64)?;
    if c.probe_interval_ms != 0 && !(50..=60_000).contains(&c.probe_interval_ms) {
        return Err(invalid(
            "cluster.probe_interval_ms",
            format!("{}: want 0 (off) or 50..=60000", c.probe_interval_ms),
        ));
    }
    within("cluster.probe_timeout_ms", c.probe_timeout_ms, 100..=60_000)?;
    let probe = (c.probe_interval_ms != 0).then(|| opcenter_cluster::ProbeSettings {
        every: std::time::Duration::from_millis(c.probe_interval_ms),
        timeout: std::time::Duration::from_millis(c.probe_timeout_ms),
    });
    let node = match c.node {
        Some(n) if n.trim().is_empty() || n.len() > 128 => {
            return Err(invalid("cluster.node", format!("{n:?}: want 1..=128 characters")));
        }
        Some(n) => n,
        None => default_node_name(),
    };
    Ok(ClusterSettings {
        lease_ttl: std::time::Duration::from_secs(c.lease_ttl_s),
        lease_poll: std::time::Duration::from_millis(c.lease_poll_ms),
        node,
        pipeline_depth: c.pipeline_depth,
        probe,
        nats: c.nats,
        region,
        regions,
        role,
        replicas: c.replicas,
        publish_deadline: std::time::Duration::from_secs(c.publish_deadline_s),
        command_timeout: std::time::Duration::from_secs(c.command_timeout_s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load() {
        let s = Settings::load_with_env(None, false).unwrap();
        assert_eq!(s.listen.port(), 8102);
        assert!(s.uses_dev_secret());
        assert_eq!(s.hub.max_frame_bytes, 65_536);
        assert_eq!(s.hub.history_events, 100_000);
        assert_eq!(s.engine.emergency_units, 2);
        assert_eq!(s.engine.max_notes, 200);
        assert_eq!(s.engine.retain_closed_ms, 24 * 3_600_000);
        assert_eq!(s.engine.key_ttl_ms, 72 * 3_600_000);
    }

    #[test]
    fn reports_section_is_checked() {
        let s = Settings::from_toml("[reports]\nshift_starts = [\"20:00\", \"07:30\"]").unwrap();
        assert_eq!(s.reports.shift_starts_min, vec![450, 1200]);
        assert_eq!(s.reports.target_s[0], 420);
        for (text, key) in [
            ("[reports]\nshift_starts = [\"25:00\"]", "reports.shift_starts"),
            ("[reports]\nshift_starts = []", "reports.shift_starts"),
            (
                "[reports]\nshift_starts = [\"08:00\", \"08:00\"]",
                "reports.shift_starts",
            ),
            ("[reports]\nutc_offset_min = 900", "reports.utc_offset_min"),
            ("[reports.target_s]\np3 = 0", "reports.target_s"),
        ] {
            let err = Settings::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(Settings::from_toml("[reports]\nfoo = 1").is_err());
    }

    #[test]
    fn every_file_in_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Settings::load_with_env(Some(&path), false)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn overrides_and_validation() {
        let s = Settings::from_toml("[server]\nlisten = \"127.0.0.1:0\"\n[dispatch]\nack_timeout_s = 5\n")
            .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.engine.ack_timeout_ms, 5000);
        let e = Settings::from_toml("[hub]\nmax_frame_bytes = 10\n").unwrap_err();
        assert!(e.to_string().contains("hub.max_frame_bytes"), "{e}");
        let e = Settings::from_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("server.listen"), "{e}");
        assert_eq!(Settings::from_toml("").unwrap().hub.reads_nice, 0);
        for bad in ["-1", "20"] {
            let e = Settings::from_toml(&format!("[hub]\nreads_nice = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("hub.reads_nice"), "{e}");
        }
        assert_eq!(Settings::from_toml("").unwrap().hub.engine_nice, 0);
        let raised = Settings::from_toml("[hub]\nengine_nice = -10\n").unwrap();
        assert_eq!(raised.hub.engine_nice, -10);
        for bad in ["1", "-21"] {
            let e = Settings::from_toml(&format!("[hub]\nengine_nice = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("hub.engine_nice"), "{e}");
        }
        let hub = Settings::from_toml("").unwrap().hub;
        assert_eq!(
            (hub.reads_share, hub.replay_step_events, hub.frame_cache_bytes),
            (0.2, 2048, 64 << 20)
        );
        for (key, bad) in [
            ("reads_share", "0.0"),
            ("reads_share", "1.5"),
            ("replay_step_events", "0"),
        ] {
            let e = Settings::from_toml(&format!("[hub]\n{key} = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains(&format!("hub.{key}")), "{e}");
        }
        let s = Settings::from_toml("[hub]\nhistory_events = 500\nmemory_history_events = 20000\n").unwrap();
        assert_eq!(
            s.hub.memory_history_events, 500,
            "never more in memory than kept at all"
        );
    }

    #[test]
    fn agencies_and_posts_are_checked_by_name() {
        let ok = "[dispatch]\nagencies = [\"police\", \"national_guard\"]\n\
                  default_agencies = [\"police\"]\npost_radius_m = 300.0\n\
                  [[roster]]\nid = \"NG-1\"\nagency = \"national_guard\"\n\
                  [[roster]]\nid = \"MP-1\"\nkind = \"modular_post\"\npost = 1\n\
                  location = { lat = 51.2, lon = 51.4 }\n";
        let s = Settings::from_toml(ok).unwrap();
        assert_eq!(s.engine.agencies, ["police", "national_guard"]);
        assert_eq!(s.engine.post_radius_m, 300.0);
        assert_eq!(s.engine.roster[1].post, Some(1));
        let cards =
            "[[run_cards]]\nname = \"night\"\ncategory = \"fight\"\nhours = [22, 6]\nunits_needed = 3\n";
        assert_eq!(
            Settings::from_toml(cards).unwrap().engine.run_cards[0].hours,
            Some([22, 6])
        );
        let shift = "[[roster]]\nid = \"N\"\non_duty = \"20:00-08:00\"\n";
        assert_eq!(
            Settings::from_toml(shift).unwrap().engine.roster[0].on_duty,
            opcenter_core::DutyWindow::parse("20:00-08:00")
        );
        for (bad, key) in [
            ("[dispatch]\nagencies = []\n", "dispatch.agencies"),
            (
                "[dispatch]\ndefault_agencies = [\"army\"]\n",
                "dispatch.default_agencies",
            ),
            ("[dispatch]\npost_radius_m = -1.0\n", "dispatch.post_radius_m"),
            ("[[roster]]\nid = \"X\"\nagency = \"army\"\n", "roster.agency"),
            ("[[roster]]\nid = \"X\"\non_duty = \"8-20\"\n", "on_duty"),
            ("[[roster]]\nid = \"X\"\non_duty = \"08:00-24:00\"\n", "on_duty"),
            (
                "[[roster]]\nid = \"DP\"\nkind = \"district_post\"\n",
                "roster.location",
            ),
            ("[[run_cards]]\nname = \"c\"\nunits_needed = 0\n", "units_needed"),
            ("[[run_cards]]\nname = \"c\"\nagencies = [\"army\"]\n", "army"),
            ("[[run_cards]]\nname = \"c\"\nhours = [25, 2]\n", "hours"),
            ("[[run_cards]]\nname = \"c\"\nbeat = \"nowhere\"\n", "nowhere"),
            ("[[run_cards]]\nname = \"c\"\ncolour = \"red\"\n", "colour"),
            (
                "[dispatch]\nlocal_offset_min = 9999\n",
                "dispatch.local_offset_min",
            ),
        ] {
            let e = Settings::from_toml(bad).unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn zones_files_load_and_a_beat_must_name_a_known_district() {
        let dir = std::env::temp_dir().join(format!("opcenter-zones-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let square = r#"[[[51.3,51.2],[51.4,51.2],[51.4,51.3],[51.3,51.3],[51.3,51.2]]]"#;
        let feature = |name: &str, district: &str| {
            format!(
                r#"{{"type":"Feature","properties":{{"name":"{name}","district":"{district}"}},"geometry":{{"type":"Polygon","coordinates":{square}}}}}"#
            )
        };
        let d = dir.join("d.geojson");
        std::fs::write(&d, feature("Central", "")).unwrap();
        let b = dir.join("b.geojson");
        std::fs::write(
            &b,
            format!(
                r#"{{"type":"FeatureCollection","features":[{}]}}"#,
                feature("C-1", "Central")
            ),
        )
        .unwrap();
        let bad = dir.join("bad.geojson");
        std::fs::write(&bad, feature("X-1", "Nowhere")).unwrap();
        let entry = |f: &Path, kind: &str| {
            format!(
                "[[zones]]\nfile = {:?}\nkind = \"{kind}\"\n",
                f.display().to_string()
            )
        };
        let s = Settings::from_toml(&(entry(&d, "district") + &entry(&b, "beat"))).unwrap();
        assert_eq!(s.engine.zones.len(), 2);
        assert_eq!(s.engine.zones[1].district.as_deref(), Some("Central"));
        let e = Settings::from_toml(&(entry(&d, "district") + &entry(&bad, "beat"))).unwrap_err();
        assert!(e.to_string().contains("Nowhere"), "{e}");
        let e = Settings::from_toml(&entry(&dir.join("missing.geojson"), "beat")).unwrap_err();
        assert!(e.to_string().contains("zones.file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_streets_file_must_be_lines() {
        let dir = std::env::temp_dir().join(format!("opcenter-streets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = |f: &Path| format!("[console]\nstreets_file = {:?}\n", f.display().to_string());
        // The example region's file loads.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/uralsk-streets.geojson");
        let s = Settings::from_toml(&config(&shipped)).unwrap();
        assert!(s.console.streets.unwrap().contains("Chagan river"));
        let polygon = dir.join("polygon.geojson");
        std::fs::write(
            &polygon,
            r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},
               "geometry":{"type":"Polygon","coordinates":[[[51.3,51.2],[51.4,51.2],[51.4,51.3],[51.3,51.2]]]}}]}"#,
        )
        .unwrap();
        for bad in [polygon, dir.join("missing.geojson")] {
            let e = Settings::from_toml(&config(&bad)).unwrap_err();
            assert!(e.to_string().contains("console.streets_file"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_sections_are_refused_by_name() {
        let e = Settings::from_toml("[hub]\nmax_conections = 10\n").unwrap_err();
        assert!(e.to_string().contains("max_conections"), "{e}");
        let e = Settings::from_toml("[hubb]\nmax_connections = 10\n").unwrap_err();
        assert!(e.to_string().contains("hubb"), "{e}");
        let e = Settings::from_toml("listen = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn roster_entries_are_checked_like_every_section() {
        let post = "[[roster]]\nid = \"POST-1\"\nkind = \"post\"\ntablet = false\n\
                    location = { lat = 51.23, lon = 51.38 }\n";
        let s = Settings::from_toml(post).unwrap();
        let unit = &s.engine.roster[0];
        assert_eq!((unit.id.as_str(), unit.tablet), ("POST-1", false));
        assert_eq!(unit.location.map(|l| (l.lat, l.lon)), Some((51.23, 51.38)));
        let e = Settings::from_toml(&format!("{post}capabilites = [\"k9\"]\n")).unwrap_err();
        assert!(e.to_string().contains("capabilites"), "{e}");
        let e = Settings::from_toml(
            "[[roster]]\nid = \"POST-1\"\nlocation = { lat = 1.0, lon = 2.0, alt = 3.0 }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("alt"), "{e}");
    }

    #[test]
    fn only_section_key_variables_are_config() {
        let vars = [
            ("OPCENTER_BIN", "target/debug/opcenter"),
            ("OPCENTER_HUB__MAX_CONNECTIONS", "5"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let env = config_env(vars.into_iter());
        assert_eq!(env.len(), 1);
        assert!(env.contains_key("OPCENTER_HUB__MAX_CONNECTIONS"));
    }

    #[test]
    fn secrets_are_long_and_the_dev_secret_stays_on_loopback() {
        let e =
            Settings::from_toml("[auth]\njwt_secret = \"short-secret-31-bytes-long-xxxx\"\n").unwrap_err();
        assert!(e.to_string().contains("auth.jwt_secret"), "{e}");
        Settings::from_toml("[auth]\njwt_secret = \"a-secret-of-exactly-32-bytes-abc\"\n").unwrap();
        for listen in ["0.0.0.0:8102", "192.0.2.1:8102", "[::]:8102"] {
            let e = Settings::from_toml(&format!("[server]\nlisten = \"{listen}\"\n")).unwrap_err();
            assert!(e.to_string().contains("auth.jwt_secret"), "{listen}: {e}");
        }
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            assert!(
                Settings::from_toml(&format!("[server]\nlisten = \"{listen}\"\n"))
                    .unwrap()
                    .uses_dev_secret()
            );
        }
        let own =
            "[server]\nlisten = \"0.0.0.0:0\"\n[auth]\njwt_secret = \"a-secret-of-exactly-32-bytes-abc\"\n";
        assert!(!Settings::from_toml(own).unwrap().uses_dev_secret());
    }

    #[test]
    fn cluster_section_is_optional_and_checked() {
        assert!(Settings::load_with_env(None, false).unwrap().cluster.is_none());
        let s = Settings::from_toml(
            "[cluster]\nnats = [\"nats://127.0.0.1:4222\", \"nats://127.0.0.1:4223\"]\n\
             region = \"zko\"\nrole = \"both\"\nreplicas = 3\n",
        )
        .unwrap();
        let c = s.cluster.unwrap();
        assert_eq!(c.nats.len(), 2);
        assert_eq!(
            (c.region.as_str(), c.role, c.replicas),
            ("zko", ClusterRole::Both, 3)
        );
        assert_eq!(c.publish_deadline.as_secs(), 30);
        assert_eq!(c.command_timeout.as_secs(), 10);
        assert_eq!(c.lease_poll.as_millis(), 100);
        for (bad, key) in [
            ("nats = []\nregion = \"zko\"\nrole = \"both\"", "cluster.nats"),
            (
                "nats = [\"nats://a:1\"]\nregion = \"zko\"\nrole = \"engine\"\nlease_ttl_s = 0",
                "cluster.lease_ttl_s",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"z.k\"\nrole = \"both\"",
                "cluster.region",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"writer\"",
                "cluster.role",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"both\"\nreplicas = 2",
                "cluster.replicas",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"hub\"\ncommand_timeout_s = 0",
                "cluster.command_timeout_s",
            ),
            (
                "nats = [\"nats://a\"]\nregions = [\"zko\", \"akt\"]\nrole = \"engine\"",
                "cluster.regions",
            ),
            (
                "nats = [\"nats://a\"]\nregions = [\"zko\", \"zko\"]\nrole = \"hub\"",
                "cluster.regions",
            ),
            (
                "nats = [\"nats://a\"]\nregions = [\"zko\", \"a.b\"]\nrole = \"hub\"",
                "cluster.regions",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"akt\"\nregions = [\"zko\", \"akt\"]\nrole = \"hub\"",
                "cluster.region",
            ),
            ("nats = [\"nats://a\"]\nrole = \"hub\"", "cluster.region"),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"both\"\npipeline_depth = 0",
                "cluster.pipeline_depth",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"hub\"\nprobe_interval_ms = 10",
                "cluster.probe_interval_ms",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"hub\"\nprobe_timeout_ms = 0",
                "cluster.probe_timeout_ms",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"engine\"\nlease_poll_ms = 5",
                "cluster.lease_poll_ms",
            ),
            (
                "nats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"engine\"\nlease_ttl_s = 2\nlease_poll_ms = 2001",
                "cluster.lease_poll_ms",
            ),
        ] {
            let e = Settings::from_toml(&format!("[cluster]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
        let desk = Settings::from_toml(
            "[cluster]\nnats = [\"nats://a\"]\nregions = [\"zko\", \"akt\", \"ura\"]\nrole = \"hub\"\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(desk.region, "zko", "the first region is the desk's own");
        assert_eq!(desk.regions, ["zko", "akt", "ura"]);
        let probe = |extra: &str| {
            Settings::from_toml(&format!(
                "[cluster]\nnats = [\"nats://a\"]\nregion = \"zko\"\nrole = \"hub\"\n{extra}"
            ))
            .unwrap()
            .cluster
            .unwrap()
            .probe
        };
        assert_eq!(
            probe(""),
            Some(opcenter_cluster::ProbeSettings {
                every: std::time::Duration::from_millis(250),
                timeout: std::time::Duration::from_secs(1),
            })
        );
        assert_eq!(probe("probe_interval_ms = 0"), None, "0 turns the probe off");
    }
}
