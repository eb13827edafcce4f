//! The one judge of due dates ([`ruling`]): a scheduled release at the
//! date in the rule's header, or a bad date (unreadable, empty or missing,
//! or beyond the horizon) with the rules' `on_bad_date` verdict. The
//! daemon, `posthold scan` and `list --extra` all come here through
//! [`super::Rules::judge`]. Reading the date itself is
//! [`crate::read::date`].
//!
//! When a message carries several due-time headers (several of the rule's,
//! or `X-Deliver-At` and `Deferred-Delivery` both), the **latest** date
//! wins: mail is never delivered early because a sender wrote two dates. A
//! header that does not parse, or names no zone when the rules name none
//! to assume, makes the message a bad date; it never falls back to another.

use super::reason::Reason;
use super::verdict::{Ruling, Verdict};
use chrono::{DateTime, FixedOffset};

use crate::read::date::read;
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
    /// The zone of due times that name none (`None`: they are bad dates).
    pub assume_zone: Option<FixedOffset>,
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
    let bad = |reason| Ruling {
        verdict: settings.on_bad_date.clone(),
        due: None,
        reason,
    };
    let bad_date = |h: &str, value: &str| {
        bad(Reason::BadDate {
            rule: rule.to_string(),
            header: h.to_string(),
            value: value.chars().take(80).collect(),
        })
    };
    // Every due header the message carries, the rule's own first: all
    // must be dates, and the latest wins (a sender who writes a past date
    // and a future one gets the future one, never early).
    let mut names: Vec<&str> = vec![header];
    names.extend(
        DUE_HEADERS
            .iter()
            .filter(|h| !h.eq_ignore_ascii_case(header)),
    );
    let mut latest: Option<(DateTime<FixedOffset>, &str)> = None;
    let mut seen = false;
    for h in names {
        for value in f.headers_named(h) {
            seen = true;
            let Some(due) = read(value) else {
                return bad_date(h, value);
            };
            // A time without a zone is a bad date unless the rules name
            // the zone to assume: taken as UTC it would be hours early
            // for senders west of UTC.
            let Some(t) = due.at(settings.assume_zone) else {
                return bad(Reason::NoZone {
                    rule: rule.to_string(),
                    header: h.to_string(),
                    value: value.chars().take(80).collect(),
                });
            };
            if latest.is_none_or(|(l, _)| t > l) {
                latest = Some((t, h));
            }
        }
    }
    let Some((t, h)) = latest else {
        debug_assert!(!seen);
        return bad_date(header, "");
    };
    if t.timestamp() > now.saturating_add(settings.horizon.min(i64::MAX as u64) as i64) {
        return bad(Reason::BeyondHorizon {
            rule: rule.to_string(),
            header: h.to_string(),
            at: t.to_rfc3339(),
            due: t.timestamp(),
        });
    }
    Ruling {
        verdict: release.clone(),
        due: Some(t.timestamp()),
        reason: Reason::Due {
            header: h.to_string(),
            rule: rule.to_string(),
        },
    }
}
