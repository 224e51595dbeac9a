//! A hash map that keeps each key's hash beside its entry, for the engine's
//! maps with an entry per incident (incidents, duplicate filings, the pending
//! queue's keys, idempotency keys). When a `std` map grows it hashes every key
//! again, reading each key's bytes from wherever the heap put them: at 458 752
//! incidents the engine's four such maps grew within one create and held the
//! engine thread for ~0.5 s. Here a growing table moves entries by their stored
//! hash and reads no key. Keys are hashed with the standard library's
//! `RandomState` (SipHash, a random key per map), as before.
//!
//! Owns: nothing but the map. Must never: hand out a way to change a key in
//! place (its stored hash would lie).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// One entry and its key's hash.
struct Slot<K, V> {
    hash: u64,
    key: K,
    value: V,
}

/// A map from `K` to `V` that never hashes a key again when it grows (see the
/// module docs). The methods are those of `std::collections::HashMap` it needs.
pub(crate) struct HashedMap<K, V> {
    table: HashTable<Slot<K, V>>,
    state: RandomState,
}

impl<K, V> Default for HashedMap<K, V> {
    fn default() -> Self {
        HashedMap {
            table: HashTable::new(),
            state: RandomState::new(),
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for HashedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.table.iter().map(|s| (&s.key, &s.value)))
            .finish()
    }
}

impl<K: Hash + Eq, V> HashedMap<K, V> {
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.state.hash_one(key)
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The value of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.table.find(hash, |s| s.key.borrow() == key).map(|s| &s.value)
    }

    /// The value of `key`, to change.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |s| s.key.borrow() == key)
            .map(|s| &mut s.value)
    }

    /// Whether `key` has a value.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets the value of `key`; returns the one it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hash(&key);
        match self.table.find_mut(hash, |s| s.key == key) {
            Some(slot) => Some(std::mem::replace(&mut slot.value, value)),
            None => {
                self.table
                    .insert_unique(hash, Slot { hash, key, value }, |s| s.hash);
                None
            }
        }
    }

    /// The value of `key`, set to `value()` first if it has none.
    pub(crate) fn get_or_insert_with(&mut self, key: K, value: impl FnOnce() -> V) -> &mut V {
        let hash = self.hash(&key);
        match self.table.entry(hash, |s| s.key == key, |s| s.hash) {
            Entry::Occupied(e) => &mut e.into_mut().value,
            Entry::Vacant(e) => {
                let slot = Slot {
                    hash,
                    key,
                    value: value(),
                };
                &mut e.insert(slot).into_mut().value
            }
        }
    }

    /// Takes `key` out; returns its value.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let entry = self.table.find_entry(hash, |s| s.key.borrow() == key).ok()?;
        Some(entry.remove().0.value)
    }

    /// Every value, in no order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|s| &s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The same operations on a `std` map and on this one leave the same
    /// contents, across several growths and with removals between them.
    #[test]
    fn behaves_as_a_std_map_across_growths() {
        let mut ours: HashedMap<String, u64> = HashedMap::default();
        let mut std_map: HashMap<String, u64> = HashMap::new();
        let mut x = 12345u64;
        for i in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("I-{:06}", x % 5_000);
            match x >> 62 {
                0 => assert_eq!(ours.remove(key.as_str()), std_map.remove(&key)),
                1 => {
                    if let (Some(a), Some(b)) = (ours.get_mut(key.as_str()), std_map.get_mut(&key)) {
                        *a += i;
                        *b += i;
                    }
                }
                2 => assert_eq!(ours.insert(key.clone(), i), std_map.insert(key.clone(), i)),
                _ => assert_eq!(
                    *ours.get_or_insert_with(key.clone(), || i),
                    *std_map.entry(key.clone()).or_insert(i)
                ),
            }
            assert_eq!(ours.len(), std_map.len());
            assert_eq!(ours.get(key.as_str()), std_map.get(&key));
            assert_eq!(ours.contains_key(key.as_str()), std_map.contains_key(&key));
        }
        let mut a: Vec<u64> = ours.values().copied().collect();
        let mut b: Vec<u64> = std_map.values().copied().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert!(ours.len() > 1_000, "grew several times: {}", ours.len());
    }
}
