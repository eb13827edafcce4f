//! The scheduler thread's loop: decisions in, due times out, SIGHUP
//! reloads and forgetting mail that left hold. It owns the
//! [`Scheduler`] (what is due when) and the [`Actor`] (the mover's only
//! caller in the daemon); each event is one method.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::actor::{Actor, Performed};
use super::board::Board;
use super::decision::{Brain, Decision, Work};
use super::logger::Logger;
use super::parser::look;
use super::scanners::{RunsAs, ScanCtx, check_scanner_users, start_scanners};
use super::scheduler::{Due, Scheduler};
use crate::error::Fatal;
use crate::queue::spool::Location;
use crate::rules::Rules;
use crate::util::{now, now_ms};

/// Everything the loop works with.
pub struct Events {
    /// What is due when.
    pub sched: Scheduler,
    /// Acts on decisions.
    pub actor: Actor,
    /// The rules in force.
    pub brain: Arc<RwLock<Brain>>,
    /// Scan results.
    pub board: Arc<Board>,
    /// The log.
    pub log: Logger,
    /// Decisions from the parsers and scan workers.
    pub decisions: Receiver<Decision>,
    /// Sends messages back to the parsers (retry times that came).
    pub relook: Sender<Work>,
    /// SIGTERM/SIGINT.
    pub stop: Arc<AtomicBool>,
    /// SIGHUP.
    pub hup: Arc<AtomicBool>,
    /// Asks the watcher for a full scan.
    pub rescan: Arc<AtomicBool>,
    /// The parser threads (all gone means a panic).
    pub parsers: Vec<JoinHandle<()>>,
    /// The scan workers' context and threads.
    pub scan_ctx: Arc<ScanCtx>,
    /// Scan worker threads.
    pub scan_threads: Vec<JoinHandle<()>>,
    /// The rules file.
    pub rules_path: Option<PathBuf>,
    /// The users the launcher may start command scanners as.
    pub launcher_users: Vec<(u32, u32)>,
    /// Whom the daemon runs as.
    pub runs_as: RunsAs,
    /// How often to forget mail that left hold.
    pub gc_interval: Duration,
}

impl Events {
    /// Runs until SIGTERM; `Err` when every parser thread died.
    pub fn run(&mut self) -> Result<(), Fatal> {
        let mut next_gc = Instant::now() + self.gc_interval;
        let mut next_stuck = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            self.sched.publish();
            // A walk of the scan state: every few seconds, not every turn.
            if Instant::now() >= next_stuck {
                self.sched.publish_stuck(self.board.stuck());
                next_stuck = Instant::now() + Duration::from_secs(5);
            }
            if Instant::now() >= next_gc {
                self.forget_gone();
                next_gc = Instant::now() + self.gc_interval;
            }
            if self.hup.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            if crate::scan::launcher::lost() {
                // Command scanners can no longer run: stop, so that the
                // service manager starts posthold again with a new one.
                self.actor.flush();
                return Err(Fatal::runtime(
                    "the scanner launcher is gone: stopping (command scanners cannot run)",
                ));
            }
            self.act_on_due();
            self.actor.flush();
            let wait = self.sched.wait_ms(now_ms(), 250);
            match self.decisions.recv_timeout(Duration::from_millis(wait)) {
                Ok(d) => self.decision(d),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    self.log.flush();
                    if self.parsers.iter().all(|p| p.is_finished())
                        && !self.stop.load(Ordering::Relaxed)
                    {
                        return Err(self.parsers_stopped());
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    if !self.stop.load(Ordering::Relaxed) {
                        return Err(self.parsers_stopped());
                    }
                    break;
                }
            }
        }
        self.actor.flush();
        Ok(())
    }

    /// Every parser is gone (a panic): the daemon exits non-zero so that
    /// the service manager restarts it.
    fn parsers_stopped(&self) -> Fatal {
        self.log.log("fatal: parser threads stopped");
        self.log.flush();
        self.stop.store(true, Ordering::Relaxed);
        Fatal::runtime("parser threads stopped")
    }

    fn requeue_after(&self) -> Option<u64> {
        self.brain
            .read()
            .map(|b| b.rules.requeue_after)
            .unwrap_or(None)
    }

    /// A decision arrives: remembered, or acted on now.
    fn decision(&mut self, d: Decision) {
        // S12: no decision of an old rules generation is acted on.
        if d.generation
            != self
                .brain
                .read()
                .expect("BUG: rules lock poisoned")
                .generation
        {
            return; // made under rules since replaced: the rescan decides again
        }
        if let Some(d) = self.sched.decision(d, now_ms()) {
            self.perform(&d);
            if self.decisions.is_empty() {
                self.actor.flush();
            }
        }
    }

    /// Acts on `d` and tells the scheduler how it went; a failure is
    /// logged when it is news (the first, or a different one).
    fn perform(&mut self, d: &Decision) {
        let requeue_after = self.requeue_after();
        match self.actor.perform(d, requeue_after) {
            Performed::Done => self.sched.done(d.ino),
            Performed::Failed { why, line, kind } => {
                if self.sched.move_failed(d, now(), &why, kind)
                    && let Some(line) = line
                {
                    self.log.log(&line);
                }
            }
        }
    }

    /// Acts on what is due. The message is read again: its due time, its
    /// rule and the gate are checked afresh.
    fn act_on_due(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let Some(due) = self.sched.next_due(now_ms()) else {
                return;
            };
            let (ino, id, look_again) = match due {
                Due::Look { ino, id } => (ino, id, true),
                Due::Act { ino, id } => (ino, id, false),
            };
            let loc = Location {
                queue: "hold".into(),
                dir: self.actor.spool.queue_dir("hold", &id),
                id: id.into(),
            };
            if look_again {
                // A scan retry: the parsers decide afresh.
                match self.relook.try_send(Work::Look(loc)) {
                    Ok(()) => self.sched.looking(ino),
                    Err(_) => self.sched.look_later(ino, now()),
                }
                continue;
            }
            // S11: read again before a scheduled action.
            let again = look(
                &self.actor.spool.cfg,
                self.actor.spool.root.as_fd(),
                &self.brain.read().expect("BUG: rules lock poisoned"),
                &self.board,
                &loc,
            );
            match again {
                // Still to be done: act (a failure is tried again with backoff).
                Some(d) if d.ino == ino && Scheduler::acts_now(&d, now_ms()) => self.perform(&d),
                // Changed meanwhile (rules, or not due after all): decide again.
                Some(d) if d.ino == ino => self.decision(d),
                // Gone, replaced or unreadable: the next event or scan decides.
                _ => self.sched.done(ino),
            }
        }
    }

    /// Forgets messages that left hold by other means (postsuper, an
    /// administrator), and their scan results.
    fn forget_gone(&mut self) {
        let spool = &self.actor.spool;
        let qd = &spool.cfg.queue_directory;
        let present = |ino: u64, id: &str| {
            std::fs::symlink_metadata(qd.join(spool.queue_dir("hold", id)).join(id))
                .is_ok_and(|m| m.ino() == ino)
        };
        self.sched.forget_gone(present);
        self.board.retain(present);
    }

    /// SIGHUP: new rules, new scanners, a new generation (decisions, scans
    /// and results of the old rules are dropped as they come), a rescan.
    fn reload(&mut self) {
        let owner = self.actor.spool.owner;
        let loaded = Rules::load(self.rules_path.as_deref()).and_then(|r| {
            check_scanner_users(&r, self.runs_as, owner, &self.launcher_users).map(|()| r)
        });
        let r = match loaded {
            Ok(r) => r,
            Err(e) => {
                self.log.log(&format!("warning: rules not reloaded: {e}"));
                return;
            }
        };
        self.scan_threads.retain(|h| !h.is_finished());
        let queues = start_scanners(&self.scan_ctx, &r, &mut self.scan_threads);
        {
            let mut b = self.brain.write().expect("BUG: rules lock poisoned");
            b.rules = r;
            b.generation += 1;
            b.queues = queues;
        }
        self.sched.reload();
        self.rescan.store(true, Ordering::Relaxed);
        self.log.log("rules reloaded");
        self.log.flush();
    }
}
