//! Content scanners: real spamd and clamd from the distribution, started
//! here on loopback and a unix socket; external commands that misbehave in
//! every way the issue lists; fake spamd and clamd servers that reply
//! garbage, hang or stop half way. Whatever goes wrong, the message stays
//! held or is quarantined as configured; none is released unscanned.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// EICAR's test string, stored reversed so that no file in the repository
/// is itself a test virus; the test assembles it at run time.
fn eicar() -> String {
    r"*H+H$!ELIF-TSET-SURIVITNA-DRADNATS-RACIE$}7)CC7)^P(45XZP\4[PA@%P!O5X"
        .chars()
        .rev()
        .collect()
}

/// GTUBE, which SpamAssassin's packaged rules score 1000.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A daemon in its own process group, killed with the group on drop.
struct Server {
    child: Child,
    pub log: PathBuf,
}

impl Server {
    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn wait_connect(what: &str, mut ok: impl FnMut() -> bool, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Debian's spamd on 127.0.0.1, local tests only (no network), with its
/// packaged rules.
fn start_spamd(dir: &Path) -> (Server, String) {
    start_spamd_on(dir, free_port())
}

fn start_spamd_on(dir: &Path, port: u16) -> (Server, String) {
    let log = dir.join("spamd.log");
    let child = Command::new("/usr/sbin/spamd")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .args(["-L", "-x", "-u", "nobody", "--max-children=4"])
        .arg(format!("--pidfile={}", dir.join("spamd.pid").display()))
        .arg(format!("--syslog={}", log.display()))
        .arg(format!("--helper-home-dir={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spamd (apt-get install spamd)");
    let addr = format!("127.0.0.1:{port}");
    let s = Server { child, log };
    wait_connect(
        "spamd",
        || std::net::TcpStream::connect(&addr).is_ok(),
        &s.log,
    );
    (s, addr)
}

/// Writes clamd's signature database: EICAR by MD5 of the file and by a
/// body signature.
fn clamd_db(db: &Path) {
    std::fs::create_dir_all(db).unwrap();
    let e = eicar();
    let md5 = {
        let mut c = Command::new("md5sum");
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut ch = c.spawn().unwrap();
        ch.stdin.take().unwrap().write_all(e.as_bytes()).unwrap();
        let out = ch.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..32].to_string()
    };
    std::fs::write(
        db.join("posthold-test.hdb"),
        format!("{md5}:{}:Posthold-Test-Eicar-Hash\n", e.len()),
    )
    .unwrap();
    let hex: String = e.bytes().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        db.join("posthold-test.ndb"),
        format!("Posthold-Test-Eicar-Body:0:*:{hex}\n"),
    )
    .unwrap();
}

/// Debian's clamd on a unix socket in `dir`, with the test's database.
fn start_clamd(dir: &Path) -> (Server, PathBuf) {
    let db = dir.join("clamdb");
    clamd_db(&db);
    let sock = dir.join("clamd.sock");
    let log = dir.join("clamd.log");
    let conf = dir.join("clamd.conf");
    std::fs::write(
        &conf,
        format!(
            "Foreground yes\nLocalSocket {}\nLocalSocketMode 666\nDatabaseDirectory {}\nLogFile {}\nUser root\nStreamMaxLength 10M\nMaxThreads 4\n",
            sock.display(),
            db.display(),
            log.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/clamd")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("clamd (apt-get install clamav-daemon)");
    let s = Server { child, log };
    wait_connect(
        "clamd",
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        &s.log,
    );
    (s, sock)
}

fn message(token: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@posthold.test>\nTo: Bob <bob@posthold.test>\nSubject: HOLD token {token}\nDate: Mon, 23 Nov 2026 10:00:00 +0000\nMessage-ID: <{token}@posthold.test>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n{body}\n"
    )
    .into_bytes()
}

fn eicar_message(token: &str) -> Vec<u8> {
    use std::fmt::Write as _;
    // The virus only as a base64 attachment: found only when clamd gets
    // the message as delivered, MIME-decoded, not the raw queue file.
    let b64 = {
        let t = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in eicar().as_bytes().chunks(3) {
            let n = c.iter().fold(0u32, |a, &b| a << 8 | b as u32) << (8 * (3 - c.len()));
            for i in 0..4 {
                if i <= c.len() {
                    s.push(t[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    };
    let mut m = String::new();
    write!(
        m,
        "From: Alice <alice@posthold.test>\nTo: Bob <bob@posthold.test>\nSubject: HOLD token {token}\nDate: Mon, 23 Nov 2026 10:00:00 +0000\nMessage-ID: <{token}@posthold.test>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\nthe report you asked for\n--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"report.bin\"\n\n{b64}\n--b1--\n"
    )
    .unwrap();
    m.into_bytes()
}

/// Subject tokens of the messages in a queue directory (via posthold cat).
fn tokens_in(pf: &Instance, queue: &str) -> BTreeSet<String> {
    let dir = pf.queue().join(queue);
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in rd.flatten() {
        let mut c = posthold();
        c.args(["cat", "-h"]).arg(e.path());
        let text = String::from_utf8_lossy(&run(c).stdout).into_owned();
        if let Some(t) = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: HOLD token "))
        {
            out.insert(t.trim().to_string());
        }
    }
    out
}

/// Subject tokens of delivered messages.
/// The delivered message with this token.
fn delivered_text(pf: &Instance, token: &str) -> String {
    std::fs::read_dir(pf.dir.path().join("deliver"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .find(|t| t.contains(&format!("Subject: HOLD token {token}\n")))
        .expect("delivered")
}

fn delivered_tokens(pf: &Instance) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(pf.dir.path().join("deliver"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some(t) = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: HOLD token "))
        {
            out.insert(t.trim().to_string());
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn message_stream_is_postcat_hb_for_every_fixture() {
    require_postfix();
    let cfg = empty_config();
    let mut checked = 0;
    for fx in fixtures() {
        let mut pc = Command::new("/usr/sbin/postcat");
        pc.env("TZ", "UTC")
            .arg("-c")
            .arg(cfg.path())
            .args(["-h", "-b"])
            .arg(&fx.id)
            .current_dir(&fx.dir);
        let want = run(pc);
        let bytes = std::fs::read(fx.file()).unwrap();
        let got = (|| -> Result<Vec<u8>, String> {
            use queue_format::queue_file::{MessageContent, read_envelope};
            let mut r = queue_format::reader::Reader::new(std::io::Cursor::new(&bytes))
                .map_err(|e| e.to_string())?;
            let env = read_envelope(&mut r).map_err(|e| e.to_string())?;
            let at = env.content_offset.ok_or("no content")?;
            let mut c = MessageContent::new(&mut r, at).map_err(|e| e.to_string())?;
            // Small reads: every record and newline boundary is crossed.
            let mut out = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = c.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(out);
                }
                out.extend_from_slice(&buf[..n]);
            }
        })();
        match got {
            Ok(g) => {
                assert!(
                    want.status.success(),
                    "{}: postcat failed, we read it",
                    fx.shape
                );
                assert_eq!(
                    g,
                    want.stdout,
                    "{}/{}: {}",
                    fx.shape,
                    fx.id,
                    first_difference(&g, &want.stdout)
                );
            }
            Err(e) => panic!("{}/{}: {e}", fx.shape, fx.id),
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} fixtures");
}

#[test]
fn gtube_and_eicar_are_quarantined_clean_mail_is_delivered() {
    require_postfix();
    let pf = Instance::start(false);
    let (spamd, spamd_addr) = start_spamd(pf.dir.path());
    let (clamd, clamd_sock) = start_clamd(pf.dir.path());
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"
[scanner.clamd]
type = "clamd"
address = "{}"
concurrency = 2

[scanner.spamd]
type = "spamd"
address = "{spamd_addr}"
concurrency = 2

[[rule]]
name = "virus"
scan = "clamd"
action = "quarantine"

[[rule]]
name = "spam"
scan = "spamd"
min_score = 5.0
symbol = "^GTUBE$"
action = "quarantine"

[[rule]]
name = "clean"
action = "release"
"#,
            clamd_sock.display()
        ),
    )
    .unwrap();
    // The daemon drops to mail_owner, as in production.
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    for (i, m) in [
        message("clean1", "Lunch on Thursday? The usual place at noon."),
        message("gtube", GTUBE),
        eicar_message("eicar"),
        message(
            "clean2",
            "Minutes of the meeting are attached below.\n\n1. budget\n2. plans",
        ),
    ]
    .iter()
    .enumerate()
    {
        pf.send(
            "alice@posthold.test",
            &[&format!("bob{i}@posthold.test")],
            m,
        );
    }
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "clean mail delivered, the rest quarantined",
        || {
            delivered_tokens(&pf) == set(&["clean1", "clean2"])
                && tokens_in(&pf, "posthold-quarantine") == set(&["eicar", "gtube"])
        },
    );
    assert!(pf.held().is_empty(), "nothing left on hold");
    // Stopped, so that every line it logged is flushed.
    let (_, log) = daemon.term();
    assert!(
        log.contains("scanner=clamd, infected, virus=Posthold-Test-Eicar"),
        "{log}"
    );
    assert!(log.contains("scanner=spamd, spam, score=100"), "{log}");
    assert!(log.contains("quarantine, reason=rule, rule=virus"), "{log}");
    // The quarantine says why, when and by whom.
    let json = run(pf.posthold("list").args(["--json", "quarantine"]));
    let text = expect_exit(&json, 0);
    assert_eq!(text.lines().count(), 2, "{text}");
    for want in [
        "\"quarantine_reason\": \"rule\", \"quarantine_detail\": \"rule=virus",
        "\"quarantine_detail\": \"rule=spam",
        "\"quarantine_by\": \"posthold watch\"",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(log.contains("quarantine, reason=rule, rule=spam"), "{log}");
    // The scanners really saw the messages.
    assert!(
        std::fs::read_to_string(&clamd.log)
            .unwrap_or_default()
            .contains("FOUND")
    );
    assert!(
        std::fs::read_to_string(&spamd.log)
            .unwrap_or_default()
            .contains("identified spam")
    );
}

/// Writes an executable script.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn command_scanners_fail_closed_and_take_hostile_addresses_as_data() {
    require_postfix();
    let pf = Instance::start(false);
    let d = pf.dir.path().join("scanners");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ds = d.to_str().unwrap();
    let ok = script(&d, "ok", "cat >/dev/null; exit 0");
    let named = script(
        &d,
        "named",
        "cat >/dev/null; echo 'found: bad stuff'; exit 1",
    );
    let tempfail = script(&d, "tempfail", "exit 75");
    let unnamed = script(&d, "unnamed", "cat >/dev/null; exit 3");
    let crash = script(&d, "crash", "kill -SEGV $$");
    // Hangs, with a grandchild that must die with it.
    let hang = script(
        &d,
        "hang",
        &format!("sleep 300 & echo $! >{ds}/hang.pid.$POSTHOLD_QUEUE_ID; sleep 300"),
    );
    // Writes without end and never exits: only the timeout stops it.
    let endless = script(&d, "endless", "cat /dev/zero");
    // Never reads the (large) message, writes 20 MB to stdout and stderr.
    let loud = script(
        &d,
        "loud",
        "head -c 10000000 /dev/zero | tr '\\0' x; head -c 10000000 /dev/zero | tr '\\0' y >&2; exit 0",
    );
    // Records its arguments, NUL-separated, and its environment.
    let args = script(
        &d,
        "args",
        &format!(
            "for a in \"$@\"; do printf '%s\\0' \"$a\"; done >{ds}/args.$POSTHOLD_QUEUE_ID; env >{ds}/env.$POSTHOLD_QUEUE_ID; cat >{ds}/stdin.$POSTHOLD_QUEUE_ID; id -un >{ds}/user.$POSTHOLD_QUEUE_ID; exit 0"
        ),
    );
    let mut toml = String::new();
    for (name, path, extra) in [
        ("ok", &ok, ""),
        ("named", &named, ""),
        ("tempfail", &tempfail, ""),
        ("unnamed", &unnamed, ""),
        ("crash", &crash, ""),
        ("hang", &hang, "timeout = \"1s\"\n"),
        ("endless", &endless, "timeout = \"1s\"\n"),
        ("loud", &loud, ""),
        (
            "args",
            &args,
            "user = \"nobody\"\nenv = { SCANNER_MODE = \"strict\" }\n",
        ),
    ] {
        let argv = if name == "args" {
            format!(
                "[\"{path}\", \"--from={{sender}}\", \"{{sender}}\", \"{{recipients}}\", \"--id\", \"{{queue_id}}\"]"
            )
        } else {
            format!("[\"{path}\"]")
        };
        toml.push_str(&format!(
            "[scanner.{name}]\ntype = \"command\"\nargv = {argv}\nretry = \"1s\"\nretry_max = \"2s\"\npoison_after = 2\n{extra}\n"
        ));
    }
    for name in [
        "ok", "named", "tempfail", "unnamed", "crash", "hang", "endless", "loud", "args",
    ] {
        toml.push_str(&format!(
            "[[rule]]\nname = \"{name}\"\nrecipient = \"^{name}@\"\nscan = \"{name}\"\nexit = [1]\naction = \"quarantine\"\n\n"
        ));
    }
    // Everything that passed its scanner is released: a scanner failure
    // must never fall through to here.
    toml.push_str("[[rule]]\nname = \"passed\"\naction = \"release\"\n");
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(&rules, toml).unwrap();
    // Root: the args scanner runs as nobody.
    let daemon = Daemon::start(
        &pf,
        &["--rules", rules.to_str().unwrap(), "--no-drop-privileges"],
    );
    let big_body = "a large body line to make the message bigger than a pipe\n".repeat(20_000);
    for name in [
        "ok", "named", "tempfail", "unnamed", "crash", "hang", "endless",
    ] {
        pf.send(
            "alice@posthold.test",
            &[&format!("{name}@posthold.test")],
            &message(name, "hello"),
        );
    }
    pf.send(
        "alice@posthold.test",
        &["loud@posthold.test"],
        &message("loud", &big_body),
    );
    let hostile = [
        "\"rm -rf /\"@posthold.test",
        "\"$(touch /tmp/posthold-pwned)\"@posthold.test",
    ];
    for (i, s) in hostile.iter().enumerate() {
        pf.send(
            s,
            &["args@posthold.test", "second@posthold.test"],
            &message(&format!("args{i}"), "hi"),
        );
    }
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "passes delivered, named, crash and hang quarantined",
        || {
            delivered_tokens(&pf) == set(&["args0", "args1", "loud", "ok"])
                && tokens_in(&pf, "posthold-quarantine")
                    == set(&["crash", "endless", "hang", "named"])
        },
    );
    // Let the retries run a few rounds.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        tokens_in(&pf, "hold"),
        set(&["tempfail", "unnamed"]),
        "still held"
    );
    assert_eq!(
        delivered_tokens(&pf),
        set(&["args0", "args1", "loud", "ok"])
    );
    let (_, log) = daemon.term();
    let lines = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert!(
        lines("scanner=tempfail, error=temporary failure (exit 75)") >= 2,
        "{log}"
    );
    assert!(
        lines("scanner=unnamed, error=exit code 3 that no rule names") >= 2,
        "{log}"
    );
    assert!(
        lines("quarantine, reason=poison, scanner=crash, strikes=2, error=killed by signal 11")
            == 1,
        "{log}"
    );
    assert!(
        lines("quarantine, reason=poison, scanner=hang, strikes=2, error=timed out") == 1,
        "{log}"
    );
    assert!(lines("quarantine, reason=rule, rule=named") == 1, "{log}");
    assert!(
        lines("quarantine, reason=poison, scanner=endless, strikes=2, error=timed out") == 1,
        "{log}"
    );
    // Output: kept to the cap in the log, the rest drained.
    assert!(
        log.contains("found: bad stuff") || log.contains("scanner=named, exit=1"),
        "{log}"
    );
    // The hung scanner's grandchildren died with its process group.
    for e in std::fs::read_dir(&d).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("hang.pid.") {
            let pid: i32 = std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
                "grandchild {pid} of the hung scanner is still alive"
            );
        }
    }
    // Hostile senders arrived as data: one argument each, nothing ran.
    assert!(!Path::new("/tmp/posthold-pwned").exists());
    let mut seen = BTreeSet::new();
    for e in std::fs::read_dir(&d).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(id) = n.strip_prefix("args.") else {
            continue;
        };
        let raw = std::fs::read(e.path()).unwrap();
        let argv: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // Postfix keeps addresses unquoted inside the queue file.
        let sender = argv[1].clone();
        assert!(
            sender == "rm -rf /@posthold.test"
                || sender == "$(touch /tmp/posthold-pwned)@posthold.test",
            "{argv:?}"
        );
        assert_eq!(
            argv,
            vec![
                format!("--from={sender}"),
                sender.clone(),
                "args@posthold.test".to_string(),
                "second@posthold.test".to_string(),
                "--id".to_string(),
                id.to_string()
            ]
        );
        seen.insert(sender);
        // A minimal environment, and the configured user.
        let env = std::fs::read_to_string(d.join(format!("env.{id}"))).unwrap();
        let mut names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort();
        names.retain(|n| !["PWD", "SHLVL", "_"].contains(n));
        assert_eq!(
            names,
            ["PATH", "POSTHOLD_QUEUE_ID", "SCANNER_MODE"],
            "{env}"
        );
        assert_eq!(
            std::fs::read_to_string(d.join(format!("user.{id}")))
                .unwrap()
                .trim(),
            "nobody"
        );
        // The message as delivered: what postcat -hb shows.
        let stdin = std::fs::read(d.join(format!("stdin.{id}"))).unwrap();
        assert!(
            stdin.starts_with(b"Received: "),
            "{}",
            String::from_utf8_lossy(&stdin)
        );
        assert!(String::from_utf8_lossy(&stdin).contains("\nSubject: HOLD token args"));
    }
    assert_eq!(seen.len(), 2);
}

/// How a fake scanner answers.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// These bytes, then close.
    Reply(&'static [u8]),
    /// Close without a word.
    Close,
    /// Never answer.
    Hang,
    /// A megabyte of nonsense.
    Flood,
    /// Answers `PING` (spamd's and clamd's) but never a scan: a healthy
    /// scanner that this message wedges.
    PongThenHang,
    /// Reads the first bytes only, answers these and closes while the
    /// client is still sending (spamd refusing a request early).
    EarlyReply(&'static [u8]),
}

/// A fake scanner on a unix socket: reads the request until the client
/// pauses or ends it, then answers as told.
fn fake_server(sock: &Path, how: Fake) {
    let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut buf = [0u8; 65536];
                if let Fake::EarlyReply(r) = how {
                    let n = c.read(&mut buf[..64]).unwrap_or(0);
                    if buf[..n].starts_with(b"PING ") {
                        let _ = c.write_all(b"SPAMD/1.5 0 PONG\r\n");
                    } else {
                        let _ = c.write_all(r);
                    }
                    return; // closed with unread data: the client gets a reset
                }
                let mut req = Vec::new();
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    req.extend_from_slice(&buf[..n]);
                }
                let pong = matches!(how, Fake::PongThenHang);
                if pong && req.starts_with(b"PING ") {
                    let _ = c.write_all(b"SPAMD/1.5 0 PONG\r\n");
                    return;
                }
                if pong && req == b"zPING\0" {
                    let _ = c.write_all(b"PONG\0");
                    return;
                }
                match how {
                    Fake::PongThenHang => std::thread::sleep(Duration::from_secs(600)),
                    Fake::EarlyReply(_) => {}
                    Fake::Reply(r) => {
                        let _ = c.write_all(r);
                    }
                    Fake::Close => {}
                    Fake::Hang => std::thread::sleep(Duration::from_secs(600)),
                    Fake::Flood => {
                        let _ = c.write_all(&vec![b'A'; 1 << 20]);
                    }
                }
            });
        }
    });
}

#[test]
fn native_clients_fail_closed_on_misbehaving_servers() {
    require_postfix();
    let pf = Instance::start(false);
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("x", "hello"),
    );
    let id = pf.wait_held(1)[0].clone();
    let path = pf.queue().join("hold").join(&id);
    let before = std::fs::metadata(&path).unwrap();
    let cases: &[(&str, Fake, &str)] = &[
        ("clamd", Fake::Reply(b"garbage\0"), "unexpected reply"),
        ("clamd", Fake::Reply(b"1: stream: OK\0"), "unexpected reply"),
        ("clamd", Fake::Reply(b"stream: OK"), "truncated reply"),
        ("clamd", Fake::Reply(b"stream: OK\0stream: Eicar FOUND\0"), "unexpected"),
        ("clamd", Fake::Reply(b"INSTREAM size limit exceeded. ERROR\0"), "size limit"),
        ("clamd", Fake::Close, "without a reply"),
        ("clamd", Fake::Hang, "timed out"),
        ("clamd", Fake::Flood, "reply longer than"),
        ("spamd", Fake::Reply(b"HTTP/1.0 200 OK\r\n\r\n"), "not a spamd reply"),
        ("spamd", Fake::Reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1"), "truncated reply"),
        ("spamd", Fake::Reply(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: False ; 0.1 / 5.0\r\n\r\nHAM_1SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9 / 5\r\n\r\n"), "data after the reply"),
        ("spamd", Fake::Reply(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 40\r\nSpam: False ; 0.1 / 5.0\r\n\r\nBAYES_00"), "truncated reply"),
        ("spamd", Fake::Reply(b"SPAMD/1.0 76 Bad header line\r\n"), "spamd: SPAMD/1.0 76"),
        ("spamd", Fake::Close, "without a reply"),
        ("spamd", Fake::Hang, "timed out"),
        ("spamd", Fake::Flood, "reply longer than"),
        ("rspamd", Fake::Reply(b"garbage\r\n\r\n"), "not an HTTP reply"),
        ("rspamd", Fake::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"action\""), "truncated reply"),
        ("rspamd", Fake::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), "bad JSON"),
        ("rspamd", Fake::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 52\r\n\r\n{\"action\":\"maybe\",\"score\":1.0,\"required_score\":15.0}"), "unknown action"),
        ("rspamd", Fake::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n"), "data after the reply"),
        ("rspamd", Fake::Reply(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror"), "rspamd: HTTP/1.1 500"),
        ("rspamd", Fake::Close, "without a reply"),
        ("rspamd", Fake::Hang, "timed out"),
        ("rspamd", Fake::Flood, "reply longer than"),
    ];
    for (i, (kind, how, want)) in cases.iter().enumerate() {
        let sock = pf.dir.path().join(format!("fake{i}.sock"));
        fake_server(&sock, *how);
        let rules = pf.dir.path().join(format!("fake{i}.toml"));
        std::fs::write(
            &rules,
            format!(
                "[scanner.s]\ntype = \"{kind}\"\naddress = \"{}\"\ntimeout = \"2s\"\n[[rule]]\nscan = \"s\"\naction = \"quarantine\"\n[[rule]]\naction = \"release\"\n",
                sock.display()
            ),
        )
        .unwrap();
        for only in [true, false] {
            let mut c = pf.posthold("scan");
            c.arg("--rules").arg(&rules);
            if only {
                c.args(["--scanner", "s"]);
            }
            let out = run(c.arg(&id));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(out.status.code(), Some(1), "{kind} {how:?}: {text}");
            assert!(
                text.contains("failed") && text.contains(want),
                "{kind} {how:?}: want {want:?} in {text}"
            );
            if !only {
                assert!(text.contains("would keep and retry"), "{text}");
            }
        }
    }
    // Scanner down: nothing listens.
    let rules = pf.dir.path().join("down.toml");
    std::fs::write(&rules, "[scanner.s]\ntype = \"spamd\"\naddress = \"127.0.0.1:1\"\n[[rule]]\nscan = \"s\"\naction = \"quarantine\"\n").unwrap();
    let out = run(pf.posthold("scan").arg("--rules").arg(&rules).arg(&id));
    expect_exit(&out, 1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot connect"));
    // Nothing moved or touched.
    let after = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (before.ino(), before.mode(), before.mtime()),
        (after.ino(), after.mode(), after.mtime())
    );

    // The daemon: garbage keeps the message held (and retried), a hung
    // scanner makes it a poison message after two timeouts; the catch-all
    // release rule never sees either.
    let g = pf.dir.path().join("garbage.sock");
    fake_server(&g, Fake::Reply(b"stream: maybe\0"));
    // A healthy scanner (it answers PING) that this message wedges.
    let h = pf.dir.path().join("hung.sock");
    fake_server(&h, Fake::PongThenHang);
    let rules = pf.dir.path().join("daemon.toml");
    std::fs::write(
        &rules,
        format!(
            r#"
[scanner.garbage]
type = "clamd"
address = "{}"
retry = "1s"
retry_max = "1s"
[scanner.hung]
type = "spamd"
address = "{}"
timeout = "1s"
retry = "1s"
retry_max = "1s"
poison_after = 2
[scanner.down]
type = "clamd"
address = "{}"
retry = "1s"
retry_max = "1s"
[[rule]]
recipient = "^g@"
scan = "garbage"
action = "quarantine"
[[rule]]
recipient = "^h@"
scan = "hung"
action = "quarantine"
[[rule]]
recipient = "^d@"
scan = "down"
action = "quarantine"
[[rule]]
action = "release"
"#,
            g.display(),
            h.display(),
            pf.dir.path().join("nothing-here.sock").display()
        ),
    )
    .unwrap();
    // The first message goes too: no rule scans it, so it is released.
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    for r in ["g", "h", "d"] {
        pf.send(
            "alice@posthold.test",
            &[&format!("{r}@posthold.test")],
            &message(r, "hello"),
        );
    }
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "poison quarantined",
        || tokens_in(&pf, "posthold-quarantine") == set(&["h"]),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tokens_in(&pf, "hold"), set(&["d", "g"]));
    assert_eq!(delivered_tokens(&pf), set(&["x"]));
    let (_, log) = daemon.term();
    // Garbage to every question (PING too): down, told once.
    assert!(
        log.contains("scanner=garbage, error=unexpected reply"),
        "{log}"
    );
    assert_eq!(log.matches("scanner=garbage: down").count(), 1, "{log}");
    // Nothing listens: the scanner is down, told once; no strikes.
    assert!(log.contains("scanner=down, error=cannot connect"), "{log}");
    assert_eq!(log.matches("scanner=down: down").count(), 1, "{log}");
    assert!(
        log.contains("quarantine, reason=poison, scanner=hung, strikes=2"),
        "{log}"
    );
}

#[test]
fn real_scanners_down_hung_and_back() {
    require_postfix();
    let pf = Instance::start(false);
    let sock = pf.dir.path().join("clamd.sock");
    let port = free_port();
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"
[scanner.clamd]
type = "clamd"
address = "{}"
retry = "1s"
retry_max = "2s"
[scanner.spamd]
type = "spamd"
address = "127.0.0.1:{port}"
timeout = "2s"
retry = "1s"
retry_max = "2s"
poison_after = 100
[[rule]]
scan = "clamd"
action = "quarantine"
[[rule]]
scan = "spamd"
action = "quarantine"
[[rule]]
action = "release"
"#,
            sock.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("clean", "See you at noon."),
    );
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &eicar_message("eicar"),
    );
    // Both scanners down: both stay held.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(tokens_in(&pf, "hold"), set(&["clean", "eicar"]));
    // clamd comes up; spamd comes up hung (stopped).
    let (_clamd, _) = start_clamd(pf.dir.path());
    let (spamd, _) = start_spamd_on(pf.dir.path(), port);
    spamd.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "eicar quarantined",
        || tokens_in(&pf, "posthold-quarantine") == set(&["eicar"]),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log().contains("scanner=spamd: down: timed out") {
        assert!(Instant::now() < deadline, "spamd down: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(tokens_in(&pf, "hold"), set(&["clean"]));
    assert!(delivered_tokens(&pf).is_empty());
    // spamd wakes up: the clean message is delivered.
    spamd.signal(nix::sys::signal::Signal::SIGCONT);
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "clean delivered",
        || delivered_tokens(&pf) == set(&["clean"]),
    );
    let log = daemon.log();
    assert!(log.contains("scanner=clamd, error=cannot connect"), "{log}");
    assert!(log.contains("scanner=spamd, ham"), "{log}");
    assert!(log.contains("scanner=spamd: up again"), "{log}");
}

/// `GET /metrics` from the daemon.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Scanners that answer nobody are down, not a reason to blame messages:
/// an overloaded spamd (it accepts connections and answers nothing, not
/// even PING) and a stopped clamd quarantine nothing and release nothing;
/// each is told once and shown in `posthold_scanner_up`; clamd coming back
/// releases its clean mail. A spamd that refuses a large request before
/// reading it all (the client gets a reset while sending) is not a strike.
#[test]
fn overloaded_spamd_and_stopped_clamd_quarantine_and_release_nothing() {
    require_postfix();
    let pf = Instance::start(false);
    let spamd = pf.dir.path().join("overloaded.sock");
    fake_server(&spamd, Fake::Hang);
    let early = pf.dir.path().join("early.sock");
    fake_server(
        &early,
        Fake::EarlyReply(b"SPAMD/1.0 76 Bad header line: (Content-Length exceeds limit)\r\n"),
    );
    // Where clamd listens when it runs: nothing yet.
    let clamd = pf.dir.path().join("clamd.sock");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"
[scanner.spamd]
type = "spamd"
address = "{}"
timeout = "1s"
retry = "1s"
retry_max = "2s"
poison_after = 2
[scanner.clamd]
type = "clamd"
address = "{}"
timeout = "1s"
retry = "1s"
retry_max = "2s"
poison_after = 1
[scanner.early]
type = "spamd"
address = "{}"
timeout = "5s"
retry = "1s"
retry_max = "2s"
poison_after = 1
[[rule]]
recipient = "^s@"
scan = "spamd"
action = "quarantine"
[[rule]]
recipient = "^c@"
scan = "clamd"
action = "quarantine"
[[rule]]
recipient = "^e@"
scan = "early"
action = "quarantine"
[[rule]]
action = "release"
"#,
            spamd.display(),
            clamd.display(),
            early.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(
        &pf,
        &["--rules", rules.to_str().unwrap(), "--metrics", &addr],
    );
    for (r, tok) in [
        ("s", "s1"),
        ("s", "s2"),
        ("s", "s3"),
        ("c", "c1"),
        ("c", "c2"),
    ] {
        pf.send(
            "alice@posthold.test",
            &[&format!("{r}@posthold.test")],
            &message(tok, "See you at noon."),
        );
    }
    let big = "x".repeat(76) + "\n";
    pf.send(
        "alice@posthold.test",
        &["e@posthold.test"],
        &message("e1", &big.repeat(40_000)),
    );
    let all = set(&["s1", "s2", "s3", "c1", "c2", "e1"]);
    wait_until(Instant::now() + Duration::from_secs(30), "all held", || {
        tokens_in(&pf, "hold") == all
    });
    // Long enough for several timeouts and retries of each message: with
    // strikes for every timeout these would be poison within 4 s.
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "both scanners down",
        || {
            let log = daemon.log();
            log.contains("scanner=spamd: down") && log.contains("scanner=clamd: down")
        },
    );
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(tokens_in(&pf, "hold"), all);
    assert!(tokens_in(&pf, "posthold-quarantine").is_empty());
    assert!(delivered_tokens(&pf).is_empty());
    let log = daemon.log();
    assert_eq!(log.matches("scanner=spamd: down").count(), 1, "{log}");
    assert_eq!(log.matches("scanner=clamd: down").count(), 1, "{log}");
    assert!(!log.contains("reason=poison"), "{log}");
    // The refusal's reply is lost in the reset; the message is not blamed.
    assert!(log.contains("scanner=early, error=sending: "), "{log}");
    assert!(!log.contains("scanner=early: down"), "{log}");
    let m = scrape(&addr);
    for want in [
        "posthold_scanner_up{scanner=\"spamd\"} 0",
        "posthold_scanner_up{scanner=\"clamd\"} 0",
        "posthold_scanner_up{scanner=\"early\"} 1",
    ] {
        assert!(m.contains(want), "{want} in {m}");
    }
    // clamd starts: its clean mail goes on; spamd's stays held.
    let (_clamd, sock) = start_clamd(pf.dir.path());
    assert_eq!(sock, clamd);
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "clamd's mail delivered",
        || delivered_tokens(&pf) == set(&["c1", "c2"]),
    );
    assert!(scrape(&addr).contains("posthold_scanner_up{scanner=\"clamd\"} 1"));
    assert_eq!(tokens_in(&pf, "hold"), set(&["s1", "s2", "s3", "e1"]));
    let (_, log) = daemon.term();
    assert!(log.contains("scanner=clamd: up again"), "{log}");
}

/// The scanner example in README.md is valid and means what it says.
#[test]
fn readme_scanner_example_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rules.toml");
    std::fs::write(&p, readme_toml("### Content scanners")).unwrap();
    let mut c = posthold();
    c.arg("check-config").arg(&p);
    let o = run(c);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("1. virus: Quarantine after scan clamd"),
        "{out}"
    );
    assert!(
        out.contains("3. rspamd rejects: Quarantine after scan rspamd"),
        "{out}"
    );
    assert!(
        out.contains("4. policy says no: Expire after scan policy"),
        "{out}"
    );
    assert!(
        out.contains("scanner spamd: spamd 127.0.0.1:783 SYMBOLS"),
        "{out}"
    );
    assert!(out.contains("max_size=26214400"), "{out}");
}

/// Regression: the due-date judgement (bad date, beyond the horizon) lived
/// in the daemon alone, so `posthold scan` said "would release at
/// X-Deliver-At" for a message the daemon keeps as a bad date. Both now
/// call the same decision code.
#[test]
fn scan_judges_due_dates_as_the_daemon_does() {
    let mut sp = TempSpool::new();
    let mk = |sp: &mut TempSpool, date: &str| {
        let b = queue_format::writer::Builder::new(now() - 60, "a@example.com")
            .recipient("r@example.net")
            .header(format!("X-Deliver-At: {date}"))
            .body_line("hello");
        sp.add_with("hold", b, 0o700)
    };
    let bad = mk(&mut sp, "not a date at all");
    let far = mk(&mut sp, "Thu, 1 Jan 2099 00:00:00 +0000");
    let rules = sp.q().join("rules.toml");
    std::fs::write(
        &rules,
        "[settings]\nhorizon = \"30d\"\n[scanner.ok]\ntype = \"command\"\nargv = [\"/bin/true\"]\n\
         [[rule]]\nname = \"sched\"\nheader = \"X-Deliver-At\"\naction = \"release-at\"\n",
    )
    .unwrap();
    let out = sp.cmd(&["scan", "--rules", rules.to_str().unwrap(), &bad, &far]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("{bad}: would keep (reason=bad-date, rule=sched")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{far}: would keep (reason=beyond-horizon, rule=sched"
        )),
        "{text}"
    );
    assert!(!text.contains("would release"), "{text}");
}

/// A scheduled release cannot skip the scanners: a `release-at` mail with a
/// GTUBE body is scanned when it falls due and quarantined; clean scheduled
/// mail is delivered.
#[test]
fn scheduled_mail_is_scanned_before_release() {
    require_postfix();
    let pf = Instance::start(false);
    let (_spamd, spamd_addr) = start_spamd(pf.dir.path());
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"
[scanner.spamd]
type = "spamd"
address = "{spamd_addr}"

[[rule]]
name = "scheduled"
header = "X-Deliver-At"
action = "release-at"

[[rule]]
name = "spam"
scan = "spamd"
symbol = "^GTUBE$"
action = "quarantine"

[[rule]]
name = "clean"
action = "release"
"#
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    let due = chrono::Utc::now() + chrono::Duration::seconds(4);
    for (token, body) in [("spammy", GTUBE), ("fine", "See you at noon.")] {
        let m = String::from_utf8(message(token, body)).unwrap().replacen(
            "MIME-Version",
            &format!("X-Deliver-At: {}\nMIME-Version", due.to_rfc2822()),
            1,
        );
        pf.send("alice@posthold.test", &["bob@posthold.test"], m.as_bytes());
    }
    wait_until(
        Instant::now() + Duration::from_secs(90),
        "spam quarantined, clean delivered",
        || {
            tokens_in(&pf, "posthold-quarantine") == set(&["spammy"])
                && delivered_tokens(&pf) == set(&["fine"])
        },
    );
    let (_, log) = daemon.term();
    assert!(log.contains("quarantine, reason=rule, rule=spam"), "{log}");
    assert!(log.contains("scanner=spamd, spam"), "{log}");
}

/// Command scanners get no rights over the queue: with the daemon dropped
/// to mail_owner, and with `posthold scan` run by root, a scanner without
/// `user` runs as nobody (the launcher starts it), and what it tries to
/// write into the queue fails. Rules that would run one as root or as
/// mail_owner are refused.
#[test]
fn command_scanners_run_as_nobody_not_as_root_or_mail_owner() {
    require_postfix();
    let pf = Instance::start(false);
    let d = pf.dir.path().join("scanners");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ds = d.to_str().unwrap();
    let q = pf.queue();
    let qs = q.to_str().unwrap();
    let spy = script(
        &d,
        "spy",
        &format!(
            "id=$1\n\
             id -u >{ds}/uid.$id.$$; id -g >{ds}/gid.$id.$$\n\
             touch {qs}/hold/posthold-pwned 2>/dev/null && echo created >>{ds}/wrote\n\
             ( echo X >>{qs}/hold/$id ) 2>/dev/null && echo appended >>{ds}/wrote\n\
             ( echo X >>{qs}/active/$id ) 2>/dev/null && echo appended >>{ds}/wrote\n\
             cat >/dev/null; exit 0"
        ),
    );
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[scanner.spy]\ntype = \"command\"\nargv = [\"{spy}\", \"{{queue_id}}\"]\n\
             [[rule]]\nscan = \"spy\"\nexit = [1]\naction = \"quarantine\"\n\
             [[rule]]\naction = \"release\"\n"
        ),
    )
    .unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let owner = nix::unistd::User::from_name("postfix").unwrap().unwrap();
    let uids = |id: &str| -> Vec<u32> {
        std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("uid.{id}."))
            })
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("spied", "hello"),
    );
    let id = pf.wait_held(1)[0].clone();
    // posthold scan, run by root.
    let out = run(pf.posthold("scan").arg("--rules").arg(&rules).arg(&id));
    expect_exit(&out, 0);
    assert_eq!(uids(&id), [nobody.uid.as_raw()]);
    // The daemon, dropped to mail_owner: the launcher starts it as nobody.
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "released after the scan",
        || delivered_tokens(&pf) == set(&["spied"]),
    );
    // A SIGHUP to every process of the daemon (as `pkill -HUP posthold`
    // does) reloads the rules and leaves the launcher running.
    let pid = daemon.child.id() as i32;
    let children: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")
                        .map(|(_, r)| r.split(' ').nth(1).map(str::to_string))
                })
                .flatten()
                .is_some_and(|pp| pp == pid.to_string())
        })
        .collect();
    assert_eq!(children.len(), 1, "the launcher: {children:?}");
    for p in [pid, children[0]] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }
    wait_until(Instant::now() + Duration::from_secs(10), "reloaded", || {
        std::fs::read_to_string(&daemon.log)
            .unwrap_or_default()
            .contains("rules reloaded")
    });
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("again", "hello"),
    );
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "released after the reload",
        || delivered_tokens(&pf) == set(&["again", "spied"]),
    );
    let (_, log) = daemon.term();
    let seen = uids(&id);
    assert_eq!(seen.len(), 2, "{log}");
    for uid in seen {
        assert_eq!(uid, nobody.uid.as_raw(), "{log}");
        assert_ne!(uid, 0);
        assert_ne!(uid, owner.uid.as_raw());
    }
    assert!(
        !d.join("wrote").exists(),
        "the scanner wrote into the queue: {}",
        std::fs::read_to_string(d.join("wrote")).unwrap_or_default()
    );
    assert!(!q.join("hold/posthold-pwned").exists());
    // Delivered as it was held (the scanner's append failed).
    let delivered = delivered_text(&pf, "spied");
    assert!(!delivered.contains("\nX\n"), "{delivered}");
    // A scanner that would run as root or as mail_owner is refused.
    for user in ["root", "postfix"] {
        let bad = pf.dir.path().join(format!("bad-{user}.toml"));
        std::fs::write(
            &bad,
            format!(
                "[scanner.spy]\ntype = \"command\"\nargv = [\"{spy}\"]\nuser = \"{user}\"\n\
                 [[rule]]\nscan = \"spy\"\nexit = [1]\naction = \"quarantine\"\n"
            ),
        )
        .unwrap();
        let out = run(pf.posthold("scan").arg("--rules").arg(&bad).arg("ALL"));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("rights over the queue"), "{err}");
        let out = run(pf
            .posthold("watch")
            .arg("--rules")
            .arg(&bad)
            .arg("--scan-interval")
            .arg("5s"));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("rights over the queue"), "{err}");
        // check-config says so too (with -c, which names mail_owner).
        let out = run(pf.posthold("check-config").arg(&bad));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        expect_exit(&out, 1);
        let want = if user == "root" {
            "is root"
        } else {
            "is mail_owner"
        };
        assert!(text.contains(want), "{text}");
    }
}

/// A clamd that answers PING and scans, but dies (stops listening) when a
/// scanned message contains `KILLER`, and comes back a second later, as a
/// service manager restarts it.
fn dying_clamd(sock: &Path) {
    let sock = sock.to_path_buf();
    std::thread::spawn(move || {
        loop {
            let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                c.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    req.extend_from_slice(&buf[..n]);
                    if req == b"zPING\0" {
                        break;
                    }
                }
                if req == b"zPING\0" {
                    let _ = c.write_all(b"PONG\0");
                } else if req.windows(6).any(|w| w == b"KILLER") {
                    break; // dies mid-scan: no reply, and nobody listens
                } else {
                    let _ = c.write_all(b"stream: OK\0");
                }
            }
            drop(l);
            let _ = std::fs::remove_file(&sock);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// A message that kills its scanner is the message's fault even though the
/// scanner is then down: it is quarantined as poison, and the clean mail
/// waiting for the same scanner is released once the scanner is back.
#[test]
fn a_message_that_kills_its_scanner_is_poison_and_others_pass() {
    require_postfix();
    let pf = Instance::start(false);
    let sock = pf.dir.path().join("dying.sock");
    dying_clamd(&sock);
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[scanner.clamd]\ntype = \"clamd\"\naddress = \"{}\"\ntimeout = \"5s\"\nretry = \"1s\"\nretry_max = \"1s\"\npoison_after = 2\n\
             [[rule]]\nscan = \"clamd\"\naction = \"quarantine\"\n[[rule]]\naction = \"release\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("killer", "this one is a KILLER"),
    );
    // The killer's first crash takes clamd down, with a strike; the clean
    // mail then waits for it. (A bystander in flight when clamd dies gets
    // a strike too; the killer gets one at every death.)
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "clamd down",
        || daemon.log().contains("scanner=clamd: down"),
    );
    for t in ["clean1", "clean2"] {
        pf.send(
            "alice@posthold.test",
            &["bob@posthold.test"],
            &message(t, "See you at noon."),
        );
    }
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "killer quarantined, clean mail delivered",
        || {
            tokens_in(&pf, "posthold-quarantine") == set(&["killer"])
                && delivered_tokens(&pf) == set(&["clean1", "clean2"])
        },
    );
    let (_, log) = daemon.term();
    assert!(
        log.contains("reason=poison, scanner=clamd, strikes=2"),
        "{log}"
    );
}

/// Debian's rspamd on 127.0.0.1:`port`, offline (DNS to a closed port),
/// with a private configuration: only the normal worker, no controller or
/// proxy, logs in `dir`.
fn start_rspamd(dir: &Path, port: u16) -> Server {
    let conf = dir.join("rspamd");
    let local = conf.join("local.d");
    for d in [
        &local,
        &conf.join("override.d"),
        &conf.join("db"),
        &conf.join("run"),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    let log = dir.join("rspamd.log");
    for (f, text) in [
        (
            "worker-normal.inc",
            format!("bind_socket = \"127.0.0.1:{port}\";\ncount = 1;\n"),
        ),
        ("worker-controller.inc", "enabled = false;\n".into()),
        ("worker-proxy.inc", "enabled = false;\n".into()),
        ("worker-fuzzy.inc", "enabled = false;\n".into()),
        (
            "logging.inc",
            format!(
                "type = \"file\";\nfilename = \"{}\";\nlevel = \"warning\";\n",
                log.display()
            ),
        ),
        (
            "options.inc",
            "dns { nameserver = [\"127.0.0.1:1\"]; timeout = 0.1s; retransmits = 1; }\n".into(),
        ),
    ] {
        std::fs::write(local.join(f), text).unwrap();
    }
    let var = |k: &str, v: &Path| format!("--var={k}={}", v.display());
    let child = Command::new("/usr/bin/rspamd")
        .args([
            "-f",
            "-i",
            "-u",
            "root",
            "-g",
            "root",
            "-c",
            "/etc/rspamd/rspamd.conf",
        ])
        .arg(var("LOCAL_CONFDIR", &conf))
        .arg(var("DBDIR", &conf.join("db")))
        .arg(var("RUNDIR", &conf.join("run")))
        .arg(var("LOGDIR", dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("rspamd.err")).unwrap())
        .process_group(0)
        .spawn()
        .expect("rspamd (apt-get install rspamd)");
    let s = Server { child, log };
    let addr = format!("127.0.0.1:{port}");
    wait_connect(
        "rspamd",
        || {
            std::net::TcpStream::connect(&addr)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                    c.write_all(b"GET /ping HTTP/1.0\r\n\r\n")?;
                    let mut r = String::new();
                    c.read_to_string(&mut r)?;
                    Ok(r.contains("pong"))
                })
                .unwrap_or(false)
        },
        &s.log,
    );
    s
}

/// rspamd end to end on the real Postfix: GTUBE is quarantined (rspamd's
/// reject), clean mail is delivered; with rspamd stopped mail stays held
/// (and rspamd is down, told once), and rspamd back releases it.
#[test]
fn rspamd_quarantines_gtube_and_holds_mail_while_it_is_down() {
    require_postfix();
    let pf = Instance::start(false);
    let port = free_port();
    let rspamd = start_rspamd(pf.dir.path(), port);
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[scanner.rspamd]\ntype = \"rspamd\"\naddress = \"127.0.0.1:{port}\"\ntimeout = \"10s\"\nretry = \"1s\"\nretry_max = \"2s\"\n\
             [[rule]]\nname = \"spam\"\nscan = \"rspamd\"\nrspamd_action = [\"reject\"]\naction = \"quarantine\"\n\
             [[rule]]\naction = \"release\"\n"
        ),
    )
    .unwrap();
    // posthold scan says what rspamd says.
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("gtube", GTUBE),
    );
    let id = pf.wait_held(1)[0].clone();
    let out = run(pf
        .posthold("scan")
        .arg("--rules")
        .arg(&rules)
        .args(["--scanner", "rspamd"])
        .arg(&id));
    let text = expect_exit(&out, 0);
    assert!(text.contains("action=reject"), "{text}");
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("clean", "See you at noon."),
    );
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "gtube quarantined, clean delivered",
        || {
            tokens_in(&pf, "posthold-quarantine") == set(&["gtube"])
                && delivered_tokens(&pf) == set(&["clean"])
        },
    );
    // rspamd stops: new mail stays held.
    drop(rspamd);
    pf.send(
        "alice@posthold.test",
        &["bob@posthold.test"],
        &message("waiting", "Lunch tomorrow?"),
    );
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "rspamd down",
        || daemon.log().contains("scanner=rspamd: down"),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(tokens_in(&pf, "hold"), set(&["waiting"]));
    assert_eq!(delivered_tokens(&pf), set(&["clean"]));
    // rspamd back: the held mail is scanned and released.
    let _rspamd = start_rspamd(pf.dir.path(), port);
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "waiting delivered",
        || delivered_tokens(&pf) == set(&["clean", "waiting"]),
    );
    let (_, log) = daemon.term();
    assert!(log.contains("scanner=rspamd, action=reject"), "{log}");
    assert!(log.contains("scanner=rspamd: up again"), "{log}");
}
