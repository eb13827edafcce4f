//! `posthold watch`: the hold-queue daemon, made of parts.
//!
//! Threads and bounded channels (a full channel slows intake, never drops:
//! the spool keeps every message and the next scan finds it again):
//!
//! ```text
//! watcher (inotify + scans) --paths--> parsers (N) --decisions--> events: scheduler + actor
//!                                         |                         ^           |
//!                                         +--jobs--> scanners ------+           v
//!                                    (one bounded queue and `concurrency`   queue::act
//!                                     workers per [scanner.NAME])           (gate, mover)
//! ```
//!
//! * [`watcher`]: owns the inotify descriptor on `hold/`; full scans at
//!   start, on overflow, on SIGHUP and every `--scan-interval`.
//! * [`parser`]: reads a held message read-only and asks the rules (the
//!   same [`crate::rules::Rules::judge`] as `posthold scan`).
//! * [`scanners`]: content scans, results on the [`board`], poison
//!   quarantine.
//! * [`scheduler`]: what is due when, per inode; unit-tested alone.
//! * [`actor`]: the daemon's only way to change the queue, through
//!   [`crate::queue::act`] under the queue lock (S11).
//! * [`events`]: the scheduler thread's loop: decisions, due times,
//!   SIGHUP reloads, forgetting mail that left hold.
//! * [`logger`], [`metrics`].
//!
//! No state is kept outside the spool: a restart scans and decides again,
//! and due times are read again from the messages.
//!
//! Signals: SIGTERM/SIGINT finish the move in progress and exit; SIGHUP
//! reloads the rules and rescans. Logs: one line per decision that changes
//! something, beginning with the queue ID.

pub mod actor;
pub mod board;
pub mod decision;
pub mod events;
pub mod health;
pub mod logger;
pub mod metrics;
pub mod parser;
pub mod scanners;
pub mod scheduler;
pub mod watcher;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crossbeam_channel::bounded;

use crate::config::Config;
use crate::error::Fatal;
use crate::queue::spool::Spool;
use crate::rules::Rules;
use decision::{Brain, Decision, Work};
use logger::{LogTo, Logger};
use scanners::RunsAs;

/// Daemon options.
#[derive(Debug, Clone)]
pub struct WatchOpts {
    /// Rules file; the default rules when `None`.
    pub rules: Option<PathBuf>,
    /// Interval of the safety-net full scan.
    pub scan_interval: Duration,
    /// Parser threads.
    pub workers: usize,
    /// Where to log.
    pub log_to: LogTo,
    /// Drop root privileges to mail_owner after start.
    pub drop_privileges: bool,
    /// Serve Prometheus metrics on this loopback address.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Runs the daemon until SIGTERM or SIGINT; returns the exit status.
pub fn run(cfg: Config, opts: WatchOpts) -> Result<i32, Fatal> {
    let log = Logger::new(opts.log_to);
    let rules = Rules::load(opts.rules.as_deref())?;
    let mut spool = Spool::open(cfg.clone())?;
    spool.recheck_always();
    // One daemon per queue: kept locked until run() returns.
    let _pid = spool.daemon_lock()?;
    let runs_as = RunsAs::asked(opts.drop_privileges);
    // Fixed now: a reload cannot add users (the launcher keeps root for
    // these alone).
    let launcher_users = match runs_as {
        RunsAs::MailOwner => scanners::scanner_users(&rules),
        RunsAs::Caller => Vec::new(),
    };
    scanners::check_scanner_users(&rules, runs_as, spool.owner, &launcher_users)?;
    let (stop, hup) = start(&spool, runs_as, &launcher_users, &log)?;
    log.log(&format!(
        "starting: queue {}, {} rules, scan every {}s",
        cfg.queue_directory.display(),
        rules.rules.len(),
        opts.scan_interval.as_secs()
    ));
    let shared = Arc::new(Mutex::new(metrics::Shared::default()));
    let serve = |addr| metrics::serve(addr, cfg.clone(), Arc::clone(&shared), Arc::clone(&stop));
    let metrics_thread = opts.metrics.map(serve).transpose()?;
    let (work_tx, work_rx) = bounded::<Work>(4096);
    let (dec_tx, dec_rx) = bounded::<Decision>(4096);
    let board = Arc::new(board::Board::default());
    let brain = Arc::new(RwLock::new(Brain::new(rules)));
    let root = Arc::new(
        spool
            .root
            .try_clone()
            .map_err(|e| Fatal::config(format!("{}: {e}", cfg.queue_directory.display())))?,
    );
    let scan_ctx = Arc::new(scanners::ScanCtx {
        cfg: cfg.clone(),
        root: Arc::clone(&root),
        brain: Arc::clone(&brain),
        board: Arc::clone(&board),
        decisions: dec_tx.clone(),
        stop: Arc::clone(&stop),
        log: log.clone(),
        shared: Arc::clone(&shared),
        health: health::Health::default(),
    });
    let scan_threads = scanners::start_all(&scan_ctx);
    let rescan = flag();
    let watcher = watcher::spawn(
        &cfg,
        work_tx.clone(),
        &stop,
        &rescan,
        opts.scan_interval,
        &log,
    );
    let parsers = parser::spawn(
        opts.workers.max(1),
        &cfg,
        &root,
        &work_rx,
        &dec_tx,
        &brain,
        &board,
        &stop,
    );
    drop(dec_tx);
    let mut events = events::Events {
        sched: scheduler::Scheduler::new(log.clone(), Arc::clone(&shared)),
        actor: actor::Actor::new(spool, log.clone(), shared, Arc::clone(&stop)),
        brain,
        board,
        log: log.clone(),
        decisions: dec_rx,
        relook: work_tx,
        stop: Arc::clone(&stop),
        hup,
        rescan,
        parsers,
        scan_ctx,
        scan_threads,
        rules_path: opts.rules.clone(),
        launcher_users,
        runs_as,
        gc_interval: opts.scan_interval,
    };
    let result = events.run();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    result?;
    log.log(&format!(
        "stopping: {} scheduled releases left to the next start",
        events.sched.scheduled()
    ));
    log.flush();
    drop(events.decisions);
    let threads = [watcher]
        .into_iter()
        .chain(events.parsers)
        .chain(events.scan_threads);
    for t in threads.chain(metrics_thread) {
        let _ = t.join();
    }
    Ok(0)
}

/// Signal handlers, the quarantine directory (made now, while root: after
/// the drop mail_owner cannot create it in the root-owned queue
/// directory), then the privilege drop. Returns the stop and reload flags.
fn start(
    spool: &Spool,
    runs_as: RunsAs,
    launcher_users: &[(u32, u32)],
    log: &Logger,
) -> Result<(Arc<AtomicBool>, Arc<AtomicBool>), Fatal> {
    // Before any thread and before the drop: the launcher keeps root to
    // start command scanners as their unprivileged users.
    if runs_as == RunsAs::MailOwner && !launcher_users.is_empty() {
        crate::scan::launcher::start(launcher_users.to_vec())
            .map_err(|e| Fatal::config(format!("scanner launcher: {e}")))?;
    }
    let (stop, hup) = (flag(), flag());
    signals(&stop, &hup)?;
    if let Err(e) = crate::queue::act::ensure_quarantine(spool) {
        log.log(&format!("warning: quarantine directory: {e}"));
    }
    if runs_as == RunsAs::MailOwner {
        drop_privileges(spool.owner)?;
    }
    Ok((stop, hup))
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// SIGTERM and SIGINT set `stop`; SIGHUP sets `hup`.
fn signals(stop: &Arc<AtomicBool>, hup: &Arc<AtomicBool>) -> Result<(), Fatal> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let e = |e: std::io::Error| Fatal::config(format!("signal: {e}"));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(stop)).map_err(e)?;
    }
    signal_hook::flag::register(SIGHUP, Arc::clone(hup)).map_err(e)?;
    Ok(())
}

/// Becomes mail_owner (uid, gid), with no supplementary groups.
fn drop_privileges((uid, gid): (u32, u32)) -> Result<(), Fatal> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    setgroups(&[]).map_err(|e| Fatal::config(format!("setgroups: {e}")))?;
    setgid(Gid::from_raw(gid)).map_err(|e| Fatal::config(format!("setgid: {e}")))?;
    setuid(Uid::from_raw(uid)).map_err(|e| Fatal::config(format!("setuid: {e}")))?;
    Ok(())
}
