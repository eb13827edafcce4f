//! The spool: directory handles on the queue directory, where a queue ID
//! lives, and the admission gate every file passes before posthold changes
//! anything.
//!
//! The gate ([`Spool::admit`]) checks, on the open file (so a rename or a
//! swap after the check cannot fool it): a regular file reached without
//! following a symlink; owner bits rwx (committed; group bits are Postfix's
//! flags and are left alone); one link; owned by `mail_owner`; on the queue
//! file system; a legal queue ID whose inode is the file's; a complete queue
//! file (non-zero SIZE, TIME, SENDER, END); no fcntl lock and no flock held
//! by anyone. It returns the file with posthold's own flock held, so that
//! two posthold processes never move the same file at once.
//!
//! Nothing here changes a queue file: that is [`crate::queue::relocate`]'s job
//! alone. Refusals are values ([`Refusal`]) with a reason to print.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, fcntl, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::User;
use queue_format::queue_file::{Envelope, read_envelope};
use queue_format::queue_id;
use queue_format::reader::Reader;

use crate::config::Config;
use crate::error::Fatal;

/// The directory posthold owns inside the queue directory for quarantined
/// messages. Postfix never scans it.
pub const QUARANTINE: &str = "posthold-quarantine";

/// Queues a message can be found in, in the order IDs are looked up.
pub const SEARCH_ORDER: &[&str] = &[
    "hold", "incoming", "deferred", "active", "maildrop", QUARANTINE,
];

/// Where a queue file is: its queue, its directory relative to the queue
/// directory (with hash levels), and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Queue name (`hold`, `deferred`, ...).
    pub queue: String,
    /// Directory relative to the queue directory (`deferred/A`).
    pub dir: String,
    /// The queue ID (file name).
    pub id: String,
}

impl Location {
    /// Path relative to the queue directory.
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir, self.id)
    }
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

/// The queue directory, opened once.
#[derive(Debug)]
pub struct Spool {
    /// The settings.
    pub cfg: Config,
    /// The queue directory itself.
    pub root: OwnedFd,
    /// Its device: every queue file must be on it.
    pub dev: u64,
    /// mail_owner's uid and gid.
    pub owner: (u32, u32),
    /// Directory handles opened so far, by relative path (bulk commands
    /// touch the same few directories thousands of times).
    dirs: RefCell<HashMap<String, (Rc<OwnedFd>, u64)>>,
    /// Directories changed by renames and not yet fsync'ed.
    unsynced: RefCell<HashSet<String>>,
}

fn io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl Spool {
    /// Opens the queue directory of `cfg`.
    pub fn open(cfg: Config) -> Result<Spool, Fatal> {
        let q = &cfg.queue_directory;
        let root = openat(
            nix::fcntl::AT_FDCWD,
            q.as_path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Fatal::config(format!("{}: {e}", q.display())))?;
        let st = fstat(&root).map_err(|e| Fatal::config(format!("{}: {e}", q.display())))?;
        let user = User::from_name(&cfg.mail_owner)
            .ok()
            .flatten()
            .ok_or_else(|| Fatal::config(format!("mail_owner {}: no such user", cfg.mail_owner)))?;
        Ok(Spool {
            dev: st.st_dev,
            owner: (user.uid.as_raw(), user.gid.as_raw()),
            root,
            cfg,
            dirs: RefCell::default(),
            unsynced: RefCell::default(),
        })
    }

    /// A directory handle from the cache, opened on first use. A cached
    /// handle whose directory was removed meanwhile makes the next rename
    /// fail (ENOENT), which is reported and changes nothing.
    pub fn dir_cached(&self, rel: &str) -> std::io::Result<Rc<OwnedFd>> {
        if let Some((d, _)) = self.dirs.borrow().get(rel) {
            return Ok(Rc::clone(d));
        }
        let d = Rc::new(self.dir(rel)?);
        let dev = fstat(&*d).map_err(io)?.st_dev;
        self.dirs
            .borrow_mut()
            .insert(rel.to_string(), (Rc::clone(&d), dev));
        Ok(d)
    }

    /// The device of a directory opened through [`Spool::dir_cached`].
    pub fn dir_device(&self, rel: &str) -> Option<u64> {
        self.dirs.borrow().get(rel).map(|(_, dev)| *dev)
    }

    /// Serializes posthold processes (the daemon and commands run by hand):
    /// an exclusive flock on the queue directory itself, which Postfix
    /// never locks. Held while files are admitted and moved; released when
    /// the returned file is dropped. Blocks while another posthold holds it.
    pub fn exclusive(&self) -> Result<File, Fatal> {
        let f = File::open(&self.cfg.queue_directory)
            .map_err(|e| Fatal::runtime(format!("{}: {e}", self.cfg.queue_directory.display())))?;
        f.lock().map_err(|e| {
            Fatal::runtime(format!("{}: lock: {e}", self.cfg.queue_directory.display()))
        })?;
        Ok(f)
    }

    /// [`Spool::exclusive`] for the daemon: waits in 100 ms steps and gives
    /// up (None) when `stop` is set, so SIGTERM is never stuck behind a
    /// command run by hand.
    pub fn exclusive_until(
        &self,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<File>, Fatal> {
        let f = File::open(&self.cfg.queue_directory)
            .map_err(|e| Fatal::runtime(format!("{}: {e}", self.cfg.queue_directory.display())))?;
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(Some(f)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(None);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Fatal::runtime(format!(
                        "{}: lock: {e}",
                        self.cfg.queue_directory.display()
                    )));
                }
            }
        }
    }

    /// Notes that a rename changed directory `rel`.
    pub fn changed(&self, rel: &str) {
        self.unsynced.borrow_mut().insert(rel.to_string());
    }

    /// fsyncs every directory changed since the last call. Bulk commands
    /// call it once at the end: a rename is atomic whether or not its
    /// directory was synced, so a crash or power loss before this point
    /// leaves each message either moved or not moved, never both or
    /// neither; the sync only makes the moves durable.
    pub fn sync_dirs(&self) -> std::io::Result<()> {
        let dirs: Vec<String> = self.unsynced.borrow_mut().drain().collect();
        let mut first_err = None;
        for rel in dirs {
            if let Ok(d) = self.dir_cached(&rel)
                && let Err(e) = nix::unistd::fsync(&*d)
            {
                first_err.get_or_insert(io(e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Opens a directory below the queue directory without following
    /// symlinks at its last component.
    pub fn dir(&self, rel: &str) -> std::io::Result<OwnedFd> {
        openat(
            &self.root,
            rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)
    }

    /// The directory (relative) where `id` belongs in `queue`.
    pub fn queue_dir(&self, queue: &str, id: &str) -> String {
        let p = self.cfg.queue_path(queue, id);
        p[..p.len() - id.len() - 1].to_string()
    }

    /// Where `id` is, searching `queues` in order at their computed paths
    /// (as postsuper does). Any directory entry counts, so that the gate
    /// can say why a symlink or directory is refused.
    pub fn locate(&self, id: &str, queues: &[&str]) -> Option<Location> {
        if !queue_id::is_legal(id) {
            return None;
        }
        queues.iter().find_map(|q| {
            let dir = self.queue_dir(q, id);
            let d = self.dir(&dir).ok()?;
            fstatat(&d, id, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
            Some(Location {
                queue: q.to_string(),
                dir,
                id: id.to_string(),
            })
        })
    }

    /// Every entry with a legal name in `queue`, descending into
    /// one-character hash directories. Illegal names (temporary files,
    /// `#FIX` names) are not returned: no one may act on them.
    pub fn entries(&self, queue: &str) -> Vec<Location> {
        let mut out = Vec::new();
        let mut stack = vec![queue.to_string()];
        let hashed = self.cfg.is_hashed(queue);
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(self.cfg.queue_directory.join(&dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if hashed && name.len() == 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(format!("{dir}/{name}"));
                } else if queue_id::is_legal(&name) {
                    out.push(Location {
                        queue: queue.to_string(),
                        dir: dir.clone(),
                        id: name,
                    });
                }
            }
        }
        out
    }

    /// The admission gate: checks the file at `loc` and returns it with
    /// posthold's flock held, or says why not. Changes nothing.
    pub fn admit(&self, loc: &Location) -> Result<Admitted, Refusal> {
        self.admit_with(loc, true, true)
    }

    /// The gate's checks without taking any lock and without the lock
    /// probe's flock: for read-only audits (`check`), which must not make
    /// qmgr meet a lock.
    pub fn inspect(&self, loc: &Location) -> Result<Admitted, Refusal> {
        self.admit_with(loc, true, false)
    }

    /// The gate, optionally without the name-to-inode check (used only by
    /// `check --repair` to rename a file to the ID its inode gives).
    pub fn admit_with(
        &self,
        loc: &Location,
        check_inode: bool,
        lock: bool,
    ) -> Result<Admitted, Refusal> {
        // G1: the name is a legal queue ID, so it is a single path component.
        if !queue_id::is_legal(&loc.id) {
            return Err(Refusal::IllegalName);
        }
        let dir = self.dir_cached(&loc.dir).map_err(|_| Refusal::NotFound)?;
        // G2: open without following a symlink; O_NONBLOCK so that a FIFO
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
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(Refusal::NotRegular);
        }
        if st.st_mode & 0o700 != 0o700 {
            return Err(Refusal::NotReady(st.st_mode & 0o7777));
        }
        if st.st_nlink != 1 {
            return Err(Refusal::Links(st.st_nlink));
        }
        if st.st_uid != self.owner.0 {
            return Err(Refusal::WrongOwner(st.st_uid));
        }
        if st.st_dev != self.dev {
            return Err(Refusal::OtherDevice);
        }
        if check_inode && !queue_id::matches_inode(&loc.id, st.st_ino) {
            return Err(Refusal::InodeMismatch(st.st_ino));
        }
        let file = File::from(fd);
        // G9: a complete queue file (finished SIZE, TIME, SENDER, END).
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
        // G10: nobody holds an fcntl lock (probe, no lock taken) ...
        let mut fl = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
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
