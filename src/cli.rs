//! Command-line interface: parses arguments in Postfix's conventions
//! (`-c config_dir`, postcat's single-letter options) and dispatches.
//! Exit statuses: 0 done, 1 runtime failure, 2 usage or configuration.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::error::{EXIT_CONFIG, Fatal};
use crate::{cat, list};

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
    /// Start at this byte offset.
    #[arg(short = 's', value_name = "OFFSET", default_value_t = 0)]
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
    /// With --json: append posthold's own members (create_time).
    #[arg(long, requires = "json")]
    extra: bool,
    /// Queues to list (maildrop, active, incoming, deferred, hold); all when none.
    queues: Vec<String>,
}

/// Parses `args`, runs the command, and returns the exit status.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_CONFIG } else { 0 };
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let result = match cli.command {
        Command::Cat(a) => {
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
            cat::run(&a.files, a.queue, opts, || common.load(), &mut out)
        }
        Command::List(a) => a
            .common
            .load()
            .and_then(|cfg| list::run(&cfg, &a.queues, a.json, a.extra, &mut out).map(|_| ())),
    };
    let flushed = out.flush();
    match result {
        Ok(()) => match flushed {
            Ok(()) => 0,
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
