//! Test utilities: running the real posthold binary, the fixture table, and
//! the private Postfix harness.

#![allow(dead_code)]

mod spool;
pub use spool::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command running the posthold binary built for these tests.
pub fn posthold() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_posthold"));
    c.env("TZ", "UTC");
    c
}

/// Runs a command with no stdin and returns its output.
pub fn run(mut c: impl std::borrow::BorrowMut<Command>) -> Output {
    c.borrow_mut().stdin(Stdio::null()).output().expect("spawn")
}

/// Asserts that a finished command exited with `code`, printing its stdout
/// and stderr when it did not; returns its stdout as text.
#[track_caller]
pub fn expect_exit(o: &Output, code: i32) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status {:?}, expected {code}\n--- stdout:\n{out}\n--- stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Whether Postfix's tools are installed (they are in CI: .ci/run installs them).
pub fn have_postfix() -> bool {
    Path::new("/usr/sbin/postcat").exists() && Path::new("/usr/sbin/postconf").exists()
}

/// Stops a test that needs root and a real Postfix, saying how to get them.
pub fn require_postfix() {
    assert!(
        is_root() && have_postfix(),
        "these tests need root and Postfix: run .ci/run"
    );
}

/// Whether we are root (the harness and postsuper need it).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A readable diff hint for byte outputs.
pub fn first_difference(a: &[u8], b: &[u8]) -> String {
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let line_start = a[..n]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |p| p + 1);
    let show = |s: &[u8]| {
        let end = (n + 80).min(s.len());
        String::from_utf8_lossy(&s[line_start.min(s.len())..end]).into_owned()
    };
    format!(
        "first difference at byte {n} (lengths {} vs {}):\n  posthold: {:?}\n  postfix:  {:?}",
        a.len(),
        b.len(),
        show(a),
        show(b)
    )
}

/// One captured fixture message.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub shape: String,
    pub dir: PathBuf,
    pub id: String,
    pub meta: HashMap<String, String>,
}

impl Fixture {
    pub fn file(&self) -> PathBuf {
        self.dir.join(&self.id)
    }
    pub fn reference(&self, suffix: &str) -> Vec<u8> {
        let p = self.dir.join(format!("{}{suffix}", self.id));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
    pub fn mode(&self) -> u32 {
        u32::from_str_radix(&self.meta["mode"], 8).expect("mode in .meta")
    }
}

/// All fixtures, in a stable order.
pub fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut shapes: Vec<_> = std::fs::read_dir(root().join("fixtures"))
        .expect("fixtures/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    shapes.sort_by_key(|e| e.file_name());
    for shape in shapes {
        let mut metas: Vec<_> = std::fs::read_dir(shape.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "meta"))
            .collect();
        metas.sort_by_key(|e| e.file_name());
        for m in metas {
            let text = std::fs::read_to_string(m.path()).unwrap();
            let meta = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.push(Fixture {
                shape: shape.file_name().to_string_lossy().into_owned(),
                dir: shape.path(),
                id: m.path().file_stem().unwrap().to_string_lossy().into_owned(),
                meta,
            });
        }
    }
    assert!(
        out.len() >= 40,
        "expected at least 40 fixture messages, found {}",
        out.len()
    );
    out
}

/// postcat option sets compared live with posthold cat, beyond the five
/// whose output the fixtures store (none, -e, -h, -b, -v -o).
pub const POSTCAT_COMBOS: &[&[&str]] = &[
    &["-o"],
    &["-v"],
    &["-r"],
    &["-v", "-r"],
    &["-v", "-r", "-o"],
    &["-e", "-h"],
    &["-e", "-b"],
    &["-h", "-b"],
    &["-b", "-o"],
    &["-h", "-o"],
    &["-e", "-o", "-d"],
    &["-v", "-e"],
    &["-v", "-h", "-o"],
    &["-d"],
    &["-s", "97", "-e"],
];

/// A temporary Postfix configuration directory with an empty main.cf
/// (Postfix defaults), for tools that need one but no running instance.
pub fn empty_config() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("main.cf");
    std::fs::write(&p, "compatibility_level = 3.6\n").unwrap();
    // Postfix waits up to two seconds before reading a main.cf changed in
    // the last seconds (to see complete edits); date it in the past.
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(600))
        .unwrap();
    d
}

/// A private Postfix instance run by `scripts/pf-instance`, stopped on drop.
pub struct Instance {
    pub dir: tempfile::TempDir,
}

fn pf(args: &[&str]) -> Output {
    let out = Command::new(root().join("scripts/pf-instance"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/pf-instance");
    assert!(
        out.status.success(),
        "pf-instance {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Instance {
    /// Creates and starts an instance.
    pub fn start(long_ids: bool) -> Instance {
        Instance::start_with(long_ids, &[])
    }

    /// Creates and starts an instance with extra main.cf settings.
    pub fn start_with(long_ids: bool, settings: &[&str]) -> Instance {
        let dir = tempfile::Builder::new()
            .prefix("posthold-pf-")
            .tempdir()
            .unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let mut args = vec!["create", d.as_str()];
        if long_ids {
            args.push("--long-ids");
        }
        for s in settings {
            args.push("--set");
            args.push(s);
        }
        pf(&args);
        pf(&["start", &d]);
        Instance { dir }
    }

    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    pub fn queue(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Injects a message with sendmail; `message` is the raw message text.
    pub fn send(&self, from: &str, to: &[&str], message: &[u8]) {
        use std::io::Write;
        let mut c = Command::new("/usr/sbin/sendmail");
        c.arg("-C")
            .arg(self.etc())
            .arg("-f")
            .arg(from)
            .arg("-i")
            .args(to);
        let mut child = c.stdin(Stdio::piped()).spawn().expect("sendmail");
        child.stdin.take().unwrap().write_all(message).unwrap();
        let st = child.wait().unwrap();
        assert!(st.success(), "sendmail failed");
    }

    /// Ready files in hold/.
    pub fn held(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut v: Vec<String> = std::fs::read_dir(self.queue().join("hold"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o700 == 0o700)
                    .unwrap_or(false)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Waits until `n` ready files are in hold/.
    pub fn wait_held(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let h = self.held();
            if h.len() >= n {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages held",
                h.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The instance's mail log.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/maillog")).unwrap_or_default()
    }

    /// Waits until the mail log has a line containing all of `parts`.
    pub fn wait_log(&self, parts: &[&str], secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self
                .maillog()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} in:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Files in the delivery directory.
    pub fn delivered(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join("deliver"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Sends a message over SMTP to this instance's smtpd (so that smtpd's
    /// restrictions apply), as `from` to `to`.
    pub fn smtp_send(&self, from: &str, to: &str, message: &[u8]) {
        use std::io::{BufRead, BufReader, Write};
        let env = std::fs::read_to_string(self.etc().join("pf-instance.env")).unwrap();
        let port = env
            .lines()
            .find_map(|l| l.strip_prefix("PH_PORT="))
            .expect("PH_PORT in pf-instance.env");
        let s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut expect = |code: &str| loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with(code), "smtp: want {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        };
        expect("220");
        for (cmd, code) in [
            ("EHLO posthold.test".to_string(), "250"),
            (format!("MAIL FROM:<{from}>"), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_string(), "354"),
        ] {
            write!(w, "{cmd}\r\n").unwrap();
            expect(code);
        }
        for line in String::from_utf8_lossy(message).lines() {
            let dot = if line.starts_with('.') { "." } else { "" };
            write!(w, "{dot}{line}\r\n").unwrap();
        }
        write!(w, ".\r\n").unwrap();
        expect("250");
        write!(w, "QUIT\r\n").unwrap();
    }

    /// A Postfix tool with `-c` for this instance.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(format!("/usr/sbin/{name}"));
        c.env("TZ", "UTC").arg("-c").arg(self.etc());
        c
    }

    /// posthold with `-c` for this instance.
    pub fn posthold(&self, sub: &str) -> Command {
        let mut c = posthold();
        c.arg(sub).arg("-c").arg(self.etc());
        c
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/pf-instance"))
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output();
    }
}

/// `posthold watch` on an instance, killed on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(pf: &Instance, extra: &[&str]) -> Daemon {
        let log = pf.dir.path().join(format!(
            "watch-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ));
        let mut c = pf.posthold("watch");
        c.args(["--scan-interval", "5s"]).args(extra);
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Daemon {
            child: c.spawn().expect("posthold watch"),
            log,
        }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn term(mut self) -> (Option<i32>, String) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let st = self.child.wait().unwrap();
        (st.code(), self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A started instance and a rules file with `text` in its directory.
pub fn instance_with_rules(text: &str) -> (Instance, std::path::PathBuf) {
    let pf = Instance::start(false);
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(&rules, text).unwrap();
    (pf, rules)
}

/// Waits until `ok`, failing the test at `deadline`.
pub fn wait_until(deadline: Instant, what: &str, mut ok: impl FnMut() -> bool) {
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first TOML example after `section` in README.md.
pub fn readme_toml(section: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find(section)
        .unwrap_or_else(|| panic!("README has no {section}"));
    readme[start..]
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap()
        .to_string()
}
