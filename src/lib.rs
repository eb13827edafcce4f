//! posthold: safe release, scheduling and inspection of Postfix's hold
//! queue. The binary is a thin shell over this library so that tests can
//! call every part directly.
//!
//! Modules: [`config`] (settings as `postconf` reports them), [`cat`]
//! (`postcat`-identical output), [`list`] (`postqueue -j`-identical
//! listing), [`cli`] (argument parsing and dispatch), [`error`], [`watch`]
//! (the daemon), [`rules`], [`scan`] (content scanners).
//! The queue file format itself lives in the `queue-format` crate.

pub mod cat;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod deliver_at;
pub mod error;
pub mod list;
pub mod metrics;
pub mod relocate;
pub mod rules;
pub mod scan;
pub mod spool;
pub mod trigger;
pub mod watch;
