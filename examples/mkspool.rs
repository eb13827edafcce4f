//! Builds a synthetic spool for benchmarks: N committed queue files made
//! by the queue-format writer, each named by its real inode as Postfix
//! would name it (short IDs), mode 0700.
//!
//! usage: mkspool DIR N [QUEUE]   (QUEUE defaults to hold)

// A spool builder plays cleanup, not posthold: it may rename and chmod.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use queue_format::queue_id::encode_short;
use queue_format::writer::Builder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: mkspool DIR N [QUEUE]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]).join(args.get(3).map_or("hold", String::as_str));
    let n: usize = args[2].parse().expect("N");
    fs::create_dir_all(&dir).expect("create queue dir");
    // MKSPOOL_DUE: the X-Deliver-At value (default: far in the future).
    let due = std::env::var("MKSPOOL_DUE")
        .unwrap_or_else(|_| "Thu, 01 Jan 2099 12:00:00 +0000".to_string());
    let body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.";
    for i in 0..n {
        let mut b = Builder::new(1_795_424_399 + i as i64, format!("sender{i}@example.com"))
            .arrival_micros((i % 1_000_000) as i64)
            .recipient(format!("rcpt{i}@example.net"))
            .header(format!("Subject: benchmark message {i}"))
            .header(format!("X-Deliver-At: {due}"));
        for _ in 0..20 {
            b = b.body_line(body);
        }
        if i % 10 == 0 {
            b = b.recipient(format!("second{i}@example.org"));
        }
        let tmp = dir.join(format!("{}.{}", i, std::process::id()));
        fs::write(&tmp, b.build()).expect("write");
        let ino = fs::metadata(&tmp).expect("stat").ino();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).expect("chmod");
        let id = encode_short((i % 1_000_000) as u32, ino);
        fs::rename(&tmp, dir.join(id)).expect("rename");
    }
}
