//! The running kernel's ublk features: probing `/dev/ublk-control` and
//! naming the `UBLK_F_*` bits (see `kernel-notes/ublk-features.md`).
//!
//! Contract: [`probe`] fails with [`DeviceError::NoDriver`] when the control
//! device is absent; a driver older than 6.5 (no `GET_FEATURES`) reports an
//! empty mask, which every decision treats as "nothing optional".

use crate::device::DeviceError;
use serde::Serialize;

/// Path of the ublk control device.
pub const UBLK_CONTROL: &str = "/dev/ublk-control";

pub const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
pub const UBLK_F_AUTO_BUF_REG: u64 = 1 << 11;

/// Names of the flag bits, in bit order (`include/uapi/linux/ublk_cmd.h`).
pub const FLAG_NAMES: [&str; 21] = [
    "SUPPORT_ZERO_COPY",
    "URING_CMD_COMP_IN_TASK",
    "NEED_GET_DATA",
    "USER_RECOVERY",
    "USER_RECOVERY_REISSUE",
    "UNPRIVILEGED_DEV",
    "CMD_IOCTL_ENCODE",
    "USER_COPY",
    "ZONED",
    "USER_RECOVERY_FAIL_IO",
    "UPDATE_SIZE",
    "AUTO_BUF_REG",
    "QUIESCE",
    "PER_IO_DAEMON",
    "BUF_REG_OFF_DAEMON",
    "BATCH_IO",
    "INTEGRITY",
    "SAFE_STOP_DEV",
    "NO_AUTO_PART_SCAN",
    "SHMEM_ZC",
    "IO_DESC_SIZE",
];

/// A ublk feature mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Features(pub u64);

impl Features {
    pub fn has(self, flag: u64) -> bool {
        self.0 & flag == flag
    }
    /// Names of the set bits (unknown bits as `BIT<n>`).
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|b| self.0 & (1u64 << b) != 0)
            .map(|b| {
                FLAG_NAMES
                    .get(b)
                    .map_or_else(|| format!("BIT{b}"), |n| (*n).to_string())
            })
            .collect()
    }
}

/// Whether the ublk driver is present.
pub fn driver_present() -> bool {
    std::path::Path::new(UBLK_CONTROL).exists()
}

/// Ask the driver for its features.
pub fn probe() -> Result<Features, DeviceError> {
    if !driver_present() {
        return Err(DeviceError::NoDriver);
    }
    Ok(Features(
        libublk::ctrl::UblkCtrl::get_features().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_bits() {
        let f = Features(UBLK_F_USER_RECOVERY | UBLK_F_AUTO_BUF_REG | (1 << 40));
        assert_eq!(f.names(), vec!["USER_RECOVERY", "AUTO_BUF_REG", "BIT40"]);
        assert!(f.has(UBLK_F_AUTO_BUF_REG) && !f.has(UBLK_F_SUPPORT_ZERO_COPY));
        assert_eq!(
            libublk::sys::UBLK_F_AUTO_BUF_REG as u64,
            UBLK_F_AUTO_BUF_REG,
            "bit numbers agree with libublk's bindings"
        );
        assert_eq!(
            libublk::sys::UBLK_F_USER_RECOVERY as u64,
            UBLK_F_USER_RECOVERY
        );
    }
}
