//! Connections to network scanners: connect with a timeout (TCP or unix
//! socket), write and read against the scan's [`Budget`], replies capped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket, sockopt,
};

use super::{Address, Budget, Failure};

/// How long one blocking socket call may wait before the budget is
/// checked again.
const STEP: Duration = Duration::from_millis(200);

/// An open connection to a scanner.
pub enum Conn {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

fn down(addr: &Address, e: impl std::fmt::Display) -> Failure {
    Failure::soft(format!("cannot connect to {addr}: {e}"))
}

/// Connects within `timeout`. A refused or timed-out connection is a soft
/// failure: the scanner is down or busy, not wedged by the message.
pub fn connect_to(addr: &Address, timeout: Duration) -> Result<Conn, Failure> {
    match addr {
        Address::Tcp(a) => {
            let addrs: Vec<_> = a.to_socket_addrs().map_err(|e| down(addr, e))?.collect();
            let mut last = None;
            for sa in addrs {
                match TcpStream::connect_timeout(&sa, timeout) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Conn::Tcp(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(down(
                addr,
                last.map_or("no address".to_string(), |e| e.to_string()),
            ))
        }
        Address::Unix(p) => {
            // Non-blocking connect: a wedged scanner whose listen backlog is
            // full would otherwise block connect(2) for ever.
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| down(addr, e))?;
            let ua = UnixAddr::new(p.as_path()).map_err(|e| down(addr, e))?;
            match connect(fd.as_raw_fd(), &ua) {
                Ok(()) => {}
                // Linux: the listen queue is full. The socket is not
                // connecting; the scanner is busy (not the message's fault).
                Err(Errno::EAGAIN) => {
                    return Err(down(addr, "listen queue full (scanner busy)"));
                }
                Err(Errno::EINPROGRESS) => {
                    let ms = timeout.as_millis().min(u16::MAX as u128) as u16;
                    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                    let n = poll(&mut fds, PollTimeout::from(ms)).map_err(|e| down(addr, e))?;
                    if n == 0 {
                        return Err(down(addr, "connect timed out (listen queue full)"));
                    }
                    let err = getsockopt(&fd, sockopt::SocketError).map_err(|e| down(addr, e))?;
                    if err != 0 {
                        return Err(down(addr, Errno::from_raw(err)));
                    }
                }
                Err(e) => return Err(down(addr, e)),
            }
            let s = UnixStream::from(fd);
            s.set_nonblocking(false).map_err(|e| down(addr, e))?;
            Ok(Conn::Unix(s))
        }
    }
}

impl Conn {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Tcp(s) => s,
            Conn::Unix(s) => s,
        }
    }

    /// Ends our side of the conversation (the scanner sees EOF).
    pub fn shutdown_write(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Writes all of `buf` within the budget. A timeout while sending is a
    /// strike (the scanner wedged on this message); a reset or a close is
    /// not: a scanner that refuses a message answers before it has read
    /// it all and closes (the caller then reads that answer).
    pub fn send(&mut self, mut buf: &[u8], b: &Budget) -> Result<(), Failure> {
        while !buf.is_empty() {
            self.set_timeouts(b.slice(STEP, "sending")?)
                .map_err(|e| Failure::soft(format!("socket: {e}")))?;
            match self.io().write(buf) {
                Ok(0) => return Err(Failure::soft("connection closed while sending")),
                Ok(n) => buf = &buf[n..],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::soft(format!("sending: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads until EOF, or until `complete` says the reply is whole, within
    /// the budget and at most `cap` bytes (more is a garbled reply).
    pub fn receive(
        &mut self,
        cap: usize,
        b: &Budget,
        complete: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, Failure> {
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            self.set_timeouts(b.slice(STEP, "waiting for the reply")?)
                .map_err(|e| Failure::soft(format!("socket: {e}")))?;
            match self.io().read(&mut chunk) {
                Ok(0) => return Ok(reply),
                Ok(n) => {
                    reply.extend_from_slice(&chunk[..n]);
                    if reply.len() > cap {
                        return Err(Failure::soft(format!(
                            "reply longer than {cap} bytes: {}",
                            super::sanitize(&reply, 120)
                        )));
                    }
                    if complete(&reply) {
                        return Ok(reply);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::strike(format!("reading the reply: {e}"))),
            }
        }
    }

    /// After a complete reply: anything more before EOF means the replies
    /// are out of step with the requests.
    pub fn expect_eof(&mut self, b: &Budget) -> Result<(), Failure> {
        let extra = self.receive(4096, b, |r| !r.is_empty())?;
        if extra.is_empty() {
            Ok(())
        } else {
            Err(Failure::soft(format!(
                "unexpected data after the reply: {}",
                super::sanitize(&extra, 120)
            )))
        }
    }
}

/// How a scanner's reply is read.
pub struct Reply {
    /// At most this many bytes (more is a garbled reply).
    pub cap: usize,
    /// Whether the bytes so far are a whole reply (else: read to EOF).
    pub complete: fn(&[u8]) -> bool,
    /// End our side after the message (the scanner reads to EOF).
    pub half_close: bool,
}

/// Sends a request head and the message (streamed), then reads the reply
/// (at most `cap` bytes, until `complete` or EOF) and parses it. When the
/// scanner stopped reading part way (a reset while sending), only an
/// error of its own explains it: a verdict would be on a message it never
/// saw whole, so anything else is the sending failure. spamd (which reads
/// to EOF: `half_close`) and rspamd (which answers at the body's length
/// and takes a half-close for a dropped client).
pub fn exchange(
    conn: &mut Conn,
    head: &[u8],
    msg: &super::Message,
    b: &Budget,
    Reply {
        cap,
        complete,
        half_close,
    }: Reply,
    parse: impl Fn(&[u8]) -> Result<super::Answer, Failure>,
) -> Result<super::Answer, Failure> {
    let sent = match conn.send(head, b) {
        Err(f) => Some(f),
        Ok(()) => msg.with_content(|content| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match content.read(&mut buf) {
                    Ok(0) => return Ok(None),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Failure::answered(format!("{}: {e}", msg.id))),
                };
                if let Err(f) = conn.send(&buf[..n], b) {
                    return Ok(Some(f));
                }
            }
        })?,
    };
    if half_close {
        conn.shutdown_write();
    }
    let reply = conn.receive(cap, b, complete);
    match (sent, reply) {
        (None, r) => parse(&r?),
        (Some(f), Ok(r)) => Err(match parse(&r) {
            Err(e) if e.answered => e,
            _ => f,
        }),
        (Some(f), Err(_)) => Err(f),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
