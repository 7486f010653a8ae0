//! Readahead baseline, modelled on Linux file readahead at shard granularity.
//!
//! Per stream (region) up to [`PREFETCH_TRACKERS_PER_STREAM`] concurrent
//! sequential readers are tracked, each with a window. A read is
//! *sequential* for a tracker when it starts between the tracker's last shard
//! and one past the furthest shard already read ahead (so reads landing in
//! the readahead window count, as in Linux). On each sequential read the
//! window grows — the first hit opens it at `max(1, depth / 4)` shards, each
//! further window doubles it up to `depth`. As in Linux's async readahead, a
//! new window is predicted only when the reader comes within half a window
//! of the end of what was already predicted (the lookahead marker); it is
//! the next `window` shards after that end, so stagings go out in
//! contiguous batches and nothing is predicted twice. A read that
//! matches no tracker is a miss: it starts a new tracker with its window
//! reset (the least recently used tracker is replaced). A read on the first
//! shards of a region may continue a tracker of the previous region, so
//! region boundaries do not restart a long scan. Confidence after `n`
//! consecutive sequential reads is `n / (n + 1)`. Only reads are observed.

use super::stream::{LruMap, Trackers};
use super::{push_unique, Prediction, Predictor, PrefetchConfig, ShardEvent, StreamKey};
use crate::constants::PREFETCH_TRACKERS_PER_STREAM;
use crate::trace::Op;

#[derive(Debug, Clone, Copy)]
struct Window {
    /// Last shard read.
    last: u64,
    /// Furthest shard predicted (≥ last).
    horizon: u64,
    /// Current window in shards (0 before the first sequential hit).
    window: u32,
    /// Consecutive sequential reads.
    run: u32,
}

impl Window {
    fn matches(&self, ev: &ShardEvent) -> bool {
        ev.shard >= self.last && ev.shard <= self.horizon.max(self.last + 1) + 1
    }
}

/// The readahead predictor.
pub struct Readahead {
    cfg: PrefetchConfig,
    streams: LruMap<StreamKey, Trackers<Window>>,
}

impl Readahead {
    pub fn new(cfg: &PrefetchConfig) -> Self {
        Readahead {
            cfg: *cfg,
            streams: LruMap::new(cfg.streams_max),
        }
    }

    fn observe(&mut self, ev: &ShardEvent, out: &mut Vec<Prediction>) {
        let key = self.cfg.stream_of(ev);
        let region_shards = self.cfg.region_shards();
        // A scan crossing into this region continues its tracker.
        let carried = if ev.shard % region_shards < u64::from(self.cfg.depth) + 1 && key.region > 0
        {
            let prev = StreamKey {
                volume: key.volume,
                region: key.region - 1,
            };
            self.streams.get_mut(&prev).and_then(|t| {
                let i = t.find(|w| w.matches(ev))?;
                Some(*t.get_mut(i))
            })
        } else {
            None
        };
        let trackers = self
            .streams
            .get_or_insert_with(&key, || Trackers::new(PREFETCH_TRACKERS_PER_STREAM));
        let i = match trackers.find(|w| w.matches(ev)) {
            Some(i) => i,
            None => match carried {
                Some(w) => trackers.add(w),
                None => {
                    let last = ev.last_shard();
                    trackers.add(Window {
                        last,
                        horizon: last,
                        window: 0,
                        run: 0,
                    });
                    return;
                }
            },
        };
        let w = trackers.get_mut(i);
        let end = ev.last_shard();
        if end <= w.last {
            return; // re-read of the current shard: no progress
        }
        let depth = self.cfg.depth;
        w.run = w.run.saturating_add(1);
        w.last = end;
        // Async trigger (Linux's lookahead marker): a new window is read
        // ahead only when the reader is within half a window of the end of
        // what was predicted, so stagings go out in contiguous batches.
        if w.window != 0 && end.saturating_add(u64::from(w.window / 2)) < w.horizon {
            return;
        }
        w.window = if w.window == 0 {
            (depth / 4).max(1)
        } else {
            (w.window * 2).min(depth)
        };
        let from = w.horizon.max(end) + 1;
        let to = w.horizon.max(end).saturating_add(u64::from(w.window));
        let confidence = w.run as f32 / (w.run as f32 + 1.0);
        let start = out.len();
        for shard in from..=to {
            push_unique(
                out,
                start,
                Prediction {
                    volume: ev.volume,
                    shard,
                    confidence,
                },
            );
        }
        w.horizon = w.horizon.max(to).max(end);
    }
}

impl Predictor for Readahead {
    fn name(&self) -> &'static str {
        "readahead"
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
    fn window_ramps_and_pipelines() {
        let cfg = PrefetchConfig {
            shard_bytes: 1 << 16,
            depth: 8,
            ..Default::default()
        };
        let mut ra = Readahead::new(&cfg);
        let mut out = Vec::new();
        ra.step(&[read(100)], &mut out);
        assert!(out.is_empty(), "a first read predicts nothing");
        ra.step(&[read(101)], &mut out);
        assert_eq!(
            out.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![102, 103]
        );
        out.clear();
        ra.step(&[read(102)], &mut out);
        assert_eq!(
            out.iter().map(|p| p.shard).collect::<Vec<_>>(),
            (104..=107).collect::<Vec<_>>()
        );
        out.clear();
        ra.step(&[read(103), read(104)], &mut out);
        assert!(out.is_empty(), "before the lookahead marker");
        ra.step(&[read(105)], &mut out);
        assert_eq!(
            out.iter().map(|p| p.shard).collect::<Vec<_>>(),
            (108..=115).collect::<Vec<_>>()
        );
        assert!(out[0].confidence > 0.8);
        out.clear();
        // A jump is a miss: new tracker, nothing predicted.
        ra.step(&[read(5000)], &mut out);
        assert!(out.is_empty());
        // The old scan continues where it was.
        ra.step(&(106..=111).map(read).collect::<Vec<_>>(), &mut out);
        assert_eq!(
            out.iter().map(|p| p.shard).collect::<Vec<_>>(),
            (116..=123).collect::<Vec<_>>()
        );
        // Writes are not observed.
        out.clear();
        ra.step(
            &[ShardEvent {
                op: Op::Write,
                ..read(106)
            }],
            &mut out,
        );
        assert!(out.is_empty());
    }
}
