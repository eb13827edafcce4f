//! Hashed queue directories: where a queue ID lives inside a queue.
//!
//! Postfix spreads the queues named in `hash_queue_names` over
//! `hash_queue_depth` levels of one-character subdirectories. For a short
//! ID the characters are the first ones of the ID (its hex microseconds);
//! for a long ID they are the first ones of the microseconds re-encoded as
//! five uppercase hex digits, so both forms spread the same way. A name too
//! short for the depth is padded with `_`; a long ID whose microseconds do
//! not decode hashes as `00000`.

use crate::queue_id::{LONG_ALPHABET, long_separator};

/// The hash characters for `id` at `depth` levels (one per level).
pub fn hash_chars(id: &str, depth: usize) -> Vec<char> {
    let key: String = match long_separator(id) {
        Some(z) => {
            let mut v: u64 = 0;
            let mut ok = true;
            for b in id.as_bytes()[z - 4..z].iter() {
                match LONG_ALPHABET.iter().position(|c| c == b) {
                    Some(d) => v = v * 52 + d as u64,
                    None => ok = false,
                }
            }
            if ok && v < 1_000_000 {
                format!("{v:05X}")
            } else {
                "00000".to_string()
            }
        }
        None => id.to_string(),
    };
    let key: Vec<char> = key.chars().collect();
    (0..depth)
        .map(|i| key.get(i).copied().unwrap_or('_'))
        .collect()
}

/// The path of `id` relative to the queue directory: `queue/`, then one
/// directory per hash level when `hashed`, then the ID.
pub fn queue_path(queue: &str, id: &str, hashed: bool, depth: usize) -> String {
    let mut p = String::with_capacity(queue.len() + id.len() + 2 * depth + 1);
    p.push_str(queue);
    p.push('/');
    if hashed {
        for c in hash_chars(id, depth) {
            p.push(c);
            p.push('/');
        }
    }
    p.push_str(id);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_seen_on_postfix() {
        assert_eq!(
            queue_path("deferred", "253E798C16F", true, 1),
            "deferred/2/253E798C16F"
        );
        assert_eq!(
            queue_path("deferred", "4jY0S84p6wz1SRm0", true, 1),
            "deferred/A/4jY0S84p6wz1SRm0"
        );
        assert_eq!(
            queue_path("deferred", "4jY0St3F3Pz1SRsn", true, 1),
            "deferred/6/4jY0St3F3Pz1SRsn"
        );
        assert_eq!(
            queue_path("hold", "0D86898C1CD", false, 1),
            "hold/0D86898C1CD"
        );
        assert_eq!(hash_chars("4jY0S84p6wz1SRm0", 3), vec!['A', '5', '2']);
        assert_eq!(hash_chars("AB", 3), vec!['A', 'B', '_']);
    }
}
