//! Volume Composer: property, model and concurrency tests of the LBA→shard
//! table (`src/volume/table.rs`) and request splitting (`src/volume/split.rs`).

use proptest::prelude::*;
use shardblk::constants::{MIGRATE_RETRIES_MAX, UNIT_SIZE_BYTES};
use shardblk::volume::split::{resolve, segments, Piece, PieceKind, DATA_START_RESERVED_HEAD};
use shardblk::volume::table::{Entry, Loc, ShardTable, SlotView, TableError, WriteEnter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Segments cover the range exactly, in order, without overlap, each in
    /// one slot.
    #[test]
    fn segments_cover_range_exactly(
        offset_blocks in 0u64..(1 << 30),
        len_blocks in 1u64..5000,
        shard_log2 in 16u32..=26,
    ) {
        let shard = 1u64 << shard_log2;
        let (offset, len) = (offset_blocks * BLOCK, len_blocks * BLOCK);
        let mut next_buf = 0;
        let mut last_slot = None;
        for seg in segments(offset, len, shard) {
            prop_assert_eq!(seg.buf_offset, next_buf);
            prop_assert!(seg.len > 0);
            prop_assert!(seg.offset_in_slot + seg.len <= shard);
            prop_assert_eq!(seg.slot * shard + seg.offset_in_slot, offset + seg.buf_offset);
            if let Some(prev) = last_slot {
                prop_assert_eq!(seg.slot, prev + 1);
                prop_assert_eq!(seg.offset_in_slot, 0);
            }
            last_slot = Some(seg.slot);
            next_buf += seg.len;
        }
        prop_assert_eq!(next_buf, len);
    }
}

// ---------------------------------------------------------------------------
// Model-based test of the table.

/// Shard size of the model volume and the slots it uses (two straddle a leaf
/// boundary, one lies in a far leaf).
const M_SHARD: u64 = MIB;
const M_SLOT_UNITS: u64 = M_SHARD / UNIT_SIZE_BYTES;
const M_SLOTS: [u64; 6] = [0, 1, 2, 16383, 16384, 40000];
const M_SIZE: u64 = 40001 * M_SHARD;

#[derive(Clone, Debug, PartialEq)]
enum MSlot {
    Whole(Entry),
    Split(Vec<Option<Entry>>),
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        s: usize,
        tier: usize,
    },
    MapChild {
        s: usize,
        c: usize,
        tier: usize,
    },
    Unmap {
        s: usize,
    },
    UnmapChild {
        s: usize,
        c: usize,
    },
    Split {
        s: usize,
        k: u32,
    },
    Merge {
        s: usize,
    },
    Migrate {
        s: usize,
        c: usize,
        tier: usize,
        write_during: bool,
        abort: bool,
    },
    Read {
        s: usize,
        off_blocks: u64,
        len_blocks: u64,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let s = 0..M_SLOTS.len();
    prop_oneof![
        (s.clone(), 0..4usize).prop_map(|(s, tier)| Op::Map { s, tier }),
        (s.clone(), 0..16usize, 0..4usize).prop_map(|(s, c, tier)| Op::MapChild { s, c, tier }),
        s.clone().prop_map(|s| Op::Unmap { s }),
        (s.clone(), 0..16usize).prop_map(|(s, c)| Op::UnmapChild { s, c }),
        (s.clone(), 1u32..=4).prop_map(|(s, k)| Op::Split { s, k }),
        s.clone().prop_map(|s| Op::Merge { s }),
        (
            s.clone(),
            0..16usize,
            0..4usize,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(s, c, tier, write_during, abort)| Op::Migrate {
                s,
                c,
                tier,
                write_during,
                abort
            }),
        (s, 0..512u64, 1..768u64).prop_map(|(s, off_blocks, len_blocks)| Op::Read {
            s,
            off_blocks,
            len_blocks
        }),
    ]
}

struct Model {
    slots: BTreeMap<u64, MSlot>,
    next_unit: u64,
}

impl Model {
    /// Fresh units, aligned to their size (never reused: a checking aid).
    fn alloc(&mut self, units: u64) -> u64 {
        let u = self.next_unit.next_multiple_of(units);
        self.next_unit = u + units;
        u
    }
    /// Where logical byte `p` lives: `None` = unmapped.
    fn locate(&self, p: u64) -> Option<(usize, u64)> {
        let slot = p / M_SHARD;
        let off = p % M_SHARD;
        match self.slots.get(&slot)? {
            MSlot::Whole(e) => Some((e.tier(), e.first_unit() * UNIT_SIZE_BYTES + off)),
            MSlot::Split(ch) => {
                let cb = M_SHARD / ch.len() as u64;
                let e = ch[(off / cb) as usize]?;
                Some((e.tier(), e.first_unit() * UNIT_SIZE_BYTES + off % cb))
            }
        }
    }
    /// Sub-region boundary size at `p` (slot or child bytes).
    fn region_bytes(&self, p: u64) -> u64 {
        match self.slots.get(&(p / M_SHARD)) {
            Some(MSlot::Split(ch)) => M_SHARD / ch.len() as u64,
            _ => M_SHARD,
        }
    }
    fn flat(&self) -> Vec<(u64, u64, Entry)> {
        let mut v = Vec::new();
        for (&slot, m) in &self.slots {
            match m {
                MSlot::Whole(e) => v.push((slot * M_SLOT_UNITS, M_SLOT_UNITS, *e)),
                MSlot::Split(ch) => {
                    let cu = M_SLOT_UNITS / ch.len() as u64;
                    for (j, e) in ch.iter().enumerate() {
                        if let Some(e) = e {
                            v.push((slot * M_SLOT_UNITS + j as u64 * cu, cu, *e));
                        }
                    }
                }
            }
        }
        v
    }
}

fn child_log2(n: usize) -> u32 {
    (M_SLOT_UNITS / n as u64).trailing_zeros()
}

fn apply(t: &ShardTable, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let g = crossbeam_epoch::pin();
    let slot_log2 = M_SLOT_UNITS.trailing_zeros();
    match *op {
        Op::Map { s, tier } => {
            let slot = M_SLOTS[s];
            let u = m.alloc(M_SLOT_UNITS);
            let e = Entry::mapped(tier, u, slot_log2).unwrap();
            let got = t.try_map(slot, e);
            match m.slots.get(&slot) {
                None => {
                    prop_assert_eq!(got, Ok(()));
                    m.slots.insert(slot, MSlot::Whole(e));
                }
                Some(MSlot::Whole(w)) => prop_assert_eq!(got, Err(TableError::Lost(*w))),
                Some(MSlot::Split(_)) => prop_assert_eq!(got, Err(TableError::IsSplit)),
            }
        }
        Op::MapChild { s, c, tier } => {
            let slot = M_SLOTS[s];
            match m.slots.get(&slot).cloned() {
                Some(MSlot::Split(ch)) => {
                    let j = c % ch.len();
                    let units = M_SLOT_UNITS / ch.len() as u64;
                    let e = Entry::mapped(tier, m.alloc(units), child_log2(ch.len())).unwrap();
                    let got = t.try_map_at(Loc::child(slot, j as u32, ch.len() as u32), e, &g);
                    match ch[j] {
                        None => {
                            prop_assert_eq!(got, Ok(()));
                            if let Some(MSlot::Split(ch)) = m.slots.get_mut(&slot) {
                                ch[j] = Some(e);
                            }
                        }
                        Some(w) => prop_assert_eq!(got, Err(TableError::Lost(w))),
                    }
                }
                _ => {
                    let e = Entry::mapped(tier, m.alloc(1), 0).unwrap();
                    let got = t.try_map_at(Loc::child(slot, c as u32 % 2, 2), e, &g);
                    prop_assert!(matches!(got, Err(TableError::NotSplit(_))), "{:?}", got);
                }
            }
        }
        Op::Unmap { s } => {
            let slot = M_SLOTS[s];
            let got = t.try_unmap(Loc::slot(slot), &g);
            match m.slots.get(&slot) {
                None => prop_assert_eq!(got, Err(TableError::Unmapped)),
                Some(MSlot::Whole(w)) => {
                    prop_assert_eq!(got, Ok(*w));
                    m.slots.remove(&slot);
                }
                Some(MSlot::Split(_)) => prop_assert_eq!(got, Err(TableError::IsSplit)),
            }
        }
        Op::UnmapChild { s, c } => {
            let slot = M_SLOTS[s];
            match m.slots.get_mut(&slot) {
                Some(MSlot::Split(ch)) => {
                    let j = c % ch.len();
                    let got = t.try_unmap(Loc::child(slot, j as u32, ch.len() as u32), &g);
                    match ch[j].take() {
                        None => prop_assert_eq!(got, Err(TableError::Unmapped)),
                        Some(w) => prop_assert_eq!(got, Ok(w)),
                    }
                }
                _ => {
                    let got = t.try_unmap(Loc::child(slot, c as u32 % 2, 2), &g);
                    prop_assert!(matches!(got, Err(TableError::NotSplit(_))), "{:?}", got);
                }
            }
        }
        Op::Split { s, k } => {
            let slot = M_SLOTS[s];
            let n = 1usize << k;
            let got = t.split(slot, n as u32, &g);
            match m.slots.get(&slot).cloned() {
                Some(MSlot::Split(_)) => prop_assert_eq!(got, Err(TableError::IsSplit)),
                whole => {
                    prop_assert_eq!(got, Ok(()));
                    let cu = M_SLOT_UNITS / n as u64;
                    let ch = (0..n)
                        .map(|j| match whole {
                            Some(MSlot::Whole(e)) => Some(
                                Entry::mapped(
                                    e.tier(),
                                    e.first_unit() + j as u64 * cu,
                                    child_log2(n),
                                )
                                .unwrap(),
                            ),
                            _ => None,
                        })
                        .collect();
                    m.slots.insert(slot, MSlot::Split(ch));
                }
            }
        }
        Op::Merge { s } => {
            let slot = M_SLOTS[s];
            let got = t.try_merge(slot, &g);
            match m.slots.get(&slot).cloned() {
                Some(MSlot::Split(ch)) => {
                    let cu = M_SLOT_UNITS / ch.len() as u64;
                    if ch.iter().all(|c| c.is_none()) {
                        prop_assert_eq!(got, Ok(Entry::UNMAPPED));
                        m.slots.remove(&slot);
                    } else if let Some(first) = ch
                        .iter()
                        .enumerate()
                        .all(|(j, c)| {
                            c.is_some_and(|c| {
                                let f = ch[0].unwrap();
                                c.tier() == f.tier()
                                    && c.first_unit() == f.first_unit() + j as u64 * cu
                            })
                        })
                        .then(|| ch[0].unwrap())
                    {
                        let e = Entry::mapped(first.tier(), first.first_unit(), slot_log2).unwrap();
                        prop_assert_eq!(got, Ok(e));
                        m.slots.insert(slot, MSlot::Whole(e));
                    } else {
                        prop_assert!(matches!(got, Err(TableError::NotMergeable(_))), "{:?}", got);
                    }
                }
                _ => prop_assert!(matches!(got, Err(TableError::NotSplit(_))), "{:?}", got),
            }
        }
        Op::Migrate {
            s,
            c,
            tier,
            write_during,
            abort,
        } => {
            let slot = M_SLOTS[s];
            let (loc, cur) = match m.slots.get(&slot) {
                None => (Loc::slot(slot), None),
                Some(MSlot::Whole(e)) => (Loc::slot(slot), Some(*e)),
                Some(MSlot::Split(ch)) => {
                    let j = c % ch.len();
                    (Loc::child(slot, j as u32, ch.len() as u32), ch[j])
                }
            };
            let begun = t.begin_migrate(loc, &g);
            let Some(old) = cur else {
                prop_assert_eq!(begun, Err(TableError::Unmapped));
                return Ok(());
            };
            prop_assert_eq!(begun, Ok(old));
            let new = Entry::mapped(tier, m.alloc(old.len_units()), old.size_log2()).unwrap();
            if write_during {
                let WriteEnter::Entered(tk) = t.writer_enter(loc, &g).unwrap() else {
                    return Err(TestCaseError::fail("writer could not enter a mapped entry"));
                };
                prop_assert_eq!(tk.entry(), old);
                prop_assert_eq!(
                    t.finish_migrate(loc, old, new, &g),
                    Err(TableError::WritersInFlight(1))
                );
                drop(tk);
                prop_assert_eq!(t.finish_migrate(loc, old, new, &g), Err(TableError::Dirty));
                t.clear_dirty(loc, old, &g).unwrap();
            }
            if abort {
                t.abort_migrate(loc, old, &g).unwrap();
            } else {
                t.finish_migrate(loc, old, new, &g).unwrap();
                match m.slots.get_mut(&slot) {
                    Some(MSlot::Whole(e)) => *e = new,
                    Some(MSlot::Split(ch)) => {
                        let j = c % ch.len();
                        ch[j] = Some(new);
                    }
                    None => unreachable!(),
                }
            }
        }
        Op::Read {
            s,
            off_blocks,
            len_blocks,
        } => {
            let start = (M_SLOTS[s] * M_SHARD + off_blocks * BLOCK).min(M_SIZE - BLOCK);
            let len = (len_blocks * BLOCK).min(M_SIZE - start);
            let mut pos = start;
            for p in resolve(t, &g, start, len, &DATA_START_RESERVED_HEAD).unwrap() {
                prop_assert_eq!(start + p.buf_offset, pos);
                let rb = m.region_bytes(pos);
                prop_assert!(
                    pos % rb + p.len <= rb,
                    "piece crosses a boundary at {}",
                    pos
                );
                prop_assert_eq!(p.slot, pos / M_SHARD);
                match (p.kind, m.locate(pos)) {
                    (PieceKind::Unmapped, None) => {}
                    (
                        PieceKind::Mapped {
                            tier,
                            device_byte_offset,
                        },
                        Some((mt, moff)),
                    ) => {
                        prop_assert_eq!(tier, mt);
                        prop_assert_eq!(device_byte_offset, DATA_START_RESERVED_HEAD[mt] + moff);
                    }
                    (k, want) => {
                        return Err(TestCaseError::fail(format!(
                            "at {pos}: got {k:?} want {want:?}"
                        )))
                    }
                }
                pos += p.len;
            }
            prop_assert_eq!(pos, start + len);
        }
    }
    Ok(())
}

fn check_state(t: &ShardTable, m: &Model) -> Result<(), TestCaseError> {
    let mut seen = Vec::new();
    t.for_each_mapped(|u, n, e| seen.push((u, n, e)));
    prop_assert_eq!(&seen, &m.flat());
    let mut per_tier = [0u64; 4];
    for (_, n, e) in m.flat() {
        per_tier[e.tier()] += n * UNIT_SIZE_BYTES;
    }
    prop_assert_eq!(t.mapped_bytes_per_tier(), per_tier);
    let g = crossbeam_epoch::pin();
    for &slot in &M_SLOTS {
        match (t.load(slot, &g).unwrap(), m.slots.get(&slot)) {
            (SlotView::Unmapped, None) => {}
            (SlotView::Mapped(e), Some(MSlot::Whole(w))) => prop_assert_eq!(e, *w),
            (SlotView::Split(v), Some(MSlot::Split(ch))) => {
                prop_assert_eq!(v.len() as usize, ch.len());
                for (j, c) in ch.iter().enumerate() {
                    prop_assert_eq!(v.child(j as u32), c.unwrap_or(Entry::UNMAPPED));
                }
            }
            (got, want) => {
                return Err(TestCaseError::fail(format!(
                    "slot {slot}: got {got:?} want {want:?}"
                )))
            }
        }
    }
    // Only the leaves holding the model's slots exist.
    prop_assert!(t.allocated_leaves() <= 3);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_model(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        let t = ShardTable::new(M_SIZE, M_SHARD).unwrap();
        let mut m = Model { slots: BTreeMap::new(), next_unit: 0 };
        for op in &ops {
            apply(&t, &mut m, op)?;
            check_state(&t, &m)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Concurrency.

const THREADS: usize = 3;

/// Racing `try_map` (slots and children): exactly one winner per entry, and
/// every loser is told the winner's entry.
#[test]
fn racing_try_map_has_exactly_one_winner() {
    const SLOTS: u64 = 2000;
    let t = Arc::new(ShardTable::new(SLOTS * M_SHARD, M_SHARD).unwrap());
    {
        let g = crossbeam_epoch::pin();
        for slot in (0..SLOTS).step_by(2) {
            t.split(slot, 4, &g).unwrap();
        }
    }
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|tid| {
            let (t, barrier) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut wins = Vec::new();
                let mut losses = Vec::new();
                for slot in 0..SLOTS {
                    let g = crossbeam_epoch::pin();
                    let unit = (slot * THREADS as u64 + tid as u64) * M_SLOT_UNITS;
                    if slot % 2 == 1 {
                        let e = Entry::mapped(tid, unit, M_SLOT_UNITS.trailing_zeros()).unwrap();
                        match t.try_map(slot, e) {
                            Ok(()) => wins.push((Loc::slot(slot), e)),
                            Err(TableError::Lost(w)) => losses.push((Loc::slot(slot), w)),
                            Err(other) => panic!("slot {slot}: {other}"),
                        }
                    } else {
                        for j in 0..4u32 {
                            let e = Entry::mapped(tid, unit + u64::from(j) * 4, 2).unwrap();
                            match t.try_map_at(Loc::child(slot, j, 4), e, &g) {
                                Ok(()) => wins.push((Loc::child(slot, j, 4), e)),
                                Err(TableError::Lost(w)) => {
                                    losses.push((Loc::child(slot, j, 4), w))
                                }
                                Err(other) => panic!("slot {slot} child {j}: {other}"),
                            }
                        }
                    }
                }
                (wins, losses)
            })
        })
        .collect();
    let mut winners: BTreeMap<Loc, Entry> = BTreeMap::new();
    let mut losses = Vec::new();
    for h in handles {
        let (w, l) = h.join().unwrap();
        for (loc, e) in w {
            assert!(winners.insert(loc, e).is_none(), "two winners at {loc:?}");
        }
        losses.extend(l);
    }
    let entries = SLOTS / 2 + SLOTS / 2 * 4;
    assert_eq!(winners.len() as u64, entries);
    assert_eq!(losses.len() as u64, entries * (THREADS as u64 - 1));
    let g = crossbeam_epoch::pin();
    for (loc, w) in losses {
        assert_eq!(winners[&loc], w, "loser at {loc:?} saw another entry");
    }
    for (loc, e) in &winners {
        assert_eq!(t.load_entry(*loc, &g).unwrap(), *e);
    }
}

/// A tiny "device": one value per unit; a write stores the region's version.
struct Dev {
    cells: Vec<AtomicU64>,
    next: AtomicU64,
}

impl Dev {
    fn alloc(&self, units: u64) -> u64 {
        self.try_alloc(units).expect("test device full")
    }

    /// `units` fresh units, or None once the device is used up (a
    /// migrator on a descheduled writers' heels can get there).
    fn try_alloc(&self, units: u64) -> Option<u64> {
        let len = self.cells.len() as u64;
        self.next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + units <= len).then_some(u + units)
            })
            .ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stress {
    /// The migrator migrates whole slots.
    Slots,
    /// Slots are split in two; the migrator migrates children.
    Children,
    /// The migrator also splits and merges slots while writes are in flight.
    Reshape,
}

fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

/// Two writers and a migrator race on the same slots. Slots are two units;
/// writer `h` owns the unit-sized half `h` of every slot, so both write to
/// every slot. Before each write a writer checks, reading through the table,
/// that its region holds its last acknowledged version: a migration switch
/// (or a merge) that lost a write would show an older one.
fn writer_vs_migrator(mode: Stress, seed: u64) {
    const SLOTS: u64 = 6;
    const WRITES: u64 = 100_000;
    let shard = 2 * UNIT_SIZE_BYTES;
    let t = Arc::new(ShardTable::new(SLOTS * shard, shard).unwrap());
    let dev = Arc::new(Dev {
        cells: (0..1 << 18).map(|_| AtomicU64::new(0)).collect(),
        next: AtomicU64::new(0),
    });
    {
        let g = crossbeam_epoch::pin();
        for slot in 0..SLOTS {
            t.try_map(slot, Entry::mapped(0, dev.alloc(2), 1).unwrap())
                .unwrap();
            if mode == Stress::Children {
                t.split(slot, 2, &g).unwrap();
            }
        }
    }
    let done = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|h| {
            let (t, dev, done, lost) = (t.clone(), dev.clone(), done.clone(), lost.clone());
            std::thread::spawn(move || {
                let mut rng = seed ^ (h + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut last = [0u64; SLOTS as usize];
                for i in 0..WRITES {
                    let slot = lcg(&mut rng) % SLOTS;
                    let offset_in_slot = h * UNIT_SIZE_BYTES;
                    let g = crossbeam_epoch::pin();
                    let offset = slot * shard + offset_in_slot;
                    let mut pieces = resolve(&t, &g, offset, BLOCK, &DATA_START_RESERVED_HEAD).unwrap();
                    let Some(Piece { kind: PieceKind::Mapped { device_byte_offset, .. }, .. }) = pieces.next() else {
                        panic!("seed {seed}: region unmapped");
                    };
                    let unit = (device_byte_offset - DATA_START_RESERVED_HEAD[0]) / UNIT_SIZE_BYTES;
                    let seen = dev.cells[unit as usize].load(Ordering::Acquire);
                    if seen != last[slot as usize] {
                        lost.store(true, Ordering::Relaxed);
                        panic!(
                            "seed {seed} {mode:?}: slot {slot} half {h} holds version {seen}, last acknowledged {}",
                            last[slot as usize]
                        );
                    }
                    let tk = match t.writer_enter_at(slot, offset_in_slot, &g).unwrap() {
                        WriteEnter::Entered(tk) => tk,
                        other => panic!("seed {seed}: {other:?}"),
                    };
                    let e = tk.entry();
                    if i % 3 == 0 {
                        std::thread::yield_now();
                    }
                    let unit = e.first_unit() + (offset_in_slot % e.len_bytes()) / UNIT_SIZE_BYTES;
                    dev.cells[unit as usize].store(i + 1, Ordering::Release);
                    if i % 5 == 0 {
                        std::thread::yield_now();
                    }
                    t.writer_exit(tk);
                    last[slot as usize] = i + 1;
                }
                done.fetch_add(1, Ordering::Release);
            })
        })
        .collect();
    let migrator = {
        let (t, dev, done, lost) = (t.clone(), dev.clone(), done.clone(), lost.clone());
        std::thread::spawn(move || {
            let (mut switched, mut conflicts, mut aborted, mut reshaped) = (0u64, 0u64, 0u64, 0u64);
            let mut rng = seed;
            while done.load(Ordering::Acquire) < 2 && !lost.load(Ordering::Relaxed) {
                let slot = lcg(&mut rng) % SLOTS;
                let g = crossbeam_epoch::pin();
                let loc = match mode {
                    Stress::Children => Loc::child(slot, (lcg(&mut rng) % 2) as u32, 2),
                    _ => Loc::slot(slot),
                };
                if mode == Stress::Reshape {
                    match lcg(&mut rng) % 3 {
                        0 => {
                            if t.split(slot, 2, &g).is_ok() {
                                reshaped += 1;
                            }
                            continue;
                        }
                        1 => {
                            if t.try_merge(slot, &g).is_ok() {
                                reshaped += 1;
                            }
                            continue;
                        }
                        _ => {}
                    }
                }
                let old = match t.begin_migrate(loc, &g) {
                    Ok(old) => old,
                    Err(TableError::IsSplit) if mode == Stress::Reshape => continue,
                    Err(e) => panic!("begin: {e}"),
                };
                let Some(first) = dev.try_alloc(old.len_units()) else {
                    // the device is used up: stop migrating, let the
                    // writers finish their checks
                    t.abort_migrate(loc, old, &g).unwrap();
                    break;
                };
                let new =
                    Entry::mapped((lcg(&mut rng) % 4) as usize, first, old.size_log2()).unwrap();
                let mut ok = false;
                'retry: for attempt in 0..MIGRATE_RETRIES_MAX {
                    if attempt > 0 {
                        loop {
                            match t.clear_dirty(loc, old, &g) {
                                Ok(()) => break,
                                Err(TableError::WritersInFlight(_)) => std::thread::yield_now(),
                                Err(e) => panic!("clear_dirty: {e}"),
                            }
                            if done.load(Ordering::Acquire) == 2 {
                                break 'retry;
                            }
                        }
                    }
                    for u in 0..old.len_units() {
                        let v = dev.cells[(old.first_unit() + u) as usize].load(Ordering::Acquire);
                        std::thread::yield_now();
                        dev.cells[(new.first_unit() + u) as usize].store(v, Ordering::Release);
                    }
                    match t.finish_migrate(loc, old, new, &g) {
                        Ok(()) => {
                            ok = true;
                            break;
                        }
                        Err(TableError::Dirty | TableError::WritersInFlight(_)) => conflicts += 1,
                        Err(e) => panic!("finish: {e}"),
                    }
                }
                if ok {
                    switched += 1;
                } else {
                    t.abort_migrate(loc, old, &g).unwrap();
                    aborted += 1;
                }
            }
            (switched, conflicts, aborted, reshaped)
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    let (switched, conflicts, aborted, reshaped) = migrator.join().unwrap();
    eprintln!("seed {seed} {mode:?}: {switched} switches, {conflicts} conflicts, {aborted} aborts, {reshaped} splits+merges");
    assert!(switched > 0, "seed {seed}: no migration ever switched");
    assert!(
        conflicts > 0,
        "seed {seed}: no write ever raced a copy; the test proves nothing"
    );
    assert!(
        mode != Stress::Reshape || reshaped > 0,
        "seed {seed}: no split or merge happened"
    );
}

fn seed_or(default: u64) -> u64 {
    std::env::var("COMPOSER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn no_write_is_lost_by_a_migration_switch() {
    writer_vs_migrator(Stress::Slots, seed_or(0x5eed_0001));
}

#[test]
fn no_write_is_lost_by_a_child_migration_switch() {
    writer_vs_migrator(Stress::Children, seed_or(0x5eed_0002));
}

#[test]
fn no_write_is_lost_by_migrations_mixed_with_split_and_merge() {
    writer_vs_migrator(Stress::Reshape, seed_or(0x5eed_0004));
}

/// Readers and writers resolve addresses while another thread splits,
/// merges, unmaps and remaps children. Split and merge are zero copy, so every
/// mapped piece must name exactly the original location; node reclamation
/// through the epoch must never hand a reader a freed node.
#[test]
fn readers_see_stable_locations_under_split_and_merge() {
    const SLOTS: u64 = 8;
    let seed: u64 = std::env::var("COMPOSER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0003);
    let t = Arc::new(ShardTable::new(SLOTS * M_SHARD, M_SHARD).unwrap());
    let base = |slot: u64| 1000 + slot * M_SLOT_UNITS * 3;
    for slot in 0..SLOTS {
        t.try_map(
            slot,
            Entry::mapped(1, base(slot), M_SLOT_UNITS.trailing_zeros()).unwrap(),
        )
        .unwrap();
    }
    let expect = move |p: u64| {
        DATA_START_RESERVED_HEAD[1] + base(p / M_SHARD) * UNIT_SIZE_BYTES + p % M_SHARD
    };
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|rid| {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = seed ^ (rid + 11);
                let (mut reads, mut unmapped) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let start = ((rng >> 24) % (SLOTS * M_SHARD / BLOCK)) * BLOCK;
                    let len = (((rng >> 8) % 512 + 1) * BLOCK).min(SLOTS * M_SHARD - start);
                    let g = crossbeam_epoch::pin();
                    let mut pos = start;
                    for p in resolve(&t, &g, start, len, &DATA_START_RESERVED_HEAD).unwrap() {
                        assert_eq!(start + p.buf_offset, pos, "seed {seed}");
                        match p.kind {
                            PieceKind::Mapped {
                                tier,
                                device_byte_offset,
                            } => {
                                assert_eq!(
                                    (tier, device_byte_offset),
                                    (1, expect(pos)),
                                    "seed {seed} at {pos}"
                                )
                            }
                            PieceKind::Unmapped => unmapped += 1,
                        }
                        pos += p.len;
                    }
                    assert_eq!(pos, start + len);
                    // A write through the table lands on the same location.
                    let slot = start / M_SHARD;
                    if let WriteEnter::Entered(tk) =
                        t.writer_enter_at(slot, start % M_SHARD, &g).unwrap()
                    {
                        let e = tk.entry();
                        let region_start = start - (start % M_SHARD) % e.len_bytes();
                        assert_eq!(
                            e.device_byte_offset(DATA_START_RESERVED_HEAD[1]),
                            expect(region_start),
                            "seed {seed}: write location"
                        );
                    }
                    reads += 1;
                }
                (reads, unmapped)
            })
        })
        .collect();
    let mut rng = seed;
    let (mut splits, mut merges, mut remaps) = (0u64, 0u64, 0u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let slot = (rng >> 40) % SLOTS;
        let g = crossbeam_epoch::pin();
        match (rng >> 20) % 3 {
            0 => {
                if t.split(slot, 1 << ((rng >> 10) % 4 + 1), &g).is_ok() {
                    splits += 1;
                }
            }
            1 => {
                if let Ok(e) = t.try_merge(slot, &g) {
                    assert_eq!(e.first_unit(), base(slot), "seed {seed}");
                    merges += 1;
                }
            }
            _ => {
                // Unmap one child and map the same units back.
                if let Ok(SlotView::Split(v)) = t.load(slot, &g) {
                    let j = ((rng >> 5) as u32) % v.len();
                    let loc = Loc::child(slot, j, v.len());
                    if let Ok(old) = t.try_unmap(loc, &g) {
                        let got = t.try_map_at(loc, old, &g);
                        assert_eq!(got, Ok(()), "seed {seed}");
                        remaps += 1;
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.join().unwrap().0;
    }
    eprintln!("seed {seed}: {reads} reads, {splits} splits, {merges} merges, {remaps} remaps");
    assert!(
        reads > 0 && splits > 0 && merges > 0 && remaps > 0,
        "seed {seed}: nothing raced"
    );
}

// ---------------------------------------------------------------------------
// The I/O path allocates nothing.

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations per thread.
struct Counting;

// SAFETY: forwards every call to `System` unchanged; the counter is a
// const-initialised thread local without a destructor (no allocation, usable
// at any time; `try_with` covers thread teardown).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Resolving reads and entering / leaving writes, on whole and split slots,
/// allocate no memory (after the thread's first epoch pin registered it).
#[test]
fn io_path_allocates_nothing() {
    const SLOTS: u64 = 64;
    let t = ShardTable::new(SLOTS * M_SHARD, M_SHARD).unwrap();
    {
        let g = crossbeam_epoch::pin();
        for slot in 0..SLOTS {
            t.try_map(
                slot,
                Entry::mapped(0, slot * M_SLOT_UNITS, M_SLOT_UNITS.trailing_zeros()).unwrap(),
            )
            .unwrap();
            if slot % 2 == 0 {
                t.split(slot, 1 << (slot % 5), &g).unwrap_or(());
            }
        }
    }
    let before = ALLOCATIONS.with(|c| c.get());
    let mut sum = 0u64;
    for i in 0..5000u64 {
        let offset = (i * 7919 * BLOCK) % (SLOTS * M_SHARD - 64 * BLOCK);
        let g = crossbeam_epoch::pin();
        for p in resolve(
            &t,
            &g,
            offset,
            (i % 64 + 1) * BLOCK,
            &DATA_START_RESERVED_HEAD,
        )
        .unwrap()
        {
            sum = sum.wrapping_add(p.len);
        }
        let slot = offset / M_SHARD;
        match t.writer_enter_at(slot, offset % M_SHARD, &g).unwrap() {
            WriteEnter::Entered(tk) => t.writer_exit(tk),
            other => panic!("{other:?}"),
        };
    }
    let after = ALLOCATIONS.with(|c| c.get());
    assert!(sum > 0);
    assert_eq!(
        after - before,
        0,
        "the I/O path allocated {} times",
        after - before
    );
}
