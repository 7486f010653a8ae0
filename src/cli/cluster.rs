//! `shardblk node run` (a storage node) and `shardblk cluster ...` (status,
//! and a client's write and read of a cluster volume).
//!
//! A node stops at once on SIGINT. SIGTERM is a graceful leave: the node
//! announces it through gossip, attachers move its copies off, and it exits
//! once nothing it holds is needed (status 0), or after
//! `CLUSTER_LEAVE_MAX_MS` with an error naming what it still holds; a
//! second SIGTERM stops it at once.

use crate::cluster::client::{ClientConfig, ClusterClient};
use crate::cluster::gossip::{self, ClusterView};
use crate::cluster::node::{self, NodeConfig};
use crate::cluster::rebalance::Limits;
use crate::constants::{
    CLUSTER_BASIS_SHARD, CLUSTER_BLOCK_BYTES, CLUSTER_OUT_AFTER_MS, CLUSTER_REPLICAS_DEFAULT,
};
use crate::units::{format_size, parse_size};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long `cluster status` listens to gossip before printing (ms).
const STATUS_LISTEN_MS: u64 = 2_000;
/// How long a client waits for the storage nodes it expects (ms).
const CLIENT_WAIT_MS: u64 = 15_000;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Run a storage node: serve this pool's shard copies and join the cluster.
    /// SIGTERM leaves gracefully (copies moved off first); SIGINT stops at once.
    Run {
        /// Any device (or file) of the node's local pool.
        #[arg(long)]
        pool: PathBuf,
        /// Shard protocol address (TCP).
        #[arg(long)]
        listen: SocketAddr,
        /// Gossip address (UDP).
        #[arg(long)]
        gossip: SocketAddr,
        /// Gossip address of a node to join through; repeat.
        #[arg(long = "seed")]
        seeds: Vec<SocketAddr>,
        /// Node name (default: from the pool's uuid).
        #[arg(long)]
        id: Option<String>,
        /// Failure-domain label (rack, host, zone).
        #[arg(long)]
        domain: Option<String>,
        /// Replica state file (default: POOL.cluster.json).
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

/// Where a client joins gossip.
#[derive(Args, Clone)]
pub struct JoinArgs {
    /// Gossip address of any node; repeat.
    #[arg(long = "seed", required = true)]
    seeds: Vec<SocketAddr>,
    /// This client's own gossip address (UDP; default: a free loopback port).
    #[arg(long)]
    gossip: Option<SocketAddr>,
}

impl JoinArgs {
    fn gossip_addr(&self) -> Result<SocketAddr> {
        if let Some(a) = self.gossip {
            return Ok(a);
        }
        let s = std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
        Ok(s.local_addr()?)
    }
}

/// Which cluster volume, and how it is laid out.
#[derive(Args, Clone)]
pub struct VolumeArgs {
    #[arg(long)]
    volume: String,
    /// Logical size of the cluster volume.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    size: u64,
    /// Copies of every shard.
    #[arg(long, default_value_t = CLUSTER_REPLICAS_DEFAULT)]
    replicas: usize,
    /// Storage nodes to wait for before placing anything.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Members, liveness, capacity, load and shard count per node.
    Status {
        #[command(flatten)]
        join: JoinArgs,
        #[arg(long)]
        json: bool,
    },
    /// Write a file into a cluster volume at --offset (attaches the volume,
    /// fencing any other attacher); the tail is zero-padded to a block.
    Write {
        #[command(flatten)]
        join: JoinArgs,
        #[command(flatten)]
        vol: VolumeArgs,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_parser = parse_size, default_value_t = 0)]
        offset: u64,
    },
    /// Read --length bytes at --offset of a cluster volume into a file (- for stdout).
    Read {
        #[command(flatten)]
        join: JoinArgs,
        #[command(flatten)]
        vol: VolumeArgs,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_parser = parse_size, default_value_t = 0)]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        length: u64,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Signals of a node: the first SIGTERM completes `leave`; SIGINT or a
/// second SIGTERM completes `stop`.
fn node_signals() -> Result<(impl Future<Output = ()>, impl Future<Output = ()>)> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let (leave_tx, leave_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut leave_tx = Some(leave_tx);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => match leave_tx.take() {
                    Some(tx) => {
                        tracing::info!("SIGTERM: leaving gracefully (SIGTERM again to stop now)");
                        let _ = tx.send(());
                    }
                    None => break,
                },
            }
        }
        let _ = stop_tx.send(());
    });
    let leave = async {
        if leave_rx.await.is_err() {
            std::future::pending::<()>().await
        }
    };
    let stop = async {
        let _ = stop_rx.await;
    };
    Ok((leave, stop))
}

pub fn run_node(cmd: NodeCmd) -> Result<()> {
    let NodeCmd::Run {
        pool,
        listen,
        gossip,
        seeds,
        id,
        domain,
        state,
    } = cmd;
    if let Some(id) = &id {
        // override records name nodes in a `,`/`|`-separated text form
        if id.is_empty() || id.contains([',', '|', ':']) || id.chars().any(char::is_whitespace) {
            bail!("node id {id:?}: must be non-empty, without ',', '|', ':' or spaces");
        }
    }
    let cfg = NodeConfig {
        id,
        pool,
        state,
        listen,
        gossip,
        seeds,
        domain,
    };
    runtime()?.block_on(async {
        let (leave, stop) = node_signals()?;
        match node::run_with_leave(cfg, leave, stop).await? {
            Some(r) if r.drained => {
                eprintln!("node {} left: drained in {} ms", r.id, r.waited_ms);
                Ok(())
            }
            Some(r) => bail!(
                "node {} left undrained after {} ms: {} shards still held, still placed in {:?}",
                r.id,
                r.waited_ms,
                r.shards_held,
                r.placed_in
            ),
            None => Ok(()),
        }
    })
}

fn print_status(v: &ClusterView) {
    println!(
        "{:<16} {:<5} {:<22} {:<8} {:>6} {:>10} {:>10} {:>6} {:>7}",
        "node", "live", "listen", "domain", "weight", "capacity", "free", "load", "shards"
    );
    for n in v.storage() {
        let cap: u64 = n.tiers.iter().map(|t| t.1).sum();
        let free: u64 = n.tiers.iter().map(|t| t.2).sum();
        println!(
            "{:<16} {:<5} {:<22} {:<8} {:>6.2} {:>10} {:>10} {:>6} {:>7}",
            n.id,
            match (n.live, n.leaving) {
                (true, false) => "up",
                (true, true) => "leave",
                (false, _) => "down",
            },
            n.listen.map(|a| a.to_string()).unwrap_or_default(),
            n.domain.as_deref().unwrap_or("-"),
            n.weight,
            format_size(cap),
            format_size(free),
            n.load,
            n.shards
        );
    }
    println!("shard records (away from home or moved): {}", records(v));
    if v.rebalancing.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<20} {:<10} {:<8} {:>7} {:>6} {:>9} {:>8} {:>10} {:>6} {:>7}  target",
        "rebalancing by",
        "volume",
        "state",
        "planned",
        "moved",
        "remaining",
        "in-flight",
        "copied",
        "drops",
        "retries"
    );
    for r in &v.rebalancing {
        let p = &r.status.progress;
        let state = if r.status.done {
            "done"
        } else if !r.live {
            "stopped"
        } else {
            "moving"
        };
        println!(
            "{:<20} {:<10} {:<8} {:>7} {:>6} {:>9} {:>8} {:>10} {:>6} {:>7}  {}",
            r.node,
            r.volume,
            state,
            p.planned,
            p.moved,
            p.remaining(),
            p.in_flight,
            format_size(p.bytes),
            p.drops_pending,
            p.retries,
            r.status.target.join(",")
        );
    }
}

/// Override records of shards (a volume's placement-basis record aside).
fn records(v: &ClusterView) -> usize {
    v.overrides
        .iter()
        .filter(|(k, _)| k.shard != CLUSTER_BASIS_SHARD)
        .count()
}

fn client_config(join: &JoinArgs, vol: &VolumeArgs) -> Result<ClientConfig> {
    Ok(ClientConfig {
        id: format!("client-{}", std::process::id()),
        gossip: join.gossip_addr()?,
        seeds: join.seeds.clone(),
        volume: vol.volume.clone(),
        size_bytes: vol.size,
        replicas: vol.replicas,
        expect_nodes: vol.nodes,
        wait_ms: CLIENT_WAIT_MS,
        out_after_ms: CLUSTER_OUT_AFTER_MS,
        rebalance: Limits::default(),
    })
}

fn check_offset(offset: u64) -> Result<()> {
    if offset % CLUSTER_BLOCK_BYTES != 0 {
        bail!("--offset must be a multiple of {CLUSTER_BLOCK_BYTES}");
    }
    Ok(())
}

pub fn run(cmd: ClusterCmd) -> Result<()> {
    let rt = runtime()?;
    match cmd {
        ClusterCmd::Status { join, json } => rt.block_on(async {
            let id = format!("status-{}", std::process::id());
            let keys = vec![("role".to_string(), gossip::ROLE_CLIENT.to_string())];
            let h = gossip::start(&id, join.gossip_addr()?, &join.seeds, keys).await?;
            tokio::time::sleep(Duration::from_millis(STATUS_LISTEN_MS)).await;
            let v = ClusterView::of(&h).await;
            let _ = h.shutdown().await;
            if v.storage().next().is_none() {
                bail!("no storage node heard through {:?}", join.seeds);
            }
            if json {
                let nodes: Vec<_> = v.storage().collect();
                let out = serde_json::json!({
                    "nodes": nodes,
                    "overrides": records(&v),
                    "rebalancing": v.rebalancing,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }),
        ClusterCmd::Write {
            join,
            vol,
            input,
            offset,
        } => {
            check_offset(offset)?;
            let mut data = Vec::new();
            if input.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut data)?;
            } else {
                data = std::fs::read(&input)
                    .with_context(|| format!("reading {}", input.display()))?;
            }
            if data.is_empty() {
                bail!("nothing to write");
            }
            data.resize(data.len().next_multiple_of(CLUSTER_BLOCK_BYTES as usize), 0);
            let cfg = client_config(&join, &vol)?;
            rt.block_on(async {
                let mut c = ClusterClient::connect(cfg).await?;
                c.write(offset, &data).await?;
                c.shutdown().await;
                println!("{}: wrote {} bytes at {offset}", vol.volume, data.len());
                Ok(())
            })
        }
        ClusterCmd::Read {
            join,
            vol,
            output,
            offset,
            length,
        } => {
            check_offset(offset)?;
            let cfg = client_config(&join, &vol)?;
            let padded = length.next_multiple_of(CLUSTER_BLOCK_BYTES);
            let data = rt.block_on(async {
                let mut c = ClusterClient::connect(cfg).await?;
                let d = c.read(offset, padded).await?;
                c.shutdown().await;
                anyhow::Ok(d)
            })?;
            let mut out: Box<dyn Write> = if output.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(
                    std::fs::File::create(&output)
                        .with_context(|| format!("creating {}", output.display()))?,
                )
            };
            out.write_all(&data[..length as usize])?;
            out.flush()?;
            Ok(())
        }
    }
}
