//! The LSTM model file: shape, training info, delta and shard vocabularies
//! and weights in one checksummed container.
//!
//! Layout (little endian), format version [`FORMAT_VERSION`]:
//!
//! ```text
//! header (80 bytes)
//!   magic "SHBKLSTM" | version u32 | vocab u32 hidden u32 layers u32
//!   delta_embed u32 aux_embed u32 shards u32 shard_embed u32 |
//!   shard_bytes u64 | sequence_length u32
//!   train_steps u64 | loss f32 | payload_len u64 | payload_crc32c u32
//!   header_crc32c u32 (of the 76 bytes before it)
//! payload (payload_len bytes)
//!   vocab_len u32, then (class u32, delta i64) per assigned delta class
//!   shard_vocab_len u32, then (class u32, volume u32, shard u64) per
//!   assigned shard class
//!   tensor_count u32, then per tensor: name_len u16, name (UTF-8),
//!   ndim u8, dims i64 x ndim, data f32 x product(dims)
//! ```
//!
//! Versions 1 (the delta-only LSTM, 72-byte header) and 2 (no repeat input
//! nor repeat output class, same header) are refused with
//! [`FileError::Version`], whose message says to retrain: their weights do
//! not fit the network (version 3 added the repeat class: a stride named
//! as "the stream's last delta again", whatever the delta vocabulary holds).
//!
//! Contract: [`ModelFile::decode`] never panics; a short, corrupt, foreign,
//! older, newer or internally inconsistent file is a typed [`FileError`]. A file is
//! written to a temporary name beside the target and renamed into place, so
//! a crash leaves the old file or the new one. Pure: no tch (the model
//! turns its variables into [`NamedTensor`]s and back).

use super::config::ModelShape;
use super::vocab::{DeltaVocab, ShardKey, ShardVocab};
use crate::constants::{
    LSTM_MODEL_FILE_MAX_BYTES, LSTM_SHARD_VOCAB_WINDOW_EVENTS, LSTM_VOCAB_MIN_COUNT,
    LSTM_VOCAB_WINDOW_EVENTS,
};
use std::io::Write;
use std::path::Path;

/// File magic.
pub const MAGIC: [u8; 8] = *b"SHBKLSTM";
/// Format version written (and the only one read).
pub const FORMAT_VERSION: u32 = 3;
/// Header bytes.
pub const HEADER_BYTES: usize = 80;

/// Errors reading or writing a model file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("model file i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a shardblk LSTM model file (bad magic)")]
    BadMagic,
    #[error("model file format version {found}, this build reads {supported} only (retrain the model with `shardblk trace train`)")]
    Version { found: u32, supported: u32 },
    #[error("model file truncated: {have} bytes, {need} needed")]
    Truncated { have: u64, need: u64 },
    #[error("model file larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("model file header checksum mismatch")]
    HeaderChecksum,
    #[error("model file payload checksum mismatch (corrupt)")]
    PayloadChecksum,
    #[error("model file corrupt: {0}")]
    Corrupt(String),
    #[error("model file does not match: {0}")]
    Mismatch(String),
}

/// How a model was trained (informational; not checked on load).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct TrainInfo {
    /// Shard size of the training traces.
    pub shard_bytes: u64,
    /// `SEQUENCE_LENGTH` of training.
    pub sequence_length: u32,
    pub train_steps: u64,
    /// Last training loss (mean cross-entropy, nats).
    pub loss: f32,
}

/// One weight tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: Vec<f32>,
}

/// A decoded model file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    pub shape: ModelShape,
    pub info: TrainInfo,
    /// (class, delta) of every assigned vocabulary class.
    pub vocab: Vec<(u32, i64)>,
    /// (class, shard) of every assigned shard class.
    pub shard_vocab: Vec<(u32, ShardKey)>,
    pub tensors: Vec<NamedTensor>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FileError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                FileError::Corrupt(format!("payload ends inside a field at {}", self.at))
            })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FileError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FileError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, FileError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FileError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, FileError> {
        Ok(self.u64()? as i64)
    }
    fn f32(&mut self) -> Result<f32, FileError> {
        Ok(f32::from_bits(self.u32()?))
    }
}

impl ModelFile {
    /// The vocabulary of this file (for a model of its shape).
    pub fn delta_vocab(&self) -> Result<DeltaVocab, FileError> {
        DeltaVocab::from_assignments(
            self.shape.vocab as usize,
            LSTM_VOCAB_WINDOW_EVENTS,
            LSTM_VOCAB_MIN_COUNT,
            &self.vocab,
        )
        .map_err(FileError::Corrupt)
    }

    /// The shard vocabulary of this file (for a model of its shape).
    pub fn shard_vocab(&self) -> Result<ShardVocab, FileError> {
        ShardVocab::from_assignments(
            self.shape.shards as usize,
            LSTM_SHARD_VOCAB_WINDOW_EVENTS,
            LSTM_VOCAB_MIN_COUNT,
            &self.shard_vocab,
        )
        .map_err(FileError::Corrupt)
    }

    /// Serialize.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(self.vocab.len() as u32).to_le_bytes());
        for &(c, d) in &self.vocab {
            p.extend_from_slice(&c.to_le_bytes());
            p.extend_from_slice(&d.to_le_bytes());
        }
        p.extend_from_slice(&(self.shard_vocab.len() as u32).to_le_bytes());
        for &(c, k) in &self.shard_vocab {
            p.extend_from_slice(&c.to_le_bytes());
            p.extend_from_slice(&k.volume.to_le_bytes());
            p.extend_from_slice(&k.shard.to_le_bytes());
        }
        p.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            p.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
            p.extend_from_slice(t.name.as_bytes());
            p.push(t.dims.len() as u8);
            for d in &t.dims {
                p.extend_from_slice(&d.to_le_bytes());
            }
            for x in &t.data {
                p.extend_from_slice(&x.to_le_bytes());
            }
        }
        let s = &self.shape;
        let mut h = Vec::with_capacity(HEADER_BYTES + p.len());
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for v in [
            s.vocab,
            s.hidden,
            s.layers,
            s.delta_embed,
            s.aux_embed,
            s.shards,
            s.shard_embed,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&self.info.shard_bytes.to_le_bytes());
        h.extend_from_slice(&self.info.sequence_length.to_le_bytes());
        h.extend_from_slice(&self.info.train_steps.to_le_bytes());
        h.extend_from_slice(&self.info.loss.to_le_bytes());
        h.extend_from_slice(&(p.len() as u64).to_le_bytes());
        h.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
        let hc = crc32c::crc32c(&h);
        h.extend_from_slice(&hc.to_le_bytes());
        debug_assert_eq!(h.len(), HEADER_BYTES);
        h.extend_from_slice(&p);
        h
    }

    /// Parse and check a whole file image.
    pub fn decode(buf: &[u8]) -> Result<ModelFile, FileError> {
        if buf.len() < MAGIC.len() || buf[..MAGIC.len()] != MAGIC {
            return Err(if buf.len() < MAGIC.len() && MAGIC.starts_with(buf) {
                FileError::Truncated {
                    have: buf.len() as u64,
                    need: HEADER_BYTES as u64,
                }
            } else {
                FileError::BadMagic
            });
        }
        // The version first: an older file's header is shorter.
        if buf.len() >= MAGIC.len() + 4 {
            let version = u32::from_le_bytes(
                buf[MAGIC.len()..MAGIC.len() + 4]
                    .try_into()
                    .expect("4 bytes"),
            );
            if version != FORMAT_VERSION {
                return Err(FileError::Version {
                    found: version,
                    supported: FORMAT_VERSION,
                });
            }
        }
        if buf.len() < HEADER_BYTES {
            return Err(FileError::Truncated {
                have: buf.len() as u64,
                need: HEADER_BYTES as u64,
            });
        }
        let mut r = Reader {
            buf: &buf[..HEADER_BYTES],
            at: MAGIC.len() + 4,
        };
        let stored_hc =
            u32::from_le_bytes(buf[HEADER_BYTES - 4..HEADER_BYTES].try_into().expect("4"));
        if crc32c::crc32c(&buf[..HEADER_BYTES - 4]) != stored_hc {
            return Err(FileError::HeaderChecksum);
        }
        let shape = ModelShape {
            vocab: r.u32()?,
            hidden: r.u32()?,
            layers: r.u32()?,
            delta_embed: r.u32()?,
            aux_embed: r.u32()?,
            shards: r.u32()?,
            shard_embed: r.u32()?,
        };
        let info = TrainInfo {
            shard_bytes: r.u64()?,
            sequence_length: r.u32()?,
            train_steps: r.u64()?,
            loss: r.f32()?,
        };
        let payload_len = r.u64()?;
        let payload_crc = r.u32()?;
        let need = (HEADER_BYTES as u64).saturating_add(payload_len);
        if (buf.len() as u64) < need {
            return Err(FileError::Truncated {
                have: buf.len() as u64,
                need,
            });
        }
        if (buf.len() as u64) > need {
            return Err(FileError::Corrupt(format!(
                "{} bytes after the payload",
                buf.len() as u64 - need
            )));
        }
        let payload = &buf[HEADER_BYTES..];
        if crc32c::crc32c(payload) != payload_crc {
            return Err(FileError::PayloadChecksum);
        }
        shape
            .validate()
            .map_err(|e| FileError::Corrupt(format!("shape: {e}")))?;
        let mut r = Reader {
            buf: payload,
            at: 0,
        };
        let nv = r.u32()? as usize;
        if nv > shape.vocab as usize {
            return Err(FileError::Corrupt(format!(
                "{nv} vocabulary entries for {} classes",
                shape.vocab
            )));
        }
        let mut vocab = Vec::with_capacity(nv);
        for _ in 0..nv {
            vocab.push((r.u32()?, r.i64()?));
        }
        let ns = r.u32()? as usize;
        if ns > shape.shards as usize {
            return Err(FileError::Corrupt(format!(
                "{ns} shard vocabulary entries for {} classes",
                shape.shards
            )));
        }
        let mut shard_vocab = Vec::with_capacity(ns);
        for _ in 0..ns {
            let c = r.u32()?;
            let volume = r.u32()?;
            let shard = r.u64()?;
            shard_vocab.push((c, ShardKey { volume, shard }));
        }
        let nt = r.u32()? as usize;
        let mut tensors = Vec::new();
        for _ in 0..nt {
            let name_len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(name_len)?)
                .map_err(|_| FileError::Corrupt("tensor name is not UTF-8".into()))?
                .to_string();
            let ndim = usize::from(r.u8()?);
            let mut dims = Vec::with_capacity(ndim);
            let mut numel: u64 = 1;
            for _ in 0..ndim {
                let d = r.i64()?;
                numel = u64::try_from(d)
                    .ok()
                    .and_then(|d| numel.checked_mul(d))
                    .filter(|&n| n <= LSTM_MODEL_FILE_MAX_BYTES / 4)
                    .ok_or_else(|| FileError::Corrupt(format!("tensor {name}: bad dims")))?;
                dims.push(d);
            }
            let bytes = r.take(numel as usize * 4)?;
            let data = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            tensors.push(NamedTensor { name, dims, data });
        }
        if r.at != payload.len() {
            return Err(FileError::Corrupt("trailing bytes in the payload".into()));
        }
        let f = ModelFile {
            shape,
            info,
            vocab,
            shard_vocab,
            tensors,
        };
        f.delta_vocab()?;
        f.shard_vocab()?;
        Ok(f)
    }

    /// Read and decode `path`.
    pub fn read(path: &Path) -> Result<ModelFile, FileError> {
        let len = std::fs::metadata(path)?.len();
        if len > LSTM_MODEL_FILE_MAX_BYTES {
            return Err(FileError::TooLarge {
                max: LSTM_MODEL_FILE_MAX_BYTES,
            });
        }
        ModelFile::decode(&std::fs::read(path)?)
    }

    /// Write to `path` atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| FileError::Io(std::io::Error::other("model path has no file name")))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.encode())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(res?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ModelFile {
        ModelFile {
            shape: ModelShape {
                vocab: 4,
                hidden: 3,
                layers: 1,
                delta_embed: 2,
                aux_embed: 1,
                shards: 2,
                shard_embed: 1,
            },
            info: TrainInfo {
                shard_bytes: 1 << 20,
                sequence_length: 16,
                train_steps: 9,
                loss: 1.5,
            },
            vocab: vec![(1, 1), (3, -7)],
            shard_vocab: vec![(
                2,
                ShardKey {
                    volume: 3,
                    shard: 77,
                },
            )],
            tensors: vec![
                NamedTensor {
                    name: "a".into(),
                    dims: vec![2, 3],
                    data: vec![1.0, -2.0, 3.5, 0.0, 1e-9, 7.0],
                },
                NamedTensor {
                    name: "b.bias".into(),
                    dims: vec![1],
                    data: vec![0.25],
                },
            ],
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.sbm");
        let f = sample();
        f.write(&p).unwrap();
        assert_eq!(ModelFile::read(&p).unwrap(), f);
        assert_eq!(f.delta_vocab().unwrap().class_of(-7), 3);
        assert_eq!(
            f.shard_vocab().unwrap().class_of(ShardKey {
                volume: 3,
                shard: 77
            }),
            2
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn every_truncation_and_every_bit_flip_fails_cleanly() {
        let img = sample().encode();
        for n in 0..img.len() {
            assert!(
                ModelFile::decode(&img[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        assert!(matches!(
            ModelFile::decode(&img[..HEADER_BYTES + 3]),
            Err(FileError::Truncated { .. })
        ));
        for i in 0..img.len() {
            for bit in [0, 3, 7] {
                let mut bad = img.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    ModelFile::decode(&bad).is_err(),
                    "flip at byte {i} bit {bit} accepted"
                );
            }
        }
        let mut long = img.clone();
        long.push(0);
        assert!(matches!(
            ModelFile::decode(&long),
            Err(FileError::Corrupt(_))
        ));
    }

    #[test]
    fn foreign_and_newer_files_are_typed_errors() {
        assert!(matches!(
            ModelFile::decode(
                b"PK\x03\x04 not a model at all, but long enough to have a header...."
            ),
            Err(FileError::BadMagic)
        ));
        let mut img = sample().encode();
        img[8..12].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            ModelFile::decode(&img),
            Err(FileError::Version { found: 4, .. })
        ));
        // A version 2 file (no repeat class) is refused the same way.
        let mut v2 = sample().encode();
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = ModelFile::decode(&v2).unwrap_err();
        assert!(matches!(e, FileError::Version { found: 2, .. }));
        assert!(e.to_string().contains("trace train"), "{e}");
        // A version 1 file (the delta-only model, shorter header) is
        // refused by its version, with the way out in the message.
        let mut v1 = sample().encode();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1.truncate(72);
        let e = ModelFile::decode(&v1).unwrap_err();
        assert!(matches!(e, FileError::Version { found: 1, .. }));
        assert!(e.to_string().contains("trace train"), "{e}");
        // A vocabulary class beyond the shape is caught even with valid checksums.
        let mut f = sample();
        f.vocab.push((5, 2));
        assert!(matches!(
            ModelFile::decode(&f.encode()),
            Err(FileError::Corrupt(_))
        ));
        let mut f = sample();
        f.shard_vocab.push((
            1,
            ShardKey {
                volume: 3,
                shard: 77,
            },
        ));
        assert!(matches!(
            ModelFile::decode(&f.encode()),
            Err(FileError::Corrupt(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ModelFile::read(&dir.path().join("missing")),
            Err(FileError::Io(_))
        ));
    }
}
