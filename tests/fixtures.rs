//! posthold against real Postfix output on the captured fixtures.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

const REFERENCE_OPTIONS: &[(&str, &[&str])] = &[
    ("", &[]),
    ("-e", &["-e"]),
    ("-h", &["-h"]),
    ("-b", &["-b"]),
    ("-vo", &["-v", "-o"]),
];

#[test]
fn cat_equals_stored_postcat_output_for_every_fixture() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for fx in fixtures() {
        for (suffix, args) in REFERENCE_OPTIONS {
            let mut c = posthold();
            c.current_dir(&fx.dir).arg("cat").args(*args).arg(&fx.id);
            let out = run(c);
            let want = fx.reference(&format!(".postcat{suffix}"));
            checked += 1;
            if !out.status.success() || out.stdout != want {
                failures.push(format!(
                    "{}/{} {args:?}: exit {:?}; {}",
                    fx.shape,
                    fx.id,
                    out.status.code(),
                    first_difference(&out.stdout, &want)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, fixtures().len() * 5);
}

/// Builds a queue directory holding every fixture in hold/ (mode and mtime
/// from .meta; defer logs at their hashed path).
fn fixture_spool() -> tempfile::TempDir {
    let q = tempfile::tempdir().unwrap();
    for d in [
        "incoming", "active", "deferred", "hold", "maildrop", "defer",
    ] {
        std::fs::create_dir(q.path().join(d)).unwrap();
    }
    for fx in fixtures() {
        let dst = q.path().join("hold").join(&fx.id);
        std::fs::copy(fx.file(), &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(fx.mode())).unwrap();
        let log = fx.dir.join(format!("{}.defer", fx.id));
        if log.exists() {
            let rel = queue_format::hash_dir::queue_path("defer", &fx.id, true, 1);
            let p = q.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::copy(&log, &p).unwrap();
        }
    }
    q
}

/// `posthold list ARGS` on a spool of every fixture.
fn list_fixture_spool(args: &[&str]) -> std::process::Output {
    let cfg = empty_config();
    let q = fixture_spool();
    let mut c = posthold();
    c.arg("list")
        .arg("-c")
        .arg(cfg.path())
        .arg("--queue-directory")
        .arg(q.path())
        .args(args);
    run(c)
}

#[test]
fn list_json_equals_stored_postqueue_lines() {
    if !have_postfix() {
        panic!("Postfix is not installed: run .ci/run (it installs it)");
    }
    let out = list_fixture_spool(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: BTreeSet<String> = fixtures()
        .iter()
        .map(|fx| {
            String::from_utf8(fx.reference(".json"))
                .unwrap()
                .trim_end()
                .to_string()
        })
        .collect();
    assert_eq!(want.len(), fixtures().len());
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing:\n{missing:#?}\nunexpected:\n{extra:#?}"
    );
}

#[test]
fn list_skips_files_that_are_not_ready_and_counts_them() {
    let cfg = empty_config();
    let q = fixture_spool();
    let fx = &fixtures()[0];
    let p = q.path().join("hold").join(&fx.id);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = posthold();
    c.arg("list")
        .arg("-c")
        .arg(cfg.path())
        .arg("--queue-directory")
        .arg(q.path())
        .arg("--json");
    let out = run(c);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(&fx.id), "a 0600 file must not be listed");
    assert_eq!(text.lines().count(), fixtures().len() - 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 not ready"), "stderr: {err}");
}

/// Live postcat on every fixture with option combinations beyond the five
/// stored ones (including -r, -d and -s).
#[test]
fn cat_equals_live_postcat_with_many_options() {
    if !have_postfix() {
        panic!("Postfix is not installed: run .ci/run (it installs it)");
    }
    let cfg = empty_config();
    let combos = POSTCAT_COMBOS;
    let mut failures = Vec::new();
    let mut checked = 0;
    for fx in fixtures() {
        for args in combos {
            let mut pc = std::process::Command::new("/usr/sbin/postcat");
            pc.env("TZ", "UTC")
                .arg("-c")
                .arg(cfg.path())
                .args(*args)
                .arg(&fx.id)
                .current_dir(&fx.dir);
            let want = run(pc);
            let mut c = posthold();
            c.current_dir(&fx.dir).arg("cat").args(*args).arg(&fx.id);
            let got = run(c);
            checked += 1;
            if got.stdout != want.stdout || got.status.success() != want.status.success() {
                failures.push(format!(
                    "{}/{} {args:?}: exit {:?} vs postcat {:?}; {}",
                    fx.shape,
                    fx.id,
                    got.status.code(),
                    want.status.code(),
                    first_difference(&got.stdout, &want.stdout)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `--extra` appends posthold's members after postqueue's, which stay
/// byte-identical; the due time and the bad-date flag come from the headers.
#[test]
fn list_extra_members_follow_postqueue_members() {
    let out = list_fixture_spool(&["--json", "--extra"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for fx in fixtures() {
        let want = String::from_utf8(fx.reference(".json")).unwrap();
        let want = want.trim_end().trim_end_matches('}');
        let line = text
            .lines()
            .find(|l| l.contains(&format!("\"queue_id\": \"{}\"", fx.id)))
            .unwrap();
        assert!(line.starts_with(want), "{}: {line}", fx.id);
        let extra = &line[want.len()..];
        assert!(extra.starts_with(", \"create_time\": "), "{extra}");
        match fx.shape.as_str() {
            // Thu, 01 Jan 2099 12:00:00 +0200: beyond the default rules'
            // horizon (366 days), so the daemon keeps it as a bad date, and
            // --extra says so (it is the daemon's judgement).
            "deliverat-future" | "deliverat-twice" => {
                assert!(
                    extra.contains("\"deliver_at\": 4070944800, \"bad_date\": true"),
                    "{}: {extra}",
                    fx.shape
                )
            }
            "deliverat-malformed" => assert!(extra.contains("\"bad_date\": true"), "{extra}"),
            "plain" => assert!(
                extra.contains("\"deliver_at\": null, \"bad_date\": false"),
                "{extra}"
            ),
            _ => {}
        }
    }
}
