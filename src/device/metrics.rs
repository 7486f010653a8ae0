//! Per-queue observability of the ublk device: the trace ring feeding the
//! prefetcher, latency histograms by op, and the snapshots `shardblk stats`
//! reads.
//!
//! Contract:
//! - [`trace_ring`]: single producer (the queue thread), single consumer (the
//!   prefetcher). [`TraceProducer::push`] never waits: when the ring is full
//!   the event is dropped and counted.
//! - [`QueueMetrics`] belongs to one queue thread; recording is a histogram
//!   increment and two counter adds (no lock, no allocation). The thread calls
//!   [`QueueMetrics::maybe_publish`] from its loop; it copies its state into
//!   the shared snapshot at most every `DEVICE_STATS_PUBLISH_MS`, with
//!   `try_lock` so a reader holding the snapshot never stalls I/O (the copy is
//!   then simply skipped until the next period). Readers see data at most one
//!   period old (plus the idle wake interval when the queue is idle).
//! - Times are nanoseconds of a clock passed in by the caller.

use crate::constants::{DEVICE_LATENCY_MAX_NS, DEVICE_LATENCY_SIGFIG, DEVICE_STATS_PUBLISH_MS};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A block request's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Op {
    Read = 0,
    Write = 1,
    Flush = 2,
    Discard = 3,
    WriteZeroes = 4,
}

/// Every op, in index order.
pub const OPS: [Op; 5] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes];

impl Op {
    pub fn name(self) -> &'static str {
        ["read", "write", "flush", "discard", "write_zeroes"][self as usize]
    }
}

/// One request as the prefetcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// Nanoseconds since the device started.
    pub time_ns: u64,
    pub volume: u32,
    pub offset: u64,
    pub len: u32,
    pub op: Op,
}

/// The queue thread's end of a trace ring.
pub struct TraceProducer {
    ring: rtrb::Producer<TraceEvent>,
    dropped: Arc<AtomicU64>,
}

/// The prefetcher's end of a trace ring.
pub struct TraceConsumer {
    ring: rtrb::Consumer<TraceEvent>,
    dropped: Arc<AtomicU64>,
}

/// A trace ring of `capacity` events.
pub fn trace_ring(capacity: usize) -> (TraceProducer, TraceConsumer) {
    let (p, c) = rtrb::RingBuffer::new(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        TraceProducer {
            ring: p,
            dropped: dropped.clone(),
        },
        TraceConsumer { ring: c, dropped },
    )
}

impl TraceProducer {
    /// Push an event, or drop and count it when the ring is full.
    pub fn push(&mut self, ev: TraceEvent) {
        if self.ring.push(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl TraceConsumer {
    pub fn pop(&mut self) -> Option<TraceEvent> {
        self.ring.pop().ok()
    }
    /// Events dropped so far because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    pub fn len(&self) -> usize {
        self.ring.slots()
    }
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, DEVICE_LATENCY_MAX_NS, DEVICE_LATENCY_SIGFIG)
        .expect("valid histogram bounds")
}

/// Counters and histograms of one queue.
#[derive(Clone)]
pub struct QueueSnapshot {
    pub queue: u16,
    pub cpu: usize,
    pub hist: [Histogram<u64>; 5],
    pub ops: [u64; 5],
    pub bytes: [u64; 5],
    pub errors: u64,
    pub trace_dropped: u64,
    /// Clock reading of the copy (ns).
    pub taken_ns: u64,
}

impl QueueSnapshot {
    pub fn new(queue: u16, cpu: usize) -> Self {
        QueueSnapshot {
            queue,
            cpu,
            hist: std::array::from_fn(|_| new_hist()),
            ops: [0; 5],
            bytes: [0; 5],
            errors: 0,
            trace_dropped: 0,
            taken_ns: 0,
        }
    }
    fn copy_from(&mut self, o: &QueueSnapshot) {
        for (d, s) in self.hist.iter_mut().zip(&o.hist) {
            d.reset();
            d.add(s).expect("same histogram bounds");
        }
        self.ops = o.ops;
        self.bytes = o.bytes;
        self.errors = o.errors;
        self.trace_dropped = o.trace_dropped;
        self.taken_ns = o.taken_ns;
    }
}

/// A queue thread's live metrics and the shared snapshot it publishes.
pub struct QueueMetrics {
    live: QueueSnapshot,
    shared: Arc<Mutex<QueueSnapshot>>,
    last_publish_ns: u64,
}

impl QueueMetrics {
    pub fn new(queue: u16, cpu: usize) -> Self {
        QueueMetrics {
            live: QueueSnapshot::new(queue, cpu),
            shared: Arc::new(Mutex::new(QueueSnapshot::new(queue, cpu))),
            last_publish_ns: 0,
        }
    }
    /// The snapshot readers lock.
    pub fn shared(&self) -> Arc<Mutex<QueueSnapshot>> {
        self.shared.clone()
    }
    /// Record one completed request.
    pub fn record(&mut self, op: Op, bytes: u64, latency_ns: u64, ok: bool) {
        let i = op as usize;
        self.live.hist[i].saturating_record(latency_ns.clamp(1, DEVICE_LATENCY_MAX_NS));
        self.live.ops[i] += 1;
        self.live.bytes[i] += bytes;
        if !ok {
            self.live.errors += 1;
        }
    }
    /// Publish when a period has passed since the last copy (or `force`).
    pub fn maybe_publish(&mut self, now_ns: u64, trace_dropped: u64, force: bool) {
        if !force
            && now_ns.saturating_sub(self.last_publish_ns) < DEVICE_STATS_PUBLISH_MS * 1_000_000
        {
            return;
        }
        self.live.trace_dropped = trace_dropped;
        self.live.taken_ns = now_ns;
        if let Ok(mut s) = self.shared.try_lock() {
            s.copy_from(&self.live);
            self.last_publish_ns = now_ns;
        }
    }
}

/// Latency summary of one op (microseconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpStats {
    pub op: Op,
    pub count: u64,
    pub bytes: u64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub max_us: f64,
}

/// One queue's (or the device total's) statistics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueStats {
    /// Queue index; `None` for the device total.
    pub queue: Option<u16>,
    pub cpu: Option<usize>,
    pub errors: u64,
    pub trace_dropped: u64,
    pub ops: Vec<OpStats>,
}

/// What `shardblk stats` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceStats {
    pub number: u32,
    pub volume: String,
    pub uptime_s: f64,
    pub total: QueueStats,
    pub queues: Vec<QueueStats>,
    /// Prefetching (predictor, stager), when the device has it on.
    #[serde(default)]
    pub prefetch: Option<crate::prefetch::live::PrefetchStats>,
}

fn summarize(
    s: &QueueSnapshot,
    uptime_s: f64,
    queue: Option<u16>,
    cpu: Option<usize>,
) -> QueueStats {
    let us = |ns: u64| ns as f64 / 1000.0;
    let ops = OPS
        .iter()
        .filter(|&&op| s.ops[op as usize] > 0)
        .map(|&op| {
            let h = &s.hist[op as usize];
            let i = op as usize;
            OpStats {
                op,
                count: s.ops[i],
                bytes: s.bytes[i],
                iops: if uptime_s > 0.0 {
                    s.ops[i] as f64 / uptime_s
                } else {
                    0.0
                },
                mib_per_s: if uptime_s > 0.0 {
                    s.bytes[i] as f64 / uptime_s / (1u64 << 20) as f64
                } else {
                    0.0
                },
                p50_us: us(h.value_at_quantile(0.5)),
                p90_us: us(h.value_at_quantile(0.9)),
                p99_us: us(h.value_at_quantile(0.99)),
                p99_9_us: us(h.value_at_quantile(0.999)),
                p99_99_us: us(h.value_at_quantile(0.9999)),
                max_us: us(h.max()),
            }
        })
        .collect();
    QueueStats {
        queue,
        cpu,
        errors: s.errors,
        trace_dropped: s.trace_dropped,
        ops,
    }
}

/// Summarise per-queue snapshots and their sum.
pub fn device_stats(
    number: u32,
    volume: &str,
    uptime_s: f64,
    snaps: &[QueueSnapshot],
) -> DeviceStats {
    let mut total = QueueSnapshot::new(0, 0);
    for s in snaps {
        for (d, h) in total.hist.iter_mut().zip(&s.hist) {
            d.add(h).expect("same histogram bounds");
        }
        for i in 0..OPS.len() {
            total.ops[i] += s.ops[i];
            total.bytes[i] += s.bytes[i];
        }
        total.errors += s.errors;
        total.trace_dropped += s.trace_dropped;
    }
    DeviceStats {
        number,
        volume: volume.to_string(),
        uptime_s,
        total: summarize(&total, uptime_s, None, None),
        queues: snaps
            .iter()
            .map(|s| summarize(s, uptime_s, Some(s.queue), Some(s.cpu)))
            .collect(),
        prefetch: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_trace_ring_drops_and_counts() {
        let (mut p, mut c) = trace_ring(4);
        for i in 0..10u64 {
            p.push(TraceEvent {
                time_ns: i,
                volume: 1,
                offset: i * 4096,
                len: 4096,
                op: Op::Read,
            });
        }
        assert_eq!(p.dropped(), 6);
        assert_eq!(c.dropped(), 6);
        let got: Vec<u64> = std::iter::from_fn(|| c.pop()).map(|e| e.time_ns).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn publish_is_periodic_and_summaries_add_up() {
        let mut m = QueueMetrics::new(0, 1);
        for i in 1..=100u64 {
            m.record(Op::Read, 4096, i * 1000, true);
        }
        m.record(Op::Write, 8192, 5_000, false);
        let period = DEVICE_STATS_PUBLISH_MS * 1_000_000;
        m.maybe_publish(period, 3, false);
        let shared = m.shared();
        assert_eq!(shared.lock().unwrap().ops[Op::Read as usize], 100);
        m.record(Op::Read, 4096, 1000, true);
        m.maybe_publish(period + 1, 3, false); // too soon: not copied
        assert_eq!(shared.lock().unwrap().ops[Op::Read as usize], 100);
        // A reader holding the lock makes the copy skip, never wait.
        let held = shared.lock().unwrap();
        m.maybe_publish(3 * period, 3, false);
        drop(held);
        assert_eq!(shared.lock().unwrap().ops[Op::Read as usize], 100);
        m.maybe_publish(3 * period, 3, true);
        let snap = shared.lock().unwrap().clone();
        let st = device_stats(0, "v", 2.0, &[snap.clone(), snap]);
        let r = st.total.ops.iter().find(|o| o.op == Op::Read).unwrap();
        assert_eq!(r.count, 202);
        assert_eq!(r.iops, 101.0);
        assert!((r.p50_us - 50.0).abs() < 1.0, "{}", r.p50_us);
        assert!((r.max_us - 100.0).abs() < 0.2, "{}", r.max_us);
        assert_eq!(st.total.errors, 2);
        assert_eq!(st.total.trace_dropped, 6);
        assert_eq!(st.queues.len(), 2);
    }
}
