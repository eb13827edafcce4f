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

pub mod due;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::config::parse_time;
use crate::error::Fatal;
use crate::scan::{Address, Kind, Outcome, Scanner};

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
    scan: Option<String>,
    exit: Option<Vec<i32>>,
    spam: Option<bool>,
    min_score: Option<f64>,
    max_score: Option<f64>,
    symbol: Option<String>,
    infected: Option<bool>,
    virus: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScanner {
    #[serde(rename = "type")]
    kind: String,
    argv: Option<Vec<String>>,
    user: Option<String>,
    env: Option<std::collections::BTreeMap<String, String>>,
    output_cap: Option<String>,
    address: Option<String>,
    command: Option<String>,
    chunk: Option<String>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
    concurrency: Option<usize>,
    queue: Option<usize>,
    max_size: Option<String>,
    on_oversize: Option<String>,
    poison_after: Option<u32>,
    retry: Option<String>,
    retry_max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    settings: FileSettings,
    #[serde(default)]
    rule: Vec<FileRule>,
    #[serde(default)]
    scanner: std::collections::BTreeMap<String, FileScanner>,
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
    /// A scanner (index into [`Rules::scanners`]) and what its result must be.
    scan: Option<(usize, ScanCond)>,
    /// The action.
    pub verdict: Verdict,
}

/// What a scanner's result must be for a rule to match.
#[derive(Debug, Clone)]
enum ScanCond {
    /// Command: one of these exit codes.
    Exit(Vec<i32>),
    /// spamd: its verdict, a score range, a rule that hit.
    Spam {
        spam: Option<bool>,
        min: Option<f64>,
        max: Option<f64>,
        symbol: Option<Regex>,
    },
    /// clamd: infected or clean, a signature name.
    Virus {
        infected: Option<bool>,
        name: Option<Regex>,
    },
}

impl ScanCond {
    fn matches(&self, o: &Outcome) -> bool {
        match (self, o) {
            (ScanCond::Exit(codes), Outcome::Exit(c, _)) => codes.contains(c),
            (
                ScanCond::Spam {
                    spam,
                    min,
                    max,
                    symbol,
                },
                Outcome::Spam {
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
            (ScanCond::Virus { infected, name }, Outcome::Virus(v)) => {
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
    /// A scanner could not scan the message (too large): keep it held.
    Hold(String),
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
    /// Content scanners (`[scanner.NAME]`), by index.
    pub scanners: Vec<Arc<Scanner>>,
}

fn within(v: u64, (lo, hi): (Option<u64>, Option<u64>)) -> bool {
    lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h)
}

impl Rule {
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

fn parse_scanner(name: &str, f: &FileScanner) -> Result<Scanner, String> {
    let ctx = |field: &str, e: &str| format!("scanner {name}: {field}: {e}");
    let secs = |v: &Option<String>, field: &str, default: u64| -> Result<Duration, String> {
        match v.as_deref() {
            None => Ok(Duration::from_secs(default)),
            Some(s) => match parse_time(s, 's') {
                Some(0) | None => Err(ctx(field, &format!("bad time value {s:?}"))),
                Some(n) => Ok(Duration::from_secs(n.min(30 * 86400))),
            },
        }
    };
    let size = |v: &Option<String>, field: &str| -> Result<Option<u64>, String> {
        v.as_deref()
            .map(|s| crate::scan::parse_size(s).ok_or(ctx(field, &format!("bad size {s:?}"))))
            .transpose()
    };
    let address = || -> Result<Address, String> {
        Address::parse(f.address.as_deref().ok_or(ctx("address", "missing"))?)
            .map_err(|e| ctx("address", &e))
    };
    let not_for = |field: &str, set: bool| -> Result<(), String> {
        if set {
            Err(ctx(
                field,
                &format!("not a setting of a {} scanner", f.kind),
            ))
        } else {
            Ok(())
        }
    };
    let kind = match f.kind.as_str() {
        "command" => {
            not_for("address", f.address.is_some())?;
            not_for("command", f.command.is_some())?;
            not_for("chunk", f.chunk.is_some())?;
            not_for("connect_timeout", f.connect_timeout.is_some())?;
            let argv = f.argv.clone().ok_or(ctx("argv", "missing"))?;
            match argv.first() {
                Some(p) if p.starts_with('/') => {}
                _ => return Err(ctx("argv", "the first element must be an absolute path")),
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(ctx("argv", "NUL byte"));
            }
            let user = match &f.user {
                None => None,
                Some(u) => {
                    let pw = nix::unistd::User::from_name(u)
                        .ok()
                        .flatten()
                        .ok_or(ctx("user", &format!("no such user {u:?}")))?;
                    Some((u.clone(), pw.uid.as_raw(), pw.gid.as_raw()))
                }
            };
            let env: Vec<(String, String)> =
                f.env.clone().unwrap_or_default().into_iter().collect();
            if let Some((k, _)) = env
                .iter()
                .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
            {
                return Err(ctx("env", &format!("bad variable {k:?}")));
            }
            let cap = size(&f.output_cap, "output_cap")?.unwrap_or(4096);
            Kind::Command {
                argv,
                user,
                env,
                output_cap: cap.min(1 << 20) as usize,
                named: Vec::new(),
            }
        }
        "spamd" => {
            not_for("argv", f.argv.is_some())?;
            not_for("env", f.env.is_some())?;
            not_for("output_cap", f.output_cap.is_some())?;
            not_for("chunk", f.chunk.is_some())?;
            let symbols = match f.command.as_deref().unwrap_or("SYMBOLS") {
                "SYMBOLS" => true,
                "CHECK" => false,
                c => return Err(ctx("command", &format!("{c:?} (CHECK or SYMBOLS)"))),
            };
            if let Some(u) = &f.user
                && (u.is_empty() || u.chars().any(|c| c.is_control() || c == ' '))
            {
                return Err(ctx("user", "bad spamd user name"));
            }
            Kind::Spamd {
                address: address()?,
                symbols,
                user: f.user.clone(),
            }
        }
        "clamd" => {
            not_for("argv", f.argv.is_some())?;
            not_for("env", f.env.is_some())?;
            not_for("output_cap", f.output_cap.is_some())?;
            not_for("command", f.command.is_some())?;
            not_for("user", f.user.is_some())?;
            let chunk = size(&f.chunk, "chunk")?.unwrap_or(64 * 1024);
            if !(1..=(1 << 24)).contains(&chunk) {
                return Err(ctx("chunk", "between 1 and 16M"));
            }
            Kind::Clamd {
                address: address()?,
                chunk: chunk as usize,
            }
        }
        k => return Err(ctx("type", &format!("{k:?} (command, spamd or clamd)"))),
    };
    let max_size = size(&f.max_size, "max_size")?.or(match kind {
        // clamd's stream limit as Debian configures it (StreamMaxLength 25M).
        Kind::Clamd { .. } => Some(25 << 20),
        _ => None,
    });
    let oversize_passes = match f.on_oversize.as_deref().unwrap_or("keep") {
        "keep" => false,
        "pass" => true,
        o => return Err(ctx("on_oversize", &format!("{o:?} (keep or pass)"))),
    };
    let concurrency = f.concurrency.unwrap_or(2);
    if !(1..=256).contains(&concurrency) {
        return Err(ctx("concurrency", "between 1 and 256"));
    }
    let queue = f.queue.unwrap_or(64);
    if !(1..=1_000_000).contains(&queue) {
        return Err(ctx("queue", "between 1 and 1000000"));
    }
    let poison_after = f.poison_after.unwrap_or(3);
    if poison_after == 0 {
        return Err(ctx("poison_after", "at least 1"));
    }
    let retry = secs(&f.retry, "retry", 60)?;
    let retry_max = secs(&f.retry_max, "retry_max", 3600)?.max(retry);
    Ok(Scanner {
        name: name.to_string(),
        timeout: secs(
            &f.timeout,
            "timeout",
            if matches!(kind, Kind::Command { .. }) {
                60
            } else {
                30
            },
        )?,
        connect_timeout: secs(&f.connect_timeout, "connect_timeout", 5)?,
        kind,
        concurrency,
        queue,
        max_size,
        oversize_passes,
        poison_after,
        retry,
        retry_max,
    })
}

/// A rule's scan condition, checked against its scanner's type. Exit
/// codes a rule names are added to the scanner's list of known results.
fn scan_cond(r: &FileRule, scanners: &mut [Scanner]) -> Result<Option<(usize, ScanCond)>, String> {
    let Some(name) = &r.scan else {
        let set = r.exit.is_some()
            || r.spam.is_some()
            || r.min_score.is_some()
            || r.max_score.is_some()
            || r.symbol.is_some()
            || r.infected.is_some()
            || r.virus.is_some();
        return if set {
            Err("exit, spam, min_score, max_score, symbol, infected and virus need scan".into())
        } else {
            Ok(None)
        };
    };
    let i = scanners
        .iter()
        .position(|s| &s.name == name)
        .ok_or(format!("scan: no [scanner.{name}]"))?;
    let re = |v: &Option<String>, what: &str| -> Result<Option<Regex>, String> {
        v.as_deref()
            .map(|s| Regex::new(s).map_err(|e| format!("{what}: {e}")))
            .transpose()
    };
    let spamd_only =
        r.spam.is_some() || r.min_score.is_some() || r.max_score.is_some() || r.symbol.is_some();
    let clamd_only = r.infected.is_some() || r.virus.is_some();
    let cond = match &mut scanners[i].kind {
        Kind::Command { named, .. } => {
            if spamd_only || clamd_only {
                return Err(format!("scan: {name} is a command scanner: use exit"));
            }
            let codes = r.exit.clone().ok_or(format!(
                "scan: {name} is a command scanner: exit (the codes this rule takes) is required"
            ))?;
            if codes.is_empty() {
                return Err("exit: empty".into());
            }
            if let Some(c) = codes
                .iter()
                .find(|c| !(0..=255).contains(*c) || **c == crate::scan::command::EX_TEMPFAIL)
            {
                return Err(format!(
                    "exit: {c}: codes are 0 to 255, and 75 (EX_TEMPFAIL) always means try again"
                ));
            }
            for c in &codes {
                if !named.contains(c) {
                    named.push(*c);
                }
            }
            ScanCond::Exit(codes)
        }
        Kind::Spamd { symbols, .. } => {
            if r.exit.is_some() || clamd_only {
                return Err(format!(
                    "scan: {name} is spamd: use spam, min_score, max_score, symbol"
                ));
            }
            if r.symbol.is_some() && !*symbols {
                return Err(format!(
                    "symbol: scanner {name} uses CHECK, which returns no symbols"
                ));
            }
            if [r.min_score, r.max_score]
                .iter()
                .flatten()
                .any(|v| !v.is_finite())
            {
                return Err("min_score/max_score: not a number".into());
            }
            ScanCond::Spam {
                spam: if spamd_only { r.spam } else { Some(true) },
                min: r.min_score,
                max: r.max_score,
                symbol: re(&r.symbol, "symbol")?,
            }
        }
        Kind::Clamd { .. } => {
            if r.exit.is_some() || spamd_only {
                return Err(format!("scan: {name} is clamd: use infected, virus"));
            }
            if r.infected == Some(false) && r.virus.is_some() {
                return Err("virus with infected = false never matches".into());
            }
            ScanCond::Virus {
                infected: if clamd_only { r.infected } else { Some(true) },
                name: re(&r.virus, "virus")?,
            }
        }
    };
    Ok(Some((i, cond)))
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
            scan: None,
            verdict: Verdict::ReleaseAt(h.into()),
        };
        Rules {
            rules: crate::rules::due::DUE_HEADERS
                .iter()
                .map(|h| at(h))
                .collect(),
            horizon: 366 * 86400,
            on_bad_date: Verdict::Keep,
            requeue_after: None,
            scanners: Vec::new(),
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
        let mut scanners = Vec::new();
        for (name, fs) in &f.scanner {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(format!(
                    "scanner {name:?}: names are letters, digits, '_', '.' and '-'"
                ));
            }
            scanners.push(parse_scanner(name, fs)?);
        }
        let mut rules = Vec::new();
        for (i, r) in f.rule.iter().enumerate() {
            let name = r.name.clone().unwrap_or(format!("rule {}", i + 1));
            let ctx = |field: &str| format!("{name}: {field}");
            if r.header_value.is_some() && r.header.is_none() {
                return Err(ctx("header_value needs header"));
            }
            let scan = scan_cond(r, &mut scanners).map_err(|e| ctx(&e))?;
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
                scan,
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
            scanners: scanners.into_iter().map(Arc::new).collect(),
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

    /// The first matching rule, if any, for rules without scanners (a rule
    /// that needs a scan stops the search: nothing after it can match).
    pub fn decide(&self, f: &Facts) -> Option<&Rule> {
        match self.evaluate(f, &[]) {
            Eval::Rule(r) => r,
            Eval::Scan(_) | Eval::Hold(_) => None,
        }
    }

    /// Judges a message with the scan results it has so far, in rule
    /// order. A rule whose other conditions hold but whose scanner has not
    /// run asks for that scan; a rule is never skipped for want of a
    /// result, so nothing after an unscanned rule can release the message.
    pub fn evaluate(&self, f: &Facts, results: &[(usize, Outcome)]) -> Eval<'_> {
        for r in &self.rules {
            if !r.matches(f) {
                continue;
            }
            let Some((si, cond)) = &r.scan else {
                return Eval::Rule(Some(r));
            };
            let Some((_, out)) = results.iter().find(|(i, _)| i == si) else {
                return Eval::Scan(*si);
            };
            if let Outcome::Oversize(n) = out {
                let sc = &self.scanners[*si];
                if sc.oversize_passes {
                    continue;
                }
                return Eval::Hold(format!(
                    "reason=scan-oversize, scanner={}, size={n}, max_size={}",
                    sc.name,
                    sc.max_size.unwrap_or(0)
                ));
            }
            if cond.matches(out) {
                return Eval::Rule(Some(r));
            }
            // A non-zero exit code that this rule does not take must be
            // taken by a later rule on the same scanner that applies to
            // this message; otherwise no rule names it for this message,
            // and it must not fall through to a release.
            if let Outcome::Exit(c, _) = out
                && *c != 0
                && !self.rules.iter().skip_while(|x| !std::ptr::eq(*x, r)).skip(1).any(|x| {
                    matches!(&x.scan, Some((i, ScanCond::Exit(codes))) if i == si && codes.contains(c))
                        && x.matches(f)
                })
            {
                return Eval::Hold(format!(
                    "reason=scan-unnamed-exit, scanner={}, exit={c}",
                    self.scanners[*si].name
                ));
            }
        }
        Eval::Rule(None)
    }

    /// The scanner named `name`.
    pub fn scanner(&self, name: &str) -> Option<usize> {
        self.scanners.iter().position(|s| s.name == name)
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
    fn scans_are_asked_for_in_order_and_never_skipped() {
        let r = Rules::parse(
            r#"
            [scanner.av]
            type = "clamd"
            address = "/run/clamd.sock"
            [scanner.sa]
            type = "spamd"
            address = "127.0.0.1:783"
            [scanner.ext]
            type = "command"
            argv = ["/bin/true"]
            [[rule]]
            name = "vip"
            sender = "^boss@"
            action = "release"
            [[rule]]
            name = "virus"
            scan = "av"
            action = "quarantine"
            [[rule]]
            name = "spam"
            scan = "sa"
            min_score = 5.0
            action = "quarantine"
            [[rule]]
            name = "ext"
            scan = "ext"
            exit = [1, 2]
            action = "keep"
            [[rule]]
            name = "rest"
            action = "release"
            "#,
        )
        .unwrap();
        let f = facts();
        let (av, sa, ext) = (0, 2, 1); // scanners sorted by name: av, ext, sa
        assert_eq!(r.scanners[av].name, "av");
        assert!(matches!(r.evaluate(&f, &[]), Eval::Scan(i) if i == av));
        let clean = (av, Outcome::Virus(None));
        assert!(matches!(r.evaluate(&f, std::slice::from_ref(&clean)), Eval::Scan(i) if i == sa));
        let ham = (
            sa,
            Outcome::Spam {
                spam: false,
                score: 4.9,
                threshold: 5.0,
                symbols: vec![],
            },
        );
        assert!(matches!(r.evaluate(&f, &[clean.clone(), ham.clone()]), Eval::Scan(i) if i == ext));
        let done = [
            clean.clone(),
            ham.clone(),
            (ext, Outcome::Exit(0, String::new())),
        ];
        assert!(matches!(r.evaluate(&f, &done), Eval::Rule(Some(x)) if x.name == "rest"));
        let named = [clean.clone(), ham, (ext, Outcome::Exit(2, String::new()))];
        assert!(matches!(r.evaluate(&f, &named), Eval::Rule(Some(x)) if x.name == "ext"));
        let inf = [(av, Outcome::Virus(Some("X".into())))];
        assert!(matches!(r.evaluate(&f, &inf), Eval::Rule(Some(x)) if x.name == "virus"));
        // Too large for clamd: held, never released past the scan.
        let big = [(av, Outcome::Oversize(1 << 30))];
        assert!(matches!(r.evaluate(&f, &big), Eval::Hold(_)));
        // The exit codes rules name are known to the scanner; 0 always is.
        assert!(matches!(&r.scanners[ext].kind, Kind::Command { named, .. } if named == &[1, 2]));
        // A rule before every scan needs none.
        let mut boss = facts();
        boss.sender = "boss@example.com".into();
        assert!(matches!(r.evaluate(&boss, &[]), Eval::Rule(Some(x)) if x.name == "vip"));
        // decide() without scan results never passes a scanning rule.
        assert!(r.decide(&f).is_none());
        // A code that only a rule not applying to this message names is
        // held, never passed on to the release rule.
        let r = Rules::parse(
            r#"
            [scanner.ext]
            type = "command"
            argv = ["/bin/true"]
            [[rule]]
            name = "lists"
            sender = "^list@"
            scan = "ext"
            exit = [3]
            action = "keep"
            [[rule]]
            name = "bad"
            scan = "ext"
            exit = [1]
            action = "quarantine"
            [[rule]]
            name = "rest"
            action = "release"
            "#,
        )
        .unwrap();
        let three = [(0, Outcome::Exit(3, String::new()))];
        assert!(matches!(r.evaluate(&f, &three), Eval::Hold(h) if h.contains("exit=3")));
        let mut list = facts();
        list.sender = "list@example.com".into();
        assert!(matches!(r.evaluate(&list, &three), Eval::Rule(Some(x)) if x.name == "lists"));
        let zero = [(0, Outcome::Exit(0, String::new()))];
        assert!(matches!(r.evaluate(&f, &zero), Eval::Rule(Some(x)) if x.name == "rest"));
    }

    #[test]
    fn bad_scanner_settings_are_errors_that_name_them() {
        let bad = [
            ("[scanner.x]\ntype = \"nope\"\n", "scanner x: type"),
            (
                "[scanner.'a\"b']\ntype = \"clamd\"\naddress = \"/s\"\n",
                "names are",
            ),
            ("[scanner.x]\ntype = \"clamd\"\n", "scanner x: address"),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"sh\"]\n",
                "absolute path",
            ),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"/bin/x\"]\nuser = \"no-such-user-here\"\n",
                "no such user",
            ),
            (
                "[scanner.x]\ntype = \"clamd\"\naddress = \"/s\"\nargv = [\"/bin/x\"]\n",
                "not a setting",
            ),
            (
                "[scanner.x]\ntype = \"spamd\"\naddress = \"h:1\"\ntimeout = \"0s\"\n",
                "timeout",
            ),
            (
                "[scanner.x]\ntype = \"spamd\"\naddress = \"h:1\"\nconcurrency = 0\n",
                "concurrency",
            ),
            (
                "[[rule]]\nscan = \"ghost\"\naction = \"keep\"\n",
                "no [scanner.ghost]",
            ),
            ("[[rule]]\nexit = [1]\naction = \"keep\"\n", "need scan"),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"/bin/x\"]\n[[rule]]\nscan = \"x\"\naction = \"keep\"\n",
                "exit",
            ),
            (
                "[scanner.x]\ntype = \"command\"\nargv = [\"/bin/x\"]\n[[rule]]\nscan = \"x\"\nexit = [75]\naction = \"release\"\n",
                "EX_TEMPFAIL",
            ),
            (
                "[scanner.x]\ntype = \"spamd\"\naddress = \"h:1\"\ncommand = \"CHECK\"\n[[rule]]\nscan = \"x\"\nsymbol = \"A\"\naction = \"keep\"\n",
                "CHECK",
            ),
            (
                "[scanner.x]\ntype = \"clamd\"\naddress = \"/s\"\n[[rule]]\nscan = \"x\"\nmin_score = 1.0\naction = \"keep\"\n",
                "is clamd",
            ),
        ];
        for (text, want) in bad {
            let e = Rules::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
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
