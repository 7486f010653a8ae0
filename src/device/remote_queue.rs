//! One queue of a device over a cluster volume: its pinned thread and
//! io_uring, and the hand-off of each request to the network thread.
//!
//! Contract:
//! - Same thread model as the local queues (`device::queue`): one pinned
//!   thread, libublk's non-async completion loop, the same poll modes, a
//!   fixed state slot per tag; copy mode only (the data passes through the
//!   tag's ublk buffer in user memory, which the network thread reads or
//!   fills).
//! - The thread never blocks on the network. READ, WRITE, WRITE_ZEROES and
//!   DISCARD go to the network thread as a [`NetRequest`] (tag, op, byte
//!   offset, length, pointer to the tag's buffer) through the queue's
//!   [`QueueEnd`]; a request that finds the ring full stays parked and is
//!   pushed again on a later loop turn. The tag is completed when its
//!   result comes back: the network thread writes the queue's eventfd, on
//!   which the ring always has a `POLL_ADD` SQE, so `interrupt` mode sleeps
//!   in `io_uring_enter` until then; every loop turn also takes the results
//!   that are there.
//! - FLUSH completes at once: a storage node acknowledges a write only once
//!   it is durable (`cluster::store`), so every write completed before the
//!   flush is durable already. FUA needs nothing more for the same reason.
//! - DISCARD is served as WRITE_ZEROES (the shard protocol frees nothing):
//!   a discarded range reads as zeros.
//! - Every request pushes one trace event and records its latency under
//!   the hit class `remote`, or `hot` for a read the network thread served
//!   from the stage tier (`NetDone::local`).
//! - When the queue stops, it waits for the requests still out before its
//!   buffers go.

use crate::constants::{DEVICE_IO_BUF_BYTES, DEVICE_STATS_PUBLISH_MS};
use crate::device::config::PollMode;
use crate::device::handoff::{BufPtr, NetOp, NetRequest, QueueEnd};
use crate::device::metrics::{Hit, Op, QueueMetrics, TraceEvent, TraceProducer};
use crate::device::roster::{init_queue_ring, QueueRoster};
use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{BufDesc, BufDescList, UblkError, UblkIORes};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What every queue thread of a cluster device shares.
pub struct RemoteCtx {
    /// Volume id in trace events.
    pub volume_id: u32,
    pub poll: PollMode,
    pub start: Instant,
    /// Each queue's CPU, thread, trace producer and statistics.
    pub roster: QueueRoster,
    /// Each queue's end of the hand-off, taken by its thread at start.
    pub ends: Mutex<Vec<Option<QueueEnd>>>,
}

impl RemoteCtx {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// The op byte of a target SQE's user data.
mod kind {
    /// The read SQE on the queue's eventfd.
    pub const WAKE: u32 = 1;
    /// The stats publish timer.
    pub const TICK: u32 = 2;
}

/// Tags of the two target SQEs: above every real tag.
const WAKE_TAG: u16 = u16::MAX;
const TICK_TAG: u16 = u16::MAX - 1;

#[derive(Debug, Clone, Copy)]
struct Slot {
    op: Op,
    offset: u64,
    len: u64,
    t0: u64,
}

struct Server<'a> {
    ctx: &'a RemoteCtx,
    qid: u16,
    bufs: Vec<IoBuf<u8>>,
    slots: Vec<Slot>,
    end: QueueEnd,
    metrics: QueueMetrics,
    trace: TraceProducer,
    wake_armed: bool,
    tick_ts: Box<types::Timespec>,
    tick_armed: bool,
}

/// The body of queue thread `qid` of a cluster device.
pub fn run_remote_queue(qid: u16, dev: &UblkDev, ctx: &Arc<RemoteCtx>) {
    let (cpu, trace) = ctx.roster.enter(qid);
    if let Err(e) = serve_queue(qid, cpu, trace, dev, ctx) {
        tracing::error!("queue {qid}: {e}");
    }
}

fn serve_queue(
    qid: u16,
    cpu: usize,
    trace: TraceProducer,
    dev: &UblkDev,
    ctx: &Arc<RemoteCtx>,
) -> Result<(), UblkError> {
    let depth = dev.dev_info.queue_depth;
    let end = ctx.ends.lock().expect("ends")[qid as usize]
        .take()
        .expect("one thread per queue");
    let metrics = QueueMetrics::new(qid, cpu);
    ctx.roster.set_snapshot(qid, &metrics);
    init_queue_ring(depth)?;
    let q = UblkQueue::new(qid, dev)?;
    let mut s = Server {
        ctx,
        qid,
        bufs: dev.alloc_queue_io_bufs(),
        slots: vec![
            Slot {
                op: Op::Read,
                offset: 0,
                len: 0,
                t0: 0,
            };
            usize::from(depth)
        ],
        end,
        metrics,
        trace,
        wake_armed: false,
        tick_ts: Box::new(
            types::Timespec::new().nsec((DEVICE_STATS_PUBLISH_MS * 1_000_000) as u32),
        ),
        tick_armed: false,
    };
    let q = q.submit_fetch_commands_unified(BufDescList::Slices(Some(&s.bufs)))?;
    s.arm_wake(&q);
    let r = s.event_loop(&q);
    s.drain_on_stop();
    let dropped = s.trace.dropped();
    s.metrics.maybe_publish(ctx.now_ns(), dropped, true);
    match r {
        Err(UblkError::QueueIsDown) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

fn user_data(tag: u16, kind: u32) -> u64 {
    UblkIOCtx::build_user_data(tag, kind, 0, true)
}

impl Server<'_> {
    fn event_loop(&mut self, q: &UblkQueue<'_>) -> Result<(), UblkError> {
        let poll = self.ctx.poll;
        let mut last_cqe = Instant::now();
        loop {
            let to_wait = match poll {
                PollMode::Interrupt => 1,
                PollMode::Busy => 0,
                PollMode::Adaptive => usize::from(
                    last_cqe.elapsed().as_micros() as u64
                        >= crate::constants::DEVICE_ADAPTIVE_SPIN_US,
                ),
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
            // Results are taken on every turn too (one atomic load when
            // there are none): a turn woken by something else completes
            // what came back meanwhile.
            self.take_results(q);
            if self.end.parked() > 0 {
                self.end.retry();
            }
            if !self.wake_armed {
                self.arm_wake(q);
            }
        }
    }

    /// Keep a poll SQE on the queue's eventfd.
    fn arm_wake(&mut self, q: &UblkQueue<'_>) {
        let sqe = opcode::PollAdd::new(types::Fd(self.end.wake_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(WAKE_TAG, kind::WAKE));
        self.wake_armed = q.ublk_submit_sqe_sync(sqe).is_ok();
        if !self.wake_armed {
            tracing::error!("queue {}: cannot arm the wake-up read", self.qid);
        }
    }

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
                .user_data(user_data(TICK_TAG, kind::TICK));
            self.tick_armed = q.ublk_submit_sqe_sync(sqe).is_ok();
        }
    }

    fn on_cqe(&mut self, q: &UblkQueue<'_>, ud: u64, res: i32) {
        let tag = UblkIOCtx::user_data_to_tag(ud) as u16;
        if ud & libublk::UblkUringData::Target as u64 == 0 {
            if res == libublk::sys::UBLK_IO_RES_OK as i32 {
                self.start(q, tag);
            }
            return;
        }
        match UblkIOCtx::user_data_to_op(ud) {
            kind::WAKE => {
                self.wake_armed = false;
                self.end.reset_wake();
                self.take_results(q);
            }
            kind::TICK => self.tick_armed = false,
            k => tracing::error!("queue {}: unknown completion kind {k}", self.qid),
        }
    }

    /// Complete the tags whose results came back.
    fn take_results(&mut self, q: &UblkQueue<'_>) {
        while let Some(d) = self.end.pop_done() {
            let hit = if d.local { Hit::Hot } else { Hit::Remote };
            self.finish(q, d.tag, d.res, hit);
        }
    }

    /// A request arrived for `tag`.
    fn start(&mut self, q: &UblkQueue<'_>, tag: u16) {
        let iod = q.get_iod(tag);
        let offset = iod.start_sector << 9;
        let len = u64::from(iod.nr_sectors) << 9;
        let (op, net) = match iod.op_flags & 0xff {
            libublk::sys::UBLK_IO_OP_READ => (Op::Read, Some(NetOp::Read)),
            libublk::sys::UBLK_IO_OP_WRITE => (Op::Write, Some(NetOp::Write)),
            libublk::sys::UBLK_IO_OP_FLUSH => (Op::Flush, None),
            libublk::sys::UBLK_IO_OP_DISCARD => (Op::Discard, Some(NetOp::WriteZeroes)),
            libublk::sys::UBLK_IO_OP_WRITE_ZEROES => (Op::WriteZeroes, Some(NetOp::WriteZeroes)),
            _ => return self.commit(q, tag, -libc::EOPNOTSUPP),
        };
        let t0 = self.ctx.now_ns();
        self.trace.push(TraceEvent {
            time_ns: t0,
            volume: self.ctx.volume_id,
            offset,
            len: len as u32,
            op,
        });
        self.slots[tag as usize] = Slot {
            op,
            offset,
            len,
            t0,
        };
        let Some(net) = net else {
            // FLUSH: every acknowledged write is durable on its replicas.
            return self.finish(q, tag, 0, Hit::Remote);
        };
        if net != NetOp::WriteZeroes && len > u64::from(DEVICE_IO_BUF_BYTES) {
            return self.finish(q, tag, -libc::EINVAL, Hit::Remote);
        }
        self.end.submit(NetRequest {
            tag,
            op: net,
            offset,
            len,
            buf: BufPtr(self.bufs[tag as usize].as_mut_ptr()),
        });
    }

    /// The request of `tag` ended with `res`: record it and commit.
    fn finish(&mut self, q: &UblkQueue<'_>, tag: u16, res: i32, hit: Hit) {
        let s = self.slots[tag as usize];
        let lat = self.ctx.now_ns().saturating_sub(s.t0);
        self.metrics.record(s.op, hit, s.len, lat, res >= 0);
        if res < 0 {
            tracing::debug!("{:?} at {} len {}: errno {}", s.op, s.offset, s.len, -res);
        }
        self.commit(q, tag, res);
    }

    fn commit(&mut self, q: &UblkQueue<'_>, tag: u16, res: i32) {
        let desc = BufDesc::Slice(self.bufs[tag as usize].as_slice());
        if let Err(e) = q.complete_io_cmd_unified(tag, desc, Ok(UblkIORes::Result(res))) {
            tracing::error!("queue {}: tag {tag}: commit: {e}", self.qid);
        }
    }

    /// The queue stopped: wait for the requests still out (their buffers
    /// are about to go), dropping the ones never handed over.
    fn drain_on_stop(&mut self) {
        self.end.abandon_parked();
        while self.end.in_flight() > 0 {
            if self.end.pop_done().is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

const _: () = assert!(crate::constants::DEVICE_DEPTH_MAX_REQUESTS < TICK_TAG);
