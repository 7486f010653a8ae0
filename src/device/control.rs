//! The daemon's control socket (`ublkbN.sock` in the run directory).
//!
//! Protocol: the client sends one line, the daemon answers one JSON document
//! and closes. `stats` → [`DeviceStats`]. Unknown commands get
//! `{"error": "..."}`. `hist` → [`HistDump`] (every queue's raw
//! histograms, for interval figures and HDR logs). The server thread only reads the snapshots the queue
//! threads publish (see `metrics`), so a stats call never pauses I/O.

use crate::constants::{DEVICE_CONTROL_MSG_MAX_BYTES, DEVICE_CONTROL_REPLY_MAX_BYTES};
use crate::device::metrics::{device_stats, DeviceStats, HistDump, QueueSnapshot};
use crate::device::DeviceError;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the server needs to answer.
pub struct ControlState {
    pub number: u32,
    pub volume: String,
    pub start: Instant,
    pub snapshots: Vec<Arc<Mutex<QueueSnapshot>>>,
}

impl ControlState {
    fn snaps(&self) -> Vec<QueueSnapshot> {
        self.snapshots
            .iter()
            .map(|s| s.lock().expect("snapshot").clone())
            .collect()
    }
    pub fn stats(&self) -> DeviceStats {
        device_stats(
            self.number,
            &self.volume,
            self.start.elapsed().as_secs_f64(),
            None,
            &self.snaps(),
        )
    }
    pub fn hist(&self) -> HistDump {
        HistDump {
            number: self.number,
            volume: self.volume.clone(),
            uptime_s: self.start.elapsed().as_secs_f64(),
            queues: self.snaps().iter().map(QueueSnapshot::dump).collect(),
        }
    }
}

/// Bind the socket (replacing a stale one) and serve it on a new thread.
pub fn spawn_server(path: &Path, state: ControlState) -> Result<(), DeviceError> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| DeviceError::Os(path.display().to_string(), e))?;
    std::thread::Builder::new()
        .name("shardblk-control".into())
        .spawn(move || {
            for conn in l.incoming().flatten() {
                if let Err(e) = answer(conn, &state) {
                    tracing::debug!("control socket: {e}");
                }
            }
        })
        .map_err(|e| DeviceError::Os("spawning the control thread".into(), e))?;
    Ok(())
}

fn answer(conn: UnixStream, state: &ControlState) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new((&conn).take(DEVICE_CONTROL_MSG_MAX_BYTES as u64)).read_line(&mut line)?;
    let reply = match line.trim() {
        "stats" => serde_json::to_vec(&state.stats()).expect("stats serialise"),
        "hist" => serde_json::to_vec(&state.hist()).expect("hist serialise"),
        other => serde_json::to_vec(
            &serde_json::json!({ "error": format!("unknown command {other:?}") }),
        )
        .expect("json"),
    };
    (&conn).write_all(&reply)
}

/// Send `cmd` to the daemon at `path` and return its JSON answer.
pub fn request(path: &PathBuf, cmd: &str) -> Result<serde_json::Value, DeviceError> {
    let err = |e: std::io::Error| DeviceError::Control(format!("{}: {e}", path.display()));
    let mut s = UnixStream::connect(path).map_err(err)?;
    s.write_all(format!("{cmd}\n").as_bytes()).map_err(err)?;
    s.shutdown(std::net::Shutdown::Write).map_err(err)?;
    let mut body = Vec::new();
    s.take(DEVICE_CONTROL_REPLY_MAX_BYTES as u64)
        .read_to_end(&mut body)
        .map_err(err)?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| DeviceError::Control(format!("bad reply: {e}")))?;
    if let Some(e) = v.get("error") {
        return Err(DeviceError::Control(e.to_string()));
    }
    Ok(v)
}

/// Fetch a device's raw histograms.
pub fn fetch_hist(path: &PathBuf) -> Result<HistDump, DeviceError> {
    let v = request(path, "hist")?;
    serde_json::from_value(v).map_err(|e| DeviceError::Control(format!("bad hist reply: {e}")))
}

/// Fetch a device's statistics.
pub fn fetch_stats(path: &PathBuf) -> Result<DeviceStats, DeviceError> {
    let v = request(path, "stats")?;
    serde_json::from_value(v).map_err(|e| DeviceError::Control(format!("bad stats reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::metrics::{Hit, Op, QueueMetrics};

    #[test]
    fn stats_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let mut m = QueueMetrics::new(0, 0);
        m.record(Op::Write, Hit::Cold, 4096, 2_000, true);
        m.maybe_publish(1, 0, true);
        spawn_server(
            &path,
            ControlState {
                number: 7,
                volume: "vol".into(),
                start: Instant::now(),
                snapshots: vec![m.shared()],
            },
        )
        .unwrap();
        let st = fetch_stats(&path).unwrap();
        assert_eq!(st.number, 7);
        assert_eq!(st.queues.len(), 1);
        assert_eq!(st.total.ops[0].op, Op::Write);
        assert_eq!(st.total.ops[0].count, 1);
        assert_eq!(st.total.hits[0].hit, Some(Hit::Cold));
        let h = fetch_hist(&path).unwrap();
        let snaps = h.snapshots().unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(
            snaps[0].hist[crate::device::metrics::key_index(Op::Write, Hit::Cold)].len(),
            1
        );
        assert!(request(&path, "bogus").is_err());
    }
}
