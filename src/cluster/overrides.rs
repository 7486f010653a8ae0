//! Shards living away from their computed home: a versioned map that merges
//! as a CRDT (last-writer-wins register per shard), so every node converges
//! on the same map whatever order gossip delivers records in.
//!
//! Contract:
//! - A record says "the current copies of this shard are on `replicas`",
//!   stamped with a [`Version`] (the writer's epoch and a sequence number).
//!   [`OverrideMap::merge`] keeps, per shard, the record with the highest
//!   version; equal versions carry equal content (one attacher, one
//!   sequence), so the merge is commutative, associative and idempotent.
//! - A shard with no record lives at its computed home; a record whose
//!   replicas equal the home is kept (it still orders later records).
//! - The text form (`encode`/`decode`) is what gossip carries as a node's
//!   key-value: `TERM.OWNER.SEQ:node,node`, or `TERM.OWNER.SEQ:node,node|node,node`
//!   for a record with a `joint` part (a volume's placement basis while its
//!   member configuration changes; see `attacher`).

use super::epoch::{Epoch, Version};
use super::placement::{NodeId, ShardKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideRecord {
    pub version: Version,
    pub replicas: Vec<NodeId>,
    /// Basis records only: the member configuration being left while the
    /// volume changes to `replicas` (joint consensus: quorums then need a
    /// majority of both). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joint: Vec<NodeId>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed override record {0:?}")]
pub struct OverrideParseError(pub String);

impl OverrideRecord {
    /// A record naming `replicas`, with no joint part.
    pub fn new(version: Version, replicas: Vec<NodeId>) -> OverrideRecord {
        OverrideRecord {
            version,
            replicas,
            joint: Vec::new(),
        }
    }

    pub fn encode(&self) -> String {
        let v = &self.version;
        let mut s = format!(
            "{}.{}.{}:{}",
            v.epoch.term,
            v.epoch.owner,
            v.seq,
            self.replicas.join(",")
        );
        if !self.joint.is_empty() {
            s.push('|');
            s.push_str(&self.joint.join(","));
        }
        s
    }

    pub fn decode(s: &str) -> Result<OverrideRecord, OverrideParseError> {
        let bad = || OverrideParseError(s.to_string());
        let (ver, rest) = s.split_once(':').ok_or_else(bad)?;
        let mut it = ver.split('.').map(|x| x.parse::<u64>());
        let mut next = || it.next().and_then(Result::ok).ok_or_else(bad);
        let (term, owner, seq) = (next()?, next()?, next()?);
        let (reps, joint) = match rest.split_once('|') {
            Some((r, j)) if !j.is_empty() => (r, j),
            Some(_) => return Err(bad()),
            None => (rest, ""),
        };
        let list = |x: &str| -> Result<Vec<NodeId>, OverrideParseError> {
            let v: Vec<NodeId> = if x.is_empty() {
                Vec::new()
            } else {
                x.split(',').map(str::to_string).collect()
            };
            if v.iter().any(|r| r.is_empty() || r.contains('|')) {
                return Err(bad());
            }
            Ok(v)
        };
        Ok(OverrideRecord {
            version: Version {
                epoch: Epoch { term, owner },
                seq,
            },
            replicas: list(reps)?,
            joint: list(joint)?,
        })
    }
}

/// The override map of the whole cluster (or of one volume). Serialised as
/// a list of `(key, record)` pairs (JSON maps need string keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    into = "Vec<(ShardKey, OverrideRecord)>",
    from = "Vec<(ShardKey, OverrideRecord)>"
)]
pub struct OverrideMap {
    map: BTreeMap<ShardKey, OverrideRecord>,
}

impl From<OverrideMap> for Vec<(ShardKey, OverrideRecord)> {
    fn from(m: OverrideMap) -> Self {
        m.map.into_iter().collect()
    }
}

impl From<Vec<(ShardKey, OverrideRecord)>> for OverrideMap {
    fn from(v: Vec<(ShardKey, OverrideRecord)>) -> Self {
        let mut m = OverrideMap::new();
        for (k, r) in v {
            m.merge(&k, &r);
        }
        m
    }
}

impl OverrideMap {
    pub fn new() -> OverrideMap {
        OverrideMap::default()
    }
    pub fn get(&self, key: &ShardKey) -> Option<&OverrideRecord> {
        self.map.get(key)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&ShardKey, &OverrideRecord)> {
        self.map.iter()
    }
    /// Records of one volume.
    pub fn of_volume<'a>(
        &'a self,
        volume: &'a str,
    ) -> impl Iterator<Item = (&'a ShardKey, &'a OverrideRecord)> + 'a {
        self.map.iter().filter(move |(k, _)| k.volume == volume)
    }

    /// Keep `rec` if it is newer than what is held; true when it changed the map.
    pub fn merge(&mut self, key: &ShardKey, rec: &OverrideRecord) -> bool {
        match self.map.get(key) {
            Some(old) if old.version >= rec.version => false,
            _ => {
                self.map.insert(key.clone(), rec.clone());
                true
            }
        }
    }

    /// Forget `volume`'s records older than epoch `floor` (a snapshot at
    /// `floor` replaces them); returns how many went.
    pub fn drop_older(&mut self, volume: &str, floor: Epoch) -> usize {
        let before = self.map.len();
        self.map
            .retain(|k, r| k.volume != volume || r.version.epoch >= floor);
        before - self.map.len()
    }

    /// Merge every record of `other`; returns how many changed this map.
    pub fn merge_all(&mut self, other: &OverrideMap) -> usize {
        other.map.iter().filter(|(k, r)| self.merge(k, r)).count()
    }

    /// The current copies of `key`: its record, else `home()`.
    pub fn replicas_or(&self, key: &ShardKey, home: impl FnOnce() -> Vec<NodeId>) -> Vec<NodeId> {
        match self.map.get(key) {
            Some(r) => r.replicas.clone(),
            None => home(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(term: u64, seq: u64, reps: &[&str]) -> OverrideRecord {
        OverrideRecord {
            version: Version {
                epoch: Epoch { term, owner: 7 },
                seq,
            },
            replicas: reps.iter().map(|s| s.to_string()).collect(),
            joint: Vec::new(),
        }
    }

    #[test]
    fn text_form_round_trips_and_rejects_garbage() {
        let r = rec(3, 9, &["a", "b"]);
        assert_eq!(OverrideRecord::decode(&r.encode()).unwrap(), r);
        let e = rec(1, 1, &[]);
        assert_eq!(OverrideRecord::decode(&e.encode()).unwrap(), e);
        let mut j = rec(4, 2, &["a", "b", "c"]);
        j.joint = vec!["a".into(), "d".into()];
        assert_eq!(j.encode(), "4.7.2:a,b,c|a,d");
        assert_eq!(OverrideRecord::decode(&j.encode()).unwrap(), j);
        for bad in [
            "",
            "1.2:a",
            "x.1.2:a",
            "1.2.3",
            "1.2.3:a,,b",
            "1.2.3:a|",
            "1.2.3:a|b|c",
        ] {
            assert!(OverrideRecord::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn newer_wins_older_is_ignored() {
        let k = ShardKey::new("v", 1);
        let mut m = OverrideMap::new();
        assert!(m.merge(&k, &rec(1, 2, &["a"])));
        assert!(!m.merge(&k, &rec(1, 1, &["b"])));
        assert!(!m.merge(&k, &rec(1, 2, &["a"])));
        assert!(m.merge(&k, &rec(2, 1, &["c"])));
        assert_eq!(m.replicas_or(&k, Vec::new), vec!["c".to_string()]);
        assert_eq!(
            m.replicas_or(&ShardKey::new("v", 2), || vec!["h".into()]),
            vec!["h".to_string()]
        );
    }

    proptest! {
        /// Any delivery order of any subset of records, merged in any
        /// grouping, converges to the same map.
        #[test]
        fn merge_converges_in_any_order(
            recs in proptest::collection::vec((0u64..4, 0u64..3, 0u64..5), 1..40),
            perm_seed in any::<u64>(),
        ) {
            // one record per (shard, version) as a real attacher emits them
            let items: Vec<(ShardKey, OverrideRecord)> = recs.iter().map(|&(s, t, q)| {
                (ShardKey::new("v", s), rec(t, q, &[&format!("n{}", (s + t + q) % 5)]))
            }).collect();
            let mut a = OverrideMap::new();
            for (k, r) in &items { a.merge(k, r); }
            let mut shuffled = items.clone();
            let mut x = perm_seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            // two replicas each get half, then exchange
            let (h1, h2) = shuffled.split_at(shuffled.len() / 2);
            let mut b = OverrideMap::new();
            let mut c = OverrideMap::new();
            for (k, r) in h1 { b.merge(k, r); }
            for (k, r) in h2 { c.merge(k, r); }
            let mut bc = b.clone();
            bc.merge_all(&c);
            c.merge_all(&b);
            prop_assert_eq!(&bc, &a);
            prop_assert_eq!(&c, &a);
            // idempotent
            prop_assert_eq!(bc.merge_all(&a), 0);
        }
    }
}
