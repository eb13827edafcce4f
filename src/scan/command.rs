//! External command scanners.
//!
//! * argv, never a shell: message values are substituted into arguments,
//!   and `{recipients}` becomes one argument per recipient, so no address
//!   can become a command;
//! * a minimal environment (PATH and `POSTHOLD_QUEUE_ID`, plus the
//!   rules file's `env`), optionally another user;
//! * a process group of its own; one wall-clock timeout for the whole run,
//!   after which the group is killed;
//! * the message is written to stdin while stdout and stderr are read at
//!   the same time (one poll loop, so no pipe deadlock); a scanner that
//!   stops reading early is not an error; output is kept up to a cap and
//!   the rest read and dropped.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use super::{Answer, Budget, Failure, Message, Scanner, ScannerKind, sanitize};

/// EX_TEMPFAIL from sysexits.h: try again later.
pub const EX_TEMPFAIL: i32 = 75;

/// The argv for one message.
pub fn argv_for(argv: &[String], msg: &Message) -> Vec<String> {
    let mut out = Vec::new();
    for a in argv {
        if a == "{recipients}" {
            out.extend(msg.recipients.iter().cloned());
            continue;
        }
        out.push(
            a.replace("{queue_id}", &msg.id)
                .replace("{sender}", &msg.sender),
        );
    }
    out
}

fn nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Output kept for the log.
struct Output {
    kept: Vec<u8>,
    total: u64,
    cap: usize,
}

impl Output {
    fn take(&mut self, b: &[u8]) {
        self.total += b.len() as u64;
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&b[..b.len().min(room)]);
    }

    fn describe(&self) -> String {
        if self.total == 0 {
            return String::new();
        }
        let mut s = format!(", output=\"{}\"", sanitize(&self.kept, 200));
        if self.total > self.kept.len() as u64 {
            s.push_str(&format!(
                " ({} bytes, {} kept)",
                self.total,
                self.kept.len()
            ));
        }
        s
    }
}

/// Reads what is there from a non-blocking pipe, at most 256 KiB (so that
/// a scanner writing without end cannot keep us from the timeout check);
/// false at EOF.
fn drain(r: &mut dyn Read, out: &mut Output, buf: &mut [u8]) -> bool {
    let mut budget: usize = 256 * 1024;
    loop {
        if budget == 0 {
            return true;
        }
        match r.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                out.take(&buf[..n]);
                budget = budget.saturating_sub(n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Whether the child has exited, without reaping it (so that its process
/// group ID stays reserved until the group is killed).
fn exited(child: &Child) -> bool {
    waitid(
        Id::Pid(Pid::from_raw(child.id() as i32)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    )
    .is_ok_and(|s| s.pid().is_some())
}

/// A running command: our child, or the launcher's.
enum Proc {
    /// Started here (same user, or root switching to the scanner's).
    Local(Child),
    /// Started by the launcher as the scanner's user.
    Remote(super::launcher::Remote),
}

impl Proc {
    /// Whether it has exited, without reaping it (so that its process
    /// group ID stays reserved until the group is killed).
    fn exited(&mut self) -> bool {
        match self {
            Proc::Local(c) => exited(c),
            Proc::Remote(r) => r.exited(),
        }
    }

    /// Kills its process group.
    fn kill_group(&mut self) {
        match self {
            Proc::Local(c) => {
                let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            }
            Proc::Remote(r) => r.kill_group(),
        }
    }

    /// Kills what is left of its group and reaps it.
    fn finish(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.kill_group();
        match self {
            Proc::Local(c) => c.wait(),
            Proc::Remote(r) => r.finish(),
        }
    }
}

/// Whom a command scanner runs as, and how it gets started.
enum Start {
    /// As we are: we are its user already.
    AsWeAre,
    /// We are root: switch to its user in the child.
    Switch(u32, u32),
    /// Through the launcher (we gave up root).
    Launcher(&'static super::launcher::Launcher, u32, u32),
}

/// How to start a command scanner as `user`; an error when this process
/// cannot (not root, no launcher).
fn start_as(user: &Option<(String, u32, u32)>) -> Result<Start, Failure> {
    let euid = nix::unistd::geteuid().as_raw();
    let Some((name, uid, gid)) = user else {
        return Ok(Start::AsWeAre);
    };
    if *uid == euid {
        Ok(Start::AsWeAre)
    } else if euid == 0 {
        Ok(Start::Switch(*uid, *gid))
    } else if let Some(l) = super::launcher::get() {
        Ok(Start::Launcher(l, *uid, *gid))
    } else {
        Err(Failure::answered(format!(
            "cannot run as {}: posthold runs as uid {euid}, not root",
            sanitize(name.as_bytes(), 64)
        )))
    }
}

/// Runs the command on one message.
pub fn run(sc: &Scanner, msg: &Message, b: &Budget) -> Result<Answer, Failure> {
    let ScannerKind::Command {
        argv,
        user,
        env,
        output_cap,
        named,
    } = &sc.kind
    else {
        return Err(Failure::soft("BUG: not a command scanner"));
    };
    let args = argv_for(argv, msg);
    let Some((prog, rest)) = args.split_first() else {
        return Err(Failure::soft("empty argv"));
    };
    let cannot = |e: std::io::Error| {
        Failure::soft(format!(
            "cannot run {}: {e}",
            sanitize(prog.as_bytes(), 120)
        ))
    };
    let mut vars = vec![
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("POSTHOLD_QUEUE_ID".to_string(), msg.id.clone()),
    ];
    vars.extend(env.iter().cloned());
    let (mut proc, stdin, stdout, stderr) = match start_as(user)? {
        Start::Launcher(l, uid, gid) => {
            let pipe =
                || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from);
            let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (
                pipe().map_err(cannot)?,
                pipe().map_err(cannot)?,
                pipe().map_err(cannot)?,
            );
            let req = super::launcher::Request {
                uid,
                gid,
                argv: &args,
                env: &vars,
            };
            let r = l.spawn(&req, [in_r, out_w, err_w]).map_err(cannot)?;
            (
                Proc::Remote(r),
                Some(ChildStdin::from(in_w)),
                Some(ChildStdout::from(out_r)),
                Some(ChildStderr::from(err_r)),
            )
        }
        how => {
            let mut cmd = Command::new(prog);
            cmd.args(rest)
                .env_clear()
                .envs(vars.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .current_dir("/")
                .process_group(0);
            if let Start::Switch(uid, gid) = how {
                // std drops supplementary groups when root changes uid.
                cmd.uid(uid).gid(gid);
            }
            let mut child = cmd.spawn().map_err(cannot)?;
            let (i, o, e) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
            (Proc::Local(child), i, o, e)
        }
    };
    let result = pump(&mut proc, stdin, stdout, stderr, msg, *output_cap, b);
    let (status, out) = match result {
        Ok(r) => r,
        Err(f) => {
            let _ = proc.finish();
            return Err(f);
        }
    };
    let out = out.describe();
    match (status.code(), status.signal()) {
        (Some(c), _) if c == 0 || named.contains(&c) => Ok(Answer::Exit(c, out)),
        (Some(EX_TEMPFAIL), _) => Err(Failure::soft(format!(
            "temporary failure (exit {EX_TEMPFAIL}){out}"
        ))),
        // It ran and exited: an answer, just not one the rules name.
        (Some(c), _) => Err(Failure::answered(format!(
            "exit code {c} that no rule names{out}"
        ))),
        (None, Some(sig)) => Err(Failure::strike(format!("killed by signal {sig}{out}"))),
        _ => Err(Failure::strike(format!("ended abnormally{out}"))),
    }
}

type Pumped = (std::process::ExitStatus, Output);

/// Feeds stdin and drains stdout and stderr until the scanner exits and
/// its output ends, or the budget runs out (then the caller kills it).
fn pump(
    child: &mut Proc,
    mut stdin: Option<ChildStdin>,
    mut stdout: Option<ChildStdout>,
    mut stderr: Option<ChildStderr>,
    msg: &Message,
    cap: usize,
    b: &Budget,
) -> Result<Pumped, Failure> {
    let sockerr = |e: std::io::Error| Failure::soft(format!("pipe: {e}"));
    for fd in [
        stdin.as_ref().map(|s| s.as_fd()),
        stdout.as_ref().map(|s| s.as_fd()),
        stderr.as_ref().map(|s| s.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        nonblocking(fd).map_err(sockerr)?;
    }
    let mut out = Output {
        kept: Vec::new(),
        total: 0,
        cap,
    };
    let mut rbuf = vec![0u8; 16 * 1024];
    msg.with_content(|content| {
        let mut wbuf: Vec<u8> = Vec::new();
        let mut wpos = 0;
        let mut content_done = false;
        let mut child_done = false;
        loop {
            // Refill the write buffer from the message.
            if stdin.is_some() && wpos == wbuf.len() && !content_done {
                wbuf.resize(64 * 1024, 0);
                wpos = 0;
                let n = loop {
                    match content.read(&mut wbuf) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(Failure::answered(format!("{}: {e}", msg.id))),
                    }
                };
                wbuf.truncate(n);
                content_done = n == 0;
            }
            if content_done && wpos == wbuf.len() {
                stdin = None; // EOF for the scanner
            }
            if stdout.is_none() && stderr.is_none() && (child_done || child.exited()) {
                // Kill what is left of its group before reaping it, so the
                // group ID cannot have been reused.
                let st = child.finish().map_err(sockerr)?;
                return Ok((st, out));
            }
            if !child_done && child.exited() {
                // Its output may still be open in a grandchild: kill the
                // group so that the pipes close.
                child_done = true;
                child.kill_group();
            }
            let wait = match b.slice(Duration::from_millis(100), "(scanner still running)") {
                Ok(w) => w,
                // The scanner exited but something outside its process
                // group keeps its output open: its exit status stands.
                Err(f) if child_done && f.strike => {
                    let st = child.finish().map_err(sockerr)?;
                    return Ok((st, out));
                }
                Err(f) => return Err(f),
            };
            let mut fds = Vec::with_capacity(3);
            if let Some(s) = &stdin {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
            }
            if let Some(s) = &stdout {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if let Some(s) = &stderr {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if fds.is_empty() {
                std::thread::sleep(wait.min(Duration::from_millis(10)));
                continue;
            }
            let ms = wait.as_millis().clamp(1, 1000) as u16;
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(Failure::soft(format!("poll: {e}"))),
            }
            drop(fds);
            if let Some(s) = stdin.as_mut()
                && wpos < wbuf.len()
            {
                match s.write(&wbuf[wpos..]) {
                    Ok(n) => wpos += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // The scanner closed its stdin (EPIPE): it has read what
                    // it wanted; its exit code decides.
                    Err(_) => stdin = None,
                }
            }
            if let Some(s) = stdout.as_mut()
                && !drain(s, &mut out, &mut rbuf)
            {
                stdout = None;
            }
            if let Some(s) = stderr.as_mut()
                && !drain(s, &mut out, &mut rbuf)
            {
                stderr = None;
            }
        }
    })
}
