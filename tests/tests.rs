//! posthold's integration tests: one binary, a table of contents.
//!
//! * `audit`: one regression test per defect the safety audit of the mover
//!   and the daemon found (each failed on the code that had it);
//! * `cat_differential`: `posthold cat` against live `postcat` on
//!   deterministic mutations of every fixture, every option set: same bytes,
//!   same success or failure, never a hang or a panic;
//! * `decisions`: decisions that hold up in production: due dates never
//!   early, unreadable queue files told, counted and checked;
//! * `fixtures`: posthold against the reference outputs captured from a real
//!   Postfix 3.7 (`fixtures/`), and against live `postcat` on the same files
//!   with many option combinations;
//! * `metrics`: the daemon's metrics against `promtool check metrics` and a
//!   real Prometheus scraping it (a `histogram_quantile` query answers);
//! * `package`: the Debian package built, installed, checked and removed;
//! * `postfix`: a private Postfix instance started by the harness
//!   (`common::Instance`); held mail listed and shown by posthold and by
//!   Postfix's own tools in the same run; released mail delivered unchanged;
//!   old mail requeued instead of bouncing; `postsuper -s` finds nothing;
//! * `bad_input`: corrupt and hostile input: clear errors, no panic;
//! * `mover`: the gate, the mover and the commands on temporary spools
//!   (real files, inodes, renames, flock and fcntl locks, a tmpfs mount);
//! * `crash`: posthold processes SIGKILLed during bulk moves of 10,000 files;
//! * `model`: a proptest state machine of Postfix actors, posthold and
//!   crashes, with the spool invariants checked after every step;
//! * `watch`: the daemon end to end on a real Postfix: on-time delivery,
//!   the maildrop loop, SIGKILL during a 1,000-message burst, SIGHUP,
//!   metrics and status, the README's rules example;
//! * `safety_doc`: every function and test SAFETY.md names exists;
//! * `scan`: content scanners: real spamd and clamd, external commands and
//!   fake servers that misbehave; the message stream equals `postcat -hb`.

// Tests play Postfix (creating, committing, renaming queue files) and the
// administrator; only posthold itself is bound to relocate (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

mod audit;
mod bad_input;
mod cat_differential;
mod crash;
mod decisions;
mod fixtures;
mod metrics;
mod model;
mod mover;
mod package;
mod postfix;
mod safety_doc;
mod scan;
mod watch;
