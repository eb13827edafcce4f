//! The parsers: read a held message's envelope and headers read-only
//! (never the body), ask the rules ([`crate::rules::Rules::judge`], the
//! same decision `posthold scan` makes), and send a [`Decision`] keyed by
//! (queue ID, inode) to the scheduler, or a scan job to a scanner.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::board::{Board, Claim};
use super::decision::{Brain, Decision, Job, Work, send_or_stop};
use crate::config::Config;
use crate::queue::spool::Location;
use crate::read::message::facts_of;
use crate::rules::{Judgement, Reason, Verdict};
use crate::util::{now, now_ms};

/// Seconds before a message whose scanner queue was full is looked at again.
pub const BUSY_RETRY_SECS: i64 = 5;

/// Applies the rules to a held file: the decision, or `None` if it is not
/// ready or a scan was started (the scan worker then decides).
pub fn look(
    cfg: &Config,
    root: BorrowedFd<'_>,
    brain: &Brain,
    board: &Board,
    loc: &Location,
) -> Option<Decision> {
    let held = match facts_of(cfg, root, loc, brain.rules.requeue_after) {
        Ok(h) => h,
        // A committed file whose records cannot be read (damaged, or a
        // newer queue format): kept, and told, once.
        Err(u) => {
            let ino = u.damaged()?;
            return Some(Decision {
                loc: loc.clone(),
                ino,
                verdict: Verdict::Keep,
                due: None,
                reason: Reason::Damaged {
                    error: u.what().chars().take(200).collect(),
                },
                held: 0,
                decided: now(),
                committed_us: now_ms() * 1000,
                requeued_copy: false,
                arrival: None,
                retry_at: None,
                generation: brain.generation,
            });
        }
    };
    let (ino, facts, committed_us, requeued_copy) =
        (held.ino, held.facts, held.committed_us, held.requeued_copy);
    let results = if brain.rules.scanners.is_empty() {
        Vec::new()
    } else {
        board.results(ino, &loc.id, brain.generation)
    };
    let now = now();
    let mut d = Decision {
        loc: loc.clone(),
        ino,
        verdict: Verdict::Keep,
        due: None,
        reason: Reason::NoRule,
        held: facts.held,
        decided: now,
        committed_us,
        requeued_copy,
        arrival: held.arrival,
        retry_at: None,
        generation: brain.generation,
    };
    let si = match brain.rules.judge(&facts, &results, now) {
        Judgement::Ruled(r) => {
            d.verdict = r.verdict;
            d.due = r.due;
            d.reason = r.reason;
            return Some(d);
        }
        Judgement::Scan(si) => si,
    };
    let scanner = brain.rules.scanners[si].name.clone();
    match board.claim(ino, &loc.id, brain.generation, now_ms()) {
        Claim::Busy => return None,
        Claim::Wait(t) => {
            d.retry_at = Some(t.div_euclid(1000) + 1);
            d.reason = Reason::ScanRetry { scanner };
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
    match brain.queues.get(si).map(|q| q.try_send(job)) {
        Some(Ok(())) => None,
        _ => {
            // Its queue is full: keep the message and look again, spread
            // over a few seconds.
            let retry = now + BUSY_RETRY_SECS + (ino % 5) as i64;
            board.unclaim(ino, &loc.id, brain.generation, Some(retry * 1000));
            d.retry_at = Some(retry);
            d.reason = Reason::ScannerBusy { scanner };
            Some(d)
        }
    }
}

/// Starts `n` parser threads.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    n: usize,
    cfg: &Config,
    root: &Arc<OwnedFd>,
    rx: &Receiver<Work>,
    tx: &Sender<Decision>,
    brain: &Arc<RwLock<Brain>>,
    board: &Arc<Board>,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (c, r, rx, tx) = (cfg.clone(), Arc::clone(root), rx.clone(), tx.clone());
            let (b, bd, s) = (Arc::clone(brain), Arc::clone(board), Arc::clone(stop));
            std::thread::spawn(move || parser(c, r, rx, tx, b, bd, s))
        })
        .collect()
}

/// One parser thread: looks at each message it is sent until the daemon
/// stops or the work channel closes.
pub fn parser(
    cfg: Config,
    root: Arc<OwnedFd>,
    rx: Receiver<Work>,
    tx: Sender<Decision>,
    brain: Arc<RwLock<Brain>>,
    board: Arc<Board>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let loc = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Work::Look(loc)) => loc,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        // Read-locked, not cloned: a clone per message cost more than
        // reading the message.
        let d = look(
            &cfg,
            root.as_fd(),
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
}
