//! rspamd's HTTP protocol (`/checkv2`):
//!
//! ```text
//! POST /checkv2 HTTP/1.0\r\n  Content-Length: N\r\n  Queue-Id: ID\r\n
//! From: sender\r\n  Rcpt: r1\r\n ...  \r\n  <message>
//! HTTP/1.1 200 OK\r\n  ...  Content-Length: M\r\n  \r\n
//! {"action":"reject","score":15.0,"required_score":15.0,"symbols":{...}}
//! ```
//!
//! The reply must be exactly that: status 200, a `Content-Length` and a
//! JSON body of that length with an action rspamd defines and finite
//! scores, and nothing after it. Anything else fails closed: an error
//! status is rspamd's own refusal (the message stays held); a cut reply is
//! a crash; garbage is garbage.

use std::collections::BTreeMap;

use super::net::connect_to;
use super::{Address, Answer, Budget, Failure, Message, Scanner, sanitize};

/// The actions rspamd 3 defines (`discard` and `quarantine` are its
/// special ones). Any other (a custom action) keeps the message held: no
/// rule could have been written for it.
pub const ACTIONS: &[&str] = &[
    "no action",
    "greylist",
    "add header",
    "rewrite subject",
    "soft reject",
    "reject",
    "discard",
    "quarantine",
];

/// At most this many `Rcpt:` headers (rspamd uses them for per-user
/// settings only).
const MAX_RCPT: usize = 100;

#[derive(serde::Deserialize)]
struct Reply {
    action: String,
    score: f64,
    required_score: f64,
    /// rspamd did not run its checks (settings, a plugin, or a pre-result
    /// such as GTUBE's reject).
    #[serde(default)]
    is_skipped: bool,
    #[serde(default)]
    symbols: BTreeMap<String, serde_json::Value>,
}

/// Where the head ends and how long the body must be, once the head is in.
fn head_of(reply: &[u8]) -> Option<(usize, Option<usize>)> {
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&reply[..end]);
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    Some((end, len))
}

/// Whether a whole reply is in (rspamd may keep the connection open).
fn complete(reply: &[u8]) -> bool {
    matches!(head_of(reply), Some((end, Some(n))) if reply.len() >= end + n)
}

/// Parses a complete rspamd reply.
pub fn parse_reply(reply: &[u8]) -> Result<Answer, Failure> {
    let garbled = |why: &str| Failure::soft(format!("{why}: {}", sanitize(reply, 160)));
    let Some((end, len)) = head_of(reply) else {
        return Err(if reply.is_empty() {
            Failure::strike("rspamd closed the connection without a reply")
        } else {
            Failure::strike(format!("truncated reply: {}", sanitize(reply, 160)))
        });
    };
    let head = std::str::from_utf8(&reply[..end]).map_err(|_| garbled("not text"))?;
    let status = head.lines().next().unwrap_or_default();
    let mut st = status.splitn(3, ' ');
    let (proto, code) = (st.next().unwrap_or(""), st.next().unwrap_or(""));
    if !proto.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(garbled("not an HTTP reply"));
    }
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
    {
        return Err(garbled("a transfer encoding"));
    }
    let Some(len) = len else {
        return Err(garbled("no Content-Length"));
    };
    let body = &reply[end..];
    if body.len() < len {
        return Err(Failure::strike(format!(
            "truncated reply: {}",
            sanitize(reply, 160)
        )));
    }
    if body.len() > len {
        return Err(garbled("data after the reply"));
    }
    if code != "200" {
        // rspamd's own error (a bad request, an internal error).
        return Err(Failure::answered(format!(
            "rspamd: {}: {}",
            sanitize(status.as_bytes(), 80),
            sanitize(body, 160)
        )));
    }
    let r: Reply = serde_json::from_slice(body).map_err(|e| garbled(&format!("bad JSON ({e})")))?;
    if !ACTIONS.contains(&r.action.as_str()) {
        return Err(garbled("unknown action"));
    }
    if !r.score.is_finite() || !r.required_score.is_finite() {
        return Err(garbled("bad score"));
    }
    // Skipped with no verdict: the message was not scanned (a rule must
    // not release it as clean). Skipped with a verdict (a pre-result, as
    // for GTUBE) is a verdict.
    if r.is_skipped && r.action == "no action" {
        return Err(Failure::answered(
            "rspamd skipped the message (its settings or a plugin): not scanned",
        ));
    }
    Ok(Answer::Rspamd {
        action: r.action,
        score: r.score,
        required: r.required_score,
        symbols: r.symbols.into_keys().collect(),
    })
}

/// A header value we may send: printable, no line break.
fn safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= 998 && v.bytes().all(|b| (0x20..0x7f).contains(&b) || b >= 0x80)
}

/// Checks one message.
pub fn check(
    sc: &Scanner,
    addr: &Address,
    msg: &Message,
    len: u64,
    b: &Budget,
) -> Result<Answer, Failure> {
    let mut conn = connect_to(addr, sc.connect_timeout)?;
    let mut head = format!(
        "POST /checkv2 HTTP/1.0\r\nContent-Length: {len}\r\nQueue-Id: {}\r\n",
        msg.id
    );
    if msg.sender.is_empty() {
        head.push_str("From: <>\r\n"); // the null sender (bounces)
    } else if safe(&msg.sender) {
        head.push_str(&format!("From: {}\r\n", msg.sender));
    }
    for r in msg.recipients.iter().filter(|r| safe(r)).take(MAX_RCPT) {
        head.push_str(&format!("Rcpt: {r}\r\n"));
    }
    head.push_str("\r\n");
    // rspamd may keep the connection open: the reply ends at its length.
    super::net::exchange(
        &mut conn,
        head.as_bytes(),
        msg,
        b,
        super::net::Reply {
            cap: 256 << 10,
            complete,
            half_close: false,
        },
        parse_reply,
    )
}

/// Asks rspamd whether it is there: `GET /ping`, answered `pong`.
pub fn ping(sc: &Scanner, addr: &Address, b: &Budget) -> Result<(), Failure> {
    let mut conn = connect_to(addr, sc.connect_timeout)?;
    conn.send(b"GET /ping HTTP/1.0\r\n\r\n", b)?;
    let reply = conn.receive(4096, b, complete)?;
    let pong = head_of(&reply).is_some_and(|(end, _)| {
        let status = reply.split(|&b| b == b'\n').next().unwrap_or_default();
        status.starts_with(b"HTTP/1.")
            && status.get(8..13) == Some(b" 200 ".as_slice())
            && reply[end..].trim_ascii() == b"pong"
    });
    if pong {
        Ok(())
    } else {
        Err(Failure::soft(format!("no pong: {}", sanitize(&reply, 120))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn replies() {
        let r = parse_reply(&http(
            r#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0}}}"#,
        ))
        .unwrap();
        assert_eq!(
            r,
            Answer::Rspamd {
                action: "reject".into(),
                score: 15.0,
                required: 15.0,
                symbols: vec!["GTUBE".into()],
            }
        );
        assert!(complete(&http("{}")));
        assert!(!complete(&http("{}")[..20]));
        let soft = |r: &[u8]| parse_reply(r).is_err_and(|f| !f.strike && !f.answered);
        let strike = |r: &[u8]| parse_reply(r).is_err_and(|f| f.strike);
        let answered = |r: &[u8]| parse_reply(r).is_err_and(|f| f.answered);
        assert!(soft(&http(
            r#"{"action":"maybe","score":1,"required_score":15}"#
        )));
        assert!(soft(&http(r#"{"score":1,"required_score":15}"#)));
        assert!(soft(&http("not json")));
        assert!(soft(b"SPAMD/1.1 0 EX_OK\r\n\r\n"));
        assert!(soft(b"HTTP/1.1 200 OK\r\n\r\n{}"));
        let mut extra = http(r#"{"action":"reject","score":1,"required_score":15}"#);
        extra.extend_from_slice(b"HTTP/1.1 200 OK");
        assert!(soft(&extra));
        assert!(answered(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror"
        ));
        assert!(answered(&http(
            r#"{"is_skipped":true,"action":"no action","score":0,"required_score":15}"#
        )));
        assert!(
            parse_reply(&http(
                r#"{"action":"discard","score":1,"required_score":15}"#
            ))
            .is_ok()
        );
        assert!(strike(b""));
        assert!(strike(b"HTTP/1.1 200 OK\r\nContent-Le"));
        assert!(strike(
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"action\""
        ));
        assert!(safe("alice@example.com") && !safe("a\r\nX-Evil: 1") && !safe(""));
    }
}
