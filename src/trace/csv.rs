//! The shardblk trace format: reader (gzip or plain, detected by the gzip
//! magic bytes) and writer (plain; the caller wraps a gzip encoder if it
//! wants one).
//!
//! Contract: [`CsvReader`] yields events in file order and fails, naming the
//! line, on a wrong header, a malformed field, a zero-length non-flush
//! request, an `offset + length` overflow or a timestamp earlier than the
//! previous one. [`write_csv`] output read back by [`read_csv`] gives the
//! same events.

use super::{check_event, parse_u64, Lines, Op, TraceError, TraceEvent};
use std::io::{BufRead, BufReader, Write};

/// The header line of the format.
pub const HEADER: &str = "timestamp_ns,op,offset_bytes,length_bytes";

/// First two bytes of every gzip member.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// If `r` starts with the gzip magic, a decompressing reader over it;
/// otherwise `r` itself. Multi-member gzip files are read whole.
pub fn maybe_gunzip<'a, R: BufRead + 'a>(mut r: R) -> Result<Box<dyn BufRead + 'a>, TraceError> {
    let head = r
        .fill_buf()
        .map_err(|source| TraceError::Io { line: 0, source })?;
    if head.len() >= 2 && head[..2] == GZIP_MAGIC {
        Ok(Box::new(BufReader::new(
            flate2::bufread::MultiGzDecoder::new(r),
        )))
    } else {
        Ok(Box::new(r))
    }
}

/// Streaming reader of the trace format.
pub struct CsvReader<R: BufRead> {
    lines: Lines<R>,
    prev_ts: u64,
    done: bool,
}

impl<'a> CsvReader<Box<dyn BufRead + 'a>> {
    /// Open a trace (gzip or plain) and check its header.
    pub fn open<R: BufRead + 'a>(r: R) -> Result<Self, TraceError> {
        CsvReader::new(maybe_gunzip(r)?)
    }
}

impl<R: BufRead> CsvReader<R> {
    /// Read a plain (already decompressed) trace; checks the header.
    pub fn new(r: R) -> Result<Self, TraceError> {
        let mut lines = Lines::new(r);
        match lines.next_line()? {
            None => Err(TraceError::Empty),
            Some((_, h)) if h.trim() == HEADER => Ok(CsvReader {
                lines,
                prev_ts: 0,
                done: false,
            }),
            Some((_, h)) => Err(TraceError::malformed(
                1,
                format!("header {h:?}, expected {HEADER:?}"),
            )),
        }
    }

    fn parse_next(&mut self) -> Result<Option<TraceEvent>, TraceError> {
        let Some((line, text)) = self.lines.next_line()? else {
            return Ok(None);
        };
        let mut f = text.split(',');
        let mut field = |name: &str| {
            f.next().ok_or_else(|| {
                TraceError::malformed(line, format!("missing field {name} (expected 4 fields)"))
            })
        };
        let ts = field("timestamp_ns")?;
        let op = field("op")?;
        let off = field("offset_bytes")?;
        let len = field("length_bytes")?;
        if f.next().is_some() {
            return Err(TraceError::malformed(line, "more than 4 fields"));
        }
        let ev = TraceEvent {
            ts_ns: parse_u64(line, "timestamp_ns", ts)?,
            op: Op::from_letter(op.trim()).ok_or_else(|| {
                TraceError::malformed(line, format!("op {op:?} is not one of R, W, D, F"))
            })?,
            offset: parse_u64(line, "offset_bytes", off)?,
            len: parse_u64(line, "length_bytes", len)?,
        };
        check_event(line, &ev)?;
        if ev.ts_ns < self.prev_ts {
            return Err(TraceError::TimeBackwards {
                line,
                ts_ns: ev.ts_ns,
                prev_ns: self.prev_ts,
            });
        }
        self.prev_ts = ev.ts_ns;
        Ok(Some(ev))
    }
}

impl<R: BufRead> Iterator for CsvReader<R> {
    type Item = Result<TraceEvent, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.parse_next().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true; // stop after the end or the first error
        }
        r
    }
}

/// Read a whole trace (gzip or plain).
pub fn read_csv<R: BufRead>(r: R) -> Result<Vec<TraceEvent>, TraceError> {
    CsvReader::open(r)?.collect()
}

/// Write events in the trace format (header included).
pub fn write_csv<W: Write>(mut w: W, events: &[TraceEvent]) -> std::io::Result<()> {
    writeln!(w, "{HEADER}")?;
    for e in events {
        writeln!(w, "{},{},{},{}", e.ts_ns, e.op.letter(), e.offset, e.len)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};

    fn sample() -> Vec<TraceEvent> {
        vec![
            TraceEvent {
                ts_ns: 0,
                op: Op::Read,
                offset: 4096,
                len: 8192,
            },
            TraceEvent {
                ts_ns: 10,
                op: Op::Write,
                offset: 1 << 40,
                len: 512,
            },
            TraceEvent {
                ts_ns: 10,
                op: Op::Discard,
                offset: 0,
                len: 1 << 20,
            },
            TraceEvent {
                ts_ns: 99,
                op: Op::Flush,
                offset: 0,
                len: 0,
            },
        ]
    }

    #[test]
    fn round_trip_plain_and_gzip() {
        let mut plain = Vec::new();
        write_csv(&mut plain, &sample()).unwrap();
        assert_eq!(read_csv(&plain[..]).unwrap(), sample());
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        write_csv(&mut gz, &sample()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(&gz[..2], &GZIP_MAGIC);
        assert_eq!(read_csv(&gz[..]).unwrap(), sample());
    }

    fn err_of(body: &str) -> TraceError {
        read_csv(format!("{HEADER}\n{body}").as_bytes()).unwrap_err()
    }

    #[test]
    fn malformed_input_names_the_line() {
        let cases: &[(&str, u64)] = &[
            ("0,R,0,4096\n5,X,0,4096\n", 3),
            ("0,R,0\n", 2),
            ("0,R,0,4096,7\n", 2),
            ("0,R,-5,4096\n", 2),
            ("0,R,0,0\n", 2),
            ("0,R,18446744073709551615,2\n", 2),
            ("0,R,0,4096\n\n", 3),
            ("1.5,R,0,4096\n", 2),
        ];
        for (body, want) in cases {
            match err_of(body) {
                TraceError::Malformed { line, .. } => assert_eq!(line, *want, "{body:?}"),
                e => panic!("{body:?}: unexpected {e}"),
            }
        }
        assert!(matches!(
            err_of("5,R,0,1\n4,R,0,1\n"),
            TraceError::TimeBackwards { line: 3, .. }
        ));
        assert!(matches!(read_csv(&b""[..]), Err(TraceError::Empty)));
        assert!(matches!(
            read_csv(&b"ts,op\n"[..]),
            Err(TraceError::Malformed { line: 1, .. })
        ));
        // Truncated gzip is an I/O error, not a panic.
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        write_csv(&mut gz, &sample()).unwrap();
        let gz = gz.finish().unwrap();
        assert!(read_csv(&gz[..gz.len() - 12]).is_err());
    }
}
