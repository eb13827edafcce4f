//! spamd's SPAMC protocol, CHECK or SYMBOLS:
//!
//! ```text
//! SYMBOLS SPAMC/1.5\r\n  Content-length: N\r\n  [User: u\r\n]  \r\n  <message>
//! SPAMD/1.1 0 EX_OK\r\n  [Content-length: M\r\n]  Spam: True ; 15.0 / 5.0\r\n  \r\n  [symbols]
//! ```
//!
//! The reply must be exactly that shape: a status line with code 0, one
//! `Spam:` header, for SYMBOLS a body of exactly its `Content-length`, and
//! nothing after it. Anything else fails closed.

use super::net::connect_to;
use super::{Address, Answer, Budget, Failure, Message, Scanner, sanitize};

/// Parses a complete spamd reply.
pub fn parse_reply(reply: &[u8], symbols: bool) -> Result<Answer, Failure> {
    let garbled = |why: &str| Failure::soft(format!("{why}: {}", sanitize(reply, 160)));
    let truncated = || {
        if reply.is_empty() {
            Failure::strike("spamd closed the connection without a reply")
        } else {
            Failure::strike(format!("truncated reply: {}", sanitize(reply, 160)))
        }
    };
    let Some(head_end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        // A status line alone is how spamd reports errors.
        if let Some(line) = reply.strip_suffix(b"\r\n")
            && !line.contains(&b'\n')
            && line.starts_with(b"SPAMD/")
        {
            return Err(Failure::answered(format!("spamd: {}", sanitize(line, 200))));
        }
        return Err(truncated());
    };
    let head = std::str::from_utf8(&reply[..head_end]).map_err(|_| garbled("not text"))?;
    let body = &reply[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut st = status.splitn(3, ' ');
    let (proto, code) = (st.next().unwrap_or(""), st.next().unwrap_or(""));
    if !proto.starts_with("SPAMD/1.") {
        return Err(garbled("not a spamd reply"));
    }
    if code != "0" {
        return Err(Failure::answered(format!(
            "spamd: {}",
            sanitize(status.as_bytes(), 200)
        )));
    }
    let (mut spam, mut len) = (None, None);
    for l in lines {
        let (name, value) = l.split_once(':').ok_or_else(|| garbled("bad header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("Spam") {
            if spam.is_some() {
                return Err(garbled("two Spam headers"));
            }
            // "True ; 15.0 / 5.0"
            let (flag, scores) = value
                .split_once(';')
                .ok_or_else(|| garbled("bad Spam header"))?;
            let (score, threshold) = scores
                .split_once('/')
                .ok_or_else(|| garbled("bad Spam header"))?;
            let num = |s: &str| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| garbled("bad score"))
            };
            let flag = match flag.trim() {
                f if f.eq_ignore_ascii_case("true") || f.eq_ignore_ascii_case("yes") => true,
                f if f.eq_ignore_ascii_case("false") || f.eq_ignore_ascii_case("no") => false,
                _ => return Err(garbled("bad Spam header")),
            };
            spam = Some((flag, num(score)?, num(threshold)?));
        } else if name.eq_ignore_ascii_case("Content-length") {
            len = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| garbled("bad Content-length"))?,
            );
        }
    }
    let (spam, score, threshold) = spam.ok_or_else(|| garbled("no Spam header"))?;
    let symbols = if symbols {
        let n = len.ok_or_else(|| garbled("SYMBOLS reply without Content-length"))?;
        if body.len() < n {
            return Err(truncated());
        }
        if body.len() > n {
            return Err(garbled("data after the reply"));
        }
        std::str::from_utf8(body)
            .map_err(|_| garbled("symbols not text"))?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        if !body.is_empty() {
            return Err(garbled("data after the reply"));
        }
        Vec::new()
    };
    Ok(Answer::Spam {
        spam,
        score,
        threshold,
        symbols,
    })
}

/// Checks one message.
pub fn check(
    sc: &Scanner,
    addr: &Address,
    symbols: bool,
    user: Option<&str>,
    msg: &Message,
    len: u64,
    b: &Budget,
) -> Result<Answer, Failure> {
    let mut conn = connect_to(addr, sc.connect_timeout)?;
    let mut head = format!(
        "{} SPAMC/1.5\r\nContent-length: {len}\r\n",
        if symbols { "SYMBOLS" } else { "CHECK" }
    );
    if let Some(u) = user {
        head.push_str(&format!("User: {u}\r\n"));
    }
    head.push_str("\r\n");
    // Read to EOF: spamd closes after its reply, so anything extra shows.
    super::net::exchange(
        &mut conn,
        head.as_bytes(),
        msg,
        b,
        super::net::Reply {
            cap: 64 * 1024,
            complete: |_| false,
            half_close: true,
        },
        |r| parse_reply(r, symbols),
    )
}

/// Asks spamd whether it is there: `PING`, answered `SPAMD/1.5 0 PONG`.
pub fn ping(sc: &Scanner, addr: &Address, b: &Budget) -> Result<(), Failure> {
    let mut conn = connect_to(addr, sc.connect_timeout)?;
    conn.send(b"PING SPAMC/1.5\r\n\r\n", b)?;
    conn.shutdown_write();
    let reply = conn.receive(4096, b, |_| false)?;
    let pong = reply
        .strip_suffix(b"\r\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .is_some_and(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            matches!(w[..], [p, "0", "PONG"] if p.starts_with("SPAMD/1."))
        });
    if pong {
        Ok(())
    } else {
        Err(Failure::soft(format!("no PONG: {}", sanitize(&reply, 120))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply(
                b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1005.2 / 5.0\r\n\r\n",
                false
            ),
            Ok(Answer::Spam {
                spam: true,
                score: 1005.2,
                threshold: 5.0,
                symbols: vec![]
            })
        );
        let r = parse_reply(
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: False ; -0.1 / 5.0\r\n\r\nGTUBE,OTHER",
            true,
        )
        .unwrap();
        assert!(
            matches!(r, Answer::Spam { spam: false, ref symbols, .. } if symbols == &["GTUBE", "OTHER"])
        );
        let soft = |r: &[u8], s| parse_reply(r, s).is_err_and(|f| !f.strike);
        let strike = |r: &[u8], s| parse_reply(r, s).is_err_and(|f| f.strike);
        assert!(soft(b"SPAMD/1.0 76 Bad header line: FOO\r\n", false));
        assert!(soft(b"HTTP/1.0 200 OK\r\n\r\n", false));
        assert!(soft(b"SPAMD/1.1 0 EX_OK\r\n\r\n", false));
        assert!(soft(
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\nSpam: False ; 1 / 5\r\n\r\n",
            false
        ));
        assert!(soft(
            b"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n",
            false
        ));
        assert!(soft(
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; NaN / 5\r\n\r\n",
            false
        ));
        assert!(soft(
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\nSPAMD/1.1 0 EX_OK\r\n",
            false
        ));
        assert!(soft(
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n\r\n",
            true
        ));
        assert!(strike(
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 20\r\nSpam: True ; 1 / 5\r\n\r\nGTUBE",
            true
        ));
        assert!(strike(b"SPAMD/1.1 0 EX_OK\r\nSpam: Tr", false));
        assert!(strike(b"", false));
    }
}
