//! Diagnostics of the LSTM on one trace: the simulator's figures, what each
//! stream scope emitted and how much of it was read in time, how much of
//! what came out named shards the hot tier probably held already (read or
//! predicted within the last `hot` distinct shards), and the delta
//! vocabulary's coverage of the region streams' deltas.
//!
//! Run: `cargo run --release -p shardblk-lstm --example lstm_diag -- TRACE SHARD_BYTES`
//! (`TRACE`: a synthetic kind, seed `SYNTH_BENCH_SEED` as in the bench, or a trace file);
//! `SHARDBLK_BENCH_LSTM_STREAMS`, `SHARDBLK_BENCH_LSTM_GATE` as in the bench,
//! `SHARDBLK_DIAG_LOOKAHEAD=N` the lookahead.

use shardblk::cli::trace::read_trace_or_synth;
use shardblk::prefetch::lstm::LstmOptions;
use shardblk::prefetch::sim::{simulate, SimConfig};
use shardblk::prefetch::stream::LruMap;
use shardblk::prefetch::{
    Prediction, Predictor, PredictorFigures, PrefetchConfig, ShardEvent, StreamKey,
};
use shardblk::trace::{Op, TraceEvent};
use shardblk_lstm::LstmPredictor;
use std::collections::HashMap;
use std::time::Duration;

/// The LSTM with a model of the hot tier's contents (demand reads and
/// emitted predictions, least recently used out).
struct Recorder {
    inner: LstmPredictor,
    cfg: PrefetchConfig,
    hot: LruMap<u64, ()>,
    emitted: u64,
    resident: u64,
    /// Region streams' deltas seen, and those the vocabulary held.
    last: HashMap<StreamKey, u64>,
    deltas: u64,
    in_vocab: u64,
    /// Shard -> event index when last emitted.
    predicted: HashMap<u64, u64>,
    /// Per region stream: events, last delta.
    region: HashMap<StreamKey, (u64, i64)>,
    clock: u64,
    /// Reads not predicted within the last `hot` events, by kind: the
    /// region stream's 1st, 2nd, 3rd event, a delta equal to the previous
    /// one, another delta.
    unpredicted: [u64; 5],
    reads: u64,
    hot_cap: u64,
    /// Unpredicted same-delta reads by (delta, in vocabulary, quarter of the trace).
    by_delta: std::collections::BTreeMap<(i64, bool, u64), u64>,
}

impl Predictor for Recorder {
    fn name(&self) -> &'static str {
        "lstm"
    }
    fn step(&mut self, batch: &[ShardEvent], out: &mut Vec<Prediction>) {
        let from = out.len();
        self.inner.step(batch, out);
        for p in &out[from..] {
            self.emitted += 1;
            if self.hot.contains(&p.shard) {
                self.resident += 1;
            }
            self.hot.insert(p.shard, ());
            self.predicted.insert(p.shard, self.clock);
        }
        for ev in batch.iter().filter(|e| e.op == Op::Read) {
            self.clock += 1;
            self.reads += 1;
            let key = self.cfg.stream_of(ev);
            let (n, last_d) = self.region.get(&key).copied().unwrap_or((0, 0));
            let d = self
                .last
                .get(&key)
                .map_or(0, |&prev| ev.shard as i64 - prev as i64);
            if d != 0 || n == 0 {
                self.region.insert(key, (n + 1, d));
            }
            let hot = self.hot_cap;
            let seen = self
                .predicted
                .get(&ev.shard)
                .is_some_and(|&at| at + hot >= self.clock);
            if !seen && !self.hot.contains(&ev.shard) {
                let kind = match n {
                    0 => 0,
                    1 => 1,
                    2 => 2,
                    _ if d == last_d => 3,
                    _ => 4,
                };
                self.unpredicted[kind] += 1;
                if kind == 3 {
                    let v = self.inner.vocab().class_of(d) != 0;
                    *self
                        .by_delta
                        .entry((d, v, self.clock * 4 / 20_001))
                        .or_default() += 1;
                }
            }
            if let Some(prev) = self.last.insert(key, ev.shard) {
                if prev != ev.shard {
                    self.deltas += 1;
                    let d = ev.shard as i64 - prev as i64;
                    if self.inner.vocab().class_of(d) != 0 {
                        self.in_vocab += 1;
                    }
                }
            }
            for s in ev.shard..=ev.last_shard() {
                self.hot.insert(s, ());
            }
        }
    }
    fn background(&mut self, budget: Duration) -> bool {
        self.inner.background(budget)
    }
    fn figures(&self) -> PredictorFigures {
        self.inner.figures()
    }
}

fn main() {
    shardblk_lstm::register();
    let args: Vec<String> = std::env::args().collect();
    let trace = args.get(1).expect("TRACE");
    let shard_bytes: u64 = args
        .get(2)
        .map_or(1 << 16, |s| s.parse().expect("SHARD_BYTES"));
    let events: Vec<TraceEvent> = read_trace_or_synth(trace).expect("trace");
    let cfg = SimConfig::for_bench(&events, shard_bytes);
    let pc = cfg.predictor_config();
    let mut opts = LstmOptions::default();
    if let Some(g) = std::env::var("SHARDBLK_BENCH_LSTM_GATE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.precision_gate = g;
    }
    if let Ok(v) = std::env::var("SHARDBLK_BENCH_LSTM_STREAMS") {
        opts.streams = v.parse().expect("streams");
    }
    if let Some(l) = std::env::var("SHARDBLK_DIAG_LOOKAHEAD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.lookahead = l;
    }
    let mut rec = Recorder {
        inner: LstmPredictor::new(&pc, &opts).expect("lstm"),
        cfg: pc,
        hot: LruMap::new(cfg.hot_shards as usize),
        emitted: 0,
        resident: 0,
        last: HashMap::new(),
        deltas: 0,
        in_vocab: 0,
        predicted: HashMap::new(),
        region: HashMap::new(),
        clock: 0,
        unpredicted: [0; 5],
        reads: 0,
        hot_cap: cfg.hot_shards,
        by_delta: Default::default(),
    };
    let s = simulate(&events, &cfg, &mut rec).expect("simulate");
    println!(
        "{trace} {shard_bytes} hot {}: hit {:.1} % prec {:.1} % cover {:.1} % timely {:.1} % staged {} dropped {}",
        cfg.hot_shards,
        100.0 * s.hit_ratio,
        100.0 * s.precision,
        100.0 * s.coverage,
        100.0 * s.timeliness,
        s.staged,
        s.dropped
    );
    println!(
        "emitted {} ({:.1} % named a shard read or predicted within the last {} distinct)",
        rec.emitted,
        100.0 * rec.resident as f64 / rec.emitted.max(1) as f64,
        cfg.hot_shards
    );
    println!(
        "region deltas {} in vocabulary {:.1} %",
        rec.deltas,
        100.0 * rec.in_vocab as f64 / rec.deltas.max(1) as f64
    );
    println!(
        "reads {} not predicted and not recently read: region's 1st {} 2nd {} 3rd {} same delta {} other delta {}",
        rec.reads,
        rec.unpredicted[0],
        rec.unpredicted[1],
        rec.unpredicted[2],
        rec.unpredicted[3],
        rec.unpredicted[4]
    );
    println!(
        "unpredicted same-delta reads by (delta, in vocabulary, quarter): {:?}",
        rec.by_delta
    );
    let (p, resolved, gated) = rec.inner.gate_figures();
    println!("gate: estimate {p:.3} resolved {resolved} gated {gated}");
    for (name, f) in ["region", "volume"].iter().zip(rec.inner.scope_figures()) {
        println!(
            "{name}: emitted {} read in time {:.1} % ({} resolved), counted read in time {:.1} % ({} resolved), deferred {}, gated {}, by source {:?}, by step {:?}, by run {:?}",
            f.emitted,
            100.0 * f.emitted_correct as f64 / f.emitted_resolved.max(1) as f64,
            f.emitted_resolved,
            100.0 * f.counted_correct as f64 / f.counted_resolved.max(1) as f64,
            f.counted_resolved,
            f.deferred,
            f.gated,
            f.by_source,
            f.by_step,
            f.by_run
        );
    }
    println!("{:?}", rec.inner.figures());
}
