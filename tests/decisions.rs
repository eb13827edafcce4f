//! Decisions that hold up in production: mail never delivered early
//! because of a zone-less or a second due date, and queue files posthold
//! cannot read told once, counted and shown by `check`.

use std::io::Read;
use std::time::{Duration, Instant};

use queue_format::writer::Builder;

use crate::common::*;

/// The daemon's metrics page (empty while it is not listening yet).
fn metrics(addr: &str) -> String {
    use std::io::Write;
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let mut t = String::new();
    if c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_ok() {
        let _ = c.read_to_string(&mut t);
    }
    t
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

fn held(s: &mut TempSpool, headers: &[&str]) -> String {
    let mut b = Builder::new(now() - 60, "a@example.com").recipient("r@example.net");
    for h in headers {
        b = b.header(*h);
    }
    s.add_with("hold", b.body_line("body"), 0o700)
}

/// A zone-less due time, or a past one next to a future one, is never
/// released early by the daemon: the first is kept as a bad date, the
/// second waits for the later date.
#[test]
fn zone_less_and_conflicting_due_dates_are_never_released_early() {
    let mut s = TempSpool::new();
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let future = chrono::Utc::now() + chrono::Duration::hours(3);
    let zoneless = held(
        &mut s,
        &[&format!(
            "X-Deliver-At: {}",
            past.format("%Y-%m-%d %H:%M:%S")
        )],
    );
    let two = held(
        &mut s,
        &[
            &format!("X-Deliver-At: {}", past.to_rfc2822()),
            &format!("Deferred-Delivery: {}", future.to_rfc2822()),
        ],
    );
    let addr = free_addr();
    let d = s.watch(&["--metrics", &addr]);
    wait_until(
        Instant::now() + Duration::from_secs(20),
        "both decided",
        || {
            let m = metrics(&addr);
            m.lines().any(|l| l == "posthold_scheduled 1")
                && m.lines().any(|l| l == "posthold_bad_dates 1")
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let (_, log) = d.term();
    assert_eq!(s.find(&zoneless), vec![format!("hold/{zoneless}")], "{log}");
    assert_eq!(s.find(&two), vec![format!("hold/{two}")], "{log}");
    assert!(
        log.contains(&format!("{zoneless}: keep, reason=no-zone")),
        "{log}"
    );
    assert!(
        log.contains(&format!("{two}: scheduled, reason=deferred-delivery")),
        "the later date wins: {log}"
    );
}

/// A held file with a record type posthold does not know (a newer queue
/// format) is logged once at warning level, counted, and shown by check.
#[test]
fn a_queue_file_posthold_cannot_read_is_told_once_counted_and_checked() {
    let mut s = TempSpool::new();
    let id = held(&mut s, &["Subject: from the future"]);
    // Turn the envelope's sender record (S) into a type no Postfix 3.7
    // writes: the reader stops there.
    let p = s.q().join("hold").join(&id);
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes
        .windows(2)
        .position(|w| w[0] == b'S' && w[1] == b"a@example.com".len() as u8)
        .expect("a sender record");
    bytes[at] = b'Z';
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::options().write(true).open(&p).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    let addr = free_addr();
    let d = s.watch(&["--metrics", &addr, "--scan-interval", "2s"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !metrics(&addr)
        .lines()
        .any(|l| l == "posthold_damaged_messages 1")
    {
        assert!(
            Instant::now() < deadline,
            "not counted:\n{}\n{}",
            d.log(),
            String::from_utf8_lossy(&s.cmd(&["cat", "-q", "-e", &id]).stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Two more full scans: still one line.
    std::thread::sleep(Duration::from_secs(5));
    let (_, log) = d.term();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(&format!("{id}: warning: keep, reason=damaged")),
        "{log}"
    );
    assert_eq!(s.find(&id), vec![format!("hold/{id}")]);
    let out = s.cmd(&["check"]);
    let text = expect_exit(&out, 1);
    assert!(text.contains(&format!("hold/{id}: corrupt")), "{text}");
}

/// Scans that fail softly for ever (exit 75: try later) are told once at
/// warning level after `stuck_after`, counted, and with `on_stuck =
/// "quarantine"` the message is quarantined instead of kept.
#[test]
fn scans_that_never_succeed_are_told_counted_and_may_quarantine() {
    for on_stuck in ["keep", "quarantine"] {
        let mut s = TempSpool::new();
        let script = s.cfg.path().join("tempfail.sh");
        std::fs::write(&script, "#!/bin/sh\ncat >/dev/null\nexit 75\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let rules = s.rules(&format!(
            "[settings]\nstuck_after = \"3s\"\non_stuck = \"{on_stuck}\"\n\
             [scanner.t]\ntype = \"command\"\nargv = [\"{}\"]\nretry = \"1s\"\nretry_max = \"1s\"\n\
             [[rule]]\nscan = \"t\"\nexit = [1]\naction = \"quarantine\"\n[[rule]]\naction = \"release\"\n",
            script.display()
        ));
        let id = held(&mut s, &["Subject: never scanned"]);
        let addr = free_addr();
        let d = s.watch(&["--rules", rules.to_str().unwrap(), "--metrics", &addr]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let told = |log: &str| log.contains(&format!("{id}: warning: keep, reason=scan-stuck"));
        while !told(&d.log()) {
            assert!(
                Instant::now() < deadline,
                "{on_stuck}: not told:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if on_stuck == "keep" {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !metrics(&addr)
                .lines()
                .any(|l| l == "posthold_stuck_messages 1")
            {
                assert!(Instant::now() < deadline, "not counted");
                std::thread::sleep(Duration::from_millis(200));
            }
            std::thread::sleep(Duration::from_secs(3));
            let (_, log) = d.term();
            assert_eq!(
                log.lines().filter(|l| told(l)).count(),
                1,
                "told once:\n{log}"
            );
            assert_eq!(
                s.find(&id),
                vec![format!("hold/{id}")],
                "kept, never released"
            );
        } else {
            wait_until(
                Instant::now() + Duration::from_secs(15),
                "quarantined",
                || s.find(&id) == vec![format!("posthold-quarantine/{id}")],
            );
            let (_, log) = d.term();
            assert!(
                log.contains(&format!("{id}: quarantine, reason=scan-stuck, scanner=t")),
                "{log}"
            );
        }
    }
}

/// `check-config -c` says what to change in a Postfix configured the old
/// way (the HOLD rule inherited by mime_header_checks and
/// nested_header_checks), where a forwarded scheduled message is held with
/// no date posthold can read; configured by README's steps, the same
/// message is delivered and the audit finds nothing.
#[test]
fn check_config_audits_postfix_and_forwarded_mail_is_not_stranded() {
    require_postfix();
    let forwarded = b"From: a@posthold.test\nTo: b@posthold.test\nSubject: fwd\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nsee the attached message\n--B\nContent-Type: message/rfc822\n\nFrom: x@posthold.test\nX-Deliver-At: Mon, 1 Jan 2035 00:00:00 +0000\nSubject: inner\n\ninner body\n--B--\n";
    // The rules release on X-Deliver-At, which the harness's header_checks
    // holds.
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nheader = \"X-Deliver-At\"\naction = \"release-at\"\n",
    )
    .unwrap();
    let old = Instance::start(false);
    let out = run(posthold()
        .arg("check-config")
        .arg("-c")
        .arg(old.etc())
        .arg(&rules));
    let text = expect_exit(&out, 1);
    for setting in ["mime_header_checks", "nested_header_checks"] {
        assert!(
            text.lines().any(|l| l.starts_with("postfix: ")
                && l.contains(setting)
                && l.contains(&format!("postconf -e {setting}="))),
            "{setting}: {text}"
        );
    }
    old.send("a@posthold.test", &["b@posthold.test"], forwarded);
    assert_eq!(old.wait_held(1).len(), 1, "held by the inherited rule");

    let new = Instance::start_with(false, &["mime_header_checks=", "nested_header_checks="]);
    let out = run(posthold()
        .arg("check-config")
        .arg("-c")
        .arg(new.etc())
        .arg(&rules));
    let text = expect_exit(&out, 0);
    assert!(text.contains("postfix: 0 finding(s)"), "{text}");
    new.send("a@posthold.test", &["b@posthold.test"], forwarded);
    wait_until(
        Instant::now() + Duration::from_secs(30),
        "delivered",
        || !new.delivered().is_empty(),
    );
    assert!(new.held().is_empty());
}
