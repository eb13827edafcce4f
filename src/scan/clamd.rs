//! clamd's INSTREAM command: `zINSTREAM\0`, then chunks (a 4-byte length
//! in network order and the data), then a zero length; the reply is one
//! NUL-terminated line, `stream: OK` or `stream: NAME FOUND`, and clamd
//! closes the connection. Anything else fails closed.

use super::net::connect_to;
use super::{Address, Answer, Budget, Failure, Message, Scanner, sanitize};

/// Parses clamd's reply to one z-command (without anything after it).
pub fn parse_reply(reply: &[u8]) -> Result<Answer, Failure> {
    let Some(line) = reply.strip_suffix(b"\0") else {
        return Err(if reply.is_empty() {
            Failure::strike("clamd closed the connection without a reply")
        } else {
            Failure::strike(format!("truncated reply: {}", sanitize(reply, 120)))
        });
    };
    let garbled = || Failure::soft(format!("unexpected reply: {}", sanitize(line, 120)));
    if line.contains(&0) {
        return Err(garbled());
    }
    let text = std::str::from_utf8(line).map_err(|_| garbled())?;
    if text.ends_with(" ERROR") {
        return Err(Failure::answered(format!("clamd: {}", sanitize(line, 200))));
    }
    let rest = text.strip_prefix("stream: ").ok_or_else(garbled)?;
    if rest == "OK" {
        return Ok(Answer::Virus(None));
    }
    match rest.strip_suffix(" FOUND") {
        Some(name) if !name.trim().is_empty() && !name.chars().any(char::is_control) => {
            Ok(Answer::Virus(Some(name.to_string())))
        }
        _ => Err(garbled()),
    }
}

/// Scans one message with INSTREAM.
pub fn instream(
    sc: &Scanner,
    addr: &Address,
    chunk: usize,
    msg: &Message,
    b: &Budget,
) -> Result<Answer, Failure> {
    let mut conn = connect_to(addr, sc.connect_timeout)?;
    conn.send(b"zINSTREAM\0", b)?;
    let chunk = chunk.clamp(1, 1 << 24);
    let sent = msg.with_content(|content| {
        let mut buf = vec![0u8; 4 + chunk];
        loop {
            let mut n = 0;
            // Fill the chunk (the content reader returns one record at a time).
            while n < chunk {
                match content.read(&mut buf[4 + n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Failure::answered(format!("{}: {e}", msg.id))),
                }
            }
            buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
            if let Err(f) = conn.send(&buf[..4 + n], b) {
                return Ok(Some(f));
            }
            if n == 0 {
                return Ok(None);
            }
        }
    })?;
    // clamd may have answered early (its size limit) and closed: its reply
    // says why; no reply at all after a failed send is a crash.
    let reply = conn.receive(4096, b, |r| r.contains(&0));
    let reply = match (sent, reply) {
        (None, r) => r?,
        // After a failed send only an error explains it; a verdict would
        // be on a message clamd never saw whole.
        (Some(f), Ok(r)) => {
            return Err(match parse_reply(&r) {
                Err(e) if e.answered => e,
                _ => f,
            });
        }
        (Some(f), Err(_)) => return Err(f),
    };
    let outcome = parse_reply(&reply)?;
    conn.expect_eof(b)?;
    Ok(outcome)
}

/// Asks clamd whether it is there: `zPING`, answered `PONG`.
pub fn ping(sc: &Scanner, addr: &Address, b: &Budget) -> Result<(), Failure> {
    let mut conn = connect_to(addr, sc.connect_timeout)?;
    conn.send(b"zPING\0", b)?;
    let reply = conn.receive(4096, b, |r| r.contains(&0))?;
    if reply == b"PONG\0" {
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
        assert_eq!(parse_reply(b"stream: OK\0"), Ok(Answer::Virus(None)));
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0"),
            Ok(Answer::Virus(Some("Eicar-Test-Signature".into())))
        );
        let soft = |r: &[u8]| parse_reply(r).is_err_and(|f| !f.strike);
        let strike = |r: &[u8]| parse_reply(r).is_err_and(|f| f.strike);
        assert!(soft(b"INSTREAM size limit exceeded. ERROR\0"));
        assert!(soft(b"stream: FOUND\0"));
        assert!(soft(b"1: stream: OK\0"));
        assert!(soft(b"hello\0"));
        assert!(soft(b"stream: OK\0\0"));
        assert!(strike(b"stream: O"));
        assert!(strike(b""));
    }
}
