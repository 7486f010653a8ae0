//! Every predictor (the LSTM starting from the shipped default model and
//! training online) on every real trace in `../shared/traces` and on the
//! synthetic set, at shard sizes 64 KiB and 1 MiB, with a hot tier of
//! `BENCH_HOT_TIER_WORKING_SET_PERCENT` % of each trace's read working set
//! (distinct shards read at that shard size), default simulator latencies.
//! A LIRS block-reference trace is converted with one block per shard (block
//! size = shard size), as its SOURCES.md suggests for shard-level study.
//! Prints one table (the winner of each group, lowest mean read latency,
//! marked `*`), then the targets checked per row with PASS/FAIL:
//! the LSTM's hit ratio is never more than 2 points below the best
//! baseline; at least 10 points above it on traces with repeated
//! non-sequential patterns (`synth-repeated`, `synth-boot`); its precision is at least
//! 0.5 where it staged anything. On those traces a supplementary row,
//! `markov-vol`, runs the Markov baseline over one stream per volume (the
//! view the LSTM's volume stream has); it is shown, not used as the target. Then an inference bench: predictions per
//! second and batch latency at batch 1, 16 and 64 streams on this machine's
//! device (CPU here), with and without lookahead, for 0 (delta classes
//! only), the default and 4096 shard classes (the output layer's cost).
//! The synthetic workloads use `SynthConfig::new`'s defaults (think time
//! before each burst, see `prefetch::synth`). `SHARDBLK_BENCH_CHART=FILE` also writes the PNG chart;
//! `SHARDBLK_BENCH_FILTER=TEXT[,TEXT...]` keeps only the traces whose name contains one of them
//! (so the table can be run in parallel parts);
//! `SHARDBLK_BENCH_LIRS_INTERARRIVAL_US=N` sets the LIRS traces' time between references;
//! `SHARDBLK_BENCH_LSTM_GATE=G` the LSTM's precision gate (0: off);
//! `SHARDBLK_BENCH_LSTM_STREAMS=regions|volume|both` the LSTM's streams;
//! `SHARDBLK_BENCH_LSTM_SHARDS=N` its shard classes (another shape than the
//! shipped model's starts from fresh weights); `SHARDBLK_BENCH_SKIP_INFERENCE=1`
//! skips the inference bench.
//! Run: `cargo bench -p shardblk-lstm --bench trace_eval`.

use shardblk::constants::{
    BENCH_HOT_TIER_WORKING_SET_PERCENT, PREFETCH_REGION_SHIFT_MAX_BITS, SYNTH_BENCH_SEED,
};
use shardblk::prefetch::eval::{eval_trace_with, EvalRow, EvalTable};
use shardblk::prefetch::lstm::LstmOptions;
use shardblk::prefetch::sim::SimConfig;
use shardblk::prefetch::synth::{generate, SynthConfig, SynthKind};
use shardblk::prefetch::{PredictorKind, PrefetchConfig};
use shardblk::trace::{
    csv::read_csv,
    lirs::{from_lirs, LirsOptions},
    TraceEvent,
};
use std::io::BufReader;
use std::path::Path;

const SHARD_SIZES: [u64; 2] = [64 << 10, 1 << 20];
/// The supplementary row: Markov over one stream per volume.
const MARKOV_VOLUME: &str = "markov-vol";

/// Traces with repeated non-sequential patterns (the +10 target).
fn repeated_pattern(trace: &str) -> bool {
    trace.contains("repeated") || trace.contains("boot")
}

/// A trace: events fixed in bytes, or a LIRS block list converted per shard size.
enum Source {
    Events(Vec<TraceEvent>),
    Lirs(std::path::PathBuf),
}

impl Source {
    fn events(&self, shard_bytes: u64) -> Vec<TraceEvent> {
        match self {
            Source::Events(ev) => ev.clone(),
            Source::Lirs(path) => {
                let r = BufReader::new(std::fs::File::open(path).expect("open trace"));
                let mut opts = LirsOptions {
                    block_bytes: shard_bytes,
                    ..Default::default()
                };
                if let Some(us) = std::env::var("SHARDBLK_BENCH_LIRS_INTERARRIVAL_US")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    opts.interarrival_ns = us * 1000;
                }
                from_lirs(r, opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            }
        }
    }
}

fn load(path: &Path) -> Source {
    if path.extension().is_some_and(|e| e == "blocks") {
        return Source::Lirs(path.to_path_buf());
    }
    let r = BufReader::new(std::fs::File::open(path).expect("open trace"));
    Source::Events(read_csv(r).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn main() {
    shardblk_lstm::register();
    // This bench belongs to crates/shardblk-lstm; the traces are beside the repository.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces");
    let mut traces: Vec<(String, Source)> = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for p in files {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".csv.gz") || name.ends_with(".blocks") {
            traces.push((name, load(&p)));
        }
    }
    for kind in SynthKind::ALL {
        traces.push((
            format!("synth-{}", kind.name()),
            Source::Events(generate(&SynthConfig::new(kind, SYNTH_BENCH_SEED))),
        ));
    }
    if let Ok(f) = std::env::var("SHARDBLK_BENCH_FILTER") {
        traces.retain(|(name, _)| f.split(',').any(|t| name.contains(t)));
    }
    let mut table = EvalTable::default();
    let t0 = std::time::Instant::now();
    let mut lstm_opts = LstmOptions::default();
    if let Some(g) = std::env::var("SHARDBLK_BENCH_LSTM_GATE")
        .ok()
        .and_then(|v| v.parse::<f32>().ok())
    {
        lstm_opts.precision_gate = g;
    }
    if let Ok(v) = std::env::var("SHARDBLK_BENCH_LSTM_STREAMS") {
        lstm_opts.streams = v.parse().expect("SHARDBLK_BENCH_LSTM_STREAMS");
    }
    if let Ok(v) = std::env::var("SHARDBLK_BENCH_LSTM_SHARDS") {
        lstm_opts.shape.shards = v.parse().expect("SHARDBLK_BENCH_LSTM_SHARDS");
    }
    eprintln!(
        "lstm: {} streams, {} shard classes, gate {}",
        lstm_opts.streams.name(),
        lstm_opts.shape.shards,
        lstm_opts.precision_gate
    );
    let mut events = 0usize;
    for (name, src) in &traces {
        for shard_bytes in SHARD_SIZES {
            let ev = src.events(shard_bytes);
            let cfg = SimConfig::for_bench(&ev, shard_bytes);
            events += ev.len();
            table.rows.extend(
                eval_trace_with(name, &ev, &cfg, &PredictorKind::ALL, &lstm_opts).expect("eval"),
            );
            let group = table.rows.len() - PredictorKind::ALL.len();
            if repeated_pattern(name) {
                // Supplementary: the Markov baseline over one stream per
                // volume, as the LSTM's volume stream sees the trace.
                let vol = SimConfig {
                    prefetch: PrefetchConfig {
                        region_shift: PREFETCH_REGION_SHIFT_MAX_BITS,
                        ..cfg.prefetch
                    },
                    ..cfg
                };
                for mut r in eval_trace_with(name, &ev, &vol, &[PredictorKind::Markov], &lstm_opts)
                    .expect("eval")
                {
                    r.predictor = MARKOV_VOLUME;
                    table.rows.push(r);
                }
            }
            // Progress on stderr: the full table prints at the end.
            let hits: Vec<String> = table.rows[group..]
                .iter()
                .map(|r| {
                    format!(
                        "{} {:.1}/{:.1}",
                        r.predictor,
                        100.0 * r.stats.hit_ratio,
                        100.0 * r.stats.precision
                    )
                })
                .collect();
            eprintln!(
                "[{:.0} s] {name} {}: hit/prec % {}",
                t0.elapsed().as_secs_f64(),
                shardblk::prefetch::eval::human_bytes(shard_bytes),
                hits.join(", ")
            );
        }
    }
    print!("{table}");
    eprintln!("hot tier: {BENCH_HOT_TIER_WORKING_SET_PERCENT} % of each trace's read working set");
    eprintln!(
        "{} traces, {events} events (summed over shard sizes), {} simulations in {:.1} s",
        traces.len(),
        table.rows.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(p) = std::env::var_os("SHARDBLK_BENCH_CHART") {
        shardblk::prefetch::chart::eval_chart_png(Path::new(&p), &table).expect("chart");
    }
    checks(&table);
    if std::env::var_os("SHARDBLK_BENCH_SKIP_INFERENCE").is_none() {
        inference_bench();
    }
}

/// The targets, per (trace, shard size) group.
fn checks(table: &EvalTable) {
    println!();
    println!(
        "{:<32} {:>5} {:>7} {:>9} {:>7} {:>6}  {:<14} {:<14} {:<10} {:>10}",
        "trace",
        "shard",
        "lstm%",
        "best",
        "base%",
        "prec%",
        "within 2 pts",
        "+10 repeated",
        "prec>=0.5",
        "mk-vol%"
    );
    let (mut pass, mut fail) = (0, 0);
    let mut mark = |ok: Option<bool>| match ok {
        Some(true) => {
            pass += 1;
            "PASS"
        }
        Some(false) => {
            fail += 1;
            "FAIL"
        }
        None => "-",
    };
    let mut groups: Vec<(&str, u64)> = Vec::new();
    for r in &table.rows {
        if !groups.contains(&(r.trace.as_str(), r.shard_bytes)) {
            groups.push((r.trace.as_str(), r.shard_bytes));
        }
    }
    for (trace, shard) in groups {
        let rows: Vec<&EvalRow> = table
            .rows
            .iter()
            .filter(|r| r.trace == trace && r.shard_bytes == shard)
            .collect();
        let Some(lstm) = rows.iter().find(|r| r.predictor == "lstm") else {
            continue;
        };
        let Some(best) = rows
            .iter()
            .filter(|r| r.predictor != "lstm" && r.predictor != MARKOV_VOLUME)
            .max_by(|a, b| a.stats.hit_ratio.total_cmp(&b.stats.hit_ratio))
        else {
            continue;
        };
        let (l, b) = (100.0 * lstm.stats.hit_ratio, 100.0 * best.stats.hit_ratio);
        let within = mark(Some(l >= b - 2.0));
        let repeated = mark(repeated_pattern(trace).then_some(l >= b + 10.0));
        let prec = mark((lstm.stats.staged > 0).then_some(lstm.stats.precision >= 0.5));
        let mk_vol = rows
            .iter()
            .find(|r| r.predictor == MARKOV_VOLUME)
            .map_or("-".to_string(), |r| {
                format!("{:.1}", 100.0 * r.stats.hit_ratio)
            });
        println!(
            "{trace:<32} {:>5} {l:>7.1} {:>9} {b:>7.1} {:>6.1}  {within:<14} {repeated:<14} {prec:<10} {mk_vol:>10}",
            shardblk::prefetch::eval::human_bytes(shard),
            best.predictor,
            100.0 * lstm.stats.precision,
        );
    }
    println!("targets: {pass} PASS, {fail} FAIL");
    println!(
        "(mk-vol%: the Markov baseline over one stream per volume, supplementary, not a target baseline)"
    );
}

/// Predictions per second and batch latency of the LSTM (inference only;
/// the shipped model where the shape is its own, else fresh weights) with 1,
/// 16 and 64 streams per batch, one event each, for several output sizes.
fn inference_bench() {
    use shardblk::prefetch::lstm::LstmOptions;
    use shardblk::prefetch::{Predictor, ShardEvent};
    use shardblk::trace::Op;
    use shardblk_lstm::LstmPredictor;
    let cfg = PrefetchConfig {
        shard_bytes: 1 << 20,
        region_shift: 30,
        ..Default::default()
    };
    println!();
    println!(
        "LSTM inference (depth {}, no online training, outputs = 1 + {} delta classes + shard classes):",
        cfg.depth,
        LstmOptions::default().shape.vocab
    );
    println!(
        "{:>6} {:>8} {:>8} {:>9} {:>6} {:>10} {:>12} {:>12} {:>14}",
        "shards",
        "outputs",
        "streams",
        "lookahead",
        "batch",
        "device",
        "mean_us",
        "events/s",
        "predictions/s"
    );
    use shardblk::prefetch::lstm::Streams;
    let defaults = LstmOptions::default();
    let mut configs = Vec::new();
    for (shards, streams) in [
        (defaults.shape.shards, defaults.streams),
        (defaults.shape.shards, Streams::Regions),
        (0, defaults.streams),
        (4096, defaults.streams),
    ] {
        for lookahead in [defaults.lookahead, 0] {
            for batch in [1usize, 16, 64] {
                configs.push((shards, streams, lookahead, batch));
            }
        }
    }
    for (shards, streams, lookahead, batch) in configs {
        let opts = LstmOptions {
            online: false,
            lookahead,
            streams,
            shape: shardblk::prefetch::lstm::ModelShape {
                shards,
                ..defaults.shape
            },
            ..Default::default()
        };
        let mut p = LstmPredictor::new(&cfg, &opts).expect("lstm");
        let steps = (4096 / batch).max(64);
        let mut out = Vec::new();
        let mut predictions = 0u64;
        let mut ev: Vec<ShardEvent> = Vec::with_capacity(batch);
        let t0 = std::time::Instant::now();
        for s in 0..steps as u64 {
            ev.clear();
            // Stream b reads sequentially in its own 1 GiB region.
            ev.extend((0..batch as u64).map(|b| ShardEvent {
                ts_ns: s * 1_000_000,
                volume: 0,
                op: Op::Read,
                shard: b * 1024 + s % 1000,
                shards: 1,
                end_eighths: 8,
                bytes: 4096,
            }));
            out.clear();
            p.step(&ev, &mut out);
            predictions += out.len() as u64;
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{shards:>6} {:>8} {:>8} {lookahead:>9} {batch:>6} {:>10} {:>12.0} {:>12.0} {:>14.0}",
            opts.shape.outputs(),
            streams.name(),
            format!("{:?}", p.device()),
            secs * 1e6 / steps as f64,
            (steps * batch) as f64 / secs,
            predictions as f64 / secs
        );
    }
}
