//! Spawning the service into its own process group, and finding, signalling and identifying processes.

use crate::config::{Spec, Vars};
use crate::error::{Error, Result};
use crate::exit::Action;
use crate::sys;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A freshly spawned service: its PID (also its process group) and its output pipes.
pub struct Spawned {
    /// The argv as executed, placeholders expanded.
    pub argv: Vec<String>,
    /// Leader PID; equals the process group id.
    pub pid: Pid,
    /// Start time of the leader, for identity checks after a supervisor restart.
    pub starttime: u64,
    /// Read end of the service's stdout.
    pub stdout: OwnedFd,
    /// Read end of the service's stderr.
    pub stderr: OwnedFd,
}

/// Spawns the service for one instance: own process group, dropped privileges, environment set.
pub fn spawn(
    spec: &Spec,
    vars: &Vars,
    notify_socket: Option<&Path>,
    listener: Option<RawFd>,
) -> Result<Spawned> {
    let port = vars.port;
    let argv: Vec<String> = spec.command.iter().map(|a| spec.expand(a, vars)).collect();
    let program = resolve_program(&argv[0], spec.base_dir());
    let listen = listener.zip(spec.listen.as_ref().map(|l| l.fd));
    let mut cmd = if let Some((_, 3)) = listen {
        // Socket activation wants LISTEN_PID = the service's own PID, unknown before the
        // fork: a shell sets it to $$ and execs the service, which keeps that PID.
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=listen; export LISTEN_PID LISTEN_FDS LISTEN_FDNAMES; exec \"$0\" \"$@\"")
            .arg(&program);
        c
    } else {
        Command::new(&program)
    };
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .current_dir(spec.workdir.as_deref().unwrap_or(Path::new("/")));
    // A clean environment: nothing of the caller's (root's PATH, exported secrets, our own
    // NOTIFY_SOCKET from systemd) reaches the service unless the config names it.
    cmd.env_clear().envs(crate::environ::base(spec));
    if let Some(p) = port {
        cmd.env("PORT", p.to_string());
    }
    for (k, v) in &spec.env {
        cmd.env(k, spec.expand(v, vars));
    }
    if let Some(r) = &vars.release {
        cmd.env("BATON_RELEASE", r);
    }
    if let Some(sock) = notify_socket {
        cmd.env("NOTIFY_SOCKET", sock);
    }
    sys::install(
        &mut cmd,
        sys::ChildSetup {
            account: spec
                .account
                .as_ref()
                .map(crate::config::Account::credentials),
            umask: spec.umask,
            parent: nix::unistd::getpid(),
            new_session: false,
            // SIGKILL, not the stop signal: a supervisor that died by kill -9 cannot
            // finish a graceful stop anyway, and a service ignoring TERM must not linger.
            parent_death_signal: Some(Signal::SIGKILL),
            keep_fd: None,
            listen,
        },
    );
    let mut child = cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Action::NotInstalled,
            std::io::ErrorKind::PermissionDenied => Action::NoPrivilege,
            _ => Action::Generic,
        };
        Error::io(format!("spawn {}", program.display()), &e).code(code)
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::unable(
            "capture the service's output",
            "no pipes were created",
        ));
    };
    // The Child handle is dropped without waiting: the supervisor reaps every child with waitpid(-1).
    Ok(Spawned {
        argv,
        pid,
        starttime: starttime(pid).unwrap_or(0),
        stdout: out.into(),
        stderr: err.into(),
    })
}

/// Relative programs with a slash are relative to the config file's directory.
fn resolve_program(prog: &str, base: &Path) -> PathBuf {
    let p = Path::new(prog);
    if prog.contains('/') && p.is_relative() {
        base.join(p)
    } else {
        p.to_path_buf()
    }
}

/// One line of /proc/PID/stat, the fields baton needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The process.
    pub pid: Pid,
    /// Its parent.
    pub ppid: Pid,
    /// Its process group.
    pub pgrp: Pid,
    /// Start time in clock ticks since boot: with the PID, a process's identity.
    pub starttime: u64,
}

/// Parses /proc/PID/stat text; the command name may contain spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... starttime is field 22 overall, index 19 here.
    Some(ProcStat {
        pid: Pid::from_raw(pid),
        ppid: Pid::from_raw(f.get(1)?.parse().ok()?),
        pgrp: Pid::from_raw(f.get(2)?.parse().ok()?),
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// Reads one process's stat; `None` once it is gone.
pub fn stat(pid: Pid) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time that, with the PID, identifies a process.
pub fn starttime(pid: Pid) -> Option<u64> {
    stat(pid).map(|s| s.starttime)
}

/// Every process on the system; used only when stopping or cleaning up, never while idle.
pub fn all() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat(Pid::from_raw(pid)))
        .collect()
}

/// All descendants of `root` (not `root` itself).
///
/// Walks the tree through /proc/PID/task/TID/children, so the cost follows the size of
/// the service's tree, not of the host; falls back to scanning every process when the
/// kernel lacks those files.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let Some(first) = children(root) else {
        return descendants_by_scan(root);
    };
    let mut out = Vec::new();
    let mut stack = first;
    while let Some(p) = stack.pop() {
        out.push(p);
        stack.extend(children(p).unwrap_or_default());
    }
    out
}

/// Direct children of `pid` across all its threads (a JVM forks from any thread).
fn children(pid: Pid) -> Option<Vec<Pid>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    let mut supported = false;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        supported = true;
        out.extend(
            text.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .map(Pid::from_raw),
        );
    }
    supported.then_some(out)
}

fn descendants_by_scan(root: Pid) -> Vec<Pid> {
    let procs = all();
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            out.extend(kids);
            stack.extend(kids);
        }
    }
    out
}

/// Processes still in group `pgid` that started no earlier than its leader did (so not a reused id).
pub fn group_members(pgid: Pid, leader_starttime: u64) -> Vec<Pid> {
    all()
        .into_iter()
        .filter(|p| p.pgrp == pgid && p.starttime >= leader_starttime)
        .map(|p| p.pid)
        .collect()
}

/// Signals a process group; a group that is already gone is not an error.
pub fn signal_group(pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("unable to send {sig} to process group {pgid}: {e}"),
    }
}

/// Signals one process; a process that is already gone is not an error.
pub fn signal(pid: Pid, sig: Signal) {
    match kill(pid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("unable to send {sig} to pid {pid}: {e}"),
    }
}

/// Sends SIGKILL to processes that are not our children and waits (up to `limit`) until they are gone.
pub fn kill_and_wait(pids: &[Pid], limit: std::time::Duration) -> Vec<Pid> {
    let watched = watch_exits(pids);
    for &p in pids {
        signal(p, Signal::SIGKILL);
    }
    wait_exits(watched, limit)
}

/// Pidfds for processes we will wait on (taken before signalling, so no exit is missed).
pub fn watch_exits(pids: &[Pid]) -> Vec<(Pid, OwnedFd)> {
    pids.iter()
        .filter_map(|&p| Some((p, sys::pidfd_open(p).ok()?)))
        .collect()
}

/// Waits until every watched process has exited or `limit` passes; returns those still alive.
///
/// One poll(2) over pidfds: the kernel wakes us at each exit, nothing is polled by time.
pub fn wait_exits(watched: Vec<(Pid, OwnedFd)>, limit: std::time::Duration) -> Vec<Pid> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + limit;
    let mut waiting = watched;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let mut polls: Vec<PollFd> = waiting
            .iter()
            .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(
            &mut polls,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
        let exited: Vec<bool> = polls
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(polls);
        waiting = waiting
            .into_iter()
            .zip(exited)
            .filter(|(_, e)| !e)
            .map(|(w, _)| w)
            .collect();
    }
    waiting.into_iter().map(|(p, _)| p).collect()
}

/// Whether this process has any child, exited or not (one syscall; reaps nothing).
pub fn has_children() -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let flags =
        WaitPidFlag::WEXITED | WaitPidFlag::WSTOPPED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(waitid(Id::All, flags), Err(nix::errno::Errno::ECHILD))
}

/// Signals the service group and every other descendant of this supervisor, however far they strayed.
pub fn signal_tree(pgid: Option<Pid>, sig: Signal, except: &[Pid]) -> Vec<Pid> {
    if let Some(g) = pgid {
        signal_group(g, sig);
    }
    // As a subreaper we are an ancestor of every descendant: no child, nothing to scan.
    if !has_children() {
        return Vec::new();
    }
    // Processes still in the group got the signal above; these are the ones that left it.
    let rest: Vec<Pid> = descendants(nix::unistd::getpid())
        .into_iter()
        .filter(|p| !except.contains(p) && stat(*p).is_some_and(|s| Some(s.pgrp) != pgid))
        .collect();
    for &p in &rest {
        signal(p, sig);
    }
    rest
}

/// Socket inodes held open by `pids` (from the /proc/PID/fd links `socket:[N]`).
fn socket_inodes(pids: &[Pid]) -> std::collections::HashSet<u64> {
    let mut out = std::collections::HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    if let Ok(n) = n.parse() {
                        out.insert(n);
                    }
                }
            }
        }
    }
    out
}

/// The processes of an instance: its leader and every descendant.
pub fn instance_pids(leader: Pid) -> Vec<Pid> {
    let mut pids = descendants(leader);
    pids.push(leader);
    pids
}

/// TCP ports an instance listens on (how `port.mode = "discover"` finds a port-0 service).
pub fn listening_ports(leader: Pid) -> Vec<u16> {
    let inodes = socket_inodes(&instance_pids(leader));
    let mut ports: Vec<u16> = crate::sockets::all()
        .into_iter()
        .filter(|s| s.state == crate::sockets::LISTEN && inodes.contains(&s.inode))
        .map(|s| s.local.1)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Established connections an instance holds on local `port` (what a drain waits to reach 0).
pub fn established(leader: Pid, port: u16) -> usize {
    let inodes = socket_inodes(&instance_pids(leader));
    crate::sockets::all()
        .into_iter()
        .filter(|s| {
            s.local.1 == port && s.state == crate::sockets::ESTABLISHED && inodes.contains(&s.inode)
        })
        .count()
}

/// Whether any process of group `pgid` is left.
pub fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(nix::errno::Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_name() {
        let line = "4242 (my (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.pid, Pid::from_raw(4242));
        assert_eq!(s.ppid, Pid::from_raw(1));
        assert_eq!(s.pgrp, Pid::from_raw(4242));
        assert_eq!(s.starttime, 987654);
    }

    #[test]
    fn tree_walk_agrees_with_a_full_scan() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let sh = Pid::from_raw(child.id() as i32);
        // Wait (bounded) until the shell has forked both sleeps.
        for _ in 0..500 {
            if descendants_by_scan(sh).len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut walked = descendants(sh);
        let mut scanned = descendants_by_scan(sh);
        walked.sort();
        scanned.sort();
        assert_eq!(walked.len(), 2, "{walked:?}");
        assert_eq!(walked, scanned);
        assert!(descendants(nix::unistd::getpid()).contains(&sh));
        for p in walked {
            signal(p, Signal::SIGKILL);
        }
        child.kill().ok();
        child.wait().ok();
    }

    #[test]
    fn own_stat_is_readable() {
        let me = stat(nix::unistd::getpid()).expect("own stat");
        assert_eq!(me.pid, nix::unistd::getpid());
        assert!(me.starttime > 0);
    }
}
