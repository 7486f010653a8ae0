//! The prefetch ring: predictions from the drain thread (demand promotion)
//! and the model thread to the stager.
//!
//! Contract:
//! - One consumer ([`PredictionRx`], the stager) and one or more producers
//!   ([`PredictionTx`]: the drain thread's demand promotion and the model
//!   thread's predictions, [`prediction_rings`]), each with its own
//!   single-producer lane, lock-free and bounded (`rtrb`); the consumer
//!   takes from the first lane with anything waiting (the first producer's
//!   predictions come first). A push to a full lane drops the prediction
//!   and counts it: no producer ever waits for the stager.
//! - De-duplicated: each producer remembers recently queued `(volume, shard)`
//!   keys in a direct-mapped table of a fixed number of slots; a key queued
//!   less than the dedup window ago is not queued again (counted as a
//!   duplicate). A collision replaces the older key, so the table can only
//!   let a duplicate through, never refuse a shard it has not seen. Since a
//!   staged shard was queued first, "queued or recently staged" is covered.
//! - Times are nanoseconds of a clock passed in by the caller.
//! - Counters are shared atomics readable from any thread ([`RingCounters`]).

use crate::prefetch::Prediction;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What happened to one pushed prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Queued less than the dedup window ago.
    Duplicate,
    /// The ring was full: dropped.
    Full,
}

/// Counters of the ring since it was made.
#[derive(Debug, Default)]
pub struct RingCounters {
    pub queued: AtomicU64,
    pub duplicates: AtomicU64,
    pub dropped: AtomicU64,
    pub taken: AtomicU64,
}

impl RingCounters {
    /// `(queued, duplicates, dropped, taken)`.
    pub fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.taken.load(Ordering::Relaxed),
        )
    }
}

/// A producer's end (one lane).
pub struct PredictionTx {
    ring: rtrb::Producer<Prediction>,
    /// `(key + 1, queued at ns)`; key 0 = empty slot.
    recent: Box<[(u64, u64)]>,
    window_ns: u64,
    counters: Arc<RingCounters>,
}

/// The stager's end (every lane).
pub struct PredictionRx {
    lanes: Vec<rtrb::Consumer<Prediction>>,
    counters: Arc<RingCounters>,
}

/// A ring of `capacity` predictions with `dedup_slots` (a power of two)
/// remembered keys, each for `window_ns`.
pub fn prediction_ring(
    capacity: usize,
    dedup_slots: usize,
    window_ns: u64,
) -> (PredictionTx, PredictionRx) {
    let (mut tx, rx) = prediction_rings(1, capacity, dedup_slots, window_ns);
    (tx.pop().expect("one producer"), rx)
}

/// A ring of `producers` lanes of `capacity` predictions each, every
/// producer with `dedup_slots` (a power of two) remembered keys for
/// `window_ns`; one consumer, counters shared.
pub fn prediction_rings(
    producers: usize,
    capacity: usize,
    dedup_slots: usize,
    window_ns: u64,
) -> (Vec<PredictionTx>, PredictionRx) {
    assert!(dedup_slots.is_power_of_two(), "dedup slots: a power of two");
    assert!(producers >= 1, "at least one producer");
    let counters = Arc::new(RingCounters::default());
    let mut txs = Vec::with_capacity(producers);
    let mut lanes = Vec::with_capacity(producers);
    for _ in 0..producers {
        let (p, c) = rtrb::RingBuffer::new(capacity.max(1));
        txs.push(PredictionTx {
            ring: p,
            recent: vec![(0, 0); dedup_slots].into_boxed_slice(),
            window_ns,
            counters: counters.clone(),
        });
        lanes.push(c);
    }
    (txs, PredictionRx { lanes, counters })
}

/// The dedup key of a shard (shard indices stay below 2^40: volumes are at
/// most 256 TiB in shards of at least 64 KiB).
fn key_of(volume: u32, shard: u64) -> u64 {
    (u64::from(volume) << 40) ^ shard
}

impl PredictionTx {
    /// Queue `p` unless it is a recent duplicate or the ring is full.
    pub fn push(&mut self, p: Prediction, now_ns: u64) -> Push {
        let key = key_of(p.volume, p.shard).wrapping_add(1);
        let bits = self.recent.len().trailing_zeros();
        let i = if bits == 0 {
            0
        } else {
            (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
        };
        let (k, at) = self.recent[i];
        if k == key && now_ns.saturating_sub(at) < self.window_ns {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return Push::Duplicate;
        }
        if self.ring.push(p).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Push::Full;
        }
        self.recent[i] = (key, now_ns);
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        Push::Queued
    }
    pub fn counters(&self) -> Arc<RingCounters> {
        self.counters.clone()
    }
    /// Predictions waiting.
    pub fn len(&self) -> usize {
        self.ring.buffer().capacity() - self.ring.slots()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PredictionRx {
    /// The next prediction, from the first lane with any waiting.
    pub fn pop(&mut self) -> Option<Prediction> {
        let p = self.lanes.iter_mut().find_map(|l| l.pop().ok())?;
        self.counters.taken.fetch_add(1, Ordering::Relaxed);
        Some(p)
    }
    pub fn len(&self) -> usize {
        self.lanes.iter().map(|l| l.slots()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.is_empty())
    }
    pub fn counters(&self) -> Arc<RingCounters> {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn p(volume: u32, shard: u64) -> Prediction {
        Prediction {
            volume,
            shard,
            confidence: 1.0,
        }
    }

    #[test]
    fn dedups_within_the_window_and_drops_when_full() {
        let (mut tx, mut rx) = prediction_ring(4, 64, 100);
        assert_eq!(tx.push(p(0, 1), 0), Push::Queued);
        assert_eq!(tx.push(p(0, 1), 50), Push::Duplicate);
        assert_eq!(tx.push(p(1, 1), 50), Push::Queued, "other volume");
        assert_eq!(tx.push(p(0, 1), 100), Push::Queued, "window passed");
        assert_eq!(tx.push(p(0, 2), 100), Push::Queued);
        assert_eq!(tx.push(p(0, 3), 100), Push::Full);
        assert_eq!(tx.len(), 4);
        // A dropped shard is not remembered: it can be queued once there is room.
        assert_eq!(rx.pop().unwrap().shard, 1);
        assert_eq!(tx.push(p(0, 3), 101), Push::Queued);
        let got: Vec<u64> = std::iter::from_fn(|| rx.pop()).map(|q| q.shard).collect();
        assert_eq!(got, vec![1, 1, 2, 3]);
        assert_eq!(tx.counters().get(), (5, 1, 1, 5));
    }

    #[test]
    fn lanes_of_two_producers_reach_one_consumer_first_lane_first() {
        let (mut txs, mut rx) = prediction_rings(2, 2, 64, 100);
        let mut model = txs.pop().unwrap();
        let mut demand = txs.pop().unwrap();
        assert_eq!(model.push(p(0, 7), 0), Push::Queued);
        assert_eq!(model.push(p(0, 8), 0), Push::Queued);
        assert_eq!(model.push(p(0, 9), 0), Push::Full, "its own lane is full");
        assert_eq!(
            demand.push(p(0, 1), 0),
            Push::Queued,
            "the other lane is not"
        );
        // each producer dedups its own pushes
        assert_eq!(demand.push(p(0, 1), 1), Push::Duplicate);
        assert_eq!(demand.push(p(0, 7), 1), Push::Queued);
        assert_eq!(rx.len(), 4);
        let got: Vec<u64> = std::iter::from_fn(|| rx.pop()).map(|q| q.shard).collect();
        assert_eq!(got, vec![1, 7, 7, 8], "the first lane first");
        assert!(rx.is_empty());
        assert_eq!(rx.counters().get(), (4, 1, 1, 4));
    }

    /// Against a model: whatever the collisions, a shard never queued within
    /// the window is always queued (no false duplicate), and the ring gives
    /// back exactly what was queued, in order, across threads.
    #[test]
    fn never_refuses_a_new_shard_and_keeps_order_across_threads() {
        for seed in 0..4u64 {
            let (mut tx, mut rx) = prediction_ring(64, 16, 1_000);
            let consumer = std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 2_000 {
                    match rx.pop() {
                        Some(q) => got.push(q.shard),
                        None => std::thread::yield_now(),
                    }
                }
                got
            });
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut last: std::collections::HashMap<u64, u64> = Default::default();
            let mut sent = Vec::new();
            let mut now = 0u64;
            while sent.len() < 2_000 {
                now += rng.random_range(0..50);
                let s = rng.random_range(0..200u64);
                let recent = last.get(&s).is_some_and(|&t| now - t < 1_000);
                match tx.push(p(0, s), now) {
                    Push::Queued => {
                        sent.push(s);
                        last.insert(s, now);
                    }
                    Push::Duplicate => assert!(recent, "seed {seed}: false duplicate of {s}"),
                    Push::Full => std::thread::yield_now(),
                }
            }
            assert_eq!(consumer.join().unwrap(), sent, "seed {seed}");
        }
    }
}
