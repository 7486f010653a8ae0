//! Demand promotion: a cold shard read again soon is staged onto the hot
//! tier by the stager, as a cache (dm-cache, bcache) would, beside what the
//! predictor foresees.
//!
//! Why: the tier policy promotes by per-window read counts
//! (`TIERED_STORAGE_POLICY` `promote=`, windows of `POLICY_WINDOW_MS`), which
//! is placement, not caching: a shard re-read a few times within seconds
//! keeps paying the cold tier until the next window. The offline simulator
//! ([`super::sim`], `demand_cache`) has always assumed a shard read from the
//! cold tier becomes resident; this is that behaviour on a live device,
//! within the stager's budget and throttle.
//!
//! Contract:
//! - [`DemandPromoter`] is a plain state machine (no I/O, no clock: times
//!   are passed in). The caller feeds it reads of shards that are on a
//!   colder tier now ([`DemandPromoter::on_cold_read`], one call per shard a
//!   read touches); it answers whether to stage the shard now.
//! - Rule: a shard is staged on its `reads`-th cold read within `window_ns`
//!   of the first one counted (a read after the window starts a new count).
//!   `reads = 0` never stages; `reads = 1` stages on the first cold read
//!   (the simulator's demand caching). After answering yes the shard's count
//!   is forgotten: if the staging is dropped or fails, it takes `reads` more
//!   cold reads to ask again (no retry storm).
//! - Memory is bounded: at most `tracked` shards are counted (least recently
//!   read forgotten first).

use super::stream::LruMap;

/// `(volume, shard index)`.
pub type ShardKey = (u32, u64);

#[derive(Debug, Clone, Copy, Default)]
struct Count {
    reads: u32,
    first_ns: u64,
}

/// Counts cold reads per shard and says when one should be staged.
pub struct DemandPromoter {
    reads: u32,
    window_ns: u64,
    seen: LruMap<ShardKey, Count>,
    promoted: u64,
}

impl DemandPromoter {
    /// Stage a shard on its `reads`-th cold read within `window_ns`
    /// (`reads = 0`: never), counting at most `tracked` shards.
    pub fn new(reads: u32, window_ns: u64, tracked: usize) -> Self {
        assert!(tracked > 0, "a promoter tracks at least one shard");
        DemandPromoter {
            reads,
            window_ns,
            seen: LruMap::new(tracked),
            promoted: 0,
        }
    }

    /// Whether demand promotion is on at all.
    pub fn enabled(&self) -> bool {
        self.reads > 0
    }

    /// A read of `key`, which is on a colder tier, at `now_ns`: whether to
    /// stage it now.
    pub fn on_cold_read(&mut self, key: ShardKey, now_ns: u64) -> bool {
        if self.reads == 0 {
            return false;
        }
        let c = self.seen.get_or_insert_with(&key, || Count {
            reads: 0,
            first_ns: now_ns,
        });
        if now_ns.saturating_sub(c.first_ns) > self.window_ns {
            *c = Count {
                reads: 0,
                first_ns: now_ns,
            };
        }
        c.reads += 1;
        if c.reads < self.reads {
            return false;
        }
        self.seen.remove(&key);
        self.promoted += 1;
        true
    }

    /// Shards this promoter asked to stage so far.
    pub fn promoted(&self) -> u64 {
        self.promoted
    }

    /// Shards being counted now.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const MS: u64 = 1_000_000;

    #[test]
    fn stages_on_the_nth_read_within_the_window() {
        let mut d = DemandPromoter::new(2, 100 * MS, 16);
        assert!(!d.on_cold_read((0, 7), 0));
        assert!(d.on_cold_read((0, 7), 50 * MS));
        assert_eq!(d.promoted(), 1);
        // forgotten after a yes: two more reads to ask again
        assert!(!d.on_cold_read((0, 7), 60 * MS));
        assert!(d.on_cold_read((0, 7), 70 * MS));
        // other volumes and shards count apart
        assert!(!d.on_cold_read((1, 7), 80 * MS));
        assert!(!d.on_cold_read((0, 8), 80 * MS));
    }

    #[test]
    fn a_read_after_the_window_starts_a_new_count() {
        let mut d = DemandPromoter::new(3, 100 * MS, 16);
        assert!(!d.on_cold_read((0, 1), 0));
        assert!(!d.on_cold_read((0, 1), 90 * MS));
        // 150 ms after the first: the count restarts at this read
        assert!(!d.on_cold_read((0, 1), 150 * MS));
        assert!(!d.on_cold_read((0, 1), 200 * MS));
        assert!(d.on_cold_read((0, 1), 240 * MS));
    }

    #[test]
    fn one_read_stages_at_once_and_zero_never() {
        let mut once = DemandPromoter::new(1, MS, 4);
        assert!(once.enabled());
        assert!(once.on_cold_read((0, 3), 0));
        let mut never = DemandPromoter::new(0, MS, 4);
        assert!(!never.enabled());
        for t in 0..100 {
            assert!(!never.on_cold_read((0, 3), t));
        }
        assert_eq!(never.tracked(), 0);
    }

    /// Seeded: a hot set read over and over among a stream of one-off
    /// reads. Every hot shard is asked for, one-off shards never are, and
    /// memory stays within the bound whatever the stream.
    #[test]
    fn hot_shards_are_staged_and_a_scan_is_not() {
        for seed in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut d = DemandPromoter::new(2, 1_000 * MS, 64);
            let mut staged = std::collections::BTreeSet::new();
            let mut t = 0;
            let mut scan = 1_000_000u64;
            for _ in 0..5_000 {
                t += MS;
                let key = if rng.random_bool(0.3) {
                    (0, rng.random_range(0..8u64))
                } else {
                    scan += 1; // read once, never again
                    (0, scan)
                };
                if d.on_cold_read(key, t) {
                    staged.insert(key.1);
                }
                assert!(d.tracked() <= 64, "seed {seed}: {} tracked", d.tracked());
            }
            assert_eq!(
                staged,
                (0..8).collect(),
                "seed {seed}: hot set not staged, or a scan shard was"
            );
        }
    }
}
