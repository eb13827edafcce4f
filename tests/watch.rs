//! `posthold watch` end to end on the real Postfix harness: a header_checks
//! HOLD rule holds mail, the daemon releases it when due, Postfix delivers
//! it into the delivery directory.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;

fn rfc5322(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap()
        .to_rfc2822()
}

/// Delivered files by the token in their Subject: token -> (count, mtime ms).
fn delivered_tokens(pf: &Instance) -> HashMap<String, (usize, u128)> {
    let mut m: HashMap<String, (usize, u128)> = HashMap::new();
    let dir = pf.dir.path().join("deliver");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
        let Some(tok) = text.lines().find_map(|l| l.strip_prefix("Subject: token ")) else {
            continue;
        };
        let mt = e
            .metadata()
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let ent = m.entry(tok.trim().to_string()).or_insert((0, mt));
        ent.0 += 1;
        ent.1 = ent.1.min(mt);
    }
    m
}

#[test]
fn scheduled_mail_is_delivered_on_time_and_unchanged_others_stay_held() {
    require_postfix();
    let pf = Instance::start(false);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&pf, &["--metrics", &addr]);
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let due = t0 + 6;
    for i in 0..4 {
        let msg = format!(
            "Subject: token due{i}\nX-Deliver-At: {}\n\nscheduled body {i}\n",
            rfc5322(due + (i % 2))
        );
        pf.send(
            "sender@posthold.test",
            &[&format!("user{i}@posthold.test")],
            msg.as_bytes(),
        );
    }
    pf.send(
        "sender@posthold.test",
        &["past@posthold.test"],
        format!(
            "Subject: token past\nX-Deliver-At: {}\n\npast due\n",
            rfc5322(t0 - 3600)
        )
        .as_bytes(),
    );
    pf.send(
        "sender@posthold.test",
        &["held@posthold.test"],
        b"Subject: token HOLD no date\n\nstays\n",
    );
    pf.send(
        "sender@posthold.test",
        &["bad@posthold.test"],
        b"Subject: token baddate\nX-Deliver-At: next tuesday-ish\n\nstays\n",
    );
    // While they wait, the scheduled ones are held: keep what postcat shows.
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "scheduled messages held",
        || pf.held().len() >= 6,
    );
    let mut stored = HashMap::new();
    for id in pf.held() {
        let mut c = pf.tool("postcat");
        c.args(["-h", "-b", "-q", &id]);
        let out = run(c).stdout;
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(tok) = text.lines().find_map(|l| l.strip_prefix("Subject: token ")) {
            stored.insert(tok.trim().to_string(), out.clone());
        }
    }
    assert!(
        delivered_tokens(&pf).keys().all(|k| k == "past"),
        "nothing scheduled may be delivered before it is due"
    );
    // posthold status reads the daemon's metrics.
    let status = |addr: &str| {
        let mut c = posthold();
        c.args(["status", "--metrics", addr]);
        let o = run(c);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let st = status(&addr);
    assert!(st.contains("scheduled:   4"), "{st}");
    assert!(st.contains("hold depth:  6"), "{st}");
    assert!(st.contains("bad dates:   1"), "{st}");
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "deliveries",
        || delivered_tokens(&pf).len() >= 5,
    );
    std::thread::sleep(Duration::from_secs(2));
    let got = delivered_tokens(&pf);
    for i in 0..4u64 {
        let (n, at) = got[&format!("due{i}")];
        assert_eq!(n, 1, "due{i} delivered once");
        let due_ms = ((due + (i % 2)) * 1000) as u128;
        assert!(at >= due_ms, "due{i} delivered {} ms early", due_ms - at);
        assert!(
            at <= due_ms + 2000,
            "due{i} delivered {} ms late",
            at - due_ms
        );
        let file = std::fs::read_dir(pf.dir.path().join("deliver"))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .find(|b| String::from_utf8_lossy(b).contains(&format!("Subject: token due{i}\n")))
            .unwrap();
        assert!(
            file.ends_with(&stored[&format!("due{i}")]),
            "due{i}: content changed"
        );
    }
    assert_eq!(got["past"].0, 1);
    assert!(!got.contains_key("HOLD no date") && !got.contains_key("baddate"));
    assert_eq!(pf.held().len(), 2, "undated and malformed stay held");
    let st = status(&addr);
    assert!(
        st.contains("scheduled:   0") && st.contains("hold depth:  2"),
        "{st}"
    );
    assert!(
        st.contains("{action=\"release\",reason=\"x-deliver-at\"} 5"),
        "{st}"
    );
    let (code, log) = daemon.term();
    assert_eq!(code, Some(0), "SIGTERM: clean exit\n{log}");
    assert!(log.contains("reason=bad-date"), "{log}");
    assert!(log.contains("stopping"), "{log}");
    for l in log.lines().filter(|l| l.contains(": release,")) {
        let id = l.split_whitespace().nth(1).unwrap().trim_end_matches(':');
        assert!(
            queue_format::queue_id::is_legal(id),
            "log lines begin with the queue ID: {l}"
        );
    }
}

/// Old mail (held longer than requeue_after) goes through maildrop, comes
/// back through header_checks HOLD with a fresh create_time and a past due
/// time, and is released at once: one loop, one delivery.
#[test]
fn old_scheduled_mail_loops_through_maildrop_once() {
    require_postfix();
    let (pf, rules) = instance_with_rules(
        "[settings]\nrequeue_after = \"2s\"\n[[rule]]\nname = \"scheduled\"\nheader = \"X-Deliver-At\"\naction = \"release-at\"\n",
    );
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    let due = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 4;
    pf.send(
        "sender@posthold.test",
        &["loop@posthold.test"],
        format!(
            "Subject: token loop\nX-Deliver-At: {}\n\nloop once\n",
            rfc5322(due)
        )
        .as_bytes(),
    );
    wait_until(Instant::now() + Duration::from_secs(30), "delivery", || {
        delivered_tokens(&pf).contains_key("loop")
    });
    std::thread::sleep(Duration::from_secs(3));
    let got = delivered_tokens(&pf);
    assert_eq!(got["loop"].0, 1, "delivered exactly once");
    let log = daemon.log();
    assert_eq!(log.matches("moved to maildrop").count(), 1, "{log}");
    assert_eq!(log.matches("moved to incoming").count(), 1, "{log}");
    assert!(pf.held().is_empty());
}

/// A burst of 1,000 scheduled messages; the daemon is SIGKILLed twice and
/// restarted: every message is delivered exactly once, none lost.
#[test]
fn sigkill_during_a_burst_loses_and_duplicates_nothing() {
    require_postfix();
    const N: usize = 1000;
    let pf = Instance::start(false);
    let mut daemon = Daemon::start(&pf, &[]);
    let due = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 25;
    let date = rfc5322(due);
    std::thread::scope(|s| {
        for part in 0..4 {
            let (pf, date) = (&pf, &date);
            s.spawn(move || {
                for i in (part..N).step_by(4) {
                    let msg = format!("Subject: token b{i}\nX-Deliver-At: {date}\n\nburst {i}\n");
                    pf.send(
                        "sender@posthold.test",
                        &["burst@posthold.test"],
                        msg.as_bytes(),
                    );
                }
            });
        }
        // Kill the daemon while mail pours in, and again later.
        std::thread::sleep(Duration::from_secs(2));
        std::mem::replace(&mut daemon, Daemon::start(&pf, &[])).kill9();
    });
    std::thread::sleep(Duration::from_millis(1500));
    std::mem::replace(&mut daemon, Daemon::start(&pf, &[])).kill9();
    let daemon = Daemon::start(&pf, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered_tokens(&pf).len() < N {
        if Instant::now() > deadline {
            let log = daemon.log();
            panic!(
                "{} delivered, {} held, incoming {:?}, deferred? daemon log tail:\n{}\nmaillog tail:\n{}",
                delivered_tokens(&pf).len(),
                pf.held().len(),
                std::fs::read_dir(pf.queue().join("incoming"))
                    .map(|d| d.count())
                    .ok(),
                log.lines().rev().take(15).collect::<Vec<_>>().join("\n"),
                pf.maillog()
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let got = delivered_tokens(&pf);
    assert_eq!(got.len(), N, "every message delivered");
    let dups: Vec<_> = got.iter().filter(|(_, (n, _))| *n != 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    let early: Vec<_> = got
        .iter()
        .filter(|(_, (_, at))| *at < (due * 1000) as u128)
        .collect();
    assert!(early.is_empty(), "delivered before due: {}", early.len());
    assert!(pf.held().is_empty());
    assert!(
        !pf.maillog().contains("still being delivered"),
        "qmgr met a posthold lock: the lock must be gone before the file is visible"
    );
    drop(daemon);
}

/// The rules example in README.md is valid, and check-config rejects a bad
/// file naming the rule.
#[test]
fn readme_rules_example_passes_check_config() {
    let body = readme_toml("### Rules file");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rules.toml");
    std::fs::write(&p, body).unwrap();
    let mut c = posthold();
    c.arg("check-config").arg(&p);
    let o = run(c);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1. spam test: Quarantine"));
    std::fs::write(
        &p,
        "[[rule]]\nname = \"x\"\nsender = \"(\"\naction = \"keep\"\n",
    )
    .unwrap();
    let mut c = posthold();
    c.arg("check-config").arg(&p);
    let o = run(c);
    expect_exit(&o, 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("x: sender"));
}

/// SIGHUP reloads the rules and the new rules apply to mail already held.
#[test]
fn sighup_reloads_rules() {
    require_postfix();
    let (pf, rules) = instance_with_rules("[[rule]]\nname = \"all\"\naction = \"keep\"\n");
    let daemon = Daemon::start(&pf, &["--rules", rules.to_str().unwrap()]);
    let past = rfc5322(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 60,
    );
    pf.send(
        "sender@posthold.test",
        &["hup@posthold.test"],
        format!("Subject: token hup\nX-Deliver-At: {past}\n\nreload\n").as_bytes(),
    );
    pf.wait_held(1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(delivered_tokens(&pf).is_empty(), "the keep rule keeps it");
    std::fs::write(
        &rules,
        "[[rule]]\nheader = \"X-Deliver-At\"\naction = \"release-at\"\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "delivery after SIGHUP",
        || delivered_tokens(&pf).contains_key("hup"),
    );
    wait_until(
        Instant::now() + Duration::from_secs(5),
        "the reload log line",
        || daemon.log().contains("rules reloaded"),
    );
}

/// SIGTERM during a big start-up scan (channels full, workers busy) ends
/// the daemon promptly and cleanly, moving nothing.
#[test]
fn sigterm_during_a_big_scan_exits_promptly() {
    let mut s = TempSpool::new();
    for _ in 0..5000 {
        s.add("hold");
    }
    let before = s.find_all_count();
    let mut c = posthold();
    c.arg("watch")
        .arg("-c")
        .arg(s.cfg.path())
        .arg("--queue-directory")
        .arg(s.q())
        .args([
            "--no-drop-privileges",
            "--scan-interval",
            "3600s",
            "--workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(s.cfg.path().join("watch.log")).unwrap());
    let mut child = c.spawn().unwrap();
    // SIGTERM once the daemon has started (its handlers are installed
    // before the "starting" line) and is busy with its first scan.
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "posthold watch started",
        || {
            std::fs::read_to_string(s.cfg.path().join("watch.log"))
                .unwrap_or_default()
                .contains("starting:")
        },
    );
    std::thread::sleep(Duration::from_millis(50));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(0));
            break;
        }
        if t.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("posthold watch did not exit within 5 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.find_all_count(), before, "nothing moved");
}

/// `Type=notify`: the daemon tells the service manager it is ready once
/// its start-up scan of the hold queue is done (the held mail already
/// there has been looked at).
#[test]
fn the_daemon_says_ready_after_the_start_up_scan() {
    require_postfix();
    let pf = Instance::start(false);
    for i in 0..3 {
        pf.send(
            "sender@posthold.test",
            &["user@posthold.test"],
            format!("Subject: HOLD token early{i}\n\nno due date\n").as_bytes(),
        );
    }
    pf.wait_held(3);
    let sock = pf.dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    // The daemon says it after dropping root, as systemd's socket allows.
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = pf.dir.path().join("notify-watch.log");
    let mut c = pf.posthold("watch");
    c.args(["--scan-interval", "5s"])
        .env("NOTIFY_SOCKET", &sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = c.spawn().unwrap();
    let mut buf = [0u8; 4096];
    let got = listener.recv(&mut buf);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or(text);
    let n = got.unwrap_or_else(|e| panic!("no notification: {e}\n{text}"));
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(text.contains("ready: start-up scan done"), "{text}");
    // The three held messages were taken by the parsers before it said so.
    let ready_at = text.find("ready: start-up scan done").unwrap();
    assert!(text[..ready_at].contains("starting:"), "{text}");
}
