//! The read layer: reading queue files without changing them.
//!
//! * [`message`]: a held message opened read-only, and its facts for the
//!   rules (the daemon's, `posthold scan`'s and the scanners' one read
//!   path);
//! * [`cat`]: `postcat`'s output, byte for byte;
//! * [`date`]: dates in due-time headers;
//! * [`list`]: `postqueue -j`'s listing, byte for byte.

pub mod cat;
pub mod date;
pub mod list;
pub mod message;
