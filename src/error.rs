//! posthold's command-level error: a message and the exit status it maps
//! to. Exit statuses follow the CLI contract: 0 all done, 1 some messages
//! skipped or a file could not be read, 2 usage or configuration errors.

use std::fmt;

/// Exit status for usage and configuration errors.
pub const EXIT_CONFIG: i32 = 2;
/// Exit status when some work could not be done.
pub const EXIT_PARTIAL: i32 = 1;

/// An error that ends a command.
#[derive(Debug)]
pub struct Fatal {
    /// What went wrong, where first.
    pub message: String,
    /// The process exit status.
    pub status: i32,
}

impl Fatal {
    /// A configuration or usage error (exit 2).
    pub fn config(message: impl Into<String>) -> Fatal {
        Fatal {
            message: message.into(),
            status: EXIT_CONFIG,
        }
    }

    /// A runtime error about a file or message (exit 1).
    pub fn runtime(message: impl Into<String>) -> Fatal {
        Fatal {
            message: message.into(),
            status: EXIT_PARTIAL,
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fatal {}
