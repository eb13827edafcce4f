//! `posthold cat`: queue file contents, byte-identical to Postfix 3.7's
//! `postcat` with the same options and arguments.
//!
//! This module reproduces postcat's state machine (envelope, header, body),
//! its content skips driven by the SIZE record, its markers and record
//! labels, and its asctime(3) times in the local time zone. It reads
//! through [`queue_format::reader::Reader`], so pointer chains that jump past
//! the END record are followed exactly as Postfix follows them.
//!
//! Where postcat 3.7 never terminates (`-e` on an unfinished file, whose
//! zeroed SIZE record sends its content skip back to offset 0), posthold
//! stops with an error instead: every seek it makes besides pointer jumps
//! goes forward, and pointer jumps are bounded by the reverse-jump limit.
//!
//! Errors: a file that cannot be opened or read is fatal (exit 1), as in
//! postcat; a file that does not start like a queue file gets a warning
//! and is skipped.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, Write};

use chrono::{Local, TimeZone};
use queue_format::queue_file::{atol, is_header, split_nameval};
use queue_format::reader::{Mode, Reader};
use queue_format::rec_type as rt;

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Env,
    Header,
    Body,
}

/// Formats `secs` as C's `asctime(localtime(&secs))`, newline included.
pub fn asctime(secs: i64) -> String {
    match Local.timestamp_opt(secs, 0).single() {
        Some(t) => format!("{}\n", t.format("%a %b %e %H:%M:%S %Y")),
        None => "(null)".to_string(),
    }
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

/// Output sink that records warnings separately from stdout.
pub struct Sink<'a> {
    out: &'a mut dyn Write,
    warn: &'a mut dyn FnMut(String),
}

impl<'a> Sink<'a> {
    /// Writes output to `out` and warnings to `warn`.
    pub fn new(out: &'a mut dyn Write, warn: &'a mut dyn FnMut(String)) -> Sink<'a> {
        Sink { out, warn }
    }
}

/// Output with postcat's flush points. postcat flushes after every record
/// and marker it prints, but not after the opening ENVELOPE marker; a fatal
/// error exits without flushing, so that marker alone is lost when the first
/// record is already unreadable. `pending` holds it until the next output.
struct Out<'a> {
    inner: &'a mut dyn Write,
    pending: Vec<u8>,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Fatal> {
        let err = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
        if !self.pending.is_empty() {
            self.inner.write_all(&self.pending).map_err(err)?;
            self.pending.clear();
        }
        self.inner.write_all(bytes).map_err(err)
    }
}

fn w(out: &mut Out<'_>, bytes: &[u8]) -> Result<(), Fatal> {
    out.put(bytes)
}

/// Prints one queue file. `path` is the name printed in markers.
pub fn postcat<R: Read + Seek>(
    input: R,
    path: &str,
    opts: Options,
    sink: &mut Sink<'_>,
) -> Result<(), Fatal> {
    let opts = opts.normalized();
    let print_text = opts.header || opts.body;
    let mode = if opts.verbose {
        Mode::PHYSICAL
    } else {
        Mode::LOGICAL
    };
    let fatal = |e: queue_format::Error| Fatal::runtime(format!("{path}: {e}"));
    let mut rd = Reader::with_mode(input, mode).map_err(fatal)?;
    let mut out_buf = Out {
        inner: &mut *sink.out,
        pending: Vec::new(),
    };
    let out = &mut out_buf;
    if opts.start_offset > 0 {
        if opts.start_offset > rd.len() {
            return Err(Fatal::runtime(format!(
                "{path}: skip {} bytes failed after {}",
                opts.start_offset,
                rd.len()
            )));
        }
        rd.seek(opts.start_offset).map_err(fatal)?;
    } else if let Some(ch) = rd.peek_byte().map_err(fatal)?
        && !rt::ENVELOPE.contains(&ch)
    {
        (sink.warn)(format!("{path}: input is not a valid queue file"));
        return Ok(());
    }
    if opts.start_offset == 0 && opts.envelope {
        out.pending = format!("*** ENVELOPE RECORDS {path} ***\n").into_bytes();
    }
    let mut state = State::Env;
    let mut do_print = opts.envelope;
    let mut prev_type: u8 = 0;
    let (mut data_offset, mut data_size): (i64, i64) = (-1, -1);
    let mut buf = Vec::new();

    let prefix = |out: &mut Out<'_>, offset: u64, t: u8| -> Result<(), Fatal> {
        if opts.offsets {
            w(out, format!("{offset:>9} ").as_bytes())?;
        }
        if opts.decimal {
            w(out, format!("{t:>3} ").as_bytes())?;
        }
        Ok(())
    };
    let marker = |out: &mut Out<'_>, offset: u64, t: u8, text: &str| -> Result<(), Fatal> {
        prefix(out, offset, t)?;
        w(out, format!("*** {text} {path} ***\n").as_bytes())
    };
    // Every seek besides pointer jumps must go forward: that, and the
    // reader's reverse-jump limit, is what guarantees termination.
    let forward_seek = |rd: &mut Reader<R>, target: i64, why: &str| -> Result<(), Fatal> {
        let here = rd.position();
        if target < 0 || (target as u64) <= here.saturating_sub(2) {
            return Err(Fatal::runtime(format!(
                "{path}: {why}: size record points back to offset {target} (file not finished?)"
            )));
        }
        rd.seek(target as u64)
            .map_err(|e| Fatal::runtime(format!("{path}: {e}")))
    };

    loop {
        let offset = rd.position();
        let rec = match rd.next(&mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                (sink.warn)(format!("{path}: {e}"));
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
                    forward_seek(&mut rd, data_offset + data_size, "skip body")?;
                }
            }
        } else if t == rt::MESG {
            if state != State::Env {
                (sink.warn)(format!("{path}: out-of-order message content marker"));
            }
            if opts.envelope {
                marker(out, offset, t, "MESSAGE CONTENTS")?;
            }
            if !print_text && data_offset >= 0 && data_size >= 0 {
                forward_seek(&mut rd, data_offset + data_size, "skip content")?;
            }
            state = State::Header;
            do_print = opts.header;
            continue;
        } else if t == rt::XTRA {
            if state != State::Header && state != State::Body {
                (sink.warn)(format!("{path}: out-of-order extracted segment marker"));
            }
            if do_print && prev_type == rt::CONT {
                w(out, b"\n")?;
            }
            if opts.envelope {
                marker(out, offset, t, "HEADER EXTRACTED")?;
            }
            state = State::Env;
            do_print = opts.envelope;
            if !do_print {
                break;
            }
            continue;
        } else if t == rt::END {
            if state != State::Env {
                (sink.warn)(format!("{path}: out-of-order message end marker"));
            }
            if opts.envelope {
                marker(out, offset, t, "MESSAGE FILE END")?;
            }
            if opts.raw {
                continue;
            }
            break;
        } else if t == rt::PTR {
            // Reached only with -v: without it the reader follows pointers.
            if do_print {
                prefix(out, offset, t)?;
                w(out, format!("{}: ", rt::name(t)).as_bytes())?;
                w(out, cstr(&buf))?;
                w(out, b"\n")?;
            }
            if !opts.raw
                && let Err(e) = rd.goto_pointer(&buf, rec.offset)
            {
                (sink.warn)(format!("{path}: {e}"));
                return Err(Fatal::runtime(
                    "bad pointer record, or input is not seekable",
                ));
            }
            continue;
        } else if t == rt::SIZE {
            if do_print {
                prefix(out, offset, t)?;
                w(out, format!("{}: ", rt::name(t)).as_bytes())?;
                w(out, cstr(&buf))?;
                w(out, b"\n")?;
            }
            if data_size >= 0 || data_offset >= 0 {
                (sink.warn)("file contains multiple size records".to_string());
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
                    (sink.warn)(format!("invalid size record: {shown}"));
                }
                if !opts.envelope {
                    if data_offset < 0 {
                        return Err(Fatal::runtime(format!(
                            "{path}: seek error: invalid size record"
                        )));
                    }
                    rd.seek(data_offset as u64)
                        .map_err(|e| Fatal::runtime(format!("{path}: {e}")))?;
                    state = State::Header;
                    do_print = opts.header;
                }
            }
            continue;
        }

        if !do_print {
            continue;
        }
        prefix(out, offset, t)?;
        match t {
            rt::TIME | rt::WARN => {
                let secs = atol(&buf);
                w(
                    out,
                    format!("{}: {}", rt::name(t), asctime(secs)).as_bytes(),
                )?;
            }
            rt::CONT => {
                if state == State::Env {
                    w(out, format!("{}: ", rt::name(t)).as_bytes())?;
                } else if opts.verbose {
                    w(out, b"unterminated_text: ")?;
                }
                w(out, &buf)?;
                if state == State::Env || opts.verbose || opts.offsets {
                    t = 0;
                    w(out, b"\n")?;
                }
            }
            rt::NORM => {
                if opts.verbose {
                    w(out, b"regular_text: ")?;
                }
                w(out, &buf)?;
                w(out, b"\n")?;
            }
            rt::DTXT => {
                w(out, b"padding: ")?;
                w(out, &buf)?;
                w(out, b"\n")?;
            }
            rt::ATTR => match split_nameval(cstr(&buf)) {
                None => {
                    let shown: String = String::from_utf8_lossy(cstr(&buf))
                        .chars()
                        .take(100)
                        .collect();
                    (sink.warn)(format!("{path}: malformed attribute: {shown}"));
                }
                Some((name, value)) if name == b"create_time" => {
                    w(
                        out,
                        format!("create_time: {}", asctime(atol(value))).as_bytes(),
                    )?;
                }
                Some((name, value)) => {
                    w(out, b"named_attribute: ")?;
                    w(out, name)?;
                    w(out, b"=")?;
                    w(out, value)?;
                    w(out, b"\n")?;
                }
            },
            _ => {
                w(out, format!("{}: ", rt::name(t)).as_bytes())?;
                w(out, cstr(&buf))?;
                w(out, b"\n")?;
            }
        }
        prev_type = t;
    }
    out.put(b"")
}

/// Runs `posthold cat` over files (or queue IDs with `search_queue`),
/// writing to `out`. Warnings go to stderr, as postcat's do.
pub fn run(
    args: &[String],
    names: Names,
    opts: Options,
    config: impl FnOnce() -> Result<Config, Fatal>,
    out: &mut dyn Write,
) -> Result<(), Fatal> {
    let mut warn = |m: String| eprintln!("posthold: warning: {m}");
    let mut sink = Sink::new(out, &mut warn);
    if args.is_empty() {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Fatal::runtime(format!("read stdin: {e}")))?;
        return postcat(Cursor::new(data), "stdin", opts, &mut sink);
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
            for q in POSTCAT_QUEUES {
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
            postcat(BufReader::new(f), &rel, opts, &mut sink)?;
        }
        return Ok(());
    }
    for name in args {
        let f = File::open(name).map_err(|e| Fatal::runtime(format!("open {name}: {e}")))?;
        postcat(BufReader::new(f), name, opts, &mut sink)?;
    }
    Ok(())
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
    fn sscanf_semantics() {
        assert_eq!(scan_two_longs(b"  372   285 1"), (Some(372), Some(285)));
        assert_eq!(scan_two_longs(b"12"), (Some(12), None));
        assert_eq!(scan_two_longs(b"x 12"), (None, None));
        assert_eq!(scan_two_longs(b"-1 -2"), (Some(-1), Some(-2)));
    }
}
