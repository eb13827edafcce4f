//! The queue lock (S6): posthold processes, the daemon and commands run by
//! hand, exclude each other with an exclusive flock on the queue directory
//! itself, which Postfix never locks.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::spool::Spool;
use crate::error::Fatal;

impl Spool {
    /// Serializes posthold processes (the daemon and commands run by hand):
    /// an exclusive flock on the queue directory itself, which Postfix
    /// never locks. Held while files are admitted and moved; released when
    /// the returned file is dropped. Blocks while another posthold holds it.
    // S6: one posthold process at a time changes the queue.
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
    pub fn exclusive_until(&self, stop: &AtomicBool) -> Result<Option<File>, Fatal> {
        let f = File::open(&self.cfg.queue_directory)
            .map_err(|e| Fatal::runtime(format!("{}: {e}", self.cfg.queue_directory.display())))?;
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(Some(f)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(100));
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
}

/// The daemon's own pid file, `$queue_directory/pid/posthold-watch.pid`
/// (where Postfix keeps `master.pid`), locked with a POSIX record lock for
/// the daemon's whole life: a second `posthold watch` on the same queue
/// finds the lock, and the lock names the daemon that holds it.
pub const DAEMON_PID: &str = "pid/posthold-watch.pid";

impl Spool {
    /// Takes the daemon lock, or says which daemon holds it (exit 2). The
    /// returned file must stay open while the daemon runs (closing any
    /// descriptor of it would drop the lock).
    pub fn daemon_lock(&self) -> Result<File, Fatal> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        use nix::sys::stat::Mode;
        let path = self.cfg.queue_directory.join(DAEMON_PID);
        let err = |e: nix::errno::Errno| Fatal::config(format!("{}: {e}", path.display()));
        let dir = self.dir("pid").map_err(|e| {
            Fatal::config(format!(
                "{}: {e} (Postfix's pid directory; run postfix check)",
                self.cfg.queue_directory.join("pid").display()
            ))
        })?;
        let fd = nix::fcntl::openat(
            &dir,
            "posthold-watch.pid",
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            // 0600: a user who could open it could take a read lock and
            // keep the daemon from starting.
            Mode::from_bits_truncate(0o600),
        )
        .map_err(err)?;
        let file = File::from(fd);
        let mut fl = super::spool::whole_file_write_lock();
        match fcntl(&file, FcntlArg::F_SETLK(&fl)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                let _ = fcntl(&file, FcntlArg::F_GETLK(&mut fl));
                return Err(Fatal::config(format!(
                    "{}: posthold watch is already running on this queue (pid {})",
                    self.cfg.queue_directory.display(),
                    fl.l_pid
                )));
            }
            Err(e) => return Err(err(e)),
        }
        // The pid, for administrators; the lock is what counts. The file is
        // posthold's own, not a queue file.
        #[allow(clippy::disallowed_methods)]
        file.set_len(0)
            .map_err(|e| Fatal::config(format!("{}: {e}", path.display())))?;
        (&file)
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(|e| Fatal::config(format!("{}: {e}", path.display())))?;
        Ok(file)
    }
}
