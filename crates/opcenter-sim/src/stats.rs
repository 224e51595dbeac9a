//! Measurement helpers for reports: HDR histograms of microsecond latencies, their
//! percentile summary, and `/proc/PID` readings of the server's CPU time and memory.
//!
//! Owns: recording and summarising. Must never: hold a histogram lock across `.await`.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds, shared by many tasks (a short std lock per
/// record; never held across an await point).
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        // 1 µs .. 10 min at 3 significant figures; values above saturate at the top.
        Latency(Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        ))
    }
}

impl Latency {
    /// Records one sample.
    pub fn record(&self, us: u64) {
        self.lock().saturating_record(us.max(1));
    }

    /// Records several samples under one lock.
    pub fn record_all(&self, us: impl IntoIterator<Item = u64>) {
        let mut h = self.lock();
        for v in us {
            h.saturating_record(v.max(1));
        }
    }

    /// The percentile summary so far.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // A panic while recording leaves the histogram consistent; keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Percentiles of a latency distribution, microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Summary {
    /// Summarises `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Summary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }

    /// One human line: `n=… p50 … p90 … p99 … p99.9 … max …`.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "n=0".into();
        }
        format!(
            "n={} p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.count,
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us)
        )
    }
}

/// `1234` → `1.23ms`, `12` → `12µs`, `2500000` → `2.50s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// A reading of a process's CPU time and resident memory.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ProcSample {
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on every Linux we run).
pub const USER_HZ: f64 = 100.0;

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn proc_sample(pid: u32) -> std::io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_proc(&stat, &status).ok_or_else(|| std::io::Error::other("unparsable /proc entry"))
}

/// Parses utime+stime from `stat` and VmRSS from `status`.
pub fn parse_proc(stat: &str, status: &str) -> Option<ProcSample> {
    // The command name (field 2) may hold spaces and parentheses; fields after the last
    // ')' are space-separated, starting at field 3 (state). utime, stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(ProcSample {
        cpu_ticks: utime + stime,
        rss_kib,
    })
}

/// The soft limit on open files of this process, if `/proc/self/limits` says.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles() {
        let l = Latency::default();
        l.record_all(1..=1000);
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=995).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
        assert_eq!(Summary::of(&Histogram::new(3).unwrap()).line(), "n=0");
    }

    #[test]
    fn parses_proc_entries() {
        let stat = "4242 (opcenter (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 \
                    2000000 3000 18446744073709551615";
        let status = "Name:\topcenter\nVmPeak:\t  10 kB\nVmRSS:\t   12345 kB\nThreads: 9\n";
        assert_eq!(
            parse_proc(stat, status),
            Some(ProcSample {
                cpu_ticks: 300,
                rss_kib: 12345
            })
        );
        let me = proc_sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
        assert!(open_files_limit().is_some());
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_us(12), "12µs");
        assert_eq!(fmt_us(1_234), "1.23ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}
