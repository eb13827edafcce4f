//! What the daemon remembers of scans, per held message (keyed by inode,
//! checked against the queue ID): results so far, whether a scan is
//! queued or running, failures and strikes, and when it may be tried
//! again. Memory only: a restart scans again from the spool.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::scan::Answer;

#[derive(Debug, Default)]
struct Slot {
    id: Box<str>,
    generation: u64,
    results: Vec<(usize, Answer)>,
    busy: bool,
    failures: u32,
    strikes: u32,
    not_before_ms: i64,
    /// When its scans began to fail (ms; 0: they do not).
    failing_since_ms: i64,
    /// Failing for longer than the rules' `stuck_after` (told once).
    stuck: bool,
    /// Waiting for a scanner that is down (told once).
    waiting: bool,
}

/// May a scan start now?
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Yes: the message is now marked busy.
    Go,
    /// A scan is queued or running; it will decide.
    Busy,
    /// Not before this time (ms), after a failure.
    Wait(i64),
}

/// After a failed scan.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    /// Failures in a row.
    pub failures: u32,
    /// Timeouts and crashes so far.
    pub strikes: u32,
    /// When to try again (ms).
    pub retry_ms: i64,
    /// Failing for longer than `stuck_after` since this failure, and not
    /// before: the moment to tell.
    pub newly_stuck: bool,
    /// The first wait for a scanner that is down (since the last result):
    /// the moment to tell.
    pub newly_waiting: bool,
}

/// A failed scan, as [`Board::failed`] records it.
pub struct Failure<B> {
    /// A timeout or crash (counts towards poison).
    pub strike: bool,
    /// A failure of this message's own (false: it only waited for a
    /// scanner that is down; failures and backoff stay as they were).
    pub count: bool,
    /// The wait before try `n + 1`.
    pub backoff: B,
    /// How long scans may keep failing before the message is stuck.
    pub stuck_after: Duration,
}

/// Scan state of held messages, shared by parsers and scan workers.
#[derive(Debug, Default)]
pub struct Board {
    slots: Mutex<HashMap<u64, Slot>>,
}

impl Board {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u64, Slot>) -> T) -> T {
        f(&mut self.slots.lock().expect("BUG: scan board poisoned"))
    }

    /// The slot for (inode, ID) under rules generation `generation`; a slot of
    /// another message or generation is started afresh.
    fn slot<'m>(
        m: &'m mut HashMap<u64, Slot>,
        ino: u64,
        id: &str,
        generation: u64,
    ) -> &'m mut Slot {
        let s = m.entry(ino).or_default();
        if *s.id != *id || s.generation != generation {
            *s = Slot {
                id: id.into(),
                generation,
                ..Slot::default()
            };
        }
        s
    }

    /// Results known for this message.
    pub fn results(&self, ino: u64, id: &str, generation: u64) -> Vec<(usize, Answer)> {
        self.with(|m| match m.get(&ino) {
            Some(s) if *s.id == *id && s.generation == generation => s.results.clone(),
            _ => Vec::new(),
        })
    }

    /// Claims the message for a scan.
    pub fn claim(&self, ino: u64, id: &str, generation: u64, now_ms: i64) -> Claim {
        self.with(|m| {
            let s = Self::slot(m, ino, id, generation);
            if s.busy {
                Claim::Busy
            } else if s.not_before_ms > now_ms {
                Claim::Wait(s.not_before_ms)
            } else {
                s.busy = true;
                Claim::Go
            }
        })
    }

    /// Gives a claim back without a result (the scanner's queue was full,
    /// the file went away, the daemon stops); `retry_ms` delays the next.
    pub fn unclaim(&self, ino: u64, id: &str, generation: u64, retry_ms: Option<i64>) {
        self.with(|m| {
            if let Some(s) = m.get_mut(&ino)
                && *s.id == *id
                && s.generation == generation
            {
                s.busy = false;
                if let Some(t) = retry_ms {
                    s.not_before_ms = t;
                }
            }
        })
    }

    /// Records a result; false if the message's slot is gone or of
    /// another generation (the result is then dropped).
    pub fn succeeded(
        &self,
        ino: u64,
        id: &str,
        generation: u64,
        scanner: usize,
        o: Answer,
    ) -> bool {
        self.with(|m| match m.get_mut(&ino) {
            Some(s) if *s.id == *id && s.generation == generation => {
                s.busy = false;
                s.failures = 0;
                (s.failing_since_ms, s.stuck) = (0, false);
                s.results.retain(|(i, _)| *i != scanner);
                s.results.push((scanner, o));
                true
            }
            _ => false,
        })
    }

    /// Records a failure; `None` if the slot is gone or of another
    /// generation.
    pub fn failed(
        &self,
        ino: u64,
        id: &str,
        generation: u64,
        how: Failure<impl Fn(u32) -> Duration>,
        now_ms: i64,
    ) -> Option<Failed> {
        let Failure {
            strike,
            count,
            backoff,
            stuck_after,
        } = how;
        self.with(|m| match m.get_mut(&ino) {
            Some(s) if *s.id == *id && s.generation == generation => {
                s.busy = false;
                s.failures = s.failures.saturating_add(count as u32);
                let newly_waiting = !count && !s.waiting;
                s.waiting = !count;
                s.strikes = s.strikes.saturating_add(strike as u32);
                let wait = backoff(s.failures).as_millis().min(i64::MAX as u128) as i64;
                s.not_before_ms = now_ms.saturating_add(wait);
                if s.failing_since_ms == 0 {
                    s.failing_since_ms = now_ms;
                }
                let after = stuck_after.as_millis().min(i64::MAX as u128) as i64;
                let newly_stuck = !s.stuck && now_ms.saturating_sub(s.failing_since_ms) >= after;
                s.stuck |= newly_stuck;
                Some(Failed {
                    failures: s.failures,
                    strikes: s.strikes,
                    retry_ms: s.not_before_ms,
                    newly_stuck,
                    newly_waiting,
                })
            }
            _ => None,
        })
    }

    /// Takes back one strike (counted before its scanner was found down).
    pub fn forgive(&self, ino: u64) {
        self.with(|m| {
            if let Some(s) = m.get_mut(&ino) {
                s.strikes = s.strikes.saturating_sub(1);
            }
        })
    }

    /// Keeps the slots for which `keep(inode, id)` holds (and every slot
    /// with a scan under way). `keep` runs without the lock held: it may
    /// stat files.
    pub fn retain(&self, mut keep: impl FnMut(u64, &str) -> bool) {
        let idle: Vec<(u64, Box<str>)> = self.with(|m| {
            m.iter()
                .filter(|(_, s)| !s.busy)
                .map(|(i, s)| (*i, s.id.clone()))
                .collect()
        });
        let gone: Vec<(u64, Box<str>)> = idle.into_iter().filter(|(i, id)| !keep(*i, id)).collect();
        self.with(|m| {
            for (i, id) in gone {
                if m.get(&i).is_some_and(|s| !s.busy && s.id == id) {
                    m.remove(&i);
                }
            }
        })
    }

    /// Messages whose scans have been failing for longer than
    /// `stuck_after` (a walk of every slot: call it seldom).
    pub fn stuck(&self) -> usize {
        self.with(|m| m.values().filter(|s| s.stuck).count())
    }

    /// Messages with scan state.
    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    /// Whether no message has scan state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_results_failures_and_generations() {
        let b = Board::default();
        let back = |n: u32| Duration::from_secs(10 * n as u64);
        assert_eq!(b.claim(7, "A", 1, 0), Claim::Go);
        assert_eq!(b.claim(7, "A", 1, 0), Claim::Busy);
        let stuck_after = Duration::from_secs(15);
        let f = b
            .failed(
                7,
                "A",
                1,
                Failure {
                    strike: true,
                    count: true,
                    backoff: back,
                    stuck_after,
                },
                1000,
            )
            .unwrap();
        assert_eq!(
            f,
            Failed {
                failures: 1,
                strikes: 1,
                retry_ms: 11_000,
                newly_stuck: false,
                newly_waiting: false,
            }
        );
        assert_eq!(b.claim(7, "A", 1, 5000), Claim::Wait(11_000));
        assert_eq!(b.claim(7, "A", 1, 11_000), Claim::Go);
        let f = b
            .failed(
                7,
                "A",
                1,
                Failure {
                    strike: false,
                    count: true,
                    backoff: back,
                    stuck_after,
                },
                11_000,
            )
            .unwrap();
        assert_eq!(
            f,
            Failed {
                failures: 2,
                strikes: 1,
                retry_ms: 31_000,
                newly_stuck: false,
                newly_waiting: false,
            }
        );
        // Failing for 15 s since the first failure: stuck, told once.
        assert_eq!(b.claim(7, "A", 1, 31_000), Claim::Go);
        let f = b
            .failed(
                7,
                "A",
                1,
                Failure {
                    strike: false,
                    count: true,
                    backoff: back,
                    stuck_after,
                },
                31_000,
            )
            .unwrap();
        assert!(f.newly_stuck);
        assert_eq!(b.stuck(), 1);
        assert_eq!(b.claim(7, "A", 1, 91_000), Claim::Go);
        let f = b
            .failed(
                7,
                "A",
                1,
                Failure {
                    strike: false,
                    count: true,
                    backoff: back,
                    stuck_after,
                },
                91_000,
            )
            .unwrap();
        assert!(!f.newly_stuck, "told once");
        assert_eq!(b.stuck(), 1);
        assert_eq!(b.claim(7, "A", 1, 300_000), Claim::Go);
        assert!(b.succeeded(7, "A", 1, 0, Answer::Virus(None)));
        assert_eq!(b.stuck(), 0, "a success ends it");
        assert_eq!(b.results(7, "A", 1), vec![(0, Answer::Virus(None))]);
        // Another message on the same inode, or new rules: a fresh start.
        assert!(b.results(7, "B", 1).is_empty());
        assert!(b.results(7, "A", 2).is_empty());
        assert_eq!(b.claim(7, "A", 2, 0), Claim::Go);
        // A result from the old generation is dropped.
        assert!(!b.succeeded(7, "A", 1, 0, Answer::Virus(None)));
        assert!(
            b.failed(
                7,
                "A",
                1,
                Failure {
                    strike: true,
                    count: true,
                    backoff: back,
                    stuck_after
                },
                0
            )
            .is_none()
        );
        b.unclaim(7, "A", 2, Some(99));
        assert_eq!(b.claim(7, "A", 2, 0), Claim::Wait(99));
        b.retain(|_, _| false);
        assert!(b.is_empty());
    }
}
