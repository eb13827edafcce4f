//! The admission gate: every file passes it before posthold changes
//! anything.
//!
//! The gate ([`Spool::admit`]) checks, on the open file (so a rename or a
//! swap after the check cannot fool it): a regular file reached without
//! following a symlink; owner bits rwx (committed; group bits are Postfix's
//! flags and are left alone); one link; owned by `mail_owner`; on the queue
//! file system; a legal queue ID whose inode is the file's; a complete queue
//! file (non-zero SIZE, TIME, SENDER, END); no fcntl lock and no flock held
//! by anyone (G1 to G10 below). It returns the file with posthold's own
//! flock held, so that two posthold processes never move the same file at
//! once.
//!
//! Nothing here changes a queue file. Refusals are values ([`Refusal`])
//! with a reason to print.

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use queue_format::queue_file::{Envelope, read_envelope};
use queue_format::queue_id;
use queue_format::reader::Reader;

use super::spool::{Location, Spool};

/// What the gate is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Every check, and posthold's flock taken: the file may be moved.
    Move,
    /// Every check, no lock taken: a read-only audit.
    Inspect,
    /// Every check but the name-to-inode one, flock taken: only for
    /// `check --repair`, which renames a file to the ID its inode gives.
    RenameToInode,
}

/// Why the gate refused a file. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The name is not a legal queue ID.
    IllegalName,
    /// No such message in the searched queues (or it went away).
    NotFound,
    /// A symbolic link.
    Symlink,
    /// Not a regular file.
    NotRegular,
    /// Owner bits are not rwx: cleanup has not committed the file.
    NotReady(u32),
    /// More than one hard link.
    Links(u64),
    /// Not owned by mail_owner.
    WrongOwner(u32),
    /// On another file system than the queue directory.
    OtherDevice,
    /// The name does not encode the file's inode.
    InodeMismatch(u64),
    /// A process holds an fcntl lock.
    FcntlLocked(i32),
    /// A process holds a flock.
    Flocked,
    /// The content is not a complete queue file.
    Corrupt(String),
    /// An I/O error while checking.
    Io(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::IllegalName => write!(f, "not a legal queue ID"),
            Refusal::NotFound => write!(f, "no such message"),
            Refusal::Symlink => write!(f, "symbolic link"),
            Refusal::NotRegular => write!(f, "not a regular file"),
            Refusal::NotReady(m) => write!(f, "not ready: mode {m:04o}, still being written"),
            Refusal::Links(n) => write!(f, "file has {n} links"),
            Refusal::WrongOwner(u) => write!(f, "owned by uid {u}, not mail_owner"),
            Refusal::OtherDevice => write!(f, "not on the queue file system"),
            Refusal::InodeMismatch(i) => write!(f, "name does not match inode {i}"),
            Refusal::FcntlLocked(pid) => write!(f, "locked (fcntl) by pid {pid}"),
            Refusal::Flocked => write!(f, "locked (flock) by another process"),
            Refusal::Corrupt(e) => write!(f, "corrupt: {e}"),
            Refusal::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A file that passed the gate, with posthold's flock held on it until it
/// is dropped.
#[derive(Debug)]
pub struct Admitted {
    /// Where it was when admitted.
    pub loc: Location,
    /// The open file, locked (flock, exclusive) by posthold.
    pub file: File,
    /// Its status when admitted.
    pub st: FileStat,
    /// Its envelope.
    pub env: Envelope,
}

impl Spool {
    /// The admission gate: checks the file at `loc` and returns it with
    /// posthold's flock held, or says why not. Changes nothing.
    pub fn admit(&self, loc: &Location) -> Result<Admitted, Refusal> {
        self.gate(loc, Gate::Move)
    }

    /// The gate's checks without taking any lock: for read-only audits
    /// (`check`), which must not make qmgr meet a lock.
    pub fn inspect(&self, loc: &Location) -> Result<Admitted, Refusal> {
        self.gate(loc, Gate::Inspect)
    }

    /// The gate, as `purpose` asks.
    pub fn gate(&self, loc: &Location, purpose: Gate) -> Result<Admitted, Refusal> {
        let check_inode = purpose != Gate::RenameToInode;
        let lock = purpose != Gate::Inspect;
        // G1, S9: the name is a legal queue ID, so it is a single path
        // component. Assumption A3: names and files may be hostile.
        if !queue_id::is_legal(&loc.id) {
            return Err(Refusal::IllegalName);
        }
        let dir = self.dir_cached(&loc.dir).map_err(|_| Refusal::NotFound)?;
        // G2, S5: open without following a symlink; O_NONBLOCK so that a FIFO
        // planted in the queue cannot hang us.
        let fd = match openat(
            &*dir,
            loc.id.as_str(),
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(Refusal::Symlink),
            Err(Errno::ENOENT) => return Err(Refusal::NotFound),
            Err(e) => return Err(Refusal::Io(format!("open: {e}"))),
        };
        // G3..G8 on the open file: what we check is what we would move.
        let st = fstat(&fd).map_err(|e| Refusal::Io(format!("fstat: {e}")))?;
        // G3, S5: a regular file.
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(Refusal::NotRegular);
        }
        // G4, S5, Assumption A1: committed when the owner bits are rwx.
        if st.st_mode & 0o700 != 0o700 {
            return Err(Refusal::NotReady(st.st_mode & 0o7777));
        }
        // G5, S5: one link (a second name would survive the move).
        if st.st_nlink != 1 {
            return Err(Refusal::Links(st.st_nlink));
        }
        // G6, S5: owned by mail_owner.
        if st.st_uid != self.owner.0 {
            return Err(Refusal::WrongOwner(st.st_uid));
        }
        // G7, S2: on the queue file system.
        if st.st_dev != self.dev {
            return Err(Refusal::OtherDevice);
        }
        // G8, S3: the name encodes this file's inode.
        if check_inode && !queue_id::matches_inode(&loc.id, st.st_ino) {
            return Err(Refusal::InodeMismatch(st.st_ino));
        }
        let file = File::from(fd);
        // G9, S5: a complete queue file (finished SIZE, TIME, SENDER, END).
        let env = {
            let mut rd = Reader::with_len(
                BufReader::new(&file),
                st.st_size as u64,
                queue_format::reader::Mode::LOGICAL,
            );
            let env = read_envelope(&mut rd).map_err(|e| Refusal::Corrupt(e.to_string()))?;
            env.check_complete()
                .map_err(|e| Refusal::Corrupt(e.to_string()))?;
            env
        };
        // G10, S6: nobody holds an fcntl lock (probe, no lock taken) ...
        let mut fl = super::spool::whole_file_write_lock();
        fcntl(file.as_fd(), FcntlArg::F_GETLK(&mut fl))
            .map_err(|e| Refusal::Io(format!("fcntl: {e}")))?;
        if fl.l_type != libc::F_UNLCK as i16 {
            return Err(Refusal::FcntlLocked(fl.l_pid));
        }
        // ... and no flock; posthold's own exclusive flock is held from
        // here until the Admitted is dropped.
        if !lock {
            return Ok(Admitted {
                loc: loc.clone(),
                file,
                st,
                env,
            });
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Refusal::Flocked),
            Err(std::fs::TryLockError::Error(e)) => return Err(Refusal::Io(format!("flock: {e}"))),
        }
        Ok(Admitted {
            loc: loc.clone(),
            file,
            st,
            env,
        })
    }
}
