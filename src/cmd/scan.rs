//! `posthold scan`: runs the rules file's scanners on queued messages, by
//! hand, and prints what they say and what the daemon would do. Reads
//! only: nothing is moved.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::moves::read_targets;
use crate::config::Config;
use crate::error::Fatal;
use crate::queue::spool::{Location, Spool};
use crate::read::message::{Headers, Message, facts_of};
use crate::rules::{Judgement, Reason, Rules};
use crate::scan::{Answer, Failure, sanitize};
use crate::util::{now, rfc3339};

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
    let locs = match read_targets(ids)? {
        None => spool
            .entries("hold")
            .map_err(|e| Fatal::runtime(e.to_string()))?,
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
/// and whether every scan it needed succeeded. The decision is the
/// daemon's own ([`Rules::judge`]), due dates included.
fn judge(
    cfg: &Config,
    root: BorrowedFd<'_>,
    rules: &Rules,
    loc: &Location,
    stop: &AtomicBool,
) -> (String, bool) {
    let facts = match facts_of(cfg, root, loc, rules.requeue_after) {
        Ok(held) => held.facts,
        Err(u) if u.damaged().is_some() => {
            return (format!("{}: would keep (unreadable: {u})", loc.id), false);
        }
        Err(_) => return (format!("{}: not readable or not committed", loc.id), false),
    };
    let mut results: Vec<(usize, Answer)> = Vec::new();
    let mut said = Vec::new();
    loop {
        match rules.judge(&facts, &results, now()) {
            Judgement::Ruled(r) => {
                let what = match r.due {
                    Some(t) => format!("release at {}", rfc3339(t)),
                    None => r.verdict.name().to_string(),
                };
                let why = match &r.reason {
                    Reason::NoRule => "no rule".to_string(),
                    Reason::Rule { rule } => format!("rule {rule}"),
                    other => other.to_string(),
                };
                said.push(format!("would {what} ({why})"));
                return (format!("{}: {}", loc.id, said.join(", ")), true);
            }
            Judgement::Scan(si) => {
                let sc = &rules.scanners[si];
                let r = Message::open(root, &loc.path(), &loc.id, None, Headers::Skip)
                    .map_err(Failure::from)
                    .and_then(|m| sc.scan(&m, stop));
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
    let root = spool.root.as_fd();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(loc) = locs.get(i) else { return };
                    let line = match only {
                        Some(si) => {
                            let sc = &rules.scanners[si];
                            let r = Message::open(root, &loc.path(), &loc.id, None, Headers::Skip)
                                .map_err(Failure::from)
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
                        None => judge(cfg, root, &rules, loc, &stop),
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
