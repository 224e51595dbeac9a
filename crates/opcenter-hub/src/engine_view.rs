//! The engine's state, shared read-only with the sessions between batches, so a
//! read that needs nothing but that state (`incident.recommend`) is answered on
//! the session's own task: no hop to the engine thread and back, no wait behind
//! the batch in progress.
//!
//! Two locks. `engine` holds the [`Engine`]; the engine thread takes it (write)
//! for each access. `gate` is held (write) by the engine thread for a whole
//! batch, from its first apply until its events are durable and its replies
//! queued (or it is rolled back), and on a pipelined journal for as long as any
//! batch is in flight. A reader gets the state only through the gate (read,
//! never waiting: [`EngineView::try_read`]), so it sees committed state and
//! nothing else; while a batch is in progress it is told to ask the engine
//! thread instead, which answers after the batch, as before.
//!
//! Owns: that sharing. Must never: let a reader see a batch not yet durable, or
//! make a session's task wait for the engine thread (a reader never blocks on
//! the gate; behind the gate the engine lock is free or held by another reader).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use opcenter_core::Engine;

/// See the module documentation.
pub(crate) struct EngineView {
    gate: RwLock<()>,
    engine: RwLock<Engine>,
}

impl EngineView {
    /// Shares `engine`.
    pub(crate) fn new(engine: Engine) -> Arc<Self> {
        Arc::new(EngineView {
            gate: RwLock::new(()),
            engine: RwLock::new(engine),
        })
    }

    /// `f` over the committed state, or `None` while a batch is in progress
    /// (or the engine thread died holding the gate): ask the engine thread.
    pub(crate) fn try_read<R>(&self, f: impl FnOnce(&Engine) -> R) -> Option<R> {
        let _gate = self.gate.try_read().ok()?;
        // Behind the gate the engine thread holds no lock on the engine: this
        // waits, if at all, for nothing (readers share it).
        let engine = self.engine.read().unwrap_or_else(|e| e.into_inner());
        Some(f(&engine))
    }

    /// The engine thread: closes the gate until the guard is dropped (waits for
    /// the readers inside, each a few microseconds).
    pub(crate) fn batch(&self) -> RwLockWriteGuard<'_, ()> {
        // A poisoned gate (a panic while it was held) is the engine thread's own;
        // the state behind it is what the thread left, as without the lock.
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine thread: the engine, for one access (never held across another).
    pub(crate) fn engine(&self) -> RwLockWriteGuard<'_, Engine> {
        self.engine.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine, read-only, ignoring the gate (the engine thread's own reads,
    /// and tests).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Engine> {
        self.engine.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_are_turned_away_while_a_batch_is_in_progress() {
        let view = EngineView::new(Engine::new(Default::default()));
        assert_eq!(view.try_read(|_| 1), Some(1));
        let gate = view.batch();
        // The engine thread changes the state meanwhile: no reader may see it.
        view.engine().take_retired();
        assert_eq!(view.try_read(|_| 2), None, "the gate is closed");
        drop(gate);
        assert_eq!(view.try_read(|_| 3), Some(3), "the batch is over");
    }
}
