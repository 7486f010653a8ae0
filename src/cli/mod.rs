//! Command-line front end: one file per command group, `anyhow` at this edge.
pub mod pool;
pub mod trace;
pub mod volume;
