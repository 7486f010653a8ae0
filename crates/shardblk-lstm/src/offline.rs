//! Offline training from traces (`shardblk trace train`): the vocabularies
//! from the traces' per-stream deltas and most visited shards, then
//! truncated-BPTT epochs.
//!
//! Contract: [`train_offline`] is deterministic for a given set of traces,
//! configuration and seed (single intra-op thread); it reports progress
//! through a callback (step, total steps, loss) and returns the model file
//! to write and the loss of every step. The shard classes are trained (the
//! network learns to carry a shard's identity and to name a jump's target)
//! but forgotten in the file: the training traces' addresses mean nothing
//! on another volume, so the file's shard vocabulary is empty and those
//! rows are reset, to be learned online. No file I/O here.

use crate::model::{pick_device, Model};
use crate::train::{stream_sequences, OfflineTrainer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{LSTM_SHARD_VOCAB_WINDOW_EVENTS, LSTM_VOCAB_MIN_COUNT};
use shardblk::prefetch::lstm::features::Featurizer;
use shardblk::prefetch::lstm::file::TrainInfo;
use shardblk::prefetch::lstm::vocab::ShardVocab;
use shardblk::prefetch::lstm::{vocabs_of, LstmError, OfflineJob, OfflineResult};
use shardblk::trace::TraceEvent;

/// Train a model on `traces`; `progress(step, total, loss)` after each step.
pub fn train_offline(
    traces: &[&[TraceEvent]],
    job: &OfflineJob,
    progress: &mut dyn FnMut(u64, u64, f32),
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
    let streams = job.lstm.streams;
    let (vocab, shards) = vocabs_of(traces, &job.prefetch, &shape, streams);
    let mut feat = Featurizer::new(vocab, shards, false);
    let mut seqs = Vec::new();
    for t in traces {
        seqs.extend(stream_sequences(
            t,
            &job.prefetch,
            streams,
            &shape,
            &mut feat,
        ));
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
    )
    .map_err(crate::torch)?;
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
    let mut rng = ChaCha8Rng::seed_from_u64(job.lstm.seed ^ 0x5348_4152_4453);
    for c in 1..=shape.shards {
        tr.model.net.forget_shard_class(c, &mut rng);
    }
    let no_shards = ShardVocab::new(
        shape.shards as usize,
        LSTM_SHARD_VOCAB_WINDOW_EVENTS,
        LSTM_VOCAB_MIN_COUNT,
    );
    let file = tr.model.to_file(
        &feat.vocab,
        &no_shards,
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
