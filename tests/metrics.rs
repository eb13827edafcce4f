//! The daemon's metrics by Prometheus's conventions: the exposition passes
//! `promtool check metrics`, a real Prometheus (Debian's) scrapes the
//! daemon on loopback and answers a `histogram_quantile` query over its
//! histograms, and a slow client does not stall a scrape.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET; the body.
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_answers_a_histogram_quantile() {
    require_postfix();
    let pf = Instance::start(false);
    let addr = format!("127.0.0.1:{}", free_port());
    // A scanner too, so that scanner health and scan durations are served.
    let rules = pf.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[scanner.ok]\ntype = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"cat >/dev/null\"]\n\
         [[rule]]\nscan = \"ok\"\nexit = [1]\naction = \"quarantine\"\n\
         [[rule]]\nheader = \"X-Deliver-At\"\naction = \"release-at\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(
        &pf,
        &["--metrics", &addr, "--rules", rules.to_str().unwrap()],
    );
    // Mail held while the daemon runs: decisions on it are timed.
    let t0 = chrono::Utc::now().timestamp();
    for i in 0..3 {
        let due = chrono::DateTime::from_timestamp(t0 + 2 + i, 0)
            .unwrap()
            .to_rfc2822();
        pf.send(
            "alice@posthold.test",
            &["bob@posthold.test"],
            format!("Subject: m{i}\nX-Deliver-At: {due}\n\nhello\n").as_bytes(),
        );
    }
    wait_until(
        Instant::now() + Duration::from_secs(60),
        "all three decided, one released",
        || {
            let m = get(&addr, "/metrics");
            m.contains("posthold_actions_total{action=\"release\"")
                && m.contains("posthold_decision_latency_seconds_count 3")
        },
    );
    let text = get(&addr, "/metrics");
    for want in [
        "# TYPE posthold_decision_latency_seconds histogram",
        "posthold_decision_latency_seconds_count 3",
        "# TYPE posthold_release_lateness_seconds histogram",
        "posthold_release_lateness_seconds_count ",
        "# TYPE posthold_actions_total counter",
        "posthold_queue_messages{queue=\"hold\"} ",
        "posthold_queue_messages{queue=\"quarantine\"} ",
        "posthold_queue_message_age_seconds_bucket{le=\"+Inf\",queue=\"hold\"}",
        "posthold_build_info{version=\"",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "posthold_scanner_up{scanner=\"ok\"} 1",
        "posthold_scan_duration_seconds_count{scanner=\"ok\"} ",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    // OpenMetrics for a scraper that asks for it (as Prometheus does).
    let mut om = TcpStream::connect(&addr).unwrap();
    write!(
        om,
        "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n"
    )
    .unwrap();
    let mut omt = String::new();
    let _ = om.read_to_string(&mut omt);
    assert!(omt.contains("application/openmetrics-text"), "{omt}");
    assert!(
        omt.contains("# TYPE posthold_actions counter") && omt.ends_with("# EOF\n"),
        "{omt}"
    );
    // promtool, Prometheus's own linter.
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A client that trickles its request a byte at a time does not stall
    // a scrape: the scrape is answered while the trickle still goes on.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let (addr, done) = (addr.clone(), done.clone());
        std::thread::spawn(move || {
            let mut slow = TcpStream::connect(&addr).unwrap();
            for b in b"GET /metrics HTTP/1.0\r\n" {
                if slow.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(get(&addr, "/metrics").contains("posthold_build_info"));
    assert!(
        !done.load(std::sync::atomic::Ordering::SeqCst),
        "the scrape waited for the slow client"
    );
    trickle.join().unwrap();
    // A real Prometheus scrapes the daemon.
    let prom_dir = pf.dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let conf = prom_dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: posthold\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(prom_dir.join("log")).unwrap())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let q = enc("histogram_quantile(0.5, posthold_decision_latency_seconds_bucket)");
    let mut answer = String::new();
    let ok = (0..60).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        if TcpStream::connect(&web).is_err() {
            return false;
        }
        answer = get(&web, &format!("/api/v1/query?query={q}"));
        answer.contains("\"status\":\"success\"") && answer.contains("\"value\":[")
    });
    // Every query of the Grafana dashboard is valid PromQL and names only
    // metrics the daemon serves.
    let dash: String =
        std::fs::read_to_string(root().join("packaging/grafana/posthold.json")).unwrap();
    let exprs: Vec<String> = dash
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"expr\": \""))
        .map(|e| {
            e.trim_end_matches(',')
                .trim_end_matches('"')
                .replace("\\\"", "\"")
        })
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");
    let mut bad = Vec::new();
    for e in &exprs {
        let r = get(&web, &format!("/api/v1/query?query={}", enc(e)));
        if !r.contains("\"status\":\"success\"") {
            bad.push(format!("{e}: {r}"));
        }
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("posthold_"))
        {
            let base = name.trim_end_matches("_bucket");
            if !text.contains(base) {
                bad.push(format!("{e}: {name} is not served"));
            }
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(
        ok,
        "prometheus: {answer}\n{}",
        std::fs::read_to_string(prom_dir.join("log")).unwrap_or_default()
    );
    // The quantile is a number of seconds, not NaN.
    let v = answer.rsplit("\"value\":[").next().unwrap();
    let num = v.split('"').nth(1).unwrap();
    assert!(
        num.parse::<f64>().is_ok_and(|x| x.is_finite() && x >= 0.0),
        "{answer}"
    );
    let (_, log) = daemon.term();
    assert!(log.contains("release"), "{log}");
}
