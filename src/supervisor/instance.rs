//! The instances the loop keeps: the serving one, and during a handoff the new and the old.

use super::handoff::{Handoff, Kind};
use super::worker::{Side, WorkerOutput};
use crate::cgroup::Leaf;
use crate::config::{PortSpec, Spec, Vars};
use crate::control::HandoffReport;
use crate::logs::{Drained, Output, Pipe, StreamKind};
use crate::probe::Probes;
use crate::tracking::Tracker;
use nix::unistd::Pid;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a port-0 service's listening socket is looked for in /proc while it starts.
pub const DISCOVER_EVERY: Duration = Duration::from_millis(20);

/// One running instance of the service.
pub struct Instance {
    /// Its leader (and process group).
    pub pid: Pid,
    /// The leader's start time, for its identity.
    pub starttime: u64,
    /// Its own port, if it has one.
    pub port: Option<u16>,
    /// The release it runs from, when the service has releases.
    pub release: Option<String>,
    /// Present while starting.
    pub probes: Option<Probes>,
    /// Port mode discover: the probes wait until the port it listens on is known.
    pub discovering: bool,
    /// Its own cgroup below the service's, when tracking by cgroup: its whole tree.
    pub cgroup: Option<Leaf>,
    /// Without a cgroup, the [`INSTANCE_ENV`] value its processes are started with.
    pub mark: Option<String>,
}

/// Without cgroups, what tells one instance's processes from the other's during a handoff:
/// the subreaper inherits an orphan without its ancestry, but not without its environment.
pub const INSTANCE_ENV: &str = "BATON_INSTANCE";

impl Instance {
    /// Whether `pid` is one of this instance's processes: its leader, in its process group,
    /// or in its cgroup. For attributing a notify message by its sender.
    pub fn owns(&self, pid: Pid) -> bool {
        pid == self.pid
            || nix::unistd::getpgid(Some(pid)).is_ok_and(|g| g == self.pid)
            || self
                .cgroup
                .as_ref()
                .and_then(Leaf::path)
                .is_some_and(|at| crate::cgroup::contains(at, pid))
    }

    /// Whether every readiness check has passed.
    pub fn passed(&self) -> bool {
        !self.discovering && self.probes.as_ref().is_some_and(Probes::passed)
    }

    /// Whether a READY=1 is all it still needs to have passed every check.
    pub fn waits_only_for_notify(&self) -> bool {
        !self.discovering
            && self
                .probes
                .as_ref()
                .is_some_and(Probes::wait_only_for_notify)
    }

    /// Sends `sig` to this instance's whole tree: its cgroup's every process (SIGKILL by
    /// `cgroup.kill`), else its process group.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        match &self.cgroup {
            Some(leaf) => {
                leaf.signal(sig);
            }
            None => {
                crate::process::signal_group(self.pid, sig);
                for p in self.strays() {
                    let ours = |s: &crate::process::ProcStat| {
                        s.starttime == p.starttime && self.marks(s.pid)
                    };
                    if let Some(fd) = crate::process::open_verified(p.pid, ours) {
                        crate::process::signal_pidfd(&fd, p.pid, sig);
                    }
                }
            }
        }
    }

    /// Whether nothing of this instance is left: its cgroup is empty, else its group and
    /// whatever carries its mark.
    pub fn gone(&self) -> bool {
        match &self.cgroup {
            Some(leaf) => !leaf.populated(),
            None => !crate::process::group_alive(self.pid) && self.strays().is_empty(),
        }
    }

    /// Without a cgroup: the service's processes outside this instance's group that carry its mark.
    fn strays(&self) -> Vec<crate::process::ProcStat> {
        if self.mark.is_none() {
            return Vec::new();
        }
        crate::process::service_tree(&[])
            .into_iter()
            .filter(|p| p.pgrp != self.pid && self.marks(p.pid))
            .collect()
    }

    fn marks(&self, pid: Pid) -> bool {
        self.mark
            .as_deref()
            .is_some_and(|m| crate::process::has_env(pid, INSTANCE_ENV, m.as_bytes()))
    }

    /// This instance as the switch worker's arguments name it.
    pub fn side(&self) -> Side<'_> {
        Side {
            pid: self.pid,
            port: self.port,
            release: self.release.as_deref(),
        }
    }

    /// Port mode discover: once the instance listens, its port is known and the probes can run.
    pub fn discover(&mut self, spec: &Spec, now: Instant) {
        if !self.discovering {
            return;
        }
        let Some(&port) = crate::process::listening_ports(self.pid).first() else {
            return;
        };
        let dir = spec
            .release
            .as_ref()
            .zip(self.release.as_ref())
            .map(|(r, id)| crate::deploy::release::dir(&r.root, id));
        let vars = Vars {
            port: Some(port),
            release: dir,
        };
        tracing::info!("pid {} listens on port {port}", self.pid);
        self.port = Some(port);
        self.discovering = false;
        match Probes::new(spec, &vars, now) {
            Ok(p) => self.probes = Some(p),
            Err(e) => tracing::error!("readiness probe: {e}"),
        }
    }
}

/// What an instance is started with besides its config and release.
pub struct Launch<'a> {
    /// The listening socket every instance inherits ([listen]).
    pub listener: Option<RawFd>,
    /// The notify socket's path, for a `notify` probe.
    pub notify: Option<&'a Path>,
    /// Which processes are the service's: each instance gets a cgroup of its own in it.
    pub tracker: &'a Tracker,
}

/// Spawns one instance of the service from `release`, on a port none of `taken` uses, in
/// `leaf` (made ahead of time) or a cgroup made now; the instance and its output pipes.
pub fn launch(
    spec: &Spec,
    release: Option<String>,
    taken: &[u16],
    with: &Launch<'_>,
    leaf: Option<Leaf>,
    pipes: Option<crate::process::OutputPipes>,
) -> std::result::Result<(Instance, [Pipe; 2]), String> {
    let release_dir = match (&spec.release, &release) {
        (Some(r), Some(id)) => Some(crate::deploy::release::dir(&r.root, id)),
        (Some(r), None) => {
            return Err(format!(
                "no release to run: {} does not exist; install one with `baton deploy {} --release DIR`",
                r.root.join("current").display(),
                spec.name
            ))
        }
        (None, _) => None,
    };
    let port = match with.listener {
        Some(_) => spec.listen.as_ref().map(|l| l.address.port()),
        None => pick_port(&spec.port, taken)?,
    };
    let vars = Vars {
        port,
        release: release_dir,
    };
    let discovering = spec.port == PortSpec::Discover && with.listener.is_none();
    let now = Instant::now();
    let probes = if discovering {
        None
    } else {
        Some(Probes::new(spec, &vars, now).map_err(|e| format!("readiness probe: {e}"))?)
    };
    let cgroup = leaf.or_else(|| with.tracker.instance());
    // Without a cgroup of its own, the instance is told from the other by its mark.
    let marked;
    let (spec, mark) = if cgroup.is_none() && with.tracker.cgroup_path().is_none() {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mark = format!(
            "{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut s = spec.clone();
        s.env.push((INSTANCE_ENV.to_string(), mark.clone()));
        marked = s;
        (&marked, Some(mark))
    } else {
        (spec, None)
    };
    let into = cgroup
        .as_ref()
        .and_then(Leaf::spawn_into)
        .or(with.tracker.spawn_into());
    let sp = crate::process::spawn(spec, &vars, with.notify, with.listener, into, pipes)
        .map_err(|e| e.to_string())?;
    tracing::info!("spawned {} (pid {})", sp.argv.join(" "), sp.pid);
    let pipes = [
        Pipe::new(sp.stdout, StreamKind::Stdout, sp.pid),
        Pipe::new(sp.stderr, StreamKind::Stderr, sp.pid),
    ];
    let inst = Instance {
        pid: sp.pid,
        starttime: sp.starttime,
        port,
        release,
        probes,
        discovering,
        cgroup,
        mark,
    };
    Ok((inst, pipes))
}

/// Which instance something belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The serving instance (the instance machine's).
    Main,
    /// The one a handoff is starting.
    Candidate,
}

/// A handoff in progress: its pure machine and what the loop holds for it.
pub struct Handing {
    /// Where the handoff is.
    pub machine: Handoff,
    /// The new instance, until it is promoted (or gone).
    pub candidate: Option<Instance>,
    /// The previous instance, once the new one serves.
    pub old: Option<Instance>,
    /// The switch worker, while it runs: its PID and output.
    pub worker: Option<(Pid, WorkerOutput)>,
    /// The config as it was on disk when the handoff began: the new instance runs from it,
    /// and the supervisor takes it once that instance serves.
    pub spec: Box<crate::config::Spec>,
    /// Who asked for it, as the client said: revisions.log names the deployer, not whoever
    /// started the supervisor ("" from an older client: the supervisor's operator then).
    pub by: String,
}

impl Handing {
    /// The status view.
    pub fn report(&self, now: Instant) -> HandoffReport {
        let inst = self.candidate.as_ref().or(self.old.as_ref());
        HandoffReport {
            kind: self.machine.kind.name().to_string(),
            step: self.machine.step_name().to_string(),
            release: self.machine.release.clone(),
            // The instance that is not serving: the new one, or after promotion the old one.
            pid: inst.map(|i| i.pid.as_raw()),
            port: inst.and_then(|i| i.port),
            elapsed_secs: now.duration_since(self.machine.started()).as_secs_f64(),
        }
    }
}

impl Handing {
    /// The old instance is gone and `serving` serves: point `current` at the release, log it,
    /// prune; the answer to the handoff's client.
    pub fn commit(&self, spec: &Spec, serving: Option<&Instance>, took: &str) -> String {
        let (kind, release) = (self.machine.kind, self.machine.release.as_str());
        let previous = self.old.as_ref().and_then(|o| o.release.as_deref());
        let mut message = format!(
            "{} now runs release {release} (pid {}{}); {took}",
            spec.name,
            serving.map_or(0, |i| i.pid.as_raw()),
            serving
                .and_then(|i| i.port)
                .map_or(String::new(), |p| format!(", port {p}")),
        );
        if let Some(r) = &spec.release {
            let who = Some(self.by.clone())
                .filter(|b| !b.is_empty())
                .or_else(crate::host::operator)
                .unwrap_or_else(|| "root".into());
            let what = match kind {
                Kind::Rollback => format!("{who} rolled back to release {release}"),
                Kind::Deploy => format!(
                    "{who} deployed as release {release} (previous {})",
                    previous.unwrap_or("none")
                ),
            };
            let mut protect = vec![release];
            protect.extend(previous);
            for note in crate::deploy::release::commit(r, release, &what, &protect) {
                message.push('\n');
                message.push_str(&note);
            }
        }
        message
    }
}

/// Reads `pipe` into the log files, and its lines to whichever instance writes it while that
/// one waits for a line: the serving instance's log probe, or a handoff's new instance (whose
/// lines also go to its own tail, for a failure report). `alone`: no other pipe writes the
/// same file (see [`Pipe::drain`]).
pub fn drain(
    pipe: &mut Pipe,
    output: &mut Output,
    serving: Option<&mut Instance>,
    handoff: Option<&mut Handing>,
    alone: bool,
) -> Drained {
    let owner = pipe.owner;
    if let Some(h) = handoff.filter(|h| h.candidate.as_ref().is_some_and(|c| c.pid == owner)) {
        let mut lines = Vec::new();
        let r = pipe.drain(
            output,
            Some(&mut |_, line| lines.push(line.to_string())),
            alone,
        );
        for line in &lines {
            h.machine.remember(line);
            if let Some(p) = h.candidate.as_mut().and_then(|c| c.probes.as_mut()) {
                p.on_line(line);
            }
        }
        return r;
    }
    // Lines are looked at one by one only while a log probe waits for its line.
    let probes = serving
        .filter(|i| i.pid == owner)
        .and_then(|i| i.probes.as_mut())
        .filter(|p| p.watches_output());
    match probes {
        Some(p) => pipe.drain(output, Some(&mut |_, line| p.on_line(line)), alone),
        None => pipe.drain(output, None, alone),
    }
}

/// Picks the port for a new instance: none of `taken`, and free right now.
pub fn pick_port(spec: &PortSpec, taken: &[u16]) -> std::result::Result<Option<u16>, String> {
    match *spec {
        PortSpec::None | PortSpec::Discover => Ok(None),
        PortSpec::Fixed(p) => Ok(Some(p)),
        PortSpec::Auto { from, to } => {
            let span = u32::from(to - from) + 1;
            let start = std::process::id() % span;
            (0..span)
                .map(|i| from + ((start + i) % span) as u16)
                .filter(|p| !taken.contains(p))
                .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
                .map(Some)
                .ok_or_else(|| format!("no free port in {from}..={to}"))
        }
    }
}
