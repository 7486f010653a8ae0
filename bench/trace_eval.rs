//! Prefetch baselines on every real trace in `../shared/traces` and on the
//! synthetic set, at shard sizes 64 KiB and 1 MiB with a hot tier of
//! 256 MiB either way (4096 or 256 shards), default simulator latencies.
//! Prints one table; the winner of each group (lowest mean read latency) is
//! marked `*`. Run: `cargo bench --bench trace_eval`.

use shardblk::prefetch::eval::{eval_trace, EvalTable};
use shardblk::prefetch::sim::SimConfig;
use shardblk::prefetch::synth::{generate, SynthConfig, SynthKind};
use shardblk::prefetch::{PredictorKind, PrefetchConfig};
use shardblk::trace::{csv::read_csv, lirs::from_lirs, TraceEvent};
use std::io::BufReader;
use std::path::Path;

const HOT_TIER_BYTES: u64 = 256 << 20;
const SHARD_SIZES: [u64; 2] = [64 << 10, 1 << 20];
const SYNTH_SEED: u64 = 7;

fn load(path: &Path) -> Vec<TraceEvent> {
    let r = BufReader::new(std::fs::File::open(path).expect("open trace"));
    let ev = if path.extension().is_some_and(|e| e == "blocks") {
        from_lirs(r, Default::default())
    } else {
        read_csv(r)
    };
    ev.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces");
    let mut traces: Vec<(String, Vec<TraceEvent>)> = Vec::new();
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
            generate(&SynthConfig::new(kind, SYNTH_SEED)),
        ));
    }
    let mut table = EvalTable::default();
    let t0 = std::time::Instant::now();
    for (name, ev) in &traces {
        for shard_bytes in SHARD_SIZES {
            let cfg = SimConfig {
                prefetch: PrefetchConfig {
                    shard_bytes,
                    ..Default::default()
                },
                hot_shards: HOT_TIER_BYTES / shard_bytes,
                ..Default::default()
            };
            table
                .rows
                .extend(eval_trace(name, ev, &cfg, &PredictorKind::ALL).expect("eval"));
        }
    }
    print!("{table}");
    let events: usize = traces.iter().map(|t| t.1.len()).sum();
    eprintln!(
        "{} traces, {events} events, {} simulations in {:.1} s",
        traces.len(),
        table.rows.len(),
        t0.elapsed().as_secs_f64()
    );
}
