//! SAFETY.md names the code that enforces each invariant and the tests
//! that prove it. This test fails when a name it gives no longer exists,
//! so that the document cannot drift from the code unnoticed.
//!
//! A name is a backticked path such as `queue::relocate::move_to`,
//! `queue::gate::Spool::gate`, `mover::bad_input_is_refused_and_nothing_moves`
//! or `rules::tests::*`. It is looked up from the longest prefix that is a
//! source file (`src/`, `queue-format/src/`, `tests/`,
//! `queue-format/tests/`); what follows must be defined in that file.

use std::path::PathBuf;

use crate::common::root;

/// The Rust paths in backticks in `text`.
fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, span) in text.split('`').enumerate() {
        if i % 2 == 0 {
            continue; // outside backticks
        }
        let ok = span.contains("::")
            && span.split("::").all(|seg| {
                seg == "*"
                    || (!seg.is_empty()
                        && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            });
        if ok {
            out.push(span.to_string());
        }
    }
    out
}

/// The source files a module path may name.
fn module_files(segs: &[&str]) -> Vec<PathBuf> {
    let r = root();
    let mut roots: Vec<(PathBuf, &[&str])> = vec![
        (r.join("src"), segs),
        (r.join("tests"), segs),
        (r.join("queue-format/src"), segs),
        (r.join("queue-format/tests"), segs),
    ];
    if segs.first() == Some(&"queue_format") {
        roots.push((r.join("queue-format/src"), &segs[1..]));
    }
    let mut found = Vec::new();
    for (base, segs) in roots {
        let rel = segs.join("/");
        for p in [
            base.join(format!("{rel}.rs")),
            base.join(&rel).join("mod.rs"),
        ] {
            if p.is_file() {
                found.push(p);
            }
        }
    }
    found
}

/// Whether `name` is defined in a file's `text` (a function, type,
/// constant, module, trait or macro).
fn defines(text: &str, name: &str) -> bool {
    ["fn", "struct", "enum", "const", "mod", "trait", "type"]
        .iter()
        .any(|kw| {
            [
                format!("{kw} {name}("),
                format!("{kw} {name} "),
                format!("{kw} {name}<"),
                format!("{kw} {name};"),
            ]
            .iter()
            .any(|p| text.contains(p.as_str()))
        })
        || text.contains(&format!("fn {name}("))
}

/// Resolves one SAFETY.md name: `Err` says what is missing. Names of the
/// standard library and of crates posthold uses are not checked.
fn resolve(name: &str) -> Result<(), String> {
    let segs: Vec<&str> = name.split("::").collect();
    if ["std", "nix", "libc"].contains(&segs[0]) {
        return Ok(());
    }
    // The longest prefix that is a file, then what must be in it; a name
    // may be a test module's (`tests/scan.rs`) or a library module's
    // (`src/scan/`): either will do.
    let mut why = format!("`{name}`: no such module");
    for k in (1..=segs.len()).rev() {
        for file in module_files(&segs[..k]) {
            let rest: Vec<&str> = segs[k..]
                .iter()
                .copied()
                .filter(|s| *s != "tests" && *s != "*")
                .collect();
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let ok = match rest.as_slice() {
                [] => true,
                [one] => defines(&text, one),
                // A type and its method or variant.
                [ty, member] => {
                    (defines(&text, ty) || text.contains(&format!("impl {ty} ")))
                        && has_word(&text, member)
                }
                _ => false,
            };
            if ok {
                return Ok(());
            }
            why = format!("`{name}`: not defined in {}", file.display());
        }
    }
    Err(why)
}

fn has_word(text: &str, w: &str) -> bool {
    text.match_indices(w).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + w.len()..].chars().next();
        let edge = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        edge(before) && edge(after)
    })
}

#[test]
fn every_name_in_safety_md_exists() {
    let text = std::fs::read_to_string(root().join("SAFETY.md")).unwrap();
    let names = names(&text);
    assert!(
        names.len() > 40,
        "SAFETY.md names code: found only {names:?}"
    );
    let missing: Vec<String> = names.iter().filter_map(|n| resolve(n).err()).collect();
    assert!(
        missing.is_empty(),
        "SAFETY.md names what does not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_renamed_function_is_caught() {
    assert!(resolve("queue::relocate::move_to").is_ok());
    assert!(resolve("queue::gate::Spool::gate").is_ok());
    assert!(resolve("mover::bad_input_is_refused_and_nothing_moves").is_ok());
    assert!(resolve("queue::relocate::move_somewhere").is_err());
    assert!(resolve("spool::Spool::admit").is_err(), "an old path");
    assert!(resolve("mover::a_test_that_was_renamed").is_err());
    assert!(resolve("rules::eval::Eval::Scan").is_ok());
    assert!(resolve("rules::eval::Eval::Gone").is_err());
}
