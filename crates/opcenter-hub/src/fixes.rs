//! The engine thread's inbox of position fixes, beside its two request lanes.
//!
//! A fix is the hottest command (every tablet, several a second), and on its own
//! it needs neither an answer soon nor a wake-up of the engine thread: a session
//! appends it here under a short lock instead of sending it over the engine's
//! channel, and the engine thread is woken for fixes at most once every
//! [`COALESCE`] (requests on the lanes still wake it at once, and every batch
//! takes the fixes waiting). So at 50 000 fixes a second the engine thread runs a
//! few hundred batches, not tens of thousands, and the read model gets as few.
//!
//! **Order.** Every request, fix or not, takes a number from one counter when it
//! is sent (a fix under the inbox's lock, so the inbox is in number order). A
//! batch is sorted by number, so a session's requests are applied in the order it
//! sent them: a session sends its next frame only once the previous one is in the
//! channel or here, so the earlier one always has the lower number, and a batch
//! that takes a fix also takes every channel request numbered before it
//! ([`FixInbox::take_before`] with the highest number the batch took when the
//! channel was not emptied). Urgent requests still lead a batch, as before.
//!
//! **Bound.** The inbox holds at most as many fixes as a lane (`hub.engine_queue`);
//! past that a fix goes over the normal lane, which waits for room: the same
//! backpressure as every other command.
//!
//! Owns: the inbox, its numbering, when the engine thread is woken for fixes.
//! Must never: reorder two requests of one session, drop a fix it accepted, or
//! hold its lock while applying anything.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opcenter_core::Command;
use tokio::sync::Notify;

use crate::engine_task::Request;

/// How long a fix may wait for a batch when nothing else wakes the engine thread:
/// the engine thread wakes for fixes at most this often. Small against
/// `hub.position_interval_ms` (100 ms), which paces what supervisors see.
pub(crate) const COALESCE: Duration = Duration::from_millis(5);

/// A request and its number (the order sessions sent it in).
pub(crate) type Numbered = (u64, Request);

/// See the module docs.
pub(crate) struct FixInbox {
    fixes: Mutex<Vec<Numbered>>,
    /// The next request's number (fixes and lane requests alike).
    next: AtomicU64,
    /// Signalled when a fix lands in an empty inbox.
    notify: Notify,
    /// Most fixes held; past it [`FixInbox::push`] refuses.
    capacity: usize,
    /// False on a hub node: its feed thread takes only the lanes.
    enabled: bool,
    /// The engine thread is gone: nothing is taken any more.
    closed: AtomicBool,
}

/// True for a request that may go to the inbox: a position fix.
pub(crate) fn is_fix(req: &Request) -> bool {
    matches!(
        req,
        Request::Command {
            command: Command::Position { .. },
            ..
        }
    )
}

impl FixInbox {
    /// An inbox of at most `capacity` fixes; a disabled one refuses every fix.
    pub(crate) fn new(capacity: usize, enabled: bool) -> Self {
        FixInbox {
            fixes: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            notify: Notify::new(),
            capacity: capacity.max(1),
            enabled,
            closed: AtomicBool::new(false),
        }
    }

    /// A number for a request sent over a lane.
    pub(crate) fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a fix; gives it back (`Some`) when the inbox is disabled, closed or
    /// full (the caller sends it over the normal lane instead).
    pub(crate) fn push(&self, req: Request) -> Option<Request> {
        if !self.enabled || self.closed.load(Ordering::Relaxed) {
            return Some(req);
        }
        let mut fixes = self.fixes.lock().unwrap_or_else(|e| e.into_inner());
        if fixes.len() >= self.capacity {
            return Some(req);
        }
        let was_empty = fixes.is_empty();
        // Numbered under the lock: the inbox stays in number order.
        fixes.push((self.number(), req));
        drop(fixes);
        if was_empty {
            self.notify.notify_one();
        }
        None
    }

    /// Waits until a fix landed in an empty inbox (maybe already taken since).
    pub(crate) async fn landed(&self) {
        self.notify.notified().await
    }

    /// Takes the fixes numbered below `limit`, oldest first, into `out`; true when
    /// the inbox is empty afterwards.
    pub(crate) fn take_before(&self, limit: u64, out: &mut Vec<Numbered>) -> bool {
        let mut fixes = self.fixes.lock().unwrap_or_else(|e| e.into_inner());
        let n = fixes.partition_point(|(seq, _)| *seq < limit);
        if n == fixes.len() {
            out.append(&mut fixes);
        } else {
            out.extend(fixes.drain(..n));
        }
        fixes.is_empty()
    }

    /// True when no fix is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.fixes.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// The engine thread is gone: refuse fixes from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// A fix of unit `P-1` at `lat` (tests).
#[cfg(test)]
pub(crate) fn test_fix(lat: f64) -> Request {
    use opcenter_core::{Actor, ActorKind, Location, PositionFix};
    Request::Command {
        actor: Actor {
            sub: "P-1".into(),
            kind: ActorKind::Unit("P-1".into()),
        },
        command: Command::Position {
            unit_id: "P-1".into(),
            fix: PositionFix {
                location: Location { lat, lon: 51.4 },
                heading: None,
                speed: None,
                accuracy: None,
                at_ms: None,
            },
        },
        reply: crate::engine_task::ReplyTo::Http(tokio::sync::oneshot::channel().0),
        received: std::time::Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_fix as fix;

    fn lat_of(r: &Numbered) -> f64 {
        match &r.1 {
            Request::Command {
                command: Command::Position { fix, .. },
                ..
            } => fix.location.lat,
            _ => f64::NAN,
        }
    }

    #[test]
    fn fixes_come_out_in_the_order_they_went_in_and_numbered_with_the_lanes() {
        let inbox = FixInbox::new(10, true);
        assert!(inbox.push(fix(51.1)).is_none());
        let lane = inbox.number();
        assert!(inbox.push(fix(51.2)).is_none());
        assert!(inbox.push(fix(51.3)).is_none());
        // Only what was numbered before the lane request.
        let mut out = Vec::new();
        assert!(!inbox.take_before(lane, &mut out));
        assert_eq!(out.iter().map(lat_of).collect::<Vec<_>>(), vec![51.1]);
        assert!(inbox.take_before(u64::MAX, &mut out));
        assert_eq!(out.iter().map(lat_of).collect::<Vec<_>>(), vec![51.1, 51.2, 51.3]);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0) && out[0].0 < lane && lane < out[1].0);
        assert!(inbox.is_empty());
    }

    #[test]
    fn a_full_disabled_or_closed_inbox_gives_the_fix_back() {
        let full = FixInbox::new(2, true);
        assert!(full.push(fix(51.1)).is_none());
        assert!(full.push(fix(51.2)).is_none());
        assert!(full.push(fix(51.3)).is_some(), "full");
        assert!(FixInbox::new(2, false).push(fix(51.1)).is_some(), "disabled");
        let closed = FixInbox::new(2, true);
        closed.close();
        assert!(closed.push(fix(51.1)).is_some(), "closed");
    }

    #[test]
    fn the_first_fix_in_an_empty_inbox_wakes_the_engine_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let inbox = FixInbox::new(10, true);
        assert!(inbox.push(fix(51.1)).is_none());
        assert!(inbox.push(fix(51.2)).is_none());
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), inbox.landed())
                .await
                .expect("woken by the first fix");
            // The second fix found the inbox not empty: no second wake-up stored.
            let again = tokio::time::timeout(Duration::from_millis(50), inbox.landed()).await;
            assert!(again.is_err(), "one wake-up for a run of fixes");
        });
    }
}
