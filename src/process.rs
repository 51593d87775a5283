//! Spawning the service into its own process group, and finding, signalling and identifying processes.
//!
//! A PID alone never names a process here: whatever was looked up (in /proc, in a
//! cgroup) is opened as a pidfd, its identity checked again through that handle's
//! PID, and signalled through the handle, so a PID reused in between is never hit.

use crate::config::{Spec, Vars};
use crate::error::{Error, Result};
use crate::exit::Action;
use crate::sys;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

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
///
/// Everything the child needs (argv, environment, PATH candidates, descriptors) is built
/// here; `sys::spawn` creates the child (inside `cgroup` when given) and only makes
/// system calls there.
pub fn spawn(
    spec: &Spec,
    vars: &Vars,
    notify_socket: Option<&Path>,
    listener: Option<RawFd>,
    cgroup: Option<sys::SpawnCgroup>,
    pipes: Option<OutputPipes>,
) -> Result<Spawned> {
    let port = vars.port;
    let argv: Vec<String> = spec.command.iter().map(|a| spec.expand(a, vars)).collect();
    let program = resolve_program(&argv[0], spec.base_dir());
    let listen = listener.zip(spec.listen.as_ref().map(|l| l.fd));
    let mut exec_argv: Vec<OsString> = Vec::with_capacity(argv.len() + 3);
    let exec_program: OsString = if let Some((_, 3)) = listen {
        // Socket activation wants LISTEN_PID = the service's own PID, unknown before the
        // fork: a shell sets it to $$ and execs the service, which keeps that PID.
        exec_argv.extend([
            "/bin/sh".into(),
            "-c".into(),
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=listen; export LISTEN_PID LISTEN_FDS LISTEN_FDNAMES; exec \"$0\" \"$@\"".into(),
        ]);
        "/bin/sh".into()
    } else {
        program.clone().into_os_string()
    };
    exec_argv.push(program.clone().into_os_string());
    exec_argv.extend(argv[1..].iter().map(OsString::from));
    // A clean environment: nothing of the caller's (root's PATH, exported secrets, our own
    // NOTIFY_SOCKET from systemd) reaches the service unless the config names it. Later
    // entries win, and the result is sorted, as std::process::Command does it.
    let mut env: BTreeMap<OsString, OsString> = crate::environ::base(spec).into_iter().collect();
    // The mark of baton's own helpers: never the service's, whatever `inherit_env` says.
    env.remove(OsStr::new(HELPER_ENV));
    if let Some(p) = port {
        env.insert("PORT".into(), p.to_string().into());
    }
    for (k, v) in &spec.env {
        env.insert(k.into(), spec.expand(v, vars).into());
    }
    if let Some(r) = &vars.release {
        env.insert("BATON_RELEASE".into(), r.into());
    }
    if let Some(sock) = notify_socket {
        env.insert("NOTIFY_SOCKET".into(), sock.into());
    }
    let failed = |what: &str, e: std::io::Error| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Action::NotInstalled,
            std::io::ErrorKind::PermissionDenied => Action::NoPrivilege,
            _ => Action::Generic,
        };
        let what = match what {
            "" => format!("spawn {}", program.display()),
            step => format!("spawn {} ({step})", program.display()),
        };
        Error::io(what, &e).code(code)
    };
    let nul = |_| {
        failed(
            "",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an argument, a variable or the working directory holds a NUL byte",
            ),
        )
    };
    let cstring = |s: &OsStr| CString::new(s.as_bytes());
    let path_var = env.get(OsStr::new("PATH")).map(OsString::as_os_str);
    let candidates = candidates(&exec_program, path_var)
        .iter()
        .map(|c| cstring(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(nul)?;
    let exec_argv = exec_argv
        .iter()
        .map(|a| cstring(a))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(nul)?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            CString::new(kv.into_vec())
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(nul)?;
    let workdir = cstring(
        spec.workdir
            .as_deref()
            .unwrap_or(Path::new("/"))
            .as_os_str(),
    )
    .map_err(nul)?;
    let stdin = dev_null().map_err(|e| failed("open /dev/null", e))?;
    let OutputPipes {
        stdout: (out_r, out_w),
        stderr: (err_r, err_w),
    } = match pipes {
        Some(p) => p,
        None => OutputPipes::new().map_err(|e| failed("pipe", e))?,
    };
    let exec = sys::Exec {
        candidates,
        argv: exec_argv,
        envp,
        workdir,
        stdio: [stdin, out_w.as_raw_fd(), err_w.as_raw_fd()],
        listen,
        account: spec
            .account
            .as_ref()
            .map(crate::config::Account::credentials),
        umask: spec.umask,
        // SIGKILL, not the stop signal: a supervisor that died by kill -9 cannot
        // finish a graceful stop anyway, and a service ignoring TERM must not linger.
        parent_death_signal: Some(Signal::SIGKILL),
        cgroup,
    };
    let pid = sys::spawn(&exec).map_err(|e| match e.step {
        sys::Step::Exec => failed("", e.err),
        step => failed(step.name(), e.err),
    })?;
    // The supervisor reaps every child with waitpid(-1).
    Ok(Spawned {
        argv,
        pid,
        starttime: starttime(pid).unwrap_or(0),
        stdout: out_r,
        stderr: err_r,
    })
}

/// A service's stdout and stderr pipes, (read end, write end) each, close-on-exec; made
/// ahead of a respawn, while nothing else is to be done, or at the spawn.
pub struct OutputPipes {
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
}

impl OutputPipes {
    /// Makes the two pipes.
    pub fn new() -> std::io::Result<OutputPipes> {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        Ok(OutputPipes {
            stdout: pipe()?,
            stderr: pipe()?,
        })
    }
}

/// /dev/null, every service's stdin: opened once, at the first spawn, and held (close-on-exec)
/// for the supervisor's life, so that a respawn opens nothing between the exit and the spawn.
fn dev_null() -> std::io::Result<RawFd> {
    static NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f.as_raw_fd());
    }
    let f = std::fs::File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| f).as_raw_fd())
}

/// Where execve looks for `program`: itself when its name has a slash, else in each
/// directory of the service's PATH (an empty entry is the working directory), or
/// execvp's default PATH when the environment has none.
fn candidates(program: &OsStr, path: Option<&OsStr>) -> Vec<OsString> {
    let bytes = program.as_bytes();
    if bytes.contains(&b'/') || bytes.is_empty() {
        return vec![program.to_os_string()];
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStrExt::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            if dir.is_empty() {
                return program.to_os_string();
            }
            let mut c = dir.to_vec();
            c.push(b'/');
            c.extend_from_slice(bytes);
            OsString::from_vec(c)
        })
        .collect()
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
    /// Its session.
    pub session: Pid,
    /// Start time in clock ticks since boot: with the PID, a process's identity.
    pub starttime: u64,
}

/// Parses /proc/PID/stat text; the command name may contain spaces and parentheses.
///
/// The name is whatever the process chose (up to 15 bytes, any of them `)`), so the
/// fields are found after the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let f: Vec<&str> = tail.split_whitespace().collect();
    let field = |i: usize| -> Option<i32> { f.get(i)?.parse().ok() };
    // After the name: state(0) ppid(1) pgrp(2) session(3) ... starttime is field 22 overall, index 19 here.
    Some(ProcStat {
        pid: Pid::from_raw(pid),
        ppid: Pid::from_raw(field(1)?),
        pgrp: Pid::from_raw(field(2)?),
        session: Pid::from_raw(field(3)?),
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

/// The recorded identity of a service's process group: what proves a process belongs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupIdentity {
    /// The group, which is the leader's PID.
    pub pgid: Pid,
    /// The leader's start time.
    pub leader_starttime: u64,
    /// The session the group lives in (the supervisor's): a stranger that reuses the PID
    /// and calls setsid(2) is in a session of its own.
    pub session: Pid,
}

impl GroupIdentity {
    /// Whether `p` is provably a member: same group, same session, and not older than the group.
    pub fn owns(&self, p: &ProcStat) -> bool {
        p.pgrp == self.pgid && p.session == self.session && p.starttime >= self.leader_starttime
    }
}

/// Processes still in the recorded group (a stranger on a reused PID does not qualify).
pub fn group_members(id: &GroupIdentity) -> Vec<ProcStat> {
    all().into_iter().filter(|p| id.owns(p)).collect()
}

/// Opens `pid` as a pidfd and returns it only if, *after* opening, the process still passes `check`.
///
/// A pidfd pins the process, not the number: once it is open, a check that passes is
/// about the process the signal will reach.
pub fn open_verified(pid: Pid, check: impl Fn(&ProcStat) -> bool) -> Option<OwnedFd> {
    let fd = sys::pidfd_open(pid).ok()?;
    stat(pid).filter(|s| check(s)).map(|_| fd)
}

/// Signals the process a pidfd refers to; one that already exited is not an error.
pub fn signal_pidfd(fd: &OwnedFd, pid: Pid, sig: Signal) {
    use std::os::fd::AsFd;
    match sys::pidfd_send_signal(fd.as_fd(), sig) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(e) => tracing::warn!("unable to send {sig} to pid {pid}: {e}"),
    }
}

/// Signals `p` if it is still the same process (same PID and start time).
pub fn signal_same(p: &ProcStat, sig: Signal) {
    if let Some(fd) = open_verified(p.pid, |now| now.starttime == p.starttime) {
        signal_pidfd(&fd, p.pid, sig);
    }
}

/// Signals a process group; a group that is already gone is not an error.
///
/// By kill(2) on the negated group, which is all libc's killpg does: one libc page less
/// to touch for a stop after a long sleep.
pub fn signal_group(pgid: Pid, sig: Signal) {
    match sys::kill(Pid::from_raw(-pgid.as_raw()), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("unable to send {sig} to process group {pgid}: {e}"),
    }
}

/// Signals one process; a process that is already gone is not an error.
pub fn signal(pid: Pid, sig: Signal) {
    match sys::kill(pid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("unable to send {sig} to pid {pid}: {e}"),
    }
}

/// Sends SIGKILL to processes that are not our children, each only if still the very
/// process that was found, and waits (up to `limit`) until they are gone.
pub fn kill_and_wait(
    procs: &[ProcStat],
    still_ours: impl Fn(&ProcStat) -> bool,
    limit: std::time::Duration,
) -> Vec<Pid> {
    let watched: Vec<(Pid, OwnedFd)> = procs
        .iter()
        .filter_map(|p| {
            let fd = open_verified(p.pid, |now| now.starttime == p.starttime && still_ours(now))?;
            signal_pidfd(&fd, p.pid, Signal::SIGKILL);
            Some((p.pid, fd))
        })
        .collect();
    wait_exits(watched, limit)
}

/// Waits until every watched process has exited or `limit` passes; returns those still alive.
///
/// One poll(2) over pidfds: the kernel wakes us at each exit, nothing is polled by time.
pub fn wait_exits(watched: Vec<(Pid, OwnedFd)>, limit: std::time::Duration) -> Vec<Pid> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = crate::clock::after(std::time::Instant::now(), limit);
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

/// The environment variable that marks baton's own helpers (switch worker, proxy
/// commands, exec probes run as root) and whatever they start, e.g. a daemonizing HAProxy.
pub const HELPER_ENV: &str = "BATON_HELPER";

/// Marks every child this supervisor starts from now on as a helper, except the service
/// (whose environment `spawn` strips of the mark). The value is random, so a service
/// that cannot read root's processes cannot forge it to slip out of a stop.
pub fn mark_helpers() {
    let mut seed = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .is_ok();
    let nonce = if random {
        u64::from_ne_bytes(seed)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    };
    // Set once, at start-up, before any thread or child exists.
    std::env::set_var(HELPER_ENV, format!("{nonce:016x}"));
}

/// Whether `pid` carries this supervisor's helper mark (read from /proc/PID/environ).
pub fn is_helper(pid: Pid) -> bool {
    std::env::var_os(HELPER_ENV).is_some_and(|mark| has_env(pid, HELPER_ENV, mark.as_bytes()))
}

/// Whether `pid` was started with `key=value` in its environment (/proc/PID/environ).
pub fn has_env(pid: Pid, key: &str, value: &[u8]) -> bool {
    let mut want = key.as_bytes().to_vec();
    want.push(b'=');
    want.extend_from_slice(value);
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == want.as_slice()))
}

/// The service's processes under the subreaper: every descendant of this supervisor
/// except baton's own helpers and what they started (`is_helper`), and `except`.
pub fn service_tree(except: &[Pid]) -> Vec<ProcStat> {
    // As a subreaper we are an ancestor of every descendant: no child, nothing to scan.
    if !has_children() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut stack = children(nix::unistd::getpid()).unwrap_or_default();
    while let Some(p) = stack.pop() {
        // A helper's subtree is the helper's, whatever it did (double fork, setsid).
        if except.contains(&p) || is_helper(p) {
            continue;
        }
        if let Some(s) = stat(p) {
            out.push(s);
        }
        stack.extend(children(p).unwrap_or_default());
    }
    out
}

/// Signals the service group and every other process of the service tree, however far they strayed.
///
/// The group is signalled with killpg only while `leader_unreaped`: then its number
/// cannot belong to anyone else, and not again when `group_sent` (the caller did it).
/// Every other process is signalled through a pidfd.
pub fn signal_tree(
    pgid: Option<Pid>,
    leader_unreaped: bool,
    sig: Signal,
    except: &[Pid],
    group_sent: bool,
) -> Vec<Pid> {
    let group = pgid.filter(|_| leader_unreaped);
    if let Some(g) = group.filter(|_| !group_sent) {
        signal_group(g, sig);
    }
    // Processes still in the group got the signal above; these are the ones that left it.
    let rest: Vec<ProcStat> = service_tree(except)
        .into_iter()
        .filter(|s| group.is_none() || Some(s.pgrp) != group)
        .collect();
    for p in &rest {
        signal_same(p, sig);
    }
    rest.into_iter().map(|p| p.pid).collect()
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
    fn stat_without_fields_after_the_name_is_refused() {
        for line in [
            "",
            "4242",
            "4242 (x)",
            "4242 (x) S 1 2",
            "4242 (x))",
            "(x) S 1 2 3",
        ] {
            assert_eq!(parse_stat(line), None, "{line:?}");
        }
    }

    proptest::proptest! {
        /// Any name the kernel may show (up to 15 bytes of anything but NUL, parentheses and
        /// spaces included) leaves the numeric fields readable, and nothing panics.
        #[test]
        fn stat_fields_survive_any_command_name(
            name in "[ -~]{0,15}",
            pid in 1i32..4_194_304,
            ppid in 0i32..4_194_304,
            pgrp in 0i32..4_194_304,
            session in 0i32..4_194_304,
            start in proptest::num::u64::ANY,
        ) {
            let line = format!(
                "{pid} ({name}) S {ppid} {pgrp} {session} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 10\n"
            );
            let s = parse_stat(&line).expect("parses");
            proptest::prop_assert_eq!(s.pid, Pid::from_raw(pid));
            proptest::prop_assert_eq!(s.ppid, Pid::from_raw(ppid));
            proptest::prop_assert_eq!(s.pgrp, Pid::from_raw(pgrp));
            proptest::prop_assert_eq!(s.session, Pid::from_raw(session));
            proptest::prop_assert_eq!(s.starttime, start);
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn stat_never_panics(text in "\\PC{0,200}") {
            let _ = parse_stat(&text);
        }
    }

    #[test]
    fn candidates_follow_execvp() {
        let c = |p: &str, path: Option<&str>| -> Vec<String> {
            candidates(OsStr::new(p), path.map(OsStr::new))
                .into_iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(c("/opt/app/bin/run", Some("/bin")), ["/opt/app/bin/run"]);
        assert_eq!(c("bin/run", Some("/bin")), ["bin/run"]);
        assert_eq!(
            c("java", Some("/usr/local/bin::/usr/bin")),
            ["/usr/local/bin/java", "java", "/usr/bin/java"]
        );
        assert_eq!(c("java", None), ["/bin/java", "/usr/bin/java"]);
    }

    #[test]
    fn own_stat_is_readable() {
        let me = stat(nix::unistd::getpid()).expect("own stat");
        assert_eq!(me.pid, nix::unistd::getpid());
        assert!(me.starttime > 0);
    }
}
