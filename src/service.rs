//! What each LSB action does, from the operator's side: find the supervisor, talk to it, report.

use crate::config::{PortSpec, Spec};
use crate::control::{self, Reply, Report, Request};
use crate::daemon::{self, Started};
use crate::error::{Error, Result};
use crate::exit::{Action, Status};
use crate::pidfile::{self, StateFile};
use crate::process;
use nix::sys::signal::Signal;
use nix::unistd::{AccessFlags, Pid, Uid};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

/// `status` asks the supervisor; a hung one must not hang `status` too.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the service and returns once it is ready (or already running).
pub fn start(spec: &Spec) -> Result<()> {
    preflight(spec)?;
    let _lock = pidfile::lock_commands(&spec.state_dir)?;
    start_locked(spec, Last::No)
}

/// The `start` command: as [`start`], but a fresh supervisor's "ready" ends the process
/// (its line printed, exit 0) without returning here.
pub fn start_and_end(spec: &Spec) -> Result<()> {
    preflight(spec)?;
    let _lock = pidfile::lock_commands(&spec.state_dir)?;
    start_locked(spec, Last::Yes)
}

/// Whether a start is the last thing the process does (`start`, `restart`), so that a
/// ready supervisor's answer may end it at once (see [`daemon::start_supervisor`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Yes,
    No,
}

/// What `start` prints for a supervisor that reported ready.
fn ready_line(name: &str, pid: i32) -> String {
    format!("{name} is ready (supervisor pid {pid})\n")
}

fn start_locked(spec: &Spec, last: Last) -> Result<()> {
    let name = &spec.name;
    if pidfile::supervisor_alive(&spec.state_dir)? {
        return start_supervised(spec);
    }
    clean_up_dead(spec.into());
    check_port_free(spec)?;
    let ends = (last == Last::Yes).then_some(ready_line as fn(&str, i32) -> String);
    match daemon::start_supervisor(&spec.file, name, ends)? {
        Started::Ready(pid) => print!("{}", ready_line(name, pid)),
        Started::AlreadyRunning => println!("{name} is already running"),
    }
    Ok(())
}

/// `start` with a supervisor already running: 0 if ready; while it backs off after a
/// crash, spawn now and wait until ready. "start" means ready in every state.
fn start_supervised(spec: &Spec) -> Result<()> {
    let label = format!("start {}", spec.name);
    ask_as(
        spec,
        &Request::Start,
        &label,
        spec.ready.timeout.saturating_add(Duration::from_secs(5)),
    )
    .map_err(|e| {
        e.hint(format!(
            "`baton status {}` shows the last output; logs are in {}",
            spec.name,
            spec.log.dir.display()
        ))
    })
}

/// What stopping a service needs of it: from its validated config, or from the card its
/// supervisor left (`crate::config::card`), so both take one stop path.
#[derive(Clone, Copy)]
pub struct Handle<'a> {
    /// The service's name.
    pub name: &'a str,
    /// Its control socket.
    pub socket: &'a Path,
    /// Its state directory (locks, state file).
    pub state_dir: &'a Path,
    /// Its PID file.
    pub pidfile: &'a Path,
    /// Its log directory (named in a stuck stop's hint).
    pub log_dir: &'a Path,
    /// How long its stop may take before SIGKILL.
    pub stop_timeout: Duration,
}

impl<'a> From<&'a Spec> for Handle<'a> {
    fn from(spec: &'a Spec) -> Handle<'a> {
        Handle {
            name: &spec.name,
            socket: &spec.socket,
            state_dir: &spec.state_dir,
            pidfile: &spec.pidfile,
            log_dir: &spec.log.dir,
            stop_timeout: spec.stop.timeout,
        }
    }
}

impl<'a> From<&'a crate::config::card::Card> for Handle<'a> {
    fn from(card: &'a crate::config::card::Card) -> Handle<'a> {
        Handle {
            name: &card.name,
            socket: &card.socket,
            state_dir: &card.state_dir,
            pidfile: &card.pidfile,
            log_dir: &card.log_dir,
            stop_timeout: card.stop_timeout,
        }
    }
}

/// Stops the service and everything it started; succeeds when it was not running, and says
/// whether a supervisor was. `sent` runs once the request is sent (or found needless): what
/// the stop may tell later, such as the config's warnings, waits until then.
pub fn stop(h: Handle<'_>, front: Option<control::Sent>, sent: impl FnOnce()) -> Result<bool> {
    // `baton`'s front took the lock, found the supervisor alive and asked already.
    if let Some(front) = front {
        let limit = reply_limit(&h);
        let (_lock, asked) = front.replies(h.socket, &Request::Stop, Some(limit));
        return stopped(h, asked, limit, sent);
    }
    ensure_state_dir(h.state_dir)?;
    let _lock = pidfile::lock_commands(h.state_dir)?;
    stop_locked(h, sent)
}

fn stop_locked(h: Handle<'_>, sent: impl FnOnce()) -> Result<bool> {
    if !pidfile::supervisor_alive(h.state_dir)? {
        return Ok(not_running(h, sent));
    }
    // The request goes first: the service's SIGTERM waits for nothing else. Only then is
    // the supervisor watched, to bound the wait for its exit (or to signal it if there is
    // no socket). One that has already gone cannot be opened, or fails the start-time
    // check (a reused PID): then its lock, released at its exit, is waited on instead.
    let limit = reply_limit(&h);
    let asked = control::request(h.socket, &Request::Stop, Some(limit));
    stopped(h, asked, limit, sent)
}

/// How long a stop waits for a reply, and then for the supervisor's exit. The supervisor
/// enforces the stop timeout itself and tells its progress within it; a read that waits
/// longer than that (and a margin) means it is stuck, not slow.
fn reply_limit(h: &Handle<'_>) -> Duration {
    h.stop_timeout.saturating_add(Duration::from_secs(10))
}

/// A stop that found no supervisor: cleans up after a dead one; false. Out of line, as
/// [`stopped`] is.
#[inline(never)]
fn not_running(h: Handle<'_>, sent: impl FnOnce()) -> bool {
    sent();
    if !clean_up_dead(h) {
        println!("{} is not running", h.name);
    }
    false
}

/// The stop after its request (`asked`): the replies, the supervisor's exit. Out of line:
/// inlined, its code sat between the blocks that run before the request, one more page of
/// text for the stop figure (benches/PROFILE-stop.md, ninth round).
#[inline(never)]
fn stopped(
    h: Handle<'_>,
    asked: Result<control::Replies>,
    limit: Duration,
    sent: impl FnOnce(),
) -> Result<bool> {
    let name = h.name;
    sent();
    let state = pidfile::read_state(h.state_dir);
    let watched: Vec<(Pid, std::os::fd::OwnedFd)> = state
        .supervisor
        .and_then(|s| {
            let pid = Pid::from_raw(s.pid);
            process::open_verified(pid, |p| p.starttime == s.starttime).map(|fd| (pid, fd))
        })
        .into_iter()
        .collect();
    match asked {
        Ok(replies) => {
            for reply in replies {
                match reply? {
                    // One write per line: eprintln! writes its pieces one by one.
                    Reply::Progress { message } => {
                        let line = format!("{name}: {message}\n");
                        eprint!("{line}");
                    }
                    Reply::Error { message, code } => {
                        return Err(Error::unable(format!("stop {name}"), message).code(code))
                    }
                    Reply::Ok { .. } | Reply::Status(_) => {}
                }
            }
        }
        // No socket to talk to: signal the supervisor, identified by PID and start time.
        // It exited between the look at its lock and the request: nothing left to ask.
        Err(_) if watched.is_empty() && !pidfile::supervisor_alive(h.state_dir)? => {}
        Err(e) => {
            let Some((pid, fd)) = watched.first() else {
                return Err(e.hint("the supervisor holds its lock but cannot be identified; check the state directory"));
            };
            eprintln!(
                "{name}: control socket unavailable ({e}); sending SIGTERM to supervisor pid {pid}"
            );
            crate::sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(fd), Signal::SIGTERM).map_err(
                |e| Error::io(format!("signal the supervisor of {name} (pid {pid})"), &e),
            )?;
        }
    }
    // The same bound for its exit once it has answered. A supervisor seen to exit has
    // released its lock with its last descriptor (the kernel closes them before it tells
    // its pidfd); only one that could not be watched is waited for by its lock.
    let seen = !watched.is_empty();
    if !process::wait_exits(watched, limit).is_empty() {
        return Err(Error::unable(
            format!("stop {name}"),
            format!("its supervisor is still running after {}s", limit.as_secs()),
        )
        .hint(format!("see {}", h.log_dir.join("baton.log").display())));
    }
    if !seen && pidfile::supervisor_alive(h.state_dir)? {
        pidfile::wait_supervisor_gone(h.state_dir)?;
    }
    println!("{name} stopped");
    Ok(true)
}

/// Stop, then start; as `start`, a fresh supervisor's "ready" ends the process.
pub fn restart(spec: &Spec) -> Result<()> {
    preflight(spec)?;
    let _lock = pidfile::lock_commands(&spec.state_dir)?;
    stop_locked(spec.into(), || {})?;
    start_locked(spec, Last::Yes)
}

/// Restart only if running; a stopped service stays stopped.
pub fn try_restart(spec: &Spec) -> Result<()> {
    ensure_state_dir(&spec.state_dir)?;
    if !pidfile::supervisor_alive(&spec.state_dir)? {
        println!("{} is not running; not restarting it", spec.name);
        return Ok(());
    }
    restart(spec)
}

/// Delivers the reload signal to the running service.
pub fn reload(spec: &Spec) -> Result<()> {
    simple_request(spec, Request::Reload)
}

/// `reexec`: the supervisor replaces itself with the baton binary on disk; the answer comes
/// from the new image, with both versions.
pub fn reexec(spec: &Spec) -> Result<()> {
    let name = &spec.name;
    if !pidfile::supervisor_alive(&spec.state_dir)? {
        return Err(Error::unable(
            format!("reexec {name}"),
            format!("{name} is not running: `baton start {name}` runs this baton"),
        )
        .code(Action::NotRunning));
    }
    ask_as(
        spec,
        &Request::Reexec,
        &format!("reexec {name}"),
        REEXEC_TIMEOUT,
    )
}

/// Bounds a reexec: the new binary's check, the exec and the new image's first answer.
const REEXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// `signal NAME SIG`: the service's main process gets `sig` (its own reload, a thread dump...).
pub fn signal(spec: &Spec, sig: Signal) -> Result<()> {
    simple_request(
        spec,
        Request::Signal {
            signal: sig.as_str().to_string(),
        },
    )
}

/// Asks the supervisor to reopen its log files (after an external logrotate).
pub fn reopen_logs(spec: &Spec) -> Result<()> {
    simple_request(spec, Request::Reopen)
}

fn simple_request(spec: &Spec, request: Request) -> Result<()> {
    let name = &spec.name;
    let what = request.name();
    if !pidfile::supervisor_alive(&spec.state_dir).unwrap_or(false) {
        return Err(
            Error::unable(format!("{what} {name}"), format!("{name} is not running"))
                .code(Action::NotRunning),
        );
    }
    ask_as(spec, &request, &format!("{what} {name}"), STATUS_TIMEOUT)
}

/// Sends `request`; errors read "unable to LABEL: ...". Progress lines go to stderr as they come.
pub fn ask_as(spec: &Spec, request: &Request, label: &str, timeout: Duration) -> Result<()> {
    let mut answered = false;
    let mut replies = control::request(&spec.socket, request, Some(timeout))?;
    while let Some(reply) = replies.next() {
        match reply? {
            Reply::Ok { message } => {
                println!("{message}");
                answered = true;
            }
            Reply::Error { message, code } => {
                // A supervisor of another baton that does not know the request: say which
                // versions differ and what moves it to this one.
                let message =
                    control::version_skew(replies.peer.as_ref(), request, &spec.name, &message)
                        .unwrap_or(message);
                return Err(Error::unable(label, message).code(code));
            }
            Reply::Progress { message } => eprintln!("{message}"),
            Reply::Status(_) => {}
        }
    }
    if !answered {
        return Err(Error::unable(
            label,
            "the supervisor closed the connection without a reply",
        ));
    }
    Ok(())
}

/// Reports the service's state and returns the LSB status code.
pub fn status(spec: &Spec, json: bool) -> Result<Status> {
    let (report, code) = report(spec);
    if json {
        println!("{}", status_json(&report, code));
    } else {
        print!("{}", render(&report));
    }
    Ok(code)
}

/// The `status --json` object: the report plus its LSB `status_code`.
pub fn status_json(report: &Report, code: Status) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap_or_default();
    v["status_code"] = serde_json::Value::from(code.code());
    v
}

/// The service's state, asked of its supervisor (bounded by [`STATUS_TIMEOUT`]) or read post mortem.
pub fn report(spec: &Spec) -> (Report, Status) {
    match pidfile::supervisor_alive(&spec.state_dir) {
        Ok(true) => {
            let reply = control::request(&spec.socket, &Request::Status, Some(STATUS_TIMEOUT))
                .and_then(|mut r| {
                    r.next()
                        .unwrap_or_else(|| Err(Error::unable("read status", "no reply")))
                });
            match reply {
                Ok(Reply::Status(r)) => {
                    let r = *r;
                    let code = if r.ready {
                        Status::Running
                    } else {
                        Status::DeadWithPidfile
                    };
                    // Before the first ready there is no PID file: LSB says "not running".
                    let code = if code == Status::DeadWithPidfile && !spec.pidfile.exists() {
                        Status::NotRunning
                    } else {
                        code
                    };
                    (r, code)
                }
                Ok(other) => (
                    unknown(spec, format!("unexpected reply {other:?}")),
                    Status::Unknown,
                ),
                // It may have exited between the lock test and the request.
                Err(_) if !pidfile::supervisor_alive(&spec.state_dir).unwrap_or(true) => {
                    post_mortem(spec)
                }
                Err(e) => (unknown(spec, e.to_string()), Status::Unknown),
            }
        }
        Ok(false) => post_mortem(spec),
        Err(e) => (unknown(spec, e.to_string()), Status::Unknown),
    }
}

fn unknown(spec: &Spec, why: String) -> Report {
    Report {
        name: spec.name.clone(),
        state: "unknown".into(),
        problem: Some(why),
        ..Report::default()
    }
}

/// The truth when no supervisor holds the lock: "dead" if a PID file remains, else "not running".
fn post_mortem(spec: &Spec) -> (Report, Status) {
    let state = pidfile::read_state(&spec.state_dir);
    let orphans: Vec<i32> = crate::tracking::orphans(&state)
        .0
        .iter()
        .map(|p| p.pid.as_raw())
        .collect();
    let pid_in_file = pidfile::read(&spec.pidfile);
    let mut report = Report {
        name: spec.name.clone(),
        last_exit: state.last_exit.clone(),
        processes: orphans.clone(),
        ..Report::default()
    };
    let mut problems = Vec::new();
    if let Some(f) = &state.failure {
        problems.push(f.clone());
    }
    if !orphans.is_empty() {
        problems.push(format!(
            "the supervisor died but {} service process(es) still run (pid {}); `baton stop` or `baton start` kills them",
            orphans.len(),
            join(&orphans)
        ));
    }
    let code = match pid_in_file {
        Ok(Some(pid)) => {
            report.state = "dead".into();
            report.supervisor_pid = Some(pid.as_raw());
            problems.insert(
                0,
                format!(
                    "PID file {} names pid {pid}, which is not a running baton supervisor",
                    spec.pidfile.display()
                ),
            );
            Status::DeadWithPidfile
        }
        // Killed before the service was ready: no PID file, yet its processes run on
        // unsupervised. "Dead" (1) tells an init script something needs cleaning up.
        Ok(None) if !orphans.is_empty() => {
            report.state = "dead".into();
            Status::DeadWithPidfile
        }
        Ok(None) => {
            report.state = if state.state == "failed" {
                "failed".into()
            } else {
                "not running".into()
            };
            Status::NotRunning
        }
        Err(e) => {
            report.state = "unknown".into();
            problems.push(e.to_string());
            Status::Unknown
        }
    };
    if !problems.is_empty() {
        report.problem = Some(problems.join("; "));
    }
    (report, code)
}

fn render(r: &Report) -> String {
    let mut out = format!("{}: {}", r.name, r.state);
    if let Some(s) = r.next_try_in_secs {
        out.push_str(&format!(", attempt {}", r.attempt));
        {
            out.push_str(&format!(
                ", next try in {}",
                crate::config::human(Duration::from_secs_f64(s))
            ));
        }
    }
    out.push('\n');
    let mut facts = Vec::new();
    match (r.supervisor_pid, &r.supervisor_version) {
        (Some(p), Some(v)) => facts.push(format!("supervisor pid {p} (baton {v})")),
        (Some(p), None) => facts.push(format!("supervisor pid {p}")),
        _ => {}
    }
    if let Some(p) = r.service_pid {
        facts.push(format!("service pid {p}"));
    }
    if let Some(p) = r.port {
        facts.push(format!("port {p}"));
    }
    if let Some(rel) = &r.release {
        facts.push(format!("release {rel}"));
    }
    if let Some(u) = r.uptime_secs {
        facts.push(format!(
            "up {}",
            crate::config::human(Duration::from_secs(u as u64))
        ));
    }
    if r.supervisor_pid.is_some() && r.state != "dead" {
        facts.push(format!("restarts {}", r.restarts));
    }
    if !facts.is_empty() {
        out.push_str(&format!("  {}\n", facts.join(", ")));
    }
    if r.processes.len() > 1 {
        out.push_str(&format!("  processes: {}\n", join(&r.processes)));
    }
    if let Some(h) = &r.handoff {
        out.push_str(&format!(
            "  {} to release {} in progress: {} for {:.1}s{}{}\n",
            h.kind,
            h.release,
            h.step,
            h.elapsed_secs,
            h.pid
                .map_or(String::new(), |p| format!(", other instance pid {p}")),
            h.port.map_or(String::new(), |p| format!(" port {p}")),
        ));
    }
    if let Some(l) = &r.registry_lease {
        out.push_str(&format!("  registry: {l}\n"));
    }
    if let Some(w) = &r.waiting_for {
        out.push_str(&format!("  waiting for: {w}\n"));
    }
    if let Some(e) = &r.last_exit {
        out.push_str(&format!("  last exit: {e}\n"));
    }
    if let Some(p) = &r.problem {
        out.push_str(&format!("  problem: {p}\n"));
    }
    out
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kills what a dead supervisor left behind and removes its stale PID file; true if there was anything.
fn clean_up_dead(h: Handle<'_>) -> bool {
    let name = h.name;
    let state: StateFile = pidfile::read_state(h.state_dir);
    let (orphans, _) = crate::tracking::orphans(&state);
    if !orphans.is_empty() {
        eprintln!(
            "{name}: killing {} process(es) left by a supervisor that died: pid {}",
            orphans.len(),
            join(&orphans.iter().map(|p| p.pid.as_raw()).collect::<Vec<_>>())
        );
        // Wait for them: they may still hold the port the new instance needs.
        let survivors = crate::tracking::kill_orphans(&state, Duration::from_secs(5));
        if !survivors.is_empty() {
            eprintln!(
                "{name}: still alive after SIGKILL: pid {}",
                join(&survivors.iter().map(|p| p.as_raw()).collect::<Vec<_>>())
            );
        }
    }
    // Only the lock proves a supervisor; with it free, whatever the PID file names is not ours.
    let stale = match pidfile::read(h.pidfile) {
        Ok(Some(pid)) => {
            eprintln!(
                "{name}: removing stale PID file {} (pid {pid} is not a running supervisor)",
                h.pidfile.display()
            );
            true
        }
        Ok(None) => false,
        Err(e) => {
            eprintln!("{name}: removing unreadable PID file: {e}");
            true
        }
    };
    if stale {
        pidfile::remove(h.pidfile);
    }
    stale || !orphans.is_empty()
}

/// Everything `start` (or `run`) can check before supervising, so errors reach the terminal directly.
pub fn preflight(spec: &Spec) -> Result<()> {
    let me = Uid::effective();
    if let Some(a) = &spec.account {
        if !me.is_root() && me != a.uid {
            return Err(Error::unable(
                format!("start {} as user {}", spec.name, a.name),
                format!("only root can switch users and baton runs as uid {me}"),
            )
            .code(Action::NoPrivilege)
            .hint("run it as root (sudo), or remove `user` from the config"));
        }
    }
    let host = crate::config::host::check(spec);
    if !host.errors.is_empty() {
        return Err(Error::unable(
            format!("start {} with {}", spec.name, spec.file.display()),
            host.errors.join("; "),
        )
        .code(Action::NotConfigured)
        .hint(format!(
            "`baton check {}` says the same; nothing was started",
            spec.name
        )));
    }
    let dirs = [
        ("PID file directory", spec.pidfile.parent()),
        ("control socket directory", spec.socket.parent()),
        ("state directory", Some(spec.state_dir.as_path())),
        ("log directory", Some(spec.log.dir.as_path())),
    ];
    for (what, dir) in dirs {
        if let Some(dir) = dir {
            make_dir(what, dir)?;
        }
    }
    Ok(())
}

fn ensure_state_dir(state_dir: &Path) -> Result<()> {
    // There and writable, as after every first start: one system call, not make_dir's
    // three (mkdir, stat, access), before a stop's request.
    if nix::unistd::access(state_dir, AccessFlags::W_OK).is_ok() {
        return Ok(());
    }
    make_dir("state directory", state_dir)
}

fn make_dir(what: &str, dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| {
            Error::io(format!("create {what} {}", dir.display()), &e)
                .hint("run as root or point the config elsewhere")
        })?;
    nix::unistd::access(dir, AccessFlags::W_OK).map_err(|e| {
        Error::errno(format!("write to {what} {}", dir.display()), e)
            .hint("run as root, fix its owner, or point the config elsewhere")
    })
}

fn check_port_free(spec: &Spec) -> Result<()> {
    let PortSpec::Fixed(port) = spec.port else {
        return Ok(());
    };
    // Where the service will answer: its probes' addresses, and loopback where they and a
    // proxy look by default. A listener on one of those, or on the wildcard (which takes
    // every address), is in the way; one on another address (127.0.0.2, a public IP) is not.
    let mut ours: Vec<std::net::IpAddr> = spec.ready.hosts.iter().map(|(_, ip)| *ip).collect();
    ours.push(std::net::Ipv4Addr::LOCALHOST.into());
    ours.push(std::net::Ipv6Addr::LOCALHOST.into());
    let taken = crate::sockets::all().into_iter().any(|s| {
        s.state == crate::sockets::LISTEN
            && s.local.1 == port
            && (s.local.0.is_unspecified() || ours.contains(&s.local.0))
    });
    if taken {
        return Err(Error::unable(
            format!("start {}", spec.name),
            format!("port {port} is already in use"),
        )
        .hint(format!(
            "find the owner with `ss -ltnp sport = :{port}`, or change [port] in {}",
            spec.file.display()
        )));
    }
    Ok(())
}
