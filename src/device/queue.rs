//! One ublk queue: its thread, its io_uring, and the translation of each
//! ublk request into volume calls.
//!
//! Contract:
//! - One thread per queue, pinned to its CPU ([`QueueRoster::cpu_of`]), runs a
//!   plain completion loop (libublk's non-async path: no executor, no task
//!   per tag). The queue's io_uring carries the ublk commands and the tier
//!   I/O; every tier SQE carries `(tag, kind, piece)` in its user data, and
//!   each tag's state lives in a fixed slot ([`TagState`]), so serving a
//!   request allocates nothing.
//! - READ: [`Volume::map_read`] under an epoch guard held until every tier
//!   read has completed; mapped pieces become io_uring reads on the tier
//!   device's file descriptor straight into the tag's ublk buffer (no
//!   user-space copy; with zero copy, `READ_FIXED` into the request's own
//!   pages); unmapped pieces are zero-filled in place (zero copy: read from
//!   `/dev/zero`). A short transfer (`/dev/zero` completes reads short
//!   under CPU contention) is continued where it stopped ([`Xfer`]); a
//!   failed one, or one that moves no byte, fails the request with its
//!   errno (EIO for no progress).
//! - WRITE: [`Volume::map_write`] enters the writers of the mapped entries;
//!   the tier writes go out on the queue ring straight from the ublk buffer
//!   (zero copy: `WRITE_FIXED` from the request's pages) and the tickets are
//!   held until they complete. A write that touches an unmapped entry (the
//!   first write of a shard: allocate, write, zero the rest, publish, log
//!   `Map`) takes the synchronous [`Volume::write`] on this thread's own
//!   tier engine (`Pool::engine`), blocking the queue thread for that write
//!   only; with zero copy its data is first bounced into user memory by an
//!   asynchronous `WRITE_FIXED` into the tag's region of a per-queue memfd.
//! - FLUSH, and FUA after its write: one `IORING_OP_FSYNC` (datasync) SQE
//!   per tier, asynchronous, then the synchronous [`Volume::flush`] (the
//!   pool commit: barrier, tier fdatasync, which then finds little left to
//!   write, and the metadata log sync). DISCARD = [`Volume::discard`],
//!   WRITE_ZEROES = [`Volume::write_zeroes`], both synchronous. Other ops
//!   fail with EOPNOTSUPP.
//! - Every request pushes one [`TraceEvent`] (dropped and counted when the
//!   ring is full) and records its latency in the queue's histograms by op
//!   and tier hit.
//! - Poll modes ([`PollMode`]): `interrupt` sleeps in `io_uring_enter` until
//!   a completion; `busy` never sleeps (enters without waiting, so task work
//!   still runs); `adaptive` spins `DEVICE_ADAPTIVE_SPIN_US` after the last
//!   completion, then sleeps. While recorded metrics are unpublished a
//!   `DEVICE_STATS_PUBLISH_MS` timeout SQE keeps the loop waking to publish.

use crate::constants::{
    DEVICE_ADAPTIVE_SPIN_US, DEVICE_IO_BUF_BYTES, DEVICE_STATS_PUBLISH_MS, TIERS_MAX,
    UNIT_SIZE_BYTES,
};
use crate::device::config::PollMode;
use crate::device::metrics::{HitSet, Op, QueueMetrics, TraceEvent, TraceProducer};
use crate::device::roster::{init_queue_ring, QueueRoster};
use crate::device::xfer::{Dir, FileRef, Progress, Xfer};
use crate::io::IoEngine;
use crate::volume::handle::{Volume, WritePiece};
use crate::volume::split::PieceKind;
use crate::volume::table::WriteTicket;
use crossbeam_epoch as epoch;
use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, BufDescList, UblkError, UblkIORes};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

/// Most tier reads one request can need: a piece never crosses a unit-sized
/// split child, so a request of `DEVICE_IO_BUF_BYTES` touches at most this many.
pub const READ_PIECES_MAX: usize = (DEVICE_IO_BUF_BYTES as u64 / UNIT_SIZE_BYTES) as usize + 1;
const _: () = assert!(READ_PIECES_MAX >= TIERS_MAX);
// Piece indices travel in the 8 target-data bits libublk's user data keeps.
const _: () = assert!(READ_PIECES_MAX <= 1 << 8);

/// Index of tier 0's file in each queue ring's registered file table:
/// libublk registers `UblkDev::tgt.fds[..nr_fds]`, whose slot 0 is the ublk
/// char device; `serve` puts the tier devices right after it (tier `t` at
/// `TIER_FILE_INDEX_BASE + t`), so tier SQEs carry no per-SQE file lookup.
pub const TIER_FILE_INDEX_BASE: u32 = 1;
const _: () = assert!(TIER_FILE_INDEX_BASE as usize + TIERS_MAX <= 32);

/// The registered file of tier `t` on a queue ring.
fn tier_file(t: usize) -> FileRef {
    FileRef::Registered(TIER_FILE_INDEX_BASE + t as u32)
}

/// What every queue thread of a device shares.
pub struct QueueCtx {
    pub volume: Volume,
    pub poll: PollMode,
    /// Raw fds of the tier devices, by tier index (-1: no such tier); each
    /// queue ring has them registered (see [`TIER_FILE_INDEX_BASE`]).
    pub fds: [RawFd; TIERS_MAX],
    /// When the device started (trace and latency clock origin).
    pub start: Instant,
    /// Each queue's CPU, thread, trace producer and statistics.
    pub roster: QueueRoster,
    /// Serve with `UBLK_F_AUTO_BUF_REG` (the device was added with it).
    pub zero_copy: bool,
    /// `/dev/zero`, read into the request's pages for holes in zero-copy mode.
    pub zero: std::fs::File,
}

impl QueueCtx {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Pin the calling thread to `cpu`.
pub fn pin_current(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

/// Pin thread `tid` to `cpu` (used from the control thread after libublk
/// applied the kernel's default queue affinity).
pub fn pin_thread(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set. CPU_SET
    // writes inside it (cpu is bounds-checked by the macro's implementation
    // against the set size), and sched_setaffinity only reads it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The zero-copy bounce memfd of queue `qid`: `depth` regions of `DEVICE_IO_BUF_BYTES`.
fn bounce_memfd(qid: u16, depth: u64) -> std::io::Result<std::fs::File> {
    let name = std::ffi::CString::new(format!("shardblk-bounce-q{qid}")).expect("no NUL");
    // SAFETY: name is a valid NUL-terminated string; the returned fd, when
    // non-negative, is new and owned by nobody else.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created above and is owned here alone.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(depth * u64::from(DEVICE_IO_BUF_BYTES))?;
    Ok(f)
}

/// What a tier SQE of a tag was for (the op byte of its user data).
mod kind {
    /// One piece of a read or write (a tier read/write, or a hole read from
    /// `/dev/zero`); the piece index is in the target-data bits.
    pub const DATA: u32 = 1;
    /// The datasync of one tier before a commit; the tier index is in the
    /// target-data bits.
    pub const FSYNC: u32 = 2;
    /// Zero copy, first write: the request's pages into the tag's memfd region.
    pub const BOUNCE: u32 = 3;
    /// The stats publish timer (tag [`super::TICK_TAG`]).
    pub const TICK: u32 = 4;
}

/// The tag number of the stats timer's SQE: above every real tag
/// (`DEVICE_DEPTH_MAX_REQUESTS` < 255).
const TICK_TAG: u16 = u16::MAX;

/// Where a tag's request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting in the kernel for a request (FETCH / COMMIT_AND_FETCH issued).
    Idle,
    /// Tier reads or writes in flight.
    Data,
    /// Zero copy, first write: bounce SQE in flight.
    Bounce,
    /// Flush (or FUA): tier datasyncs in flight.
    Sync,
}

/// The state of one tag between its SQEs' completions.
struct TagState {
    phase: Phase,
    op: Op,
    offset: u64,
    len: u64,
    fua: bool,
    t0: u64,
    hit: HitSet,
    /// SQEs in flight.
    pending: u16,
    /// Each in-flight data transfer, by piece index (what is left of it).
    xfers: [Xfer; READ_PIECES_MAX],
    /// First error seen.
    err: Option<i32>,
    /// Writer tickets of an overwrite, held until its tier writes complete.
    /// Declared before `guard`, so a dropped `TagState` ends them first.
    tickets: [Option<WriteTicket<'static>>; READ_PIECES_MAX],
    /// Epoch guard of the request's table lookups.
    guard: Option<epoch::Guard>,
}

impl TagState {
    fn new() -> Self {
        TagState {
            phase: Phase::Idle,
            op: Op::Read,
            offset: 0,
            len: 0,
            fua: false,
            t0: 0,
            hit: HitSet::default(),
            pending: 0,
            xfers: [Xfer::default(); READ_PIECES_MAX],
            err: None,
            tickets: Default::default(),
            guard: None,
        }
    }
    fn fail(&mut self, errno: i32) {
        self.err.get_or_insert(errno);
    }
    /// End the writes and unpin (tickets first: they live under the guard).
    fn release(&mut self) {
        self.tickets.iter_mut().for_each(|t| *t = None);
        self.guard = None;
    }
}

/// The user data of a tier SQE.
fn tgt_data(tag: u16, kind: u32, index: usize) -> u64 {
    UblkIOCtx::build_user_data(tag, kind, index as u32, true)
}

/// Everything one queue thread owns.
struct Server<'a> {
    ctx: &'a QueueCtx,
    qid: u16,
    /// The ublk buffers (copy mode) or first-write bounce buffers (zero copy), by tag.
    bufs: Vec<IoBuf<u8>>,
    tags: Vec<TagState>,
    engine: Box<dyn IoEngine>,
    metrics: QueueMetrics,
    trace: TraceProducer,
    /// Zero copy only: `depth` regions of `DEVICE_IO_BUF_BYTES` through
    /// which first writes reach user memory.
    bounce_fd: Option<std::fs::File>,
    /// The stats timer's timespec (the kernel reads it at submission).
    tick_ts: Box<types::Timespec>,
    tick_armed: bool,
}

/// The body of queue thread `qid` (called by libublk on its queue thread).
pub fn run_queue(qid: u16, dev: &UblkDev, ctx: &Arc<QueueCtx>) {
    let (cpu, producer) = ctx.roster.enter(qid);
    if let Err(e) = serve_queue(qid, cpu, producer, dev, ctx) {
        tracing::error!("queue {qid}: {e}");
    }
}

fn serve_queue(
    qid: u16,
    cpu: usize,
    producer: TraceProducer,
    dev: &UblkDev,
    ctx: &Arc<QueueCtx>,
) -> Result<(), UblkError> {
    let depth = dev.dev_info.queue_depth;
    let metrics = QueueMetrics::new(qid, cpu);
    ctx.roster.set_snapshot(qid, &metrics);
    let bounce_fd = if ctx.zero_copy {
        Some(bounce_memfd(qid, u64::from(depth)).map_err(UblkError::IOError)?)
    } else {
        None
    };
    init_queue_ring(depth)?;
    let q = UblkQueue::new(qid, dev)?;
    let mut s = Server {
        ctx,
        qid,
        bufs: dev.alloc_queue_io_bufs(),
        tags: (0..depth).map(|_| TagState::new()).collect(),
        engine: ctx.volume.pool().engine(),
        metrics,
        trace: producer,
        bounce_fd,
        tick_ts: Box::new(
            types::Timespec::new().nsec((DEVICE_STATS_PUBLISH_MS * 1_000_000) as u32),
        ),
        tick_armed: false,
    };
    let q = if ctx.zero_copy {
        // The driver registers each request's pages at fixed-buffer index
        // `tag` of this ring for the span of the request.
        let regs: Vec<_> = (0..depth).map(auto_reg).collect();
        q.submit_fetch_commands_unified(BufDescList::AutoRegs(&regs))?
    } else {
        q.submit_fetch_commands_unified(BufDescList::Slices(Some(&s.bufs)))?
    };
    let r = s.event_loop(&q);
    for t in &mut s.tags {
        t.release();
    }
    let dropped = s.trace.dropped();
    s.metrics.maybe_publish(ctx.now_ns(), dropped, true);
    match r {
        Err(UblkError::QueueIsDown) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

fn auto_reg(tag: u16) -> libublk::sys::ublk_auto_buf_reg {
    libublk::sys::ublk_auto_buf_reg {
        index: tag,
        flags: 0,
        reserved0: 0,
        reserved1: 0,
    }
}

impl Server<'_> {
    /// Reap and serve completions until the queue is stopped.
    fn event_loop(&mut self, q: &UblkQueue<'_>) -> Result<(), UblkError> {
        let poll = self.ctx.poll;
        let mut last_cqe = Instant::now();
        loop {
            let to_wait = match poll {
                PollMode::Interrupt => 1,
                PollMode::Busy => 0,
                PollMode::Adaptive => {
                    if last_cqe.elapsed().as_micros() as u64 >= DEVICE_ADAPTIVE_SPIN_US {
                        1
                    } else {
                        0
                    }
                }
            };
            let r = q.flush_and_wake_io_tasks(
                |ud, cqe, _last| self.on_cqe(q, ud, cqe.result()),
                to_wait,
            );
            match r {
                Ok(0) => {
                    if to_wait == 0 {
                        std::hint::spin_loop();
                    }
                }
                Ok(_) => {
                    if poll == PollMode::Adaptive {
                        last_cqe = Instant::now();
                    }
                    self.after_batch(q);
                }
                Err(UblkError::IOError(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Publish metrics when due; keep a timer armed while some are not.
    fn after_batch(&mut self, q: &UblkQueue<'_>) {
        if !self.metrics.dirty() {
            return;
        }
        let dropped = self.trace.dropped();
        if !self
            .metrics
            .maybe_publish(self.ctx.now_ns(), dropped, false)
            && !self.tick_armed
        {
            let sqe = opcode::Timeout::new(&*self.tick_ts as *const types::Timespec)
                .build()
                .user_data(tgt_data(TICK_TAG, kind::TICK, 0));
            self.tick_armed = q.ublk_submit_sqe_sync(sqe).is_ok();
        }
    }

    fn on_cqe(&mut self, q: &UblkQueue<'_>, ud: u64, res: i32) {
        let tag = UblkIOCtx::user_data_to_tag(ud) as u16;
        if ud & libublk::UblkUringData::Target as u64 == 0 {
            // A ublk command: a new request for `tag` (anything else is the
            // queue being aborted, which libublk accounts for).
            if res == libublk::sys::UBLK_IO_RES_OK as i32 {
                self.start(q, tag);
            }
            return;
        }
        let k = UblkIOCtx::user_data_to_op(ud);
        if k == kind::TICK {
            self.tick_armed = false;
            return;
        }
        let index = (ud >> 24) as usize & 0xff;
        let t = &mut self.tags[tag as usize];
        if k == kind::FSYNC {
            if res < 0 {
                t.fail(-res);
            }
        } else {
            let x = &mut t.xfers[index.min(READ_PIECES_MAX - 1)];
            match x.advance(res) {
                Progress::Done => {}
                Progress::Failed(e) => t.fail(e),
                // The rest of a short transfer goes out again (unless the
                // request already failed): still pending.
                Progress::Short if t.err.is_none() => {
                    match q.ublk_submit_sqe_sync(x.sqe().user_data(tgt_data(tag, k, index))) {
                        Ok(()) => return,
                        Err(_) => t.fail(libc::EIO),
                    }
                }
                Progress::Short => {}
            }
        }
        t.pending -= 1;
        if t.pending > 0 {
            return;
        }
        match t.phase {
            Phase::Data => {
                t.release();
                if t.op == Op::Write && t.fua && t.err.is_none() {
                    self.start_sync(q, tag);
                } else {
                    self.finish(q, tag);
                }
            }
            Phase::Bounce => {
                if t.err.is_none() {
                    let r = self.bounced_write(tag);
                    self.after_write(q, tag, r);
                } else {
                    self.finish(q, tag);
                }
            }
            Phase::Sync => {
                if t.err.is_none() {
                    if let Err(e) = self.ctx.volume.flush() {
                        self.tags[tag as usize].fail(e.errno());
                    }
                }
                self.finish(q, tag);
            }
            Phase::Idle => tracing::error!("queue {}: tag {tag}: completion while idle", self.qid),
        }
    }

    /// A request arrived for `tag`.
    fn start(&mut self, q: &UblkQueue<'_>, tag: u16) {
        let iod = q.get_iod(tag);
        let fua = iod.op_flags & libublk::sys::UBLK_IO_F_FUA != 0;
        let offset = iod.start_sector << 9;
        let len = u64::from(iod.nr_sectors) << 9;
        let op = match iod.op_flags & 0xff {
            libublk::sys::UBLK_IO_OP_READ => Op::Read,
            libublk::sys::UBLK_IO_OP_WRITE => Op::Write,
            libublk::sys::UBLK_IO_OP_FLUSH => Op::Flush,
            libublk::sys::UBLK_IO_OP_DISCARD => Op::Discard,
            libublk::sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
            _ => return self.commit(q, tag, -libc::EOPNOTSUPP),
        };
        let t0 = self.ctx.now_ns();
        self.trace.push(TraceEvent {
            time_ns: t0,
            volume: self.ctx.volume.id(),
            offset,
            len: len as u32,
            op,
        });
        let t = &mut self.tags[tag as usize];
        t.op = op;
        t.offset = offset;
        t.len = len;
        t.fua = fua;
        t.t0 = t0;
        t.hit = HitSet::default();
        t.pending = 0;
        t.err = None;
        t.phase = Phase::Data;
        if matches!(op, Op::Read | Op::Write) && len > u64::from(DEVICE_IO_BUF_BYTES) {
            t.fail(libc::EINVAL);
            return self.finish(q, tag);
        }
        let ctx = self.ctx;
        let vol = &ctx.volume;
        match op {
            Op::Read => self.start_read(q, tag),
            Op::Write => self.start_write(q, tag),
            Op::Flush => self.start_sync(q, tag),
            Op::Discard => {
                if let Err(e) = vol.discard(offset, len) {
                    self.tags[tag as usize].fail(e.errno());
                }
                self.finish(q, tag)
            }
            Op::WriteZeroes => {
                if let Err(e) = vol.write_zeroes(&mut *self.engine, offset, len) {
                    self.tags[tag as usize].fail(e.errno());
                }
                self.finish(q, tag)
            }
        }
    }

    /// Tier reads straight into the request's buffer, zeros for holes.
    fn start_read(&mut self, q: &UblkQueue<'_>, tag: u16) {
        let ctx = self.ctx;
        let zc = ctx.zero_copy;
        let t = &mut self.tags[tag as usize];
        let buf = self.bufs[tag as usize].as_mut_slice();
        let guard = epoch::pin();
        let (mut n, mut hit, mut err) = (0usize, HitSet::default(), None);
        let xfers = &mut t.xfers;
        let mapped = ctx.volume.map_read(&guard, t.offset, t.len, |p| {
            let at = p.buf_offset as usize;
            let len = p.len as u32;
            let (file, offset) = match p.kind {
                PieceKind::Unmapped if !zc => {
                    hit.add_unmapped();
                    buf[at..at + len as usize].fill(0);
                    return;
                }
                // Zero copy: the request's pages are reachable only by
                // fixed-buffer ops, so holes are read from `/dev/zero`.
                PieceKind::Unmapped => {
                    hit.add_unmapped();
                    (FileRef::Fd(ctx.zero.as_raw_fd()), 0)
                }
                PieceKind::Mapped {
                    tier,
                    device_byte_offset,
                } => {
                    hit.add_tier(tier);
                    (tier_file(tier), device_byte_offset)
                }
            };
            let x = Xfer {
                file,
                dir: Dir::Read,
                fixed: zc.then_some(tag),
                addr: if zc {
                    at as u64
                } else {
                    buf[at..].as_mut_ptr() as u64
                },
                offset,
                len,
            };
            if err.is_some() {
                return;
            }
            if n == READ_PIECES_MAX {
                err = Some(libc::EINVAL);
                return;
            }
            match q.ublk_submit_sqe_sync(x.sqe().user_data(tgt_data(tag, kind::DATA, n))) {
                Ok(()) => {
                    xfers[n] = x;
                    n += 1;
                }
                Err(_) => err = Some(libc::EIO),
            }
        });
        t.hit = hit;
        if let Err(e) = mapped {
            t.fail(e.errno());
        }
        if let Some(e) = err {
            t.fail(e);
        }
        t.pending = n as u16;
        if n == 0 {
            drop(guard);
            return self.finish(q, tag);
        }
        t.guard = Some(guard);
    }

    /// Overwrites go out as tier writes holding their tickets; a first
    /// write takes the synchronous mapping path.
    fn start_write(&mut self, q: &UblkQueue<'_>, tag: u16) {
        let ctx = self.ctx;
        let vol = &ctx.volume;
        let zc = ctx.zero_copy;
        let t = &mut self.tags[tag as usize];
        let buf = self.bufs[tag as usize].as_slice();
        let guard = epoch::pin();
        let mut slots: [Option<(WritePiece, WriteTicket<'_>)>; READ_PIECES_MAX] =
            Default::default();
        let n = match vol.map_write(&guard, t.offset, t.len, &mut slots) {
            Ok(Some(n)) => n,
            Ok(None) => {
                drop(slots);
                drop(guard);
                t.hit.add_unmapped();
                if zc {
                    return self.start_bounce(q, tag);
                }
                let r = vol
                    .write(&mut *self.engine, t.offset, &buf[..t.len as usize])
                    .map_err(|e| e.errno());
                return self.after_write(q, tag, r);
            }
            Err(e) => {
                drop(slots);
                drop(guard);
                t.fail(e.errno());
                return self.finish(q, tag);
            }
        };
        let mut submitted = 0;
        for (i, slot) in slots.iter_mut().enumerate().take(n) {
            let Some((p, ticket)) = slot.take() else {
                continue;
            };
            t.hit.add_tier(p.tier);
            let x = Xfer {
                file: tier_file(p.tier),
                dir: Dir::Write,
                fixed: zc.then_some(tag),
                addr: if zc {
                    p.buf_offset
                } else {
                    buf[p.buf_offset as usize..(p.buf_offset + p.len) as usize].as_ptr() as u64
                },
                offset: p.device_byte_offset,
                len: p.len as u32,
            };
            // SAFETY: the ticket points into the volume's table, which the
            // epoch guard pinned above keeps alive. That guard is stored in
            // the same `TagState` below and is dropped only after the
            // tickets (`TagState::release`, and field order on drop); the
            // volume itself is owned by `ctx`, which outlives this thread's
            // `Server`. So erasing the borrow's lifetime never lets the
            // ticket outlive what it points to.
            let ticket =
                unsafe { std::mem::transmute::<WriteTicket<'_>, WriteTicket<'static>>(ticket) };
            t.tickets[i] = Some(ticket);
            if t.err.is_some() {
                continue;
            }
            match q.ublk_submit_sqe_sync(x.sqe().user_data(tgt_data(tag, kind::DATA, i))) {
                Ok(()) => {
                    t.xfers[i] = x;
                    submitted += 1;
                }
                Err(_) => t.fail(libc::EIO),
            }
        }
        drop(slots);
        t.guard = Some(guard);
        t.pending = submitted;
        if submitted == 0 {
            t.release();
            self.finish(q, tag);
        }
    }

    /// Zero copy, first write: copy the request's pages into the tag's
    /// memfd region (asynchronously), then [`Self::bounced_write`].
    fn start_bounce(&mut self, q: &UblkQueue<'_>, tag: u16) {
        let t = &mut self.tags[tag as usize];
        let Some(fd) = self.bounce_fd.as_ref() else {
            t.fail(libc::EINVAL);
            return self.finish(q, tag);
        };
        let x = Xfer {
            file: FileRef::Fd(fd.as_raw_fd()),
            dir: Dir::Write,
            fixed: Some(tag),
            addr: 0,
            offset: u64::from(tag) * u64::from(DEVICE_IO_BUF_BYTES),
            len: t.len as u32,
        };
        t.phase = Phase::Bounce;
        t.xfers[0] = x;
        match q.ublk_submit_sqe_sync(x.sqe().user_data(tgt_data(tag, kind::BOUNCE, 0))) {
            Ok(()) => t.pending = 1,
            Err(_) => {
                t.fail(libc::EIO);
                self.finish(q, tag);
            }
        }
    }

    /// Zero copy, first write, after the bounce: read the data back into
    /// the tag's buffer and take the synchronous mapping path.
    fn bounced_write(&mut self, tag: u16) -> Result<(), i32> {
        let t = &self.tags[tag as usize];
        let fd = self.bounce_fd.as_ref().ok_or(libc::EINVAL)?;
        let at = u64::from(tag) * u64::from(DEVICE_IO_BUF_BYTES);
        let data = &mut self.bufs[tag as usize].as_mut_slice()[..t.len as usize];
        fd.read_exact_at(data, at)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        self.ctx
            .volume
            .write(&mut *self.engine, t.offset, data)
            .map_err(|e| e.errno())
    }

    /// A synchronous write ended: FUA goes on to the flush.
    fn after_write(&mut self, q: &UblkQueue<'_>, tag: u16, r: Result<(), i32>) {
        let t = &mut self.tags[tag as usize];
        match r {
            Err(e) => {
                t.fail(e);
                self.finish(q, tag)
            }
            Ok(()) if t.fua => self.start_sync(q, tag),
            Ok(()) => self.finish(q, tag),
        }
    }

    /// FLUSH (or FUA): datasync every tier asynchronously; the commit follows
    /// when they complete.
    fn start_sync(&mut self, q: &UblkQueue<'_>, tag: u16) {
        let fds = self.ctx.fds;
        let t = &mut self.tags[tag as usize];
        t.phase = Phase::Sync;
        let mut n = 0;
        for (i, _) in fds.iter().enumerate().filter(|(_, &fd)| fd >= 0) {
            let sqe = opcode::Fsync::new(types::Fixed(TIER_FILE_INDEX_BASE + i as u32))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(tgt_data(tag, kind::FSYNC, i));
            match q.ublk_submit_sqe_sync(sqe) {
                Ok(()) => n += 1,
                Err(_) => t.fail(libc::EIO),
            }
        }
        t.pending = n;
        if n == 0 {
            if t.err.is_none() {
                if let Err(e) = self.ctx.volume.flush() {
                    t.fail(e.errno());
                }
            }
            self.finish(q, tag);
        }
    }

    /// The request of `tag` is done: record it and commit its result.
    fn finish(&mut self, q: &UblkQueue<'_>, tag: u16) {
        let t = &mut self.tags[tag as usize];
        t.phase = Phase::Idle;
        let lat = self.ctx.now_ns().saturating_sub(t.t0);
        let ok = t.err.is_none();
        self.metrics.record(t.op, t.hit.hit(), t.len, lat, ok);
        let res = match t.err {
            None if matches!(t.op, Op::Read | Op::Write) => t.len as i32,
            None => 0,
            Some(errno) => {
                tracing::debug!("{:?} at {} len {}: errno {errno}", t.op, t.offset, t.len);
                -errno
            }
        };
        self.commit(q, tag, res);
    }

    /// COMMIT_AND_FETCH for `tag` with `res`.
    fn commit(&mut self, q: &UblkQueue<'_>, tag: u16, res: i32) {
        let desc = if self.ctx.zero_copy {
            BufDesc::AutoReg(auto_reg(tag))
        } else {
            BufDesc::Slice(self.bufs[tag as usize].as_slice())
        };
        if let Err(e) = q.complete_io_cmd_unified(tag, desc, Ok(UblkIORes::Result(res))) {
            tracing::error!("queue {}: tag {tag}: commit: {e}", self.qid);
        }
    }
}
