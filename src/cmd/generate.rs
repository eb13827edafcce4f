//! `posthold generate`: man pages and shell completions, made from the
//! command-line definitions themselves so that they cannot drift from
//! them. Hidden from `--help`; `scripts/package` runs it.
//!
//! * `posthold generate man DIR`: posthold(8), with every subcommand listed
//!   and the hand-written FILES, SIGNALS, EXIT STATUS and EXAMPLES
//!   sections; posthold-SUBCOMMAND(8) for each subcommand; and
//!   posthold-rules(5), the rules file, hand-written;
//! * `posthold generate completions DIR`: bash, zsh and fish.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;
use crate::error::Fatal;

/// Hand-written sections of posthold(8), in roff.
const SECTIONS_8: &str = include_str!("../../docs/man/posthold.8.in");
/// posthold-rules(5), hand-written.
const RULES_5: &str = include_str!("../../docs/man/posthold-rules.5");

/// Creates an output directory (not a queue directory: the mover's rule
/// on creating directories is about the spool).
#[allow(clippy::disallowed_methods)]
fn mkdir(dir: &Path) -> Result<(), Fatal> {
    std::fs::create_dir_all(dir).map_err(io(dir))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Fatal + '_ {
    move |e| Fatal::runtime(format!("{}: {e}", path.display()))
}

/// Writes the man pages into `dir`; returns the files written.
pub fn man(dir: &Path, out: &mut dyn Write) -> Result<i32, Fatal> {
    mkdir(dir)?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    // posthold(8): generated parts, then the hand-written sections.
    let main = clap_mangen::Man::new(cmd.clone()).section("8");
    let mut page = Vec::new();
    let w = |e: std::io::Error| Fatal::runtime(format!("man page: {e}"));
    main.render_title(&mut page).map_err(w)?;
    main.render_name_section(&mut page).map_err(w)?;
    main.render_synopsis_section(&mut page).map_err(w)?;
    main.render_description_section(&mut page).map_err(w)?;
    main.render_options_section(&mut page).map_err(w)?;
    main.render_subcommands_section(&mut page).map_err(w)?;
    page.extend_from_slice(SECTIONS_8.as_bytes());
    main.render_version_section(&mut page).map_err(w)?;
    let path = dir.join("posthold.8");
    std::fs::write(&path, &page).map_err(io(&path))?;
    written.push(path);
    // posthold-SUBCOMMAND(8).
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("posthold-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("posthold {}", sub.get_name()));
        let mut page = Vec::new();
        clap_mangen::Man::new(sub)
            .section("8")
            .render(&mut page)
            .map_err(w)?;
        let path = dir.join(format!("{name}.8"));
        std::fs::write(&path, &page).map_err(io(&path))?;
        written.push(path);
    }
    let path = dir.join("posthold-rules.5");
    std::fs::write(&path, RULES_5).map_err(io(&path))?;
    written.push(path);
    for p in written {
        writeln!(out, "{}", p.display())
            .map_err(|e| Fatal::runtime(format!("write error: {e}")))?;
    }
    Ok(0)
}

/// Writes bash, zsh and fish completions into `dir`.
pub fn completions(dir: &Path, out: &mut dyn Write) -> Result<i32, Fatal> {
    mkdir(dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, "posthold", dir).map_err(io(dir))?;
        writeln!(out, "{}", path.display())
            .map_err(|e| Fatal::runtime(format!("write error: {e}")))?;
    }
    Ok(0)
}
