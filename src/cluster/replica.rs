//! The replica side of the shard protocol as a state machine over a block
//! store: fencing epochs per volume, a version per written block, the node's
//! copy of the override map. No I/O of its own: storage is the
//! [`BlockStore`] it is given (in memory for the simulator, a local pool
//! volume for a real node).
//!
//! Contract (see `proto` for the request semantics):
//! - `handle` checks the request's epoch against the volume's fence before
//!   touching anything, and raises the fence to it.
//! - A block is written only when the incoming version is newer than the
//!   stored one; blocks never written read as `Version::ZERO` with the
//!   store's zero content.
//! - A drop (rebalancing moved the shard away) forgets the shard's blocks
//!   and versions, unless an install guarded by an override record at least
//!   as new came first (the shard moved back here meanwhile): a late or
//!   duplicated drop never removes a copy a newer set relies on.
//! - [`ReplicaMeta`] (fences, versions, overrides, guards) is plain data: the owner
//!   persists it where its durability contract needs (a real node before it
//!   answers a write, fence or commit).
//! - **Floors.** A snapshot commit (an attacher's write-back, a
//!   configuration change: every record of the volume it knows) raises the
//!   volume's floor to the attacher's epoch and replaces the records older
//!   than that epoch with the snapshot's. Later, records older than the
//!   floor are refused (from a commit's carry or from gossip), except
//!   through a newer snapshot, or from gossip that carries the same or a
//!   higher floor (its older records are that snapshot's). So a record an
//!   older attacher sent but never committed cannot come back after a
//!   newer attacher decided without it (see `attacher`).
//! - Blocks a request writes are durable only after [`ReplicaCore::sync`]
//!   (the store's `flush` of every volume written since): the owner syncs,
//!   then persists the metadata, then answers (a real node does it once
//!   for a batch of requests: group commit).

use super::epoch::{Epoch, Version};
use super::overrides::{OverrideMap, OverrideRecord};
use super::placement::ShardKey;
use super::proto::{BlockEntry, Request, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
#[error("block store: {0}")]
pub struct StoreError(pub String);

/// Where a replica keeps block contents.
pub trait BlockStore {
    type Data: Clone;
    /// Contents of `n` blocks from `first` (unwritten blocks read as zeros).
    fn read(&mut self, volume: &str, first: u64, n: u64) -> Result<Vec<Self::Data>, StoreError>;
    /// Write consecutive blocks from `first` (read back at once; durable
    /// after the next `flush` of the volume).
    fn write(&mut self, volume: &str, first: u64, blocks: &[Self::Data]) -> Result<(), StoreError>;
    /// Make every write so far durable.
    fn flush(&mut self, volume: &str) -> Result<(), StoreError>;
    /// Forget `n` blocks from `first` (they read as zeros again) and free
    /// their space where the store can; durable on return.
    fn discard(&mut self, volume: &str, first: u64, n: u64) -> Result<(), StoreError>;
}

/// A block store in memory (the simulator's; data survives a simulated
/// crash, as a flushed disk would).
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    blocks: BTreeMap<(String, u64), u64>,
}

impl BlockStore for MemStore {
    type Data = u64;
    fn read(&mut self, volume: &str, first: u64, n: u64) -> Result<Vec<u64>, StoreError> {
        Ok((first..first + n)
            .map(|b| {
                self.blocks
                    .get(&(volume.to_string(), b))
                    .copied()
                    .unwrap_or(0)
            })
            .collect())
    }
    fn write(&mut self, volume: &str, first: u64, blocks: &[u64]) -> Result<(), StoreError> {
        for (i, d) in blocks.iter().enumerate() {
            self.blocks
                .insert((volume.to_string(), first + i as u64), *d);
        }
        Ok(())
    }
    fn flush(&mut self, _volume: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn discard(&mut self, volume: &str, first: u64, n: u64) -> Result<(), StoreError> {
        let v = volume.to_string();
        self.blocks
            .retain(|(vol, b), _| *vol != v || *b < first || *b >= first + n);
        Ok(())
    }
}

/// A replica's metadata: everything but block contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaMeta {
    /// Highest epoch seen per volume.
    pub fences: BTreeMap<String, Epoch>,
    /// Version of every written block, per volume.
    pub versions: BTreeMap<String, BTreeMap<u64, Version>>,
    /// This node's copy of the override map.
    pub overrides: OverrideMap,
    /// The node's placement weight, fixed at its first start (a real node;
    /// changing it would move homes without moving data).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Per volume, per shard (its first block): the newest override-record
    /// version an install or a drop of that shard named. A drop older than
    /// the guard drops nothing (see `Request::Drop`).
    #[serde(default)]
    pub guards: BTreeMap<String, BTreeMap<u64, Version>>,
    /// Per volume, the epoch of the newest snapshot commit taken (see the
    /// module doc).
    #[serde(default)]
    pub floors: BTreeMap<String, Epoch>,
}

/// One change to [`ReplicaMeta`], as journaled by a real node (appending
/// these is O(change), unlike rewriting the whole metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Delta {
    Fence {
        volume: String,
        epoch: Epoch,
    },
    /// Blocks `first..first + n` now carry `version`.
    Versions {
        volume: String,
        first: u64,
        n: u64,
        version: Version,
    },
    Override {
        key: ShardKey,
        record: OverrideRecord,
    },
    Weight(f64),
    /// The guard of the shard starting at `first` rose to `version`.
    Guard {
        volume: String,
        first: u64,
        version: Version,
    },
    /// Blocks `first..first + n` were dropped (rebalancing moved them away).
    Dropped {
        volume: String,
        first: u64,
        n: u64,
    },
    /// The volume's floor rose to `epoch`: its records older than that
    /// went (a snapshot's records follow as `Override`s).
    Floor {
        volume: String,
        epoch: Epoch,
    },
}

impl ReplicaMeta {
    /// Apply one journaled change.
    pub fn apply(&mut self, d: &Delta) {
        match d {
            Delta::Fence { volume, epoch } => {
                let f = self.fences.entry(volume.clone()).or_default();
                *f = (*f).max(*epoch);
            }
            Delta::Versions {
                volume,
                first,
                n,
                version,
            } => {
                let m = self.versions.entry(volume.clone()).or_default();
                for b in *first..first + n {
                    m.insert(b, *version);
                }
            }
            Delta::Override { key, record } => {
                self.overrides.merge(key, record);
            }
            Delta::Weight(w) => self.weight = Some(*w),
            Delta::Guard {
                volume,
                first,
                version,
            } => {
                let g = self.guards.entry(volume.clone()).or_default();
                let e = g.entry(*first).or_default();
                *e = (*e).max(*version);
            }
            Delta::Floor { volume, epoch } => {
                let f = self.floors.entry(volume.clone()).or_default();
                *f = (*f).max(*epoch);
                let f = *f;
                self.overrides.drop_older(volume, f);
            }
            Delta::Dropped { volume, first, n } => {
                if let Some(m) = self.versions.get_mut(volume) {
                    let doomed: Vec<u64> = m.range(first..&(first + n)).map(|(b, _)| *b).collect();
                    for b in doomed {
                        m.remove(&b);
                    }
                }
            }
        }
    }

    /// The guard of the shard starting at block `first` of `volume`.
    pub fn guard(&self, volume: &str, first: u64) -> Version {
        self.guards
            .get(volume)
            .and_then(|g| g.get(&first))
            .copied()
            .unwrap_or_default()
    }
}

/// One node's replica of every volume it holds blocks of.
pub struct ReplicaCore<S: BlockStore> {
    pub meta: ReplicaMeta,
    pub store: S,
    /// Requests refused because of an older epoch (for tests and status).
    pub fenced_refusals: u64,
    /// When `Some`, every change to `meta` is also appended here (a real
    /// node drains it into its metadata journal after each request).
    pub journal: Option<Vec<Delta>>,
    /// Volumes written since the last `sync`.
    unsynced: std::collections::BTreeSet<String>,
}

impl<S: BlockStore> ReplicaCore<S> {
    pub fn new(store: S, meta: ReplicaMeta) -> ReplicaCore<S> {
        ReplicaCore {
            meta,
            store,
            fenced_refusals: 0,
            journal: None,
            unsynced: Default::default(),
        }
    }

    /// Make the blocks written so far durable (the store's flush of each
    /// volume written since the last sync).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        while let Some(v) = self.unsynced.pop_first() {
            if let Err(e) = self.store.flush(&v) {
                self.unsynced.insert(v);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn fence(&self, volume: &str) -> Epoch {
        self.meta.fences.get(volume).copied().unwrap_or_default()
    }

    pub fn version(&self, volume: &str, block: u64) -> Version {
        self.meta
            .versions
            .get(volume)
            .and_then(|m| m.get(&block))
            .copied()
            .unwrap_or_default()
    }

    fn note(&mut self, d: Delta) {
        if let Some(j) = self.journal.as_mut() {
            j.push(d);
        }
    }

    /// The volume's floor (see the module doc).
    pub fn floor(&self, volume: &str) -> Epoch {
        self.meta.floors.get(volume).copied().unwrap_or_default()
    }

    fn raise_floor(&mut self, volume: &str, epoch: Epoch) -> bool {
        if epoch <= self.floor(volume) {
            return false;
        }
        let d = Delta::Floor {
            volume: volume.to_string(),
            epoch,
        };
        self.meta.apply(&d);
        self.note(d);
        true
    }

    /// Merge one record (`floored`: refused when older than the volume's
    /// floor); whether it changed the map.
    fn merge_record(&mut self, key: &ShardKey, rec: &OverrideRecord, floored: bool) -> bool {
        if floored && rec.version.epoch < self.floor(&key.volume) {
            return false;
        }
        if !self.meta.overrides.merge(key, rec) {
            return false;
        }
        self.note(Delta::Override {
            key: key.clone(),
            record: rec.clone(),
        });
        true
    }

    /// Merge override records learnt through gossip, which carries the
    /// floors they were published under (`floors`: per volume, the highest
    /// floor among the publishers; `m`'s records older than it come only
    /// from publishers at it). A higher floor is taken with its snapshot;
    /// records older than this replica's floor are refused unless gossip
    /// is at that floor too. Returns how many records and floors changed.
    pub fn merge_gossip(&mut self, floors: &BTreeMap<String, Epoch>, m: &OverrideMap) -> usize {
        let mut n = 0;
        for (v, f) in floors {
            n += usize::from(self.raise_floor(v, *f));
        }
        for (k, r) in m.iter() {
            let at_floor =
                floors.get(&k.volume).copied().unwrap_or_default() >= self.floor(&k.volume);
            n += usize::from(self.merge_record(k, r, !at_floor));
        }
        n
    }

    /// Whether `req` changes metadata that must be durable before answering.
    pub fn mutates_meta(req: &Request<S::Data>) -> bool {
        !matches!(
            req,
            Request::Read { .. } | Request::Fetch { .. } | Request::Check { .. }
        )
    }

    /// Apply one request and answer it.
    pub fn handle(&mut self, req: Request<S::Data>) -> Response<S::Data> {
        let volume = req.volume().to_string();
        let epoch = req.epoch();
        // a floor from gossip is a newer attacher's snapshot: below it, an
        // attacher is as fenced as below the fence
        let current = self.fence(&volume).max(self.floor(&volume));
        if epoch < current {
            self.fenced_refusals += 1;
            return Response::Fenced { current };
        }
        if epoch > current {
            self.meta.fences.insert(volume.clone(), epoch);
            self.note(Delta::Fence {
                volume: volume.clone(),
                epoch,
            });
        }
        match self.apply(&volume, req) {
            Ok(r) => r,
            Err(e) => Response::Failed {
                reason: e.to_string(),
            },
        }
    }

    fn apply(
        &mut self,
        volume: &str,
        req: Request<S::Data>,
    ) -> Result<Response<S::Data>, StoreError> {
        Ok(match req {
            Request::Fence { .. } => Response::FenceOk {
                overrides: self
                    .meta
                    .overrides
                    .of_volume(volume)
                    .map(|(k, r)| (k.clone(), r.clone()))
                    .collect(),
                floor: self.floor(volume),
            },
            Request::Write {
                first_block,
                version,
                blocks,
                ..
            } => {
                let entries = blocks
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| (first_block + i as u64, version, d))
                    .collect();
                self.merge_blocks(volume, entries)?;
                Response::Ok
            }
            Request::Install { entries, guard, .. } => {
                if let Some((first, version)) = guard {
                    self.raise_guard(volume, first, version);
                }
                self.merge_blocks(volume, entries)?;
                Response::Ok
            }
            Request::Drop {
                first_block,
                n_blocks,
                record,
                ..
            } => {
                if record > self.meta.guard(volume, first_block) {
                    self.raise_guard(volume, first_block, record);
                    self.store.discard(volume, first_block, n_blocks)?;
                    let d = Delta::Dropped {
                        volume: volume.to_string(),
                        first: first_block,
                        n: n_blocks,
                    };
                    self.meta.apply(&d);
                    self.note(d);
                }
                Response::Ok
            }
            Request::Read {
                first_block,
                n_blocks,
                ..
            } => {
                let blocks = self.store.read(volume, first_block, n_blocks)?;
                let versions = (first_block..first_block + n_blocks)
                    .map(|b| self.version(volume, b))
                    .collect();
                Response::Data { versions, blocks }
            }
            Request::Fetch {
                first_block,
                n_blocks,
                ..
            } => {
                let written: Vec<(u64, Version)> = self
                    .meta
                    .versions
                    .get(volume)
                    .map(|m| {
                        m.range(first_block..first_block + n_blocks)
                            .map(|(b, v)| (*b, *v))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut entries = Vec::with_capacity(written.len());
                for (b, v) in written {
                    let d = self.store.read(volume, b, 1)?.pop().expect("one block");
                    entries.push((b, v, d));
                }
                Response::Blocks { entries }
            }
            Request::Commit {
                epoch,
                key,
                record,
                carry,
                snapshot,
                ..
            } => {
                if snapshot {
                    self.raise_floor(volume, epoch);
                }
                for (key, record) in carry.into_iter().chain([(key, record)]) {
                    if key.volume == volume {
                        self.merge_record(&key, &record, !snapshot);
                    }
                }
                Response::Ok
            }
            Request::Flush { .. } => {
                self.store.flush(volume)?;
                Response::Ok
            }
            Request::Check { .. } => Response::Ok,
            Request::Held {
                blocks_per_shard, ..
            } => Response::Held {
                shards: self.held(volume, blocks_per_shard),
            },
        })
    }

    /// `(shard, newest block version)` of every shard of `volume` (cut at
    /// `bps` blocks) holding a written block here, by shard.
    pub fn held(&self, volume: &str, bps: u64) -> Vec<(u64, Version)> {
        let mut out: Vec<(u64, Version)> = Vec::new();
        for (b, v) in self.meta.versions.get(volume).into_iter().flatten() {
            let s = b / bps.max(1);
            match out.last_mut() {
                Some((last, newest)) if *last == s => *newest = (*newest).max(*v),
                _ => out.push((s, *v)),
            }
        }
        out
    }

    fn raise_guard(&mut self, volume: &str, first: u64, version: Version) {
        if version > self.meta.guard(volume, first) {
            let d = Delta::Guard {
                volume: volume.to_string(),
                first,
                version,
            };
            self.meta.apply(&d);
            self.note(d);
        }
    }

    /// Write every entry newer than what is held, in runs of consecutive blocks.
    fn merge_blocks(
        &mut self,
        volume: &str,
        entries: Vec<BlockEntry<S::Data>>,
    ) -> Result<(), StoreError> {
        let newer: Vec<BlockEntry<S::Data>> = entries
            .into_iter()
            .filter(|(b, v, _)| *v > self.version(volume, *b))
            .collect();
        let mut i = 0;
        while i < newer.len() {
            let mut j = i + 1;
            while j < newer.len() && newer[j].0 == newer[j - 1].0 + 1 {
                j += 1;
            }
            let run: Vec<S::Data> = newer[i..j].iter().map(|e| e.2.clone()).collect();
            self.unsynced.insert(volume.to_string());
            self.store.write(volume, newer[i].0, &run)?;
            i = j;
        }
        let vm = self.meta.versions.entry(volume.to_string()).or_default();
        for (b, v, _) in &newer {
            vm.insert(*b, *v);
        }
        if self.journal.is_some() {
            let mut i = 0;
            while i < newer.len() {
                let mut j = i + 1;
                while j < newer.len()
                    && newer[j].0 == newer[j - 1].0 + 1
                    && newer[j].1 == newer[i].1
                {
                    j += 1;
                }
                self.note(Delta::Versions {
                    volume: volume.to_string(),
                    first: newer[i].0,
                    n: (j - i) as u64,
                    version: newer[i].1,
                });
                i = j;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(term: u64) -> Epoch {
        Epoch { term, owner: 1 }
    }
    fn ver(term: u64, seq: u64) -> Version {
        Version {
            epoch: ep(term),
            seq,
        }
    }
    fn write(term: u64, seq: u64, block: u64, d: u64) -> Request<u64> {
        Request::Write {
            volume: "v".into(),
            epoch: ep(term),
            first_block: block,
            version: ver(term, seq),
            blocks: vec![d],
        }
    }
    #[test]
    fn older_epoch_is_refused_and_changes_nothing() {
        let mut r = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        assert_eq!(r.handle(write(1, 1, 0, 11)), Response::Ok);
        assert_eq!(
            r.handle(Request::Fence {
                volume: "v".into(),
                epoch: ep(2)
            }),
            Response::FenceOk {
                overrides: vec![],
                floor: Epoch::ZERO
            }
        );
        assert_eq!(
            r.handle(write(1, 2, 0, 12)),
            Response::Fenced { current: ep(2) }
        );
        assert_eq!(r.fenced_refusals, 1);
        let got = r.handle(Request::Read {
            volume: "v".into(),
            epoch: ep(2),
            first_block: 0,
            n_blocks: 2,
        });
        assert_eq!(
            got,
            Response::Data {
                versions: vec![ver(1, 1), Version::ZERO],
                blocks: vec![11, 0]
            }
        );
        // other volumes are not fenced
        let mut w = write(1, 3, 0, 13);
        if let Request::Write { volume, .. } = &mut w {
            *volume = "other".into();
        }
        assert_eq!(r.handle(w), Response::Ok);
    }

    #[test]
    fn duplicates_and_reordered_writes_keep_the_newest() {
        let mut r = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        r.handle(write(1, 5, 3, 50));
        r.handle(write(1, 4, 3, 40)); // late older copy
        r.handle(write(1, 5, 3, 50)); // duplicate
        assert_eq!(r.version("v", 3), ver(1, 5));
        assert_eq!(r.store.read("v", 3, 1).unwrap(), vec![50]);
        // a newer epoch's write raises the fence
        r.handle(write(2, 1, 3, 60));
        assert_eq!(r.fence("v"), ep(2));
        assert_eq!(
            r.handle(write(1, 6, 4, 70)),
            Response::Fenced { current: ep(2) }
        );
    }

    #[test]
    fn fetch_install_copies_only_newer_blocks() {
        let mut a = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        let mut b = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        a.handle(write(1, 1, 0, 10));
        a.handle(write(1, 2, 1, 20));
        a.handle(write(1, 3, 9, 90)); // outside the shard
        b.handle(write(1, 4, 1, 21)); // newer than a's block 1
        let Response::Blocks { entries } = a.handle(Request::Fetch {
            volume: "v".into(),
            epoch: ep(1),
            first_block: 0,
            n_blocks: 4,
        }) else {
            panic!("fetch")
        };
        assert_eq!(entries.len(), 2);
        b.handle(Request::Install {
            volume: "v".into(),
            epoch: ep(1),
            entries,
            guard: None,
        });
        assert_eq!(b.store.read("v", 0, 2).unwrap(), vec![10, 21]);
        assert_eq!(b.version("v", 0), ver(1, 1));
    }

    #[test]
    fn drop_forgets_the_shard_unless_a_newer_install_guards_it() {
        let mut r = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        let fill = |r: &mut ReplicaCore<MemStore>, seq| {
            let mut w = write(1, seq, 4, 0);
            if let Request::Write { blocks, .. } = &mut w {
                *blocks = vec![41, 42, 43, 44];
            }
            assert_eq!(r.handle(w), Response::Ok);
        };
        let drop = |record| Request::Drop {
            volume: "v".into(),
            epoch: ep(1),
            first_block: 4,
            n_blocks: 4,
            record,
        };
        fill(&mut r, 1);
        r.handle(write(1, 2, 8, 80)); // the next shard stays
        assert_eq!(r.handle(drop(ver(1, 5))), Response::Ok);
        assert_eq!(r.version("v", 5), Version::ZERO);
        assert_eq!(r.store.read("v", 4, 1).unwrap(), vec![0]);
        assert_eq!(r.version("v", 8), ver(1, 2));
        // moved back here (install guarded by record 7), then the first
        // drop's late duplicate arrives: nothing is lost
        r.handle(Request::Install {
            volume: "v".into(),
            epoch: ep(1),
            entries: vec![(4, ver(1, 3), 9)],
            guard: Some((4, ver(1, 7))),
        });
        assert_eq!(r.handle(drop(ver(1, 5))), Response::Ok);
        assert_eq!(r.version("v", 4), ver(1, 3));
        assert_eq!(r.store.read("v", 4, 1).unwrap(), vec![9]);
        // a newer drop does drop it
        r.handle(drop(ver(1, 8)));
        assert_eq!(r.version("v", 4), Version::ZERO);
    }

    #[test]
    fn held_lists_shards_with_their_newest_block_version() {
        let mut r = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        r.handle(write(1, 1, 0, 5)); // shard 0
        r.handle(write(1, 3, 1, 6)); // shard 0, newer
        r.handle(write(1, 2, 9, 7)); // shard 2
        let held = |r: &mut ReplicaCore<MemStore>| match r.handle(Request::Held {
            volume: "v".into(),
            epoch: ep(1),
            blocks_per_shard: 4,
        }) {
            Response::Held { shards } => shards,
            other => panic!("{other:?}"),
        };
        assert_eq!(held(&mut r), vec![(0, ver(1, 3)), (2, ver(1, 2))]);
        r.handle(Request::Drop {
            volume: "v".into(),
            epoch: ep(1),
            first_block: 8,
            n_blocks: 4,
            record: ver(1, 9),
        });
        assert_eq!(held(&mut r), vec![(0, ver(1, 3))]);
        // an older attacher is refused
        r.handle(Request::Fence {
            volume: "v".into(),
            epoch: ep(2),
        });
        let old = r.handle(Request::Held {
            volume: "v".into(),
            epoch: ep(1),
            blocks_per_shard: 4,
        });
        assert!(matches!(old, Response::Fenced { .. }), "{old:?}");
    }

    #[test]
    fn journal_replays_to_the_same_meta() {
        let mut r = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        r.journal = Some(Vec::new());
        r.handle(write(1, 1, 0, 10));
        let mut w = write(1, 2, 1, 0);
        if let Request::Write { blocks, .. } = &mut w {
            *blocks = vec![1, 2, 3];
        }
        r.handle(w);
        r.handle(write(2, 1, 2, 20));
        r.handle(write(1, 9, 5, 20)); // refused: changes nothing
        r.handle(Request::Install {
            volume: "v".into(),
            epoch: ep(2),
            entries: vec![(7, ver(2, 5), 1), (8, ver(2, 6), 2), (0, ver(1, 1), 9)],
            guard: Some((4, ver(2, 1))),
        });
        r.handle(Request::Drop {
            volume: "v".into(),
            epoch: ep(2),
            first_block: 7,
            n_blocks: 2,
            record: ver(2, 3),
        });
        let mut m = OverrideMap::new();
        let rec = OverrideRecord::new(ver(2, 1), vec!["x".into()]);
        m.merge(&ShardKey::new("v", 0), &rec);
        let floors = BTreeMap::new();
        assert_eq!(r.merge_gossip(&floors, &m), 1);
        assert_eq!(r.merge_gossip(&floors, &m), 0);
        let mut replay = ReplicaMeta::default();
        for d in r.journal.as_ref().unwrap() {
            replay.apply(d);
        }
        assert_eq!(replay, r.meta);
    }

    #[test]
    fn commit_merges_and_fence_returns_the_volume_records() {
        let mut r = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        let rec = OverrideRecord::new(ver(1, 1), vec!["a".into()]);
        let key = ShardKey::new("v", 2);
        r.handle(Request::Commit {
            volume: "v".into(),
            epoch: ep(1),
            key: key.clone(),
            record: rec.clone(),
            carry: vec![],
            snapshot: false,
        });
        let other = ShardKey::new("w", 2);
        r.handle(Request::Commit {
            volume: "w".into(),
            epoch: ep(1),
            key: other,
            record: rec.clone(),
            carry: vec![],
            snapshot: false,
        });
        assert_eq!(
            r.handle(Request::Fence {
                volume: "v".into(),
                epoch: ep(3)
            }),
            Response::FenceOk {
                overrides: vec![(key.clone(), rec.clone())],
                floor: Epoch::ZERO
            }
        );
    }

    /// A snapshot commit raises the floor: the volume's records older than
    /// its epoch are replaced by its carry; older records come back neither
    /// through gossip (unless gossip is at that floor) nor through a commit.
    #[test]
    fn a_snapshot_replaces_older_records_and_keeps_them_out() {
        let mut r = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        r.journal = Some(Vec::new());
        let k = |s: u64| ShardKey::new("v", s);
        let uncommitted = OverrideRecord::new(ver(2, 5), vec!["x".into()]);
        let kept = OverrideRecord::new(ver(1, 1), vec!["a".into()]);
        for (s, rec) in [(1, &uncommitted), (2, &kept)] {
            let req = Request::Commit {
                volume: "v".into(),
                epoch: ep(2),
                key: k(s),
                record: rec.clone(),
                carry: vec![],
                snapshot: false,
            };
            assert_eq!(r.handle(req), Response::Ok);
        }
        let other = ShardKey::new("w", 1);
        r.handle(Request::Commit {
            volume: "w".into(),
            epoch: ep(2),
            key: other.clone(),
            record: uncommitted.clone(),
            carry: vec![],
            snapshot: false,
        });
        // attacher term 3 knew shard 2's record, not shard 1's
        let basis = ShardKey::new("v", u64::MAX);
        let mut joint = OverrideRecord::new(ver(3, 1), vec!["a".into(), "b".into()]);
        joint.joint = vec!["a".into()];
        let snap = Request::Commit {
            volume: "v".into(),
            epoch: ep(3),
            key: basis.clone(),
            record: joint.clone(),
            carry: vec![(k(2), kept.clone()), (ShardKey::new("w", 7), kept.clone())],
            snapshot: true,
        };
        assert_eq!(r.handle(snap), Response::Ok);
        assert_eq!(r.floor("v"), ep(3));
        assert_eq!(r.meta.overrides.get(&k(1)), None, "not in the snapshot");
        assert_eq!(r.meta.overrides.get(&k(2)), Some(&kept));
        assert_eq!(r.meta.overrides.get(&basis), Some(&joint));
        assert_eq!(r.meta.overrides.get(&ShardKey::new("w", 7)), None);
        assert_eq!(
            r.meta.overrides.get(&other),
            Some(&uncommitted),
            "another volume"
        );
        // gossip from a node behind brings nothing older back
        let mut g = OverrideMap::new();
        g.merge(&k(1), &uncommitted);
        let behind = BTreeMap::from([("v".to_string(), ep(2))]);
        assert_eq!(r.merge_gossip(&behind, &g), 0);
        assert_eq!(r.meta.overrides.get(&k(1)), None);
        // nor does an attacher older than the floor
        let late = Request::Commit {
            volume: "v".into(),
            epoch: ep(2),
            key: k(1),
            record: uncommitted.clone(),
            carry: vec![],
            snapshot: false,
        };
        assert_eq!(r.handle(late), Response::Fenced { current: ep(3) });
        // a node taking a higher floor from gossip takes that snapshot
        let mut s = ReplicaCore::new(MemStore::default(), ReplicaMeta::default());
        s.merge_gossip(&BTreeMap::new(), &g);
        assert_eq!(s.meta.overrides.get(&k(1)), Some(&uncommitted));
        let at3 = BTreeMap::from([("v".to_string(), ep(3))]);
        assert!(s.merge_gossip(&at3, &r.meta.overrides) > 0);
        assert_eq!(s.meta.overrides.get(&k(1)), None);
        assert_eq!(s.meta.overrides.get(&k(2)), Some(&kept));
        // the journal replays to the same state
        let mut replay = ReplicaMeta::default();
        for d in r.journal.as_ref().unwrap() {
            replay.apply(d);
        }
        assert_eq!(replay, r.meta);
    }
}
