//! Extent allocator for one tier device: a binary buddy system over units.
//!
//! Contract:
//! - The device's extent area holds `n_units` units of `UNIT_SIZE_BYTES`.
//!   An extent is `2^order` contiguous units whose first unit is a multiple of
//!   `2^order` (orders 0 ..= `ORDER_MAX`, 64 KiB ..= 64 MiB).
//! - `alloc(order)` returns the first unit of a free extent or `None` when no
//!   free block that large exists (the caller reports ENOSPC or tries another
//!   tier). `free_units(first, n)` returns any run of units, also parts of a
//!   larger extent (a split shard's children are freed one by one); freed
//!   buddies coalesce.
//! - The allocator is not persisted. At open it is rebuilt from the
//!   mappings with [`BuddyAllocator::with_used`]: every unit a mapping names is
//!   used, all others free.
//! - It is a plain state machine; the pool wraps each one in a short mutex
//!   (allocation happens when a shard is first mapped or migrated, never per
//!   read or per overwrite).
//! - Invariant (checked by `check` in tests): free blocks never overlap, are
//!   aligned to their order, and free + used units = `n_units`.

use crate::constants::{SHARD_SIZE_MAX_BYTES, UNIT_SIZE_BYTES};
use std::collections::BTreeSet;

/// Largest order: one maximum-size shard.
pub const ORDER_MAX: u32 = (SHARD_SIZE_MAX_BYTES / UNIT_SIZE_BYTES).trailing_zeros();
const ORDERS: usize = ORDER_MAX as usize + 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("unit range {first}+{n} is outside the device ({n_units} units)")]
    OutOfRange { first: u64, n: u64, n_units: u64 },
    #[error("unit {unit} is freed twice or was never allocated")]
    DoubleFree { unit: u64 },
}

#[derive(Debug, Clone)]
pub struct BuddyAllocator {
    n_units: u64,
    free_units: u64,
    /// Free blocks by order, keyed by first unit.
    free: [BTreeSet<u64>; ORDERS],
}

impl BuddyAllocator {
    /// An allocator whose every unit is free.
    pub fn new(n_units: u64) -> Self {
        let mut a = BuddyAllocator {
            n_units,
            free_units: 0,
            free: Default::default(),
        };
        a.insert_free_range(0, n_units);
        a
    }

    /// An allocator where the given unit runs are used and the rest free.
    /// Overlapping or out-of-range runs are errors (a corrupt map).
    pub fn with_used(
        n_units: u64,
        used: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Self, AllocError> {
        let mut runs: Vec<(u64, u64)> = used.into_iter().filter(|r| r.1 > 0).collect();
        runs.sort_unstable();
        let mut a = BuddyAllocator {
            n_units,
            free_units: 0,
            free: Default::default(),
        };
        let mut cursor = 0u64;
        for (first, n) in runs {
            let end = first.checked_add(n).filter(|&e| e <= n_units);
            let end = end.ok_or(AllocError::OutOfRange { first, n, n_units })?;
            if first < cursor {
                return Err(AllocError::DoubleFree { unit: first });
            }
            a.insert_free_range(cursor, first);
            cursor = end;
        }
        a.insert_free_range(cursor, n_units);
        Ok(a)
    }

    pub fn n_units(&self) -> u64 {
        self.n_units
    }
    pub fn free_units(&self) -> u64 {
        self.free_units
    }
    pub fn used_units(&self) -> u64 {
        self.n_units - self.free_units
    }

    /// Order of an extent of `units` units (which must be a power of two).
    pub fn order_of(units: u64) -> u32 {
        debug_assert!(units.is_power_of_two());
        units.trailing_zeros()
    }

    /// Allocate `2^order` aligned contiguous units.
    pub fn alloc(&mut self, order: u32) -> Option<u64> {
        assert!(order <= ORDER_MAX, "order {order} above {ORDER_MAX}");
        let from = (order as usize..ORDERS).find(|&o| !self.free[o].is_empty())?;
        let first = *self.free[from].iter().next().expect("non-empty");
        self.free[from].remove(&first);
        // Split down, returning upper halves to the free lists.
        for o in (order as usize..from).rev() {
            self.free[o].insert(first + (1u64 << o));
        }
        self.free_units -= 1u64 << order;
        Some(first)
    }

    /// Free `n` units starting at `first` (any run, any alignment).
    pub fn free_units_run(&mut self, first: u64, n: u64) -> Result<(), AllocError> {
        let end = first.checked_add(n).filter(|&e| e <= self.n_units);
        end.ok_or(AllocError::OutOfRange {
            first,
            n,
            n_units: self.n_units,
        })?;
        for u in first..first + n {
            if self.is_free(u) {
                return Err(AllocError::DoubleFree { unit: u });
            }
        }
        self.insert_free_range(first, first + n);
        Ok(())
    }

    /// Is this unit inside some free block?
    pub fn is_free(&self, unit: u64) -> bool {
        (0..ORDERS).any(|o| {
            let head = unit & !((1u64 << o) - 1);
            self.free[o].contains(&head)
        })
    }

    /// Insert [start, end) as free, in maximal aligned blocks, coalescing.
    fn insert_free_range(&mut self, mut start: u64, end: u64) {
        while start < end {
            let mut o = (start.trailing_zeros().min(ORDER_MAX)) as usize;
            while start + (1u64 << o) > end {
                o -= 1;
            }
            self.insert_block(start, o);
            start += 1u64 << o;
        }
    }

    fn insert_block(&mut self, mut first: u64, mut o: usize) {
        self.free_units += 1u64 << o;
        while o < ORDER_MAX as usize {
            let buddy = first ^ (1u64 << o);
            if !self.free[o].remove(&buddy) {
                break;
            }
            first = first.min(buddy);
            o += 1;
        }
        self.free[o].insert(first);
    }

    /// Verify the invariants; returns a description of the first violation.
    pub fn check(&self) -> Result<(), String> {
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        for (o, set) in self.free.iter().enumerate() {
            for &f in set {
                if f % (1u64 << o) != 0 {
                    return Err(format!("block {f} misaligned for order {o}"));
                }
                blocks.push((f, 1u64 << o));
            }
        }
        blocks.sort_unstable();
        let mut total = 0;
        for w in blocks.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(format!("free blocks {:?} and {:?} overlap", w[0], w[1]));
            }
        }
        for &(f, n) in &blocks {
            if f + n > self.n_units {
                return Err(format!("free block {f}+{n} beyond {}", self.n_units));
            }
            total += n;
        }
        if total != self.free_units {
            return Err(format!(
                "free count {} but blocks hold {total}",
                self.free_units
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fresh_allocator_is_all_free_and_aligned() {
        let a = BuddyAllocator::new(3000);
        assert_eq!(a.free_units(), 3000);
        a.check().unwrap();
    }

    #[test]
    fn alloc_returns_aligned_disjoint_extents_until_full() {
        let mut a = BuddyAllocator::new(64);
        let mut got = Vec::new();
        while let Some(f) = a.alloc(2) {
            assert_eq!(f % 4, 0);
            got.push(f);
        }
        assert_eq!(got.len(), 16);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 16);
        assert_eq!(a.free_units(), 0);
        assert_eq!(a.alloc(0), None);
    }

    #[test]
    fn freeing_parts_of_an_extent_coalesces_back() {
        let mut a = BuddyAllocator::new(1024);
        let f = a.alloc(4).unwrap();
        for u in 0..16 {
            a.free_units_run(f + u, 1).unwrap();
        }
        a.check().unwrap();
        assert_eq!(a.free_units(), 1024);
        assert_eq!(a.alloc(ORDER_MAX), Some(0));
    }

    #[test]
    fn double_free_is_refused() {
        let mut a = BuddyAllocator::new(16);
        let f = a.alloc(0).unwrap();
        a.free_units_run(f, 1).unwrap();
        assert_eq!(
            a.free_units_run(f, 1),
            Err(AllocError::DoubleFree { unit: f })
        );
        assert!(matches!(
            a.free_units_run(15, 2),
            Err(AllocError::OutOfRange { .. })
        ));
    }

    #[test]
    fn rebuild_from_used_runs() {
        let a = BuddyAllocator::with_used(100, [(0, 16), (40, 1), (64, 32)]).unwrap();
        a.check().unwrap();
        assert_eq!(a.used_units(), 49);
        assert!(!a.is_free(40) && a.is_free(41) && !a.is_free(95) && a.is_free(96));
        assert!(BuddyAllocator::with_used(100, [(0, 16), (8, 1)]).is_err());
        assert!(BuddyAllocator::with_used(100, [(90, 16)]).is_err());
    }

    proptest! {
        #[test]
        fn random_alloc_free_keeps_invariants(n_units in 1u64..5000, ops in proptest::collection::vec((0u32..=ORDER_MAX, any::<bool>(), any::<u16>()), 1..300)) {
            let mut a = BuddyAllocator::new(n_units);
            let mut owned: Vec<(u64, u64)> = Vec::new();
            for (order, do_alloc, pick) in ops {
                if do_alloc || owned.is_empty() {
                    if let Some(f) = a.alloc(order) {
                        let n = 1u64 << order;
                        prop_assert!(f + n <= n_units);
                        for &(g, m) in &owned {
                            prop_assert!(f + n <= g || g + m <= f, "overlap {f}+{n} with {g}+{m}");
                        }
                        owned.push((f, n));
                    }
                } else {
                    let (f, n) = owned.swap_remove(pick as usize % owned.len());
                    // Free in two halves to exercise partial frees.
                    let h = n / 2;
                    if h > 0 {
                        a.free_units_run(f + h, n - h).unwrap();
                        a.free_units_run(f, h).unwrap();
                    } else {
                        a.free_units_run(f, n).unwrap();
                    }
                }
                prop_assert_eq!(a.check(), Ok(()));
                prop_assert_eq!(a.used_units(), owned.iter().map(|r| r.1).sum::<u64>());
            }
            let rebuilt = BuddyAllocator::with_used(n_units, owned.iter().copied()).unwrap();
            prop_assert_eq!(rebuilt.free_units(), a.free_units());
        }
    }
}
