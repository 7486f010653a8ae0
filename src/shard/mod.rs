//! Shard Manager: extents on tier devices (allocator), the tier policy,
//! persistent crash-safe metadata, the pool that ties devices, metadata and
//! volumes together, shard lifecycle (migrate, split, merge) and the
//! background manager that applies the policy.
pub mod allocator;
pub mod devcheck;
pub mod lifecycle;
pub mod manager;
pub mod meta;
pub mod policy;
pub mod pool;
