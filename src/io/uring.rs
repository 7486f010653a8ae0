//! [`UringEngine`]: the real [`IoEngine`], one io_uring per thread with
//! registered files and a registered buffer arena.
//!
//! Contract:
//! - Built over devices that all have a file descriptor ([`BlockDev::raw_fd`]);
//!   the fds are registered and every op uses `types::Fixed`. A fake device
//!   (memory, fault injection) is refused with [`IoError::Ring`]. At build time
//!   the engine checks that io_uring exists (`ENOSYS`/`EPERM` become a clear
//!   [`IoError::Ring`]) and probes every opcode it uses.
//! - Two interfaces share the ring and may be mixed:
//!   * Batch ([`IoEngine::run`]): borrowed buffers; ops are pushed while the
//!     ring has room and the whole lot is submitted with one
//!     `submit_and_wait`; a batch larger than the ring keeps the ring full
//!     (each completion frees a slot for the next op). A `Sync` op is a
//!     barrier within its batch: it is submitted only once every earlier op of
//!     the batch has completed, so it covers them. `run` returns only after
//!     every op of the batch has completed.
//!   * Streaming ([`UringEngine::submit`] + [`UringEngine::reap`]) for deep
//!     queues: an op owns its buffer, an [`ArenaBuf`] slot, while in flight
//!     and gives it back in its [`Completion`], tagged with the caller's
//!     `user_data`. `submit` only queues the SQE (no syscall); `reap` submits
//!     everything queued and waits for completions. Up to
//!     [`IO_RING_ENTRIES`] ops may be in flight; `submit` hands the op back
//!     when the ring is full. A streaming `Sync` is NOT ordered against other
//!     ops in flight: submit it after reaping the writes it must cover.
//!     [`UringEngine::submit_raw`] is the same with a caller-owned buffer
//!     (e.g. a ublk request buffer), `unsafe` because the caller must keep the
//!     memory valid until the completion is reaped.
//!   * When queued stream ops reach the kernel is the [`SubmitPolicy`]:
//!     `Batched` hands everything to the next `reap` (one `io_uring_enter`
//!     per reap); `Early` (the default) does that too, except after a reap
//!     that returned at least [`IO_EARLY_SUBMIT_MIN_COMPLETIONS`]
//!     completions: the ops queued next are handed over in chunks of 1, 2,
//!     4, ... (a non-waiting `io_uring_enter` each) as they are queued, so
//!     the device starts on the first refill while the caller prepares the
//!     rest. One enter carrying N ops issues them under one block plug, so
//!     the first reaches the device only after all N went through the
//!     file system; on a device that completes in bursts (a virtio disk)
//!     that left it idle for a large part of each refill.
//!     [`UringEngine::enters`] counts the engine's `io_uring_enter` calls.
//! - Short reads and writes are finished by resubmitting the remainder;
//!   `EINTR`/`EAGAIN` completions are resubmitted; end of file is
//!   [`IoError::Short`]; other errors are per op, naming the device.
//!
//! Memory safety of buffers in flight:
//! - The arena ([`BufArena`]) is one aligned allocation of
//!   [`IO_REGISTERED_BUFFERS`] slots of [`IO_REGISTERED_BUFFER_BYTES`],
//!   registered with `register_buffers`. It lives in an `Arc`: the engine
//!   holds one, and so does every [`ArenaBuf`] handed out, so the memory
//!   outlives both the registration and any buffer a caller still holds.
//!   Slots are handed out through a lock-free bitmap; an `ArenaBuf` is
//!   exclusive (like a `Box<[u8]>`) and returns its slot when dropped.
//! - A streaming op moves its `ArenaBuf` into the engine, so the caller
//!   cannot touch the memory the kernel is filling; the buffer comes back only
//!   with the completion.
//! - A batch borrows its buffers for the duration of `run`, which does not
//!   return before every op it submitted has completed. Ops whose buffer lies
//!   inside one arena slot use `ReadFixed`/`WriteFixed` with that slot's
//!   index; other buffers use plain `Read`/`Write`.
//! - Dropping the engine first waits for every op still in flight. If the
//!   ring breaks so that in-flight ops can no longer be waited for, the
//!   process aborts rather than free memory the kernel may still write.

use super::{check_transfer, BlockDev, DevIndex, IoEngine, IoError, IoOp, IoResult, OpKind};
use crate::constants::{
    BLOCK_SIZE_BYTES, IO_EARLY_SUBMIT_MIN_COMPLETIONS, IO_REGISTERED_BUFFERS,
    IO_REGISTERED_BUFFER_BYTES, IO_RING_ENTRIES,
};
use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const _: () = assert!(IO_REGISTERED_BUFFERS > 0 && IO_REGISTERED_BUFFERS <= u16::MAX as usize);
const _: () = assert!(IO_REGISTERED_BUFFER_BYTES % BLOCK_SIZE_BYTES as usize == 0);
const _: () = assert!(IO_REGISTERED_BUFFER_BYTES <= u32::MAX as usize);
const _: () = assert!(IO_RING_ENTRIES.is_power_of_two());

/// The registered buffer arena of one engine (see the module doc).
pub struct BufArena {
    base: std::ptr::NonNull<u8>,
    slots: usize,
    slot_bytes: usize,
    /// Bit set = slot free.
    free: Vec<AtomicU64>,
}

// SAFETY: the arena only hands out disjoint slots through the atomic bitmap;
// each slot is accessed through the one ArenaBuf that owns it.
unsafe impl Send for BufArena {}
// SAFETY: as above; shared access only touches the atomic bitmap.
unsafe impl Sync for BufArena {}

impl BufArena {
    fn new(slots: usize, slot_bytes: usize) -> Arc<BufArena> {
        let layout = Self::layout(slots, slot_bytes);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let base =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let words = slots.div_ceil(64);
        let free = (0..words)
            .map(|w| {
                let n = (slots - w * 64).min(64);
                AtomicU64::new(if n == 64 { u64::MAX } else { (1u64 << n) - 1 })
            })
            .collect();
        Arc::new(BufArena {
            base,
            slots,
            slot_bytes,
            free,
        })
    }

    fn layout(slots: usize, slot_bytes: usize) -> Layout {
        Layout::from_size_align(slots * slot_bytes, BLOCK_SIZE_BYTES as usize)
            .expect("arena layout")
    }

    /// Take a free slot, or `None` when every slot is in use.
    pub fn alloc(self: &Arc<Self>) -> Option<ArenaBuf> {
        for (w, word) in self.free.iter().enumerate() {
            let mut cur = word.load(Ordering::Relaxed);
            while cur != 0 {
                let bit = cur.trailing_zeros();
                match word.compare_exchange_weak(
                    cur,
                    cur & !(1u64 << bit),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return Some(ArenaBuf {
                            arena: self.clone(),
                            index: (w * 64 + bit as usize) as u16,
                        });
                    }
                    Err(now) => cur = now,
                }
            }
        }
        None
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Slots not handed out.
    pub fn free_slots(&self) -> usize {
        self.free
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }

    fn slot_ptr(&self, index: u16) -> *mut u8 {
        // SAFETY: index < slots, so the offset stays inside the allocation.
        unsafe { self.base.as_ptr().add(index as usize * self.slot_bytes) }
    }

    /// The slot holding `[ptr, ptr+len)` entirely, if any.
    fn slot_of(&self, ptr: *const u8, len: usize) -> Option<u16> {
        let start = self.base.as_ptr() as usize;
        let p = ptr as usize;
        if p < start || p >= start + self.slots * self.slot_bytes {
            return None;
        }
        let idx = (p - start) / self.slot_bytes;
        let slot_end = start + (idx + 1) * self.slot_bytes;
        (p + len <= slot_end).then_some(idx as u16)
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.slots)
            .map(|i| libc::iovec {
                iov_base: self.slot_ptr(i as u16) as *mut libc::c_void,
                iov_len: self.slot_bytes,
            })
            .collect()
    }
}

impl Drop for BufArena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the last Arc is gone,
        // so no ArenaBuf and no engine (hence no registration) refers to it.
        unsafe {
            dealloc(
                self.base.as_ptr(),
                Self::layout(self.slots, self.slot_bytes),
            )
        }
    }
}

/// One exclusively owned slot of a [`BufArena`]: an aligned buffer of
/// [`BufArena::slot_bytes`] that io_uring reads and writes without mapping
/// pages per op. Returns to the arena when dropped.
pub struct ArenaBuf {
    arena: Arc<BufArena>,
    index: u16,
}

impl ArenaBuf {
    /// The registered buffer index of this slot.
    pub fn index(&self) -> u16 {
        self.index
    }
}

impl std::ops::Deref for ArenaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the slot is valid for slot_bytes initialised bytes and owned
        // exclusively by self (the bitmap gave it out once).
        unsafe {
            std::slice::from_raw_parts(self.arena.slot_ptr(self.index), self.arena.slot_bytes)
        }
    }
}

impl std::ops::DerefMut for ArenaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.arena.slot_ptr(self.index), self.arena.slot_bytes)
        }
    }
}

impl Drop for ArenaBuf {
    fn drop(&mut self) {
        let (w, bit) = (self.index as usize / 64, self.index as usize % 64);
        self.arena.free[w].fetch_or(1u64 << bit, Ordering::Release);
    }
}

/// What a streaming op does; reads and writes transfer `buf[..len]`.
pub enum StreamKind {
    Read { buf: ArenaBuf, len: usize },
    Write { buf: ArenaBuf, len: usize },
    Sync,
}

/// One streaming op.
pub struct StreamOp {
    pub dev: DevIndex,
    pub offset: u64,
    pub kind: StreamKind,
    /// Returned unchanged in the op's [`Completion`].
    pub user_data: u64,
}

/// What a raw streaming op does on caller-owned memory.
#[derive(Debug, Clone, Copy)]
pub enum RawKind {
    Read { ptr: *mut u8, len: usize },
    Write { ptr: *const u8, len: usize },
    Sync,
}

/// The end of one streaming op.
pub struct Completion {
    pub user_data: u64,
    pub result: IoResult<()>,
    /// The op's arena buffer (reads: filled), `None` for syncs and raw ops.
    pub buf: Option<ArenaBuf>,
}

/// When queued streaming ops are handed to the kernel (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubmitPolicy {
    /// Everything queued goes with the next [`UringEngine::reap`]: the
    /// fewest syscalls, for devices that complete at submission (a tmpfs
    /// file) or callers that queue one op per reap.
    Batched,
    /// After a reap of at least [`IO_EARLY_SUBMIT_MIN_COMPLETIONS`]
    /// completions, queued ops go to the kernel in chunks of 1, 2, 4, ...
    /// while the caller queues them; the rest goes with the next reap.
    #[default]
    Early,
}

/// State of early submission between two reaps.
#[derive(Debug, Clone, Copy, Default)]
struct Early {
    /// The last reap armed it.
    armed: bool,
    /// Ops queued since the last hand-over.
    queued: usize,
    /// Size of the next chunk.
    chunk: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
    Sync,
}

enum Owner {
    Free,
    /// Index of the op in the batch `run` is executing.
    Batch(usize),
    Stream {
        user_data: u64,
        buf: Option<ArenaBuf>,
    },
}

/// One op in flight; its index is the SQE's user_data.
struct Slot {
    dev: u16,
    dir: Dir,
    ptr: *mut u8,
    len: usize,
    done: usize,
    offset: u64,
    fixed: Option<u16>,
    owner: Owner,
}

pub struct UringEngine {
    // Declared first so it is dropped before the arena and the devices.
    ring: IoUring,
    arena: Arc<BufArena>,
    devs: Vec<Arc<dyn BlockDev>>,
    sizes: Vec<u64>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Stream completions waiting for `reap`.
    ready: VecDeque<Completion>,
    in_flight: usize,
    stream_in_flight: usize,
    /// Batch results gathered while processing CQEs (index, result).
    batch_done: Vec<(usize, IoResult<()>)>,
    policy: SubmitPolicy,
    early: Early,
    /// `io_uring_enter` calls made so far.
    enters: u64,
}

// SAFETY: the raw pointers in `slots` name buffers whose validity is
// guaranteed by ownership (ArenaBuf), by `run`'s borrow, or by the caller of
// `submit_raw`; none is tied to the creating thread. The ring is Send.
unsafe impl Send for UringEngine {}

fn ring_err(what: &str, e: std::io::Error) -> IoError {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => " (this kernel has no io_uring)",
        Some(libc::EPERM) => {
            " (io_uring is disabled: see /proc/sys/kernel/io_uring_disabled, or seccomp)"
        }
        Some(libc::ENOMEM) => {
            " (locked memory limit too low for registered buffers: raise RLIMIT_MEMLOCK)"
        }
        _ => "",
    };
    IoError::Ring(format!("{what}: {e}{hint}"))
}

impl UringEngine {
    /// An engine over `devs` ([`DevIndex`] `i` names `devs[i]`), with a ring
    /// of [`IO_RING_ENTRIES`] and an arena of [`IO_REGISTERED_BUFFERS`] x
    /// [`IO_REGISTERED_BUFFER_BYTES`].
    pub fn new(devs: Vec<Arc<dyn BlockDev>>) -> IoResult<Self> {
        let mut fds = Vec::with_capacity(devs.len());
        for d in &devs {
            match d.raw_fd() {
                Some(fd) => fds.push(fd),
                None => {
                    return Err(IoError::Ring(format!(
                        "device {} has no file descriptor (an in-memory or fault-injecting fake); use SyncEngine for it",
                        d.name()
                    )))
                }
            }
        }
        if devs.len() > u16::MAX as usize {
            return Err(IoError::Ring(format!(
                "{} devices: at most {} per engine",
                devs.len(),
                u16::MAX
            )));
        }
        // Cooperative task running cuts interrupts; older kernels refuse it.
        let ring = match IoUring::builder()
            .setup_coop_taskrun()
            .build(IO_RING_ENTRIES)
        {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::new(IO_RING_ENTRIES).map_err(|e| ring_err("setup", e))?
            }
            Err(e) => return Err(ring_err("setup", e)),
        };
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| ring_err("probe", e))?;
        for (name, code) in [
            ("READ", opcode::Read::CODE),
            ("WRITE", opcode::Write::CODE),
            ("READ_FIXED", opcode::ReadFixed::CODE),
            ("WRITE_FIXED", opcode::WriteFixed::CODE),
            ("FSYNC", opcode::Fsync::CODE),
        ] {
            if !probe.is_supported(code) {
                return Err(IoError::Ring(format!("kernel lacks opcode {name}")));
            }
        }
        if !fds.is_empty() {
            ring.submitter()
                .register_files(&fds)
                .map_err(|e| ring_err("register files", e))?;
        }
        let arena = BufArena::new(IO_REGISTERED_BUFFERS, IO_REGISTERED_BUFFER_BYTES);
        let iovecs = arena.iovecs();
        // SAFETY: the iovecs describe the arena's allocation, which the engine
        // keeps alive (Arc) for longer than the ring that registers it.
        unsafe { ring.submitter().register_buffers(&iovecs) }
            .map_err(|e| ring_err("register buffers", e))?;
        let cap = IO_RING_ENTRIES as usize;
        let slots = (0..cap)
            .map(|_| Slot {
                dev: 0,
                dir: Dir::Sync,
                ptr: std::ptr::null_mut(),
                len: 0,
                done: 0,
                offset: 0,
                fixed: None,
                owner: Owner::Free,
            })
            .collect();
        let sizes = devs.iter().map(|d| d.size_bytes()).collect();
        Ok(UringEngine {
            ring,
            arena,
            devs,
            sizes,
            slots,
            free_slots: (0..cap as u32).rev().collect(),
            ready: VecDeque::with_capacity(cap),
            in_flight: 0,
            stream_in_flight: 0,
            batch_done: Vec::with_capacity(cap),
            policy: SubmitPolicy::default(),
            early: Early::default(),
            enters: 0,
        })
    }

    /// The registered buffer arena: take [`ArenaBuf`]s from it for streaming
    /// ops (and for batch ops, which then use fixed-buffer opcodes).
    pub fn arena(&self) -> &Arc<BufArena> {
        &self.arena
    }

    /// The devices, in [`DevIndex`] order.
    pub fn devices(&self) -> &[Arc<dyn BlockDev>] {
        &self.devs
    }

    /// Most ops in flight at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Ops submitted (batch or stream) whose completion is not yet processed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Streaming ops submitted and not yet returned by `reap`.
    pub fn stream_pending(&self) -> usize {
        self.stream_in_flight + self.ready.len()
    }

    /// When queued streaming ops reach the kernel (default `Early`).
    pub fn set_submit_policy(&mut self, policy: SubmitPolicy) {
        self.policy = policy;
        self.early = Early::default();
    }

    pub fn submit_policy(&self) -> SubmitPolicy {
        self.policy
    }

    /// Ops queued in the submission ring and not yet handed to the kernel.
    pub fn unsubmitted(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// `io_uring_enter` calls this engine has made (submissions and waits).
    pub fn enters(&self) -> u64 {
        self.enters
    }

    /// Queue a streaming op (no syscall; `reap` submits). Returns the op back
    /// when the ring is full. An invalid op (bad device, misaligned, out of
    /// range, `len` larger than its buffer) is accepted and completes with its
    /// error.
    pub fn submit(&mut self, op: StreamOp) -> Result<(), StreamOp> {
        if self.free_slots.is_empty() {
            return Err(op);
        }
        let StreamOp {
            dev,
            offset,
            kind,
            user_data,
        } = op;
        let (dir, mut buf, len) = match kind {
            StreamKind::Read { buf, len } => (Dir::Read, Some(buf), len),
            StreamKind::Write { buf, len } => (Dir::Write, Some(buf), len),
            StreamKind::Sync => (Dir::Sync, None, 0),
        };
        let (ptr, fixed) = match &mut buf {
            Some(b) if len > b.len() => {
                let e = IoError::Misaligned { offset, len };
                self.ready.push_back(Completion {
                    user_data,
                    result: Err(e),
                    buf,
                });
                return Ok(());
            }
            Some(b) => (b.as_mut_ptr(), Some(b.index())),
            None => (std::ptr::null_mut(), None),
        };
        let owner = Owner::Stream { user_data, buf };
        match self.start(dev, dir, ptr, len, offset, fixed, owner) {
            Ok(()) => {
                self.stream_in_flight += 1;
                self.queued_stream_op();
            }
            Err((e, Owner::Stream { user_data, buf })) => {
                self.ready.push_back(Completion {
                    user_data,
                    result: Err(e),
                    buf,
                });
            }
            Err(_) => unreachable!("start hands back the owner it was given"),
        }
        Ok(())
    }

    /// Queue a streaming op on caller-owned memory; its completion has
    /// `buf: None`. Returns `Err(())` when the ring is full.
    ///
    /// # Safety
    /// For a read or write, `ptr..ptr+len` must stay valid (and, for a read,
    /// not be accessed) until this op's completion has been returned by
    /// [`UringEngine::reap`] (or the engine is dropped, which waits for it).
    #[allow(clippy::result_unit_err)]
    pub unsafe fn submit_raw(
        &mut self,
        dev: DevIndex,
        offset: u64,
        kind: RawKind,
        user_data: u64,
    ) -> Result<(), ()> {
        if self.free_slots.is_empty() {
            return Err(());
        }
        let (dir, ptr, len) = match kind {
            RawKind::Read { ptr, len } => (Dir::Read, ptr, len),
            RawKind::Write { ptr, len } => (Dir::Write, ptr as *mut u8, len),
            RawKind::Sync => (Dir::Sync, std::ptr::null_mut(), 0),
        };
        let fixed = if dir == Dir::Sync {
            None
        } else {
            self.arena.slot_of(ptr, len)
        };
        match self.start(
            dev,
            dir,
            ptr,
            len,
            offset,
            fixed,
            Owner::Stream {
                user_data,
                buf: None,
            },
        ) {
            Ok(()) => {
                self.stream_in_flight += 1;
                self.queued_stream_op();
            }
            Err((e, _)) => self.ready.push_back(Completion {
                user_data,
                result: Err(e),
                buf: None,
            }),
        }
        Ok(())
    }

    /// Submit every queued op, wait until at least `min_complete` streaming
    /// completions are available (fewer if fewer are pending), and move every
    /// available one into `out`. Returns how many were appended. `reap(0, ..)`
    /// submits and collects without waiting. Errors only if the ring broke.
    pub fn reap(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> IoResult<usize> {
        let want = min_complete.min(self.stream_pending());
        self.collect();
        let mut missing = want.saturating_sub(self.ready.len());
        // Always hand queued SQEs to the kernel, waiting if needed.
        if missing > 0 || !self.ring.submission().is_empty() {
            self.enter(missing.min(self.stream_in_flight))?;
        }
        loop {
            self.collect();
            missing = want.saturating_sub(self.ready.len());
            if missing == 0 {
                break;
            }
            self.enter(missing.min(self.stream_in_flight))?;
        }
        let n = self.ready.len();
        out.extend(self.ready.drain(..));
        // The caller is about to refill about `n` ops: early submission pays
        // only for a refill of several.
        self.early = Early {
            armed: self.policy == SubmitPolicy::Early && n >= IO_EARLY_SUBMIT_MIN_COMPLETIONS,
            queued: 0,
            chunk: 1,
        };
        Ok(n)
    }

    /// A stream op was queued: under early submission, hand the chunk to
    /// the kernel once it is full (no waiting), and double the next one.
    fn queued_stream_op(&mut self) {
        if !self.early.armed {
            return;
        }
        self.early.queued += 1;
        if self.early.queued < self.early.chunk {
            return;
        }
        self.enters += 1;
        if let Err(e) = self.ring.submit() {
            // Transient: the ops stay queued and go with the next enter. A
            // broken ring is reported by that enter.
            if !submit_error_is_transient(&e) {
                self.early.armed = false;
            }
            return;
        }
        self.early.queued = 0;
        self.early.chunk = (self.early.chunk * 2).min(self.slots.len());
    }

    /// Validate and queue one op in a free slot. On a validation error the
    /// owner comes back with the error.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        dev: DevIndex,
        dir: Dir,
        ptr: *mut u8,
        len: usize,
        offset: u64,
        fixed: Option<u16>,
        owner: Owner,
    ) -> Result<(), (IoError, Owner)> {
        let Some(&size) = self.sizes.get(dev.0 as usize) else {
            return Err((
                IoError::NoDevice {
                    index: dev.0,
                    count: self.devs.len(),
                },
                owner,
            ));
        };
        if dir != Dir::Sync {
            if let Err(e) = check_transfer(ptr, len, offset, size) {
                return Err((e, owner));
            }
            if len > u32::MAX as usize {
                return Err((
                    IoError::Ring(format!("transfer of {len} bytes is too large for one op")),
                    owner,
                ));
            }
        }
        let id = self
            .free_slots
            .pop()
            .expect("caller checked for a free slot");
        self.slots[id as usize] = Slot {
            dev: dev.0,
            dir,
            ptr,
            len,
            done: 0,
            offset,
            fixed,
            owner,
        };
        self.in_flight += 1;
        self.push_sqe(id);
        Ok(())
    }

    /// Build the SQE for the remainder of slot `id` and push it.
    fn push_sqe(&mut self, id: u32) {
        let s = &self.slots[id as usize];
        let fd = types::Fixed(s.dev as u32);
        // SAFETY: done <= len, so the pointer stays inside the op's buffer.
        let ptr = unsafe { s.ptr.add(s.done) };
        let len = (s.len - s.done) as u32;
        let off = s.offset + s.done as u64;
        let entry: squeue::Entry = match (s.dir, s.fixed) {
            (Dir::Read, Some(i)) => opcode::ReadFixed::new(fd, ptr, len, i).offset(off).build(),
            (Dir::Read, None) => opcode::Read::new(fd, ptr, len).offset(off).build(),
            (Dir::Write, Some(i)) => opcode::WriteFixed::new(fd, ptr, len, i).offset(off).build(),
            (Dir::Write, None) => opcode::Write::new(fd, ptr, len).offset(off).build(),
            (Dir::Sync, _) => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        let entry = entry.user_data(id as u64);
        loop {
            // SAFETY: the buffer stays valid until the completion: stream ops
            // own it (ArenaBuf) or the raw caller promised it, batch ops borrow
            // it for the whole `run`, which waits for every op it started.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The SQ is full of queued entries: hand them to the kernel.
            self.enters += 1;
            if let Err(e) = self.ring.submit() {
                if !submit_error_is_transient(&e) {
                    self.fatal(&format!("submit: {e}"));
                }
            }
        }
    }

    /// Submit queued SQEs and wait for `want` CQEs, retrying transient errors.
    fn enter(&mut self, want: usize) -> IoResult<()> {
        // Whatever is queued goes now: the next chunk of an early
        // submission starts again at one.
        self.early.queued = 0;
        loop {
            self.enters += 1;
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                    // CQ overflow backlog: consume completions, then retry.
                    Some(libc::EBUSY) => {
                        self.collect();
                        if want == 0 || !self.ring.completion().is_empty() {
                            return Ok(());
                        }
                    }
                    _ => return Err(ring_err("submit_and_wait", e)),
                },
            }
        }
    }

    /// Process every available CQE: finish, resubmit, or record each op.
    fn collect(&mut self) {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                return;
            };
            let id = cqe.user_data() as u32;
            let res = cqe.result();
            let s = &mut self.slots[id as usize];
            let outcome: Option<IoResult<()>> = if res < 0 {
                let errno = -res;
                if errno == libc::EINTR || errno == libc::EAGAIN {
                    None
                } else {
                    Some(Err(IoError::os(self.devs[s.dev as usize].name(), errno)))
                }
            } else if s.dir == Dir::Sync {
                Some(Ok(()))
            } else if res == 0 {
                Some(Err(IoError::Short {
                    offset: s.offset,
                    len: s.len,
                    done: s.done,
                }))
            } else {
                s.done += res as usize;
                if s.done >= s.len {
                    Some(Ok(()))
                } else {
                    None
                }
            };
            match outcome {
                None => self.push_sqe(id),
                Some(result) => self.finish(id, result),
            }
        }
    }

    fn finish(&mut self, id: u32, result: IoResult<()>) {
        let owner = std::mem::replace(&mut self.slots[id as usize].owner, Owner::Free);
        self.free_slots.push(id);
        self.in_flight -= 1;
        match owner {
            Owner::Batch(i) => self.batch_done.push((i, result)),
            Owner::Stream { user_data, buf } => {
                self.stream_in_flight -= 1;
                self.ready.push_back(Completion {
                    user_data,
                    result,
                    buf,
                });
            }
            Owner::Free => unreachable!("completion for a free slot"),
        }
    }

    /// The ring broke while the kernel may still own buffers: freeing them
    /// would be unsound, so stop the process.
    fn fatal(&self, what: &str) -> ! {
        eprintln!(
            "shardblk: io_uring failed with {} ops in flight ({what}); aborting",
            self.in_flight
        );
        std::process::abort()
    }

    /// Wait for every op in flight, whatever happens (used where returning
    /// early would release borrowed memory the kernel may still write).
    fn drain_all(&mut self) {
        while self.in_flight > 0 {
            if let Err(e) = self.enter(1) {
                self.fatal(&e.to_string());
            }
            self.collect();
        }
    }
}

impl IoEngine for UringEngine {
    /// Run a batch. A panic inside (a broken invariant) with ops possibly
    /// in flight aborts the process instead of unwinding: the ops' buffers
    /// belong to the caller's frames, which unwinding would free (and the
    /// allocator hand out again) while the kernel may still write into
    /// them, and after a broken invariant the engine's own count of what is
    /// in flight cannot be trusted to wait them out.
    fn run(&mut self, ops: &mut [IoOp<'_>]) -> IoResult<()> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_batch(ops))) {
            Ok(r) => r,
            Err(panic) if self.in_flight == 0 => std::panic::resume_unwind(panic),
            Err(_) => self.fatal("a panic in a batch (message above)"),
        }
    }
}

impl UringEngine {
    fn run_batch(&mut self, ops: &mut [IoOp<'_>]) -> IoResult<()> {
        let mut next = 0;
        let mut batch_in_flight = 0usize;
        let mut failure = None;
        while next < ops.len() || batch_in_flight > 0 {
            // Queue as many ops as the ring takes; a Sync waits for the
            // earlier ops of the batch (barrier).
            while next < ops.len() && !self.free_slots.is_empty() && failure.is_none() {
                let op = &mut ops[next];
                if matches!(op.kind, OpKind::Sync) && batch_in_flight > 0 {
                    break;
                }
                let (dir, ptr, len) = match &mut op.kind {
                    OpKind::Read(b) => (Dir::Read, b.as_mut_ptr(), b.len()),
                    OpKind::Write(b) => (Dir::Write, b.as_ptr() as *mut u8, b.len()),
                    OpKind::Sync => (Dir::Sync, std::ptr::null_mut(), 0),
                };
                let fixed = if dir == Dir::Sync {
                    None
                } else {
                    self.arena.slot_of(ptr, len)
                };
                match self.start(op.dev, dir, ptr, len, op.offset, fixed, Owner::Batch(next)) {
                    Ok(()) => batch_in_flight += 1,
                    Err((e, _)) => op.result = Err(e),
                }
                next += 1;
            }
            if batch_in_flight == 0 {
                if failure.is_some() || next >= ops.len() {
                    break;
                }
                if self.free_slots.is_empty() {
                    // Streaming ops fill the ring: wait for one to finish.
                    if let Err(e) = self.enter(1) {
                        failure = Some(e);
                    }
                    self.collect();
                }
                continue;
            }
            // One syscall submits everything queued; wait for all of the
            // batch if nothing else is to be queued, else for one free slot.
            let want = if next < ops.len() && failure.is_none() {
                1
            } else {
                batch_in_flight
            };
            if let Err(e) = self.enter(want) {
                // The memory of in-flight ops is borrowed: wait them out.
                self.drain_all();
                failure = Some(e);
            }
            self.collect();
            for (i, r) in self.batch_done.drain(..) {
                ops[i].result = r;
                batch_in_flight -= 1;
            }
        }
        match failure {
            Some(e) => {
                for op in &mut ops[next..] {
                    op.result = Err(IoError::Ring(format!(
                        "not submitted: the ring failed ({e})"
                    )));
                }
                Err(e)
            }
            None => Ok(()),
        }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.drain_all();
    }
}

/// Whether a failed `io_uring_enter` leaves the ring usable: interrupted,
/// or the kernel was short of resources or completion space for a moment
/// (the queued entries go with the next enter).
fn submit_error_is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_and_buffers_move_between_threads() {
        fn send<T: Send>() {}
        send::<UringEngine>();
        send::<ArenaBuf>();
        send::<Completion>();
    }

    #[test]
    fn arena_hands_out_each_slot_once_and_takes_it_back() {
        let arena = BufArena::new(70, 2 * BLOCK_SIZE_BYTES as usize);
        let mut bufs: Vec<ArenaBuf> = (0..70).map(|_| arena.alloc().expect("slot")).collect();
        assert!(arena.alloc().is_none(), "all 70 slots are out");
        let mut idx: Vec<u16> = bufs.iter().map(|b| b.index()).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), 70);
        // Slots are disjoint: writing one leaves the others untouched.
        bufs[5].fill(0xEE);
        assert!(bufs
            .iter()
            .enumerate()
            .all(|(i, b)| i == 5 || b.iter().all(|&x| x == 0)));
        let p = bufs[5].as_ptr();
        assert_eq!(arena.slot_of(p, bufs[5].len()), Some(bufs[5].index()));
        // SAFETY: pointer arithmetic only, inside the same slot.
        assert_eq!(
            arena.slot_of(unsafe { p.add(4096) }, 4096),
            Some(bufs[5].index())
        );
        // Straddling into the next slot is not a fixed buffer.
        assert_eq!(arena.slot_of(p, bufs[5].len() + 4096), None);
        let outside = crate::io::AlignedBuf::new(4096);
        assert_eq!(arena.slot_of(outside.as_ptr(), 4096), None);
        bufs.truncate(60);
        assert_eq!(arena.free_slots(), 10);
        assert!(arena.alloc().is_some());
        drop(bufs);
        assert_eq!(arena.free_slots(), 70);
    }
}
