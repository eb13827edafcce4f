//! The logical record stream, as Postfix's own `rec_get()` sees it: pointer
//! records are followed (value 0 is a dummy), padding is skipped, and reading
//! stops at the END record, never past it.
//!
//! Milter edits leave a queue file whose records are not in file order: an
//! edited record is overwritten by a pointer to new data after the END
//! record, and that data ends with a pointer back. Reading such a file in
//! file order loses sync; reading it through [`Reader`] does not.
//!
//! Loop guard: like Postfix, a jump to an offset at or before the previous
//! jump's target counts as a reverse jump, and more than
//! [`REVERSE_JUMP_LIMIT`] of them is an error. Between jumps the reader only
//! moves forward, so every input terminates.
//!
//! See also: [`crate::record`] for the physical stream, [`crate::queue_file`]
//! for the typed view.

use std::io::{Read, Seek};

use crate::error::{Error, ErrorKind, Result};
use crate::rec_type;
use crate::record::{Dialect, RawReader};

/// Postfix's limit on backward pointer jumps in one file.
pub const REVERSE_JUMP_LIMIT: u32 = 10_000;

/// What the logical reader does with special records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Follow `p` records instead of returning them.
    pub follow_pointers: bool,
    /// Skip `w` padding records instead of returning them.
    pub skip_padding: bool,
    /// Return the END record, then report end of input.
    pub stop_at_end: bool,
    /// How damaged records are read ([`Dialect::Strict`] in both constants).
    pub dialect: Dialect,
}

impl Mode {
    /// Postfix's default: follow pointers, skip padding, stop at END.
    pub const LOGICAL: Mode = Mode {
        follow_pointers: true,
        skip_padding: true,
        stop_at_end: true,
        dialect: Dialect::Strict,
    };
    /// Records exactly as stored, in file order (`postcat -v -r`).
    pub const PHYSICAL: Mode = Mode {
        follow_pointers: false,
        skip_padding: false,
        stop_at_end: false,
        dialect: Dialect::Strict,
    };

    /// This mode, reading damaged records as `dialect` says.
    pub const fn with_dialect(self, dialect: Dialect) -> Mode {
        Mode { dialect, ..self }
    }
}

/// One record of the logical stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    /// The type byte.
    pub rtype: u8,
    /// Offset where this record itself starts.
    pub offset: u64,
}

/// Parses a pointer payload as Postfix's `rec_goto()` does: the payload is a
/// C string (it ends at its first NUL), leading white space is skipped, then
/// only decimal digits may follow, and the value must fit an `off_t`. An
/// empty value is 0, the dummy. Returns `None` when malformed.
pub fn parse_pointer(payload: &[u8]) -> Option<u64> {
    let c_string = match payload.iter().position(|&b| b == 0) {
        Some(n) => &payload[..n],
        None => payload,
    };
    let digits = trim_leading_space(c_string);
    let mut v: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    u64::try_from(v).ok()
}

fn trim_leading_space(p: &[u8]) -> &[u8] {
    let n = p
        .iter()
        .take_while(|b| b.is_ascii_whitespace() || **b == 0x0b)
        .count();
    &p[n..]
}

/// The logical record reader.
#[derive(Debug)]
pub struct Reader<R> {
    raw: RawReader<R>,
    mode: Mode,
    /// Target of the previous jump, for the reverse-jump count.
    saved_offset: u64,
    reverse_jumps: u32,
    /// Calls of [`Reader::goto_pointer`], dummies included.
    gotos: u64,
    /// Set once END was returned in `stop_at_end` mode.
    ended: bool,
}

impl<R: Read + Seek> Reader<R> {
    /// A reader at offset 0 in Postfix's default mode.
    pub fn new(inner: R) -> Result<Reader<R>> {
        Reader::with_mode(inner, Mode::LOGICAL)
    }

    /// A reader at offset 0 in the given mode.
    pub fn with_mode(inner: R, mode: Mode) -> Result<Reader<R>> {
        let mut raw = RawReader::new(inner)?;
        raw.set_dialect(mode.dialect);
        Ok(Reader {
            raw,
            mode,
            saved_offset: 0,
            reverse_jumps: 0,
            gotos: 0,
            ended: false,
        })
    }

    /// A reader over a source of known length (see [`RawReader::with_len`]).
    pub fn with_len(inner: R, len: u64, mode: Mode) -> Reader<R> {
        let mut raw = RawReader::with_len(inner, len);
        raw.set_dialect(mode.dialect);
        Reader {
            raw,
            mode,
            saved_offset: 0,
            reverse_jumps: 0,
            gotos: 0,
            ended: false,
        }
    }

    /// Makes every seek fail, as it does when Postfix reads a pipe: pointer
    /// jumps, content skips and (in `stop_at_end` mode) the END record.
    pub fn forbid_seeks(&mut self) {
        self.raw.forbid_seeks();
    }

    /// Moves forward `n` bytes by reading (see [`RawReader::skip`]).
    pub fn skip(&mut self, n: u64) -> Result<()> {
        self.raw.skip(n)
    }

    /// The loop guard's state: the previous jump's target and the number of
    /// reverse jumps so far. Postfix keeps it per file name, across files.
    pub fn jump_state(&self) -> (u64, u32) {
        (self.saved_offset, self.reverse_jumps)
    }

    /// How many pointer records were followed (or tried), dummies included.
    pub fn pointer_gotos(&self) -> u64 {
        self.gotos
    }

    /// Restores a state from [`Reader::jump_state`].
    pub fn set_jump_state(&mut self, (saved_offset, reverse_jumps): (u64, u32)) {
        self.saved_offset = saved_offset;
        self.reverse_jumps = reverse_jumps;
    }

    /// Offset of the next physical record.
    pub fn position(&self) -> u64 {
        self.raw.position()
    }

    /// Length of the input.
    pub fn len(&self) -> u64 {
        self.raw.len()
    }

    /// Whether the input is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Peeks at the next physical byte.
    pub fn peek_byte(&mut self) -> Result<Option<u8>> {
        self.raw.peek()
    }

    /// Seeks to an absolute offset (used for Postfix's content skips).
    /// Clears the END state.
    pub fn seek(&mut self, pos: u64) -> Result<()> {
        self.ended = false;
        self.raw.seek(pos)
    }

    /// Follows a pointer payload as Postfix's `rec_goto()` does: a dummy
    /// (0) does nothing; otherwise jump, counting reverse jumps.
    pub fn goto_pointer(&mut self, payload: &[u8], at: u64) -> Result<()> {
        self.gotos += 1;
        let Some(target) = parse_pointer(payload) else {
            return Err(
                Error::new(ErrorKind::BadPointer, "malformed pointer record value")
                    .at(at)
                    .rec(rec_type::PTR),
            );
        };
        if target == 0 {
            return Ok(());
        }
        if target <= self.saved_offset {
            self.reverse_jumps += 1;
            if self.reverse_jumps > REVERSE_JUMP_LIMIT {
                return Err(
                    Error::new(ErrorKind::PointerLoop, "too many reverse jump records")
                        .at(at)
                        .rec(rec_type::PTR),
                );
            }
        }
        // A target at or past the end is not an error here: the next read
        // reports end of input, exactly as after Postfix's seek. The typed
        // view then finds no END record.
        self.raw.seek(target)?;
        self.saved_offset = target;
        Ok(())
    }

    /// Returns the next logical record, its payload in `buf`, or `None` at
    /// the end of input (or after END in `stop_at_end` mode).
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<Rec>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let offset = self.raw.position();
            let Some(rtype) = self.raw.read_record(buf)? else {
                return Ok(None);
            };
            match rtype {
                rec_type::PTR if self.mode.follow_pointers => {
                    self.goto_pointer(buf, offset)?;
                    continue;
                }
                rec_type::DTXT if self.mode.skip_padding => continue,
                // Postfix seeks to the end of the file here, which fails on
                // a pipe.
                rec_type::END if self.mode.stop_at_end && !self.raw.is_seekable() => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        "seek error after reading END record: Illegal seek",
                    )
                    .at(offset)
                    .rec(rec_type::END));
                }
                rec_type::END if self.mode.stop_at_end => self.ended = true,
                _ => {}
            }
            return Ok(Some(Rec { rtype, offset }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::put_record;
    use std::io::Cursor;

    fn logical(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut r = Reader::new(Cursor::new(bytes))?;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(rec) = r.next(&mut buf)? {
            out.push((rec.rtype, buf.clone()));
        }
        Ok(out)
    }

    #[test]
    fn pointers_padding_and_end() {
        // N "a" | p -> heap | w | E | heap: N "b" p -> back to the w
        let mut f = Vec::new();
        put_record(&mut f, b'N', b"a");
        let ptr_at = f.len();
        put_record(&mut f, b'p', b"000000000000000"); // patched below
        let back = f.len();
        put_record(&mut f, b'w', b"0");
        put_record(&mut f, b'E', b"");
        let heap = f.len();
        put_record(&mut f, b'N', b"b");
        put_record(&mut f, b'p', format!("{back:15}").as_bytes());
        let patched = format!("{heap:15}");
        f[ptr_at + 2..ptr_at + 17].copy_from_slice(patched.as_bytes());
        let recs = logical(&f).unwrap();
        let types: Vec<u8> = recs.iter().map(|r| r.0).collect();
        assert_eq!(types, b"NNE".to_vec());
        assert_eq!(recs[1].1, b"b");
    }

    #[test]
    fn dummy_pointer_is_skipped_and_nothing_after_end_is_read() {
        let mut f = Vec::new();
        put_record(&mut f, b'p', b"              0");
        put_record(&mut f, b'E', b"");
        put_record(&mut f, b'N', b"after end");
        let recs = logical(&f).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].0, b'E');
    }

    #[test]
    fn pointer_loops_and_bad_pointers_fail() {
        // A pointer to itself: an endless loop that Postfix also refuses.
        let mut g = Vec::new();
        put_record(&mut g, b'N', b"x");
        let at = g.len();
        put_record(&mut g, b'p', format!("{at:15}").as_bytes());
        let e = logical(&g).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::PointerLoop);
        let mut h = Vec::new();
        put_record(&mut h, b'p', b"12x");
        assert_eq!(logical(&h).unwrap_err().kind(), &ErrorKind::BadPointer);
        let mut h = Vec::new();
        put_record(&mut h, b'p', b"99999");
        assert!(
            logical(&h).unwrap().is_empty(),
            "a jump past the end is end of input"
        );
    }

    #[test]
    fn pointer_values_are_c_strings_and_off_t() {
        assert_eq!(
            parse_pointer(b"\0 12"),
            Some(0),
            "empty before the NUL: dummy"
        );
        assert_eq!(parse_pointer(b"  12\0zz"), Some(12));
        assert_eq!(parse_pointer(b"   "), Some(0));
        assert_eq!(parse_pointer(b"9223372036854775807"), Some(i64::MAX as u64));
        assert_eq!(parse_pointer(b"9223372036854775808"), None);
        assert_eq!(parse_pointer(b"+12"), None);
        assert_eq!(parse_pointer(b"12 "), None);
    }

    #[test]
    fn end_on_a_pipe_is_an_error_as_in_postfix() {
        let mut f = Vec::new();
        put_record(&mut f, b'N', b"a");
        put_record(&mut f, b'E', b"");
        let mut r = Reader::new(Cursor::new(&f)).unwrap();
        r.forbid_seeks();
        let mut buf = Vec::new();
        assert_eq!(r.next(&mut buf).unwrap().unwrap().rtype, b'N');
        assert_eq!(r.next(&mut buf).unwrap_err().kind(), &ErrorKind::Io);
    }
}
