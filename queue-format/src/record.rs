//! The physical record stream: a type byte, a base-128 length with the low
//! seven-bit group first, then exactly that many payload bytes.
//!
//! [`RawReader`] reads records in file order and knows nothing of pointers,
//! padding or segments; [`crate::reader::Reader`] builds Postfix's logical
//! stream on top of it. [`put_record`] is the inverse, used by the writer.
//!
//! Errors: [`ErrorKind::Truncated`] for EOF inside a length or payload,
//! [`ErrorKind::LengthTooLong`] for a fifth length byte, [`ErrorKind::InvalidType`]
//! for a zero type byte. EOF exactly at a type byte is a clean end.
//!
//! [`Dialect::Postcat37`] relaxes the last two exactly as Postfix 3.7.11's
//! `rec_get_raw()` does, for `posthold cat`, which must read damaged files as
//! the installed `postcat` reads them.

use std::io::{Read, Seek, SeekFrom};

use crate::error::{Error, ErrorKind, Result};

/// The most length bytes accepted. Postfix 3.7.22 and later reject a fifth
/// (lengths up to 2^28 - 1); so do we.
pub const MAX_LENGTH_BYTES: usize = 4;

/// Which reading of damaged records to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// posthold's own: a zero type byte is an error, and a fifth length byte
    /// is refused (as Postfix 3.7.22 and later refuse it).
    #[default]
    Strict,
    /// Postfix 3.7.11's `rec_get_raw()` (record.c), byte for byte: a zero type
    /// byte is an ordinary (unknown) type; up to five length bytes are read,
    /// each 7-bit group shifted as a C `int`, so the fifth byte keeps only its
    /// low four bits and a length with bit 31 set is negative, which is an
    /// error; a sixth length byte is an error before it is read.
    Postcat37,
}

/// Reads records in file order from any seekable byte source.
#[derive(Debug)]
pub struct RawReader<R> {
    inner: R,
    /// Current offset; kept here so that reading never asks the OS.
    pos: u64,
    /// Total length of the source, read once at construction.
    len: u64,
    dialect: Dialect,
    /// False for a pipe: every seek then fails, as `lseek()` does on a pipe.
    seekable: bool,
}

impl<R: Read + Seek> RawReader<R> {
    /// Wraps a source positioned anywhere; reading starts at offset 0.
    pub fn new(mut inner: R) -> Result<RawReader<R>> {
        let len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        Ok(RawReader {
            inner,
            pos: 0,
            len,
            dialect: Dialect::Strict,
            seekable: true,
        })
    }

    /// Wraps a source positioned at offset 0 whose length is already known
    /// (from `fstat`), saving two seeks per file.
    pub fn with_len(inner: R, len: u64) -> RawReader<R> {
        RawReader {
            inner,
            pos: 0,
            len,
            dialect: Dialect::Strict,
            seekable: true,
        }
    }

    /// Chooses how damaged records are read (default [`Dialect::Strict`]).
    pub fn set_dialect(&mut self, dialect: Dialect) {
        self.dialect = dialect;
    }

    /// Makes every later [`RawReader::seek`] fail, as it does when Postfix
    /// reads a pipe. The source itself (e.g. stdin read into memory) still
    /// moves forward with [`RawReader::skip`].
    pub fn forbid_seeks(&mut self) {
        self.seekable = false;
    }

    /// Whether [`RawReader::seek`] may succeed.
    pub fn is_seekable(&self) -> bool {
        self.seekable
    }

    /// Offset of the next byte to be read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Length of the whole source in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the source is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves to an absolute offset (may be at or past the end: the next read
    /// then reports EOF, as a seek past the end does in Postfix). The OS
    /// decides what is too far (`lseek` refuses offsets beyond the file
    /// system's limit, as it does for Postfix); on a source marked with
    /// [`RawReader::forbid_seeks`] every seek fails.
    pub fn seek(&mut self, pos: u64) -> Result<()> {
        if !self.seekable {
            return Err(Error::new(ErrorKind::Io, "read error: Illegal seek").at(self.pos));
        }
        self.move_to(pos)
    }

    /// Moves forward `n` bytes by reading, as Postfix skips input it cannot
    /// seek (`postcat -s` on stdin); fails at the end of input, which is
    /// then the position.
    pub fn skip(&mut self, n: u64) -> Result<()> {
        let target = self.pos.saturating_add(n);
        if target > self.len {
            self.move_to(self.len)?;
            return Err(Error::new(ErrorKind::Truncated, "unexpected end of file").at(self.len));
        }
        self.move_to(target)
    }

    fn move_to(&mut self, pos: u64) -> Result<()> {
        if pos != self.pos {
            // Relative, so that a buffered reader keeps its buffer when the
            // target is inside it (qmgr-style content skips often are).
            let delta = pos as i128 - self.pos as i128;
            match i64::try_from(delta) {
                Ok(d) => self.inner.seek_relative(d)?,
                Err(_) => {
                    self.inner.seek(SeekFrom::Start(pos))?;
                }
            }
            self.pos = pos;
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<Option<u8>> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.pos += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from(e).at(self.pos)),
            }
        }
    }

    /// Peeks at the byte at the current position without consuming it.
    pub fn peek(&mut self) -> Result<Option<u8>> {
        let here = self.pos;
        let b = self.byte()?;
        if b.is_some() {
            self.inner.seek_relative(-1)?;
            self.pos = here;
        }
        Ok(b)
    }

    /// Reads one record into `buf` (replacing its contents) and returns its
    /// type byte, or `None` at a clean end of input.
    pub fn read_record(&mut self, buf: &mut Vec<u8>) -> Result<Option<u8>> {
        let start = self.pos;
        let Some(rtype) = self.byte()? else {
            return Ok(None);
        };
        if rtype == 0 && self.dialect == Dialect::Strict {
            return Err(Error::new(ErrorKind::InvalidType, "invalid record type 0").at(start));
        }
        let len = match self.dialect {
            Dialect::Strict => self.length_strict(start, rtype)?,
            Dialect::Postcat37 => self.length_postcat37(start, rtype)?,
        };
        // The length can only be satisfied by bytes that exist: check before
        // reading so a hostile length costs nothing.
        if len > self.len.saturating_sub(self.pos) {
            return Err(Error::new(
                ErrorKind::Truncated,
                format!("unexpected end of file in data, length {len}"),
            )
            .at(start)
            .rec(rtype));
        }
        buf.clear();
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(buf)
            .map_err(|e| Error::from(e).at(start).rec(rtype))?;
        self.pos += got as u64;
        if (got as u64) != len {
            return Err(Error::new(
                ErrorKind::Truncated,
                format!("unexpected end of file in data, length {len}"),
            )
            .at(start)
            .rec(rtype));
        }
        Ok(Some(rtype))
    }

    fn eof_in_length(start: u64, rtype: u8) -> Error {
        Error::new(
            ErrorKind::Truncated,
            "unexpected end of file reading record length",
        )
        .at(start)
        .rec(rtype)
    }

    /// At most [`MAX_LENGTH_BYTES`] bytes.
    fn length_strict(&mut self, start: u64, rtype: u8) -> Result<u64> {
        let mut len: u64 = 0;
        let mut n = 0;
        loop {
            let Some(b) = self.byte()? else {
                return Err(Self::eof_in_length(start, rtype));
            };
            if n == MAX_LENGTH_BYTES {
                return Err(
                    Error::new(ErrorKind::LengthTooLong, "too many length bytes")
                        .at(start)
                        .rec(rtype),
                );
            }
            len |= u64::from(b & 0x7f) << (7 * n);
            n += 1;
            if b & 0x80 == 0 {
                return Ok(len);
            }
        }
    }

    /// Postfix 3.7.11's arithmetic (see [`Dialect::Postcat37`]): the shift
    /// limit is checked before each byte is read; each group is shifted in 32
    /// bits (bits pushed out are lost) and sign-extended into the length.
    fn length_postcat37(&mut self, start: u64, rtype: u8) -> Result<u64> {
        let mut len: i64 = 0;
        let mut shift: u32 = 0;
        loop {
            if shift >= 32 {
                return Err(Error::new(ErrorKind::LengthTooLong, "too many length bits")
                    .at(start)
                    .rec(rtype));
            }
            let Some(b) = self.byte()? else {
                return Err(Self::eof_in_length(start, rtype));
            };
            len |= i64::from((u32::from(b & 0x7f) << shift) as i32);
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        u64::try_from(len).map_err(|_| {
            Error::new(ErrorKind::LengthTooLong, format!("illegal length {len}"))
                .at(start)
                .rec(rtype)
        })
    }
}

/// Appends the length of a payload in Postfix's encoding.
pub fn put_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Appends one record: type byte, length, payload.
pub fn put_record(out: &mut Vec<u8>, rtype: u8, payload: &[u8]) {
    out.push(rtype);
    put_length(out, payload.len());
    out.extend_from_slice(payload);
}

/// Size in bytes of a record with a payload of `len` bytes.
pub fn record_size(len: usize) -> usize {
    let mut n = 2;
    let mut l = len >> 7;
    while l > 0 {
        n += 1;
        l >>= 7;
    }
    n + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn read_all(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
        read_all_as(bytes, None)
    }

    fn read_all_postcat(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
        read_all_as(bytes, Some(Dialect::Postcat37))
    }

    fn read_all_as(bytes: &[u8], dialect: Option<Dialect>) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut r = RawReader::new(Cursor::new(bytes))?;
        if let Some(d) = dialect {
            r.set_dialect(d);
        }
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = r.read_record(&mut buf)? {
            out.push((t, buf.clone()));
        }
        Ok(out)
    }

    #[test]
    fn lengths_are_low_group_first() {
        for (len, enc) in [
            (0usize, vec![0u8]),
            (95, vec![0x5f]),
            (424, vec![0xa8, 0x03]),
            (2048, vec![0x80, 0x10]),
        ] {
            let mut out = Vec::new();
            put_length(&mut out, len);
            assert_eq!(out, enc, "length {len}");
            assert_eq!(record_size(len), 1 + enc.len() + len);
        }
    }

    #[test]
    fn reads_records_and_clean_eof() {
        let mut f = Vec::new();
        put_record(&mut f, b'N', b"held body");
        put_record(&mut f, b'X', b"");
        put_record(&mut f, b'E', b"");
        let recs = read_all(&f).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], (b'N', b"held body".to_vec()));
        assert_eq!(recs[2], (b'E', vec![]));
    }

    #[test]
    fn truncated_and_overlong_are_errors_with_offsets() {
        let e = read_all(&[b'N', 0x05, b'a']).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Truncated);
        assert_eq!(e.offset(), Some(0));
        assert_eq!(e.rec_type(), Some(b'N'));
        let e = read_all(&[b'N', 0x80]).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Truncated);
        let e = read_all(&[b'N', 0x80, 0x80, 0x80, 0x80, 0x01]).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::LengthTooLong);
        let e = read_all(&[b'E', 0, 0, 0]).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidType);
        assert_eq!(e.offset(), Some(2));
        // A huge claimed length is refused before any allocation.
        let e = read_all(&[b'N', 0xff, 0xff, 0xff, 0x7f]).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Truncated);
    }

    /// Each case was checked against postcat 3.7.11.
    #[test]
    fn postcat_dialect_reads_as_postfix_3_7_11() {
        // Type 0 is a record like any other.
        assert_eq!(
            read_all_postcat(&[0, 1, b'x']).unwrap(),
            vec![(0, b"x".to_vec())]
        );
        // A fifth length byte: only its low four bits count, in 32 bits.
        let r = read_all_postcat(&[b'S', 0x81, 0x80, 0x80, 0x80, 0x00, b'a']).unwrap();
        assert_eq!(r, vec![(b'S', b"a".to_vec())]);
        let r = read_all_postcat(&[b'S', 0x81, 0x80, 0x80, 0x80, 0x10, b'a']).unwrap();
        assert_eq!(r, vec![(b'S', b"a".to_vec())]);
        // Bit 31 set: a negative length.
        let e = read_all_postcat(&[b'S', 0x81, 0x80, 0x80, 0x80, 0x08, b'a']).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::LengthTooLong);
        assert!(e.detail().contains("-2147483647"), "{e}");
        // A continuation bit on the fifth byte: refused before a sixth is read.
        let e = read_all_postcat(&[b'S', 0x81, 0x80, 0x80, 0x80, 0x80]).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::LengthTooLong);
        // 0x70000001 bytes claimed: end of file in data.
        let e = read_all_postcat(&[b'S', 0x81, 0x80, 0x80, 0x80, 0x07, b'a']).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Truncated);
    }

    #[test]
    fn forbidden_seeks_fail_but_skips_read_on() {
        let mut f = Vec::new();
        put_record(&mut f, b'N', b"ab");
        put_record(&mut f, b'E', b"");
        let mut r = RawReader::new(Cursor::new(&f)).unwrap();
        r.forbid_seeks();
        assert_eq!(r.seek(0).unwrap_err().kind(), &ErrorKind::Io);
        r.skip(4).unwrap();
        let mut buf = Vec::new();
        assert_eq!(r.read_record(&mut buf).unwrap(), Some(b'E'));
        assert_eq!(r.skip(1).unwrap_err().kind(), &ErrorKind::Truncated);
    }
}
