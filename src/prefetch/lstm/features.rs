//! LSTM input features of one traced event, computed per stream.
//!
//! Contract: an event of a stream becomes [`EventFeatures`]: the class of
//! the delta between its first shard and the previous event's first shard
//! in the same stream (the start class, [`start_class`], for a stream's first event, [`OOV`] for a
//! delta out of vocabulary), the op (read or write; other ops are not
//! features, see [`op_class`]), a size bucket (log2 of the shards touched)
//! and an inter-arrival bucket (time since the stream's previous event, x4
//! per bucket from 1 µs). An event on the same first shard as the stream's
//! previous one is not an input (a re-read inside the shard is not a
//! transition, as for the Markov baseline). [`FeatureState`] is the per-stream memory this
//! needs (last shard, last time); [`Featurizer`] owns the vocabulary and
//! turns events into features, growing the vocabulary online if asked.
//! Pure: no tch, no clock.

use super::vocab::{DeltaVocab, OOV};
use crate::constants::{LSTM_GAP_BUCKETS, LSTM_OP_CLASSES, LSTM_SIZE_BUCKETS};
use crate::prefetch::ShardEvent;
use crate::trace::Op;

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
    pub op: u32,
    pub size: u32,
    pub gap: u32,
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
    last_ts_ns: u64,
}

impl FeatureState {
    /// First shard of the stream's previous event.
    pub fn last_shard(&self) -> Option<u64> {
        self.last_shard
    }
}

/// Turns events into features with a delta vocabulary.
#[derive(Debug, Clone)]
pub struct Featurizer {
    pub vocab: DeltaVocab,
    /// Grow the vocabulary from the events seen.
    pub grow: bool,
}

impl Featurizer {
    pub fn new(vocab: DeltaVocab, grow: bool) -> Self {
        Featurizer { vocab, grow }
    }

    /// Start class for this vocabulary's capacity.
    pub fn start(&self) -> u32 {
        start_class(self.vocab.capacity())
    }

    /// Features of `ev` in a stream whose memory is `st` (updated); None
    /// for events that are not inputs.
    pub fn features(&mut self, st: &mut FeatureState, ev: &ShardEvent) -> Option<EventFeatures> {
        let op = op_class(ev.op)?;
        if st.last_shard == Some(ev.shard) {
            // A re-read of the same shard is not a transition (several
            // requests inside one shard): no input, no new prediction.
            return None;
        }
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
        st.last_shard = Some(ev.shard);
        st.last_ts_ns = ev.ts_ns;
        Some(EventFeatures {
            delta,
            op,
            size: size_bucket(ev.shards),
            gap,
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
        let mut f = Featurizer::new(vocab, false);
        let mut st = FeatureState::default();
        let a = f.features(&mut st, &ev(0, Op::Read, 100, 1)).unwrap();
        assert_eq!(
            a,
            EventFeatures {
                delta: 5,
                op: 0,
                size: 1,
                gap: 0
            }
        );
        let b = f.features(&mut st, &ev(5000, Op::Write, 101, 2)).unwrap();
        assert_eq!(b.delta, f.vocab.class_of(1));
        assert_eq!((b.op, b.size, b.gap), (1, 2, 2));
        let c = f.features(&mut st, &ev(6000, Op::Read, 90, 1)).unwrap();
        assert_eq!(c.delta, OOV, "-11 is not in the vocabulary");
        assert!(f.features(&mut st, &ev(7000, Op::Flush, 0, 1)).is_none());
        assert!(
            f.features(&mut st, &ev(7500, Op::Read, 90, 1)).is_none(),
            "a re-read is not an input"
        );
        assert_eq!(st.last_shard(), Some(90), "a flush is not an input");
        let d = f.features(&mut st, &ev(8000, Op::Read, 94, 1)).unwrap();
        assert_eq!(d.delta, f.vocab.class_of(4));
    }

    #[test]
    fn online_growth_gives_a_repeated_delta_a_class() {
        let mut f = Featurizer::new(DeltaVocab::new(8, 64, 2), true);
        let mut st = FeatureState::default();
        let classes: Vec<u32> = (0..5u64)
            .map(|i| {
                f.features(&mut st, &ev(i, Op::Read, 7 * i, 1))
                    .unwrap()
                    .delta
            })
            .collect();
        assert_eq!(classes, vec![9, OOV, 1, 1, 1]);
        assert_eq!(f.vocab.delta_of(1), Some(7));
    }
}
