//! shardblk: volumes composed on demand of shards on tiered media, served as
//! ublk block devices, with a learned prefetcher.
//!
//! See `../shared/DESIGN.md` for the parts and invariants and
//! `kernel-notes/engine.md` for the on-disk layout and the table protocols.

pub mod cli;
pub mod cluster;
pub mod constants;
pub mod device;
pub mod io;
pub mod prefetch;
pub mod shard;
pub mod threads;
pub mod trace;
pub mod units;
pub mod volume;
