//! The living demo city behind `opcenter demo`: a few hundred patrol cars driving a
//! street grid and reporting positions, ten stationary police posts, and a Poisson
//! stream of 102 calls (through a dispatcher console) and app reports (through
//! `POST /v1/reports`). Units ack their assignments after a human delay, drive to the
//! scene, work it, close it and become available again. A status line on stderr.
//!
//! Owns: the behaviour of simulated people. Must never: touch the server's state other
//! than over the wire, or block shutdown (every task ends when `shutdown` resolves).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use opcenter_proto::auth::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::geo::{self, CallSpec, City, LatLon, POSTS};
use crate::http::HttpClient;
use crate::stats::fmt_us;
use crate::wire::{self, Encoding, Frame, IncidentView, Ws};

/// Options of `opcenter demo`'s simulated city.
#[derive(Debug, Clone, clap::Args)]
pub struct CityArgs {
    /// Number of patrol units.
    #[arg(long, default_value_t = 300)]
    pub patrols: usize,
    /// Number of stationary police posts (at most 10).
    #[arg(long, default_value_t = 10)]
    pub posts: usize,
    /// Number of National Guard units (NG-1 …) patrolling too. Their agency comes
    /// from the server's roster (config/uralsk.toml makes them `national_guard`).
    #[arg(long, default_value_t = 0)]
    pub guard: usize,
    /// Mean seconds between citizens' calls and reports (a Poisson stream).
    #[arg(long, default_value_t = 7.0)]
    pub call_interval: f64,
    /// Share of reports that come through the app (`POST /v1/reports`), not a 102 call.
    #[arg(long, default_value_t = 0.4)]
    pub app_share: f64,
    /// Speed-up of human time (ack delay, time on scene); driving stays at real speeds.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seed of the city (fleet, routes, calls).
    #[arg(long, default_value_t = 102)]
    pub seed: u64,
    /// Seconds between status lines on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    pub status_every: f64,
}

/// Drives the city against the server at `server` until `shutdown` resolves.
pub async fn run_city(
    args: CityArgs,
    server: SocketAddr,
    jwt_secret: Vec<u8>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.time_scale > 0.0, "--time-scale must be positive");
    anyhow::ensure!(args.call_interval > 0.0, "--call-interval must be positive");
    let sh = Arc::new(CityShared {
        server: server.to_string(),
        secret: jwt_secret,
        city: City::URALSK,
        scale: args.time_scale,
        guard: args.guard > 0,
        cancel: CancellationToken::new(),
        frames: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        app_reports: AtomicU64::new(0),
        followed: Mutex::new(None),
        reported: Mutex::new(HashMap::new()),
    });
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut tasks = tokio::task::JoinSet::new();
    let (call_tx, call_rx) = mpsc::channel(64);
    tasks.spawn(console(sh.clone(), call_rx, args.status_every));
    for (i, post) in POSTS.iter().take(args.posts).enumerate() {
        let spec = UnitSpec {
            id: format!("POST-{}", post.code),
            callsign: format!("Post {} ({})", i + 1, post.place),
            kind: "post",
            caps: vec!["patrol", "foot"],
            start: (post.x, post.y),
            speed: WALKING_SPEED,
            stationary: true,
        };
        tasks.spawn(unit(sh.clone(), spec, rng.random()));
    }
    for i in 0..args.patrols {
        let (kind, caps) = geo::fleet_profile(&mut rng);
        let spec = UnitSpec {
            id: format!("P-{}", 101 + i),
            callsign: format!("Berkut {}", 101 + i),
            kind,
            caps,
            start: sh.city.random_xy(&mut rng),
            speed: geo::patrol_speed(&mut rng),
            stationary: false,
        };
        tasks.spawn(unit(sh.clone(), spec, rng.random()));
    }
    for i in 0..args.guard {
        let spec = UnitSpec {
            id: format!("NG-{}", 1 + i),
            callsign: format!("Guard {}", 1 + i),
            kind: "guard_patrol",
            caps: vec!["patrol", "public_order"],
            start: sh.city.random_xy(&mut rng),
            speed: geo::patrol_speed(&mut rng),
            stationary: false,
        };
        tasks.spawn(unit(sh.clone(), spec, rng.random()));
    }
    tasks.spawn(callers(sh.clone(), call_tx, args.clone(), rng.random()));
    tracing::info!(
        patrols = args.patrols,
        posts = args.posts.min(POSTS.len()),
        guard = args.guard,
        "city running"
    );

    shutdown.await;
    sh.cancel.cancel();
    // Sessions close politely; give them a moment, then drop the rest.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

/// A post officer's pace when sent to an incident on foot, m/s.
const WALKING_SPEED: f64 = 1.4;

struct CityShared {
    server: String,
    secret: Vec<u8>,
    city: City,
    scale: f64,
    /// National Guard units are on duty (`--guard`): multi-unit calls may ask for them.
    guard: bool,
    cancel: CancellationToken,
    /// Frames received by every simulated client.
    frames: AtomicU64,
    errors: AtomicU64,
    calls: AtomicU64,
    app_reports: AtomicU64,
    /// The app report a citizen follows (`GET /v1/reports/{key}`) until it is
    /// closed, and the status the app last showed for it, for the status line.
    followed: Mutex<Option<(String, String)>>,
    /// When each call or report (by its idempotency key) was made.
    reported: Mutex<HashMap<String, Instant>>,
}

impl CityShared {
    fn reported_at(&self, key: &str) -> Option<Instant> {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Human time scaled by `--time-scale`.
    fn human(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs / self.scale).max(0.05))
    }
}

/// The citizen's app asks what became of the followed report (`GET
/// /v1/reports/{key}`, the intake token) and keeps the answer's `status`.
async fn follow_report(sh: &CityShared, http: &mut HttpClient, intake: &str) {
    let Some((key, _)) = sh.followed.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return;
    };
    let path = format!("/v1/reports/{key}");
    let status = match http.request("GET", &path, Some(intake), None).await {
        Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into()),
        Ok(r) => format!("HTTP {}", r.status),
        Err(_) => return,
    };
    let mut f = sh.followed.lock().unwrap_or_else(|e| e.into_inner());
    if f.as_ref().is_some_and(|(k, _)| *k == key) {
        *f = Some((key, status));
    }
}

/// A call waiting to be typed in by the dispatcher.
struct Call {
    key: String,
    spec: CallSpec,
    at: LatLon,
}

/// The citizens: a Poisson stream of calls (to the console) and app reports (HTTP).
async fn callers(sh: Arc<CityShared>, calls: mpsc::Sender<Call>, args: CityArgs, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let intake = wire::token(&sh.secret, Role::Intake, "city-app-gateway");
    let mut http = HttpClient::new(&sh.server);
    let mut n = 0u64;
    loop {
        let wait = Duration::from_secs_f64(geo::exp_interval(&mut rng, args.call_interval));
        tokio::select! {
            _ = sh.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        n += 1;
        follow_report(&sh, &mut http, &intake).await;
        let spec = geo::random_call(&mut rng);
        let (x, y) = sh.city.random_incident_xy(&mut rng);
        let at = sh.city.to_latlon(x, y);
        let key = format!("city-{}-{}-{n}", args.seed, wire::now_ms() / 1000);
        sh.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Instant::now());
        if rng.random_bool(args.app_share.clamp(0.0, 1.0)) {
            let body = json!({"key": key, "category": spec.category, "priority": spec.priority,
                "location": {"lat": at.lat, "lon": at.lon}, "description": spec.description,
                "reporter": {"name": "citizen (simulated)", "phone": format!("+7 701 {:03} {:04}", n % 1000, n)}});
            match http
                .request(
                    "POST",
                    "/v1/reports",
                    Some(&intake),
                    Some(body.to_string().as_bytes()),
                )
                .await
            {
                Ok(r) if r.status == 200 || r.status == 201 => {
                    sh.app_reports.fetch_add(1, Relaxed);
                    // The citizen follows one report to its end, then the next.
                    let mut f = sh.followed.lock().unwrap_or_else(|e| e.into_inner());
                    if f.as_ref()
                        .is_none_or(|(_, st)| st == "closed" || st.starts_with("HTTP"))
                    {
                        *f = Some((key.clone(), "sent".into()));
                    }
                }
                Ok(r) => {
                    sh.errors.fetch_add(1, Relaxed);
                    tracing::warn!(status = r.status, body = %String::from_utf8_lossy(&r.body), "app report refused");
                }
                Err(e) => {
                    sh.errors.fetch_add(1, Relaxed);
                    tracing::warn!("app report failed: {e:#}");
                }
            }
        } else if calls.try_send(Call { key, spec, at }).is_err() {
            sh.errors.fetch_add(1, Relaxed);
            tracing::warn!("dispatcher console is not keeping up; call dropped");
        }
    }
}

/// Sliding window of recent samples for medians.
#[derive(Default)]
struct Window(VecDeque<u64>);

impl Window {
    const CAP: usize = 200;
    fn push(&mut self, v: u64) {
        if self.0.len() == Self::CAP {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }
    fn median(&self) -> Option<u64> {
        let mut v: Vec<u64> = self.0.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// What the dispatcher console sees of the city.
#[derive(Default)]
struct Board {
    open: HashMap<String, String>,
    units: HashMap<String, String>,
    dispatched: HashSet<String>,
    arrived: HashSet<String>,
    to_dispatch: Window,
    to_arrival: Window,
}

impl Board {
    fn incident(&mut self, sh: &CityShared, inc: IncidentView) {
        if let Some(t) = inc.key.as_deref().and_then(|k| sh.reported_at(k)) {
            if !inc.units.is_empty() && self.dispatched.insert(inc.id.clone()) {
                self.to_dispatch.push(t.elapsed().as_micros() as u64);
            }
            if inc.status == "on_scene" && self.arrived.insert(inc.id.clone()) {
                self.to_arrival.push(t.elapsed().as_micros() as u64);
            }
        }
        if inc.status == "closed" {
            self.open.remove(&inc.id);
            self.dispatched.remove(&inc.id);
            self.arrived.remove(&inc.id);
            if let Some(k) = &inc.key {
                sh.reported.lock().unwrap_or_else(|e| e.into_inner()).remove(k);
            }
        } else {
            self.open.insert(inc.id, inc.status);
        }
    }
}

/// The dispatcher console: types in 102 calls, watches incidents and units, prints
/// the status line.
async fn console(sh: Arc<CityShared>, mut calls: mpsc::Receiver<Call>, status_every: f64) {
    let token = wire::token(&sh.secret, Role::Dispatcher, "city-dispatcher");
    let mut board = Board::default();
    let mut status =
        (status_every > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(status_every)));
    let mut last_frames = (0u64, Instant::now());
    let mut backoff = Duration::from_millis(500);
    while !sh.cancel.is_cancelled() {
        let mut ws = match console_session(&sh, &token, &mut board).await {
            Ok(ws) => {
                backoff = Duration::from_millis(500);
                ws
            }
            Err(e) => {
                tracing::warn!("city console: {e:#}; retrying in {backoff:?}");
                tokio::select! { _ = sh.cancel.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut next_id = 10u64;
        loop {
            tokio::select! {
                _ = sh.cancel.cancelled() => { let _ = ws.close(None).await; return; }
                m = ws.next() => {
                    let Some(Ok(m)) = m else { break };
                    if matches!(m, Message::Close(_)) { break; }
                    sh.frames.fetch_add(1, Relaxed);
                    let Some(f) = wire::decode::<Frame>(&m) else { continue };
                    match f.ty.as_str() {
                        "event" => {
                            if let Some(inc) = f.incident { board.incident(&sh, inc); }
                            if let Some(u) = f.unit { board.units.insert(u.id, u.status); }
                        }
                        "error" => {
                            sh.errors.fetch_add(1, Relaxed);
                            tracing::warn!(code = ?f.code, message = ?f.message, "console command refused");
                        }
                        _ => {}
                    }
                }
                Some(call) = calls.recv() => {
                    next_id += 1;
                    let mut cmd = json!({"type": "incident.create", "id": next_id, "category": call.spec.category,
                        "priority": call.spec.priority, "location": {"lat": call.at.lat, "lon": call.at.lon},
                        "description": call.spec.description, "source": "call", "key": call.key,
                        "units_needed": call.spec.units_needed});
                    if !call.spec.required.is_empty() {
                        cmd["required"] = json!(call.spec.required);
                    }
                    // Calls needing several units may get the Guard on public-order duty too.
                    if sh.guard && call.spec.units_needed > 1 {
                        cmd["agencies"] = json!(["police", "national_guard"]);
                    }
                    if ws.send(Encoding::Json.encode(&cmd)).await.is_err() { break; }
                    sh.calls.fetch_add(1, Relaxed);
                }
                _ = async { status.as_mut().expect("guarded").tick().await }, if status.is_some() => {
                    let frames = sh.frames.load(Relaxed);
                    let rate = (frames - last_frames.0) as f64 / last_frames.1.elapsed().as_secs_f64().max(1e-3);
                    last_frames = (frames, Instant::now());
                    eprintln!("{}", status_line(&sh, &board, rate));
                }
            }
        }
        tracing::warn!("city console disconnected; reconnecting");
    }
}

fn status_line(sh: &CityShared, b: &Board, events_per_s: f64) -> String {
    let pending = b.open.values().filter(|s| *s == "pending").count();
    let available = b.units.values().filter(|s| *s == "available").count();
    let med = |w: &Window| w.median().map_or("-".to_string(), fmt_us);
    format!(
        "city: open {} (pending {}) | units available {}/{} | report→dispatch p50 {} | report→arrival p50 {} \
         | events {:.0}/s | calls {} app {}{} | errors {}",
        b.open.len(),
        pending,
        available,
        b.units.len(),
        med(&b.to_dispatch),
        med(&b.to_arrival),
        events_per_s,
        sh.calls.load(Relaxed),
        sh.app_reports.load(Relaxed),
        sh.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(String::new(), |(k, st)| format!(" (citizen's app, {k}: {st})")),
        sh.errors.load(Relaxed),
    )
}

/// Connects the console and loads the snapshot of open incidents and all units.
async fn console_session(sh: &CityShared, token: &str, board: &mut Board) -> anyhow::Result<Ws> {
    let (mut ws, _) = wire::connect(&sh.server, token, Encoding::Json).await?;
    let sub = json!({"type": "subscribe", "id": 2, "topics": ["incidents", "units"]});
    ws.send(Encoding::Json.encode(&sub)).await?;
    let (ok, _) = wire::await_reply(&mut ws, 2, Duration::from_secs(30)).await?;
    board.open.clear();
    board.units.clear();
    for inc in ok.incidents.unwrap_or_default() {
        board.incident(sh, inc);
    }
    for u in ok.units.unwrap_or_default() {
        board.units.insert(u.id, u.status);
    }
    Ok(ws)
}

/// Who a simulated unit is.
struct UnitSpec {
    id: String,
    callsign: String,
    kind: &'static str,
    caps: Vec<&'static str>,
    start: (f64, f64),
    speed: f64,
    stationary: bool,
}

/// Where a unit is in handling its incident.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Reading the assignment; acks at the instant.
    Acking(Instant),
    /// Acknowledged, driving (or walking) to the scene.
    EnRoute,
    /// Working the scene until the instant.
    OnScene(Instant),
}

#[derive(Debug, Clone)]
struct Job {
    incident: String,
    target: (f64, f64),
    phase: Phase,
    /// A post on foot "arrives" at this instant (its reported position never changes).
    arrive_at: Option<Instant>,
}

/// A unit's position and route, in the city's local metres.
#[derive(Debug, Clone)]
pub struct Mover {
    /// Where it is.
    pub pos: (f64, f64),
    /// Remaining route points.
    pub route: VecDeque<(f64, f64)>,
    /// Degrees clockwise from north.
    pub heading: f64,
}

impl Mover {
    /// Advances `dist` metres along the route; returns true when the route is done.
    pub fn advance(&mut self, mut dist: f64) -> bool {
        while let Some(&next) = self.route.front() {
            let (dx, dy) = (next.0 - self.pos.0, next.1 - self.pos.1);
            let d = (dx * dx + dy * dy).sqrt();
            if d > 1e-9 {
                self.heading = dx.atan2(dy).to_degrees().rem_euclid(360.0);
            }
            if d <= dist {
                self.pos = next;
                dist -= d;
                self.route.pop_front();
            } else {
                self.pos = (self.pos.0 + dx / d * dist, self.pos.1 + dy / d * dist);
                return false;
            }
        }
        true
    }

    /// Sets a grid route to `to`.
    pub fn head_for(&mut self, city: &City, to: (f64, f64)) {
        self.route = city.grid_route(self.pos, to).into_iter().collect();
    }
}

/// One unit's life: connect (and reconnect), patrol, take assignments.
async fn unit(sh: Arc<CityShared>, spec: UnitSpec, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let token = wire::unit_token(&sh.secret, &spec.id, &spec.callsign, spec.kind, &spec.caps);
    let mut mover = Mover {
        pos: spec.start,
        route: VecDeque::new(),
        heading: 0.0,
    };
    let mut job: Option<Job> = None;
    let mut backoff = Duration::from_millis(500);
    // Stagger the connection storm at start-up over a couple of seconds.
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..2_000))).await;
    while !sh.cancel.is_cancelled() {
        let session = async {
            let (mut ws, ok) = wire::connect(&sh.server, &token, Encoding::Json).await?;
            let sub = json!({"type": "subscribe", "id": 2, "topics": ["assignments"]});
            ws.send(Encoding::Json.encode(&sub)).await?;
            wire::await_reply(&mut ws, 2, Duration::from_secs(30)).await?;
            anyhow::Ok((ws, ok))
        };
        let (mut ws, ok) = match session.await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(unit = %spec.id, "connect: {e:#}");
                tokio::select! { _ = sh.cancel.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        // A tablet that reconnects learns where it is sent from the hello reply.
        job = match ok.incident {
            Some(inc) if inc.status != "closed" => Some(resume(&sh, &mut rng, inc, job)),
            _ => None,
        };
        let _ = ws.send(Encoding::Json.encode(&position(&sh, &mover, 0.0))).await;
        if job.is_none() {
            let _ = ws
                .send(Encoding::Json.encode(&json!({"type": "unit.status", "status": "available"})))
                .await;
        }
        let _ = drive(&sh, &spec, &mut rng, &mut ws, &mut mover, &mut job).await;
        if sh.cancel.is_cancelled() {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            return;
        }
    }
}

fn resume(sh: &CityShared, rng: &mut StdRng, inc: IncidentView, old: Option<Job>) -> Job {
    let target = inc.location.map_or((0.0, 0.0), |l| {
        sh.city.to_xy(LatLon {
            lat: l.lat,
            lon: l.lon,
        })
    });
    let phase = match inc.status.as_str() {
        "dispatched" => Phase::Acking(Instant::now() + sh.human(rng.random_range(1.5..5.0))),
        "on_scene" => match old {
            Some(Job {
                phase: p @ Phase::OnScene(_),
                ..
            }) => p,
            _ => Phase::OnScene(Instant::now() + sh.human(rng.random_range(120.0..600.0))),
        },
        _ => Phase::EnRoute,
    };
    Job {
        incident: inc.id,
        target,
        phase,
        arrive_at: None,
    }
}

fn position(sh: &CityShared, m: &Mover, speed: f64) -> serde_json::Value {
    let p = sh.city.to_latlon(m.pos.0, m.pos.1);
    json!({"type": "unit.position", "lat": p.lat, "lon": p.lon, "heading": wire::heading(m.heading),
           "speed": (speed * 10.0).round() / 10.0, "accuracy": 5.0, "at_ms": wire::now_ms()})
}

/// The connected part of a unit's life; returns when the connection ends or on cancel.
async fn drive(
    sh: &CityShared,
    spec: &UnitSpec,
    rng: &mut StdRng,
    ws: &mut Ws,
    mover: &mut Mover,
    job: &mut Option<Job>,
) -> anyhow::Result<()> {
    let period = Duration::from_secs_f64(rng.random_range(1.0..2.0));
    let mut tick = tokio::time::interval(period);
    let mut last = Instant::now();
    let mut next_id = 10u64;
    let mut send = async |ws: &mut Ws, mut v: serde_json::Value| {
        next_id += 1;
        v["id"] = json!(next_id);
        ws.send(Encoding::Json.encode(&v)).await
    };
    loop {
        tokio::select! {
            _ = sh.cancel.cancelled() => return Ok(()),
            m = ws.next() => {
                let Some(Ok(m)) = m else { return Ok(()) };
                if matches!(m, Message::Close(_)) { return Ok(()); }
                sh.frames.fetch_add(1, Relaxed);
                let Some(f) = wire::decode::<Frame>(&m) else { continue };
                if f.ty == "error" {
                    sh.errors.fetch_add(1, Relaxed);
                    tracing::debug!(unit = %spec.id, code = ?f.code, message = ?f.message, "command refused");
                    continue;
                }
                let (Some("assignments"), Some(inc)) = (f.topic.as_deref(), f.incident) else { continue };
                let mine = inc.units.contains(&spec.id) && inc.status != "closed";
                let current = job.as_ref().map(|j| j.incident.clone());
                if mine && f.change.as_deref() == Some("assigned") && current.as_deref() != Some(&inc.id) {
                    let target = inc.location.map_or(mover.pos, |l| sh.city.to_xy(LatLon { lat: l.lat, lon: l.lon }));
                    *job = Some(Job {
                        incident: inc.id,
                        target,
                        phase: Phase::Acking(Instant::now() + sh.human(rng.random_range(1.5..5.0))),
                        arrive_at: None,
                    });
                } else if !mine && current.as_deref() == Some(&inc.id) {
                    // Taken off it: timed out, reassigned, or closed by the dispatcher.
                    *job = None;
                    mover.route.clear();
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let dt = (now - last).as_secs_f64();
                last = now;
                let mut speed = 0.0;
                match job.as_mut() {
                    Some(j) => match j.phase.clone() {
                        Phase::Acking(at) if now >= at => {
                            send(ws, json!({"type": "assignment.ack", "incident_id": j.incident})).await?;
                            j.phase = Phase::EnRoute;
                            if spec.stationary {
                                let d = ((j.target.0 - mover.pos.0).powi(2) + (j.target.1 - mover.pos.1).powi(2)).sqrt();
                                j.arrive_at = Some(now + Duration::from_secs_f64(d / spec.speed));
                            } else {
                                mover.head_for(&sh.city, j.target);
                            }
                        }
                        Phase::EnRoute => {
                            let arrived = if spec.stationary {
                                j.arrive_at.is_none_or(|t| now >= t)
                            } else {
                                // Blue lights: a bit faster than patrolling.
                                speed = (spec.speed * 1.3).min(22.0);
                                mover.advance(speed * dt)
                            };
                            if arrived {
                                send(ws, json!({"type": "unit.status", "status": "on_scene"})).await?;
                                j.phase = Phase::OnScene(now + sh.human(rng.random_range(120.0..600.0)));
                                speed = 0.0;
                            }
                        }
                        Phase::OnScene(until) if now >= until => {
                            let disposition = geo::random_disposition(rng);
                            send(ws, json!({"type": "incident.close", "incident_id": j.incident,
                                "disposition": disposition})).await?;
                            send(ws, json!({"type": "unit.status", "status": "available"})).await?;
                            *job = None;
                        }
                        _ => {}
                    },
                    None if !spec.stationary => {
                        if mover.route.is_empty() {
                            let to = sh.city.random_xy(rng);
                            mover.head_for(&sh.city, to);
                        }
                        speed = spec.speed;
                        mover.advance(speed * dt);
                    }
                    None => {}
                }
                ws.send(Encoding::Json.encode(&position(sh, mover, speed))).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mover_follows_the_grid_and_arrives() {
        let city = City::URALSK;
        let mut m = Mover {
            pos: (0.0, 0.0),
            route: VecDeque::new(),
            heading: 0.0,
        };
        m.head_for(&city, (300.0, -400.0));
        // Either corner is inside the disc here; the nearer one to the centre is taken.
        assert_eq!(m.route.front(), Some(&(300.0, 0.0)));
        assert!(!m.advance(200.0));
        assert_eq!(m.pos, (200.0, 0.0));
        assert_eq!(m.heading.round(), 90.0);
        assert!(!m.advance(200.0));
        assert_eq!(m.pos, (300.0, -100.0));
        assert_eq!(m.heading.round(), 180.0);
        assert!(m.advance(1_000.0));
        assert_eq!(m.pos, (300.0, -400.0));
    }

    #[test]
    fn patrols_stay_inside_the_city() {
        let city = City::URALSK;
        let mut rng = StdRng::seed_from_u64(9);
        let mut m = Mover {
            pos: city.random_xy(&mut rng),
            route: VecDeque::new(),
            heading: 0.0,
        };
        for _ in 0..20_000 {
            if m.route.is_empty() {
                let to = city.random_xy(&mut rng);
                m.head_for(&city, to);
            }
            m.advance(geo::patrol_speed(&mut rng) * 1.5);
            assert!(m.pos.0.hypot(m.pos.1) <= city.radius_m + 1e-6, "{:?}", m.pos);
        }
    }

    #[test]
    fn window_median() {
        let mut w = Window::default();
        assert_eq!(w.median(), None);
        for v in [5, 1, 3] {
            w.push(v);
        }
        assert_eq!(w.median(), Some(3));
        for v in 0..1_000 {
            w.push(v);
        }
        assert_eq!(w.0.len(), Window::CAP);
        assert_eq!(w.median(), Some(900));
    }
}
