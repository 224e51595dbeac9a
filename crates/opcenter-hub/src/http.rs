//! HTTP routes beside the WebSocket: the citizens' reports gateway, incident
//! lookup, the response-time report, EIDO export, incident timeline (refusals
//! and timeline reads go to the audit log), health, metrics and the operations console's static files
//! (`shared/PROTOCOL.md` section 8). Errors are `{"error":{"code","message"}}`.
//!
//! Owns: HTTP status codes and bodies. Must never: change state except through
//! the engine thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request as HttpRequest, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::oneshot;

use opcenter_core::{Actor, ActorKind, Command};
use opcenter_proto::ErrorCode;
use opcenter_proto::auth::{Claims, Role};
use opcenter_proto::client::parse_report;

use crate::audit_log::{self, Kind};
use crate::engine_task::{ReplyTo, Request};
use crate::read_model::{self, ReadRequest};
use crate::report::ReportQuery;
use crate::{App, Region, audit_timeline, limit, metric, record};

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code.as_str(), "message": message.into()}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The region a request's `?region=` names (`crate::App::region`): a national
/// desk serves several and must be told which; a 400 otherwise.
#[allow(clippy::result_large_err)] // like `bearer`: the refusal is the response
fn region_of<'a>(app: &'a App, uri: &Uri) -> Result<&'a Region, Response> {
    let named = Query::<std::collections::HashMap<String, String>>::try_from_uri(uri)
        .map(|Query(q)| q.get("region").cloned())
        .unwrap_or_default();
    app.region(named.as_deref())
        .map_err(|(code, message)| error(StatusCode::BAD_REQUEST, code, message))
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated | ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Checks `Authorization: Bearer <JWT>` and that its role is one of `roles`.
#[allow(clippy::result_large_err)]
fn bearer(app: &App, headers: &HeaderMap, roles: &[Role]) -> Result<Claims, Response> {
    // Every refusal here goes to the audit log: failed sign-ins and role refusals.
    let refused = |kind, reason: &str, subject: &str, role: Option<Role>, detail: String| {
        app.audit.record(audit_log::Entry {
            kind,
            reason: reason.to_string(),
            subject: subject.to_string(),
            role: role.map(|r| r.as_str().to_string()),
            session: None,
            component: "http",
            detail,
        });
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        refused(
            Kind::SigninFailed,
            "missing_token",
            "-",
            None,
            "no Bearer token".into(),
        );
        return Err(error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing Bearer token",
        ));
    };
    let claims = match app.settings.verify_token(token.trim()) {
        Ok(c) => c,
        Err(e) => {
            refused(Kind::SigninFailed, "bad_token", "-", None, e.to_string());
            return Err(error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                e.to_string(),
            ));
        }
    };
    if !roles.contains(&claims.role) {
        let message = format!("role {} may not use this endpoint", claims.role.as_str());
        refused(
            Kind::Forbidden,
            "endpoint",
            &claims.sub,
            Some(claims.role),
            message.clone(),
        );
        return Err(error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message));
    }
    Ok(claims)
}

/// How long a client refused by `hub.max_connections` is told to wait.
const CONNECTIONS_RETRY_AFTER_S: u64 = 5;

/// One upgraded connection counted against `hub.max_connections`, released
/// when the session ends or the upgrade fails (the callback is dropped unrun).
struct ConnectionSlot(Arc<App>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /v1/ws`: upgrade with our frame and buffer limits, or 503 with
/// `Retry-After` past `hub.max_connections` (sessions already open go on).
pub(crate) async fn websocket(State(app): State<Arc<App>>, mut request: HttpRequest) -> Response {
    let response = match crate::ws_io::accept(request.headers()) {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::UPGRADE_REQUIRED, "connection is not upgradable").into_response();
    };
    let limit = app.settings.hub.max_connections;
    if app.connections.fetch_add(1, Ordering::Relaxed) >= limit {
        app.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!(metric::REFUSALS, "limit" => "max_connections").increment(1);
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            format!("server is at hub.max_connections ({limit}): retry later"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, CONNECTIONS_RETRY_AFTER_S.into());
        return response;
    }
    let slot = ConnectionSlot(app.clone());
    let max = app.settings.hub.max_frame_bytes;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        // A few KiB of read buffer per connection, not tungstenite's 128 KiB default.
        .read_buffer_size(4096)
        // tungstenite writes only pongs and the close echo here (ws_io::Control):
        // the session's frames are written by the session's writer itself.
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => match crate::ws_io::split(upgraded, config).await {
                Some((sink, stream)) => crate::session::run(sink, stream, app).await,
                None => tracing::error!("websocket upgrade of a connection that is not TCP: dropped"),
            },
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
        drop(slot);
    });
    response
}

/// `POST /v1/reports`.
pub(crate) async fn post_report(State(app): State<Arc<App>>, request: HttpRequest) -> Response {
    let started = Instant::now();
    let received_ms = crate::engine_task::now_ms();
    let claims = match bearer(&app, request.headers(), &[Role::Intake]) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let region = match region_of(&app, request.uri()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let refused_for = app
        .reports_bucket
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take(1)
        .err();
    if let Some(wait) = refused_for {
        metrics::counter!(metric::REFUSALS, "limit" => "reports_rate").increment(1);
        app.audit.record(audit_log::Entry {
            kind: Kind::RateLimited,
            reason: "reports_rate".into(),
            subject: claims.sub.clone(),
            role: Some(claims.role.as_str().to_string()),
            session: None,
            component: "http",
            detail: "POST /v1/reports over http.reports_per_s".into(),
        });
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many reports: over http.reports_per_s, retry later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, limit::retry_after_secs(wait).into());
        return response;
    }
    let limit = app.settings.max_body_bytes;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("body over {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let body: Bytes = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let mut new = match parse_report(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e),
    };
    // An app report is received when the gateway's request arrived: the
    // response-time report's received → created starts here.
    new.received_ms = Some(received_ms);
    let (tx, rx) = oneshot::channel();
    let actor = Actor {
        sub: claims.sub,
        kind: ActorKind::Intake,
    };
    let request = Request::Command {
        actor,
        command: Command::CreateIncident(new),
        reply: ReplyTo::Http(tx),
        received: started,
    };
    if region.engine_tx.send(request).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "shutting down",
        );
    }
    match rx.await {
        Ok(Ok((incident, new))) => {
            let status = if new { StatusCode::CREATED } else { StatusCode::OK };
            let body = json!({ "incident": incident });
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Ok(Err((code, message))) => error(status_of(code), code, message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "shutting down",
        ),
    }
}

/// `GET /v1/reports/{key}` (intake): what the citizen's app may show about
/// the report it sent with this key (`crate::citizen`); 404 once the key is
/// unknown or older than `dispatch.key_ttl_h`.
pub(crate) async fn get_report_status(
    State(app): State<Arc<App>>,
    Path(key): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = bearer(&app, &headers, &[Role::Intake]) {
        return r;
    }
    let region = match region_of(&app, &uri) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match ask_reads(region, |reply| ReadRequest::ReportStatus { key, reply }).await {
        Ok(Some(status)) => json_text(serde_json::to_string(&status).unwrap_or_default()),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no report with this key (unknown or expired)",
        ),
        Err(r) => r,
    }
}

/// One question to the read model; 503 when it is gone (shutting down).
async fn ask_reads<T>(
    region: &Region,
    request: impl FnOnce(oneshot::Sender<Option<T>>) -> ReadRequest,
) -> Result<Option<T>, Response> {
    let gone = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "shutting down",
        )
    };
    let (tx, rx) = oneshot::channel();
    region.reads.send(request(tx)).map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// `GET /v1/incidents/{id}`.
pub(crate) async fn get_incident(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = bearer(&app, &headers, &[Role::Dispatcher, Role::Supervisor]) {
        return r;
    }
    let region = match region_of(&app, &uri) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // Answered by the read model, not the engine thread.
    let asked = ask_reads(region, |reply| ReadRequest::GetIncident {
        incident_id: id.clone(),
        reply,
    })
    .await;
    match asked {
        Ok(Some(incident)) => {
            let body = json!({ "incident": incident });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no incident {id}"),
        ),
        Err(r) => r,
    }
}

/// `GET /v1/reports/response-times?from&to&group&format` (supervisor): the
/// response-time report of the incidents created in the period, JSON or CSV.
/// The journal scan runs on a blocking thread, one lock hold per chunk.
pub(crate) async fn response_times(
    State(app): State<Arc<App>>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = bearer(&app, &headers, &[Role::Supervisor]) {
        return r;
    }
    let journal = match region_of(&app, &uri) {
        Ok(r) => r.journal.clone(),
        Err(r) => return r,
    };
    let p = |k: &str| params.get(k).map(String::as_str);
    let query = match ReportQuery::parse(p("from"), p("to"), p("group"), crate::engine_task::now_ms()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e.to_string()),
    };
    let csv = match p("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                format!("format: {other:?}: want json or csv"),
            );
        }
    };
    let scan = app.clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::report::report_shared(&journal, query, &scan.settings.reports)
    })
    .await;
    match report {
        Ok(Ok(report)) if csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.to_csv(),
        )
            .into_response(),
        Ok(Ok(report)) => (
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "report": report }).to_string(),
        )
            .into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "report task failed",
        ),
    }
}

/// `GET /v1/incidents/{id}/eido`: the incident as an EIDO document (`crate::eido`).
pub(crate) async fn get_incident_eido(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = bearer(&app, &headers, &[Role::Dispatcher, Role::Supervisor]) {
        return r;
    }
    let region = match region_of(&app, &uri) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (tx, rx) = oneshot::channel();
    let asked = ReadRequest::GetIncidentWithUnits {
        incident_id: id.clone(),
        reply: tx,
    };
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "shutting down",
        )
    };
    // Answered by the read model, like `GET /v1/incidents/{id}`.
    if region.reads.send(asked).is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Some((incident, units))) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            crate::eido::document(&incident, &units).to_string(),
        )
            .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no incident {id}"),
        ),
        Err(_) => unavailable(),
    }
}

/// `GET /healthz`: 200 while the journal accepts writes, 503 once it failed or
/// `GET /v1/incidents/{id}/timeline` (supervisor): every journal record
/// touching the incident, with who caused it (`crate::audit_timeline`). The
/// read itself goes to the audit log.
pub(crate) async fn get_incident_timeline(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let claims = match bearer(&app, &headers, &[Role::Supervisor]) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let journal = match region_of(&app, &uri) {
        Ok(r) => r.journal.clone(),
        Err(r) => return r,
    };
    let wanted = id.clone();
    // A scan of the retained journal: on a blocking thread, one chunk per lock
    // hold, so neither the engine's commits nor the read model wait for it.
    let scanned = tokio::task::spawn_blocking(move || {
        let first = read_model::lock(&journal).first_seq();
        let chunk = |after, max| record::read_from(&**read_model::lock(&journal), after, max);
        audit_timeline::collect(first, chunk, &wanted)
    })
    .await;
    let (response, outcome) = match scanned {
        Ok(Ok(t)) if t.steps.is_empty() => (
            error(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no incident {id} in the journal"),
            ),
            "not_found".to_string(),
        ),
        Ok(Ok(t)) => {
            let steps = t.steps.len();
            (
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    serde_json::to_string(&t).unwrap_or_default(),
                )
                    .into_response(),
                format!("ok, {steps} steps"),
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "timeline scan failed");
            (
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    e.to_string(),
                ),
                format!("error: {e}"),
            )
        }
        Err(_) => (
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                "shutting down",
            ),
            "error: shutting down".to_string(),
        ),
    };
    app.audit.record(audit_log::Entry {
        kind: Kind::AuditRead,
        // One line per incident read (per reader and second).
        reason: format!("timeline:{id}"),
        subject: claims.sub,
        role: Some(claims.role.as_str().to_string()),
        session: None,
        component: "http",
        detail: format!("GET /v1/incidents/{id}/timeline: {outcome}"),
    });
    response
}

/// the engine thread stopped.
pub(crate) async fn healthz(State(app): State<Arc<App>>) -> Response {
    if app.home().shared.stopped.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine stopped: shutting down\n").into_response();
    }
    if app.home().shared.healthy.load(Ordering::Relaxed) {
        // An engine node says it is the active one (a standby answers
        // `ok standby` from `failover` before it serves).
        let engine = app
            .settings
            .cluster
            .as_ref()
            .is_some_and(|c| c.role != crate::ClusterRole::Hub);
        let body = if engine { "ok active\n" } else { "ok\n" };
        (StatusCode::OK, body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "journal failed: not acknowledging\n",
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text format; behind `Authorization: Bearer
/// <http.metrics_token>` when that key is set (the counters tell an outsider
/// how busy the center is and which limits it is hitting).
pub(crate) async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    metrics_text(app.settings.metrics_token.as_deref(), &headers, &app.metrics)
}

/// The Prometheus text of `handle`, behind `token` when one is set (also a
/// standby engine's `/metrics`).
pub(crate) fn metrics_text(
    token: Option<&str>,
    headers: &HeaderMap,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
) -> Response {
    if let Some(want) = token {
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !got.is_some_and(|got| same_secret(got.as_bytes(), want.as_bytes())) {
            metrics::counter!(metric::REFUSALS, "limit" => "metrics_auth").increment(1);
            return error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "GET /metrics needs Authorization: Bearer <http.metrics_token>",
            );
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Compares a presented token with the configured one in time independent of
/// where they differ (the length is not secret).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/geocode?q=…&limit=…` (dispatcher, supervisor): the gazetteer's
/// best matches for an address, best first (`opcenter_core::gazetteer`). A
/// lookup is microseconds, so it runs right here, off the engine thread.
pub(crate) async fn geocode(
    State(app): State<Arc<App>>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    use opcenter_core::gazetteer::MAX_LIMIT;
    if let Err(r) = bearer(&app, &headers, &[Role::Dispatcher, Role::Supervisor]) {
        return r;
    }
    let bad = |m: String| error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m);
    let Some(q) = params.get("q").filter(|q| !q.trim().is_empty()) else {
        return bad("q: the address to look up is missing".into());
    };
    if q.len() > opcenter_core::check::MAX_ADDRESS_BYTES {
        return bad(format!(
            "q: longer than {} bytes",
            opcenter_core::check::MAX_ADDRESS_BYTES
        ));
    }
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_GEOCODE_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return bad(format!("limit: want 1..={MAX_LIMIT}")),
    };
    let Some(gazetteer) = &app.settings.gazetteer else {
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no gazetteer is configured ([gazetteer] file)",
        );
    };
    let matches: Vec<serde_json::Value> = gazetteer
        .lookup(q, limit)
        .into_iter()
        .map(|m| {
            let a = m.address;
            json!({
                "label": a.label(),
                "street": a.street,
                "house": a.house,
                "building": a.building,
                "location": a.location,
                "score": m.score,
            })
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "matches": matches }).to_string(),
    )
        .into_response()
}

/// How many matches `GET /v1/geocode` returns without `limit`.
const DEFAULT_GEOCODE_LIMIT: usize = 5;

/// `GET /v1/console/config`: the console's initial map view and districts, and
/// the region's local time offset (`dispatch.local_offset_min`: shifts).
pub(crate) async fn console_config(State(app): State<Arc<App>>) -> Response {
    let c = &app.settings.console;
    let dlat = c.radius_m / 111_195.0;
    let dlon = dlat / c.center.lat.to_radians().cos().max(0.01);
    let districts: serde_json::Value = c
        .districts
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(serde_json::Value::Null);
    let body = json!({
        "center": c.center,
        "extent": {"south": c.center.lat - dlat, "west": c.center.lon - dlon,
                   "north": c.center.lat + dlat, "east": c.center.lon + dlon},
        "districts": districts,
        "local_offset_min": app.settings.engine.local_offset_min,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A JSON body with no caching: the console asks once per sign-in.
fn json_text(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

/// `GET /v1/zones` (dispatcher or supervisor): the configured districts and
/// beats (`[[zones]]`) as one GeoJSON FeatureCollection, districts first; each
/// feature's properties are `name`, `kind` (`district`/`beat`) and, for a
/// beat, `district`. Empty when no zones are configured.
pub(crate) async fn get_zones(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = bearer(&app, &headers, &[Role::Dispatcher, Role::Supervisor]) {
        return r;
    }
    use opcenter_core::zones::ZoneKind;
    let zones = &app.settings.engine.zones;
    let ordered = zones
        .iter()
        .filter(|z| z.kind == ZoneKind::District)
        .chain(zones.iter().filter(|z| z.kind == ZoneKind::Beat));
    let features: Vec<serde_json::Value> = ordered
        .map(|z| {
            let polygons: Vec<&Vec<Vec<[f64; 2]>>> = z.polygons.iter().map(|p| &p.rings).collect();
            let geometry = match polygons.as_slice() {
                [one] => json!({"type": "Polygon", "coordinates": one}),
                many => json!({"type": "MultiPolygon", "coordinates": many}),
            };
            let mut properties = json!({"name": z.id, "kind": z.kind});
            if let Some(d) = &z.district {
                properties["district"] = json!(d);
            }
            json!({"type": "Feature", "properties": properties, "geometry": geometry})
        })
        .collect();
    json_text(json!({"type": "FeatureCollection", "features": features}).to_string())
}

/// `GET /v1/streets` (dispatcher or supervisor): the streets layer
/// (`console.streets_file`, read at start-up), or an empty FeatureCollection.
pub(crate) async fn get_streets(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = bearer(&app, &headers, &[Role::Dispatcher, Role::Supervisor]) {
        return r;
    }
    let text = app
        .settings
        .console
        .streets
        .clone()
        .unwrap_or_else(|| r#"{"type":"FeatureCollection","features":[]}"#.to_string());
    json_text(text)
}

/// The console's files, compiled into the binary (no CDN, nothing fetched at run time).
const CONSOLE_FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../assets/console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console/app.js"),
    ),
    (
        "address.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console/address.js"),
    ),
    (
        "conn.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console/conn.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console/dom.js"),
    ),
    (
        "map.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console/map.js"),
    ),
    (
        "store.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console/store.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../assets/console/style.css"),
    ),
    // The response-time report page (supervisor).
    (
        "report.html",
        "text/html; charset=utf-8",
        include_str!("../assets/console/report.html"),
    ),
    (
        "report.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console/report.js"),
    ),
    (
        "report.css",
        "text/css; charset=utf-8",
        include_str!("../assets/console/report.css"),
    ),
];

/// What the console may load, enforced by the browser: its own files, its own
/// WebSocket and HTTP API, and nothing else (no inline script, style or `on…`
/// attribute either). `connect-src 'self'` covers the same-origin `ws:`/`wss:`
/// socket under CSP level 3 (Chromium 71+, Firefox, Safari 16+). `img-src data:`
/// is for the empty `data:,` favicon that keeps the browser from asking for
/// /favicon.ico.
const CONSOLE_CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn console_file(name: &str) -> Response {
    match CONSOLE_FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
            ],
            Body::from(*body),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no console file {name}"),
        ),
    }
}

/// `GET /`: the operations console.
pub(crate) async fn console_index() -> Response {
    console_file("index.html")
}

/// `GET /console/{file}`.
pub(crate) async fn console_asset(Path(name): Path<String>) -> Response {
    console_file(&name)
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint")
}
