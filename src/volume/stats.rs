//! Per-slot access statistics that drive promotion, demotion, split and merge.
//!
//! Contract:
//! - One `AtomicU64` per slot, in lazily allocated leaves (a thin 64 TiB
//!   volume costs only the directory until touched). The I/O path records an
//!   access with one `fetch_update` on that word and never blocks.
//! - A word holds: reads in the current window (bits 0..32, saturating),
//!   the sixteenths of the slot touched in the window (bits 32..48), and the
//!   window number of the last access, modulo 2^16 (bits 48..64).
//! - The manager thread closes a window with [`AccessStats::close_window`],
//!   which hands every touched slot's window figures to a callback and clears
//!   them; the last-access window survives, for least-recently-used demotion.
//! - A leaf is allocated on the first access to its range (rare: once per
//!   `TABLE_LEAF_ENTRIES` slots); that is the only allocation here.

use crate::constants::{TABLE_LEAF_ENTRIES, VOLUME_SIZE_MAX_BYTES};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

const READS_MASK: u64 = 0xFFFF_FFFF;
const TOUCHED_SHIFT: u32 = 32;
const LAST_SHIFT: u32 = 48;
const WINDOW_FIELDS_MASK: u64 = (1 << LAST_SHIFT) - 1;

type Leaf = [AtomicU64; TABLE_LEAF_ENTRIES];

/// What one slot did in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotWindow {
    pub reads: u32,
    /// Bit i set: sixteenth i of the slot was accessed.
    pub touched: u16,
    /// Window number (mod 2^16) of the last access.
    pub last_window: u16,
}

impl SlotWindow {
    fn from_word(w: u64) -> Self {
        SlotWindow {
            reads: (w & READS_MASK) as u32,
            touched: (w >> TOUCHED_SHIFT) as u16,
            last_window: (w >> LAST_SHIFT) as u16,
        }
    }
    pub fn touched_sixteenths(&self) -> u32 {
        self.touched.count_ones()
    }
}

pub struct AccessStats {
    shard_size: u64,
    dir: Box<[AtomicPtr<Leaf>]>,
    window: AtomicU64,
}

impl AccessStats {
    pub fn new(shard_size: u64) -> Self {
        let max_slots = (VOLUME_SIZE_MAX_BYTES / shard_size) as usize;
        let dir = (0..max_slots.div_ceil(TABLE_LEAF_ENTRIES))
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect();
        AccessStats {
            shard_size,
            dir,
            window: AtomicU64::new(0),
        }
    }

    /// The current window number.
    pub fn window(&self) -> u64 {
        self.window.load(Ordering::Relaxed)
    }

    fn leaf(&self, slot: u64) -> &Leaf {
        let d = &self.dir[slot as usize / TABLE_LEAF_ENTRIES];
        let mut p = d.load(Ordering::Acquire);
        if p.is_null() {
            let fresh: Box<Leaf> = Box::new(std::array::from_fn(|_| AtomicU64::new(0)));
            let raw = Box::into_raw(fresh);
            match d.compare_exchange(
                std::ptr::null_mut(),
                raw,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => p = raw,
                Err(winner) => {
                    // SAFETY: `raw` came from Box::into_raw above and was never published.
                    drop(unsafe { Box::from_raw(raw) });
                    p = winner;
                }
            }
        }
        // SAFETY: leaves are published once and freed only in Drop (&mut self).
        unsafe { &*p }
    }

    fn peek_leaf(&self, leaf_index: usize) -> Option<&Leaf> {
        let p = self.dir[leaf_index].load(Ordering::Acquire);
        // SAFETY: as in `leaf`.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Record an access of `len` bytes at `offset_in_slot` of `slot`.
    pub fn record(&self, slot: u64, offset_in_slot: u64, len: u64, is_read: bool) {
        let sixteenth = self.shard_size / 16;
        let first = offset_in_slot / sixteenth;
        let last = (offset_in_slot + len.max(1) - 1) / sixteenth;
        let bits: u64 = ((1u64 << (last - first + 1)) - 1) << first;
        let win = self.window() & 0xFFFF;
        let word = &self.leaf(slot)[slot as usize % TABLE_LEAF_ENTRIES];
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            let reads = (w & READS_MASK) + u64::from(is_read);
            let reads = reads.min(READS_MASK);
            let touched = ((w >> TOUCHED_SHIFT) & 0xFFFF) | bits;
            Some(reads | (touched << TOUCHED_SHIFT) | (win << LAST_SHIFT))
        });
    }

    /// Figures of one slot in the current window (without clearing them).
    pub fn peek(&self, slot: u64) -> SlotWindow {
        self.peek_leaf(slot as usize / TABLE_LEAF_ENTRIES)
            .map(|l| {
                SlotWindow::from_word(l[slot as usize % TABLE_LEAF_ENTRIES].load(Ordering::Relaxed))
            })
            .unwrap_or(SlotWindow {
                reads: 0,
                touched: 0,
                last_window: 0,
            })
    }

    /// Close the current window: call `f(slot, figures)` for every slot
    /// accessed at least once in it, clear the window fields, advance the window.
    pub fn close_window(&self, mut f: impl FnMut(u64, SlotWindow)) {
        for li in 0..self.dir.len() {
            let Some(leaf) = self.peek_leaf(li) else {
                continue;
            };
            for (i, word) in leaf.iter().enumerate() {
                if word.load(Ordering::Relaxed) & WINDOW_FIELDS_MASK == 0 {
                    continue;
                }
                let old = word.fetch_and(!WINDOW_FIELDS_MASK, Ordering::Relaxed);
                f(
                    (li * TABLE_LEAF_ENTRIES + i) as u64,
                    SlotWindow::from_word(old),
                );
            }
        }
        self.window.fetch_add(1, Ordering::Relaxed);
    }

    /// How many windows ago (mod 2^16) a slot was last accessed.
    pub fn age(&self, last_window: u16) -> u16 {
        (self.window() as u16).wrapping_sub(last_window)
    }

    /// Leaves allocated so far (memory accounting and tests).
    pub fn leaves_allocated(&self) -> usize {
        (0..self.dir.len())
            .filter(|&i| self.peek_leaf(i).is_some())
            .count()
    }
}

impl Drop for AccessStats {
    fn drop(&mut self) {
        for d in self.dir.iter() {
            let p = d.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: every non-null pointer was produced by Box::into_raw in `leaf`
                // and is dropped exactly once here, with no other reference alive (&mut self).
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reads_and_touched_sixteenths_per_window() {
        let s = AccessStats::new(1 << 20);
        s.record(7, 0, 4096, true);
        s.record(7, 65536 * 3, 65536 * 2, true);
        s.record(7, 1 << 19, 4096, false);
        let w = s.peek(7);
        assert_eq!(w.reads, 2);
        assert_eq!(w.touched, 0b1_0001_1001);
        assert_eq!(w.touched_sixteenths(), 4);
        let mut seen = Vec::new();
        s.close_window(|slot, w| seen.push((slot, w.reads)));
        assert_eq!(seen, vec![(7, 2)]);
        assert_eq!(s.peek(7).reads, 0);
        assert_eq!(s.age(s.peek(7).last_window), 1);
        let mut again = 0;
        s.close_window(|_, _| again += 1);
        assert_eq!(again, 0, "a slot not accessed in a window is not reported");
    }

    #[test]
    fn thin_volume_allocates_leaves_only_where_touched() {
        let s = AccessStats::new(64 * 1024);
        assert_eq!(s.leaves_allocated(), 0);
        s.record(0, 0, 4096, true);
        s.record(1 << 30, 0, 4096, true);
        assert_eq!(s.leaves_allocated(), 2);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let s = AccessStats::new(1 << 20);
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| (0..10_000).for_each(|_| s.record(3, 0, 4096, true)));
            }
        });
        assert_eq!(s.peek(3).reads, 20_000);
    }
}
