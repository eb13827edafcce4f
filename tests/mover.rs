//! The mover and the postsuper-style commands on real spools in temporary
//! directories: real files, inodes, renames, flock and fcntl locks.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use std::process::Output;

use queue_format::writer::Builder;

use crate::common::*;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn release_to_incoming_keeps_inode_bytes_and_sets_mtime() {
    let mut s = TempSpool::new();
    let ids: Vec<String> = (0..3).map(|_| s.add("hold")).collect();
    let before: Vec<(u64, Vec<u8>)> = ids
        .iter()
        .map(|id| {
            let p = s.q().join("hold").join(id);
            (
                std::fs::metadata(&p).unwrap().ino(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let o = s.cmd(&["release", "ALL"]);
    expect_exit(&o, 0);
    for (id, (ino, bytes)) in ids.iter().zip(before) {
        assert_eq!(s.find(id), vec![format!("incoming/{id}")]);
        let p = s.q().join("incoming").join(id);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.ino(), ino, "same inode: the queue ID stays true");
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "content unchanged");
        assert_eq!(m.mode() & 0o7777, 0o700);
        assert!((m.mtime() - now()).abs() <= 2, "mtime set to now");
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{id}: moved to incoming")));
    }
}

#[test]
fn release_requeues_old_mail_and_honours_to() {
    let mut s = TempSpool::new();
    let old = Builder::new(now() - 4 * 86400, "old@example.com")
        .recipient("r@example.net")
        .body_line("x");
    let old_id = s.add_with("hold", old, 0o700);
    let young = s.add("hold");
    let o = s.cmd(&["release", old_id.as_str(), young.as_str()]);
    expect_exit(&o, 0);
    assert_eq!(
        s.find(&old_id),
        vec![format!("maildrop/{old_id}")],
        "old mail goes through pickup"
    );
    assert_eq!(s.find(&young), vec![format!("incoming/{young}")]);
    // --to deferred is postsuper -H: hashed path, future mtime reset.
    let d = s.add("hold");
    let p = s.q().join("hold").join(&d);
    let future = std::fs::File::options().write(true).open(&p).unwrap();
    future
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .unwrap();
    drop(future);
    let o = s.cmd(&["release", "--to", "deferred", d.as_str()]);
    expect_exit(&o, 0);
    let rel = queue_format::hash_dir::queue_path("deferred", &d, true, 1);
    assert_eq!(s.find(&d), vec![rel.clone()]);
    let m = std::fs::metadata(s.q().join(&rel)).unwrap();
    assert!(m.mtime() <= now() + 1, "future mtime reset");
}

#[test]
fn hold_requeue_expire_quarantine_restore_delete() {
    let mut s = TempSpool::new();
    let a = s.add("deferred");
    let b = s.add("incoming");
    let o = s.cmd(&["hold", a.as_str(), b.as_str()]);
    expect_exit(&o, 0);
    assert_eq!(s.find(&a), vec![format!("hold/{a}")]);
    assert_eq!(s.find(&b), vec![format!("hold/{b}")]);

    let o = s.cmd(&["expire", a.as_str()]);
    expect_exit(&o, 0);
    assert_eq!(
        std::fs::metadata(s.q().join("hold").join(&a))
            .unwrap()
            .mode()
            & 0o7777,
        0o710
    );
    let o = s.cmd(&["expire", "--release", b.as_str()]);
    expect_exit(&o, 0);
    let rel = queue_format::hash_dir::queue_path("deferred", &b, true, 1);
    assert_eq!(s.find(&b), vec![rel.clone()]);
    assert_eq!(
        std::fs::metadata(s.q().join(&rel)).unwrap().mode() & 0o7777,
        0o710
    );

    let o = s.cmd(&["quarantine", a.as_str()]);
    expect_exit(&o, 0);
    assert_eq!(s.find(&a), vec![format!("posthold-quarantine/{a}")]);
    let o = s.cmd(&["release", a.as_str()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "quarantined mail is not released: {}",
        text(&o)
    );
    let o = s.cmd(&["restore", a.as_str()]);
    expect_exit(&o, 0);
    assert_eq!(s.find(&a), vec![format!("hold/{a}")]);

    let o = s.cmd(&["requeue", a.as_str()]);
    expect_exit(&o, 0);
    assert_eq!(s.find(&a), vec![format!("maildrop/{a}")]);

    // delete: logs first, then the file; ALL needs --yes.
    let c = s.add("hold");
    let log = s
        .q()
        .join(queue_format::hash_dir::queue_path("defer", &c, true, 1));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "recipient=x\n\n").unwrap();
    let o = s.cmd(&["delete", "ALL"]);
    expect_exit(&o, 2);
    assert!(s.q().join("hold").join(&c).exists());
    let o = s.cmd(&["delete", c.as_str()]);
    expect_exit(&o, 0);
    assert!(s.find(&c).is_empty(), "{:?}", s.find(&c));
}

#[test]
fn hold_never_takes_from_active_or_maildrop_and_dry_run_changes_nothing() {
    let mut s = TempSpool::new();
    let a = s.add("active");
    let m = s.add("maildrop");
    let o = s.cmd(&["hold", a.as_str(), m.as_str()]);
    expect_exit(&o, 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{a}: skipped: in active")));
    assert_eq!(s.find(&a), vec![format!("active/{a}")]);
    assert_eq!(s.find(&m), vec![format!("maildrop/{m}")]);
    let h = s.add("hold");
    let before = std::fs::metadata(s.q().join("hold").join(&h)).unwrap();
    let o = s.cmd(&["release", "--dry-run", "ALL"]);
    expect_exit(&o, 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("would be moved to incoming"));
    let after = std::fs::metadata(s.q().join("hold").join(&h)).unwrap();
    assert_eq!(
        (before.ino(), before.mtime(), before.mode()),
        (after.ino(), after.mtime(), after.mode())
    );
}

/// Each hostile case: a clear line naming the ID and the reason, exit 1,
/// nothing moved.
#[test]
fn bad_input_is_refused_and_nothing_moves() {
    let mut s = TempSpool::new();
    let o = s.cmd(&["release", "..", "a/b", ".", "", "x.y"]);
    expect_exit(&o, 1);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("not a legal queue ID")
            .count(),
        5,
        "{}",
        text(&o)
    );

    let mut cases: Vec<(String, &str)> = Vec::new();
    // symlink named like a queue file, pointing at a real one elsewhere
    let target = s.add("deferred");
    let t_path = s.q().join(queue_format::hash_dir::queue_path(
        "deferred", &target, true, 1,
    ));
    let link = "0000099999";
    std::os::unix::fs::symlink(&t_path, s.q().join("hold").join(link)).unwrap();
    cases.push((link.into(), "symbolic link"));
    // hard link
    let hl = s.add("hold");
    std::fs::hard_link(
        s.q().join("hold").join(&hl),
        s.q().join("trace").join("extra-link"),
    )
    .unwrap();
    cases.push((hl, "2 links"));
    // wrong owner
    let wo = s.add("hold");
    std::os::unix::fs::chown(s.q().join("hold").join(&wo), Some(0), Some(0)).unwrap();
    cases.push((wo, "not mail_owner"));
    // not committed
    let b = Builder::new(now(), "a@b.c").recipient("r@x").body_line("x");
    let nr = s.add_with("hold", b, 0o600);
    cases.push((nr, "not ready"));
    // a directory where a file belongs
    let dir_id = "0000198888";
    std::fs::create_dir(s.q().join("hold").join(dir_id)).unwrap();
    cases.push((dir_id.into(), "not a regular file"));
    // a FIFO: opening it must not hang
    let fifo_id = "0000297777";
    let st = std::process::Command::new("mkfifo")
        .arg(s.q().join("hold").join(fifo_id))
        .status()
        .unwrap();
    assert!(st.success());
    cases.push((fifo_id.into(), "not a regular file"));
    // truncated (unfinished) file
    let b = Builder::new(now(), "a@b.c").recipient("r@x").body_line("x");
    let tr = s.add_with("hold", b, 0o700);
    let p = s.q().join("hold").join(&tr);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
    cases.push((tr, "corrupt"));
    // name that does not match the inode (a copy under the old name)
    let orig = s.add("hold");
    let op = s.q().join("hold").join(&orig);
    let copy = s.q().join("hold").join("copy.tmp");
    std::fs::copy(&op, &copy).unwrap();
    std::fs::remove_file(&op).unwrap();
    std::fs::rename(&copy, &op).unwrap();
    let (uid, gid) = postfix_ids();
    std::os::unix::fs::chown(&op, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&op, std::fs::Permissions::from_mode(0o700)).unwrap();
    cases.push((orig, "does not match inode"));
    // an existing target: never overwritten
    let ex = s.add("hold");
    std::fs::write(s.q().join("incoming").join(&ex), b"someone else's file").unwrap();
    cases.push((ex.clone(), "target exists"));

    for (id, why) in &cases {
        let before = s.find(id);
        let o = s.cmd(&["release", id.as_str()]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{id}: {}", text(&o));
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{id}: skipped")) && l.contains(why)),
            "{id}: expected {why:?} in {out}"
        );
        assert_eq!(s.find(id), before, "{id} must not move");
        assert!(!text(&o).contains("panicked"));
    }
    assert_eq!(
        std::fs::read(s.q().join("incoming").join(&ex)).unwrap(),
        b"someone else's file"
    );
}

#[test]
fn locked_files_are_skipped_flock_and_fcntl() {
    let mut s = TempSpool::new();
    let f = s.add("hold");
    let c = s.add("hold");
    let fp = s.q().join("hold").join(&f);
    let cp = s.q().join("hold").join(&c);
    // Another process holds a shared flock (as a delivery agent does).
    let mut flocker = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_SH); print('locked', flush=True); time.sleep(30)",
        ])
        .arg(&fp)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(flocker.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    // Another process holds an fcntl write lock.
    let mut fcntler = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
        ])
        .arg(&cp)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(fcntler.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let o = s.cmd(&["release", f.as_str(), c.as_str()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let _ = flocker.kill();
    let _ = fcntler.kill();
    let _ = flocker.wait();
    let _ = fcntler.wait();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("{f}: skipped: locked (flock)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{c}: skipped: locked (fcntl)")),
        "{out}"
    );
    assert_eq!(s.find(&f), vec![format!("hold/{f}")]);
    assert_eq!(s.find(&c), vec![format!("hold/{c}")]);
    // Unlocked now: released.
    let o = s.cmd(&["release", f.as_str(), c.as_str()]);
    expect_exit(&o, 0);
}

#[test]
fn other_file_system_is_refused_never_copied() {
    let mut s = TempSpool::new();
    let id = s.add("hold");
    let inc = s.q().join("incoming");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&inc)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs (root in CI)");
    let o = s.cmd(&["release", id.as_str()]);
    let _ = std::process::Command::new("umount").arg(&inc).status();
    expect_exit(&o, 1);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("another file system"),
        "{}",
        text(&o)
    );
    assert_eq!(s.find(&id), vec![format!("hold/{id}")]);
}

#[test]
fn check_reports_and_repairs_what_postsuper_s_would() {
    let mut s = TempSpool::new();
    // wrong hash directory
    let w = s.add("deferred");
    let right = s
        .q()
        .join(queue_format::hash_dir::queue_path("deferred", &w, true, 1));
    let wrong_dir = s
        .q()
        .join("deferred")
        .join(if right.parent().unwrap().ends_with("0") {
            "1"
        } else {
            "0"
        });
    std::fs::create_dir_all(&wrong_dir).unwrap();
    std::fs::rename(&right, wrong_dir.join(&w)).unwrap();
    // a name that does not match its inode
    let m = s.add("hold");
    let mp = s.q().join("hold").join(&m);
    let bogus = queue_format::queue_id::encode_short(12345, 1);
    std::fs::rename(&mp, s.q().join("hold").join(&bogus)).unwrap();
    let ino = std::fs::metadata(s.q().join("hold").join(&bogus))
        .unwrap()
        .ino();

    let o = s.cmd(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("wrong hash directory"), "{out}");
    assert!(
        out.contains(&format!("hold/{bogus}: name does not match inode {ino}")),
        "{out}"
    );

    let o = s.cmd(&["check", "--repair"]);
    expect_exit(&o, 1);
    assert_eq!(
        s.find(&w),
        vec![queue_format::hash_dir::queue_path("deferred", &w, true, 1)]
    );
    let fixed = queue_format::queue_id::encode_short(12345, ino);
    assert_eq!(s.find(&fixed), vec![format!("hold/{fixed}")]);
    let o = s.cmd(&["check"]);
    assert_eq!(o.status.code(), Some(0), "clean after repair: {}", text(&o));
}
