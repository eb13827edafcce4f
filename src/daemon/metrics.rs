//! Prometheus metrics for `posthold watch`, served on a loopback address,
//! and what `posthold status` reads back.
//!
//! The exposition is `prometheus-client`'s: counters end in `_total`,
//! latencies are histograms (buckets add up across a fleet, `_count` is a
//! total since start), and the names follow postfix_exporter where they
//! describe the same thing (a `queue` label on queue sizes and ages).
//! Gauges that describe the spool (messages and their ages in hold and in
//! the quarantine) are computed from the spool at scrape time, so they are
//! true even for mail that Postfix or an administrator moved meanwhile; the
//! daemon's own state (scheduled releases, actions, scanner health) is
//! shared with the scheduler and the workers. Decisions about mail that
//! was already held when the daemon started (the start-up scan) are kept
//! out of the decision-latency histogram.
//!
//! The HTTP side is ours, small and bounded: at most [`MAX_CLIENTS`]
//! connections at once, each with [`REQUEST_TIME`] for the whole request
//! and [`REQUEST_BYTES`] for its head; only `GET /metrics`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::error::Fatal;
use crate::queue::spool::QUARANTINE;
use crate::queue::walk::{Descend, walk};

/// Label pairs.
type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Buckets (seconds) of the decision-latency and release-lateness
/// histograms: 1 ms to about 4 minutes.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 4.0, 10)
}

/// Buckets (seconds) of the scan-duration histogram: 10 ms to about 11 min.
fn scan_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 3.0, 11)
}

/// Daemon state shared with the metrics endpoint.
#[derive(Debug)]
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
    /// When the daemon started (µs): files committed before then are the
    /// start-up scan's, not counted in the decision latency.
    pub started_us: i64,
    /// Commit-to-decision latency (file ctime to the scheduler's decision).
    pub decision_latency: Histogram,
    /// Observations in `decision_latency`.
    pub decisions_timed: u64,
    /// Due-to-release lateness of scheduled releases.
    pub release_lateness: Histogram,
    /// Scan durations, by scanner.
    pub scan_duration: Family<Labels, Histogram>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            scheduled: 0,
            next_due: None,
            bad_dates: 0,
            refused: 0,
            damaged: 0,
            no_rule: 0,
            stuck: 0,
            scanner_up: BTreeMap::new(),
            actions: BTreeMap::new(),
            errors: 0,
            scans: BTreeMap::new(),
            started_us: crate::util::now_ms() * 1000,
            decision_latency: Histogram::new(latency_buckets()),
            decisions_timed: 0,
            release_lateness: Histogram::new(latency_buckets()),
            scan_duration: Family::new_with_constructor(|| Histogram::new(scan_buckets())),
        }
    }
}

impl Shared {
    /// Records the first decision on a file committed at `committed_us`
    /// (unless it was there before the daemon started).
    pub fn record_decision(&mut self, committed_us: i64, now_ms: i64) {
        if committed_us >= self.started_us {
            let us = (now_ms * 1000 - committed_us).max(0);
            self.decision_latency.observe(us as f64 / 1e6);
            self.decisions_timed += 1;
        }
    }

    /// Records how late a scheduled release was done after its due time.
    pub fn record_lateness(&mut self, us: u64) {
        self.release_lateness.observe(us as f64 / 1e6);
    }

    /// Records one scan's duration.
    pub fn record_scan(&mut self, scanner: &str, secs: f64) {
        self.scan_duration
            .get_or_create(&labels(&[("scanner", scanner)]))
            .observe(secs);
    }
}

/// Upper bounds (seconds) of the queue-age histogram buckets.
pub const AGE_BUCKETS: &[u64] = &[
    60,
    600,
    3600,
    6 * 3600,
    86400,
    3 * 86400,
    7 * 86400,
    30 * 86400,
];

/// Ages (seconds since the last status change) of the committed messages
/// in a queue.
fn queue_ages(cfg: &Config, queue: &str, now: i64) -> Vec<u64> {
    walk(cfg, queue, Descend::HashDirs)
        .flatten()
        .filter(|f| f.file_type.is_file())
        .filter_map(|f| std::fs::symlink_metadata(&f.path).ok())
        .filter(|m| m.mode() & 0o700 == 0o700)
        .map(|m| (now - m.ctime()).max(0) as u64)
        .collect()
}

/// The longest a walk of the queues is reused: a scrape must not cost a
/// stat of every held message each time. A walk is reused for 20 times
/// what it cost, at most this long, so small queues are always fresh.
pub const SPOOL_CACHE: Duration = Duration::from_secs(15);

/// The last walk: when, the clock then, the ages by queue, and its cost.
type AgeCache = Option<(Instant, i64, Vec<(&'static str, Vec<u64>)>, Duration)>;

static AGES: Mutex<AgeCache> = Mutex::new(None);

/// Ages in hold and in the quarantine, from a fresh or a recent walk.
fn ages(cfg: &Config, now: i64) -> Vec<(&'static str, Vec<u64>)> {
    let mut c = AGES.lock().expect("BUG: metrics cache poisoned");
    match &*c {
        Some((at, then, ages, cost)) if at.elapsed() < (*cost * 20).min(SPOOL_CACHE) => ages
            .iter()
            .map(|(q, a)| {
                (
                    *q,
                    a.iter().map(|a| a + (now - then).max(0) as u64).collect(),
                )
            })
            .collect(),
        _ => {
            let t = Instant::now();
            let ages = vec![
                ("hold", queue_ages(cfg, "hold", now)),
                ("quarantine", queue_ages(cfg, QUARANTINE, now)),
            ];
            *c = Some((Instant::now(), now, ages.clone(), t.elapsed()));
            ages
        }
    }
}

/// This process as Prometheus's process collectors describe it (Linux).
fn process_metrics(reg: &mut Registry) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which is in parentheses).
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as f64;
    // utime 14, stime 15, starttime 22, vsize 23, rss 24 (1-based in
    // proc(5); here 3 less: index 0 is field 3, the state).
    let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    cpu.inc_by((num(11) + num(12)) / tick);
    reg.register(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        cpu,
    );
    // Boot time from the clocks (/proc/stat is hidden by ProcSubset=pid):
    // now - time since boot.
    let since_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0);
    let btime = crate::util::now_ms() as f64 / 1000.0 - since_boot;
    let gauge = |v: f64| {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(v);
        g
    };
    reg.register(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        gauge(btime + num(19) / tick),
    );
    reg.register(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        gauge(num(20)),
    );
    reg.register(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        gauge(num(21) * page),
    );
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    reg.register(
        "process_open_fds",
        "Number of open file descriptors",
        gauge(fds as f64),
    );
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        reg.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            gauge(soft as f64),
        );
    }
}

fn int_gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

/// What a scrape reads outside the daemon's lock: the spool walk and
/// this process's own figures.
pub struct Outside {
    ages: Vec<(&'static str, Vec<u64>)>,
    process: Registry,
}

/// Reads what a scrape needs from the spool and /proc (no lock held).
pub fn outside(cfg: &Config, now: i64) -> Outside {
    let mut process = Registry::default();
    process_metrics(&mut process);
    Outside {
        ages: ages(cfg, now),
        process,
    }
}

/// The metrics text (OpenMetrics text, as `prometheus-client` writes it).
pub fn render(out: Outside, shared: &Shared) -> String {
    let mut reg = Registry::default();
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    reg.register("posthold_build_info", "posthold's version (always 1)", info);
    let depth = Family::<Labels, Gauge>::default();
    let age = Family::<Labels, Histogram>::new_with_constructor(|| {
        Histogram::new(AGE_BUCKETS.iter().map(|b| *b as f64))
    });
    for (queue, ages) in out.ages {
        let l = labels(&[("queue", queue)]);
        depth.get_or_create(&l).set(ages.len() as i64);
        let h = age.get_or_create(&l);
        for a in ages {
            h.observe(a as f64);
        }
    }
    reg.register(
        "posthold_queue_messages",
        "Committed messages in the hold queue and in the quarantine",
        depth,
    );
    reg.register(
        "posthold_queue_message_age_seconds",
        "Time since the last status change (hold, quarantine) of the messages there",
        age,
    );
    for (name, help, v) in [
        (
            "posthold_scheduled",
            "Releases waiting for their due time",
            shared.scheduled as i64,
        ),
        (
            "posthold_next_due_timestamp_seconds",
            "Earliest scheduled due time (0: none)",
            shared.next_due.unwrap_or(0),
        ),
        (
            "posthold_bad_dates",
            "Messages kept because their due date is unusable",
            shared.bad_dates as i64,
        ),
        (
            "posthold_refused_messages",
            "Messages whose action is refused for a lasting reason (see posthold check)",
            shared.refused as i64,
        ),
        (
            "posthold_damaged_messages",
            "Held messages whose queue file posthold cannot read (damaged, or a newer queue format)",
            shared.damaged as i64,
        ),
        (
            "posthold_kept_no_rule",
            "Held messages that no rule matches (kept; see the log)",
            shared.no_rule as i64,
        ),
        (
            "posthold_stuck_messages",
            "Held messages whose scans keep failing for longer than stuck_after",
            shared.stuck as i64,
        ),
    ] {
        reg.register(name, help, int_gauge(v));
    }
    let up = Family::<Labels, Gauge>::default();
    for (sc, u) in &shared.scanner_up {
        up.get_or_create(&labels(&[("scanner", sc)]))
            .set(i64::from(*u));
    }
    reg.register(
        "posthold_scanner_up",
        "Whether the scanner answers (0: down; mail that needs it stays held without strikes)",
        up,
    );
    let actions = Family::<Labels, Counter>::default();
    for ((a, r), n) in &shared.actions {
        actions
            .get_or_create(&labels(&[("action", a), ("reason", r)]))
            .inc_by(*n);
    }
    reg.register(
        "posthold_actions",
        "Actions done, by action and reason",
        actions,
    );
    let errors = Counter::<u64>::default();
    errors.inc_by(shared.errors);
    reg.register("posthold_errors", "Actions that could not be done", errors);
    let scans = Family::<Labels, Counter>::default();
    for ((sc, r), n) in &shared.scans {
        scans
            .get_or_create(&labels(&[("scanner", sc), ("result", r)]))
            .inc_by(*n);
    }
    reg.register(
        "posthold_scans",
        "Scans by scanner and result (done, failed, strike)",
        scans,
    );
    reg.register(
        "posthold_decision_latency_seconds",
        "Time from a file's commit to the daemon's decision (mail committed while the daemon runs)",
        shared.decision_latency.clone(),
    );
    reg.register(
        "posthold_release_lateness_seconds",
        "Time from a due time to the release",
        shared.release_lateness.clone(),
    );
    reg.register(
        "posthold_scan_duration_seconds",
        "Time a scan took, by scanner",
        shared.scan_duration.clone(),
    );
    let mut s = String::new();
    if encode(&mut s, &reg).is_err() {
        s.clear();
    }
    // The process's figures: the same text format, before the end mark.
    let mut p = String::new();
    if encode(&mut p, &out.process).is_ok()
        && let Some(body) = p.strip_suffix("# EOF\n")
        && let Some(head) = s.strip_suffix("# EOF\n")
    {
        s = format!("{head}{body}# EOF\n");
    }
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

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a
/// counter family is named with its `_total` in HELP and TYPE, and there
/// is no `# EOF`. Everything else is the same in both.
pub fn classic_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Connections served at once; more are answered 503 at once (so that
/// idle connections cannot fill the listen backlog).
pub const MAX_CLIENTS: usize = 8;
/// The whole request (head) must arrive within this time.
pub const REQUEST_TIME: Duration = Duration::from_secs(2);
/// The longest request head read.
pub const REQUEST_BYTES: usize = 8192;

/// Reads a request head within the limits; `None` if it is too slow, too
/// long or cut short.
fn read_head(c: &mut TcpStream) -> Result<Vec<u8>, &'static str> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("408 Request Timeout");
        }
        c.set_read_timeout(Some(left))
            .map_err(|_| "400 Bad Request")?;
        let n = match c.read(&mut buf) {
            Ok(0) | Err(_) => return Err("408 Request Timeout"),
            Ok(n) => n,
        };
        // Only the new bytes (and three before them) can end the head.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        let tail = &head[from..];
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > REQUEST_BYTES {
            return Err("431 Request Header Fields Too Large");
        }
    }
}

fn serve_one(mut c: TcpStream, cfg: &Config, shared: &Mutex<Shared>) {
    let _ = c.set_write_timeout(Some(REQUEST_TIME));
    let head = match read_head(&mut c) {
        Ok(h) => h,
        Err(status) => {
            let _ = write!(c, "HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
            return;
        }
    };
    let now = crate::util::now();
    let resp = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
        // The spool walk and /proc first, without the daemon's lock.
        let out = outside(cfg, now);
        let body = match shared.lock() {
            Ok(g) => render(out, &g),
            Err(_) => return,
        };
        // OpenMetrics to those who ask for it (Prometheus does), the
        // classic text format to everyone else (promtool, curl, status).
        let (kind, body) = if String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .lines()
            .any(|l| l.starts_with("accept:") && l.contains("application/openmetrics-text"))
        {
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        } else {
            (
                "text/plain; version=0.0.4; charset=utf-8",
                classic_text(&body),
            )
        };
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
    };
    let _ = c.write_all(resp.as_bytes());
}

/// Serves metrics on `addr` until `stop` is set: one thread per
/// connection, at most [`MAX_CLIENTS`] at once.
pub fn serve(
    addr: SocketAddr,
    cfg: Config,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, Fatal> {
    let l = TcpListener::bind(addr).map_err(|e| Fatal::config(format!("--metrics {addr}: {e}")))?;
    l.set_nonblocking(true)
        .map_err(|e| Fatal::config(format!("--metrics {addr}: {e}")))?;
    let busy = Arc::new(AtomicUsize::new(0));
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    if busy.load(Ordering::Acquire) >= MAX_CLIENTS {
                        let _ = c.set_write_timeout(Some(Duration::from_millis(100)));
                        let _ = c.write_all(
                            b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                        );
                        continue;
                    }
                    let slot = Slot::take(&busy);
                    let (cfg, shared) = (cfg.clone(), Arc::clone(&shared));
                    let _ = std::thread::Builder::new()
                        .name("metrics".into())
                        .spawn(move || {
                            let _slot = slot; // given back however the thread ends
                            serve_one(c, &cfg, &shared);
                        });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }))
}

/// One of the [`MAX_CLIENTS`] connection slots, given back on drop (a
/// panic included).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Slot {
        busy.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(busy))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total_and_drops_eof() {
        let om = "# HELP a_total_x x.\n# HELP c Things.\n# TYPE c counter\nc_total{k=\"v\"} 3\n# HELP g G.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_total_x x.\n# HELP c_total Things.\n# TYPE c_total counter\nc_total{k=\"v\"} 3\n# HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }
}
