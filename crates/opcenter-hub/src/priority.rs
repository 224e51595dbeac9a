//! The OS scheduling priority (Linux nice value) of the server's own threads:
//! the read-model thread may run nicer than the rest (`hub.reads_nice`), the
//! engine thread less nice (`hub.engine_nice`). On a machine whose cores are all
//! busy, a create waits for a CPU before the engine thread applies it
//! (docs/performance.md, "The engine thread waits for a CPU").
//!
//! Owns: changing the calling thread's nice value. Must never: change another
//! thread's, or stop the server when the OS refuses (that is logged, and the
//! thread runs unchanged).

/// Changes the calling thread's nice value by `delta` (the result clamped to
/// −20..=19; 0 leaves it alone) and returns the new value, or `None` when it was
/// left alone. On Linux `setpriority` on a thread id applies to that thread only.
/// Any thread may lower its own priority (a positive `delta`); raising it needs
/// `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it. A refusal is logged as a
/// warning naming `key` (the setting), and the thread runs unchanged.
pub(crate) fn renice_this_thread(delta: i32, key: &str) -> Option<i32> {
    if delta == 0 {
        return None;
    }
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let result = rustix::process::getpriority_process(Some(tid)).and_then(|now| {
            let target = now.saturating_add(delta).clamp(-20, 19);
            rustix::process::setpriority_process(Some(tid), target).map(|()| target)
        });
        match result {
            Ok(target) => {
                tracing::info!(setting = key, nice = target, "thread priority changed");
                Some(target)
            }
            Err(e) => {
                tracing::warn!(
                    setting = key,
                    error = %e,
                    "could not change the thread's priority (raising it needs CAP_SYS_NICE): running unchanged"
                );
                None
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        tracing::warn!(setting = key, "thread priorities are only changed on Linux");
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::renice_this_thread;

    /// The nice value the kernel reports for a thread, read the way `top -H`
    /// does (field 19 of `/proc/self/task/<tid>/stat`), not through the call
    /// under test.
    fn nice_of(tid: rustix::process::Pid) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", tid.as_raw_nonzero())).unwrap();
        // The command name (field 2) may hold spaces; fields restart after ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    /// Runs `renice_this_thread(delta)` on a fresh thread: its nice before, what
    /// the call returned, and its nice after.
    fn reniced_on_new_thread(delta: i32) -> (i32, Option<i32>, i32) {
        std::thread::spawn(move || {
            let tid = rustix::thread::gettid();
            let before = nice_of(tid);
            let set = renice_this_thread(delta, "test");
            (before, set, nice_of(tid))
        })
        .join()
        .unwrap()
    }

    #[test]
    fn lowering_changes_only_the_calling_thread() {
        let main = rustix::thread::gettid();
        let before = nice_of(main);
        let (was, set, now) = reniced_on_new_thread(10);
        assert_eq!(now, (was + 10).min(19), "lowered by 10");
        assert_eq!(set, Some(now));
        assert_eq!(nice_of(main), before, "the rest of the process is untouched");
        let (was, set, now) = reniced_on_new_thread(0);
        assert_eq!((set, now), (None, was), "0 leaves the priority alone");
    }

    /// Raising needs a privilege this test may or may not have: either way what
    /// the call reports is what the kernel then says.
    #[test]
    fn raising_reports_what_the_kernel_did() {
        let (was, set, now) = reniced_on_new_thread(-5);
        match set {
            Some(target) => {
                assert_eq!(target, (was - 5).max(-20));
                assert_eq!(now, target, "raised as reported");
            }
            None => assert_eq!(now, was, "refused: unchanged"),
        }
    }
}
