//! `posthold check-config [RULES]`: loads the rules file (or the default
//! rules), reports its errors naming the rule or scanner and the field, and
//! prints the rules, scanners and settings as posthold understands them.

use std::io::Write;

use crate::error::Fatal;
use crate::rules::Rules;
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
        let ScannerKind::Command { argv, .. } = &sc.kind else {
            continue;
        };
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
}
