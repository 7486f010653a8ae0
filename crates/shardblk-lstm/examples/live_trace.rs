//! What the live LSTM and Markov predictors do on a trace, step by step, as
//! the device's model thread would feed them: the first `N` events of a
//! trace (CSV, gzip allowed), offsets folded into a volume of `VOL` bytes
//! (as `trace convert --fio-wrap` does for the VM replay), shard events of
//! 1 MiB shards, steps of `B` events (the live minimum is 64, the maximum
//! 256), the stage capacity of the replay's stager budget (64 shards), and
//! the LSTM's background training after each step (20 ms budget).
//!
//! Per LSTM step: predictions at or above the confidence threshold, whether
//! it is `promising` (what the live pacer uses), the precision gate's
//! figures (predictor-wide precision estimate, tracked candidates resolved,
//! withheld). At the end, for both predictors: predictions emitted, how many
//! named a shard not among the last 64 distinct shards read (the rest would
//! be found already hot with demand caching), and how many of those were
//! read within the next 64 shard changes (useful), against the trace's own
//! shard transitions (what there is to predict at all).
//!
//! `cargo run --release -p shardblk-lstm --example live_trace -- TRACE [N] [B] [VOL]`
//! (`SHARDBLK_LIVE_TRACE_NO_ONLINE=1`: no online training, as `add --lstm-no-online`)
use shardblk::prefetch::lstm::LstmOptions;
use shardblk::prefetch::{Prediction, Predictor, PredictorKind, PrefetchConfig, ShardEvent};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const SHARD: u64 = 1 << 20;
const RESIDENT: usize = 64;

fn main() {
    shardblk_lstm::register();
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: live_trace TRACE [N] [B] [VOL]");
    let n: usize = args.get(2).map_or(2000, |s| s.parse().unwrap());
    let b: usize = args.get(3).map_or(64, |s| s.parse().unwrap());
    let vol: u64 = args.get(4).map_or(256 << 20, |s| s.parse().unwrap());
    let f = std::io::BufReader::new(std::fs::File::open(path).expect("open trace"));
    let r = shardblk::trace::csv::maybe_gunzip(f).expect("gunzip");
    let events = shardblk::trace::csv::read_csv(r).expect("trace");
    let cfg = PrefetchConfig {
        shard_bytes: SHARD,
        stage_capacity_shards: RESIDENT as u64,
        region_shift: 30,
        ..Default::default()
    };
    let evs: Vec<ShardEvent> = events
        .iter()
        .take(n)
        .map(|e| {
            let mut e = *e;
            e.offset = (e.offset % vol) / 4096 * 4096;
            e.len = e.len.min(vol - e.offset);
            cfg.shard_event(0, &e)
        })
        .collect();
    let reads = evs
        .iter()
        .filter(|e| e.op == shardblk::trace::Op::Read)
        .count();
    let mut distinct: Vec<u64> = evs.iter().map(|e| e.shard).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let transitions = evs.windows(2).filter(|w| w[0].shard != w[1].shard).count();
    println!(
        "{} events ({reads} reads), {} distinct shards, {transitions} shard changes",
        evs.len(),
        distinct.len()
    );
    // `SHARDBLK_LIVE_TRACE_NO_ONLINE=1`: as `add --lstm-no-online`.
    let opts = LstmOptions {
        online: std::env::var_os("SHARDBLK_LIVE_TRACE_NO_ONLINE").is_none(),
        ..Default::default()
    };
    let mut lstm = shardblk_lstm::LstmPredictor::new(&cfg, &opts).expect("lstm");
    let mut markov = PredictorKind::Markov.build(&cfg).expect("markov");
    let mut tally = [Tally::default(), Tally::default()];
    let mut out: Vec<Prediction> = Vec::new();
    let mut fed = 0usize;
    for (k, batch) in evs.chunks(b).enumerate() {
        let at = fed + batch.len();
        out.clear();
        let t = Instant::now();
        lstm.step(batch, &mut out);
        let s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = lstm.background(Duration::from_millis(20));
        let tr = t.elapsed().as_secs_f64();
        let emitted = above(&out, &cfg);
        tally[0].judge(&evs, at, &emitted);
        let (prec, resolved, gated) = lstm.gate_figures();
        println!(
            "step {k:3} ({at:5} events fed) {s:6.3} s  train {tr:6.3} s  emitted {:2}  promising {:5}  gate precision {prec:.2} resolved {resolved:3} withheld {gated}",
            emitted.len(),
            lstm.promising(),
        );
        out.clear();
        markov.step(batch, &mut out);
        let emitted = above(&out, &cfg);
        tally[1].judge(&evs, at, &emitted);
        fed = at;
    }
    for (name, t) in ["lstm", "markov"].iter().zip(&tally) {
        println!(
            "{name:6}: emitted {:4}, not resident {:4}, of those read within {RESIDENT} shard changes {:4}",
            t.emitted, t.not_resident, t.useful
        );
    }
}

fn above(out: &[Prediction], cfg: &PrefetchConfig) -> Vec<u64> {
    out.iter()
        .filter(|q| q.confidence >= cfg.confidence_min)
        .map(|q| q.shard)
        .collect()
}

#[derive(Default)]
struct Tally {
    emitted: u64,
    not_resident: u64,
    useful: u64,
}

impl Tally {
    /// Judge predictions made after `evs[..at]`.
    fn judge(&mut self, evs: &[ShardEvent], at: usize, shards: &[u64]) {
        // the last RESIDENT distinct shards read so far
        let mut resident: VecDeque<u64> = VecDeque::new();
        for e in evs[..at].iter().rev() {
            if !resident.contains(&e.shard) {
                resident.push_back(e.shard);
                if resident.len() == RESIDENT {
                    break;
                }
            }
        }
        // the next RESIDENT shard changes
        let mut next: Vec<u64> = Vec::new();
        let mut last = evs[..at].last().map(|e| e.shard);
        for e in &evs[at..] {
            if Some(e.shard) != last {
                next.push(e.shard);
                last = Some(e.shard);
                if next.len() == RESIDENT {
                    break;
                }
            }
        }
        for s in shards {
            self.emitted += 1;
            if resident.contains(s) {
                continue;
            }
            self.not_resident += 1;
            if next.contains(s) {
                self.useful += 1;
            }
        }
    }
}
