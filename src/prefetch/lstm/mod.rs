//! The LSTM prefetcher (issue 4): delta-class and shard-class features per
//! stream (address regions and whole volumes), a
//! libtorch LSTM whose state is carried per stream between batched steps,
//! online training on a separate copy of the weights, and a checksummed
//! model file.
//!
//! Files, one concern each, all pure (no libtorch): [`vocab`] (the learned
//! delta and shard vocabularies), [`features`] (event → inputs, streams), [`config`] (knobs and
//! limits), [`file`] (the model file container), [`backend`] (the seam to
//! the network). The network, its training and the predictor need tch and
//! live in `crates/shardblk-lstm`, which registers itself as the
//! [`backend::LstmBackend`].

pub mod backend;
pub mod config;
pub mod features;
pub mod file;
pub mod vocab;

pub use backend::{backend, register, vocabs_of, LstmBackend, OfflineJob, OfflineResult};
pub use config::{default_model_path, LstmOptions, LstmTuning, ModelShape, ModelSource, Streams};
pub use file::{FileError, ModelFile};

/// Errors of the LSTM predictor and its training.
#[derive(Debug, thiserror::Error)]
pub enum LstmError {
    #[error("lstm configuration: {0}")]
    Config(String),
    #[error(transparent)]
    File(#[from] FileError),
    /// libtorch failed (its message).
    #[error("libtorch: {0}")]
    Torch(String),
    /// No backend in this process ([`backend::NO_BACKEND`]).
    #[error("{}", backend::NO_BACKEND)]
    NoBackend,
}
