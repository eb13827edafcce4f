//! The queue layer: the only code that changes queue files.
//!
//! * [`spool`]: the queue directory opened once, directory handles, where
//!   a queue ID lives;
//! * [`walk`]: the one walker over queue directories;
//! * [`gate`]: admission, every check before a change (S3, S5, S6, S9);
//! * [`lock`]: the queue lock that serializes posthold processes (S6);
//! * `relocate` (private): the mover, the one place that renames, sets
//!   times and modes, creates directories and unlinks (S1 to S4, S10);
//! * [`act`]: the one path to the mover, used by the commands and the
//!   daemon alike (S7, S8, S11);
//! * [`trigger`]: wake-ups for qmgr and pickup.
//!
//! Nothing outside this folder can reach the mover.

pub mod act;
pub mod gate;
pub mod lock;
mod relocate;
pub mod spool;
pub mod trigger;
pub mod walk;

pub use relocate::{FileState, MoveError, MoveErrorKind, NOTE_NAMES, NOTE_PREFIX};
