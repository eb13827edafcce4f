//! Scanner health: whether a scanner answers at all, kept apart from what
//! the board remembers of each message.
//!
//! A scan that gets no answer (a timeout, a reset, a refused connection, a
//! garbled or truncated reply) says something about the message only while
//! the scanner answers others. So after such a failure the worker probes
//! the scanner (spamd and clamd `PING`), and the scanner is *down* when the
//! probe gets no answer or when two different messages in a row failed
//! with no answer in between (a scanner that answers `PING` but wedges on
//! every scan: spamd stuck on a database lock). While a scanner is down no
//! failure is a strike, messages that need it stay held, and one trial
//! (a probe, then a real scan) is let through at backed-off times; the
//! first answer brings it up again. Each change is logged once and shown
//! in `posthold_scanner_up`.
//!
//! Memory only: after a restart every scanner starts up.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The first wait between trials of a down scanner; doubled up to
/// [`TRIAL_MAX`] (or the scanner's `retry_max` if smaller).
const TRIAL_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between trials.
const TRIAL_MAX: Duration = Duration::from_secs(300);
/// While a trial runs, messages waiting for the scanner look again this
/// often (ms).
const TRIAL_POLL_MS: i64 = 5000;

#[derive(Debug, Default)]
struct State {
    /// Messages (inodes) that failed with no answer since the last answer,
    /// and whether that failure was counted as a strike (a timeout).
    failing: BTreeMap<u64, bool>,
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    since_ms: i64,
    trials: u32,
    next_ms: i64,
    trial_running: bool,
}

/// May a worker scan with this scanner now?
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// It is up: scan.
    Scan,
    /// It is down and this worker makes the trial: probe, then scan. Its
    /// failure is never a strike.
    Trial,
    /// It is down: keep the message until this time (ms).
    Wait(i64),
}

/// What a failure with no answer means.
#[derive(Debug, PartialEq, Eq)]
pub struct NoAnswer {
    /// The failure counts against the message (a strike may count).
    pub blame_message: bool,
    /// The scanner has just gone down (log it once).
    pub went_down: bool,
    /// Down: messages that need it wait until this time (ms).
    pub next_trial_ms: Option<i64>,
    /// Messages whose timeout was counted as a strike before the scanner
    /// was found down: take those strikes back.
    pub forgive: Vec<u64>,
}

/// A scan that got no answer, as [`Health::no_answer`] weighs it.
#[derive(Debug, Clone, Copy)]
pub struct Lost {
    /// The held message (inode).
    pub ino: u64,
    /// The scanner died while scanning it (a reset or a close without a
    /// whole reply, a command killed by a signal): a strike, whatever the
    /// scanner does afterwards. A scanner that dies takes every scan in
    /// flight with it, so a bystander may get a strike too; the message
    /// that kills it gets one at every death, a bystander only when it
    /// happens to be in flight, so the killer reaches `poison_after` first
    /// (or with it).
    pub crash: bool,
    /// It timed out (a strike unless the scanner turns out to be down).
    pub timed_out: bool,
    /// Whether the scanner answered a probe just after (`None`: it has
    /// no probe).
    pub probe: Option<bool>,
}

/// Health of every scanner of the rules in force, by name.
#[derive(Debug, Default)]
pub struct Health {
    states: Mutex<BTreeMap<String, State>>,
}

fn wait(trials: u32, cap: Duration) -> i64 {
    let cap = cap.clamp(Duration::from_secs(1), TRIAL_MAX);
    let shift = trials.saturating_sub(1).min(20);
    TRIAL_FIRST
        .saturating_mul(1u32 << shift)
        .min(cap)
        .as_millis() as i64
}

impl Health {
    /// Runs `f` on the scanner's state; a scanner the rules no longer have
    /// (a worker of old rules finishing) gets a throw-away state.
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut State) -> T) -> T {
        let mut m = self.states.lock().expect("BUG: health lock poisoned");
        match m.get_mut(name) {
            Some(s) => f(s),
            None => f(&mut State::default()),
        }
    }

    /// Whether a scan may start (a trial is claimed by the caller, and the
    /// others wait at least `trial_len`, the longest a trial can take).
    pub fn gate(&self, name: &str, now_ms: i64, trial_len: Duration) -> Gate {
        self.with(name, |s| match &mut s.down {
            None => Gate::Scan,
            Some(d) if !d.trial_running && now_ms >= d.next_ms => {
                d.trial_running = true;
                d.next_ms = now_ms + trial_len.as_millis().min(i64::MAX as u128) as i64;
                Gate::Trial
            }
            // While a trial runs, others look again every few seconds (not
            // for as long as the trial may take: it may bring the scanner
            // up at once).
            Some(d) if d.trial_running => {
                Gate::Wait(d.next_ms.min(now_ms + TRIAL_POLL_MS).max(now_ms + 1000))
            }
            Some(d) => Gate::Wait(d.next_ms.max(now_ms + 1000)),
        })
    }

    /// The scanner answered (a result, or an error it reported itself).
    /// Returns how long it was down (ms) if this brings it up.
    pub fn answered(&self, name: &str, now_ms: i64) -> Option<i64> {
        self.with(name, |s| {
            s.failing.clear();
            s.down.take().map(|d| now_ms - d.since_ms)
        })
    }

    /// A trial that ended without bringing the scanner up (no answer, or
    /// the worker gave it up): the next one after a longer wait.
    pub fn trial_failed(&self, name: &str, retry_max: Duration, now_ms: i64) -> i64 {
        self.with(name, |s| match &mut s.down {
            Some(d) => {
                d.trial_running = false;
                d.trials = d.trials.saturating_add(1);
                d.next_ms = now_ms + wait(d.trials, retry_max);
                d.next_ms
            }
            None => now_ms,
        })
    }

    /// A scan got no answer: whose fault, and is the scanner down?
    pub fn no_answer(&self, name: &str, lost: Lost, retry_max: Duration, now_ms: i64) -> NoAnswer {
        self.with(name, |s| {
            let probe_failed = lost.probe == Some(false);
            let crash = lost.crash;
            if let Some(d) = &s.down {
                // It went down while this scan ran.
                return NoAnswer {
                    blame_message: crash,
                    went_down: false,
                    next_trial_ms: Some(d.next_ms),
                    forgive: Vec::new(),
                };
            }
            let mut forgive = Vec::new();
            if !crash {
                // A crash is one message's doing; a run of timeouts or
                // refusals across messages is the scanner's.
                s.failing.insert(lost.ino, lost.timed_out && !probe_failed);
            }
            let down = probe_failed || s.failing.len() >= 2;
            if down {
                forgive = s
                    .failing
                    .iter()
                    .filter(|(i, struck)| **i != lost.ino && **struck)
                    .map(|(i, _)| *i)
                    .collect();
                s.failing.clear();
                let next_ms = now_ms + wait(1, retry_max);
                s.down = Some(Down {
                    since_ms: now_ms,
                    trials: 1,
                    next_ms,
                    trial_running: false,
                });
            }
            NoAnswer {
                blame_message: crash || !down,
                went_down: down,
                next_trial_ms: s.down.as_ref().map(|d| d.next_ms),
                forgive,
            }
        })
    }

    /// Whether each scanner is up, by name.
    pub fn up(&self) -> BTreeMap<String, bool> {
        let m = self.states.lock().expect("BUG: health lock poisoned");
        m.iter()
            .map(|(k, s)| (k.clone(), s.down.is_none()))
            .collect()
    }

    /// The scanners of new rules (at start and after SIGHUP), all up: a
    /// scanner whose address was just fixed is not left down, and one
    /// still down is found again by its first scan.
    pub fn reset<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut m = self.states.lock().expect("BUG: health lock poisoned");
        m.clear();
        for n in names {
            m.insert(n.to_string(), State::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(3600);
    const TRIAL: Duration = Duration::from_secs(20);

    fn health() -> Health {
        let h = Health::default();
        h.reset(["s"]);
        h
    }

    fn timeout(ino: u64, probe: Option<bool>) -> Lost {
        Lost {
            ino,
            crash: false,
            timed_out: true,
            probe,
        }
    }

    #[test]
    fn one_message_failing_on_a_live_scanner_is_to_blame() {
        let h = health();
        assert_eq!(h.gate("s", 0, TRIAL), Gate::Scan);
        for t in 0..5 {
            let n = h.no_answer("s", timeout(7, Some(true)), MAX, t);
            assert!(n.blame_message && !n.went_down, "{n:?}");
        }
        assert_eq!(h.gate("s", 10, TRIAL), Gate::Scan);
    }

    #[test]
    fn a_failed_probe_takes_the_scanner_down_without_blame() {
        let h = health();
        let n = h.no_answer("s", timeout(7, Some(false)), MAX, 1000);
        assert_eq!(
            n,
            NoAnswer {
                blame_message: false,
                went_down: true,
                next_trial_ms: Some(6000),
                forgive: vec![],
            }
        );
        assert!(!h.up()["s"]);
        // Others wait; one trial at its time, and the others wait for as
        // long as it may take; its failure doubles the wait.
        assert_eq!(h.gate("s", 2000, TRIAL), Gate::Wait(6000));
        assert_eq!(h.gate("s", 6000, TRIAL), Gate::Trial);
        assert_eq!(h.gate("s", 6000, TRIAL), Gate::Wait(11_000));
        assert_eq!(h.trial_failed("s", MAX, 6000), 16_000);
        assert_eq!(h.gate("s", 16_000, TRIAL), Gate::Trial);
        assert_eq!(h.trial_failed("s", MAX, 16_000), 36_000);
        // A scan that started before it went down is not to blame either,
        // unless the scanner died of it.
        assert!(
            !h.no_answer("s", timeout(9, Some(true)), MAX, 17_000)
                .blame_message
        );
        let crash = Lost {
            ino: 9,
            crash: true,
            timed_out: false,
            probe: Some(false),
        };
        assert!(h.no_answer("s", crash, MAX, 17_000).blame_message);
        assert_eq!(h.answered("s", 40_000), Some(39_000));
        assert!(h.up()["s"]);
        assert_eq!(h.gate("s", 40_000, TRIAL), Gate::Scan);
    }

    #[test]
    fn a_message_that_kills_the_scanner_is_to_blame_and_others_wait() {
        let h = health();
        let crash = Lost {
            ino: 3,
            crash: true,
            timed_out: false,
            probe: Some(false),
        };
        let n = h.no_answer("s", crash, MAX, 0);
        assert!(n.blame_message && n.went_down, "{n:?}");
        // Crashes of different messages do not add up to "down".
        let h = health();
        for ino in 0..5 {
            let c = Lost {
                probe: Some(true),
                ..crash
            };
            let n = h.no_answer("s", Lost { ino, ..c }, MAX, 0);
            assert!(n.blame_message && !n.went_down, "{n:?}");
        }
    }

    #[test]
    fn two_messages_failing_in_a_row_mean_down_and_the_first_strike_is_taken_back() {
        let h = health();
        assert!(
            h.no_answer("s", timeout(1, Some(true)), MAX, 0)
                .blame_message
        );
        let n = h.no_answer("s", timeout(2, Some(true)), MAX, 0);
        assert!(!n.blame_message && n.went_down);
        assert_eq!(n.forgive, vec![1]);
        // An answer in between clears the run.
        let h = health();
        assert!(h.no_answer("s", timeout(1, None), MAX, 0).blame_message);
        assert_eq!(h.answered("s", 0), None);
        assert!(h.no_answer("s", timeout(2, None), MAX, 0).blame_message);
    }

    #[test]
    fn trial_waits_are_capped() {
        let h = health();
        h.no_answer("s", timeout(1, Some(false)), Duration::from_secs(20), 0);
        let mut t = 0;
        for _ in 0..10 {
            t = h.trial_failed("s", Duration::from_secs(20), t);
        }
        assert_eq!(h.trial_failed("s", Duration::from_secs(20), t) - t, 20_000);
        assert_eq!(wait(99, MAX), 300_000);
    }

    #[test]
    fn reload_starts_every_scanner_up_and_forgets_others() {
        let h = Health::default();
        h.reset(["a", "b"]);
        h.no_answer("a", timeout(1, Some(false)), MAX, 0);
        h.reset(["a", "c"]);
        let up = h.up();
        assert_eq!(up.len(), 2);
        assert!(up["a"] && up["c"]);
        // A worker of the old rules cannot bring a removed scanner back.
        h.no_answer("b", timeout(1, Some(false)), MAX, 0);
        assert_eq!(h.up().len(), 2);
    }
}
