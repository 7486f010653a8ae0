//! The lock-free LBA→shard table of one volume (`kernel-notes/engine.md`,
//! "The LBA→shard table").
//!
//! Owns: the two-level directory of lazily allocated leaves of `u64` slot
//! entries, the [`Entry`] encoding, split nodes and their reclamation through
//! `crossbeam-epoch`, and the atomic protocols on entries (read, write enter /
//! exit, map, migrate, unmap, split, merge). Pure: no I/O, no clock, no
//! allocation on the read or write path (leaves and split nodes are allocated
//! only by map and split).
//!
//! Contract:
//! - Slot `i` covers logical bytes `[i*S, (i+1)*S)` for the shard size `S`;
//!   every call naming a slot at or beyond [`ShardTable::slots`] is rejected
//!   with [`TableError::OutOfRange`].
//! - A caller that dereferences anything it loaded (a split node, or the
//!   extent an entry names) holds a `crossbeam_epoch::Guard` pinned *before*
//!   the load for as long as it uses it. Split nodes are freed only through
//!   the epoch after a merge; the Shard Manager returns extents to its
//!   allocator the same way, so a reader never reads a reused extent.
//! - A write is bracketed by [`ShardTable::writer_enter`] (writers += 1, sets
//!   DIRTY) and the drop of the returned [`WriteTicket`] (writers -= 1). A
//!   migration switch ([`ShardTable::finish_migrate`]) succeeds only if no
//!   write was in flight or entered since the copy began, so no acknowledged
//!   write is lost by a migration. Writes never wait for a migration.
//! - Split children are addressed by [`Loc`]: a slot, and for a child its
//!   index *of* a child count ([`ChildRef`]), i.e. one exact logical range;
//!   if the slot is no longer split that way the call fails with
//!   [`TableError::Reshaped`] instead of touching another range. An unmapped
//!   child is mapped by [`ShardTable::try_map_at`] (CAS `0 -> entry` on the
//!   child, the loser gets the winner) exactly like a slot; a slot-level
//!   [`ShardTable::try_map`] on a split slot fails with
//!   [`TableError::IsSplit`].
//! - The migration protocol, step by step (the migrator's loop): `old =
//!   begin_migrate(loc)`; copy `old`'s extent; `finish_migrate(loc, old,
//!   new)`; on `Dirty` / `WritersInFlight`: `clear_dirty(loc, old)` (it fails with
//!   `WritersInFlight` until no write is in flight: yield and retry) and copy again, up to
//!   `MIGRATE_RETRIES_MAX`; then `abort_migrate`. DIRTY is cleared only when
//!   no write is in flight, so a successful switch proves that every write
//!   that entered before the last clear had completed before the copy began
//!   and none entered after.
//!
//! Additions to the encoding of engine.md (bits that were unused there):
//! - bit 56 `FROZEN` (child entries only): the node is being merged or has
//!   been merged away. While a merge freezes the children (a few atomics),
//!   writers and other mutators of that child back off and re-read the
//!   parent; readers are unaffected (the physical location does not change by
//!   a merge). Children of a merged (retired) node stay frozen forever, so a
//!   late CAS on a retired node can never succeed.
//! - A split slot entry is `SPLIT | (k << 48) | pointer` with `MAPPED`
//!   clear: bits 0..48 point at the node, which is just its `2^k` child
//!   entries (one allocation), and bits 48..52 hold `k`.
//! - Merge also collapses a split slot whose children are *all unmapped* back
//!   to an unmapped slot (a discard of every child frees the node).
//! - A slot may be split while unmapped (all children unmapped), so a slot can
//!   be thinly mapped at child granularity.
//!
//! The writer count has [`TABLE_SLOT_WRITERS_MAX`] values; a
//! [`ShardTable::writer_enter`] that finds it full returns
//! [`WriteEnter::Saturated`] instead of spinning, because the caller may be a
//! single polling thread that itself holds the tickets that must drop first:
//! it retries the request after reaping a completion.

use crate::constants::{
    BLOCK_SIZE_BYTES, SHARD_SIZE_MAX_BYTES, SHARD_SIZE_MIN_BYTES, TABLE_LEAF_ENTRIES,
    TABLE_SLOT_WRITERS_MAX, TIERS_MAX, UNIT_SIZE_BYTES, VOLUME_SIZE_MAX_BYTES,
};
use crossbeam_epoch::Guard;
use crossbeam_utils::Backoff;
use std::fmt;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// log2 of [`UNIT_SIZE_BYTES`].
pub const UNIT_LOG2: u32 = UNIT_SIZE_BYTES.trailing_zeros();
/// Largest `size_log2` of an extent (a shard of [`SHARD_SIZE_MAX_BYTES`]).
pub const SIZE_LOG2_MAX: u32 = (SHARD_SIZE_MAX_BYTES / UNIT_SIZE_BYTES).trailing_zeros();
const LEAF_LOG2: u32 = TABLE_LEAF_ENTRIES.trailing_zeros();

// --- entry encoding ---
const FIRST_UNIT_SHIFT: u32 = 0;
const FIRST_UNIT_BITS: u32 = 40;
const TIER_SHIFT: u32 = 40;
const TIER_BITS: u32 = 2;
const SIZE_SHIFT: u32 = 42;
const SIZE_BITS: u32 = 4;
const WRITERS_SHIFT: u32 = 46;
const WRITERS_BITS: u32 = 8;
const DIRTY_BIT: u32 = 54;
const MIGRATING_BIT: u32 = 55;
const FROZEN_BIT: u32 = 56;
const SPLIT_BIT: u32 = 62;
const MAPPED_BIT: u32 = 63;
const PTR_BITS: u32 = 48;
/// In a split entry: log2 of the number of children.
const SPLIT_LOG2_SHIFT: u32 = 48;
const SPLIT_LOG2_BITS: u32 = 4;

const fn mask(shift: u32, bits: u32) -> u64 {
    ((1u64 << bits) - 1) << shift
}
const FIRST_UNIT_MASK: u64 = mask(FIRST_UNIT_SHIFT, FIRST_UNIT_BITS);
const TIER_MASK: u64 = mask(TIER_SHIFT, TIER_BITS);
const SIZE_MASK: u64 = mask(SIZE_SHIFT, SIZE_BITS);
const WRITERS_MASK: u64 = mask(WRITERS_SHIFT, WRITERS_BITS);
const WRITER_ONE: u64 = 1 << WRITERS_SHIFT;
const DIRTY: u64 = 1 << DIRTY_BIT;
const MIGRATING: u64 = 1 << MIGRATING_BIT;
const FROZEN: u64 = 1 << FROZEN_BIT;
const SPLIT: u64 = 1 << SPLIT_BIT;
const MAPPED: u64 = 1 << MAPPED_BIT;
const PTR_MASK: u64 = mask(0, PTR_BITS);
const SPLIT_LOG2_MASK: u64 = mask(SPLIT_LOG2_SHIFT, SPLIT_LOG2_BITS);
/// The bits that say where a mapped extent is (plus `MAPPED`).
const LOCATION_MASK: u64 = MAPPED | FIRST_UNIT_MASK | TIER_MASK | SIZE_MASK;

// Field widths hold what they must, and the fields do not overlap.
const _: () = assert!(TIERS_MAX <= 1 << TIER_BITS);
const _: () = assert!(SIZE_LOG2_MAX < 1 << SIZE_BITS);
const _: () = assert!(TABLE_SLOT_WRITERS_MAX as u64 == (1 << WRITERS_BITS) - 1);
const _: () = assert!(FIRST_UNIT_SHIFT + FIRST_UNIT_BITS == TIER_SHIFT);
const _: () = assert!(TIER_SHIFT + TIER_BITS == SIZE_SHIFT);
const _: () = assert!(SIZE_SHIFT + SIZE_BITS == WRITERS_SHIFT);
const _: () = assert!(WRITERS_SHIFT + WRITERS_BITS == DIRTY_BIT);
const _: () = assert!(DIRTY_BIT < MIGRATING_BIT && MIGRATING_BIT < FROZEN_BIT);
const _: () = assert!(FROZEN_BIT < SPLIT_BIT && SPLIT_BIT < MAPPED_BIT);
const _: () = assert!(PTR_BITS <= SPLIT_LOG2_SHIFT);
const _: () = assert!(SPLIT_LOG2_SHIFT + SPLIT_LOG2_BITS <= FROZEN_BIT);
const _: () = assert!(SIZE_LOG2_MAX < 1 << SPLIT_LOG2_BITS);
const _: () = assert!(
    (FIRST_UNIT_MASK
        | TIER_MASK
        | SIZE_MASK
        | WRITERS_MASK
        | DIRTY
        | MIGRATING
        | FROZEN
        | SPLIT
        | MAPPED)
        .count_ones()
        == FIRST_UNIT_BITS + TIER_BITS + SIZE_BITS + WRITERS_BITS + 5
);
// A split pointer lies in bits that a split entry does not otherwise use.
const _: () = assert!(PTR_MASK & (FROZEN | SPLIT | MAPPED) == 0);
const _: () = assert!(UNIT_SIZE_BYTES.is_power_of_two());
const _: () = assert!(VOLUME_SIZE_MAX_BYTES % SHARD_SIZE_MAX_BYTES == 0);

/// Errors of the table. Conflicts (`Lost`, `Dirty`, `WritersInFlight`, ...)
/// are normal outcomes of races that the caller handles; the others are bad
/// arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("shard size {0} bytes is not a power of two in {SHARD_SIZE_MIN_BYTES}..={SHARD_SIZE_MAX_BYTES}")]
    BadShardSize(u64),
    #[error("volume size {0} bytes is zero, not a multiple of {BLOCK_SIZE_BYTES} or above {VOLUME_SIZE_MAX_BYTES}")]
    BadVolumeSize(u64),
    #[error("cannot shrink: slot {slot} beyond the new size is still mapped")]
    ShrinkMapped { slot: u64 },
    #[error("slot {slot} is beyond the volume's {slots} slots")]
    OutOfRange { slot: u64, slots: u64 },
    #[error("child {child} is beyond the split node's {children} children")]
    ChildOutOfRange { child: u32, children: u32 },
    #[error("bad entry: {0}")]
    BadEntry(&'static str),
    #[error("bad split: {0}")]
    BadSplit(&'static str),
    #[error("lost the race: the slot is already {0:?}")]
    Lost(Entry),
    #[error("not mapped")]
    Unmapped,
    #[error("the slot is split; address a child")]
    IsSplit,
    #[error("the slot is not split (it is {0:?})")]
    NotSplit(Entry),
    #[error("the slot was split or merged meanwhile; resolve again")]
    Reshaped,
    #[error("{0} writes are in flight")]
    WritersInFlight(u32),
    #[error("a migration is in progress")]
    Migrating,
    #[error("a write entered since the copy began; clear DIRTY and copy again")]
    Dirty,
    #[error("the entry changed: it is now {0:?}")]
    Changed(Entry),
    #[error("another merge is in progress on this slot")]
    Busy,
    #[error("not mergeable: {0}")]
    NotMergeable(&'static str),
}

/// Conflicts of the migration protocol (same type as every table error).
pub type MigrateConflict = TableError;

/// One slot (or split child) entry, encoded per engine.md. `Entry(0)` is
/// unmapped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Entry(u64);

impl Entry {
    /// The unmapped entry.
    pub const UNMAPPED: Entry = Entry(0);

    /// A mapped extent of `2^size_log2` units starting at `first_unit` on
    /// `tier`, with no writers and no flags.
    pub fn mapped(tier: usize, first_unit: u64, size_log2: u32) -> Result<Entry, TableError> {
        if tier >= TIERS_MAX {
            return Err(TableError::BadEntry("tier index out of range"));
        }
        if size_log2 > SIZE_LOG2_MAX {
            return Err(TableError::BadEntry("extent larger than the largest shard"));
        }
        if first_unit
            .checked_add(1 << size_log2)
            .is_none_or(|end| end > (1 << FIRST_UNIT_BITS))
        {
            return Err(TableError::BadEntry("extent beyond the addressable units"));
        }
        Ok(Entry(
            MAPPED
                | (first_unit << FIRST_UNIT_SHIFT)
                | ((tier as u64) << TIER_SHIFT)
                | ((size_log2 as u64) << SIZE_SHIFT),
        ))
    }
    /// The raw encoding (for tests, debugging and `volume inspect`).
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// An entry from its raw encoding (no check: only for display and tests;
    /// the table validates every entry it is given).
    pub const fn from_raw(raw: u64) -> Entry {
        Entry(raw)
    }
    pub const fn is_mapped(self) -> bool {
        self.0 & MAPPED != 0
    }
    pub const fn is_split(self) -> bool {
        self.0 & SPLIT != 0
    }
    /// Neither mapped nor split (a frozen unmapped child counts as unmapped).
    pub const fn is_unmapped(self) -> bool {
        !self.is_mapped() && !self.is_split()
    }
    pub const fn tier(self) -> usize {
        ((self.0 & TIER_MASK) >> TIER_SHIFT) as usize
    }
    pub const fn first_unit(self) -> u64 {
        (self.0 & FIRST_UNIT_MASK) >> FIRST_UNIT_SHIFT
    }
    pub const fn size_log2(self) -> u32 {
        ((self.0 & SIZE_MASK) >> SIZE_SHIFT) as u32
    }
    pub const fn len_units(self) -> u64 {
        1 << self.size_log2()
    }
    pub const fn len_bytes(self) -> u64 {
        self.len_units() << UNIT_LOG2
    }
    /// Writes in flight on this extent.
    pub const fn writers(self) -> u32 {
        ((self.0 & WRITERS_MASK) >> WRITERS_SHIFT) as u32
    }
    pub const fn dirty(self) -> bool {
        self.0 & DIRTY != 0
    }
    pub const fn migrating(self) -> bool {
        self.0 & MIGRATING != 0
    }
    /// A child of a node being merged or merged away.
    pub const fn frozen(self) -> bool {
        self.0 & FROZEN != 0
    }
    /// The location only: `MAPPED`, first unit, tier, size; no writers or
    /// flags. Two entries name the same extent iff their mappings are equal.
    pub const fn mapping(self) -> Entry {
        if self.is_mapped() {
            Entry(self.0 & LOCATION_MASK)
        } else {
            Entry::UNMAPPED
        }
    }
    /// Byte offset of the extent on its tier device, whose data area (unit 0)
    /// starts at `data_start` bytes.
    pub const fn device_byte_offset(self, data_start: u64) -> u64 {
        data_start + (self.first_unit() << UNIT_LOG2)
    }
    /// A split entry's children array (its first element).
    const fn split_ptr(self) -> *mut AtomicU64 {
        (self.0 & PTR_MASK) as usize as *mut AtomicU64
    }
    /// A split entry's log2 of its number of children.
    const fn split_log2(self) -> u32 {
        ((self.0 & SPLIT_LOG2_MASK) >> SPLIT_LOG2_SHIFT) as u32
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_split() {
            return write!(f, "Split({:#x})", self.0 & PTR_MASK);
        }
        if !self.is_mapped() {
            return if self.frozen() {
                f.write_str("Unmapped(frozen)")
            } else {
                f.write_str("Unmapped")
            };
        }
        write!(
            f,
            "Mapped(tier {} units {}+{}",
            self.tier(),
            self.first_unit(),
            self.len_units()
        )?;
        if self.writers() > 0 {
            write!(f, " writers {}", self.writers())?;
        }
        for (on, name) in [
            (self.dirty(), "dirty"),
            (self.migrating(), "migrating"),
            (self.frozen(), "frozen"),
        ] {
            if on {
                write!(f, " {name}")?;
            }
        }
        f.write_str(")")
    }
}

/// Where an entry lives: a slot, or a child of a split slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub slot: u64,
    pub child: Option<ChildRef>,
}

/// Child `index` of a slot split into `of` children: one exact logical range
/// (`S/of` bytes at `index * S/of`). An operation on a child whose slot is
/// no longer split into `of` children fails with `Reshaped`, so it never
/// lands on a different range than the caller meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildRef {
    pub index: u32,
    pub of: u32,
}

impl Loc {
    pub const fn slot(slot: u64) -> Loc {
        Loc { slot, child: None }
    }
    pub const fn child(slot: u64, index: u32, of: u32) -> Loc {
        Loc {
            slot,
            child: Some(ChildRef { index, of }),
        }
    }
}

/// The children of a split slot: `2^k` entries each covering `S / 2^k`.
/// In memory a node is just its children array (one allocation, a
/// `Box<[AtomicU64]>`); the split entry holds its address and `k`.
#[derive(Clone, Copy)]
struct SplitNode<'g> {
    child_units_log2: u32,
    children: &'g [AtomicU64],
}

struct Leaf {
    entries: [AtomicU64; TABLE_LEAF_ENTRIES],
}

/// What one load of a slot saw.
#[derive(Clone, Copy, Debug)]
pub enum SlotView<'g> {
    Unmapped,
    Mapped(Entry),
    Split(SplitView<'g>),
}

/// A split slot's node, valid while the guard it was loaded under is pinned.
#[derive(Clone, Copy)]
pub struct SplitView<'g> {
    parent: Entry,
    node: SplitNode<'g>,
}

impl fmt::Debug for SplitView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let children: Vec<Entry> = (0..self.len()).map(|j| self.child(j)).collect();
        f.debug_struct("SplitView")
            .field("parent", &self.parent)
            .field("children", &children)
            .finish()
    }
}

impl<'g> SplitView<'g> {
    /// Number of children (a power of two, at least 2).
    pub fn len(&self) -> u32 {
        self.node.children.len() as u32
    }
    /// Never true (a node has at least two children); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.node.children.is_empty()
    }
    /// Units each child covers.
    pub fn child_units(&self) -> u64 {
        1 << self.node.child_units_log2
    }
    /// Bytes each child covers.
    pub fn child_bytes(&self) -> u64 {
        self.child_units() << UNIT_LOG2
    }
    /// The child covering byte `offset_in_slot`.
    pub fn child_index(&self, offset_in_slot: u64) -> u32 {
        (offset_in_slot >> (self.node.child_units_log2 + UNIT_LOG2)) as u32
    }
    /// One `Acquire` load of child `j` (panics if `j >= len()`).
    pub fn child(&self, j: u32) -> Entry {
        Entry(self.node.children[j as usize].load(Ordering::Acquire))
    }
    /// The raw parent entry this view was loaded from.
    pub fn parent(&self) -> Entry {
        self.parent
    }
}

/// Outcome of [`ShardTable::writer_enter`].
#[derive(Debug)]
pub enum WriteEnter<'g> {
    /// The write may proceed to `ticket.entry()`'s extent; drop the ticket
    /// (or call [`ShardTable::writer_exit`]) when its I/O has completed.
    Entered(WriteTicket<'g>),
    /// Nothing is mapped at `loc`: map an extent of `len_units` units there
    /// ([`ShardTable::try_map`] / [`ShardTable::try_map_at`]) and retry.
    Unmapped { loc: Loc, len_units: u64 },
    /// The slot is split: enter a child (see [`SplitView::child_index`]).
    Split(SplitView<'g>),
    /// A child was addressed but the slot is no longer split that way.
    Reshaped,
    /// The writer count is full; retry after one of the caller's own writes
    /// has completed.
    Saturated,
}

/// One write in flight on an entry; dropping it is `writer_exit`.
#[must_use = "dropping the ticket ends the write"]
pub struct WriteTicket<'g> {
    cell: &'g AtomicU64,
    loc: Loc,
    entry: Entry,
}

impl WriteTicket<'_> {
    /// The mapping the write goes to (location only).
    pub fn entry(&self) -> Entry {
        self.entry.mapping()
    }
    pub fn loc(&self) -> Loc {
        self.loc
    }
}

impl fmt::Debug for WriteTicket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteTicket")
            .field("loc", &self.loc)
            .field("entry", &self.entry)
            .finish()
    }
}

impl Drop for WriteTicket<'_> {
    fn drop(&mut self) {
        // The entry cannot have changed location while writers > 0: every
        // switch (finish_migrate, unmap, split, freeze for merge) requires
        // writers == 0, so this decrements the count this ticket added.
        self.cell.fetch_sub(WRITER_ONE, Ordering::Release);
    }
}

/// A resolved entry cell, with the parent it was reached through.
struct Cell<'g> {
    cell: &'g AtomicU64,
    /// For a child: the parent cell and the split entry seen in it.
    parent: Option<(&'g AtomicU64, u64)>,
    len_units_log2: u32,
}

/// The LBA→shard table of one volume.
pub struct ShardTable {
    shard_log2: u32,
    size_bytes: AtomicU64,
    directory: Box<[AtomicPtr<Leaf>]>,
    leaves: AtomicUsize,
}

// Shared between the queue threads, the stager and the manager: all its
// state is atomics (split nodes hang off `u64` entries as arrays of atomics).
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<ShardTable>();
};

impl fmt::Debug for ShardTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardTable")
            .field("size_bytes", &self.size_bytes())
            .field("shard_size", &self.shard_size())
            .field("allocated_leaves", &self.allocated_leaves())
            .finish()
    }
}

impl ShardTable {
    /// An empty (all unmapped) table for a volume of `size_bytes` cut into
    /// shards of `shard_size_bytes`. Costs only the directory, sized for
    /// [`VOLUME_SIZE_MAX_BYTES`] at that shard size so resizing never moves it.
    pub fn new(size_bytes: u64, shard_size_bytes: u64) -> Result<ShardTable, TableError> {
        if !shard_size_bytes.is_power_of_two()
            || !(SHARD_SIZE_MIN_BYTES..=SHARD_SIZE_MAX_BYTES).contains(&shard_size_bytes)
        {
            return Err(TableError::BadShardSize(shard_size_bytes));
        }
        check_volume_size(size_bytes)?;
        let shard_log2 = shard_size_bytes.trailing_zeros();
        let max_slots = VOLUME_SIZE_MAX_BYTES >> shard_log2;
        let dir_len = max_slots.div_ceil(TABLE_LEAF_ENTRIES as u64) as usize;
        let directory = (0..dir_len)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect();
        Ok(ShardTable {
            shard_log2,
            size_bytes: AtomicU64::new(size_bytes),
            directory,
            leaves: AtomicUsize::new(0),
        })
    }

    pub fn shard_size(&self) -> u64 {
        1 << self.shard_log2
    }
    /// Units per (unsplit) slot.
    pub fn slot_units(&self) -> u64 {
        1 << self.slot_units_log2()
    }
    fn slot_units_log2(&self) -> u32 {
        self.shard_log2 - UNIT_LOG2
    }
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }
    /// Slots covering the volume (the last may extend past its end).
    pub fn slots(&self) -> u64 {
        self.size_bytes().div_ceil(self.shard_size())
    }
    /// Leaves allocated so far (each [`TABLE_LEAF_ENTRIES`] entries).
    pub fn allocated_leaves(&self) -> usize {
        self.leaves.load(Ordering::Relaxed)
    }
    /// Bytes of the directory and the allocated leaves (split nodes not
    /// counted).
    pub fn memory_bytes(&self) -> usize {
        self.directory.len() * std::mem::size_of::<AtomicPtr<Leaf>>()
            + self.allocated_leaves() * std::mem::size_of::<Leaf>()
    }

    /// Change the logical size. Growing is immediate. Shrinking is refused
    /// while any slot beyond the new end is mapped or split: the caller
    /// unmaps those first and does not map beyond the new end meanwhile.
    /// Leaves are never freed.
    pub fn resize(&self, new_size_bytes: u64) -> Result<(), TableError> {
        check_volume_size(new_size_bytes)?;
        let new_slots = new_size_bytes.div_ceil(self.shard_size());
        let old_slots = self.slots();
        let mut slot = new_slots;
        while slot < old_slots {
            match self.slot_cell(slot) {
                Some(cell) if cell.load(Ordering::Acquire) != 0 => {
                    return Err(TableError::ShrinkMapped { slot });
                }
                Some(_) => slot += 1,
                // An absent leaf holds nothing: skip to the next leaf.
                None => slot = ((slot >> LEAF_LOG2) + 1) << LEAF_LOG2,
            }
        }
        self.size_bytes.store(new_size_bytes, Ordering::Release);
        Ok(())
    }

    fn check_slot(&self, slot: u64) -> Result<(), TableError> {
        let slots = self.slots();
        if slot >= slots {
            return Err(TableError::OutOfRange { slot, slots });
        }
        Ok(())
    }

    /// The cell of `slot` if its leaf exists (slot must be < the directory's
    /// capacity; beyond it there is no cell).
    fn slot_cell(&self, slot: u64) -> Option<&AtomicU64> {
        let dir = self.directory.get((slot >> LEAF_LOG2) as usize)?;
        let leaf = dir.load(Ordering::Acquire);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: a non-null directory pointer is a leaf allocated by
        // `slot_cell_alloc`, never freed before the table is dropped, and
        // `&self` keeps the table alive.
        let leaf = unsafe { &*leaf };
        Some(&leaf.entries[(slot as usize) & (TABLE_LEAF_ENTRIES - 1)])
    }

    /// The cell of `slot`, allocating its leaf if needed (CAS; the loser
    /// frees its leaf). `slot` must be in range.
    fn slot_cell_alloc(&self, slot: u64) -> &AtomicU64 {
        if let Some(cell) = self.slot_cell(slot) {
            return cell;
        }
        let dir = &self.directory[(slot >> LEAF_LOG2) as usize];
        let layout = std::alloc::Layout::new::<Leaf>();
        // SAFETY: `Leaf` has a non-zero size; all-zero bits are a valid
        // `Leaf` (an array of `AtomicU64`, zero = unmapped), so the zeroed
        // allocation is an initialised `Leaf` that `Drop` frees as a Box.
        let fresh = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Leaf;
        if fresh.is_null() {
            std::alloc::handle_alloc_error(layout);
        }

        match dir.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.leaves.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                // SAFETY: `fresh` was allocated above with the global
                // allocator and `Leaf`'s layout, and was never published.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
        self.slot_cell(slot).expect("leaf was just installed")
    }

    /// The split node a split entry points to.
    fn node<'g>(&'g self, e: Entry, _guard: &'g Guard) -> SplitNode<'g> {
        debug_assert!(e.is_split());
        let k = e.split_log2();
        // SAFETY: `e` was loaded from a slot cell while `_guard` was pinned. A
        // split entry is published only by `split`, pointing at a live
        // `Box<[AtomicU64]>` of `2^k` elements, which is freed only through
        // `guard.defer_unchecked` after a merge unlinked it: that cannot run
        // before every guard pinned earlier is dropped.
        let children =
            unsafe { std::slice::from_raw_parts(e.split_ptr() as *const AtomicU64, 1 << k) };
        SplitNode {
            child_units_log2: self.slot_units_log2() - k,
            children,
        }
    }

    /// One `Acquire` load of `slot` (children are loaded through the view).
    pub fn load<'g>(&'g self, slot: u64, guard: &'g Guard) -> Result<SlotView<'g>, TableError> {
        self.check_slot(slot)?;
        Ok(self.load_unchecked(slot, guard))
    }

    /// [`Self::load`] without the size check (the range was validated by the
    /// caller); a slot beyond the directory reads as unmapped.
    pub(crate) fn load_unchecked<'g>(&'g self, slot: u64, guard: &'g Guard) -> SlotView<'g> {
        let Some(cell) = self.slot_cell(slot) else {
            return SlotView::Unmapped;
        };
        let e = Entry(cell.load(Ordering::Acquire));
        if e.is_split() {
            SlotView::Split(SplitView {
                parent: e,
                node: self.node(e, guard),
            })
        } else if e.is_mapped() {
            SlotView::Mapped(e)
        } else {
            SlotView::Unmapped
        }
    }

    /// The entry at `loc` (one load for a slot, two for a child).
    pub fn load_entry(&self, loc: Loc, guard: &Guard) -> Result<Entry, TableError> {
        match self.cell(loc, guard, false)? {
            Some(c) => Ok(Entry(c.cell.load(Ordering::Acquire))),
            None => Ok(Entry::UNMAPPED),
        }
    }

    /// Resolve `loc` to its cell. `Ok(None)`: a slot whose leaf is absent
    /// (unmapped) and `alloc` is false.
    fn cell<'g>(
        &'g self,
        loc: Loc,
        guard: &'g Guard,
        alloc: bool,
    ) -> Result<Option<Cell<'g>>, TableError> {
        self.check_slot(loc.slot)?;
        let slot_cell = if alloc {
            Some(self.slot_cell_alloc(loc.slot))
        } else {
            self.slot_cell(loc.slot)
        };
        let Some(slot_cell) = slot_cell else {
            return match loc.child {
                None => Ok(None),
                Some(_) => Err(TableError::NotSplit(Entry::UNMAPPED)),
            };
        };
        let Some(ChildRef { index, of }) = loc.child else {
            return Ok(Some(Cell {
                cell: slot_cell,
                parent: None,
                len_units_log2: self.slot_units_log2(),
            }));
        };
        if index >= of {
            return Err(TableError::ChildOutOfRange {
                child: index,
                children: of,
            });
        }
        let parent = slot_cell.load(Ordering::Acquire);
        if parent & SPLIT == 0 {
            return Err(TableError::NotSplit(Entry(parent)));
        }
        let node = self.node(Entry(parent), guard);
        if node.children.len() != of as usize {
            return Err(TableError::Reshaped);
        }
        let cell = &node.children[index as usize];
        Ok(Some(Cell {
            cell,
            parent: Some((slot_cell, parent)),
            len_units_log2: node.child_units_log2,
        }))
    }

    /// A child CAS failed on a frozen value: wait while its merge is in
    /// progress, or report that the slot was reshaped.
    fn frozen_wait(c: &Cell<'_>, backoff: &Backoff) -> Result<(), TableError> {
        let (parent_cell, parent) = c.parent.expect("only children freeze");
        if parent_cell.load(Ordering::Acquire) != parent {
            return Err(TableError::Reshaped);
        }
        backoff.snooze();
        Ok(())
    }

    /// Enter a write on `loc`: CAS writers += 1 and set DIRTY. Never waits for
    /// a migration; waits only while a merge freezes a child (a few atomics).
    pub fn writer_enter<'g>(
        &'g self,
        loc: Loc,
        guard: &'g Guard,
    ) -> Result<WriteEnter<'g>, TableError> {
        let c = match self.cell(loc, guard, false) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Ok(WriteEnter::Unmapped {
                    loc,
                    len_units: self.slot_units(),
                })
            }
            Err(TableError::NotSplit(_) | TableError::Reshaped) => return Ok(WriteEnter::Reshaped),
            Err(e) => return Err(e),
        };
        let backoff = Backoff::new();
        let mut cur = c.cell.load(Ordering::Acquire);
        loop {
            let e = Entry(cur);
            if e.frozen() {
                if Self::frozen_wait(&c, &backoff).is_err() {
                    return Ok(WriteEnter::Reshaped);
                }
                cur = c.cell.load(Ordering::Acquire);
                continue;
            }
            if e.is_split() {
                return Ok(WriteEnter::Split(SplitView {
                    parent: e,
                    node: self.node(e, guard),
                }));
            }
            if !e.is_mapped() {
                return Ok(WriteEnter::Unmapped {
                    loc,
                    len_units: 1 << c.len_units_log2,
                });
            }
            if e.writers() >= TABLE_SLOT_WRITERS_MAX {
                return Ok(WriteEnter::Saturated);
            }
            let new = (cur + WRITER_ONE) | DIRTY;
            match c
                .cell
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(WriteEnter::Entered(WriteTicket {
                        cell: c.cell,
                        loc,
                        entry: Entry(new),
                    }))
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// [`Self::writer_enter`] at byte `offset_in_slot` of `slot`, descending
    /// into the covering child of a split slot. Never returns `Split` or
    /// `Reshaped`.
    pub fn writer_enter_at<'g>(
        &'g self,
        slot: u64,
        offset_in_slot: u64,
        guard: &'g Guard,
    ) -> Result<WriteEnter<'g>, TableError> {
        loop {
            match self.writer_enter(Loc::slot(slot), guard)? {
                WriteEnter::Split(view) => {
                    let child = view.child_index(offset_in_slot);
                    match self.writer_enter(Loc::child(slot, child, view.len()), guard)? {
                        WriteEnter::Reshaped | WriteEnter::Split(_) => continue,
                        other => return Ok(other),
                    }
                }
                WriteEnter::Reshaped => continue,
                other => return Ok(other),
            }
        }
    }

    /// End a write (same as dropping the ticket): writers -= 1.
    pub fn writer_exit(&self, ticket: WriteTicket<'_>) {
        drop(ticket);
    }

    fn check_new_mapping(entry: Entry, len_units_log2: u32) -> Result<Entry, TableError> {
        if !entry.is_mapped() || entry.is_split() || entry.raw() & !LOCATION_MASK != 0 {
            return Err(TableError::BadEntry(
                "not a plain mapping (flags or writers set)",
            ));
        }
        if entry.size_log2() != len_units_log2 {
            return Err(TableError::BadEntry(
                "extent size differs from the slot or child size",
            ));
        }
        Ok(entry)
    }

    /// Map an unmapped slot: `CAS(0 -> entry)`. On a lost race the winner's
    /// entry is returned as `Err(Lost(winner))` (the caller frees its extent
    /// and uses the winner's); a split slot gives `Err(IsSplit)`.
    pub fn try_map(&self, slot: u64, entry: Entry) -> Result<(), TableError> {
        self.check_slot(slot)?;
        let entry = Self::check_new_mapping(entry, self.slot_units_log2())?;
        let cell = self.slot_cell_alloc(slot);
        match cell.compare_exchange(0, entry.raw(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(actual) if actual & SPLIT != 0 => Err(TableError::IsSplit),
            Err(actual) => Err(TableError::Lost(Entry(actual))),
        }
    }

    /// Map the unmapped entry at `loc`, a slot or a child of a split slot:
    /// `CAS(0 -> entry)`, exactly like [`Self::try_map`] (the loser gets
    /// `Err(Lost(winner))`). For a child, `Err(Reshaped)` / `Err(NotSplit)`:
    /// the slot is no longer split that way; resolve again.
    pub fn try_map_at(&self, loc: Loc, entry: Entry, guard: &Guard) -> Result<(), TableError> {
        if loc.child.is_none() {
            return self.try_map(loc.slot, entry);
        }
        let c = self
            .cell(loc, guard, false)?
            .expect("children always resolve");
        let entry = Self::check_new_mapping(entry, c.len_units_log2)?;
        let backoff = Backoff::new();
        loop {
            match c
                .cell
                .compare_exchange(0, entry.raw(), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) if actual & FROZEN != 0 => Self::frozen_wait(&c, &backoff)?,
                Err(actual) => return Err(TableError::Lost(Entry(actual))),
            }
        }
    }

    /// Run a CAS loop on the entry at `loc`: `step` maps the current entry to
    /// the new one or an error. Frozen children are waited out or reported as
    /// `Reshaped`; a split slot gives `IsSplit`; an absent leaf is unmapped.
    fn update(
        &self,
        loc: Loc,
        guard: &Guard,
        mut step: impl FnMut(Entry) -> Result<Entry, TableError>,
    ) -> Result<Entry, TableError> {
        let Some(c) = self.cell(loc, guard, false)? else {
            // Absent leaf: unmapped, and nothing to write.
            step(Entry::UNMAPPED)?;
            return Err(TableError::Unmapped);
        };
        let backoff = Backoff::new();
        let mut cur = c.cell.load(Ordering::Acquire);
        loop {
            let e = Entry(cur);
            if e.frozen() {
                Self::frozen_wait(&c, &backoff)?;
                cur = c.cell.load(Ordering::Acquire);
                continue;
            }
            if e.is_split() {
                return Err(TableError::IsSplit);
            }
            let new = step(e)?;
            match c
                .cell
                .compare_exchange_weak(cur, new.raw(), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(e),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Start migrating the extent at `loc`: `CAS(e -> e|MIGRATING)`, clearing
    /// DIRTY when no write is in flight (a write in flight leaves DIRTY set,
    /// so the first copy will be redone). Returns the mapping to copy from.
    pub fn begin_migrate(&self, loc: Loc, guard: &Guard) -> Result<Entry, MigrateConflict> {
        let old = self.update(loc, guard, |e| {
            if !e.is_mapped() {
                return Err(TableError::Unmapped);
            }
            if e.migrating() {
                return Err(TableError::Migrating);
            }
            let dirty = if e.writers() > 0 { DIRTY } else { 0 };
            Ok(Entry((e.raw() & !DIRTY) | MIGRATING | dirty))
        })?;
        Ok(old.mapping())
    }

    /// Check that the entry at `loc` is still the migration of `old`.
    fn migrating_of(e: Entry, old: Entry) -> Result<(), MigrateConflict> {
        if !e.is_mapped() || !e.migrating() || e.mapping() != old.mapping() {
            return Err(TableError::Changed(e));
        }
        Ok(())
    }

    /// Before copying again: clear DIRTY. Requires no write in flight
    /// (`Err(WritersInFlight)`: wait for them and retry), so every write
    /// that DIRTY stood for has reached the old extent before the new copy.
    pub fn clear_dirty(&self, loc: Loc, old: Entry, guard: &Guard) -> Result<(), MigrateConflict> {
        self.update(loc, guard, |e| {
            Self::migrating_of(e, old)?;
            if e.writers() > 0 {
                return Err(TableError::WritersInFlight(e.writers()));
            }
            Ok(Entry(e.raw() & !DIRTY))
        })
        .map(drop)
    }

    /// The atomic switch after a copy: `CAS(old|MIGRATING, writers=0, !DIRTY
    /// -> new)`. Fails with `Dirty` / `WritersInFlight` if a write entered
    /// since the copy began or is in flight (clear DIRTY, copy again), with
    /// `Changed` if the entry is no longer this migration.
    pub fn finish_migrate(
        &self,
        loc: Loc,
        old: Entry,
        new: Entry,
        guard: &Guard,
    ) -> Result<(), MigrateConflict> {
        let new = Self::check_new_mapping(new, old.size_log2())?;
        self.update(loc, guard, |e| {
            Self::migrating_of(e, old)?;
            if e.writers() > 0 {
                return Err(TableError::WritersInFlight(e.writers()));
            }
            if e.dirty() {
                return Err(TableError::Dirty);
            }
            Ok(new)
        })
        .map(drop)
    }

    /// Give up a migration of `old`: clear MIGRATING (and DIRTY).
    pub fn abort_migrate(
        &self,
        loc: Loc,
        old: Entry,
        guard: &Guard,
    ) -> Result<(), MigrateConflict> {
        self.update(loc, guard, |e| {
            Self::migrating_of(e, old)?;
            Ok(Entry(e.raw() & !(MIGRATING | DIRTY)))
        })
        .map(drop)
    }

    /// Discard the mapping at `loc`: `CAS(e, writers=0, !MIGRATING -> 0)`.
    /// Returns the old mapping, whose extent the caller frees through the
    /// epoch.
    pub fn try_unmap(&self, loc: Loc, guard: &Guard) -> Result<Entry, TableError> {
        let old = self.update(loc, guard, |e| {
            if !e.is_mapped() {
                return Err(TableError::Unmapped);
            }
            if e.writers() > 0 {
                return Err(TableError::WritersInFlight(e.writers()));
            }
            if e.migrating() {
                return Err(TableError::Migrating);
            }
            Ok(Entry::UNMAPPED)
        })?;
        Ok(old.mapping())
    }

    /// Split `slot` into `n_children` (a power of two, 2 ..= units per slot)
    /// children of `S / n` each, zero copy: child `j` maps units
    /// `first_unit + j * units/n` of the parent extent. An unmapped slot
    /// splits into unmapped children. Installed with `CAS(parent,
    /// writers=0, !MIGRATING -> SPLIT|node)`. The guard is the caller's
    /// pinned epoch, as for every call that may meet a split node (`split`
    /// itself never dereferences one).
    pub fn split(&self, slot: u64, n_children: u32, _guard: &Guard) -> Result<(), TableError> {
        self.check_slot(slot)?;
        if !n_children.is_power_of_two()
            || n_children < 2
            || u64::from(n_children) > self.slot_units()
        {
            return Err(TableError::BadSplit(
                "children must be a power of two in 2..=units per slot",
            ));
        }
        let k = n_children.trailing_zeros();
        let child_units_log2 = self.slot_units_log2() - k;
        let cell = self.slot_cell_alloc(slot);
        let cur = cell.load(Ordering::Acquire);
        let e = Entry(cur);
        if e.is_split() {
            return Err(TableError::IsSplit);
        }
        if e.writers() > 0 {
            return Err(TableError::WritersInFlight(e.writers()));
        }
        if e.migrating() {
            return Err(TableError::Migrating);
        }
        let children: Box<[AtomicU64]> = (0..u64::from(n_children))
            .map(|j| {
                let raw = if e.is_mapped() {
                    MAPPED
                        | ((e.first_unit() + (j << child_units_log2)) << FIRST_UNIT_SHIFT)
                        | ((e.tier() as u64) << TIER_SHIFT)
                        | (u64::from(child_units_log2) << SIZE_SHIFT)
                } else {
                    0
                };
                AtomicU64::new(raw)
            })
            .collect();
        let ptr = Box::into_raw(children) as *mut AtomicU64 as usize as u64;
        let free = || {
            // SAFETY: `ptr` came from Box::into_raw of a slice of
            // `n_children` elements just above and was never published.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    ptr as usize as *mut AtomicU64,
                    n_children as usize,
                ))
            })
        };
        if ptr & !PTR_MASK != 0 {
            free();
            return Err(TableError::BadSplit(
                "node address does not fit the entry's pointer bits",
            ));
        }
        let new = SPLIT | (u64::from(k) << SPLIT_LOG2_SHIFT) | ptr;
        match cell.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(actual) => {
                free();
                Err(TableError::Changed(Entry(actual)))
            }
        }
    }

    /// Collapse a split slot: when every child is mapped on one tier and the
    /// children are contiguous in order, the slot becomes one mapping of the
    /// whole extent; when every child is unmapped, the slot becomes unmapped.
    /// Otherwise `NotMergeable` (the caller migrates the children into one
    /// new extent first). Children with writes in flight or migrating make it
    /// fail with `WritersInFlight` / `Migrating`. The old node is freed
    /// through `guard` (deferred until every reader pinned before is done).
    /// Returns the new slot entry.
    pub fn try_merge(&self, slot: u64, guard: &Guard) -> Result<Entry, TableError> {
        self.check_slot(slot)?;
        let Some(cell) = self.slot_cell(slot) else {
            return Err(TableError::NotSplit(Entry::UNMAPPED));
        };
        let parent = cell.load(Ordering::Acquire);
        if parent & SPLIT == 0 {
            return Err(TableError::NotSplit(Entry(parent)));
        }
        let node = self.node(Entry(parent), guard);
        // Freeze every child: from here no writer, map, migrate or unmap can
        // change it, so the values checked below are the values merged.
        let mut frozen = 0;
        let mut failure = None;
        for child in node.children.iter() {
            let v = child.load(Ordering::Acquire);
            let e = Entry(v);
            let reason = if e.frozen() {
                Some(TableError::Busy)
            } else if e.writers() > 0 {
                Some(TableError::WritersInFlight(e.writers()))
            } else if e.migrating() {
                Some(TableError::Migrating)
            } else {
                None
            };
            if let Some(reason) = reason {
                failure = Some(reason);
                break;
            }
            match child.compare_exchange(v, v | FROZEN, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => frozen += 1,
                Err(_) => {
                    failure = Some(TableError::Busy);
                    break;
                }
            }
        }
        let values: Vec<Entry> = node.children[..frozen]
            .iter()
            .map(|c| Entry(c.load(Ordering::Acquire) & !FROZEN))
            .collect();
        let outcome = match failure {
            Some(f) => Err(f),
            None => Self::merged_entry(&values, self.slot_units_log2()),
        };
        let merged = match outcome {
            Ok(m) => m,
            Err(f) => {
                // Thaw: nobody else changes a frozen child, so store back.
                for (child, v) in node.children[..frozen].iter().zip(&values) {
                    child.store(v.raw(), Ordering::Release);
                }
                return Err(f);
            }
        };
        match cell.compare_exchange(parent, merged.raw(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let node = NodeBox(Entry(parent));
                // SAFETY: the node is unlinked from the only cell that held
                // it; readers that loaded it are pinned and the deferred free
                // waits for them (the closure touches only the node). Its
                // children stay frozen, so no late CAS through a stale view
                // can succeed.
                unsafe { guard.defer_unchecked(move || node.free()) };
                Ok(merged)
            }
            Err(actual) => {
                // Only a merge replaces a split entry, and only the merge that
                // froze every child can get here.
                unreachable!(
                    "split slot changed under a full freeze: {:?}",
                    Entry(actual)
                )
            }
        }
    }

    /// The slot entry a merge of these (frozen, flag-free) children yields.
    fn merged_entry(children: &[Entry], slot_units_log2: u32) -> Result<Entry, TableError> {
        if children.iter().all(|c| c.is_unmapped()) {
            return Ok(Entry::UNMAPPED);
        }
        if !children.iter().all(|c| c.is_mapped()) {
            return Err(TableError::NotMergeable("some children are unmapped"));
        }
        let first = children[0];
        for (j, c) in children.iter().enumerate() {
            if c.tier() != first.tier() {
                return Err(TableError::NotMergeable("children on different tiers"));
            }
            if c.first_unit() != first.first_unit() + ((j as u64) << c.size_log2()) {
                return Err(TableError::NotMergeable("children not contiguous in order"));
            }
        }
        Entry::mapped(first.tier(), first.first_unit(), slot_units_log2)
    }

    /// Visit every mapping: `f(logical_unit, len_units, entry)` in logical
    /// order, children included (entry with its live writer/flag bits; use
    /// [`Entry::mapping`] for the location). Pins an epoch guard for the walk.
    pub fn for_each_mapped(&self, mut f: impl FnMut(u64, u64, Entry)) {
        let guard = crossbeam_epoch::pin();
        let slots = self.slots();
        let slot_units_log2 = self.slot_units_log2();
        let mut slot = 0;
        while slot < slots {
            if self.slot_cell(slot).is_none() {
                // Whole leaf absent: skip to the next leaf.
                slot = ((slot >> LEAF_LOG2) + 1) << LEAF_LOG2;
                continue;
            }
            let base = slot << slot_units_log2;
            match self.load_unchecked(slot, &guard) {
                SlotView::Unmapped => {}
                SlotView::Mapped(e) => f(base, e.len_units(), e),
                SlotView::Split(view) => {
                    for j in 0..view.len() {
                        let e = view.child(j);
                        if e.is_mapped() {
                            f(base + u64::from(j) * view.child_units(), e.len_units(), e);
                        }
                    }
                }
            }
            slot += 1;
        }
    }

    /// Mapped bytes per tier (children included).
    pub fn mapped_bytes_per_tier(&self) -> [u64; TIERS_MAX] {
        let mut bytes = [0u64; TIERS_MAX];
        self.for_each_mapped(|_, _, e| bytes[e.tier()] += e.len_bytes());
        bytes
    }
}

/// A split entry whose node is to be freed (unlinked; no new reader can
/// reach it).
struct NodeBox(Entry);

impl NodeBox {
    /// Free the node.
    ///
    /// # Safety
    /// The entry was published by `split` and has been unlinked, and no
    /// reader that loaded it is still using it (the epoch has passed, or the
    /// table is being dropped).
    unsafe fn free(self) {
        let e = self.0;
        let len = 1usize << e.split_log2();
        // SAFETY: per the contract, this is the `Box<[AtomicU64]>` of `len`
        // elements that `split` leaked, freed exactly once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(e.split_ptr(), len)) });
    }
}

fn check_volume_size(size_bytes: u64) -> Result<(), TableError> {
    if size_bytes == 0 || size_bytes % BLOCK_SIZE_BYTES != 0 || size_bytes > VOLUME_SIZE_MAX_BYTES {
        return Err(TableError::BadVolumeSize(size_bytes));
    }
    Ok(())
}

impl Drop for ShardTable {
    fn drop(&mut self) {
        for dir in self.directory.iter() {
            let leaf = dir.load(Ordering::Acquire);
            if leaf.is_null() {
                continue;
            }
            // SAFETY: `&mut self`: no other user; a non-null directory pointer
            // is a leaf allocated in `slot_cell_alloc` with `Leaf`'s layout by the
            // global allocator (as a Box would be), freed only here.
            let leaf = unsafe { Box::from_raw(leaf) };
            for entry in leaf.entries.iter() {
                let e = Entry(entry.load(Ordering::Acquire));
                if e.is_split() {
                    // SAFETY: a split entry still installed owns its node (a
                    // merged node is unlinked first and freed by the epoch
                    // only), and nothing else refers to it now.
                    unsafe { NodeBox(e).free() };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::SHARD_SIZE_DEFAULT_BYTES;

    const MIB: u64 = 1024 * 1024;

    fn slot_log2() -> u32 {
        (SHARD_SIZE_DEFAULT_BYTES / UNIT_SIZE_BYTES).trailing_zeros()
    }

    #[test]
    fn entry_fields_round_trip() {
        let e = Entry::mapped(3, (1 << 40) - 1024, 10).unwrap();
        assert!(e.is_mapped() && !e.is_split() && !e.is_unmapped());
        assert_eq!(
            (e.tier(), e.first_unit(), e.size_log2(), e.len_units()),
            (3, (1 << 40) - 1024, 10, 1024)
        );
        assert_eq!(
            (e.writers(), e.dirty(), e.migrating(), e.frozen()),
            (0, false, false, false)
        );
        assert_eq!(e.len_bytes(), 64 * MIB);
        assert_eq!(
            e.device_byte_offset(4096),
            4096 + ((1u64 << 40) - 1024) * UNIT_SIZE_BYTES
        );
        assert!(Entry::mapped(TIERS_MAX, 0, 0).is_err());
        assert!(Entry::mapped(0, 0, SIZE_LOG2_MAX + 1).is_err());
        assert!(Entry::mapped(0, (1 << 40) - 1, 1).is_err());
        assert!(Entry::UNMAPPED.is_unmapped());
        let busy = Entry((e.raw() + 3 * WRITER_ONE) | DIRTY | MIGRATING);
        assert_eq!(
            (busy.writers(), busy.dirty(), busy.migrating()),
            (3, true, true)
        );
        assert_eq!(busy.mapping(), e);
    }

    #[test]
    fn new_validates_sizes() {
        assert!(matches!(
            ShardTable::new(MIB, 3 * UNIT_SIZE_BYTES),
            Err(TableError::BadShardSize(_))
        ));
        assert!(ShardTable::new(MIB, UNIT_SIZE_BYTES / 2).is_err());
        assert!(ShardTable::new(MIB, SHARD_SIZE_MAX_BYTES * 2).is_err());
        assert!(matches!(
            ShardTable::new(MIB + 512, MIB),
            Err(TableError::BadVolumeSize(_))
        ));
        assert!(ShardTable::new(0, MIB).is_err());
        assert!(ShardTable::new(VOLUME_SIZE_MAX_BYTES + MIB, MIB).is_err());
        let t = ShardTable::new(VOLUME_SIZE_MAX_BYTES, UNIT_SIZE_BYTES).unwrap();
        assert_eq!(t.slots(), VOLUME_SIZE_MAX_BYTES / UNIT_SIZE_BYTES);
        let t = ShardTable::new(MIB + 4096, MIB).unwrap();
        assert_eq!(t.slots(), 2);
    }

    #[test]
    fn empty_64_tib_volume_costs_only_the_directory_and_leaves_are_lazy() {
        let t = ShardTable::new(64 << 40, MIB).unwrap();
        let dir_bytes = t.memory_bytes();
        assert_eq!(t.allocated_leaves(), 0);
        assert!(dir_bytes <= 256 * 1024, "directory costs {dir_bytes} bytes");
        let g = crossbeam_epoch::pin();
        // Reads and write attempts on untouched slots allocate nothing.
        assert!(matches!(
            t.load(t.slots() - 1, &g).unwrap(),
            SlotView::Unmapped
        ));
        assert!(matches!(
            t.writer_enter(Loc::slot(5), &g).unwrap(),
            WriteEnter::Unmapped { .. }
        ));
        assert_eq!(t.allocated_leaves(), 0);
        let per_leaf = TABLE_LEAF_ENTRIES as u64;
        t.try_map(3, Entry::mapped(0, 0, slot_log2()).unwrap())
            .unwrap();
        t.try_map(per_leaf - 1, Entry::mapped(0, 16, slot_log2()).unwrap())
            .unwrap();
        assert_eq!(t.allocated_leaves(), 1);
        t.try_map(
            per_leaf * 1000 + 7,
            Entry::mapped(1, 0, slot_log2()).unwrap(),
        )
        .unwrap();
        assert_eq!(t.allocated_leaves(), 2);
        assert_eq!(
            t.memory_bytes(),
            dir_bytes + 2 * std::mem::size_of::<Leaf>()
        );
        assert_eq!(t.mapped_bytes_per_tier(), [2 * MIB, MIB, 0, 0]);
    }

    #[test]
    fn out_of_range_slots_are_rejected_and_resize_checks_mappings() {
        let t = ShardTable::new(4 * MIB, MIB).unwrap();
        let g = crossbeam_epoch::pin();
        let e = Entry::mapped(0, 0, slot_log2()).unwrap();
        assert!(matches!(
            t.try_map(4, e),
            Err(TableError::OutOfRange { slot: 4, slots: 4 })
        ));
        assert!(t.load(4, &g).is_err());
        t.resize(8 * MIB).unwrap();
        t.try_map(6, e).unwrap();
        assert_eq!(t.resize(4 * MIB), Err(TableError::ShrinkMapped { slot: 6 }));
        assert_eq!(t.try_unmap(Loc::slot(6), &g).unwrap(), e);
        t.resize(4 * MIB).unwrap();
        assert_eq!(t.slots(), 4);
        assert!(t.try_map(6, e).is_err());
        // Shrinking a huge thin volume skips absent leaves (this would take
        // billions of steps otherwise).
        let t = ShardTable::new(VOLUME_SIZE_MAX_BYTES, UNIT_SIZE_BYTES).unwrap();
        t.try_map((1 << 31) + 5, Entry::mapped(0, 0, 0).unwrap())
            .unwrap();
        assert_eq!(
            t.resize(MIB),
            Err(TableError::ShrinkMapped {
                slot: (1 << 31) + 5
            })
        );
        t.try_unmap(Loc::slot((1 << 31) + 5), &g).unwrap();
        t.resize(MIB).unwrap();
        assert_eq!(t.slots(), 16);
    }

    #[test]
    fn map_rejects_wrong_sizes_and_flags() {
        let t = ShardTable::new(4 * MIB, MIB).unwrap();
        assert!(matches!(
            t.try_map(0, Entry::mapped(0, 0, 3).unwrap()),
            Err(TableError::BadEntry(_))
        ));
        let dirty = Entry(Entry::mapped(0, 0, slot_log2()).unwrap().raw() | DIRTY);
        assert!(matches!(t.try_map(0, dirty), Err(TableError::BadEntry(_))));
        let e = Entry::mapped(0, 0, slot_log2()).unwrap();
        t.try_map(0, e).unwrap();
        let other = Entry::mapped(1, 64, slot_log2()).unwrap();
        assert_eq!(t.try_map(0, other), Err(TableError::Lost(e)));
    }

    #[test]
    fn write_enter_exit_and_saturation() {
        let t = ShardTable::new(4 * MIB, MIB).unwrap();
        let g = crossbeam_epoch::pin();
        let e = Entry::mapped(0, 32, slot_log2()).unwrap();
        t.try_map(1, e).unwrap();
        let mut tickets = Vec::new();
        for _ in 0..TABLE_SLOT_WRITERS_MAX {
            match t.writer_enter(Loc::slot(1), &g).unwrap() {
                WriteEnter::Entered(tk) => {
                    assert_eq!(tk.entry(), e);
                    tickets.push(tk)
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            t.writer_enter(Loc::slot(1), &g).unwrap(),
            WriteEnter::Saturated
        ));
        let now = t.load_entry(Loc::slot(1), &g).unwrap();
        assert_eq!((now.writers(), now.dirty()), (TABLE_SLOT_WRITERS_MAX, true));
        assert_eq!(
            t.try_unmap(Loc::slot(1), &g),
            Err(TableError::WritersInFlight(TABLE_SLOT_WRITERS_MAX))
        );
        t.writer_exit(tickets.pop().unwrap());
        drop(tickets);
        assert_eq!(t.load_entry(Loc::slot(1), &g).unwrap().writers(), 0);
        assert_eq!(t.try_unmap(Loc::slot(1), &g).unwrap(), e);
    }

    #[test]
    fn migration_switch_rules() {
        let t = ShardTable::new(4 * MIB, MIB).unwrap();
        let g = crossbeam_epoch::pin();
        let loc = Loc::slot(2);
        let old = Entry::mapped(0, 0, slot_log2()).unwrap();
        let new = Entry::mapped(1, 48, slot_log2()).unwrap();
        t.try_map(2, old).unwrap();
        // A write before the migration leaves DIRTY set, which begin clears.
        drop(t.writer_enter(loc, &g).unwrap());
        assert_eq!(t.begin_migrate(loc, &g).unwrap(), old);
        assert_eq!(t.begin_migrate(loc, &g), Err(TableError::Migrating));
        assert_eq!(t.try_unmap(loc, &g), Err(TableError::Migrating));
        // A write during the copy: the switch must fail.
        let WriteEnter::Entered(tk) = t.writer_enter(loc, &g).unwrap() else {
            panic!()
        };
        assert_eq!(tk.entry(), old);
        assert_eq!(
            t.finish_migrate(loc, old, new, &g),
            Err(TableError::WritersInFlight(1))
        );
        assert_eq!(
            t.clear_dirty(loc, old, &g),
            Err(TableError::WritersInFlight(1))
        );
        drop(tk);
        assert_eq!(t.finish_migrate(loc, old, new, &g), Err(TableError::Dirty));
        t.clear_dirty(loc, old, &g).unwrap();
        assert!(t
            .finish_migrate(loc, old, Entry::mapped(1, 0, 0).unwrap(), &g)
            .is_err());
        t.finish_migrate(loc, old, new, &g).unwrap();
        assert_eq!(t.load_entry(loc, &g).unwrap(), new);
        assert!(matches!(
            t.finish_migrate(loc, old, new, &g),
            Err(TableError::Changed(_))
        ));
        // Abort restores a plain mapping.
        t.begin_migrate(loc, &g).unwrap();
        t.abort_migrate(loc, new, &g).unwrap();
        assert_eq!(t.load_entry(loc, &g).unwrap(), new);
        // Writers in flight at begin keep DIRTY set.
        let WriteEnter::Entered(tk) = t.writer_enter(loc, &g).unwrap() else {
            panic!()
        };
        t.begin_migrate(loc, &g).unwrap();
        drop(tk);
        assert_eq!(t.finish_migrate(loc, new, old, &g), Err(TableError::Dirty));
    }

    #[test]
    fn split_is_zero_copy_and_merge_restores() {
        let t = ShardTable::new(4 * MIB, MIB).unwrap();
        let g = crossbeam_epoch::pin();
        let e = Entry::mapped(2, 160, slot_log2()).unwrap();
        t.try_map(0, e).unwrap();
        assert!(t.split(0, 3, &g).is_err());
        assert!(t.split(0, 32, &g).is_err());
        t.split(0, 4, &g).unwrap();
        assert_eq!(t.split(0, 2, &g), Err(TableError::IsSplit));
        let SlotView::Split(v) = t.load(0, &g).unwrap() else {
            panic!()
        };
        assert_eq!(
            (v.len(), v.child_units(), v.child_index(MIB - 1)),
            (4, 4, 3)
        );
        for j in 0..4 {
            assert_eq!(
                v.child(j),
                Entry::mapped(2, 160 + 4 * u64::from(j), 2).unwrap()
            );
        }
        assert_eq!(t.try_map(0, e), Err(TableError::IsSplit));
        // A child addressed with another child count is another range.
        assert_eq!(
            t.try_unmap(Loc::child(0, 1, 2), &g),
            Err(TableError::Reshaped)
        );
        assert!(matches!(
            t.try_unmap(Loc::child(0, 4, 4), &g),
            Err(TableError::ChildOutOfRange { .. })
        ));
        assert_eq!(t.try_unmap(Loc::slot(0), &g), Err(TableError::IsSplit));
        let WriteEnter::Entered(tk) = t.writer_enter_at(0, 600 * 1024, &g).unwrap() else {
            panic!()
        };
        assert_eq!(tk.loc(), Loc::child(0, 2, 4));
        assert_eq!(t.try_merge(0, &g), Err(TableError::WritersInFlight(1)));
        drop(tk);
        let mut seen = Vec::new();
        t.for_each_mapped(|u, n, e| seen.push((u, n, e.mapping())));
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3], (12, 4, Entry::mapped(2, 172, 2).unwrap()));
        assert_eq!(t.try_merge(0, &g).unwrap(), e);
        assert_eq!(t.load_entry(Loc::slot(0), &g).unwrap(), e);
        assert!(matches!(
            t.writer_enter(Loc::child(0, 1, 4), &g).unwrap(),
            WriteEnter::Reshaped
        ));
    }

    #[test]
    fn children_unmap_map_and_merge_rules() {
        let t = ShardTable::new(4 * MIB, MIB).unwrap();
        let g = crossbeam_epoch::pin();
        t.split(1, 2, &g).unwrap();
        let c0 = Entry::mapped(0, 100, slot_log2() - 1).unwrap();
        let c1 = Entry::mapped(0, 200, slot_log2() - 1).unwrap();
        assert!(matches!(
            t.writer_enter_at(1, MIB / 2, &g).unwrap(),
            WriteEnter::Unmapped { len_units: 8, .. }
        ));
        t.try_map_at(Loc::child(1, 0, 2), c0, &g).unwrap();
        assert_eq!(
            t.try_map_at(Loc::child(1, 0, 2), c1, &g),
            Err(TableError::Lost(c0))
        );
        assert!(matches!(
            t.try_map_at(Loc::child(1, 2, 2), c1, &g),
            Err(TableError::ChildOutOfRange { .. })
        ));
        assert_eq!(
            t.try_merge(1, &g),
            Err(TableError::NotMergeable("some children are unmapped"))
        );
        t.try_map_at(Loc::child(1, 1, 2), c1, &g).unwrap();
        assert_eq!(
            t.try_merge(1, &g),
            Err(TableError::NotMergeable("children not contiguous in order"))
        );
        // The failed merges thawed the children: they still take writes.
        assert!(matches!(
            t.writer_enter(Loc::child(1, 1, 2), &g).unwrap(),
            WriteEnter::Entered(_)
        ));
        assert_eq!(t.try_unmap(Loc::child(1, 0, 2), &g).unwrap(), c0);
        assert_eq!(t.try_unmap(Loc::child(1, 1, 2), &g).unwrap(), c1);
        assert_eq!(t.try_merge(1, &g).unwrap(), Entry::UNMAPPED);
        assert!(matches!(t.load(1, &g).unwrap(), SlotView::Unmapped));
        assert!(matches!(
            t.try_map_at(Loc::child(1, 0, 2), c0, &g),
            Err(TableError::NotSplit(_))
        ));
    }
}
