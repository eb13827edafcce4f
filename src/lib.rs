//! posthold: safe release, scheduling and inspection of Postfix's hold
//! queue. The binary is a thin shell over this library so that tests can
//! call every part directly.
//!
//! The modules are layers; each uses only the ones below it:
//!
//! * [`cmd`]: one function per subcommand (argument parsing with clap,
//!   exit statuses);
//! * [`daemon`]: `posthold watch` (watcher, parsers, scanners, scheduler,
//!   actor, metrics);
//! * [`rules`]: the rules file and the one decision ([`rules::Rules::judge`])
//!   that the daemon, `posthold scan` and `list --extra` share;
//! * [`scan`]: the content scanner clients (commands, spamd, clamd);
//! * [`read`]: reading queue files without changing them (a held message
//!   and its facts, postcat's and postqueue's views);
//! * [`queue`]: the only layer that changes queue files: the spool, the
//!   walker, the gate, the queue lock, the mover and the one path to it
//!   ([`queue::act`]); SAFETY.md's invariants live here;
//! * [`config`], [`util`], [`error`]: settings as `postconf` reports them,
//!   one clock and Postfix's quoting, the command-level error.
//!
//! The queue file format itself is the `queue-format` crate.

pub mod cmd;
pub mod config;
pub mod daemon;
pub mod error;
pub mod queue;
pub mod read;
pub mod rules;
pub mod scan;
pub mod util;
