//! The spool: the queue directory opened once, cached handles on its
//! directories, where a queue ID lives, and which directories await an
//! fsync. The gate is in [`super::gate`], the queue lock in [`super::lock`],
//! directory walks in [`super::walk`].
//!
//! Nothing here changes a queue file: that is the mover's job alone
//! (`queue::relocate`, reached through [`super::act`]).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
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
    dirs: RefCell<HashMap<String, (Rc<OwnedFd>, u64)>>,
    /// Directories changed by renames and not yet fsync'ed.
    unsynced: RefCell<HashSet<String>>,
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

    /// Notes that a rename changed directory `rel`.
    pub fn changed(&self, rel: &str) {
        self.unsynced.borrow_mut().insert(rel.to_string());
    }

    /// fsyncs every directory changed since the last call. Bulk commands
    /// call it once at the end: a rename is atomic whether or not its
    /// directory was synced, so a crash or power loss before this point
    /// leaves each message either moved or not moved, never both or
    /// neither; the sync only makes the moves durable.
    // Assumption A4: a rename is atomic across a crash, synced or not.
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
