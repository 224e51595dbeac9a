//! The hub role's feed thread: in a hub node it takes the engine thread's place.
//!
//! Sessions and HTTP handlers send the same [`Request`]s as in a single process;
//! this thread never applies a command. It forwards commands, tablets' hellos and
//! byes and recommendations to the region's engine over NATS ([`crate::bridge`]),
//! and is fed the region's committed batches by a [`opcenter_cluster::Follower`]
//! of the stream. Each batch is folded into a copy of the engine state (for
//! `hello` replies), published to the live subscribers ([`Fanout`]) and handed to
//! the read model as a [`Committed`] batch, exactly as the engine thread does
//! after a commit: the read model does not know which of the two feeds it.
//!
//! An engine's answer carries the seq its commit reached; the client's reply is
//! held until this hub's follower delivered that seq, so a client sees a
//! command's events before (or with) its `ok`, as on a single process.
//!
//! If the stream is replaced (another epoch) or broken, every client is closed
//! with 4008 (`Shared::replaced`) and the node stops: serving the old state as
//! current would be wrong, and a restart rebuilds from the new stream.
//!
//! Owns: the mirror copy of the engine, held replies. Must never: apply a
//! command, append to the journal, or answer `ok` for a command no engine
//! acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use opcenter_cluster::Follower;
use opcenter_core::{Actor, Applied, Command, Engine, Event, PositionItem, Reply};
use opcenter_proto::ErrorCode;
use opcenter_proto::auth::Role;
use opcenter_proto::server::RecommendOk;
use opcenter_store::Record;

use crate::bridge::{Answer, CallBody, Forwarder};
use crate::engine_task::{
    self, EngineRx, REGISTRATION_FAILED, ReplyTo, Request, Shared, StopGuard, hello_ok, register_subscription,
};
use crate::fanout::Fanout;
use crate::outbox::Outbox;
use crate::read_model::{Committed, ReadRequest};
use crate::{metric, record, wire};

/// How often the stream's identity is checked (a replaced stream).
const EPOCH_CHECK: Duration = Duration::from_secs(2);
/// How long the hub's follower may read nothing while the stream holds more before
/// its consumer is created again (its NATS server went away).
const STALLED: Duration = Duration::from_secs(3);

/// What reaches the feed thread besides the sessions' requests.
#[allow(clippy::large_enum_variant)] // moved once through a channel
pub(crate) enum Feed {
    /// Records of one committed batch, in order, from the follower.
    Batch(Vec<Record>),
    /// Fixes the engine accepted (`pos.<region>.out`).
    Positions(Vec<PositionItem>),
    /// The engine's answer to a forwarded command.
    Answer {
        reply: ReplyTo,
        name: &'static str,
        received: Instant,
        answer: Answer,
    },
    /// The engine's answer to a tablet's hello.
    Hello {
        outbox: Arc<Outbox>,
        id: Option<u64>,
        actor: Actor,
        role: Role,
        answer: Answer,
    },
    /// The stream was replaced or cannot be followed: close everyone, stop.
    Lost(String),
}

/// A reply held until the follower reaches `seq`.
// Moved once into and out of a short list: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Held {
    Command {
        reply: ReplyTo,
        reply_body: Reply,
        name: &'static str,
        received: Instant,
    },
    Hello {
        outbox: Arc<Outbox>,
        id: Option<u64>,
        actor: Actor,
        role: Role,
    },
}

/// The feed thread of a hub node.
pub(crate) struct Mirror {
    engine: Engine,
    last_seq: u64,
    fanout: Fanout,
    reads: std::sync::mpsc::Sender<ReadRequest>,
    shared: Arc<Shared>,
    forward: Arc<Forwarder>,
    handle: tokio::runtime::Handle,
    feed_tx: mpsc::UnboundedSender<Feed>,
    held: Vec<(u64, Held)>,
}

impl Mirror {
    pub(crate) fn new(
        engine: Engine,
        last_seq: u64,
        reads: std::sync::mpsc::Sender<ReadRequest>,
        shared: Arc<Shared>,
        forward: Arc<Forwarder>,
        feed_tx: mpsc::UnboundedSender<Feed>,
    ) -> Mirror {
        Mirror {
            engine,
            last_seq,
            fanout: Fanout::new(shared.region.clone()),
            reads,
            shared,
            forward,
            handle: tokio::runtime::Handle::current(),
            feed_tx,
            held: Vec::new(),
        }
    }

    /// Serves until every request sender is gone (shutdown) or the feed ends.
    pub(crate) fn run(mut self, mut rx: EngineRx, mut feed: mpsc::UnboundedReceiver<Feed>) {
        let _guard = StopGuard::new(self.shared.clone(), "hub feed");
        let waiter = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "hub feed thread: no runtime to wait on its queues");
                return;
            }
        };
        loop {
            #[allow(clippy::large_enum_variant)] // lives for one loop turn
            enum Next {
                Req(Request),
                Feed(Feed),
            }
            let next = waiter.block_on(async {
                tokio::select! {
                    biased;
                    Some(f) = feed.recv() => Some(Next::Feed(f)),
                    Some((_, r)) = rx.urgent.recv() => Some(Next::Req(r)),
                    // Closed once every session and handler is gone: shutdown.
                    r = rx.normal.recv() => r.map(|(_, r)| Next::Req(r)),
                }
            });
            match next {
                None => break,
                Some(Next::Req(r)) => self.request(r),
                Some(Next::Feed(Feed::Lost(why))) => {
                    tracing::error!(reason = %why, "the region's stream was replaced or lost: closing every client with 4008");
                    self.shared.replaced.send_replace(Some(why));
                    break;
                }
                Some(Next::Feed(f)) => self.feed(f),
            }
        }
        tracing::info!("hub feed thread stopped");
    }

    fn request(&mut self, req: Request) {
        let now = engine_task::now_ms();
        match req {
            Request::Command {
                actor,
                command,
                reply,
                received,
            } => {
                let name = command.name();
                // A fix the client wants no reply to goes on the positions subject:
                // not journaled, no answer awaited, checked here for shape and by
                // the engine for the rest (a refused fix is dropped there). One with
                // an `id` is forwarded like any command: its `ok` means the engine took it.
                let wants_reply = matches!(reply, ReplyTo::Session { id: Some(_), .. });
                if let Command::Position { unit_id, fix } = &command
                    && !wants_reply
                {
                    match fix.validate() {
                        Ok(()) => {
                            self.forward.position(actor, unit_id.clone(), *fix);
                            engine_task::deliver(reply, Ok(Applied::default()), self.last_seq);
                        }
                        Err(e) => engine_task::fail(reply, (&e).into(), &e.to_string()),
                    }
                    return;
                }
                let forward = self.forward.clone();
                let tx = self.feed_tx.clone();
                // The engine writes the hub's session into the records' actor.
                let session = match &reply {
                    ReplyTo::Session { outbox, .. } => Some(forward.session_key(&outbox.session)),
                    _ => None,
                };
                self.handle.spawn(async move {
                    let answer = forward
                        .call(CallBody::Command {
                            actor,
                            command,
                            session,
                        })
                        .await;
                    let _ = tx.send(Feed::Answer {
                        reply,
                        name,
                        received,
                        answer,
                    });
                });
            }
            Request::Hello {
                outbox,
                id,
                actor,
                role,
                profile,
            } => match profile {
                None => hello_ok(
                    &self.engine,
                    &self.shared.epoch,
                    self.last_seq,
                    &outbox,
                    id,
                    &actor,
                    role,
                ),
                Some(profile) => {
                    let forward = self.forward.clone();
                    let tx = self.feed_tx.clone();
                    let session = forward.session_key(&outbox.session);
                    self.handle.spawn(async move {
                        let call = CallBody::Hello {
                            session,
                            actor: actor.clone(),
                            profile,
                        };
                        let answer = forward.call(call).await;
                        let _ = tx.send(Feed::Hello {
                            outbox,
                            id,
                            actor,
                            role,
                            answer,
                        });
                    });
                }
            },
            Request::Bye { session, unit } => {
                let forward = self.forward.clone();
                let session = forward.session_key(&session);
                self.handle.spawn(async move {
                    if let Answer::Refused { message, .. } =
                        forward.call(CallBody::Bye { session, unit }).await
                    {
                        tracing::warn!(%message, "a tablet's bye did not reach the engine");
                    }
                });
            }
            Request::Subscribe {
                outbox,
                id,
                unit,
                subscribe,
            } => register_subscription(
                &mut self.fanout,
                &self.reads,
                self.last_seq,
                outbox,
                id,
                unit,
                subscribe,
            ),
            Request::Unsubscribe { outbox } => {
                engine_task::unregister_subscription(&mut self.fanout, &self.reads, outbox)
            }
            Request::Recommend { outbox, id, query } => {
                let forward = self.forward.clone();
                self.handle.spawn(async move {
                    match forward.call(CallBody::Recommend { query }).await {
                        Answer::Recommended(r) => {
                            let body = RecommendOk {
                                candidates: &r.candidates,
                                shortfall: r.shortfall,
                            };
                            if let Some(m) = wire::ok_if_asked(outbox.encoding, id, body) {
                                outbox.push(m);
                            }
                        }
                        Answer::Refused { code, message } => {
                            outbox.push_error(id, crate::bridge::error_code(&code), &message)
                        }
                        Answer::Done { .. } => {
                            outbox.push_error(id, ErrorCode::Internal, "unexpected engine answer")
                        }
                    }
                });
            }
            Request::RemoteRecommend { reply, .. } => {
                let _ = reply.send(Err((ErrorCode::Internal, "a hub node has no engine".into())));
            }
            Request::Tick => {
                let _ = now;
                self.fanout.prune_closed();
            }
        }
    }

    fn feed(&mut self, f: Feed) {
        match f {
            Feed::Batch(records) => self.batch(records),
            Feed::Positions(positions) => {
                let _ = self.reads.send(ReadRequest::Committed(Committed {
                    first_seq: self.last_seq + 1,
                    events: Vec::new(),
                    frames: Vec::new(),
                    positions,
                    next_incident_no: self.engine.next_incident_no(),
                    state: None,
                    retired: Vec::new(),
                }));
            }
            Feed::Answer {
                reply,
                name,
                received,
                answer,
            } => match answer {
                Answer::Done { seq, reply: body } => self.hold(
                    seq,
                    Held::Command {
                        reply,
                        reply_body: body.into(),
                        name,
                        received,
                    },
                ),
                Answer::Refused { code, message } => {
                    metrics::counter!(metric::COMMANDS, "type" => name, "outcome" => "error").increment(1);
                    engine_task::fail(reply, crate::bridge::error_code(&code), &message);
                }
                Answer::Recommended(_) => {
                    engine_task::fail(reply, ErrorCode::Internal, "unexpected engine answer")
                }
            },
            Feed::Hello {
                outbox,
                id,
                actor,
                role,
                answer,
            } => match answer {
                Answer::Done { seq, .. } => self.hold(
                    seq,
                    Held::Hello {
                        outbox,
                        id,
                        actor,
                        role,
                    },
                ),
                Answer::Refused { code, message } => {
                    outbox.push_error(id, crate::bridge::error_code(&code), &message);
                    outbox.close(REGISTRATION_FAILED);
                }
                Answer::Recommended(_) => {
                    outbox.push_error(id, ErrorCode::Internal, "unexpected engine answer");
                    outbox.close(REGISTRATION_FAILED);
                }
            },
            Feed::Lost(_) => unreachable!("handled by run"),
        }
    }

    fn batch(&mut self, records: Vec<Record>) {
        let Some(first_seq) = records.first().map(|r| r.seq) else {
            return;
        };
        let mut events: Vec<Arc<Event>> = Vec::with_capacity(records.len());
        for rec in &records {
            match record::decode_event(rec) {
                Ok(e) => events.push(Arc::new(e)),
                Err(e) => {
                    // A record this build cannot read: stop rather than serve a gap.
                    let _ = self
                        .feed_tx
                        .send(Feed::Lost(format!("record {} unreadable: {e}", rec.seq)));
                    return;
                }
            }
        }
        let mut frames = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            self.engine.restore(event);
            frames.push(self.fanout.publish(first_seq + i as u64, event, None));
        }
        self.fanout.wake();
        self.last_seq = first_seq + events.len() as u64 - 1;
        let _ = self.reads.send(ReadRequest::Committed(Committed {
            first_seq,
            events,
            frames,
            positions: Vec::new(),
            next_incident_no: self.engine.next_incident_no(),
            state: None,
            retired: Vec::new(),
        }));
        self.release();
    }

    fn hold(&mut self, seq: u64, held: Held) {
        self.held.push((seq, held));
        self.release();
    }

    /// Answers every held reply whose commit this hub has now seen.
    fn release(&mut self) {
        if self.held.iter().all(|(s, _)| *s > self.last_seq) {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(s, _)| *s <= self.last_seq);
        self.held = waiting;
        for (_, held) in ready {
            match held {
                Held::Command {
                    reply,
                    reply_body,
                    name,
                    received,
                } => {
                    metrics::counter!(metric::COMMANDS, "type" => name, "outcome" => "ok").increment(1);
                    if name == "incident.create" {
                        metrics::histogram!(metric::CREATE_SECONDS).record(received.elapsed().as_secs_f64());
                    }
                    let applied = Applied {
                        reply: reply_body,
                        ..Applied::default()
                    };
                    engine_task::deliver(reply, Ok(applied), self.last_seq);
                }
                Held::Hello {
                    outbox,
                    id,
                    actor,
                    role,
                } => hello_ok(
                    &self.engine,
                    &self.shared.epoch,
                    self.last_seq,
                    &outbox,
                    id,
                    &actor,
                    role,
                ),
            }
        }
    }
}

/// Follows the region's stream after `after_seq` into `feed` (restarting the
/// consumer through transient errors), watches the stream's identity, and
/// forwards the engine's accepted fixes; ends with [`Feed::Lost`] when the
/// stream is replaced, or when the feed thread is gone.
pub(crate) async fn follow(
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    region: String,
    epoch: String,
    after_seq: u64,
    pos_out: String,
    feed: mpsc::UnboundedSender<Feed>,
) {
    let mut fixes = match client.subscribe(pos_out).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to positions: supervisors get none from this hub");
            None
        }
    };
    let mut next = after_seq + 1;
    let mut check = tokio::time::interval(EPOCH_CHECK);
    'restart: loop {
        let mut follower = match Follower::start(&js, &region, next - 1).await {
            Ok(f) if f.epoch() == epoch => f,
            Ok(f) => {
                let _ = feed.send(Feed::Lost(format!(
                    "stream epoch is now {}, was {epoch}",
                    f.epoch()
                )));
                return;
            }
            Err(opcenter_cluster::ClusterError::Compacted { .. }) => {
                let _ = feed.send(Feed::Lost(
                    "the stream no longer holds what this hub has not seen".into(),
                ));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the region's stream yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue 'restart;
            }
        };
        // Since when the follower has stood at this stream seq behind the stream's end.
        let mut behind: Option<(u64, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                b = follower.next_batch() => match b {
                    Some(Ok(records)) => {
                        next = follower.next_seq();
                        if feed.send(Feed::Batch(records)).is_err() {
                            return;
                        }
                    }
                    Some(Err(opcenter_cluster::ClusterError::Corrupt { .. })) => {
                        let _ = feed.send(Feed::Lost("the stream does not continue this hub's seq".into()));
                        return;
                    }
                    other => {
                        tracing::warn!(error = ?other.and_then(Result::err), "stream consumer ended; following again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'restart;
                    }
                },
                Some(m) = async { match fixes.as_mut() { Some(s) => futures_util::StreamExt::next(s).await, None => std::future::pending().await } } => {
                    if let Some(items) = crate::bridge::decode_positions(&m.payload)
                        && feed.send(Feed::Positions(items)).is_err()
                    {
                        return;
                    }
                }
                _ = check.tick() => {
                    match opcenter_cluster::stream_head(&js, &region).await {
                        Ok(Some((now, _))) if now != epoch => {
                            let _ = feed.send(Feed::Lost(format!("stream epoch is now {now}, was {epoch}")));
                            return;
                        }
                        Ok(None) => {
                            let _ = feed.send(Feed::Lost("the region's stream was deleted".into()));
                            return;
                        }
                        // The stream holds messages this follower has not read, and it
                        // has read nothing for `STALLED`: its consumer's server is gone
                        // (a NATS node restarted), which the ordered consumer notices
                        // only after two missed 15 s heartbeats. Follow again from
                        // where it stands.
                        Ok(Some((_, last))) if last > follower.stream_seq() => {
                            let read = follower.stream_seq();
                            match behind {
                                Some((at, since)) if at == read && since.elapsed() >= STALLED => {
                                    tracing::warn!(
                                        read,
                                        stream_end = last,
                                        "stream consumer stalled behind the stream's end; following again"
                                    );
                                    continue 'restart;
                                }
                                Some((at, _)) if at == read => {}
                                _ => behind = Some((read, tokio::time::Instant::now())),
                            }
                        }
                        Ok(Some(_)) => behind = None,
                        // Same stream, or NATS busy: the next check tells.
                        _ => {}
                    }
                    if feed.is_closed() {
                        return;
                    }
                }
            }
        }
    }
}
