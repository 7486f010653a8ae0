//! The run acceptor: gradient-boosted trees, refit online, that say how
//! likely the shards after a read run are to be read in time.
//!
//! The LSTM sees a shard once per visit: the reads inside it are no model
//! inputs. But whether a run goes on into the next shard shows in those
//! reads: how many requests the run made and how many bytes, how far into
//! its shard the last one reached, how large it was, how fast they come
//! (session 12, umass websearch at 64 KiB shards: a classifier over these
//! features stages far more of what is read at precision 0.5 than any
//! run-length rule; an online MLP over the same features did not get there,
//! boosted trees refit on every label known so far did). The predictor's
//! run source ([`crate::predictor`]) asks the acceptor for each candidate's
//! probability at every read of a region stream; each judgment's row is
//! learned once its deadline came, labelled read in time or not.
//!
//! Contract:
//! - [`RunContext::features`] is a fixed-width row (`ACCEPT_FEATURES`) of
//!   plain numbers (no scaling: trees split on order).
//! - [`Acceptor::predict`] gives a probability in 0..1 per row; 0 before the
//!   first fit (the run source stages nothing it has not learned).
//! - [`Acceptor::learn`] keeps the last `LSTM_ACCEPT_SAMPLES_MAX` labelled
//!   samples. [`Acceptor::train`], called between batches, starts a fit of
//!   `LSTM_ACCEPT_TREES` trees on a worker thread over every kept sample
//!   once `LSTM_ACCEPT_FIRST_FIT_SAMPLES` (then `LSTM_ACCEPT_REFIT_SAMPLES`
//!   more) came (where all have one label, that label's rate: a trace whose
//!   runs always go on); the fitted trees replace the
//!   current ones once `LSTM_ACCEPT_INSTALL_SAMPLES` more samples came after
//!   the fit started (waiting for the worker there if it is not done). So
//!   inference never waits for a fit in progress, except where the worker
//!   falls that far behind, and the acceptor's output depends only on the
//!   samples it was given: a seeded run is repeatable.
//! - It always runs on the CPU, one thread per fit (`shardblk-accept`): it
//!   is too small for a GPU to pay off. Each fit measures its worker's CPU
//!   time ([`Acceptor::fit_total`]), which the live model thread charges to
//!   its own CPU share (see `PredictorFigures::helper_cpu_ns`).

use forust_ml::{GradientBooster, Matrix};
use shardblk::constants::{
    LSTM_ACCEPT_FIRST_FIT_SAMPLES, LSTM_ACCEPT_INSTALL_SAMPLES, LSTM_ACCEPT_LEARNING_RATE,
    LSTM_ACCEPT_REFIT_SAMPLES, LSTM_ACCEPT_SAMPLES_MAX, LSTM_ACCEPT_TREES, LSTM_ACCEPT_TREE_DEPTH,
    LSTM_RUN_CANDIDATES,
};
use shardblk::threads::thread_cpu_time;
use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::Duration;

/// The name of a fit's worker thread (it inherits the spawning thread's
/// nice value; per-thread CPU figures show it apart).
pub const ACCEPT_THREAD_NAME: &str = "shardblk-accept";

/// Width of [`RunContext::features`].
pub const ACCEPT_FEATURES: usize = 9;

/// What the run source knows at a read of a region stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunContext {
    /// Last shard of the run the read continued or started.
    pub last: u64,
    /// Earlier requests of that run (0: the read started it).
    pub requests: u32,
    /// Shards the run has covered so far.
    pub shards: u64,
    /// Bytes its requests asked for so far, this one included.
    pub bytes: u64,
    /// How far into its last shard the read reached, in eighths (1..=8).
    pub end_eighths: u8,
    /// The read's own length in bytes.
    pub request_bytes: u32,
    /// Since the stream's previous request, and since the previous request
    /// of any stream (ns).
    pub stream_gap_ns: u64,
    pub global_gap_ns: u64,
    /// The predictor's events since the run started.
    pub age_events: u64,
}

impl RunContext {
    /// The acceptor's row for the candidate `step` shards after the run
    /// (1..=`LSTM_RUN_CANDIDATES`): run requests, steps ahead, end eighths,
    /// log2 of the request's bytes, log2(1 + gap in µs) for the stream and
    /// all streams, run shards, log2(1 + run bytes), run age in events.
    pub fn features(&self, step: u64) -> [f64; ACCEPT_FEATURES] {
        debug_assert!((1..=LSTM_RUN_CANDIDATES).contains(&step));
        let log1p = |v: u64| (v as f64 + 1.0).log2();
        [
            f64::from(self.requests),
            step as f64,
            f64::from(self.end_eighths),
            f64::from(self.request_bytes.max(1)).log2(),
            log1p(self.stream_gap_ns / 1_000),
            log1p(self.global_gap_ns / 1_000),
            self.shards as f64,
            log1p(self.bytes),
            self.age_events as f64,
        ]
    }
}

/// A labelled sample: a candidate's row, and whether it was read in time.
type Sample = ([f64; ACCEPT_FEATURES], bool);

/// Column-major matrix data of `rows` (forust's layout).
fn columns<'a>(rows: impl ExactSizeIterator<Item = &'a [f64; ACCEPT_FEATURES]>) -> Vec<f64> {
    let n = rows.len();
    let mut data = vec![0f64; n * ACCEPT_FEATURES];
    for (r, row) in rows.enumerate() {
        for (c, v) in row.iter().enumerate() {
            data[c * n + r] = *v;
        }
    }
    data
}

/// What the acceptor says: boosted trees, or one probability where every
/// sample had the same label (a trace whose runs always go on, or never).
enum Trees {
    Boosted(Box<GradientBooster>),
    Constant(f64),
}

/// Fit boosted trees to `samples` (log loss); a constant where they all
/// have one label (trees cannot split on nothing). With the CPU time the
/// fit took on the calling thread.
fn fit(samples: &[Sample]) -> Option<(Trees, Duration)> {
    let t0 = thread_cpu_time();
    let trees = fit_trees(samples)?;
    Some((trees, thread_cpu_time().saturating_sub(t0)))
}

fn fit_trees(samples: &[Sample]) -> Option<Trees> {
    let positives = samples.iter().filter(|s| s.1).count();
    if positives == 0 || positives == samples.len() {
        return Some(Trees::Constant(
            positives as f64 / samples.len().max(1) as f64,
        ));
    }
    let data = columns(samples.iter().map(|s| &s.0));
    let y: Vec<f64> = samples.iter().map(|s| f64::from(u8::from(s.1))).collect();
    let m = Matrix::new(&data, samples.len(), ACCEPT_FEATURES);
    let mut g = GradientBooster::default()
        .set_iterations(LSTM_ACCEPT_TREES)
        .set_learning_rate(LSTM_ACCEPT_LEARNING_RATE)
        .set_max_depth(LSTM_ACCEPT_TREE_DEPTH)
        .set_parallel(false);
    g.fit_unweighted(&m, &y, None).ok()?;
    Some(Trees::Boosted(Box::new(g)))
}

/// A fit in progress: its worker, and the samples learned since it started.
struct Fitting {
    worker: JoinHandle<Option<(Trees, Duration)>>,
    since: u32,
}

/// The trees in use, the labelled samples and the fit in progress.
pub struct Acceptor {
    trees: Option<Trees>,
    samples: VecDeque<Sample>,
    /// Provisional samples ([`Self::learn_provisional`]).
    provisional: Vec<Sample>,
    /// Samples learned since the last fit started.
    fresh: u32,
    fitting: Option<Fitting>,
    /// Fits installed, and the CPU time the last and all of them took (on
    /// their workers).
    pub fits: u64,
    pub fit_last: Duration,
    pub fit_total: Duration,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("samples", &self.samples.len())
            .field("fits", &self.fits)
            .field("fit_last", &self.fit_last)
            .field("fit_total", &self.fit_total)
            .finish()
    }
}

impl Default for Acceptor {
    fn default() -> Self {
        Acceptor::new()
    }
}

impl Acceptor {
    /// No trees yet, no samples.
    pub fn new() -> Acceptor {
        Acceptor {
            trees: None,
            samples: VecDeque::with_capacity(LSTM_ACCEPT_FIRST_FIT_SAMPLES as usize),
            provisional: Vec::new(),
            fresh: 0,
            fitting: None,
            fits: 0,
            fit_last: Duration::ZERO,
            fit_total: Duration::ZERO,
        }
    }

    /// The probability of being read in time, per row (0 before the first fit).
    pub fn predict(&self, rows: &[[f64; ACCEPT_FEATURES]]) -> Vec<f64> {
        let trees = match &self.trees {
            None => return vec![0.0; rows.len()],
            Some(Trees::Constant(p)) => return vec![*p; rows.len()],
            Some(Trees::Boosted(trees)) => trees,
        };
        if rows.is_empty() {
            return Vec::new();
        }
        let data = columns(rows.iter());
        let m = Matrix::new(&data, rows.len(), ACCEPT_FEATURES);
        trees
            .predict(&m, false)
            .into_iter()
            .map(|z| 1.0 / (1.0 + (-z).exp()))
            .collect()
    }

    /// Keep a labelled sample: a candidate with this row was read in time
    /// or not ([`Self::train`] learns from it).
    pub fn learn(&mut self, x: [f64; ACCEPT_FEATURES], read: bool) {
        if self.samples.len() == LSTM_ACCEPT_SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back((x, read));
        if self.samples.len() >= LSTM_ACCEPT_FIRST_FIT_SAMPLES as usize {
            self.provisional = Vec::new();
        }
        self.counted();
    }

    /// Keep a provisional sample (labelled before its real deadline, to
    /// start with): fits use these only until `LSTM_ACCEPT_FIRST_FIT_SAMPLES`
    /// real ones came.
    pub fn learn_provisional(&mut self, x: [f64; ACCEPT_FEATURES], read: bool) {
        if self.samples.len() >= LSTM_ACCEPT_FIRST_FIT_SAMPLES as usize
            || self.provisional.len() >= LSTM_ACCEPT_SAMPLES_MAX
        {
            return;
        }
        self.provisional.push((x, read));
        self.counted();
    }

    fn counted(&mut self) {
        self.fresh = self.fresh.saturating_add(1);
        if let Some(f) = &mut self.fitting {
            f.since = f.since.saturating_add(1);
        }
    }

    /// Install a finished fit that is due, then start a new one when enough
    /// samples came; whether it did either. Off the inference path: the
    /// predictor calls it between batches.
    pub fn train(&mut self) -> bool {
        let mut did = false;
        if self
            .fitting
            .as_ref()
            .is_some_and(|f| f.since >= LSTM_ACCEPT_INSTALL_SAMPLES)
        {
            let f = self.fitting.take().expect("checked");
            // A worker that panicked or failed leaves the trees in use.
            if let Ok(Some((trees, took))) = f.worker.join() {
                self.trees = Some(trees);
                self.fits += 1;
                self.fit_last = took;
                self.fit_total += took;
                did = true;
            }
        }
        let due = if self.trees.is_none() && self.fits == 0 {
            self.samples.len() + self.provisional.len() >= LSTM_ACCEPT_FIRST_FIT_SAMPLES as usize
        } else {
            self.fresh >= LSTM_ACCEPT_REFIT_SAMPLES
        };
        if self.fitting.is_none() && due {
            let samples: Vec<Sample> = self
                .provisional
                .iter()
                .chain(self.samples.iter())
                .copied()
                .collect();
            // A worker that cannot be started leaves the trees in use and
            // is tried again after the next batch.
            if let Ok(worker) = std::thread::Builder::new()
                .name(ACCEPT_THREAD_NAME.into())
                .spawn(move || fit(&samples))
            {
                self.fresh = 0;
                self.fitting = Some(Fitting { worker, since: 0 });
                did = true;
            }
        }
        did
    }

    /// Whether it has fitted yet (before, it says 0 to everything).
    pub fn ready(&self) -> bool {
        self.trees.is_some()
    }

    /// Samples kept for fitting.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn ctx(requests: u32, end_eighths: u8) -> RunContext {
        RunContext {
            last: 10,
            requests,
            shards: 1,
            bytes: 4096 * u64::from(requests + 1),
            end_eighths,
            request_bytes: 4096,
            stream_gap_ns: 1_000_000,
            global_gap_ns: 500_000,
            age_events: u64::from(requests),
        }
    }

    #[test]
    fn features_are_the_documented_numbers() {
        let x = ctx(3, 8).features(2);
        assert_eq!(x[0], 3.0);
        assert_eq!(x[1], 2.0);
        assert_eq!(x[2], 8.0);
        assert_eq!(x[3], 12.0, "log2 4096");
        assert_eq!(x[4], 1001f64.log2());
        assert_eq!(x[7], 16385f64.log2());
    }

    /// Feed `n` seeded samples where runs of 3 or more requests that ended
    /// late in their shard go on and the others do not, calling `train`
    /// after each, as the predictor does between batches.
    fn fed(n: usize) -> Acceptor {
        let mut a = Acceptor::new();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..n {
            let requests = rng.random_range(0..8u32);
            let end = rng.random_range(1..=8u8);
            let step = rng.random_range(1..=LSTM_RUN_CANDIDATES);
            let goes_on = requests >= 3 && end >= 5;
            a.learn(ctx(requests, end).features(step), goes_on);
            a.train();
        }
        a
    }

    #[test]
    fn says_nothing_before_its_first_fit() {
        let a = fed(LSTM_ACCEPT_FIRST_FIT_SAMPLES as usize - 1);
        assert_eq!(a.fits, 0);
        assert_eq!(a.predict(&[ctx(5, 8).features(1)]), vec![0.0]);
    }

    #[test]
    fn learns_which_runs_go_on() {
        let a = fed(6_000);
        let p = a.predict(&[
            ctx(0, 2).features(1),
            ctx(5, 8).features(1),
            ctx(5, 2).features(1),
        ]);
        assert!(a.fits >= 2 && a.samples() == 6_000, "{a:?}");
        // each fit's CPU, measured on its worker, adds up
        assert!(
            a.fit_last > Duration::ZERO && a.fit_total > a.fit_last,
            "{a:?}"
        );
        assert!(p[1] > 0.9, "a long run ending late goes on: {p:?}");
        assert!(p[0] < 0.1 && p[2] < 0.1, "the others do not: {p:?}");
    }

    #[test]
    fn runs_that_always_go_on_are_accepted() {
        let mut a = Acceptor::new();
        for k in 0..(LSTM_ACCEPT_FIRST_FIT_SAMPLES + LSTM_ACCEPT_INSTALL_SAMPLES) {
            a.learn(ctx(k % 8, 8).features(1), true);
            a.train();
        }
        assert_eq!(a.fits, 1);
        assert_eq!(a.predict(&[ctx(0, 1).features(2)]), vec![1.0]);
    }

    #[test]
    fn a_seeded_run_is_repeatable() {
        let rows = [ctx(2, 6).features(1), ctx(4, 5).features(2)];
        assert_eq!(fed(3_000).predict(&rows), fed(3_000).predict(&rows));
    }
}
