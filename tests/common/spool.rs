//! A temporary spool for tests that play Postfix: real files, inodes,
//! renames and owners in a temp dir, and a census of where every file is.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use queue_format::writer::Builder;

use super::{empty_config, is_root, posthold, run};

/// A queue directory in a temp dir, every queue present, and a config.
pub struct TempSpool {
    pub dir: tempfile::TempDir,
    pub cfg: tempfile::TempDir,
    seq: u32,
}

pub fn postfix_ids() -> (u32, u32) {
    static IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *IDS.get_or_init(lookup_postfix_ids)
}

fn lookup_postfix_ids() -> (u32, u32) {
    let out = std::process::Command::new("id")
        .args(["-u", "postfix"])
        .output()
        .unwrap();
    let uid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("postfix user (run .ci/run)");
    let out = std::process::Command::new("id")
        .args(["-g", "postfix"])
        .output()
        .unwrap();
    let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

impl TempSpool {
    pub fn new() -> TempSpool {
        assert!(
            is_root(),
            "mover tests need root (chown to postfix): run .ci/run"
        );
        let dir = tempfile::Builder::new()
            .prefix("posthold-spool-")
            .tempdir()
            .unwrap();
        for q in [
            "incoming", "active", "deferred", "hold", "maildrop", "defer", "bounce", "trace",
            "public", "pid",
        ] {
            std::fs::create_dir(dir.path().join(q)).unwrap();
        }
        TempSpool {
            dir,
            cfg: empty_config(),
            seq: 0,
        }
    }

    /// Adds main.cf settings (`name = value` lines), dated in the past as
    /// Postfix wants.
    pub fn set(&self, lines: &[&str]) {
        let p = self.cfg.path().join("main.cf");
        let mut text = std::fs::read_to_string(&p).unwrap();
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&p, text).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(600))
            .unwrap();
    }

    /// Starts `posthold watch` on this spool as root (no privilege drop),
    /// logging to a file; killed on drop.
    pub fn watch(&self, extra: &[&str]) -> super::Daemon {
        let log = self.cfg.path().join(format!(
            "watch-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut c = posthold();
        c.arg("watch")
            .arg("-c")
            .arg(self.cfg.path())
            .arg("--queue-directory")
            .arg(self.q())
            .arg("--no-drop-privileges")
            .args(if extra.contains(&"--scan-interval") {
                &[][..]
            } else {
                &["--scan-interval", "3600s"][..]
            })
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        super::Daemon {
            child: c.spawn().expect("posthold watch"),
            log,
        }
    }

    /// Writes a rules file next to the config; returns its path.
    pub fn rules(&self, text: &str) -> PathBuf {
        let p = self.cfg.path().join("rules.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn q(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a committed message into `queue` as cleanup would: a
    /// temporary name, then renamed to the ID its inode gives; 0700 postfix.
    pub fn add_with(&mut self, queue: &str, b: Builder, mode: u32) -> String {
        self.seq += 1;
        let tmp = self
            .q()
            .join(queue)
            .join(format!("{}.{}", self.seq, std::process::id()));
        std::fs::write(&tmp, b.build()).unwrap();
        let (uid, gid) = postfix_ids();
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        let ino = std::fs::metadata(&tmp).unwrap().ino();
        let id = queue_format::queue_id::encode_short(self.seq * 7 % 1_000_000, ino);
        let rel = queue_format::hash_dir::queue_path(queue, &id, queue == "deferred", 1);
        let dst = self.q().join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
        id
    }

    pub fn add(&mut self, queue: &str) -> String {
        let n = self.seq;
        let b = Builder::new(now() - 60, format!("s{n}@example.com"))
            .recipient(format!("r{n}@example.net"))
            .header(format!("Subject: test {n}"))
            .body_line(format!("body {n}"));
        self.add_with(queue, b, 0o700)
    }

    /// Every place (relative path) where a file named `id` is.
    pub fn find(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in walk(self.q()) {
            if e.file_name().is_some_and(|n| n == id) {
                out.push(
                    e.strip_prefix(self.q())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        out.sort();
        out
    }

    /// Files in hold/ (a cheap census for tests that move nothing).
    pub fn find_all_count(&self) -> usize {
        std::fs::read_dir(self.q().join("hold")).unwrap().count()
    }

    /// `posthold SUBCOMMAND -c CONFIG --queue-directory QUEUE ARGS...`.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = posthold();
        c.arg(args[0])
            .arg("-c")
            .arg(self.cfg.path())
            .arg("--queue-directory")
            .arg(self.q())
            .args(&args[1..]);
        c
    }

    /// Runs [`TempSpool::command`] with no stdin.
    pub fn cmd(&self, args: &[&str]) -> Output {
        run(self.command(args))
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

/// Where every file is: name -> (relative path, inode).
pub fn census(s: &TempSpool) -> HashMap<String, Vec<(String, u64)>> {
    let mut m: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for p in walk(s.q()) {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            continue;
        }
        let rel = p
            .strip_prefix(s.q())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        m.entry(name).or_default().push((rel, meta.ino()));
    }
    m
}
