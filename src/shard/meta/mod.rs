//! Persistent, crash-safe pool metadata (kernel-notes/engine.md "Metadata").
//!
//! Owns: the log record codec ([`codec`]), the per-device superblock
//! ([`superblock`]), the in-memory state that replay rebuilds ([`state`],
//! [`rangemap`]), the checkpoint encoding ([`checkpoint`]) and the durable
//! state machine over a region of the metadata device ([`log::MetaLog`]).
//!
//! Contract: pure logic over [`crate::io::BlockDev`]; every transfer is block
//! aligned in [`crate::io::AlignedBuf`]s. Everything read back is versioned and
//! checksummed (crc32c); torn or corrupt data is detected and reported, never
//! used. A record acknowledged by a completed `MetaLog::sync` survives any
//! crash; after a crash the state is the state after some prefix of the
//! appended records at least that long.

pub mod checkpoint;
pub mod codec;
pub mod log;
pub mod rangemap;
pub mod state;
pub mod superblock;

pub use codec::{DecodeError, Record};
pub use log::{Lsn, MetaError, MetaLog, MetaRegion, Recovery};
pub use rangemap::{Mapping, RangeMap};
pub use state::{MetaState, StateError, VolumeMeta};
pub use superblock::{
    read_superblock, write_superblocks, DeviceEntry, Superblock, SuperblockError, SuperblockRead,
};
