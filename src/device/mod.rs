//! The I/O Interceptor: volumes served as ublk block devices (`/dev/ublkbN`).
//!
//! Owns ublk control (add, start, stop, delete, recover), one pinned thread
//! per queue turning ublk requests into volume calls, the per-queue trace
//! rings and latency histograms, the per-device record under the run
//! directory and the daemon's control socket. See `kernel-notes/ublk.md`.
//!
//! Files: [`config`] (validated request, pinning, zero-copy decision),
//! [`features`] (kernel ublk features), [`queue`] (the queue threads),
//! [`metrics`] (trace ring, histograms, snapshots), [`registry`] (records),
//! [`control`] (the stats socket), [`serve`] (the daemon's life cycle),
//! [`xfer`] (one data transfer of a request, continued when short).
//! A device over a cluster volume: [`serve_cluster`] (its life cycle),
//! [`remote_queue`] (its queue threads), [`handoff`] (queue threads to the
//! network thread and back), [`net`] (the network thread).

pub mod config;
pub mod control;
pub mod features;
pub mod handoff;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod registry;
pub mod remote_queue;
pub mod roster;
pub mod serve;
pub mod serve_cluster;
pub mod xfer;

/// Errors of the device layer; each prints as one clear line.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the ublk driver is not loaded: {} is absent (load it with `modprobe ublk_drv`; needs Linux 6.0 or later)", features::UBLK_CONTROL)]
    NoDriver,
    #[error("device number {0} is in use (/dev/ublkc{0} exists)")]
    Busy(u32),
    #[error("no device number {0}")]
    NoSuchDevice(u32),
    #[error("invalid CPU list {0:?} (expected e.g. 0,2-3)")]
    BadCpuList(String),
    #[error("CPU {cpu} is not online (online: {online})")]
    CpuOffline { cpu: usize, online: String },
    #[error(
        "invalid I/O scheduler name {0:?} (expected e.g. none, mq-deadline, kyber, bfq, or kernel)"
    )]
    BadScheduler(String),
    #[error("queue depth {0} is out of range 1..={max}", max = crate::constants::DEVICE_DEPTH_MAX_REQUESTS)]
    Depth(u16),
    #[error("queue count {0} is out of range 1..={max}", max = crate::constants::DEVICE_QUEUES_MAX)]
    Queues(u16),
    #[error("zero copy unavailable: {0}")]
    ZeroCopyUnavailable(String),
    #[error("pool: {0}")]
    Pool(#[from] crate::shard::pool::PoolError),
    #[error("tier device {0} has no file descriptor for io_uring")]
    NoFd(String),
    #[error("ublk: {0}")]
    Ublk(String),
    #[error("{0}: {1}")]
    Os(String, #[source] std::io::Error),
    #[error("control socket: {0}")]
    Control(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("prefetch: {0}")]
    Prefetch(#[from] crate::prefetch::live::LiveError),
    #[error("/dev/ublkb{number} is deleted, but its daemon (pid {pid}) is still running after {secs} s; it holds the pool until it exits")]
    DaemonLingers { number: u32, pid: u32, secs: u64 },
}

impl From<libublk::UblkError> for DeviceError {
    fn from(e: libublk::UblkError) -> Self {
        DeviceError::Ublk(e.to_string())
    }
}
