//! The cost of one live LSTM step by batch size: the shipped model with the
//! live options (online training on, precision gate), fed sequential 64 KiB
//! reads over 1 MiB shards (16 reads per shard, as `dd` in
//! tests/vm/prefetch.sh) in steps of the sizes given as the first argument
//! (comma-separated, default `1,1,16,64,128,256,...`). Per step: its
//! latency, the predictions it emitted, whether the predictor says it is
//! promising (what the live pacer uses), the precision gate's figures and
//! the background training that followed (20 ms budget, as the live thread),
//! and the run acceptor's fits so far with their CPU time.
//! `STEP_COST_PATTERN=random` feeds the simulator's uniform random
//! workload instead, 4 KiB reads over 256 MiB (fio randread against the
//! replay's volume: what the predictor costs where there is nothing to
//! predict).
//! Run natively or in the test VM (`target/release/examples/step_cost`):
//! `cargo run --release -p shardblk-lstm --example step_cost [SIZES]`.
use shardblk::prefetch::lstm::LstmOptions;
use shardblk::prefetch::synth::{generate, SynthConfig, SynthKind};
use shardblk::prefetch::{Prediction, Predictor, PrefetchConfig, ShardEvent};
use shardblk::trace::Op;
use std::time::Instant;

fn main() {
    shardblk_lstm::register();
    let cfg = PrefetchConfig {
        shard_bytes: 1 << 20,
        stage_capacity_shards: 32,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut p = shardblk_lstm::LstmPredictor::new(&cfg, &LstmOptions::default()).expect("lstm");
    println!("build {:.3} s", t0.elapsed().as_secs_f64());
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or("1,1,16,64,128,256,256,256,256,256,256".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    // `STEP_COST_PATTERN=random`: the simulator's uniform random workload,
    // 4 KiB reads over 256 MiB about 0.5 ms apart, in the sizes' batches.
    let random: Option<Vec<ShardEvent>> =
        (std::env::var("STEP_COST_PATTERN").as_deref() == Ok("random")).then(|| {
            let synth = SynthConfig {
                events: sizes.iter().sum(),
                volume_bytes: 256 << 20,
                io_bytes: 4096,
                interarrival_ns: 500_000,
                think_ns: 0,
                ..SynthConfig::new(SynthKind::Random, 1)
            };
            generate(&synth)
                .iter()
                .map(|e| cfg.shard_event(0, e))
                .collect()
        });
    let mut i = 0u64;
    let mut out: Vec<Prediction> = Vec::new();
    for n in sizes {
        let batch: Vec<ShardEvent> = match &random {
            Some(r) => {
                let from = i as usize;
                i += n as u64;
                r[from..from + n].to_vec()
            }
            None => (0..n)
                .map(|_| {
                    i += 1;
                    ShardEvent {
                        ts_ns: i * 200_000,
                        volume: 0,
                        op: Op::Read,
                        shard: (i / 16) % 128,
                        shards: 1,
                        end_eighths: 8,
                        bytes: 4096,
                    }
                })
                .collect(),
        };
        out.clear();
        let t = Instant::now();
        p.step(&batch, &mut out);
        let s = t.elapsed().as_secs_f64();
        let tb = Instant::now();
        let bg = p.background(std::time::Duration::from_millis(20));
        let (prec, resolved, gated) = p.gate_figures();
        println!(
            "step {n:4} events {s:8.3} s  predictions {:3}  promising {}  precision {prec:.2} resolved {resolved} gated {gated}  background {bg} {:.3} s",
            out.len(),
            p.promising(),
            tb.elapsed().as_secs_f64()
        );
        let f = p.figures();
        if f.helper_jobs > 0 {
            println!(
                "  run acceptor: fits {}, their CPU {:.3} s",
                f.helper_jobs,
                f.helper_cpu_ns as f64 / 1e9
            );
        }
    }
}
