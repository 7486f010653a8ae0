//! The daemon's control socket (`ublkbN.sock` in the run directory).
//!
//! Protocol: the client sends one line, the daemon answers one JSON document
//! and closes. `stats` → [`DeviceStats`]. Unknown commands get
//! `{"error": "..."}`. `hist` → [`HistDump`] (every queue's raw
//! histograms, for interval figures and HDR logs). The server thread only reads the snapshots the queue
//! threads publish (see `metrics`), so a stats call never pauses I/O.
//! `record COUNT MILLIS` is the exception to one document: the daemon tees
//! the device's trace (see `prefetch::live`) and streams it as lines
//! `time_ns,op,offset,length` (the trace format's fields, device clock),
//! then one line `end EVENTS DROPPED`, until COUNT events or MILLIS passed;
//! a refusal is one `{"error": ...}` line. Each connection is served on its
//! own thread, so a recording does not hold up `stats`.

use crate::constants::{DEVICE_CONTROL_MSG_MAX_BYTES, DEVICE_CONTROL_REPLY_MAX_BYTES};
use crate::device::metrics::{device_stats, DeviceStats, HistDump, QueueSnapshot};
use crate::device::DeviceError;
use crate::prefetch::live::LiveShared;
use crate::trace::{Op as TraceOp, TraceEvent};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
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
    /// The live prefetch engine (statistics, recordings).
    pub live: Option<Arc<LiveShared>>,
}

impl ControlState {
    fn snaps(&self) -> Vec<QueueSnapshot> {
        self.snapshots
            .iter()
            .map(|s| s.lock().expect("snapshot").clone())
            .collect()
    }
    pub fn stats(&self) -> DeviceStats {
        let mut st = device_stats(
            self.number,
            &self.volume,
            self.start.elapsed().as_secs_f64(),
            None,
            &self.snaps(),
        );
        st.prefetch = self.live.as_ref().and_then(|l| l.stats());
        st
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
            let state = Arc::new(state);
            for conn in l.incoming().flatten() {
                let state = state.clone();
                let r = std::thread::Builder::new()
                    .name("shardblk-control-conn".into())
                    .spawn(move || {
                        if let Err(e) = answer(conn, &state) {
                            tracing::debug!("control socket: {e}");
                        }
                    });
                if let Err(e) = r {
                    tracing::warn!("control socket: spawning a connection thread: {e}");
                }
            }
        })
        .map_err(|e| DeviceError::Os("spawning the control thread".into(), e))?;
    Ok(())
}

fn answer(conn: UnixStream, state: &ControlState) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new((&conn).take(DEVICE_CONTROL_MSG_MAX_BYTES as u64)).read_line(&mut line)?;
    let cmd = line.trim();
    if let Some(args) = cmd.strip_prefix("record ") {
        return stream_recording(&conn, state, args);
    }
    let reply = match cmd {
        "stats" => serde_json::to_vec(&state.stats()).expect("stats serialise"),
        "hist" => serde_json::to_vec(&state.hist()).expect("hist serialise"),
        other => serde_json::to_vec(
            &serde_json::json!({ "error": format!("unknown command {other:?}") }),
        )
        .expect("json"),
    };
    (&conn).write_all(&reply)
}

fn error_line(msg: &str) -> Vec<u8> {
    let mut v = serde_json::to_vec(&serde_json::json!({ "error": msg })).expect("json");
    v.push(b'\n');
    v
}

/// Serve `record COUNT MILLIS`.
fn stream_recording(conn: &UnixStream, state: &ControlState, args: &str) -> std::io::Result<()> {
    use crate::constants::{TRACE_RECORD_EVENTS_MAX, TRACE_RECORD_SECONDS_MAX};
    let mut it = args.split_whitespace().map(str::parse::<u64>);
    let (count, ms) = match (it.next(), it.next(), it.next()) {
        (Some(Ok(c)), Some(Ok(m)), None)
            if (1..=TRACE_RECORD_EVENTS_MAX).contains(&c)
                && (1..=TRACE_RECORD_SECONDS_MAX * 1000).contains(&m) =>
        {
            (c, m)
        }
        _ => {
            return (&*conn).write_all(&error_line(&format!(
                "record needs COUNT in 1..={TRACE_RECORD_EVENTS_MAX} and MILLIS in 1..={}",
                TRACE_RECORD_SECONDS_MAX * 1000
            )))
        }
    };
    let Some(live) = &state.live else {
        return (&*conn).write_all(&error_line("this daemon has no trace tap"));
    };
    let rec = match live.start_recording() {
        Ok(r) => r,
        Err(e) => return (&*conn).write_all(&error_line(&e)),
    };
    let deadline = Instant::now() + std::time::Duration::from_millis(ms);
    let mut w = BufWriter::new(conn);
    let mut n = 0u64;
    while n < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rec.rx.recv_timeout(left) {
            Ok(e) => {
                writeln!(w, "{},{},{},{}", e.ts_ns, e.op.letter(), e.offset, e.len)?;
                n += 1;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    writeln!(w, "end {n} {}", rec.dropped())?;
    w.flush()
}

/// What a recording brought back: events (device clock, in arrival order)
/// and how many the daemon dropped because the client was too slow.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub events: Vec<TraceEvent>,
    pub dropped: u64,
}

/// Record up to `count` events of the device at `path`, for at most `ms`.
pub fn record(path: &PathBuf, count: u64, ms: u64) -> Result<Recorded, DeviceError> {
    let err = |e: std::io::Error| DeviceError::Control(format!("{}: {e}", path.display()));
    let mut s = UnixStream::connect(path).map_err(err)?;
    s.write_all(format!("record {count} {ms}\n").as_bytes())
        .map_err(err)?;
    s.shutdown(std::net::Shutdown::Write).map_err(err)?;
    let bad = |l: &str| DeviceError::Control(format!("bad recording line {l:?}"));
    let mut events = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.map_err(err)?;
        if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|_| bad(&line))?;
            return Err(DeviceError::Control(
                v.get("error").map_or(line.clone(), |e| e.to_string()),
            ));
        }
        if let Some(rest) = line.strip_prefix("end ") {
            let dropped = rest
                .split_whitespace()
                .nth(1)
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| bad(&line))?;
            return Ok(Recorded { events, dropped });
        }
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
        match (
            num(0),
            f.get(1).and_then(|o| TraceOp::from_letter(o)),
            num(2),
            num(3),
        ) {
            (Some(ts_ns), Some(op), Some(offset), Some(len)) if f.len() == 4 => {
                events.push(TraceEvent {
                    ts_ns,
                    op,
                    offset,
                    len,
                })
            }
            _ => return Err(bad(&line)),
        }
    }
    Err(DeviceError::Control(
        "the daemon closed the recording without its end line".into(),
    ))
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
                live: None,
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

    #[test]
    fn recording_streams_the_requested_count_and_refuses_a_second() {
        use crate::device::metrics::{trace_ring, TraceEvent as DevEvent};
        use crate::io::mem::MemDev;
        use crate::io::BlockDev;
        use crate::prefetch::live::Live;
        use crate::shard::policy::TierPolicy;
        use crate::shard::pool::Pool;
        let pool = Pool::format_on(vec![(
            "hot".into(),
            "m".into(),
            Arc::new(MemDev::new("m", 64 << 20)) as Arc<dyn BlockDev>,
        )])
        .unwrap();
        let vol = pool
            .create_volume("v", 1 << 30, 1 << 20, TierPolicy::default())
            .unwrap();
        let (mut p, c) = trace_ring(64);
        let start = Instant::now();
        let live = Live::start(None, vol, vec![c], start).unwrap();
        assert!(live.shared().stats().is_none(), "prefetch off: no stats");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        spawn_server(
            &path,
            ControlState {
                number: 1,
                volume: "v".into(),
                start,
                snapshots: vec![],
                live: Some(live.shared()),
            },
        )
        .unwrap();
        assert!(record(&path, 0, 100).is_err(), "count 0 refused");
        let client = {
            let path = path.clone();
            std::thread::spawn(move || record(&path, 5, 20_000))
        };
        // Wait until the daemon has started the recording, then feed it.
        let t0 = Instant::now();
        while !live.shared().is_recording() {
            assert!(t0.elapsed().as_secs() < 10, "recording never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let second = record(&path, 1, 100).unwrap_err().to_string();
        assert!(second.contains("already"), "{second}");
        let ops = [
            Op::Read,
            Op::Write,
            Op::Flush,
            Op::Discard,
            Op::WriteZeroes,
            Op::Read,
        ];
        for (i, op) in ops.into_iter().enumerate() {
            p.push(DevEvent {
                time_ns: 100 + i as u64,
                volume: 1,
                offset: 4096 * i as u64,
                len: 4096,
                op,
            });
        }
        let got = client.join().unwrap().unwrap();
        let t0 = Instant::now();
        while live.shared().start_recording().is_err() {
            assert!(
                t0.elapsed().as_secs() < 10,
                "the finished recording kept its slot"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got.dropped, 0);
        let letters: String = got.events.iter().map(|e| e.op.letter()).collect();
        assert_eq!(
            letters, "RWFDW",
            "write-zeroes is a write; the sixth is past the count"
        );
        assert_eq!(got.events[2].len, 0, "a flush has no length");
        assert_eq!(got.events[4].offset, 4 * 4096);
        assert_eq!(got.events[0].ts_ns, 100);
    }
}
