//! `posthold check [--repair]`: a read-only audit of the queue, and with
//! `--repair` the fixes `postsuper -s` would make, done through the mover.
//!
//! Reported: names that are not legal queue IDs (temporary files older than
//! the threshold), entries that are not regular files, files not ready for
//! longer than the threshold, names that do not match their inode, files at
//! the wrong hash depth, files with more than one link, and files whose
//! records are incomplete. Repaired: wrong hash depth (moved to the right
//! directory) and name/inode mismatch (renamed to the inode's ID, logs
//! first), each only after the gate admits the file. Nothing else is
//! touched: uncommitted files may still be written, and deleting is never
//! a repair.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use queue_format::queue_id;

use crate::error::Fatal;
use crate::queue::act;
use crate::queue::gate::Refusal;
use crate::queue::spool::{Location, QUARANTINE, Spool};
use crate::queue::walk::{Descend, walk};
use crate::util::{json_quote, now};

/// Queues `check` audits.
pub const CHECKED: &[&str] = &[
    "maildrop", "incoming", "active", "deferred", "hold", QUARANTINE,
];

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Path relative to the queue directory.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// What --repair did, if anything.
    pub repaired: Option<String>,
}

/// Whether `check` repairs what it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Report only; take no lock, change nothing.
    No,
    /// Repair names and hash directories through the mover.
    Yes,
}

/// Audits the spool; repairs when asked.
pub fn check(spool: &Spool, repair: Repair, not_ready_after: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    for &queue in CHECKED {
        for found in walk(&spool.cfg, queue, Descend::for_queue(&spool.cfg, queue)) {
            // A directory that cannot be read is a finding, never a silent
            // all-clear (a quarantine not made yet is no finding).
            let found = match found {
                Ok(f) => f,
                Err(e) if e.error.kind() == std::io::ErrorKind::NotFound && queue == QUARANTINE => {
                    break;
                }
                Err(e) => {
                    out.push(Finding {
                        path: e.path.strip_prefix(&spool.cfg.queue_directory).map_or_else(
                            |_| e.path.display().to_string(),
                            |p| p.display().to_string(),
                        ),
                        problem: format!("cannot read: {}", e.error),
                        repaired: None,
                    });
                    continue;
                }
            };
            if found.is_hash_dir() {
                continue;
            }
            let name = found.name.to_string_lossy().into_owned();
            let path = found.rel();
            let dir = found.dir.clone();
            let Ok(meta) = std::fs::symlink_metadata(&found.path) else {
                continue;
            };
            let age = now() - meta.mtime();
            let mut report = |problem: String, repaired: Option<String>| {
                out.push(Finding {
                    path: path.clone(),
                    problem,
                    repaired,
                })
            };
            if !queue_id::is_legal(&name) {
                // Temporary names are normal while cleanup or postdrop
                // writes; only old ones are worth a line.
                if age > not_ready_after as i64 {
                    report(format!("illegal name, {age}s old"), None);
                }
                continue;
            }
            if !meta.file_type().is_file() {
                report("not a regular file".into(), None);
                continue;
            }
            if meta.mode() & 0o700 != 0o700 {
                if age > not_ready_after as i64 {
                    report(
                        format!("not ready (mode {:04o}) for {age}s", meta.mode() & 0o7777),
                        None,
                    );
                }
                continue;
            }
            if meta.nlink() > 1 {
                report(format!("{} links", meta.nlink()), None);
            }
            if queue == "maildrop" || queue == QUARANTINE {
                continue;
            }
            let loc = Location {
                queue: queue.to_string(),
                dir: dir.clone(),
                id: name.clone(),
            };
            if queue_id::decode(&name).is_err() {
                report("name is not a queue ID in short or long form".into(), None);
                continue;
            }
            let repairs = repair == Repair::Yes && queue != "active";
            if !queue_id::matches_inode(&name, meta.ino()) {
                let fix = repairs.then(|| match act::repair_name(spool, &loc) {
                    Ok(l) => format!("renamed to {}", l.path()),
                    Err(e) => format!("not repaired: {e}"),
                });
                report(format!("name does not match inode {}", meta.ino()), fix);
                continue;
            }
            let want = spool.queue_dir(queue, &name);
            if want != dir {
                let fix = repairs.then(|| match act::repair_hash_dir(spool, &loc) {
                    Ok(l) => format!("moved to {}", l.path()),
                    Err(e) => format!("not repaired: {e}"),
                });
                report(format!("wrong hash directory (belongs in {want})"), fix);
                continue;
            }
            if queue != "active"
                && let Err(r) = spool.inspect(&loc)
                && matches!(r, Refusal::Corrupt(_) | Refusal::WrongOwner(_))
            {
                report(r.to_string(), None);
            }
        }
    }
    out
}

/// Runs `posthold check`; exit 0 when nothing was found, 1 otherwise.
pub fn run(
    spool: &Spool,
    repair: Repair,
    not_ready_after: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32, Fatal> {
    let exclusive = if repair == Repair::Yes {
        Some(spool.exclusive()?)
    } else {
        None
    };
    let findings = check(spool, repair, not_ready_after);
    let synced = spool.sync_dirs();
    // Printed after the queue lock is released: a stalled reader (a pager)
    // must not hold up the daemon.
    drop(exclusive);
    if let Err(e) = synced {
        eprintln!("posthold: warning: fsync of queue directories: {e}");
    }
    let werr = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
    for f in &findings {
        let line = if json {
            format!(
                "{{\"path\": \"{}\", \"problem\": \"{}\", \"repaired\": {}}}",
                json_quote(f.path.as_bytes(), true),
                json_quote(f.problem.as_bytes(), true),
                f.repaired.as_ref().map_or("null".to_string(), |r| format!(
                    "\"{}\"",
                    json_quote(r.as_bytes(), true)
                ))
            )
        } else {
            match &f.repaired {
                Some(r) => format!("{}: {}: {r}", f.path, f.problem),
                None => format!("{}: {}", f.path, f.problem),
            }
        };
        writeln!(out, "{line}").map_err(werr)?;
    }
    let summary = format!("check: {} finding(s)", findings.len());
    if json {
        eprintln!("posthold: {summary}");
    } else {
        writeln!(out, "{summary}").map_err(werr)?;
    }
    Ok(if findings.is_empty() { 0 } else { 1 })
}
