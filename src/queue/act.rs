//! The one path to the mover: every change posthold makes to the queue,
//! from a command run by hand or from the daemon, is an [`Action`] applied
//! by [`act`] (gate, then mover) or one of the repairs below. Nothing
//! outside the queue layer can reach the mover.
//!
//! Outcomes are typed ([`Status`]): done, skipped (the gate or the queue
//! refused; nothing changed) or failed (a move went wrong; the error says
//! where the file is now).

use std::fmt;

use super::gate::{Admitted, Gate, Refusal};
use super::relocate::{self, FileState, MoveError, Times};
use super::spool::{Location, QUARANTINE, Spool};
use super::trigger;
use crate::util::now;

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
        // S7: never active, never maildrop.
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

/// Whether to change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Check and act.
    Do,
    /// Check and report what would be done; change nothing.
    DryRun,
}

/// What became of one message.
#[derive(Debug)]
pub struct Outcome {
    /// Queue ID as given or found.
    pub id: String,
    /// Queue it was found in.
    pub from: Option<String>,
    /// Queue it went to (or would go to).
    pub to: Option<String>,
    /// Done, skipped or failed.
    pub status: Status,
}

/// Done, skipped or failed; its `Display` is the command's result text.
#[derive(Debug)]
pub enum Status {
    /// Done (or would be, in a dry run): what was done.
    Done(String),
    /// Not done, nothing changed: why.
    Skipped(Skip),
    /// Something went wrong part way: the error says where the file is.
    Failed(Failure),
}

/// Why a message was skipped. Nothing was changed.
#[derive(Debug)]
pub enum Skip {
    /// Found in a queue the action does not take messages from.
    WrongQueue {
        /// Where it is.
        queue: String,
        /// Where the action takes messages from.
        sources: &'static [&'static str],
    },
    /// The gate refused it (or it is not there).
    Refused(Refusal),
    /// The move found something in its way before it changed anything
    /// (the file raced away, the target name is taken, ...).
    Unchanged(MoveError),
}

/// A change that failed part way: the error says what had changed and
/// where the message is now.
#[derive(Debug)]
pub enum Failure {
    /// The move (or mode change, or delete) failed after changing something.
    Move(MoveError),
    /// expire --release: marked for return to sender, then not moved.
    MarkedNotMoved(MoveError),
}

impl Outcome {
    /// Whether it was done (or would be, in a dry run).
    pub fn done(&self) -> bool {
        matches!(self.status, Status::Done(_))
    }

    /// Whether the message was not there (gone meanwhile, or never was).
    pub fn not_found(&self) -> bool {
        matches!(
            self.status,
            Status::Skipped(Skip::Refused(Refusal::NotFound))
        )
    }

    /// An outcome for an ID that was not found or is not legal.
    pub fn missing(id: &str) -> Outcome {
        Outcome {
            id: id.to_string(),
            from: None,
            to: None,
            status: Status::Skipped(Skip::Refused(if queue_format::queue_id::is_legal(id) {
                Refusal::NotFound
            } else {
                Refusal::IllegalName
            })),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Done(what) => f.write_str(what),
            Status::Skipped(Skip::WrongQueue { queue, sources }) => {
                write!(f, "skipped: in {queue}, not in {}", sources.join(" or "))
            }
            Status::Skipped(Skip::Refused(r)) => write!(f, "skipped: {r}"),
            Status::Skipped(Skip::Unchanged(e)) => write!(f, "skipped: {e}"),
            Status::Failed(Failure::Move(e)) => write!(f, "failed: {e}"),
            Status::Failed(Failure::MarkedNotMoved(e)) => {
                write!(f, "marked for return to sender, not moved: {e}")
            }
        }
    }
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

    /// Notes that a message was moved into `queue`.
    pub fn moved_to(&mut self, queue: &str) {
        match queue {
            "incoming" => self.qmgr_incoming = true,
            "deferred" => self.qmgr_deferred = true,
            "maildrop" => self.pickup = true,
            _ => {}
        }
    }
}

/// The smallest age threshold for requeueing through maildrop, whatever
/// the settings say (a lifetime of 0 would give a threshold of 0).
pub const REQUEUE_FLOOR: i64 = 2;

/// The age (seconds since create_time) from which release sends a
/// message round through maildrop rather than to incoming: `old_after`
/// when given (`--old-after`, the rules' `requeue_after`), else half the
/// message's lifetime (`bounce_queue_lifetime` for the null sender), never
/// below [`REQUEUE_FLOOR`].
pub fn requeue_threshold(
    cfg: &crate::config::Config,
    env: &queue_format::queue_file::Envelope,
    old_after: Option<u64>,
) -> i64 {
    let null_sender = env.sender.as_deref().is_some_and(<[u8]>::is_empty);
    let lifetime = if null_sender {
        cfg.bounce_queue_lifetime
    } else {
        cfg.maximal_queue_lifetime
    };
    i64::try_from(old_after.unwrap_or(lifetime / 2))
        .unwrap_or(i64::MAX)
        .max(REQUEUE_FLOOR)
}

/// Whether a message is itself a copy made by requeueing: pickup keeps the
/// arrival time (`T`) and gives a fresh create_time, and a message is sent
/// round only once it is `threshold` old, so a copy's create_time lies at
/// least `threshold` after its arrival. A message that merely took seconds
/// between arrival and create_time (cleanup opens the file at the first
/// valid RCPT, after DNSBL lookups, policy servers or a slow restriction;
/// or pickup took it from maildrop late) is far below any threshold, and
/// is no copy. Such a copy is never requeued again, so mail loops through
/// maildrop at most once (the gap only grows with each trip).
// S11: mail goes through maildrop at most once.
pub fn is_requeued_copy(env: &queue_format::queue_file::Envelope, threshold: i64) -> bool {
    match (env.create_time, env.arrival) {
        (Some(c), Some((t, _))) => c.saturating_sub(t) >= threshold.max(REQUEUE_FLOOR),
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
    let threshold = requeue_threshold(&spool.cfg, &adm.env, old_after);
    let age = adm.env.expiry_base().map_or(0, |t| now().saturating_sub(t));
    // A copy that already went through maildrop goes to incoming: at most
    // one loop, whatever the thresholds.
    if age >= threshold && !is_requeued_copy(&adm.env, threshold) {
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
    run: Run,
    trig: &mut Triggers,
) -> Outcome {
    act_noted(spool, action, loc, run, trig, &[])
}

/// As [`act`]; a quarantine also keeps `notes` with the message (why,
/// when, by whom: see [`relocate::move_noted`]).
pub fn act_noted(
    spool: &Spool,
    action: &Action,
    loc: &Location,
    run: Run,
    trig: &mut Triggers,
    notes: &[(&str, String)],
) -> Outcome {
    let mut out = Outcome {
        id: loc.id.clone(),
        from: Some(loc.queue.clone()),
        to: None,
        status: Status::Done(String::new()),
    };
    let dry = run == Run::DryRun;
    if !action.sources().contains(&loc.queue.as_str()) {
        out.status = Status::Skipped(Skip::WrongQueue {
            queue: loc.queue.clone(),
            sources: action.sources(),
        });
        return out;
    }
    // S5, S6: the gate first; only then the mover. A dry run takes no
    // lock at all (S6): it must never make qmgr meet one.
    let gate = if dry { Gate::Inspect } else { Gate::Move };
    let adm = match spool.gate(loc, gate) {
        Ok(a) => a,
        Err(r) => {
            out.status = Status::Skipped(Skip::Refused(r));
            return out;
        }
    };
    let verb = if dry { "would be " } else { "" };
    let (dest, times, note): (&str, Times, String) = match action {
        Action::Release { to, old_after } => {
            let (t, note) = release_target(spool, &adm, *to, *old_after);
            let times = match t {
                ReleaseTo::Deferred => Times::NotInFuture,
                _ => Times::Now,
            };
            (t.queue(), times, note)
        }
        Action::Hold => ("hold", Times::Keep, String::new()),
        Action::Requeue => ("maildrop", Times::Now, String::new()),
        Action::Quarantine => (QUARANTINE, Times::Keep, String::new()),
        Action::Restore => ("hold", Times::Keep, String::new()),
        Action::Expire { release } => {
            if !dry && let Err(e) = relocate::add_expire_bit(&adm) {
                out.status = failed(e);
                return out;
            }
            if !*release {
                out.status = Status::Done(format!("{verb}marked for return to sender"));
                return out;
            }
            ("deferred", Times::NotInFuture, String::new())
        }
        Action::Delete => {
            out.status = if dry {
                Status::Done("would be deleted".into())
            } else {
                match relocate::delete(spool, adm) {
                    Ok(()) => Status::Done("deleted".into()),
                    Err(e) => failed(e),
                }
            };
            return out;
        }
    };
    out.to = Some(dest.to_string());
    if dry {
        out.status = Status::Done(format!("would be moved to {dest}{note}"));
        return out;
    }
    let notes = if matches!(action, Action::Quarantine) {
        notes
    } else {
        &[]
    };
    out.status = match relocate::move_noted(spool, adm, dest, times, notes) {
        Ok((_, unnoted)) => {
            trig.moved_to(dest);
            let unnoted = unnoted
                .map(|e| format!(" (its reason not kept: {e})"))
                .unwrap_or_default();
            Status::Done(format!("moved to {dest}{note}{unnoted}"))
        }
        Err(e) if matches!(action, Action::Expire { release: true }) => {
            Status::Failed(Failure::MarkedNotMoved(e))
        }
        Err(e) => failed(e),
    };
    out
}

/// A move error as a status: a skip when the message is still where it was
/// (its mtime perhaps set, which the error says), else a failure that says
/// where the message is now.
fn failed(e: MoveError) -> Status {
    if matches!(e.state(), FileState::Unchanged | FileState::TimesSet) {
        Status::Skipped(Skip::Unchanged(e))
    } else {
        Status::Failed(Failure::Move(e))
    }
}

/// `check --repair` for a file whose name does not match its inode: the
/// gate (all but the name check), then the rename to the ID its inode
/// gives, logs first, as `postsuper -s` does. Returns the new location or
/// what stopped it.
pub fn repair_name(spool: &Spool, loc: &Location) -> Result<Location, String> {
    let adm = spool
        .gate(loc, Gate::RenameToInode)
        .map_err(|r| r.to_string())?;
    // The new ID from the inode of the file actually admitted, not the one
    // seen by an earlier lstat.
    let new_id = id_for_inode(&loc.id, adm.st.st_ino).ok_or("no ID for this name form")?;
    relocate::rename_id(spool, adm, &new_id).map_err(|e| e.to_string())
}

/// `check --repair` for a file in the wrong hash directory: the gate, then
/// a move to where it belongs in the same queue.
pub fn repair_hash_dir(spool: &Spool, loc: &Location) -> Result<Location, String> {
    let adm = spool.admit(loc).map_err(|r| r.to_string())?;
    relocate::move_to(spool, adm, &loc.queue, Times::Keep).map_err(|e| e.to_string())
}

/// Whether the queue's file system supports `RENAME_NOREPLACE` (a probe
/// that changes nothing).
pub fn supports_noreplace(spool: &Spool) -> bool {
    relocate::supports_noreplace(spool)
}

/// Creates posthold's quarantine directory (0700, mail_owner) if missing.
pub fn ensure_quarantine(spool: &Spool) -> Result<(), MoveError> {
    relocate::ensure_quarantine(spool)
}

/// The ID a file's inode gives, in the form of its current name (S3: the
/// only ID posthold ever gives a file).
pub fn id_for_inode(id: &str, inode: u64) -> Option<String> {
    use queue_format::queue_id::{self, Form};
    let d = queue_id::decode(id).ok()?;
    Some(match d.form {
        Form::Short => queue_id::encode_short(d.micros, inode),
        Form::Long => queue_id::encode_long(d.seconds?, d.micros, inode),
    })
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
        let day = 86400;
        assert!(
            !is_requeued_copy(&env(1000, 1000), day),
            "cleanup writes both in one go"
        );
        assert!(
            !is_requeued_copy(&env(1000, 1001), day),
            "a second boundary is not a requeue"
        );
        // Audit defect 1: seconds of lag before cleanup opens the file (a
        // slow RCPT stage) made a message look like a copy.
        assert!(
            !is_requeued_copy(&env(1000, 1000 + 3), day),
            "a slow RCPT stage is not a requeue"
        );
        assert!(
            !is_requeued_copy(&env(1000, 1000 + 600), day),
            "nor a pickup ten minutes late"
        );
        assert!(
            is_requeued_copy(&env(1000, 1000 + 2 * day), day),
            "pickup keeps T, renews create_time: the gap is at least the threshold"
        );
        assert!(
            is_requeued_copy(&env(1000, 1000 + day), day),
            "exactly the threshold"
        );
    }
}
