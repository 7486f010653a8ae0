//! Shard lifecycle operations beyond map and unmap: migrate an entry to
//! another tier (copy, then atomic switch), split a slot into children, and
//! merge children back.
//!
//! Contract:
//! - [`migrate`] never blocks writers: it copies while writes continue, and
//!   its switch succeeds only if no write entered or was in flight since the
//!   copy began (the table's DIRTY/writer protocol); otherwise it copies again,
//!   up to `MIGRATE_RETRIES_MAX` times, then gives up and frees the new extent.
//!   The copy is synced on the target device before the `Map` record is
//!   appended, so the record can never become durable ahead of the data; the
//!   old extent is freed only after that record is durable and no reader can
//!   still see it.
//! - [`split`] is zero copy and writes no record (the persistent mapping is
//!   unchanged); children then migrate or unmap on their own.
//! - [`merge`] collapses a split slot whose children are contiguous on one
//!   tier (zero copy, no record); with `copy` it first migrates the children
//!   into one newly allocated extent on their tier.
//! - Conflicts with concurrent I/O or other lifecycle operations are normal
//!   outcomes ([`Outcome::Skipped`]), not errors.

use crate::constants::{MIGRATE_CHUNK_BYTES, MIGRATE_RETRIES_MAX, UNIT_SIZE_BYTES};
use crate::io::{AlignedBuf, DevIndex, IoEngine, IoOp};
use crate::shard::meta::Record;
use crate::volume::handle::{Volume, VolumeError};
use crate::volume::table::{Entry, Loc, SlotView, TableError};
use crossbeam_epoch as epoch;

/// What a lifecycle operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Skipped(&'static str),
}

/// Copy `len` bytes between two device locations in chunks.
fn copy_extent(
    eng: &mut dyn IoEngine,
    buf: &mut AlignedBuf,
    from: (usize, u64),
    to: (usize, u64),
    len: u64,
) -> Result<(), VolumeError> {
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        eng.run_all(&mut [IoOp::read(
            DevIndex(from.0 as u16),
            from.1 + at,
            &mut buf[..n],
        )])?;
        eng.run_all(&mut [IoOp::write(DevIndex(to.0 as u16), to.1 + at, &buf[..n])])?;
        at += n as u64;
    }
    Ok(())
}

/// Logical unit of the entry at `loc` whose extent has `len_units` units.
fn logical_unit(vol: &Volume, loc: Loc, len_units: u64) -> u64 {
    loc.slot * vol.shared().table.slot_units()
        + loc.child.map_or(0, |c| u64::from(c.index) * len_units)
}

/// Migrate the entry at `loc` to `to_tier`, into a fresh extent there.
pub fn migrate(
    vol: &Volume,
    eng: &mut dyn IoEngine,
    loc: Loc,
    to_tier: usize,
) -> Result<Outcome, VolumeError> {
    let Some(len_units) = current_len(vol, loc) else {
        return Ok(Outcome::Skipped("not mapped"));
    };
    let Some(first) = vol.pool().alloc_on(to_tier, len_units) else {
        return Ok(Outcome::Skipped("no space on the target tier"));
    };
    migrate_into(vol, eng, loc, to_tier, first, len_units)
}

fn current_len(vol: &Volume, loc: Loc) -> Option<u64> {
    let guard = epoch::pin();
    let e = vol.shared().table.load_entry(loc, &guard).ok()?;
    e.is_mapped().then(|| e.len_units())
}

/// Migrate the entry at `loc` into the already allocated extent
/// `(to_tier, first, len_units)`; on any outcome but `Done` that extent is freed.
fn migrate_into(
    vol: &Volume,
    eng: &mut dyn IoEngine,
    loc: Loc,
    to_tier: usize,
    first: u64,
    len_units: u64,
) -> Result<Outcome, VolumeError> {
    let pool = vol.pool();
    let table = &vol.shared().table;
    let guard = epoch::pin();
    let free_new = || pool.free_now(to_tier, first, len_units);
    let old = match table.begin_migrate(loc, &guard) {
        Ok(e) => e,
        Err(_) => {
            // Unmapped, split, already migrating, or reshaped meanwhile.
            free_new();
            return Ok(Outcome::Skipped("entry busy or changed"));
        }
    };
    if old.len_units() != len_units {
        let _ = table.abort_migrate(loc, old, &guard);
        free_new();
        return Ok(Outcome::Skipped("entry reshaped"));
    }
    if old.tier() == to_tier {
        let _ = table.abort_migrate(loc, old, &guard);
        free_new();
        return Ok(Outcome::Skipped("already on that tier"));
    }
    let new = Entry::mapped(to_tier, first, old.size_log2())?;
    let bytes = len_units * UNIT_SIZE_BYTES;
    let from = (
        old.tier(),
        old.device_byte_offset(vol.data_start()[old.tier()]),
    );
    let to = (to_tier, new.device_byte_offset(vol.data_start()[to_tier]));
    let mut buf = AlignedBuf::new(bytes.min(MIGRATE_CHUNK_BYTES) as usize);
    for _ in 0..MIGRATE_RETRIES_MAX {
        if let Err(e) = copy_extent(eng, &mut buf, from, to, bytes) {
            let _ = table.abort_migrate(loc, old, &guard);
            free_new();
            return Err(e);
        }
        if let Err(e) = pool.tiers()[to_tier].dev.sync() {
            let _ = table.abort_migrate(loc, old, &guard);
            free_new();
            return Err(e.into());
        }
        match table.finish_migrate(loc, old, new, &guard) {
            Ok(()) => {
                let lsn = pool.inner.meta.append(Record::Map {
                    vol: vol.id(),
                    logical_unit: logical_unit(vol, loc, len_units),
                    len_units,
                    tier: to_tier as u8,
                    phys_unit: first,
                })?;
                pool.free_after(&guard, lsn, old.tier(), old.first_unit(), len_units);
                return Ok(Outcome::Done);
            }
            Err(TableError::Dirty | TableError::WritersInFlight(_)) => loop {
                match table.clear_dirty(loc, old, &guard) {
                    Ok(()) => break,
                    Err(TableError::WritersInFlight(_)) => std::thread::yield_now(),
                    Err(_) => {
                        free_new();
                        return Ok(Outcome::Skipped("entry changed during the copy"));
                    }
                }
            },
            Err(_) => {
                free_new();
                return Ok(Outcome::Skipped("entry changed during the copy"));
            }
        }
    }
    let _ = table.abort_migrate(loc, old, &guard);
    free_new();
    Ok(Outcome::Skipped("written continuously during every copy"))
}

/// Split `slot` into `n_children` children (zero copy).
pub fn split(vol: &Volume, slot: u64, n_children: u32) -> Result<Outcome, VolumeError> {
    let guard = epoch::pin();
    match vol.shared().table.split(slot, n_children, &guard) {
        Ok(()) => Ok(Outcome::Done),
        Err(TableError::BadSplit(why)) => Err(VolumeError::Table(TableError::BadSplit(why))),
        Err(TableError::OutOfRange { slot, slots }) => {
            Err(VolumeError::Table(TableError::OutOfRange { slot, slots }))
        }
        Err(_) => Ok(Outcome::Skipped("slot busy, migrating or already split")),
    }
}

/// Merge a split slot back into one entry. With `copy`, children that are
/// on one tier but not contiguous are first migrated into one new extent.
pub fn merge(
    vol: &Volume,
    eng: &mut dyn IoEngine,
    slot: u64,
    copy: bool,
) -> Result<Outcome, VolumeError> {
    let table = &vol.shared().table;
    {
        let guard = epoch::pin();
        match table.try_merge(slot, &guard) {
            Ok(_) => return Ok(Outcome::Done),
            Err(TableError::NotMergeable(_)) if copy => {}
            Err(_) => return Ok(Outcome::Skipped("not mergeable")),
        }
    }
    // Copy-merge: every child mapped on one tier.
    let children: Vec<Entry> = {
        let guard = epoch::pin();
        match table.load(slot, &guard)? {
            SlotView::Split(sv) => (0..sv.len()).map(|j| sv.child(j).mapping()).collect(),
            _ => return Ok(Outcome::Skipped("not split")),
        }
    };
    if children.iter().any(|c| !c.is_mapped()) {
        return Ok(Outcome::Skipped("a child is unmapped"));
    }
    let tier = children[0].tier();
    if children.iter().any(|c| c.tier() != tier) {
        return Ok(Outcome::Skipped("children on different tiers"));
    }
    let child_units = children[0].len_units();
    let total = child_units * children.len() as u64;
    let Some(first) = vol.pool().alloc_on(tier, total) else {
        return Ok(Outcome::Skipped("no contiguous space on the tier"));
    };
    for (j, _) in children.iter().enumerate() {
        let target = first + j as u64 * child_units;
        // Each child's part of the new extent is freed by migrate_into on failure.
        if migrate_into(
            vol,
            eng,
            Loc::child(slot, j as u32, children.len() as u32),
            tier,
            target,
            child_units,
        )? != Outcome::Done
        {
            for k in j + 1..children.len() {
                vol.pool()
                    .free_now(tier, first + k as u64 * child_units, child_units);
            }
            return Ok(Outcome::Skipped("a child changed during the copy-merge"));
        }
    }
    let guard = epoch::pin();
    match table.try_merge(slot, &guard) {
        Ok(_) => Ok(Outcome::Done),
        Err(_) => Ok(Outcome::Skipped("children changed after the copy")),
    }
}

/// Every mapped entry of a volume as `(loc, entry)`, children included.
pub fn entries(vol: &Volume) -> Vec<(Loc, Entry)> {
    let slot_units = vol.shared().table.slot_units();
    let mut out = Vec::new();
    vol.shared().table.for_each_mapped(|unit, len, e| {
        let slot = unit / slot_units;
        let loc = if len == slot_units {
            Loc::slot(slot)
        } else {
            Loc::child(
                slot,
                ((unit % slot_units) / len) as u32,
                (slot_units / len) as u32,
            )
        };
        out.push((loc, e.mapping()));
    });
    out
}
