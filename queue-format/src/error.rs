//! Errors of the queue-format crate.
//!
//! An [`Error`] is an opaque value with accessors: the byte offset where the
//! problem was found, the record type involved (when one was read), and the
//! [`ErrorKind`]. Messages follow Postfix's style: where, then what, in lower
//! case (`offset 612: illegal length 300000000 for record type N`). Callers
//! that know the file name prefix it (`hold/4jY0VZ2WJ8z1SRyD: offset 612: ...`).

use std::fmt;

/// What went wrong, as far as callers need to branch on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// End of input inside a record length or payload.
    Truncated,
    /// More than four length bytes (Postfix 3.7.22+ rejects a fifth).
    LengthTooLong,
    /// A record type byte that may not appear where it was found.
    UnexpectedRecord,
    /// A record type byte of zero, or one Postfix does not know.
    InvalidType,
    /// A pointer record whose value is not a decimal offset inside the file.
    BadPointer,
    /// Too many backward pointer jumps: a pointer loop.
    PointerLoop,
    /// A required record (SIZE, TIME, SENDER, END) is missing.
    MissingRecord,
    /// A record whose payload does not have the required form.
    Malformed,
    /// The SIZE record is still all zero: cleanup has not finished the file.
    Unfinished,
    /// An I/O error from the underlying reader (message kept as text).
    Io,
    /// A string that is not a legal queue ID.
    BadQueueId,
}

/// An error with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    offset: Option<u64>,
    rec_type: Option<u8>,
    detail: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error {
            kind,
            offset: None,
            rec_type: None,
            detail: detail.into(),
        }
    }

    pub(crate) fn at(mut self, offset: u64) -> Error {
        self.offset = Some(offset);
        self
    }

    pub(crate) fn rec(mut self, rec_type: u8) -> Error {
        self.rec_type = Some(rec_type);
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Byte offset of the record (or field) where the error was found.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The record type byte involved, if a record header was read.
    pub fn rec_type(&self) -> Option<u8> {
        self.rec_type
    }

    /// The human-readable detail, without offset and record type.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(off) = self.offset {
            write!(f, "offset {off}: ")?;
        }
        f.write_str(&self.detail)?;
        if let Some(t) = self.rec_type {
            if t.is_ascii_graphic() {
                write!(f, " (record type {})", t as char)?;
            } else {
                write!(f, " (record type {t})")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::new(ErrorKind::Truncated, "unexpected end of file")
        } else {
            Error::new(ErrorKind::Io, format!("read error: {e}"))
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
