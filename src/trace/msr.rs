//! Converter from the MSR Cambridge CSV traces (SNIA IOTTA):
//! `Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime`, with
//! Timestamp in Windows filetime (100 ns units), Type `Read` or `Write`,
//! Offset and Size in bytes. An optional header line starting with
//! `Timestamp` is skipped; blank lines are errors.
//!
//! Each distinct (Hostname, DiskNumber) is a device numbered in order of
//! first appearance: offset = device * 2^40 + Offset. ResponseTime is
//! checked to be a number and otherwise dropped.

use super::{
    check_event, device_offset, normalize, parse_u64, DeviceIndex, Lines, Op, TraceError,
    TraceEvent,
};
use std::io::BufRead;

/// Nanoseconds per Windows filetime tick.
const FILETIME_TICK_NS: u64 = 100;

/// Convert MSR Cambridge CSV to trace events.
pub fn from_msr<R: BufRead>(r: R) -> Result<Vec<TraceEvent>, TraceError> {
    let mut lines = Lines::new(r);
    let mut devices = DeviceIndex::default();
    let mut out = Vec::new();
    while let Some((line, text)) = lines.next_line()? {
        if line == 1 && text.starts_with("Timestamp") {
            continue;
        }
        let f: Vec<&str> = text.split(',').collect();
        if f.len() != 7 {
            return Err(TraceError::malformed(
                line,
                format!("{} fields, expected 7", f.len()),
            ));
        }
        let ticks = parse_u64(line, "Timestamp", f[0])?;
        let disk = parse_u64(line, "DiskNumber", f[2])?;
        let op = match f[3].trim() {
            "Read" => Op::Read,
            "Write" => Op::Write,
            t => {
                return Err(TraceError::malformed(
                    line,
                    format!("Type {t:?} is not Read or Write"),
                ))
            }
        };
        let off = parse_u64(line, "Offset", f[4])?;
        let len = parse_u64(line, "Size", f[5])?;
        parse_u64(line, "ResponseTime", f[6])?;
        let device = devices.index((f[1].trim().to_string(), disk));
        let ts_ns = ticks
            .checked_mul(FILETIME_TICK_NS)
            .ok_or_else(|| TraceError::malformed(line, "Timestamp out of range"))?;
        let ev = TraceEvent {
            ts_ns,
            op,
            offset: device_offset(line, device, off)?,
            len,
        };
        check_event(line, &ev)?;
        out.push(ev);
    }
    Ok(normalize(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_converts() {
        let input = "128166372003061629,hm,1,Read,383496192,32768,2151\n\
                     128166372003061639,hm,1,Write,1024,4096,100\n\
                     128166372003061640,hm,0,Read,0,512,7\n";
        let ev = from_msr(input.as_bytes()).unwrap();
        assert_eq!(
            ev,
            vec![
                TraceEvent {
                    ts_ns: 0,
                    op: Op::Read,
                    offset: 383496192,
                    len: 32768
                },
                TraceEvent {
                    ts_ns: 1000,
                    op: Op::Write,
                    offset: 1024,
                    len: 4096
                },
                TraceEvent {
                    ts_ns: 1100,
                    op: Op::Read,
                    offset: 1 << 40,
                    len: 512
                },
            ]
        );
        let with_header =
            format!("Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n{input}");
        assert_eq!(from_msr(with_header.as_bytes()).unwrap(), ev);
    }

    #[test]
    fn bad_rows_are_errors() {
        for (input, want) in [
            ("1,hm,1,Read,0,512,7\n2,hm,1,Trim,0,512,7\n", 2),
            ("1,hm,1,Read,0,512\n", 1),
            ("1,hm,1,Read,0,0,7\n", 1),
            ("1,hm,x,Read,0,512,7\n", 1),
        ] {
            assert!(
                matches!(from_msr(input.as_bytes()), Err(TraceError::Malformed { line, .. }) if line == want),
                "{input:?}"
            );
        }
    }
}
