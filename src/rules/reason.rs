//! Why a message is kept or acted on: a type, not a string. Its `Display`
//! is the `reason=` text of the log lines; [`Reason::label`] feeds the
//! metrics' `reason` label.

use std::borrow::Cow;
use std::fmt;

/// Why the rules (or the daemon) decided as they did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// No rule matched: kept.
    NoRule,
    /// This rule matched.
    Rule {
        /// The rule's name.
        rule: String,
    },
    /// A scheduled release at the date in this header.
    Due {
        /// The header.
        header: String,
        /// The rule's name.
        rule: String,
    },
    /// The due header does not hold a date posthold can read.
    BadDate {
        /// The rule's name.
        rule: String,
        /// The header.
        header: String,
        /// Its value (at most 80 characters).
        value: String,
    },
    /// The due time names no zone and the rules name none to assume.
    NoZone {
        /// The rule's name.
        rule: String,
        /// The header.
        header: String,
        /// Its value (at most 80 characters).
        value: String,
    },
    /// The queue file cannot be read: damaged, or a record type posthold
    /// does not know (a newer queue format). Kept.
    Damaged {
        /// What the reader said.
        error: String,
    },
    /// The due date is further ahead than the horizon.
    BeyondHorizon {
        /// The rule's name.
        rule: String,
        /// The header.
        header: String,
        /// The date, RFC 3339, in the header's own zone.
        at: String,
        /// The same date in seconds.
        due: i64,
    },
    /// Larger than the scanner's `max_size`: kept.
    ScanOversize {
        /// The scanner.
        scanner: String,
        /// The message's size.
        size: u64,
        /// The scanner's limit.
        max_size: u64,
    },
    /// The scanner exited with a code no rule that applies names: kept.
    ScanUnnamedExit {
        /// The scanner.
        scanner: String,
        /// The exit code.
        exit: i32,
    },
    /// A scan is due again later.
    ScanRetry {
        /// The scanner.
        scanner: String,
    },
    /// The scanner's queue is full: looked at again shortly.
    ScannerBusy {
        /// The scanner.
        scanner: String,
    },
    /// The scan failed: kept, retried.
    ScanFailed {
        /// The scanner.
        scanner: String,
    },
    /// The scanner answers nobody: kept, without strikes, until it does.
    ScannerDown {
        /// The scanner.
        scanner: String,
    },
    /// Scans kept failing softly for longer than `stuck_after`, and the
    /// rules quarantine such mail (`on_stuck = "quarantine"`).
    Stuck {
        /// The scanner.
        scanner: String,
        /// The last failure.
        error: String,
    },
    /// The scanner timed out or crashed on this message too often.
    Poison {
        /// The scanner.
        scanner: String,
        /// Strikes counted.
        strikes: u32,
        /// The last failure.
        error: String,
    },
}

impl Reason {
    /// The label for metrics: the `reason=` value alone.
    pub fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Reason::NoRule => "no-rule",
            Reason::Rule { .. } => "rule",
            Reason::Due { header, .. } => return Cow::Owned(header.to_ascii_lowercase()),
            Reason::BadDate { .. } => "bad-date",
            Reason::NoZone { .. } => "no-zone",
            Reason::Damaged { .. } => "damaged",
            Reason::BeyondHorizon { .. } => "beyond-horizon",
            Reason::ScanOversize { .. } => "scan-oversize",
            Reason::ScanUnnamedExit { .. } => "scan-unnamed-exit",
            Reason::ScanRetry { .. } => "scan-retry",
            Reason::ScannerBusy { .. } => "scanner-busy",
            Reason::ScanFailed { .. } => "scan-failed",
            Reason::ScannerDown { .. } => "scanner-down",
            Reason::Poison { .. } => "poison",
            Reason::Stuck { .. } => "scan-stuck",
        })
    }

    /// A due date that cannot be acted on (unreadable or too far ahead).
    pub fn is_bad_date(&self) -> bool {
        matches!(
            self,
            Reason::BadDate { .. } | Reason::NoZone { .. } | Reason::BeyondHorizon { .. }
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reason={}", self.label())?;
        match self {
            Reason::NoRule => Ok(()),
            Reason::Rule { rule } | Reason::Due { rule, .. } => write!(f, ", rule={rule}"),
            Reason::BadDate {
                rule,
                header,
                value,
            }
            | Reason::NoZone {
                rule,
                header,
                value,
            } => write!(f, ", rule={rule}, {header}={value:?}"),
            Reason::BeyondHorizon {
                rule, header, at, ..
            } => {
                write!(f, ", rule={rule}, {header}={at}")
            }
            Reason::ScanOversize {
                scanner,
                size,
                max_size,
            } => write!(f, ", scanner={scanner}, size={size}, max_size={max_size}"),
            Reason::Damaged { error } => write!(f, ", error={error}"),
            Reason::Stuck { scanner, error } => write!(f, ", scanner={scanner}, error={error}"),
            Reason::ScanUnnamedExit { scanner, exit } => {
                write!(f, ", scanner={scanner}, exit={exit}")
            }
            Reason::ScanRetry { scanner }
            | Reason::ScannerBusy { scanner }
            | Reason::ScanFailed { scanner }
            | Reason::ScannerDown { scanner } => write!(f, ", scanner={scanner}"),
            Reason::Poison {
                scanner,
                strikes,
                error,
            } => write!(f, ", scanner={scanner}, strikes={strikes}, error={error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_log_text_and_label_its_first_value() {
        let r = Reason::BadDate {
            rule: "sched".into(),
            header: "X-Deliver-At".into(),
            value: "soon".into(),
        };
        assert_eq!(
            r.to_string(),
            "reason=bad-date, rule=sched, X-Deliver-At=\"soon\""
        );
        assert_eq!(r.label(), "bad-date");
        assert!(r.is_bad_date());
        let d = Reason::Due {
            header: "X-Deliver-At".into(),
            rule: "s".into(),
        };
        assert_eq!(d.to_string(), "reason=x-deliver-at, rule=s");
        assert!(!d.is_bad_date());
        assert_eq!(Reason::NoRule.to_string(), "reason=no-rule");
    }
}
