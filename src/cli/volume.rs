//! `shardblk volume ...`: thin volumes as metadata objects, and moving data
//! between files and volumes without a block device.

use super::pool::PoolArg;
use crate::constants::{BLOCK_SIZE_BYTES, SHARD_SIZE_DEFAULT_BYTES};
use crate::io::AlignedBuf;
use crate::shard::policy::TierPolicy;
use crate::shard::pool::VolumeInfo;
use crate::units::{format_size, parse_size};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Data moves through the engine in chunks of this size.
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a thin volume (allocates nothing physical).
    Create {
        name: String,
        #[command(flatten)]
        pool: PoolArg,
        /// Logical size, e.g. 64G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// SHARD_SIZE: power of two from 64K to 64M (default 1M).
        #[arg(long, value_parser = parse_size, default_value_t = SHARD_SIZE_DEFAULT_BYTES)]
        shard_size: u64,
        /// TIERED_STORAGE_POLICY as key=value,...: write=hot|cold|N, pin=..., promote=READS,
        /// high=PCT, low=PCT, split=SIXTEENTHS, merge=on|off.
        #[arg(long, default_value = "")]
        policy: String,
        #[arg(long)]
        json: bool,
    },
    /// List volumes.
    List {
        #[command(flatten)]
        pool: PoolArg,
        #[arg(long)]
        json: bool,
    },
    /// Size, shard size, policy and mapped bytes per tier of one volume.
    Inspect {
        name: String,
        #[command(flatten)]
        pool: PoolArg,
        #[arg(long)]
        json: bool,
    },
    /// Grow a volume, or shrink it (refused if mapped data would be lost, unless --force).
    Resize {
        name: String,
        #[command(flatten)]
        pool: PoolArg,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long)]
        force: bool,
    },
    /// Change a volume's tier policy.
    Policy {
        name: String,
        #[command(flatten)]
        pool: PoolArg,
        policy: String,
    },
    /// Delete a volume and free every extent it holds.
    Delete {
        name: String,
        #[command(flatten)]
        pool: PoolArg,
    },
    /// Write a file (or stdin with -) into a volume at --offset; the tail is
    /// zero-padded to a whole block. Flushed before returning.
    Write {
        name: String,
        #[command(flatten)]
        pool: PoolArg,
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_parser = parse_size, default_value_t = 0)]
        offset: u64,
    },
    /// Read --length bytes at --offset of a volume into a file (or stdout with -).
    Read {
        name: String,
        #[command(flatten)]
        pool: PoolArg,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_parser = parse_size, default_value_t = 0)]
        offset: u64,
        /// Bytes to read (default: to the end of the volume).
        #[arg(long, value_parser = parse_size)]
        length: Option<u64>,
    },
}

fn print_info(v: &VolumeInfo) {
    println!("volume {} (id {})", v.name, v.id);
    println!(
        "  size        {} ({} bytes)",
        format_size(v.size_bytes),
        v.size_bytes
    );
    println!("  shard size  {}", format_size(v.shard_size_bytes));
    println!("  policy      {}", v.policy);
    for (tier, b) in &v.mapped_bytes {
        println!("  mapped on {tier:<6} {}", format_size(*b));
    }
}

pub fn run(cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            pool,
            size,
            shard_size,
            policy,
            json,
        } => {
            let pool = pool.open()?;
            let policy = TierPolicy::parse(&policy)?;
            pool.create_volume(&name, size, shard_size, policy)?;
            let info = pool.volume_info(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info);
            }
        }
        VolumeCmd::List { pool, json } => {
            let vols = pool.open()?.list_volumes();
            if json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
            } else {
                println!(
                    "{:<20} {:>10} {:>8} {:>12}  policy",
                    "name", "size", "shard", "mapped"
                );
                for v in vols {
                    let mapped: u64 = v.mapped_bytes.iter().map(|m| m.1).sum();
                    println!(
                        "{:<20} {:>10} {:>8} {:>12}  {}",
                        v.name,
                        format_size(v.size_bytes),
                        format_size(v.shard_size_bytes),
                        format_size(mapped),
                        v.policy
                    );
                }
            }
        }
        VolumeCmd::Inspect { name, pool, json } => {
            let info = pool.open()?.volume_info(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info);
            }
        }
        VolumeCmd::Resize {
            name,
            pool,
            size,
            force,
        } => {
            pool.open()?.resize_volume(&name, size, force)?;
            println!("{name}: {}", format_size(size));
        }
        VolumeCmd::Policy { name, pool, policy } => {
            let p = TierPolicy::parse(&policy)?;
            pool.open()?.set_policy(&name, p.clone())?;
            println!("{name}: {}", p.describe());
        }
        VolumeCmd::Delete { name, pool } => {
            pool.open()?.delete_volume(&name)?;
            println!("{name}: deleted");
        }
        VolumeCmd::Write {
            name,
            pool,
            input,
            offset,
        } => {
            let pool = pool.open()?;
            let vol = pool.volume(&name)?;
            let mut eng = pool.engine();
            let mut src: Box<dyn Read> = if input.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(
                    std::fs::File::open(&input)
                        .with_context(|| format!("opening {}", input.display()))?,
                )
            };
            if offset % BLOCK_SIZE_BYTES != 0 {
                bail!("--offset must be a multiple of {BLOCK_SIZE_BYTES}");
            }
            let mut buf = AlignedBuf::new(CHUNK_BYTES);
            let mut at = offset;
            loop {
                let mut n = 0;
                while n < CHUNK_BYTES {
                    let k = src.read(&mut buf[n..])?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                if n == 0 {
                    break;
                }
                let padded = n.next_multiple_of(BLOCK_SIZE_BYTES as usize);
                buf[n..padded].fill(0);
                vol.write(eng.as_mut(), at, &buf[..padded])?;
                at += padded as u64;
                if n < CHUNK_BYTES {
                    break;
                }
            }
            vol.flush()?;
            println!("{name}: wrote {} bytes at {offset}", at - offset);
        }
        VolumeCmd::Read {
            name,
            pool,
            output,
            offset,
            length,
        } => {
            let pool = pool.open()?;
            let vol = pool.volume(&name)?;
            let mut eng = pool.engine();
            if offset % BLOCK_SIZE_BYTES != 0 || offset > vol.size_bytes() {
                bail!("--offset must be a multiple of {BLOCK_SIZE_BYTES} inside the volume");
            }
            let len = length.unwrap_or(vol.size_bytes() - offset);
            if offset + len > vol.size_bytes() {
                bail!("range ends beyond the volume ({} bytes)", vol.size_bytes());
            }
            let mut out: Box<dyn Write> = if output.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(
                    std::fs::File::create(&output)
                        .with_context(|| format!("creating {}", output.display()))?,
                )
            };
            let mut buf = AlignedBuf::new(CHUNK_BYTES);
            let mut done = 0u64;
            while done < len {
                let want = (len - done).min(CHUNK_BYTES as u64);
                let padded = want.next_multiple_of(BLOCK_SIZE_BYTES);
                vol.read(eng.as_mut(), offset + done, &mut buf[..padded as usize])?;
                out.write_all(&buf[..want as usize])?;
                done += want;
            }
            out.flush()?;
        }
    }
    Ok(())
}
