//! Converter from LIRS `.blocks` block-reference traces: one block number per
//! line, in access order, no time, size or operation. Each reference becomes
//! a read of `block_bytes` at `block * block_bytes`, the i-th (0-based) at
//! `i * interarrival_ns`. Blank lines and anything but a decimal block number
//! are errors.

use super::{check_event, parse_u64, Lines, Op, TraceError, TraceEvent};
use crate::constants::{TRACE_INTERARRIVAL_DEFAULT_NS, TRACE_LIRS_BLOCK_DEFAULT_BYTES};
use std::io::BufRead;

/// Options of [`from_lirs`].
#[derive(Debug, Clone, Copy)]
pub struct LirsOptions {
    /// Bytes per block (default [`TRACE_LIRS_BLOCK_DEFAULT_BYTES`]).
    pub block_bytes: u64,
    /// Time between references (default [`TRACE_INTERARRIVAL_DEFAULT_NS`]).
    pub interarrival_ns: u64,
}

impl Default for LirsOptions {
    fn default() -> Self {
        LirsOptions {
            block_bytes: TRACE_LIRS_BLOCK_DEFAULT_BYTES,
            interarrival_ns: TRACE_INTERARRIVAL_DEFAULT_NS,
        }
    }
}

/// Convert a LIRS `.blocks` file to trace events.
pub fn from_lirs<R: BufRead>(r: R, opts: LirsOptions) -> Result<Vec<TraceEvent>, TraceError> {
    if opts.block_bytes == 0 {
        return Err(TraceError::malformed(0, "block size must be positive"));
    }
    let mut lines = Lines::new(r);
    let mut out = Vec::new();
    while let Some((line, text)) = lines.next_line()? {
        let block = parse_u64(line, "block", text)?;
        let range = || TraceError::malformed(line, "block or time out of range");
        let ev = TraceEvent {
            ts_ns: (line - 1)
                .checked_mul(opts.interarrival_ns)
                .ok_or_else(range)?,
            op: Op::Read,
            offset: block.checked_mul(opts.block_bytes).ok_or_else(range)?,
            len: opts.block_bytes,
        };
        check_event(line, &ev)?;
        out.push(ev);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_converts() {
        let ev = from_lirs(
            "0\n1\n0\n7\n".as_bytes(),
            LirsOptions {
                block_bytes: 4096,
                interarrival_ns: 50,
            },
        )
        .unwrap();
        let offs: Vec<(u64, u64)> = ev.iter().map(|e| (e.ts_ns, e.offset)).collect();
        assert_eq!(offs, vec![(0, 0), (50, 4096), (100, 0), (150, 7 * 4096)]);
        assert!(ev.iter().all(|e| e.op == Op::Read && e.len == 4096));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(matches!(
            from_lirs("1\n\n".as_bytes(), LirsOptions::default()),
            Err(TraceError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            from_lirs("1\n*\n".as_bytes(), LirsOptions::default()),
            Err(TraceError::Malformed { line: 2, .. })
        ));
        assert!(from_lirs(
            "1\n".as_bytes(),
            LirsOptions {
                block_bytes: 0,
                interarrival_ns: 1
            }
        )
        .is_err());
    }
}
