//! The `shardblk` command: argument parsing and dispatch only. Library
//! errors are typed; this edge turns them into one clear line and a
//! non-zero exit.

mod cli;

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
    Pool(cli::pool::PoolCmd),
    /// Create, inspect, resize, delete volumes and move data in and out.
    #[command(subcommand)]
    Volume(cli::volume::VolumeCmd),
    /// Convert, synthesise and evaluate block traces for the prefetcher.
    #[command(subcommand)]
    Trace(cli::trace::TraceCmd),
    /// Run a cluster storage node.
    #[command(subcommand)]
    Node(cli::cluster::NodeCmd),
    /// Cluster status, and reading and writing cluster volumes.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCmd),
    #[command(flatten)]
    Device(cli::device::DeviceCmd),
}

fn main() {
    // SAFETY: called first in main, before any thread exists; restoring the
    // default SIGPIPE action makes `shardblk ... | head` end quietly like
    // other Unix tools instead of panicking on a closed stdout.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDBLK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Pool(c) => cli::pool::run(c),
        Cmd::Volume(c) => cli::volume::run(c),
        Cmd::Trace(c) => cli::trace::run(c),
        Cmd::Node(c) => cli::cluster::run_node(c),
        Cmd::Cluster(c) => cli::cluster::run(c),
        Cmd::Device(c) => cli::device::run(c),
    };
    if let Err(e) = r {
        eprintln!("shardblk: {e:#}");
        std::process::exit(1);
    }
}
