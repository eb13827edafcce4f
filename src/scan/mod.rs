//! Content scanners: external commands, spamd and clamd.
//!
//! Every scanner gets the message as delivered, rebuilt from the queue
//! file and streamed (`postcat -hb`'s output, see
//! [`queue_format::queue_file::MessageContent`]), never the raw queue file.
//! The queue file is opened read-only; nothing here changes the spool.
//!
//! Scanners fail closed. A scan ends in an [`Answer`] only when the
//! scanner gave a complete answer that the rules can name: exit 0 or a code
//! a rule names, a well-formed spamd or clamd reply, or "too large to
//! scan". Anything else (a timeout, a crash, a signal, EX_TEMPFAIL, an
//! unnamed exit code, a refused connection, a truncated, garbled or extra
//! reply) is a [`Failure`]: the message stays held and is tried again.
//! Timeouts and crashes are *strikes*: enough of them on one message make
//! it a poison message, which the daemon quarantines.

pub mod clamd;
pub mod command;
pub mod launcher;
pub mod net;
pub mod rspamd;
pub mod spamd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use crate::read::message::{Message, Unreadable};

/// What a scanner said about a message, in terms the rules can name.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An external command's exit code (0, or one a rule names), and its
    /// output as kept for the log (sanitized, capped; may be empty).
    Exit(i32, String),
    /// spamd's answer.
    Spam {
        /// spamd's own verdict (score at or above its threshold).
        spam: bool,
        /// The score.
        score: f64,
        /// spamd's threshold (required_score).
        threshold: f64,
        /// Rule names that hit (SYMBOLS only).
        symbols: Vec<String>,
    },
    /// rspamd's answer.
    Rspamd {
        /// rspamd's action (`reject`, `add header`, `no action`, ...).
        action: String,
        /// The score.
        score: f64,
        /// The score of its reject action.
        required: f64,
        /// Symbols that hit.
        symbols: Vec<String>,
    },
    /// clamd's answer: the signature found, or `None` when clean.
    Virus(Option<String>),
    /// Larger than the scanner's `max_size`: not scanned (bytes).
    Oversize(u64),
}

impl Answer {
    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Answer::Exit(c, out) => format!("exit={c}{out}"),
            Answer::Spam {
                spam,
                score,
                threshold,
                ..
            } => format!(
                "{}, score={score}/{threshold}",
                if *spam { "spam" } else { "ham" }
            ),
            Answer::Rspamd {
                action,
                score,
                required,
                ..
            } => format!("action={action}, score={score}/{required}"),
            Answer::Virus(None) => "clean".into(),
            Answer::Virus(Some(v)) => format!("infected, virus={}", sanitize(v.as_bytes(), 120)),
            Answer::Oversize(n) => format!("oversize, size={n}"),
        }
    }
}

/// A scan that gave no usable answer. The message stays held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A timeout or crash that counts towards the poison limit (while the
    /// scanner answers others: see the daemon's scanner health).
    pub strike: bool,
    /// The scanner answered (it reported an error itself), or the failure
    /// was ours (reading the message): it says nothing about whether the
    /// scanner is up.
    pub answered: bool,
    /// The scan ran out of time (a strike, but a wedged or overloaded
    /// scanner looks the same: see the daemon's scanner health).
    pub timed_out: bool,
    /// What happened, for the log (already sanitized).
    pub what: String,
}

impl Failure {
    /// No usable answer, not the message's fault (scanner down or busy,
    /// temporary failure, garbled reply).
    pub fn soft(what: impl Into<String>) -> Failure {
        Failure {
            strike: false,
            answered: false,
            timed_out: false,
            what: what.into(),
        }
    }

    /// A crash while this message was being scanned (the scanner closed
    /// or reset the connection without a whole reply, a command died of a
    /// signal).
    pub fn strike(what: impl Into<String>) -> Failure {
        Failure {
            strike: true,
            answered: false,
            timed_out: false,
            what: what.into(),
        }
    }

    /// The scan ran out of time.
    pub fn timeout(what: impl Into<String>) -> Failure {
        Failure {
            strike: true,
            answered: false,
            timed_out: true,
            what: what.into(),
        }
    }

    /// A crash, not a timeout: the message's fault whatever the scanner
    /// does afterwards (it may be dead because of it).
    pub fn is_crash(&self) -> bool {
        self.strike && !self.timed_out
    }

    /// The scanner refused this message with an error of its own (spamd's
    /// status code, clamd's `ERROR`), or reading the message failed here:
    /// kept and retried, and the scanner is known to be up.
    pub fn answered(what: impl Into<String>) -> Failure {
        Failure {
            strike: false,
            answered: true,
            timed_out: false,
            what: what.into(),
        }
    }
}

/// Where a network scanner listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String),
    /// A unix socket's path.
    Unix(std::path::PathBuf),
}

impl Address {
    /// `/path` is a unix socket, anything else `host:port`.
    pub fn parse(s: &str) -> Result<Address, String> {
        if s.starts_with('/') {
            Ok(Address::Unix(s.into()))
        } else if s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            Ok(Address::Tcp(s.into()))
        } else {
            Err(format!("address {s:?}: host:port or /path/to/socket"))
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The kind of scanner and its own settings.
#[derive(Debug, Clone)]
pub enum ScannerKind {
    /// An external command: argv, never a shell.
    Command {
        /// Program and arguments; `{queue_id}` and `{sender}` are replaced
        /// inside arguments, an argument `{recipients}` becomes one
        /// argument per recipient.
        argv: Vec<String>,
        /// Run as this user (uid, gid) instead of the daemon's.
        user: Option<(String, u32, u32)>,
        /// Extra environment (the rest is cleared but for PATH).
        env: Vec<(String, String)>,
        /// Output kept (bytes); the rest is read and dropped.
        output_cap: usize,
        /// Exit codes that rules name (0 is always a result).
        named: Vec<i32>,
    },
    /// spamd, the SPAMC protocol.
    Spamd {
        /// Where spamd listens.
        address: Address,
        /// SYMBOLS (true) or CHECK.
        symbols: bool,
        /// The `User:` header (spamd's per-user settings).
        user: Option<String>,
    },
    /// rspamd, its HTTP protocol (`/checkv2`).
    Rspamd {
        /// Where rspamd's normal worker listens.
        address: Address,
    },
    /// clamd, INSTREAM.
    Clamd {
        /// Where clamd listens.
        address: Address,
        /// Bytes per INSTREAM chunk.
        chunk: usize,
    },
}

/// A scanner as configured in the rules file (`[scanner.NAME]`).
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Its name in the rules file.
    pub name: String,
    /// What it is.
    pub kind: ScannerKind,
    /// Wall-clock limit for one scan (after connecting).
    pub timeout: Duration,
    /// Limit for connecting (network scanners).
    pub connect_timeout: Duration,
    /// Scans at once.
    pub concurrency: usize,
    /// Messages waiting in front of it; beyond that, a message is tried
    /// again later.
    pub queue: usize,
    /// Messages larger than this (bytes, as rebuilt) are not scanned.
    pub max_size: Option<u64>,
    /// Oversize messages: kept on hold (false) or passed by this scanner.
    pub oversize_passes: bool,
    /// Timeouts and crashes on one message before it is quarantined.
    pub poison_after: u32,
    /// First retry delay after a failure; doubled each time.
    pub retry: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Scanner {
    /// The delay before try number `failures + 1`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.retry.saturating_mul(1u32 << shift).min(self.retry_max)
    }

    /// Scans one message: an outcome, or a failure (fail closed).
    pub fn scan(&self, msg: &Message, stop: &AtomicBool) -> Result<Answer, Failure> {
        let budget = Budget {
            deadline: Instant::now() + self.timeout,
            stop,
        };
        // One read of the content for its length, when a limit or the
        // protocol (spamd's Content-length) needs it.
        let len = match (&self.kind, self.max_size) {
            (ScannerKind::Spamd { .. } | ScannerKind::Rspamd { .. }, _) | (_, Some(_)) => {
                Some(msg.content_len()?)
            }
            _ => None,
        };
        if let (Some(n), Some(max)) = (len, self.max_size)
            && n > max
        {
            return Ok(Answer::Oversize(n));
        }
        match &self.kind {
            ScannerKind::Command { .. } => command::run(self, msg, &budget),
            ScannerKind::Spamd {
                address,
                symbols,
                user,
            } => spamd::check(
                self,
                address,
                *symbols,
                user.as_deref(),
                msg,
                len.unwrap_or_default(),
                &budget,
            ),
            ScannerKind::Rspamd { address } => {
                rspamd::check(self, address, msg, len.unwrap_or_default(), &budget)
            }
            ScannerKind::Clamd { address, chunk } => {
                clamd::instream(self, address, *chunk, msg, &budget)
            }
        }
    }
}

/// The longest a health probe may take (after connecting).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

impl Scanner {
    /// Asks a network scanner whether it answers at all (spamd and clamd
    /// `PING`, rspamd `/ping`); `None` for a command, which has no such question.
    pub fn probe(&self, stop: &AtomicBool) -> Option<Result<(), Failure>> {
        let budget = Budget {
            deadline: Instant::now() + self.timeout.min(PROBE_TIMEOUT),
            stop,
        };
        match &self.kind {
            ScannerKind::Command { .. } => None,
            ScannerKind::Spamd { address, .. } => Some(spamd::ping(self, address, &budget)),
            ScannerKind::Clamd { address, .. } => Some(clamd::ping(self, address, &budget)),
            ScannerKind::Rspamd { address } => Some(rspamd::ping(self, address, &budget)),
        }
    }
}

/// The time a scan may still take, and the daemon's stop flag.
pub struct Budget<'a> {
    /// When the scan has timed out.
    pub deadline: Instant,
    /// Set on SIGTERM: the scan is abandoned (not a strike).
    pub stop: &'a AtomicBool,
}

impl Budget<'_> {
    /// Time left, at most `step` (so that waits notice a stop request).
    /// `Err` when the time is up or the daemon stops.
    pub fn slice(&self, step: Duration, what: &str) -> Result<Duration, Failure> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Failure::soft("daemon stopping"));
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::timeout(format!("timed out {what}")));
        }
        Ok(left.min(step))
    }
}

impl From<Unreadable> for Failure {
    fn from(u: Unreadable) -> Failure {
        Failure::answered(u.to_string())
    }
}

/// Bytes for a log line: printable ASCII as is, anything else as `\xNN`,
/// at most `cap` characters (then `...`).
pub fn sanitize(bytes: &[u8], cap: usize) -> String {
    let mut s = String::new();
    for &b in bytes {
        if s.len() >= cap {
            s.push_str("...");
            break;
        }
        if (0x20..0x7f).contains(&b) && b != b'\\' && b != b'"' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Parses a size: digits with an optional k, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        b'g' | b'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_and_caps() {
        assert_eq!(sanitize(b"ok \x1b[31m\n\"", 100), "ok \\x1b[31m\\x0a\\x22");
        assert_eq!(sanitize(&[b'a'; 10], 4), "aaaa...");
    }

    #[test]
    fn sizes_and_addresses() {
        assert_eq!(parse_size("25M"), Some(25 << 20));
        assert_eq!(parse_size("500k"), Some(500 << 10));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
        assert!(Address::parse("127.0.0.1:783").is_ok());
        assert!(Address::parse("/run/clamd.ctl").is_ok());
        assert!(Address::parse("localhost").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Scanner {
            name: "x".into(),
            kind: ScannerKind::Clamd {
                address: Address::Unix("/x".into()),
                chunk: 1,
            },
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            concurrency: 1,
            queue: 1,
            max_size: None,
            oversize_passes: false,
            poison_after: 3,
            retry: Duration::from_secs(10),
            retry_max: Duration::from_secs(60),
        };
        let b: Vec<u64> = (1..6).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(b, [10, 20, 40, 60, 60]);
        assert_eq!(s.backoff(u32::MAX).as_secs(), 60);
    }
}
