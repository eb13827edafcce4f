//! What flows between the daemon's threads: work for the parsers, scan
//! jobs, and decisions for the scheduler; and the rules in force.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::queue::spool::Location;
use crate::rules::{Reason, Rules, Verdict};

/// What the rules decided for one message.
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
    /// Why.
    pub reason: Reason,
    /// Seconds on hold when decided.
    pub held: u64,
    /// When it was decided (seconds), to report the time on hold later.
    pub decided: i64,
    /// The file's ctime (µs): the commit, for the decision-latency metric.
    pub committed_us: i64,
    /// Whether the message is a copy made by requeueing (never requeued again).
    pub requeued_copy: bool,
    /// Its arrival time (`T`), which a copy made by requeueing keeps: the
    /// daemon remembers what it requeued by it.
    pub arrival: Option<(i64, i64)>,
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

impl Brain {
    /// The first generation of `rules`; scanners not started yet.
    pub fn new(rules: Rules) -> Brain {
        Brain {
            rules,
            generation: 1,
            queues: Vec::new(),
        }
    }
}

/// A scan to run.
#[derive(Debug)]
pub struct Job {
    /// The message.
    pub loc: Location,
    /// Its inode when the scan was asked for.
    pub ino: u64,
    /// The rules generation that asked.
    pub generation: u64,
    /// The scanner (index into the rules' scanners).
    pub scanner: usize,
    /// Seconds on hold when asked.
    pub held: u64,
    /// The commit time (µs), for the latency metric.
    pub committed_us: i64,
}

/// Work for the parsers.
#[derive(Debug)]
pub enum Work {
    /// Read this held message and decide.
    Look(Location),
}

/// Sends without ever blocking past a stop request: a full channel slows
/// intake, and SIGTERM must still end the daemon promptly.
pub fn send_or_stop<T>(tx: &Sender<T>, mut item: T, stop: &AtomicBool) -> bool {
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
