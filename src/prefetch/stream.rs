//! Bounded per-stream state: [`LruMap`], a hash map with a capacity that
//! evicts its least recently used entry, and [`Trackers`], a small fixed set
//! of access trackers inside one stream (for concurrent sequential or strided
//! scans that share a region).
//!
//! Contract: `LruMap` never holds more than its capacity; `get_or_insert_with`
//! and `get_mut` make the entry the most recently used; every operation is
//! O(1) expected. Memory is allocated once up to capacity and reused.

use std::collections::HashMap;
use std::hash::Hash;

const NIL: usize = usize::MAX;

struct Node<K, V> {
    key: K,
    val: V,
    prev: usize,
    next: usize,
}

/// Hash map bounded to `capacity` entries with LRU eviction.
pub struct LruMap<K, V> {
    map: HashMap<K, usize>,
    nodes: Vec<Node<K, V>>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
    capacity: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    /// A map holding at most `capacity` (≥ 1) entries.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        LruMap {
            map: HashMap::new(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.nodes[i].prev, self.nodes[i].next);
        if p == NIL {
            self.head = n
        } else {
            self.nodes[p].next = n
        }
        if n == NIL {
            self.tail = p
        } else {
            self.nodes[n].prev = p
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn touch(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// The entry for `key`, made most recently used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = *self.map.get(key)?;
        self.touch(i);
        Some(&mut self.nodes[i].val)
    }

    /// The entry for `key` without changing recency.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|&i| &self.nodes[i].val)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// The entry for `key`, inserted with `make` if absent (evicting the
    /// least recently used entry when full), made most recently used.
    pub fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V {
        if let Some(&i) = self.map.get(key) {
            self.touch(i);
            return &mut self.nodes[i].val;
        }
        self.insert_new(key.clone(), make()).1
    }

    /// Insert or replace `key`; returns the evicted (key, value) if the map
    /// was full.
    pub fn insert(&mut self, key: K, val: V) -> Option<(K, V)> {
        if let Some(&i) = self.map.get(&key) {
            self.nodes[i].val = val;
            self.touch(i);
            return None;
        }
        self.insert_new(key, val).0
    }

    fn insert_new(&mut self, key: K, val: V) -> (Option<(K, V)>, &mut V) {
        let mut evicted = None;
        let i = if self.map.len() >= self.capacity {
            let i = self.tail;
            self.unlink(i);
            self.evictions += 1;
            let old_key = std::mem::replace(&mut self.nodes[i].key, key.clone());
            let old_val = std::mem::replace(&mut self.nodes[i].val, val);
            self.map.remove(&old_key);
            evicted = Some((old_key, old_val));
            i
        } else {
            self.nodes.push(Node {
                key: key.clone(),
                val,
                prev: NIL,
                next: NIL,
            });
            self.nodes.len() - 1
        };
        self.map.insert(key, i);
        self.push_front(i);
        (evicted, &mut self.nodes[i].val)
    }

    /// Remove `key`, returning its value. The slot is reused by later inserts.
    pub fn remove(&mut self, key: &K) -> Option<V>
    where
        V: Default,
    {
        let i = self.map.remove(key)?;
        self.unlink(i);
        // Move the last node into slot i so the vector stays dense.
        let last = self.nodes.len() - 1;
        if i != last {
            let (lp, ln) = (self.nodes[last].prev, self.nodes[last].next);
            if lp == NIL {
                self.head = i
            } else {
                self.nodes[lp].next = i
            }
            if ln == NIL {
                self.tail = i
            } else {
                self.nodes[ln].prev = i
            }
            let lk = self.nodes[last].key.clone();
            self.map.insert(lk, i);
            self.nodes.swap(i, last);
        }
        self.nodes.pop().map(|n| n.val)
    }

    /// The least recently used key.
    pub fn lru_key(&self) -> Option<&K> {
        (self.tail != NIL).then(|| &self.nodes[self.tail].key)
    }
}

/// A small set of per-stream trackers with LRU replacement by a logical
/// clock: used when several scans share one region.
#[derive(Debug, Clone)]
pub struct Trackers<T> {
    slots: Vec<(u64, T)>,
    clock: u64,
    max: usize,
}

impl<T> Trackers<T> {
    pub fn new(max: usize) -> Self {
        Trackers {
            slots: Vec::new(),
            clock: 0,
            max: max.max(1),
        }
    }

    /// Index of the first tracker satisfying `pred`, made most recent.
    pub fn find(&mut self, mut pred: impl FnMut(&T) -> bool) -> Option<usize> {
        let i = self.slots.iter().position(|(_, t)| pred(t))?;
        self.clock += 1;
        self.slots[i].0 = self.clock;
        Some(i)
    }

    /// Index of the tracker minimizing `cost` (None when empty), made most recent.
    pub fn nearest(&mut self, cost: impl Fn(&T) -> u64) -> Option<usize> {
        let i = (0..self.slots.len()).min_by_key(|&i| cost(&self.slots[i].1))?;
        self.clock += 1;
        self.slots[i].0 = self.clock;
        Some(i)
    }

    /// Add a tracker, replacing the least recently used one when full.
    pub fn add(&mut self, t: T) -> usize {
        self.clock += 1;
        if self.slots.len() < self.max {
            self.slots.push((self.clock, t));
            return self.slots.len() - 1;
        }
        let i = (0..self.slots.len())
            .min_by_key(|&i| self.slots[i].0)
            .unwrap_or(0);
        self.slots[i] = (self.clock, t);
        i
    }

    pub fn get_mut(&mut self, i: usize) -> &mut T {
        &mut self.slots[i].1
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn lru_map_matches_a_reference_model() {
        let seed = 0x5eed;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let cap = 16;
        let mut m: LruMap<u32, u32> = LruMap::new(cap);
        // Reference: a vector ordered from least to most recently used.
        let mut model: Vec<(u32, u32)> = Vec::new();
        for step in 0..20_000 {
            let k = rng.random_range(0..40u32);
            match rng.random_range(0..4) {
                0 => {
                    let got = m.get_mut(&k).map(|v| *v);
                    let pos = model.iter().position(|e| e.0 == k);
                    assert_eq!(got, pos.map(|p| model[p].1), "seed {seed} step {step}");
                    if let Some(p) = pos {
                        let e = model.remove(p);
                        model.push(e);
                    }
                }
                1 => {
                    let v = rng.random();
                    let ev = m.insert(k, v);
                    if let Some(p) = model.iter().position(|e| e.0 == k) {
                        model.remove(p);
                        assert!(ev.is_none());
                    } else if model.len() == cap {
                        assert_eq!(ev, Some(model.remove(0)), "seed {seed} step {step}");
                    }
                    model.push((k, v));
                }
                2 => {
                    let got = m.remove(&k);
                    let want = model
                        .iter()
                        .position(|e| e.0 == k)
                        .map(|p| model.remove(p).1);
                    assert_eq!(got, want, "seed {seed} step {step}");
                }
                _ => {
                    let v = *m.get_or_insert_with(&k, || 7);
                    match model.iter().position(|e| e.0 == k) {
                        Some(p) => {
                            let e = model.remove(p);
                            assert_eq!(v, e.1);
                            model.push(e);
                        }
                        None => {
                            if model.len() == cap {
                                model.remove(0);
                            }
                            model.push((k, 7));
                        }
                    }
                }
            }
            assert_eq!(m.len(), model.len());
            assert_eq!(
                m.lru_key(),
                model.first().map(|e| &e.0),
                "seed {seed} step {step}"
            );
        }
    }

    #[test]
    fn trackers_replace_least_recent() {
        let mut t = Trackers::new(2);
        t.add(1u64);
        t.add(2);
        assert_eq!(t.find(|&x| x == 1), Some(0));
        t.add(3); // replaces 2, the least recent
        assert!(t.find(|&x| x == 2).is_none());
        assert!(t.find(|&x| x == 1).is_some() && t.find(|&x| x == 3).is_some());
        assert_eq!(t.nearest(|&x| x.abs_diff(10)), Some(1));
    }
}
