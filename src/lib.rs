//! posthold: safe release, scheduling and inspection of Postfix's hold
//! queue. The binary is a thin shell over this library so that tests can
//! call every part directly.
//!
//! The queue file format itself lives in the `queue-format` crate.

pub mod cmd;
pub mod config;
pub mod daemon;
pub mod error;
pub mod queue;
pub mod read;
pub mod rules;
pub mod scan;
pub mod util;
