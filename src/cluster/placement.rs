//! Shard placement: weighted rendezvous (highest-random-weight) hashing of
//! `(volume, shard)` over the cluster's members. Pure: no I/O, no clock.
//!
//! Contract:
//! - Each member scores every shard key with the logarithmic weighted HRW
//!   formula `score = -w / ln(u)`, where `u` in (0, 1) is a stable hash of
//!   (key, member id) and `w` its weight. A shard's home is the `R`
//!   highest-scoring members: a member's expected share is `w / Σw`, and
//!   adding or removing a member moves only the shards whose top `R` changed.
//! - Replicas are on distinct members, and on distinct failure-domain labels
//!   while enough labels exist: members are taken in score order skipping a
//!   label already used; if fewer than `R` labels exist, the rest is filled
//!   in score order (distinct members still). A member without a label is its
//!   own domain.
//! - Weights come from free capacity through [`weight_for_free_bytes`], which
//!   quantises (`CLUSTER_WEIGHT_STEPS_PER_DOUBLING` steps per doubling) so the
//!   small changes every write makes do not move homes.
//! - Ties (equal scores) break by member id, so every node computes the same
//!   answer from the same member list, whatever its order.

use super::hash::{combine, hash_bytes, unit_open};
use crate::constants::CLUSTER_WEIGHT_STEPS_PER_DOUBLING;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// A node's name in the cluster (stable across restarts).
pub type NodeId = String;

/// One shard of one volume: the unit of placement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardKey {
    pub volume: String,
    pub shard: u64,
}

impl ShardKey {
    pub fn new(volume: &str, shard: u64) -> ShardKey {
        ShardKey {
            volume: volume.to_string(),
            shard,
        }
    }
    /// The key's stable hash.
    pub fn hash(&self) -> u64 {
        combine(hash_bytes(self.volume.as_bytes()), self.shard)
    }
}

/// A placement candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Relative weight (≥ 0); 0 is chosen only when nothing else is left.
    pub weight: f64,
    /// Failure-domain label (rack, host, zone), if any.
    pub domain: Option<String>,
}

impl Member {
    pub fn new(id: &str, weight: f64, domain: Option<&str>) -> Member {
        Member {
            id: id.to_string(),
            weight,
            domain: domain.map(str::to_string),
        }
    }
}

/// Placement weight of a node with `free` bytes: `free` in GiB rounded to
/// `CLUSTER_WEIGHT_STEPS_PER_DOUBLING` steps per doubling (0 for under 1 MiB).
pub fn weight_for_free_bytes(free: u64) -> f64 {
    if free < (1 << 20) {
        return 0.0;
    }
    let gib = free as f64 / (1u64 << 30) as f64;
    let steps = CLUSTER_WEIGHT_STEPS_PER_DOUBLING as f64;
    ((gib.log2() * steps).round() / steps).exp2()
}

/// The HRW score of `member` for the key hash `key`.
pub fn score(key: u64, member: &Member) -> f64 {
    if member.weight <= 0.0 || member.weight.is_nan() {
        return 0.0;
    }
    let u = unit_open(combine(key, hash_bytes(member.id.as_bytes())));
    -member.weight / u.ln()
}

/// Members in descending score order for `key` (indexes into `members`).
pub fn rank(key: &ShardKey, members: &[Member]) -> Vec<usize> {
    let h = key.hash();
    let mut scored: Vec<(f64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (score(h, m), i))
        .collect();
    scored.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then_with(|| members[a.1].id.cmp(&members[b.1].id))
    });
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The home of `key`: up to `replicas` distinct members, best first,
/// spread over distinct failure domains while labels last. Duplicate ids in
/// `members` count once.
pub fn place(key: &ShardKey, members: &[Member], replicas: usize) -> Vec<NodeId> {
    let order = rank(key, members);
    let mut out: Vec<NodeId> = Vec::with_capacity(replicas);
    let mut domains: Vec<&str> = Vec::new();
    for &i in &order {
        if out.len() == replicas {
            break;
        }
        let m = &members[i];
        if out.contains(&m.id) {
            continue;
        }
        if let Some(d) = m.domain.as_deref() {
            if domains.contains(&d) {
                continue;
            }
            domains.push(d);
        }
        out.push(m.id.clone());
    }
    for &i in &order {
        if out.len() == replicas {
            break;
        }
        if !out.contains(&members[i].id) {
            out.push(members[i].id.clone());
        }
    }
    out
}

/// The best member not in `exclude` (for re-replication: where a lost copy
/// goes), preferring a failure domain no member of `keep` uses.
pub fn next_home(
    key: &ShardKey,
    members: &[Member],
    keep: &[NodeId],
    exclude: &[NodeId],
) -> Option<NodeId> {
    let order = rank(key, members);
    let used: Vec<&str> = members
        .iter()
        .filter(|m| keep.contains(&m.id))
        .filter_map(|m| m.domain.as_deref())
        .collect();
    let ok = |m: &Member| !keep.contains(&m.id) && !exclude.contains(&m.id);
    order
        .iter()
        .map(|&i| &members[i])
        .find(|m| ok(m) && m.domain.as_deref().is_none_or(|d| !used.contains(&d)))
        .or_else(|| order.iter().map(|&i| &members[i]).find(|m| ok(m)))
        .map(|m| m.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(&format!("node-{i}"), 1.0, None))
            .collect()
    }

    #[test]
    fn weight_quantises_and_orders() {
        assert_eq!(weight_for_free_bytes(0), 0.0);
        assert_eq!(weight_for_free_bytes(1 << 30), 1.0);
        assert_eq!(weight_for_free_bytes(4 << 30), 4.0);
        // within one step: the same weight
        assert_eq!(
            weight_for_free_bytes(1 << 30),
            weight_for_free_bytes((1 << 30) + (1 << 24))
        );
        assert!(weight_for_free_bytes(3 << 30) > weight_for_free_bytes(2 << 30));
    }

    #[test]
    fn member_order_does_not_matter() {
        let m = members(7);
        let mut rev = m.clone();
        rev.reverse();
        for s in 0..200 {
            let k = ShardKey::new("vol", s);
            assert_eq!(place(&k, &m, 3), place(&k, &rev, 3));
        }
    }

    #[test]
    fn domains_are_distinct_when_enough_labels() {
        let m: Vec<Member> = (0..9)
            .map(|i| Member::new(&format!("n{i}"), 1.0, Some(&format!("rack{}", i % 3))))
            .collect();
        for s in 0..500 {
            let p = place(&ShardKey::new("v", s), &m, 3);
            let mut racks: Vec<_> = p
                .iter()
                .map(|id| m.iter().find(|x| &x.id == id).unwrap().domain.clone())
                .collect();
            racks.sort();
            racks.dedup();
            assert_eq!(racks.len(), 3, "shard {s}: {p:?}");
        }
        // Fewer labels than replicas: still R distinct nodes.
        let p = place(&ShardKey::new("v", 1), &m, 5);
        let mut q = p.clone();
        q.sort();
        q.dedup();
        assert_eq!(q.len(), 5);
    }

    #[test]
    fn next_home_avoids_kept_and_excluded() {
        let m = members(5);
        let k = ShardKey::new("v", 3);
        let home = place(&k, &m, 2);
        let n = next_home(&k, &m, &home[..1], &home[1..]).unwrap();
        assert!(!home.contains(&n));
        // the next one in rank order
        assert_eq!(n, place(&k, &m, 3)[2]);
        let all: Vec<NodeId> = m.iter().map(|x| x.id.clone()).collect();
        assert_eq!(next_home(&k, &m, &all, &[]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn replicas_are_distinct(n in 1usize..12, r in 1usize..6, shard in any::<u64>()) {
            let m = members(n);
            let p = place(&ShardKey::new("v", shard), &m, r);
            prop_assert_eq!(p.len(), r.min(n));
            let mut q = p.clone();
            q.sort();
            q.dedup();
            prop_assert_eq!(q.len(), p.len());
        }

        /// Adding a node moves only shards that now live on it, about R/(N+1)
        /// of them; removing one moves only shards that lived on it.
        #[test]
        fn adding_or_removing_a_node_moves_only_its_share(n in 2usize..10, r in 1usize..4, seed in any::<u32>()) {
            let r = r.min(n);
            let old = members(n);
            let mut grown = old.clone();
            grown.push(Member::new(&format!("new-{seed}"), 1.0, None));
            let shards = 2000u64;
            let mut moved = 0u64;
            for s in 0..shards {
                let k = ShardKey::new(&format!("vol{seed}"), s);
                let a = place(&k, &old, r);
                let b = place(&k, &grown, r);
                if a != b {
                    moved += 1;
                    prop_assert!(b.contains(&grown[n].id), "shard {} moved without the new node: {:?} -> {:?}", s, a, b);
                    // the survivors keep their relative order
                    let kept: Vec<_> = b.iter().filter(|x| **x != grown[n].id).cloned().collect();
                    prop_assert_eq!(&kept[..], &a[..r - 1]);
                }
                // removal of node 0
                let shrunk: Vec<Member> = old[1..].to_vec();
                if !a.contains(&old[0].id) {
                    prop_assert_eq!(place(&k, &shrunk, r), a);
                }
            }
            let expect = r as f64 / (n + 1) as f64;
            let got = moved as f64 / shards as f64;
            prop_assert!((got - expect).abs() < 0.06, "moved {} expected {}", got, expect);
        }

        /// A member's share of homes (R = 1) follows its weight.
        #[test]
        fn share_follows_weight(ws in proptest::collection::vec(1u32..8, 2..6), seed in any::<u32>()) {
            let m: Vec<Member> = ws.iter().enumerate()
                .map(|(i, w)| Member::new(&format!("n{i}"), *w as f64, None)).collect();
            let total: f64 = ws.iter().map(|w| *w as f64).sum();
            let shards = 20_000u64;
            let mut count = vec![0u64; m.len()];
            for s in 0..shards {
                let p = place(&ShardKey::new(&format!("w{seed}"), s), &m, 1);
                count[m.iter().position(|x| x.id == p[0]).unwrap()] += 1;
            }
            for (i, c) in count.iter().enumerate() {
                let want = ws[i] as f64 / total;
                let got = *c as f64 / shards as f64;
                prop_assert!((got - want).abs() < 0.02, "node {} share {} want {}", i, got, want);
            }
        }
    }
}
