//! CPU pacing of the prefetch inference thread: a pure state machine (time
//! passed in) that says how long to sleep after a stretch of work so the
//! thread uses at most its share of one core.
//!
//! Contract: after work of duration `busy`, [`Pacer::sleep_after`] returns
//! `busy × (100 − s) / s` for share `s` percent, capped at
//! `PREFETCH_PACE_SLEEP_MAX_MS`. The share is `PREFETCH_CPU_SHARE_PERCENT`
//! for `PREFETCH_PRODUCTIVE_WINDOW_MS` after the thread last queued a
//! prediction (and at start), `PREFETCH_CPU_SHARE_IDLE_PERCENT` otherwise: a
//! predictor that finds nothing to stage on a random workload costs the
//! I/O path almost nothing, while it keeps stepping (with bigger batches and
//! skipped events, counted) so it notices when the workload turns
//! predictable. Events the thread has no time for are skipped by the
//! inference loop's backlog bound, never by blocking a queue thread.

use crate::constants::{
    PREFETCH_CPU_SHARE_IDLE_PERCENT, PREFETCH_CPU_SHARE_PERCENT, PREFETCH_PACE_SLEEP_MAX_MS,
    PREFETCH_PRODUCTIVE_WINDOW_MS,
};
use std::time::Duration;

/// Pacing state; times are nanoseconds on the caller's clock.
#[derive(Debug, Clone)]
pub struct Pacer {
    productive_until_ns: u64,
    /// Total time asked to sleep (for the statistics).
    pub paced: Duration,
}

impl Pacer {
    /// A pacer at the full share until the productive window first lapses.
    pub fn new(now_ns: u64) -> Pacer {
        Pacer {
            productive_until_ns: now_ns + PREFETCH_PRODUCTIVE_WINDOW_MS * 1_000_000,
            paced: Duration::ZERO,
        }
    }

    /// A prediction was queued for staging at `now_ns`.
    pub fn queued(&mut self, now_ns: u64) {
        self.productive_until_ns = now_ns + PREFETCH_PRODUCTIVE_WINDOW_MS * 1_000_000;
    }

    /// The share of one core at `now_ns` (percent).
    pub fn share_percent(&self, now_ns: u64) -> u32 {
        if now_ns < self.productive_until_ns {
            PREFETCH_CPU_SHARE_PERCENT
        } else {
            PREFETCH_CPU_SHARE_IDLE_PERCENT
        }
    }

    /// How long to sleep after `busy` of work ending at `now_ns`.
    pub fn sleep_after(&mut self, busy: Duration, now_ns: u64) -> Duration {
        let s = self.share_percent(now_ns);
        let d = (busy * (100 - s) / s).min(Duration::from_millis(PREFETCH_PACE_SLEEP_MAX_MS));
        self.paced += d;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn full_share_while_productive_idle_share_after() {
        let mut p = Pacer::new(0);
        let busy = Duration::from_millis(4);
        let full = busy * (100 - PREFETCH_CPU_SHARE_PERCENT) / PREFETCH_CPU_SHARE_PERCENT;
        assert_eq!(p.sleep_after(busy, MS), full);
        // The window lapses without a queued prediction: the idle share.
        let late = PREFETCH_PRODUCTIVE_WINDOW_MS * MS + 1;
        assert_eq!(p.share_percent(late), PREFETCH_CPU_SHARE_IDLE_PERCENT);
        let idle = (busy * (100 - PREFETCH_CPU_SHARE_IDLE_PERCENT)
            / PREFETCH_CPU_SHARE_IDLE_PERCENT)
            .min(Duration::from_millis(PREFETCH_PACE_SLEEP_MAX_MS));
        assert_eq!(p.sleep_after(busy, late), idle);
        assert!(idle > full);
        // A queued prediction restores the full share for a window.
        p.queued(late);
        assert_eq!(p.sleep_after(busy, late + MS), full);
        assert_eq!(p.paced, full + idle + full);
    }

    #[test]
    fn the_thread_never_exceeds_its_share() {
        // Busy stretches of any length, each followed by its sleep: the
        // busy fraction stays at most the share (up to the sleep cap).
        let mut p = Pacer::new(0);
        let mut now = 0u64;
        let (mut busy_total, mut all) = (Duration::ZERO, Duration::ZERO);
        for i in 1..200u64 {
            let busy = Duration::from_micros(37 * (i % 13) + 5);
            now += busy.as_nanos() as u64;
            let s = p.share_percent(now);
            let sleep = p.sleep_after(busy, now);
            now += sleep.as_nanos() as u64;
            busy_total += busy;
            all += busy + sleep;
            if sleep < Duration::from_millis(PREFETCH_PACE_SLEEP_MAX_MS) {
                let frac = busy.as_secs_f64() / (busy + sleep).as_secs_f64();
                assert!(frac <= f64::from(s) / 100.0 + 1e-9, "{frac} at share {s}");
            }
        }
        assert!(busy_total.as_secs_f64() / all.as_secs_f64() <= 0.26);
    }
}
