//! Shared helpers of the engine integration tests: pools over memory, faulty
//! or file devices, and self-describing block contents.
//!
//! Every 512-byte sector written by a test carries `(tag, block, version,
//! sector, crc32c)`, so a read can tell exactly which write it came from,
//! and garbage, a torn mix, or data of another block is detected.
#![allow(dead_code)]

use shardblk::io::fault::{FaultConfig, FaultDev};
use shardblk::io::mem::MemDev;
use shardblk::io::{AlignedBuf, BlockDev};
use shardblk::shard::lifecycle::entries;
use shardblk::shard::policy::TierPolicy;
use shardblk::shard::pool::{Pool, TierSpec};
use shardblk::volume::handle::Volume;
use std::path::Path;
use std::sync::Arc;

pub const BLOCK: usize = 4096;
pub const SECTOR: usize = 512;
pub const MIB: u64 = 1 << 20;

/// Volume `name` of `shards` 1 MiB shards written in full (version 1 of
/// every block, tagged `tag`) on the cold tier, promotion off, so that only
/// a stager moves data.
pub fn cold_volume(pool: &Pool, name: &str, shards: u64, tag: u32) -> Volume {
    let vol = pool
        .create_volume(
            name,
            shards * MIB,
            MIB,
            TierPolicy::parse("write=cold,promote=0").unwrap(),
        )
        .unwrap();
    let mut eng = pool.engine();
    let mut b = AlignedBuf::new(MIB as usize);
    for s in 0..shards {
        fill(&mut b, tag, s * 256, 1);
        vol.write(eng.as_mut(), s * MIB, &b).unwrap();
    }
    vol.flush().unwrap();
    assert!(entries(&vol).iter().all(|(_, e)| e.tier() == 1));
    vol
}

/// A pool over in-memory devices.
pub fn mem_pool(hot: u64, cold: u64) -> (Pool, Vec<Arc<MemDev>>) {
    let devs = vec![
        Arc::new(MemDev::new("mem-hot", hot)),
        Arc::new(MemDev::new("mem-cold", cold)),
    ];
    let pool = Pool::format_on(vec![
        (
            "hot".into(),
            "mem-hot".into(),
            devs[0].clone() as Arc<dyn BlockDev>,
        ),
        (
            "cold".into(),
            "mem-cold".into(),
            devs[1].clone() as Arc<dyn BlockDev>,
        ),
    ])
    .expect("format mem pool");
    (pool, devs)
}

/// A pool over fault-injecting devices with volatile caches over memory.
pub fn fault_pool(hot: u64, cold: u64, seed: u64) -> (Pool, Vec<Arc<FaultDev>>, Vec<Arc<MemDev>>) {
    let mems = vec![
        Arc::new(MemDev::new("mem-hot", hot)),
        Arc::new(MemDev::new("mem-cold", cold)),
    ];
    let faults: Vec<Arc<FaultDev>> = mems
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cfg = FaultConfig {
                seed: seed.wrapping_mul(31).wrapping_add(i as u64),
                volatile_cache: true,
                ..Default::default()
            };
            Arc::new(FaultDev::new(m.clone() as Arc<dyn BlockDev>, cfg))
        })
        .collect();
    let pool = Pool::format_on(vec![
        (
            "hot".into(),
            "fault-hot".into(),
            faults[0].clone() as Arc<dyn BlockDev>,
        ),
        (
            "cold".into(),
            "fault-cold".into(),
            faults[1].clone() as Arc<dyn BlockDev>,
        ),
    ])
    .expect("format fault pool");
    (pool, faults, mems)
}

/// Reopen a pool over the durable contents of memory devices.
pub fn reopen_mem(mems: &[Arc<MemDev>]) -> Pool {
    Pool::open_on(
        mems.iter()
            .map(|m| m.clone() as Arc<dyn BlockDev>)
            .collect(),
    )
    .expect("reopen pool")
}

/// A pool on two sparse files in `dir` (real `O_DIRECT` files, io_uring engine).
pub fn file_pool(dir: &Path, hot: u64, cold: u64) -> Pool {
    let h = dir.join("hot");
    let c = dir.join("cold");
    std::fs::File::create(&h).unwrap().set_len(hot).unwrap();
    std::fs::File::create(&c).unwrap().set_len(cold).unwrap();
    Pool::init(
        &[
            TierSpec {
                name: "hot".into(),
                path: h,
            },
            TierSpec {
                name: "cold".into(),
                path: c,
            },
        ],
        false,
    )
    .expect("init file pool")
}

/// Fill `buf` (whole blocks) with the pattern of `version` written to
/// consecutive blocks starting at `first_block`.
pub fn fill(buf: &mut [u8], tag: u32, first_block: u64, version: u64) {
    for (bi, blk) in buf.chunks_mut(BLOCK).enumerate() {
        for (si, sec) in blk.chunks_mut(SECTOR).enumerate() {
            let block = first_block + bi as u64;
            sec[0..4].copy_from_slice(&tag.to_le_bytes());
            sec[4..12].copy_from_slice(&block.to_le_bytes());
            sec[12..20].copy_from_slice(&version.to_le_bytes());
            sec[20..24].copy_from_slice(&(si as u32).to_le_bytes());
            let mut x =
                block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version.rotate_left(17) ^ si as u64;
            for b in sec[24..SECTOR - 4].iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let crc = crc32c::crc32c(&sec[..SECTOR - 4]);
            sec[SECTOR - 4..].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

/// What one sector holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sector {
    Zero,
    /// Written by `version` for this block and sector.
    Version(u64),
    /// Anything else: garbage, another block's data, a bad checksum.
    Bad,
}

/// Decode sector `si` of block `block`.
pub fn sector(sec: &[u8], tag: u32, block: u64, si: usize) -> Sector {
    if sec.iter().all(|&b| b == 0) {
        return Sector::Zero;
    }
    let crc = u32::from_le_bytes(sec[SECTOR - 4..].try_into().unwrap());
    if crc32c::crc32c(&sec[..SECTOR - 4]) != crc
        || u32::from_le_bytes(sec[0..4].try_into().unwrap()) != tag
        || u64::from_le_bytes(sec[4..12].try_into().unwrap()) != block
        || u32::from_le_bytes(sec[20..24].try_into().unwrap()) as usize != si
    {
        return Sector::Bad;
    }
    Sector::Version(u64::from_le_bytes(sec[12..20].try_into().unwrap()))
}

/// The version every sector of one block holds, if they agree.
pub fn block_version(blk: &[u8], tag: u32, block: u64) -> Result<Option<u64>, String> {
    let mut seen = None;
    for (si, sec) in blk.chunks(SECTOR).enumerate() {
        let s = sector(sec, tag, block, si);
        match (s, seen) {
            (Sector::Bad, _) => return Err(format!("block {block} sector {si}: garbage")),
            (_, None) => seen = Some(s),
            (a, Some(b)) if a != b => {
                return Err(format!(
                    "block {block}: torn ({b:?} then {a:?} at sector {si})"
                ))
            }
            _ => {}
        }
    }
    Ok(match seen {
        Some(Sector::Version(v)) => Some(v),
        _ => None,
    })
}
