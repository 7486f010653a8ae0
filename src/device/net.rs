//! The network thread of a device over a cluster volume: one thread, one
//! tokio runtime (current-thread) owning the [`ClusterClient`]; gossip,
//! connections and re-replication all run there.
//!
//! Contract:
//! - [`NetThread::start`] joins the cluster and attaches the volume
//!   (fencing any earlier attacher) before it returns, so a device is never
//!   added over a volume that cannot be reached; on failure the thread is
//!   gone and the error says why.
//! - It then serves the queues' [`NetEnd`]s: every request a queue pushed
//!   is handed to the client at once ([`ClusterClient::submit`], keyed by
//!   queue and tag), so requests run concurrently (up to
//!   `CLUSTER_ATTACHER_MAX_OPS` attacher operations; see `client` for the
//!   order kept); each result is posted back to its queue as it completes.
//!   A write's data is copied once out of the tag's buffer at submission; a
//!   read's is copied into it on completion. A request that finds no live
//!   replica is submitted again every `DEVICE_CLUSTER_RETRY_MS` for
//!   `DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS` (gossip liveness flaps under
//!   load); WRITE_ZEROES (and DISCARD) write shared zero blocks. A client
//!   error completes the request with EIO (EINVAL for a range the volume
//!   does not have); once fenced by a newer attacher every request fails.
//! - Replies, ticks, re-replication and rebalancing run inside
//!   [`ClusterClient::poll`], which returns when a request completes or
//!   after `DEVICE_CLUSTER_IDLE_MS`; a queue's push interrupts the wait.
//! - [`NetThread::stop`] (after the queue threads exited, so nothing is
//!   out) ends the loop and leaves gossip.

use crate::cluster::attacher::OpError;
use crate::cluster::client::{ClientConfig, ClientError, ClusterClient, Io};
use crate::cluster::rebalance::Limits;
use crate::constants::{
    BLOCK_SIZE_BYTES, CLUSTER_OUT_AFTER_MS, CLUSTER_SHARD_BYTES, DEVICE_CLUSTER_IDLE_MS,
    DEVICE_CLUSTER_RETRY_MS, DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS, DEVICE_CLUSTER_WAIT_MS,
    DEVICE_STATS_PUBLISH_MS,
};
use crate::device::handoff::{NetDone, NetEnd, NetOp, NetRequest};
use crate::device::DeviceError;
use crate::io::{AlignedBuf, BlockDev, IoError};
use crate::prefetch::live::LiveShared;
use crate::prefetch::remote::{Decision, Fetched, ReadPlan, RemoteStageCore, StagedSet};
use crate::prefetch::ring::PredictionRx;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Which cluster volume a device serves, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSource {
    /// Gossip addresses of storage nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// This daemon's own gossip address.
    pub gossip: SocketAddr,
    pub volume: String,
    pub size_bytes: u64,
    pub replicas: usize,
    /// Storage nodes to wait for before attaching.
    pub nodes: usize,
    /// The attaching node's stage tier (`add --stage-tier`, a file or
    /// block device): staged copies of the volume's shards, with prefetching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_tier: Option<std::path::PathBuf>,
}

impl ClusterSource {
    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            id: format!("ublk-{}", std::process::id()),
            gossip: self.gossip,
            seeds: self.seeds.clone(),
            volume: self.volume.clone(),
            size_bytes: self.size_bytes,
            replicas: self.replicas,
            expect_nodes: self.nodes,
            wait_ms: DEVICE_CLUSTER_WAIT_MS,
            out_after_ms: CLUSTER_OUT_AFTER_MS,
            rebalance: Limits::default(),
        }
    }
}

/// The running network thread.
pub struct NetThread {
    stop: Arc<AtomicBool>,
    notify: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetThread {
    /// Attach `src` and serve `ends` (woken through `notify`) on a new thread.
    pub fn start(
        src: &ClusterSource,
        ends: Vec<NetEnd>,
        notify: Arc<Notify>,
        stage: Option<Stage>,
    ) -> Result<NetThread, DeviceError> {
        let cfg = src.client_config();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop2, notify2) = (stop.clone(), notify.clone());
        let thread = std::thread::Builder::new()
            .name("shardblk-net".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("starting the async runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match ClusterClient::connect(cfg).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let client = serve_ends(client, ends, stage, &notify2, &stop2).await;
                    client.shutdown().await;
                });
            })
            .map_err(|e| DeviceError::Os("spawning the network thread".into(), e))?;
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err("the network thread died".into()));
        match started {
            Ok(()) => Ok(NetThread {
                stop,
                notify,
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = thread.join();
                Err(DeviceError::Cluster(e))
            }
        }
    }

    /// End the loop and wait for the thread (call once no request is out).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.notify.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NetThread {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Staging onto the attaching node's stage tier: the decisions
/// ([`RemoteStageCore`]), the tier, the predictions to stage and where the
/// figures go. Owned by the network thread.
pub struct Stage {
    pub core: RemoteStageCore,
    pub tier: Box<dyn BlockDev>,
    pub preds: PredictionRx,
    /// Published for the inference thread's filters.
    pub staged: StagedSet,
    pub shared: Arc<LiveShared>,
    /// The clock of the core's times.
    pub start: Instant,
}

impl Stage {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Tags of staging fetches in the client (above every queue's key, below
/// the client's private tags).
const FETCH_TAG: u64 = 1 << 62;

/// A request the network thread holds: handed to the client, or waiting
/// to be handed again (no live replica yet).
struct Flight {
    end: usize,
    req: NetRequest,
    t0: Instant,
    tries: u32,
    /// When to submit it again (`None`: submitted).
    again_at: Option<Instant>,
}

/// Bytes of a request's buffer: `len` at `off`.
///
/// # Safety
/// `req.buf` must be the tag's buffer of at least `req.len` bytes, left to
/// the network thread until its result is posted (`handoff` contract).
unsafe fn buf_of<'a>(req: NetRequest, off: u64, len: u64) -> &'a mut [u8] {
    debug_assert!(off + len <= req.len);
    // SAFETY: per this function's contract, in bounds.
    unsafe { std::slice::from_raw_parts_mut(req.buf.0.add(off as usize), len as usize) }
}

/// Move `len` bytes between `mem` and the stage tier at `at`, through the
/// aligned `bounce` when `mem` is not block-aligned (direct I/O).
fn tier_io(
    tier: &dyn BlockDev,
    bounce: &mut AlignedBuf,
    mem: &mut [u8],
    at: u64,
    write: bool,
) -> Result<(), IoError> {
    let aligned = (mem.as_ptr() as usize) % (BLOCK_SIZE_BYTES as usize) == 0;
    match (write, aligned) {
        (true, true) => tier.write_at(mem, at),
        (false, true) => tier.read_at(mem, at),
        (true, false) => {
            let mut done = 0;
            while done < mem.len() {
                let n = (mem.len() - done).min(bounce.len());
                bounce[..n].copy_from_slice(&mem[done..done + n]);
                tier.write_at(&bounce[..n], at + done as u64)?;
                done += n;
            }
            Ok(())
        }
        (false, false) => {
            let mut done = 0;
            while done < mem.len() {
                let n = (mem.len() - done).min(bounce.len());
                tier.read_at(&mut bounce[..n], at + done as u64)?;
                mem[done..done + n].copy_from_slice(&bounce[..n]);
                done += n;
            }
            Ok(())
        }
    }
}

impl Stage {
    /// Serve a read from the stage tier when the core says so; `false`:
    /// it goes to the replicas.
    fn try_local_read(&mut self, req: &NetRequest, bounce: &mut AlignedBuf) -> bool {
        let now = self.now_ns();
        let ReadPlan::Local(pieces) = self.core.read(req.offset, req.len, now) else {
            return false;
        };
        for p in pieces {
            // SAFETY: the piece lies inside the request (the core cuts it
            // from offset..offset+len); the buffer is ours (handoff).
            let mem = unsafe { buf_of(*req, p.buf_off, p.len) };
            if let Err(e) = tier_io(self.tier.as_ref(), bounce, mem, p.at, false) {
                tracing::warn!("stage tier read at {}: {e}: dropping the copy", p.at);
                self.drop_copy((req.offset + p.buf_off) / CLUSTER_SHARD_BYTES);
                return false;
            }
        }
        true
    }

    /// A write is about to go to the replicas: update the staged copies
    /// it touches first (submission order), zeros for WRITE_ZEROES.
    fn write_through(&mut self, req: &NetRequest, bounce: &mut AlignedBuf, zeros: &AlignedBuf) {
        for p in self.core.write_started(req.offset, req.len) {
            let r = match req.op {
                NetOp::WriteZeroes => {
                    let mut r = Ok(());
                    let mut done = 0;
                    while done < p.len && r.is_ok() {
                        let n = (p.len - done).min(zeros.len() as u64);
                        r = self.tier.write_at(&zeros[..n as usize], p.at + done);
                        done += n;
                    }
                    r
                }
                _ => {
                    // SAFETY: as in `try_local_read`.
                    let mem = unsafe { buf_of(*req, p.buf_off, p.len) };
                    tier_io(self.tier.as_ref(), bounce, mem, p.at, true)
                }
            };
            if let Err(e) = r {
                tracing::warn!("stage tier update at {}: {e}: dropping the copy", p.at);
                self.drop_copy((req.offset + p.buf_off) / CLUSTER_SHARD_BYTES);
            }
        }
    }

    fn drop_copy(&mut self, shard: u64) {
        self.core.invalidate(shard);
        self.staged.set(shard, false);
    }

    /// Start fetches of queued predictions while the core has room.
    fn start_fetches(&mut self, client: &mut ClusterClient) {
        let volume = self.core.params().volume;
        while self.core.fetches_in_flight() < self.core.params().fetch_max {
            // predictions deferred while their shards were written first
            let (v, shard) = match self.core.take_ready() {
                Some(s) => (volume, s),
                None => match self.preds.pop() {
                    Some(p) => (p.volume, p.shard),
                    None => return,
                },
            };
            let now = self.now_ns();
            let Decision::Fetch { evicted, .. } = self.core.predicted(v, shard, now) else {
                continue;
            };
            for s in evicted {
                self.staged.set(s, false);
            }
            if let Err(e) = client.submit(FETCH_TAG | shard, Io::Fetch { shard }) {
                tracing::debug!("staging shard {shard}: {e}");
                self.core.fetched(shard, false);
            }
        }
    }

    /// A staging fetch completed.
    fn on_fetched(&mut self, shard: u64, data: Option<Vec<u8>>, bounce: &mut AlignedBuf) {
        let Fetched::Install { slot } = self.core.fetched(shard, data.is_some()) else {
            return;
        };
        let mut data = data.expect("installed only with data");
        let at = u64::from(slot) * CLUSTER_SHARD_BYTES;
        let r = tier_io(self.tier.as_ref(), bounce, &mut data, at, true);
        if let Err(e) = &r {
            tracing::warn!("staging shard {shard} into slot {slot}: {e}");
        }
        let now = self.now_ns();
        self.core.installed(shard, r.is_ok(), now);
        self.staged.set(shard, self.core.is_staged(shard));
    }

    fn fenced(&mut self) {
        self.core.fenced();
        self.staged.clear();
    }

    fn publish(&self) {
        self.shared.publish_remote(self.core.stats());
    }
}

/// The serving loop; returns the client when stopped.
pub async fn serve_ends(
    mut client: ClusterClient,
    mut ends: Vec<NetEnd>,
    mut stage: Option<Stage>,
    notify: &Notify,
    stop: &AtomicBool,
) -> ClusterClient {
    let idle = Duration::from_millis(DEVICE_CLUSTER_IDLE_MS);
    let publish_every = Duration::from_millis(DEVICE_STATS_PUBLISH_MS);
    let mut last_publish = Instant::now();
    let mut flights: HashMap<u64, Flight> = HashMap::new();
    let mut bounce = AlignedBuf::new(CLUSTER_SHARD_BYTES as usize);
    let zeros = AlignedBuf::new(CLUSTER_SHARD_BYTES as usize);
    let mut fenced_seen = false;
    while !stop.load(Ordering::Acquire) {
        // every request the queues pushed goes to the client at once (or,
        // a read of staged shards, is served from the stage tier)
        for (i, end) in ends.iter_mut().enumerate() {
            while let Some(req) = end.pop() {
                let key = ((i as u64) << 16) | req.tag as u64;
                if let Some(st) = stage.as_mut() {
                    match req.op {
                        NetOp::Read if st.try_local_read(&req, &mut bounce) => {
                            end.post(NetDone {
                                tag: req.tag,
                                res: req.len as i32,
                                local: true,
                            });
                            continue;
                        }
                        NetOp::Read => {}
                        NetOp::Write | NetOp::WriteZeroes => {
                            st.write_through(&req, &mut bounce, &zeros)
                        }
                    }
                }
                let f = Flight {
                    end: i,
                    req,
                    t0: Instant::now(),
                    tries: 0,
                    again_at: None,
                };
                if let Err(e) = submit(&mut client, key, &f.req) {
                    ended(&mut stage, &f, false);
                    end.post(NetDone {
                        tag: req.tag,
                        res: failed(&f.req, &e),
                        local: false,
                    });
                    continue;
                }
                flights.insert(key, f);
            }
        }
        if let Some(st) = stage.as_mut() {
            if client.is_fenced() && !fenced_seen {
                fenced_seen = true;
                st.fenced();
            }
            if !fenced_seen {
                st.start_fetches(&mut client);
            }
            st.core.tick(st.now_ns());
            if last_publish.elapsed() >= publish_every {
                st.publish();
                last_publish = Instant::now();
            }
        }
        let now = Instant::now();
        let mut next_again: Option<Instant> = None;
        let due: Vec<u64> = flights
            .iter()
            .filter_map(|(k, f)| match f.again_at {
                Some(t) if t <= now => Some(*k),
                Some(t) => {
                    next_again = Some(next_again.map_or(t, |n| n.min(t)));
                    None
                }
                None => None,
            })
            .collect();
        for key in due {
            let f = flights.get_mut(&key).expect("due");
            f.again_at = None;
            if let Err(e) = submit(&mut client, key, &f.req) {
                let f = flights.remove(&key).expect("due");
                ended(&mut stage, &f, false);
                ends[f.end].post(NetDone {
                    tag: f.req.tag,
                    res: failed(&f.req, &e),
                    local: false,
                });
            }
        }
        let wait = next_again.map_or(idle, |t| t.saturating_duration_since(now).min(idle));
        // replies, ticks and background work run inside poll; a push from
        // a queue interrupts the wait
        let done = tokio::select! {
            _ = notify.notified() => Vec::new(),
            d = client.poll(wait) => d,
        };
        for d in done {
            if d.tag & FETCH_TAG != 0 && d.tag < 1 << 63 {
                if let Some(st) = stage.as_mut() {
                    let data = match d.result {
                        Ok(data) => data,
                        Err(e) => {
                            tracing::debug!("staging shard {}: {e}", d.tag & !FETCH_TAG);
                            None
                        }
                    };
                    st.on_fetched(d.tag & !FETCH_TAG, data, &mut bounce);
                }
                continue;
            }
            let Some(mut f) = flights.remove(&d.tag) else {
                continue;
            };
            let res = match d.result {
                Err(ClientError::Op(OpError::Unavailable(s)))
                    if f.t0.elapsed()
                        < Duration::from_millis(DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS) =>
                {
                    // liveness comes from gossip and flaps on a loaded
                    // host: a block device waits out a path that comes back
                    if f.tries % 25 == 0 {
                        let members: Vec<String> = client
                            .view()
                            .storage()
                            .map(|n| format!("{}{}", n.id, if n.live { "" } else { "(down)" }))
                            .collect();
                        tracing::warn!(
                            "no live replica of shard {s} (copies {:?}; members {members:?}): retrying",
                            client.replicas_of(s)
                        );
                    }
                    f.tries += 1;
                    f.again_at =
                        Some(Instant::now() + Duration::from_millis(DEVICE_CLUSTER_RETRY_MS));
                    flights.insert(d.tag, f);
                    continue;
                }
                Err(e) => {
                    ended(&mut stage, &f, false);
                    failed(&f.req, &e)
                }
                Ok(data) => {
                    ended(&mut stage, &f, true);
                    if let (NetOp::Read, Some(data)) = (f.req.op, data) {
                        let len = f.req.len as usize;
                        // SAFETY: `buf` is the tag's ublk buffer of at least
                        // `len` bytes (the queue checked the length against
                        // the buffer size), which the queue thread leaves
                        // alone until this request's result is posted
                        // (`handoff` contract).
                        let dst = unsafe { std::slice::from_raw_parts_mut(f.req.buf.0, len) };
                        dst.copy_from_slice(&data[..len]);
                    }
                    match f.req.op {
                        NetOp::WriteZeroes => 0,
                        _ => f.req.len as i32,
                    }
                }
            };
            ends[f.end].post(NetDone {
                tag: f.req.tag,
                res,
                local: false,
            });
        }
    }
    if let Some(st) = &stage {
        st.publish();
    }
    client
}

/// A request handed to the client ended (`ok`: the replicas answered it):
/// the stage core learns a write's end, and from a read (whose data the
/// attacher returns only after an epoch-check round sent after it started
/// made a quorum) that the attachment held when the read started.
fn ended(stage: &mut Option<Stage>, f: &Flight, ok: bool) {
    let Some(st) = stage.as_mut() else {
        return;
    };
    if ok && f.req.op == NetOp::Read {
        let started = f.t0.saturating_duration_since(st.start).as_nanos() as u64;
        st.core.confirmed(started);
    }
    if f.req.op != NetOp::Read {
        st.core.write_ended(f.req.offset, f.req.len, ok);
        if !ok {
            for s in f.req.offset / CLUSTER_SHARD_BYTES
                ..(f.req.offset + f.req.len).div_ceil(CLUSTER_SHARD_BYTES)
            {
                st.staged.set(s, st.core.is_staged(s));
            }
        }
    }
}

fn errno_of(e: &ClientError) -> i32 {
    match e {
        ClientError::Range { .. } | ClientError::Op(OpError::BadRange) => libc::EINVAL,
        _ => libc::EIO,
    }
}

/// The result a failed request completes with (logged).
fn failed(req: &NetRequest, e: &ClientError) -> i32 {
    tracing::warn!(
        "cluster {:?} at {} len {}: {e}",
        req.op,
        req.offset,
        req.len
    );
    -errno_of(e)
}

/// Hand one request to the client under `key`.
fn submit(client: &mut ClusterClient, key: u64, req: &NetRequest) -> Result<(), ClientError> {
    let (offset, len) = (req.offset, req.len);
    let io = match req.op {
        NetOp::Read => Io::Read { offset, len },
        NetOp::Write => {
            // SAFETY: as for reads: the tag's buffer, `len` bytes, ours
            // until the result is posted (copied here once).
            let src = unsafe { std::slice::from_raw_parts(req.buf.0, len as usize) };
            Io::Write {
                offset,
                data: Bytes::copy_from_slice(src),
            }
        }
        NetOp::WriteZeroes => Io::Zero { offset, len },
    };
    client.submit(key, io)
}
