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

use std::io::{Read, Seek, SeekFrom};

use crate::error::{Error, ErrorKind, Result};

/// The most length bytes accepted. Postfix 3.7.22 and later reject a fifth
/// (lengths up to 2^28 - 1); so do we.
pub const MAX_LENGTH_BYTES: usize = 4;

/// Reads records in file order from any seekable byte source.
#[derive(Debug)]
pub struct RawReader<R> {
    inner: R,
    /// Current offset; kept here so that reading never asks the OS.
    pos: u64,
    /// Total length of the source, read once at construction.
    len: u64,
}

impl<R: Read + Seek> RawReader<R> {
    /// Wraps a source positioned anywhere; reading starts at offset 0.
    pub fn new(mut inner: R) -> Result<RawReader<R>> {
        let len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        Ok(RawReader { inner, pos: 0, len })
    }

    /// Wraps a source positioned at offset 0 whose length is already known
    /// (from `fstat`), saving two seeks per file.
    pub fn with_len(inner: R, len: u64) -> RawReader<R> {
        RawReader { inner, pos: 0, len }
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
    /// then reports EOF, as a seek past the end does in Postfix).
    pub fn seek(&mut self, pos: u64) -> Result<()> {
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
        if rtype == 0 {
            return Err(Error::new(ErrorKind::InvalidType, "invalid record type 0").at(start));
        }
        let mut len: u64 = 0;
        let mut n = 0;
        loop {
            let Some(b) = self.byte()? else {
                return Err(Error::new(
                    ErrorKind::Truncated,
                    "unexpected end of file reading record length",
                )
                .at(start)
                .rec(rtype));
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
                break;
            }
        }
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
        let mut r = RawReader::new(Cursor::new(bytes))?;
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
}
