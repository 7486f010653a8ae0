//! [`FileDev`]: a tier device backed by a raw block device or a regular file,
//! opened `O_RDWR | O_DIRECT | O_CLOEXEC`.
//!
//! Contract:
//! - Block devices are also opened `O_EXCL`, so a device that is mounted or
//!   held by another program is refused (`EBUSY`) instead of being corrupted.
//! - The usable size is the file size (`fstat`) or the device size
//!   (`BLKGETSIZE64`), rounded down to [`BLOCK_SIZE_BYTES`]; a block device
//!   whose logical block size (`BLKSSZGET`) exceeds [`BLOCK_SIZE_BYTES`] is
//!   refused, because our transfers could not be aligned for it.
//! - `read_at`/`write_at` are `pread`/`pwrite` loops that retry `EINTR` and
//!   finish short transfers; reading past the end of the file is an
//!   [`IoError::Short`]. `sync` is `fdatasync`.
//! - Every error names the path.
//!
//! The file descriptor is exposed through [`BlockDev::raw_fd`] so that
//! [`super::uring::UringEngine`] can register it; it stays open as long as the
//! `FileDev` lives.

use super::{check_transfer, BlockDev, IoError, IoResult};
use crate::constants::{BLOCK_SIZE_BYTES, POOL_LOCK_WAIT_MS};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

// BLKGETSIZE64 = _IOR(0x12, 114, size_t): device size in bytes.
nix::ioctl_read!(ioctl_blkgetsize64, 0x12, 114, u64);
// BLKSSZGET = _IO(0x12, 104), returns the logical block size through an int*.
nix::ioctl_read_bad!(
    ioctl_blksszget,
    nix::request_code_none!(0x12, 104),
    libc::c_int
);

/// A tier device on a block device or a regular file, `O_DIRECT`.
#[derive(Debug)]
pub struct FileDev {
    file: File,
    path: String,
    size: u64,
    block: bool,
}

fn os_err(path: &str, e: std::io::Error) -> IoError {
    IoError::Os {
        path: path.to_string(),
        source: e,
    }
}

impl FileDev {
    /// Open `path` (a block device or a regular file) for direct I/O.
    pub fn open(path: impl AsRef<Path>) -> IoResult<FileDev> {
        let p = path.as_ref();
        let name = p.display().to_string();
        let meta = std::fs::metadata(p).map_err(|e| os_err(&name, e))?;
        let ft = meta.file_type();
        let block = ft.is_block_device();
        if !block && !ft.is_file() {
            return Err(os_err(
                &name,
                std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "not a block device or a regular file",
                ),
            ));
        }
        let mut flags = libc::O_DIRECT | libc::O_CLOEXEC;
        if block {
            flags |= libc::O_EXCL;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(p)
            .map_err(|e| {
                if block && e.raw_os_error() == Some(libc::EBUSY) {
                    // Keep the errno; say what it means for a tier device.
                    let what = format!("{name} (in use: mounted or held by another program)");
                    os_err(&what, e)
                } else {
                    os_err(&name, e)
                }
            })?;
        let raw_size = if block {
            let mut bytes: u64 = 0;
            // SAFETY: the fd is an open block device and `bytes` is a valid u64
            // the kernel writes the size into.
            unsafe { ioctl_blkgetsize64(file.as_raw_fd(), &mut bytes) }
                .map_err(|e| os_err(&name, std::io::Error::from_raw_os_error(e as i32)))?;
            let mut lbs: libc::c_int = 0;
            // SAFETY: as above; the kernel writes an int.
            unsafe { ioctl_blksszget(file.as_raw_fd(), &mut lbs) }
                .map_err(|e| os_err(&name, std::io::Error::from_raw_os_error(e as i32)))?;
            if lbs <= 0 || lbs as u64 > BLOCK_SIZE_BYTES {
                return Err(os_err(
                    &name,
                    std::io::Error::new(
                        ErrorKind::InvalidInput,
                        format!("logical block size {lbs} bytes is larger than shardblk's {BLOCK_SIZE_BYTES}"),
                    ),
                ));
            }
            bytes
        } else {
            file.metadata().map_err(|e| os_err(&name, e))?.len()
        };
        let size = raw_size / BLOCK_SIZE_BYTES * BLOCK_SIZE_BYTES;
        Ok(FileDev {
            file,
            path: name,
            size,
            block,
        })
    }

    /// Create (or truncate) a sparse regular file of `size_bytes` and open it.
    /// For tests and demos.
    pub fn create_file(path: impl AsRef<Path>, size_bytes: u64) -> IoResult<FileDev> {
        let p = path.as_ref();
        let name = p.display().to_string();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .map_err(|e| os_err(&name, e))?;
        f.set_len(size_bytes).map_err(|e| os_err(&name, e))?;
        drop(f);
        FileDev::open(p)
    }

    /// True when this is a block device (opened `O_EXCL`), false for a file.
    pub fn is_block_device(&self) -> bool {
        self.block
    }

    /// Take an exclusive advisory lock (`flock`) on the device for as long as
    /// this handle lives, so a second process cannot open the same pool. The
    /// kernel drops it when the process exits, `kill -9` included.
    ///
    /// A holder that just died can keep the lock for a moment (its io_uring
    /// instance, which holds registered files, is torn down asynchronously),
    /// so a busy lock is retried for up to `POOL_LOCK_WAIT_MS`.
    pub fn lock_exclusive(&self) -> IoResult<()> {
        let file = self.file.as_raw_fd();
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(POOL_LOCK_WAIT_MS);
        loop {
            // SAFETY: flock on a descriptor this struct owns; no memory involved.
            let r = unsafe { libc::flock(file, libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(());
            }
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if errno == libc::EWOULDBLOCK && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            let why = if errno == libc::EWOULDBLOCK {
                " (in use by another shardblk process)"
            } else {
                ""
            };
            return Err(IoError::os(&format!("{}{why}", self.path), errno));
        }
    }
}

impl BlockDev for FileDev {
    fn size_bytes(&self) -> u64 {
        self.size
    }
    fn name(&self) -> &str {
        &self.path
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<()> {
        check_transfer(buf.as_ptr(), buf.len(), offset, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(IoError::Short {
                        offset,
                        len: buf.len(),
                        done,
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(os_err(&self.path, e)),
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<()> {
        check_transfer(buf.as_ptr(), buf.len(), offset, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.write_at(&buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(IoError::Short {
                        offset,
                        len: buf.len(),
                        done,
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(os_err(&self.path, e)),
            }
        }
        Ok(())
    }
    fn sync(&self) -> IoResult<()> {
        loop {
            match self.file.sync_data() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(os_err(&self.path, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::AlignedBuf;

    #[test]
    fn file_round_trip_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.img");
        // Not a block multiple: the usable size rounds down.
        let dev = FileDev::create_file(&path, 10 * BLOCK_SIZE_BYTES + 100).unwrap();
        assert!(!dev.is_block_device());
        assert_eq!(dev.size_bytes(), 10 * BLOCK_SIZE_BYTES);
        let mut w = AlignedBuf::new(2 * BLOCK_SIZE_BYTES as usize);
        for (i, b) in w.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        dev.write_at(&w, 3 * BLOCK_SIZE_BYTES).unwrap();
        dev.sync().unwrap();
        let mut r = AlignedBuf::new(2 * BLOCK_SIZE_BYTES as usize);
        dev.read_at(&mut r, 3 * BLOCK_SIZE_BYTES).unwrap();
        assert_eq!(&r[..], &w[..]);
        // Reopen: data persisted.
        drop(dev);
        let dev = FileDev::open(&path).unwrap();
        let mut r2 = AlignedBuf::new(2 * BLOCK_SIZE_BYTES as usize);
        dev.read_at(&mut r2, 3 * BLOCK_SIZE_BYTES).unwrap();
        assert_eq!(&r2[..], &w[..]);
        assert!(matches!(
            dev.read_at(&mut r2, 9 * BLOCK_SIZE_BYTES),
            Err(IoError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.read_at(&mut r2[..100], 0),
            Err(IoError::Misaligned { .. })
        ));
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.img");
        let e = FileDev::open(&missing).unwrap_err();
        assert!(e.to_string().contains("missing.img"), "{e}");
        assert_eq!(e.errno(), Some(libc::ENOENT));
        let e = FileDev::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a block device"), "{e}");
    }
}
