//! Benchmark: the volume engine and its io_uring device layer against fio on
//! the same file.
//!
//! Creates a 1 GiB file in each directory of `SHARDBLK_BENCH_DIR` (a comma
//! list, default `/var/tmp,/dev/shm`: a disk file, then a tmpfs file whose
//! `O_DIRECT` reads are bound by the CPU, not a device, so that table shows
//! the engines' own cost; skipped with a message where tmpfs lacks
//! `O_DIRECT`, before Linux 6.6), makes
//! it a one-tier pool and fills a volume (1 MiB shards) spanning it through
//! the engine with random data, then runs each workload (4 KiB random read
//! at QD 1 and QD 32, 1 MiB sequential read at QD 4) with
//! `fio --ioengine=io_uring --direct=1` on the file, with the raw
//! [`UringEngine`] streaming interface on the file (`shardblk`: the default
//! early submission; `batched`: [`SubmitPolicy::Batched`], everything queued
//! goes with the next reap, the engine before early submission), and through
//! the volume engine (composer translation per request, then the same
//! streaming engine, early submission). Each runner runs each workload twice
//! in the order A B C C B A; the mean is reported in one table of IOPS, MB/s,
//! CPU time per I/O (`us/IO`: user + system of the whole process, fio's as
//! its finished child), I/Os per `io_uring_enter` call (`IO/ent`, ours only)
//! and the IOPS ratio to fio.
//! `SHARDBLK_BENCH_SECS` sets the time per run (default 5),
//! `SHARDBLK_BENCH_ROUNDS` the number of such rounds (default 2). The bench
//! and fio run pinned to one CPU (`SHARDBLK_BENCH_CPU`, default the last).
//! For profiling, `SHARDBLK_BENCH_RUNNERS` (e.g. `fio,shardblk,volume`) and
//! `SHARDBLK_BENCH_WORKLOADS` (e.g. `4k randread QD32`) keep only the named
//! ones (the ratio column is then against the first runner kept).
//!
//! Every column is a [`Runner`]; the first is the baseline of the ratios.
//!
//! Run: `cargo bench --bench io_vs_fio`.

use anyhow::{bail, Context, Result};
use crossbeam_epoch as epoch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{BLOCK_SIZE_BYTES, UNIT_SIZE_BYTES};
use shardblk::io::file::FileDev;
use shardblk::io::uring::{ArenaBuf, Completion, StreamKind, StreamOp, SubmitPolicy, UringEngine};
use shardblk::io::{AlignedBuf, BlockDev, DevIndex};
use shardblk::shard::policy::TierPolicy;
use shardblk::shard::pool::{Pool, TierSpec};
use shardblk::volume::handle::Volume;
use shardblk::volume::split::PieceKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILE_BYTES: u64 = 1 << 30;
const FILL_CHUNK_BYTES: usize = 1 << 20;
/// Shard size of the bench volume.
const SHARD_BYTES: u64 = 1 << 20;

/// One workload: block size, queue depth, pattern, duration.
#[derive(Debug, Clone)]
struct Workload {
    name: &'static str,
    block_bytes: usize,
    qd: usize,
    random: bool,
    duration: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    iops: f64,
    mb_per_s: f64,
    /// CPU time (user + system, every thread of the process doing the
    /// I/O, io_uring workers included) per operation, microseconds.
    cpu_us_per_op: f64,
    /// Operations per `io_uring_enter` call (our engines only; 0 = unknown).
    ops_per_enter: f64,
}

impl Figures {
    fn from_counts(ops: u64, bytes: u64, elapsed: Duration, cpu: Duration, enters: u64) -> Figures {
        let s = elapsed.as_secs_f64();
        Figures {
            iops: ops as f64 / s,
            mb_per_s: bytes as f64 / 1e6 / s,
            cpu_us_per_op: cpu.as_secs_f64() * 1e6 / ops.max(1) as f64,
            ops_per_enter: ops as f64 / enters.max(1) as f64,
        }
    }
}

/// CPU time this process has used so far (user + system, all threads).
fn process_cpu() -> Duration {
    cpu_of(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of `who` (`RUSAGE_SELF`, or `RUSAGE_CHILDREN`:
/// every waited-for child, all its threads).
fn cpu_of(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One column group of the table: something that can run a workload on the
/// bench file.
trait Runner {
    fn name(&self) -> &str;
    fn run(&mut self, w: &Workload) -> Result<Figures>;
}

/// fio with its io_uring engine, direct I/O, one job.
struct Fio {
    path: PathBuf,
}

impl Runner for Fio {
    fn name(&self) -> &str {
        "fio"
    }
    fn run(&mut self, w: &Workload) -> Result<Figures> {
        let cpu0 = cpu_of(libc::RUSAGE_CHILDREN);
        let out = Command::new("fio")
            .arg("--name=bench")
            .arg(format!("--filename={}", self.path.display()))
            .arg("--ioengine=io_uring")
            .arg("--direct=1")
            .arg(format!(
                "--rw={}",
                if w.random { "randread" } else { "read" }
            ))
            .arg(format!("--bs={}", w.block_bytes))
            .arg(format!("--iodepth={}", w.qd))
            .arg(format!("--size={FILE_BYTES}"))
            .arg("--time_based=1")
            .arg(format!("--runtime={}s", w.duration.as_secs().max(1)))
            .arg("--output-format=json")
            .output()
            .context("running fio (apt install fio)")?;
        if !out.status.success() {
            bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing fio JSON")?;
        let read = &v["jobs"][0]["read"];
        let iops = read["iops"]
            .as_f64()
            .context("fio JSON lacks jobs[0].read.iops")?;
        let bw = read["bw_bytes"]
            .as_f64()
            .context("fio JSON lacks jobs[0].read.bw_bytes")?;
        // fio's CPU as the kernel counted it for the finished child (all its
        // processes and threads; its start-up is a few ms of a run).
        let cpu = cpu_of(libc::RUSAGE_CHILDREN) - cpu0;
        let ios = read["total_ios"].as_f64().unwrap_or(0.0).max(1.0);
        Ok(Figures {
            iops,
            mb_per_s: bw / 1e6,
            cpu_us_per_op: cpu.as_secs_f64() * 1e6 / ios,
            ops_per_enter: 0.0,
        })
    }
}

/// shardblk's UringEngine, streaming interface, arena buffers.
struct Ours {
    engine: UringEngine,
    blocks_in_file: u64,
    name: &'static str,
}

impl Ours {
    fn new(path: &Path, policy: SubmitPolicy) -> Result<Ours> {
        let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(path)?);
        let blocks_in_file = dev.size_bytes() / BLOCK_SIZE_BYTES;
        let mut engine = UringEngine::new(vec![dev])?;
        engine.set_submit_policy(policy);
        Ok(Ours {
            engine,
            blocks_in_file,
            name: match policy {
                SubmitPolicy::Early => "shardblk uring",
                SubmitPolicy::Batched => "batched uring",
            },
        })
    }
}

impl Runner for Ours {
    fn name(&self) -> &str {
        self.name
    }
    fn run(&mut self, w: &Workload) -> Result<Figures> {
        let positions = self.blocks_in_file / (w.block_bytes as u64 / BLOCK_SIZE_BYTES);
        stream_reads(&mut self.engine, w, positions, 11, |eng, off, buf| {
            submit_read(eng, DevIndex(0), off, buf, w.block_bytes)
        })
    }
}

/// Keep `w.qd` reads of `w.block_bytes` in flight on `engine` for
/// `w.duration`, each submitted by `submit(engine, offset, buffer)`; offsets
/// follow the workload's pattern over `positions` aligned positions.
fn stream_reads(
    engine: &mut UringEngine,
    w: &Workload,
    positions: u64,
    seed: u64,
    mut submit: impl FnMut(&mut UringEngine, u64, ArenaBuf) -> Result<()>,
) -> Result<Figures> {
    let arena = engine.arena().clone();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seq = 0u64;
    let mut next_offset = move || {
        let pos = if w.random {
            rng.random_range(0..positions)
        } else {
            seq = (seq + 1) % positions;
            seq
        };
        pos * w.block_bytes as u64
    };
    let mut out: Vec<Completion> = Vec::with_capacity(w.qd);
    let enters0 = engine.enters();
    let mut enters = 0;
    let cpu0 = process_cpu();
    let mut cpu = Duration::ZERO;
    let start = Instant::now();
    let deadline = start + w.duration;
    for _ in 0..w.qd {
        let buf = arena.alloc().context("arena exhausted")?;
        submit(engine, next_offset(), buf)?;
    }
    let mut ops = 0u64;
    let mut stopping = false;
    let mut elapsed = Duration::ZERO;
    while engine.stream_pending() > 0 {
        out.clear();
        engine.reap(1, &mut out)?;
        for c in out.drain(..) {
            c.result?;
            if stopping {
                continue;
            }
            ops += 1;
            let buf = c.buf.context("read completion without its buffer")?;
            submit(engine, next_offset(), buf)?;
        }
        // Reading the clock every reap is cheap next to a syscall.
        if !stopping && Instant::now() >= deadline {
            stopping = true;
            elapsed = start.elapsed();
            cpu = process_cpu() - cpu0;
            enters = engine.enters() - enters0;
        }
    }
    Ok(Figures::from_counts(
        ops,
        ops * w.block_bytes as u64,
        elapsed,
        cpu,
        enters,
    ))
}

/// Queue one read of `len` bytes at `offset` of device `dev` into `buf`.
fn submit_read(
    engine: &mut UringEngine,
    dev: DevIndex,
    offset: u64,
    buf: ArenaBuf,
    len: usize,
) -> Result<()> {
    let op = StreamOp {
        dev,
        offset,
        kind: StreamKind::Read { buf, len },
        user_data: 0,
    };
    if engine.submit(op).is_err() {
        bail!("ring full");
    }
    Ok(())
}

/// Reads through the volume engine: each request is translated by the
/// composer (`Volume::map_read`: one atomic load per shard, access
/// statistics) and its pieces are streamed on a UringEngine over the pool's
/// devices, with registered files and buffers, keeping the queue depth full.
struct ThroughVolume {
    vol: Volume,
    engine: UringEngine,
}

impl ThroughVolume {
    fn new(pool: &Pool, vol: Volume) -> Result<ThroughVolume> {
        Ok(ThroughVolume {
            engine: UringEngine::new(pool.devices())?,
            vol,
        })
    }
}

impl Runner for ThroughVolume {
    fn name(&self) -> &str {
        "volume engine"
    }
    fn run(&mut self, w: &Workload) -> Result<Figures> {
        let positions = self.vol.size_bytes() / w.block_bytes as u64;
        let vol = &self.vol;
        // One pin for the run: no extent is freed while the bench runs.
        let guard = epoch::pin();
        stream_reads(&mut self.engine, w, positions, 13, |eng, off, buf| {
            let mut piece = None;
            vol.map_read(&guard, off, w.block_bytes as u64, |p| {
                assert!(piece.is_none(), "aligned requests resolve to one piece");
                piece = Some(p);
            })?;
            match piece.context("no piece")?.kind {
                PieceKind::Mapped {
                    tier,
                    device_byte_offset,
                } => submit_read(
                    eng,
                    DevIndex(tier as u16),
                    device_byte_offset,
                    buf,
                    w.block_bytes,
                ),
                PieceKind::Unmapped => bail!("the bench volume is fully mapped"),
            }
        })
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let dirs = std::env::var("SHARDBLK_BENCH_DIR").unwrap_or_else(|_| "/var/tmp,/dev/shm".into());
    let secs: u64 = env_or("SHARDBLK_BENCH_SECS", 5);
    // Rounds of the A B C .. C B A order; more rounds average out a noisy host.
    let rounds: usize = env_or("SHARDBLK_BENCH_ROUNDS", 2);
    // Every runner (and fio, a child inheriting the mask) runs on one CPU:
    // otherwise the scheduler's placement of the submitter against the
    // device's completion interrupts decides more than the engine does.
    let cpus = core_affinity::get_core_ids().context("listing CPUs")?;
    let last = cpus.last().map(|c| c.id).unwrap_or(0);
    let cpu: usize = env_or("SHARDBLK_BENCH_CPU", last);
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        bail!("cannot pin the bench to CPU {cpu} (SHARDBLK_BENCH_CPU)");
    }
    println!("pinned to CPU {cpu}; {secs} s per run, {rounds} round(s) of A B C C B A");
    for dir in dirs.split(',').filter(|d| !d.is_empty()) {
        match bench_dir(Path::new(dir), Duration::from_secs(secs), rounds) {
            Ok(()) => {}
            Err(e) if e.downcast_ref::<NoDirectIo>().is_some() => {
                println!("\n{dir}: skipped ({e})");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The directory's file system refuses `O_DIRECT` (tmpfs before Linux 6.6).
#[derive(Debug)]
struct NoDirectIo(std::io::Error);

impl std::fmt::Display for NoDirectIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no O_DIRECT on this file system: {}", self.0)
    }
}

impl std::error::Error for NoDirectIo {}

/// The whole comparison on a file in `dir`; prints one table.
fn bench_dir(dir: &Path, duration: Duration, rounds: usize) -> Result<()> {
    let path = dir.join(format!("shardblk-bench-{}.img", std::process::id()));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(path.clone());
    std::fs::File::create(&path)
        .with_context(|| format!("creating {}", path.display()))?
        .set_len(FILE_BYTES)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            return Err(NoDirectIo(e).into());
        }
    }
    // The file is a one-tier pool; its volume is filled through the engine,
    // so every shard is mapped and the raw runners read the same bytes.
    let pool = Pool::init(
        &[TierSpec {
            name: "hot".into(),
            path: path.clone(),
        }],
        true,
    )?;
    let cap = pool.tiers()[0].n_units * UNIT_SIZE_BYTES;
    let vol_bytes = cap / SHARD_BYTES * SHARD_BYTES;
    let vol = pool.create_volume("bench", vol_bytes, SHARD_BYTES, TierPolicy::default())?;
    let t = Instant::now();
    {
        let mut eng = pool.engine();
        let mut buf = AlignedBuf::new(FILL_CHUNK_BYTES);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for off in (0..vol_bytes).step_by(FILL_CHUNK_BYTES) {
            rng.fill(&mut buf[..]);
            vol.write(eng.as_mut(), off, &buf)?;
        }
        vol.flush()?;
    }
    println!(
        "\nfilled volume of {} MiB on {} through the engine in {:.1} s",
        vol_bytes >> 20,
        path.display(),
        t.elapsed().as_secs_f64()
    );
    let through = ThroughVolume::new(&pool, vol)?;
    let ours = Ours::new(&path, SubmitPolicy::Early)?;
    let batched = Ours::new(&path, SubmitPolicy::Batched)?;

    let workloads = [
        Workload {
            name: "4k randread QD1",
            block_bytes: 4096,
            qd: 1,
            random: true,
            duration,
        },
        Workload {
            name: "4k randread QD32",
            block_bytes: 4096,
            qd: 32,
            random: true,
            duration,
        },
        Workload {
            name: "1M seqread QD4",
            block_bytes: 1 << 20,
            qd: 4,
            random: false,
            duration,
        },
    ];
    let mut runners: Vec<Box<dyn Runner>> = vec![
        Box::new(Fio { path: path.clone() }),
        Box::new(ours),
        Box::new(batched),
        Box::new(through),
    ];
    // Optional filters (for profiling one runner or one workload): comma
    // lists of runner names' first words and of workload names.
    if let Ok(keep) = std::env::var("SHARDBLK_BENCH_RUNNERS") {
        runners.retain(|r| keep.split(',').any(|k| k == short(r.name())));
    }
    let wanted = std::env::var("SHARDBLK_BENCH_WORKLOADS").ok();
    let workloads: Vec<Workload> = workloads
        .into_iter()
        .filter(|w| {
            wanted
                .as_ref()
                .is_none_or(|k| k.split(',').any(|k| k == w.name))
        })
        .collect();
    if runners.is_empty() || workloads.is_empty() {
        bail!("SHARDBLK_BENCH_RUNNERS / SHARDBLK_BENCH_WORKLOADS left nothing to run");
    }

    // Each runner runs each workload twice per round, in the order
    // A B .. B A, and the mean is reported, so neither side gains from going
    // first (warm caches on the host, other load on a shared machine).
    let mut rows = Vec::new();
    for w in &workloads {
        let n = runners.len();
        let zero = Figures {
            iops: 0.0,
            mb_per_s: 0.0,
            cpu_us_per_op: 0.0,
            ops_per_enter: 0.0,
        };
        let mut sums = vec![zero; n];
        let order: Vec<usize> = (0..rounds)
            .flat_map(|_| (0..n).chain((0..n).rev()))
            .collect();
        for i in order {
            let r = &mut runners[i];
            let f = r
                .run(w)
                .with_context(|| format!("{} on {}", r.name(), w.name))?;
            eprintln!(
                "{:<18} {:<16} {:>10.0} IOPS {:>8.1} MB/s {:>6.2} CPU us/IO {:>6.1} IO/enter",
                w.name,
                r.name(),
                f.iops,
                f.mb_per_s,
                f.cpu_us_per_op,
                f.ops_per_enter
            );
            let k = (2 * rounds) as f64;
            sums[i].iops += f.iops / k;
            sums[i].mb_per_s += f.mb_per_s / k;
            sums[i].cpu_us_per_op += f.cpu_us_per_op / k;
            sums[i].ops_per_enter += f.ops_per_enter / k;
        }
        let figs = sums;
        rows.push((w.name, figs));
    }

    let mut header = format!("{:<18}", "workload");
    for (i, r) in runners.iter().enumerate() {
        header += &format!(
            " | {:>14} {:>9} {:>6}",
            format!("{} IOPS", short(r.name())),
            "MB/s",
            "us/IO"
        );
        if i > 0 {
            header += &format!(" {:>6} {:>7}", "IO/ent", "ratio");
        }
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (name, figs) in rows {
        let mut line = format!("{name:<18}");
        for (i, f) in figs.iter().enumerate() {
            line += &format!(
                " | {:>14.0} {:>9.1} {:>6.2}",
                f.iops, f.mb_per_s, f.cpu_us_per_op
            );
            if i > 0 {
                let per_enter = if f.ops_per_enter > 0.0 {
                    format!("{:.1}", f.ops_per_enter)
                } else {
                    "-".into()
                };
                line += &format!(" {:>6} {:>6.1}%", per_enter, 100.0 * f.iops / figs[0].iops);
            }
        }
        println!("{line}");
    }
    Ok(())
}

fn short(name: &str) -> &str {
    name.split_whitespace().next().unwrap_or(name)
}
