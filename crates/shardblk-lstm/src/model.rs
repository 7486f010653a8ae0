//! The LSTM network (tch): embeddings of the eight inputs, a stacked LSTM,
//! and a linear output over the delta, shard and repeat classes; with seeded
//! initialization and conversion to and from the model file.
//!
//! Contract:
//! - Inputs per event: delta class in `0..=vocab+1` (OOV, the classes, the
//!   start class), shard class in `0..=shards` (OOV, the classes), op, size
//!   bucket, gap bucket, nearest-delta class, scope, repeat class
//!   ([`shardblk::prefetch::lstm::features`]).
//!   Output: logits over [`ModelShape::outputs`] classes: OOV, the delta
//!   classes, the shard classes, then the repeat class (one softmax: a next
//!   shard can be named by its delta, by its own class, by "the stream's
//!   last delta again", or several of them, see [`crate::train`]).
//! - [`Net::step`] advances the state of a batch by one event (state shape
//!   `[layers, batch, hidden]`); [`Net::seq`] runs a whole window from a
//!   state. Running `seq` over a window equals running `step` event by
//!   event from the same state (tested): inference carries the state and
//!   never recomputes the window.
//! - [`Model::new`] initializes weights from a seed alone (no global torch
//!   RNG), so tests and trainings are reproducible.
//! - [`Model::load_file`] accepts only a file whose tensors have exactly the
//!   model's names and shapes ([`FileError::Mismatch`] otherwise).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{
    LSTM_GAP_BUCKETS, LSTM_NEAR_CLASSES, LSTM_OP_CLASSES, LSTM_REPEAT_CLASSES, LSTM_SCOPE_CLASSES,
    LSTM_SIZE_BUCKETS,
};
use shardblk::prefetch::lstm::config::ModelShape;
use shardblk::prefetch::lstm::features::EventFeatures;
use shardblk::prefetch::lstm::file::{FileError, ModelFile, NamedTensor, TrainInfo};
use shardblk::prefetch::lstm::vocab::{DeltaVocab, ShardVocab};
use tch::nn::{self, Module, RNN};
use tch::{Device, Kind, Tensor};

/// The device the model runs on: CUDA when built with the `cuda` feature
/// and a GPU is usable, else the CPU.
pub fn pick_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if tch::Cuda::is_available() {
            return Device::Cuda(0);
        }
    }
    Device::Cpu
}

/// The network over a variable store path.
#[derive(Debug)]
pub struct Net {
    pub shape: ModelShape,
    emb_delta: nn::Embedding,
    emb_shard: nn::Embedding,
    emb_op: nn::Embedding,
    emb_size: nn::Embedding,
    emb_gap: nn::Embedding,
    emb_near: nn::Embedding,
    emb_scope: nn::Embedding,
    emb_repeat: nn::Embedding,
    lstm: nn::LSTM,
    out: nn::Linear,
    device: Device,
}

/// Input tensors of a batch of windows (or of one step when `T` = 1),
/// each `[B, T]` of class indices.
pub struct Inputs {
    pub delta: Tensor,
    pub shard: Tensor,
    pub op: Tensor,
    pub size: Tensor,
    pub gap: Tensor,
    pub near: Tensor,
    pub scope: Tensor,
    pub repeat: Tensor,
}

impl Inputs {
    /// Inputs of `rows` (B rows of T events each, all the same length).
    pub fn from_rows(rows: &[&[EventFeatures]], device: Device) -> Inputs {
        let b = rows.len() as i64;
        let t = rows.first().map_or(0, |r| r.len()) as i64;
        let col = |f: fn(&EventFeatures) -> u32| {
            let v: Vec<i64> = rows
                .iter()
                .flat_map(|r| r.iter().map(|e| i64::from(f(e))))
                .collect();
            Tensor::from_slice(&v).view([b, t]).to_device(device)
        };
        Inputs {
            delta: col(|e| e.delta),
            shard: col(|e| e.shard),
            op: col(|e| e.op),
            size: col(|e| e.size),
            gap: col(|e| e.gap),
            near: col(|e| e.near),
            scope: col(|e| e.scope),
            repeat: col(|e| e.repeat),
        }
    }
}

impl Net {
    pub fn new(p: &nn::Path, shape: ModelShape) -> Net {
        let v = i64::from(shape.vocab);
        let (de, se, ae, h) = (
            i64::from(shape.delta_embed),
            i64::from(shape.shard_embed),
            i64::from(shape.aux_embed),
            i64::from(shape.hidden),
        );
        let ec = nn::EmbeddingConfig::default();
        let rc = nn::RNNConfig {
            num_layers: i64::from(shape.layers),
            ..Default::default()
        };
        Net {
            shape,
            emb_delta: nn::embedding(p / "emb_delta", v + 2, de, ec),
            emb_shard: nn::embedding(p / "emb_shard", i64::from(shape.shards) + 1, se, ec),
            emb_op: nn::embedding(p / "emb_op", i64::from(LSTM_OP_CLASSES), ae, ec),
            emb_size: nn::embedding(p / "emb_size", i64::from(LSTM_SIZE_BUCKETS), ae, ec),
            emb_gap: nn::embedding(p / "emb_gap", i64::from(LSTM_GAP_BUCKETS), ae, ec),
            emb_near: nn::embedding(p / "emb_near", i64::from(LSTM_NEAR_CLASSES), ae, ec),
            emb_scope: nn::embedding(p / "emb_scope", i64::from(LSTM_SCOPE_CLASSES), ae, ec),
            emb_repeat: nn::embedding(p / "emb_repeat", i64::from(LSTM_REPEAT_CLASSES), ae, ec),
            lstm: nn::lstm(p / "lstm", de + se + 6 * ae, h, rc),
            out: nn::linear(p / "out", h, shape.outputs() as i64, Default::default()),
            device: p.device(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Embedded inputs `[B, T, F]`.
    pub fn embed(&self, x: &Inputs) -> Tensor {
        Tensor::cat(
            &[
                self.emb_delta.forward(&x.delta),
                self.emb_shard.forward(&x.shard),
                self.emb_op.forward(&x.op),
                self.emb_size.forward(&x.size),
                self.emb_gap.forward(&x.gap),
                self.emb_near.forward(&x.near),
                self.emb_scope.forward(&x.scope),
                self.emb_repeat.forward(&x.repeat),
            ],
            -1,
        )
    }

    /// A zero state for `batch` streams: (h, c), each `[layers, batch, hidden]`.
    pub fn zero_state(&self, batch: i64) -> (Tensor, Tensor) {
        let s = self.lstm.zero_state(batch);
        (s.h(), s.c())
    }

    /// Run windows `[B, T]` from state (h, c): top-layer outputs `[B, T, hidden]`
    /// and the final state.
    pub fn seq(&self, x: &Inputs, h: &Tensor, c: &Tensor) -> (Tensor, Tensor, Tensor) {
        let state = nn::LSTMState((h.shallow_clone(), c.shallow_clone()));
        let (out, s) = self.lstm.seq_init(&self.embed(x), &state);
        (out, s.h(), s.c())
    }

    /// One event per stream (`[B, 1]` inputs): the new state.
    pub fn step(&self, x: &Inputs, h: &Tensor, c: &Tensor) -> (Tensor, Tensor) {
        let (_, h, c) = self.seq(x, h, c);
        (h, c)
    }

    /// The input embedding row of shard class `class` (`shard_embed` floats).
    pub fn shard_embedding(&self, class: u32) -> Vec<f32> {
        let row = self
            .emb_shard
            .ws
            .get(i64::from(class))
            .detach()
            .to_device(Device::Cpu)
            .contiguous();
        let n = row.numel();
        let mut v = vec![0f32; n];
        row.copy_data(&mut v, n);
        v
    }

    /// Give shard input class `class` (a slot given a new shard) a new
    /// embedding row (`row`, `shard_embed` floats).
    pub fn set_shard_input(&self, class: i64, row: &[f32]) {
        tch::no_grad(|| {
            let src = Tensor::from_slice(row).to_device(self.device);
            self.emb_shard.ws.get(class).copy_(&src);
        });
    }

    /// Forget output class `class` (a vocabulary slot given a new delta or
    /// shard): zero weights and the mean bias, so it starts as likely as an
    /// average class (far below any threshold) and is learned anew. (Not
    /// below every other: repeated resets would push biases down without
    /// bound, and a deep bias takes many steps to learn back.)
    pub fn reset_output_class(&self, class: i64) {
        tch::no_grad(|| {
            let _ = self.out.ws.get(class).zero_();
            if let Some(bs) = &self.out.bs {
                let mean = bs.mean(Kind::Float).double_value(&[]);
                let _ = bs.get(class).fill_(mean);
            }
        });
    }

    /// Forget shard class `c` (1..=shards): its output row reset and a new
    /// input embedding row drawn from `rng` (N(0, 1), as at initialization).
    pub fn forget_shard_class(&self, c: u32, rng: &mut ChaCha8Rng) {
        let row: Vec<f32> = (0..self.shape.shard_embed)
            .map(|_| normal(rng) as f32)
            .collect();
        self.set_shard_input(i64::from(c), &row);
        self.reset_output_class(self.shape.shard_output(c) as i64);
    }

    /// Logits over the output classes from top-layer outputs.
    pub fn logits(&self, top: &Tensor) -> Tensor {
        self.out.forward(top)
    }
}

/// A standard normal draw (Box-Muller from two uniforms).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A variable store with its network.
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Net,
}

impl Model {
    /// Fresh weights from `seed`: embeddings N(0, 1), other weights and
    /// biases uniform in ±1/sqrt(fan-in) (PyTorch's defaults).
    pub fn new(shape: ModelShape, device: Device, seed: u64) -> Model {
        let vs = nn::VarStore::new(device);
        let net = Net::new(&vs.root(), shape);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let hidden_bound = 1.0 / f64::from(shape.hidden).sqrt();
        tch::no_grad(|| {
            for (name, mut t) in vars {
                let dims = t.size();
                let n: i64 = dims.iter().product();
                let data: Vec<f32> = if name.starts_with("emb_") {
                    (0..n).map(|_| normal(&mut rng) as f32).collect()
                } else {
                    let bound = if name.starts_with("lstm") {
                        hidden_bound
                    } else if dims.len() == 2 {
                        1.0 / (dims[1] as f64).sqrt()
                    } else {
                        hidden_bound
                    };
                    (0..n)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect()
                };
                let src = Tensor::from_slice(&data)
                    .view(dims.as_slice())
                    .to_device(device);
                t.copy_(&src);
            }
        });
        Model { vs, net }
    }

    /// Copy every weight of `src` (same shape) into this model.
    pub fn copy_from(&mut self, src: &Model) -> Result<(), tch::TchError> {
        self.vs.copy(&src.vs)
    }

    /// The weights as named tensors, by name.
    pub fn tensors(&self) -> Vec<NamedTensor> {
        let mut v: Vec<NamedTensor> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, t)| {
                let t = t
                    .detach()
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous();
                let dims = t.size();
                let n = t.numel();
                let mut data = vec![0f32; n];
                t.view(-1).copy_data(&mut data, n);
                NamedTensor { name, dims, data }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A model file of these weights with the vocabularies and `info`.
    pub fn to_file(&self, vocab: &DeltaVocab, shards: &ShardVocab, info: TrainInfo) -> ModelFile {
        ModelFile {
            shape: self.net.shape,
            info,
            vocab: vocab.assignments(),
            shard_vocab: shards.assignments(),
            tensors: self.tensors(),
        }
    }

    /// Load the weights of `f`, which must have exactly this model's tensors.
    pub fn load_file(&mut self, f: &ModelFile) -> Result<(), FileError> {
        if f.shape != self.net.shape {
            return Err(FileError::Mismatch(format!(
                "file shape {:?}, model shape {:?}",
                f.shape, self.net.shape
            )));
        }
        let mut vars = self.vs.variables();
        if vars.len() != f.tensors.len() {
            return Err(FileError::Mismatch(format!(
                "{} tensors in the file, {} in the model",
                f.tensors.len(),
                vars.len()
            )));
        }
        // Check everything before changing anything.
        for t in &f.tensors {
            let v = vars
                .get(&t.name)
                .ok_or_else(|| FileError::Mismatch(format!("unknown tensor {}", t.name)))?;
            if v.size() != t.dims {
                return Err(FileError::Mismatch(format!(
                    "tensor {}: dims {:?} in the file, {:?} in the model",
                    t.name,
                    t.dims,
                    v.size()
                )));
            }
            if t.data.iter().any(|x| !x.is_finite()) {
                return Err(FileError::Corrupt(format!("tensor {}: not finite", t.name)));
            }
        }
        let device = self.vs.device();
        tch::no_grad(|| {
            for t in &f.tensors {
                if let Some(v) = vars.get_mut(&t.name) {
                    let src = Tensor::from_slice(&t.data)
                        .view(t.dims.as_slice())
                        .to_device(device);
                    v.copy_(&src);
                }
            }
        });
        Ok(())
    }

    /// A model of the file's shape with its weights.
    pub fn from_file(f: &ModelFile, device: Device) -> Result<Model, FileError> {
        let mut m = Model::new(f.shape, device, 0);
        m.load_file(f)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelShape {
        ModelShape {
            vocab: 6,
            hidden: 5,
            layers: 2,
            delta_embed: 3,
            aux_embed: 2,
            shards: 4,
            shard_embed: 3,
        }
    }

    fn window(n: usize, seed: u64) -> Vec<EventFeatures> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| EventFeatures {
                delta: rng.random_range(0..8),
                shard: rng.random_range(0..5),
                op: rng.random_range(0..LSTM_OP_CLASSES),
                size: rng.random_range(0..LSTM_SIZE_BUCKETS),
                gap: rng.random_range(0..LSTM_GAP_BUCKETS),
                near: rng.random_range(0..LSTM_NEAR_CLASSES),
                scope: rng.random_range(0..LSTM_SCOPE_CLASSES),
                repeat: rng.random_range(0..LSTM_REPEAT_CLASSES),
            })
            .collect()
    }

    #[test]
    fn carried_state_equals_recomputing_the_window() {
        let m = Model::new(tiny(), Device::Cpu, 3);
        let _g = tch::no_grad_guard();
        let rows: Vec<Vec<EventFeatures>> = (0..3).map(|i| window(12, i)).collect();
        let refs: Vec<&[EventFeatures]> = rows.iter().map(Vec::as_slice).collect();
        let (h0, c0) = m.net.zero_state(3);
        let (out, hs, cs) = m.net.seq(&Inputs::from_rows(&refs, Device::Cpu), &h0, &c0);
        let (mut h, mut c) = (h0, c0);
        for t in 0..12 {
            let step: Vec<&[EventFeatures]> = rows.iter().map(|r| &r[t..t + 1]).collect();
            (h, c) = m.net.step(&Inputs::from_rows(&step, Device::Cpu), &h, &c);
            // The top layer's state after step t is the window output at t.
            let diff = (h.get(1) - out.select(1, t as i64))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "position {t}: {diff}");
        }
        assert!((h - hs).abs().max().double_value(&[]) < 1e-5);
        assert!((c - cs).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn seeded_weights_and_file_round_trip() {
        let a = Model::new(tiny(), Device::Cpu, 11);
        let b = Model::new(tiny(), Device::Cpu, 11);
        let c = Model::new(tiny(), Device::Cpu, 12);
        assert_eq!(a.tensors(), b.tensors());
        assert_ne!(a.tensors(), c.tensors());
        let vocab = DeltaVocab::build([1i64, 1, 2, 2, -3, -3], 6, 64, 1);
        let k = |shard| shardblk::prefetch::lstm::vocab::ShardKey { volume: 0, shard };
        let shards = ShardVocab::build([k(5), k(5), k(9)], 4, 64, 1);
        let f = a.to_file(&vocab, &shards, TrainInfo::default());
        let img = f.encode();
        let back = ModelFile::decode(&img).unwrap();
        let m = Model::from_file(&back, Device::Cpu).unwrap();
        assert_eq!(m.tensors(), a.tensors());
        assert_eq!(back.delta_vocab().unwrap(), vocab);
        assert_eq!(back.shard_vocab().unwrap(), shards);
        assert_eq!(
            m.net
                .logits(&Tensor::zeros([1, 5], (Kind::Float, Device::Cpu)))
                .size(),
            vec![1, tiny().outputs() as i64]
        );
        // A file of another shape does not load into this model.
        let mut other = Model::new(
            ModelShape {
                hidden: 7,
                ..tiny()
            },
            Device::Cpu,
            1,
        );
        assert!(matches!(other.load_file(&f), Err(FileError::Mismatch(_))));
        // A file whose tensors disagree with its own header is refused.
        let mut lying = f.clone();
        lying.tensors[0].dims[0] += 1;
        let row: i64 = lying.tensors[0].dims[1..].iter().product();
        lying.tensors[0].data.extend(vec![0.0; row as usize]);
        assert!(matches!(
            Model::from_file(&ModelFile::decode(&lying.encode()).unwrap(), Device::Cpu),
            Err(FileError::Mismatch(_))
        ));
        let mut renamed = f.clone();
        renamed.tensors[0].name.push('x');
        assert!(matches!(
            Model::from_file(&renamed, Device::Cpu),
            Err(FileError::Mismatch(_))
        ));
    }
}
