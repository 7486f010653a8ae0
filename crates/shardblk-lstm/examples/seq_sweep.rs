//! What a sequential policy can reach on one trace at a given precision:
//! the bench's simulator (same hot tier, latencies, shard size) replays the
//! trace through a family of run-gated sequential prefetchers and prints
//! hit ratio and precision for each, then the best hit ratio among those at
//! precision 0.5 or more. It answers "could any predictor that stages the
//! continuations of sequential runs (what readahead wins with) meet the
//! precision target and the hit target at once on this trace?".
//!
//! Policy `(k, n)`: per address-region stream, up to
//! `PREFETCH_TRACKERS_PER_STREAM` runs (least recently used replaced). A
//! read continues a run when it starts between the run's last shard and one
//! past the furthest shard staged for it; after a run's `k`-th consecutive
//! continuing read it keeps the `n` shards after the read staged (each
//! shard predicted once). `k = 0` stages after every read (a run of one).
//! Only reads are observed. The readahead baseline is printed alongside.
//!
//! Run: `cargo run --release -p shardblk-lstm --example seq_sweep -- TRACE SHARD_BYTES`
//! (`TRACE`: a synthetic kind, seed `SYNTH_BENCH_SEED` as in the bench, or a trace file).

use shardblk::cli::trace::read_trace_or_synth;
use shardblk::constants::PREFETCH_TRACKERS_PER_STREAM;
use shardblk::prefetch::readahead::Readahead;
use shardblk::prefetch::sim::{simulate, SimConfig};
use shardblk::prefetch::stream::LruMap;
use shardblk::prefetch::{Prediction, Predictor, PrefetchConfig, ShardEvent, StreamKey};
use shardblk::trace::{Op, TraceEvent};

#[derive(Debug, Clone, Copy)]
struct Run {
    last: u64,
    horizon: u64,
    run: u32,
}

/// The run-gated sequential policy `(k, n)`.
struct RunGated {
    cfg: PrefetchConfig,
    k: u32,
    n: u64,
    streams: LruMap<StreamKey, Vec<Run>>,
}

impl Predictor for RunGated {
    fn name(&self) -> &'static str {
        "run-gated"
    }

    fn step(&mut self, batch: &[ShardEvent], out: &mut Vec<Prediction>) {
        for ev in batch.iter().filter(|e| e.op == Op::Read) {
            let key = self.cfg.stream_of(ev);
            let runs = self.streams.get_or_insert_with(&key, Vec::new);
            let found = runs
                .iter()
                .position(|r| ev.shard >= r.last && ev.shard <= r.horizon.max(r.last) + 1);
            let mut r = match found {
                Some(i) => {
                    let mut r = runs.remove(i);
                    r.run += 1;
                    r
                }
                None => {
                    if runs.len() >= PREFETCH_TRACKERS_PER_STREAM {
                        runs.remove(0);
                    }
                    Run {
                        last: ev.shard,
                        horizon: ev.last_shard(),
                        run: 0,
                    }
                }
            };
            r.last = ev.last_shard();
            r.horizon = r.horizon.max(r.last);
            if r.run >= self.k {
                let end = r.last + self.n;
                for shard in r.horizon + 1..=end {
                    out.push(Prediction {
                        volume: ev.volume,
                        shard,
                        confidence: 1.0,
                    });
                }
                r.horizon = r.horizon.max(end);
            }
            runs.push(r);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trace = args.get(1).expect("TRACE");
    let shard_bytes: u64 = args
        .get(2)
        .map_or(1 << 16, |s| s.parse().expect("SHARD_BYTES"));
    let events: Vec<TraceEvent> = read_trace_or_synth(trace).expect("trace");
    let cfg = SimConfig::for_bench(&events, shard_bytes);
    let show = |name: &str, p: &mut dyn Predictor| {
        let s = simulate(&events, &cfg, p).expect("simulate");
        println!(
            "{name:>14}  hit {:5.1} %  prec {:5.1} %  cover {:5.1} %  staged {:6}  dropped {}",
            100.0 * s.hit_ratio,
            100.0 * s.precision,
            100.0 * s.coverage,
            s.staged,
            s.dropped
        );
        s
    };
    println!("{trace} {shard_bytes} hot {}", cfg.hot_shards);
    let none = show("none", &mut shardblk::prefetch::NonePredictor);
    show("readahead", &mut Readahead::new(&cfg.prefetch));
    let mut best: Option<(f64, f64, u32, u64)> = None;
    for k in [0u32, 1, 2, 3, 4, 6, 8, 12, 16] {
        for n in [1u64, 2, 4, 8, 16, 32] {
            let mut p = RunGated {
                cfg: cfg.prefetch,
                k,
                n,
                streams: LruMap::new(cfg.prefetch.streams_max),
            };
            let s = show(&format!("k={k} n={n}"), &mut p);
            if s.precision >= 0.5 && best.is_none_or(|b| s.hit_ratio > b.0) {
                best = Some((s.hit_ratio, s.precision, k, n));
            }
        }
    }
    match best {
        Some((hit, prec, k, n)) => println!(
            "best at precision >= 0.5: k={k} n={n} hit {:.1} % prec {:.1} % (none: {:.1} %)",
            100.0 * hit,
            100.0 * prec,
            100.0 * none.hit_ratio
        ),
        None => println!("no policy reached precision 0.5"),
    }
}
