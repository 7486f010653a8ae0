//! Non-overlapping mappings of one volume: logical unit range -> (tier,
//! physical unit range).
//!
//! Contract: entries never overlap and never have zero length. [`RangeMap::map`]
//! replaces whatever overlapped the new range (cutting overlapped entries into
//! the parts outside it, their physical start shifted accordingly);
//! [`RangeMap::unmap`] removes and cuts the same way. Adjacent entries are not
//! merged: the map holds exactly the pieces the records produced, so replaying
//! the same records always gives an equal map.

use std::collections::BTreeMap;

/// Where a run of logical units lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub len_units: u64,
    pub tier: u8,
    pub phys_unit: u64,
}

/// The mappings of one volume, keyed by first logical unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeMap {
    map: BTreeMap<u64, Mapping>,
}

impl RangeMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries in logical order: (first logical unit, mapping).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Mapping)> + '_ {
        self.map.iter().map(|(k, m)| (*k, *m))
    }

    /// The entry containing logical unit `unit`, as (its first logical unit, mapping).
    pub fn lookup(&self, unit: u64) -> Option<(u64, Mapping)> {
        let (k, m) = self.map.range(..=unit).next_back()?;
        (unit - k < m.len_units).then_some((*k, *m))
    }

    /// Entries overlapping `[start, start + len)`, uncut, in logical order.
    pub fn overlapping(&self, start: u64, len: u64) -> impl Iterator<Item = (u64, Mapping)> + '_ {
        let end = start.saturating_add(len);
        let first = self.lookup(start).map(|(k, _)| k).unwrap_or(start);
        self.map.range(first..end).map(|(k, m)| (*k, *m))
    }

    /// Units covered by all entries.
    pub fn mapped_units(&self) -> u64 {
        self.map.values().map(|m| m.len_units).sum()
    }

    /// Map `[start, start + m.len_units)` to `m`, replacing any overlap.
    /// A zero-length mapping changes nothing.
    pub fn map(&mut self, start: u64, m: Mapping) {
        if m.len_units == 0 {
            return;
        }
        self.unmap(start, m.len_units);
        self.map.insert(start, m);
    }

    /// Remove `[start, start + len)` from every entry, cutting partial overlaps.
    pub fn unmap(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start.saturating_add(len);
        // An entry beginning before `start` that reaches into the range.
        if let Some((&k, &m)) = self.map.range(..start).next_back() {
            let kend = k + m.len_units;
            if kend > start {
                self.map.insert(
                    k,
                    Mapping {
                        len_units: start - k,
                        ..m
                    },
                );
                if kend > end {
                    self.map.insert(
                        end,
                        Mapping {
                            len_units: kend - end,
                            phys_unit: m.phys_unit + (end - k),
                            ..m
                        },
                    );
                }
            }
        }
        // Entries beginning inside the range.
        while let Some((&k, &m)) = self.map.range(start..end).next() {
            self.map.remove(&k);
            let kend = k + m.len_units;
            if kend > end {
                self.map.insert(
                    end,
                    Mapping {
                        len_units: kend - end,
                        phys_unit: m.phys_unit + (end - k),
                        ..m
                    },
                );
            }
        }
    }

    /// Drop every unit at or beyond `units` (volume shrink).
    pub fn truncate(&mut self, units: u64) {
        self.unmap(units, u64::MAX - units);
    }

    /// Insert an entry that must not overlap and must come after every
    /// existing one (checkpoint decoding). Returns false if it does not.
    pub(crate) fn push_sorted(&mut self, start: u64, m: Mapping) -> bool {
        if m.len_units == 0 || start.checked_add(m.len_units).is_none() {
            return false;
        }
        if let Some((&k, last)) = self.map.iter().next_back() {
            if k + last.len_units > start {
                return false;
            }
        }
        self.map.insert(start, m);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPACE: u64 = 64;

    /// Per-unit model: unit -> (tier, phys).
    fn model_of(r: &RangeMap) -> Vec<Option<(u8, u64)>> {
        let mut v = vec![None; SPACE as usize];
        for (k, m) in r.iter() {
            assert!(m.len_units > 0);
            for i in 0..m.len_units {
                let u = (k + i) as usize;
                assert!(v[u].is_none(), "overlap at unit {u}");
                v[u] = Some((m.tier, m.phys_unit + i));
            }
        }
        v
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map(u64, u64, u8, u64),
        Unmap(u64, u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..SPACE, 1..16u64, 0..4u8, 0..1000u64).prop_map(|(s, l, t, p)| Op::Map(
                s,
                l.min(SPACE - s),
                t,
                p
            )),
            (0..SPACE, 0..20u64).prop_map(|(s, l)| Op::Unmap(s, l.min(SPACE - s))),
        ]
    }

    proptest! {
        #[test]
        fn matches_per_unit_model(ops in proptest::collection::vec(arb_op(), 0..60)) {
            let mut r = RangeMap::new();
            let mut model = vec![None; SPACE as usize];
            for op in ops {
                match op {
                    Op::Map(s, l, t, p) => {
                        r.map(s, Mapping { len_units: l, tier: t, phys_unit: p });
                        for i in 0..l { model[(s + i) as usize] = Some((t, p + i)); }
                    }
                    Op::Unmap(s, l) => {
                        r.unmap(s, l);
                        for i in 0..l { model[(s + i) as usize] = None; }
                    }
                }
                prop_assert_eq!(&model_of(&r), &model);
                for u in 0..SPACE {
                    let got = r.lookup(u).map(|(k, m)| (m.tier, m.phys_unit + (u - k)));
                    prop_assert_eq!(got, model[u as usize]);
                }
            }
            let cut = 37;
            r.truncate(cut);
            for u in cut..SPACE { model[u as usize] = None; }
            prop_assert_eq!(&model_of(&r), &model);
        }
    }

    #[test]
    fn map_inside_splits_in_three() {
        let mut r = RangeMap::new();
        r.map(
            0,
            Mapping {
                len_units: 10,
                tier: 1,
                phys_unit: 100,
            },
        );
        r.map(
            4,
            Mapping {
                len_units: 2,
                tier: 0,
                phys_unit: 7,
            },
        );
        let v: Vec<_> = r.iter().collect();
        assert_eq!(
            v,
            vec![
                (
                    0,
                    Mapping {
                        len_units: 4,
                        tier: 1,
                        phys_unit: 100
                    }
                ),
                (
                    4,
                    Mapping {
                        len_units: 2,
                        tier: 0,
                        phys_unit: 7
                    }
                ),
                (
                    6,
                    Mapping {
                        len_units: 4,
                        tier: 1,
                        phys_unit: 106
                    }
                ),
            ]
        );
        assert_eq!(r.overlapping(5, 2).count(), 2);
        assert!(!r.push_sorted(
            9,
            Mapping {
                len_units: 1,
                tier: 0,
                phys_unit: 0
            }
        ));
        assert!(r.push_sorted(
            10,
            Mapping {
                len_units: 1,
                tier: 0,
                phys_unit: 0
            }
        ));
    }
}
