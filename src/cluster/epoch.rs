//! Fencing epochs and data versions: the total orders every replica uses to
//! refuse a stale attacher and to keep the newest copy of a block.
//!
//! Contract:
//! - An [`Epoch`] is `(term, owner)`: an attacher takes `term` one above the
//!   highest it has seen and stamps a hash of its node and its incarnation
//!   (distinct for every attacher a node starts) as `owner`, so two
//!   attachers never hold the same epoch (a restarted attacher that took
//!   the same term as its predecessor would otherwise reuse its versions).
//!   Ordered by term, then owner.
//! - A [`Version`] is `(epoch, seq)`: the attacher numbers its writes `seq`
//!   = 1, 2, ... within its epoch, so a newer attacher's writes order after
//!   every write of an older one. `Version::ZERO` is "never written".

use super::hash::{combine, hash_bytes};
use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Epoch {
    pub term: u64,
    pub owner: u64,
}

impl Epoch {
    pub const ZERO: Epoch = Epoch { term: 0, owner: 0 };
    /// The epoch attacher `incarnation` on `node` takes after having seen `seen`.
    pub fn next(seen: Epoch, node: &str, incarnation: u64) -> Epoch {
        Epoch {
            term: seen.term + 1,
            owner: combine(hash_bytes(node.as_bytes()), incarnation),
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Version {
    pub epoch: Epoch,
    pub seq: u64,
}

impl Version {
    pub const ZERO: Version = Version {
        epoch: Epoch::ZERO,
        seq: 0,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_attacher_orders_after() {
        let a = Epoch::next(Epoch::ZERO, "a", 1);
        let b = Epoch::next(a, "b", 1);
        assert!(b > a);
        let late_a = Version {
            epoch: a,
            seq: 1_000,
        };
        let early_b = Version { epoch: b, seq: 1 };
        assert!(early_b > late_a);
        assert!(Version::ZERO < late_a);
        // two nodes, or two attachers of one node, taking the same term
        // never collide
        assert_ne!(Epoch::next(a, "x", 1), Epoch::next(a, "y", 1));
        assert_ne!(Epoch::next(a, "x", 1), Epoch::next(a, "x", 2));
    }
}
