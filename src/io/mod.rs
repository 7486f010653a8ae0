//! Tier devices and the per-thread I/O engines that drive them.
//!
//! Contract:
//! - [`BlockDev`] is one tier device (a raw block device or a file, always
//!   opened `O_DIRECT`, or a fake). Every transfer is [`BLOCK_SIZE_BYTES`]
//!   aligned in offset, length and memory; misaligned calls are a programming
//!   error and return [`IoError::Misaligned`] without touching the device.
//! - [`IoEngine`] is owned by exactly one thread. It executes a batch of
//!   [`IoOp`]s: all are submitted together and the call returns when every one
//!   has completed, each with its own result. The real engine
//!   ([`uring::UringEngine`]) uses io_uring with registered files and
//!   registered buffers; [`sync_engine::SyncEngine`] runs the same batch with
//!   plain calls on any [`BlockDev`] (used with the fault-injecting
//!   [`fault::FaultDev`]). Both pass the same test suite.
//! - Devices in a batch are named by [`DevIndex`], their position in the
//!   slice of devices the engine was built over.

pub mod fault;
pub mod file;
pub mod mem;
pub mod sync_engine;
pub mod uring;

use crate::constants::BLOCK_SIZE_BYTES;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::fd::RawFd;

/// Errors of the device layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{path}: {source}")]
    Os {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("misaligned transfer: offset {offset} length {len} (must be multiples of {BLOCK_SIZE_BYTES} in 4 KiB-aligned memory)")]
    Misaligned { offset: u64, len: usize },
    #[error("transfer beyond device end: offset {offset} length {len} device size {size}")]
    OutOfRange { offset: u64, len: usize, size: u64 },
    #[error("short transfer: {done} of {len} bytes at offset {offset}")]
    Short { offset: u64, len: usize, done: usize },
    #[error("injected fault: {0}")]
    Injected(&'static str),
    #[error("device is crashed (fault injection); reopen it")]
    Crashed,
    #[error("io_uring: {0}")]
    Ring(String),
}

impl IoError {
    /// Wrap an errno from a completion or a syscall.
    pub fn os(path: &str, errno: i32) -> Self {
        IoError::Os { path: path.to_string(), source: std::io::Error::from_raw_os_error(errno) }
    }
    /// The errno this error carries, if it came from the OS.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IoError::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type IoResult<T> = Result<T, IoError>;

/// One tier device. Implementations are shared between threads.
pub trait BlockDev: Send + Sync + 'static {
    /// Usable size in bytes (a multiple of [`BLOCK_SIZE_BYTES`]).
    fn size_bytes(&self) -> u64;
    /// What to call this device in messages (its path).
    fn name(&self) -> &str;
    /// The `O_DIRECT` file descriptor for io_uring registration; `None` for
    /// devices that exist only in memory or inject faults.
    fn raw_fd(&self) -> Option<RawFd>;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<()>;
    /// Make every completed write durable (fdatasync / FLUSH).
    fn sync(&self) -> IoResult<()>;
}

/// Check the alignment rules of [`BlockDev`] for one transfer.
pub fn check_transfer(ptr: *const u8, len: usize, offset: u64, size: u64) -> IoResult<()> {
    let b = BLOCK_SIZE_BYTES as usize;
    if offset % BLOCK_SIZE_BYTES != 0 || len % b != 0 || (ptr as usize) % b != 0 {
        return Err(IoError::Misaligned { offset, len });
    }
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        return Err(IoError::OutOfRange { offset, len, size });
    }
    Ok(())
}

/// Index of a device in the slice an engine was built over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevIndex(pub u16);

/// A heap buffer aligned to [`BLOCK_SIZE_BYTES`], zero-filled at creation, as
/// `O_DIRECT` requires.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8], like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to a whole block, at least one).
    pub fn new(len: usize) -> Self {
        let b = BLOCK_SIZE_BYTES as usize;
        let len = len.max(1).div_ceil(b) * b;
        let layout = Layout::from_size_align(len, b).expect("aligned buffer layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, BLOCK_SIZE_BYTES as usize).expect("layout");
        // SAFETY: allocated in `new` with this same layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}
impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

/// What one [`IoOp`] does. Buffers are borrowed for the duration of the
/// batch, so a batch is memory safe even though the kernel fills them.
pub enum OpKind<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
    /// Durability barrier for the device (fdatasync).
    Sync,
}

/// One operation in a batch.
pub struct IoOp<'a> {
    pub dev: DevIndex,
    pub offset: u64,
    pub kind: OpKind<'a>,
    /// Set by the engine: `Ok(())` or the error of this op alone.
    pub result: IoResult<()>,
}

impl<'a> IoOp<'a> {
    pub fn read(dev: DevIndex, offset: u64, buf: &'a mut [u8]) -> Self {
        IoOp { dev, offset, kind: OpKind::Read(buf), result: Ok(()) }
    }
    pub fn write(dev: DevIndex, offset: u64, buf: &'a [u8]) -> Self {
        IoOp { dev, offset, kind: OpKind::Write(buf), result: Ok(()) }
    }
    pub fn sync(dev: DevIndex) -> Self {
        IoOp { dev, offset: 0, kind: OpKind::Sync, result: Ok(()) }
    }
}

/// A per-thread I/O engine over a fixed set of devices.
pub trait IoEngine {
    /// Submit every op of the batch together and wait for all of them. Each
    /// op's `result` is set. Returns `Err` only when the engine itself failed
    /// (the ring broke); per-op failures are in the ops.
    fn run(&mut self, ops: &mut [IoOp<'_>]) -> IoResult<()>;

    /// Convenience: run one batch and return the first per-op error.
    fn run_all(&mut self, ops: &mut [IoOp<'_>]) -> IoResult<()> {
        self.run(ops)?;
        for op in ops.iter_mut() {
            if op.result.is_err() {
                return std::mem::replace(&mut op.result, Ok(()));
            }
        }
        Ok(())
    }
}
