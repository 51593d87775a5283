//! The supervisor loop: one thread, one epoll wait, every event fed to the two machines and their effects performed.
//!
//! Signals arrive on a signalfd, child output on pipes, commands on the control
//! socket, readiness on probe sockets and the notify socket. The poll timeout is
//! the nearest deadline, and there is none while the service runs quietly, so an
//! idle supervisor never wakes up.
//!
//! This file runs the loop, feeds the instance machine (`state.rs`) and the handoff
//! machine (`handoff.rs`), and performs their effects; what it sleeps on is `poll.rs`,
//! the control clients `clients.rs` and what their requests ask `requests.rs`, the
//! instances `instance.rs`, a restarted instance's routing `routing.rs`, what it
//! reports `status.rs`, its start `setup.rs` and its re-execution `reexec.rs`.

mod carry;
mod clients;
mod first;
mod handoff;
mod instance;
mod ladder;
mod poll;
mod reexec;
mod requests;
mod routing;
mod setup;
pub mod state;
mod status;
mod worker;

pub use reexec::reexec_check;
pub use setup::Options;

use clients::Clients;
use handoff::{Effect as HEffect, Input as HInput, Kind, Who};
use instance::{launch, Handing, Instance, Launch, Which};
use nix::poll::PollFlags;
use poll::Source;
use requests::Decision;
use routing::{Routed, Routing};
use setup::Jitter;
use worker::WorkerOutput;

use crate::config::Spec;
use crate::control::{Awaits, Envelope, Reply};
use crate::daemon::Reporter;
use crate::error::Result;
use crate::logs::{Drained, Output, Pipe, StreamKind};
use crate::pidfile;
use crate::probe::Probes;
use crate::process;
use crate::tracking::{self, Tracker};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use state::{Effect, Exit, Input, Machine, Outcome, Phase, Stop};
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
/// How long the loop must have been quiet before it gives memory back.
const SHED_AFTER: Duration = Duration::from_secs(1);

/// Everything the loop owns.
///
/// In declaration order (`repr(C)`), what a wake's first act reads and writes first
/// (`first.rs`): the supervisor lives on the stack (a local of [`run`]), and after a long
/// sleep each page of it the act touches is paid for (benches/PROFILE-ready.md, "Raw
/// round"). Laid out by the compiler, those fields lay 2.8 KB apart, over two pages.
#[repr(C)]
struct Supervisor {
    /// The PID file and state file, kept ready to write (directories open, PID file staged).
    records: pidfile::Records,
    /// The control socket and its clients.
    clients: Clients,
    notify: Option<(UnixDatagram, PathBuf)>,
    reporter: Reporter,
    /// The wait's epoll set and buffers, kept from one wake to the next.
    poll: poll::PollBufs,
    /// The leader's group got this signal as this wake began, ahead of the stop it belongs
    /// to (`first.rs`): the stop's `SignalTree` does not send it again.
    group_signalled: Option<(Pid, Signal)>,
    /// The first readiness was answered as READY=1 came (`answer_first_ready`): the PID
    /// file is in place and `start` told; the machine's Ready effect skips both.
    answered: bool,
    spec: Spec,
    sigfd: SignalFd,
    machine: Machine,
    instance: Option<Instance>,
    pipes: Vec<Pipe>,
    output: Output,
    /// Where notify messages are read (its size is the longest read whole).
    notify_buf: Vec<u8>,
    /// Tell systemd READY=1 (under `run` with NOTIFY_SOCKET set).
    systemd: Option<String>,
    events: crate::logs::EventLog,
    next_progress: Option<Instant>,
    /// Work happened since the loop last slept with nothing scheduled.
    worked: bool,
    /// When to give memory back if nothing happens before ([`SHED_AFTER`]).
    shed_at: Option<Instant>,
    /// The state file is behind the machine; written once before the loop sleeps.
    dirty: bool,
    jitter: Jitter,
    queue: VecDeque<Input>,
    /// The deploy or rollback in progress: its machine and its two instances.
    handoff: Option<Handing>,
    /// Inputs for the handoff machine not yet stepped.
    handoff_queue: VecDeque<HInput>,
    /// Routing the serving instance outside a handoff (the background publish).
    routing: Routing,
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
    /// The next instance's cgroup, made (empty) while nothing else was to be done, so that a
    /// respawn creates nothing between the exit and the spawn.
    spare: Option<crate::cgroup::Leaf>,
    /// An instance was spawned since the last spare was made: make the next one.
    want_spare: bool,
    /// The next instance's output pipes, made with the spare cgroup (and without one).
    spare_pipes: Option<crate::process::OutputPipes>,
    /// The leader whose exit was told to the machine, left unreaped until the end of the
    /// wake (`reap_told`).
    zombie: Option<Pid>,
    /// The stop card this supervisor wrote for its config (`config::card`), removed at its end.
    card: Option<crate::config::card::Written>,
    /// The spec is newer than the card (a start, a resumed image, a handoff's promotion):
    /// write it once the service has been ready.
    card_due: bool,
}

/// Supervises the service until it is stopped or given up on; returns the process exit code.
pub fn run(spec: Spec, opts: Options) -> Result<i32> {
    let Options {
        mut reporter,
        systemd_notify,
        events,
        foreground,
    } = opts;
    let Some(lock) = pidfile::lock_supervisor(&spec.state_dir)? else {
        reporter.already_running();
        tracing::info!("another supervisor already runs {}", spec.name);
        return Ok(0);
    };
    match setup::setup(spec, reporter, systemd_notify, events, lock, foreground) {
        Ok(mut sup) => sup.run(),
        Err((e, mut reporter)) => {
            reporter.failed(e.exit_code(), &e.to_string());
            Err(e)
        }
    }
}

/// `__resume`: carries on supervising where the previous image of this process left off
/// (`baton reexec`); `events` opens the event log, told whether it runs in the foreground.
pub fn resume_from_env(
    load: impl FnOnce() -> Result<Spec>,
    events: impl FnOnce(bool, &crate::config::LogSpec) -> Result<crate::logs::EventLog>,
) -> Result<i32> {
    let mut sup = reexec::resume_from_env(load, events)?;
    // A child that ended while no image listened left a zombie (and maybe a SIGCHLD that
    // the exec kept pending): look now rather than wait for the next signal.
    sup.reap();
    sup.run_loop()
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
            // After the wake that answered readiness, off the path of that answer; here,
            // not in the wake's deeper frame, so that it touches no page of stack the
            // supervisor would otherwise never use again.
            if self.card_due && self.machine.ever_ready {
                self.write_card();
            }
        }
        Ok(self.finish())
    }

    /// Leaves the stop card of the current spec (`config::card`).
    #[inline(never)]
    fn write_card(&mut self) {
        self.card_due = false;
        self.card = crate::config::card::write(&self.spec, self.card.take());
    }

    /// One wait (epoll_pwait2) and the handling of whatever it reported.
    fn wait_and_dispatch(&mut self) -> Result<()> {
        let now = Instant::now();
        let timeout = poll::timeout(self, now);
        // Memory is shed after a quiet moment, not at every sleep: a flood of output or a
        // quick crash loop would otherwise refault the code it just dropped at each wake.
        // One timer per burst of work, never a periodic one: no wakeup while idle.
        let scheduled = timeout.is_some();
        let mut shed = false;
        if !scheduled {
            if std::mem::take(&mut self.worked) {
                self.shed_at = now.checked_add(SHED_AFTER);
            } else if self.shed_at.is_some_and(|t| t <= now) {
                self.shed_at = None;
                shed = true;
            }
        }
        let timeout = timeout.or_else(|| {
            self.shed_at
                .map(|t| nix::sys::time::TimeSpec::from_duration(t.saturating_duration_since(now)))
        });
        let persist = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.want_spare) {
            self.make_spare();
        }
        if shed {
            self.output.shed();
        }
        let bufs = std::mem::take(&mut self.poll);
        // Judged now, while warm: what this wake may do first (`first.rs`).
        let armed = first::Armed::of(self);
        let polled = {
            let set = poll::interests(self, bufs);
            if persist {
                status::persist(self);
            }
            // The state file's next write (a stop's last above all) finds its file made.
            // Not while starting: a waiting `start` is answered first.
            if matches!(
                self.machine.phase,
                Phase::Ready { .. } | Phase::Stopping(_) | Phase::Backoff { .. }
            ) {
                self.records.stage_state(&self.spec);
            }
            // Quiet since SHED_AFTER (so nothing is due): give back what start-up and the
            // last burst of work left mapped, as part of the wait itself.
            if shed {
                set.shed_and_wait()?
            } else {
                set.wait(timeout)?
            }
        };

        // A plain stop's signal or the first readiness's answer, when that is all this wake
        // brings, before anything else (even the clock); a client it took is read below,
        // first.
        let mut taken = polled
            .alone()
            .and_then(|one| self.act_first(one, &armed, now));
        // The shed timer firing alone is not work (it would re-arm itself for ever).
        if polled.ready().next().is_some() || scheduled {
            self.worked = true;
        }
        // The lines this wake says are written once its decisive act is done (a respawn's
        // spawn, see `spawn`) or at its end: a write to baton.log before the spawn would
        // touch pages (the file's, the journal's) that the spawn does not need.
        self.events.hold();
        let now = Instant::now();
        let mut closed_pipes = Vec::new();
        for (src, flags) in polled.ready() {
            match src {
                Source::Signals => self.on_signals(),
                // A client writes its request as soon as it connects: read it now rather
                // than after one more wait (a stop's signal waits for that read).
                // One at a time, each acted on before the next accept: a stop's signal waits
                // for no other client (nor for the accept that finds none left).
                Source::Control => {
                    while let Some(i) = taken.take().or_else(|| self.clients.accept(now)) {
                        self.on_conn(i, PollFlags::POLLIN, now);
                    }
                }
                Source::Conn(i) => self.on_conn(i, flags, now),
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
                // The error line also matters at exit; it is printed, then seen again there.
                Source::Publisher => self.routing.on_output(),
                Source::Cgroup => self.check_tree_empty(),
            }
        }
        for i in closed_pipes.into_iter().rev() {
            self.pipes.swap_remove(i);
        }
        self.on_time(Instant::now());
        self.clients.sweep();
        self.events.release();
        self.reap_told();
        self.poll = polled;
        self.group_signalled = None;
        Ok(())
    }

    /// Reaps the leader whose exit this wake acted on (`reap_children` left it a zombie so
    /// that the respawn came first), then any child that exited behind it.
    fn reap_told(&mut self) {
        if let Some(pid) = self.zombie.take() {
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            self.reap();
        }
    }

    /// Client `i` is ready for `flags`: delivers its replies, answers its request.
    fn on_conn(&mut self, i: usize, flags: PollFlags, now: Instant) {
        if let Some(request) = self.clients.on_ready(i, flags, now) {
            if !self.on_request(i, request) {
                self.clients.finish(i);
            }
        }
    }

    fn instance_of(&self, which: Which) -> Option<&Instance> {
        match which {
            Which::Main => self.instance.as_ref(),
            Which::Candidate => self.handoff.as_ref().and_then(|h| h.candidate.as_ref()),
        }
    }

    fn instance_mut(&mut self, which: Which) -> Option<&mut Instance> {
        match which {
            Which::Main => self.instance.as_mut(),
            Which::Candidate => self.handoff.as_mut().and_then(|h| h.candidate.as_mut()),
        }
    }

    /// Feeds whatever deadline has passed.
    fn on_time(&mut self, now: Instant) {
        self.clients.on_time(now);
        if let Some(i) = self.instance.as_mut() {
            i.discover(&self.spec, now);
        }
        if let Some(h) = self.handoff.as_mut() {
            if let Some(c) = h.candidate.as_mut() {
                c.discover(&h.spec, now);
            }
        }
        for which in [Which::Main, Which::Candidate] {
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
            let jitter = self.jitter.draw();
            let effects = self.machine.step(input.clone(), Instant::now(), jitter);
            let after = self.machine.name();
            // By phase, not by name: Idle and Starting both read "starting", yet only
            // Starting has a service whose identity a post-mortem needs.
            let changed = before != (after, discriminant(&self.machine.phase));
            let before = before.0;
            // Into Stopping, the signal goes out before the line that says why: that line
            // is a write to baton.log, and the service need not wait for it.
            let signal_first = changed && matches!(self.machine.phase, Phase::Stopping(_));
            // Readiness is said in the log after its effect has answered the waiting `start`
            // (and written the PID file): that `start` is what the operator waits on.
            let say_after = effects.iter().any(|e| matches!(e, Effect::Ready { .. }));
            let mut effects = effects.into_iter();
            if signal_first {
                for effect in effects.by_ref() {
                    let signal = matches!(effect, Effect::SignalTree(_));
                    self.perform(effect);
                    if signal {
                        break;
                    }
                }
            }
            // Made into a line only at the release of the wake's lines (`EventLog::later`):
            // a respawn formats nothing before its spawn.
            let events = changed.then(|| self.events.clone());
            let say = |name: &str| {
                if let Some(events) = &events {
                    let (name, input) = (name.to_string(), input.clone());
                    events.later(module_path!(), move || {
                        format!("{name}: {before} -> {after} ({})", describe(&input))
                    });
                }
            };
            if !say_after {
                say(&self.spec.name);
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
            if say_after {
                say(&self.spec.name);
            }
            if went_down {
                // Written before anyone hears of the failure, so `status` right after agrees.
                // A restart nobody waits on is written when the loop next sleeps instead: the
                // respawn it leads to comes first.
                let heard = matches!(self.machine.phase, Phase::Done(_))
                    || self.clients.any_waits_for(Awaits::Ready);
                if heard {
                    self.dirty = false;
                    status::persist(self);
                }
                self.start_failed(after);
            }
        }
    }

    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::Spawn => self.spawn(),
            Effect::SignalTree(sig) => {
                let pgid = self.instance.as_ref().map(|i| i.pid);
                let group = self.leader_unreaped();
                let others = self.signal_service(sig);
                if !group && others == 0 && !self.clients.any_waits_for(Awaits::Stopped) {
                    // The service ended alone and left nothing: nothing was sent, nobody waits.
                    return;
                }
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
                if self.clients.any_waits_for(Awaits::Stopped) {
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
        let leaf = self.spare.take();
        let pipes = self.spare_pipes.take();
        let launched = launch(&self.spec, release, &[], &self.launch_with(), leaf, pipes);
        // The service runs: what this wake had to say is written now.
        self.events.release();
        match launched {
            Ok((inst, pipes)) => {
                let pid = inst.pid;
                if self.handoff.is_none() {
                    tracking::set_leader(Some((pid, inst.starttime)));
                }
                let passed = inst.passed();
                Self::adopt(&mut self.pipes, &mut self.output, pipes);
                // The old instance's leaf goes now (its rmdir after the spawn, not before).
                self.instance = Some(inst);
                self.want_spare = true;
                self.queue.push_back(Input::Spawned(pid));
                if passed {
                    self.queue.push_back(Input::ProbesPassed);
                }
            }
            Err(e) => self.queue.push_back(Input::SpawnFailed(e)),
        }
    }

    /// Makes the next instance's cgroup now, off the respawn path (when tracking by cgroup).
    ///
    /// It is a new, empty leaf: never the one an instance ran in, so nothing of an old
    /// instance can be in it. The old instance's own leaf is removed only once the instance
    /// is forgotten, which the machine does only after its whole tree is gone.
    fn make_spare(&mut self) {
        if matches!(self.machine.phase, Phase::Done(_)) {
            return;
        }
        if self.spare.is_none() {
            self.spare = self.tracker.instance();
        }
        // Its output pipes too: two pipe2 less between the exit and the spawn. Failing here
        // only means the spawn makes them (and says why if it cannot).
        if self.spare_pipes.is_none() {
            self.spare_pipes = crate::process::OutputPipes::new().ok();
        }
        // And the pipe their output is spliced through: no pipe2 at the exit either.
        self.output.prepare_relay();
    }

    /// What every instance is started with besides its config and release.
    fn launch_with(&self) -> Launch<'_> {
        Launch {
            listener: self.listener.as_ref().map(AsRawFd::as_raw_fd),
            notify: self.notify.as_ref().map(|(_, p)| p.as_path()),
            tracker: &self.tracker,
        }
    }

    fn on_ready(&mut self, first: bool) {
        if let Some(inst) = self.instance.as_mut() {
            inst.probes = None;
        }
        // A first start that has not been routed yet is still the first start.
        let first = first | self.routing.waiting.take().unwrap_or(false);
        if self.publish() {
            // Ready and routed: a waiting `start` hears when the switch has finished.
            self.routing.waiting = Some(first);
            return;
        }
        self.ready_and_routed(first);
    }

    /// The instance serves, proxy and registry point at it: write the PID file, answer `start`.
    ///
    /// The first time, the PID file (staged at start: one rename) and the answer to the
    /// `start` that launched us come before anything else: that `start` has slept through the
    /// whole start-up, and every step before its answer delays the moment it returns.
    fn ready_and_routed(&mut self, first: bool) {
        let published = if first && std::mem::take(&mut self.answered) {
            true
        } else if first {
            match self.records.publish_pid(&self.spec.pidfile) {
                Ok(spent) => {
                    self.reporter.ready();
                    drop(spent);
                    true
                }
                Err(e) => {
                    self.clients
                        .answer(Awaits::Ready, &ready_reply(&self.spec.name));
                    tracing::error!("{e}");
                    self.reporter.failed(e.exit_code(), &e.to_string());
                    self.queue.push_back(Input::StopRequested);
                    return;
                }
            }
        } else {
            false
        };
        self.clients
            .answer(Awaits::Ready, &ready_reply(&self.spec.name));
        if !published {
            return;
        }
        if let Some(addr) = self.systemd.take() {
            if let Err(e) = setup::sd_notify(&addr, "READY=1") {
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
            // Looked at, not yet reaped: the leader's reap may wait (see `reap_told`).
            let peeked = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let (pid, exit) = match peeked {
                Ok(WaitStatus::Exited(pid, code)) if self.zombie != Some(pid) => {
                    (pid, Exit::Code(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if self.zombie != Some(pid) => {
                    (pid, Exit::Signal(sig))
                }
                // The leader told already, unreaped until the end of this wake: any child
                // exited behind it is reaped then (`reap_told`). As for a live tree:
                Ok(WaitStatus::StillAlive | WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
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
                Ok(other) => {
                    // Not asked for (stopped, continued): reap it, or the peek would see it again.
                    if let Some(pid) = other.pid() {
                        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                    }
                    continue;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    // ECHILD: not a single descendant is left.
                    self.check_tree_empty();
                    return;
                }
            };
            let leader = self.instance.as_ref().is_some_and(|i| i.pid == pid);
            // With a cgroup, whether anything of the service is left is the cgroup's to say
            // (an exited process has left it, reaped or not), so the leader's reap (the
            // release of a whole task, slow after an idle wait) waits until the wake's
            // decisive act, the respawn, is done. Without one, the subreaper's tree walk
            // and waitpid(-1) must not see it: reaped now.
            if leader && self.tracker.events_fd().is_some() {
                self.zombie = Some(pid);
            } else {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            }
            let now = Instant::now();
            // What it printed just before it went is in its pipes still: read it first, so a
            // failure report carries its last words (poll reports the exit and the data at once).
            self.drain_output_of(pid);
            if self.instance.as_ref().is_some_and(|i| i.pid == pid) {
                tracking::set_leader(None);
                self.events.later(module_path!(), move || {
                    format!("service (pid {pid}) {exit}")
                });
                // Said only to a handoff there is: a respawn formats nothing before its spawn.
                if self.handoff.is_some() {
                    self.feed_handoff(HInput::Cancel(format!(
                        "the serving instance (pid {pid}) {exit}"
                    )));
                }
                self.feed(Input::LeaderExited(exit));
            } else if let Some(input) = self.handoff_child(pid, exit) {
                self.feed_handoff(input);
            } else if self.routing.is(pid) {
                self.published(exit);
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

    /// The background publish ended: the serving instance is routed, or why not.
    fn published(&mut self, exit: Exit) {
        let pid = self.instance.as_ref().map_or(0, |i| i.pid.as_raw());
        self.dirty = true;
        match self.routing.exited(exit, &self.spec.name, pid) {
            Routed::Switched { waiting } => {
                if let Some(first) = waiting {
                    self.ready_and_routed(first);
                }
            }
            Routed::Failed { why, waiting } => {
                let reply = Reply::Error {
                    message: why.clone(),
                    code: crate::exit::Action::Generic,
                };
                match waiting {
                    // `start` means ready and routed: a first start that cannot be routed leaves
                    // nothing. `baton start` hears of it once the service is gone (see `finish`).
                    Some(true) => {
                        self.start_failure = Some(why);
                        self.clients.answer(Awaits::Ready, &reply);
                        self.feed(Input::StopRequested);
                    }
                    Some(false) => self.clients.answer(Awaits::Ready, &reply),
                    None => {}
                }
            }
        }
    }

    /// Reads whatever `pid`'s pipes hold now; they stay in the poll set until they report closed.
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

    /// Takes a new instance's pipes into the poll set. Lines of the pipes already there that
    /// write the same files come back out of the files first (see [`Pipe::settle`]): two
    /// writers share a file by whole lines only.
    fn adopt(pipes: &mut Vec<Pipe>, output: &mut Output, new: [Pipe; 2]) {
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            if !new.iter().any(|p| p.kind == kind) {
                continue;
            }
            for p in pipes.iter_mut().filter(|p| p.kind == kind) {
                p.settle(output);
            }
            // A line left unfinished by a writer now gone (a previous supervisor's) is
            // ended, not continued by the new instance.
            output.end_line(kind);
        }
        pipes.extend(new);
    }

    /// Reads pipe `i` into the log files and to the probes of the instance writing it.
    fn drain_pipe(&mut self, i: usize) -> Drained {
        let Some(kind) = self.pipes.get(i).map(|p| p.kind) else {
            return Drained::Closed;
        };
        let alone = self.pipes.iter().filter(|p| p.kind == kind).count() == 1;
        let Some(pipe) = self.pipes.get_mut(i) else {
            return Drained::Closed;
        };
        let r = instance::drain(
            pipe,
            &mut self.output,
            self.instance.as_mut(),
            self.handoff.as_mut(),
            alone,
        );
        // A log probe's line, like READY=1, answers the first `start` as it is read.
        self.answer_first_ready();
        self.check_probes();
        r
    }

    fn on_notify(&mut self) {
        let mut buf = std::mem::take(&mut self.notify_buf);
        // Each message is acted on as it comes: READY=1 answers the waiting `start` before
        // the read that finds the socket empty.
        while let Some((n, sender)) = self
            .notify
            .as_ref()
            .and_then(|(sock, _)| crate::sys::recv_with_sender(sock.as_fd(), &mut buf, false).ok())
        {
            let m = String::from_utf8_lossy(&buf[..n]);
            tracing::debug!(
                "notify from pid {}: {}",
                sender.map_or(0, Pid::as_raw),
                m.trim()
            );
            let Some(which) = self.notified(sender) else {
                tracing::warn!(
                    "ignored a notify message from pid {}: not a process of the starting instance",
                    sender.map_or(0, Pid::as_raw)
                );
                continue;
            };
            if let Some(p) = self.instance_mut(which).and_then(|i| i.probes.as_mut()) {
                p.on_notify(&m);
            }
            self.answer_first_ready();
            self.check_probes();
        }
        self.notify_buf = buf;
    }

    /// The starting instance a notify message from `sender` is about: the one whose process
    /// it is. Only a starting instance listens for READY=1 (during a handoff, the new one),
    /// and the old instance answering a reload with READY=1 must not make the new one ready.
    /// A sender already gone (a `systemd-notify` that exits at once) cannot be placed: it is
    /// taken for the starting instance only when no other instance is running beside it.
    fn notified(&self, sender: Option<Pid>) -> Option<Which> {
        let starting = if self.handoff.as_ref().is_some_and(|h| h.candidate.is_some()) {
            Which::Candidate
        } else {
            Which::Main
        };
        let sender = sender.filter(|p| p.as_raw() > 0)?;
        let instance = self.instance_of(starting)?;
        if instance.owns(sender) {
            return Some(starting);
        }
        let gone = nix::sys::signal::kill(sender, None) == Err(nix::errno::Errno::ESRCH);
        (gone && starting == Which::Main).then_some(starting)
    }

    /// Answers one request; returns whether the connection stays open for more than the reply.
    fn on_request(&mut self, i: usize, request: std::result::Result<Envelope, String>) -> bool {
        let by = request.as_ref().map_or(String::new(), |e| e.by.clone());
        let decision = requests::decide(
            request,
            &self.spec.name,
            &self.machine,
            self.instance.as_ref(),
        );
        let reply = match decision {
            Decision::Answer(reply) => reply,
            Decision::Status => Reply::Status(Box::new(status::report(self))),
            Decision::AwaitReady => {
                self.clients.wait_for(i, Awaits::Ready);
                self.feed(Input::StartNow);
                return self.clients.waits(i);
            }
            Decision::Handoff(kind, release) => match self.begin_handoff(i, kind, &release, by) {
                Some(reply) => reply,
                None => return true,
            },
            Decision::Stop => {
                self.feed_handoff(HInput::Cancel("the service is being stopped".into()));
                self.clients.wait_for(i, Awaits::Stopped);
                self.feed(Input::StopRequested);
                Reply::Ok {
                    message: format!("stopping {}", self.spec.name),
                }
            }
            Decision::Reload => match self.reload() {
                Ok(m) => Reply::Ok { message: m },
                Err(m) => Reply::Error {
                    message: m,
                    code: crate::exit::Action::NotRunning,
                },
            },
            Decision::Reopen => {
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
            Decision::Reexec => self.reexec(i),
            Decision::Signal(sig, pid) => {
                process::signal(pid, sig);
                tracing::info!("sent {sig} to {} (pid {pid}) on request", self.spec.name);
                Reply::Ok {
                    message: format!("sent {sig} to {} (pid {pid})", self.spec.name),
                }
            }
        };
        self.clients.reply(i, &reply)
    }

    /// `reexec`: replaces this image with the baton binary at [`Supervisor::exe`], carrying
    /// the service, its pipes and every socket across `execve` (same PID). Returns only on a
    /// refusal or a failed exec, having changed nothing.
    fn reexec(&mut self, conn: usize) -> Reply {
        // The next image starts with nothing held: what this one had to say is written, and
        // the leader it was told of is reaped, first (it finds any other zombie itself).
        self.events.release();
        if let Some(pid) = self.zombie.take() {
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        }
        let version = match reexec::check(self) {
            Ok(v) => v,
            Err(refusal) => return refusal,
        };
        // Every whole line read so far reaches its file; what is left stays in the pipes for
        // the new image, and a line begun is carried with them.
        for i in 0..self.pipes.len() {
            self.drain_pipe(i);
        }
        self.output.flush();
        let Some(record) = reexec::record(self, conn) else {
            return Reply::Error {
                message: format!("{} has no serving instance to carry", self.spec.name),
                code: crate::exit::Action::Generic,
            };
        };
        // The next image makes its own: an unknown empty leaf would only wait for the stop.
        self.spare = None;
        self.records.drop_spare();
        self.spare_pipes = None;
        self.want_spare = true;
        let clients = &mut self.clients;
        reexec::exec(&record, &self.spec, &version, |line| {
            clients.tell(conn, line)
        })
    }

    /// `deploy ID` / `rollback ID`: begins a handoff, or says why not.
    fn begin_handoff(
        &mut self,
        conn: usize,
        kind: Kind,
        release: &str,
        by: String,
    ) -> Option<Reply> {
        let begin = match requests::begin_handoff(self, kind, release) {
            Ok(b) => b,
            Err(refusal) => return Some(refusal),
        };
        self.clients.wait_for(conn, Awaits::Handoff);
        self.handoff = Some(Handing {
            machine: begin.machine,
            candidate: None,
            old: None,
            worker: None,
            spec: Box::new(begin.spec),
            by,
        });
        for e in begin.effects {
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
                let release = h.spec.release.is_some().then(|| h.machine.release.clone());
                let with = Launch {
                    listener: self.listener.as_ref().map(AsRawFd::as_raw_fd),
                    notify: self.notify.as_ref().map(|(_, p)| p.as_path()),
                    tracker: &self.tracker,
                };
                let pipes = self.spare_pipes.take();
                match launch(&h.spec, release, &avoid, &with, self.spare.take(), pipes) {
                    Ok((inst, pipes)) => {
                        let (pid, port, passed) = (inst.pid, inst.port, inst.passed());
                        Self::adopt(&mut self.pipes, &mut self.output, pipes);
                        h.candidate = Some(inst);
                        self.want_spare = true;
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
                let Some(to) = h.candidate.as_ref().map(Instance::side) else {
                    self.handoff_queue
                        .push_back(HInput::SwitchNotRun("the new instance is gone".into()));
                    return;
                };
                let args = worker::args(&to, self.instance.as_ref().map(Instance::side).as_ref());
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
                    i.signal(sig);
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
                let inst = match who {
                    Who::Candidate => h.candidate.as_ref(),
                    Who::Old => h.old.as_ref(),
                };
                if inst.is_none_or(Instance::gone) {
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
                    .handed_over(new_pid, setup::rules_of(&spec), Instant::now());
                self.spec = spec;
                self.dirty = true;
                self.card_due = true;
            }
            HEffect::Tell(line) => {
                tracing::info!("{}: {}", h.machine.kind.name(), line.trim_start());
                self.tell_handoff(&line);
            }
            HEffect::Commit(took) => {
                let message = h.commit(&self.spec, self.instance.as_ref(), &took);
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
        let ready = !self.routing.running()
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
        self.clients.progress(Awaits::Handoff, line);
    }

    /// Answers the handoff's client.
    fn end_handoff(&mut self, reply: Reply) {
        self.clients.answer(Awaits::Handoff, &reply);
        self.worked = true;
    }

    /// Outside a handoff, a (re)started instance has a new PID, maybe a new port: point the
    /// proxy and the registry at it. True if a switch worker now does that (the loop hears
    /// when it exits); false if there was nothing to wait for.
    fn publish(&mut self) -> bool {
        if self.handoff.is_some() {
            return false;
        }
        match self.instance.as_ref() {
            Some(inst) => self.routing.publish(&self.spec, inst),
            None => false,
        }
    }

    fn reload(&mut self) -> std::result::Result<String, String> {
        let sig = self.spec.reload_signal;
        match requests::signal_target(&self.machine, self.instance.as_ref()) {
            Some(pid) => {
                process::signal(pid, sig);
                tracing::info!("sent {sig} to {} (pid {pid}) to reload", self.spec.name);
                Ok(format!("sent {sig} to {} (pid {pid})", self.spec.name))
            }
            None => Err(format!(
                "{} is {}: nothing to reload",
                self.spec.name,
                self.machine.name()
            )),
        }
    }

    fn reopen(&mut self) {
        // A line begun in the old file by a splice is finished in the new one, whole.
        for p in &mut self.pipes {
            p.settle(&mut self.output);
        }
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
        // Nobody waits (a respawn's usual case): nothing to format before the spawn.
        if !self.clients.any_waits_for(Awaits::Ready) {
            return;
        }
        let why = match (&self.machine.phase, self.machine.last_exit) {
            (Phase::Done(Outcome::Dead(r) | Outcome::Failed(r)), _) => r.clone(),
            (_, Some(e)) => format!("{e} and is {state}"),
            (_, None) => state.to_string(),
        };
        self.clients.answer(
            Awaits::Ready,
            &Reply::Error {
                message: why,
                code: crate::exit::Action::Generic,
            },
        );
    }

    /// Tells every waiting `stop` what is happening.
    fn broadcast(&mut self, message: &str) {
        self.clients.progress(Awaits::Stopped, message);
    }

    /// Tells every waiting `stop` how the stop goes, again in a moment.
    fn progress(&mut self) {
        match status::stop_progress(self) {
            Some(msg) => {
                self.broadcast(&msg);
                self.next_progress = Some(Instant::now() + PROGRESS_EVERY);
            }
            None => self.next_progress = None,
        }
    }

    /// Cleans up after the machine is done; returns the exit code.
    fn finish(&mut self) -> i32 {
        self.records.unstage();
        self.spare = None;
        // Drain what the service printed last, so failure reports and log files are complete.
        for i in (0..self.pipes.len()).rev() {
            self.drain_pipe(i);
        }
        // The files end in whole lines: no later supervisor continues a line of this one's.
        self.output.end_line(StreamKind::Stdout);
        self.output.end_line(StreamKind::Stderr);
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
                let msg = status::start_failure(self, why);
                tracing::error!("{msg}");
                self.reporter
                    .failed(crate::exit::Action::Generic, msg.trim_end());
                1
            }
        };
        if std::mem::take(&mut self.dirty) {
            status::persist(self);
        }
        self.records.drop_spare();
        self.routing.abandon();
        std::mem::replace(&mut self.tracker, Tracker::Subreaper).finish();
        self.broadcast(self.machine.name());
        pidfile::remove(&self.spec.socket);
        if let Some(card) = self.card.take() {
            card.remove();
        }
        if let Some((_, path)) = &self.notify {
            pidfile::remove(path);
        }
        code
    }

    /// Signals the whole service through the tracker; returns how many processes outside
    /// the leader's group got it.
    fn signal_service(&mut self, sig: Signal) -> usize {
        let leader = self.instance.as_ref().map(|i| i.pid);
        let unreaped = self.leader_unreaped();
        // A plain stop's signal went to the group as this wake began (`first.rs`).
        let sent =
            unreaped && leader.is_some_and(|pid| self.group_signalled.take() == Some((pid, sig)));
        self.tracker
            .signal(leader, unreaped, sig, &self.probe_pids(), sent)
    }

    /// Whether the stop ladder still has the leader unreaped (its group number is surely ours).
    fn leader_unreaped(&self) -> bool {
        matches!(
            self.machine.phase,
            Phase::Stopping(Stop {
                leader: Some(_),
                ..
            })
        )
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
}

/// What a `start` waiting on the control socket hears once the service is ready.
fn ready_reply(name: &str) -> Reply {
    Reply::Ok {
        message: format!("{name} is ready"),
    }
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
