//! Block stores for a real node's replica: [`PoolStore`] keeps a node's
//! copies of each cluster volume in one thin local volume of its shardblk
//! pool (the engine's Volume API); [`MemBytesStore`] keeps them in memory
//! (tests, benches). Plus the durable replica metadata file.
//!
//! Contract:
//! - `PoolStore::write` writes the blocks; `flush` makes every write of
//!   the volume so far durable with their mappings (the pool's commit). The
//!   replica flushes before it persists metadata and answers (one commit
//!   for a batch of writes), so it acknowledges nothing a crash could lose.
//! - A cluster volume `V` is the local volume `V` of size
//!   `CLUSTER_LOCAL_VOLUME_BYTES`, created on its first write; reads of a
//!   volume never written here are zeros.
//! - [`save_meta`] replaces the metadata file atomically (temporary file,
//!   fsync, rename, fsync of the directory); [`load_meta`] of a missing file
//!   is an empty replica.
//! - [`MetaJournal`] keeps the metadata as that snapshot plus a journal
//!   (`PATH.journal`, one JSON [`Delta`] per line, fdatasync'd before the
//!   answer leaves): O(change) per request. Opening replays the journal over
//!   the snapshot; a torn last line (a crash mid-append, never answered) is
//!   dropped, a bad line before the end is an error. Past
//!   `CLUSTER_META_JOURNAL_MAX_BYTES` the state is folded into a new
//!   snapshot and the journal emptied.

use super::replica::{BlockStore, Delta, ReplicaMeta, StoreError};
use crate::constants::{
    CLUSTER_BLOCK_BYTES, CLUSTER_LOCAL_VOLUME_BYTES, CLUSTER_META_JOURNAL_MAX_BYTES,
    SHARD_SIZE_DEFAULT_BYTES,
};
use crate::io::{AlignedBuf, IoEngine};
use crate::shard::policy::TierPolicy;
use crate::shard::pool::{Pool, PoolError};
use crate::volume::handle::Volume;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

const BS: usize = CLUSTER_BLOCK_BYTES as usize;

fn zero_block() -> Bytes {
    Bytes::from(vec![0u8; BS])
}

/// Copies held in memory.
#[derive(Default)]
pub struct MemBytesStore {
    blocks: BTreeMap<(String, u64), Bytes>,
}

impl BlockStore for MemBytesStore {
    type Data = Bytes;
    fn read(&mut self, volume: &str, first: u64, n: u64) -> Result<Vec<Bytes>, StoreError> {
        Ok((first..first + n)
            .map(|b| {
                self.blocks
                    .get(&(volume.to_string(), b))
                    .cloned()
                    .unwrap_or_else(zero_block)
            })
            .collect())
    }
    fn write(&mut self, volume: &str, first: u64, blocks: &[Bytes]) -> Result<(), StoreError> {
        for (i, b) in blocks.iter().enumerate() {
            self.blocks
                .insert((volume.to_string(), first + i as u64), b.clone());
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

/// Copies held in a local shardblk pool. Lives on one thread (its engine).
pub struct PoolStore {
    pool: Pool,
    eng: Box<dyn IoEngine>,
    vols: HashMap<String, Volume>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl PoolStore {
    pub fn new(pool: Pool) -> PoolStore {
        let eng = pool.engine();
        PoolStore {
            pool,
            eng,
            vols: HashMap::new(),
        }
    }

    fn volume(&mut self, name: &str, create: bool) -> Result<Option<Volume>, StoreError> {
        if let Some(v) = self.vols.get(name) {
            return Ok(Some(v.clone()));
        }
        let v = match self.pool.volume(name) {
            Ok(v) => v,
            Err(PoolError::NoVolume(_)) if create => self
                .pool
                .create_volume(
                    name,
                    CLUSTER_LOCAL_VOLUME_BYTES,
                    SHARD_SIZE_DEFAULT_BYTES,
                    TierPolicy::default(),
                )
                .map_err(err)?,
            Err(PoolError::NoVolume(_)) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        self.vols.insert(name.to_string(), v.clone());
        Ok(Some(v))
    }
}

impl BlockStore for PoolStore {
    type Data = Bytes;
    fn read(&mut self, volume: &str, first: u64, n: u64) -> Result<Vec<Bytes>, StoreError> {
        let Some(v) = self.volume(volume, false)? else {
            return Ok((0..n).map(|_| zero_block()).collect());
        };
        let mut buf = AlignedBuf::new(n as usize * BS);
        v.read(self.eng.as_mut(), first * BS as u64, &mut buf)
            .map_err(err)?;
        Ok(buf.chunks(BS).map(Bytes::copy_from_slice).collect())
    }
    fn write(&mut self, volume: &str, first: u64, blocks: &[Bytes]) -> Result<(), StoreError> {
        let v = self.volume(volume, true)?.expect("created");
        let mut buf = AlignedBuf::new(blocks.len() * BS);
        for (i, b) in blocks.iter().enumerate() {
            buf[i * BS..(i + 1) * BS].copy_from_slice(b);
        }
        v.write(self.eng.as_mut(), first * BS as u64, &buf)
            .map_err(err)
    }
    fn flush(&mut self, volume: &str) -> Result<(), StoreError> {
        match self.volume(volume, false)? {
            Some(v) => v.flush().map_err(err),
            None => Ok(()),
        }
    }
    /// Discards the range (whole local shards are unmapped and their
    /// extents freed; partial ones keep their bytes, which no version
    /// names any more) and commits.
    fn discard(&mut self, volume: &str, first: u64, n: u64) -> Result<(), StoreError> {
        let Some(v) = self.volume(volume, false)? else {
            return Ok(());
        };
        v.discard(first * BS as u64, n * BS as u64).map_err(err)?;
        v.flush().map_err(err)
    }
}

/// Replace the metadata file at `path` atomically and durably.
pub fn save_meta(path: &Path, meta: &ReplicaMeta) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(meta)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Load the metadata file at `path`; a missing file is an empty replica.
pub fn load_meta(path: &Path) -> std::io::Result<ReplicaMeta> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReplicaMeta::default()),
        Err(e) => Err(e),
    }
}

/// Snapshot plus append-only journal of a replica's metadata.
pub struct MetaJournal {
    snapshot: std::path::PathBuf,
    journal: std::path::PathBuf,
    file: std::fs::File,
    bytes: u64,
}

fn journal_path(snapshot: &Path) -> std::path::PathBuf {
    let mut s = snapshot.as_os_str().to_os_string();
    s.push(".journal");
    std::path::PathBuf::from(s)
}

fn bad(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl MetaJournal {
    /// Load snapshot and journal, fold them, and start a fresh journal.
    pub fn open(snapshot: &Path) -> std::io::Result<(MetaJournal, ReplicaMeta)> {
        let mut meta = load_meta(snapshot)?;
        let journal = journal_path(snapshot);
        match std::fs::read(&journal) {
            Ok(b) => {
                let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
                let last = lines.len() - 1; // after the final newline: "" or a torn line
                for (i, line) in lines.iter().enumerate() {
                    if line.is_empty() {
                        continue;
                    }
                    match serde_json::from_slice::<Delta>(line) {
                        Ok(d) => meta.apply(&d),
                        Err(_) if i == last => {} // torn tail: never answered
                        Err(e) => {
                            return Err(bad(format!("{}: line {}: {e}", journal.display(), i + 1)))
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        save_meta(snapshot, &meta)?;
        let file = std::fs::File::create(&journal)?;
        file.sync_all()?;
        Ok((
            MetaJournal {
                snapshot: snapshot.to_path_buf(),
                journal,
                file,
                bytes: 0,
            },
            meta,
        ))
    }

    /// Append `deltas` durably; fold into a snapshot of `meta` (which
    /// already includes them) when the journal is large.
    pub fn append(&mut self, meta: &ReplicaMeta, deltas: &[Delta]) -> std::io::Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for d in deltas {
            serde_json::to_writer(&mut buf, d).map_err(bad)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.bytes += buf.len() as u64;
        if self.bytes > CLUSTER_META_JOURNAL_MAX_BYTES {
            save_meta(&self.snapshot, meta)?;
            self.file = std::fs::File::create(&self.journal)?;
            self.file.sync_all()?;
            self.bytes = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::epoch::Epoch;

    #[test]
    fn meta_file_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.json");
        assert_eq!(load_meta(&p).unwrap(), ReplicaMeta::default());
        let mut m = ReplicaMeta::default();
        m.fences.insert("v".into(), Epoch { term: 4, owner: 2 });
        m.versions.entry("v".into()).or_default().insert(
            9,
            crate::cluster::epoch::Version {
                epoch: Epoch { term: 4, owner: 2 },
                seq: 1,
            },
        );
        m.overrides.merge(
            &crate::cluster::placement::ShardKey::new("v", 3),
            &crate::cluster::overrides::OverrideRecord {
                version: Default::default(),
                replicas: vec!["a".into()],
                joint: vec!["a".into(), "b".into()],
            },
        );
        save_meta(&p, &m).unwrap();
        assert_eq!(load_meta(&p).unwrap(), m);
        std::fs::write(&p, b"{garbage").unwrap();
        assert!(load_meta(&p).is_err());
    }

    #[test]
    fn journal_survives_reopen_and_a_torn_tail_but_not_a_bad_middle() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.json");
        let (mut j, mut meta) = MetaJournal::open(&p).unwrap();
        let ds = vec![
            Delta::Fence {
                volume: "v".into(),
                epoch: Epoch { term: 2, owner: 1 },
            },
            Delta::Weight(1.5),
        ];
        for d in &ds {
            meta.apply(d);
        }
        j.append(&meta, &ds).unwrap();
        drop(j);
        // a torn append after the last answered one
        let jp = journal_path(&p);
        let mut f = std::fs::OpenOptions::new().append(true).open(&jp).unwrap();
        f.write_all(b"{\"Weight\":7").unwrap();
        drop(f);
        let (j, got) = MetaJournal::open(&p).unwrap();
        assert_eq!(got, meta);
        drop(j);
        // reopening folded everything into the snapshot
        assert_eq!(load_meta(&p).unwrap(), meta);
        std::fs::write(&jp, b"garbage\n{\"Weight\":2.0}\n").unwrap();
        assert!(MetaJournal::open(&p).is_err());
    }
}
