//! `posthold cat` against live `postcat` on damaged copies of every fixture.
//!
//! Each fixture is mutated deterministically (no clock, no OS randomness):
//! a type byte set to 0 or to another type, bit flips and byte overwrites,
//! truncations, broken record lengths (including five-byte ones), pointer
//! values that are non-numeric, negative, past the end, backward, into
//! themselves or after a NUL, SIZE fields that skip backward, past the end
//! or nowhere, and a changed first byte. Every mutant runs through postcat
//! and posthold with option sets the fixture tests use, rotating so that
//! each set is used about equally; a few cases read standard input from a
//! redirected file and from a pipe, and a few runs name several files.
//!
//! Verdicts, per case:
//! * postcat finished: identical stdout bytes, and both succeed or both fail;
//! * postcat crashed on a signal (3.7 passes a null string to printf for a
//!   time whose year does not fit an int): posthold fails, identical stdout;
//! * postcat did not finish (3.7 loops forever on some inputs: timeout, or
//!   runaway output): skipped;
//! * always: posthold finishes in time, exits with a status (no signal), and
//!   does not panic.
//!
//! Besides the mutants, a fixed list of hand-made inputs covers each
//! difference found so far (type 0, a fifth length byte, NUL in a pointer,
//! an empty file, an `L` line pending at `X`, years past 9999 and times
//! postcat cannot print, `-s` past the end, a backward content skip).
//!
//! Size: about 430 mutants (13 per fixture, 11 without pointer records, 2
//! for each 5 MB `large` one) times 2 option sets, about 50 hand-made cases
//! and 2 stdin cases per shape: roughly 950 pairs of runs. postcat sleeps
//! one second before each fatal exit, so the cases go through a pool of
//! worker threads; a Python model of this test against a release build ran
//! in 18 s; with a debug build expect 30 to 50 s on 2 cores.
//! `POSTHOLD_CAT_DIFF_SCALE=N` takes N times as many mutants per kind (a
//! longer soak); `POSTHOLD_CAT_DIFF_SEED` changes the choice of mutants.

use std::io::{Cursor, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use queue_format::reader::{Mode, Reader};
use queue_format::rec_type as rt;

use crate::common::*;

/// The option sets of `tests/fixtures.rs` (the five stored references and
/// the live combinations).
fn option_sets() -> Vec<&'static [&'static str]> {
    let stored: [&'static [&'static str]; 5] = [&[], &["-e"], &["-h"], &["-b"], &["-v", "-o"]];
    stored
        .into_iter()
        .chain(POSTCAT_COMBOS.iter().copied())
        .collect()
}

/// Option sets per mutant.
const SETS_PER_MUTANT: usize = 2;
/// Concurrent cases (each runs postcat, then posthold). Most postcat runs
/// that fail spend their time sleeping, so this can exceed the core count.
const WORKERS: usize = 24;
/// postcat gets this long; longer means it loops (a skipped case).
const POSTCAT_LIMIT: Duration = Duration::from_secs(10);
/// posthold must finish within this, even on a loaded machine.
const POSTHOLD_LIMIT: Duration = Duration::from_secs(30);
/// More stdout than this: a runaway loop (the largest real output, `-v -o`
/// on the 5 MB fixture, is under 7 MB).
const OUTPUT_CAP: usize = 16 << 20;

/// xorshift64: deterministic choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One record as postcat reaches it (pointers followed, padding kept).
#[derive(Clone, Copy)]
struct RecInfo {
    offset: usize,
    rtype: u8,
    /// Type byte plus length bytes.
    head: usize,
    len: usize,
}

/// Records in the order Postfix reads them, up to END or the first damage.
fn records(bytes: &[u8]) -> Vec<RecInfo> {
    let mut out = Vec::new();
    let Ok(mut r) = Reader::with_mode(Cursor::new(bytes), Mode::PHYSICAL) else {
        return out;
    };
    let mut buf = Vec::new();
    while out.len() < 20_000 {
        let Ok(Some(rec)) = r.next(&mut buf) else {
            break;
        };
        let offset = rec.offset as usize;
        let end = r.position() as usize;
        out.push(RecInfo {
            offset,
            rtype: rec.rtype,
            head: end - offset - buf.len(),
            len: buf.len(),
        });
        match rec.rtype {
            rt::END => break,
            rt::PTR if r.goto_pointer(&buf, rec.offset).is_err() => break,
            _ => {}
        }
    }
    out
}

/// The first record and at most about `max` others, evenly spread (the
/// 5 MB fixtures have tens of thousands of records).
fn thin(recs: Vec<RecInfo>, max: usize) -> Vec<RecInfo> {
    let step = (recs.len() / max.max(1)).max(1);
    recs.iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || i % step == 0)
        .map(|(_, r)| *r)
        .collect()
}

#[derive(Clone)]
enum Edit {
    Set(usize, u8),
    Xor(usize, u8),
    /// Overwrite from an offset (clipped at the end of the file).
    Splice(usize, Vec<u8>),
    Truncate(usize),
}

#[derive(Clone)]
struct Spec {
    kind: &'static str,
    label: String,
    edits: Vec<Edit>,
}

fn apply(bytes: &[u8], spec: &Spec) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in &spec.edits {
        match e {
            Edit::Set(at, v) if *at < b.len() => b[*at] = *v,
            Edit::Xor(at, v) if *at < b.len() => b[*at] ^= *v,
            Edit::Splice(at, v) => {
                for (i, x) in v.iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + i) {
                        *slot = *x;
                    }
                }
            }
            Edit::Truncate(at) => b.truncate(*at),
            _ => {}
        }
    }
    b
}

/// `value` right-aligned in `width` bytes (Postfix's `%15ld` style), or
/// `None` when it does not fit.
fn field(value: &[u8], width: usize) -> Option<Vec<u8>> {
    (value.len() <= width).then(|| {
        let mut v = vec![b' '; width - value.len()];
        v.extend_from_slice(value);
        v
    })
}

fn spec(kind: &'static str, label: String, edits: Vec<Edit>) -> Spec {
    Spec { kind, label, edits }
}

/// Every candidate mutation of one file, grouped by kind.
fn candidates(bytes: &[u8], recs: &[RecInfo], rng: &mut Rng) -> Vec<Vec<Spec>> {
    let n = bytes.len();
    let m_offset = recs.iter().find(|r| r.rtype == rt::MESG).map(|r| r.offset);
    let mut kinds: Vec<Vec<Spec>> = Vec::new();

    // A type byte of 0 (postcat: unknown_record_type, and goes on).
    kinds.push(
        recs.iter()
            .skip(1)
            .map(|r| {
                spec(
                    "type0",
                    format!("type 0 at {}", r.offset),
                    vec![Edit::Set(r.offset, 0)],
                )
            })
            .collect(),
    );
    // A type valid somewhere, unexpected here; or unknown.
    let mut v = Vec::new();
    for r in recs.iter().skip(1) {
        for &t in b"CTMXENLpwAK/Z\x01\x80" {
            if t != r.rtype {
                v.push(spec(
                    "retype",
                    format!("type {t} at {}", r.offset),
                    vec![Edit::Set(r.offset, t)],
                ));
            }
        }
    }
    kinds.push(v);
    // Bit flips and byte overwrites anywhere.
    kinds.push(
        (0..64)
            .map(|_| {
                let at = rng.below(n);
                let bit = 1u8 << rng.below(8);
                spec(
                    "flip",
                    format!("xor {bit:#x} at {at}"),
                    vec![Edit::Xor(at, bit)],
                )
            })
            .collect(),
    );
    kinds.push(
        (0..64)
            .map(|_| {
                let at = rng.below(n);
                let v = [0x00, 0xff, 0x80, b'p', b'0', b' '][rng.below(6)];
                spec(
                    "byte",
                    format!("byte {v:#x} at {at}"),
                    vec![Edit::Set(at, v)],
                )
            })
            .collect(),
    );
    // Truncations: empty, at and inside records, one byte short.
    let mut v = vec![
        spec("trunc", "empty".into(), vec![Edit::Truncate(0)]),
        spec("trunc", "1 byte".into(), vec![Edit::Truncate(1)]),
        spec(
            "trunc",
            format!("at {}", n - 1),
            vec![Edit::Truncate(n.saturating_sub(1))],
        ),
    ];
    for r in recs.iter().skip(1) {
        for at in [r.offset, r.offset + 1, r.offset + r.head + r.len / 2] {
            if at < n {
                v.push(spec("trunc", format!("at {at}"), vec![Edit::Truncate(at)]));
            }
        }
    }
    kinds.push(v);
    // Record lengths: too long, continued, zero, and five-byte forms
    // (Postfix 3.7.11 reads five bytes in C int arithmetic).
    let mut v = Vec::new();
    for r in recs.iter() {
        let at = r.offset + 1;
        for b in [0x7f, 0xff, 0x00] {
            v.push(spec(
                "length",
                format!("length byte {b:#x} at {at}"),
                vec![Edit::Set(at, b)],
            ));
        }
        if r.head == 2 && r.len >= 4 {
            let low = bytes[at] | 0x80;
            for fifth in [0x00, 0x10, 0x08, 0x07, 0x80] {
                v.push(spec(
                    "length",
                    format!("five length bytes, fifth {fifth:#x}, at {at}"),
                    vec![Edit::Splice(at, vec![low, 0x80, 0x80, 0x80, fifth])],
                ));
            }
        }
    }
    kinds.push(v);
    // Pointer values (only files written with a Milter have pointers).
    let mut v = Vec::new();
    for r in recs.iter().filter(|r| r.rtype == rt::PTR && r.len > 0) {
        let at = r.offset + r.head;
        let mut values: Vec<Vec<u8>> = vec![
            b"x".to_vec(),
            b"-1".to_vec(),
            b"99999999".to_vec(),
            (n + 10).to_string().into_bytes(),
            r.offset.to_string().into_bytes(),
            (r.offset + 1).to_string().into_bytes(),
            b"97".to_vec(),
            b"0".to_vec(),
            b"999999999999999".to_vec(),
        ];
        if let Some(m) = m_offset {
            values.push(m.to_string().into_bytes());
        }
        for value in values {
            if let Some(f) = field(&value, r.len) {
                v.push(spec(
                    "pointer",
                    format!(
                        "pointer at {} = {}",
                        r.offset,
                        String::from_utf8_lossy(&value)
                    ),
                    vec![Edit::Splice(at, f)],
                ));
            }
        }
        // A NUL first (postcat reads an empty C string: a dummy), and a
        // NUL after the digits (postcat reads only the digits).
        v.push(spec(
            "pointer",
            format!("NUL-first pointer at {}", r.offset),
            vec![Edit::Set(at, 0)],
        ));
        if let Some(mut f) = field(b"97", r.len.max(3) - 1) {
            f.push(0);
            if f.len() <= r.len {
                v.push(spec(
                    "pointer",
                    format!("pointer 97 then NUL at {}", r.offset),
                    vec![Edit::Splice(at + r.len - f.len(), f)],
                ));
            }
        }
    }
    kinds.push(v);
    // SIZE fields: data_size at payload 0..15, data_offset at 16..31.
    let mut v = Vec::new();
    if let Some(c) = recs
        .first()
        .filter(|r| r.rtype == rt::SIZE && r.offset == 0 && r.len >= 31)
    {
        let p = c.head;
        for size in ["0", "-5", "1", "999999999999999"] {
            v.push(spec(
                "size",
                format!("data_size {size}"),
                vec![Edit::Splice(p, field(size.as_bytes(), 15).expect("fits"))],
            ));
        }
        let mut offsets = vec![
            "0".to_string(),
            "1".into(),
            (n + 100).to_string(),
            "abc".into(),
        ];
        if let Some(m) = m_offset {
            offsets.push(m.saturating_sub(40).to_string());
            offsets.push((m + 2).to_string());
        }
        for off in offsets {
            v.push(spec(
                "size",
                format!("data_offset {off}"),
                vec![Edit::Splice(
                    p + 16,
                    field(off.as_bytes(), 15).expect("fits"),
                )],
            ));
        }
        let zero = format!(
            "{:>15} {:>15} {:>15} {:>15} {:>15} {:>15}",
            0, 0, 0, 0, 0, 0
        );
        v.push(spec(
            "size",
            "all-zero SIZE (unfinished file)".into(),
            vec![Edit::Splice(p, zero.into_bytes())],
        ));
    }
    kinds.push(v);
    // The first byte: 0 passes postcat's check (strchr finds the NUL).
    kinds.push(
        [0u8, b'T', b'M', b'E', b'Z']
            .into_iter()
            .map(|b| spec("first", format!("first byte {b:#x}"), vec![Edit::Set(0, b)]))
            .collect(),
    );
    kinds
}

/// How many mutants of each kind, in `candidates` order.
const PER_KIND: &[usize] = &[2, 1, 2, 1, 2, 1, 2, 1, 1];

fn choose(kinds: Vec<Vec<Spec>>, per_kind: &[usize], scale: usize, rng: &mut Rng) -> Vec<Spec> {
    let mut out = Vec::new();
    for (mut c, &k) in kinds.into_iter().zip(per_kind) {
        for _ in 0..k * scale {
            if c.is_empty() {
                break;
            }
            let i = rng.below(c.len());
            out.push(c.swap_remove(i));
        }
    }
    out
}

enum Input {
    /// File names as arguments.
    Args(Vec<String>),
    /// Standard input redirected from the file (seekable).
    StdinFile(PathBuf),
    /// Standard input from a pipe fed with the file's bytes.
    StdinPipe(Vec<u8>),
}

struct Case {
    what: String,
    dir: PathBuf,
    input: Input,
    opts: &'static [&'static str],
}

struct Ran {
    /// `None`: killed by us.
    status: Option<ExitStatus>,
    /// Killed at the time limit (otherwise, if killed: more than
    /// [`OUTPUT_CAP`] bytes of stdout, a runaway loop).
    timed_out: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn drain(mut r: impl Read, cap: usize, over: &AtomicBool) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => return kept,
            Ok(k) => {
                if kept.len() + k > cap {
                    over.store(true, Ordering::Relaxed);
                } else {
                    kept.extend_from_slice(&chunk[..k]);
                }
            }
        }
    }
}

/// Runs `c` on `input` with a time limit and an output cap, killing it
/// (our own child, by its handle) when either is exceeded.
fn run_limited(mut c: Command, input: &Input, limit: Duration) -> Ran {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    match input {
        Input::Args(names) => {
            c.args(names).stdin(Stdio::null());
        }
        Input::StdinFile(p) => {
            c.stdin(std::fs::File::open(p).expect("open mutant"));
        }
        Input::StdinPipe(_) => {
            c.stdin(Stdio::piped());
        }
    }
    let mut child = c.spawn().expect("spawn");
    let over = AtomicBool::new(false);
    std::thread::scope(|s| {
        if let (Input::StdinPipe(bytes), Some(mut w)) = (input, child.stdin.take()) {
            // postcat may stop reading early: ignore EPIPE.
            s.spawn(move || {
                let _ = w.write_all(bytes);
            });
        }
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let over = &over;
        let t_out = s.spawn(move || drain(out, OUTPUT_CAP, over));
        let t_err = s.spawn(move || drain(err, 1 << 20, over));
        let deadline = Instant::now() + limit;
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break Some(st);
            }
            timed_out = Instant::now() >= deadline;
            if timed_out || over.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = t_out.join().expect("stdout reader");
        let stderr = t_err.join().expect("stderr reader");
        let over_cap = over.load(Ordering::Relaxed);
        Ran {
            status: if over_cap { None } else { status },
            timed_out,
            stdout,
            stderr,
        }
    })
}

enum Verdict {
    Checked { failed: bool },
    PostcatCrashed,
    PostcatUnfinished,
    Mismatch(String),
}

fn judge(case: &Case, cfg: &Path) -> Verdict {
    let mut pc = Command::new("/usr/sbin/postcat");
    pc.env("TZ", "UTC")
        .current_dir(&case.dir)
        .arg("-c")
        .arg(cfg)
        .args(case.opts);
    let want = run_limited(pc, &case.input, POSTCAT_LIMIT);
    let mut ph = posthold();
    ph.current_dir(&case.dir).arg("cat").args(case.opts);
    let got = run_limited(ph, &case.input, POSTHOLD_LIMIT);

    let what = format!("{} {:?}", case.what, case.opts);
    let err = String::from_utf8_lossy(&got.stderr);
    if got.timed_out {
        return Verdict::Mismatch(format!(
            "{what}: posthold did not finish in {POSTHOLD_LIMIT:?}"
        ));
    }
    if err.contains("panicked") {
        return Verdict::Mismatch(format!("{what}: posthold panicked: {err}"));
    }
    let Some(want_status) = want.status else {
        // postcat loops (or prints more than the cap before it stops):
        // nothing to compare, but posthold must still have behaved.
        return match got.status {
            Some(st) if st.code().is_none() => Verdict::Mismatch(format!(
                "{what}: posthold killed by signal {:?}",
                st.signal()
            )),
            _ => Verdict::PostcatUnfinished,
        };
    };
    let Some(got_status) = got.status else {
        return Verdict::Mismatch(format!(
            "{what}: posthold printed more than {OUTPUT_CAP} bytes, postcat {} and stopped",
            want.stdout.len()
        ));
    };
    if got_status.code().is_none() {
        return Verdict::Mismatch(format!(
            "{what}: posthold killed by signal {:?}",
            got_status.signal()
        ));
    }
    let crashed = want_status.signal().is_some();
    let same_outcome = if crashed {
        !got_status.success()
    } else {
        got_status.success() == want_status.success()
    };
    if !same_outcome || got.stdout != want.stdout {
        return Verdict::Mismatch(format!(
            "{what}: exit {:?} vs postcat {:?} (signal {:?}); {}\n  posthold stderr: {}\n  postcat stderr: {}",
            got_status.code(),
            want_status.code(),
            want_status.signal(),
            first_difference(&got.stdout, &want.stdout),
            err.trim_end(),
            String::from_utf8_lossy(&want.stderr).trim_end(),
        ));
    }
    if crashed {
        Verdict::PostcatCrashed
    } else {
        Verdict::Checked {
            failed: !want_status.success(),
        }
    }
}

const E_VO: &[&[&str]] = &[&["-e"], &["-v", "-o"]];
const PLAIN_V: &[&[&str]] = &[&[], &["-v"], &["-v", "-r"]];

/// Hand-made inputs, one group per difference found (each checked against
/// postcat 3.7.11 while the fix was designed).
/// A hand-made case: its name, the file's bytes, the option sets to run.
type Targeted = (&'static str, Vec<u8>, &'static [&'static [&'static str]]);

fn targeted(plain: &[u8]) -> Vec<Targeted> {
    use queue_format::record::put_record as rec;
    let head = || {
        let mut f = Vec::new();
        rec(&mut f, b'T', b"1795424399 0");
        rec(&mut f, b'S', b"a@b");
        f
    };
    let mut out: Vec<Targeted> = Vec::new();
    // Nothing flushes postcat's output at exit: no ENVELOPE marker.
    out.push(("empty file", Vec::new(), &[&[], &["-e"], &["-v", "-o"]]));
    // The newline ending an L line at X is not flushed without -e.
    let mut f = head();
    rec(&mut f, b'M', b"");
    rec(&mut f, b'N', b"Subject: x");
    rec(&mut f, b'N', b"");
    rec(&mut f, b'L', b"body");
    rec(&mut f, b'X', b"");
    rec(&mut f, b'E', b"");
    out.push((
        "L pending at X",
        f,
        &[&["-b"], &["-h", "-b"], &["-b", "-o"], &[], &["-e", "-b"]],
    ));
    // asctime(): %d years; a year beyond an int crashes postcat.
    for secs in [
        "253402300800 0",
        "-62167219200 0",
        "-62198755200 0",
        "8210298412800 0",
        "67767976233316800",
        "67768036191676800",
        "99999999999999999999",
    ] {
        let mut f = Vec::new();
        rec(&mut f, b'T', secs.as_bytes());
        rec(&mut f, b'W', secs.as_bytes());
        rec(&mut f, b'A', format!("create_time={secs}").as_bytes());
        rec(&mut f, b'E', b"");
        out.push(("times", f, E_VO));
    }
    // A fifth length byte, read in C int arithmetic by 3.7.11.
    for fifth in [0x00u8, 0x10, 0x08, 0x07, 0x80] {
        let mut f = head();
        f.extend_from_slice(&[b'R', 0x81, 0x80, 0x80, 0x80, fifth, b'r']);
        rec(&mut f, b'E', b"");
        out.push(("five length bytes", f, E_VO));
    }
    // Pointer values are C strings and off_t.
    let values: [&[u8]; 6] = [
        b"\0 12",
        b"12\0zz",
        b"99999999999999999999",
        b"9223372036854775807",
        b"",
        b"   ",
    ];
    for p in values {
        let mut f = head();
        rec(&mut f, b'p', p);
        rec(&mut f, b'E', b"");
        out.push(("pointer value", f, PLAIN_V));
    }
    // Type 0: first (strchr() accepts it) and in the middle.
    let mut f = vec![0u8, 3, b'a', 0, b'c'];
    f.extend_from_slice(&head());
    rec(&mut f, b'E', b"");
    out.push(("type 0 first", f, &[&["-e"], &["-r"], &["-d"]]));
    let mut f = head();
    rec(&mut f, 0, b"x\0y");
    rec(&mut f, b'E', b"");
    out.push(("type 0 inside", f, &[&[], &["-v", "-o", "-d"]]));
    // -s: a file is seeked (past the end is no error).
    out.push((
        "plain with -s",
        plain.to_vec(),
        &[
            &["-s", "1"],
            &["-s", "98", "-e"],
            &["-s", "100000"],
            &["-s", "100000", "-e"],
        ],
    ));
    // SIZE fields that skip backward (postcat finishes) or overflow.
    if plain.len() > 40 && plain[0] == rt::SIZE {
        let mut f = plain.to_vec();
        f[2..17].copy_from_slice(format!("{:>15}", 0).as_bytes());
        out.push((
            "backward content skip",
            f,
            &[&["-e", "-h"], &["-e"], &["-h"]],
        ));
        let mut f = plain.to_vec();
        f[2..33].copy_from_slice(b"9223372036854775807 92233720368");
        out.push((
            "overflowing content skip",
            f,
            &[&["-e"], &["-e", "-h"], &["-h"]],
        ));
    }
    out
}

/// A file whose pointers make `k - 1` reverse jumps, then reach END: fine
/// once, but given twice in a row postcat counts both passes against its
/// limit of 10,000.
fn reverse_chain(k: usize) -> Vec<u8> {
    use queue_format::record::put_record as rec;
    let ptr = |f: &mut Vec<u8>, v: usize| rec(f, b'p', format!("{v:15}").as_bytes());
    let mut f = Vec::new();
    rec(&mut f, b'T', b"1795424399 0");
    rec(&mut f, b'S', b"a@b");
    let base = f.len() + 17; // after the first pointer (2 + 15 bytes)
    let end = base + k * 17;
    ptr(&mut f, base + (k - 1) * 17);
    for i in 1..=k {
        ptr(&mut f, if i == 1 { end } else { base + (i - 2) * 17 });
    }
    rec(&mut f, b'E', b"");
    f
}

fn env_usize(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn cat_equals_live_postcat_on_mutated_fixtures() {
    let option_sets = option_sets();
    if !have_postfix() {
        panic!("Postfix is not installed: run .ci/run (it installs it)");
    }
    let scale = env_usize("POSTHOLD_CAT_DIFF_SCALE", 1).max(1) as usize;
    let seed = env_usize("POSTHOLD_CAT_DIFF_SEED", 0x5eed_cafe_f00d_1234);
    let cfg = empty_config();
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    let mut mutant_no = 0usize;
    let mut shapes_seen = std::collections::BTreeSet::new();
    for (i, fx) in fixtures().iter().enumerate() {
        let bytes = std::fs::read(fx.file()).unwrap();
        let mut rng = Rng((seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        let recs = thin(records(&bytes), 400);
        let large = fx.shape == "large";
        let kinds = candidates(&bytes, &recs, &mut rng);
        let per_kind: Vec<usize> = if large {
            // 5 MB each: one type-0 and one truncation only.
            vec![1, 0, 0, 0, 1, 0, 0, 0, 0]
        } else {
            PER_KIND.to_vec()
        };
        for s in choose(kinds, &per_kind, scale, &mut rng) {
            let name = format!("m{mutant_no:04}");
            std::fs::write(dir.path().join(&name), apply(&bytes, &s)).unwrap();
            let sets = if large { 1 } else { SETS_PER_MUTANT };
            for k in 0..sets {
                let opts =
                    option_sets[(mutant_no * 7 + k * option_sets.len() / 2) % option_sets.len()];
                cases.push(Case {
                    what: format!("{name} ({}/{} {}: {})", fx.shape, fx.id, s.kind, s.label),
                    dir: dir.path().to_path_buf(),
                    input: Input::Args(vec![name.clone()]),
                    opts,
                });
            }
            mutant_no += 1;
        }
        // Standard input, once per shape: a redirected file and a pipe.
        if !large && shapes_seen.insert(fx.shape.clone()) {
            let n = shapes_seen.len();
            cases.push(Case {
                what: format!("stdin < {}/{}", fx.shape, fx.id),
                dir: dir.path().to_path_buf(),
                input: Input::StdinFile(fx.file()),
                opts: option_sets[(n * 3) % option_sets.len()],
            });
            cases.push(Case {
                what: format!("cat {}/{} |", fx.shape, fx.id),
                dir: dir.path().to_path_buf(),
                input: Input::StdinPipe(bytes.clone()),
                opts: option_sets[(n * 3 + 1) % option_sets.len()],
            });
        }
    }

    let plain = fixtures()
        .into_iter()
        .find(|f| f.shape == "plain")
        .expect("a plain fixture");
    let plain = std::fs::read(plain.file()).unwrap();
    for (k, (what, bytes, sets)) in targeted(&plain).into_iter().enumerate() {
        let name = format!("t{k:03}");
        std::fs::write(dir.path().join(&name), bytes).unwrap();
        for &opts in sets {
            cases.push(Case {
                what: format!("{name} ({what})"),
                dir: dir.path().to_path_buf(),
                input: Input::Args(vec![name.clone()]),
                opts,
            });
        }
    }

    // Several files in one run: postcat's unflushed output (an ENVELOPE
    // marker, a newline at X) goes out with the next file's first record,
    // and rec_goto()'s reverse-jump count carries over when the same name
    // comes twice in a row.
    let chain = reverse_chain(6_000);
    std::fs::write(dir.path().join("chain"), chain).unwrap();
    let multi: &[(&[&str], &'static [&'static [&'static str]])] = &[
        (&["t000", "t001"], &[&[], &["-e"], &["-b"]]),
        (&["t001", "t001"], &[&["-b"], &["-h", "-b"]]),
        (&["chain"], &[&["-e"]]),
        (&["chain", "chain"], &[&["-e"], &["-v", "-e"]]),
    ];
    for (names, sets) in multi {
        for &opts in *sets {
            cases.push(Case {
                what: format!("files {names:?}"),
                dir: dir.path().to_path_buf(),
                input: Input::Args(names.iter().map(|n| n.to_string()).collect()),
                opts,
            });
        }
    }

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let verdicts: Mutex<Vec<Verdict>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let v = judge(case, cfg.path());
                    verdicts.lock().unwrap().push(v);
                }
            });
        }
    });
    let verdicts = verdicts.into_inner().unwrap();

    let (mut checked, mut failed, mut crashed, mut unfinished) = (0, 0, 0, 0);
    let mut mismatches = Vec::new();
    for v in verdicts {
        match v {
            Verdict::Checked { failed: f } => {
                checked += 1;
                failed += usize::from(f);
            }
            Verdict::PostcatCrashed => crashed += 1,
            Verdict::PostcatUnfinished => unfinished += 1,
            Verdict::Mismatch(m) => mismatches.push(m),
        }
    }
    eprintln!(
        "cat differential: {} cases ({mutant_no} mutants) in {:.1?}: {checked} compared \
         ({failed} where postcat failed), {crashed} postcat crashes, {unfinished} postcat \
         did not finish, {} mismatches",
        cases.len(),
        started.elapsed(),
        mismatches.len()
    );
    mismatches.sort();
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from postcat (first 25):\n{}",
        mismatches.len(),
        cases.len(),
        mismatches
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Not vacuous: most cases were compared, and both outcomes occur.
    assert!(
        checked + crashed >= cases.len() * 9 / 10,
        "only {checked} of {} cases compared ({unfinished} unfinished)",
        cases.len()
    );
    assert!(
        failed > 50 && checked - failed > 50,
        "checked {checked}, failed {failed}"
    );
}
