//! Shard Manager: extents on tier devices, shard lifecycle, persistent metadata.
pub mod meta;
