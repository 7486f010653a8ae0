//! `shardblk pool ...`: create a pool on tier devices, show its state, and
//! run policy windows by hand.

use crate::shard::manager::run_window;
use crate::shard::pool::{Pool, TierSpec};
use crate::units::format_size;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// How commands find their pool: any member device.
#[derive(Args, Clone)]
pub struct PoolArg {
    /// Any device (or file) of the pool; the others are found from its superblock.
    #[arg(long, env = "SHARDBLK_POOL")]
    pub pool: PathBuf,
}

impl PoolArg {
    pub fn open(&self) -> Result<Pool> {
        Pool::open(&self.pool).with_context(|| format!("opening pool at {}", self.pool.display()))
    }
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Write superblocks and empty metadata on the tier devices, hottest first.
    Init {
        /// A tier as NAME=PATH (block device or file), hottest first; repeat per tier.
        #[arg(long = "tier", required = true)]
        tiers: Vec<TierSpec>,
        /// Overwrite devices that already belong to a pool.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show tiers, capacity and use.
    Status {
        #[command(flatten)]
        pool: PoolArg,
        #[arg(long)]
        json: bool,
    },
    /// Run policy windows now (promotion, demotion, split, merge) and commit.
    Balance {
        #[command(flatten)]
        pool: PoolArg,
        /// Number of windows to run.
        #[arg(long, default_value_t = 1)]
        windows: u32,
        #[arg(long)]
        json: bool,
    },
}

fn print_status(pool: &Pool, json: bool) -> Result<()> {
    let st = pool.status();
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!("pool {}  ({} volumes)", st.uuid, st.volumes);
    println!(
        "{:<4} {:<8} {:>10} {:>10} {:>6}  device",
        "tier", "name", "capacity", "used", "use%"
    );
    for t in &st.tiers {
        let pct = t.used_bytes * 100 / t.capacity_bytes.max(1);
        println!(
            "{:<4} {:<8} {:>10} {:>10} {:>5}%  {}",
            t.index,
            t.name,
            format_size(t.capacity_bytes),
            format_size(t.used_bytes),
            pct,
            t.device
        );
    }
    Ok(())
}

pub fn run(cmd: PoolCmd) -> Result<()> {
    match cmd {
        PoolCmd::Init { tiers, force, json } => {
            let pool = Pool::init(&tiers, force)?;
            print_status(&pool, json)
        }
        PoolCmd::Status { pool, json } => print_status(&pool.open()?, json),
        PoolCmd::Balance {
            pool,
            windows,
            json,
        } => {
            let pool = pool.open()?;
            let mut eng = pool.engine();
            let mut total = crate::shard::manager::WindowReport::default();
            for _ in 0..windows {
                let r = run_window(&pool, eng.as_mut())?;
                total.promoted += r.promoted;
                total.demoted += r.demoted;
                total.split += r.split;
                total.merged += r.merged;
                total.skipped += r.skipped;
            }
            pool.commit()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&total)?);
            } else {
                println!(
                    "promoted {}  demoted {}  split {}  merged {}  skipped {}",
                    total.promoted, total.demoted, total.split, total.merged, total.skipped
                );
            }
            Ok(())
        }
    }
}
