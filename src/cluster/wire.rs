//! The shard protocol on the wire: checksummed, versioned frames inside
//! tokio-util's `LengthDelimitedCodec` (a 4-byte big-endian length prefix,
//! frames above `CLUSTER_FRAME_MAX_BYTES` refused).
//!
//! Frame layout (little endian), after the length prefix:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `SBW1` |
//! | 4 | protocol version (1) |
//! | 5 | kind: 0 request, 1 response |
//! | 6..8 | reserved, 0 |
//! | 8..16 | request id (a response echoes it) |
//! | 16..20 | control length `c` |
//! | 20..24 | data length `d` |
//! | 24..28 | crc32c of bytes 0..24, the control and the data |
//! | 28..28+c | control: the request or response as JSON, blocks elided |
//! | 28+c.. | data: the elided blocks, `CLUSTER_BLOCK_BYTES` each, in order |
//!
//! Contract: [`FrameCodec`] yields only frames whose magic, version, kind,
//! lengths and checksum are right; anything else is a [`WireError`] and the
//! connection is to be dropped (a stream with one bad frame cannot be
//! resynchronised). Data travels as raw bytes (no JSON encoding of blocks);
//! decoded blocks are zero-copy slices of the received frame.

use super::proto::{Request, Response};
use crate::constants::{CLUSTER_BLOCK_BYTES, CLUSTER_FRAME_MAX_BYTES};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

pub const FRAME_MAGIC: [u8; 4] = *b"SBW1";
pub const FRAME_VERSION: u8 = 1;
pub const FRAME_HEADER_BYTES: usize = 28;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("bad frame kind {0}")]
    Kind(u8),
    #[error("frame of {got} bytes, header says {want}")]
    Length { got: usize, want: usize },
    #[error("frame checksum mismatch (crc32c {got:08x}, header {want:08x})")]
    Checksum { got: u32, want: u32 },
    #[error("control part: {0}")]
    Control(#[from] serde_json::Error),
    #[error("data part of {got} bytes for {blocks} blocks")]
    Data { got: usize, blocks: usize },
    #[error("{0} bytes of data exceed the frame limit")]
    TooLarge(usize),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("connection closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request = 0,
    Response = 1,
}

/// A checked frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub control: Bytes,
    pub data: Bytes,
}

fn split<T: Serialize>(
    ctl: &T,
    blocks: Vec<Bytes>,
    kind: Kind,
    id: u64,
) -> Result<Frame, WireError> {
    let mut data = BytesMut::with_capacity(blocks.len() * CLUSTER_BLOCK_BYTES as usize);
    for b in &blocks {
        if b.len() != CLUSTER_BLOCK_BYTES as usize {
            return Err(WireError::Data {
                got: b.len(),
                blocks: 1,
            });
        }
        data.put_slice(b);
    }
    Ok(Frame {
        kind,
        id,
        control: Bytes::from(serde_json::to_vec(ctl)?),
        data: data.freeze(),
    })
}

fn join<T: DeserializeOwned>(
    frame: &Frame,
) -> Result<(T, impl FnMut(()) -> Bytes + '_, usize), WireError> {
    let ctl: T = serde_json::from_slice(&frame.control)?;
    let bs = CLUSTER_BLOCK_BYTES as usize;
    let mut at = 0usize;
    let take = move |()| {
        let b = frame.data.slice(at..at + bs);
        at += bs;
        b
    };
    Ok((ctl, take, frame.data.len()))
}

fn check_blocks(n: usize, data_len: usize) -> Result<(), WireError> {
    if n * CLUSTER_BLOCK_BYTES as usize != data_len {
        return Err(WireError::Data {
            got: data_len,
            blocks: n,
        });
    }
    Ok(())
}

fn count_req(r: &Request<()>) -> usize {
    match r {
        Request::Write { blocks, .. } => blocks.len(),
        Request::Install { entries, .. } => entries.len(),
        _ => 0,
    }
}

fn count_resp(r: &Response<()>) -> usize {
    match r {
        Response::Data { blocks, .. } => blocks.len(),
        Response::Blocks { entries } => entries.len(),
        _ => 0,
    }
}

impl Frame {
    pub fn request(id: u64, req: Request<Bytes>) -> Result<Frame, WireError> {
        let mut blocks = Vec::new();
        let ctl = req.map_blocks(|b| blocks.push(b));
        split(&ctl, blocks, Kind::Request, id)
    }

    pub fn response(id: u64, resp: Response<Bytes>) -> Result<Frame, WireError> {
        let mut blocks = Vec::new();
        let ctl = resp.map_blocks(|b| blocks.push(b));
        split(&ctl, blocks, Kind::Response, id)
    }

    pub fn into_request(self) -> Result<Request<Bytes>, WireError> {
        if self.kind != Kind::Request {
            return Err(WireError::Kind(self.kind as u8));
        }
        let (ctl, take, len) = join::<Request<()>>(&self)?;
        check_blocks(count_req(&ctl), len)?;
        Ok(ctl.map_blocks(take))
    }

    pub fn into_response(self) -> Result<Response<Bytes>, WireError> {
        if self.kind != Kind::Response {
            return Err(WireError::Kind(self.kind as u8));
        }
        let (ctl, take, len) = join::<Response<()>>(&self)?;
        check_blocks(count_resp(&ctl), len)?;
        Ok(ctl.map_blocks(take))
    }

    fn checksum(header: &[u8], control: &[u8], data: &[u8]) -> u32 {
        let c = crc32c::crc32c(header);
        let c = crc32c::crc32c_append(c, control);
        crc32c::crc32c_append(c, data)
    }

    /// The frame's bytes (without the length prefix).
    pub fn encode(&self) -> Result<Bytes, WireError> {
        let total = FRAME_HEADER_BYTES + self.control.len() + self.data.len();
        if total > CLUSTER_FRAME_MAX_BYTES {
            return Err(WireError::TooLarge(total));
        }
        let mut b = BytesMut::with_capacity(total);
        b.put_slice(&FRAME_MAGIC);
        b.put_u8(FRAME_VERSION);
        b.put_u8(self.kind as u8);
        b.put_u16_le(0);
        b.put_u64_le(self.id);
        b.put_u32_le(self.control.len() as u32);
        b.put_u32_le(self.data.len() as u32);
        let crc = Self::checksum(&b[..24], &self.control, &self.data);
        b.put_u32_le(crc);
        b.put_slice(&self.control);
        b.put_slice(&self.data);
        Ok(b.freeze())
    }

    /// Check and split one frame's bytes.
    pub fn decode(mut buf: Bytes) -> Result<Frame, WireError> {
        if buf.len() < FRAME_HEADER_BYTES {
            return Err(WireError::Length {
                got: buf.len(),
                want: FRAME_HEADER_BYTES,
            });
        }
        let header = buf.slice(..24);
        let mut h = &buf[..FRAME_HEADER_BYTES];
        let mut magic = [0u8; 4];
        h.copy_to_slice(&mut magic);
        if magic != FRAME_MAGIC {
            return Err(WireError::Magic(magic));
        }
        let version = h.get_u8();
        if version != FRAME_VERSION {
            return Err(WireError::Version(version));
        }
        let kind = match h.get_u8() {
            0 => Kind::Request,
            1 => Kind::Response,
            k => return Err(WireError::Kind(k)),
        };
        let _reserved = h.get_u16_le();
        let id = h.get_u64_le();
        let c = h.get_u32_le() as usize;
        let d = h.get_u32_le() as usize;
        let want_crc = h.get_u32_le();
        let want = FRAME_HEADER_BYTES + c + d;
        if buf.len() != want {
            return Err(WireError::Length {
                got: buf.len(),
                want,
            });
        }
        buf.advance(FRAME_HEADER_BYTES);
        let control = buf.split_to(c);
        let data = buf;
        let got = Self::checksum(&header, &control, &data);
        if got != want_crc {
            return Err(WireError::Checksum {
                got,
                want: want_crc,
            });
        }
        Ok(Frame {
            kind,
            id,
            control,
            data,
        })
    }
}

/// `LengthDelimitedCodec` carrying checked [`Frame`]s.
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .max_frame_length(CLUSTER_FRAME_MAX_BYTES)
                .new_codec(),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.inner.decode(src)? {
            Some(b) => Frame::decode(b.freeze()).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        let b = item.encode()?;
        self.inner.encode(b, dst)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::epoch::{Epoch, Version};

    fn block(fill: u8) -> Bytes {
        Bytes::from(vec![fill; CLUSTER_BLOCK_BYTES as usize])
    }

    fn write_req() -> Request<Bytes> {
        Request::Write {
            volume: "vol".into(),
            epoch: Epoch { term: 3, owner: 9 },
            first_block: 17,
            version: Version {
                epoch: Epoch { term: 3, owner: 9 },
                seq: 4,
            },
            blocks: vec![block(1), block(2)],
        }
    }

    fn roundtrip(f: Frame) -> Frame {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(f, &mut buf).unwrap();
        let got = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        got
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let f = roundtrip(Frame::request(42, write_req()).unwrap());
        assert_eq!(f.id, 42);
        assert_eq!(f.data.len(), 2 * CLUSTER_BLOCK_BYTES as usize);
        assert_eq!(f.into_request().unwrap(), write_req());
        let resp = Response::Data {
            versions: vec![Version::ZERO],
            blocks: vec![block(7)],
        };
        let f = roundtrip(Frame::response(1, resp.clone()).unwrap());
        assert_eq!(f.clone().into_response().unwrap(), resp);
        // a response is not a request
        assert!(matches!(f.into_request(), Err(WireError::Kind(1))));
        // rebalancing's guarded install and drop
        let v = Version {
            epoch: Epoch { term: 2, owner: 5 },
            seq: 8,
        };
        let install = Request::Install {
            volume: "vol".into(),
            epoch: v.epoch,
            entries: vec![(4, v, block(3)), (6, v, block(4))],
            guard: Some((4, v)),
        };
        let f = roundtrip(Frame::request(7, install.clone()).unwrap());
        assert_eq!(f.data.len(), 2 * CLUSTER_BLOCK_BYTES as usize);
        assert_eq!(f.into_request().unwrap(), install);
        let drop = Request::<Bytes>::Drop {
            volume: "vol".into(),
            epoch: v.epoch,
            first_block: 4,
            n_blocks: 256,
            record: v,
        };
        let f = roundtrip(Frame::request(8, drop.clone()).unwrap());
        assert!(f.data.is_empty());
        assert_eq!(f.into_request().unwrap(), drop);
    }

    #[test]
    fn an_install_without_a_guard_field_decodes_as_unguarded() {
        // what a sender from before `guard` existed puts in the control part
        let ctl = br#"{"Install":{"volume":"v","epoch":{"term":1,"owner":2},"entries":[]}}"#;
        let req: Request<()> = serde_json::from_slice(ctl).unwrap();
        assert!(matches!(req, Request::Install { guard: None, .. }));
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut codec = FrameCodec::default();
        let mut full = BytesMut::new();
        codec
            .encode(Frame::request(1, write_req()).unwrap(), &mut full)
            .unwrap();
        let mut part = full.split_to(100);
        assert!(codec.decode(&mut part).unwrap().is_none());
        part.unsplit(full);
        assert!(codec.decode(&mut part).unwrap().is_some());
    }

    #[test]
    fn every_corrupted_byte_is_rejected() {
        let bytes = Frame::request(5, write_req()).unwrap().encode().unwrap();
        // flip one byte at a spread of positions: header, control, data
        let step = bytes.len() / 97;
        for pos in (0..bytes.len()).step_by(step.max(1)) {
            let mut bad = bytes.to_vec();
            bad[pos] ^= 0x40;
            let r = Frame::decode(Bytes::from(bad));
            assert!(r.is_err(), "flip at {pos} accepted");
        }
        // truncated and extended frames
        assert!(Frame::decode(bytes.slice(..bytes.len() - 1)).is_err());
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            Frame::decode(Bytes::from(long)),
            Err(WireError::Length { .. })
        ));
        assert!(Frame::decode(bytes.slice(..10)).is_err());
    }

    #[test]
    fn bad_version_and_wrong_block_sizes_are_rejected() {
        let mut bytes = Frame::request(5, write_req())
            .unwrap()
            .encode()
            .unwrap()
            .to_vec();
        bytes[4] = 2;
        assert!(matches!(
            Frame::decode(Bytes::from(bytes)),
            Err(WireError::Version(2))
        ));
        let mut short = write_req();
        if let Request::Write { blocks, .. } = &mut short {
            blocks[0] = Bytes::from_static(b"short");
        }
        assert!(matches!(
            Frame::request(1, short),
            Err(WireError::Data { .. })
        ));
        // a control part promising more blocks than the data holds
        let mut f = Frame::request(1, write_req()).unwrap();
        f.data = f.data.slice(..CLUSTER_BLOCK_BYTES as usize);
        assert!(matches!(f.into_request(), Err(WireError::Data { .. })));
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let n = crate::constants::CLUSTER_FRAME_MAX_BYTES / CLUSTER_BLOCK_BYTES as usize + 1;
        let mut big = write_req();
        if let Request::Write { blocks, .. } = &mut big {
            *blocks = (0..n).map(|_| block(0)).collect();
        }
        let f = Frame::request(1, big).unwrap();
        assert!(matches!(f.encode(), Err(WireError::TooLarge(_))));
        // a length prefix above the limit is refused by the codec
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        buf.put_slice(&[0; 64]);
        assert!(codec.decode(&mut buf).is_err());
    }
}
