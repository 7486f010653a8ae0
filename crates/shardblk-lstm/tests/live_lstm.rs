//! The live prefetch engine with the LSTM (`--prefetch lstm` without the
//! device): trace events of sequential 64 KiB read passes over a volume
//! written on the cold tier go through the trace rings; the inference thread
//! must build the LSTM (shipped model), step it on batches, and the stager
//! must stay within budget while every block keeps its data.

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::*;
use shardblk::device::metrics::{trace_ring, Op, TraceEvent};
use shardblk::io::AlignedBuf;
use shardblk::prefetch::live::{Live, LiveConfig};
use shardblk::prefetch::{PredictorKind, PrefetchConfig};
use std::time::{Duration, Instant};

const TAG: u32 = 11;
const SHARDS: u64 = 32;

#[test]
fn live_lstm_steps_on_batches_and_keeps_data() {
    shardblk_lstm::register();
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let vol = cold_volume(&pool, "pf", SHARDS, TAG);
    let mut eng = pool.engine();
    let start = Instant::now();
    let (mut tp, c) = trace_ring(1 << 16);
    let cfg = LiveConfig {
        kind: PredictorKind::Lstm,
        prefetch: PrefetchConfig::default(),
        budget_bytes: Some(8 * MIB),
        model: None,
        promote_reads: 0, // what is staged here was predicted
        lstm: Default::default(),
    };
    let live = Live::start(Some(&cfg), vol.clone(), vec![c], start).expect("live start");
    let shared = live.shared();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut passes = 0;
    let mut buf = AlignedBuf::new(64 << 10);
    loop {
        for off in (0..SHARDS * MIB).step_by(64 << 10) {
            tp.push(TraceEvent {
                time_ns: start.elapsed().as_nanos() as u64,
                volume: vol.id(),
                offset: off,
                len: 64 << 10,
                op: Op::Read,
            });
            vol.read(eng.as_mut(), off, &mut buf).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        passes += 1;
        let st = shared.stats().expect("prefetch on");
        if st.batches >= 20 && passes >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the LSTM did not step within 120 s ({passes} passes): {st:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    drop(live);
    let st = shared.stats().expect("prefetch on");
    eprintln!("{passes} passes: {st:?}");
    assert_eq!(st.predictor, "lstm");
    assert!(st.events_fed > 0 && st.batches >= 20, "{st:?}");
    assert!(st.stager.resident_units <= st.stager.budget_units, "{st:?}");
    assert_eq!(st.stager.stage_failed, 0, "{st:?}");
    let mut all = AlignedBuf::new((SHARDS * MIB) as usize);
    vol.read(eng.as_mut(), 0, &mut all).unwrap();
    for blk in 0..SHARDS * 256 {
        assert_eq!(
            block_version(&all[blk as usize * BLOCK..][..BLOCK], TAG, blk),
            Ok(Some(1)),
            "block {blk}"
        );
    }
}

/// What the live pacer asks the LSTM after each step
/// (`Predictor::promising`): on sequential reads its tracked candidates
/// measure as precise within a few live-size steps, before it has emitted
/// much, so it calibrates at the full CPU share; on uniformly random shards
/// they do not, so it stays at the idle share. Fixed seed, online training
/// off (deterministic).
#[test]
fn promising_on_sequential_reads_not_on_random_ones() {
    use rand::{Rng, SeedableRng};
    use shardblk::constants::{LSTM_LIVE_STEP_EVENTS_MAX, PREFETCH_LEARN_STEPS};
    use shardblk::prefetch::lstm::LstmOptions;
    use shardblk::prefetch::{Prediction, Predictor, ShardEvent};
    use shardblk::trace::Op;
    shardblk_lstm::register();
    let cfg = PrefetchConfig {
        shard_bytes: MIB,
        stage_capacity_shards: 32,
        ..Default::default()
    };
    let seed = 7;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut run = |random: bool| -> Vec<bool> {
        let mut p = shardblk_lstm::LstmPredictor::new(
            &cfg,
            &LstmOptions {
                online: false,
                ..Default::default()
            },
        )
        .expect("lstm");
        let mut out: Vec<Prediction> = Vec::new();
        let mut i = 0u64;
        (0..4)
            .map(|_| {
                let batch: Vec<ShardEvent> = (0..LSTM_LIVE_STEP_EVENTS_MAX)
                    .map(|_| {
                        i += 1;
                        ShardEvent {
                            ts_ns: i * 200_000,
                            volume: 0,
                            op: Op::Read,
                            // 64 KiB reads, 16 per 1 MiB shard, as dd
                            shard: if random {
                                rng.random_range(0..4096)
                            } else {
                                (i / 16) % 128
                            },
                            shards: 1,
                            end_eighths: 8,
                            bytes: 4096,
                        }
                    })
                    .collect();
                out.clear();
                p.step(&batch, &mut out);
                p.promising()
            })
            .collect()
    };
    let seq = run(false);
    let rnd = run(true);
    eprintln!("promising after each step: sequential {seq:?}, random {rnd:?} (seed {seed})");
    // from the first step after those the live thread charges at the full
    // share anyway (its learning steps) on
    let learn = PREFETCH_LEARN_STEPS as usize;
    assert!(
        seq[learn..].iter().all(|&p| p),
        "sequential {seq:?} (seed {seed})"
    );
    assert!(rnd.iter().all(|&p| !p), "random {rnd:?} (seed {seed})");
}
