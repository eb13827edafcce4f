//! Rules for held mail, in a TOML file: ordered, first match wins, as
//! header_checks does. Checked by `posthold check-config`.
//!
//! ```toml
//! [settings]
//! horizon = "365d"        # due times further ahead count as bad dates
//! on_bad_date = "keep"    # keep | release | quarantine (unparsable, empty, too far)
//! requeue_after = "2d"    # held longer: release through maildrop (default: half the lifetime)
//!
//! [[rule]]
//! name = "scheduled"
//! header = "X-Deliver-At" # condition: the header is present (name, case-insensitive)
//! action = "release-at"   # release when the date in `due_header` (default: `header`) is reached
//!
//! [[rule]]
//! name = "spam-test"
//! header = "Subject"
//! header_value = "(?i)^\\[test\\]"   # regex on the (unfolded) value
//! sender = "@example\\.com$"         # regex on the envelope sender
//! recipient = "^abuse@"              # regex, any recipient
//! min_size = 0                       # bytes (SIZE record's message size)
//! max_size = 10000000
//! min_age = "1h"                     # since create_time
//! min_held = "10m"                   # since it was put on hold
//! action = "quarantine"              # release | requeue | expire | quarantine | keep | release-at
//! ```
//!
//! All conditions of a rule must hold. With no rules file, the default is:
//! `X-Deliver-At`, then `Deferred-Delivery`, release at the header's time;
//! everything else stays on hold.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use crate::config::parse_time;
use crate::error::Fatal;

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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    horizon: Option<String>,
    on_bad_date: Option<String>,
    requeue_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: Option<String>,
    header: Option<String>,
    header_value: Option<String>,
    sender: Option<String>,
    recipient: Option<String>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    min_age: Option<String>,
    max_age: Option<String>,
    min_held: Option<String>,
    max_held: Option<String>,
    action: String,
    due_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    settings: FileSettings,
    #[serde(default)]
    rule: Vec<FileRule>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name for logs (`rule 3` when unnamed).
    pub name: String,
    header: Option<String>,
    header_value: Option<Regex>,
    sender: Option<Regex>,
    recipient: Option<Regex>,
    size: (Option<u64>, Option<u64>),
    age: (Option<u64>, Option<u64>),
    held: (Option<u64>, Option<u64>),
    /// The action.
    pub verdict: Verdict,
}

/// What a rule sees of a message.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Headers, unfolded, in order: (name, value).
    pub headers: Vec<(String, String)>,
    /// Envelope sender (empty for the null sender).
    pub sender: String,
    /// Envelope recipients still to deliver.
    pub recipients: Vec<String>,
    /// Message size in bytes (SIZE record).
    pub size: u64,
    /// Seconds since create_time.
    pub age: u64,
    /// Seconds since the message was put on hold.
    pub held: u64,
}

impl Facts {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The rule set and its settings.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Ordered rules.
    pub rules: Vec<Rule>,
    /// Due times further ahead than this are bad dates.
    pub horizon: u64,
    /// What to do with bad dates.
    pub on_bad_date: Verdict,
    /// Held longer than this: release through maildrop (`None`: half the lifetime).
    pub requeue_after: Option<u64>,
}

fn within(v: u64, (lo, hi): (Option<u64>, Option<u64>)) -> bool {
    lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h)
}

impl Rule {
    /// Whether every condition holds.
    pub fn matches(&self, f: &Facts) -> bool {
        if let Some(h) = &self.header {
            match f.header(h) {
                None => return false,
                Some(v) => {
                    if let Some(re) = &self.header_value
                        && !re.is_match(v)
                    {
                        return false;
                    }
                }
            }
        }
        if let Some(re) = &self.sender
            && !re.is_match(&f.sender)
        {
            return false;
        }
        if let Some(re) = &self.recipient
            && !f.recipients.iter().any(|r| re.is_match(r))
        {
            return false;
        }
        within(f.size, self.size) && within(f.age, self.age) && within(f.held, self.held)
    }
}

fn verdict(action: &str, due: Option<String>, header: Option<&String>) -> Result<Verdict, String> {
    Ok(match action {
        "release" => Verdict::Release,
        "requeue" => Verdict::Requeue,
        "expire" => Verdict::Expire,
        "quarantine" => Verdict::Quarantine,
        "keep" => Verdict::Keep,
        "release-at" => Verdict::ReleaseAt(
            due.or_else(|| header.cloned())
                .ok_or("release-at needs due_header (or header)")?,
        ),
        a => {
            return Err(format!(
                "unknown action {a:?} (release, requeue, expire, quarantine, keep, release-at)"
            ));
        }
    })
}

impl Rules {
    /// The rules used when no file is given.
    pub fn default_rules() -> Rules {
        let at = |h: &str| Rule {
            name: h.to_ascii_lowercase(),
            header: Some(h.into()),
            header_value: None,
            sender: None,
            recipient: None,
            size: (None, None),
            age: (None, None),
            held: (None, None),
            verdict: Verdict::ReleaseAt(h.into()),
        };
        Rules {
            rules: crate::deliver_at::DUE_HEADERS
                .iter()
                .map(|h| at(h))
                .collect(),
            horizon: 366 * 86400,
            on_bad_date: Verdict::Keep,
            requeue_after: None,
        }
    }

    /// Parses a rules file's text; errors name the rule and the field.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let f: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let dur = |v: &Option<String>, what: &str| -> Result<Option<u64>, String> {
            v.as_deref()
                .map(|s| parse_time(s, 's').ok_or(format!("{what}: bad time value {s:?}")))
                .transpose()
        };
        let re = |v: &Option<String>, what: &str| -> Result<Option<Regex>, String> {
            v.as_deref()
                .map(|s| Regex::new(s).map_err(|e| format!("{what}: {e}")))
                .transpose()
        };
        let mut rules = Vec::new();
        for (i, r) in f.rule.iter().enumerate() {
            let name = r.name.clone().unwrap_or(format!("rule {}", i + 1));
            let ctx = |field: &str| format!("{name}: {field}");
            if r.header_value.is_some() && r.header.is_none() {
                return Err(ctx("header_value needs header"));
            }
            rules.push(Rule {
                header: r.header.clone(),
                header_value: re(&r.header_value, &ctx("header_value"))?,
                sender: re(&r.sender, &ctx("sender"))?,
                recipient: re(&r.recipient, &ctx("recipient"))?,
                size: (r.min_size, r.max_size),
                age: (
                    dur(&r.min_age, &ctx("min_age"))?,
                    dur(&r.max_age, &ctx("max_age"))?,
                ),
                held: (
                    dur(&r.min_held, &ctx("min_held"))?,
                    dur(&r.max_held, &ctx("max_held"))?,
                ),
                verdict: verdict(&r.action, r.due_header.clone(), r.header.as_ref())
                    .map_err(|e| ctx(&e))?,
                name,
            });
        }
        let on_bad_date = match f.settings.on_bad_date.as_deref().unwrap_or("keep") {
            "keep" => Verdict::Keep,
            "release" => Verdict::Release,
            "quarantine" => Verdict::Quarantine,
            o => {
                return Err(format!(
                    "settings: on_bad_date: {o:?} (keep, release, quarantine)"
                ));
            }
        };
        // At most 100 years: beyond that only overflow waits.
        let horizon = dur(&f.settings.horizon, "settings: horizon")?.unwrap_or(366 * 86400);
        if horizon > 100 * 366 * 86400 {
            return Err("settings: horizon: at most 100 years".into());
        }
        Ok(Rules {
            rules,
            horizon,
            on_bad_date,
            requeue_after: dur(&f.settings.requeue_after, "settings: requeue_after")?,
        })
    }

    /// Loads a rules file, or the default rules when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Rules, Fatal> {
        match path {
            None => Ok(Rules::default_rules()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Fatal::config(format!("{}: {e}", p.display())))?;
                Rules::parse(&text).map_err(|e| Fatal::config(format!("{}: {e}", p.display())))
            }
        }
    }

    /// The first matching rule, if any.
    pub fn decide(&self, f: &Facts) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            headers: vec![
                ("Subject".into(), "[TEST] hello".into()),
                ("X-Deliver-At".into(), "x".into()),
            ],
            sender: "a@example.com".into(),
            recipients: vec!["abuse@example.net".into()],
            size: 500,
            age: 3600,
            held: 60,
        }
    }

    #[test]
    fn first_match_wins_and_all_conditions_count() {
        let r = Rules::parse(
            r#"
            [[rule]]
            name = "big"
            min_size = 1000
            action = "quarantine"
            [[rule]]
            name = "test"
            header = "subject"
            header_value = "(?i)^\\[test\\]"
            sender = "@example\\.com$"
            recipient = "^abuse@"
            min_age = "30m"
            action = "keep"
            [[rule]]
            header = "X-Deliver-At"
            action = "release-at"
            "#,
        )
        .unwrap();
        assert_eq!(r.decide(&facts()).unwrap().name, "test");
        let mut f = facts();
        f.sender = "b@other.org".into();
        assert_eq!(
            r.decide(&f).unwrap().verdict,
            Verdict::ReleaseAt("X-Deliver-At".into())
        );
        f.size = 2000;
        assert_eq!(r.decide(&f).unwrap().name, "big");
    }

    #[test]
    fn bad_files_are_errors_that_name_the_rule() {
        let e = Rules::parse("[[rule]]\nname = \"x\"\naction = \"explode\"\n").unwrap_err();
        assert!(e.contains("x:") && e.contains("explode"), "{e}");
        let e = Rules::parse("[[rule]]\nname = \"y\"\nsender = \"(\"\naction = \"keep\"\n")
            .unwrap_err();
        assert!(e.contains("y: sender"), "{e}");
        assert!(Rules::parse("[[rule]]\naction = \"keep\"\nbogus = 1\n").is_err());
        assert!(Rules::parse("[[rule]]\naction = \"release-at\"\n").is_err());
        assert!(Rules::parse("[settings]\nhorizon = \"soon\"\n").is_err());
    }

    #[test]
    fn default_rules_schedule_on_due_headers_only() {
        let r = Rules::default_rules();
        assert_eq!(
            r.decide(&facts()).unwrap().verdict,
            Verdict::ReleaseAt("X-Deliver-At".into())
        );
        let f = Facts::default();
        assert!(r.decide(&f).is_none());
    }
}
