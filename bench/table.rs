//! Criterion bench of the LBA→shard table's I/O-path operations.
//!
//! - `lookup_4k_read`: pin an epoch guard, validate and resolve a 4 KiB read
//!   at a random block of a fully mapped 64 GiB volume (1 MiB shards), and
//!   consume its one piece. Variants: whole slots, slots split into 16
//!   children, and 2 threads doing the same concurrently (reported time is
//!   per lookup as each thread sees it: wall time / lookups per thread), and
//!   `1_thread_hot` with all offsets in the first 64 slots (table in cache).
//! - `write_enter_exit`: pin, `writer_enter_at` + drop of the ticket on a
//!   random slot; 1 thread, and 2 threads on the same slot (contended CAS).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shardblk::volume::split::{resolve, PieceKind, DATA_START_RESERVED_HEAD};
use shardblk::volume::table::{Entry, ShardTable, WriteEnter};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const VOLUME_BYTES: u64 = 64 << 30;
const SHARD_BYTES: u64 = MIB;
const BLOCK: u64 = 4096;
const OFFSETS: usize = 1 << 16;

fn mapped_table(split_children: u32) -> ShardTable {
    let t = ShardTable::new(VOLUME_BYTES, SHARD_BYTES).unwrap();
    let units = SHARD_BYTES / shardblk::constants::UNIT_SIZE_BYTES;
    let g = crossbeam_epoch::pin();
    for slot in 0..t.slots() {
        t.try_map(
            slot,
            Entry::mapped((slot % 2) as usize, slot * units, units.trailing_zeros()).unwrap(),
        )
        .unwrap();
        if split_children > 1 {
            t.split(slot, split_children, &g).unwrap();
        }
    }
    t
}

/// Random block offsets (fixed seed, xorshift).
fn offsets(seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..OFFSETS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (VOLUME_BYTES / BLOCK)) * BLOCK
        })
        .collect()
}

fn lookup(t: &ShardTable, offset: u64) -> u64 {
    let g = crossbeam_epoch::pin();
    let mut sum = 0;
    for p in resolve(t, &g, offset, BLOCK, &DATA_START_RESERVED_HEAD).unwrap() {
        if let PieceKind::Mapped {
            device_byte_offset, ..
        } = p.kind
        {
            sum += device_byte_offset;
        }
    }
    sum
}

/// Run `op` `iters` times on each of `threads` threads at once; returns the
/// wall time (so the per-iteration figure is per op as each thread sees it).
fn concurrent(threads: usize, iters: u64, op: &(dyn Fn(usize, u64) + Sync)) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for tid in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for i in 0..iters {
                    op(tid, i);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup_4k_read");
    for (name, children) in [("whole", 1u32), ("split16", 16)] {
        let t = mapped_table(children);
        let offs = [offsets(1), offsets(2)];
        group.bench_function(BenchmarkId::new(name, "1_thread"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (OFFSETS - 1);
                black_box(lookup(&t, offs[0][i]))
            })
        });
        // The same with every offset in the first 64 slots (cache-resident
        // table): the instruction cost without the memory misses.
        let hot: Vec<u64> = offs[0].iter().map(|o| o % (64 * SHARD_BYTES)).collect();
        group.bench_function(BenchmarkId::new(name, "1_thread_hot"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (OFFSETS - 1);
                black_box(lookup(&t, hot[i]))
            })
        });
        group.bench_function(BenchmarkId::new(name, "2_threads"), |b| {
            b.iter_custom(|iters| {
                concurrent(2, iters, &|tid, i| {
                    black_box(lookup(&t, offs[tid][(i as usize) & (OFFSETS - 1)]));
                })
            })
        });
    }
    group.finish();
}

fn write_pair(t: &ShardTable, offset: u64) {
    let g = crossbeam_epoch::pin();
    match t
        .writer_enter_at(offset / SHARD_BYTES, offset % SHARD_BYTES, &g)
        .unwrap()
    {
        WriteEnter::Entered(ticket) => {
            black_box(ticket.entry());
            t.writer_exit(ticket);
        }
        other => panic!("{other:?}"),
    };
}

fn bench_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("write_enter_exit");
    let t = mapped_table(1);
    let offs = offsets(3);
    group.bench_function("1_thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (OFFSETS - 1);
            write_pair(&t, offs[i])
        })
    });
    group.bench_function("2_threads_same_slot", |b| {
        b.iter_custom(|iters| concurrent(2, iters, &|_, _| write_pair(&t, 5 * SHARD_BYTES)))
    });
    group.finish();
}

criterion_group!(benches, bench_lookup, bench_write);
criterion_main!(benches);
