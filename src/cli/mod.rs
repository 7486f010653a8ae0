//! Command-line front end: one file per command group, `anyhow` at this edge.
//!
//! The `shardblk` executable carries no libtorch, so every command starts
//! fast. A command that needs the LSTM (`add`/`recover` with `--prefetch
//! lstm`, `trace train`, `trace eval` of `lstm`) is handed, arguments
//! unchanged, to `shardblk-lstm` next to it: the same command line with the
//! LSTM backend (`crates/shardblk-lstm`) registered.
pub mod cluster;
pub mod device;
pub mod pool;
pub mod stats;
pub mod trace;
pub mod volume;

use crate::prefetch;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shardblk",
    version,
    about = "Shard-composed tiered volumes served as ublk block devices"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create and inspect pools of tier devices.
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Create, inspect, resize, delete volumes and move data in and out.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Convert, synthesise and evaluate block traces for the prefetcher.
    #[command(subcommand)]
    Trace(trace::TraceCmd),
    /// Run a cluster storage node.
    #[command(subcommand)]
    Node(cluster::NodeCmd),
    /// Cluster status, and reading and writing cluster volumes.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    #[command(flatten)]
    Device(device::DeviceCmd),
}

/// The whole command line: parse, dispatch, one error line and exit 1 on
/// failure. Both executables run it (`shardblk`, and `shardblk-lstm` with
/// the LSTM backend registered first).
pub fn main() {
    let cli = Cli::parse();
    // SAFETY: called in main before any thread exists (parsing starts
    // none). A command whose output is for a pipe (`shardblk ... | head`)
    // takes the default SIGPIPE action, ending quietly like other Unix
    // tools instead of panicking on a closed stdout. A long-running server
    // or network client keeps SIGPIPE ignored (Rust's default): a peer that
    // hangs up (a storage node killed mid-request, a `stats` client gone
    // mid-answer, a cut-off attacher) must be an EPIPE error on that
    // connection, not the death of a storage node or a device daemon.
    unsafe {
        let action = if keeps_running_past_peers(&cli.cmd) {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        libc::signal(libc::SIGPIPE, action);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDBLK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if needs_lstm(&cli.cmd) && prefetch::lstm::backend().is_none() {
        exec_lstm_binary();
    }
    let r = match cli.cmd {
        Cmd::Pool(c) => pool::run(c),
        Cmd::Volume(c) => volume::run(c),
        Cmd::Trace(c) => trace::run(c),
        Cmd::Node(c) => cluster::run_node(c),
        Cmd::Cluster(c) => cluster::run(c),
        Cmd::Device(c) => device::run(c),
    };
    if let Err(e) = r {
        eprintln!("shardblk: {e:#}");
        std::process::exit(1);
    }
}

/// Whether `cmd` runs the LSTM.
/// Whether `cmd` talks to peers that may hang up on it while it must go
/// on: storage nodes, cluster clients, device daemons.
fn keeps_running_past_peers(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Node(_) | Cmd::Cluster(_) => true,
        Cmd::Device(c) => c.runs_daemon(),
        _ => false,
    }
}

fn needs_lstm(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Trace(c) => c.needs_lstm(),
        Cmd::Device(c) => c.needs_lstm(),
        _ => false,
    }
}

/// Hand this command line to `shardblk-lstm` (`$SHARDBLK_LSTM_BIN`, else
/// next to this executable), which has the LSTM backend; exits if it
/// cannot be run.
fn exec_lstm_binary() -> ! {
    use std::os::unix::process::CommandExt;
    let bin = std::env::var_os("SHARDBLK_LSTM_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|e| e.with_file_name("shardblk-lstm"))
        });
    let Some(bin) = bin else {
        eprintln!("shardblk: cannot locate this executable to find shardblk-lstm");
        std::process::exit(1);
    };
    let e = std::process::Command::new(&bin)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!(
        "shardblk: this command needs the LSTM, which runs in {} (built with libtorch: \
         `cargo build -p shardblk-lstm`, or set SHARDBLK_LSTM_BIN): {e}",
        bin.display()
    );
    std::process::exit(1);
}
