//! The launcher: runs command scanners as their unprivileged user for a
//! daemon that has given up root.
//!
//! The daemon runs as mail_owner, which may rewrite every queue file, so a
//! scanner must not run as mail_owner; and mail_owner cannot switch to
//! another user. So before the daemon drops root it forks this launcher,
//! which stays root and does one thing: start a command as one of the
//! users fixed at fork time (the scanners' users then; never root, never
//! mail_owner), with the pipes the daemon made, and report its exit.
//!
//! Protocol (all on sockets made before the fork):
//!
//! * control socket (`SOCK_SEQPACKET`): one datagram per command, a byte
//!   and four descriptors: the command's stdin, stdout and stderr, and a
//!   session socket;
//! * session socket (stream): the daemon writes the request (a 4-byte
//!   length, then uid, gid and NUL-separated argv and environment); the
//!   launcher answers `P` and the pid (4 bytes) or `E` and an error text;
//!   the daemon may write `K` (kill the process group) or close the
//!   session (the same); when the command has exited the launcher kills
//!   what is left of its group, reaps it, and writes `S` and the raw wait
//!   status (4 bytes).
//!
//! The launcher dies with the daemon (`PR_SET_PDEATHSIG`, and EOF on the
//! control socket).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{ForkResult, Pid, fork};

/// The daemon's handle on its launcher (one per process).
static LAUNCHER: OnceLock<Launcher> = OnceLock::new();

/// Set when the launcher is found gone: the daemon then stops (exit 1) so
/// that its service manager starts it again with a new launcher.
static LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the launcher has gone (command scanners can no longer run).
pub fn lost() -> bool {
    LOST.load(std::sync::atomic::Ordering::Relaxed)
}

fn gone(e: std::io::Error) -> std::io::Error {
    LOST.store(true, std::sync::atomic::Ordering::Relaxed);
    std::io::Error::other(format!("the scanner launcher is gone ({e})"))
}

/// The signals a launcher ignores: a reload or stop of the daemon (even by
/// `pkill posthold`) must not kill it; it dies with the daemon.
const IGNORED: [nix::sys::signal::Signal; 3] = [
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
];

/// The control socket to the launcher.
pub struct Launcher {
    control: Mutex<OwnedFd>,
}

/// What to start.
pub struct Request<'a> {
    /// Run as this uid and gid (no supplementary groups).
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Program and arguments.
    pub argv: &'a [String],
    /// The whole environment.
    pub env: &'a [(String, String)],
}

/// Forks the launcher, which keeps the current (root) rights and may start
/// commands as the given users only; the caller then drops root. Call it
/// before any other thread starts.
pub fn start(users: Vec<(u32, u32)>) -> std::io::Result<()> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let parent = nix::unistd::getpid();
    // SAFETY: fork(2) is called before the daemon starts any thread (the
    // caller's contract), so the child may run ordinary Rust code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ours);
            // Die with the daemon, even if it is killed.
            // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes a signal number.
            unsafe { nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) };
            if nix::unistd::getppid() != parent {
                std::process::exit(0);
            }
            for sig in IGNORED {
                // SAFETY: SIG_IGN installs no handler code.
                let _ =
                    unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
            }
            serve(theirs, &users);
            std::process::exit(0);
        }
        ForkResult::Parent { .. } => {
            drop(theirs);
            let _ = LAUNCHER.set(Launcher {
                control: Mutex::new(ours),
            });
            Ok(())
        }
    }
}

/// The launcher of this process, if it has one.
pub fn get() -> Option<&'static Launcher> {
    LAUNCHER.get()
}

/// The launcher's loop: one thread per command, until the daemon goes.
fn serve(control: OwnedFd, users: &[(u32, u32)]) {
    loop {
        let mut byte = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let msg = match recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        if msg.bytes == 0 {
            return; // the daemon is gone
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: descriptors received with SCM_RIGHTS are new
                    // and ours alone.
                    fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
        }
        let Ok::<[OwnedFd; 4], _>([stdin, stdout, stderr, session]) = fds.try_into() else {
            continue;
        };
        let users = users.to_vec();
        std::thread::spawn(move || {
            session_thread(UnixStream::from(session), [stdin, stdout, stderr], &users)
        });
    }
}

/// A request as the launcher reads it.
struct Asked {
    uid: u32,
    gid: u32,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

fn read_request(s: &mut UnixStream) -> std::io::Result<Asked> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 64 << 20 {
        return Err(bad("request too large"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let mut parts = body.split(|&b| b == 0);
    let mut next = || -> std::io::Result<String> {
        let p = parts.next().ok_or_else(|| bad("short request"))?;
        String::from_utf8(p.to_vec()).map_err(|_| bad("not UTF-8"))
    };
    let num = |s: String| s.parse::<u32>().map_err(|_| bad("bad number"));
    let uid = num(next()?)?;
    let gid = num(next()?)?;
    let argc = num(next()?)? as usize;
    let argv = (0..argc).map(|_| next()).collect::<Result<Vec<_>, _>>()?;
    let envc = num(next()?)? as usize;
    let mut env = Vec::new();
    for _ in 0..envc {
        env.push((next()?, next()?));
    }
    Ok(Asked {
        uid,
        gid,
        argv,
        env,
    })
}

fn session_thread(mut s: UnixStream, [stdin, stdout, stderr]: [OwnedFd; 3], users: &[(u32, u32)]) {
    let refuse = |s: &mut UnixStream, why: String| {
        let mut m = vec![b'E'];
        m.extend_from_slice(why.as_bytes());
        let _ = s.write_all(&m);
    };
    let Asked {
        uid,
        gid,
        argv,
        env,
    } = match read_request(&mut s) {
        Ok(r) => r,
        Err(e) => return refuse(&mut s, format!("bad request: {e}")),
    };
    // S14: only the users fixed when the daemon started: never root,
    // never a user the daemon was not configured with.
    if uid == 0 || !users.contains(&(uid, gid)) {
        return refuse(&mut s, format!("uid {uid} gid {gid} is not a scanner user"));
    }
    let Some((prog, rest)) = argv.split_first() else {
        return refuse(&mut s, "empty argv".into());
    };
    let mut cmd = Command::new(prog);
    cmd.args(rest)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .current_dir("/")
        .process_group(0)
        .uid(uid)
        .gid(gid);
    // SAFETY: runs in the child between fork and exec and only calls
    // signal(2), which is async-signal-safe: the command gets the default
    // dispositions back (ignored signals would stay ignored across exec).
    unsafe {
        cmd.pre_exec(|| {
            for sig in IGNORED {
                nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return refuse(&mut s, format!("cannot run {prog}: {e}")),
    };
    drop(cmd); // our copies of the pipes: the command's ends stay its own
    let pid = child.id() as i32;
    let mut m = vec![b'P'];
    m.extend_from_slice(&pid.to_be_bytes());
    let _ = s.write_all(&m);
    let group = Pid::from_raw(pid);
    let mut killed = false;
    loop {
        let exited = waitid(
            Id::Pid(group),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        )
        .is_ok_and(|st| st.pid().is_some());
        if exited {
            // Kill what is left of its group before reaping it, so that the
            // group ID cannot have been reused.
            let _ = killpg(group, Signal::SIGKILL);
            let status = child.wait().map(|st| st.into_raw()).unwrap_or(-1);
            let mut m = vec![b'S'];
            m.extend_from_slice(&status.to_be_bytes());
            let _ = s.write_all(&m);
            return;
        }
        if !killed {
            let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(50u16));
            let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            if ready {
                // `K`, or the daemon closed the session: kill the group.
                let _ = s.read(&mut [0u8; 16]);
                let _ = killpg(group, Signal::SIGKILL);
                killed = true;
            }
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A command started by the launcher, seen from the daemon.
pub struct Remote {
    session: UnixStream,
    status: Option<ExitStatus>,
}

fn read_status(s: &mut UnixStream) -> std::io::Result<ExitStatus> {
    let mut m = [0u8; 5];
    s.read_exact(&mut m)?;
    if m[0] != b'S' {
        return Err(std::io::Error::other("launcher: out of step"));
    }
    Ok(ExitStatus::from_raw(i32::from_be_bytes([
        m[1], m[2], m[3], m[4],
    ])))
}

impl Launcher {
    /// Starts a command with these pipe ends as its stdin, stdout and
    /// stderr.
    pub fn spawn(&self, req: &Request, stdio: [OwnedFd; 3]) -> std::io::Result<Remote> {
        let (mut ours, theirs) = UnixStream::pair()?;
        {
            let control = self.control.lock().expect("BUG: launcher lock poisoned");
            let raw = [
                stdio[0].as_raw_fd(),
                stdio[1].as_raw_fd(),
                stdio[2].as_raw_fd(),
                theirs.as_raw_fd(),
            ];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(
                control.as_raw_fd(),
                &[std::io::IoSlice::new(b"R")],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(|e| gone(e.into()))?;
        }
        drop(theirs);
        drop(stdio);
        let mut body = Vec::new();
        let mut put = |s: &str| {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        };
        put(&req.uid.to_string());
        put(&req.gid.to_string());
        put(&req.argv.len().to_string());
        for a in req.argv {
            put(a);
        }
        put(&req.env.len().to_string());
        for (k, v) in req.env {
            put(k);
            put(v);
        }
        let mut m = (body.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        ours.set_write_timeout(Some(Duration::from_secs(30)))?;
        ours.write_all(&m).map_err(gone)?;
        ours.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut tag = [0u8; 1];
        ours.read_exact(&mut tag).map_err(gone)?;
        match tag[0] {
            b'P' => {
                // The pid (the launcher's child): the launcher kills and
                // reaps it; we only wait for its status.
                let mut pid = [0u8; 4];
                ours.read_exact(&mut pid)?;
                Ok(Remote {
                    session: ours,
                    status: None,
                })
            }
            _ => {
                let mut why = String::new();
                let _ = ours.read_to_string(&mut why);
                Err(std::io::Error::other(why))
            }
        }
    }
}

impl Remote {
    /// Whether the command has exited (its group then killed and reaped).
    pub fn exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let mut fds = [PollFd::new(self.session.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) == 0 {
            return false;
        }
        match read_status(&mut self.session) {
            Ok(st) => {
                self.status = Some(st);
                true
            }
            // The launcher is gone: nothing more will come.
            Err(e) => {
                let _ = gone(e);
                true
            }
        }
    }

    /// Kills the command's process group.
    pub fn kill_group(&mut self) {
        let _ = self.session.write_all(b"K");
    }

    /// Kills what is left and waits for the exit status.
    pub fn finish(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        self.kill_group();
        let st = read_status(&mut self.session)?;
        self.status = Some(st);
        Ok(st)
    }
}
