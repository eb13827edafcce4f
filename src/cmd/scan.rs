//! `posthold scan`: runs the rules file's scanners on queued messages, by
//! hand, and prints what they say and what the daemon would do. Reads
//! only: nothing is moved.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::error::Fatal;
use crate::queue::spool::{Location, Spool};
use crate::rules::{Eval, Rules};

use crate::scan::{Message, Outcome, sanitize};

/// Options of `posthold scan`.
#[derive(Debug, Clone)]
pub struct ScanOpts {
    /// Only this scanner (no rules): its raw result per message.
    pub scanner: Option<String>,
    /// Messages scanned at once (default: the scanner's concurrency).
    pub jobs: Option<usize>,
}

fn locations(spool: &Spool, ids: &[String]) -> Result<(Vec<Location>, Vec<String>), Fatal> {
    let mut missing = Vec::new();
    let locs = match crate::queue::act::read_targets(ids)? {
        None => spool.entries("hold"),
        Some(ids) => ids
            .into_iter()
            .filter_map(|id| {
                let l = spool.locate(&id, &["hold", "incoming", "active", "deferred"]);
                if l.is_none() {
                    missing.push(id);
                }
                l
            })
            .collect(),
    };
    Ok((locs, missing))
}

/// One message through the rules, scanning as they ask: a line of output
/// and whether every scan it needed succeeded.
fn judge(cfg: &Config, rules: &Rules, loc: &Location, stop: &AtomicBool) -> (String, bool) {
    let Some((_, facts, _, _)) = crate::daemon::facts_of(cfg, loc, u64::MAX / 2) else {
        return (format!("{}: not readable or not committed", loc.id), false);
    };
    let path = cfg.queue_directory.join(loc.path());
    let mut results: Vec<(usize, Outcome)> = Vec::new();
    let mut said = Vec::new();
    loop {
        match rules.evaluate(&facts, &results) {
            Eval::Rule(None) => {
                said.push("would keep (no rule)".into());
                return (format!("{}: {}", loc.id, said.join(", ")), true);
            }
            Eval::Rule(Some(r)) => {
                said.push(format!(
                    "would {} (rule {})",
                    match &r.verdict {
                        crate::rules::Verdict::ReleaseAt(h) => format!("release at {h}"),
                        v => v.name().to_string(),
                    },
                    r.name
                ));
                return (format!("{}: {}", loc.id, said.join(", ")), true);
            }
            Eval::Hold(reason) => {
                said.push(format!("would keep ({reason})"));
                return (format!("{}: {}", loc.id, said.join(", ")), true);
            }
            Eval::Scan(si) => {
                let sc = &rules.scanners[si];
                let r = Message::open(&path, &loc.id, None, false).and_then(|m| sc.scan(&m, stop));
                match r {
                    Ok(o) => {
                        said.push(format!("{}: {}", sc.name, o.describe()));
                        results.push((si, o));
                    }
                    Err(f) => {
                        said.push(format!(
                            "{}: failed: {}; would keep and retry",
                            sc.name, f.what
                        ));
                        return (format!("{}: {}", loc.id, said.join(", ")), false);
                    }
                }
            }
        }
    }
}

/// Runs `posthold scan`; exit 1 when a scan failed or an ID was not found.
pub fn run(
    spool: &Spool,
    rules: Rules,
    ids: &[String],
    opts: &ScanOpts,
    out: &mut dyn Write,
) -> Result<i32, Fatal> {
    if rules.scanners.is_empty() {
        return Err(Fatal::config("the rules file defines no [scanner.NAME]"));
    }
    let only = match &opts.scanner {
        None => None,
        Some(n) => Some(
            rules
                .scanner(n)
                .ok_or_else(|| Fatal::config(format!("no scanner {n:?} in the rules file")))?,
        ),
    };
    let (locs, missing) = locations(spool, ids)?;
    let jobs = opts
        .jobs
        .unwrap_or_else(|| only.map_or(1, |i| rules.scanners[i].concurrency))
        .clamp(1, 256);
    let next = AtomicUsize::new(0);
    let lines: Mutex<Vec<Option<(String, bool)>>> = Mutex::new(vec![None; locs.len()]);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let cfg = &spool.cfg;
    let qd = &cfg.queue_directory;
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(loc) = locs.get(i) else { return };
                    let line = match only {
                        Some(si) => {
                            let sc = &rules.scanners[si];
                            let r = Message::open(&qd.join(loc.path()), &loc.id, None, false)
                                .and_then(|m| sc.scan(&m, &stop));
                            match r {
                                Ok(o) => {
                                    (format!("{}: {}: {}", loc.id, sc.name, o.describe()), true)
                                }
                                Err(f) => (
                                    format!("{}: {}: failed: {}", loc.id, sc.name, f.what),
                                    false,
                                ),
                            }
                        }
                        None => judge(cfg, &rules, loc, &stop),
                    };
                    lines.lock().expect("BUG: lines poisoned")[i] = Some(line);
                }
            });
        }
    });
    let mut status = 0;
    let w = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
    for l in lines.into_inner().expect("BUG: lines poisoned") {
        let (text, ok) = l.unwrap_or(("(not scanned)".into(), false));
        if !ok {
            status = 1;
        }
        writeln!(out, "{text}").map_err(w)?;
    }
    for id in missing {
        writeln!(out, "{}: no such message", sanitize(id.as_bytes(), 64)).map_err(w)?;
        status = 1;
    }
    Ok(status)
}
