//! The attacher: the one node at a time that holds a volume, as a state
//! machine. It takes the attachment (fencing), writes to every replica,
//! reads from a live one, drops dead replicas and re-replicates. Time,
//! liveness and replies come in as arguments; requests go out through
//! [`Attacher::drain`]. The simulator and the real client drive this same code.
//!
//! Contract (the safety argument, checked by the simulator over many seeds):
//! - **Member configuration.** Quorums are counted over the volume's
//!   configuration, not over the members gossip happens to know (a set that
//!   grows with joins: a majority of 7 need not meet a majority of the 5
//!   an older commit reached). The configuration is the placement basis
//!   record (override key `CLUSTER_BASIS_SHARD`): its `replicas`, and while
//!   it changes, its `joint` part too. A *quorum* is a majority of
//!   `replicas` and, when `joint` is not empty, a majority of `joint`
//!   (joint consensus). Commits and fences go to every member gossip knows
//!   and every node the configuration names.
//! - **Configuration changes** (a rebalancing's target becoming the basis)
//!   run alone and take two commits: the joint record (new `replicas`, old
//!   `joint`), carrying every record of the volume the attacher knows, to a
//!   quorum of old and new; then the new configuration alone. Once the
//!   joint record is committed a majority of the new members holds every
//!   committed record, so the stable record may drop the old members. A
//!   stable record is never sent before its joint record is committed.
//! - **Attach** takes epoch `next(highest seen)` and sends `Fence` to every
//!   target; answers carry the replica's override records, merged into
//!   the attacher's map, and nodes a newly learnt configuration names are
//!   fenced too. It holds a fence quorum once the nodes that answered make
//!   a quorum of the newest configuration learnt (any later configuration
//!   was committed with a majority of that one, which meets the answers, so
//!   the newest learnt is the newest committed). A volume with no
//!   configuration anywhere is new only when *every* node known answered
//!   (its first attacher commits the members it knows as the first
//!   configuration). Then it writes back what it learnt (the configuration
//!   record carrying every other record) to a quorum before it reports
//!   `Attached`: a record an older attacher failed to commit, seen on one
//!   node, is committed before anything relies on it. So every record any
//!   attacher relied on was on a quorum of the configuration of its time,
//!   and every later fence quorum meets it: the new attacher knows every
//!   committed record. A configuration found joint is finished (the joint
//!   record again with the carry, then the stable one) before other work.
//! - **Write** goes to every current replica of the shard (its override
//!   record, else its computed home). It is acknowledged when every replica
//!   answered, except replicas that membership declares dead meanwhile: those
//!   are dropped by committing a new override record (the remaining replicas)
//!   to a quorum *before* the acknowledgement. So every replica in the
//!   committed set of a shard has every acknowledged write of it, and any
//!   live member of that set can serve reads.
//! - A replica that has seen a newer epoch refuses ([`OpError::Fenced`]); the
//!   attacher then stops for good. Fences rise with every request a replica
//!   accepts, and override commits need a quorum of the configuration the old
//!   attacher knows (the new one's, or one the new one's fence quorum
//!   meets), so an old attacher cut off by a partition can neither change a
//!   shard's set nor complete a write to a replica the new attacher has
//!   touched.
//! - **Reads** return only after an epoch-check round *sent after the read
//!   started* made a quorum (`Request::Check` to every target, a quorum of
//!   the configuration answering `Ok`). A newer attacher acknowledged
//!   nothing before it held a fence quorum, which meets the check's quorum,
//!   so a read that passes started before any newer attacher acknowledged
//!   a write: an old attacher cut off from the replicas a new one changed
//!   cannot read its own stale copy after the new one acknowledged newer
//!   data (it is refused as fenced instead). One round is in flight at a
//!   time and serves every read started before it was sent; it goes out
//!   with the read's data request, so a lone read waits for the slower of
//!   the two.
//! - **Re-replication** (throttled, one shard at a time, alone on its
//!   shard, so no write races the copy): for a shard with fewer
//!   than `R` live replicas, fetch it from a live replica, install it on the
//!   best live member outside the set (rendezvous order, distinct domain if
//!   possible; the install is guarded like a move's), then commit the set
//!   `live replicas + new` to a quorum. A never-written shard copies
//!   nothing and does not count against the throttle, but is committed too
//!   (else it would stay short of copies and be picked again forever).
//! - **Concurrency.** Operations are of three classes. *Client*: callers'
//!   reads and writes (and a degraded write's commit), up to `max_ops` at
//!   once, on any shards, several on one shard included: a write takes its
//!   version when it is issued and replicas keep the newest, so writes to
//!   the same blocks end in issue order whatever order they arrive in, and
//!   a read returns at least every write acknowledged before it started.
//!   *Structural*: a re-replication, a batch of moves, a shard's record
//!   settling (below); one at a time, alone on its shards: it starts only
//!   on shards no client operation works on, and while it waits for or
//!   holds a shard (it *reserves* one that callers are busy on) a caller's
//!   operation on that shard is refused with [`OpError::Busy`]; so no
//!   write races a copy, and no read is in flight on a copy a move drops.
//!   *Exclusive*: attach and configuration changes; alone: while one waits
//!   (the *barrier*) nothing new starts. A caller refused with `Busy`
//!   retries later. Requests are retransmitted every `retry_ms` until
//!   answered (they are idempotent); an operation not done in
//!   `op_timeout_ms` fails with [`OpError::Timeout`], unacknowledged (its
//!   writes may or may not be visible later).
//! - **Commits settle.** A shard's record, once sent, may reach a quorum
//!   after its operation gave up and be learnt by the next attacher; so a
//!   commit round is never abandoned: when its operation times out (the
//!   caller is told) it goes on as a structural operation holding the
//!   shard until a quorum has the record, which the attacher then takes
//!   as the shard's set. Only a fence (or a new attach, which fences it
//!   out) ends it. A move's commit waits the same way.
//! - **Placement basis**: homes are computed over the volume's *basis*, the
//!   member ids recorded under the override key `CLUSTER_BASIS_SHARD`. The
//!   first attacher of a volume commits the members it knows before it
//!   reports `Attached`; later ones learn the record with the others. So
//!   every attacher computes the same home for a shard without a record.
//! - **Rebalancing** (see `rebalance`): the target membership is every
//!   member with weight, less those dead for `out_after_ms` ("out"). When it
//!   differs from the basis, the shards whose home set changes are moved,
//!   throttled, up to `max_moves` per operation, each only while its whole
//!   new home is live: fetch from a live copy, install on the new home
//!   members lacking one (guarded by the record version to come), commit
//!   the new home as the shard's record to a quorum, then (in the
//!   background) ask the nodes that left the set to drop their copies. Moves
//!   are structural operations, so no write races a copy. When every
//!   move is done the target is committed as the new basis (a
//!   configuration change, above). A membership
//!   change during a rebalancing restarts the plan from the basis (shards
//!   already moved have records, so they are not moved again).
//! - **Leaving** members (announced through gossip, [`Attacher::set_leaving`])
//!   are out of the rebalancing target at once, and never picked as a
//!   re-replication target; their shards move like an out member's, but
//!   from their own live copies, which stay in the shard's set (and are
//!   written and read) until the new home is committed. So a drain never
//!   leaves a shard with fewer live copies than before it.
//! - **Orphan copies** (a copy held by a node outside the shard's set: a
//!   drop the node missed while down, an install whose commit failed): a
//!   scan asks every live member which shards it holds (`Request::Held`)
//!   after attaching, when a member seen dead is live again, after a
//!   failed move or repair, when a rebalancing finishes, and every
//!   `CLUSTER_ORPHAN_SCAN_INTERVAL_MS`. A copy outside the set is dropped
//!   (a guarded drop, so a later install on
//!   that node survives it; see below) only when the set has `R` members, all live,
//!   and every one of them holds the shard with a newest block version at
//!   least the orphan's: never the last live copy, never a newer one.
//!   The drop carries a fresh record version (above the guard of any
//!   install this attacher sent, such as one whose commit failed), and no
//!   shard a structural operation holds is dropped, so an install sent
//!   later is guarded by a newer version and survives a late drop; nor a
//!   copy a caller's read or write in flight may still ask (a read that
//!   started while the node was in the set).
//!   While a scan keeps such a copy, the next scan comes after
//!   `CLUSTER_ORPHAN_RESCAN_MIN_MS`, the wait doubling over scans the timer
//!   started, up to the interval.
//! - Not handled here: divergent unacknowledged writes between replicas (a
//!   read may see one replica's unacknowledged newer block and a later read
//!   another's older, acknowledged one); a member of the basis
//!   that gossip no longer knows is placed with weight 1 and no domain;
//!   fence answers and configuration commits carry every record of the
//!   volume in one frame (`CLUSTER_FRAME_MAX_BYTES` bounds the records a
//!   volume can have, some thousands).

use super::epoch::{Epoch, Version};
use super::overrides::{OverrideMap, OverrideRecord};
use super::placement::{next_home, place, Member, NodeId, ShardKey};
use super::proto::{BlockEntry, Request, Response};
use super::rebalance::{self, Limits, Move, Progress, Rebalancer};
use crate::constants::{
    CLUSTER_ATTACH_ATTEMPTS, CLUSTER_BASIS_SHARD, CLUSTER_BLOCK_BYTES,
    CLUSTER_ORPHAN_RESCAN_MIN_MS, CLUSTER_ORPHAN_SCAN_INTERVAL_MS, CLUSTER_REPAIR_SCAN_SHARDS,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("fenced: a newer attacher holds the volume (epoch term {})", .0.term)]
    Fenced(Epoch),
    #[error("the volume is not attached")]
    NotAttached,
    #[error("another operation is in progress")]
    Busy,
    #[error("no live replica of shard {0}")]
    Unavailable(u64),
    #[error("timed out")]
    Timeout,
    #[error("empty range, or a range crossing a shard boundary or the volume end")]
    BadRange,
}

/// What the attacher reports back.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<D> {
    Attached(Epoch),
    /// A newer attacher holds the volume; this one stopped for good.
    Fenced(Epoch),
    AttachFailed(OpError),
    Wrote {
        op: u64,
        version: Version,
    },
    Read {
        op: u64,
        versions: Vec<Version>,
        blocks: Vec<D>,
    },
    /// A fetch for staging ([`Attacher::fetch`]): the shard's written
    /// blocks, confirmed like a read's data.
    Fetched {
        op: u64,
        entries: Vec<BlockEntry<D>>,
    },
    Failed {
        op: u64,
        error: OpError,
    },
    Repaired {
        key: ShardKey,
        replicas: Vec<NodeId>,
    },
    /// Rebalancing committed `key`'s new home.
    Moved {
        key: ShardKey,
        replicas: Vec<NodeId>,
    },
    /// Every move of a rebalancing is done and its target is the new basis.
    Rebalanced(Progress),
}

/// Where the volume's rebalancing stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceStatus {
    /// Members homes are computed over now.
    pub basis: Vec<NodeId>,
    /// Members it is moving to (equal to `basis` when done).
    pub target: Vec<NodeId>,
    pub progress: Progress,
    /// Every move committed, every old copy dropped, target committed as basis.
    pub done: bool,
    /// Rebalancings finished by this attacher.
    pub finished: u64,
}

/// A request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing<D> {
    pub to: NodeId,
    pub id: u64,
    pub req: Request<D>,
}

#[derive(Debug, Clone)]
pub struct AttacherConfig {
    pub me: NodeId,
    pub volume: String,
    /// Placement candidates: every member of the cluster, live or not.
    pub members: Vec<Member>,
    pub replicas: usize,
    pub blocks_per_shard: u64,
    pub shards: u64,
    pub retry_ms: u64,
    pub op_timeout_ms: u64,
    pub repair_interval_ms: u64,
    /// A member dead this long is out of the rebalancing target.
    pub out_after_ms: u64,
    pub rebalance: Limits,
    /// Callers' operations in flight at once (`CLUSTER_ATTACHER_MAX_OPS`).
    pub max_ops: usize,
    /// Distinct for every attacher started on a node (part of its epochs).
    pub incarnation: u64,
    /// How long after its write-back committed (a quorum fenced) the
    /// attacher waits before reporting `Attached` and taking operations
    /// (`CLUSTER_ATTACH_GRACE_MS`): an older attacher cut off from the
    /// cluster may serve staged copies for `DEVICE_STAGE_LEASE_MS` after its
    /// last checked read began, and those leases run out first.
    pub attach_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Detached,
    Attaching,
    Attached,
    Fenced(Epoch),
}

/// Requests to a set of nodes, retransmitted until answered.
#[derive(Debug)]
struct Round<D> {
    sent: BTreeMap<NodeId, (u64, u64, Request<D>)>,
    replies: BTreeMap<NodeId, Response<D>>,
    given_up: BTreeSet<NodeId>,
}

impl<D: Clone> Round<D> {
    fn pending(&self) -> impl Iterator<Item = &NodeId> {
        self.sent
            .keys()
            .filter(|n| !self.replies.contains_key(*n) && !self.given_up.contains(*n))
    }
    /// Nodes whose answer satisfies `f`.
    fn answered(&self, f: impl Fn(&Response<D>) -> bool) -> BTreeSet<&str> {
        self.replies
            .iter()
            .filter(|(_, r)| f(r))
            .map(|(n, _)| n.as_str())
            .collect()
    }
    fn fenced(&self) -> Option<Epoch> {
        self.replies.values().find_map(|r| match r {
            Response::Fenced { current } => Some(*current),
            _ => None,
        })
    }
}

enum After<D> {
    Wrote {
        op: u64,
        version: Version,
    },
    Repaired {
        key: ShardKey,
        replicas: Vec<NodeId>,
    },
    /// The first attacher's basis record: attached once it is committed.
    Attached,
    /// A rebalancing's target is the joint configuration (with the old
    /// basis); the stable one comes next.
    Joint(Vec<Member>),
    /// A rebalancing's target became the basis.
    Basis(Vec<Member>),
    /// A shard's record whose commit outlived its operation: it goes on
    /// until a quorum has it (see the module doc).
    Settle,
    _Phantom(std::marker::PhantomData<D>),
}

/// An epoch-check round: its number, when it started, the requests, and
/// whether it went to every target yet (it starts with the fewest live
/// ones that make a quorum).
struct CheckRound<D> {
    gen: u64,
    started: u64,
    round: Round<D>,
    widened: bool,
}

/// Where an operation runs: its slot and when it started (its timeout
/// counts from then).
#[derive(Debug, Clone, Copy)]
struct At {
    slot: u64,
    started: u64,
}

/// One shard's move inside a move operation.
enum MoveStage<D> {
    Fetch(Round<D>),
    Install(Round<D>),
    Commit(Round<D>, OverrideRecord),
    Done,
    Failed,
}

struct MoveItem<D> {
    mv: Move,
    /// No copy left to move: only pin the record where the shard was.
    pin: bool,
    /// The version its record will carry (named by the install's guard).
    version: Version,
    source: NodeId,
    bytes: u64,
    stage: MoveStage<D>,
}

/// A running rebalancing.
struct Rebal {
    target: Vec<Member>,
    rb: Rebalancer,
}

/// A drop request in the background, retransmitted until answered.
struct DropJob<D> {
    key: ShardKey,
    node: NodeId,
    round: Round<D>,
}

/// What a read's replica answered: a read's blocks, or a fetch's written
/// blocks.
#[derive(Debug, Clone)]
enum Got<D> {
    Data(Vec<Version>, Vec<D>),
    Blocks(Vec<BlockEntry<D>>),
}

enum Op<D> {
    Attach {
        round: Round<D>,
    },
    Write {
        op: u64,
        shard: u64,
        version: Version,
        round: Round<D>,
    },
    Commit {
        after: After<D>,
        key: ShardKey,
        record: OverrideRecord,
        round: Round<D>,
    },
    Read {
        op: u64,
        shard: u64,
        candidates: Vec<NodeId>,
        next: usize,
        req: Request<D>,
        round: Round<D>,
        /// The epoch-check round that must succeed before the data returns.
        needs: u64,
        /// The data, once a replica answered, and that replica (its answer
        /// confirms the epoch there too).
        got: Option<Got<D>>,
        from: Option<NodeId>,
    },
    RepairFetch {
        key: ShardKey,
        keep: Vec<NodeId>,
        target: NodeId,
        round: Round<D>,
    },
    RepairInstall {
        key: ShardKey,
        keep: Vec<NodeId>,
        target: NodeId,
        version: Version,
        round: Round<D>,
    },
    Move {
        items: Vec<MoveItem<D>>,
    },
}

/// How an operation shares the attacher with others (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A caller's read or write (and a degraded write's commit): many at
    /// once, each on one shard.
    Client,
    /// Re-replication or a batch of moves: one at a time, alone on its
    /// shards.
    Structural,
    /// Attach and member-configuration changes: alone.
    Exclusive,
}

impl<D> Op<D> {
    fn class(&self) -> Class {
        match self {
            Op::Write { .. }
            | Op::Read { .. }
            | Op::Commit {
                after: After::Wrote { .. },
                ..
            } => Class::Client,
            Op::RepairFetch { .. }
            | Op::RepairInstall { .. }
            | Op::Move { .. }
            | Op::Commit {
                after: After::Repaired { .. } | After::Settle,
                ..
            } => Class::Structural,
            Op::Attach { .. } | Op::Commit { .. } => Class::Exclusive,
        }
    }

    /// The shards the operation works on.
    fn shards(&self) -> Vec<u64> {
        match self {
            Op::Attach { .. } => Vec::new(),
            Op::Write { shard, .. } | Op::Read { shard, .. } => vec![*shard],
            Op::Commit { key, .. }
            | Op::RepairFetch { key, .. }
            | Op::RepairInstall { key, .. } => {
                vec![key.shard]
            }
            Op::Move { items } => items.iter().map(|it| it.mv.key.shard).collect(),
        }
    }
}

pub struct Attacher<D> {
    cfg: AttacherConfig,
    mode: Mode,
    epoch: Epoch,
    seen: Epoch,
    seq: u64,
    override_seq: u64,
    overrides: OverrideMap,
    /// Operations in flight by slot: `(started ms, op)`.
    ops: BTreeMap<u64, (u64, Op<D>)>,
    next_slot: u64,
    /// An exclusive operation waits for the others to end: none starts.
    barrier: bool,
    /// The write-back committed: `Attached` at this time (ms), once older
    /// attachers' staging leases ran out (`AttacherConfig::attach_grace_ms`).
    attach_grace_until: Option<u64>,
    /// Shards a structural operation waits for (client operations on them
    /// end and no new one starts): the repair's, the moves'.
    reserved_repair: Option<u64>,
    reserved_moves: BTreeSet<u64>,
    /// The epoch-check round in flight, the last number given out, the
    /// last that made a quorum.
    check: Option<CheckRound<D>>,
    check_gen: u64,
    checked: u64,
    next_id: u64,
    last_repair_ms: Option<u64>,
    repair_cursor: u64,
    attach_attempts: u32,
    out: Vec<Outgoing<D>>,
    events: Vec<Event<D>>,
    /// Members homes are computed over (see the module doc).
    basis: Vec<Member>,
    /// When each member was first seen dead (cleared when seen live).
    dead_since: BTreeMap<NodeId, u64>,
    rebal: Option<Rebal>,
    drops: Vec<DropJob<D>>,
    rebalances: u64,
    rebalance_first: bool,
    /// Members announcing they leave (see the module doc).
    leaving: BTreeSet<NodeId>,
    /// The running orphan scan, whether another is due, when one last started.
    scan: Option<(u64, Round<D>, bool)>,
    scan_wanted: bool,
    last_scan_ms: Option<u64>,
    /// While a scan kept copies outside their set (not yet provably
    /// unneeded), the next one comes after this (doubling) interval.
    rescan_ms: Option<u64>,
    orphans_dropped: u64,
}

impl<D: Clone> Attacher<D> {
    /// A detached attacher; request ids start at `id_base` (distinct per
    /// incarnation so late replies to an earlier one are ignored).
    pub fn new(cfg: AttacherConfig, id_base: u64) -> Attacher<D> {
        Attacher {
            mode: Mode::Detached,
            epoch: Epoch::ZERO,
            seen: Epoch::ZERO,
            seq: 0,
            override_seq: 0,
            overrides: OverrideMap::new(),
            ops: BTreeMap::new(),
            next_slot: 0,
            barrier: false,
            reserved_repair: None,
            reserved_moves: BTreeSet::new(),
            check: None,
            check_gen: 0,
            checked: 0,
            next_id: id_base,
            last_repair_ms: None,
            repair_cursor: 0,
            attach_attempts: 0,
            attach_grace_until: None,
            out: Vec::new(),
            events: Vec::new(),
            basis: cfg_members_sorted(&cfg.members),
            dead_since: BTreeMap::new(),
            rebal: None,
            drops: Vec::new(),
            rebalances: 0,
            rebalance_first: false,
            leaving: BTreeSet::new(),
            scan: None,
            scan_wanted: false,
            last_scan_ms: None,
            rescan_ms: None,
            orphans_dropped: 0,
            cfg,
        }
    }

    /// Placement candidates as gossip knows them now (every member, live or
    /// not; ones that joined included). Homes stay computed over the basis.
    pub fn set_members(&mut self, members: Vec<Member>) {
        self.cfg.members = members;
    }

    /// Members that announced they leave: out of the rebalancing target
    /// and of re-replication targets (their copies move off, see the
    /// module doc). Gossip tells the real client; the simulator its own.
    pub fn set_leaving(&mut self, ids: impl IntoIterator<Item = NodeId>) {
        self.leaving = ids.into_iter().collect();
    }

    /// Orphan copies this attacher asked their nodes to drop.
    pub fn orphans_dropped(&self) -> u64 {
        self.orphans_dropped
    }

    /// A one-line summary of the running operation, the members seen dead
    /// and the rebalancer (for failure messages).
    pub fn debug_state(&self) -> String {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, op) in self.ops.values() {
            let k = match op {
                Op::Attach { .. } => "attach",
                Op::Write { .. } => "write",
                Op::Commit { .. } => "commit",
                Op::Read { .. } => "read",
                Op::RepairFetch { .. } => "repair fetch",
                Op::RepairInstall { .. } => "repair install",
                Op::Move { .. } => "move",
            };
            *kinds.entry(k).or_default() += 1;
        }
        let rb = self.rebal.as_ref().map(|r| &r.rb);
        format!(
            "ops {kinds:?} (barrier {}), dead since {:?}, members {:?}, leaving {:?}, orphan scan {} (last {:?}, dropped {}), rebalancer {rb:?}",
            self.barrier,
            self.dead_since,
            ids_of(&self.cfg.members),
            self.leaving,
            if self.scan.is_some() { "running" } else if self.scan_wanted { "wanted" } else { "idle" },
            self.last_scan_ms,
            self.orphans_dropped,
        )
    }

    /// Members homes are computed over now.
    pub fn basis(&self) -> &[Member] {
        &self.basis
    }

    /// The rebalancing state, once one was planned.
    pub fn rebalance_status(&self) -> Option<RebalanceStatus> {
        let r = self.rebal.as_ref()?;
        let basis = ids_of(&self.basis);
        let target = ids_of(&r.target);
        let progress = r.rb.progress().clone();
        Some(RebalanceStatus {
            done: basis == target
                && r.rb.moves_done()
                && progress.done()
                && !self.config_changing(),
            basis,
            target,
            progress,
            finished: self.rebalances,
        })
    }

    pub fn config(&self) -> &AttacherConfig {
        &self.cfg
    }
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    pub fn is_attached(&self) -> bool {
        self.mode == Mode::Attached
    }
    pub fn is_fenced(&self) -> bool {
        matches!(self.mode, Mode::Fenced(_))
    }
    /// Whether any operation is in flight.
    pub fn is_busy(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Callers' reads and writes in flight (a degraded write's commit
    /// included).
    pub fn client_ops(&self) -> usize {
        self.count(Class::Client)
    }

    /// Callers' writes in flight (a degraded write's commit included).
    pub fn writes_in_flight(&self) -> usize {
        self.ops
            .values()
            .filter(|(_, op)| op.class() == Class::Client && !matches!(op, Op::Read { .. }))
            .count()
    }

    fn count(&self, class: Class) -> usize {
        self.ops
            .values()
            .filter(|(_, op)| op.class() == class)
            .count()
    }

    /// Shards operations of `class` work on.
    fn shards_of(&self, class: Class) -> BTreeSet<u64> {
        self.ops
            .values()
            .filter(|(_, op)| op.class() == class)
            .flat_map(|(_, op)| op.shards())
            .collect()
    }

    fn new_slot(&mut self) -> u64 {
        self.next_slot += 1;
        self.next_slot
    }

    fn put(&mut self, slot: u64, started: u64, op: Op<D>) {
        let old = self.ops.insert(slot, (started, op));
        debug_assert!(old.is_none(), "slot {slot} taken twice");
    }
    pub fn overrides(&self) -> &OverrideMap {
        &self.overrides
    }
    /// The volume's basis record: its member configuration (see the
    /// module doc), `None` before the volume's first attacher committed one.
    pub fn basis_record(&self) -> Option<&OverrideRecord> {
        self.overrides.get(&self.key(CLUSTER_BASIS_SHARD))
    }

    /// Whether the member configuration is changing (the basis record
    /// has a joint part: quorums need a majority of old and new).
    pub fn config_changing(&self) -> bool {
        self.basis_record().is_some_and(|r| !r.joint.is_empty())
    }

    /// Whether the nodes that answered `Ok` to the commit of `record`
    /// under `key` make a quorum: of the record itself for a basis record
    /// (a configuration commits itself), else of the current configuration.
    fn commit_quorum(&self, key: &ShardKey, record: &OverrideRecord, round: &Round<D>) -> bool {
        let ok = round.answered(|r| matches!(r, Response::Ok));
        if key.shard == CLUSTER_BASIS_SHARD {
            return quorum_in(record, &ok);
        }
        let config = self.basis_record();
        debug_assert!(config.is_some(), "an attached volume has a basis record");
        config.is_some_and(|c| quorum_in(c, &ok))
    }
    fn key(&self, shard: u64) -> ShardKey {
        ShardKey::new(&self.cfg.volume, shard)
    }

    /// The current copies of `key`: its override record, else its home.
    pub fn replicas_of(&self, key: &ShardKey) -> Vec<NodeId> {
        self.overrides
            .replicas_or(key, || place(key, &self.basis, self.cfg.replicas))
    }

    /// Requests to send and events to report since the last call.
    pub fn drain(&mut self) -> (Vec<Outgoing<D>>, Vec<Event<D>>) {
        (
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.events),
        )
    }

    fn send(&mut self, round: &mut Round<D>, to: &NodeId, req: Request<D>, now: u64) {
        let id = self.next_id;
        self.next_id += 1;
        self.out.push(Outgoing {
            to: to.clone(),
            id,
            req: req.clone(),
        });
        round.sent.insert(to.clone(), (id, now, req));
    }

    fn round(&mut self, to: &[NodeId], req: impl Fn() -> Request<D>, now: u64) -> Round<D> {
        let mut r = Round {
            sent: BTreeMap::new(),
            replies: BTreeMap::new(),
            given_up: BTreeSet::new(),
        };
        for n in to {
            self.send(&mut r, n, req(), now);
        }
        r
    }

    /// A guarded install of a copied shard's `entries` on `to` (repair and
    /// rebalancing): the guard (the shard's first block, `version`) keeps a
    /// later drop of an older copy from deleting it.
    fn install_round(
        &mut self,
        to: &[NodeId],
        shard: u64,
        version: Version,
        entries: &[BlockEntry<D>],
        now: u64,
    ) -> Round<D> {
        let guard = Some((shard * self.cfg.blocks_per_shard, version));
        let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
        self.round(
            to,
            || Request::Install {
                volume: volume.clone(),
                epoch,
                entries: entries.to_vec(),
                guard,
            },
            now,
        )
    }

    fn member_ids(&self) -> Vec<NodeId> {
        self.cfg.members.iter().map(|m| m.id.clone()).collect()
    }

    /// Where fences and commits go: every member gossip knows and every
    /// node the member configuration names (one gossip may not know yet).
    fn targets(&self) -> Vec<NodeId> {
        let mut t = self.member_ids();
        if let Some(rec) = self.basis_record() {
            t.extend(rec.replicas.iter().chain(&rec.joint).cloned());
        }
        t.sort();
        t.dedup();
        t
    }

    /// Start taking the attachment, above every epoch seen so far and `seen`
    /// (retrying above a newer holder up to `CLUSTER_ATTACH_ATTEMPTS` times).
    pub fn attach(&mut self, now: u64, seen: Epoch) {
        if self.mode != Mode::Attaching {
            self.attach_attempts = 0;
        }
        self.attach_attempts += 1;
        self.seen = self.seen.max(seen).max(self.epoch);
        if let Mode::Fenced(e) = self.mode {
            self.seen = self.seen.max(e);
        }
        self.epoch = Epoch::next(self.seen, &self.cfg.me, self.cfg.incarnation);
        self.seq = 0;
        self.override_seq = 0;
        self.mode = Mode::Attaching;
        self.attach_grace_until = None;
        let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
        let ids = self.targets();
        let round = self.round(
            &ids,
            || Request::Fence {
                volume: volume.clone(),
                epoch,
            },
            now,
        );
        // nothing else runs while attaching (a retry replaces the attempt)
        self.ops.clear();
        self.check = None;
        self.barrier = false;
        let slot = self.new_slot();
        self.put(slot, now, Op::Attach { round });
        // rebuilt from the answers (see `learnt`)
        self.overrides = OverrideMap::new();
    }

    /// Whether a caller's operation on `shard` may start now: attached, no
    /// exclusive operation running or waiting, `max_ops` not reached, the
    /// shard not held or reserved by a structural operation.
    fn admit(&self, shard: u64) -> Result<(), OpError> {
        match self.mode {
            Mode::Attached => {}
            Mode::Fenced(e) => return Err(OpError::Fenced(e)),
            _ => return Err(OpError::NotAttached),
        }
        if self.barrier
            || self.count(Class::Exclusive) > 0
            || self.client_ops() >= self.cfg.max_ops.max(1)
            || self.reserved_repair == Some(shard)
            || self.reserved_moves.contains(&shard)
            || self.shards_of(Class::Structural).contains(&shard)
        {
            return Err(OpError::Busy);
        }
        Ok(())
    }

    fn shard_range(&self, first: u64, n: u64) -> Result<u64, OpError> {
        let bps = self.cfg.blocks_per_shard;
        if n == 0 || first / bps != (first + n - 1) / bps || first / bps >= self.cfg.shards {
            return Err(OpError::BadRange);
        }
        Ok(first / bps)
    }

    /// Write `blocks` at `first_block` (within one shard) as operation `op`;
    /// returns the version the blocks will carry.
    pub fn write(
        &mut self,
        op: u64,
        first_block: u64,
        blocks: Vec<D>,
        now: u64,
    ) -> Result<Version, OpError> {
        let shard = self.shard_range(first_block, blocks.len() as u64)?;
        self.admit(shard)?;
        let targets = self.replicas_of(&self.key(shard));
        if targets.is_empty() {
            return Err(OpError::Unavailable(shard));
        }
        self.seq += 1;
        let version = Version {
            epoch: self.epoch,
            seq: self.seq,
        };
        let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
        let round = self.round(
            &targets,
            || Request::Write {
                volume: volume.clone(),
                epoch,
                first_block,
                version,
                blocks: blocks.clone(),
            },
            now,
        );
        let slot = self.new_slot();
        self.put(
            slot,
            now,
            Op::Write {
                op,
                shard,
                version,
                round,
            },
        );
        Ok(version)
    }

    /// Read `n_blocks` at `first_block` (within one shard) as operation `op`.
    pub fn read(
        &mut self,
        op: u64,
        first_block: u64,
        n_blocks: u64,
        now: u64,
        live: &dyn Fn(&str) -> bool,
    ) -> Result<(), OpError> {
        self.read_or_fetch(op, first_block, n_blocks, false, now, live)
    }

    /// Fetch shard `shard` for staging as operation `op`: the shard
    /// protocol's fetch (only written blocks move), run as a read (a live
    /// member of the shard's current set, the next one when it fails, and
    /// an epoch check sent after it started before it returns), ending in
    /// [`Event::Fetched`].
    pub fn fetch(
        &mut self,
        op: u64,
        shard: u64,
        now: u64,
        live: &dyn Fn(&str) -> bool,
    ) -> Result<(), OpError> {
        let bps = self.cfg.blocks_per_shard;
        self.read_or_fetch(op, shard * bps, bps, true, now, live)
    }

    fn read_or_fetch(
        &mut self,
        op: u64,
        first_block: u64,
        n_blocks: u64,
        fetch: bool,
        now: u64,
        live: &dyn Fn(&str) -> bool,
    ) -> Result<(), OpError> {
        let shard = self.shard_range(first_block, n_blocks)?;
        self.admit(shard)?;
        let mut candidates: Vec<NodeId> = self
            .replicas_of(&self.key(shard))
            .into_iter()
            .filter(|n| live(n))
            .collect();
        if let Some(i) = candidates.iter().position(|n| *n == self.cfg.me) {
            candidates.swap(0, i); // a local copy first
        }
        if candidates.is_empty() {
            return Err(OpError::Unavailable(shard));
        }
        let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
        let req = match fetch {
            false => Request::Read {
                volume,
                epoch,
                first_block,
                n_blocks,
            },
            true => Request::Fetch {
                volume,
                epoch,
                first_block,
                n_blocks,
            },
        };
        let r2 = req.clone();
        let round = self.round(&candidates[..1], || r2.clone(), now);
        let slot = self.new_slot();
        self.put(
            slot,
            now,
            Op::Read {
                op,
                shard,
                candidates,
                next: 1,
                req,
                round,
                needs: self.check_gen + 1,
                got: None,
                from: None,
            },
        );
        self.maybe_check(now, live);
        Ok(())
    }

    /// A reply to request `id` from `from`.
    pub fn on_response(
        &mut self,
        from: &str,
        id: u64,
        resp: Response<D>,
        now: u64,
        live: &dyn Fn(&str) -> bool,
    ) {
        let mut resp = Some(resp);
        let mut answered = None;
        'ops: for (slot, (_, op)) in self.ops.iter_mut() {
            for round in op_rounds(op) {
                if round.sent.get(from).is_some_and(|s| s.0 == id) {
                    round
                        .replies
                        .insert(from.to_string(), resp.take().expect("one reply"));
                    answered = Some(*slot);
                    break 'ops;
                }
            }
        }
        if let Some(resp) = resp.take_if(|_| {
            self.check
                .as_ref()
                .is_some_and(|c| c.round.sent.get(from).is_some_and(|s| s.0 == id))
        }) {
            if let Some(c) = self.check.as_mut() {
                c.round.replies.insert(from.to_string(), resp);
            }
            self.advance_check(now, live);
        }
        if let Some(resp) = resp.take_if(|_| {
            self.scan
                .as_ref()
                .is_some_and(|(_, r, _)| r.sent.get(from).is_some_and(|s| s.0 == id))
        }) {
            if let Some((_, r, _)) = self.scan.as_mut() {
                r.replies.insert(from.to_string(), resp);
            }
            self.advance_scan(now, live);
        }
        if let Some(resp) = resp {
            if let Some(d) = self
                .drops
                .iter_mut()
                .find(|d| d.round.sent.get(from).is_some_and(|s| s.0 == id))
            {
                d.round.replies.insert(from.to_string(), resp);
            }
            self.advance_drops(live);
        }
        if let Some(slot) = answered {
            self.advance(slot, now, live);
        }
    }

    /// Time passes: retransmit, notice dead replicas, time out, re-replicate.
    pub fn tick(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        let retry = self.cfg.retry_ms;
        let out = &mut self.out;
        let mut rounds: Vec<&mut Round<D>> = self.drops.iter_mut().map(|d| &mut d.round).collect();
        rounds.extend(self.scan.as_mut().map(|(_, r, _)| r));
        rounds.extend(self.check.as_mut().map(|c| &mut c.round));
        for (_, op) in self.ops.values_mut() {
            rounds.extend(op_rounds(op));
        }
        for round in rounds {
            let due: Vec<NodeId> = round
                .pending()
                .filter(|n| now >= round.sent[*n].1 + retry)
                .cloned()
                .collect();
            for n in due {
                let s = round.sent.get_mut(&n).expect("pending");
                s.1 = now;
                out.push(Outgoing {
                    to: n.clone(),
                    id: s.0,
                    req: s.2.clone(),
                });
            }
        }
        self.advance_drops(live);
        let slots: Vec<u64> = self.ops.keys().copied().collect();
        for slot in slots {
            self.advance(slot, now, live);
        }
        self.advance_scan(now, live);
        self.advance_check(now, live);
        if self.mode == Mode::Attaching && self.attach_grace_until.is_some_and(|t| now >= t) {
            self.become_attached();
        }
        if self.mode == Mode::Attached {
            self.note_liveness(now, live);
            self.maybe_scan(now, live);
            // raised again below by whoever still waits for an exclusive turn
            self.barrier = false;
            if self.config_changing() && self.exclusive_may_start() {
                // finish the configuration change found at attach (or whose
                // stable commit failed) before anything else
                let rec = self.basis_record().expect("changing").clone();
                let members = basis_from(&rec.replicas, &self.cfg.members);
                self.start_config_change(After::Joint(members), rec.replicas, now);
            }
            // repair and rebalancing take turns at starting first, so
            // neither starves the other
            self.rebalance_first = !self.rebalance_first;
            for rebalance_turn in [self.rebalance_first, !self.rebalance_first] {
                if !self.structural_may_start() {
                    break;
                }
                if rebalance_turn {
                    self.maybe_rebalance(now, live);
                } else {
                    self.maybe_repair(now, live);
                }
            }
        }
    }

    /// Whether an exclusive operation may start now; if others run, the
    /// barrier goes up so they drain (no new one starts meanwhile).
    fn exclusive_may_start(&mut self) -> bool {
        if self.ops.is_empty() {
            self.barrier = false;
            return true;
        }
        self.barrier = true;
        false
    }

    /// Whether a structural operation may start now (none running, no
    /// exclusive one running or waiting).
    fn structural_may_start(&self) -> bool {
        !self.barrier && self.count(Class::Exclusive) == 0 && self.count(Class::Structural) == 0
    }

    /// A caller's write that must wait longer (replicas still to answer,
    /// or a commit of its shard ahead of it): back in its slot, or failed
    /// with `Timeout` once its time is up.
    fn keep_waiting(&mut self, at: At, w: Op<D>, timed_out: bool) {
        match w {
            Op::Write { op, .. } if timed_out => self.events.push(Event::Failed {
                op,
                error: OpError::Timeout,
            }),
            w => self.put(at.slot, at.started, w),
        }
    }

    /// The attachment is taken: operations may start.
    fn become_attached(&mut self) {
        self.attach_grace_until = None;
        self.mode = Mode::Attached;
        self.scan_wanted = true;
        self.events.push(Event::Attached(self.epoch));
    }

    fn fence_seen(&mut self, e: Epoch) {
        self.seen = self.seen.max(e);
        if self.mode == Mode::Attaching && self.attach_attempts < CLUSTER_ATTACH_ATTEMPTS {
            return; // attach() tries again above it
        }
        if !matches!(self.mode, Mode::Fenced(_)) {
            self.events.push(Event::Fenced(e));
        }
        self.mode = Mode::Fenced(e);
    }

    fn next_override_version(&mut self) -> Version {
        self.override_seq += 1;
        Version {
            epoch: self.epoch,
            seq: self.override_seq,
        }
    }

    fn start_commit(
        &mut self,
        at: At,
        after: After<D>,
        key: ShardKey,
        replicas: Vec<NodeId>,
        now: u64,
    ) {
        let version = self.next_override_version();
        self.start_commit_at(at, after, key, replicas, version, now)
    }

    fn commit_round(&mut self, key: &ShardKey, record: &OverrideRecord, now: u64) -> Round<D> {
        self.commit_round_carrying(key, record, None, now)
    }

    /// A commit of `record` under `key` to every target; with `snapshot`
    /// (every other record this attacher knows) a snapshot commit (see
    /// `replica`: it raises the volume's floor to this epoch).
    fn commit_round_carrying(
        &mut self,
        key: &ShardKey,
        record: &OverrideRecord,
        snapshot: Option<Vec<(ShardKey, OverrideRecord)>>,
        now: u64,
    ) -> Round<D> {
        let is_snapshot = snapshot.is_some();
        let carry = snapshot.unwrap_or_default();
        let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
        let mut ids = self.targets();
        if key.shard == CLUSTER_BASIS_SHARD {
            // a configuration commit also reaches the nodes it names
            ids.extend(record.replicas.iter().chain(&record.joint).cloned());
            ids.sort();
            ids.dedup();
        }
        self.round(
            &ids,
            || Request::Commit {
                volume: volume.clone(),
                epoch,
                key: key.clone(),
                record: record.clone(),
                carry: carry.clone(),
                snapshot: is_snapshot,
            },
            now,
        )
    }

    fn start_commit_at(
        &mut self,
        at: At,
        after: After<D>,
        key: ShardKey,
        replicas: Vec<NodeId>,
        version: Version,
        now: u64,
    ) {
        let record = OverrideRecord::new(version, replicas);
        self.start_commit_record(at, after, key, record, None, now)
    }

    fn start_commit_record(
        &mut self,
        at: At,
        after: After<D>,
        key: ShardKey,
        record: OverrideRecord,
        snapshot: Option<Vec<(ShardKey, OverrideRecord)>>,
        now: u64,
    ) {
        let round = self.commit_round_carrying(&key, &record, snapshot, now);
        self.put(
            at.slot,
            at.started,
            Op::Commit {
                after,
                key,
                record,
                round,
            },
        );
    }

    /// Every record of the volume this attacher knows but `key`'s.
    fn records_but(&self, key: &ShardKey) -> Vec<(ShardKey, OverrideRecord)> {
        self.overrides
            .of_volume(&self.cfg.volume)
            .filter(|(k, _)| *k != key)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// Commit the joint configuration `new` + the current one, carrying
    /// every record of the volume this attacher knows (so a majority of
    /// `new` holds them all once it is committed); `after` (a
    /// `After::Joint`) then commits `new` alone.
    fn start_config_change(&mut self, after: After<D>, new: Vec<NodeId>, now: u64) {
        let bkey = self.key(CLUSTER_BASIS_SHARD);
        let current = self.basis_record().expect("an attached volume has a basis");
        // a change left half done keeps its old part: quorums already
        // counted on it
        let old = if current.joint.is_empty() {
            current.replicas.clone()
        } else {
            current.joint.clone()
        };
        let carry = self.records_but(&bkey);
        let record = OverrideRecord {
            version: self.next_override_version(),
            replicas: new,
            joint: old,
        };
        let at = At {
            slot: self.new_slot(),
            started: now,
        };
        self.start_commit_record(at, after, bkey, record, Some(carry), now);
    }

    /// Start an epoch-check round when a read waits for one and none is in
    /// flight: `Check` to every target, a quorum of the configuration must
    /// answer `Ok`.
    ///
    /// It goes first to the fewest live targets that make a quorum (taken
    /// in turn, starting one further each round), and to every target
    /// once a quarter of `retry_ms` passed without a quorum. A read's own
    /// data answer counts as one more check (it was asked after the read
    /// started), so a read often needs one check answer besides its data.
    fn maybe_check(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        if self.check.is_some() || self.mode != Mode::Attached {
            return;
        }
        let waiting = self.ops.values().any(|(_, op)| match op {
            Op::Read { needs, .. } => *needs > self.checked,
            _ => false,
        });
        if !waiting {
            return;
        }
        self.check_gen += 1;
        let all = self.targets();
        let mut ids: Vec<NodeId> = Vec::new();
        if let Some(config) = self.basis_record() {
            let alive: Vec<&NodeId> = all.iter().filter(|n| live(n)).collect();
            let turn = (self.check_gen as usize) % alive.len().max(1);
            for n in alive.iter().cycle().skip(turn).take(alive.len()) {
                ids.push((*n).clone());
                let set: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
                if quorum_in(config, &set) {
                    break;
                }
            }
            let set: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
            if !quorum_in(config, &set) {
                ids = all.clone();
            }
        }
        let widened = ids.len() == all.len();
        let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
        let round = self.round(
            &ids,
            || Request::Check {
                volume: volume.clone(),
                epoch,
            },
            now,
        );
        self.check = Some(CheckRound {
            gen: self.check_gen,
            started: now,
            round,
            widened,
        });
    }

    /// Whether a read needing check round `needs` may return, its data
    /// having come from `from`: that round (or a later one) made a quorum,
    /// or it is running and its answers with `from` make one.
    fn confirmed(&self, needs: u64, from: Option<&str>) -> bool {
        if self.checked >= needs {
            return true;
        }
        let (Some(c), Some(from), Some(config)) = (&self.check, from, self.basis_record()) else {
            return false;
        };
        let mut ok = c.round.answered(|r| matches!(r, Response::Ok));
        ok.insert(from);
        c.gen >= needs && quorum_in(config, &ok)
    }

    /// Finish the epoch-check round on a quorum (reads waiting for it
    /// return), a fence (every operation fails) or a timeout (another
    /// round starts).
    fn advance_check(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        let Some(c) = self.check.as_ref() else {
            return;
        };
        let (gen, started, round) = (c.gen, c.started, &c.round);
        if let Some(e) = round.fenced() {
            self.check = None;
            self.fence_seen(e);
            if let Mode::Fenced(e) = self.mode {
                self.fail_all(OpError::Fenced(e));
            }
            return;
        }
        let ok = round.answered(|r| matches!(r, Response::Ok));
        let done = self.basis_record().is_some_and(|c| quorum_in(c, &ok));
        let timed_out = now >= started + self.cfg.op_timeout_ms;
        if !done && !c.widened && now >= started + self.cfg.retry_ms / 4 {
            // the first few are slow: ask everyone
            let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
            let mut c = self.check.take().expect("checked above");
            for n in self.targets() {
                if !c.round.sent.contains_key(&n) {
                    let req = Request::Check {
                        volume: volume.clone(),
                        epoch,
                    };
                    self.send(&mut c.round, &n, req, now);
                }
            }
            c.widened = true;
            self.check = Some(c);
        }
        if done {
            self.checked = gen;
            self.check = None;
        } else if timed_out {
            self.check = None;
        }
        // reads waiting on this round (with their own data answer, an
        // answer may be enough before the round makes a quorum)
        let reads: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, (_, op))| matches!(op, Op::Read { got: Some(_), .. }))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in reads {
            self.advance(slot, now, live);
        }
        if self.check.is_none() {
            self.maybe_check(now, live);
        }
    }

    /// Fail every operation in flight (a newer attacher holds the volume).
    fn fail_all(&mut self, error: OpError) {
        self.check = None;
        for (_, (_, op)) in std::mem::take(&mut self.ops) {
            if let Some(id) = op_id(&op) {
                self.events.push(Event::Failed {
                    op: id,
                    error: error.clone(),
                });
            }
        }
    }

    /// Move operation `slot` on as far as its replies allow.
    fn advance(&mut self, slot: u64, now: u64, live: &dyn Fn(&str) -> bool) {
        let Some((started, mut op)) = self.ops.remove(&slot) else {
            return;
        };
        let timed_out = now >= started + self.cfg.op_timeout_ms;
        let fenced = op_rounds(&mut op).into_iter().find_map(|r| r.fenced());
        if let Some(e) = fenced {
            self.fence_seen(e);
            if let Some(id) = op_id(&op) {
                self.events.push(Event::Failed {
                    op: id,
                    error: OpError::Fenced(e),
                });
            } else if matches!(
                op,
                Op::Attach { .. }
                    | Op::Commit {
                        after: After::Attached,
                        ..
                    }
            ) {
                if self.attach_attempts < CLUSTER_ATTACH_ATTEMPTS {
                    // take over above the holder, a bounded number of times
                    // (two attachers taking over at once must not duel forever)
                    self.attach(now, e);
                    return;
                }
                self.events.push(Event::AttachFailed(OpError::Fenced(e)));
            }
            if let Mode::Fenced(e) = self.mode {
                self.fail_all(OpError::Fenced(e));
            }
            return;
        }
        match op {
            Op::Attach { mut round } => {
                self.overrides = learnt(&round);
                // nodes the configuration names that were not asked yet
                let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
                for n in self.targets() {
                    if !round.sent.contains_key(&n) {
                        let req = Request::Fence {
                            volume: volume.clone(),
                            epoch,
                        };
                        self.send(&mut round, &n, req, now);
                    }
                }
                let ok = round.answered(|r| matches!(r, Response::FenceOk { .. }));
                let done = match self.basis_record() {
                    Some(config) => quorum_in(config, &ok),
                    // no configuration seen: the volume is new only if
                    // every node known says so
                    None => round.sent.keys().all(|n| ok.contains(n.as_str())),
                };
                if done {
                    let bkey = self.key(CLUSTER_BASIS_SHARD);
                    match self.overrides.get(&bkey).cloned() {
                        Some(rec) => {
                            // write back what was learnt as a snapshot at
                            // this epoch: a record seen on one node only (an
                            // older attacher's commit that failed) is
                            // committed before anything relies on it, and one
                            // this attacher did not see cannot come back
                            self.basis = basis_from(&rec.replicas, &self.cfg.members);
                            let carry = self.records_but(&bkey);
                            self.start_commit_record(
                                At { slot, started },
                                After::Attached,
                                bkey,
                                rec,
                                Some(carry),
                                now,
                            );
                        }
                        None => {
                            // the volume's first attacher: fix the basis first
                            self.basis = cfg_members_sorted(&self.cfg.members);
                            let ids = ids_of(&self.basis);
                            self.start_commit(
                                At { slot, started },
                                After::Attached,
                                bkey,
                                ids,
                                now,
                            );
                        }
                    }
                } else if timed_out {
                    self.mode = Mode::Detached;
                    self.events.push(Event::AttachFailed(OpError::Timeout));
                } else {
                    self.put(slot, started, Op::Attach { round });
                }
            }
            Op::Write {
                op,
                shard,
                version,
                mut round,
            } => {
                let dead: Vec<NodeId> = round.pending().filter(|n| !live(n)).cloned().collect();
                round.given_up.extend(dead);
                let failed: Vec<NodeId> = round
                    .replies
                    .iter()
                    .filter(|(_, r)| !matches!(r, Response::Ok))
                    .map(|(n, _)| n.clone())
                    .collect();
                round.given_up.extend(failed);
                let acked: Vec<NodeId> = round
                    .sent
                    .keys()
                    .filter(|n| !round.given_up.contains(*n))
                    .cloned()
                    .collect();
                let key = self.key(shard);
                // Wait for replies still due, and (degraded: the smaller
                // set is committed before acknowledging) for a commit of
                // the shard still out. Concurrent writes of the shard commit
                // one at a time, each keeping only members of the set
                // committed before it that it reached (its set only shrinks
                // while it is out: a copy or move waits for it), so every
                // member of every committed set holds every write
                // acknowledged through it.
                let degraded = !acked.is_empty() && !round.given_up.is_empty();
                if round.pending().next().is_some()
                    || (degraded
                        && self.ops.values().any(|(_, o)| {
                            matches!(o, Op::Commit { key: k, after: After::Wrote { .. } | After::Settle, .. } if *k == key)
                        }))
                {
                    let w = Op::Write {
                        op,
                        shard,
                        version,
                        round,
                    };
                    self.keep_waiting(At { slot, started }, w, timed_out);
                    return;
                }
                if acked.is_empty() {
                    self.events.push(Event::Failed {
                        op,
                        error: OpError::Unavailable(shard),
                    });
                    return;
                }
                if round.given_up.is_empty() {
                    self.events.push(Event::Wrote { op, version });
                    return;
                }
                let set = self.replicas_of(&key);
                let keep: Vec<NodeId> = set.iter().filter(|n| acked.contains(n)).cloned().collect();
                if keep.is_empty() {
                    self.events.push(Event::Failed {
                        op,
                        error: OpError::Unavailable(shard),
                    });
                } else if keep.len() == set.len() {
                    // the set already lost the replicas it missed
                    self.events.push(Event::Wrote { op, version });
                } else {
                    self.start_commit(
                        At { slot, started },
                        After::Wrote { op, version },
                        key,
                        keep,
                        now,
                    );
                }
            }
            Op::Commit {
                after,
                key,
                record,
                round,
            } => {
                if self.commit_quorum(&key, &record, &round) {
                    self.overrides.merge(&key, &record);
                    // a node left out of the new set may be back already
                    self.scan_wanted = true;
                    match after {
                        After::Wrote { op, version } => {
                            self.events.push(Event::Wrote { op, version })
                        }
                        After::Repaired { key, replicas } => {
                            self.events.push(Event::Repaired { key, replicas })
                        }
                        After::Attached => {
                            if self.cfg.attach_grace_ms == 0 {
                                self.become_attached();
                            } else {
                                self.attach_grace_until = Some(now + self.cfg.attach_grace_ms);
                            }
                        }
                        After::Joint(members) => {
                            // every record is on a majority of the new
                            // members too: the configuration becomes stable
                            self.basis = members.clone();
                            let replicas = ids_of(&members);
                            let at = At { slot, started: now };
                            self.start_commit(at, After::Basis(members), key, replicas, now);
                        }
                        After::Basis(members) => {
                            self.basis = members;
                            self.rebalances += 1;
                            self.scan_wanted = true;
                            if let Some(r) = &self.rebal {
                                self.events.push(Event::Rebalanced(r.rb.progress().clone()));
                            }
                        }
                        After::Settle => {}
                        After::_Phantom(_) => {}
                    }
                } else if timed_out && !matches!(after, After::Settle) {
                    // a shard's record, once sent, may reach a quorum later
                    // and be learnt by the next attacher: this one keeps
                    // sending it (the shard held, no caller operation on
                    // it) until a quorum has it, whatever it told its caller
                    let settle = match after {
                        After::Wrote { op, .. } => {
                            self.events.push(Event::Failed {
                                op,
                                error: OpError::Timeout,
                            });
                            true
                        }
                        After::Repaired { .. } => true,
                        After::Attached => {
                            // a later attach fences this one's commit out
                            self.mode = Mode::Detached;
                            self.events.push(Event::AttachFailed(OpError::Timeout));
                            false
                        }
                        // a configuration record seen by a later attacher
                        // only makes its quorums larger (a majority of both)
                        _ => false,
                    };
                    if settle {
                        self.scan_wanted = true;
                        let op = Op::Commit {
                            after: After::Settle,
                            key,
                            record,
                            round,
                        };
                        self.put(slot, started, op);
                    }
                } else {
                    self.put(
                        slot,
                        started,
                        Op::Commit {
                            after,
                            key,
                            record,
                            round,
                        },
                    );
                }
            }
            Op::Read {
                op,
                shard,
                candidates,
                mut next,
                req,
                mut round,
                needs,
                mut got,
                mut from,
            } => {
                if got.is_none() {
                    if let Some((n, g)) = round.replies.iter().find_map(|(n, r)| match r {
                        Response::Data { versions, blocks } => {
                            Some((n.clone(), Got::Data(versions.clone(), blocks.clone())))
                        }
                        Response::Blocks { entries } => {
                            Some((n.clone(), Got::Blocks(entries.clone())))
                        }
                        _ => None,
                    }) {
                        got = Some(g);
                        from = Some(n);
                    }
                }
                let checked = self.confirmed(needs, from.as_deref());
                match got {
                    Some(Got::Data(versions, blocks)) if checked => {
                        self.events.push(Event::Read {
                            op,
                            versions,
                            blocks,
                        });
                        return;
                    }
                    Some(Got::Blocks(entries)) if checked => {
                        self.events.push(Event::Fetched { op, entries });
                        return;
                    }
                    other => got = other,
                }
                if timed_out {
                    self.events.push(Event::Failed {
                        op,
                        error: OpError::Timeout,
                    });
                    return;
                }
                // the asked replica failed, died, or is slow: ask the next one
                let stuck = got.is_none()
                    && round.sent.iter().all(|(n, s)| {
                        round.replies.contains_key(n) || !live(n) || now >= s.1 + self.cfg.retry_ms
                    });
                if stuck {
                    let live_cands: Vec<&NodeId> = candidates.iter().filter(|n| live(n)).collect();
                    if live_cands.is_empty() {
                        self.events.push(Event::Failed {
                            op,
                            error: OpError::Unavailable(shard),
                        });
                        return;
                    }
                    let to = live_cands[next % live_cands.len()].clone();
                    next += 1;
                    round.replies.remove(&to);
                    self.send(&mut round, &to, req.clone(), now);
                }
                self.put(
                    slot,
                    started,
                    Op::Read {
                        op,
                        shard,
                        candidates,
                        next,
                        req,
                        round,
                        needs,
                        got,
                        from,
                    },
                );
            }
            Op::RepairFetch {
                key,
                keep,
                target,
                round,
            } => {
                let src = round.sent.keys().next().expect("one source").clone();
                match round.replies.get(&src) {
                    Some(Response::Blocks { entries }) => {
                        if entries.is_empty() {
                            // never written: nothing copied, nothing to throttle
                            self.last_repair_ms = None;
                        }
                        let entries: Vec<BlockEntry<D>> = entries.clone();
                        let version = self.next_override_version();
                        let round = self.install_round(
                            std::slice::from_ref(&target),
                            key.shard,
                            version,
                            &entries,
                            now,
                        );
                        self.put(
                            slot,
                            started,
                            Op::RepairInstall {
                                key,
                                keep,
                                target,
                                version,
                                round,
                            },
                        );
                    }
                    Some(_) => self.scan_wanted = true,
                    None if timed_out || !live(&src) || !live(&target) => self.scan_wanted = true,
                    None => self.put(
                        slot,
                        started,
                        Op::RepairFetch {
                            key,
                            keep,
                            target,
                            round,
                        },
                    ),
                }
            }
            Op::RepairInstall {
                key,
                keep,
                target,
                version,
                round,
            } => match round.replies.get(&target) {
                Some(Response::Ok) => {
                    let mut replicas = keep;
                    replicas.push(target);
                    let after = After::Repaired {
                        key: key.clone(),
                        replicas: replicas.clone(),
                    };
                    self.start_commit_at(At { slot, started }, after, key, replicas, version, now);
                }
                Some(_) => self.scan_wanted = true,
                None if timed_out || !live(&target) => self.scan_wanted = true,
                None => self.put(
                    slot,
                    started,
                    Op::RepairInstall {
                        key,
                        keep,
                        target,
                        version,
                        round,
                    },
                ),
            },
            Op::Move { mut items } => {
                for it in items.iter_mut() {
                    self.advance_move(it, now, timed_out, live);
                }
                if items
                    .iter()
                    .any(|it| !matches!(it.stage, MoveStage::Done | MoveStage::Failed))
                {
                    self.put(slot, started, Op::Move { items });
                }
            }
        }
    }

    /// Move one shard of a move operation on as far as its replies allow.
    fn advance_move(
        &mut self,
        it: &mut MoveItem<D>,
        now: u64,
        timed_out: bool,
        live: &dyn Fn(&str) -> bool,
    ) {
        if matches!(it.stage, MoveStage::Done | MoveStage::Failed) {
            return;
        }
        let stage = std::mem::replace(&mut it.stage, MoveStage::Failed);
        it.stage = match stage {
            MoveStage::Fetch(round) => match round.replies.get(&it.source) {
                Some(Response::Blocks { entries }) => {
                    let entries: Vec<BlockEntry<D>> = entries.clone();
                    it.bytes = entries.len() as u64 * CLUSTER_BLOCK_BYTES;
                    let round = self.install_round(
                        &it.mv.add(),
                        it.mv.key.shard,
                        it.version,
                        &entries,
                        now,
                    );
                    MoveStage::Install(round)
                }
                Some(_) => MoveStage::Failed,
                None if timed_out || !live(&it.source) => MoveStage::Failed,
                None => MoveStage::Fetch(round),
            },
            MoveStage::Install(round) => {
                let bad = round.sent.keys().any(|n| {
                    !live(n)
                        || round
                            .replies
                            .get(n)
                            .is_some_and(|r| !matches!(r, Response::Ok))
                });
                if bad || (timed_out && round.pending().next().is_some()) {
                    MoveStage::Failed
                } else if round.pending().next().is_some() {
                    MoveStage::Install(round)
                } else {
                    if let Some(r) = self.rebal.as_mut() {
                        let _ = r.rb.copied(&it.mv.key, it.bytes, now);
                    }
                    let record = OverrideRecord::new(it.version, it.mv.to.clone());
                    let round = self.commit_round(&it.mv.key, &record, now);
                    MoveStage::Commit(round, record)
                }
            }
            MoveStage::Commit(round, record) => {
                let committed = self.commit_quorum(&it.mv.key, &record, &round);
                if committed && it.pin {
                    self.overrides.merge(&it.mv.key, &record);
                    if let Some(r) = self.rebal.as_mut() {
                        r.rb.abandoned(&it.mv.key);
                    }
                    MoveStage::Done
                } else if committed {
                    self.overrides.merge(&it.mv.key, &record);
                    let drop = it.mv.remove();
                    if let Some(r) = self.rebal.as_mut() {
                        let _ = r.rb.committed(&it.mv.key, &drop);
                    }
                    for node in drop {
                        self.start_drop(&it.mv.key, &node, record.version, now);
                    }
                    self.events.push(Event::Moved {
                        key: it.mv.key.clone(),
                        replicas: record.replicas,
                    });
                    MoveStage::Done
                } else {
                    // never abandoned once sent (see `After::Settle`)
                    MoveStage::Commit(round, record)
                }
            }
            s @ (MoveStage::Done | MoveStage::Failed) => s,
        };
        if matches!(it.stage, MoveStage::Failed) {
            self.scan_wanted = true;
            if let Some(r) = self.rebal.as_mut() {
                r.rb.failed(it.mv.clone());
            }
        }
    }

    fn start_drop(&mut self, key: &ShardKey, node: &NodeId, record: Version, now: u64) {
        let bps = self.cfg.blocks_per_shard;
        let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
        let round = self.round(
            std::slice::from_ref(node),
            || Request::Drop {
                volume: volume.clone(),
                epoch,
                first_block: key.shard * bps,
                n_blocks: bps,
                record,
            },
            now,
        );
        self.drops.push(DropJob {
            key: key.clone(),
            node: node.clone(),
            round,
        });
    }

    /// Finish drops that were answered or whose node is down (its copy then
    /// stays, unused: it is in no set).
    fn advance_drops(&mut self, live: &dyn Fn(&str) -> bool) {
        let mut i = 0;
        while i < self.drops.len() {
            let d = &self.drops[i];
            if d.round.replies.contains_key(&d.node) || !live(&d.node) {
                let d = self.drops.swap_remove(i);
                if let Some(r) = self.rebal.as_mut() {
                    r.rb.dropped(&d.key, &d.node);
                }
            } else {
                i += 1;
            }
        }
    }

    fn note_liveness(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        for m in &self.cfg.members {
            if live(&m.id) {
                if self.dead_since.remove(&m.id).is_some() {
                    // back: it may hold copies that moved away meanwhile
                    self.scan_wanted = true;
                }
            } else {
                self.dead_since.entry(m.id.clone()).or_insert(now);
            }
        }
    }

    /// The rebalancing target: every member with weight that is not out.
    fn target(&self, now: u64) -> Vec<Member> {
        let mut t: Vec<Member> = self
            .cfg
            .members
            .iter()
            .filter(|m| m.weight > 0.0 && !self.leaving.contains(&m.id))
            .filter(|m| {
                self.dead_since
                    .get(&m.id)
                    .is_none_or(|t| now < t + self.cfg.out_after_ms)
            })
            .cloned()
            .collect();
        t.sort_by(|a, b| a.id.cmp(&b.id));
        t.dedup_by(|a, b| a.id == b.id);
        t
    }

    /// Plan a rebalancing when the target moved away from the basis (or
    /// from the running plan's target), start the next moves the throttle
    /// allows, and commit the target as basis once every move is done.
    fn maybe_rebalance(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        let target = self.target(now);
        if target.is_empty() {
            return;
        }
        let tids = ids_of(&target);
        if self.rebal.as_ref().map(|r| ids_of(&r.target)) != Some(tids.clone()) {
            if self.rebal.is_none() && ids_of(&self.basis) == tids {
                return;
            }
            let keys = (0..self.cfg.shards).map(|s| self.key(s));
            let moves = rebalance::plan(keys, &self.basis, &target, self.cfg.replicas, |k| {
                self.overrides.get(k).map(|r| r.replicas.as_slice())
            });
            self.rebal = Some(Rebal {
                target,
                rb: Rebalancer::new(moves, self.cfg.rebalance, now),
            });
        }
        let mut r = self.rebal.take().expect("planned above");
        if r.rb.moves_done() {
            self.reserved_moves.clear();
            if ids_of(&self.basis) != tids {
                let after = After::Joint(r.target.clone());
                self.rebal = Some(r);
                if self.exclusive_may_start() {
                    self.start_config_change(after, tids, now);
                }
            } else {
                self.rebal = Some(r);
            }
            return;
        }
        // a shard callers are reading or writing waits (reserved: no new
        // caller operation on it starts) and its move comes back later
        let in_use = self.shards_of(Class::Client);
        self.reserved_moves.clear();
        let mut items = Vec::new();
        for _ in 0..r.rb.queued() + r.rb.in_flight() {
            let Some(planned) = r.rb.next(now) else {
                break;
            };
            let from = self.replicas_of(&planned.key);
            let mv = Move { from, ..planned };
            if mv.add().is_empty() && mv.remove().is_empty() {
                r.rb.skip(&mv.key);
                continue;
            }
            if in_use.contains(&mv.key.shard) {
                self.reserved_moves.insert(mv.key.shard);
                r.rb.defer(mv);
                continue;
            }
            let source = mv
                .from
                .iter()
                .filter(|n| live(n))
                .min_by_key(|n| **n != self.cfg.me)
                .cloned();
            let gone = |n: &NodeId| !r.target.iter().any(|m| m.id == *n);
            if source.is_none() && mv.from.iter().all(gone) {
                // nothing left to copy: pin the shard where it was
                let record = OverrideRecord::new(self.next_override_version(), mv.from.clone());
                let round = self.commit_round(&mv.key, &record, now);
                items.push(MoveItem {
                    version: record.version,
                    mv,
                    pin: true,
                    source: NodeId::new(),
                    bytes: 0,
                    stage: MoveStage::Commit(round, record),
                });
                continue;
            }
            let (Some(source), true) = (source, mv.to.iter().all(|n| live(n))) else {
                r.rb.defer(mv);
                continue;
            };
            let bps = self.cfg.blocks_per_shard;
            let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
            let first_block = mv.key.shard * bps;
            let round = self.round(
                std::slice::from_ref(&source),
                || Request::Fetch {
                    volume: volume.clone(),
                    epoch,
                    first_block,
                    n_blocks: bps,
                },
                now,
            );
            let version = self.next_override_version();
            items.push(MoveItem {
                mv,
                pin: false,
                version,
                source,
                bytes: 0,
                stage: MoveStage::Fetch(round),
            });
        }
        self.rebal = Some(r);
        if !items.is_empty() {
            let slot = self.new_slot();
            self.put(slot, now, Op::Move { items });
        }
    }

    /// Start an orphan scan when one is wanted or due: `Held` to every
    /// live member.
    fn maybe_scan(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        if self.scan.is_some() {
            return;
        }
        let every = self.rescan_ms.unwrap_or(CLUSTER_ORPHAN_SCAN_INTERVAL_MS);
        let due = self.last_scan_ms.is_none_or(|t| now >= t + every);
        if !self.scan_wanted && !due {
            return;
        }
        let by_timer = !self.scan_wanted;
        self.scan_wanted = false;
        self.last_scan_ms = Some(now);
        let to: Vec<NodeId> = self.member_ids().into_iter().filter(|n| live(n)).collect();
        let (volume, epoch, bps) = (
            self.cfg.volume.clone(),
            self.epoch,
            self.cfg.blocks_per_shard,
        );
        let round = self.round(
            &to,
            || Request::Held {
                volume: volume.clone(),
                epoch,
                blocks_per_shard: bps,
            },
            now,
        );
        self.scan = Some((now, round, by_timer));
    }

    /// Finish the orphan scan once every asked member answered, died or
    /// the scan timed out: drop the orphans it proves unneeded.
    fn advance_scan(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        let Some((started, round, _)) = self.scan.as_ref() else {
            return;
        };
        if let Some(e) = round.fenced() {
            self.scan = None;
            self.fence_seen(e);
            return;
        }
        let waiting = round.pending().any(|n| live(n));
        if waiting && now < started + self.cfg.op_timeout_ms {
            return;
        }
        let (_, round, by_timer) = self.scan.take().expect("checked above");
        if self.mode != Mode::Attached {
            return;
        }
        let held: BTreeMap<NodeId, BTreeMap<u64, Version>> = round
            .replies
            .into_iter()
            .filter_map(|(n, r)| match r {
                Response::Held { shards } => Some((n, shards.into_iter().collect())),
                _ => None,
            })
            .collect();
        // shards structural operations work on, and the nodes callers'
        // reads and writes in flight may still ask (a read that started
        // while the node was in the set): not dropped under them
        let busy: BTreeSet<u64> = self.shards_of(Class::Structural);
        let asked: BTreeSet<(u64, NodeId)> = self
            .ops
            .values()
            .flat_map(|(_, op)| match op {
                Op::Read {
                    shard, candidates, ..
                } => candidates.iter().map(|n| (*shard, n.clone())).collect(),
                Op::Write { shard, round, .. } => {
                    round.sent.keys().map(|n| (*shard, n.clone())).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let mut kept = false;
        for (node, shards) in &held {
            for (&shard, &newest) in shards {
                if shard >= self.cfg.shards {
                    continue;
                }
                let key = self.key(shard);
                let set = self.replicas_of(&key);
                if set.contains(node) {
                    continue;
                }
                let covered = set.len() >= self.cfg.replicas
                    && set.iter().all(|n| {
                        live(n)
                            && held
                                .get(n)
                                .and_then(|m| m.get(&shard))
                                .is_some_and(|v| *v >= newest)
                    });
                if !covered || busy.contains(&shard) || asked.contains(&(shard, node.clone())) {
                    kept = true;
                    continue;
                }
                if self.drops.iter().any(|d| d.key == key && d.node == *node) {
                    continue;
                }
                // newer than any guard this attacher gave an install so far
                // (an install whose commit failed made the orphan); any
                // later install is guarded by a newer version still
                let record = self.next_override_version();
                self.orphans_dropped += 1;
                self.start_drop(&key, node, record, now);
            }
        }
        // the wait doubles only over scans the timer started
        self.rescan_ms = kept.then(|| match (by_timer, self.rescan_ms) {
            (true, Some(t)) => (2 * t).min(CLUSTER_ORPHAN_SCAN_INTERVAL_MS),
            _ => CLUSTER_ORPHAN_RESCAN_MIN_MS,
        });
    }

    /// Start re-replicating the next shard short of live copies, if the
    /// throttle allows.
    fn maybe_repair(&mut self, now: u64, live: &dyn Fn(&str) -> bool) {
        if self
            .last_repair_ms
            .is_some_and(|t| now < t + self.cfg.repair_interval_ms)
        {
            return;
        }
        let live_members: Vec<Member> = self
            .cfg
            .members
            .iter()
            .filter(|m| live(&m.id) && !self.leaving.contains(&m.id))
            .cloned()
            .collect();
        let in_use = self.shards_of(Class::Client);
        self.reserved_repair = None;
        for _ in 0..self.cfg.shards.min(CLUSTER_REPAIR_SCAN_SHARDS) {
            let shard = self.repair_cursor;
            self.repair_cursor = (self.repair_cursor + 1) % self.cfg.shards.max(1);
            let key = self.key(shard);
            let set = self.replicas_of(&key);
            let keep: Vec<NodeId> = set.iter().filter(|n| live(n)).cloned().collect();
            if keep.len() >= self.cfg.replicas || keep.is_empty() {
                continue;
            }
            let Some(target) = next_home(&key, &live_members, &keep, &set) else {
                continue;
            };
            if in_use.contains(&shard) {
                // callers' operations on it end first; none starts meanwhile
                self.reserved_repair = Some(shard);
                self.repair_cursor = shard;
                return;
            }
            self.last_repair_ms = Some(now);
            let bps = self.cfg.blocks_per_shard;
            let (volume, epoch) = (self.cfg.volume.clone(), self.epoch);
            let round = self.round(
                &keep[..1],
                || Request::Fetch {
                    volume: volume.clone(),
                    epoch,
                    first_block: shard * bps,
                    n_blocks: bps,
                },
                now,
            );
            let slot = self.new_slot();
            self.put(
                slot,
                now,
                Op::RepairFetch {
                    key,
                    keep,
                    target,
                    round,
                },
            );
            return;
        }
    }
}

/// Every round of `op` waiting on replies.
fn op_rounds<D>(op: &mut Op<D>) -> Vec<&mut Round<D>> {
    match op {
        Op::Attach { round, .. }
        | Op::Write { round, .. }
        | Op::Commit { round, .. }
        | Op::Read { round, .. }
        | Op::RepairFetch { round, .. }
        | Op::RepairInstall { round, .. } => vec![round],
        Op::Move { items } => items
            .iter_mut()
            .filter_map(|it| match &mut it.stage {
                MoveStage::Fetch(r) | MoveStage::Install(r) | MoveStage::Commit(r, _) => Some(r),
                MoveStage::Done | MoveStage::Failed => None,
            })
            .collect(),
    }
}

fn ids_of(members: &[Member]) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = members.iter().map(|m| m.id.clone()).collect();
    v.sort();
    v.dedup();
    v
}

fn cfg_members_sorted(members: &[Member]) -> Vec<Member> {
    let mut m = members.to_vec();
    m.sort_by(|a, b| a.id.cmp(&b.id));
    m.dedup_by(|a, b| a.id == b.id);
    m
}

/// The basis members named by `ids`, as `members` describes them.
fn basis_from(ids: &[NodeId], members: &[Member]) -> Vec<Member> {
    ids.iter()
        .map(|id| {
            members
                .iter()
                .find(|m| m.id == *id)
                .cloned()
                .unwrap_or_else(|| Member::new(id, 1.0, None))
        })
        .collect()
}

/// The records fence answers establish: the highest floor among them wins,
/// and records older than it come only from answers at that floor (they
/// hold exactly that snapshot's records: a record an older attacher sent
/// but a newer one's snapshot left out was never committed and stays out).
fn learnt<D>(round: &Round<D>) -> OverrideMap {
    let answers: Vec<(&Vec<(ShardKey, OverrideRecord)>, Epoch)> = round
        .replies
        .values()
        .filter_map(|r| match r {
            Response::FenceOk { overrides, floor } => Some((overrides, *floor)),
            _ => None,
        })
        .collect();
    let top = answers.iter().map(|a| a.1).max().unwrap_or_default();
    let mut m = OverrideMap::new();
    for (recs, floor) in answers {
        for (k, r) in recs {
            if r.version.epoch >= top || floor == top {
                m.merge(k, r);
            }
        }
    }
    m
}

/// Whether `ok` holds a majority of `set` (distinct ids).
fn majority_of(set: &[NodeId], ok: &BTreeSet<&str>) -> bool {
    let mut ids: Vec<&str> = set.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.iter().filter(|n| ok.contains(*n)).count() > ids.len() / 2
}

/// Whether `ok` makes a quorum of the member configuration `config`
/// names: a majority of its members, and of its joint part if any.
fn quorum_in(config: &OverrideRecord, ok: &BTreeSet<&str>) -> bool {
    majority_of(&config.replicas, ok) && (config.joint.is_empty() || majority_of(&config.joint, ok))
}

/// The caller's operation id, for operations a caller started.
fn op_id<D>(op: &Op<D>) -> Option<u64> {
    match op {
        Op::Write { op, .. } | Op::Read { op, .. } => Some(*op),
        Op::Commit {
            after: After::Wrote { op, .. },
            ..
        } => Some(*op),
        _ => None,
    }
}
