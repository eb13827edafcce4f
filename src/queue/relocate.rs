//! The mover: the only code in posthold that renames, changes times or
//! modes, or unlinks queue files. `clippy.toml` forbids those calls
//! everywhere else; this module alone is allowed them.
//!
//! A move is one `renameat2(RENAME_NOREPLACE)` between directory handles,
//! keeping the file's name and so its inode-derived queue ID. Each step
//! below names the race it closes. On failure the error says what state the
//! file is in (always: unchanged, where it was), and hands the location back.
//!
//! Crash safety: the only change that matters is the rename, which is
//! atomic; an mtime or mode change before it is harmless where the file is,
//! and a crash after it leaves the file complete in its new queue. See
//! SAFETY.md for the case analysis.

#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, RenameFlags, renameat2};
use nix::sys::stat::{Mode, fchmod, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

use crate::queue::spool::{Admitted, Location, Spool};

/// What went wrong in a move. The file is unchanged and where it was.
#[derive(Debug)]
#[non_exhaustive]
pub enum MoveError {
    /// S4: a file with that name exists in the target; nothing overwritten.
    Exists(Location),
    /// S2: the target is on another file system; nothing copied.
    CrossDevice(Location),
    /// S4: the kernel or file system lacks RENAME_NOREPLACE; refused.
    NoReplaceUnsupported(Location),
    /// S5: the file changed name or inode since the gate; someone else
    /// (postsuper, qmgr) got there first.
    Raced(Location),
    /// Another system error, with the step that failed.
    Io(Location, String),
}

impl MoveError {
    /// Where the file still is.
    pub fn location(&self) -> &Location {
        match self {
            MoveError::Exists(l)
            | MoveError::CrossDevice(l)
            | MoveError::NoReplaceUnsupported(l)
            | MoveError::Raced(l)
            | MoveError::Io(l, _) => l,
        }
    }
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveError::Exists(_) => write!(f, "target exists: not overwritten"),
            MoveError::CrossDevice(_) => write!(f, "target on another file system: not copied"),
            MoveError::NoReplaceUnsupported(_) => {
                write!(f, "RENAME_NOREPLACE not supported here: refused")
            }
            MoveError::Raced(_) => write!(f, "changed by another process meanwhile: left alone"),
            MoveError::Io(_, e) => write!(f, "{e}"),
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

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
    let io = |what: String| MoveError::Io(loc.clone(), what);
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
        .map_err(|e| MoveError::Io(loc.clone(), format!("open {rel}: {e}")))
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
        .map_err(|e| MoveError::Io(loc.clone(), format!("open {}: {e}", loc.dir)))?;
    let dst = target_dir(spool, &to.dir, &loc)?;
    // S2: one file system. Checked here as well as by the kernel (EXDEV).
    if spool.dir_device(&to.dir) != Some(adm.st.st_dev) {
        return Err(MoveError::CrossDevice(loc));
    }
    // 2. Times first, on the open file: if we crash before the rename the
    //    file sits where it was with a new mtime, which no queue minds; so
    //    the file arrives in its new queue already eligible.
    let set_now = match times {
        Times::Keep => false,
        Times::Now => true,
        Times::NotInFuture => adm.st.st_mtime > now_secs(),
    };
    if set_now {
        let now = TimeSpec::UTIME_NOW;
        futimens(adm.file.as_fd(), &now, &now)
            .map_err(|e| MoveError::Io(loc.clone(), format!("utime: {e}")))?;
    }
    // 3. S5: the name still refers to the file we admitted (postsuper or
    //    qmgr may have renamed or replaced it since the gate).
    match fstatat(&*src, id, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) if s.st_dev == adm.st.st_dev && s.st_ino == adm.st.st_ino => {}
        _ => return Err(MoveError::Raced(loc)),
    }
    // 4. Release posthold's flock before the file becomes visible in its
    //    new queue: a qmgr scanning incoming or deferred that met our lock
    //    would log "skipped, still being delivered" and push the file's
    //    mtime 60 s into the future. Another posthold process that admits
    //    the file now can only lose the race below (ENOENT or a changed
    //    inode), since the rename is atomic and never replaces.
    let _ = adm.file.unlock();
    // 5. S3/S4: the rename itself, never overwriting.
    match renameat2(&*src, id, &*dst, id, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Err(MoveError::Exists(loc)),
        Err(Errno::EXDEV) => return Err(MoveError::CrossDevice(loc)),
        Err(Errno::EINVAL | Errno::ENOSYS) => return Err(MoveError::NoReplaceUnsupported(loc)),
        Err(Errno::ENOENT) => return Err(MoveError::Raced(loc)),
        Err(e) => return Err(MoveError::Io(loc, format!("rename: {e}"))),
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
            return Err(MoveError::Io(
                to,
                "BUG: another file at the target after the rename".to_string(),
            ));
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
        return Err(MoveError::Io(
            loc,
            format!("new ID {new_id} does not match inode {}", adm.st.st_ino),
        ));
    }
    // The message's new name must be free before any log is renamed.
    if let Ok(d) = spool.dir(&spool.queue_dir(&loc.queue, new_id))
        && fstatat(&d, new_id, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    {
        return Err(MoveError::Exists(loc));
    }
    for log in ["defer", "bounce", "trace"] {
        let from = spool.queue_dir(log, &loc.id);
        let to = spool.queue_dir(log, new_id);
        let Ok(fd) = spool.dir(&from) else { continue };
        if fstatat(&fd, loc.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_err() {
            continue;
        }
        let td = target_dir(spool, &to, &loc)?;
        match renameat2(
            &fd,
            loc.id.as_str(),
            &td,
            new_id,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EEXIST) => return Err(MoveError::Exists(loc)),
            Err(e) => return Err(MoveError::Io(loc, format!("rename {log} log: {e}"))),
        }
        let _ = fsync(&*td);
        let _ = fsync(&fd);
    }
    let src = spool
        .dir(&loc.dir)
        .map_err(|e| MoveError::Io(loc.clone(), format!("open {}: {e}", loc.dir)))?;
    let to_dir = spool.queue_dir(&loc.queue, new_id);
    let dst = target_dir(spool, &to_dir, &loc)?;
    match fstatat(&src, loc.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) if s.st_dev == adm.st.st_dev && s.st_ino == adm.st.st_ino => {}
        _ => return Err(MoveError::Raced(loc)),
    }
    match renameat2(
        &src,
        loc.id.as_str(),
        &dst,
        new_id,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Err(MoveError::Exists(loc)),
        Err(Errno::EXDEV) => return Err(MoveError::CrossDevice(loc)),
        Err(Errno::EINVAL | Errno::ENOSYS) => return Err(MoveError::NoReplaceUnsupported(loc)),
        Err(e) => return Err(MoveError::Io(loc, format!("rename: {e}"))),
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
        .map_err(|e| MoveError::Io(adm.loc.clone(), format!("fstat: {e}")))?
        .st_mode;
    let mode = (now_mode & 0o7777) | 0o010;
    fchmod(adm.file.as_fd(), Mode::from_bits_truncate(mode))
        .map_err(|e| MoveError::Io(adm.loc.clone(), format!("chmod: {e}")))?;
    adm.file
        .sync_all()
        .map_err(|e| MoveError::Io(adm.loc.clone(), format!("fsync: {e}")))
}

/// Deletes an admitted message: its defer, bounce and trace logs first,
/// then the queue file (as postsuper -d). The one irreversible action.
pub fn delete(spool: &Spool, adm: Admitted) -> Result<(), MoveError> {
    let (dev, ino) = (adm.st.st_dev, adm.st.st_ino);
    // 1. Take the message out of Postfix's sight first, by the usual
    //    rename: if qmgr took it meanwhile (deferred -> active) this fails
    //    and nothing, not even its logs, is touched. A crash after this
    //    leaves it in quarantine, where `restore` brings it back.
    let aside = if adm.loc.queue == crate::queue::spool::QUARANTINE {
        drop(adm.file);
        adm.loc
    } else {
        move_to(spool, adm, crate::queue::spool::QUARANTINE, Times::Keep)?
    };
    // 2. Its logs, so that a later message that reuses the ID does not
    //    inherit them.
    for log in ["defer", "bounce", "trace"] {
        let dir = spool.queue_dir(log, &aside.id);
        if let Ok(d) = spool.dir(&dir) {
            match unlinkat(&d, aside.id.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(MoveError::Io(
                        aside.clone(),
                        format!("unlink {dir}/{}: {e}", aside.id),
                    ));
                }
            }
            let _ = fsync(&d);
        }
    }
    // 3. The message itself, if it is still the file we admitted.
    let src = spool
        .dir(&aside.dir)
        .map_err(|e| MoveError::Io(aside.clone(), format!("open {}: {e}", aside.dir)))?;
    match fstatat(&src, aside.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(s) if s.st_dev == dev && s.st_ino == ino => {}
        _ => return Err(MoveError::Raced(aside)),
    }
    unlinkat(&src, aside.id.as_str(), UnlinkatFlags::NoRemoveDir)
        .map_err(|e| MoveError::Io(aside.clone(), format!("unlink: {e}")))?;
    let _ = fsync(&src);
    Ok(())
}
