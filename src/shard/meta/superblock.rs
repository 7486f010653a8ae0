//! The superblock of every tier device: which pool it belongs to, its place
//! in the pool, the whole pool's device list, and where metadata and data
//! live.
//!
//! Contract: one [`SUPERBLOCK_SIZE_BYTES`] block at offset 0 and an identical
//! copy at [`SUPERBLOCK_COPY_OFFSET_BYTES`]. Layout (little endian): magic
//! `SHBLKSB\0` u64, format version u32, pool uuid u128, device index u16,
//! device count u16, tier index u8, tier name (u8 length + bytes), device
//! size u64, the device list (per device: uuid u128, tier index u8, tier name,
//! size u64), metadata region flag u8 (+ offset, checkpoint slot size, log
//! size: u64 each), data start u64, zero padding, and crc32c of the first
//! `SIZE - 4` bytes in the last 4 bytes. [`write_superblocks`] writes and
//! syncs block 0 and then block 1, so a crash leaves at least one valid copy;
//! [`read_superblock`] prefers a valid block 0 and reports a bad copy.
//! Decoding never panics and checks every field ([`Superblock::validate`]).

use super::codec::{Get, Put};
use super::log::MetaRegion;
use crate::constants::{
    BLOCK_SIZE_BYTES, DEVICE_RESERVED_HEAD_BYTES, NAME_LEN_MAX_BYTES, PATH_HINT_MAX_BYTES,
    POOL_DEVICES_MAX, SUPERBLOCK_COPY_OFFSET_BYTES, SUPERBLOCK_SIZE_BYTES, TIERS_MAX,
    UNIT_SIZE_BYTES,
};
use crate::io::{AlignedBuf, BlockDev, IoError};

pub const SUPERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"SHBLKSB\0");
pub const SUPERBLOCK_FORMAT_VERSION: u32 = 1;
const SB: usize = SUPERBLOCK_SIZE_BYTES as usize;

/// One device of the pool as every superblock lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub uuid: u128,
    pub tier_index: u8,
    pub tier_name: String,
    pub size_bytes: u64,
    /// The path the device had when the pool was created (at most
    /// `PATH_HINT_MAX_BYTES`); `Pool::open` looks for the device there and
    /// verifies its identity, so a moved device is found by naming it.
    pub path_hint: String,
}

/// The superblock of device `device_index` of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub pool_uuid: u128,
    /// This device's position in `devices`.
    pub device_index: u16,
    /// Every device of the pool, in pool order.
    pub devices: Vec<DeviceEntry>,
    /// The metadata region, on the metadata device only.
    pub meta_region: Option<MetaRegion>,
    /// First byte of the extent area (unit 0), a multiple of `UNIT_SIZE_BYTES`.
    pub data_start_bytes: u64,
}

/// Why a superblock is not valid.
#[derive(Debug, thiserror::Error)]
pub enum SuperblockError {
    #[error("not a shardblk device (magic {0:#018x})")]
    NotASuperblock(u64),
    #[error("superblock format version {0} is not supported (this build reads {SUPERBLOCK_FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("superblock checksum mismatch")]
    BadChecksum,
    #[error("invalid superblock: {0}")]
    Invalid(String),
    #[error("superblock I/O: {0}")]
    Io(#[from] IoError),
    #[error("no valid superblock: block 0: {primary}; copy: {copy}")]
    NoValidCopy {
        primary: Box<SuperblockError>,
        copy: Box<SuperblockError>,
    },
}

/// A random pool or device uuid.
pub fn new_uuid() -> u128 {
    rand::random()
}

impl Superblock {
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }
    /// This device's entry (valid superblocks only).
    pub fn this_device(&self) -> &DeviceEntry {
        &self.devices[self.device_index as usize]
    }

    /// Check every invariant of the fields.
    pub fn validate(&self) -> Result<(), SuperblockError> {
        let bad = |s: String| Err(SuperblockError::Invalid(s));
        let n = self.devices.len();
        if n == 0 || n > POOL_DEVICES_MAX {
            return bad(format!("{n} devices (1..={POOL_DEVICES_MAX})"));
        }
        if self.device_index as usize >= n {
            return bad(format!("device index {} of {n} devices", self.device_index));
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.path_hint.len() > PATH_HINT_MAX_BYTES {
                return bad(format!(
                    "device {i}: path hint longer than {PATH_HINT_MAX_BYTES} bytes"
                ));
            }
            if d.tier_index as usize >= TIERS_MAX {
                return bad(format!(
                    "device {i}: tier {} (max {TIERS_MAX})",
                    d.tier_index
                ));
            }
            if d.tier_name.is_empty() || d.tier_name.len() > NAME_LEN_MAX_BYTES {
                return bad(format!(
                    "device {i}: tier name of {} bytes",
                    d.tier_name.len()
                ));
            }
            if d.size_bytes % BLOCK_SIZE_BYTES != 0 {
                return bad(format!(
                    "device {i}: size {} not a block multiple",
                    d.size_bytes
                ));
            }
            if self.devices[..i].iter().any(|o| o.uuid == d.uuid) {
                return bad(format!("device {i}: duplicate uuid"));
            }
        }
        let size = self.this_device().size_bytes;
        if self.data_start_bytes % UNIT_SIZE_BYTES != 0
            || self.data_start_bytes < DEVICE_RESERVED_HEAD_BYTES
            || self.data_start_bytes > size
        {
            return bad(format!("data start {} (unit aligned, after the reserved head, inside the device of {size})", self.data_start_bytes));
        }
        if let Some(r) = &self.meta_region {
            r.validate(size)
                .map_err(|e| SuperblockError::Invalid(e.to_string()))?;
            if r.offset < DEVICE_RESERVED_HEAD_BYTES || r.end() > self.data_start_bytes {
                return bad(format!(
                    "metadata region {r:?} must lie between the reserved head and the data start"
                ));
            }
        }
        Ok(())
    }

    /// Encode into one superblock block.
    pub fn encode(&self) -> Result<AlignedBuf, SuperblockError> {
        self.validate()?;
        let mut v = Vec::with_capacity(SB);
        let mut p = Put(&mut v);
        let me = self.this_device();
        p.u64(SUPERBLOCK_MAGIC);
        p.u32(SUPERBLOCK_FORMAT_VERSION);
        p.u128(self.pool_uuid);
        p.u16(self.device_index);
        p.u16(self.devices.len() as u16);
        p.u8(me.tier_index);
        p.u8(me.tier_name.len() as u8);
        p.bytes(me.tier_name.as_bytes());
        p.u64(me.size_bytes);
        for d in &self.devices {
            p.u128(d.uuid);
            p.u8(d.tier_index);
            p.u8(d.tier_name.len() as u8);
            p.bytes(d.tier_name.as_bytes());
            p.u64(d.size_bytes);
            p.u16(d.path_hint.len() as u16);
            p.bytes(d.path_hint.as_bytes());
        }
        match &self.meta_region {
            Some(r) => {
                p.u8(1);
                p.u64(r.offset);
                p.u64(r.checkpoint_slot_bytes);
                p.u64(r.log_bytes);
            }
            None => p.u8(0),
        }
        p.u64(self.data_start_bytes);
        // Fits: 16 devices of at most 90 bytes plus ~200 bytes of fields.
        let mut buf = AlignedBuf::new(SB);
        buf[..v.len()].copy_from_slice(&v);
        let crc = crc32c::crc32c(&buf[..SB - 4]);
        buf[SB - 4..SB].copy_from_slice(&crc.to_le_bytes());
        Ok(buf)
    }

    /// Decode and validate one superblock block.
    pub fn decode(block: &[u8]) -> Result<Superblock, SuperblockError> {
        let short = || SuperblockError::Invalid("truncated".into());
        if block.len() < SB {
            return Err(short());
        }
        let mut g = Get(&block[..SB - 4]);
        let magic = g.u64().ok_or_else(short)?;
        if magic != SUPERBLOCK_MAGIC {
            return Err(SuperblockError::NotASuperblock(magic));
        }
        let stored = u32::from_le_bytes(block[SB - 4..SB].try_into().expect("4 bytes"));
        if crc32c::crc32c(&block[..SB - 4]) != stored {
            return Err(SuperblockError::BadChecksum);
        }
        let version = g.u32().ok_or_else(short)?;
        if version != SUPERBLOCK_FORMAT_VERSION {
            return Err(SuperblockError::UnsupportedVersion(version));
        }
        fn name(g: &mut Get<'_>) -> Result<String, SuperblockError> {
            let n = g.u8().ok_or(SuperblockError::Invalid("truncated".into()))? as usize;
            if n > NAME_LEN_MAX_BYTES {
                return Err(SuperblockError::Invalid("tier name too long".into()));
            }
            let b = g
                .take(n)
                .ok_or(SuperblockError::Invalid("truncated".into()))?;
            String::from_utf8(b.to_vec())
                .map_err(|_| SuperblockError::Invalid("tier name is not UTF-8".into()))
        }
        let pool_uuid = g.u128().ok_or_else(short)?;
        let device_index = g.u16().ok_or_else(short)?;
        let count = g.u16().ok_or_else(short)? as usize;
        if count > POOL_DEVICES_MAX {
            return Err(SuperblockError::Invalid(format!("{count} devices")));
        }
        let tier_index = g.u8().ok_or_else(short)?;
        let tier_name = name(&mut g)?;
        let device_size = g.u64().ok_or_else(short)?;
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            let uuid = g.u128().ok_or_else(short)?;
            let t = g.u8().ok_or_else(short)?;
            let tn = name(&mut g)?;
            let size_bytes = g.u64().ok_or_else(short)?;
            let hn = g.u16().ok_or_else(short)? as usize;
            if hn > PATH_HINT_MAX_BYTES {
                return Err(SuperblockError::Invalid("path hint too long".into()));
            }
            let path_hint = String::from_utf8(g.take(hn).ok_or_else(short)?.to_vec())
                .map_err(|_| SuperblockError::Invalid("path hint is not UTF-8".into()))?;
            devices.push(DeviceEntry {
                path_hint,
                uuid,
                tier_index: t,
                tier_name: tn,
                size_bytes,
            });
        }
        let meta_region = match g.u8().ok_or_else(short)? {
            0 => None,
            1 => Some(MetaRegion {
                offset: g.u64().ok_or_else(short)?,
                checkpoint_slot_bytes: g.u64().ok_or_else(short)?,
                log_bytes: g.u64().ok_or_else(short)?,
            }),
            f => {
                return Err(SuperblockError::Invalid(format!(
                    "metadata region flag {f}"
                )))
            }
        };
        let data_start_bytes = g.u64().ok_or_else(short)?;
        let sb = Superblock {
            pool_uuid,
            device_index,
            devices,
            meta_region,
            data_start_bytes,
        };
        sb.validate()?;
        let me = sb.this_device();
        if me.tier_index != tier_index || me.tier_name != tier_name || me.size_bytes != device_size
        {
            return Err(SuperblockError::Invalid(
                "device fields disagree with the device list".into(),
            ));
        }
        Ok(sb)
    }
}

/// Write both copies of `sb` to `dev`: block 0, sync, copy, sync.
pub fn write_superblocks(dev: &dyn BlockDev, sb: &Superblock) -> Result<(), SuperblockError> {
    let buf = sb.encode()?;
    dev.write_at(&buf, 0)?;
    dev.sync()?;
    dev.write_at(&buf, SUPERBLOCK_COPY_OFFSET_BYTES)?;
    dev.sync()?;
    Ok(())
}

/// Result of [`read_superblock`].
#[derive(Debug)]
pub struct SuperblockRead {
    pub superblock: Superblock,
    /// A copy that is invalid: (its byte offset, why). Rewrite it.
    pub bad_copy: Option<(u64, SuperblockError)>,
    /// Both copies valid but different (a crash between the two writes);
    /// block 0 (written first) was used.
    pub copies_differ: bool,
}

/// Read the superblock of `dev`, preferring a valid block 0.
pub fn read_superblock(dev: &dyn BlockDev) -> Result<SuperblockRead, SuperblockError> {
    let mut a = AlignedBuf::new(SB);
    let mut b = AlignedBuf::new(SB);
    dev.read_at(&mut a, 0)?;
    dev.read_at(&mut b, SUPERBLOCK_COPY_OFFSET_BYTES)?;
    match (Superblock::decode(&a), Superblock::decode(&b)) {
        (Ok(x), Ok(y)) => {
            let copies_differ = x != y;
            Ok(SuperblockRead {
                superblock: x,
                bad_copy: None,
                copies_differ,
            })
        }
        (Ok(x), Err(e)) => Ok(SuperblockRead {
            superblock: x,
            bad_copy: Some((SUPERBLOCK_COPY_OFFSET_BYTES, e)),
            copies_differ: false,
        }),
        (Err(e), Ok(y)) => Ok(SuperblockRead {
            superblock: y,
            bad_copy: Some((0, e)),
            copies_differ: false,
        }),
        (Err(p), Err(c)) => Err(SuperblockError::NoValidCopy {
            primary: Box::new(p),
            copy: Box::new(c),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::mem::MemDev;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        let devices = (0..POOL_DEVICES_MAX)
            .map(|i| DeviceEntry {
                path_hint: format!("/dev/test{i}"),
                uuid: new_uuid(),
                tier_index: (i % TIERS_MAX) as u8,
                tier_name: format!("{:x<64}", i),
                size_bytes: 1 << 30,
            })
            .collect();
        Superblock {
            pool_uuid: new_uuid(),
            device_index: 0,
            devices,
            meta_region: Some(MetaRegion {
                offset: DEVICE_RESERVED_HEAD_BYTES,
                checkpoint_slot_bytes: 8 << 20,
                log_bytes: 32 << 20,
            }),
            data_start_bytes: DEVICE_RESERVED_HEAD_BYTES + (48 << 20),
        }
    }

    #[test]
    fn roundtrip_largest_pool_and_copies() {
        let sb = sample();
        let dev = MemDev::new("d", 1 << 30);
        write_superblocks(&dev, &sb).unwrap();
        let r = read_superblock(&dev).unwrap();
        assert_eq!(r.superblock, sb);
        assert!(r.bad_copy.is_none() && !r.copies_differ);
        // Damage block 0: the copy is used and the bad one reported.
        let mut junk = AlignedBuf::new(SB);
        junk[100] = 1;
        let mut img = dev.snapshot();
        img[100] ^= 0x40;
        let dev = MemDev::from_image("d", img);
        let r = read_superblock(&dev).unwrap();
        assert_eq!(r.superblock, sb);
        assert!(matches!(
            r.bad_copy,
            Some((0, SuperblockError::BadChecksum))
        ));
        dev.write_at(&junk, SUPERBLOCK_COPY_OFFSET_BYTES).unwrap();
        assert!(matches!(
            read_superblock(&dev),
            Err(SuperblockError::NoValidCopy { .. })
        ));
    }

    #[test]
    fn invalid_fields_rejected() {
        let mut sb = sample();
        sb.device_index = POOL_DEVICES_MAX as u16;
        assert!(sb.encode().is_err());
        let mut sb = sample();
        sb.data_start_bytes = DEVICE_RESERVED_HEAD_BYTES; // overlaps the metadata region
        assert!(sb.encode().is_err());
        let mut sb = sample();
        sb.devices[3].uuid = sb.devices[1].uuid;
        assert!(sb.encode().is_err());
    }

    proptest! {
        #[test]
        fn bit_flips_detected(bit in 0usize..SB * 8) {
            let mut buf = sample().encode().unwrap();
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Superblock::decode(&buf).is_err());
        }

        #[test]
        fn garbage_never_panics(v in proptest::collection::vec(any::<u8>(), SB..SB + 1)) {
            let _ = Superblock::decode(&v);
            // And with a valid magic and checksum over the garbage.
            let mut v = v;
            v[..8].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
            v[8..12].copy_from_slice(&SUPERBLOCK_FORMAT_VERSION.to_le_bytes());
            let crc = crc32c::crc32c(&v[..SB - 4]);
            v[SB - 4..].copy_from_slice(&crc.to_le_bytes());
            let _ = Superblock::decode(&v);
        }
    }
}
