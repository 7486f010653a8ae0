//! The live prefetch engine of one device: the drain and model threads (the
//! inference side), the stager
//! thread, their shared statistics, and trace recording.
//!
//! Contract:
//! - [`Live::start`] takes the consumer ends of the device's trace rings
//!   (one per queue) and the volume. With prefetching on it spawns the
//!   model thread (`shardblk-model`), which builds the predictor itself (so
//!   a model that runs on CUDA is created on the thread that uses it) and
//!   reports the build before `start` returns: an unknown or unloadable
//!   predictor fails `start`, before the device exists; then the drain
//!   thread (`shardblk-infer`) and the stager thread (`shardblk-stager`,
//!   its own io_uring engine). With prefetching off only the drain thread
//!   runs, and only drains the rings (and feeds recordings).
//! - Drain thread: each turn drains the rings (at most
//!   `PREFETCH_BATCH_EVENTS_MAX` events handed on; beyond a backlog of
//!   `PREFETCH_BACKLOG_EVENTS_MAX` the excess is popped without being
//!   handed on and counted as skipped), records, promotes on demand,
//!   forwards read notices, turns every op into a [`ShardEvent`] (time
//!   order across queues) and hands them to the model thread through a
//!   bounded lock-free hand-off (`PREFETCH_HANDOFF_EVENTS`; what does not
//!   fit is skipped and counted), unparking it once its step minimum is
//!   waiting. It never runs a predictor and never waits for the model
//!   thread: a model step of seconds (TCG) delays no promotion, notice,
//!   recording or count.
//! - Model thread: takes what the hand-off holds into the batch it gathers
//!   (of more than [`Predictor::step_events_max`] only the newest are kept,
//!   the older counted as skipped) and calls [`Predictor::step`] once
//!   [`Predictor::step_events_min`] events are gathered (1 for the
//!   baselines, `LSTM_LIVE_STEP_EVENTS_MIN` for the LSTM) or the oldest has
//!   waited `PREFETCH_STEP_WAIT_MAX_MS`, and the thread owes no pacing
//!   sleep ([`super::pace::Cadence`]); events handed off while it owes are
//!   kept the same way, so the step after a paced stretch sees the latest
//!   batch. It drops predictions below the confidence threshold
//!   or for shards that are unmapped, split or already on the hot tier (one
//!   table load each), and pushes the rest into its lane of the prefetch
//!   ring ([`super::ring`]: bounded, lock-free, de-duplicated). Between
//!   batches it gives the predictor [`Predictor::background`] time (online
//!   training: at most `PREFETCH_TRAIN_SHARE_PERCENT` of the thread's model
//!   time, as one training step cannot be cut short; the CPU of jobs the
//!   predictor finished on its own helper threads, the LSTM's run acceptor
//!   fits, counts as the thread's training time). An expensive
//!   predictor (step minimum above 1: the LSTM) has a throwaway copy
//!   stepped on synthetic events before `start` returns, so libtorch's lazy
//!   initialisation is paid before the device is live, not charged to the
//!   first live step (`warm_up_ms`). After each step and each background
//!   stretch it sleeps to stay within its share of one core
//!   ([`super::pace`]: 25 % while its predictions are queued, 3 % while
//!   they are not, unless the predictor says it is [`Predictor::promising`]
//!   after a step, counted in `promising_steps`; the first
//!   `PREFETCH_LEARN_STEPS` steps are charged at the full share).
//! - Both threads run at nice `PREFETCH_THREAD_NICE` (19), so under
//!   contention the queue threads and the application come first. The
//!   queue threads never signal the drain thread: after a turn that found
//!   less than a full batch it sleeps `PREFETCH_POLL_INTERVAL_US`
//!   (`PREFETCH_IDLE_SLEEP_US` after an empty one). With prefetching off
//!   and no recording it only empties the rings, every
//!   `PREFETCH_DRAIN_ONLY_SLEEP_US` (its wakeups land on the queue threads'
//!   and the application's CPUs). It never blocks the queue threads: the
//!   trace rings drop when full. A thread that queued a prediction unparks
//!   the stager, which otherwise wakes every `STAGER_IDLE_PARK_MS`.
//! - Statistics: each thread publishes its own figures; [`LiveShared::stats`]
//!   merges them (skipped events of both add up).
//! - Demand promotion ([`super::demand`], `LiveConfig::promote_reads`):
//!   every drained read, skipped or fed, is also looked up in the table
//!   shard by shard; reads of shards on a colder tier count towards staging
//!   them, and a shard the promoter names is pushed into the same prefetch
//!   ring (confidence 1; the drain thread's lane, which the stager takes
//!   first), so the stager's budget, throttle and precision cover it too.
//! - Hits: the drain thread forwards every read (volume, shards, start
//!   time) to the stager through a second bounded ring (dropped and counted
//!   when full); the stager matches them against what it staged. The queue
//!   threads do no extra work.
//! - Recording: [`LiveShared::start_recording`] tees every drained event
//!   (all queues, skipped ones included) into a bounded channel; events that
//!   do not fit are dropped and counted; one recording at a time.
//! - Stopping: dropping [`Live`] stops its threads and joins them (a
//!   staging in progress finishes first). All of them block SIGINT and
//!   SIGTERM, which belong to the daemon's signal thread.

use crate::constants::{
    DEVICE_STATS_PUBLISH_MS, PREFETCH_BACKGROUND_BUDGET_MS, PREFETCH_BACKLOG_EVENTS_MAX,
    PREFETCH_BATCH_EVENTS_MAX, PREFETCH_CPU_SAMPLE_MS, PREFETCH_DEDUP_SLOTS,
    PREFETCH_DEDUP_WINDOW_MS, PREFETCH_DRAIN_ONLY_SLEEP_US, PREFETCH_HANDOFF_EVENTS,
    PREFETCH_IDLE_SLEEP_US, PREFETCH_LEARN_STEPS, PREFETCH_MODEL_PARK_US,
    PREFETCH_POLL_INTERVAL_US, PREFETCH_PROMOTE_TRACKED_SHARDS, PREFETCH_PROMOTE_WINDOW_MS,
    PREFETCH_READ_NOTICES, PREFETCH_RING_PREDICTIONS, PREFETCH_STEP_WAIT_MAX_MS,
    PREFETCH_THREAD_NICE, PREFETCH_TRAIN_SHARE_PERCENT, PREFETCH_WARM_UP_EVENTS,
    STAGER_BUDGET_DEFAULT_PERCENT, STAGER_COMMIT_INTERVAL_MS, STAGER_IDLE_PARK_MS,
    TRACE_RECORD_BUFFER_EVENTS, UNIT_SIZE_BYTES,
};
use crate::device::metrics::{Op as DevOp, TraceConsumer, TraceEvent as DevEvent};
use crate::prefetch::demand::DemandPromoter;
use crate::prefetch::lstm::{LstmOptions, LstmTuning, ModelSource};
use crate::prefetch::pace::{Cadence, Pacer};
use crate::prefetch::remote::RemoteStageStats;
use crate::prefetch::ring::{prediction_rings, PredictionRx, PredictionTx, RingCounters};
use crate::prefetch::stager::{Plan, StagerCore, StagerParams, StagerStats};
use crate::prefetch::{
    Prediction, Predictor, PredictorKind, PrefetchConfig, PrefetchError, ShardEvent,
};
use crate::shard::lifecycle::{self, Outcome};
use crate::threads::CpuTimes;
use crate::trace::{Op as TraceOp, TraceEvent};
use crate::volume::handle::Volume;
use crate::volume::table::{Loc, SlotView};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors of starting the live engine; each is one clear line.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Prefetch(#[from] PrefetchError),
    #[error("prefetching needs a pool with at least two tiers (a hot one to stage onto)")]
    OneTier,
    #[error("prefetch budget {budget} B is smaller than one shard ({shard} B)")]
    Budget { budget: u64, shard: u64 },
    #[error("prefetch budget {budget} B is larger than the hot tier ({hot} B)")]
    BudgetTooLarge { budget: u64, hot: u64 },
    #[error("--prefetch-model applies to the lstm predictor only, not {0}")]
    ModelUnused(&'static str),
    #[error("--lstm-* flags apply to --prefetch lstm only, not {0}")]
    LstmUnused(&'static str),
    #[error("{0}")]
    Lstm(String),
    #[error("spawning the {0} thread: {1}")]
    Spawn(&'static str, std::io::Error),
    #[error("the model thread ended before reporting its predictor")]
    NoReport,
}

/// What to prefetch with (`shardblk add --prefetch ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveConfig {
    pub kind: PredictorKind,
    /// Depth, confidence, streams; `shard_bytes` is replaced by the volume's.
    pub prefetch: PrefetchConfig,
    /// Hot-tier bytes the stager may hold (default
    /// `STAGER_BUDGET_DEFAULT_PERCENT` of the hot tier).
    pub budget_bytes: Option<u64>,
    /// Model file (the LSTM).
    pub model: Option<PathBuf>,
    /// Demand promotion ([`super::demand`]): a cold shard read this many
    /// times within `PREFETCH_PROMOTE_WINDOW_MS` is staged (0 = off).
    pub promote_reads: u32,
    /// The lstm predictor's knobs (`--lstm-*`; empty for the others).
    pub lstm: LstmTuning,
}

impl LiveConfig {
    /// A model file and `--lstm-*` knobs are for the lstm predictor only,
    /// and the knobs within their limits (checked by [`Live::start`] and
    /// [`Live::start_remote`], and by `add` before it starts a daemon).
    pub fn check_lstm_only(&self) -> Result<(), LiveError> {
        if self.kind != PredictorKind::Lstm {
            if self.model.is_some() {
                return Err(LiveError::ModelUnused(self.kind.name()));
            }
            if !self.lstm.is_empty() {
                return Err(LiveError::LstmUnused(self.kind.name()));
            }
        }
        self.lstm.validate().map_err(LiveError::Lstm)
    }

    /// The predictor configuration for a volume of `shard_bytes` shards.
    pub fn for_volume(&self, shard_bytes: u64) -> PrefetchConfig {
        let mut c = self.prefetch;
        c.shard_bytes = shard_bytes;
        c.region_shift = c.region_shift.max(shard_bytes.trailing_zeros());
        c
    }
}

/// What `shardblk stats` shows about prefetching.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefetchStats {
    pub predictor: String,
    /// Trace events drained from the rings, fed to the predictor, skipped
    /// under overload.
    pub events: u64,
    pub events_fed: u64,
    pub skipped_events: u64,
    /// Predictions the predictor made, and why some were not queued.
    pub predictions: u64,
    pub below_confidence: u64,
    pub already_hot: u64,
    pub unmapped: u64,
    /// Prefetch ring: queued, refused as duplicates, dropped when full.
    pub queued: u64,
    pub duplicates: u64,
    pub dropped: u64,
    /// Read notices lost because the stager's notice ring was full.
    pub read_notices_dropped: u64,
    /// Inference batches and their latency (predictor step plus filtering).
    pub batches: u64,
    pub batch_us_mean: f64,
    pub batch_us_p99: f64,
    /// From the predictor: online training steps, latest loss, skipped work.
    pub train_steps: u64,
    pub train_loss: Option<f32>,
    pub predictor_skipped: u64,
    /// Demand promotion: its setting (cold reads within
    /// `PREFETCH_PROMOTE_WINDOW_MS` that stage a shard, 0 = off) and the
    /// shards it queued for the stager (also counted in `queued`).
    #[serde(default)]
    pub promote_reads: u32,
    #[serde(default)]
    pub demand_queued: u64,
    /// Time the model thread slept to stay within its CPU share
    /// (`PREFETCH_CPU_SHARE_PERCENT`, `..._IDLE_PERCENT` while it queues
    /// nothing), milliseconds.
    pub paced_ms: u64,
    /// The machine's idle CPU at the model thread's last sample, its own
    /// use included (percent of one core; beyond
    /// `PREFETCH_CPU_SPARE_RESERVE_PERCENT` it is the thread's share).
    #[serde(default)]
    pub spare_cpu_percent: u32,
    /// Steps after which the predictor measured itself promising without
    /// having queued anything (the LSTM calibrating): they kept the full
    /// CPU share.
    #[serde(default)]
    pub promising_steps: u64,
    /// Time in background training (milliseconds; at most
    /// `PREFETCH_TRAIN_SHARE_PERCENT` of the model's time), and in warming
    /// up a throwaway copy of an expensive predictor before the device went
    /// live.
    #[serde(default)]
    pub train_ms: u64,
    /// Jobs the predictor finished on helper threads (the LSTM's run
    /// acceptor fits) and their CPU (milliseconds; in `train_ms` too).
    #[serde(default)]
    pub helper_jobs: u64,
    #[serde(default)]
    pub helper_cpu_ms: u64,
    #[serde(default)]
    pub warm_up_ms: u64,
    pub stager: StagerStats,
    /// A cluster volume's staging onto its stage tier (`None` for a pool's
    /// volume; `stager` then holds the core's figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteStageStats>,
}

/// A read forwarded to the stager.
#[derive(Debug, Clone, Copy)]
struct ReadNotice {
    volume: u32,
    shard: u64,
    shards: u32,
    time_ns: u64,
}

struct Recording {
    tx: SyncSender<TraceEvent>,
}

/// State shared by the live threads and the control socket.
pub struct LiveShared {
    /// `None` when prefetching is off.
    predictor: Option<&'static str>,
    /// The drain thread's figures, and the model thread's
    /// ([`merge_figures`]).
    infer: Mutex<PrefetchStats>,
    model: Mutex<PrefetchStats>,
    stager: Mutex<StagerStats>,
    ring: Option<Arc<RingCounters>>,
    recording_on: AtomicBool,
    recording: Mutex<Option<Recording>>,
    recording_dropped: AtomicU64,
    /// The stager's thread, unparked when predictions are queued.
    stager_thread: std::sync::OnceLock<std::thread::Thread>,
    /// The drain and model threads' kernel thread ids (set before `start`
    /// returns; the model thread's with prefetching on).
    infer_tid: std::sync::OnceLock<i32>,
    model_tid: std::sync::OnceLock<i32>,
    /// Remote staging: its figures (published by the network thread) and
    /// how to wake the network thread when predictions are queued.
    remote: Mutex<Option<RemoteStageStats>>,
    remote_wake: Option<Waker>,
}

/// Wakes the consumer of the prefetch ring when it is not a stager thread.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Where a shard of the device's volume is, for the model thread's
/// filters (predictions of shards already hot or absent are dropped) and
/// demand promotion (reads of cold shards count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Hot,
    Cold,
    /// Unmapped, split, or out of range: nothing to stage.
    Absent,
}

/// The drain and model threads' view of a volume's shards.
pub trait ShardPlaces: Send + 'static {
    fn volume_id(&self) -> u32;
    fn place(&self, shard: u64) -> Place;
    /// Another handle on the same places (the drain and the model thread
    /// each hold one).
    fn boxed(&self) -> Box<dyn ShardPlaces>;
}

impl ShardPlaces for Volume {
    fn volume_id(&self) -> u32 {
        self.id()
    }
    fn place(&self, shard: u64) -> Place {
        let guard = crossbeam_epoch::pin();
        match self.shared().table.load(shard, &guard) {
            Ok(SlotView::Mapped(e)) if e.tier() == 0 => Place::Hot,
            Ok(SlotView::Mapped(_)) => Place::Cold,
            Ok(SlotView::Split(_)) | Ok(SlotView::Unmapped) | Err(_) => Place::Absent,
        }
    }
    fn boxed(&self) -> Box<dyn ShardPlaces> {
        Box::new(self.clone())
    }
}

/// The receiving end of a recording; dropping it ends the recording.
pub struct RecordingRx {
    pub rx: Receiver<TraceEvent>,
    shared: Arc<LiveShared>,
}

impl RecordingRx {
    /// Events dropped so far because the recording buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.recording_dropped.load(Ordering::Relaxed)
    }
}

impl Drop for RecordingRx {
    fn drop(&mut self) {
        self.shared.recording_on.store(false, Ordering::Relaxed);
        *self.shared.recording.lock().expect("recording") = None;
    }
}

impl LiveShared {
    fn new(predictor: Option<&'static str>, ring: Option<Arc<RingCounters>>) -> Self {
        LiveShared {
            predictor,
            infer: Mutex::default(),
            model: Mutex::default(),
            stager: Mutex::default(),
            ring,
            recording_on: AtomicBool::new(false),
            recording: Mutex::new(None),
            recording_dropped: AtomicU64::new(0),
            stager_thread: std::sync::OnceLock::new(),
            infer_tid: std::sync::OnceLock::new(),
            model_tid: std::sync::OnceLock::new(),
            remote: Mutex::new(None),
            remote_wake: None,
        }
    }

    /// Wake whoever consumes the prefetch ring.
    fn wake_stager(&self) {
        if let Some(t) = self.stager_thread.get() {
            t.unpark();
        }
        if let Some(w) = &self.remote_wake {
            w();
        }
    }

    /// Publish remote staging figures (the network thread of a cluster
    /// device).
    pub fn publish_remote(&self, st: RemoteStageStats) {
        *self.stager.lock().expect("stager stats") = st.stager.clone();
        *self.remote.lock().expect("remote stats") = Some(st);
    }

    /// Prefetch statistics, `None` when prefetching is off.
    pub fn stats(&self) -> Option<PrefetchStats> {
        let name = self.predictor?;
        let mut s = merge_figures(
            &self.infer.lock().expect("infer stats"),
            &self.model.lock().expect("model stats"),
        );
        s.predictor = name.to_string();
        if let Some(r) = &self.ring {
            let (queued, duplicates, dropped, _) = r.get();
            s.queued = queued;
            s.duplicates = duplicates;
            s.dropped = dropped;
        }
        s.stager = self.stager.lock().expect("stager stats").clone();
        s.remote = self.remote.lock().expect("remote stats").clone();
        Some(s)
    }

    /// The drain thread's kernel thread id.
    pub fn inference_tid(&self) -> Option<i32> {
        self.infer_tid.get().copied()
    }

    /// The model thread's kernel thread id (prefetching on).
    pub fn model_tid(&self) -> Option<i32> {
        self.model_tid.get().copied()
    }

    /// Whether a recording is running.
    pub fn is_recording(&self) -> bool {
        self.recording_on.load(Ordering::Relaxed)
    }

    /// Start teeing drained events into a recording. One at a time.
    pub fn start_recording(self: &Arc<Self>) -> Result<RecordingRx, String> {
        let mut r = self.recording.lock().expect("recording");
        if r.is_some() {
            return Err("a recording is already running on this device".into());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(TRACE_RECORD_BUFFER_EVENTS);
        *r = Some(Recording { tx });
        self.recording_dropped.store(0, Ordering::Relaxed);
        self.recording_on.store(true, Ordering::Relaxed);
        Ok(RecordingRx {
            rx,
            shared: self.clone(),
        })
    }
}

/// The running live engine of a device.
pub struct Live {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<LiveShared>,
}

impl Live {
    /// Start the drain thread (and the model thread and the stager when
    /// `cfg` is set) over
    /// the trace `consumers` of `volume`'s device. Times are nanoseconds
    /// since `start` (the device clock of the trace events).
    pub fn start(
        cfg: Option<&LiveConfig>,
        volume: Volume,
        consumers: Vec<TraceConsumer>,
        start: Instant,
    ) -> Result<Live, LiveError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ring_tx, ring_rx, shared) = match cfg {
            Some(c) => {
                let pcfg = c.for_volume(volume.shard_size());
                pcfg.validate()?;
                c.check_lstm_only()?;
                let pool = volume.pool();
                if pool.tiers().len() < 2 {
                    return Err(LiveError::OneTier);
                }
                let hot = pool.tiers()[0].n_units * UNIT_SIZE_BYTES;
                let budget = c
                    .budget_bytes
                    .unwrap_or(hot * STAGER_BUDGET_DEFAULT_PERCENT / 100);
                if budget < volume.shard_size() {
                    return Err(LiveError::Budget {
                        budget,
                        shard: volume.shard_size(),
                    });
                }
                if budget > hot {
                    return Err(LiveError::BudgetTooLarge { budget, hot });
                }
                let pcfg = PrefetchConfig {
                    stage_capacity_shards: budget / volume.shard_size(),
                    ..pcfg
                };
                let (tx, rx) = lanes();
                let shared = Arc::new(LiveShared::new(Some(c.kind.name()), Some(rx.counters())));
                (
                    Some((tx, c.kind, pcfg)),
                    Some((rx, budget / UNIT_SIZE_BYTES)),
                    shared,
                )
            }
            None => (None, None, Arc::new(LiveShared::new(None, None))),
        };
        let (notice_tx, notice_rx) = match ring_rx.is_some() {
            true => {
                let (p, c) = rtrb::RingBuffer::new(PREFETCH_READ_NOTICES);
                (Some(p), Some(c))
            }
            false => (None, None),
        };
        threads.extend(spawn_inference(
            cfg,
            &stop,
            &shared,
            Box::new(volume.clone()),
            consumers,
            ring_tx,
            notice_tx,
            start,
        )?);
        let mut live = Live {
            stop,
            threads,
            shared,
        };
        if let (Some((rx, budget_units)), Some(notices)) = (ring_rx, notice_rx) {
            let stop = live.stop.clone();
            let shared = live.shared.clone();
            let t = std::thread::Builder::new()
                .name("shardblk-stager".into())
                .spawn(move || {
                    block_stop_signals();
                    let core = StagerCore::new(StagerParams::new(budget_units), ns_since(start));
                    run_stager(volume, rx, notices, core, shared, start, &stop);
                })
                .map_err(|e| LiveError::Spawn("stager", e))?;
            live.threads.push(t);
        }
        Ok(live)
    }

    /// Start prefetching for a cluster volume whose shards are staged by
    /// the device's network thread: the drain and model threads alone (predictors
    /// and demand promotion as for a pool's volume, over `places`), whose
    /// predictions the caller pops from the returned ring; `wake` is called
    /// when it queued some. Read notices are not forwarded: the network
    /// thread sees every read itself.
    pub fn start_remote(
        cfg: &LiveConfig,
        places: Box<dyn ShardPlaces>,
        shard_bytes: u64,
        consumers: Vec<TraceConsumer>,
        start: Instant,
        wake: Waker,
    ) -> Result<(Live, PredictionRx), LiveError> {
        let pcfg = cfg.for_volume(shard_bytes);
        pcfg.validate()?;
        cfg.check_lstm_only()?;
        let (tx, rx) = lanes();
        let mut shared = LiveShared::new(Some(cfg.kind.name()), Some(rx.counters()));
        shared.remote_wake = Some(wake);
        let shared = Arc::new(shared);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = spawn_inference(
            Some(cfg),
            &stop,
            &shared,
            places,
            consumers,
            Some((tx, cfg.kind, pcfg)),
            None,
            start,
        )?;
        Ok((
            Live {
                stop,
                threads,
                shared,
            },
            rx,
        ))
    }

    pub fn shared(&self) -> Arc<LiveShared> {
        self.shared.clone()
    }
}

/// The prefetch ring's lanes: the drain thread's (demand promotion, taken
/// first) and the model thread's.
fn lanes() -> ([PredictionTx; 2], PredictionRx) {
    let (txs, rx) = prediction_rings(
        2,
        PREFETCH_RING_PREDICTIONS,
        PREFETCH_DEDUP_SLOTS,
        PREFETCH_DEDUP_WINDOW_MS * 1_000_000,
    );
    let Ok(txs) = <[PredictionTx; 2]>::try_from(txs) else {
        unreachable!("two lanes were made")
    };
    (txs, rx)
}

/// Spawn the drain thread over `consumers` and, with prefetching on
/// (`lanes`: the demand lane, the model lane), the model thread, which
/// builds the predictor and reports before this returns.
#[allow(clippy::too_many_arguments)]
fn spawn_inference(
    cfg: Option<&LiveConfig>,
    stop: &Arc<AtomicBool>,
    shared: &Arc<LiveShared>,
    places: Box<dyn ShardPlaces>,
    consumers: Vec<TraceConsumer>,
    lanes: Option<([PredictionTx; 2], PredictorKind, PrefetchConfig)>,
    notice_tx: Option<rtrb::Producer<ReadNotice>>,
    start: Instant,
) -> Result<Vec<JoinHandle<()>>, LiveError> {
    let promote_reads = cfg.map_or(0, |c| c.promote_reads);
    let mut threads = Vec::new();
    let (demand_ring, handoff) = match lanes {
        Some(([demand_tx, model_tx], kind, pcfg)) => {
            let (h_tx, h_rx) = rtrb::RingBuffer::new(PREFETCH_HANDOFF_EVENTS);
            let (model, wake_at) = spawn_model(
                cfg,
                stop,
                shared,
                places.boxed(),
                (model_tx, kind, pcfg),
                h_rx,
                start,
            )?;
            let thread = model.thread().clone();
            threads.push(model);
            (
                Some((demand_tx, pcfg)),
                Some(Handoff {
                    tx: h_tx,
                    model: thread,
                    wake_at,
                }),
            )
        }
        None => (None, None),
    };
    let (report_tx, report_rx) = std::sync::mpsc::channel::<()>();
    let drain = {
        let stop = stop.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("shardblk-infer".into())
            .spawn(move || {
                enter_prefetch_thread(&shared.infer_tid);
                let _ = report_tx.send(());
                let mut d = Drain {
                    places,
                    consumers,
                    ring: demand_ring,
                    handoff,
                    notices: notice_tx,
                    shared,
                    start,
                    st: PrefetchStats {
                        promote_reads,
                        ..Default::default()
                    },
                    demand: DemandPromoter::new(
                        promote_reads,
                        PREFETCH_PROMOTE_WINDOW_MS * 1_000_000,
                        PREFETCH_PROMOTE_TRACKED_SHARDS,
                    ),
                };
                d.run(&stop);
            })
    };
    let drain = match drain {
        Ok(t) => t,
        Err(e) => {
            stop_and_join(stop, threads);
            return Err(LiveError::Spawn("inference", e));
        }
    };
    let _ = report_rx.recv();
    threads.push(drain);
    Ok(threads)
}

/// Stop and join threads already spawned (a later spawn failed).
fn stop_and_join(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.thread().unpark();
        let _ = t.join();
    }
}

/// Spawn the model thread: it builds the predictor (a model that runs on
/// CUDA is created on the thread that uses it), warms up a throwaway copy
/// of an expensive one, and reports; returns it with its step minimum.
fn spawn_model(
    cfg: Option<&LiveConfig>,
    stop: &Arc<AtomicBool>,
    shared: &Arc<LiveShared>,
    places: Box<dyn ShardPlaces>,
    (tx, kind, pcfg): (PredictionTx, PredictorKind, PrefetchConfig),
    handoff: rtrb::Consumer<ShardEvent>,
    start: Instant,
) -> Result<(JoinHandle<()>, usize), LiveError> {
    // The LSTM's starting weights: the given model file, else the
    // shipped default (see `prefetch::lstm`).
    let lstm_opts = cfg
        .map_or_else(LstmTuning::default, |c| c.lstm)
        .apply(&LstmOptions {
            model: match cfg.and_then(|c| c.model.clone()) {
                Some(p) => ModelSource::File(p),
                None => ModelSource::Default,
            },
            ..Default::default()
        });
    if kind == PredictorKind::Lstm {
        let o = &lstm_opts;
        tracing::info!(
            "lstm: lookahead {} steps, streams {}, gate {}, online {}, train every {} events, \
             learning rate {}, {} threads, memory {} entries",
            o.lookahead,
            o.streams.name(),
            o.precision_gate,
            o.online,
            o.train_interval_events,
            o.learning_rate,
            o.threads,
            o.memory_entries
        );
    }
    let (report_tx, report_rx) = std::sync::mpsc::channel::<Result<usize, PrefetchError>>();
    let model = {
        let stop = stop.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("shardblk-model".into())
            .spawn(move || {
                enter_prefetch_thread(&shared.model_tid);
                let pred = match kind.build_with(&pcfg, &lstm_opts) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = report_tx.send(Err(e));
                        return;
                    }
                };
                let mut warm_up_ms = 0;
                if pred.step_events_min() > 1 {
                    let t0 = Instant::now();
                    warm_up(kind, &pcfg, &lstm_opts);
                    warm_up_ms = t0.elapsed().as_millis() as u64;
                }
                let _ = report_tx.send(Ok(pred.step_events_min()));
                let mut m =
                    Model::new(pred, places, (tx, pcfg), handoff, shared, start, warm_up_ms);
                m.run(&stop);
            })
            .map_err(|e| LiveError::Spawn("model", e))?
    };
    match report_rx.recv() {
        Ok(Ok(min)) => Ok((model, min)),
        Ok(Err(e)) => {
            let _ = model.join();
            Err(e.into())
        }
        Err(_) => {
            let _ = model.join();
            Err(LiveError::NoReport)
        }
    }
}

/// Step a throwaway predictor of `kind` on a few synthetic sequential
/// reads, before the device is live: the first step of a libtorch model in
/// a process pays for its lazy initialisation (1.2 s under TCG against
/// 0.1 s for the next 16 events, `examples/step_cost`), which the pacer
/// would otherwise charge to the live thread's first step (about 40 s of
/// pacing at the idle share) while the device serves I/O. The predictor
/// that serves the device keeps its state untouched.
fn warm_up(kind: PredictorKind, pcfg: &PrefetchConfig, opts: &LstmOptions) {
    let Ok(mut p) = kind.build_with(pcfg, opts) else {
        return;
    };
    let events: Vec<ShardEvent> = (0..PREFETCH_WARM_UP_EVENTS as u64)
        .map(|i| ShardEvent {
            ts_ns: i * 1_000_000,
            volume: 0,
            op: crate::trace::Op::Read,
            shard: i / 4,
            shards: 1,
            end_eighths: 8,
            bytes: 4096,
        })
        .collect();
    let mut out = Vec::new();
    for half in events.chunks(PREFETCH_WARM_UP_EVENTS.div_ceil(2)) {
        p.step(half, &mut out);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.threads {
            t.thread().unpark();
        }
        for t in self.threads.drain(..) {
            let t0 = Instant::now();
            let name = t.thread().name().unwrap_or("?").to_string();
            let _ = t.join();
            tracing::debug!("{name} joined in {} ms", t0.elapsed().as_millis());
        }
    }
}

/// SIGINT and SIGTERM are for the daemon's signal thread (an orderly stop):
/// the live threads block them, whenever they are spawned, so the kernel
/// never delivers one to them (its default action would kill the daemon).
fn block_stop_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if let Err(e) = set.thread_block() {
        tracing::warn!("live thread: blocking SIGINT/SIGTERM: {e}");
    }
}

/// The start of the drain and model threads: stop signals blocked, the
/// thread's id recorded in `tid`, and the lowest normal priority
/// (`PREFETCH_THREAD_NICE`, see [`crate::threads`]): a predictor's
/// inference or training does not take the cores of the queue threads or
/// the application, yet is never starved outright (a learned prefetcher
/// that never steps is worth nothing). Threads it spawns (libtorch's)
/// inherit it. A refusal is a warning.
fn enter_prefetch_thread(tid: &std::sync::OnceLock<i32>) {
    block_stop_signals();
    if let Err(e) = crate::threads::lower_current_priority(PREFETCH_THREAD_NICE) {
        tracing::warn!("prefetch thread: nice {PREFETCH_THREAD_NICE} refused: {e}");
    }
    // SAFETY: gettid has no preconditions.
    let _ = tid.set(unsafe { libc::gettid() });
}

fn ns_since(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// A device event as a trace event (write-zeroes is a write).
pub fn trace_event_of(e: &DevEvent) -> TraceEvent {
    let op = match e.op {
        DevOp::Read => TraceOp::Read,
        DevOp::Write | DevOp::WriteZeroes => TraceOp::Write,
        DevOp::Flush => TraceOp::Flush,
        DevOp::Discard => TraceOp::Discard,
    };
    TraceEvent {
        ts_ns: e.time_ns,
        op,
        offset: e.offset,
        len: if op == TraceOp::Flush {
            0
        } else {
            u64::from(e.len)
        },
    }
}

/// The drain thread (`shardblk-infer`): empties the trace rings, records,
/// promotes on demand, forwards read notices, and hands the events to be
/// stepped to the model thread. It never runs a predictor.
struct Drain {
    places: Box<dyn ShardPlaces>,
    consumers: Vec<TraceConsumer>,
    /// Its lane of the prefetch ring (demand promotion) and the predictor
    /// configuration (shard events); `None` with prefetching off.
    ring: Option<(PredictionTx, PrefetchConfig)>,
    /// The hand-off to the model thread (`None` with prefetching off),
    /// the model thread to wake, and how many waiting events are worth
    /// waking it for (its step minimum).
    handoff: Option<Handoff>,
    notices: Option<rtrb::Producer<ReadNotice>>,
    shared: Arc<LiveShared>,
    start: Instant,
    /// Its figures: `events`, `skipped_events` (backlog and a full
    /// hand-off), `read_notices_dropped`, `promote_reads`, `demand_queued`.
    st: PrefetchStats,
    /// Stages cold shards read again soon ([`super::demand`]).
    demand: DemandPromoter,
}

/// The drain thread's end of the hand-off to the model thread.
struct Handoff {
    tx: rtrb::Producer<ShardEvent>,
    model: std::thread::Thread,
    wake_at: usize,
}

impl Drain {
    fn run(&mut self, stop: &AtomicBool) {
        let mut lens = vec![0usize; self.consumers.len()];
        // The events of one turn to hand off (time order across queues).
        let mut gathered: Vec<ShardEvent> =
            Vec::with_capacity(PREFETCH_BATCH_EVENTS_MAX + self.consumers.len());
        let mut last_publish = Instant::now();
        let publish_every = Duration::from_millis(DEVICE_STATS_PUBLISH_MS);
        while !stop.load(Ordering::Relaxed) {
            for (l, c) in lens.iter_mut().zip(&self.consumers) {
                *l = c.len();
            }
            let total: usize = lens.iter().sum();
            if last_publish.elapsed() >= publish_every {
                self.publish();
                last_publish = Instant::now();
            }
            if total == 0 {
                std::thread::sleep(self.nap(PREFETCH_IDLE_SLEEP_US));
                continue;
            }
            if self.drain_only() {
                // Nothing to predict, promote or record: let the events go
                // in one step per ring (counted), without reading them.
                for (c, &n) in self.consumers.iter_mut().zip(&lens) {
                    self.st.events += c.discard(n) as u64;
                }
                std::thread::sleep(self.nap(PREFETCH_POLL_INTERVAL_US));
                continue;
            }
            let feed = total.min(PREFETCH_BATCH_EVENTS_MAX);
            let overloaded = total > PREFETCH_BACKLOG_EVENTS_MAX;
            let mut recording = if self.shared.recording_on.load(Ordering::Relaxed) {
                Some(self.shared.recording.lock().expect("recording"))
            } else {
                None
            };
            for (i, &n) in lens.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let feed_i = (n * feed).div_ceil(total).min(n);
                let skip_i = if overloaded { n - feed_i } else { 0 };
                for k in 0..feed_i + skip_i {
                    let Some(ev) = self.consumers[i].pop() else {
                        break;
                    };
                    self.st.events += 1;
                    let te = trace_event_of(&ev);
                    if let Some(rec) = recording.as_mut() {
                        let gone = match rec.as_ref().map(|r| r.tx.try_send(te)) {
                            Some(Err(TrySendError::Full(_))) => {
                                self.shared
                                    .recording_dropped
                                    .fetch_add(1, Ordering::Relaxed);
                                false
                            }
                            Some(Err(TrySendError::Disconnected(_))) => true,
                            _ => false,
                        };
                        if gone {
                            **rec = None;
                            self.shared.recording_on.store(false, Ordering::Relaxed);
                        }
                    }
                    let Some((_, pcfg)) = &self.ring else {
                        continue;
                    };
                    let se = pcfg.shard_event(ev.volume, &te);
                    if ev.op == DevOp::Read && self.demand.enabled() {
                        promote_on_demand(
                            &mut self.demand,
                            self.places.as_ref(),
                            &mut self.ring,
                            &mut self.st,
                            &self.shared,
                            &se,
                            ns_since(self.start),
                        );
                    }
                    if ev.op == DevOp::Read {
                        if let Some(n) = self.notices.as_mut() {
                            let notice = ReadNotice {
                                volume: se.volume,
                                shard: se.shard,
                                shards: se.shards,
                                time_ns: ev.time_ns,
                            };
                            if n.push(notice).is_err() {
                                self.st.read_notices_dropped += 1;
                            }
                        }
                    }
                    if k < skip_i {
                        self.st.skipped_events += 1;
                    } else {
                        gathered.push(se);
                    }
                }
            }
            drop(recording);
            self.hand_off(&mut gathered);
            // Less than a full batch waiting: let events gather rather than
            // waking per request (bounds the thread's CPU share at low and
            // moderate rates; a promotion is at most a sleep late).
            if total < PREFETCH_BATCH_EVENTS_MAX {
                std::thread::sleep(self.nap(PREFETCH_POLL_INTERVAL_US));
            }
        }
        self.publish();
    }

    /// Hand the turn's events to the model thread (time order across
    /// queues); what does not fit is skipped and counted. The model thread
    /// is woken once its step minimum is waiting.
    fn hand_off(&mut self, gathered: &mut Vec<ShardEvent>) {
        if gathered.is_empty() {
            return;
        }
        if self.consumers.len() > 1 {
            gathered.sort_by_key(|e| e.ts_ns);
        }
        let Some(h) = self.handoff.as_mut() else {
            gathered.clear();
            return;
        };
        for (i, e) in gathered.iter().enumerate() {
            if h.tx.push(*e).is_err() {
                self.st.skipped_events += (gathered.len() - i) as u64;
                break;
            }
        }
        gathered.clear();
        if h.tx.buffer().capacity() - h.tx.slots() >= h.wake_at {
            h.model.unpark();
        }
    }

    /// Prefetching is off and nothing records: the thread only keeps the
    /// trace rings from filling.
    fn drain_only(&self) -> bool {
        self.ring.is_none() && !self.shared.recording_on.load(Ordering::Relaxed)
    }

    /// How long to sleep between turns: `us`, or the longer drain-only
    /// interval when nothing but emptying the rings is to be done.
    fn nap(&self, us: u64) -> Duration {
        Duration::from_micros(if self.drain_only() {
            PREFETCH_DRAIN_ONLY_SLEEP_US
        } else {
            us
        })
    }

    fn publish(&mut self) {
        *self.shared.infer.lock().expect("infer stats") = self.st.clone();
    }
}

/// The model thread (`shardblk-model`): owns the predictor, takes the
/// drain thread's events from the hand-off, steps, trains in the
/// background, paces itself, and queues predictions into its lane of the
/// prefetch ring.
struct Model {
    places: Box<dyn ShardPlaces>,
    pred: Box<dyn Predictor>,
    ring: (PredictionTx, PrefetchConfig),
    handoff: rtrb::Consumer<ShardEvent>,
    shared: Arc<LiveShared>,
    start: Instant,
    /// Its figures (see [`merge_figures`]).
    st: PrefetchStats,
    hist: hdrhistogram::Histogram<u64>,
    /// Keeps the thread within its CPU share ([`super::pace`]).
    pacer: Pacer,
    /// When to step on the gathered events ([`super::pace::Cadence`]).
    cadence: Cadence,
    /// Model time in steps and in background training (helper threads'
    /// CPU included, see [`crate::prefetch::PredictorFigures::helper_cpu_ns`]).
    step_busy: Duration,
    train_busy: Duration,
    /// The predictor's helper CPU already charged (ns).
    helper_cpu_ns: u64,
    /// The machine's CPU times at the last sample, and the model time
    /// since (counted as idle: the thread's own use is spare for it).
    cpu_sample: Option<(Instant, CpuTimes)>,
    busy_since_sample: Duration,
    /// Where the machine's CPU times come from (`/proc/stat`; a fake in tests).
    cpu_times: fn() -> Option<CpuTimes>,
}

impl Model {
    fn new(
        pred: Box<dyn Predictor>,
        places: Box<dyn ShardPlaces>,
        ring: (PredictionTx, PrefetchConfig),
        handoff: rtrb::Consumer<ShardEvent>,
        shared: Arc<LiveShared>,
        start: Instant,
        warm_up_ms: u64,
    ) -> Model {
        let cadence = Cadence::new(
            pred.step_events_min(),
            PREFETCH_STEP_WAIT_MAX_MS * 1_000_000,
        );
        Model {
            places,
            pred,
            ring,
            handoff,
            shared,
            start,
            st: PrefetchStats {
                warm_up_ms,
                ..Default::default()
            },
            hist: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 2)
                .expect("histogram bounds"),
            pacer: Pacer::new(ns_since(start)),
            cadence,
            step_busy: Duration::ZERO,
            train_busy: Duration::ZERO,
            helper_cpu_ns: 0,
            cpu_sample: None,
            busy_since_sample: Duration::ZERO,
            cpu_times: CpuTimes::now,
        }
    }

    /// Every `PREFETCH_CPU_SAMPLE_MS`: the machine's idle CPU since the
    /// last sample, plus the model's own time, tells the pacer what is
    /// spare ([`super::pace`]).
    fn sample_cpu(&mut self) {
        let Some((at, before)) = self.cpu_sample else {
            self.cpu_sample = (self.cpu_times)().map(|c| (Instant::now(), c));
            return;
        };
        let window = at.elapsed();
        if window < Duration::from_millis(PREFETCH_CPU_SAMPLE_MS) {
            return;
        }
        let Some(now) = (self.cpu_times)() else {
            return;
        };
        if let Some(idle) = now.idle_percent_since(&before) {
            let own = (self.busy_since_sample.as_nanos() * 100 / window.as_nanos().max(1)) as u32;
            self.st.spare_cpu_percent = idle.saturating_add(own);
            self.pacer.spare(self.st.spare_cpu_percent);
        }
        self.cpu_sample = Some((Instant::now(), now));
        self.busy_since_sample = Duration::ZERO;
    }

    fn run(&mut self, stop: &AtomicBool) {
        // Events gathered for the next step (kept across turns while the
        // cadence waits for a batch or the pacer for its debt).
        let mut batch: Vec<ShardEvent> = Vec::with_capacity(PREFETCH_HANDOFF_EVENTS);
        let mut out: Vec<Prediction> = Vec::new();
        let mut last_publish = Instant::now();
        let publish_every = Duration::from_millis(DEVICE_STATS_PUBLISH_MS);
        while !stop.load(Ordering::Relaxed) {
            if last_publish.elapsed() >= publish_every {
                self.publish();
                last_publish = Instant::now();
            }
            self.take(&mut batch);
            self.sample_cpu();
            if self.owes_sleep() {
                continue;
            }
            if self.try_step(&mut batch, &mut out) {
                continue;
            }
            // A training step cannot be cut short (seconds under TCG): none
            // starts once the device is stopping.
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let t0 = Instant::now();
            let worked = self.training_allowed()
                && self
                    .pred
                    .background(Duration::from_millis(PREFETCH_BACKGROUND_BUDGET_MS));
            if worked {
                // A fit finished on a helper thread is this thread's work
                // too: its CPU counts against the share and the pacer.
                let busy = t0.elapsed() + self.helper_cpu();
                self.train_busy += busy;
                self.st.train_ms = self.train_busy.as_millis() as u64;
                self.worked(busy);
                continue;
            }
            // Nothing to do until the drain thread hands off a step's
            // worth (it unparks this thread) or a trickle's wait is over.
            std::thread::park_timeout(Duration::from_micros(if batch.is_empty() {
                PREFETCH_MODEL_PARK_US
            } else {
                PREFETCH_IDLE_SLEEP_US
            }));
        }
        self.publish();
    }

    /// Move what waits in the hand-off into `batch`, keeping the newest a
    /// step takes (the older ones, also those gathered while the model's
    /// CPU share was spent, were recorded, promoted on demand and noticed
    /// by the drain thread, not stepped: counted as skipped).
    fn take(&mut self, batch: &mut Vec<ShardEvent>) {
        let before = batch.len();
        while let Ok(e) = self.handoff.pop() {
            batch.push(e);
        }
        if batch.len() == before {
            return;
        }
        self.cadence.gathered(ns_since(self.start));
        let cap = self.pred.step_events_max().min(PREFETCH_BATCH_EVENTS_MAX);
        if batch.len() > cap {
            let older = batch.len() - cap;
            self.st.skipped_events += older as u64;
            batch.drain(..older);
        }
    }

    /// CPU the predictor's helper threads used since the last call (jobs
    /// they finished; see [`crate::prefetch::PredictorFigures::helper_cpu_ns`]).
    fn helper_cpu(&mut self) -> Duration {
        let f = self.pred.figures();
        let new = f.helper_cpu_ns.saturating_sub(self.helper_cpu_ns);
        self.helper_cpu_ns = f.helper_cpu_ns;
        self.st.helper_jobs = f.helper_jobs;
        self.st.helper_cpu_ms = f.helper_cpu_ns / 1_000_000;
        Duration::from_nanos(new)
    }

    /// Whether background work (online training) may run now: while it has
    /// used at most `PREFETCH_TRAIN_SHARE_PERCENT` of the thread's model
    /// time (steps and training). One training step cannot be cut short
    /// (2-10 s under TCG against a 20 ms budget, `examples/step_cost`); this
    /// keeps such steps from taking the whole CPU share that inference
    /// needs.
    fn training_allowed(&self) -> bool {
        let all = self.step_busy + self.train_busy;
        self.train_busy.as_nanos() * 100
            <= all.as_nanos() * u128::from(PREFETCH_TRAIN_SHARE_PERCENT)
    }

    /// Step the predictor on the gathered `batch` when the cadence says it
    /// is due and the pacer owes no sleep (true: it stepped; `batch` is
    /// then empty).
    fn try_step(&mut self, batch: &mut Vec<ShardEvent>, out: &mut Vec<Prediction>) -> bool {
        if !self.pacer.owed().is_zero() || !self.cadence.ready(batch.len(), ns_since(self.start)) {
            return false;
        }
        let t0 = Instant::now();
        self.step(batch, out);
        batch.clear();
        self.cadence.stepped();
        let busy = t0.elapsed();
        self.step_busy += busy;
        self.worked(busy);
        true
    }

    /// Account for `busy` of model work (a step, background training): the
    /// pacer adds the sleep owed for it beyond the thread's CPU share.
    fn worked(&mut self, busy: Duration) {
        self.busy_since_sample += busy;
        self.pacer.worked(busy, ns_since(self.start));
    }

    /// Sleep one slice of what the thread owes, if it owes any (true).
    /// Slices are at most `PREFETCH_PACE_SLEEP_MAX_MS`; between them the
    /// thread takes what the drain thread handed off (the newest a step
    /// takes) and publishes its statistics.
    fn owes_sleep(&mut self) -> bool {
        let d = self.pacer.next_sleep();
        self.st.paced_ms = self.pacer.paced.as_millis() as u64;
        if d.is_zero() {
            return false;
        }
        std::thread::sleep(d);
        true
    }

    /// One predictor step over `batch`, then the filters and the ring.
    fn step(&mut self, batch: &[ShardEvent], out: &mut Vec<Prediction>) {
        let (tx, pcfg) = &mut self.ring;
        let t0 = Instant::now();
        out.clear();
        self.pred.step(batch, out);
        self.st.events_fed += batch.len() as u64;
        let now = ns_since(self.start);
        let mut queued = false;
        for p in out.iter() {
            self.st.predictions += 1;
            if p.confidence < pcfg.confidence_min {
                self.st.below_confidence += 1;
                continue;
            }
            if p.volume != self.places.volume_id() {
                self.st.unmapped += 1;
                continue;
            }
            match self.places.place(p.shard) {
                Place::Hot => self.st.already_hot += 1,
                Place::Cold => {
                    queued |= tx.push(*p, now) == crate::prefetch::ring::Push::Queued;
                }
                Place::Absent => self.st.unmapped += 1,
            }
        }
        if queued {
            self.pacer.queued(now);
            self.shared.wake_stager();
        } else if self.pred.promising() {
            // calibrating on a workload it measures as predictable: the
            // full share, so it gets to emit (see `super::pace`)
            self.pacer.queued(now);
            self.st.promising_steps += 1;
        } else if self.st.batches < PREFETCH_LEARN_STEPS {
            // its first steps: measuring whether the workload is predictable
            self.pacer.queued(now);
        }
        self.st.batches += 1;
        let _ = self
            .hist
            .record((t0.elapsed().as_nanos() as u64).clamp(1, 60_000_000_000));
    }

    fn publish(&mut self) {
        let f = self.pred.figures();
        self.st.train_steps = f.train_steps;
        self.st.train_loss = f.train_loss;
        self.st.predictor_skipped = f.skipped;
        if !self.hist.is_empty() {
            self.st.batch_us_mean = self.hist.mean() / 1000.0;
            self.st.batch_us_p99 = self.hist.value_at_quantile(0.99) as f64 / 1000.0;
        }
        *self.shared.model.lock().expect("model stats") = self.st.clone();
    }
}

/// The statistics of a device: the drain thread's figures (`drain`) with
/// the model thread's (`model`) merged in; events skipped by either add up.
fn merge_figures(drain: &PrefetchStats, model: &PrefetchStats) -> PrefetchStats {
    PrefetchStats {
        events_fed: model.events_fed,
        skipped_events: drain.skipped_events + model.skipped_events,
        predictions: model.predictions,
        below_confidence: model.below_confidence,
        already_hot: model.already_hot,
        unmapped: model.unmapped,
        batches: model.batches,
        batch_us_mean: model.batch_us_mean,
        batch_us_p99: model.batch_us_p99,
        train_steps: model.train_steps,
        train_loss: model.train_loss,
        predictor_skipped: model.predictor_skipped,
        paced_ms: model.paced_ms,
        spare_cpu_percent: model.spare_cpu_percent,
        promising_steps: model.promising_steps,
        train_ms: model.train_ms,
        helper_jobs: model.helper_jobs,
        helper_cpu_ms: model.helper_cpu_ms,
        warm_up_ms: model.warm_up_ms,
        ..drain.clone()
    }
}
/// Feed a read to the demand promoter, one call per shard on a colder tier
/// (one table load per shard touched), and queue the shards it names for
/// the stager. Shards already hot, unmapped or split are not counted.
fn promote_on_demand(
    demand: &mut DemandPromoter,
    places: &dyn ShardPlaces,
    ring: &mut Option<(PredictionTx, PrefetchConfig)>,
    st: &mut PrefetchStats,
    shared: &LiveShared,
    se: &ShardEvent,
    now_ns: u64,
) {
    let Some((tx, _)) = ring.as_mut() else {
        return;
    };
    if se.volume != places.volume_id() {
        return;
    }
    let mut queued = false;
    for shard in se.shard..se.shard + u64::from(se.shards) {
        let cold = places.place(shard) == Place::Cold;
        if cold && demand.on_cold_read((se.volume, shard), now_ns) {
            let p = Prediction {
                volume: se.volume,
                shard,
                confidence: 1.0,
            };
            if tx.push(p, now_ns) == crate::prefetch::ring::Push::Queued {
                st.demand_queued += 1;
                queued = true;
            }
        }
    }
    if queued {
        shared.wake_stager();
    }
}

/// The stager thread: predictions in, migrations out (see `super::stager`).
fn run_stager(
    vol: Volume,
    mut rx: PredictionRx,
    mut notices: rtrb::Consumer<ReadNotice>,
    mut core: StagerCore,
    shared: Arc<LiveShared>,
    start: Instant,
    stop: &AtomicBool,
) {
    let _ = shared.stager_thread.set(std::thread::current());
    let mut eng = vol.pool().engine();
    let shard_units = (vol.shard_size() / UNIT_SIZE_BYTES).max(1);
    let mut last_publish = Instant::now();
    let mut last_commit = Instant::now();
    let mut moved = false;
    let publish_every = Duration::from_millis(DEVICE_STATS_PUBLISH_MS);
    let commit_every = Duration::from_millis(STAGER_COMMIT_INTERVAL_MS);
    let publish = |core: &StagerCore| {
        *shared.stager.lock().expect("stager stats") = core.stats();
    };
    while !stop.load(Ordering::Relaxed) {
        while let Ok(n) = notices.pop() {
            core.on_read(n.volume, n.shard, n.shards, n.time_ns);
        }
        core.tick(ns_since(start));
        if last_publish.elapsed() >= publish_every {
            publish(&core);
            last_publish = Instant::now();
        }
        if moved && last_commit.elapsed() >= commit_every {
            if let Err(e) = vol.pool().commit() {
                tracing::warn!("stager commit: {e}");
            }
            moved = false;
            last_commit = Instant::now();
        }
        let Some(p) = rx.pop() else {
            std::thread::park_timeout(Duration::from_millis(STAGER_IDLE_PARK_MS));
            continue;
        };
        moved |= stage_one(&vol, eng.as_mut(), &mut core, p, shard_units, start);
    }
    while let Ok(n) = notices.pop() {
        core.on_read(n.volume, n.shard, n.shards, n.time_ns);
    }
    publish(&core);
}

/// Stage one predicted shard (demoting victims first). Returns whether any
/// data moved.
pub(crate) fn stage_one(
    vol: &Volume,
    eng: &mut dyn crate::io::IoEngine,
    core: &mut StagerCore,
    p: Prediction,
    shard_units: u64,
    start: Instant,
) -> bool {
    let key = (p.volume, p.shard);
    if p.volume != vol.id() {
        core.stage_missed(false);
        return false;
    }
    if core.holds(key) {
        core.plan(key, shard_units, ns_since(start)); // counted as already staged
        return false;
    }
    // Only whole mapped slots on a colder tier are staged.
    let from_tier = {
        let guard = crossbeam_epoch::pin();
        match vol.shared().table.load(p.shard, &guard) {
            Ok(SlotView::Mapped(e)) if e.tier() != 0 => e.tier(),
            _ => {
                core.stage_missed(false);
                return false;
            }
        }
    };
    let Plan::Stage { evict } = core.plan(key, shard_units, ns_since(start)) else {
        return false;
    };
    let mut moved = false;
    for v in evict {
        match lifecycle::migrate(vol, eng, Loc::slot(v.key.1), v.tier) {
            Ok(Outcome::Done) => {
                core.evicted();
                moved = true;
            }
            r => {
                if let Err(e) = r {
                    tracing::debug!("stager: demoting shard {}: {e}", v.key.1);
                }
                let guard = crossbeam_epoch::pin();
                let still_hot = matches!(
                    vol.shared().table.load(v.key.1, &guard),
                    Ok(SlotView::Mapped(e)) if e.tier() == 0
                );
                core.evict_failed(v, still_hot, ns_since(start));
            }
        }
    }
    if !core.fits(shard_units) {
        core.over_budget();
        return moved;
    }
    match lifecycle::migrate(vol, eng, Loc::slot(p.shard), 0) {
        Ok(Outcome::Done) => {
            core.staged(key, from_tier, shard_units, ns_since(start));
            moved = true;
        }
        Ok(Outcome::Skipped(_)) => core.stage_missed(false),
        Err(e) => {
            tracing::debug!("stager: staging shard {}: {e}", p.shard);
            core.stage_missed(true);
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    //! The inference loop over real trace rings and time, with a predictor
    //! that records its batches and busy-waits a fixed time per step (the
    //! CPU the pacer charges).
    use super::*;
    use crate::constants::PREFETCH_PRODUCTIVE_WINDOW_MS;
    use crate::device::metrics::{trace_ring, TraceProducer};
    use crate::prefetch::PredictorFigures;
    use std::sync::atomic::AtomicUsize;

    const MIB: u64 = 1 << 20;

    struct Batches {
        sizes: Mutex<Vec<usize>>,
        /// Steps begun, steps done.
        started: AtomicUsize,
        steps: AtomicUsize,
    }

    impl Batches {
        fn new() -> Arc<Batches> {
            Arc::new(Batches {
                sizes: Mutex::new(Vec::new()),
                started: AtomicUsize::new(0),
                steps: AtomicUsize::new(0),
            })
        }
    }

    struct Slow {
        log: Arc<Batches>,
        busy: Duration,
        min: usize,
        max: usize,
        promising: bool,
        /// Each background call's work (zero: none).
        train: Duration,
        /// CPU each background call reports as done on a helper thread
        /// (a fit finished off the model thread; zero: none).
        helper: Duration,
        helper_jobs: u64,
    }

    impl Predictor for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn step(&mut self, batch: &[ShardEvent], _out: &mut Vec<Prediction>) {
            self.log.started.fetch_add(1, Ordering::SeqCst);
            let t0 = Instant::now();
            while t0.elapsed() < self.busy {
                std::hint::spin_loop();
            }
            self.log.sizes.lock().unwrap().push(batch.len());
            self.log.steps.fetch_add(1, Ordering::SeqCst);
        }
        fn step_events_max(&self) -> usize {
            self.max
        }
        fn step_events_min(&self) -> usize {
            self.min
        }
        fn promising(&self) -> bool {
            self.promising
        }
        fn background(&mut self, _budget: Duration) -> bool {
            let t0 = Instant::now();
            while t0.elapsed() < self.train {
                std::hint::spin_loop();
            }
            if !self.helper.is_zero() {
                self.helper_jobs += 1;
            }
            !self.train.is_zero() || !self.helper.is_zero()
        }
        fn figures(&self) -> PredictorFigures {
            PredictorFigures {
                helper_jobs: self.helper_jobs,
                helper_cpu_ns: self.helper_jobs * self.helper.as_nanos() as u64,
                ..Default::default()
            }
        }
    }

    struct AllCold;
    impl ShardPlaces for AllCold {
        fn volume_id(&self) -> u32 {
            1
        }
        fn place(&self, _shard: u64) -> Place {
            Place::Cold
        }
        fn boxed(&self) -> Box<dyn ShardPlaces> {
            Box::new(AllCold)
        }
    }

    /// The drain and model threads over one trace ring with `pred`; returns the
    /// ring's producer, the shared state and the stop flag.
    /// The drain and model threads, joined together.
    struct Threads(Vec<JoinHandle<()>>);

    impl Threads {
        fn join(self) -> std::thread::Result<()> {
            for t in self.0 {
                t.join()?;
            }
            Ok(())
        }
    }

    fn spawn(
        pred: Slow,
    ) -> (
        TraceProducer,
        Arc<LiveShared>,
        Arc<AtomicBool>,
        Threads,
        PredictionRx,
    ) {
        spawn_with(pred, 0)
    }

    /// A drain thread over one trace ring (demand promotion after
    /// `promote_reads` cold reads, 0 = off) and a model thread with
    /// `pred`; returns the ring's producer, the shared state, the stop
    /// flag, both threads and the prefetch ring's consumer.
    fn spawn_with(
        pred: Slow,
        promote_reads: u32,
    ) -> (
        TraceProducer,
        Arc<LiveShared>,
        Arc<AtomicBool>,
        Threads,
        PredictionRx,
    ) {
        spawn_on(pred, promote_reads, no_cpu_times)
    }

    /// No CPU times known: the pacer keeps its own shares.
    fn no_cpu_times() -> Option<CpuTimes> {
        None
    }

    /// A two-CPU machine that is always idle (but for the model thread).
    fn idle_machine() -> Option<CpuTimes> {
        static TICKS: AtomicU64 = AtomicU64::new(0);
        let t = TICKS.fetch_add(100, Ordering::Relaxed) + 100;
        Some(CpuTimes {
            idle: t,
            total: t,
            cpus: 2,
        })
    }

    /// [`spawn_with`] on a machine whose CPU times come from `cpu_times`.
    fn spawn_on(
        pred: Slow,
        promote_reads: u32,
        cpu_times: fn() -> Option<CpuTimes>,
    ) -> (
        TraceProducer,
        Arc<LiveShared>,
        Arc<AtomicBool>,
        Threads,
        PredictionRx,
    ) {
        let start = Instant::now();
        let (tp, c) = trace_ring(1 << 16);
        let (mut txs, rx) = prediction_rings(2, 64, 64, 1_000_000);
        let model_tx = txs.pop().unwrap();
        let demand_tx = txs.pop().unwrap();
        let shared = Arc::new(LiveShared::new(Some("slow"), Some(rx.counters())));
        let pcfg = PrefetchConfig {
            shard_bytes: MIB,
            ..Default::default()
        };
        let (h_tx, h_rx) = rtrb::RingBuffer::new(PREFETCH_HANDOFF_EVENTS);
        let wake_at = pred.step_events_min();
        let stop = Arc::new(AtomicBool::new(false));
        let mut model = Model::new(
            Box::new(pred),
            Box::new(AllCold),
            (model_tx, pcfg),
            h_rx,
            shared.clone(),
            start,
            0,
        );
        model.cpu_times = cpu_times;
        let s2 = stop.clone();
        let m = std::thread::spawn(move || model.run(&s2));
        let mut drain = Drain {
            places: Box::new(AllCold),
            consumers: vec![c],
            ring: Some((demand_tx, pcfg)),
            handoff: Some(Handoff {
                tx: h_tx,
                model: m.thread().clone(),
                wake_at,
            }),
            notices: None,
            shared: shared.clone(),
            start,
            st: PrefetchStats::default(),
            demand: DemandPromoter::new(promote_reads, 10_000_000_000, 1024),
        };
        let s2 = stop.clone();
        let d = std::thread::spawn(move || drain.run(&s2));
        (tp, shared, stop, Threads(vec![m, d]), rx)
    }

    /// Prefetching off, nothing recording: the thread lets every event go
    /// (in one step per ring) and counts it, so the queues never drop.
    #[test]
    fn a_drain_only_thread_empties_the_rings_and_counts_every_event() {
        let start = Instant::now();
        let (mut tp, c) = trace_ring(4096);
        let shared = Arc::new(LiveShared::new(None, None));
        let mut inf = Drain {
            places: Box::new(AllCold),
            consumers: vec![c],
            ring: None,
            handoff: None,
            notices: None,
            shared: shared.clone(),
            start,
            st: PrefetchStats::default(),
            demand: DemandPromoter::new(0, 1, 1),
        };
        assert!(inf.drain_only());
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || inf.run(&s2));
        // Ten rings' worth, pushed at the pace a queue might (the ring
        // holds 4096): nothing may be dropped.
        let total = 10 * 4096u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        while i < total {
            if tp.free() > 0 {
                read(&mut tp, i);
                i += 1;
            } else {
                assert!(Instant::now() < deadline, "the ring was never emptied");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(tp.dropped(), 0);
        while shared.infer.lock().unwrap().events < total {
            assert!(Instant::now() < deadline, "events not all counted");
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        assert_eq!(shared.infer.lock().unwrap().events, total);
    }

    fn read(tp: &mut TraceProducer, i: u64) {
        tp.push(DevEvent {
            time_ns: i,
            volume: 1,
            offset: (i % 64) * MIB,
            len: 4096,
            op: DevOp::Read,
        });
    }

    fn wait_steps(log: &Batches, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while log.steps.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} steps in {secs} s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The model step runs on its own thread: while a step of seconds
    /// runs, the drain thread goes on emptying the rings, counting, and
    /// promoting re-read cold shards (before, one thread did both, and
    /// promotions waited for the step).
    #[test]
    fn promotions_keep_flowing_while_a_step_is_slow() {
        let log = Batches::new();
        let (mut tp, shared, stop, h, mut rx) = spawn_with(
            Slow {
                log: log.clone(),
                busy: Duration::from_secs(3),
                min: 1,
                max: 64,
                promising: false,
                train: Duration::ZERO,
                helper: Duration::ZERO,
                helper_jobs: 0,
            },
            2,
        );
        read(&mut tp, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.started.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the step never began");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Shard 5 read twice while the step runs: demand promotion (after
        // 2 cold reads) queues it at once, long before the step ends.
        let t0 = Instant::now();
        read(&mut tp, 5);
        read(&mut tp, 5);
        let got = loop {
            if let Some(p) = rx.pop() {
                break p;
            }
            assert!(
                t0.elapsed() < Duration::from_millis(1500),
                "no promotion while the step ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(got.shard, 5);
        assert_eq!(got.confidence, 1.0);
        assert_eq!(log.steps.load(Ordering::SeqCst), 0, "the step was over");
        // and its counts are published meanwhile
        while shared.stats().unwrap().events < 3 {
            assert!(
                t0.elapsed() < Duration::from_millis(2500),
                "events not counted while the step ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(log.steps.load(Ordering::SeqCst), 0, "the step was over");
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        let st = shared.stats().unwrap();
        assert_eq!(st.demand_queued, 1, "{st:?}");
        assert_eq!(st.events, 3, "{st:?}");
    }

    #[test]
    fn an_expensive_predictor_steps_on_a_batch_not_the_first_event() {
        let log = Batches::new();
        let (mut tp, _shared, stop, h, _rx) = spawn(Slow {
            log: log.clone(),
            busy: Duration::from_millis(1),
            min: 64,
            max: 256,
            promising: false,
            train: Duration::ZERO,
            helper: Duration::ZERO,
            helper_jobs: 0,
        });
        // One event, then (well within the longest wait) the rest of a batch.
        read(&mut tp, 0);
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..100 {
            read(&mut tp, i);
        }
        wait_steps(&log, 1, 10);
        // A trickle below the minimum is stepped once it waited long enough.
        for i in 100..103 {
            read(&mut tp, i);
        }
        wait_steps(&log, 2, 10);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        let sizes = log.sizes.lock().unwrap().clone();
        assert!(
            sizes[0] >= 64,
            "first step on {} events: {sizes:?}",
            sizes[0]
        );
        assert_eq!(sizes[1], 3, "{sizes:?}");
    }

    #[test]
    fn events_gathered_while_paced_are_stepped_newest_first_not_dropped() {
        // After the learning steps, a 30 ms step at the idle share owes
        // about a second of sleep; the events read meanwhile make the next
        // step's batch (its newest `max`), and only the older ones are
        // counted as skipped.
        let log = Batches::new();
        let (mut tp, shared, stop, h, _rx) = spawn(Slow {
            log: log.clone(),
            busy: Duration::from_millis(30),
            min: 16,
            max: 32,
            promising: false,
            train: Duration::ZERO,
            helper: Duration::ZERO,
            helper_jobs: 0,
        });
        let first = PREFETCH_LEARN_STEPS + 1;
        let mut i = 0;
        for k in 0..first {
            if k == PREFETCH_LEARN_STEPS {
                // the learning steps' full share lapses
                std::thread::sleep(Duration::from_millis(PREFETCH_PRODUCTIVE_WINDOW_MS + 200));
            }
            for _ in 0..16 {
                read(&mut tp, i);
                i += 1;
            }
            wait_steps(&log, k as usize + 1, 10);
        }
        // a slow trickle while the thread sleeps off its debt
        for _ in 0..100 {
            read(&mut tp, i);
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        wait_steps(&log, first as usize + 1, 20);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        let sizes = log.sizes.lock().unwrap().clone();
        assert!(
            sizes[..first as usize].iter().all(|&n| n == 16),
            "{sizes:?}"
        );
        assert_eq!(
            sizes[first as usize], 32,
            "the step after pacing: {sizes:?}"
        );
        let st = shared.stats().unwrap();
        assert_eq!(st.events, i, "{st:?}");
        assert!(st.paced_ms >= 500, "{st:?}");
        // all fed or skipped (nothing came after that step)
        assert_eq!(st.events_fed, 16 * first + 32, "{st:?}");
        assert_eq!(st.skipped_events, 100 - 32, "{st:?}");
    }

    /// Steps of 2 ms, events every 20 ms for 1.5 s, and background work of
    /// 40 ms per call, on the model thread (`on_thread`) or reported as
    /// done on a helper thread: the final figures and the steps' time (ms).
    fn training_share(on_thread: bool) -> (PrefetchStats, u64) {
        let log = Batches::new();
        let work = Duration::from_millis(40);
        let (mut tp, shared, stop, h, _rx) = spawn(Slow {
            log: log.clone(),
            busy: Duration::from_millis(2),
            min: 1,
            max: 64,
            promising: true,
            train: if on_thread { work } else { Duration::ZERO },
            helper: if on_thread { Duration::ZERO } else { work },
            helper_jobs: 0,
        });
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut i = 0;
        while Instant::now() < deadline {
            read(&mut tp, i);
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        let st = shared.stats().unwrap();
        // the steps' measured time (a loaded machine stretches the 2 ms)
        let steps_ms = (st.batches as f64 * st.batch_us_mean / 1000.0) as u64;
        (st, steps_ms)
    }

    #[test]
    fn training_takes_at_most_its_share_of_the_model_time() {
        // Training stretches of 40 ms (one step that cannot be cut short)
        // against 2 ms steps: with events to step, training waits until the
        // steps have had their share of the model time. Work a helper
        // thread did for the predictor (the run acceptor's fits) counts
        // the same as work on the model thread.
        for on_thread in [true, false] {
            let (st, steps_ms) = training_share(on_thread);
            assert!(st.train_ms >= 40, "training never ran: {st:?}");
            // at most half of all model time, give or take a stretch or two
            assert!(
                st.train_ms
                    <= steps_ms * u64::from(PREFETCH_TRAIN_SHARE_PERCENT)
                        / u64::from(100 - PREFETCH_TRAIN_SHARE_PERCENT)
                        + 80,
                "on thread {on_thread}: training {} ms against {} ms of steps: {st:?}",
                st.train_ms,
                steps_ms
            );
            if on_thread {
                assert_eq!((st.helper_jobs, st.helper_cpu_ms), (0, 0), "{st:?}");
            } else {
                assert!(st.helper_jobs >= 1, "{st:?}");
                assert_eq!(st.helper_cpu_ms, st.helper_jobs * 40, "{st:?}");
                assert!(st.train_ms >= st.helper_cpu_ms, "{st:?}");
            }
        }
    }

    /// Steps of 20 ms over batches of 8 events on a machine whose CPU
    /// times come from `cpu_times`: the learning steps, their full share
    /// lapsing, then two batches 150 ms apart. Returns the steps taken, the
    /// time paced before those two batches and the final figures.
    fn two_batches_after_learning(
        promising: bool,
        cpu_times: fn() -> Option<CpuTimes>,
    ) -> (usize, u64, PrefetchStats) {
        let log = Batches::new();
        let (mut tp, shared, stop, h, _rx) = spawn_on(
            Slow {
                log: log.clone(),
                busy: Duration::from_millis(20),
                min: 8,
                max: 8,
                promising,
                train: Duration::ZERO,
                helper: Duration::ZERO,
                helper_jobs: 0,
            },
            0,
            cpu_times,
        );
        let learn = PREFETCH_LEARN_STEPS as usize;
        let mut i = 0;
        let mut batch = |tp: &mut TraceProducer| {
            for _ in 0..8 {
                read(tp, i);
                i += 1;
            }
        };
        for k in 0..learn {
            batch(&mut tp);
            wait_steps(&log, k + 1, 10);
        }
        std::thread::sleep(Duration::from_millis(PREFETCH_PRODUCTIVE_WINDOW_MS + 200));
        let paced_before = shared.stats().unwrap().paced_ms;
        batch(&mut tp);
        wait_steps(&log, learn + 1, 10);
        std::thread::sleep(Duration::from_millis(150));
        batch(&mut tp);
        // the second is stepped within this when the thread owes 60 ms
        // (full share), not when it owes ~650 ms from 150 ms before
        std::thread::sleep(Duration::from_millis(300));
        let steps = log.steps.load(Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        (steps, paced_before, shared.stats().unwrap())
    }

    #[test]
    fn a_promising_predictor_is_paced_at_the_full_share() {
        // Steps of 20 ms: at the full share one owes 60 ms, at the idle
        // share about 650 ms. The first PREFETCH_LEARN_STEPS steps are at
        // the full share either way (for PREFETCH_PRODUCTIVE_WINDOW_MS);
        // after that only a promising predictor keeps it: two batches
        // 150 ms apart are both stepped by it, only the first otherwise.
        let learn = PREFETCH_LEARN_STEPS as usize;
        for promising in [false, true] {
            let (steps, _, st) = two_batches_after_learning(promising, no_cpu_times);
            if promising {
                assert_eq!(steps, learn + 2, "{st:?}");
                assert_eq!(st.promising_steps, learn as u64 + 2, "{st:?}");
            } else {
                assert_eq!(steps, learn + 1, "{st:?}");
                assert_eq!(st.promising_steps, 0, "{st:?}");
            }
        }
    }

    #[test]
    fn on_a_machine_with_a_core_to_spare_the_model_is_not_paced() {
        // As the unpromising case above (20 ms steps, at the idle share
        // after the learning steps: the batch 150 ms after a step waits
        // ~650 ms), on an idle two-CPU machine: a core is spare, so it
        // steps both batches and owes no sleep.
        let (steps, paced_before, st) = two_batches_after_learning(false, idle_machine);
        assert_eq!(steps, PREFETCH_LEARN_STEPS as usize + 2, "{st:?}");
        assert_eq!(st.paced_ms, paced_before, "{st:?}");
        assert!(st.spare_cpu_percent >= 190, "{st:?}");
    }
}
