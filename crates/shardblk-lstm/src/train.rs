//! Training: the loss of a batch of windows, the online trainer (a bounded
//! buffer of recent per-stream windows, truncated-BPTT steps with Adam on
//! its own copy of the weights), and the offline trainer over whole traces.
//!
//! Contract:
//! - A [`Window`] is `SEQUENCE_LENGTH + 1` consecutive events of one stream
//!   and the inference state before its first event: inputs are the first
//!   `T` events, targets the events that follow each one ([`targets_of`]).
//!   Training starts from that (detached) state: truncated BPTT, the
//!   same state the inference model carried.
//! - The next event's shard can be named by up to three output classes: its
//!   delta class, its shard class and, when its delta repeats the current
//!   one, the repeat class. The loss is the negative log of the
//!   probability of the set of correct classes (marginal likelihood), so the
//!   model is free to name a sequential step by its delta, a stride by
//!   "the same delta again" (whatever the vocabulary holds) and a jump by
//!   the target's own class, whichever it predicts better. OOV counts as
//!   correct only when none names the shard.
//! - [`OnlineTrainer::step`] samples a batch from the buffer (seeded) and
//!   does one Adam step; the buffer keeps the most recent
//!   `buffer_windows` windows. The caller swaps weights into the inference
//!   model (`Model::copy_from`, under no_grad) every few steps.
//! - [`OfflineTrainer`] lays the streams of the training traces end to end
//!   in `lanes` parallel lanes and walks them in chunks of `T` events,
//!   carrying each lane's state between chunks (truncated BPTT); a stream's
//!   first event has the start class as input (the model learns to reset),
//!   and no target crosses from one stream into the next. In each chunk
//!   `LSTM_TRAIN_HIDDEN_DELTA_PERCENT` % of the delta classes (seeded draw)
//!   are hidden in region streams: out of vocabulary as inputs and not
//!   correct as targets, as
//!   for a delta the vocabulary does not hold when the model is used (a
//!   stride is then named by the repeat class only).

use crate::model::{Inputs, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{LSTM_GRAD_CLIP_NORM, LSTM_TRAIN_HIDDEN_DELTA_PERCENT};
use shardblk::prefetch::lstm::config::{ModelShape, Streams};
use shardblk::prefetch::lstm::features::{
    stream_keys, EventFeatures, FeatureState, Featurizer, Scope,
};
use shardblk::prefetch::lstm::vocab::OOV;
use shardblk::prefetch::stream::LruMap;
use shardblk::prefetch::{PrefetchConfig, StreamKey};
use shardblk::trace::TraceEvent;
use std::collections::VecDeque;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Target index ignored by the loss.
pub const IGNORE: i64 = -100;
/// No second correct class.
pub const NONE: i64 = -1;

/// The correct output classes after an event of a stream.
pub type Targets = [i64; 3];

/// The correct output classes after an event whose successor in the stream
/// is `next`: the first [`IGNORE`] when there is nothing to learn (a
/// stream's start), then [`NONE`] for each class fewer than three that
/// names it (the first is OOV when no class does).
pub fn targets_of(next: &EventFeatures, shape: &ModelShape, start: u32) -> Targets {
    if next.delta == start {
        return [IGNORE, NONE, NONE];
    }
    let mut t = [NONE; 3];
    let mut n = 0;
    if next.delta != OOV {
        t[n] = i64::from(next.delta);
        n += 1;
    }
    if next.shard != OOV && next.shard <= shape.shards {
        t[n] = shape.shard_output(next.shard) as i64;
        n += 1;
    }
    if next.repeat == 1 {
        t[n] = shape.repeat_output() as i64;
        n += 1;
    }
    if n == 0 {
        t[0] = i64::from(OOV);
    }
    t
}

/// One training window of a stream.
#[derive(Debug, Clone)]
pub struct Window {
    /// `T + 1` events.
    pub events: Vec<EventFeatures>,
    /// State before the first event, `[layers * hidden]` each.
    pub h0: Vec<f32>,
    pub c0: Vec<f32>,
}

/// State tensors `[layers, B, hidden]` from per-stream `[layers * hidden]` vectors.
pub fn gather_state(states: &[&[f32]], layers: i64, hidden: i64, device: Device) -> Tensor {
    let b = states.len() as i64;
    let mut flat = Vec::with_capacity(states.len() * (layers * hidden) as usize);
    for l in 0..layers as usize {
        for s in states {
            flat.extend_from_slice(&s[l * hidden as usize..(l + 1) * hidden as usize]);
        }
    }
    Tensor::from_slice(&flat)
        .view([layers, b, hidden])
        .to_device(device)
}

/// Per-stream `[layers * hidden]` vectors from a state tensor `[layers, B, hidden]`.
pub fn scatter_state(t: &Tensor, out: &mut [&mut Vec<f32>]) {
    let t = t.to_device(Device::Cpu).contiguous();
    let dims = t.size();
    let (layers, b, hidden) = (dims[0] as usize, dims[1] as usize, dims[2] as usize);
    let mut flat = vec![0f32; layers * b * hidden];
    let n = flat.len();
    t.view(-1).copy_data(&mut flat, n);
    for (i, o) in out.iter_mut().enumerate() {
        o.resize(layers * hidden, 0.0);
        for l in 0..layers {
            let src = &flat[(l * b + i) * hidden..(l * b + i + 1) * hidden];
            o[l * hidden..(l + 1) * hidden].copy_from_slice(src);
        }
    }
}

/// Mean negative log-probability of the correct class sets (`targets`
/// `[B, T, 3]` as from [`targets_of`]; positions whose first is [`IGNORE`]
/// excluded), and the final state.
pub fn loss_of(
    model: &Model,
    inputs: &Inputs,
    targets: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (out, h, c) = model.net.seq(inputs, h0, c0);
    let logits = model.net.logits(&out);
    let classes = logits.size()[2];
    let logits = logits.view([-1, classes]);
    let t = targets.view([-1, 3]);
    let valid = t.select(1, 0).ne(IGNORE).to_kind(Kind::Float);
    let all = logits.logsumexp([-1], false);
    // Columns 1 and 2 may be NONE (no class); column 0 always picks one
    // (an ignored position picks class 0 and is multiplied by 0): no row
    // is all -inf, whose gradient would be NaN.
    let none = t.lt(0);
    let _ = none.select(1, 0).fill_(0);
    let picked = logits
        .gather(1, &t.clamp_min(0), false)
        .masked_fill(&none, f64::NEG_INFINITY);
    let correct = picked.logsumexp([1], false);
    let loss = ((all - correct) * &valid).sum(Kind::Float) / valid.sum(Kind::Float).clamp_min(1.0);
    (loss, h, c)
}

/// `[B, T, 3]` target tensor of rows of [`Targets`].
fn target_tensor(rows: &[Vec<Targets>], device: Device) -> Tensor {
    let b = rows.len() as i64;
    let t = rows.first().map_or(0, Vec::len) as i64;
    let a: Vec<i64> = rows.iter().flatten().flatten().copied().collect();
    Tensor::from_slice(&a).view([b, t, 3]).to_device(device)
}

/// The online trainer.
pub struct OnlineTrainer {
    pub model: Model,
    opt: nn::Optimizer,
    buffer: VecDeque<Window>,
    capacity: usize,
    batch: usize,
    rng: ChaCha8Rng,
    pub steps: u64,
    /// Start class of the delta input (never a target).
    start: u32,
}

impl OnlineTrainer {
    /// A trainer on `model` (its own copy of the weights); `start` is the
    /// start class of the delta input.
    pub fn new(
        model: Model,
        lr: f64,
        batch: usize,
        capacity: usize,
        seed: u64,
        start: u32,
    ) -> Result<Self, tch::TchError> {
        let opt = nn::Adam::default().build(&model.vs, lr)?;
        Ok(OnlineTrainer {
            start,
            model,
            opt,
            buffer: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            batch: batch.max(1),
            rng: ChaCha8Rng::seed_from_u64(seed),
            steps: 0,
        })
    }

    /// Keep a window (the oldest is dropped when full).
    pub fn push(&mut self, w: Window) {
        if self.buffer.len() == self.capacity {
            self.buffer.pop_front();
        }
        self.buffer.push_back(w);
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// One truncated-BPTT Adam step on a sampled batch; None while the
    /// buffer is empty.
    pub fn step(&mut self) -> Option<f32> {
        if self.buffer.is_empty() {
            return None;
        }
        let n = self.batch.min(self.buffer.len());
        // Half the batch from the newest windows, half sampled from all.
        let mut idx: Vec<usize> = (0..n / 2).map(|i| self.buffer.len() - 1 - i).collect();
        while idx.len() < n {
            idx.push(self.rng.random_range(0..self.buffer.len()));
        }
        let wins: Vec<&Window> = idx.iter().map(|&i| &self.buffer[i]).collect();
        let device = self.model.net.device();
        let shape = self.model.net.shape;
        let (layers, hidden) = (i64::from(shape.layers), i64::from(shape.hidden));
        let rows: Vec<&[EventFeatures]> = wins
            .iter()
            .map(|w| &w.events[..w.events.len() - 1])
            .collect();
        let inputs = Inputs::from_rows(&rows, device);
        let targets: Vec<Vec<Targets>> = wins
            .iter()
            .map(|w| {
                w.events[1..]
                    .iter()
                    .map(|e| targets_of(e, &shape, self.start))
                    .collect()
            })
            .collect();
        let targets = target_tensor(&targets, device);
        let h0: Vec<&[f32]> = wins.iter().map(|w| w.h0.as_slice()).collect();
        let c0: Vec<&[f32]> = wins.iter().map(|w| w.c0.as_slice()).collect();
        let h0 = gather_state(&h0, layers, hidden, device);
        let c0 = gather_state(&c0, layers, hidden, device);
        let (loss, _, _) = loss_of(&self.model, &inputs, &targets, &h0, &c0);
        self.opt.backward_step_clip_norm(&loss, LSTM_GRAD_CLIP_NORM);
        self.steps += 1;
        Some(loss.double_value(&[]) as f32)
    }
}

/// One event of a training sequence and its targets.
pub type Step = (EventFeatures, Targets);

/// Per-stream feature sequences of a trace with their targets (the next
/// event of the stream, [`targets_of`]); `streams` says which streams.
pub fn stream_sequences(
    trace: &[TraceEvent],
    cfg: &PrefetchConfig,
    streams: Streams,
    shape: &ModelShape,
    feat: &mut Featurizer,
) -> Vec<Vec<Step>> {
    let mut index: LruMap<StreamKey, (FeatureState, usize)> = LruMap::new(cfg.streams_max);
    let mut seqs: Vec<Vec<Step>> = Vec::new();
    let start = feat.start();
    for ev in trace {
        let sev = cfg.shard_event(0, ev);
        let shard = feat.shard_class(&sev);
        for (key, scope) in stream_keys(cfg, &sev, streams).into_iter().flatten() {
            let (st, i) = index.get_or_insert_with(&key, || {
                seqs.push(Vec::new());
                (FeatureState::default(), seqs.len() - 1)
            });
            let i = *i;
            if let Some(f) = feat.features(st, &sev, shard, scope) {
                if let Some(prev) = seqs[i].last_mut() {
                    prev.1 = targets_of(&f, shape, start);
                }
                seqs[i].push((f, [IGNORE, NONE, NONE]));
            }
        }
    }
    seqs.retain(|s| s.len() >= 2);
    seqs
}

/// Offline truncated-BPTT trainer over lanes of stream sequences.
pub struct OfflineTrainer {
    pub model: Model,
    opt: nn::Optimizer,
    lanes: Vec<Vec<Step>>,
    chunk: usize,
    at: usize,
    h: Tensor,
    c: Tensor,
    pub steps: u64,
    /// Draws the hidden delta classes of each chunk.
    rng: ChaCha8Rng,
}

/// `step` with the delta classes `hidden` says are hidden: out of
/// vocabulary as its input, removed from its targets (the first target
/// becomes OOV when no class is left). Region streams only: a volume
/// stream's repeats are mostly interleaved runs (a jump of the same size
/// from region to region, until the cycle wraps), which its delta classes
/// and state follow better than "the same delta again".
pub fn hide_deltas(step: Step, vocab: u32, hidden: &dyn Fn(u32) -> bool) -> Step {
    let (mut f, t) = step;
    if f.scope != Scope::Region.class() {
        return (f, t);
    }
    let is_hidden = |c: i64| c >= 1 && c <= i64::from(vocab) && hidden(c as u32);
    if f.delta >= 1 && f.delta <= vocab && hidden(f.delta) {
        f.delta = OOV;
    }
    if t[0] == IGNORE {
        return (f, t);
    }
    let kept: Vec<i64> = t
        .iter()
        .copied()
        .filter(|&c| c != NONE && !is_hidden(c))
        .collect();
    let mut out = [NONE; 3];
    out[..kept.len()].copy_from_slice(&kept);
    if kept.is_empty() {
        out[0] = i64::from(OOV);
    }
    (f, out)
}

impl OfflineTrainer {
    /// Lay `seqs` into `lanes` lanes (longest first onto the shortest lane).
    pub fn new(
        model: Model,
        seqs: Vec<Vec<Step>>,
        lanes: usize,
        chunk: usize,
        lr: f64,
    ) -> Result<Self, tch::TchError> {
        let lanes_n = lanes.max(1).min(seqs.len().max(1));
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut out: Vec<Vec<Step>> = vec![Vec::new(); lanes_n];
        for i in order {
            let shortest = (0..lanes_n).min_by_key(|&l| out[l].len()).unwrap_or(0);
            out[shortest].extend_from_slice(&seqs[i]);
        }
        let opt = nn::Adam::default().build(&model.vs, lr)?;
        let (h, c) = model.net.zero_state(lanes_n as i64);
        Ok(OfflineTrainer {
            model,
            opt,
            lanes: out,
            chunk: chunk.max(1),
            at: 0,
            h,
            c,
            steps: 0,
            rng: ChaCha8Rng::seed_from_u64(lanes as u64 ^ 0x4849_4445),
        })
    }

    /// Steps in one pass over the lanes.
    pub fn steps_per_epoch(&self) -> usize {
        self.lanes
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .div_ceil(self.chunk)
    }

    /// One step on the next chunk of every lane (lanes that ended are
    /// padded and ignored); wraps to a new epoch with zero states.
    pub fn step(&mut self) -> f32 {
        if self.at >= self.steps_per_epoch() * self.chunk {
            self.at = 0;
            (self.h, self.c) = self.model.net.zero_state(self.lanes.len() as i64);
        }
        let (from, to) = (self.at, self.at + self.chunk);
        let pad = (EventFeatures::default(), [IGNORE, NONE, NONE]);
        let vocab = self.model.net.shape.vocab;
        let mask: Vec<bool> = (0..=vocab)
            .map(|_| self.rng.random_range(0..100) < LSTM_TRAIN_HIDDEN_DELTA_PERCENT)
            .collect();
        let hidden = |c: u32| mask[c as usize];
        let rows: Vec<Vec<Step>> = self
            .lanes
            .iter()
            .map(|l| {
                (from..to)
                    .map(|i| hide_deltas(l.get(i).copied().unwrap_or(pad), vocab, &hidden))
                    .collect()
            })
            .collect();
        let feats: Vec<Vec<EventFeatures>> = rows
            .iter()
            .map(|r| r.iter().map(|e| e.0).collect())
            .collect();
        let refs: Vec<&[EventFeatures]> = feats.iter().map(Vec::as_slice).collect();
        let device = self.model.net.device();
        let inputs = Inputs::from_rows(&refs, device);
        let targets: Vec<Vec<Targets>> = rows
            .iter()
            .map(|r| r.iter().map(|e| e.1).collect())
            .collect();
        let any_target = targets.iter().flatten().any(|t| t[0] != IGNORE);
        let targets = target_tensor(&targets, device);
        self.at = to;
        self.steps += 1;
        if !any_target {
            // Nothing to learn (the mean would be NaN): only advance the state.
            let (_, h, c) = tch::no_grad(|| self.model.net.seq(&inputs, &self.h, &self.c));
            (self.h, self.c) = (h, c);
            return 0.0;
        }
        let (loss, h, c) = loss_of(&self.model, &inputs, &targets, &self.h, &self.c);
        self.opt.backward_step_clip_norm(&loss, LSTM_GRAD_CLIP_NORM);
        self.h = h.detach();
        self.c = c.detach();
        loss.to_kind(Kind::Float).double_value(&[]) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_deltas_leave_the_input_and_the_targets() {
        let shape = ModelShape {
            vocab: 8,
            shards: 4,
            ..ModelShape::default()
        };
        let start = shape.vocab + 1;
        let ev = |delta, shard, repeat| EventFeatures {
            delta,
            shard,
            repeat,
            ..EventFeatures::default()
        };
        // A stride step with a delta class, a shard class and a repeat.
        let next = ev(3, 2, 1);
        let t = targets_of(&next, &shape, start);
        assert_eq!(
            t,
            [
                3,
                shape.shard_output(2) as i64,
                shape.repeat_output() as i64
            ]
        );
        assert_eq!(
            targets_of(&ev(start, 0, 0), &shape, start),
            [IGNORE, NONE, NONE]
        );
        assert_eq!(targets_of(&ev(OOV, 0, 0), &shape, start), [0, NONE, NONE]);
        let hide3 = |c: u32| c == 3;
        let (f, h) = hide_deltas((next, t), shape.vocab, &hide3);
        assert_eq!(f.delta, OOV);
        assert_eq!(
            h,
            [
                shape.shard_output(2) as i64,
                shape.repeat_output() as i64,
                NONE
            ]
        );
        // Nothing left: OOV is the target; the start class is never hidden.
        let (_, h) = hide_deltas((ev(5, 0, 0), [3, NONE, NONE]), shape.vocab, &hide3);
        assert_eq!(h, [i64::from(OOV), NONE, NONE]);
        let all = |_: u32| true;
        let (f, h) = hide_deltas((ev(start, 0, 0), [IGNORE, NONE, NONE]), shape.vocab, &all);
        assert_eq!((f.delta, h), (start, [IGNORE, NONE, NONE]));
        // Volume streams keep their classes.
        let vol = EventFeatures {
            scope: Scope::Volume.class(),
            ..next
        };
        assert_eq!(hide_deltas((vol, t), shape.vocab, &all), (vol, t));
    }
}
