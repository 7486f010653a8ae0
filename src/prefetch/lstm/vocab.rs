//! The learned vocabularies of the LSTM: which keys are classes of their
//! own; every other key is out of vocabulary. Two instances: shard-index
//! deltas within a stream ([`DeltaVocab`]) and absolute shards of a volume
//! ([`ShardVocab`], the address-correlating classes: "after shard X comes
//! shard Y" whatever the jump).
//!
//! Contract (both):
//! - Class 0 is [`OOV`]; classes `1..=capacity` are slots that hold one key
//!   each. A slot's key never changes while the key is in use, so class ids
//!   stay stable for the model's embedding and output rows; a slot is only
//!   reassigned when its key has not been seen in the whole counting window
//!   (the model then relearns that row), so never before the window has
//!   filled once: a vocabulary loaded from a model file starts with an empty
//!   window, and its learned classes (`+1` among them) are not given away to
//!   the first new keys seen twice.
//! - [`Vocab::build_by`] makes a vocabulary from data offline: the most
//!   frequent keys first (ties broken by the caller's order), at least
//!   `min_count` occurrences each ([`DeltaVocab::build`]: smaller magnitude,
//!   then positive first; [`ShardVocab::build`]: smaller key first).
//! - [`Vocab::observe`] grows it online from a bounded counting window of the
//!   last `window` keys: a key seen `min_count` times in the window takes a
//!   free slot, or a stale one. Memory is bounded by the window and the
//!   capacity; every operation is O(1) expected, except a stale-slot search
//!   (O(capacity)) when the vocabulary is full. Classes assigned online are
//!   reported ([`Vocab::take_assigned`]) so the model can reset what it had
//!   learned for the slot.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The out-of-vocabulary class.
pub const OOV: u32 = 0;

/// A shard of a volume: the key of the shard vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub volume: u32,
    pub shard: u64,
}

/// The vocabulary of shard-index deltas within a stream.
pub type DeltaVocab = Vocab<i64>;
/// The vocabulary of frequently read shards.
pub type ShardVocab = Vocab<ShardKey>;

/// A vocabulary with a fixed number of slots.
#[derive(Debug, Clone)]
pub struct Vocab<K> {
    /// `slots[c - 1]` is the key of class `c`, if assigned.
    slots: Vec<Option<K>>,
    index: HashMap<K, u32>,
    /// Online growth: recent keys and their counts.
    window: VecDeque<K>,
    counts: HashMap<K, u32>,
    window_max: usize,
    min_count: u32,
    /// Slots assigned online so far.
    grown: u64,
    /// Classes assigned online since the last [`DeltaVocab::take_assigned`].
    assigned: Vec<u32>,
}

impl<K: PartialEq> PartialEq for Vocab<K> {
    /// Two vocabularies are equal when they map the same classes.
    fn eq(&self, other: &Self) -> bool {
        self.slots == other.slots
    }
}

impl DeltaVocab {
    /// The vocabulary of the most frequent of `deltas` (at most `capacity`,
    /// each seen at least `min_count` times; ties: smaller magnitude, then
    /// positive first).
    pub fn build(
        deltas: impl IntoIterator<Item = i64>,
        capacity: usize,
        window: usize,
        min_count: u32,
    ) -> Self {
        Vocab::build_by(deltas, capacity, window, min_count, |a, b| {
            a.unsigned_abs().cmp(&b.unsigned_abs()).then(b.cmp(a))
        })
    }

    /// The delta of `class` (None for OOV or an unassigned slot).
    pub fn delta_of(&self, class: u32) -> Option<i64> {
        self.key_of(class)
    }
}

impl ShardVocab {
    /// The vocabulary of the most frequently read of `shards` (ties: smaller
    /// key first).
    pub fn build(
        shards: impl IntoIterator<Item = ShardKey>,
        capacity: usize,
        window: usize,
        min_count: u32,
    ) -> Self {
        Vocab::build_by(shards, capacity, window, min_count, Ord::cmp)
    }
}

impl<K: Copy + Eq + Hash> Vocab<K> {
    /// An empty vocabulary of `capacity` classes (OOV not counted) that
    /// grows from a window of `window` keys.
    pub fn new(capacity: usize, window: usize, min_count: u32) -> Self {
        Vocab {
            slots: vec![None; capacity],
            index: HashMap::new(),
            window: VecDeque::with_capacity(window),
            counts: HashMap::new(),
            window_max: window.max(1),
            min_count: min_count.max(1),
            grown: 0,
            assigned: Vec::new(),
        }
    }

    /// The vocabulary of the most frequent of `keys` (at most `capacity`,
    /// each seen at least `min_count` times; ties in the order of `tie`).
    pub fn build_by(
        keys: impl IntoIterator<Item = K>,
        capacity: usize,
        window: usize,
        min_count: u32,
        tie: impl Fn(&K, &K) -> Ordering,
    ) -> Self {
        let mut counts: HashMap<K, u64> = HashMap::new();
        for k in keys {
            *counts.entry(k).or_default() += 1;
        }
        let mut ranked: Vec<(K, u64)> = counts
            .into_iter()
            .filter(|&(_, c)| c >= u64::from(min_count.max(1)))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(tie(&a.0, &b.0)));
        let mut v = Vocab::new(capacity, window, min_count);
        for (k, _) in ranked.into_iter().take(capacity) {
            v.assign_free(k);
        }
        v
    }

    /// A vocabulary with the given (class, key) assignments (model files).
    /// Fails on a class out of range, a class assigned twice or a key in
    /// two classes.
    pub fn from_assignments(
        capacity: usize,
        window: usize,
        min_count: u32,
        pairs: &[(u32, K)],
    ) -> Result<Self, String> {
        let mut v = Vocab::new(capacity, window, min_count);
        for &(c, k) in pairs {
            if c == OOV || c as usize > capacity {
                return Err(format!("class {c} out of 1..={capacity}"));
            }
            if v.slots[c as usize - 1].is_some() || v.index.contains_key(&k) {
                return Err(format!("class {c} or its key assigned twice"));
            }
            v.slots[c as usize - 1] = Some(k);
            v.index.insert(k, c);
        }
        Ok(v)
    }

    /// Every (class, key) assignment, by class.
    pub fn assignments(&self) -> Vec<(u32, K)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i as u32 + 1, d)))
            .collect()
    }

    /// Classes (OOV not counted).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Assigned classes.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Slots assigned by online growth so far.
    pub fn grown(&self) -> u64 {
        self.grown
    }

    /// The class of `key` ([`OOV`] if none).
    pub fn class_of(&self, key: K) -> u32 {
        self.index.get(&key).copied().unwrap_or(OOV)
    }

    /// The key of `class` (None for OOV or an unassigned slot).
    pub fn key_of(&self, class: u32) -> Option<K> {
        if class == OOV {
            return None;
        }
        self.slots.get(class as usize - 1).copied().flatten()
    }

    fn assign_free(&mut self, d: K) -> bool {
        match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(d);
                self.index.insert(d, i as u32 + 1);
                true
            }
            None => false,
        }
    }

    /// Count `delta` in the window and give it a class if it has become
    /// frequent; returns its class.
    pub fn observe(&mut self, delta: K) -> u32 {
        if self.window.len() == self.window_max {
            if let Some(old) = self.window.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.window.push_back(delta);
        let n = {
            let c = self.counts.entry(delta).or_default();
            *c += 1;
            *c
        };
        if let Some(&c) = self.index.get(&delta) {
            return c;
        }
        if n < self.min_count || self.slots.is_empty() {
            return OOV;
        }
        if self.index.len() < self.slots.len() {
            self.assign_free(delta);
        } else {
            // Full: reuse a slot whose delta left the counting window (none
            // before the window has filled: a key not seen yet may simply
            // not have come up since the vocabulary was loaded).
            if self.window.len() < self.window_max {
                return OOV;
            }
            let stale = self
                .slots
                .iter()
                .position(|d| d.is_some_and(|d| !self.counts.contains_key(&d)));
            let Some(i) = stale else { return OOV };
            if let Some(old) = self.slots[i].take() {
                self.index.remove(&old);
            }
            self.slots[i] = Some(delta);
            self.index.insert(delta, i as u32 + 1);
        }
        self.grown += 1;
        let c = self.class_of(delta);
        self.assigned.push(c);
        c
    }

    /// Classes given a (new) key online since the last call: the model
    /// resets their rows, which meant another key or nothing.
    pub fn take_assigned(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.assigned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ranks_by_frequency_and_round_trips() {
        let data = [1i64, 1, 1, 5, 5, -5, -5, 7, 9, 9, 9, 9];
        let v = DeltaVocab::build(data, 3, 16, 2);
        // 9 (4x), 1 (3x), then 5 and -5 tie (2x): positive first; 7 once.
        assert_eq!(v.assignments(), vec![(1, 9), (2, 1), (3, 5)]);
        assert_eq!((v.class_of(-5), v.class_of(7)), (OOV, OOV));
        assert_eq!(v.delta_of(2), Some(1));
        assert_eq!(v.delta_of(OOV), None);
        let back = DeltaVocab::from_assignments(3, 16, 2, &v.assignments()).unwrap();
        assert_eq!(back, v);
        assert!(DeltaVocab::from_assignments(3, 16, 2, &[(4, 1)]).is_err());
        assert!(DeltaVocab::from_assignments(3, 16, 2, &[(1, 1), (2, 1)]).is_err());
        assert!(DeltaVocab::from_assignments(3, 16, 2, &[(0, 1)]).is_err());
        let k = |shard| ShardKey { volume: 1, shard };
        let s = ShardVocab::build([k(9), k(4), k(9), k(4), k(2), k(2), k(2)], 2, 16, 2);
        assert_eq!(s.assignments(), vec![(1, k(2)), (2, k(4))]);
        assert_eq!(s.class_of(k(9)), OOV);
        assert_eq!(s.key_of(1), Some(k(2)));
    }

    #[test]
    fn grows_online_within_a_bounded_window() {
        let mut v = DeltaVocab::new(2, 4, 2);
        assert_eq!(v.observe(3), OOV, "seen once");
        assert_eq!(v.observe(3), 1, "seen twice: takes slot 1");
        assert_eq!(v.observe(8), OOV);
        assert_eq!(v.observe(8), 2);
        assert_eq!(v.observe(11), OOV);
        // Full and 3 is still in the window (3, 8, 8, 11 → 8, 8, 11, 11).
        assert_eq!(v.observe(11), 1, "3 left the window: its slot is reused");
        assert_eq!(v.class_of(3), OOV);
        assert_eq!(v.class_of(8), 2, "a delta in use keeps its class");
        assert_eq!(v.grown(), 3);
        assert_eq!(v.take_assigned(), vec![1, 2, 1]);
        assert!(v.take_assigned().is_empty());
        assert!(v.counts.values().sum::<u32>() as usize <= 4);
        assert_eq!(v.len(), 2);
    }

    /// A loaded vocabulary keeps its classes until a whole window has passed
    /// without them (before the fix, the first new key seen twice took the
    /// class of a key that had not come up yet since loading).
    #[test]
    fn loaded_classes_are_not_stale_before_the_window_fills() {
        let mut v = DeltaVocab::from_assignments(2, 4, 2, &[(1, 1), (2, 5)]).unwrap();
        assert_eq!(v.observe(1024), OOV);
        assert_eq!(v.observe(1024), OOV, "full, and 1 and 5 may still come");
        assert_eq!(v.observe(1), 1, "kept its class");
        assert!(v.take_assigned().is_empty());
        // The window (1024, 1024, 1, 1024) has filled without 5: its slot goes.
        assert_eq!(v.observe(1024), 2);
        assert_eq!(v.class_of(5), OOV);
        assert_eq!(v.take_assigned(), vec![2]);
    }
}
