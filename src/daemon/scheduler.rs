//! The scheduler's state: per held message one compact entry keyed by
//! inode (about 40 bytes plus the ID, so memory stays small with a million
//! held messages), and a heap of due times. Everything else is read again
//! from the message when it is due: no state is kept outside the spool,
//! and a restart scans and decides again.
//!
//! A struct with one method per event, each unit-tested without Postfix:
//! a decision arrives ([`Scheduler::decision`]), a due time passes
//! ([`Scheduler::next_due`]), a move fails ([`Scheduler::move_failed`]),
//! the rules are reloaded ([`Scheduler::reload`]), messages leave hold by
//! other means ([`Scheduler::forget_gone`]). Acting is the caller's job
//! (the event loop, through the [`super::actor::Actor`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use super::decision::Decision;
use super::logger::Logger;
use super::metrics::Shared;
use crate::rules::{Reason, Verdict};
use crate::util::rfc3339;

/// Seconds before a failed action (file locked, raced) is tried again the
/// first time; each further failure doubles it, up to [`RETRY_MAX_SECS`].
pub const RETRY_SECS: i64 = 5;

/// The longest wait between two tries of a failed action.
pub const RETRY_MAX_SECS: i64 = 3600;

/// Whether a failed action may heal by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// A lock, a race, a message not yet committed: tried again soon.
    Transient,
    /// Refused for what will not heal by itself (two links, a wrong owner,
    /// a name that does not match the inode, damaged records, a directory
    /// that cannot be made): tried again with backoff, counted, and shown
    /// by `posthold check`.
    Lasting,
}

/// What the scheduler remembers of a held message.
#[derive(Debug)]
struct Entry {
    /// The queue ID (the inode is the map key: IDs repeat, live inodes do not).
    id: Box<str>,
    /// Due time in seconds when scheduled or retrying.
    due: i64,
    state: State,
    /// Failed tries of its action so far (for the backoff).
    tries: u8,
    /// A hash of the last failure's text: a failure is logged when it
    /// changes, not at every try.
    last_failure: u64,
}

/// Where a held message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Kept by a rule that keeps.
    Keep,
    /// Kept because no rule matched: counted, so that mail held with
    /// nothing to release it is never stranded silently.
    KeepNoRule,
    /// Kept because of a bad date (unreadable, or beyond the horizon).
    KeepBad,
    /// Kept because its queue file cannot be read (damaged, or a newer
    /// queue format).
    KeepDamaged,
    /// A release (or a retried action) at `due`.
    Scheduled,
    /// An action the gate refused for a lasting reason, tried again at
    /// `due` (backing off).
    Refused,
    /// Handed to the caller to act on ([`Due::Act`]); the outcome says
    /// what comes next ([`Scheduler::done`], [`Scheduler::move_failed`]).
    Acting,
    /// Kept until `due`, then looked at again (a scan failed or waits).
    Retry,
    /// Sent to the parsers again; their decision replaces it.
    Looking,
}

/// A due time that passed: what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Send the message to the parsers again, then call
    /// [`Scheduler::looking`] (or [`Scheduler::look_later`] if they are
    /// busy). The entry stays, so their decision is not a first one.
    Look {
        /// Inode.
        ino: u64,
        /// Queue ID.
        id: Box<str>,
    },
    /// Read the message again and act if it is still due, then report
    /// the outcome ([`Scheduler::done`] or [`Scheduler::move_failed`]).
    Act {
        /// Inode.
        ino: u64,
        /// Queue ID.
        id: Box<str>,
    },
}

/// The scheduler's state.
pub struct Scheduler {
    entries: HashMap<u64, Entry>,
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    /// Entries in [`State::Scheduled`] (kept as they come and go: O(1)).
    scheduled: usize,
    /// Entries in [`State::KeepBad`].
    bad: usize,
    /// Entries in [`State::Refused`].
    refused: usize,
    /// Entries in [`State::KeepDamaged`].
    damaged: usize,
    /// Entries in [`State::KeepNoRule`].
    no_rule: usize,
    log: Logger,
    metrics: Arc<Mutex<Shared>>,
}

impl Scheduler {
    /// An empty scheduler that logs to `log` and records latencies in
    /// `metrics`.
    pub fn new(log: Logger, metrics: Arc<Mutex<Shared>>) -> Scheduler {
        Scheduler {
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            scheduled: 0,
            bad: 0,
            refused: 0,
            damaged: 0,
            no_rule: 0,
            log,
            metrics,
        }
    }

    fn insert(&mut self, ino: u64, id: &str, due: i64, state: State) {
        self.insert_entry(
            ino,
            Entry {
                id: id.into(),
                due,
                state,
                tries: 0,
                last_failure: 0,
            },
        );
    }

    fn insert_entry(&mut self, ino: u64, e: Entry) {
        match e.state {
            State::Scheduled => self.scheduled += 1,
            State::KeepBad => self.bad += 1,
            State::Refused => self.refused += 1,
            State::KeepDamaged => self.damaged += 1,
            State::KeepNoRule => self.no_rule += 1,
            State::Keep | State::Retry | State::Looking | State::Acting => {}
        }
        if matches!(e.state, State::Scheduled | State::Retry | State::Refused) {
            self.heap.push(Reverse((e.due * 1000, ino)));
        }
        self.entries.insert(ino, e);
    }

    fn remove(&mut self, ino: u64) -> Option<Entry> {
        let e = self.entries.remove(&ino)?;
        match e.state {
            State::Scheduled => self.scheduled -= 1,
            State::KeepBad => self.bad -= 1,
            State::Refused => self.refused -= 1,
            State::KeepDamaged => self.damaged -= 1,
            State::KeepNoRule => self.no_rule -= 1,
            State::Keep | State::Retry | State::Looking | State::Acting => {}
        }
        Some(e)
    }

    /// A decision arrives (from a parser, a scan worker, or the caller
    /// after a re-read). Returns it when it must be acted on now; otherwise
    /// it is remembered (and logged when it changes something).
    pub fn decision(&mut self, d: Decision, now_ms: i64) -> Option<Decision> {
        let state = classify(&d, now_ms);
        let prev = self.entries.get(&d.ino).filter(|e| *e.id == *d.loc.id);
        if state.is_none()
            && prev.is_some_and(|p| {
                matches!(p.state, State::Scheduled | State::Refused | State::Acting)
            })
        {
            return None; // due or retrying: the heap acts on it, re-reading it first
        }
        let new_due = if state == Some(State::Retry) {
            d.retry_at
        } else {
            d.due
        };
        if let (Some(p), Some(s)) = (prev, state)
            && p.state == s
            && (!matches!(s, State::Scheduled | State::Retry) || Some(p.due) == new_due)
        {
            return None; // already decided the same way
        }
        if prev.is_none() {
            self.metrics
                .lock()
                .expect("BUG: metrics lock poisoned")
                .record_decision(d.committed_us, now_ms);
        }
        let prev_state = prev.map(|p| p.state);
        self.remove(d.ino);
        let Some(s) = state else {
            return Some(d);
        };
        let due = new_due.unwrap_or(0);
        match s {
            State::Scheduled => self.log.log(&format!(
                "{}: scheduled, {}, due={}",
                d.loc.id,
                d.reason,
                rfc3339(due)
            )),
            State::Retry => {
                // Once per episode: the scan workers log each failure.
                if !matches!(prev_state, Some(State::Retry | State::Looking)) {
                    self.log.log(&format!(
                        "{}: keep, {}, retry={}",
                        d.loc.id,
                        d.reason,
                        rfc3339(due)
                    ));
                }
            }
            State::KeepDamaged => self.log.warn(&format!(
                "{}: keep, {}: a queue file posthold cannot read (damaged, or a newer queue format)",
                d.loc.id, d.reason
            )),
            State::Keep
            | State::KeepNoRule
            | State::KeepBad
            | State::Looking
            | State::Refused
            | State::Acting => {
                self.log.log(&format!(
                    "{}: keep, {}, held={}s",
                    d.loc.id, d.reason, d.held
                ))
            }
        }
        self.insert(d.ino, &d.loc.id, due, s);
        None
    }

    /// Whether `d` is to be acted on now (not kept, not scheduled ahead).
    pub fn acts_now(d: &Decision, now_ms: i64) -> bool {
        classify(d, now_ms).is_none()
    }

    /// The next entry whose due time has passed at `now_ms`, if any.
    pub fn next_due(&mut self, now_ms: i64) -> Option<Due> {
        while let Some(Reverse((due_ms, ino))) = self.heap.peek().copied() {
            if due_ms > now_ms {
                return None;
            }
            self.heap.pop();
            let Some(e) = self.entries.get(&ino) else {
                continue; // forgotten meanwhile
            };
            if e.due * 1000 != due_ms {
                continue; // superseded by a later decision
            }
            match e.state {
                State::Retry => {
                    return Some(Due::Look {
                        ino,
                        id: e.id.clone(),
                    });
                }
                State::Scheduled | State::Refused => {
                    let mut e = self.remove(ino).expect("BUG: entry just seen");
                    let id = e.id.clone();
                    e.state = State::Acting;
                    self.insert_entry(ino, e);
                    return Some(Due::Act { ino, id });
                }
                State::Keep
                | State::KeepNoRule
                | State::KeepBad
                | State::KeepDamaged
                | State::Looking
                | State::Acting => continue,
            }
        }
        None
    }

    /// The parsers took a [`Due::Look`]: their decision replaces the entry.
    pub fn looking(&mut self, ino: u64) {
        if let Some(e) = self.entries.get_mut(&ino) {
            e.state = State::Looking;
        }
    }

    /// The parsers were busy for a [`Due::Look`]: try again in a second.
    pub fn look_later(&mut self, ino: u64, now: i64) {
        if let Some(e) = self.entries.get_mut(&ino) {
            e.due = now + 1;
            self.heap.push(Reverse((e.due * 1000, ino)));
        }
    }

    /// The action on `ino` was done, or there was nothing left to do (the
    /// message left hold): forget it.
    pub fn done(&mut self, ino: u64) {
        self.remove(ino);
    }

    /// An action on `d` failed and the message is still held: try again
    /// after [`RETRY_SECS`], doubling with each failure up to
    /// [`RETRY_MAX_SECS`], not at every scan. The entry also stops our own
    /// inotify events from retrying at once. Returns whether to log
    /// `why`: on the first failure and whenever the failure changes, not
    /// at every try.
    pub fn move_failed(&mut self, d: &Decision, now: i64, why: &str, kind: Failed) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        why.hash(&mut h);
        let hash = h.finish();
        let prev = self
            .remove(d.ino)
            .filter(|e| *e.id == *d.loc.id && e.tries > 0);
        let tries = prev.as_ref().map_or(0, |e| e.tries).saturating_add(1);
        let changed = prev.is_none_or(|e| e.last_failure != hash);
        let wait = (RETRY_SECS << (tries - 1).min(20)).min(RETRY_MAX_SECS);
        self.insert_entry(
            d.ino,
            Entry {
                id: d.loc.id.as_str().into(),
                due: now + wait,
                state: match kind {
                    Failed::Transient => State::Scheduled,
                    Failed::Lasting => State::Refused,
                },
                tries,
                last_failure: hash,
            },
        );
        changed
    }

    /// The rules were reloaded: every decision is made again.
    pub fn reload(&mut self) {
        self.entries.clear();
        self.heap.clear();
        // The rescan decides every held message again: as at start, those
        // decisions are not commit-to-decision latencies.
        self.metrics
            .lock()
            .expect("BUG: metrics lock poisoned")
            .started_us = crate::util::now_ms() * 1000;
        (
            self.scheduled,
            self.bad,
            self.refused,
            self.damaged,
            self.no_rule,
        ) = (0, 0, 0, 0, 0);
    }

    /// Forgets messages that left hold by other means (postsuper, an
    /// administrator): `present(ino, id)` says whether one is still there.
    /// Memory stays proportional to the hold queue.
    pub fn forget_gone(&mut self, mut present: impl FnMut(u64, &str) -> bool) {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(ino, e)| !present(**ino, &e.id))
            .map(|(ino, _)| *ino)
            .collect();
        for ino in gone {
            self.remove(ino);
        }
    }

    /// Scheduled releases waiting.
    pub fn scheduled(&self) -> usize {
        self.scheduled
    }

    /// Messages kept for a bad date.
    pub fn bad_dates(&self) -> usize {
        self.bad
    }

    /// Messages whose action the gate refuses for a lasting reason.
    pub fn refused(&self) -> usize {
        self.refused
    }

    /// Messages remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Milliseconds until the earliest due time (0 if past), at most `cap`.
    pub fn wait_ms(&self, now_ms: i64, cap: u64) -> u64 {
        self.heap
            .peek()
            .map(|Reverse((t, _))| (t - now_ms).clamp(0, cap as i64) as u64)
            .unwrap_or(cap)
    }

    /// Records how many messages' scans are stuck (see the scan board).
    pub fn publish_stuck(&self, stuck: usize) {
        self.metrics
            .lock()
            .expect("BUG: metrics lock poisoned")
            .stuck = stuck;
    }

    /// Copies the counters into the metrics (O(1)).
    pub fn publish(&self) {
        let mut m = self.metrics.lock().expect("BUG: metrics lock poisoned");
        m.scheduled = self.scheduled;
        m.next_due = self.heap.peek().map(|Reverse((t, _))| t / 1000);
        m.bad_dates = self.bad;
        m.refused = self.refused;
        m.damaged = self.damaged;
        m.no_rule = self.no_rule;
    }
}

/// What a decision makes of a message: kept (and why), scheduled ahead,
/// or `None`: to be acted on now.
fn classify(d: &Decision, now_ms: i64) -> Option<State> {
    let now = now_ms.div_euclid(1000);
    match (&d.verdict, d.due) {
        (Verdict::Keep, _) if d.retry_at.is_some() => Some(State::Retry),
        (Verdict::Keep, _) if d.reason.is_bad_date() => Some(State::KeepBad),
        (Verdict::Keep, _) if matches!(d.reason, Reason::Damaged { .. }) => {
            Some(State::KeepDamaged)
        }
        (Verdict::Keep, _) if d.reason == Reason::NoRule => Some(State::KeepNoRule),
        (Verdict::Keep, _) => Some(State::Keep),
        // Judged before its due time (the scan rules were not passed then):
        // through the heap, which reads it again (and scans) when due,
        // even if it is due by the time it gets here.
        (Verdict::ReleaseAt(_), Some(due)) if due > now || due > d.decided => {
            Some(State::Scheduled)
        }
        _ => None, // act now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool::Location;

    const NOW: i64 = 1_800_000_000;

    fn sched() -> (Scheduler, Logger, Arc<Mutex<Shared>>) {
        let log = Logger::memory();
        let m = Arc::new(Mutex::new(Shared {
            started_us: 0,
            ..Shared::default()
        }));
        (Scheduler::new(log.clone(), Arc::clone(&m)), log, m)
    }

    fn d(ino: u64, verdict: Verdict, due: Option<i64>, reason: Reason) -> Decision {
        Decision {
            loc: Location {
                queue: "hold".into(),
                dir: "hold".into(),
                id: format!("ID{ino}"),
            },
            ino,
            verdict,
            due,
            reason,
            held: 10,
            decided: NOW,
            committed_us: (NOW - 1) * 1_000_000,
            requeued_copy: false,
            arrival: None,
            retry_at: None,
            generation: 1,
        }
    }

    fn at(ino: u64, due: i64) -> Decision {
        d(
            ino,
            Verdict::ReleaseAt("X-Deliver-At".into()),
            Some(due),
            Reason::Due {
                header: "X-Deliver-At".into(),
                rule: "r".into(),
            },
        )
    }

    #[test]
    fn a_future_release_waits_for_its_due_time_then_is_acted_on() {
        let (mut s, log, m) = sched();
        assert_eq!(s.decision(at(1, NOW + 60), NOW * 1000), None);
        assert_eq!(s.scheduled(), 1);
        assert_eq!(m.lock().unwrap().decisions_timed, 1);
        assert!(log.lines()[0].starts_with("ID1: scheduled, reason=x-deliver-at"));
        assert_eq!(s.wait_ms(NOW * 1000, 250), 250);
        assert_eq!(s.next_due((NOW + 59) * 1000), None, "never early");
        assert_eq!(
            s.next_due((NOW + 60) * 1000),
            Some(Due::Act {
                ino: 1,
                id: "ID1".into()
            })
        );
        assert_eq!(s.scheduled(), 0);
        assert_eq!(s.next_due((NOW + 61) * 1000), None, "acted on once");
        s.done(1);
        assert!(s.is_empty());
    }

    // Review: a release judged before its due time skipped the scan rules
    // (they are passed only when due); arriving late, it went out at once.
    #[test]
    fn a_release_judged_before_its_due_time_is_read_again_when_due() {
        let (mut s, _, _) = sched();
        let mut early = at(13, NOW + 1);
        early.decided = NOW;
        assert_eq!(
            s.decision(early, (NOW + 2) * 1000),
            None,
            "not acted on directly"
        );
        assert!(matches!(
            s.next_due((NOW + 2) * 1000),
            Some(Due::Act { ino: 13, .. })
        ));
    }

    #[test]
    fn a_due_or_immediate_decision_is_returned_to_act_on() {
        let (mut s, _, _) = sched();
        let past = at(2, NOW - 5);
        assert_eq!(s.decision(past.clone(), NOW * 1000), Some(past));
        let rel = d(3, Verdict::Release, None, Reason::Rule { rule: "r".into() });
        assert_eq!(s.decision(rel.clone(), NOW * 1000), Some(rel));
        assert!(s.is_empty());
    }

    #[test]
    fn the_same_decision_twice_is_logged_once() {
        let (mut s, log, m) = sched();
        let keep = d(4, Verdict::Keep, None, Reason::NoRule);
        assert_eq!(s.decision(keep.clone(), NOW * 1000), None);
        assert_eq!(s.decision(keep, NOW * 1000 + 5), None);
        assert_eq!(log.lines().len(), 1, "{:?}", log.lines());
        assert_eq!(m.lock().unwrap().decisions_timed, 1);
        s.decision(at(5, NOW + 60), NOW * 1000);
        s.decision(at(5, NOW + 60), NOW * 1000);
        assert_eq!(log.lines().len(), 2);
        // A new due time replaces the old one; the old heap entry is stale.
        s.decision(at(5, NOW + 120), NOW * 1000);
        assert_eq!(s.scheduled(), 1);
        assert_eq!(s.next_due((NOW + 60) * 1000), None);
        assert!(matches!(
            s.next_due((NOW + 120) * 1000),
            Some(Due::Act { ino: 5, .. })
        ));
    }

    #[test]
    fn an_act_now_decision_for_a_scheduled_message_waits_for_the_heap() {
        let (mut s, _, _) = sched();
        s.decision(at(6, NOW + 60), NOW * 1000);
        // The parsers see it again (an inotify event) once it is due:
        // the heap acts on it, re-reading it first; no second action.
        assert_eq!(s.decision(at(6, NOW + 60), (NOW + 61) * 1000), None);
        assert!(matches!(
            s.next_due((NOW + 61) * 1000),
            Some(Due::Act { ino: 6, .. })
        ));
    }

    #[test]
    fn a_failed_move_is_retried_after_five_seconds() {
        let (mut s, _, _) = sched();
        let rel = d(7, Verdict::Release, None, Reason::Rule { rule: "r".into() });
        let act = s.decision(rel, NOW * 1000).unwrap();
        assert!(s.move_failed(&act, NOW, "locked", Failed::Transient));
        assert_eq!(s.scheduled(), 1);
        // Our own inotify event for the same message does not retry at once.
        assert_eq!(s.decision(act.clone(), NOW * 1000 + 10), None);
        assert_eq!(s.next_due((NOW + RETRY_SECS) * 1000 - 1), None);
        assert!(matches!(
            s.next_due((NOW + RETRY_SECS) * 1000),
            Some(Due::Act { ino: 7, .. })
        ));
        // Done at the second try: forgotten.
        s.done(7);
        assert!(s.is_empty());
    }

    // Audit defect 3: a refusal that does not heal was retried every 5 s
    // and logged each time.
    #[test]
    fn a_lasting_refusal_backs_off_doubling_is_counted_and_logged_once() {
        let (mut s, _, m) = sched();
        let rel = d(
            12,
            Verdict::Release,
            None,
            Reason::Rule { rule: "r".into() },
        );
        let act = s.decision(rel, NOW * 1000).unwrap();
        let mut now = NOW;
        let mut logged = 0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            logged += usize::from(s.move_failed(&act, now, "file has 2 links", Failed::Lasting));
            assert_eq!(s.refused(), 1);
            assert_eq!(s.scheduled(), 0, "not a scheduled release");
            let mut t = now;
            while s.next_due(t * 1000).is_none() {
                t += 1;
            }
            waits.push(t - now);
            now = t;
        }
        assert_eq!(logged, 1, "logged once while the reason stays the same");
        assert_eq!(&waits[..5], &[5, 10, 20, 40, 80], "doubling");
        assert_eq!(*waits.last().unwrap(), RETRY_MAX_SECS, "capped");
        assert!(s.move_failed(&act, now, "owned by uid 0, not mail_owner", Failed::Lasting));
        s.publish();
        assert_eq!(m.lock().unwrap().refused, 1);
        s.done(12);
        assert_eq!(s.refused(), 0);
    }

    #[test]
    fn a_scan_retry_is_looked_at_again_and_logged_once_per_episode() {
        let (mut s, log, _) = sched();
        let mut r = d(
            8,
            Verdict::Keep,
            None,
            Reason::ScanFailed {
                scanner: "av".into(),
            },
        );
        r.retry_at = Some(NOW + 30);
        s.decision(r.clone(), NOW * 1000);
        assert_eq!(log.lines().len(), 1);
        let due = s.next_due((NOW + 30) * 1000);
        assert_eq!(
            due,
            Some(Due::Look {
                ino: 8,
                id: "ID8".into()
            })
        );
        // Parsers busy: a second later.
        s.look_later(8, NOW + 30);
        assert!(matches!(
            s.next_due((NOW + 31) * 1000),
            Some(Due::Look { ino: 8, .. })
        ));
        s.looking(8);
        r.retry_at = Some(NOW + 90);
        s.decision(r, (NOW + 31) * 1000);
        assert_eq!(log.lines().len(), 1, "a retry episode is logged once");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn bad_dates_are_counted_and_reload_and_gc_forget() {
        let (mut s, _, m) = sched();
        let bad = d(
            9,
            Verdict::Keep,
            None,
            Reason::BadDate {
                rule: "r".into(),
                header: "X-Deliver-At".into(),
                value: "soon".into(),
            },
        );
        s.decision(bad, NOW * 1000);
        s.decision(at(10, NOW + 60), NOW * 1000);
        s.decision(d(11, Verdict::Keep, None, Reason::NoRule), NOW * 1000);
        assert_eq!((s.bad_dates(), s.scheduled(), s.len()), (1, 1, 3));
        s.publish();
        assert_eq!(m.lock().unwrap().bad_dates, 1);
        assert_eq!(m.lock().unwrap().no_rule, 1, "kept with no rule: counted");
        assert_eq!(m.lock().unwrap().next_due, Some(NOW + 60));
        s.forget_gone(|ino, _| ino != 9);
        assert_eq!((s.bad_dates(), s.scheduled(), s.len()), (0, 1, 2));
        s.reload();
        assert!(s.is_empty());
        assert_eq!(
            s.next_due((NOW + 60) * 1000),
            None,
            "nothing left to act on"
        );
        // After a reload the same decisions are made (and logged) afresh.
        assert_eq!(s.decision(at(10, NOW + 60), NOW * 1000), None);
        assert_eq!(s.scheduled(), 1);
    }
}
