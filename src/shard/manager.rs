//! The background manager: once per policy window it applies each volume's
//! `TIERED_STORAGE_POLICY` to the access statistics of that window.
//!
//! Contract:
//! - [`run_window`] closes every volume's statistics window and, per the
//!   volume's policy: promotes entries read often enough to tier 0 while the
//!   hot tier is below its high watermark; when the hot tier is at or above
//!   the high watermark, splits hot shards whose window touched only a few
//!   sixteenths (so their untouched parts can leave) and demotes the least
//!   recently accessed hot entries to tier 1 until the low watermark; and
//!   merges split slots back when their children are contiguous on one tier.
//!   It returns what it did, for tests and `stats`.
//! - All moves go through `shard::lifecycle`, so they never break
//!   read-after-acknowledged-write and never block the I/O path.
//! - [`Manager::start`] runs windows on a thread every `interval` and commits
//!   after each (releasing freed extents); dropping the handle stops it.

use crate::constants::MANAGER_THREAD_NICE;
use crate::io::IoEngine;
use crate::shard::lifecycle::{self, entries, Outcome};
use crate::shard::pool::Pool;
use crate::volume::handle::{Volume, VolumeError};
use crate::volume::table::Loc;
use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// What one window did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WindowReport {
    pub promoted: u64,
    pub demoted: u64,
    pub split: u64,
    pub merged: u64,
    pub skipped: u64,
}

/// Run one policy window over every volume of the pool.
pub fn run_window(pool: &Pool, eng: &mut dyn IoEngine) -> Result<WindowReport, VolumeError> {
    let mut rep = WindowReport::default();
    let names: Vec<String> = pool.list_volumes().into_iter().map(|v| v.name).collect();
    for name in names {
        let Ok(vol) = pool.volume(&name) else {
            continue;
        };
        run_volume_window(pool, &vol, eng, &mut rep)?;
    }
    Ok(rep)
}

fn count(rep: &mut WindowReport, o: Outcome, done: fn(&mut WindowReport) -> &mut u64) {
    match o {
        Outcome::Done => *done(rep) += 1,
        Outcome::Skipped(_) => rep.skipped += 1,
    }
}

fn run_volume_window(
    pool: &Pool,
    vol: &Volume,
    eng: &mut dyn IoEngine,
    rep: &mut WindowReport,
) -> Result<(), VolumeError> {
    let v = vol.shared();
    let policy = v.policy();
    let hot = &pool.tiers()[0];
    let slot_units = v.table.slot_units();
    let mut window: HashMap<u64, crate::volume::stats::SlotWindow> = HashMap::new();
    v.stats.close_window(|slot, w| {
        window.insert(slot, w);
    });
    if pool.tiers().len() < 2 || policy.pin_tier.is_some() {
        return Ok(());
    }
    // Promotion: entries of slots read often enough, on a colder tier.
    for (loc, e) in entries(vol) {
        let reads = window.get(&loc.slot).map_or(0, |w| w.reads);
        if policy.promotion_wanted(e.tier(), reads, hot.used_percent()) {
            count(rep, lifecycle::migrate(vol, eng, loc, 0)?, |r| {
                &mut r.promoted
            });
        }
    }
    // Demotion under pressure, least recently accessed first; split first
    // where only a small part of a hot shard is in use.
    if policy.demotion_wanted(hot.used_percent()) {
        let children = (slot_units.min(16)) as u32;
        for (loc, e) in entries(vol) {
            if loc.child.is_some() || e.tier() != 0 || children < 2 {
                continue;
            }
            if let Some(w) = window.get(&loc.slot) {
                if policy.split_wanted(w.touched_sixteenths(), true) {
                    count(rep, lifecycle::split(vol, loc.slot, children)?, |r| {
                        &mut r.split
                    });
                }
            }
        }
        let mut hot_entries: Vec<(u16, bool, Loc)> = entries(vol)
            .into_iter()
            .filter(|(_, e)| e.tier() == 0)
            .map(|(loc, e)| {
                let last = window
                    .get(&loc.slot)
                    .map_or_else(|| v.stats.peek(loc.slot).last_window, |x| x.last_window);
                let age = v.stats.age(last);
                // A child whose sixteenth range was untouched this window goes first.
                let untouched_child = loc.child.is_some_and(|c| {
                    let t = window.get(&loc.slot).map_or(0, |x| x.touched);
                    let per = 16 / (slot_units / e.len_units()).min(16);
                    let bits = ((1u32 << per) - 1) << (u64::from(c.index) * per);
                    u32::from(t) & bits == 0
                });
                (age, untouched_child, loc)
            })
            .collect();
        hot_entries.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        // A demoted extent returns to the hot allocator only after the next
        // commit, so count what this window released.
        let mut released = 0u64;
        let projected = |released: u64| {
            (hot.used_units().saturating_sub(released) * 100 / hot.n_units.max(1)) as u8
        };
        for (_, _, loc) in hot_entries {
            if policy.demotion_done(projected(released)) {
                break;
            }
            let units = current_units(vol, loc);
            match lifecycle::migrate(vol, eng, loc, 1)? {
                Outcome::Done => {
                    rep.demoted += 1;
                    released += units;
                }
                Outcome::Skipped(_) => rep.skipped += 1,
            }
        }
    }
    if policy.merge {
        let mut split_slots: Vec<u64> = entries(vol)
            .into_iter()
            .filter(|(l, _)| l.child.is_some())
            .map(|(l, _)| l.slot)
            .collect();
        split_slots.dedup();
        for slot in split_slots {
            if let Outcome::Done = lifecycle::merge(vol, eng, slot, false)? {
                rep.merged += 1;
            }
        }
    }
    Ok(())
}

/// Units of the entry at `loc` (0 when it is not mapped).
fn current_units(vol: &Volume, loc: Loc) -> u64 {
    let guard = crossbeam_epoch::pin();
    vol.shared()
        .table
        .load_entry(loc, &guard)
        .map(|e| if e.is_mapped() { e.len_units() } else { 0 })
        .unwrap_or(0)
}

/// A running background manager; dropping it stops the thread.
pub struct Manager {
    /// Dropped to stop the thread (which sleeps on the other end, so it
    /// wakes once per window, not to poll a flag).
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One policy window, then a commit; failures are logged (the next window
/// retries), as the manager thread does every interval.
pub fn window_and_commit(pool: &Pool, eng: &mut dyn IoEngine) {
    if let Err(e) = run_window(pool, eng) {
        tracing::warn!("manager window failed: {e}");
    }
    if let Err(e) = pool.commit() {
        tracing::warn!("manager commit failed: {e}");
    }
}

impl Manager {
    /// Run a policy window every `interval` on a thread of its own. The
    /// thread sleeps between windows (one wake-up per window, not one per
    /// 10 ms poll of a stop flag on CPUs the queue threads share), at nice
    /// `MANAGER_THREAD_NICE` so a window yields a shared CPU to the queue
    /// threads, and stops as soon as the handle is dropped.
    pub fn start(pool: Pool, interval: Duration) -> Manager {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("shardblk-manager".into())
            .spawn(move || {
                if let Err(e) = crate::threads::lower_current_priority(MANAGER_THREAD_NICE) {
                    tracing::warn!("manager thread: nice {MANAGER_THREAD_NICE} refused: {e}");
                }
                let mut eng = pool.engine();
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    window_and_commit(&pool, eng.as_mut());
                }
            })
            .expect("spawn manager thread");
        Manager {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
