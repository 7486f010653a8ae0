//! Seeded synthetic workloads for evaluating predictors: each a read trace
//! in the project's trace format with exponential inter-arrival times.
//!
//! Kinds (`streams`, `io_bytes`, `volume_bytes` from [`SynthConfig`]):
//! - `sequential`: `streams` sequential readers, each from a random aligned
//!   start, interleaved at random (each event picks a reader).
//! - `strided`: `streams` readers, each with its own stride (2..=8 MiB, so a
//!   stride spans several shards at 64 KiB and 1 MiB), interleaved at random.
//! - `btree`: lookups in a 3-level B-tree of `io_bytes` nodes (fanout 64,
//!   4096 bulk-loaded contiguous leaves, root and inner nodes at random
//!   places): each lookup reads root, inner node, leaf; 80 % of lookups go
//!   to a hot 5 % of the keys; 20 % are range scans reading 1..=8
//!   consecutive leaves.
//! - `repeated`: a fixed random sequence of `min(events / 4, 2000)` reads
//!   replayed until `events` (a boot or a batch job run again and again).
//! - `random`: uniform random aligned reads over the volume.
//!
//! Contract: the same config (seed included) gives the same trace; every
//! read lies inside `volume_bytes` and is `io_bytes` long.

use crate::trace::{Op, TraceEvent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Workload kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SynthKind {
    Sequential,
    Strided,
    Btree,
    Repeated,
    Random,
}

impl SynthKind {
    pub const ALL: [SynthKind; 5] = [
        SynthKind::Sequential,
        SynthKind::Strided,
        SynthKind::Btree,
        SynthKind::Repeated,
        SynthKind::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SynthKind::Sequential => "sequential",
            SynthKind::Strided => "strided",
            SynthKind::Btree => "btree",
            SynthKind::Repeated => "repeated",
            SynthKind::Random => "random",
        }
    }
}

impl std::str::FromStr for SynthKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SynthKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown workload {s:?} (known: sequential, strided, btree, repeated, random)"
                )
            })
    }
}

/// Parameters of a synthetic workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthConfig {
    pub kind: SynthKind,
    /// Reads generated.
    pub events: usize,
    pub seed: u64,
    /// Volume size in bytes (reads stay inside).
    pub volume_bytes: u64,
    /// Bytes per read (and B-tree node size); a multiple of 4096.
    pub io_bytes: u64,
    /// Mean time between reads.
    pub interarrival_ns: u64,
    /// Concurrent readers (sequential, strided).
    pub streams: usize,
}

impl SynthConfig {
    /// Defaults: 20 000 reads of 64 KiB every 1 ms on average over 64 GiB,
    /// 8 streams.
    pub fn new(kind: SynthKind, seed: u64) -> Self {
        SynthConfig {
            kind,
            events: 20_000,
            seed,
            volume_bytes: 64 << 30,
            io_bytes: 64 << 10,
            interarrival_ns: 1_000_000,
            streams: 8,
        }
    }
}

/// Generate the workload. Panics never; degenerate sizes are clamped
/// (at least one block, one stream, a volume of at least 64 reads).
pub fn generate(cfg: &SynthConfig) -> Vec<TraceEvent> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let io = cfg.io_bytes.max(4096) / 4096 * 4096;
    let volume = cfg.volume_bytes.max(64 * io) / io * io;
    let slots = volume / io; // aligned read positions
    let streams = cfg.streams.max(1);
    let mut offsets: Vec<u64> = Vec::with_capacity(cfg.events);
    match cfg.kind {
        SynthKind::Sequential => {
            let mut pos: Vec<u64> = (0..streams).map(|_| rng.random_range(0..slots)).collect();
            while offsets.len() < cfg.events {
                let s = rng.random_range(0..streams);
                offsets.push(pos[s] * io);
                pos[s] = (pos[s] + 1) % slots;
            }
        }
        SynthKind::Strided => {
            let mib = (1u64 << 20).max(io);
            let mut st: Vec<(u64, u64)> = (0..streams)
                .map(|_| {
                    (
                        rng.random_range(0..volume) / io * io,
                        rng.random_range(2..=8u64) * mib,
                    )
                })
                .collect();
            while offsets.len() < cfg.events {
                let s = rng.random_range(0..streams);
                offsets.push(st[s].0);
                st[s].0 = (st[s].0 + st[s].1) % volume / io * io;
            }
        }
        SynthKind::Btree => {
            const FANOUT: u64 = 64;
            let leaves = FANOUT * FANOUT;
            let root = rng.random_range(0..slots);
            let inner: Vec<u64> = (0..FANOUT).map(|_| rng.random_range(0..slots)).collect();
            let leaf_base = rng.random_range(0..slots.saturating_sub(leaves).max(1));
            let hot_keys = leaves / 20;
            while offsets.len() < cfg.events {
                let key = if rng.random_bool(0.8) {
                    rng.random_range(0..hot_keys)
                } else {
                    rng.random_range(0..leaves)
                };
                offsets.push(root * io);
                offsets.push(inner[(key / FANOUT) as usize] * io);
                let scan = if rng.random_bool(0.2) {
                    rng.random_range(1..=8u64)
                } else {
                    1
                };
                for l in key..(key + scan).min(leaves) {
                    offsets.push(((leaf_base + l) % slots) * io);
                }
            }
            offsets.truncate(cfg.events);
        }
        SynthKind::Repeated => {
            let len = (cfg.events / 4).clamp(1, 2000);
            let seq: Vec<u64> = (0..len).map(|_| rng.random_range(0..slots) * io).collect();
            while offsets.len() < cfg.events {
                let n = (cfg.events - offsets.len()).min(len);
                offsets.extend_from_slice(&seq[..n]);
            }
        }
        SynthKind::Random => {
            offsets.extend((0..cfg.events).map(|_| rng.random_range(0..slots) * io));
        }
    }
    let mut t = 0u64;
    offsets
        .into_iter()
        .map(|offset| {
            let ev = TraceEvent {
                ts_ns: t,
                op: Op::Read,
                offset,
                len: io,
            };
            // Exponential inter-arrival with the configured mean.
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            t += (-u.ln() * cfg.interarrival_ns as f64) as u64;
            ev
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_bounds() {
        for kind in SynthKind::ALL {
            let cfg = SynthConfig {
                events: 3000,
                ..SynthConfig::new(kind, 42)
            };
            let a = generate(&cfg);
            assert_eq!(a, generate(&cfg), "{kind:?}");
            assert_ne!(a, generate(&SynthConfig { seed: 43, ..cfg }), "{kind:?}");
            assert_eq!(a.len(), 3000);
            assert!(a.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
            assert!(a.iter().all(|e| e.offset + e.len <= cfg.volume_bytes
                && e.len == cfg.io_bytes
                && e.offset % 4096 == 0));
            let mean = a.last().unwrap().ts_ns as f64 / 2999.0;
            assert!(
                (mean / cfg.interarrival_ns as f64 - 1.0).abs() < 0.1,
                "{kind:?} mean {mean}"
            );
        }
        assert_eq!("btree".parse::<SynthKind>(), Ok(SynthKind::Btree));
        assert!("zipf".parse::<SynthKind>().is_err());
    }
}
