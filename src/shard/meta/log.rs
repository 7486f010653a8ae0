//! The durable metadata state machine: two checkpoint slots and a log ring in
//! one region of the metadata device (engine.md "Metadata").
//!
//! Layout: slot A at `region.offset`, slot B right after it, then the log of
//! `log_bytes`. The log is written from its head in **batches**: one per
//! `sync`, whole blocks, starting with a batch header frame (`blocks`,
//! `records`, seq of the first record) followed by the records, padded with
//! zeros to a block boundary. A block holding durable records is never
//! rewritten: the next batch starts at the next block.
//!
//! Checkpoint `g` holds the state through seq `S`; the log that follows it
//! has generation `g + 1` and seqs `S + 1, S + 2, ..` (seqs are global: they
//! are the [`Lsn`]s). A checkpoint is written to the slot not holding the
//! newest valid checkpoint and synced *before* the log restarts at its head
//! with the next generation, so until then the old checkpoint + old log stay
//! complete.
//!
//! Replay ([`MetaLog::open`]): the newest valid checkpoint, then the batches
//! of its generation + 1 in order with consecutive seqs. A batch is applied
//! only whole; the first invalid batch ends the log (a torn tail: at most one
//! batch is ever un-synced, the last). If a valid batch header of the same
//! generation lies beyond the end of that torn batch, a batch written after
//! it was durable, so the invalid one was durable too: [`MetaError::Corrupt`]
//! naming the offset of the first invalid frame. If the newest checkpoint is
//! unreadable, replay falls back to the other slot; that is correct exactly
//! when the log was not restarted after the lost checkpoint, i.e. when the
//! ring holds no valid batch header of a generation above the replayed one,
//! otherwise opening fails with `Corrupt` instead of silently losing records.
//! Not detectable: corruption inside the last durable batch (it looks torn),
//! and a lost newest checkpoint combined with a torn first batch of the new
//! generation in which no header survived.
//!
//! Locking: `inner` (a short mutex) holds the state, the queue of records not
//! yet written and the seq counters; `append` takes only it. `writer` is held
//! by the one thread doing log I/O (the sync "leader") for the whole
//! write + device sync (+ checkpoint). A `sync` caller notes the last
//! appended seq, takes `writer` (waiting behind an in-flight sync), and
//! returns at once if that sync covered its records; otherwise it becomes the
//! leader and writes every queued record in one batch (group commit). Lock
//! order: `writer` before `inner`; `inner` is never held across I/O except
//! while a checkpoint encodes the state (a copy of O(state) bytes).
//! Any I/O error poisons the log ([`MetaError::Poisoned`]): what reached the
//! device is unknown, so the caller must reopen.

use super::checkpoint::{
    announced_len, checkpoint_bytes, decode_checkpoint, encode_checkpoint, Checkpoint,
    CheckpointError, CHECKPOINT_HEADER_BYTES,
};
use super::codec::{
    decode_frame, encode_frame, record_frame_len, Frame, FrameBody, Record, BATCH_FRAME_BYTES,
};
use super::state::{MetaState, StateError};
use crate::constants::{
    BLOCK_SIZE_BYTES, META_CHECKPOINT_BYTES_PER_UNIT, META_CHECKPOINT_SLOT_FLOOR_BYTES,
    META_CHECKPOINT_SLOT_MIN_BYTES, META_LOG_CHECKPOINT_PERCENT, META_LOG_MIN_BYTES,
    META_LOG_SIZE_BYTES,
};
use crate::io::{AlignedBuf, BlockDev, IoError};
use std::sync::{Arc, Mutex, MutexGuard};

const B: u64 = BLOCK_SIZE_BYTES;
/// Zeroing chunk used by `format`.
const FORMAT_CHUNK_BYTES: usize = 1 << 20;

/// Log sequence number of an appended record (global, starts at 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Where the metadata lives on the metadata device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaRegion {
    /// Byte offset of checkpoint slot A.
    pub offset: u64,
    pub checkpoint_slot_bytes: u64,
    pub log_bytes: u64,
}

impl MetaRegion {
    /// The region a pool of `pool_capacity_units` units needs at `offset`:
    /// slots of `max(META_CHECKPOINT_SLOT_MIN_BYTES, units * META_CHECKPOINT_BYTES_PER_UNIT)`
    /// rounded up to a block, and a `META_LOG_SIZE_BYTES` log.
    pub fn sized_for(offset: u64, pool_capacity_units: u64) -> MetaRegion {
        let slot = pool_capacity_units
            .saturating_mul(META_CHECKPOINT_BYTES_PER_UNIT)
            .max(META_CHECKPOINT_SLOT_MIN_BYTES)
            .div_ceil(B)
            * B;
        MetaRegion {
            offset,
            checkpoint_slot_bytes: slot,
            log_bytes: META_LOG_SIZE_BYTES,
        }
    }
    pub fn slot_offset(&self, slot: usize) -> u64 {
        self.offset + slot as u64 * self.checkpoint_slot_bytes
    }
    pub fn log_offset(&self) -> u64 {
        self.offset + 2 * self.checkpoint_slot_bytes
    }
    pub fn total_bytes(&self) -> u64 {
        2 * self.checkpoint_slot_bytes + self.log_bytes
    }
    /// First byte after the region.
    pub fn end(&self) -> u64 {
        self.offset + self.total_bytes()
    }
    /// Check alignment, minimum sizes and that the region fits `dev_size` bytes.
    pub fn validate(&self, dev_size: u64) -> Result<(), MetaError> {
        let bad = |why: &'static str| Err(MetaError::BadRegion { region: *self, why });
        if self.offset % B != 0 || self.checkpoint_slot_bytes % B != 0 || self.log_bytes % B != 0 {
            return bad("offset and sizes must be block multiples");
        }
        if self.checkpoint_slot_bytes < META_CHECKPOINT_SLOT_FLOOR_BYTES
            || self.log_bytes < META_LOG_MIN_BYTES
        {
            return bad("checkpoint slot or log too small");
        }
        match self
            .checkpoint_slot_bytes
            .checked_mul(2)
            .and_then(|s| s.checked_add(self.log_bytes))
            .and_then(|t| t.checked_add(self.offset))
        {
            Some(end) if end <= dev_size => Ok(()),
            _ => bad("region does not fit the device"),
        }
    }
}

/// Errors of the metadata log.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata device I/O: {0}")]
    Io(#[from] IoError),
    #[error("bad metadata region {region:?}: {why}")]
    BadRegion {
        region: MetaRegion,
        why: &'static str,
    },
    #[error("no valid checkpoint: slot A: {slot_a}; slot B: {slot_b}")]
    NoCheckpoint { slot_a: String, slot_b: String },
    #[error("metadata corrupt at device offset {offset}: {detail}")]
    Corrupt { offset: u64, detail: String },
    #[error("record rejected: {0}")]
    Invalid(#[from] StateError),
    #[error("metadata full: the state would need a {need_bytes}-byte checkpoint, slots hold {slot_bytes}")]
    Full { need_bytes: u64, slot_bytes: u64 },
    #[error("metadata log unusable after an earlier I/O error; reopen the pool")]
    Poisoned,
}

/// What `open` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Slot (0 = A, 1 = B) of the checkpoint replay started from.
    pub checkpoint_slot: usize,
    pub checkpoint_generation: u64,
    pub checkpoint_seq: u64,
    /// The other slot's problem when it holds no valid checkpoint.
    pub bad_slot: Option<(usize, String)>,
    /// True when the other slot held a damaged checkpoint (its magic is
    /// there, its checksum or size is not), which may have been the newer one
    /// (a torn checkpoint write); replay then used this older checkpoint and
    /// its log, which the module doc shows is still complete.
    pub fell_back: bool,
    pub replayed_batches: u64,
    pub replayed_records: u64,
    /// A discarded torn batch at the end of the log (0 or 1) and its bytes.
    pub torn_batches: u64,
    pub torn_bytes: u64,
    /// Why the log ended (the first invalid frame), if it did not end at the ring's end.
    pub end_reason: Option<String>,
}

struct Inner {
    state: MetaState,
    /// Appended, not yet written.
    queue: Vec<(u64, Record)>,
    next_seq: u64,
    durable_seq: u64,
    poisoned: bool,
}

struct Writer {
    /// Generation of the log records being written (checkpoint generation + 1).
    generation: u64,
    /// Next write offset inside the log (block aligned).
    pos: u64,
    /// Slot holding the newest valid checkpoint.
    slot: usize,
    enc: Vec<u8>,
}

/// The persistent, crash-safe pool metadata. `Send + Sync`.
pub struct MetaLog {
    dev: Arc<dyn BlockDev>,
    region: MetaRegion,
    inner: Mutex<Inner>,
    writer: Mutex<Writer>,
    recovery: Recovery,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent data in this module (every
    // mutation completes before any call that can panic), so recover it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_aligned(dev: &dyn BlockDev, bytes: &[u8], offset: u64) -> Result<(), IoError> {
    let mut buf = AlignedBuf::new(bytes.len());
    buf[..bytes.len()].copy_from_slice(bytes);
    dev.write_at(&buf, offset)
}

impl MetaLog {
    /// Initialise an empty metadata region: checkpoint generation 0 (empty
    /// state) in slot A, slot B invalidated, the log zeroed (so nothing of an
    /// earlier pool on the device can be replayed), all synced.
    pub fn format(dev: Arc<dyn BlockDev>, region: MetaRegion) -> Result<MetaLog, MetaError> {
        region.validate(dev.size_bytes())?;
        let zero = AlignedBuf::new(FORMAT_CHUNK_BYTES);
        let mut off = region.log_offset();
        while off < region.end() {
            let n = (region.end() - off).min(FORMAT_CHUNK_BYTES as u64) as usize;
            dev.write_at(&zero[..n], off)?;
            off += n as u64;
        }
        dev.write_at(&zero[..B as usize], region.slot_offset(1))?;
        let mut enc = Vec::new();
        encode_checkpoint(&MetaState::new(), 0, 0, &mut enc);
        write_aligned(&*dev, &enc, region.slot_offset(0))?;
        dev.sync()?;
        let recovery = Recovery {
            bad_slot: Some((1, "formatted empty".into())),
            ..Recovery::default()
        };
        Ok(Self::assemble(
            dev,
            region,
            MetaState::new(),
            0,
            1,
            0,
            0,
            recovery,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dev: Arc<dyn BlockDev>,
        region: MetaRegion,
        state: MetaState,
        last_seq: u64,
        generation: u64,
        pos: u64,
        slot: usize,
        recovery: Recovery,
    ) -> MetaLog {
        MetaLog {
            dev,
            region,
            inner: Mutex::new(Inner {
                state,
                queue: Vec::new(),
                next_seq: last_seq + 1,
                durable_seq: last_seq,
                poisoned: false,
            }),
            writer: Mutex::new(Writer {
                generation,
                pos,
                slot,
                enc: Vec::new(),
            }),
            recovery,
        }
    }

    /// Read slot `slot` and decode it.
    fn read_slot(
        dev: &dyn BlockDev,
        region: &MetaRegion,
        slot: usize,
    ) -> Result<Result<Checkpoint, CheckpointError>, MetaError> {
        let off = region.slot_offset(slot);
        let mut head = AlignedBuf::new(B as usize);
        dev.read_at(&mut head, off)?;
        let len = match announced_len(&head) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let room = region.checkpoint_slot_bytes - CHECKPOINT_HEADER_BYTES as u64;
        if len > room {
            return Ok(Err(CheckpointError::BadLength { len, room }));
        }
        let mut buf = AlignedBuf::new(CHECKPOINT_HEADER_BYTES + len as usize);
        dev.read_at(&mut buf, off)?;
        Ok(decode_checkpoint(&buf))
    }

    /// Open an existing region and replay it (see the module doc).
    pub fn open(dev: Arc<dyn BlockDev>, region: MetaRegion) -> Result<MetaLog, MetaError> {
        region.validate(dev.size_bytes())?;
        let a = Self::read_slot(&*dev, &region, 0)?;
        let b = Self::read_slot(&*dev, &region, 1)?;
        let (slot, cp, bad_slot) = match (a, b) {
            (Ok(a), Ok(b)) => {
                if b.generation > a.generation {
                    (1, b, None)
                } else {
                    (0, a, None)
                }
            }
            (Ok(a), Err(e)) => (0, a, Some((1, e))),
            (Err(e), Ok(b)) => (1, b, Some((0, e))),
            (Err(a), Err(b)) => {
                return Err(MetaError::NoCheckpoint {
                    slot_a: a.to_string(),
                    slot_b: b.to_string(),
                })
            }
        };
        let generation = cp.generation.checked_add(1).ok_or(MetaError::Corrupt {
            offset: region.slot_offset(slot),
            detail: "checkpoint generation overflows".into(),
        })?;
        let mut state = cp.state;
        let mut rec = Recovery {
            checkpoint_slot: slot,
            checkpoint_generation: cp.generation,
            checkpoint_seq: cp.seq,
            fell_back: bad_slot
                .as_ref()
                .is_some_and(|(_, e)| !matches!(e, CheckpointError::NotACheckpoint(_))),
            bad_slot: bad_slot.map(|(s, e)| (s, e.to_string())),
            ..Recovery::default()
        };

        let mut log = AlignedBuf::new(region.log_bytes as usize);
        dev.read_at(&mut log, region.log_offset())?;
        let log_off = region.log_offset();
        let mut seq = cp.seq;
        let mut pos = 0u64;
        // Offset inside the log from which no same-generation header may appear.
        let mut scan_from = region.log_bytes;
        let mut first_bad = 0u64;
        while pos + B <= region.log_bytes {
            match Self::read_batch(&log, pos, region.log_bytes, generation, seq + 1) {
                BatchRead::Valid { records, blocks } => {
                    for (i, r) in records.iter().enumerate() {
                        state.apply(r).map_err(|e| MetaError::Corrupt {
                            offset: log_off + pos,
                            detail: format!(
                                "record {} (seq {}) of the batch does not apply: {e}",
                                i,
                                seq + 1 + i as u64
                            ),
                        })?;
                    }
                    seq += records.len() as u64;
                    rec.replayed_batches += 1;
                    rec.replayed_records += records.len() as u64;
                    pos += blocks * B;
                }
                BatchRead::End { reason } => {
                    rec.end_reason = Some(reason);
                    scan_from = pos + B;
                    first_bad = pos;
                    break;
                }
                BatchRead::Torn {
                    blocks,
                    bad_at,
                    reason,
                } => {
                    rec.end_reason = Some(reason);
                    rec.torn_batches = 1;
                    rec.torn_bytes = blocks * B;
                    scan_from = pos + blocks * B;
                    first_bad = bad_at;
                    break;
                }
                BatchRead::Corrupt { detail } => {
                    return Err(MetaError::Corrupt {
                        offset: log_off + pos,
                        detail,
                    });
                }
            }
        }
        // Corruption scan over every block start.
        let mut q = 0u64;
        while q + B <= region.log_bytes {
            if let Ok((
                Frame {
                    generation: g,
                    body: FrameBody::Batch { .. },
                    seq: s,
                },
                _,
            )) = decode_frame(&log[q as usize..])
            {
                if g > generation {
                    return Err(MetaError::Corrupt {
                        offset: region.slot_offset(1 - slot),
                        detail: format!(
                            "the newest checkpoint is unreadable but the log moved on to generation {g} (batch at device offset {}); replaying the older checkpoint would lose records",
                            log_off + q
                        ),
                    });
                }
                if g == generation && q >= scan_from {
                    return Err(MetaError::Corrupt {
                        offset: log_off + first_bad,
                        detail: format!(
                            "invalid log data ({}) followed by a durable batch (seq {s}) at device offset {}",
                            rec.end_reason.as_deref().unwrap_or("?"),
                            log_off + q
                        ),
                    });
                }
            }
            q += B;
        }
        let log = Self::assemble(dev, region, state, seq, generation, pos, slot, rec);
        Ok(log)
    }

    /// Read the batch at `pos` of generation `gen` whose first record must be `seq`.
    fn read_batch(log: &[u8], pos: u64, log_bytes: u64, gen: u64, seq: u64) -> BatchRead {
        let p = pos as usize;
        let (blocks, nrec, hlen) = match decode_frame(&log[p..]) {
            Ok((
                Frame {
                    generation,
                    seq: s,
                    body: FrameBody::Batch { blocks, records },
                },
                hlen,
            )) if generation == gen => {
                if s != seq || blocks == 0 || records == 0 || pos + blocks as u64 * B > log_bytes {
                    return BatchRead::Corrupt {
                        detail: format!("batch header (seq {s}, {blocks} blocks, {records} records) does not continue seq {seq}"),
                    };
                }
                (blocks as u64, records, hlen)
            }
            Ok((f, _)) => {
                return BatchRead::End {
                    reason: format!(
                        "no batch of generation {gen} (found generation {})",
                        f.generation
                    ),
                }
            }
            Err(e) => {
                return BatchRead::End {
                    reason: e.to_string(),
                }
            }
        };
        let end = p + (blocks * B) as usize;
        let mut at = p + hlen;
        let mut records = Vec::with_capacity(nrec as usize);
        for i in 0..nrec as u64 {
            let torn = |reason: String| BatchRead::Torn {
                blocks,
                bad_at: at as u64,
                reason,
            };
            match decode_frame(&log[at..end]) {
                Ok((
                    Frame {
                        generation,
                        seq: s,
                        body: FrameBody::Record(r),
                    },
                    len,
                )) if generation == gen && s == seq + i => {
                    records.push(r);
                    at += len;
                }
                Ok(_) => {
                    return torn(format!(
                        "record {i} of the batch at log offset {pos} is stale"
                    ))
                }
                Err(e) => return torn(format!("record {i} of the batch at log offset {pos}: {e}")),
            }
        }
        BatchRead::Valid { records, blocks }
    }

    /// Validate `r` against the current state, apply it in memory and queue
    /// it for the next `sync`. Rejected records change nothing.
    pub fn append(&self, r: Record) -> Result<Lsn, MetaError> {
        let mut i = lock(&self.inner);
        if i.poisoned {
            return Err(MetaError::Poisoned);
        }
        i.state.validate(&r)?;
        let need = checkpoint_bytes(&i.state) + i.state.growth_bound(&r);
        if need > self.region.checkpoint_slot_bytes {
            return Err(MetaError::Full {
                need_bytes: need,
                slot_bytes: self.region.checkpoint_slot_bytes,
            });
        }
        i.state.apply(&r)?;
        let seq = i.next_seq;
        i.next_seq += 1;
        i.queue.push((seq, r));
        Ok(Lsn(seq))
    }

    /// Make every record appended before this call durable (group commit).
    pub fn sync(&self) -> Result<(), MetaError> {
        let target = {
            let i = lock(&self.inner);
            if i.poisoned {
                return Err(MetaError::Poisoned);
            }
            if i.durable_seq + 1 >= i.next_seq {
                return Ok(());
            }
            i.next_seq - 1
        };
        let mut w = lock(&self.writer);
        let batch = {
            let mut i = lock(&self.inner);
            if i.poisoned {
                return Err(MetaError::Poisoned);
            }
            if i.durable_seq >= target {
                return Ok(()); // covered by the sync that held `writer`
            }
            std::mem::take(&mut i.queue)
        };
        let r = self.write_batch(&mut w, batch);
        self.poison_on_error(r)
    }

    /// Write the whole state to the other checkpoint slot and restart the log;
    /// every appended record is durable when it returns.
    pub fn checkpoint(&self) -> Result<(), MetaError> {
        let mut w = lock(&self.writer);
        if lock(&self.inner).poisoned {
            return Err(MetaError::Poisoned);
        }
        let r = self.checkpoint_locked(&mut w);
        self.poison_on_error(r)
    }

    fn poison_on_error(&self, r: Result<(), MetaError>) -> Result<(), MetaError> {
        if r.is_err() {
            lock(&self.inner).poisoned = true;
        }
        r
    }

    fn write_batch(&self, w: &mut Writer, batch: Vec<(u64, Record)>) -> Result<(), MetaError> {
        let (Some(&(first, _)), Some(&(last, _))) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        let bytes = BATCH_FRAME_BYTES
            + batch
                .iter()
                .map(|(_, r)| record_frame_len(r))
                .sum::<usize>();
        let blocks = (bytes as u64).div_ceil(B);
        if w.pos + blocks * B > self.region.log_bytes {
            // No room: the checkpoint absorbs these records (they are in the state).
            return self.checkpoint_locked(w);
        }
        let mut buf = AlignedBuf::new((blocks * B) as usize);
        w.enc.clear();
        let header = Frame {
            generation: w.generation,
            seq: first,
            body: FrameBody::Batch {
                blocks: blocks as u32,
                records: batch.len() as u32,
            },
        };
        encode_frame(&header, &mut w.enc).expect("batch header encodes");
        for (seq, r) in batch {
            // Validated by `append` (state checks imply the codec's limits).
            encode_frame(
                &Frame {
                    generation: w.generation,
                    seq,
                    body: FrameBody::Record(r),
                },
                &mut w.enc,
            )
            .expect("validated record encodes");
        }
        debug_assert_eq!(w.enc.len(), bytes);
        buf[..bytes].copy_from_slice(&w.enc);
        self.dev.write_at(&buf, self.region.log_offset() + w.pos)?;
        self.dev.sync()?;
        w.pos += blocks * B;
        {
            let mut i = lock(&self.inner);
            i.durable_seq = i.durable_seq.max(last);
        }
        if w.pos * 100 >= self.region.log_bytes * META_LOG_CHECKPOINT_PERCENT {
            self.checkpoint_locked(w)?;
        }
        Ok(())
    }

    fn checkpoint_locked(&self, w: &mut Writer) -> Result<(), MetaError> {
        let seq = {
            let mut i = lock(&self.inner);
            encode_checkpoint(&i.state, w.generation, i.next_seq - 1, &mut w.enc);
            i.queue.clear();
            i.next_seq - 1
        };
        if w.enc.len() as u64 > self.region.checkpoint_slot_bytes {
            // `append` refuses records that could make this happen.
            return Err(MetaError::Full {
                need_bytes: w.enc.len() as u64,
                slot_bytes: self.region.checkpoint_slot_bytes,
            });
        }
        let target = 1 - w.slot;
        let mut buf = AlignedBuf::new(w.enc.len());
        buf[..w.enc.len()].copy_from_slice(&w.enc);
        self.dev.write_at(&buf, self.region.slot_offset(target))?;
        self.dev.sync()?;
        w.slot = target;
        w.generation += 1;
        w.pos = 0;
        let mut i = lock(&self.inner);
        i.durable_seq = i.durable_seq.max(seq);
        Ok(())
    }

    /// Read access to the in-memory state (includes appended, unsynced
    /// records). Holds the short lock: keep `f` brief.
    pub fn with_state<R>(&self, f: impl FnOnce(&MetaState) -> R) -> R {
        f(&lock(&self.inner).state)
    }

    /// Lsn of the last appended record (`Lsn(0)` if none ever).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(lock(&self.inner).next_seq - 1)
    }

    /// Every record up to this Lsn is durable.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(lock(&self.inner).durable_seq)
    }

    /// Bytes of the log ring in use by the current generation.
    pub fn log_used_bytes(&self) -> u64 {
        lock(&self.writer).pos
    }

    /// Generation of the log records now being written.
    pub fn generation(&self) -> u64 {
        lock(&self.writer).generation
    }

    pub fn region(&self) -> MetaRegion {
        self.region
    }

    /// What `open` found (or a fresh report after `format`).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }
}

enum BatchRead {
    Valid {
        records: Vec<Record>,
        blocks: u64,
    },
    /// No batch of this generation starts here.
    End {
        reason: String,
    },
    /// The header is valid but a record is not: the (last, un-synced) batch was torn.
    Torn {
        blocks: u64,
        bad_at: u64,
        reason: String,
    },
    /// A checksum-valid header of this generation that cannot be right.
    Corrupt {
        detail: String,
    },
}
