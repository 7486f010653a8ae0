//! LSTM input features of one traced event, computed per stream.
//!
//! Contract: an event of a stream becomes [`EventFeatures`]: the class of
//! the delta between its first shard and the previous event's first shard
//! in the same stream (the start class, [`start_class`], for a stream's first event, [`OOV`] for a
//! delta out of vocabulary), the class of its first shard in the shard
//! vocabulary ([`OOV`] when it has none), the op (read or write; other ops are not
//! features, see [`op_class`]), a size bucket (log2 of the shards touched),
//! an inter-arrival bucket (time since the stream's previous event, x4
//! per bucket from 1 µs), the *nearest* delta ([`near_class`]: from the
//! closest of the stream's last `LSTM_NEAR_RECENT` requests' last shards,
//! so a request that continues one of several interleaved runs in a region
//! says so even when another run's request came in between) and the
//! stream's scope ([`Scope`]: an address region, or the whole volume) and
//! whether its delta *repeats* the stream's previous delta (a stride step,
//! told whether or not the vocabulary holds the delta: the model's repeat
//! output class names the same delta again). An event on the same first shard as the stream's
//! previous one is not an input (a re-read inside the shard is not a
//! transition, as for the Markov baseline). [`FeatureState`] is the per-stream memory this
//! needs (last shard, last time); [`Featurizer`] owns the vocabularies and
//! turns events into features, growing the vocabularies online if asked:
//! the delta vocabulary counts every stream's deltas, the shard vocabulary
//! counts each event once ([`Featurizer::shard_class`]), and not again while
//! the volume keeps reading the same shard (a sequential pass in small
//! requests does not make its shards frequent).
//! Pure: no tch, no clock.

use super::config::Streams;
use super::vocab::{DeltaVocab, ShardKey, ShardVocab, OOV};
use crate::constants::{
    LSTM_GAP_BUCKETS, LSTM_NEAR_CLASSES, LSTM_NEAR_MAX_SHARDS, LSTM_NEAR_RECENT, LSTM_OP_CLASSES,
    LSTM_REPEAT_CLASSES, LSTM_SCOPE_CLASSES, LSTM_SIZE_BUCKETS, PREFETCH_STREAMS_MAX,
};
use crate::prefetch::{PrefetchConfig, ShardEvent, StreamKey};
use crate::trace::Op;
use std::collections::HashMap;

/// Region id of a volume's whole-volume stream (no address region has it:
/// regions are at least a shard).
pub const VOLUME_STREAM_REGION: u64 = u64::MAX;

/// The streams `ev` belongs to under `streams`: its region's, its
/// volume's, or both (region first).
pub fn stream_keys(
    cfg: &PrefetchConfig,
    ev: &ShardEvent,
    streams: Streams,
) -> [Option<(StreamKey, Scope)>; 2] {
    let region = (cfg.stream_of(ev), Scope::Region);
    let volume = (
        StreamKey {
            volume: ev.volume,
            region: VOLUME_STREAM_REGION,
        },
        Scope::Volume,
    );
    match streams {
        Streams::Regions => [Some(region), None],
        Streams::Volume => [Some(volume), None],
        Streams::Both => [Some(region), Some(volume)],
    }
}

/// Which sequence a stream follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    /// The events of one address region of a volume (interleaved scans in
    /// different regions do not blur each other).
    Region,
    /// Every event of a volume, in order (sees jumps between regions).
    Volume,
}

impl Scope {
    /// Input class of the scope.
    pub fn class(self) -> u32 {
        let c = match self {
            Scope::Region => 0,
            Scope::Volume => 1,
        };
        debug_assert!(c < LSTM_SCOPE_CLASSES);
        c
    }
}

/// Input-only delta class of a stream's first event (one past the
/// vocabulary's last class).
pub fn start_class(vocab_capacity: usize) -> u32 {
    vocab_capacity as u32 + 1
}

/// The features of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventFeatures {
    /// Delta class: OOV (0), a vocabulary class, or the start class.
    pub delta: u32,
    /// Shard class: OOV (0) or a shard vocabulary class.
    pub shard: u32,
    pub op: u32,
    pub size: u32,
    pub gap: u32,
    /// [`near_class`] of the event in its stream.
    pub near: u32,
    /// [`Scope::class`] of the stream.
    pub scope: u32,
    /// [`repeat_class`]: 1 when the delta equals the stream's previous delta.
    pub repeat: u32,
}

/// Repeat class of a delta `d` after the stream's previous delta `prev`
/// (None: the stream's first or second event): 1 when they are equal.
pub fn repeat_class(prev: Option<i64>, d: Option<i64>) -> u32 {
    let c = u32::from(prev.is_some() && prev == d);
    debug_assert!(c < LSTM_REPEAT_CLASSES);
    c
}

/// Nearest-delta class: 0 when no recent request is within
/// `LSTM_NEAR_MAX_SHARDS` shards (or none yet), else `1 + d + max` for the
/// delta `d` (-max..=max) of the first shard from the closest recent last
/// shard (ties: the more recent).
pub fn near_class(first: u64, recent_ends: &[u64]) -> u32 {
    let max = LSTM_NEAR_MAX_SHARDS;
    let best = recent_ends
        .iter()
        .rev()
        .filter_map(|&r| shard_delta(r, first))
        .filter(|d| d.unsigned_abs() <= max)
        .min_by_key(|d| d.unsigned_abs());
    let c = best.map_or(0, |d| (1 + d + max as i64) as u32);
    debug_assert!(c < LSTM_NEAR_CLASSES);
    c
}

/// Op class of an event; None for ops that are not model inputs (discard, flush).
pub fn op_class(op: Op) -> Option<u32> {
    let c = match op {
        Op::Read => 0,
        Op::Write => 1,
        Op::Discard | Op::Flush => return None,
    };
    debug_assert!(c < LSTM_OP_CLASSES);
    Some(c)
}

/// Size bucket: `floor(log2(shards)) + 1`, capped (a request touches at least one shard).
pub fn size_bucket(shards: u32) -> u32 {
    (32 - shards.max(1).leading_zeros()).min(LSTM_SIZE_BUCKETS - 1)
}

/// Inter-arrival bucket: 0 below 1 µs (1024 ns), then one bucket per factor
/// of 4, the last one open-ended.
pub fn gap_bucket(gap_ns: u64) -> u32 {
    let bits = 64 - (gap_ns >> 10).leading_zeros();
    bits.div_ceil(2).min(LSTM_GAP_BUCKETS - 1)
}

/// Per-stream memory of the featurizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureState {
    last_shard: Option<u64>,
    /// Delta of the stream's previous event (None: its first, or out of range).
    last_delta: Option<i64>,
    last_ts_ns: u64,
    /// Last shards of the stream's recent requests (a ring of `ends`).
    recent_ends: [u64; LSTM_NEAR_RECENT],
    ends: usize,
}

impl FeatureState {
    /// First shard of the stream's previous event.
    pub fn last_shard(&self) -> Option<u64> {
        self.last_shard
    }

    /// Delta of the stream's previous event from the one before.
    pub fn last_delta(&self) -> Option<i64> {
        self.last_delta
    }
}

/// Turns events into features with a delta and a shard vocabulary.
#[derive(Debug, Clone)]
pub struct Featurizer {
    pub vocab: DeltaVocab,
    pub shards: ShardVocab,
    /// Grow the vocabularies from the events seen.
    pub grow: bool,
    /// Last shard counted per volume (bounded: cleared past
    /// [`PREFETCH_STREAMS_MAX`] volumes).
    counted: HashMap<u32, u64>,
}

impl Featurizer {
    pub fn new(vocab: DeltaVocab, shards: ShardVocab, grow: bool) -> Self {
        Featurizer {
            vocab,
            shards,
            grow,
            counted: HashMap::new(),
        }
    }

    /// Start class for this vocabulary's capacity.
    pub fn start(&self) -> u32 {
        start_class(self.vocab.capacity())
    }

    /// The shard class of `ev`'s first shard, counting it towards the shard
    /// vocabulary when growing (call once per event, before
    /// [`Featurizer::features`] of its streams); [`OOV`] for events that are
    /// not inputs.
    pub fn shard_class(&mut self, ev: &ShardEvent) -> u32 {
        if op_class(ev.op).is_none() {
            return OOV;
        }
        let key = ShardKey {
            volume: ev.volume,
            shard: ev.shard,
        };
        if !self.grow || self.shards.capacity() == 0 {
            return self.shards.class_of(key);
        }
        if self.counted.get(&ev.volume) == Some(&ev.shard) {
            return self.shards.class_of(key);
        }
        if self.counted.len() >= PREFETCH_STREAMS_MAX {
            self.counted.clear();
        }
        self.counted.insert(ev.volume, ev.shard);
        self.shards.observe(key)
    }

    /// Features of `ev` (shard class `shard`) in a stream of `scope` whose
    /// memory is `st` (updated); None for events that are not inputs.
    pub fn features(
        &mut self,
        st: &mut FeatureState,
        ev: &ShardEvent,
        shard: u32,
        scope: Scope,
    ) -> Option<EventFeatures> {
        let op = op_class(ev.op)?;
        if st.last_shard == Some(ev.shard) {
            // A re-read of the same shard is not a transition (several
            // requests inside one shard): no input, no new prediction.
            return None;
        }
        let d = st.last_shard.and_then(|last| shard_delta(last, ev.shard));
        let repeat = repeat_class(st.last_delta, d);
        let delta = match st.last_shard {
            None => self.start(),
            Some(last) => match shard_delta(last, ev.shard) {
                Some(d) if self.grow => self.vocab.observe(d),
                Some(d) => self.vocab.class_of(d),
                None => OOV,
            },
        };
        let gap = if st.last_shard.is_some() {
            gap_bucket(ev.ts_ns.saturating_sub(st.last_ts_ns))
        } else {
            0
        };
        let n = st.ends.min(LSTM_NEAR_RECENT);
        let near = near_class(ev.shard, &st.recent_ends[..n]);
        st.recent_ends[st.ends % LSTM_NEAR_RECENT] = ev.last_shard();
        st.ends += 1;
        st.last_shard = Some(ev.shard);
        st.last_delta = d;
        st.last_ts_ns = ev.ts_ns;
        Some(EventFeatures {
            near,
            delta,
            shard,
            op,
            size: size_bucket(ev.shards),
            gap,
            scope: scope.class(),
            repeat,
        })
    }
}

/// `to - from` as a signed delta, if it fits.
pub fn shard_delta(from: u64, to: u64) -> Option<i64> {
    i64::try_from(i128::from(to) - i128::from(from)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ns: u64, op: Op, shard: u64, shards: u32) -> ShardEvent {
        ShardEvent {
            ts_ns,
            volume: 0,
            op,
            shard,
            shards,
            end_eighths: 8,
            bytes: 4096,
        }
    }

    #[test]
    fn buckets() {
        assert_eq!(
            [1, 2, 3, 4, 8, 1 << 20].map(size_bucket),
            [1, 2, 2, 3, 4, LSTM_SIZE_BUCKETS - 1]
        );
        assert_eq!(gap_bucket(0), 0);
        assert_eq!(gap_bucket(1023), 0);
        assert_eq!(gap_bucket(1024), 1); // 1 µs
        assert_eq!(gap_bucket(4 * 1024 - 1), 1);
        assert_eq!(gap_bucket(4 * 1024), 2);
        assert_eq!(gap_bucket(u64::MAX), LSTM_GAP_BUCKETS - 1);
        assert_eq!(op_class(Op::Flush), None);
        assert_eq!(shard_delta(10, 3), Some(-7));
        assert_eq!(shard_delta(0, u64::MAX), None);
    }

    #[test]
    fn per_stream_deltas_with_a_fixed_vocabulary() {
        let vocab = DeltaVocab::build([1i64, 1, 4, 4], 4, 64, 1);
        let mut f = Featurizer::new(vocab, ShardVocab::new(0, 1, 1), false);
        let mut st = FeatureState::default();
        let r = Scope::Region;
        let a = f.features(&mut st, &ev(0, Op::Read, 100, 1), 3, r).unwrap();
        assert_eq!(
            a,
            EventFeatures {
                delta: 5,
                shard: 3,
                op: 0,
                size: 1,
                gap: 0,
                near: 0,
                scope: 0,
                repeat: 0,
            }
        );
        let b = f
            .features(&mut st, &ev(5000, Op::Write, 101, 2), 0, Scope::Volume)
            .unwrap();
        assert_eq!(b.delta, f.vocab.class_of(1));
        assert_eq!((b.op, b.size, b.gap, b.scope), (1, 2, 2, 1));
        let c = f
            .features(&mut st, &ev(6000, Op::Read, 90, 1), 0, r)
            .unwrap();
        assert_eq!(c.delta, OOV, "-11 is not in the vocabulary");
        assert!(f
            .features(&mut st, &ev(7000, Op::Flush, 0, 1), 0, r)
            .is_none());
        assert!(
            f.features(&mut st, &ev(7500, Op::Read, 90, 1), 0, r)
                .is_none(),
            "a re-read is not an input"
        );
        assert_eq!(st.last_shard(), Some(90), "a flush is not an input");
        let d = f
            .features(&mut st, &ev(8000, Op::Read, 94, 1), 0, r)
            .unwrap();
        assert_eq!(d.delta, f.vocab.class_of(4));
        // 101..=102 was read two requests ago: 103 continues that run.
        let e = f
            .features(&mut st, &ev(9000, Op::Read, 103, 1), 0, r)
            .unwrap();
        assert_eq!(e.near, near_class(103, &[102]));
        assert_eq!(
            (near_class(103, &[102]), near_class(100, &[102, 101])),
            (2 + LSTM_NEAR_MAX_SHARDS as u32, LSTM_NEAR_MAX_SHARDS as u32)
        );
        assert_eq!(near_class(500, &[102]), 0, "far");
        assert_eq!(near_class(5, &[]), 0, "nothing recent");
    }

    #[test]
    fn shards_are_counted_once_per_visit() {
        let mut f = Featurizer::new(DeltaVocab::new(4, 64, 2), ShardVocab::new(4, 64, 2), true);
        // Four requests inside shard 7 are one visit: no class yet.
        for i in 0..4 {
            assert_eq!(f.shard_class(&ev(i, Op::Read, 7, 1)), OOV);
        }
        assert_eq!(f.shard_class(&ev(5, Op::Read, 9, 1)), OOV);
        assert_eq!(f.shard_class(&ev(6, Op::Flush, 7, 1)), OOV);
        // A second visit makes it frequent.
        assert_eq!(f.shard_class(&ev(7, Op::Read, 7, 1)), 1);
        assert_eq!(
            f.shards.key_of(1),
            Some(ShardKey {
                volume: 0,
                shard: 7
            })
        );
        let mut fixed = f.clone();
        fixed.grow = false;
        assert_eq!(fixed.shard_class(&ev(8, Op::Read, 9, 1)), OOV);
        assert_eq!(fixed.shard_class(&ev(9, Op::Read, 7, 1)), 1);
    }

    #[test]
    fn online_growth_gives_a_repeated_delta_a_class() {
        let mut f = Featurizer::new(DeltaVocab::new(8, 64, 2), ShardVocab::new(0, 1, 1), true);
        let mut st = FeatureState::default();
        let feats: Vec<EventFeatures> = [0u64, 7, 14, 21, 28, 30, 32]
            .iter()
            .map(|&s| {
                f.features(&mut st, &ev(s, Op::Read, s, 1), 0, Scope::Region)
                    .unwrap()
            })
            .collect();
        let classes: Vec<u32> = feats.iter().map(|e| e.delta).collect();
        assert_eq!(&classes[..5], &[9, OOV, 1, 1, 1]);
        // A repeat is told before the delta has a class (the second +7 is
        // out of vocabulary) and after a new stride's second step.
        let repeats: Vec<u32> = feats.iter().map(|e| e.repeat).collect();
        assert_eq!(repeats, vec![0, 0, 1, 1, 1, 0, 1]);
        assert_eq!(st.last_delta(), Some(2));
        assert_eq!(f.vocab.delta_of(1), Some(7));
    }
}
