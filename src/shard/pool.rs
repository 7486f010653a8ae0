//! The pool: tier devices, their allocators, the metadata log and the
//! volumes, tied together.
//!
//! Contract:
//! - [`Pool::init`] checks every device first (devcheck, open `O_DIRECT`,
//!   existing superblock unless `force`) and writes nothing unless all pass.
//!   It then writes a superblock on each device and formats the metadata
//!   region on the first one (tier 0). Any member device then describes the
//!   whole pool, and [`Pool::open`] finds the others by their recorded paths,
//!   verifying each one's pool and device identity.
//! - [`Pool::open_on`] / [`Pool::format_on`] do the same over already opened
//!   devices (fakes in tests), so the whole engine runs on `MemDev`/`FaultDev`.
//! - Layout per device: reserved head (superblocks), then on device 0 the
//!   metadata region, then the extent area in units (`kernel-notes/engine.md`).
//!   Tier `t` is device `t`; engines address it as `DevIndex(t)`.
//! - Volume administration (create, resize, delete, policy) appends records
//!   to the metadata log and syncs it before returning: it is durable when
//!   the call returns.
//! - [`Pool::commit`] is the durability barrier used by FLUSH/FUA and by
//!   migrations: first every data device is synced, then the metadata log,
//!   so a durable mapping never points at data that is not durable.

use crate::constants::{
    BLOCK_SIZE_BYTES, DEVICE_RESERVED_HEAD_BYTES, META_CHECKPOINT_BYTES_PER_UNIT,
    META_CHECKPOINT_SLOT_MIN_BYTES, META_LOG_SIZE_BYTES, NAME_LEN_MAX_BYTES, PATH_HINT_MAX_BYTES,
    POOL_DEVICES_MAX, SHARD_SIZE_MAX_BYTES, SHARD_SIZE_MIN_BYTES, TIERS_MAX, UNIT_SIZE_BYTES,
    VOLUMES_MAX, VOLUME_SIZE_MAX_BYTES,
};
use crate::io::file::FileDev;
use crate::io::sync_engine::SyncEngine;
use crate::io::uring::UringEngine;
use crate::io::{BlockDev, IoEngine, IoError};
use crate::shard::allocator::BuddyAllocator;
use crate::shard::devcheck::{check_candidate, DevCheckError};
use crate::shard::meta::{
    read_superblock, write_superblocks, DeviceEntry, Lsn, MetaError, MetaLog, MetaRegion, Record,
    Superblock, SuperblockError,
};
use crate::shard::policy::{PolicyError, TierPolicy};
use crate::volume::handle::{Volume, VolumeError, VolumeShared};
use crossbeam_epoch::{self as epoch, Guard};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Device(#[from] DevCheckError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("superblock: {0}")]
    Superblock(#[from] SuperblockError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("{path}: already a member of pool {pool:032x} (use --force to overwrite)")]
    AlreadyInPool { path: String, pool: u128 },
    #[error("{path}: not a shardblk pool device (no valid superblock)")]
    NotAPool { path: String },
    #[error("{path}: expected device {index} of pool {pool:032x}, found {found}")]
    WrongMember {
        path: String,
        index: usize,
        pool: u128,
        found: String,
    },
    #[error("a pool needs 1 to {max} tiers, got {got}")]
    TierCount { got: usize, max: usize },
    #[error("tier name '{0}' is used twice or is invalid (1..=64 characters of [A-Za-z0-9_-])")]
    TierName(String),
    #[error(
        "{path}: path longer than {PATH_HINT_MAX_BYTES} bytes; use a shorter path or a symlink"
    )]
    PathTooLong { path: String },
    #[error("{path} is given twice")]
    DuplicateDevice { path: String },
    #[error(
        "{path}: too small to hold the metadata region ({need} bytes needed, {size} available)"
    )]
    MetaDeviceTooSmall { path: String, need: u64, size: u64 },
    #[error("volume '{0}' already exists")]
    VolumeExists(String),
    #[error("no volume named '{0}'")]
    NoVolume(String),
    #[error("invalid volume name '{0}' (1..=64 characters of [A-Za-z0-9_.-])")]
    VolumeName(String),
    #[error("volume size {size} must be a positive multiple of {BLOCK_SIZE_BYTES} bytes up to {VOLUME_SIZE_MAX_BYTES}")]
    VolumeSize { size: u64 },
    #[error("shard size {0} must be a power of two from {SHARD_SIZE_MIN_BYTES} to {SHARD_SIZE_MAX_BYTES} bytes")]
    ShardSize(u64),
    #[error("too many volumes (at most {VOLUMES_MAX})")]
    TooManyVolumes,
    #[error("shrinking '{name}' to {size} bytes would drop {mapped} mapped bytes (use --force to discard them)")]
    ShrinkLosesData {
        name: String,
        size: u64,
        mapped: u64,
    },
    #[error("pool metadata is inconsistent: {0}")]
    Inconsistent(String),
    #[error("volume '{0}' is in use")]
    VolumeBusy(String),
}

/// Why a commit failed: the data devices or the metadata log.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
}

impl From<CommitError> for PoolError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Io(e) => PoolError::Io(e),
            CommitError::Meta(e) => PoolError::Meta(e),
        }
    }
}

/// A tier given to `pool init`.
#[derive(Debug, Clone)]
pub struct TierSpec {
    pub name: String,
    pub path: PathBuf,
}

impl std::str::FromStr for TierSpec {
    type Err = String;
    /// `NAME=PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, p) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}': expected NAME=PATH, e.g. hot=/dev/nvme0n1"))?;
        Ok(TierSpec {
            name: n.to_string(),
            path: PathBuf::from(p),
        })
    }
}

/// One tier of an open pool.
pub struct Tier {
    pub name: String,
    pub dev: Arc<dyn BlockDev>,
    /// Byte offset of unit 0 on the device.
    pub data_start: u64,
    pub n_units: u64,
    pub alloc: Mutex<BuddyAllocator>,
}

impl Tier {
    pub fn used_units(&self) -> u64 {
        self.alloc.lock().expect("allocator lock").used_units()
    }
    /// Percent of the tier's units in use (0..=100).
    pub fn used_percent(&self) -> u8 {
        (self.used_units() * 100 / self.n_units.max(1)) as u8
    }
}

pub(crate) struct PoolShared {
    pub uuid: u128,
    pub tiers: Vec<Tier>,
    pub meta: MetaLog,
    pub volumes: RwLock<BTreeMap<u32, Arc<VolumeShared>>>,
    /// Held shared by every path that writes data and then appends the
    /// record that makes it reachable (first-write maps, migrations), and
    /// exclusively by `commit` from the data-device sync to the end of the
    /// metadata sync: no record becomes durable before its data.
    pub commit_barrier: RwLock<()>,
    /// Extents released by a record not yet durable: `(lsn, tier, first, n)`.
    /// They return to the allocator after the commit that makes `lsn` durable
    /// (and after every reader that could see them has unpinned).
    pub pending_frees: Mutex<Vec<(Lsn, usize, u64, u64)>>,
    /// Units released but not yet back in an allocator (deferred or pending).
    pub frees_outstanding: std::sync::atomic::AtomicU64,
}

/// An open pool. Cheap to clone; every clone is the same pool.
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: Arc<PoolShared>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierStatus {
    pub index: usize,
    pub name: String,
    pub device: String,
    pub size_bytes: u64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub uuid: String,
    pub tiers: Vec<TierStatus>,
    pub volumes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub id: u32,
    pub name: String,
    pub size_bytes: u64,
    pub shard_size_bytes: u64,
    pub policy: String,
    /// Mapped bytes per tier, hottest first: `(tier name, bytes)`.
    pub mapped_bytes: Vec<(String, u64)>,
}

/// Pins per commit to let the epoch advance: a deferred function runs two
/// epochs after it was deferred, once no reader from before is pinned.
const EPOCH_ADVANCE_TRIES: usize = 4;

fn valid_name(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= NAME_LEN_MAX_BYTES
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

/// Where the metadata region goes on device 0 and where each device's data starts.
fn layout(sizes: &[u64]) -> (MetaRegion, Vec<u64>) {
    let total_units: u64 = sizes.iter().map(|s| s / UNIT_SIZE_BYTES).sum();
    let slot = (total_units * META_CHECKPOINT_BYTES_PER_UNIT)
        .max(META_CHECKPOINT_SLOT_MIN_BYTES)
        .next_multiple_of(BLOCK_SIZE_BYTES);
    let region = MetaRegion {
        offset: DEVICE_RESERVED_HEAD_BYTES,
        checkpoint_slot_bytes: slot,
        log_bytes: META_LOG_SIZE_BYTES,
    };
    let meta_end = region.offset + 2 * slot + META_LOG_SIZE_BYTES;
    let starts = (0..sizes.len())
        .map(|i| {
            if i == 0 {
                meta_end.next_multiple_of(UNIT_SIZE_BYTES)
            } else {
                DEVICE_RESERVED_HEAD_BYTES
            }
        })
        .collect();
    (region, starts)
}

fn random_u128() -> u128 {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    u128::from_le_bytes(b)
}

impl Pool {
    /// Create a pool on the given tiers (tier order = policy order, first = hot).
    pub fn init(tiers: &[TierSpec], force: bool) -> Result<Pool, PoolError> {
        if tiers.is_empty() || tiers.len() > TIERS_MAX.min(POOL_DEVICES_MAX) {
            return Err(PoolError::TierCount {
                got: tiers.len(),
                max: TIERS_MAX,
            });
        }
        let mut devs = Vec::new();
        for (i, t) in tiers.iter().enumerate() {
            if tiers[..i].iter().any(|o| o.path == t.path) {
                return Err(PoolError::DuplicateDevice {
                    path: t.path.display().to_string(),
                });
            }
            check_candidate(&t.path, None)?;
            let dev = FileDev::open(&t.path)?;
            dev.lock_exclusive()?;
            check_candidate(&t.path, Some(dev.size_bytes()))?;
            let dev: Arc<dyn BlockDev> = Arc::new(dev);
            devs.push((t.name.clone(), t.path.display().to_string(), dev));
        }
        if !force {
            for (_, path, dev) in &devs {
                if let Ok(r) = read_superblock(dev.as_ref()) {
                    return Err(PoolError::AlreadyInPool {
                        path: path.clone(),
                        pool: r.superblock.pool_uuid,
                    });
                }
            }
        }
        Self::format_on(devs)
    }

    /// Create a pool over opened devices: `(tier name, path hint, device)`.
    pub fn format_on(devs: Vec<(String, String, Arc<dyn BlockDev>)>) -> Result<Pool, PoolError> {
        if devs.is_empty() || devs.len() > TIERS_MAX {
            return Err(PoolError::TierCount {
                got: devs.len(),
                max: TIERS_MAX,
            });
        }
        for (i, (name, path, _)) in devs.iter().enumerate() {
            if !valid_name(name, &[]) || devs[..i].iter().any(|d| &d.0 == name) {
                return Err(PoolError::TierName(name.clone()));
            }
            if path.len() > PATH_HINT_MAX_BYTES {
                return Err(PoolError::PathTooLong { path: path.clone() });
            }
        }
        let sizes: Vec<u64> = devs.iter().map(|d| d.2.size_bytes()).collect();
        let (region, starts) = layout(&sizes);
        if starts[0] + UNIT_SIZE_BYTES > sizes[0] {
            return Err(PoolError::MetaDeviceTooSmall {
                path: devs[0].1.clone(),
                need: starts[0] + UNIT_SIZE_BYTES,
                size: sizes[0],
            });
        }
        let uuid = random_u128();
        let entries: Vec<DeviceEntry> = devs
            .iter()
            .zip(&sizes)
            .enumerate()
            .map(|(i, ((name, path, _), &size))| DeviceEntry {
                uuid: random_u128(),
                tier_index: i as u8,
                tier_name: name.clone(),
                size_bytes: size,
                path_hint: path.clone(),
            })
            .collect();
        // Metadata first, superblocks last: a device only claims membership
        // once the pool it names can be opened.
        let meta = MetaLog::format(devs[0].2.clone(), region)?;
        drop(meta);
        for (i, (_, _, dev)) in devs.iter().enumerate() {
            let sb = Superblock {
                pool_uuid: uuid,
                device_index: i as u16,
                devices: entries.clone(),
                meta_region: (i == 0).then_some(region),
                data_start_bytes: starts[i],
            };
            write_superblocks(dev.as_ref(), &sb)?;
            dev.sync()?;
        }
        Self::open_on(devs.into_iter().map(|d| d.2).collect())
    }

    /// Open the pool that the device at `any_member` belongs to.
    pub fn open(any_member: &Path) -> Result<Pool, PoolError> {
        let first = FileDev::open(any_member)?;
        first.lock_exclusive()?;
        let sb = read_superblock(&first)
            .map_err(|_| PoolError::NotAPool {
                path: any_member.display().to_string(),
            })?
            .superblock;
        // The member given is used as it is (already locked); the others are
        // found at their recorded paths, locked, and verified by open_on.
        let mut first = Some(first);
        let mut devs: Vec<Arc<dyn BlockDev>> = Vec::new();
        for (i, e) in sb.devices.iter().enumerate() {
            let dev = match first.take_if(|_| i == sb.device_index as usize) {
                Some(f) => f,
                None => {
                    let d = FileDev::open(Path::new(&e.path_hint))?;
                    d.lock_exclusive()?;
                    d
                }
            };
            devs.push(Arc::new(dev) as Arc<dyn BlockDev>);
        }
        Self::open_on(devs)
    }

    /// Open a pool over opened devices, in device-index order.
    pub fn open_on(devs: Vec<Arc<dyn BlockDev>>) -> Result<Pool, PoolError> {
        let read = |dev: &Arc<dyn BlockDev>| -> Result<Superblock, PoolError> {
            let r = read_superblock(dev.as_ref()).map_err(|_| PoolError::NotAPool {
                path: dev.name().into(),
            })?;
            if let Some((off, e)) = &r.bad_copy {
                tracing::warn!(
                    "{}: superblock copy at {off} is bad ({e}); using the other",
                    dev.name()
                );
            }
            Ok(r.superblock)
        };
        let sb0 = read(&devs[0])?;
        if sb0.devices.len() != devs.len() {
            return Err(PoolError::WrongMember {
                path: devs[0].name().into(),
                index: 0,
                pool: sb0.pool_uuid,
                found: format!(
                    "a pool of {} devices, {} given",
                    sb0.devices.len(),
                    devs.len()
                ),
            });
        }
        let mut starts = Vec::new();
        for (i, dev) in devs.iter().enumerate() {
            let sb = read(dev)?;
            starts.push(sb.data_start_bytes);
            if sb.pool_uuid != sb0.pool_uuid || sb.device_index as usize != i {
                return Err(PoolError::WrongMember {
                    path: dev.name().into(),
                    index: i,
                    pool: sb0.pool_uuid,
                    found: format!("device {} of pool {:032x}", sb.device_index, sb.pool_uuid),
                });
            }
        }
        let region = sb0.meta_region.ok_or_else(|| PoolError::NotAPool {
            path: devs[0].name().into(),
        })?;
        let meta = MetaLog::open(devs[0].clone(), region)?;
        let mut used: Vec<Vec<(u64, u64)>> = vec![Vec::new(); devs.len()];
        meta.with_state(|st| {
            for (id, _) in st.volumes().iter() {
                let Some(map) = st.mappings(*id) else {
                    continue;
                };
                for (_logical, m) in map.iter() {
                    if let Some(u) = used.get_mut(m.tier as usize) {
                        u.push((m.phys_unit, m.len_units));
                    }
                }
            }
        });
        let mut tiers = Vec::new();
        for (i, (dev, e)) in devs.into_iter().zip(&sb0.devices).enumerate() {
            let data_start = starts[i];
            let n_units = (dev.size_bytes().saturating_sub(data_start)) / UNIT_SIZE_BYTES;
            let alloc =
                BuddyAllocator::with_used(n_units, used[i].iter().copied()).map_err(|err| {
                    PoolError::Inconsistent(format!(
                        "tier {i}: mappings overlap or exceed the device: {err}"
                    ))
                })?;
            tiers.push(Tier {
                name: e.tier_name.clone(),
                dev,
                data_start,
                n_units,
                alloc: Mutex::new(alloc),
            });
        }
        let shared = Arc::new(PoolShared {
            uuid: sb0.pool_uuid,
            tiers,
            meta,
            volumes: RwLock::new(BTreeMap::new()),
            commit_barrier: RwLock::new(()),
            pending_frees: Mutex::new(Vec::new()),
            frees_outstanding: std::sync::atomic::AtomicU64::new(0),
        });
        let pool = Pool { inner: shared };
        pool.load_volumes()?;
        Ok(pool)
    }

    fn load_volumes(&self) -> Result<(), PoolError> {
        let metas: Vec<_> = self.inner.meta.with_state(|st| {
            st.volumes()
                .iter()
                .map(|(&id, v)| {
                    let maps: Vec<(u64, u64, u8, u64)> = st
                        .mappings(id)
                        .map(|m| {
                            m.iter()
                                .map(|(l, m)| (l, m.len_units, m.tier, m.phys_unit))
                                .collect()
                        })
                        .unwrap_or_default();
                    (id, v.clone(), maps)
                })
                .collect()
        });
        let mut vols = self.inner.volumes.write().expect("volumes lock");
        for (id, v, maps) in metas {
            let policy = TierPolicy::from_json(&v.policy)?;
            let shared = VolumeShared::load(
                id,
                &v.name,
                v.size_bytes,
                v.shard_size_bytes,
                policy,
                maps.as_slice(),
            )
            .map_err(|e| PoolError::Inconsistent(format!("volume {}: {e}", v.name)))?;
            vols.insert(id, Arc::new(shared));
        }
        Ok(())
    }

    pub fn uuid(&self) -> u128 {
        self.inner.uuid
    }
    pub fn tiers(&self) -> &[Tier] {
        &self.inner.tiers
    }

    /// The devices in tier order, for building engines.
    pub fn devices(&self) -> Vec<Arc<dyn BlockDev>> {
        self.inner.tiers.iter().map(|t| t.dev.clone()).collect()
    }

    /// A per-thread engine: io_uring when every device has a file descriptor
    /// and the kernel allows io_uring, else plain synchronous calls.
    pub fn engine(&self) -> Box<dyn IoEngine> {
        let devs = self.devices();
        if devs.iter().all(|d| d.raw_fd().is_some()) {
            match UringEngine::new(devs.clone()) {
                Ok(e) => return Box::new(e),
                Err(e) => tracing::warn!("io_uring unavailable ({e}); using synchronous I/O"),
            }
        }
        Box::new(SyncEngine::new(devs))
    }

    /// Durability barrier: sync every data device, then the metadata log.
    pub fn commit(&self) -> Result<(), CommitError> {
        {
            let _excl = self.inner.commit_barrier.write().expect("commit barrier");
            for t in &self.inner.tiers {
                t.dev.sync()?;
            }
            self.inner.meta.sync()?;
        }
        // Drive the epoch so deferred frees whose readers are gone reach the
        // pending list (it cannot advance past a reader still pinned).
        for _ in 0..EPOCH_ADVANCE_TRIES {
            epoch::pin().flush();
        }
        let durable = self.inner.meta.durable_lsn();
        let ready: Vec<_> = {
            let mut p = self.inner.pending_frees.lock().expect("pending frees");
            let (ready, keep) = p.drain(..).partition(|f| f.0 <= durable);
            *p = keep;
            ready
        };
        for (_, tier, first, n) in ready {
            self.free_now(tier, first, n);
            self.inner
                .frees_outstanding
                .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Units released by unmaps and migrations that are not yet free again
    /// (waiting for their record to be durable or for readers to unpin).
    pub fn frees_outstanding_units(&self) -> u64 {
        self.inner
            .frees_outstanding
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commit until every released extent is free again, or `deadline` passes.
    /// Returns whether everything was freed.
    pub fn settle(&self, deadline: std::time::Duration) -> Result<bool, CommitError> {
        let start = std::time::Instant::now();
        loop {
            self.commit()?;
            if self.frees_outstanding_units() == 0 {
                return Ok(true);
            }
            if start.elapsed() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Allocate an extent of `len_units` units, preferring `tier`, then
    /// colder tiers, then hotter ones. `None`: every tier is full.
    pub fn alloc_extent(&self, tier: usize, len_units: u64) -> Option<(usize, u64)> {
        let n = self.inner.tiers.len();
        let order = BuddyAllocator::order_of(len_units);
        let candidates = (tier..n).chain((0..tier.min(n)).rev());
        for t in candidates {
            if let Some(first) = self.inner.tiers[t]
                .alloc
                .lock()
                .expect("allocator lock")
                .alloc(order)
            {
                return Some((t, first));
            }
        }
        None
    }

    /// Allocate an extent on exactly `tier` (migrations).
    pub fn alloc_on(&self, tier: usize, len_units: u64) -> Option<u64> {
        let order = BuddyAllocator::order_of(len_units);
        self.inner
            .tiers
            .get(tier)?
            .alloc
            .lock()
            .expect("allocator lock")
            .alloc(order)
    }

    /// Return units that were never published (or whose release is durable
    /// and unobservable) to the allocator.
    pub fn free_now(&self, tier: usize, first: u64, n: u64) {
        let r = self.inner.tiers[tier]
            .alloc
            .lock()
            .expect("allocator lock")
            .free_units_run(first, n);
        // A failure here is a bookkeeping bug: the same units freed twice.
        assert!(r.is_ok(), "freeing tier {tier} units {first}+{n}: {r:?}");
    }

    /// Free units once the record `lsn` that released them is durable and
    /// every reader pinned now has unpinned.
    pub fn free_after(&self, guard: &Guard, lsn: Lsn, tier: usize, first: u64, n: u64) {
        let shared = self.inner.clone();
        self.inner
            .frees_outstanding
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        guard.defer(move || {
            shared
                .pending_frees
                .lock()
                .expect("pending frees")
                .push((lsn, tier, first, n))
        });
    }

    pub fn status(&self) -> PoolStatus {
        let tiers = self
            .inner
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| TierStatus {
                index: i,
                name: t.name.clone(),
                device: t.dev.name().to_string(),
                size_bytes: t.dev.size_bytes(),
                capacity_bytes: t.n_units * UNIT_SIZE_BYTES,
                used_bytes: t.used_units() * UNIT_SIZE_BYTES,
            })
            .collect();
        PoolStatus {
            uuid: format!("{:032x}", self.inner.uuid),
            tiers,
            volumes: self.inner.volumes.read().expect("volumes lock").len(),
        }
    }

    fn find(&self, name: &str) -> Result<Arc<VolumeShared>, PoolError> {
        let vols = self.inner.volumes.read().expect("volumes lock");
        vols.values()
            .find(|v| v.name == name)
            .cloned()
            .ok_or_else(|| PoolError::NoVolume(name.into()))
    }

    /// Create a thin volume: metadata only, nothing physical is allocated.
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        shard_size_bytes: u64,
        policy: TierPolicy,
    ) -> Result<Volume, PoolError> {
        if !valid_name(name, &['.']) {
            return Err(PoolError::VolumeName(name.into()));
        }
        if size_bytes == 0
            || size_bytes % BLOCK_SIZE_BYTES != 0
            || size_bytes > VOLUME_SIZE_MAX_BYTES
        {
            return Err(PoolError::VolumeSize { size: size_bytes });
        }
        if !shard_size_bytes.is_power_of_two()
            || !(SHARD_SIZE_MIN_BYTES..=SHARD_SIZE_MAX_BYTES).contains(&shard_size_bytes)
        {
            return Err(PoolError::ShardSize(shard_size_bytes));
        }
        policy.validate(self.inner.tiers.len())?;
        let mut vols = self.inner.volumes.write().expect("volumes lock");
        if vols.values().any(|v| v.name == name) {
            return Err(PoolError::VolumeExists(name.into()));
        }
        if vols.len() >= VOLUMES_MAX {
            return Err(PoolError::TooManyVolumes);
        }
        let id = (1..).find(|i| !vols.contains_key(i)).expect("a free id");
        let shared =
            VolumeShared::load(id, name, size_bytes, shard_size_bytes, policy.clone(), &[])
                .map_err(|e| PoolError::Inconsistent(e.to_string()))?;
        self.inner.meta.append(Record::CreateVolume {
            id,
            name: name.into(),
            size_bytes,
            shard_size_bytes,
            policy: policy.to_json(),
        })?;
        self.commit()?;
        let shared = Arc::new(shared);
        vols.insert(id, shared.clone());
        Ok(Volume::new(self.clone(), shared))
    }

    /// Open a volume by name for I/O.
    pub fn volume(&self, name: &str) -> Result<Volume, PoolError> {
        Ok(Volume::new(self.clone(), self.find(name)?))
    }

    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo, PoolError> {
        let v = self.find(name)?;
        Ok(self.info_of(&v))
    }

    fn info_of(&self, v: &VolumeShared) -> VolumeInfo {
        let per_tier = v.table.mapped_bytes_per_tier();
        let mapped_bytes = self
            .inner
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), per_tier[i]))
            .collect();
        VolumeInfo {
            id: v.id,
            name: v.name.clone(),
            size_bytes: v.size_bytes(),
            shard_size_bytes: v.table.shard_size(),
            policy: v.policy().describe(),
            mapped_bytes,
        }
    }

    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        let vols: Vec<_> = self
            .inner
            .volumes
            .read()
            .expect("volumes lock")
            .values()
            .cloned()
            .collect();
        vols.iter().map(|v| self.info_of(v)).collect()
    }

    /// Grow, or shrink (refused when mapped data lies beyond the new end
    /// unless `force`, which unmaps and frees it).
    pub fn resize_volume(&self, name: &str, new_size: u64, force: bool) -> Result<(), PoolError> {
        if new_size == 0 || new_size % BLOCK_SIZE_BYTES != 0 || new_size > VOLUME_SIZE_MAX_BYTES {
            return Err(PoolError::VolumeSize { size: new_size });
        }
        let v = self.find(name)?;
        let _admin = v.admin.lock().expect("admin lock");
        let old = v.size_bytes();
        if new_size < old {
            let mapped = v.mapped_bytes_from(new_size);
            if mapped > 0 && !force {
                return Err(PoolError::ShrinkLosesData {
                    name: name.into(),
                    size: new_size,
                    mapped,
                });
            }
            let vol = Volume::new(self.clone(), v.clone());
            // Unmap, then shrink; a write racing into the tail maps again and
            // makes the shrink retry.
            loop {
                vol.unmap_from(new_size)?;
                match v.table.resize(new_size) {
                    Ok(()) => break,
                    Err(crate::volume::table::TableError::ShrinkMapped { .. }) => continue,
                    Err(e) => return Err(VolumeError::from(e).into()),
                }
            }
        }
        self.inner.meta.append(Record::ResizeVolume {
            id: v.id,
            size_bytes: new_size,
        })?;
        self.commit()?;
        if new_size > old {
            v.set_size(new_size);
        }
        Ok(())
    }

    /// Change a volume's tier policy.
    pub fn set_policy(&self, name: &str, policy: TierPolicy) -> Result<(), PoolError> {
        policy.validate(self.inner.tiers.len())?;
        let v = self.find(name)?;
        self.inner.meta.append(Record::SetPolicy {
            id: v.id,
            policy: policy.to_json(),
        })?;
        self.commit()?;
        v.set_policy(policy);
        Ok(())
    }

    /// Delete a volume and free every extent it holds. Refused while a
    /// handle other than the pool's own is open on it.
    pub fn delete_volume(&self, name: &str) -> Result<(), PoolError> {
        let v = self.find(name)?;
        // One reference in the map, one in `v`.
        if Arc::strong_count(&v) > 2 {
            return Err(PoolError::VolumeBusy(name.into()));
        }
        {
            let vol = Volume::new(self.clone(), v.clone());
            vol.unmap_from(0)?;
        }
        self.inner.meta.append(Record::DeleteVolume { id: v.id })?;
        self.commit()?;
        self.inner
            .volumes
            .write()
            .expect("volumes lock")
            .remove(&v.id);
        Ok(())
    }
}
