//! Every limit of shardblk in one place, named with its unit.
//!
//! Contract: no other module hard-codes a size, count or duration that a user
//! or operator could care about; it names a constant here. Relations between
//! limits are checked at compile time by the `const _: () = assert!(..)` lines
//! at the bottom, so an edit that breaks one fails the build.

/// Size of a Linux sector, the unit of ublk request offsets.
pub const SECTOR_SIZE_BYTES: u64 = 512;

/// Logical block size exposed to users and the alignment of every `O_DIRECT`
/// transfer to a tier device.
pub const BLOCK_SIZE_BYTES: u64 = 4096;

/// Allocation unit on a tier device: extents are whole runs of units, and the
/// smallest shard is one unit.
pub const UNIT_SIZE_BYTES: u64 = 64 * 1024;

/// Shard size bounds. Shards split and merge within them.
pub const SHARD_SIZE_MIN_BYTES: u64 = UNIT_SIZE_BYTES;
pub const SHARD_SIZE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// `SHARD_SIZE` default (the `--shard-size` flag).
pub const SHARD_SIZE_DEFAULT_BYTES: u64 = 1024 * 1024;

/// Largest logical volume size. Thin: costs memory only where touched.
pub const VOLUME_SIZE_MAX_BYTES: u64 = 256 << 40; // 256 TiB

/// Entries in one lazily allocated leaf of the LBA→shard table.
pub const TABLE_LEAF_ENTRIES: usize = 1 << 14;

/// Tiers per pool (the tier index is stored in 2 bits of a table entry).
pub const TIERS_MAX: usize = 4;
/// Tier devices per pool (one device per tier in this version).
pub const POOL_DEVICES_MAX: usize = TIERS_MAX;
/// How long opening a pool waits for the exclusive lock on its devices
/// before reporting them in use. A holder killed a moment ago releases it
/// only when the kernel has torn down its io_uring instance (which holds the
/// registered files), asynchronously after the process is gone.
pub const POOL_LOCK_WAIT_MS: u64 = 5_000;
/// Longest device path recorded in a superblock as a hint for `Pool::open`.
pub const PATH_HINT_MAX_BYTES: usize = 255;
/// Volumes per pool.
pub const VOLUMES_MAX: usize = 4096;
/// Longest volume or tier name.
pub const NAME_LEN_MAX_BYTES: usize = 64;

/// Superblock: one block at offset 0 of every tier device, and a copy at
/// `SUPERBLOCK_COPY_OFFSET_BYTES`.
pub const SUPERBLOCK_SIZE_BYTES: u64 = BLOCK_SIZE_BYTES;
pub const SUPERBLOCK_COPY_OFFSET_BYTES: u64 = BLOCK_SIZE_BYTES;
/// Data (extents) start after the reserved head of each device.
pub const DEVICE_RESERVED_HEAD_BYTES: u64 = UNIT_SIZE_BYTES;

/// Metadata region on the metadata device (the first tier device): two
/// checkpoint slots and a log ring.
pub const META_LOG_SIZE_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest checkpoint slot; it grows with pool capacity (see `shard::pool`).
pub const META_CHECKPOINT_SLOT_MIN_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes of checkpoint reserved per allocation unit of pool capacity, so a
/// checkpoint can always hold a pool mapped entirely in minimum-size shards.
pub const META_CHECKPOINT_BYTES_PER_UNIT: u64 = 32;
/// Checkpoint when the log is this full (percent).
pub const META_LOG_CHECKPOINT_PERCENT: u64 = 50;

/// Smallest tier device accepted by `pool init`.
/// The metadata device needs room for the metadata region as well
/// (`shard::pool` checks that separately).
pub const DEVICE_SIZE_MIN_BYTES: u64 = 64 * 1024 * 1024;

/// io_uring submission queue entries per engine (one engine per thread).
pub const IO_RING_ENTRIES: u32 = 256;
/// Streaming, early submission: a reap that returned at least this many
/// completions arms it (the caller is about to queue about as many ops). A
/// smaller refill goes with the next reap: one syscall per I/O at QD 1, and
/// at small depths the plug delay early submission saves is a few
/// microseconds, not worth the extra syscalls.
pub const IO_EARLY_SUBMIT_MIN_COMPLETIONS: usize = 8;
const _: () = assert!(IO_EARLY_SUBMIT_MIN_COMPLETIONS >= 2);
const _: () = assert!(IO_EARLY_SUBMIT_MIN_COMPLETIONS <= IO_RING_ENTRIES as usize);
/// Registered buffer arena per engine.
pub const IO_REGISTERED_BUFFERS: usize = 64;
pub const IO_REGISTERED_BUFFER_BYTES: usize = 1024 * 1024;

/// Background migration copies in chunks of this size.
pub const MIGRATE_CHUNK_BYTES: u64 = 1024 * 1024;
/// Attempts to copy a shard that keeps being written before giving up.
pub const MIGRATE_RETRIES_MAX: u32 = 8;

/// Hot-tier watermarks (percent of hot capacity used): demote above high
/// until below low; promotion stops above high.
pub const HOT_WATERMARK_HIGH_PERCENT: u8 = 90;
pub const HOT_WATERMARK_LOW_PERCENT: u8 = 75;
/// Length of one policy window of the background manager (promotion,
/// demotion, split, merge; a commit ends each window).
pub const POLICY_WINDOW_MS: u64 = 2_000;
/// Nice value of the manager's thread: its windows (and commits) yield a
/// shared CPU to the queue threads (see `threads`).
pub const MANAGER_THREAD_NICE: i32 = 19;
/// A shard read this many times within one policy window is promoted.
pub const PROMOTE_READS_DEFAULT: u32 = 4;

const _: () = assert!(SHARD_SIZE_MIN_BYTES.is_power_of_two());
const _: () = assert!(SHARD_SIZE_MAX_BYTES.is_power_of_two());
const _: () = assert!(SHARD_SIZE_DEFAULT_BYTES >= SHARD_SIZE_MIN_BYTES);
const _: () = assert!(SHARD_SIZE_DEFAULT_BYTES <= SHARD_SIZE_MAX_BYTES);
const _: () = assert!(UNIT_SIZE_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(BLOCK_SIZE_BYTES % SECTOR_SIZE_BYTES == 0);
const _: () = assert!(DEVICE_RESERVED_HEAD_BYTES % UNIT_SIZE_BYTES == 0);
const _: () =
    assert!(DEVICE_RESERVED_HEAD_BYTES >= SUPERBLOCK_COPY_OFFSET_BYTES + SUPERBLOCK_SIZE_BYTES);
const _: () = assert!(TABLE_LEAF_ENTRIES.is_power_of_two());
const _: () = assert!(TIERS_MAX <= 4);
const _: () = assert!(META_LOG_SIZE_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(META_CHECKPOINT_SLOT_MIN_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(
    DEVICE_RESERVED_HEAD_BYTES
        + 2 * META_CHECKPOINT_SLOT_MIN_BYTES
        + META_LOG_SIZE_BYTES
        + UNIT_SIZE_BYTES
        <= DEVICE_SIZE_MIN_BYTES
);
const _: () = assert!(HOT_WATERMARK_LOW_PERCENT < HOT_WATERMARK_HIGH_PERCENT);
const _: () = assert!(HOT_WATERMARK_HIGH_PERCENT <= 100);
const _: () = assert!(MIGRATE_CHUNK_BYTES % BLOCK_SIZE_BYTES == 0);

// --- table ---
/// Writes in flight at once on one table entry (the 8-bit writer count of
/// `kernel-notes/engine.md`); one more gets `WriteEnter::Saturated`.
pub const TABLE_SLOT_WRITERS_MAX: u32 = 255;

// --- meta ---
/// Longest opaque policy blob stored with a volume (JSON bytes).
pub const META_POLICY_MAX_BYTES: usize = 4096;
/// Largest encoded metadata log frame (header, payload, checksum).
pub const META_RECORD_MAX_BYTES: usize = 8192;
/// Smallest log ring accepted by `MetaLog::format`/`open` (tests use small rings
/// to exercise checkpoints; pools use `META_LOG_SIZE_BYTES`).
pub const META_LOG_MIN_BYTES: u64 = 4 * BLOCK_SIZE_BYTES;
/// Smallest checkpoint slot accepted by `MetaLog::format`/`open` (tests only;
/// pools use at least `META_CHECKPOINT_SLOT_MIN_BYTES`).
pub const META_CHECKPOINT_SLOT_FLOOR_BYTES: u64 = BLOCK_SIZE_BYTES;
const _: () = assert!(META_POLICY_MAX_BYTES + NAME_LEN_MAX_BYTES + 128 <= META_RECORD_MAX_BYTES);
const _: () = assert!(META_LOG_MIN_BYTES >= 2 * BLOCK_SIZE_BYTES + META_RECORD_MAX_BYTES as u64);
const _: () = assert!(META_LOG_MIN_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(META_CHECKPOINT_SLOT_MIN_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(META_CHECKPOINT_SLOT_MIN_BYTES >= META_CHECKPOINT_SLOT_FLOOR_BYTES);
const _: () = assert!(META_LOG_CHECKPOINT_PERCENT > 0 && META_LOG_CHECKPOINT_PERCENT < 100);

// --- superblock ---
/// Every device entry, with its tier name and path hint, fits one superblock.
const _: () = assert!(
    POOL_DEVICES_MAX * (16 + 1 + 1 + NAME_LEN_MAX_BYTES + 8 + 2 + PATH_HINT_MAX_BYTES) + 512
        <= SUPERBLOCK_SIZE_BYTES as usize
);

// --- prefetch ---

/// `PREFETCH_DEPTH` default: most shards one predictor step may ask to stage
/// for one stream (the `--depth` flag). Readahead's maximum window, stride's
/// look-ahead and Markov's chain length are all bounded by it.
pub const PREFETCH_DEPTH_DEFAULT_SHARDS: u32 = 8;
/// Largest accepted `PREFETCH_DEPTH`.
pub const PREFETCH_DEPTH_MAX_SHARDS: u32 = 256;
/// Predictions below this confidence (0.0..=1.0, dimensionless) are not
/// staged (the `--threshold` flag).
pub const PREFETCH_CONFIDENCE_MIN_DEFAULT: f32 = 0.5;
/// `SEQUENCE_LENGTH` default: events per stream in the LSTM input window.
pub const SEQUENCE_LENGTH_DEFAULT_EVENTS: u32 = 32;
/// Largest accepted `SEQUENCE_LENGTH`.
pub const SEQUENCE_LENGTH_MAX_EVENTS: u32 = 1024;
/// Stream rule: a stream is (volume, offset >> this) — 1 GiB address regions
/// by default, so interleaved workloads in different regions never share
/// predictor state.
pub const PREFETCH_REGION_SHIFT_DEFAULT_BITS: u32 = 30;
/// Bounds of the region shift (64 KiB .. 1 TiB regions).
pub const PREFETCH_REGION_SHIFT_MIN_BITS: u32 = 16;
pub const PREFETCH_REGION_SHIFT_MAX_BITS: u32 = 40;
/// Per-stream state tables hold at most this many streams (LRU eviction).
pub const PREFETCH_STREAMS_MAX: usize = 4096;
/// Concurrent access streams tracked inside one region (readahead windows,
/// stride trackers); the least recently used tracker is replaced.
pub const PREFETCH_TRACKERS_PER_STREAM: usize = 8;
/// Markov predictor: most delta contexts remembered per order (LRU), and
/// most successor deltas counted per context (least frequent replaced).
pub const MARKOV_CONTEXTS_MAX: usize = 1 << 16;
pub const MARKOV_SUCCESSORS_MAX: usize = 8;
/// Markov counts are halved when a context's total reaches this, so old
/// behaviour fades.
pub const MARKOV_COUNT_HALVE_AT: u32 = 1024;

/// Trace files: longest accepted line (a longer one is a malformed-input error).
pub const TRACE_LINE_LEN_MAX_BYTES: usize = 4096;
/// Device multiplexing in converted traces: offset = device * 2^this + byte offset.
pub const TRACE_DEVICE_SHIFT_BITS: u32 = 40;
/// Inter-arrival time given to events of formats without timestamps (LIRS
/// `.blocks`, fio iolog v2) unless the caller chooses another.
pub const TRACE_INTERARRIVAL_DEFAULT_NS: u64 = 100_000;
/// Block size given to LIRS block numbers unless the caller chooses another.
pub const TRACE_LIRS_BLOCK_DEFAULT_BYTES: u64 = 4096;

/// Offline simulator defaults: hot tier (NVMe) and cold tier (HDD) read cost
/// is access latency + length / bandwidth.
pub const SIM_HOT_ACCESS_DEFAULT_NS: u64 = 80_000;
pub const SIM_HOT_BANDWIDTH_DEFAULT_BYTES_PER_S: u64 = 2_000_000_000;
pub const SIM_COLD_ACCESS_DEFAULT_NS: u64 = 6_000_000;
pub const SIM_COLD_BANDWIDTH_DEFAULT_BYTES_PER_S: u64 = 150_000_000;
/// Staging channel bandwidth (cold read + hot write of a whole shard).
pub const SIM_STAGE_BANDWIDTH_DEFAULT_BYTES_PER_S: u64 = 150_000_000;
/// Staging backlog bound (the prefetch ring): predictions arriving while this
/// many shards are queued or in flight are dropped and counted.
pub const SIM_STAGE_QUEUE_MAX_SHARDS: usize = 256;
/// Hot tier capacity default for `trace eval` (shards).
pub const SIM_HOT_SHARDS_DEFAULT: u64 = 1024;
/// Latency histogram range of the simulator (1 ns .. 1 hour, 3 significant digits).
pub const SIM_LATENCY_MAX_NS: u64 = 3_600_000_000_000;
/// Synthetic workloads (`prefetch::synth`): mean time between reads inside a
/// burst (one read, one B-tree lookup, one file).
pub const SYNTH_INTERARRIVAL_DEFAULT_NS: u64 = 1_000_000;
/// Synthetic workloads: mean think time before each burst. Longer than one
/// random staging of the largest evaluated shard (a cold seek plus 1 MiB on
/// the staging channel, 13 ms with the simulator defaults), so a predictor
/// that knows the next burst can stage it in time.
pub const SYNTH_THINK_DEFAULT_NS: u64 = 20_000_000;
/// Seed of the trace benchmark's synthetic workloads (`bench/trace_eval.rs`,
/// and the diagnostics and tests that reproduce its rows).
pub const SYNTH_BENCH_SEED: u64 = 7;
const _: () = assert!(
    SYNTH_THINK_DEFAULT_NS
        > SIM_COLD_ACCESS_DEFAULT_NS
            + (1u64 << 20) * 1_000_000_000 / SIM_STAGE_BANDWIDTH_DEFAULT_BYTES_PER_S
);

const _: () = assert!(PREFETCH_DEPTH_DEFAULT_SHARDS >= 1);
const _: () = assert!(PREFETCH_DEPTH_DEFAULT_SHARDS <= PREFETCH_DEPTH_MAX_SHARDS);
const _: () = assert!(SEQUENCE_LENGTH_DEFAULT_EVENTS >= 1);
const _: () = assert!(SEQUENCE_LENGTH_DEFAULT_EVENTS <= SEQUENCE_LENGTH_MAX_EVENTS);
const _: () = assert!(PREFETCH_REGION_SHIFT_MIN_BITS <= PREFETCH_REGION_SHIFT_DEFAULT_BITS);
const _: () = assert!(PREFETCH_REGION_SHIFT_DEFAULT_BITS <= PREFETCH_REGION_SHIFT_MAX_BITS);
const _: () = assert!(1u64 << PREFETCH_REGION_SHIFT_MIN_BITS >= SHARD_SIZE_MIN_BYTES);
const _: () = assert!(PREFETCH_REGION_SHIFT_MAX_BITS <= TRACE_DEVICE_SHIFT_BITS);
const _: () =
    assert!(PREFETCH_CONFIDENCE_MIN_DEFAULT >= 0.0 && PREFETCH_CONFIDENCE_MIN_DEFAULT <= 1.0);
const _: () = assert!(MARKOV_SUCCESSORS_MAX >= 1 && MARKOV_COUNT_HALVE_AT >= 2);
const _: () = assert!(PREFETCH_TRACKERS_PER_STREAM >= 1 && PREFETCH_STREAMS_MAX >= 1);

// --- device ---
/// Largest request the ublk device accepts (its per-tag buffer; the block
/// layer's max_sectors is this over 512).
pub const DEVICE_IO_BUF_BYTES: u32 = 512 * 1024;
/// Default and largest queue depth (requests in flight per ublk queue).
/// The maximum keeps one queue's own overwrites of one shard below the
/// table's writer count: a queue thread that found an entry saturated waits
/// for other threads' writes, never for its own (see `device::queue`).
pub const DEVICE_DEPTH_DEFAULT_REQUESTS: u16 = 64;
pub const DEVICE_DEPTH_MAX_REQUESTS: u16 = 254;
/// Most ublk queues one device may have.
pub const DEVICE_QUEUES_MAX: u16 = 64;
/// Most concurrent ublk devices numbered by `--number` (the driver's minor range is larger;
/// this bounds `shardblk del --all` scans).
pub const DEVICE_NUMBER_MAX: u32 = 1 << 20;
/// Largest discard or write-zeroes request (bytes) advertised to the block layer.
pub const DEVICE_DISCARD_MAX_BYTES: u64 = 1 << 30;
/// Trace events buffered per queue for the prefetcher; more are dropped and counted.
pub const DEVICE_TRACE_RING_EVENTS: usize = 1 << 16;
/// How often a queue thread publishes its statistics snapshot (milliseconds).
pub const DEVICE_STATS_PUBLISH_MS: u64 = 200;
/// Latencies a queue thread buffers between publishes (8 bytes each); a full
/// buffer is published at once.
pub const DEVICE_STATS_PENDING_RECORDS: usize = 16_384;
/// Highest latency a histogram tracks (nanoseconds); slower requests count as this.
pub const DEVICE_LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Significant decimal digits of the latency histograms.
pub const DEVICE_LATENCY_SIGFIG: u8 = 3;
/// The block-layer I/O scheduler the daemon gives its disk once live
/// (`add --io-scheduler`; `kernel` keeps the kernel's choice, which is
/// mq-deadline for a one-queue device). `none` suits a device whose tiers
/// do their own scheduling, as NVMe disks default to it: measured under TCG,
/// mq-deadline cost a one-queue device half its IOPS at QD32
/// (`bench/RESULTS.md`, "The I/O scheduler").
pub const DEVICE_IO_SCHEDULER_DEFAULT: &str = "none";
/// Longest I/O scheduler name accepted (bytes; the kernel's elevator names are shorter).
pub const DEVICE_IO_SCHEDULER_NAME_MAX_BYTES: usize = 32;
const _: () = assert!(
    !DEVICE_IO_SCHEDULER_DEFAULT.is_empty()
        && DEVICE_IO_SCHEDULER_DEFAULT.len() <= DEVICE_IO_SCHEDULER_NAME_MAX_BYTES
);
/// `--poll adaptive`: spin this long after the last completion before sleeping (microseconds).
pub const DEVICE_ADAPTIVE_SPIN_US: u64 = 50;
/// How long `shardblk add` waits for the daemon to report the device live (seconds).
pub const DEVICE_START_TIMEOUT_S: u64 = 60;
/// How long recovery waits for a stopped device to be quiesced (seconds).
pub const DEVICE_STOP_TIMEOUT_S: u64 = 30;
/// How long `shardblk del` waits for the daemon to exit (seconds). The
/// daemon's model thread finishes an online training step in progress
/// first: milliseconds natively, but 25-60 s measured under TCG in the test
/// VM (session 14), where `del` used to return after 30 s with the daemon,
/// and its hold on the pool, still there.
pub const DEVICE_DAEMON_EXIT_TIMEOUT_S: u64 = 180;
const _: () = assert!(DEVICE_DAEMON_EXIT_TIMEOUT_S >= DEVICE_STOP_TIMEOUT_S);
/// Largest reply or request accepted on the control socket (bytes).
pub const DEVICE_CONTROL_MSG_MAX_BYTES: usize = 1 << 20;
const _: () = assert!(DEVICE_IO_BUF_BYTES as u64 % BLOCK_SIZE_BYTES == 0);
// A buffered latency packs its histogram key above bit 56.
const _: () = assert!(DEVICE_LATENCY_MAX_NS < 1 << 56);
const _: () = assert!(DEVICE_STATS_PENDING_RECORDS >= DEVICE_DEPTH_MAX_REQUESTS as usize);
const _: () = assert!(DEVICE_DEPTH_DEFAULT_REQUESTS <= DEVICE_DEPTH_MAX_REQUESTS);
const _: () = assert!((DEVICE_DEPTH_MAX_REQUESTS as u32) < TABLE_SLOT_WRITERS_MAX);
const _: () = assert!(DEVICE_DISCARD_MAX_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(DEVICE_DISCARD_MAX_BYTES >> 9 <= u32::MAX as u64);
const _: () = assert!(DEVICE_TRACE_RING_EVENTS.is_power_of_two());

// --- lstm ---
/// LSTM hidden units per layer: default and largest accepted.
pub const LSTM_HIDDEN_DEFAULT_UNITS: u32 = 64;
pub const LSTM_HIDDEN_MAX_UNITS: u32 = 1024;
/// Stacked LSTM layers: default and largest accepted.
pub const LSTM_LAYERS_DEFAULT: u32 = 1;
pub const LSTM_LAYERS_MAX: u32 = 4;
/// Embedding width of the delta class input (dimensions): default.
pub const LSTM_DELTA_EMBED_DEFAULT_DIMS: u32 = 32;
/// Embedding width of each of the op, size and inter-arrival inputs: default.
pub const LSTM_AUX_EMBED_DEFAULT_DIMS: u32 = 4;
/// Largest accepted embedding width (dimensions).
pub const LSTM_EMBED_MAX_DIMS: u32 = 256;
/// Delta classes in the vocabulary (out-of-vocabulary not counted): default
/// and largest accepted. The output layer has one more (OOV); it dominates
/// the step cost, so the vocabulary stays modest.
pub const LSTM_VOCAB_DEFAULT_CLASSES: u32 = 256;
pub const LSTM_VOCAB_MAX_CLASSES: u32 = 4096;
/// Online vocabulary growth: deltas counted over this many recent events.
pub const LSTM_VOCAB_WINDOW_EVENTS: usize = 4096;
/// A delta seen this many times in the counting window joins the vocabulary.
pub const LSTM_VOCAB_MIN_COUNT: u32 = 2;
/// Size buckets of the size input (log2 of shards touched, capped).
pub const LSTM_SIZE_BUCKETS: u32 = 8;
/// Inter-arrival buckets (x4 per bucket from 1 µs, last bucket open-ended).
pub const LSTM_GAP_BUCKETS: u32 = 16;
/// Op classes of the op input (read, write).
pub const LSTM_OP_CLASSES: u32 = 2;
/// Nearest-delta input: the stream's last this many requests are recalled;
/// deltas up to this many shards either way have a class (plus one "far").
pub const LSTM_NEAR_RECENT: usize = 8;
pub const LSTM_NEAR_MAX_SHARDS: u64 = 4;
pub const LSTM_NEAR_CLASSES: u32 = 2 + 2 * LSTM_NEAR_MAX_SHARDS as u32;
/// Scope classes of the scope input (region stream, volume stream).
pub const LSTM_SCOPE_CLASSES: u32 = 2;
/// Repeat classes of the repeat input (the delta differs from the stream's
/// previous one or there is none; it equals it). The output's repeat class
/// ("the same delta again") names a stride whatever the vocabulary holds.
pub const LSTM_REPEAT_CLASSES: u32 = 2;
/// The LSTM's model of the hot tier (shards read or predicted lately, as
/// many as `PrefetchConfig::stage_capacity_shards`) holds at most this many
/// shards: 16 bytes and a map entry each.
pub const LSTM_RESIDENT_MAX_SHARDS: usize = 1 << 16;
/// Shard classes (address-correlating classes: absolute shards of a volume,
/// OOV not counted): default and largest accepted; 0 gives the delta-only
/// model. They are input classes and output classes beside the delta
/// classes, so the output layer has `1 + vocab + shards` rows; its cost
/// grows with them (measured in bench/RESULTS.md).
pub const LSTM_SHARD_VOCAB_DEFAULT_CLASSES: u32 = 1024;
pub const LSTM_SHARD_VOCAB_MAX_CLASSES: u32 = 1 << 16;
/// Output classes read per stream and step, per shard of `PREFETCH_DEPTH`
/// (the most likely; classes naming the same shard add up).
pub const LSTM_CANDIDATE_CLASSES_PER_DEPTH: usize = 2;
/// A volume stream's memory of its states (entries: one per event, ring):
/// default and largest. 4096 entries hold a repeated pattern of that many
/// events; each costs `hidden * 4 + 8` bytes (1 MiB per volume at 64 hidden
/// units), and a recall one `[entries, hidden]` product per event.
pub const LSTM_MEMORY_DEFAULT_ENTRIES: u32 = 4096;
pub const LSTM_MEMORY_MAX_ENTRIES: u32 = 1 << 20;
/// A memory recall's margin is measured against the closest of this many
/// nearest entries that continued differently.
pub const LSTM_MEMORY_NEIGHBOURS: usize = 8;
/// Dimensions of the address half of a memory key (a fixed pseudo-random
/// vector per shard: different shards' are nearly orthogonal).
pub const LSTM_MEMORY_ADDRESS_DIMS: usize = 32;
/// Weight of the state half in a memory key's similarity (the address half
/// has the rest).
pub const LSTM_MEMORY_STATE_WEIGHT: f32 = 0.25;
const _: () = assert!(LSTM_MEMORY_STATE_WEIGHT > 0.0 && LSTM_MEMORY_STATE_WEIGHT < 1.0);
/// The memory standardizes states with running statistics over about this
/// many states.
pub const LSTM_MEMORY_STATS_EVENTS: u64 = 1024;
/// Embedding width of the shard class input (dimensions): default.
pub const LSTM_SHARD_EMBED_DEFAULT_DIMS: u32 = 32;
/// Online shard vocabulary growth: shard visits counted over this many
/// recent visits; a shard visited `LSTM_VOCAB_MIN_COUNT` times in it joins.
pub const LSTM_SHARD_VOCAB_WINDOW_EVENTS: usize = 8192;
/// Adam learning rate: default (dimensionless) and accepted range.
pub const LSTM_LEARNING_RATE_DEFAULT: f64 = 3e-3;
pub const LSTM_LEARNING_RATE_MAX: f64 = 1.0;
/// Online training: one training step per this many observed events (default).
pub const LSTM_TRAIN_INTERVAL_DEFAULT_EVENTS: u32 = 64;
pub const LSTM_TRAIN_INTERVAL_MAX_EVENTS: u32 = 1 << 20;
/// Training steps due but not yet run beyond which further ones are skipped (and counted).
pub const LSTM_TRAIN_BACKLOG_MAX_STEPS: u64 = 8;
/// Windows per training batch (default and largest).
pub const LSTM_TRAIN_BATCH_DEFAULT_WINDOWS: u32 = 32;
pub const LSTM_TRAIN_BATCH_MAX_WINDOWS: u32 = 4096;
/// Recent windows kept for online training (default and largest).
pub const LSTM_TRAIN_BUFFER_DEFAULT_WINDOWS: u32 = 1024;
pub const LSTM_TRAIN_BUFFER_MAX_WINDOWS: u32 = 1 << 20;
/// Training steps between swaps of the trained weights into the inference model (default).
pub const LSTM_SWAP_INTERVAL_DEFAULT_STEPS: u32 = 4;
pub const LSTM_SWAP_INTERVAL_MAX_STEPS: u32 = 1 << 20;
/// Gradient norm clip of a training step.
pub const LSTM_GRAD_CLIP_NORM: f64 = 1.0;
/// Offline training: in each chunk this percentage of the delta classes
/// (drawn per chunk) is hidden in region streams, as if the vocabulary lacked them (out of
/// vocabulary as inputs, not correct as targets), so the model learns to
/// follow a stride it has no class for (by the repeat input and class).
pub const LSTM_TRAIN_HIDDEN_DELTA_PERCENT: u64 = 25;
const _: () = assert!(LSTM_TRAIN_HIDDEN_DELTA_PERCENT < 100);
/// Extra model steps that follow the most likely path to predict further ahead (default, max).
pub const LSTM_LOOKAHEAD_DEFAULT_STEPS: u32 = 7;
pub const LSTM_LOOKAHEAD_MAX_STEPS: u32 = 64;
/// Intra-op threads of the thread that owns the model (default, max).
pub const LSTM_THREADS_DEFAULT: u32 = 1;
pub const LSTM_THREADS_MAX: u32 = 256;
/// Largest model file read (bytes).
pub const LSTM_MODEL_FILE_MAX_BYTES: u64 = 256 << 20;
/// Shipped default model, relative to the crate root.
pub const LSTM_DEFAULT_MODEL_PATH: &str = "models/lstm-default.sbm";
const _: () =
    assert!(LSTM_HIDDEN_DEFAULT_UNITS >= 1 && LSTM_HIDDEN_DEFAULT_UNITS <= LSTM_HIDDEN_MAX_UNITS);
const _: () = assert!(LSTM_LAYERS_DEFAULT >= 1 && LSTM_LAYERS_DEFAULT <= LSTM_LAYERS_MAX);
const _: () = assert!(LSTM_DELTA_EMBED_DEFAULT_DIMS <= LSTM_EMBED_MAX_DIMS);
const _: () = assert!(
    LSTM_SHARD_EMBED_DEFAULT_DIMS >= 1 && LSTM_SHARD_EMBED_DEFAULT_DIMS <= LSTM_EMBED_MAX_DIMS
);
const _: () = assert!(LSTM_SHARD_VOCAB_DEFAULT_CLASSES <= LSTM_SHARD_VOCAB_MAX_CLASSES);
const _: () = assert!(LSTM_MEMORY_DEFAULT_ENTRIES <= LSTM_MEMORY_MAX_ENTRIES);
const _: () = assert!(LSTM_SHARD_VOCAB_WINDOW_EVENTS >= LSTM_VOCAB_MIN_COUNT as usize);
const _: () = assert!(LSTM_AUX_EMBED_DEFAULT_DIMS <= LSTM_EMBED_MAX_DIMS);
const _: () = assert!(
    LSTM_VOCAB_DEFAULT_CLASSES >= 1 && LSTM_VOCAB_DEFAULT_CLASSES <= LSTM_VOCAB_MAX_CLASSES
);
const _: () =
    assert!(LSTM_VOCAB_MIN_COUNT >= 1 && LSTM_VOCAB_WINDOW_EVENTS >= LSTM_VOCAB_MIN_COUNT as usize);
const _: () = assert!(LSTM_TRAIN_BATCH_DEFAULT_WINDOWS <= LSTM_TRAIN_BUFFER_DEFAULT_WINDOWS);
const _: () = assert!(LSTM_LOOKAHEAD_DEFAULT_STEPS <= LSTM_LOOKAHEAD_MAX_STEPS);
const _: () = assert!(LSTM_THREADS_DEFAULT >= 1 && LSTM_THREADS_DEFAULT <= LSTM_THREADS_MAX);
/// Background time the simulator grants a predictor after each step: large,
/// so the LSTM's own per-call step bound governs and evaluations are reproducible.
pub const SIM_BACKGROUND_BUDGET_DEFAULT_NS: u64 = 1_000_000_000;
// --- devq: device queue loop, stats watch and HDR export ---
/// Most bytes a control-socket reply may carry (a `hist` dump of every
/// queue's histograms is the largest).
pub const DEVICE_CONTROL_REPLY_MAX_BYTES: usize = 64 << 20;
/// Default refresh period of `shardblk stats --watch` (seconds).
pub const STATS_WATCH_INTERVAL_DEFAULT_S: f64 = 1.0;
/// Shortest `--interval` accepted: one publish period of the queue threads (seconds).
pub const STATS_WATCH_INTERVAL_MIN_S: f64 = DEVICE_STATS_PUBLISH_MS as f64 / 1000.0;
const _: () = assert!(DEVICE_CONTROL_REPLY_MAX_BYTES >= DEVICE_CONTROL_MSG_MAX_BYTES);
const _: () = assert!(STATS_WATCH_INTERVAL_DEFAULT_S >= STATS_WATCH_INTERVAL_MIN_S);
// --- cluster ---
/// Copies of every shard kept on distinct nodes (the `--replicas` default).
pub const CLUSTER_REPLICAS_DEFAULT: usize = 2;
/// Most copies one shard may have.
pub const CLUSTER_REPLICAS_MAX: usize = 8;
/// Placement weights are free capacity quantised to this many steps per
/// doubling, so the small changes every write makes move no shard home.
pub const CLUSTER_WEIGHT_STEPS_PER_DOUBLING: u32 = 4;
/// Replication granule: every block of this size carries its own version.
pub const CLUSTER_BLOCK_BYTES: u64 = BLOCK_SIZE_BYTES;
/// Largest data payload of one protocol request or reply (bytes).
pub const CLUSTER_IO_MAX_BYTES: usize = 1024 * 1024;
/// Largest protocol frame (header, checksum and payload).
pub const CLUSTER_FRAME_MAX_BYTES: usize = CLUSTER_IO_MAX_BYTES + 64 * 1024;
/// Requests in flight on one connection; a caller beyond it waits (back-pressure).
pub const CLUSTER_INFLIGHT_PER_CONN: usize = 32;
/// A request unanswered for this long fails with a timeout (milliseconds).
pub const CLUSTER_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Connecting to a peer gives up after this long (milliseconds).
pub const CLUSTER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Gossip round interval (milliseconds).
pub const CLUSTER_GOSSIP_INTERVAL_MS: u64 = 100;
/// A node whose heartbeat has not advanced for this long is dead to the
/// observer (the simulated membership; chitchat uses its phi detector).
pub const CLUSTER_FAIL_AFTER_MS: u64 = 1_000;
/// An attacher retransmits an unanswered request after this long (milliseconds).
pub const CLUSTER_RETRY_MS: u64 = 150;
/// Re-replication throttle: one shard copy at a time, at most one started per
/// this interval (milliseconds).
pub const CLUSTER_REPAIR_INTERVAL_MS: u64 = 200;
/// Logical size of the local volume that holds a node's copies of one
/// cluster volume (thin: costs only what is written); also the largest
/// cluster volume.
pub const CLUSTER_LOCAL_VOLUME_BYTES: u64 = 64 << 30;
/// The placement unit of cluster volumes (a cluster shard).
pub const CLUSTER_SHARD_BYTES: u64 = SHARD_SIZE_DEFAULT_BYTES;
/// A real client retransmits an unanswered request after this long (TCP is
/// reliable; this covers a peer that restarted) (milliseconds).
pub const CLUSTER_CLIENT_RETRY_MS: u64 = 1_000;
/// A real client's operation fails after this long (longer than failure
/// detection, so a dead replica is dropped rather than failing the write).
pub const CLUSTER_OP_TIMEOUT_MS: u64 = 20_000;
/// How often a real client's attacher ticks (retransmits, repair) (milliseconds).
pub const CLUSTER_CLIENT_TICK_MS: u64 = 20;
/// How often it ticks with nothing in flight (milliseconds).
pub const CLUSTER_CLIENT_IDLE_TICK_MS: u64 = 100;
const _: () = assert!(CLUSTER_CLIENT_IDLE_TICK_MS >= CLUSTER_CLIENT_TICK_MS);
/// How often a node republishes its gossip keys (milliseconds).
pub const CLUSTER_PUBLISH_MS: u64 = 500;
/// Shards one re-replication scan looks at per tick.
pub const CLUSTER_REPAIR_SCAN_SHARDS: u64 = 4096;
/// A node's replica metadata journal is folded into a fresh snapshot when
/// it grows past this (bytes).
pub const CLUSTER_META_JOURNAL_MAX_BYTES: u64 = 16 << 20;
/// Times an attach retries above a newer holder before giving up.
pub const CLUSTER_ATTACH_ATTEMPTS: u32 = 3;
/// Requests a node's replica thread applies before one sync and metadata
/// append answers them all (group commit) (count).
pub const CLUSTER_REPLICA_BATCH_REQUESTS: usize = 64;
const _: () = assert!(CLUSTER_REPLICA_BATCH_REQUESTS >= 1);
/// Callers' reads and writes one attacher runs at once (operations
/// (count); more wait their turn). At most the requests a connection
/// keeps in flight, so caller operations alone never queue on a connection.
pub const CLUSTER_ATTACHER_MAX_OPS: usize = 32;
const _: () = assert!(CLUSTER_ATTACHER_MAX_OPS >= 1);
const _: () = assert!(CLUSTER_ATTACHER_MAX_OPS <= CLUSTER_INFLIGHT_PER_CONN);
const _: () =
    assert!(CLUSTER_REPLICAS_DEFAULT >= 1 && CLUSTER_REPLICAS_DEFAULT <= CLUSTER_REPLICAS_MAX);
const _: () = assert!(CLUSTER_BLOCK_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(CLUSTER_IO_MAX_BYTES as u64 % CLUSTER_BLOCK_BYTES == 0);
const _: () = assert!(CLUSTER_FRAME_MAX_BYTES > CLUSTER_IO_MAX_BYTES);
const _: () = assert!(CLUSTER_FAIL_AFTER_MS > 2 * CLUSTER_GOSSIP_INTERVAL_MS);
const _: () = assert!(CLUSTER_RETRY_MS < CLUSTER_FAIL_AFTER_MS);
const _: () = assert!(CLUSTER_INFLIGHT_PER_CONN >= 1);
const _: () = assert!(CLUSTER_LOCAL_VOLUME_BYTES <= VOLUME_SIZE_MAX_BYTES);
const _: () = assert!(CLUSTER_SHARD_BYTES % CLUSTER_BLOCK_BYTES == 0);
const _: () = assert!(CLUSTER_SHARD_BYTES as usize <= CLUSTER_IO_MAX_BYTES);
const _: () = assert!(CLUSTER_OP_TIMEOUT_MS > 4 * CLUSTER_FAIL_AFTER_MS);
const _: () = assert!(CLUSTER_LOCAL_VOLUME_BYTES % SHARD_SIZE_DEFAULT_BYTES == 0);
// --- stager ---
/// Predictions buffered per lane between the drain or model thread and the
/// stager (the prefetch ring); more are dropped and counted.
pub const PREFETCH_RING_PREDICTIONS: usize = 1024;
/// De-duplication of the prefetch ring: slots of the direct-mapped table of
/// recently queued shards, and how long a queued shard is not queued again.
pub const PREFETCH_DEDUP_SLOTS: usize = 4096;
pub const PREFETCH_DEDUP_WINDOW_MS: u64 = 2_000;
/// Read notices (drain thread -> stager, for hit accounting) buffered;
/// more are dropped and counted.
pub const PREFETCH_READ_NOTICES: usize = 1 << 16;
/// Most trace events the drain thread hands on in one turn (and a model
/// step takes at most).
pub const PREFETCH_BATCH_EVENTS_MAX: usize = 4096;
/// Overload: when more than this many events wait in the trace rings, the
/// excess is skipped (not fed to the predictor) and counted.
pub const PREFETCH_BACKLOG_EVENTS_MAX: usize = 16_384;
/// The drain thread polls the trace rings (the queue threads never
/// signal it): after a turn that found less than a full batch it sleeps
/// this long, and after a turn that found nothing (and the predictor had no
/// background work) the longer idle sleep (microseconds). Wakeups, not
/// work, dominate its CPU share at moderate rates (measured in the VM:
/// about 10 % of a vCPU at one wakeup per millisecond under TCG).
pub const PREFETCH_POLL_INTERVAL_US: u64 = 4_000;
pub const PREFETCH_IDLE_SLEEP_US: u64 = 10_000;
/// With prefetching off and no recording, the thread only empties the
/// rings: it sleeps this long between turns (the rings hold that long at
/// up to about 1.3 M requests per second and queue).
pub const PREFETCH_DRAIN_ONLY_SLEEP_US: u64 = 50_000;
const _: () = assert!(
    DEVICE_TRACE_RING_EVENTS as u64 * 1_000_000 / PREFETCH_DRAIN_ONLY_SLEEP_US >= 1_000_000
);
const _: () = assert!(PREFETCH_DRAIN_ONLY_SLEEP_US >= PREFETCH_IDLE_SLEEP_US);
/// Events buffered between the drain thread and the model thread (the
/// hand-off, lock-free and bounded): what arrives while a step runs beyond
/// this is skipped and counted. The model thread keeps taking events while
/// it sleeps off its CPU debt, so this covers one step: two full batches
/// (e.g. a 0.4 s step under TCG at 20 k reads per second).
pub const PREFETCH_HANDOFF_EVENTS: usize = 2 * PREFETCH_BATCH_EVENTS_MAX;
/// The model thread with nothing gathered parks this long at most (the
/// drain thread unparks it once a step's minimum is handed off; the timeout
/// only bounds how late it notices background work), microseconds.
pub const PREFETCH_MODEL_PARK_US: u64 = 50_000;
const _: () = assert!(PREFETCH_MODEL_PARK_US >= PREFETCH_IDLE_SLEEP_US);
/// Background (online training) budget per idle turn (milliseconds).
pub const PREFETCH_BACKGROUND_BUDGET_MS: u64 = 20;
/// Default hot-tier budget of staged shards: this percent of the hot tier.
pub const STAGER_BUDGET_DEFAULT_PERCENT: u64 = 25;
/// A staged shard not read within this time counts as a miss in the
/// precision window (it may stay resident until evicted).
pub const STAGER_USEFUL_WITHIN_MS: u64 = 10_000;
/// Recent staging outcomes (read / not read) the throttle looks at.
pub const STAGER_PRECISION_WINDOW: usize = 64;
/// Outcomes needed in the window before the throttle acts.
pub const STAGER_PRECISION_WINDOW_MIN: usize = 16;
/// Below this window precision the stager halves its rate; at or above
/// the recover threshold it doubles it again (dimensionless, 0..=1).
pub const STAGER_PRECISION_MIN: f32 = 0.3;
pub const STAGER_PRECISION_RECOVER: f32 = 0.6;
/// Stager rate bounds (shards staged per second) and token bucket burst.
pub const STAGER_RATE_MAX_SHARDS_PER_S: u32 = 1024;
pub const STAGER_RATE_MIN_SHARDS_PER_S: u32 = 2;
pub const STAGER_BURST_SHARDS: u32 = 32;
/// Smallest interval between two throttle decisions (milliseconds).
pub const STAGER_THROTTLE_PERIOD_MS: u64 = 500;
/// Most events one live LSTM step takes: a backlog's newest are fed, the
/// older counted as skipped ([`crate::prefetch::Predictor::step_events_max`]).
/// A step costs one recurrent step per event of a stream, so this bounds a
/// step to ~30 ms on one core (~0.1 ms per event) and to seconds under TCG.
pub const LSTM_LIVE_STEP_EVENTS_MAX: usize = 256;
/// Fewest events the live inference thread gathers for an LSTM step
/// ([`crate::prefetch::Predictor::step_events_min`]): a step's fixed cost
/// (lookahead, candidates) is then spread over a batch, and its shadow
/// positions resolve (64 events: 0.39 s under TCG, 256: 1.1-1.8 s);
/// a slower trickle steps after `PREFETCH_STEP_WAIT_MAX_MS`.
pub const LSTM_LIVE_STEP_EVENTS_MIN: usize = 64;
const _: () = assert!(LSTM_LIVE_STEP_EVENTS_MIN >= 1);
const _: () = assert!(LSTM_LIVE_STEP_EVENTS_MIN <= LSTM_LIVE_STEP_EVENTS_MAX);
/// A predictor's first steps are charged at the full CPU share (as if
/// they had queued predictions): in them an expensive predictor measures
/// whether the workload is predictable ([`crate::prefetch::Predictor::promising`]),
/// instead of spending a minute of pacing at the idle share on the first
/// step of seconds under TCG.
pub const PREFETCH_LEARN_STEPS: u64 = 2;
/// Longest an event gathered for a predictor step waits for the batch to
/// fill before a smaller batch is stepped (milliseconds).
pub const PREFETCH_STEP_WAIT_MAX_MS: u64 = 1_000;
/// Most of the model thread's time (steps and training) that
/// online training may take (percent).
pub const PREFETCH_TRAIN_SHARE_PERCENT: u32 = 50;
const _: () = assert!(PREFETCH_TRAIN_SHARE_PERCENT <= 100);
/// Synthetic events a throwaway copy of an expensive predictor is stepped
/// on before the device goes live (libtorch's lazy initialisation).
pub const PREFETCH_WARM_UP_EVENTS: usize = 32;
const _: () = assert!(PREFETCH_WARM_UP_EVENTS >= 2);
/// Nice value of the drain and model threads (and of libtorch's threads the
/// model thread starts):
/// the lowest normal priority, below the queue threads and the application.
pub const PREFETCH_THREAD_NICE: i32 = 19;
/// Demand promotion ([`crate::prefetch::demand`]): a cold shard read this
/// many times within `PREFETCH_PROMOTE_WINDOW_MS` is staged by the stager
/// (`add --prefetch-promote`; 0 = off, 1 = on the first cold read).
pub const PREFETCH_PROMOTE_READS_DEFAULT: u32 = 2;
pub const PREFETCH_PROMOTE_READS_MAX: u32 = 64;
pub const PREFETCH_PROMOTE_WINDOW_MS: u64 = 10_000;
/// Cold shards whose reads the promoter counts at once (least recently read
/// forgotten first).
pub const PREFETCH_PROMOTE_TRACKED_SHARDS: usize = 1 << 16;
/// Trace recording over the control socket: most events per recording, and
/// events buffered between the inference thread and the recording client.
pub const TRACE_RECORD_EVENTS_MAX: u64 = 10_000_000;
pub const TRACE_RECORD_BUFFER_EVENTS: usize = 1 << 16;
/// Longest recording (seconds).
pub const TRACE_RECORD_SECONDS_MAX: u64 = 86_400;
const _: () = assert!(PREFETCH_DEDUP_SLOTS.is_power_of_two());
const _: () = assert!(PREFETCH_BATCH_EVENTS_MAX <= PREFETCH_BACKLOG_EVENTS_MAX);
const _: () = assert!(PREFETCH_BACKLOG_EVENTS_MAX <= DEVICE_TRACE_RING_EVENTS);
// One sleep's worth of events at a million requests per second (one per
// microsecond) fits a queue's trace ring.
const _: () = assert!(PREFETCH_POLL_INTERVAL_US <= PREFETCH_IDLE_SLEEP_US);
const _: () = assert!(PREFETCH_IDLE_SLEEP_US <= DEVICE_TRACE_RING_EVENTS as u64);
const _: () = assert!(STAGER_BUDGET_DEFAULT_PERCENT > 0 && STAGER_BUDGET_DEFAULT_PERCENT <= 100);
const _: () = assert!(STAGER_PRECISION_WINDOW_MIN <= STAGER_PRECISION_WINDOW);
const _: () = assert!(PREFETCH_PROMOTE_READS_DEFAULT <= PREFETCH_PROMOTE_READS_MAX);
const _: () = assert!(PREFETCH_PROMOTE_TRACKED_SHARDS >= 1);
const _: () = assert!(STAGER_PRECISION_MIN < STAGER_PRECISION_RECOVER);
const _: () = assert!(STAGER_PRECISION_RECOVER <= 1.0);
const _: () = assert!(STAGER_RATE_MIN_SHARDS_PER_S >= 1);
const _: () = assert!(STAGER_RATE_MIN_SHARDS_PER_S <= STAGER_RATE_MAX_SHARDS_PER_S);
const _: () = assert!(STAGER_BURST_SHARDS >= 1);
/// The stager commits (making its `Map` records durable, so the extents it
/// released return to the allocators) at most this often after moving data.
pub const STAGER_COMMIT_INTERVAL_MS: u64 = 2_000;
/// The stager parks when it has no prediction; the drain or model thread wakes it
/// when it queues one, else it wakes after this long to account reads,
/// age its shards and publish statistics (milliseconds).
pub const STAGER_IDLE_PARK_MS: u64 = 50;

// --- lstm2 ---
/// Hot tier of the trace_eval bench, in percent of each trace's read working
/// set (distinct shards read): small enough that demand caching alone cannot
/// hold a loop over the working set.
pub const BENCH_HOT_TIER_WORKING_SET_PERCENT: u64 = 10;
const _: () =
    assert!(BENCH_HOT_TIER_WORKING_SET_PERCENT >= 1 && BENCH_HOT_TIER_WORKING_SET_PERCENT < 100);
/// LSTM precision gate: a stream's predictions are staged only while the
/// estimated precision of its recent predictions is at least this (0: never gated).
pub const LSTM_PRECISION_GATE_DEFAULT: f32 = 0.5;
/// A prediction counts as correct when its stream reads the shard before
/// `PrefetchConfig::stage_capacity_shards` shards were touched in the hot
/// tier since (about when LRU would evict it; see the LSTM predictor), or
/// within this many events per shard of depth when the capacity is unknown.
pub const LSTM_PRECISION_DEADLINE_EVENTS_PER_DEPTH: u64 = 16;
/// The precision estimate is a moving average over about this many resolved predictions.
pub const LSTM_PRECISION_AVERAGE_PREDICTIONS: u32 = 32;
/// Predictions tracked at once per stream; candidates beyond are not
/// tracked (calibration learns from a sample) until some resolve.
pub const LSTM_PRECISION_TRACKED_MAX: usize = 256;
/// Confidence calibration (with the precision gate on): predictions are
/// bucketed by steps along the predicted path (0: direct, the last bucket
/// open-ended), by raw confidence (equal-width buckets of 0..1) and by the
/// length of the run the stream's request continued (earlier requests of
/// the run, each on its last shard or the next, re-reads of a shard
/// included; 0: the request started one; the last bucket open-ended; see
/// the LSTM predictor); each bucket's measured precision is a moving average over about
/// `LSTM_CALIBRATION_AVERAGE_PREDICTIONS` resolved predictions.
pub const LSTM_CALIBRATION_STEP_BUCKETS: usize = 8;
pub const LSTM_CALIBRATION_CONFIDENCE_BUCKETS: usize = 10;
pub const LSTM_CALIBRATION_RUN_BUCKETS: usize = 4;
pub const LSTM_CALIBRATION_AVERAGE_PREDICTIONS: u32 = 64;
/// The LSTM predictor's run source names this many shards after the run a
/// region stream's read continued, each judged by the run acceptor.
pub const LSTM_RUN_CANDIDATES: u64 = 2;
const _: () = assert!(LSTM_RUN_CANDIDATES >= 1);
/// A run candidate can be staged when the acceptor gives it at least this
/// probability of being read in time, and the run source's calibration says
/// staging every candidate at least as likely is precise enough (see the
/// LSTM predictor). Session 13, umass websearch at 64 KiB shards (before the
/// provisional first labels, see `LSTM_ACCEPT_BOOTSTRAP_HORIZON`): 0.4 staged
/// 7 583 shards at 55.1 % precision, 0.35 staged 8 749 at 51.7 % (hit ratio
/// 55.0 -> 55.8 %); 0.3 staged more but later (timeliness 92 -> 84 %).
pub const LSTM_RUN_ACCEPT_MIN: f64 = 0.35;
const _: () = assert!(LSTM_RUN_ACCEPT_MIN > 0.0 && LSTM_RUN_ACCEPT_MIN < 1.0);
/// The run source's calibration (resolved candidates per bin of the
/// acceptor's probability) is a moving window of about this many per bin.
pub const LSTM_RUN_OUTCOMES_PER_BIN: u32 = 1_024;
/// Bins of the acceptor's probability in the run source's calibration.
pub const LSTM_RUN_CALIBRATION_BINS: usize = 20;
const _: () = assert!(LSTM_RUN_CALIBRATION_BINS >= 2);
/// Run judgments awaiting their label, per stream (beyond, the oldest is
/// dropped unlabelled).
pub const LSTM_RUN_JUDGED_MAX: usize = 1_024;
/// The run acceptor's boosted trees (log loss): trees per fit, their depth
/// and learning rate.
pub const LSTM_ACCEPT_TREES: usize = 100;
pub const LSTM_ACCEPT_TREE_DEPTH: usize = 6;
pub const LSTM_ACCEPT_LEARNING_RATE: f32 = 0.1;
/// Labelled samples the acceptor keeps (the newest), fits over all of them:
/// its first once this many came, then once per `LSTM_ACCEPT_REFIT_SAMPLES`
/// new ones; a fit is installed once `LSTM_ACCEPT_INSTALL_SAMPLES` more came
/// after it started (on its worker thread: 0.5 s on 46 000 samples on the
/// development machine).
pub const LSTM_ACCEPT_SAMPLES_MAX: usize = 65_536;
pub const LSTM_ACCEPT_FIRST_FIT_SAMPLES: u32 = 512;
pub const LSTM_ACCEPT_REFIT_SAMPLES: u32 = 2_048;
pub const LSTM_ACCEPT_INSTALL_SAMPLES: u32 = 256;
/// Until the acceptor's first fit, a run judgment is labelled read in time
/// only if read within this many ticks of the expiry clock (shards touched
/// where the hot tier's size is known; see the LSTM predictor).
pub const LSTM_ACCEPT_BOOTSTRAP_HORIZON: u64 = 256;
const _: () = assert!(
    LSTM_ACCEPT_TREES >= 1
        && LSTM_ACCEPT_TREE_DEPTH >= 1
        && LSTM_ACCEPT_FIRST_FIT_SAMPLES as usize <= LSTM_ACCEPT_SAMPLES_MAX
        && LSTM_ACCEPT_INSTALL_SAMPLES <= LSTM_ACCEPT_REFIT_SAMPLES
        && LSTM_ACCEPT_REFIT_SAMPLES >= 1
);
/// A bucket's precision is trusted (its candidates emitted) once this many
/// of its candidates resolved.
pub const LSTM_CALIBRATION_MIN_RESOLVED: u32 = 8;
/// With calibration, candidates at or above this raw confidence are tracked
/// (and emitted when their bucket's measured precision passes).
pub const LSTM_TRACK_CONFIDENCE_MIN: f32 = 0.05;
/// Most earlier positions per stream per LSTM step whose candidates are
/// computed and tracked in shadow (besides the last, which is emitted): a
/// batch of many events of a stream then calibrates about as fast as as many
/// steps of one event (a bucket needs `LSTM_CALIBRATION_MIN_RESOLVED`
/// resolved candidates to emit at all) at a bounded cost per step.
pub const LSTM_SHADOW_POSITIONS_MAX: usize = 16;
const _: () = assert!(LSTM_SHADOW_POSITIONS_MAX >= 1);
const _: () = assert!(LSTM_PRECISION_GATE_DEFAULT >= 0.0 && LSTM_PRECISION_GATE_DEFAULT <= 1.0);
const _: () = assert!(
    LSTM_CALIBRATION_STEP_BUCKETS >= 1
        && LSTM_CALIBRATION_CONFIDENCE_BUCKETS >= 1
        && LSTM_CALIBRATION_RUN_BUCKETS >= 1
        && LSTM_CALIBRATION_AVERAGE_PREDICTIONS >= 1
        && LSTM_CALIBRATION_MIN_RESOLVED >= 1
);
const _: () = assert!(LSTM_TRACK_CONFIDENCE_MIN > 0.0 && LSTM_TRACK_CONFIDENCE_MIN < 1.0);
const _: () = assert!(
    LSTM_PRECISION_DEADLINE_EVENTS_PER_DEPTH >= 1
        && LSTM_PRECISION_AVERAGE_PREDICTIONS >= 1
        && LSTM_PRECISION_TRACKED_MAX >= 1
);

// --- rebal ---
/// Long-run rate at which rebalancing copies shards to new homes (bytes per second).
pub const CLUSTER_REBALANCE_BYTES_PER_SEC: u64 = 64 << 20;
/// Shard moves in flight at once while rebalancing.
pub const CLUSTER_REBALANCE_MAX_MOVES: usize = 4;
/// A storage node dead this long is out: placement stops counting it and
/// rebalancing moves its homes elsewhere (milliseconds; until then its
/// shards are served by the other copies and re-replication).
pub const CLUSTER_OUT_AFTER_MS: u64 = 60_000;
/// The override-map key (shard number) of a volume's placement basis: the
/// member ids homes are computed over.
pub const CLUSTER_BASIS_SHARD: u64 = u64::MAX;
const _: () = assert!(CLUSTER_REBALANCE_BYTES_PER_SEC >= CLUSTER_SHARD_BYTES);
const _: () = assert!(CLUSTER_REBALANCE_MAX_MOVES >= 1);
const _: () = assert!(CLUSTER_OUT_AFTER_MS > CLUSTER_FAIL_AFTER_MS);
const _: () = assert!(CLUSTER_LOCAL_VOLUME_BYTES / CLUSTER_SHARD_BYTES < CLUSTER_BASIS_SHARD);

// --- prefetch CPU pacing ---
/// Share of one core the prefetch model thread (predictor steps and
/// background training) may use while its predictions are being queued
/// (percent).
pub const PREFETCH_CPU_SHARE_PERCENT: u32 = 25;
/// Its share while it queued nothing for `PREFETCH_PRODUCTIVE_WINDOW_MS`
/// (an unpredictable workload): it keeps learning, slowly (percent).
pub const PREFETCH_CPU_SHARE_IDLE_PERCENT: u32 = 3;
/// How long one queued prediction keeps the thread at the full share (milliseconds).
pub const PREFETCH_PRODUCTIVE_WINDOW_MS: u64 = 2_000;
/// Longest pacing sleep, so the thread stays responsive to a changed
/// workload and to stopping (milliseconds).
pub const PREFETCH_PACE_SLEEP_MAX_MS: u64 = 100;
/// Spare CPU: the idle CPU time of the machine (percent of one core,
/// summed over its CPUs, plus what the model thread itself used) beyond
/// this reserve is the model thread's share when that is more than the
/// above, up to one core: a machine with a core to spare lets the model
/// keep up with every event, a busy one keeps it at its share (percent of
/// one core).
pub const PREFETCH_CPU_SPARE_RESERVE_PERCENT: u32 = 100;
/// How often the machine's idle CPU is sampled (`/proc/stat`; milliseconds).
pub const PREFETCH_CPU_SAMPLE_MS: u64 = 500;
const _: () = assert!(
    0 < PREFETCH_CPU_SHARE_IDLE_PERCENT
        && PREFETCH_CPU_SHARE_IDLE_PERCENT <= PREFETCH_CPU_SHARE_PERCENT
        && PREFETCH_CPU_SHARE_PERCENT <= 100
);
const _: () = assert!(PREFETCH_CPU_SPARE_RESERVE_PERCENT >= 100 && PREFETCH_CPU_SAMPLE_MS > 0);

// --- part ---
/// How often an attacher scans its volume's members for orphan copies
/// (copies outside their shard's set) even when nothing triggered a scan
/// (milliseconds).
pub const CLUSTER_ORPHAN_SCAN_INTERVAL_MS: u64 = 60_000;
/// After a scan that kept a copy outside its set (its set short, down or
/// older), the next scan comes this soon, the wait doubling while copies
/// are kept (milliseconds).
pub const CLUSTER_ORPHAN_RESCAN_MIN_MS: u64 = 1_000;
/// Longest a node announcing it leaves (SIGTERM) waits for its copies to be
/// moved off before it exits anyway, reporting what it still holds
/// (milliseconds).
pub const CLUSTER_LEAVE_MAX_MS: u64 = 600_000;
/// How often a leaving node checks whether it is still needed (milliseconds).
pub const CLUSTER_LEAVE_CHECK_MS: u64 = 200;
const _: () = assert!(CLUSTER_ORPHAN_SCAN_INTERVAL_MS > CLUSTER_FAIL_AFTER_MS);
const _: () = assert!(CLUSTER_ORPHAN_RESCAN_MIN_MS <= CLUSTER_ORPHAN_SCAN_INTERVAL_MS);
const _: () = assert!(CLUSTER_LEAVE_CHECK_MS < CLUSTER_LEAVE_MAX_MS);
// --- cluster volumes served as ublk devices ---
/// Requests one queue thread of a cluster device may have handed to the
/// network thread and not yet taken back: the capacity of its request ring.
/// A request that finds it full waits in its tag slot (see `device::handoff`).
pub const DEVICE_CLUSTER_RING_REQUESTS: usize = 64;
/// While no request waits, the network thread lets re-replication and
/// rebalancing run this long between looks at the request rings; under load
/// it still ticks the cluster client this often (milliseconds).
pub const DEVICE_CLUSTER_IDLE_MS: u64 = 100;
/// How long `add` of a cluster volume waits for the storage nodes it
/// expects (milliseconds).
pub const DEVICE_CLUSTER_WAIT_MS: u64 = 15_000;
/// How long the network thread keeps retrying a request that finds no live
/// replica before failing it with EIO (milliseconds), and the pause before
/// it submits one again (milliseconds).
pub const DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS: u64 = 30_000;
pub const DEVICE_CLUSTER_RETRY_MS: u64 = 200;
const _: () = assert!(DEVICE_CLUSTER_RING_REQUESTS >= 1);
const _: () = assert!(DEVICE_CLUSTER_RETRY_MS < DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS);
const _: () = assert!(DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS > 2 * CLUSTER_FAIL_AFTER_MS);
const _: () = assert!(DEVICE_CLUSTER_IDLE_MS >= CLUSTER_CLIENT_TICK_MS);
const _: () = assert!(DEVICE_IO_BUF_BYTES as u64 % CLUSTER_BLOCK_BYTES == 0);
/// Remote staging (`add --seed ... --stage-tier PATH --prefetch ...`): shards
/// the network thread fetches for the stage tier at once (each one attacher
/// operation of the `CLUSTER_ATTACHER_MAX_OPS`, so demand I/O keeps the rest).
pub const DEVICE_STAGE_FETCHES_MAX: usize = 2;
/// A staged copy serves reads only while a remote read that started at
/// most this long ago succeeded (a quorum of replicas had seen no newer
/// attacher); otherwise the read goes to the replicas and renews it
/// (milliseconds). Bounds how long a fenced attacher that has not heard of
/// it yet can serve its copies.
pub const DEVICE_STAGE_LEASE_MS: u64 = 1_000;
const _: () = assert!(DEVICE_STAGE_FETCHES_MAX >= 1);
const _: () = assert!(DEVICE_STAGE_FETCHES_MAX < CLUSTER_ATTACHER_MAX_OPS);
const _: () = assert!(DEVICE_STAGE_LEASE_MS > CLUSTER_CLIENT_TICK_MS);
/// A new attacher reports `Attached` (and takes operations) this long after
/// its fence and write-back reached a quorum (milliseconds): a cut-off older
/// attacher's staging lease (`DEVICE_STAGE_LEASE_MS`, counted from before a
/// check its replicas answered, so before they were fenced) runs out first,
/// with a quarter to spare for clock rate differences. So no staged copy is
/// served after the new attacher acknowledged a write.
pub const CLUSTER_ATTACH_GRACE_MS: u64 = DEVICE_STAGE_LEASE_MS + DEVICE_STAGE_LEASE_MS / 4;
const _: () = assert!(CLUSTER_ATTACH_GRACE_MS > DEVICE_STAGE_LEASE_MS);
