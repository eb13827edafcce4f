//! `posthold check-config [RULES]`: loads the rules file (or the default
//! rules), reports its errors naming the rule or scanner and the field, and
//! prints the rules, scanners and settings as posthold understands them.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::config::{Config, postconf_path};
use crate::error::Fatal;
use crate::queue::act::supports_noreplace;
use crate::queue::spool::Spool;
use crate::rules::{Rules, Verdict};
use crate::scan::ScannerKind;

/// Prints the rules `r` and what to fix in them; exit 0, or 1 when there
/// is a warning.
pub fn run(r: &Rules, out: &mut dyn Write) -> Result<i32, Fatal> {
    for (i, rule) in r.rules.iter().enumerate() {
        let scan = rule
            .scanner()
            .map(|s| format!(" after scan {}", r.scanners[s].name))
            .unwrap_or_default();
        writeln!(out, "{}. {}: {:?}{scan}", i + 1, rule.name, rule.verdict)
            .map_err(|e| Fatal::runtime(format!("write error: {e}")))?;
    }
    for sc in &r.scanners {
        writeln!(
                    out,
                    "scanner {}: {}, timeout={}s, concurrency={}, queue={}, max_size={}, on_oversize={}, poison_after={}, retry={}s..{}s",
                    sc.name,
                    match &sc.kind {
                        ScannerKind::Command { argv, user, .. } => format!(
                            "command {argv:?}{}",
                            user.as_ref().map(|u| format!(" as {}", u.0)).unwrap_or_default()
                        ),
                        ScannerKind::Spamd { address, symbols, .. } => format!(
                            "spamd {address} {}",
                            if *symbols { "SYMBOLS" } else { "CHECK" }
                        ),
                        ScannerKind::Clamd { address, chunk } =>
                            format!("clamd {address} chunk={chunk}"),
                        ScannerKind::Rspamd { address } => format!("rspamd {address}"),
                    },
                    sc.timeout.as_secs(),
                    sc.concurrency,
                    sc.queue,
                    sc.max_size.map_or("none".to_string(), |n| n.to_string()),
                    if sc.oversize_passes { "pass" } else { "keep" },
                    sc.poison_after,
                    sc.retry.as_secs(),
                    sc.retry_max.as_secs(),
                )
                .map_err(|e| Fatal::runtime(format!("write error: {e}")))?;
    }
    writeln!(
        out,
        "settings: horizon={}s on_bad_date={:?} requeue_after={}",
        r.horizon,
        r.on_bad_date,
        r.requeue_after
            .map_or("half the lifetime".to_string(), |s| format!("{s}s"))
    )
    .map_err(|e| Fatal::runtime(format!("write error: {e}")))?;
    let warnings = lint(r);
    for w in &warnings {
        writeln!(out, "warning: {w}").map_err(|e| Fatal::runtime(format!("write error: {e}")))?;
    }
    Ok(if warnings.is_empty() { 0 } else { 1 })
}

/// What in a rule set can let mail through that should not pass, or let a
/// sender steer a scanner:
///
/// * fail-open scanners: `spamc` without `-x` (`--no-safe-fallback`)
///   exits 0 when spamd cannot be reached; `spamassassin` without `-e`
///   (`--exit-code`) exits 0 whatever the verdict;
/// * a rule with `unscanned = true` that releases on sender-controlled
///   input (a header, a due date, the envelope sender or recipients);
/// * an address where it can be read as an option: `{recipients}`, or a
///   `{sender}` that is a whole argument, with no `--` before it (an
///   address may begin with `-`).
pub fn lint(r: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    // Releases that skip the scanners on what the sender chose.
    for rule in &r.rules {
        if rule.unscanned && !r.scanners.is_empty() && rule.sender_controlled() {
            out.push(format!(
                "rule {}: releases unscanned on what the sender chose (a header, the due date or the envelope sender): a spammer can write it (drop unscanned = true)",
                rule.name
            ));
        }
    }
    for sc in &r.scanners {
        let ScannerKind::Command { argv, user, .. } = &sc.kind else {
            continue;
        };
        // S14: never root (mail_owner is checked against Postfix's
        // configuration with -c, and by scan and watch).
        if let Some((name, 0, _)) = user {
            out.push(format!(
                "scanner {}: user {name} is root: a scanner gets no rights over the queue; name an unprivileged user",
                sc.name
            ));
        }
        let program = argv[0].rsplit('/').next().unwrap_or_default();
        let has = |flags: &[&str]| argv[1..].iter().any(|a| flags.contains(&a.as_str()));
        if program == "spamc" && !has(&["-x", "--no-safe-fallback"]) {
            out.push(format!(
                "scanner {}: spamc without -x exits 0 when spamd cannot be reached: every message passes while spamd is down (add \"-x\" to argv)",
                sc.name
            ));
        }
        if program == "spamassassin" && !has(&["-e", "--exit-code"]) {
            out.push(format!(
                "scanner {}: spamassassin without -e exits 0 whatever its verdict (add \"-e\" to argv)",
                sc.name
            ));
        }
        let end_of_options = argv[1..].iter().position(|a| a == "--");
        for (i, a) in argv[1..].iter().enumerate() {
            let address = a == "{recipients}" || a == "{sender}";
            if address && end_of_options.is_none_or(|e| e > i) {
                out.push(format!(
                    "scanner {}: argv: {a} is not after \"--\": an address that begins with '-' would be read as an option (put \"--\" before it)",
                    sc.name
                ));
            }
        }
    }
    out
}

/// `postconf [-c dir] ARGS`: its output, or an error naming it.
fn postconf(config_dir: Option<&Path>, args: &[&str]) -> Result<String, Fatal> {
    let mut c = Command::new(postconf_path());
    if let Some(d) = config_dir {
        c.arg("-c").arg(d);
    }
    let out = c
        .args(args)
        .output()
        .map_err(|e| Fatal::config(format!("postconf: {e}")))?;
    if !out.status.success() {
        return Err(Fatal::config(format!(
            "postconf {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of each `name = value` line.
fn values(text: &str) -> std::collections::HashMap<String, String> {
    crate::config::parse_postconf(text)
}

/// What a `regexp:` or `pcre:` table does with the header line `line`, as
/// Postfix reads it: the first rule that matches decides (`Some(Some(true))`:
/// HOLD; `Some(Some(false))`: another action; `Some(None)`: no rule matches). Rules inside
/// `if`/`endif` blocks are not counted for HOLD (their condition is not
/// known here: better a finding than a false all-clear). `None` when the
/// table cannot be read as such.
fn holds(table: &str, line: &str) -> Option<Option<bool>> {
    let (kind, path) = table.split_once(':')?;
    if kind != "regexp" && kind != "pcre" {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut depth = 0usize;
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with("endif") {
            depth = depth.saturating_sub(1);
            continue;
        }
        let is_if = l.starts_with("if ") || l.starts_with("if!") || l.starts_with("if/");
        let l = l
            .strip_prefix("if")
            .map(str::trim_start)
            .filter(|_| is_if)
            .unwrap_or(l);
        let (negated, l) = match l.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, l),
        };
        // /pattern/flags action, with any delimiter; a backslash escapes.
        let mut chars = l.char_indices();
        let Some((_, delim)) = chars.next() else {
            continue;
        };
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == delim {
                end = Some(i);
                break;
            }
        }
        let Some(end) = end else { continue };
        let pattern = &l[delim.len_utf8()..end];
        let tail = &l[end + delim.len_utf8()..];
        let (flags, action) = tail.split_at(tail.find(char::is_whitespace).unwrap_or(tail.len()));
        if is_if {
            depth += 1;
            continue;
        }
        // Postfix matches case-insensitively unless the `i` flag says not.
        let Ok(re) = regex::RegexBuilder::new(pattern)
            .case_insensitive(!flags.contains('i'))
            .build()
        else {
            continue;
        };
        if re.is_match(line) != negated {
            return Some(Some(
                depth == 0 && action.trim_start().to_ascii_uppercase().starts_with("HOLD"),
            ));
        }
    }
    Some(None)
}

/// `check-config -c`: what posthold needs of the Postfix configuration in
/// `config_dir`, each finding with the setting to change.
pub fn audit_postfix(config_dir: Option<&Path>, rules: &Rules) -> Result<Vec<String>, Fatal> {
    let mut out = Vec::new();
    let raw = values(&postconf(
        config_dir,
        &[
            "header_checks",
            "mime_header_checks",
            "nested_header_checks",
            "mail_version",
        ],
    )?);
    let get = |n: &str| raw.get(n).cloned().unwrap_or_default();
    // The tables with $config_directory and the like expanded.
    let expanded = values(&postconf(config_dir, &["-x", "header_checks"])?);
    // The due headers the rules release on.
    let mut due: Vec<String> = rules
        .rules
        .iter()
        .filter_map(|r| match &r.verdict {
            Verdict::ReleaseAt(h) => Some(h.clone()),
            _ => None,
        })
        .collect();
    due.dedup();
    let tables: Vec<String> = expanded
        .get("header_checks")
        .cloned()
        .unwrap_or_default()
        .split([',', ' ', '\t'])
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let mut held_by_header_checks = false;
    for h in &due {
        let line = format!("{h}: Mon, 1 Jan 2035 00:00:00 +0000");
        // The tables in order: the first rule that matches decides.
        let mut verdict = None;
        let mut unreadable = false;
        for t in &tables {
            match holds(t, &line) {
                Some(Some(hold)) => {
                    verdict = Some(hold);
                    break;
                }
                Some(None) => {}
                None => unreadable = true,
            }
        }
        if verdict == Some(true) {
            held_by_header_checks = true;
        } else if unreadable && verdict.is_none() {
            out.push(format!(
                "header_checks = {}: posthold reads only regexp: and pcre: tables; make sure one holds {h}: (/^{h}:/ HOLD)",
                get("header_checks")
            ));
        } else {
            out.push(format!(
                "no HOLD rule for {h}: in header_checks: add /^{h}:/ HOLD to a regexp: table named by header_checks (postconf -e header_checks=regexp:/etc/postfix/header_checks)"
            ));
        }
    }
    if held_by_header_checks {
        for inherit in ["mime_header_checks", "nested_header_checks"] {
            let v = get(inherit);
            if v.contains("$header_checks")
                || v.contains("${header_checks}")
                || (!v.is_empty() && v == get("header_checks"))
            {
                out.push(format!(
                    "{inherit} = {v}: the HOLD rule then also holds mail whose MIME parts or attached messages carry a due header posthold does not read, and it stays held: postconf -e {inherit}="
                ));
            }
        }
    }
    // qmgr and pickup, as UNIX sockets or FIFOs (posthold wakes both).
    let cfg = Config::load(config_dir, None)?;
    // S14: no command scanner as mail_owner (by uid: another name for the
    // same uid is the same user), who may rewrite the queue.
    let owner_uid = nix::unistd::User::from_name(&cfg.mail_owner)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    for sc in &rules.scanners {
        if let ScannerKind::Command {
            user: Some((name, uid, _)),
            ..
        } = &sc.kind
            && Some(*uid) == owner_uid
        {
            out.push(format!(
                "scanner {}: user {name} is mail_owner: it could rewrite every queue file; name an unprivileged user (or drop user: nobody is the default)",
                sc.name
            ));
        }
    }
    let services = postconf(config_dir, &["-M"])?;
    for (svc, what) in [
        (&cfg.queue_service_name, "qmgr"),
        (&cfg.pickup_service_name, "pickup"),
    ] {
        let known = services.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(svc.as_str()) && matches!(f.next(), Some("unix" | "fifo"))
        });
        if !known {
            out.push(format!(
                "master.cf has no {what} service {svc} of type unix or fifo: released mail waits for Postfix's own scans"
            ));
        }
    }
    // The queue file system: RENAME_NOREPLACE (Assumption A5).
    match Spool::open(cfg.clone()) {
        Ok(spool) if !supports_noreplace(&spool) => out.push(format!(
            "{}: the file system does not support RENAME_NOREPLACE: posthold refuses every move there",
            cfg.queue_directory.display()
        )),
        Ok(_) => {}
        Err(e) => out.push(format!("cannot test the queue file system: {e}")),
    }
    // The queue file format posthold knows: Postfix 3.x.
    let version = get("mail_version");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    if !matches!((parts.next(), parts.next()), (Some(Some(3)), Some(Some(minor))) if minor <= 10) {
        out.push(format!(
            "mail_version = {version}: posthold knows the queue files of Postfix 3.0 to 3.10"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(scanner: &str) -> Vec<String> {
        let r = Rules::parse(&format!(
            "[scanner.s]\ntype = \"command\"\n{scanner}\n[[rule]]\nscan = \"s\"\nexit = [1]\naction = \"quarantine\"\n"
        ))
        .unwrap();
        lint(&r)
    }

    #[test]
    fn fail_open_scanners_and_options_from_senders_are_warned_about() {
        let w = warnings(r#"argv = ["/usr/bin/spamc", "-c"]"#);
        assert!(w.len() == 1 && w[0].contains("spamc without -x"), "{w:?}");
        assert!(warnings(r#"argv = ["/usr/bin/spamc", "-x", "-c"]"#).is_empty());
        let w = warnings(r#"argv = ["/usr/bin/spamassassin"]"#);
        assert!(w.len() == 1 && w[0].contains("without -e"), "{w:?}");
        let w = warnings(r#"argv = ["/bin/check", "{sender}", "{recipients}"]"#);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("{sender} is not after"), "{w:?}");
        assert!(
            warnings(r#"argv = ["/bin/check", "--from={sender}", "--", "{recipients}"]"#)
                .is_empty()
        );
        let w = warnings(r#"argv = ["/bin/check", "{recipients}", "--"]"#);
        assert_eq!(w.len(), 1, "a -- after the addresses does not count: {w:?}");
    }

    #[test]
    fn unscanned_releases_on_what_senders_choose_are_warned_about() {
        let rules = |rule: &str| {
            Rules::parse(&format!(
                "[scanner.s]\ntype = \"command\"\nargv = [\"/bin/true\"]\n[[rule]]\n{rule}\n[[rule]]\nscan = \"s\"\nexit = [1]\naction = \"quarantine\"\n"
            ))
            .unwrap()
        };
        let w = lint(&rules(
            "header = \"X-Deliver-At\"\naction = \"release-at\"\nunscanned = true",
        ));
        assert!(w.len() == 1 && w[0].contains("releases unscanned"), "{w:?}");
        let w = lint(&rules(
            "sender = \"@example\\\\.com$\"\naction = \"release\"\nunscanned = true",
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(lint(&rules("header = \"X-Deliver-At\"\naction = \"release-at\"")).is_empty());
        assert!(
            lint(&rules(
                "min_held = \"7d\"\naction = \"release\"\nunscanned = true"
            ))
            .is_empty()
        );
    }

    #[test]
    fn header_checks_tables_are_read_as_postfix_reads_them() {
        let d = tempfile::tempdir().unwrap();
        let table = |text: &str| {
            let p = d.path().join("t");
            std::fs::write(&p, text).unwrap();
            format!("regexp:{}", p.display())
        };
        let line = "X-Deliver-At: Mon, 1 Jan 2035 00:00:00 +0000";
        assert_eq!(
            holds(&table("/^X-Deliver-At:/ HOLD scheduled/later\n"), line),
            Some(Some(true))
        );
        assert_eq!(
            holds(&table("/^x-deliver-at:/ HOLD\n"), line),
            Some(Some(true)),
            "case-insensitive"
        );
        assert_eq!(
            holds(&table("/^x-deliver-at:/i HOLD\n"), line),
            Some(None),
            "i: case-sensitive"
        );
        assert_eq!(
            holds(&table("/^X-/ DUNNO\n/^X-Deliver-At:/ HOLD\n"), line),
            Some(Some(false)),
            "first match wins"
        );
        assert_eq!(
            holds(&table("|^X-Deliver-At:| HOLD\n"), line),
            Some(Some(true)),
            "any delimiter"
        );
        assert_eq!(
            holds(&table("!/^Subject:/ HOLD\n"), line),
            Some(Some(true)),
            "negation"
        );
        assert_eq!(
            holds(
                &table("if /^Subject:/\n/^X-Deliver-At:/ HOLD\nendif\n"),
                line
            ),
            Some(Some(false)),
            "inside if: not counted"
        );
        assert_eq!(holds("hash:/etc/postfix/x", line), None);
    }
}
