//! A session's outbound queue: what the engine thread and the position batcher
//! hand to one client, drained by that session's writer task.
//!
//! Frames are [`Prepared`] WebSocket frames (an event's is framed once and the
//! same bytes go to every subscriber), bounded in payload bytes: a client that does not read is closed with 4008
//! instead of slowing anyone else. Position batches never count against that
//! bound; while one is still unsent, newer ones merge into it (latest per unit
//! wins), which is how positions to a slow client are thinned first.
//!
//! A `subscribe` reserves its place in the queue on the engine thread (so live
//! events registered after it queue behind it) and the read model fills that
//! place later with the reply and any replayed events (a long replay in parts,
//! each put just before the place, which the last part ends). The writer sends
//! nothing past an unfilled place, and what fills it does not count against the
//! bound: a snapshot of a large city is one answer to one request, not a backlog.
//!
//! Events are written where they are queued when they can be: [`Outbox::wake`]
//! (the engine thread, once per committed batch) writes what is ready straight
//! to the socket with one `writev` that does not wait ([`Socket::try_write`]),
//! unless the writer task has its turn. Only what the socket does not take now
//! (or a queue the writer is busy with) wakes the writer task, which takes over
//! from the byte the direct write stopped at. The write turn is decided under
//! the queue's lock, so frames are never interleaved.
//!
//! Owns: the queue, its limits and the write turn. Must never: block (the lock
//! is held for a push, a drain or one write that does not wait, never across
//! an `.await`).

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::ws::Message;
use tokio::sync::Notify;

use opcenter_core::PositionItem;
use opcenter_proto::{Encoding, ErrorCode};

use crate::frame::Prepared;
use crate::ws_io::Socket;
use crate::{metric, wire};

/// At most this many frames in one write that does not wait (the rest goes
/// with the writer).
const DIRECT_FRAMES: usize = 64;

/// Why and how a session ends from the server's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseReason {
    /// WebSocket close code.
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    /// Send what is queued first (shutdown) or drop it (overflow, protocol errors).
    pub(crate) flush_first: bool,
}

/// Close codes the server uses.
pub(crate) mod codes {
    /// Server shutting down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// Policy violation (a flood of bad frames).
    pub(crate) const POLICY: u16 = 1008;
    /// Frame over `hub.max_frame_bytes`.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// Unauthorized / unauthenticated.
    pub(crate) const UNAUTHORIZED: u16 = 4001;
    /// No hello in time.
    pub(crate) const HELLO_TIMEOUT: u16 = 4002;
    /// Event queue overflowed: reconnect and resume with `since`.
    pub(crate) const OVERFLOW: u16 = 4008;
    /// Silent for longer than `hub.idle_timeout_s`.
    pub(crate) const IDLE: u16 = 4010;
}

enum PendingPositions {
    None,
    /// One batch, encoded once for many sessions.
    Shared(Message),
    /// Several batches merged for a slow reader: latest item per unit.
    Merged(HashMap<String, Arc<PositionItem>>),
}

/// One place in the queue.
enum Slot {
    /// A frame, whether its bytes count against the bound, and when the
    /// command that caused it was read (only for a create's assignment: the
    /// writer records the time to the socket, [`metric::ASSIGNMENT_WRITTEN_SECONDS`]).
    Frame(Prepared, bool, Option<Instant>),
    /// Reserved by [`Outbox::reserve`] for a `subscribe` reply, not yet filled.
    Reserved(u64),
}

struct State {
    frames: VecDeque<Slot>,
    /// Token of the next reservation.
    next_slot: u64,
    bytes: usize,
    positions: PendingPositions,
    /// Items of the `Shared` batch, kept to merge with if another batch arrives.
    shared_items: Option<Arc<[Arc<PositionItem>]>>,
    close: Option<CloseReason>,
    /// A deferred push is waiting for [`Outbox::wake`] (see [`Outbox::push_deferred`]).
    wake_owed: bool,
    /// Bytes of the first queued frame already on the socket: a write that did
    /// not wait stopped inside it (the writer sends the rest first).
    head_written: usize,
    /// The writer task has the write turn (it took frames and writes them).
    writing: bool,
    /// The socket, for writes without the writer (`None`: not attached, closed,
    /// or a write failed: the writer meets the error itself).
    socket: Option<Arc<Socket>>,
}

impl State {
    /// Empties the queue, except the rest of a frame already begun on the
    /// socket (it must end before anything else is sent).
    fn clear(&mut self) {
        let begun = match self.head_written {
            0 => None,
            _ => self.frames.pop_front(),
        };
        self.frames.clear();
        self.bytes = 0;
        if let Some(Slot::Frame(f, _, _)) = begun {
            self.frames.push_back(Slot::Frame(f, false, None));
        }
    }
}

/// What the writer takes in one go.
pub(crate) struct Drained {
    /// Replies and events, in order.
    pub(crate) frames: Vec<Prepared>,
    /// Bytes of the first frame already on the socket (send from there).
    pub(crate) skip: usize,
    /// For each create's assignment among `frames`: when the create was read.
    pub(crate) stamps: Vec<Instant>,
    /// The latest positions, if any.
    pub(crate) positions: Option<Prepared>,
    /// Close after sending these.
    pub(crate) close: Option<CloseReason>,
}

/// A session's outbound queue.
pub(crate) struct Outbox {
    pub(crate) encoding: Encoding,
    /// Session id (logs, the `hello` reply).
    pub(crate) session: String,
    max_bytes: usize,
    state: Mutex<State>,
    notify: Notify,
    /// Mirrors `State::close.is_some()` so the fan-out can prune without locking.
    closed: AtomicBool,
    /// The session's subscription names `regions` (a national desk): its events,
    /// position batches and subscribe replies carry their region.
    region_tags: AtomicBool,
    /// The session's commands the engine has answered (applied and durable, or
    /// refused): while fewer than it sent, its reads go to the engine thread,
    /// behind them, not to the [`crate::engine_view::EngineView`].
    commands_answered: AtomicU64,
}

impl Outbox {
    /// An empty queue bounded at `max_bytes` of frames.
    pub(crate) fn new(session: String, encoding: Encoding, max_bytes: usize) -> Arc<Self> {
        Arc::new(Outbox {
            encoding,
            session,
            max_bytes,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                next_slot: 0,
                bytes: 0,
                positions: PendingPositions::None,
                shared_items: None,
                close: None,
                wake_owed: false,
                head_written: 0,
                writing: false,
                socket: None,
            }),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            region_tags: AtomicBool::new(false),
            commands_answered: AtomicU64::new(0),
        })
    }

    /// Whether what is queued from now on carries its region (set by each
    /// `subscribe`: true when it names `regions`).
    pub(crate) fn set_region_tags(&self, on: bool) {
        self.region_tags.store(on, Ordering::Release);
    }

    /// The engine thread answered one of this session's commands (after its
    /// batch is durable, or refusing it).
    pub(crate) fn command_answered(&self) {
        self.commands_answered.fetch_add(1, Ordering::Release);
    }

    /// How many of this session's commands the engine has answered.
    pub(crate) fn commands_answered(&self) -> u64 {
        self.commands_answered.load(Ordering::Acquire)
    }

    /// True when this session's frames carry their region (see [`Outbox::set_region_tags`]).
    pub(crate) fn region_tags(&self) -> bool {
        self.region_tags.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in this file;
        // the queue is still consistent (every mutation is a single step), so
        // recover the guard instead of poisoning every later push.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame and wakes the writer. Returns false if the session is
    /// closed or just overflowed.
    pub(crate) fn push(&self, frame: Message) -> bool {
        let queued = self.enqueue(Prepared::of(&frame), None).is_some();
        self.notify.notify_one();
        queued
    }

    /// Queues an `error` reply (see [`Outbox::push`]).
    pub(crate) fn push_error(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        if let Some(m) = wire::error(self.encoding, id, code, message) {
            self.push(m);
        }
    }

    /// Queues a frame without waking the writer, so a publisher can queue a
    /// whole batch of events and wake each writer once (one drain, one flush).
    /// Returns true when the caller now owes this outbox a [`Outbox::wake`].
    /// `read_at`: when the create whose assignment this is was read (see [`Slot`]).
    pub(crate) fn push_deferred(&self, frame: Prepared, read_at: Option<Instant>) -> bool {
        self.enqueue(frame, read_at).unwrap_or(true)
    }

    /// Lets [`Outbox::wake`] write to `socket` itself.
    pub(crate) fn attach(&self, socket: Arc<Socket>) {
        let mut st = self.lock();
        if st.close.is_none() {
            st.socket = Some(socket);
        }
    }

    /// Sends what [`Outbox::push_deferred`] queued: straight to the socket when
    /// the writer does not have the turn and the socket takes all of it now,
    /// else (or for the rest) by the writer, woken. Returns true when it wrote
    /// to the socket here (for the count of writes).
    pub(crate) fn wake(&self) -> bool {
        let mut st = self.lock();
        st.wake_owed = false;
        let (wrote, done) = self.write_now(&mut st);
        drop(st);
        if !done {
            self.notify.notify_one();
        }
        wrote
    }

    /// One write of the ready frames that does not wait. Returns (wrote
    /// anything, nothing is left for the writer).
    fn write_now(&self, st: &mut State) -> (bool, bool) {
        if st.writing || st.close.is_some() || !matches!(st.positions, PendingPositions::None) {
            return (false, false);
        }
        let Some(socket) = st.socket.as_ref() else {
            return (false, false);
        };
        let mut parts = [IoSlice::new(&[]); DIRECT_FRAMES];
        let mut n = 0;
        for slot in st.frames.iter().take(DIRECT_FRAMES) {
            let Slot::Frame(f, ..) = slot else { break };
            let skip = if n == 0 { st.head_written } else { 0 };
            parts[n] = IoSlice::new(&f.as_bytes()[skip..]);
            n += 1;
        }
        if n == 0 {
            return (false, false);
        }
        let mut left = match socket.try_write(&parts[..n]) {
            Some(Ok(written)) => written,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return (false, false),
            None => return (false, false),
            Some(Err(_)) => {
                st.socket = None;
                return (false, false);
            }
        };
        while left > 0 {
            let Some(Slot::Frame(f, ..)) = st.frames.front() else {
                break;
            };
            let rest = f.as_bytes().len() - st.head_written;
            if left < rest {
                st.head_written += left;
                break;
            }
            left -= rest;
            st.head_written = 0;
            if let Some(Slot::Frame(f, counted, read_at)) = st.frames.pop_front() {
                if counted {
                    st.bytes -= f.payload_len();
                }
                if let Some(read_at) = read_at {
                    metrics::histogram!(metric::ASSIGNMENT_WRITTEN_SECONDS)
                        .record(read_at.elapsed().as_secs_f64());
                }
            }
        }
        (true, !matches!(st.frames.front(), Some(Slot::Frame(..))))
    }

    /// Ends the writer's turn (taken by [`Outbox::drain`] or [`Outbox::take`]).
    pub(crate) fn written(&self) {
        self.lock().writing = false;
    }

    /// Queues `frame`: `Some(first)` when queued (`first`: the first deferred push
    /// since the last wake or drain), `None` when closed or just overflowed.
    fn enqueue(&self, frame: Prepared, read_at: Option<Instant>) -> Option<bool> {
        let mut st = self.lock();
        if st.close.is_some() {
            return None;
        }
        let len = frame.payload_len();
        if st.bytes + len > self.max_bytes {
            st.clear();
            st.socket = None;
            st.close = Some(CloseReason {
                code: codes::OVERFLOW,
                reason: "event queue overflow: resume with since",
                flush_first: false,
            });
            self.closed.store(true, Ordering::Release);
            drop(st);
            metrics::counter!(metric::QUEUE_OVERFLOWS).increment(1);
            self.notify.notify_one();
            return None;
        }
        st.bytes += len;
        st.frames.push_back(Slot::Frame(frame, true, read_at));
        let first = !st.wake_owed;
        st.wake_owed = true;
        Some(first)
    }

    /// Reserves the next place in the queue for frames [`Outbox::fill`] hands
    /// in later; the writer sends nothing past it until then. `None` if closed.
    pub(crate) fn reserve(&self) -> Option<u64> {
        let mut st = self.lock();
        if st.close.is_some() {
            return None;
        }
        let token = st.next_slot;
        st.next_slot += 1;
        st.frames.push_back(Slot::Reserved(token));
        Some(token)
    }

    /// Puts `frames` in the place `token` reserved, ends the reservation and
    /// wakes the writer. They do not count against the bound. A no-op once the
    /// session closed.
    pub(crate) fn fill(&self, token: u64, frames: Vec<Prepared>) {
        self.fill_part(token, frames, true);
    }

    /// Puts `frames` just before the place `token` reserved (so the writer may
    /// send them already) and wakes the writer; `last`: the reservation ends
    /// here. A long `since` replay arrives this way, one step at a time, in
    /// order. The frames do not count against the bound. Returns false once
    /// the session closed (or the reservation is gone): the caller may stop.
    pub(crate) fn fill_part(&self, token: u64, frames: Vec<Prepared>, last: bool) -> bool {
        let mut st = self.lock();
        let Some(at) = st
            .frames
            .iter()
            .position(|s| matches!(s, Slot::Reserved(t) if *t == token))
        else {
            return false;
        };
        // The place is near the front (the writer drains everything before
        // it), so each insert shifts only the few slots ahead of it.
        let mut at = at;
        for f in frames {
            st.frames.insert(at, Slot::Frame(f, false, None));
            at += 1;
        }
        if last {
            st.frames.remove(at);
        }
        drop(st);
        self.notify.notify_one();
        true
    }

    /// Queues a position batch encoded once for many sessions (`frame`), whose
    /// items are `items`; merges with an unsent earlier batch.
    pub(crate) fn push_positions(&self, frame: &Message, items: &Arc<[Arc<PositionItem>]>) {
        let mut st = self.lock();
        if st.close.is_some() {
            return;
        }
        let st = &mut *st;
        match &mut st.positions {
            PendingPositions::None => {
                st.positions = PendingPositions::Shared(frame.clone());
                st.shared_items = Some(items.clone());
            }
            PendingPositions::Shared(_) => {
                let mut merged = HashMap::new();
                for item in st
                    .shared_items
                    .take()
                    .iter()
                    .flat_map(|i| i.iter())
                    .chain(items.iter())
                {
                    merged.insert(item.unit_id.clone(), item.clone());
                }
                st.positions = PendingPositions::Merged(merged);
            }
            PendingPositions::Merged(map) => {
                for item in items.iter() {
                    map.insert(item.unit_id.clone(), item.clone());
                }
            }
        }
        self.notify.notify_one();
    }

    /// Queues a position batch; one tagged with its region (`Some`: a session
    /// subscribed to several regions) queues like an event instead, in order and
    /// counted against the bound, so batches of two regions are never merged.
    pub(crate) fn push_positions_of(
        &self,
        region: Option<&str>,
        frame: &Message,
        items: &Arc<[Arc<PositionItem>]>,
    ) {
        match region {
            None => self.push_positions(frame, items),
            Some(_) => {
                self.push(frame.clone());
            }
        }
    }

    /// Asks the writer to close the session.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.close.is_none() {
            if !reason.flush_first {
                st.clear();
            }
            // The writer sends the rest; the socket is shut when it lets go too.
            st.socket = None;
            st.close = Some(reason);
            self.closed.store(true, Ordering::Release);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// The close code requested, if any (the first request wins).
    pub(crate) fn close_code(&self) -> Option<u16> {
        self.lock().close.as_ref().map(|c| c.code)
    }

    /// True once a close was requested (the fan-out drops such sessions).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until there is something to send, then takes all of it, and
    /// with it the write turn (until [`Outbox::written`]).
    pub(crate) async fn drain(&self) -> Drained {
        loop {
            let notified = self.notify.notified();
            if let Some(d) = self.try_drain(false) {
                return d;
            }
            notified.await;
        }
    }

    /// Takes whatever there is to send now (maybe nothing) and the write turn
    /// (until [`Outbox::written`]): the writer's turn for a ping or a pong.
    pub(crate) fn take(&self) -> Drained {
        self.try_drain(true).unwrap_or_else(|| Drained {
            frames: Vec::new(),
            skip: 0,
            stamps: Vec::new(),
            positions: None,
            close: None,
        })
    }

    fn try_drain(&self, always: bool) -> Option<Drained> {
        let mut st = self.lock();
        // Frames up to the first unfilled reservation may go; nothing after it,
        // and no positions either (they would overtake the `subscribe` reply).
        let ready = st
            .frames
            .iter()
            .position(|s| matches!(s, Slot::Reserved(_)))
            .unwrap_or(st.frames.len());
        let held = ready < st.frames.len();
        let has_positions = !held && !matches!(st.positions, PendingPositions::None);
        if ready == 0 && !has_positions && st.close.is_none() && !always {
            return None;
        }
        let st = &mut *st;
        st.writing = true;
        let skip = std::mem::take(&mut st.head_written);
        let mut frames = Vec::with_capacity(ready);
        let mut stamps = Vec::new();
        for slot in st.frames.drain(..ready) {
            if let Slot::Frame(f, counted, read_at) = slot {
                if counted {
                    st.bytes -= f.payload_len();
                }
                frames.push(f);
                stamps.extend(read_at);
            }
        }
        st.wake_owed = false;
        let positions = if held {
            None
        } else {
            take_positions(st, self.encoding)
        };
        // After a close, keep handing out the close until the writer acts on it.
        let close = st.close;
        Some(Drained {
            frames,
            skip,
            stamps,
            positions,
            close,
        })
    }
}

/// The pending position batch, if any, as one frame.
fn take_positions(st: &mut State, encoding: Encoding) -> Option<Prepared> {
    let positions = match std::mem::replace(&mut st.positions, PendingPositions::None) {
        PendingPositions::None => None,
        PendingPositions::Shared(frame) => Some(Prepared::of(&frame)),
        PendingPositions::Merged(map) => {
            let items: Vec<&PositionItem> = map.values().map(|i| i.as_ref()).collect();
            wire::positions_frame(encoding, &items, None).map(|m| Prepared::of(&m))
        }
    };
    st.shared_items = None;
    positions
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn item(unit: &str, at_ms: i64) -> Arc<PositionItem> {
        Arc::new(PositionItem {
            unit_id: unit.into(),
            lat: 1.0,
            lon: 2.0,
            heading: None,
            speed: None,
            at_ms,
        })
    }

    fn text(s: &str) -> Prepared {
        Prepared::of(&Message::Text(s.into()))
    }

    #[tokio::test]
    async fn overflow_closes_with_4008_and_drops_frames() {
        let ob = Outbox::new("s".into(), Encoding::Json, 100);
        assert!(ob.push(Message::Text("x".repeat(60).into())));
        assert!(!ob.push(Message::Text("y".repeat(60).into())));
        let d = ob.drain().await;
        assert!(d.frames.is_empty());
        assert_eq!(d.close.unwrap().code, codes::OVERFLOW);
    }

    #[tokio::test]
    async fn unsent_position_batches_merge_latest_per_unit() {
        let ob = Outbox::new("s".into(), Encoding::Json, 1000);
        let a: Arc<[Arc<PositionItem>]> = vec![item("P-1", 1), item("P-2", 1)].into();
        let b: Arc<[Arc<PositionItem>]> = vec![item("P-1", 2)].into();
        ob.push_positions(&Message::Text("batch-a".into()), &a);
        ob.push_positions(&Message::Text("batch-b".into()), &b);
        let d = ob.drain().await;
        let text = d.positions.unwrap();
        let v: serde_json::Value = serde_json::from_slice(text.payload()).unwrap();
        let mut items: Vec<(String, i64)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["unit_id"].as_str().unwrap().to_string(),
                    i["at_ms"].as_i64().unwrap(),
                )
            })
            .collect();
        items.sort();
        assert_eq!(items, vec![("P-1".to_string(), 2), ("P-2".to_string(), 1)]);
    }

    #[tokio::test]
    async fn deferred_pushes_owe_one_wake_until_drained() {
        let ob = Outbox::new("s".into(), Encoding::Json, 1000);
        let read_at = Instant::now();
        assert!(ob.push_deferred(text("a"), None));
        assert!(!ob.push_deferred(text("b"), Some(read_at)));
        ob.wake();
        let d = ob.drain().await;
        assert_eq!(d.frames.len(), 2);
        assert_eq!(
            d.stamps,
            vec![read_at],
            "the stamped frame's instant goes to the writer"
        );
        assert!(ob.push_deferred(text("c"), None));
    }

    #[tokio::test]
    async fn nothing_passes_an_unfilled_reservation_and_its_fill_is_not_bounded() {
        let ob = Outbox::new("s".into(), Encoding::Json, 100);
        ob.push(Message::Text("before".into()));
        let slot = ob.reserve().unwrap();
        ob.push(Message::Text("live".into()));
        ob.push_positions(&Message::Text("pos".into()), &vec![item("P-1", 1)].into());
        let d = ob.drain().await;
        assert_eq!(d.frames, vec![text("before")]);
        assert!(d.positions.is_none(), "positions wait behind the reply");
        // 500 bytes of reply into a 100-byte queue: not an overflow.
        ob.fill(slot, vec![text(&"r".repeat(500))]);
        let d = ob.drain().await;
        assert!(d.close.is_none());
        assert_eq!(d.frames.len(), 2);
        assert_eq!(d.frames[0].payload_len(), 500);
        assert_eq!(d.frames[1], text("live"));
        assert!(d.positions.is_some());
    }

    #[tokio::test]
    async fn a_reply_filled_in_parts_goes_out_in_order_before_what_queued_behind_it() {
        let ob = Outbox::new("s".into(), Encoding::Json, 100);
        let slot = ob.reserve().unwrap();
        ob.push(Message::Text("live".into()));
        ob.push_positions(&Message::Text("pos".into()), &vec![item("P-1", 1)].into());
        assert!(ob.fill_part(slot, vec![text("ok"), text("e1")], false));
        let d = ob.drain().await;
        assert_eq!(d.frames, vec![text("ok"), text("e1")], "parts go as they come");
        assert!(d.positions.is_none(), "positions wait for the whole reply");
        assert!(ob.fill_part(slot, vec![text("e2")], false));
        assert!(ob.fill_part(slot, vec![text("e3")], true));
        let d = ob.drain().await;
        assert_eq!(d.frames, vec![text("e2"), text("e3"), text("live")]);
        assert!(d.positions.is_some());
        assert!(!ob.fill_part(slot, vec![text("late")], true), "the place is gone");
    }

    /// A session's two ends over loopback TCP with small kernel buffers (so a
    /// large frame does not fit at once): the server's queue with its socket
    /// attached, its sink and reader, and a tungstenite client.
    async fn connected(
        max_bytes: usize,
    ) -> (
        Arc<Outbox>,
        crate::ws_io::Sink,
        crate::ws_io::Stream,
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    ) {
        use tokio::net::TcpSocket;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
        let listen = TcpSocket::new_v4().unwrap();
        listen.set_recv_buffer_size(4096).unwrap();
        listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listen.local_addr().unwrap();
        let listener = listen.listen(1).unwrap();
        let server = TcpSocket::new_v4().unwrap();
        server.set_send_buffer_size(4096).unwrap();
        let (server, accepted) = tokio::join!(server.connect(addr), listener.accept());
        let (sink, stream) =
            crate::ws_io::split_tcp(server.unwrap(), Vec::new(), WebSocketConfig::default()).await;
        let client =
            tokio_tungstenite::WebSocketStream::from_raw_socket(accepted.unwrap().0, Role::Client, None)
                .await;
        let ob = Outbox::new("s".into(), Encoding::Json, max_bytes);
        ob.attach(sink.socket().unwrap());
        (ob, sink, stream, client)
    }

    async fn next_text(client: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> String {
        use futures_util::StreamExt;
        match client.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(t) => t.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_batch_the_socket_takes_is_written_where_it_is_queued() {
        let (ob, _sink, _stream, mut client) = connected(1 << 20).await;
        assert!(ob.push_deferred(text("a"), None));
        assert!(!ob.push_deferred(text("b"), None));
        assert!(ob.wake(), "written by wake itself");
        assert!(ob.try_drain(false).is_none(), "nothing left for the writer");
        assert_eq!(next_text(&mut client).await, "a");
        assert_eq!(next_text(&mut client).await, "b");
    }

    /// A write that did not wait stopped inside a large frame: the writer sends
    /// the frame's rest first, then the pong tungstenite queued meanwhile, then
    /// what was queued after; the client reads whole messages in that order.
    #[tokio::test]
    async fn the_writer_finishes_a_frame_begun_before_a_pong_and_later_frames() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as TMessage;
        let (ob, mut sink, mut stream, mut client) = connected(4 << 20).await;
        let big = "x".repeat(1 << 20);
        ob.push_deferred(text(&big), None);
        assert!(ob.wake(), "the socket took part of it");
        let begun = ob.lock().head_written;
        assert!(
            begun > 0 && begun < big.len(),
            "stopped inside the frame: {begun}"
        );
        ob.push_deferred(text("after"), None);
        // The client pings; the server's reader answers into the control buffer.
        client
            .send(TMessage::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        let control = sink.control();
        let reader = tokio::spawn(async move { while stream.next().await.is_some() {} });
        while control.clear() {
            tokio::task::yield_now().await;
        }
        let writer = tokio::spawn(async move {
            let d = ob.drain().await;
            assert_eq!((d.skip, d.frames.len()), (begun, 2));
            sink.write_from(d.skip, &d.frames).await.unwrap();
            ob.written();
            sink
        });
        assert_eq!(next_text(&mut client).await, big);
        assert!(matches!(client.next().await.unwrap().unwrap(), TMessage::Pong(p) if &p[..] == b"p"));
        assert_eq!(next_text(&mut client).await, "after");
        writer.await.unwrap();
        reader.abort();
    }

    /// An overflow drops what is queued but not the rest of a frame already
    /// begun on the socket: the client reads it whole, then the 4008 close.
    #[tokio::test]
    async fn an_overflow_keeps_the_rest_of_a_frame_begun() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message as TMessage;
        let (ob, mut sink, _stream, mut client) = connected(1 << 20).await;
        let big = "y".repeat(900_000);
        ob.push_deferred(text(&big), None);
        assert!(ob.wake());
        assert!(ob.lock().head_written > 0);
        assert!(ob.push_deferred(text(&"z".repeat(200_000)), None), "overflow");
        let d = ob.drain().await;
        let close = d.close.unwrap();
        assert_eq!((close.code, d.frames.len()), (codes::OVERFLOW, 1));
        let writer = tokio::spawn(async move {
            sink.write_from(d.skip, &d.frames).await.unwrap();
            sink.close(close.code, close.reason).await;
        });
        assert_eq!(next_text(&mut client).await, big);
        match client.next().await.unwrap().unwrap() {
            TMessage::Close(Some(c)) => assert_eq!(u16::from(c.code), codes::OVERFLOW),
            other => panic!("{other:?}"),
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_close_keeps_queued_frames() {
        let ob = Outbox::new("s".into(), Encoding::Json, 1000);
        ob.push(Message::Text("last words".into()));
        ob.close(CloseReason {
            code: codes::GOING_AWAY,
            reason: "shutdown",
            flush_first: true,
        });
        let d = ob.drain().await;
        assert_eq!(d.frames.len(), 1);
        assert_eq!(d.close.unwrap().code, codes::GOING_AWAY);
    }
}
