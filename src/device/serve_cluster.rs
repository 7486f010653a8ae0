//! The life cycle of a device over a cluster volume: the same contract as
//! [`crate::device::serve::serve`] (checks first, `notify` once, serve until
//! stopped, recovery), with a network thread instead of a pool.
//!
//! Contract (what differs from a local volume):
//! - Copy mode only: `--zero-copy on` is refused, `auto` falls back with a
//!   message (the network thread reads and fills the ublk buffers).
//! - Prefetching needs a stage tier on this node (`--stage-tier PATH`, a
//!   file or block device): the inference thread predicts as for a pool's
//!   volume and the network thread stages shards there
//!   (`prefetch::remote`); reads of staged shards are served from it.
//! - The cluster is joined and the volume attached (fencing any earlier
//!   attacher) before the device is added; a cluster that cannot be reached
//!   fails `add` with the client's error and creates nothing.
//! - The disk has no volatile cache (storage nodes acknowledge durable
//!   writes), so the kernel sends no FLUSH; one that comes completes at once.
//! - The device's record carries the [`ClusterSource`], so `recover` joins
//!   the same cluster and attaches again (a new epoch fences the dead daemon).

use crate::constants::{
    CLUSTER_SHARD_BYTES, DEVICE_CLUSTER_RING_REQUESTS, DEVICE_STAGE_FETCHES_MAX,
    DEVICE_STAGE_LEASE_MS, DEVICE_TRACE_RING_EVENTS,
};
use crate::device::config::online_cpus;
use crate::device::features::{
    probe, UBLK_F_AUTO_BUF_REG, UBLK_F_USER_RECOVERY, UBLK_F_USER_RECOVERY_REISSUE,
};
use crate::device::handoff::channel;
use crate::device::metrics::trace_ring;
use crate::device::metrics::TraceConsumer;
use crate::device::net::{ClusterSource, NetThread, Stage};
use crate::device::registry::DeviceRecord;
use crate::device::registry::PrefetchRecord;
use crate::device::remote_queue::{run_remote_queue, RemoteCtx};
use crate::device::roster::QueueRoster;
use crate::device::serve::{
    device_exists, device_params, new_ctrl, publish, stop_on_signal, Publication, Ready,
    ServeOptions,
};
use crate::device::DeviceError;
use crate::io::file::FileDev;
use crate::io::BlockDev;
use crate::prefetch::live::{Live, LiveConfig, LiveError};
use crate::prefetch::remote::{RemoteStageCore, RemoteStageParams, StagedSet};
use libublk::ctrl::UblkCtrl;
use libublk::io::UblkDev;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Zero copy for a cluster volume: `(false, fallback message)` or the refusal.
pub fn cluster_zero_copy(
    mode: crate::device::config::ZeroCopyMode,
) -> Result<Option<String>, DeviceError> {
    use crate::device::config::ZeroCopyMode;
    const WHY: &str = "a cluster volume's data passes through user memory \
                       (the network thread reads and fills the ublk buffers)";
    match mode {
        ZeroCopyMode::Off => Ok(None),
        ZeroCopyMode::On => Err(DeviceError::ZeroCopyUnavailable(WHY.into())),
        ZeroCopyMode::Auto => Ok(Some(format!("zero copy not used: {WHY}"))),
    }
}

/// Add (or recover) a device over the cluster volume `src`, serve it until
/// it stops. `tell` reports readiness once.
pub(crate) fn serve_cluster(
    opts: ServeOptions,
    src: ClusterSource,
    signals: nix::sys::signal::SigSet,
    tell: impl Fn(Ready) + Send + Sync + Clone + 'static,
) -> Result<(), DeviceError> {
    let r = run(opts, src, signals, tell.clone());
    if let Err(e) = &r {
        tell(Err(DeviceError::Ublk(e.to_string())));
    }
    r
}

fn run(
    opts: ServeOptions,
    src: ClusterSource,
    signals: nix::sys::signal::SigSet,
    tell: impl Fn(Ready) + Send + Sync + Clone + 'static,
) -> Result<(), DeviceError> {
    let features = probe()?;
    let online = online_cpus()?;
    let cfg = opts.config.clone();
    // limits and CPUs (its zero-copy verdict is replaced below)
    cfg.validate(&online, features)?;
    let message = cluster_zero_copy(cfg.zero_copy)?;
    match (&opts.prefetch, &src.stage_tier) {
        (Some(_), None) => {
            return Err(DeviceError::Ublk(
                "prefetching a cluster volume needs a stage tier (--stage-tier PATH)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(DeviceError::Ublk(
                "a stage tier is filled by the prefetcher: give --prefetch (none: demand \
                 promotion alone)"
                    .into(),
            ))
        }
        _ => {}
    }
    match (cfg.number, opts.recover) {
        (Some(n), false) if device_exists(n) => return Err(DeviceError::Busy(n)),
        (Some(n), true) if !device_exists(n) => return Err(DeviceError::NoSuchDevice(n)),
        (None, true) => return Err(DeviceError::Ublk("recover needs a device number".into())),
        _ => {}
    }
    let nq = cfg.queues as usize;
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut queue_ends = Vec::with_capacity(nq);
    let mut net_ends = Vec::with_capacity(nq);
    for _ in 0..nq {
        let (q, n) = channel(cfg.depth, DEVICE_CLUSTER_RING_REQUESTS, notify.clone())
            .map_err(|e| DeviceError::Os("creating an eventfd".into(), e))?;
        queue_ends.push(Some(q));
        net_ends.push(n);
    }
    let (producers, consumers): (Vec<_>, Vec<_>) = (0..nq)
        .map(|_| trace_ring(DEVICE_TRACE_RING_EVENTS))
        .unzip();
    let volume_id = crc32c::crc32c(src.volume.as_bytes());
    let start = Instant::now();
    // The prefetcher and the stage tier (checked before anything exists).
    let (live, stage) = match (&opts.prefetch, &src.stage_tier) {
        (Some(lc), Some(path)) => {
            let (live, stage) = stage_of(&src, path, lc, volume_id, consumers, start, &notify)?;
            (Some(live), Some(stage))
        }
        _ => (None, None),
    };
    // Join and attach before anything exists in the kernel.
    let net = NetThread::start(&src, net_ends, notify, stage)?;
    let ctx = Arc::new(RemoteCtx {
        volume_id,
        poll: cfg.poll,
        start,
        roster: QueueRoster::new(cfg.cpus.clone(), producers),
        ends: Mutex::new(queue_ends),
    });
    let ctrl_flags = [UBLK_F_USER_RECOVERY, UBLK_F_USER_RECOVERY_REISSUE]
        .into_iter()
        .filter(|&f| features.has(f))
        .fold(0, |a, f| a | f);
    debug_assert_eq!(ctrl_flags & UBLK_F_AUTO_BUF_REG, 0);
    let ctrl = new_ctrl(&cfg, ctrl_flags, opts.recover)?;
    let size = src.size_bytes;
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = size;
        // No volatile cache: a write is durable once acknowledged.
        dev.tgt.params = device_params(size, CLUSTER_SHARD_BYTES, 0, dev.dev_info.max_io_buf_bytes);
        Ok(())
    };
    let qctx = ctx.clone();
    let q_fn = move |qid: u16, dev: &UblkDev| run_remote_queue(qid, dev, &qctx);
    let number_cell = Arc::new(Mutex::new(None::<u32>));
    let number_out = number_cell.clone();
    let (cfg2, src2, tell2) = (cfg.clone(), src.clone(), tell.clone());
    let shared = live.as_ref().map(|l| l.shared());
    let prefetch = opts.prefetch.as_ref().map(PrefetchRecord::of);
    let device_fn = move |c: &UblkCtrl| {
        let n = c.dev_info().dev_id;
        *number_out.lock().expect("number") = Some(n);
        let r = publish(
            &ctx.roster,
            &cfg2,
            Publication {
                number: n,
                volume: src2.volume.clone(),
                start: ctx.start,
                live: shared.clone(),
                pool: std::path::PathBuf::new(),
                zero_copy: false,
                prefetch: prefetch.clone(),
                cluster: Some(src2.clone()),
            },
        );
        tell2(r.map(|warning| {
            (
                n,
                crate::device::serve::join_messages(message.clone(), warning),
            )
        }));
    };
    stop_on_signal(signals, number_cell.clone())?;
    let r = ctrl.run_target(tgt_init, q_fn, device_fn);
    // The queue threads waited for their requests: nothing is out.
    net.stop();
    drop(live);
    if opts.recover {
        let _ = ctrl.del_dev();
    }
    if let Some(n) = *number_cell.lock().expect("number") {
        DeviceRecord::remove(n);
    }
    r.map(|_| ()).map_err(DeviceError::from)
}

/// Open the stage tier, size its slots within the budget, start the
/// inference thread over the trace rings; the network thread's [`Stage`].
#[allow(clippy::too_many_arguments)]
pub fn stage_of(
    src: &ClusterSource,
    path: &std::path::Path,
    lc: &LiveConfig,
    volume_id: u32,
    consumers: Vec<TraceConsumer>,
    start: Instant,
    notify: &Arc<tokio::sync::Notify>,
) -> Result<(Live, Stage), DeviceError> {
    let tier = FileDev::open(path).map_err(|e| DeviceError::Ublk(format!("stage tier: {e}")))?;
    let size = tier.size_bytes();
    let budget = lc.budget_bytes.unwrap_or(size);
    if budget > size {
        return Err(LiveError::BudgetTooLarge { budget, hot: size }.into());
    }
    let slots = budget / CLUSTER_SHARD_BYTES;
    if slots == 0 {
        return Err(LiveError::Budget {
            budget,
            shard: CLUSTER_SHARD_BYTES,
        }
        .into());
    }
    let shards = src.size_bytes / CLUSTER_SHARD_BYTES;
    let staged = StagedSet::new(volume_id, shards);
    let wake_notify = notify.clone();
    let (live, preds) = Live::start_remote(
        lc,
        Box::new(staged.clone()),
        CLUSTER_SHARD_BYTES,
        consumers,
        start,
        Arc::new(move || wake_notify.notify_one()),
    )?;
    let core = RemoteStageCore::new(
        RemoteStageParams {
            volume: volume_id,
            shards,
            shard_bytes: CLUSTER_SHARD_BYTES,
            slots: slots.min(u64::from(u32::MAX)) as u32,
            fetch_max: DEVICE_STAGE_FETCHES_MAX,
            lease_ns: DEVICE_STAGE_LEASE_MS * 1_000_000,
        },
        start.elapsed().as_nanos() as u64,
    );
    let stage = Stage {
        core,
        tier: Box::new(tier),
        preds,
        staged,
        shared: live.shared(),
        start,
    };
    Ok((live, stage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::config::ZeroCopyMode;

    #[test]
    fn zero_copy_is_refused_or_falls_back() {
        assert!(matches!(
            cluster_zero_copy(ZeroCopyMode::On),
            Err(DeviceError::ZeroCopyUnavailable(_))
        ));
        assert!(cluster_zero_copy(ZeroCopyMode::Auto)
            .unwrap()
            .unwrap()
            .contains("user memory"));
        assert_eq!(cluster_zero_copy(ZeroCopyMode::Off).unwrap(), None);
    }
}
