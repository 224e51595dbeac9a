//! The duplicate index: open incidents by category, as points on the unit sphere,
//! so `possible_duplicates` of a new incident is a nearby lookup in one small tree
//! instead of a scan of every open incident.
//!
//! Invariant: an incident is filed iff it is open, exactly once, in the tree of its
//! current category at the point of its current location, with its creation time;
//! `filed[id]` says where. The engine re-files an incident whenever it may have
//! moved, changed category or closed ([`DuplicateIndex::file`]).
//!
//! Owns: the per-category trees and the filing table. Must never: decide whether
//! an incident is open (the engine tells it), or return a closed incident.

use std::collections::HashMap;

use rstar::RTree;
use rstar::primitives::GeomWithData;

use crate::geo;
use crate::model::{Incident, IncidentId, Location};

/// The most `possible_duplicates` an incident lists (the newest ones): enough for
/// a dispatcher to compare side by side, and it keeps every incident event small
/// even when hundreds of reports of one event pour in.
pub const MAX_POSSIBLE_DUPLICATES: usize = 20;

/// One open incident as its category's tree holds it: everything `near` needs to
/// filter and order a candidate, so a lookup reads the tree's leaves and nothing
/// else (no map lookup, no incident) for each incident within reach.
#[derive(Debug, Clone, PartialEq)]
struct Leaf {
    created_ms: i64,
    /// The incident number: ties in `created_ms` go by creation order.
    no: u64,
    location: Location,
    id: IncidentId,
}

/// Where one open incident is filed: the tree of `category`, at `point`, with
/// the rest of its [`Leaf`] (the id is the key of `filed`).
#[derive(Debug, Clone, PartialEq)]
struct Filing {
    category: String,
    point: [f64; 3],
    location: Location,
    created_ms: i64,
    no: u64,
}

impl Filing {
    fn of(inc: &Incident, no: u64) -> Filing {
        Filing {
            category: inc.category.clone(),
            point: geo::to_unit_vector(inc.location),
            location: inc.location,
            created_ms: inc.created_ms,
            no,
        }
    }

    /// Whether `inc` (open, number `no`) is filed exactly so already.
    fn is_of(&self, inc: &Incident, no: u64) -> bool {
        self.category == inc.category
            && self.location == inc.location
            && self.created_ms == inc.created_ms
            && self.no == no
    }

    /// The tree's entry for incident `id` filed so.
    fn entry(&self, id: &IncidentId) -> GeomWithData<[f64; 3], Leaf> {
        GeomWithData::new(
            self.point,
            Leaf {
                created_ms: self.created_ms,
                no: self.no,
                location: self.location,
                id: id.clone(),
            },
        )
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct DuplicateIndex {
    by_category: HashMap<String, RTree<GeomWithData<[f64; 3], Leaf>>>,
    filed: super::hashed::HashedMap<IncidentId, Filing>,
}

impl DuplicateIndex {
    /// Files `inc` as it is now (open) or takes it out (closed). Most incident
    /// changes (dispatch, ack, notes) leave the filing as it is: then this is one
    /// map lookup.
    pub(super) fn file(&mut self, inc: &Incident, no: u64) {
        let open = inc.is_open();
        if open && self.filed.get(&inc.id).is_some_and(|f| f.is_of(inc, no)) {
            return;
        }
        if let Some(old) = self.filed.remove(&inc.id)
            && let Some(tree) = self.by_category.get_mut(&old.category)
        {
            tree.remove(&old.entry(&inc.id));
            if tree.size() == 0 {
                self.by_category.remove(&old.category);
            }
        }
        if open {
            let filing = Filing::of(inc, no);
            self.by_category
                .entry(filing.category.clone())
                .or_default()
                .insert(filing.entry(&inc.id));
            self.filed.insert(inc.id.clone(), filing);
        }
    }

    /// Open incidents of `category` within `radius_m` of `location` created at or
    /// after `since_ms`, oldest first, at most [`MAX_POSSIBLE_DUPLICATES`] (the
    /// newest ones when there are more).
    pub(super) fn near(
        &self,
        category: &str,
        location: Location,
        radius_m: f64,
        since_ms: i64,
    ) -> Vec<IncidentId> {
        let Some(tree) = self.by_category.get(category) else {
            return Vec::new();
        };
        let centre = geo::to_unit_vector(location);
        let reach = geo::chord2_for_metres(radius_m);
        let mut found: Vec<&Leaf> = tree
            .locate_within_distance(centre, reach)
            .map(|g| &g.data)
            .filter(|l| l.created_ms >= since_ms && l.location.distance_m(&location) <= radius_m)
            .collect();
        found.sort_unstable_by_key(|l| (l.created_ms, l.no));
        let skip = found.len().saturating_sub(MAX_POSSIBLE_DUPLICATES);
        found.into_iter().skip(skip).map(|l| l.id.clone()).collect()
    }
}
