//! Per-queue observability of the ublk device: the trace ring feeding the
//! prefetcher, latency histograms by op and by tier hit, the snapshots
//! `shardblk stats` reads, and their export (JSON summary, raw histogram
//! dump, HDR interval log).
//!
//! Contract:
//! - [`trace_ring`]: single producer (the queue thread), single consumer (the
//!   prefetcher). [`TraceProducer::push`] never waits: when the ring is full
//!   the event is dropped and counted.
//! - [`QueueMetrics`] belongs to one queue thread; recording is two counter
//!   adds and one push of the latency into a fixed buffer (no lock, no
//!   allocation). One histogram per [`Key`]: reads and writes by [`Hit`]
//!   (which tiers the request's data touched), flush, discard and
//!   write-zeroes alone; per-op figures are the merge of an op's keys. The
//!   thread calls [`QueueMetrics::maybe_publish`] after each turn of its
//!   loop: it records the latencies buffered in that turn into the shared
//!   snapshot's histograms and copies the counters, with `try_lock` so a
//!   reader holding the snapshot never stalls I/O (the records then stay
//!   buffered and the thread retries within `DEVICE_STATS_PUBLISH_MS`). So
//!   a publish costs in proportion to the requests of one turn, spread
//!   evenly over them: neither a copy of every histogram (2.4 MB of memset
//!   and memcpy per queue and period, milliseconds under TCG) nor a
//!   period's worth of records at once (thousands of histogram records at
//!   QD32, a stall that showed in the device's p99) lands on one request.
//!   A full buffer (`DEVICE_STATS_PENDING_RECORDS`, a reader holding the
//!   lock that long) is published at once, waiting for the lock. Readers
//!   see data at most one period old.
//! - [`HistDump`] carries snapshots between processes exactly (every
//!   recorded bucket as `(value, count)`), so a client can subtract two of
//!   them ([`QueueSnapshot::delta`]) for interval figures and write them as
//!   an HDR interval log ([`write_hdr_interval`], V2 deflate, values in ns).
//! - Times are nanoseconds of a clock passed in by the caller.

use crate::constants::{
    DEVICE_LATENCY_MAX_NS, DEVICE_LATENCY_SIGFIG, DEVICE_STATS_PENDING_RECORDS,
};
use hdrhistogram::serialization::interval_log::{IntervalLogWriter, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Which tiers a read or write touched: only the hot tier (tier 0), only
/// colder tiers, only unmapped space (holes read as zeros; a write that
/// took the first-write path, which maps new space), or more than one of
/// these; `remote` for a device over a cluster volume (no local tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Hit {
    Hot = 0,
    Cold = 1,
    Unmapped = 2,
    Mixed = 3,
    Remote = 4,
}

/// Every hit class, in index order.
pub const HITS: [Hit; 5] = [Hit::Hot, Hit::Cold, Hit::Unmapped, Hit::Mixed, Hit::Remote];

impl Hit {
    pub fn name(self) -> &'static str {
        ["hot", "cold", "unmapped", "mixed", "remote"][self as usize]
    }
}

/// Accumulates the pieces of one request into its [`Hit`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HitSet(u8);

impl HitSet {
    const HOT: u8 = 1;
    const COLD: u8 = 2;
    const UNMAPPED: u8 = 4;
    /// A piece on tier `tier` (0 = hot).
    pub fn add_tier(&mut self, tier: usize) {
        self.0 |= if tier == 0 { Self::HOT } else { Self::COLD };
    }
    /// A piece in unmapped space.
    pub fn add_unmapped(&mut self) {
        self.0 |= Self::UNMAPPED;
    }
    /// The class; a request that touched nothing counts as unmapped.
    pub fn hit(self) -> Hit {
        match self.0 {
            Self::HOT => Hit::Hot,
            Self::COLD => Hit::Cold,
            0 | Self::UNMAPPED => Hit::Unmapped,
            _ => Hit::Mixed,
        }
    }
}

/// What one histogram of a queue counts: an op, and for reads and writes
/// the tier hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit: Option<Hit>,
}

/// Number of histograms per queue.
pub const NKEYS: usize = 2 * HITS.len() + 3;

/// Every key, in index order ([`key_index`]).
pub const KEYS: [Key; NKEYS] = {
    let mut k = [Key {
        op: Op::Flush,
        hit: None,
    }; NKEYS];
    let mut i = 0;
    while i < HITS.len() {
        k[i] = Key {
            op: Op::Read,
            hit: Some(HITS[i]),
        };
        k[HITS.len() + i] = Key {
            op: Op::Write,
            hit: Some(HITS[i]),
        };
        i += 1;
    }
    k[2 * HITS.len() + 1].op = Op::Discard;
    k[2 * HITS.len() + 2].op = Op::WriteZeroes;
    k
};

/// Index of `(op, hit)` in [`KEYS`]; `hit` matters for reads and writes only.
pub fn key_index(op: Op, hit: Hit) -> usize {
    match op {
        Op::Read => hit as usize,
        Op::Write => HITS.len() + hit as usize,
        Op::Flush => 2 * HITS.len(),
        Op::Discard => 2 * HITS.len() + 1,
        Op::WriteZeroes => 2 * HITS.len() + 2,
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
    /// Events the ring has room for now.
    pub fn free(&self) -> usize {
        self.ring.slots()
    }
}

impl TraceConsumer {
    pub fn pop(&mut self) -> Option<TraceEvent> {
        self.ring.pop().ok()
    }
    /// Let go of the oldest `n` events (at most what is queued) without
    /// reading them, in one step; returns how many. For a consumer that
    /// only keeps the ring from filling (nothing to predict or record).
    pub fn discard(&mut self, n: usize) -> usize {
        let n = n.min(self.ring.slots());
        match self.ring.read_chunk(n) {
            Ok(chunk) => {
                chunk.commit_all();
                n
            }
            Err(_) => 0,
        }
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

/// Counters and histograms of one queue (by [`KEYS`] index).
#[derive(Clone)]
pub struct QueueSnapshot {
    pub queue: u16,
    pub cpu: usize,
    pub hist: [Histogram<u64>; NKEYS],
    pub count: [u64; NKEYS],
    pub bytes: [u64; NKEYS],
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
            count: [0; NKEYS],
            bytes: [0; NKEYS],
            errors: 0,
            trace_dropped: 0,
            taken_ns: 0,
        }
    }
    /// Add `o`'s counts into this one.
    pub fn merge(&mut self, o: &QueueSnapshot) {
        for (d, s) in self.hist.iter_mut().zip(&o.hist) {
            d.add(s).expect("same histogram bounds");
        }
        for i in 0..NKEYS {
            self.count[i] += o.count[i];
            self.bytes[i] += o.bytes[i];
        }
        self.errors += o.errors;
        self.trace_dropped += o.trace_dropped;
        self.taken_ns = self.taken_ns.max(o.taken_ns);
    }
    /// What happened between `prev` and this snapshot of the same queue.
    /// A `prev` that is not an earlier state of this one (a restarted
    /// daemon) counts as empty.
    pub fn delta(&self, prev: &QueueSnapshot) -> QueueSnapshot {
        let mut d = self.clone();
        let earlier = (0..NKEYS).all(|i| prev.count[i] <= self.count[i])
            && prev.errors <= self.errors
            && prev.trace_dropped <= self.trace_dropped;
        if !earlier {
            return d;
        }
        for i in 0..NKEYS {
            if d.hist[i].subtract(&prev.hist[i]).is_err() {
                return self.clone();
            }
            d.count[i] -= prev.count[i];
            d.bytes[i] -= prev.bytes[i];
        }
        d.errors -= prev.errors;
        d.trace_dropped -= prev.trace_dropped;
        d
    }
    /// The exact wire form (every recorded bucket).
    pub fn dump(&self) -> QueueDump {
        QueueDump {
            queue: self.queue,
            cpu: self.cpu,
            errors: self.errors,
            trace_dropped: self.trace_dropped,
            taken_ns: self.taken_ns,
            keys: KEYS
                .iter()
                .enumerate()
                .filter(|(i, _)| self.count[*i] > 0 || !self.hist[*i].is_empty())
                .map(|(i, &key)| KeyDump {
                    key,
                    count: self.count[i],
                    bytes: self.bytes[i],
                    buckets: self.hist[i]
                        .iter_recorded()
                        .map(|v| [v.value_iterated_to(), v.count_at_value()])
                        .collect(),
                })
                .collect(),
        }
    }
    /// Rebuild a snapshot from its wire form.
    pub fn from_dump(d: &QueueDump) -> Result<QueueSnapshot, String> {
        let mut s = QueueSnapshot::new(d.queue, d.cpu);
        s.errors = d.errors;
        s.trace_dropped = d.trace_dropped;
        s.taken_ns = d.taken_ns;
        for k in &d.keys {
            let i = KEYS
                .iter()
                .position(|&x| x == k.key)
                .ok_or_else(|| format!("unknown histogram key {:?}", k.key))?;
            s.count[i] = k.count;
            s.bytes[i] = k.bytes;
            for &[v, n] in &k.buckets {
                s.hist[i]
                    .record_n(v, n)
                    .map_err(|e| format!("bucket {v}: {e:?}"))?;
            }
        }
        Ok(s)
    }
    /// The histogram and counts of `op`, all hits merged.
    fn of_op(&self, op: Op) -> (Histogram<u64>, u64, u64) {
        let mut h = new_hist();
        let (mut n, mut b) = (0, 0);
        for (i, k) in KEYS.iter().enumerate() {
            if k.op == op {
                h.add(&self.hist[i]).expect("same histogram bounds");
                n += self.count[i];
                b += self.bytes[i];
            }
        }
        (h, n, b)
    }
}

/// A queue thread's live metrics and the shared snapshot it publishes.
pub struct QueueMetrics {
    /// Counters since the start, by key.
    count: [u64; NKEYS],
    bytes: [u64; NKEYS],
    errors: u64,
    /// Latencies recorded since the last publish: `key << 56 | ns`.
    pending: Vec<u64>,
    shared: Arc<Mutex<QueueSnapshot>>,
    dirty: bool,
}

/// Bits of a buffered latency below its histogram key.
const PENDING_KEY_SHIFT: u32 = 56;

impl QueueMetrics {
    pub fn new(queue: u16, cpu: usize) -> Self {
        QueueMetrics {
            count: [0; NKEYS],
            bytes: [0; NKEYS],
            errors: 0,
            pending: Vec::with_capacity(DEVICE_STATS_PENDING_RECORDS),
            shared: Arc::new(Mutex::new(QueueSnapshot::new(queue, cpu))),
            dirty: false,
        }
    }
    /// The snapshot readers lock.
    pub fn shared(&self) -> Arc<Mutex<QueueSnapshot>> {
        self.shared.clone()
    }
    /// Record one completed request.
    pub fn record(&mut self, op: Op, hit: Hit, bytes: u64, latency_ns: u64, ok: bool) {
        let i = key_index(op, hit);
        if self.pending.len() == DEVICE_STATS_PENDING_RECORDS {
            // Full: publish now (the counters too, so the snapshot stays
            // consistent), waiting only if a reader holds it.
            let mut s = match self.shared.try_lock() {
                Ok(s) => s,
                Err(_) => self.shared.lock().expect("stats snapshot"),
            };
            Self::apply(
                &mut self.pending,
                &self.count,
                &self.bytes,
                self.errors,
                &mut s,
            );
        }
        let ns = latency_ns.clamp(1, DEVICE_LATENCY_MAX_NS);
        self.pending.push((i as u64) << PENDING_KEY_SHIFT | ns);
        self.count[i] += 1;
        self.bytes[i] += bytes;
        if !ok {
            self.errors += 1;
        }
        self.dirty = true;
    }
    /// Whether something was recorded since the last publish.
    pub fn dirty(&self) -> bool {
        self.dirty
    }
    /// Latencies recorded and not yet in the shared snapshot.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
    /// Publish what was recorded since the last publish, unless a reader
    /// holds the snapshot (then later; `force` waits for the reader: the
    /// final publish). Returns whether the shared snapshot now holds
    /// everything recorded.
    pub fn maybe_publish(&mut self, now_ns: u64, trace_dropped: u64, force: bool) -> bool {
        if !self.dirty && !force {
            return true;
        }
        let locked = if force {
            Some(self.shared.lock().expect("stats snapshot"))
        } else {
            self.shared.try_lock().ok()
        };
        if let Some(mut s) = locked {
            Self::apply(
                &mut self.pending,
                &self.count,
                &self.bytes,
                self.errors,
                &mut s,
            );
            s.trace_dropped = trace_dropped;
            s.taken_ns = now_ns;
            self.dirty = false;
        }
        !self.dirty
    }
    /// Move the buffered latencies into `s`'s histograms and copy the counters.
    fn apply(
        pending: &mut Vec<u64>,
        count: &[u64; NKEYS],
        bytes: &[u64; NKEYS],
        errors: u64,
        s: &mut QueueSnapshot,
    ) {
        for v in pending.drain(..) {
            let key = (v >> PENDING_KEY_SHIFT) as usize;
            s.hist[key].saturating_record(v & ((1 << PENDING_KEY_SHIFT) - 1));
        }
        s.count = *count;
        s.bytes = *bytes;
        s.errors = errors;
    }
}

/// Latency summary of one op, or of one op and tier hit (microseconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpStats {
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit: Option<Hit>,
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
    /// By op, all tier hits merged.
    pub ops: Vec<OpStats>,
    /// Reads and writes by tier hit.
    #[serde(default)]
    pub hits: Vec<OpStats>,
}

/// What `shardblk stats` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceStats {
    pub number: u32,
    pub volume: String,
    pub uptime_s: f64,
    /// Length of the interval the figures cover when they are not since
    /// the start (`stats --watch`); rates are per this interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<f64>,
    pub total: QueueStats,
    pub queues: Vec<QueueStats>,
    /// Prefetching (predictor, stager), when the device has it on.
    #[serde(default)]
    pub prefetch: Option<crate::prefetch::live::PrefetchStats>,
}

fn op_stats(
    op: Op,
    hit: Option<Hit>,
    h: &Histogram<u64>,
    count: u64,
    bytes: u64,
    span_s: f64,
) -> OpStats {
    let us = |ns: u64| ns as f64 / 1000.0;
    let rate = |x: u64| if span_s > 0.0 { x as f64 / span_s } else { 0.0 };
    OpStats {
        op,
        hit,
        count,
        bytes,
        iops: rate(count),
        mib_per_s: rate(bytes) / (1u64 << 20) as f64,
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p99_9_us: us(h.value_at_quantile(0.999)),
        p99_99_us: us(h.value_at_quantile(0.9999)),
        max_us: us(h.max()),
    }
}

fn summarize(s: &QueueSnapshot, span_s: f64, queue: Option<u16>, cpu: Option<usize>) -> QueueStats {
    let ops = OPS
        .iter()
        .map(|&op| (op, s.of_op(op)))
        .filter(|(_, (_, n, _))| *n > 0)
        .map(|(op, (h, n, b))| op_stats(op, None, &h, n, b, span_s))
        .collect();
    let hits = KEYS
        .iter()
        .enumerate()
        .filter(|(i, k)| k.hit.is_some() && s.count[*i] > 0)
        .map(|(i, k)| op_stats(k.op, k.hit, &s.hist[i], s.count[i], s.bytes[i], span_s))
        .collect();
    QueueStats {
        queue,
        cpu,
        errors: s.errors,
        trace_dropped: s.trace_dropped,
        ops,
        hits,
    }
}

/// Summarise per-queue snapshots and their sum. Rates are per `interval_s`
/// when given (snapshots that are deltas), else per `uptime_s`.
pub fn device_stats(
    number: u32,
    volume: &str,
    uptime_s: f64,
    interval_s: Option<f64>,
    snaps: &[QueueSnapshot],
) -> DeviceStats {
    let mut total = QueueSnapshot::new(0, 0);
    for s in snaps {
        total.merge(s);
    }
    let span = interval_s.unwrap_or(uptime_s);
    DeviceStats {
        number,
        volume: volume.to_string(),
        uptime_s,
        interval_s,
        total: summarize(&total, span, None, None),
        queues: snaps
            .iter()
            .map(|s| summarize(s, span, Some(s.queue), Some(s.cpu)))
            .collect(),
        prefetch: None,
    }
}

/// One histogram on the wire: its key, counters and recorded buckets
/// `[highest equivalent value (ns), count]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyDump {
    #[serde(flatten)]
    pub key: Key,
    pub count: u64,
    pub bytes: u64,
    pub buckets: Vec<[u64; 2]>,
}

/// One queue on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDump {
    pub queue: u16,
    pub cpu: usize,
    pub errors: u64,
    pub trace_dropped: u64,
    pub taken_ns: u64,
    pub keys: Vec<KeyDump>,
}

/// Every queue's raw histograms (the control socket's `hist` answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistDump {
    pub number: u32,
    pub volume: String,
    pub uptime_s: f64,
    pub queues: Vec<QueueDump>,
}

impl HistDump {
    /// The snapshots, by queue.
    pub fn snapshots(&self) -> Result<Vec<QueueSnapshot>, String> {
        self.queues.iter().map(QueueSnapshot::from_dump).collect()
    }
}

/// Tag of one histogram in an HDR log: `q<N>/<op>[/<hit>]`, `all/...` for
/// the device total.
pub fn hdr_tag(queue: Option<u16>, key: Key) -> String {
    let q = queue.map_or_else(|| "all".to_string(), |q| format!("q{q}"));
    match key.hit {
        Some(h) => format!("{q}/{}/{}", key.op.name(), h.name()),
        None => format!("{q}/{}", key.op.name()),
    }
}

/// Append one interval to an HDR log: every non-empty histogram of every
/// queue and of the device total, values in nanoseconds, tagged with
/// [`hdr_tag`]. `start` is the interval's start relative to the log's
/// start time.
pub fn write_hdr_interval<W: std::io::Write>(
    log: &mut IntervalLogWriter<'_, '_, W, V2DeflateSerializer>,
    start: Duration,
    duration: Duration,
    snaps: &[QueueSnapshot],
) -> std::io::Result<()> {
    let mut total = QueueSnapshot::new(0, 0);
    for s in snaps {
        total.merge(s);
    }
    let all = std::iter::once((None, &total)).chain(snaps.iter().map(|s| (Some(s.queue), s)));
    for (q, s) in all {
        for (i, &key) in KEYS.iter().enumerate() {
            if s.hist[i].is_empty() {
                continue;
            }
            let tag = hdr_tag(q, key);
            log.write_histogram(&s.hist[i], start, duration, Tag::new(&tag))
                .map_err(|e| std::io::Error::other(format!("HDR log: {e:?}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::DEVICE_STATS_PUBLISH_MS;
    use hdrhistogram::serialization::interval_log::{
        IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
    };

    #[test]
    fn discard_lets_go_of_the_oldest_events_in_order() {
        let (mut p, mut c) = trace_ring(8);
        let ev = |i: u64| TraceEvent {
            time_ns: i,
            volume: 1,
            offset: i * 4096,
            len: 4096,
            op: Op::Read,
        };
        for i in 0..6 {
            p.push(ev(i));
        }
        assert_eq!(c.discard(4), 4);
        assert_eq!(c.len(), 2);
        assert_eq!(c.pop().map(|e| e.time_ns), Some(4));
        assert_eq!(c.discard(10), 1, "only what is queued");
        assert!(c.is_empty());
        assert_eq!(c.discard(3), 0);
        // Room again for a full ring's worth.
        for i in 0..8 {
            p.push(ev(i));
        }
        assert_eq!(p.dropped(), 0);
    }

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
    fn keys_index_and_hits_classify() {
        for (i, k) in KEYS.iter().enumerate() {
            assert_eq!(key_index(k.op, k.hit.unwrap_or(Hit::Mixed)), i, "{k:?}");
        }
        let mut h = HitSet::default();
        assert_eq!(h.hit(), Hit::Unmapped);
        h.add_tier(0);
        assert_eq!(h.hit(), Hit::Hot);
        h.add_tier(0);
        assert_eq!(h.hit(), Hit::Hot);
        let mut c = HitSet::default();
        c.add_tier(2);
        assert_eq!(c.hit(), Hit::Cold);
        c.add_unmapped();
        assert_eq!(c.hit(), Hit::Mixed);
        let mut u = HitSet::default();
        u.add_unmapped();
        assert_eq!(u.hit(), Hit::Unmapped);
    }

    #[test]
    fn publish_copies_unless_a_reader_holds_it_and_summaries_add_up() {
        let mut m = QueueMetrics::new(0, 1);
        for i in 1..=100u64 {
            let hit = if i % 2 == 0 { Hit::Hot } else { Hit::Cold };
            m.record(Op::Read, hit, 4096, i * 1000, true);
        }
        m.record(Op::Write, Hit::Unmapped, 8192, 5_000, false);
        assert!(m.dirty());
        let period = DEVICE_STATS_PUBLISH_MS * 1_000_000;
        assert!(m.maybe_publish(period, 3, false));
        assert!(!m.dirty());
        let shared = m.shared();
        let reads = |s: &QueueSnapshot| s.of_op(Op::Read).1;
        assert_eq!(reads(&shared.lock().unwrap()), 100);
        // Nothing new: nothing to do.
        assert!(m.maybe_publish(period + 1, 3, false));
        m.record(Op::Read, Hit::Hot, 4096, 1000, true);
        // A reader holding the lock makes the copy skip, never wait.
        let held = shared.lock().unwrap();
        assert!(!m.maybe_publish(period + 2, 3, false));
        assert!(m.dirty());
        drop(held);
        assert_eq!(reads(&shared.lock().unwrap()), 100);
        // The next turn publishes it, however soon.
        assert!(m.maybe_publish(period + 3, 3, false));
        assert_eq!(reads(&shared.lock().unwrap()), 101);
        assert!(m.maybe_publish(3 * period, 3, true));
        let snap = shared.lock().unwrap().clone();
        let st = device_stats(0, "v", 2.0, None, &[snap.clone(), snap]);
        let r = st.total.ops.iter().find(|o| o.op == Op::Read).unwrap();
        assert_eq!(r.count, 202);
        assert_eq!(r.iops, 101.0);
        assert!((r.p50_us - 50.0).abs() < 1.0, "{}", r.p50_us);
        assert!((r.max_us - 100.0).abs() < 0.2, "{}", r.max_us);
        let hot = st
            .total
            .hits
            .iter()
            .find(|o| o.op == Op::Read && o.hit == Some(Hit::Hot))
            .unwrap();
        assert_eq!(hot.count, 102);
        assert!((hot.max_us - 100.0).abs() < 0.2, "{}", hot.max_us);
        let cold = st
            .total
            .hits
            .iter()
            .find(|o| o.op == Op::Read && o.hit == Some(Hit::Cold))
            .unwrap();
        assert_eq!(cold.count, 100);
        assert!((cold.max_us - 99.0).abs() < 0.2, "{}", cold.max_us);
        assert!(st.total.hits.iter().all(|o| o.hit.is_some()));
        assert_eq!(st.total.errors, 2);
        assert_eq!(st.total.trace_dropped, 6);
        assert_eq!(st.queues.len(), 2);
    }

    #[test]
    fn a_full_buffer_publishes_at_once() {
        let mut m = QueueMetrics::new(0, 0);
        let key = key_index(Op::Write, Hit::Hot);
        let n = DEVICE_STATS_PENDING_RECORDS as u64;
        for i in 0..n {
            m.record(Op::Write, Hit::Hot, 4096, 1000 + i, true);
        }
        let shared = m.shared();
        assert_eq!(m.pending(), n as usize);
        assert_eq!(
            shared.lock().unwrap().count[key],
            0,
            "nothing published yet"
        );
        // The buffer is full: this record publishes the first n.
        m.record(Op::Write, Hit::Hot, 4096, 7, true);
        assert_eq!(m.pending(), 1);
        {
            let s = shared.lock().unwrap();
            assert_eq!(s.hist[key].len(), n);
            assert_eq!(s.count[key], n, "counters go with their latencies");
            assert_eq!(s.hist[key].min(), 1000);
            assert_eq!(
                s.hist[key].max(),
                s.hist[key].highest_equivalent(1000 + n - 1)
            );
        }
        assert!(m.maybe_publish(DEVICE_STATS_PUBLISH_MS * 1_000_000, 0, false));
        let s = shared.lock().unwrap();
        assert_eq!(s.hist[key].len(), n + 1);
        assert_eq!(s.hist[key].min(), 7);
        assert_eq!(s.bytes[key], (n + 1) * 4096);
        assert_eq!(m.pending(), 0);
    }

    fn sample(seed: u64, n: u64) -> QueueSnapshot {
        let mut m = QueueMetrics::new(1, 3);
        let mut x = seed;
        for _ in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let lat = (x >> 33) % 10_000_000 + 1;
            let hit = HITS[(x >> 20) as usize % HITS.len()];
            let op = OPS[(x >> 10) as usize % OPS.len()];
            m.record(op, hit, 4096, lat, x % 97 != 0);
        }
        m.maybe_publish(u64::MAX / 2, 7, true);
        let s = m.shared().lock().unwrap().clone();
        s
    }

    #[test]
    fn dump_round_trips_and_deltas_subtract() {
        let seed = 0x5eed;
        let a = sample(seed, 500);
        let json = serde_json::to_string(&a.dump()).unwrap();
        let back = QueueSnapshot::from_dump(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.count, a.count, "seed {seed}");
        assert_eq!(back.bytes, a.bytes);
        assert_eq!(back.errors, a.errors);
        for (i, k) in KEYS.iter().enumerate() {
            assert_eq!(back.hist[i], a.hist[i], "key {k:?} seed {seed}");
        }
        // A later state minus an earlier one is what happened in between.
        let mut later = a.clone();
        let extra = sample(seed + 1, 300);
        later.merge(&extra);
        let d = later.delta(&a);
        assert_eq!(d.count, extra.count);
        for (i, k) in KEYS.iter().enumerate() {
            assert_eq!(d.hist[i], extra.hist[i], "key {k:?}");
        }
        // Not an earlier state (a restarted daemon): the whole snapshot.
        let d2 = extra.delta(&later);
        assert_eq!(d2.count, extra.count);
        let st = device_stats(1, "v", 10.0, Some(2.0), &[d]);
        let total: u64 = st.total.ops.iter().map(|o| o.count).sum();
        assert_eq!(total, 300);
        let iops: f64 = st.total.ops.iter().map(|o| o.iops).sum();
        assert!((iops - 150.0).abs() < 1e-9, "{iops}");
    }

    #[test]
    fn hdr_log_has_one_tagged_histogram_per_key() {
        let s = sample(42, 400);
        let mut out = Vec::new();
        {
            let mut ser = V2DeflateSerializer::new();
            let mut log = IntervalLogWriterBuilder::new()
                .with_max_value_divisor(1e6)
                .begin_log_with(&mut out, &mut ser)
                .unwrap();
            write_hdr_interval(
                &mut log,
                Duration::from_secs(1),
                Duration::from_millis(500),
                std::slice::from_ref(&s),
            )
            .unwrap();
        }
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("#[MaxValueDivisor: 1000000.000]"), "{text}");
        let mut tags = Vec::new();
        for e in IntervalLogIterator::new(&out) {
            if let LogEntry::Interval(h) = e.unwrap() {
                assert_eq!(h.start_timestamp(), Duration::from_secs(1));
                assert_eq!(h.duration(), Duration::from_millis(500));
                let tag = h.tag().unwrap().as_str().to_string();
                let q = if tag.starts_with("all/") {
                    None
                } else {
                    Some(1)
                };
                let i = KEYS
                    .iter()
                    .position(|&k| hdr_tag(q, k) == tag)
                    .expect("known tag");
                // The max column is the histogram's max in ms.
                let want = s.hist[i].max() as f64 / 1e6;
                assert!(
                    (h.max() - want).abs() < 1e-3,
                    "{tag}: {} vs {want}",
                    h.max()
                );
                assert!(!h.encoded_histogram().is_empty());
                tags.push(tag);
            }
        }
        let keys = (0..NKEYS).filter(|&i| !s.hist[i].is_empty()).count();
        assert_eq!(tags.len(), 2 * keys, "{tags:?}");
        assert!(tags.contains(&"all/read/hot".to_string()));
        assert!(tags.contains(&"q1/flush".to_string()));
    }
}
