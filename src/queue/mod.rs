//! The queue: the only layer that changes queue files.

pub mod act;
pub mod relocate;
pub mod spool;
pub mod trigger;
