//! The LSTM prefetcher (issue 4): delta-class features per stream, a
//! libtorch LSTM whose state is carried per stream between batched steps,
//! online training on a separate copy of the weights, and a checksummed
//! model file.
//!
//! Files, one concern each: [`vocab`] (the learned delta vocabulary),
//! [`features`] (event → inputs), [`config`] (knobs and limits), [`file`]
//! (the model file container) are pure and exist without the `lstm`
//! feature; [`model`] (the network), [`train`] (online and offline
//! training), [`predictor`] (the [`crate::prefetch::Predictor`]) and
//! [`offline`] (`trace train`) need tch and are behind the `lstm` feature.
//!
//! The model runs on CUDA when built with the `cuda` feature and a GPU is
//! present, else on the CPU, with `LstmOptions::threads` intra-op threads.

pub mod config;
pub mod features;
pub mod file;
pub mod vocab;

#[cfg(feature = "lstm")]
pub mod model;
#[cfg(feature = "lstm")]
pub mod offline;
#[cfg(feature = "lstm")]
pub mod predictor;
#[cfg(feature = "lstm")]
pub mod train;

pub use config::{LstmOptions, ModelShape, ModelSource};
pub use file::{FileError, ModelFile};
#[cfg(feature = "lstm")]
pub use predictor::LstmPredictor;

/// Errors of the LSTM predictor and its training.
#[derive(Debug, thiserror::Error)]
pub enum LstmError {
    #[error("lstm configuration: {0}")]
    Config(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[cfg(feature = "lstm")]
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
