//! The LSTM predictor: per-stream state carried between batched steps,
//! the most likely delta and shard classes turned into shard predictions,
//! online training in `background` on a separate copy of the weights.
//!
//! Contract (on top of the [`Predictor`] contract):
//! - Streams: an event belongs to its address region's stream, its volume's
//!   stream, or both (`LstmOptions::streams`, [`stream_keys`]); per stream
//!   ([`StreamKey`], bounded [`LruMap`]): the featurizer's
//!   memory, the LSTM state (h, c), the pending
//!   training window and recently predicted shards.
//! - [`Predictor::step`]: events become features (reads and writes; other
//!   ops are ignored; the shard vocabulary counts each event once). Events
//!   are grouped by stream; round `r` runs one
//!   batched LSTM step over every stream with an `r`-th event in the batch
//!   (states gathered, stepped, scattered back): one round per batch when
//!   each stream has one new event. Predictions are emitted for the last
//!   position of each stream only; with the precision gate, the candidates
//!   of up to [`LSTM_SHADOW_POSITIONS_MAX`] earlier positions of a stream
//!   (evenly spaced) are computed too (the memory as of that event) and
//!   tracked in shadow from that event's clock, resolved by the batch's
//!   later events in order: calibration and the precision estimates learn
//!   about as fast per event at any batch size (learning from one position
//!   per step, a few live steps of hundreds of events never calibrated a
//!   bucket and emitted nothing). Nothing is predicted after a stream's
//!   first event (no delta seen yet). The most likely output classes
//!   (`LSTM_CANDIDATE_CLASSES_PER_DEPTH * depth` of them) name next shards:
//!   a delta class `first shard + delta`, a shard class its shard, the
//!   repeat class `first shard + the stream's last delta` (along a
//!   lookahead path: the path's last step); the
//!   probabilities of classes naming the same shard add up. These shards
//!   (as wide as the last request) are the candidates; then up to
//!   `lookahead` further steps follow the most likely path (raw confidence
//!   = product of probabilities), until `depth` candidates (raw: while the
//!   product stays above the threshold; calibrated: while each step's own
//!   probability does). Without the
//!   precision gate (0), candidates at or above `confidence_min` are
//!   emitted with their raw confidence. With it, candidates down to
//!   [`LSTM_TRACK_CONFIDENCE_MIN`] are kept and *calibrated*: the emitted
//!   confidence is the measured precision of the candidate's bucket (stream
//!   scope x source x steps ahead x run length x raw confidence decile; a bucket with
//!   fewer than `LSTM_CALIBRATION_MIN_RESOLVED` resolved candidates has
//!   none), and a candidate is emitted when that reaches both
//!   `confidence_min` and the gate. So a
//!   second or third shard of a sequential run, whose raw next-event
//!   probability is low but which is nearly always read soon, is staged,
//!   and a confident class that is rarely read in time is not. A shard
//!   already predicted for the stream among its last `2 * depth`
//!   predictions is not predicted again unless its confidence has risen.
//! - Runs: each stream follows its last [`LSTM_NEAR_RECENT`] runs of
//!   requests ([`continue_run`]: a request on a run's last shard or the
//!   next continues it; re-reads of a shard too, which are no model
//!   inputs). A candidate is calibrated in the bucket of the run its
//!   stream's request continued, so the continuation of a run that has
//!   gone on for a few requests is measured apart from that of a one-off
//!   read, also where other readers' requests come in between (session 11:
//!   umass websearch at 64 KiB shards, 36 % -> 51 % precision). Judging a
//!   stream's candidates again at each re-read of its shard was tried and
//!   not kept: it did not move umass, and the early stagings cost synth-boot
//!   at 1 MiB (a 16-shard hot tier) 7 points of hit ratio.
//! - Run source (calibrated predictors, region streams only): at each read
//!   of a region stream, re-reads of a shard included (no model inputs),
//!   the [`LSTM_RUN_CANDIDATES`] shards after the run the read continued are
//!   candidates too, each with the run acceptor's probability of being read
//!   in time ([`crate::accept`]: boosted trees over the run's requests,
//!   shards and bytes, the read's size and its end in its shard, the gaps
//!   since the stream's and any stream's last request, the run's age). Each
//!   judgment is kept apart ([`judge`], at most [`LSTM_RUN_JUDGED_MAX`] per
//!   stream) and taught to the acceptor when its deadline comes: read in
//!   time or not. Holding a judgment read early until then keeps the labels
//!   the acceptor has at any time unbiased; learning reads at once (and
//!   misses only at their deadline) made its first fits see 73 % positives
//!   and stage too much too early (umass websearch at 64 KiB shards: hit
//!   ratio 53.7 -> 55.1 % at the same threshold, timeliness 79 -> 94 %).
//!   A run candidate is emitted when its probability is at least
//!   [`LSTM_RUN_ACCEPT_MIN`] and its calibrated confidence, the measured
//!   precision of the run candidates whose highest probability was in its
//!   bin or above ([`Gate::run_confidence`]: what staging every candidate as
//!   likely gives), reaches `confidence_min` and the gate; neither the
//!   stream's precision gate nor the other stream of the event holds it,
//!   and it counts in no stream's estimates. The shards it names are the
//!   run source's alone (step 4a). Session 13: umass websearch at 64 KiB
//!   shards 48.6 -> 56.3 % hit ratio at 50.5 % precision (RESULTS).
//! - Resident shards: when the hot tier's size is known
//!   (`stage_capacity_shards`), the predictor models its contents as the
//!   last that many distinct shards read or predicted (at most
//!   [`LSTM_RESIDENT_MAX_SHARDS`]; demand caching keeps what is read, and
//!   what is predicted is staged). A candidate naming one of them (or a
//!   shard read earlier in the batch than its position) is neither emitted
//!   nor tracked: staging would skip it, and counting it (it is read soon,
//!   so "correct") made calibration and the gate measure a precision the
//!   staged shards did not have.
//! - Precision gate (`precision_gate`, 0: off): every new candidate of a
//!   stream is tracked, emitted or not (up to [`LSTM_PRECISION_TRACKED_MAX`]
//!   at once per stream: beyond, a sample); it is correct when the stream
//!   reads the shard before `PrefetchConfig::stage_capacity_shards` shards
//!   were touched since (all streams: each shard a read touches, each
//!   predicted shard staged, except the first read of a staged shard,
//!   whose staging counted; see `note_resident`): about when a
//!   least-recently-used hot tier evicts a staged, unread shard. Until
//!   session 11 the deadline was that many *events*: a request over many
//!   shards counted once, so on msn at 64 KiB shards candidates were
//!   tracked as read in time far more often than the staged shards were
//!   read (71 % against 53 %). Counting only the shards the tier took in
//!   was tried and is wrong where reads mostly hit (fiu at 1 MiB: 85.7 %
//!   precision -> 12.5 %): the tier's own reads age a staged shard too.
//!   Without a known capacity: `LSTM_PRECISION_DEADLINE_EVENTS_PER_DEPTH *
//!   depth` events.
//!   Every resolution updates its calibration bucket. A moving average of
//!   the correctness of the stream's calibrated-eligible candidates (a new stream
//!   starts from the predictor-wide average, which starts at 1) decides: the
//!   stream's predictions are emitted only while it is at least the gate,
//!   and tracked in shadow otherwise, so a stream that becomes predictable is
//!   let through again. This keeps staging precision near the gate on
//!   traces the model cannot predict, at no model cost. A second moving
//!   average per stream, the *fresh* estimate, follows only the eligible
//!   candidates it would stage (that named a shard it had not just
//!   predicted), emitted or withheld; it starts from the precision
//!   estimate and ranks the two streams of an event (below).
//! - With both streams, the volume stream and the region stream whose last
//!   events in a step are the same event speak one at a time, the more
//!   precise first: ranked by [`stream_estimate`] (the volume stream on a
//!   tie). Where the first emits a candidate the other only tracks its
//!   candidates (in shadow) in that step; where it has nothing to emit, the
//!   other speaks. A region stream whose last event in the batch came
//!   earlier (many events per step, interleaved regions) emits its own.
//! - A step's predictions (all streams) come out one per shard, the most
//!   confident, in address order (so the stager reads neighbouring shards
//!   in one pass).
//! - A vocabulary slot given a new delta or shard online has its output row
//!   reset in both copies of the weights (and a shard slot a new input
//!   embedding row, the same in both): it starts unlikely and is learned anew.
//! - [`Predictor::background`]: one training step is due per
//!   `train_interval_events` events fed; due steps run within `budget`
//!   (at least one when any is due and the budget is not zero); steps beyond
//!   [`LSTM_TRAIN_BACKLOG_MAX_STEPS`] or past the budget are skipped and
//!   counted in `figures().skipped`. Every `swap_interval_steps` steps the
//!   trained weights are copied into the inference model under no_grad:
//!   inference never waits for an optimizer step in progress.

use crate::accept::{Acceptor, RunContext, ACCEPT_FEATURES};
use crate::memory::StateMemory;
use crate::model::{normal, pick_device, Inputs, Model};
use crate::train::{gather_state, scatter_state, OnlineTrainer, Window};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{
    LSTM_ACCEPT_BOOTSTRAP_HORIZON, LSTM_CALIBRATION_AVERAGE_PREDICTIONS,
    LSTM_CALIBRATION_CONFIDENCE_BUCKETS, LSTM_CALIBRATION_MIN_RESOLVED,
    LSTM_CALIBRATION_RUN_BUCKETS, LSTM_CALIBRATION_STEP_BUCKETS, LSTM_CANDIDATE_CLASSES_PER_DEPTH,
    LSTM_LIVE_STEP_EVENTS_MAX, LSTM_LIVE_STEP_EVENTS_MIN, LSTM_NEAR_RECENT,
    LSTM_PRECISION_AVERAGE_PREDICTIONS, LSTM_PRECISION_DEADLINE_EVENTS_PER_DEPTH,
    LSTM_PRECISION_TRACKED_MAX, LSTM_RESIDENT_MAX_SHARDS, LSTM_RUN_ACCEPT_MIN,
    LSTM_RUN_CALIBRATION_BINS, LSTM_RUN_CANDIDATES, LSTM_RUN_JUDGED_MAX, LSTM_RUN_OUTCOMES_PER_BIN,
    LSTM_SCOPE_CLASSES, LSTM_SHADOW_POSITIONS_MAX, LSTM_SHARD_VOCAB_WINDOW_EVENTS,
    LSTM_TRACK_CONFIDENCE_MIN, LSTM_TRAIN_BACKLOG_MAX_STEPS, LSTM_VOCAB_MIN_COUNT,
    LSTM_VOCAB_WINDOW_EVENTS,
};
use shardblk::prefetch::lstm::config::{
    default_model_path, LstmOptions, ModelShape, ModelSource, Streams,
};
use shardblk::prefetch::lstm::features::{
    near_class, op_class, repeat_class, shard_delta, stream_keys, EventFeatures, FeatureState,
    Featurizer, Scope,
};
use shardblk::prefetch::lstm::file::{ModelFile, TrainInfo};
use shardblk::prefetch::lstm::vocab::{DeltaVocab, ShardKey, ShardVocab, OOV};
use shardblk::prefetch::lstm::LstmError;
use shardblk::prefetch::stream::LruMap;
use shardblk::prefetch::{
    push_unique, Prediction, Predictor, PredictorFigures, PrefetchConfig, ShardEvent, StreamKey,
};
use shardblk::trace::Op;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Default)]
struct Stream {
    /// The run source's judgments whose deadline has not come, oldest
    /// first: (shard, expiry, the acceptor's row, read so far, provisional:
    /// judged before the acceptor's first fit); the
    /// acceptor learns each one at its expiry (see the module doc).
    judged: VecDeque<(u64, u64, [f64; ACCEPT_FEATURES], bool, bool)>,
    fs: FeatureState,
    h: Vec<f32>,
    c: Vec<f32>,
    pending: Vec<EventFeatures>,
    h0: Vec<f32>,
    c0: Vec<f32>,
    recent: VecDeque<(u64, f32)>,
    /// Events of the stream seen so far.
    events: u64,
    /// Tracked predictions, oldest first.
    tracked: VecDeque<Tracked>,
    /// Precision estimate (None: the predictor-wide one).
    precision: Option<f32>,
    /// Precision estimate of what the stream would stage: its candidates
    /// that passed and named a shard it had not just predicted, emitted or
    /// withheld (None: not measured yet).
    fresh: Option<f32>,
    /// A volume stream's memory of its contexts (None: other streams, or off).
    memory: Option<StateMemory>,
    /// The stream's recent runs, the one its last request continued or
    /// started last ([`continue_run`]).
    runs: VecDeque<Run>,
    /// When its last request came (ns).
    last_ts: Option<u64>,
    /// A region stream's run at its last read (the run source's context).
    ctx: Option<RunContext>,
}

/// A run of requests of a stream ([`continue_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// Its first and last shard.
    first: u64,
    last: u64,
    /// Its requests before the last.
    requests: u32,
    /// Bytes its requests asked for.
    bytes: u64,
    /// The predictor's clock when it started.
    started: u64,
}

impl Stream {
    /// Earlier requests of the run the stream's last request continued
    /// (0: it started one, or no request yet).
    fn run(&self) -> u32 {
        self.runs.back().map_or(0, |r| r.requests)
    }
}

/// The run source's candidates in the context `ctx`: the
/// `LSTM_RUN_CANDIDATES` shards after its run, each with the acceptor's
/// probability as raw confidence (none without a context).
fn run_candidates(ctx: Option<&RunContext>, acceptor: &Acceptor) -> Vec<Candidate> {
    let Some(ctx) = ctx else {
        return Vec::new();
    };
    let rows: Vec<_> = (1..=LSTM_RUN_CANDIDATES).map(|j| ctx.features(j)).collect();
    let ps = acceptor.predict(&rows);
    (1..=LSTM_RUN_CANDIDATES)
        .zip(ps)
        .filter_map(|(j, p)| {
            ctx.last
                .checked_add(j)
                .map(|s| (s, p as f32, (j - 1) as usize, Source::Run))
        })
        .collect()
}

/// A stream that speaks in a step: its candidates at its last position.
struct Speaker {
    key: StreamKey,
    scope: u32,
    /// [`Stream::run`] after its last event in the batch.
    run: u32,
    /// The predictor's clock at the stream's last event in the batch.
    clock: u64,
    preds: Vec<Candidate>,
    /// The run source's context of its candidates.
    ctx: Option<RunContext>,
}

/// Where a candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The output classes (and the path the model follows).
    Model = 0,
    /// The stream's memory of its states.
    Memory = 1,
    /// The shards after the run the stream's last request continued
    /// ([`continue_run`]), judged at every request, re-reads included.
    Run = 2,
}

/// Candidate sources (calibration buckets are kept per source).
const SOURCES: usize = 3;

/// Buckets of the model and the memory recorded per tracked prediction.
const TRACKED_BUCKETS: usize = 4;

/// A candidate: shard, raw confidence, steps ahead, source.
type Candidate = (u64, f32, usize, Source);

/// A prediction tracked until its stream reads the shard or it expires.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    shard: u64,
    /// Expiry, on the hot tier's touch clock ([`LstmPredictor::hot_clock`];
    /// the predictor's events when the tier's size is unknown): a
    /// prediction read only later is as good as wrong (its shard would be
    /// evicted).
    deadline: u64,
    /// Calibration buckets ([`bucket`]) it was predicted in while tracked
    /// (a shard is often predicted again, nearer: each bucket learns).
    buckets: [Option<usize>; TRACKED_BUCKETS],
    /// The run source's first bucket (its scope class counts in
    /// [`ScopeFigures`] where the model and the memory never named it).
    run_bucket: Option<usize>,
    /// The highest bin of the acceptor's probabilities the run source
    /// judged it with (see `Gate::run_confidence`).
    run_top: Option<usize>,
    /// Counts towards the stream's precision estimate (it passed calibration).
    counted: bool,
    /// Emitted (not only tracked): counted in [`ScopeFigures`].
    emitted: bool,
    /// Would have been emitted had the stream spoken (passed, not a repeat
    /// of its recent predictions): counted in [`Stream::fresh`].
    fresh: bool,
}

impl Tracked {
    /// Record calibration buckets (the model's and the memory's each once,
    /// those beyond the free slots not recorded; the run source's first) and
    /// the run source's probability `run_p`, where it named the shard.
    fn add(&mut self, buckets: [Option<usize>; SOURCES], run_p: Option<f32>) {
        self.run_top = self.run_top.max(run_p.map(run_bin));
        for b in buckets.into_iter().flatten() {
            if bucket_parts(b).1 == Source::Run as usize {
                self.run_bucket = self.run_bucket.or(Some(b));
            } else if !self.buckets.contains(&Some(b)) {
                if let Some(free) = self.buckets.iter_mut().find(|x| x.is_none()) {
                    *free = Some(b);
                }
            }
        }
    }

    /// Every recorded bucket, the model's and the memory's first.
    fn all_buckets(&self) -> impl Iterator<Item = usize> + '_ {
        self.buckets
            .iter()
            .flatten()
            .copied()
            .chain(self.run_bucket)
    }

    /// The first recorded bucket (its scope class is the stream's).
    fn first_bucket(&self) -> Option<usize> {
        self.all_buckets().next()
    }
}

/// What the predictor did per stream scope (diagnostics: which streams'
/// predictions come out, and how many were read in time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeFigures {
    /// Predictions emitted.
    pub emitted: u64,
    /// Emitted predictions resolved, and those read in time.
    pub emitted_resolved: u64,
    pub emitted_correct: u64,
    /// Eligible candidates withheld because the event's other stream (the
    /// more precise, see the module doc) emitted for it.
    pub deferred: u64,
    /// Eligible candidates withheld by the precision gate.
    pub gated: u64,
    /// Counted candidates (those the precision estimates follow: they
    /// passed calibration, emitted or not) resolved, and those read in time.
    pub counted_resolved: u64,
    pub counted_correct: u64,
    /// Emitted predictions per source (model, memory) and per step ahead.
    pub by_source: [u64; SOURCES],
    pub by_step: [u64; LSTM_CALIBRATION_STEP_BUCKETS],
    /// Emitted predictions per run bucket (earlier requests of the run the
    /// stream's request continued when they were judged; see [`bucket`]).
    pub by_run: [u64; LSTM_CALIBRATION_RUN_BUCKETS],
}

/// Calibration bucket of a candidate of a stream of scope class `scope`
/// from `source`, `step` steps ahead (0: the next event) with raw
/// confidence `p` (a probability for the model, a similarity for the memory),
/// judged at a request that continued a run of `run` earlier requests of
/// the stream (0: it started one; [`continue_run`]).
fn bucket(scope: u32, source: Source, step: usize, run: u32, p: f32) -> usize {
    let decile = ((p.clamp(0.0, 1.0) * LSTM_CALIBRATION_CONFIDENCE_BUCKETS as f32) as usize)
        .min(LSTM_CALIBRATION_CONFIDENCE_BUCKETS - 1);
    let step = step.min(LSTM_CALIBRATION_STEP_BUCKETS - 1);
    let run = (run as usize).min(LSTM_CALIBRATION_RUN_BUCKETS - 1);
    ((((scope as usize * SOURCES) + source as usize) * LSTM_CALIBRATION_STEP_BUCKETS + step)
        * LSTM_CALIBRATION_RUN_BUCKETS
        + run)
        * LSTM_CALIBRATION_CONFIDENCE_BUCKETS
        + decile
}

/// The calibration bin of the acceptor's probability `p`.
fn run_bin(p: f32) -> usize {
    ((p.clamp(0.0, 1.0) * LSTM_RUN_CALIBRATION_BINS as f32) as usize)
        .min(LSTM_RUN_CALIBRATION_BINS - 1)
}

/// Predictor-wide precision estimate, calibration and gate counters.
#[derive(Debug, Clone)]
struct Gate {
    precision: f32,
    resolved: u64,
    gated: u64,
    /// Measured precision per calibration bucket: the fraction of tracked
    /// predictions of the bucket that were read in time, and how many
    /// resolved so far.
    calibration: Vec<(f32, u32)>,
    /// Per scope class.
    scopes: [ScopeFigures; LSTM_SCOPE_CLASSES as usize],
    /// The run source's resolved candidates per bin of the highest
    /// probability the acceptor gave them ([`Tracked::run_top`]): (resolved,
    /// read in time), a bin halved when it passes
    /// `LSTM_RUN_OUTCOMES_PER_BIN` (a moving window per bin: one over all
    /// bins, filled mostly by the unlikely candidates, kept too few of the
    /// likely ones to measure them; msn at 1 MiB shards staged at 46 %
    /// precision with it, 52 % with this).
    run_outcomes: [(f32, f32); LSTM_RUN_CALIBRATION_BINS],
}

/// (scope class, source, step, run) of calibration bucket `b` ([`bucket`]).
fn bucket_parts(b: usize) -> (usize, usize, usize, usize) {
    let rest = b / LSTM_CALIBRATION_CONFIDENCE_BUCKETS;
    let run = rest % LSTM_CALIBRATION_RUN_BUCKETS;
    let rest = rest / LSTM_CALIBRATION_RUN_BUCKETS;
    let step = rest % LSTM_CALIBRATION_STEP_BUCKETS;
    let rest = rest / LSTM_CALIBRATION_STEP_BUCKETS;
    (rest / SOURCES, rest % SOURCES, step, run)
}

impl Gate {
    /// Record a resolved run candidate whose highest probability fell in `bin`.
    fn run_outcome(&mut self, bin: usize, correct: bool) {
        let o = &mut self.run_outcomes[bin];
        o.0 += 1.0;
        o.1 += f32::from(u8::from(correct));
        if o.0 > LSTM_RUN_OUTCOMES_PER_BIN as f32 {
            *o = (o.0 / 2.0, o.1 / 2.0);
        }
    }

    /// A run candidate's calibrated confidence, from the acceptor's
    /// probability `p`: the measured precision of the run candidates whose
    /// highest probability fell in `p`'s bin or above, what staging every
    /// candidate at least as likely gives (0 until
    /// `LSTM_CALIBRATION_MIN_RESOLVED` of them resolved).
    fn run_confidence(&self, p: f32) -> f32 {
        let (n, c) = self.run_outcomes[run_bin(p)..]
            .iter()
            .fold((0.0, 0.0), |a, o| (a.0 + o.0, a.1 + o.1));
        if n >= LSTM_CALIBRATION_MIN_RESOLVED as f32 {
            c / n
        } else {
            0.0
        }
    }

    fn new() -> Gate {
        Gate {
            precision: 1.0,
            resolved: 0,
            gated: 0,
            scopes: Default::default(),
            run_outcomes: [(0.0, 0.0); LSTM_RUN_CALIBRATION_BINS],
            calibration: vec![
                (0.0, 0);
                LSTM_SCOPE_CLASSES as usize
                    * SOURCES
                    * LSTM_CALIBRATION_STEP_BUCKETS
                    * LSTM_CALIBRATION_RUN_BUCKETS
                    * LSTM_CALIBRATION_CONFIDENCE_BUCKETS
            ],
        }
    }

    /// The calibrated confidence of bucket `b`: its measured precision once
    /// `LSTM_CALIBRATION_MIN_RESOLVED` of its candidates resolved, 0 before
    /// (a bucket not measured yet emits nothing).
    fn confidence(&self, b: usize) -> f32 {
        let (p, n) = self.calibration[b];
        if n >= LSTM_CALIBRATION_MIN_RESOLVED {
            p
        } else {
            0.0
        }
    }
}

/// Fold one resolved prediction (`correct` or not) into the estimates.
fn resolve(gate: &mut Gate, st: &mut Stream, t: &Tracked, correct: bool) {
    if let Some(bin) = t.run_top {
        gate.run_outcome(bin, correct);
    }
    let x = if correct { 1.0 } else { 0.0 };
    if let (true, Some(b)) = (t.emitted, t.first_bucket()) {
        let f = &mut gate.scopes[bucket_parts(b).0];
        f.emitted_resolved += 1;
        f.emitted_correct += u64::from(correct);
    }
    for b in t.all_buckets() {
        let (c, n) = &mut gate.calibration[b];
        // The mean of the first ones, then a moving average.
        *n = n.saturating_add(1);
        let w = 1.0 / (*n).min(LSTM_CALIBRATION_AVERAGE_PREDICTIONS) as f32;
        *c += w * (x - *c);
    }
    let w = 1.0 / LSTM_PRECISION_AVERAGE_PREDICTIONS as f32;
    if t.fresh {
        let f = st
            .fresh
            .unwrap_or_else(|| st.precision.unwrap_or(gate.precision));
        st.fresh = Some(f + w * (x - f));
    }
    if !t.counted {
        return;
    }
    if let Some(b) = t.first_bucket() {
        let f = &mut gate.scopes[bucket_parts(b).0];
        f.counted_resolved += 1;
        f.counted_correct += u64::from(correct);
    }
    let p = st.precision.unwrap_or(gate.precision);
    st.precision = Some(p + w * (x - p));
    gate.precision += w * (x - gate.precision);
    gate.resolved += 1;
}

/// The precision of what the stream would stage (ranks the two streams of
/// an event): its fresh estimate, its precision estimate before any fresh
/// candidate resolved, the predictor-wide one before that.
fn stream_estimate(st: &Stream, gate: &Gate) -> f32 {
    st.fresh.or(st.precision).unwrap_or(gate.precision)
}

/// Account for one event of the stream at `clock` (the expiry clock, see
/// [`Tracked::deadline`]): resolve tracked predictions of the shards it
/// reads as correct, expired ones as wrong; teach the acceptor the stream's
/// run judgments whose deadline came (a stream's judgments wait for its
/// next event).
fn observe(
    gate: &mut Gate,
    acceptor: Option<&mut Acceptor>,
    st: &mut Stream,
    ev: &ShardEvent,
    clock: u64,
) {
    st.events += 1;
    if let Some(a) = acceptor {
        st.judged
            .retain_mut(|(shard, deadline, x, was_read, provisional)| {
                let read = ev.op == Op::Read && (ev.shard..=ev.last_shard()).contains(shard);
                if read && *deadline > clock {
                    *was_read = true;
                }
                if *deadline <= clock {
                    if *provisional {
                        a.learn_provisional(*x, *was_read);
                    } else {
                        a.learn(*x, *was_read);
                    }
                    return false;
                }
                true
            });
    }
    let mut done = Vec::new();
    st.tracked.retain(|t| {
        let read = ev.op == Op::Read && (ev.shard..=ev.last_shard()).contains(&t.shard);
        if read || t.deadline <= clock {
            done.push((*t, read));
            return false;
        }
        true
    });
    for (t, read) in &done {
        resolve(gate, st, t, *read);
    }
}

/// Record the run source's judgments among `preds` (of a position whose
/// run context is `ctx`), each labelled once it is read or `deadline` comes
/// (all of them: those the gate withholds and those beyond `depth` too, so
/// the acceptor learns from every probability it gave).
fn judge(
    st: &mut Stream,
    preds: &[Candidate],
    ctx: Option<&RunContext>,
    deadline: u64,
    provisional: bool,
) {
    let Some(ctx) = ctx else {
        return;
    };
    for &(shard, _, step, source) in preds {
        if source != Source::Run {
            continue;
        }
        if st.judged.len() >= LSTM_RUN_JUDGED_MAX {
            st.judged.pop_front();
        }
        st.judged.push_back((
            shard,
            deadline,
            ctx.features(step as u64 + 1),
            false,
            provisional,
        ));
    }
}

/// Calibrated confidence per candidate of one position of a stream of
/// scope class `scope` (raw when not `calibrated`) with the buckets it falls
/// in: one per shard (the most confident), most confident first, at most
/// `depth`.
fn calibrate(
    gate: &Gate,
    calibrated: bool,
    scope: u32,
    run: u32,
    preds: &[Candidate],
    depth: usize,
) -> Vec<Calibrated> {
    let mut cands: Vec<Calibrated> = Vec::with_capacity(preds.len());
    for &(shard, raw, step, source) in preds {
        let b = bucket(scope, source, step, run, raw);
        let confidence = match (calibrated, source) {
            (_, Source::Run) if f64::from(raw) < LSTM_RUN_ACCEPT_MIN => 0.0,
            (_, Source::Run) => gate.run_confidence(raw),
            (true, _) => gate.confidence(b),
            (false, _) => raw,
        };
        let run_p = (source == Source::Run).then_some(raw);
        match cands.iter_mut().find(|c| c.0 == shard) {
            Some(c) => {
                c.1 = c.1.max(confidence);
                c.2[source as usize] = Some(b);
                c.3 = c.3.or(run_p);
            }
            None => {
                let mut bs = [None; SOURCES];
                bs[source as usize] = Some(b);
                cands.push((shard, confidence, bs, run_p));
            }
        }
    }
    cands.sort_by(|a, b| b.1.total_cmp(&a.1));
    cands.truncate(depth);
    cands
}

/// A candidate after calibration: shard, confidence, its bucket per source,
/// the run source's probability (where it named the shard).
type Calibrated = (u64, f32, [Option<usize>; SOURCES], Option<f32>);

/// Track a candidate of the stream until `deadline` (or record its buckets
/// on the shard's tracked entry); `eligible`: it passed calibration.
fn track(
    st: &mut Stream,
    shard: u64,
    buckets: [Option<usize>; SOURCES],
    run_p: Option<f32>,
    eligible: bool,
    deadline: u64,
) {
    // Only the model's and the memory's candidates count towards the
    // stream's precision estimate (the run source has its own).
    let eligible = eligible
        && (buckets[Source::Model as usize].is_some()
            || buckets[Source::Memory as usize].is_some());
    if let Some(t) = st.tracked.iter_mut().find(|t| t.shard == shard) {
        t.add(buckets, run_p);
        t.counted |= eligible;
    } else if st.tracked.len() < LSTM_PRECISION_TRACKED_MAX {
        let mut t = Tracked {
            shard,
            deadline,
            buckets: [None; TRACKED_BUCKETS],
            run_bucket: None,
            run_top: None,
            counted: eligible,
            emitted: false,
            fresh: false,
        };
        t.add(buckets, run_p);
        st.tracked.push_back(t);
    }
}

/// The run of `runs` that `ev` continues is extended, or `ev` starts one in
/// place of the least recent (at most [`LSTM_NEAR_RECENT`] runs): the run's
/// earlier requests. A run is its last shard and its requests so far; `ev`
/// continues it when its first shard is the run's last or the next (in
/// shards, not bytes: a temporary variant with byte offsets on the events
/// found fewer long runs on umass websearch at 64 KiB shards and judged
/// worse, session 11).
fn continue_run(runs: &mut VecDeque<Run>, ev: &ShardEvent, clock: u64) -> u32 {
    let at = runs
        .iter()
        .rposition(|r| ev.shard == r.last || Some(ev.shard) == r.last.checked_add(1));
    let run = match at.and_then(|j| runs.remove(j)) {
        Some(r) => Run {
            last: ev.last_shard().max(r.last),
            requests: r.requests.saturating_add(1),
            bytes: r.bytes.saturating_add(u64::from(ev.bytes)),
            ..r
        },
        None => Run {
            first: ev.shard,
            last: ev.last_shard(),
            requests: 0,
            bytes: u64::from(ev.bytes),
            started: clock,
        },
    };
    if runs.len() >= LSTM_NEAR_RECENT {
        runs.pop_front();
    }
    runs.push_back(run);
    run.requests
}

/// Whether position `r` of a stream's `n` events in a batch is a shadow
/// position: up to `LSTM_SHADOW_POSITIONS_MAX` of the positions before the
/// last, evenly spaced, counted back from the last.
fn shadow_position(n: usize, r: usize) -> bool {
    if r + 1 >= n {
        return false;
    }
    let stride = (n - 1).div_ceil(LSTM_SHADOW_POSITIONS_MAX).max(1);
    (n - 1 - r) % stride == 0
}

/// A position of a stream in a batch whose candidates are computed: the
/// stream (index in the batch), the event's index in the stream's events,
/// the state after it and what the memory recalled there.
struct Position {
    stream: usize,
    at: usize,
    h: Vec<f32>,
    c: Vec<f32>,
    recalled: Option<(f32, Vec<u64>)>,
}

/// Where the starting model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Fresh,
    File(PathBuf),
}

/// The LSTM predictor.
pub struct LstmPredictor {
    cfg: PrefetchConfig,
    opts: LstmOptions,
    model: Model,
    trainer: Option<OnlineTrainer>,
    feat: Featurizer,
    streams: LruMap<StreamKey, Stream>,
    fig: PredictorFigures,
    batch_ns_total: u128,
    due_events: u64,
    since_swap: u32,
    origin: Origin,
    info: TrainInfo,
    gate: Gate,
    /// New input rows of reassigned shard classes.
    rng: ChaCha8Rng,
    /// `[outputs]` bool: output classes that name no shard (OOV, unassigned
    /// slots), left out when picking the most likely classes.
    unnamed: Tensor,
    /// Input events seen (all streams; each event once).
    clock: u64,
    /// Shards probably on the hot tier (None: its size is unknown): the
    /// last `stage_capacity_shards` distinct shards read or predicted.
    /// (The value: staged and not read since.)
    resident: Option<LruMap<ShardKey, bool>>,
    /// Shards touched in that model of the hot tier (see `note_resident`):
    /// with it, a tracked prediction expires when its capacity of shards
    /// were touched since.
    hot_clock: u64,
    /// The run source's network (calibrated predictors only: raw, its
    /// candidates would be emitted whatever it says).
    acceptor: Option<Acceptor>,
    /// When the last event came (ns; the acceptor's global gap).
    last_ts: Option<u64>,
}

/// A lookahead path: (position index, shard before, shard, confidence,
/// next input).
type Path = (usize, u64, u64, f32, EventFeatures);

impl LstmPredictor {
    /// Build from the options (see [`ModelSource`]); sets the intra-op
    /// threads of libtorch (call it in the thread that owns the model).
    pub fn new(cfg: &PrefetchConfig, opts: &LstmOptions) -> Result<Self, LstmError> {
        cfg.validate()
            .map_err(|e| LstmError::Config(e.to_string()))?;
        opts.validate().map_err(LstmError::Config)?;
        tch::set_num_threads(opts.threads as i32);
        let device = pick_device();
        let loaded = match &opts.model {
            ModelSource::Fresh => None,
            ModelSource::File(p) => Some((ModelFile::read(p)?, p.clone())),
            ModelSource::Default => {
                let p = default_model_path();
                match ModelFile::read(&p) {
                    Ok(f) if f.shape == opts.shape => Some((f, p)),
                    Ok(_) | Err(_) => None,
                }
            }
        };
        let (model, vocab, shards, origin, info) = match loaded {
            Some((f, p)) => (
                Model::from_file(&f, device)?,
                f.delta_vocab()?,
                f.shard_vocab()?,
                Origin::File(p),
                f.info,
            ),
            None => (
                Model::new(opts.shape, device, opts.seed),
                DeltaVocab::new(
                    opts.shape.vocab as usize,
                    LSTM_VOCAB_WINDOW_EVENTS,
                    LSTM_VOCAB_MIN_COUNT,
                ),
                ShardVocab::new(
                    opts.shape.shards as usize,
                    LSTM_SHARD_VOCAB_WINDOW_EVENTS,
                    LSTM_VOCAB_MIN_COUNT,
                ),
                Origin::Fresh,
                TrainInfo::default(),
            ),
        };
        let feat = Featurizer::new(vocab, shards, opts.grow_vocab);
        let trainer = if opts.online {
            let mut copy = Model::new(model.net.shape, device, opts.seed);
            copy.copy_from(&model).map_err(crate::torch)?;
            Some(
                OnlineTrainer::new(
                    copy,
                    opts.learning_rate,
                    opts.train_batch as usize,
                    opts.buffer_windows as usize,
                    opts.seed,
                    feat.start(),
                )
                .map_err(crate::torch)?,
            )
        } else {
            None
        };
        let acceptor = if opts.precision_gate > 0.0 {
            Some(Acceptor::new())
        } else {
            None
        };
        Ok(LstmPredictor {
            cfg: *cfg,
            opts: opts.clone(),
            model,
            trainer,
            feat,
            streams: LruMap::new(cfg.streams_max),
            fig: PredictorFigures::default(),
            batch_ns_total: 0,
            due_events: 0,
            since_swap: 0,
            origin,
            info,
            gate: Gate::new(),
            rng: ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5348_4152_4453),
            unnamed: Tensor::new(),
            clock: 0,
            hot_clock: 0,
            acceptor,
            last_ts: None,
            resident: match cfg.stage_capacity_shards {
                0 => None,
                n => Some(LruMap::new(
                    usize::try_from(n).map_or(LSTM_RESIDENT_MAX_SHARDS, |n| {
                        n.min(LSTM_RESIDENT_MAX_SHARDS)
                    }),
                )),
            },
        }
        .with_unnamed())
    }

    /// With [`LstmPredictor::unnamed`] computed from the vocabularies.
    fn with_unnamed(mut self) -> Self {
        self.unnamed = self.unnamed_mask();
        self
    }

    fn unnamed_mask(&self) -> Tensor {
        let shape = self.model.net.shape;
        let mut m = vec![true; shape.outputs()];
        for (c, _) in self.feat.vocab.assignments() {
            m[c as usize] = false;
        }
        for (c, _) in self.feat.shards.assignments() {
            m[shape.shard_output(c)] = false;
        }
        m[shape.repeat_output()] = false;
        Tensor::from_slice(&m).to_device(self.device())
    }

    /// The clock tracked predictions expire by when it is not the events':
    /// the shards touched in the hot tier ([`LstmPredictor::hot_clock`]),
    /// when its size is known.
    fn expiry_base(&self) -> Option<u64> {
        self.resident.as_ref().map(|_| self.hot_clock)
    }

    /// How long the run source's judgments wait for their label, on the
    /// expiry clock: as tracked predictions, except before the acceptor's
    /// first fit: then [`LSTM_ACCEPT_BOOTSTRAP_HORIZON`] at most, so the
    /// first labels come soon and lean to "not read"; the acceptor keeps
    /// them apart and drops them once it has enough of the others
    /// ([`Acceptor::learn_provisional`]). (A run source that
    /// waited a tier's capacity for its first fit left the sequential
    /// continuations unstaged that long, and one that learned reads at once
    /// and misses at the deadline started out staging far too much).
    fn judged_horizon(&self) -> u64 {
        let full = self.deadline_events();
        match &self.acceptor {
            Some(a) if !a.ready() => full.min(LSTM_ACCEPT_BOOTSTRAP_HORIZON),
            _ => full,
        }
    }

    /// How long a tracked prediction has to be read: the hot tier's
    /// capacity in shards touched when it is known ([`Self::expiry_base`]),
    /// else a number of events.
    pub fn deadline_events(&self) -> u64 {
        match self.cfg.stage_capacity_shards {
            0 => LSTM_PRECISION_DEADLINE_EVENTS_PER_DEPTH * u64::from(self.cfg.depth),
            n => n,
        }
    }

    /// The precision gate: predictor-wide estimate, predictions resolved,
    /// predictions withheld.
    pub fn gate_figures(&self) -> (f32, u64, u64) {
        (self.gate.precision, self.gate.resolved, self.gate.gated)
    }

    /// What the predictor did per scope class (region, volume).
    pub fn scope_figures(&self) -> [ScopeFigures; LSTM_SCOPE_CLASSES as usize] {
        self.gate.scopes
    }

    /// Where the starting weights came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The model's shape (the file's when loaded from one).
    pub fn shape(&self) -> ModelShape {
        self.model.net.shape
    }

    pub fn vocab(&self) -> &DeltaVocab {
        &self.feat.vocab
    }

    pub fn shard_vocab(&self) -> &ShardVocab {
        &self.feat.shards
    }

    pub fn device(&self) -> Device {
        self.model.net.device()
    }

    /// The inference weights, vocabularies and training info as a model file.
    pub fn to_file(&self) -> ModelFile {
        let steps = self.trainer.as_ref().map_or(0, |t| t.steps);
        self.model.to_file(
            &self.feat.vocab,
            &self.feat.shards,
            TrainInfo {
                shard_bytes: self.cfg.shard_bytes,
                sequence_length: self.cfg.sequence_length,
                train_steps: self.info.train_steps + steps,
                loss: self.fig.train_loss.unwrap_or(self.info.loss),
            },
        )
    }

    /// The `k` most likely output classes (index, probability) for each of
    /// `tops` (top-layer hidden vectors), most likely first.
    fn top_classes(&self, tops: &[&[f32]], k: usize) -> Vec<Vec<(usize, f32)>> {
        let hidden = self.model.net.shape.hidden as usize;
        let flat: Vec<f32> = tops.iter().flat_map(|t| t.iter().copied()).collect();
        let h = Tensor::from_slice(&flat)
            .view([tops.len() as i64, hidden as i64])
            .to_device(self.device());
        let p = self
            .model
            .net
            .logits(&h)
            .softmax(-1, Kind::Float)
            .masked_fill(&self.unnamed, -1.0);
        let k = k.min(p.size()[1] as usize).max(1);
        let (vals, idx) = p.topk(k as i64, -1, true, true);
        let n = tops.len() * k;
        let mut v = vec![0f32; n];
        let mut ix = vec![0i64; n];
        vals.to_device(Device::Cpu)
            .contiguous()
            .view(-1)
            .copy_data(&mut v, n);
        idx.to_device(Device::Cpu)
            .contiguous()
            .view(-1)
            .copy_data(&mut ix, n);
        (0..tops.len())
            .map(|r| {
                (0..k)
                    .map(|j| (ix[r * k + j] as usize, v[r * k + j]))
                    .collect()
            })
            .collect()
    }

    /// Next-event shards named by output classes `top` of a stream of
    /// `volume` whose last event began at `base`, `last` shards after the
    /// one before it: a delta class names `base + delta`, a shard class its
    /// shard (of this volume), the repeat class `base + last`; the
    /// probabilities of classes naming the same shard add up. Most likely
    /// first; OOV and unassigned classes name nothing.
    fn candidates(
        &self,
        top: &[(usize, f32)],
        base: u64,
        last: Option<i64>,
        volume: u32,
    ) -> Vec<(u64, f32)> {
        let v = self.model.net.shape.vocab as usize;
        let repeat = self.model.net.shape.repeat_output();
        let mut c: Vec<(u64, f32)> = Vec::with_capacity(top.len());
        for &(idx, p) in top {
            let shard = if idx == OOV as usize {
                None
            } else if idx == repeat {
                last.and_then(|d| base.checked_add_signed(d))
            } else if idx <= v {
                self.feat
                    .vocab
                    .delta_of(idx as u32)
                    .and_then(|d| base.checked_add_signed(d))
            } else {
                self.feat
                    .shards
                    .key_of((idx - v) as u32)
                    .filter(|k| k.volume == volume)
                    .map(|k| k.shard)
            };
            if let Some(s) = shard.filter(|_| p >= 0.0) {
                match c.iter_mut().find(|e| e.0 == s) {
                    Some(e) => e.1 += p,
                    None => c.push((s, p)),
                }
            }
        }
        c.sort_by(|a, b| b.1.total_cmp(&a.1));
        c
    }

    /// The input of a hypothetical next event at `next` after one at `pos`
    /// that followed one at `prev` (op, size, gap and scope as `like`; the
    /// nearest recent request taken to be `pos`'s); the vocabularies do not
    /// grow.
    fn input_at(
        &self,
        like: EventFeatures,
        prev: u64,
        pos: u64,
        next: u64,
        volume: u32,
    ) -> EventFeatures {
        let d = shard_delta(pos, next);
        EventFeatures {
            delta: d.map_or(OOV, |d| self.feat.vocab.class_of(d)),
            repeat: repeat_class(shard_delta(prev, pos), d),
            near: near_class(next, &[pos]),
            shard: self.feat.shards.class_of(ShardKey {
                volume,
                shard: next,
            }),
            ..like
        }
    }

    /// One batched step of `feats[i]` for streams with state `h[i]`, `c[i]`.
    fn step_states(
        &self,
        feats: &[EventFeatures],
        h: &mut [&mut Vec<f32>],
        c: &mut [&mut Vec<f32>],
    ) {
        let shape = self.model.net.shape;
        let (layers, hidden) = (i64::from(shape.layers), i64::from(shape.hidden));
        let device = self.device();
        let rows: Vec<&[EventFeatures]> = feats.iter().map(std::slice::from_ref).collect();
        let x = Inputs::from_rows(&rows, device);
        let hs: Vec<&[f32]> = h.iter().map(|v| v.as_slice()).collect();
        let cs: Vec<&[f32]> = c.iter().map(|v| v.as_slice()).collect();
        let h0 = gather_state(&hs, layers, hidden, device);
        let c0 = gather_state(&cs, layers, hidden, device);
        let (h1, c1) = self.model.net.step(&x, &h0, &c0);
        scatter_state(&h1, h);
        scatter_state(&c1, c);
    }

    /// The hot tier after `batch` and the predictions `emitted` for it:
    /// its reads are resident (demand caching), so are the predicted shards
    /// (staged), the least recently used out. The expiry clock
    /// ([`LstmPredictor::hot_clock`]) counts the shards touched: each shard
    /// a read touches, and each predicted shard the tier did not hold,
    /// except the first read of a staged shard (its staging was counted).
    fn note_resident(&mut self, batch: &[ShardEvent], emitted: &[Prediction]) {
        let Some(res) = self.resident.as_mut() else {
            return;
        };
        let mut touched = 0u64;
        for ev in batch.iter().filter(|e| e.op == Op::Read) {
            let n = u64::from(ev.shards.max(1)).min(res.capacity() as u64);
            for shard in ev.shard..ev.shard.saturating_add(n) {
                let k = ShardKey {
                    volume: ev.volume,
                    shard,
                };
                // Resident and no longer staged-unread; touched unless this
                // is a staged shard's first read.
                let staged = std::mem::replace(res.get_or_insert_with(&k, || false), false);
                touched += u64::from(!staged);
            }
        }
        for p in emitted {
            let k = ShardKey {
                volume: p.volume,
                shard: p.shard,
            };
            // Held already: staging skips it, the prediction keeps it
            // recent. Else it is staged.
            if res.get_mut(&k).is_none() {
                touched += 1;
                res.insert(k, true);
            }
        }
        self.hot_clock += touched;
    }

    /// Speakers for the streams whose last read in the batch re-read their
    /// shard after their last model input (`rereads`, see step 1): the run
    /// source's candidates only (the model's were judged at that input).
    /// None uncalibrated.
    /// Streams with a model input in the batch (`slot`) speak from it.
    fn reread_speakers(
        &self,
        rereads: &[(StreamKey, u32, u64)],
        slot: &HashMap<StreamKey, usize>,
    ) -> Vec<Speaker> {
        let Some(acceptor) = self.acceptor.as_ref() else {
            return Vec::new();
        };
        let mut speakers = Vec::with_capacity(rereads.len());
        for &(key, scope, clock) in rereads {
            if scope != Scope::Region.class() || slot.contains_key(&key) {
                continue;
            }
            let Some(st) = self.streams.peek(&key) else {
                continue;
            };
            let mut preds = run_candidates(st.ctx.as_ref(), acceptor);
            if let Some(res) = &self.resident {
                preds.retain(|q| {
                    !res.contains(&ShardKey {
                        volume: key.volume,
                        shard: q.0,
                    })
                });
            }
            speakers.push(Speaker {
                key,
                scope,
                run: st.run(),
                clock,
                preds,
                ctx: st.ctx,
            });
        }
        speakers
    }

    /// Emit what passes of each speaker's candidates, de-duplicated per
    /// stream; track everything. The two streams of one event (its
    /// volume's and its region's, when that event is the last of both in
    /// the batch) speak one at a time: the more precise by what it would
    /// stage first (measured in shadow while withheld), the volume stream
    /// on a tie; where one emits, the other only tracks. Always the volume
    /// stream first made a volume that interleaves steady readers (each
    /// region precise, the volume far less) withhold the regions'
    /// candidates (lstm5's synth-strided miss).
    fn speak(&mut self, speakers: Vec<Speaker>, out: &mut Vec<Prediction>) {
        let calibrated = self.opts.precision_gate > 0.0;
        let gate = self.opts.precision_gate;
        let conf_min = self.cfg.confidence_min;
        let depth = self.cfg.depth as usize;
        let deadline = self.expiry_base().unwrap_or(self.clock) + self.deadline_events();
        let judged_deadline = self.expiry_base().unwrap_or(self.clock) + self.judged_horizon();
        let provisional = self.acceptor.as_ref().is_some_and(|a| !a.ready());
        let volume_scope = Scope::Volume.class();
        let estimates: Vec<f32> = speakers
            .iter()
            .map(|sp| {
                self.streams
                    .peek(&sp.key)
                    .map_or(self.gate.precision, |st| stream_estimate(st, &self.gate))
            })
            .collect();
        let mut order: Vec<usize> = (0..speakers.len()).collect();
        order.sort_by(|&a, &b| {
            estimates[b].total_cmp(&estimates[a]).then_with(|| {
                let volume = |i: usize| speakers[i].scope == volume_scope;
                volume(b).cmp(&volume(a))
            })
        });
        // (volume, clock of the stream's last event) -> the speaker for
        // that event: the first in that order that emitted.
        let mut speaker: HashMap<(u32, u64), usize> = HashMap::new();
        for i in order {
            let sp = &speakers[i];
            let key = &sp.key;
            let st = self.streams.get_or_insert_with(key, Stream::default);
            let start = out.len();
            let scope = sp.scope;
            // A region stream whose last event in the batch came before the
            // volume stream's (another region's event followed) predicts its
            // own continuation: the volume's candidates are about what
            // follows that later event.
            let deferred = speaker
                .get(&(key.volume, sp.clock))
                .is_some_and(|&s| s != i);
            let open =
                !calibrated || (!deferred && st.precision.unwrap_or(self.gate.precision) >= gate);
            judge(st, &sp.preds, sp.ctx.as_ref(), judged_deadline, provisional);
            for (shard, confidence, buckets, run_p) in
                calibrate(&self.gate, calibrated, scope, sp.run, &sp.preds, depth)
            {
                let eligible = confidence >= conf_min && confidence >= gate;
                // The run source's candidates have their own calibration
                // (see `Gate::run_confidence`): neither the stream's
                // precision gate nor the other stream holds them, and
                // they do not count towards the stream's estimates.
                let run = buckets[Source::Run as usize].is_some();
                let open = run || open;
                track(st, shard, buckets, run_p, eligible, deadline);
                if st
                    .recent
                    .iter()
                    .any(|&(r, c)| r == shard && c >= confidence)
                {
                    continue;
                }
                if let Some(t) = st.tracked.iter_mut().find(|t| t.shard == shard) {
                    if eligible && !run {
                        t.fresh = true;
                    }
                }
                let p = Prediction {
                    volume: key.volume,
                    shard,
                    confidence,
                };
                if eligible && open && !push_unique(out, start, p) {
                    continue;
                }
                let sf = &mut self.gate.scopes[scope as usize];
                if eligible && open {
                    sf.emitted += 1;
                    if let Some(b) = buckets.into_iter().flatten().next() {
                        let (_, source, step, run) = bucket_parts(b);
                        sf.by_source[source] += 1;
                        sf.by_step[step] += 1;
                        sf.by_run[run] += 1;
                    }
                    if let Some(t) = st.tracked.iter_mut().find(|t| t.shard == shard) {
                        t.emitted = true;
                    }
                } else if eligible && deferred {
                    sf.deferred += 1;
                } else if eligible {
                    sf.gated += 1;
                }
                if eligible && open && !run {
                    speaker.entry((key.volume, sp.clock)).or_insert(i);
                }
                self.gate.gated += u64::from(eligible && !open);
                st.recent.push_back((shard, confidence));
                if st.recent.len() > 2 * depth {
                    st.recent.pop_front();
                }
            }
        }
    }

    /// After a step: one prediction per shard (the most confident), in
    /// address order (the stager reads runs of neighbouring shards without
    /// seeking); the hot tier's model; the figures of a step that fed
    /// `fed` events to the model (none: no model step, no figures).
    fn finish(
        &mut self,
        batch: &[ShardEvent],
        out: &mut Vec<Prediction>,
        emitted_from: usize,
        fed: usize,
        t0: Instant,
    ) {
        let step_out = &mut out[emitted_from..];
        step_out.sort_by(|a, b| {
            (a.volume, a.shard)
                .cmp(&(b.volume, b.shard))
                .then(b.confidence.total_cmp(&a.confidence))
        });
        let mut kept = emitted_from;
        for j in emitted_from..out.len() {
            if kept > emitted_from
                && (out[kept - 1].volume, out[kept - 1].shard) == (out[j].volume, out[j].shard)
            {
                continue;
            }
            out[kept] = out[j];
            kept += 1;
        }
        out.truncate(kept);
        self.note_resident(batch, &out[emitted_from..]);
        if fed == 0 {
            return;
        }
        self.due_events += fed as u64;
        let ns = t0.elapsed().as_nanos();
        self.fig.batches += 1;
        self.fig.events += fed as u64;
        self.fig.batch_ns_last = ns.min(u128::from(u64::MAX)) as u64;
        self.batch_ns_total += ns;
        self.fig.batch_ns_mean = (self.batch_ns_total / u128::from(self.fig.batches)) as u64;
    }

    fn top<'a>(&self, state_h: &'a [f32]) -> &'a [f32] {
        let hidden = self.model.net.shape.hidden as usize;
        &state_h[state_h.len() - hidden..]
    }

    fn swap(&mut self) {
        if let Some(t) = &self.trainer {
            // VarStore::copy runs under no_grad.
            if self.model.copy_from(&t.model).is_err() {
                self.fig.skipped += 1;
            }
        }
        self.since_swap = 0;
    }

    /// Reset what both copies of the weights learned for vocabulary slots
    /// given a new key since the last step.
    fn reset_reassigned(&mut self) {
        let deltas = self.feat.vocab.take_assigned();
        let shards = self.feat.shards.take_assigned();
        if deltas.is_empty() && shards.is_empty() {
            return;
        }
        for c in deltas {
            self.model.net.reset_output_class(i64::from(c));
            if let Some(t) = &self.trainer {
                t.model.net.reset_output_class(i64::from(c));
            }
        }
        let shape = self.model.net.shape;
        for c in shards {
            let row: Vec<f32> = (0..shape.shard_embed)
                .map(|_| normal(&mut self.rng) as f32)
                .collect();
            let out = shape.shard_output(c) as i64;
            for net in
                std::iter::once(&self.model.net).chain(self.trainer.as_ref().map(|t| &t.model.net))
            {
                net.set_shard_input(i64::from(c), &row);
                net.reset_output_class(out);
            }
        }
        self.unnamed = self.unnamed_mask();
    }
}

impl Predictor for LstmPredictor {
    fn name(&self) -> &'static str {
        "lstm"
    }

    fn step_events_max(&self) -> usize {
        LSTM_LIVE_STEP_EVENTS_MAX
    }

    fn step_events_min(&self) -> usize {
        LSTM_LIVE_STEP_EVENTS_MIN
    }

    /// With the precision gate: once `LSTM_PRECISION_AVERAGE_PREDICTIONS`
    /// tracked candidates resolved (the estimate starts at 1), the
    /// predictor-wide precision is at least the gate.
    fn promising(&self) -> bool {
        let gate = self.opts.precision_gate;
        gate > 0.0
            && self.gate.resolved >= u64::from(LSTM_PRECISION_AVERAGE_PREDICTIONS)
            && self.gate.precision >= gate
    }

    fn step(&mut self, batch: &[ShardEvent], out: &mut Vec<Prediction>) {
        let t0 = Instant::now();
        let _guard = tch::no_grad_guard();
        let state_len = self.model.net.shape.state_floats() / 2;
        // 1. Features, grouped by stream in order of first appearance.
        let mut keys: Vec<StreamKey> = Vec::new();
        let mut per: Vec<Vec<(EventFeatures, ShardEvent)>> = Vec::new();
        // The predictor's clock at each of them, and (stream, position) in
        // batch order: tracked predictions are resolved in that order.
        let mut clocks: Vec<Vec<u64>> = Vec::new();
        // The run length ([`continue_run`]) at each of them.
        let mut runs: Vec<Vec<u32>> = Vec::new();
        // A region stream's run context there (the run source's).
        let mut run_ctx: Vec<Vec<Option<RunContext>>> = Vec::new();
        // Streams whose last read in the batch re-read their shard: (stream,
        // scope class, clock), in order of first appearance. Such a read is
        // no model input, but the run source judges the run again there.
        let mut rereads: Vec<(StreamKey, u32, u64)> = Vec::new();
        let mut seq: Vec<(usize, usize)> = Vec::new();
        // Each stream's first shard before this batch (the memory's context).
        let mut before: Vec<Option<u64>> = Vec::new();
        let mut slot: HashMap<StreamKey, usize> = HashMap::new();
        for ev in batch {
            if op_class(ev.op).is_some() {
                self.clock += 1;
            }
            let global_gap_ns = ev.ts_ns.saturating_sub(self.last_ts.unwrap_or(ev.ts_ns));
            self.last_ts = Some(ev.ts_ns);
            let shard = self.feat.shard_class(ev);
            for (key, scope) in stream_keys(&self.cfg, ev, self.opts.streams)
                .into_iter()
                .flatten()
            {
                let st = self.streams.get_or_insert_with(&key, Stream::default);
                let last = st.fs.last_shard();
                if op_class(ev.op).is_some() {
                    // Re-reads of the stream's shard too: no model input
                    // (see the features), but the run goes on.
                    continue_run(&mut st.runs, ev, self.clock);
                    let stream_gap_ns = ev.ts_ns.saturating_sub(st.last_ts.unwrap_or(ev.ts_ns));
                    st.last_ts = Some(ev.ts_ns);
                    if let (Op::Read, Scope::Region, Some(r)) = (ev.op, scope, st.runs.back()) {
                        st.ctx = Some(RunContext {
                            last: r.last,
                            requests: r.requests,
                            shards: r.last - r.first + 1,
                            bytes: r.bytes,
                            end_eighths: ev.end_eighths,
                            request_bytes: ev.bytes,
                            stream_gap_ns,
                            global_gap_ns,
                            age_events: self.clock - r.started,
                        });
                    }
                }
                let Some(f) = self.feat.features(&mut st.fs, ev, shard, scope) else {
                    if ev.op == Op::Read {
                        match rereads.iter_mut().find(|r| r.0 == key) {
                            Some(r) => r.2 = self.clock,
                            None => rereads.push((key, scope.class(), self.clock)),
                        }
                    }
                    continue;
                };
                // A later model input of the stream speaks for it.
                rereads.retain(|r| r.0 != key);
                let i = *slot.entry(key).or_insert_with(|| {
                    keys.push(key);
                    per.push(Vec::new());
                    clocks.push(Vec::new());
                    runs.push(Vec::new());
                    run_ctx.push(Vec::new());
                    before.push(last);
                    keys.len() - 1
                });
                seq.push((i, per[i].len()));
                per[i].push((f, *ev));
                clocks[i].push(self.clock);
                runs[i].push(st.run());
                run_ctx[i].push(st.ctx);
            }
        }
        self.reset_reassigned();
        if keys.is_empty() {
            let emitted_from = out.len();
            let speakers = self.reread_speakers(&rereads, &slot);
            self.speak(speakers, out);
            self.finish(batch, out, emitted_from, 0, t0);
            return;
        }
        let fed: usize = per.iter().map(Vec::len).sum();
        // 2. Rounds of batched steps over the streams' states.
        let mut hs: Vec<Vec<f32>> = Vec::with_capacity(keys.len());
        let mut cs: Vec<Vec<f32>> = Vec::with_capacity(keys.len());
        for k in &keys {
            let st = self.streams.get_or_insert_with(k, Stream::default);
            let fresh = vec![0f32; state_len];
            hs.push(if st.h.len() == state_len {
                st.h.clone()
            } else {
                fresh.clone()
            });
            cs.push(if st.c.len() == state_len {
                st.c.clone()
            } else {
                fresh
            });
        }
        let window = self.cfg.sequence_length as usize + 1;
        let rounds = per.iter().map(Vec::len).max().unwrap_or(0);
        let calibrated = self.opts.precision_gate > 0.0;
        let depth = self.cfg.depth as usize;
        let hidden = self.model.net.shape.hidden as usize;
        // Positions whose candidates are computed: each stream's last (they
        // are emitted) and, calibrated, up to `LSTM_SHADOW_POSITIONS_MAX`
        // earlier ones (tracked in shadow: calibration and the precision
        // estimates learn from every event, not once per batch).
        let mut positions: Vec<Position> = Vec::new();
        let mut position_of: HashMap<(usize, usize), usize> = HashMap::new();
        for r in 0..rounds {
            let active: Vec<usize> = (0..keys.len()).filter(|&i| per[i].len() > r).collect();
            if self.trainer.is_some() {
                for &i in &active {
                    let st = self.streams.get_or_insert_with(&keys[i], Stream::default);
                    if st.pending.is_empty() {
                        st.h0 = hs[i].clone();
                        st.c0 = cs[i].clone();
                    }
                    st.pending.push(per[i][r].0);
                }
            }
            if self.opts.memory_entries > 0 {
                // A volume stream remembers its context before each event
                // (none before its first: not stored) and the event's shard.
                let (hidden, entries) = (
                    self.model.net.shape.hidden as usize,
                    self.opts.memory_entries as usize,
                );
                let device = self.device();
                for &i in &active {
                    let (f, ev) = per[i][r];
                    if f.scope != Scope::Volume.class() {
                        continue;
                    }
                    let state = &hs[i][hs[i].len() - hidden..];
                    let at = if r == 0 {
                        before[i]
                    } else {
                        Some(per[i][r - 1].1.shard)
                    };
                    let st = self.streams.get_or_insert_with(&keys[i], Stream::default);
                    let m = st
                        .memory
                        .get_or_insert_with(|| StateMemory::new(entries, hidden, device));
                    if let Some(at) = at {
                        let at = ShardKey {
                            volume: ev.volume,
                            shard: at,
                        };
                        m.insert(state, at, ev.shard);
                    }
                }
            }
            let feats: Vec<EventFeatures> = active.iter().map(|&i| per[i][r].0).collect();
            {
                let mut hm: Vec<&mut Vec<f32>> = hs
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| per[*i].len() > r)
                    .map(|(_, v)| v)
                    .collect();
                let mut cm: Vec<&mut Vec<f32>> = cs
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| per[*i].len() > r)
                    .map(|(_, v)| v)
                    .collect();
                self.step_states(&feats, &mut hm, &mut cm);
            }
            for &i in &active {
                let n = per[i].len();
                if r + 1 != n && !(calibrated && shadow_position(n, r)) {
                    continue;
                }
                // The memory as of this event (later events of the batch
                // are not in it yet).
                let recalled = if calibrated {
                    let st = self.streams.get_or_insert_with(&keys[i], Stream::default);
                    let at = ShardKey {
                        volume: keys[i].volume,
                        shard: per[i][r].1.shard,
                    };
                    let top_h = &hs[i][hs[i].len() - hidden..];
                    st.memory.as_ref().and_then(|m| m.recall(top_h, at, depth))
                } else {
                    None
                };
                position_of.insert((i, r), positions.len());
                positions.push(Position {
                    stream: i,
                    at: r,
                    h: hs[i].clone(),
                    c: cs[i].clone(),
                    recalled,
                });
            }
            if let Some(tr) = self.trainer.as_mut() {
                for &i in &active {
                    let st = self.streams.get_or_insert_with(&keys[i], Stream::default);
                    if st.pending.len() >= window {
                        tr.push(Window {
                            events: std::mem::take(&mut st.pending),
                            h0: std::mem::take(&mut st.h0),
                            c0: std::mem::take(&mut st.c0),
                        });
                    }
                }
            }
        }
        // 3. The most likely classes at each position.
        let k = LSTM_CANDIDATE_CLASSES_PER_DEPTH * depth;
        let top = {
            let tops: Vec<&[f32]> = positions.iter().map(|p| self.top(&p.h)).collect();
            self.top_classes(&tops, k)
        };
        // 4. Candidates: the most likely next shards, then the most likely
        // path; (shard, raw confidence, steps along the path).
        let conf_min = self.cfg.confidence_min;
        // Calibrated, weaker candidates are tracked too (their bucket's
        // measured precision decides); raw, the threshold decides.
        let floor = if calibrated {
            LSTM_TRACK_CONFIDENCE_MIN.min(conf_min)
        } else {
            conf_min
        };
        let mut preds: Vec<Vec<Candidate>> = vec![Vec::new(); positions.len()];
        let mut paths: Vec<Path> = Vec::new();
        let mut ph: Vec<Vec<f32>> = Vec::new();
        let mut pc: Vec<Vec<f32>> = Vec::new();
        let start = self.feat.start();
        let add = |preds: &mut Vec<Candidate>, first: u64, width: u32, p: f32, step| {
            for s in first..first.saturating_add(u64::from(width)) {
                let model = preds.iter().filter(|q| q.3 == Source::Model).count();
                if model < depth && !preds.iter().any(|q| q.0 == s && q.3 == Source::Model) {
                    preds.push((s, p, step, Source::Model));
                }
            }
        };
        for (x, position) in positions.iter_mut().enumerate() {
            let i = position.stream;
            let (last_f, last_ev) = per[i][position.at];
            if last_f.delta == start {
                // A stream's first event says nothing about where it goes.
                continue;
            }
            let width = last_ev.shards.max(1);
            if let Some((margin, next)) = position.recalled.take() {
                for (j, &s) in next.iter().enumerate() {
                    if !preds[x].iter().any(|q| q.0 == s && q.3 == Source::Memory) {
                        preds[x].push((s, margin, j, Source::Memory));
                    }
                }
            }
            // The shard before this event in the stream (its delta is what
            // the repeat class repeats).
            let prev = if position.at > 0 {
                Some(per[i][position.at - 1].1.shard)
            } else {
                before[i]
            };
            let last = prev.and_then(|p| shard_delta(p, last_ev.shard));
            let cands = self.candidates(&top[x], last_ev.shard, last, keys[i].volume);
            for &(pos, p) in cands.iter().take(depth) {
                if p < floor {
                    break;
                }
                add(&mut preds[x], pos, width, p, 0);
            }
            if let Some(&(pos, p)) = cands.first() {
                let model = preds[x].iter().filter(|q| q.3 == Source::Model).count();
                if p >= floor && self.opts.lookahead > 0 && model < depth {
                    let next = self.input_at(
                        last_f,
                        prev.unwrap_or(last_ev.shard),
                        last_ev.shard,
                        pos,
                        keys[i].volume,
                    );
                    paths.push((x, last_ev.shard, pos, p, next));
                    ph.push(position.h.clone());
                    pc.push(position.c.clone());
                }
            }
        }
        for step in 1..=self.opts.lookahead as usize {
            if paths.is_empty() {
                break;
            }
            let feats: Vec<EventFeatures> = paths.iter().map(|p| p.4).collect();
            {
                let mut hm: Vec<&mut Vec<f32>> = ph.iter_mut().collect();
                let mut cm: Vec<&mut Vec<f32>> = pc.iter_mut().collect();
                self.step_states(&feats, &mut hm, &mut cm);
            }
            let pt = {
                let tops: Vec<&[f32]> = ph.iter().map(|h| self.top(h)).collect();
                self.top_classes(&tops, k)
            };
            let mut keep = vec![false; paths.len()];
            for (j, path) in paths.iter_mut().enumerate() {
                let (x, before_pos, pos, conf, like) = *path;
                let i = positions[x].stream;
                let width = per[i][positions[x].at].1.shards.max(1);
                let last = shard_delta(before_pos, pos);
                let Some(&(next, p)) = self.candidates(&pt[j], pos, last, keys[i].volume).first()
                else {
                    continue;
                };
                let conf = conf * p;
                // Raw, the path stops below the threshold. Calibrated, it
                // goes on while each step is itself likely enough: a weak
                // product far ahead may still be read in time, and its
                // bucket measures how often.
                if (calibrated && p < floor) || (!calibrated && conf < floor) {
                    continue;
                }
                add(&mut preds[x], next, width, conf, step);
                *path = (
                    x,
                    pos,
                    next,
                    conf,
                    self.input_at(like, before_pos, pos, next, keys[i].volume),
                );
                keep[j] = preds[x].iter().filter(|q| q.3 == Source::Model).count() < depth;
            }
            let mut j = 0;
            paths.retain(|_| {
                j += 1;
                keep[j - 1]
            });
            let mut j = 0;
            ph.retain(|_| {
                j += 1;
                keep[j - 1]
            });
            let mut j = 0;
            pc.retain(|_| {
                j += 1;
                keep[j - 1]
            });
        }
        // 4a. The run source's candidates (with the acceptor, which
        // calibrated predictors have): in a region stream, at its last
        // position from its run now (re-reads later in the batch included),
        // at a shadow position from its run then. The sequential
        // continuation of a read is the run source's: the model's and the
        // memory's candidates naming the `LSTM_RUN_CANDIDATES` shards after
        // it, and the model's further along a path of +1 steps (the shard
        // `k + 1` after it at step `k`), are dropped, at a volume position
        // too where region streams are followed. The acceptor judges these
        // from the reads the model does not see; on umass websearch at
        // 64 KiB shards keeping the model's made the LSTM stage 4 % more at
        // 49.6 % precision instead of 51.7 % (session 13). Until the
        // acceptor's first fit (its labels come at their deadlines) the
        // model keeps them: synth-sequential at 64 KiB shards lost 12 points
        // of hit ratio in that wait.
        if let Some(acceptor) = self.acceptor.as_ref() {
            let regions = self.opts.streams != Streams::Volume;
            for (x, position) in positions.iter().enumerate() {
                let i = position.stream;
                let (f, ev) = &per[i][position.at];
                let region = f.scope == Scope::Region.class();
                let ctx = if !region {
                    None
                } else if position.at + 1 == per[i].len() {
                    self.streams.peek(&keys[i]).and_then(|st| st.ctx)
                } else {
                    run_ctx[i][position.at]
                };
                let last = match ctx {
                    _ if !acceptor.ready() => None,
                    Some(c) => Some(c.last),
                    None if regions && ev.op == Op::Read => Some(ev.last_shard()),
                    None => None,
                };
                if let Some(last) = last {
                    preds[x].retain(|&(shard, _, step, source)| {
                        let ahead = shard.saturating_sub(last);
                        shard <= last
                            || (ahead > LSTM_RUN_CANDIDATES
                                && !(source == Source::Model && ahead == step as u64 + 1))
                    });
                }
                preds[x].extend(run_candidates(ctx.as_ref(), acceptor));
            }
        }
        // 4b. Candidates the hot tier probably holds already (read or
        // predicted lately, or read in this batch up to the position) are
        // neither emitted nor tracked: staging skips them, so calibration
        // and the precision estimates measure what would be staged.
        if let Some(res) = &self.resident {
            let mut read_at: HashMap<ShardKey, u64> = HashMap::new();
            let mut clock =
                self.clock - batch.iter().filter(|e| op_class(e.op).is_some()).count() as u64;
            for ev in batch {
                if op_class(ev.op).is_none() {
                    continue;
                }
                clock += 1;
                if ev.op == Op::Read {
                    for shard in ev.shard..=ev.last_shard() {
                        read_at
                            .entry(ShardKey {
                                volume: ev.volume,
                                shard,
                            })
                            .or_insert(clock);
                    }
                }
            }
            for (x, position) in positions.iter().enumerate() {
                let (i, at) = (position.stream, position.at);
                let (volume, now) = (keys[i].volume, clocks[i][at]);
                preds[x].retain(|q| {
                    let k = ShardKey { volume, shard: q.0 };
                    !res.contains(&k) && read_at.get(&k).is_none_or(|&c| c > now)
                });
            }
        }
        // 5. In batch order, each event resolves its stream's tracked
        // predictions (as of its own clock), then a shadow position's
        // candidates are tracked (never emitted).
        let gate = self.opts.precision_gate;
        let deadline_events = self.deadline_events();
        let judged_horizon = self.judged_horizon();
        let provisional = self.acceptor.as_ref().is_some_and(|a| !a.ready());
        let base = self.expiry_base();
        for &(i, r) in &seq {
            let st = self.streams.get_or_insert_with(&keys[i], Stream::default);
            let now = base.unwrap_or(clocks[i][r]);
            observe(
                &mut self.gate,
                self.acceptor.as_mut(),
                st,
                &per[i][r].1,
                now,
            );
            if r + 1 == per[i].len() {
                continue;
            }
            let Some(&x) = position_of.get(&(i, r)) else {
                continue;
            };
            let scope = per[i][r].0.scope;
            judge(
                st,
                &preds[x],
                run_ctx[i][r].as_ref(),
                now + judged_horizon,
                provisional,
            );
            for (shard, confidence, buckets, run_p) in
                calibrate(&self.gate, calibrated, scope, runs[i][r], &preds[x], depth)
            {
                let eligible = confidence >= conf_min && confidence >= gate;
                track(st, shard, buckets, run_p, eligible, now + deadline_events);
            }
        }
        // 6. Store the states; the streams speak from their last position
        // (see [`Self::speak`]).
        let emitted_from = out.len();
        let mut speakers: Vec<Speaker> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let st = self.streams.get_or_insert_with(key, Stream::default);
            st.h = std::mem::take(&mut hs[i]);
            st.c = std::mem::take(&mut cs[i]);
            let scope = per[i].last().map_or(0, |e| e.0.scope);
            let x = position_of[&(i, per[i].len() - 1)];
            speakers.push(Speaker {
                key: *key,
                scope,
                run: st.run(),
                clock: clocks[i].last().copied().unwrap_or(self.clock),
                preds: std::mem::take(&mut preds[x]),
                ctx: st.ctx,
            });
        }
        speakers.extend(self.reread_speakers(&rereads, &slot));
        self.speak(speakers, out);
        self.finish(batch, out, emitted_from, fed, t0);
    }

    fn background(&mut self, budget: Duration) -> bool {
        if budget.is_zero() {
            return false;
        }
        let mut did = self.acceptor.as_mut().is_some_and(Acceptor::train);
        if self.trainer.is_none() {
            return did;
        }
        let interval = u64::from(self.opts.train_interval_events);
        let mut due = self.due_events / interval;
        self.due_events %= interval;
        if due == 0 {
            return did;
        }
        if due > LSTM_TRAIN_BACKLOG_MAX_STEPS {
            self.fig.skipped += due - LSTM_TRAIN_BACKLOG_MAX_STEPS;
            due = LSTM_TRAIN_BACKLOG_MAX_STEPS;
        }
        let t0 = Instant::now();
        for k in 0..due {
            if k > 0 && t0.elapsed() >= budget {
                self.fig.skipped += due - k;
                break;
            }
            let Some(loss) = self.trainer.as_mut().and_then(OnlineTrainer::step) else {
                break;
            };
            did = true;
            self.fig.train_steps += 1;
            self.fig.train_loss = Some(loss);
            self.since_swap += 1;
            if self.since_swap >= self.opts.swap_interval_steps {
                self.swap();
            }
        }
        did
    }

    fn figures(&self) -> PredictorFigures {
        let mut f = self.fig.clone();
        if let Some(a) = &self.acceptor {
            f.helper_jobs = a.fits;
            f.helper_cpu_ns = u64::try_from(a.fit_total.as_nanos()).unwrap_or(u64::MAX);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use shardblk::prefetch::lstm::config::Streams;
    use shardblk::prefetch::markov::Markov;
    use shardblk::prefetch::readahead::Readahead;
    use shardblk::prefetch::stride::Stride;
    use shardblk::trace::Op;

    const SHARD: u64 = 1 << 16;

    fn cfg() -> PrefetchConfig {
        PrefetchConfig {
            shard_bytes: SHARD,
            depth: 4,
            confidence_min: 0.05,
            sequence_length: 16,
            ..Default::default()
        }
    }

    fn small() -> LstmOptions {
        LstmOptions {
            shape: ModelShape {
                vocab: 128,
                hidden: 48,
                layers: 1,
                delta_embed: 16,
                aux_embed: 2,
                shards: 256,
                shard_embed: 16,
            },
            model: ModelSource::Fresh,
            learning_rate: 1e-2,
            train_interval_events: 4,
            train_batch: 16,
            buffer_windows: 256,
            swap_interval_steps: 2,
            lookahead: 0,
            seed: 5,
            ..Default::default()
        }
    }

    /// The options without calibration or memory: emitted confidences are
    /// the network's own probabilities.
    fn raw(o: LstmOptions) -> LstmOptions {
        LstmOptions {
            precision_gate: 0.0,
            memory_entries: 0,
            ..o
        }
    }

    /// A random permutation of `n` shards in one region, replayed `times` times.
    fn replayed_permutation(seed: u64, n: u64, times: usize) -> Vec<ShardEvent> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut perm: Vec<u64> = (1000..1000 + n).collect();
        perm.shuffle(&mut rng);
        let mut t = 0;
        (0..times)
            .flat_map(|_| perm.clone())
            .map(|shard| {
                t += 1_000_000;
                ShardEvent {
                    ts_ns: t,
                    volume: 0,
                    op: Op::Read,
                    shard,
                    shards: 1,
                    end_eighths: 8,
                    bytes: 4096,
                }
            })
            .collect()
    }

    /// Top-1 and top-k accuracy over the events from `from` on: was event
    /// `i` the best (any) prediction made right after event `i - 1`?
    fn accuracy(p: &mut dyn Predictor, ev: &[ShardEvent], from: usize) -> (f64, f64) {
        let (mut top1, mut topk, mut n) = (0, 0, 0);
        let mut prev: Vec<Prediction> = Vec::new();
        for (i, e) in ev.iter().enumerate() {
            if i >= from {
                n += 1;
                let best = prev
                    .iter()
                    .max_by(|a, b| a.confidence.total_cmp(&b.confidence));
                top1 += usize::from(best.is_some_and(|b| b.shard == e.shard));
                topk += usize::from(prev.iter().any(|q| q.shard == e.shard));
            }
            prev.clear();
            p.step(std::slice::from_ref(e), &mut prev);
            p.background(Duration::from_secs(1));
        }
        (top1 as f64 / n as f64, topk as f64 / n as f64)
    }

    /// The fraction of events from `from` on whose shard was predicted within
    /// the `within` steps before (a calibrated predictor stages a shard
    /// once, as early as it is sure enough, not again right before).
    fn staged_in_time(p: &mut dyn Predictor, ev: &[ShardEvent], from: usize, within: usize) -> f64 {
        let mut recent: VecDeque<Vec<u64>> = VecDeque::new();
        let (mut hit, mut n) = (0, 0);
        let mut out = Vec::new();
        for (i, e) in ev.iter().enumerate() {
            if i >= from {
                n += 1;
                hit += usize::from(recent.iter().flatten().any(|&s| s == e.shard));
            }
            out.clear();
            p.step(std::slice::from_ref(e), &mut out);
            p.background(Duration::from_secs(1));
            recent.push_back(out.iter().map(|q| q.shard).collect());
            if recent.len() > within {
                recent.pop_front();
            }
        }
        hit as f64 / n as f64
    }

    /// Emitted predictions and the fraction of them read within the next
    /// `horizon` events.
    fn emitted_precision(p: &mut dyn Predictor, ev: &[ShardEvent], horizon: usize) -> (usize, f64) {
        let (mut emitted, mut correct) = (0, 0);
        let mut out = Vec::new();
        for (i, e) in ev.iter().enumerate() {
            out.clear();
            p.step(std::slice::from_ref(e), &mut out);
            p.background(Duration::from_secs(1));
            let next = &ev[(i + 1).min(ev.len())..(i + 1 + horizon).min(ev.len())];
            emitted += out.len();
            correct += out
                .iter()
                .filter(|q| next.iter().any(|n| n.shard == q.shard))
                .count();
        }
        (emitted, correct as f64 / emitted.max(1) as f64)
    }

    #[test]
    fn precision_gate_withholds_predictions_of_an_unpredictable_stream() {
        let seed = 33;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ev: Vec<ShardEvent> = (0..600u64)
            .map(|i| ShardEvent {
                ts_ns: i * 1_000_000,
                volume: 0,
                op: Op::Read,
                shard: 2000 + rand::Rng::random_range(&mut rng, 0..64u64),
                shards: 1,
                end_eighths: 8,
                bytes: 4096,
            })
            .collect();
        // A hot tier of 8 shards: a random shard of the 64 is read within
        // 8 events about 12 % of the time.
        let cfg = PrefetchConfig {
            confidence_min: 0.0,
            stage_capacity_shards: 8,
            ..cfg()
        };
        let horizon = cfg.stage_capacity_shards as usize;
        let run = |gate: f32| {
            let opts = LstmOptions {
                online: false,
                precision_gate: gate,
                ..small()
            };
            let mut p = LstmPredictor::new(&cfg, &opts).unwrap();
            let (n, prec) = emitted_precision(&mut p, &ev, horizon);
            (n, prec, p.gate_figures())
        };
        let (n_off, prec_off, _) = run(0.0);
        let (n_on, prec_on, (estimate, resolved, gated)) = run(0.5);
        eprintln!(
            "seed {seed}: ungated {n_off} predictions at {prec_off:.3}; gated {n_on} at {prec_on:.3}, estimate {estimate:.3}, {resolved} resolved, {gated} withheld"
        );
        assert!(n_off > 1000 && prec_off < 0.3, "seed {seed}");
        // Calibration finds every bucket below the gate: next to nothing
        // passes, and what does is no worse.
        assert!(n_on * 10 < n_off, "seed {seed}: {n_on} vs {n_off}");
        assert!(n_on == 0 || prec_on >= prec_off, "seed {seed}");
        assert!(LstmPredictor::new(
            &cfg,
            &LstmOptions {
                precision_gate: 1.5,
                ..small()
            }
        )
        .is_err());
    }

    /// The network's raw next-event probabilities (no gate, no memory) name
    /// the next read; the default predictor (calibrated, with its memory)
    /// stages it.
    #[test]
    fn learns_a_repeated_permutation_that_baselines_cannot() {
        let seed = 21;
        let n = 40;
        let ev = replayed_permutation(seed, n, 30);
        let from = ev.len() - 5 * n as usize;
        let mut lstm = LstmPredictor::new(&cfg(), &raw(small())).unwrap();
        let (l1, lk) = accuracy(&mut lstm, &ev, from);
        let dk = staged_in_time(
            &mut LstmPredictor::new(&cfg(), &small()).unwrap(),
            &ev,
            from,
            cfg().depth as usize,
        );
        assert!(
            dk > 0.9,
            "seed {seed}: default predictor staged {dk} in time"
        );
        let (r1, rk) = accuracy(&mut Readahead::new(&cfg()), &ev, from);
        let (s1, sk) = accuracy(&mut Stride::new(&cfg()), &ev, from);
        let chance = 1.0 / n as f64;
        let fig = lstm.figures();
        eprintln!(
            "seed {seed}: lstm top1 {l1:.3} top{} {lk:.3}; readahead {r1:.3}/{rk:.3}; stride {s1:.3}/{sk:.3}; chance {chance:.3}; {fig:?}",
            cfg().depth
        );
        assert!(
            l1 > 10.0 * chance && l1 > 0.5,
            "seed {seed}: lstm top-1 {l1}"
        );
        assert!(lk >= l1);
        for (name, b) in [("readahead", rk), ("stride", sk)] {
            assert!(l1 > b + 0.4, "seed {seed}: lstm {l1} vs {name} {b}");
        }
        assert!(fig.train_steps > 100 && fig.train_loss.is_some_and(|l| l < 2.0));
        assert_eq!(lstm.vocab().len() as u64, lstm.vocab().grown());
    }

    /// `files` runs of `len` consecutive shards each at random places over
    /// 64 GiB of 64 KiB shards, read in the same order `times` times.
    fn replayed_files(seed: u64, files: usize, len: u64, times: usize) -> Vec<ShardEvent> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let starts: Vec<u64> = (0..files)
            .map(|_| rand::Rng::random_range(&mut rng, 0..(1u64 << 20) - len))
            .collect();
        let mut t = 0;
        (0..times)
            .flat_map(|_| starts.clone())
            .flat_map(|s| s..s + len)
            .map(|shard| {
                t += 1_000_000;
                ShardEvent {
                    ts_ns: t,
                    volume: 0,
                    op: Op::Read,
                    shard,
                    shards: 1,
                    end_eighths: 8,
                    bytes: 4096,
                }
            })
            .collect()
    }

    /// Files of 4 shards at random places, replayed: inside a file the next
    /// shard is +1, but the jump out of a file's last shard is one of 40
    /// distinct deltas (more than an 8-class delta vocabulary holds), and
    /// the Markov baseline's delta context there, (+1, +1), is the same at
    /// every file's end. Shard classes name the jump's target whatever its
    /// delta: the model learns the jumps, which neither the delta-only
    /// model nor Markov can.
    #[test]
    fn shard_classes_learn_jumps_that_delta_classes_cannot() {
        let seed = 8;
        let (files, len) = (40, 4u64);
        let ev = replayed_files(seed, files, len, 20);
        let from = ev.len() - 5 * files * len as usize;
        // One stream per volume: the files lie in many address regions.
        // Raw probabilities: what the network learned, without the memory.
        let tiny_deltas = |shards: u32| {
            raw(LstmOptions {
                shape: ModelShape {
                    vocab: 8,
                    shards,
                    ..small().shape
                },
                streams: Streams::Volume,
                ..small()
            })
        };
        let jumps = |p: &mut dyn Predictor| {
            // Top-1 accuracy on file starts only (the jumps) and overall.
            let (mut jump_hits, mut jumps, mut hits, mut n) = (0, 0, 0, 0);
            let mut prev: Vec<Prediction> = Vec::new();
            for (i, e) in ev.iter().enumerate() {
                if i >= from {
                    let best = prev
                        .iter()
                        .max_by(|a, b| a.confidence.total_cmp(&b.confidence))
                        .is_some_and(|b| b.shard == e.shard);
                    n += 1;
                    hits += usize::from(best);
                    if i % len as usize == 0 {
                        jumps += 1;
                        jump_hits += usize::from(best);
                    }
                }
                prev.clear();
                p.step(std::slice::from_ref(e), &mut prev);
                p.background(Duration::from_secs(1));
            }
            (jump_hits as f64 / jumps as f64, hits as f64 / n as f64)
        };
        let mut with = LstmPredictor::new(&cfg(), &tiny_deltas(256)).unwrap();
        let (lj, l1) = jumps(&mut with);
        let (dj, d1) = jumps(&mut LstmPredictor::new(&cfg(), &tiny_deltas(0)).unwrap());
        let (mj, m1) = jumps(&mut Markov::new(&cfg()));
        let chance = 1.0 / files as f64;
        eprintln!(
            "seed {seed}: jumps / all top-1: lstm with shard classes {lj:.3} / {l1:.3}, delta-only {dj:.3} / {d1:.3}, markov {mj:.3} / {m1:.3}; chance {chance:.3}; {} shard classes",
            with.shard_vocab().len()
        );
        assert!(
            lj > 0.6 && lj > 10.0 * chance,
            "seed {seed}: lstm jumps {lj}"
        );
        // The delta-only model can hold at most 7 of the 40 jump deltas at a time.
        assert!(
            dj < 7.0 / files as f64 + 0.05 && mj < 0.05,
            "seed {seed}: delta-only {dj}, markov {mj}"
        );
        assert!(
            l1 > m1 + 0.1 && l1 > d1 + 0.1,
            "seed {seed}: {l1} vs {m1}, {d1}"
        );
    }

    /// The memory makes a replayed pattern one-shot: by the fourth run of
    /// files at random places (jumps the network has had little time to
    /// learn) the volume stream recalls what followed each of its contexts
    /// and stages the jumps' targets; without the memory it does not yet.
    #[test]
    fn memory_recalls_a_replayed_pattern_within_a_few_runs() {
        let seed = 13;
        let (files, len) = (60, 3u64);
        let per_run = files * len as usize;
        let ev = replayed_files(seed, files, len, 4);
        let from = ev.len() - per_run;
        let run = |memory_entries: u32| {
            let mut p = LstmPredictor::new(
                &cfg(),
                &LstmOptions {
                    memory_entries,
                    streams: Streams::Volume,
                    ..small()
                },
            )
            .unwrap();
            // Coverage of the last run's jumps: a file's first shard was
            // predicted during the previous two files' events.
            let (mut covered, mut jumps) = (0, 0);
            let mut since: VecDeque<(usize, u64)> = VecDeque::new();
            let mut out = Vec::new();
            for (i, e) in ev.iter().enumerate() {
                while since.front().is_some_and(|f| f.0 + 2 * (len as usize) < i) {
                    since.pop_front();
                }
                if i >= from && i % len as usize == 0 {
                    jumps += 1;
                    covered += usize::from(since.iter().any(|f| f.1 == e.shard));
                }
                out.clear();
                p.step(std::slice::from_ref(e), &mut out);
                p.background(Duration::from_secs(1));
                since.extend(out.iter().map(|q| (i, q.shard)));
            }
            covered as f64 / jumps as f64
        };
        let (with, without) = (run(4096), run(0));
        eprintln!("seed {seed}: last run's jumps staged: memory {with:.3}, none {without:.3}");
        assert!(with > 0.7, "seed {seed}: {with}");
        assert!(with > without + 0.5, "seed {seed}: {with} vs {without}");
    }

    #[test]
    fn runs_are_followed_in_requests() {
        let ev = |shard: u64, shards: u32| ShardEvent {
            ts_ns: 0,
            volume: 0,
            op: Op::Read,
            shard,
            shards,
            end_eighths: 8,
            bytes: 4096,
        };
        let mut runs = VecDeque::new();
        assert_eq!(continue_run(&mut runs, &ev(10, 1), 7), 0, "a new run");
        assert_eq!(
            continue_run(&mut runs, &ev(10, 1), 7),
            1,
            "inside its shard"
        );
        assert_eq!(continue_run(&mut runs, &ev(500, 1), 7), 0, "another run");
        assert_eq!(continue_run(&mut runs, &ev(11, 2), 7), 2, "the next shard");
        let r = *runs.back().unwrap();
        assert_eq!((r.first, r.last, r.bytes, r.started), (10, 12, 3 * 4096, 7));
        assert_eq!(
            continue_run(&mut runs, &ev(13, 1), 7),
            3,
            "after a two-shard request"
        );
        assert_eq!(
            continue_run(&mut runs, &ev(501, 1), 7),
            1,
            "interleaved runs"
        );
        assert_eq!(
            continue_run(&mut runs, &ev(15, 1), 7),
            0,
            "a gap starts a run"
        );
        for s in 0..LSTM_NEAR_RECENT as u64 {
            continue_run(&mut runs, &ev(1000 + 10 * s, 1), 7);
        }
        assert_eq!(runs.len(), LSTM_NEAR_RECENT);
        assert_eq!(
            continue_run(&mut runs, &ev(14, 1), 7),
            0,
            "the run was forgotten"
        );
    }

    /// Four readers interleave in one region; each scans 2 or 10 shards
    /// from a random start, one request per shard. After a scan's first
    /// shard the one two ahead is read half the time, after its fifth the
    /// next nearly always. The run source's acceptor learns that from the
    /// run lengths (although the stream's own deltas jump between the
    /// readers), and what the predictor stages then is mostly read.
    #[test]
    fn the_run_source_learns_which_runs_go_on_across_interleaved_readers() {
        let seed = 43;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // (next shard, shards left) per reader.
        let mut readers = [(0u64, 0u64); 4];
        let mut ev = Vec::new();
        for i in 0..6000u64 {
            let r = &mut readers[rand::Rng::random_range(&mut rng, 0..4usize)];
            if r.1 == 0 {
                let len = if rand::Rng::random_bool(&mut rng, 0.5) {
                    2
                } else {
                    10
                };
                *r = (rand::Rng::random_range(&mut rng, 0..16_000u64), len);
            }
            ev.push(ShardEvent {
                ts_ns: i * 1_000_000,
                volume: 0,
                op: Op::Read,
                shard: r.0,
                shards: 1,
                end_eighths: 8,
                bytes: 4096,
            });
            *r = (r.0 + 1, r.1 - 1);
        }
        let mut p = LstmPredictor::new(
            &PrefetchConfig {
                stage_capacity_shards: 256,
                confidence_min: 0.5,
                ..cfg()
            },
            &LstmOptions {
                streams: Streams::Regions,
                ..small()
            },
        )
        .unwrap();
        let (first, second) = ev.split_at(3000);
        emitted_precision(&mut p, first, 0);
        let (emitted, precision) = emitted_precision(&mut p, second, 64);
        let a = p.acceptor.as_ref().expect("calibrated predictors have one");
        // Two shards after a run's first request, and the next after its
        // fifth: one of the four readers' requests every 4 ms.
        let row = |requests: u32, step: u64| {
            RunContext {
                last: 100,
                requests,
                shards: u64::from(requests) + 1,
                bytes: 4096 * (u64::from(requests) + 1),
                end_eighths: 8,
                request_bytes: 4096,
                stream_gap_ns: 1_000_000,
                global_gap_ns: 1_000_000,
                age_events: 4 * u64::from(requests),
            }
            .features(step)
        };
        let q = a.predict(&[row(0, 2), row(4, 1)]);
        eprintln!("seed {seed}: {a:?}, p {q:?}, emitted {emitted} at {precision:.3}");
        assert!(a.fits >= 2, "seed {seed}: {a:?}");
        assert!(q[1] > 0.75, "seed {seed}: a long run goes on: {q:?}");
        assert!(q[1] > q[0] + 0.2, "seed {seed}: {q:?}");
        assert!(
            emitted >= 300 && precision > 0.7,
            "seed {seed}: {emitted} at {precision}"
        );
    }

    /// Tracked predictions expire on the expiry clock: the shards reads
    /// touch and the predicted shards staged, not events.
    #[test]
    fn the_expiry_clock_counts_shards_touched() {
        let unknown = LstmPredictor::new(&cfg(), &small()).unwrap();
        assert_eq!(unknown.expiry_base(), None, "no capacity: events");
        let mut p = LstmPredictor::new(
            &PrefetchConfig {
                stage_capacity_shards: 64,
                ..cfg()
            },
            &small(),
        )
        .unwrap();
        let read = |shard: u64, shards: u32| ShardEvent {
            ts_ns: 0,
            volume: 0,
            op: Op::Read,
            shard,
            shards,
            end_eighths: 8,
            bytes: 4096,
        };
        let predicted = |shard: u64| Prediction {
            volume: 0,
            shard,
            confidence: 1.0,
        };
        assert_eq!(p.expiry_base(), Some(0));
        p.note_resident(&[read(100, 4)], &[]);
        assert_eq!(p.expiry_base(), Some(4), "a four-shard read");
        p.note_resident(&[read(101, 2), read(100, 1)], &[predicted(103)]);
        assert_eq!(
            p.expiry_base(),
            Some(7),
            "reads touch, a resident shard is not staged"
        );
        p.note_resident(
            &[ShardEvent {
                op: Op::Write,
                ..read(500, 1)
            }],
            &[predicted(104), predicted(105)],
        );
        assert_eq!(
            p.expiry_base(),
            Some(9),
            "two staged, a write touches nothing"
        );
        p.note_resident(&[read(104, 1)], &[]);
        assert_eq!(p.expiry_base(), Some(9), "a staged shard's first read");
        p.note_resident(&[read(104, 1)], &[]);
        assert_eq!(p.expiry_base(), Some(10), "then a read like any other");
    }
}
