//! `shardblk add|del|list|recover|features|stats`: ublk devices over volumes.
//!
//! `add` without `--foreground` starts the daemon as a new session (itself,
//! re-executed with `--foreground`), waits until it reports the device live
//! or failed through a pipe, prints `/dev/ublkbN` or the error, and exits.
//! The daemon's stderr goes to `shardblk.log` in the run directory.

use crate::constants::{
    CLUSTER_REPLICAS_DEFAULT, DEVICE_DEPTH_DEFAULT_REQUESTS, DEVICE_IO_SCHEDULER_DEFAULT,
    DEVICE_START_TIMEOUT_S, PREFETCH_CONFIDENCE_MIN_DEFAULT, PREFETCH_DEPTH_DEFAULT_SHARDS,
    PREFETCH_PROMOTE_READS_DEFAULT, PREFETCH_PROMOTE_READS_MAX,
};
use crate::device::config::{
    format_cpu_list, online_cpus, parse_cpu_list, DeviceConfig, PollMode, ZeroCopyMode,
};
use crate::device::features::{driver_present, probe};
use crate::device::net::ClusterSource;
use crate::device::registry::{run_dir, thread_cpus, DeviceRecord};
use crate::device::serve::{delete, device_state, scheduler_of, serve, Ready, ServeOptions};
use crate::device::DeviceError;
use crate::prefetch::live::LiveConfig;
use crate::prefetch::lstm::{LstmTuning, Streams};
use crate::prefetch::{PredictorKind, PrefetchConfig};
use crate::units::parse_size;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

/// Env var naming the pipe through which a daemon reports readiness.
const READY_FD_ENV: &str = "SHARDBLK_READY_FD";

#[derive(Subcommand)]
// Parsed once per run: the size of `Add`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
pub enum DeviceCmd {
    /// Serve a volume as /dev/ublkbN (prints the device path).
    Add(AddArgs),
    /// Stop and delete a device.
    Del {
        #[arg(short = 'n', long = "number", required_unless_present = "all")]
        number: Option<u32>,
        /// Every device with a record in the run directory.
        #[arg(long, conflicts_with = "number")]
        all: bool,
    },
    /// Devices served by shardblk: volume, queues, pinning, state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Start a new daemon for a device whose daemon died (UBLK_F_USER_RECOVERY).
    Recover {
        #[arg(short = 'n', long = "number")]
        number: u32,
        #[arg(long)]
        foreground: bool,
    },
    /// What the running kernel's ublk driver supports.
    Features {
        #[arg(long)]
        json: bool,
    },
    /// Latency percentiles by op and tier hit, IOPS and bandwidth of a device, per queue.
    Stats(super::stats::StatsArgs),
}

#[derive(Args, Clone)]
pub struct AddArgs {
    /// The volume (of --pool, or with --seed the cluster volume).
    #[arg(long)]
    volume: String,
    #[arg(long, env = "SHARDBLK_POOL", required_unless_present = "seeds")]
    pool: Option<PathBuf>,
    /// Serve a cluster volume instead of a pool's: gossip address of a
    /// storage node to join through; repeat. --pool is then ignored.
    #[arg(long = "seed")]
    seeds: Vec<SocketAddr>,
    /// Cluster volume: this daemon's own gossip address (UDP; default: a free loopback port).
    #[arg(long, requires = "seeds")]
    gossip: Option<SocketAddr>,
    /// Cluster volume: its logical size (as every attacher of it uses).
    #[arg(long, requires = "seeds", value_parser = parse_size, default_value = "1G")]
    size: u64,
    /// Cluster volume: copies of every shard.
    #[arg(long, requires = "seeds", default_value_t = CLUSTER_REPLICAS_DEFAULT)]
    replicas: usize,
    /// Cluster volume: storage nodes to wait for before attaching.
    #[arg(long, requires = "seeds", default_value_t = 1)]
    nodes: usize,
    /// Cluster volume: a file or block device on this node that holds staged
    /// copies of the volume's shards (with --prefetch; reads of a staged shard
    /// are served from it, writes still go to every replica). Its contents are
    /// never trusted across attaches: each attach starts with it empty.
    #[arg(long = "stage-tier", requires = "seeds")]
    stage_tier: Option<PathBuf>,
    /// Device number N of /dev/ublkbN (default: the lowest free one).
    #[arg(short = 'n', long = "number")]
    number: Option<u32>,
    /// ublk queues, each served by one pinned thread.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = DEVICE_DEPTH_DEFAULT_REQUESTS)]
    depth: u16,
    /// CPUs for the queue threads, e.g. 0,2-3; queue q runs on the (q mod len)-th.
    /// Default: every online CPU.
    #[arg(long)]
    cpus: Option<String>,
    #[arg(long, value_enum, default_value_t = PollMode::Interrupt)]
    poll: PollMode,
    #[arg(long = "zero-copy", value_enum, default_value_t = ZeroCopyMode::Auto)]
    zero_copy: ZeroCopyMode,
    /// Block-layer I/O scheduler of the disk (none, mq-deadline, kyber, bfq:
    /// what the kernel has), or `kernel` to keep the kernel's choice
    /// (mq-deadline for one queue).
    #[arg(long = "io-scheduler", default_value = DEVICE_IO_SCHEDULER_DEFAULT)]
    io_scheduler: String,
    /// Stay in the foreground (default: run as a daemon once the device is live).
    #[arg(long)]
    foreground: bool,
    /// Prefetcher staging predicted shards onto the hot tier: off, none (no
    /// predictor: the stager only promotes cold shards read again, see
    /// --prefetch-promote), readahead, stride, markov or lstm.
    #[arg(long, default_value = "off")]
    prefetch: String,
    /// PREFETCH_DEPTH: most shards predicted per stream per step.
    #[arg(long = "prefetch-depth", default_value_t = PREFETCH_DEPTH_DEFAULT_SHARDS)]
    prefetch_depth: u32,
    /// Predictions below this confidence (0..1) are not staged.
    #[arg(long = "prefetch-confidence", default_value_t = PREFETCH_CONFIDENCE_MIN_DEFAULT)]
    prefetch_confidence: f32,
    /// Hot-tier space the stager may fill with staged shards (suffixes K, M, G;
    /// default: a quarter of the hot tier).
    #[arg(long = "prefetch-budget", value_parser = parse_size)]
    prefetch_budget: Option<u64>,
    /// Model file of the lstm predictor.
    #[arg(long = "prefetch-model")]
    prefetch_model: Option<PathBuf>,
    /// Demand promotion: the stager stages a cold shard on its Nth read within
    /// PREFETCH_PROMOTE_WINDOW_MS (10 s), as a cache would (0 = off, 1 = on the
    /// first read).
    #[arg(long = "prefetch-promote", default_value_t = PREFETCH_PROMOTE_READS_DEFAULT)]
    prefetch_promote: u32,
    #[command(flatten)]
    lstm: LstmFlags,
}

/// `add`'s knobs of the lstm predictor (the model's shape comes from its
/// file); each left out keeps the default of `trace eval --help`.
#[derive(Args, Clone, Default)]
pub struct LstmFlags {
    /// lstm: extra model steps along the most likely path, to predict
    /// further ahead (0: the next event only, the cheapest step).
    #[arg(long = "lstm-lookahead")]
    lookahead: Option<u32>,
    /// lstm: streams followed: regions, volume or both.
    #[arg(long = "lstm-streams")]
    streams: Option<Streams>,
    /// lstm: precision gate with confidence calibration (0..1; 0: off).
    #[arg(long = "lstm-gate")]
    gate: Option<f32>,
    /// lstm: no online training (inference only, from the model file's weights).
    #[arg(long = "lstm-no-online")]
    no_online: bool,
    /// lstm: one online training step per this many events.
    #[arg(long = "lstm-train-interval")]
    train_interval: Option<u32>,
    /// lstm: Adam learning rate of online training.
    #[arg(long = "lstm-learning-rate")]
    learning_rate: Option<f64>,
    /// lstm: libtorch intra-op threads of the model thread.
    #[arg(long = "lstm-threads")]
    threads: Option<u32>,
    /// lstm: entries of a volume stream's memory of its states (0: none).
    #[arg(long = "lstm-memory")]
    memory: Option<u32>,
}

impl LstmFlags {
    fn tuning(&self) -> LstmTuning {
        LstmTuning {
            lookahead: self.lookahead,
            streams: self.streams,
            precision_gate: self.gate,
            online: self.no_online.then_some(false),
            train_interval_events: self.train_interval,
            learning_rate: self.learning_rate,
            threads: self.threads,
            memory_entries: self.memory,
        }
    }

    fn of(t: &LstmTuning) -> LstmFlags {
        LstmFlags {
            lookahead: t.lookahead,
            streams: t.streams,
            gate: t.precision_gate,
            no_online: t.online == Some(false),
            train_interval: t.train_interval_events,
            learning_rate: t.learning_rate,
            threads: t.threads,
            memory: t.memory_entries,
        }
    }
}

impl DeviceCmd {
    /// Whether this command runs a device daemon (which must outlive any
    /// peer that hangs up on it).
    pub fn runs_daemon(&self) -> bool {
        matches!(self, DeviceCmd::Add(_) | DeviceCmd::Recover { .. })
    }

    /// Whether this command runs the LSTM (and so needs its backend).
    pub fn needs_lstm(&self) -> bool {
        match self {
            DeviceCmd::Add(a) => a.prefetch.parse::<PredictorKind>() == Ok(PredictorKind::Lstm),
            // `recover` restarts the daemon with the prefetch settings of
            // its record (an unreadable record fails later, clearly).
            DeviceCmd::Recover { number, .. } => DeviceRecord::read(*number).is_ok_and(|r| {
                r.prefetch.is_some_and(|p| {
                    p.predictor.parse::<PredictorKind>() == Ok(PredictorKind::Lstm)
                })
            }),
            _ => false,
        }
    }
}

pub fn run(c: DeviceCmd) -> Result<()> {
    match c {
        DeviceCmd::Add(a) => add(a),
        DeviceCmd::Del { number, all } => {
            if all {
                for r in DeviceRecord::all() {
                    delete(r.number).with_context(|| format!("deleting /dev/ublkb{}", r.number))?;
                }
                Ok(())
            } else {
                let n = number.expect("clap requires -n without --all");
                need_driver()?;
                Ok(delete(n)?)
            }
        }
        DeviceCmd::List { json } => list(json),
        DeviceCmd::Recover { number, foreground } => {
            let r = DeviceRecord::read(number)
                .with_context(|| format!("no record of /dev/ublkb{number} to recover"))?;
            let p = r.prefetch.clone();
            let c = r.cluster.clone();
            let args = AddArgs {
                volume: r.volume,
                pool: c.is_none().then_some(r.pool),
                seeds: c.as_ref().map(|c| c.seeds.clone()).unwrap_or_default(),
                gossip: c.as_ref().map(|c| c.gossip),
                size: c.as_ref().map_or(0, |c| c.size_bytes),
                replicas: c.as_ref().map_or(CLUSTER_REPLICAS_DEFAULT, |c| c.replicas),
                nodes: c.as_ref().map_or(1, |c| c.nodes),
                stage_tier: c.as_ref().and_then(|c| c.stage_tier.clone()),
                number: Some(number),
                queues: r.queues,
                depth: r.depth,
                cpus: Some(format_cpu_list(&{
                    let mut c = r.queue_cpus.clone();
                    c.sort_unstable();
                    c.dedup();
                    c
                })),
                poll: r.poll,
                zero_copy: r.zero_copy_requested,
                io_scheduler: r
                    .scheduler
                    .clone()
                    .unwrap_or_else(|| IO_SCHEDULER_KERNEL.into()),
                foreground,
                prefetch: p
                    .as_ref()
                    .map_or_else(|| "off".into(), |p| p.predictor.clone()),
                prefetch_depth: p
                    .as_ref()
                    .map_or(PREFETCH_DEPTH_DEFAULT_SHARDS, |p| p.depth),
                prefetch_confidence: p
                    .as_ref()
                    .map_or(PREFETCH_CONFIDENCE_MIN_DEFAULT, |p| p.confidence_min),
                prefetch_budget: p.as_ref().and_then(|p| p.budget_bytes),
                prefetch_promote: p
                    .as_ref()
                    .map_or(PREFETCH_PROMOTE_READS_DEFAULT, |p| p.promote_reads),
                lstm: p
                    .as_ref()
                    .map(|p| LstmFlags::of(&p.lstm))
                    .unwrap_or_default(),
                prefetch_model: p.and_then(|p| p.model),
            };
            start(args, true)
        }
        DeviceCmd::Features { json } => {
            let f = probe()?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "mask": format!("{:#x}", f.0), "flags": f.names() })
                );
            } else {
                println!("ublk features {:#x}: {}", f.0, f.names().join(" "));
            }
            Ok(())
        }
        DeviceCmd::Stats(a) => super::stats::run(a),
    }
}

fn need_driver() -> Result<()> {
    if !driver_present() {
        return Err(DeviceError::NoDriver.into());
    }
    Ok(())
}

fn add(a: AddArgs) -> Result<()> {
    start(a, false)
}

/// `--io-scheduler` value that keeps the kernel's choice.
const IO_SCHEDULER_KERNEL: &str = "kernel";

fn config_of(a: &AddArgs) -> Result<DeviceConfig> {
    let cpus = match &a.cpus {
        Some(s) => parse_cpu_list(s)?,
        None => online_cpus()?,
    };
    Ok(DeviceConfig {
        number: a.number,
        queues: a.queues,
        depth: a.depth,
        cpus,
        poll: a.poll,
        zero_copy: a.zero_copy,
        scheduler: (a.io_scheduler != IO_SCHEDULER_KERNEL).then(|| a.io_scheduler.clone()),
    })
}

/// The prefetch settings of `add` (`None`: off). Checks what can be checked
/// without the pool, so bad flags fail before a daemon starts.
fn live_config_of(a: &AddArgs) -> Result<Option<LiveConfig>> {
    let lstm = a.lstm.tuning();
    if a.prefetch == "off" {
        if a.prefetch_model.is_some() || a.prefetch_budget.is_some() {
            bail!("--prefetch-model and --prefetch-budget need --prefetch other than off");
        }
        if !lstm.is_empty() {
            bail!("--lstm-* flags need --prefetch lstm");
        }
        return Ok(None);
    }
    if a.prefetch_promote > PREFETCH_PROMOTE_READS_MAX {
        bail!(
            "--prefetch-promote {} must be in 0..={PREFETCH_PROMOTE_READS_MAX} reads",
            a.prefetch_promote
        );
    }
    let kind: PredictorKind = a.prefetch.parse().map_err(|_| {
        anyhow::anyhow!(
            "unknown predictor {:?} (known: off, none, readahead, stride, markov, lstm)",
            a.prefetch
        )
    })?;
    let prefetch = PrefetchConfig {
        depth: a.prefetch_depth,
        confidence_min: a.prefetch_confidence,
        ..Default::default()
    };
    prefetch.validate()?;
    if let Some(m) = &a.prefetch_model {
        if !m.is_file() {
            bail!("--prefetch-model {}: no such file", m.display());
        }
    }
    let c = LiveConfig {
        kind,
        prefetch,
        budget_bytes: a.prefetch_budget,
        model: a.prefetch_model.clone(),
        promote_reads: a.prefetch_promote,
        lstm,
    };
    // The daemon checks it again when it starts; here it fails before one does.
    c.check_lstm_only()?;
    Ok(Some(c))
}

/// The cluster volume `add` serves (`None`: a pool's volume). The gossip
/// address is fixed here, so a re-executed daemon and its record keep it.
fn cluster_source_of(a: &AddArgs) -> Result<Option<ClusterSource>> {
    if a.seeds.is_empty() {
        return Ok(None);
    }
    let gossip = match a.gossip {
        Some(g) => g,
        None => std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("finding a free UDP port for gossip")?,
    };
    Ok(Some(ClusterSource {
        seeds: a.seeds.clone(),
        gossip,
        volume: a.volume.clone(),
        size_bytes: a.size,
        replicas: a.replicas,
        nodes: a.nodes,
        stage_tier: a.stage_tier.clone(),
    }))
}

fn start(a: AddArgs, recover: bool) -> Result<()> {
    let config = config_of(&a)?;
    live_config_of(&a)?;
    match (a.seeds.is_empty(), a.prefetch == "off", &a.stage_tier) {
        (false, false, None) => bail!(
            "--prefetch of a cluster volume needs --stage-tier PATH (a file or block device \
             on this node to stage its shards onto)"
        ),
        (false, true, Some(_)) => bail!(
            "--stage-tier needs --prefetch (none: demand promotion alone, see --prefetch-promote)"
        ),
        _ => {}
    }
    if a.foreground || std::env::var_os(READY_FD_ENV).is_some() {
        return serve_here(a, config, recover);
    }
    need_driver()?;
    // Daemon: this program again, in the foreground of a new session.
    let (rd, wr) = nix::unistd::pipe().context("creating the readiness pipe")?;
    let dir = run_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join("shardblk.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the shardblk executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, wr.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let rd_fd = rd.as_raw_fd();
    // SAFETY: between fork and exec this only calls async-signal-safe
    // functions (setsid, close) on plain integers.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::close(rd_fd);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the daemon")?;
    drop(wr);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let msg = rx
        .recv_timeout(Duration::from_secs(DEVICE_START_TIMEOUT_S))
        .map_err(|_| {
            anyhow::anyhow!(
                "the daemon (pid {}) did not report within {DEVICE_START_TIMEOUT_S} s; see {}",
                child.id(),
                log_path.display()
            )
        })?;
    report(&msg, &log_path)
}

/// Turn the daemon's readiness line into output or an error.
fn report(msg: &str, log: &std::path::Path) -> Result<()> {
    let line = msg.lines().next().unwrap_or("");
    if let Some(rest) = line.strip_prefix("ok ") {
        let (n, note) = rest.split_once(' ').unwrap_or((rest, ""));
        if !note.is_empty() {
            eprintln!("shardblk: {note}");
        }
        println!("/dev/ublkb{n}");
        Ok(())
    } else if let Some(e) = line.strip_prefix("err ") {
        bail!("{e}")
    } else {
        bail!(
            "the daemon exited before the device was live; see {}",
            log.display()
        )
    }
}

fn serve_here(a: AddArgs, config: DeviceConfig, recover: bool) -> Result<()> {
    let prefetch = live_config_of(&a)?;
    let ready_fd: Option<i32> = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|s| s.parse().ok());
    // SAFETY: SHARDBLK_READY_FD names the write end of the pipe our parent
    // created and left open across exec for us alone; we take ownership once.
    let pipe = ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: single-threaded at this point; only this process reads the env.
    unsafe { std::env::remove_var(READY_FD_ENV) };
    let pipe = std::sync::Mutex::new(pipe.map(std::fs::File::from));
    let notify = move |r: Ready| {
        let line = match &r {
            Ok((n, note)) => format!("ok {n} {}\n", note.as_deref().unwrap_or("")),
            Err(e) => format!("err {e}\n"),
        };
        match pipe.lock().expect("pipe").take() {
            Some(mut f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => match r {
                Ok((n, note)) => {
                    if let Some(note) = note {
                        eprintln!("shardblk: {note}");
                    }
                    // a foreground daemon ignores SIGPIPE: a reader of
                    // its stdout that is gone must not panic it
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "/dev/ublkb{n}").and_then(|()| out.flush());
                }
                Err(e) => eprintln!("shardblk: {e}"),
            },
        }
    };
    let cluster = cluster_source_of(&a)?;
    let pool = match (&cluster, a.pool) {
        (Some(_), _) => PathBuf::new(),
        (None, Some(p)) => std::fs::canonicalize(&p).unwrap_or(p),
        (None, None) => bail!("--pool (or SHARDBLK_POOL) is required without --seed"),
    };
    let opts = ServeOptions {
        pool,
        volume: a.volume,
        config,
        recover,
        prefetch,
        cluster,
    };
    serve(opts, Box::new(notify)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn list(json: bool) -> Result<()> {
    let rows: Vec<serde_json::Value> = DeviceRecord::all()
        .into_iter()
        .map(|r| {
            let state = device_state(r.number).unwrap_or("gone");
            let alive = r.daemon_alive();
            let pinned: Vec<String> = r
                .queue_tids
                .iter()
                .map(|&t| thread_cpus(r.pid, t).unwrap_or_else(|| "-".into()))
                .collect();
            serde_json::json!({
                "device": format!("/dev/ublkb{}", r.number),
                "number": r.number,
                "volume": r.volume,
                "pool": r.pool,
                "cluster": r.cluster,
                "queues": r.queues,
                "depth": r.depth,
                "queue_cpus": r.queue_cpus,
                "pinned": pinned,
                "poll": r.poll,
                "zero_copy": r.zero_copy,
                // In use now (sysfs), and what `add` asked for.
                "scheduler": scheduler_of(r.number).map(|(active, _)| active),
                "scheduler_requested": r.scheduler,
                "prefetch": r.prefetch.as_ref().map_or("off", |p| p.predictor.as_str()),
                "prefetch_settings": r.prefetch,
                "state": state,
                "daemon": if alive { serde_json::json!(r.pid) } else { serde_json::json!(null) },
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<13} {:<16} {:>6} {:>5} {:<12} {:<9} {:<8} DAEMON",
        "DEVICE", "VOLUME", "QUEUES", "DEPTH", "CPUS", "POLL", "STATE"
    );
    for r in rows {
        let cpus: Vec<String> = r["pinned"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or("-").to_string())
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<13} {:<16} {:>6} {:>5} {:<12} {:<9} {:<8} {}",
            r["device"].as_str().unwrap_or(""),
            r["volume"].as_str().unwrap_or(""),
            r["queues"].to_string(),
            r["depth"].to_string(),
            cpus.join("/"),
            r["poll"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            if r["daemon"].is_null() {
                "dead".to_string()
            } else {
                r["daemon"].to_string()
            },
        );
    }
    Ok(())
}
