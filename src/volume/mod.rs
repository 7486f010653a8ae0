//! Volume Composer: the LBA→shard table, request splitting, per-slot access
//! statistics and the volume I/O handle (thin provisioning).
pub mod handle;
pub mod split;
pub mod stats;
pub mod table;
