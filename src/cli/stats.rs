//! `shardblk stats -n N [--json] [--watch [--interval S] [--count K]] [--hdr-log FILE]`:
//! latency percentiles of a device by op and by tier hit, IOPS and
//! bandwidth, per queue and in total, read from the daemon's control socket
//! (`hist`: the raw histograms) without pausing I/O.
//!
//! Once: figures since the device started. `--watch`: a refreshing display
//! whose figures (rates and percentiles) cover each interval only, computed
//! by subtracting consecutive snapshots; with `--json` one JSON document per
//! line and interval. `--hdr-log FILE`: every histogram written as an HDR
//! interval log (V2 deflate, values in ns, tags `q<N>/<op>[/<hit>]` and
//! `all/...`), one interval since the start, or one per refresh.

use crate::constants::{STATS_WATCH_INTERVAL_DEFAULT_S, STATS_WATCH_INTERVAL_MIN_S};
use crate::device::control::{fetch_hist, fetch_stats};
use crate::device::metrics::{
    device_stats, write_hdr_interval, DeviceStats, HistDump, OpStats, QueueSnapshot,
};
use crate::device::registry::socket_path;
use crate::prefetch::live::PrefetchStats;
use crate::units::format_size;
use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(Args, Clone)]
pub struct StatsArgs {
    #[arg(short = 'n', long = "number")]
    number: u32,
    #[arg(long)]
    json: bool,
    /// Refresh every --interval seconds with figures for that interval only.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes of --watch.
    #[arg(long, default_value_t = STATS_WATCH_INTERVAL_DEFAULT_S)]
    interval: f64,
    /// With --watch: stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Write every histogram to FILE as an HDR interval log (V2 deflate, ns).
    #[arg(long = "hdr-log")]
    hdr_log: Option<PathBuf>,
}

/// The prefetch engine's figures (`stats`; absent with prefetch off).
fn prefetch_of(n: u32) -> Result<Option<PrefetchStats>> {
    Ok(fetch_stats(&socket_path(n))
        .with_context(|| format!("reading prefetch statistics of /dev/ublkb{n}"))?
        .prefetch)
}

fn fetch(n: u32) -> Result<(HistDump, Vec<QueueSnapshot>)> {
    let d = fetch_hist(&socket_path(n))
        .with_context(|| format!("reading statistics of /dev/ublkb{n}"))?;
    let s = d
        .snapshots()
        .map_err(|e| anyhow::anyhow!("bad histograms from /dev/ublkb{n}: {e}"))?;
    Ok((d, s))
}

/// Newest publish time among the snapshots (s), the clock rates use.
fn taken_s(snaps: &[QueueSnapshot]) -> f64 {
    snaps.iter().map(|s| s.taken_ns).max().unwrap_or(0) as f64 / 1e9
}

pub fn run(a: StatsArgs) -> Result<()> {
    if a.watch && !(a.interval >= STATS_WATCH_INTERVAL_MIN_S && a.interval.is_finite()) {
        bail!("--interval must be at least {STATS_WATCH_INTERVAL_MIN_S} s (the queues publish that often)");
    }
    if a.count.is_some() && !a.watch {
        bail!("--count needs --watch");
    }
    let (d0, s0) = fetch(a.number)?;
    let mut file = match &a.hdr_log {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let mut ser = V2DeflateSerializer::new();
    let started = SystemTime::now() - Duration::from_secs_f64(d0.uptime_s);
    let mut log = match file.as_mut() {
        Some(f) => Some(
            IntervalLogWriterBuilder::new()
                .add_comment(&format!(
                    "shardblk /dev/ublkb{} volume {}: request latency in ns by queue, op and tier hit",
                    d0.number, d0.volume
                ))
                .with_start_time(started)
                .with_base_time(started)
                .with_max_value_divisor(1e6)
                .begin_log_with(f, &mut ser)
                .context("starting the HDR log")?,
        ),
        None => None,
    };
    if !a.watch {
        let mut st = device_stats(d0.number, &d0.volume, d0.uptime_s, None, &s0);
        st.prefetch = prefetch_of(a.number)?;
        if let Some(log) = log.as_mut() {
            write_hdr_interval(
                log,
                Duration::ZERO,
                Duration::from_secs_f64(d0.uptime_s),
                &s0,
            )
            .context("writing the HDR log")?;
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            print_stats(&st);
        }
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal() && !a.json;
    let (mut prev_d, mut prev) = (d0, s0);
    let mut done = 0u64;
    while a.count.is_none_or(|c| done < c) {
        std::thread::sleep(Duration::from_secs_f64(a.interval));
        let (d, cur) = fetch(a.number)?;
        let deltas: Vec<QueueSnapshot> = cur
            .iter()
            .map(|s| match prev.iter().find(|p| p.queue == s.queue) {
                Some(p) => s.delta(p),
                None => s.clone(),
            })
            .collect();
        let mut dt = taken_s(&cur) - taken_s(&prev);
        if dt <= 0.0 {
            dt = (d.uptime_s - prev_d.uptime_s).max(a.interval);
        }
        let mut st = device_stats(d.number, &d.volume, d.uptime_s, Some(dt), &deltas);
        st.prefetch = prefetch_of(a.number)?;
        if let Some(log) = log.as_mut() {
            let from = Duration::from_secs_f64(taken_s(&prev).max(0.0));
            write_hdr_interval(log, from, Duration::from_secs_f64(dt), &deltas)
                .context("writing the HDR log")?;
        }
        if a.json {
            println!("{}", serde_json::to_string(&st)?);
        } else {
            if tty {
                print!("\x1b[H\x1b[2J");
            }
            print_stats(&st);
            println!();
        }
        std::io::stdout().flush()?;
        (prev_d, prev) = (d, cur);
        done += 1;
    }
    Ok(())
}

fn print_row(name: &str, what: &str, o: &OpStats) {
    println!(
        "{:<8} {:<18} {:>10} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        name,
        what,
        o.count,
        o.iops,
        o.mib_per_s,
        o.p50_us,
        o.p90_us,
        o.p99_us,
        o.p99_9_us,
        o.p99_99_us,
        o.max_us
    );
}

/// The table `shardblk stats` prints: per queue (and `all`), one row per op,
/// then one per op and tier hit.
pub fn print_stats(st: &DeviceStats) {
    match st.interval_s {
        Some(i) => println!(
            "/dev/ublkb{} volume {} up {:.1} s, last {:.2} s",
            st.number, st.volume, st.uptime_s, i
        ),
        None => println!(
            "/dev/ublkb{} volume {} up {:.1} s",
            st.number, st.volume, st.uptime_s
        ),
    }
    println!(
        "{:<8} {:<18} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "QUEUE",
        "OP",
        "COUNT",
        "IOPS",
        "MiB/s",
        "p50us",
        "p90us",
        "p99us",
        "p99.9us",
        "p99.99us",
        "maxus"
    );
    for q in std::iter::once(&st.total).chain(&st.queues) {
        let name = q.queue.map_or_else(
            || "all".to_string(),
            |i| format!("q{i}@{}", q.cpu.unwrap_or(0)),
        );
        for o in &q.ops {
            print_row(&name, o.op.name(), o);
        }
        for o in &q.hits {
            let hit = o.hit.map_or("", |h| h.name());
            print_row(&name, &format!("{}/{hit}", o.op.name()), o);
        }
        if q.errors > 0 || q.trace_dropped > 0 {
            println!(
                "{name:<8} errors {} trace events dropped {}",
                q.errors, q.trace_dropped
            );
        }
    }
    if let Some(p) = &st.prefetch {
        print_prefetch(p);
    }
}

/// The prefetch engine's lines (counters since the device started).
fn print_prefetch(p: &PrefetchStats) {
    let s = &p.stager;
    let pct = |x: Option<f32>| x.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
    println!(
        "prefetch {}: {} events ({} skipped under overload), {} batches, batch latency mean {:.1} us p99 {:.1} us, paced {:.1} s (idle CPU {} % of a core)",
        p.predictor,
        p.events,
        p.skipped_events,
        p.batches,
        p.batch_us_mean,
        p.batch_us_p99,
        p.paced_ms as f64 / 1000.0,
        p.spare_cpu_percent
    );
    println!(
        "  predictions {} (below confidence {}, already hot {}, unmapped {}), queued {}, duplicates {}, dropped {}",
        p.predictions, p.below_confidence, p.already_hot, p.unmapped, p.queued, p.duplicates, p.dropped
    );
    match p.promote_reads {
        0 => println!("  demand promotion off"),
        n => println!(
            "  demand promotion: {} cold shards read {n} times within {} s queued",
            p.demand_queued,
            crate::constants::PREFETCH_PROMOTE_WINDOW_MS / 1000
        ),
    }
    // a cluster volume's stage tier counts in slots of one cluster shard
    let unit = match p.remote {
        Some(_) => crate::constants::CLUSTER_SHARD_BYTES,
        None => crate::constants::UNIT_SIZE_BYTES,
    };
    println!(
        "  staged {} (skipped {}, failed {}, throttled {}, over budget {}), evicted {}, resident {} of {} budget",
        s.staged,
        s.stage_skipped,
        s.stage_failed,
        s.throttled,
        s.no_budget,
        s.evicted,
        format_size(s.resident_units * unit),
        format_size(s.budget_units * unit),
    );
    if let Some(r) = &p.remote {
        println!(
            "  stage tier: reads local {}, remote {} (lease expired {}), fetches {} (spoiled by writes {}, failed {}), copies updated {}, dropped {}, fenced drops {}, slots {} of {}",
            r.local_reads,
            r.remote_reads,
            r.lease_expired,
            r.fetches,
            r.spoiled,
            r.fetch_failed,
            r.updated,
            r.invalidated,
            r.fenced_drops,
            r.slots_used,
            r.slots
        );
    }
    println!(
        "  reads {}, hits {}, precision {}, coverage {}, recent precision {}, rate limit {}/s",
        s.reads,
        s.hits,
        pct(s.precision),
        pct(s.coverage),
        pct(s.window_precision),
        s.rate_per_s
    );
    println!(
        "  training steps {}, loss {}, helper jobs {} (CPU {} ms)",
        p.train_steps,
        p.train_loss.map_or("-".to_string(), |l| format!("{l:.4}")),
        p.helper_jobs,
        p.helper_cpu_ms
    );
}
