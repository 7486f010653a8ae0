//! LSTM knobs: the model's shape (what a model file must match) and the
//! online-training and runtime options, with their validation.
//!
//! Contract: [`LstmOptions::default`] uses the `LSTM_*` defaults of
//! `constants.rs`; [`LstmOptions::validate`] checks every field against the
//! limits there. Pure data (no tch): it exists without the `lstm` feature so
//! the CLI and [`crate::prefetch::PredictorKind::build_with`] compile either way.

use crate::constants::{
    LSTM_AUX_EMBED_DEFAULT_DIMS, LSTM_DEFAULT_MODEL_PATH, LSTM_DELTA_EMBED_DEFAULT_DIMS,
    LSTM_EMBED_MAX_DIMS, LSTM_HIDDEN_DEFAULT_UNITS, LSTM_HIDDEN_MAX_UNITS, LSTM_LAYERS_DEFAULT,
    LSTM_LAYERS_MAX, LSTM_LEARNING_RATE_DEFAULT, LSTM_LEARNING_RATE_MAX,
    LSTM_LOOKAHEAD_DEFAULT_STEPS, LSTM_LOOKAHEAD_MAX_STEPS, LSTM_PRECISION_GATE_DEFAULT,
    LSTM_SWAP_INTERVAL_DEFAULT_STEPS, LSTM_SWAP_INTERVAL_MAX_STEPS, LSTM_THREADS_DEFAULT,
    LSTM_THREADS_MAX, LSTM_TRAIN_BATCH_DEFAULT_WINDOWS, LSTM_TRAIN_BATCH_MAX_WINDOWS,
    LSTM_TRAIN_BUFFER_DEFAULT_WINDOWS, LSTM_TRAIN_BUFFER_MAX_WINDOWS,
    LSTM_TRAIN_INTERVAL_DEFAULT_EVENTS, LSTM_TRAIN_INTERVAL_MAX_EVENTS, LSTM_VOCAB_DEFAULT_CLASSES,
    LSTM_VOCAB_MAX_CLASSES,
};
use crate::constants::{
    LSTM_MEMORY_DEFAULT_ENTRIES, LSTM_MEMORY_MAX_ENTRIES, LSTM_SHARD_EMBED_DEFAULT_DIMS,
    LSTM_SHARD_VOCAB_DEFAULT_CLASSES, LSTM_SHARD_VOCAB_MAX_CLASSES,
};
use std::path::PathBuf;

/// The architecture: a model file holds weights for exactly one shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ModelShape {
    /// Delta classes (OOV not counted).
    pub vocab: u32,
    /// Hidden units per layer.
    pub hidden: u32,
    /// Stacked LSTM layers.
    pub layers: u32,
    /// Embedding width of the delta class.
    pub delta_embed: u32,
    /// Embedding width of each of op, size, inter-arrival, nearest delta and scope.
    pub aux_embed: u32,
    /// Shard classes (OOV not counted; 0: delta classes only).
    pub shards: u32,
    /// Embedding width of the shard class.
    pub shard_embed: u32,
}

impl Default for ModelShape {
    fn default() -> Self {
        ModelShape {
            vocab: LSTM_VOCAB_DEFAULT_CLASSES,
            hidden: LSTM_HIDDEN_DEFAULT_UNITS,
            layers: LSTM_LAYERS_DEFAULT,
            delta_embed: LSTM_DELTA_EMBED_DEFAULT_DIMS,
            aux_embed: LSTM_AUX_EMBED_DEFAULT_DIMS,
            shards: LSTM_SHARD_VOCAB_DEFAULT_CLASSES,
            shard_embed: LSTM_SHARD_EMBED_DEFAULT_DIMS,
        }
    }
}

impl ModelShape {
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: u32, max: u32| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("lstm {name} {v} must be in 1..={max}"))
            }
        };
        check("vocabulary size", self.vocab, LSTM_VOCAB_MAX_CLASSES)?;
        check("hidden size", self.hidden, LSTM_HIDDEN_MAX_UNITS)?;
        check("layers", self.layers, LSTM_LAYERS_MAX)?;
        check("delta embedding", self.delta_embed, LSTM_EMBED_MAX_DIMS)?;
        check("aux embedding", self.aux_embed, LSTM_EMBED_MAX_DIMS)?;
        check("shard embedding", self.shard_embed, LSTM_EMBED_MAX_DIMS)?;
        if self.shards > LSTM_SHARD_VOCAB_MAX_CLASSES {
            return Err(format!(
                "lstm shard classes {} must be in 0..={LSTM_SHARD_VOCAB_MAX_CLASSES}",
                self.shards
            ));
        }
        Ok(())
    }

    /// Floats of one stream's state (h and c, every layer).
    pub fn state_floats(&self) -> usize {
        2 * self.layers as usize * self.hidden as usize
    }

    /// Output classes: OOV, the delta classes, the shard classes, then the
    /// repeat class (the stream's last delta again).
    pub fn outputs(&self) -> usize {
        1 + self.vocab as usize + self.shards as usize + 1
    }

    /// Output index of the repeat class (the last).
    pub fn repeat_output(&self) -> usize {
        self.outputs() - 1
    }

    /// Output index of shard class `c` (1..=shards).
    pub fn shard_output(&self, c: u32) -> usize {
        debug_assert!(c >= 1 && c <= self.shards);
        self.vocab as usize + c as usize
    }
}

/// Which streams the LSTM follows (see [`super::features::Scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Streams {
    /// One stream per address region of a volume.
    Regions,
    /// One stream per volume.
    Volume,
    /// Both: every event steps its region's stream and its volume's stream
    /// (one batched step), and both predict.
    #[default]
    Both,
}

impl Streams {
    pub fn name(self) -> &'static str {
        match self {
            Streams::Regions => "regions",
            Streams::Volume => "volume",
            Streams::Both => "both",
        }
    }
}

impl std::str::FromStr for Streams {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Streams::Regions, Streams::Volume, Streams::Both]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown lstm streams {s:?} (known: regions, volume, both)"))
    }
}

/// Where the starting weights and vocabulary come from.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub enum ModelSource {
    /// The shipped default model (`LSTM_DEFAULT_MODEL_PATH` under the crate
    /// root, or `$SHARDBLK_LSTM_MODEL`) when it exists and has the requested
    /// shape; else fresh weights.
    #[default]
    Default,
    /// Fresh weights (seeded) and an empty vocabulary that grows online.
    Fresh,
    /// This model file; its shape wins over the options' shape. An unreadable,
    /// corrupt or inconsistent file is an error.
    File(PathBuf),
}

/// Every LSTM knob beyond [`crate::prefetch::PrefetchConfig`] (which gives
/// depth, confidence threshold, `SEQUENCE_LENGTH` = training window, streams).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LstmOptions {
    pub shape: ModelShape,
    pub model: ModelSource,
    /// Adam learning rate of online training.
    pub learning_rate: f64,
    /// Train online (continuous learning) in `background`.
    pub online: bool,
    /// One training step per this many observed events.
    pub train_interval_events: u32,
    /// Windows per training step.
    pub train_batch: u32,
    /// Recent windows kept for training.
    pub buffer_windows: u32,
    /// Training steps between weight swaps into the inference model.
    pub swap_interval_steps: u32,
    /// Extra model steps along the most likely path (predicting further ahead).
    pub lookahead: u32,
    /// Grow the delta vocabulary online.
    pub grow_vocab: bool,
    /// Intra-op threads of the thread that owns the model.
    pub threads: u32,
    /// Seed of fresh weights and of training batch sampling.
    pub seed: u64,
    /// Precision gate (0..=1; 0: off): a stream's predictions are emitted only
    /// while the estimated precision of its recent predictions (emitted or
    /// not) is at least this.
    pub precision_gate: f32,
    /// Which streams the model follows.
    pub streams: Streams,
    /// Entries of a volume stream's memory of its states (0: no memory;
    /// used with the precision gate, whose calibration weighs it).
    pub memory_entries: u32,
}

impl Default for LstmOptions {
    fn default() -> Self {
        LstmOptions {
            shape: ModelShape::default(),
            model: ModelSource::Default,
            learning_rate: LSTM_LEARNING_RATE_DEFAULT,
            online: true,
            train_interval_events: LSTM_TRAIN_INTERVAL_DEFAULT_EVENTS,
            train_batch: LSTM_TRAIN_BATCH_DEFAULT_WINDOWS,
            buffer_windows: LSTM_TRAIN_BUFFER_DEFAULT_WINDOWS,
            swap_interval_steps: LSTM_SWAP_INTERVAL_DEFAULT_STEPS,
            lookahead: LSTM_LOOKAHEAD_DEFAULT_STEPS,
            grow_vocab: true,
            threads: LSTM_THREADS_DEFAULT,
            seed: 1,
            precision_gate: LSTM_PRECISION_GATE_DEFAULT,
            streams: Streams::default(),
            memory_entries: LSTM_MEMORY_DEFAULT_ENTRIES,
        }
    }
}

impl LstmOptions {
    /// Check every field against its limits.
    pub fn validate(&self) -> Result<(), String> {
        self.shape.validate()?;
        if !(0.0..=1.0).contains(&self.precision_gate) {
            return Err(format!(
                "lstm precision gate {} must be in 0..=1",
                self.precision_gate
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= LSTM_LEARNING_RATE_MAX) {
            return Err(format!(
                "lstm learning rate {} must be in (0, {LSTM_LEARNING_RATE_MAX}]",
                self.learning_rate
            ));
        }
        let check = |name: &str, v: u32, lo: u32, max: u32| {
            if (lo..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("lstm {name} {v} must be in {lo}..={max}"))
            }
        };
        check(
            "train interval (events)",
            self.train_interval_events,
            1,
            LSTM_TRAIN_INTERVAL_MAX_EVENTS,
        )?;
        check(
            "train batch (windows)",
            self.train_batch,
            1,
            LSTM_TRAIN_BATCH_MAX_WINDOWS,
        )?;
        check(
            "training buffer (windows)",
            self.buffer_windows,
            self.train_batch,
            LSTM_TRAIN_BUFFER_MAX_WINDOWS,
        )?;
        check(
            "swap interval (steps)",
            self.swap_interval_steps,
            1,
            LSTM_SWAP_INTERVAL_MAX_STEPS,
        )?;
        check(
            "lookahead (steps)",
            self.lookahead,
            0,
            LSTM_LOOKAHEAD_MAX_STEPS,
        )?;
        check(
            "memory (entries)",
            self.memory_entries,
            0,
            LSTM_MEMORY_MAX_ENTRIES,
        )?;
        check("threads", self.threads, 1, LSTM_THREADS_MAX)
    }
}

/// The LSTM knobs of a live device (`shardblk add --lstm-*`), each `None`
/// where not given: the default of the running version applies then, also
/// after an upgrade changes it. A device's record keeps them, so `recover`
/// restarts the model the same way. The shape is not among them: it comes
/// from the model file.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LstmTuning {
    /// [`LstmOptions::lookahead`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookahead: Option<u32>,
    /// [`LstmOptions::streams`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<Streams>,
    /// [`LstmOptions::precision_gate`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision_gate: Option<f32>,
    /// [`LstmOptions::online`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// [`LstmOptions::train_interval_events`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_interval_events: Option<u32>,
    /// [`LstmOptions::learning_rate`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// [`LstmOptions::threads`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// [`LstmOptions::memory_entries`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_entries: Option<u32>,
}

impl LstmTuning {
    /// Nothing given.
    pub fn is_empty(&self) -> bool {
        *self == LstmTuning::default()
    }

    /// `base` with the given knobs set.
    pub fn apply(&self, base: &LstmOptions) -> LstmOptions {
        let mut o = base.clone();
        if let Some(v) = self.lookahead {
            o.lookahead = v;
        }
        if let Some(v) = self.streams {
            o.streams = v;
        }
        if let Some(v) = self.precision_gate {
            o.precision_gate = v;
        }
        if let Some(v) = self.online {
            o.online = v;
        }
        if let Some(v) = self.train_interval_events {
            o.train_interval_events = v;
        }
        if let Some(v) = self.learning_rate {
            o.learning_rate = v;
        }
        if let Some(v) = self.threads {
            o.threads = v;
        }
        if let Some(v) = self.memory_entries {
            o.memory_entries = v;
        }
        o
    }

    /// Check the given knobs against their limits (as the defaults' options).
    pub fn validate(&self) -> Result<(), String> {
        self.apply(&LstmOptions::default()).validate()
    }
}

/// The shipped default model's path: `$SHARDBLK_LSTM_MODEL`, else
/// `LSTM_DEFAULT_MODEL_PATH` under the crate root.
pub fn default_model_path() -> PathBuf {
    std::env::var_os("SHARDBLK_LSTM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(LSTM_DEFAULT_MODEL_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_valid_and_bounds_enforced() {
        let ok = LstmOptions::default();
        assert!(ok.validate().is_ok());
        let bad = [
            LstmOptions {
                learning_rate: 0.0,
                ..ok.clone()
            },
            LstmOptions {
                threads: 0,
                ..ok.clone()
            },
            LstmOptions {
                buffer_windows: ok.train_batch - 1,
                ..ok.clone()
            },
            LstmOptions {
                shape: ModelShape {
                    vocab: LSTM_VOCAB_MAX_CLASSES + 1,
                    ..ok.shape
                },
                ..ok.clone()
            },
            LstmOptions {
                shape: ModelShape {
                    layers: 0,
                    ..ok.shape
                },
                ..ok.clone()
            },
            LstmOptions {
                shape: ModelShape {
                    shards: LSTM_SHARD_VOCAB_MAX_CLASSES + 1,
                    ..ok.shape
                },
                ..ok.clone()
            },
            LstmOptions {
                lookahead: LSTM_LOOKAHEAD_MAX_STEPS + 1,
                ..ok.clone()
            },
            LstmOptions {
                memory_entries: LSTM_MEMORY_MAX_ENTRIES + 1,
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
        assert_eq!(
            ok.shape.state_floats(),
            (2 * LSTM_LAYERS_DEFAULT * LSTM_HIDDEN_DEFAULT_UNITS) as usize
        );
        let delta_only = ModelShape {
            shards: 0,
            ..ok.shape
        };
        assert!(delta_only.validate().is_ok());
        assert_eq!(
            delta_only.outputs(),
            2 + LSTM_VOCAB_DEFAULT_CLASSES as usize
        );
        assert_eq!(delta_only.repeat_output(), delta_only.outputs() - 1);
        assert_eq!(
            ok.shape.repeat_output(),
            1 + (LSTM_VOCAB_DEFAULT_CLASSES + LSTM_SHARD_VOCAB_DEFAULT_CLASSES) as usize
        );
        assert_eq!(
            ok.shape.shard_output(1),
            1 + LSTM_VOCAB_DEFAULT_CLASSES as usize
        );
        assert_eq!("volume".parse::<Streams>(), Ok(Streams::Volume));
        assert!("region".parse::<Streams>().is_err());
    }

    #[test]
    fn tuning_sets_only_what_was_given_and_survives_its_record() {
        let base = LstmOptions::default();
        assert!(LstmTuning::default().is_empty());
        assert_eq!(LstmTuning::default().apply(&base), base);
        let t = LstmTuning {
            lookahead: Some(0),
            streams: Some(Streams::Regions),
            online: Some(false),
            ..Default::default()
        };
        let o = t.apply(&base);
        assert_eq!(
            (o.lookahead, o.streams, o.online),
            (0, Streams::Regions, false)
        );
        assert_eq!(o.precision_gate, base.precision_gate);
        assert_eq!(o.threads, base.threads);
        assert!(t.validate().is_ok());
        // Only the given knobs are written: a record keeps no defaults.
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"lookahead":0,"streams":"Regions","online":false}"#
        );
        assert_eq!(serde_json::from_str::<LstmTuning>(&json).unwrap(), t);
        assert_eq!(
            serde_json::from_str::<LstmTuning>("{}").unwrap(),
            LstmTuning::default()
        );
        let bad = |t: LstmTuning| t.validate().unwrap_err();
        assert!(bad(LstmTuning {
            lookahead: Some(LSTM_LOOKAHEAD_MAX_STEPS + 1),
            ..Default::default()
        })
        .contains("lookahead"));
        assert!(bad(LstmTuning {
            precision_gate: Some(1.5),
            ..Default::default()
        })
        .contains("gate"));
        assert!(bad(LstmTuning {
            threads: Some(0),
            ..Default::default()
        })
        .contains("threads"));
    }
}
