//! With a real, private Postfix 3.7 instance started by the harness: held
//! mail is listed and shown by posthold exactly as by postqueue -j and
//! postcat, in the same run, on the same spool.

use crate::common::*;

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
    assert!(
        is_root() && have_postfix(),
        "these tests need root and Postfix: run .ci/run"
    );
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

#[test]
fn list_is_read_only_and_held_mail_stays_held() {
    let (pf, held) = held_instance(false);
    let before: Vec<_> = held
        .iter()
        .map(|id| std::fs::metadata(pf.queue().join("hold").join(id)).unwrap())
        .map(|m| {
            (
                std::os::unix::fs::MetadataExt::ino(&m),
                std::os::unix::fs::MetadataExt::mode(&m),
            )
        })
        .collect();
    let mut ph = pf.posthold("list");
    assert!(run(ph.arg("hold")).status.success());
    let mut ph = pf.posthold("cat");
    assert!(run(ph.arg("-q").args(&held)).status.success());
    let after: Vec<_> = held
        .iter()
        .map(|id| std::fs::metadata(pf.queue().join("hold").join(id)).unwrap())
        .map(|m| {
            (
                std::os::unix::fs::MetadataExt::ino(&m),
                std::os::unix::fs::MetadataExt::mode(&m),
            )
        })
        .collect();
    assert_eq!(before, after);
    assert_eq!(pf.held(), held);
    let delivered = std::fs::read_dir(pf.dir.path().join("deliver"))
        .unwrap()
        .count();
    assert_eq!(delivered, 0, "held mail must not be delivered");
}
