//! Converter from SPC / UMass trace repository CSV (Financial, WebSearch):
//! `ASU,LBA,Size,Opcode,Timestamp[,...]` with LBA in 512-byte sectors, Size
//! in bytes, Opcode `r`/`R`/`w`/`W`, Timestamp in seconds (decimal).
//! Offset = ASU * 2^40 + LBA * 512. Extra trailing fields are ignored; blank
//! lines are skipped.

use super::{
    check_event, device_offset, normalize, parse_decimal_ns, parse_u64, Lines, Op, TraceError,
    TraceEvent,
};
use crate::constants::SECTOR_SIZE_BYTES;
use std::io::BufRead;

/// Convert SPC/UMass CSV to trace events.
pub fn from_spc<R: BufRead>(r: R) -> Result<Vec<TraceEvent>, TraceError> {
    let mut lines = Lines::new(r);
    let mut out = Vec::new();
    while let Some((line, text)) = lines.next_line()? {
        if text.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = text.split(',').collect();
        if f.len() < 5 {
            return Err(TraceError::malformed(
                line,
                format!("{} fields, expected at least 5", f.len()),
            ));
        }
        let asu = parse_u64(line, "ASU", f[0])?;
        let lba = parse_u64(line, "LBA", f[1])?;
        let len = parse_u64(line, "Size", f[2])?;
        let op = match f[3].trim() {
            "r" | "R" => Op::Read,
            "w" | "W" => Op::Write,
            o => {
                return Err(TraceError::malformed(
                    line,
                    format!("Opcode {o:?} is not r or w"),
                ))
            }
        };
        let ts_ns = parse_decimal_ns(line, "Timestamp", f[4], 1_000_000_000)?;
        let byte = lba
            .checked_mul(SECTOR_SIZE_BYTES)
            .ok_or_else(|| TraceError::malformed(line, "LBA out of range"))?;
        let ev = TraceEvent {
            ts_ns,
            op,
            offset: device_offset(line, asu, byte)?,
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
        let input =
            "0,20941264,8192,W,0.551706\n1,3436288,15872,r,0.5517\n\n2,8,512,R,1.000000,extra\n";
        let ev = from_spc(input.as_bytes()).unwrap();
        assert_eq!(
            ev,
            vec![
                TraceEvent {
                    ts_ns: 0,
                    op: Op::Read,
                    offset: (1 << 40) + 3436288 * 512,
                    len: 15872
                },
                TraceEvent {
                    ts_ns: 6_000,
                    op: Op::Write,
                    offset: 20941264 * 512,
                    len: 8192
                },
                TraceEvent {
                    ts_ns: 448_300_000,
                    op: Op::Read,
                    offset: (2 << 40) + 4096,
                    len: 512
                },
            ]
        );
    }

    #[test]
    fn bad_rows_are_errors() {
        for (input, want) in [
            ("0,1,512,x,0.1\n", 1),
            ("0,1,512,r\n", 1),
            ("0,1,512,r,0.1\n0,1,512,r,-2\n", 2),
        ] {
            assert!(
                matches!(from_spc(input.as_bytes()), Err(TraceError::Malformed { line, .. }) if line == want),
                "{input:?}"
            );
        }
    }
}
