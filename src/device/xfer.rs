//! One data transfer of a ublk request on its queue's io_uring (a tier read
//! or write, a hole read from `/dev/zero`, a zero-copy bounce), kept in the
//! tag's slot until every byte has moved.
//!
//! Contract:
//! - [`Xfer::sqe`] is the SQE for what is left of the transfer, on a plain
//!   file descriptor or on a file registered with the ring ([`FileRef`]).
//! - [`Xfer::advance`] accounts one completion: the transfer is done, it was
//!   short (the transfer now describes the rest, to be submitted again), or
//!   it failed with an errno that fails the request.
//! - A short completion is not an error. io_uring finishes short transfers
//!   itself only on regular files and block devices; on a character device
//!   it completes with what the driver returned, and `/dev/zero` returns
//!   after any page when a signal or task work is pending or, issued
//!   non-blocking, when the thread should yield. A zero-copy read of a hole
//!   therefore often moves less than asked while other threads compete for
//!   the CPU. A completion that moves no byte fails with EIO (the end of a
//!   device), so every continuation makes progress and a transfer ends.

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dir {
    /// From the file into memory.
    #[default]
    Read,
    /// From memory into the file.
    Write,
}

/// The file side of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRef {
    /// A plain file descriptor (looked up and referenced per SQE).
    Fd(RawFd),
    /// Index in the ring's registered file table (no per-SQE lookup or
    /// reference count, which queues on several CPUs would bounce).
    Registered(u32),
}

impl Default for FileRef {
    fn default() -> Self {
        FileRef::Fd(-1)
    }
}

/// One transfer, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Xfer {
    pub file: FileRef,
    pub dir: Dir,
    /// `Some(index)`: a fixed-buffer op (zero copy) on registered buffer
    /// `index`, and `addr` is an offset in it; `None`: `addr` is a pointer.
    pub fixed: Option<u16>,
    /// Memory side: a pointer, or an offset in the registered buffer.
    pub addr: u64,
    /// File side: byte offset (ignored by `/dev/zero`).
    pub offset: u64,
    /// Bytes left.
    pub len: u32,
}

/// What one completion meant for a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Every byte has moved.
    Done,
    /// Some bytes moved; the transfer now describes the rest.
    Short,
    /// The request fails with this errno.
    Failed(i32),
}

impl Xfer {
    /// The SQE for what is left (the caller sets its user data).
    pub fn sqe(&self) -> squeue::Entry {
        // The opcode builders take either kind of file (a sealed trait), so
        // the match is written once for each.
        macro_rules! build {
            ($fd:expr) => {
                match (self.dir, self.fixed) {
                    (Dir::Read, None) => opcode::Read::new($fd, self.addr as *mut u8, self.len)
                        .offset(self.offset)
                        .build(),
                    (Dir::Read, Some(i)) => {
                        opcode::ReadFixed::new($fd, self.addr as *mut u8, self.len, i)
                            .offset(self.offset)
                            .build()
                    }
                    (Dir::Write, None) => opcode::Write::new($fd, self.addr as *const u8, self.len)
                        .offset(self.offset)
                        .build(),
                    (Dir::Write, Some(i)) => {
                        opcode::WriteFixed::new($fd, self.addr as *const u8, self.len, i)
                            .offset(self.offset)
                            .build()
                    }
                }
            };
        }
        match self.file {
            FileRef::Fd(fd) => build!(types::Fd(fd)),
            FileRef::Registered(i) => build!(types::Fixed(i)),
        }
    }

    /// Account a completion with result `res` (bytes moved, or `-errno`).
    pub fn advance(&mut self, res: i32) -> Progress {
        if res < 0 {
            return Progress::Failed(-res);
        }
        let n = res as u32;
        if n == 0 || n > self.len {
            return Progress::Failed(libc::EIO);
        }
        if n == self.len {
            self.len = 0;
            return Progress::Done;
        }
        self.addr += u64::from(n);
        self.offset += u64::from(n);
        self.len -= n;
        Progress::Short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_short_completion_leaves_the_rest_and_a_full_one_ends_it() {
        let mut x = Xfer {
            file: FileRef::Registered(3),
            dir: Dir::Read,
            fixed: Some(7),
            addr: 4096,
            offset: 1 << 20,
            len: 65536,
        };
        assert_eq!(x.advance(4096), Progress::Short);
        assert_eq!((x.addr, x.offset, x.len), (8192, (1 << 20) + 4096, 61440));
        assert_eq!(x.advance(20480), Progress::Short);
        assert_eq!((x.addr, x.offset, x.len), (28672, (1 << 20) + 24576, 40960));
        assert_eq!(x.advance(40960), Progress::Done);
        assert_eq!(x.len, 0);
    }

    #[test]
    fn errors_no_progress_and_too_much_fail_the_request() {
        let x = Xfer {
            len: 4096,
            ..Default::default()
        };
        assert_eq!(
            x.clone().advance(-libc::EBADF),
            Progress::Failed(libc::EBADF)
        );
        assert_eq!(x.clone().advance(0), Progress::Failed(libc::EIO));
        assert_eq!(x.clone().advance(8192), Progress::Failed(libc::EIO));
    }

    /// On the host's kernel: reads of `/dev/zero` through io_uring, with
    /// threads competing for the CPU (which makes the kernel cut them
    /// short), continued until done, always fill the whole buffer.
    #[test]
    fn reads_of_dev_zero_continued_after_short_completions_fill_the_buffer() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let zero = std::fs::File::open("/dev/zero").unwrap();
        let mut ring = io_uring::IoUring::new(8).unwrap();
        let stop = AtomicBool::new(false);
        let (mut shorts, mut reads) = (0u64, 0u64);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let mut buf = vec![0xA5u8; 1 << 20];
            let zeros = vec![0u8; 1 << 20];
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_millis(500) {
                buf.fill(0xA5);
                let mut x = Xfer {
                    file: FileRef::Fd(zero.as_raw_fd()),
                    dir: Dir::Read,
                    fixed: None,
                    addr: buf.as_mut_ptr() as u64,
                    offset: 0,
                    len: buf.len() as u32,
                };
                loop {
                    // SAFETY: the SQE writes into `buf`, which outlives the
                    // wait for its completion just below.
                    unsafe { ring.submission().push(&x.sqe().user_data(1)).unwrap() };
                    ring.submit_and_wait(1).unwrap();
                    let res = ring.completion().next().expect("one completion").result();
                    match x.advance(res) {
                        Progress::Done => break,
                        Progress::Short => shorts += 1,
                        Progress::Failed(e) => panic!("read of /dev/zero failed: errno {e}"),
                    }
                }
                assert!(buf == zeros, "read {reads}: bytes left unread");
                reads += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        eprintln!("{reads} reads of 1 MiB, {shorts} short completions continued");
    }
}
