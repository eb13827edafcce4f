//! The one walker over queue directories: every scan of a queue (listing,
//! bulk commands, `check`, the daemon's start-up scan and its metrics)
//! goes through [`walk`].
//!
//! Entries come in `readdir` order, depth first, a hash directory's
//! entries as soon as the directory is met: the order `showq` and
//! `postsuper` use. Symbolic links are never followed below the queue's
//! own directory; a link or other odd entry is returned for the caller to
//! report or skip. Reading a directory can fail; the error names it.

use std::ffi::OsString;
use std::fmt;
use std::fs::FileType;
use std::path::PathBuf;

use queue_format::queue_id;

use super::spool::{Location, Spool};
use crate::config::Config;

/// Which directories a walk goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descend {
    /// One-character directories (hash levels), at any depth.
    HashDirs,
    /// None: the queue's own directory only.
    Never,
}

impl Descend {
    /// As Postfix hashes `queue` (`hash_queue_names`).
    pub fn for_queue(cfg: &Config, queue: &str) -> Descend {
        if cfg.is_hashed(queue) {
            Descend::HashDirs
        } else {
            Descend::Never
        }
    }
}

/// One directory entry below a queue.
#[derive(Debug)]
pub struct Found {
    /// Whether the walk went into it (a hash directory).
    pub entered: bool,
    /// Its directory, relative to the queue directory (`deferred/A`).
    pub dir: String,
    /// Its name.
    pub name: OsString,
    /// Its type, as `readdir` reported it (not following a link).
    pub file_type: FileType,
    /// Its full path.
    pub path: PathBuf,
}

impl Found {
    /// The name, when it is a legal queue ID (S9: only then does a name
    /// become a path to act on).
    pub fn id(&self) -> Option<&str> {
        self.name.to_str().filter(|n| queue_id::is_legal(n))
    }

    /// Whether it is a hash directory that the walk went into.
    pub fn is_hash_dir(&self) -> bool {
        self.entered
    }

    /// Its path relative to the queue directory.
    pub fn rel(&self) -> String {
        format!("{}/{}", self.dir, self.name.to_string_lossy())
    }
}

/// A directory that could not be read.
#[derive(Debug)]
pub struct WalkError {
    /// The directory (or entry) concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub error: std::io::Error,
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

/// The walk of one queue; see [`walk`].
pub struct Walk {
    it: walkdir::IntoIter,
    top: PathBuf,
    qdir: PathBuf,
    descend: Descend,
    /// An error to give first (the queue's directory is a symlink).
    first: Option<WalkError>,
}

/// Walks `queue` below `cfg.queue_directory`.
pub fn walk(cfg: &Config, queue: &str, descend: Descend) -> Walk {
    let top = cfg.queue_directory.join(queue);
    // A queue's own directory that is a symlink is refused, not followed.
    let first = std::fs::symlink_metadata(&top)
        .is_ok_and(|m| m.file_type().is_symlink())
        .then(|| WalkError {
            path: top.clone(),
            error: std::io::Error::other("a symbolic link in the queue: refused"),
        });
    Walk {
        it: walkdir::WalkDir::new(&top)
            .min_depth(1)
            .follow_links(false)
            .follow_root_links(false)
            .into_iter(),
        top,
        qdir: cfg.queue_directory.clone(),
        descend,
        first,
    }
}

impl Iterator for Walk {
    type Item = Result<Found, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.first.take() {
            return Some(Err(e));
        }
        let e = match self.it.next()? {
            Ok(e) => e,
            Err(err) => {
                let path = err.path().unwrap_or(&self.top).to_path_buf();
                let error = err
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
                return Some(Err(WalkError { path, error }));
            }
        };
        let file_type = e.file_type();
        let name = e.file_name().to_os_string();
        // A hash level's name is one character of a queue ID.
        let hash_name = name
            .to_str()
            .is_some_and(|n| n.len() == 1 && queue_id::is_legal(n));
        let entered = file_type.is_dir() && self.descend == Descend::HashDirs && hash_name;
        if file_type.is_dir() && !entered {
            self.it.skip_current_dir();
        }
        let path = e.into_path();
        let dir = path
            .parent()
            .and_then(|p| p.strip_prefix(&self.qdir).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some(Ok(Found {
            entered,
            dir,
            name,
            file_type,
            path,
        }))
    }
}

impl Spool {
    /// Every entry with a legal name in `queue`, descending into hash
    /// directories when the queue is hashed. Illegal names (temporary
    /// files, `#FIX` names) are not returned: no one may act on them. A
    /// queue whose directory cannot be read is an error (a quarantine not
    /// made yet is empty); a hash directory that cannot be read is skipped.
    pub fn entries(&self, queue: &str) -> Result<Vec<Location>, WalkError> {
        let top = self.cfg.queue_directory.join(queue);
        let mut out = Vec::new();
        for f in walk(&self.cfg, queue, Descend::for_queue(&self.cfg, queue)) {
            let f = match f {
                Ok(f) => f,
                Err(e) if e.path == top => {
                    if queue == super::spool::QUARANTINE
                        && e.error.kind() == std::io::ErrorKind::NotFound
                    {
                        break;
                    }
                    return Err(e);
                }
                Err(_) => continue,
            };
            if f.is_hash_dir() {
                continue;
            }
            if let Some(id) = f.id() {
                out.push(Location {
                    queue: queue.to_string(),
                    id: id.to_string(),
                    dir: f.dir,
                });
            }
        }
        Ok(out)
    }
}
