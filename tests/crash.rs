//! Crash tests of the volume engine.
//!
//! 1. Simulated machine crashes (seeded, VOPR-style): the pool runs on
//!    fault-injecting devices whose volatile write caches lose, apply or tear
//!    (per 512-byte sector) every write not yet synced when the crash hits.
//!    Writes, flushes, discards, migrations, splits and merges run between
//!    crashes; after each crash the pool is reopened from the durable images
//!    and every block must hold its last flushed version or a version
//!    written after that flush (never older data, never garbage), and the
//!    metadata must open cleanly. A failing run prints its seed.
//! 2. `kill -9` of a real writer process on `O_DIRECT` files, many times:
//!    the same per-block check against the last flush the child reported.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::io::fault::{FaultConfig, FaultDev};
use shardblk::io::mem::MemDev;
use shardblk::io::{AlignedBuf, BlockDev};
use shardblk::shard::lifecycle;
use shardblk::shard::policy::TierPolicy;
use shardblk::shard::pool::Pool;
use shardblk::volume::handle::Volume;
use shardblk::volume::table::Loc;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::sync::Arc;

const TAG: u32 = 0xC4A5;
const VOL_BLOCKS: u64 = 16 * 256; // 16 MiB

/// Per-block knowledge of the test (0 = zeros: never written, or discarded).
#[derive(Clone)]
struct BlockModel {
    /// Versions a sector may durably hold as of the last flush: one version,
    /// or the sector mix of a block torn by an earlier crash and not
    /// rewritten since.
    flushed: BTreeSet<u64>,
    /// Every version written (or discarded) since that flush.
    since: BTreeSet<u64>,
    /// The newest of them, in operation order.
    latest: Option<u64>,
}

impl Default for BlockModel {
    fn default() -> Self {
        BlockModel {
            flushed: BTreeSet::from([0]),
            since: BTreeSet::new(),
            latest: None,
        }
    }
}

impl BlockModel {
    fn written(&mut self, v: u64) {
        self.since.insert(v);
        self.latest = Some(v);
    }
    fn flush(&mut self) {
        if let Some(v) = self.latest.take() {
            self.flushed = BTreeSet::from([v]);
        }
        self.since.clear();
    }
}

fn check_block(blk: &[u8], b: u64, m: &BlockModel, ctx: &str) {
    for (si, sec) in blk.chunks(SECTOR).enumerate() {
        let v = match sector(sec, TAG, b, si) {
            Sector::Zero => 0,
            Sector::Version(v) => v,
            Sector::Bad => panic!("{ctx}: block {b} sector {si} holds garbage"),
        };
        assert!(
            m.flushed.contains(&v) || m.since.contains(&v),
            "{ctx}: block {b} sector {si} holds version {v}; durable as of the last flush {:?}, written since {:?}",
            m.flushed,
            m.since
        );
    }
}

fn open_faulty(mems: &[Arc<MemDev>], seed: u64) -> (Pool, Vec<Arc<FaultDev>>) {
    let faults: Vec<Arc<FaultDev>> = mems
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cfg = FaultConfig {
                seed: seed ^ ((i as u64 + 1) * 0x51),
                volatile_cache: true,
                ..Default::default()
            };
            Arc::new(FaultDev::new(m.clone() as Arc<dyn BlockDev>, cfg))
        })
        .collect();
    let pool = Pool::open_on(
        faults
            .iter()
            .map(|f| f.clone() as Arc<dyn BlockDev>)
            .collect(),
    )
    .unwrap_or_else(|e| panic!("seed {seed}: reopen after crash failed: {e}"));
    (pool, faults)
}

fn session(
    vol: &Volume,
    pool: &Pool,
    rng: &mut ChaCha8Rng,
    model: &mut [BlockModel],
    next_version: &mut u64,
    ctx: &str,
) {
    let mut eng = pool.engine();
    let shard_blocks = vol.shard_size() / 4096;
    for _ in 0..rng.random_range(20..120) {
        let op = rng.random_range(0..100);
        match op {
            0..=59 => {
                let n = rng.random_range(1..=16u64);
                let first = rng.random_range(0..VOL_BLOCKS - n);
                let v = *next_version;
                *next_version += 1;
                let mut b = AlignedBuf::new((n * 4096) as usize);
                fill(&mut b, TAG, first, v);
                vol.write(eng.as_mut(), first * 4096, &b)
                    .unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
                for k in first..first + n {
                    model[k as usize].written(v);
                }
            }
            60..=71 => {
                vol.flush().unwrap_or_else(|e| panic!("{ctx}: flush: {e}"));
                // Everything written before the flush is durable.
                model.iter_mut().for_each(BlockModel::flush);
            }
            72..=75 => {
                let slot = rng.random_range(0..VOL_BLOCKS / shard_blocks);
                vol.discard(slot * shard_blocks * 4096, shard_blocks * 4096)
                    .unwrap();
                for k in slot * shard_blocks..(slot + 1) * shard_blocks {
                    model[k as usize].written(0);
                }
            }
            76..=87 => {
                let slot = rng.random_range(0..VOL_BLOCKS / shard_blocks);
                lifecycle::migrate(vol, eng.as_mut(), Loc::slot(slot), rng.random_range(0..2))
                    .unwrap();
            }
            88..=93 if shard_blocks >= 64 => {
                let slot = rng.random_range(0..VOL_BLOCKS / shard_blocks);
                lifecycle::split(vol, slot, 4).unwrap();
                let j = rng.random_range(0..4);
                lifecycle::migrate(
                    vol,
                    eng.as_mut(),
                    Loc::child(slot, j, 4),
                    rng.random_range(0..2),
                )
                .unwrap();
            }
            88..=93 => {}
            _ => {
                let slot = rng.random_range(0..VOL_BLOCKS / shard_blocks);
                lifecycle::merge(vol, eng.as_mut(), slot, rng.random_bool(0.5)).unwrap();
            }
        }
        // The allocator never holds a unit that a live entry maps.
        {
            for (loc, e) in lifecycle::entries(vol) {
                let a = pool.tiers()[e.tier()].alloc.lock().unwrap();
                for u in e.first_unit()..e.first_unit() + e.len_units() {
                    assert!(
                        !a.is_free(u),
                        "{ctx}: after op {op}: {loc:?} -> {e:?} but unit {u} is free"
                    );
                }
            }
        }
        // Once in a while a read-back of a random block must match the model
        // exactly: the newest version written (read after acknowledged write).
        if rng.random_bool(0.2) {
            let b = rng.random_range(0..VOL_BLOCKS);
            let mut buf = AlignedBuf::new(4096);
            vol.read(eng.as_mut(), b * 4096, &mut buf).unwrap();
            let m = &model[b as usize];
            let want = m
                .latest
                .or_else(|| (m.flushed.len() == 1).then(|| *m.flushed.iter().next().unwrap()));
            // (A block torn by a crash and not rewritten has no single version.)
            if let Some(want) = want {
                let got =
                    block_version(&buf, TAG, b).unwrap_or_else(|e| panic!("{ctx}: live read: {e}"));
                assert_eq!(got.unwrap_or(0), want, "{ctx}: live read of block {b}");
            }
        }
    }
}

#[test]
fn simulated_crashes_keep_every_flushed_write_and_never_use_torn_metadata() {
    let seeds: u64 = std::env::var("SHARDBLK_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let first: u64 = std::env::var("SHARDBLK_CRASH_SEED_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        let (pool, faults, mems) = fault_pool(64 * MIB, 64 * MIB, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shard = if seed % 2 == 0 { 64 * 1024 } else { MIB };
        pool.create_volume("crash", VOL_BLOCKS * 4096, shard, TierPolicy::default())
            .unwrap();
        let mut model = vec![BlockModel::default(); VOL_BLOCKS as usize];
        let mut next_version = 1;
        let (mut pool, mut faults) = (pool, faults);
        for round in 0..3 {
            let ctx = format!("seed {seed} round {round}");
            let vol = pool.volume("crash").unwrap();
            session(&vol, &pool, &mut rng, &mut model, &mut next_version, &ctx);
            drop(vol);
            for f in &faults {
                f.crash().unwrap();
            }
            drop(pool);
            let (p, f) = open_faulty(&mems, seed.wrapping_mul(7) + round);
            let vol = p
                .volume("crash")
                .unwrap_or_else(|e| panic!("{ctx}: volume lost: {e}"));
            let mut eng = p.engine();
            let mut all = AlignedBuf::new((VOL_BLOCKS * 4096) as usize);
            vol.read(eng.as_mut(), 0, &mut all).unwrap();
            for b in 0..VOL_BLOCKS {
                let blk = &all[(b * 4096) as usize..((b + 1) * 4096) as usize];
                check_block(blk, b, &model[b as usize], &ctx);
            }
            // What is on disk now is what the next round builds on: the
            // sector versions each block holds (one, or a torn mix).
            for (b, m) in model.iter_mut().enumerate() {
                let blk = &all[b * 4096..(b + 1) * 4096];
                m.flushed = blk
                    .chunks(SECTOR)
                    .enumerate()
                    .map(|(si, s)| match sector(s, TAG, b as u64, si) {
                        Sector::Version(v) => v,
                        _ => 0,
                    })
                    .collect();
                m.since.clear();
                m.latest = None;
            }
            // A fresh commit makes that state durable before the next round.
            p.commit().unwrap();
            drop((vol, eng));
            pool = p;
            faults = f;
        }
        drop(pool);
        let _ = faults;
    }
}

// ---------------------------------------------------------------------------
// kill -9 of a writer process

/// What op `i` of the child with `seed` writes: `(first block, blocks)`.
fn child_op(seed: u64, i: u64) -> (u64, u64) {
    let mut r = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9) ^ i);
    let n = r.random_range(1..=8u64);
    (r.random_range(0..VOL_BLOCKS - n), n)
}
const CHILD_FLUSH_EVERY: u64 = 5;
const CHILD_OPS_MAX: u64 = 20_000;

/// The writer process of the kill test (runs only when the parent starts it).
#[test]
#[ignore = "started by kill_nine_of_the_writer_loses_no_flushed_write"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("SHARDBLK_CRASH_DIR") else {
        return;
    };
    let seed: u64 = std::env::var("SHARDBLK_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let pool = Pool::open(&std::path::Path::new(&dir).join("hot")).unwrap();
    let vol = pool.volume("k").unwrap();
    let mut eng = pool.engine();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 1..=CHILD_OPS_MAX {
        let (first, n) = child_op(seed, i);
        let mut b = AlignedBuf::new((n * 4096) as usize);
        fill(&mut b, TAG, first, i);
        vol.write(eng.as_mut(), first * 4096, &b).unwrap();
        if i % 7 == 0 {
            let slot = rng.random_range(0..VOL_BLOCKS / 256);
            lifecycle::migrate(&vol, eng.as_mut(), Loc::slot(slot), rng.random_range(0..2))
                .unwrap();
        }
        if i % CHILD_FLUSH_EVERY == 0 {
            vol.flush().unwrap();
            println!("FLUSHED {i}");
            use std::io::Write;
            std::io::stdout().flush().unwrap();
        }
    }
}

#[test]
fn kill_nine_of_the_writer_loses_no_flushed_write() {
    let exe = std::env::current_exe().unwrap();
    let runs: u64 = std::env::var("SHARDBLK_KILL_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let seed = 1000 + run;
        {
            let pool = file_pool(dir.path(), 64 * MIB, 128 * MIB);
            pool.create_volume("k", VOL_BLOCKS * 4096, MIB, TierPolicy::default())
                .unwrap();
        }
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHARDBLK_CRASH_DIR", dir.path())
            .env("SHARDBLK_CRASH_SEED", seed.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let kill_after = rng.random_range(1..40u64);
        let mut flushed = 0u64;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(i) = line.strip_prefix("FLUSHED ") {
                flushed = i.trim().parse().unwrap();
                seen += 1;
                if seen == kill_after {
                    break;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(0..15)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(flushed > 0, "seed {seed}: the child reported no flush");
        // Per block: the last version written at or before the reported
        // flush, or any later version the child may have written.
        let pool = Pool::open(&dir.path().join("cold"))
            .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
        let vol = pool.volume("k").unwrap();
        let mut eng = pool.engine();
        let mut model = vec![BlockModel::default(); VOL_BLOCKS as usize];
        for i in 1..=CHILD_OPS_MAX {
            let (first, n) = child_op(seed, i);
            for k in first..first + n {
                let m = &mut model[k as usize];
                if i <= flushed {
                    m.flushed = BTreeSet::from([i]);
                } else {
                    m.since.insert(i);
                }
            }
        }
        let mut all = AlignedBuf::new((VOL_BLOCKS * 4096) as usize);
        vol.read(eng.as_mut(), 0, &mut all).unwrap();
        for b in 0..VOL_BLOCKS {
            let blk = &all[(b * 4096) as usize..((b + 1) * 4096) as usize];
            check_block(
                blk,
                b,
                &model[b as usize],
                &format!("kill run {run} seed {seed} (flushed {flushed})"),
            );
        }
    }
}
