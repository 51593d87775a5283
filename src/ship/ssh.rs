//! The system's OpenSSH as transport: one multiplexed connection per host, commands and uploads over it.

use super::config::{Env, Transfer};
use crate::error::{Error, Result};
use crate::shell::quote;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a local command (ssh, rsync, scp) did.
#[derive(Debug, Clone, Default)]
pub struct CmdOut {
    /// Exit code; `None` when killed by a signal or by our deadline.
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Killed because it outlived its deadline.
    pub timed_out: bool,
}

impl CmdOut {
    /// Exit 0 in time.
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// Why it failed, for a table cell: ssh's own error line when there is one.
    pub fn reason(&self) -> String {
        if self.timed_out {
            return "timed out".into();
        }
        // A remote baton's own error line says the most; else the last line (ssh's error).
        let lines = || self.stderr.lines().rev().map(str::trim);
        let last = lines()
            .find(|l| l.contains("unable to "))
            .or_else(|| lines().find(|l| !l.is_empty()))
            .map(|l| l.strip_prefix("baton: ").unwrap_or(l).to_string());
        match (self.code, last) {
            (Some(c), Some(l)) => format!("exit {c}: {l}"),
            (Some(c), None) => format!("exit {c}"),
            (None, Some(l)) => format!("killed: {l}"),
            (None, None) => "killed by a signal".into(),
        }
    }

    /// stderr then stdout, for the failure report.
    pub fn output(&self) -> String {
        let mut s = self.stderr.clone();
        if !self.stdout.trim().is_empty() {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&self.stdout);
        }
        s
    }
}

enum Msg {
    Line(String),
    Progress(String),
    Out(String),
    ErrDone,
}

/// Runs `cmd` with no stdin, collecting output; stderr lines go to `on_line` as they come.
///
/// Bounded by `timeout` (the command is killed). Once the command has exited its
/// pipes get one second more: a backgrounded ssh master may inherit and hold them.
pub fn run(cmd: Command, timeout: Duration, on_line: impl FnMut(&str)) -> CmdOut {
    run_inner(cmd, timeout, on_line, None)
}

/// [`run`], also passing each `\r`- or `\n`-ended piece of stdout to `on_progress`
/// as it comes (rsync's progress line is redrawn with `\r`).
fn run_inner(
    mut cmd: Command,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
    mut on_progress: Option<&mut dyn FnMut(&str)>,
) -> CmdOut {
    let progress = on_progress.is_some();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CmdOut {
                code: Some(127),
                stderr: format!("cannot run {:?}: {e}", cmd.get_program()),
                ..CmdOut::default()
            }
        }
    };
    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if progress {
                let mut chunk = [0u8; 4096];
                let mut start = 0;
                while let Ok(n) = out.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) =
                        buf[start..].iter().position(|&b| b == b'\r' || b == b'\n')
                    {
                        let piece = String::from_utf8_lossy(&buf[start..start + end])
                            .trim()
                            .to_string();
                        start += end + 1;
                        if !piece.is_empty() {
                            let _ = tx.send(Msg::Progress(piece));
                        }
                    }
                }
                // The pieces went to on_progress; a failure report needs stderr only.
                buf.clear();
            } else {
                let _ = out.read_to_end(&mut buf);
            }
            let _ = tx.send(Msg::Out(String::from_utf8_lossy(&buf).into_owned()));
        });
    } else {
        let _ = tx.send(Msg::Out(String::new()));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let s = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(Msg::Line(s)).is_err() {
                    break;
                }
                line.clear();
            }
            let _ = tx.send(Msg::ErrDone);
        });
    } else {
        let _ = tx.send(Msg::ErrDone);
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut res = CmdOut::default();
    let (mut out_done, mut err_done) = (false, false);
    let mut exited: Option<Instant> = None;
    let mut status = None;
    while !(out_done && err_done && status.is_some()) {
        let now = Instant::now();
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    exited = Some(now);
                }
                Ok(None) if now >= deadline => {
                    let _ = child.kill();
                    res.timed_out = true;
                    status = child.wait().ok();
                    exited = Some(now);
                }
                Ok(None) => {}
                Err(_) => {
                    status = child.wait().ok();
                    exited = Some(now);
                }
            }
        }
        if exited.is_some_and(|t| now.duration_since(t) > Duration::from_secs(1)) {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Msg::Line(l)) => {
                on_line(&l);
                res.stderr.push_str(&l);
                res.stderr.push('\n');
            }
            Ok(Msg::Progress(l)) => {
                if let Some(f) = on_progress.as_mut() {
                    f(&l);
                }
            }
            Ok(Msg::Out(s)) => {
                res.stdout = s;
                out_done = true;
            }
            Ok(Msg::ErrDone) => err_done = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                out_done = true;
                err_done = true;
            }
        }
    }
    res.code = status.and_then(|s| s.code());
    res
}

/// The longest directory the control directory can go in: a socket path holds 107 bytes,
/// and ssh adds `/baton-ship-` and 16 hex digits (ours), `/` and 40 (`%C`), then `.` and 16
/// (its temporary name while the master starts).
const CONTROL_BASE_MAX: usize = 107 - 28 - 41 - 17;

/// SSH settings for one environment, with a private directory for the control sockets.
pub struct Ssh {
    user: Option<String>,
    port: u16,
    options: Vec<String>,
    transfer: Transfer,
    control_dir: PathBuf,
}

impl Ssh {
    /// Prepares ssh options for `env`; the control directory lives until drop.
    pub fn new(env: &Env) -> Result<Ssh> {
        // The first of these short enough for ssh's socket path to fit a sockaddr_un.
        let base = [
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
            Some(std::env::temp_dir()),
            Some(PathBuf::from("/tmp")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_dir() && p.as_os_str().len() <= CONTROL_BASE_MAX)
        .ok_or_else(|| {
            Error::unable(
                "create a directory for ssh control sockets",
                format!(
                    "TMPDIR ({}) is too long for a socket path and /tmp is missing",
                    std::env::temp_dir().display()
                ),
            )
            .hint(format!(
                "set TMPDIR to a directory of at most {CONTROL_BASE_MAX} characters"
            ))
        })?;
        // Fresh, private and unpredictable: whoever could plant the ControlPath directory
        // could hijack every connection made through it.
        let control_dir = crate::files::Dir::open(&base)
            .and_then(|d| d.create_private("baton-ship-"))
            .map_err(|e| {
                Error::io(
                    format!(
                        "create a directory for ssh control sockets in {}",
                        base.display()
                    ),
                    &e,
                )
            })?
            .path()
            .to_path_buf();
        // BatchMode: never prompt (a deploy has no one to answer); ControlMaster:
        // one TCP connection and one authentication per host for every step.
        let mut options: Vec<String> = [
            "BatchMode=yes",
            "ConnectTimeout=5",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
            "ControlMaster=auto",
            "ControlPersist=60",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        options.push(format!("ControlPath={}/%C", control_dir.display()));
        if let Some(kh) = &env.known_hosts {
            options.push(format!("UserKnownHostsFile={}", kh.display()));
            options.push("StrictHostKeyChecking=yes".into());
        }
        if let Some(id) = &env.identity {
            options.push(format!("IdentityFile={}", id.display()));
            options.push("IdentitiesOnly=yes".into());
        }
        Ok(Ssh {
            user: env.user.clone(),
            port: env.port,
            options,
            transfer: env.transfer,
            control_dir,
        })
    }

    fn target(&self, host: &str) -> String {
        match &self.user {
            Some(u) => format!("{u}@{host}"),
            None => host.to_string(),
        }
    }

    fn opts(&self, port_flag: &str) -> Vec<String> {
        let mut v = vec![port_flag.to_string(), self.port.to_string()];
        for o in &self.options {
            v.push("-o".into());
            v.push(o.clone());
        }
        v
    }

    /// The `ssh ...` words, before the target (as ssh takes them).
    pub fn ssh_words(&self) -> Vec<String> {
        let mut v = vec!["ssh".to_string()];
        v.extend(self.opts("-p"));
        v
    }

    /// Runs a POSIX shell `script` on `host`.
    pub fn exec(
        &self,
        host: &str,
        script: &str,
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> CmdOut {
        let mut c = Command::new("ssh");
        c.args(self.opts("-p")).arg(self.target(host)).arg(script);
        run(c, timeout, on_line)
    }

    /// Copies `sources` into `dest_dir` on `host`: a file by its name, a directory's contents.
    ///
    /// With rsync, files equal to those in `basis` (a directory on the host, e.g. the
    /// current release) are copied there on the host instead of over the network, and
    /// changed ones are sent as deltas against them: an uberjar rebuilt with few changes
    /// costs little. `--copy-dest`, not `--link-dest`: a release must never share an
    /// inode with another, or a service writing into its own release would change both.
    pub fn upload(
        &self,
        host: &str,
        sources: &[&Path],
        dest_dir: &str,
        basis: Option<&str>,
        timeout: Duration,
        on_progress: &mut dyn FnMut(&str),
    ) -> CmdOut {
        let arg = |src: &Path| {
            let mut s = src.display().to_string();
            if src.is_dir() && !s.ends_with('/') {
                s.push('/');
            }
            s
        };
        let dest = format!("{}:{}/", self.target(host), dest_dir);
        match self.transfer {
            Transfer::Rsync => {
                let e = self
                    .ssh_words()
                    .iter()
                    .map(|w| quote(w))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut c = Command::new("rsync");
                // progress2: one line for the whole transfer, redrawn with \r.
                c.arg("-a")
                    .arg("--info=progress2")
                    .arg("--no-inc-recursive")
                    .arg("-e")
                    .arg(e);
                if let Some(b) = basis {
                    c.arg(format!("--copy-dest={b}"));
                }
                c.args(sources.iter().map(|s| arg(s))).arg(dest);
                run_inner(c, timeout, |_| {}, Some(on_progress))
            }
            Transfer::Scp => {
                let mut last = CmdOut::default();
                for src in sources {
                    last = if src.is_dir() {
                        // scp -r cannot copy a directory's contents into an existing one; tar can.
                        let mut ssh = self.ssh_words();
                        ssh.push(self.target(host));
                        ssh.push(format!("tar -C {} -xf -", quote(dest_dir)));
                        let pipeline = format!(
                            "tar -C {} -cf - . | {}",
                            quote(&arg(src)),
                            ssh.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
                        );
                        let mut c = Command::new("sh");
                        c.arg("-c").arg(pipeline);
                        run(c, timeout, |_| {})
                    } else {
                        let mut c = Command::new("scp");
                        c.arg("-q").args(self.opts("-P")).arg(arg(src)).arg(&dest);
                        run(c, timeout, |_| {})
                    };
                    if !last.ok() {
                        break;
                    }
                }
                last
            }
        }
    }

    /// Ends the shared connection to `host`.
    pub fn close(&self, host: &str) {
        let mut c = Command::new("ssh");
        c.args(self.opts("-p"))
            .arg("-O")
            .arg("exit")
            .arg(self.target(host));
        let _ = run(c, Duration::from_secs(5), |_| {});
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_times_out() {
        let mut c = Command::new("sh");
        c.arg("-c").arg("echo out; echo err >&2; exit 3");
        let mut lines = Vec::new();
        let r = run(c, Duration::from_secs(10), |l| lines.push(l.to_string()));
        assert_eq!(r.code, Some(3));
        assert_eq!(r.stdout, "out\n");
        assert_eq!(lines, vec!["err"]);
        let mut c = Command::new("sleep");
        c.arg("5");
        let t = Instant::now();
        let r = run(c, Duration::from_millis(200), |_| {});
        assert!(r.timed_out && !r.ok());
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
