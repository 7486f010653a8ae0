//! A cluster client: attaches one cluster volume through the [`Attacher`]
//! state machine and drives it over real connections, with membership from
//! gossip (it joins chitchat as a `client`, never a placement member).
//!
//! Contract:
//! - [`ClusterClient::connect`] waits until `expect_nodes` storage nodes are
//!   live (placement is over the members known then; a member joining later
//!   is placed on by rebalancing), then attaches, fencing any earlier
//!   attacher of the volume.
//! - I/Os take block-aligned byte ranges, cut at cluster shard boundaries
//!   into one attacher operation per piece. [`ClusterClient::submit`] hands
//!   one over under a caller's tag and [`ClusterClient::poll`] runs the
//!   client and returns the I/Os that completed: many run at once, up to
//!   `CLUSTER_ATTACHER_MAX_OPS` attacher operations. Pieces start oldest
//!   I/O first; a piece the attacher refuses as busy waits, and no later
//!   piece of its shard starts before it (writes to the same blocks take
//!   their versions in submission order). A write completes once every
//!   live replica of each piece has it (see `attacher`); an I/O with a
//!   failed piece completes with that piece's error once its other
//!   pieces ended. `write`/`read` run one I/O to its end.
//! - Re-replication and rebalancing run inside `poll` and while the client is
//!   idle, in [`ClusterClient::idle`], [`ClusterClient::settle`] and
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
    CLUSTER_ATTACHER_MAX_OPS, CLUSTER_BLOCK_BYTES, CLUSTER_CLIENT_IDLE_TICK_MS,
    CLUSTER_CLIENT_RETRY_MS, CLUSTER_CLIENT_TICK_MS, CLUSTER_FAIL_AFTER_MS,
    CLUSTER_LOCAL_VOLUME_BYTES, CLUSTER_OP_TIMEOUT_MS, CLUSTER_REPAIR_INTERVAL_MS,
    CLUSTER_SHARD_BYTES,
};
use bytes::Bytes;
use chitchat::ChitchatHandle;
use std::collections::{BTreeMap, HashMap};
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

/// One block-aligned I/O handed to [`ClusterClient::submit`].
#[derive(Debug, Clone)]
pub enum Io {
    Read {
        offset: u64,
        len: u64,
    },
    /// `data` at `offset`.
    Write {
        offset: u64,
        data: Bytes,
    },
    /// `len` zero bytes at `offset`.
    Zero {
        offset: u64,
        len: u64,
    },
    /// Shard `shard` whole, for staging: the shard protocol's fetch (only
    /// written blocks cross the network; the rest read as zeros),
    /// confirmed by an epoch check like a read ([`Attacher::fetch`]).
    Fetch {
        shard: u64,
    },
}

/// A completed I/O: its tag, and for a read its data.
#[derive(Debug)]
pub struct Done {
    pub tag: u64,
    pub result: Result<Option<Vec<u8>>, ClientError>,
}

/// When `run_for` returns early.
#[derive(Debug, Clone, Copy)]
enum Until {
    Time,
    Done,
    Tag(u64),
    Attach,
}

enum Kind {
    Read,
    Fetch,
    Write(Bytes),
    Zero,
}

/// A submitted I/O: the pieces (one per shard it crosses) started so far.
struct Submitted {
    tag: u64,
    kind: Kind,
    offset: u64,
    /// The next byte not started yet, and the end.
    next: u64,
    end: u64,
    /// Pieces in flight.
    running: usize,
    /// A read's data, filled in as pieces return.
    data: Vec<u8>,
    /// The first error of a piece (no further piece starts).
    error: Option<ClientError>,
}

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
    /// Submitted I/Os by submission order; attacher operation → `(I/O,
    /// piece offset)`; completed I/Os not yet returned.
    ios: BTreeMap<u64, Submitted>,
    next_seq: u64,
    pieces: HashMap<u64, (u64, u64)>,
    done: Vec<Done>,
    /// Tags of the one-at-a-time `read`/`write` (above any caller's).
    next_private_tag: u64,
    zero_block: Bytes,
    next_tick: tokio::time::Instant,
    attach_result: Option<Event<Bytes>>,
    fenced: Option<Epoch>,
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
            max_ops: CLUSTER_ATTACHER_MAX_OPS,
            // a daemon restarted with the same id must not reuse an epoch
            incarnation: rand::random(),
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
            ios: BTreeMap::new(),
            next_seq: 0,
            pieces: HashMap::new(),
            done: Vec::new(),
            next_private_tag: 1 << 63,
            zero_block: Bytes::from(vec![0u8; BS as usize]),
            next_tick: tokio::time::Instant::now(),
            attach_result: None,
            fenced: None,
        };
        c.att.attach(c.now(), Epoch::ZERO);
        loop {
            c.run_for(Duration::from_millis(CLUSTER_CLIENT_TICK_MS), Until::Attach)
                .await;
            match c.attach_result.take() {
                Some(Event::Attached(_)) => return Ok(c),
                Some(Event::AttachFailed(e)) => return Err(ClientError::Attach(e)),
                Some(other) => unreachable!("attach ended with {other:?}"),
                None => {}
            }
        }
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn epoch(&self) -> Epoch {
        self.att.epoch()
    }

    /// Whether a newer attacher fenced this one (every I/O fails from then).
    pub fn is_fenced(&self) -> bool {
        self.fenced.is_some()
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

    /// Send what the attacher queued, act on its events, start waiting
    /// pieces while it admits them; until nothing moves.
    fn flush(&mut self) {
        loop {
            let (out, events) = self.att.drain();
            let quiet = out.is_empty() && events.is_empty();
            for o in out {
                self.dispatch(o.to, o.id, o.req);
            }
            for e in events {
                self.on_event(e);
            }
            if !self.start_waiting() && quiet {
                return;
            }
        }
    }

    fn on_event(&mut self, e: Event<Bytes>) {
        match e {
            Event::Repaired { .. } => self.repairs += 1,
            Event::Moved { .. } => self.moves += 1,
            Event::Rebalanced(_) => {}
            Event::Attached(_) | Event::AttachFailed(_) => self.attach_result = Some(e),
            Event::Fenced(epoch) => self.fenced = Some(epoch),
            Event::Wrote { op, .. } => self.piece_done(op, Ok(None)),
            Event::Read { op, blocks, .. } => self.piece_done(op, Ok(Some(blocks))),
            Event::Fetched { op, entries } => {
                let bps = CLUSTER_SHARD_BYTES / BS;
                if let Some(&(seq, at)) = self.pieces.get(&op) {
                    let first = at / BS;
                    if let Some(io) = self.ios.get_mut(&seq) {
                        for (b, _, d) in &entries {
                            // a replica answers the range it was asked
                            if *b < first || *b >= first + bps || d.len() as u64 != BS {
                                io.error.get_or_insert(ClientError::Fetch {
                                    node: "replica".into(),
                                    shard: first / bps,
                                    reason: format!("block {b} out of the shard's range"),
                                });
                                continue;
                            }
                            let o = ((b - first) * BS) as usize;
                            io.data[o..o + BS as usize].copy_from_slice(d);
                        }
                    }
                }
                self.piece_done(op, Ok(None))
            }
            Event::Failed { op, error } => self.piece_done(op, Err(error)),
        }
    }

    /// A piece's operation ended; its I/O completes once every piece did.
    fn piece_done(&mut self, op: u64, res: Result<Option<Vec<Bytes>>, OpError>) {
        let Some((seq, at)) = self.pieces.remove(&op) else {
            return;
        };
        let Some(io) = self.ios.get_mut(&seq) else {
            return;
        };
        io.running -= 1;
        match res {
            Ok(Some(blocks)) => {
                let mut o = (at - io.offset) as usize;
                for b in blocks {
                    io.data[o..o + b.len()].copy_from_slice(&b);
                    o += b.len();
                }
            }
            Ok(None) => {}
            Err(e) => {
                io.error.get_or_insert(ClientError::Op(e));
            }
        }
        self.finish(seq);
    }

    /// Complete I/O `seq` if nothing of it runs and nothing more will start.
    fn finish(&mut self, seq: u64) {
        let io = &self.ios[&seq];
        if io.running > 0 || (io.next < io.end && io.error.is_none()) {
            return;
        }
        let io = self.ios.remove(&seq).expect("present");
        let result = match (io.error, io.kind) {
            (Some(e), _) => Err(e),
            (None, Kind::Read | Kind::Fetch) => Ok(Some(io.data)),
            (None, _) => Ok(None),
        };
        self.done.push(Done {
            tag: io.tag,
            result,
        });
    }

    /// Start the next pieces of submitted I/Os, oldest first, while the
    /// attacher admits them. Once a shard's piece is refused, no later
    /// piece of that shard starts in this pass (so writes to the same
    /// blocks start, and take their versions, in submission order).
    fn start_waiting(&mut self) -> bool {
        let mut started = false;
        let mut refused: Vec<u64> = Vec::new();
        let seqs: Vec<u64> = self.ios.keys().copied().collect();
        for seq in seqs {
            loop {
                if self.att.client_ops() >= CLUSTER_ATTACHER_MAX_OPS {
                    return started;
                }
                let io = &self.ios[&seq];
                if io.next >= io.end || io.error.is_some() {
                    break;
                }
                let at = io.next;
                let shard_end = (at / CLUSTER_SHARD_BYTES + 1) * CLUSTER_SHARD_BYTES;
                let len = shard_end.min(io.end) - at;
                let shard = at / CLUSTER_SHARD_BYTES;
                if refused.contains(&shard) {
                    break;
                }
                let op = self.next_op;
                let now = self.now();
                let view = &self.view;
                let res = match &io.kind {
                    Kind::Read => self
                        .att
                        .read(op, at / BS, len / BS, now, &|n: &str| view.is_live(n)),
                    Kind::Fetch => self.att.fetch(op, shard, now, &|n: &str| view.is_live(n)),
                    Kind::Write(data) => {
                        let s = (at - io.offset) as usize;
                        let blocks = (0..len / BS)
                            .map(|i| {
                                let o = s + (i * BS) as usize;
                                data.slice(o..o + BS as usize)
                            })
                            .collect();
                        self.att.write(op, at / BS, blocks, now).map(|_| ())
                    }
                    Kind::Zero => {
                        let blocks = vec![self.zero_block.clone(); (len / BS) as usize];
                        self.att.write(op, at / BS, blocks, now).map(|_| ())
                    }
                };
                match res {
                    Ok(()) => {
                        self.next_op += 1;
                        self.pieces.insert(op, (seq, at));
                        let io = self.ios.get_mut(&seq).expect("present");
                        io.next += len;
                        io.running += 1;
                        started = true;
                    }
                    Err(OpError::Busy) => {
                        refused.push(shard);
                        break;
                    }
                    Err(e) => {
                        let io = self.ios.get_mut(&seq).expect("present");
                        io.error = Some(ClientError::Op(e));
                        self.finish(seq);
                        break;
                    }
                }
            }
        }
        started
    }

    /// Hand an I/O to the client (`tag` names it in its [`Done`]); it runs
    /// with the others submitted, up to `CLUSTER_ATTACHER_MAX_OPS` attacher
    /// operations at once, and completes through [`ClusterClient::poll`].
    pub fn submit(&mut self, tag: u64, io: Io) -> Result<(), ClientError> {
        if let Some(e) = self.fenced {
            return Err(OpError::Fenced(e).into());
        }
        let (offset, len, kind) = match io {
            Io::Read { offset, len } => (offset, len, Kind::Read),
            Io::Write { offset, data } => (offset, data.len() as u64, Kind::Write(data)),
            Io::Zero { offset, len } => (offset, len, Kind::Zero),
            Io::Fetch { shard } => (
                shard.saturating_mul(CLUSTER_SHARD_BYTES),
                CLUSTER_SHARD_BYTES,
                Kind::Fetch,
            ),
        };
        self.check(offset, len)?;
        let data = match kind {
            Kind::Read | Kind::Fetch => vec![0u8; len as usize],
            _ => Vec::new(),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ios.insert(
            seq,
            Submitted {
                tag,
                kind,
                offset,
                next: offset,
                end: offset + len,
                running: 0,
                data,
                error: None,
            },
        );
        self.flush();
        Ok(())
    }

    /// I/Os submitted and not yet returned by `poll`.
    pub fn in_flight(&self) -> usize {
        self.ios.len() + self.done.len()
    }

    /// Run the client (replies, ticks, background work) until a submitted
    /// I/O completes or `max` passed; the I/Os completed so far.
    pub async fn poll(&mut self, max: Duration) -> Vec<Done> {
        self.run_for(max, Until::Done).await;
        std::mem::take(&mut self.done)
    }

    /// Run for up to `d` (returning early once `until` holds): replies as
    /// they come, a tick every `CLUSTER_CLIENT_TICK_MS` while anything is
    /// in flight, every `CLUSTER_CLIENT_IDLE_TICK_MS` otherwise.
    async fn run_for(&mut self, d: Duration, until: Until) {
        let end = tokio::time::Instant::now() + d;
        let tick = Duration::from_millis(CLUSTER_CLIENT_TICK_MS);
        let idle_tick = Duration::from_millis(CLUSTER_CLIENT_IDLE_TICK_MS);
        loop {
            self.flush();
            let stop = match until {
                Until::Time => false,
                Until::Done => !self.done.is_empty(),
                Until::Tag(t) => self.done.iter().any(|d| d.tag == t),
                Until::Attach => self.attach_result.is_some(),
            };
            if stop {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= self.next_tick {
                self.tick().await;
                // with nothing in flight a tick is only background work
                let busy = self.att.is_busy() || !self.ios.is_empty();
                self.next_tick = now + if busy { tick } else { idle_tick };
                continue;
            }
            if now >= end {
                return;
            }
            tokio::select! {
                Some(r) = self.rx.recv() => {
                    self.on_reply(r);
                    while let Ok(r) = self.rx.try_recv() {
                        self.on_reply(r);
                    }
                }
                _ = tokio::time::sleep_until(end.min(self.next_tick)) => {}
            }
        }
    }

    fn on_reply(&mut self, (from, id, resp): Reply) {
        let now = self.now();
        let view = &self.view;
        self.att
            .on_response(&from, id, resp, now, &|n: &str| view.is_live(n));
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
            self.idle(Duration::from_millis(CLUSTER_CLIENT_TICK_MS * 5))
                .await;
        }
    }

    /// Let the client run for `d` (replies, re-replication, rebalancing;
    /// I/Os completing meanwhile are kept for the next `poll`). For callers
    /// between operations.
    pub async fn idle(&mut self, d: Duration) {
        self.run_for(d, Until::Time).await
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let size = self.att.config().shards * CLUSTER_SHARD_BYTES;
        if offset % BS != 0 || len % BS != 0 || len == 0 || offset + len > size {
            return Err(ClientError::Range { offset, len, size });
        }
        Ok(())
    }

    /// Submit one I/O under a private tag and run until it completes (other
    /// I/Os completing meanwhile are kept for the next `poll`).
    async fn one(&mut self, io: Io) -> Result<Option<Vec<u8>>, ClientError> {
        let tag = self.next_private_tag;
        self.next_private_tag += 1;
        self.submit(tag, io)?;
        loop {
            if let Some(i) = self.done.iter().position(|d| d.tag == tag) {
                return self.done.remove(i).result;
            }
            self.run_for(Duration::from_secs(1), Until::Tag(tag)).await;
        }
    }

    /// Write `data` at `offset` on every live replica.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let data = Bytes::copy_from_slice(data);
        self.one(Io::Write { offset, data }).await.map(|_| ())
    }

    /// Read `len` bytes at `offset` from live replicas.
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        let data = self.one(Io::Read { offset, len }).await?;
        Ok(data.expect("a read returns data"))
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
            self.idle(Duration::from_millis(CLUSTER_CLIENT_TICK_MS * 5))
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
