//! The shard server: accepts peers' connections and answers their requests
//! from one replica, which lives on its own thread (its storage does
//! blocking I/O through a per-thread engine).
//!
//! Contract:
//! - [`spawn_replica`] starts the replica thread: requests are applied one
//!   at a time in arrival order, in batches of what is queued (up to
//!   `CLUSTER_REPLICA_BATCH_REQUESTS`); after a batch that wrote blocks or
//!   changed metadata, the blocks are synced and the `persist` callback
//!   runs once, before any answer of the batch leaves (group commit: a
//!   fence, a version or an override record is durable before anyone
//!   relies on it, and every answer of the batch waits for it).
//! - [`serve`] accepts connections until the listener fails; per connection
//!   at most `CLUSTER_INFLIGHT_PER_CONN` requests are being handled (reading
//!   stops beyond that: TCP back-pressure reaches the sender). A bad frame
//!   closes that connection only.

use super::epoch::Epoch;
use super::overrides::OverrideMap;
use super::proto::{Request, Response};
use super::replica::{BlockStore, Delta, ReplicaCore, ReplicaMeta};
use super::wire::{Frame, FrameCodec};
use crate::constants::{CLUSTER_INFLIGHT_PER_CONN, CLUSTER_REPLICA_BATCH_REQUESTS};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Work for the replica thread.
pub enum ReplicaJob {
    /// A request and where its answer goes.
    Request(Request<Bytes>, oneshot::Sender<Response<Bytes>>),
    /// Override records learnt through gossip, with the floors they were
    /// published under (`ReplicaCore::merge_gossip`).
    MergeGossip(BTreeMap<String, Epoch>, OverrideMap),
}

/// The replica thread's inbox.
#[derive(Clone)]
pub struct ReplicaHandle {
    tx: std::sync::mpsc::Sender<ReplicaJob>,
    served: Arc<AtomicU64>,
}

impl ReplicaHandle {
    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Merge gossiped override records (and floors) into the replica's map.
    pub fn merge_gossip(&self, floors: BTreeMap<String, Epoch>, m: OverrideMap) {
        let _ = self.tx.send(ReplicaJob::MergeGossip(floors, m));
    }

    /// Apply `req` on the replica thread.
    pub async fn call(&self, req: Request<Bytes>) -> Response<Bytes> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(ReplicaJob::Request(req, tx)).is_err() {
            return Response::Failed {
                reason: "replica stopped".into(),
            };
        }
        rx.await.unwrap_or(Response::Failed {
            reason: "replica stopped".into(),
        })
    }
}

/// Start the replica thread. `make` builds the replica on that thread;
/// `persist` makes its metadata changes durable (an error fails the
/// request): it gets the whole metadata and, when the replica journals, the
/// changes the request made.
pub fn spawn_replica<S, M, P>(make: M, mut persist: P) -> ReplicaHandle
where
    S: BlockStore<Data = Bytes>,
    M: FnOnce() -> ReplicaCore<S> + Send + 'static,
    P: FnMut(&ReplicaMeta, Vec<Delta>) -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel::<ReplicaJob>();
    let served = Arc::new(AtomicU64::new(0));
    let served2 = served.clone();
    std::thread::Builder::new()
        .name("replica".into())
        .spawn(move || {
            let mut core = make();
            let mut answers = Vec::with_capacity(CLUSTER_REPLICA_BATCH_REQUESTS);
            while let Ok(first) = rx.recv() {
                let mut job = Some(first);
                let mut durable = false; // the batch must sync and persist
                while let Some(j) = job.take() {
                    match j {
                        ReplicaJob::Request(req, reply) => {
                            served2.fetch_add(1, Ordering::Relaxed);
                            let mutates = ReplicaCore::<S>::mutates_meta(&req);
                            let resp = core.handle(req);
                            let needs = mutates && !matches!(resp, Response::Fenced { .. });
                            durable |= needs;
                            answers.push((reply, resp, needs));
                        }
                        ReplicaJob::MergeGossip(floors, m) => {
                            durable |= core.merge_gossip(&floors, &m) > 0;
                        }
                    }
                    if answers.len() < CLUSTER_REPLICA_BATCH_REQUESTS {
                        job = rx.try_recv().ok();
                    }
                }
                let res = if durable {
                    let deltas = core
                        .journal
                        .as_mut()
                        .map(std::mem::take)
                        .unwrap_or_default();
                    core.sync()
                        .map_err(|e| e.to_string())
                        .and_then(|()| persist(&core.meta, deltas))
                } else {
                    Ok(())
                };
                if let Err(e) = &res {
                    tracing::warn!("persisting replica state: {e}");
                }
                for (reply, mut resp, needs) in answers.drain(..) {
                    if let (true, Err(e)) = (needs, &res) {
                        resp = Response::Failed {
                            reason: format!("persisting replica state: {e}"),
                        };
                    }
                    let _ = reply.send(resp);
                }
            }
        })
        .expect("spawn the replica thread");
    ReplicaHandle { tx, served }
}

/// Serve peers on `listener` from `replica` until the listener fails.
pub async fn serve(listener: TcpListener, replica: ReplicaHandle) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let replica = replica.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            let mut source = FramedRead::new(rd, FrameCodec::default());
            let (tx, mut rx) = mpsc::channel::<Frame>(CLUSTER_INFLIGHT_PER_CONN);
            let writer = tokio::spawn(async move {
                let mut sink = FramedWrite::new(wr, FrameCodec::default());
                while let Some(f) = rx.recv().await {
                    if let Err(e) = sink.send(f).await {
                        tracing::debug!("{peer}: write: {e}");
                        break;
                    }
                }
            });
            let slots = Arc::new(Semaphore::new(CLUSTER_INFLIGHT_PER_CONN));
            while let Some(item) = source.next().await {
                let frame = match item {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("{peer}: dropping connection: {e}");
                        break;
                    }
                };
                let id = frame.id;
                let req = match frame.into_request() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("{peer}: dropping connection: {e}");
                        break;
                    }
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (replica, tx) = (replica.clone(), tx.clone());
                tokio::spawn(async move {
                    let resp = replica.call(req).await;
                    match Frame::response(id, resp) {
                        Ok(f) => {
                            let _ = tx.send(f).await;
                        }
                        Err(e) => tracing::warn!("{peer}: response {id}: {e}"),
                    }
                    drop(slot);
                });
            }
            drop(tx);
            let _ = writer.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::conn::Connection;
    use crate::cluster::epoch::{Epoch, Version};
    use crate::cluster::store::MemBytesStore;
    use crate::cluster::wire::WireError;
    use crate::constants::CLUSTER_BLOCK_BYTES;
    use tokio::io::AsyncWriteExt;

    async fn start() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = spawn_replica(
            || ReplicaCore::new(MemBytesStore::default(), ReplicaMeta::default()),
            |_, _| Ok(()),
        );
        tokio::spawn(serve(l, h));
        addr
    }

    fn ep(t: u64) -> Epoch {
        Epoch { term: t, owner: 1 }
    }

    fn write(t: u64, seq: u64, block: u64, fill: u8) -> Request<Bytes> {
        Request::Write {
            volume: "v".into(),
            epoch: ep(t),
            first_block: block,
            version: Version { epoch: ep(t), seq },
            blocks: vec![Bytes::from(vec![fill; CLUSTER_BLOCK_BYTES as usize])],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_read_and_fence_over_tcp() {
        let addr = start().await;
        let c = Connection::connect(addr).await.unwrap();
        assert_eq!(c.call(write(1, 1, 3, 0xab)).await.unwrap(), Response::Ok);
        let r = c
            .call(Request::Read {
                volume: "v".into(),
                epoch: ep(1),
                first_block: 3,
                n_blocks: 1,
            })
            .await
            .unwrap();
        let Response::Data { versions, blocks } = r else {
            panic!("{r:?}")
        };
        assert_eq!(versions[0].seq, 1);
        assert!(blocks[0].iter().all(|&b| b == 0xab));
        let f = Request::Fence {
            volume: "v".into(),
            epoch: ep(2),
        };
        assert!(matches!(c.call(f).await.unwrap(), Response::FenceOk { .. }));
        assert_eq!(
            c.call(write(1, 2, 3, 0xcd)).await.unwrap(),
            Response::Fenced { current: ep(2) }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_calls_share_one_connection() {
        let addr = start().await;
        let c = Arc::new(Connection::connect(addr).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..(4 * CLUSTER_INFLIGHT_PER_CONN as u64) {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.call(write(1, i + 1, i, i as u8)).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Response::Ok);
        }
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_frame_closes_only_that_connection() {
        let addr = start().await;
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut bytes = Frame::request(1, write(1, 1, 0, 1))
            .unwrap()
            .encode()
            .unwrap()
            .to_vec();
        let n = bytes.len();
        bytes[n - 1] ^= 1; // corrupt the data: checksum mismatch
        raw.write_u32(n as u32).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        let mut buf = [0u8; 16];
        let got = tokio::io::AsyncReadExt::read(&mut raw, &mut buf)
            .await
            .unwrap();
        assert_eq!(got, 0, "the server closes the connection without answering");
        // the write was not applied, and other connections still work
        let c = Connection::connect(addr).await.unwrap();
        let r = c
            .call(Request::Read {
                volume: "v".into(),
                epoch: ep(1),
                first_block: 0,
                n_blocks: 1,
            })
            .await
            .unwrap();
        let Response::Data { versions, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(versions[0], Version::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unanswered_calls_time_out_and_dead_peers_fail_fast() {
        // a listener that accepts and never answers
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            drop(s);
        });
        let c = Connection::connect(addr).await.unwrap();
        let t0 = std::time::Instant::now();
        let e = c.call(write(1, 1, 0, 0)).await.unwrap_err();
        assert!(matches!(e, WireError::Timeout(_)), "{e}");
        let ms = crate::constants::CLUSTER_REQUEST_TIMEOUT_MS as u128;
        assert!(t0.elapsed().as_millis() >= ms && t0.elapsed().as_millis() < ms + 1_000);
        hold.abort();
        // nothing listens on a closed port
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(Connection::connect(dead).await.is_err());
    }
}
