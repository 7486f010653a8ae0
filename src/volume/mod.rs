//! Volume Composer: the LBA→shard table and request splitting.
pub mod split;
pub mod table;
