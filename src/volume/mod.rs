//! Volume Composer: the LBA→shard table, request splitting and per-slot
//! access statistics.
pub mod split;
pub mod stats;
pub mod table;
