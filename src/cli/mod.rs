//! Command-line subcommands (argument parsing and dispatch only; `anyhow` at
//! this edge, typed errors below it). Mounted by `main.rs` as `mod cli;`.

pub mod trace;
