//! Fencing epochs and data versions: the total orders every replica uses to
//! refuse a stale attacher and to keep the newest copy of a block.
//!
//! Contract:
//! - An [`Epoch`] is `(term, owner)`: an attacher takes `term` one above the
//!   highest it has seen and stamps its own node hash as `owner`, so two
//!   attachers never hold the same epoch. Ordered by term, then owner.
//! - A [`Version`] is `(epoch, seq)`: the attacher numbers its writes `seq`
//!   = 1, 2, ... within its epoch, so a newer attacher's writes order after
//!   every write of an older one. `Version::ZERO` is "never written".

use super::hash::hash_bytes;
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
    /// The epoch `node` takes after having seen `seen`.
    pub fn next(seen: Epoch, node: &str) -> Epoch {
        Epoch {
            term: seen.term + 1,
            owner: hash_bytes(node.as_bytes()),
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
        let a = Epoch::next(Epoch::ZERO, "a");
        let b = Epoch::next(a, "b");
        assert!(b > a);
        let late_a = Version {
            epoch: a,
            seq: 1_000,
        };
        let early_b = Version { epoch: b, seq: 1 };
        assert!(early_b > late_a);
        assert!(Version::ZERO < late_a);
        // two nodes taking the same term never collide
        assert_ne!(Epoch::next(a, "x"), Epoch::next(a, "y"));
    }
}
