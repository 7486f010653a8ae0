//! Stride baseline: a reference-prediction-table-like detector of constant
//! shard deltas, for several interleaved strided scans per stream.
//!
//! Per stream (region): the last [`HISTORY`] shard positions read and up to
//! [`PREFETCH_TRACKERS_PER_STREAM`] trackers `{last, stride, hits}`.
//! - A read at `s` that a tracker predicted (`last + stride == s`) is a hit:
//!   `hits` grows and the tracker moves to `s`.
//! - Otherwise, if `s` completes an arithmetic progression `p - d, p, s`
//!   (`d = s - p ≠ 0`) with two positions `p - d`, `p` in the history, a new
//!   tracker with stride `d` is created (least recently used one replaced).
//!   Three points are needed, so two interleaved scans never create a
//!   tracker from each other's positions unless they happen to line up.
//! - Re-reads of the tracker's current shard are ignored.
//!
//! On a hit or a detection the tracker predicts `s + k * stride` for
//! `k = 1, 2, ...` (each position as wide as the request, in shards) until
//! `depth` shards are predicted, skipping positions it already predicted.
//! Confidence is `1 - 1 / (n + 2)` with `n` the hits so far (capped at
//! 8): 0.5 on detection, 0.9 at most. Only reads are observed.

use super::stream::{LruMap, Trackers};
use super::{push_unique, Prediction, Predictor, PrefetchConfig, ShardEvent, StreamKey};
use crate::constants::PREFETCH_TRACKERS_PER_STREAM;
use crate::trace::Op;

/// Recent positions kept per stream for detection.
pub const HISTORY: usize = 16;
/// Hits beyond which confidence stops growing.
const HITS_CAP: u32 = 8;

#[derive(Debug, Clone, Copy)]
struct Tracker {
    last: u64,
    stride: i64,
    hits: u32,
    /// Furthest position predicted, in strides ahead of `last`.
    ahead: u32,
}

struct StreamState {
    history: [u64; HISTORY],
    len: usize,
    next: usize,
    trackers: Trackers<Tracker>,
}

impl StreamState {
    fn new() -> Self {
        StreamState {
            history: [0; HISTORY],
            len: 0,
            next: 0,
            trackers: Trackers::new(PREFETCH_TRACKERS_PER_STREAM),
        }
    }
    fn remember(&mut self, s: u64) {
        self.history[self.next] = s;
        self.next = (self.next + 1) % HISTORY;
        self.len = (self.len + 1).min(HISTORY);
    }
    fn seen(&self, s: u64) -> bool {
        self.history[..self.len].contains(&s)
    }
    /// Most recent first.
    fn recent(&self) -> impl Iterator<Item = u64> + '_ {
        (1..=self.len).map(move |k| self.history[(self.next + HISTORY - k) % HISTORY])
    }
}

/// The stride predictor.
pub struct Stride {
    cfg: PrefetchConfig,
    streams: LruMap<StreamKey, StreamState>,
}

impl Stride {
    pub fn new(cfg: &PrefetchConfig) -> Self {
        Stride {
            cfg: *cfg,
            streams: LruMap::new(cfg.streams_max),
        }
    }

    fn observe(&mut self, ev: &ShardEvent, out: &mut Vec<Prediction>) {
        let key = self.cfg.stream_of(ev);
        let st = self.streams.get_or_insert_with(&key, StreamState::new);
        let s = ev.shard;
        let hit = st
            .trackers
            .find(|t| t.last.checked_add_signed(t.stride) == Some(s));
        if st.trackers.find(|t| t.last == s).is_some() && hit.is_none() {
            return; // re-read of a tracked position
        }
        let idx = match hit {
            Some(i) => {
                let t = st.trackers.get_mut(i);
                t.last = s;
                t.hits = (t.hits + 1).min(HITS_CAP);
                t.ahead = t.ahead.saturating_sub(1);
                Some(i)
            }
            None => {
                let found = st.recent().find_map(|p| {
                    let d = s as i128 - p as i128;
                    let back = p as i128 - d;
                    (d != 0 && i64::try_from(d).is_ok() && back >= 0 && st.seen(back as u64))
                        .then_some(d as i64)
                });
                found.map(|stride| {
                    st.trackers.add(Tracker {
                        last: s,
                        stride,
                        hits: 0,
                        ahead: 0,
                    })
                })
            }
        };
        st.remember(s);
        let Some(i) = idx else { return };
        let t = st.trackers.get_mut(i);
        let width = u64::from(ev.shards.max(1));
        let confidence = 1.0 - 1.0 / (t.hits as f32 + 2.0);
        let start = out.len();
        let mut emitted = 0u64;
        let mut k = 1u32;
        while emitted < u64::from(self.cfg.depth) {
            let Some(pos) = i64::from(k)
                .checked_mul(t.stride)
                .and_then(|o| s.checked_add_signed(o))
            else {
                break;
            };
            if k > t.ahead {
                for shard in pos..pos.saturating_add(width) {
                    if emitted >= u64::from(self.cfg.depth) {
                        break;
                    }
                    push_unique(
                        out,
                        start,
                        Prediction {
                            volume: ev.volume,
                            shard,
                            confidence,
                        },
                    );
                    emitted += 1;
                }
                t.ahead = k;
            } else {
                emitted += width;
            }
            k += 1;
        }
    }
}

impl Predictor for Stride {
    fn name(&self) -> &'static str {
        "stride"
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
    fn detects_two_interleaved_strides() {
        let cfg = PrefetchConfig {
            shard_bytes: 1 << 16,
            depth: 3,
            ..Default::default()
        };
        let mut p = Stride::new(&cfg);
        let mut out = Vec::new();
        // A: 100, 110, 120 ...  B: 1000, 993, 986 ...
        p.step(&[read(100), read(1000), read(110), read(993)], &mut out);
        assert!(out.is_empty());
        p.step(&[read(120)], &mut out);
        assert_eq!(
            out.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![130, 140, 150]
        );
        assert_eq!(out[0].confidence, 0.5);
        out.clear();
        p.step(&[read(986)], &mut out);
        assert_eq!(
            out.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![979, 972, 965]
        );
        out.clear();
        p.step(&[read(130)], &mut out);
        assert_eq!(
            out.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![160],
            "only the new position"
        );
        assert!(out[0].confidence > 0.6);
    }
}
