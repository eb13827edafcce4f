//! `posthold watch`: the hold-queue daemon.
//!
//! Threads and bounded channels (a full channel slows intake, never drops:
//! the spool keeps every message and the next scan finds it again):
//!
//! ```text
//! watcher (inotify + scans) --paths--> parsers (N) --decisions--> scheduler/mover
//!                                         |                         ^
//!                                         +--jobs--> scanners ------+
//!                                    (one bounded queue and `concurrency`
//!                                     workers per [scanner.NAME])
//! ```
//!
//! * A rule that needs a scan sends the message to its scanner's queue;
//!   the worker scans, records the result on the [`Board`] and decides
//!   again (the next rule may need another scanner). A failure keeps the
//!   message with a retry time; poison messages are quarantined. Results
//!   and decisions carry the rules generation: after SIGHUP, stale ones are
//!   dropped.
//!
//! * The watcher owns the inotify descriptor on `hold/` (and its hash
//!   directories). A held file appears by rename while still 0600; it is
//!   committed by a mode change (IN_ATTRIB). Any event only says "look at
//!   this name": the parsers check the file is committed. A full scan runs
//!   at start, after an inotify overflow, after SIGHUP, and every
//!   `--scan-interval`.
//! * Parsers read the envelope and the headers read-only (never the body),
//!   apply the rules and send a decision keyed by (queue ID, inode).
//! * The scheduler owns the mover. It acts on decisions that are due at
//!   once and keeps a heap of future due times; every action goes through
//!   the gate again. No state is kept outside the spool: a restart scans
//!   and decides again, and due times are read again from the messages.
//!
//! Signals: SIGTERM/SIGINT finish the move in progress and exit; SIGHUP
//! reloads the rules and rescans. Logs: one line per decision that changes
//! something, beginning with the queue ID.

pub mod board;
pub mod metrics;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::config::Config;
use crate::daemon::board::{Board, Claim};
use crate::error::Fatal;
use crate::queue::act::{self, Action, RunOpts, Triggers};
use crate::queue::spool::{Location, Spool};
use crate::rules::{Eval, Facts, Rules, Verdict};

/// Daemon options.
#[derive(Debug, Clone)]
pub struct WatchOpts {
    /// Rules file; the default rules when `None`.
    pub rules: Option<PathBuf>,
    /// Interval of the safety-net full scan.
    pub scan_interval: Duration,
    /// Parser threads.
    pub workers: usize,
    /// Log to syslog (`/dev/log`) instead of stderr.
    pub syslog: bool,
    /// Drop root privileges to mail_owner after start.
    pub drop_privileges: bool,
    /// Serve Prometheus metrics on this loopback address.
    pub metrics: Option<std::net::SocketAddr>,
}

/// What the scheduler decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where the message is.
    pub loc: Location,
    /// Its inode: short IDs repeat, so (ID, inode) is the key.
    pub ino: u64,
    /// What to do.
    pub verdict: Verdict,
    /// Due time (seconds) for scheduled releases.
    pub due: Option<i64>,
    /// Why, for the log (`rule=..., reason=...`).
    pub reason: String,
    /// Seconds on hold when decided.
    pub held: u64,
    /// When it was decided (seconds), to report the time on hold later.
    pub decided: i64,
    /// The file's ctime (µs): the commit, for the decision-latency metric.
    pub committed_us: i64,
    /// Whether the message is a copy made by requeueing (never requeued again).
    pub requeued_copy: bool,
    /// Kept for now; look again at this time (seconds): a scan failed or
    /// its scanner was busy.
    pub retry_at: Option<i64>,
    /// The rules generation it was made under (stale ones are dropped).
    pub generation: u64,
}

/// The rules in force, their generation (bumped by SIGHUP) and the queues
/// in front of their scanners.
pub struct Brain {
    /// The rules.
    pub rules: Rules,
    /// Generation number.
    pub generation: u64,
    /// One bounded queue per scanner, by index.
    pub queues: Vec<Sender<Job>>,
}

/// A scan to run.
#[derive(Debug)]
pub struct Job {
    loc: Location,
    ino: u64,
    generation: u64,
    scanner: usize,
    held: u64,
    committed_us: i64,
}

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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A time in seconds as RFC 3339, for logs.
fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes log lines in Postfix's style. Lines to stderr are buffered and
/// flushed whenever the daemon is idle (a burst of a million decisions is
/// not a million write calls).
#[derive(Debug, Clone)]
pub struct Logger {
    syslog: Option<Arc<std::os::unix::net::UnixDatagram>>,
    buf: Arc<std::sync::Mutex<std::io::BufWriter<std::io::Stderr>>>,
}

impl Logger {
    /// A logger to syslog when asked and possible, else stderr.
    pub fn new(syslog: bool) -> Logger {
        let sock = syslog
            .then(|| {
                let s = std::os::unix::net::UnixDatagram::unbound().ok()?;
                s.connect("/dev/log").ok()?;
                Some(Arc::new(s))
            })
            .flatten();
        Logger {
            syslog: sock,
            buf: Arc::new(std::sync::Mutex::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ))),
        }
    }

    /// Writes out buffered lines.
    pub fn flush(&self) {
        if let Ok(mut b) = self.buf.lock() {
            let _ = std::io::Write::flush(&mut *b);
        }
    }

    /// Logs one line (`posthold[PID]: ` is prepended).
    pub fn log(&self, line: &str) {
        let pid = std::process::id();
        match &self.syslog {
            // facility mail (2), severity info (6): <22>
            Some(s) => {
                let _ = s.send(format!("<22>posthold[{pid}]: {line}").as_bytes());
            }
            None => {
                if let Ok(mut b) = self.buf.lock() {
                    let _ = std::io::Write::write_all(
                        &mut *b,
                        format!("posthold[{pid}]: {line}\n").as_bytes(),
                    );
                }
            }
        }
    }
}

/// Reads what the rules need from a held file, read-only: its inode, the
/// facts, its commit time (ctime, µs) and whether it is a requeued copy.
/// `None` when the
/// file is gone, not committed, or unreadable (a later event or scan
/// brings it back).
pub fn facts_of(cfg: &Config, loc: &Location, max_age_cap: u64) -> Option<(u64, Facts, i64, bool)> {
    let path = cfg.queue_directory.join(loc.path());
    let m = crate::scan::Message::open(&path, &loc.id, None, true).ok()?;
    let requeued = act::is_requeued_copy(&m.env);
    let facts = Facts {
        size: m.env.size.map_or(0, |s| s.data_size),
        age: now()
            .saturating_sub(m.env.expiry_base().unwrap_or(now()))
            .max(0) as u64,
        held: (now() - m.ctime_us.div_euclid(1_000_000)).clamp(0, max_age_cap as i64) as u64,
        sender: m.sender,
        recipients: m.recipients,
        headers: m.headers,
    };
    Some((m.ino, facts, m.ctime_us, requeued))
}

/// Applies the rules to a file: the decision, or `None` if it is not
/// ready or a scan was started (the scan worker then decides).
pub fn decide(cfg: &Config, brain: &Brain, board: &Board, loc: &Location) -> Option<Decision> {
    let (ino, facts, committed_us, requeued_copy) = facts_of(cfg, loc, u64::MAX / 2)?;
    let results = if brain.rules.scanners.is_empty() {
        Vec::new()
    } else {
        board.results(ino, &loc.id, brain.generation)
    };
    let mut d = Decision {
        loc: loc.clone(),
        ino,
        verdict: Verdict::Keep,
        due: None,
        reason: "reason=no-rule".into(),
        held: facts.held,
        decided: now(),
        committed_us,
        requeued_copy,
        retry_at: None,
        generation: brain.generation,
    };
    let rule = match brain.rules.evaluate(&facts, &results) {
        Eval::Rule(None) => return Some(d),
        Eval::Rule(Some(rule)) => rule,
        Eval::Hold(reason) => {
            d.reason = reason;
            return Some(d);
        }
        Eval::Scan(si) => {
            let name = &brain.rules.scanners[si].name;
            match board.claim(ino, &loc.id, brain.generation, now_ms()) {
                Claim::Busy => return None,
                Claim::Wait(t) => {
                    d.retry_at = Some(t.div_euclid(1000) + 1);
                    d.reason = format!("reason=scan-retry, scanner={name}");
                    return Some(d);
                }
                Claim::Go => {}
            }
            let job = Job {
                loc: loc.clone(),
                ino,
                generation: brain.generation,
                scanner: si,
                held: facts.held,
                committed_us,
            };
            return match brain.queues.get(si).map(|q| q.try_send(job)) {
                Some(Ok(())) => None,
                _ => {
                    // Its queue is full: keep the message and look again,
                    // spread over a few seconds.
                    let retry = now() + RETRY_SECS + (ino % 5) as i64;
                    board.unclaim(ino, &loc.id, brain.generation, Some(retry * 1000));
                    d.retry_at = Some(retry);
                    d.reason = format!("reason=scanner-busy, scanner={name}");
                    Some(d)
                }
            };
        }
    };
    d.reason = format!("reason=rule, rule={}", rule.name);
    d.verdict = rule.verdict.clone();
    if let Verdict::ReleaseAt(h) = &rule.verdict {
        let value = facts.header(h).unwrap_or("");
        match crate::rules::due::parse(value) {
            None => {
                d.verdict = brain.rules.on_bad_date.clone();
                d.reason = format!(
                    "reason=bad-date, rule={}, {h}={:?}",
                    rule.name,
                    value.chars().take(80).collect::<String>()
                );
            }
            Some(t)
                if t.timestamp()
                    > now().saturating_add(brain.rules.horizon.min(i64::MAX as u64) as i64) =>
            {
                d.verdict = brain.rules.on_bad_date.clone();
                d.reason = format!(
                    "reason=beyond-horizon, rule={}, {h}={}",
                    rule.name,
                    t.to_rfc3339()
                );
            }
            Some(t) => {
                d.due = Some(t.timestamp());
                d.reason = format!("reason={}, rule={}", h.to_ascii_lowercase(), rule.name);
            }
        }
    }
    Some(d)
}

/// What scan workers share.
struct ScanCtx {
    cfg: Config,
    brain: Arc<RwLock<Brain>>,
    board: Arc<Board>,
    decisions: Sender<Decision>,
    stop: Arc<AtomicBool>,
    log: Logger,
    shared: Arc<std::sync::Mutex<crate::daemon::metrics::Shared>>,
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
        let sc = {
            let b = ctx.brain.read().expect("BUG: rules lock poisoned");
            if b.generation != generation {
                continue; // rules reloaded: the rescan decides again
            }
            Arc::clone(&b.rules.scanners[si])
        };
        let path = ctx.cfg.queue_directory.join(loc.path());
        let msg = match crate::scan::Message::open(&path, &loc.id, Some(ino), false) {
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
                match decide(&ctx.cfg, &b, &ctx.board, &loc) {
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
                    f.strike,
                    |n| sc.backoff(n),
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
                    reason: format!("reason=scan-failed, scanner={}", sc.name),
                    held,
                    decided: now(),
                    committed_us,
                    requeued_copy: false,
                    retry_at: Some(st.retry_ms.div_euclid(1000) + 1),
                    generation,
                };
                if poison {
                    d.verdict = Verdict::Quarantine;
                    d.retry_at = None;
                    d.reason = format!(
                        "reason=poison, scanner={}, strikes={}, error={}",
                        sc.name, st.strikes, f.what
                    );
                }
                d
            }
        };
        if !send_or_stop(&ctx.decisions, d, &ctx.stop) {
            return;
        }
    }
}

/// Starts the scan workers of a rule set; returns their queues.
fn start_scanners(
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

/// Seconds before a failed action (file locked, raced) is tried again.
const RETRY_SECS: i64 = 5;

/// What the scheduler remembers of a held message.
#[derive(Debug)]
struct Entry {
    /// The queue ID (the inode is the map key: IDs repeat, live inodes do not).
    id: Box<str>,
    /// Due time in seconds when scheduled.
    due: i64,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Keep,
    KeepBad,
    Scheduled,
    /// Kept until `due`, then looked at again (a scan failed or waits).
    Retry,
    /// Sent to the parsers again; their decision replaces it.
    Looking,
}

enum Work {
    Look(Location),
}

/// Keeps the counters right when an entry goes.
fn forget(kind: Kind, n_scheduled: &mut usize, n_bad: &mut usize) {
    match kind {
        Kind::Scheduled => *n_scheduled -= 1,
        Kind::KeepBad => *n_bad -= 1,
        Kind::Keep | Kind::Retry | Kind::Looking => {}
    }
}

/// A command scanner's `user` needs root: refuse a rules file that asks
/// for it when the daemon will run as mail_owner.
fn check_scanner_users(rules: &Rules, will_drop: bool, owner: u32) -> Result<(), Fatal> {
    for sc in &rules.scanners {
        if let crate::scan::Kind::Command {
            user: Some((name, uid, _)),
            ..
        } = &sc.kind
            && *uid != owner
            && (will_drop || !nix::unistd::geteuid().is_root())
        {
            return Err(Fatal::config(format!(
                "scanner {}: user {name} needs the daemon to run as root (--no-drop-privileges)",
                sc.name
            )));
        }
    }
    Ok(())
}

/// Sends without ever blocking past a stop request: a full channel slows
/// intake, and SIGTERM must still end the daemon promptly.
fn send_or_stop<T>(tx: &Sender<T>, mut item: T, stop: &AtomicBool) -> bool {
    loop {
        match tx.send_timeout(item, Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                item = back;
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

fn scan_hold(spool_cfg: &Config, tx: &Sender<Work>, stop: &AtomicBool) {
    let mut dirs = vec!["hold".to_string()];
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(spool_cfg.queue_directory.join(&dir)) else {
            continue;
        };
        for e in rd.flatten() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(format!("{dir}/{name}"));
            } else if queue_format::queue_id::is_legal(&name) {
                let w = Work::Look(Location {
                    queue: "hold".into(),
                    dir: dir.clone(),
                    id: name,
                });
                if !send_or_stop(tx, w, stop) {
                    return;
                }
            }
        }
    }
}

fn watcher(
    cfg: Config,
    tx: Sender<Work>,
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    interval: Duration,
    log: Logger,
) {
    let flags = AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE;
    let ino = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(i) => i,
        Err(e) => {
            log.log(&format!("fatal: inotify: {e}"));
            stop.store(true, Ordering::Relaxed);
            return;
        }
    };
    let mut wds: HashMap<nix::sys::inotify::WatchDescriptor, String> = HashMap::new();
    let add = |wds: &mut HashMap<_, _>, rel: &str| {
        if let Ok(wd) = ino.add_watch(&cfg.queue_directory.join(rel), flags) {
            wds.insert(wd, rel.to_string());
        }
    };
    add(&mut wds, "hold");
    if let Ok(rd) = std::fs::read_dir(cfg.queue_directory.join("hold")) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.len() == 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                add(&mut wds, &format!("hold/{n}"));
            }
        }
    }
    let mut next_scan = Instant::now();
    rescan.store(true, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        if rescan.swap(false, Ordering::Relaxed) || Instant::now() >= next_scan {
            scan_hold(&cfg, &tx, &stop);
            next_scan = Instant::now() + interval;
        }
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(250u16));
        let Ok(events) = ino.read_events() else {
            continue;
        };
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                rescan.store(true, Ordering::Relaxed);
                continue;
            }
            let (Some(dir), Some(name)) = (wds.get(&ev.wd).cloned(), ev.name) else {
                continue;
            };
            let name = name.to_string_lossy().into_owned();
            if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                if name.len() == 1 {
                    add(&mut wds, &format!("{dir}/{name}"));
                    rescan.store(true, Ordering::Relaxed);
                }
                continue;
            }
            if queue_format::queue_id::is_legal(&name) {
                let w = Work::Look(Location {
                    queue: "hold".into(),
                    dir,
                    id: name,
                });
                if !send_or_stop(&tx, w, &stop) {
                    return;
                }
            }
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; returns the exit status.
pub fn run(cfg: Config, opts: WatchOpts) -> Result<i32, Fatal> {
    let log = Logger::new(opts.syslog);
    let rules = Rules::load(opts.rules.as_deref())?;
    let spool = Spool::open(cfg.clone())?;
    let will_drop = opts.drop_privileges && nix::unistd::geteuid().is_root();
    check_scanner_users(&rules, will_drop, spool.owner.0)?;
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| Fatal::config(format!("signal: {e}")))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| Fatal::config(format!("signal: {e}")))?;
    // Made now, while root: after the drop mail_owner cannot create it in
    // the root-owned queue directory.
    if let Err(e) = crate::queue::relocate::ensure_quarantine(&spool) {
        log.log(&format!("warning: quarantine directory: {e}"));
    }
    if opts.drop_privileges && nix::unistd::geteuid().is_root() {
        let (uid, gid) = spool.owner;
        nix::unistd::setgroups(&[]).map_err(|e| Fatal::config(format!("setgroups: {e}")))?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
            .map_err(|e| Fatal::config(format!("setgid: {e}")))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
            .map_err(|e| Fatal::config(format!("setuid: {e}")))?;
    }
    log.log(&format!(
        "starting: queue {}, {} rules, scan every {}s",
        cfg.queue_directory.display(),
        rules.rules.len(),
        opts.scan_interval.as_secs()
    ));

    let shared = Arc::new(std::sync::Mutex::new(
        crate::daemon::metrics::Shared::default(),
    ));
    let metrics_thread = match opts.metrics {
        Some(addr) => Some(crate::daemon::metrics::serve(
            addr,
            cfg.clone(),
            Arc::clone(&shared),
            Arc::clone(&stop),
        )?),
        None => None,
    };
    let (work_tx, work_rx): (Sender<Work>, Receiver<Work>) = bounded(4096);
    let (dec_tx, dec_rx): (Sender<Decision>, Receiver<Decision>) = bounded(4096);
    let board = Arc::new(Board::default());
    let brain = Arc::new(RwLock::new(Brain {
        rules,
        generation: 1,
        queues: Vec::new(),
    }));
    let scan_ctx = Arc::new(ScanCtx {
        cfg: cfg.clone(),
        brain: Arc::clone(&brain),
        board: Arc::clone(&board),
        decisions: dec_tx.clone(),
        stop: Arc::clone(&stop),
        log: log.clone(),
        shared: Arc::clone(&shared),
    });
    let mut scan_threads = Vec::new();
    {
        let mut b = brain.write().expect("BUG: rules lock poisoned");
        b.queues = start_scanners(&scan_ctx, &b.rules, &mut scan_threads);
    }
    // Decisions the scheduler itself made again (unbounded, but only ever
    // holds what was due in one pass).
    let (work_again, again_rx) = crossbeam_channel::unbounded::<Decision>();
    let rescan = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    {
        let (cfg, stop, rescan, log) = (
            cfg.clone(),
            Arc::clone(&stop),
            Arc::clone(&rescan),
            log.clone(),
        );
        let tx = work_tx.clone();
        let interval = opts.scan_interval;
        threads.push(std::thread::spawn(move || {
            watcher(cfg, tx, stop, rescan, interval, log)
        }));
    }
    // The scheduler sends messages whose retry time came back to the parsers.
    let relook = work_tx.clone();
    drop(work_tx);
    let mut parsers = Vec::new();
    for _ in 0..opts.workers.max(1) {
        let (cfg, rx, tx, brain, board) = (
            cfg.clone(),
            work_rx.clone(),
            dec_tx.clone(),
            Arc::clone(&brain),
            Arc::clone(&board),
        );
        let stop = Arc::clone(&stop);
        parsers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let loc = match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(Work::Look(loc)) => loc,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                };
                // Read-locked, not cloned: a clone per message cost more
                // than reading the message.
                let d = decide(
                    &cfg,
                    &brain.read().expect("BUG: rules lock poisoned"),
                    &board,
                    &loc,
                );
                if let Some(d) = d
                    && !send_or_stop(&tx, d, &stop)
                {
                    return;
                }
            }
        }));
    }
    drop(dec_tx);

    // The scheduler and mover. Per held message it remembers one compact
    // entry keyed by inode (about 40 bytes plus the ID), so that memory
    // stays small with a million held messages; everything else is read
    // again from the message when it is due.
    let mut state: HashMap<u64, Entry> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let (mut n_scheduled, mut n_bad) = (0usize, 0usize);
    let mut trig = Triggers::default();
    let requeue_after = || brain.read().map(|b| b.rules.requeue_after).unwrap_or(None);
    // Returns false when the action failed and the message is still held
    // (locked, raced, ...): the caller schedules a retry.
    let perform = |d: &Decision, trig: &mut Triggers| -> bool {
        let action = match &d.verdict {
            Verdict::Release | Verdict::ReleaseAt(_) => Action::Release {
                to: None,
                old_after: requeue_after(),
            },
            // A rule that requeues while header_checks holds the copy again
            // would loop: never requeue mail that is itself a fresh copy.
            Verdict::Requeue if d.requeued_copy => {
                log.log(&format!(
                    "{}: keep, reason=requeue-loop-guard, {}",
                    d.loc.id, d.reason
                ));
                return true;
            }
            Verdict::Requeue => Action::Requeue,
            Verdict::Expire => Action::Expire { release: true },
            Verdict::Quarantine => Action::Quarantine,
            Verdict::Keep => return true,
        };
        // One posthold at a time changes the queue: wait for a command run
        // by hand to finish.
        let o = match spool.exclusive_until(&stop) {
            Ok(Some(_guard)) => act::act(&spool, &action, &d.loc, RunOpts::default(), trig),
            Ok(None) => return false, // stopping: the next start decides again
            Err(e) => {
                log.log(&format!("{}: {} not done: {e}", d.loc.id, action.name()));
                return false;
            }
        };
        if !o.done && o.what.ends_with("no such message") {
            return true; // gone from hold meanwhile (released, or moved by postsuper)
        }
        {
            let mut m = shared.lock().expect("BUG: metrics lock poisoned");
            if o.done
                && let Some(due) = d.due
            {
                m.record_lateness((now_ms() - due * 1000).max(0) as u64 * 1000);
            }
            if o.done {
                let reason = d
                    .reason
                    .strip_prefix("reason=")
                    .and_then(|r| r.split(',').next())
                    .unwrap_or("rule")
                    .to_string();
                *m.actions
                    .entry((action.name().to_string(), reason))
                    .or_insert(0) += 1;
            } else {
                m.errors += 1;
            }
        }
        let due = d
            .due
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(|t| format!(", due={}", t.to_rfc3339()))
            .unwrap_or_default();
        let held = d.held as i64 + (now() - d.decided).max(0);
        log.log(&format!(
            "{}: {}, {}{due}, held={held}s: {}",
            d.loc.id,
            action.name(),
            d.reason,
            o.what
        ));
        o.done
    };
    // Wake-ups and directory syncs once per batch of actions, not per message.
    let flush = |trig: &mut Triggers| {
        if trig.qmgr_incoming || trig.qmgr_deferred || trig.pickup {
            trig.send(&spool.cfg);
            let _ = spool.sync_dirs();
            log.flush();
        }
    };
    let mut next_gc = Instant::now() + opts.scan_interval;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        {
            // O(1): counters are kept as entries come and go.
            let mut m = shared.lock().expect("BUG: metrics lock poisoned");
            m.scheduled = n_scheduled;
            m.next_due = heap.peek().map(|Reverse((t, _))| t / 1000);
            m.bad_dates = n_bad;
        }
        // Forget messages that left hold by other means (postsuper, an
        // administrator): memory stays proportional to the hold queue.
        if Instant::now() >= next_gc {
            let qd = &spool.cfg.queue_directory;
            state.retain(|ino, e| {
                let keep =
                    std::fs::symlink_metadata(qd.join(spool.queue_dir("hold", &e.id)).join(&*e.id))
                        .is_ok_and(|m| m.ino() == *ino);
                if !keep {
                    forget(e.kind, &mut n_scheduled, &mut n_bad);
                }
                keep
            });
            board.retain(|ino, id| {
                std::fs::symlink_metadata(qd.join(spool.queue_dir("hold", id)).join(id))
                    .is_ok_and(|m| m.ino() == ino)
            });
            next_gc = Instant::now() + opts.scan_interval;
        }
        if hup.swap(false, Ordering::Relaxed) {
            match Rules::load(opts.rules.as_deref()) {
                Ok(r) => match check_scanner_users(&r, will_drop, spool.owner.0) {
                    Err(e) => log.log(&format!("warning: rules not reloaded: {e}")),
                    Ok(()) => {
                        // New scanners, a new generation: decisions, scans and
                        // results of the old rules are dropped as they come.
                        scan_threads.retain(|h| !h.is_finished());
                        let queues = start_scanners(&scan_ctx, &r, &mut scan_threads);
                        {
                            let mut b = brain.write().expect("BUG: rules lock poisoned");
                            b.rules = r;
                            b.generation += 1;
                            b.queues = queues;
                        }
                        state.clear();
                        heap.clear();
                        (n_scheduled, n_bad) = (0, 0);
                        rescan.store(true, Ordering::Relaxed);
                        log.log("rules reloaded");
                        log.flush();
                    }
                },
                Err(e) => log.log(&format!("warning: rules not reloaded: {e}")),
            }
        }
        // Act on what is due. The message is read again: its due time, its
        // rule and the gate are checked afresh.
        while let Some(Reverse((due_ms, ino))) = heap.peek().copied() {
            if due_ms > now_ms() || stop.load(Ordering::Relaxed) {
                break;
            }
            heap.pop();
            let Some(e) = state.get_mut(&ino) else {
                continue;
            };
            if e.kind == Kind::Retry && e.due * 1000 == due_ms {
                // Look again (scan retry): the parsers decide afresh. The
                // entry stays, so the new decision is not a first one.
                let loc = Location {
                    queue: "hold".into(),
                    dir: spool.queue_dir("hold", &e.id),
                    id: e.id.to_string(),
                };
                match relook.try_send(Work::Look(loc)) {
                    Ok(()) => e.kind = Kind::Looking,
                    Err(_) => {
                        e.due = now() + 1;
                        heap.push(Reverse((e.due * 1000, ino)));
                    }
                }
                continue;
            }
            if e.kind != Kind::Scheduled || e.due * 1000 != due_ms {
                continue; // superseded by a later decision
            }
            let e = state.remove(&ino).expect("BUG: entry just seen");
            n_scheduled -= 1;
            let loc = Location {
                queue: "hold".into(),
                dir: spool.queue_dir("hold", &e.id),
                id: e.id.into(),
            };
            let again = decide(
                &spool.cfg,
                &brain.read().expect("BUG: rules lock poisoned"),
                &board,
                &loc,
            );
            match again {
                Some(d) if d.ino == ino && d.due.is_some_and(|t| t <= now()) => {
                    let done = perform(&d, &mut trig);
                    if !done {
                        // Locked or raced: try again shortly, not at the next scan.
                        let retry = now() + RETRY_SECS;
                        heap.push(Reverse((retry * 1000, ino)));
                        state.insert(
                            ino,
                            Entry {
                                id: d.loc.id.clone().into_boxed_str(),
                                due: retry,
                                kind: Kind::Scheduled,
                            },
                        );
                        n_scheduled += 1;
                    }
                }
                Some(d) if d.ino == ino => {
                    // Changed meanwhile (rules, or not due after all): decide again.
                    let _ = work_again.send(d);
                }
                _ => {} // gone, replaced or unreadable: the next event or scan decides
            }
        }
        flush(&mut trig);
        let wait = heap
            .peek()
            .map(|Reverse((t, _))| (t - now_ms()).clamp(0, 250) as u64)
            .unwrap_or(250);
        let d = match again_rx.try_recv() {
            Ok(d) => d,
            Err(_) => match dec_rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(d) => d,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    log.flush();
                    if parsers.iter().all(|p| p.is_finished()) && !stop.load(Ordering::Relaxed) {
                        // Every parser is gone (a panic): exit non-zero so
                        // that the service manager restarts the daemon.
                        log.log("fatal: parser threads stopped");
                        log.flush();
                        stop.store(true, Ordering::Relaxed);
                        return Err(Fatal::runtime("parser threads stopped"));
                    }
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    if !stop.load(Ordering::Relaxed) {
                        // Every parser is gone (a panic): exit non-zero so
                        // that the service manager restarts the daemon.
                        log.log("fatal: parser threads stopped");
                        log.flush();
                        return Err(Fatal::runtime("parser threads stopped"));
                    }
                    break;
                }
            },
        };
        if d.generation != brain.read().expect("BUG: rules lock poisoned").generation {
            continue; // made under rules since replaced: the rescan decides again
        }
        let kind = match (&d.verdict, d.due) {
            (Verdict::Keep, _) if d.retry_at.is_some() => Some(Kind::Retry),
            (Verdict::Keep, _)
                if d.reason.starts_with("reason=bad-date")
                    || d.reason.starts_with("reason=beyond-horizon") =>
            {
                Some(Kind::KeepBad)
            }
            (Verdict::Keep, _) => Some(Kind::Keep),
            (Verdict::ReleaseAt(_), Some(due)) if due > now() => Some(Kind::Scheduled),
            _ => None, // act now
        };
        let prev = state.get(&d.ino).filter(|e| *e.id == *d.loc.id);
        if kind.is_none() && prev.is_some_and(|p| p.kind == Kind::Scheduled) {
            continue; // due or retrying: the heap acts on it, re-reading it first
        }
        let new_due = if kind == Some(Kind::Retry) {
            d.retry_at
        } else {
            d.due
        };
        if let (Some(p), Some(k)) = (prev, kind)
            && p.kind == k
            && (!matches!(k, Kind::Scheduled | Kind::Retry) || Some(p.due) == new_due)
        {
            continue; // already decided the same way
        }
        if prev.is_none() {
            let us = (now_ms() * 1000 - d.committed_us).max(0) as u64;
            shared
                .lock()
                .expect("BUG: metrics lock poisoned")
                .record_latency(us);
        }
        let prev_kind = prev.map(|p| p.kind);
        if let Some(old) = state.remove(&d.ino) {
            forget(old.kind, &mut n_scheduled, &mut n_bad);
        }
        match kind {
            Some(k) => {
                if k == Kind::Scheduled {
                    let due = d.due.expect("BUG: scheduled without due");
                    log.log(&format!(
                        "{}: scheduled, {}, due={}",
                        d.loc.id,
                        d.reason,
                        rfc3339(due)
                    ));
                    heap.push(Reverse((due * 1000, d.ino)));
                    n_scheduled += 1;
                } else if k == Kind::Retry {
                    let at = d.retry_at.expect("BUG: retry without a time");
                    // Once per episode: the scan workers log each failure.
                    if !matches!(prev_kind, Some(Kind::Retry | Kind::Looking)) {
                        log.log(&format!(
                            "{}: keep, {}, retry={}",
                            d.loc.id,
                            d.reason,
                            rfc3339(at)
                        ));
                    }
                    heap.push(Reverse((at * 1000, d.ino)));
                } else {
                    log.log(&format!(
                        "{}: keep, {}, held={}s",
                        d.loc.id, d.reason, d.held
                    ));
                    if k == Kind::KeepBad {
                        n_bad += 1;
                    }
                }
                state.insert(
                    d.ino,
                    Entry {
                        id: d.loc.id.clone().into_boxed_str(),
                        due: new_due.unwrap_or(0),
                        kind: k,
                    },
                );
            }
            None => {
                if !perform(&d, &mut trig) {
                    // Failed (locked, raced): retry from the heap. The entry
                    // also stops our own inotify events from retrying at once.
                    let retry = now() + RETRY_SECS;
                    heap.push(Reverse((retry * 1000, d.ino)));
                    state.insert(
                        d.ino,
                        Entry {
                            id: d.loc.id.clone().into_boxed_str(),
                            due: retry,
                            kind: Kind::Scheduled,
                        },
                    );
                    n_scheduled += 1;
                }
                if dec_rx.is_empty() {
                    flush(&mut trig);
                }
            }
        }
    }
    flush(&mut trig);
    stop.store(true, Ordering::Relaxed);
    log.log(&format!(
        "stopping: {n_scheduled} scheduled releases left to the next start"
    ));
    log.flush();
    drop(dec_rx);
    for t in threads.into_iter().chain(parsers).chain(scan_threads) {
        let _ = t.join();
    }
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    Ok(0)
}
