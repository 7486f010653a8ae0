//! Device configuration: what `shardblk add` asks for, validated before
//! anything is created, and the pure decisions made from it (which CPU each
//! queue thread is pinned to, whether zero copy is used).
//!
//! Contract:
//! - [`DeviceConfig::validate`] checks every limit against the online CPUs
//!   and the kernel's ublk feature mask passed in (no I/O here), so a bad
//!   request fails before the device exists.
//! - Pinning: queue `q` runs on `cpus[q % cpus.len()]`. The default CPU list
//!   is every online CPU in order, so queues spread over the cores round
//!   robin (one queue per core while there are as many cores as queues).
//! - The I/O scheduler name is checked for shape here; whether the kernel
//!   has that scheduler shows only when the live disk is given it
//!   (`device::serve::publish`).

use crate::constants::{
    DEVICE_DEPTH_MAX_REQUESTS, DEVICE_IO_SCHEDULER_NAME_MAX_BYTES, DEVICE_QUEUES_MAX,
};
use crate::device::features::{Features, UBLK_F_AUTO_BUF_REG};
use crate::device::DeviceError;
use serde::{Deserialize, Serialize};

/// How a queue thread waits for its io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Spin on the completion ring, never sleep: lowest latency, one full core per queue.
    Busy,
    /// Spin for `DEVICE_ADAPTIVE_SPIN_US` after the last completion, then sleep in the kernel.
    Adaptive,
    /// Always sleep in the kernel until a completion arrives.
    Interrupt,
}

/// Whether tier I/O uses the request's own pages (`UBLK_F_AUTO_BUF_REG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ZeroCopyMode {
    /// Zero copy where the kernel and this build support it, else copy mode with a message.
    Auto,
    /// Zero copy or fail.
    On,
    /// Copy mode: the kernel copies between the request's pages and the queue's buffer.
    Off,
}

/// Everything that shapes one ublk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Requested device number (`None`: the driver picks the lowest free one).
    pub number: Option<u32>,
    pub queues: u16,
    pub depth: u16,
    /// CPUs the queue threads are pinned to (see the module doc).
    pub cpus: Vec<usize>,
    pub poll: PollMode,
    pub zero_copy: ZeroCopyMode,
    /// I/O scheduler set on the disk once it is live (`None`: the kernel's
    /// choice).
    pub scheduler: Option<String>,
}

/// Parse a CPU list like `0,2-3` (sorted, duplicates removed).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, DeviceError> {
    let bad = || DeviceError::BadCpuList(s.to_string());
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad());
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl DeviceConfig {
    /// Check the request against the online CPUs and the kernel's features.
    /// Returns whether zero copy will be used, and a message when `auto`
    /// fell back to copy mode.
    pub fn validate(
        &self,
        online: &[usize],
        features: Features,
    ) -> Result<(bool, Option<String>), DeviceError> {
        if self.queues == 0 || self.queues > DEVICE_QUEUES_MAX {
            return Err(DeviceError::Queues(self.queues));
        }
        if self.depth == 0 || self.depth > DEVICE_DEPTH_MAX_REQUESTS {
            return Err(DeviceError::Depth(self.depth));
        }
        if self.cpus.is_empty() {
            return Err(DeviceError::BadCpuList(String::new()));
        }
        if let Some(&c) = self.cpus.iter().find(|c| !online.contains(c)) {
            return Err(DeviceError::CpuOffline {
                cpu: c,
                online: format_cpu_list(online),
            });
        }
        if let Some(s) = &self.scheduler {
            check_scheduler_name(s)?;
        }
        decide_zero_copy(self.zero_copy, features)
    }

    /// The CPU queue `q` is pinned to.
    pub fn cpu_of_queue(&self, q: u16) -> usize {
        queue_cpu(&self.cpus, q)
    }
}

/// An I/O scheduler name as sysfs takes it: 1 to
/// `DEVICE_IO_SCHEDULER_NAME_MAX_BYTES` of `[a-z0-9_-]` (whether the kernel
/// has it is known only once the disk exists).
pub fn check_scheduler_name(s: &str) -> Result<(), DeviceError> {
    let ok = !s.is_empty()
        && s.len() <= DEVICE_IO_SCHEDULER_NAME_MAX_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DeviceError::BadScheduler(s.to_string()))
    }
}

/// The CPU of queue `q` on the CPU list `cpus`: `cpus[q mod len]`.
pub fn queue_cpu(cpus: &[usize], q: u16) -> usize {
    cpus[q as usize % cpus.len()]
}

/// Whether this build serves requests with zero copy (`UBLK_F_AUTO_BUF_REG`:
/// tier I/O on the request's own pages; see `device::queue`). Copy mode
/// still has no user-space copy: tier I/O goes straight into the ublk queue
/// buffer and the kernel copies between it and the request's pages.
pub const ZERO_COPY_IMPLEMENTED: bool = true;

/// Decide zero copy from the mode and the kernel's features: `(use it, fallback message)`.
pub fn decide_zero_copy(
    mode: ZeroCopyMode,
    features: Features,
) -> Result<(bool, Option<String>), DeviceError> {
    let kernel = features.has(UBLK_F_AUTO_BUF_REG);
    let why = if !kernel {
        "the kernel's ublk driver lacks UBLK_F_AUTO_BUF_REG (Linux 6.16 and later)"
    } else {
        "this build of shardblk serves ublk requests in copy mode only"
    };
    match mode {
        ZeroCopyMode::Off => Ok((false, None)),
        ZeroCopyMode::On if kernel && ZERO_COPY_IMPLEMENTED => Ok((true, None)),
        ZeroCopyMode::On => Err(DeviceError::ZeroCopyUnavailable(why.to_string())),
        ZeroCopyMode::Auto if kernel && ZERO_COPY_IMPLEMENTED => Ok((true, None)),
        ZeroCopyMode::Auto => Ok((
            false,
            Some(format!(
                "zero copy not used: {why}; requests are copied into the ublk buffer"
            )),
        )),
    }
}

/// Format a CPU list compactly (`0-3,6`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The online CPUs, from `/sys/devices/system/cpu/online`.
pub fn online_cpus() -> Result<Vec<usize>, DeviceError> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| DeviceError::Os("reading /sys/devices/system/cpu/online".into(), e))?;
    parse_cpu_list(s.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cpus: Vec<usize>) -> DeviceConfig {
        DeviceConfig {
            number: None,
            queues: 2,
            depth: 64,
            cpus,
            poll: PollMode::Interrupt,
            zero_copy: ZeroCopyMode::Auto,
            scheduler: Some("none".into()),
        }
    }

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(parse_cpu_list("0,2-4,3").unwrap(), vec![0, 2, 3, 4]);
        assert_eq!(format_cpu_list(&[0, 2, 3, 4, 7]), "0,2-4,7");
        for bad in ["", "a", "3-1", "1,,2", "-1"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation_rejects_bad_input() {
        let f = Features(0);
        assert!(cfg(vec![0, 1]).validate(&[0, 1], f).is_ok());
        assert!(matches!(
            cfg(vec![5]).validate(&[0, 1], f),
            Err(DeviceError::CpuOffline { cpu: 5, .. })
        ));
        let mut c = cfg(vec![0]);
        c.depth = 0;
        assert!(matches!(c.validate(&[0], f), Err(DeviceError::Depth(0))));
        c.depth = DEVICE_DEPTH_MAX_REQUESTS + 1;
        assert!(matches!(c.validate(&[0], f), Err(DeviceError::Depth(_))));
        let mut c = cfg(vec![0]);
        c.queues = 0;
        assert!(matches!(c.validate(&[0], f), Err(DeviceError::Queues(0))));
        for ok in [
            None,
            Some("mq-deadline"),
            Some("bfq"),
            Some("kyber"),
            Some("none"),
        ] {
            let mut c = cfg(vec![0]);
            c.scheduler = ok.map(String::from);
            assert!(c.validate(&[0], f).is_ok(), "{ok:?}");
        }
        let long = "x".repeat(DEVICE_IO_SCHEDULER_NAME_MAX_BYTES + 1);
        for bad in ["", "None", "mq deadline", "../x", "bfq\n", long.as_str()] {
            let mut c = cfg(vec![0]);
            c.scheduler = Some(bad.into());
            assert!(
                matches!(c.validate(&[0], f), Err(DeviceError::BadScheduler(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn queues_spread_round_robin() {
        let c = cfg(vec![1, 3]);
        assert_eq!(
            (0..4).map(|q| c.cpu_of_queue(q)).collect::<Vec<_>>(),
            vec![1, 3, 1, 3]
        );
    }

    #[test]
    fn zero_copy_falls_back_or_fails() {
        let old = Features(0x1fe); // 6.12: no AUTO_BUF_REG
        let new = Features(0x1fffff); // 7.3
        assert_eq!(
            decide_zero_copy(ZeroCopyMode::Off, new).unwrap(),
            (false, None)
        );
        let (zc, msg) = decide_zero_copy(ZeroCopyMode::Auto, old).unwrap();
        assert!(!zc && msg.unwrap().contains("AUTO_BUF_REG"));
        assert!(matches!(
            decide_zero_copy(ZeroCopyMode::On, old),
            Err(DeviceError::ZeroCopyUnavailable(_))
        ));
        let r = decide_zero_copy(ZeroCopyMode::On, new);
        assert_eq!(r.is_ok(), ZERO_COPY_IMPLEMENTED);
    }
}
