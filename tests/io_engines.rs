//! One suite of device/engine tests, run against every engine and device kind:
//! SyncEngine over MemDev, SyncEngine over FileDev (temp file), UringEngine over
//! FileDev (temp file) and UringEngine over a loop block device (skipped, with
//! a message, when not root or `losetup` is missing). The streaming interface
//! of UringEngine is tested at queue depth 32 on both of its device kinds,
//! under both submit policies, and when each policy hands ops to the kernel.
//!
//! Randomized tests use seed `SHARDBLK_TEST_SEED` (default 42) and print it on
//! failure.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{BLOCK_SIZE_BYTES, IO_EARLY_SUBMIT_MIN_COMPLETIONS, IO_RING_ENTRIES};
use shardblk::io::file::FileDev;
use shardblk::io::mem::MemDev;
use shardblk::io::sync_engine::SyncEngine;
use shardblk::io::uring::{
    ArenaBuf, Completion, RawKind, StreamKind, StreamOp, SubmitPolicy, UringEngine,
};
use shardblk::io::{AlignedBuf, BlockDev, DevIndex, IoEngine, IoError, IoOp};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

const BLOCK: usize = BLOCK_SIZE_BYTES as usize;
const DEV_BYTES: u64 = 8 * 1024 * 1024;
const DEV_BLOCKS: u64 = DEV_BYTES / BLOCK_SIZE_BYTES;
const DEVS: usize = 2;

fn seed() -> u64 {
    std::env::var("SHARDBLK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42)
}

/// Detaches a loop device when dropped.
struct LoopDev(String);
impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// An engine over `DEVS` devices of `DEV_BYTES`, plus what keeps them alive.
/// Field order matters: the engine drops before the loop devices and files.
struct Fixture {
    engine: Engine,
    _loops: Vec<LoopDev>,
    _dir: Option<tempfile::TempDir>,
}

enum Engine {
    Sync(SyncEngine),
    Uring(Box<UringEngine>),
}

impl Fixture {
    fn engine(&mut self) -> &mut dyn IoEngine {
        match &mut self.engine {
            Engine::Sync(e) => e,
            Engine::Uring(e) => &mut **e,
        }
    }
    fn uring(&mut self) -> &mut UringEngine {
        match &mut self.engine {
            Engine::Uring(e) => e,
            Engine::Sync(_) => panic!("not a uring fixture"),
        }
    }
}

fn temp_files() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = (0..DEVS)
        .map(|i| dir.path().join(format!("dev{i}.img")))
        .collect();
    for p in &paths {
        FileDev::create_file(p, DEV_BYTES).expect("create file");
    }
    (dir, paths)
}

fn file_devs(paths: &[PathBuf]) -> Vec<Arc<dyn BlockDev>> {
    paths
        .iter()
        .map(|p| Arc::new(FileDev::open(p).expect("open")) as Arc<dyn BlockDev>)
        .collect()
}

fn sync_mem() -> Option<Fixture> {
    let devs = (0..DEVS)
        .map(|i| Arc::new(MemDev::new(&format!("mem{i}"), DEV_BYTES)) as Arc<dyn BlockDev>)
        .collect();
    Some(Fixture {
        engine: Engine::Sync(SyncEngine::new(devs)),
        _loops: vec![],
        _dir: None,
    })
}

fn sync_file() -> Option<Fixture> {
    let (dir, paths) = temp_files();
    let engine = Engine::Sync(SyncEngine::new(file_devs(&paths)));
    Some(Fixture {
        engine,
        _loops: vec![],
        _dir: Some(dir),
    })
}

fn uring_file() -> Option<Fixture> {
    let (dir, paths) = temp_files();
    let engine = Engine::Uring(Box::new(
        UringEngine::new(file_devs(&paths)).expect("uring engine"),
    ));
    Some(Fixture {
        engine,
        _loops: vec![],
        _dir: Some(dir),
    })
}

/// Attach loop devices to temp files; `None` (after saying why) when this
/// cannot be done here.
fn loop_devices() -> Option<(tempfile::TempDir, Vec<LoopDev>)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP loop-device tests: not root");
        return None;
    }
    let (dir, paths) = temp_files();
    let mut loops = Vec::new();
    for p in &paths {
        let out = match Command::new("losetup")
            .arg("-f")
            .arg("--show")
            .arg(p)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("SKIP loop-device tests: cannot run losetup: {e}");
                return None;
            }
        };
        if !out.status.success() {
            eprintln!(
                "SKIP loop-device tests: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        loops.push(LoopDev(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    Some((dir, loops))
}

fn uring_loop() -> Option<Fixture> {
    let (dir, loops) = loop_devices()?;
    let devs: Vec<Arc<dyn BlockDev>> = loops
        .iter()
        .map(|l| {
            let d = FileDev::open(&l.0).expect("open loop device");
            assert!(d.is_block_device());
            assert_eq!(d.size_bytes(), DEV_BYTES);
            Arc::new(d) as Arc<dyn BlockDev>
        })
        .collect();
    let engine = Engine::Uring(Box::new(UringEngine::new(devs).expect("uring engine")));
    Some(Fixture {
        engine,
        _loops: loops,
        _dir: Some(dir),
    })
}

fn random_buf(rng: &mut ChaCha8Rng, len: usize) -> AlignedBuf {
    let mut b = AlignedBuf::new(len);
    rng.fill(&mut b[..]);
    b
}

/// Random batches of writes (non-overlapping within a batch) then reads, on
/// both devices, checked against an in-memory model.
fn t_round_trip(f: &mut Fixture) {
    let seed = seed();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model = vec![vec![0u8; DEV_BYTES as usize]; DEVS];
    for round in 0..20 {
        let n = rng.random_range(1..48);
        let mut used: Vec<Vec<bool>> = vec![vec![false; DEV_BLOCKS as usize]; DEVS];
        let mut writes = Vec::new();
        for _ in 0..n {
            let dev = rng.random_range(0..DEVS);
            let blocks = rng.random_range(1..=16u64);
            let start = rng.random_range(0..=DEV_BLOCKS - blocks);
            let r = start as usize..(start + blocks) as usize;
            if used[dev][r.clone()].iter().any(|&u| u) {
                continue;
            }
            used[dev][r].iter_mut().for_each(|u| *u = true);
            let buf = random_buf(&mut rng, blocks as usize * BLOCK);
            let o = (start * BLOCK_SIZE_BYTES) as usize;
            model[dev][o..o + buf.len()].copy_from_slice(&buf);
            writes.push((dev, start * BLOCK_SIZE_BYTES, buf));
        }
        let mut ops: Vec<IoOp> = writes
            .iter()
            .map(|(d, off, b)| IoOp::write(DevIndex(*d as u16), *off, b))
            .collect();
        f.engine()
            .run_all(&mut ops)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));

        let reads: Vec<(usize, u64, usize)> = (0..rng.random_range(1..48))
            .map(|_| {
                let blocks = rng.random_range(1..=32u64);
                let start = rng.random_range(0..=DEV_BLOCKS - blocks);
                (
                    rng.random_range(0..DEVS),
                    start * BLOCK_SIZE_BYTES,
                    blocks as usize * BLOCK,
                )
            })
            .collect();
        let mut bufs: Vec<AlignedBuf> = reads.iter().map(|r| AlignedBuf::new(r.2)).collect();
        let mut ops: Vec<IoOp> = reads
            .iter()
            .zip(bufs.iter_mut())
            .map(|((d, off, _), b)| IoOp::read(DevIndex(*d as u16), *off, b))
            .collect();
        f.engine()
            .run_all(&mut ops)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
        drop(ops);
        for ((d, off, len), b) in reads.iter().zip(&bufs) {
            let o = *off as usize;
            assert!(
                b[..] == model[*d][o..o + len],
                "seed {seed} round {round}: dev {d} offset {off} len {len} differs"
            );
        }
    }
}

/// Misaligned and out-of-range ops fail alone, change nothing, and the good
/// ops of the same batch succeed.
fn t_rejects_bad_transfers(f: &mut Fixture) {
    let good = {
        let mut b = AlignedBuf::new(BLOCK);
        b.fill(0xA5);
        b
    };
    let big = AlignedBuf::new(3 * BLOCK);
    let mut ops = vec![
        IoOp::write(DevIndex(0), 0, &good),
        IoOp::write(DevIndex(0), 512, &good), // misaligned offset
        IoOp::write(DevIndex(0), BLOCK_SIZE_BYTES, &good[..512]), // misaligned length
        IoOp::write(DevIndex(0), 2 * BLOCK_SIZE_BYTES, &big[512..512 + BLOCK]), // misaligned memory
        IoOp::write(DevIndex(1), DEV_BYTES - BLOCK_SIZE_BYTES, &big), // past the end
        IoOp::write(DevIndex(1), DEV_BYTES, &good), // at the end
        IoOp::write(DevIndex(1), u64::MAX - BLOCK_SIZE_BYTES + 1, &good), // overflow
        IoOp::write(DevIndex(1), 0, &good),
    ];
    f.engine().run(&mut ops).expect("engine");
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| match &o.result {
            Ok(()) => "ok",
            Err(IoError::Misaligned { .. }) => "misaligned",
            Err(IoError::OutOfRange { .. }) => "range",
            Err(_) => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ok",
            "misaligned",
            "misaligned",
            "misaligned",
            "range",
            "range",
            "range",
            "ok"
        ]
    );
    drop(ops);
    // Nothing but the good writes reached the devices.
    let mut r = AlignedBuf::new(4 * BLOCK);
    f.engine()
        .run_all(&mut [IoOp::read(DevIndex(0), 0, &mut r)])
        .unwrap();
    assert!(r[..BLOCK].iter().all(|&b| b == 0xA5));
    assert!(
        r[BLOCK..].iter().all(|&b| b == 0),
        "rejected writes changed the device"
    );
    let mut r = AlignedBuf::new(3 * BLOCK);
    f.engine()
        .run_all(&mut [IoOp::read(
            DevIndex(1),
            DEV_BYTES - 3 * BLOCK_SIZE_BYTES,
            &mut r,
        )])
        .unwrap();
    assert!(
        r.iter().all(|&b| b == 0),
        "rejected writes changed the device"
    );
    // Misaligned reads are rejected too.
    let mut r = AlignedBuf::new(2 * BLOCK);
    let mut ops = [IoOp::read(DevIndex(0), 0, &mut r[512..512 + BLOCK])];
    f.engine().run(&mut ops).unwrap();
    assert!(matches!(ops[0].result, Err(IoError::Misaligned { .. })));
}

/// The same offset on two devices holds two different blocks.
fn t_multi_device(f: &mut Fixture) {
    let mut a = AlignedBuf::new(BLOCK);
    a.fill(1);
    let mut b = AlignedBuf::new(BLOCK);
    b.fill(2);
    let off = 77 * BLOCK_SIZE_BYTES;
    f.engine()
        .run_all(&mut [
            IoOp::write(DevIndex(0), off, &a),
            IoOp::write(DevIndex(1), off, &b),
        ])
        .unwrap();
    let mut ra = AlignedBuf::new(BLOCK);
    let mut rb = AlignedBuf::new(BLOCK);
    f.engine()
        .run_all(&mut [
            IoOp::read(DevIndex(1), off, &mut rb),
            IoOp::read(DevIndex(0), off, &mut ra),
        ])
        .unwrap();
    assert!(ra.iter().all(|&x| x == 1) && rb.iter().all(|&x| x == 2));
}

/// Writes followed by syncs in one batch all succeed and the data is there.
fn t_sync(f: &mut Fixture) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ 1);
    let bufs: Vec<AlignedBuf> = (0..8).map(|_| random_buf(&mut rng, 2 * BLOCK)).collect();
    let mut ops: Vec<IoOp> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            IoOp::write(
                DevIndex((i % 2) as u16),
                (i as u64) * 8 * BLOCK_SIZE_BYTES,
                b,
            )
        })
        .collect();
    ops.push(IoOp::sync(DevIndex(0)));
    ops.push(IoOp::sync(DevIndex(1)));
    ops.push(IoOp::write(DevIndex(0), 1000 * BLOCK_SIZE_BYTES, &bufs[0]));
    ops.push(IoOp::sync(DevIndex(0)));
    f.engine().run(&mut ops).unwrap();
    for (i, o) in ops.iter().enumerate() {
        assert!(o.result.is_ok(), "op {i}: {:?}", o.result);
    }
    drop(ops);
    for (i, b) in bufs.iter().enumerate() {
        let mut r = AlignedBuf::new(2 * BLOCK);
        f.engine()
            .run_all(&mut [IoOp::read(
                DevIndex((i % 2) as u16),
                (i as u64) * 8 * BLOCK_SIZE_BYTES,
                &mut r,
            )])
            .unwrap();
        assert!(r[..] == b[..], "block {i}");
    }
}

/// Errors are reported per op: an unknown device fails alone.
fn t_errors_per_op(f: &mut Fixture) {
    let mut a = AlignedBuf::new(BLOCK);
    a.fill(9);
    let mut r = AlignedBuf::new(BLOCK);
    let mut ops = vec![
        IoOp::write(DevIndex(0), 0, &a),
        IoOp::write(DevIndex(DEVS as u16), 0, &a),
        IoOp::sync(DevIndex(7)),
        IoOp::read(DevIndex(1), DEV_BYTES, &mut r),
        IoOp::sync(DevIndex(0)),
    ];
    f.engine().run(&mut ops).unwrap();
    assert!(ops[0].result.is_ok());
    assert!(matches!(
        ops[1].result,
        Err(IoError::NoDevice { index: 2, count: 2 })
    ));
    assert!(matches!(
        ops[2].result,
        Err(IoError::NoDevice { index: 7, .. })
    ));
    assert!(matches!(ops[3].result, Err(IoError::OutOfRange { .. })));
    assert!(ops[4].result.is_ok());
    // run_all returns the first per-op error.
    let mut ops = vec![IoOp::read(DevIndex(0), 0, &mut r), IoOp::sync(DevIndex(9))];
    assert!(matches!(
        f.engine().run_all(&mut ops),
        Err(IoError::NoDevice { .. })
    ));
    assert!(ops[0].result.is_ok());
}

/// A batch several times larger than the ring.
fn t_large_batch(f: &mut Fixture) {
    let n = 3 * IO_RING_ENTRIES as usize + 7;
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ 2);
    let bufs: Vec<AlignedBuf> = (0..n).map(|_| random_buf(&mut rng, BLOCK)).collect();
    let place = |i: usize| {
        (
            DevIndex((i % DEVS) as u16),
            (i / DEVS) as u64 * BLOCK_SIZE_BYTES,
        )
    };
    let mut ops: Vec<IoOp> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (d, o) = place(i);
            IoOp::write(d, o, b)
        })
        .collect();
    f.engine().run_all(&mut ops).unwrap();
    let mut rbufs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::new(BLOCK)).collect();
    let mut ops: Vec<IoOp> = rbufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            let (d, o) = place(i);
            IoOp::read(d, o, b)
        })
        .collect();
    f.engine().run_all(&mut ops).unwrap();
    drop(ops);
    for i in 0..n {
        assert!(rbufs[i][..] == bufs[i][..], "op {i} of {n}");
    }
}

macro_rules! suite {
    ($($module:ident => $make:ident),* $(,)?) => {$(
        mod $module {
            use super::*;
            #[test]
            fn round_trip() {
                if let Some(mut f) = $make() { t_round_trip(&mut f) }
            }
            #[test]
            fn rejects_bad_transfers() {
                if let Some(mut f) = $make() { t_rejects_bad_transfers(&mut f) }
            }
            #[test]
            fn multi_device() {
                if let Some(mut f) = $make() { t_multi_device(&mut f) }
            }
            #[test]
            fn sync() {
                if let Some(mut f) = $make() { t_sync(&mut f) }
            }
            #[test]
            fn errors_per_op() {
                if let Some(mut f) = $make() { t_errors_per_op(&mut f) }
            }
            #[test]
            fn large_batch() {
                if let Some(mut f) = $make() { t_large_batch(&mut f) }
            }
        }
    )*};
}

suite! {
    sync_mem => sync_mem,
    sync_file => sync_file,
    uring_file => uring_file,
    uring_loop => uring_loop,
}

const QD: usize = 32;

/// Write then read back random extents through the streaming interface,
/// keeping `QD` ops in flight.
fn t_stream_qd32(f: &mut Fixture) {
    let seed = seed() ^ 3;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let eng = f.uring();
    let arena = eng.arena().clone();
    // Distinct 4..64 KiB extents on both devices.
    let total = 400usize;
    let mut extents = Vec::new();
    let mut next = [0u64; DEVS];
    for i in 0..total {
        let d = i % DEVS;
        let blocks = rng.random_range(1..=16u64);
        extents.push((
            d,
            next[d] * BLOCK_SIZE_BYTES,
            blocks as usize * BLOCK,
            rng.random::<u64>(),
        ));
        next[d] += blocks + rng.random_range(0..4u64);
    }
    assert!(next.iter().all(|&n| n <= DEV_BLOCKS));
    let fill = |b: &mut [u8], s: u64| ChaCha8Rng::seed_from_u64(s).fill(b);

    let mut out: Vec<Completion> = Vec::with_capacity(QD);
    let mut max_pending = 0;
    for phase in ["write", "read"] {
        let mut issued = 0;
        let mut done = 0;
        while done < total {
            while issued < total && eng.stream_pending() < QD {
                let (d, off, len, s) = extents[issued];
                let mut buf = arena.alloc().expect("arena slot");
                let kind = if phase == "write" {
                    fill(&mut buf[..len], s);
                    StreamKind::Write { buf, len }
                } else {
                    StreamKind::Read { buf, len }
                };
                let op = StreamOp {
                    dev: DevIndex(d as u16),
                    offset: off,
                    kind,
                    user_data: issued as u64,
                };
                assert!(
                    eng.submit(op).is_ok(),
                    "ring full at {}",
                    eng.stream_pending()
                );
                issued += 1;
            }
            max_pending = max_pending.max(eng.stream_pending());
            out.clear();
            let n = eng.reap(1, &mut out).expect("reap");
            assert!(n >= 1 && n == out.len());
            for c in out.drain(..) {
                let i = c.user_data as usize;
                c.result
                    .unwrap_or_else(|e| panic!("seed {seed} {phase} {i}: {e}"));
                let buf = c.buf.expect("buffer returned");
                if phase == "read" {
                    let (_, _, len, s) = extents[i];
                    let mut want = vec![0u8; len];
                    fill(&mut want, s);
                    assert!(buf[..len] == want[..], "seed {seed}: extent {i} differs");
                }
                done += 1;
            }
        }
        if phase == "write" {
            // Every write is reaped: a sync now covers them all.
            for d in 0..DEVS {
                let op = StreamOp {
                    dev: DevIndex(d as u16),
                    offset: 0,
                    kind: StreamKind::Sync,
                    user_data: 9999,
                };
                assert!(eng.submit(op).is_ok());
            }
            out.clear();
            eng.reap(DEVS, &mut out).unwrap();
            assert_eq!(out.len(), DEVS);
            assert!(out
                .iter()
                .all(|c| c.result.is_ok() && c.buf.is_none() && c.user_data == 9999));
        }
    }
    assert_eq!(max_pending, QD);
    assert_eq!(eng.stream_pending(), 0);
    assert_eq!(
        arena.free_slots(),
        arena.slots(),
        "every slot went back to the arena"
    );

    // The batch interface agrees with what the stream wrote.
    let (d, off, len, s) = extents[123];
    let mut r = AlignedBuf::new(len);
    eng.run_all(&mut [IoOp::read(DevIndex(d as u16), off, &mut r)])
        .unwrap();
    let mut want = vec![0u8; len];
    fill(&mut want, s);
    assert!(r[..] == want[..]);
}

/// Invalid stream ops complete with their error and give the buffer back; a
/// full ring hands the op back; raw ops work on caller memory.
fn t_stream_edges(f: &mut Fixture) {
    let eng = f.uring();
    let arena = eng.arena().clone();
    let mut out = Vec::new();
    let buf = arena.alloc().unwrap();
    let op = StreamOp {
        dev: DevIndex(0),
        offset: 100,
        kind: StreamKind::Read { buf, len: BLOCK },
        user_data: 1,
    };
    assert!(eng.submit(op).is_ok());
    let buf = arena.alloc().unwrap();
    let len = buf.len() + BLOCK;
    let op = StreamOp {
        dev: DevIndex(0),
        offset: 0,
        kind: StreamKind::Read { buf, len },
        user_data: 2,
    };
    assert!(eng.submit(op).is_ok());
    let buf = arena.alloc().unwrap();
    let op = StreamOp {
        dev: DevIndex(5),
        offset: 0,
        kind: StreamKind::Write { buf, len: BLOCK },
        user_data: 3,
    };
    assert!(eng.submit(op).is_ok());
    eng.reap(3, &mut out).unwrap();
    out.sort_by_key(|c| c.user_data);
    assert!(matches!(out[0].result, Err(IoError::Misaligned { .. })));
    assert!(out[1].result.is_err());
    assert!(matches!(
        out[2].result,
        Err(IoError::NoDevice { index: 5, .. })
    ));
    assert!(out.iter().all(|c| c.buf.is_some()));
    out.clear();
    assert_eq!(arena.free_slots(), arena.slots());

    // Fill the ring with syncs: the next op comes back.
    let cap = eng.capacity();
    for i in 0..cap {
        let op = StreamOp {
            dev: DevIndex((i % DEVS) as u16),
            offset: 0,
            kind: StreamKind::Sync,
            user_data: i as u64,
        };
        assert!(eng.submit(op).is_ok(), "op {i} of {cap}");
    }
    let op = StreamOp {
        dev: DevIndex(0),
        offset: 0,
        kind: StreamKind::Sync,
        user_data: 0,
    };
    assert!(eng.submit(op).is_err(), "a full ring must refuse");
    let mut got = 0;
    while got < cap {
        got += eng.reap(1, &mut out).unwrap();
    }
    assert!(out.iter().all(|c| c.result.is_ok()));
    out.clear();

    // Raw ops on caller memory (not in the arena).
    let mut w = AlignedBuf::new(2 * BLOCK);
    w.fill(0x3C);
    let mut r = AlignedBuf::new(2 * BLOCK);
    // SAFETY: w and r outlive the reap below, which returns both completions.
    unsafe {
        eng.submit_raw(
            DevIndex(1),
            64 * BLOCK_SIZE_BYTES,
            RawKind::Write {
                ptr: w.as_ptr(),
                len: w.len(),
            },
            7,
        )
        .unwrap();
    }
    eng.reap(1, &mut out).unwrap();
    assert!(out[0].result.is_ok() && out[0].user_data == 7);
    // SAFETY: as above.
    unsafe {
        eng.submit_raw(
            DevIndex(1),
            64 * BLOCK_SIZE_BYTES,
            RawKind::Read {
                ptr: r.as_mut_ptr(),
                len: r.len(),
            },
            8,
        )
        .unwrap();
    }
    out.clear();
    eng.reap(1, &mut out).unwrap();
    assert!(out[0].result.is_ok() && out[0].user_data == 8);
    assert!(r.iter().all(|&b| b == 0x3C));
}

/// When queued stream ops reach the kernel: `Early` hands them over in
/// chunks of 1, 2, 4, ... after a reap of at least
/// `IO_EARLY_SUBMIT_MIN_COMPLETIONS`, and not after a smaller one; `Batched`
/// leaves everything for the next reap. Every op completes either way.
fn t_submit_policy(f: &mut Fixture) {
    let eng = f.uring();
    assert_eq!(eng.submit_policy(), SubmitPolicy::Early, "the default");
    let arena = eng.arena().clone();
    let read = |buf: ArenaBuf, i: usize| StreamOp {
        dev: DevIndex((i % DEVS) as u16),
        offset: (i * BLOCK) as u64,
        kind: StreamKind::Read { buf, len: BLOCK },
        user_data: i as u64,
    };
    let n = IO_EARLY_SUBMIT_MIN_COMPLETIONS;
    let mut out = Vec::new();
    for policy in [SubmitPolicy::Early, SubmitPolicy::Batched] {
        eng.set_submit_policy(policy);
        // Nothing reaped yet: the first ops wait for the reap.
        for i in 0..n {
            assert!(eng.submit(read(arena.alloc().unwrap(), i)).is_ok());
        }
        assert_eq!(eng.unsubmitted(), n, "{policy:?}: before any reap");
        out.clear();
        assert_eq!(eng.reap(n, &mut out).unwrap(), n);
        // A refill after a reap of `n`.
        let e0 = eng.enters();
        let mut left = Vec::new();
        for i in 0..7 {
            assert!(eng.submit(read(arena.alloc().unwrap(), i)).is_ok());
            left.push(eng.unsubmitted());
        }
        match policy {
            SubmitPolicy::Early => {
                assert_eq!(left, [0, 1, 0, 1, 2, 3, 0], "chunks of 1, 2, 4");
                assert_eq!(eng.enters() - e0, 3, "one enter per chunk");
            }
            SubmitPolicy::Batched => {
                assert_eq!(left, [1, 2, 3, 4, 5, 6, 7]);
                assert_eq!(eng.enters(), e0, "no syscall before the reap");
            }
        }
        out.clear();
        assert_eq!(eng.reap(7, &mut out).unwrap(), 7);
        // A reap of fewer completions does not arm early submission.
        assert!(eng.submit(read(arena.alloc().unwrap(), 0)).is_ok());
        out.clear();
        assert_eq!(eng.reap(1, &mut out).unwrap(), 1);
        assert!(n > 1);
        assert!(eng.submit(read(arena.alloc().unwrap(), 1)).is_ok());
        assert_eq!(eng.unsubmitted(), 1, "{policy:?}: after a reap of one");
        out.clear();
        assert_eq!(eng.reap(1, &mut out).unwrap(), 1);
        assert!(out.iter().all(|c| c.result.is_ok()));
        out.clear();
        assert_eq!(eng.stream_pending(), 0);
        assert_eq!(arena.free_slots(), arena.slots());
    }
}

mod uring_stream {
    use super::*;
    #[test]
    fn file_qd32() {
        t_stream_qd32(&mut uring_file().unwrap())
    }
    #[test]
    fn loop_qd32() {
        if let Some(mut f) = uring_loop() {
            t_stream_qd32(&mut f)
        }
    }
    #[test]
    fn file_qd32_batched() {
        let mut f = uring_file().unwrap();
        f.uring().set_submit_policy(SubmitPolicy::Batched);
        t_stream_qd32(&mut f)
    }
    #[test]
    fn loop_qd32_batched() {
        if let Some(mut f) = uring_loop() {
            f.uring().set_submit_policy(SubmitPolicy::Batched);
            t_stream_qd32(&mut f)
        }
    }
    #[test]
    fn file_submit_policy() {
        t_submit_policy(&mut uring_file().unwrap())
    }
    #[test]
    fn file_edges() {
        t_stream_edges(&mut uring_file().unwrap())
    }
}

#[test]
fn uring_refuses_fake_devices() {
    let devs: Vec<Arc<dyn BlockDev>> = vec![Arc::new(MemDev::new("memfake", DEV_BYTES))];
    match UringEngine::new(devs) {
        Err(IoError::Ring(m)) => assert!(m.contains("memfake"), "{m}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a fake device must be refused"),
    }
}

#[test]
fn block_device_is_opened_exclusively() {
    let Some((_dir, loops)) = loop_devices() else {
        return;
    };
    let first = FileDev::open(&loops[0].0).expect("first open");
    let e = FileDev::open(&loops[0].0).expect_err("second open must be refused");
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    assert!(e.to_string().contains(&loops[0].0), "{e}");
    drop(first);
    let _again = FileDev::open(&loops[0].0).expect("open after close");
}

/// Data written and synced through the engine is in the file after the
/// engine is gone (read back with ordinary buffered I/O).
#[test]
fn uring_writes_reach_the_file() {
    let (dir, paths) = temp_files();
    let mut w = AlignedBuf::new(BLOCK);
    w.fill(0x5A);
    {
        let mut eng = UringEngine::new(file_devs(&paths)).unwrap();
        eng.run_all(&mut [
            IoOp::write(DevIndex(1), 3 * BLOCK_SIZE_BYTES, &w),
            IoOp::sync(DevIndex(1)),
        ])
        .unwrap();
    }
    let data = std::fs::read(&paths[1]).unwrap();
    let o = 3 * BLOCK;
    assert!(data[o..o + BLOCK].iter().all(|&b| b == 0x5A));
    assert!(data[..o].iter().all(|&b| b == 0));
    drop(dir);
}

/// A file that shrank under an open device: a read spanning the new end of
/// file gets a partial transfer, the engine resubmits the remainder, which
/// reads 0 bytes and ends in `IoError::Short` reporting what was done.
#[test]
fn short_reads_are_resumed_then_reported() {
    for uring in [false, true] {
        let (_dir, paths) = temp_files();
        let devs = file_devs(&paths);
        let mut engine: Box<dyn IoEngine> = if uring {
            Box::new(UringEngine::new(devs).unwrap())
        } else {
            Box::new(SyncEngine::new(devs))
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[0])
            .unwrap();
        f.set_len(DEV_BYTES - 2 * BLOCK_SIZE_BYTES).unwrap();
        let mut r = AlignedBuf::new(4 * BLOCK);
        let off = DEV_BYTES - 4 * BLOCK_SIZE_BYTES;
        let mut ops = [IoOp::read(DevIndex(0), off, &mut r)];
        engine.run(&mut ops).unwrap();
        match &ops[0].result {
            Err(IoError::Short { offset, len, done }) => {
                assert_eq!(
                    (*offset, *len, *done),
                    (off, 4 * BLOCK, 2 * BLOCK),
                    "uring {uring}"
                )
            }
            other => panic!("uring {uring}: expected a short read, got {other:?}"),
        }
    }
}

/// Batch ops on arena buffers (fixed-buffer opcodes), at an offset inside
/// the slot, round-trip like any other buffer.
#[test]
fn uring_batch_with_arena_buffers() {
    let mut f = uring_file().unwrap();
    let eng = f.uring();
    let arena = eng.arena().clone();
    let mut w = arena.alloc().unwrap();
    let mut r = arena.alloc().unwrap();
    ChaCha8Rng::seed_from_u64(seed() ^ 4).fill(&mut w[..]);
    let (a, b) = (3 * BLOCK, 5 * BLOCK);
    eng.run_all(&mut [IoOp::write(
        DevIndex(1),
        40 * BLOCK_SIZE_BYTES,
        &w[a..a + b],
    )])
    .unwrap();
    eng.run_all(&mut [IoOp::read(
        DevIndex(1),
        40 * BLOCK_SIZE_BYTES,
        &mut r[BLOCK..BLOCK + b],
    )])
    .unwrap();
    assert!(r[BLOCK..BLOCK + b] == w[a..a + b]);
    assert!(r[..BLOCK].iter().all(|&x| x == 0) && r[BLOCK + b..].iter().all(|&x| x == 0));
    drop((w, r));
    assert_eq!(arena.free_slots(), arena.slots());
}
