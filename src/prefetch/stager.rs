//! The stager: takes predictions off the prefetch ring and moves the
//! predicted shards from a cold tier onto the hot tier (tier 0), within a
//! hot-tier budget, measuring whether what it staged was read.
//!
//! Contract:
//! - [`StagerCore`] holds every decision and no I/O and no clock: budget,
//!   eviction order, the precision window, the rate throttle. Times are
//!   nanoseconds passed in by the caller, so it is tested as a plain state
//!   machine (seeded simulations below).
//! - [`run_stager`] is the thread: a loop over the core that moves data with
//!   `shard::lifecycle::migrate` on the thread's own engine (io_uring over
//!   the pool's devices). Migration copies while writes continue, syncs the
//!   target before the `Map` record and switches the table entry atomically,
//!   so a read returns the last acknowledged write whatever the stager does.
//! - Budget: the units of staged shards the stager holds on the hot tier are
//!   at most `budget_units`. To stage beyond it, it first demotes (back to
//!   the tier each came from) its own shards in this order: unread shards
//!   whose useful window has passed, oldest first; then shards already read,
//!   least recently read first. Fresh unread shards are never evicted for a
//!   newer prediction: the prediction is skipped instead.
//! - Accounting: a staged shard is *read* when a read request touching it
//!   starts after the shard's switch; `precision = staged shards read /
//!   staged shards`; `coverage = read requests touching a staged shard /
//!   read requests`. Each staged shard gives one outcome to the precision
//!   window: read (1) or, when its useful window passes or it is evicted
//!   unread, wasted (0).
//! - Throttle: a token bucket of `rate` shards per second (burst
//!   `burst`). At most every throttle period, when the window holds enough
//!   outcomes, window precision below `precision_min` halves the rate (down
//!   to `rate_min`) and at or above `precision_recover` doubles it (up to
//!   `rate_max`); the window restarts after each change.
//! - Only whole, unsplit mapped slots are staged; unmapped slots (reads are
//!   zeros) and split slots are skipped and counted.

use crate::constants::{
    STAGER_BURST_SHARDS, STAGER_PRECISION_MIN, STAGER_PRECISION_RECOVER, STAGER_PRECISION_WINDOW,
    STAGER_PRECISION_WINDOW_MIN, STAGER_RATE_MAX_SHARDS_PER_S, STAGER_RATE_MIN_SHARDS_PER_S,
    STAGER_THROTTLE_PERIOD_MS, STAGER_USEFUL_WITHIN_MS,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// `(volume, shard index)`.
pub type ShardKey = (u32, u64);

/// Tunables of the core (defaults from `constants.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct StagerParams {
    /// Hot-tier units the stager may hold in staged shards.
    pub budget_units: u64,
    pub useful_within_ns: u64,
    pub window: usize,
    pub window_min: usize,
    pub precision_min: f32,
    pub precision_recover: f32,
    pub rate_max: u32,
    pub rate_min: u32,
    pub burst: u32,
    pub throttle_period_ns: u64,
}

impl StagerParams {
    pub fn new(budget_units: u64) -> Self {
        StagerParams {
            budget_units,
            useful_within_ns: STAGER_USEFUL_WITHIN_MS * 1_000_000,
            window: STAGER_PRECISION_WINDOW,
            window_min: STAGER_PRECISION_WINDOW_MIN,
            precision_min: STAGER_PRECISION_MIN,
            precision_recover: STAGER_PRECISION_RECOVER,
            rate_max: STAGER_RATE_MAX_SHARDS_PER_S,
            rate_min: STAGER_RATE_MIN_SHARDS_PER_S,
            burst: STAGER_BURST_SHARDS,
            throttle_period_ns: STAGER_THROTTLE_PERIOD_MS * 1_000_000,
        }
    }
}

/// A staged shard to demote first: back to `tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Victim {
    pub key: ShardKey,
    pub tier: usize,
    pub units: u64,
}

/// Why a prediction is not staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    AlreadyStaged,
    Throttled,
    /// The budget is held by fresh unread shards (or the shard is larger than it).
    NoBudget,
}

/// What to do with one prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Demote `evict` (possibly none), then stage the shard.
    Stage {
        evict: Vec<Victim>,
    },
    Skip(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Staged, not read, useful window open.
    Fresh,
    /// Staged, not read, useful window passed (counted wasted).
    Stale,
    Read,
}

#[derive(Debug, Clone, Copy)]
struct Staged {
    from_tier: usize,
    units: u64,
    staged_ns: u64,
    last_read_ns: u64,
    state: State,
    /// Its outcome is already counted: held again after a failed demotion
    /// (it was counted read or wasted before it was chosen as a victim).
    /// Reads of it are hits but change neither `staged_read` nor `wasted`.
    settled: bool,
}

/// What the stager did (counters since start, and current state).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StagerStats {
    /// Shards moved to the hot tier.
    pub staged: u64,
    /// Migrations that found the shard unmapped, split, busy or already hot,
    /// or no space on the hot tier.
    pub stage_skipped: u64,
    pub stage_failed: u64,
    pub already_staged: u64,
    /// Predictions refused by the rate throttle.
    pub throttled: u64,
    /// Predictions refused because the budget was full of fresh shards.
    pub no_budget: u64,
    /// Staged shards demoted again, and demotions that did not happen.
    pub evicted: u64,
    pub evict_failed: u64,
    /// Read requests, and those that touched a staged shard.
    pub reads: u64,
    pub hits: u64,
    /// Staged shards read at least once (after their switch).
    pub staged_read: u64,
    /// Staged shards whose useful window passed, or evicted, unread.
    pub wasted: u64,
    pub throttle_downs: u64,
    pub throttle_ups: u64,
    /// Current rate limit (shards per second).
    pub rate_per_s: u32,
    pub resident_shards: u64,
    pub resident_units: u64,
    pub budget_units: u64,
    /// `staged_read / staged`.
    pub precision: Option<f32>,
    /// `hits / reads`.
    pub coverage: Option<f32>,
    /// Precision over the recent window.
    pub window_precision: Option<f32>,
}

/// The stager's decisions (see the module contract).
pub struct StagerCore {
    p: StagerParams,
    staged: HashMap<ShardKey, Staged>,
    fresh: BTreeSet<(u64, ShardKey)>,
    stale: BTreeSet<(u64, ShardKey)>,
    read: BTreeSet<(u64, ShardKey)>,
    held_units: u64,
    window: VecDeque<bool>,
    rate: u32,
    tokens: f64,
    last_refill_ns: u64,
    last_throttle_ns: u64,
    st: StagerStats,
}

impl StagerCore {
    pub fn new(p: StagerParams, now_ns: u64) -> Self {
        let rate = p.rate_max;
        let tokens = f64::from(p.burst);
        StagerCore {
            p,
            staged: HashMap::new(),
            fresh: BTreeSet::new(),
            stale: BTreeSet::new(),
            read: BTreeSet::new(),
            held_units: 0,
            window: VecDeque::new(),
            rate,
            tokens,
            last_refill_ns: now_ns,
            last_throttle_ns: now_ns,
            st: StagerStats::default(),
        }
    }

    pub fn params(&self) -> &StagerParams {
        &self.p
    }

    fn refill(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_refill_ns) as f64 / 1e9;
        self.last_refill_ns = self.last_refill_ns.max(now_ns);
        self.tokens = (self.tokens + dt * f64::from(self.rate)).min(f64::from(self.p.burst));
    }

    fn outcome(&mut self, read: bool) {
        if !read {
            self.st.wasted += 1;
        }
        self.window.push_back(read);
        while self.window.len() > self.p.window {
            self.window.pop_front();
        }
    }

    /// Decide about a prediction for `key` of `units` units.
    pub fn plan(&mut self, key: ShardKey, units: u64, now_ns: u64) -> Plan {
        if self.staged.contains_key(&key) {
            self.st.already_staged += 1;
            return Plan::Skip(SkipReason::AlreadyStaged);
        }
        self.refill(now_ns);
        if self.tokens < 1.0 {
            self.st.throttled += 1;
            return Plan::Skip(SkipReason::Throttled);
        }
        if units > self.p.budget_units {
            self.st.no_budget += 1;
            return Plan::Skip(SkipReason::NoBudget);
        }
        // Victims: stale unread (oldest staged), then read (least recently read).
        let mut need = (self.held_units + units).saturating_sub(self.p.budget_units);
        let mut evict = Vec::new();
        let candidates = self.stale.iter().chain(self.read.iter());
        for &(_, k) in candidates {
            if need == 0 {
                break;
            }
            let s = self.staged[&k];
            evict.push(Victim {
                key: k,
                tier: s.from_tier,
                units: s.units,
            });
            need = need.saturating_sub(s.units);
        }
        if need > 0 {
            self.st.no_budget += 1;
            return Plan::Skip(SkipReason::NoBudget);
        }
        for v in &evict {
            self.forget(v.key);
        }
        self.tokens -= 1.0;
        Plan::Stage { evict }
    }

    /// Stop tracking `key` (evicted); a fresh shard counts as wasted.
    fn forget(&mut self, key: ShardKey) {
        if let Some(s) = self.staged.remove(&key) {
            self.held_units -= s.units;
            match s.state {
                State::Fresh => {
                    self.fresh.remove(&(s.staged_ns, key));
                    self.outcome(false);
                }
                State::Stale => {
                    self.stale.remove(&(s.staged_ns, key));
                }
                State::Read => {
                    self.read.remove(&(s.last_read_ns, key));
                }
            }
        }
    }

    /// The shard planned for staging was switched to the hot tier at `now_ns`
    /// (from `from_tier`).
    pub fn staged(&mut self, key: ShardKey, from_tier: usize, units: u64, now_ns: u64) {
        self.forget(key);
        self.staged.insert(
            key,
            Staged {
                from_tier,
                units,
                staged_ns: now_ns,
                last_read_ns: 0,
                state: State::Fresh,
                settled: false,
            },
        );
        self.fresh.insert((now_ns, key));
        self.held_units += units;
        self.st.staged += 1;
    }

    /// The planned staging did not happen: skipped (`failed = false`) or an I/O error.
    pub fn stage_missed(&mut self, failed: bool) {
        if failed {
            self.st.stage_failed += 1;
        } else {
            self.st.stage_skipped += 1;
        }
    }

    /// `key` is gone from the hot tier without a planned demotion (its copy
    /// was invalidated): stop tracking it, counted as evicted.
    pub fn dropped(&mut self, key: ShardKey) {
        if self.staged.contains_key(&key) {
            self.forget(key);
            self.st.evicted += 1;
        }
    }

    /// A planned demotion happened.
    pub fn evicted(&mut self) {
        self.st.evicted += 1;
    }

    /// A planned demotion did not happen. `still_hot`: the shard is still
    /// on the hot tier, so the stager holds it again (as a stale shard, the
    /// first candidate next time) and it counts against the budget.
    pub fn evict_failed(&mut self, v: Victim, still_hot: bool, now_ns: u64) {
        self.st.evict_failed += 1;
        if still_hot && !self.staged.contains_key(&v.key) {
            self.staged.insert(
                v.key,
                Staged {
                    from_tier: v.tier,
                    units: v.units,
                    staged_ns: now_ns,
                    last_read_ns: 0,
                    state: State::Stale,
                    settled: true,
                },
            );
            self.stale.insert((now_ns, v.key));
            self.held_units += v.units;
        }
    }

    /// Whether `units` more fit in the budget now (after failed demotions,
    /// a planned staging may no longer fit: the caller then skips it and
    /// calls [`Self::over_budget`]).
    pub fn fits(&self, units: u64) -> bool {
        self.held_units + units <= self.p.budget_units
    }

    /// A planned staging was dropped because the budget did not free up.
    pub fn over_budget(&mut self) {
        self.st.no_budget += 1;
    }

    /// A read request of `shards` shards from `shard` of `volume` started at
    /// `time_ns`. Returns whether it touched a staged shard.
    pub fn on_read(&mut self, volume: u32, shard: u64, shards: u32, time_ns: u64) -> bool {
        self.st.reads += 1;
        let mut hit = false;
        for s in shard..shard.saturating_add(u64::from(shards.max(1))) {
            let key = (volume, s);
            let Some(e) = self.staged.get_mut(&key) else {
                continue;
            };
            if time_ns < e.staged_ns {
                continue; // started before the switch: served from the cold tier
            }
            hit = true;
            match e.state {
                State::Fresh | State::Stale => {
                    if e.state == State::Fresh {
                        self.fresh.remove(&(e.staged_ns, key));
                    } else {
                        self.stale.remove(&(e.staged_ns, key));
                    }
                    let fresh = e.state == State::Fresh;
                    let settled = e.settled;
                    if !fresh && !settled {
                        // Read after its window: not wasted after all (the
                        // window keeps its miss: it was late).
                        self.st.wasted -= 1;
                    }
                    e.state = State::Read;
                    e.last_read_ns = time_ns;
                    self.read.insert((time_ns, key));
                    if !settled {
                        self.st.staged_read += 1;
                    }
                    if fresh {
                        self.outcome(true);
                    }
                }
                State::Read => {
                    if time_ns > e.last_read_ns {
                        self.read.remove(&(e.last_read_ns, key));
                        e.last_read_ns = time_ns;
                        self.read.insert((time_ns, key));
                    }
                }
            }
        }
        if hit {
            self.st.hits += 1;
        }
        hit
    }

    /// Age fresh shards out and let the throttle act.
    pub fn tick(&mut self, now_ns: u64) {
        while let Some(&(at, key)) = self.fresh.first() {
            if at.saturating_add(self.p.useful_within_ns) > now_ns {
                break;
            }
            self.fresh.pop_first();
            if let Some(e) = self.staged.get_mut(&key) {
                e.state = State::Stale;
            }
            self.stale.insert((at, key));
            self.outcome(false);
        }
        if now_ns.saturating_sub(self.last_throttle_ns) < self.p.throttle_period_ns {
            return;
        }
        self.last_throttle_ns = now_ns;
        if self.window.len() < self.p.window_min {
            return;
        }
        let prec = self.window_precision().unwrap_or(1.0);
        if prec < self.p.precision_min && self.rate > self.p.rate_min {
            self.refill(now_ns);
            self.rate = (self.rate / 2).max(self.p.rate_min);
            self.tokens = self.tokens.min(f64::from(self.rate).max(1.0));
            self.st.throttle_downs += 1;
            self.window.clear();
        } else if prec >= self.p.precision_recover && self.rate < self.p.rate_max {
            self.refill(now_ns);
            self.rate = self.rate.saturating_mul(2).min(self.p.rate_max);
            self.st.throttle_ups += 1;
            self.window.clear();
        }
    }

    fn window_precision(&self) -> Option<f32> {
        (!self.window.is_empty())
            .then(|| self.window.iter().filter(|&&r| r).count() as f32 / self.window.len() as f32)
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Units of staged shards held on the hot tier.
    pub fn held_units(&self) -> u64 {
        self.held_units
    }

    /// Whether `key` is staged and held.
    pub fn holds(&self, key: ShardKey) -> bool {
        self.staged.contains_key(&key)
    }

    pub fn stats(&self) -> StagerStats {
        let mut s = self.st.clone();
        s.rate_per_s = self.rate;
        s.resident_shards = self.staged.len() as u64;
        s.resident_units = self.held_units;
        s.budget_units = self.p.budget_units;
        s.precision = (s.staged > 0).then(|| s.staged_read as f32 / s.staged as f32);
        s.coverage = (s.reads > 0).then(|| s.hits as f32 / s.reads as f32);
        s.window_precision = self.window_precision();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn params(budget: u64) -> StagerParams {
        StagerParams {
            budget_units: budget,
            useful_within_ns: 100 * MS,
            window: 20,
            window_min: 10,
            precision_min: 0.3,
            precision_recover: 0.6,
            rate_max: 64,
            rate_min: 2,
            burst: 8,
            throttle_period_ns: 10 * MS,
        }
    }

    fn stage(c: &mut StagerCore, shard: u64, now: u64) -> Plan {
        let plan = c.plan((0, shard), 1, now);
        if let Plan::Stage { evict } = &plan {
            for _ in evict {
                c.evicted();
            }
            c.staged((0, shard), 1, 1, now);
        }
        plan
    }

    #[test]
    fn budget_evicts_stale_then_read_never_fresh() {
        let mut c = StagerCore::new(params(3), 0);
        assert_eq!(stage(&mut c, 0, 0), Plan::Stage { evict: vec![] });
        assert_eq!(stage(&mut c, 1, 0), Plan::Stage { evict: vec![] });
        assert_eq!(stage(&mut c, 2, 50 * MS), Plan::Stage { evict: vec![] });
        // Budget full of fresh shards: skip.
        assert_eq!(stage(&mut c, 10, 51 * MS), Plan::Skip(SkipReason::NoBudget));
        // Shard 1 read; at 100 ms shard 0 goes stale, shard 2 stays fresh.
        assert!(c.on_read(0, 1, 1, 5 * MS));
        assert!(!c.on_read(0, 7, 1, 5 * MS));
        c.tick(100 * MS);
        let victim = |k| Victim {
            key: (0, k),
            tier: 1,
            units: 1,
        };
        assert_eq!(
            stage(&mut c, 11, 100 * MS),
            Plan::Stage {
                evict: vec![victim(0)]
            },
            "the stale one first"
        );
        assert_eq!(
            stage(&mut c, 12, 100 * MS),
            Plan::Stage {
                evict: vec![victim(1)]
            },
            "then the read one"
        );
        assert_eq!(
            stage(&mut c, 13, 101 * MS),
            Plan::Skip(SkipReason::NoBudget)
        );
        assert!(c.holds((0, 2)) && !c.holds((0, 0)) && !c.holds((0, 1)));
        assert_eq!(c.held_units(), 3);
        let st = c.stats();
        assert_eq!((st.staged, st.staged_read, st.reads, st.hits), (5, 1, 2, 1));
        assert_eq!((st.evicted, st.wasted, st.no_budget), (2, 1, 2));
        assert_eq!(st.precision, Some(0.2));
        assert_eq!(st.coverage, Some(0.5));
        assert_eq!(
            stage(&mut c, 12, 101 * MS),
            Plan::Skip(SkipReason::AlreadyStaged)
        );
    }

    #[test]
    fn a_failed_demotion_keeps_the_shard_held_and_the_budget_true() {
        let mut c = StagerCore::new(params(2), 0);
        stage(&mut c, 0, 0);
        stage(&mut c, 1, 0);
        c.tick(200 * MS); // both stale
        let Plan::Stage { evict } = c.plan((0, 5), 1, 200 * MS) else {
            panic!("stale shards are evictable");
        };
        assert_eq!(evict.len(), 1);
        assert!(c.fits(1));
        c.evict_failed(evict[0], true, 200 * MS);
        assert!(!c.fits(1), "the victim is still hot: no room");
        c.over_budget();
        assert!(c.holds(evict[0].key));
        assert_eq!(c.held_units(), 2);
        // A victim that left the hot tier anyway is simply forgotten.
        let Plan::Stage { evict } = c.plan((0, 6), 1, 201 * MS) else {
            panic!("still evictable");
        };
        c.evict_failed(evict[0], false, 201 * MS);
        assert!(c.fits(1));
        let st = c.stats();
        assert_eq!((st.evict_failed, st.no_budget, st.wasted), (2, 1, 2));
    }

    #[test]
    fn a_shard_held_again_after_a_failed_demotion_reads_without_underflow() {
        // Read, evicted (planned), the demotion fails: held again as stale,
        // never counted wasted; a later read must not take a waste back.
        let mut c = StagerCore::new(params(1), 0);
        stage(&mut c, 0, 0);
        assert!(c.on_read(0, 0, 1, MS));
        let Plan::Stage { evict } = c.plan((0, 9), 1, 2 * MS) else {
            panic!("a read shard is evictable");
        };
        c.evict_failed(evict[0], true, 2 * MS);
        assert!(c.on_read(0, 0, 1, 3 * MS));
        let st = c.stats();
        assert_eq!(
            (st.wasted, st.staged_read, st.evict_failed),
            (0, 1, 1),
            "{st:?}"
        );
        // Read shards do not age into waste.
        c.tick(10_000 * MS);
        assert!(c.on_read(0, 0, 1, 10_001 * MS));
        assert_eq!(c.stats().wasted, 0);
    }

    #[test]
    fn a_read_before_the_switch_is_not_a_hit() {
        let mut c = StagerCore::new(params(8), 0);
        stage(&mut c, 4, 50 * MS);
        assert!(!c.on_read(0, 3, 2, 49 * MS));
        assert!(
            c.on_read(0, 3, 2, 50 * MS),
            "a request spanning shards 3..=4"
        );
        assert!(
            c.on_read(0, 4, 1, 60 * MS),
            "every later read counts for coverage"
        );
        let st = c.stats();
        assert_eq!((st.reads, st.hits, st.staged_read), (3, 2, 1));
    }

    #[test]
    fn rate_limit_refuses_beyond_the_burst_and_refills() {
        let mut c = StagerCore::new(params(1000), 0);
        let staged = (0..20).filter(|&s| matches!(stage(&mut c, s, 0), Plan::Stage { .. }));
        assert_eq!(staged.count(), 8, "burst");
        // 64/s: one more token every 15.6 ms.
        assert!(matches!(
            stage(&mut c, 100, 10 * MS),
            Plan::Skip(SkipReason::Throttled)
        ));
        assert!(matches!(stage(&mut c, 100, 16 * MS), Plan::Stage { .. }));
        assert_eq!(c.stats().throttled, 13);
    }

    /// Seeded simulation: a predictor that is right with probability `q`
    /// feeds the stager; reads come for the shards it was right about. Bad
    /// predictions halve the rate to the floor; good ones bring it back up;
    /// the budget always holds, and every counter adds up.
    fn simulate(seed: u64, q_of_phase: [f64; 3]) -> Vec<(u32, f32)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut c = StagerCore::new(params(16), 0);
        let mut pending_reads: Vec<(u64, u64)> = Vec::new(); // (time, shard)
        let mut now = 0u64;
        let mut next = 0u64;
        let mut trace = Vec::new();
        for q in q_of_phase {
            let phase_end = now + 20 * S;
            while now < phase_end {
                now += rng.random_range(1..5) * MS;
                let shard = next;
                next += 1;
                if let Plan::Stage { evict } = c.plan((0, shard), 1, now) {
                    for _ in evict {
                        c.evicted();
                    }
                    c.staged((0, shard), 1, 1, now);
                    if rng.random_bool(q) {
                        pending_reads.push((now + rng.random_range(1..50) * MS, shard));
                    }
                }
                pending_reads.sort_unstable();
                while pending_reads.first().is_some_and(|r| r.0 <= now) {
                    let (t, s) = pending_reads.remove(0);
                    c.on_read(0, s, 1, t);
                }
                c.tick(now);
                assert!(
                    c.held_units() <= 16,
                    "seed {seed}: budget exceeded: {}",
                    c.held_units()
                );
            }
            trace.push((c.rate(), c.stats().precision.unwrap_or(0.0)));
        }
        let st = c.stats();
        assert!(
            st.staged_read + st.wasted <= st.staged,
            "seed {seed}: {st:?}"
        );
        assert_eq!(st.resident_shards, c.held_units(), "seed {seed}");
        trace
    }

    #[test]
    fn throttle_halves_on_poor_precision_and_recovers() {
        for seed in 0..8 {
            let t = simulate(seed, [0.95, 0.02, 0.95]);
            assert_eq!(
                t[0].0, 64,
                "seed {seed}: good phase keeps the full rate: {t:?}"
            );
            assert_eq!(
                t[1].0, 2,
                "seed {seed}: poor phase throttles to the floor: {t:?}"
            );
            assert_eq!(
                t[2].0, 64,
                "seed {seed}: good again: back to full rate: {t:?}"
            );
        }
    }
}
