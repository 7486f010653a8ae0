//! Remote staging: which shards of a cluster volume the attaching node holds
//! on its local stage tier, whether each copy may serve a read, and when to
//! fetch or drop one. A pure state machine (no I/O, no clock: times are
//! nanoseconds passed in); the device's network thread does the I/O
//! (`device::net`: fetches through the cluster client, the copies on the
//! stage tier through [`crate::io::BlockDev`]).
//!
//! Contract:
//! - The stage tier is cut into `slots` slots of one cluster shard each
//!   (slot `i` at byte `i * shard_bytes`). A shard is *absent*, *fetching*
//!   into a slot, or *staged* in a slot. Which shards to keep within the
//!   budget, what to evict first, the rate throttle and the precision and
//!   coverage figures are the local stager's ([`StagerCore`], one unit per
//!   slot): [`RemoteStageCore::predicted`] stages a shard the predictors or
//!   demand promotion named, evicting (instantly: a slot is just freed)
//!   the victims the stager core chose.
//! - At most `fetch_max` fetches run at once; a shard with writes in flight
//!   is not fetched (its replicas may not all have them yet): the
//!   prediction is kept (up to `DEFERRED_MAX`) and handed out again by
//!   [`RemoteStageCore::take_ready`] once those writes ended.
//! - Writes are write-through: every write is sent to the replicas as
//!   before. [`RemoteStageCore::write_started`] is called when a write is
//!   handed to the client, in submission order (the order in which the
//!   replicas' versions are taken): it returns the pieces of staged shards
//!   the caller must update in place *before* submitting, and spoils any
//!   fetch of a touched shard in flight (its data may predate the write;
//!   the fetched copy is discarded). [`RemoteStageCore::write_ended`]
//!   accounts the end; a failed write drops the staged copies it touched
//!   (they hold data the replicas may not), so no staged copy ever differs
//!   from what the replicas acknowledged.
//! - Reads: [`RemoteStageCore::read`] serves a read locally only when every
//!   shard it touches is staged and the attachment was confirmed recently:
//!   a remote read that started within `lease_ns` succeeded (its epoch
//!   check made a quorum: no newer attacher had fenced it). Otherwise
//!   the read goes to the replicas as before (and, succeeding, renews the
//!   confirmation), so a fenced attacher stops serving its copies within
//!   `lease_ns` of its last confirmed operation.
//! - Validity: a staged copy belongs to this attachment only: the core
//!   starts empty on every attach (the stage tier's old contents are never
//!   trusted), and [`RemoteStageCore::fenced`] drops everything.
//! - Every slot is in exactly one place (free, fetching, staged);
//!   [`RemoteStageCore::check`] asserts it.

use super::live::{Place, ShardPlaces};
use super::stager::{Plan, SkipReason, StagerCore, StagerParams, StagerStats};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shape of a stage tier and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteStageParams {
    /// Volume id (as in trace events and predictions).
    pub volume: u32,
    /// Shards in the volume, and their size in bytes.
    pub shards: u64,
    pub shard_bytes: u64,
    /// Shards the stage tier holds (within the budget).
    pub slots: u32,
    /// Fetches in flight at most.
    pub fetch_max: usize,
    /// How long after a confirmed remote read staged copies serve reads.
    pub lease_ns: u64,
}

/// What to do about a predicted shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Fetch the shard into `slot` (the `evicted` shards were dropped to
    /// make room).
    Fetch {
        slot: u32,
        evicted: Vec<u64>,
    },
    Skip(RemoteSkip),
}

/// Why a predicted shard is not fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteSkip {
    NotThisVolume,
    Staged,
    Fetching,
    /// Writes to it are in flight.
    Writing,
    /// `fetch_max` fetches are running.
    FetchesBusy,
    /// The budget, throttle or eviction order said no.
    Stager(SkipReason),
}

/// What to do with a completed fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Write the shard's data into `slot`, then call
    /// [`RemoteStageCore::installed`].
    Install { slot: u32 },
    /// Discard the data (a write came meanwhile, or the fetch failed).
    Discard,
}

/// One piece of a request on the stage tier: `len` bytes at byte `at` of
/// the tier, `buf_off` bytes into the request's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub at: u64,
    pub buf_off: u64,
    pub len: u64,
}

/// How a read is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// From the stage tier, piece by piece.
    Local(Vec<Piece>),
    Remote,
}

/// Counters of remote staging (with the stager core's figures).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteStageStats {
    /// Reads served from the stage tier, and from the replicas.
    pub local_reads: u64,
    pub remote_reads: u64,
    /// Reads of staged shards sent to the replicas because the last
    /// confirmed operation was older than the lease.
    pub lease_expired: u64,
    /// Fetches started, discarded because a write came meanwhile, failed.
    pub fetches: u64,
    pub spoiled: u64,
    pub fetch_failed: u64,
    /// Staged copies updated in place by writes (pieces), and dropped
    /// (failed write or failed update).
    pub updated: u64,
    pub invalidated: u64,
    /// Times every copy was dropped because a newer attacher fenced this one.
    pub fenced_drops: u64,
    pub slots: u32,
    pub slots_used: u32,
    pub stager: StagerStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShardState {
    Fetching { slot: u32, spoiled: bool },
    Staged { slot: u32 },
}

/// The state machine (see the module contract).
pub struct RemoteStageCore {
    p: RemoteStageParams,
    core: StagerCore,
    state: HashMap<u64, ShardState>,
    free: Vec<u32>,
    fetching: usize,
    writes: HashMap<u64, u32>,
    /// Predicted while written: staged once their writes end.
    deferred: VecDeque<u64>,
    confirmed_ns: Option<u64>,
    st: RemoteStageStats,
}

/// Predictions of shards under writes kept for later at most.
const DEFERRED_MAX: usize = 64;

impl RemoteStageCore {
    pub fn new(p: RemoteStageParams, now_ns: u64) -> Self {
        assert!(p.slots >= 1 && p.fetch_max >= 1 && p.shard_bytes > 0);
        let fetch_max = p.fetch_max.min(p.slots as usize);
        let core = StagerCore::new(StagerParams::new(u64::from(p.slots)), now_ns);
        RemoteStageCore {
            free: (0..p.slots).rev().collect(),
            p: RemoteStageParams { fetch_max, ..p },
            core,
            state: HashMap::new(),
            fetching: 0,
            writes: HashMap::new(),
            deferred: VecDeque::new(),
            confirmed_ns: None,
            st: RemoteStageStats::default(),
        }
    }

    pub fn params(&self) -> &RemoteStageParams {
        &self.p
    }

    fn shards_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let first = offset / self.p.shard_bytes;
        let end = (offset + len.max(1)).div_ceil(self.p.shard_bytes);
        first..end.min(self.p.shards).max(first)
    }

    /// The predictors or demand promotion named `shard` of `volume`.
    pub fn predicted(&mut self, volume: u32, shard: u64, now_ns: u64) -> Decision {
        if volume != self.p.volume || shard >= self.p.shards {
            return Decision::Skip(RemoteSkip::NotThisVolume);
        }
        match self.state.get(&shard) {
            Some(ShardState::Staged { .. }) => return Decision::Skip(RemoteSkip::Staged),
            Some(ShardState::Fetching { .. }) => return Decision::Skip(RemoteSkip::Fetching),
            None => {}
        }
        if self.writes.get(&shard).is_some_and(|&n| n > 0) {
            if !self.deferred.contains(&shard) && self.deferred.len() < DEFERRED_MAX {
                self.deferred.push_back(shard);
            }
            return Decision::Skip(RemoteSkip::Writing);
        }
        if self.fetching >= self.p.fetch_max {
            return Decision::Skip(RemoteSkip::FetchesBusy);
        }
        // Fetches in flight hold slots the stager core does not count yet:
        // the plan makes room for them too, so a slot is always free after.
        let units = 1 + self.fetching as u64;
        let evict = match self.core.plan((volume, shard), units, now_ns) {
            Plan::Stage { evict } => evict,
            Plan::Skip(r) => return Decision::Skip(RemoteSkip::Stager(r)),
        };
        let mut evicted = Vec::with_capacity(evict.len());
        for v in evict {
            if let Some(ShardState::Staged { slot }) = self.state.remove(&v.key.1) {
                self.free.push(slot);
                self.core.evicted();
                evicted.push(v.key.1);
            }
        }
        let Some(slot) = self.free.pop() else {
            unreachable!("the plan left no slot free: {}", self.debug());
        };
        self.state.insert(
            shard,
            ShardState::Fetching {
                slot,
                spoiled: false,
            },
        );
        self.fetching += 1;
        self.st.fetches += 1;
        Decision::Fetch { slot, evicted }
    }

    /// A shard predicted while writes to it were in flight whose writes
    /// have all ended since (oldest first): to pass to
    /// [`Self::predicted`] again.
    pub fn take_ready(&mut self) -> Option<u64> {
        let i = self
            .deferred
            .iter()
            .position(|s| !self.writes.contains_key(s))?;
        self.deferred.remove(i)
    }

    /// The fetch of `shard` ended (`ok`: its data arrived).
    pub fn fetched(&mut self, shard: u64, ok: bool) -> Fetched {
        let Some(ShardState::Fetching { slot, spoiled }) = self.state.get(&shard).copied() else {
            return Fetched::Discard;
        };
        if ok && !spoiled {
            return Fetched::Install { slot };
        }
        self.state.remove(&shard);
        self.free.push(slot);
        self.fetching -= 1;
        if ok {
            self.st.spoiled += 1;
            self.core.stage_missed(false);
        } else {
            self.st.fetch_failed += 1;
            self.core.stage_missed(true);
        }
        Fetched::Discard
    }

    /// The fetched data of `shard` was written into its slot (`ok`) or the
    /// write failed; at `now_ns`.
    pub fn installed(&mut self, shard: u64, ok: bool, now_ns: u64) {
        let Some(ShardState::Fetching { slot, spoiled }) = self.state.get(&shard).copied() else {
            return;
        };
        debug_assert!(!spoiled, "installed after a write spoiled it");
        self.fetching -= 1;
        if ok && !spoiled {
            self.state.insert(shard, ShardState::Staged { slot });
            self.core.staged((self.p.volume, shard), 1, 1, now_ns);
        } else {
            self.state.remove(&shard);
            self.free.push(slot);
            self.core.stage_missed(true);
        }
    }

    /// A read of `len` bytes at `offset` started at `now_ns`: where it is
    /// served from.
    pub fn read(&mut self, offset: u64, len: u64, now_ns: u64) -> ReadPlan {
        let end = offset.checked_add(len);
        if len == 0 || end.is_none_or(|e| e > self.p.shards * self.p.shard_bytes) {
            // not the volume's: the replicas' side answers it (an error)
            self.st.remote_reads += 1;
            return ReadPlan::Remote;
        }
        let shards = self.shards_of(offset, len);
        let n = (shards.end - shards.start) as u32;
        self.core.on_read(self.p.volume, shards.start, n, now_ns);
        let mut pieces = Vec::with_capacity(n as usize);
        for s in shards {
            let Some(ShardState::Staged { slot }) = self.state.get(&s) else {
                self.st.remote_reads += 1;
                return ReadPlan::Remote;
            };
            let lo = offset.max(s * self.p.shard_bytes);
            let hi = (offset + len).min((s + 1) * self.p.shard_bytes);
            pieces.push(Piece {
                at: u64::from(*slot) * self.p.shard_bytes + (lo - s * self.p.shard_bytes),
                buf_off: lo - offset,
                len: hi - lo,
            });
        }
        let fresh = self
            .confirmed_ns
            .is_some_and(|c| now_ns <= c.saturating_add(self.p.lease_ns));
        if !fresh {
            self.st.lease_expired += 1;
            self.st.remote_reads += 1;
            return ReadPlan::Remote;
        }
        self.st.local_reads += 1;
        ReadPlan::Local(pieces)
    }

    /// A write of `len` bytes at `offset` is about to be handed to the
    /// client: the pieces of staged copies to update first.
    pub fn write_started(&mut self, offset: u64, len: u64) -> Vec<Piece> {
        let mut pieces = Vec::new();
        for s in self.shards_of(offset, len) {
            *self.writes.entry(s).or_insert(0) += 1;
            match self.state.get_mut(&s) {
                Some(ShardState::Fetching { spoiled, .. }) => *spoiled = true,
                Some(ShardState::Staged { slot }) => {
                    let lo = offset.max(s * self.p.shard_bytes);
                    let hi = (offset + len).min((s + 1) * self.p.shard_bytes);
                    pieces.push(Piece {
                        at: u64::from(*slot) * self.p.shard_bytes + (lo - s * self.p.shard_bytes),
                        buf_off: lo - offset,
                        len: hi - lo,
                    });
                    self.st.updated += 1;
                }
                None => {}
            }
        }
        pieces
    }

    /// The write of [`Self::write_started`] ended (`ok`: acknowledged by
    /// the replicas). A failed write drops the copies it touched.
    pub fn write_ended(&mut self, offset: u64, len: u64, ok: bool) {
        for s in self.shards_of(offset, len) {
            if let Some(n) = self.writes.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    self.writes.remove(&s);
                }
            }
            if !ok {
                self.invalidate(s);
            }
        }
    }

    /// Drop the staged copy of `shard` (an update of it failed, or a write
    /// to it did); a fetch in flight is spoiled instead.
    pub fn invalidate(&mut self, shard: u64) {
        match self.state.get_mut(&shard) {
            Some(ShardState::Staged { slot }) => {
                let slot = *slot;
                self.state.remove(&shard);
                self.free.push(slot);
                self.core.dropped((self.p.volume, shard));
                self.st.invalidated += 1;
            }
            Some(ShardState::Fetching { spoiled, .. }) => *spoiled = true,
            None => {}
        }
    }

    /// A remote read that started at `started_ns` succeeded: the
    /// replicas had seen no newer attacher then.
    pub fn confirmed(&mut self, started_ns: u64) {
        self.confirmed_ns = Some(self.confirmed_ns.map_or(started_ns, |c| c.max(started_ns)));
    }

    /// A newer attacher holds the volume: no copy is valid any more.
    pub fn fenced(&mut self) {
        let staged: Vec<(u64, u32)> = self
            .state
            .iter()
            .filter_map(|(&s, st)| match st {
                ShardState::Staged { slot } => Some((s, *slot)),
                ShardState::Fetching { .. } => None,
            })
            .collect();
        for (s, slot) in staged {
            self.state.remove(&s);
            self.free.push(slot);
            self.core.dropped((self.p.volume, s));
        }
        for st in self.state.values_mut() {
            if let ShardState::Fetching { spoiled, .. } = st {
                *spoiled = true;
            }
        }
        self.confirmed_ns = None;
        self.st.fenced_drops += 1;
    }

    /// Let time pass (the stager core's aging and throttle).
    pub fn tick(&mut self, now_ns: u64) {
        self.core.tick(now_ns);
    }

    /// Whether `shard` is staged (serves reads while the lease holds).
    pub fn is_staged(&self, shard: u64) -> bool {
        matches!(self.state.get(&shard), Some(ShardState::Staged { .. }))
    }

    pub fn fetches_in_flight(&self) -> usize {
        self.fetching
    }

    /// Assert the slot invariant (every slot free, fetching or staged,
    /// exactly once) and the stager core's agreement.
    pub fn check(&self) {
        let mut seen = vec![false; self.p.slots as usize];
        let mut mark = |slot: u32| {
            assert!(!seen[slot as usize], "slot {slot} held twice");
            seen[slot as usize] = true;
        };
        for &s in &self.free {
            mark(s);
        }
        let mut fetching = 0;
        for (&shard, st) in &self.state {
            match *st {
                ShardState::Fetching { slot, .. } => {
                    fetching += 1;
                    mark(slot);
                }
                ShardState::Staged { slot } => {
                    mark(slot);
                    assert!(self.core.holds((self.p.volume, shard)), "{shard} untracked");
                }
            }
        }
        assert!(seen.iter().all(|&x| x), "a slot is lost");
        assert_eq!(fetching, self.fetching);
        assert!(self.fetching <= self.p.fetch_max);
        let staged = self.state.len() - fetching;
        assert_eq!(staged as u64, self.core.stats().resident_shards);
    }

    fn debug(&self) -> String {
        format!(
            "{} slots, {} free, {} fetching, {:?}",
            self.p.slots,
            self.free.len(),
            self.fetching,
            self.core.stats()
        )
    }

    pub fn stats(&self) -> RemoteStageStats {
        let mut s = self.st.clone();
        s.slots = self.p.slots;
        s.slots_used = self.p.slots - self.free.len() as u32;
        s.stager = self.core.stats();
        s
    }
}

/// Which shards are staged, as the inference thread sees them (one bit per
/// shard, set by the network thread once a copy is installed, cleared
/// when it is dropped): staged shards are [`Place::Hot`], others `Cold`.
#[derive(Clone)]
pub struct StagedSet {
    volume: u32,
    shards: u64,
    bits: Arc<[AtomicU64]>,
}

impl StagedSet {
    pub fn new(volume: u32, shards: u64) -> Self {
        StagedSet {
            volume,
            shards,
            bits: (0..shards.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn set(&self, shard: u64, staged: bool) {
        if shard >= self.shards {
            return;
        }
        let (w, b) = ((shard / 64) as usize, 1u64 << (shard % 64));
        if staged {
            self.bits[w].fetch_or(b, Ordering::Relaxed);
        } else {
            self.bits[w].fetch_and(!b, Ordering::Relaxed);
        }
    }

    pub fn clear(&self) {
        for w in self.bits.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }
}

impl ShardPlaces for StagedSet {
    fn volume_id(&self) -> u32 {
        self.volume
    }
    fn place(&self, shard: u64) -> Place {
        if shard >= self.shards {
            return Place::Absent;
        }
        let (w, b) = ((shard / 64) as usize, 1u64 << (shard % 64));
        match self.bits[w].load(Ordering::Relaxed) & b {
            0 => Place::Cold,
            _ => Place::Hot,
        }
    }
    fn boxed(&self) -> Box<dyn ShardPlaces> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const SB: u64 = 1 << 20;
    const MS: u64 = 1_000_000;

    fn params(slots: u32, fetch_max: usize) -> RemoteStageParams {
        RemoteStageParams {
            volume: 7,
            shards: 64,
            shard_bytes: SB,
            slots,
            fetch_max,
            lease_ns: 500 * MS,
        }
    }

    fn stage(c: &mut RemoteStageCore, shard: u64, now: u64) -> u32 {
        let Decision::Fetch { slot, .. } = c.predicted(7, shard, now) else {
            panic!("shard {shard} not fetched");
        };
        assert_eq!(c.fetched(shard, true), Fetched::Install { slot });
        c.installed(shard, true, now);
        c.check();
        slot
    }

    #[test]
    fn a_staged_shard_serves_reads_only_within_the_lease() {
        let mut c = RemoteStageCore::new(params(4, 1), 0);
        let slot = stage(&mut c, 3, MS);
        // never confirmed: remote
        assert_eq!(c.read(3 * SB + 4096, 8192, 2 * MS), ReadPlan::Remote);
        c.confirmed(2 * MS);
        assert_eq!(
            c.read(3 * SB + 4096, 8192, 3 * MS),
            ReadPlan::Local(vec![Piece {
                at: u64::from(slot) * SB + 4096,
                buf_off: 0,
                len: 8192
            }])
        );
        // a read crossing into an absent shard goes remote
        assert_eq!(c.read(4 * SB - 4096, 8192, 3 * MS), ReadPlan::Remote);
        // past the end of the volume: never local
        assert_eq!(c.read(64 * SB, 4096, 3 * MS), ReadPlan::Remote);
        // the lease runs out
        assert_eq!(c.read(3 * SB, 4096, 503 * MS), ReadPlan::Remote);
        let s = c.stats();
        assert_eq!((s.local_reads, s.remote_reads, s.lease_expired), (1, 4, 2));
    }

    #[test]
    fn a_write_during_a_fetch_spoils_it_and_a_writing_shard_is_not_fetched() {
        let mut c = RemoteStageCore::new(params(4, 2), 0);
        assert!(matches!(c.predicted(7, 5, 0), Decision::Fetch { .. }));
        assert!(c.write_started(5 * SB, 4096).is_empty());
        assert_eq!(c.fetched(5, true), Fetched::Discard);
        c.check();
        // the write is still in flight: not fetched again
        assert_eq!(c.predicted(7, 5, MS), Decision::Skip(RemoteSkip::Writing));
        assert_eq!(c.take_ready(), None, "deferred while written");
        c.write_ended(5 * SB, 4096, true);
        assert_eq!(c.take_ready(), Some(5));
        assert_eq!(c.take_ready(), None);
        assert!(matches!(c.predicted(7, 5, MS), Decision::Fetch { .. }));
        assert_eq!(c.stats().spoiled, 1);
        c.check();
    }

    #[test]
    fn writes_update_staged_copies_and_a_failed_write_drops_them() {
        let mut c = RemoteStageCore::new(params(4, 1), 0);
        let a = stage(&mut c, 1, 0);
        let b = stage(&mut c, 2, 0);
        // a write across shards 1 and 2 updates both copies
        let p = c.write_started(2 * SB - 8192, 16384);
        assert_eq!(
            p,
            vec![
                Piece {
                    at: u64::from(a) * SB + SB - 8192,
                    buf_off: 0,
                    len: 8192
                },
                Piece {
                    at: u64::from(b) * SB,
                    buf_off: 8192,
                    len: 8192
                }
            ]
        );
        c.write_ended(2 * SB - 8192, 16384, false);
        assert!(!c.is_staged(1) && !c.is_staged(2));
        assert_eq!(c.stats().invalidated, 2);
        c.check();
    }

    #[test]
    fn fencing_drops_every_copy_and_spoils_fetches() {
        let mut c = RemoteStageCore::new(params(4, 2), 0);
        stage(&mut c, 1, 0);
        assert!(matches!(c.predicted(7, 9, 0), Decision::Fetch { .. }));
        c.confirmed(0);
        c.fenced();
        assert!(!c.is_staged(1));
        assert_eq!(c.fetched(9, true), Fetched::Discard);
        assert_eq!(c.read(SB, 4096, 1), ReadPlan::Remote);
        c.check();
    }

    #[test]
    fn the_budget_counts_fetches_in_flight_and_evicts_read_shards_first() {
        let mut c = RemoteStageCore::new(params(3, 2), 0);
        c.confirmed(0);
        stage(&mut c, 1, 0);
        stage(&mut c, 2, 0);
        assert!(matches!(c.read(SB, 4096, MS), ReadPlan::Local(_)));
        assert!(matches!(c.read(2 * SB, 4096, 2 * MS), ReadPlan::Local(_)));
        // a third fits; a fourth, with the third in flight, evicts the
        // least recently read
        let Decision::Fetch { evicted, .. } = c.predicted(7, 3, 3 * MS) else {
            panic!("3 not fetched");
        };
        assert!(evicted.is_empty());
        let Decision::Fetch { evicted, .. } = c.predicted(7, 4, 3 * MS) else {
            panic!("4 not fetched");
        };
        assert_eq!(evicted, vec![1]);
        assert_eq!(
            c.predicted(7, 5, 3 * MS),
            Decision::Skip(RemoteSkip::FetchesBusy)
        );
        c.check();
        for s in [3, 4] {
            let Fetched::Install { .. } = c.fetched(s, true) else {
                panic!("{s} not installed");
            };
            c.installed(s, true, 3 * MS);
        }
        c.check();
        stage(&mut c, 5, 4 * MS); // evicts 2 (read), keeps 3 and 4 (fresh)
        assert!(!c.is_staged(2) && c.is_staged(3) && c.is_staged(4));
        // fresh unread shards are never evicted for a newer prediction
        assert_eq!(
            c.predicted(7, 6, 5 * MS),
            Decision::Skip(RemoteSkip::Stager(SkipReason::NoBudget))
        );
        assert_eq!(c.stats().slots_used, 3);
        c.check();
    }

    /// Seeded random runs against a model of the replicas: every read the
    /// core serves locally returns the last acknowledged write, whatever
    /// fetches, writes (some failing) and evictions interleave.
    #[test]
    fn random_runs_never_serve_a_stale_copy() {
        for seed in 0..200u64 {
            run(seed);
        }
    }

    fn run(seed: u64) {
        const BLOCKS: u64 = 4; // per shard, in this model
        const BS: u64 = SB / BLOCKS;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shards = 6u64;
        let mut c = RemoteStageCore::new(
            RemoteStageParams {
                shards,
                slots: rng.random_range(1..5),
                fetch_max: rng.random_range(1..3),
                ..params(1, 1)
            },
            0,
        );
        // replicas: block -> value (acknowledged = applied here at submit,
        // as replicas keep the newest version); stage tier slots
        let mut replicas = vec![0u32; (shards * BLOCKS) as usize];
        let mut tier = vec![0u32; (c.params().slots as u64 * BLOCKS) as usize];
        // fetches in flight: (shard, snapshot of the replicas' blocks)
        let mut fetches: Vec<(u64, Vec<u32>)> = Vec::new();
        // writes in flight: (offset, len, value, will fail)
        let mut writes: Vec<(u64, u64, u32, bool)> = Vec::new();
        let mut acked = replicas.clone();
        let mut now = 0u64;
        let mut next_val = 1u32;
        for _ in 0..400 {
            now += rng.random_range(0..20) * MS;
            c.confirmed(now);
            c.tick(now);
            match rng.random_range(0..6) {
                0 => {
                    let s = match c.take_ready() {
                        Some(s) if rng.random_bool(0.5) => s,
                        _ => rng.random_range(0..shards),
                    };
                    if let Decision::Fetch { .. } = c.predicted(7, s, now) {
                        let b = (s * BLOCKS) as usize;
                        fetches.push((s, replicas[b..b + BLOCKS as usize].to_vec()));
                    }
                }
                1 if !fetches.is_empty() => {
                    let (s, data) = fetches.remove(rng.random_range(0..fetches.len()));
                    let ok = rng.random_bool(0.9);
                    if let Fetched::Install { slot } = c.fetched(s, ok) {
                        let t = (u64::from(slot) * BLOCKS) as usize;
                        tier[t..t + BLOCKS as usize].copy_from_slice(&data);
                        c.installed(s, true, now);
                    }
                }
                2 => {
                    let first = rng.random_range(0..shards * BLOCKS);
                    let n = rng.random_range(1..=(shards * BLOCKS - first).min(6));
                    let (off, len) = (first * BS, n * BS);
                    let v = next_val;
                    next_val += 1;
                    for p in c.write_started(off, len) {
                        for k in 0..p.len / BS {
                            tier[((p.at / BS) + k) as usize] = v;
                        }
                    }
                    let fail = rng.random_bool(0.1);
                    if !fail {
                        // the replicas apply it (a failed one may apply or not)
                        for b in first..first + n {
                            replicas[b as usize] = v;
                        }
                    } else if rng.random_bool(0.5) {
                        replicas[first as usize] = v;
                    }
                    writes.push((off, len, v, fail));
                }
                3 if !writes.is_empty() => {
                    let (off, len, _, fail) = writes.remove(rng.random_range(0..writes.len()));
                    c.write_ended(off, len, !fail);
                    if writes.is_empty() {
                        acked = replicas.clone();
                    }
                }
                _ => {
                    let first = rng.random_range(0..shards * BLOCKS);
                    let n = rng.random_range(1..=(shards * BLOCKS - first).min(6));
                    if let ReadPlan::Local(pieces) = c.read(first * BS, n * BS, now) {
                        let mut got = Vec::new();
                        for p in pieces {
                            for k in 0..p.len / BS {
                                got.push(tier[((p.at / BS) + k) as usize]);
                            }
                        }
                        // each block: the replicas' value, or that of a
                        // write in flight over it (concurrent with the read)
                        for (k, &g) in got.iter().enumerate() {
                            let b = first + k as u64;
                            let ok = g == replicas[b as usize]
                                || writes.iter().any(|&(o, l, v, _)| {
                                    v == g && (o / BS..(o + l) / BS).contains(&b)
                                });
                            assert!(ok, "seed {seed}: stale local read of block {b}: {g}");
                            if writes.is_empty() {
                                assert_eq!(g, acked[b as usize], "seed {seed}: block {b}");
                            }
                        }
                    }
                }
            }
            c.check();
        }
    }
}
