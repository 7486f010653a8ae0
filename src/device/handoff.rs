//! The hand-off between a cluster device's queue threads and its network
//! thread: bounded lock-free rings, and the wake-ups on both sides.
//!
//! Contract:
//! - Each queue has one [`QueueEnd`] (its thread's) and one [`NetEnd`] (the
//!   network thread's), joined by two single-producer single-consumer rings
//!   (`rtrb`): requests towards the network (capacity
//!   `DEVICE_CLUSTER_RING_REQUESTS`), results back (capacity: the queue
//!   depth, so posting a result never finds it full: a tag has at most one
//!   request out).
//! - [`QueueEnd::submit`] never blocks: a request that finds the ring full
//!   (or older requests still waiting) is parked, in order, and
//!   [`QueueEnd::retry`] pushes parked requests on a later loop turn. At
//!   most `depth` requests are parked (one per tag), in storage allocated
//!   up front.
//! - A pushed request wakes the network thread through a shared
//!   [`tokio::sync::Notify`] (a permit is kept when it is not waiting, so no
//!   wake-up is lost). A posted result wakes the queue thread through its
//!   eventfd, which the queue keeps a read SQE on, so a queue in `interrupt`
//!   mode still sleeps in `io_uring_enter` until something completes.
//! - [`NetRequest::buf`] points at the tag's ublk buffer. The queue thread
//!   leaves that buffer alone from the push until it takes the result back
//!   ([`QueueEnd::pop_done`]), and waits for every request it handed out
//!   before the buffers go ([`QueueEnd::in_flight`]).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::sync::Notify;

/// What the network thread does for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetOp {
    /// Read `len` bytes at `offset` into the buffer.
    Read,
    /// Write the buffer's first `len` bytes at `offset`.
    Write,
    /// Write `len` zero bytes at `offset` (WRITE_ZEROES and DISCARD: the
    /// shard protocol has no deallocation).
    WriteZeroes,
}

/// The tag's ublk buffer, as the network thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufPtr(pub *mut u8);

// SAFETY: the pointer is only dereferenced by the network thread while the
// request is out, and the queue thread that owns the buffer does not touch
// it then (module contract); it is never shared by two threads at once.
unsafe impl Send for BufPtr {}

/// One request handed to the network thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRequest {
    pub tag: u16,
    pub op: NetOp,
    pub offset: u64,
    pub len: u64,
    /// At least `len` bytes (`Read`, `Write`; unused for `WriteZeroes`).
    pub buf: BufPtr,
}

/// The result of a request: `res` is what the tag completes with (bytes
/// for reads and writes, 0, or a negative errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDone {
    pub tag: u16,
    pub res: i32,
    /// Served from the stage tier (no network).
    pub local: bool,
}

/// A queue thread's end.
pub struct QueueEnd {
    to_net: rtrb::Producer<NetRequest>,
    done: rtrb::Consumer<NetDone>,
    parked: VecDeque<NetRequest>,
    /// Pushed and not yet taken back.
    out: usize,
    notify: Arc<Notify>,
    wake: Arc<OwnedFd>,
}

/// The network thread's end of one queue.
pub struct NetEnd {
    from_queue: rtrb::Consumer<NetRequest>,
    done: rtrb::Producer<NetDone>,
    wake: Arc<OwnedFd>,
}

/// A new eventfd (non-blocking, close-on-exec). The queue waits for it
/// with a `POLL_ADD` SQE, then resets it with [`QueueEnd::reset_wake`]
/// (an io_uring `READ` of a non-blocking eventfd answers `-EAGAIN` at once
/// instead of waiting).
fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd takes plain integers; a non-negative result is a new
    // descriptor owned by nobody else.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created above, owned here alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The two ends for a queue of `depth` tags, with a request ring of `ring`
/// entries; `notify` wakes the network thread.
pub fn channel(
    depth: u16,
    ring: usize,
    notify: Arc<Notify>,
) -> std::io::Result<(QueueEnd, NetEnd)> {
    let (to_net, from_queue) = rtrb::RingBuffer::new(ring);
    let (done_tx, done_rx) = rtrb::RingBuffer::new(usize::from(depth));
    let wake = Arc::new(eventfd()?);
    Ok((
        QueueEnd {
            to_net,
            done: done_rx,
            parked: VecDeque::with_capacity(usize::from(depth)),
            out: 0,
            notify,
            wake: wake.clone(),
        },
        NetEnd {
            from_queue,
            done: done_tx,
            wake,
        },
    ))
}

impl QueueEnd {
    /// Hand `req` over, or park it when the ring is full (or older
    /// requests are parked: order is kept). Returns whether it went out.
    pub fn submit(&mut self, req: NetRequest) -> bool {
        if self.parked.is_empty() && self.to_net.push(req).is_ok() {
            self.out += 1;
            self.notify.notify_one();
            return true;
        }
        self.parked.push_back(req);
        false
    }

    /// Push parked requests, oldest first, while the ring has room;
    /// returns how many went out.
    pub fn retry(&mut self) -> usize {
        let mut n = 0;
        while let Some(&req) = self.parked.front() {
            if self.to_net.push(req).is_err() {
                break;
            }
            self.parked.pop_front();
            n += 1;
        }
        if n > 0 {
            self.out += n;
            self.notify.notify_one();
        }
        n
    }

    /// Take the oldest posted result.
    pub fn pop_done(&mut self) -> Option<NetDone> {
        let d = self.done.pop().ok()?;
        self.out -= 1;
        Some(d)
    }

    /// Requests waiting for room in the ring.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Drop the parked requests (the queue is stopping; they were never
    /// handed out); returns their tags.
    pub fn abandon_parked(&mut self) -> Vec<u16> {
        self.parked.drain(..).map(|r| r.tag).collect()
    }

    /// Requests handed out whose results were not taken yet.
    pub fn in_flight(&self) -> usize {
        self.out
    }

    /// The eventfd a posted result makes readable.
    pub fn wake_fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    /// Reset the eventfd (after its poll fired); returns the wake-ups it
    /// counted (0 when none were pending). Never blocks.
    pub fn reset_wake(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from the non-blocking
        // eventfd we own.
        let r = unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if r == 8 {
            v
        } else {
            0
        }
    }
}

impl NetEnd {
    /// The oldest request handed over, if any.
    pub fn pop(&mut self) -> Option<NetRequest> {
        self.from_queue.pop().ok()
    }

    /// Post a result and wake the queue thread.
    pub fn post(&mut self, d: NetDone) {
        // The ring holds `depth` results and a queue has at most `depth`
        // requests out, so it always has room.
        if self.done.push(d).is_err() {
            tracing::error!("tag {}: result ring full (more requests than tags)", d.tag);
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let r = unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if r < 0 {
            // EAGAIN: the counter is at its maximum, so the queue is woken anyway.
            tracing::debug!("waking a queue: {}", std::io::Error::last_os_error());
        }
    }

    /// Whether the queue thread's end is gone.
    pub fn abandoned(&self) -> bool {
        self.from_queue.is_abandoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tag: u16) -> NetRequest {
        NetRequest {
            tag,
            op: NetOp::Read,
            offset: u64::from(tag) * 4096,
            len: 4096,
            buf: BufPtr(std::ptr::null_mut()),
        }
    }

    #[test]
    fn a_full_ring_parks_in_order_and_retry_drains_it() {
        let notify = Arc::new(Notify::new());
        let (mut q, mut n) = channel(8, 2, notify).unwrap();
        assert!(q.submit(req(0)));
        assert!(q.submit(req(1)));
        assert!(!q.submit(req(2)), "ring of 2 is full");
        assert!(!q.submit(req(3)));
        assert_eq!((q.parked(), q.in_flight()), (2, 2));
        // nothing frees room yet
        assert_eq!(q.retry(), 0);
        assert_eq!(n.pop().unwrap().tag, 0);
        // a new request queues behind the parked ones, never ahead
        assert!(!q.submit(req(4)));
        assert_eq!(q.retry(), 1);
        assert_eq!((q.parked(), q.in_flight()), (2, 3));
        let order: Vec<u16> = std::iter::from_fn(|| n.pop().map(|r| r.tag)).collect();
        assert_eq!(order, vec![1, 2]);
        assert_eq!(q.retry(), 2);
        let order: Vec<u16> = std::iter::from_fn(|| n.pop().map(|r| r.tag)).collect();
        assert_eq!(order, vec![3, 4]);
        assert_eq!((q.parked(), q.in_flight()), (0, 5));
    }

    #[test]
    fn results_come_back_by_tag_and_wake_the_queue() {
        let notify = Arc::new(Notify::new());
        let (mut q, mut n) = channel(4, 4, notify).unwrap();
        for t in 0..4 {
            assert!(q.submit(req(t)));
        }
        assert_eq!(q.reset_wake(), 0, "no result, no wake-up");
        while let Some(r) = n.pop() {
            n.post(NetDone {
                local: false,
                tag: r.tag,
                res: (r.len as i32) + i32::from(r.tag),
            });
        }
        assert_eq!(q.reset_wake(), 4, "one wake-up per result");
        assert_eq!(q.reset_wake(), 0, "reset");
        let got: Vec<(u16, i32)> =
            std::iter::from_fn(|| q.pop_done().map(|d| (d.tag, d.res))).collect();
        assert_eq!(got, vec![(0, 4096), (1, 4097), (2, 4098), (3, 4099)]);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.pop_done(), None);
    }

    #[test]
    fn a_push_leaves_a_permit_for_the_network_thread() {
        let notify = Arc::new(Notify::new());
        let (mut q, _n) = channel(2, 2, notify.clone()).unwrap();
        assert!(q.submit(req(0)));
        // the network thread was not waiting: the wake-up is kept
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let woke = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), notify.notified())
                .await
                .is_ok()
        });
        assert!(woke);
    }

    #[test]
    fn abandoned_parked_requests_were_never_out() {
        let notify = Arc::new(Notify::new());
        let (mut q, n) = channel(4, 1, notify).unwrap();
        assert!(q.submit(req(0)));
        assert!(!q.submit(req(1)));
        assert!(!q.submit(req(2)));
        assert_eq!(q.abandon_parked(), vec![1, 2]);
        assert_eq!((q.parked(), q.in_flight()), (0, 1));
        assert!(!n.abandoned());
        drop(q);
        assert!(n.abandoned());
    }
}
