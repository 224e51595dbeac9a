//! One WebSocket session: `hello`, then a reader (this task) and a writer task.
//!
//! The reader decodes frames in the encoding the first frame fixed, checks the
//! role matrix of `shared/PROTOCOL.md` section 3 (`authorize`, a pure function
//! with a table-driven test), and hands commands to the engine thread
//! (awaiting channel capacity: that is the backpressure). Replies and events
//! come back through the session's [`Outbox`]: events are written by the
//! engine thread itself when the socket takes them at once, everything else
//! by the writer, which writes everything queued (frames prepared once,
//! [`crate::frame`]) in one vectored write ([`crate::ws_io`]). When either
//! side ends, the other is stopped.
//!
//! Owns: session lifecycle, authentication, role checks, close codes. Must
//! never: touch engine state directly or panic on anything a client sends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::ws::Message;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use opcenter_core::{Actor, ActorKind, Command, RecommendQuery, UnitProfile};
use opcenter_proto::auth::{Claims, Role};
use opcenter_proto::client::{ClientMessage, Frame, SubTopic, Subscribe, Unplaced};
use opcenter_proto::server::Empty;
use opcenter_proto::{Encoding, ErrorCode, decode_frame};

use crate::engine_task::{self, ReplyTo, Request};
use crate::frame::Prepared;
use crate::limit::TokenBucket;
use crate::outbox::{CloseReason, Outbox, codes};
use crate::ws_io::{Sink, Stream};
use crate::{App, Region, audit_log, metric, wire};

/// Runs a session to its end.
pub(crate) async fn run(sink: Sink, stream: Stream, app: Arc<App>) {
    let n = app.session_counter.fetch_add(1, Ordering::Relaxed);
    let session_id = format!("s-{n}");
    let span = tracing::info_span!("session", id = %session_id, role = tracing::field::Empty);
    run_inner(sink, stream, app, session_id).instrument(span).await
}

/// A data frame read from the socket.
enum Incoming {
    Data(Encoding, bytes::Bytes),
    /// Ping / pong: activity only.
    Control,
    Closed,
    TooBig,
}

fn classify(item: Option<Result<WsMessage, WsError>>) -> Incoming {
    match item {
        None => Incoming::Closed,
        Some(Ok(WsMessage::Text(t))) => Incoming::Data(Encoding::Json, bytes::Bytes::from(t)),
        Some(Ok(WsMessage::Binary(b))) => Incoming::Data(Encoding::MsgPack, b),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Incoming::Control,
        Some(Ok(WsMessage::Close(_))) => Incoming::Closed,
        Some(Err(WsError::Capacity(_))) => Incoming::TooBig,
        Some(Err(_)) => Incoming::Closed,
    }
}

async fn close_now(sink: &mut Sink, code: u16, reason: &'static str) {
    metrics::counter!(metric::CLOSES, "code" => code.to_string()).increment(1);
    sink.close(code, reason).await;
}

/// After we sent a Close: keep reading (and discarding) until the client's Close
/// arrives or a short grace period ends. Dropping the socket at once could make
/// the kernel reset the connection and throw away our Close frame before the
/// client read it, and the client would never learn the close code.
async fn linger(stream: &mut Stream) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => return,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn send_now(sink: &mut Sink, message: Option<Message>) {
    if let Some(m) = message {
        let _ = sink.write([&Prepared::of(&m)]).await;
    }
}

/// Waits for a valid `hello`; answers anything else as the protocol says.
async fn authenticate(
    sink: &mut Sink,
    stream: &mut Stream,
    app: &App,
    session_id: &str,
) -> Option<(Encoding, Option<u64>, Claims)> {
    let deadline = tokio::time::Instant::now() + app.settings.hub.hello_timeout;
    let mut encoding: Option<Encoding> = None;
    let mut bad = 0;
    loop {
        let item = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(item) => item,
            Err(_) => {
                close_now(sink, codes::HELLO_TIMEOUT, "no hello in time").await;
                return None;
            }
        };
        let (enc, bytes) = match classify(item) {
            Incoming::Data(enc, bytes) => (enc, bytes),
            Incoming::Control => continue,
            Incoming::Closed => return None,
            Incoming::TooBig => {
                close_now(sink, codes::TOO_BIG, "frame too large").await;
                return None;
            }
        };
        let session_enc = *encoding.get_or_insert(enc);
        if enc != session_enc {
            send_now(
                sink,
                wire::error(
                    session_enc,
                    None,
                    ErrorCode::BadRequest,
                    "frame in the other encoding",
                ),
            )
            .await;
            continue;
        }
        match decode_frame(enc, &bytes) {
            Ok(Frame {
                id,
                message: ClientMessage::Hello(hello),
                ..
            }) => {
                if hello.protocol.is_some_and(|p| p != 1) {
                    send_now(
                        sink,
                        wire::error(enc, id, ErrorCode::BadRequest, "unsupported protocol version"),
                    )
                    .await;
                    close_now(sink, codes::UNAUTHORIZED, "unsupported protocol").await;
                    return None;
                }
                match app.settings.verify_token(&hello.token) {
                    Ok(claims) => return Some((enc, id, claims)),
                    Err(e) => {
                        app.audit.record(audit_log::Entry {
                            kind: audit_log::Kind::SigninFailed,
                            reason: "bad_token".into(),
                            subject: "-".into(),
                            role: None,
                            session: Some(session_id.to_string()),
                            component: "ws",
                            detail: e.to_string(),
                        });
                        send_now(
                            sink,
                            wire::error(enc, id, ErrorCode::Unauthorized, &e.to_string()),
                        )
                        .await;
                        close_now(sink, codes::UNAUTHORIZED, "unauthorized").await;
                        return None;
                    }
                }
            }
            Ok(Frame { id, .. }) => {
                send_now(
                    sink,
                    wire::error(enc, id, ErrorCode::Unauthenticated, "send hello first"),
                )
                .await;
                close_now(sink, codes::UNAUTHORIZED, "unauthenticated").await;
                return None;
            }
            Err(fe) => {
                send_now(sink, wire::error(enc, fe.id, fe.code, &fe.message)).await;
                bad += 1;
                if bad >= app.settings.hub.max_bad_frames {
                    close_now(sink, codes::POLICY, "too many bad frames").await;
                    return None;
                }
            }
        }
    }
}

async fn run_inner(mut sink: Sink, mut stream: Stream, app: Arc<App>, session_id: String) {
    let Some((encoding, hello_id, claims)) = authenticate(&mut sink, &mut stream, &app, &session_id).await
    else {
        linger(&mut stream).await;
        return;
    };
    let role = claims.role;
    tracing::Span::current().record("role", role.as_str());
    let outbox = Outbox::new(session_id.clone(), encoding, app.settings.hub.session_queue_bytes);
    let actor = actor_of(&claims);
    let profile = (role == Role::Unit).then(|| UnitProfile {
        id: claims.unit.clone().unwrap_or_default(),
        callsign: claims.callsign.clone(),
        kind: claims.kind.clone(),
        capabilities: claims.caps.clone().unwrap_or_default(),
        agency: claims.agency.clone(),
    });
    if let Some(socket) = sink.socket() {
        outbox.attach(socket);
    }
    app.sessions.insert(session_id.clone(), outbox.clone());
    metrics::gauge!(metric::CONNECTIONS, "role" => role.as_str()).increment(1.0);
    tracing::debug!(sub = %claims.sub, "session authenticated");

    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        app.settings.hub.ping_interval,
        stop.clone(),
    ));
    let hello = Request::Hello {
        outbox: outbox.clone(),
        id: hello_id,
        actor: actor.clone(),
        role,
        profile,
    };
    let unit = actor.unit_id().map(str::to_owned);
    if app.home().engine_tx.send(hello).await.is_ok() {
        let mut reader = Reader {
            app: &app,
            outbox: &outbox,
            actor,
            role,
            bad_in_a_row: 0,
            commands_sent: 0,
            bucket: TokenBucket::new(
                app.settings.hub.session_rate_per_s,
                app.settings.hub.session_burst,
            ),
        };
        reader.read_loop(&mut stream, &stop).await;
        // A server shutdown is not the tablet going away: its unit stays online
        // in the journal, and recovery counts the grace from the restart.
        let shutdown = outbox.close_code() == Some(codes::GOING_AWAY);
        if let Some(unit) = unit.filter(|_| !shutdown) {
            // The engine counts a unit's sessions: this may have been its last.
            let bye = Request::Bye {
                session: session_id.clone(),
                unit,
            };
            let _ = app.home().engine_tx.send(bye).await;
        }
    }
    outbox.close(CloseReason {
        code: 1000,
        reason: "bye",
        flush_first: true,
    });
    let _ = writer.await;
    linger(&mut stream).await;
    app.sessions.remove(&session_id);
    metrics::gauge!(metric::CONNECTIONS, "role" => role.as_str()).decrement(1.0);
    tracing::debug!("session ended");
}

/// Who the engine sees acting for a session with these claims.
fn actor_of(claims: &Claims) -> Actor {
    Actor {
        sub: claims.sub.clone(),
        kind: match claims.role {
            Role::Dispatcher => ActorKind::Dispatcher,
            Role::Supervisor => ActorKind::Supervisor,
            Role::Intake => ActorKind::Intake,
            // verify_token guarantees the claim for role unit.
            Role::Unit => ActorKind::Unit(claims.unit.clone().unwrap_or_default()),
        },
    }
}

/// Drains the outbox into the socket: everything queued in one write; pings on
/// a timer; what tungstenite wrote (pongs, a close echo) as soon as it is there;
/// ends (and stops the reader) on a close or a write error. Each write is the
/// writer's turn ([`Outbox::drain`], [`Outbox::take`]): it begins with the rest
/// of a frame the engine's write left unfinished, if any.
async fn write_loop(
    mut sink: Sink,
    outbox: Arc<Outbox>,
    ping_every: std::time::Duration,
    stop: CancellationToken,
) {
    let control = sink.control();
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let ping_frame = Prepared::ping();
    loop {
        let (mut drained, ping_now) = tokio::select! {
            drained = outbox.drain() => (drained, false),
            _ = control.pending() => (outbox.take(), false),
            _ = ping.tick() => (outbox.take(), true),
        };
        drained.frames.extend(drained.positions.take());
        if ping_now {
            drained.frames.push(ping_frame.clone());
        }
        let ok = sink.write_from(drained.skip, &drained.frames).await.is_ok();
        outbox.written();
        if ok {
            for read_at in &drained.stamps {
                metrics::histogram!(metric::ASSIGNMENT_WRITTEN_SECONDS)
                    .record(read_at.elapsed().as_secs_f64());
            }
        }
        if let Some(close) = drained.close {
            if ok {
                close_now(&mut sink, close.code, close.reason).await;
            }
            break;
        }
        if !ok {
            break;
        }
    }
    stop.cancel();
}

struct Reader<'a> {
    app: &'a App,
    outbox: &'a Arc<Outbox>,
    actor: Actor,
    role: Role,
    bad_in_a_row: u32,
    /// Commands sent to an engine; see [`Outbox::commands_answered`].
    commands_sent: u64,
    bucket: TokenBucket,
}

impl<'a> Reader<'a> {
    async fn read_loop(&mut self, stream: &mut Stream, stop: &CancellationToken) {
        let idle = self.app.settings.hub.idle_timeout;
        // One timer and one cancellation future for the whole session, not one per
        // frame: a tablet sends a fix every second or so, for hours.
        let mut last_heard = tokio::time::Instant::now();
        let silence = tokio::time::sleep_until(last_heard + idle);
        tokio::pin!(silence);
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let item = tokio::select! {
                biased;
                _ = &mut stopped => return,
                item = stream.next() => item,
                _ = &mut silence => {
                    if last_heard.elapsed() < idle {
                        silence.as_mut().reset(last_heard + idle);
                        continue;
                    }
                    self.outbox.close(CloseReason {
                        code: codes::IDLE,
                        reason: "silent too long",
                        flush_first: true,
                    });
                    return;
                }
            };
            last_heard = tokio::time::Instant::now();
            // The latency metrics start here, when the frame is off the socket.
            let read_at = last_heard.into_std();
            match classify(item) {
                Incoming::Data(enc, bytes) => {
                    if !self.on_frame(enc, &bytes, read_at).await {
                        return;
                    }
                }
                Incoming::Control => {}
                Incoming::Closed => return,
                Incoming::TooBig => {
                    self.outbox.close(CloseReason {
                        code: codes::TOO_BIG,
                        reason: "frame too large",
                        flush_first: false,
                    });
                    return;
                }
            }
        }
    }

    fn error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        metrics::counter!(metric::FRAME_ERRORS, "code" => code.as_str()).increment(1);
        self.outbox.push_error(id, code, message);
    }

    /// Handles one data frame; false ends the session.
    async fn on_frame(&mut self, enc: Encoding, bytes: &[u8], read_at: Instant) -> bool {
        if enc != self.outbox.encoding {
            self.error(
                None,
                ErrorCode::BadRequest,
                "frame in the other encoding than the session's",
            );
            return self.count_bad();
        }
        let frame = match decode_frame(enc, bytes) {
            Ok(f) => f,
            Err(fe) => {
                self.on_record(audit_log::Kind::BadFrame, fe.code.as_str(), &fe.message);
                self.error(fe.id, fe.code, &fe.message);
                return self.count_bad();
            }
        };
        self.bad_in_a_row = 0;
        let id = frame.id;
        let kind = frame.message.type_name();
        if self
            .bucket
            .take(cost(&frame.message, &self.app.home().shared.epoch))
            .is_err()
        {
            metrics::counter!(metric::COMMANDS, "type" => kind, "outcome" => "rate_limited").increment(1);
            metrics::counter!(metric::REFUSALS, "limit" => "command_budget").increment(1);
            self.on_record(audit_log::Kind::RateLimited, "command_budget", kind);
            self.error(id, ErrorCode::RateLimited, "too many commands: slow down");
            return true;
        }
        match self.to_requests(frame, read_at) {
            Ok(requests) => {
                for (region, request) in requests {
                    if matches!(request, Request::Command { .. }) {
                        self.commands_sent += 1;
                    }
                    if region.engine_tx.send(request).await.is_err() {
                        self.error(id, ErrorCode::Internal, "server is shutting down");
                        return false;
                    }
                }
            }
            Err((code, message)) => {
                metrics::counter!(metric::COMMANDS, "type" => kind, "outcome" => "refused").increment(1);
                if code == ErrorCode::Forbidden {
                    self.on_record(audit_log::Kind::Forbidden, kind, &message);
                }
                self.error(id, code, &message);
            }
        }
        true
    }

    /// A refusal for the audit log (`crate::audit_log`), as this session's actor.
    fn on_record(&self, kind: audit_log::Kind, reason: &str, detail: &str) {
        self.app.audit.record(audit_log::Entry {
            kind,
            reason: reason.to_string(),
            subject: self.actor.sub.clone(),
            role: Some(self.role.as_str().to_string()),
            session: Some(self.outbox.session.clone()),
            component: "ws",
            detail: detail.to_string(),
        });
    }

    fn count_bad(&mut self) -> bool {
        self.bad_in_a_row += 1;
        if self.bad_in_a_row >= self.app.settings.hub.max_bad_frames {
            self.outbox.close(CloseReason {
                code: codes::POLICY,
                reason: "too many bad frames",
                flush_first: true,
            });
            return false;
        }
        true
    }

    /// Turns a frame into requests for the regions it is for (through the role
    /// matrix), answers it here (`ping`: none), or refuses it. A command goes to
    /// the region its `region` names (`None`: the server's own; a national desk
    /// must be told); a multi-region `subscribe` to each region it names.
    fn to_requests(&self, frame: Frame, read_at: Instant) -> Result<Vec<(&'a Region, Request)>, Refusal> {
        let id = frame.id;
        let app: &'a App = self.app;
        let allowed = authorize(self.role, &self.actor, frame.message)?;
        if let Allowed::Subscribe {
            unit,
            subscribe: sub @ Subscribe { regions: Some(_), .. },
        } = allowed
        {
            return self.subscribe_regions(id, unit, sub);
        }
        // A ping is the session's own, whatever region it names.
        if let Allowed::Ping = allowed {
            self.to_request(id, allowed, read_at)?;
            return Ok(Vec::new());
        }
        let region = app.region(frame.region.as_deref())?;
        // A recommendation from the engine's committed state, here, when the
        // engine thread is between batches and has answered every command this
        // session sent (so it reflects them); else the engine answers after its
        // batch.
        if let Allowed::Recommend(query) = &allowed
            && let Some(view) = &region.view
            && self.outbox.commands_answered() == self.commands_sent
            && let Some(recommended) = view.try_read(|e| e.recommend(query, engine_task::now_ms()))
        {
            engine_task::answer_recommend(self.outbox, id, recommended);
            return Ok(Vec::new());
        }
        let subscribes = matches!(allowed, Allowed::Subscribe { .. });
        let mut requests: Vec<_> = self
            .to_request(id, allowed, read_at)?
            .map(|r| (region, r))
            .into_iter()
            .collect();
        if subscribes {
            self.outbox.set_region_tags(false);
            requests.extend(self.unsubscribe_others(&[region]));
        }
        Ok(requests)
    }

    /// A multi-region `subscribe`: one subscription per region named, each with
    /// its own `since`; each region answers with its own `subscribed`, and the
    /// session's events and position batches carry their region from now on.
    fn subscribe_regions(
        &self,
        id: Option<u64>,
        unit: Option<String>,
        sub: Subscribe,
    ) -> Result<Vec<(&'a Region, Request)>, Refusal> {
        let app: &'a App = self.app;
        let names = sub.regions.clone().unwrap_or_default();
        let regions = names
            .iter()
            .map(|n| app.region(Some(n)))
            .collect::<Result<Vec<_>, _>>()?;
        self.outbox.set_region_tags(true);
        let others = self.unsubscribe_others(&regions);
        Ok(names
            .iter()
            .zip(regions)
            .map(|(name, region)| {
                let subscribe = Subscribe {
                    since: sub.since_by_region.get(name).cloned(),
                    ..sub.clone()
                };
                let request = Request::Subscribe {
                    outbox: self.outbox.clone(),
                    id,
                    unit: unit.clone(),
                    subscribe,
                };
                (region, request)
            })
            .chain(others)
            .collect())
    }

    /// A desk: a `subscribe` replaces the session's subscription in every region,
    /// so the regions it does not name drop the session.
    fn unsubscribe_others(&self, named: &[&Region]) -> Vec<(&'a Region, Request)> {
        let app: &'a App = self.app;
        app.regions
            .iter()
            .filter(|r| !named.iter().any(|n| std::ptr::eq(*n, *r)))
            .map(|r| {
                let outbox = self.outbox.clone();
                (r, Request::Unsubscribe { outbox })
            })
            .collect()
    }

    /// The request an allowed frame becomes (`None`: answered here, `ping`).
    fn to_request(
        &self,
        id: Option<u64>,
        allowed: Allowed,
        read_at: Instant,
    ) -> Result<Option<Request>, Refusal> {
        let outbox = self.outbox.clone();
        Ok(Some(match allowed {
            // Answered here, not by the engine: a ping says the session is alive.
            Allowed::Ping => {
                if id.is_some()
                    && let Some(m) = wire::ok(self.outbox.encoding, id, Empty {})
                {
                    self.outbox.push(m);
                }
                return Ok(None);
            }
            Allowed::Subscribe { unit, subscribe } => Request::Subscribe {
                outbox,
                id,
                unit,
                subscribe,
            },
            Allowed::Recommend(query) => Request::Recommend { outbox, id, query },
            Allowed::Place(unplaced) => Request::Command {
                actor: self.actor.clone(),
                command: Command::CreateIncident(self.place(unplaced)?),
                reply: ReplyTo::Session { outbox, id },
                received: Instant::now(),
            },
            Allowed::Command(command) => Request::Command {
                actor: self.actor.clone(),
                command,
                reply: ReplyTo::Session { outbox, id },
                received: read_at,
            },
        }))
    }
}

impl Reader<'_> {
    /// Places an address-only `incident.create` at the gazetteer's best match
    /// (the engine stays pure: it only ever sees a location). The address the
    /// dispatcher typed is kept as they typed it.
    fn place(&self, unplaced: Unplaced) -> Result<opcenter_core::NewIncident, Refusal> {
        let address = unplaced.address();
        let Some(gazetteer) = &self.app.settings.gazetteer else {
            return Err((
                ErrorCode::BadRequest,
                format!("address {address:?}: no gazetteer is configured; give a `location`"),
            ));
        };
        let Some(best) = gazetteer.lookup(address, 1).first().map(|m| m.address.location) else {
            return Err((
                ErrorCode::BadRequest,
                format!("address {address:?} matches nothing in the gazetteer; give a `location`"),
            ));
        };
        Ok(unplaced.place(best))
    }
}

/// What a command costs against the session's budget (`hub.session_rate_per_s`
/// tokens a second, `hub.session_burst` at once), by the work it makes the
/// server do (docs/protocol.md "Command weights"). A snapshot serialises every
/// open incident and unit; a resume may read up to `hub.history_events` events
/// back from disk; a recommend is a spatial query; everything else is one
/// record or less.
fn cost(message: &ClientMessage, epoch: &str) -> u32 {
    match message {
        // A multi-region subscription: a resume or a snapshot per region (each
        // region's epoch is checked by its read model, not here).
        ClientMessage::Subscribe(Subscribe {
            regions: Some(regions),
            since_by_region,
            ..
        }) => regions
            .iter()
            .map(|r| match since_by_region.contains_key(r) {
                true => weight::RESUME,
                false => weight::SNAPSHOT,
            })
            .sum(),
        ClientMessage::Subscribe(Subscribe {
            since: Some(since), ..
        }) if since.epoch == epoch => weight::RESUME,
        ClientMessage::Subscribe(_) => weight::SNAPSHOT,
        ClientMessage::IncidentRecommend(_) => weight::RECOMMEND,
        _ => weight::COMMAND,
    }
}

/// The weights of [`cost`].
mod weight {
    /// Any command that writes (or reads) one record, and `ping`.
    pub(super) const COMMAND: u32 = 1;
    /// `incident.recommend`.
    pub(super) const RECOMMEND: u32 = 10;
    /// `subscribe` with `since` in the current epoch: replays from memory or disk.
    pub(super) const RESUME: u32 = 250;
    /// `subscribe` without `since` (or an old epoch's): a full snapshot.
    pub(super) const SNAPSHOT: u32 = 1000;
}

/// A refused frame: the `error` reply's code and message.
type Refusal = (ErrorCode, String);

/// What a frame becomes once the role matrix let it through.
#[derive(Debug)]
enum Allowed {
    /// `ping`: answered by the session itself.
    Ping,
    /// `subscribe` to topics the role may see; `unit` is a tablet's own unit.
    Subscribe {
        unit: Option<String>,
        subscribe: Subscribe,
    },
    /// `incident.recommend` (read-only, no event).
    Recommend(RecommendQuery),
    /// `incident.create` by address: the session places it, then it is a command.
    Place(Unplaced),
    /// A state-changing command for the engine. "Own incident" rules are the
    /// engine's: only it knows which incident a unit is on.
    Command(Command),
}

/// The role matrix of `shared/PROTOCOL.md` section 3: what `role` (acting as
/// `actor`) may do with `message`. Pure: no session, no engine, no clock.
/// A tablet's commands name its own unit whatever the frame says; a frame
/// naming another unit is `forbidden`.
fn authorize(role: Role, actor: &Actor, message: ClientMessage) -> Result<Allowed, Refusal> {
    use ClientMessage as M;
    let forbidden = |what: &str| {
        Err((
            ErrorCode::Forbidden,
            format!("role {} may not {what}", role.as_str()),
        ))
    };
    // Built only for the messages that need it (not for every fix's check).
    let own_unit = || actor.unit_id().map(str::to_owned);
    let is = |r: Role| role == r;
    let command = |command: Command| Ok(Allowed::Command(command));
    match message {
        M::Hello(_) => Err((ErrorCode::Conflict, "already authenticated".into())),
        M::Ping => Ok(Allowed::Ping),
        M::Subscribe(sub) => {
            let allowed: &[SubTopic] = match role {
                Role::Dispatcher | Role::Supervisor => {
                    &[SubTopic::Incidents, SubTopic::Units, SubTopic::Positions]
                }
                Role::Unit => &[SubTopic::Assignments],
                Role::Intake => &[],
            };
            if let Some(t) = sub.topics.iter().find(|t| !allowed.contains(t)) {
                return forbidden(&format!("subscribe to {t:?}").to_lowercase());
            }
            Ok(Allowed::Subscribe {
                unit: own_unit(),
                subscribe: sub,
            })
        }
        M::IncidentCreate(new) if is(Role::Dispatcher) => command(Command::CreateIncident(new)),
        M::IncidentCreateAt(unplaced) if is(Role::Dispatcher) => Ok(Allowed::Place(unplaced)),
        M::IncidentUpdate { incident_id, patch } if is(Role::Dispatcher) => {
            command(Command::UpdateIncident { incident_id, patch })
        }
        M::IncidentAssign(a) if is(Role::Dispatcher) => command(Command::Assign {
            incident_id: a.incident_id,
            unit_id: a.unit_id,
            force: a.force,
        }),
        M::IncidentRecommend(query) if is(Role::Dispatcher) => Ok(Allowed::Recommend(query)),
        // Units may close and annotate their own incident; the engine checks "own".
        M::IncidentClose(c) if is(Role::Dispatcher) || is(Role::Unit) => command(Command::CloseIncident {
            incident_id: c.incident_id,
            disposition: c.disposition,
        }),
        M::IncidentNote(n) if is(Role::Dispatcher) || is(Role::Unit) => command(Command::Note {
            incident_id: n.incident_id,
            text: n.text,
        }),
        M::UnitPosition(p) if is(Role::Unit) => {
            let me = own_unit().unwrap_or_default();
            if p.unit_id.as_deref().is_some_and(|u| u != me) {
                return forbidden("send another unit's position");
            }
            command(Command::Position {
                unit_id: me,
                fix: p.fix,
            })
        }
        M::UnitStatus(s) if is(Role::Unit) => {
            let me = own_unit().unwrap_or_default();
            if s.unit_id.as_deref().is_some_and(|u| u != me) {
                return forbidden("set another unit's status");
            }
            command(Command::SetStatus {
                unit_id: me,
                status: s.status,
            })
        }
        M::UnitStatus(s) if is(Role::Dispatcher) => match s.unit_id {
            Some(unit_id) => command(Command::SetStatus {
                unit_id,
                status: s.status,
            }),
            None => Err((
                ErrorCode::BadRequest,
                "unit.status from a dispatcher needs unit_id".into(),
            )),
        },
        M::AssignmentAck(a) if is(Role::Unit) => command(Command::Ack {
            unit_id: own_unit().unwrap_or_default(),
            incident_id: a.incident_id,
        }),
        M::AssignmentDecline(d) if is(Role::Unit) => command(Command::Decline {
            unit_id: own_unit().unwrap_or_default(),
            incident_id: d.incident_id,
            reason: d.reason,
        }),
        M::UnitEmergency(e) if is(Role::Unit) => command(Command::Emergency {
            unit_id: own_unit().unwrap_or_default(),
            active: e.active,
            location: e.location,
        }),
        other => forbidden(other.type_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns of the table: each role, the unit being tablet `P-2`.
    fn sessions() -> [(Role, Actor); 4] {
        [Role::Dispatcher, Role::Supervisor, Role::Unit, Role::Intake].map(|role| {
            let mut claims = Claims::new(role.as_str(), role, 0, 60);
            if role == Role::Unit {
                claims.unit = Some("P-2".into());
            }
            (role, actor_of(&claims))
        })
    }

    #[test]
    fn command_weights() {
        let cost_of = |json: &str| cost(&message(json), "E1");
        assert_eq!(cost_of(r#"{"type":"ping"}"#), weight::COMMAND);
        assert_eq!(
            cost_of(r#"{"type":"unit.position","lat":51.2,"lon":51.3}"#),
            weight::COMMAND
        );
        assert_eq!(
            cost_of(r#"{"type":"incident.recommend","location":{"lat":51.2,"lon":51.3}}"#),
            weight::RECOMMEND
        );
        assert_eq!(
            cost_of(r#"{"type":"subscribe","topics":["incidents"]}"#),
            weight::SNAPSHOT
        );
        assert_eq!(
            cost_of(r#"{"type":"subscribe","topics":["incidents"],"since":{"epoch":"E1","seq":5}}"#),
            weight::RESUME
        );
        // Another epoch's cursor gets a snapshot, and pays for one.
        assert_eq!(
            cost_of(r#"{"type":"subscribe","topics":["incidents"],"since":{"epoch":"E0","seq":5}}"#),
            weight::SNAPSHOT
        );
        // A desk's subscription pays per region: a resume or a snapshot each.
        assert_eq!(
            cost_of(
                r#"{"type":"subscribe","topics":["incidents"],"regions":["a","b","c"],"since_by_region":{"b":{"epoch":"E1","seq":5}}}"#
            ),
            2 * weight::SNAPSHOT + weight::RESUME
        );
    }

    fn message(json: &str) -> ClientMessage {
        decode_frame(Encoding::Json, json.as_bytes())
            .unwrap_or_else(|e| panic!("{json}: {}", e.message))
            .message
    }

    /// What the matrix decided, in the words of the table.
    fn decision(result: &Result<Allowed, Refusal>) -> &'static str {
        match result {
            Ok(Allowed::Ping) => "ping",
            Ok(Allowed::Subscribe { .. }) => "subscribe",
            Ok(Allowed::Recommend(_)) => "recommend",
            // Passed on; "own incident" is the engine's to check.
            Ok(Allowed::Command(_)) => "engine",
            // Placed by the gazetteer first, then the engine's like any create.
            Ok(Allowed::Place(_)) => "engine",
            Err((code, _)) => code.as_str(),
        }
    }

    /// `shared/PROTOCOL.md` section 3, one row per frame:
    /// [dispatcher, supervisor, unit P-2, intake].
    const MATRIX: &[(&str, [&str; 4])] = &[
        (
            r#"{"type":"hello","token":"t"}"#,
            ["conflict", "conflict", "conflict", "conflict"],
        ),
        (r#"{"type":"ping"}"#, ["ping", "ping", "ping", "ping"]),
        (
            r#"{"type":"subscribe","topics":["incidents","units"]}"#,
            ["subscribe", "subscribe", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"subscribe","topics":["positions"]}"#,
            ["subscribe", "subscribe", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"subscribe","topics":["assignments"]}"#,
            ["forbidden", "forbidden", "subscribe", "forbidden"],
        ),
        (
            r#"{"type":"subscribe","topics":["units","assignments"]}"#,
            ["forbidden", "forbidden", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"incident.create","category":"theft","priority":2,"location":{"lat":51.2,"lon":51.4}}"#,
            ["engine", "forbidden", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"incident.update","incident_id":"I-1","priority":3}"#,
            ["engine", "forbidden", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"incident.assign","incident_id":"I-1","unit_id":"P-1"}"#,
            ["engine", "forbidden", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"incident.recommend","incident_id":"I-1"}"#,
            ["recommend", "forbidden", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"incident.close","incident_id":"I-1","disposition":"done"}"#,
            ["engine", "forbidden", "engine", "forbidden"],
        ),
        (
            r#"{"type":"incident.note","incident_id":"I-1","text":"hi"}"#,
            ["engine", "forbidden", "engine", "forbidden"],
        ),
        (
            r#"{"type":"unit.position","lat":51.2,"lon":51.4}"#,
            ["forbidden", "forbidden", "engine", "forbidden"],
        ),
        (
            r#"{"type":"unit.position","unit_id":"P-2","lat":51.2,"lon":51.4}"#,
            ["forbidden", "forbidden", "engine", "forbidden"],
        ),
        (
            r#"{"type":"unit.position","unit_id":"P-1","lat":51.2,"lon":51.4}"#,
            ["forbidden", "forbidden", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"unit.status","status":"busy","unit_id":"P-1"}"#,
            ["engine", "forbidden", "forbidden", "forbidden"],
        ),
        (
            r#"{"type":"unit.status","status":"busy"}"#,
            ["bad_request", "forbidden", "engine", "forbidden"],
        ),
        (
            r#"{"type":"assignment.ack","incident_id":"I-1"}"#,
            ["forbidden", "forbidden", "engine", "forbidden"],
        ),
        (
            r#"{"type":"assignment.decline","incident_id":"I-1","reason":"flat tyre"}"#,
            ["forbidden", "forbidden", "engine", "forbidden"],
        ),
        (
            r#"{"type":"unit.emergency","active":true}"#,
            ["forbidden", "forbidden", "engine", "forbidden"],
        ),
    ];

    #[test]
    fn role_matrix() {
        let sessions = sessions();
        for (json, expected) in MATRIX {
            for ((role, actor), want) in sessions.iter().zip(expected) {
                let got = authorize(*role, actor, message(json));
                assert_eq!(decision(&got), *want, "{json} as {}: {got:?}", role.as_str());
            }
        }
    }

    #[test]
    fn a_tablet_acts_as_its_own_unit_whatever_the_frame_omits() {
        let [.., (role, actor), _] = sessions();
        let unit_of = |json: &str| match authorize(role, &actor, message(json)) {
            Ok(Allowed::Command(
                Command::Position { unit_id, .. }
                | Command::SetStatus { unit_id, .. }
                | Command::Ack { unit_id, .. }
                | Command::Decline { unit_id, .. }
                | Command::Emergency { unit_id, .. },
            )) => unit_id,
            other => panic!("{json}: {other:?}"),
        };
        for json in [
            r#"{"type":"unit.position","lat":51.2,"lon":51.4}"#,
            r#"{"type":"unit.status","status":"busy"}"#,
            r#"{"type":"assignment.ack","incident_id":"I-1"}"#,
            r#"{"type":"assignment.decline","incident_id":"I-1"}"#,
            r#"{"type":"unit.emergency","active":true}"#,
        ] {
            assert_eq!(unit_of(json), "P-2", "{json}");
        }
    }

    #[test]
    fn a_refusal_names_the_role_and_what_it_tried() {
        let [_, (role, actor), ..] = sessions();
        let (code, text) = authorize(
            role,
            &actor,
            message(r#"{"type":"subscribe","topics":["assignments"]}"#),
        )
        .unwrap_err();
        assert_eq!(code, ErrorCode::Forbidden);
        assert_eq!(text, "role supervisor may not subscribe to assignments");
    }
}
