//! Detaching the supervisor, and the pipe on which it tells `baton start` "ready" or "failed".
//!
//! `start` re-executes baton as a supervisor in a new session with stdio on
//! /dev/null, then blocks reading a pipe. The supervisor writes one message
//! once the service is ready (or has failed) and closes the pipe; if it dies
//! without writing, `start` sees end-of-file and says so.

use crate::error::{Error, Result};
use crate::exit::Action;
use crate::sys;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

/// Environment variable naming the readiness pipe's fd in the supervisor.
pub const READY_FD_ENV: &str = "BATON_READY_FD";

/// The supervisor's end of the readiness pipe; writing consumes it.
pub struct Reporter {
    fd: Option<std::fs::File>,
    /// "ready PID\n", made at start-up: at readiness, after a long sleep, only written.
    ready: String,
}

impl Reporter {
    /// No one is waiting (foreground `run`).
    pub fn none() -> Self {
        Reporter {
            fd: None,
            ready: String::new(),
        }
    }

    /// Adopts the pipe named by `BATON_READY_FD`, hiding it from the service.
    pub fn from_env() -> Self {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .and_then(sys::adopt_fd);
        std::env::remove_var(READY_FD_ENV);
        if let Some(fd) = &fd {
            // The service must not inherit it, or `start` would wait for the service to exit.
            let _ = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        Reporter {
            ready: format!("ready {}\n", nix::unistd::getpid()),
            fd: fd.map(std::fs::File::from),
        }
    }

    /// Whether a `start` still waits for the first report.
    pub fn waiting(&self) -> bool {
        self.fd.is_some()
    }

    fn send(&mut self, message: &str) {
        if let Some(f) = self.fd.take() {
            // EPIPE means `start` was interrupted; the supervisor carries on regardless.
            let _ = sys::write_all(f.as_fd(), message.as_bytes());
        }
    }

    /// The service is ready and the PID file (holding this process's PID) written.
    pub fn ready(&mut self) {
        if let Some(f) = self.fd.take() {
            let _ = sys::write_all(f.as_fd(), self.ready.as_bytes());
        }
    }

    /// Another supervisor already runs this service.
    pub fn already_running(&mut self) {
        self.send("running\n");
    }

    /// Start failed; `message` says why, with the service's last output.
    pub fn failed(&mut self, code: Action, message: &str) {
        self.send(&format!("failed {}\n{message}\n", code.code()));
    }
}

/// What the supervisor reported to `start`.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// Ready; the supervisor's PID.
    Ready(i32),
    /// It was already running.
    AlreadyRunning,
}

/// Launches a detached supervisor for `config` and blocks until it reports.
///
/// With `ends` (the line to print for a supervisor PID), a "ready" is the end of the
/// process: that line goes to stdout and `start` exits 0 straight from its wait
/// ([`sys::shed_and_await_ready`]); this returns only for anything else.
pub fn start_supervisor(
    config: &Path,
    name: &str,
    ends: Option<fn(&str, i32) -> String>,
) -> Result<Started> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find the baton executable", &e))?;
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe().map_err(|e| Error::errno("create the readiness pipe", e))?;
    // Only the write end crosses exec; nix::unistd::pipe sets no CLOEXEC, so mark the read end.
    let _ = nix::fcntl::fcntl(
        read_end.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(config)
        .arg("supervise")
        .arg(name)
        .env(READY_FD_ENV, write_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    sys::install(
        &mut cmd,
        sys::ChildSetup {
            account: None,
            umask: None,
            parent: nix::unistd::getpid(),
            new_session: true,
            parent_death_signal: None,
            keep_fd: Some(write_end.as_raw_fd()),
        },
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("launch the supervisor", &e))?;
    // Freed now, before the wait, not after it: after the wait every page a free writes to
    // is paid for, and these frees (argv, environment, the child's set-up) could set malloc
    // consolidating its whole heap.
    drop(cmd);
    drop(write_end);
    // The wait lasts the service's whole start-up, and what ends it is paid per page: `start`
    // wakes, prints, and its exit unmaps all it has, and after a long sleep every page
    // touched (mapped code included, by the teardown) costs the most. So the code and free
    // heap it will not need are let go now, warm, as the idle supervisor does: what the
    // rest of `start` runs comes back as a fault (benches/PROFILE-ready.md). An error of
    // the poll leaves the blocking read below to wait instead.
    let mut message = String::new();
    let read = match ends {
        Some(line) => {
            // Both made now, while warm: after the wake only bytes are compared and written.
            let pid = child.id() as i32;
            let expected = format!("ready {pid}\n");
            let line = line(name, pid);
            let _ = std::io::stdout().flush();
            let mut got = [0u8; 64];
            let n = sys::shed_and_await_ready(
                read_end.as_fd(),
                expected.as_bytes(),
                line.as_bytes(),
                &mut got,
            );
            read_report(
                (&got[..n]).chain(std::fs::File::from(read_end)),
                &mut message,
            )
        }
        None => {
            let mut fds = [libc::pollfd {
                fd: read_end.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let _ = sys::shed_and_poll(&mut fds, &mut sys::Shed::default());
            read_report(std::fs::File::from(read_end), &mut message)
        }
    };
    let ready = message.starts_with("ready ");
    // A ready supervisor lives on (re-parented to init once we exit); one that failed is
    // about to exit, and waiting for it means `start` returns with the lock already free.
    let exited = if ready { None } else { child.wait().ok() };
    read.map_err(|e| Error::io("read the supervisor's report", &e))?;
    parse_report(&message, name, exited)
}

/// Reads the supervisor's report: up to the end of a one-line "ready" or "running", else to
/// end-of-file (a failure's several lines).
///
/// Not to end-of-file after "ready": the supervisor closes the pipe just after writing, but
/// the write wakes us first, and waiting for the close would cost a second wake.
fn read_report(mut pipe: impl Read, message: &mut String) -> std::io::Result<()> {
    // Allocated before the wait: malloc's work and pages after it cost more.
    let mut bytes = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        bytes.extend_from_slice(&buf[..n]);
        let one_line = bytes.starts_with(b"ready ") || bytes.starts_with(b"running");
        if n == 0 || (one_line && bytes.ends_with(b"\n")) {
            break;
        }
    }
    *message = String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(())
}

fn parse_report(
    message: &str,
    name: &str,
    exited: Option<std::process::ExitStatus>,
) -> Result<Started> {
    let (head, body) = message.split_once('\n').unwrap_or((message, ""));
    let mut words = head.split_whitespace();
    match (words.next(), words.next()) {
        (Some("ready"), Some(pid)) => Ok(Started::Ready(pid.parse().unwrap_or(0))),
        (Some("running"), _) => Ok(Started::AlreadyRunning),
        (Some("failed"), code) => {
            let code = code
                .and_then(|c| c.parse::<i32>().ok())
                .map_or(Action::Generic, Action::from_code);
            let body = body.trim_end();
            let cause = body
                .strip_prefix("unable to ")
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            Err(Error::unable(format!("start {name}"), cause).code(code))
        }
        _ => Err(Error::unable(
            format!("start {name}"),
            format!(
                "the supervisor exited without a report{}",
                exited.map(|s| format!(" ({s})")).unwrap_or_default()
            ),
        )
        .hint("see baton.log in the service's log directory")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its chunks, then fails the test if read again (a read that would block).
    struct Chunks(Vec<&'static [u8]>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            assert!(!self.0.is_empty(), "read past the report");
            let c = self.0.remove(0);
            buf[..c.len()].copy_from_slice(c);
            Ok(c.len())
        }
    }

    #[test]
    fn a_ready_line_ends_the_report_without_waiting_for_the_close() {
        let mut m = String::new();
        read_report(Chunks(vec![b"ready", b" 42\n"]), &mut m).expect("read");
        assert_eq!(m, "ready 42\n");
        assert_eq!(
            parse_report(&m, "web", None).expect("ready"),
            Started::Ready(42)
        );
        read_report(Chunks(vec![b"running\n"]), &mut m).expect("read");
        assert_eq!(
            parse_report(&m, "web", None).expect("running"),
            Started::AlreadyRunning
        );
    }

    #[test]
    fn a_failure_is_read_to_the_end() {
        let mut m = String::new();
        read_report(
            Chunks(vec![b"failed 1\n", b"unable to spawn x\nlast line\n", b""]),
            &mut m,
        )
        .expect("read");
        assert_eq!(m, "failed 1\nunable to spawn x\nlast line\n");
        let e = parse_report(&m, "web", None).expect_err("failed");
        assert!(e.to_string().contains("last line"), "{e}");
        read_report(Chunks(vec![b""]), &mut m).expect("read");
        assert!(parse_report(&m, "web", None).is_err());
    }
}
