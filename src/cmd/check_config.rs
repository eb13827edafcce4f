//! `posthold check-config [RULES]`: loads the rules file (or the default
//! rules), reports its errors naming the rule or scanner and the field, and
//! prints the rules, scanners and settings as posthold understands them.

use std::io::Write;

use crate::error::Fatal;
use crate::rules::Rules;
use crate::scan::ScannerKind;

/// Prints the rules `r`; exit 0.
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
    Ok(0)
}
