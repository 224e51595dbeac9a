//! The spatial index of assignable units: an rstar R-tree of 3-D points on the unit
//! sphere (see [`crate::geo`]) holding ONLY units that are `available` and have a
//! position, so finding the nearest eligible unit never degrades into a scan of the
//! busy fleet. Units are referred to by small integer handles (`u32`) inside the
//! tree; the slot table maps a handle back to its unit id, exact position,
//! capabilities and fix time, so the nearest-neighbour loop filters without hashing
//! strings.
//!
//! **Slack.** A unit is re-indexed only when it moves more than `slack_m` from the
//! point it is indexed at; smaller moves just update the exact position in its slot
//! (O(1)). Queries iterate by indexed distance, rank by the exact position, and stop
//! once the indexed distance exceeds the k-th best exact distance plus the slack (by
//! the triangle inequality no later item can be nearer).
//!
//! **Per-capability trees.** Besides the tree of all assignable units there is one
//! tree per capability holding the assignable units that have it (same handles, same
//! indexed points, same slack). A query with `required` capabilities iterates the
//! smallest of their trees, so a rare capability costs about what a plain nearest
//! does instead of walking every assignable unit that lacks it. A unit with `c`
//! capabilities is in `1 + c` trees; a re-index (leaving the slack) touches each.
//!
//! Owns: tree membership, the slot table, capability interning, nearest queries.
//! Must never: decide dispatch rules (who is `available` is the engine's call, it
//! tells us via [`UnitIndex::sync`]), plug haversine into rstar, or panic.

use std::collections::HashMap;

use rstar::RTree;
use rstar::primitives::GeomWithData;

use crate::geo;
use crate::model::{Capability, Location, UnitId};

/// What the tree stores: a point on the unit sphere and the unit's handle.
type Entry = GeomWithData<[f64; 3], u32>;

/// Everything the nearest loop needs about one unit, by handle.
#[derive(Debug, Clone)]
struct Slot {
    id: UnitId,
    /// Interned capabilities, sorted.
    caps: Vec<u32>,
    /// Exact last position (degrees) and its unit vector.
    loc: Option<Location>,
    exact: [f64; 3],
    /// Fix time; `None` for roster posts and units without a fix.
    loc_ms: Option<i64>,
    /// Roster post with a fixed location: never stale.
    fixed: bool,
    /// Eligible up to this time (ms): `i64::MAX` while its tablet is online,
    /// the end of the offline grace otherwise.
    live_until: i64,
    /// The engine says it is available.
    available: bool,
    /// Interned agency and kind (see [`UnitIndex::set_traits`]).
    agency: u32,
    kind: Option<u32>,
    /// Farthest it may be sent (metres): a post's radius, else infinite.
    reach_m: f64,
    /// `Some(point)` iff the unit is in the tree, at `point`.
    indexed: Option<[f64; 3]>,
}

/// A nearest-eligible query.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// Where to search from.
    pub location: Location,
    /// How many units at most.
    pub k: usize,
    /// Units further than this (great-circle metres) are not eligible.
    pub max_distance_m: f64,
    /// Every one of these capabilities is required.
    pub required: &'a [Capability],
    /// The current time, for position freshness.
    pub now_ms: i64,
    /// A fix older than this (ms) is stale (fixed posts never are).
    pub max_age_ms: i64,
    /// Units never to return (decliners, the officer in an emergency).
    pub exclude: &'a [UnitId],
    /// Only units of these agencies; empty means any.
    pub agencies: &'a [String],
    /// Only units of these kinds; empty means any.
    pub kinds: &'a [String],
}

/// The index. See the module docs.
///
/// Invariant: `slots[h].indexed == Some(p)` iff `h` is at `p` in `tree` and in
/// `cap_trees[c]` for every `c` in `slots[h].caps`; nothing else is in any tree.
#[derive(Debug)]
pub struct UnitIndex {
    tree: RTree<Entry>,
    /// By interned capability id: the assignable units holding that capability.
    cap_trees: Vec<RTree<Entry>>,
    slots: Vec<Slot>,
    by_id: HashMap<UnitId, u32>,
    caps: HashMap<Capability, u32>,
    /// Agency and kind names to small ids (a handful per deployment).
    agencies: HashMap<String, u32>,
    kinds: HashMap<String, u32>,
    slack_m: f64,
    slack_chord2: f64,
}

fn chord2(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let (dx, dy, dz) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    dx * dx + dy * dy + dz * dz
}

impl UnitIndex {
    /// An empty index; `slack_m` is `dispatch.index_slack_m` (negative or NaN means 0).
    pub fn new(slack_m: f64) -> Self {
        let slack_m = if slack_m.is_finite() && slack_m > 0.0 {
            slack_m
        } else {
            0.0
        };
        UnitIndex {
            tree: RTree::new(),
            cap_trees: Vec::new(),
            slots: Vec::new(),
            by_id: HashMap::new(),
            caps: HashMap::new(),
            agencies: HashMap::new(),
            kinds: HashMap::new(),
            slack_m,
            slack_chord2: geo::chord2_for_metres(slack_m),
        }
    }

    /// Number of units in the tree (available, with a position, not pruned).
    pub fn indexed_len(&self) -> usize {
        self.tree.size()
    }

    /// True when the unit is in the tree.
    pub fn is_indexed(&self, id: &str) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|&h| self.slots[h as usize].indexed.is_some())
    }

    fn intern(&mut self, cap: &str) -> u32 {
        if let Some(&c) = self.caps.get(cap) {
            return c;
        }
        // More than u32::MAX distinct capabilities cannot exist in memory.
        let c = self.caps.len() as u32;
        self.caps.insert(cap.to_string(), c);
        self.cap_trees.push(RTree::new());
        c
    }

    /// Puts handle `h` at `at` into the main tree and the trees of `caps`.
    fn insert_at(
        tree: &mut RTree<Entry>,
        cap_trees: &mut [RTree<Entry>],
        caps: &[u32],
        h: u32,
        at: [f64; 3],
    ) {
        tree.insert(Entry::new(at, h));
        for &c in caps {
            cap_trees[c as usize].insert(Entry::new(at, h));
        }
    }

    /// Takes handle `h` at `at` out of the main tree and the trees of `caps`.
    fn remove_at(
        tree: &mut RTree<Entry>,
        cap_trees: &mut [RTree<Entry>],
        caps: &[u32],
        h: u32,
        at: [f64; 3],
    ) {
        tree.remove(&Entry::new(at, h));
        for &c in caps {
            cap_trees[c as usize].remove(&Entry::new(at, h));
        }
    }

    fn handle_of(&mut self, id: &str) -> u32 {
        if let Some(&h) = self.by_id.get(id) {
            return h;
        }
        let h = self.slots.len() as u32;
        self.slots.push(Slot {
            id: id.to_string(),
            caps: Vec::new(),
            loc: None,
            exact: [0.0; 3],
            loc_ms: None,
            fixed: false,
            available: false,
            agency: 0,
            kind: None,
            reach_m: f64::INFINITY,
            live_until: i64::MAX,
            indexed: None,
        });
        self.by_id.insert(id.to_string(), h);
        h
    }

    /// Brings one unit's slot and tree membership in line with the engine's view:
    /// it is in the tree iff `available` and it has a location. Returns true when
    /// the unit entered the tree (it may now be eligible for pending incidents).
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        id: &str,
        capabilities: &[Capability],
        available: bool,
        location: Option<Location>,
        location_ms: Option<i64>,
        fixed: bool,
    ) -> bool {
        let mut caps: Vec<u32> = capabilities.iter().map(|c| self.intern(c)).collect();
        caps.sort_unstable();
        caps.dedup();
        let h = self.handle_of(id);
        let slot = &mut self.slots[h as usize];
        if slot.caps != caps {
            // Indexed with other capabilities: move it between capability trees at
            // its indexed point, so the match below only has to handle position.
            if let Some(at) = slot.indexed {
                for &c in slot.caps.iter().filter(|c| caps.binary_search(c).is_err()) {
                    self.cap_trees[c as usize].remove(&Entry::new(at, h));
                }
                for &c in caps.iter().filter(|c| slot.caps.binary_search(c).is_err()) {
                    self.cap_trees[c as usize].insert(Entry::new(at, h));
                }
            }
            slot.caps = caps;
        }
        slot.loc = location;
        slot.exact = location.map(geo::to_unit_vector).unwrap_or([0.0; 3]);
        slot.loc_ms = location_ms;
        slot.fixed = fixed;
        slot.available = available;
        let want = available && location.is_some();
        let (tree, cap_trees) = (&mut self.tree, &mut self.cap_trees);
        match (want, slot.indexed) {
            (true, Some(at)) => {
                if chord2(&at, &slot.exact) > self.slack_chord2 {
                    let exact = slot.exact;
                    slot.indexed = Some(exact);
                    Self::remove_at(tree, cap_trees, &slot.caps, h, at);
                    Self::insert_at(tree, cap_trees, &slot.caps, h, exact);
                }
                false
            }
            (true, None) => {
                let exact = slot.exact;
                slot.indexed = Some(exact);
                Self::insert_at(tree, cap_trees, &slot.caps, h, exact);
                true
            }
            (false, Some(at)) => {
                slot.indexed = None;
                Self::remove_at(tree, cap_trees, &slot.caps, h, at);
                false
            }
            (false, None) => false,
        }
    }

    /// Sets a unit's agency and how far it may be sent (`reach_m`: a post's
    /// radius, `f64::INFINITY` for a mobile unit). Queries filter on both.
    pub fn set_traits(&mut self, id: &str, agency: &str, kind: Option<&str>, reach_m: f64) {
        let next = self.agencies.len() as u32;
        let a = *self.agencies.entry(agency.to_string()).or_insert(next);
        let next = self.kinds.len() as u32;
        let k = kind.map(|k| *self.kinds.entry(k.to_string()).or_insert(next));
        let h = self.handle_of(id);
        let slot = &mut self.slots[h as usize];
        slot.agency = a;
        slot.kind = k;
        slot.reach_m = if reach_m.is_nan() { f64::INFINITY } else { reach_m };
    }

    /// Sets until when a unit counts as live (see `Slot`); it stays in the
    /// tree (a reconnect within the grace changes nothing), but queries at a
    /// later time skip it and [`UnitIndex::prune_stale`] takes it out.
    pub fn set_live_until(&mut self, id: &str, live_until_ms: i64) {
        let h = self.handle_of(id);
        self.slots[h as usize].live_until = live_until_ms;
    }

    /// The hot path of `unit.position`: moves a known unit. Re-indexes only when
    /// it left its slack radius. Returns true when the unit entered the tree (an
    /// available unit's first position, or back after stale pruning). Unknown ids
    /// are ignored (the engine syncs every unit it creates).
    pub fn update_position(&mut self, id: &str, location: Location, location_ms: i64) -> bool {
        let Some(&h) = self.by_id.get(id) else {
            return false;
        };
        let slot = &mut self.slots[h as usize];
        let exact = geo::to_unit_vector(location);
        slot.loc = Some(location);
        slot.exact = exact;
        slot.loc_ms = Some(location_ms);
        if !slot.available {
            return false;
        }
        let (tree, cap_trees) = (&mut self.tree, &mut self.cap_trees);
        match slot.indexed {
            Some(at) => {
                if chord2(&at, &exact) > self.slack_chord2 {
                    slot.indexed = Some(exact);
                    Self::remove_at(tree, cap_trees, &slot.caps, h, at);
                    Self::insert_at(tree, cap_trees, &slot.caps, h, exact);
                }
                false
            }
            None => {
                slot.indexed = Some(exact);
                Self::insert_at(tree, cap_trees, &slot.caps, h, exact);
                true
            }
        }
    }

    /// Takes units whose positions are stale, or whose offline grace ran out, out
    /// of the tree (they come back with their next fix or sync). O(indexed units); the engine calls it every so often on Tick.
    pub fn prune_stale(&mut self, now_ms: i64, max_age_ms: i64) -> usize {
        let stale: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.indexed.is_some() && !Self::fresh(s, now_ms, max_age_ms))
            .map(|(h, _)| h as u32)
            .collect();
        for &h in &stale {
            let slot = &mut self.slots[h as usize];
            if let Some(at) = slot.indexed.take() {
                Self::remove_at(&mut self.tree, &mut self.cap_trees, &slot.caps, h, at);
            }
        }
        stale.len()
    }

    /// Position fresh enough and the unit live at `now_ms`.
    fn fresh(s: &Slot, now_ms: i64, max_age_ms: i64) -> bool {
        now_ms <= s.live_until
            && (s.fixed || s.loc_ms.is_some_and(|t| now_ms.saturating_sub(t) <= max_age_ms))
    }

    /// Up to `q.k` distinct eligible units nearest to `q.location`, nearest first,
    /// with great-circle metres (haversine). Eligible: in the tree (available, with
    /// a position), fresh, every required capability, within `max_distance_m`, not
    /// excluded. With required capabilities it walks the smallest of their trees
    /// (every unit holding all of them is in each), still checking them all.
    pub fn nearest(&self, q: &Query<'_>) -> Vec<(UnitId, f64)> {
        let mut out: Vec<(UnitId, f64)> = Vec::with_capacity(q.k);
        if q.k == 0 || self.tree.size() == 0 || q.max_distance_m.is_nan() || q.max_distance_m < 0.0 {
            return out;
        }
        // Required capabilities nobody has: no unit can qualify. Otherwise walk the
        // smallest tree among the required capabilities' (empty: return at once).
        let mut required = Vec::with_capacity(q.required.len());
        let mut tree = &self.tree;
        for c in q.required {
            match self.caps.get(c.as_str()) {
                Some(&id) => {
                    required.push(id);
                    let t = &self.cap_trees[id as usize];
                    if t.size() < tree.size() || required.len() == 1 {
                        tree = t;
                    }
                }
                None => return out,
            }
        }
        if tree.size() == 0 {
            return out;
        }
        // An agency nobody has is simply never matched; all unknown: nobody.
        let agencies: Vec<u32> = q
            .agencies
            .iter()
            .filter_map(|a| self.agencies.get(a.as_str()).copied())
            .collect();
        let kinds: Vec<u32> = q
            .kinds
            .iter()
            .filter_map(|k| self.kinds.get(k.as_str()).copied())
            .collect();
        if (!q.agencies.is_empty() && agencies.is_empty()) || (!q.kinds.is_empty() && kinds.is_empty()) {
            return out;
        }
        let exclude: Vec<u32> = q
            .exclude
            .iter()
            .filter_map(|id| self.by_id.get(id).copied())
            .collect();
        let target = geo::to_unit_vector(q.location);
        // best: (exact chord², handle, metres), sorted by chord², at most k.
        let mut best: Vec<(f64, u32, f64)> = Vec::with_capacity(q.k);
        let max_chord2 = geo::chord2_for_metres(q.max_distance_m);
        let mut stop2 = geo::chord2_for_metres(q.max_distance_m + self.slack_m);
        for (entry, d2) in tree.nearest_neighbor_iter_with_distance_2(target) {
            if d2 > stop2 {
                break;
            }
            let h = entry.data;
            let s = &self.slots[h as usize];
            if !required.iter().all(|c| s.caps.binary_search(c).is_ok())
                || !Self::fresh(s, q.now_ms, q.max_age_ms)
                || exclude.contains(&h)
                || (!agencies.is_empty() && !agencies.contains(&s.agency))
                || (!kinds.is_empty() && !s.kind.is_some_and(|k| kinds.contains(&k)))
            {
                continue;
            }
            let exact2 = chord2(&target, &s.exact);
            // Cheap pre-check in chord space, then the protocol's haversine metres.
            if exact2 > max_chord2 * (1.0 + 1e-9) + 1e-18 {
                continue;
            }
            let Some(loc) = s.loc else { continue };
            let metres = geo::haversine_m(q.location, loc);
            if metres > q.max_distance_m || metres > s.reach_m {
                continue;
            }
            if best.len() == q.k {
                if exact2 >= best[q.k - 1].0 {
                    continue;
                }
                best.pop();
            }
            let at = best.partition_point(|b| b.0 <= exact2);
            best.insert(at, (exact2, h, metres));
            if best.len() == q.k {
                let kth = best[q.k - 1].2;
                stop2 = geo::chord2_for_metres(kth + self.slack_m).min(stop2);
            }
        }
        out.extend(
            best.into_iter()
                .map(|(_, h, m)| (self.slots[h as usize].id.clone(), m)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(lat: f64, lon: f64) -> Location {
        Location { lat, lon }
    }

    fn q(location: Location, k: usize) -> Query<'static> {
        Query {
            location,
            k,
            max_distance_m: 1e7,
            required: &[],
            now_ms: 0,
            max_age_ms: 1000,
            exclude: &[],
            agencies: &[],
            kinds: &[],
        }
    }

    #[test]
    fn only_available_units_are_indexed() {
        let mut ix = UnitIndex::new(25.0);
        assert!(ix.sync("a", &[], true, Some(loc(1.0, 1.0)), Some(0), false));
        assert!(!ix.sync("b", &[], false, Some(loc(1.0, 1.0)), Some(0), false));
        assert!(!ix.sync("c", &[], true, None, None, false));
        assert_eq!(ix.indexed_len(), 1);
        assert!(ix.update_position("c", loc(2.0, 2.0), 0));
        assert_eq!(ix.indexed_len(), 2);
        ix.sync("a", &[], false, Some(loc(1.0, 1.0)), Some(0), false);
        assert_eq!(ix.indexed_len(), 1);
    }

    #[test]
    fn slack_moves_are_ranked_exactly() {
        let mut ix = UnitIndex::new(1000.0);
        ix.sync("a", &[], true, Some(loc(0.0, 0.0)), Some(0), false);
        ix.sync("b", &[], true, Some(loc(0.0, 0.01)), Some(0), false);
        // a moves 900 m east (within slack, not re-indexed) past b's longitude.
        ix.update_position("a", loc(0.0, 0.0081), 0);
        let got = ix.nearest(&q(loc(0.0, 0.02), 1));
        assert_eq!(got[0].0, "b");
        let got = ix.nearest(&q(loc(0.0, 0.0075), 2));
        assert_eq!(got[0].0, "a");
        assert_eq!(got.len(), 2);
    }

    /// The struct invariant: every tree holds exactly the indexed units (with the
    /// capability, for a capability tree) at their indexed points.
    fn check(ix: &UnitIndex) {
        let mut want: Vec<(u32, [u64; 3])> = Vec::new();
        let mut want_caps: Vec<Vec<(u32, [u64; 3])>> = vec![Vec::new(); ix.cap_trees.len()];
        let bits = |p: &[f64; 3]| [p[0].to_bits(), p[1].to_bits(), p[2].to_bits()];
        for (h, s) in ix.slots.iter().enumerate() {
            if let Some(at) = s.indexed {
                want.push((h as u32, bits(&at)));
                for &c in &s.caps {
                    want_caps[c as usize].push((h as u32, bits(&at)));
                }
            }
        }
        let got = |t: &RTree<Entry>| {
            let mut v: Vec<_> = t.iter().map(|e| (e.data, bits(e.geom()))).collect();
            v.sort_unstable();
            v
        };
        want.sort_unstable();
        assert_eq!(got(&ix.tree), want);
        for (c, mut w) in want_caps.into_iter().enumerate() {
            w.sort_unstable();
            assert_eq!(got(&ix.cap_trees[c]), w, "capability tree {c}");
        }
    }

    #[test]
    fn capability_trees_follow_membership_moves_and_capability_changes() {
        let mut ix = UnitIndex::new(25.0);
        let k9 = vec!["k9".to_string()];
        let both = vec!["k9".to_string(), "medic".to_string()];
        let medic = vec!["medic".to_string()];
        ix.sync("a", &k9, true, Some(loc(0.0, 0.0)), Some(0), false);
        ix.sync("b", &both, false, Some(loc(0.0, 0.01)), Some(0), false);
        check(&ix);
        ix.update_position("a", loc(0.0, 0.0001), 0); // ~11 m: within the slack
        ix.update_position("b", loc(0.0, 0.02), 0); // busy: no tree
        check(&ix);
        ix.update_position("a", loc(0.0, 0.001), 0); // ~111 m: re-indexed
        ix.sync("b", &both, true, Some(loc(0.0, 0.02)), Some(0), false);
        check(&ix);
        ix.sync("a", &medic, true, Some(loc(0.0, 0.001)), Some(0), false);
        check(&ix);
        ix.sync("a", &both, true, Some(loc(0.0, 0.005)), Some(0), false);
        check(&ix);
        ix.sync("b", &[], true, Some(loc(0.0, 0.02)), Some(0), false);
        check(&ix);
        ix.update_position("a", loc(0.0, 0.0051), 5000);
        assert_eq!(ix.prune_stale(2000, 1000), 1);
        check(&ix);
        ix.sync("a", &k9, false, Some(loc(0.0, 0.005)), Some(5000), false);
        ix.sync("b", &both, false, Some(loc(0.0, 0.02)), Some(0), false);
        check(&ix);
        assert_eq!(ix.indexed_len(), 0);
    }

    #[test]
    fn walks_the_rarest_required_capability_and_checks_all() {
        let mut ix = UnitIndex::new(25.0);
        let common = vec!["common".to_string()];
        let both = vec!["common".to_string(), "rare".to_string()];
        let rare = vec!["rare".to_string()];
        for i in 0..50 {
            let id = format!("c{i}");
            ix.sync(
                &id,
                &common,
                true,
                Some(loc(0.0, i as f64 * 1e-4)),
                Some(0),
                false,
            );
        }
        ix.sync("r", &rare, true, Some(loc(0.0, 0.0)), Some(0), false);
        ix.sync("rc", &both, true, Some(loc(0.0, 0.1)), Some(0), false);
        check(&ix);
        let mut query = q(loc(0.0, 0.0), 2);
        query.required = &both;
        let ids: Vec<_> = ix.nearest(&query).into_iter().map(|x| x.0).collect();
        assert_eq!(ids, vec!["rc"]);
        query.required = &rare;
        let ids: Vec<_> = ix.nearest(&query).into_iter().map(|x| x.0).collect();
        assert_eq!(ids, vec!["r", "rc"]);
        // Known capability, nobody assignable holds it.
        ix.sync("r", &rare, false, Some(loc(0.0, 0.0)), Some(0), false);
        ix.sync("rc", &common, true, Some(loc(0.0, 0.1)), Some(0), false);
        check(&ix);
        assert!(ix.nearest(&query).is_empty());
    }

    #[test]
    fn filters_caps_freshness_and_exclusions() {
        let mut ix = UnitIndex::new(25.0);
        ix.sync("near", &[], true, Some(loc(0.0, 0.0)), Some(0), false);
        ix.sync("k9", &["k9".into()], true, Some(loc(0.0, 0.1)), Some(0), false);
        ix.sync(
            "old",
            &["k9".into()],
            true,
            Some(loc(0.0, 0.0)),
            Some(-5000),
            false,
        );
        ix.sync("post", &["k9".into()], true, Some(loc(0.0, 0.2)), None, true);
        let req = vec!["k9".to_string()];
        let mut query = q(loc(0.0, 0.0), 3);
        query.required = &req;
        let ids: Vec<_> = ix.nearest(&query).into_iter().map(|x| x.0).collect();
        assert_eq!(ids, vec!["k9", "post"]);
        let ex = vec!["k9".to_string()];
        query.exclude = &ex;
        let ids: Vec<_> = ix.nearest(&query).into_iter().map(|x| x.0).collect();
        assert_eq!(ids, vec!["post"]);
        assert_eq!(ix.prune_stale(0, 1000), 1);
        assert!(!ix.is_indexed("old"));
    }
}
