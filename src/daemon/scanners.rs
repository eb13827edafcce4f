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
use super::health::{self, Gate, Health};
use super::logger::Logger;
use super::metrics::Shared;
use super::parser::look;
use crate::config::Config;
use crate::error::Fatal;
use crate::read::message::{Headers, Message};
use crate::rules::{Reason, Rules, Verdict};
use crate::util::now_ms;

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
    /// Whether each scanner answers.
    pub health: Health,
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
        match scan_one(&ctx, job) {
            Step::Next => {}
            Step::Stop => return,
            Step::Decided(d) => {
                if !send_or_stop(&ctx.decisions, *d, &ctx.stop) {
                    return;
                }
            }
        }
    }
}

/// What a worker does after one job.
enum Step {
    /// Nothing to send (dropped, gone, or decided elsewhere).
    Next,
    /// The daemon stops.
    Stop,
    /// This decision goes to the scheduler.
    Decided(Box<Decision>),
}

/// The rules' settings a scan needs.
struct Limits {
    stuck_after: Duration,
    on_stuck_quarantine: bool,
}

/// Scans one message (or keeps it while its scanner is down) and decides.
fn scan_one(ctx: &ScanCtx, job: Job) -> Step {
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
    let (sc, limits) = {
        let b = ctx.brain.read().expect("BUG: rules lock poisoned");
        // S12: a job of an old rules generation is dropped.
        if b.generation != generation {
            return Step::Next; // rules reloaded: the rescan decides again
        }
        (
            Arc::clone(&b.rules.scanners[si]),
            Limits {
                stuck_after: b.rules.stuck_after,
                on_stuck_quarantine: b.rules.on_stuck == Verdict::Quarantine,
            },
        )
    };
    let kept = |what: String, strike: bool, wait: Option<i64>, guard: &mut ClaimGuard| {
        guard.armed = false;
        failed(
            ctx,
            &sc,
            &loc,
            ino,
            generation,
            held,
            committed_us,
            &limits,
            Kept { what, strike, wait },
        )
    };
    // The longest a trial can take: others wait that long at least.
    let trial_len =
        sc.connect_timeout * 2 + sc.timeout + sc.timeout.min(crate::scan::PROBE_TIMEOUT);
    let mut trial = TrialGuard {
        health: &ctx.health,
        name: &sc.name,
        retry_max: sc.retry_max,
        armed: false,
    };
    match ctx.health.gate(&sc.name, now_ms(), trial_len) {
        Gate::Scan => {}
        Gate::Wait(t) => {
            return kept(
                format!("scanner {} is down", sc.name),
                false,
                Some(t),
                &mut guard,
            );
        }
        Gate::Trial => {
            trial.armed = true;
            // A down network scanner is asked first; the message is sent
            // only once it answers.
            if let Some(Err(f)) = sc.probe(&ctx.stop) {
                let t = trial.failed();
                return kept(
                    format!("scanner {} is down: {}", sc.name, f.what),
                    false,
                    Some(t),
                    &mut guard,
                );
            }
        }
    }
    // Gone from hold, replaced or unreadable: the guards give the claim
    // (and a trial) back; the next event or scan decides.
    let Ok(msg) = Message::open(
        ctx.root.as_fd(),
        &loc.path(),
        &loc.id,
        Some(ino),
        Headers::Skip,
    ) else {
        return Step::Next;
    };
    let started = Instant::now();
    let result = sc.scan(&msg, &ctx.stop);
    drop(msg);
    if ctx.stop.load(Ordering::Relaxed) {
        return Step::Stop; // not a result: the next start scans again
    }
    let secs = started.elapsed().as_secs_f64();
    let label = match &result {
        Ok(_) => "done",
        Err(f) if f.strike => "strike",
        Err(_) => "failed",
    };
    {
        let mut m = ctx.shared.lock().expect("BUG: metrics lock poisoned");
        *m.scans.entry((sc.name.clone(), label.into())).or_insert(0) += 1;
        m.record_scan(&sc.name, secs);
    }
    match result {
        Ok(outcome) => {
            trial.armed = false;
            scanner_answered(ctx, &sc.name);
            ctx.log.log(&format!(
                "{}: scanned, scanner={}, {}, time={secs:.3}s",
                loc.id,
                sc.name,
                outcome.describe()
            ));
            guard.armed = false;
            if !ctx.board.succeeded(ino, &loc.id, generation, si, outcome) {
                return Step::Next;
            }
            let b = ctx.brain.read().expect("BUG: rules lock poisoned");
            if b.generation != generation {
                return Step::Next;
            }
            // The next rule may need another scanner: decide() queues it.
            match look(&ctx.cfg, ctx.root.as_fd(), &b, &ctx.board, &loc) {
                Some(d) => Step::Decided(Box::new(d)),
                None => Step::Next,
            }
        }
        Err(f) if f.answered => {
            trial.armed = false;
            scanner_answered(ctx, &sc.name);
            kept(
                format!("{}, time={secs:.3}s", f.what),
                f.strike,
                None,
                &mut guard,
            )
        }
        Err(f) if trial.armed => {
            // The scanner answered the probe before this message was
            // sent: if it died of it, that is the message's doing.
            let t = trial.failed();
            kept(
                format!("{}, time={secs:.3}s (trial: scanner still down)", f.what),
                f.is_crash(),
                Some(t),
                &mut guard,
            )
        }
        Err(f) => {
            // No answer: the message's fault only while the scanner
            // answers others (a probe, or other messages), or when the
            // scanner died of it.
            let probe = sc.probe(&ctx.stop);
            let n = ctx.health.no_answer(
                &sc.name,
                health::Lost {
                    ino,
                    crash: f.is_crash(),
                    timed_out: f.timed_out,
                    probe: probe.as_ref().map(Result::is_ok),
                },
                sc.retry_max,
                now_ms(),
            );
            for other in &n.forgive {
                ctx.board.forgive(*other);
            }
            if n.went_down {
                ctx.log.warn(&format!(
                    "scanner={}: down: {}{}; mail that needs it stays held, no strikes until it answers{}",
                    sc.name,
                    f.what,
                    match &probe {
                        Some(Err(p)) => format!("; probe: {}", p.what),
                        Some(Ok(())) => "; answers PING, fails every scan".into(),
                        None => String::new(),
                    },
                    if n.forgive.is_empty() {
                        String::new()
                    } else {
                        format!("; {} earlier strike(s) taken back", n.forgive.len())
                    }
                ));
                publish_health(ctx);
            }
            kept(
                format!("{}, time={secs:.3}s", f.what),
                f.strike && n.blame_message,
                if n.blame_message {
                    None
                } else {
                    n.next_trial_ms
                },
                &mut guard,
            )
        }
    }
}

/// Ends a trial that did not bring the scanner up, on every way out of a
/// scan (a panic included) unless disarmed.
struct TrialGuard<'a> {
    health: &'a Health,
    name: &'a str,
    retry_max: Duration,
    armed: bool,
}

impl TrialGuard<'_> {
    /// The trial failed: the time of the next one.
    fn failed(&mut self) -> i64 {
        self.armed = false;
        self.health
            .trial_failed(self.name, self.retry_max, now_ms())
    }
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.health
                .trial_failed(self.name, self.retry_max, now_ms());
        }
    }
}

/// The scanner answered: up again if it was down (told once).
fn scanner_answered(ctx: &ScanCtx, name: &str) {
    if let Some(ms) = ctx.health.answered(name, now_ms()) {
        ctx.log
            .log(&format!("scanner={name}: up again after {}s", ms / 1000));
        publish_health(ctx);
    }
}

/// Copies scanner health into the metrics.
pub fn publish_health(ctx: &ScanCtx) {
    ctx.shared
        .lock()
        .expect("BUG: metrics lock poisoned")
        .scanner_up = ctx.health.up();
}

/// A scan with no usable result.
struct Kept {
    /// What happened (for the log).
    what: String,
    /// It counts as a strike against the message.
    strike: bool,
    /// The scanner is down: wait until this time (ms); not a failure of
    /// the message's own.
    wait: Option<i64>,
}

/// Keeps a message whose scan gave no result, with a retry time; or
/// quarantines it as poison or as stuck.
#[allow(clippy::too_many_arguments)]
fn failed(
    ctx: &ScanCtx,
    sc: &crate::scan::Scanner,
    loc: &crate::queue::spool::Location,
    ino: u64,
    generation: u64,
    held: u64,
    committed_us: i64,
    limits: &Limits,
    lost: Kept,
) -> Step {
    let now = now_ms();
    let Some(st) = ctx.board.failed(
        ino,
        &loc.id,
        generation,
        Failure {
            strike: lost.strike,
            count: lost.wait.is_none(),
            backoff: |n| match lost.wait {
                Some(t) => Duration::from_millis((t - now).max(0) as u64),
                None => sc.backoff(n),
            },
            stuck_after: limits.stuck_after,
        },
        now,
    ) else {
        return Step::Next;
    };
    let poison = st.strikes >= sc.poison_after;
    // While the scanner is down each message says so once, not at every trial.
    if lost.wait.is_none() || st.newly_waiting {
        ctx.log.log(&format!(
            "{}: scan failed, scanner={}, error={}, failures={}, strikes={}/{}{}",
            loc.id,
            sc.name,
            lost.what,
            st.failures,
            st.strikes,
            sc.poison_after,
            if poison {
                String::new()
            } else {
                format!(", retry in {}s", (st.retry_ms - now).max(0) / 1000)
            }
        ));
    }
    let mut d = Decision {
        loc: loc.clone(),
        ino,
        verdict: Verdict::Keep,
        due: None,
        reason: if lost.wait.is_some() {
            Reason::ScannerDown {
                scanner: sc.name.clone(),
            }
        } else {
            Reason::ScanFailed {
                scanner: sc.name.clone(),
            }
        },
        held,
        decided: crate::util::now(),
        committed_us,
        requeued_copy: false,
        arrival: None,
        retry_at: Some(st.retry_ms.div_euclid(1000) + 1),
        generation,
    };
    // Scans that fail softly for ever (exit 75, a scanner that stays
    // down): told once, and quarantined if the rules say so.
    if st.newly_stuck && !poison {
        ctx.log.warn(&format!(
            "{}: keep, reason=scan-stuck, scanner={}, failing for over {}s: {}{}",
            loc.id,
            sc.name,
            limits.stuck_after.as_secs(),
            lost.what,
            if limits.on_stuck_quarantine {
                "; quarantined"
            } else {
                ""
            }
        ));
        if limits.on_stuck_quarantine {
            d.verdict = Verdict::Quarantine;
            d.retry_at = None;
            d.reason = Reason::Stuck {
                scanner: sc.name.clone(),
                error: lost.what.clone(),
            };
        }
    }
    if poison {
        d.verdict = Verdict::Quarantine;
        d.retry_at = None;
        d.reason = Reason::Poison {
            scanner: sc.name.clone(),
            strikes: st.strikes,
            error: lost.what,
        };
    }
    Step::Decided(Box::new(d))
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
    ctx.health
        .reset(rules.scanners.iter().map(|s| s.name.as_str()));
    publish_health(ctx);
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

/// Command scanners run as an unprivileged user, never with rights over
/// the queue: refuse a rules file whose command scanner would run as root
/// or as mail_owner (`owner`), or as a user this process cannot start it
/// as (not root, and not the launcher's: see [`crate::scan::launcher`]).
pub fn check_scanner_users(
    rules: &Rules,
    runs_as: RunsAs,
    (owner, owner_gid): (u32, u32),
    launcher_users: &[(u32, u32)],
) -> Result<(), Fatal> {
    let euid = nix::unistd::geteuid().as_raw();
    for sc in &rules.scanners {
        let crate::scan::ScannerKind::Command {
            user: Some((name, uid, gid)),
            ..
        } = &sc.kind
        else {
            continue;
        };
        let refuse = |why: String| {
            Err(Fatal::config(format!(
                "scanner {}: user {name}: {why}",
                sc.name
            )))
        };
        // S14: never root, never mail_owner, nor their groups.
        if *uid == 0 || *uid == owner {
            return refuse(format!(
                "uid {uid} has rights over the queue; name an unprivileged user (user = \"nobody\")"
            ));
        }
        if *gid == 0 || *gid == owner_gid {
            return refuse(format!(
                "its group (gid {gid}) is root's or mail_owner's, with rights over the queue; name a user of another group"
            ));
        }
        let can = match runs_as {
            RunsAs::MailOwner => launcher_users.contains(&(*uid, *gid)),
            RunsAs::Caller => euid == 0 || euid == *uid,
        };
        if !can {
            return refuse(match runs_as {
                RunsAs::MailOwner => "a user the daemon did not start with: restart it (a reload cannot add scanner users)".into(),
                RunsAs::Caller => format!("posthold runs as uid {euid}: run it as root"),
            });
        }
    }
    Ok(())
}

/// The users the command scanners of `rules` run as.
pub fn scanner_users(rules: &Rules) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = rules
        .scanners
        .iter()
        .filter_map(|sc| match &sc.kind {
            crate::scan::ScannerKind::Command {
                user: Some((_, uid, gid)),
                ..
            } => Some((*uid, *gid)),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}
