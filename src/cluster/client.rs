//! A cluster client: attaches one cluster volume through the [`Attacher`]
//! state machine and drives it over real connections, with membership from
//! gossip (it joins chitchat as a `client`, never a placement member).
//!
//! Contract:
//! - [`ClusterClient::connect`] waits until `expect_nodes` storage nodes are
//!   live (placement is over the members known then; a member joining later
//!   is placed on by rebalancing), then attaches, fencing any earlier
//!   attacher of the volume.
//! - `write`/`read` take block-aligned byte ranges, cut them at cluster shard
//!   boundaries and run one attacher operation per piece, in order. A write
//!   returns once every live replica of each piece has it (see `attacher`).
//! - Re-replication and rebalancing run while the client is idle inside its
//!   calls, in [`ClusterClient::idle`], [`ClusterClient::settle`] and
//!   [`ClusterClient::rebalanced`]. Every tick the attacher learns the
//!   storage members gossip knows (a node joining, a node out), and the
//!   rebalancing status is published in this client's gossip state under
//!   `rebal:VOLUME` (JSON [`RebalanceStatus`]) for `cluster status`.
//!   Nodes gossip announces as leaving are passed on to the attacher
//!   (`Attacher::set_leaving`), which moves their copies off.
//! - Requests go out on one connection per peer (reconnected when closed);
//!   a failed call is simply retransmitted by the attacher.

use super::attacher::{Attacher, AttacherConfig, Event, OpError, RebalanceStatus};
use super::conn::Connection;
use super::epoch::Epoch;
use super::gossip::{self, ClusterView, ROLE_CLIENT};
use super::placement::{NodeId, ShardKey};
use super::proto::{Request, Response};
use super::rebalance::Limits;
use crate::constants::{
    CLUSTER_BLOCK_BYTES, CLUSTER_CLIENT_RETRY_MS, CLUSTER_CLIENT_TICK_MS, CLUSTER_FAIL_AFTER_MS,
    CLUSTER_LOCAL_VOLUME_BYTES, CLUSTER_OP_TIMEOUT_MS, CLUSTER_REPAIR_INTERVAL_MS,
    CLUSTER_SHARD_BYTES,
};
use bytes::Bytes;
use chitchat::ChitchatHandle;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const BS: u64 = CLUSTER_BLOCK_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("only {live} of {want} storage nodes live after {waited_ms} ms")]
    Members {
        live: usize,
        want: usize,
        waited_ms: u64,
    },
    #[error("attach: {0}")]
    Attach(OpError),
    #[error("{0}")]
    Op(#[from] OpError),
    #[error("fetch of shard {shard} from {node}: {reason}")]
    Fetch {
        node: String,
        shard: u64,
        reason: String,
    },
    #[error(
        "offset {offset} length {len}: must be multiples of {BS} inside the volume of {size} bytes"
    )]
    Range { offset: u64, len: u64, size: u64 },
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub id: String,
    pub gossip: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub volume: String,
    pub size_bytes: u64,
    pub replicas: usize,
    pub expect_nodes: usize,
    pub wait_ms: u64,
    /// A storage node dead this long is out of placement (rebalancing
    /// moves its homes); `CLUSTER_OUT_AFTER_MS` by default.
    pub out_after_ms: u64,
    pub rebalance: Limits,
}

type Reply = (NodeId, u64, Response<Bytes>);

pub struct ClusterClient {
    gossip: ChitchatHandle,
    att: Attacher<Bytes>,
    view: ClusterView,
    conns: Arc<tokio::sync::Mutex<HashMap<NodeId, Arc<Connection>>>>,
    tx: mpsc::UnboundedSender<Reply>,
    rx: mpsc::UnboundedReceiver<Reply>,
    t0: Instant,
    next_op: u64,
    pub repairs: u64,
    /// Shards moved by rebalancing.
    pub moves: u64,
    published: String,
}

impl ClusterClient {
    pub async fn connect(cfg: ClientConfig) -> Result<ClusterClient, ClientError> {
        if cfg.size_bytes == 0
            || cfg.size_bytes % CLUSTER_SHARD_BYTES != 0
            || cfg.size_bytes > CLUSTER_LOCAL_VOLUME_BYTES
        {
            return Err(ClientError::Range {
                offset: 0,
                len: cfg.size_bytes,
                size: CLUSTER_LOCAL_VOLUME_BYTES,
            });
        }
        let keys = vec![("role".to_string(), ROLE_CLIENT.to_string())];
        let gossip = gossip::start(&cfg.id, cfg.gossip, &cfg.seeds, keys)
            .await
            .map_err(|e| ClientError::Gossip(e.to_string()))?;
        let t0 = Instant::now();
        let view = loop {
            let v = ClusterView::of(&gossip).await;
            let live = v.storage().filter(|n| n.live && n.weight > 0.0).count();
            let waited_ms = t0.elapsed().as_millis() as u64;
            // every known node live, or long enough to have heard the live ones
            let heard = live == v.storage().count() || waited_ms >= 2 * CLUSTER_FAIL_AFTER_MS;
            if live >= cfg.expect_nodes && heard {
                break v;
            }
            if waited_ms > cfg.wait_ms {
                return Err(ClientError::Members {
                    live,
                    want: cfg.expect_nodes,
                    waited_ms,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let acfg = AttacherConfig {
            me: cfg.id.clone(),
            volume: cfg.volume.clone(),
            members: view.members(),
            replicas: cfg.replicas,
            blocks_per_shard: CLUSTER_SHARD_BYTES / BS,
            shards: cfg.size_bytes / CLUSTER_SHARD_BYTES,
            retry_ms: CLUSTER_CLIENT_RETRY_MS,
            op_timeout_ms: CLUSTER_OP_TIMEOUT_MS,
            repair_interval_ms: CLUSTER_REPAIR_INTERVAL_MS,
            out_after_ms: cfg.out_after_ms,
            rebalance: cfg.rebalance,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut c = ClusterClient {
            gossip,
            att: Attacher::new(acfg, 1),
            view,
            conns: Arc::default(),
            tx,
            rx,
            t0,
            next_op: 1,
            repairs: 0,
            moves: 0,
            published: String::new(),
        };
        c.att.attach(c.now(), Epoch::ZERO);
        match c.drive(None).await? {
            Some(Event::Attached(_)) => Ok(c),
            Some(Event::AttachFailed(e)) => Err(ClientError::Attach(e)),
            other => unreachable!("attach ended with {other:?}"),
        }
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn epoch(&self) -> Epoch {
        self.att.epoch()
    }

    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// Current copies of shard `shard` of the volume.
    pub fn replicas_of(&self, shard: u64) -> Vec<NodeId> {
        self.att
            .replicas_of(&ShardKey::new(&self.att.config().volume, shard))
    }

    fn dispatch(&self, to: NodeId, id: u64, req: Request<Bytes>) {
        let Some(addr) = self.view.listen_of(&to) else {
            return;
        };
        let (conns, tx) = (self.conns.clone(), self.tx.clone());
        tokio::spawn(async move {
            let conn = {
                let mut m = conns.lock().await;
                match m.get(&to).filter(|c| !c.is_closed() && c.peer() == addr) {
                    Some(c) => c.clone(),
                    None => match Connection::connect(addr).await {
                        Ok(c) => {
                            let c = Arc::new(c);
                            m.insert(to.clone(), c.clone());
                            c
                        }
                        Err(e) => {
                            tracing::debug!("connect {to} at {addr}: {e}");
                            return;
                        }
                    },
                }
            };
            match conn.call(req).await {
                Ok(resp) => {
                    let _ = tx.send((to, id, resp));
                }
                Err(e) => tracing::debug!("{to}: request {id}: {e}"),
            }
        });
    }

    /// Run the attacher until operation `op` ends (or, with `None`, until
    /// the attach ends); returns the event that ended it.
    async fn drive(&mut self, op: Option<u64>) -> Result<Option<Event<Bytes>>, ClientError> {
        let tick = Duration::from_millis(CLUSTER_CLIENT_TICK_MS);
        loop {
            let (out, events) = self.att.drain();
            for o in out {
                self.dispatch(o.to, o.id, o.req);
            }
            for ev in events {
                match &ev {
                    Event::Repaired { .. } => self.repairs += 1,
                    Event::Moved { .. } => self.moves += 1,
                    Event::Fenced(e) => return Err(ClientError::Op(OpError::Fenced(*e))),
                    Event::Attached(_) | Event::AttachFailed(_) if op.is_none() => {
                        return Ok(Some(ev))
                    }
                    Event::Wrote { op: id, .. } | Event::Read { op: id, .. } if Some(*id) == op => {
                        return Ok(Some(ev))
                    }
                    Event::Failed { op: id, error } if Some(*id) == op => {
                        return Err(ClientError::Op(error.clone()))
                    }
                    _ => {}
                }
            }
            let now = self.now();
            tokio::select! {
                Some((from, id, resp)) = self.rx.recv() => {
                    let view = &self.view;
                    self.att.on_response(&from, id, resp, now, &|n: &str| view.is_live(n));
                }
                _ = tokio::time::sleep(tick) => self.tick().await,
            }
        }
    }

    /// Start an operation, waiting while the attacher is busy (repair).
    async fn start(
        &mut self,
        mut f: impl FnMut(&mut Attacher<Bytes>, u64, u64, &ClusterView) -> Result<(), OpError>,
    ) -> Result<u64, ClientError> {
        loop {
            let op = self.next_op;
            let now = self.now();
            match f(&mut self.att, op, now, &self.view) {
                Ok(()) => {
                    self.next_op += 1;
                    return Ok(op);
                }
                Err(OpError::Busy) => {
                    // let the running repair go on
                    self.pump(Duration::from_millis(CLUSTER_CLIENT_TICK_MS))
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Refresh the membership view, tick the attacher, publish progress.
    async fn tick(&mut self) {
        self.view = ClusterView::of(&self.gossip).await;
        self.att.set_members(self.view.members());
        self.att.set_leaving(self.view.leaving());
        let view = &self.view;
        self.att.tick(self.now(), &|n: &str| view.is_live(n));
        if let Some(st) = self.att.rebalance_status() {
            let text = serde_json::to_string(&st).unwrap_or_default();
            if text != self.published {
                let key = gossip::rebalance_key(&self.att.config().volume);
                let cc = self.gossip.chitchat();
                cc.lock().await.self_node_state().set(key, text.clone());
                self.published = text;
            }
        }
    }

    /// Send what the attacher queued; count repairs and moves.
    fn flush_out(&mut self) {
        let (out, events) = self.att.drain();
        for o in out {
            self.dispatch(o.to, o.id, o.req);
        }
        for e in events {
            match e {
                Event::Repaired { .. } => self.repairs += 1,
                Event::Moved { .. } => self.moves += 1,
                _ => {}
            }
        }
    }

    /// Orphan copies the attacher asked their nodes to drop so far.
    pub fn orphans_dropped(&self) -> u64 {
        self.att.orphans_dropped()
    }

    /// The volume's rebalancing, once one was planned.
    pub fn rebalance_status(&self) -> Option<RebalanceStatus> {
        self.att.rebalance_status()
    }

    /// Let rebalancing run for up to `max` until it is done and its basis
    /// is exactly the live storage nodes; returns the final status when it
    /// got there.
    pub async fn rebalanced(&mut self, max: Duration) -> Option<RebalanceStatus> {
        let end = Instant::now() + max;
        loop {
            if let Some(st) = self.att.rebalance_status().filter(|s| s.done) {
                let mut live: Vec<&str> = self
                    .view
                    .storage()
                    .filter(|n| n.live)
                    .map(|n| n.id.as_str())
                    .collect();
                live.sort();
                if live == st.basis {
                    return Some(st);
                }
            }
            if Instant::now() >= end {
                return None;
            }
            self.pump(Duration::from_millis(CLUSTER_CLIENT_TICK_MS * 5))
                .await;
        }
    }

    /// Handle replies (re-replication goes on) for `d`, then refresh the
    /// membership view and tick once. For callers between operations.
    pub async fn idle(&mut self, d: Duration) {
        self.pump(d).await
    }

    /// Handle replies for `d`, then tick once (no operation of the caller's).
    async fn pump(&mut self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        loop {
            self.flush_out();
            let now = self.now();
            tokio::select! {
                Some((from, id, resp)) = self.rx.recv() => {
                    let view = &self.view;
                    self.att.on_response(&from, id, resp, now, &|n: &str| view.is_live(n));
                }
                _ = tokio::time::sleep_until(end) => break,
            }
        }
        self.tick().await;
        self.flush_out();
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let size = self.att.config().shards * CLUSTER_SHARD_BYTES;
        if offset % BS != 0 || len % BS != 0 || len == 0 || offset + len > size {
            return Err(ClientError::Range { offset, len, size });
        }
        Ok(())
    }

    /// Pieces of `[offset, offset+len)` cut at shard boundaries: `(offset, len)`.
    fn pieces(offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let end = ((at / CLUSTER_SHARD_BYTES + 1) * CLUSTER_SHARD_BYTES).min(offset + len);
            v.push((at, end - at));
            at = end;
        }
        v
    }

    /// Write `data` at `offset` on every live replica.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.check(offset, data.len() as u64)?;
        for (at, n) in Self::pieces(offset, data.len() as u64) {
            let s = (at - offset) as usize;
            let blocks: Vec<Bytes> = data[s..s + n as usize]
                .chunks(BS as usize)
                .map(Bytes::copy_from_slice)
                .collect();
            let op = self
                .start(|att, op, now, _| att.write(op, at / BS, blocks.clone(), now).map(|_| ()))
                .await?;
            self.drive(Some(op)).await?;
        }
        Ok(())
    }

    /// Read `len` bytes at `offset` from live replicas.
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        self.check(offset, len)?;
        let mut out = Vec::with_capacity(len as usize);
        for (at, n) in Self::pieces(offset, len) {
            let op = self
                .start(|att, op, now, view| {
                    att.read(op, at / BS, n / BS, now, &|x: &str| view.is_live(x))
                })
                .await?;
            match self.drive(Some(op)).await? {
                Some(Event::Read { blocks, .. }) => {
                    for b in blocks {
                        out.extend_from_slice(&b);
                    }
                }
                other => unreachable!("read ended with {other:?}"),
            }
        }
        Ok(out)
    }

    /// Let re-replication run for up to `max`, until every shard in
    /// `shards` has `R` live copies. Returns whether it got there.
    pub async fn settle(&mut self, shards: &[u64], max: Duration) -> bool {
        let end = Instant::now() + max;
        let r = self.att.config().replicas;
        loop {
            let ok = shards.iter().all(|&s| {
                let set = self.replicas_of(s);
                set.len() == r && set.iter().all(|n| self.view.is_live(n))
            });
            if ok || Instant::now() >= end {
                return ok;
            }
            self.pump(Duration::from_millis(CLUSTER_CLIENT_TICK_MS * 5))
                .await;
        }
    }

    /// Read shard `shard` straight from replica `node` (bypassing replica
    /// choice), for verification: `(block, version seq, data)` of written blocks.
    pub async fn fetch_from(
        &mut self,
        node: &str,
        shard: u64,
    ) -> Result<Vec<(u64, Bytes)>, ClientError> {
        let bps = CLUSTER_SHARD_BYTES / BS;
        let failed = |reason: String| ClientError::Fetch {
            node: node.to_string(),
            shard,
            reason,
        };
        let addr = self
            .view
            .listen_of(node)
            .ok_or_else(|| failed("not in this client's membership view".into()))?;
        let conn = Connection::connect(addr)
            .await
            .map_err(|e| failed(format!("connect {addr}: {e}")))?;
        let req = Request::Fetch {
            volume: self.att.config().volume.clone(),
            epoch: self.att.epoch(),
            first_block: shard * bps,
            n_blocks: bps,
        };
        match conn.call(req).await {
            Ok(Response::Blocks { entries }) => {
                Ok(entries.into_iter().map(|(b, _, d)| (b, d)).collect())
            }
            Ok(Response::Fenced { current }) => Err(OpError::Fenced(current).into()),
            Ok(Response::Failed { reason }) => Err(failed(reason)),
            Ok(other) => Err(failed(format!("unexpected answer {other:?}"))),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    pub async fn shutdown(self) {
        let _ = self.gossip.shutdown().await;
    }
}
