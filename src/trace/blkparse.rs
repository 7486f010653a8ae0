//! Converter from `blkparse -i DEV` text output in its default format:
//!
//! ```text
//!   8,0    3        1     0.000000000  4162  Q  WS 3417048 + 8 [kjournald]
//! ```
//!
//! (device major,minor; cpu; sequence; seconds.nanoseconds; pid; action;
//! RWBS; start sector + sectors; [process]).
//!
//! Choice of action: by default only `D` (issued to the driver) lines are
//! kept: they are the requests after the block layer merged and split them,
//! which is what a ublk device (and so the prefetcher) sees. `Q` (queued by
//! the application, before merging) or `C` (completed) can be chosen with
//! [`BlkparseOptions::action`]. Other actions and the trailing summary
//! (from the first line starting with `CPU` or `Total`) are skipped; an
//! event line of the chosen action that does not parse is an error.
//!
//! RWBS mapping: containing `D` → discard, else `R` → read, else `W` →
//! write, else `F` (a bare flush) → flush; other requests (`N`, no data) are
//! skipped. Each distinct major,minor is a device, numbered in order of first
//! appearance: offset = device * 2^40 + sector * 512.

use super::{
    check_event, device_offset, normalize, parse_decimal_ns, parse_u64, DeviceIndex, Lines, Op,
    TraceError, TraceEvent,
};
use crate::constants::SECTOR_SIZE_BYTES;
use std::io::BufRead;

/// Which blktrace action becomes a trace event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkAction {
    /// `Q`: queued (before merging).
    Queue,
    /// `D`: issued to the driver (the default).
    Issue,
    /// `C`: completed.
    Complete,
}

impl BlkAction {
    fn letter(self) -> &'static str {
        match self {
            BlkAction::Queue => "Q",
            BlkAction::Issue => "D",
            BlkAction::Complete => "C",
        }
    }
}

/// Options of [`from_blkparse`].
#[derive(Debug, Clone, Copy)]
pub struct BlkparseOptions {
    pub action: BlkAction,
}

impl Default for BlkparseOptions {
    fn default() -> Self {
        BlkparseOptions {
            action: BlkAction::Issue,
        }
    }
}

fn rwbs_op(rwbs: &str) -> Option<Op> {
    if rwbs.contains('D') {
        Some(Op::Discard)
    } else if rwbs.contains('R') {
        Some(Op::Read)
    } else if rwbs.contains('W') {
        Some(Op::Write)
    } else if rwbs.contains('F') {
        Some(Op::Flush)
    } else {
        None
    }
}

/// Convert blkparse default-format text to trace events.
pub fn from_blkparse<R: BufRead>(
    r: R,
    opts: BlkparseOptions,
) -> Result<Vec<TraceEvent>, TraceError> {
    let mut lines = Lines::new(r);
    let mut devices = DeviceIndex::default();
    let mut out = Vec::new();
    while let Some((line, text)) = lines.next_line()? {
        let t = text.trim_start();
        if t.starts_with("CPU") || t.starts_with("Total") {
            break; // summary section
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 7 {
            return Err(TraceError::malformed(
                line,
                "not a blkparse event line (fewer than 7 fields)",
            ));
        }
        if f[5] != opts.action.letter() {
            continue;
        }
        let Some((maj, min)) = f[0].split_once(',') else {
            return Err(TraceError::malformed(
                line,
                format!("device {:?} is not major,minor", f[0]),
            ));
        };
        let dev = (
            parse_u64(line, "major", maj)?,
            parse_u64(line, "minor", min)?,
        );
        let ts = parse_decimal_ns(line, "time", f[3], 1_000_000_000)?;
        let Some(op) = rwbs_op(f[6]) else { continue };
        // "sector + count" follows the RWBS field unless the request has no data.
        let (sector, sectors) = if f.len() >= 10 && f[8] == "+" {
            (
                parse_u64(line, "sector", f[7])?,
                parse_u64(line, "sectors", f[9])?,
            )
        } else if op == Op::Flush {
            (0, 0)
        } else {
            return Err(TraceError::malformed(line, "missing \"sector + count\""));
        };
        let byte = sector
            .checked_mul(SECTOR_SIZE_BYTES)
            .ok_or_else(|| TraceError::malformed(line, "sector out of range"))?;
        let device = devices.index(dev);
        let ev = TraceEvent {
            ts_ns: ts,
            op,
            offset: if op == Op::Flush {
                device_offset(line, device, 0)?
            } else {
                device_offset(line, device, byte)?
            },
            len: if op == Op::Flush {
                0
            } else {
                sectors * SECTOR_SIZE_BYTES
            },
        };
        check_event(line, &ev)?;
        out.push(ev);
    }
    Ok(normalize(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "  8,0    3        1     0.000000000  4162  Q  WS 3417048 + 8 [kjournald]
  8,0    3        2     0.000009467  4162  G  WS 3417048 + 8 [kjournald]
  8,0    3        3     0.000010000  4162  P   N [kjournald]
  8,0    3        4     0.000012000  4162  D  WS 3417048 + 16 [kjournald]
  8,16   1        1     0.000020000  4163  D   R 100 + 8 [dd]
  8,0    1        2     0.000030000  4163  D  RA 200 + 256 [cat]
  8,0    1        3     0.000031000     0  D  FN [kworker]
  8,0    1        4     0.000040000  4163  D   D 4096 + 2048 [fstrim]
  8,0    3        5     1.000000000     0  C  WS 3417048 + 16 [0]
CPU0 (8,0):
 Reads Queued:           0,        0KiB	 Writes Queued:           1,       4KiB
Total (8,0):
";

    #[test]
    fn issue_lines_become_events() {
        let ev = from_blkparse(FIXTURE.as_bytes(), BlkparseOptions::default()).unwrap();
        let want = vec![
            TraceEvent {
                ts_ns: 0,
                op: Op::Write,
                offset: 3417048 * 512,
                len: 16 * 512,
            },
            TraceEvent {
                ts_ns: 8_000,
                op: Op::Read,
                offset: (1 << 40) + 100 * 512,
                len: 8 * 512,
            },
            TraceEvent {
                ts_ns: 18_000,
                op: Op::Read,
                offset: 200 * 512,
                len: 256 * 512,
            },
            TraceEvent {
                ts_ns: 19_000,
                op: Op::Flush,
                offset: 0,
                len: 0,
            },
            TraceEvent {
                ts_ns: 28_000,
                op: Op::Discard,
                offset: 4096 * 512,
                len: 2048 * 512,
            },
        ];
        assert_eq!(ev, want);
        let q = from_blkparse(
            FIXTURE.as_bytes(),
            BlkparseOptions {
                action: BlkAction::Queue,
            },
        )
        .unwrap();
        assert_eq!(
            q,
            vec![TraceEvent {
                ts_ns: 0,
                op: Op::Write,
                offset: 3417048 * 512,
                len: 4096
            }]
        );
        let c = from_blkparse(
            FIXTURE.as_bytes(),
            BlkparseOptions {
                action: BlkAction::Complete,
            },
        )
        .unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bad_lines_are_errors() {
        let bad = "  8,0 3 1 0.0 1 D R 12x + 8 [a]\n";
        assert!(matches!(
            from_blkparse(bad.as_bytes(), BlkparseOptions::default()),
            Err(TraceError::Malformed { line: 1, .. })
        ));
        let bad = "  8,0 3 1 0.0 1 D R 12 + 8 [a]\n  8,0 3 1 zz 1 D R 12 + 8 [a]\n";
        assert!(matches!(
            from_blkparse(bad.as_bytes(), BlkparseOptions::default()),
            Err(TraceError::Malformed { line: 2, .. })
        ));
        let bad = "garbage\n";
        assert!(from_blkparse(bad.as_bytes(), BlkparseOptions::default()).is_err());
    }
}
