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

#[test]
fn the_package_builds_installs_and_removes_cleanly() {
    if !is_root() {
        eprintln!("skipped: dpkg -i needs root");
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
        "./lib/systemd/system/posthold.service",
        "./lib/systemd/system/posthold@.service",
        "./etc/posthold/rules.toml",
    ] {
        assert!(listing.contains(path), "{path} not in\n{listing}");
    }
    let info = ok(&format!("dpkg-deb -I {}", deb.display()));
    // No maintainer script that could enable or start anything.
    for script in ["postinst", "prerm", "postrm", "preinst"] {
        assert!(
            !info.contains(&format!(" {script} ")),
            "{script} in\n{info}"
        );
    }
    let _ = sh("dpkg -P posthold");
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
    // The units are valid; nothing is enabled.
    ok(
        "systemd-analyze verify /lib/systemd/system/posthold.service 2>&1 | grep -v 'postfix' | (! grep -i error)",
    );
    ok(
        "systemd-analyze verify /lib/systemd/system/posthold@postfix-out.service 2>&1 | grep -v 'postfix' | (! grep -i error)",
    );
    assert!(
        !std::path::Path::new("/etc/systemd/system/multi-user.target.wants/posthold.service")
            .exists()
    );
    // Removed: the binary goes, the conffile stays until purge.
    ok("dpkg -r posthold");
    assert!(!std::path::Path::new("/usr/sbin/posthold").exists());
    assert!(std::path::Path::new("/etc/posthold/rules.toml").exists());
    ok("dpkg -P posthold");
    assert!(!std::path::Path::new("/etc/posthold/rules.toml").exists());
    let (installed, _) = sh("dpkg -s posthold");
    assert!(!installed);
}
