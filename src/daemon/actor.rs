//! The scheduler's hands: carries out a [`Decision`] through
//! [`crate::queue::act`] (gate, then mover) under the queue lock (S11),
//! logs it and counts it. Wake-ups for qmgr and pickup and directory fsyncs
//! are batched ([`Actor::flush`]).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::decision::Decision;
use super::logger::Logger;
use super::metrics::Shared;
use crate::queue::act::{self, Action, Run, Triggers};
use crate::queue::spool::Spool;
use crate::rules::Verdict;
use crate::util::{now, now_ms, rfc3339};

/// What became of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Performed {
    /// Done, or nothing left to do (gone from hold meanwhile, or a keep).
    Done,
    /// Not done, the message is still held (locked, raced, stopping):
    /// the caller schedules a retry.
    Failed,
}

/// Acts on decisions.
pub struct Actor {
    /// The queue.
    pub spool: Spool,
    log: Logger,
    metrics: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    trig: Triggers,
}

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
            Verdict::Requeue if d.requeued_copy => {
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
        let o = match self.spool.exclusive_until(&self.stop) {
            Ok(Some(_guard)) => act::act(&self.spool, &action, &d.loc, Run::Do, &mut self.trig),
            Ok(None) => return Performed::Failed, // stopping: the next start decides again
            Err(e) => {
                self.log
                    .log(&format!("{}: {} not done: {e}", d.loc.id, action.name()));
                return Performed::Failed;
            }
        };
        if o.not_found() {
            return Performed::Done; // gone from hold meanwhile (released, or moved by postsuper)
        }
        {
            let mut m = self.metrics.lock().expect("BUG: metrics lock poisoned");
            if o.done() {
                if let Some(due) = d.due {
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
        self.log.log(&format!(
            "{}: {}, {}{due}, held={held}s: {}",
            d.loc.id,
            action.name(),
            d.reason,
            o.status
        ));
        if o.done() {
            Performed::Done
        } else {
            Performed::Failed
        }
    }

    /// Sends the wake-ups due after a batch of actions, fsyncs the
    /// directories the batch changed, and flushes the log.
    pub fn flush(&mut self) {
        if self.trig.qmgr_incoming || self.trig.qmgr_deferred || self.trig.pickup {
            self.trig.send(&self.spool.cfg);
            let _ = self.spool.sync_dirs();
            self.log.flush();
        }
    }
}
