//! Judging a message: the rules in order, first match wins, scans asked
//! for lazily; and [`Rules::judge`], the one decision that the daemon and
//! `posthold scan` both make, so that they can never disagree.

use std::sync::Arc;

use regex::Regex;

use super::Reason;
use super::due::{self, DueSettings};
use super::verdict::{Ruling, Verdict};
use crate::read::message::Facts;
use crate::scan::{Answer, Scanner};

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name for logs (`rule 3` when unnamed).
    pub name: String,
    pub(super) header: Option<String>,
    pub(super) header_value: Option<Regex>,
    pub(super) sender: Option<Regex>,
    pub(super) recipient: Option<Regex>,
    pub(super) size: (Option<u64>, Option<u64>),
    pub(super) age: (Option<u64>, Option<u64>),
    pub(super) held: (Option<u64>, Option<u64>),
    /// A scanner (index into [`Rules::scanners`]) and what its result must be.
    pub(super) scan: Option<(usize, ScanCond)>,
    /// Releases without passing the scan rules (`unscanned = true`).
    pub unscanned: bool,
    /// The action.
    pub verdict: Verdict,
}

/// What a scanner's result must be for a rule to match.
#[derive(Debug, Clone)]
pub(super) enum ScanCond {
    /// Command: one of these exit codes.
    Exit(Vec<i32>),
    /// spamd or rspamd: its verdict (score at or above the threshold), a
    /// score range, a rule that hit; for rspamd also its action.
    Spam {
        spam: Option<bool>,
        min: Option<f64>,
        max: Option<f64>,
        symbol: Option<Regex>,
        action: Option<Vec<String>>,
    },
    /// clamd: infected or clean, a signature name.
    Virus {
        infected: Option<bool>,
        name: Option<Regex>,
    },
}

impl ScanCond {
    fn matches(&self, o: &Answer) -> bool {
        match (self, o) {
            (ScanCond::Exit(codes), Answer::Exit(c, _)) => codes.contains(c),
            (
                ScanCond::Spam {
                    spam,
                    min,
                    max,
                    symbol,
                    action: None,
                },
                Answer::Spam {
                    spam: is_spam,
                    score,
                    symbols,
                    ..
                },
            ) => {
                spam.is_none_or(|s| s == *is_spam)
                    && min.is_none_or(|m| *score >= m)
                    && max.is_none_or(|m| *score < m)
                    && symbol
                        .as_ref()
                        .is_none_or(|re| symbols.iter().any(|s| re.is_match(s)))
            }
            (
                ScanCond::Spam {
                    spam,
                    min,
                    max,
                    symbol,
                    action: wanted,
                },
                Answer::Rspamd {
                    action,
                    score,
                    required,
                    symbols,
                },
            ) => {
                spam.is_none_or(|s| s == (*score >= *required))
                    && min.is_none_or(|m| *score >= m)
                    && max.is_none_or(|m| *score < m)
                    && symbol
                        .as_ref()
                        .is_none_or(|re| symbols.iter().any(|s| re.is_match(s)))
                    && wanted.as_ref().is_none_or(|w| w.contains(action))
            }
            (ScanCond::Virus { infected, name }, Answer::Virus(v)) => {
                infected.is_none_or(|i| i == v.is_some())
                    && name
                        .as_ref()
                        .is_none_or(|re| v.as_deref().is_some_and(|n| re.is_match(n)))
            }
            _ => false,
        }
    }
}

/// How the rules judge a message, given the scan results so far.
#[derive(Debug)]
pub enum Eval<'a> {
    /// The first matching rule, or none.
    Rule(Option<&'a Rule>),
    /// The next rule to try needs this scanner's result first.
    Scan(usize),
    /// Keep it held: a scanner could not scan it (too large), or gave an
    /// exit code no rule that applies names.
    Hold(Reason),
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
    /// How long a message's scans may keep failing softly before it is
    /// told (and quarantined, with `on_stuck`).
    pub stuck_after: std::time::Duration,
    /// What to do then: keep (told once) or quarantine.
    pub on_stuck: Verdict,
    /// The zone of due times that name none (`None`: such times are bad
    /// dates).
    pub assume_zone: Option<chrono::FixedOffset>,
    /// Held longer than this: release through maildrop (`None`: half the lifetime).
    pub requeue_after: Option<u64>,
    /// Content scanners (`[scanner.NAME]`), by index.
    pub scanners: Vec<Arc<Scanner>>,
}

fn within(v: u64, (lo, hi): (Option<u64>, Option<u64>)) -> bool {
    lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h)
}

impl Rule {
    /// Whether it releases on what a sender chooses: a header (its value,
    /// a due date) or the envelope sender or recipients.
    pub fn sender_controlled(&self) -> bool {
        releases(&self.verdict)
            && (self.header.is_some()
                || self.sender.is_some()
                || self.recipient.is_some()
                || matches!(self.verdict, Verdict::ReleaseAt(_)))
    }

    /// The scanner this rule needs, if any (index into [`Rules::scanners`]).
    pub fn scanner(&self) -> Option<usize> {
        self.scan.as_ref().map(|(i, _)| *i)
    }

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

/// One scan rule's step (see [`Rules::scan_step`]).
enum Step<'a> {
    /// Its scan condition holds.
    Matches,
    /// It does not apply (or the message is too large and passes).
    Passes,
    /// The search ends here: a scan to run, or keep the message.
    Stop(Eval<'a>),
}

/// Whether a verdict lets mail go on to delivery (a requeue too: cleanup
/// may not hold it again).
fn releases(v: &Verdict) -> bool {
    matches!(
        v,
        Verdict::Release | Verdict::ReleaseAt(_) | Verdict::Requeue
    )
}

/// The rules' answer for a message (see [`Rules::judge`]).
#[derive(Debug)]
pub enum Judgement {
    /// Run this scanner (index into [`Rules::scanners`]) first.
    Scan(usize),
    /// Decided.
    Ruled(Ruling),
}

impl Rules {
    /// The first matching rule, if any, for rules without scanners (a rule
    /// that needs a scan stops the search: nothing after it can match).
    pub fn first_match(&self, f: &Facts) -> Option<&Rule> {
        match self.evaluate(f, &[]) {
            Eval::Rule(r) => r,
            Eval::Scan(_) | Eval::Hold(_) => None,
        }
    }

    /// Judges a message with the scan results it has so far, in rule
    /// order. A rule whose other conditions hold but whose scanner has not
    /// run asks for that scan; a rule is never skipped for want of a
    /// result, so nothing after an unscanned rule can release the message.
    pub fn evaluate(&self, f: &Facts, results: &[(usize, Answer)]) -> Eval<'_> {
        for r in &self.rules {
            if !r.matches(f) {
                continue;
            }
            if r.scan.is_none() {
                return Eval::Rule(Some(r));
            }
            match self.scan_step(r, f, results) {
                Step::Matches => return Eval::Rule(Some(r)),
                Step::Passes => continue,
                Step::Stop(e) => return e,
            }
        }
        Eval::Rule(None)
    }

    /// A matching rule with a scan condition, given the results so far.
    fn scan_step(&self, r: &Rule, f: &Facts, results: &[(usize, Answer)]) -> Step<'_> {
        let Some((si, cond)) = &r.scan else {
            return Step::Passes;
        };
        // S12: a rule without its scan result stops the search: no later
        // rule can match, so no failure falls through to a release.
        let Some((_, out)) = results.iter().find(|(i, _)| i == si) else {
            return Step::Stop(Eval::Scan(*si));
        };
        if let Answer::Oversize(n) = out {
            let sc = &self.scanners[*si];
            if sc.oversize_passes {
                return Step::Passes;
            }
            return Step::Stop(Eval::Hold(Reason::ScanOversize {
                scanner: sc.name.clone(),
                size: *n,
                max_size: sc.max_size.unwrap_or(0),
            }));
        }
        if cond.matches(out) {
            return Step::Matches;
        }
        // A non-zero exit code that this rule does not take must be taken
        // by a later rule on the same scanner that applies to this
        // message; otherwise no rule names it for this message, and it
        // must not fall through to a release.
        if let Answer::Exit(c, _) = out
            && *c != 0
            && !self.rules.iter().skip_while(|x| !std::ptr::eq(*x, r)).skip(1).any(|x| {
                matches!(&x.scan, Some((i, ScanCond::Exit(codes))) if i == si && codes.contains(c))
                    && x.matches(f)
            })
        {
            return Step::Stop(Eval::Hold(Reason::ScanUnnamedExit {
                scanner: self.scanners[*si].name.clone(),
                exit: *c,
            }));
        }
        Step::Passes
    }

    /// What a release decided without a scan must still pass: every scan
    /// rule that applies to the message, in order (senders choose the due
    /// header and the envelope sender, so neither may skip the scanners).
    /// `None`: it passes; else the scan to run, or the scan rule's ruling.
    fn scan_gate(&self, f: &Facts, results: &[(usize, Answer)]) -> Option<Eval<'_>> {
        for r in self.rules.iter().filter(|r| r.scan.is_some()) {
            if !r.matches(f) {
                continue;
            }
            match self.scan_step(r, f, results) {
                // A scan rule that itself releases (clean mail) is passed.
                Step::Matches if releases(&r.verdict) => continue,
                Step::Matches => return Some(Eval::Rule(Some(r))),
                Step::Passes => continue,
                Step::Stop(e) => return Some(e),
            }
        }
        None
    }

    /// The one decision, made by the daemon and by `posthold scan` alike:
    /// the next scan to run, or what to do, when, and why. Due dates are
    /// judged here (see [`due::ruling`]), bad and too distant ones included.
    pub fn judge(&self, f: &Facts, results: &[(usize, Answer)], now: i64) -> Judgement {
        let keep = |reason| Ruling {
            verdict: Verdict::Keep,
            due: None,
            reason,
        };
        Judgement::Ruled(match self.evaluate(f, results) {
            Eval::Scan(si) => return Judgement::Scan(si),
            Eval::Hold(reason) => keep(reason),
            Eval::Rule(None) => keep(Reason::NoRule),
            Eval::Rule(Some(rule)) => {
                let ruling = self.judge_rule(rule, f, now);
                // A release that is to happen now (a scheduled one once it
                // is due) by a rule with no scan of its own still passes
                // the scan rules, unless the rule says `unscanned = true`:
                // senders choose the due header and the envelope sender.
                let releases_now = releases(&ruling.verdict) && ruling.due.is_none_or(|t| t <= now);
                if !releases_now
                    || rule.scan.is_some()
                    || rule.unscanned
                    || self.scanners.is_empty()
                {
                    ruling
                } else {
                    match self.scan_gate(f, results) {
                        None | Some(Eval::Rule(None)) => ruling,
                        Some(Eval::Scan(si)) => return Judgement::Scan(si),
                        Some(Eval::Hold(reason)) => keep(reason),
                        Some(Eval::Rule(Some(stop))) => self.judge_rule(stop, f, now),
                    }
                }
            }
        })
    }

    /// The ruling of a rule that matched.
    fn judge_rule(&self, rule: &Rule, f: &Facts, now: i64) -> Ruling {
        match &rule.verdict {
            Verdict::ReleaseAt(h) => {
                let settings = DueSettings {
                    horizon: self.horizon,
                    on_bad_date: &self.on_bad_date,
                    assume_zone: self.assume_zone,
                };
                due::ruling(&rule.name, &rule.verdict, h, f, settings, now)
            }
            v => Ruling {
                verdict: v.clone(),
                due: None,
                reason: Reason::Rule {
                    rule: rule.name.clone(),
                },
            },
        }
    }

    /// The scanner named `name`.
    pub fn scanner(&self, name: &str) -> Option<usize> {
        self.scanners.iter().position(|s| s.name == name)
    }
}
