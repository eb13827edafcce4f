//! The postsuper-style commands: release, hold, requeue, expire, delete,
//! quarantine and restore. Each resolves its targets (queue IDs, `-` for
//! IDs on stdin, or `ALL`) and applies its action to each through
//! [`crate::queue::act`] (gate, then mover). Output: one line per message
//! that begins with the queue ID, then a summary; `--json` prints one
//! object per message. Exit status: 0 all done, 1 some skipped, 2 usage or
//! configuration.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};

use crate::error::Fatal;
use crate::queue::act::{Action, Outcome, Run, Status, Triggers, act_noted};
use crate::queue::spool::{Location, SEARCH_ORDER, Spool};
use crate::util::{json_quote, printable};

/// Options shared by the commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOpts {
    /// Check and report, change nothing.
    pub dry_run: bool,
    /// One JSON object per message.
    pub json: bool,
    /// Confirms `delete ALL`.
    pub yes: bool,
}

impl RunOpts {
    /// Whether to change anything.
    pub fn run(&self) -> Run {
        if self.dry_run { Run::DryRun } else { Run::Do }
    }
}

/// The notes of a quarantine by hand (none for other actions).
fn quarantine_notes(action: &Action) -> Vec<(&'static str, String)> {
    if !matches!(action, Action::Quarantine) {
        return Vec::new();
    }
    let uid = nix::unistd::getuid();
    let who = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or(String::new(), |u| format!(" ({})", u.name));
    vec![
        ("reason", "command".to_string()),
        ("detail", "posthold quarantine, by hand".to_string()),
        ("by", format!("posthold quarantine, uid {uid}{who}")),
    ]
}

/// Reads the target list: `ALL`, `-` (IDs on stdin, one per line or
/// separated by blanks), or IDs. `None` means ALL.
pub fn read_targets(args: &[String]) -> Result<Option<Vec<String>>, Fatal> {
    if args.is_empty() {
        return Err(Fatal::config(
            "no queue IDs given (use IDs, - for stdin, or ALL)",
        ));
    }
    if args.iter().any(|a| a == "ALL") {
        if args.len() > 1 {
            return Err(Fatal::config("ALL cannot be combined with queue IDs"));
        }
        return Ok(None);
    }
    let mut ids = Vec::new();
    for a in args {
        if a == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| Fatal::config(format!("stdin: {e}")))?;
                ids.extend(line.split_whitespace().map(unmark));
            }
        } else {
            ids.push(unmark(a));
        }
    }
    Ok(Some(ids))
}

/// A queue ID as mailq shows it, without its status marks (`*` active or
/// `!` on hold, then `#` marked for return): `mailq | awk '{print $1}'`
/// gives IDs posthold takes.
fn unmark(id: &str) -> String {
    let id = id.strip_suffix('#').unwrap_or(id);
    id.strip_suffix(['*', '!']).unwrap_or(id).to_string()
}

fn print(out: &mut dyn Write, o: &Outcome, action: &str, json: bool) -> std::io::Result<()> {
    if json {
        let opt = |v: &Option<String>| match v {
            Some(s) => format!("\"{}\"", json_quote(s.as_bytes(), true)),
            None => "null".into(),
        };
        writeln!(
            out,
            "{{\"queue_id\": \"{}\", \"action\": \"{action}\", \"done\": {}, \"from\": {}, \"to\": {}, \"result\": \"{}\"}}",
            json_quote(o.id.as_bytes(), true),
            o.done(),
            opt(&o.from),
            opt(&o.to),
            json_quote(o.status.to_string().as_bytes(), true)
        )
    } else {
        // The ID comes first, as in Postfix's logs; unprintable bytes of a
        // hostile argument are shown as '?'.
        let id = String::from_utf8_lossy(&printable(o.id.as_bytes(), true)).into_owned();
        writeln!(out, "{id}: {}", o.status)
    }
}

/// Runs a command over its targets; returns the exit status.
pub fn run(
    spool: &Spool,
    action: &Action,
    args: &[String],
    opts: RunOpts,
    out: &mut dyn Write,
) -> Result<i32, Fatal> {
    let targets = read_targets(args)?;
    // S10: delete ALL only when confirmed.
    if targets.is_none() && *action == Action::Delete && !opts.yes && !opts.dry_run {
        return Err(Fatal::config(
            "delete ALL deletes every message in hold, incoming, deferred and quarantine: add --yes",
        ));
    }
    // S6: the queue lock for the whole run (the daemon waits meanwhile),
    // taken before the targets are looked up, so that what is chosen and
    // what is acted on are the same messages. A dry run takes no lock.
    // A quarantine by hand says so, and who did it (the name looked up
    // before the lock: a slow name service must not hold the daemon up).
    let notes = quarantine_notes(action);
    let exclusive = if opts.dry_run {
        None
    } else {
        Some(spool.exclusive()?)
    };
    let locs: Vec<Result<Location, String>> = match targets {
        // A queue that cannot be read is an error, never "0 done".
        None => {
            let mut all = Vec::new();
            for q in action.sources() {
                all.extend(
                    spool
                        .entries(q)
                        .map_err(|e| Fatal::runtime(e.to_string()))?
                        .into_iter()
                        .map(Ok),
                );
            }
            all
        }
        Some(ids) => {
            let mut seen = BTreeSet::new();
            ids.into_iter()
                .filter(|id| seen.insert(id.clone()))
                .map(|id| {
                    // S9: only a legal ID becomes a path.
                    if !queue_format::queue_id::is_legal(&id) {
                        return Err(id);
                    }
                    spool.locate(&id, SEARCH_ORDER).ok_or(id)
                })
                .collect()
        }
    };
    let total = locs.len();
    let mut write_error: Option<std::io::Error> = None;
    // Output is kept in memory until the moves are durable (the
    // directories fsynced), and the queue lock is released: a reader that
    // stops reading (a pager) must not hold the daemon up, and no line
    // says "moved" before a power loss could no longer undo it.
    let mut held_output: Vec<u8> = Vec::new();
    let progress = std::io::stderr().is_terminal() && total >= 1000;
    let mut trig = Triggers::default();
    let (mut done, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    let werr = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
    // S8: each message is one independent action (a rename); no journal,
    // no state: a rerun after a crash decides again from the spool.
    for (i, l) in locs.iter().enumerate() {
        let o = match l {
            Ok(loc) => act_noted(spool, action, loc, opts.run(), &mut trig, &notes),
            Err(id) => Outcome::missing(id),
        };
        match o.status {
            Status::Done(_) => done += 1,
            Status::Skipped(_) => skipped += 1,
            Status::Failed(_) => failed += 1,
        }
        // Into memory: cannot fail.
        let _ = print(&mut held_output, &o, action.name(), opts.json);
        if progress && (i + 1) % 1000 == 0 {
            eprint!("\rposthold: {}: {}/{total}", action.name(), i + 1);
        }
    }
    if progress {
        eprintln!();
    }
    // S13: the moves are durable before any line says so; if the fsync
    // fails, the lines say what was done and the exit status that it may
    // not survive a power loss.
    let synced = spool.sync_dirs();
    if let Err(e) = &synced {
        eprintln!("posthold: fsync of {e}: the moves may not survive a power loss");
    }
    // One wake-up per service, after all moves (Postfix ignores failures).
    trig.send(&spool.cfg);
    drop(exclusive);
    // A broken output (`release ALL | head`) did not stop the work half
    // way: the moved mail got its wake-up and fsync above.
    if let Err(e) = out.write_all(&held_output) {
        write_error = Some(e);
    }
    let summary = format!(
        "{}{}: {done} done, {skipped} skipped{}",
        action.name(),
        if opts.dry_run { " (dry run)" } else { "" },
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    if let Some(e) = write_error {
        eprintln!("posthold: {summary}");
        return Err(werr(e));
    }
    if opts.json {
        eprintln!("posthold: {summary}");
    } else {
        writeln!(out, "{summary}").map_err(werr)?;
    }
    out.flush().map_err(werr)?;
    Ok(if skipped + failed > 0 || synced.is_err() {
        1
    } else {
        0
    })
}
