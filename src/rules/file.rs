//! The rules file: TOML as the administrator writes it, checked field by
//! field (errors name the rule or scanner and the field) and compiled into
//! [`Rules`]. Checked by `posthold check-config`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::eval::{Rule, Rules, ScanCond};
use super::verdict::Verdict;
use crate::config::parse_time;
use crate::error::Fatal;
use crate::scan::{Address, Scanner, ScannerKind};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    horizon: Option<String>,
    assume_zone: Option<String>,
    stuck_after: Option<String>,
    on_stuck: Option<String>,
    on_bad_date: Option<String>,
    requeue_after: Option<String>,
    scanner_user: Option<String>,
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
    unscanned: Option<bool>,
    exit: Option<Vec<i32>>,
    spam: Option<bool>,
    min_score: Option<f64>,
    max_score: Option<f64>,
    symbol: Option<String>,
    infected: Option<bool>,
    rspamd_action: Option<Vec<String>>,
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

/// A fixed zone for `assume_zone`: `UTC` (or `GMT`, `Z`) or a numeric
/// offset, `+0100` or `-05:00`, at most 14 hours.
fn parse_zone(z: &str) -> Option<chrono::FixedOffset> {
    let z = z.trim();
    if ["UTC", "GMT", "Z"]
        .iter()
        .any(|u| z.eq_ignore_ascii_case(u))
    {
        return chrono::FixedOffset::east_opt(0);
    }
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
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
                Some(u) => Some(lookup_user(u).map_err(|e| ctx("user", &e))?),
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
            ScannerKind::Command {
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
            ScannerKind::Spamd {
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
            ScannerKind::Clamd {
                address: address()?,
                chunk: chunk as usize,
            }
        }
        "rspamd" => {
            for (field, set) in [
                ("argv", f.argv.is_some()),
                ("env", f.env.is_some()),
                ("output_cap", f.output_cap.is_some()),
                ("chunk", f.chunk.is_some()),
                ("command", f.command.is_some()),
                ("user", f.user.is_some()),
            ] {
                not_for(field, set)?;
            }
            ScannerKind::Rspamd {
                address: address()?,
            }
        }
        k => {
            return Err(ctx(
                "type",
                &format!("{k:?} (command, spamd, rspamd or clamd)"),
            ));
        }
    };
    let max_size = size(&f.max_size, "max_size")?.or(match kind {
        // clamd's stream limit as Debian configures it (StreamMaxLength 25M).
        ScannerKind::Clamd { .. } => Some(25 << 20),
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
        // Longer than the scanner's own limit on one message (spamd's
        // --timeout-child 300 s, clamd's MaxScanTime 120 s), so that a
        // busy scanner's work is never abandoned half done.
        timeout: secs(
            &f.timeout,
            "timeout",
            match kind {
                ScannerKind::Command { .. } => 60,
                // rspamd's task_timeout is 8 s, but a Lua plugin or a
                // lookup may hold a task longer.
                ScannerKind::Spamd { .. } | ScannerKind::Rspamd { .. } => 310,
                ScannerKind::Clamd { .. } => 130,
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

/// A user by name: (name, uid, gid of its primary group).
fn lookup_user(name: &str) -> Result<(String, u32, u32), String> {
    let pw = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or(format!("no such user {name:?}"))?;
    Ok((name.to_string(), pw.uid.as_raw(), pw.gid.as_raw()))
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
            || r.virus.is_some()
            || r.rspamd_action.is_some();
        return if set {
            Err("exit, spam, min_score, max_score, symbol, rspamd_action, infected and virus need scan".into())
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
    if r.rspamd_action.is_some() && !matches!(scanners[i].kind, ScannerKind::Rspamd { .. }) {
        return Err(format!("rspamd_action: scanner {name} is not rspamd"));
    }
    let clamd_only = r.infected.is_some() || r.virus.is_some();
    if [r.min_score, r.max_score]
        .iter()
        .flatten()
        .any(|v| !v.is_finite())
    {
        return Err("min_score/max_score: not a number".into());
    }
    let cond = match &mut scanners[i].kind {
        ScannerKind::Command { named, .. } => {
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
        ScannerKind::Spamd { symbols, .. } => {
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
            ScanCond::Spam {
                spam: if spamd_only { r.spam } else { Some(true) },
                min: r.min_score,
                max: r.max_score,
                symbol: re(&r.symbol, "symbol")?,
                action: None,
            }
        }
        ScannerKind::Rspamd { .. } => {
            if r.exit.is_some() || clamd_only {
                return Err(format!(
                    "scan: {name} is rspamd: use rspamd_action, spam, min_score, max_score, symbol"
                ));
            }
            if let Some(a) = r
                .rspamd_action
                .iter()
                .flatten()
                .find(|a| !crate::scan::rspamd::ACTIONS.contains(&a.as_str()))
            {
                return Err(format!(
                    "rspamd_action: {a:?} (one of {})",
                    crate::scan::rspamd::ACTIONS.join(", ")
                ));
            }
            // No condition: rspamd's own verdict, reject.
            let any = spamd_only || r.rspamd_action.is_some();
            ScanCond::Spam {
                spam: r.spam,
                min: r.min_score,
                max: r.max_score,
                symbol: re(&r.symbol, "symbol")?,
                action: if any {
                    r.rspamd_action.clone()
                } else {
                    Some(vec!["reject".into()])
                },
            }
        }
        ScannerKind::Clamd { .. } => {
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
            unscanned: false,
            verdict: Verdict::ReleaseAt(h.into()),
        };
        Rules {
            rules: crate::rules::due::DUE_HEADERS
                .iter()
                .map(|h| at(h))
                .collect(),
            horizon: 366 * 86400,
            on_bad_date: Verdict::Keep,
            assume_zone: None,
            stuck_after: std::time::Duration::from_secs(3600),
            on_stuck: Verdict::Keep,
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
                unscanned: r.unscanned.unwrap_or(false),
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
        let assume_zone = match f.settings.assume_zone.as_deref() {
            None => None,
            Some(z) => Some(parse_zone(z).ok_or(format!(
                "settings: assume_zone: {z:?} (UTC, or an offset such as +0100 or -05:00)"
            ))?),
        };
        let on_stuck = match f.settings.on_stuck.as_deref().unwrap_or("keep") {
            "keep" => Verdict::Keep,
            "quarantine" => Verdict::Quarantine,
            o => return Err(format!("settings: on_stuck: {o:?} (keep, quarantine)")),
        };
        // Command scanners run as an unprivileged user: their own `user`,
        // or the settings' `scanner_user` (default nobody).
        let default_user = f.settings.scanner_user.as_deref().unwrap_or("nobody");
        for sc in &mut scanners {
            if let ScannerKind::Command { user: u @ None, .. } = &mut sc.kind {
                *u = Some(lookup_user(default_user).map_err(|e| {
                    format!("settings: scanner_user (for scanner {}): {e}", sc.name)
                })?);
            }
        }
        Ok(Rules {
            rules,
            horizon,
            on_bad_date,
            assume_zone,
            stuck_after: std::time::Duration::from_secs(
                dur(&f.settings.stuck_after, "settings: stuck_after")?.unwrap_or(3600),
            ),
            on_stuck,
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
}
