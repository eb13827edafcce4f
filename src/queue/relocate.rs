//! The mover: the only code in posthold that renames, changes times or
//! modes, or unlinks queue files. `clippy.toml` forbids those calls
//! everywhere else; this module alone is allowed them.
//!
//! A move is one `renameat2(RENAME_NOREPLACE)` between directory handles,
//! keeping the file's name and so its inode-derived queue ID. Each step
//! below names the race it closes. On failure the error ([`MoveError`]) says
//! where the file is now and what had already changed ([`FileState`]).
//!
//! Crash safety: the only change that matters is the rename, which is
//! atomic; an mtime or mode change before it is harmless where the file is,
//! and a crash after it leaves the file complete in its new queue. See
//! SAFETY.md for the case analysis.

// S1: the one module of the library and binary allowed the calls that
// change queue files (clippy.toml); it is private to the queue layer.
#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, RenameFlags, renameat2};
use nix::sys::stat::{Mode, fchmod, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

use super::gate::Admitted;
use super::spool::{Location, Spool};

/// What went wrong in a move, where the file is now and what had already
/// changed (the tempfile pattern: the caller never has to guess).
#[derive(Debug)]
pub struct MoveError {
    kind: MoveErrorKind,
    at: Location,
    state: FileState,
}

/// Why a move failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MoveErrorKind {
    /// S4: a file with that name exists in the target; nothing overwritten.
    Exists,
    /// S2: the target is on another file system; nothing copied.
    CrossDevice,
    /// S4: the kernel or file system lacks RENAME_NOREPLACE; refused.
    NoReplaceUnsupported,
    /// S5: the file changed name or inode since the gate; someone else
    /// (postsuper, qmgr) got there first.
    Raced,
    /// Another system error, with the step that failed.
    Io(String),
}

/// What a failed move had already done to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileState {
    /// Nothing: the file is unchanged and where it was.
    Unchanged,
    /// Where it was, with its mode changed (the expire bit).
    ModeSet,
    /// Where it was, under its old name, but its defer, bounce and trace
    /// logs already carry the new ID (`check --repair`).
    LogsRenamed,
    /// Moved aside into quarantine, out of Postfix's sight (`delete`).
    MovedAside,
    /// Renamed into its target queue.
    Moved,
}

impl MoveError {
    fn new(kind: MoveErrorKind, at: &Location) -> MoveError {
        MoveError {
            kind,
            at: at.clone(),
            state: FileState::Unchanged,
        }
    }

    fn io(at: &Location, what: String) -> MoveError {
        MoveError::new(MoveErrorKind::Io(what), at)
    }

    fn with_state(mut self, state: FileState) -> MoveError {
        self.state = state;
        self
    }

    /// Why it failed.
    pub fn kind(&self) -> &MoveErrorKind {
        &self.kind
    }

    /// Where the file is now.
    pub fn location(&self) -> &Location {
        &self.at
    }

    /// What had already changed.
    pub fn state(&self) -> FileState {
        self.state
    }
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            MoveErrorKind::Exists => write!(f, "target exists: not overwritten")?,
            MoveErrorKind::CrossDevice => write!(f, "target on another file system: not copied")?,
            MoveErrorKind::NoReplaceUnsupported => {
                write!(f, "RENAME_NOREPLACE not supported here: refused")?
            }
            MoveErrorKind::Raced => write!(f, "changed by another process meanwhile: left alone")?,
            MoveErrorKind::Io(e) => write!(f, "{e}")?,
        }
        match self.state {
            FileState::Unchanged => Ok(()),
            FileState::ModeSet => write!(f, " (mode changed, still in {})", self.at.dir),
            FileState::LogsRenamed => write!(
                f,
                " (its logs already carry the new ID; the message is still {})",
                self.at.path()
            ),
            FileState::MovedAside | FileState::Moved => {
                write!(f, " (the message is now {})", self.at.path())
            }
        }
    }
}

/// What to do to the file's times when moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// Leave atime and mtime as they are.
    Keep,
    /// Set atime and mtime to now (release to incoming, requeue).
    Now,
    /// Set them to now only when the mtime is in the future (release to
    /// deferred: a deferred file's mtime is its next retry time).
    NotInFuture,
}

/// Opens (creating when missing) the target directory `rel` for a move.
/// A missing hash directory is made under a temporary name, given mode
/// 0700 and mail_owner, fsync'ed, and only then renamed into place (without
/// replacing): its final name never exists with the wrong owner, even after
/// a crash, so qmgr can always move files out of it.
fn target_dir(spool: &Spool, rel: &str, loc: &Location) -> Result<Rc<OwnedFd>, MoveError> {
    if let Ok(d) = spool.dir_cached(rel) {
        return Ok(d);
    }
    let io = |what: String| MoveError::io(loc, what);
    let mut path = String::new();
    for part in rel.split('/') {
        let parent = path.clone();
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        if spool.dir(&path).is_ok() {
            continue;
        }
        // Only hash levels (one character) and posthold's own quarantine
        // directory are ever created; a missing queue is a broken spool.
        if part.len() != 1 && path != crate::queue::spool::QUARANTINE {
            return Err(io(format!(
                "{path}: missing queue directory (run postfix check)"
            )));
        }
        let tmp = format!(
            "{}{}.posthold-mkdir-{}",
            parent,
            if parent.is_empty() { "" } else { "/" },
            std::process::id()
        );
        match mkdirat(&spool.root, tmp.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(format!("mkdir {tmp}: {e}"))),
        }
        let d = spool
            .dir(&tmp)
            .map_err(|e| io(format!("open {tmp}: {e}")))?;
        fchown(
            &d,
            Some(Uid::from_raw(spool.owner.0)),
            Some(Gid::from_raw(spool.owner.1)),
        )
        .map_err(|e| io(format!("chown {tmp}: {e}")))?;
        // Explicitly 0700 whatever the umask.
        fchmod(&d, Mode::from_bits_truncate(0o700)).map_err(|e| io(format!("chmod {tmp}: {e}")))?;
        fsync(&d).map_err(|e| io(format!("fsync {tmp}: {e}")))?;
        match renameat2(
            &spool.root,
            tmp.as_str(),
            &spool.root,
            path.as_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            // Someone (Postfix, another posthold) made it meanwhile: use theirs.
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                let _ = unlinkat(&spool.root, tmp.as_str(), UnlinkatFlags::RemoveDir);
            }
            Err(e) => {
                let _ = unlinkat(&spool.root, tmp.as_str(), UnlinkatFlags::RemoveDir);
                return Err(io(format!("rename {tmp} to {path}: {e}")));
            }
        }
        if let Ok(p) = spool.dir(if parent.is_empty() { "." } else { &parent }) {
            let _ = fsync(&p);
        }
    }
    spool
        .dir_cached(rel)
        .map_err(|e| MoveError::io(loc, format!("open {rel}: {e}")))
}

/// Creates posthold's quarantine directory (0700, mail_owner) if missing.
pub fn ensure_quarantine(spool: &Spool) -> Result<(), MoveError> {
    let loc = Location {
        queue: crate::queue::spool::QUARANTINE.into(),
        dir: crate::queue::spool::QUARANTINE.into(),
        id: String::new(),
    };
    target_dir(spool, crate::queue::spool::QUARANTINE, &loc).map(|_| ())
}

/// Moves an admitted file into `queue`, under the same name. Returns the
/// new location. The flock taken by the gate is held throughout and
/// released when the file is dropped at the end.
pub fn move_to(
    spool: &Spool,
    adm: Admitted,
    queue: &str,
    times: Times,
) -> Result<Location, MoveError> {
    let loc = adm.loc.clone();
    let id = loc.id.as_str();
    let to = Location {
        queue: queue.to_string(),
        dir: spool.queue_dir(queue, id),
        id: loc.id.clone(),
    };
    // 1. Directory handles: source and target (created 0700 mail_owner).
    let src = spool
        .dir_cached(&loc.dir)
        .map_err(|e| MoveError::io(&loc, format!("open {}: {e}", loc.dir)))?;
    let dst = target_dir(spool, &to.dir, &loc)?;
    // S2: one file system. Checked here as well as by the kernel (EXDEV).
    if spool.dir_device(&to.dir) != Some(adm.st.st_dev) {
        return Err(MoveError::new(MoveErrorKind::CrossDevice, &loc));
    }
    // 2. Times first, on the open file: if we crash before the rename the
    //    file sits where it was with a new mtime, which no queue minds; so
    //    the file arrives in its new queue already eligible.
    let set_now = match times {
        Times::Keep => false,
        Times::Now => true,
        Times::NotInFuture => adm.st.st_mtime > crate::util::now(),
    };
    if set_now {
        let now = TimeSpec::UTIME_NOW;
        futimens(adm.file.as_fd(), &now, &now)
            .map_err(|e| MoveError::io(&loc, format!("utime: {e}")))?;
    }
    // 3. S5, Assumption A2: the name still refers to the file we admitted (postsuper or
    //    qmgr may have renamed or replaced it since the gate).
    match fstatat(&*src, id, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) if s.st_dev == adm.st.st_dev && s.st_ino == adm.st.st_ino => {}
        _ => return Err(MoveError::new(MoveErrorKind::Raced, &loc)),
    }
    // 4. S6: release posthold's flock before the file becomes visible in its
    //    new queue: a qmgr scanning incoming or deferred that met our lock
    //    would log "skipped, still being delivered" and push the file's
    //    mtime 60 s into the future. Another posthold process that admits
    //    the file now can only lose the race below (ENOENT or a changed
    //    inode), since the rename is atomic and never replaces.
    let _ = adm.file.unlock();
    // 5. S3/S4: the rename itself, never overwriting.
    match renameat2(&*src, id, &*dst, id, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Err(MoveError::new(MoveErrorKind::Exists, &loc)),
        Err(Errno::EXDEV) => return Err(MoveError::new(MoveErrorKind::CrossDevice, &loc)),
        // Assumption A5: no RENAME_NOREPLACE here means refusal (S4).
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            return Err(MoveError::new(MoveErrorKind::NoReplaceUnsupported, &loc));
        }
        Err(Errno::ENOENT) => return Err(MoveError::new(MoveErrorKind::Raced, &loc)),
        Err(e) => return Err(MoveError::io(&loc, format!("rename: {e}"))),
    }
    // 6. Record the change first: whatever the check below says, the
    //    rename happened and both directories need their fsync.
    spool.changed(&to.dir);
    spool.changed(&loc.dir);
    //    The target name refers to the same inode (name and ID agree). It
    //    may already be gone: qmgr takes mail out of incoming within
    //    milliseconds. Only a different file there would be an anomaly.
    match fstatat(&*dst, id, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) if s.st_dev != adm.st.st_dev || s.st_ino != adm.st.st_ino => {
            return Err(MoveError::io(
                &to,
                "BUG: another file at the target after the rename".to_string(),
            )
            .with_state(FileState::Moved));
        }
        _ => {}
    }
    // 7. Durability: both directories are fsync'ed by Spool::sync_dirs,
    //    once per command (see there why that keeps every move atomic).
    drop(adm);
    Ok(to)
}

/// Renames an admitted file inside its directory to `new_id` (the ID its
/// inode gives), its defer, bounce and trace logs first, as `postsuper -s`
/// does. Never overwrites.
pub fn rename_id(spool: &Spool, adm: Admitted, new_id: &str) -> Result<Location, MoveError> {
    let loc = adm.loc.clone();
    // S3: the new name must encode the admitted file's own inode.
    if !queue_format::queue_id::is_legal(new_id)
        || !queue_format::queue_id::matches_inode(new_id, adm.st.st_ino)
    {
        return Err(MoveError::io(
            &loc,
            format!("new ID {new_id} does not match inode {}", adm.st.st_ino),
        ));
    }
    // The message's new name must be free before any log is renamed.
    if let Ok(d) = spool.dir(&spool.queue_dir(&loc.queue, new_id))
        && fstatat(&d, new_id, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    {
        return Err(MoveError::new(MoveErrorKind::Exists, &loc));
    }
    // Once a log carries the new ID, every error says so.
    let mut state = FileState::Unchanged;
    for log in ["defer", "bounce", "trace"] {
        let from = spool.queue_dir(log, &loc.id);
        let to = spool.queue_dir(log, new_id);
        let Ok(fd) = spool.dir(&from) else { continue };
        if fstatat(&fd, loc.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_err() {
            continue;
        }
        let td = target_dir(spool, &to, &loc).map_err(|e| e.with_state(state))?;
        match renameat2(
            &fd,
            loc.id.as_str(),
            &td,
            new_id,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => state = FileState::LogsRenamed,
            Err(Errno::ENOENT) => {}
            Err(Errno::EEXIST) => {
                return Err(MoveError::new(MoveErrorKind::Exists, &loc).with_state(state));
            }
            Err(e) => {
                return Err(MoveError::io(&loc, format!("rename {log} log: {e}")).with_state(state));
            }
        }
        let _ = fsync(&*td);
        let _ = fsync(&fd);
    }
    let src = spool
        .dir(&loc.dir)
        .map_err(|e| MoveError::io(&loc, format!("open {}: {e}", loc.dir)).with_state(state))?;
    let to_dir = spool.queue_dir(&loc.queue, new_id);
    let dst = target_dir(spool, &to_dir, &loc).map_err(|e| e.with_state(state))?;
    match fstatat(&src, loc.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) if s.st_dev == adm.st.st_dev && s.st_ino == adm.st.st_ino => {}
        _ => return Err(MoveError::new(MoveErrorKind::Raced, &loc).with_state(state)),
    }
    match renameat2(
        &src,
        loc.id.as_str(),
        &dst,
        new_id,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            return Err(MoveError::new(MoveErrorKind::Exists, &loc).with_state(state));
        }
        Err(Errno::EXDEV) => {
            return Err(MoveError::new(MoveErrorKind::CrossDevice, &loc).with_state(state));
        }
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            return Err(MoveError::new(MoveErrorKind::NoReplaceUnsupported, &loc).with_state(state));
        }
        Err(e) => return Err(MoveError::io(&loc, format!("rename: {e}")).with_state(state)),
    }
    let _ = fsync(&*dst);
    let _ = fsync(&src);
    drop(adm);
    Ok(Location {
        queue: loc.queue,
        dir: to_dir,
        id: new_id.to_string(),
    })
}

/// Marks an admitted file for return to sender: adds the group-execute bit
/// (0010), as `postsuper -e` does. Other mode bits are kept.
pub fn add_expire_bit(adm: &Admitted) -> Result<(), MoveError> {
    // The mode now, not at admission: qmgr or flush may have changed the
    // 0040 bit meanwhile, and it must be kept.
    let now_mode = nix::sys::stat::fstat(adm.file.as_fd())
        .map_err(|e| MoveError::io(&adm.loc, format!("fstat: {e}")))?
        .st_mode;
    let mode = (now_mode & 0o7777) | 0o010;
    fchmod(adm.file.as_fd(), Mode::from_bits_truncate(mode))
        .map_err(|e| MoveError::io(&adm.loc, format!("chmod: {e}")))?;
    adm.file
        .sync_all()
        .map_err(|e| MoveError::io(&adm.loc, format!("fsync: {e}")).with_state(FileState::ModeSet))
}

/// Deletes an admitted message: its defer, bounce and trace logs first,
/// then the queue file (as postsuper -d). The one irreversible action.
pub fn delete(spool: &Spool, adm: Admitted) -> Result<(), MoveError> {
    let (dev, ino) = (adm.st.st_dev, adm.st.st_ino);
    // S10: only delete unlinks, and only in this order.
    // 1. Take the message out of Postfix's sight first, by the usual
    //    rename: if qmgr took it meanwhile (deferred -> active) this fails
    //    and nothing, not even its logs, is touched. A crash after this
    //    leaves it in quarantine, where `restore` brings it back.
    let (aside, state) = if adm.loc.queue == crate::queue::spool::QUARANTINE {
        drop(adm.file);
        (adm.loc, FileState::Unchanged)
    } else {
        (
            move_to(spool, adm, crate::queue::spool::QUARANTINE, Times::Keep)?,
            FileState::MovedAside,
        )
    };
    // 2. Its logs, so that a later message that reuses the ID does not
    //    inherit them.
    for log in ["defer", "bounce", "trace"] {
        let dir = spool.queue_dir(log, &aside.id);
        if let Ok(d) = spool.dir(&dir) {
            match unlinkat(&d, aside.id.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(
                        MoveError::io(&aside, format!("unlink {dir}/{}: {e}", aside.id))
                            .with_state(state),
                    );
                }
            }
            let _ = fsync(&d);
        }
    }
    // 3. The message itself, if it is still the file we admitted.
    let src = spool
        .dir(&aside.dir)
        .map_err(|e| MoveError::io(&aside, format!("open {}: {e}", aside.dir)).with_state(state))?;
    match fstatat(&src, aside.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) if s.st_dev == dev && s.st_ino == ino => {}
        _ => return Err(MoveError::new(MoveErrorKind::Raced, &aside).with_state(state)),
    }
    unlinkat(&src, aside.id.as_str(), UnlinkatFlags::NoRemoveDir)
        .map_err(|e| MoveError::io(&aside, format!("unlink: {e}")).with_state(state))?;
    let _ = fsync(&src);
    Ok(())
}
