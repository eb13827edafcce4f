//! The floor for the mover benchmark: rename every file in hold/ to its
//! hashed deferred/ path with plain rename(2), no checks at all.
//!
//! usage: renameloop QUEUE_DIR [DEPTH]

// A benchmark floor, not posthold: it may rename.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let q = PathBuf::from(args.get(1).expect("usage: renameloop QUEUE_DIR [DEPTH]"));
    let depth: usize = args.get(2).map_or(1, |d| d.parse().expect("DEPTH"));
    let mut n = 0;
    for e in fs::read_dir(q.join("hold")).expect("hold/") {
        let name = e
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8 name");
        let rel = queue_format::hash_dir::queue_path("deferred", &name, true, depth);
        let dst = q.join(&rel);
        if let Err(e) = fs::rename(q.join("hold").join(&name), &dst) {
            if e.kind() == std::io::ErrorKind::NotFound {
                fs::create_dir_all(dst.parent().unwrap()).expect("mkdir");
                fs::rename(q.join("hold").join(&name), &dst).expect("rename");
            } else {
                panic!("{rel}: {e}");
            }
        }
        n += 1;
    }
    println!("renamed {n}");
}
