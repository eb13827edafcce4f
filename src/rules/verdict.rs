//! What to do with a message ([`Verdict`]) and a whole ruling: what, when
//! and why ([`Ruling`]).

use super::reason::Reason;

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Release now.
    Release,
    /// Requeue through maildrop now.
    Requeue,
    /// Return to sender (force-expire and release).
    Expire,
    /// Move to quarantine.
    Quarantine,
    /// Leave on hold.
    Keep,
    /// Release when the date in this header is reached.
    ReleaseAt(String),
}

impl Verdict {
    /// The action's name in the rules file.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Release => "release",
            Verdict::Requeue => "requeue",
            Verdict::Expire => "expire",
            Verdict::Quarantine => "quarantine",
            Verdict::Keep => "keep",
            Verdict::ReleaseAt(_) => "release-at",
        }
    }
}

/// What to do with a message, when, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    /// What to do.
    pub verdict: Verdict,
    /// When (seconds since the epoch), for a scheduled release.
    pub due: Option<i64>,
    /// Why.
    pub reason: Reason,
}
