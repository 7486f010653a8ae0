//! Crash and corruption tests of the metadata log (`shard::meta`).
//!
//! `CrashDev` is a small test-only crash model: a device with a volatile write
//! cache. Writes since the last `sync` are pending; a crash happens at a
//! chosen device operation (that write or sync fails, and every later one),
//! and the crash image keeps each pending block lost, applied, or torn per
//! 512-byte sector, chosen by a seeded RNG. Seeded; a failing seed is printed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{
    BLOCK_SIZE_BYTES, DEVICE_RESERVED_HEAD_BYTES, SECTOR_SIZE_BYTES, UNIT_SIZE_BYTES,
};
use shardblk::io::mem::MemDev;
use shardblk::io::{check_transfer, BlockDev, IoError, IoResult};
use shardblk::shard::meta::{MetaError, MetaLog, MetaRegion, MetaState, Record};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const B: usize = BLOCK_SIZE_BYTES as usize;

struct CrashState {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    ops: u64,
    crash_at: u64,
    crashed: bool,
}

struct CrashDev {
    s: Mutex<CrashState>,
}

impl CrashDev {
    fn new(image: Vec<u8>, crash_at: u64) -> Self {
        CrashDev {
            s: Mutex::new(CrashState {
                current: image.clone(),
                durable: image,
                pending: Vec::new(),
                ops: 0,
                crash_at,
                crashed: false,
            }),
        }
    }
    /// Counts one write or sync; true if the device crashes at it.
    fn tick(s: &mut CrashState) -> bool {
        s.ops += 1;
        if s.ops >= s.crash_at {
            s.crashed = true;
        }
        s.crashed
    }
    /// What the medium holds after a crash now.
    fn crash_image(&self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let s = self.s.lock().unwrap();
        let mut img = s.durable.clone();
        for (off, data) in &s.pending {
            for (bi, block) in data.chunks(B).enumerate() {
                let o = *off as usize + bi * B;
                match rng.random_range(0..3) {
                    0 => {}
                    1 => img[o..o + B].copy_from_slice(block),
                    _ => {
                        for (si, sector) in block.chunks(SECTOR_SIZE_BYTES as usize).enumerate() {
                            if rng.random_bool(0.5) {
                                let so = o + si * SECTOR_SIZE_BYTES as usize;
                                img[so..so + sector.len()].copy_from_slice(sector);
                            }
                        }
                    }
                }
            }
        }
        img
    }
}

impl BlockDev for CrashDev {
    fn size_bytes(&self) -> u64 {
        self.s.lock().unwrap().current.len() as u64
    }
    fn name(&self) -> &str {
        "crashdev"
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<()> {
        let s = self.s.lock().unwrap();
        if s.crashed {
            return Err(IoError::Crashed);
        }
        check_transfer(buf.as_ptr(), buf.len(), offset, s.current.len() as u64)?;
        buf.copy_from_slice(&s.current[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<()> {
        let mut s = self.s.lock().unwrap();
        if s.crashed {
            return Err(IoError::Crashed);
        }
        check_transfer(buf.as_ptr(), buf.len(), offset, s.current.len() as u64)?;
        // The write reaches the cache even when the crash interrupts it.
        s.pending.push((offset, buf.to_vec()));
        s.current[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        if Self::tick(&mut s) {
            return Err(IoError::Crashed);
        }
        Ok(())
    }
    fn sync(&self) -> IoResult<()> {
        let mut s = self.s.lock().unwrap();
        if s.crashed || Self::tick(&mut s) {
            return Err(IoError::Crashed);
        }
        for (off, data) in std::mem::take(&mut s.pending) {
            s.durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
}

fn region(slot_blocks: u64, log_blocks: u64) -> MetaRegion {
    MetaRegion {
        offset: DEVICE_RESERVED_HEAD_BYTES,
        checkpoint_slot_bytes: slot_blocks * BLOCK_SIZE_BYTES,
        log_bytes: log_blocks * BLOCK_SIZE_BYTES,
    }
}

const IDS: u32 = 5;
const UNITS_MAX: u64 = 32;

/// A random record, usually valid against `s`, sometimes not.
fn random_record(rng: &mut ChaCha8Rng, s: &MetaState) -> Record {
    let ids: Vec<u32> = s.volumes().keys().copied().collect();
    let pick = |rng: &mut ChaCha8Rng| {
        if ids.is_empty() || rng.random_bool(0.05) {
            rng.random_range(0..IDS)
        } else {
            ids[rng.random_range(0..ids.len())]
        }
    };
    let units = |id: u32| s.volume(id).map(|v| v.units()).unwrap_or(4);
    match rng.random_range(0..100) {
        _ if ids.is_empty() && rng.random_bool(0.8) => create(rng),
        0..8 => create(rng),
        8..11 => Record::DeleteVolume { id: pick(rng) },
        11..15 => Record::ResizeVolume {
            id: pick(rng),
            size_bytes: rng.random_range(1..=UNITS_MAX) * UNIT_SIZE_BYTES,
        },
        15..20 => Record::SetPolicy {
            id: pick(rng),
            policy: random_policy(rng),
        },
        20..75 => {
            let vol = pick(rng);
            let u = units(vol);
            let logical_unit = rng.random_range(0..u);
            Record::Map {
                vol,
                logical_unit,
                len_units: rng.random_range(1..=(u - logical_unit).min(8) + 1),
                tier: rng.random_range(0..4),
                phys_unit: rng.random_range(0..1000),
            }
        }
        _ => {
            let vol = pick(rng);
            let u = units(vol);
            let logical_unit = rng.random_range(0..u);
            Record::Unmap {
                vol,
                logical_unit,
                len_units: rng.random_range(1..=(u - logical_unit).min(8)),
            }
        }
    }
}

fn random_policy(rng: &mut ChaCha8Rng) -> Vec<u8> {
    (0..rng.random_range(0..700))
        .map(|_| rng.random())
        .collect()
}

fn create(rng: &mut ChaCha8Rng) -> Record {
    let id = rng.random_range(0..IDS);
    Record::CreateVolume {
        id,
        name: format!("vol{}", rng.random_range(0..IDS)),
        size_bytes: rng.random_range(1..=UNITS_MAX) * UNIT_SIZE_BYTES,
        shard_size_bytes: UNIT_SIZE_BYTES,
        policy: random_policy(rng),
    }
}

fn state_of(records: &[Record]) -> MetaState {
    let mut s = MetaState::new();
    for r in records {
        s.apply(r).expect("history records apply");
    }
    s
}

/// One seed: several sessions, each ending in a crash at a random device
/// operation, each reopened from the crash image and checked.
#[derive(Default, Debug)]
struct Stats {
    crashed_mid_session: u64,
    torn_batches: u64,
    fell_back: u64,
    later_generation: u64,
    unacked_lost: u64,
    unacked_kept: u64,
}

fn crash_seed(seed: u64, st: &mut Stats) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let reg = region(4, [4u64, 6, 8, 16][rng.random_range(0..4)]);
    let size = reg.end() as usize;
    // Format on a device that never crashes, then start from its image.
    let mem = Arc::new(MemDev::new("m", size as u64));
    MetaLog::format(mem.clone(), reg).map_err(|e| format!("format: {e}"))?;
    let mut image = mem.snapshot();
    let mut history: Vec<Record> = Vec::new();
    for session in 0..3 {
        let dev = Arc::new(CrashDev::new(image.clone(), rng.random_range(1..40)));
        let log =
            MetaLog::open(dev.clone(), reg).map_err(|e| format!("session {session}: open: {e}"))?;
        let mut model = log.with_state(|s| s.clone());
        if model != state_of(&history) {
            return Err(format!(
                "session {session}: opened state differs from history"
            ));
        }
        let mut acked = history.len();
        for _ in 0..rng.random_range(5..80) {
            let step = rng.random_range(0..100);
            let res = if step < 80 {
                let r = random_record(&mut rng, &model);
                let expect_ok = model.validate(&r).is_ok();
                match log.append(r.clone()) {
                    Ok(lsn) => {
                        if !expect_ok {
                            return Err(format!("accepted invalid {r:?}"));
                        }
                        model.apply(&r).unwrap();
                        history.push(r);
                        if lsn.0 as usize != history.len() {
                            return Err(format!("lsn {} for record {}", lsn.0, history.len()));
                        }
                        Ok(())
                    }
                    Err(MetaError::Invalid(_)) if !expect_ok => Ok(()),
                    Err(e) => Err(e),
                }
            } else if step < 96 {
                log.sync().map(|_| acked = history.len())
            } else {
                log.checkpoint().map(|_| acked = history.len())
            };
            match res {
                Ok(()) => {}
                Err(MetaError::Io(IoError::Crashed)) | Err(MetaError::Poisoned) => break,
                Err(e) => return Err(format!("session {session}: unexpected error {e}")),
            }
        }
        if log.durable_lsn().0 as usize != acked && !dev.s.lock().unwrap().crashed {
            return Err(format!(
                "durable lsn {} but acked {acked}",
                log.durable_lsn().0
            ));
        }
        st.crashed_mid_session += dev.s.lock().unwrap().crashed as u64;
        drop(log);
        image = dev.crash_image(&mut rng);
        // Reopen the crash image and check the prefix property.
        let mem: Arc<dyn BlockDev> = Arc::new(MemDev::from_image("m", image.clone()));
        let re = MetaLog::open(mem, reg)
            .map_err(|e| format!("session {session}: reopen after crash: {e}"))?;
        let last = re.last_lsn().0 as usize;
        if last < acked || last > history.len() {
            return Err(format!(
                "session {session}: recovered {last} records, acked {acked}, appended {}",
                history.len()
            ));
        }
        st.torn_batches += re.recovery().torn_batches;
        st.fell_back += re.recovery().fell_back as u64;
        st.later_generation += (re.generation() > 1) as u64;
        st.unacked_lost += (last < history.len()) as u64;
        st.unacked_kept += (last > acked) as u64;
        history.truncate(last);
        let got = re.with_state(|s| s.clone());
        if got != state_of(&history) {
            return Err(format!(
                "session {session}: recovered state is not the prefix of {last} records"
            ));
        }
        if re.durable_lsn() != re.last_lsn() {
            return Err("reopened log has undurable records".into());
        }
    }
    Ok(())
}

#[test]
fn crash_anywhere_keeps_acknowledged_prefix() {
    let seeds: u64 = std::env::var("META_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut st = Stats::default();
    for seed in 0..seeds {
        if let Err(e) = crash_seed(seed, &mut st) {
            panic!("meta crash test failed for seed {seed}: {e}");
        }
    }
    eprintln!("{seeds} seeds: {st:?}");
    // The crash model must actually reach the interesting cases.
    if seeds >= 300 {
        assert!(
            st.crashed_mid_session > 0 && st.torn_batches > 0 && st.fell_back > 0,
            "{st:?}"
        );
        assert!(
            st.later_generation > 0 && st.unacked_lost > 0 && st.unacked_kept > 0,
            "{st:?}"
        );
    }
}

/// A formatted MemDev with volume 1 and `batches` synced batches of maps.
fn built(reg: MetaRegion, batches: u64) -> (Arc<MemDev>, Vec<Record>) {
    let dev = Arc::new(MemDev::new("m", reg.end()));
    let log = MetaLog::format(dev.clone(), reg).unwrap();
    let mut recs = vec![Record::CreateVolume {
        id: 1,
        name: "v".into(),
        size_bytes: 64 * UNIT_SIZE_BYTES,
        shard_size_bytes: UNIT_SIZE_BYTES,
        policy: b"{}".to_vec(),
    }];
    log.append(recs[0].clone()).unwrap();
    log.sync().unwrap();
    for b in 0..batches {
        for i in 0..3 {
            let r = Record::Map {
                vol: 1,
                logical_unit: b * 3 + i,
                len_units: 1,
                tier: 1,
                phys_unit: 100 + b * 3 + i,
            };
            log.append(r.clone()).unwrap();
            recs.push(r);
        }
        log.sync().unwrap();
    }
    (dev, recs)
}

fn flip(dev: &MemDev, at: u64) -> MemDev {
    let mut img = dev.snapshot();
    img[at as usize] ^= 0x20;
    MemDev::from_image("m", img)
}

fn open(dev: MemDev, reg: MetaRegion) -> Result<MetaLog, MetaError> {
    MetaLog::open(Arc::new(dev), reg)
}

#[test]
fn flipped_byte_in_older_batch_is_corrupt() {
    let reg = region(4, 64);
    let (dev, recs) = built(reg, 4);
    let log0 = reg.log_offset();
    let good = open(flip(&dev, 0), reg).unwrap(); // byte 0 is outside the region
    assert_eq!(good.with_state(|s| s.clone()), state_of(&recs));
    // Inside the first batch's record (after its 37-byte header).
    match open(flip(&dev, log0 + 50), reg) {
        Err(MetaError::Corrupt { offset, .. }) => assert_eq!(offset, log0 + 37),
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    // Inside the header of the third batch.
    match open(flip(&dev, log0 + 2 * BLOCK_SIZE_BYTES + 10), reg) {
        Err(MetaError::Corrupt { offset, .. }) => assert_eq!(offset, log0 + 2 * BLOCK_SIZE_BYTES),
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    // The last batch looks torn (undetectable as corruption): dropped whole.
    let last = open(flip(&dev, log0 + 4 * BLOCK_SIZE_BYTES + 60), reg).unwrap();
    assert_eq!(last.recovery().torn_batches, 1);
    assert_eq!(
        last.with_state(|s| s.clone()),
        state_of(&recs[..recs.len() - 3])
    );
}

#[test]
fn corrupt_checkpoints() {
    let reg = region(4, 64);
    let (dev, recs) = built(reg, 2);
    let log = MetaLog::open(dev.clone(), reg).unwrap();
    log.checkpoint().unwrap(); // generation 1 in slot B, log restarts with generation 2
    assert_eq!(log.generation(), 2);
    drop(log);
    let b = reg.slot_offset(1);
    // Newest checkpoint unreadable, log not moved on: the older one + its log.
    let l = open(flip(&dev, b + 40), reg).unwrap();
    assert_eq!(l.recovery().checkpoint_slot, 0);
    assert!(l.recovery().fell_back);
    assert_eq!(l.with_state(|s| s.clone()), state_of(&recs));
    // The older checkpoint unreadable: no effect.
    let l = open(flip(&dev, reg.slot_offset(0) + 10), reg).unwrap();
    assert_eq!(l.recovery().checkpoint_slot, 1);
    assert_eq!(l.with_state(|s| s.clone()), state_of(&recs));
    // Both unreadable.
    let both = flip(&flip(&dev, b + 40), reg.slot_offset(0) + 10);
    assert!(matches!(
        open(both, reg),
        Err(MetaError::NoCheckpoint { .. })
    ));
    // After the log moved on, losing the newest checkpoint must not silently
    // replay the older one.
    let log = MetaLog::open(dev.clone(), reg).unwrap();
    log.append(Record::Unmap {
        vol: 1,
        logical_unit: 0,
        len_units: 2,
    })
    .unwrap();
    log.sync().unwrap();
    drop(log);
    match open(flip(&dev, b + 40), reg) {
        Err(MetaError::Corrupt { offset, .. }) => assert_eq!(offset, b),
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn garbage_region_never_panics() {
    let reg = region(2, 8);
    for seed in 0..300u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (dev, _) = built(reg, 3);
        let mut img = dev.snapshot();
        match seed % 3 {
            // All garbage.
            0 => rng.fill(&mut img[reg.offset as usize..]),
            // Garbage blocks sprinkled over a valid region.
            1 => {
                for _ in 0..rng.random_range(1..6) {
                    let blk = rng
                        .random_range(reg.offset / BLOCK_SIZE_BYTES..reg.end() / BLOCK_SIZE_BYTES)
                        as usize;
                    rng.fill(&mut img[blk * B..(blk + 1) * B]);
                }
            }
            // Random byte flips.
            _ => {
                for _ in 0..rng.random_range(1..20) {
                    let at = rng.random_range(reg.offset..reg.end()) as usize;
                    img[at] = rng.random();
                }
            }
        }
        let r = std::panic::catch_unwind(|| open(MemDev::from_image("m", img), reg).map(|_| ()));
        assert!(r.is_ok(), "open panicked for seed {seed}");
    }
}

#[test]
fn full_is_a_clear_error_and_changes_nothing() {
    let reg = region(1, 4);
    let dev = Arc::new(MemDev::new("m", reg.end()));
    let log = MetaLog::format(dev.clone(), reg).unwrap();
    let mut n = 0u32;
    let err = loop {
        let r = Record::CreateVolume {
            id: n,
            name: format!("volume-{n}"),
            size_bytes: UNIT_SIZE_BYTES,
            shard_size_bytes: UNIT_SIZE_BYTES,
            policy: vec![7; 200],
        };
        match log.append(r) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        if n % 5 == 0 {
            log.sync().unwrap();
        }
    };
    assert!(matches!(err, MetaError::Full { .. }), "{err}");
    assert!(n > 5);
    let before = log.with_state(|s| s.clone());
    log.sync().unwrap();
    log.checkpoint().unwrap();
    drop(log);
    let re = MetaLog::open(dev, reg).unwrap();
    assert_eq!(re.with_state(|s| s.clone()), before);
    assert_eq!(before.volumes().len(), n as usize);
}

/// A MemDev that counts log-region writes and whose sync takes a while, like
/// a real device flush.
struct CountDev(MemDev, AtomicU64, u64);

impl BlockDev for CountDev {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn name(&self) -> &str {
        self.0.name()
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<()> {
        if offset >= self.2 {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        self.0.write_at(buf, offset)
    }
    fn sync(&self) -> IoResult<()> {
        std::thread::sleep(std::time::Duration::from_micros(500));
        self.0.sync()
    }
}

#[test]
fn concurrent_appenders_group_commit() {
    let reg = region(16, 2048);
    let dev = Arc::new(CountDev(
        MemDev::new("m", reg.end()),
        AtomicU64::new(0),
        reg.log_offset(),
    ));
    let log = Arc::new(MetaLog::format(dev.clone(), reg).unwrap());
    let writes_before = dev.1.load(Ordering::Relaxed);
    log.append(Record::CreateVolume {
        id: 0,
        name: "v".into(),
        size_bytes: 1024 * UNIT_SIZE_BYTES,
        shard_size_bytes: UNIT_SIZE_BYTES,
        policy: vec![],
    })
    .unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let lsn = log
                        .append(Record::Map {
                            vol: 0,
                            logical_unit: t * 256 + i,
                            len_units: 1,
                            tier: 0,
                            phys_unit: t * 1000 + i,
                        })
                        .unwrap();
                    if i % 3 == 0 {
                        log.sync().unwrap();
                        assert!(log.durable_lsn() >= lsn);
                    }
                }
                log.sync().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.durable_lsn().0, 801);
    let want = log.with_state(|s| s.clone());
    assert_eq!(want.mappings(0).unwrap().len(), 800);
    // 4 threads x (67 + 1) sync calls; a call covered by another's batch writes nothing.
    let batches = dev.1.load(Ordering::Relaxed) - writes_before;
    eprintln!(
        "group commit: {} sync calls wrote {batches} batches",
        4 * 68
    );
    assert_eq!(log.generation(), 1, "no checkpoint expected");
    assert!(batches < 4 * 68, "no sync call was coalesced");
    let re = MetaLog::open(Arc::new(MemDev::from_image("m", dev.0.snapshot())), reg).unwrap();
    assert_eq!(re.with_state(|s| s.clone()), want);
    assert_eq!(re.last_lsn().0, 801);
}

#[test]
fn pool_sized_region_roundtrip() {
    let reg = MetaRegion::sized_for(DEVICE_RESERVED_HEAD_BYTES, 1 << 16);
    assert_eq!(
        reg.checkpoint_slot_bytes,
        shardblk::constants::META_CHECKPOINT_SLOT_MIN_BYTES
    );
    let dev = Arc::new(MemDev::new("m", reg.end()));
    let log = MetaLog::format(dev.clone(), reg).unwrap();
    log.append(Record::CreateVolume {
        id: 9,
        name: "big".into(),
        size_bytes: 1 << 36,
        shard_size_bytes: UNIT_SIZE_BYTES,
        policy: b"{\"tiers\":[\"hot\",\"cold\"]}".to_vec(),
    })
    .unwrap();
    for i in 0..5000u64 {
        log.append(Record::Map {
            vol: 9,
            logical_unit: i * 2,
            len_units: 1,
            tier: (i % 2) as u8,
            phys_unit: i,
        })
        .unwrap();
        if i % 100 == 0 {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    let want = log.with_state(|s| s.clone());
    drop(log);
    let re = MetaLog::open(dev, reg).unwrap();
    assert_eq!(re.with_state(|s| s.clone()), want);
    assert_eq!(re.recovery().replayed_records, 5001);
}
