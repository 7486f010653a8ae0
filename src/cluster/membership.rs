//! Membership and failure detection as a plain state machine fed by gossip:
//! what the simulator runs in place of chitchat (the real node uses chitchat,
//! whose view is turned into the same "who is live" answer).
//!
//! Contract:
//! - Each node publishes a heartbeat `(generation, counter)`: the counter
//!   rises every tick, the generation at every restart, so a restarted node's
//!   heartbeat orders after everything it sent before.
//! - [`Membership::merge`] keeps the highest heartbeat per node and notes
//!   when it last rose (on the observer's clock). A peer is live while its
//!   heartbeat rose less than `fail_after_ms` ago; a node is always live to
//!   itself; a configured peer never heard from counts from the observer's
//!   start.
//! - Time is a number of milliseconds passed in; nothing here reads a clock.

use super::placement::NodeId;
use std::collections::BTreeMap;

/// A heartbeat: `(generation, counter)`, ordered lexicographically.
pub type Heartbeat = (u64, u64);

#[derive(Debug, Clone)]
struct Peer {
    heartbeat: Heartbeat,
    rose_at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    generation: u64,
    counter: u64,
    fail_after_ms: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl Membership {
    /// A node `me` (restart number `generation`) that knows of `peers`, at `now_ms`.
    pub fn new(
        me: &str,
        generation: u64,
        peers: &[NodeId],
        fail_after_ms: u64,
        now_ms: u64,
    ) -> Membership {
        let peers = peers
            .iter()
            .filter(|p| p.as_str() != me)
            .map(|p| {
                (
                    p.clone(),
                    Peer {
                        heartbeat: (0, 0),
                        rose_at_ms: now_ms,
                    },
                )
            })
            .collect();
        Membership {
            me: me.to_string(),
            generation,
            counter: 0,
            fail_after_ms,
            peers,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Advance this node's own heartbeat (once per gossip round).
    pub fn tick(&mut self) {
        self.counter += 1;
    }

    /// Every heartbeat known, this node's own included (what gossip sends).
    pub fn digest(&self) -> Vec<(NodeId, Heartbeat)> {
        let mut d: Vec<(NodeId, Heartbeat)> = self
            .peers
            .iter()
            .map(|(id, p)| (id.clone(), p.heartbeat))
            .collect();
        d.push((self.me.clone(), (self.generation, self.counter)));
        d
    }

    /// Merge a peer's digest received at `now_ms`.
    pub fn merge(&mut self, digest: &[(NodeId, Heartbeat)], now_ms: u64) {
        for (id, hb) in digest {
            if *id == self.me {
                continue;
            }
            let p = self.peers.entry(id.clone()).or_insert(Peer {
                heartbeat: (0, 0),
                rose_at_ms: now_ms,
            });
            if *hb > p.heartbeat {
                p.heartbeat = *hb;
                p.rose_at_ms = now_ms;
            }
        }
    }

    pub fn is_live(&self, id: &str, now_ms: u64) -> bool {
        if id == self.me {
            return true;
        }
        self.peers
            .get(id)
            .is_some_and(|p| now_ms.saturating_sub(p.rose_at_ms) < self.fail_after_ms)
    }

    /// Live nodes, this one included, sorted.
    pub fn live(&self, now_ms: u64) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|id| self.is_live(id, now_ms))
            .cloned()
            .collect();
        v.push(self.me.clone());
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn silent_peer_dies_and_comes_back_after_restart() {
        let all = ids(3);
        let mut a = Membership::new("n0", 0, &all, 1000, 0);
        let mut b = Membership::new("n1", 0, &all, 1000, 0);
        assert_eq!(a.live(500), all);
        for t in 1..=10 {
            b.tick();
            a.merge(&b.digest(), t * 100);
        }
        assert!(a.is_live("n1", 1500));
        assert!(!a.is_live("n2", 1500), "n2 never spoke");
        assert!(!a.is_live("n1", 2000), "n1 silent for 1 s");
        // restart: a new generation with a lower counter still counts as news
        let mut b2 = Membership::new("n1", 1, &all, 1000, 2000);
        b2.tick();
        a.merge(&b2.digest(), 2100);
        assert!(a.is_live("n1", 2100));
        // an old heartbeat relayed late is not news
        a.merge(&[("n1".to_string(), (0, 99))], 2900);
        assert!(!a.is_live("n1", 3100));
    }

    #[test]
    fn heartbeats_travel_through_a_third_node() {
        let all = ids(3);
        let mut a = Membership::new("n0", 0, &all, 1000, 0);
        let mut b = Membership::new("n1", 0, &all, 1000, 0);
        let mut c = Membership::new("n2", 0, &all, 1000, 0);
        for t in 1..=20 {
            c.tick();
            b.merge(&c.digest(), t * 100);
            a.merge(&b.digest(), t * 100);
        }
        assert!(a.is_live("n2", 2000), "n0 hears of n2 only via n1");
    }
}
