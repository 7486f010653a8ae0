//! Checkpoint encoding: the whole [`MetaState`] in one checksummed blob.
//!
//! Contract: a checkpoint is a 32-byte header `magic u32 | generation u64 |
//! seq u64 | len u64 | crc32c u32` followed by `len` body bytes; the crc
//! covers the header's first 28 bytes and the body. `seq` is the last log
//! sequence number the state includes; log records of `generation + 1`
//! continue it. The body starts with [`CHECKPOINT_FORMAT_VERSION`].
//! [`decode_checkpoint`] never panics and re-validates everything it rebuilds
//! (unique ids and names, non-overlapping mappings inside their volume).

use super::codec::{Get, Put};
use super::rangemap::{Mapping, RangeMap};
use super::state::{MetaState, VolumeMeta};
use crate::constants::{META_POLICY_MAX_BYTES, NAME_LEN_MAX_BYTES};

/// `SBC1`.
pub const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"SBC1");
pub const CHECKPOINT_HEADER_BYTES: usize = 32;
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// Why a slot does not hold a valid checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("no checkpoint (magic {0:#010x})")]
    NotACheckpoint(u32),
    #[error("checkpoint body of {len} bytes does not fit {room} bytes")]
    BadLength { len: u64, room: u64 },
    #[error("checkpoint checksum mismatch")]
    BadChecksum,
    #[error("malformed checkpoint: {0}")]
    BadBody(String),
}

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    pub seq: u64,
    pub state: MetaState,
}

/// Total encoded size of `state`'s checkpoint (header + body).
pub fn checkpoint_bytes(state: &MetaState) -> u64 {
    CHECKPOINT_HEADER_BYTES as u64 + state.checkpoint_body_bytes()
}

/// Encode `state` as a checkpoint into `out` (cleared first).
pub fn encode_checkpoint(state: &MetaState, generation: u64, seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(checkpoint_bytes(state) as usize);
    let mut p = Put(out);
    p.u32(CHECKPOINT_MAGIC);
    p.u64(generation);
    p.u64(seq);
    p.u64(0); // body length, patched below
    p.u32(0); // crc, patched below
    p.u32(CHECKPOINT_FORMAT_VERSION);
    p.u32(state.volumes().len() as u32);
    for (id, v) in state.volumes() {
        let m = state.mappings(*id).expect("every volume has mappings");
        p.u32(*id);
        p.u16(v.name.len() as u16);
        p.bytes(v.name.as_bytes());
        p.u64(v.size_bytes);
        p.u64(v.shard_size_bytes);
        p.u32(v.policy.len() as u32);
        p.bytes(&v.policy);
        p.u64(m.len() as u64);
        for (k, e) in m.iter() {
            p.u64(k);
            p.u64(e.len_units);
            p.u8(e.tier);
            p.u64(e.phys_unit);
        }
    }
    let len = (out.len() - CHECKPOINT_HEADER_BYTES) as u64;
    debug_assert_eq!(len, state.checkpoint_body_bytes());
    out[20..28].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32c::crc32c(&out[..28]);
    crc = crc32c::crc32c_append(crc, &out[CHECKPOINT_HEADER_BYTES..]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// Body length announced by a header, if `head` starts with a checkpoint magic.
pub fn announced_len(head: &[u8]) -> Result<u64, CheckpointError> {
    let mut g = Get(head);
    let magic = g.u32().ok_or(CheckpointError::NotACheckpoint(0))?;
    if magic != CHECKPOINT_MAGIC {
        return Err(CheckpointError::NotACheckpoint(magic));
    }
    g.take(16).ok_or(CheckpointError::NotACheckpoint(magic))?;
    g.u64().ok_or(CheckpointError::NotACheckpoint(magic))
}

/// Decode the checkpoint at the start of `slot` (the whole slot's bytes).
pub fn decode_checkpoint(slot: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let len = announced_len(slot)?;
    let room = (slot.len() as u64).saturating_sub(CHECKPOINT_HEADER_BYTES as u64);
    if len > room {
        return Err(CheckpointError::BadLength { len, room });
    }
    let end = CHECKPOINT_HEADER_BYTES + len as usize;
    let stored = u32::from_le_bytes(slot[28..32].try_into().expect("4 bytes"));
    let mut crc = crc32c::crc32c(&slot[..28]);
    crc = crc32c::crc32c_append(crc, &slot[CHECKPOINT_HEADER_BYTES..end]);
    if crc != stored {
        return Err(CheckpointError::BadChecksum);
    }
    let generation = u64::from_le_bytes(slot[4..12].try_into().expect("8 bytes"));
    let seq = u64::from_le_bytes(slot[12..20].try_into().expect("8 bytes"));
    let state =
        decode_body(&slot[CHECKPOINT_HEADER_BYTES..end]).map_err(CheckpointError::BadBody)?;
    Ok(Checkpoint {
        generation,
        seq,
        state,
    })
}

fn decode_body(body: &[u8]) -> Result<MetaState, String> {
    let short = || "body too short".to_string();
    let mut g = Get(body);
    let version = g.u32().ok_or_else(short)?;
    if version != CHECKPOINT_FORMAT_VERSION {
        return Err(format!("unsupported checkpoint format version {version}"));
    }
    let count = g.u32().ok_or_else(short)?;
    let mut state = MetaState::new();
    for _ in 0..count {
        let id = g.u32().ok_or_else(short)?;
        let nlen = g.u16().ok_or_else(short)? as usize;
        if nlen > NAME_LEN_MAX_BYTES {
            return Err(format!("volume {id}: name too long"));
        }
        let name = std::str::from_utf8(g.take(nlen).ok_or_else(short)?)
            .map_err(|_| format!("volume {id}: name is not UTF-8"))?
            .to_string();
        let size_bytes = g.u64().ok_or_else(short)?;
        let shard_size_bytes = g.u64().ok_or_else(short)?;
        let plen = g.u32().ok_or_else(short)? as usize;
        if plen > META_POLICY_MAX_BYTES {
            return Err(format!("volume {id}: policy too large"));
        }
        let policy = g.take(plen).ok_or_else(short)?.to_vec();
        let n = g.u64().ok_or_else(short)?;
        let mut m = RangeMap::new();
        for _ in 0..n {
            let k = g.u64().ok_or_else(short)?;
            let len_units = g.u64().ok_or_else(short)?;
            let tier = g.u8().ok_or_else(short)?;
            let phys_unit = g.u64().ok_or_else(short)?;
            if !m.push_sorted(
                k,
                Mapping {
                    len_units,
                    tier,
                    phys_unit,
                },
            ) {
                return Err(format!(
                    "volume {id}: mapping at unit {k} overlaps or is empty"
                ));
            }
        }
        state
            .insert_decoded(
                id,
                VolumeMeta {
                    name,
                    size_bytes,
                    shard_size_bytes,
                    policy,
                },
                m,
            )
            .map_err(|e| format!("volume {id}: {e}"))?;
    }
    if g.remaining() != 0 {
        return Err("trailing bytes".into());
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::UNIT_SIZE_BYTES;
    use crate::shard::meta::codec::Record;
    use proptest::prelude::*;

    fn sample() -> MetaState {
        let mut s = MetaState::new();
        for r in [
            Record::CreateVolume {
                id: 3,
                name: "vol".into(),
                size_bytes: 64 * UNIT_SIZE_BYTES,
                shard_size_bytes: UNIT_SIZE_BYTES,
                policy: b"{\"a\":1}".to_vec(),
            },
            Record::CreateVolume {
                id: 1,
                name: "other".into(),
                size_bytes: 4096,
                shard_size_bytes: UNIT_SIZE_BYTES,
                policy: vec![],
            },
            Record::Map {
                vol: 3,
                logical_unit: 0,
                len_units: 30,
                tier: 1,
                phys_unit: 5,
            },
            Record::Map {
                vol: 3,
                logical_unit: 10,
                len_units: 3,
                tier: 0,
                phys_unit: 900,
            },
            Record::Map {
                vol: 1,
                logical_unit: 0,
                len_units: 1,
                tier: 2,
                phys_unit: 77,
            },
        ] {
            s.apply(&r).unwrap();
        }
        s
    }

    #[test]
    fn roundtrip_and_exact_size() {
        let s = sample();
        let mut v = Vec::new();
        encode_checkpoint(&s, 5, 42, &mut v);
        assert_eq!(v.len() as u64, checkpoint_bytes(&s));
        v.resize(v.len() + 100, 0xAB);
        let c = decode_checkpoint(&v).unwrap();
        assert_eq!(
            c,
            Checkpoint {
                generation: 5,
                seq: 42,
                state: s
            }
        );
    }

    proptest! {
        #[test]
        fn bit_flips_detected(bit in any::<prop::sample::Index>()) {
            let mut v = Vec::new();
            encode_checkpoint(&sample(), 1, 2, &mut v);
            let b = bit.index(v.len() * 8);
            v[b / 8] ^= 1 << (b % 8);
            prop_assert!(decode_checkpoint(&v).is_err());
        }

        #[test]
        fn garbage_never_panics(mut v in proptest::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
            if magic && v.len() >= 4 {
                v[..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
            }
            let _ = decode_checkpoint(&v);
        }

        #[test]
        fn checksum_valid_garbage_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            // Reach the body parser with arbitrary bytes.
            let mut v = Vec::new();
            v.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
            v.extend_from_slice(&[0u8; 16]);
            v.extend_from_slice(&(body.len() as u64).to_le_bytes());
            v.extend_from_slice(&[0u8; 4]);
            v.extend_from_slice(&body);
            let mut crc = crc32c::crc32c(&v[..28]);
            crc = crc32c::crc32c_append(crc, &body);
            v[28..32].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_checkpoint(&v);
        }
    }
}
