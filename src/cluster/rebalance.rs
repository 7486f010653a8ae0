//! Rebalancing as a plain state machine: which shards move when the
//! placement membership changes, in what order their copies are made and
//! dropped, how fast, and how far it got. No I/O and no clock: time comes
//! in as milliseconds, copies and commits are reported by the caller (the
//! attacher), which does the fetch, install, commit and drop requests.
//!
//! Contract:
//! - [`plan`] lists exactly the shards whose rendezvous home *set* differs
//!   between the old and the new membership, or whose override record
//!   names a node outside the new membership (a leaving node holding a
//!   re-replicated copy), and whose current copies (their override record,
//!   else the old home) are not already the new home. A
//!   node joining moves about `R / (N + 1)` of the shards, one copy each.
//! - A move goes: copy to every new home member that lacks one (the caller
//!   installs and reports [`Rebalancer::copied`]), then publish the new set
//!   as the shard's override record ([`Rebalancer::committed`], refused
//!   before the copy is acknowledged), and only then drop the copies on
//!   nodes that left the set ([`Rebalancer::dropped`]). So every node of the
//!   committed set holds a whole copy at every moment, and a shard never has
//!   fewer live copies than it had before its move.
//! - Throttle: at most `max_moves` moves in flight, and a byte budget that
//!   refills at `bytes_per_sec` (up to one burst of `max_moves` shards): a
//!   move starts only while the budget is positive, and its copied bytes are
//!   charged when reported, so the long-run copy rate stays under the limit.
//! - A failed or deferred move goes back to the end of the queue. A move
//!   with no copy left anywhere (every node of its set is out) is
//!   abandoned: the caller pins its record where it was, so the loss stays
//!   visible instead of the shard reading as zeros at its new home.
//! - Progress counts shards planned, moved (committed), abandoned, in
//!   flight, remaining, bytes copied, drops pending and retries.

use super::placement::{place, Member, NodeId, ShardKey};
use crate::constants::{
    CLUSTER_REBALANCE_BYTES_PER_SEC, CLUSTER_REBALANCE_MAX_MOVES, CLUSTER_SHARD_BYTES,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Throttle of one rebalancing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Long-run copy rate (bytes per second).
    pub bytes_per_sec: u64,
    /// Moves in flight at once.
    pub max_moves: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            bytes_per_sec: CLUSTER_REBALANCE_BYTES_PER_SEC,
            max_moves: CLUSTER_REBALANCE_MAX_MOVES,
        }
    }
}

/// One shard's move: from its current copies to its new home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub key: ShardKey,
    /// Where the copies are now (record, else old home).
    pub from: Vec<NodeId>,
    /// The new home, best first.
    pub to: Vec<NodeId>,
}

impl Move {
    /// Nodes that need a copy (in `to`, not in `from`).
    pub fn add(&self) -> Vec<NodeId> {
        self.to
            .iter()
            .filter(|n| !self.from.contains(n))
            .cloned()
            .collect()
    }
    /// Nodes whose copy is dropped once the new set is committed.
    pub fn remove(&self) -> Vec<NodeId> {
        self.from
            .iter()
            .filter(|n| !self.to.contains(n))
            .cloned()
            .collect()
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    let a: BTreeSet<&NodeId> = a.iter().collect();
    let b: BTreeSet<&NodeId> = b.iter().collect();
    a == b
}

/// The moves that take `keys` from placement over `old` to placement over
/// `new` (`current` gives a shard's override record, if it has one).
pub fn plan<'a>(
    keys: impl IntoIterator<Item = ShardKey>,
    old: &[Member],
    new: &[Member],
    replicas: usize,
    current: impl Fn(&ShardKey) -> Option<&'a [NodeId]>,
) -> Vec<Move> {
    let mut out = Vec::new();
    for key in keys {
        let old_home = place(&key, old, replicas);
        let new_home = place(&key, new, replicas);
        let rec = current(&key);
        // a record naming a node outside `new` (one leaving) moves too
        let stranded = rec.is_some_and(|r| r.iter().any(|n| !new.iter().any(|m| m.id == *n)));
        if same_set(&old_home, &new_home) && !stranded {
            continue;
        }
        let from = rec.map(<[NodeId]>::to_vec).unwrap_or(old_home);
        if same_set(&from, &new_home) {
            continue;
        }
        out.push(Move {
            key,
            from,
            to: new_home,
        });
    }
    out
}

/// How far a rebalancing got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Shards whose home changed and whose copies were elsewhere.
    pub planned: u64,
    /// Shards whose new set is committed (or was found there already).
    pub moved: u64,
    pub in_flight: u64,
    /// Bytes copied to new homes.
    pub bytes: u64,
    /// Old copies not yet dropped.
    pub drops_pending: u64,
    /// Moves that failed and went back to the queue.
    pub retries: u64,
    /// Shards with no copy left to move (pinned where they were).
    #[serde(default)]
    pub abandoned: u64,
}

impl Progress {
    pub fn remaining(&self) -> u64 {
        self.planned - self.moved - self.abandoned
    }
    /// Every move committed (or abandoned) and every old copy dropped.
    pub fn done(&self) -> bool {
        self.remaining() == 0 && self.drops_pending == 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RebalanceError {
    #[error("shard {0:?} is not being moved")]
    NotActive(ShardKey),
    #[error("shard {0:?}: its new copies are not acknowledged yet")]
    NotCopied(ShardKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Copying,
    Copied,
}

/// The moves of one membership change and their progress.
#[derive(Debug, Clone)]
pub struct Rebalancer {
    limits: Limits,
    queue: VecDeque<Move>,
    active: BTreeMap<ShardKey, Stage>,
    drops: BTreeMap<ShardKey, BTreeSet<NodeId>>,
    /// Byte budget (may go negative: a debt paid off by time).
    budget: f64,
    last_ms: u64,
    progress: Progress,
}

impl Rebalancer {
    pub fn new(moves: Vec<Move>, limits: Limits, now_ms: u64) -> Rebalancer {
        let progress = Progress {
            planned: moves.len() as u64,
            ..Progress::default()
        };
        Rebalancer {
            budget: Self::burst(&limits),
            limits,
            queue: moves.into(),
            active: BTreeMap::new(),
            drops: BTreeMap::new(),
            last_ms: now_ms,
            progress,
        }
    }

    fn burst(l: &Limits) -> f64 {
        (CLUSTER_SHARD_BYTES * l.max_moves.max(1) as u64) as f64
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }
    pub fn limits(&self) -> Limits {
        self.limits
    }
    /// Nothing queued or in flight (drops may still be pending).
    pub fn moves_done(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty()
    }
    pub fn in_flight(&self) -> usize {
        self.active.len()
    }
    /// Moves waiting to start.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let add = self.limits.bytes_per_sec as f64 * dt as f64 / 1000.0;
        self.budget = (self.budget + add).min(Self::burst(&self.limits));
    }

    /// The next move to start now, if the throttle allows one.
    pub fn next(&mut self, now_ms: u64) -> Option<Move> {
        self.refill(now_ms);
        if self.active.len() >= self.limits.max_moves || self.budget <= 0.0 {
            return None;
        }
        let mv = self.queue.pop_front()?;
        self.active.insert(mv.key.clone(), Stage::Copying);
        self.progress.in_flight += 1;
        Some(mv)
    }

    /// A started move that cannot run now (a target or every source down):
    /// back to the end of the queue, not counted as a retry.
    pub fn defer(&mut self, mv: Move) {
        if self.active.remove(&mv.key).is_some() {
            self.progress.in_flight -= 1;
            self.queue.push_back(mv);
        }
    }

    /// A started move found its copies already at the new home.
    pub fn skip(&mut self, key: &ShardKey) {
        if self.active.remove(key).is_some() {
            self.progress.in_flight -= 1;
            self.progress.moved += 1;
        }
    }

    /// Every new copy of `key` is acknowledged; `bytes` were copied.
    pub fn copied(
        &mut self,
        key: &ShardKey,
        bytes: u64,
        now_ms: u64,
    ) -> Result<(), RebalanceError> {
        let st = self
            .active
            .get_mut(key)
            .ok_or_else(|| RebalanceError::NotActive(key.clone()))?;
        *st = Stage::Copied;
        self.refill(now_ms);
        self.budget -= bytes as f64;
        self.progress.bytes += bytes;
        Ok(())
    }

    /// The new set of `key` is committed: the move is done, and `drop`
    /// (the nodes that left the set) may now drop their copies.
    pub fn committed(&mut self, key: &ShardKey, drop: &[NodeId]) -> Result<(), RebalanceError> {
        match self.active.get(key) {
            None => return Err(RebalanceError::NotActive(key.clone())),
            Some(Stage::Copying) => return Err(RebalanceError::NotCopied(key.clone())),
            Some(Stage::Copied) => {}
        }
        self.active.remove(key);
        self.progress.in_flight -= 1;
        self.progress.moved += 1;
        for n in drop {
            if self.drops.entry(key.clone()).or_default().insert(n.clone()) {
                self.progress.drops_pending += 1;
            }
        }
        Ok(())
    }

    /// A started move has no copy left to move from; its shard was pinned.
    pub fn abandoned(&mut self, key: &ShardKey) {
        if self.active.remove(key).is_some() {
            self.progress.in_flight -= 1;
            self.progress.abandoned += 1;
        }
    }

    /// The move failed before its commit: it goes back to the queue.
    pub fn failed(&mut self, mv: Move) {
        if self.active.remove(&mv.key).is_some() {
            self.progress.in_flight -= 1;
            self.progress.retries += 1;
            self.queue.push_back(mv);
        }
    }

    /// `node` dropped (or can no longer be asked to drop) its copy of `key`.
    pub fn dropped(&mut self, key: &ShardKey, node: &str) {
        if let Some(d) = self.drops.get_mut(key) {
            if d.remove(node) {
                self.progress.drops_pending -= 1;
            }
            if d.is_empty() {
                self.drops.remove(key);
            }
        }
    }

    /// Drops still owed: `(shard, node)`.
    pub fn pending_drops(&self) -> impl Iterator<Item = (&ShardKey, &NodeId)> {
        self.drops
            .iter()
            .flat_map(|(k, s)| s.iter().map(move |n| (k, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(&format!("n{i}"), 1.0, None))
            .collect()
    }

    fn keys(n: u64) -> Vec<ShardKey> {
        (0..n).map(|s| ShardKey::new("v", s)).collect()
    }

    #[test]
    fn a_join_moves_only_changed_homes_about_one_in_n_plus_one_copies() {
        let (old, new) = (members(3), members(4));
        let shards = 4000u64;
        let moves = plan(keys(shards), &old, &new, 2, |_| None);
        for m in &moves {
            assert_ne!(place(&m.key, &old, 2), place(&m.key, &new, 2));
            assert_eq!(m.add(), vec!["n3".to_string()], "{m:?}");
            assert_eq!(m.remove().len(), 1, "{m:?}");
        }
        // every shard whose home set changed is planned
        let changed = keys(shards)
            .iter()
            .filter(|k| !same_set(&place(k, &old, 2), &place(k, &new, 2)))
            .count();
        assert_eq!(moves.len(), changed);
        // R/(N+1) of the shards, one copy each: 1/(N+1) of all copies
        let copies = moves.iter().map(|m| m.add().len()).sum::<usize>() as f64;
        let frac = copies / (2 * shards) as f64;
        assert!((frac - 0.25).abs() < 0.03, "moved {frac} of the copies");
    }

    #[test]
    fn records_decide_where_copies_are_and_already_placed_shards_stay() {
        let (old, new) = (members(3), members(4));
        let ks = keys(200);
        let moved = plan(ks.clone(), &old, &new, 2, |_| None);
        let k = moved[0].key.clone();
        let there = moved[0].to.clone();
        // a shard whose record already equals its new home is not planned
        let again = plan(ks.clone(), &old, &new, 2, |x| {
            (*x == k).then_some(there.as_slice())
        });
        assert_eq!(again.len(), moved.len() - 1);
        assert!(again.iter().all(|m| m.key != k));
        // a record elsewhere is the move's source
        let away = vec!["n9".to_string(), "n8".to_string()];
        let p = plan(ks, &old, &new, 2, |x| (*x == k).then_some(away.as_slice()));
        let m = p.iter().find(|m| m.key == k).unwrap();
        assert_eq!(m.from, away);
        assert_eq!(m.add().len(), 2);
    }

    #[test]
    fn a_leave_moves_only_shards_that_lived_on_the_leaver() {
        let (old, new) = (members(5), members(4)); // n4 leaves
        let moves = plan(keys(2000), &old, &new, 3, |_| None);
        assert!(!moves.is_empty());
        for m in &moves {
            assert_eq!(m.remove(), vec!["n4".to_string()]);
            assert_eq!(m.add().len(), 1);
        }
    }

    #[test]
    fn a_record_on_a_leaving_node_moves_even_when_its_home_stays() {
        let (old, new) = (members(5), members(4)); // n4 leaves
        let ks = keys(400);
        let k = ks
            .iter()
            .find(|k| same_set(&place(k, &old, 2), &place(k, &new, 2)))
            .unwrap()
            .clone();
        let home = place(&k, &new, 2);
        let rec = vec![home[0].clone(), "n4".to_string()];
        let p = plan(ks.clone(), &old, &new, 2, |x| {
            (*x == k).then_some(rec.as_slice())
        });
        let m = p.iter().find(|m| m.key == k).expect("planned");
        assert_eq!(m.remove(), vec!["n4".to_string()]);
        assert_eq!(m.to, home);
        // without the record it stays
        assert!(plan(ks, &old, &new, 2, |_| None).iter().all(|m| m.key != k));
    }

    #[test]
    fn commit_before_copy_is_refused_and_drops_follow_commit() {
        let mv = Move {
            key: ShardKey::new("v", 1),
            from: vec!["a".into(), "b".into()],
            to: vec!["a".into(), "c".into()],
        };
        let mut r = Rebalancer::new(vec![mv.clone()], Limits::default(), 0);
        assert_eq!(
            r.committed(&mv.key, &mv.remove()),
            Err(RebalanceError::NotActive(mv.key.clone()))
        );
        let got = r.next(0).unwrap();
        assert_eq!(got, mv);
        assert_eq!(
            r.committed(&mv.key, &mv.remove()),
            Err(RebalanceError::NotCopied(mv.key.clone()))
        );
        r.copied(&mv.key, 4096, 0).unwrap();
        r.committed(&mv.key, &mv.remove()).unwrap();
        assert_eq!(r.progress().drops_pending, 1);
        assert!(!r.progress().done());
        assert_eq!(
            r.pending_drops().collect::<Vec<_>>(),
            vec![(&mv.key, &"b".to_string())]
        );
        r.dropped(&mv.key, "b");
        assert!(r.progress().done() && r.moves_done());
        assert_eq!(r.progress().bytes, 4096);
    }

    #[test]
    fn throttle_bounds_moves_in_flight_and_the_byte_rate() {
        let moves: Vec<Move> = (0..200)
            .map(|s| Move {
                key: ShardKey::new("v", s),
                from: vec!["a".into()],
                to: vec!["b".into()],
            })
            .collect();
        let limits = Limits {
            bytes_per_sec: 4 * CLUSTER_SHARD_BYTES,
            max_moves: 3,
        };
        let mut r = Rebalancer::new(moves, limits, 0);
        let mut active: Vec<Move> = Vec::new();
        let mut now = 0;
        while now <= 10_000 {
            while let Some(m) = r.next(now) {
                active.push(m);
                assert!(active.len() <= 3);
                assert_eq!(r.in_flight(), active.len());
            }
            // each move copies one shard and commits within the step
            for m in active.drain(..) {
                r.copied(&m.key, CLUSTER_SHARD_BYTES, now).unwrap();
                r.committed(&m.key, &m.remove()).unwrap();
                r.dropped(&m.key, "a");
            }
            now += 50;
        }
        // 10 s at 4 shards/s, plus the initial burst of 3, plus at most 3
        // started on a nearly spent budget
        let moved = r.progress().moved;
        assert!((40..=46).contains(&moved), "moved {moved}");
        assert_eq!(r.progress().bytes, moved * CLUSTER_SHARD_BYTES);
        assert_eq!(r.progress().remaining(), 200 - moved);
    }

    #[test]
    fn failed_and_deferred_moves_come_back() {
        let mk = |s| Move {
            key: ShardKey::new("v", s),
            from: vec!["a".into()],
            to: vec!["b".into()],
        };
        let mut r = Rebalancer::new(vec![mk(0), mk(1)], Limits::default(), 0);
        let a = r.next(0).unwrap();
        let b = r.next(0).unwrap();
        r.failed(a.clone());
        r.defer(b.clone());
        assert_eq!(r.progress().retries, 1);
        assert_eq!(r.progress().in_flight, 0);
        assert_eq!(r.next(0).unwrap(), a);
        assert_eq!(r.next(0).unwrap(), b);
        r.skip(&a.key);
        assert_eq!(r.progress().moved, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any interleaving of copies, commits, drops and failures over any
        /// join or leave keeps every shard's committed set whole (each of
        /// its nodes holds a copy) and at least `R` copies, and ends with
        /// every changed shard at its new home.
        #[test]
        fn r_copies_are_kept_throughout(
            n in 3usize..8, r in 1usize..4, join in any::<bool>(),
            shards in 1u64..60, ops in proptest::collection::vec(0u8..4, 1..400),
        ) {
            let r = r.min(n - 1);
            let old = members(n);
            let new = if join { members(n + 1) } else { members(n - 1) };
            let ks = keys(shards);
            let moves = plan(ks.clone(), &old, &new, r, |_| None);
            // holders: who has a whole copy; set: the committed set
            let mut holders: BTreeMap<ShardKey, BTreeSet<NodeId>> = BTreeMap::new();
            let mut set: BTreeMap<ShardKey, Vec<NodeId>> = BTreeMap::new();
            for k in &ks {
                let h = place(k, &old, r);
                holders.insert(k.clone(), h.iter().cloned().collect());
                set.insert(k.clone(), h);
            }
            let limits = Limits { bytes_per_sec: u64::MAX / 4, max_moves: 3 };
            let mut rb = Rebalancer::new(moves, limits, 0);
            let mut active: Vec<(Move, bool)> = Vec::new();
            let mut now = 0;
            let check = |holders: &BTreeMap<ShardKey, BTreeSet<NodeId>>,
                         set: &BTreeMap<ShardKey, Vec<NodeId>>| -> Result<(), TestCaseError> {
                for (k, s) in set {
                    prop_assert!(s.len() >= r);
                    for x in s {
                        prop_assert!(holders[k].contains(x), "{:?}: {} in set without a copy", k, x);
                    }
                }
                Ok(())
            };
            for op in ops.iter().copied().chain(std::iter::repeat_n(3, 4000)) {
                now += 10;
                match op {
                    0 => if let Some(m) = rb.next(now) { active.push((m, false)); },
                    1 => if let Some((m, copied)) = active.first_mut() {
                        // install the new copies
                        for x in m.add() { holders.get_mut(&m.key).unwrap().insert(x); }
                        *copied = true;
                        rb.copied(&m.key, 1, now).unwrap();
                    },
                    2 => if let Some((m, copied)) = active.pop() {
                        if copied { rb.failed(m) } else { rb.defer(m) }
                    },
                    _ => {
                        if let Some((m, copied)) = active.first().cloned() {
                            if copied {
                                rb.committed(&m.key, &m.remove()).unwrap();
                                set.insert(m.key.clone(), m.to.clone());
                                active.remove(0);
                            } else {
                                prop_assert!(rb.committed(&m.key, &m.remove()).is_err());
                                for x in m.add() { holders.get_mut(&m.key).unwrap().insert(x); }
                                rb.copied(&m.key, 1, now).unwrap();
                                active[0].1 = true;
                            }
                        } else if let Some(m) = rb.next(now) {
                            active.push((m, false));
                        }
                        let d: Vec<(ShardKey, NodeId)> =
                            rb.pending_drops().map(|(k, x)| (k.clone(), x.clone())).take(1).collect();
                        for (k, x) in d {
                            holders.get_mut(&k).unwrap().remove(&x);
                            rb.dropped(&k, &x);
                        }
                    }
                }
                check(&holders, &set)?;
                if rb.progress().done() && active.is_empty() && rb.moves_done() { break; }
            }
            prop_assert!(rb.progress().done(), "{:?}", rb.progress());
            for k in &ks {
                prop_assert!(same_set(&set[k], &place(k, &new, r)));
                prop_assert_eq!(holders[k].len(), r);
            }
        }
    }
}
