//! The per-device records under the run directory (`/run/shardblk/`, or
//! `$SHARDBLK_RUN_DIR`): `ublkbN.json` (what `shardblk list` and `recover`
//! read) and `ublkbN.sock` (the daemon's control socket).
//!
//! Contract: a record is written (atomically: temporary file, then rename)
//! only once its device is live, and removed by the daemon when it stops.
//! A record whose daemon died stays, so `recover` can find the volume.

use crate::device::config::{PollMode, ZeroCopyMode};
use crate::device::DeviceError;
use crate::prefetch::lstm::LstmTuning;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The run directory.
pub fn run_dir() -> PathBuf {
    std::env::var_os("SHARDBLK_RUN_DIR")
        .map_or_else(|| PathBuf::from("/run/shardblk"), PathBuf::from)
}

pub fn record_path(n: u32) -> PathBuf {
    run_dir().join(format!("ublkb{n}.json"))
}

pub fn socket_path(n: u32) -> PathBuf {
    run_dir().join(format!("ublkb{n}.sock"))
}

/// What a running device is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub number: u32,
    pub volume: String,
    pub pool: PathBuf,
    pub queues: u16,
    pub depth: u16,
    /// CPU of each queue thread, by queue.
    pub queue_cpus: Vec<usize>,
    /// Thread id of each queue thread, by queue.
    pub queue_tids: Vec<i32>,
    pub poll: PollMode,
    pub zero_copy_requested: ZeroCopyMode,
    pub zero_copy: bool,
    pub pid: u32,
    /// The prefetch settings `add` was given (`None`: off), so `recover`
    /// restarts the daemon with them. Absent in records written before
    /// they were kept: read as off.
    #[serde(default)]
    pub prefetch: Option<PrefetchRecord>,
    /// The I/O scheduler `add` asked for (`None`: the kernel's, or a record
    /// older than the flag), so `recover` asks again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// The cluster volume served (then `pool` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::device::net::ClusterSource>,
}

/// The prefetch flags of a device, as `add` took them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefetchRecord {
    /// Predictor name (`--prefetch`).
    pub predictor: String,
    pub depth: u32,
    pub confidence_min: f32,
    pub budget_bytes: Option<u64>,
    pub model: Option<PathBuf>,
    /// `--prefetch-promote` (absent in records older than demand promotion:
    /// the default).
    #[serde(default = "promote_reads_default")]
    pub promote_reads: u32,
    /// `--lstm-*` (absent: none given, or a record older than the flags).
    #[serde(default, skip_serializing_if = "LstmTuning::is_empty")]
    pub lstm: LstmTuning,
}

impl PrefetchRecord {
    /// The record of the prefetch settings a device was added with.
    pub fn of(l: &crate::prefetch::live::LiveConfig) -> Self {
        PrefetchRecord {
            predictor: l.kind.name().to_string(),
            depth: l.prefetch.depth,
            confidence_min: l.prefetch.confidence_min,
            budget_bytes: l.budget_bytes,
            model: l.model.clone(),
            promote_reads: l.promote_reads,
            lstm: l.lstm,
        }
    }
}

fn promote_reads_default() -> u32 {
    crate::constants::PREFETCH_PROMOTE_READS_DEFAULT
}

impl DeviceRecord {
    pub fn write(&self) -> Result<(), DeviceError> {
        let dir = run_dir();
        std::fs::create_dir_all(&dir).map_err(|e| DeviceError::Os(dir.display().to_string(), e))?;
        let path = record_path(self.number);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).expect("record serialises");
        std::fs::write(&tmp, body).map_err(|e| DeviceError::Os(tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| DeviceError::Os(path.display().to_string(), e))
    }

    pub fn read(n: u32) -> Result<DeviceRecord, DeviceError> {
        let path = record_path(n);
        let body =
            std::fs::read(&path).map_err(|e| DeviceError::Os(path.display().to_string(), e))?;
        serde_json::from_slice(&body)
            .map_err(|e| DeviceError::Os(path.display().to_string(), std::io::Error::other(e)))
    }

    /// Every record in the run directory, by device number.
    pub fn all() -> Vec<DeviceRecord> {
        let mut out: Vec<DeviceRecord> = std::fs::read_dir(run_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name
                    .strip_prefix("ublkb")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                DeviceRecord::read(n).ok()
            })
            .collect();
        out.sort_by_key(|r| r.number);
        out
    }

    /// Remove the record and the socket of device `n` (absent is fine).
    pub fn remove(n: u32) {
        let _ = std::fs::remove_file(record_path(n));
        let _ = std::fs::remove_file(socket_path(n));
    }

    /// Whether the daemon process is alive.
    pub fn daemon_alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
            && std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
    }
}

/// The CPUs a thread may run on, from `/proc` (`Cpus_allowed_list`).
pub fn thread_cpus(pid: u32, tid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: no other test in this binary reads SHARDBLK_RUN_DIR.
        unsafe { std::env::set_var("SHARDBLK_RUN_DIR", dir.path()) };
        let r = DeviceRecord {
            number: 3,
            volume: "v".into(),
            pool: "/x".into(),
            queues: 2,
            depth: 64,
            queue_cpus: vec![0, 1],
            queue_tids: vec![10, 11],
            poll: PollMode::Adaptive,
            zero_copy_requested: ZeroCopyMode::Auto,
            zero_copy: false,
            pid: std::process::id(),
            prefetch: Some(PrefetchRecord {
                predictor: "markov".into(),
                depth: 3,
                confidence_min: 0.25,
                budget_bytes: Some(32 << 20),
                model: None,
                promote_reads: 3,
                lstm: LstmTuning {
                    lookahead: Some(0),
                    online: Some(false),
                    ..Default::default()
                },
            }),
            scheduler: Some("mq-deadline".into()),
            cluster: None,
        };
        r.write().unwrap();
        assert_eq!(DeviceRecord::read(3).unwrap(), r);
        // a cluster device's record keeps where its volume lives
        let c = DeviceRecord {
            number: 4,
            pool: "".into(),
            cluster: Some(crate::device::net::ClusterSource {
                seeds: vec!["127.0.0.1:7000".parse().unwrap()],
                gossip: "127.0.0.1:7100".parse().unwrap(),
                volume: "cv".into(),
                size_bytes: 64 << 20,
                replicas: 2,
                nodes: 3,
                stage_tier: Some("/var/tmp/stage.img".into()),
            }),
            ..r.clone()
        };
        c.write().unwrap();
        assert_eq!(DeviceRecord::read(4).unwrap(), c);
        DeviceRecord::remove(4);
        assert!(r.daemon_alive());
        std::fs::write(dir.path().join("other.json"), b"{}").unwrap();
        assert_eq!(DeviceRecord::all(), vec![r.clone()]);
        DeviceRecord::remove(3);
        assert!(DeviceRecord::all().is_empty());
        // A record written before prefetch settings were kept reads as off.
        let mut old = serde_json::to_value(&r).unwrap();
        old.as_object_mut().unwrap().remove("prefetch");
        std::fs::write(record_path(3), serde_json::to_vec(&old).unwrap()).unwrap();
        let back = DeviceRecord::read(3).unwrap();
        assert_eq!(back.prefetch, None);
        assert_eq!(back.volume, r.volume);
        // One written before the I/O scheduler was kept: the kernel's.
        let mut old = serde_json::to_value(&r).unwrap();
        old.as_object_mut().unwrap().remove("scheduler");
        std::fs::write(record_path(3), serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(DeviceRecord::read(3).unwrap().scheduler, None);
        // One written before demand promotion reads with its default.
        let mut old = serde_json::to_value(&r).unwrap();
        old["prefetch"]
            .as_object_mut()
            .unwrap()
            .remove("promote_reads");
        std::fs::write(record_path(3), serde_json::to_vec(&old).unwrap()).unwrap();
        let back = DeviceRecord::read(3).unwrap();
        assert_eq!(
            back.prefetch.unwrap().promote_reads,
            crate::constants::PREFETCH_PROMOTE_READS_DEFAULT
        );
        DeviceRecord::remove(3);
        unsafe { std::env::remove_var("SHARDBLK_RUN_DIR") };
    }
}
