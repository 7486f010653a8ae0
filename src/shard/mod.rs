//! Shard Manager: extents on tier devices (allocator), the tier policy,
//! persistent crash-safe metadata, and the pool that ties devices, metadata
//! and volumes together.
pub mod allocator;
pub mod devcheck;
pub mod meta;
pub mod policy;
