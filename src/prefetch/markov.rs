//! Markov baseline: delta-transition frequencies, order 2 with order-1
//! fallback (a small PPM).
//!
//! Per stream (region): the last shard position read and the last two
//! deltas between positions (re-reads of the same shard are not a
//! transition). Two tables shared by all streams (access patterns such as
//! "index page, then its leaf" recur across regions) map a context — the
//! last delta (order 1) or the last two (order 2) — to counts of the next
//! delta: at most [`MARKOV_CONTEXTS_MAX`] contexts each (LRU) and
//! [`MARKOV_SUCCESSORS_MAX`] successors per context (the least frequent is
//! replaced); counts halve when a context reaches [`MARKOV_COUNT_HALVE_AT`].
//!
//! Prediction after each read: the order-2 context if it has been seen,
//! else the order-1 context. The top successors (by count) are predicted
//! with confidence `count / (total + prior)`, prior 1 for order 2 and 2
//! for order 1 — one observation is not proof, so a context seen once does
//! not pass a 0.5 threshold unless it is an order-2 context. Then the most
//! likely path is followed (context advanced by each predicted delta),
//! confidence multiplied along it, until `depth` shards are predicted. A
//! shard predicted for the stream within the last `2 * depth` predictions
//! is not predicted again unless its confidence has risen. Only reads are observed.

use super::stream::LruMap;
use super::{push_unique, Prediction, Predictor, PrefetchConfig, ShardEvent, StreamKey};
use crate::constants::{MARKOV_CONTEXTS_MAX, MARKOV_COUNT_HALVE_AT, MARKOV_SUCCESSORS_MAX};
use crate::trace::Op;
use std::collections::VecDeque;

#[derive(Debug, Default, Clone)]
struct Successors {
    /// (delta, count), unordered.
    next: Vec<(i64, u32)>,
    total: u32,
}

impl Successors {
    fn add(&mut self, d: i64) {
        if let Some(e) = self.next.iter_mut().find(|e| e.0 == d) {
            e.1 += 1;
        } else if self.next.len() < MARKOV_SUCCESSORS_MAX {
            self.next.push((d, 1));
        } else if let Some(min) = (0..self.next.len()).min_by_key(|&i| self.next[i].1) {
            self.total -= self.next[min].1;
            self.next[min] = (d, 1);
        }
        self.total += 1;
        if self.total >= MARKOV_COUNT_HALVE_AT {
            for e in &mut self.next {
                e.1 /= 2;
            }
            self.next.retain(|e| e.1 > 0);
            self.total = self.next.iter().map(|e| e.1).sum();
        }
    }

    /// Successors, most frequent first (ties: smaller delta magnitude first).
    fn ranked(&self) -> Vec<(i64, u32)> {
        let mut v = self.next.clone();
        v.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then(a.0.unsigned_abs().cmp(&b.0.unsigned_abs()))
        });
        v
    }
}

/// Ranked successors, their total count, and the confidence prior.
type Ranked = (Vec<(i64, u32)>, u32, f32);

#[derive(Debug, Default)]
struct StreamState {
    last: Option<u64>,
    d1: Option<i64>,
    d2: Option<i64>,
    /// Recently predicted (shard, confidence).
    recent: VecDeque<(u64, f32)>,
}

/// The Markov predictor.
pub struct Markov {
    cfg: PrefetchConfig,
    streams: LruMap<StreamKey, StreamState>,
    order1: LruMap<i64, Successors>,
    order2: LruMap<(i64, i64), Successors>,
}

impl Markov {
    pub fn new(cfg: &PrefetchConfig) -> Self {
        Markov {
            cfg: *cfg,
            streams: LruMap::new(cfg.streams_max),
            order1: LruMap::new(MARKOV_CONTEXTS_MAX),
            order2: LruMap::new(MARKOV_CONTEXTS_MAX),
        }
    }

    /// Ranked successors of a context and the prior to use for them.
    fn lookup(&self, d2: Option<i64>, d1: i64) -> Option<Ranked> {
        if let Some(d2) = d2 {
            if let Some(s) = self.order2.peek(&(d2, d1)) {
                if s.total > 0 {
                    return Some((s.ranked(), s.total, 1.0));
                }
            }
        }
        let s = self.order1.peek(&d1)?;
        (s.total > 0).then(|| (s.ranked(), s.total, 2.0))
    }

    fn observe(&mut self, ev: &ShardEvent, out: &mut Vec<Prediction>) {
        let key = self.cfg.stream_of(ev);
        let s = ev.shard;
        let st = self.streams.get_or_insert_with(&key, StreamState::default);
        let Some(last) = st.last else {
            st.last = Some(s);
            return;
        };
        if last == s {
            return;
        }
        let d = s as i64 - last as i64;
        let (p2, p1) = (st.d2, st.d1);
        st.last = Some(s);
        st.d2 = st.d1;
        st.d1 = Some(d);
        // Learn the transition that just happened.
        if let Some(p1) = p1 {
            self.order1
                .get_or_insert_with(&p1, Successors::default)
                .add(d);
            if let Some(p2) = p2 {
                self.order2
                    .get_or_insert_with(&(p2, p1), Successors::default)
                    .add(d);
            }
        }
        // Predict from the new context.
        let depth = self.cfg.depth as usize;
        let mut preds: Vec<(u64, f32)> = Vec::with_capacity(depth);
        if let Some((ranked, total, prior)) = self.lookup(p1, d) {
            let denom = total as f32 + prior;
            for &(nd, c) in ranked.iter().take(depth) {
                if let Some(shard) = s.checked_add_signed(nd) {
                    preds.push((shard, c as f32 / denom));
                }
            }
            // Follow the most likely path.
            let (mut pos, mut c2, mut c1) = (s, d, ranked[0].0);
            let mut conf = ranked[0].1 as f32 / denom;
            // At most `depth` steps: a cyclic path yields repeated shards.
            for _ in 0..depth {
                if preds.len() >= depth {
                    break;
                }
                let Some(next) = pos.checked_add_signed(c1) else {
                    break;
                };
                pos = next;
                let Some((r, t, pr)) = self.lookup(Some(c2), c1) else {
                    break;
                };
                let Some(shard) = pos.checked_add_signed(r[0].0) else {
                    break;
                };
                conf *= r[0].1 as f32 / (t as f32 + pr);
                if !preds.iter().any(|p| p.0 == shard) {
                    preds.push((shard, conf));
                }
                (c2, c1) = (c1, r[0].0);
            }
        }
        let st = self.streams.get_mut(&key).expect("stream inserted above");
        let start = out.len();
        for (shard, confidence) in preds {
            if st
                .recent
                .iter()
                .any(|&(r, c)| r == shard && c >= confidence)
            {
                continue;
            }
            if push_unique(
                out,
                start,
                Prediction {
                    volume: ev.volume,
                    shard,
                    confidence,
                },
            ) {
                st.recent.push_back((shard, confidence));
                if st.recent.len() > 2 * depth {
                    st.recent.pop_front();
                }
            }
        }
    }
}

impl Predictor for Markov {
    fn name(&self) -> &'static str {
        "markov"
    }
    fn step(&mut self, batch: &[ShardEvent], out: &mut Vec<Prediction>) {
        for ev in batch.iter().filter(|e| e.op == Op::Read) {
            self.observe(ev, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(shard: u64) -> ShardEvent {
        ShardEvent::read_of(shard)
    }

    #[test]
    fn learns_a_repeated_delta_pattern() {
        let cfg = PrefetchConfig {
            shard_bytes: 1 << 16,
            depth: 2,
            ..Default::default()
        };
        let mut p = Markov::new(&cfg);
        let mut out = Vec::new();
        // Deltas +3, +5, -2 repeated: positions 1003, 1008, 1006, 1009, ...
        let pattern = [3i64, 5, -2];
        let mut pos = vec![1000u64];
        for i in 0..90 {
            let next = pos[i].checked_add_signed(pattern[i % 3]).unwrap();
            pos.push(next);
        }
        let mut predicted = std::collections::HashSet::new();
        for (i, &s) in pos.iter().enumerate().skip(1) {
            out.clear();
            p.step(&[read(s)], &mut out);
            if i > 30 && i + 3 < pos.len() {
                // Every read was predicted before it came...
                assert!(predicted.contains(&s), "position {i} ({s}) not predicted");
                // ...and every prediction is a shard about to be read.
                for q in &out {
                    assert!(
                        pos[i + 1..].iter().take(3).any(|&f| f == q.shard),
                        "{q:?} at {i}"
                    );
                    assert!(q.confidence > 0.8, "{q:?}");
                }
            }
            predicted.extend(out.iter().map(|q| q.shard));
        }
        // A re-read is not a transition.
        out.clear();
        p.step(&[read(*pos.last().unwrap())], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn successor_table_is_bounded() {
        let mut s = Successors::default();
        for d in 0..100 {
            s.add(d);
        }
        assert_eq!(s.next.len(), MARKOV_SUCCESSORS_MAX);
        assert_eq!(s.total, s.next.iter().map(|e| e.1).sum::<u32>());
        for _ in 0..2 * MARKOV_COUNT_HALVE_AT {
            s.add(7);
        }
        assert!(s.total < MARKOV_COUNT_HALVE_AT);
        assert_eq!(s.ranked()[0].0, 7);
    }
}
