//! Small filesystem helpers: atomic file replacement, directory fsync, file naming,
//! and epoch ids. Owns the "write tmp, fsync, rename, fsync dir" dance; must never
//! know what the bytes it writes mean.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::StoreError;

/// Suffix of files being written; leftovers from a crash are deleted on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Makes a directory entry change (create, rename, unlink) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the complete
/// new one, never a mix: write `path.tmp`, fsync it, rename over `path`, fsync the dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], fsync: bool) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
    f.write_all(bytes).map_err(StoreError::io("write", &tmp))?;
    if fsync {
        f.sync_all().map_err(StoreError::io("fsync", &tmp))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(StoreError::io("rename into", path))?;
    if fsync {
        // Unwrap-free: every path we build has a parent (it is `dir.join(name)`).
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// `<prefix><seq, 20 digits><suffix>`: zero-padded so `ls` sorts files in seq order.
pub(crate) fn seq_name(prefix: &str, seq: u64, suffix: &str) -> String {
    format!("{prefix}{seq:020}{suffix}")
}

/// Parses a name made by [`seq_name`]; `None` if it is not of that shape.
pub(crate) fn parse_seq_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A new random epoch id: 32 hex digits.
///
/// No `rand` in our dependencies, so this uses std's `RandomState`, whose keys are
/// seeded from the OS random source once per thread and then bumped per instance,
/// mixed with the wall clock and the pid. An epoch is an identity, not a secret: it
/// only has to differ between two data directories, which 128 such bits do.
pub(crate) fn new_epoch() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = String::with_capacity(32);
    for half in 0..2u8 {
        let mut h = RandomState::new().build_hasher();
        h.write_u8(half);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = seq_name("journal-", 42, ".log");
        assert_eq!(n, "journal-00000000000000000042.log");
        assert_eq!(parse_seq_name(&n, "journal-", ".log"), Some(42));
        assert_eq!(parse_seq_name("journal-.log", "journal-", ".log"), None);
        assert_eq!(parse_seq_name("journal-12x.log", "journal-", ".log"), None);
        assert_eq!(parse_seq_name("journal-7.log", "journal-", ".log"), Some(7));
    }

    #[test]
    fn epochs_differ() {
        let a = new_epoch();
        let b = new_epoch();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
