//! Fuzz target: on any bytes the reader returns (a value or an error),
//! never panics, never loops without end, and allocates no more than the
//! input's size per record.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use queue_format::queue_file::{Lines, MessageContent, read_envelope};
use queue_format::reader::{Mode, Reader};

fuzz_target!(|data: &[u8]| {
    // The logical stream in both modes.
    for mode in [Mode::LOGICAL, Mode::PHYSICAL] {
        if let Ok(mut r) = Reader::with_mode(Cursor::new(data), mode) {
            let mut buf = Vec::new();
            while let Ok(Some(_)) = r.next(&mut buf) {}
        }
    }
    // The typed view and the content lines.
    let Ok(mut r) = Reader::new(Cursor::new(data)) else { return };
    if let Ok(env) = read_envelope(&mut r) {
        let _ = env.check_complete();
        if let Some(m) = env.content_offset {
            // Lines, and the streamed message: the stream is the lines,
            // each ending in a newline, whenever both read to the end.
            let mut joined = Vec::new();
            let mut whole = false;
            if let Ok(mut lines) = Lines::new(&mut r, m) {
                loop {
                    match lines.next_line() {
                        Ok(Some(l)) => {
                            joined.extend_from_slice(&l.text);
                            joined.push(b'\n');
                        }
                        Ok(None) => {
                            whole = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            if let Ok(mut c) = MessageContent::new(&mut r, m) {
                let mut out = Vec::new();
                if std::io::Read::read_to_end(&mut c, &mut out).is_ok() && whole {
                    assert_eq!(out, joined);
                }
            }
        }
    }
    // Queue IDs and hashed paths from arbitrary text.
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = queue_format::queue_id::decode(s);
        let _ = queue_format::hash_dir::hash_chars(s, 3);
    }
});
