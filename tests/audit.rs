//! Regressions from the safety audit of the mover and the daemon: one test
//! per defect found, each written to fail on the code that had the defect.
//! Real files, real processes, real locks; the defects that need Postfix
//! run on the private instance harness.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use queue_format::writer::Builder;

use crate::common::*;

/// Waits for a child at most `secs`; kills it and returns `None` if it is
/// still running then.
fn wait_or_kill(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A held message with this Subject.
fn held_with_subject(s: &mut TempSpool, subject: &str) -> String {
    let b = Builder::new(now() - 60, "a@example.com")
        .recipient("r@example.net")
        .header(format!("Subject: {subject}"))
        .body_line("body");
    s.add_with("hold", b, 0o700)
}

fn posthold_in(s: &TempSpool, args: &[&str]) -> Command {
    s.command(args)
}

/// Runs `posthold` under strace, tracing `calls` with file names (-y);
/// returns the output and the trace.
fn straced(s: &TempSpool, calls: &str, args: &[&str]) -> (std::process::Output, String) {
    let trace = s.cfg.path().join(format!("strace-{}", now_nanos()));
    let mut c = Command::new("strace");
    c.args(["-f", "-y", "-qq", "-e"])
        .arg(format!("trace={calls}"))
        .arg("-o")
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_posthold"))
        .arg(args[0])
        .arg("-c")
        .arg(s.cfg.path())
        .arg("--queue-directory")
        .arg(s.q())
        .args(&args[1..])
        .env("TZ", "UTC");
    let out = run(c);
    (out, std::fs::read_to_string(&trace).unwrap_or_default())
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// Defect 2: the wake-up for qmgr blocked for ever on a full listen queue,
// after the file was moved and with the queue lock held.
#[test]
fn trigger_connect_is_bounded_when_the_listen_queue_is_full() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
    };
    let mut s = TempSpool::new();
    let id = s.add("hold");
    let path = s.q().join("public/qmgr");
    let srv = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(srv.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    listen(&srv, Backlog::new(0).unwrap()).unwrap();
    // Fill the listen queue: nobody ever accepts.
    let mut pending = Vec::new();
    for _ in 0..16 {
        let c = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        if connect(c.as_raw_fd(), &UnixAddr::new(&path).unwrap()).is_err() {
            break;
        }
        pending.push(c);
    }
    assert!(!pending.is_empty(), "the listen queue must be full");
    let mut c = posthold_in(&s, &["release", "--to", "incoming", &id]);
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_or_kill(&mut child, 20);
    assert!(
        st.is_some(),
        "posthold release hung on a full qmgr listen queue (with the queue lock held)"
    );
    assert_eq!(st.unwrap().code(), Some(0));
    assert_eq!(s.find(&id), vec![format!("incoming/{id}")]);
}

// Defect 2: a qmgr whose master.cf type is fifo was never woken.
#[test]
fn trigger_wakes_a_fifo_qmgr_and_pickup() {
    let mut s = TempSpool::new();
    let id = s.add("hold");
    let old = s.add("hold");
    for name in ["qmgr", "pickup"] {
        nix::unistd::mkfifo(
            &s.q().join("public").join(name),
            nix::sys::stat::Mode::from_bits_truncate(0o622),
        )
        .unwrap();
    }
    // A reader, as qmgr and pickup keep the FIFO open.
    let open_reader = |name: &str| {
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(s.q().join("public").join(name))
            .unwrap()
    };
    let mut qmgr = open_reader("qmgr");
    let mut pickup = open_reader("pickup");
    let out = s.cmd(&["release", "--to", "incoming", &id]);
    expect_exit(&out, 0);
    let out = s.cmd(&["requeue", &old]);
    expect_exit(&out, 0);
    let mut got = Vec::new();
    let _ = qmgr.read_to_end(&mut got);
    assert_eq!(got, b"I", "qmgr's FIFO gets the request, without a NUL");
    let mut got = Vec::new();
    let _ = pickup.read_to_end(&mut got);
    assert_eq!(got, b"W", "pickup's FIFO gets a wake-up");
}

// Defect 3: a message the gate refuses for a reason that does not heal
// was retried (and logged) every 5 s for ever.
#[test]
fn refused_messages_back_off_are_logged_once_and_counted() {
    let mut s = TempSpool::new();
    let id = s.add("hold");
    // A second name: the gate refuses a file with two links.
    std::fs::hard_link(s.q().join("hold").join(&id), s.q().join("extra-link")).unwrap();
    let rules = s.rules("[[rule]]\nname = \"all\"\naction = \"release\"\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = s.watch(&["--rules", rules.to_str().unwrap(), "--metrics", &addr]);
    std::thread::sleep(Duration::from_secs(13));
    let metrics = run(posthold().args(["status", "--metrics", &addr]));
    let raw = {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        use std::io::Write;
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut t = String::new();
        c.read_to_string(&mut t).unwrap();
        t
    };
    let (_, log) = d.term();
    let lines = log
        .lines()
        .filter(|l| l.contains(&id) && l.contains("2 links"))
        .count();
    assert_eq!(lines, 1, "logged once, not every 5 s:\n{log}");
    assert!(
        raw.lines().any(|l| l == "posthold_refused_messages 1"),
        "a metric counts refused messages:\n{raw}\n{}",
        String::from_utf8_lossy(&metrics.stdout)
    );
    assert_eq!(s.find(&id), vec![format!("hold/{id}")], "still held");
    let out = s.cmd(&["check"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("hold/{id}: 2 links")),
        "check shows it"
    );
}

// Defect 4: cached directory handles were never checked again; a
// quarantine directory replaced while the daemon runs took mail into the
// old directory (or failed every 5 s once it was removed).
#[test]
fn a_replaced_or_removed_quarantine_directory_is_reopened() {
    let mut s = TempSpool::new();
    let rules = s.rules(
        "[[rule]]\nname = \"q\"\nheader = \"Subject\"\nheader_value = \"^bad\"\naction = \"quarantine\"\n",
    );
    let d = s.watch(&["--rules", rules.to_str().unwrap()]);
    let first = held_with_subject(&mut s, "bad 1");
    let qdir = s.q().join("posthold-quarantine");
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "first quarantined",
        || qdir.join(&first).exists(),
    );
    // Replaced: renamed away, a new one in its place.
    std::fs::rename(&qdir, s.q().join("old-quarantine")).unwrap();
    std::fs::create_dir(&qdir).unwrap();
    let (uid, gid) = postfix_ids();
    std::os::unix::fs::chown(&qdir, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&qdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let second = held_with_subject(&mut s, "bad 2");
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "second quarantined",
        || s.find(&second) != vec![format!("hold/{second}")],
    );
    assert_eq!(
        s.find(&second),
        vec![format!("posthold-quarantine/{second}")],
        "into the directory that is there now, not the one renamed away"
    );
    // Removed: the daemon (root here) makes it again.
    std::fs::remove_file(qdir.join(&second)).unwrap();
    std::fs::remove_dir(&qdir).unwrap();
    let third = held_with_subject(&mut s, "bad 3");
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "third quarantined",
        || qdir.join(&third).exists(),
    );
    let (_, log) = d.term();
    assert!(!log.contains("changed by another process"), "{log}");
}

// Defect 4, after the privilege drop: the daemon cannot make the
// directory again; it says so and keeps the mail where it is.
#[test]
fn a_quarantine_directory_that_cannot_be_made_keeps_mail_held_and_says_why() {
    require_postfix();
    let (pf, rules) = instance_with_rules(
        "[[rule]]\nname = \"q\"\nheader = \"Subject\"\nheader_value = \"quarantine me\"\naction = \"quarantine\"\n",
    );
    let d = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    let qdir = pf.queue().join("posthold-quarantine");
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "quarantine made at start",
        || qdir.is_dir(),
    );
    std::fs::remove_dir(&qdir).unwrap();
    pf.send(
        "a@posthold.test",
        &["b@posthold.test"],
        b"Subject: HOLD quarantine me\n\nbody\n",
    );
    let id = pf.wait_held(1)[0].clone();
    let log = wait_for_log(&d, &[&id, "posthold-quarantine"], 20);
    assert!(
        log.lines().any(|l| l.contains(&id)
            && l.contains("cannot create")
            && l.contains("posthold-quarantine")),
        "says clearly why:\n{log}"
    );
    assert_eq!(pf.held(), vec![id], "kept where it was");
}

fn wait_for_log(d: &Daemon, parts: &[&str], secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = d.log();
        if log.lines().any(|l| parts.iter().all(|p| l.contains(p))) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// Defect 5: openat with O_NOFOLLOW refuses a symlink only in the last
// component; a symlinked hash directory sent mail out of the spool.
#[test]
fn a_symlinked_hash_directory_never_takes_mail_out_of_the_spool() {
    let mut s = TempSpool::new();
    s.set(&["hash_queue_depth = 2"]);
    let id = s.add("hold");
    let target = queue_format::hash_dir::queue_path("deferred", &id, true, 2);
    let first_level = Path::new(&target)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), s.q().join(&first_level)).unwrap();
    let out = s.cmd(&["release", "--to", "deferred", &id]);
    let text = expect_exit(&out, 1);
    assert!(text.contains(&id), "{text}");
    assert_eq!(s.find(&id), vec![format!("hold/{id}")], "nothing moved");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing was made outside the spool"
    );
}

// Defect 6: --dry-run took a flock on every target.
#[test]
fn dry_run_takes_no_locks() {
    let mut s = TempSpool::new();
    let id = s.add("hold");
    let (out, trace) = straced(&s, "flock", &["release", "--dry-run", &id]);
    expect_exit(&out, 0);
    assert!(
        !trace
            .lines()
            .any(|l| l.contains("flock(") && l.contains("LOCK_EX")),
        "a dry run locks nothing:\n{trace}"
    );
}

// Defect 6: the per-file flock was held across expire's fsync and the
// creation of a hash directory, on a file qmgr may want.
#[test]
fn no_file_lock_is_held_across_fsync_or_mkdir() {
    // expire's fsync, and the hash directory both commands make first.
    for args in [
        &["expire", "--release"][..],
        &["release", "--to", "deferred"],
    ] {
        let mut s = TempSpool::new();
        let id = s.add("hold");
        let mut argv = args.to_vec();
        argv.push(&id);
        let (out, trace) = straced(&s, "flock,fsync,fdatasync,mkdir,mkdirat", &argv);
        expect_exit(&out, 0);
        assert!(
            trace.contains("mkdirat"),
            "{args:?}: a hash directory was made:\n{trace}"
        );
        let mut locked = false;
        for l in trace.lines() {
            if l.contains("flock(")
                && l.contains(&id)
                && l.contains("LOCK_EX")
                && l.ends_with("= 0")
            {
                locked = true;
            } else if l.contains("flock(") && l.contains(&id) && l.contains("LOCK_UN") {
                locked = false;
            } else if locked && (l.contains("fsync(") || l.contains("mkdir")) {
                panic!("{args:?}: {l:?} while posthold holds a lock on {id}:\n{trace}");
            }
        }
    }
}

// Defect 8: the daemon fsynced directories only when a wake-up was due,
// so a quarantine move could be undone by a power loss.
#[test]
fn the_daemon_makes_a_quarantine_durable() {
    let mut s = TempSpool::new();
    let rules = s.rules("[[rule]]\nname = \"q\"\naction = \"quarantine\"\n");
    let trace = s.cfg.path().join("watch.strace");
    let log = s.cfg.path().join("watch.log");
    let mut c = Command::new("strace");
    c.args(["-f", "-y", "-qq", "-e", "trace=fsync", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_posthold"))
        .args(["watch", "-c"])
        .arg(s.cfg.path())
        .arg("--queue-directory")
        .arg(s.q())
        .args([
            "--no-drop-privileges",
            "--scan-interval",
            "3600s",
            "--rules",
        ])
        .arg(&rules)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = c.spawn().unwrap();
    let id = s.add("hold");
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "quarantined and logged",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("{id}: quarantine"))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM to the daemon itself (its pid is in its log lines); strace
    // ends with it.
    let text = std::fs::read_to_string(&log).unwrap();
    let pid: i32 = text
        .split("posthold[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|p| p.parse().ok())
        .expect("the daemon's pid in its log");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_or_kill(&mut child, 20).expect("strace and the daemon stop");
    let trace = std::fs::read_to_string(&trace).unwrap();
    assert!(
        trace
            .lines()
            .any(|l| l.contains("fsync(") && l.contains("posthold-quarantine>")),
        "the quarantine directory is fsynced:\n{trace}"
    );
}

// Defect 9: a delete that failed after moving the message aside printed
// "skipped", though the message had left every queue Postfix uses.
#[test]
fn a_failed_delete_says_what_happened_and_where_the_message_is() {
    let mut s = TempSpool::new();
    let id = s.add("hold");
    // Its defer log cannot be unlinked: a directory stands in its place.
    let log = s
        .q()
        .join(queue_format::hash_dir::queue_path("defer", &id, true, 1));
    std::fs::create_dir_all(&log).unwrap();
    let out = s.cmd(&["delete", &id]);
    let text = expect_exit(&out, 1);
    let line = text.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(!line.contains("skipped"), "{line}");
    assert!(line.contains("failed"), "{line}");
    assert!(
        line.contains(&format!("posthold-quarantine/{id}")),
        "says where the message is: {line}"
    );
    assert_eq!(
        s.find(&id).len(),
        2,
        "the message and the defer-log directory"
    );
}

// Defect 10: targets were resolved before the queue lock, so a message
// the daemon moved meanwhile was "no such message".
#[test]
fn targets_are_resolved_under_the_queue_lock() {
    let mut s = TempSpool::new();
    let id = s.add("hold");
    let lock = std::fs::File::open(s.q()).unwrap();
    lock.lock().unwrap();
    let mut child = posthold_in(&s, &["delete", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // Meanwhile the daemon quarantines it.
    let qdir = s.q().join("posthold-quarantine");
    std::fs::create_dir(&qdir).unwrap();
    let (uid, gid) = postfix_ids();
    std::os::unix::fs::chown(&qdir, Some(uid), Some(gid)).unwrap();
    std::fs::rename(s.q().join("hold").join(&id), qdir.join(&id)).unwrap();
    lock.unlock().unwrap();
    let st = wait_or_kill(&mut child, 20).expect("delete finishes");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains(&format!("{id}: deleted")), "{out}");
    assert_eq!(st.code(), Some(0), "{out}");
}

// Defect 12: a second daemon on the same queue directory started.
#[test]
fn a_second_daemon_on_the_same_queue_is_refused() {
    let s = TempSpool::new();
    let first = s.watch(&[]);
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "first started",
        || first.log().contains("starting:"),
    );
    let mut second = posthold_in(&s, &["watch", "--no-drop-privileges"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_or_kill(&mut second, 10);
    assert!(st.is_some(), "the second daemon must not start");
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.unwrap().code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.child.id())),
        "names the running one: {err}"
    );
    drop(first);
}

// Defect 13: an unprivileged caller got warnings and an empty listing,
// "0 finding(s)" or "No such file or directory", each with exit 0 or as if
// the message did not exist.
#[test]
fn an_unprivileged_caller_gets_an_error_never_an_empty_answer() {
    let mut s = TempSpool::new();
    let id = s.add("hold");
    // As Postfix lays it out: the queue directory 0755, the queues 0700
    // owned by mail_owner; the configuration readable by all.
    let (uid, gid) = postfix_ids();
    std::fs::set_permissions(s.q(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for q in ["incoming", "active", "deferred", "hold", "maildrop"] {
        let p = s.q().join(q);
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::set_permissions(s.cfg.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = posthold_in(&s, args);
        c.uid(65534).gid(65534);
        run(c)
    };
    for args in [&["list"][..], &["list", "--json"], &["list", "hold"]] {
        let out = as_nobody(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c != 0),
            "{args:?}: exit 0\n{err}"
        );
        assert!(err.contains("Permission denied"), "{args:?}: {err}");
    }
    let out = as_nobody(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.code().is_some_and(|c| c != 0), "check: {text}");
    assert!(text.contains("Permission denied"), "check: {text}");
    assert!(!text.contains("0 finding"), "check: {text}");
    let out = as_nobody(&["cat", "-q", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some_and(|c| c != 0), "cat -q: {err}");
    assert!(err.contains("Permission denied"), "cat -q: {err}");
}

// Defect 14: an argument panicked (a duration overflowing an instant).
#[test]
fn extreme_durations_and_sizes_never_panic() {
    let s = TempSpool::new();
    let huge = "18000000000000000000s";
    let mut cases: Vec<Vec<String>> = vec![
        vec![
            "watch".into(),
            "--no-drop-privileges".into(),
            "--scan-interval".into(),
            huge.into(),
        ],
        vec![
            "watch".into(),
            "--no-drop-privileges".into(),
            "--scan-interval".into(),
            "99999999999999999999999w".into(),
        ],
        vec![
            "watch".into(),
            "--no-drop-privileges".into(),
            "--workers".into(),
            "18446744073709551615".into(),
        ],
        vec![
            "release".into(),
            "--old-after".into(),
            huge.into(),
            "ALL".into(),
        ],
        vec![
            "release".into(),
            "--old-after".into(),
            "9223372036854775807d".into(),
            "ALL".into(),
        ],
        vec!["check".into(), "--not-ready-after".into(), huge.into()],
        vec![
            "check".into(),
            "--not-ready-after".into(),
            "9223372036854775807w".into(),
        ],
    ];
    let mut rules_cases = Vec::new();
    for (k, v) in [
        ("horizon", huge),
        ("requeue_after", huge),
        ("requeue_after", "9223372036854775807w"),
    ] {
        rules_cases.push(format!(
            "[settings]\n{k} = \"{v}\"\n[[rule]]\naction = \"keep\"\n"
        ));
    }
    for k in ["min_age", "max_age", "min_held", "max_held"] {
        rules_cases.push(format!("[[rule]]\n{k} = \"{huge}\"\naction = \"keep\"\n"));
    }
    for (k, v) in [
        ("timeout", huge),
        ("connect_timeout", huge),
        ("retry", huge),
        ("retry_max", huge),
        ("max_size", "99999999999999999999G"),
        ("max_size", "18446744073709551615"),
        ("chunk", "18446744073709551615"),
        ("concurrency", "18446744073709551615"),
        ("queue", "18446744073709551615"),
        ("poison_after", "4294967295"),
    ] {
        let quoted = if ["concurrency", "queue", "poison_after"].contains(&k) {
            v.to_string()
        } else {
            format!("\"{v}\"")
        };
        rules_cases.push(format!(
            "[scanner.s]\ntype = \"clamd\"\naddress = \"/nonexistent\"\n{k} = {quoted}\n[[rule]]\nscan = \"s\"\naction = \"keep\"\n"
        ));
    }
    for (i, text) in rules_cases.iter().enumerate() {
        let p = s.cfg.path().join(format!("extreme{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let p = p.to_str().unwrap().to_string();
        cases.push(vec!["check-config".into(), p.clone()]);
        cases.push(vec![
            "watch".into(),
            "--no-drop-privileges".into(),
            "--rules".into(),
            p.clone(),
        ]);
        cases.push(vec!["scan".into(), "--rules".into(), p, "ALL".into()]);
    }
    cases.push(vec![
        "scan".into(),
        "--rules".into(),
        "/nonexistent".into(),
        "--jobs".into(),
        "18446744073709551615".into(),
        "ALL".into(),
    ]);
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = posthold_in(&s, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A daemon that starts runs until stopped: that is not a panic.
        let st = wait_or_kill(&mut child, 3);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if let Some(st) = st {
            assert_ne!(st.code(), Some(101), "{args:?}: {err}");
            assert!(st.code().is_some(), "{args:?}: killed by a signal: {err}");
        }
    }
}

// Defect 1: mail whose create_time came seconds after its arrival (a slow
// RCPT stage: smtpd opens the queue file after the first valid RCPT) was
// taken for a requeued copy, so old held mail was released to incoming
// (and bounced on its first deferral) instead of going round maildrop.
#[test]
fn old_mail_from_a_slow_rcpt_stage_is_requeued_not_bounced() {
    require_postfix();
    let pf = Instance::start_with(
        false,
        &["smtpd_recipient_restrictions=sleep 3, permit_mynetworks, reject_unauth_destination"],
    );
    pf.smtp_send(
        "alice@posthold.test",
        "bob@posthold.test",
        b"Subject: HOLD slow rcpt\r\n\r\nbody\r\n",
    );
    let id = pf.wait_held(1)[0].clone();
    // Its create_time really is seconds after its arrival.
    let cat = run(pf.posthold("cat").args(["-q", "-e", &id]));
    let text = String::from_utf8_lossy(&cat.stdout);
    assert!(text.contains("create_time"), "{text}");
    // Old enough to be requeued (threshold 8 s, more than the 3 s lag),
    // and not a copy that already went round.
    std::thread::sleep(Duration::from_secs(9));
    let out = run(pf.posthold("release").args(["--old-after", "8s", &id]));
    let text = expect_exit(&out, 0);
    assert!(text.contains("moved to maildrop"), "{text}");
}

// Defect 1's other side: a rule that requeues sends mail round through
// maildrop at most once, although the copy comes back seconds after its
// arrival (by age alone it cannot be told from mail with a slow RCPT
// stage: the daemon remembers the arrival times it requeued).
#[test]
fn a_requeue_rule_sends_mail_round_once() {
    require_postfix();
    let (pf, rules) = instance_with_rules(
        "[[rule]]\nname = \"again\"\nheader = \"Subject\"\nheader_value = \"requeue me\"\naction = \"requeue\"\n",
    );
    let d = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    pf.send(
        "a@posthold.test",
        &["b@posthold.test"],
        b"Subject: HOLD requeue me\n\nbody\n",
    );
    let log = wait_for_log(&d, &["reason=requeue-loop-guard"], 90);
    std::thread::sleep(Duration::from_secs(3));
    let (_, log2) = d.term();
    assert!(log.contains("reason=requeue-loop-guard"), "{log2}");
    assert_eq!(
        log2.matches(": requeue, reason=rule").count(),
        1,
        "sent round once:\n{log2}"
    );
    assert_eq!(pf.held().len(), 1, "the copy stays held: {log2}");
}
