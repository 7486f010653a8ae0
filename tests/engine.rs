//! Integration tests of the volume engine through its library API: thin
//! provisioning, tier placement, persistence, discard, ENOSPC, resize, and
//! random I/O with concurrent migrations, splits and merges, verified block
//! by block. Run over memory devices and over real `O_DIRECT` files with the
//! io_uring engine.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::io::AlignedBuf;
use shardblk::shard::lifecycle::{self, entries, Outcome};
use shardblk::shard::manager::run_window;
use shardblk::shard::policy::TierPolicy;
use shardblk::shard::pool::{Pool, PoolError};
use shardblk::volume::handle::{Volume, VolumeError};
use shardblk::volume::table::Loc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How long released extents may take to come back while other tests' readers
/// hold the (process-wide) epoch.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(20);

fn read_vec(
    vol: &Volume,
    eng: &mut dyn shardblk::io::IoEngine,
    off: u64,
    len: usize,
) -> AlignedBuf {
    let mut b = AlignedBuf::new(len);
    vol.read(eng, off, &mut b).expect("read");
    b
}

fn write_version(
    vol: &Volume,
    eng: &mut dyn shardblk::io::IoEngine,
    tag: u32,
    block: u64,
    n: u64,
    version: u64,
) {
    let mut b = AlignedBuf::new((n as usize) * BLOCK);
    fill(&mut b, tag, block, version);
    vol.write(eng, block * BLOCK as u64, &b).expect("write");
}

#[test]
fn thin_volume_reads_zeros_and_maps_on_first_write_on_the_policy_tier() {
    let (pool, _) = mem_pool(64 * MIB, 128 * MIB);
    let vol = pool
        .create_volume("v", 64 << 40, MIB, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    assert!(read_vec(&vol, eng.as_mut(), 5 << 40, 8192)
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        pool.status().tiers[0].used_bytes,
        0,
        "reads allocate nothing"
    );
    // One 4 KiB write in the middle of a shard maps the whole shard, zero elsewhere.
    write_version(&vol, eng.as_mut(), 1, (3 * MIB + 4096) / 4096, 1, 7);
    let shard = read_vec(&vol, eng.as_mut(), 3 * MIB, MIB as usize);
    assert!(shard[..4096].iter().all(|&b| b == 0));
    assert_eq!(
        block_version(&shard[4096..8192], 1, (3 * MIB + 4096) / 4096),
        Ok(Some(7))
    );
    assert!(shard[8192..].iter().all(|&b| b == 0));
    let info = pool.volume_info("v").unwrap();
    assert_eq!(
        info.mapped_bytes,
        vec![("hot".to_string(), MIB), ("cold".to_string(), 0)]
    );
    // A volume pinned cold maps there.
    let cold = pool
        .create_volume(
            "c",
            1 << 30,
            64 * 1024,
            TierPolicy::parse("pin=cold").unwrap(),
        )
        .unwrap();
    write_version(&cold, eng.as_mut(), 2, 0, 1, 1);
    assert_eq!(pool.volume_info("c").unwrap().mapped_bytes[1].1, 64 * 1024);
}

/// Random writes of random sizes against a byte model, over one engine.
fn random_io_against_model(pool: &Pool, shard: u64, seed: u64) {
    let size = 48 * MIB;
    let vol = pool
        .create_volume(&format!("r{shard}"), size, shard, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    let mut model = vec![0u8; size as usize];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..400 {
        let blocks = rng.random_range(1..=64u64);
        let first = rng.random_range(0..size / 4096 - blocks);
        let (off, len) = (first * 4096, (blocks * 4096) as usize);
        if rng.random_bool(0.6) {
            let mut b = AlignedBuf::new(len);
            rng.fill(&mut b[..]);
            vol.write(eng.as_mut(), off, &b).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&b);
        } else if rng.random_bool(0.1) {
            vol.write_zeroes(eng.as_mut(), off, len as u64).unwrap();
            model[off as usize..off as usize + len].fill(0);
        } else {
            let b = read_vec(&vol, eng.as_mut(), off, len);
            assert!(
                b[..] == model[off as usize..off as usize + len],
                "seed {seed} op {i}: read at {off}+{len} differs"
            );
        }
    }
    vol.flush().unwrap();
    for off in (0..size).step_by(4 * MIB as usize) {
        let b = read_vec(&vol, eng.as_mut(), off, 4 * MIB as usize);
        assert!(
            b[..] == model[off as usize..(off + 4 * MIB) as usize],
            "seed {seed}: final read at {off} differs"
        );
    }
}

#[test]
fn random_io_matches_a_byte_model_on_memory_devices() {
    let (pool, _) = mem_pool(64 * MIB, 256 * MIB);
    random_io_against_model(&pool, 64 * 1024, 11);
    random_io_against_model(&pool, MIB, 12);
}

#[test]
fn random_io_matches_a_byte_model_on_files_with_io_uring() {
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(dir.path(), 128 * MIB, 256 * MIB);
    random_io_against_model(&pool, 64 * 1024, 21);
    random_io_against_model(&pool, 4 * MIB, 22);
}

#[test]
fn flushed_data_and_volumes_survive_reopen_from_any_member() {
    let dir = tempfile::tempdir().unwrap();
    {
        let pool = file_pool(dir.path(), 128 * MIB, 256 * MIB);
        let vol = pool
            .create_volume(
                "keep",
                1 << 30,
                MIB,
                TierPolicy::parse("promote=2").unwrap(),
            )
            .unwrap();
        let mut eng = pool.engine();
        for b in (0..2000).step_by(7) {
            write_version(&vol, eng.as_mut(), 9, b, 1, b + 1);
        }
        vol.flush().unwrap();
        pool.create_volume("second", 1 << 20, 64 * 1024, TierPolicy::default())
            .unwrap();
    }
    // Opening through the cold device finds the hot one by its path hint.
    let pool = Pool::open(&dir.path().join("cold")).unwrap();
    let vol = pool.volume("keep").unwrap();
    assert_eq!(vol.shared().policy().promote_reads, 2);
    let mut eng = pool.engine();
    let all = read_vec(&vol, eng.as_mut(), 0, 2000 * 4096);
    for b in 0..2000u64 {
        let blk = &all[b as usize * BLOCK..(b as usize + 1) * BLOCK];
        let want = (b % 7 == 0).then_some(b + 1);
        assert_eq!(block_version(blk, 9, b), Ok(want), "block {b}");
    }
    assert_eq!(pool.list_volumes().len(), 2);
    assert!(matches!(
        Pool::open(&dir.path().join("nonexistent")),
        Err(PoolError::Io(_))
    ));
}

#[test]
fn pool_init_refuses_bad_devices_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::File::create(&small).unwrap().set_len(MIB).unwrap();
    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(128 * MIB)
        .unwrap();
    let spec = |n: &str, p: &std::path::Path| shardblk::shard::pool::TierSpec {
        name: n.into(),
        path: p.into(),
    };
    let e = Pool::init(&[spec("hot", &big), spec("cold", &small)], false)
        .err()
        .expect("too small");
    assert!(e.to_string().contains("too small"), "{e}");
    // Nothing was written to the good device.
    assert!(std::fs::read(&big).unwrap().iter().all(|&b| b == 0));
    let e = Pool::init(&[spec("hot", &big), spec("cold", &big)], false)
        .err()
        .expect("duplicate");
    assert!(e.to_string().contains("twice"), "{e}");
    Pool::init(&[spec("hot", &big)], false).unwrap();
    let e = Pool::init(&[spec("hot", &big)], false)
        .err()
        .expect("in a pool");
    assert!(matches!(e, PoolError::AlreadyInPool { .. }), "{e}");
    Pool::init(&[spec("hot", &big)], true).expect("--force overwrites");
}

#[test]
fn discard_of_whole_shards_frees_extents_and_write_zeroes_zeroes() {
    let (pool, _) = mem_pool(64 * MIB, 128 * MIB);
    let vol = pool
        .create_volume("d", 256 * MIB, MIB, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    write_version(&vol, eng.as_mut(), 3, 0, 4 * 256, 1); // 4 MiB
    vol.flush().unwrap();
    assert_eq!(pool.status().tiers[0].used_bytes, 4 * MIB);
    // Discard 1.5 MiB from 1 MiB: only shard 1 is whole.
    vol.discard(MIB, MIB + MIB / 2).unwrap();
    assert!(pool.settle(SETTLE).unwrap());
    assert_eq!(
        pool.status().tiers[0].used_bytes,
        3 * MIB,
        "the whole shard's extent is freed"
    );
    assert!(read_vec(&vol, eng.as_mut(), MIB, MIB as usize)
        .iter()
        .all(|&b| b == 0));
    let s2 = read_vec(&vol, eng.as_mut(), 2 * MIB, 4096);
    assert_eq!(
        block_version(&s2, 3, 512),
        Ok(Some(1)),
        "partial discard leaves data"
    );
    // Write-zeroes of a partial shard zeroes exactly that range.
    vol.write_zeroes(eng.as_mut(), 2 * MIB + 8192, 8192)
        .unwrap();
    let s2 = read_vec(&vol, eng.as_mut(), 2 * MIB, 16384);
    assert_eq!(block_version(&s2[4096..8192], 3, 513), Ok(Some(1)));
    assert!(s2[8192..].iter().all(|&b| b == 0));
}

#[test]
fn thin_volume_larger_than_the_pool_fails_with_enospc_and_loses_nothing() {
    let (pool, mems) = mem_pool(64 * MIB, 64 * MIB);
    let vol = pool
        .create_volume("big", 1 << 40, MIB, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    let mut written = 0u64;
    let err = loop {
        let mut b = AlignedBuf::new(MIB as usize);
        fill(&mut b, 5, written * 256, written + 1);
        match vol.write(eng.as_mut(), written * MIB, &b) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 1000, "the pool cannot hold this much");
    };
    assert!(matches!(err, VolumeError::NoSpace { .. }), "{err}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(written > 80, "both tiers were used: {written} MiB");
    vol.flush().unwrap();
    drop((vol, eng, pool));
    let pool = reopen_mem(&mems);
    let vol = pool.volume("big").unwrap();
    let mut eng = pool.engine();
    for s in 0..written {
        let b = read_vec(&vol, eng.as_mut(), s * MIB, MIB as usize);
        for k in 0..256 {
            assert_eq!(
                block_version(&b[k * BLOCK..(k + 1) * BLOCK], 5, s * 256 + k as u64),
                Ok(Some(s + 1))
            );
        }
    }
}

#[test]
fn resize_grows_and_refuses_to_drop_mapped_data_unless_forced() {
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let vol = pool
        .create_volume("rs", 16 * MIB, MIB, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    write_version(&vol, eng.as_mut(), 4, 0, 1, 1);
    write_version(&vol, eng.as_mut(), 4, 10 * 256, 1, 2);
    let e = pool.resize_volume("rs", 8 * MIB, false).unwrap_err();
    assert!(
        matches!(e, PoolError::ShrinkLosesData { mapped, .. } if mapped == MIB),
        "{e}"
    );
    pool.resize_volume("rs", 64 * MIB, false).unwrap();
    assert_eq!(vol.size_bytes(), 64 * MIB);
    write_version(&vol, eng.as_mut(), 4, 60 * 256, 1, 3);
    pool.resize_volume("rs", 8 * MIB, true).unwrap();
    assert_eq!(vol.size_bytes(), 8 * MIB);
    assert!(
        vol.read(eng.as_mut(), 10 * MIB, &mut AlignedBuf::new(4096))
            .is_err(),
        "beyond the end"
    );
    assert_eq!(
        block_version(&read_vec(&vol, eng.as_mut(), 0, 4096), 4, 0),
        Ok(Some(1))
    );
    assert!(
        pool.settle(SETTLE).unwrap(),
        "released extents come back once no reader can see them"
    );
    assert_eq!(
        pool.status().tiers[0].used_bytes,
        MIB,
        "dropped shards were freed"
    );
    // Growing again shows zeros where the dropped data was.
    pool.resize_volume("rs", 16 * MIB, false).unwrap();
    assert!(read_vec(&vol, eng.as_mut(), 10 * MIB, 4096)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn delete_frees_everything_and_refuses_while_open() {
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let vol = pool
        .create_volume("del", 64 * MIB, MIB, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    write_version(&vol, eng.as_mut(), 6, 0, 2048, 1);
    assert!(matches!(
        pool.delete_volume("del"),
        Err(PoolError::VolumeBusy(_))
    ));
    drop(vol);
    pool.delete_volume("del").unwrap();
    assert!(
        pool.settle(SETTLE).unwrap(),
        "released extents come back once no reader can see them"
    );
    assert_eq!(pool.status().tiers[0].used_bytes, 0);
    assert!(matches!(pool.volume("del"), Err(PoolError::NoVolume(_))));
    assert!(matches!(
        pool.delete_volume("del"),
        Err(PoolError::NoVolume(_))
    ));
}

#[test]
fn split_children_migrate_alone_and_survive_reopen() {
    let (pool, mems) = mem_pool(64 * MIB, 64 * MIB);
    let vol = pool
        .create_volume("sp", 16 * MIB, MIB, TierPolicy::default())
        .unwrap();
    let mut eng = pool.engine();
    write_version(&vol, eng.as_mut(), 8, 256, 256, 1); // slot 1
    assert_eq!(lifecycle::split(&vol, 1, 16).unwrap(), Outcome::Done);
    let loc = Loc::child(1, 3, 16);
    assert_eq!(
        lifecycle::migrate(&vol, eng.as_mut(), loc, 1).unwrap(),
        Outcome::Done
    );
    write_version(&vol, eng.as_mut(), 8, 256 + 3 * 16 + 2, 1, 2); // into the moved child
    let info = pool.volume_info("sp").unwrap();
    assert_eq!(
        info.mapped_bytes,
        vec![("hot".into(), 15 * 64 * 1024), ("cold".into(), 64 * 1024)]
    );
    vol.flush().unwrap();
    drop((vol, eng, pool));
    let pool = reopen_mem(&mems);
    let vol = pool.volume("sp").unwrap();
    let mut eng = pool.engine();
    let b = read_vec(&vol, eng.as_mut(), MIB, MIB as usize);
    for k in 0..256u64 {
        let want = if k == 3 * 16 + 2 { 2 } else { 1 };
        assert_eq!(
            block_version(&b[k as usize * BLOCK..(k as usize + 1) * BLOCK], 8, 256 + k),
            Ok(Some(want))
        );
    }
    assert_eq!(pool.volume_info("sp").unwrap().mapped_bytes[1].1, 64 * 1024);
    // Move the child back and merge: contiguous again, one entry.
    let loc = Loc::child(1, 3, 16);
    // After reopen the slot is split at the child granularity found on disk.
    assert_eq!(
        lifecycle::migrate(&vol, eng.as_mut(), loc, 0).unwrap(),
        Outcome::Done
    );
    assert_eq!(
        lifecycle::merge(&vol, eng.as_mut(), 1, true).unwrap(),
        Outcome::Done
    );
    assert!(entries(&vol).iter().all(|(l, _)| l.child.is_none()));
    let b = read_vec(&vol, eng.as_mut(), MIB + (3 * 16 + 2) * 4096, 4096);
    assert_eq!(block_version(&b, 8, 256 + 3 * 16 + 2), Ok(Some(2)));
}

#[test]
fn policy_windows_promote_hot_reads_and_demote_under_pressure() {
    let (pool, _) = mem_pool(64 * MIB, 256 * MIB);
    // Born cold, promoted after 3 reads in a window.
    let vol = pool
        .create_volume(
            "p",
            128 * MIB,
            MIB,
            TierPolicy::parse("write=cold,promote=3").unwrap(),
        )
        .unwrap();
    let mut eng = pool.engine();
    write_version(&vol, eng.as_mut(), 7, 0, 256 * 4, 1);
    for _ in 0..3 {
        read_vec(&vol, eng.as_mut(), 2 * MIB, 4096);
    }
    let rep = run_window(&pool, eng.as_mut()).unwrap();
    assert_eq!(rep.promoted, 1, "{rep:?}");
    let tiers: Vec<usize> = entries(&vol).iter().map(|(_, e)| e.tier()).collect();
    assert_eq!(tiers, vec![1, 1, 0, 1]);
    // Fill the hot tier past its high watermark with a hot-born volume.
    let hot = pool
        .create_volume("h", 128 * MIB, MIB, TierPolicy::default())
        .unwrap();
    let cap = pool.tiers()[0].n_units * 64 * 1024;
    let n = cap * 95 / 100 / MIB - 1;
    for s in 0..n {
        write_version(&hot, eng.as_mut(), 7, s * 256, 256, 2);
    }
    assert!(pool.tiers()[0].used_percent() >= 90);
    let rep = run_window(&pool, eng.as_mut()).unwrap();
    assert!(
        pool.settle(SETTLE).unwrap(),
        "released extents come back once no reader can see them"
    );
    assert!(rep.demoted > 0, "{rep:?}");
    assert!(
        pool.tiers()[0].used_percent() <= 75,
        "down to the low watermark: {}%",
        pool.tiers()[0].used_percent()
    );
    for s in 0..n {
        let b = read_vec(&hot, eng.as_mut(), s * MIB, 4096);
        assert_eq!(
            block_version(&b, 7, s * 256),
            Ok(Some(2)),
            "shard {s} after demotion"
        );
    }
}

/// The invariant test: two writers (each verifying its own writes at once),
/// a reader checking that every block holds a valid version, and a chaos
/// thread migrating, splitting and merging shards all the while.
fn concurrent_chaos(pool: &Pool, seed: u64, ops_per_writer: u64) {
    let blocks = 8 * 256u64; // 8 MiB, 8 shards of 1 MiB
    let vol = pool
        .create_volume("chaos", blocks * 4096, MIB, TierPolicy::default())
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut models: Vec<Vec<u64>> = Vec::new();
    std::thread::scope(|s| {
        let chaos = {
            let vol = vol.clone();
            let stop = stop.clone();
            let pool = pool.clone();
            s.spawn(move || {
                let mut eng = pool.engine();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC4A05);
                let mut done = [0u64; 4];
                while !stop.load(Ordering::Relaxed) {
                    let slot = rng.random_range(0..8u64);
                    let r = match rng.random_range(0..6) {
                        0 | 1 => lifecycle::migrate(
                            &vol,
                            eng.as_mut(),
                            Loc::slot(slot),
                            rng.random_range(0..2),
                        ),
                        2 => lifecycle::split(&vol, slot, [2, 4, 16][rng.random_range(0..3)]),
                        3 => {
                            let e = entries(&vol);
                            let kids: Vec<Loc> = e
                                .iter()
                                .filter(|(l, _)| l.child.is_some())
                                .map(|(l, _)| *l)
                                .collect();
                            match kids.get(rng.random_range(0..kids.len().max(1))) {
                                Some(&l) => lifecycle::migrate(
                                    &vol,
                                    eng.as_mut(),
                                    l,
                                    rng.random_range(0..2),
                                ),
                                None => Ok(Outcome::Skipped("no children")),
                            }
                        }
                        4 => lifecycle::merge(&vol, eng.as_mut(), slot, rng.random_bool(0.5)),
                        _ => vol.flush().map(|_| Outcome::Done),
                    };
                    match r.unwrap_or_else(|e| panic!("seed {seed}: chaos op failed: {e}")) {
                        Outcome::Done => done[0] += 1,
                        Outcome::Skipped(_) => done[1] += 1,
                    }
                }
                done
            })
        };
        let reader = {
            let vol = vol.clone();
            let stop = stop.clone();
            let pool = pool.clone();
            s.spawn(move || {
                let mut eng = pool.engine();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4EAD);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let b = rng.random_range(0..blocks);
                    let buf = read_vec(&vol, eng.as_mut(), b * 4096, 4096);
                    if let Err(e) = block_version(&buf, 1, b) {
                        panic!("seed {seed}: reader saw {e}");
                    }
                    n += 1;
                }
                n
            })
        };
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let vol = vol.clone();
                let pool = pool.clone();
                s.spawn(move || {
                    let mut eng = pool.engine();
                    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(w));
                    let mut model = vec![0u64; blocks as usize];
                    for i in 1..=ops_per_writer {
                        // Writer w owns the blocks with b % 2 == w; runs of up to 8.
                        let n = rng.random_range(1..=8u64);
                        let start = rng.random_range(0..blocks / 2 - n);
                        let version = (i << 1) | w;
                        for k in 0..n {
                            let b = (start + k) * 2 + w;
                            write_version(&vol, eng.as_mut(), 1, b, 1, version);
                            model[b as usize] = version;
                            let back = read_vec(&vol, eng.as_mut(), b * 4096, 4096);
                            assert_eq!(
                                block_version(&back, 1, b),
                                Ok(Some(version)),
                                "seed {seed}: writer {w} op {i} block {b}"
                            );
                        }
                    }
                    model
                })
            })
            .collect();
        for w in writers {
            models.push(w.join().expect("writer"));
        }
        stop.store(true, Ordering::Relaxed);
        let done = chaos.join().expect("chaos");
        let reads = reader.join().expect("reader");
        assert!(done[0] > 0, "seed {seed}: chaos made no change at all");
        assert!(reads > 0);
    });
    let mut eng = pool.engine();
    let all = read_vec(&vol, eng.as_mut(), 0, (blocks * 4096) as usize);
    for b in 0..blocks {
        let want = models[(b % 2) as usize][b as usize];
        let got = block_version(&all[b as usize * BLOCK..(b as usize + 1) * BLOCK], 1, b);
        assert_eq!(
            got,
            Ok((want > 0).then_some(want)),
            "seed {seed}: block {b} at the end"
        );
    }
    vol.flush().unwrap();
}

#[test]
fn concurrent_writes_with_migrations_splits_and_merges_lose_nothing_on_memory() {
    for seed in 0..3 {
        let (pool, mems) = mem_pool(64 * MIB, 64 * MIB);
        concurrent_chaos(&pool, seed, 300);
        // And the flushed result survives a reopen with an allocator that
        // accounts for exactly the mapped units.
        let mapped: u64 = pool
            .volume_info("chaos")
            .unwrap()
            .mapped_bytes
            .iter()
            .map(|m| m.1)
            .sum();
        drop(pool);
        let pool = reopen_mem(&mems);
        let info = pool.volume_info("chaos").unwrap();
        assert_eq!(
            info.mapped_bytes.iter().map(|m| m.1).sum::<u64>(),
            mapped,
            "seed {seed}"
        );
        let used: u64 = pool.status().tiers.iter().map(|t| t.used_bytes).sum();
        assert_eq!(used, mapped, "seed {seed}: allocator after reopen");
    }
}

#[test]
fn concurrent_writes_with_migrations_splits_and_merges_lose_nothing_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(dir.path(), 64 * MIB, 128 * MIB);
    concurrent_chaos(&pool, 100, 200);
}

#[test]
fn a_pool_is_opened_by_one_holder_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let pool = file_pool(dir.path(), 64 * MIB, 64 * MIB);
    let e = Pool::open(&dir.path().join("cold"))
        .err()
        .expect("second open refused");
    assert!(
        e.to_string().contains("in use by another shardblk process"),
        "{e}"
    );
    drop(pool);
    Pool::open(&dir.path().join("cold")).expect("free again once the holder is gone");
}

#[test]
fn the_background_manager_promotes_while_io_runs_and_loses_nothing() {
    use shardblk::shard::manager::Manager;
    let (pool, _) = mem_pool(64 * MIB, 128 * MIB);
    let vol = pool
        .create_volume(
            "bg",
            16 * MIB,
            MIB,
            TierPolicy::parse("write=cold,promote=2").unwrap(),
        )
        .unwrap();
    let mut eng = pool.engine();
    for s in 0..16 {
        write_version(&vol, eng.as_mut(), 12, s * 256, 256, 1);
    }
    let manager = Manager::start(pool.clone(), std::time::Duration::from_millis(20));
    // Keep reading shards 3 and 9 while rewriting blocks everywhere.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut version = 2;
    loop {
        for s in [3u64, 9] {
            for _ in 0..3 {
                read_vec(&vol, eng.as_mut(), s * MIB, 4096);
            }
        }
        let b = (version * 37) % (16 * 256);
        write_version(&vol, eng.as_mut(), 12, b, 1, version);
        let back = read_vec(&vol, eng.as_mut(), b * 4096, 4096);
        assert_eq!(block_version(&back, 12, b), Ok(Some(version)));
        version += 1;
        let tiers: Vec<usize> = entries(&vol).iter().map(|(_, e)| e.tier()).collect();
        if tiers[3] == 0 && tiers[9] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the manager never promoted the read shards: {tiers:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(manager);
    // Every block holds its newest version.
    let mut newest = vec![1u64; 16 * 256];
    for v in 2..version {
        newest[((v * 37) % (16 * 256)) as usize] = v;
    }
    let all = read_vec(&vol, eng.as_mut(), 0, 16 * MIB as usize);
    for (b, want) in newest.iter().enumerate() {
        assert_eq!(
            block_version(&all[b * BLOCK..(b + 1) * BLOCK], 12, b as u64),
            Ok(Some(*want)),
            "block {b}"
        );
    }
}

/// Dropping the manager stops its thread at once, however long its window:
/// it sleeps on its stop channel between windows (it used to poll a flag
/// every 10 ms, waking on the queue threads' CPUs all the time).
#[test]
fn dropping_the_manager_stops_it_without_waiting_out_the_window() {
    use shardblk::shard::manager::Manager;
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let manager = Manager::start(pool, std::time::Duration::from_secs(3600));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(manager);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the manager's thread did not stop when its handle was dropped");
}

/// The manager's thread runs at the background nice value, so its windows
/// yield a CPU it shares with a queue thread.
#[test]
fn the_manager_thread_runs_at_the_background_priority() {
    use shardblk::constants::MANAGER_THREAD_NICE;
    use shardblk::shard::manager::Manager;
    use shardblk::threads::{thread_named, thread_nice};
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let _manager = Manager::start(pool, std::time::Duration::from_secs(3600));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // Another test's manager may share the name: any of them will do,
        // all lower themselves first thing.
        if let Some(tid) = thread_named("shardblk-manage") {
            if thread_nice(tid).unwrap_or(0) == MANAGER_THREAD_NICE {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no manager thread at nice {MANAGER_THREAD_NICE}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Flip one byte of a file.
fn flip(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn corrupted_metadata_is_reported_never_used() {
    use shardblk::constants::{
        BLOCK_SIZE_BYTES, DEVICE_RESERVED_HEAD_BYTES, META_CHECKPOINT_SLOT_MIN_BYTES,
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let pool = file_pool(dir.path(), 64 * MIB, 64 * MIB);
        let vol = pool
            .create_volume("m", 64 * MIB, MIB, TierPolicy::default())
            .unwrap();
        let mut eng = pool.engine();
        for i in 0..4 {
            write_version(&vol, eng.as_mut(), 13, i * 256, 1, 1);
            vol.flush().unwrap();
        }
    }
    let hot = dir.path().join("hot");
    // One superblock copy damaged: the other is used.
    flip(&hot, 100);
    Pool::open(&hot).expect("opens from the intact copy");
    // Both copies damaged: not a pool any more, said so.
    flip(&hot, BLOCK_SIZE_BYTES + 100);
    let e = Pool::open(&hot).err().expect("refused");
    assert!(matches!(e, PoolError::NotAPool { .. }), "{e}");
    flip(&hot, 100);
    flip(&hot, BLOCK_SIZE_BYTES + 100);
    Pool::open(&hot).expect("restored");
    // A byte inside the first log batch, with later batches after it: corruption.
    let log = DEVICE_RESERVED_HEAD_BYTES + 2 * META_CHECKPOINT_SLOT_MIN_BYTES;
    flip(&hot, log + 40);
    let e = Pool::open(&hot).err().expect("corruption detected");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

/// The device's `enospc` scenario at engine level: a thin volume far larger
/// than its tiers, writers filling it until ENOSPC while the background
/// manager runs windows every few milliseconds (promotion, demotion into a
/// filling cold tier, splits of partly touched shards, merges), a reader
/// that keeps reading the never-written half, and overwrites, partial writes
/// and write-zeroes of whole shards. No read may ever fail; unwritten
/// ranges read zeros; every acknowledged write reads back, while the
/// manager still runs and after it stopped.
fn full_pool_with_manager(pool: &Pool, seed: u64) {
    use shardblk::shard::manager::Manager;
    const TAG: u32 = 21;
    let slots = 128u64; // 1 MiB shards; the tiers hold far fewer
    let written_slots = slots / 2; // slots at or above this are never written
    let blocks_per_slot = 256u64;
    let vol = pool
        .create_volume("full", slots * MIB, MIB, TierPolicy::default())
        .unwrap();
    let manager = Manager::start(pool.clone(), std::time::Duration::from_millis(2));
    let stop = Arc::new(AtomicBool::new(false));
    let mut models: Vec<Vec<u64>> = Vec::new();
    let mut enospc = 0u64;
    std::thread::scope(|s| {
        let reader = {
            let vol = vol.clone();
            let stop = stop.clone();
            let pool = pool.clone();
            s.spawn(move || {
                let mut eng = pool.engine();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4EAD);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n == 0 {
                    let unwritten = rng.random_bool(0.5);
                    let slot = if unwritten {
                        rng.random_range(written_slots..slots)
                    } else {
                        rng.random_range(0..written_slots)
                    };
                    let b0 = rng.random_range(0..blocks_per_slot);
                    let nb = rng.random_range(1..=(blocks_per_slot - b0).min(64));
                    let off = (slot * blocks_per_slot + b0) * BLOCK as u64;
                    let mut buf = AlignedBuf::new(nb as usize * BLOCK);
                    if let Err(e) = vol.read(eng.as_mut(), off, &mut buf) {
                        panic!("seed {seed}: read of slot {slot} failed: {e}");
                    }
                    for k in 0..nb {
                        let b = slot * blocks_per_slot + b0 + k;
                        let got = block_version(&buf[k as usize * BLOCK..][..BLOCK], TAG, b);
                        match got {
                            Ok(None) => {}
                            Ok(Some(_)) if !unwritten => {}
                            other => panic!("seed {seed}: reader: block {b}: {other:?}"),
                        }
                    }
                    n += 1;
                }
                n
            })
        };
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let vol = vol.clone();
                let pool = pool.clone();
                s.spawn(move || {
                    let mut eng = pool.engine();
                    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(7).wrapping_add(w));
                    let mut model = vec![0u64; (written_slots * blocks_per_slot) as usize];
                    // Writer w owns the slots with s % 2 == w, first written in order.
                    let own: Vec<u64> = (0..written_slots).filter(|s| s % 2 == w).collect();
                    let mut next_new = 0usize;
                    let mut nospace = 0u64;
                    for i in 1..=300u64 {
                        let version = (i << 1) | w;
                        let slot = if next_new < own.len() && rng.random_bool(0.6) {
                            next_new += 1;
                            own[next_new - 1]
                        } else {
                            own[rng.random_range(0..next_new.max(1))]
                        };
                        let base = slot * blocks_per_slot;
                        if rng.random_range(0..40) == 0 {
                            vol.write_zeroes(eng.as_mut(), base * BLOCK as u64, MIB)
                                .unwrap_or_else(|e| panic!("seed {seed}: write-zeroes: {e}"));
                            model[base as usize..][..blocks_per_slot as usize].fill(0);
                            continue;
                        }
                        // Whole shards (like dd) or a few blocks (splits).
                        let (b0, nb) = if rng.random_bool(0.4) {
                            (0, blocks_per_slot)
                        } else {
                            let b0 = rng.random_range(0..blocks_per_slot);
                            (b0, rng.random_range(1..=(blocks_per_slot - b0).min(16)))
                        };
                        let mut buf = AlignedBuf::new(nb as usize * BLOCK);
                        fill(&mut buf, TAG, base + b0, version);
                        match vol.write(eng.as_mut(), (base + b0) * BLOCK as u64, &buf) {
                            Ok(()) => {
                                model[(base + b0) as usize..][..nb as usize].fill(version);
                            }
                            Err(VolumeError::NoSpace { .. }) => {
                                // Part of the write may have landed (a split
                                // slot's mapped children): each block holds
                                // the old version or the new one.
                                nospace += 1;
                                let back =
                                    read_vec(&vol, eng.as_mut(), (base + b0) * BLOCK as u64, nb as usize * BLOCK);
                                for k in 0..nb as usize {
                                    let b = (base + b0) as usize + k;
                                    let got = block_version(&back[k * BLOCK..][..BLOCK], TAG, b as u64);
                                    let old = (model[b] > 0).then_some(model[b]);
                                    match got {
                                        Ok(v) if v == old => {}
                                        Ok(Some(v)) if v == version => model[b] = version,
                                        other => panic!(
                                            "seed {seed}: after ENOSPC block {b}: {other:?}, model {old:?}"
                                        ),
                                    }
                                }
                            }
                            Err(e) => panic!("seed {seed}: writer {w} op {i}: {e}"),
                        }
                    }
                    (model, nospace)
                })
            })
            .collect();
        for w in writers {
            let (model, nospace) = w.join().expect("writer");
            models.push(model);
            enospc += nospace;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
    });
    assert!(enospc > 0, "seed {seed}: the tiers never filled");
    let check = |when: &str| {
        let mut eng = pool.engine();
        for slot in 0..slots {
            let all = read_vec(&vol, eng.as_mut(), slot * MIB, MIB as usize);
            for k in 0..blocks_per_slot {
                let b = slot * blocks_per_slot + k;
                let want = if slot < written_slots {
                    models[(slot % 2) as usize][b as usize]
                } else {
                    0
                };
                assert_eq!(
                    block_version(&all[k as usize * BLOCK..][..BLOCK], TAG, b),
                    Ok((want > 0).then_some(want)),
                    "seed {seed}: block {b} {when}"
                );
            }
        }
    };
    // Read back while the manager's windows still run, then after it stopped.
    check("with the manager running");
    drop(manager);
    check("after the manager stopped");
    vol.flush().unwrap();
}

#[test]
fn a_full_pool_with_the_manager_running_reads_zeros_where_unwritten_and_loses_nothing() {
    // More seeds: SHARDBLK_FULL_POOL_SEEDS=N.
    let seeds = std::env::var("SHARDBLK_FULL_POOL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2u64);
    for seed in 0..seeds {
        // About 24 MiB of the hot device hold the metadata: ~16 MiB of data each.
        let (pool, _) = mem_pool(40 * MIB, 16 * MIB);
        full_pool_with_manager(&pool, seed);
    }
}
