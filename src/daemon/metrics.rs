//! Prometheus metrics for `posthold watch`, served on a loopback address,
//! and what `posthold status` reads back.
//!
//! Gauges that describe the spool (hold depth, held-age histogram) are
//! computed from the spool at scrape time, so they are true even for mail
//! that Postfix or an administrator moved meanwhile; the daemon's own state
//! (scheduled releases, next due time, actions, errors) is shared with the
//! scheduler.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::error::Fatal;
use crate::queue::walk::{Descend, walk};

/// Daemon state shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct Shared {
    /// Scheduled releases waiting for their due time.
    pub scheduled: usize,
    /// The earliest due time (seconds), if any.
    pub next_due: Option<i64>,
    /// Messages kept because of a bad date (unparsable, empty, too far).
    pub bad_dates: usize,
    /// Messages whose action the gate refuses for a lasting reason (two
    /// links, a wrong owner, ...): retried with backoff, shown by `check`.
    pub refused: usize,
    /// Messages kept because their queue file cannot be read (damaged, or
    /// a record type posthold does not know).
    pub damaged: usize,
    /// Messages kept because no rule matched.
    pub no_rule: usize,
    /// Messages whose scans keep failing softly for longer than the
    /// rules' `stuck_after`.
    pub stuck: usize,
    /// Whether each scanner answers (see the daemon's scanner health).
    pub scanner_up: BTreeMap<String, bool>,
    /// Actions done, by (action, reason).
    pub actions: BTreeMap<(String, String), u64>,
    /// Actions that failed (the message stayed where it was).
    pub errors: u64,
    /// Scans by (scanner, result): `done`, `failed` (no strike), `strike`
    /// (timeout or crash).
    pub scans: BTreeMap<(String, String), u64>,
    /// Commit-to-decision latencies in microseconds (file ctime to the
    /// scheduler's decision), the most recent ones.
    pub decision_latency_us: std::collections::VecDeque<u64>,
    /// Due-to-release lateness in microseconds of scheduled releases.
    pub release_lateness_us: std::collections::VecDeque<u64>,
}

fn push_bounded(q: &mut std::collections::VecDeque<u64>, v: u64) {
    if q.len() == LATENCY_SAMPLES {
        q.pop_front();
    }
    q.push_back(v);
}

fn quantile(q: &std::collections::VecDeque<u64>, p: f64) -> Option<f64> {
    if q.is_empty() {
        return None;
    }
    let mut v: Vec<u64> = q.iter().copied().collect();
    v.sort_unstable();
    Some(v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1e6)
}

/// How many latency samples are kept for the quantiles.
pub const LATENCY_SAMPLES: usize = 10_000;

impl Shared {
    /// Records one commit-to-decision latency.
    pub fn record_latency(&mut self, us: u64) {
        push_bounded(&mut self.decision_latency_us, us);
    }

    /// Records how late a scheduled release was done after its due time.
    pub fn record_lateness(&mut self, us: u64) {
        push_bounded(&mut self.release_lateness_us, us);
    }
}

/// Upper bounds (seconds) of the held-age histogram buckets.
pub const AGE_BUCKETS: &[u64] = &[60, 600, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400];

fn hold_ages(cfg: &Config, now: i64) -> Vec<u64> {
    walk(cfg, "hold", Descend::HashDirs)
        .flatten()
        .filter(|f| f.file_type.is_file())
        .filter_map(|f| std::fs::symlink_metadata(&f.path).ok())
        .filter(|m| m.mode() & 0o700 == 0o700)
        .map(|m| (now - m.ctime()).max(0) as u64)
        .collect()
}

/// The longest a walk of the hold queue is reused: a scrape must not cost a
/// stat of every held message each time. A walk is reused for 20 times
/// what it cost, at most this long, so small queues are always fresh.
pub const SPOOL_CACHE: Duration = Duration::from_secs(15);

/// The last walk: when, the clock then, the ages, and what it cost.
type AgeCache = Option<(std::time::Instant, i64, Vec<u64>, Duration)>;

thread_local! {
    static AGES: std::cell::RefCell<AgeCache> = const { std::cell::RefCell::new(None) };
}

/// Appends a summary metric (p50, p99, count) of microsecond samples.
fn summary(s: &mut String, name: &str, help: &str, samples: &std::collections::VecDeque<u64>) {
    s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} summary\n"));
    for q in [0.5, 0.99] {
        if let Some(v) = quantile(samples, q) {
            s.push_str(&format!("{name}{{quantile=\"{q}\"}} {v:.6}\n"));
        }
    }
    s.push_str(&format!("{name}_count {}\n", samples.len()));
}

/// The metrics text (Prometheus exposition format 0.0.4).
pub fn render(cfg: &Config, shared: &Shared, now: i64) -> String {
    let ages = AGES.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((at, then, ages, cost)) if at.elapsed() < (*cost * 20).min(SPOOL_CACHE) => {
                // Ages grow with time; the set of messages is from the walk.
                ages.iter()
                    .map(|a| a + (now - then).max(0) as u64)
                    .collect::<Vec<u64>>()
            }
            _ => {
                let t = std::time::Instant::now();
                let ages = hold_ages(cfg, now);
                *c = Some((std::time::Instant::now(), now, ages.clone(), t.elapsed()));
                ages
            }
        }
    });
    let mut s = String::new();
    s.push_str("# HELP posthold_hold_depth Committed messages in the hold queue.\n# TYPE posthold_hold_depth gauge\n");
    s.push_str(&format!("posthold_hold_depth {}\n", ages.len()));
    s.push_str("# HELP posthold_held_age_seconds Time on hold of the messages in the hold queue.\n# TYPE posthold_held_age_seconds histogram\n");
    for b in AGE_BUCKETS {
        let n = ages.iter().filter(|a| **a <= *b).count();
        s.push_str(&format!(
            "posthold_held_age_seconds_bucket{{le=\"{b}\"}} {n}\n"
        ));
    }
    s.push_str(&format!(
        "posthold_held_age_seconds_bucket{{le=\"+Inf\"}} {}\n",
        ages.len()
    ));
    s.push_str(&format!(
        "posthold_held_age_seconds_sum {}\n",
        ages.iter().sum::<u64>()
    ));
    s.push_str(&format!("posthold_held_age_seconds_count {}\n", ages.len()));
    s.push_str("# HELP posthold_scheduled Releases waiting for their due time.\n# TYPE posthold_scheduled gauge\n");
    s.push_str(&format!("posthold_scheduled {}\n", shared.scheduled));
    s.push_str("# HELP posthold_next_due_timestamp_seconds Earliest scheduled due time (0: none).\n# TYPE posthold_next_due_timestamp_seconds gauge\n");
    s.push_str(&format!(
        "posthold_next_due_timestamp_seconds {}\n",
        shared.next_due.unwrap_or(0)
    ));
    s.push_str("# HELP posthold_bad_dates Messages kept because their due date is unusable.\n# TYPE posthold_bad_dates gauge\n");
    s.push_str(&format!("posthold_bad_dates {}\n", shared.bad_dates));
    s.push_str("# HELP posthold_refused_messages Messages whose action is refused for a lasting reason (see posthold check).\n# TYPE posthold_refused_messages gauge\n");
    s.push_str(&format!("posthold_refused_messages {}\n", shared.refused));
    s.push_str("# HELP posthold_damaged_messages Held messages whose queue file posthold cannot read (damaged, or a newer queue format).\n# TYPE posthold_damaged_messages gauge\n");
    s.push_str(&format!("posthold_damaged_messages {}\n", shared.damaged));
    s.push_str("# HELP posthold_kept_no_rule Held messages that no rule matches (kept; see the log).\n# TYPE posthold_kept_no_rule gauge\n");
    s.push_str(&format!("posthold_kept_no_rule {}\n", shared.no_rule));
    s.push_str("# HELP posthold_stuck_messages Held messages whose scans keep failing for longer than stuck_after.\n# TYPE posthold_stuck_messages gauge\n");
    s.push_str(&format!("posthold_stuck_messages {}\n", shared.stuck));
    s.push_str("# HELP posthold_scanner_up Whether the scanner answers (0: down; mail that needs it stays held without strikes).\n# TYPE posthold_scanner_up gauge\n");
    for (sc, up) in &shared.scanner_up {
        s.push_str(&format!(
            "posthold_scanner_up{{scanner=\"{sc}\"}} {}\n",
            u8::from(*up)
        ));
    }
    s.push_str("# HELP posthold_actions_total Actions done, by action and reason.\n# TYPE posthold_actions_total counter\n");
    for ((a, r), n) in &shared.actions {
        s.push_str(&format!(
            "posthold_actions_total{{action=\"{a}\",reason=\"{r}\"}} {n}\n"
        ));
    }
    summary(
        &mut s,
        "posthold_decision_latency_seconds",
        "Time from a file's commit to the daemon's decision (last 10,000).",
        &shared.decision_latency_us,
    );
    summary(
        &mut s,
        "posthold_release_lateness_seconds",
        "Time from a due time to the release (last 10,000).",
        &shared.release_lateness_us,
    );
    s.push_str("# HELP posthold_scans_total Scans by scanner and result (done, failed, strike).\n# TYPE posthold_scans_total counter\n");
    for ((sc, r), n) in &shared.scans {
        s.push_str(&format!(
            "posthold_scans_total{{scanner=\"{sc}\",result=\"{r}\"}} {n}\n"
        ));
    }
    s.push_str("# HELP posthold_errors_total Actions that could not be done.\n# TYPE posthold_errors_total counter\n");
    s.push_str(&format!("posthold_errors_total {}\n", shared.errors));
    s
}

/// Parses and checks a metrics address: loopback only.
pub fn parse_addr(a: &str) -> Result<SocketAddr, Fatal> {
    let addr: SocketAddr = a
        .parse()
        .map_err(|e| Fatal::config(format!("--metrics {a}: {e} (use e.g. 127.0.0.1:9142)")))?;
    if !addr.ip().is_loopback() {
        return Err(Fatal::config(format!(
            "--metrics {a}: only loopback addresses are served"
        )));
    }
    Ok(addr)
}

fn serve_one(mut c: TcpStream, cfg: &Config, shared: &Mutex<Shared>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut r = BufReader::new(match c.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    if r.read_line(&mut line).is_err() {
        return;
    }
    // Drain the request headers.
    let mut h = String::new();
    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let resp = if line.starts_with("GET /metrics ") {
        let body = {
            let g = shared.lock().expect("BUG: metrics lock poisoned");
            render(cfg, &g, now)
        };
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
    };
    let _ = c.write_all(resp.as_bytes());
}

/// Serves metrics on `addr` until `stop` is set.
pub fn serve(
    addr: SocketAddr,
    cfg: Config,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, Fatal> {
    let l = TcpListener::bind(addr).map_err(|e| Fatal::config(format!("--metrics {addr}: {e}")))?;
    l.set_nonblocking(true)
        .map_err(|e| Fatal::config(format!("--metrics {addr}: {e}")))?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => {
                    let _ = c.set_nonblocking(false);
                    serve_one(c, &cfg, &shared);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }))
}

/// Fetches the metrics text from a running daemon.
pub fn fetch(addr: SocketAddr) -> Result<String, Fatal> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
        Fatal::runtime(format!(
            "{addr}: {e} (is posthold watch running with --metrics {addr}?)"
        ))
    })?;
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(|e| Fatal::runtime(format!("{addr}: {e}")))?;
    let mut text = String::new();
    c.read_to_string(&mut text)
        .map_err(|e| Fatal::runtime(format!("{addr}: {e}")))?;
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or_else(|| Fatal::runtime(format!("{addr}: malformed reply")))
}
