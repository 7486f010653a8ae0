//! The shard protocol's messages, independent of transport: what an attacher
//! asks a replica and what the replica answers. The simulator carries them
//! as values; the wire codec (`wire`) frames them over TCP.
//!
//! Contract:
//! - Every request names the volume and carries the sender's attach epoch.
//!   A replica that has seen a newer epoch for that volume answers
//!   [`Response::Fenced`] and changes nothing; otherwise it raises its fence
//!   to the request's epoch (so one request from a new attacher is enough to
//!   shut the old one out of that replica).
//! - Data moves in whole replication blocks (`CLUSTER_BLOCK_BYTES`), each
//!   block with its own [`Version`]; `D` is one block's content.
//! - Requests are idempotent: a retransmitted or duplicated request changes
//!   nothing more than the first copy (writes apply only over older versions,
//!   fences and override records only move forward).

use super::epoch::{Epoch, Version};
use super::overrides::OverrideRecord;
use super::placement::ShardKey;
use serde::{Deserialize, Serialize};

/// A written block as moved by fetch and install: `(block, version, data)`.
pub type BlockEntry<D> = (u64, Version, D);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request<D> {
    /// Take the attachment of `volume` at `epoch`; answered with the
    /// replica's override records of the volume.
    Fence { volume: String, epoch: Epoch },
    /// Write consecutive blocks from `first_block`, all stamped `version`.
    Write {
        volume: String,
        epoch: Epoch,
        first_block: u64,
        version: Version,
        blocks: Vec<D>,
    },
    /// Read `n_blocks` blocks from `first_block`.
    Read {
        volume: String,
        epoch: Epoch,
        first_block: u64,
        n_blocks: u64,
    },
    /// Every written block in `[first_block, first_block + n_blocks)` (a
    /// shard), for re-replication or staging.
    Fetch {
        volume: String,
        epoch: Epoch,
        first_block: u64,
        n_blocks: u64,
    },
    /// Merge fetched blocks (each kept only over an older version).
    /// `guard`: `(first block of the shard, version of the override record
    /// the installer will commit)`; a later-arriving [`Request::Drop`] of
    /// that shard with an older record version then drops nothing.
    Install {
        volume: String,
        epoch: Epoch,
        entries: Vec<BlockEntry<D>>,
        #[serde(default)]
        guard: Option<(u64, Version)>,
    },
    /// Drop this node's copy of the shard `[first_block, first_block +
    /// n_blocks)`: it left the shard's set with the override record of
    /// version `record`. Ignored (answered `Ok`) when an install guarded by a
    /// record at least as new came first.
    Drop {
        volume: String,
        epoch: Epoch,
        first_block: u64,
        n_blocks: u64,
        record: Version,
    },
    /// Record where a shard's current copies are. `carry`: more records of
    /// the volume merged with it. With `snapshot`, `record` and `carry` are
    /// every record of the volume the attacher knows (its write-back after
    /// attaching, a member-configuration change): the replica's *floor* of
    /// the volume rises to `epoch` and its records older than that are
    /// replaced by these (see `replica` and `attacher`).
    Commit {
        volume: String,
        epoch: Epoch,
        key: ShardKey,
        record: OverrideRecord,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carry: Vec<(ShardKey, OverrideRecord)>,
        #[serde(default)]
        snapshot: bool,
    },
    /// Make every applied write durable.
    Flush { volume: String, epoch: Epoch },
    /// Nothing but the epoch check: answered `Ok` unless a newer attacher
    /// fenced this replica. An attacher's reads wait for a quorum of these
    /// sent after they started (no newer attacher acknowledged anything
    /// before the read began; see `attacher`).
    Check { volume: String, epoch: Epoch },
    /// Which shards (of `blocks_per_shard` blocks) of `volume` this replica
    /// holds written blocks of, each with its newest block version: the
    /// attacher's orphan scan. Answered with [`Response::Held`].
    Held {
        volume: String,
        epoch: Epoch,
        blocks_per_shard: u64,
    },
}

impl<D> Request<D> {
    pub fn volume(&self) -> &str {
        match self {
            Request::Fence { volume, .. }
            | Request::Write { volume, .. }
            | Request::Read { volume, .. }
            | Request::Fetch { volume, .. }
            | Request::Install { volume, .. }
            | Request::Commit { volume, .. }
            | Request::Drop { volume, .. }
            | Request::Flush { volume, .. }
            | Request::Check { volume, .. }
            | Request::Held { volume, .. } => volume,
        }
    }
    pub fn epoch(&self) -> Epoch {
        match self {
            Request::Fence { epoch, .. }
            | Request::Write { epoch, .. }
            | Request::Read { epoch, .. }
            | Request::Fetch { epoch, .. }
            | Request::Install { epoch, .. }
            | Request::Commit { epoch, .. }
            | Request::Drop { epoch, .. }
            | Request::Flush { epoch, .. }
            | Request::Check { epoch, .. }
            | Request::Held { epoch, .. } => *epoch,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response<D> {
    /// Fence taken; the replica's override records of the volume and its
    /// floor for the volume (the epoch of the newest snapshot it took).
    FenceOk {
        overrides: Vec<(ShardKey, OverrideRecord)>,
        #[serde(default)]
        floor: Epoch,
    },
    /// Write, install, commit, drop or flush applied; check passed.
    Ok,
    /// Read result: one version and one block per block asked.
    Data {
        versions: Vec<Version>,
        blocks: Vec<D>,
    },
    /// Fetch result: the written blocks of the range.
    Blocks { entries: Vec<BlockEntry<D>> },
    /// Refused: the replica has seen `current`, newer than the request's epoch.
    Fenced { current: Epoch },
    /// The replica could not do it (storage error, bad range).
    Failed { reason: String },
    /// Held result: `(shard, newest version of its blocks here)`, by shard.
    Held { shards: Vec<(u64, Version)> },
}

impl<D> Request<D> {
    /// The same request with every block mapped through `f` (in order).
    pub fn map_blocks<E>(self, mut f: impl FnMut(D) -> E) -> Request<E> {
        match self {
            Request::Fence { volume, epoch } => Request::Fence { volume, epoch },
            Request::Write {
                volume,
                epoch,
                first_block,
                version,
                blocks,
            } => Request::Write {
                volume,
                epoch,
                first_block,
                version,
                blocks: blocks.into_iter().map(f).collect(),
            },
            Request::Read {
                volume,
                epoch,
                first_block,
                n_blocks,
            } => Request::Read {
                volume,
                epoch,
                first_block,
                n_blocks,
            },
            Request::Fetch {
                volume,
                epoch,
                first_block,
                n_blocks,
            } => Request::Fetch {
                volume,
                epoch,
                first_block,
                n_blocks,
            },
            Request::Install {
                volume,
                epoch,
                entries,
                guard,
            } => Request::Install {
                volume,
                epoch,
                entries: entries.into_iter().map(|(b, v, d)| (b, v, f(d))).collect(),
                guard,
            },
            Request::Drop {
                volume,
                epoch,
                first_block,
                n_blocks,
                record,
            } => Request::Drop {
                volume,
                epoch,
                first_block,
                n_blocks,
                record,
            },
            Request::Commit {
                volume,
                epoch,
                key,
                record,
                carry,
                snapshot,
            } => Request::Commit {
                volume,
                epoch,
                key,
                record,
                carry,
                snapshot,
            },
            Request::Flush { volume, epoch } => Request::Flush { volume, epoch },
            Request::Check { volume, epoch } => Request::Check { volume, epoch },
            Request::Held {
                volume,
                epoch,
                blocks_per_shard,
            } => Request::Held {
                volume,
                epoch,
                blocks_per_shard,
            },
        }
    }
}

impl<D> Response<D> {
    /// The same response with every block mapped through `f` (in order).
    pub fn map_blocks<E>(self, mut f: impl FnMut(D) -> E) -> Response<E> {
        match self {
            Response::FenceOk { overrides, floor } => Response::FenceOk { overrides, floor },
            Response::Ok => Response::Ok,
            Response::Data { versions, blocks } => Response::Data {
                versions,
                blocks: blocks.into_iter().map(f).collect(),
            },
            Response::Blocks { entries } => Response::Blocks {
                entries: entries.into_iter().map(|(b, v, d)| (b, v, f(d))).collect(),
            },
            Response::Fenced { current } => Response::Fenced { current },
            Response::Failed { reason } => Response::Failed { reason },
            Response::Held { shards } => Response::Held { shards },
        }
    }
}
