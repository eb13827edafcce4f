//! The scheduler's hands: carries out a [`Decision`] through
//! [`crate::queue::act`] (gate, then mover) under the queue lock (S11),
//! counts it, and logs it once it is durable: directory fsyncs, log lines
//! and wake-ups for qmgr and pickup are batched ([`Actor::flush`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::decision::Decision;
use super::logger::Logger;
use super::metrics::Shared;
use super::scheduler::Failed;
use crate::queue::MoveErrorKind;
use crate::queue::act::{self, Action, Run, Skip, Status, Triggers};
use crate::queue::gate::Refusal;
use crate::queue::spool::Spool;
use crate::rules::Verdict;
use crate::util::{now, now_ms, rfc3339};

/// What became of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Performed {
    /// Done, or nothing left to do (gone from hold meanwhile, or a keep).
    Done,
    /// Not done, the message is still held: the caller schedules a retry
    /// and logs `line` when the scheduler says the failure is news.
    Failed {
        /// What went wrong (the part that stays the same between tries).
        why: String,
        /// The log line, if there is one to log.
        line: Option<String>,
        /// Whether it may heal by itself.
        kind: Failed,
    },
}

/// Acts on decisions.
pub struct Actor {
    /// The queue.
    pub spool: Spool,
    log: Logger,
    metrics: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    trig: Triggers,
    /// Lines of moves done, logged once the moves are durable.
    pending: Vec<String>,
    /// Arrival times (`T`) of the messages this daemon requeued, with when:
    /// a copy keeps `T`, so a rule that requeues never sends the copy round
    /// again, however young it is (by age alone a copy made seconds after
    /// arrival cannot be told from mail with a slow RCPT stage).
    sent_round: HashMap<(i64, i64), i64>,
}

/// How long the daemon remembers what it requeued (pickup takes a copy
/// within a minute; a week covers a stopped Postfix).
const SENT_ROUND_MEMORY: i64 = 7 * 86400;

impl Actor {
    /// An actor on `spool`.
    pub fn new(
        spool: Spool,
        log: Logger,
        metrics: Arc<Mutex<Shared>>,
        stop: Arc<AtomicBool>,
    ) -> Actor {
        Actor {
            spool,
            log,
            metrics,
            stop,
            trig: Triggers::default(),
            pending: Vec::new(),
            sent_round: HashMap::new(),
        }
    }

    /// Carries out `d`; `requeue_after` is the rules' threshold for
    /// releasing old mail through maildrop.
    pub fn perform(&mut self, d: &Decision, requeue_after: Option<u64>) -> Performed {
        let action = match &d.verdict {
            Verdict::Release | Verdict::ReleaseAt(_) => Action::Release {
                to: None,
                old_after: requeue_after,
            },
            // A rule that requeues while header_checks holds the copy again
            // would loop: never requeue mail that is itself a fresh copy.
            Verdict::Requeue
                if d.requeued_copy
                    || d.arrival.is_some_and(|a| self.sent_round.contains_key(&a)) =>
            {
                self.log.log(&format!(
                    "{}: keep, reason=requeue-loop-guard, {}",
                    d.loc.id, d.reason
                ));
                return Performed::Done;
            }
            Verdict::Requeue => Action::Requeue,
            Verdict::Expire => Action::Expire { release: true },
            Verdict::Quarantine => Action::Quarantine,
            Verdict::Keep => return Performed::Done,
        };
        // S11: the daemon changes the queue only here, through queue::act
        // (gate, then mover), under the queue lock (S6): it waits for a
        // command run by hand to finish.
        // Why, when and by whom, kept with a quarantined message.
        let label = d.reason.label().into_owned();
        let text = d.reason.to_string();
        let detail = text
            .strip_prefix(&format!("reason={label}"))
            .map(|r| r.trim_start_matches(", ").to_string())
            .unwrap_or(text);
        let notes = [
            ("reason", label),
            ("detail", detail),
            ("by", "posthold watch".to_string()),
        ];
        let o = match self.spool.exclusive_until(&self.stop) {
            Ok(Some(_guard)) => act::act_noted(
                &self.spool,
                &action,
                &d.loc,
                Run::Do,
                &mut self.trig,
                &notes,
            ),
            // Stopping: the next start decides again.
            Ok(None) => {
                return Performed::Failed {
                    why: "stopping".into(),
                    line: None,
                    kind: Failed::Transient,
                };
            }
            Err(e) => {
                return Performed::Failed {
                    why: e.to_string(),
                    line: Some(format!("{}: {} not done: {e}", d.loc.id, action.name())),
                    kind: Failed::Transient,
                };
            }
        };
        if o.not_found() {
            return Performed::Done; // gone from hold meanwhile (released, or moved by postsuper)
        }
        {
            let mut m = self.metrics.lock().expect("BUG: metrics lock poisoned");
            if o.done() {
                // Lateness is posthold's: only for a due time that came
                // while the daemon ran and after the message was committed
                // (not a sender's date already past, not downtime).
                if let Some(due) = d.due
                    && due * 1_000_000 >= m.started_us.max(d.committed_us)
                {
                    m.record_lateness((now_ms() - due * 1000).max(0) as u64 * 1000);
                }
                *m.actions
                    .entry((action.name().to_string(), d.reason.label().into_owned()))
                    .or_insert(0) += 1;
            } else {
                m.errors += 1;
            }
        }
        let due = d
            .due
            .map(|t| format!(", due={}", rfc3339(t)))
            .unwrap_or_default();
        let held = d.held as i64 + (now() - d.decided).max(0);
        let line = format!(
            "{}: {}, {}{due}, held={held}s: {}",
            d.loc.id,
            action.name(),
            d.reason,
            o.status
        );
        if o.done() {
            if action == Action::Requeue
                && let Some(a) = d.arrival
            {
                let now = now();
                self.sent_round.retain(|_, t| now - *t < SENT_ROUND_MEMORY);
                self.sent_round.insert(a, now);
            }
            // Reported once durable (Actor::flush).
            self.pending.push(line);
            return Performed::Done;
        }
        Performed::Failed {
            why: o.status.to_string(),
            line: Some(line),
            kind: lasting_or_not(&o.status),
        }
    }

    /// Makes the batch's moves durable (fsync of every directory they
    /// changed), only then logs them, and sends the wake-ups they need.
    pub fn flush(&mut self) {
        if let Err(e) = self.spool.sync_dirs() {
            self.log
                .log(&format!("warning: fsync of queue directories: {e}"));
        }
        for line in self.pending.drain(..) {
            self.log.log(&line);
        }
        if self.trig.qmgr_incoming || self.trig.qmgr_deferred || self.trig.pickup {
            self.trig.send(&self.spool.cfg);
        }
        self.log.flush();
    }
}

/// Whether a failure may heal by itself: a lock, a race or a file not yet
/// committed may; two links, a wrong owner, a name that does not match its
/// inode, damaged records or a directory that cannot be made do not.
fn lasting_or_not(status: &Status) -> Failed {
    match status {
        Status::Skipped(Skip::Refused(
            Refusal::Flocked | Refusal::FcntlLocked(_) | Refusal::NotReady(_) | Refusal::NotFound,
        )) => Failed::Transient,
        Status::Skipped(Skip::Unchanged(e)) if *e.kind() == MoveErrorKind::Raced => {
            Failed::Transient
        }
        _ => Failed::Lasting,
    }
}
