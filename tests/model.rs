//! A state-machine model of a spool, checked with proptest: Postfix actors
//! (cleanup creating a held file and committing it later, delivery agents
//! and other tools taking locks, postsuper moving files) interleaved with
//! posthold commands (in-process) and posthold processes killed at random
//! moments, then restarted. After every step: each message is in exactly
//! one queue directory with the same inode and the same bytes; posthold
//! never moved a file that was uncommitted or locked; nothing was
//! overwritten; nothing was deleted.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use posthold::cmd::moves::{self, RunOpts};
use posthold::config::Config;
use posthold::queue::act::{Action, ReleaseTo};
use posthold::queue::spool::Spool;
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use queue_format::writer::Builder;

use crate::common::*;

#[derive(Debug, Clone)]
enum Op {
    /// cleanup: a new message renamed into hold while still 0600.
    Arrive,
    /// cleanup: fchmod 0700 (commit) of message k.
    Commit(usize),
    /// Another process locks message k (flock).
    Lock(usize),
    Unlock(usize),
    /// postsuper -H / -h of message k (plain rename, if committed).
    Postsuper(usize, bool),
    /// posthold release k (to incoming) / hold k.
    Release(usize),
    Hold(usize),
    ReleaseAll,
    HoldAll,
    /// A posthold process doing release ALL, killed after `micros`.
    KilledRelease(u64),
}

struct Msg {
    id: String,
    ino: u64,
    bytes: Vec<u8>,
    /// Relative path where the model expects it.
    path: String,
    committed: bool,
    lock: Option<File>,
}

struct World {
    s: TempSpool,
    cfg: Config,
    msgs: Vec<Msg>,
}

impl World {
    fn new() -> World {
        let s = TempSpool::new();
        let cfg = Config::load(Some(s.cfg.path()), Some(s.q())).unwrap();
        World {
            s,
            cfg,
            msgs: Vec::new(),
        }
    }

    /// A fresh Spool per command: posthold keeps no state between runs.
    fn spool(&self) -> Spool {
        Spool::open(self.cfg.clone()).unwrap()
    }

    fn run(&self, action: Action, ids: &[String]) {
        let spool = self.spool();
        let mut out = Vec::new();
        let _ = moves::run(&spool, &action, ids, RunOpts::default(), &mut out).unwrap();
    }

    /// Where each message is now; panics if not exactly one place.
    fn locate(&self, m: &Msg) -> String {
        let found = self.s.find(&m.id);
        assert_eq!(found.len(), 1, "{} is at {found:?}", m.id);
        found[0].clone()
    }

    /// A posthold action may move message m only if it is committed and
    /// unlocked; afterwards update the model from the spool.
    fn after_posthold(&mut self, eligible: impl Fn(&Msg) -> Option<&'static str>) {
        for i in 0..self.msgs.len() {
            let now_at = self.locate(&self.msgs[i]);
            let m = &mut self.msgs[i];
            if now_at != m.path {
                assert!(m.committed, "{} moved while uncommitted", m.id);
                assert!(m.lock.is_none(), "{} moved while locked", m.id);
                m.path = now_at;
            } else if m.committed
                && m.lock.is_none()
                && let Some(q) = eligible(m)
            {
                panic!(
                    "{} should have been moved to {q} but stayed at {}",
                    m.id, m.path
                );
            }
        }
    }

    fn check(&self) {
        let mut all_names = 0;
        for p in walk(self.s.q()) {
            if !std::fs::symlink_metadata(&p).unwrap().is_dir() {
                all_names += 1;
            }
        }
        assert_eq!(all_names, self.msgs.len(), "a file appeared or vanished");
        for m in &self.msgs {
            let at = self.locate(m);
            assert_eq!(at, m.path, "{} is not where the model says", m.id);
            let meta = std::fs::metadata(self.s.q().join(&at)).unwrap();
            assert_eq!(meta.ino(), m.ino, "{}: inode changed", m.id);
            assert_eq!(
                std::fs::read(self.s.q().join(&at)).unwrap(),
                m.bytes,
                "{}: bytes changed",
                m.id
            );
        }
    }

    /// Applies `op`, whose preconditions ([`Reference::preconditions`])
    /// hold: every step does what it says.
    fn step(&mut self, op: &Op) {
        let n = self.msgs.len();
        match op.clone() {
            Op::Arrive => {
                let b = Builder::new(now(), format!("s{n}@example.com"))
                    .recipient(format!("r{n}@example.net"))
                    .body_line(format!("message {n}"));
                // cleanup renames into hold while the file is still 0600.
                let id = self.s.add_with("hold", b, 0o600);
                let path = format!("hold/{id}");
                let meta = std::fs::metadata(self.s.q().join(&path)).unwrap();
                let bytes = std::fs::read(self.s.q().join(&path)).unwrap();
                self.msgs.push(Msg {
                    id,
                    ino: meta.ino(),
                    bytes,
                    path,
                    committed: false,
                    lock: None,
                });
            }
            Op::Commit(k) => {
                let p = self.s.q().join(&self.msgs[k].path);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
                self.msgs[k].committed = true;
            }
            Op::Lock(k) => {
                let f = File::open(self.s.q().join(&self.msgs[k].path)).unwrap();
                f.lock_shared().unwrap();
                self.msgs[k].lock = Some(f);
            }
            Op::Unlock(k) => {
                self.msgs[k].lock = None;
            }
            Op::Postsuper(k, to_hold) => {
                let m = &self.msgs[k];
                let target = if to_hold {
                    format!("hold/{}", m.id)
                } else {
                    queue_format::hash_dir::queue_path("deferred", &m.id, true, 1)
                };
                if target != m.path && !self.s.q().join(&target).exists() {
                    std::fs::create_dir_all(self.s.q().join(&target).parent().unwrap()).unwrap();
                    let (uid, gid) = postfix_ids();
                    let _ = std::os::unix::fs::chown(
                        self.s.q().join(&target).parent().unwrap(),
                        Some(uid),
                        Some(gid),
                    );
                    std::fs::rename(self.s.q().join(&m.path), self.s.q().join(&target)).unwrap();
                    self.msgs[k].path = target;
                }
            }
            Op::Release(k) => {
                let id = self.msgs[k].id.clone();
                self.run(
                    Action::Release {
                        to: Some(ReleaseTo::Incoming),
                        old_after: None,
                    },
                    std::slice::from_ref(&id),
                );
                self.after_posthold(|m| {
                    (m.id == id && m.path.starts_with("hold/")).then_some("incoming")
                });
            }
            Op::Hold(k) => {
                let id = self.msgs[k].id.clone();
                self.run(Action::Hold, std::slice::from_ref(&id));
                self.after_posthold(|m| {
                    (m.id == id
                        && (m.path.starts_with("incoming/") || m.path.starts_with("deferred/")))
                    .then_some("hold")
                });
            }
            Op::ReleaseAll => {
                self.run(
                    Action::Release {
                        to: Some(ReleaseTo::Incoming),
                        old_after: None,
                    },
                    &["ALL".into()],
                );
                self.after_posthold(|m| m.path.starts_with("hold/").then_some("incoming"));
            }
            Op::HoldAll => {
                self.run(Action::Hold, &["ALL".into()]);
                self.after_posthold(|m| {
                    (m.path.starts_with("incoming/") || m.path.starts_with("deferred/"))
                        .then_some("hold")
                });
            }
            Op::KilledRelease(micros) => {
                let mut c = posthold();
                c.args(["release", "--to", "incoming", "-c"])
                    .arg(self.s.cfg.path())
                    .arg("--queue-directory")
                    .arg(self.s.q())
                    .arg("ALL")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                let mut child = c.spawn().unwrap();
                std::thread::sleep(Duration::from_micros(micros));
                let _ = child.kill();
                let _ = child.wait();
                // Restart: the state is derived from the spool again.
                self.after_posthold(|_| None);
            }
        }
    }
}

/// At most this many messages in one case.
const MAX: usize = 8;

/// What the generator knows of the world: per message, whether it is
/// committed and whether another process holds a lock on it. Transitions
/// are generated only where their preconditions hold, and shrinking keeps
/// them true.
#[derive(Debug, Clone, Default)]
struct Model {
    committed: Vec<bool>,
    locked: Vec<bool>,
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(m: &Model) -> BoxedStrategy<Op> {
        let n = m.committed.len();
        let pick = |want: &dyn Fn(usize) -> bool| (0..n).filter(|&k| want(k)).collect::<Vec<_>>();
        let uncommitted = pick(&|k| !m.committed[k]);
        let committed = pick(&|k| m.committed[k]);
        let unlocked = pick(&|k| !m.locked[k]);
        let locked = pick(&|k| m.locked[k]);
        let mut ops: Vec<(u32, BoxedStrategy<Op>)> = vec![
            (1, Just(Op::ReleaseAll).boxed()),
            (1, Just(Op::HoldAll).boxed()),
            (1, (0u64..20_000).prop_map(Op::KilledRelease).boxed()),
        ];
        if n < MAX {
            ops.push((3, Just(Op::Arrive).boxed()));
        }
        if n > 0 {
            ops.push((2, (0..n).prop_map(Op::Release).boxed()));
            ops.push((2, (0..n).prop_map(Op::Hold).boxed()));
        }
        if !uncommitted.is_empty() {
            ops.push((
                3,
                prop::sample::select(uncommitted)
                    .prop_map(Op::Commit)
                    .boxed(),
            ));
        }
        if !committed.is_empty() {
            ops.push((
                1,
                (prop::sample::select(committed), any::<bool>())
                    .prop_map(|(k, h)| Op::Postsuper(k, h))
                    .boxed(),
            ));
        }
        if !unlocked.is_empty() {
            ops.push((1, prop::sample::select(unlocked).prop_map(Op::Lock).boxed()));
        }
        if !locked.is_empty() {
            ops.push((1, prop::sample::select(locked).prop_map(Op::Unlock).boxed()));
        }
        prop::strategy::Union::new_weighted(ops).boxed()
    }

    fn preconditions(m: &Model, op: &Op) -> bool {
        let n = m.committed.len();
        match *op {
            Op::Arrive => n < MAX,
            Op::Commit(k) => k < n && !m.committed[k],
            Op::Lock(k) => k < n && !m.locked[k],
            Op::Unlock(k) => k < n && m.locked[k],
            Op::Postsuper(k, _) => k < n && m.committed[k],
            Op::Release(k) | Op::Hold(k) => k < n,
            Op::ReleaseAll | Op::HoldAll | Op::KilledRelease(_) => true,
        }
    }

    fn apply(mut m: Model, op: &Op) -> Model {
        match *op {
            Op::Arrive => {
                m.committed.push(false);
                m.locked.push(false);
            }
            Op::Commit(k) => m.committed[k] = true,
            Op::Lock(k) => m.locked[k] = true,
            Op::Unlock(k) => m.locked[k] = false,
            Op::Postsuper(..)
            | Op::Release(_)
            | Op::Hold(_)
            | Op::ReleaseAll
            | Op::HoldAll
            | Op::KilledRelease(_) => {}
        }
        m
    }
}

/// The real spool, driven by the reference's transitions.
struct SpoolTest;

impl StateMachineTest for SpoolTest {
    type SystemUnderTest = World;
    type Reference = Reference;

    fn init_test(_: &Model) -> World {
        World::new()
    }

    fn apply(mut w: World, _: &Model, op: Op) -> World {
        w.step(&op);
        w
    }

    /// The spool invariants after every step, and the world agrees with
    /// the model the generator used.
    fn check_invariants(w: &World, m: &Model) {
        w.check();
        let committed: Vec<bool> = w.msgs.iter().map(|x| x.committed).collect();
        let locked: Vec<bool> = w.msgs.iter().map(|x| x.lock.is_some()).collect();
        assert_eq!((&committed, &locked), (&m.committed, &m.locked));
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn spool_invariants_hold_under_any_interleaving(sequential 1..30 => SpoolTest);
}
