//! Every captured fixture has the shape it was captured for.
//!
//! `scripts/capture-fixtures` captures real Postfix queue files into
//! `fixtures/<shape>/` (see `fixtures/README.md`). This test is the one
//! place that checks them, with this crate's own reader and typed view:
//! the script runs it on a freshly captured tree (pointed at by the
//! environment variable `POSTHOLD_FIXTURES`) before swapping that tree in,
//! and `cargo test` runs it on the committed `fixtures/`.
//!
//! Common to every queue file: a `.meta` with `queue`, `mode`, `long_ids`
//! and `mtime`; a queue ID whose form matches `long_ids`; mode 0700 (0710
//! for `forcedexpire`); a `.defer` only for `deferred`; the logical record
//! stream starts with SIZE and holds SIZE, TIME, SENDER and END; a finished
//! SIZE; the typed view reads the envelope, finds it complete and reads
//! the content as lines; no pointer or padding records outside the milter
//! shapes. Then one check per shape (see [`check_shape`]).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use queue_format::queue_file::{
    Envelope, Line, Lines, RecipientState, SizeRecord, read_envelope, read_headers, split_nameval,
};
use queue_format::queue_id::{self, Form};
use queue_format::reader::{Mode, Reader, parse_pointer};
use queue_format::rec_type as rt;

/// The shapes in `SHAPES` of `scripts/capture-fixtures`, in its order
/// (the test `shape_list_is_the_scripts` keeps the two in step).
const SHAPES: &[&str] = &[
    "plain",
    "large",
    "longlines",
    "eightbit",
    "smtputf8",
    "rcpt200",
    "dsn",
    "emptybody",
    "folded",
    "nonewline",
    "multipart",
    "deliverat-future",
    "deliverat-past",
    "deliverat-twice",
    "deliverat-malformed",
    "forcedexpire",
    "deferred",
    "nullsender",
    "milter-configured",
    "milter-edited",
];

/// One message with a short queue ID and one with a long ID per shape.
const FILES_PER_SHAPE: usize = 2;

/// The `X-Deliver-At` dates the script sends (`FUTURE`, `PAST`).
const FUTURE: &str = "Thu, 01 Jan 2099 12:00:00 +0200";
const PAST: &str = "Tue, 02 Jan 2024 03:04:05 -0500";

/// `$POSTHOLD_FIXTURES` when set (capture-fixtures points it at the new
/// tree; a relative path is taken from the queue-format directory, where
/// cargo runs tests), else the committed `fixtures/`.
fn fixtures_dir() -> PathBuf {
    match std::env::var_os("POSTHOLD_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")),
    }
}

/// Failures, each naming `shape/ID` (or the shape) and what failed.
struct Check<'a> {
    at: String,
    fails: &'a mut Vec<String>,
}

impl Check<'_> {
    fn need(&mut self, ok: bool, what: impl Display) {
        if !ok {
            self.fails.push(format!("{}: {what}", self.at));
        }
    }

    fn fail(&mut self, what: impl Display) {
        self.need(false, what);
    }
}

/// One record of the logical stream.
struct Rec {
    offset: u64,
    rtype: u8,
    payload: Vec<u8>,
}

/// The logical stream as Postfix reads it (pointers followed, padding
/// skipped, up to END), plus the pointer and padding records met on the way.
#[derive(Default)]
struct Walk {
    recs: Vec<Rec>,
    /// Non-zero pointers: (offset of the `p` record, target).
    pointers: Vec<(u64, u64)>,
    /// Dummy pointers (`p` 0) and padding (`w`): (offset, type).
    pads: Vec<(u64, char)>,
}

impl Walk {
    fn types(&self) -> Vec<u8> {
        self.recs.iter().map(|r| r.rtype).collect()
    }

    fn payloads(&self, t: u8) -> Vec<&[u8]> {
        self.recs
            .iter()
            .filter(|r| r.rtype == t)
            .map(|r| r.payload.as_slice())
            .collect()
    }
}

/// Reads the logical stream with the crate's [`Reader`]: it hands over the
/// pointer and padding records, and [`Reader::goto_pointer`] follows each
/// pointer exactly as [`Mode::LOGICAL`] would.
fn walk(bytes: &[u8]) -> queue_format::Result<Walk> {
    let mode = Mode {
        follow_pointers: false,
        skip_padding: false,
        stop_at_end: true,
        ..Mode::LOGICAL
    };
    let mut r = Reader::with_mode(Cursor::new(bytes), mode)?;
    let mut buf = Vec::new();
    let mut w = Walk::default();
    while let Some(rec) = r.next(&mut buf)? {
        match rec.rtype {
            rt::PTR => {
                match parse_pointer(&buf) {
                    Some(0) => w.pads.push((rec.offset, 'p')),
                    Some(target) => w.pointers.push((rec.offset, target)),
                    None => {} // goto_pointer reports it
                }
                r.goto_pointer(&buf, rec.offset)?;
            }
            rt::DTXT => w.pads.push((rec.offset, 'w')),
            rtype => w.recs.push(Rec {
                offset: rec.offset,
                rtype,
                payload: buf.clone(),
            }),
        }
    }
    Ok(w)
}

/// (offset, type) of the stream [`Mode::LOGICAL`] gives.
fn logical(bytes: &[u8]) -> queue_format::Result<Vec<(u64, u8)>> {
    let mut r = Reader::new(Cursor::new(bytes))?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while let Some(rec) = r.next(&mut buf)? {
        out.push((rec.offset, rec.rtype));
    }
    Ok(out)
}

/// The typed view: envelope, content lines, headers.
struct Typed {
    env: Envelope,
    lines: Vec<Line>,
    headers: Vec<(String, String)>,
}

fn typed(bytes: &[u8]) -> Result<Typed, String> {
    let e = |e: queue_format::Error| e.to_string();
    let mut r = Reader::new(Cursor::new(bytes)).map_err(e)?;
    let env = read_envelope(&mut r).map_err(e)?;
    env.check_complete().map_err(e)?;
    let mesg_at = env.content_offset.ok_or("no content (M) record")?;
    let mut lines = Vec::new();
    let mut l = Lines::new(&mut r, mesg_at).map_err(e)?;
    while let Some(line) = l.next_line().map_err(e)? {
        lines.push(line);
    }
    let headers = read_headers(&mut r, mesg_at).map_err(e)?;
    Ok(Typed {
        env,
        lines,
        headers,
    })
}

fn read_meta(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn has_high_byte(p: &[u8]) -> bool {
    p.iter().any(|&b| b >= 0x80)
}

/// Checks one queue file; returns its ID form when the ID decodes.
fn check_file(shape: &str, dir: &Path, id: &str, fails: &mut Vec<String>) -> Option<Form> {
    let mut c = Check {
        at: format!("{shape}/{id}"),
        fails,
    };

    let form = match queue_id::decode(id) {
        Ok(d) => Some(d.form),
        Err(e) => {
            c.fail(format_args!("not a short or long queue ID: {e}"));
            None
        }
    };

    let meta = match read_meta(&dir.join(format!("{id}.meta"))) {
        Ok(m) => m,
        Err(e) => {
            c.fail(format_args!("cannot read {id}.meta: {e}"));
            return form;
        }
    };
    for key in ["queue", "mode", "long_ids", "mtime"] {
        c.need(meta.contains_key(key), format_args!("no {key}= in .meta"));
    }
    let meta_get = |k: &str| meta.get(k).map(String::as_str).unwrap_or("");
    c.need(
        meta_get("queue") == "hold",
        format_args!("queue={} in .meta, expected hold", meta_get("queue")),
    );
    let long_ids = meta_get("long_ids");
    match (long_ids, form) {
        ("yes", Some(f)) => c.need(f == Form::Long, "ID form does not match long_ids=yes"),
        ("no", Some(f)) => c.need(f == Form::Short, "ID form does not match long_ids=no"),
        ("yes" | "no", None) => {}
        (other, _) => c.fail(format_args!("long_ids={other:?} is neither yes nor no")),
    }
    let want_mode = if shape == "forcedexpire" {
        0o710
    } else {
        0o700
    };
    match u32::from_str_radix(meta_get("mode"), 8) {
        Ok(m) => c.need(
            m == want_mode,
            format_args!("mode {m:04o}, expected {want_mode:04o}"),
        ),
        Err(_) => c.fail(format_args!("mode={:?} is not octal", meta_get("mode"))),
    }
    let mtime: Option<i64> = meta_get("mtime").parse().ok();
    c.need(
        mtime.is_some(),
        format_args!("mtime={:?} is not a number", meta_get("mtime")),
    );
    let has_defer = dir.join(format!("{id}.defer")).is_file();
    c.need(
        has_defer == (shape == "deferred"),
        format_args!("defer log present={has_defer}"),
    );

    let bytes = match std::fs::read(dir.join(id)) {
        Ok(b) => b,
        Err(e) => {
            c.fail(format_args!("cannot read the queue file: {e}"));
            return form;
        }
    };
    let w = match walk(&bytes) {
        Ok(w) => w,
        Err(e) => {
            c.fail(format_args!("queue-format cannot read the records: {e}"));
            return form;
        }
    };
    // The walk is the crate's logical stream, nothing else.
    let walked: Vec<(u64, u8)> = w.recs.iter().map(|r| (r.offset, r.rtype)).collect();
    match logical(&bytes) {
        Ok(l) => c.need(
            l == walked,
            "the walk differs from the logical reader's stream",
        ),
        Err(e) => c.fail(format_args!("the logical reader fails: {e}")),
    }
    let types = w.types();
    c.need(
        types.first() == Some(&rt::SIZE),
        format_args!(
            "first record is {}, not C",
            types
                .first()
                .map_or("missing".to_string(), |&t| (t as char).to_string())
        ),
    );
    for t in [rt::SIZE, rt::TIME, rt::FROM, rt::END] {
        c.need(types.contains(&t), format_args!("no {} record", t as char));
    }
    let size = w
        .payloads(rt::SIZE)
        .first()
        .and_then(|p| SizeRecord::parse(p));
    match size {
        Some(s) => c.need(s.data_size != 0, "unfinished (zero SIZE record)"),
        None => c.fail("no well-formed SIZE record"),
    }
    let t = match typed(&bytes) {
        Ok(t) => Some(t),
        Err(e) => {
            c.fail(format_args!("typed view fails: {e}"));
            None
        }
    };
    if !shape.starts_with("milter") {
        c.need(
            w.pointers.is_empty() && w.pads.is_empty(),
            format_args!(
                "pointer or padding records without a milter: pointers {:?}, dummies/padding {:?}",
                w.pointers, w.pads
            ),
        );
    }

    check_shape(shape, &mut c, &bytes, &w, size, t.as_ref(), mtime);
    form
}

fn header_values<'t>(t: &'t Typed, name: &str) -> Vec<&'t str> {
    t.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The checks that make each shape what it is. Those for `emptybody`,
/// `folded`, `multipart` and the `deliverat-*` shapes are newer than the
/// rest (the Python checks they replace had none): they follow from what
/// the script sends. `plain` and `forcedexpire` (mode 0710) have only the
/// common checks. Checks on the typed view fail when the typed view failed
/// (already reported by the caller).
fn check_shape(
    shape: &str,
    c: &mut Check<'_>,
    bytes: &[u8],
    w: &Walk,
    size: Option<SizeRecord>,
    t: Option<&Typed>,
    mtime: Option<i64>,
) {
    let types = w.types();
    let deliver_at = |want: &[&str], c: &mut Check<'_>| match t {
        Some(t) => {
            let got = header_values(t, "X-Deliver-At");
            c.need(
                got == want,
                format_args!("X-Deliver-At headers {got:?}, expected {want:?}"),
            );
        }
        None => c.fail("no headers to check"),
    };
    match shape {
        // Only the common checks (mode 0710 for forcedexpire).
        "plain" | "forcedexpire" => {}
        "large" => c.need(
            bytes.len() > 5_000_000,
            format_args!("only {} bytes", bytes.len()),
        ),
        "longlines" => c.need(
            w.recs
                .iter()
                .any(|r| r.rtype == rt::CONT && r.payload.len() == 2048),
            "no 2048-byte L record",
        ),
        "eightbit" => c.need(
            w.recs
                .iter()
                .any(|r| r.rtype == rt::NORM && has_high_byte(&r.payload)),
            "no 8-bit text in an N record",
        ),
        "smtputf8" => match size {
            Some(s) => c.need(
                s.fields >= 6 && s.sendopts != 0,
                format_args!(
                    "SIZE sendopts is 0 or missing ({} fields, sendopts {})",
                    s.fields, s.sendopts
                ),
            ),
            None => c.fail("no SIZE record to check sendopts"),
        },
        "rcpt200" => {
            let n = types.iter().filter(|&&t| t == rt::RCPT).count();
            c.need(n == 200, format_args!("{n} R records, expected 200"));
            if let Some(t) = t {
                let todo = t
                    .env
                    .recipients
                    .iter()
                    .filter(|r| r.state == RecipientState::Todo)
                    .count();
                c.need(
                    todo == 200,
                    format_args!("typed view: {todo} recipients to do, expected 200"),
                );
            }
        }
        "dsn" => {
            let names: Vec<&[u8]> = w
                .payloads(rt::ATTR)
                .into_iter()
                .filter_map(|p| split_nameval(p).map(|(n, _)| n))
                .collect();
            for a in ["envelope_id", "ret_flags", "notify_flags", "dsn_orig_rcpt"] {
                c.need(
                    names.contains(&a.as_bytes()),
                    format_args!("no A {a}= attribute"),
                );
            }
        }
        "emptybody" => match t {
            Some(t) => c.need(
                !t.lines.is_empty() && t.lines.iter().all(|l| l.in_header),
                "content is not headers only (a separator or body line found)",
            ),
            None => c.fail("no content lines to check"),
        },
        "folded" => match t {
            Some(t) => {
                let subject = header_values(t, "Subject");
                c.need(
                    subject == ["HOLD folded subject continues on a second line and a third"],
                    format_args!("unfolded Subject is {subject:?}"),
                );
                let folded = header_values(t, "X-Folded");
                c.need(
                    folded == ["a b c"],
                    format_args!("unfolded X-Folded is {folded:?}"),
                );
            }
            None => c.fail("no headers to check"),
        },
        "nonewline" => c.need(
            w.recs.windows(2).any(|p| {
                p[0].rtype == rt::CONT && p[1].rtype == rt::NORM && p[1].payload.is_empty()
            }),
            "no L record followed by an empty N",
        ),
        "multipart" => match t {
            Some(t) => {
                let ct = header_values(t, "Content-Type");
                c.need(
                    ct.len() == 1 && ct[0].starts_with("multipart/mixed;"),
                    format_args!("Content-Type is {ct:?}"),
                );
                c.need(
                    t.lines
                        .iter()
                        .any(|l| !l.in_header && l.text == b"--=-=posthold-boundary=-=--"),
                    "no closing MIME boundary in the body",
                );
            }
            None => c.fail("no headers to check"),
        },
        "deliverat-future" => deliver_at(&[FUTURE], c),
        "deliverat-past" => deliver_at(&[PAST], c),
        "deliverat-twice" => deliver_at(&[FUTURE, PAST], c),
        "deliverat-malformed" => deliver_at(&["soonish, 32 Foo 20x6 25:61 +9999"], c),
        "nullsender" => {
            let s = w.payloads(rt::FROM);
            c.need(
                s == [b""],
                format_args!("sender records are {:?}", lossy(&s)),
            );
            if let Some(t) = t {
                c.need(
                    t.env.sender.as_deref() == Some(&b""[..]),
                    "typed view: sender is not the null sender",
                );
            }
        }
        // The script checked mtime > capture start + 60 s; the arrival
        // time (after the capture started) stands in for the start.
        "deferred" => match (t.and_then(|t| t.env.arrival), mtime) {
            (Some((arrival, _)), Some(m)) => c.need(
                m > arrival + 60,
                format_args!("mtime {m} not in the future (arrival {arrival})"),
            ),
            _ => c.fail("no arrival time or mtime to compare"),
        },
        "milter-configured" => {
            c.need(
                w.pointers.is_empty(),
                format_args!(
                    "non-zero pointers {:?} although the milter changed nothing",
                    w.pointers
                ),
            );
            let has = |ty: char| w.pads.iter().any(|&(_, t)| t == ty);
            c.need(
                has('p') && has('w'),
                format_args!("no dummy pointer and padding: {:?}", w.pads),
            );
        }
        "milter-edited" => {
            match w.recs.iter().find(|r| r.rtype == rt::END) {
                Some(end) => c.need(
                    w.pointers.iter().any(|&(_, target)| target > end.offset),
                    format_args!("no pointer past the E record at {}", end.offset),
                ),
                None => c.fail("no E record"),
            }
            c.need(types.contains(&rt::DRCP), "no cancelled recipient (/)");
            let norm: Vec<&[u8]> = w.payloads(rt::NORM);
            let has_line = |needle: &[u8]| {
                norm.iter()
                    .any(|p| p.windows(needle.len()).any(|x| x == needle))
            };
            c.need(
                has_line(b"X-Milter-Added: yes") && !has_line(b"X-Milter-Delete-Me"),
                "header edits missing",
            );
            c.need(has_line(b"Replacement body line 040"), "body not replaced");
            match t {
                Some(t) => c.need(
                    t.env.recipients.iter().any(|r| {
                        r.address == b"added@posthold.test" && r.state == RecipientState::Todo
                    }),
                    "added recipient missing",
                ),
                None => c.fail("no recipients to check"),
            }
        }
        other => c.fail(format_args!("no checks for shape {other:?}")),
    }
}

fn lossy(v: &[&[u8]]) -> Vec<String> {
    v.iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn names_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    v.sort();
    Ok(v)
}

#[test]
fn every_fixture_has_its_shape() {
    let root = fixtures_dir();
    let mut fails = Vec::new();
    let mut checked = 0;

    let dirs: Vec<String> = names_in(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .into_iter()
        .filter(|n| root.join(n).is_dir())
        .collect();
    for d in &dirs {
        if !SHAPES.contains(&d.as_str()) {
            fails.push(format!(
                "{d}: a directory for a shape scripts/capture-fixtures does not know"
            ));
        }
    }

    for &shape in SHAPES {
        let dir = root.join(shape);
        let names = match names_in(&dir) {
            Ok(n) => n,
            Err(e) => {
                fails.push(format!("{shape}: missing shape directory: {e}"));
                continue;
            }
        };
        let mut forms = Vec::new();
        let mut ids = Vec::new();
        for n in &names {
            if let Some(base) = n.strip_suffix(".meta")
                && !names.iter().any(|m| m == base)
            {
                fails.push(format!("{shape}/{n}: .meta without its queue file"));
            }
            if n.contains('.') {
                continue;
            }
            if !names.contains(&format!("{n}.meta")) {
                fails.push(format!("{shape}/{n}: queue file without .meta"));
                continue;
            }
            ids.push(n.as_str());
            forms.push(check_file(shape, &dir, n, &mut fails));
            checked += 1;
        }
        let short = forms.iter().filter(|f| **f == Some(Form::Short)).count();
        let long = forms.iter().filter(|f| **f == Some(Form::Long)).count();
        if ids.len() != FILES_PER_SHAPE || short != 1 || long != 1 {
            fails.push(format!(
                "{shape}: IDs {ids:?} are not one short and one long ({short} short, {long} long)"
            ));
        }
    }

    assert!(
        fails.is_empty(),
        "{} fixture check(s) failed in {}:\n{}",
        fails.len(),
        root.display(),
        fails.join("\n")
    );
    assert_eq!(
        checked,
        SHAPES.len() * FILES_PER_SHAPE,
        "queue files checked in {}",
        root.display()
    );
    assert_eq!(checked, 40, "20 shapes of 2 queue files each");
    println!("checked {checked} queue files in {}", root.display());
}

/// The shapes above are exactly those of `SHAPES` in the capture script.
#[test]
fn shape_list_is_the_scripts() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/capture-fixtures");
    let script = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = script.lines().skip_while(|l| !l.starts_with("SHAPES = ["));
    assert!(lines.next().is_some(), "{path}: no `SHAPES = [`");
    let names: Vec<&str> = lines
        .take_while(|l| !l.starts_with(']'))
        .filter_map(|l| l.trim().strip_prefix("(\"")?.split('"').next())
        .collect();
    assert_eq!(names, SHAPES, "{path}: SHAPES differs from this test's");
}
