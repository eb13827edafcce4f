//! The spool: the queue directory opened once, cached handles on its
//! directories, where a queue ID lives, and which directories await an
//! fsync. The gate is in [`super::gate`], the queue lock in [`super::lock`],
//! directory walks in [`super::walk`].
//!
//! Nothing here changes a queue file: that is the mover's job alone
//! (`queue::relocate`, reached through [`super::act`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::unistd::User;
use queue_format::queue_id;

use crate::config::Config;
use crate::error::Fatal;

/// The directory posthold owns inside the queue directory for quarantined
/// messages. Postfix never scans it.
pub const QUARANTINE: &str = "posthold-quarantine";

/// Queues a message can be found in, in the order IDs are looked up.
pub const SEARCH_ORDER: &[&str] = &[
    "hold", "incoming", "deferred", "active", "maildrop", QUARANTINE,
];

/// A POSIX write lock on a whole file, for `F_GETLK` probes and `F_SETLK`.
pub(crate) fn whole_file_write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// A cached directory handle and what it was when opened.
#[derive(Debug)]
struct Cached {
    fd: Rc<OwnedFd>,
    dev: u64,
    ino: u64,
    checked: Instant,
}

/// Opens `rel` below the directory `root` without following a symlink in
/// any component, and never above `root` (S5, S2): `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it (Linux
/// 5.6), else component by component with `O_NOFOLLOW`. A symlink gives
/// `ELOOP`. `flags` apply to the last component (`O_NOFOLLOW` and
/// `O_CLOEXEC` are always added).
pub fn open_beneath(root: impl AsFd, rel: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let last = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new()
        .flags(last)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(root.as_fd(), rel, how) {
        // Older kernels, or a seccomp filter that does not know the call.
        Err(Errno::ENOSYS | Errno::EPERM) => {}
        r => return r,
    }
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(Errno::EINVAL);
    }
    let walk = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let f = if i + 1 == parts.len() { last } else { walk };
        let fd = match &cur {
            Some(dir) => openat(dir, *part, f, Mode::empty()),
            None => openat(root.as_fd(), *part, f, Mode::empty()),
        }?;
        cur = Some(fd);
    }
    cur.ok_or(Errno::EINVAL)
}

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
    dirs: RefCell<HashMap<String, Cached>>,
    /// How old a cached handle may be before it is checked against the
    /// path again (zero: on every use).
    recheck: Duration,
    /// Directories changed by renames and not yet fsync'ed.
    unsynced: RefCell<HashMap<String, Rc<OwnedFd>>>,
}

pub(crate) fn io(e: Errno) -> std::io::Error {
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
            recheck: Duration::from_secs(1),
        })
    }

    /// A directory handle from the cache, opened on first use. A cached
    /// handle older than the recheck interval is checked against its path
    /// first: a directory removed or replaced meanwhile (an administrator
    /// recreating the quarantine, say) is opened afresh, so no move goes
    /// into a directory that is no longer where the queue says.
    pub fn dir_cached(&self, rel: &str) -> std::io::Result<Rc<OwnedFd>> {
        if let Some(c) = self.dirs.borrow_mut().get_mut(rel)
            && (c.checked.elapsed() < self.recheck || self.still_there(rel, c))
        {
            c.checked = Instant::now();
            return Ok(Rc::clone(&c.fd));
        }
        self.dirs.borrow_mut().remove(rel);
        let d = Rc::new(self.dir(rel)?);
        let st = fstat(&*d).map_err(io)?;
        self.dirs.borrow_mut().insert(
            rel.to_string(),
            Cached {
                fd: Rc::clone(&d),
                dev: st.st_dev,
                ino: st.st_ino,
                checked: Instant::now(),
            },
        );
        Ok(d)
    }

    /// Whether the path `rel`, resolved without following a symlink in
    /// any component (S5), still names the cached directory.
    fn still_there(&self, rel: &str, c: &Cached) -> bool {
        open_beneath(&self.root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .and_then(|fd| fstat(&fd))
            .is_ok_and(|st| (st.st_dev, st.st_ino) == (c.dev, c.ino))
    }

    /// Checks cached handles against their paths on every use (the
    /// daemon's setting: it runs for months while administrators work).
    pub fn recheck_always(&mut self) {
        self.recheck = Duration::ZERO;
    }

    /// The device of a directory opened through [`Spool::dir_cached`].
    pub fn dir_device(&self, rel: &str) -> Option<u64> {
        self.dirs.borrow().get(rel).map(|c| c.dev)
    }

    /// Notes that a rename changed directory `rel`, through the handle
    /// `fd` (the very directory the rename wrote to is the one fsynced,
    /// even if the path names another one by then).
    pub fn changed(&self, rel: &str, fd: &Rc<OwnedFd>) {
        self.unsynced
            .borrow_mut()
            .insert(rel.to_string(), Rc::clone(fd));
    }

    /// fsyncs every directory changed since the last call. Bulk commands
    /// call it once at the end, the daemon once per batch, both before
    /// they report the moves: a rename is atomic whether or not its
    /// directory was synced, so a crash or power loss before this point
    /// leaves each message either moved or not moved, never both or
    /// neither; the sync makes the moves durable.
    // Assumption A4: a rename is atomic across a crash, synced or not.
    pub fn sync_dirs(&self) -> std::io::Result<()> {
        let dirs: Vec<(String, Rc<OwnedFd>)> = self.unsynced.borrow_mut().drain().collect();
        let mut first_err = None;
        for (rel, d) in dirs {
            if let Err(e) = nix::unistd::fsync(&*d) {
                first_err.get_or_insert(std::io::Error::other(format!("{rel}: {e}")));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Opens a directory below the queue directory without following a
    /// symlink in any component (S5).
    pub fn dir(&self, rel: &str) -> std::io::Result<OwnedFd> {
        open_beneath(&self.root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(io)
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
        // S9: only a legal ID becomes a path.
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
}
