//! The LSTM prefetcher on libtorch (issue 4), kept out of the `shardblk`
//! library so that only the processes that use it load libtorch.
//!
//! Files, one concern each: [`model`] (the network), [`accept`] (the run
//! acceptor: boosted trees, refit online, that judge the shards after read
//! runs), [`train`] (online and offline training steps), [`memory`] (a volume stream's memory of its
//! states and what followed them), [`predictor`] (the
//! [`shardblk::prefetch::Predictor`]), [`offline`] (`trace train`). The
//! pure parts (delta vocabulary, features, options, the model file) are in
//! `shardblk::prefetch::lstm`. [`register`] makes this the process's
//! [`LstmBackend`], after which `PredictorKind::Lstm` builds an
//! [`LstmPredictor`].
//!
//! The model runs on CUDA when built with the `cuda` feature and a GPU is
//! present, else on the CPU, with `LstmOptions::threads` intra-op threads.

pub mod accept;
pub mod memory;
pub mod model;
pub mod offline;
pub mod predictor;
pub mod train;

pub use predictor::LstmPredictor;

use shardblk::prefetch::lstm::{LstmBackend, LstmError, LstmOptions, OfflineJob, OfflineResult};
use shardblk::prefetch::{Predictor, PrefetchConfig};
use shardblk::trace::TraceEvent;

/// libtorch's error as the library's.
pub(crate) fn torch(e: tch::TchError) -> LstmError {
    LstmError::Torch(e.to_string())
}

/// The backend [`register`] installs.
struct Torch;

impl LstmBackend for Torch {
    fn predictor(
        &self,
        cfg: &PrefetchConfig,
        opts: &LstmOptions,
    ) -> Result<Box<dyn Predictor>, LstmError> {
        LstmPredictor::new(cfg, opts).map(|p| Box::new(p) as Box<dyn Predictor>)
    }

    fn train_offline(
        &self,
        traces: &[&[TraceEvent]],
        job: &OfflineJob,
        progress: &mut dyn FnMut(u64, u64, f32),
    ) -> Result<OfflineResult, LstmError> {
        offline::train_offline(traces, job, progress)
    }
}

static TORCH: Torch = Torch;

/// Make the libtorch LSTM this process's backend (idempotent).
pub fn register() {
    shardblk::prefetch::lstm::register(&TORCH);
}
