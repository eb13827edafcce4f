//! Kill tests: real posthold processes killed with SIGKILL at random
//! moments during `release ALL` and `hold ALL` on 10,000 files, 100 times;
//! after each kill the spool must hold every message exactly once, under
//! its own name and inode, with its bytes unchanged.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

const FILES: usize = 10_000;
const KILLS: usize = 100;

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn sigkill_during_bulk_moves_loses_and_duplicates_nothing() {
    let mut s = TempSpool::new();
    // The seed decides when each kill lands: printed, and taken from
    // POSTHOLD_CRASH_SEED when set, so that a failure can be replayed.
    let mut seed: u64 = match std::env::var("POSTHOLD_CRASH_SEED") {
        Ok(v) => v.parse().expect("POSTHOLD_CRASH_SEED: a number"),
        Err(_) => 0x2545F4914F6CDD1D ^ std::process::id() as u64 ^ now() as u64,
    }
    .max(1);
    let seed0 = seed;
    eprintln!("kill test: seed {seed} (replay with POSTHOLD_CRASH_SEED={seed})");
    let mut ids = Vec::with_capacity(FILES);
    for _ in 0..FILES {
        ids.push(s.add("hold"));
    }
    let contents: HashMap<String, Vec<u8>> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                std::fs::read(s.q().join("hold").join(id)).unwrap(),
            )
        })
        .collect();
    let mut moved_total = 0usize;
    for round in 0..KILLS {
        let before = census(&s);
        let in_hold = before
            .values()
            .flatten()
            .filter(|(p, _)| p.starts_with("hold/"))
            .count();
        let args: &[&str] = if in_hold * 2 >= FILES {
            &["release", "--to", "incoming", "ALL"]
        } else {
            &["hold", "ALL"]
        };
        let mut c = s.command(args);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(xorshift(&mut seed) % 700));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        let after = census(&s);
        assert_eq!(
            after.len(),
            FILES,
            "round {round} (seed {seed0}): files appeared or vanished"
        );
        for id in &ids {
            let places = after
                .get(id)
                .unwrap_or_else(|| panic!("round {round} (seed {seed0}): {id} lost"));
            assert_eq!(
                places.len(),
                1,
                "round {round} (seed {seed0}): {id} in {places:?}"
            );
            let (path, ino) = &places[0];
            assert!(
                path == &format!("hold/{id}") || path == &format!("incoming/{id}"),
                "round {round} (seed {seed0}): {id} at {path}"
            );
            assert!(
                queue_format::queue_id::matches_inode(id, *ino),
                "round {round} (seed {seed0}): {id} inode {ino}"
            );
        }
        // Bytes: a sample each round, all of them at the end.
        for _ in 0..100 {
            let id = &ids[(xorshift(&mut seed) % FILES as u64) as usize];
            let path = &after[id][0].0;
            assert_eq!(
                &std::fs::read(s.q().join(path)).unwrap(),
                &contents[id],
                "round {round} (seed {seed0}): {id} changed"
            );
        }
        moved_total += after
            .iter()
            .filter(|(name, v)| before.get(*name).map(|b| b[0].0 != v[0].0).unwrap_or(true))
            .count();
    }
    let end = census(&s);
    for id in &ids {
        assert_eq!(
            std::fs::read(s.q().join(&end[id][0].0)).unwrap(),
            contents[id]
        );
    }
    assert!(moved_total > 0, "the kills must interrupt real work");
    eprintln!("kill test: {KILLS} kills, {moved_total} moves observed between kills");
}
