//! Wake-ups for Postfix's queue manager and pickup daemon, as Postfix's
//! own tools send them: connect to `public/<service>`, write the request
//! bytes and one NUL, wait briefly for the server to close. Postfix ignores
//! trigger failures (a stopped master, a stale socket); so does posthold:
//! the next periodic scan finds the mail anyway.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::config::Config;

/// qmgr: scan the incoming queue.
pub const SCAN_INCOMING: &[u8] = b"I";
/// qmgr: scan the deferred queue.
pub const SCAN_DEFERRED: &[u8] = b"D";
/// pickup (and qmgr): wake up.
pub const WAKEUP: &[u8] = b"W";

/// Sends `request` to `public/<service>` (`queue_service_name`,
/// `pickup_service_name`). Returns whether it was delivered.
pub fn kick(cfg: &Config, service: &str, request: &[u8]) -> bool {
    if !queue_format::queue_id::is_legal(service) {
        return false; // a service name is one path component
    }
    let path = cfg.queue_directory.join("public").join(service);
    let Ok(mut s) = UnixStream::connect(&path) else {
        return false;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut msg = request.to_vec();
    msg.push(0);
    if s.write_all(&msg).is_err() {
        return false;
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 64];
    let _ = s.read(&mut sink);
    true
}
