//! The daemon's life cycle: add (or recover) a ublk device over a volume,
//! serve it until it is stopped, and the control verbs that act on a device
//! from another process (delete, state).
//!
//! Contract of [`serve`]:
//! - Everything that can be checked before the device exists is checked
//!   first (driver present, number free, CPUs online, depth and queue count
//!   in range, zero-copy request, pool and volume open); on failure nothing
//!   is created and `notify` gets the error.
//! - Once every queue thread serves requests and the kernel has started the
//!   disk, queue threads are pinned to their CPUs, the record and control
//!   socket are published, and `notify` gets the device number. `serve`
//!   returns when the device is stopped (`shardblk del`); the device is then
//!   deleted and its record removed.
//! - Devices are added with `UBLK_F_USER_RECOVERY` when the kernel has it, so
//!   a daemon that dies leaves the disk in place (I/O waits) until
//!   [`ServeOptions::recover`] starts a new daemon for it.

use crate::constants::{
    DEVICE_DAEMON_EXIT_TIMEOUT_S, DEVICE_DISCARD_MAX_BYTES, DEVICE_IO_BUF_BYTES,
    DEVICE_STOP_TIMEOUT_S, DEVICE_TRACE_RING_EVENTS, POLICY_WINDOW_MS, TIERS_MAX,
};
use crate::device::config::{online_cpus, DeviceConfig};
use crate::device::control::{spawn_server, ControlState};
use crate::device::features::{
    probe, Features, UBLK_F_AUTO_BUF_REG, UBLK_F_USER_RECOVERY, UBLK_F_USER_RECOVERY_REISSUE,
};
use crate::device::metrics::trace_ring;
use crate::device::net::ClusterSource;
use crate::device::queue::{run_queue, QueueCtx, TIER_FILE_INDEX_BASE};
use crate::device::registry::{socket_path, DeviceRecord, PrefetchRecord};
use crate::device::roster::QueueRoster;
use crate::device::DeviceError;
use crate::prefetch::live::{Live, LiveConfig};
use crate::shard::manager::Manager;
use crate::shard::pool::Pool;
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::UblkFlags;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pool: PathBuf,
    pub volume: String,
    pub config: DeviceConfig,
    /// Recover device `config.number` whose daemon died, instead of adding one.
    pub recover: bool,
    /// Prefetching (inference thread and stager); `None`: off.
    pub prefetch: Option<LiveConfig>,
    /// Serve this cluster volume instead of `pool`'s `volume`
    /// (see `device::serve_cluster`).
    pub cluster: Option<ClusterSource>,
}

/// What `notify` is told once: the live device's number and an optional
/// fallback message, or why it could not start.
pub type Ready = Result<(u32, Option<String>), DeviceError>;

/// Whether ublk device `n` exists.
pub fn device_exists(n: u32) -> bool {
    std::path::Path::new(&format!("/sys/class/ublk-char/ublkc{n}")).exists()
        || std::path::Path::new(&format!("/dev/ublkc{n}")).exists()
}

/// Kernel state of device `n` (`live`, `dead`, `quiesced`, `fail_io`).
pub fn device_state(n: u32) -> Result<&'static str, DeviceError> {
    if !device_exists(n) {
        return Err(DeviceError::NoSuchDevice(n));
    }
    let c = UblkCtrl::new_simple(n as i32)?;
    let _ = c.read_dev_info();
    Ok(match u32::from(c.dev_info().state) {
        libublk::sys::UBLK_S_DEV_LIVE => "live",
        libublk::sys::UBLK_S_DEV_QUIESCED => "quiesced",
        libublk::sys::UBLK_S_DEV_FAIL_IO => "fail_io",
        _ => "dead",
    })
}

/// Wait until device `n` is quiesced (its daemon gone, I/O held), as
/// recovery requires.
pub(crate) fn wait_quiesced(n: u32) -> Result<(), DeviceError> {
    let t0 = Instant::now();
    loop {
        let st = device_state(n)?;
        if st == "quiesced" {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(DEVICE_STOP_TIMEOUT_S) {
            return Err(DeviceError::Ublk(format!(
                "device {n} is {st}, not quiesced: recovery needs a device added with UBLK_F_USER_RECOVERY whose daemon has exited"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stop and delete device `n`, waiting for its daemon to exit (at most
/// `DEVICE_DAEMON_EXIT_TIMEOUT_S`; a daemon still running then is an error, after
/// the device is deleted).
pub fn delete(n: u32) -> Result<(), DeviceError> {
    if !device_exists(n) {
        DeviceRecord::remove(n);
        return Err(DeviceError::NoSuchDevice(n));
    }
    let rec = DeviceRecord::read(n).ok();
    let c = UblkCtrl::new_simple(n as i32)?;
    let _ = c.kill_dev();
    let t0 = Instant::now();
    if let Some(r) = &rec {
        while r.daemon_alive() && t0.elapsed() < Duration::from_secs(DEVICE_DAEMON_EXIT_TIMEOUT_S) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if device_exists(n) {
        c.del_dev()?;
    }
    DeviceRecord::remove(n);
    match rec {
        // The device is gone, but its daemon still holds the pool: the
        // caller must not take `del` for done.
        Some(r) if r.daemon_alive() => Err(DeviceError::DaemonLingers {
            number: n,
            pid: r.pid,
            secs: t0.elapsed().as_secs(),
        }),
        _ => Ok(()),
    }
}

/// Add (or recover) the device and serve it until it stops.
pub fn serve(
    opts: ServeOptions,
    notify: Box<dyn FnOnce(Ready) + Send + Sync>,
) -> Result<(), DeviceError> {
    // SIGINT/SIGTERM are taken by the signal thread (`stop_on_signal`):
    // block them before any thread is spawned (manager, prefetch, queues),
    // so every thread inherits the mask and none is killed by them.
    let signals = block_stop_signals()?;
    let notify = Arc::new(Mutex::new(Some(notify)));
    let tell = {
        let notify = notify.clone();
        move |r: Ready| {
            if let Some(f) = notify.lock().expect("notify").take() {
                f(r);
            }
        }
    };
    if let Some(src) = opts.cluster.clone() {
        return crate::device::serve_cluster::serve_cluster(opts, src, signals, tell);
    }
    match prepare(&opts) {
        Ok(p) => {
            let r = run(opts, p, signals, tell.clone());
            if let Err(e) = &r {
                tell(Err(DeviceError::Ublk(e.to_string())));
            }
            r
        }
        Err(e) => {
            let msg = e.to_string();
            tell(Err(e));
            Err(DeviceError::Ublk(msg))
        }
    }
}

struct Prepared {
    features: Features,
    zero_copy: bool,
    message: Option<String>,
    pool: Pool,
    ctx: Arc<QueueCtx>,
    /// Drains the trace rings: inference and stager threads, recordings.
    live: Live,
    /// The tier policy (promotion, demotion, split, merge, a commit per
    /// window) for as long as the device is served.
    manager: Manager,
}

fn prepare(opts: &ServeOptions) -> Result<Prepared, DeviceError> {
    let features = probe()?;
    let online = online_cpus()?;
    let cfg = &opts.config;
    let (zero_copy, message) = cfg.validate(&online, features)?;
    match (cfg.number, opts.recover) {
        (Some(n), false) if device_exists(n) => return Err(DeviceError::Busy(n)),
        (Some(n), true) if !device_exists(n) => return Err(DeviceError::NoSuchDevice(n)),
        (None, true) => return Err(DeviceError::Ublk("recover needs a device number".into())),
        _ => {}
    }
    let pool = Pool::open(&opts.pool)?;
    let volume = pool.volume(&opts.volume)?;
    let mut fds = [-1; TIERS_MAX];
    for (i, d) in pool.devices().iter().enumerate() {
        fds[i] = d
            .raw_fd()
            .ok_or_else(|| DeviceError::NoFd(d.name().to_string()))?;
    }
    let nq = cfg.queues as usize;
    let (producers, consumers): (Vec<_>, Vec<_>) = (0..nq)
        .map(|_| trace_ring(DEVICE_TRACE_RING_EVENTS))
        .unzip();
    let ctx = Arc::new(QueueCtx {
        volume,
        poll: cfg.poll,
        fds,
        start: Instant::now(),
        roster: QueueRoster::new(cfg.cpus.clone(), producers),
        zero_copy,
        zero: std::fs::File::open("/dev/zero")
            .map_err(|e| DeviceError::Os("/dev/zero".into(), e))?,
    });
    let live = Live::start(
        opts.prefetch.as_ref(),
        ctx.volume.clone(),
        consumers,
        ctx.start,
    )?;
    // The tier policy runs while the device lives: promotion, demotion,
    // split and merge every window, each window ending with a commit (which
    // also bounds how long a first write's mapping waits for durability
    // when the user never flushes). SIGINT/SIGTERM are blocked in this
    // thread already, so the manager's thread never takes them.
    let manager = Manager::start(pool.clone(), Duration::from_millis(POLICY_WINDOW_MS));
    Ok(Prepared {
        features,
        zero_copy,
        message,
        pool,
        ctx,
        live,
        manager,
    })
}

fn run(
    opts: ServeOptions,
    p: Prepared,
    signals: nix::sys::signal::SigSet,
    tell: impl Fn(Ready) + Send + Sync + Clone + 'static,
) -> Result<(), DeviceError> {
    let cfg = opts.config.clone();
    // Requests in flight when a daemon dies are reissued to the next one:
    // every volume op is idempotent (a block write of the same data, a
    // read, a flush, a discard of the same range).
    let ctrl_flags = [UBLK_F_USER_RECOVERY, UBLK_F_USER_RECOVERY_REISSUE]
        .into_iter()
        .filter(|&f| p.features.has(f))
        .fold(0, |a, f| a | f)
        | if p.zero_copy { UBLK_F_AUTO_BUF_REG } else { 0 };
    let ctrl = new_ctrl(&cfg, ctrl_flags, opts.recover)?;
    let vol = p.ctx.volume.clone();
    let size = vol.size_bytes();
    let shard = vol.shard_size();
    let tier_fds = p.ctx.fds;
    let tgt_init = move |dev: &mut UblkDev| {
        // The tier devices go into every queue ring's registered file table
        // right after libublk's ublk char device (see TIER_FILE_INDEX_BASE).
        if dev.tgt.nr_fds != TIER_FILE_INDEX_BASE as i32 {
            return Err(libublk::UblkError::OtherError(-libc::EINVAL));
        }
        for (t, &fd) in tier_fds.iter().enumerate().filter(|(_, &fd)| fd >= 0) {
            dev.tgt.fds[TIER_FILE_INDEX_BASE as usize + t] = fd;
            dev.tgt.nr_fds = (TIER_FILE_INDEX_BASE as usize + t + 1) as i32;
        }
        dev.tgt.dev_size = size;
        // A volatile write cache (mappings are made durable by FLUSH/FUA).
        dev.tgt.params = device_params(
            size,
            shard,
            libublk::sys::UBLK_ATTR_VOLATILE_CACHE | libublk::sys::UBLK_ATTR_FUA,
            dev.dev_info.max_io_buf_bytes,
        );
        Ok(())
    };
    let ctx = p.ctx.clone();
    let q_fn = move |qid: u16, dev: &UblkDev| run_queue(qid, dev, &ctx);
    let ctx = p.ctx.clone();
    let number_cell = Arc::new(Mutex::new(None::<u32>));
    let number_out = number_cell.clone();
    let (zero_copy, message) = (p.zero_copy, p.message.clone());
    let pool_path = opts.pool.clone();
    let volume_name = opts.volume.clone();
    let tell2 = tell.clone();
    let live = p.live.shared();
    let prefetch = opts.prefetch.as_ref().map(PrefetchRecord::of);
    let device_fn = move |c: &UblkCtrl| {
        let n = c.dev_info().dev_id;
        *number_out.lock().expect("number") = Some(n);
        let r = publish(
            &ctx.roster,
            &cfg,
            Publication {
                number: n,
                volume: volume_name.clone(),
                start: ctx.start,
                live: Some(live.clone()),
                pool: pool_path.clone(),
                zero_copy,
                prefetch: prefetch.clone(),
                cluster: None,
            },
        );
        tell2(r.map(|warning| (n, join_messages(message.clone(), warning))));
    };
    stop_on_signal(signals, number_cell.clone())?;
    let r = ctrl.run_target(tgt_init, q_fn, device_fn);
    let t0 = Instant::now();
    // Stop the inference thread and the stager (a staging in progress
    // completes) before the final commit.
    drop(p.live);
    let live_ms = t0.elapsed().as_millis();
    // The manager finishes its window in progress, then stops.
    drop(p.manager);
    let manager_ms = t0.elapsed().as_millis() - live_ms;
    // An orderly stop makes everything acknowledged durable, mappings
    // included: the kernel sends no FLUSH when a device is stopped, and a
    // disk flushes its cache on shutdown too.
    let committed = p.pool.commit();
    drop(p.pool);
    tracing::info!(
        "stopped: prefetch threads in {live_ms} ms, manager in {manager_ms} ms, commit in {} ms",
        t0.elapsed().as_millis() - live_ms - manager_ms
    );
    if opts.recover {
        // A device adopted by recovery is not deleted by libublk's drop;
        // stopped (by `del` or a signal), it has nothing left to serve.
        let _ = ctrl.del_dev();
    }
    if let Some(n) = *number_cell.lock().expect("number") {
        DeviceRecord::remove(n);
    }
    r.map(|_| ()).map_err(DeviceError::from)?;
    committed.map_err(|e| DeviceError::Pool(e.into()))
}

/// SIGINT and SIGTERM stop the device (`STOP_DEV`; the daemon then deletes it
/// and exits) instead of killing the daemon, which would leave the disk
/// quiesced for recovery. Before the device is live they exit at once.
/// `set` was blocked by [`block_stop_signals`] before any thread started,
/// so every thread inherits the mask and only this one waits for them.
pub(crate) fn stop_on_signal(
    set: nix::sys::signal::SigSet,
    number: Arc<Mutex<Option<u32>>>,
) -> Result<(), DeviceError> {
    std::thread::Builder::new()
        .name("shardblk-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                match *number.lock().expect("number") {
                    Some(n) => {
                        tracing::warn!("{sig}: stopping /dev/ublkb{n}");
                        if let Ok(c) = UblkCtrl::new_simple(n as i32) {
                            let _ = c.kill_dev();
                        }
                    }
                    None => std::process::exit(1),
                }
            }
        })
        .map_err(|e| DeviceError::Os("spawning the signal thread".into(), e))?;
    Ok(())
}

/// The control handle of a new device (or, with `recover`, of device
/// `cfg.number` taken over from its dead daemon, which must be quiesced).
pub(crate) fn new_ctrl(
    cfg: &DeviceConfig,
    ctrl_flags: u64,
    recover: bool,
) -> Result<UblkCtrl, DeviceError> {
    if recover {
        let n = cfg
            .number
            .expect("recover needs a device number (checked before)");
        wait_quiesced(n)?;
        UblkCtrl::new_simple(n as i32)?.start_user_recover()?;
    }
    let dev_flags = if recover {
        UblkFlags::UBLK_DEV_F_RECOVER_DEV
    } else {
        UblkFlags::UBLK_DEV_F_ADD_DEV
    };
    UblkCtrlBuilder::default()
        .name("shardblk")
        .id(cfg.number.map_or(-1, |n| n as i32))
        .nr_queues(cfg.queues)
        .depth(cfg.depth)
        .io_buf_bytes(DEVICE_IO_BUF_BYTES)
        .ctrl_flags(ctrl_flags)
        .dev_flags(dev_flags)
        .build()
        .map_err(|e| match (cfg.number, &e) {
            (Some(n), libublk::UblkError::UringIOError(r)) if *r == -libc::EEXIST => {
                DeviceError::Busy(n)
            }
            _ => DeviceError::from(e),
        })
}

/// The device limits filesystems see: 4 KiB blocks, requests up to the
/// I/O buffer, discard and write-zeroes in shard granules.
pub(crate) fn device_params(
    size_bytes: u64,
    shard_bytes: u64,
    attrs: u32,
    max_io_buf_bytes: u32,
) -> libublk::sys::ublk_params {
    libublk::sys::ublk_params {
        types: libublk::sys::UBLK_PARAM_TYPE_BASIC | libublk::sys::UBLK_PARAM_TYPE_DISCARD,
        basic: libublk::sys::ublk_param_basic {
            attrs,
            logical_bs_shift: 12,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 12,
            max_sectors: max_io_buf_bytes >> 9,
            dev_sectors: size_bytes >> 9,
            ..Default::default()
        },
        discard: libublk::sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: shard_bytes as u32,
            max_discard_sectors: (DEVICE_DISCARD_MAX_BYTES >> 9) as u32,
            max_write_zeroes_sectors: (DEVICE_DISCARD_MAX_BYTES >> 9) as u32,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Block SIGINT and SIGTERM in the calling thread (inherited by the threads
/// it spawns afterwards); returns the set, for `sigwait`.
fn block_stop_signals() -> Result<nix::sys::signal::SigSet, DeviceError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| DeviceError::Os("blocking SIGINT/SIGTERM".into(), e.into()))?;
    Ok(set)
}

/// What a live device publishes besides its queues: see [`publish`].
pub(crate) struct Publication {
    pub number: u32,
    pub volume: String,
    /// The device's clock origin (trace and latency).
    pub start: Instant,
    pub live: Option<Arc<crate::prefetch::live::LiveShared>>,
    /// The pool's path (empty for a cluster volume).
    pub pool: PathBuf,
    pub zero_copy: bool,
    pub prefetch: Option<PrefetchRecord>,
    pub cluster: Option<ClusterSource>,
}

/// The device is live: pin the queue threads (again: libublk applied the
/// kernel's default affinity), give the disk its I/O scheduler, open the
/// control socket, write the record. Returns a warning when the scheduler
/// could not be set (the disk then keeps the kernel's).
pub(crate) fn publish(
    roster: &QueueRoster,
    cfg: &DeviceConfig,
    p: Publication,
) -> Result<Option<String>, DeviceError> {
    let (tids, cpus) = roster.pin_all()?;
    let warning = cfg
        .scheduler
        .as_deref()
        .and_then(|s| set_scheduler(p.number, s).err());
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    }
    std::fs::create_dir_all(crate::device::registry::run_dir())
        .map_err(|e| DeviceError::Os("creating the run directory".into(), e))?;
    spawn_server(
        &socket_path(p.number),
        ControlState {
            number: p.number,
            volume: p.volume.clone(),
            start: p.start,
            snapshots: roster.snapshots(),
            live: p.live,
        },
    )?;
    DeviceRecord {
        number: p.number,
        volume: p.volume,
        pool: p.pool,
        queues: cfg.queues,
        depth: cfg.depth,
        queue_cpus: cpus,
        queue_tids: tids,
        poll: cfg.poll,
        zero_copy_requested: cfg.zero_copy,
        zero_copy: p.zero_copy,
        pid: std::process::id(),
        prefetch: p.prefetch,
        scheduler: cfg.scheduler.clone(),
        cluster: p.cluster,
    }
    .write()?;
    Ok(warning)
}

/// Path of disk `n`'s I/O scheduler attribute.
fn scheduler_path(n: u32) -> String {
    format!("/sys/block/ublkb{n}/queue/scheduler")
}

/// The I/O scheduler in use on disk `n` and those the kernel offers for it
/// (sysfs lists them with the active one in brackets).
pub fn scheduler_of(n: u32) -> Option<(String, Vec<String>)> {
    let s = std::fs::read_to_string(scheduler_path(n)).ok()?;
    let mut active = None;
    let mut all = Vec::new();
    for w in s.split_whitespace() {
        let name = w.trim_start_matches('[').trim_end_matches(']');
        if w.starts_with('[') {
            active = Some(name.to_string());
        }
        all.push(name.to_string());
    }
    Some((active?, all))
}

/// Give disk `n` the I/O scheduler `name`; Err: why not, in one line.
fn set_scheduler(n: u32, name: &str) -> Result<(), String> {
    let path = scheduler_path(n);
    if let Err(e) = std::fs::write(&path, name) {
        let offered = scheduler_of(n).map_or_else(String::new, |(_, all)| {
            format!(" (this kernel offers: {})", all.join(", "))
        });
        return Err(format!(
            "I/O scheduler {name:?} not set on /dev/ublkb{n}: {e}{offered}; the disk keeps the kernel's"
        ));
    }
    match scheduler_of(n) {
        Some((active, _)) if active == name => Ok(()),
        Some((active, _)) => Err(format!(
            "I/O scheduler {name:?} not set on /dev/ublkb{n}: {active} is in use"
        )),
        None => Err(format!("I/O scheduler of /dev/ublkb{n}: {path} unreadable")),
    }
}

/// The start-up messages (zero copy fallback, scheduler) in one.
pub(crate) fn join_messages(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}\n{b}")),
        (a, b) => a.or(b),
    }
}
