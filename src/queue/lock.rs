//! The queue lock (S6): posthold processes, the daemon and commands run by
//! hand, exclude each other with an exclusive flock on the queue directory
//! itself, which Postfix never locks.

use std::fs::File;
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
