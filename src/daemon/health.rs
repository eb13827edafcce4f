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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

/// The first wait between trials of a down scanner; doubled up to
/// [`TRIAL_MAX`] (or the scanner's `retry_max` if smaller).
const TRIAL_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between trials.
const TRIAL_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct State {
    /// Messages (inodes) that failed with no answer since the last answer.
    failing: BTreeSet<u64>,
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
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut State) -> T) -> T {
        let mut m = self.states.lock().expect("BUG: health lock poisoned");
        f(m.entry(name.to_string()).or_default())
    }

    /// Whether a scan may start (a trial is claimed by the caller).
    pub fn gate(&self, name: &str, now_ms: i64) -> Gate {
        self.with(name, |s| match &mut s.down {
            None => Gate::Scan,
            Some(d) if !d.trial_running && now_ms >= d.next_ms => {
                d.trial_running = true;
                Gate::Trial
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

    /// A scan of message `ino` got no answer; `probe` says whether the
    /// scanner answered a probe just after (`None`: it has none).
    pub fn no_answer(
        &self,
        name: &str,
        ino: u64,
        probe: Option<bool>,
        retry_max: Duration,
        now_ms: i64,
    ) -> NoAnswer {
        self.with(name, |s| {
            if let Some(d) = &s.down {
                // It went down while this scan ran.
                return NoAnswer {
                    blame_message: false,
                    went_down: false,
                    next_trial_ms: Some(d.next_ms),
                };
            }
            s.failing.insert(ino);
            if probe == Some(false) || s.failing.len() >= 2 {
                let next_ms = now_ms + wait(1, retry_max);
                s.down = Some(Down {
                    since_ms: now_ms,
                    trials: 1,
                    next_ms,
                    trial_running: false,
                });
                s.failing.clear();
                return NoAnswer {
                    blame_message: false,
                    went_down: true,
                    next_trial_ms: Some(next_ms),
                };
            }
            NoAnswer {
                blame_message: true,
                went_down: false,
                next_trial_ms: None,
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

    /// Forgets scanners that are no longer configured (after SIGHUP);
    /// adds the new ones as up.
    pub fn keep_only<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let names: BTreeSet<&str> = names.into_iter().collect();
        let mut m = self.states.lock().expect("BUG: health lock poisoned");
        m.retain(|k, _| names.contains(k.as_str()));
        for n in names {
            m.entry(n.to_string()).or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(3600);

    #[test]
    fn one_message_failing_on_a_live_scanner_is_to_blame() {
        let h = Health::default();
        assert_eq!(h.gate("s", 0), Gate::Scan);
        for t in 0..5 {
            let n = h.no_answer("s", 7, Some(true), MAX, t);
            assert!(n.blame_message && !n.went_down, "{n:?}");
        }
        assert_eq!(h.gate("s", 10), Gate::Scan);
    }

    #[test]
    fn a_failed_probe_takes_the_scanner_down_without_blame() {
        let h = Health::default();
        let n = h.no_answer("s", 7, Some(false), MAX, 1000);
        assert_eq!(
            n,
            NoAnswer {
                blame_message: false,
                went_down: true,
                next_trial_ms: Some(6000)
            }
        );
        assert!(!h.up()["s"]);
        // Others wait; one trial at its time; its failure doubles the wait.
        assert_eq!(h.gate("s", 2000), Gate::Wait(6000));
        assert_eq!(h.gate("s", 6000), Gate::Trial);
        assert_eq!(h.gate("s", 6000), Gate::Wait(7000));
        assert_eq!(h.trial_failed("s", MAX, 6000), 16_000);
        assert_eq!(h.gate("s", 16_000), Gate::Trial);
        assert_eq!(h.trial_failed("s", MAX, 16_000), 36_000);
        // A scan that started before it went down is not to blame either.
        assert!(!h.no_answer("s", 9, Some(true), MAX, 17_000).blame_message);
        assert_eq!(h.answered("s", 40_000), Some(39_000));
        assert!(h.up()["s"]);
        assert_eq!(h.gate("s", 40_000), Gate::Scan);
    }

    #[test]
    fn two_messages_failing_in_a_row_mean_down_even_if_it_answers_ping() {
        let h = Health::default();
        assert!(h.no_answer("s", 1, Some(true), MAX, 0).blame_message);
        let n = h.no_answer("s", 2, Some(true), MAX, 0);
        assert!(!n.blame_message && n.went_down);
        // An answer in between clears the run.
        let h = Health::default();
        assert!(h.no_answer("s", 1, None, MAX, 0).blame_message);
        assert_eq!(h.answered("s", 0), None);
        assert!(h.no_answer("s", 2, None, MAX, 0).blame_message);
    }

    #[test]
    fn trial_waits_are_capped() {
        let h = Health::default();
        h.no_answer("s", 1, Some(false), Duration::from_secs(20), 0);
        let mut t = 0;
        for _ in 0..10 {
            t = h.trial_failed("s", Duration::from_secs(20), t);
        }
        assert_eq!(h.trial_failed("s", Duration::from_secs(20), t) - t, 20_000);
        assert_eq!(wait(99, MAX), 300_000);
    }

    #[test]
    fn reload_keeps_known_scanners_and_forgets_others() {
        let h = Health::default();
        h.no_answer("a", 1, Some(false), MAX, 0);
        h.no_answer("b", 1, Some(false), MAX, 0);
        h.keep_only(["a", "c"]);
        let up = h.up();
        assert_eq!(up.len(), 2);
        assert!(!up["a"] && up["c"]);
    }
}
