//! Request splitting: a byte range of a volume cut into per-slot segments, and
//! resolved through the [`ShardTable`] into physical pieces.
//!
//! Contract:
//! - Pure: no I/O, no clock, no allocation (both iterators are plain
//!   structs on the caller's stack).
//! - [`segments`] yields, in order, the parts of `[offset, offset+len)` that
//!   fall in one slot each; they cover the range exactly, without overlap.
//! - [`resolve`] validates the range ([`validate_range`]: block aligned,
//!   non-empty, inside the volume) and yields [`Piece`]s in order, covering
//!   the range exactly; a piece never crosses a slot or split-child boundary.
//!   Each slot is loaded once (`Acquire`), each touched child once. The
//!   caller holds the epoch guard while it uses the pieces (the read I/O),
//!   so the extents they name are not reused meanwhile.
//! - Device offsets: a piece mapped on tier `t` at unit `u` reads at
//!   `data_start[t] + u * UNIT + offset within the extent`; `data_start` is
//!   where each tier device's unit 0 begins (today
//!   [`DATA_START_RESERVED_HEAD`]; a per-tier data-area base can be passed
//!   without changing this module).

use crate::constants::{BLOCK_SIZE_BYTES, DEVICE_RESERVED_HEAD_BYTES, TIERS_MAX};
use crate::volume::table::{Entry, ShardTable, SlotView, SplitView};
use crossbeam_epoch::Guard;

/// Unit 0 of every tier device right after its reserved head.
pub const DATA_START_RESERVED_HEAD: [u64; TIERS_MAX] = [DEVICE_RESERVED_HEAD_BYTES; TIERS_MAX];

/// A request range that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("empty range at offset {offset}")]
    Empty { offset: u64 },
    #[error("range offset {offset} length {len} is not {BLOCK_SIZE_BYTES}-byte aligned")]
    Misaligned { offset: u64, len: u64 },
    #[error("range offset {offset} length {len} ends beyond the volume's {size} bytes")]
    BeyondEnd { offset: u64, len: u64, size: u64 },
}

/// Check that `[offset, offset+len)` is non-empty, block aligned and inside a
/// volume of `size_bytes`.
pub fn validate_range(offset: u64, len: u64, size_bytes: u64) -> Result<(), RangeError> {
    if len == 0 {
        return Err(RangeError::Empty { offset });
    }
    if offset % BLOCK_SIZE_BYTES != 0 || len % BLOCK_SIZE_BYTES != 0 {
        return Err(RangeError::Misaligned { offset, len });
    }
    match offset.checked_add(len) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(RangeError::BeyondEnd {
            offset,
            len,
            size: size_bytes,
        }),
    }
}

/// The part of a request inside one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub slot: u64,
    pub offset_in_slot: u64,
    pub len: u64,
    /// Offset of this segment in the request's buffer.
    pub buf_offset: u64,
}

/// Iterator over the [`Segment`]s of a range; see [`segments`].
#[derive(Debug, Clone)]
pub struct Segments {
    pos: u64,
    end: u64,
    start: u64,
    shard_log2: u32,
}

/// Cut `[offset, offset+len)` into per-slot segments of `shard_size` (a power
/// of two). The range must not overflow `u64` (validated ranges never do).
pub fn segments(offset: u64, len: u64, shard_size: u64) -> Segments {
    debug_assert!(shard_size.is_power_of_two());
    let end = offset.checked_add(len).expect("range overflows u64");
    Segments {
        pos: offset,
        end,
        start: offset,
        shard_log2: shard_size.trailing_zeros(),
    }
}

impl Iterator for Segments {
    type Item = Segment;
    fn next(&mut self) -> Option<Segment> {
        if self.pos >= self.end {
            return None;
        }
        let slot = self.pos >> self.shard_log2;
        let offset_in_slot = self.pos & ((1 << self.shard_log2) - 1);
        let slot_end = (slot + 1) << self.shard_log2;
        let len = slot_end.min(self.end) - self.pos;
        let seg = Segment {
            slot,
            offset_in_slot,
            len,
            buf_offset: self.pos - self.start,
        };
        self.pos += len;
        Some(seg)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.pos >= self.end {
            return (0, Some(0));
        }
        let n = ((self.end - 1) >> self.shard_log2) - (self.pos >> self.shard_log2) + 1;
        (n as usize, Some(n as usize))
    }
}

/// Where a piece of a request lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// Nothing mapped: reads return zeros.
    Unmapped,
    /// On `tier`'s device at `device_byte_offset`.
    Mapped {
        tier: usize,
        device_byte_offset: u64,
    },
}

/// A run of a request that maps to one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Offset in the request's buffer.
    pub buf_offset: u64,
    pub len: u64,
    /// The slot it lies in (for per-shard statistics).
    pub slot: u64,
    pub kind: PieceKind,
}

/// Iterator over the [`Piece`]s of a validated range; see [`resolve`].
pub struct Pieces<'g> {
    table: &'g ShardTable,
    guard: &'g Guard,
    segs: Segments,
    data_start: [u64; TIERS_MAX],
    /// The rest of a segment in a split slot still to be cut by child.
    pending: Option<(SplitView<'g>, Segment)>,
}

/// Validate `[offset, offset+len)` against `table`'s size and resolve it
/// into physical pieces. `data_start[t]` is the byte offset of unit 0 on tier
/// `t`'s device.
pub fn resolve<'g>(
    table: &'g ShardTable,
    guard: &'g Guard,
    offset: u64,
    len: u64,
    data_start: &[u64; TIERS_MAX],
) -> Result<Pieces<'g>, RangeError> {
    validate_range(offset, len, table.size_bytes())?;
    Ok(Pieces {
        table,
        guard,
        segs: segments(offset, len, table.shard_size()),
        data_start: *data_start,
        pending: None,
    })
}

impl Pieces<'_> {
    fn kind(&self, e: Entry, offset_in_extent: u64) -> PieceKind {
        if e.is_mapped() {
            let tier = e.tier();
            PieceKind::Mapped {
                tier,
                device_byte_offset: e.device_byte_offset(self.data_start[tier]) + offset_in_extent,
            }
        } else {
            PieceKind::Unmapped
        }
    }
}

impl<'g> Pieces<'g> {
    /// The piece of `seg` inside the child covering its start; keeps the rest.
    fn child_piece(&mut self, view: SplitView<'g>, seg: Segment) -> Piece {
        let j = view.child_index(seg.offset_in_slot);
        let child_start = u64::from(j) * view.child_bytes();
        let len = seg
            .len
            .min(child_start + view.child_bytes() - seg.offset_in_slot);
        let kind = self.kind(view.child(j), seg.offset_in_slot - child_start);
        if len < seg.len {
            let rest = Segment {
                slot: seg.slot,
                offset_in_slot: seg.offset_in_slot + len,
                len: seg.len - len,
                buf_offset: seg.buf_offset + len,
            };
            self.pending = Some((view, rest));
        }
        Piece {
            buf_offset: seg.buf_offset,
            len,
            slot: seg.slot,
            kind,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = Piece;
    fn next(&mut self) -> Option<Piece> {
        if let Some((view, seg)) = self.pending.take() {
            return Some(self.child_piece(view, seg));
        }
        let seg = self.segs.next()?;
        match self.table.load_unchecked(seg.slot, self.guard) {
            SlotView::Unmapped => Some(Piece {
                buf_offset: seg.buf_offset,
                len: seg.len,
                slot: seg.slot,
                kind: PieceKind::Unmapped,
            }),
            SlotView::Mapped(e) => Some(Piece {
                buf_offset: seg.buf_offset,
                len: seg.len,
                slot: seg.slot,
                kind: self.kind(e, seg.offset_in_slot),
            }),
            SlotView::Split(view) => Some(self.child_piece(view, seg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::UNIT_SIZE_BYTES;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn segments_cut_at_slot_boundaries() {
        let segs: Vec<Segment> = segments(MIB - 4096, 2 * MIB + 8192, MIB).collect();
        assert_eq!(
            segs,
            vec![
                Segment {
                    slot: 0,
                    offset_in_slot: MIB - 4096,
                    len: 4096,
                    buf_offset: 0
                },
                Segment {
                    slot: 1,
                    offset_in_slot: 0,
                    len: MIB,
                    buf_offset: 4096
                },
                Segment {
                    slot: 2,
                    offset_in_slot: 0,
                    len: MIB,
                    buf_offset: MIB + 4096
                },
                Segment {
                    slot: 3,
                    offset_in_slot: 0,
                    len: 4096,
                    buf_offset: 2 * MIB + 4096
                },
            ]
        );
        assert_eq!(
            segments(MIB - 4096, 2 * MIB + 8192, MIB).size_hint(),
            (4, Some(4))
        );
        assert_eq!(segments(0, 0, MIB).count(), 0);
    }

    #[test]
    fn validate_rejects_bad_ranges() {
        assert_eq!(
            validate_range(0, 0, MIB),
            Err(RangeError::Empty { offset: 0 })
        );
        assert!(matches!(
            validate_range(512, 4096, MIB),
            Err(RangeError::Misaligned { .. })
        ));
        assert!(matches!(
            validate_range(0, 4095, MIB),
            Err(RangeError::Misaligned { .. })
        ));
        assert!(matches!(
            validate_range(MIB - 4096, 8192, MIB),
            Err(RangeError::BeyondEnd { .. })
        ));
        assert!(matches!(
            validate_range(u64::MAX - 4095, 8192, u64::MAX),
            Err(RangeError::BeyondEnd { .. })
        ));
        assert_eq!(validate_range(MIB - 4096, 4096, MIB), Ok(()));
    }

    #[test]
    fn resolve_maps_offsets_and_descends_into_children() {
        let t = ShardTable::new(4 * MIB, MIB).unwrap();
        let g = crossbeam_epoch::pin();
        t.try_map(0, Entry::mapped(1, 32, 4).unwrap()).unwrap();
        t.try_map(2, Entry::mapped(0, 64, 4).unwrap()).unwrap();
        t.split(2, 4, &g).unwrap();
        t.try_unmap(crate::volume::table::Loc::child(2, 1, 4), &g)
            .unwrap();
        let starts = [1000 * 4096, 2000 * 4096, 0, 0];
        let pieces: Vec<Piece> = resolve(&t, &g, MIB - 8192, 2 * MIB, &starts)
            .unwrap()
            .collect();
        let quarter = MIB / 4;
        let want = vec![
            Piece {
                buf_offset: 0,
                len: 8192,
                slot: 0,
                kind: PieceKind::Mapped {
                    tier: 1,
                    device_byte_offset: 2000 * 4096 + 32 * UNIT_SIZE_BYTES + MIB - 8192,
                },
            },
            Piece {
                buf_offset: 8192,
                len: MIB,
                slot: 1,
                kind: PieceKind::Unmapped,
            },
            Piece {
                buf_offset: MIB + 8192,
                len: quarter,
                slot: 2,
                kind: PieceKind::Mapped {
                    tier: 0,
                    device_byte_offset: 1000 * 4096 + 64 * UNIT_SIZE_BYTES,
                },
            },
            Piece {
                buf_offset: MIB + 8192 + quarter,
                len: quarter,
                slot: 2,
                kind: PieceKind::Unmapped,
            },
            Piece {
                buf_offset: MIB + 8192 + 2 * quarter,
                len: quarter,
                slot: 2,
                kind: PieceKind::Mapped {
                    tier: 0,
                    device_byte_offset: 1000 * 4096 + 72 * UNIT_SIZE_BYTES,
                },
            },
            Piece {
                buf_offset: MIB + 8192 + 3 * quarter,
                len: quarter - 8192,
                slot: 2,
                kind: PieceKind::Mapped {
                    tier: 0,
                    device_byte_offset: 1000 * 4096 + 76 * UNIT_SIZE_BYTES,
                },
            },
        ];
        assert_eq!(pieces, want);
        assert!(resolve(&t, &g, 4 * MIB, 4096, &starts).is_err());
    }
}
