//! fio iolog: converter from versions 2 and 3, writer of version 2 (so a VM
//! test can replay a trace with `fio --read_iolog`).
//!
//! Version 2 (`fio version 2 iolog`): lines `filename action [offset length]`.
//! Version 3 (`fio version 3 iolog`): the same with a leading timestamp in
//! milliseconds since the start. Actions: `add`, `open`, `close` (file
//! management, no event), `read`, `write`, `trim` (→ discard), `sync`,
//! `datasync`, `sync_file_range` (→ flush), `wait` (v2 only: the offset
//! field is a delay in microseconds added to the clock).
//!
//! Time: v3 uses its timestamps. v2 has none: the i-th I/O is placed at
//! `i * interarrival_ns` plus the sum of the preceding `wait` delays.
//! Each distinct filename is a device numbered in order of first appearance:
//! offset = device * 2^40 + offset.

use super::{
    check_event, device_offset, normalize, parse_decimal_ns, parse_u64, DeviceIndex, Lines, Op,
    TraceError, TraceEvent,
};
use crate::constants::TRACE_INTERARRIVAL_DEFAULT_NS;
use std::io::{BufRead, Write};

/// Options of [`from_fio_iolog`].
#[derive(Debug, Clone, Copy)]
pub struct FioOptions {
    /// Time between I/Os of a version 2 log (no timestamps).
    pub interarrival_ns: u64,
}

impl Default for FioOptions {
    fn default() -> Self {
        FioOptions {
            interarrival_ns: TRACE_INTERARRIVAL_DEFAULT_NS,
        }
    }
}

/// Convert a fio iolog (version 2 or 3) to trace events.
pub fn from_fio_iolog<R: BufRead>(r: R, opts: FioOptions) -> Result<Vec<TraceEvent>, TraceError> {
    let mut lines = Lines::new(r);
    let version = match lines.next_line()? {
        None => return Err(TraceError::Empty),
        Some((_, "fio version 2 iolog")) => 2,
        Some((_, "fio version 3 iolog")) => 3,
        Some((_, h)) => {
            return Err(TraceError::malformed(
                1,
                format!("header {h:?} is not \"fio version 2 iolog\" or \"fio version 3 iolog\""),
            ))
        }
    };
    let mut devices = DeviceIndex::default();
    let mut out = Vec::new();
    let mut ios: u64 = 0;
    let mut waited_ns: u64 = 0;
    while let Some((line, text)) = lines.next_line()? {
        let mut f: Vec<&str> = text.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        let ts_v3 = if version == 3 {
            let ts = parse_decimal_ns(line, "timestamp", f[0], 1_000_000)?;
            f.remove(0);
            Some(ts)
        } else {
            None
        };
        if f.len() < 2 {
            return Err(TraceError::malformed(
                line,
                "expected \"filename action [offset length]\"",
            ));
        }
        let (file, action) = (f[0], f[1]);
        let device = devices.index(file.to_string());
        let op = match action {
            "add" | "open" | "close" => continue,
            "read" => Op::Read,
            "write" => Op::Write,
            "trim" => Op::Discard,
            "sync" | "datasync" | "sync_file_range" => Op::Flush,
            "wait" if version == 2 => {
                let us = parse_u64(line, "wait", f.get(2).copied().unwrap_or(""))?;
                waited_ns = us
                    .checked_mul(1000)
                    .and_then(|n| waited_ns.checked_add(n))
                    .ok_or_else(|| TraceError::malformed(line, "wait out of range"))?;
                continue;
            }
            a => return Err(TraceError::malformed(line, format!("unknown action {a:?}"))),
        };
        let (offset, len) = if op == Op::Flush {
            (0, 0)
        } else {
            if f.len() != 4 {
                return Err(TraceError::malformed(
                    line,
                    format!("{action} needs offset and length"),
                ));
            }
            (
                parse_u64(line, "offset", f[2])?,
                parse_u64(line, "length", f[3])?,
            )
        };
        let ts_ns = match ts_v3 {
            Some(t) => t,
            None => ios
                .checked_mul(opts.interarrival_ns)
                .and_then(|t| t.checked_add(waited_ns))
                .ok_or_else(|| TraceError::malformed(line, "time out of range"))?,
        };
        ios += 1;
        let ev = TraceEvent {
            ts_ns,
            op,
            offset: device_offset(line, device, offset)?,
            len,
        };
        check_event(line, &ev)?;
        out.push(ev);
    }
    Ok(normalize(out))
}

/// Options of [`write_fio_iolog_v2`].
#[derive(Debug, Clone)]
pub struct FioWriteOptions {
    /// The file every I/O targets (e.g. `/dev/ublkb0`).
    pub filename: String,
    /// If set, offsets are folded into a device of this many bytes: the
    /// offset becomes `offset % wrap_bytes` rounded down to `align_bytes`,
    /// and the length is clipped at the end of the device. Needed to replay
    /// a multi-device or large trace on a small test device.
    pub wrap_bytes: Option<u64>,
    /// Alignment of folded offsets (e.g. 4096 for `O_DIRECT`).
    pub align_bytes: u64,
    /// Keep the trace's timing: a `wait` of the gap (whole microseconds)
    /// before every I/O that comes later than the one before it. fio waits
    /// that long after issuing the previous I/O (less the time already
    /// passed since), so a replay at queue depth 1 keeps the think time
    /// between requests that completed within it.
    pub timing: bool,
}

/// Write events as a fio version 2 iolog targeting one file. Timing only
/// as `wait`s (with [`FioWriteOptions::timing`]; version 2 has no
/// timestamps). Flushes become `sync`, discards `trim`.
pub fn write_fio_iolog_v2<W: Write>(
    mut w: W,
    events: &[TraceEvent],
    opts: &FioWriteOptions,
) -> std::io::Result<()> {
    let name = &opts.filename;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "fio iolog filename must be non-empty without whitespace",
        ));
    }
    let align = opts.align_bytes.max(1);
    writeln!(w, "fio version 2 iolog")?;
    writeln!(w, "{name} add")?;
    writeln!(w, "{name} open")?;
    let mut prev_ts = events.first().map_or(0, |e| e.ts_ns);
    for e in events {
        if opts.timing {
            let gap_us = e.ts_ns.saturating_sub(prev_ts) / 1000;
            if gap_us > 0 {
                writeln!(w, "{name} wait {gap_us} 0")?;
            }
            prev_ts += gap_us * 1000;
        }
        let action = match e.op {
            Op::Read => "read",
            Op::Write => "write",
            Op::Discard => "trim",
            Op::Flush => {
                writeln!(w, "{name} sync")?;
                continue;
            }
        };
        let (off, len) = match opts.wrap_bytes {
            None => (e.offset, e.len),
            Some(size) => {
                let off = (e.offset % size) / align * align;
                let len = e.len.min(size - off).div_ceil(align) * align;
                (off, len.min(size - off))
            }
        };
        if len == 0 {
            continue;
        }
        writeln!(w, "{name} {action} {off} {len}")?;
    }
    writeln!(w, "{name} close")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_fixture_converts() {
        let input = "fio version 2 iolog\n/dev/sdb add\n/dev/sdb open\n/dev/sdb read 0 4096\n\
                     /dev/sdb wait 50\n/dev/sdb write 8192 4096\n/dev/sdc add\n/dev/sdc trim 0 65536\n\
                     /dev/sdb sync\n/dev/sdb close\n";
        let ev = from_fio_iolog(
            input.as_bytes(),
            FioOptions {
                interarrival_ns: 1000,
            },
        )
        .unwrap();
        assert_eq!(
            ev,
            vec![
                TraceEvent {
                    ts_ns: 0,
                    op: Op::Read,
                    offset: 0,
                    len: 4096
                },
                TraceEvent {
                    ts_ns: 51_000,
                    op: Op::Write,
                    offset: 8192,
                    len: 4096
                },
                TraceEvent {
                    ts_ns: 52_000,
                    op: Op::Discard,
                    offset: 1 << 40,
                    len: 65536
                },
                TraceEvent {
                    ts_ns: 53_000,
                    op: Op::Flush,
                    offset: 0,
                    len: 0
                },
            ]
        );
    }

    #[test]
    fn v3_fixture_converts() {
        let input = "fio version 3 iolog\n0 f add\n0 f open\n5 f read 4096 4096\n7 f write 0 512\n9 f close\n";
        let ev = from_fio_iolog(input.as_bytes(), FioOptions::default()).unwrap();
        assert_eq!(
            ev,
            vec![
                TraceEvent {
                    ts_ns: 0,
                    op: Op::Read,
                    offset: 4096,
                    len: 4096
                },
                TraceEvent {
                    ts_ns: 2_000_000,
                    op: Op::Write,
                    offset: 0,
                    len: 512
                },
            ]
        );
    }

    #[test]
    fn bad_logs_are_errors() {
        for (input, want) in [
            ("fio version 9 iolog\n", 1),
            ("fio version 2 iolog\nf read 0\n", 2),
            ("fio version 2 iolog\nf fly 0 1\n", 2),
            ("fio version 3 iolog\nf read 0 1\n", 2),
        ] {
            assert!(
                matches!(from_fio_iolog(input.as_bytes(), FioOptions::default()), Err(TraceError::Malformed { line, .. }) if line == want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn v2_writer_round_trips() {
        let events = vec![
            TraceEvent {
                ts_ns: 0,
                op: Op::Read,
                offset: 0,
                len: 4096,
            },
            TraceEvent {
                ts_ns: 1000,
                op: Op::Write,
                offset: 8192,
                len: 8192,
            },
            TraceEvent {
                ts_ns: 2000,
                op: Op::Discard,
                offset: 65536,
                len: 65536,
            },
            TraceEvent {
                ts_ns: 3000,
                op: Op::Flush,
                offset: 0,
                len: 0,
            },
        ];
        let opts = FioWriteOptions {
            filename: "/dev/ublkb0".into(),
            wrap_bytes: None,
            align_bytes: 4096,
            timing: false,
        };
        let mut buf = Vec::new();
        write_fio_iolog_v2(&mut buf, &events, &opts).unwrap();
        let back = from_fio_iolog(
            &buf[..],
            FioOptions {
                interarrival_ns: 1000,
            },
        )
        .unwrap();
        assert_eq!(back, events);
        // Folding into a 1 MiB device keeps every I/O inside it and aligned.
        let big = vec![TraceEvent {
            ts_ns: 0,
            op: Op::Read,
            offset: (3 << 40) + 1_048_000,
            len: 8192,
        }];
        let opts = FioWriteOptions {
            wrap_bytes: Some(1 << 20),
            ..opts
        };
        let mut buf = Vec::new();
        write_fio_iolog_v2(&mut buf, &big, &opts).unwrap();
        let back = from_fio_iolog(&buf[..], FioOptions::default()).unwrap();
        assert_eq!(
            back,
            vec![TraceEvent {
                ts_ns: 0,
                op: Op::Read,
                offset: 1_044_480,
                len: 4096
            }]
        );
    }

    #[test]
    fn v2_writer_keeps_the_timing_as_waits() {
        // Gaps of 2.5 ms, 0, 10 ms and 1.9999 us from a start at 7 ms:
        // whole microseconds, the remainders carried to the next gap.
        let at = |ts_ns: u64, offset: u64| TraceEvent {
            ts_ns,
            op: Op::Read,
            offset,
            len: 4096,
        };
        let events = vec![
            at(7_000_000, 0),
            at(9_500_000, 4096),
            at(9_500_000, 8192),
            at(19_500_000, 0),
            at(19_501_999, 4096),
        ];
        let opts = FioWriteOptions {
            filename: "f".into(),
            wrap_bytes: None,
            align_bytes: 4096,
            timing: true,
        };
        let mut buf = Vec::new();
        write_fio_iolog_v2(&mut buf, &events, &opts).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(
            text.lines()
                .filter(|l| l.contains(" wait "))
                .collect::<Vec<_>>(),
            ["f wait 2500 0", "f wait 10000 0", "f wait 1 0"]
        );
        // Read back with no time per I/O: the waits alone give the times.
        let back = from_fio_iolog(&buf[..], FioOptions { interarrival_ns: 0 }).unwrap();
        let times: Vec<u64> = back.iter().map(|e| e.ts_ns).collect();
        assert_eq!(times, [0, 2_500_000, 2_500_000, 12_500_000, 12_501_000]);
        // Without timing, no waits.
        let mut plain = Vec::new();
        write_fio_iolog_v2(
            &mut plain,
            &events,
            &FioWriteOptions {
                timing: false,
                ..opts
            },
        )
        .unwrap();
        assert!(!String::from_utf8(plain).unwrap().contains(" wait "));
    }
}
