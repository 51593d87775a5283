//! `baton reexec` from the loop's side: whether it may happen, the record the next image
//! reads, the exec, and the next image taking the loop over (`__resume`).

use super::carry;
use super::instance::Instance;
use super::requests::reread;
use super::setup::{assemble, open_output, rules_of, signals, Parts};
use super::state::{Machine, Phase};
use super::Supervisor;
use crate::config::Spec;
use crate::control::{Conn, Reply, Server};
use crate::daemon::Reporter;
use crate::error::{Error, Result};
use crate::logs::{Pipe, StreamKind};
use crate::pidfile;
use crate::process;
use crate::tracking::{self, Tracker};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// How long a new binary may take to say whether it can take over.
const REEXEC_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse(message: String) -> Reply {
    Reply::Error {
        message,
        code: crate::exit::Action::Generic,
    }
}

/// Whether the loop can be handed to the binary at [`Supervisor::exe`] now: its version
/// line, or the refusal (nothing changed).
pub fn check(sup: &Supervisor) -> std::result::Result<String, Reply> {
    let name = &sup.spec.name;
    if let Some(h) = &sup.handoff {
        return Err(refuse(format!(
            "a {} is in progress ({name} to release {}, step {}): reexec once it has finished",
            h.machine.kind.name(),
            h.machine.release,
            h.machine.step_name()
        )));
    }
    if sup.routing.running() {
        return Err(refuse(format!(
            "traffic is being switched to the restarted {name}: reexec once it is routed"
        )));
    }
    if sup.instance.is_none() || !matches!(sup.machine.phase, Phase::Ready { .. }) {
        return Err(refuse(format!(
            "{name} is {}: reexec needs it ready (or `baton restart {name}`)",
            sup.machine.name(),
        )));
    }
    // The new image reads the config on disk: what it cannot take must not have changed.
    reread(&sup.spec)?;
    check_binary(&sup.exe).map_err(|why| {
        refuse(format!(
            "unable to reexec {name} onto {}: {why}\nthe supervisor (baton {}) carries on",
            sup.exe.display(),
            crate::control::VERSION
        ))
    })
}

/// What the next image needs to carry on, with client `conn` to answer; None without a
/// serving instance.
pub fn record(sup: &Supervisor, conn: usize) -> Option<carry::Carried> {
    let inst = sup.instance.as_ref()?;
    let uptime = match sup.machine.phase {
        Phase::Ready { since, .. } => since.elapsed(),
        _ => Duration::ZERO,
    };
    Some(carry::Carried {
        format: carry::FORMAT,
        baton: crate::control::VERSION.to_string(),
        exe: sup.exe.clone(),
        foreground: sup.foreground,
        lock: sup.lock.raw_fd(),
        control: sup.clients.server_fd(),
        notify: sup.notify.as_ref().map(|(s, _)| carry::raw(s)),
        listener: sup.listener.as_ref().map(carry::raw),
        client: sup.clients.raw_fd(conn),
        service: carry::Service {
            pid: inst.pid.as_raw(),
            starttime: inst.starttime,
            port: inst.port,
            release: inst.release.clone(),
            cgroup: inst
                .cgroup
                .as_ref()
                .and_then(|l| l.path())
                .map(std::path::Path::to_path_buf),
            mark: inst.mark.clone(),
        },
        pipes: sup
            .pipes
            .iter()
            .map(|p| carry::CarriedPipe {
                fd: p.as_fd().as_raw_fd(),
                stdout: p.kind == StreamKind::Stdout,
                owner: p.owner.as_raw(),
                partial: p.partial().to_vec(),
            })
            .collect(),
        restarts: sup.machine.restarts,
        uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
        cgroup: sup.tracker.cgroup_path().map(std::path::Path::to_path_buf),
        unrouted: sup.routing.unrouted.clone(),
        lease: sup.lease.as_ref().and_then(crate::lease::Keeper::id),
    })
}

/// Replaces this image with `exe` (of `version`), handing it `record`; `tell` gives the
/// client the line saying so. Returns only if the exec failed, having changed nothing.
pub fn exec(
    record: &carry::Carried,
    spec: &Spec,
    version: &str,
    tell: impl FnOnce(&Reply),
) -> Reply {
    let exe = &record.exe;
    let (memfd, back) = match record
        .to_memfd()
        .and_then(|m| Ok((m, carry::Fallback::prepare()?)))
    {
        Ok(fds) => fds,
        Err(e) => return refuse(e.to_string()),
    };
    let mut fds = record.fds();
    fds.extend([memfd.as_raw_fd(), back.as_raw_fd()]);
    let kept: std::result::Result<Vec<()>, Error> = fds
        .iter()
        .map(|&fd| carry::keep_across_exec(fd, true))
        .collect();
    let line = format!(
        "re-executing {} ({version}); the service (pid {}) keeps running",
        exe.display(),
        record.service.pid
    );
    tracing::info!("{line}");
    tell(&Reply::Progress { message: line });
    let failed = match kept {
        Err(e) => e.to_string(),
        Ok(_) => carry::exec_next(
            exe,
            &spec.file,
            &spec.name,
            memfd.as_raw_fd(),
            back.as_raw_fd(),
        )
        .to_string(),
    };
    // Still this image: nothing was handed over. Nothing of ours may leak into children.
    for &fd in &fds {
        let _ = carry::keep_across_exec(fd, false);
    }
    tracing::error!("unable to reexec {}: {failed}", exe.display());
    refuse(format!(
        "unable to execute {}: {failed}\nthe supervisor (baton {}) carries on",
        exe.display(),
        crate::control::VERSION
    ))
}

/// `__resume`: loads the config (`load`), reads the record the previous image left (see
/// [`carry`]), opens the event log (`events` is told whether the supervisor runs in the
/// foreground); the supervisor to carry on. If any of that fails, the previous image runs again.
pub fn resume_from_env(
    load: impl FnOnce() -> Result<Spec>,
    events: impl FnOnce(bool, &crate::config::LogSpec) -> Result<crate::logs::EventLog>,
) -> Result<Supervisor> {
    let back = carry::Fallback::from_env();
    let fell_back = carry::fell_back();
    let ready = (|| -> Result<_> {
        let spec = load()?;
        let carried = carry::Carried::from_env()?.ok_or_else(|| {
            Error::unable(
                "resume supervising",
                format!(
                    "no {} record: `__resume` is run by `baton reexec` only",
                    carry::ENV
                ),
            )
            .code(crate::exit::Action::BadArgs)
        })?;
        carried.check_open()?;
        let events = events(carried.foreground, &spec.log)?;
        Ok((spec, carried, events))
    })();
    let (spec, carried, events) = carry::or_fall_back(ready, back.as_ref())?;
    resume(spec, carried, events, fell_back, back)
}

/// `__reexec-check FORMAT`: this binary's version line if it reads records of `format`.
pub fn reexec_check(format: u32) -> Result<()> {
    if format != carry::FORMAT {
        return Err(Error::unable(
            "take over the supervisor",
            format!(
                "it writes reexec format {format}; baton {} reads format {}",
                crate::control::VERSION,
                carry::FORMAT
            ),
        ));
    }
    println!(
        "baton {} (reexec format {})",
        crate::control::VERSION,
        carry::FORMAT
    );
    Ok(())
}

/// The supervisor after `baton reexec`: this process's previous image left the service,
/// its pipes and every socket open, and described them in `c`.
fn resume(
    spec: Spec,
    c: carry::Carried,
    events: crate::logs::EventLog,
    fell_back: Option<String>,
    back: Option<carry::Fallback>,
) -> Result<Supervisor> {
    // What can fail comes before any descriptor is adopted: they must cross a fallback exec.
    let prepared = (|| -> Result<_> {
        let tracker = Tracker::resumed(c.cgroup.as_deref()).map_err(|e| {
            Error::io(
                format!(
                    "reopen the service's cgroup {}",
                    c.cgroup
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display()
                ),
                &e,
            )
        })?;
        Ok((signals()?, open_output(&spec)?, tracker))
    })();
    let (sigfd, output, tracker) = carry::or_fall_back(prepared, back.as_ref())?;
    if let Some(back) = back {
        back.release();
    }
    let lock = pidfile::SupervisorLock::inherited(carry::adopt(c.lock)?)?;
    let server = Server::inherited(carry::adopt(c.control)?)?;
    let notify = match c.notify {
        Some(fd) => {
            let sock = UnixDatagram::from(carry::adopt(fd)?);
            // The image before may be a baton that did not ask for senders' credentials.
            super::setup::pass_credentials(&sock)?;
            Some((sock, spec.state_dir.join("notify.sock")))
        }
        None => None,
    };
    let listener = c.listener.map(carry::adopt).transpose()?;
    let mut pipes = Vec::new();
    for p in &c.pipes {
        let kind = if p.stdout {
            StreamKind::Stdout
        } else {
            StreamKind::Stderr
        };
        pipes.push(Pipe::inherited(
            carry::adopt(p.fd)?,
            kind,
            Pid::from_raw(p.owner),
            p.partial.clone(),
        ));
    }
    let client = c.client.map(carry::adopt).transpose()?;
    let now = Instant::now();
    let pid = Pid::from_raw(c.service.pid);
    let since = now
        .checked_sub(Duration::from_millis(c.uptime_ms))
        .unwrap_or(now);
    let machine = Machine::resumed(rules_of(&spec), pid, since, c.restarts);
    tracking::arm(&spec, &tracker);
    tracking::set_leader(Some((pid, c.service.starttime)));
    let mut sup = assemble(
        spec,
        machine,
        Parts {
            sigfd,
            output,
            server,
            notify,
            listener,
            reporter: Reporter::none(),
            systemd: None,
            events,
            lock,
            foreground: c.foreground,
            tracker,
            lease: c.lease,
        },
    );
    sup.exe = c.exe.clone();
    sup.pipes = pipes;
    sup.routing.unrouted = c.unrouted.clone();
    sup.instance = Some(Instance {
        pid,
        starttime: c.service.starttime,
        port: c.service.port,
        release: c.service.release.clone(),
        probes: None,
        discovering: false,
        cgroup: c.service.cgroup.as_deref().and_then(|p| {
            crate::cgroup::Leaf::reopen(p)
                .map_err(|e| tracing::warn!("unable to reopen {}: {e}", p.display()))
                .ok()
        }),
        mark: c.service.mark.clone(),
    });
    let message = format!(
        "{}: supervisor pid {} re-executed: baton {} -> baton {}; service pid {pid} kept",
        sup.spec.name,
        nix::unistd::getpid(),
        c.baton,
        crate::control::VERSION
    );
    let reply = match fell_back {
        None => {
            tracing::info!("{message}");
            Reply::Ok { message }
        }
        Some(why) => carry::fell_back_reply(&sup.spec.name, &sup.exe, &why, pid),
    };
    if let Some(fd) = client {
        let mut conn = Conn::inherited(fd, now);
        conn.send(&reply);
        conn.finish();
        sup.clients.adopt(conn);
    }
    sup.dirty = true;
    Ok(sup)
}

/// Asks `exe` whether it is a baton that reads this reexec format; its version line if so.
fn check_binary(exe: &std::path::Path) -> std::result::Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(exe)
        .arg("__reexec-check")
        .arg(carry::FORMAT.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("unable to run it: {e}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    let watched: Vec<_> = crate::sys::pidfd_open(pid)
        .ok()
        .map(|fd| (pid, fd))
        .into_iter()
        .collect();
    if !process::wait_exits(watched, REEXEC_CHECK_TIMEOUT).is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "`{} __reexec-check` did not answer within {}: it is not baton",
            exe.display(),
            crate::config::human(REEXEC_CHECK_TIMEOUT)
        ));
    }
    let status = child
        .wait()
        .map_err(|e| format!("unable to wait for it: {e}"))?;
    // It has exited; a descendant it left holding the pipes must not stall the loop.
    fn read_now(r: Option<impl Read + AsRawFd>) -> String {
        let Some(r) = r else {
            return String::new();
        };
        let _ = nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let mut bytes = Vec::new();
        let _ = r.take(4096).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
    let out = read_now(child.stdout.take());
    let err = read_now(child.stderr.take());
    let first = out.lines().next().unwrap_or("").trim().to_string();
    if status.success() && first.starts_with("baton ") {
        return Ok(first);
    }
    let said = err.lines().next().unwrap_or("").trim().to_string();
    Err(if status.success() || said.is_empty() {
        format!("it is not baton (`__reexec-check` {status}, said {first:?})")
    } else {
        format!("it cannot take over: {said}")
    })
}
