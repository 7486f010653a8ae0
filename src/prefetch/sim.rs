//! Offline tier simulator: replays a trace against a hot tier of bounded
//! capacity fed by a predictor, and measures what prefetching bought.
//!
//! Model (all time from the trace timestamps, no wall clock):
//! - The hot tier holds `hot_shards` shards, evicted least recently used
//!   whatever brought them in (a demand read or a staging). A shard is read
//!   in `hot_access_ns + bytes / hot_bandwidth`; a shard not in the hot tier
//!   in `cold_access_ns + bytes / cold_bandwidth`. A request touching several
//!   shards completes with its slowest segment (segments run in parallel).
//! - Demand caching (`demand_cache`): a shard read from the cold tier is then
//!   resident (promotion is assumed free: it does not use the staging channel).
//! - Reads are observed by the predictor in batches of `batch_events` events
//!   (1: after every event); its predictions at or above the confidence
//!   threshold that are not already hot are staged, in order, on one staging
//!   channel: a shard takes `shard_bytes / stage_bandwidth`, plus
//!   `cold_access_ns` unless it directly follows the previously staged shard
//!   (a sequential cold read). A staged shard enters the hot tier when issued
//!   (it takes a slot) and is *ready* when its copy completes. While
//!   `stage_queue_max` stagings are pending, further predictions are dropped.
//! - A read of a staged shard before its first use is *useful*: *timely* if
//!   the copy was ready (a hit), *late* otherwise (the read waits for the
//!   copy, or reads the cold tier if that is faster).
//! - After each predictor step the predictor gets `background_budget_ns`
//!   of background time ([`Predictor::background`]: the LSTM trains online
//!   there); simulated time does not advance for it.
//! - Writes, discards and flushes are observed by the predictor but do not
//!   change the hot tier nor count in the read metrics.
//!
//! Metrics: hit ratio = shard reads served hot without waiting / shard
//! reads; precision = useful / staged; coverage = useful / (useful + demand
//! misses) (the misses there would have been without the useful stagings);
//! timeliness = timely / useful; mean and p99 request latency over reads.

use super::stream::LruMap;
use super::{Prediction, Predictor, PrefetchConfig, PrefetchError};
use crate::constants::{
    BENCH_HOT_TIER_WORKING_SET_PERCENT, SIM_BACKGROUND_BUDGET_DEFAULT_NS,
    SIM_COLD_ACCESS_DEFAULT_NS, SIM_COLD_BANDWIDTH_DEFAULT_BYTES_PER_S, SIM_HOT_ACCESS_DEFAULT_NS,
    SIM_HOT_BANDWIDTH_DEFAULT_BYTES_PER_S, SIM_HOT_SHARDS_DEFAULT, SIM_LATENCY_MAX_NS,
    SIM_STAGE_BANDWIDTH_DEFAULT_BYTES_PER_S, SIM_STAGE_QUEUE_MAX_SHARDS,
};
use crate::trace::{Op, TraceEvent};
use hdrhistogram::Histogram;
use std::collections::VecDeque;

/// Simulator parameters (units in the names).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SimConfig {
    pub prefetch: PrefetchConfig,
    /// Hot tier capacity in shards.
    pub hot_shards: u64,
    pub hot_access_ns: u64,
    pub hot_bandwidth_bytes_per_s: u64,
    pub cold_access_ns: u64,
    pub cold_bandwidth_bytes_per_s: u64,
    pub stage_bandwidth_bytes_per_s: u64,
    /// Pending stagings beyond which predictions are dropped.
    pub stage_queue_max: usize,
    /// Keep shards read from the cold tier in the hot tier.
    pub demand_cache: bool,
    /// Events per predictor step.
    pub batch_events: usize,
    /// Background budget granted after each step (0: none).
    pub background_budget_ns: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            prefetch: PrefetchConfig::default(),
            hot_shards: SIM_HOT_SHARDS_DEFAULT,
            hot_access_ns: SIM_HOT_ACCESS_DEFAULT_NS,
            hot_bandwidth_bytes_per_s: SIM_HOT_BANDWIDTH_DEFAULT_BYTES_PER_S,
            cold_access_ns: SIM_COLD_ACCESS_DEFAULT_NS,
            cold_bandwidth_bytes_per_s: SIM_COLD_BANDWIDTH_DEFAULT_BYTES_PER_S,
            stage_bandwidth_bytes_per_s: SIM_STAGE_BANDWIDTH_DEFAULT_BYTES_PER_S,
            stage_queue_max: SIM_STAGE_QUEUE_MAX_SHARDS,
            demand_cache: true,
            batch_events: 1,
            background_budget_ns: SIM_BACKGROUND_BUDGET_DEFAULT_NS,
        }
    }
}

impl SimConfig {
    /// The trace benchmark's setup for `trace` at `shard_bytes`: default
    /// latencies and bandwidths, a hot tier of
    /// `BENCH_HOT_TIER_WORKING_SET_PERCENT` % of the trace's read working set.
    pub fn for_bench(trace: &[TraceEvent], shard_bytes: u64) -> SimConfig {
        let prefetch = PrefetchConfig {
            shard_bytes,
            ..Default::default()
        };
        SimConfig {
            prefetch,
            hot_shards: hot_shards_for_working_set(
                read_working_set_shards(trace, &prefetch),
                BENCH_HOT_TIER_WORKING_SET_PERCENT,
            ),
            ..Default::default()
        }
    }

    /// The predictors' configuration: they know how many staged shards the
    /// hot tier holds.
    pub fn predictor_config(&self) -> PrefetchConfig {
        PrefetchConfig {
            stage_capacity_shards: self.hot_shards,
            ..self.prefetch
        }
    }

    pub fn validate(&self) -> Result<(), PrefetchError> {
        self.prefetch.validate()?;
        let bad = |s: &str| Err(PrefetchError::Config(s.to_string()));
        if self.hot_shards == 0 {
            return bad("hot tier capacity must be at least one shard");
        }
        if self.hot_bandwidth_bytes_per_s == 0
            || self.cold_bandwidth_bytes_per_s == 0
            || self.stage_bandwidth_bytes_per_s == 0
        {
            return bad("bandwidths must be positive");
        }
        if self.batch_events == 0 {
            return bad("batch_events must be positive");
        }
        Ok(())
    }
}

/// Counters and derived metrics of one simulation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SimStats {
    /// Read requests.
    pub reads: u64,
    /// Shard segments of read requests.
    pub shard_reads: u64,
    /// Shard reads served from the hot tier without waiting.
    pub hits: u64,
    /// Shard reads of shards not in the hot tier.
    pub misses: u64,
    /// Predictions emitted by the predictor (before the threshold).
    pub predicted: u64,
    /// Stagings issued.
    pub staged: u64,
    /// Predictions dropped because the staging queue was full.
    pub dropped: u64,
    /// Staged shards read before eviction.
    pub useful: u64,
    /// Useful stagings that were ready when first read.
    pub timely: u64,
    /// Staged shards evicted without being read.
    pub wasted: u64,
    pub hit_ratio: f64,
    pub precision: f64,
    pub coverage: f64,
    pub timeliness: f64,
    pub mean_latency_ns: f64,
    pub p99_latency_ns: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// Resident after a demand read (or a staged shard after its first use).
    Demand,
    /// Staged, not yet read; ready at this time.
    Staged { ready_ns: u64 },
}

/// Cost in ns of moving `bytes` at `bw` bytes/s.
fn transfer_ns(bytes: u64, bw: u64) -> u64 {
    ((u128::from(bytes) * 1_000_000_000) / u128::from(bw)).min(u128::from(u64::MAX)) as u64
}

/// Run `predictor` (fresh) over `trace` on volume 0.
pub fn simulate(
    trace: &[TraceEvent],
    cfg: &SimConfig,
    predictor: &mut dyn Predictor,
) -> Result<SimStats, PrefetchError> {
    cfg.validate()?;
    let pc = &cfg.prefetch;
    let shard_bytes = pc.shard_bytes;
    let cap = usize::try_from(cfg.hot_shards).unwrap_or(usize::MAX);
    let mut hot: LruMap<u64, Slot> = LruMap::new(cap);
    let mut hist = Histogram::<u64>::new_with_bounds(1, SIM_LATENCY_MAX_NS, 3)
        .map_err(|e| PrefetchError::Config(format!("histogram: {e}")))?;
    let mut st = SimStats::default();
    let mut pending: VecDeque<u64> = VecDeque::new(); // ready times, non-decreasing
    let mut busy_until = 0u64;
    let mut last_staged: Option<u64> = None;
    let mut batch = Vec::with_capacity(cfg.batch_events);
    let mut preds: Vec<Prediction> = Vec::new();
    let hot_ns = |bytes| cfg.hot_access_ns + transfer_ns(bytes, cfg.hot_bandwidth_bytes_per_s);
    let cold_ns = |bytes| cfg.cold_access_ns + transfer_ns(bytes, cfg.cold_bandwidth_bytes_per_s);
    let stage_ns = transfer_ns(shard_bytes, cfg.stage_bandwidth_bytes_per_s);

    for ev in trace {
        let now = ev.ts_ns;
        if ev.op == Op::Read && ev.len > 0 {
            st.reads += 1;
            let sev = pc.shard_event(0, ev);
            let mut lat = 0u64;
            for shard in sev.shard..=sev.last_shard() {
                st.shard_reads += 1;
                let seg_start = (shard * shard_bytes).max(ev.offset);
                let seg_end = ((shard + 1) * shard_bytes).min(ev.offset + ev.len);
                let bytes = seg_end - seg_start;
                // A resident shard (staged or not) is Demand after this read.
                let seg = match hot
                    .get_mut(&shard)
                    .map(|s| std::mem::replace(s, Slot::Demand))
                {
                    Some(Slot::Demand) => {
                        st.hits += 1;
                        hot_ns(bytes)
                    }
                    Some(Slot::Staged { ready_ns }) => {
                        st.useful += 1;
                        if ready_ns <= now {
                            st.timely += 1;
                            st.hits += 1;
                            hot_ns(bytes)
                        } else {
                            (ready_ns - now + hot_ns(bytes)).min(cold_ns(bytes))
                        }
                    }
                    None => {
                        st.misses += 1;
                        if cfg.demand_cache {
                            if let Some((_, Slot::Staged { .. })) = hot.insert(shard, Slot::Demand)
                            {
                                st.wasted += 1;
                            }
                        }
                        cold_ns(bytes)
                    }
                };
                lat = lat.max(seg);
            }
            hist.saturating_record(lat.max(1));
        }
        batch.push(pc.shard_event(0, ev));
        if batch.len() < cfg.batch_events {
            continue;
        }
        preds.clear();
        predictor.step(&batch, &mut preds);
        batch.clear();
        if cfg.background_budget_ns > 0 {
            predictor.background(std::time::Duration::from_nanos(cfg.background_budget_ns));
        }
        st.predicted += preds.len() as u64;
        while pending.front().is_some_and(|&r| r <= now) {
            pending.pop_front();
        }
        for p in &preds {
            if p.confidence < pc.confidence_min || hot.contains(&p.shard) {
                continue;
            }
            if pending.len() >= cfg.stage_queue_max {
                st.dropped += 1;
                continue;
            }
            let seek = if last_staged.is_some_and(|l| l + 1 == p.shard) {
                0
            } else {
                cfg.cold_access_ns
            };
            let ready_ns = busy_until.max(now) + seek + stage_ns;
            busy_until = ready_ns;
            last_staged = Some(p.shard);
            pending.push_back(ready_ns);
            st.staged += 1;
            if let Some((_, Slot::Staged { .. })) = hot.insert(p.shard, Slot::Staged { ready_ns }) {
                st.wasted += 1;
            }
        }
    }
    st.hit_ratio = ratio(st.hits, st.shard_reads);
    st.precision = ratio(st.useful, st.staged);
    st.coverage = ratio(st.useful, st.useful + st.misses);
    st.timeliness = ratio(st.timely, st.useful);
    st.mean_latency_ns = if hist.is_empty() { 0.0 } else { hist.mean() };
    st.p99_latency_ns = if hist.is_empty() {
        0
    } else {
        hist.value_at_quantile(0.99)
    };
    Ok(st)
}

/// Distinct shards read by `trace` at `pc`'s shard size (the read working set).
pub fn read_working_set_shards(trace: &[TraceEvent], pc: &PrefetchConfig) -> u64 {
    let mut seen = std::collections::HashSet::new();
    for ev in trace.iter().filter(|e| e.op == Op::Read && e.len > 0) {
        let sev = pc.shard_event(0, ev);
        seen.extend(sev.shard..=sev.last_shard());
    }
    seen.len() as u64
}

/// A hot tier of `percent` % of `working_set_shards` (rounded up, at least one shard).
pub fn hot_shards_for_working_set(working_set_shards: u64, percent: u64) -> u64 {
    (working_set_shards.saturating_mul(percent).div_ceil(100)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::{NonePredictor, ShardEvent};

    const SHARD: u64 = 1 << 16;

    /// Emits a fixed list of predictions at each step (step i = event i).
    struct Script {
        steps: Vec<Vec<(u64, f32)>>,
        at: usize,
    }

    impl Predictor for Script {
        fn name(&self) -> &'static str {
            "script"
        }
        fn step(&mut self, _batch: &[ShardEvent], out: &mut Vec<Prediction>) {
            if let Some(s) = self.steps.get(self.at) {
                out.extend(s.iter().map(|&(shard, confidence)| Prediction {
                    volume: 0,
                    shard,
                    confidence,
                }));
            }
            self.at += 1;
        }
    }

    #[test]
    fn working_set_counts_distinct_read_shards_and_sizes_the_tier() {
        let pc = PrefetchConfig {
            shard_bytes: SHARD,
            ..Default::default()
        };
        let ev = |op, offset, len| TraceEvent {
            ts_ns: 0,
            op,
            offset,
            len,
        };
        let trace = [
            ev(Op::Read, 0, 4096),
            ev(Op::Read, 100, 4096),            // same shard 0
            ev(Op::Read, SHARD - 10, 20),       // shards 0 and 1
            ev(Op::Write, 10 * SHARD, 4096),    // writes do not count
            ev(Op::Read, 5 * SHARD, 0),         // empty read does not count
            ev(Op::Read, 7 * SHARD, 3 * SHARD), // shards 7, 8, 9
        ];
        assert_eq!(read_working_set_shards(&trace, &pc), 5);
        assert_eq!(read_working_set_shards(&[], &pc), 0);
        assert_eq!(hot_shards_for_working_set(5, 10), 1);
        assert_eq!(hot_shards_for_working_set(0, 10), 1);
        assert_eq!(hot_shards_for_working_set(2000, 10), 200);
        assert_eq!(hot_shards_for_working_set(2001, 10), 201);
        assert_eq!(hot_shards_for_working_set(400, 25), 100);
    }

    fn cfg(hot_shards: u64, cold_access_ns: u64) -> SimConfig {
        SimConfig {
            prefetch: PrefetchConfig {
                shard_bytes: SHARD,
                ..Default::default()
            },
            hot_shards,
            hot_access_ns: 100,
            hot_bandwidth_bytes_per_s: 1_000_000_000,
            cold_access_ns,
            cold_bandwidth_bytes_per_s: 1_000_000_000,
            stage_bandwidth_bytes_per_s: 1_000_000_000,
            stage_queue_max: 8,
            demand_cache: true,
            batch_events: 1,
            background_budget_ns: 0,
        }
    }

    fn reads(v: &[(u64, u64)]) -> Vec<TraceEvent> {
        v.iter()
            .map(|&(ts_ns, shard)| TraceEvent {
                ts_ns,
                op: Op::Read,
                offset: shard * SHARD,
                len: 4096,
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 0.001
    }

    #[test]
    fn demand_cache_lru_without_prefetch() {
        let t = reads(&[(0, 0), (1000, 1), (2000, 0), (3000, 2), (4000, 1)]);
        let s = simulate(&t, &cfg(2, 10_000), &mut NonePredictor).unwrap();
        assert_eq!(
            (s.reads, s.shard_reads, s.hits, s.misses, s.staged),
            (5, 5, 1, 4, 0)
        );
        assert_eq!(s.hit_ratio, 0.2);
        // cold = 10_000 + 4096, hot = 100 + 4096
        assert!(
            close(s.mean_latency_ns, (4.0 * 14_096.0 + 4_196.0) / 5.0),
            "{}",
            s.mean_latency_ns
        );
        assert!(
            close(s.p99_latency_ns as f64, 14_096.0),
            "{}",
            s.p99_latency_ns
        );
        // Without demand caching nothing ever hits.
        let nc = SimConfig {
            demand_cache: false,
            ..cfg(2, 10_000)
        };
        assert_eq!(simulate(&t, &nc, &mut NonePredictor).unwrap().hits, 0);
    }

    #[test]
    fn timely_late_and_unused_stagings() {
        let t = reads(&[(0, 0), (100_000, 1), (300_000, 2), (400_000, 0)]);
        let mut p = Script {
            steps: vec![
                vec![(1, 1.0), (5, 0.2)],
                vec![(2, 0.9)],
                vec![(3, 0.5)],
                vec![(0, 1.0)],
            ],
            at: 0,
        };
        let s = simulate(&t, &cfg(4, 100_000), &mut p).unwrap();
        // Shard 1 staged at 0: seek 100 000 + 65 536 → ready 165 536; read at
        // 100 000 → late, waits 65 536 + hot 4 196 (cold would be 104 096).
        // Shard 2 follows shard 1: ready 165 536 + 65 536 = 231 072 < 300 000 → timely.
        // Shard 3 staged, never read. Shard 5 below threshold, shard 0 already hot.
        assert_eq!(
            (
                s.predicted,
                s.staged,
                s.useful,
                s.timely,
                s.hits,
                s.misses,
                s.wasted
            ),
            (5, 3, 2, 1, 2, 1, 0)
        );
        assert!(close(s.precision, 2.0 / 3.0) && close(s.coverage, 2.0 / 3.0));
        assert_eq!((s.timeliness, s.hit_ratio), (0.5, 0.5));
        let want = (104_096.0 + 69_732.0 + 4_196.0 + 4_196.0) / 4.0;
        assert!(
            close(s.mean_latency_ns, want),
            "{} vs {want}",
            s.mean_latency_ns
        );
    }

    #[test]
    fn eviction_waste_and_queue_drops() {
        let t = reads(&[(0, 0), (1000, 1), (2000, 2)]);
        let mut p = Script {
            steps: vec![vec![(7, 1.0), (9, 1.0)]],
            at: 0,
        };
        let c = SimConfig {
            stage_queue_max: 1,
            ..cfg(2, 10_000)
        };
        let s = simulate(&t, &c, &mut p).unwrap();
        // 7 staged, 9 dropped (queue of 1 busy); read 1 evicts 0, read 2 evicts 7 unread.
        assert_eq!(
            (s.staged, s.dropped, s.wasted, s.useful, s.misses),
            (1, 1, 1, 0, 3)
        );
        assert_eq!(s.precision, 0.0);
    }

    #[test]
    fn bad_config_is_an_error() {
        let t = reads(&[(0, 0)]);
        assert!(simulate(&t, &cfg(0, 1), &mut NonePredictor).is_err());
        let c = SimConfig {
            batch_events: 0,
            ..cfg(1, 1)
        };
        assert!(simulate(&t, &c, &mut NonePredictor).is_err());
    }
}
