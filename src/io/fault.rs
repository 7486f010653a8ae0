//! [`FaultDev`]: a [`BlockDev`] wrapper that injects errors, latency and
//! crashes, deterministically for a seed.
//!
//! Contract:
//! - Errors: each read, write and sync fails with [`IoError::Injected`] with
//!   its configured probability, drawn from a ChaCha stream seeded by
//!   [`FaultConfig::seed`]. A failed op has no effect. `fail_writes_after(n)`
//!   lets `n` more writes succeed and fails every write after them (a device
//!   that stopped accepting writes) until [`FaultDev::clear_write_limit`].
//! - Latency: every op sleeps [`FaultConfig::latency`] plus a uniform draw in
//!   `0..=latency_jitter`, outside the device lock.
//! - Volatile write cache (when [`FaultConfig::volatile_cache`]): a write is
//!   kept pending in memory per block; reads see pending data; `sync` writes
//!   the pending blocks to the inner device and syncs it, making them durable.
//!   [`FaultDev::crash`] models a power loss: each pending block is, by a
//!   seeded draw, applied whole, applied TORN (each 512-byte sector
//!   independently new or old) or dropped; then every later op returns
//!   [`IoError::Crashed`]. Data that a successful `sync` covered is never
//!   lost or torn. Reopen by wrapping the inner device in a new `FaultDev`.
//! - Determinism: for a given seed and the same sequence of calls (from one
//!   thread), the injected faults and the crash image are the same.

use super::{check_transfer, BlockDev, IoError, IoResult};
use crate::constants::{BLOCK_SIZE_BYTES, SECTOR_SIZE_BYTES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What to inject. `Default` injects nothing and has no volatile cache.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub seed: u64,
    /// Probability in `0.0..=1.0` that a read fails.
    pub read_error_prob: f64,
    /// Probability that a write fails.
    pub write_error_prob: f64,
    /// Probability that a sync fails (pending writes stay pending).
    pub sync_error_prob: f64,
    /// Added to every op.
    pub latency: Duration,
    /// Upper bound of a uniform extra delay per op.
    pub latency_jitter: Duration,
    /// Keep writes pending until `sync`, so that `crash` can lose or tear them.
    pub volatile_cache: bool,
}

/// Counts of what was injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounters {
    pub read_errors: u64,
    pub write_errors: u64,
    pub sync_errors: u64,
    /// Pending blocks a crash applied whole.
    pub crash_applied_blocks: u64,
    /// Pending blocks a crash applied partially (torn).
    pub crash_torn_blocks: u64,
    /// Pending blocks a crash dropped.
    pub crash_dropped_blocks: u64,
}

struct State {
    rng: ChaCha8Rng,
    /// Block offset -> block contents written since the last sync.
    pending: BTreeMap<u64, Box<[u8]>>,
    crashed: bool,
    /// Writes still allowed before every write fails.
    writes_left: Option<u64>,
    counters: FaultCounters,
}

pub struct FaultDev {
    inner: Arc<dyn BlockDev>,
    name: String,
    cfg: FaultConfig,
    state: Mutex<State>,
}

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;
const SECTOR: usize = SECTOR_SIZE_BYTES as usize;

impl FaultDev {
    pub fn new(inner: Arc<dyn BlockDev>, cfg: FaultConfig) -> Self {
        let name = format!("fault({})", inner.name());
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            pending: BTreeMap::new(),
            crashed: false,
            writes_left: None,
            counters: FaultCounters::default(),
        };
        FaultDev {
            inner,
            name,
            cfg,
            state: Mutex::new(state),
        }
    }

    /// The wrapped device (holds exactly the durable data).
    pub fn inner(&self) -> &Arc<dyn BlockDev> {
        &self.inner
    }

    /// Let `n` more writes succeed, then fail every write.
    pub fn fail_writes_after(&self, n: u64) {
        self.lock().writes_left = Some(n);
    }

    /// Undo [`FaultDev::fail_writes_after`].
    pub fn clear_write_limit(&self) {
        self.lock().writes_left = None;
    }

    pub fn counters(&self) -> FaultCounters {
        self.lock().counters
    }

    /// Blocks written since the last successful sync.
    pub fn pending_blocks(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Simulate a power loss (see the module doc). Returns an error only if
    /// the inner device failed while the surviving writes were applied.
    pub fn crash(&self) -> IoResult<()> {
        let mut st = self.lock();
        if st.crashed {
            return Ok(());
        }
        st.crashed = true;
        let pending = std::mem::take(&mut st.pending);
        let mut old = super::AlignedBuf::new(BLOCK);
        let mut img = super::AlignedBuf::new(BLOCK);
        for (off, data) in pending {
            match st.rng.random_range(0..3u32) {
                0 => {
                    st.counters.crash_dropped_blocks += 1;
                }
                1 => {
                    img.copy_from_slice(&data);
                    self.inner.write_at(&img, off)?;
                    st.counters.crash_applied_blocks += 1;
                }
                _ => {
                    self.inner.read_at(&mut old, off)?;
                    img.copy_from_slice(&old);
                    // At least one sector new and one old, so "torn" is real.
                    let sectors = BLOCK / SECTOR;
                    let mut mask: u32 = st.rng.random_range(1..(1u32 << sectors) - 1);
                    for s in 0..sectors {
                        if mask & 1 == 1 {
                            img[s * SECTOR..(s + 1) * SECTOR]
                                .copy_from_slice(&data[s * SECTOR..(s + 1) * SECTOR]);
                        }
                        mask >>= 1;
                    }
                    self.inner.write_at(&img, off)?;
                    st.counters.crash_torn_blocks += 1;
                }
            }
        }
        self.inner.sync()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decide the delay of one op (under the lock, for determinism).
    fn delay(&self, st: &mut State) -> Duration {
        let mut d = self.cfg.latency;
        let j = self.cfg.latency_jitter.as_nanos() as u64;
        if j > 0 {
            d += Duration::from_nanos(st.rng.random_range(0..=j));
        }
        d
    }

    fn roll(st: &mut State, prob: f64) -> bool {
        prob > 0.0 && st.rng.random_bool(prob.min(1.0))
    }
}

fn sleep(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

impl BlockDev for FaultDev {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<()> {
        check_transfer(buf.as_ptr(), buf.len(), offset, self.size_bytes())?;
        let mut st = self.lock();
        if st.crashed {
            return Err(IoError::Crashed);
        }
        let d = self.delay(&mut st);
        let res = if Self::roll(&mut st, self.cfg.read_error_prob) {
            st.counters.read_errors += 1;
            Err(IoError::Injected("read error"))
        } else {
            self.inner.read_at(buf, offset).map(|()| {
                let end = offset + buf.len() as u64;
                for (&off, data) in st.pending.range(offset..end) {
                    let o = (off - offset) as usize;
                    buf[o..o + BLOCK].copy_from_slice(data);
                }
            })
        };
        drop(st);
        sleep(d);
        res
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<()> {
        check_transfer(buf.as_ptr(), buf.len(), offset, self.size_bytes())?;
        let mut st = self.lock();
        if st.crashed {
            return Err(IoError::Crashed);
        }
        let d = self.delay(&mut st);
        let limited = match &mut st.writes_left {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        };
        let res = if limited || Self::roll(&mut st, self.cfg.write_error_prob) {
            st.counters.write_errors += 1;
            Err(IoError::Injected(if limited {
                "write limit reached"
            } else {
                "write error"
            }))
        } else if self.cfg.volatile_cache {
            for (i, chunk) in buf.chunks_exact(BLOCK).enumerate() {
                st.pending.insert(offset + (i * BLOCK) as u64, chunk.into());
            }
            Ok(())
        } else {
            self.inner.write_at(buf, offset)
        };
        drop(st);
        sleep(d);
        res
    }
    fn sync(&self) -> IoResult<()> {
        let mut st = self.lock();
        if st.crashed {
            return Err(IoError::Crashed);
        }
        let d = self.delay(&mut st);
        let res = if Self::roll(&mut st, self.cfg.sync_error_prob) {
            st.counters.sync_errors += 1;
            Err(IoError::Injected("sync error"))
        } else {
            let mut img = super::AlignedBuf::new(BLOCK);
            let mut res = Ok(());
            while let Some((off, data)) = st.pending.pop_first() {
                img.copy_from_slice(&data);
                if let Err(e) = self.inner.write_at(&img, off) {
                    st.pending.insert(off, data);
                    res = Err(e);
                    break;
                }
            }
            res.and_then(|()| self.inner.sync())
        };
        drop(st);
        sleep(d);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::mem::MemDev;
    use crate::io::AlignedBuf;

    const BLOCKS: u64 = 64;

    fn pattern(seed: u64, n: usize) -> AlignedBuf {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut b = AlignedBuf::new(n);
        rng.fill(&mut b[..]);
        b
    }

    fn dev(seed: u64) -> (Arc<MemDev>, FaultDev) {
        let mem = Arc::new(MemDev::new("mem", BLOCKS * BLOCK_SIZE_BYTES));
        let cfg = FaultConfig {
            seed,
            volatile_cache: true,
            ..Default::default()
        };
        (mem.clone(), FaultDev::new(mem, cfg))
    }

    /// Crash after writing synced blocks 0..32 then unsynced new data over
    /// every block; returns the image and the counters.
    fn crash_image(seed: u64) -> (Vec<u8>, FaultCounters, AlignedBuf, AlignedBuf) {
        let (mem, f) = dev(seed);
        let synced = pattern(1, (BLOCKS as usize / 2) * BLOCK);
        f.write_at(&synced, 0).unwrap();
        f.sync().unwrap();
        let unsynced = pattern(2, BLOCKS as usize * BLOCK);
        f.write_at(&unsynced, 0).unwrap();
        // Reads see pending data before the crash.
        let mut r = AlignedBuf::new(BLOCKS as usize * BLOCK);
        f.read_at(&mut r, 0).unwrap();
        assert_eq!(&r[..], &unsynced[..]);
        assert_eq!(f.pending_blocks(), BLOCKS as usize);
        f.crash().unwrap();
        assert!(matches!(f.read_at(&mut r, 0), Err(IoError::Crashed)));
        assert!(matches!(f.write_at(&r, 0), Err(IoError::Crashed)));
        assert!(matches!(f.sync(), Err(IoError::Crashed)));
        (mem.snapshot(), f.counters(), synced, unsynced)
    }

    #[test]
    fn crash_loses_or_tears_only_unsynced_data() {
        for seed in 0..8u64 {
            let (img, c, synced, unsynced) = crash_image(seed);
            assert_eq!(
                c.crash_applied_blocks + c.crash_torn_blocks + c.crash_dropped_blocks,
                BLOCKS,
                "seed {seed}"
            );
            for blk in 0..BLOCKS as usize {
                let got = &img[blk * BLOCK..(blk + 1) * BLOCK];
                let new = &unsynced[blk * BLOCK..(blk + 1) * BLOCK];
                let zero = vec![0u8; BLOCK];
                let old: &[u8] = if blk < BLOCKS as usize / 2 {
                    &synced[blk * BLOCK..(blk + 1) * BLOCK]
                } else {
                    &zero
                };
                // Every sector is either the durable old data or the new data.
                for s in 0..BLOCK / SECTOR {
                    let r = s * SECTOR..(s + 1) * SECTOR;
                    assert!(
                        got[r.clone()] == old[r.clone()] || got[r.clone()] == new[r],
                        "seed {seed} block {blk} sector {s}"
                    );
                }
            }
        }
        // Over 8 seeds x 64 blocks every outcome occurs.
        let total =
            (0..8u64)
                .map(|s| crash_image(s).1)
                .fold(FaultCounters::default(), |mut a, c| {
                    a.crash_applied_blocks += c.crash_applied_blocks;
                    a.crash_torn_blocks += c.crash_torn_blocks;
                    a.crash_dropped_blocks += c.crash_dropped_blocks;
                    a
                });
        assert!(
            total.crash_applied_blocks > 0
                && total.crash_torn_blocks > 0
                && total.crash_dropped_blocks > 0
        );
    }

    #[test]
    fn torn_blocks_mix_sectors() {
        let (img, c, _, unsynced) = crash_image(3);
        assert!(c.crash_torn_blocks > 0);
        // Some block has both new and non-new sectors.
        let mixed = (0..BLOCKS as usize).any(|blk| {
            let secs: Vec<bool> = (0..BLOCK / SECTOR)
                .map(|s| {
                    let o = blk * BLOCK + s * SECTOR;
                    img[o..o + SECTOR] == unsynced[o..o + SECTOR]
                })
                .collect();
            secs.iter().any(|&x| x) && secs.iter().any(|&x| !x)
        });
        assert!(mixed);
    }

    #[test]
    fn synced_data_survives_crash_intact() {
        for seed in 0..8u64 {
            let (mem, f) = dev(seed);
            let data = pattern(seed, BLOCKS as usize * BLOCK);
            f.write_at(&data, 0).unwrap();
            f.sync().unwrap();
            assert_eq!(f.pending_blocks(), 0);
            f.crash().unwrap();
            assert_eq!(&mem.snapshot()[..], &data[..], "seed {seed}");
        }
    }

    #[test]
    fn crash_is_deterministic_for_a_seed() {
        assert_eq!(crash_image(5).0, crash_image(5).0);
        assert_ne!(crash_image(5).0, crash_image(6).0);
    }

    #[test]
    fn error_probabilities_and_write_limit() {
        let mem: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem", BLOCKS * BLOCK_SIZE_BYTES));
        let cfg = FaultConfig {
            seed: 9,
            read_error_prob: 0.5,
            ..Default::default()
        };
        let f = FaultDev::new(mem.clone(), cfg.clone());
        let mut b = AlignedBuf::new(BLOCK);
        let fails = (0..200).filter(|_| f.read_at(&mut b, 0).is_err()).count();
        assert!((60..140).contains(&fails), "{fails}");
        assert_eq!(f.counters().read_errors, fails as u64);
        let f2 = FaultDev::new(mem.clone(), cfg);
        let fails2 = (0..200).filter(|_| f2.read_at(&mut b, 0).is_err()).count();
        assert_eq!(fails, fails2, "same seed, same faults");

        let f = FaultDev::new(mem, FaultConfig::default());
        f.fail_writes_after(2);
        assert!(f.write_at(&b, 0).is_ok());
        assert!(f.write_at(&b, 0).is_ok());
        assert!(matches!(f.write_at(&b, 0), Err(IoError::Injected(_))));
        assert!(matches!(f.write_at(&b, 0), Err(IoError::Injected(_))));
        assert_eq!(f.counters().write_errors, 2);
        f.clear_write_limit();
        assert!(f.write_at(&b, 0).is_ok());
    }

    #[test]
    fn latency_is_injected() {
        let mem: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem", BLOCKS * BLOCK_SIZE_BYTES));
        let cfg = FaultConfig {
            latency: Duration::from_millis(5),
            ..Default::default()
        };
        let f = FaultDev::new(mem, cfg);
        let mut b = AlignedBuf::new(BLOCK);
        let t = std::time::Instant::now();
        f.read_at(&mut b, 0).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(5));
    }
}
