//! `posthold status`: a short human summary of a running daemon's metrics.

use std::io::Write;
use std::net::SocketAddr;

use crate::daemon::metrics::fetch;
use crate::error::Fatal;

/// `posthold status`: a short human summary of the daemon's metrics.
pub fn run(addr: SocketAddr, out: &mut dyn Write) -> Result<i32, Fatal> {
    let text = fetch(addr)?;
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_string()
    };
    let next = get("posthold_next_due_timestamp_seconds");
    let next = match next.parse::<i64>() {
        Ok(0) => "none".to_string(),
        Ok(t) => chrono::DateTime::from_timestamp(t, 0).map_or(next.clone(), |d| d.to_rfc3339()),
        Err(_) => next,
    };
    let w = |e: std::io::Error| Fatal::runtime(format!("write error: {e}"));
    writeln!(
        out,
        "hold depth:  {}",
        get("posthold_queue_messages{queue=\"hold\"}")
    )
    .map_err(w)?;
    writeln!(
        out,
        "quarantine:  {}",
        get("posthold_queue_messages{queue=\"quarantine\"}")
    )
    .map_err(w)?;
    writeln!(out, "scheduled:   {}", get("posthold_scheduled")).map_err(w)?;
    writeln!(out, "next due:    {next}").map_err(w)?;
    writeln!(out, "bad dates:   {}", get("posthold_bad_dates")).map_err(w)?;
    writeln!(out, "errors:      {}", get("posthold_errors_total")).map_err(w)?;
    for l in text
        .lines()
        .filter(|l| l.starts_with("posthold_actions_total{"))
    {
        writeln!(out, "{}", l.trim_start_matches("posthold_actions_total")).map_err(w)?;
    }
    Ok(0)
}
