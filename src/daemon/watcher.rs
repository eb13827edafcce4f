//! The watcher: one thread owns the inotify descriptor on `hold/` and its
//! hash directories. A held file appears by rename while still 0600; it is
//! committed by a mode change (IN_ATTRIB). Any event only says "look at
//! this name": the parsers check the file is committed. A full scan runs
//! at start, after an inotify overflow, after SIGHUP, and every
//! `--scan-interval`; an overflow becomes a full rescan.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::decision::{Work, send_or_stop};
use super::logger::Logger;
use crate::config::Config;
use crate::queue::spool::Location;
use crate::queue::walk::{Descend, walk};

/// Sends every held message to the parsers (a full scan). Returns false
/// when the daemon stops meanwhile.
pub fn scan_hold(cfg: &Config, tx: &Sender<Work>, stop: &AtomicBool) -> bool {
    for found in walk(cfg, "hold", Descend::HashDirs).flatten() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        if found.is_hash_dir() {
            continue;
        }
        let Some(id) = found.id() else { continue };
        let w = Work::Look(Location {
            queue: "hold".into(),
            id: id.to_string(),
            dir: found.dir,
        });
        if !send_or_stop(tx, w, stop) {
            return false;
        }
    }
    true
}

/// After the start-up scan (every held message handed to the parsers,
/// and taken by them), tells the service manager that the daemon is
/// ready (`Type=notify`; nothing happens without `NOTIFY_SOCKET`).
fn tell_ready(tx: &Sender<Work>, stop: &AtomicBool, log: &Logger) {
    while !tx.is_empty() && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    log.log("ready: start-up scan done, watching hold");
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("watching hold"),
    ]) {
        log.log(&format!("warning: sd_notify: {e}"));
    }
}

/// Starts the watcher thread.
pub fn spawn(
    cfg: &Config,
    tx: Sender<Work>,
    stop: &Arc<AtomicBool>,
    rescan: &Arc<AtomicBool>,
    interval: Duration,
    log: &Logger,
) -> JoinHandle<()> {
    let (c, s, r, l) = (
        cfg.clone(),
        Arc::clone(stop),
        Arc::clone(rescan),
        log.clone(),
    );
    std::thread::spawn(move || watcher(c, tx, s, r, interval, l))
}

/// Watches `hold/` until `stop` is set; a scan when `rescan` is set and
/// every `interval`.
pub fn watcher(
    cfg: Config,
    tx: Sender<Work>,
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    interval: Duration,
    log: Logger,
) {
    // Assumption A1: cleanup renames held mail into hold/ while 0600 and
    // commits it with a mode change: IN_MOVED_TO, then IN_ATTRIB.
    let flags = AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE;
    let ino = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(i) => i,
        Err(e) => {
            log.log(&format!("fatal: inotify: {e}"));
            stop.store(true, Ordering::Relaxed);
            return;
        }
    };
    let mut wds: HashMap<WatchDescriptor, String> = HashMap::new();
    let add = |wds: &mut HashMap<_, _>, rel: &str| {
        if let Ok(wd) = ino.add_watch(&cfg.queue_directory.join(rel), flags) {
            wds.insert(wd, rel.to_string());
        }
    };
    add(&mut wds, "hold");
    for found in walk(&cfg, "hold", Descend::HashDirs).flatten() {
        if found.is_hash_dir() {
            add(&mut wds, &found.rel());
        }
    }
    let mut next_scan = Instant::now();
    let mut ready = false;
    rescan.store(true, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        if rescan.swap(false, Ordering::Relaxed) || Instant::now() >= next_scan {
            if !scan_hold(&cfg, &tx, &stop) {
                return;
            }
            next_scan = Instant::now() + interval;
            if !ready {
                ready = true;
                tell_ready(&tx, &stop, &log);
            }
        }
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(250u16));
        let Ok(events) = ino.read_events() else {
            continue;
        };
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                rescan.store(true, Ordering::Relaxed);
                continue;
            }
            let (Some(dir), Some(name)) = (wds.get(&ev.wd).cloned(), ev.name) else {
                continue;
            };
            let name = name.to_string_lossy().into_owned();
            if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                if name.len() == 1 {
                    add(&mut wds, &format!("{dir}/{name}"));
                    rescan.store(true, Ordering::Relaxed);
                }
                continue;
            }
            if queue_format::queue_id::is_legal(&name) {
                let w = Work::Look(Location {
                    queue: "hold".into(),
                    dir,
                    id: name,
                });
                if !send_or_stop(&tx, w, &stop) {
                    return;
                }
            }
        }
    }
}
