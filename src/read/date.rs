//! Dates in due-time headers (`X-Deliver-At:`, Outlook's
//! `Deferred-Delivery:`), read as a header value says them. Judging them
//! (horizon, bad dates, which header wins) is the rules' job
//! (`rules::due`).
//!
//! Accepted forms, after unfolding and trimming the value and removing RFC
//! 5322 comments (`(UTC)`):
//!
//! * RFC 5322 dates, with or without the day of the week, with or without
//!   seconds, with numeric zones or the obsolete names (`UT`, `GMT`, `EST`,
//!   `PDT`, ...; military letters other than `Z` are taken as `-0000`, as
//!   RFC 5322 advises);
//! * ISO 8601 / RFC 3339: `2026-11-23T12:00:00Z`, `2026-11-23T12:00+01:00`,
//!   `2026-11-23 12:00:00 +0100`.
//!
//! A date and time without a zone is returned as such ([`Due::NoZone`]):
//! taking it as UTC would deliver mail hours early for senders west of
//! UTC, so the rules decide (a bad date unless they name a zone to
//! assume). Obsolete years follow RFC 5322 4.3: two digits 00-49 are 20xx,
//! 50-99 are 19xx, three digits are 1900 + year.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

/// Removes RFC 5322 comments (nesting and quoted pairs respected).
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if depth > 0 => {
                chars.next();
            }
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Unfolds a header value (folding white space becomes one space) and trims.
pub fn unfold(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn obsolete_zone(z: &str) -> Option<&'static str> {
    Some(match z.to_ascii_uppercase().as_str() {
        "UT" | "UTC" | "GMT" | "Z" => "+0000",
        "EST" => "-0500",
        "EDT" => "-0400",
        "CST" => "-0600",
        "CDT" => "-0500",
        "MST" => "-0700",
        "MDT" => "-0600",
        "PST" => "-0800",
        "PDT" => "-0700",
        z if z.len() == 1 && z.as_bytes()[0].is_ascii_alphabetic() => "-0000",
        _ => return None,
    })
}

fn rfc5322(s: &str) -> Option<Due> {
    // Drop the day of the week, normalise the zone, add missing seconds.
    let s = match s.split_once(',') {
        Some((dow, rest))
            if dow.trim().len() <= 9 && dow.trim().chars().all(|c| c.is_ascii_alphabetic()) =>
        {
            rest.trim()
        }
        _ => s,
    };
    let mut parts: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    let zoned = parts.len() == 5;
    if parts.len() == 4 {
        parts.push("+0000".into()); // no zone: read as UTC, then marked
    }
    if parts.len() != 5 {
        return None;
    }
    if let Some(z) = obsolete_zone(&parts[4]) {
        parts[4] = z.to_string();
    }
    if parts[3].matches(':').count() == 1 {
        parts[3].push_str(":00");
    }
    // Obsolete years (RFC 5322 4.3): 00-49 -> 20xx, 50-99 -> 19xx, and
    // three digits -> 1900 + year.
    if (2..=3).contains(&parts[2].len())
        && let Ok(y) = parts[2].parse::<u32>()
    {
        parts[2] = (if parts[2].len() == 2 && y < 50 {
            2000 + y
        } else {
            1900 + y
        })
        .to_string();
    }
    let norm = parts.join(" ");
    let t = DateTime::parse_from_str(&norm, "%d %b %Y %H:%M:%S %z").ok()?;
    // RFC 5322 3.3: -0000 (and the military letters, read as -0000) says
    // the local zone is unknown: no zone.
    let zoned = zoned && parts[4] != "-0000";
    Some(if zoned {
        Due::At(t)
    } else {
        Due::NoZone(t.naive_utc())
    })
}

fn iso8601(s: &str) -> Option<Due> {
    // RFC 3339 4.3: -00:00 says the local offset is unknown: no zone.
    if let Some(rest) = s.strip_suffix("-00:00").or_else(|| s.strip_suffix("-0000")) {
        return iso8601(rest.trim_end()).map(|d| match d {
            Due::At(t) => Due::NoZone(t.naive_utc()),
            other => other,
        });
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(Due::At(t));
    }
    let s = s.replacen(' ', "T", 1);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%dT%H:%M%z",
        "%Y-%m-%dT%H:%M:%S %z",
        "%Y-%m-%dT%H:%M %z",
        "%Y-%m-%dT%H:%M:%S%:z",
        "%Y-%m-%dT%H:%M%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(&s, fmt) {
            return Some(Due::At(t));
        }
    }
    // A trailing Z is UTC; without it there is no zone.
    let (s, utc) = match s.strip_suffix('Z') {
        Some(rest) => (rest, true),
        None => (s.as_str(), false),
    };
    for fmt in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(if utc {
                Due::At(Utc.from_utc_datetime(&t).fixed_offset())
            } else {
                Due::NoZone(t)
            });
        }
    }
    None
}

/// A due-time header's date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A date and time with its zone.
    At(DateTime<FixedOffset>),
    /// A date and time with no zone: whose local time it is, the header
    /// does not say.
    NoZone(NaiveDateTime),
}

impl Due {
    /// The instant, taking a zone-less time in `zone` (`None`: no
    /// instant).
    pub fn at(self, zone: Option<FixedOffset>) -> Option<DateTime<FixedOffset>> {
        match self {
            Due::At(t) => Some(t),
            Due::NoZone(t) => zone?.from_local_datetime(&t).single(),
        }
    }
}

/// Parses a due-time header value; `None` when it is empty or not a date.
pub fn read(value: &str) -> Option<Due> {
    let v = unfold(&strip_comments(&unfold(value)));
    if v.is_empty() {
        return None;
    }
    rfc5322(&v).or_else(|| iso8601(&v))
}

/// Parses a due-time header value as an instant, taking a zone-less one
/// as UTC (the tests' view; the rules never do this).
#[cfg(test)]
fn parse(value: &str) -> Option<DateTime<FixedOffset>> {
    read(value)?.at(Some(FixedOffset::east_opt(0).expect("BUG: UTC offset")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(v: &str) -> Option<i64> {
        parse(v).map(|t| t.timestamp())
    }

    #[test]
    fn rfc5322_and_what_clients_send() {
        let t = 1_795_425_600; // 2026-11-23 09:20:00 UTC
        assert_eq!(ts("Mon, 23 Nov 2026 09:20:00 +0000"), Some(t));
        assert_eq!(ts("23 Nov 2026 09:20:00 +0000"), Some(t));
        assert_eq!(
            ts("Mon, 23 Nov 2026 09:20 +0000"),
            Some(t),
            "missing seconds"
        );
        assert_eq!(
            ts("Mon, 23 Nov 2026 04:20:00 EST"),
            Some(t),
            "obsolete zone"
        );
        assert_eq!(ts("Mon, 23 Nov 2026 09:20:00 GMT"), Some(t));
        assert_eq!(ts("Mon, 23 Nov 2026 09:20:00 UT"), Some(t));
        assert_eq!(
            ts("  Mon, 23 Nov 2026\r\n\t09:20:00 +0000 (UTC)  "),
            Some(t),
            "folded, comment"
        );
        assert_eq!(ts("Mon, 23 Nov 2026 10:20:00 +0100"), Some(t));
        assert_eq!(
            ts("Mon, 23 Nov 26 09:20:00 +0000"),
            Some(t),
            "two-digit year"
        );
        assert_eq!(
            read("23 Nov 126 09:20:00 +0000")
                .and_then(|d| d.at(None))
                .map(|t| t.timestamp()),
            Some(t),
            "three-digit year (RFC 5322 4.3): 1900 + 126"
        );
        assert_eq!(ts("2026-11-23T09:20:00Z"), Some(t), "RFC 3339");
        assert_eq!(ts("2026-11-23T10:20:00+01:00"), Some(t));
        assert_eq!(
            ts("2026-11-23 09:20:00"),
            Some(t),
            "parse() takes no zone as UTC"
        );
        // read() says when there is no zone; only a zone given makes it an instant.
        for v in [
            "2026-11-23 09:20:00",
            "2026-11-23T09:20",
            "23 Nov 2026 09:20:00",
            "Mon, 23 Nov 2026 09:20",
        ] {
            let d = read(v).unwrap_or_else(|| panic!("{v}"));
            assert!(matches!(d, Due::NoZone(_)), "{v}: {d:?}");
            assert_eq!(d.at(None), None, "{v}");
            let west = FixedOffset::west_opt(5 * 3600).unwrap();
            assert_eq!(
                d.at(Some(west)).map(|x| x.timestamp()),
                Some(t + 5 * 3600),
                "{v}"
            );
        }
        assert!(matches!(read("2026-11-23T09:20:00Z"), Some(Due::At(_))));
        // -0000, the military letters and -00:00: the local zone is unknown.
        for v in [
            "Mon, 23 Nov 2026 09:20:00 -0000",
            "Mon, 23 Nov 2026 09:20:00 A",
            "2026-11-23T09:20:00-00:00",
        ] {
            assert!(matches!(read(v), Some(Due::NoZone(_))), "{v}");
        }
        assert!(matches!(
            read("Mon, 23 Nov 2026 09:20:00 +0000"),
            Some(Due::At(_))
        ));
        assert_eq!(ts("2026-11-23T09:20"), Some(t));
        assert_eq!(ts("2026-11-23 10:20:00 +0100"), Some(t));
    }

    #[test]
    fn garbage_is_none() {
        for v in [
            "",
            "   ",
            "tomorrow",
            "32 Nov 2026 09:20:00 +0000",
            "Mon, 23 Nov 2026 25:20:00 +0000",
            "2026-13-01T00:00:00Z",
            "Mon, 23 Foo 2026 09:20:00 +0000",
        ] {
            assert_eq!(parse(v), None, "{v:?}");
        }
    }
}
