//! The refused-action log: failed sign-ins, role refusals (`forbidden`), rate
//! limits and reads of the audit trail itself, in `<data_dir>/audit-log.jsonl`,
//! append-only, one JSON object per line, chained with the journal's SHA-256 rule.
//!
//! A line is the entry's JSON with `"hash":"<64 hex>"` as its last field, where
//! `hash = SHA-256(previous line's hash ‖ seq as u64 LE ‖ the entry's JSON without
//! the hash field)` (the first line links to 32 zero bytes): the same
//! [`opcenter_store::link`] as the journal, so `opcenter audit verify` checks both.
//!
//! Floods are aggregated, not sampled: entries are gathered per
//! `(kind, component, reason, subject)` for one second and written as one line with a
//! `count` and the first and last time seen, so a client hammering a bad token
//! costs one line a second, not one per attempt. At most [`MAX_KEYS`] keys per
//! second; the rest of that second lands in one `overflow` line per kind. The
//! queue to the writer is bounded; entries that do not fit are counted and
//! reported in a `dropped` line, so a loss is on record too.
//!
//! Owns: the log file, its chain, the aggregation. Must never: block a session
//! or the engine thread (senders only `try_send`), or write a token.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opcenter_store::{GENESIS, Hash, hex, link};
use serde::{Deserialize, Serialize};

/// The file, in the data directory.
pub const AUDIT_LOG_FILE: &str = "audit-log.jsonl";
/// Distinct `(kind, component, reason, subject)` keys per second before the overflow line.
pub(crate) const MAX_KEYS: usize = 1000;
/// How long entries are gathered into one line per key.
const WINDOW: Duration = Duration::from_secs(1);
/// Entries queued to the writer before new ones are counted as dropped.
const QUEUE: usize = 16 * 1024;
/// Longest `subject` and `detail` kept (bytes, cut at a char boundary).
const MAX_FIELD: usize = 512;
/// Bytes of `,"hash":"<64 hex>"}`: what a line adds to its entry's JSON.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// What was refused or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A bad, expired or missing token (WebSocket `hello`, HTTP `Authorization`).
    SigninFailed,
    /// A role asked for something its role may not do.
    Forbidden,
    /// A session's command budget or the reports gateway's rate limit.
    RateLimited,
    /// A read of the audit trail (an incident's timeline).
    AuditRead,
    /// A frame the server could not use (`bad_request` and the like on a
    /// WebSocket; a hub's call the engine could not decode).
    BadFrame,
    /// Entries lost because the writer's queue was full.
    Dropped,
}

/// One refused action (or audit read), as a session or handler reports it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    /// Short and stable: the aggregation key with `kind`, `component` and `subject`.
    pub(crate) reason: String,
    /// Who: the token's `sub` when known, else `-`.
    pub(crate) subject: String,
    pub(crate) role: Option<String>,
    pub(crate) session: Option<String>,
    /// `ws` or `http`.
    pub(crate) component: &'static str,
    /// What exactly (the message type, the path, the error text).
    pub(crate) detail: String,
}

/// A line of the log (without its `hash`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    /// 1, 2, … in file order.
    pub seq: u64,
    /// First occurrence in this line (unix ms).
    pub at_ms: i64,
    /// Last occurrence in this line (unix ms).
    pub last_ms: i64,
    /// What happened.
    pub kind: Kind,
    /// Why (with `kind`, `component` and `subject`, the aggregation key).
    pub reason: String,
    /// Who (`sub`), `-` when unknown.
    pub subject: String,
    /// The role, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The session of the first occurrence, for WebSocket entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `ws` or `http`.
    pub component: String,
    /// The first occurrence's detail.
    pub detail: String,
    /// Occurrences gathered in this line.
    pub count: u64,
}

/// Why the log could not be opened, written or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    /// File trouble.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuditLogError + 'a {
    move |source| AuditLogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The senders' handle (cheap to clone).
#[derive(Clone)]
pub(crate) struct AuditLog {
    /// `None` while the data directory is unusable ([`AuditLog::disabled`]).
    tx: Option<SyncSender<Msg>>,
    dropped: Arc<AtomicU64>,
}

enum Msg {
    Entry(Entry, i64),
    Flush(std::sync::mpsc::Sender<()>),
}

impl AuditLog {
    /// Opens (or creates) the log in `dir` and starts its writer thread.
    pub(crate) fn open(dir: &Path, fsync: bool) -> Result<AuditLog, AuditLogError> {
        Self::open_with_window(dir, fsync, WINDOW)
    }

    /// [`AuditLog::open`] gathering for `window` (tests use a long one, so what
    /// lands in one line does not depend on the clock).
    fn open_with_window(dir: &Path, fsync: bool, window: Duration) -> Result<AuditLog, AuditLogError> {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let path = dir.join(AUDIT_LOG_FILE);
        let (seq, head, len) = tail(&path)?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let size = file.metadata().map_err(io("stat", &path))?.len();
        if size > len {
            // A line cut short by a crash was never complete: it goes.
            tracing::warn!(path = %path.display(), bytes = size - len, "audit log: dropping a torn last line");
            file.set_len(len).map_err(io("truncate", &path))?;
        }
        file.seek(SeekFrom::Start(len)).map_err(io("seek", &path))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            file,
            path,
            fsync,
            seq,
            head,
            every: window,
            window: HashMap::new(),
            order: Vec::new(),
            dropped: dropped.clone(),
        };
        std::thread::Builder::new()
            .name("opcenter-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(io("spawn writer for", dir))?;
        Ok(AuditLog {
            tx: Some(tx),
            dropped,
        })
    }

    /// For a server whose data directory could not be opened (it serves
    /// read-only and must not write there): entries go to the process log only.
    pub(crate) fn disabled() -> AuditLog {
        AuditLog {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues an entry; never waits (a full queue counts it as dropped).
    pub(crate) fn record(&self, mut entry: Entry) {
        cut(&mut entry.reason);
        cut(&mut entry.subject);
        cut(&mut entry.detail);
        let Some(tx) = &self.tx else {
            tracing::warn!(kind = ?entry.kind, reason = %entry.reason, subject = %entry.subject,
                detail = %entry.detail, "refused (audit log unavailable)");
            return;
        };
        match tx.try_send(Msg::Entry(entry, crate::engine_task::now_ms())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Writes everything gathered so far and waits for it (shutdown, tests).
    pub(crate) fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(log) = &self.tx
            && log.send(Msg::Flush(tx)).is_ok()
        {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn cut(s: &mut String) {
    if s.len() > MAX_FIELD {
        let mut at = MAX_FIELD;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

type Key = (Kind, &'static str, String, String);

struct Writer {
    file: File,
    path: PathBuf,
    fsync: bool,
    seq: u64,
    head: Hash,
    every: Duration,
    window: HashMap<Key, Line>,
    /// Keys in first-seen order, so lines come out in time order.
    order: Vec<Key>,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut window_end = Instant::now() + self.every;
        loop {
            let wait = window_end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Entry(entry, at_ms)) => self.gather(entry, at_ms),
                Ok(Msg::Flush(done)) => {
                    self.write_window();
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= window_end {
                self.write_window();
                window_end = Instant::now() + self.every;
            }
        }
        self.write_window();
    }

    fn gather(&mut self, e: Entry, at_ms: i64) {
        let mut key = (e.kind, e.component, e.reason, e.subject);
        if !self.window.contains_key(&key) && self.window.len() >= MAX_KEYS {
            key = (e.kind, e.component, "overflow".into(), "*".into());
        }
        match self.window.get_mut(&key) {
            Some(line) => {
                line.count += 1;
                line.last_ms = at_ms;
            }
            None => {
                let line = Line {
                    seq: 0,
                    at_ms,
                    last_ms: at_ms,
                    kind: key.0,
                    reason: key.2.clone(),
                    subject: key.3.clone(),
                    role: e.role,
                    session: e.session,
                    component: key.1.to_string(),
                    detail: e.detail,
                    count: 1,
                };
                self.order.push(key.clone());
                self.window.insert(key, line);
            }
        }
    }

    fn write_window(&mut self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let now = crate::engine_task::now_ms();
            self.gather(
                Entry {
                    kind: Kind::Dropped,
                    reason: "queue_full".into(),
                    subject: "*".into(),
                    role: None,
                    session: None,
                    component: "audit",
                    detail: "entries lost: the audit writer's queue was full".into(),
                },
                now,
            );
            if let Some(line) =
                self.window
                    .get_mut(&(Kind::Dropped, "audit", "queue_full".into(), "*".into()))
            {
                line.count = dropped;
            }
        }
        if self.order.is_empty() {
            return;
        }
        let mut buf = Vec::new();
        for key in std::mem::take(&mut self.order) {
            let Some(mut line) = self.window.remove(&key) else {
                continue;
            };
            self.seq += 1;
            line.seq = self.seq;
            let (text, hash) = seal(&self.head, &line);
            self.head = hash;
            buf.extend_from_slice(text.as_bytes());
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| if self.fsync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "audit log write failed");
        }
    }
}

/// The line's text (entry JSON with the hash as last field) and its hash.
fn seal(prev: &Hash, line: &Line) -> (String, Hash) {
    // Serializing a struct of strings and numbers cannot fail.
    let entry = serde_json::to_string(line).unwrap_or_default();
    let hash = link(prev, line.seq, entry.as_bytes());
    let mut text = entry;
    text.pop(); // the closing brace
    text.push_str(&format!(",\"hash\":\"{}\"}}", hex(&hash)));
    (text, hash)
}

/// Splits a line into its entry JSON and the hash it carries.
fn unseal(text: &str) -> Option<(String, String)> {
    if text.len() < HASH_SUFFIX_LEN + 2 || !text.is_char_boundary(text.len() - HASH_SUFFIX_LEN) {
        return None;
    }
    let (body, suffix) = text.split_at(text.len() - HASH_SUFFIX_LEN);
    let hash = suffix.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some((format!("{body}}}"), hash.to_string()))
}

/// Seq, hash and byte length of the complete lines at the end of the file.
fn tail(path: &Path) -> Result<(u64, Hash, u64), AuditLogError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, GENESIS, 0)),
        Err(e) => return Err(io("open", path)(e)),
    };
    let size = file.metadata().map_err(io("stat", path))?.len();
    // Lines are at most a few KiB (fields are cut to MAX_FIELD): the last one
    // is in the last 64 KiB.
    let from = size.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(from)).map_err(io("seek", path))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io("read", path))?;
    let Some(end) = data.iter().rposition(|&b| b == b'\n') else {
        return Ok((0, GENESIS, 0));
    };
    let start = data[..end].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let text = String::from_utf8_lossy(&data[start..end]);
    let parsed = unseal(&text).and_then(|(body, hash)| {
        let line: Line = serde_json::from_str(&body).ok()?;
        Some((line.seq, opcenter_store::unhex(&hash)?))
    });
    match parsed {
        Some((seq, hash)) => Ok((seq, hash, from + end as u64 + 1)),
        // Not ours to repair: keep the bytes, start a new run that `verify` will flag.
        None => {
            tracing::error!(path = %path.display(), "audit log: the last line does not parse; appending after it");
            Ok((0, GENESIS, from + end as u64 + 1))
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct LogVerified {
    /// Lines read.
    pub lines: u64,
    /// Occurrences they gather (sum of `count`).
    pub occurrences: u64,
    /// Hash of the last line.
    pub head: Hash,
    /// The first line whose link does not hold: (line number from 1, why).
    pub first_break: Option<(u64, String)>,
}

/// Walks the log in `dir` (read-only; the server may be writing): every line's
/// hash against the previous one. A missing file is an empty log.
pub fn verify(dir: &Path) -> Result<LogVerified, AuditLogError> {
    let path = dir.join(AUDIT_LOG_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LogVerified {
                lines: 0,
                occurrences: 0,
                head: GENESIS,
                first_break: None,
            });
        }
        Err(e) => return Err(io("open", &path)(e)),
    };
    let mut out = LogVerified {
        lines: 0,
        occurrences: 0,
        head: GENESIS,
        first_break: None,
    };
    let mut prev = GENESIS;
    let mut reader = BufReader::new(file);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader.read_until(b'\n', &mut raw).map_err(io("read", &path))?;
        // A last line without its newline is being written (or torn): not yet part of the log.
        if n == 0 || raw.last() != Some(&b'\n') {
            break;
        }
        out.lines += 1;
        let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
        let checked = check_line(&prev, out.lines, &text);
        match checked {
            Ok((hash, count)) => {
                prev = hash;
                out.occurrences += count;
            }
            Err(why) => {
                out.first_break.get_or_insert((out.lines, why));
                // Go on from the stored hash, so one bad line is named once.
                if let Some(h) = unseal(&text).and_then(|(_, h)| opcenter_store::unhex(&h)) {
                    prev = h;
                }
            }
        }
    }
    out.head = prev;
    Ok(out)
}

fn check_line(prev: &Hash, number: u64, text: &str) -> Result<(Hash, u64), String> {
    let (body, stored) = unseal(text).ok_or("no hash at the end of the line")?;
    let line: Line = serde_json::from_str(&body).map_err(|e| format!("not a log line: {e}"))?;
    if line.seq != number {
        return Err(format!("seq {} where {number} was expected", line.seq));
    }
    let hash = link(prev, line.seq, body.as_bytes());
    if hex(&hash) != stored {
        return Err(
            "hash does not match the line and the one before it (altered, inserted or removed)".into(),
        );
    }
    Ok((hash, line.count))
}

/// Every line of the log in `dir`, parsed (tests, tools).
pub fn read_lines(dir: &Path) -> Result<Vec<Line>, AuditLogError> {
    let path = dir.join(AUDIT_LOG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", &path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| unseal(l).and_then(|(body, _)| serde_json::from_str(&body).ok()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn entry(kind: Kind, subject: &str) -> Entry {
        Entry {
            kind,
            reason: "bad_token".into(),
            subject: subject.into(),
            role: None,
            session: None,
            component: "ws",
            detail: "x".into(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("opcenter-audit-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_flood_is_one_line_per_key_and_the_chain_holds_across_reopen() {
        let dir = temp_dir("flood");
        let log = AuditLog::open_with_window(&dir, false, HOUR).unwrap();
        for _ in 0..500 {
            log.record(entry(Kind::SigninFailed, "mallory"));
        }
        log.record(entry(Kind::Forbidden, "bob"));
        log.flush();
        drop(log);
        let log = AuditLog::open_with_window(&dir, false, HOUR).unwrap();
        log.record(entry(Kind::RateLimited, "bob"));
        log.flush();
        let lines = read_lines(&dir).unwrap();
        let counts: Vec<(Kind, u64, u64)> = lines.iter().map(|l| (l.kind, l.count, l.seq)).collect();
        assert_eq!(
            counts,
            vec![
                (Kind::SigninFailed, 500, 1),
                (Kind::Forbidden, 1, 2),
                (Kind::RateLimited, 1, 3)
            ]
        );
        let v = verify(&dir).unwrap();
        assert_eq!((v.lines, v.occurrences, v.first_break.clone()), (3, 502, None));

        // Change one character of the middle line: that line is named.
        let path = dir.join(AUDIT_LOG_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"bob\"", "\"eve\"", 1)).unwrap();
        let v = verify(&dir).unwrap();
        assert_eq!(v.first_break.map(|b| b.0), Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn past_max_keys_a_second_goes_to_one_overflow_line() {
        let dir = temp_dir("overflow");
        let log = AuditLog::open_with_window(&dir, false, HOUR).unwrap();
        for i in 0..MAX_KEYS + 50 {
            log.record(entry(Kind::SigninFailed, &format!("s{i}")));
        }
        log.flush();
        let lines = read_lines(&dir).unwrap();
        let total: u64 = lines.iter().map(|l| l.count).sum();
        assert_eq!(total, (MAX_KEYS + 50) as u64);
        assert_eq!(lines.len(), MAX_KEYS + 1);
        let overflow = lines.last().unwrap();
        assert_eq!(
            (
                overflow.reason.as_str(),
                overflow.subject.as_str(),
                overflow.count
            ),
            ("overflow", "*", 50)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
