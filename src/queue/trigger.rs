//! Wake-ups for Postfix's queue manager and pickup daemon, as Postfix's
//! own tools send them: to `public/<service>`, which master.cf makes a
//! UNIX stream socket (stock) or a FIFO (older configurations). A socket
//! gets the request bytes and one NUL, and posthold waits briefly for the
//! server to close; a FIFO gets the request bytes alone.
//!
//! Every step is bounded (at most [`TIMEOUT`] in all): a service whose
//! listen queue is full, or that never reads, cannot hold up a command
//! that still holds the queue lock, nor the daemon's SIGTERM. Postfix
//! ignores trigger failures (a stopped master, a stale socket); so does
//! posthold: the next periodic scan finds the mail anyway.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use crate::config::Config;

/// qmgr: scan the incoming queue.
pub const SCAN_INCOMING: &[u8] = b"I";
/// qmgr: scan the deferred queue.
pub const SCAN_DEFERRED: &[u8] = b"D";
/// pickup (and qmgr): wake up.
pub const WAKEUP: &[u8] = b"W";

/// The longest one wake-up may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `request` to `public/<service>` (`queue_service_name`,
/// `pickup_service_name`). Returns whether it was delivered.
pub fn kick(cfg: &Config, service: &str, request: &[u8]) -> bool {
    if !queue_format::queue_id::is_legal(service) {
        return false; // a service name is one path component
    }
    let path = cfg.queue_directory.join("public").join(service);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return false;
    };
    let deadline = Instant::now() + TIMEOUT;
    if meta.file_type().is_fifo() {
        fifo(&path, request)
    } else if meta.file_type().is_socket() {
        unix(&path, request, deadline).is_some()
    } else {
        false
    }
}

/// A FIFO service: the request bytes, written without blocking. Nobody
/// reading (ENXIO) or a full pipe (EAGAIN) is a failed wake-up.
fn fifo(path: &Path, request: &[u8]) -> bool {
    let Ok(mut f) = File::options()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    // What was opened must itself be a FIFO (not a file swapped in since
    // the lstat): a wake-up never writes into anything else.
    if !f.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        return false;
    }
    f.write_all(request).is_ok()
}

/// Milliseconds left until `deadline` (at least 1 while any is left).
fn left_ms(deadline: Instant) -> Option<u16> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.as_millis().clamp(1, u128::from(u16::MAX)) as u16)
}

/// A UNIX-domain stream service: a non-blocking connect (a full listen
/// queue answers EAGAIN, tried again until the deadline), the request and
/// a NUL, then a wait for the server to close.
fn unix(path: &Path, request: &[u8], deadline: Instant) -> Option<()> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let addr = UnixAddr::new(path).ok()?;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EAGAIN) => {
                left_ms(deadline)?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(Errno::EINPROGRESS) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::from(left_ms(deadline)?)).ok()?;
                let err = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SocketError)
                    .ok()?;
                (err == 0).then_some(())?;
                break;
            }
            Err(_) => return None,
        }
    }
    let mut s = UnixStream::from(fd);
    s.set_nonblocking(false).ok()?;
    let timeout = Duration::from_millis(u64::from(left_ms(deadline)?));
    s.set_write_timeout(Some(timeout)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut msg = request.to_vec();
    msg.push(0);
    s.write_all(&msg).ok()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 64];
    let _ = s.read(&mut sink);
    Some(())
}
