//! Prefetch Engine: predictors of the shards a workload is about to read,
//! the baselines, synthetic workloads and the offline evaluation simulator.
//!
//! Contract (the seam every predictor plugs into, LSTM included):
//! - Events arrive as [`ShardEvent`]s: a traced request translated to the
//!   shards it touches (shard index = offset / shard size).
//! - Streams: an event belongs to the stream `(volume, offset >> region_shift)`
//!   ([`StreamKey`]); predictors keep per-stream state in bounded
//!   [`stream::LruMap`] tables ([`PREFETCH_STREAMS_MAX`] streams, least
//!   recently used evicted), so interleaved workloads in different regions do
//!   not blur each other and memory stays bounded whatever the trace.
//! - [`Predictor::step`] takes a *batch* of events (several streams
//!   interleaved, in time order) and appends predictions for the streams in
//!   the batch. A batch API rather than per-event calls because the
//!   inference thread drains the trace rings in batches and the LSTM runs one
//!   batched forward step over every stream with new events (its state
//!   carried per stream between steps); baselines simply loop. A predictor
//!   emits at most `depth` predictions per stream per step, only shards it
//!   has not already predicted for that stream recently, and never panics on
//!   any input.
//! - The caller (stager or [`sim`]) drops predictions below the confidence
//!   threshold and de-duplicates against shards already hot.

pub mod chart;
pub mod eval;
pub mod lstm;
pub mod markov;
pub mod readahead;
pub mod sim;
pub mod stream;
pub mod stride;
pub mod synth;
// The live engine of a device: prediction ring, stager, inference thread.
pub mod demand;
pub mod live;
pub mod pace;
pub mod remote;
pub mod ring;
pub mod stager;

use crate::constants::{
    PREFETCH_CONFIDENCE_MIN_DEFAULT, PREFETCH_DEPTH_DEFAULT_SHARDS, PREFETCH_DEPTH_MAX_SHARDS,
    PREFETCH_REGION_SHIFT_DEFAULT_BITS, PREFETCH_REGION_SHIFT_MAX_BITS,
    PREFETCH_REGION_SHIFT_MIN_BITS, PREFETCH_STREAMS_MAX, SEQUENCE_LENGTH_DEFAULT_EVENTS,
    SEQUENCE_LENGTH_MAX_EVENTS, SHARD_SIZE_DEFAULT_BYTES, SHARD_SIZE_MAX_BYTES,
    SHARD_SIZE_MIN_BYTES,
};
use crate::trace::{Op, TraceEvent};

/// Errors of prefetch configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrefetchError {
    #[error("invalid prefetch configuration: {0}")]
    Config(String),
    #[error("unknown predictor {0:?} (known: none, readahead, stride, markov, lstm)")]
    UnknownPredictor(String),
    /// The LSTM could not be built (model file, libtorch, or no LSTM
    /// backend in this process); the message says which.
    #[error("lstm predictor: {0}")]
    Lstm(String),
}

/// Configuration shared by every predictor.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PrefetchConfig {
    /// Shard size in bytes (power of two within the shard bounds).
    pub shard_bytes: u64,
    /// `PREFETCH_DEPTH`: most shards predicted per stream per step
    /// (default [`PREFETCH_DEPTH_DEFAULT_SHARDS`]).
    pub depth: u32,
    /// Predictions below this confidence (0..=1) are not staged
    /// (default [`PREFETCH_CONFIDENCE_MIN_DEFAULT`]).
    pub confidence_min: f32,
    /// `SEQUENCE_LENGTH`: events per stream in the LSTM window
    /// (default [`SEQUENCE_LENGTH_DEFAULT_EVENTS`]; unused by baselines).
    pub sequence_length: u32,
    /// Stream rule: regions of `2^region_shift` bytes
    /// (default [`PREFETCH_REGION_SHIFT_DEFAULT_BITS`]).
    pub region_shift: u32,
    /// Streams held per predictor table (default [`PREFETCH_STREAMS_MAX`]).
    pub streams_max: usize,
    /// Staged shards the hot tier holds for the predictor (the stager's
    /// budget; the simulator's hot tier), 0 when unknown: a staged shard
    /// read much later than this many events after its prediction has
    /// likely been evicted. The LSTM's precision estimates use it.
    pub stage_capacity_shards: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            shard_bytes: SHARD_SIZE_DEFAULT_BYTES,
            depth: PREFETCH_DEPTH_DEFAULT_SHARDS,
            confidence_min: PREFETCH_CONFIDENCE_MIN_DEFAULT,
            sequence_length: SEQUENCE_LENGTH_DEFAULT_EVENTS,
            region_shift: PREFETCH_REGION_SHIFT_DEFAULT_BITS,
            streams_max: PREFETCH_STREAMS_MAX,
            stage_capacity_shards: 0,
        }
    }
}

impl PrefetchConfig {
    /// Check every field against its bounds.
    pub fn validate(&self) -> Result<(), PrefetchError> {
        let bad = |s: String| Err(PrefetchError::Config(s));
        if !self.shard_bytes.is_power_of_two()
            || !(SHARD_SIZE_MIN_BYTES..=SHARD_SIZE_MAX_BYTES).contains(&self.shard_bytes)
        {
            return bad(format!(
                "shard size {} B must be a power of two in {SHARD_SIZE_MIN_BYTES}..={SHARD_SIZE_MAX_BYTES}",
                self.shard_bytes
            ));
        }
        if !(1..=PREFETCH_DEPTH_MAX_SHARDS).contains(&self.depth) {
            return bad(format!(
                "depth {} must be in 1..={PREFETCH_DEPTH_MAX_SHARDS} shards",
                self.depth
            ));
        }
        if !(0.0..=1.0).contains(&self.confidence_min) {
            return bad(format!(
                "confidence threshold {} must be in 0..=1",
                self.confidence_min
            ));
        }
        if !(1..=SEQUENCE_LENGTH_MAX_EVENTS).contains(&self.sequence_length) {
            return bad(format!(
                "sequence length {} must be in 1..={SEQUENCE_LENGTH_MAX_EVENTS} events",
                self.sequence_length
            ));
        }
        if !(PREFETCH_REGION_SHIFT_MIN_BITS..=PREFETCH_REGION_SHIFT_MAX_BITS)
            .contains(&self.region_shift)
            || (1u64 << self.region_shift) < self.shard_bytes
        {
            return bad(format!(
                "region shift {} must be in {PREFETCH_REGION_SHIFT_MIN_BITS}..={PREFETCH_REGION_SHIFT_MAX_BITS} and regions no smaller than a shard",
                self.region_shift
            ));
        }
        if self.streams_max == 0 {
            return bad("streams_max must be positive".into());
        }
        Ok(())
    }

    /// Shards per region.
    pub fn region_shards(&self) -> u64 {
        (1u64 << self.region_shift) / self.shard_bytes
    }

    /// Translate a trace event of `volume` into a shard event.
    pub fn shard_event(&self, volume: u32, ev: &TraceEvent) -> ShardEvent {
        let first = ev.offset / self.shard_bytes;
        let last = if ev.len == 0 {
            first
        } else {
            (ev.offset + ev.len - 1) / self.shard_bytes
        };
        ShardEvent {
            ts_ns: ev.ts_ns,
            volume,
            op: ev.op,
            shard: first,
            shards: (last - first + 1).min(u64::from(u32::MAX)) as u32,
            end_eighths: {
                let end = ev.offset + ev.len.max(1);
                let into = end - last * self.shard_bytes;
                (into * 8).div_ceil(self.shard_bytes).clamp(1, 8) as u8
            },
            bytes: ev.len.min(u64::from(u32::MAX)) as u32,
        }
    }

    /// The stream an event belongs to.
    pub fn stream_of(&self, ev: &ShardEvent) -> StreamKey {
        StreamKey {
            volume: ev.volume,
            region: ev.shard / self.region_shards(),
        }
    }
}

/// A traced request in shard units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardEvent {
    pub ts_ns: u64,
    pub volume: u32,
    pub op: Op,
    /// First shard touched.
    pub shard: u64,
    /// Shards touched (at least 1).
    pub shards: u32,
    /// How far into its last shard the request reaches, in eighths of a
    /// shard (1..=8, rounded up).
    pub end_eighths: u8,
    /// The request's length in bytes (saturated at `u32::MAX`).
    pub bytes: u32,
}

impl ShardEvent {
    /// A one-shard read of volume 0 at time 0 (tests of the predictors).
    #[cfg(test)]
    pub(crate) fn read_of(shard: u64) -> ShardEvent {
        ShardEvent {
            ts_ns: 0,
            volume: 0,
            op: Op::Read,
            shard,
            shards: 1,
            end_eighths: 8,
            bytes: 4096,
        }
    }

    /// Last shard touched.
    pub fn last_shard(&self) -> u64 {
        self.shard + u64::from(self.shards.max(1)) - 1
    }
}

/// Identity of a stream: the volume and the address region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub volume: u32,
    pub region: u64,
}

/// One predicted shard.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub volume: u32,
    pub shard: u64,
    /// 0..=1, how sure the predictor is the shard will be read soon.
    pub confidence: f32,
}

/// A shard predictor. See the module contract.
pub trait Predictor: Send {
    /// Short name used in tables and on the command line.
    fn name(&self) -> &'static str;
    /// Observe a batch of events (time order, streams interleaved) and append
    /// predictions for the streams that had events in the batch.
    fn step(&mut self, batch: &[ShardEvent], out: &mut Vec<Prediction>);
    /// Background work between batches, bounded by `budget` (the LSTM trains
    /// online on recent windows here and swaps in the new weights). Returns
    /// whether it did any work. Baselines have none.
    fn background(&mut self, _budget: std::time::Duration) -> bool {
        false
    }
    /// Most events one step should take. The live inference thread feeds
    /// a larger backlog's newest events and counts the older ones as skipped,
    /// so a predictor with a high cost per event (the LSTM: one recurrent
    /// step per event of a stream) bounds each step's latency, and with it
    /// the sleep its CPU share owes afterwards. Baselines take any batch.
    fn step_events_max(&self) -> usize {
        usize::MAX
    }
    /// Fewest events the live inference thread gathers before a step (it
    /// steps a smaller batch once the oldest event waited
    /// `PREFETCH_STEP_WAIT_MAX_MS`): a predictor with a high fixed cost per
    /// step (the LSTM) then steps on a batch, not on the one event that came
    /// in first. Baselines step on every turn with events (1).
    fn step_events_min(&self) -> usize {
        1
    }
    /// Whether the predictor's own measure says its predictions would be
    /// right this often (the LSTM: its tracked candidates' measured
    /// precision reached its gate) although it may not have emitted any yet
    /// (calibrating). The live inference thread then runs at its full CPU
    /// share ([`pace`]); otherwise only queued predictions earn it.
    fn promising(&self) -> bool {
        false
    }
    /// Figures for `shardblk stats` and the evaluation tables.
    fn figures(&self) -> PredictorFigures {
        PredictorFigures::default()
    }
}

/// What a predictor reports about its own work (all counters since start).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PredictorFigures {
    /// Batches stepped (the LSTM: batched forward steps).
    pub batches: u64,
    /// Events fed to the model.
    pub events: u64,
    /// Latency of the last and the mean batch step, nanoseconds.
    pub batch_ns_last: u64,
    pub batch_ns_mean: u64,
    /// Online training steps done, and the latest training loss.
    pub train_steps: u64,
    pub train_loss: Option<f32>,
    /// Work skipped under overload (events not fed, training skipped).
    pub skipped: u64,
    /// Jobs finished on the predictor's helper threads (the LSTM's run
    /// acceptor fits), and the CPU they used (ns, each worker's own thread
    /// CPU time): work done off the calling thread, which the live model
    /// thread charges to its CPU share as if it had done it itself.
    pub helper_jobs: u64,
    pub helper_cpu_ns: u64,
}

/// The predictor that never predicts (the "no prefetch" reference).
#[derive(Debug, Default)]
pub struct NonePredictor;

impl Predictor for NonePredictor {
    fn name(&self) -> &'static str {
        "none"
    }
    fn step(&mut self, _batch: &[ShardEvent], _out: &mut Vec<Prediction>) {}
}

/// The predictors that can be built by name ([`PredictorKind::build`],
/// [`PredictorKind::build_with`] for the LSTM's own options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PredictorKind {
    None,
    Readahead,
    Stride,
    Markov,
    Lstm,
}

impl PredictorKind {
    /// Every kind, in table order.
    pub const ALL: [PredictorKind; 5] = [
        PredictorKind::None,
        PredictorKind::Readahead,
        PredictorKind::Stride,
        PredictorKind::Markov,
        PredictorKind::Lstm,
    ];

    /// The classical baselines (and the no-prefetch reference).
    pub const BASELINES: [PredictorKind; 4] = [
        PredictorKind::None,
        PredictorKind::Readahead,
        PredictorKind::Stride,
        PredictorKind::Markov,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PredictorKind::None => "none",
            PredictorKind::Readahead => "readahead",
            PredictorKind::Stride => "stride",
            PredictorKind::Markov => "markov",
            PredictorKind::Lstm => "lstm",
        }
    }

    /// Build a fresh predictor of this kind (the LSTM with default options:
    /// the shipped default model if compatible, else fresh weights).
    pub fn build(self, cfg: &PrefetchConfig) -> Result<Box<dyn Predictor>, PrefetchError> {
        self.build_with(cfg, &lstm::LstmOptions::default())
    }

    /// Build a predictor of this kind; `lstm` configures the LSTM (model
    /// file, sizes, online training, threads) and is ignored by the others.
    /// Call it in the thread that will own the predictor (the LSTM sets
    /// libtorch's intra-op threads).
    pub fn build_with(
        self,
        cfg: &PrefetchConfig,
        lstm: &lstm::LstmOptions,
    ) -> Result<Box<dyn Predictor>, PrefetchError> {
        cfg.validate()?;
        Ok(match self {
            PredictorKind::None => Box::new(NonePredictor),
            PredictorKind::Readahead => Box::new(readahead::Readahead::new(cfg)),
            PredictorKind::Stride => Box::new(stride::Stride::new(cfg)),
            PredictorKind::Markov => Box::new(markov::Markov::new(cfg)),
            PredictorKind::Lstm => build_lstm(cfg, lstm)?,
        })
    }
}

/// The LSTM from the registered backend ([`lstm::backend`]).
fn build_lstm(
    cfg: &PrefetchConfig,
    opts: &lstm::LstmOptions,
) -> Result<Box<dyn Predictor>, PrefetchError> {
    opts.validate().map_err(PrefetchError::Lstm)?;
    let b = lstm::backend()
        .ok_or_else(|| PrefetchError::Lstm(lstm::LstmError::NoBackend.to_string()))?;
    b.predictor(cfg, opts)
        .map_err(|e| PrefetchError::Lstm(e.to_string()))
}

impl std::str::FromStr for PredictorKind {
    type Err = PrefetchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PredictorKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| PrefetchError::UnknownPredictor(s.to_string()))
    }
}

/// Push a prediction unless the same shard is already in `out` for this
/// step's stream (`from` = index where this stream's predictions start).
pub fn push_unique(out: &mut Vec<Prediction>, from: usize, p: Prediction) -> bool {
    if out[from..]
        .iter()
        .any(|q| q.shard == p.shard && q.volume == p.volume)
    {
        return false;
    }
    out.push(p);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds() {
        assert!(PrefetchConfig::default().validate().is_ok());
        for bad in [
            PrefetchConfig {
                shard_bytes: 3 << 20,
                ..Default::default()
            },
            PrefetchConfig {
                depth: 0,
                ..Default::default()
            },
            PrefetchConfig {
                confidence_min: 1.5,
                ..Default::default()
            },
            PrefetchConfig {
                sequence_length: 0,
                ..Default::default()
            },
            PrefetchConfig {
                region_shift: 17,
                shard_bytes: 1 << 20,
                ..Default::default()
            },
            PrefetchConfig {
                streams_max: 0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(PredictorKind::Stride.build(&bad).is_err());
        }
    }

    #[test]
    fn shard_events_and_streams() {
        let cfg = PrefetchConfig {
            shard_bytes: 1 << 16,
            region_shift: 20,
            ..Default::default()
        };
        let ev = TraceEvent {
            ts_ns: 5,
            op: Op::Read,
            offset: (1 << 20) - 4096,
            len: 8192,
        };
        let s = cfg.shard_event(2, &ev);
        assert_eq!((s.shard, s.shards, s.last_shard()), (15, 2, 16));
        assert_eq!(
            cfg.stream_of(&s),
            StreamKey {
                volume: 2,
                region: 0
            }
        );
        assert_eq!(
            "markov".parse::<PredictorKind>().unwrap(),
            PredictorKind::Markov
        );
        assert_eq!(
            "lstm".parse::<PredictorKind>().unwrap(),
            PredictorKind::Lstm
        );
        assert!("lstn".parse::<PredictorKind>().is_err());
    }
}
