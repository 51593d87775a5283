//! The supervisor loop: one thread, one poll(2), every event fed to the state machine.
//!
//! Signals arrive on a signalfd, child output on pipes, commands on the control
//! socket, readiness on probe sockets and the notify socket. The poll timeout is
//! the nearest deadline, and there is none while the service runs quietly, so an
//! idle supervisor never wakes up.

mod carry;
mod handoff;
mod instance;
mod ladder;
pub mod state;
mod worker;

use handoff::{Effect as HEffect, Handoff, Input as HInput, Kind, Who};
use instance::{pick_port, Handing, Instance, Which, DISCOVER_EVERY};
use worker::WorkerOutput;

use crate::config::{PortSpec, Spec, Vars};
use crate::control::{Accepted, Awaits, Conn, Envelope, Incoming, Reply, Report, Request, Server};
use crate::daemon::Reporter;
use crate::error::{Error, Result};
use crate::logs::{Drained, Output, Pipe, StreamKind};
use crate::pidfile::{self, Identity, StateFile};
use crate::probe::Probes;
use crate::process;
use crate::tracking::{self, Tracker};
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use state::{Effect, Exit, Input, Machine, Outcome, Phase, Rules, Stop};
use std::collections::VecDeque;
use std::mem::discriminant;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// strerror(EADDRINUSE), in what a service prints when its bind fails (Java, Python, C alike).
const ADDRESS_IN_USE: &str = "Address already in use";

/// How often a waiting `stop` hears what it is waiting for.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Everything the loop owns.
struct Supervisor {
    spec: Spec,
    sigfd: SignalFd,
    machine: Machine,
    instance: Option<Instance>,
    pipes: Vec<Pipe>,
    output: Output,
    server: Server,
    conns: Vec<Conn>,
    notify: Option<(UnixDatagram, PathBuf)>,
    reporter: Reporter,
    /// Tell systemd READY=1 (under `run` with NOTIFY_SOCKET set).
    systemd: Option<String>,
    events: crate::logs::EventLog,
    next_progress: Option<Instant>,
    /// Work happened since the loop last slept with nothing scheduled.
    worked: bool,
    /// The state file is behind the machine; written once before the loop sleeps.
    dirty: bool,
    rng: u64,
    queue: VecDeque<Input>,
    /// The deploy or rollback in progress: its machine and its two instances.
    handoff: Option<Handing>,
    /// Accepting control connections waits until then (out of file descriptors).
    accept_paused_until: Option<Instant>,
    /// Inputs for the handoff machine not yet stepped.
    handoff_queue: VecDeque<HInput>,
    /// A `__switch` routing a (re)started instance: its PID, output and partial line.
    publisher: Option<(Pid, WorkerOutput)>,
    /// Ready, but a waiting `start` hears so only once traffic is routed; true on the first start.
    routing: Option<bool>,
    /// Why the serving instance is not routed (its publish failed), for `status`.
    unrouted: Option<String>,
    /// What the running publisher said went wrong, before it exited.
    publish_error: Option<String>,
    /// The first start failed after ready (it could not be routed): told once all is stopped.
    start_failure: Option<String>,
    /// The listening socket handed to every instance ([listen]), bound for the supervisor's life.
    listener: Option<OwnedFd>,
    /// The etcd lease the registry keys live on (`[registry] ttl`), kept by its own thread.
    lease: Option<crate::lease::Keeper>,
    /// The supervisor lock, held for the supervisor's life (and across a reexec).
    lock: pidfile::SupervisorLock,
    /// The path this baton was started from: `reexec` runs what is there now.
    exe: PathBuf,
    /// Supervising in the foreground (`baton run`).
    foreground: bool,
    /// Which processes are the service's: its cgroup, or our subreaper tree.
    tracker: Tracker,
}

/// How the supervisor process was started.
pub struct Options {
    /// Reports ready/failed to a waiting `baton start`.
    pub reporter: Reporter,
    /// The systemd notify socket to tell READY=1, under `run`.
    pub systemd_notify: Option<String>,
    /// Where the supervisor's own events go.
    pub events: crate::logs::EventLog,
    /// Supervising in the foreground (`baton run`): a reexec keeps it so.
    pub foreground: bool,
}

/// Resolved once at start: after a package upgrade replaced the file, /proc/self/exe names
/// the deleted old image, while this path holds the new binary.
fn own_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => PathBuf::from(p),
        None => exe,
    }
}

/// Supervises the service until it is stopped or given up on; returns the process exit code.
pub fn run(spec: Spec, opts: Options) -> Result<i32> {
    let Options {
        mut reporter,
        systemd_notify,
        events,
        foreground,
    } = opts;
    let Some(lock) = pidfile::lock_supervisor(&spec)? else {
        reporter.already_running();
        tracing::info!("another supervisor already runs {}", spec.name);
        return Ok(0);
    };
    match setup(spec, reporter, systemd_notify, events, lock, foreground) {
        Ok(mut sup) => sup.run(),
        Err((e, mut reporter)) => {
            reporter.failed(e.exit_code(), &e.to_string());
            Err(e)
        }
    }
}

fn setup(
    spec: Spec,
    reporter: Reporter,
    systemd: Option<String>,
    events: crate::logs::EventLog,
    lock: pidfile::SupervisorLock,
    foreground: bool,
) -> std::result::Result<Supervisor, (Error, Reporter)> {
    let r = (|| {
        let sigfd = signals()?;
        // Before the first child: every helper we start carries the mark, the service never.
        // (A reexec keeps the mark: the environment crosses the exec.)
        process::mark_helpers();
        let output = open_output(&spec)?;
        let server = Server::bind(&spec.socket)?;
        let notify = if spec
            .ready
            .probes
            .contains(&crate::config::ProbeSpec::Notify)
        {
            let path = spec.state_dir.join("notify.sock");
            // By name in a directory held open: remove and chown act on the entry, never a planted link's target.
            let dir = crate::files::Dir::open(&spec.state_dir)
                .map_err(|e| Error::io(format!("open {}", spec.state_dir.display()), &e))?;
            let _ = dir.remove(std::ffi::OsStr::new("notify.sock"));
            let sock = UnixDatagram::bind(&path)
                .map_err(|e| Error::io(format!("create notify socket {}", path.display()), &e))?;
            sock.set_nonblocking(true)
                .map_err(|e| Error::io("configure notify socket", &e))?;
            if let Some(a) = &spec.account {
                dir.chown(std::ffi::OsStr::new("notify.sock"), a.uid, a.gid)
                    .map_err(|e| Error::io(format!("hand {} to {}", path.display(), a.name), &e))?;
            }
            Some((sock, path))
        } else {
            None
        };
        let listener = match &spec.listen {
            Some(l) => Some(bind_listener(l.address)?),
            None => None,
        };
        Ok((sigfd, output, server, notify, listener))
    })();
    let (sigfd, output, server, notify, listener) = match r {
        Ok(v) => v,
        Err(e) => return Err((e, reporter)),
    };
    let tracker = Tracker::setup(&spec);
    tracking::arm(&spec, &tracker);
    tracing::info!(
        "tracking {} by {}{}",
        spec.name,
        tracker.kind(),
        tracker
            .cgroup_path()
            .map_or(String::new(), |p| format!(" {}", p.display()))
    );
    let rules = rules_of(&spec);
    Ok(assemble(
        spec,
        Machine::new(rules),
        Parts {
            sigfd,
            output,
            server,
            notify,
            listener,
            reporter,
            systemd,
            events,
            lock,
            foreground,
            tracker,
        },
    ))
}

/// What the loop needs beyond the config and the machine, however it was set up.
struct Parts {
    sigfd: SignalFd,
    output: Output,
    server: Server,
    notify: Option<(UnixDatagram, PathBuf)>,
    listener: Option<OwnedFd>,
    reporter: Reporter,
    systemd: Option<String>,
    events: crate::logs::EventLog,
    lock: pidfile::SupervisorLock,
    foreground: bool,
    tracker: Tracker,
}

fn assemble(spec: Spec, machine: Machine, p: Parts) -> Supervisor {
    let Parts {
        sigfd,
        output,
        server,
        notify,
        listener,
        reporter,
        systemd,
        events,
        lock,
        foreground,
        tracker,
    } = p;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id());
    let lease = crate::lease::Keeper::start(&spec);
    Supervisor {
        sigfd,
        machine,
        spec,
        instance: None,
        pipes: Vec::new(),
        output,
        server,
        conns: Vec::new(),
        notify,
        reporter,
        systemd,
        events,
        next_progress: None,
        worked: true,
        dirty: false,
        rng: seed | 1,
        queue: VecDeque::new(),
        handoff: None,
        handoff_queue: VecDeque::new(),
        accept_paused_until: None,
        publisher: None,
        routing: None,
        unrouted: None,
        publish_error: None,
        start_failure: None,
        listener,
        lease,
        lock,
        exe: own_path(),
        foreground,
        tracker,
    }
}

/// Blocks the signals the loop reads and returns the signalfd they arrive on; makes this
/// process the subreaper of its descendants.
fn signals() -> Result<SignalFd> {
    // Descendants that daemonize (double fork, setsid) are re-parented to us, not to init,
    // so a stop can find and reap every one of them without cgroups.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::errno("become a child subreaper", e))?;
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| Error::errno("block signals", e))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::errno("create signalfd", e))
}

fn open_output(spec: &Spec) -> Result<Output> {
    Output::open(&spec.log)
        .map_err(|e| Error::io(format!("open log files in {}", spec.log.dir.display()), &e))
}

/// What a polled descriptor belongs to.
#[derive(Clone, Copy)]
enum Source {
    Signals,
    Control,
    Conn(usize),
    Notify,
    Pipe(usize),
    Probe(Which, usize),
    Worker,
    Publisher,
    Cgroup,
}

impl Supervisor {
    fn run(&mut self) -> Result<i32> {
        tracing::info!(
            "supervising {} (config {})",
            self.spec.name,
            self.spec.file.display()
        );
        self.feed(Input::Start);
        self.run_loop()
    }

    fn run_loop(&mut self) -> Result<i32> {
        while !matches!(self.machine.phase, Phase::Done(_)) {
            self.wait_and_dispatch()?;
        }
        Ok(self.finish())
    }

    /// One poll(2) and the handling of whatever it reported.
    fn wait_and_dispatch(&mut self) -> Result<()> {
        let now = Instant::now();
        let deadline = [
            self.machine.deadline(),
            self.instance
                .as_ref()
                .and_then(|i| i.probes.as_ref())
                .and_then(Probes::next_deadline),
            self.next_progress,
            self.accept_paused_until,
            self.conns.iter().filter_map(Conn::idle_deadline).min(),
            self.handoff.as_ref().and_then(|h| h.machine.deadline()),
            self.handoff
                .as_ref()
                .and_then(|h| h.candidate.as_ref())
                .and_then(|i| i.probes.as_ref())
                .and_then(Probes::next_deadline),
            // Port discovery looks in /proc only while an instance starts.
            [
                self.instance.as_ref(),
                self.handoff.as_ref().and_then(|h| h.candidate.as_ref()),
            ]
            .into_iter()
            .flatten()
            .any(|i| i.discovering)
            .then(|| now + DISCOVER_EVERY),
        ]
        .into_iter()
        .flatten()
        .min();
        // ppoll's nanosecond timeout: a 1 ms backoff sleeps 1 ms, not poll's rounded-up 2.
        let timeout = deadline.map(|d| TimeSpec::from_duration(d.saturating_duration_since(now)));

        let ready: Vec<(Source, PollFlags)> = {
            let mut fds = vec![PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
            let mut sources = vec![Source::Signals];
            // Out of file descriptors, accepting waits a moment: the socket would stay readable.
            if self.accept_paused_until.is_none() {
                fds.push(PollFd::new(self.server.as_fd(), PollFlags::POLLIN));
                sources.push(Source::Control);
            }
            for (i, c) in self.conns.iter().enumerate() {
                let events = if c.wants_write() {
                    PollFlags::POLLIN | PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(c.as_fd(), events));
                sources.push(Source::Conn(i));
            }
            if let Some((sock, _)) = &self.notify {
                fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
                sources.push(Source::Notify);
            }
            for (i, p) in self.pipes.iter().enumerate() {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                sources.push(Source::Pipe(i));
            }
            if let Some(probes) = self.instance.as_ref().and_then(|i| i.probes.as_ref()) {
                for interest in probes.interests() {
                    fds.push(PollFd::new(interest.fd, interest.events));
                    sources.push(Source::Probe(Which::Main, interest.index));
                }
            }
            if let Some(h) = &self.handoff {
                if let Some(probes) = h.candidate.as_ref().and_then(|i| i.probes.as_ref()) {
                    for interest in probes.interests() {
                        fds.push(PollFd::new(interest.fd, interest.events));
                        sources.push(Source::Probe(Which::Candidate, interest.index));
                    }
                }
                if let Some(fd) = h.worker.as_ref().and_then(|(_, out)| out.as_fd()) {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    sources.push(Source::Worker);
                }
            }
            if let Some(fd) = self.publisher.as_ref().and_then(|(_, out)| out.as_fd()) {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                sources.push(Source::Publisher);
            }
            // The kernel raises POLLPRI only when `populated` flips: no wakeup while idle.
            if let Some(fd) = self.tracker.events_fd() {
                fds.push(PollFd::new(fd, PollFlags::POLLPRI));
                sources.push(Source::Cgroup);
            }
            // Going to sleep with nothing scheduled: give back what start-up and the last
            // burst of work left mapped. Last thing before poll(2), so little runs after it.
            if std::mem::take(&mut self.dirty) {
                self.persist();
            }
            if timeout.is_none() && std::mem::take(&mut self.worked) {
                crate::sys::shed_idle_memory();
            }
            match nix::poll::ppoll(&mut fds, timeout, None) {
                Ok(_) => fds
                    .iter()
                    .zip(sources)
                    .filter_map(|(fd, src)| {
                        fd.revents().filter(|r| !r.is_empty()).map(|r| (src, r))
                    })
                    .collect(),
                Err(nix::errno::Errno::EINTR) => Vec::new(),
                Err(e) => return Err(Error::errno("wait for events", e)),
            }
        };

        self.worked = true;
        let now = Instant::now();
        let mut closed_pipes = Vec::new();
        for (src, flags) in ready {
            match src {
                Source::Signals => self.on_signals(),
                Source::Control => {
                    let (new, how) = self.server.accept(self.conns.len(), now);
                    self.conns.extend(new);
                    if how == Accepted::OutOfFiles {
                        self.accept_paused_until = Some(now + crate::control::ACCEPT_PAUSE);
                    }
                }
                Source::Conn(i) => {
                    if flags.contains(PollFlags::POLLOUT) {
                        if let Some(c) = self.conns.get_mut(i) {
                            c.flush(now);
                        }
                    }
                    if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    {
                        match self.conns.get_mut(i).map(|c| c.read(now)) {
                            Some(Incoming::Request(r)) => {
                                if !self.on_request(i, r) {
                                    if let Some(c) = self.conns.get_mut(i) {
                                        c.finish();
                                    }
                                }
                            }
                            Some(Incoming::Closed) => {
                                if let Some(c) = self.conns.get_mut(i) {
                                    c.drop_now();
                                }
                            }
                            Some(Incoming::Nothing) | None => {}
                        }
                    }
                }
                Source::Notify => self.on_notify(),
                Source::Pipe(i) => {
                    if let Drained::Closed = self.drain_pipe(i) {
                        closed_pipes.push(i);
                    }
                }
                Source::Probe(which, i) => {
                    if let Some(p) = self.instance_mut(which).and_then(|i| i.probes.as_mut()) {
                        p.on_fd(i, now);
                    }
                }
                Source::Worker => self.on_worker_output(),
                Source::Publisher => {
                    // The error line also matters at exit; it is printed, then seen again there.
                    if let Some(e) = self.on_publisher_output() {
                        self.publish_error = Some(e);
                    }
                }
                Source::Cgroup => self.check_tree_empty(),
            }
        }
        for i in closed_pipes.into_iter().rev() {
            self.pipes.swap_remove(i);
        }
        self.on_time(Instant::now());
        self.conns.retain(|c| !c.done());
        Ok(())
    }

    fn instance_mut(&mut self, which: Which) -> Option<&mut Instance> {
        match which {
            Which::Main => self.instance.as_mut(),
            Which::Candidate => self.handoff.as_mut().and_then(|h| h.candidate.as_mut()),
        }
    }

    fn on_time(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
        }
        for c in self.conns.iter_mut() {
            if c.idle_deadline().is_some_and(|d| d <= now) {
                tracing::warn!("dropped an idle control connection");
                c.drop_now();
            }
        }
        for which in [Which::Main, Which::Candidate] {
            self.discover(which, now);
            if let Some(p) = self.instance_mut(which).and_then(|i| i.probes.as_mut()) {
                p.on_timer(now);
            }
        }
        self.check_probes();
        if let Some(h) = self.handoff.as_ref() {
            if h.machine.deadline().is_some_and(|d| d <= now) {
                let waiting_for = h
                    .candidate
                    .as_ref()
                    .map(|c| match &c.probes {
                        Some(p) => p.pending(),
                        None => "the port it listens on (port.mode = discover)".into(),
                    })
                    .unwrap_or_default();
                self.feed_handoff(HInput::Tick { waiting_for });
            }
        }
        if self.machine.deadline().is_some_and(|d| d <= now) {
            self.feed(Input::Tick);
        }
        if self.next_progress.is_some_and(|t| t <= now) {
            self.progress();
        }
    }

    fn check_probes(&mut self) {
        let passed = self.instance.as_ref().is_some_and(Instance::passed);
        if passed && matches!(self.machine.phase, Phase::Starting { .. }) {
            self.feed(Input::ProbesPassed);
        }
        self.check_candidate();
    }

    /// Steps the machine with `input` and performs effects until no input is pending.
    fn feed(&mut self, input: Input) {
        self.queue.push_back(input);
        while let Some(input) = self.queue.pop_front() {
            let before = (self.machine.name(), discriminant(&self.machine.phase));
            let jitter = self.jitter();
            let effects = self.machine.step(input.clone(), Instant::now(), jitter);
            let after = self.machine.name();
            // By phase, not by name: Idle and Starting both read "starting", yet only
            // Starting has a service whose identity a post-mortem needs.
            let changed = before != (after, discriminant(&self.machine.phase));
            let before = before.0;
            if changed {
                tracing::info!(
                    "{}: {before} -> {after} ({})",
                    self.spec.name,
                    describe(&input)
                );
            }
            // Stopping is transient: what a post-mortem needs is already on disk.
            self.dirty |= changed && !matches!(self.machine.phase, Phase::Stopping(_));
            let went_down =
                changed && matches!(self.machine.phase, Phase::Backoff { .. } | Phase::Done(_));
            if !matches!(self.machine.phase, Phase::Starting { .. }) {
                if let Some(probes) = self.instance.as_mut().and_then(|i| i.probes.as_mut()) {
                    probes.abort();
                }
            }
            // The state file is written when the loop next sleeps: a waiting `start` hears
            // "ready" first, and a burst of transitions costs one write.
            for effect in effects {
                self.perform(effect);
            }
            if went_down {
                // Written before anyone hears of the failure, so `status` right after agrees.
                self.dirty = false;
                self.persist();
                self.start_failed(after);
            }
        }
    }

    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::Spawn => self.spawn(),
            Effect::SignalTree(sig) => {
                let pgid = self.instance.as_ref().map(|i| i.pid);
                let others = self.signal_service(sig);
                let msg = format!(
                    "sent {sig} to process group {}{}",
                    pgid.map_or("-".into(), |p| p.to_string()),
                    if others == 0 {
                        String::new()
                    } else {
                        format!(" and {others} other service processes")
                    }
                );
                tracing::info!("{msg}");
                self.broadcast(&msg);
                if self.conns.iter().any(|c| c.awaits == Awaits::Stopped) {
                    self.next_progress = Some(Instant::now() + PROGRESS_EVERY);
                }
            }
            Effect::Dump => {
                if let (Some(sig), Some(inst)) = (self.spec.stop.dump_signal, &self.instance) {
                    tracing::info!("sent {sig} to process group {} for a thread dump", inst.pid);
                    process::signal_group(inst.pid, sig);
                    self.broadcast(&format!(
                        "still running: sent {sig} for a thread dump (see stdout.log)"
                    ));
                }
            }
            Effect::Ready { first } => self.on_ready(first),
            Effect::CheckTree => self.reap(),
        }
    }

    fn spawn(&mut self) {
        // A restart keeps the release it ran; the first start takes `current`.
        let release = match self.instance.as_ref() {
            Some(i) => i.release.clone(),
            None => crate::deploy::release::current(&self.spec),
        };
        let spec = self.spec.clone();
        match self.launch(&spec, release, &[]) {
            Ok(inst) => {
                let pid = inst.pid;
                let passed = inst.passed();
                self.instance = Some(inst);
                self.queue.push_back(Input::Spawned(pid));
                if passed {
                    self.queue.push_back(Input::ProbesPassed);
                }
            }
            Err(e) => self.queue.push_back(Input::SpawnFailed(e)),
        }
    }

    /// Spawns one instance of the service from `release`, on a port none of `taken` uses.
    fn launch(
        &mut self,
        spec: &Spec,
        release: Option<String>,
        taken: &[u16],
    ) -> std::result::Result<Instance, String> {
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
        let port = match &self.listener {
            Some(_) => spec.listen.as_ref().map(|l| l.address.port()),
            None => pick_port(&spec.port, taken)?,
        };
        let vars = Vars {
            port,
            release: release_dir,
        };
        let discovering = spec.port == PortSpec::Discover && self.listener.is_none();
        let now = Instant::now();
        let probes = if discovering {
            None
        } else {
            Some(Probes::new(spec, &vars, now).map_err(|e| format!("readiness probe: {e}"))?)
        };
        let notify = self.notify.as_ref().map(|(_, p)| p.clone());
        let listener = self.listener.as_ref().map(|l| l.as_raw_fd());
        let sp = process::spawn(
            spec,
            &vars,
            notify.as_deref(),
            listener,
            self.tracker.spawn_into(),
        )
        .map_err(|e| e.to_string())?;
        if self.handoff.is_none() {
            tracking::set_leader(Some((sp.pid, sp.starttime)));
        }
        tracing::info!("spawned {} (pid {})", sp.argv.join(" "), sp.pid);
        self.pipes
            .push(Pipe::new(sp.stdout, StreamKind::Stdout, sp.pid));
        self.pipes
            .push(Pipe::new(sp.stderr, StreamKind::Stderr, sp.pid));
        Ok(Instance {
            pid: sp.pid,
            starttime: sp.starttime,
            port,
            release,
            probes,
            discovering,
        })
    }

    /// Port mode discover: once the instance listens, its port is known and the probes can run.
    fn discover(&mut self, which: Which, now: Instant) {
        let (spec, inst) = match which {
            Which::Main => (&self.spec, self.instance.as_mut()),
            Which::Candidate => match self.handoff.as_mut() {
                Some(h) => (&*h.spec, h.candidate.as_mut()),
                None => return,
            },
        };
        let Some(inst) = inst.filter(|i| i.discovering) else {
            return;
        };
        let Some(&port) = process::listening_ports(inst.pid).first() else {
            return;
        };
        let dir = spec
            .release
            .as_ref()
            .zip(inst.release.as_ref())
            .map(|(r, id)| crate::deploy::release::dir(&r.root, id));
        let vars = Vars {
            port: Some(port),
            release: dir,
        };
        tracing::info!("pid {} listens on port {port}", inst.pid);
        inst.port = Some(port);
        inst.discovering = false;
        match Probes::new(spec, &vars, now) {
            Ok(p) => inst.probes = Some(p),
            Err(e) => tracing::error!("readiness probe: {e}"),
        }
    }

    fn on_ready(&mut self, first: bool) {
        if let Some(inst) = self.instance.as_mut() {
            inst.probes = None;
        }
        // A first start that has not been routed yet is still the first start.
        let first = first | self.routing.take().unwrap_or(false);
        if self.publish() {
            // Ready and routed: a waiting `start` hears when the switch has finished.
            self.routing = Some(first);
            return;
        }
        self.ready_and_routed(first);
    }

    /// The instance serves, proxy and registry point at it: answer `start`, write the PID file.
    fn ready_and_routed(&mut self, first: bool) {
        self.answer_start(Reply::Ok {
            message: format!("{} is ready", self.spec.name),
        });
        if !first {
            return;
        }
        let me = nix::unistd::getpid();
        if let Err(e) = pidfile::write(&self.spec.pidfile, me) {
            tracing::error!("{e}");
            self.reporter.failed(e.exit_code(), &e.to_string());
            self.queue.push_back(Input::StopRequested);
            return;
        }
        self.reporter.ready(me);
        if let Some(addr) = self.systemd.take() {
            if let Err(e) = sd_notify(&addr, "READY=1") {
                tracing::warn!("unable to tell systemd READY=1 on {addr}: {e}");
            }
        }
    }

    fn probe_pids(&self) -> Vec<Pid> {
        self.instance
            .as_ref()
            .and_then(|i| i.probes.as_ref())
            .map(Probes::exec_pids)
            .unwrap_or_default()
    }

    fn on_signals(&mut self) {
        let mut got = Vec::new();
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                got.push(sig);
            }
        }
        for sig in got {
            match sig {
                Signal::SIGCHLD => self.reap(),
                Signal::SIGTERM | Signal::SIGINT => {
                    tracing::info!("received {sig}: stopping");
                    self.feed_handoff(HInput::Cancel("the service is being stopped".into()));
                    self.feed(Input::StopRequested);
                }
                Signal::SIGHUP => match self.reload() {
                    Ok(m) => tracing::info!("SIGHUP: {m}"),
                    Err(m) => tracing::warn!("SIGHUP: {m}"),
                },
                Signal::SIGUSR1 => self.reopen(),
                _ => {}
            }
        }
    }

    /// Reaps every exited child, then lets a handoff see what changed.
    fn reap(&mut self) {
        self.reap_children();
        self.feed_handoff(HInput::Reaped);
    }

    /// Reaps every exited child; feeds the leader's exit and, when nothing is left, `TreeEmpty`.
    fn reap_children(&mut self) {
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig)),
                Ok(WaitStatus::StillAlive) => {
                    // Once SIGKILL is in force, a child forked after the last sweep (its parent
                    // was not dead yet) would outlive the stop: sweep again as the tree shrinks.
                    if matches!(
                        self.machine.phase,
                        Phase::Stopping(Stop {
                            ladder: ladder::Ladder { killed: true, .. },
                            ..
                        })
                    ) {
                        self.signal_service(Signal::SIGKILL);
                    }
                    // Baton's helpers (a proxy daemon) may outlive the service: ask the tracker.
                    self.check_tree_empty();
                    return;
                }
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    // ECHILD: not a single descendant is left.
                    self.check_tree_empty();
                    return;
                }
            };
            let now = Instant::now();
            // What it printed just before it went is in its pipes still: read it first, so a
            // failure report carries its last words (poll reports the exit and the data at once).
            self.drain_output_of(pid);
            if self.instance.as_ref().is_some_and(|i| i.pid == pid) {
                tracking::set_leader(None);
                tracing::info!("service (pid {pid}) {exit}");
                self.feed_handoff(HInput::Cancel(format!(
                    "the serving instance (pid {pid}) {exit}"
                )));
                self.feed(Input::LeaderExited(exit));
            } else if let Some(input) = self.handoff_child(pid, exit) {
                self.feed_handoff(input);
            } else if self.publisher.as_ref().is_some_and(|p| p.0 == pid) {
                let said = self.on_publisher_output().or(self.publish_error.take());
                self.publisher = None;
                self.published(exit, said);
                // A handoff waits for it: two writers would race on the registry.
                self.check_candidate();
            } else {
                let code = match exit {
                    Exit::Code(c) => Some(c),
                    Exit::Signal(_) => None,
                };
                let mut probe = false;
                for which in [Which::Main, Which::Candidate] {
                    if let Some(p) = self.instance_mut(which).and_then(|i| i.probes.as_mut()) {
                        probe |= p.on_exit(pid, code, now);
                    }
                }
                if !probe {
                    tracing::debug!("reaped descendant {pid} ({exit})");
                }
                self.check_probes();
            }
        }
    }

    /// Reads whatever `pid`'s pipes hold now; they stay in the poll set until they report closed.
    fn published(&mut self, exit: Exit, said: Option<String>) {
        let outcome = crate::deploy::switch::Outcome::from_code(match exit {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        });
        let routing = self.routing.take();
        if outcome == crate::deploy::switch::Outcome::Switched {
            self.unrouted = None;
            self.dirty = true;
            if let Some(first) = routing {
                self.ready_and_routed(first);
            }
            return;
        }
        let pid = self.instance.as_ref().map_or(0, |i| i.pid.as_raw());
        let why = format!(
            "unable to route traffic to {} (pid {pid}): {}",
            self.spec.name,
            said.unwrap_or_else(|| format!("the switch {exit}"))
        );
        tracing::error!("{why}");
        self.unrouted = Some(why.clone());
        self.dirty = true;
        match routing {
            // `start` means ready and routed: a first start that cannot be routed leaves nothing.
            // `baton start` hears of it once the service is gone (see `finish`).
            Some(true) => {
                self.start_failure = Some(why.clone());
                self.answer_start(Reply::Error {
                    message: why,
                    code: crate::exit::Action::Generic,
                });
                self.feed(Input::StopRequested);
            }
            Some(false) => self.answer_start(Reply::Error {
                message: why,
                code: crate::exit::Action::Generic,
            }),
            None => {}
        }
    }

    fn drain_output_of(&mut self, pid: Pid) {
        for i in 0..self.pipes.len() {
            if self.pipes.get(i).is_some_and(|p| p.owner == pid) {
                // Bounded: a grandchild may hold the pipe open and keep writing.
                for _ in 0..4 {
                    if let Drained::Closed = self.drain_pipe(i) {
                        break;
                    }
                }
            }
        }
    }

    fn drain_pipe(&mut self, i: usize) -> Drained {
        let Some(pipe) = self.pipes.get_mut(i) else {
            return Drained::Closed;
        };
        let owner = pipe.owner;
        // A new instance's lines feed its probes and its own tail (for a failure report).
        if let Some(h) = self
            .handoff
            .as_mut()
            .filter(|h| h.candidate.as_ref().is_some_and(|c| c.pid == owner))
        {
            let mut lines = Vec::new();
            let r = pipe.drain(
                &mut self.output,
                Some(&mut |_, line| lines.push(line.to_string())),
            );
            for line in &lines {
                h.machine.remember(line);
                if let Some(p) = h.candidate.as_mut().and_then(|c| c.probes.as_mut()) {
                    p.on_line(line);
                }
            }
            self.check_probes();
            return r;
        }
        // Lines are looked at one by one only while a log probe waits for its line.
        let probes = self
            .instance
            .as_mut()
            .filter(|i| i.pid == owner)
            .and_then(|i| i.probes.as_mut())
            .filter(|p| p.watches_output());
        let r = match probes {
            Some(p) => pipe.drain(&mut self.output, Some(&mut |_, line| p.on_line(line))),
            None => pipe.drain(&mut self.output, None),
        };
        self.check_probes();
        r
    }

    fn on_notify(&mut self) {
        let Some((sock, _)) = &self.notify else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut messages = Vec::new();
        while let Ok(n) = sock.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        for m in messages {
            tracing::debug!("notify: {}", m.trim());
            // Only a starting instance listens for READY=1; during a handoff that is the new one.
            let which = if self.handoff.as_ref().is_some_and(|h| h.candidate.is_some()) {
                Which::Candidate
            } else {
                Which::Main
            };
            if let Some(p) = self.instance_mut(which).and_then(|i| i.probes.as_mut()) {
                p.on_notify(&m);
            }
        }
        self.check_probes();
    }

    /// Answers one request; returns whether the connection stays open for more than the reply.
    fn on_request(&mut self, i: usize, request: std::result::Result<Envelope, String>) -> bool {
        let request = match request {
            Ok(e) => e.request,
            Err(message) => {
                return self.reply(
                    i,
                    Reply::Error {
                        message,
                        code: crate::exit::Action::BadArgs,
                    },
                )
            }
        };
        let reply = match request {
            Request::Status => Reply::Status(Box::new(self.report())),
            Request::Start => match &self.machine.phase {
                Phase::Ready { .. } => Reply::Ok {
                    message: format!("{} is already running", self.spec.name),
                },
                Phase::Done(_)
                | Phase::Stopping(Stop {
                    then: state::Then::Exit,
                    ..
                }) => Reply::Error {
                    message: format!("{} is {}", self.spec.name, self.machine.name()),
                    code: crate::exit::Action::Generic,
                },
                // Answered when the service is ready, or has failed again (see `feed`).
                _ => {
                    if let Some(c) = self.conns.get_mut(i) {
                        c.awaits = Awaits::Ready;
                    }
                    self.feed(Input::StartNow);
                    return self
                        .conns
                        .get(i)
                        .is_some_and(|c| c.awaits != Awaits::Nothing);
                }
            },
            Request::Deploy { release } | Request::Rollback { release }
                if !crate::deploy::release::valid_id(&release) =>
            {
                Reply::Error {
                    message: format!("{release:?} is not a release ID"),
                    code: crate::exit::Action::BadArgs,
                }
            }
            Request::Deploy { release } => match self.begin_handoff(i, Kind::Deploy, &release) {
                Some(reply) => reply,
                None => return true,
            },
            // The serving release again, from the config on disk (a service without
            // releases hands over all the same; "none" only labels its progress lines).
            Request::Reconfigure => {
                let release = self
                    .instance
                    .as_ref()
                    .and_then(|i| i.release.clone())
                    .unwrap_or_else(|| "none".into());
                match self.begin_handoff(i, Kind::Deploy, &release) {
                    Some(reply) => reply,
                    None => return true,
                }
            }
            Request::Rollback { release } => {
                match self.begin_handoff(i, Kind::Rollback, &release) {
                    Some(reply) => reply,
                    None => return true,
                }
            }
            Request::Stop => {
                self.feed_handoff(HInput::Cancel("the service is being stopped".into()));
                if let Some(c) = self.conns.get_mut(i) {
                    c.awaits = Awaits::Stopped;
                }
                self.feed(Input::StopRequested);
                Reply::Ok {
                    message: format!("stopping {}", self.spec.name),
                }
            }
            Request::Reload => match self.reload() {
                Ok(m) => Reply::Ok { message: m },
                Err(m) => Reply::Error {
                    message: m,
                    code: crate::exit::Action::NotRunning,
                },
            },
            Request::Reopen => {
                // Test-only: a supervisor dying of a bug must take the service down with it.
                if cfg!(debug_assertions) && std::env::var_os("BATON_TEST_PANIC").is_some() {
                    panic!("BATON_TEST_PANIC is set: panicking as the test asked");
                }
                self.reopen();
                Reply::Ok {
                    message: "log files reopened".into(),
                }
            }
            // Returns only if the new image could not be run; it answers this client itself.
            Request::Reexec => self.reexec(i),
            Request::Signal { signal } => match crate::config::units::parse_signal(&signal) {
                Err(e) => Reply::Error {
                    message: e,
                    code: crate::exit::Action::BadArgs,
                },
                Ok(sig) => match (&self.machine.phase, &self.instance) {
                    (Phase::Ready { .. } | Phase::Starting { .. }, Some(inst)) => {
                        process::signal(inst.pid, sig);
                        tracing::info!(
                            "sent {sig} to {} (pid {}) on request",
                            self.spec.name,
                            inst.pid
                        );
                        Reply::Ok {
                            message: format!("sent {sig} to {} (pid {})", self.spec.name, inst.pid),
                        }
                    }
                    _ => Reply::Error {
                        message: format!(
                            "{} is {}: nothing to signal",
                            self.spec.name,
                            self.machine.name()
                        ),
                        code: crate::exit::Action::NotRunning,
                    },
                },
            },
        };
        self.reply(i, reply)
    }

    /// `reexec`: replaces this image with the baton binary at [`Supervisor::exe`], carrying
    /// the service, its pipes and every socket across `execve` (same PID). Returns only on a
    /// refusal or a failed exec, having changed nothing.
    fn reexec(&mut self, conn: usize) -> Reply {
        let refuse = |message: String| Reply::Error {
            message,
            code: crate::exit::Action::Generic,
        };
        if let Some(h) = &self.handoff {
            return refuse(format!(
                "a {} is in progress ({} to release {}, step {}): reexec once it has finished",
                h.machine.kind.name(),
                self.spec.name,
                h.machine.release,
                h.machine.step_name()
            ));
        }
        if self.publisher.is_some() {
            return refuse(format!(
                "traffic is being switched to the restarted {}: reexec once it is routed",
                self.spec.name
            ));
        }
        let Some(inst) = self
            .instance
            .as_ref()
            .filter(|_| matches!(self.machine.phase, Phase::Ready { .. }))
        else {
            return refuse(format!(
                "{} is {}: reexec needs it ready (or `baton restart {}`)",
                self.spec.name,
                self.machine.name(),
                self.spec.name
            ));
        };
        let service = carry::Service {
            pid: inst.pid.as_raw(),
            starttime: inst.starttime,
            port: inst.port,
            release: inst.release.clone(),
        };
        // The new image reads the config on disk: what it cannot take must not have changed.
        if let Err(reply) = reread(&self.spec) {
            return reply;
        }
        let version = match check_binary(&self.exe) {
            Ok(v) => v,
            Err(why) => {
                return refuse(format!(
                    "unable to reexec {} onto {}: {why}\nthe supervisor (baton {}) carries on",
                    self.spec.name,
                    self.exe.display(),
                    crate::control::VERSION
                ))
            }
        };
        // Every whole line read so far reaches its file; what is left stays in the pipes for
        // the new image, and a line begun is carried with them.
        for i in 0..self.pipes.len() {
            self.drain_pipe(i);
        }
        let uptime = match self.machine.phase {
            Phase::Ready { since, .. } => since.elapsed(),
            _ => Duration::ZERO,
        };
        let record = carry::Carried {
            format: carry::FORMAT,
            baton: crate::control::VERSION.to_string(),
            exe: self.exe.clone(),
            foreground: self.foreground,
            lock: self.lock.raw_fd(),
            control: self.server.raw_fd(),
            notify: self.notify.as_ref().map(|(s, _)| carry::raw(s)),
            listener: self.listener.as_ref().map(carry::raw),
            client: self.conns.get(conn).map(|c| c.as_fd().as_raw_fd()),
            service,
            pipes: self
                .pipes
                .iter()
                .map(|p| carry::CarriedPipe {
                    fd: p.as_fd().as_raw_fd(),
                    stdout: p.kind == StreamKind::Stdout,
                    owner: p.owner.as_raw(),
                    partial: p.partial().to_vec(),
                })
                .collect(),
            restarts: self.machine.restarts,
            uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
            cgroup: self.tracker.cgroup_path().map(std::path::Path::to_path_buf),
            unrouted: self.unrouted.clone(),
        };
        let memfd = match record.to_memfd() {
            Ok(fd) => fd,
            Err(e) => return refuse(e.to_string()),
        };
        let mut fds = record.fds();
        fds.push(memfd.as_raw_fd());
        let kept: std::result::Result<Vec<()>, Error> = fds
            .iter()
            .map(|&fd| carry::keep_across_exec(fd, true))
            .collect();
        let line = format!(
            "re-executing {} ({version}); the service (pid {}) keeps running",
            self.exe.display(),
            record.service.pid
        );
        tracing::info!("{line}");
        if let Some(c) = self.conns.get_mut(conn) {
            c.send(&Reply::Progress { message: line });
        }
        let failed = match kept {
            Err(e) => e.to_string(),
            Ok(_) => carry::exec(
                &self.exe,
                &self.spec.file,
                &self.spec.name,
                memfd.as_raw_fd(),
            )
            .to_string(),
        };
        // Still this image: nothing was handed over. Nothing of ours may leak into children.
        for &fd in &fds {
            let _ = carry::keep_across_exec(fd, false);
        }
        tracing::error!("unable to reexec {}: {failed}", self.exe.display());
        refuse(format!(
            "unable to execute {}: {failed}\nthe supervisor (baton {}) carries on",
            self.exe.display(),
            crate::control::VERSION
        ))
    }

    /// Sends `reply` on connection `i`; true if the client waits for more.
    fn reply(&mut self, i: usize, reply: Reply) -> bool {
        match self.conns.get_mut(i) {
            Some(c) => {
                c.send(&reply);
                c.awaits != Awaits::Nothing
            }
            None => false,
        }
    }

    /// `deploy ID` / `rollback ID`: begins a handoff, or says why not.
    fn begin_handoff(&mut self, conn: usize, kind: Kind, release: &str) -> Option<Reply> {
        let refuse = |message: String| {
            Some(Reply::Error {
                message,
                code: crate::exit::Action::Generic,
            })
        };
        if let Some(h) = &self.handoff {
            return refuse(format!(
                "a {} of {} to release {} is already in progress (step {}, for {}); wait for it to finish",
                h.machine.kind.name(),
                self.spec.name,
                h.machine.release,
                h.machine.step_name(),
                crate::config::human(h.machine.started().elapsed())
            ));
        }
        let serving = match (&self.machine.phase, &self.instance) {
            (Phase::Ready { .. }, Some(i)) => (i.pid, i.port),
            // LSB's "not running" (7): an init script's reload of a crash-looping service.
            _ => {
                return Some(Reply::Error {
                    message: format!(
                        "{} is {}: a handoff needs a serving instance to hand over from",
                        self.spec.name,
                        self.machine.name()
                    ),
                    code: crate::exit::Action::NotRunning,
                })
            }
        };
        // Every handoff starts the new instance from the config on disk: a config change is a handoff.
        let next = match reread(&self.spec) {
            Ok(next) => next,
            Err(reply) => return Some(reply),
        };
        if let (PortSpec::Fixed(p), None) = (&next.port, &self.listener) {
            return refuse(format!(
                "port.mode is fixed ({p}): two instances cannot share it; use port.mode = \"auto\" or \"discover\", or a [listen] socket"
            ));
        }
        let rules = handoff::Rules {
            ready_timeout: next.ready.timeout,
            stop_signal: next.stop.signal,
            stop_timeout: next.stop.timeout,
            dump: next.stop.dump_signal.map(|s| (s, next.stop.dump_after)),
            drain_timeout: next.deploy.drain_timeout,
            shared_socket: self.listener.is_some(),
            auto_port: matches!(next.port, PortSpec::Auto { .. }),
        };
        let (machine, effects) = Handoff::begin(kind, release, serving, rules, Instant::now());
        if let Some(c) = self.conns.get_mut(conn) {
            c.awaits = Awaits::Handoff;
        }
        self.handoff = Some(Handing {
            machine,
            candidate: None,
            old: None,
            worker: None,
            spec: Box::new(next),
        });
        for e in effects {
            self.perform_handoff(e);
        }
        self.feed_handoff_queue();
        // The reply comes when the handoff ends; a refusal found by the machine already ended it.
        None
    }

    /// Steps the handoff machine with `input` and performs effects until no input is pending.
    fn feed_handoff(&mut self, input: HInput) {
        if self.handoff.is_none() {
            return;
        }
        self.handoff_queue.push_back(input);
        self.feed_handoff_queue();
    }

    fn feed_handoff_queue(&mut self) {
        while let Some(input) = self.handoff_queue.pop_front() {
            let Some(h) = self.handoff.as_mut() else {
                self.handoff_queue.clear();
                return;
            };
            let effects = h.machine.step(input, Instant::now());
            for e in effects {
                self.perform_handoff(e);
            }
            if self
                .handoff
                .as_ref()
                .is_some_and(|h| h.machine.phase == handoff::Phase::Done)
            {
                self.handoff = None;
                self.handoff_queue.clear();
            }
        }
    }

    fn perform_handoff(&mut self, effect: HEffect) {
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        match effect {
            HEffect::Spawn { avoid } => {
                let spec = (*h.spec).clone();
                let release = spec.release.is_some().then(|| h.machine.release.clone());
                match self.launch(&spec, release, &avoid) {
                    Ok(inst) => {
                        let (pid, port, passed) = (inst.pid, inst.port, inst.passed());
                        if let Some(h) = self.handoff.as_mut() {
                            h.candidate = Some(inst);
                        }
                        self.handoff_queue.push_back(HInput::Spawned { pid, port });
                        if passed {
                            self.handoff_queue.push_back(HInput::Ready);
                        }
                    }
                    Err(e) => self.handoff_queue.push_back(HInput::SpawnFailed(e)),
                }
            }
            HEffect::StopProbes => {
                if let Some(p) = h.candidate.as_mut().and_then(|c| c.probes.as_mut()) {
                    p.abort();
                }
                if let Some(c) = h.candidate.as_mut() {
                    c.probes = None;
                    c.discovering = false;
                }
            }
            HEffect::RunSwitch => {
                fn side(i: &Instance) -> worker::Side<'_> {
                    worker::Side {
                        pid: i.pid,
                        port: i.port,
                        release: i.release.as_deref(),
                    }
                }
                let Some(to) = h.candidate.as_ref().map(side) else {
                    self.handoff_queue
                        .push_back(HInput::SwitchNotRun("the new instance is gone".into()));
                    return;
                };
                let args = worker::args(&to, self.instance.as_ref().map(side).as_ref());
                match worker::spawn(&self.spec.file, &self.spec.name, &args) {
                    Ok((pid, out)) => h.worker = Some((pid, WorkerOutput::new(out))),
                    Err(e) => self
                        .handoff_queue
                        .push_back(HInput::SwitchNotRun(e.to_string())),
                }
            }
            HEffect::Signal(who, sig) => {
                let inst = match who {
                    Who::Candidate => h.candidate.as_ref(),
                    Who::Old => h.old.as_ref(),
                };
                if let Some(i) = inst {
                    process::signal_group(i.pid, sig);
                }
            }
            HEffect::SignalSwitch(sig) => {
                if let Some((pid, _)) = &h.worker {
                    process::signal(*pid, sig);
                }
            }
            HEffect::CountConnections => {
                let left = h
                    .old
                    .as_ref()
                    .and_then(|o| o.port.map(|p| process::established(o.pid, p)))
                    .unwrap_or(0);
                self.handoff_queue.push_back(HInput::Connections(left));
            }
            HEffect::CheckGone(who) => {
                let pid = match who {
                    Who::Candidate => h.candidate.as_ref().map(|c| c.pid),
                    Who::Old => h.old.as_ref().map(|o| o.pid),
                };
                if !pid.is_some_and(process::group_alive) {
                    self.handoff_queue.push_back(HInput::Gone(who));
                }
            }
            HEffect::Promote => {
                let Some(new) = h.candidate.take() else {
                    return;
                };
                let new_pid = new.pid;
                h.old = self.instance.replace(new);
                // From here on the supervisor runs the config the new instance was started from.
                let spec = (*h.spec).clone();
                self.machine
                    .handed_over(new_pid, rules_of(&spec), Instant::now());
                self.spec = spec;
                self.dirty = true;
            }
            HEffect::Tell(line) => {
                tracing::info!("{}: {}", h.machine.kind.name(), line.trim_start());
                self.tell_handoff(&line);
            }
            HEffect::Commit(took) => {
                let message = self.commit_release(&took);
                tracing::info!("{message}");
                self.end_handoff(Reply::Ok { message });
            }
            HEffect::Fail(message) => {
                tracing::error!("{}: {message}", h.machine.kind.name());
                self.end_handoff(Reply::Error {
                    message,
                    code: crate::exit::Action::Generic,
                });
            }
        }
    }

    /// What a reaped child means to the handoff, if it is one of its processes.
    fn handoff_child(&mut self, pid: Pid, exit: Exit) -> Option<HInput> {
        let h = self.handoff.as_mut()?;
        if h.candidate.as_ref().is_some_and(|c| c.pid == pid) {
            tracing::info!("new instance (pid {pid}) {exit}");
            let port_taken = h.machine.said(ADDRESS_IN_USE);
            return Some(HInput::CandidateExited { exit, port_taken });
        }
        if h.worker.as_ref().is_some_and(|(w, _)| *w == pid) {
            self.on_worker_output();
            if let Some(h) = self.handoff.as_mut() {
                h.worker = None;
            }
            let code = match exit {
                Exit::Code(c) => Some(c),
                Exit::Signal(_) => None,
            };
            return Some(HInput::SwitchFinished(
                crate::deploy::switch::Outcome::from_code(code),
            ));
        }
        if h.old.as_ref().is_some_and(|o| o.pid == pid) {
            tracing::info!("old instance (pid {pid}) {exit}");
            return Some(HInput::OldExited);
        }
        None
    }

    /// Called whenever the new instance's checks may have passed.
    fn check_candidate(&mut self) {
        // A background publish still running would race the switch on the registry.
        let ready = self.publisher.is_none()
            && self.handoff.as_ref().is_some_and(|h| {
                h.worker.is_none() && h.candidate.as_ref().is_some_and(Instance::passed)
            });
        if ready {
            self.feed_handoff(HInput::Ready);
        }
    }

    /// Relays what the switch worker printed, line by line; its error line goes to the machine.
    fn on_worker_output(&mut self) {
        let Some((_, out)) = self.handoff.as_mut().and_then(|h| h.worker.as_mut()) else {
            return;
        };
        for line in out.lines() {
            tracing::info!("switch: {line}");
            self.tell_handoff(&format!("      {line}"));
            if let Some(msg) = line.strip_prefix("error: ") {
                self.feed_handoff(HInput::SwitchSaid(msg.to_string()));
            }
        }
    }

    /// Progress for the client waiting on the handoff.
    fn tell_handoff(&mut self, line: &str) {
        let reply = Reply::Progress {
            message: line.to_string(),
        };
        for c in self
            .conns
            .iter_mut()
            .filter(|c| c.awaits == Awaits::Handoff)
        {
            c.send(&reply);
        }
    }

    /// Answers the handoff's client.
    fn end_handoff(&mut self, reply: Reply) {
        for c in self
            .conns
            .iter_mut()
            .filter(|c| c.awaits == Awaits::Handoff)
        {
            c.send(&reply);
            c.awaits = Awaits::Nothing;
            c.finish();
        }
        self.worked = true;
    }

    /// The old instance is gone: point `current` at the release, log it, prune; the answer.
    fn commit_release(&mut self, took: &str) -> String {
        let Some(h) = self.handoff.as_ref() else {
            return String::new();
        };
        let (kind, release) = (h.machine.kind, h.machine.release.clone());
        let previous = h.old.as_ref().and_then(|o| o.release.clone());
        let mut message = format!(
            "{} now runs release {release} (pid {}{}); {took}",
            self.spec.name,
            self.instance.as_ref().map_or(0, |i| i.pid.as_raw()),
            self.instance
                .as_ref()
                .and_then(|i| i.port)
                .map_or(String::new(), |p| format!(", port {p}")),
        );
        if let Some(r) = &self.spec.release {
            if let Err(e) = crate::deploy::release::switch_current(&r.root, &release) {
                message.push_str(&format!(
                    "\nwarning: unable to point {} at {release}: {e}",
                    r.root.join("current").display()
                ));
            }
            let who = crate::host::operator().unwrap_or_else(|| "root".into());
            let what = match kind {
                Kind::Rollback => format!("{who} rolled back to release {release}"),
                Kind::Deploy => format!(
                    "{who} deployed as release {release} (previous {})",
                    previous.as_deref().unwrap_or("none")
                ),
            };
            if let Err(e) = crate::deploy::release::log_revision(&r.root, &what) {
                tracing::warn!("unable to append to revisions.log: {e}");
            }
            let mut protect = vec![release.as_str()];
            if let Some(p) = previous.as_deref() {
                protect.push(p);
            }
            let gone = crate::deploy::release::prune(&r.root, r.keep, &protect);
            if !gone.is_empty() {
                message.push_str(&format!("\nremoved old releases: {}", gone.join(", ")));
            }
        }
        message
    }

    /// Outside a handoff, a (re)started instance has a new PID, maybe a new port: point the
    /// proxy and the registry at it. True if a switch worker now does that (the loop hears
    /// when it exits); false if there was nothing to wait for.
    fn publish(&mut self) -> bool {
        if self.handoff.is_some() {
            return false;
        }
        let Some(inst) = self.instance.as_ref() else {
            return false;
        };
        let proxied = self.spec.proxy != crate::config::ProxySpec::None;
        if !proxied && self.spec.registry.etcd.is_empty() {
            // Only the local file: written here, no process, no wakeup later. A service
            // without releases never deploys and has no registry at all.
            if self.spec.release.is_some() {
                let me = crate::deploy::Backend {
                    pid: inst.pid.as_raw(),
                    port: inst.port,
                    release: inst.release.clone(),
                };
                if let Err(e) = crate::deploy::registry::publish_local(&self.spec, &me, None) {
                    tracing::error!("{e}");
                }
            }
            return false;
        }
        let args = worker::args(
            &worker::Side {
                pid: inst.pid,
                port: inst.port,
                release: inst.release.as_deref(),
            },
            None,
        );
        self.publish_error = None;
        if let Some((old, _)) = self.publisher.take() {
            // Superseded: a newer instance is what must be published.
            process::signal(old, Signal::SIGTERM);
        }
        match worker::spawn(&self.spec.file, &self.spec.name, &args) {
            Ok((pid, out)) => {
                self.publisher = Some((pid, WorkerOutput::new(out)));
                true
            }
            Err(e) => {
                self.unrouted = Some(format!("unable to run the switch: {e}"));
                tracing::error!("unable to publish the new instance: {e}");
                false
            }
        }
    }

    /// Logs what the publisher printed; returns its error line, if it printed one.
    fn on_publisher_output(&mut self) -> Option<String> {
        let (_, out) = self.publisher.as_mut()?;
        let mut error = None;
        for line in out.lines() {
            match line.strip_prefix("error: ") {
                Some(e) => {
                    tracing::error!("publish: {e}");
                    error = Some(e.to_string());
                }
                None => tracing::info!("publish: {line}"),
            }
        }
        error
    }

    fn reload(&mut self) -> std::result::Result<String, String> {
        let sig = self.spec.reload_signal;
        match (&self.machine.phase, &self.instance) {
            (Phase::Ready { .. } | Phase::Starting { .. }, Some(inst)) => {
                process::signal(inst.pid, sig);
                tracing::info!(
                    "sent {sig} to {} (pid {}) to reload",
                    self.spec.name,
                    inst.pid
                );
                Ok(format!(
                    "sent {sig} to {} (pid {})",
                    self.spec.name, inst.pid
                ))
            }
            _ => Err(format!(
                "{} is {}: nothing to reload",
                self.spec.name,
                self.machine.name()
            )),
        }
    }

    fn reopen(&mut self) {
        if let Err(e) = self.output.reopen() {
            tracing::error!(
                "unable to reopen service logs in {}: {e}",
                self.spec.log.dir.display()
            );
        }
        self.events.reopen();
        tracing::info!("reopened log files");
    }

    /// A `start` waiting for readiness learns that the service went down instead.
    fn start_failed(&mut self, state: &str) {
        let why = match (&self.machine.phase, self.machine.last_exit) {
            (Phase::Done(Outcome::Dead(r) | Outcome::Failed(r)), _) => r.clone(),
            (_, Some(e)) => format!("{e} and is {state}"),
            (_, None) => state.to_string(),
        };
        self.answer_start(Reply::Error {
            message: why,
            code: crate::exit::Action::Generic,
        });
    }

    /// Answers every `start` waiting for readiness, then lets those clients go.
    fn answer_start(&mut self, reply: Reply) {
        for c in self.conns.iter_mut().filter(|c| c.awaits == Awaits::Ready) {
            c.send(&reply);
            c.awaits = Awaits::Nothing;
            c.finish();
        }
    }

    /// Tells every waiting `stop` what is happening.
    fn broadcast(&mut self, message: &str) {
        let reply = Reply::Progress {
            message: message.to_string(),
        };
        for c in self
            .conns
            .iter_mut()
            .filter(|c| c.awaits == Awaits::Stopped)
        {
            c.send(&reply);
        }
    }

    fn progress(&mut self) {
        let Phase::Stopping(Stop {
            ladder: ladder::Ladder {
                kill_at, killed, ..
            },
            ..
        }) = self.machine.phase.clone()
        else {
            self.next_progress = None;
            return;
        };
        let mut pids: Vec<i32> = self
            .tracker
            .members(&self.probe_pids())
            .iter()
            .map(|p| p.as_raw())
            .collect();
        pids.sort_unstable();
        let shown: Vec<String> = pids.iter().take(8).map(i32::to_string).collect();
        let left = kill_at.saturating_duration_since(Instant::now());
        let msg = if killed {
            format!(
                "waiting for {} process(es) to die after SIGKILL: pid {}",
                pids.len(),
                shown.join(", ")
            )
        } else {
            format!(
                "waiting for {} process(es) to exit: pid {}; SIGKILL in {}s",
                pids.len(),
                shown.join(", "),
                left.as_secs() + u64::from(left.subsec_nanos() > 0)
            )
        };
        self.broadcast(&msg);
        self.next_progress = Some(Instant::now() + PROGRESS_EVERY);
    }

    fn report(&self) -> Report {
        let now = Instant::now();
        let inst = self.instance.as_ref();
        let mut processes = vec![];
        if inst.is_some() {
            processes = self
                .tracker
                .members(&self.probe_pids())
                .into_iter()
                .map(|p| p.as_raw())
                .collect();
            processes.sort_unstable();
        }
        let service_alive = matches!(
            self.machine.phase,
            Phase::Starting { .. }
                | Phase::Ready { .. }
                | Phase::Stopping(Stop {
                    leader: Some(_),
                    ..
                })
        );
        Report {
            name: self.spec.name.clone(),
            state: self.machine.name().to_string(),
            ready: matches!(self.machine.phase, Phase::Ready { .. }),
            supervisor_pid: Some(nix::unistd::getpid().as_raw()),
            service_pid: inst.filter(|_| service_alive).map(|i| i.pid.as_raw()),
            processes,
            port: inst.and_then(|i| i.port),
            uptime_secs: match self.machine.phase {
                Phase::Ready { since, .. } => Some(now.duration_since(since).as_secs_f64()),
                _ => None,
            },
            restarts: self.machine.restarts,
            attempt: self.machine.attempt,
            next_try_in_secs: match self.machine.phase {
                Phase::Backoff { until } => {
                    Some(until.saturating_duration_since(now).as_secs_f64())
                }
                _ => None,
            },
            last_exit: self.machine.last_exit.map(|e| e.to_string()),
            problem: self.unrouted.clone(),
            waiting_for: inst.and_then(|i| i.probes.as_ref()).map(Probes::pending),
            tail: self.output.tail(10).into_iter().map(cap_line).collect(),
            release: inst.and_then(|i| i.release.clone()),
            handoff: self.handoff.as_ref().map(|h| h.report(now)),
            supervisor_version: Some(crate::control::VERSION.to_string()),
            registry_lease: self.lease.as_ref().map(crate::lease::Keeper::describe),
            tracking: Some(self.tracker.kind().to_string()),
            cgroup: self.tracker.cgroup_path().map(|p| p.display().to_string()),
        }
    }

    fn persist(&self) {
        let service = self
            .instance
            .as_ref()
            .filter(|_| !matches!(self.machine.phase, Phase::Backoff { .. } | Phase::Done(_)))
            .map(|i| Identity {
                pid: i.pid.as_raw(),
                starttime: i.starttime,
            });
        let failure = match &self.machine.phase {
            Phase::Done(Outcome::Dead(r) | Outcome::Failed(r)) => Some(r.clone()),
            _ => self.start_failure.clone(),
        };
        let state = StateFile {
            supervisor: Identity::of(nix::unistd::getpid()),
            service,
            // The service's group lives in our session: with the leader's start time, its identity.
            session: nix::unistd::getsid(None).ok().map(|s| s.as_raw()),
            cgroup: self.tracker.cgroup_path().map(|p| p.to_path_buf()),
            state: self.machine.name().to_string(),
            last_exit: self.machine.last_exit.map(|e| e.to_string()),
            failure,
        };
        pidfile::write_state(&self.spec, &state);
    }

    /// Cleans up after the machine is done; returns the exit code.
    fn finish(&mut self) -> i32 {
        // Drain what the service printed last, so failure reports and log files are complete.
        for i in (0..self.pipes.len()).rev() {
            self.drain_pipe(i);
        }
        let outcome = match &self.machine.phase {
            Phase::Done(o) => o.clone(),
            _ => Outcome::Stopped,
        };
        let code = match &outcome {
            Outcome::Stopped if self.start_failure.is_some() => {
                let why = self.start_failure.clone().unwrap_or_default();
                tracing::error!("{why}; {} stopped", self.spec.name);
                self.dirty = true;
                self.reporter.failed(
                    crate::exit::Action::Generic,
                    &format!(
                        "{why}\n{} was stopped: nothing is left running",
                        self.spec.name
                    ),
                );
                1
            }
            Outcome::Stopped => {
                pidfile::remove(&self.spec.pidfile);
                tracing::info!("{} stopped", self.spec.name);
                0
            }
            Outcome::Dead(why) | Outcome::Failed(why) if self.machine.ever_ready => {
                // The PID file stays: LSB's way to say "dead" (status 1) until start replaces it.
                tracing::error!("{} is down: {why}", self.spec.name);
                1
            }
            Outcome::Dead(why) | Outcome::Failed(why) => {
                let pending = self
                    .instance
                    .as_ref()
                    .and_then(|i| i.probes.as_ref())
                    .map(Probes::pending);
                let mut msg = why.clone();
                if let Some(p) = pending.filter(|p| !p.is_empty()) {
                    msg.push_str(&format!("\nwaiting for: {p}"));
                }
                let tail = self.output.tail(20);
                if !tail.is_empty() {
                    msg.push_str(&format!(
                        "\nlast output (from {}):\n",
                        self.spec.log.dir.display()
                    ));
                    for l in tail {
                        msg.push_str(&format!("  | {l}\n"));
                    }
                }
                tracing::error!("{msg}");
                self.reporter
                    .failed(crate::exit::Action::Generic, msg.trim_end());
                1
            }
        };
        if std::mem::take(&mut self.dirty) {
            self.persist();
        }
        // Its switch still running would publish a service that is gone; what it started stays.
        if let Some((pid, _)) = self.publisher.take() {
            process::signal(pid, Signal::SIGTERM);
        }
        std::mem::replace(&mut self.tracker, Tracker::Subreaper).finish();
        self.broadcast(self.machine.name());
        pidfile::remove(&self.spec.socket);
        if let Some((_, path)) = &self.notify {
            pidfile::remove(path);
        }
        code
    }

    /// Signals the whole service through the tracker; returns how many processes outside
    /// the leader's group got it.
    fn signal_service(&mut self, sig: Signal) -> usize {
        let leader = self.instance.as_ref().map(|i| i.pid);
        let unreaped = matches!(
            self.machine.phase,
            Phase::Stopping(Stop {
                leader: Some(_),
                ..
            })
        );
        self.tracker
            .signal(leader, unreaped, sig, &self.probe_pids())
    }

    /// Feeds `TreeEmpty` once the stop ladder waits for the last process and none is left.
    fn check_tree_empty(&mut self) {
        let waiting = matches!(
            self.machine.phase,
            Phase::Stopping(Stop { leader: None, .. })
        );
        // Reading the cgroup's state re-arms its POLLPRI, so it is read even when nobody
        // waits; the subreaper's tree walk is done only when someone does.
        if !waiting && self.tracker.events_fd().is_none() {
            return;
        }
        if self.tracker.empty(&self.probe_pids()) && waiting {
            self.feed(Input::TreeEmpty);
        }
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64: enough to de-synchronise restarts, no dependency needed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The longest output line a status reply carries: a chatty service cannot make it unbounded.
const TAIL_LINE_MAX: usize = 512;

/// `line`, cut at [`TAIL_LINE_MAX`] bytes (on a character boundary) with what was left out said.
fn cap_line(line: String) -> String {
    if line.len() <= TAIL_LINE_MAX {
        return line;
    }
    let mut end = TAIL_LINE_MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &line[..end], line.len() - end)
}

fn describe(input: &Input) -> String {
    match input {
        Input::Start => "start".into(),
        Input::Spawned(p) => format!("spawned pid {p}"),
        Input::SpawnFailed(e) => format!("spawn failed: {e}"),
        Input::ProbesPassed => "readiness probes passed".into(),
        Input::LeaderExited(e) => format!("service {e}"),
        Input::TreeEmpty => "no process left".into(),
        Input::Tick => "timer".into(),
        Input::StopRequested => "stop requested".into(),
        Input::StartNow => "start requested".into(),
    }
}

/// `__resume`: reads the record the previous image left (see [`carry`]), opens the event log
/// (`events` is told whether the supervisor runs in the foreground) and carries on.
pub fn resume_from_env(
    spec: Spec,
    events: impl FnOnce(bool, &crate::config::LogSpec) -> Result<crate::logs::EventLog>,
) -> Result<i32> {
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
    let events = events(carried.foreground, &spec.log)?;
    resume(spec, carried, events)
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

/// Carries on supervising after `baton reexec`: this process's previous image left the
/// service, its pipes and every socket open, and described them in `c`.
fn resume(spec: Spec, c: carry::Carried, events: crate::logs::EventLog) -> Result<i32> {
    let lock = pidfile::SupervisorLock::inherited(carry::adopt(c.lock)?)?;
    let sigfd = signals()?;
    let output = open_output(&spec)?;
    let server = Server::inherited(carry::adopt(c.control)?)?;
    let notify = match c.notify {
        Some(fd) => Some((
            UnixDatagram::from(carry::adopt(fd)?),
            spec.state_dir.join("notify.sock"),
        )),
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
        },
    );
    sup.exe = c.exe.clone();
    sup.pipes = pipes;
    sup.unrouted = c.unrouted.clone();
    sup.instance = Some(Instance {
        pid,
        starttime: c.service.starttime,
        port: c.service.port,
        release: c.service.release.clone(),
        probes: None,
        discovering: false,
    });
    let message = format!(
        "{}: supervisor pid {} re-executed: baton {} -> baton {}; service pid {pid} kept",
        sup.spec.name,
        nix::unistd::getpid(),
        c.baton,
        crate::control::VERSION
    );
    tracing::info!("{message}");
    if let Some(fd) = client {
        let mut conn = Conn::inherited(fd, now);
        conn.send(&Reply::Ok { message });
        conn.finish();
        sup.conns.push(conn);
    }
    sup.dirty = true;
    // A child that ended while no image listened left a zombie (and maybe a SIGCHLD that
    // the exec kept pending): look now rather than wait for the next signal.
    sup.reap();
    sup.run_loop()
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

/// How long a new binary may take to say whether it can take over.
const REEXEC_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The instance machine's rules from a config.
fn rules_of(spec: &Spec) -> Rules {
    Rules {
        restart: spec.restart.clone(),
        ready_timeout: spec.ready.timeout,
        stop_signal: spec.stop.signal,
        stop_timeout: spec.stop.timeout,
        dump_after: spec.stop.dump_signal.map(|_| spec.stop.dump_after),
    }
}

/// The config on disk now, for a handoff: parsed, checked against the host, and compared
/// with the running one; Err is the refusal (exit 6, every problem named).
fn reread(running: &Spec) -> std::result::Result<Spec, Reply> {
    let refuse = |message: String| Reply::Error {
        message,
        code: crate::exit::Action::NotConfigured,
    };
    let mut next = match crate::config::load(&running.file, &running.name) {
        Ok(s) => s,
        Err(e) => {
            return Err(Reply::Error {
                message: format!("{e}\nnothing was changed: the running instance serves on"),
                code: e.exit_code(),
            })
        }
    };
    next.file = running.file.clone();
    let host = crate::config::host::check(&next);
    if !host.errors.is_empty() {
        return Err(refuse(format!(
            "unable to use {}: {}\nnothing was changed: the running instance serves on",
            next.file.display(),
            host.errors.join("; ")
        )));
    }
    let fixed = crate::config::change::unchangeable(running, &next);
    if !fixed.is_empty() {
        return Err(refuse(format!(
            "{} changes settings a running supervisor cannot take:\n  {}\n\
             put them back to hand over, or apply them with `baton restart {}` (an outage); nothing was changed",
            next.file.display(),
            fixed.join("\n  "),
            running.name
        )));
    }
    Ok(next)
}

/// Binds the listening socket every instance inherits; SO_REUSEADDR so a restart of
/// baton does not wait out TIME_WAIT.
fn bind_listener(addr: std::net::SocketAddr) -> Result<OwnedFd> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let what = format!("listen on {addr}");
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| Error::errno(&what, e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| Error::errno(&what, e))?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| {
        let err = Error::errno(&what, e);
        if e == nix::errno::Errno::EADDRINUSE {
            err.hint(format!(
                "another process listens on {addr}: find it with `ss -ltnp 'sport = :{}'`",
                addr.port()
            ))
        } else {
            err
        }
    })?;
    socket::listen(
        &fd,
        socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(|e| Error::errno(&what, e))?;
    Ok(fd)
}

/// Sends one sd_notify message to systemd's socket (path or @abstract).
pub fn sd_notify(addr: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(message.as_bytes(), &a)?;
    } else {
        sock.send_to(message.as_bytes(), addr)?;
    }
    Ok(())
}
