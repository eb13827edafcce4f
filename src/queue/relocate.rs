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
use xattr::FileExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
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
    /// Where it was, or wherever it raced to, with its times set to now.
    TimesSet,
    /// Where it was, with its mode changed (the expire bit).
    ModeSet,
    /// Where it was, under its old name, but its defer, bounce and trace
    /// logs already carry the new ID (`check --repair`).
    LogsRenamed,
    /// Moved aside into quarantine, out of Postfix's sight (`delete`).
    MovedAside,
    /// Still in quarantine, its logs removed (`delete`).
    LogsRemoved,
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
            FileState::TimesSet => write!(f, " (its mtime was set to now)"),
            FileState::ModeSet => write!(f, " (mode changed, still in {})", self.at.dir),
            FileState::LogsRenamed => write!(
                f,
                " (its logs already carry the new ID; the message is still {})",
                self.at.path()
            ),
            FileState::LogsRemoved => {
                write!(
                    f,
                    " (its logs removed; the message is still {})",
                    self.at.path()
                )
            }
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
/// a crash, so qmgr can always move files out of it. Every step works on
/// the parent's handle, opened without following a symlink (S5): a
/// symlinked component is refused, never followed out of the spool.
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
        match spool.dir(&path) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io(format!("{path}: a symbolic link in the queue: refused")));
            }
            Err(e) => return Err(io(format!("{path}: {e}"))),
        }
        // Only hash levels (one character) and posthold's own quarantine
        // directory are ever created; a missing queue is a broken spool.
        if part.len() != 1 && path != crate::queue::spool::QUARANTINE {
            return Err(io(format!(
                "{path}: missing queue directory (run postfix check)"
            )));
        }
        let up = spool
            .dir(if parent.is_empty() { "." } else { &parent })
            .map_err(|e| io(format!("{parent}: {e}")))?;
        let tmp = format!(".posthold-mkdir-{}", std::process::id());
        let cannot = |e: Errno| {
            io(format!(
                "cannot create {path}: {e}{}",
                if nix::unistd::geteuid().is_root() {
                    ""
                } else {
                    " (posthold runs as mail_owner here: create it as root, or restart the daemon)"
                }
            ))
        };
        match mkdirat(&up, tmp.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(cannot(e)),
        }
        let d = openat(
            &up,
            tmp.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(cannot)?;
        let made = fchown(
            &d,
            Some(Uid::from_raw(spool.owner.0)),
            Some(Gid::from_raw(spool.owner.1)),
        )
        // Explicitly 0700 whatever the umask.
        .and_then(|()| fchmod(&d, Mode::from_bits_truncate(0o700)))
        .and_then(|()| fsync(&d))
        .and_then(|()| renameat2(&up, tmp.as_str(), &up, part, RenameFlags::RENAME_NOREPLACE));
        match made {
            Ok(()) => {}
            // Someone (Postfix, another posthold) made it meanwhile: use theirs.
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                let _ = unlinkat(&up, tmp.as_str(), UnlinkatFlags::RemoveDir);
            }
            Err(e) => {
                let _ = unlinkat(&up, tmp.as_str(), UnlinkatFlags::RemoveDir);
                return Err(cannot(e));
            }
        }
        let _ = fsync(&up);
    }
    spool
        .dir_cached(rel)
        .map_err(|e| MoveError::io(loc, format!("open {rel}: {e}")))
}

/// Whether the queue directory's file system refuses to replace with
/// `RENAME_NOREPLACE` (Assumption A5): a probe that renames a name that does
/// not exist, so it changes nothing (ENOENT where the flag is supported,
/// EINVAL where it is not).
pub fn supports_noreplace(spool: &Spool) -> bool {
    let probe = format!(".posthold-probe-{}", std::process::id());
    !matches!(
        renameat2(
            &spool.root,
            probe.as_str(),
            &spool.root,
            "posthold-probe-target",
            RenameFlags::RENAME_NOREPLACE,
        ),
        Err(Errno::EINVAL | Errno::ENOSYS)
    )
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
/// new location. The flock taken by the gate is released before the
/// rename (and before making a missing hash directory); see the steps.
pub fn move_to(
    spool: &Spool,
    adm: Admitted,
    queue: &str,
    times: Times,
) -> Result<Location, MoveError> {
    move_noted(spool, adm, queue, times, &[]).map(|(l, _)| l)
}

/// The prefix of posthold's notes on a file (`user.posthold.reason`, ...).
pub const NOTE_PREFIX: &str = "user.posthold.";

/// The notes a quarantine writes, besides `at` (the mover's own clock).
pub const NOTE_NAMES: [&str; 4] = ["reason", "detail", "at", "by"];

/// Replaces posthold's notes on an open file: every old one removed, the
/// new ones written, `at` (now) with them; on a failure part way the ones
/// written are removed again, so that a file never carries a mix.
#[allow(clippy::disallowed_methods)] // S15: the one writer of notes
fn write_notes(file: &std::fs::File, notes: &[(&str, String)]) -> Result<(), String> {
    for name in NOTE_NAMES {
        let _ = file.remove_xattr(format!("{NOTE_PREFIX}{name}"));
    }
    let at = crate::util::rfc3339(crate::util::now());
    let all = notes
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("at", at.as_str())]);
    for (name, value) in all {
        if let Err(e) = file.set_xattr(format!("{NOTE_PREFIX}{name}"), value.as_bytes()) {
            for name in NOTE_NAMES {
                let _ = file.remove_xattr(format!("{NOTE_PREFIX}{name}"));
            }
            return Err(e.to_string());
        }
    }
    Ok(())
}

/// As [`move_to`], first writing `notes` (name, value) on the file as
/// extended attributes `user.posthold.NAME` (why it is quarantined, when,
/// by whom): its content is not touched, and the notes travel with the
/// inode through the rename. Also returns why the notes could not be
/// written (a file system without user xattrs): the move happens anyway.
pub fn move_noted(
    spool: &Spool,
    adm: Admitted,
    queue: &str,
    times: Times,
    notes: &[(&str, String)],
) -> Result<(Location, Option<String>), MoveError> {
    let loc = adm.loc.clone();
    let id = loc.id.as_str();
    let to = Location {
        queue: queue.to_string(),
        dir: spool.queue_dir(queue, id),
        id: loc.id.clone(),
    };
    // 1. The source directory's handle (checked against its path, S5).
    let src = spool
        .dir_cached(&loc.dir)
        .map_err(|e| MoveError::io(&loc, format!("open {}: {e}", loc.dir)))?;
    // 2. S5, Assumption A2: the name still refers to the file we admitted
    //    (postsuper or qmgr may have renamed or replaced it since the
    //    gate). Checked before anything is changed, so a file that raced
    //    away is left exactly as it is.
    let still_ours = |src: &OwnedFd| {
        fstatat(src, id, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|s| s.st_dev == adm.st.st_dev && s.st_ino == adm.st.st_ino)
    };
    if !still_ours(&src) {
        return Err(MoveError::new(MoveErrorKind::Raced, &loc));
    }
    // 3. The target directory (created 0700 mail_owner). S6: a missing one
    //    takes a mkdir and fsyncs; posthold's flock is released first, so
    //    that a qmgr that wants the file never waits on us meanwhile.
    let made = spool.dir_cached(&to.dir).is_err();
    if made {
        let _ = adm.file.unlock();
    }
    let dst = target_dir(spool, &to.dir, &loc)?;
    // The flock was off while the directory was made: check again that
    // the name is still the admitted file before anything is changed.
    if made && !still_ours(&src) {
        return Err(MoveError::new(MoveErrorKind::Raced, &loc));
    }
    // S2: one file system. Checked here as well as by the kernel (EXDEV).
    if spool.dir_device(&to.dir) != Some(adm.st.st_dev) {
        return Err(MoveError::new(MoveErrorKind::CrossDevice, &loc));
    }
    // 4. Times, on the open file: if we crash before the rename the file
    //    sits where it was with a new mtime, which no queue minds; so the
    //    file arrives in its new queue already eligible. From here on a
    //    failure says the times were set.
    let set_now = match times {
        Times::Keep => false,
        Times::Now => true,
        Times::NotInFuture => adm.st.st_mtime > crate::util::now(),
    };
    let state = if set_now {
        let now = TimeSpec::UTIME_NOW;
        futimens(adm.file.as_fd(), &now, &now)
            .map_err(|e| MoveError::io(&loc, format!("utime: {e}")))?;
        FileState::TimesSet
    } else {
        FileState::Unchanged
    };
    // 5. S6: release posthold's flock before the file becomes visible in its
    //    new queue: a qmgr scanning incoming or deferred that met our lock
    //    would log "skipped, still being delivered" and push the file's
    //    mtime 60 s into the future. Another posthold process cannot act on
    //    the file meanwhile (the queue lock), and anything else can only
    //    make the rename below fail (ENOENT), since it never replaces.
    let _ = adm.file.unlock();
    // 6. S3/S4: the rename itself, never overwriting.
    let fail = |kind| Err(MoveError::new(kind, &loc).with_state(state));
    match renameat2(&*src, id, &*dst, id, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return fail(MoveErrorKind::Exists),
        Err(Errno::EXDEV) => return fail(MoveErrorKind::CrossDevice),
        // Assumption A5: no RENAME_NOREPLACE here means refusal (S4).
        Err(Errno::EINVAL | Errno::ENOSYS) => return fail(MoveErrorKind::NoReplaceUnsupported),
        Err(Errno::ENOENT) => return fail(MoveErrorKind::Raced),
        Err(e) => return fail(MoveErrorKind::Io(format!("rename: {e}"))),
    }
    // 7. Record the change first: whatever the check below says, the
    //    rename happened and both directories need their fsync.
    spool.changed(&to.dir, &dst);
    spool.changed(&loc.dir, &src);
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
    // 8. S15: notes (why, when, by whom), on the open file, now that it is
    //    in its new directory: a file still in a Postfix queue is never
    //    changed for them (a failed move leaves no trace), and a crash
    //    before this leaves a moved file without notes, which is true.
    //    Old notes go first, so that no mix of two quarantines is left.
    let unnoted = if notes.is_empty() {
        None
    } else {
        write_notes(&adm.file, notes).err()
    };
    // 9. Durability: both directories are fsync'ed by Spool::sync_dirs,
    //    once per command and once per batch in the daemon, before either
    //    reports the move (see there why that keeps every move atomic).
    drop(adm);
    Ok((to, unnoted))
}

/// Renames an admitted file inside its directory to `new_id` (the ID its
/// inode gives), its defer, bounce and trace logs first, as `postsuper -s`
/// does. Never overwrites. The message is checked (still the admitted
/// file, new name free) before any log moves; if a later rename fails, the
/// logs already moved are put back, so that logs and message never part.
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
    // S6: no lock across the mkdirs, renames and fsyncs below (the queue
    // lock keeps other posthold processes away; the re-stats catch anyone
    // else).
    let _ = adm.file.unlock();
    let src = spool
        .dir(&loc.dir)
        .map_err(|e| MoveError::io(&loc, format!("open {}: {e}", loc.dir)))?;
    let to_dir = spool.queue_dir(&loc.queue, new_id);
    let dst = target_dir(spool, &to_dir, &loc)?;
    // S5: still the admitted file, and its new name free, before any log.
    let check = || -> Result<(), MoveError> {
        match fstatat(&src, loc.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) if s.st_dev == adm.st.st_dev && s.st_ino == adm.st.st_ino => {}
            _ => return Err(MoveError::new(MoveErrorKind::Raced, &loc)),
        }
        if fstatat(&*dst, new_id, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
            return Err(MoveError::new(MoveErrorKind::Exists, &loc));
        }
        Ok(())
    };
    check()?;
    // The logs, each under its new name; remembered to be put back.
    let mut moved: Vec<(OwnedFd, Rc<OwnedFd>)> = Vec::new();
    let undo = |moved: Vec<(OwnedFd, Rc<OwnedFd>)>, e: MoveError| -> MoveError {
        let mut all_back = true;
        for (from, to) in moved.iter().rev() {
            all_back &= renameat2(
                &**to,
                new_id,
                from,
                loc.id.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            )
            .is_ok();
            let _ = fsync(&**to);
            let _ = fsync(from);
        }
        if all_back {
            e
        } else {
            e.with_state(FileState::LogsRenamed)
        }
    };
    for log in ["defer", "bounce", "trace"] {
        let from = spool.queue_dir(log, &loc.id);
        let to = spool.queue_dir(log, new_id);
        let Ok(fd) = spool.dir(&from) else { continue };
        if fstatat(&fd, loc.id.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_err() {
            continue;
        }
        let td = match target_dir(spool, &to, &loc) {
            Ok(td) => td,
            Err(e) => return Err(undo(moved, e)),
        };
        match renameat2(
            &fd,
            loc.id.as_str(),
            &*td,
            new_id,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                let _ = fsync(&*td);
                let _ = fsync(&fd);
                moved.push((fd, td));
            }
            Err(Errno::ENOENT) => {}
            Err(Errno::EEXIST) => {
                return Err(undo(moved, MoveError::new(MoveErrorKind::Exists, &loc)));
            }
            Err(e) => {
                return Err(undo(
                    moved,
                    MoveError::io(&loc, format!("rename {log} log: {e}")),
                ));
            }
        }
    }
    // The message itself: checked again (the logs took time), then renamed.
    if let Err(e) = check() {
        return Err(undo(moved, e));
    }
    let result = match renameat2(
        &src,
        loc.id.as_str(),
        &*dst,
        new_id,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => Err(MoveError::new(MoveErrorKind::Exists, &loc)),
        Err(Errno::EXDEV) => Err(MoveError::new(MoveErrorKind::CrossDevice, &loc)),
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            Err(MoveError::new(MoveErrorKind::NoReplaceUnsupported, &loc))
        }
        Err(Errno::ENOENT) => Err(MoveError::new(MoveErrorKind::Raced, &loc)),
        Err(e) => Err(MoveError::io(&loc, format!("rename: {e}"))),
    };
    if let Err(e) = result {
        return Err(undo(moved, e));
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
    // S6: no lock held across the fsync, on a file qmgr may want.
    let _ = adm.file.unlock();
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
    let (aside, mut state) = if adm.loc.queue == crate::queue::spool::QUARANTINE {
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
        let d = match spool.dir(&dir) {
            Ok(d) => Some(d),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            // A log directory that cannot be opened (a symlink, no
            // access) keeps the log: stop before the message goes, so that
            // no later message with this ID inherits it (S10).
            Err(e) => {
                return Err(MoveError::io(&aside, format!("open {dir}: {e}")).with_state(state));
            }
        };
        if let Some(d) = d {
            match unlinkat(&d, aside.id.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) if state == FileState::Unchanged => state = FileState::LogsRemoved,
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

#[cfg(test)]
mod tests {
    //! The mover on a real spool in a temp dir (root: files are chowned to
    //! mail_owner as Postfix's are).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::queue::gate::Gate;
    use queue_format::writer::Builder;

    fn spool() -> (tempfile::TempDir, tempfile::TempDir, Spool) {
        assert!(nix::unistd::geteuid().is_root(), "mover tests need root");
        let dir = tempfile::tempdir().unwrap();
        for q in [
            "incoming", "active", "deferred", "hold", "maildrop", "defer", "bounce", "trace",
        ] {
            std::fs::create_dir(dir.path().join(q)).unwrap();
        }
        let cfg = tempfile::tempdir().unwrap();
        let main = cfg.path().join("main.cf");
        std::fs::write(&main, "compatibility_level = 3.6\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&main)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(600))
            .unwrap();
        let c = Config::load(Some(cfg.path()), Some(dir.path())).unwrap();
        let s = Spool::open(c).unwrap();
        (dir, cfg, s)
    }

    /// A committed message in `queue/`, named after its inode (or, with
    /// `wrong_name`, after another inode, as a restore from backup leaves).
    fn add(q: &Path, queue: &str, wrong_name: bool) -> String {
        let tmp = q.join(queue).join("tmp.1");
        let b = Builder::new(1_700_000_000, "a@example.com")
            .recipient("r@example.net")
            .body_line("x");
        std::fs::write(&tmp, b.build()).unwrap();
        let pw = nix::unistd::User::from_name("postfix").unwrap().unwrap();
        std::os::unix::fs::chown(&tmp, Some(pw.uid.as_raw()), Some(pw.gid.as_raw())).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
        let ino = std::fs::metadata(&tmp).unwrap().ino() + u64::from(wrong_name);
        let id = queue_format::queue_id::encode_short(123_456, ino);
        std::fs::rename(&tmp, q.join(queue).join(&id)).unwrap();
        id
    }

    fn loc(queue: &str, id: &str) -> Location {
        Location {
            queue: queue.into(),
            dir: queue.into(),
            id: id.into(),
        }
    }

    // Audit defect 7: the times were set before the re-stat that proves
    // the file is still the one admitted.
    #[test]
    fn a_failed_move_leaves_the_mtime_alone() {
        let (d, _c, sp) = spool();
        let id = add(d.path(), "hold", false);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86400);
        std::fs::File::options()
            .write(true)
            .open(d.path().join("hold").join(&id))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let adm = sp.admit(&loc("hold", &id)).unwrap();
        // postsuper gets there first.
        let moved = d.path().join("deferred").join(&id);
        std::fs::rename(d.path().join("hold").join(&id), &moved).unwrap();
        let e = move_to(&sp, adm, "incoming", Times::Now).unwrap_err();
        assert_eq!(e.kind(), &MoveErrorKind::Raced);
        assert_eq!(e.state(), FileState::Unchanged);
        assert_eq!(
            std::fs::metadata(&moved).unwrap().modified().unwrap(),
            old,
            "the file that raced away keeps its mtime"
        );
    }

    // Audit defect 11: check --repair renamed the logs before checking the
    // message; a message that raced away left its logs under the new ID.
    #[test]
    fn a_repair_whose_message_raced_away_leaves_its_logs_alone() {
        let (d, _c, sp) = spool();
        let id = add(d.path(), "hold", true);
        let log_dir = d.path().join(sp.queue_dir("defer", &id));
        std::fs::create_dir_all(&log_dir).unwrap();
        std::fs::write(log_dir.join(&id), "recipient=r@example.net\n\n").unwrap();
        let adm = sp.gate(&loc("hold", &id), Gate::RenameToInode).unwrap();
        let new_id = crate::queue::act::id_for_inode(&id, adm.st.st_ino).unwrap();
        std::fs::rename(
            d.path().join("hold").join(&id),
            d.path().join("incoming").join(&id),
        )
        .unwrap();
        let e = rename_id(&sp, adm, &new_id).unwrap_err();
        assert_eq!(e.kind(), &MoveErrorKind::Raced);
        assert_eq!(e.state(), FileState::Unchanged, "{e}");
        assert!(log_dir.join(&id).exists(), "the log stays with its message");
        let new_log = d.path().join(sp.queue_dir("defer", &new_id)).join(&new_id);
        assert!(!new_log.exists(), "no orphan log under the new ID");
    }

    // Audit defect 11: a rename that fails after the logs moved puts them
    // back.
    #[test]
    fn a_repair_that_fails_after_its_logs_moved_puts_them_back() {
        let (d, _c, sp) = spool();
        let id = add(d.path(), "hold", true);
        let log_dir = d.path().join(sp.queue_dir("defer", &id));
        std::fs::create_dir_all(&log_dir).unwrap();
        std::fs::write(log_dir.join(&id), "recipient=r@example.net\n\n").unwrap();
        let adm = sp.gate(&loc("hold", &id), Gate::RenameToInode).unwrap();
        let new_id = crate::queue::act::id_for_inode(&id, adm.st.st_ino).unwrap();
        // The bounce log's new name is taken: its rename fails after the
        // defer log moved.
        let bounce_dir = d.path().join(sp.queue_dir("bounce", &id));
        std::fs::create_dir_all(&bounce_dir).unwrap();
        std::fs::write(bounce_dir.join(&id), "old").unwrap();
        let taken = d.path().join(sp.queue_dir("bounce", &new_id));
        std::fs::create_dir_all(&taken).unwrap();
        std::fs::write(taken.join(&new_id), "someone else's").unwrap();
        let e = rename_id(&sp, adm, &new_id).unwrap_err();
        assert_eq!(e.kind(), &MoveErrorKind::Exists);
        assert_eq!(e.state(), FileState::Unchanged, "{e}");
        assert!(log_dir.join(&id).exists(), "the defer log was put back");
        assert!(d.path().join("hold").join(&id).exists());
    }

    // Audit defect 5: a symlink in any component of a path inside the
    // queue is refused, not only in the last one.
    #[test]
    fn no_component_of_a_queue_path_follows_a_symlink() {
        let (d, _c, sp) = spool();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("C")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("deferred").join("E")).unwrap();
        assert!(
            sp.dir("deferred/E/C").is_err(),
            "a symlinked middle component"
        );
        assert!(sp.dir("deferred/E").is_err(), "a symlinked last component");
        assert!(sp.dir("deferred").is_ok());
    }
}
