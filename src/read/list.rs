//! `posthold list`: the messages in the queue, as `postqueue -j` lists them.
//!
//! The scan reproduces Postfix's showq: queues in the order maildrop,
//! active, incoming, deferred, hold; entries in directory order, descending
//! into one-character hash directories as they are met; only legal queue
//! IDs, looked up at their computed (hashed) path, regular and ready
//! (owner rwx). Each file is read through the logical reader; the content is
//! skipped with one seek. Recipients come first from the defer log, with
//! their reasons, then from the queue file, without those already listed.
//!
//! Output: with `--json`, one object per line with exactly postqueue's
//! members and formatting; `--extra` appends posthold's own members after
//! them. Without `--json`, a mailq-like listing. Files that are not ready
//! are not listed; a summary on stderr counts them.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use queue_format::queue_file::{atol, split_nameval};
use queue_format::reader::{Mode, Reader};
use queue_format::rec_type as rt;

use crate::config::{Config, SHOWQ_QUEUES};
use crate::error::Fatal;
use crate::queue::spool::QUARANTINE;
use crate::queue::walk::{Descend, walk};
pub use crate::util::{json_quote, printable};

/// One listed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Queue name.
    pub queue: String,
    /// Queue ID.
    pub id: String,
    /// Arrival time in seconds (first `T`, else the file's mtime).
    pub arrival_time: i64,
    /// SIZE field 1, or the file size when the SIZE record is malformed.
    pub message_size: i64,
    /// Group-execute bit: marked for return to sender.
    pub forced_expire: bool,
    /// Sender, quoted and made printable as showq does.
    pub sender: String,
    /// Recipients with their defer reasons.
    pub recipients: Vec<(String, String)>,
    /// `create_time` attribute, if any (posthold's own member).
    pub create_time: Option<i64>,
    /// The due time from `X-Deliver-At` (else `Deferred-Delivery`) as the
    /// daemon's default rules judge it, read only for `--extra`: `None`
    /// without such a header (posthold's own member).
    pub deliver_at: Option<Due>,
    /// posthold's notes on a quarantined message (`user.posthold.*`
    /// extended attributes: reason, detail, at, by), in that order.
    pub notes: Vec<(String, String)>,
}

/// How a listing is printed.
pub enum Format<'a> {
    /// `postqueue -p`'s text.
    Text,
    /// `postqueue -j`'s JSON lines.
    Json,
    /// JSON lines with posthold's own members after postqueue's; the
    /// function gives a file's due time as the rules judge it (`None`
    /// without a due header, `Err` for a bad date).
    JsonExtra(&'a DueOf<'a>),
}

/// A queue file's due time as the rules judge it (see [`Format::JsonExtra`]),
/// given its path relative to the queue directory and its queue ID.
pub type DueOf<'a> = dyn Fn(&str, &str) -> Option<Due> + 'a;

/// A message's due header as the rules judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The date it names (seconds), when it can be read.
    pub at: Option<i64>,
    /// A bad date: unreadable, or beyond the horizon (the daemon keeps it).
    pub bad: bool,
}

/// What the scan saw besides messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Messages listed.
    pub listed: usize,
    /// Regular files whose owner bits are not rwx: not committed yet.
    pub not_ready: usize,
    /// Entries that are not regular files (symlinks, directories, ...).
    pub not_regular: usize,
    /// Names that are not legal queue IDs.
    pub illegal: usize,
}

fn is_dot_string(local: &[u8]) -> bool {
    if local.is_empty() || local[0] == b'.' || local[local.len() - 1] == b'.' {
        return false;
    }
    for (i, &ch) in local.iter().enumerate() {
        if ch == b'.' && local.get(i + 1) == Some(&b'.') {
            return false;
        }
        if ch <= b' ' || ch == 0x7f || b"()<>@,;:\\\"[]".contains(&ch) {
            return false;
        }
    }
    true
}

/// Quotes the local part of an address when it is not a dot-string, as
/// Postfix's `quote_822_local()` does (8-bit clean).
pub fn quote_822_local(addr: &[u8]) -> Vec<u8> {
    let start = if addr.first() == Some(&b'@') {
        addr.iter().position(|&b| b == b':').map_or(0, |c| c + 1)
    } else {
        0
    };
    let end = addr[start..]
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(addr.len(), |a| start + a);
    let local = &addr[start..end];
    if is_dot_string(local) {
        return addr.to_vec();
    }
    let mut out = addr[..start].to_vec();
    out.push(b'"');
    for &ch in local {
        if ch == b'"' || ch == b'\\' || ch == b'\r' {
            out.push(b'\\');
        }
        out.push(ch);
    }
    out.push(b'"');
    out.extend_from_slice(&addr[end..]);
    out
}

fn cstr(p: &[u8]) -> &[u8] {
    p.iter().position(|&b| b == 0).map_or(p, |n| &p[..n])
}

/// Reads a defer log as Postfix's `bounce_log_read()` does: entries of
/// `name = value` lines separated by blank lines; an entry not closed by a
/// blank line is not used.
pub fn read_defer_log(path: &Path, utf8: bool) -> Option<Vec<(String, String)>> {
    let f = File::open(path).ok()?;
    let mut entries = Vec::new();
    let mut found = false;
    let (mut rcpt, mut why) = (String::new(), String::new());
    for line in BufReader::new(f).split(b'\n') {
        let line = line.ok()?;
        if line.is_empty() {
            if found {
                entries.push((
                    if rcpt.is_empty() {
                        "(recipient address unavailable)".into()
                    } else {
                        rcpt.clone()
                    },
                    if why.is_empty() {
                        "(description unavailable)".into()
                    } else {
                        why.clone()
                    },
                ));
                rcpt.clear();
                why.clear();
            }
            found = false;
            continue;
        }
        let line = printable(cstr(&line), utf8);
        found = true;
        if line[0].is_ascii_alphanumeric() {
            if let Some((name, value)) = split_nameval(&line) {
                let value = String::from_utf8_lossy(value).into_owned();
                match name {
                    b"recipient" => {
                        rcpt = if value.is_empty() {
                            "(MAILER-DAEMON)".into()
                        } else {
                            value
                        }
                    }
                    b"reason" => why = value,
                    _ => {}
                }
            }
        } else if line[0] == b'<' {
            // Pre-2.3 format: <address>: reason
            if let Some(p) = line.windows(3).position(|w| w == b">: ") {
                let a = &line[1..p];
                rcpt = if a.is_empty() {
                    "(MAILER-DAEMON)".into()
                } else {
                    String::from_utf8_lossy(a).into_owned()
                };
                let text = &line[p + 2..];
                let skip = text.iter().take_while(|b| b.is_ascii_whitespace()).count();
                why = String::from_utf8_lossy(&text[skip..]).into_owned();
            }
        }
    }
    Some(entries)
}

/// Reads one queue file as showq reports it. `None` when no sender record
/// was reached (showq lists nothing for such a file).
pub fn report(
    cfg: &Config,
    queue: &str,
    id: &str,
    file: File,
    meta: &fs::Metadata,
) -> Option<Message> {
    let utf8 = cfg.smtputf8_enable;
    let mut rd = Reader::with_len(BufReader::new(file), meta.len(), Mode::LOGICAL);
    let mut buf = Vec::new();
    let mut msg: Option<Message> = None;
    let mut arrival: i64 = 0;
    let mut size = meta.len() as i64;
    let mut size_ok = false;
    let mut size_seen = false;
    let mut create_time = None;
    let mut dup: Option<HashSet<String>> = None;
    loop {
        let rec = match rd.next(&mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                eprintln!("posthold: warning: {queue}/{id}: {e}");
                break;
            }
        };
        let payload = cstr(&buf);
        match rec.rtype {
            rt::TIME if arrival == 0 => arrival = atol(payload),
            rt::SIZE if !size_seen => {
                size_seen = true;
                size_ok =
                    payload.iter().all(|b| b.is_ascii_digit() || *b == b' ') && atol(payload) >= 0;
                if size_ok {
                    size = atol(payload);
                } else {
                    eprintln!(
                        "posthold: warning: {id}: malformed size record: {} -- using file size instead",
                        String::from_utf8_lossy(&printable(payload, utf8))
                    );
                }
            }
            rt::ATTR => {
                if let Some((b"create_time", v)) = split_nameval(payload) {
                    create_time = Some(atol(v));
                }
            }
            rt::CTIME => create_time = Some(atol(payload)),
            rt::FROM => {
                let addr = if payload.is_empty() {
                    cfg.empty_address_recipient.as_bytes()
                } else {
                    payload
                };
                let sender =
                    String::from_utf8_lossy(&printable(&quote_822_local(addr), utf8)).into_owned();
                if msg.is_some() {
                    eprintln!(
                        "posthold: warning: {id}: duplicate sender address: {sender} -- skipping remainder of this file"
                    );
                    break;
                }
                let mut m = Message {
                    queue: queue.to_string(),
                    id: id.to_string(),
                    arrival_time: if arrival > 0 { arrival } else { meta.mtime() },
                    message_size: size,
                    forced_expire: meta.mode() & 0o010 != 0,
                    sender,
                    recipients: Vec::new(),
                    create_time,
                    deliver_at: None,
                    notes: Vec::new(),
                };
                let log = cfg.queue_directory.join(cfg.queue_path("defer", id));
                if let Some(entries) = read_defer_log(&log, utf8) {
                    let mut seen = HashSet::new();
                    for (a, _) in &entries {
                        if cfg.duplicate_filter_limit == 0
                            || seen.len() < cfg.duplicate_filter_limit
                        {
                            seen.insert(a.clone());
                        }
                    }
                    m.recipients.extend(entries);
                    dup = Some(seen);
                }
                msg = Some(m);
            }
            rt::RCPT => {
                let Some(m) = msg.as_mut() else {
                    eprintln!(
                        "posthold: warning: {id}: missing sender address -- skipping remainder of this file"
                    );
                    break;
                };
                let addr = if payload.is_empty() {
                    cfg.empty_address_recipient.as_bytes()
                } else {
                    payload
                };
                let a =
                    String::from_utf8_lossy(&printable(&quote_822_local(addr), utf8)).into_owned();
                if !dup.as_ref().is_some_and(|d| d.contains(&a)) {
                    m.recipients.push((a, String::new()));
                }
            }
            rt::MESG if size_ok => {
                let target = rd.position().saturating_add(size.max(0) as u64);
                if rd.seek(target).is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
    if let Some(m) = msg.as_mut()
        && m.create_time.is_none()
    {
        m.create_time = create_time;
    }
    msg
}

/// Scans the named queues (all message queues when empty) in showq's order
/// and calls `each` for every message.
pub fn scan(
    cfg: &Config,
    queues: &[String],
    due_of: Option<&DueOf<'_>>,
    mut each: impl FnMut(Message) -> Result<(), Fatal>,
) -> Result<Summary, Fatal> {
    for q in queues {
        if !SHOWQ_QUEUES.contains(&q.as_str()) && q != "quarantine" {
            return Err(Fatal::config(format!(
                "{q}: not a message queue (use {}, quarantine)",
                SHOWQ_QUEUES.join(", ")
            )));
        }
    }
    let mut summary = Summary::default();
    // Postfix's queues in showq's order; posthold's quarantine after them,
    // only when asked for (mailq never shows it).
    let order = SHOWQ_QUEUES.iter().copied().chain(["quarantine"]);
    for queue in order {
        let named = queues.iter().any(|q| q == queue);
        if !named && (!queues.is_empty() || queue == "quarantine") {
            continue;
        }
        // The quarantine is one flat directory; showq's order elsewhere:
        // each queue depth first, hash directories entered as met (any
        // one-character name but in maildrop).
        let (dir, descend) = match queue {
            "quarantine" => (QUARANTINE, Descend::Never),
            "maildrop" => (queue, Descend::Never),
            _ => (queue, Descend::HashDirs),
        };
        for found in walk(cfg, dir, descend) {
            let found = match found {
                Ok(f) => f,
                // A queue that cannot be read is an error, never an empty
                // answer (a missing one is a warning, as before).
                Err(e) if e.path == cfg.queue_directory.join(dir) => {
                    if e.error.kind() == std::io::ErrorKind::NotFound {
                        // A quarantine not made yet is an empty one.
                        if queue != "quarantine" {
                            eprintln!("posthold: warning: {e}");
                        }
                        break;
                    }
                    return Err(Fatal::runtime(e.to_string()));
                }
                Err(e) => {
                    eprintln!("posthold: warning: {e}");
                    continue;
                }
            };
            if found.entered {
                continue;
            }
            let Some(name) = found.name.to_str() else {
                summary.illegal += 1;
                continue;
            };
            // showq tries any one-character name as a directory, and
            // skips it when it is none.
            if name.len() == 1 && descend == Descend::HashDirs {
                continue;
            }
            if !queue_format::queue_id::is_legal(name) {
                summary.illegal += 1;
                continue;
            }
            let rel = cfg.queue_path(dir, name);
            let path = cfg.queue_directory.join(&rel);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.file_type().is_file() {
                eprintln!(
                    "posthold: warning: {queue}/{name}: uid {}: not a regular file",
                    meta.uid()
                );
                summary.not_regular += 1;
                continue;
            }
            if meta.permissions().mode() & 0o700 != 0o700 {
                summary.not_ready += 1;
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let notes = if queue == "quarantine" {
                read_notes(&file)
            } else {
                Vec::new()
            };
            if let Some(mut m) = report(cfg, queue, name, file, &meta) {
                m.notes = notes;
                if let Some(due_of) = due_of {
                    m.deliver_at = due_of(&rel, name);
                }
                summary.listed += 1;
                each(m)?;
            }
        }
    }
    Ok(summary)
}

/// One line of `postqueue -j` output (without the newline). With `extra`,
/// posthold's own members follow postqueue's.
pub fn to_json(m: &Message, utf8: bool, extra: bool) -> String {
    let mut s = format!(
        "{{\"queue_name\": \"{}\", \"queue_id\": \"{}\", \"arrival_time\": {}, \"message_size\": {}, \"forced_expire\": {}, \"sender\": \"{}\", \"recipients\": [",
        json_quote(m.queue.as_bytes(), utf8),
        json_quote(m.id.as_bytes(), utf8),
        m.arrival_time,
        m.message_size,
        m.forced_expire,
        json_quote(m.sender.as_bytes(), utf8),
    );
    for (i, (addr, why)) in m.recipients.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!(
            "{{\"address\": \"{}\"",
            json_quote(addr.as_bytes(), utf8)
        ));
        if !why.is_empty() {
            s.push_str(&format!(
                ", \"delay_reason\": \"{}\"",
                json_quote(why.as_bytes(), utf8)
            ));
        }
        s.push('}');
    }
    s.push(']');
    if extra {
        match m.create_time {
            Some(t) => s.push_str(&format!(", \"create_time\": {t}")),
            None => s.push_str(", \"create_time\": null"),
        }
        match &m.deliver_at {
            Some(Due { at: Some(t), bad }) => {
                s.push_str(&format!(", \"deliver_at\": {t}, \"bad_date\": {bad}"))
            }
            Some(Due { at: None, bad }) => {
                s.push_str(&format!(", \"deliver_at\": null, \"bad_date\": {bad}"))
            }
            None => s.push_str(", \"deliver_at\": null, \"bad_date\": false"),
        }
    }
    // A quarantined message: why, when and by whom, after postqueue's
    // members (null where the file system kept no note).
    if m.queue == "quarantine" {
        for key in NOTES {
            match m.notes.iter().find(|(k, _)| k == key) {
                Some((_, v)) => s.push_str(&format!(
                    ", \"quarantine_{key}\": \"{}\"",
                    json_quote(v.as_bytes(), utf8)
                )),
                None => s.push_str(&format!(", \"quarantine_{key}\": null")),
            }
        }
    }
    s.push('}');
    s
}

/// The notes posthold keeps with a quarantined message, in this order.
const NOTES: [&str; 4] = crate::queue::NOTE_NAMES;

/// posthold's notes on a file (none where the file system has no xattrs).
fn read_notes(file: &File) -> Vec<(String, String)> {
    use xattr::FileExt;
    NOTES
        .iter()
        .filter_map(|k| {
            let v = file
                .get_xattr(format!("{}{k}", crate::queue::NOTE_PREFIX))
                .ok()
                .flatten()?;
            Some((k.to_string(), String::from_utf8_lossy(&v).into_owned()))
        })
        .collect()
}

/// mailq's column layout: short or long queue IDs (`enable_long_queue_ids`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// 11 columns of ID, 7 of size, 20 of date.
    Short,
    /// 17 columns of ID, 8 of size, 19 of date.
    Long,
}

impl Columns {
    /// The heading line, as `postqueue -p` prints it.
    pub fn heading(self) -> &'static str {
        match self {
            Columns::Short => {
                "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
            }
            Columns::Long => {
                "----Queue ID----- --Size-- ---Arrival Time---- --Sender/Recipient------\n"
            }
        }
    }

    /// The indent of a recipient line.
    fn indent(self) -> usize {
        match self {
            Columns::Short => 11 + 1 + 7 + 1 + 20 + 1,
            Columns::Long => 17 + 1 + 8 + 1 + 19 + 1,
        }
    }
}

/// One message as `postqueue -p` (mailq) shows it: the ID with its status
/// marks (`*` active, `!` on hold, `#` marked for return), the size, the
/// arrival time as asctime(3) gives it (cut to the column), the sender;
/// then each recipient, preceded by its defer reason when that differs
/// from the previous recipient's (right-aligned to column 78, or "reason
/// unavailable" when a reason goes away).
pub fn to_text(m: &Message, cols: Columns) -> String {
    let mark = match m.queue.as_str() {
        "active" => "*",
        "hold" => "!",
        _ => "",
    };
    let id = format!("{}{mark}{}", m.id, if m.forced_expire { "#" } else { "" });
    let when = chrono::DateTime::from_timestamp(m.arrival_time, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%a %b %e %H:%M:%S %Y")
                .to_string()
        })
        .unwrap_or_default();
    let mut s = match cols {
        Columns::Short => format!(
            "{id:<11} {:>7} {when:>20.20} {}\n",
            m.message_size, m.sender
        ),
        Columns::Long => format!(
            "{id:<17} {:>8} {when:>19.19} {}\n",
            m.message_size, m.sender
        ),
    };
    let mut said = "";
    for (addr, why) in &m.recipients {
        if why != said {
            said = why;
            let show = if why.is_empty() {
                "reason unavailable"
            } else {
                why.as_str()
            };
            let pad = 76usize.saturating_sub(show.len());
            s.push_str(&format!("{:pad$}({show})\n", ""));
        }
        s.push_str(&format!("{:w$}{addr}\n", "", w = cols.indent()));
    }
    s
}

/// Runs `posthold list`.
/// Which listed messages are shown (all of them by default): each given
/// condition must hold, as a filter over `postqueue -j`'s members would
/// choose (`sender`, any of `recipients[].address`, `message_size`,
/// `arrival_time`).
#[derive(Debug, Default)]
pub struct Select {
    /// The sender (as listed: quoted, `MAILER-DAEMON` for the null sender) matches.
    pub sender: Option<regex::Regex>,
    /// Some recipient matches.
    pub recipient: Option<regex::Regex>,
    /// At least this many bytes.
    pub min_size: Option<u64>,
    /// At most this many bytes.
    pub max_size: Option<u64>,
    /// Arrived at least this many seconds ago.
    pub min_age: Option<u64>,
    /// Arrived at most this many seconds ago.
    pub max_age: Option<u64>,
}

impl Select {
    /// Whether `m` is chosen, `now` being the time (seconds).
    pub fn matches(&self, m: &Message, now: i64) -> bool {
        let size = m.message_size.max(0) as u64;
        let age = (now - m.arrival_time).max(0) as u64;
        self.sender.as_ref().is_none_or(|re| re.is_match(&m.sender))
            && self
                .recipient
                .as_ref()
                .is_none_or(|re| m.recipients.iter().any(|(r, _)| re.is_match(r)))
            && self.min_size.is_none_or(|n| size >= n)
            && self.max_size.is_none_or(|n| size <= n)
            && self.min_age.is_none_or(|n| age >= n)
            && self.max_age.is_none_or(|n| age <= n)
    }
}

/// Runs `posthold list`.
pub fn run(
    cfg: &Config,
    queues: &[String],
    format: Format<'_>,
    out: &mut dyn Write,
) -> Result<Summary, Fatal> {
    run_selected(cfg, queues, format, &Select::default(), out)
}

/// Runs `posthold list` on the messages `sel` chooses.
pub fn run_selected(
    cfg: &Config,
    queues: &[String],
    format: Format<'_>,
    sel: &Select,
    out: &mut dyn Write,
) -> Result<Summary, Fatal> {
    let now = crate::util::now();
    let utf8 = cfg.smtputf8_enable;
    let write_err = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
    let due_of = match format {
        Format::JsonExtra(f) => Some(f),
        Format::Text | Format::Json => None,
    };
    let cols = if cfg.enable_long_queue_ids {
        Columns::Long
    } else {
        Columns::Short
    };
    // mailq's heading before the first message, a blank line between
    // messages, the total after the last.
    let (mut count, mut bytes) = (0u64, 0u64);
    let summary = scan(cfg, queues, due_of, |m| match format {
        _ if !sel.matches(&m, now) => Ok(()),
        Format::Text => {
            let sep = if count == 0 { cols.heading() } else { "\n" };
            count += 1;
            bytes += m.message_size.max(0) as u64;
            write!(out, "{sep}{}", to_text(&m, cols)).map_err(write_err)
        }
        Format::Json => writeln!(out, "{}", to_json(&m, utf8, false)).map_err(write_err),
        Format::JsonExtra(_) => writeln!(out, "{}", to_json(&m, utf8, true)).map_err(write_err),
    })?;
    if matches!(format, Format::Text) {
        if count == 0 {
            writeln!(out, "Mail queue is empty").map_err(write_err)?;
        } else {
            write!(
                out,
                "\n-- {} Kbytes in {count} Request{}.\n",
                bytes / 1024,
                if count == 1 { "" } else { "s" }
            )
            .map_err(write_err)?;
        }
    }
    out.flush().map_err(write_err)?;
    if summary.not_ready + summary.not_regular + summary.illegal > 0 {
        eprintln!(
            "posthold: {} listed, {} not ready (uncommitted or still being written), {} not regular files, {} illegal names",
            summary.listed, summary.not_ready, summary.not_regular, summary.illegal
        );
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_like_postfix() {
        assert_eq!(quote_822_local(b"a.b@x"), b"a.b@x");
        assert_eq!(quote_822_local(b"a b@x"), b"\"a b\"@x");
        assert_eq!(quote_822_local(b"a..b@x"), b"\"a..b\"@x");
        assert_eq!(quote_822_local(b"a\"b@x"), b"\"a\\\"b\"@x");
        assert_eq!(quote_822_local(b"@r:a b@x"), b"@r:\"a b\"@x");
        assert_eq!(quote_822_local(b"@x"), b"\"\"@x");
        assert_eq!(quote_822_local("ü@x".as_bytes()), "ü@x".as_bytes());
        assert_eq!(quote_822_local(b"MAILER-DAEMON"), b"MAILER-DAEMON");
    }

    #[test]
    fn printable_and_json() {
        assert_eq!(printable(b"a\x01b", true), b"a?b");
        assert_eq!(printable("é".as_bytes(), true), "é".as_bytes());
        assert_eq!(printable("é".as_bytes(), false), b"??");
        assert_eq!(printable(b"\xe9x", true), b"?x");
        assert_eq!(
            json_quote(b"a\"\\\n\x01\x7f", true),
            "a\\\"\\\\\\n\\u0001\\u007F"
        );
    }
}
