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
    CLUSTER_OUT_AFTER_MS, DEVICE_CLUSTER_IDLE_MS, DEVICE_CLUSTER_RETRY_MS,
    DEVICE_CLUSTER_UNAVAILABLE_WAIT_MS, DEVICE_CLUSTER_WAIT_MS,
};
use crate::device::handoff::{NetDone, NetEnd, NetOp, NetRequest};
use crate::device::DeviceError;
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

/// The serving loop; returns the client when stopped.
pub async fn serve_ends(
    mut client: ClusterClient,
    mut ends: Vec<NetEnd>,
    notify: &Notify,
    stop: &AtomicBool,
) -> ClusterClient {
    let idle = Duration::from_millis(DEVICE_CLUSTER_IDLE_MS);
    let mut flights: HashMap<u64, Flight> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        // every request the queues pushed goes to the client at once
        for (i, end) in ends.iter_mut().enumerate() {
            while let Some(req) = end.pop() {
                let key = ((i as u64) << 16) | req.tag as u64;
                let f = Flight {
                    end: i,
                    req,
                    t0: Instant::now(),
                    tries: 0,
                    again_at: None,
                };
                if let Err(e) = submit(&mut client, key, &f.req) {
                    end.post(NetDone {
                        tag: req.tag,
                        res: failed(&f.req, &e),
                    });
                    continue;
                }
                flights.insert(key, f);
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
                ends[f.end].post(NetDone {
                    tag: f.req.tag,
                    res: failed(&f.req, &e),
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
                Err(e) => failed(&f.req, &e),
                Ok(data) => {
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
            });
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
