//! The postsuper-style commands: release, hold, requeue, expire, delete,
//! quarantine, restore, and check. Each resolves its targets (queue IDs,
//! `-` for IDs on stdin, or `ALL`), passes every file through the gate
//! ([`crate::queue::spool::Spool::admit`]) and changes it only through the mover
//! ([`crate::queue::relocate`]). Output: one line per message that begins with the
//! queue ID, then a summary; `--json` prints one object per message.
//! Exit status: 0 all done, 1 some skipped, 2 usage or configuration.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};

use crate::error::Fatal;
use crate::queue::relocate::{self, Times};
use crate::queue::spool::{Admitted, Location, QUARANTINE, SEARCH_ORDER, Spool};
use crate::queue::trigger;
use crate::read::list::json_quote;

/// Where `release` sends mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseTo {
    /// Delivery now: mtime now, qmgr scans incoming.
    Incoming,
    /// As `postsuper -H`: mtime now if in the future, qmgr scans deferred.
    Deferred,
    /// Through pickup and cleanup again: a fresh create_time.
    Maildrop,
}

impl ReleaseTo {
    fn queue(self) -> &'static str {
        match self {
            ReleaseTo::Incoming => "incoming",
            ReleaseTo::Deferred => "deferred",
            ReleaseTo::Maildrop => "maildrop",
        }
    }
}

/// A command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Release from hold; `to` overrides the automatic choice; mail older
    /// than `old_after` seconds (default: half its lifetime) is requeued.
    Release {
        /// Forced destination.
        to: Option<ReleaseTo>,
        /// Age threshold for requeueing through maildrop.
        old_after: Option<u64>,
    },
    /// From incoming or deferred into hold.
    Hold,
    /// Into maildrop with mtime now, as `postsuper -r`.
    Requeue,
    /// Add the force-expire bit; with `release`, release to deferred too.
    Expire {
        /// Also release (postsuper -f).
        release: bool,
    },
    /// Delete with logs.
    Delete,
    /// Into posthold's quarantine directory.
    Quarantine,
    /// From quarantine back into hold.
    Restore,
}

impl Action {
    /// The command's name.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Release { .. } => "release",
            Action::Hold => "hold",
            Action::Requeue => "requeue",
            Action::Expire { .. } => "expire",
            Action::Delete => "delete",
            Action::Quarantine => "quarantine",
            Action::Restore => "restore",
        }
    }

    /// Queues this action takes messages from. Never active (a delivery
    /// may be in progress) and never maildrop (not yet through cleanup).
    pub fn sources(&self) -> &'static [&'static str] {
        match self {
            Action::Release { .. } => &["hold"],
            Action::Hold => &["incoming", "deferred"],
            Action::Requeue | Action::Quarantine => &["hold", "incoming", "deferred"],
            Action::Expire { release: true } => &["hold"],
            Action::Expire { release: false } => &["hold", "incoming", "deferred"],
            Action::Delete => &["hold", "incoming", "deferred", QUARANTINE],
            Action::Restore => &[QUARANTINE],
        }
    }
}

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

/// The result for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Queue ID as given or found.
    pub id: String,
    /// Whether the action was done (or would be, with --dry-run).
    pub done: bool,
    /// Queue it was found in.
    pub from: Option<String>,
    /// Queue it went to.
    pub to: Option<String>,
    /// What happened, or why not.
    pub what: String,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
                ids.extend(line.split_whitespace().map(str::to_string));
            }
        } else {
            ids.push(a.clone());
        }
    }
    Ok(Some(ids))
}

/// Which Postfix services to wake after a batch of moves.
#[derive(Debug, Default, Clone, Copy)]
pub struct Triggers {
    /// qmgr: scan incoming.
    pub qmgr_incoming: bool,
    /// qmgr: scan deferred.
    pub qmgr_deferred: bool,
    /// pickup: wake up.
    pub pickup: bool,
}

impl Triggers {
    /// Sends the wake-ups that are due, once each, and clears them.
    pub fn send(&mut self, cfg: &crate::config::Config) {
        if self.qmgr_incoming {
            trigger::kick(cfg, &cfg.queue_service_name, trigger::SCAN_INCOMING);
        }
        if self.qmgr_deferred {
            trigger::kick(cfg, &cfg.queue_service_name, trigger::SCAN_DEFERRED);
        }
        if self.pickup {
            trigger::kick(cfg, &cfg.pickup_service_name, trigger::WAKEUP);
        }
        *self = Triggers::default();
    }
}

/// The smallest age threshold for requeueing through maildrop, whatever
/// the settings say (a lifetime of 0 would give a threshold of 0).
pub const REQUEUE_FLOOR: i64 = 2;

/// Whether a message is itself a copy made by requeueing (pickup keeps the
/// arrival time and gives a fresh create_time): such a message is never
/// requeued again, so mail loops through maildrop at most once.
pub fn is_requeued_copy(env: &queue_format::queue_file::Envelope) -> bool {
    match (env.create_time, env.arrival) {
        (Some(c), Some((t, _))) => c > t.saturating_add(1),
        _ => false,
    }
}

/// Chooses release's destination for an admitted message.
fn release_target(
    spool: &Spool,
    adm: &Admitted,
    to: Option<ReleaseTo>,
    old_after: Option<u64>,
) -> (ReleaseTo, String) {
    if let Some(t) = to {
        return (t, String::new());
    }
    let null_sender = adm.env.sender.as_deref().is_some_and(<[u8]>::is_empty);
    let lifetime = if null_sender {
        spool.cfg.bounce_queue_lifetime
    } else {
        spool.cfg.maximal_queue_lifetime
    };
    let threshold = i64::try_from(old_after.unwrap_or(lifetime / 2))
        .unwrap_or(i64::MAX)
        .max(REQUEUE_FLOOR);
    let age = adm
        .env
        .expiry_base()
        .map_or(0, |t| now_secs().saturating_sub(t));
    // A copy that already went through maildrop goes to incoming: at most
    // one loop, whatever the thresholds.
    if age >= threshold && !is_requeued_copy(&adm.env) {
        (
            ReleaseTo::Maildrop,
            format!(
                " (age {age}s >= {threshold}s: requeued so it cannot expire on its first deferral)"
            ),
        )
    } else {
        (ReleaseTo::Incoming, String::new())
    }
}

/// Applies `action` to the message at `loc`: gate, then mover.
pub fn act(
    spool: &Spool,
    action: &Action,
    loc: &Location,
    opts: RunOpts,
    trig: &mut Triggers,
) -> Outcome {
    let mut out = Outcome {
        id: loc.id.clone(),
        done: false,
        from: Some(loc.queue.clone()),
        to: None,
        what: String::new(),
    };
    if !action.sources().contains(&loc.queue.as_str()) {
        out.what = format!(
            "skipped: in {}, not in {}",
            loc.queue,
            action.sources().join(" or ")
        );
        return out;
    }
    let adm = match spool.admit(loc) {
        Ok(a) => a,
        Err(r) => {
            out.what = format!("skipped: {r}");
            return out;
        }
    };
    let verb = if opts.dry_run { "would be " } else { "" };
    let (dest, times, note): (Option<&str>, Times, String) = match action {
        Action::Release { to, old_after } => {
            let (t, note) = release_target(spool, &adm, *to, *old_after);
            let times = match t {
                ReleaseTo::Deferred => Times::NotInFuture,
                _ => Times::Now,
            };
            (Some(t.queue()), times, note)
        }
        Action::Hold => (Some("hold"), Times::Keep, String::new()),
        Action::Requeue => (Some("maildrop"), Times::Now, String::new()),
        Action::Quarantine => (Some(QUARANTINE), Times::Keep, String::new()),
        Action::Restore => (Some("hold"), Times::Keep, String::new()),
        Action::Expire { release } => {
            if !opts.dry_run
                && let Err(e) = relocate::add_expire_bit(&adm)
            {
                out.what = format!("skipped: {e}");
                return out;
            }
            if *release {
                (Some("deferred"), Times::NotInFuture, String::new())
            } else {
                out.done = true;
                out.what = format!("{verb}marked for return to sender");
                return out;
            }
        }
        Action::Delete => {
            if opts.dry_run {
                out.done = true;
                out.what = "would be deleted".into();
                return out;
            }
            match relocate::delete(spool, adm) {
                Ok(()) => {
                    out.done = true;
                    out.what = "deleted".into();
                }
                Err(e) => out.what = format!("skipped: {e}"),
            }
            return out;
        }
    };
    let dest = dest.expect("BUG: every remaining action moves");
    out.to = Some(dest.to_string());
    if opts.dry_run {
        out.done = true;
        out.what = format!("would be moved to {dest}{note}");
        return out;
    }
    match relocate::move_to(spool, adm, dest, times) {
        Ok(_) => {
            out.done = true;
            out.what = format!("moved to {dest}{note}");
            match dest {
                "incoming" => trig.qmgr_incoming = true,
                "deferred" => trig.qmgr_deferred = true,
                "maildrop" => trig.pickup = true,
                _ => {}
            }
        }
        Err(e) => {
            out.what = if matches!(action, Action::Expire { release: true }) {
                format!("marked for return to sender, not moved: {e}")
            } else {
                format!("skipped: {e}")
            }
        }
    }
    out
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
            o.done,
            opt(&o.from),
            opt(&o.to),
            json_quote(o.what.as_bytes(), true)
        )
    } else {
        // The ID comes first, as in Postfix's logs; unprintable bytes of a
        // hostile argument are shown as '?'.
        let id = String::from_utf8_lossy(&crate::read::list::printable(o.id.as_bytes(), true))
            .into_owned();
        writeln!(out, "{id}: {}", o.what)
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
    if targets.is_none() && *action == Action::Delete && !opts.yes && !opts.dry_run {
        return Err(Fatal::config(
            "delete ALL deletes every message in hold, incoming, deferred and quarantine: add --yes",
        ));
    }
    let locs: Vec<Result<Location, String>> = match targets {
        None => action
            .sources()
            .iter()
            .flat_map(|q| spool.entries(q))
            .map(Ok)
            .collect(),
        Some(ids) => {
            let mut seen = BTreeSet::new();
            ids.into_iter()
                .filter(|id| seen.insert(id.clone()))
                .map(|id| {
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
    // One posthold at a time changes the queue (the daemon waits meanwhile).
    // While the lock is held, output to a pipe is kept in memory: a reader
    // that stops reading (a pager) must not hold the daemon up.
    let mut held_output: Option<Vec<u8>> = (!std::io::stdout().is_terminal()).then(Vec::new);
    let exclusive = if opts.dry_run {
        None
    } else {
        Some(spool.exclusive()?)
    };
    let progress = std::io::stderr().is_terminal() && total >= 1000;
    let mut trig = Triggers::default();
    let (mut done, mut skipped) = (0usize, 0usize);
    let werr = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
    for (i, l) in locs.iter().enumerate() {
        let o = match l {
            Ok(loc) => act(spool, action, loc, opts, &mut trig),
            Err(id) => Outcome {
                id: id.clone(),
                done: false,
                from: None,
                to: None,
                what: if queue_format::queue_id::is_legal(id) {
                    "skipped: no such message".into()
                } else {
                    "skipped: not a legal queue ID".into()
                },
            },
        };
        if o.done {
            done += 1;
        } else {
            skipped += 1;
        }
        // A broken output (`release ALL | head`) must not stop the work
        // half way: the moved mail still needs its wake-up and fsync.
        let target: &mut dyn Write = match held_output.as_mut() {
            Some(b) => b,
            None => &mut *out,
        };
        if write_error.is_none()
            && let Err(e) = print(target, &o, action.name(), opts.json)
        {
            write_error = Some(e);
        }
        if progress && (i + 1) % 1000 == 0 {
            eprint!("\rposthold: {}: {}/{total}", action.name(), i + 1);
        }
    }
    if progress {
        eprintln!();
    }
    if let Err(e) = spool.sync_dirs() {
        eprintln!("posthold: warning: fsync of queue directories: {e}");
    }
    // One wake-up per service, after all moves (Postfix ignores failures).
    trig.send(&spool.cfg);
    drop(exclusive);
    if let Some(b) = held_output.take()
        && write_error.is_none()
        && let Err(e) = out.write_all(&b)
    {
        write_error = Some(e);
    }
    let summary = format!(
        "{}{}: {done} done, {skipped} skipped",
        action.name(),
        if opts.dry_run { " (dry run)" } else { "" }
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
    Ok(if skipped > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_format::queue_file::read_envelope;
    use queue_format::reader::Reader;
    use queue_format::writer::Builder;

    fn env(arrival: i64, create: i64) -> queue_format::queue_file::Envelope {
        let b = Builder::new(arrival, "a@b")
            .create_time(Some(create))
            .recipient("r@x")
            .build();
        read_envelope(&mut Reader::new(std::io::Cursor::new(b)).unwrap()).unwrap()
    }

    #[test]
    fn requeued_copies_are_recognised_so_mail_loops_at_most_once() {
        assert!(
            !is_requeued_copy(&env(1000, 1000)),
            "cleanup writes both in one go"
        );
        assert!(
            !is_requeued_copy(&env(1000, 1001)),
            "a second boundary is not a requeue"
        );
        assert!(
            is_requeued_copy(&env(1000, 1000 + 3600)),
            "pickup keeps T, renews create_time"
        );
    }
}
