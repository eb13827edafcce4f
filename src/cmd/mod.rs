//! Command-line interface: parses arguments in Postfix's conventions
//! (`-c config_dir`, postcat's single-letter options) and dispatches.
//! Exit statuses: 0 done, 1 runtime failure, 2 usage or configuration.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::error::{EXIT_CONFIG, Fatal};
use crate::queue::act::{Action, ReleaseTo};
use crate::queue::spool::Spool;
use crate::read::{cat, list};

pub mod check;
pub mod check_config;
pub mod generate;
pub mod moves;
pub mod scan;
pub mod status;

use crate::daemon::logger::LogTo;
use crate::read::message::Message;
use crate::rules::{Judgement, Reason};

/// Options every subcommand takes.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Postfix configuration directory (as `postconf -c`).
    #[arg(short = 'c', value_name = "CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Use this queue directory instead of postconf's queue_directory.
    #[arg(long, value_name = "DIR")]
    pub queue_directory: Option<PathBuf>,
}

impl Common {
    fn load(&self) -> Result<Config, Fatal> {
        Config::load(self.config_dir.as_deref(), self.queue_directory.as_deref())
    }
}

/// posthold: the safe hold-queue manager for Postfix.
#[derive(Debug, Parser)]
#[command(name = "posthold", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show queue files, byte-identical to postcat.
    Cat(CatArgs),
    /// List queued messages, as postqueue -j (with --json) or mailq.
    List(ListArgs),
    /// Release held mail: young mail to incoming (delivery now), old mail
    /// through maildrop (fresh create_time), or --to a queue.
    Release(ReleaseArgs),
    /// Put mail from incoming or deferred on hold.
    Hold(MoveArgs),
    /// Requeue into maildrop (as postsuper -r): pickup and cleanup run again.
    Requeue(MoveArgs),
    /// Mark for return to sender (as postsuper -e); --release also releases (-f).
    Expire(ExpireArgs),
    /// Delete messages with their defer, bounce and trace logs.
    Delete(DeleteArgs),
    /// Move messages into posthold's quarantine directory.
    Quarantine(MoveArgs),
    /// Move quarantined messages back into hold.
    Restore(MoveArgs),
    /// Audit the queue; --repair fixes what postsuper -s would.
    Check(CheckArgs),
    /// The daemon: release held mail when its rules say (X-Deliver-At by default).
    Watch(WatchArgs),
    /// Check a rules file and print the rules in order.
    CheckConfig(CheckConfigArgs),
    /// Summary of a running daemon (from its metrics endpoint).
    Status(StatusArgs),
    /// Run the rules file's content scanners on messages; print what they
    /// say and what the daemon would do (nothing is moved).
    Scan(ScanArgs),
    /// Write man pages or shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// What to write: man (pages for sections 5 and 8) or completions
    /// (bash, zsh, fish).
    #[arg(value_parser = ["man", "completions"])]
    what: String,
    /// Directory to write into (created if missing).
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct ScanArgs {
    #[command(flatten)]
    common: Common,
    /// Rules file (TOML) with [scanner.NAME] tables.
    #[arg(long, value_name = "FILE", required = true)]
    rules: PathBuf,
    /// Only this scanner, without the rules: its result per message.
    #[arg(long, value_name = "NAME")]
    scanner: Option<String>,
    /// Messages scanned at once, 1 to 256 (default: the scanner's concurrency, or 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Queue IDs, - to read IDs from stdin, or ALL (the hold queue).
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    common: Common,
    /// Rules file (TOML); without it: release at X-Deliver-At / Deferred-Delivery, keep the rest.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Full rescan interval, a safety net besides inotify (Postfix time units).
    #[arg(long, value_name = "AGE", default_value = "300s")]
    scan_interval: String,
    /// Parser threads (1 to 256).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Log to syslog (/dev/log, facility mail) instead of stderr.
    #[arg(long)]
    syslog: bool,
    /// Keep running as root (default: drop to mail_owner after start).
    #[arg(long)]
    no_drop_privileges: bool,
    /// Serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9142).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The daemon's metrics address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9142")]
    metrics: String,
}

#[derive(Debug, Args)]
struct CheckConfigArgs {
    /// Also audit the Postfix configuration in CONFIG_DIR: what posthold
    /// needs of it, each finding with the setting to change.
    #[arg(short = 'c', value_name = "CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Audit the default Postfix configuration (as postconf without -c).
    #[arg(long)]
    postfix: bool,
    /// Rules file to check; the default rules when none.
    rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct MoveArgs {
    #[command(flatten)]
    common: Common,
    /// Check and report what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
    /// Queue IDs, - to read IDs from stdin, or ALL.
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(Debug, Args)]
struct ReleaseArgs {
    #[command(flatten)]
    moves: MoveArgs,
    /// Destination: incoming (deliver now), deferred (as postsuper -H) or
    /// maildrop (requeue). Default: incoming, or maildrop for old mail.
    #[arg(long, value_parser = ["incoming", "deferred", "maildrop"])]
    to: Option<String>,
    /// Requeue through maildrop mail older than this (Postfix time units,
    /// e.g. 2d). Default: half of maximal_queue_lifetime
    /// (bounce_queue_lifetime for the null sender).
    #[arg(long, value_name = "AGE")]
    old_after: Option<String>,
}

#[derive(Debug, Args)]
struct ExpireArgs {
    #[command(flatten)]
    moves: MoveArgs,
    /// Also release from hold (as postsuper -f).
    #[arg(long)]
    release: bool,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    #[command(flatten)]
    moves: MoveArgs,
    /// Required with ALL.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// Fix wrong hash directories and name/inode mismatches (through the mover).
    #[arg(long)]
    repair: bool,
    /// Report uncommitted files and temporary names older than this.
    #[arg(long, value_name = "AGE", default_value = "1h")]
    not_ready_after: String,
    /// One JSON object per finding.
    #[arg(long)]
    json: bool,
}

fn duration(v: &str, what: &str) -> Result<u64, Fatal> {
    crate::config::parse_time(v, 's').ok_or_else(|| {
        Fatal::config(format!(
            "{what}: bad time value {v:?} (use e.g. 300s, 12h, 2d)"
        ))
    })
}

/// The moving commands rename inside Postfix's 0700 queue directories and
/// create hash directories owned by mail_owner: they need root.
fn require_root(what: &str) -> Result<(), Fatal> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Fatal::config(format!("{what}: must run as root")))
    }
}

fn run_moves(m: &MoveArgs, action: Action, yes: bool, out: &mut dyn Write) -> Result<i32, Fatal> {
    require_root(action.name())?;
    let spool = Spool::open(m.common.load()?)?;
    let opts = moves::RunOpts {
        dry_run: m.dry_run,
        json: m.json,
        yes,
    };
    moves::run(&spool, &action, &m.ids, opts, out)
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
struct CatArgs {
    #[command(flatten)]
    common: Common,
    /// Print help (-h is postcat's header option here).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Show body content.
    #[arg(short = 'b')]
    body: bool,
    /// Show record types as decimal numbers.
    #[arg(short = 'd')]
    decimal: bool,
    /// Show envelope records and markers.
    #[arg(short = 'e')]
    envelope: bool,
    /// Show header content.
    #[arg(short = 'h')]
    header: bool,
    /// Show record offsets.
    #[arg(short = 'o')]
    offsets: bool,
    /// Arguments are queue IDs, searched in the queues as postcat -q does.
    #[arg(short = 'q')]
    queue: bool,
    /// Do not follow pointer records (with -v); read past the END record.
    #[arg(short = 'r')]
    raw: bool,
    /// Start at this byte offset (decimal digits only).
    #[arg(short = 's', value_name = "OFFSET", default_value_t = 0, value_parser = parse_offset)]
    start: u64,
    /// Show pointer and padding records and text record labels.
    #[arg(short = 'v')]
    verbose: bool,
    /// Queue files (or queue IDs with -q); standard input when none.
    files: Vec<String>,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    common: Common,
    /// One JSON object per line, exactly as postqueue -j.
    #[arg(long)]
    json: bool,
    /// With --json: append posthold's own members (create_time, deliver_at, bad_date).
    #[arg(long, requires = "json")]
    extra: bool,
    /// Only messages whose sender matches this regex (as listed).
    #[arg(long, value_name = "REGEX")]
    sender: Option<String>,
    /// Only messages with a recipient that matches this regex.
    #[arg(long, value_name = "REGEX")]
    recipient: Option<String>,
    /// Only messages of at least this size (bytes; k, M, G suffixes).
    #[arg(long, value_name = "SIZE")]
    min_size: Option<String>,
    /// Only messages of at most this size.
    #[arg(long, value_name = "SIZE")]
    max_size: Option<String>,
    /// Only messages that arrived at least this long ago (Postfix time units).
    #[arg(long, value_name = "AGE")]
    min_age: Option<String>,
    /// Only messages that arrived at most this long ago.
    #[arg(long, value_name = "AGE")]
    max_age: Option<String>,
    /// Queues to list (maildrop, active, incoming, deferred, hold, quarantine); Postfix's when none.
    queues: Vec<String>,
}

impl ListArgs {
    /// The selection the options ask for.
    fn select(&self) -> Result<list::Select, Fatal> {
        let re = |v: &Option<String>, what: &str| {
            v.as_deref()
                .map(|r| regex::Regex::new(r).map_err(|e| Fatal::config(format!("--{what}: {e}"))))
                .transpose()
        };
        let size = |v: &Option<String>, what: &str| {
            v.as_deref()
                .map(|s| {
                    crate::scan::parse_size(s).ok_or_else(|| {
                        Fatal::config(format!("--{what}: bad size {s:?} (use e.g. 500, 20k, 5M)"))
                    })
                })
                .transpose()
        };
        let age = |v: &Option<String>, what: &str| {
            v.as_deref()
                .map(|s| duration(s, &format!("--{what}")))
                .transpose()
        };
        Ok(list::Select {
            sender: re(&self.sender, "sender")?,
            recipient: re(&self.recipient, "recipient")?,
            min_size: size(&self.min_size, "min-size")?,
            max_size: size(&self.max_size, "max-size")?,
            min_age: age(&self.min_age, "min-age")?,
            max_age: age(&self.max_age, "max-age")?,
        })
    }
}

/// `posthold -c CONFIG_DIR SUBCOMMAND ...`, as Postfix's commands take
/// `-c` first, is `posthold SUBCOMMAND -c CONFIG_DIR ...`.
fn config_first(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if args.len() >= 4 && args[1] == "-c" {
        let (c, dir) = (args.remove(1), args.remove(1));
        args.insert(2, c);
        args.insert(3, dir);
    }
    args
}

/// Parses `args`, runs the command, and returns the exit status.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(config_first(args.into_iter().collect())) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_CONFIG } else { 0 };
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result: Result<i32, Fatal> = match cli.command {
        Command::Cat(a) => cat_cmd(&a, &mut out),
        Command::List(a) => list_cmd(&a, &mut out),
        Command::Release(a) => release(&a, &mut out),
        Command::Hold(a) => run_moves(&a, Action::Hold, false, &mut out),
        Command::Requeue(a) => run_moves(&a, Action::Requeue, false, &mut out),
        Command::Expire(a) => run_moves(
            &a.moves,
            Action::Expire { release: a.release },
            false,
            &mut out,
        ),
        Command::Delete(a) => run_moves(&a.moves, Action::Delete, a.yes, &mut out),
        Command::Quarantine(a) => run_moves(&a, Action::Quarantine, false, &mut out),
        Command::Restore(a) => run_moves(&a, Action::Restore, false, &mut out),
        Command::Watch(a) => watch(&a),
        Command::Scan(a) => scan_cmd(&a, &mut out),
        Command::Status(a) => crate::daemon::metrics::parse_addr(&a.metrics)
            .and_then(|addr| status::run(addr, &mut out)),
        Command::CheckConfig(a) => check_config_cmd(&a, &mut out),
        Command::Check(a) => check_cmd(&a, &mut out),
        Command::Generate(a) => match a.what.as_str() {
            "man" => generate::man(&a.dir, &mut out),
            _ => generate::completions(&a.dir, &mut out),
        },
    };
    let flushed = out.flush();
    match result {
        Ok(status) => match flushed {
            Ok(()) => status,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Err(e) => {
                eprintln!("posthold: fatal: write error: {e}");
                1
            }
        },
        Err(f) => {
            eprintln!("posthold: fatal: {f}");
            f.status
        }
    }
}

/// postcat's `-s`: decimal digits only (Postfix `alldig()`, so no sign and
/// not empty), converted as `atol()` does, saturating at LONG_MAX.
fn parse_offset(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad offset: {s}"));
    }
    let v = s.bytes().fold(0u64, |v, b| {
        v.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    Ok(v.min(i64::MAX as u64))
}

/// `posthold cat`.
fn cat_cmd(a: &CatArgs, out: &mut dyn Write) -> Result<i32, Fatal> {
    let opts = cat::Options {
        body: a.body,
        envelope: a.envelope,
        header: a.header,
        offsets: a.offsets,
        decimal: a.decimal,
        raw: a.raw,
        verbose: a.verbose,
        start_offset: a.start,
    };
    let common = a.common.clone();
    let names = if a.queue {
        cat::Names::QueueIds
    } else {
        cat::Names::Files
    };
    cat::run(&a.files, names, opts, || common.load(), out).map(|()| 0)
}

/// `posthold list`.
fn list_cmd(a: &ListArgs, out: &mut dyn Write) -> Result<i32, Fatal> {
    let cfg = a.common.load()?;
    // `--extra`'s due time is the daemon's own judgement under the default
    // rules (bad dates and the horizon included).
    let rules = crate::rules::Rules::default_rules();
    let root = match a.extra {
        true => Some(
            std::fs::File::open(&cfg.queue_directory)
                .map_err(|e| Fatal::runtime(format!("{}: {e}", cfg.queue_directory.display())))?,
        ),
        false => None,
    };
    let due_of = |rel: &str, id: &str| {
        let root = root.as_ref()?;
        let m = Message::open_for_listing(root.as_fd(), rel, id).ok()?;
        let now = crate::util::now();
        match rules.judge(&m.into_facts(now), &[], now) {
            Judgement::Ruled(r) => match (r.due, r.reason) {
                (Some(t), _) => Some(list::Due {
                    at: Some(t),
                    bad: false,
                }),
                (None, Reason::BadDate { .. }) => Some(list::Due {
                    at: None,
                    bad: true,
                }),
                (None, Reason::BeyondHorizon { due, .. }) => Some(list::Due {
                    at: Some(due),
                    bad: true,
                }),
                _ => None,
            },
            Judgement::Scan(_) => None,
        }
    };
    let format = match (a.json, a.extra) {
        (false, _) => list::Format::Text,
        (true, false) => list::Format::Json,
        (true, true) => list::Format::JsonExtra(&due_of),
    };
    let sel = a.select()?;
    list::run_selected(&cfg, &a.queues, format, &sel, out).map(|_| 0)
}

/// `posthold release`.
fn release(a: &ReleaseArgs, out: &mut dyn Write) -> Result<i32, Fatal> {
    let to = a.to.as_deref().map(|t| match t {
        "incoming" => ReleaseTo::Incoming,
        "deferred" => ReleaseTo::Deferred,
        _ => ReleaseTo::Maildrop,
    });
    let old_after = a
        .old_after
        .as_deref()
        .map(|v| duration(v, "--old-after"))
        .transpose()?;
    run_moves(&a.moves, Action::Release { to, old_after }, false, out)
}

/// `posthold watch`.
fn watch(a: &WatchArgs) -> Result<i32, Fatal> {
    let interval = duration(&a.scan_interval, "--scan-interval")?;
    let metrics = a
        .metrics
        .as_deref()
        .map(crate::daemon::metrics::parse_addr)
        .transpose()?;
    let cfg = a.common.load()?;
    crate::daemon::run(
        cfg,
        crate::daemon::WatchOpts {
            rules: a.rules.clone(),
            scan_interval: std::time::Duration::from_secs(interval.max(1)),
            workers: usize::from(a.workers),
            log_to: if a.syslog {
                LogTo::Syslog
            } else {
                LogTo::Stderr
            },
            drop_privileges: !a.no_drop_privileges,
            metrics,
        },
    )
}

/// `posthold check-config [-c CONFIG_DIR | --postfix] [RULES]`.
fn check_config_cmd(a: &CheckConfigArgs, out: &mut dyn Write) -> Result<i32, Fatal> {
    let rules = crate::rules::Rules::load(a.rules.as_deref())?;
    let status = check_config::run(&rules, out)?;
    if a.config_dir.is_none() && !a.postfix {
        return Ok(status);
    }
    let findings = check_config::audit_postfix(a.config_dir.as_deref(), &rules)?;
    let w = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
    for f in &findings {
        writeln!(out, "postfix: {f}").map_err(w)?;
    }
    writeln!(out, "postfix: {} finding(s)", findings.len()).map_err(w)?;
    Ok(if findings.is_empty() { status } else { 1 })
}

/// `posthold scan`.
fn scan_cmd(a: &ScanArgs, out: &mut dyn Write) -> Result<i32, Fatal> {
    let rules = crate::rules::Rules::load(Some(&a.rules))?;
    let spool = Spool::open(a.common.load()?)?;
    // As the daemon: command scanners never run as root or mail_owner.
    crate::daemon::scanners::check_scanner_users(
        &rules,
        crate::daemon::scanners::RunsAs::Caller,
        spool.owner,
        &[],
    )?;
    let opts = scan::ScanOpts {
        scanner: a.scanner.clone(),
        jobs: a.jobs.map(usize::from),
    };
    scan::run(&spool, rules, &a.ids, &opts, out)
}

/// `posthold check`.
fn check_cmd(a: &CheckArgs, out: &mut dyn Write) -> Result<i32, Fatal> {
    let after = duration(&a.not_ready_after, "--not-ready-after")?;
    if a.repair {
        require_root("check --repair")?;
    }
    let spool = Spool::open(a.common.load()?)?;
    let repair = if a.repair {
        check::Repair::Yes
    } else {
        check::Repair::No
    };
    check::run(&spool, repair, after, a.json, out)
}
