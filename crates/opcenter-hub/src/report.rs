//! The response-time report over a journal: reads the retained records in
//! bounded chunks, feeds the incident events to `opcenter_core::report::Fold`,
//! and answers the period's report. The server runs it over its live journal
//! (`GET /v1/reports/response-times`, one lock hold per chunk so commits are not
//! held up); `opcenter report` runs it over a stopped server's data directory
//! or, read-only, over a region's stream on NATS.
//!
//! Owns: reading the journal for the report, the query's parameters and their
//! errors. Must never: write to the journal or keep state between reports.

use std::path::{Path, PathBuf};

use opcenter_core::report::{Fold, Grouping, Report, ReportConfig, parse_time};
use opcenter_store::{FileJournal, Journal, Options, Record, StoreError};

use crate::record::{self, DurabilityError};

/// Records read per chunk (per lock hold on a live journal).
const CHUNK: usize = 1024;

/// The default period when `from` is not given: the last 24 hours before `to`.
const DEFAULT_PERIOD_MS: i64 = 24 * 3_600_000;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A query parameter is missing or malformed; names it.
    #[error("{param}: {problem}")]
    BadParam {
        /// The parameter (`from`, `to`, `group`, `format`).
        param: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The data directory holds no journal.
    #[error("{0}: no journal here (want a server's storage.data_dir)")]
    NoData(PathBuf),
    /// The journal could not be opened (a running server holds it: stop it or
    /// ask the server's `GET /v1/reports/response-times`).
    #[error("open journal: {0}")]
    Open(#[source] StoreError),
    /// A record could not be read or decoded.
    #[error("read journal: {0}")]
    Read(String),
}

/// What to report: a period of incident creations and how to group them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportQuery {
    /// Period start, inclusive (ms).
    pub from_ms: i64,
    /// Period end, exclusive (ms).
    pub to_ms: i64,
    /// The groups.
    pub group: Grouping,
}

impl ReportQuery {
    /// Checks the parameters as HTTP and the CLI give them: `from`, `to`
    /// (integer ms or RFC 3339; default the 24 h before now), `group`
    /// (default `priority`).
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        group: Option<&str>,
        now_ms: i64,
    ) -> Result<ReportQuery, ReportError> {
        let time = |param: &'static str, v: &str| {
            parse_time(v).ok_or_else(|| ReportError::BadParam {
                param,
                problem: format!(
                    "{v:?} is not a time (ms since the epoch, or RFC 3339 like 2026-12-01T08:00:00Z)"
                ),
            })
        };
        let to_ms = to.map(|v| time("to", v)).transpose()?.unwrap_or(now_ms);
        let from_ms = from
            .map(|v| time("from", v))
            .transpose()?
            .unwrap_or(to_ms.saturating_sub(DEFAULT_PERIOD_MS));
        if from_ms >= to_ms {
            return Err(ReportError::BadParam {
                param: "from",
                problem: format!("must be before to ({from_ms} >= {to_ms})"),
            });
        }
        let group = match group {
            None => Grouping::Priority,
            Some(g) => Grouping::parse(g).ok_or_else(|| ReportError::BadParam {
                param: "group",
                problem: format!("{g:?}: want priority, category, district or shift"),
            })?,
        };
        Ok(ReportQuery {
            from_ms,
            to_ms,
            group,
        })
    }
}

/// Folds every retained record, one `read_chunk(after)` call per chunk. A
/// compaction between two chunks moves the start forward: the incidents whose
/// creation went with it count as partial.
pub(crate) fn fold_journal(
    first_seq: u64,
    mut read_chunk: impl FnMut(u64) -> Result<Vec<Record>, StoreError>,
) -> Result<Fold, DurabilityError> {
    let mut fold = Fold::new();
    let mut after = first_seq.saturating_sub(1);
    loop {
        let records = match read_chunk(after) {
            Ok(records) => records,
            Err(StoreError::Compacted { first_seq, .. }) => {
                after = first_seq.saturating_sub(1);
                continue;
            }
            Err(source) => return Err(DurabilityError::Read { after, source }),
        };
        let Some(last) = records.last() else { break };
        after = last.seq;
        // The externally tagged `Incident` variant names itself in the bytes;
        // unit events (the bulk) are skipped without decoding.
        for rec in records
            .iter()
            .filter(|r| r.payload.windows(8).any(|w| w == b"Incident"))
        {
            fold.add(&record::decode_event(rec)?);
        }
    }
    Ok(fold)
}

/// The report over a journal someone else may be appending to: the lock is
/// taken once per chunk.
pub(crate) fn report_shared(
    journal: &crate::read_model::SharedJournal,
    query: ReportQuery,
    cfg: &ReportConfig,
) -> Result<Report, ReportError> {
    let first = crate::read_model::lock(journal).first_seq();
    let fold = fold_journal(first, |after| {
        crate::read_model::lock(journal).read_from(after, CHUNK)
    })
    .map_err(|e| ReportError::Read(e.to_string()))?;
    Ok(finish(&fold, first, query, cfg))
}

/// The report of a fold over a journal whose oldest retained seq was `first`.
fn finish(fold: &Fold, first: u64, query: ReportQuery, cfg: &ReportConfig) -> Report {
    let mut report = fold.report(query.from_ms, query.to_ms, query.group, cfg);
    // A journal that still starts at seq 1 holds the whole history: no limit to show.
    if first <= 1 {
        report.journal_from_ms = None;
    }
    report
}

/// The report over the file journal in `data_dir` (the server must be
/// stopped: the journal allows one process at a time).
pub fn report_offline(
    data_dir: &Path,
    query: ReportQuery,
    cfg: &ReportConfig,
) -> Result<Report, ReportError> {
    // `FileJournal::open` would create an empty journal in a mistyped path.
    if !data_dir.join("epoch").is_file() {
        return Err(ReportError::NoData(data_dir.to_path_buf()));
    }
    let journal = FileJournal::open(
        data_dir,
        Options {
            fsync: false,
            ..Options::default()
        },
    )
    .map_err(ReportError::Open)?;
    let first = journal.first_seq();
    let fold = fold_journal(first, |after| journal.read_from(after, CHUNK))
        .map_err(|e| ReportError::Read(e.to_string()))?;
    Ok(finish(&fold, first, query, cfg))
}

/// The report over a region's stream on NATS (`urls`: comma-separated),
/// read-only: `opcenter report --nats/--region`; the region's engine may be
/// running. Blocks (a runtime of its own): call it off any async runtime.
pub fn report_in_region(
    urls: &str,
    region: &str,
    query: ReportQuery,
    cfg: &ReportConfig,
) -> Result<Report, ReportError> {
    let journal = crate::audit_timeline::open_region(urls, region).map_err(ReportError::Read)?;
    let first = journal.first_seq();
    let fold = fold_journal(first, |after| journal.read_from(after, CHUNK))
        .map_err(|e| ReportError::Read(e.to_string()))?;
    Ok(finish(&fold, first, query, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parameters_name_themselves() {
        let now = 1_800_000_000_000;
        let q = ReportQuery::parse(None, None, None, now).unwrap();
        assert_eq!(
            (q.from_ms, q.to_ms, q.group),
            (now - DEFAULT_PERIOD_MS, now, Grouping::Priority)
        );
        for (from, to, group, param) in [
            (Some("x"), None, None, "from"),
            (None, Some("2026-13-01"), None, "to"),
            (Some("10"), Some("5"), None, "from"),
            (None, None, Some("weekday"), "group"),
        ] {
            match ReportQuery::parse(from, to, group, now) {
                Err(ReportError::BadParam { param: p, .. }) => assert_eq!(p, param),
                other => panic!("{from:?} {to:?} {group:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_directory_without_a_journal_is_refused_untouched() {
        let dir = std::env::temp_dir().join(format!("opc-report-none-{}", std::process::id()));
        let q = ReportQuery::parse(None, None, None, 1).unwrap();
        let err = report_offline(&dir, q, &ReportConfig::default()).unwrap_err();
        assert!(matches!(err, ReportError::NoData(_)), "{err}");
        assert!(!dir.exists());
    }
}
