//! A volume's I/O: read, write, flush, discard and write-zeroes at byte
//! offsets, with thin provisioning, over a per-thread [`IoEngine`].
//!
//! Contract:
//! - Offsets and lengths are multiples of `BLOCK_SIZE_BYTES`; buffers are
//!   block-aligned memory (`AlignedBuf`) because tier I/O is `O_DIRECT`
//!   straight into them (no intermediate copy).
//! - Reads: one atomic load per slot touched (plus one per split child), under
//!   an epoch guard held until the read I/O completes. Unmapped ranges read as
//!   zeros.
//! - Writes: each mapped entry is entered (writers += 1, DIRTY) for the span
//!   of its I/O, so a concurrent migration can never switch away from under
//!   it. The first write to an unmapped shard allocates an extent on the
//!   policy's tier (colder tiers when full, then hotter; none left = ENOSPC),
//!   writes the data and zeroes the rest of the extent, then publishes it with
//!   a CAS; the loser of a race frees its unpublished extent and writes into
//!   the winner's. A `Map` record is appended; [`Volume::flush`] makes it
//!   durable.
//! - Discard and write-zeroes of whole shards unmap them (the extent is freed
//!   once the `Unmap` record is durable and no reader can still see it);
//!   write-zeroes of a partial shard writes zeros; partial discard is a no-op
//!   (discard is advisory).
//! - The only lock taken here is the pool's commit barrier, shared, on the
//!   map path (the first write of a shard), never on reads or overwrites.

use crate::constants::TIERS_MAX;
use crate::constants::{BLOCK_SIZE_BYTES, MIGRATE_CHUNK_BYTES, UNIT_SIZE_BYTES};
use crate::io::{AlignedBuf, DevIndex, IoEngine, IoError, IoOp};
use crate::shard::meta::{MetaError, Record};
use crate::shard::policy::TierPolicy;
use crate::shard::pool::{CommitError, Pool, PoolShared};
use crate::volume::split::{resolve, segments, validate_range, Piece, PieceKind, RangeError};
use crate::volume::stats::AccessStats;
use crate::volume::table::{Entry, Loc, ShardTable, TableError, WriteEnter, WriteTicket};
use crossbeam_epoch as epoch;
use std::sync::{Arc, Mutex, OnceLock};

/// Errors of volume I/O. [`VolumeError::errno`] maps them for the block layer.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("buffer of {buf} bytes for a {len}-byte request")]
    BufferSize { buf: usize, len: u64 },
    #[error("no space left on any tier for a new {bytes}-byte shard")]
    NoSpace { bytes: u64 },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("table: {0}")]
    Table(#[from] TableError),
}

impl VolumeError {
    /// The errno a block device reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            VolumeError::Range(_) | VolumeError::BufferSize { .. } => libc::EINVAL,
            VolumeError::NoSpace { .. } => libc::ENOSPC,
            VolumeError::Io(e) => e.errno().unwrap_or(libc::EIO),
            VolumeError::Meta(MetaError::Full { .. }) => libc::ENOSPC,
            VolumeError::Meta(_) | VolumeError::Table(_) => libc::EIO,
        }
    }
}

/// The shared state of one volume (one per volume per pool).
pub struct VolumeShared {
    pub id: u32,
    pub name: String,
    pub table: ShardTable,
    pub stats: AccessStats,
    policy: Mutex<TierPolicy>,
    /// Serialises administration (resize, delete) of this volume.
    pub(crate) admin: Mutex<()>,
}

impl VolumeShared {
    /// Build the in-memory volume from its persistent mappings
    /// `(logical_unit, len_units, tier, phys_unit)`.
    pub fn load(
        id: u32,
        name: &str,
        size_bytes: u64,
        shard_size_bytes: u64,
        policy: TierPolicy,
        maps: &[(u64, u64, u8, u64)],
    ) -> Result<VolumeShared, TableError> {
        let table = ShardTable::new(size_bytes, shard_size_bytes)?;
        let slot_units = table.slot_units();
        // Cut every mapping at slot boundaries, grouped by slot.
        let mut pieces: Vec<(u64, u64, u64, u8, u64)> = Vec::new(); // slot, unit in slot, len, tier, phys
        for &(logical, len, tier, phys) in maps {
            let mut at = logical;
            while at < logical + len {
                let slot = at / slot_units;
                let n = (logical + len - at).min((slot + 1) * slot_units - at);
                pieces.push((slot, at - slot * slot_units, n, tier, phys + (at - logical)));
                at += n;
            }
        }
        pieces.sort_unstable();
        let guard = epoch::pin();
        let mut i = 0;
        while i < pieces.len() {
            let slot = pieces[i].0;
            let j = pieces[i..]
                .iter()
                .position(|p| p.0 != slot)
                .map_or(pieces.len(), |k| i + k);
            let group = &pieces[i..j];
            let whole = group.len() == 1 && group[0].1 == 0 && group[0].2 == slot_units;
            if whole {
                let (_, _, len, tier, phys) = group[0];
                table.try_map(
                    slot,
                    Entry::mapped(tier as usize, phys, len.trailing_zeros())?,
                )?;
            } else {
                // Child granularity: the largest power of two dividing every
                // piece's offset, length and physical start.
                let g = group
                    .iter()
                    .map(|p| (p.1 | p.2 | p.4 | slot_units).trailing_zeros())
                    .min()
                    .expect("non-empty group");
                let child_units = 1u64 << g;
                table.split(slot, (slot_units / child_units) as u32, &guard)?;
                for &(_, off, len, tier, phys) in group {
                    for k in 0..len / child_units {
                        let child = ((off / child_units) + k) as u32;
                        let e = Entry::mapped(tier as usize, phys + k * child_units, g)?;
                        let loc = Loc::child(slot, child, (slot_units / child_units) as u32);
                        table.try_map_at(loc, e, &guard)?;
                    }
                }
            }
            i = j;
        }
        Ok(VolumeShared {
            id,
            name: name.to_string(),
            stats: AccessStats::new(shard_size_bytes),
            table,
            policy: Mutex::new(policy),
            admin: Mutex::new(()),
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.table.size_bytes()
    }
    pub(crate) fn set_size(&self, size: u64) {
        self.table
            .resize(size)
            .expect("size validated by the pool; mapped slots beyond it were unmapped");
    }
    pub fn policy(&self) -> TierPolicy {
        self.policy.lock().expect("policy lock").clone()
    }
    pub(crate) fn set_policy(&self, p: TierPolicy) {
        *self.policy.lock().expect("policy lock") = p;
    }
    /// Mapped bytes at or beyond byte `from` (whole slots and children).
    pub fn mapped_bytes_from(&self, from: u64) -> u64 {
        let from_unit = from / UNIT_SIZE_BYTES;
        let mut n = 0;
        self.table.for_each_mapped(|unit, len, _| {
            let end = unit + len;
            if end > from_unit {
                n += (end - unit.max(from_unit)) * UNIT_SIZE_BYTES;
            }
        });
        n
    }
}

/// A mapped part of a write ([`Volume::map_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePiece {
    /// Offset in the request's buffer.
    pub buf_offset: u64,
    pub len: u64,
    pub tier: usize,
    pub device_byte_offset: u64,
    pub slot: u64,
    pub offset_in_slot: u64,
}

/// A zero-filled buffer shared by every zeroing write.
fn zeroes() -> &'static AlignedBuf {
    static Z: OnceLock<AlignedBuf> = OnceLock::new();
    Z.get_or_init(|| AlignedBuf::new(MIGRATE_CHUNK_BYTES as usize))
}

/// Queue writes of `len` zero bytes at `offset` of `dev`, in chunks of the
/// shared zero buffer.
fn push_zeroes<'a>(ops: &mut Vec<IoOp<'a>>, dev: DevIndex, offset: u64, len: u64) {
    let mut at = 0;
    while at < len {
        let k = (len - at).min(MIGRATE_CHUNK_BYTES);
        ops.push(IoOp::write(dev, offset + at, &zeroes()[..k as usize]));
        at += k;
    }
}

/// A handle for I/O on one volume. Clone it per thread; each thread brings
/// its own engine.
#[derive(Clone)]
pub struct Volume {
    pool: Pool,
    v: Arc<VolumeShared>,
    data_start: [u64; TIERS_MAX],
}

impl Volume {
    pub(crate) fn new(pool: Pool, v: Arc<VolumeShared>) -> Volume {
        let mut data_start = [0; TIERS_MAX];
        for (i, t) in pool.tiers().iter().enumerate() {
            data_start[i] = t.data_start;
        }
        Volume {
            pool,
            v,
            data_start,
        }
    }

    pub fn name(&self) -> &str {
        &self.v.name
    }
    pub fn id(&self) -> u32 {
        self.v.id
    }
    pub fn size_bytes(&self) -> u64 {
        self.v.size_bytes()
    }
    pub fn shard_size(&self) -> u64 {
        self.v.table.shard_size()
    }
    pub fn shared(&self) -> &Arc<VolumeShared> {
        &self.v
    }
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
    /// Byte offset of unit 0 on each tier's device.
    pub fn data_start(&self) -> &[u64; TIERS_MAX] {
        &self.data_start
    }
    fn shared_pool(&self) -> &PoolShared {
        &self.pool.inner
    }

    /// Translate a read of `len` bytes at `offset` into pieces, for callers
    /// that submit the I/O themselves (the ublk queue thread, benches): one
    /// atomic load per slot, access statistics recorded, no allocation. The
    /// caller keeps `guard` pinned until the reads of the mapped pieces have
    /// completed, and fills unmapped pieces with zeros.
    pub fn map_read(
        &self,
        guard: &epoch::Guard,
        offset: u64,
        len: u64,
        mut f: impl FnMut(Piece),
    ) -> Result<(), VolumeError> {
        let shard = self.shard_size();
        for p in resolve(&self.v.table, guard, offset, len, &self.data_start)? {
            self.v
                .stats
                .record(p.slot, (offset + p.buf_offset) % shard, p.len, true);
            f(p);
        }
        Ok(())
    }

    /// Enter the table's writers for a write of `len` bytes at `offset`, for
    /// callers that submit the I/O themselves (the ublk queue thread). When
    /// every byte lies in an already mapped entry, fills `out[..n]` with the
    /// pieces (in order, covering the range) and their tickets and returns
    /// `Some(n)`: the caller writes each piece at its device offset, then
    /// drops the tickets (ending the writes) and `guard`. Returns `None`,
    /// holding nothing, when part of the range is unmapped (a first write,
    /// which must map an extent: use [`Volume::write`], the synchronous
    /// path), when an entry's writer count is saturated, or when the range
    /// needs more than `out.len()` pieces. No allocation; access statistics
    /// are recorded only when `Some` is returned.
    pub fn map_write<'g>(
        &'g self,
        guard: &'g epoch::Guard,
        offset: u64,
        len: u64,
        out: &mut [Option<(WritePiece, WriteTicket<'g>)>],
    ) -> Result<Option<usize>, VolumeError> {
        validate_range(offset, len, self.size_bytes())?;
        let table = &self.v.table;
        let shard = self.shard_size();
        let mut n = 0;
        let give_up = |out: &mut [Option<(WritePiece, WriteTicket<'g>)>]| {
            out.iter_mut().for_each(|s| *s = None);
            Ok(None)
        };
        for seg in segments(offset, len, shard) {
            let mut done = 0u64;
            while done < seg.len {
                let off_in_slot = seg.offset_in_slot + done;
                match table.writer_enter_at(seg.slot, off_in_slot, guard)? {
                    WriteEnter::Entered(t) => {
                        if n == out.len() {
                            drop(t);
                            return give_up(out);
                        }
                        let e = t.entry();
                        let (start, k) =
                            Self::span_in_entry(t.loc(), e, off_in_slot, seg.len - done);
                        let piece = WritePiece {
                            buf_offset: seg.buf_offset + done,
                            len: k,
                            tier: e.tier(),
                            device_byte_offset: e.device_byte_offset(self.data_start[e.tier()])
                                + (off_in_slot - start),
                            slot: seg.slot,
                            offset_in_slot: off_in_slot,
                        };
                        out[n] = Some((piece, t));
                        n += 1;
                        done += k;
                    }
                    WriteEnter::Unmapped { .. } | WriteEnter::Saturated => return give_up(out),
                    WriteEnter::Split(_) | WriteEnter::Reshaped => {}
                }
            }
        }
        for (p, _) in out[..n].iter().flatten() {
            self.v.stats.record(p.slot, p.offset_in_slot, p.len, false);
        }
        Ok(Some(n))
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read(
        &self,
        eng: &mut dyn IoEngine,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), VolumeError> {
        let guard = epoch::pin();
        let mut ops: Vec<IoOp<'_>> = Vec::new();
        let mut rest: &mut [u8] = buf;
        let len = rest.len() as u64;
        self.map_read(&guard, offset, len, |p| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(p.len as usize);
            rest = tail;
            match p.kind {
                PieceKind::Unmapped => head.fill(0),
                PieceKind::Mapped {
                    tier,
                    device_byte_offset,
                } => ops.push(IoOp::read(DevIndex(tier as u16), device_byte_offset, head)),
            }
        })?;
        eng.run_all(&mut ops)?;
        drop(guard);
        Ok(())
    }

    /// Write `buf` at `offset`. Durable after the next [`Volume::flush`].
    pub fn write(
        &self,
        eng: &mut dyn IoEngine,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), VolumeError> {
        validate_range(offset, buf.len() as u64, self.size_bytes())?;
        self.write_inner(eng, offset, buf.len() as u64, Some(buf))
    }

    /// Write with FUA semantics: durable, mapping included, when it returns.
    pub fn write_fua(
        &self,
        eng: &mut dyn IoEngine,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), VolumeError> {
        self.write(eng, offset, buf)?;
        self.flush()
    }

    /// FLUSH: every write completed before this call, and every mapping it
    /// created, survives a crash.
    pub fn flush(&self) -> Result<(), VolumeError> {
        self.pool.commit().map_err(|e| match e {
            CommitError::Io(e) => VolumeError::Io(e),
            CommitError::Meta(e) => VolumeError::Meta(e),
        })
    }

    /// The write path; `data: None` writes zeros (write-zeroes of partial shards).
    fn write_inner(
        &self,
        eng: &mut dyn IoEngine,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<(), VolumeError> {
        let guard = epoch::pin();
        let table = &self.v.table;
        let shard = self.shard_size();
        let mut ops: Vec<IoOp<'_>> = Vec::new();
        let mut tickets: Vec<WriteTicket<'_>> = Vec::new();
        for seg in segments(offset, len, shard) {
            let mut done = 0u64;
            while done < seg.len {
                let off_in_slot = seg.offset_in_slot + done;
                let buf_off = (seg.buf_offset + done) as usize;
                match table.writer_enter_at(seg.slot, off_in_slot, &guard)? {
                    WriteEnter::Entered(t) => {
                        let e = t.entry();
                        let (start, n) =
                            Self::span_in_entry(t.loc(), e, off_in_slot, seg.len - done);
                        let dev_off =
                            e.device_byte_offset(self.data_start[e.tier()]) + (off_in_slot - start);
                        let dev = DevIndex(e.tier() as u16);
                        match data {
                            Some(d) => ops.push(IoOp::write(
                                dev,
                                dev_off,
                                &d[buf_off..buf_off + n as usize],
                            )),
                            None => push_zeroes(&mut ops, dev, dev_off, n),
                        }
                        self.v.stats.record(seg.slot, off_in_slot, n, false);
                        tickets.push(t);
                        done += n;
                    }
                    WriteEnter::Unmapped { loc, len_units } => {
                        let entry_bytes = len_units * UNIT_SIZE_BYTES;
                        let start = loc.child.map_or(0, |c| u64::from(c.index) * entry_bytes);
                        let n = (start + entry_bytes - off_in_slot).min(seg.len - done);
                        let Some(d) = data else {
                            // Zeroing an unmapped range: it already reads as zeros.
                            done += n;
                            continue;
                        };
                        if self.map_and_write(
                            eng,
                            &guard,
                            loc,
                            len_units,
                            off_in_slot - start,
                            &d[buf_off..buf_off + n as usize],
                        )? {
                            self.v.stats.record(seg.slot, off_in_slot, n, false);
                            done += n;
                        }
                    }
                    WriteEnter::Saturated => {
                        // Our own tickets fill the count: finish what we have.
                        eng.run_all(&mut ops)?;
                        ops.clear();
                        tickets.clear();
                        std::thread::yield_now();
                    }
                    WriteEnter::Split(_) | WriteEnter::Reshaped => {}
                }
            }
        }
        let r = eng.run_all(&mut ops);
        drop(ops);
        drop(tickets);
        drop(guard);
        r.map_err(VolumeError::from)
    }

    /// The part of `[off_in_slot, off_in_slot+want)` inside the entry at `loc`:
    /// returns (entry start in slot, bytes).
    fn span_in_entry(loc: Loc, e: Entry, off_in_slot: u64, want: u64) -> (u64, u64) {
        let bytes = e.len_bytes();
        let start = loc.child.map_or(0, |c| u64::from(c.index) * bytes);
        (start, (start + bytes - off_in_slot).min(want))
    }

    /// Map an unmapped entry with a fresh extent holding `data` at
    /// `off_in_entry` and zeros elsewhere. Returns false when another writer
    /// won the race (the caller retries into its extent).
    fn map_and_write(
        &self,
        eng: &mut dyn IoEngine,
        guard: &epoch::Guard,
        loc: Loc,
        len_units: u64,
        off_in_entry: u64,
        data: &[u8],
    ) -> Result<bool, VolumeError> {
        let pool = self.shared_pool();
        let _barrier = pool.commit_barrier.read().expect("commit barrier");
        let birth = self.v.policy().birth_tier();
        let (tier, first) =
            self.pool
                .alloc_extent(birth, len_units)
                .ok_or(VolumeError::NoSpace {
                    bytes: len_units * UNIT_SIZE_BYTES,
                })?;
        let base = self.data_start[tier] + first * UNIT_SIZE_BYTES;
        let ext_bytes = len_units * UNIT_SIZE_BYTES;
        let dev = DevIndex(tier as u16);
        let mut ops = Vec::new();
        // The data, and zeroes around it: the rest of a new shard reads as zeros.
        push_zeroes(&mut ops, dev, base, off_in_entry);
        ops.push(IoOp::write(dev, base + off_in_entry, data));
        let after = off_in_entry + data.len() as u64;
        push_zeroes(&mut ops, dev, base + after, ext_bytes - after);
        if let Err(e) = eng.run_all(&mut ops) {
            self.pool.free_now(tier, first, len_units);
            return Err(e.into());
        }
        let entry = Entry::mapped(tier, first, len_units.trailing_zeros())?;
        let published = self.v.table.try_map_at(loc, entry, guard);
        match published {
            Ok(()) => {
                let logical_unit = loc.slot * self.v.table.slot_units()
                    + loc.child.map_or(0, |c| u64::from(c.index) * len_units);
                pool.meta.append(Record::Map {
                    vol: self.v.id,
                    logical_unit,
                    len_units,
                    tier: tier as u8,
                    phys_unit: first,
                })?;
                Ok(true)
            }
            Err(
                TableError::Lost(_)
                | TableError::Reshaped
                | TableError::NotSplit(_)
                | TableError::IsSplit,
            ) => {
                // Never published: nobody can have seen it.
                self.pool.free_now(tier, first, len_units);
                Ok(false)
            }
            Err(e) => {
                self.pool.free_now(tier, first, len_units);
                Err(e.into())
            }
        }
    }

    /// DISCARD: whole shards in the range are unmapped; the rest is left.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        validate_range(offset, len, self.size_bytes())?;
        self.unmap_whole(offset, len, false).map(|_| ())
    }

    /// WRITE_ZEROES: the range reads as zeros afterwards.
    pub fn write_zeroes(
        &self,
        eng: &mut dyn IoEngine,
        offset: u64,
        len: u64,
    ) -> Result<(), VolumeError> {
        validate_range(offset, len, self.size_bytes())?;
        let leftovers = self.unmap_whole(offset, len, true)?;
        for (o, l) in leftovers {
            self.write_inner(eng, o, l, None)?;
        }
        Ok(())
    }

    /// Unmap every entry (slot or child) wholly inside the range. Returns the
    /// sub-ranges not unmapped (partial entries, or entries busy with writers
    /// or a migration), when `collect` is set.
    fn unmap_whole(
        &self,
        offset: u64,
        len: u64,
        collect: bool,
    ) -> Result<Vec<(u64, u64)>, VolumeError> {
        let guard = epoch::pin();
        let table = &self.v.table;
        let shard = self.shard_size();
        let mut rest = Vec::new();
        for seg in segments(offset, len, shard) {
            let slot_base = seg.slot * shard;
            let mut at = seg.offset_in_slot;
            let end = seg.offset_in_slot + seg.len;
            while at < end {
                let view = table.load(seg.slot, &guard)?;
                let (loc, start, bytes) = match view {
                    crate::volume::table::SlotView::Split(sv) => {
                        let j = sv.child_index(at);
                        (
                            Loc::child(seg.slot, j, sv.len()),
                            u64::from(j) * sv.child_bytes(),
                            sv.child_bytes(),
                        )
                    }
                    _ => (Loc::slot(seg.slot), 0, shard),
                };
                let n = (start + bytes - at).min(end - at);
                let whole = at == start && n == bytes;
                if whole {
                    match table.try_unmap(loc, &guard) {
                        Ok(old) => self.released(loc, old, &guard)?,
                        Err(TableError::Unmapped) => {}
                        Err(
                            TableError::Reshaped | TableError::IsSplit | TableError::NotSplit(_),
                        ) => continue,
                        Err(_) if collect => rest.push((slot_base + at, n)),
                        Err(_) => {}
                    }
                } else if collect {
                    rest.push((slot_base + at, n));
                }
                at += n;
            }
        }
        Ok(rest)
    }

    /// Log that `loc` no longer holds `old`'s extent and free the extent once
    /// that is durable and no reader can see it.
    fn released(&self, loc: Loc, old: Entry, guard: &epoch::Guard) -> Result<(), VolumeError> {
        let len_units = old.len_units();
        let logical_unit = loc.slot * self.v.table.slot_units()
            + loc.child.map_or(0, |c| u64::from(c.index) * len_units);
        let lsn = self.shared_pool().meta.append(Record::Unmap {
            vol: self.v.id,
            logical_unit,
            len_units,
        })?;
        self.pool
            .free_after(guard, lsn, old.tier(), old.first_unit(), len_units);
        Ok(())
    }

    /// Unmap everything from byte `from` (rounded up to a slot) to the end,
    /// waiting for writers to drain. Used by shrink and delete.
    pub(crate) fn unmap_from(&self, from: u64) -> Result<(), VolumeError> {
        let shard = self.shard_size();
        let start = from.next_multiple_of(shard);
        let end = self.v.table.slots() * shard;
        if start >= end {
            return Ok(());
        }
        loop {
            let left = self.unmap_whole(start, end - start, true)?;
            if left.is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Logical bytes per block, for callers that size buffers.
    pub const BLOCK: u64 = BLOCK_SIZE_BYTES;
}
