//! The Debian package: built by `scripts/package` (cargo-deb), installed
//! on this machine with `dpkg -i`, its files checked (binary, man pages
//! that render without warnings, completions, units that
//! `systemd-analyze verify` accepts, the example rules as a conffile),
//! nothing enabled, and removed and purged cleanly.

use std::process::Command;

use crate::common::*;

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ok(cmd: &str) -> String {
    let (good, out) = sh(cmd);
    assert!(good, "{cmd}: {out}");
    out
}

/// Purges the package however the test ends: the machine is left as it
/// was found.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = sh("dpkg -P posthold");
    }
}

#[test]
fn the_package_builds_installs_and_removes_cleanly() {
    if !is_root() {
        eprintln!("skipped: dpkg -i needs root");
        return;
    }
    // Never touch a posthold the machine's administrator installed.
    if sh("dpkg -s posthold").0 {
        eprintln!("skipped: a posthold package is installed here already");
        return;
    }
    let root = root();
    // Its own target directory: the test binary's build stays untouched.
    let out = Command::new(root.join("scripts/package"))
        .env("CARGO_TARGET_DIR", root.join("target/package"))
        .current_dir(&root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/package: {text}");
    let deb = text
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb named: {text}"))
        .trim()
        .to_string();
    let deb = root.join(deb);
    let listing = ok(&format!("dpkg-deb -c {}", deb.display()));
    for path in [
        "./usr/sbin/posthold",
        "./usr/share/man/man8/posthold.8.gz",
        "./usr/share/man/man8/posthold-release.8.gz",
        "./usr/share/man/man8/posthold-watch.8.gz",
        "./usr/share/man/man5/posthold-rules.5.gz",
        "./usr/share/bash-completion/completions/posthold",
        "./usr/share/zsh/vendor-completions/_posthold",
        "./usr/share/fish/vendor_completions.d/posthold.fish",
        "./usr/lib/systemd/system/posthold.service",
        "./usr/lib/systemd/system/posthold@.service",
        "./etc/posthold/rules.toml",
    ] {
        assert!(listing.contains(path), "{path} not in\n{listing}");
    }
    // The maintainer scripts never enable or start a unit; removal stops.
    let scripts = ok(&format!(
        "d=$(mktemp -d) && dpkg-deb -e {} $d && cat $d/postinst $d/prerm $d/postrm; rm -rf $d",
        deb.display()
    ));
    for bad in [
        "systemctl enable",
        "helper enable",
        "systemctl start",
        "invoke start",
    ] {
        assert!(!scripts.contains(bad), "{bad:?} in\n{scripts}");
    }
    assert!(scripts.contains("systemctl stop"), "{scripts}");
    let _purge = Purge;
    ok(&format!("dpkg -i {}", deb.display()));
    let files = ok("dpkg -L posthold");
    assert!(files.contains("/usr/sbin/posthold"), "{files}");
    let conffiles = ok("dpkg-query -W -f='${Conffiles}' posthold");
    assert!(
        conffiles.contains("/etc/posthold/rules.toml"),
        "{conffiles}"
    );
    let version = ok("/usr/sbin/posthold --version");
    assert_eq!(
        version.trim(),
        format!("posthold {}", env!("CARGO_PKG_VERSION"))
    );
    // The installed rules file is valid.
    ok("/usr/sbin/posthold check-config /etc/posthold/rules.toml");
    // man finds the pages; they render without a warning.
    for page in ["posthold", "posthold-release", "posthold-rules"] {
        let path = ok(&format!("man -w {page}"));
        assert!(path.trim().ends_with(".gz"), "{path}");
        let (good, out) = sh(&format!(
            "zcat {} | LC_ALL=C.UTF-8 groff -ww -man -Tutf8 -z 2>&1",
            path.trim()
        ));
        assert!(good && out.is_empty(), "{page}: {out}");
    }
    let page = ok("MANWIDTH=80 man -P cat posthold 2>&1");
    for section in ["SUBCOMMANDS", "FILES", "SIGNALS", "EXIT STATUS", "EXAMPLES"] {
        assert!(page.contains(section), "{section} in\n{page}");
    }
    // Completions load in bash and name the subcommands.
    let compl = ok(
        "bash -c 'source /usr/share/bash-completion/completions/posthold && complete -p posthold'",
    );
    assert!(compl.contains("posthold"), "{compl}");
    // The units are valid (the only complaint allowed is that Postfix's
    // own instance unit is not on this machine); nothing is enabled.
    for unit in ["posthold.service", "posthold@postfix-out.service"] {
        let (_, out) = sh(&format!(
            "cd /usr/lib/systemd/system && systemd-analyze verify {unit} 2>&1"
        ));
        let bad: Vec<&str> = out
            .lines()
            .filter(|l| !(l.contains("postfix") && l.contains("not found")))
            .collect();
        assert!(bad.is_empty(), "{unit}: {out}");
    }
    let wants =
        std::path::Path::new("/etc/systemd/system/multi-user.target.wants/posthold.service");
    assert!(!wants.is_symlink());
    // The administrator enables it; purge takes the link away too.
    ok("systemctl enable posthold.service 2>&1");
    assert!(wants.is_symlink());
    // Removed: the binary goes, the conffile stays until purge.
    ok("dpkg -r posthold");
    assert!(!std::path::Path::new("/usr/sbin/posthold").exists());
    assert!(std::path::Path::new("/etc/posthold/rules.toml").exists());
    ok("dpkg -P posthold");
    assert!(!std::path::Path::new("/etc/posthold/rules.toml").exists());
    assert!(!wants.is_symlink(), "the enablement link outlived purge");
    let (installed, _) = sh("dpkg -s posthold");
    assert!(!installed);
}
