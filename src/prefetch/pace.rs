//! CPU pacing of the prefetch model thread: a pure state machine (time
//! passed in) that says how long to sleep after a stretch of work so the
//! thread uses at most its share of one core.
//!
//! Contract: work of duration `busy` adds `busy × (100 − s) / s` of sleep
//! owed, for share `s` percent ([`Pacer::worked`]); [`Pacer::next_sleep`]
//! hands the debt out in sleeps of at most `PREFETCH_PACE_SLEEP_MAX_MS` (so
//! the thread notices a stop), and the thread does no work while it owes
//! any (the live loop still drains its rings meanwhile, skipping the model):
//! over time it is busy at most its share, however long one stretch
//! of work (a training step) was. The share is `PREFETCH_CPU_SHARE_PERCENT`
//! for `PREFETCH_PRODUCTIVE_WINDOW_MS` after the thread last queued a
//! prediction, `PREFETCH_CPU_SHARE_IDLE_PERCENT` otherwise, from the start
//! on (a step that queues predictions is charged at the full share, since
//! it is accounted after it queued, so a predictable workload loses
//! nothing by the idle start, and a random one never pays the full share): a
//! predictor that finds nothing to stage on a random workload costs the
//! I/O path almost nothing, while it keeps stepping (with bigger batches and
//! skipped events, counted) so it notices when the workload turns
//! predictable. Events the thread has no time for are skipped by the
//! inference loop's backlog bound, never by blocking a queue thread.
//! A predictor whose candidates measure as promising before it has queued
//! anything (the LSTM while it calibrates, [`crate::prefetch::Predictor::promising`])
//! counts as productive too ([`Pacer::queued`] is called for it): learning a
//! predictable workload runs at the full share, an unpredictable one at the
//! idle share.
//!
//! Spare CPU ([`Pacer::spare`]): where the machine has idle CPU beyond
//! `PREFETCH_CPU_SPARE_RESERVE_PERCENT` (the caller measures it, counting
//! the thread's own use as idle), that much of a core, up to a whole one,
//! is the share when it is larger: on a machine with a core to spare the
//! model sees every event, while a busy machine (a random workload driving
//! the queue threads) leaves it at the shares above.
//!
//! [`Cadence`] says when an expensive predictor steps: once at least its
//! `min_events` are gathered, or the oldest gathered event has waited
//! `wait_max`; a predictor that takes any batch (min 1) steps on every turn
//! with events. Events keep being gathered while the pacer owes sleep (the
//! newest up to the step's maximum), so the step after a paced stretch sees
//! a full batch of the latest events, not the one that came in last.

use crate::constants::{
    PREFETCH_CPU_SHARE_IDLE_PERCENT, PREFETCH_CPU_SHARE_PERCENT,
    PREFETCH_CPU_SPARE_RESERVE_PERCENT, PREFETCH_PACE_SLEEP_MAX_MS, PREFETCH_PRODUCTIVE_WINDOW_MS,
};
use std::time::Duration;

/// Pacing state; times are nanoseconds on the caller's clock.
#[derive(Debug, Clone)]
pub struct Pacer {
    productive_until_ns: u64,
    /// Spare CPU measured last (percent of one core, at most 100).
    spare_percent: u32,
    owed: Duration,
    /// Total sleep handed out (for the statistics).
    pub paced: Duration,
}

impl Pacer {
    /// A pacer at the idle share until its first queued prediction.
    pub fn new(now_ns: u64) -> Pacer {
        Pacer {
            productive_until_ns: now_ns,
            spare_percent: 0,
            owed: Duration::ZERO,
            paced: Duration::ZERO,
        }
    }

    /// A prediction was queued for staging at `now_ns`.
    pub fn queued(&mut self, now_ns: u64) {
        self.productive_until_ns = now_ns + PREFETCH_PRODUCTIVE_WINDOW_MS * 1_000_000;
    }

    /// The machine's idle CPU was measured: `idle_percent` of one core
    /// (summed over its CPUs, the thread's own use counted as idle).
    pub fn spare(&mut self, idle_percent: u32) {
        self.spare_percent = idle_percent
            .saturating_sub(PREFETCH_CPU_SPARE_RESERVE_PERCENT)
            .min(100);
    }

    /// The share of one core at `now_ns` (percent).
    pub fn share_percent(&self, now_ns: u64) -> u32 {
        let base = if now_ns < self.productive_until_ns {
            PREFETCH_CPU_SHARE_PERCENT
        } else {
            PREFETCH_CPU_SHARE_IDLE_PERCENT
        };
        base.max(self.spare_percent)
    }

    /// `busy` of work ended at `now_ns`: the sleep it costs is owed.
    pub fn worked(&mut self, busy: Duration, now_ns: u64) {
        let s = self.share_percent(now_ns);
        self.owed += busy * (100 - s) / s;
    }

    /// Sleep still owed.
    pub fn owed(&self) -> Duration {
        self.owed
    }

    /// The next sleep to take (zero when nothing is owed); counted as paid.
    pub fn next_sleep(&mut self) -> Duration {
        let d = self
            .owed
            .min(Duration::from_millis(PREFETCH_PACE_SLEEP_MAX_MS));
        self.owed -= d;
        self.paced += d;
        d
    }
}

/// When to step a predictor on the events gathered so far (times in
/// nanoseconds on the caller's clock).
#[derive(Debug, Clone)]
pub struct Cadence {
    min_events: usize,
    wait_max_ns: u64,
    /// When the oldest event still waiting was gathered.
    oldest_ns: Option<u64>,
}

impl Cadence {
    /// Step once `min_events` (at least 1) are gathered or the oldest has
    /// waited `wait_max_ns`.
    pub fn new(min_events: usize, wait_max_ns: u64) -> Cadence {
        Cadence {
            min_events: min_events.max(1),
            wait_max_ns,
            oldest_ns: None,
        }
    }

    /// Events were gathered at `now_ns` (the first since the last step
    /// starts the wait).
    pub fn gathered(&mut self, now_ns: u64) {
        self.oldest_ns.get_or_insert(now_ns);
    }

    /// Whether `waiting` gathered events should be stepped at `now_ns`.
    pub fn ready(&self, waiting: usize, now_ns: u64) -> bool {
        waiting > 0
            && (waiting >= self.min_events
                || self
                    .oldest_ns
                    .is_some_and(|t| now_ns.saturating_sub(t) >= self.wait_max_ns))
    }

    /// The gathered events were stepped.
    pub fn stepped(&mut self) {
        self.oldest_ns = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_waits_for_a_batch_or_the_longest_wait() {
        let mut c = Cadence::new(64, 500 * MS);
        assert!(!c.ready(0, 0));
        c.gathered(10 * MS);
        // one event that just came: wait for more
        assert!(!c.ready(1, 10 * MS));
        assert!(!c.ready(63, 400 * MS));
        assert!(c.ready(64, 11 * MS));
        // a trickle steps once the oldest has waited long enough
        assert!(c.ready(3, 510 * MS));
        c.stepped();
        assert!(!c.ready(0, 2_000 * MS));
        // the wait starts at the first event after a step, not before
        c.gathered(2_000 * MS);
        c.gathered(2_400 * MS);
        assert!(!c.ready(5, 2_499 * MS));
        assert!(c.ready(5, 2_500 * MS));
        // a predictor that takes any batch steps on every turn with events
        let mut any = Cadence::new(0, 500 * MS);
        any.gathered(0);
        assert!(any.ready(1, 0));
        assert!(!any.ready(0, 0));
    }

    const MS: u64 = 1_000_000;

    fn pay_all(p: &mut Pacer) -> Duration {
        let mut t = Duration::ZERO;
        loop {
            let d = p.next_sleep();
            if d.is_zero() {
                return t;
            }
            assert!(d <= Duration::from_millis(PREFETCH_PACE_SLEEP_MAX_MS));
            t += d;
        }
    }

    #[test]
    fn spare_cpu_beyond_the_reserve_raises_the_share_up_to_a_core() {
        let mut p = Pacer::new(0);
        let busy = Duration::from_millis(10);
        // Idle two-CPU machine (200 % of a core idle): a whole core, no sleep owed.
        p.spare(200);
        assert_eq!(p.share_percent(0), 100);
        p.worked(busy, 0);
        assert!(p.owed().is_zero());
        // 160 % idle: 60 % of a core; 10 ms of work owes 10 * 40 / 60 ms.
        p.spare(160);
        assert_eq!(p.share_percent(0), 60);
        p.worked(busy, 0);
        assert_eq!(p.owed(), busy * 40 / 60);
        // At most the reserve idle (a busy machine): the idle share, or the
        // full share while productive; never less than those.
        p.spare(PREFETCH_CPU_SPARE_RESERVE_PERCENT);
        assert_eq!(p.share_percent(0), PREFETCH_CPU_SHARE_IDLE_PERCENT);
        p.spare(PREFETCH_CPU_SPARE_RESERVE_PERCENT + 10);
        assert_eq!(p.share_percent(0), 10);
        p.queued(0);
        assert_eq!(p.share_percent(1), PREFETCH_CPU_SHARE_PERCENT);
        p.spare(0);
        assert_eq!(p.share_percent(1), PREFETCH_CPU_SHARE_PERCENT);
        // Far more idle than a core (a big machine): still one core.
        p.spare(6400);
        assert_eq!(p.share_percent(1), 100);
    }

    #[test]
    fn idle_share_at_start_full_while_productive_idle_after() {
        let mut p = Pacer::new(0);
        let busy = Duration::from_millis(4);
        let full = busy * (100 - PREFETCH_CPU_SHARE_PERCENT) / PREFETCH_CPU_SHARE_PERCENT;
        // Nothing queued yet: the idle share from the start.
        assert_eq!(p.share_percent(0), PREFETCH_CPU_SHARE_IDLE_PERCENT);
        assert_eq!(p.share_percent(MS), PREFETCH_CPU_SHARE_IDLE_PERCENT);
        // A step that queued a prediction is charged at the full share.
        p.queued(MS / 2);
        p.worked(busy, MS);
        assert_eq!(p.owed(), full);
        assert_eq!(pay_all(&mut p), full);
        // The window lapses without a queued prediction: the idle share.
        let late = (PREFETCH_PRODUCTIVE_WINDOW_MS + 1) * MS;
        assert_eq!(p.share_percent(late), PREFETCH_CPU_SHARE_IDLE_PERCENT);
        let idle = busy * (100 - PREFETCH_CPU_SHARE_IDLE_PERCENT) / PREFETCH_CPU_SHARE_IDLE_PERCENT;
        p.worked(busy, late);
        assert_eq!(pay_all(&mut p), idle);
        assert!(idle > full);
        // A queued prediction restores the full share for a window.
        p.queued(late);
        p.worked(busy, late + MS);
        assert_eq!(pay_all(&mut p), full);
        assert_eq!(p.paced, full + idle + full);
        // A fresh pacer that never queued pays the idle share at once.
        let mut q = Pacer::new(0);
        q.worked(busy, MS);
        assert_eq!(pay_all(&mut q), idle);
        assert_eq!(p.owed(), Duration::ZERO);
    }

    #[test]
    fn the_thread_never_exceeds_its_share_even_with_long_stretches() {
        // Stretches of work from microseconds to a 40 ms training step, each
        // followed by paying what is owed: busy time is at most the share of
        // all time, in the idle share as in the full one.
        for (productive, share) in [
            (true, PREFETCH_CPU_SHARE_PERCENT),
            (false, PREFETCH_CPU_SHARE_IDLE_PERCENT),
        ] {
            let mut p = Pacer::new(0);
            let mut now = PREFETCH_PRODUCTIVE_WINDOW_MS * MS + 1;
            let (mut busy_total, mut all) = (Duration::ZERO, Duration::ZERO);
            for i in 1..300u64 {
                if productive {
                    p.queued(now);
                }
                let busy = Duration::from_micros(if i % 50 == 0 {
                    40_000
                } else {
                    37 * (i % 13) + 5
                });
                now += busy.as_nanos() as u64;
                assert_eq!(p.share_percent(now), share);
                p.worked(busy, now);
                let slept = pay_all(&mut p);
                now += slept.as_nanos() as u64;
                busy_total += busy;
                all += busy + slept;
            }
            let frac = busy_total.as_secs_f64() / all.as_secs_f64();
            assert!(
                frac <= f64::from(share) / 100.0 + 1e-6,
                "{frac} at share {share}"
            );
            assert!(
                frac >= f64::from(share) / 100.0 - 1e-3,
                "{frac} at share {share}"
            );
        }
    }
}
