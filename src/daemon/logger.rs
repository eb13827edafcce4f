//! The daemon's log: lines in Postfix's style (`posthold[PID]: ` and the
//! queue ID first), to syslog (facility mail) or to stderr for journald.
//! Lines to stderr are buffered and flushed whenever the daemon is idle (a
//! burst of a million decisions is not a million write calls).

use std::io::{BufWriter, Stderr, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

/// Where the daemon's log lines go. Cheap to clone; clones share the sink.
#[derive(Debug, Clone)]
pub struct Logger {
    sink: Sink,
}

#[derive(Debug, Clone)]
enum Sink {
    Syslog(Arc<UnixDatagram>),
    Stderr(Arc<Mutex<BufWriter<Stderr>>>),
    /// Kept in memory: for tests of the daemon's parts.
    Memory(Arc<Mutex<Vec<String>>>),
}

/// Where to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    /// Standard error (journald under systemd).
    Stderr,
    /// Syslog through `/dev/log`, else standard error.
    Syslog,
}

impl Logger {
    /// A logger to syslog when asked and possible, else stderr.
    pub fn new(to: LogTo) -> Logger {
        let sock = (to == LogTo::Syslog)
            .then(|| {
                let s = UnixDatagram::unbound().ok()?;
                s.connect("/dev/log").ok()?;
                Some(Arc::new(s))
            })
            .flatten();
        let sink = match sock {
            Some(s) => Sink::Syslog(s),
            None => Sink::Stderr(Arc::new(Mutex::new(BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            )))),
        };
        Logger { sink }
    }

    /// A logger that keeps its lines in memory (see [`Logger::lines`]).
    pub fn memory() -> Logger {
        Logger {
            sink: Sink::Memory(Arc::default()),
        }
    }

    /// The lines logged so far by a [`Logger::memory`] (empty otherwise).
    pub fn lines(&self) -> Vec<String> {
        match &self.sink {
            Sink::Memory(m) => m.lock().expect("BUG: log lock poisoned").clone(),
            _ => Vec::new(),
        }
    }

    /// Writes out buffered lines.
    pub fn flush(&self) {
        if let Sink::Stderr(b) = &self.sink
            && let Ok(mut b) = b.lock()
        {
            let _ = b.flush();
        }
    }

    /// Logs one line (`posthold[PID]: ` is prepended).
    pub fn log(&self, line: &str) {
        // facility mail (2), severity info (6): <22>
        self.send(22, line);
    }

    /// Logs one line at warning level: `warning: ` after the queue ID or
    /// at the start, as Postfix writes its warnings; severity warning (4)
    /// for syslog.
    pub fn warn(&self, line: &str) {
        let line = match line.split_once(": ") {
            Some((id, rest)) if queue_format::queue_id::is_legal(id) => {
                format!("{id}: warning: {rest}")
            }
            _ => format!("warning: {line}"),
        };
        // facility mail (2), severity warning (4): <20>
        self.send(20, &line);
    }

    fn send(&self, priority: u8, line: &str) {
        let pid = std::process::id();
        match &self.sink {
            Sink::Syslog(s) => {
                let _ = s.send(format!("<{priority}>posthold[{pid}]: {line}").as_bytes());
            }
            Sink::Stderr(b) => {
                if let Ok(mut b) = b.lock() {
                    let _ = b.write_all(format!("posthold[{pid}]: {line}\n").as_bytes());
                }
            }
            Sink::Memory(m) => m
                .lock()
                .expect("BUG: log lock poisoned")
                .push(line.to_string()),
        }
    }
}
