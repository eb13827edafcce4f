//! The scan workers: one bounded queue and `concurrency` workers per
//! `[scanner.NAME]`. A worker opens the message read-only (S12), scans it,
//! records the result on the [`Board`] and decides again through the
//! parsers' [`look`] (the next rule may need another scanner). A failure
//! keeps the message with a retry time; a poison message (too many
//! strikes) is quarantined. Results carry the rules generation: after
//! SIGHUP, stale ones are dropped.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use super::board::{Board, Failure};
use super::decision::{Brain, Decision, Job, send_or_stop};
use super::logger::Logger;
use super::metrics::Shared;
use super::parser::look;
use crate::config::Config;
use crate::error::Fatal;
use crate::read::message::{Headers, Message};
use crate::rules::{Reason, Rules, Verdict};
use crate::util::{now, now_ms};

/// Gives a scan claim back if a worker drops a job without a result
/// (a panic included), so that the message can be scanned again.
struct ClaimGuard<'a> {
    board: &'a Board,
    ino: u64,
    id: &'a str,
    generation: u64,
    armed: bool,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.board.unclaim(self.ino, self.id, self.generation, None);
        }
    }
}

/// What scan workers share.
pub struct ScanCtx {
    /// Shared with the rest of the daemon.
    pub cfg: Config,
    /// The queue directory, opened once: messages are read below it.
    pub root: Arc<std::os::fd::OwnedFd>,
    /// Shared with the rest of the daemon.
    pub brain: Arc<RwLock<Brain>>,
    /// Shared with the rest of the daemon.
    pub board: Arc<Board>,
    /// Shared with the rest of the daemon.
    pub decisions: Sender<Decision>,
    /// Shared with the rest of the daemon.
    pub stop: Arc<AtomicBool>,
    /// Shared with the rest of the daemon.
    pub log: Logger,
    /// Shared with the rest of the daemon.
    pub shared: Arc<Mutex<Shared>>,
}

/// One scan worker: takes jobs for one scanner until its queue closes
/// (rules reloaded) or the daemon stops.
fn scan_worker(ctx: Arc<ScanCtx>, rx: Receiver<Job>) {
    while !ctx.stop.load(Ordering::Relaxed) {
        let job = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(j) => j,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let Job {
            loc,
            ino,
            generation,
            scanner: si,
            held,
            committed_us,
        } = job;
        let mut guard = ClaimGuard {
            board: &ctx.board,
            ino,
            id: &loc.id,
            generation,
            armed: true,
        };
        let (sc, stuck_after, on_stuck_quarantine) = {
            let b = ctx.brain.read().expect("BUG: rules lock poisoned");
            // S12: a job of an old rules generation is dropped.
            if b.generation != generation {
                continue; // rules reloaded: the rescan decides again
            }
            (
                Arc::clone(&b.rules.scanners[si]),
                b.rules.stuck_after,
                b.rules.on_stuck == Verdict::Quarantine,
            )
        };
        let msg = match Message::open(
            ctx.root.as_fd(),
            &loc.path(),
            &loc.id,
            Some(ino),
            Headers::Skip,
        ) {
            Ok(m) => m,
            // Gone from hold, replaced or unreadable: the guard gives the
            // claim back; the next event or scan decides.
            Err(_) => continue,
        };
        let started = Instant::now();
        let result = sc.scan(&msg, &ctx.stop);
        drop(msg);
        if ctx.stop.load(Ordering::Relaxed) {
            return; // not a result: the next start scans again
        }
        let secs = started.elapsed().as_secs_f64();
        let label = match &result {
            Ok(_) => "done",
            Err(f) if f.strike => "strike",
            Err(_) => "failed",
        };
        *ctx.shared
            .lock()
            .expect("BUG: metrics lock poisoned")
            .scans
            .entry((sc.name.clone(), label.into()))
            .or_insert(0) += 1;
        let d = match result {
            Ok(outcome) => {
                ctx.log.log(&format!(
                    "{}: scanned, scanner={}, {}, time={secs:.3}s",
                    loc.id,
                    sc.name,
                    outcome.describe()
                ));
                guard.armed = false;
                if !ctx.board.succeeded(ino, &loc.id, generation, si, outcome) {
                    continue;
                }
                let b = ctx.brain.read().expect("BUG: rules lock poisoned");
                if b.generation != generation {
                    continue;
                }
                // The next rule may need another scanner: decide() queues it.
                match look(&ctx.cfg, ctx.root.as_fd(), &b, &ctx.board, &loc) {
                    Some(d) => d,
                    None => continue,
                }
            }
            Err(f) => {
                guard.armed = false;
                let Some(st) = ctx.board.failed(
                    ino,
                    &loc.id,
                    generation,
                    Failure {
                        strike: f.strike,
                        backoff: |n| sc.backoff(n),
                        stuck_after,
                    },
                    now_ms(),
                ) else {
                    continue;
                };
                let poison = st.strikes >= sc.poison_after;
                ctx.log.log(&format!(
                    "{}: scan failed, scanner={}, error={}, time={secs:.3}s, failures={}, strikes={}/{}{}",
                    loc.id,
                    sc.name,
                    f.what,
                    st.failures,
                    st.strikes,
                    sc.poison_after,
                    if poison {
                        String::new()
                    } else {
                        format!(", retry in {}s", (st.retry_ms - now_ms()).max(0) / 1000)
                    }
                ));
                let mut d = Decision {
                    loc: loc.clone(),
                    ino,
                    verdict: Verdict::Keep,
                    due: None,
                    reason: Reason::ScanFailed {
                        scanner: sc.name.clone(),
                    },
                    held,
                    decided: now(),
                    committed_us,
                    requeued_copy: false,
                    arrival: None,
                    retry_at: Some(st.retry_ms.div_euclid(1000) + 1),
                    generation,
                };
                // Scans that fail softly for ever (exit 75, a scanner that
                // stays down): told once, and quarantined if the rules say so.
                if st.newly_stuck && !poison {
                    ctx.log.warn(&format!(
                        "{}: keep, reason=scan-stuck, scanner={}, failing for over {}s: {}{}",
                        loc.id,
                        sc.name,
                        stuck_after.as_secs(),
                        f.what,
                        if on_stuck_quarantine {
                            "; quarantined"
                        } else {
                            ""
                        }
                    ));
                    if on_stuck_quarantine {
                        d.verdict = Verdict::Quarantine;
                        d.retry_at = None;
                        d.reason = Reason::Stuck {
                            scanner: sc.name.clone(),
                            error: f.what.clone(),
                        };
                    }
                }
                if poison {
                    d.verdict = Verdict::Quarantine;
                    d.retry_at = None;
                    d.reason = Reason::Poison {
                        scanner: sc.name.clone(),
                        strikes: st.strikes,
                        error: f.what.clone(),
                    };
                }
                d
            }
        };
        if !send_or_stop(&ctx.decisions, d, &ctx.stop) {
            return;
        }
    }
}

/// Starts the scan workers of the rules in force and gives the rules their
/// queues; returns the workers.
pub fn start_all(ctx: &Arc<ScanCtx>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let mut b = ctx.brain.write().expect("BUG: rules lock poisoned");
    b.queues = start_scanners(ctx, &b.rules, &mut threads);
    threads
}

/// Starts the scan workers of a rule set; returns their queues.
pub fn start_scanners(
    ctx: &Arc<ScanCtx>,
    rules: &Rules,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Vec<Sender<Job>> {
    let mut queues = Vec::new();
    for sc in &rules.scanners {
        let (tx, rx) = bounded::<Job>(sc.queue);
        for _ in 0..sc.concurrency {
            let (ctx, rx) = (Arc::clone(ctx), rx.clone());
            threads.push(std::thread::spawn(move || scan_worker(ctx, rx)));
        }
        queues.push(tx);
    }
    queues
}

/// Whom the daemon runs as once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsAs {
    /// It keeps the rights it was started with (`--no-drop-privileges`).
    Caller,
    /// It drops root for mail_owner.
    MailOwner,
}

impl RunsAs {
    /// Whom the daemon will run as: mail_owner when asked to drop
    /// privileges and started as root.
    pub fn asked(drop_privileges: bool) -> RunsAs {
        if drop_privileges && nix::unistd::geteuid().is_root() {
            RunsAs::MailOwner
        } else {
            RunsAs::Caller
        }
    }
}

/// A command scanner's `user` needs root: refuse a rules file that asks
/// for it when the daemon will run as mail_owner.
pub fn check_scanner_users(rules: &Rules, runs_as: RunsAs, owner: u32) -> Result<(), Fatal> {
    for sc in &rules.scanners {
        if let crate::scan::ScannerKind::Command {
            user: Some((name, uid, _)),
            ..
        } = &sc.kind
            && *uid != owner
            && (runs_as == RunsAs::MailOwner || !nix::unistd::geteuid().is_root())
        {
            return Err(Fatal::config(format!(
                "scanner {}: user {name} needs the daemon to run as root (--no-drop-privileges)",
                sc.name
            )));
        }
    }
    Ok(())
}
