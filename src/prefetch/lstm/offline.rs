//! Offline training from traces (`shardblk trace train`): the vocabulary
//! from the traces' per-stream deltas, then truncated-BPTT epochs.
//!
//! Contract: [`train_offline`] is deterministic for a given set of traces,
//! configuration and seed (single intra-op thread); it reports progress
//! through a callback (step, total steps, loss) and returns the model file
//! to write and the loss of every step. No file I/O here.

use super::config::LstmOptions;
use super::features::{shard_delta, FeatureState, Featurizer};
use super::file::{ModelFile, TrainInfo};
use super::model::{pick_device, Model};
use super::train::{stream_sequences, OfflineTrainer};
use super::vocab::DeltaVocab;
use super::LstmError;
use crate::constants::{LSTM_VOCAB_MIN_COUNT, LSTM_VOCAB_WINDOW_EVENTS};
use crate::prefetch::stream::LruMap;
use crate::prefetch::{PrefetchConfig, StreamKey};
use crate::trace::TraceEvent;

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

/// The vocabulary of the traces' per-stream deltas (the most frequent).
pub fn vocab_of(traces: &[&[TraceEvent]], cfg: &PrefetchConfig, capacity: usize) -> DeltaVocab {
    let mut deltas = Vec::new();
    for t in traces {
        let mut last: LruMap<StreamKey, FeatureState> = LruMap::new(cfg.streams_max);
        let mut f = Featurizer::new(DeltaVocab::new(0, 1, 1), false);
        for ev in t.iter() {
            let sev = cfg.shard_event(0, ev);
            let st = last.get_or_insert_with(&cfg.stream_of(&sev), FeatureState::default);
            let prev = st.last_shard();
            if f.features(st, &sev).is_some() {
                if let Some(d) = prev.and_then(|p| shard_delta(p, sev.shard)) {
                    deltas.push(d);
                }
            }
        }
    }
    DeltaVocab::build(
        deltas,
        capacity,
        LSTM_VOCAB_WINDOW_EVENTS,
        LSTM_VOCAB_MIN_COUNT,
    )
}

/// Train a model on `traces`; `progress(step, total, loss)` after each step.
pub fn train_offline(
    traces: &[&[TraceEvent]],
    job: &OfflineJob,
    mut progress: impl FnMut(u64, u64, f32),
) -> Result<OfflineResult, LstmError> {
    job.prefetch
        .validate()
        .map_err(|e| LstmError::Config(e.to_string()))?;
    job.lstm.validate().map_err(LstmError::Config)?;
    if job.epochs == 0 || job.lanes == 0 {
        return Err(LstmError::Config(
            "epochs and lanes must be positive".into(),
        ));
    }
    tch::set_num_threads(job.lstm.threads as i32);
    let shape = job.lstm.shape;
    let vocab = vocab_of(traces, &job.prefetch, shape.vocab as usize);
    let mut feat = Featurizer::new(vocab, false);
    let mut seqs = Vec::new();
    for t in traces {
        seqs.extend(stream_sequences(t, &job.prefetch, &mut feat));
    }
    let streams = seqs.len();
    let events = seqs.iter().map(Vec::len).sum();
    if streams == 0 {
        return Err(LstmError::Config(
            "the traces have no stream with two or more reads or writes".into(),
        ));
    }
    let model = Model::new(shape, pick_device(), job.lstm.seed);
    let mut tr = OfflineTrainer::new(
        model,
        seqs,
        job.lanes,
        job.prefetch.sequence_length as usize,
        job.lstm.learning_rate,
    )?;
    let per_epoch = tr.steps_per_epoch() as u64;
    let total = (per_epoch * u64::from(job.epochs)).min(job.max_steps.unwrap_or(u64::MAX));
    let mut losses = Vec::with_capacity(total as usize);
    for s in 0..total {
        let l = tr.step();
        losses.push(l);
        progress(s + 1, total, l);
    }
    // The last epoch's mean loss over steps that had targets.
    let tail: Vec<f32> = losses
        .iter()
        .rev()
        .take(per_epoch.max(1) as usize)
        .copied()
        .filter(|&l| l > 0.0)
        .collect();
    let loss = if tail.is_empty() {
        0.0
    } else {
        tail.iter().sum::<f32>() / tail.len() as f32
    };
    let file = tr.model.to_file(
        &feat.vocab,
        TrainInfo {
            shard_bytes: job.prefetch.shard_bytes,
            sequence_length: job.prefetch.sequence_length,
            train_steps: tr.steps,
            loss,
        },
    );
    Ok(OfflineResult {
        file,
        losses,
        streams,
        events,
    })
}
