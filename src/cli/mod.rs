//! Command-line front end: one file per command group, `anyhow` at this edge.
pub mod cluster;
pub mod device;
pub mod pool;
pub mod stats;
pub mod trace;
pub mod volume;
