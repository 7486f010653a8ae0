//! Seeded synthetic workloads for evaluating predictors: each a read trace
//! in the project's trace format.
//!
//! Timing: an application reads in *bursts* (one read, one B-tree lookup,
//! one file) and computes between them. Reads inside a burst are
//! `interarrival_ns` apart on average, and each burst starts after an extra
//! think time of mean `think_ns` (both exponential). Think time is what lets
//! a prefetcher stage the next burst's first shard before it is read: the
//! simulator's staging channel spends a cold-tier seek on every random shard
//! (6.4 ms at 64 KiB, 13 ms at 1 MiB with the default latencies), so at 1 ms
//! between random reads no predictor can stage in time, however good.
//!
//! Kinds (`streams`, `io_bytes`, `volume_bytes` from [`SynthConfig`]):
//! - `sequential`: `streams` sequential readers, each from a random aligned
//!   start, interleaved at random (each event picks a reader; a burst is one read).
//! - `strided`: `streams` readers, each with its own stride (2..=8 MiB, so a
//!   stride spans several shards at 64 KiB and 1 MiB), interleaved at random.
//! - `btree`: lookups in a 3-level B-tree of `io_bytes` nodes (fanout 64,
//!   4096 bulk-loaded contiguous leaves, root and inner nodes at random
//!   places): each lookup reads root, inner node, leaf; 80 % of lookups go
//!   to a hot 5 % of the keys; 20 % are range scans reading 1..=8
//!   consecutive leaves (a burst is one lookup).
//! - `repeated`: a fixed random sequence of `min(events / 4, 2000)` reads
//!   replayed until `events` (a batch job run again and again; a burst is
//!   one read).
//! - `boot`: a boot (or a build, or any program set started the same way
//!   each time) replayed: [`BOOT_FILES`] files of 1..=[`BOOT_FILE_READS_MAX`]
//!   consecutive reads each at random aligned places, read in the same order
//!   every replay; after a file, with probability [`BOOT_LIBRARY_PERCENT`] %,
//!   one of [`BOOT_LIBRARIES`] shared library files (fixed per place in the
//!   sequence) is read too, so a library is read from several places and
//!   what follows it depends on what preceded it (the order-2 delta context
//!   at a library's end is ambiguous). A burst is one file.
//! - `random`: uniform random aligned reads over the volume.
//!
//! Contract: the same config (seed included) gives the same trace; every
//! read lies inside `volume_bytes` and is `io_bytes` long; timestamps do
//! not decrease.

use crate::constants::{SYNTH_INTERARRIVAL_DEFAULT_NS, SYNTH_THINK_DEFAULT_NS};
use crate::trace::{Op, TraceEvent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `boot`: files read in order per replay.
pub const BOOT_FILES: usize = 120;
/// `boot`: most consecutive reads of one file (at least one).
pub const BOOT_FILE_READS_MAX: u64 = 8;
/// `boot`: shared library files.
pub const BOOT_LIBRARIES: usize = 12;
/// `boot`: chance in percent that a library read follows a file.
pub const BOOT_LIBRARY_PERCENT: u32 = 30;

/// Workload kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SynthKind {
    Sequential,
    Strided,
    Btree,
    Repeated,
    Boot,
    Random,
}

impl SynthKind {
    pub const ALL: [SynthKind; 6] = [
        SynthKind::Sequential,
        SynthKind::Strided,
        SynthKind::Btree,
        SynthKind::Repeated,
        SynthKind::Boot,
        SynthKind::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SynthKind::Sequential => "sequential",
            SynthKind::Strided => "strided",
            SynthKind::Btree => "btree",
            SynthKind::Repeated => "repeated",
            SynthKind::Boot => "boot",
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
                    "unknown workload {s:?} (known: sequential, strided, btree, repeated, boot, random)"
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
    /// Mean time between reads inside a burst.
    pub interarrival_ns: u64,
    /// Mean extra time before each burst (the application computing).
    pub think_ns: u64,
    /// Concurrent readers (sequential, strided).
    pub streams: usize,
}

impl SynthConfig {
    /// Defaults: 20 000 reads of 64 KiB over 64 GiB, 8 streams, reads in a
    /// burst [`SYNTH_INTERARRIVAL_DEFAULT_NS`] apart, bursts after
    /// [`SYNTH_THINK_DEFAULT_NS`] of think time (means).
    pub fn new(kind: SynthKind, seed: u64) -> Self {
        SynthConfig {
            kind,
            events: 20_000,
            seed,
            volume_bytes: 64 << 30,
            io_bytes: 64 << 10,
            interarrival_ns: SYNTH_INTERARRIVAL_DEFAULT_NS,
            think_ns: SYNTH_THINK_DEFAULT_NS,
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
    // Indices into `offsets` where a burst starts (kinds whose burst is one
    // read leave it empty: every read starts one).
    let mut bursts: Vec<usize> = Vec::new();
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
                bursts.push(offsets.len());
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
        SynthKind::Boot => {
            // A file: (first slot, reads).
            let file = |rng: &mut ChaCha8Rng| {
                let reads = rng.random_range(1..=BOOT_FILE_READS_MAX).min(slots);
                (rng.random_range(0..=slots - reads), reads)
            };
            let files: Vec<(u64, u64)> = (0..BOOT_FILES).map(|_| file(&mut rng)).collect();
            let libs: Vec<(u64, u64)> = (0..BOOT_LIBRARIES).map(|_| file(&mut rng)).collect();
            let mut order: Vec<(u64, u64)> = Vec::new();
            for f in files {
                order.push(f);
                if rng.random_ratio(BOOT_LIBRARY_PERCENT, 100) {
                    order.push(libs[rng.random_range(0..libs.len())]);
                }
            }
            'replay: loop {
                for &(first, reads) in &order {
                    bursts.push(offsets.len());
                    for s in first..first + reads {
                        if offsets.len() == cfg.events {
                            break 'replay;
                        }
                        offsets.push(s * io);
                    }
                }
            }
        }
        SynthKind::Random => {
            offsets.extend((0..cfg.events).map(|_| rng.random_range(0..slots) * io));
        }
    }
    // Exponential gaps with the configured means.
    let exp = |rng: &mut ChaCha8Rng, mean: u64| {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        (-u.ln() * mean as f64) as u64
    };
    let mut t = 0u64;
    let mut next_burst = bursts.iter().peekable();
    offsets
        .into_iter()
        .enumerate()
        .map(|(i, offset)| {
            let starts = if bursts.is_empty() {
                true
            } else if next_burst.peek() == Some(&&i) {
                next_burst.next();
                true
            } else {
                false
            };
            if i > 0 {
                t += exp(&mut rng, cfg.interarrival_ns);
                if starts && cfg.think_ns > 0 {
                    t += exp(&mut rng, cfg.think_ns);
                }
            }
            TraceEvent {
                ts_ns: t,
                op: Op::Read,
                offset,
                len: io,
            }
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
            let flat = generate(&SynthConfig { think_ns: 0, ..cfg });
            let mean = flat.last().unwrap().ts_ns as f64 / 2999.0;
            assert!(
                (mean / cfg.interarrival_ns as f64 - 1.0).abs() < 0.1,
                "{kind:?} mean {mean}"
            );
            // Think time only stretches the gaps before bursts.
            assert!(a.last().unwrap().ts_ns > flat.last().unwrap().ts_ns);
        }
        assert_eq!("btree".parse::<SynthKind>(), Ok(SynthKind::Btree));
        assert_eq!("boot".parse::<SynthKind>(), Ok(SynthKind::Boot));
        assert!("zipf".parse::<SynthKind>().is_err());
    }

    #[test]
    fn boot_replays_files_in_order_with_shared_libraries() {
        let io = 64 << 10;
        let cfg = SynthConfig {
            events: 20_000,
            ..SynthConfig::new(SynthKind::Boot, 5)
        };
        let ev = generate(&cfg);
        // Runs of consecutive reads: files.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for e in &ev {
            match runs.last_mut() {
                Some((first, n)) if *first + *n * io == e.offset && *n < BOOT_FILE_READS_MAX => {
                    *n += 1
                }
                _ => runs.push((e.offset, 1)),
            }
        }
        // The sequence of files repeats with a fixed period.
        let period = (1..runs.len() / 2)
            .find(|&p| runs[p..runs.len() - 1] == runs[..runs.len() - 1 - p])
            .expect("a repeating file order");
        assert!((BOOT_FILES..=2 * BOOT_FILES).contains(&period), "{period}");
        // Some file is read at several places in one replay, followed by
        // different files (what comes next is not a function of it alone).
        let one = &runs[..period];
        let shared = one.iter().enumerate().any(|(i, f)| {
            one.iter()
                .enumerate()
                .any(|(j, g)| j > i && g == f && one.get(i + 1) != one.get(j + 1))
        });
        assert!(shared, "no library read from two places");
        // Think time separates files: gaps before a file's first read are
        // longer on average than gaps inside a file.
        let (mut inside, mut before) = ((0u64, 0u64), (0u64, 0u64));
        for w in ev.windows(2) {
            let gap = w[1].ts_ns - w[0].ts_ns;
            let acc = if w[1].offset == w[0].offset + io {
                &mut inside
            } else {
                &mut before
            };
            acc.0 += gap;
            acc.1 += 1;
        }
        let (inside, before) = (inside.0 / inside.1, before.0 / before.1);
        assert!(
            before > inside + cfg.think_ns / 2,
            "{inside} ns inside files, {before} ns before one"
        );
    }
}
