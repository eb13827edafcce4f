//! A held message opened read-only, and what the rules see of it
//! ([`Facts`]). The one way the daemon, `posthold scan` and the scanners
//! read a held message (SAFETY.md S12): `O_NOFOLLOW`, `O_NONBLOCK`,
//! committed, of the expected inode, with a complete envelope. No lock is
//! taken and nothing is changed.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;

use nix::fcntl::OFlag;
use std::path::Path;

use queue_format::queue_file::{Envelope, MessageContent, RecipientState, read_envelope};
use queue_format::reader::{Mode, Reader};

use crate::config::Config;
use crate::queue::act::{is_requeued_copy, requeue_threshold};
use crate::queue::spool::{Location, open_beneath};
use crate::util::now;

/// A message that cannot be read (gone, replaced, not committed, damaged):
/// what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    what: String,
    damaged: Option<u64>,
}

impl Unreadable {
    /// Gone, replaced, not committed yet: a later event or scan decides.
    fn passing(what: String) -> Unreadable {
        Unreadable {
            what,
            damaged: None,
        }
    }

    /// What went wrong, where first.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The inode of a committed queue file whose records cannot be read
    /// (damaged, or a record type posthold does not know: a newer queue
    /// format): this will not heal by waiting.
    pub fn damaged(&self) -> Option<u64> {
        self.damaged
    }
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

/// What a reader needs of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A complete queue file (SIZE, TIME, SENDER, END): to act or scan.
    Complete,
    /// Whatever envelope there is: to list.
    AnyEnvelope,
}

/// Whether [`Message::open`] reads the headers (never the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headers {
    /// Read them: the rules need them.
    Read,
    /// Skip them: a scanner streams the content itself.
    Skip,
}

/// A held message opened read-only: for the rules and for scanners.
pub struct Message {
    /// Its queue ID.
    pub id: String,
    /// Envelope sender ("" for the null sender).
    pub sender: String,
    /// Recipients still to deliver.
    pub recipients: Vec<String>,
    /// The envelope as read.
    pub env: Envelope,
    /// Headers (unfolded), when asked for at open.
    pub headers: Vec<(String, String)>,
    /// The file's inode.
    pub ino: u64,
    /// Its ctime in microseconds (for a held file: when it was committed).
    pub ctime_us: i64,
    file: File,
    len: u64,
    mesg_at: u64,
}

impl Message {
    /// Opens `rel` below the queue directory `root` read-only, without
    /// following a symlink in any component (and without blocking on a
    /// FIFO), and checks that it is a committed regular file with inode
    /// `ino` (when given) and a complete envelope; reads the headers too
    /// when asked (never the body). The one way the daemon, `posthold scan`
    /// and the scanners read a held message.
    pub fn open(
        root: BorrowedFd<'_>,
        rel: &str,
        id: &str,
        ino: Option<u64>,
        headers: Headers,
    ) -> Result<Message, Unreadable> {
        Message::open_as(root, rel, id, ino, headers, Need::Complete)
    }

    /// [`Message::open`] for a listing: the envelope as it is (a file in
    /// maildrop has no SIZE record yet), headers read.
    pub fn open_for_listing(
        root: BorrowedFd<'_>,
        rel: &str,
        id: &str,
    ) -> Result<Message, Unreadable> {
        Message::open_as(root, rel, id, None, Headers::Read, Need::AnyEnvelope)
    }

    fn open_as(
        root: BorrowedFd<'_>,
        rel: &str,
        id: &str,
        ino: Option<u64>,
        headers: Headers,
        need: Need,
    ) -> Result<Message, Unreadable> {
        let path = Path::new(rel);
        let gone = |e: std::io::Error| Unreadable::passing(format!("{}: {e}", path.display()));
        // S12: read-only, no symlink in any component (S5), no blocking on
        // a FIFO; no lock taken.
        let file = open_beneath(root, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK)
            .map(File::from)
            .map_err(|e| gone(std::io::Error::from_raw_os_error(e as i32)))?;
        let meta = file.metadata().map_err(gone)?;
        if !meta.file_type().is_file() || meta.mode() & 0o700 != 0o700 {
            return Err(Unreadable::passing(format!(
                "{}: not a committed queue file",
                path.display()
            )));
        }
        // S12: committed (Assumption A1), and the inode asked for.
        if ino.is_some_and(|i| i != meta.ino()) {
            return Err(Unreadable::passing(format!("{}: replaced", path.display())));
        }
        let len = meta.len();
        let ino = meta.ino();
        let bad = |e: queue_format::Error| Unreadable {
            what: format!("{}: {e}", path.display()),
            damaged: Some(ino),
        };
        let mut rd = Reader::with_len(BufReader::new(&file), len, Mode::LOGICAL);
        let env = read_envelope(&mut rd).map_err(bad)?;
        if need == Need::Complete {
            env.check_complete().map_err(bad)?;
        }
        let mesg_at = env.content_offset.ok_or_else(|| {
            Unreadable::passing(format!("{}: no message content", path.display()))
        })?;
        let headers = if headers == Headers::Read {
            // Reading stops at the first body line.
            queue_format::queue_file::read_headers(&mut rd, mesg_at).map_err(bad)?
        } else {
            Vec::new()
        };
        drop(rd);
        Ok(Message {
            id: id.to_string(),
            sender: String::from_utf8_lossy(env.sender.as_deref().unwrap_or_default()).into_owned(),
            recipients: env
                .recipients
                .iter()
                .filter(|r| r.state == RecipientState::Todo)
                .map(|r| String::from_utf8_lossy(&r.address).into_owned())
                .collect(),
            env,
            headers,
            ino: meta.ino(),
            ctime_us: meta.ctime() * 1_000_000 + meta.ctime_nsec() / 1000,
            file,
            len,
            mesg_at,
        })
    }

    /// Runs `f` on the message content stream.
    pub fn with_content<T, E: From<Unreadable>>(
        &self,
        f: impl FnOnce(&mut dyn Read) -> Result<T, E>,
    ) -> Result<T, E> {
        // The reader counts positions from where the file offset is.
        (&self.file)
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| Unreadable::passing(format!("{}: {e}", self.id)))?;
        let mut rd = Reader::with_len(
            BufReader::with_capacity(64 * 1024, &self.file),
            self.len,
            Mode::LOGICAL,
        );
        let mut content = MessageContent::new(&mut rd, self.mesg_at)
            .map_err(|e| Unreadable::passing(format!("{}: {e}", self.id)))?;
        f(&mut content)
    }

    /// The content's length in bytes (a read of the whole content).
    pub fn content_len(&self) -> Result<u64, Unreadable> {
        self.with_content(|r| {
            std::io::copy(r, &mut std::io::sink())
                .map_err(|e| Unreadable::passing(format!("{}: {e}", self.id)))
        })
    }
}

/// What a rule sees of a message.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Headers, unfolded, in order: (name, value).
    pub headers: Vec<(String, String)>,
    /// Envelope sender (empty for the null sender).
    pub sender: String,
    /// Envelope recipients still to deliver.
    pub recipients: Vec<String>,
    /// Message size in bytes (SIZE record).
    pub size: u64,
    /// Seconds since create_time.
    pub age: u64,
    /// Seconds since the message was put on hold.
    pub held: u64,
}

impl Facts {
    /// Every header named `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the rules need of the held message at `loc`: its inode, its
/// facts, its commit time (ctime, µs) and whether it is a copy made by
/// requeueing (with `old_after` as the requeue threshold, see
/// [`requeue_threshold`]); or why it cannot be read (see [`Unreadable`]).
pub fn facts_of(
    cfg: &Config,
    root: BorrowedFd<'_>,
    loc: &Location,
    old_after: Option<u64>,
) -> Result<Held, Unreadable> {
    let m = Message::open(root, &loc.path(), &loc.id, None, Headers::Read)?;
    let requeued_copy = is_requeued_copy(&m.env, requeue_threshold(cfg, &m.env, old_after));
    let (ino, committed_us, arrival) = (m.ino, m.ctime_us, m.env.arrival);
    Ok(Held {
        ino,
        facts: m.into_facts(now()),
        committed_us,
        requeued_copy,
        arrival,
    })
}

/// What [`facts_of`] reads of a held message.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its inode.
    pub ino: u64,
    /// What the rules see.
    pub facts: Facts,
    /// Its commit time (ctime, µs).
    pub committed_us: i64,
    /// A copy that already went round through maildrop (by age).
    pub requeued_copy: bool,
    /// Its arrival time (`T`: seconds, µs), which a copy made by
    /// requeueing keeps.
    pub arrival: Option<(i64, i64)>,
}

impl Message {
    /// What the rules see of this message at `now` (headers only if they
    /// were read at open).
    pub fn into_facts(self, now: i64) -> Facts {
        Facts {
            size: self.env.size.map_or(0, |s| s.data_size),
            age: now
                .saturating_sub(self.env.expiry_base().unwrap_or(now))
                .max(0) as u64,
            held: (now - self.ctime_us.div_euclid(1_000_000)).max(0) as u64,
            sender: self.sender,
            recipients: self.recipients,
            headers: self.headers,
        }
    }
}
