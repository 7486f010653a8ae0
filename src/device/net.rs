//! The network thread of a device over a cluster volume: one thread, one
//! tokio runtime (current-thread) owning the [`ClusterClient`]; gossip,
//! connections and re-replication all run there.
//!
//! Contract:
//! - [`NetThread::start`] joins the cluster and attaches the volume
//!   (fencing any earlier attacher) before it returns, so a device is never
//!   added over a volume that cannot be reached; on failure the thread is
//!   gone and the error says why.
//! - It then serves the queues' [`NetEnd`]s: one request per queue per
//!   pass (round robin), each run to its end through the client (the
//!   attacher runs one operation at a time), its result posted back to the
//!   queue. Reads and writes use the tag's buffer in place; a request that
//!   finds no live replica is retried for `DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS`
//!   (gossip liveness flaps under load); WRITE_ZEROES
//!   (and DISCARD) write zero blocks in `DEVICE_CLUSTER_ZERO_CHUNK_BYTES`
//!   pieces. A client error completes the request with EIO (EINVAL for a
//!   range the volume does not have); once fenced by a newer attacher every
//!   request fails.
//! - With no request waiting it lets re-replication and rebalancing run
//!   ([`ClusterClient::idle`]) until a queue pushes one; under load it still
//!   ticks the client every `DEVICE_CLUSTER_IDLE_MS`.
//! - [`NetThread::stop`] (after the queue threads exited, so nothing is
//!   out) ends the loop and leaves gossip.

use crate::cluster::attacher::OpError;
use crate::cluster::client::{ClientConfig, ClientError, ClusterClient};
use crate::cluster::rebalance::Limits;
use crate::constants::{
    CLUSTER_OUT_AFTER_MS, DEVICE_CLUSTER_IDLE_MS, DEVICE_CLUSTER_RETRY_MS,
    DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS, DEVICE_CLUSTER_WAIT_MS, DEVICE_CLUSTER_ZERO_CHUNK_BYTES,
};
use crate::device::handoff::{NetDone, NetEnd, NetOp, NetRequest};
use crate::device::DeviceError;
use serde::{Deserialize, Serialize};
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
                    let client = serve_ends(client, ends, &notify2, &stop2).await;
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

/// The serving loop; returns the client when stopped.
pub async fn serve_ends(
    mut client: ClusterClient,
    mut ends: Vec<NetEnd>,
    notify: &Notify,
    stop: &AtomicBool,
) -> ClusterClient {
    let idle = Duration::from_millis(DEVICE_CLUSTER_IDLE_MS);
    let mut zeros = Vec::new();
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let mut served = 0;
        for end in ends.iter_mut() {
            if let Some(req) = end.pop() {
                let res = serve_one(&mut client, &req, &mut zeros).await;
                end.post(NetDone { tag: req.tag, res });
                served += 1;
            }
        }
        if served == 0 {
            // Nothing waiting: re-replication runs until a queue pushes.
            tokio::select! {
                _ = notify.notified() => {}
                _ = client.idle(idle) => last_tick = Instant::now(),
            }
        } else if last_tick.elapsed() >= idle {
            client.idle(Duration::ZERO).await;
            last_tick = Instant::now();
        }
    }
    client
}

fn errno_of(e: &ClientError) -> i32 {
    match e {
        ClientError::Range { .. } | ClientError::Op(OpError::BadRange) => libc::EINVAL,
        _ => libc::EIO,
    }
}

/// Run one request to its end; the tag's result. A request that finds no
/// live replica is retried (the client ticking in between, so its view of
/// the members refreshes) for up to `DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS`:
/// liveness comes from gossip and flaps on a loaded host, and a block
/// device waits out a path that comes back rather than failing the I/O.
async fn serve_one(client: &mut ClusterClient, req: &NetRequest, zeros: &mut Vec<u8>) -> i32 {
    let t0 = Instant::now();
    let wait = Duration::from_millis(DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS);
    let mut tries = 0u32;
    let r = loop {
        match attempt(client, req, zeros).await {
            Err(ClientError::Op(OpError::Unavailable(s))) if t0.elapsed() < wait => {
                if tries % 25 == 0 {
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
                tries += 1;
                client
                    .idle(Duration::from_millis(DEVICE_CLUSTER_RETRY_MS))
                    .await;
            }
            r => break r,
        }
    };
    match r {
        Ok(()) if req.op == NetOp::WriteZeroes => 0,
        Ok(()) => req.len as i32,
        Err(e) => {
            tracing::warn!(
                "cluster {:?} at {} len {}: {e}",
                req.op,
                req.offset,
                req.len
            );
            -errno_of(&e)
        }
    }
}

/// One try of a request.
async fn attempt(
    client: &mut ClusterClient,
    req: &NetRequest,
    zeros: &mut Vec<u8>,
) -> Result<(), ClientError> {
    let len = req.len as usize;
    match req.op {
        NetOp::Read => {
            let data = client.read(req.offset, req.len).await?;
            // SAFETY: `buf` is the tag's ublk buffer of at least `len`
            // bytes (the queue checked the length against the buffer
            // size), which the queue thread leaves alone until this
            // request's result is posted (`handoff` contract).
            let dst = unsafe { std::slice::from_raw_parts_mut(req.buf.0, len) };
            dst.copy_from_slice(&data[..len]);
            Ok(())
        }
        NetOp::Write => {
            // SAFETY: as for reads: the tag's buffer, `len` bytes, ours
            // until the result is posted.
            let src = unsafe { std::slice::from_raw_parts(req.buf.0, len) };
            client.write(req.offset, src).await
        }
        NetOp::WriteZeroes => {
            if zeros.is_empty() {
                zeros.resize(DEVICE_CLUSTER_ZERO_CHUNK_BYTES as usize, 0);
            }
            let mut at = req.offset;
            let end = req.offset + req.len;
            while at < end {
                let n = (end - at).min(DEVICE_CLUSTER_ZERO_CHUNK_BYTES);
                client.write(at, &zeros[..n as usize]).await?;
                at += n;
            }
            Ok(())
        }
    }
}
