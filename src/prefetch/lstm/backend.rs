//! The seam between this library, which carries no libtorch, and the LSTM
//! that runs on it (`crates/shardblk-lstm`).
//!
//! Loading libtorch costs every process that links it a 450 MB mapping and
//! its static initialisers (a quarter of a second natively, seconds under
//! emulation), so only the `shardblk-lstm` executable links it. It
//! [`register`]s an [`LstmBackend`] at start; [`PredictorKind::Lstm`] and
//! `trace train` go through [`backend`] and fail with [`NO_BACKEND`] where
//! none is registered (the `shardblk` command line then hands the command
//! to `shardblk-lstm`).
//!
//! Contract: at most one backend per process, registered before any
//! predictor is built; the backend builds predictors in the calling thread
//! (libtorch's intra-op threads are per thread).
//!
//! [`PredictorKind::Lstm`]: crate::prefetch::PredictorKind::Lstm

use super::config::{LstmOptions, ModelShape, Streams};
use super::features::{shard_delta, stream_keys, FeatureState, Featurizer};
use super::file::ModelFile;
use super::vocab::{DeltaVocab, ShardKey, ShardVocab, OOV};
use super::LstmError;
use crate::constants::{
    LSTM_SHARD_VOCAB_WINDOW_EVENTS, LSTM_VOCAB_MIN_COUNT, LSTM_VOCAB_WINDOW_EVENTS,
};
use crate::prefetch::stream::LruMap;
use crate::prefetch::{Predictor, PrefetchConfig, StreamKey};
use crate::trace::TraceEvent;
use std::sync::OnceLock;

/// Why an LSTM cannot be built in this process.
pub const NO_BACKEND: &str =
    "the lstm predictor runs in `shardblk-lstm` (this process has no libtorch)";

/// What the libtorch side provides.
pub trait LstmBackend: Send + Sync {
    /// A fresh LSTM predictor (model from `opts.model`), owned by the
    /// calling thread.
    fn predictor(
        &self,
        cfg: &PrefetchConfig,
        opts: &LstmOptions,
    ) -> Result<Box<dyn Predictor>, LstmError>;

    /// Train a model offline on `traces`; `progress(step, total, loss)`
    /// after each step.
    fn train_offline(
        &self,
        traces: &[&[TraceEvent]],
        job: &OfflineJob,
        progress: &mut dyn FnMut(u64, u64, f32),
    ) -> Result<OfflineResult, LstmError>;
}

static BACKEND: OnceLock<&'static dyn LstmBackend> = OnceLock::new();

/// Register the process's backend; false if one was registered already
/// (the first stays).
pub fn register(b: &'static dyn LstmBackend) -> bool {
    BACKEND.set(b).is_ok()
}

/// The registered backend, if any.
pub fn backend() -> Option<&'static dyn LstmBackend> {
    BACKEND.get().copied()
}

/// What to train.
#[derive(Debug, Clone)]
pub struct OfflineJob {
    pub prefetch: PrefetchConfig,
    pub lstm: LstmOptions,
    /// Passes over the traces.
    pub epochs: u32,
    /// Stop after this many steps in all (None: `epochs` passes).
    pub max_steps: Option<u64>,
    /// Parallel lanes (batch size) of truncated BPTT.
    pub lanes: usize,
}

/// Result of an offline training.
pub struct OfflineResult {
    pub file: ModelFile,
    pub losses: Vec<f32>,
    pub streams: usize,
    pub events: usize,
}

/// The vocabularies of the traces: the most frequent per-stream deltas
/// (streams as `streams` says) and the most visited shards (a visit counted
/// once however many requests it makes, as online).
pub fn vocabs_of(
    traces: &[&[TraceEvent]],
    cfg: &PrefetchConfig,
    shape: &ModelShape,
    streams: Streams,
) -> (DeltaVocab, ShardVocab) {
    let mut deltas = Vec::new();
    let mut visits: Vec<ShardKey> = Vec::new();
    for t in traces {
        let mut last: LruMap<StreamKey, FeatureState> = LruMap::new(cfg.streams_max);
        let mut f = Featurizer::new(DeltaVocab::new(0, 1, 1), ShardVocab::new(0, 1, 1), false);
        let mut prev_visit: Option<u64> = None;
        for ev in t.iter() {
            let sev = cfg.shard_event(0, ev);
            if super::features::op_class(sev.op).is_some() && prev_visit != Some(sev.shard) {
                prev_visit = Some(sev.shard);
                visits.push(ShardKey {
                    volume: 0,
                    shard: sev.shard,
                });
            }
            for (key, scope) in stream_keys(cfg, &sev, streams).into_iter().flatten() {
                let st = last.get_or_insert_with(&key, FeatureState::default);
                let prev = st.last_shard();
                if f.features(st, &sev, OOV, scope).is_some() {
                    if let Some(d) = prev.and_then(|p| shard_delta(p, sev.shard)) {
                        deltas.push(d);
                    }
                }
            }
        }
    }
    (
        DeltaVocab::build(
            deltas,
            shape.vocab as usize,
            LSTM_VOCAB_WINDOW_EVENTS,
            LSTM_VOCAB_MIN_COUNT,
        ),
        ShardVocab::build(
            visits,
            shape.shards as usize,
            LSTM_SHARD_VOCAB_WINDOW_EVENTS,
            LSTM_VOCAB_MIN_COUNT,
        ),
    )
}
