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
