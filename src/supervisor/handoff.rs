//! A zero-downtime handoff (`deploy`, `rollback`): a second instance beside the serving one.
//!
//! Steps, each reported to the waiting client with its duration:
//! 1. start the new instance (fresh port, or the shared listening socket);
//! 2. wait for its readiness probes;
//! 3. switch traffic and publish port and PID, in a `baton __switch` child process
//!    (nginx -t, reload, confirmation and etcd calls block; the loop must not);
//! 4. drain the old instance: observe its established connections reach 0 (proxy
//!    mode), or let it drain itself on its stop signal (shared socket mode);
//! 5. stop the old instance gracefully (stop signal, timeout, SIGKILL).
//!
//! A failure in steps 1–3 stops the new instance; the switch worker has put the
//! proxy and registry back, and the old instance never stopped serving.

use super::{Instance, Supervisor};
use crate::control::{Awaits, HandoffReport, Reply};
use crate::deploy::switch::Outcome;
use crate::process;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// How often a draining instance's connections are counted.
const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Which instance something belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    /// The serving instance (the state machine's).
    Main,
    /// The one a handoff is starting.
    Candidate,
}

/// Where a handoff is.
#[derive(Debug)]
pub(super) enum Step {
    /// The new instance runs; its probes have not all passed.
    Starting { deadline: Instant },
    /// The switch worker moves traffic and publishes.
    Switching { worker: Pid },
    /// The old instance still holds connections.
    Draining { until: Instant, next_check: Instant },
    /// The old instance got its stop signal.
    StoppingOld {
        kill_at: Instant,
        killed: bool,
        leader_reaped: bool,
    },
    /// A step failed: the new instance is being stopped.
    Aborting {
        kill_at: Instant,
        killed: bool,
        leader_reaped: bool,
        why: String,
    },
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Starting { .. } => "starting",
            Step::Switching { .. } => "switching",
            Step::Draining { .. } => "draining",
            Step::StoppingOld { .. } => "stopping-old",
            Step::Aborting { .. } => "aborting",
        }
    }
}

/// One handoff in progress; at most one per service.
pub(super) struct Handoff {
    /// deploy | rollback.
    pub kind: &'static str,
    /// The release handed over to.
    pub release: String,
    /// The new instance, until it is promoted (or dies).
    pub candidate: Option<Instance>,
    /// The previous instance, once the new one serves.
    pub old: Option<Instance>,
    pub step: Step,
    started: Instant,
    step_since: Instant,
    /// The switch worker's output, relayed line by line.
    worker_out: Option<WorkerOutput>,
    /// What the switch worker last said went wrong.
    worker_error: Option<String>,
    /// The new instance's own last lines, for a failure report.
    pub tail: VecDeque<String>,
    /// The switch failed and could not put the proxy or registry back.
    restore_failed: bool,
    /// Auto ports new instances could not bind (taken between baton's pick and their bind).
    tried_ports: Vec<u16>,
}

/// Lines of the new instance's output kept for a failure report.
const TAIL: usize = 20;

/// strerror(EADDRINUSE), in what a service prints when its bind fails (Java, Python, C alike).
const ADDRESS_IN_USE: &str = "Address already in use";

/// How many auto ports a handoff tries before it gives up on a new instance that cannot bind.
const PORT_TRIES: usize = 3;

impl Handoff {
    /// The status view.
    pub fn report(&self, now: Instant) -> HandoffReport {
        let inst = self.candidate.as_ref().or(self.old.as_ref());
        HandoffReport {
            kind: self.kind.to_string(),
            step: self.step.name().to_string(),
            release: self.release.clone(),
            // The instance that is not serving: the new one, or after promotion the old one.
            pid: inst.map(|i| i.pid.as_raw()),
            port: inst.and_then(|i| i.port),
            elapsed_secs: now.duration_since(self.started).as_secs_f64(),
        }
    }

    /// Records one line the new instance printed.
    pub fn remember(&mut self, line: &str) {
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    /// The earliest time the handoff needs the loop.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.step {
            Step::Starting { deadline } => Some(*deadline),
            Step::Switching { .. } => None,
            Step::Draining { until, next_check } => Some((*until).min(*next_check)),
            Step::StoppingOld {
                kill_at, killed, ..
            }
            | Step::Aborting {
                kill_at, killed, ..
            } => (!killed).then_some(*kill_at),
        }
    }

    /// The switch worker's output descriptor, for the poll set.
    pub fn worker_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.worker_out.as_ref().and_then(WorkerOutput::as_fd)
    }
}

impl Supervisor {
    /// `deploy ID` / `rollback ID`: begins a handoff, or says why not.
    pub(super) fn begin_handoff(
        &mut self,
        conn: usize,
        kind: &'static str,
        release: &str,
    ) -> Option<Reply> {
        let refuse = |message: String| {
            Some(Reply::Error {
                message,
                code: crate::exit::Action::Generic.code(),
            })
        };
        if let Some(h) = &self.handoff {
            return refuse(format!(
                "a {} of {} to release {} is already in progress (step {}, for {}); wait for it to finish",
                h.kind,
                self.spec.name,
                h.release,
                h.step.name(),
                crate::config::human(h.started.elapsed())
            ));
        }
        if !matches!(self.machine.phase, super::Phase::Ready { .. }) {
            return refuse(format!(
                "{} is {}: a handoff needs a serving instance to hand over from",
                self.spec.name,
                self.machine.name()
            ));
        }
        if let (crate::config::PortSpec::Fixed(p), None) = (&self.spec.port, &self.listener) {
            return refuse(format!(
                "port.mode is fixed ({p}): two instances cannot share it; use port.mode = \"auto\" or \"discover\", or a [listen] socket"
            ));
        }
        let taken: Vec<u16> = self
            .instance
            .as_ref()
            .and_then(|i| i.port)
            .into_iter()
            .collect();
        let now = Instant::now();
        let inst = match self.launch(Some(release.to_string()), &taken) {
            Ok(i) => i,
            Err(e) => return refuse(format!("step 1 (start release {release}) failed: {e}")),
        };
        if let Some(c) = self.conns.get_mut(conn) {
            c.awaits = Awaits::Handoff;
        }
        let line = format!(
            "[1/5] started release {release} as pid {}{}",
            inst.pid,
            match (inst.port, &self.listener) {
                (_, Some(_)) => " on the shared listening socket".to_string(),
                (Some(p), None) => format!(" on port {p}"),
                (None, None) => String::new(),
            }
        );
        let passed = inst.passed();
        self.handoff = Some(Handoff {
            kind,
            release: release.to_string(),
            candidate: Some(inst),
            old: None,
            step: Step::Starting {
                deadline: crate::clock::after(now, self.spec.ready.timeout),
            },
            started: now,
            step_since: now,
            worker_out: None,
            worker_error: None,
            tail: VecDeque::new(),
            restore_failed: false,
            tried_ports: Vec::new(),
        });
        tracing::info!("{kind}: {line}");
        self.tell_handoff(&line);
        if passed {
            self.check_candidate();
        }
        None
    }

    /// Progress for the client waiting on the handoff, and the event log.
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

    /// Ends the handoff and answers its client.
    fn end_handoff(&mut self, reply: Reply) {
        self.handoff = None;
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

    /// Called whenever the candidate's checks may have passed.
    pub(super) fn check_candidate(&mut self) {
        // A background publish still running would race the switch on the registry.
        let ready = self.publisher.is_none()
            && self.handoff.as_ref().is_some_and(|h| {
                matches!(h.step, Step::Starting { .. })
                    && h.candidate.as_ref().is_some_and(Instance::passed)
            });
        if ready {
            self.candidate_ready();
        }
    }

    fn candidate_ready(&mut self) {
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        let now = Instant::now();
        let took = now.duration_since(h.step_since);
        if let Some(c) = h.candidate.as_mut() {
            c.probes = None;
        }
        let (to, from) = (h.candidate.as_ref(), self.instance.as_ref());
        let mut args: Vec<String> = vec!["__switch".into()];
        if let Some(to) = to {
            args.extend(["--pid".into(), to.pid.to_string()]);
            if let Some(p) = to.port {
                args.extend(["--port".into(), p.to_string()]);
            }
            if let Some(r) = &to.release {
                args.extend(["--release".into(), r.clone()]);
            }
        }
        if let Some(from) = from {
            args.extend(["--old-pid".into(), from.pid.to_string()]);
            if let Some(p) = from.port {
                args.extend(["--old-port".into(), p.to_string()]);
            }
            if let Some(r) = &from.release {
                args.extend(["--old-release".into(), r.clone()]);
            }
        }
        let line = format!("[2/5] ready after {}", crate::config::human(took));
        self.tell_handoff(&line);
        tracing::info!("handoff: {line}");
        match spawn_worker(&self.spec.file, &self.spec.name, &args) {
            Ok((pid, out)) => {
                if let Some(h) = self.handoff.as_mut() {
                    h.step = Step::Switching { worker: pid };
                    h.step_since = now;
                    h.worker_out = Some(WorkerOutput::new(out));
                }
            }
            Err(e) => self.abort_handoff(format!(
                "step 3 (switch traffic) failed: cannot run the switch: {e}"
            )),
        }
    }

    /// Reads what the switch worker printed and relays whole lines.
    pub(super) fn on_worker_output(&mut self) {
        let Some(out) = self.handoff.as_mut().and_then(|h| h.worker_out.as_mut()) else {
            return;
        };
        for line in out.lines() {
            tracing::info!("switch: {line}");
            if let Some(msg) = line.strip_prefix("error: ") {
                if let Some(h) = self.handoff.as_mut() {
                    h.worker_error = Some(msg.to_string());
                }
            }
            self.tell_handoff(&format!("      {line}"));
        }
    }

    /// Routes a reaped child that belongs to the handoff; false if it is not one of ours.
    pub(super) fn handoff_reaped(&mut self, pid: Pid, exit: super::Exit) -> bool {
        let Some(h) = self.handoff.as_mut() else {
            return false;
        };
        if h.candidate.as_ref().is_some_and(|c| c.pid == pid) {
            tracing::info!("new instance (pid {pid}) {exit}");
            if matches!(h.step, Step::Starting { .. }) && self.retry_on_another_port() {
                return true;
            }
            let Some(h) = self.handoff.as_mut() else {
                return true;
            };
            match &mut h.step {
                Step::Aborting { leader_reaped, .. } => *leader_reaped = true,
                // The worker finishes first and, with no instance to confirm, restores the proxy.
                Step::Switching { .. } => {
                    h.worker_error
                        .get_or_insert(format!("the new instance {exit}"));
                    if let Some(c) = h.candidate.as_mut() {
                        c.probes = None;
                    }
                    h.tail
                        .push_back(format!("(baton: the new instance {exit})"));
                }
                _ => {
                    let why = format!(
                        "step 2 (readiness) failed: release {} {exit} before it was ready",
                        h.release
                    );
                    self.abort_handoff(why);
                    if let Some(Handoff {
                        step: Step::Aborting { leader_reaped, .. },
                        ..
                    }) = self.handoff.as_mut()
                    {
                        *leader_reaped = true;
                    }
                }
            }
            self.handoff_progress();
            return true;
        }
        if let Step::Switching { worker } = h.step {
            if worker == pid {
                self.on_worker_output();
                let outcome = Outcome::from_code(match exit {
                    super::Exit::Code(c) => Some(c),
                    super::Exit::Signal(_) => None,
                });
                if outcome == Outcome::Switched {
                    self.promote();
                } else {
                    if let Some(h) = self.handoff.as_mut() {
                        h.restore_failed = outcome == Outcome::Left;
                    }
                    // Its hint was relayed with its error line above; said once is enough.
                    let why = self
                        .handoff
                        .as_ref()
                        .and_then(|h| h.worker_error.clone())
                        .map(|e| match e.split_once("; hint: ") {
                            Some((e, _)) => e.to_string(),
                            None => e,
                        })
                        .unwrap_or_else(|| format!("the switch {exit}"));
                    self.abort_handoff(format!("step 3 (switch traffic) failed: {why}"));
                }
                return true;
            }
        }
        if h.old.as_ref().is_some_and(|o| o.pid == pid) {
            tracing::info!("old instance (pid {pid}) {exit}");
            if let Step::StoppingOld { leader_reaped, .. } = &mut h.step {
                *leader_reaped = true;
            }
            self.handoff_progress();
            return true;
        }
        false
    }

    /// A new instance that died before ready because its auto port was taken (by an outgoing
    /// connection's ephemeral port, typically) is started again on another one, a few times.
    fn retry_on_another_port(&mut self) -> bool {
        if self.listener.is_some()
            || !matches!(self.spec.port, crate::config::PortSpec::Auto { .. })
        {
            return false;
        }
        let Some(h) = self.handoff.as_mut() else {
            return false;
        };
        let Some(port) = h.candidate.as_ref().and_then(|c| c.port) else {
            return false;
        };
        let said_so = h.tail.iter().any(|l| l.contains(ADDRESS_IN_USE));
        if !said_so || h.tried_ports.len() >= PORT_TRIES {
            return false;
        }
        h.tried_ports.push(port);
        let mut taken = h.tried_ports.clone();
        taken.extend(self.instance.as_ref().and_then(|i| i.port));
        let release = h.release.clone();
        match self.launch(Some(release), &taken) {
            Ok(inst) => {
                let line = format!(
                    "      port {port} was taken before the new instance could bind it ({ADDRESS_IN_USE}): started it again as pid {} on port {}",
                    inst.pid,
                    inst.port.map_or("-".into(), |p| p.to_string())
                );
                let passed = inst.passed();
                let now = Instant::now();
                if let Some(h) = self.handoff.as_mut() {
                    h.candidate = Some(inst);
                    h.step = Step::Starting {
                        deadline: crate::clock::after(now, self.spec.ready.timeout),
                    };
                    h.tail.clear();
                }
                tracing::warn!("handoff: {}", line.trim_start());
                self.tell_handoff(&line);
                if passed {
                    self.check_candidate();
                }
                true
            }
            Err(e) => {
                tracing::warn!("handoff: unable to start the new instance again: {e}");
                false
            }
        }
    }

    /// The new instance serves: it becomes the main one; the old one drains.
    fn promote(&mut self) {
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        let Some(new) = h.candidate.take() else {
            return;
        };
        let now = Instant::now();
        let line = format!(
            "[3/5] traffic switched and published in {}",
            crate::config::human(now.duration_since(h.step_since))
        );
        let new_pid = new.pid;
        let old = self.instance.replace(new);
        self.machine.handed_over(new_pid, now);
        self.dirty = true;
        let socket_mode = self.listener.is_some();
        if let Some(h) = self.handoff.as_mut() {
            h.old = old;
            h.step_since = now;
            h.step = if socket_mode {
                // The old instance keeps accepting from the shared socket until told to stop;
                // its stop signal is the drain.
                Step::Draining {
                    until: now,
                    next_check: now,
                }
            } else {
                Step::Draining {
                    until: crate::clock::after(now, self.spec.deploy.drain_timeout),
                    next_check: now,
                }
            };
        }
        self.tell_handoff(&line);
        tracing::info!("handoff: {line}");
        self.handoff_progress();
    }

    /// Steps the handoff on time and on child exits.
    pub(super) fn handoff_progress(&mut self) {
        let now = Instant::now();
        let stop_signal = self.spec.stop.signal;
        let stop_timeout = self.spec.stop.timeout;
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        match &mut h.step {
            Step::Starting { deadline } => {
                if *deadline <= now {
                    let pending = h
                        .candidate
                        .as_ref()
                        .map(|c| match &c.probes {
                            Some(p) => p.pending(),
                            None => "the port it listens on (port.mode = discover)".into(),
                        })
                        .unwrap_or_default();
                    let why = format!(
                        "step 2 (readiness) failed: release {} not ready within {}; waiting for: {pending}",
                        h.release,
                        crate::config::human(self.spec.ready.timeout)
                    );
                    self.abort_handoff(why);
                }
            }
            Step::Switching { .. } => {}
            Step::Draining { until, next_check } => {
                let Some(old) = h.old.as_ref() else {
                    return;
                };
                let left = old.port.map_or(0, |p| process::established(old.pid, p));
                if left == 0 || *until <= now {
                    let line = if self.listener.is_some() {
                        format!("[4/5] sent {stop_signal} to the old instance (pid {}): it stops accepting from the shared socket and drains", old.pid)
                    } else if left == 0 {
                        format!(
                            "[4/5] old instance (pid {}) drained in {}",
                            old.pid,
                            crate::config::human(now.duration_since(h.step_since))
                        )
                    } else {
                        format!("[4/5] drain timeout: old instance (pid {}) still holds {left} connection(s)", old.pid)
                    };
                    process::signal_group(old.pid, stop_signal);
                    h.step = Step::StoppingOld {
                        kill_at: crate::clock::after(now, stop_timeout),
                        killed: false,
                        leader_reaped: false,
                    };
                    h.step_since = now;
                    self.tell_handoff(&line);
                    tracing::info!("handoff: {line}");
                } else {
                    *next_check = now + DRAIN_CHECK_EVERY;
                }
            }
            Step::StoppingOld {
                kill_at,
                killed,
                leader_reaped,
            } => {
                let Some(old) = h.old.as_ref() else {
                    return;
                };
                if *leader_reaped && !process::group_alive(old.pid) {
                    self.finish_handoff();
                } else if !*killed && *kill_at <= now {
                    *killed = true;
                    process::signal_group(old.pid, Signal::SIGKILL);
                    let line = format!(
                        "      old instance still running after {}: sent SIGKILL",
                        crate::config::human(stop_timeout)
                    );
                    self.tell_handoff(&line);
                }
            }
            Step::Aborting {
                kill_at,
                killed,
                leader_reaped,
                why,
            } => {
                let Some(c) = h.candidate.as_ref() else {
                    return;
                };
                if *leader_reaped && !process::group_alive(c.pid) {
                    let serving = self.instance.as_ref().map(|i| i.pid);
                    let mut message = match (h.restore_failed, serving) {
                        (false, _) => format!(
                            "{why}\nrelease {} stopped; the old instance kept serving",
                            h.release
                        ),
                        (true, Some(pid)) => format!(
                            "{why}\nrelease {} stopped; the old instance (pid {pid}) still runs, but the proxy or registry was not put back as it was (see above)",
                            h.release
                        ),
                        (true, None) => format!(
                            "{why}\nrelease {} stopped; the proxy or registry was not put back as it was (see above)",
                            h.release
                        ),
                    };
                    if !h.tail.is_empty() {
                        message.push_str("\nlast output of the new instance:");
                        for l in &h.tail {
                            message.push_str(&format!("\n  | {l}"));
                        }
                    }
                    tracing::error!("{}: {message}", h.kind);
                    self.end_handoff(Reply::Error {
                        message,
                        code: crate::exit::Action::Generic.code(),
                    });
                } else if !*killed && *kill_at <= now {
                    *killed = true;
                    process::signal_group(c.pid, Signal::SIGKILL);
                }
            }
        }
    }

    /// Stops the new instance after a failed step; the client hears why once it is gone.
    pub(super) fn abort_handoff(&mut self, why: String) {
        let stop_signal = self.spec.stop.signal;
        let now = Instant::now();
        let Some(h) = self.handoff.as_mut() else {
            return;
        };
        tracing::warn!("{}: {why}", h.kind);
        if let Some(c) = h.candidate.as_mut() {
            c.probes = None;
            process::signal_group(c.pid, stop_signal);
        }
        h.step = Step::Aborting {
            kill_at: crate::clock::after(now, self.spec.stop.timeout),
            killed: false,
            leader_reaped: h.candidate.is_none(),
            why,
        };
        self.tell_handoff("      stopping the new instance");
        self.handoff_progress();
    }

    /// The operator stopped the service, or the serving instance died: the handoff cannot go on.
    pub(super) fn cancel_handoff(&mut self, why: &str) {
        let Some(h) = self.handoff.as_ref() else {
            return;
        };
        // Gracefully: the state machine's stop ladder that follows waits for every
        // descendant, these included, and sends SIGKILL to what outlives its timeout.
        for pid in [
            h.candidate.as_ref().map(|c| c.pid),
            h.old.as_ref().map(|o| o.pid),
        ]
        .into_iter()
        .flatten()
        {
            process::signal_group(pid, self.spec.stop.signal);
        }
        if let Step::Switching { worker } = h.step {
            process::signal(worker, Signal::SIGTERM);
        }
        let message = format!("{} of release {} abandoned: {why}", h.kind, h.release);
        tracing::warn!("{message}");
        self.end_handoff(Reply::Error {
            message,
            code: crate::exit::Action::Generic.code(),
        });
    }

    /// The old instance is gone: record the release and answer the client.
    fn finish_handoff(&mut self) {
        let Some(h) = self.handoff.as_ref() else {
            return;
        };
        let now = Instant::now();
        let (kind, release, total) = (h.kind, h.release.clone(), now.duration_since(h.started));
        let line = format!(
            "[5/5] old instance stopped in {}",
            crate::config::human(now.duration_since(h.step_since))
        );
        let previous = h.old.as_ref().and_then(|o| o.release.clone());
        self.tell_handoff(&line);
        tracing::info!("handoff: {line}");
        let mut message = format!(
            "{} now runs release {release} (pid {}{}); {kind} took {}",
            self.spec.name,
            self.instance.as_ref().map_or(0, |i| i.pid.as_raw()),
            self.instance
                .as_ref()
                .and_then(|i| i.port)
                .map_or(String::new(), |p| format!(", port {p}")),
            crate::config::human(total)
        );
        if let Some(r) = &self.spec.release {
            if let Err(e) = crate::deploy::release::switch_current(&r.root, &release) {
                message.push_str(&format!(
                    "\nwarning: unable to point {} at {release}: {e}",
                    r.root.join("current").display()
                ));
            }
            let who = std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "root".into());
            let what = match kind {
                "rollback" => format!("{who} rolled back to release {release}"),
                _ => format!(
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
        tracing::info!("{message}");
        self.end_handoff(Reply::Ok { message });
    }
}

impl Supervisor {
    /// Outside a handoff, a (re)started instance has a new PID, maybe a new port: point the
    /// proxy and the registry at it. True if a switch worker now does that (the loop hears
    /// when it exits); false if there was nothing to wait for.
    pub(super) fn publish(&mut self) -> bool {
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
                let old = crate::deploy::registry::read_local(&self.spec).unwrap_or_default();
                use crate::deploy::registry::Pair;
                let local = crate::deploy::registry::Local {
                    port: Pair {
                        current: inst.port,
                        previous: old.port.current,
                    },
                    pid: Pair {
                        current: Some(inst.pid.as_raw()),
                        previous: old.pid.current,
                    },
                    release: Pair {
                        current: inst.release.clone(),
                        previous: old.release.current,
                    },
                    updated: crate::deploy::registry::rfc3339(std::time::SystemTime::now()),
                };
                if let Err(e) = crate::deploy::registry::write_local(&self.spec, &local) {
                    tracing::error!("{e}");
                }
            }
            return false;
        }
        let mut args: Vec<String> = vec!["__switch".into(), "--pid".into(), inst.pid.to_string()];
        if let Some(p) = inst.port {
            args.extend(["--port".into(), p.to_string()]);
        }
        if let Some(r) = &inst.release {
            args.extend(["--release".into(), r.clone()]);
        }
        self.publish_error = None;
        if let Some((old, _)) = self.publisher.take() {
            // Superseded: a newer instance is what must be published.
            process::signal(old, Signal::SIGTERM);
        }
        match spawn_worker(&self.spec.file, &self.spec.name, &args) {
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
    pub(super) fn on_publisher_output(&mut self) -> Option<String> {
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
}

/// A switch worker's stdout and stderr, read in whole lines as they come.
pub(super) struct WorkerOutput {
    /// None once the worker closed it, so the poll set no longer reports its hang-up.
    fd: Option<OwnedFd>,
    partial: Vec<u8>,
}

impl WorkerOutput {
    fn new(fd: OwnedFd) -> Self {
        WorkerOutput {
            fd: Some(fd),
            partial: Vec::new(),
        }
    }

    /// For the poll set, while the worker may still write.
    pub(super) fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// The non-empty whole lines that have arrived (the last one completed at end of file).
    fn lines(&mut self) -> Vec<String> {
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
fn spawn_worker(
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
