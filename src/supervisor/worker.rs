//! The `baton __switch` child: its arguments, its start, and its output read in whole lines.

use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

/// One instance as the switch worker's arguments name it.
pub struct Side<'a> {
    /// Its process ID.
    pub pid: Pid,
    /// Its own port, if it has one.
    pub port: Option<u16>,
    /// Its release, if the service has releases.
    pub release: Option<&'a str>,
}

/// `__switch --pid … [--port …] [--release …] [--old-pid … …]`: move traffic from `from` to `to`.
pub fn args(to: &Side<'_>, from: Option<&Side<'_>>) -> Vec<String> {
    let mut args: Vec<String> = vec!["__switch".into()];
    let mut side = |prefix: &str, s: &Side<'_>| {
        args.extend([format!("--{prefix}pid"), s.pid.to_string()]);
        if let Some(p) = s.port {
            args.extend([format!("--{prefix}port"), p.to_string()]);
        }
        if let Some(r) = s.release {
            args.extend([format!("--{prefix}release"), r.to_string()]);
        }
    };
    side("", to);
    if let Some(from) = from {
        side("old-", from);
    }
    args
}

/// A switch worker's stdout and stderr, read in whole lines as they come.
pub struct WorkerOutput {
    /// None once the worker closed it, so the poll set no longer reports its hang-up.
    fd: Option<OwnedFd>,
    partial: Vec<u8>,
}

impl WorkerOutput {
    /// Reads `fd` from now on.
    pub fn new(fd: OwnedFd) -> Self {
        WorkerOutput {
            fd: Some(fd),
            partial: Vec::new(),
        }
    }

    /// For the poll set, while the worker may still write.
    pub fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// The non-empty whole lines that have arrived (the last one completed at end of file).
    pub fn lines(&mut self) -> Vec<String> {
        if let Some(fd) = &self.fd {
            let mut buf = [0u8; 4096];
            loop {
                match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                    Ok(0) => {
                        self.partial.push(b'\n');
                        self.fd = None;
                        break;
                    }
                    Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if !line.is_empty() {
                lines.push(line);
            }
        }
        lines
    }
}

/// Starts `baton __switch` with its output on a pipe the loop reads.
pub fn spawn(
    config: &std::path::Path,
    name: &str,
    args: &[String],
) -> std::io::Result<(Pid, OwnedFd)> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(std::io::Error::from)?;
    let write2 = write.try_clone()?;
    // /proc/self/exe, not its path: after a package upgrade replaced the binary, the path
    // names the new file (or nothing) while this supervisor speaks its own version's protocol.
    let exe = std::path::Path::new("/proc/self/exe");
    let child = std::process::Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(args)
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::from(write2))
        .process_group(0)
        .spawn()?;
    // Reaped by the loop's waitpid(-1), like every child.
    Ok((Pid::from_raw(child.id() as i32), read))
}
