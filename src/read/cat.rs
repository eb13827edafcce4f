//! `posthold cat`: queue file contents, byte-identical to Postfix 3.7's
//! `postcat` with the same options and arguments.
//!
//! This module reproduces postcat's state machine (envelope, header, body),
//! its content skips driven by the SIZE record, its markers and record
//! labels, and its asctime(3) times in the local time zone. It reads
//! through [`queue_format::reader::Reader`] in the
//! [`Dialect::Postcat37`] dialect, so damaged records (type 0, a fifth
//! length byte) read as Postfix 3.7.11 reads them, and pointer chains that
//! jump past the END record are followed exactly as Postfix follows them.
//!
//! Output follows postcat's buffering (see [`Sink`]): what postcat writes
//! after its last flush is lost when it exits, and so it is here.
//!
//! Where postcat 3.7 never terminates (a content skip that leads back to
//! the same skip from the same state, as on an unfinished file whose zeroed
//! SIZE record sends `-e`'s skip back to offset 0), posthold stops with an
//! error the second time it is asked for the same skip. Where postcat
//! crashes (a time whose year does not fit a C `int`), posthold fails.
//!
//! Errors: a file that cannot be opened or read is fatal (exit 1), as in
//! postcat; a file that does not start like a queue file gets a warning
//! and is skipped.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, Write};
use std::os::fd::AsFd;

use chrono::{Datelike, Local, TimeZone, Timelike};
use queue_format::queue_file::{atol, is_header, split_nameval};
use queue_format::reader::{Mode, Reader};
use queue_format::rec_type as rt;
use queue_format::record::Dialect;

use crate::config::{Config, POSTCAT_QUEUES};
use crate::error::Fatal;

/// postcat's options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `-b`: body text.
    pub body: bool,
    /// `-e`: envelope records and markers.
    pub envelope: bool,
    /// `-h`: header text.
    pub header: bool,
    /// `-o`: record offsets.
    pub offsets: bool,
    /// `-d`: decimal record types.
    pub decimal: bool,
    /// `-r`: do not follow pointers (with `-v`), read past END.
    pub raw: bool,
    /// `-v`: show pointer and padding records, label text records.
    pub verbose: bool,
    /// `-s`: start offset.
    pub start_offset: u64,
}

impl Options {
    fn normalized(mut self) -> Options {
        if !(self.body || self.envelope || self.header) {
            self.body = true;
            self.envelope = true;
            self.header = true;
        }
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum State {
    Env,
    Header,
    Body,
}

/// Where the input comes from. postcat skips `-s` bytes of a file by
/// seeking (past the end is no error) but of stdin by reading (past the end
/// is fatal), and on a pipe every seek fails and `-o` offsets are -1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A named file (or a queue file found with `-q`).
    File,
    /// Standard input that can seek (redirected from a file).
    Stdin,
    /// Standard input that cannot (a pipe, a terminal), read into memory.
    Pipe,
}

/// C's `asctime(localtime(&secs))`, newline included, as glibc prints it:
/// the year with `%d` (no padding, no sign for years past 9999). `None`
/// where glibc's `localtime()` or `asctime()` fails because the year does
/// not fit a C `int`: postcat 3.7 then passes a null string to its printf
/// and crashes.
pub fn asctime(secs: i64) -> Option<String> {
    asctime_in(&Local, secs)
}

fn asctime_in<Tz: TimeZone>(tz: &Tz, secs: i64) -> Option<String> {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // chrono covers about 262,000 years either way. The Gregorian calendar,
    // weekdays included, repeats every 400 years (146,097 days), and so do
    // time zone rules that far from the tz database's transitions: shift by
    // whole cycles into chrono's range, and add them back to the year.
    const CYCLE: i128 = 146_097 * 86_400;
    const HI: i128 = 8_000_000_000_000;
    let s = i128::from(secs);
    let cycles = if s > HI {
        (s - HI + CYCLE - 1) / CYCLE
    } else if s < -HI {
        -((-HI - s + CYCLE - 1) / CYCLE)
    } else {
        0
    };
    let shifted = i64::try_from(s - cycles * CYCLE).ok()?;
    let t = tz.timestamp_opt(shifted, 0).single()?;
    let year = i128::from(t.year()) + cycles * 400;
    // glibc: localtime() needs year - 1900 in an int, asctime() the year.
    if year - 1900 < i128::from(i32::MIN) || year > i128::from(i32::MAX) {
        return None;
    }
    Some(format!(
        "{} {}{:3} {:02}:{:02}:{:02} {year}\n",
        DAYS[t.weekday().num_days_from_sunday() as usize],
        MONTHS[t.month0() as usize],
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    ))
}

/// The bytes of a payload up to its first NUL, as C's `%s` prints them.
fn cstr(p: &[u8]) -> &[u8] {
    match p.iter().position(|&b| b == 0) {
        Some(n) => &p[..n],
        None => p,
    }
}

/// C's `sscanf(s, "%ld %ld", &a, &b)`: the values converted, in order.
fn scan_two_longs(s: &[u8]) -> (Option<i64>, Option<i64>) {
    fn one(s: &[u8]) -> Option<(i64, &[u8])> {
        let ws = s
            .iter()
            .take_while(|b| b.is_ascii_whitespace() || **b == 0x0b)
            .count();
        let s = &s[ws..];
        let sign = usize::from(matches!(s.first(), Some(b'-' | b'+')));
        let digits = s[sign..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        Some((atol(&s[..sign + digits]), &s[sign + digits..]))
    }
    match one(s) {
        None => (None, None),
        Some((a, rest)) => (Some(a), one(rest).map(|(b, _)| b)),
    }
}

/// postcat's standard output, and a channel for its warnings.
///
/// postcat writes into a buffer that it flushes only after each record or
/// marker it prints, and nothing flushes it when the program exits, whether
/// normally or on a fatal error. So the bytes written after the last flush
/// are lost, unless a later file's first record carries them out: the
/// ENVELOPE marker of an empty file (or of one whose first record is
/// unreadable), the newline that ends a pending `L` line at the `X` record
/// when no envelope is shown, and the `-o`/`-d` prefix of a record whose time
/// cannot be printed. `pending` holds those bytes; dropping the sink drops
/// them.
pub struct Sink<'a> {
    out: &'a mut dyn Write,
    pending: Vec<u8>,
    warn: &'a mut dyn FnMut(String),
}

impl<'a> Sink<'a> {
    /// Writes output to `out` and warnings to `warn`.
    pub fn new(out: &'a mut dyn Write, warn: &'a mut dyn FnMut(String)) -> Sink<'a> {
        Sink {
            out,
            pending: Vec::new(),
            warn,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// postcat's `vstream_fflush(VSTREAM_OUT)`.
    fn flush(&mut self) -> Result<(), Fatal> {
        if !self.pending.is_empty() {
            self.out.write_all(&self.pending).map_err(write_error)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// `put(bytes)` then the flush that will follow anyway, without copying
    /// a large payload into `pending`. Only for writes after which nothing
    /// can fail before postcat's next flush.
    fn put_through(&mut self, bytes: &[u8]) -> Result<(), Fatal> {
        self.flush()?;
        self.out.write_all(bytes).map_err(write_error)
    }

    fn warn(&mut self, message: String) {
        (self.warn)(message);
    }
}

fn write_error(e: std::io::Error) -> Fatal {
    Fatal::runtime(format!("write error: {e}"))
}

/// Postfix's `rec_goto()` keeps its loop guard (last target, reverse jumps)
/// in static variables, reset only when it is called for another file name:
/// `postcat f f` counts the reverse jumps of both passes.
#[derive(Debug, Default)]
pub struct JumpGuard {
    path: String,
    state: (u64, u32),
}

/// Prints one queue file. `path` is the name printed in markers.
pub fn postcat<R: Read + Seek>(
    input: R,
    path: &str,
    src: Source,
    opts: Options,
    guard: &mut JumpGuard,
    sink: &mut Sink<'_>,
) -> Result<(), Fatal> {
    let opts = opts.normalized();
    let mode = if opts.verbose {
        Mode::PHYSICAL
    } else {
        Mode::LOGICAL
    };
    let mut rd = Reader::with_mode(input, mode.with_dialect(Dialect::Postcat37))
        .map_err(|e| Fatal::runtime(format!("{path}: {e}")))?;
    if src == Source::Pipe {
        rd.forbid_seeks();
    }
    if guard.path == path {
        rd.set_jump_state(guard.state);
    }
    let result = print_file(&mut rd, path, src, opts, sink);
    if rd.pointer_gotos() > 0 {
        guard.path = path.to_string();
        guard.state = rd.jump_state();
    }
    result
}

/// A content skip as postcat's state machine makes it: the target, and the
/// state it leaves (state, do_print, prev_type, the reader's jump state).
type SkipKey = (i64, State, bool, u8, (u64, u32));

fn print_file<R: Read + Seek>(
    rd: &mut Reader<R>,
    path: &str,
    src: Source,
    opts: Options,
    sink: &mut Sink<'_>,
) -> Result<(), Fatal> {
    let print_text = opts.header || opts.body;
    let fatal = |e: queue_format::Error| Fatal::runtime(format!("{path}: {e}"));
    // postcat converts -s with atol(): at most LONG_MAX.
    let start = opts.start_offset.min(i64::MAX as u64);
    if start > 0 {
        if src == Source::File {
            // A seek past the end is no error: the first read finds EOF.
            rd.seek(start)
                .map_err(|e| Fatal::runtime(format!("{path}: seek to {start}: {e}")))?;
        } else if rd.skip(start).is_err() {
            return Err(Fatal::runtime(format!(
                "{path}: skip {start} bytes failed after {}",
                rd.position()
            )));
        }
    } else if let Some(ch) = rd.peek_byte().map_err(fatal)?
        // postcat uses strchr(), which also finds the NUL ending the list.
        && ch != 0
        && !rt::ENVELOPE.contains(&ch)
    {
        sink.warn(format!("{path}: input is not a valid queue file"));
        return Ok(());
    }
    if start == 0 && opts.envelope {
        // Not flushed: lost if nothing is printed after it.
        sink.put(format!("*** ENVELOPE RECORDS {path} ***\n").as_bytes());
    }
    let mut state = State::Env;
    let mut do_print = opts.envelope;
    let mut prev_type: u8 = 0;
    let (mut data_offset, mut data_size): (i64, i64) = (-1, -1);
    let mut buf = Vec::new();
    let mut skips: HashSet<SkipKey> = HashSet::new();

    let prefix = |sink: &mut Sink<'_>, offset: u64, t: u8| {
        if opts.offsets {
            sink.put(format!("{offset:>9} ").as_bytes());
        }
        if opts.decimal {
            sink.put(format!("{t:>3} ").as_bytes());
        }
    };
    let marker = |sink: &mut Sink<'_>, offset: u64, t: u8, text: &str| {
        prefix(sink, offset, t);
        sink.put(format!("*** {text} {path} ***\n").as_bytes());
        sink.flush()
    };
    let print_record = |sink: &mut Sink<'_>, offset: u64, t: u8, payload: &[u8]| {
        prefix(sink, offset, t);
        sink.put(format!("{}: ", rt::name(t)).as_bytes());
        sink.put(cstr(payload));
        sink.put(b"\n");
        sink.flush()
    };
    // postcat's content skip (to data_offset + data_size) goes wherever it
    // points. Asked again for the same skip from the same state, postcat
    // would repeat itself forever: stop instead.
    let content_skip = |rd: &mut Reader<R>,
                        skips: &mut HashSet<SkipKey>,
                        after: (State, bool, u8),
                        target: i64|
     -> Result<(), Fatal> {
        if target < 0 {
            return Err(Fatal::runtime(format!(
                "{path}: seek error: Invalid argument"
            )));
        }
        if !skips.insert((target, after.0, after.1, after.2, rd.jump_state())) {
            return Err(Fatal::runtime(format!(
                "{path}: size record sends the content skip back to offset {target} again \
                 (file not finished?); postcat 3.7 would loop forever"
            )));
        }
        rd.seek(target as u64)
            .map_err(|e| Fatal::runtime(format!("{path}: seek error: {e}")))
    };

    loop {
        // On a pipe postcat's vstream_ftell() fails: -1, printed unsigned.
        let offset = if src == Source::Pipe {
            u64::MAX
        } else {
            rd.position()
        };
        let rec = match rd.next(&mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                sink.warn(format!("{path}: {e}"));
                return Err(Fatal::runtime("record read error"));
            }
        };
        let mut t = rec.rtype;
        if t == rt::CONT || t == rt::NORM {
            if state == State::Header
                && print_text
                && prev_type != rt::CONT
                && !(is_header(cstr(&buf)) || matches!(buf.first(), Some(b' ' | b'\t')))
            {
                state = State::Body;
                do_print = opts.body;
                if !do_print && !opts.envelope {
                    break;
                }
                if !do_print && opts.envelope && data_offset >= 0 && data_size >= 0 {
                    content_skip(
                        rd,
                        &mut skips,
                        (state, do_print, prev_type),
                        data_offset.wrapping_add(data_size),
                    )?;
                }
            }
        } else if t == rt::MESG {
            if state != State::Env {
                sink.warn(format!("{path}: out-of-order message content marker"));
            }
            if opts.envelope {
                marker(sink, offset, t, "MESSAGE CONTENTS")?;
            }
            if !print_text && data_offset >= 0 && data_size >= 0 {
                content_skip(
                    rd,
                    &mut skips,
                    (State::Header, opts.header, prev_type),
                    data_offset.wrapping_add(data_size),
                )?;
            }
            state = State::Header;
            do_print = opts.header;
            continue;
        } else if t == rt::XTRA {
            if state != State::Header && state != State::Body {
                sink.warn(format!("{path}: out-of-order extracted segment marker"));
            }
            if do_print && prev_type == rt::CONT {
                // Flushed by the marker below, or lost.
                sink.put(b"\n");
            }
            if opts.envelope {
                marker(sink, offset, t, "HEADER EXTRACTED")?;
            }
            state = State::Env;
            do_print = opts.envelope;
            if !do_print {
                break;
            }
            continue;
        } else if t == rt::END {
            if state != State::Env {
                sink.warn(format!("{path}: out-of-order message end marker"));
            }
            if opts.envelope {
                marker(sink, offset, t, "MESSAGE FILE END")?;
            }
            if opts.raw {
                continue;
            }
            break;
        } else if t == rt::PTR {
            // Reached only with -v: without it the reader follows pointers.
            if do_print {
                print_record(sink, offset, t, &buf)?;
            }
            if !opts.raw
                && let Err(e) = rd.goto_pointer(&buf, rec.offset)
            {
                sink.warn(format!("{path}: {e}"));
                return Err(Fatal::runtime(
                    "bad pointer record, or input is not seekable",
                ));
            }
            continue;
        } else if t == rt::SIZE {
            if do_print {
                print_record(sink, offset, t, &buf)?;
            }
            if data_size >= 0 || data_offset >= 0 {
                sink.warn("file contains multiple size records".to_string());
            } else {
                let (a, b) = scan_two_longs(cstr(&buf));
                if let Some(a) = a {
                    data_size = a;
                }
                if let Some(b) = b {
                    data_offset = b;
                }
                if a.is_none() || b.is_none() || data_offset <= 0 || data_size <= 0 {
                    let shown: String = String::from_utf8_lossy(cstr(&buf))
                        .chars()
                        .take(100)
                        .collect();
                    sink.warn(format!("invalid size record: {shown}"));
                }
                if !opts.envelope {
                    // Backwards is allowed: this happens once per file.
                    if data_offset < 0 {
                        return Err(Fatal::runtime(format!(
                            "{path}: seek error: invalid size record"
                        )));
                    }
                    rd.seek(data_offset as u64)
                        .map_err(|e| Fatal::runtime(format!("{path}: seek error: {e}")))?;
                    state = State::Header;
                    do_print = opts.header;
                }
            }
            continue;
        }

        if !do_print {
            continue;
        }
        prefix(sink, offset, t);
        let time = |secs: i64| {
            asctime(secs).ok_or_else(|| {
                Fatal::runtime(format!(
                    "{path}: offset {}: time {secs} out of range (postcat 3.7 crashes here)",
                    rec.offset
                ))
            })
        };
        match t {
            rt::TIME | rt::WARN => {
                let when = time(atol(&buf))?;
                sink.put(format!("{}: {when}", rt::name(t)).as_bytes());
            }
            rt::CONT => {
                if state == State::Env {
                    sink.put(format!("{}: ", rt::name(t)).as_bytes());
                } else if opts.verbose {
                    sink.put(b"unterminated_text: ");
                }
                sink.put_through(&buf)?;
                if state == State::Env || opts.verbose || opts.offsets {
                    t = 0;
                    sink.put(b"\n");
                }
            }
            rt::NORM => {
                if opts.verbose {
                    sink.put(b"regular_text: ");
                }
                sink.put_through(&buf)?;
                sink.put(b"\n");
            }
            rt::DTXT => {
                sink.put(b"padding: ");
                sink.put_through(&buf)?;
                sink.put(b"\n");
            }
            rt::ATTR => match split_nameval(cstr(&buf)) {
                None => {
                    let shown: String = String::from_utf8_lossy(cstr(&buf))
                        .chars()
                        .take(100)
                        .collect();
                    sink.warn(format!("{path}: malformed attribute: {shown}"));
                }
                Some((name, value)) if name == b"create_time" => {
                    let when = time(atol(value))?;
                    sink.put(format!("create_time: {when}").as_bytes());
                }
                Some((name, value)) => {
                    sink.put(b"named_attribute: ");
                    sink.put(name);
                    sink.put(b"=");
                    sink.put(value);
                    sink.put(b"\n");
                }
            },
            _ => {
                sink.put(format!("{}: ", rt::name(t)).as_bytes());
                sink.put(cstr(&buf));
                sink.put(b"\n");
            }
        }
        prev_type = t;
        // "In case the next record is broken."
        sink.flush()?;
    }
    Ok(())
}

/// Runs `posthold cat` over files (or queue IDs with `search_queue`),
/// writing to `out`. Warnings go to stderr, as postcat's do. Output that
/// postcat would still hold unflushed at its exit is dropped.
pub fn run(
    args: &[String],
    names: Names,
    opts: Options,
    config: impl FnOnce() -> Result<Config, Fatal>,
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    let mut warn = |m: String| eprintln!("posthold: warning: {m}");
    let mut sink = Sink::new(out, &mut warn);
    let mut guard = JumpGuard::default();
    if args.is_empty() {
        return stdin(opts, &mut guard, &mut sink);
    }
    if names == Names::QueueIds {
        // Names become paths: refuse anything that is not a legal queue ID
        // before touching the configuration or the file system.
        if let Some(bad) = args.iter().find(|id| !queue_format::queue_id::is_legal(id)) {
            return Err(Fatal::runtime(format!("bad mail queue ID: {bad}")));
        }
        let cfg = config()?;
        for id in args {
            let mut found = None;
            // postcat's queues, then posthold's quarantine.
            for q in POSTCAT_QUEUES
                .iter()
                .copied()
                .chain([crate::queue::spool::QUARANTINE])
            {
                let rel = cfg.queue_path(q, id);
                match File::open(cfg.queue_directory.join(&rel)) {
                    Ok(f) => {
                        found = Some((rel, f));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // Not "no such file": a queue that cannot be read is
                    // an error that says so (an unprivileged caller).
                    Err(e) => {
                        return Err(Fatal::runtime(format!("open queue file {id}: {rel}: {e}")));
                    }
                }
            }
            let Some((rel, f)) = found else {
                return Err(Fatal::runtime(format!(
                    "open queue file {id}: No such file or directory"
                )));
            };
            postcat(
                BufReader::new(f),
                &rel,
                Source::File,
                opts,
                &mut guard,
                &mut sink,
            )?;
        }
        return Ok(());
    }
    for name in args {
        let f = File::open(name).map_err(|e| Fatal::runtime(format!("open {name}: {e}")))?;
        postcat(
            BufReader::new(f),
            name,
            Source::File,
            opts,
            &mut guard,
            &mut sink,
        )?;
    }
    Ok(())
}

/// Standard input, named `stdin`: read in place when it can seek (a
/// redirected file), else read into memory and treated as the pipe it is.
fn stdin(opts: Options, guard: &mut JumpGuard, sink: &mut Sink<'_>) -> Result<(), Fatal> {
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Fatal::runtime(format!("stdin: {e}")))?;
    let mut file = File::from(fd);
    if file.stream_position().is_ok() {
        return postcat(
            BufReader::new(file),
            "stdin",
            Source::Stdin,
            opts,
            guard,
            sink,
        );
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| Fatal::runtime(format!("read stdin: {e}")))?;
    postcat(Cursor::new(data), "stdin", Source::Pipe, opts, guard, sink)
}

/// What `cat`'s arguments name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// Files (postcat's default).
    Files,
    /// Queue IDs, searched in the queues (postcat -q).
    QueueIds,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asctime_prints_years_as_glibc_does() {
        // Each checked against postcat 3.7.11 with TZ=UTC.
        let asctime = |secs| asctime_in(&chrono::Utc, secs);
        assert_eq!(asctime(0).unwrap(), "Thu Jan  1 00:00:00 1970\n");
        assert_eq!(
            asctime(253_402_300_800).unwrap(),
            "Sat Jan  1 00:00:00 10000\n"
        );
        assert_eq!(asctime(-62_167_219_200).unwrap(), "Sat Jan  1 00:00:00 0\n");
        assert_eq!(
            asctime(-62_198_755_200).unwrap(),
            "Fri Jan  1 00:00:00 -1\n"
        );
        assert_eq!(
            asctime(8_210_298_412_800).unwrap(),
            "Wed Jan  1 00:00:00 262144\n"
        );
        assert_eq!(
            asctime(67_767_976_233_316_800).unwrap(),
            "Sun Dec 29 12:00:00 2147483647\n"
        );
        assert_eq!(asctime(67_768_036_191_676_800), None);
        assert_eq!(asctime(i64::MAX), None);
        assert_eq!(asctime(i64::MIN), None);
    }

    #[test]
    fn sscanf_semantics() {
        assert_eq!(scan_two_longs(b"  372   285 1"), (Some(372), Some(285)));
        assert_eq!(scan_two_longs(b"12"), (Some(12), None));
        assert_eq!(scan_two_longs(b"x 12"), (None, None));
        assert_eq!(scan_two_longs(b"-1 -2"), (Some(-1), Some(-2)));
    }
}
