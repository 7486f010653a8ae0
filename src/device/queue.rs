//! One ublk queue: its thread, its io_uring, and the translation of each
//! ublk request into volume calls.
//!
//! Contract:
//! - One thread per queue, pinned to its CPU ([`QueueCtx::cpu_of`]), runs a
//!   single-threaded executor with one task per tag. The queue's io_uring
//!   (owned by libublk, thread local) carries both the ublk commands and the
//!   tier reads.
//! - READ: [`Volume::map_read`] under an epoch guard held until every tier
//!   read has completed; mapped pieces become io_uring reads on the tier
//!   device's file descriptor straight into the tag's ublk buffer (no
//!   user-space copy); unmapped pieces are zero-filled in place. A short or
//!   failed tier read fails the request with its errno (EIO for short).
//! - WRITE: [`Volume::map_write`] enters the writers of the mapped entries;
//!   the tier writes go out on the queue ring straight from the ublk buffer
//!   and the tickets are held until they complete. A write that touches an
//!   unmapped entry (the first write of a shard: allocate, write, zero the
//!   rest, publish, log `Map`) takes the synchronous [`Volume::write`] on this
//!   thread's own tier engine (`Pool::engine`), blocking the queue thread for
//!   that write only (also when an entry's writer count is saturated: the
//!   depth limit keeps this queue's own tickets on one entry below the
//!   count, so the wait is on other queues' writes). FUA = write then
//!   [`Volume::flush`]. FLUSH = [`Volume::flush`].
//!   DISCARD = [`Volume::discard`], WRITE_ZEROES = [`Volume::write_zeroes`].
//!   Other ops fail with EOPNOTSUPP.
//! - Every request pushes one [`TraceEvent`] (dropped and counted when the
//!   ring is full) and records its latency in the queue's own histograms.
//! - Poll modes ([`PollMode`]): `interrupt` sleeps in `io_uring_enter` until a
//!   completion (waking every `DEVICE_IDLE_WAKE_S` to notice a stop);
//!   `busy` never sleeps; `adaptive` spins `DEVICE_ADAPTIVE_SPIN_US` after the
//!   last completion, then sleeps.

use crate::constants::{
    DEVICE_ADAPTIVE_SPIN_US, DEVICE_IDLE_WAKE_S, DEVICE_IO_BUF_BYTES, TIERS_MAX, UNIT_SIZE_BYTES,
};
use crate::device::config::PollMode;
use crate::device::metrics::{Op, QueueMetrics, QueueSnapshot, TraceEvent, TraceProducer};
use crate::io::IoEngine;
use crate::volume::handle::{Volume, WritePiece};
use crate::volume::split::PieceKind;
use crate::volume::table::WriteTicket;
use crossbeam_epoch as epoch;
use io_uring::{opcode, squeue, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::UblkUringOpFuture;
use libublk::{BufDesc, UblkError};
use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most tier reads one request can need: a piece never crosses a unit-sized
/// split child, so a request of `DEVICE_IO_BUF_BYTES` touches at most this many.
pub const READ_PIECES_MAX: usize = (DEVICE_IO_BUF_BYTES as u64 / UNIT_SIZE_BYTES) as usize + 1;

/// What every queue thread of a device shares.
pub struct QueueCtx {
    pub volume: Volume,
    pub poll: PollMode,
    pub cpus: Vec<usize>,
    /// Raw fds of the tier devices, by tier index.
    pub fds: [RawFd; TIERS_MAX],
    /// When the device started (trace and latency clock origin).
    pub start: Instant,
    /// Trace producers, taken by their queue thread at start.
    pub producers: Mutex<Vec<Option<TraceProducer>>>,
    /// Published snapshots, by queue.
    pub snapshots: Mutex<Vec<Option<Arc<Mutex<QueueSnapshot>>>>>,
    /// Thread ids of the queue threads, by queue.
    pub tids: Mutex<Vec<Option<i32>>>,
    /// Serve with `UBLK_F_AUTO_BUF_REG` (the device was added with it).
    pub zero_copy: bool,
    /// `/dev/zero`, read into the request's pages for holes in zero-copy mode.
    pub zero: std::fs::File,
}

impl QueueCtx {
    pub fn cpu_of(&self, q: u16) -> usize {
        self.cpus[q as usize % self.cpus.len()]
    }
    fn zero_fd(&self) -> RawFd {
        self.zero.as_raw_fd()
    }
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Per-thread state of one queue.
struct QueueState {
    ctx: Arc<QueueCtx>,
    engine: RefCell<Box<dyn IoEngine>>,
    metrics: RefCell<QueueMetrics>,
    trace: RefCell<TraceProducer>,
    /// Zero copy only: a memfd with one `DEVICE_IO_BUF_BYTES` region per tag,
    /// through which first writes reach user memory.
    bounce_fd: Option<std::fs::File>,
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

/// The body of queue thread `qid` (called by libublk on its queue thread).
pub fn run_queue(qid: u16, dev: &UblkDev, ctx: &Arc<QueueCtx>) {
    let cpu = ctx.cpu_of(qid);
    if !pin_current(cpu) {
        tracing::warn!("queue {qid}: could not pin to CPU {cpu}");
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    ctx.tids.lock().expect("tids")[qid as usize] = Some(tid);
    let producer = ctx.producers.lock().expect("producers")[qid as usize]
        .take()
        .expect("one thread per queue");
    let metrics = QueueMetrics::new(qid, cpu);
    ctx.snapshots.lock().expect("snapshots")[qid as usize] = Some(metrics.shared());
    let state = Rc::new(QueueState {
        engine: RefCell::new(ctx.volume.pool().engine()),
        ctx: ctx.clone(),
        metrics: RefCell::new(metrics),
        trace: RefCell::new(producer),
        bounce_fd: if ctx.zero_copy {
            match bounce_memfd(qid, u64::from(dev.dev_info.queue_depth)) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!("queue {qid}: {e}");
                    return;
                }
            }
        } else {
            None
        },
    });
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!("queue {qid}: {e}");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let q = q.clone();
        let st = state.clone();
        tasks.push(exe.spawn(async move {
            match tag_task(&q, tag, &st).await {
                Err(UblkError::QueueIsDown) | Ok(()) => {}
                Err(e) => tracing::error!("queue {qid} tag {tag}: {e}"),
            }
        }));
    }
    let exe2 = exe.clone();
    let st = state.clone();
    let run_ops = move || {
        while exe2.try_tick() {}
        let dropped = st.trace.borrow().dropped();
        st.metrics
            .borrow_mut()
            .maybe_publish(st.ctx.now_ns(), dropped, false);
    };
    let done = || tasks.iter().all(|t| t.is_finished());
    let poll = ctx.poll;
    let qq = q.clone();
    let poll_uring = move || {
        let q = qq.clone();
        async move { poll_ring(&q, poll) }
    };
    let reap = |timeout| {
        libublk::uring_async::ublk_reap_io_events_with_update_queue(&q, timeout, None, |cqe| {
            libublk::uring_async::ublk_wake_task(cqe.user_data(), cqe)
        })
    };
    let r = smol::block_on(exe.run(libublk::uring_async::run_uring_tasks(
        poll_uring, reap, run_ops, done,
    )));
    if let Err(e) = r {
        tracing::error!("queue {qid}: event loop: {e}");
    }
    let dropped = state.trace.borrow().dropped();
    state
        .metrics
        .borrow_mut()
        .maybe_publish(ctx.now_ns(), dropped, true);
}

fn cq_ready() -> bool {
    libublk::io::with_task_io_ring_mut(|r| !r.completion().is_empty())
}

/// Wait for completions as the poll mode says. `Ok(true)`: timed out idle.
fn poll_ring(q: &UblkQueue<'_>, mode: PollMode) -> Result<bool, UblkError> {
    let idle = Some(types::Timespec::new().sec(DEVICE_IDLE_WAKE_S));
    match mode {
        PollMode::Interrupt => libublk::uring_async::uring_poll_io_fn::<squeue::Entry>(q, idle, 1),
        PollMode::Busy => loop {
            libublk::uring_async::uring_poll_io_fn::<squeue::Entry>(q, None, 0)?;
            if cq_ready() {
                return Ok(false);
            }
            std::hint::spin_loop();
        },
        PollMode::Adaptive => {
            let t0 = Instant::now();
            loop {
                libublk::uring_async::uring_poll_io_fn::<squeue::Entry>(q, None, 0)?;
                if cq_ready() {
                    return Ok(false);
                }
                if t0.elapsed().as_micros() as u64 >= DEVICE_ADAPTIVE_SPIN_US {
                    return libublk::uring_async::uring_poll_io_fn::<squeue::Entry>(q, idle, 1);
                }
                std::hint::spin_loop();
            }
        }
    }
}

async fn tag_task(q: &UblkQueue<'_>, tag: u16, st: &QueueState) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    let mut pending: Vec<(UblkUringOpFuture, u32)> = Vec::with_capacity(READ_PIECES_MAX);
    if st.ctx.zero_copy {
        // The request's pages are registered at fixed-buffer index `tag` of
        // this ring for the span of the request; `buf` only bounces first writes.
        let reg = libublk::sys::ublk_auto_buf_reg {
            index: tag,
            flags: 0,
            reserved0: 0,
            reserved1: 0,
        };
        q.submit_io_prep_cmd(tag, BufDesc::AutoReg(reg), 0, None)
            .await?;
        loop {
            let mut rb = ReqBuf::Fixed {
                index: tag,
                bounce: buf.as_mut_slice(),
            };
            let res = serve(q, tag, &mut rb, &mut pending, st).await;
            q.submit_io_commit_cmd(tag, BufDesc::AutoReg(reg), res)
                .await?;
        }
    }
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let mut rb = ReqBuf::Copy(buf.as_mut_slice());
        let res = serve(q, tag, &mut rb, &mut pending, st).await;
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res)
            .await?;
    }
}

/// Where a request's data lives.
enum ReqBuf<'a> {
    /// Copy mode: the tag's buffer, which the kernel fills (writes) or
    /// drains (reads) around the request.
    Copy(&'a mut [u8]),
    /// Zero copy: the request's own pages, registered at fixed-buffer
    /// `index` (addresses are offsets into the request); `bounce` receives
    /// the data of a first write, which the synchronous map path needs in
    /// user memory.
    Fixed { index: u16, bounce: &'a mut [u8] },
}

impl ReqBuf<'_> {
    fn capacity(&self) -> usize {
        match self {
            ReqBuf::Copy(b) => b.len(),
            ReqBuf::Fixed { bounce, .. } => bounce.len(),
        }
    }
}

/// Serve one request; returns the ublk result (bytes, 0, or -errno).
async fn serve(
    q: &UblkQueue<'_>,
    tag: u16,
    buf: &mut ReqBuf<'_>,
    pending: &mut Vec<(UblkUringOpFuture, u32)>,
    st: &QueueState,
) -> i32 {
    let iod = q.get_iod(tag);
    let raw_op = iod.op_flags & 0xff;
    let fua = iod.op_flags & libublk::sys::UBLK_IO_F_FUA != 0;
    let offset = iod.start_sector << 9;
    let len = u64::from(iod.nr_sectors) << 9;
    let op = match raw_op {
        libublk::sys::UBLK_IO_OP_READ => Op::Read,
        libublk::sys::UBLK_IO_OP_WRITE => Op::Write,
        libublk::sys::UBLK_IO_OP_FLUSH => Op::Flush,
        libublk::sys::UBLK_IO_OP_DISCARD => Op::Discard,
        libublk::sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
        _ => return -libc::EOPNOTSUPP,
    };
    let ctx = &st.ctx;
    let t0 = ctx.now_ns();
    st.trace.borrow_mut().push(TraceEvent {
        time_ns: t0,
        volume: ctx.volume.id(),
        offset,
        len: len as u32,
        op,
    });
    let vol = &ctx.volume;
    let r: Result<(), i32> = match op {
        Op::Read | Op::Write if len as usize > buf.capacity() => Err(libc::EINVAL),
        Op::Read => read(q, vol, ctx, offset, len, buf, pending).await,
        Op::Write => match write(q, st, offset, len, buf, pending).await {
            Ok(()) if fua => vol.flush().map_err(|e| e.errno()),
            r => r,
        },
        Op::Flush => vol.flush().map_err(|e| e.errno()),
        Op::Discard => vol.discard(offset, len).map_err(|e| e.errno()),
        Op::WriteZeroes => {
            let mut eng = st.engine.borrow_mut();
            vol.write_zeroes(&mut **eng, offset, len)
                .map_err(|e| e.errno())
        }
    };
    let t1 = ctx.now_ns();
    st.metrics
        .borrow_mut()
        .record(op, len, t1.saturating_sub(t0), r.is_ok());
    match r {
        Ok(()) if matches!(op, Op::Read | Op::Write) => len as i32,
        Ok(()) => 0,
        Err(errno) => {
            tracing::debug!("{op:?} at {offset} len {len}: errno {errno}");
            -errno
        }
    }
}

/// A write: overwrites of mapped entries go out on the queue ring straight
/// from `buf`, holding the entries' writer tickets until they complete; a
/// write touching an unmapped entry (a first write, which maps an extent)
/// takes the synchronous volume path on this thread's engine.
async fn write(
    q: &UblkQueue<'_>,
    st: &QueueState,
    offset: u64,
    len: u64,
    buf: &mut ReqBuf<'_>,
    pending: &mut Vec<(UblkUringOpFuture, u32)>,
) -> Result<(), i32> {
    let vol = &st.ctx.volume;
    let guard = epoch::pin();
    let mut slots: [Option<(WritePiece, WriteTicket<'_>)>; READ_PIECES_MAX] = Default::default();
    let n = match vol.map_write(&guard, offset, len, &mut slots) {
        Ok(Some(n)) => n,
        Ok(None) => {
            drop(slots);
            let data: &[u8] = match buf {
                ReqBuf::Copy(b) => &b[..len as usize],
                ReqBuf::Fixed { index, bounce } => {
                    bounce_in(q, st, *index, &mut bounce[..len as usize]).await?;
                    &bounce[..len as usize]
                }
            };
            let mut eng = st.engine.borrow_mut();
            return vol.write(&mut **eng, offset, data).map_err(|e| e.errno());
        }
        Err(e) => return Err(e.errno()),
    };
    for (p, _) in slots[..n].iter().flatten() {
        let fd = types::Fd(st.ctx.fds[p.tier]);
        let sqe = match buf {
            ReqBuf::Copy(b) => {
                let src = &b[p.buf_offset as usize..(p.buf_offset + p.len) as usize];
                opcode::Write::new(fd, src.as_ptr(), p.len as u32)
                    .offset(p.device_byte_offset)
                    .build()
            }
            ReqBuf::Fixed { index, .. } => {
                opcode::WriteFixed::new(fd, p.buf_offset as *const u8, p.len as u32, *index)
                    .offset(p.device_byte_offset)
                    .build()
            }
        };
        pending.push((q.ublk_submit_sqe(sqe), p.len as u32));
    }
    let r = await_all(pending, None).await;
    drop(slots); // end the writes: their I/O has completed
    drop(guard);
    r
}

/// Zero copy, first write: copy the request's data into `bounce` (user
/// memory) through this queue's memfd: a fixed-buffer write of the request
/// pages into the tag's region of the memfd, then a read back.
async fn bounce_in(
    q: &UblkQueue<'_>,
    st: &QueueState,
    index: u16,
    bounce: &mut [u8],
) -> Result<(), i32> {
    let fd = st.bounce_fd.as_ref().ok_or(libc::EINVAL)?;
    let at = u64::from(index) * u64::from(DEVICE_IO_BUF_BYTES);
    let len = bounce.len() as u32;
    let sqe = opcode::WriteFixed::new(types::Fd(fd.as_raw_fd()), std::ptr::null(), len, index)
        .offset(at)
        .build();
    let res = q.ublk_submit_sqe(sqe).await;
    if res < 0 {
        return Err(-res);
    }
    if res as u32 != len {
        return Err(libc::EIO);
    }
    fd.read_exact_at(bounce, at)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Await every submitted tier op (all of them, even after a failure: the
/// kernel still uses their buffers); the first error wins, a short transfer
/// is EIO.
async fn await_all(
    pending: &mut Vec<(UblkUringOpFuture, u32)>,
    mut err: Option<i32>,
) -> Result<(), i32> {
    for (f, want) in pending.drain(..) {
        let res = f.await;
        if err.is_none() {
            if res < 0 {
                err = Some(-res);
            } else if res as u32 != want {
                err = Some(libc::EIO);
            }
        }
    }
    err.map_or(Ok(()), Err)
}

/// A read: tier reads on the queue ring straight into `buf`, zeros for holes.
async fn read(
    q: &UblkQueue<'_>,
    vol: &Volume,
    ctx: &QueueCtx,
    offset: u64,
    len: u64,
    buf: &mut ReqBuf<'_>,
    pending: &mut Vec<(UblkUringOpFuture, u32)>,
) -> Result<(), i32> {
    let guard = epoch::pin();
    let mapped = vol.map_read(&guard, offset, len, |p| {
        let at = p.buf_offset as usize;
        let n = p.len as u32;
        let sqe = match (&mut *buf, p.kind) {
            (ReqBuf::Copy(b), PieceKind::Unmapped) => {
                b[at..at + n as usize].fill(0);
                return;
            }
            (
                ReqBuf::Copy(b),
                PieceKind::Mapped {
                    tier,
                    device_byte_offset,
                },
            ) => opcode::Read::new(types::Fd(ctx.fds[tier]), b[at..].as_mut_ptr(), n)
                .offset(device_byte_offset)
                .build(),
            // Zero copy: holes are read from /dev/zero into the request's pages.
            (ReqBuf::Fixed { index, .. }, PieceKind::Unmapped) => {
                opcode::ReadFixed::new(types::Fd(ctx.zero_fd()), at as *mut u8, n, *index).build()
            }
            (
                ReqBuf::Fixed { index, .. },
                PieceKind::Mapped {
                    tier,
                    device_byte_offset,
                },
            ) => opcode::ReadFixed::new(types::Fd(ctx.fds[tier]), at as *mut u8, n, *index)
                .offset(device_byte_offset)
                .build(),
        };
        pending.push((q.ublk_submit_sqe(sqe), n));
    });
    // Every submitted read must complete before the buffer is reused or the
    // guard released, error or not.
    let r = await_all(pending, mapped.err().map(|e| e.errno())).await;
    drop(guard);
    r
}
