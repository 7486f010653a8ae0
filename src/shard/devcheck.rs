//! Checks a candidate tier device before `pool init` writes anything to it.
//!
//! Contract: [`check_candidate`] reads only (`stat`, `/proc/self/mountinfo`,
//! `/proc/swaps`, `/sys/block/*/holders`) and returns the first reason the
//! path must not become a tier device: missing, not a block device or
//! regular file, mounted (itself or a partition of it), used as swap, held by
//! device-mapper/md, or too small. Whether it is writable and not opened
//! exclusively elsewhere is then proven by opening it `O_RDWR|O_DIRECT`
//! (and `O_EXCL` for block devices), which the pool does next; whether it is
//! already in a pool is decided from its superblock.

use crate::constants::DEVICE_SIZE_MIN_BYTES;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DevCheckError {
    #[error("{path}: does not exist")]
    Missing { path: String },
    #[error("{path}: not a block device or regular file")]
    NotADevice { path: String },
    #[error("{path}: mounted at {mountpoint}; unmount it first")]
    Mounted { path: String, mountpoint: String },
    #[error("{path}: in use as swap; swapoff it first")]
    Swap { path: String },
    #[error("{path}: held by {holder} (device-mapper, md or similar); release it first")]
    Held { path: String, holder: String },
    #[error("{path}: too small ({size} bytes; a tier device needs at least {min} bytes)")]
    TooSmall { path: String, size: u64, min: u64 },
}

/// `major:minor` as written in mountinfo.
fn dev_string(rdev: u64) -> String {
    format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    )
}

/// Mount point of the filesystem on device `major:minor`, if any.
pub fn mountpoint_of(mountinfo: &str, majmin: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_id, _parent, dev, _root, mnt) =
            (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        (dev == majmin).then(|| mnt.to_string())
    })
}

/// The kernel's name of a block device (`sda`, `loop3`) from sysfs.
fn sys_name(rdev: u64) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/dev/block/{}", dev_string(rdev))).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Size in bytes of block device `major:minor` from sysfs (512-byte sectors).
fn sys_size(rdev: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/sys/dev/block/{}/size", dev_string(rdev))).ok()?;
    s.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// Check `path` as a tier device candidate of `size` bytes (the size the
/// opened device reports; pass `None` to use `stat`'s size for files and
/// sysfs's for block devices, whose `stat` size is 0).
pub fn check_candidate(path: &Path, size: Option<u64>) -> Result<(), DevCheckError> {
    let p = path.display().to_string();
    let md = std::fs::metadata(path).map_err(|_| DevCheckError::Missing { path: p.clone() })?;
    let ft = md.file_type();
    if !(ft.is_block_device() || ft.is_file()) {
        return Err(DevCheckError::NotADevice { path: p });
    }
    if ft.is_block_device() {
        let rdev = md.rdev();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(m) = mountpoint_of(&mountinfo, &dev_string(rdev)) {
            return Err(DevCheckError::Mounted {
                path: p,
                mountpoint: m,
            });
        }
        if let Some(name) = sys_name(rdev) {
            // Partitions of a whole disk, each may be mounted.
            if let Ok(rd) = std::fs::read_dir(format!("/sys/block/{name}")) {
                for e in rd.flatten() {
                    let child = e.file_name().to_string_lossy().into_owned();
                    if !child.starts_with(&name) {
                        continue;
                    }
                    if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                        if let Some(m) = mountpoint_of(&mountinfo, d.trim()) {
                            return Err(DevCheckError::Mounted {
                                path: format!("{p} (partition {child})"),
                                mountpoint: m,
                            });
                        }
                    }
                }
            }
            if let Ok(rd) = std::fs::read_dir(format!("/sys/class/block/{name}/holders")) {
                if let Some(h) = rd.flatten().next() {
                    return Err(DevCheckError::Held {
                        path: p,
                        holder: h.file_name().to_string_lossy().into_owned(),
                    });
                }
            }
            let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
            if swaps
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(&format!("/dev/{name}")))
            {
                return Err(DevCheckError::Swap { path: p });
            }
        }
    } else {
        let canon = std::fs::canonicalize(path)
            .map(|c| c.display().to_string())
            .unwrap_or(p.clone());
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        if swaps
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(canon.as_str()))
        {
            return Err(DevCheckError::Swap { path: p });
        }
    }
    let size = match size {
        Some(s) => s,
        None if ft.is_block_device() => sys_size(md.rdev()).unwrap_or(0),
        None => md.len(),
    };
    if size < DEVICE_SIZE_MIN_BYTES {
        return Err(DevCheckError::TooSmall {
            path: p,
            size,
            min: DEVICE_SIZE_MIN_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lookup_by_major_minor() {
        let mi = "22 1 0:21 / /proc rw - proc proc rw\n\
                  30 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n\
                  31 30 7:3 / /mnt/x rw - ext4 /dev/loop3 rw\n";
        assert_eq!(mountpoint_of(mi, "7:3").as_deref(), Some("/mnt/x"));
        assert_eq!(mountpoint_of(mi, "254:1").as_deref(), Some("/"));
        assert_eq!(mountpoint_of(mi, "7:4"), None);
    }

    #[test]
    fn files_are_checked_for_existence_kind_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        assert!(matches!(
            check_candidate(&f, None),
            Err(DevCheckError::Missing { .. })
        ));
        std::fs::File::create(&f)
            .unwrap()
            .set_len(DEVICE_SIZE_MIN_BYTES - 4096)
            .unwrap();
        assert!(matches!(
            check_candidate(&f, None),
            Err(DevCheckError::TooSmall { .. })
        ));
        std::fs::File::create(&f)
            .unwrap()
            .set_len(DEVICE_SIZE_MIN_BYTES)
            .unwrap();
        assert_eq!(check_candidate(&f, None), Ok(()));
        assert!(matches!(
            check_candidate(dir.path(), None),
            Err(DevCheckError::NotADevice { .. })
        ));
    }
}
