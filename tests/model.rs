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

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Arrive),
        3 => (0usize..8).prop_map(Op::Commit),
        1 => (0usize..8).prop_map(Op::Lock),
        1 => (0usize..8).prop_map(Op::Unlock),
        1 => (0usize..8, any::<bool>()).prop_map(|(k, h)| Op::Postsuper(k, h)),
        2 => (0usize..8).prop_map(Op::Release),
        2 => (0usize..8).prop_map(Op::Hold),
        1 => Just(Op::ReleaseAll),
        1 => Just(Op::HoldAll),
        1 => (0u64..20_000).prop_map(Op::KilledRelease),
    ]
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

    fn step(&mut self, op: &Op) {
        let n = self.msgs.len();
        match op.clone() {
            Op::Arrive => {
                if n >= 8 {
                    return;
                }
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
            Op::Commit(k) if k < n && !self.msgs[k].committed => {
                let p = self.s.q().join(&self.msgs[k].path);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
                self.msgs[k].committed = true;
            }
            Op::Lock(k) if k < n && self.msgs[k].lock.is_none() => {
                let f = File::open(self.s.q().join(&self.msgs[k].path)).unwrap();
                f.lock_shared().unwrap();
                self.msgs[k].lock = Some(f);
            }
            Op::Unlock(k) if k < n => {
                self.msgs[k].lock = None;
            }
            Op::Postsuper(k, to_hold) if k < n && self.msgs[k].committed => {
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
            Op::Release(k) if k < n => {
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
            Op::Hold(k) if k < n => {
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
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn spool_invariants_hold_under_any_interleaving(ops in prop::collection::vec(op(), 1..30)) {
        let t0 = std::time::Instant::now();
        let mut w = World::new();
        if std::env::var_os("MODEL_TIMING").is_some() { eprintln!("new {:?}", t0.elapsed()); }
        for op in &ops {
            let t = std::time::Instant::now();
            w.step(op);
            w.check();
            if std::env::var_os("MODEL_TIMING").is_some() { eprintln!("{:?} {:?}", op, t.elapsed()); }
        }
    }
}
