//! The one judge of due dates ([`ruling`]): a scheduled release at the
//! date in the rule's header, or a bad date (unreadable, empty or missing,
//! or beyond the horizon) with the rules' `on_bad_date` verdict. The
//! daemon, `posthold scan` and `list --extra` all come here through
//! [`super::Rules::judge`]. Reading the date itself is
//! [`crate::read::date`].
//!
//! When a message has several due-time headers, the **first** one in the
//! header wins (the one nearest the top, which the last relay or the client
//! wrote; later ones are older or duplicated). A header that does not parse
//! does not fall back to another: the message is reported as malformed.

use super::reason::Reason;
use super::verdict::{Ruling, Verdict};
use crate::read::date::parse;
use crate::read::message::Facts;

/// Headers that carry a due time, in order of preference when the rules do
/// not name one.
pub const DUE_HEADERS: &[&str] = &["X-Deliver-At", "Deferred-Delivery"];

/// The rules' settings for due dates.
#[derive(Debug, Clone, Copy)]
pub struct DueSettings<'a> {
    /// Due times further ahead than this (seconds) are bad dates.
    pub horizon: u64,
    /// What to do with bad dates.
    pub on_bad_date: &'a Verdict,
}

/// The one judge of a due date, for the rule named `rule` whose verdict
/// `release` releases at the date in `header`: a scheduled release at that time; or, for a value that
/// does not parse (empty or missing included) or a date beyond the rules'
/// horizon, the rules' `on_bad_date` verdict with the reason why.
pub fn ruling(
    rule: &str,
    release: &Verdict,
    header: &str,
    f: &Facts,
    settings: DueSettings<'_>,
    now: i64,
) -> Ruling {
    let value = f.header(header).unwrap_or("");
    let bad = |reason| Ruling {
        verdict: settings.on_bad_date.clone(),
        due: None,
        reason,
    };
    match parse(value) {
        None => bad(Reason::BadDate {
            rule: rule.to_string(),
            header: header.to_string(),
            value: value.chars().take(80).collect(),
        }),
        Some(t)
            if t.timestamp() > now.saturating_add(settings.horizon.min(i64::MAX as u64) as i64) =>
        {
            bad(Reason::BeyondHorizon {
                rule: rule.to_string(),
                header: header.to_string(),
                at: t.to_rfc3339(),
                due: t.timestamp(),
            })
        }
        Some(t) => Ruling {
            verdict: release.clone(),
            due: Some(t.timestamp()),
            reason: Reason::Due {
                header: header.to_string(),
                rule: rule.to_string(),
            },
        },
    }
}
