//! Queue IDs: legal names, the short and long forms, and what they encode.
//!
//! A queue ID names a queue file and encodes the file's inode number, so the
//! name and the inode must stay together (a rename keeps both; a copy breaks
//! the pair and `postsuper -s` renames the copy).
//!
//! * **Short form** (default): five uppercase hex digits of the microseconds,
//!   then the inode in unpadded uppercase hex. `0D86898C1CD` = µs 55400,
//!   inode 0x98C1CD.
//! * **Long form** (`enable_long_queue_ids = yes`): seconds in base 52
//!   (at least six digits), microseconds in base 52 (exactly four), the
//!   separator `z`, then the inode in base 51 (whose alphabet lacks `z`).
//!   Time digits may contain `z` too, so the separator is the *last* `z`,
//!   and it must be at index 10 or later.
//!
//! [`is_legal`] is the only gate between untrusted text and a path: a legal
//! name is 1 to 255 characters of `[A-Za-z0-9_]`, so it can never contain
//! `/`, `.` or be empty.

use crate::error::{Error, ErrorKind, Result};

/// The base-52 alphabet of long queue IDs; index 51 is `z`.
pub const LONG_ALPHABET: &[u8; 52] = b"0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz";

/// The separator between the time and inode parts of a long ID.
pub const LONG_SEPARATOR: u8 = b'z';

/// Longest legal queue file name (Postfix's VALID_HOSTNAME_LEN).
pub const MAX_NAME_LEN: usize = 255;

/// Whether `name` is a legal queue file name as Postfix's
/// `mail_queue_id_ok()` decides: 1 to 255 characters of `[A-Za-z0-9_]`.
/// Temporary names (`123.456`) and `#FIX` names are illegal on purpose.
pub fn is_legal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Which of the two forms an ID is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Hex microseconds + hex inode.
    Short,
    /// Base-52 seconds and microseconds, `z`, base-51 inode.
    Long,
}

/// What a queue ID encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The form of the ID.
    pub form: Form,
    /// Seconds since the epoch (long form only).
    pub seconds: Option<u64>,
    /// Microseconds of the creation time.
    pub micros: u32,
    /// The inode number of the queue file.
    pub inode: u64,
}

fn bad(id: &str, why: &str) -> Error {
    Error::new(ErrorKind::BadQueueId, format!("bad queue ID {id:?}: {why}"))
}

fn long_digit(b: u8, radix: u64) -> Option<u64> {
    let v = LONG_ALPHABET.iter().position(|&c| c == b)? as u64;
    (v < radix).then_some(v)
}

fn decode_radix(s: &[u8], radix: u64) -> Option<u64> {
    let mut v: u64 = 0;
    for &b in s {
        v = v.checked_mul(radix)?.checked_add(long_digit(b, radix)?)?;
    }
    Some(v)
}

fn encode_radix(mut v: u64, radix: u64, min_width: usize) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(LONG_ALPHABET[(v % radix) as usize]);
        v /= radix;
        if v == 0 {
            break;
        }
    }
    while digits.len() < min_width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("BUG: alphabet is ASCII")
}

/// Index of the long-form separator, if `id` is in long form.
pub fn long_separator(id: &str) -> Option<usize> {
    let z = id.bytes().rposition(|b| b == LONG_SEPARATOR)?;
    (z >= 10).then_some(z)
}

/// Decodes a queue ID. Names that are legal but not in either form (for
/// example fast-flush log names) give [`ErrorKind::BadQueueId`].
pub fn decode(id: &str) -> Result<Decoded> {
    if !is_legal(id) {
        return Err(bad(id, "not a legal queue file name"));
    }
    let b = id.as_bytes();
    if let Some(z) = long_separator(id) {
        let seconds =
            decode_radix(&b[..z - 4], 52).ok_or_else(|| bad(id, "bad long-form seconds"))?;
        let micros = decode_radix(&b[z - 4..z], 52)
            .filter(|&u| u < 1_000_000)
            .ok_or_else(|| bad(id, "bad long-form microseconds"))?;
        let inode_part = &b[z + 1..];
        if inode_part.is_empty() {
            return Err(bad(id, "missing inode"));
        }
        let inode = decode_radix(inode_part, 51).ok_or_else(|| bad(id, "bad long-form inode"))?;
        return Ok(Decoded {
            form: Form::Long,
            seconds: Some(seconds),
            micros: micros as u32,
            inode,
        });
    }
    if b.len() < 6 || b.len() > 5 + 16 {
        return Err(bad(id, "wrong length for a short queue ID"));
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
    {
        return Err(bad(id, "short queue IDs are uppercase hex"));
    }
    let micros = u32::from_str_radix(&id[..5], 16).expect("BUG: checked hex");
    if micros >= 1_000_000 {
        return Err(bad(id, "microseconds out of range"));
    }
    let inode = u64::from_str_radix(&id[5..], 16).map_err(|_| bad(id, "inode overflow"))?;
    Ok(Decoded {
        form: Form::Short,
        seconds: None,
        micros,
        inode,
    })
}

/// The short-form ID for a creation time's microseconds and an inode.
pub fn encode_short(micros: u32, inode: u64) -> String {
    format!("{:05X}{:X}", micros % 1_000_000, inode)
}

/// The long-form ID for a creation time and an inode.
pub fn encode_long(seconds: u64, micros: u32, inode: u64) -> String {
    let mut s = encode_radix(seconds, 52, 6);
    s.push_str(&encode_radix(u64::from(micros % 1_000_000), 52, 4));
    s.push(LONG_SEPARATOR as char);
    s.push_str(&encode_radix(inode, 51, 1));
    s
}

/// Whether the name's encoded inode equals `inode` (the test `postsuper -s`
/// applies before renaming a file to match its inode).
pub fn matches_inode(id: &str, inode: u64) -> bool {
    decode(id).map(|d| d.inode == inode).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_names() {
        assert!(is_legal("4jY0S84p6wz1SRm0"));
        assert!(is_legal("example_com"));
        for bad in ["", ".", "..", "a/b", "../x", "123.456", "#FIX", "a b", "é"] {
            assert!(!is_legal(bad), "{bad:?}");
        }
        assert!(!is_legal(&"A".repeat(256)));
        assert!(is_legal(&"A".repeat(255)));
    }

    #[test]
    fn short_ids_seen_on_postfix() {
        let d = decode("2660098C16E").unwrap();
        assert_eq!(d.form, Form::Short);
        assert_eq!(d.inode, 10010990);
        let d = decode("0D86898C1CD").unwrap();
        assert_eq!((d.micros, d.inode), (55400, 10011085));
        assert_eq!(encode_short(55400, 10011085), "0D86898C1CD");
        assert!(decode("F4240A").is_err()); // 1_000_000 µs
        assert!(decode("0d86898c1cd").is_err());
    }

    #[test]
    fn long_ids_seen_on_postfix() {
        let d = decode("4jY0S84p6wz1SRm0").unwrap();
        assert_eq!(d.form, Form::Long);
        assert_eq!(d.seconds, Some(1795424808));
        assert_eq!((d.micros, d.inode), (676360, 10010688));
        assert_eq!(
            encode_long(1795424808, 676360, 10010688),
            "4jY0S84p6wz1SRm0"
        );
        let d = decode("3Pt2mN2VXxznjll").unwrap();
        assert_eq!(d.seconds, Some(1300631508));
        assert_eq!((d.micros, d.inode), (353025, 5536956));
        // µs 51 = "000z": a data z before the separator.
        let d = decode("4jY0S8000zz1SRm0").unwrap();
        assert_eq!(
            (d.seconds, d.micros, d.inode),
            (Some(1795424808), 51, 10010688)
        );
        assert_eq!(encode_long(1795424808, 51, 10010688), "4jY0S8000zz1SRm0");
    }
}
