//! The live prefetch engine (inference thread + stager) over real volumes on
//! memory devices, fed through the device's trace rings exactly as the ublk
//! queue threads feed it: a sequential reader (which also rewrites blocks)
//! and a second writer run while the stager moves shards between the tiers.
//! Every read is verified block by block; at the end every block holds its
//! newest version. One run is fault-free and must stage and hit; one runs
//! over a cold tier that fails reads and writes at random (seeded), where
//! stagings and demotions fail and the data must still be right. One reads
//! a small hot set at random with no predictor: demand promotion alone
//! must stage it.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::device::metrics::{trace_ring, Op, TraceEvent, TraceProducer};
use shardblk::io::fault::{FaultConfig, FaultDev};
use shardblk::io::mem::MemDev;
use shardblk::io::{AlignedBuf, BlockDev, IoEngine};
use shardblk::prefetch::live::{Live, LiveConfig, PrefetchStats};
use shardblk::prefetch::{PredictorKind, PrefetchConfig};
use shardblk::shard::lifecycle::entries;
use shardblk::shard::pool::Pool;
use shardblk::volume::handle::Volume;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TAG: u32 = 7;
const SHARDS: u64 = 24;
const BLOCKS: u64 = SHARDS * 256; // 1 MiB shards of 4 KiB blocks
const READ_BLOCKS: u64 = 16; // 64 KiB reads

fn ev(start: Instant, vol: &Volume, op: Op, block: u64, blocks: u64) -> TraceEvent {
    TraceEvent {
        time_ns: start.elapsed().as_nanos() as u64,
        volume: vol.id(),
        offset: block * BLOCK as u64,
        len: (blocks * BLOCK as u64) as u32,
        op,
    }
}

/// Retry an operation that may hit an injected fault (a failed op has no effect).
fn retry<T, E: std::fmt::Display>(what: &str, mut f: impl FnMut() -> Result<T, E>) -> T {
    for _ in 0..200 {
        if let Ok(v) = f() {
            return v;
        }
    }
    match f() {
        Ok(v) => v,
        Err(e) => panic!("{what}: still failing after 200 tries: {e}"),
    }
}

fn write_block(vol: &Volume, eng: &mut dyn IoEngine, block: u64, version: u64) {
    let mut b = AlignedBuf::new(BLOCK);
    fill(&mut b, TAG, block, version);
    retry("write", || vol.write(eng, block * BLOCK as u64, &b));
}

/// What the reader reads: three sequential passes over the volume, or as
/// many 64 KiB reads at random places in the first `HOT_SHARDS` shards.
#[derive(Clone, Copy, PartialEq)]
enum Reads {
    Sequential,
    HotSet,
}

const HOT_SHARDS: u64 = 6;

/// Run the workload against `vol` with the live engine on (`kind`, demand
/// promotion after `promote_reads` cold reads); returns the stats.
fn run(
    pool: &Pool,
    vol: &Volume,
    seed: u64,
    budget: u64,
    kind: PredictorKind,
    promote_reads: u32,
    reads: Reads,
) -> PrefetchStats {
    let start = Instant::now();
    let (p0, c0) = trace_ring(1 << 16);
    let (p1, c1) = trace_ring(1 << 16);
    let cfg = LiveConfig {
        kind,
        prefetch: PrefetchConfig::default(),
        budget_bytes: Some(budget),
        model: None,
        promote_reads,
        lstm: Default::default(),
    };
    let live = Live::start(Some(&cfg), vol.clone(), vec![c0, c1], start).expect("live start");
    let shared = live.shared();
    assert_eq!(
        shardblk::threads::thread_nice(shared.inference_tid().expect("inference thread id")).ok(),
        Some(19),
        "the inference thread runs at the lowest normal priority"
    );
    assert_eq!(
        shardblk::threads::thread_nice(shared.model_tid().expect("model thread id")).ok(),
        Some(19),
        "the model thread runs at the lowest normal priority"
    );
    let stop = AtomicBool::new(false);
    // Even blocks belong to the reader, odd blocks to the writer.
    let mut reader_model = vec![1u64; BLOCKS as usize];
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut tp: TraceProducer = p1;
            let mut eng = pool.engine();
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5717E);
            let mut model = vec![1u64; BLOCKS as usize];
            let mut v = 1;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let b = rng.random_range(0..BLOCKS / 2) * 2 + 1;
                tp.push(ev(start, vol, Op::Write, b, 1));
                write_block(vol, eng.as_mut(), b, v);
                model[b as usize] = v;
                let mut back = AlignedBuf::new(BLOCK);
                retry("read back", || {
                    vol.read(eng.as_mut(), b * BLOCK as u64, &mut back)
                });
                assert_eq!(
                    block_version(&back, TAG, b),
                    Ok(Some(v)),
                    "seed {seed}: writer read back block {b}"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            model
        });
        let mut tp: TraceProducer = p0;
        let mut eng = pool.engine();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v = 1;
        let mut buf = AlignedBuf::new(READ_BLOCKS as usize * BLOCK);
        let per_pass = BLOCKS / READ_BLOCKS;
        for pass in 0..3 {
            for i in 0..per_pass {
                let first = match reads {
                    Reads::Sequential => i * READ_BLOCKS,
                    Reads::HotSet => {
                        rng.random_range(0..HOT_SHARDS * 256 / READ_BLOCKS) * READ_BLOCKS
                    }
                };
                tp.push(ev(start, vol, Op::Read, first, READ_BLOCKS));
                retry("read", || {
                    vol.read(eng.as_mut(), first * BLOCK as u64, &mut buf)
                });
                for k in 0..READ_BLOCKS {
                    let b = first + k;
                    let got = block_version(&buf[k as usize * BLOCK..][..BLOCK], TAG, b);
                    if b % 2 == 0 {
                        assert_eq!(
                            got,
                            Ok(Some(reader_model[b as usize])),
                            "seed {seed}: pass {pass} block {b}"
                        );
                    } else {
                        assert!(
                            matches!(got, Ok(Some(_))),
                            "seed {seed}: pass {pass} block {b}: {got:?}"
                        );
                    }
                }
                if rng.random_bool(0.25) {
                    v += 1;
                    let b = rng.random_range(0..BLOCKS / 2) * 2;
                    tp.push(ev(start, vol, Op::Write, b, 1));
                    write_block(vol, eng.as_mut(), b, v);
                    reader_model[b as usize] = v;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let writer_model = writer.join().expect("writer");
        for b in (1..BLOCKS).step_by(2) {
            reader_model[b as usize] = writer_model[b as usize];
        }
    });
    // Let the stager finish what it has, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    drop(live);
    let st = shared.stats().expect("prefetch on");
    let mut eng = pool.engine();
    let mut all = AlignedBuf::new(BLOCKS as usize * BLOCK);
    retry("final read", || vol.read(eng.as_mut(), 0, &mut all));
    for b in 0..BLOCKS {
        assert_eq!(
            block_version(&all[b as usize * BLOCK..][..BLOCK], TAG, b),
            Ok(Some(reader_model[b as usize])),
            "seed {seed}: block {b} at the end"
        );
    }
    let hot_units: u64 = entries(vol)
        .iter()
        .filter(|(_, e)| e.tier() == 0)
        .map(|(_, e)| e.len_units())
        .sum();
    assert!(
        st.stager.resident_units <= st.stager.budget_units && hot_units <= budget / (64 << 10),
        "seed {seed}: over budget: {st:?}, {hot_units} hot units"
    );
    st
}

#[test]
fn stager_stages_ahead_of_sequential_reads_and_data_stays_right() {
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let vol = cold_volume(&pool, "pf", SHARDS, TAG);
    // promotion off: what is staged here was predicted
    let st = run(
        &pool,
        &vol,
        1,
        8 * MIB,
        PredictorKind::Readahead,
        0,
        Reads::Sequential,
    );
    eprintln!("{st:?}");
    assert_eq!(st.demand_queued, 0, "{st:?}");
    let s = &st.stager;
    assert!(st.predictions > 0 && st.queued > 0, "{st:?}");
    assert!(s.staged >= 8, "staged only {}: {st:?}", s.staged);
    assert!(s.hits > 0 && s.staged_read > 0, "{st:?}");
    assert!(
        s.evicted > 0,
        "3 passes over 24 shards with an 8-shard budget evict: {st:?}"
    );
    assert!(
        s.precision.unwrap() >= 0.5,
        "sequential readahead should be precise: {st:?}"
    );
    assert_eq!(s.stage_failed, 0);
}

#[test]
fn stager_over_a_failing_cold_tier_loses_nothing() {
    let mut faults_met = 0;
    for seed in [3u64, 4] {
        let mems = [
            Arc::new(MemDev::new("mem-hot", 64 * MIB)),
            Arc::new(MemDev::new("mem-cold", 64 * MIB)),
        ];
        {
            let pool = Pool::format_on(vec![
                (
                    "hot".into(),
                    "mem-hot".into(),
                    mems[0].clone() as Arc<dyn BlockDev>,
                ),
                (
                    "cold".into(),
                    "mem-cold".into(),
                    mems[1].clone() as Arc<dyn BlockDev>,
                ),
            ])
            .unwrap();
            cold_volume(&pool, "pf", SHARDS, TAG);
        }
        // The cold tier now fails reads and writes at random; metadata lives
        // on the hot tier, which is sound.
        let mut attempt = 0u64;
        let pool = loop {
            let cold = Arc::new(FaultDev::new(
                mems[1].clone() as Arc<dyn BlockDev>,
                FaultConfig {
                    seed: seed * 1000 + attempt,
                    read_error_prob: 0.1,
                    write_error_prob: 0.1,
                    ..Default::default()
                },
            ));
            match Pool::open_on(vec![mems[0].clone() as Arc<dyn BlockDev>, cold]) {
                Ok(p) => break p,
                Err(_) if attempt < 50 => attempt += 1,
                Err(e) => panic!("seed {seed}: open: {e}"),
            }
        };
        let vol = pool.volume("pf").unwrap();
        let st = run(
            &pool,
            &vol,
            seed,
            8 * MIB,
            PredictorKind::Readahead,
            2,
            Reads::Sequential,
        );
        eprintln!("seed {seed}: {st:?}");
        assert!(st.stager.staged > 0, "seed {seed}: {st:?}");
        faults_met += st.stager.stage_failed + st.stager.evict_failed;
    }
    assert!(faults_met > 0, "faults never hit the stager");
}

/// No predictor (`--prefetch none`): random reads of a hot set of shards
/// that fits the budget, among rewrites. Demand promotion stages every hot
/// shard on its second cold read, later reads hit, nothing else is staged,
/// and the data stays right (checked by `run`).
#[test]
fn demand_promotion_stages_a_reread_hot_set_without_a_predictor() {
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let vol = cold_volume(&pool, "pf", SHARDS, TAG);
    let st = run(
        &pool,
        &vol,
        5,
        8 * MIB,
        PredictorKind::None,
        2,
        Reads::HotSet,
    );
    eprintln!("{st:?}");
    let s = &st.stager;
    assert_eq!(st.predictions, 0, "no predictor: {st:?}");
    assert!(
        st.demand_queued >= HOT_SHARDS,
        "every hot shard asked for: {st:?}"
    );
    assert!(
        s.staged >= HOT_SHARDS && s.staged <= 2 * HOT_SHARDS,
        "{st:?}"
    );
    assert!(s.hits > 0 && s.staged_read >= HOT_SHARDS, "{st:?}");
    let hot: Vec<u64> = entries(&vol)
        .iter()
        .filter(|(_, e)| e.tier() == 0)
        .map(|(l, _)| l.slot)
        .collect();
    assert!(
        hot.iter().all(|&s| s < HOT_SHARDS) && hot.len() as u64 == HOT_SHARDS,
        "the hot set, and only it, is on the hot tier: {hot:?}"
    );
    // and off means off
    let (pool, _) = mem_pool(64 * MIB, 64 * MIB);
    let vol = cold_volume(&pool, "pf", SHARDS, TAG);
    let st = run(
        &pool,
        &vol,
        5,
        8 * MIB,
        PredictorKind::None,
        0,
        Reads::HotSet,
    );
    assert_eq!((st.demand_queued, st.stager.staged), (0, 0), "{st:?}");
}
