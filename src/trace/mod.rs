//! Block traces: the one trace format of shardblk, its reader and writer, and
//! converters from the common public trace formats.
//!
//! Contract:
//! - The format ([`csv`]) is a CSV file, gzip-compressed or plain, with the
//!   header `timestamp_ns,op,offset_bytes,length_bytes`, one request per line,
//!   timestamps non-decreasing, `op` one of `R`, `W`, `D` (discard), `F`
//!   (flush). Where a source mixes devices, `offset_bytes = device *
//!   2^TRACE_DEVICE_SHIFT_BITS + byte offset`, so `offset >> 40` is the device.
//! - Every reader takes `impl BufRead` (no file access in this module) and
//!   parses strictly: malformed input is a [`TraceError`] naming the line,
//!   never a panic and never a silently skipped line (except where a
//!   converter documents what it skips).
//! - Converters ([`blkparse`], [`msr`], [`spc`], [`fio`], [`lirs`]) return
//!   events sorted by time (stable) with the first event at time 0.

pub mod blkparse;
pub mod csv;
pub mod fio;
pub mod lirs;
pub mod msr;
pub mod spc;

use crate::constants::{TRACE_DEVICE_SHIFT_BITS, TRACE_LINE_LEN_MAX_BYTES};
use std::io::BufRead;

/// Operation of one traced request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Op {
    Read,
    Write,
    Discard,
    Flush,
}

impl Op {
    /// The letter used in the trace format.
    pub fn letter(self) -> char {
        match self {
            Op::Read => 'R',
            Op::Write => 'W',
            Op::Discard => 'D',
            Op::Flush => 'F',
        }
    }
    /// Inverse of [`Op::letter`].
    pub fn from_letter(s: &str) -> Option<Op> {
        match s {
            "R" => Some(Op::Read),
            "W" => Some(Op::Write),
            "D" => Some(Op::Discard),
            "F" => Some(Op::Flush),
            _ => None,
        }
    }
}

/// One traced request. `len` is 0 only for [`Op::Flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceEvent {
    /// Nanoseconds since the first event of the trace.
    pub ts_ns: u64,
    pub op: Op,
    /// Byte offset (with the device in bits 40.. for multi-device sources).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Errors of trace parsing and conversion. Line numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: read error: {source}")]
    Io {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {what}")]
    Malformed { line: u64, what: String },
    #[error("line {line}: timestamp {ts_ns} ns is before the previous one ({prev_ns} ns)")]
    TimeBackwards { line: u64, ts_ns: u64, prev_ns: u64 },
    #[error("line {line}: line longer than {TRACE_LINE_LEN_MAX_BYTES} bytes")]
    LineTooLong { line: u64 },
    #[error("empty input: no header")]
    Empty,
}

impl TraceError {
    pub(crate) fn malformed(line: u64, what: impl Into<String>) -> Self {
        TraceError::Malformed {
            line,
            what: what.into(),
        }
    }
}

/// Reads lines of a text input with a length bound and a line counter.
pub(crate) struct Lines<R: BufRead> {
    r: R,
    buf: Vec<u8>,
    /// Number of the line last returned (1-based).
    pub line: u64,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(r: R) -> Self {
        Lines {
            r,
            buf: Vec::new(),
            line: 0,
        }
    }

    /// The next line (its 1-based number, its text without the line ending),
    /// or `None` at end of input.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &str)>, TraceError> {
        self.buf.clear();
        self.line += 1;
        let line = self.line;
        let limit = TRACE_LINE_LEN_MAX_BYTES as u64 + 2;
        let n = <&mut R as std::io::Read>::take(&mut self.r, limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| TraceError::Io { line, source })?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if n as u64 == limit {
            return Err(TraceError::LineTooLong { line });
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if self.buf.len() > TRACE_LINE_LEN_MAX_BYTES {
            return Err(TraceError::LineTooLong { line });
        }
        std::str::from_utf8(&self.buf)
            .map(|t| Some((line, t)))
            .map_err(|_| TraceError::malformed(line, "not valid UTF-8"))
    }
}

/// Parse an unsigned decimal integer field.
pub(crate) fn parse_u64(line: u64, name: &str, s: &str) -> Result<u64, TraceError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TraceError::malformed(
            line,
            format!("{name}: {s:?} is not an unsigned integer"),
        ));
    }
    s.parse::<u64>()
        .map_err(|_| TraceError::malformed(line, format!("{name}: {s:?} is out of range")))
}

/// Parse a non-negative decimal number of `unit_ns`-nanosecond units (e.g.
/// seconds with `1_000_000_000`) exactly, without floating point:
/// "12.000009467" seconds → 12_000_009_467 ns. Digits below 1 ns are truncated.
pub(crate) fn parse_decimal_ns(
    line: u64,
    name: &str,
    s: &str,
    unit_ns: u64,
) -> Result<u64, TraceError> {
    let s = s.trim();
    let bad = || {
        TraceError::malformed(
            line,
            format!("{name}: {s:?} is not a non-negative decimal number"),
        )
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let range = || TraceError::malformed(line, format!("{name}: {s:?} is out of range"));
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| range())?
    };
    let mut total = whole.checked_mul(unit_ns).ok_or_else(range)?;
    // Fractional part: digit k (1-based) is worth unit_ns / 10^k.
    let mut place = unit_ns;
    for d in frac.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        total = total
            .checked_add(u64::from(d - b'0') * place)
            .ok_or_else(range)?;
    }
    Ok(total)
}

/// Combine a device index and a byte offset per the multi-device rule.
pub(crate) fn device_offset(line: u64, device: u64, offset: u64) -> Result<u64, TraceError> {
    if offset >> TRACE_DEVICE_SHIFT_BITS != 0 {
        return Err(TraceError::malformed(
            line,
            format!("offset {offset} is beyond 2^{TRACE_DEVICE_SHIFT_BITS} bytes"),
        ));
    }
    if device >= 1 << (64 - TRACE_DEVICE_SHIFT_BITS) {
        return Err(TraceError::malformed(
            line,
            format!("device index {device} is too large"),
        ));
    }
    Ok((device << TRACE_DEVICE_SHIFT_BITS) | offset)
}

/// Give each distinct device key a dense index in order of first appearance.
#[derive(Default)]
pub(crate) struct DeviceIndex<K: std::hash::Hash + Eq> {
    map: std::collections::HashMap<K, u64>,
}

impl<K: std::hash::Hash + Eq> DeviceIndex<K> {
    pub(crate) fn index(&mut self, key: K) -> u64 {
        let n = self.map.len() as u64;
        *self.map.entry(key).or_insert(n)
    }
}

/// Sort by time (stable) and shift timestamps so the first event is at 0.
pub(crate) fn normalize(mut events: Vec<TraceEvent>) -> Vec<TraceEvent> {
    events.sort_by_key(|e| e.ts_ns);
    if let Some(t0) = events.first().map(|e| e.ts_ns) {
        for e in &mut events {
            e.ts_ns -= t0;
        }
    }
    events
}

/// Check the length rule shared by all formats.
pub(crate) fn check_event(line: u64, ev: &TraceEvent) -> Result<(), TraceError> {
    if ev.op == Op::Flush {
        return Ok(());
    }
    if ev.len == 0 {
        return Err(TraceError::malformed(
            line,
            format!("{} request of length 0", ev.op.letter()),
        ));
    }
    if ev.offset.checked_add(ev.len).is_none() {
        return Err(TraceError::malformed(line, "offset + length overflows"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_seconds_are_exact() {
        assert_eq!(
            parse_decimal_ns(1, "t", "12.000009467", 1_000_000_000).unwrap(),
            12_000_009_467
        );
        assert_eq!(
            parse_decimal_ns(1, "t", "0.5", 1_000_000_000).unwrap(),
            500_000_000
        );
        assert_eq!(parse_decimal_ns(1, "t", "3", 1_000_000).unwrap(), 3_000_000);
        assert_eq!(parse_decimal_ns(1, "t", ".25", 1_000).unwrap(), 250);
        assert_eq!(
            parse_decimal_ns(1, "t", "1.1234567891234", 1_000_000_000).unwrap(),
            1_123_456_789
        );
        for bad in ["", ".", "-1", "1e3", "1.2.3", "abc", "99999999999999999999"] {
            assert!(
                parse_decimal_ns(7, "t", bad, 1_000_000_000).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn long_lines_are_rejected() {
        let long = "x".repeat(TRACE_LINE_LEN_MAX_BYTES + 10);
        let input = format!("ok\n{long}\n");
        let mut l = Lines::new(input.as_bytes());
        assert_eq!(l.next_line().unwrap(), Some((1, "ok")));
        assert!(matches!(
            l.next_line(),
            Err(TraceError::LineTooLong { line: 2 })
        ));
    }
}
