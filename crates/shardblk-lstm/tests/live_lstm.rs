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
