//! The LSTM predictor fed many events per step (the live path feeds up to
//! `LSTM_LIVE_STEP_EVENTS_MAX`) predicts like one fed one event per step:
//! it emits predictions after a few batches, and they are about as often
//! read in time. The shipped model (the live default), no online training:
//! deterministic.

use shardblk::constants::LSTM_LIVE_STEP_EVENTS_MAX;
use shardblk::prefetch::lstm::LstmOptions;
use shardblk::prefetch::{Prediction, Predictor, PrefetchConfig, ShardEvent};
use shardblk::trace::Op;
use shardblk_lstm::LstmPredictor;

/// Sequential passes over a volume of `shards` shards, one read per shard
/// (as `dd` over the test VM's device), `n` events. (Not a multiple of the
/// batch sizes: a batch ending on the volume's last shard would judge the
/// shards past the end that a sequential model predicts there.)
fn passes(shards: u64, n: usize) -> Vec<ShardEvent> {
    (0..n as u64)
        .map(|i| ShardEvent {
            ts_ns: i * 100_000,
            volume: 0,
            op: Op::Read,
            shard: i % shards,
            shards: 1,
            end_eighths: 8,
            bytes: 4096,
        })
        .collect()
}

fn predictor(cfg: &PrefetchConfig) -> LstmPredictor {
    shardblk_lstm::register();
    LstmPredictor::new(
        cfg,
        &LstmOptions {
            online: false,
            ..Default::default()
        },
    )
    .expect("lstm")
}

/// Feed `ev` in batches of `batch`; per batch the predictions emitted.
/// Returns (predictions emitted, fraction of them read within the
/// predictor's precision deadline (those with that many events after them),
/// batches that emitted any).
fn run(p: &mut LstmPredictor, ev: &[ShardEvent], batch: usize) -> (usize, f64, usize) {
    let horizon = p.deadline_events() as usize;
    let (mut emitted, mut judged, mut correct, mut emitting) = (0, 0, 0, 0);
    let mut out: Vec<Prediction> = Vec::new();
    for (k, chunk) in ev.chunks(batch).enumerate() {
        out.clear();
        p.step(chunk, &mut out);
        let from = (k + 1) * batch;
        emitted += out.len();
        emitting += usize::from(!out.is_empty());
        if from + horizon > ev.len() {
            // Too near the end to judge.
            continue;
        }
        judged += out.len();
        correct += out
            .iter()
            .filter(|q| ev[from..from + horizon].iter().any(|e| e.shard == q.shard))
            .count();
    }
    (emitted, correct as f64 / judged.max(1) as f64, emitting)
}

/// The live test's case: three steps of `LSTM_LIVE_STEP_EVENTS_MAX`
/// sequential reads. Calibration needs several resolved candidates per
/// bucket before anything is emitted; learning only from each step's last
/// position, three steps never got there.
#[test]
fn three_live_size_batches_emit_predictions() {
    let cfg = PrefetchConfig::default();
    let batch = LSTM_LIVE_STEP_EVENTS_MAX;
    let ev = passes(100, 3 * batch);
    let mut p = predictor(&cfg);
    let (emitted, precision, emitting) = run(&mut p, &ev, batch);
    eprintln!(
        "3 batches of {batch}: {emitted} predictions, precision {precision:.3}, {emitting} batches emitting; gate {:?}; mean step {} us",
        p.gate_figures(), p.figures().batch_ns_mean / 1000
    );
    assert!(emitted > 0 && emitting >= 2, "{emitted} predictions");
    assert!(precision >= 0.9, "precision {precision}");
}

/// The same sequential stream in batches of 1 and of 64: predictions at
/// batch 64 come out at (nearly) every step and are as often read in time.
#[test]
fn batches_of_64_predict_like_single_events() {
    let cfg = PrefetchConfig::default();
    let ev = passes(100, 2048);
    let (n1, prec1, steps1) = run(&mut predictor(&cfg), &ev, 1);
    let batch = 64;
    let (n64, prec64, steps64) = run(&mut predictor(&cfg), &ev, batch);
    let batches = ev.len().div_ceil(batch);
    eprintln!(
        "batch 1: {n1} predictions, precision {prec1:.3}, {steps1} of {} steps emitting; batch {batch}: {n64}, {prec64:.3}, {steps64} of {batches}",
        ev.len()
    );
    assert!(n1 > 0 && prec1 >= 0.5, "batch 1: {n1}, {prec1}");
    assert!(n64 > 0, "batch {batch}: nothing emitted");
    assert!(
        prec64 >= prec1 - 0.05,
        "batch {batch} precision {prec64} vs {prec1}"
    );
    // Emitting steps: the same share as at batch 1 (less a warm-up step).
    let share1 = steps1 as f64 / ev.len() as f64;
    let share64 = steps64 as f64 / batches as f64;
    assert!(
        share64 >= share1 - 0.1,
        "steps emitting: batch {batch} {share64:.3} vs batch 1 {share1:.3}"
    );
}

/// The inference bench's case: 16 sequential scans in their own regions,
/// one event each per step. With both streams (the default) it emitted
/// nothing: the volume stream's first new delta (+1024) took the shipped
/// vocabulary's class of +1 (no class was in use yet after loading), and a
/// volume stream emitting for the batch's last region silenced every other
/// region stream. Now both streams predict as the region streams alone do.
#[test]
fn interleaved_scans_in_one_batch_predict_with_both_streams() {
    use shardblk::prefetch::lstm::Streams;
    let cfg = PrefetchConfig {
        region_shift: 30,
        ..Default::default()
    };
    let batch = 16u64;
    let ev: Vec<ShardEvent> = (0..40u64)
        .flat_map(|s| {
            (0..batch).map(move |b| ShardEvent {
                ts_ns: s * 1_000_000,
                volume: 0,
                op: Op::Read,
                shard: b * 1024 + s,
                shards: 1,
                end_eighths: 8,
                bytes: 4096,
            })
        })
        .collect();
    let mut result = Vec::new();
    for streams in [Streams::Regions, Streams::Both] {
        shardblk_lstm::register();
        let mut p = LstmPredictor::new(
            &cfg,
            &LstmOptions {
                online: false,
                streams,
                ..Default::default()
            },
        )
        .expect("lstm");
        let (emitted, precision, emitting) = run(&mut p, &ev, batch as usize);
        eprintln!(
            "{}: {emitted} predictions, precision {precision:.3}, {emitting} of 40 steps emitting",
            streams.name()
        );
        result.push((emitted, precision));
    }
    let ((regions, prec_regions), (both, prec_both)) = (result[0], result[1]);
    assert!(regions > 0 && prec_regions >= 0.9, "regions: {regions}");
    assert!(
        both as f64 >= 0.9 * regions as f64 && prec_both >= 0.9,
        "both: {both} at {prec_both} vs regions {regions}"
    );
}
