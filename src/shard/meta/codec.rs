//! Binary codec of metadata log frames (engine.md "Metadata").
//!
//! Contract:
//! - A frame is `magic u32 | len u32 | generation u64 | seq u64 | type u8 |
//!   payload | crc32c u32`, little endian; `len` is the whole frame in bytes
//!   and the crc covers every byte before it. The magic carries the format
//!   version (`SBR1`): a future layout gets a new magic.
//! - Types 1..=6 are the [`Record`]s; type [`BATCH_TYPE`] is the log's own
//!   batch header (one per `sync` batch, see `log.rs`).
//! - [`decode_frame`] never panics on any input. It checks, in order: magic
//!   ([`DecodeError::NotARecord`]), length bounds ([`DecodeError::BadLength`],
//!   [`DecodeError::Truncated`]): together "not a record / torn"; then the
//!   checksum ([`DecodeError::BadChecksum`]); only then the type and payload
//!   (unknown type, bad UTF-8, names over [`NAME_LEN_MAX_BYTES`], policies over
//!   [`META_POLICY_MAX_BYTES`], trailing bytes). Any single-bit flip of a frame
//!   is therefore rejected.

use crate::constants::{META_POLICY_MAX_BYTES, META_RECORD_MAX_BYTES, NAME_LEN_MAX_BYTES};

/// `SBR1`: shardblk record, layout version 1.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SBR1");
/// magic + len + generation + seq + type.
pub const FRAME_HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 1;
/// The trailing crc32c.
pub const FRAME_TRAILER_BYTES: usize = 4;
/// Smallest possible frame (empty payload).
pub const FRAME_MIN_BYTES: usize = FRAME_HEADER_BYTES + FRAME_TRAILER_BYTES;
/// Type byte of the log's batch header frame.
pub const BATCH_TYPE: u8 = 0x40;

const T_CREATE: u8 = 1;
const T_DELETE: u8 = 2;
const T_RESIZE: u8 = 3;
const T_POLICY: u8 = 4;
const T_MAP: u8 = 5;
const T_UNMAP: u8 = 6;

/// One change to the pool metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    CreateVolume {
        id: u32,
        name: String,
        size_bytes: u64,
        shard_size_bytes: u64,
        policy: Vec<u8>,
    },
    DeleteVolume {
        id: u32,
    },
    ResizeVolume {
        id: u32,
        size_bytes: u64,
    },
    SetPolicy {
        id: u32,
        policy: Vec<u8>,
    },
    /// Units `[logical_unit, logical_unit + len_units)` of volume `vol` now live
    /// at `[phys_unit, ..)` on tier `tier`; replaces whatever overlapped.
    Map {
        vol: u32,
        logical_unit: u64,
        len_units: u64,
        tier: u8,
        phys_unit: u64,
    },
    Unmap {
        vol: u32,
        logical_unit: u64,
        len_units: u64,
    },
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameBody {
    Record(Record),
    /// Header of one `sync` batch: the batch is `blocks` whole blocks starting
    /// with this frame and holds `records` records, the first with this
    /// frame's `seq`.
    Batch {
        blocks: u32,
        records: u32,
    },
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub generation: u64,
    pub seq: u64,
    pub body: FrameBody,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a record (magic {found:#010x})")]
    NotARecord { found: u32 },
    #[error("bad frame length {len}")]
    BadLength { len: u64 },
    #[error("truncated frame: {len} bytes announced, {available} available")]
    Truncated { len: usize, available: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("malformed payload: {0}")]
    BadPayload(&'static str),
}

impl DecodeError {
    /// True for "not a record / torn" (no frame starts here, or it runs past
    /// the bytes written); false for a frame whose checksum or content is bad.
    pub fn is_torn(&self) -> bool {
        matches!(
            self,
            DecodeError::NotARecord { .. }
                | DecodeError::BadLength { .. }
                | DecodeError::Truncated { .. }
        )
    }
}

/// Why a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("name of {0} bytes exceeds {NAME_LEN_MAX_BYTES}")]
    NameTooLong(usize),
    #[error("policy of {0} bytes exceeds {META_POLICY_MAX_BYTES}")]
    PolicyTooLarge(usize),
}

/// Little-endian writer over a `Vec<u8>`.
pub(crate) struct Put<'a>(pub(crate) &'a mut Vec<u8>);

impl Put<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
}

/// Little-endian reader; every getter returns `None` past the end.
pub(crate) struct Get<'a>(pub(crate) &'a [u8]);

impl<'a> Get<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    pub(crate) fn u128(&mut self) -> Option<u128> {
        self.take(16)
            .map(|b| u128::from_le_bytes(b.try_into().expect("16 bytes")))
    }
    pub(crate) fn remaining(&self) -> usize {
        self.0.len()
    }
}

/// Check the variable-size fields of a record against their limits.
pub fn check_record(r: &Record) -> Result<(), EncodeError> {
    if let Record::CreateVolume { name, .. } = r {
        if name.len() > NAME_LEN_MAX_BYTES {
            return Err(EncodeError::NameTooLong(name.len()));
        }
    }
    if let Record::CreateVolume { policy, .. } | Record::SetPolicy { policy, .. } = r {
        if policy.len() > META_POLICY_MAX_BYTES {
            return Err(EncodeError::PolicyTooLarge(policy.len()));
        }
    }
    Ok(())
}

/// Encoded size of a record's frame.
pub fn record_frame_len(r: &Record) -> usize {
    FRAME_MIN_BYTES
        + match r {
            Record::CreateVolume { name, policy, .. } => {
                4 + 2 + name.len() + 8 + 8 + 4 + policy.len()
            }
            Record::DeleteVolume { .. } => 4,
            Record::ResizeVolume { .. } => 4 + 8,
            Record::SetPolicy { policy, .. } => 4 + 4 + policy.len(),
            Record::Map { .. } => 4 + 8 + 8 + 1 + 8,
            Record::Unmap { .. } => 4 + 8 + 8,
        }
}

/// Encoded size of a batch header frame.
pub const BATCH_FRAME_BYTES: usize = FRAME_MIN_BYTES + 8;

/// Append the encoding of `frame` to `out`.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if let FrameBody::Record(r) = &frame.body {
        check_record(r)?;
    }
    let start = out.len();
    let mut p = Put(out);
    p.u32(RECORD_MAGIC);
    p.u32(0); // length, patched below
    p.u64(frame.generation);
    p.u64(frame.seq);
    match &frame.body {
        FrameBody::Batch { blocks, records } => {
            p.u8(BATCH_TYPE);
            p.u32(*blocks);
            p.u32(*records);
        }
        FrameBody::Record(r) => match r {
            Record::CreateVolume {
                id,
                name,
                size_bytes,
                shard_size_bytes,
                policy,
            } => {
                p.u8(T_CREATE);
                p.u32(*id);
                p.u16(name.len() as u16);
                p.bytes(name.as_bytes());
                p.u64(*size_bytes);
                p.u64(*shard_size_bytes);
                p.u32(policy.len() as u32);
                p.bytes(policy);
            }
            Record::DeleteVolume { id } => {
                p.u8(T_DELETE);
                p.u32(*id);
            }
            Record::ResizeVolume { id, size_bytes } => {
                p.u8(T_RESIZE);
                p.u32(*id);
                p.u64(*size_bytes);
            }
            Record::SetPolicy { id, policy } => {
                p.u8(T_POLICY);
                p.u32(*id);
                p.u32(policy.len() as u32);
                p.bytes(policy);
            }
            Record::Map {
                vol,
                logical_unit,
                len_units,
                tier,
                phys_unit,
            } => {
                p.u8(T_MAP);
                p.u32(*vol);
                p.u64(*logical_unit);
                p.u64(*len_units);
                p.u8(*tier);
                p.u64(*phys_unit);
            }
            Record::Unmap {
                vol,
                logical_unit,
                len_units,
            } => {
                p.u8(T_UNMAP);
                p.u32(*vol);
                p.u64(*logical_unit);
                p.u64(*len_units);
            }
        },
    }
    let len = (out.len() - start + FRAME_TRAILER_BYTES) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decode the frame at the start of `buf`; returns it and its length in bytes.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    let mut g = Get(buf);
    let magic = g.u32().ok_or(DecodeError::Truncated {
        len: 4,
        available: buf.len(),
    })?;
    if magic != RECORD_MAGIC {
        return Err(DecodeError::NotARecord { found: magic });
    }
    let len = g.u32().ok_or(DecodeError::Truncated {
        len: 8,
        available: buf.len(),
    })? as usize;
    if !(FRAME_MIN_BYTES..=META_RECORD_MAX_BYTES).contains(&len) {
        return Err(DecodeError::BadLength { len: len as u64 });
    }
    if len > buf.len() {
        return Err(DecodeError::Truncated {
            len,
            available: buf.len(),
        });
    }
    let body_end = len - FRAME_TRAILER_BYTES;
    let stored = u32::from_le_bytes(buf[body_end..len].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&buf[..body_end]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let mut g = Get(&buf[8..body_end]);
    let short = DecodeError::BadPayload("payload too short");
    let generation = g.u64().ok_or(short.clone())?;
    let seq = g.u64().ok_or(short.clone())?;
    let ty = g.u8().ok_or(short.clone())?;
    let body = match ty {
        BATCH_TYPE => FrameBody::Batch {
            blocks: g.u32().ok_or(short.clone())?,
            records: g.u32().ok_or(short.clone())?,
        },
        T_CREATE => {
            let id = g.u32().ok_or(short.clone())?;
            let nlen = g.u16().ok_or(short.clone())? as usize;
            if nlen > NAME_LEN_MAX_BYTES {
                return Err(DecodeError::BadPayload("name too long"));
            }
            let name = g.take(nlen).ok_or(short.clone())?;
            let name = std::str::from_utf8(name)
                .map_err(|_| DecodeError::BadPayload("name is not UTF-8"))?
                .to_string();
            let size_bytes = g.u64().ok_or(short.clone())?;
            let shard_size_bytes = g.u64().ok_or(short.clone())?;
            let policy = get_policy(&mut g)?;
            FrameBody::Record(Record::CreateVolume {
                id,
                name,
                size_bytes,
                shard_size_bytes,
                policy,
            })
        }
        T_DELETE => FrameBody::Record(Record::DeleteVolume {
            id: g.u32().ok_or(short.clone())?,
        }),
        T_RESIZE => FrameBody::Record(Record::ResizeVolume {
            id: g.u32().ok_or(short.clone())?,
            size_bytes: g.u64().ok_or(short.clone())?,
        }),
        T_POLICY => {
            let id = g.u32().ok_or(short.clone())?;
            FrameBody::Record(Record::SetPolicy {
                id,
                policy: get_policy(&mut g)?,
            })
        }
        T_MAP => FrameBody::Record(Record::Map {
            vol: g.u32().ok_or(short.clone())?,
            logical_unit: g.u64().ok_or(short.clone())?,
            len_units: g.u64().ok_or(short.clone())?,
            tier: g.u8().ok_or(short.clone())?,
            phys_unit: g.u64().ok_or(short.clone())?,
        }),
        T_UNMAP => FrameBody::Record(Record::Unmap {
            vol: g.u32().ok_or(short.clone())?,
            logical_unit: g.u64().ok_or(short.clone())?,
            len_units: g.u64().ok_or(short.clone())?,
        }),
        other => return Err(DecodeError::UnknownType(other)),
    };
    if g.remaining() != 0 {
        return Err(DecodeError::BadPayload("trailing bytes"));
    }
    Ok((
        Frame {
            generation,
            seq,
            body,
        },
        len,
    ))
}

fn get_policy(g: &mut Get<'_>) -> Result<Vec<u8>, DecodeError> {
    let short = DecodeError::BadPayload("payload too short");
    let plen = g.u32().ok_or(short.clone())? as usize;
    if plen > META_POLICY_MAX_BYTES {
        return Err(DecodeError::BadPayload("policy too large"));
    }
    Ok(g.take(plen).ok_or(short)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (
                any::<u32>(),
                "[a-zA-Zé0-9_-]{0,16}",
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(id, name, size_bytes, shard_size_bytes, policy)| {
                    Record::CreateVolume {
                        id,
                        name,
                        size_bytes,
                        shard_size_bytes,
                        policy,
                    }
                }),
            any::<u32>().prop_map(|id| Record::DeleteVolume { id }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(id, size_bytes)| Record::ResizeVolume { id, size_bytes }),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(id, policy)| Record::SetPolicy { id, policy }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u8>(),
                any::<u64>()
            )
                .prop_map(|(vol, logical_unit, len_units, tier, phys_unit)| {
                    Record::Map {
                        vol,
                        logical_unit,
                        len_units,
                        tier,
                        phys_unit,
                    }
                }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
                |(vol, logical_unit, len_units)| Record::Unmap {
                    vol,
                    logical_unit,
                    len_units
                }
            ),
        ]
    }

    fn enc(gen: u64, seq: u64, r: &Record) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(
            &Frame {
                generation: gen,
                seq,
                body: FrameBody::Record(r.clone()),
            },
            &mut v,
        )
        .unwrap();
        v
    }

    proptest! {
        #[test]
        fn roundtrip(r in arb_record(), gen in any::<u64>(), seq in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut v = enc(gen, seq, &r);
            prop_assert_eq!(v.len(), record_frame_len(&r));
            let n = v.len();
            v.extend_from_slice(&tail);
            let (f, len) = decode_frame(&v).unwrap();
            prop_assert_eq!(len, n);
            prop_assert_eq!(f, Frame { generation: gen, seq, body: FrameBody::Record(r) });
        }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frame(&b);
        }

        #[test]
        fn random_bytes_behind_valid_header_never_panic(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..120)) {
            // A checksum-valid frame with arbitrary type and payload reaches the payload parser.
            let mut v = Vec::new();
            v.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            v.extend_from_slice(&((FRAME_MIN_BYTES + body.len()) as u32).to_le_bytes());
            v.extend_from_slice(&[0u8; 16]);
            v.push(ty);
            v.extend_from_slice(&body);
            let crc = crc32c::crc32c(&v);
            v.extend_from_slice(&crc.to_le_bytes());
            let _ = decode_frame(&v);
        }

        #[test]
        fn single_bit_flip_detected(r in arb_record(), bit in any::<prop::sample::Index>()) {
            let mut v = enc(7, 9, &r);
            let b = bit.index(v.len() * 8);
            v[b / 8] ^= 1 << (b % 8);
            prop_assert!(decode_frame(&v).is_err());
        }
    }

    #[test]
    fn errors_are_typed() {
        let r = Record::CreateVolume {
            id: 1,
            name: "v".into(),
            size_bytes: 1,
            shard_size_bytes: 2,
            policy: vec![],
        };
        let v = enc(1, 1, &r);
        assert!(matches!(
            decode_frame(&[0u8; 64]),
            Err(DecodeError::NotARecord { found: 0 })
        ));
        assert!(decode_frame(&[0u8; 64]).unwrap_err().is_torn());
        assert!(matches!(
            decode_frame(&v[..v.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = v.clone();
        bad[20] ^= 0x10;
        let e = decode_frame(&bad).unwrap_err();
        assert!(matches!(e, DecodeError::BadChecksum { .. }) && !e.is_torn());
        let mut big = v.clone();
        big[4..8].copy_from_slice(&(META_RECORD_MAX_BYTES as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode_frame(&big),
            Err(DecodeError::BadLength { .. })
        ));
        // Bad UTF-8 and over-long names with a valid checksum.
        let mut utf = enc(
            1,
            1,
            &Record::CreateVolume {
                id: 1,
                name: "ab".into(),
                size_bytes: 1,
                shard_size_bytes: 2,
                policy: vec![],
            },
        );
        utf[FRAME_HEADER_BYTES + 6] = 0xff;
        let n = utf.len() - 4;
        let crc = crc32c::crc32c(&utf[..n]);
        utf[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_frame(&utf),
            Err(DecodeError::BadPayload("name is not UTF-8"))
        );
        let long = Record::CreateVolume {
            id: 1,
            name: "x".repeat(NAME_LEN_MAX_BYTES + 1),
            size_bytes: 1,
            shard_size_bytes: 2,
            policy: vec![],
        };
        assert!(matches!(
            encode_frame(
                &Frame {
                    generation: 0,
                    seq: 0,
                    body: FrameBody::Record(long)
                },
                &mut Vec::new()
            ),
            Err(EncodeError::NameTooLong(_))
        ));
        // A checksum-valid frame announcing a name one byte over the limit.
        let mut over = enc(
            1,
            1,
            &Record::CreateVolume {
                id: 1,
                name: "x".repeat(NAME_LEN_MAX_BYTES),
                size_bytes: 1,
                shard_size_bytes: 2,
                policy: vec![],
            },
        );
        over[FRAME_HEADER_BYTES + 4..FRAME_HEADER_BYTES + 6]
            .copy_from_slice(&(NAME_LEN_MAX_BYTES as u16 + 1).to_le_bytes());
        let n = over.len() - 4;
        let crc = crc32c::crc32c(&over[..n]);
        over[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_frame(&over),
            Err(DecodeError::BadPayload("name too long"))
        );
        let mut unk = enc(1, 1, &Record::DeleteVolume { id: 3 });
        unk[FRAME_HEADER_BYTES - 1] = 99;
        let n = unk.len() - 4;
        let crc = crc32c::crc32c(&unk[..n]);
        unk[n..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_frame(&unk), Err(DecodeError::UnknownType(99)));
    }
}
