//! The Postfix queue file format, read as Postfix reads it.
//!
//! A queue file is a sequence of records (a type byte, a length, a payload).
//! This crate is pure: bytes in, typed values out, no file-system policy and
//! no logging. A tour, from the bottom up:
//!
//! * [`record`]: the physical stream ([`record::RawReader`], [`record::put_record`]);
//! * [`reader`]: the logical stream Postfix sees, following pointers and
//!   stopping at END ([`reader::Reader`]);
//! * [`queue_file`]: the typed view ([`queue_file::read_envelope`],
//!   [`queue_file::Lines`]);
//! * [`queue_id`] and [`hash_dir`]: queue IDs and where they live;
//! * [`writer`]: builds valid files for tests and benchmarks.
//!
//! ```
//! use std::io::Cursor;
//! use queue_format::{reader::Reader, queue_file::read_envelope, writer::Builder};
//! let bytes = Builder::new(1_795_424_399, "s@example.com").recipient("r@example.net").build();
//! let env = read_envelope(&mut Reader::new(Cursor::new(&bytes)).unwrap()).unwrap();
//! env.check_complete().unwrap();
//! assert_eq!(env.sender.as_deref(), Some(&b"s@example.com"[..]));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod hash_dir;
pub mod queue_file;
pub mod queue_id;
pub mod reader;
pub mod rec_type;
pub mod record;
pub mod writer;

pub use error::{Error, ErrorKind, Result};
