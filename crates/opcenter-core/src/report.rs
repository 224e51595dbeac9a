//! The response-time report: folds incident events (as the journal holds them)
//! into per-incident milestones, then groups them by priority, category,
//! district or shift into count, p50, p90 and the share within target for each
//! interval. Pure: the caller feeds events in journal order and gives the
//! period, the targets and the shift boundaries.
//!
//! Milestones are the times of events, which carry no clock of their own: an
//! incident event's time is its incident's `updated_ms` (the engine sets it on
//! every change). Definitions: docs/records.md, "Response-time report".
//!
//! Owns: the interval definitions, percentiles, grouping, CSV and period-time
//! parsing. Must never: read a journal, a clock or a config file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::event::{Change, Event, EventBody};
use crate::model::{Incident, IncidentStatus};

/// One measured interval of an incident's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// Received (call form opened, app report arrived) → created.
    Intake,
    /// Created → first unit dispatched.
    Processing,
    /// First unit dispatched → first acknowledgement.
    Acknowledge,
    /// First acknowledgement → first unit on scene.
    Travel,
    /// Created → first unit on scene: the figure the targets apply to.
    Response,
    /// First unit on scene → closed.
    OnScene,
}

impl Interval {
    /// Every interval, in report order.
    pub const ALL: [Interval; 6] = [
        Interval::Intake,
        Interval::Processing,
        Interval::Acknowledge,
        Interval::Travel,
        Interval::Response,
        Interval::OnScene,
    ];

    /// The name in JSON and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Intake => "intake",
            Interval::Processing => "processing",
            Interval::Acknowledge => "acknowledge",
            Interval::Travel => "travel",
            Interval::Response => "response",
            Interval::OnScene => "on_scene",
        }
    }
}

/// What the groups are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    /// `1` … `5`.
    Priority,
    /// The incident's category.
    Category,
    /// The incident's district at creation (`unknown` outside every zone).
    District,
    /// The shift the incident was created in (`reports.shift_starts`).
    Shift,
}

impl Grouping {
    /// Parses the `group` parameter.
    pub fn parse(s: &str) -> Option<Grouping> {
        Some(match s {
            "priority" => Grouping::Priority,
            "category" => Grouping::Category,
            "district" => Grouping::District,
            "shift" => Grouping::Shift,
            _ => return None,
        })
    }

    /// The parameter's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Grouping::Priority => "priority",
            Grouping::Category => "category",
            Grouping::District => "district",
            Grouping::Shift => "shift",
        }
    }
}

/// The group of incidents outside every configured district (or created
/// before `[[zones]]` were configured).
pub const UNKNOWN_DISTRICT: &str = "unknown";

/// Targets and shifts (`[reports]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// Response target (created → on scene) per priority 1..=5, in seconds.
    pub target_s: [u32; 5],
    /// Shift starts, minutes after local midnight, sorted, at least one.
    pub shift_starts_min: Vec<u16>,
    /// The region's offset from UTC, minutes (shifts and hours of day are local).
    pub utc_offset_min: i32,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            target_s: [420, 900, 1800, 3600, 7200],
            shift_starts_min: vec![8 * 60, 20 * 60],
            utc_offset_min: 0,
        }
    }
}

impl ReportConfig {
    /// The response target of `priority` (clamped into 1..=5), seconds.
    pub fn target_of(&self, priority: u8) -> u32 {
        self.target_s[usize::from(priority.clamp(1, 5) - 1)]
    }

    fn local_minute(&self, ms: i64) -> i64 {
        (ms.div_euclid(60_000) + i64::from(self.utc_offset_min)).rem_euclid(1440)
    }

    /// The shift `ms` falls in, as `HH:MM-HH:MM` (local time).
    pub fn shift_of(&self, ms: i64) -> String {
        let m = self.local_minute(ms);
        let starts = &self.shift_starts_min;
        // The last start at or before the minute; before the first start of
        // the day it is still the previous day's last shift.
        let i = starts
            .iter()
            .rposition(|&s| i64::from(s) <= m)
            .unwrap_or(starts.len() - 1);
        let end = starts[(i + 1) % starts.len()];
        format!("{}-{}", hhmm(starts[i]), hhmm(end))
    }

    /// The local hour of day of `ms`, 0..24.
    pub fn hour_of(&self, ms: i64) -> usize {
        (self.local_minute(ms) / 60) as usize
    }
}

fn hhmm(min: u16) -> String {
    format!("{:02}:{:02}", min / 60, min % 60)
}

/// Parses `HH:MM` into minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// An incident's milestones, from its events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Milestones {
    /// The incident.
    pub id: String,
    /// Priority at creation: the urgency the response was owed under.
    pub priority: u8,
    /// The last category seen (dispatchers correct the first guess).
    pub category: String,
    /// The incident's district at creation (`[[zones]]`), or `unknown`.
    pub district: String,
    /// `received_ms`, or the creation time.
    pub received_ms: i64,
    /// Creation.
    pub created_ms: i64,
    /// First event with a unit assigned.
    pub dispatched_ms: Option<i64>,
    /// First acknowledgement (status `en_route`).
    pub acknowledged_ms: Option<i64>,
    /// First arrival (status `on_scene`).
    pub on_scene_ms: Option<i64>,
    /// Closed.
    pub closed_ms: Option<i64>,
}

impl Milestones {
    fn from_created(inc: &Incident) -> Self {
        Milestones {
            id: inc.id.clone(),
            priority: inc.priority,
            category: inc.category.clone(),
            district: inc
                .district
                .clone()
                .unwrap_or_else(|| UNKNOWN_DISTRICT.to_string()),
            received_ms: inc.received_ms.unwrap_or(inc.created_ms).min(inc.created_ms),
            created_ms: inc.created_ms,
            dispatched_ms: None,
            acknowledged_ms: None,
            on_scene_ms: None,
            closed_ms: None,
        }
    }

    /// The interval's length in ms, if both ends happened (and in order).
    pub fn interval_ms(&self, iv: Interval) -> Option<i64> {
        let (start, end) = match iv {
            Interval::Intake => (Some(self.received_ms), Some(self.created_ms)),
            Interval::Processing => (Some(self.created_ms), self.dispatched_ms),
            Interval::Acknowledge => (self.dispatched_ms, self.acknowledged_ms),
            Interval::Travel => (self.acknowledged_ms, self.on_scene_ms),
            Interval::Response => (Some(self.created_ms), self.on_scene_ms),
            Interval::OnScene => (self.on_scene_ms, self.closed_ms),
        };
        let d = end? - start?;
        (d >= 0).then_some(d)
    }
}

/// Folds events, in journal order, into milestones.
#[derive(Debug, Default)]
pub struct Fold {
    incidents: HashMap<String, Milestones>,
    /// Incidents whose creation the events did not include (compacted away):
    /// left out of the report, and counted so the report can say so.
    partial: HashSet<String>,
    first_event_ms: Option<i64>,
}

impl Fold {
    /// An empty fold.
    pub fn new() -> Self {
        Fold::default()
    }

    /// Takes the next event. Unit and assignment events carry nothing the
    /// incident events do not, so they are skipped.
    pub fn add(&mut self, event: &Event) {
        let EventBody::Incident(inc) = &event.body else {
            return;
        };
        let at = inc.updated_ms;
        self.first_event_ms.get_or_insert(at);
        if matches!(event.change, Change::Created | Change::Emergency)
            && !self.incidents.contains_key(&inc.id)
        {
            self.incidents
                .insert(inc.id.clone(), Milestones::from_created(inc));
        }
        let Some(m) = self.incidents.get_mut(&inc.id) else {
            self.partial.insert(inc.id.clone());
            return;
        };
        m.category.clone_from(&inc.category);
        if !inc.units.is_empty() {
            m.dispatched_ms.get_or_insert(at);
        }
        if inc.status == IncidentStatus::EnRoute || event.change == Change::Acknowledged {
            m.acknowledged_ms.get_or_insert(at);
        }
        if inc.status == IncidentStatus::OnScene || event.change == Change::OnScene {
            m.on_scene_ms.get_or_insert(at);
        }
        if inc.status == IncidentStatus::Closed {
            m.closed_ms.get_or_insert(at);
        }
    }

    /// The milestones of one incident.
    pub fn milestones(&self, id: &str) -> Option<&Milestones> {
        self.incidents.get(id)
    }

    /// The report of the incidents created in `[from_ms, to_ms)`.
    pub fn report(&self, from_ms: i64, to_ms: i64, group: Grouping, cfg: &ReportConfig) -> Report {
        let mut chosen: Vec<&Milestones> = self
            .incidents
            .values()
            .filter(|m| (from_ms..to_ms).contains(&m.created_ms))
            .collect();
        chosen.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        let mut groups: BTreeMap<String, Vec<&Milestones>> = BTreeMap::new();
        let mut by_hour = [0u64; 24];
        let mut histograms: BTreeMap<u8, Histogram> = BTreeMap::new();
        for m in &chosen {
            let key = match group {
                Grouping::Priority => m.priority.to_string(),
                Grouping::Category => m.category.clone(),
                Grouping::District => m.district.clone(),
                Grouping::Shift => cfg.shift_of(m.created_ms),
            };
            groups.entry(key).or_default().push(m);
            by_hour[cfg.hour_of(m.created_ms)] += 1;
            if let Some(r) = m.interval_ms(Interval::Response) {
                histograms
                    .entry(m.priority)
                    .or_insert_with(|| Histogram::new(m.priority, cfg.target_of(m.priority)))
                    .add(r);
            }
        }
        let groups = groups
            .into_iter()
            .map(|(key, ms)| GroupRow {
                incidents: ms.len() as u64,
                intervals: Interval::ALL.iter().map(|&iv| stats(iv, &ms, cfg)).collect(),
                key,
            })
            .collect();
        let total = stats(Interval::Response, &chosen, cfg);
        Report {
            from_ms,
            to_ms,
            group,
            incidents: chosen.len() as u64,
            response: total,
            groups,
            by_hour,
            response_histogram: histograms.into_values().collect(),
            partial_incidents: self.partial.len() as u64,
            journal_from_ms: self.first_event_ms,
            targets_s: cfg.target_s,
            utc_offset_min: cfg.utc_offset_min,
        }
    }
}

/// The statistics of one interval over a set of incidents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntervalStats {
    /// Which interval.
    pub interval: Interval,
    /// Incidents for which both its ends happened.
    pub count: u64,
    /// Median, nearest rank, ms.
    pub p50_ms: Option<i64>,
    /// 90th percentile, nearest rank, ms.
    pub p90_ms: Option<i64>,
    /// For `response` only: the share (0..=1) at or under its priority's target.
    pub within_target: Option<f64>,
}

/// The nearest-rank percentile `p` (0 < p ≤ 100) of sorted values: the
/// smallest value with at least p % of the values at or below it.
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1);
    Some(sorted[rank as usize - 1])
}

fn stats(iv: Interval, ms: &[&Milestones], cfg: &ReportConfig) -> IntervalStats {
    let mut values = Vec::with_capacity(ms.len());
    let mut within = 0u64;
    for m in ms {
        if let Some(d) = m.interval_ms(iv) {
            values.push(d);
            if d <= i64::from(cfg.target_of(m.priority)) * 1000 {
                within += 1;
            }
        }
    }
    values.sort_unstable();
    let count = values.len() as u64;
    IntervalStats {
        interval: iv,
        count,
        p50_ms: percentile(&values, 50),
        p90_ms: percentile(&values, 90),
        within_target: (iv == Interval::Response && count > 0).then(|| within as f64 / count as f64),
    }
}

/// One group's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    /// The group (`1`, `theft`, `unknown`, `08:00-20:00`).
    pub key: String,
    /// Incidents created in the period in this group.
    pub incidents: u64,
    /// One entry per interval, in [`Interval::ALL`] order.
    pub intervals: Vec<IntervalStats>,
}

/// Response times of one priority in one-minute buckets, for the chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// The priority.
    pub priority: u8,
    /// Its target, seconds.
    pub target_s: u32,
    /// Bucket width, seconds.
    pub bucket_s: u32,
    /// `counts[i]`: responses in `[i, i+1)` buckets; the last also holds longer ones.
    pub counts: Vec<u64>,
}

/// Buckets a histogram has: 30 one-minute buckets and one for longer.
const HISTOGRAM_BUCKETS: usize = 31;

impl Histogram {
    fn new(priority: u8, target_s: u32) -> Self {
        Histogram {
            priority,
            target_s,
            bucket_s: 60,
            counts: vec![0; HISTOGRAM_BUCKETS],
        }
    }

    fn add(&mut self, ms: i64) {
        let i = (ms / (i64::from(self.bucket_s) * 1000)).clamp(0, HISTOGRAM_BUCKETS as i64 - 1);
        self.counts[i as usize] += 1;
    }
}

/// The report of one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Period start (inclusive), ms.
    pub from_ms: i64,
    /// Period end (exclusive), ms.
    pub to_ms: i64,
    /// How the groups were made.
    pub group: Grouping,
    /// Incidents created in the period.
    pub incidents: u64,
    /// The response interval over all of them.
    pub response: IntervalStats,
    /// One row per group, sorted by key.
    pub groups: Vec<GroupRow>,
    /// Incidents created per local hour of day.
    pub by_hour: [u64; 24],
    /// Response-time distribution per priority (priorities with a response only).
    pub response_histogram: Vec<Histogram>,
    /// Incidents left out because the journal no longer holds their creation.
    pub partial_incidents: u64,
    /// The time of the oldest incident event the journal still holds when it
    /// was compacted (a period starting earlier is incomplete); `None` when it
    /// holds its whole history.
    pub journal_from_ms: Option<i64>,
    /// The response targets of priorities 1..=5, seconds.
    pub targets_s: [u32; 5],
    /// The region's offset from UTC (shifts and `by_hour` are in its local time).
    pub utc_offset_min: i32,
}

/// The CSV columns, in order.
pub const CSV_HEADER: &str = "group,key,interval,count,p50_ms,p90_ms,within_target";

impl Report {
    /// The report as CSV: [`CSV_HEADER`], then one row per group and interval.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        out.push_str(CSV_HEADER);
        out.push('\n');
        let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        for g in &self.groups {
            for s in &g.intervals {
                // `writeln!` into a String cannot fail.
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    self.group.as_str(),
                    csv_field(&g.key),
                    s.interval.as_str(),
                    s.count,
                    opt(s.p50_ms),
                    opt(s.p90_ms),
                    s.within_target.map(|w| format!("{w:.4}")).unwrap_or_default()
                );
            }
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Parses a period bound: integer ms since the epoch, or an RFC 3339 time
/// (`2026-12-01T08:00:00Z`, `2026-12-01T08:00+05:00`; seconds and fraction
/// optional), or a date (`2026-12-01`, midnight UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || date.as_bytes()[4] != b'-' {
        return None;
    }
    let day_ms = days_from_civil(y, mo, da) * 86_400_000;
    if rest.is_empty() {
        return Some(day_ms);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, offset_min) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        (c, sign * i64::from(parse_hhmm(&off[1..])?))
    };
    let (hm, sec) = match clock.len() {
        5 => (clock, 0.0),
        n if n >= 8 => (&clock[..5], clock.get(6..)?.parse::<f64>().ok()?),
        _ => return None,
    };
    if !(0.0..60.0).contains(&sec) || clock.as_bytes().get(5).is_some_and(|&b| b != b':') {
        return None;
    }
    let min = i64::from(parse_hhmm(hm)?);
    Some(day_ms + (min - offset_min) * 60_000 + (sec * 1000.0).round() as i64)
}

/// `ms` as an RFC 3339 UTC time to the second (`2026-12-01T08:00:00Z`), the
/// form [`parse_time`] reads back.
pub fn format_time(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000) / 1000);
    // H. Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DispatchMode, Location};

    fn inc(id: &str, priority: u8, status: IncidentStatus, units: &[&str], at: i64) -> Incident {
        Incident {
            id: id.into(),
            key: None,
            key_scope: None,
            category: "theft".into(),
            priority,
            status,
            location: Location { lat: 50.0, lon: 80.0 },
            address: None,
            description: None,
            reporter: None,
            source: "call".into(),
            units: units.iter().map(|u| u.to_string()).collect(),
            required: Vec::new(),
            units_needed: 1,
            disposition: None,
            notes: Vec::new(),
            possible_duplicates: Vec::new(),
            dispatch: DispatchMode::Auto,
            declined_by: Vec::new(),
            emergency_unit: None,
            received_ms: None,
            agencies: Vec::new(),
            district: None,
            beat: None,
            kinds: Vec::new(),
            run_card: None,
            selection: Default::default(),
            created_ms: 1_000_000,
            updated_ms: at,
        }
    }

    fn ev(change: Change, i: Incident) -> Event {
        Event {
            change,
            body: EventBody::Incident(i),
        }
    }

    /// One incident through decline, reassignment, ack, arrival and close,
    /// with explicit times: every interval as computed by hand.
    #[test]
    fn milestones_follow_the_first_of_each_step() {
        use IncidentStatus::*;
        let mut created = inc("I-1", 1, Pending, &[], 1_000_000);
        created.received_ms = Some(940_000);
        let mut f = Fold::new();
        f.add(&ev(Change::Created, created));
        f.add(&ev(
            Change::Dispatched,
            inc("I-1", 1, Dispatched, &["A"], 1_030_000),
        ));
        f.add(&ev(Change::Declined, inc("I-1", 1, Pending, &[], 1_050_000)));
        f.add(&ev(
            Change::Dispatched,
            inc("I-1", 1, Dispatched, &["B"], 1_050_000),
        ));
        f.add(&ev(Change::Noted, inc("I-1", 1, Dispatched, &["B"], 1_060_000)));
        f.add(&ev(
            Change::Acknowledged,
            inc("I-1", 1, EnRoute, &["B"], 1_090_000),
        ));
        f.add(&ev(Change::OnScene, inc("I-1", 1, OnScene, &["B"], 1_400_000)));
        f.add(&ev(Change::Closed, inc("I-1", 1, Closed, &[], 2_000_000)));
        let m = f.milestones("I-1").unwrap();
        let got: Vec<_> = Interval::ALL.iter().map(|&iv| m.interval_ms(iv)).collect();
        assert_eq!(
            got,
            [60_000, 30_000, 60_000, 310_000, 400_000, 600_000]
                .map(Some)
                .to_vec()
        );
        let r = f.report(0, 10_000_000, Grouping::Priority, &ReportConfig::default());
        assert_eq!(r.incidents, 1);
        assert_eq!(r.response.within_target, Some(1.0));
        assert_eq!(r.response_histogram[0].counts[6], 1);
    }

    /// Reports group by the district an incident was created in; one outside
    /// every zone counts as `unknown` (issue 15: reports by district).
    #[test]
    fn reports_group_by_the_district_at_creation() {
        let mut f = Fold::new();
        for (id, district) in [
            ("I-1", Some("Central")),
            ("I-2", Some("Zachagansky")),
            ("I-3", Some("Central")),
            ("I-4", None),
        ] {
            let mut i = inc(id, 2, IncidentStatus::Pending, &[], 1_000_000);
            i.district = district.map(str::to_string);
            f.add(&ev(Change::Created, i.clone()));
            // Moved later (incident.update): the report keeps where it was created.
            i.district = Some("Northern".into());
            i.updated_ms = 1_100_000;
            f.add(&ev(Change::Updated, i));
        }
        let r = f.report(0, i64::MAX, Grouping::District, &ReportConfig::default());
        let got: Vec<(&str, u64)> = r.groups.iter().map(|g| (g.key.as_str(), g.incidents)).collect();
        assert_eq!(got, [("Central", 2), ("Zachagansky", 1), (UNKNOWN_DISTRICT, 1)]);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), Some(5));
        assert_eq!(percentile(&v, 90), Some(9));
        assert_eq!(percentile(&[7], 90), Some(7));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
    }

    #[test]
    fn an_incident_without_its_creation_is_partial() {
        let mut f = Fold::new();
        f.add(&ev(Change::Closed, inc("I-9", 2, IncidentStatus::Closed, &[], 5)));
        let r = f.report(0, i64::MAX, Grouping::Category, &ReportConfig::default());
        assert_eq!((r.incidents, r.partial_incidents), (0, 1));
    }

    #[test]
    fn shifts_wrap_midnight_in_local_time() {
        let cfg = ReportConfig {
            utc_offset_min: 300,
            ..ReportConfig::default()
        };
        // 02:00 UTC is 07:00 local: still the night shift.
        assert_eq!(cfg.shift_of(2 * 3_600_000), "20:00-08:00");
        assert_eq!(cfg.shift_of(3 * 3_600_000), "08:00-20:00");
        assert_eq!(cfg.hour_of(3 * 3_600_000), 8);
        let one = ReportConfig {
            shift_starts_min: vec![360],
            ..ReportConfig::default()
        };
        assert_eq!(one.shift_of(0), "06:00-06:00");
    }

    #[test]
    fn period_times_parse() {
        assert_eq!(parse_time("1764547200000"), Some(1_764_547_200_000));
        assert_eq!(parse_time("2025-12-01"), Some(1_764_547_200_000));
        assert_eq!(parse_time("2025-12-01T00:00:00Z"), Some(1_764_547_200_000));
        assert_eq!(parse_time("2025-12-01T05:00+05:00"), Some(1_764_547_200_000));
        assert_eq!(parse_time("2025-12-01T00:00:01.5Z"), Some(1_764_547_201_500));
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-12-01T25:00Z",
            "2025-12-01T00:00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn csv_quotes_keys() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
