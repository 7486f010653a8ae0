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
/// Highest latency a histogram tracks (nanoseconds); slower requests count as this.
pub const DEVICE_LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Significant decimal digits of the latency histograms.
pub const DEVICE_LATENCY_SIGFIG: u8 = 3;
/// `--poll adaptive`: spin this long after the last completion before sleeping (microseconds).
pub const DEVICE_ADAPTIVE_SPIN_US: u64 = 50;
/// An idle queue thread wakes up this often to notice a stopping device (seconds).
pub const DEVICE_IDLE_WAKE_S: u64 = 1;
/// How long `shardblk add` waits for the daemon to report the device live (seconds).
pub const DEVICE_START_TIMEOUT_S: u64 = 60;
/// How long `shardblk del` waits for the daemon to exit (seconds).
pub const DEVICE_STOP_TIMEOUT_S: u64 = 30;
/// Largest reply or request accepted on the control socket (bytes).
pub const DEVICE_CONTROL_MSG_MAX_BYTES: usize = 1 << 20;
const _: () = assert!(DEVICE_IO_BUF_BYTES as u64 % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(DEVICE_DEPTH_DEFAULT_REQUESTS <= DEVICE_DEPTH_MAX_REQUESTS);
const _: () = assert!((DEVICE_DEPTH_MAX_REQUESTS as u32) < TABLE_SLOT_WRITERS_MAX);
const _: () = assert!(DEVICE_DISCARD_MAX_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(DEVICE_DISCARD_MAX_BYTES >> 9 <= u32::MAX as u64);
const _: () = assert!(DEVICE_TRACE_RING_EVENTS.is_power_of_two());

// --- stager ---
/// Predictions buffered between the inference thread and the stager (the
/// prefetch ring); more are dropped and counted.
pub const PREFETCH_RING_PREDICTIONS: usize = 1024;
/// De-duplication of the prefetch ring: slots of the direct-mapped table of
/// recently queued shards, and how long a queued shard is not queued again.
pub const PREFETCH_DEDUP_SLOTS: usize = 4096;
pub const PREFETCH_DEDUP_WINDOW_MS: u64 = 2_000;
/// Read notices (inference thread -> stager, for hit accounting) buffered;
/// more are dropped and counted.
pub const PREFETCH_READ_NOTICES: usize = 1 << 16;
/// Most trace events the inference thread feeds the predictor in one batch.
pub const PREFETCH_BATCH_EVENTS_MAX: usize = 4096;
/// Overload: when more than this many events wait in the trace rings, the
/// excess is skipped (not fed to the predictor) and counted.
pub const PREFETCH_BACKLOG_EVENTS_MAX: usize = 16_384;
/// The inference thread polls the trace rings (the queue threads never
/// signal it): after a turn that found less than a full batch it sleeps
/// this long, and after a turn that found nothing (and the predictor had no
/// background work) the longer idle sleep (microseconds). Wakeups, not
/// work, dominate its CPU share at moderate rates (measured in the VM:
/// about 10 % of a vCPU at one wakeup per millisecond under TCG).
pub const PREFETCH_POLL_INTERVAL_US: u64 = 4_000;
pub const PREFETCH_IDLE_SLEEP_US: u64 = 10_000;
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
const _: () = assert!(STAGER_PRECISION_MIN < STAGER_PRECISION_RECOVER);
const _: () = assert!(STAGER_PRECISION_RECOVER <= 1.0);
const _: () = assert!(STAGER_RATE_MIN_SHARDS_PER_S >= 1);
const _: () = assert!(STAGER_RATE_MIN_SHARDS_PER_S <= STAGER_RATE_MAX_SHARDS_PER_S);
const _: () = assert!(STAGER_BURST_SHARDS >= 1);
/// The stager commits (making its `Map` records durable, so the extents it
/// released return to the allocators) at most this often after moving data.
pub const STAGER_COMMIT_INTERVAL_MS: u64 = 2_000;
/// The stager parks when it has no prediction; the inference thread wakes it
/// when it queues one, else it wakes after this long to account reads,
/// age its shards and publish statistics (milliseconds).
pub const STAGER_IDLE_PARK_MS: u64 = 50;
