//! With a real, private Postfix 3.7 instance started by the harness: held
//! mail is listed and shown by posthold exactly as by postqueue -j and
//! postcat, in the same run, on the same spool.

use crate::common::*;
use std::time::{Duration, Instant};

fn messages() -> Vec<(&'static str, Vec<&'static str>, Vec<u8>)> {
    let long_line = "x".repeat(5000);
    vec![
        (
            "sender@posthold.test",
            vec!["user@posthold.test"],
            b"Subject: HOLD plain\n\nbody\n".to_vec(),
        ),
        (
            "",
            vec!["user@posthold.test"],
            b"Subject: HOLD null sender\n\nbounce-like\n".to_vec(),
        ),
        (
            "a@posthold.test",
            vec![
                "u1@posthold.test",
                "u2@posthold.test",
                "\"odd user\"@posthold.test",
            ],
            b"Subject: HOLD many\nX-Deliver-At: Thu, 01 Jan 2099 12:00:00 +0000\n\nthree\n"
                .to_vec(),
        ),
        (
            "b@posthold.test",
            vec!["user@posthold.test"],
            format!(
                "Subject: HOLD long\nX-Long: {long_line}\n\n{long_line}\nlast line without newline"
            )
            .into_bytes(),
        ),
        (
            "c@posthold.test",
            vec!["user@posthold.test"],
            b"Subject: HOLD \xe9t\xc3\xa9\nFolded: a\n  b\n\n\xff\xfe body\n".to_vec(),
        ),
    ]
}

fn held_instance(long_ids: bool) -> (Instance, Vec<String>) {
    require_postfix();
    let pf = Instance::start(long_ids);
    let msgs = messages();
    for (from, to, body) in &msgs {
        pf.send(from, to, body);
    }
    let held = pf.wait_held(msgs.len());
    (pf, held)
}

fn check_instance(long_ids: bool) {
    let (pf, held) = held_instance(long_ids);
    for id in &held {
        assert_eq!(
            queue_format::queue_id::decode(id).unwrap().form == queue_format::queue_id::Form::Long,
            long_ids
        );
    }

    // postqueue -j and posthold list --json, byte for byte, same order.
    let mut pq = pf.tool("postqueue");
    pq.arg("-j");
    let want = run(pq);
    assert!(
        want.status.success(),
        "postqueue -j: {}",
        String::from_utf8_lossy(&want.stderr)
    );
    let mut ph = pf.posthold("list");
    ph.arg("--json");
    let got = run(ph);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        String::from_utf8_lossy(&want.stdout),
        "posthold list --json vs postqueue -j"
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).lines().count(),
        held.len()
    );

    // postcat -q and posthold cat -q with several options.
    for id in &held {
        for args in [
            &[][..],
            &["-e"],
            &["-h"],
            &["-b"],
            &["-v", "-o"],
            &["-e", "-h", "-o"],
            &["-v", "-r"],
        ] {
            let mut pc = pf.tool("postcat");
            pc.args(args).arg("-q").arg(id);
            let want = run(pc);
            let mut ph = pf.posthold("cat");
            ph.args(args).arg("-q").arg(id);
            let got = run(ph);
            assert!(
                want.status.success() && got.status.success(),
                "{id} {args:?}"
            );
            assert!(
                got.stdout == want.stdout,
                "{id} {args:?}: {}",
                first_difference(&got.stdout, &want.stdout)
            );
        }
    }
}

#[test]
fn short_ids_list_and_cat_equal_postfix_tools() {
    check_instance(false);
}

#[test]
fn long_ids_list_and_cat_equal_postfix_tools() {
    check_instance(true);
}

fn inode_and_mode(pf: &Instance, ids: &[String]) -> Vec<(u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    ids.iter()
        .map(|id| std::fs::metadata(pf.queue().join("hold").join(id)).unwrap())
        .map(|m| (m.ino(), m.mode()))
        .collect()
}

#[test]
fn list_is_read_only_and_held_mail_stays_held() {
    let (pf, held) = held_instance(false);
    let before = inode_and_mode(&pf, &held);
    let mut ph = pf.posthold("list");
    assert!(run(ph.arg("hold")).status.success());
    let mut ph = pf.posthold("cat");
    assert!(run(ph.arg("-q").args(&held)).status.success());
    let after = inode_and_mode(&pf, &held);
    assert_eq!(before, after);
    assert_eq!(pf.held(), held);
    let delivered = std::fs::read_dir(pf.dir.path().join("deliver"))
        .unwrap()
        .count();
    assert_eq!(delivered, 0, "held mail must not be delivered");
}

/// Relative path -> inode of every file in the instance's queue.
fn queue_files(pf: &Instance) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = walk(&pf.queue())
        .into_iter()
        .filter(|p| {
            std::fs::symlink_metadata(p)
                .map(|m| m.is_file())
                .unwrap_or(false)
        })
        .filter(|p| {
            let rel = p.strip_prefix(pf.queue()).unwrap();
            [
                "hold", "incoming", "deferred", "active", "maildrop", "defer",
            ]
            .iter()
            .any(|q| rel.starts_with(q))
        })
        .map(|p| {
            (
                p.strip_prefix(pf.queue())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap()),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn released_mail_is_delivered_unchanged_held_mail_stays() {
    require_postfix();
    let pf = Instance::start(false);
    for i in 0..3 {
        let body =
            format!("Subject: HOLD release test {i}\nX-Test: {i}\n\nline one {i}\n\nline three\n");
        pf.send(
            "sender@posthold.test",
            &[&format!("user{i}@posthold.test")],
            body.as_bytes(),
        );
    }
    let held = pf.wait_held(3);
    // What the queue files hold, as postcat shows headers and body.
    let stored: Vec<Vec<u8>> = held
        .iter()
        .map(|id| {
            let mut c = pf.tool("postcat");
            c.args(["-h", "-b", "-q", id]);
            run(c).stdout
        })
        .collect();
    let mut ph = pf.posthold("release");
    ph.args([&held[0], &held[1]]);
    let o = run(ph);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pf.delivered().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {}",
            pf.maillog()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let delivered = pf.delivered();
    for (i, id) in held.iter().take(2).enumerate() {
        let f = delivered
            .iter()
            .find(|d| d.starts_with(id.as_str()))
            .expect("delivered under its queue ID");
        let got = std::fs::read(pf.dir.path().join("deliver").join(f)).unwrap();
        assert!(
            got.ends_with(&stored[i]),
            "{id}: delivered content differs from the queue file's"
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(pf.delivered().len(), 2, "the third message stays held");
    assert_eq!(pf.held(), vec![held[2].clone()]);

    // postsuper -s afterwards renames nothing.
    let before = queue_files(&pf);
    let mut ps = pf.tool("postsuper");
    ps.arg("-s");
    let o = run(ps);
    assert!(
        o.status.success(),
        "postsuper -s: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(queue_files(&pf), before, "postsuper -s changed something");
}

/// Postfix's held-too-long trap: released with postsuper -H semantics, an
/// old message gets one attempt and bounces on the first deferral. Released
/// by posthold it goes through maildrop, gets a fresh create_time, and is
/// deferred, not bounced.
#[test]
fn old_held_mail_released_through_maildrop_does_not_bounce() {
    require_postfix();
    let pf = Instance::start_with(
        false,
        &["maximal_queue_lifetime=10s", "bounce_queue_lifetime=10s"],
    );
    for who in ["trap", "safe"] {
        pf.send(
            "sender@posthold.test",
            &[&format!("{who}@defer.test")],
            format!("Subject: {who}\n\nwill be deferred\n").as_bytes(),
        );
    }
    // Both are deferred (retry: transport), then put on hold by postsuper -h.
    let trap = pf.wait_log(&["to=<trap@defer.test>", "status=deferred"], 30);
    let safe = pf.wait_log(&["to=<safe@defer.test>", "status=deferred"], 30);
    let id_of = |line: &str| {
        line.split_whitespace()
            .map(|w| w.trim_end_matches(':'))
            .find(|w| queue_format::queue_id::decode(w).is_ok())
            .unwrap_or_else(|| panic!("no queue ID in {line}"))
            .to_string()
    };
    let (trap_id, safe_id) = (id_of(&trap), id_of(&safe));
    let mut ps = pf.tool("postsuper");
    ps.args(["-h", &trap_id, "-h", &safe_id]);
    assert!(run(ps).status.success());
    pf.wait_held(2);
    // Held longer than the lifetime.
    std::thread::sleep(std::time::Duration::from_secs(12));

    let mut ph = pf.posthold("release");
    ph.args(["--to", "deferred", &trap_id]);
    assert_eq!(run(ph).status.code(), Some(0));
    let mut ph = pf.posthold("release");
    ph.arg(&safe_id);
    let o = run(ph);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("moved to maildrop"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // The trap: expired on its first deferral after release.
    pf.wait_log(&[&format!("{trap_id}:"), "status=expired"], 30);
    // posthold's: picked up under a new ID and deferred, not expired.
    let picked = pf.wait_log(&[&format!("orig_id={safe_id}")], 30);
    let new_id = id_of(&picked);
    pf.wait_log(
        &[
            &format!("{new_id}:"),
            "to=<safe@defer.test>",
            "status=deferred",
        ],
        30,
    );
    assert!(
        !pf.maillog()
            .lines()
            .any(|l| l.contains(&format!("{new_id}:")) && l.contains("expired")),
        "requeued message expired:\n{}",
        pf.maillog()
    );
}

/// Postfix's conventions: `-c CONFIG_DIR` before the subcommand, as
/// `postsuper -c` takes it; `MAIL_CONFIG` without `-c`; queue IDs as mailq
/// prints them (`ID!` on hold, `ID*` active) on standard input.
#[test]
fn config_dir_first_mail_config_and_mailq_markers() {
    require_postfix();
    let pf = Instance::start(false);
    for t in ["one", "two"] {
        pf.send(
            "alice@posthold.test",
            &["bob@posthold.test"],
            format!("Subject: HOLD token {t}\n\nbody\n").as_bytes(),
        );
    }
    let ids = pf.wait_held(2);
    let after = run(pf.posthold("list").args(["--json", "hold"]));
    expect_exit(&after, 0);
    assert!(!after.stdout.is_empty());
    let before = run(posthold()
        .arg("-c")
        .arg(pf.etc())
        .args(["list", "--json", "hold"]));
    expect_exit(&before, 0);
    assert_eq!(before.stdout, after.stdout);
    let env = run(posthold()
        .env("MAIL_CONFIG", pf.etc())
        .args(["list", "--json", "hold"]));
    expect_exit(&env, 0);
    assert_eq!(env.stdout, after.stdout);
    // IDs with mailq's markers, on stdin, -c first.
    let mut c = posthold();
    c.arg("-c")
        .arg(pf.etc())
        .args(["release", "--to", "deferred", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}!#\n{}*", ids[0], ids[1]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = expect_exit(&out, 0);
    for id in &ids {
        assert!(text.contains(&format!("{id}: ")), "{text}");
    }
    assert!(pf.held().is_empty(), "{text}");
}

/// `posthold list` prints what `postqueue -p` prints, byte for byte: the
/// heading, held (`!`), deferred (with their defer reasons) and active
/// (`*`) mail, blank lines between messages, the total; and "Mail queue is
/// empty". Short and long queue IDs.
#[test]
fn list_text_equals_postqueue_p_with_hold_deferred_and_active_mail() {
    require_postfix();
    for long_ids in [false, true] {
        let pf = Instance::start(long_ids);
        let same = |what: &str| {
            let want = run(pf.tool("postqueue").arg("-p"));
            assert!(want.status.success(), "postqueue -p");
            let got = run(pf.posthold("list"));
            expect_exit(&got, 0);
            assert!(
                got.stdout == want.stdout,
                "{what} (long ids {long_ids}): {}\n--- posthold:\n{}--- postqueue -p:\n{}",
                first_difference(&got.stdout, &want.stdout),
                String::from_utf8_lossy(&got.stdout),
                String::from_utf8_lossy(&want.stdout)
            );
        };
        same("empty");
        pf.send(
            "alice@posthold.test",
            &["bob@posthold.test", "carol@posthold.test"],
            b"Subject: HOLD one\n\nbody\n",
        );
        pf.send(
            "",
            &["bob@posthold.test"],
            b"Subject: HOLD bounce-like\n\nbody\n",
        );
        pf.send(
            "alice@posthold.test",
            &["x@defer.test", "y@sub.defer.test"],
            b"Subject: deferred one\n\nbody\n",
        );
        pf.send(
            "dave@posthold.test",
            &["z@defer.test"],
            &[
                b"Subject: deferred two\n\n".as_slice(),
                &b"a long body line\n".repeat(400),
            ]
            .concat(),
        );
        pf.wait_held(2);
        let deferred = || -> Vec<String> {
            let out = run(pf.tool("postqueue").arg("-j"));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| {
                    l.contains("\"queue_name\": \"deferred\"") && l.contains("delay_reason")
                })
                .map(|l| {
                    l.split("\"queue_id\": \"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        wait_until(
            Instant::now() + Duration::from_secs(60),
            "two deferred",
            || deferred().len() == 2,
        );
        same("hold and deferred");
        // One deferred message in active, as qmgr has it while delivering
        // (qmgr only scans active at start: it stays there for the test).
        let id = deferred()[0].clone();
        let from = walk_find(&pf.queue().join("deferred"), &id).expect("deferred file");
        std::fs::rename(&from, pf.queue().join("active").join(&id)).unwrap();
        same("hold, deferred and active");
    }
}

/// The path of the queue file named `id` below `dir` (hash directories).
fn walk_find(dir: &std::path::Path, id: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = walk_find(&p, id) {
                return Some(f);
            }
        } else if e.file_name() == id {
            return Some(p);
        }
    }
    None
}

/// The quarantine is a queue to look at: `list quarantine` (text and
/// JSON, `queue_name` "quarantine") shows what is there, `cat -q` finds
/// it, and plain `list` stays what `postqueue -p` shows.
#[test]
fn the_quarantine_is_listed_and_shown() {
    require_postfix();
    let pf = Instance::start(false);
    for t in ["kept", "bad"] {
        pf.send(
            "alice@posthold.test",
            &["bob@posthold.test"],
            format!("Subject: HOLD token {t}\n\nbody {t}\n").as_bytes(),
        );
    }
    let ids = pf.wait_held(2);
    let empty = run(pf.posthold("list").arg("quarantine"));
    assert_eq!(expect_exit(&empty, 0), "Mail queue is empty\n");
    assert!(
        empty.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    let bad = ids[1].clone();
    let before = std::fs::read(pf.queue().join("hold").join(&bad)).unwrap();
    expect_exit(&run(pf.posthold("quarantine").arg(&bad)), 0);
    // Its content untouched; why, when and by whom kept as xattrs.
    let qfile = pf.queue().join("posthold-quarantine").join(&bad);
    assert_eq!(std::fs::read(&qfile).unwrap(), before);
    assert_eq!(
        xattr::get(&qfile, "user.posthold.reason").unwrap(),
        Some(b"command".to_vec())
    );
    let json = run(pf.posthold("list").args(["--json", "quarantine"]));
    let text = expect_exit(&json, 0);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(&format!(
            "\"queue_name\": \"quarantine\", \"queue_id\": \"{bad}\""
        )),
        "{text}"
    );
    for want in [
        "\"quarantine_reason\": \"command\"",
        "\"quarantine_detail\": \"posthold quarantine, by hand\"",
        "\"quarantine_at\": \"20",
        "\"quarantine_by\": \"posthold quarantine, uid 0 (root)\"",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    let plain = expect_exit(&run(pf.posthold("list").arg("quarantine")), 0);
    assert!(plain.contains(&format!("\n{bad} ")), "{plain}");
    assert!(plain.ends_with("-- 0 Kbytes in 1 Request.\n"), "{plain}");
    // Plain list: Postfix's queues only, as postqueue -p.
    let want = run(pf.tool("postqueue").arg("-p"));
    let got = run(pf.posthold("list"));
    assert_eq!(got.stdout, want.stdout);
    // cat -q finds it; its bytes are postcat's of the file.
    let file = pf.queue().join("posthold-quarantine").join(&bad);
    let want = run(pf.tool("postcat").arg(&file));
    let got = run(pf.posthold("cat").arg("-q").arg(&bad));
    expect_exit(&got, 0);
    // The same lines but those naming the file (a queue path, a full path).
    let body = |o: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.contains(bad.as_str()))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(body(&got), body(&want));
    assert!(
        String::from_utf8_lossy(&got.stdout).contains(&format!("posthold-quarantine/{bad}")),
        "{}",
        String::from_utf8_lossy(&got.stdout)
    );
}

/// `list`'s selections choose what `postqueue -j` plus the same filter
/// chooses: by sender, recipient, size and age, combined, with queue names.
#[test]
fn list_selections_match_postqueue_j_with_a_filter() {
    require_postfix();
    let pf = Instance::start(false);
    let big = "a longer line of the body of a bigger message\n".repeat(100);
    for (from, to, body) in [
        ("alice@posthold.test", "bob@posthold.test", "short"),
        ("alice@posthold.test", "carol@posthold.test", big.as_str()),
        ("dave@posthold.test", "bob@posthold.test", big.as_str()),
        ("erin@posthold.test", "frank@posthold.test", "short"),
    ] {
        pf.send(
            from,
            &[to],
            format!("Subject: HOLD sel\n\n{body}\n").as_bytes(),
        );
    }
    pf.wait_held(4);
    let all = run(pf.tool("postqueue").arg("-j"));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&all.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let now = chrono::Utc::now().timestamp();
    type Filter = Box<dyn Fn(&serde_json::Value) -> bool>;
    let cases: Vec<(Vec<&str>, Filter)> = vec![
        (
            vec!["--sender", "^alice@"],
            Box::new(|v| v["sender"].as_str().unwrap().starts_with("alice@")),
        ),
        (
            vec!["--recipient", "^bob@"],
            Box::new(|v| {
                v["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["address"].as_str().unwrap().starts_with("bob@"))
            }),
        ),
        (
            vec!["--min-size", "2k"],
            Box::new(|v| v["message_size"].as_u64().unwrap() >= 2048),
        ),
        (
            vec!["--sender", "^alice@", "--max-size", "2k", "hold"],
            Box::new(|v| {
                v["sender"].as_str().unwrap().starts_with("alice@")
                    && v["message_size"].as_u64().unwrap() <= 2048
            }),
        ),
        (
            vec!["--max-age", "1h"],
            Box::new(move |v| now - v["arrival_time"].as_i64().unwrap() <= 3600),
        ),
        (
            vec!["--min-age", "1h"],
            Box::new(move |v| now - v["arrival_time"].as_i64().unwrap() >= 3600),
        ),
        (vec!["--sender", "^alice@", "deferred"], Box::new(|_| false)),
    ];
    for (args, keep) in cases {
        let got = run(pf.posthold("list").arg("--json").args(&args));
        let got = expect_exit(&got, 0);
        let want: String = String::from_utf8_lossy(&all.stdout)
            .lines()
            .zip(&lines)
            .filter(|(_, v)| keep(v))
            .map(|(l, _)| format!("{l}\n"))
            .collect();
        assert_eq!(got, want, "{args:?}");
    }
    // A bad selection is a usage error that names the option.
    let bad = run(pf.posthold("list").args(["--sender", "("]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--sender"));
}
