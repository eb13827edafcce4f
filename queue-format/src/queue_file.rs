//! A typed view of a queue file: the SIZE record, times, sender,
//! recipients with their DSN attributes, named attributes, and the content
//! as lines.
//!
//! [`read_envelope`] reads the envelope and extracted segments and skips the
//! content by seeking (as qmgr and showq do), so listing never decodes the
//! message. [`Lines`] reads the content line by line; stopping after the
//! headers never touches the body.
//!
//! Errors carry the offset and record type: a record that may not appear in
//! its segment is [`ErrorKind::UnexpectedRecord`]; a missing SIZE, TIME,
//! SENDER or END is reported by [`Envelope::check_complete`].

use std::io::{Read, Seek};

use crate::error::{Error, ErrorKind, Result};
use crate::reader::Reader;
use crate::rec_type as rt;

/// The SIZE record's fields (see `shared/postfix-facts.md` §1.4). Older
/// files have three to five fields; missing ones read as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeRecord {
    /// Bytes from `data_offset` to the `X` record.
    pub data_size: u64,
    /// Offset of the first content record.
    pub data_offset: u64,
    /// Recipient count (a hint).
    pub rcpt_count: u64,
    /// qmgr flags and DSN NOTIFY bits.
    pub qmgr_flags: u64,
    /// Content length (0 means `data_size`).
    pub content_length: u64,
    /// SMTPUTF8 and related send options.
    pub sendopts: u64,
    /// How many fields the record had.
    pub fields: usize,
}

impl SizeRecord {
    /// Parses a SIZE payload: three to six blank-separated decimals.
    pub fn parse(payload: &[u8]) -> Option<SizeRecord> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut v = [0u64; 6];
        let mut n = 0;
        for field in text.split_ascii_whitespace() {
            if n == 6 || !field.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            v[n] = field.parse().ok()?;
            n += 1;
        }
        if n < 3 {
            return None;
        }
        Some(SizeRecord {
            data_size: v[0],
            data_offset: v[1],
            rcpt_count: v[2],
            qmgr_flags: v[3],
            content_length: v[4],
            sendopts: v[5],
            fields: n,
        })
    }

    /// An all-zero SIZE record: cleanup writes it first and fills it in
    /// last, so the file is not finished.
    pub fn is_unfinished(&self) -> bool {
        self.data_size == 0 && self.data_offset == 0
    }
}

/// Delivery state of a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientState {
    /// `R`: still to be delivered.
    Todo,
    /// `D`: delivered (or bounced) already.
    Done,
    /// `/`: cancelled by a Milter.
    Cancelled,
}

/// One recipient with the attributes that preceded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as stored (unquoted).
    pub address: Vec<u8>,
    /// `O`: the original recipient.
    pub original: Option<Vec<u8>>,
    /// DSN NOTIFY flags (`A notify_flags=` or `n`).
    pub notify: Option<u32>,
    /// DSN ORCPT (`A dsn_orig_rcpt=` or `o`).
    pub dsn_orcpt: Option<Vec<u8>>,
    /// Whether it is still to be delivered.
    pub state: RecipientState,
    /// Whether it came from the extracted segment (headers).
    pub extracted: bool,
    /// Offset of its record.
    pub offset: u64,
}

/// A named attribute, in either the `A name=value` form or a letter form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Name (letter forms get their long names).
    pub name: Vec<u8>,
    /// Value, trimmed.
    pub value: Vec<u8>,
    /// Whether it came from the extracted segment.
    pub extracted: bool,
}

/// The envelope and extracted segments of a queue file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The SIZE record, when present and well formed.
    pub size: Option<SizeRecord>,
    /// Whether a SIZE record was present at all.
    pub size_seen: bool,
    /// Arrival time `(seconds, microseconds)` from the first `T`.
    pub arrival: Option<(i64, i64)>,
    /// `create_time`, the expiry base (`A create_time=` or `c`).
    pub create_time: Option<i64>,
    /// The sender (`Some(empty)` is the null sender).
    pub sender: Option<Vec<u8>>,
    /// Sender full name.
    pub fullname: Option<Vec<u8>>,
    /// Content filter (`L` in the envelope).
    pub content_filter: Option<Vec<u8>>,
    /// Next delay-warning time.
    pub warn_time: Option<i64>,
    /// Recipients, envelope first, then extracted.
    pub recipients: Vec<Recipient>,
    /// Named attributes in file order.
    pub attributes: Vec<Attribute>,
    /// Offset of the `M` record.
    pub content_offset: Option<u64>,
    /// Offset of the `X` record.
    pub extracted_offset: Option<u64>,
    /// Whether the `E` record was reached.
    pub end_seen: bool,
}

impl Envelope {
    /// The first attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|a| a.name == name.as_bytes())
            .map(|a| a.value.as_slice())
    }

    /// The expiry base: `create_time`, else the arrival seconds.
    pub fn expiry_base(&self) -> Option<i64> {
        self.create_time.or(self.arrival.map(|a| a.0))
    }

    /// Checks what qmgr requires of a committed file: a finished SIZE
    /// record, TIME, SENDER and END.
    pub fn check_complete(&self) -> Result<()> {
        let missing =
            |what: &str| Error::new(ErrorKind::MissingRecord, format!("no {what} record"));
        match self.size {
            None if self.size_seen => {
                return Err(Error::new(ErrorKind::Malformed, "malformed size record").rec(rt::SIZE));
            }
            None => return Err(missing("size")),
            Some(s) if s.is_unfinished() => {
                return Err(Error::new(
                    ErrorKind::Unfinished,
                    "size record is all zero: file not finished",
                )
                .rec(rt::SIZE));
            }
            Some(_) => {}
        }
        if self.arrival.is_none() {
            return Err(missing("arrival time"));
        }
        if self.sender.is_none() {
            return Err(missing("sender"));
        }
        if !self.end_seen {
            return Err(missing("end"));
        }
        Ok(())
    }
}

/// Splits `name=value` the way Postfix's `split_nameval()` does: blanks
/// around the name and the value are trimmed. `None` when malformed.
pub fn split_nameval(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let is_sp = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b;
    let start = payload.iter().position(|b| !is_sp(b))?;
    let p = &payload[start..];
    if p[0] == b'=' {
        return None;
    }
    let name_end = p
        .iter()
        .position(|b| is_sp(b) || *b == b'=')
        .unwrap_or(p.len());
    let rest = &p[name_end..];
    let eq = rest.iter().position(|b| !is_sp(b))?;
    if rest[eq] != b'=' {
        return None;
    }
    let mut v = &rest[eq + 1..];
    while let Some((first, tail)) = v.split_first() {
        if !is_sp(first) {
            break;
        }
        v = tail;
    }
    while let Some((last, head)) = v.split_last() {
        if !is_sp(last) {
            break;
        }
        v = head;
    }
    Some((&p[..name_end], v))
}

/// C's `atol()`: leading blanks, an optional sign, digits; stops at the
/// first other byte; saturates instead of overflowing.
pub fn atol(s: &[u8]) -> i64 {
    let mut i = s
        .iter()
        .take_while(|b| b.is_ascii_whitespace() || **b == 0x0b)
        .count();
    let mut neg = false;
    if i < s.len() && (s[i] == b'-' || s[i] == b'+') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut v: i64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.saturating_mul(10).saturating_add(i64::from(s[i] - b'0'));
        i += 1;
    }
    if neg { -v } else { v }
}

/// Parses the arrival-time payload `<sec> <usec>`.
pub fn parse_time(payload: &[u8]) -> (i64, i64) {
    let sec = atol(payload);
    let digits = payload.iter().take_while(|b| b.is_ascii_digit()).count();
    (sec, atol(&payload[digits..]))
}

#[derive(Default)]
struct PendingRcpt {
    original: Option<Vec<u8>>,
    notify: Option<u32>,
    dsn_orcpt: Option<Vec<u8>>,
}

/// Reads the envelope and extracted segments from the start of the file.
/// The content is skipped with one seek when the SIZE record allows it.
pub fn read_envelope<R: Read + Seek>(reader: &mut Reader<R>) -> Result<Envelope> {
    let mut env = Envelope::default();
    let mut buf = Vec::new();
    let mut pending = PendingRcpt::default();
    let mut segment = rt::ENVELOPE;
    let mut first = true;
    while let Some(rec) = reader.next(&mut buf)? {
        let t = rec.rtype;
        let unexpected = || {
            Error::new(
                ErrorKind::UnexpectedRecord,
                "unexpected record type in this segment",
            )
            .at(rec.offset)
            .rec(t)
        };
        if first && !rt::ENVELOPE.contains(&t) {
            return Err(Error::new(ErrorKind::InvalidType, "not a queue file")
                .at(rec.offset)
                .rec(t));
        }
        first = false;
        if !segment.contains(&t) {
            return Err(unexpected());
        }
        let extracted = segment == rt::EXTRACT;
        match t {
            rt::SIZE => {
                if env.size_seen {
                    return Err(
                        Error::new(ErrorKind::Malformed, "more than one size record")
                            .at(rec.offset)
                            .rec(t),
                    );
                }
                env.size_seen = true;
                env.size = SizeRecord::parse(&buf);
            }
            rt::TIME if env.arrival.is_none() => env.arrival = Some(parse_time(&buf)),
            rt::WARN => env.warn_time = Some(atol(&buf)),
            rt::FULL => env.fullname = Some(buf.clone()),
            rt::FILT => env.content_filter = Some(buf.clone()),
            rt::FROM => {
                if env.sender.is_some() {
                    return Err(
                        Error::new(ErrorKind::Malformed, "more than one sender record")
                            .at(rec.offset)
                            .rec(t),
                    );
                }
                env.sender = Some(buf.clone());
            }
            rt::ORCP => pending.original = Some(buf.clone()),
            rt::RCPT | rt::DONE | rt::DRCP => {
                let p = std::mem::take(&mut pending);
                env.recipients.push(Recipient {
                    address: buf.clone(),
                    original: p.original,
                    notify: p.notify,
                    dsn_orcpt: p.dsn_orcpt,
                    state: match t {
                        rt::RCPT => RecipientState::Todo,
                        rt::DONE => RecipientState::Done,
                        _ => RecipientState::Cancelled,
                    },
                    extracted,
                    offset: rec.offset,
                });
            }
            rt::ATTR | rt::CTIME | rt::DSN_RET | rt::DSN_ENVID | rt::DSN_ORCPT | rt::DSN_NOTIFY => {
                let (name, value) = if t == rt::ATTR {
                    match split_nameval(&buf) {
                        Some((n, v)) => (n.to_vec(), v.to_vec()),
                        None => {
                            return Err(Error::new(ErrorKind::Malformed, "malformed attribute")
                                .at(rec.offset)
                                .rec(t));
                        }
                    }
                } else {
                    let name = rt::alias_attr_name(t).expect("BUG: alias listed");
                    (name.as_bytes().to_vec(), buf.clone())
                };
                match name.as_slice() {
                    b"create_time" => env.create_time = Some(atol(&value)),
                    b"notify_flags" => {
                        pending.notify = Some(atol(&value).clamp(0, i64::from(u32::MAX)) as u32)
                    }
                    b"dsn_orig_rcpt" => pending.dsn_orcpt = Some(value.clone()),
                    _ => {}
                }
                env.attributes.push(Attribute {
                    name,
                    value,
                    extracted,
                });
            }
            rt::MESG => {
                env.content_offset = Some(rec.offset);
                skip_content(reader, &env, rec.offset, &mut buf)?;
                let Some(x) = reader.next(&mut buf)? else {
                    return Err(Error::new(ErrorKind::MissingRecord, "no extracted segment")
                        .at(reader.position()));
                };
                if x.rtype != rt::XTRA {
                    return Err(Error::new(
                        ErrorKind::UnexpectedRecord,
                        "content does not end in an extracted segment",
                    )
                    .at(x.offset)
                    .rec(x.rtype));
                }
                env.extracted_offset = Some(x.offset);
                segment = rt::EXTRACT;
            }
            rt::END => {
                env.end_seen = true;
                break;
            }
            // Killed, redirect, VERP, priority, receipts, inspector: kept
            // out of the typed view but allowed where Postfix allows them.
            _ => {}
        }
    }
    Ok(env)
}

/// Positions `reader` at the `X` record: by one seek to `data_offset +
/// data_size` when the SIZE record points at an `X`, else by reading the
/// content records.
fn skip_content<R: Read + Seek>(
    reader: &mut Reader<R>,
    env: &Envelope,
    mesg_at: u64,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let data_start = mesg_at + 2;
    if let Some(s) = env.size {
        let target = s.data_offset.checked_add(s.data_size);
        if s.data_offset == data_start
            && let Some(target) = target
            && target < reader.len()
        {
            let here = reader.position();
            reader.seek(target)?;
            if reader.peek_byte()? == Some(rt::XTRA) {
                return Ok(());
            }
            reader.seek(here)?;
        }
    }
    loop {
        let here = reader.position();
        let Some(rec) = reader.next(buf)? else {
            return Err(Error::new(ErrorKind::MissingRecord, "no extracted segment").at(here));
        };
        match rec.rtype {
            rt::XTRA => {
                reader.seek(rec.offset)?;
                return Ok(());
            }
            rt::CONT | rt::NORM | rt::DTXT => {}
            t => {
                return Err(unexpected_in_content(rec.offset, t));
            }
        }
    }
}

fn unexpected_in_content(offset: u64, t: u8) -> Error {
    Error::new(
        ErrorKind::UnexpectedRecord,
        "unexpected record type in content",
    )
    .at(offset)
    .rec(t)
}

/// Whether `line` starts a header: printable non-space ASCII, optional
/// blanks, then `:` (Postfix's `is_header()`; only the bytes before the
/// first NUL count).
pub fn is_header(line: &[u8]) -> bool {
    let mut seen_char = false;
    let mut seen_space = false;
    for &c in line {
        match c {
            b':' => return seen_char,
            b' ' | b'\t' => {
                if !seen_char {
                    return false;
                }
                seen_space = true;
            }
            c if c == 0 || !c.is_ascii() || c.is_ascii_control() => return false,
            _ => {
                if seen_space {
                    return false;
                }
                seen_char = true;
            }
        }
    }
    false
}

/// Whether a content line that starts a logical line begins the body
/// (neither a header nor a continuation).
pub fn starts_body(line: &[u8]) -> bool {
    !(is_header(line) || matches!(line.first(), Some(b' ' | b'\t')))
}

/// One content line and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The bytes, without a newline.
    pub text: Vec<u8>,
    /// Whether it is part of the headers (false from the first body line on).
    pub in_header: bool,
}

/// Reads the content line by line, joining `L` records with the `N` that
/// ends them. A trailing `L` before `X` is a last line without a newline.
pub struct Lines<'r, R> {
    reader: &'r mut Reader<R>,
    in_header: bool,
    done: bool,
    buf: Vec<u8>,
}

impl<'r, R: Read + Seek> Lines<'r, R> {
    /// Starts at the content of a file whose `M` record is at `mesg_at`
    /// (from [`Envelope::content_offset`]).
    pub fn new(reader: &'r mut Reader<R>, mesg_at: u64) -> Result<Lines<'r, R>> {
        reader.seek(mesg_at + 2)?;
        Ok(Lines {
            reader,
            in_header: true,
            done: false,
            buf: Vec::new(),
        })
    }

    /// The next line, or `None` after the last.
    pub fn next_line(&mut self) -> Result<Option<Line>> {
        if self.done {
            return Ok(None);
        }
        let mut text = Vec::new();
        let mut partial = false;
        loop {
            let Some(rec) = self.reader.next(&mut self.buf)? else {
                return Err(Error::new(
                    ErrorKind::MissingRecord,
                    "content does not end in an extracted segment",
                )
                .at(self.reader.position()));
            };
            match rec.rtype {
                rt::CONT => {
                    text.extend_from_slice(&self.buf);
                    partial = true;
                }
                rt::NORM => {
                    text.extend_from_slice(&self.buf);
                    break;
                }
                rt::XTRA => {
                    self.done = true;
                    if partial {
                        break;
                    }
                    return Ok(None);
                }
                t => {
                    return Err(unexpected_in_content(rec.offset, t));
                }
            }
        }
        if self.in_header && starts_body(&text) {
            self.in_header = false;
        }
        Ok(Some(Line {
            text,
            in_header: self.in_header,
        }))
    }
}

/// The message as delivered (headers and body, as `postcat -hb` shows
/// them), as a byte stream: each `N` record is a line ending in a newline,
/// `L` records are parts of a longer line, and a last line without a
/// newline gets one. Streamed record by record: a hostile file with one
/// huge line never makes it buffer more than one record.
///
/// Reading fails (`InvalidData`) on any record that does not belong in
/// the content, and when the content does not end in the extracted segment.
pub struct MessageContent<'r, R> {
    reader: &'r mut Reader<R>,
    buf: Vec<u8>,
    pos: usize,
    newline: bool,
    partial: bool,
    done: bool,
}

impl<'r, R: Read + Seek> MessageContent<'r, R> {
    /// Starts at the content of a file whose `M` record is at `mesg_at`
    /// (from [`Envelope::content_offset`]).
    pub fn new(reader: &'r mut Reader<R>, mesg_at: u64) -> Result<MessageContent<'r, R>> {
        reader.seek(mesg_at + 2)?;
        Ok(MessageContent {
            reader,
            buf: Vec::new(),
            pos: 0,
            newline: false,
            partial: false,
            done: false,
        })
    }

    /// Loads the next record; false at the end.
    fn refill(&mut self) -> Result<bool> {
        loop {
            if self.done {
                return Ok(false);
            }
            let Some(rec) = self.reader.next(&mut self.buf)? else {
                return Err(Error::new(
                    ErrorKind::MissingRecord,
                    "content does not end in an extracted segment",
                )
                .at(self.reader.position()));
            };
            self.pos = 0;
            match rec.rtype {
                rt::CONT => {
                    self.partial = true;
                    self.newline = false;
                }
                rt::NORM => {
                    self.partial = false;
                    self.newline = true;
                }
                rt::XTRA => {
                    self.done = true;
                    self.buf.clear();
                    self.newline = self.partial;
                    self.partial = false;
                }
                t => return Err(unexpected_in_content(rec.offset, t)),
            }
            if !self.buf.is_empty() || self.newline {
                return Ok(true);
            }
        }
    }
}

impl<R: Read + Seek> Read for MessageContent<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.buf.len()
            && !self.newline
            && !self
                .refill()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        {
            return Ok(0);
        }
        if self.pos < self.buf.len() {
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        // The record's payload is out; its newline is due.
        self.newline = false;
        out[0] = b'\n';
        Ok(1)
    }
}

/// Reads the header of a message (never the body) as `(name, value)`
/// pairs in order, folded lines joined with one space, names and values
/// trimmed. Lines that are not headers are skipped.
pub fn read_headers<R: Read + Seek>(
    reader: &mut Reader<R>,
    mesg_at: u64,
) -> Result<Vec<(String, String)>> {
    let mut lines = Lines::new(reader, mesg_at)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    while let Some(l) = lines.next_line()? {
        if !l.in_header {
            break;
        }
        let t = String::from_utf8_lossy(&l.text);
        if t.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(t.trim());
            }
        } else if let Some((n, v)) = t.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_content_streams_lines_and_ends_a_last_partial_line() {
        let bytes = crate::writer::Builder::new(1, "a@b")
            .recipient("r@x")
            .header("Subject: one")
            .body_line("body")
            .build();
        let mut r = Reader::new(std::io::Cursor::new(&bytes)).unwrap();
        let env = read_envelope(&mut r).unwrap();
        let mut out = Vec::new();
        let mut c = MessageContent::new(&mut r, env.content_offset.unwrap()).unwrap();
        // One byte at a time: every boundary between records and newlines.
        let mut b = [0u8; 1];
        while c.read(&mut b).unwrap() == 1 {
            out.push(b[0]);
        }
        assert_eq!(out, b"Subject: one\n\nbody\n");
    }

    #[test]
    fn headers_are_unfolded_and_stop_at_the_body() {
        let bytes = crate::writer::Builder::new(1, "a@b")
            .recipient("r@x")
            .header("Subject: one")
            .header("\ttwo")
            .header("X-A:b")
            .body_line("Not: a header")
            .build();
        let mut r = Reader::new(std::io::Cursor::new(&bytes)).unwrap();
        let env = read_envelope(&mut r).unwrap();
        let h = read_headers(&mut r, env.content_offset.unwrap()).unwrap();
        assert_eq!(
            h,
            vec![
                ("Subject".to_string(), "one two".to_string()),
                ("X-A".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn size_records() {
        let s = SizeRecord::parse(b"            372             285               1               0             372               0").unwrap();
        assert_eq!(
            (
                s.data_size,
                s.data_offset,
                s.rcpt_count,
                s.content_length,
                s.fields
            ),
            (372, 285, 1, 372, 6)
        );
        assert!(SizeRecord::parse(b"1 2").is_none());
        assert!(SizeRecord::parse(b"1 2 x").is_none());
        assert!(SizeRecord::parse(b"0 0 0 0 0 0").unwrap().is_unfinished());
    }

    #[test]
    fn nameval_and_atol() {
        assert_eq!(split_nameval(b" a = b c "), Some((&b"a"[..], &b"b c"[..])));
        assert_eq!(split_nameval(b"=x"), None);
        assert_eq!(split_nameval(b"name"), None);
        assert_eq!(split_nameval(b"n="), Some((&b"n"[..], &b""[..])));
        assert_eq!(atol(b" -12x"), -12);
        assert_eq!(atol(b"99999999999999999999999"), i64::MAX);
        assert_eq!(parse_time(b"1795424399 155349"), (1795424399, 155349));
    }

    #[test]
    fn headers() {
        assert!(is_header(b"Subject: x"));
        assert!(is_header(b"Subject : x"));
        assert!(!is_header(b"Sub ject: x"));
        assert!(!is_header(b": x"));
        assert!(!is_header(b" Subject: x"));
        assert!(!is_header(b"no colon"));
        assert!(starts_body(b""));
        assert!(!starts_body(b"\tfolded"));
    }
}
