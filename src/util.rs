//! Small things every layer uses: one clock, and text quoting as Postfix
//! does it (`printable()`, postqueue's JSON strings).

/// Seconds since the epoch, now (0 if the clock is before 1970).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time in seconds as RFC 3339, for logs (empty if out of range).
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Replaces what Postfix's `printable()` would: bytes that are neither
/// printable ASCII nor (with UTF-8 enabled) a lead byte followed by
/// continuation bytes become `?`.
pub fn printable(s: &[u8], utf8: bool) -> Vec<u8> {
    let mut out = s.to_vec();
    let mut i = 0;
    while i < out.len() {
        let ch = out[i];
        if ch.is_ascii() && (0x20..0x7f).contains(&ch) {
        } else if utf8
            && (194..=254).contains(&ch)
            && out.get(i + 1).is_some_and(|c| (128..192).contains(c))
        {
            while out.get(i + 1).is_some_and(|c| (128..192).contains(c)) {
                i += 1;
            }
        } else {
            out[i] = b'?';
        }
        i += 1;
    }
    out
}

/// Quotes a string for JSON exactly as postqueue does, then applies
/// `printable()`.
pub fn json_quote(s: &[u8], utf8: bool) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    for &ch in s {
        match ch {
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 || c == 0x7f => out.extend_from_slice(format!("\\u{c:04X}").as_bytes()),
            b'\\' | b'"' => {
                out.push(b'\\');
                out.push(ch);
            }
            c => out.push(c),
        }
    }
    // printable() leaves only ASCII and well-formed-looking UTF-8.
    String::from_utf8_lossy(&printable(&out, utf8)).into_owned()
}
