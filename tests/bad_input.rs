//! Corrupt and hostile input: posthold never panics, prints what postcat
//! prints up to the damage, and exits non-zero with a message naming the file.

use crate::common::*;

fn write_temp(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("QF");
    std::fs::write(&p, bytes).unwrap();
    (d, p)
}

fn no_panic(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(out.status.code().is_some(), "killed by a signal");
}

/// Truncations of two real files (one Milter-edited) at 40 points each:
/// the same stdout and the same success or failure as live postcat, for
/// several options. postcat sleeps a second before a fatal exit, so its
/// runs go in parallel batches.
#[test]
fn truncated_files_match_postcat_and_fail_cleanly() {
    if !have_postfix() {
        panic!("Postfix is not installed: run .ci/run (it installs it)");
    }
    let cfg = empty_config();
    let fx: Vec<_> = fixtures()
        .into_iter()
        .filter(|f| f.shape == "plain" || f.shape == "milter-edited")
        .collect();
    assert_eq!(fx.len(), 4);
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for f in &fx {
        let bytes = std::fs::read(f.file()).unwrap();
        let step = (bytes.len() / 40).max(1);
        for cut in (1..bytes.len()).step_by(step) {
            let p = dir.path().join(format!("{}.{cut}", f.id));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            for args in [&[][..], &["-v", "-o"][..], &["-h"][..]] {
                cases.push((p.clone(), args));
            }
        }
    }
    let cfg_path = cfg.path();
    let mut checked = 0;
    let mut fatal = 0;
    for batch in cases.chunks(64) {
        let wants: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|(p, args)| {
                    s.spawn(move || {
                        let mut pc = std::process::Command::new("timeout");
                        pc.env("TZ", "UTC")
                            .arg("10")
                            .arg("/usr/sbin/postcat")
                            .arg("-c")
                            .arg(cfg_path);
                        pc.args(*args).arg(p);
                        run(pc)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ((p, args), want) in batch.iter().zip(wants) {
            let mut c = posthold();
            c.arg("cat").args(*args).arg(p);
            let got = run(c);
            no_panic(&got);
            if want.status.code() == Some(124) {
                continue; // postcat 3.7 did not terminate; posthold did (above)
            }
            let name = p.file_name().unwrap().to_string_lossy();
            assert_eq!(
                got.status.success(),
                want.status.success(),
                "{name} {args:?}"
            );
            assert_eq!(
                got.stdout,
                want.stdout,
                "{name} {args:?}: {}",
                first_difference(&got.stdout, &want.stdout)
            );
            if !got.status.success() {
                fatal += 1;
                let err = String::from_utf8_lossy(&got.stderr);
                assert!(
                    err.contains(p.to_str().unwrap()),
                    "error names the file: {err}"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 300 && fatal > 100,
        "checked {checked}, fatal {fatal}"
    );
}

#[test]
fn unfinished_file_terminates_where_postcat_3_7_loops() {
    // An all-zero SIZE record: postcat 3.7 -e seeks back to 0 forever.
    let bytes = queue_format::writer::Builder::new(1_795_424_399, "a@b.c")
        .recipient("r@x")
        .build();
    let mut bytes = bytes;
    let zero = format!(
        "{:>15} {:>15} {:>15} {:>15} {:>15} {:>15}",
        0, 0, 0, 0, 0, 0
    );
    bytes[2..97].copy_from_slice(zero.as_bytes());
    let (_d, p) = write_temp(&bytes);
    let mut c = posthold();
    c.arg("cat").arg("-e").arg(&p);
    let out = run(c);
    no_panic(&out);
    expect_exit(&out, 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("file not finished"), "{err}");
}

#[test]
fn hostile_bytes_never_panic() {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let base = std::fs::read(
        fixtures()
            .iter()
            .find(|f| f.shape == "milter-edited")
            .unwrap()
            .file(),
    )
    .unwrap();
    for i in 0..200 {
        let mut b = base.clone();
        for _ in 0..(1 + i % 8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % b.len();
            b[at] = (seed >> 32) as u8;
        }
        let (_d, p) = write_temp(&b);
        for args in [&["-e"][..], &["-v", "-o"][..], &["-h", "-b"][..]] {
            let mut c = posthold();
            c.arg("cat").args(args).arg(&p);
            no_panic(&run(c));
        }
    }
}

#[test]
fn usage_and_config_errors_exit_2() {
    let mut c = posthold();
    c.arg("cat").arg("-x");
    assert_eq!(run(c).status.code(), Some(2));
    let mut c = posthold();
    c.args(["list", "-c", "/nonexistent/config"]);
    let out = run(c);
    expect_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config"));
    let cfg = empty_config();
    let q = tempfile::tempdir().unwrap();
    let mut c = posthold();
    c.arg("list")
        .arg("-c")
        .arg(cfg.path())
        .arg("--queue-directory")
        .arg(q.path());
    let out = run(c);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Postfix queue directory"));
    let mut c = posthold();
    c.arg("cat")
        .arg("-q")
        .arg("-c")
        .arg(cfg.path())
        .arg("--queue-directory")
        .arg(q.path())
        .arg("../etc");
    let out = run(c);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad mail queue ID: ../etc"));
}

#[test]
fn missing_file_names_it() {
    let mut c = posthold();
    c.arg("cat").arg("/nonexistent/QF");
    let out = run(c);
    expect_exit(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/QF"));
}
