//! A zero-downtime handoff (`deploy`, `rollback`) as one pure transition function: `step(input, now) -> effects`.
//!
//! Steps, each reported to the waiting client with its duration:
//! 1. start the new instance (fresh port, or the shared listening socket);
//! 2. wait for its readiness probes;
//! 3. switch traffic and publish, in a `baton __switch` child process
//!    (nginx -t, reload, confirmation and etcd calls block; the loop must not);
//! 4. drain the old instance: observe its established connections reach 0 (proxy
//!    mode), or let it drain itself on its stop signal (shared socket mode);
//! 5. stop the old instance with the stop ladder (signal, dump, timeout, SIGKILL).
//!
//! A failure in steps 1–3 stops the new instance; the switch worker has put the
//! proxy and registry back, and the old instance never stopped serving. Nothing
//! here touches the OS: the loop feeds inputs and performs the effects, and every
//! (phase, input) pair is spelled out below.

use super::ladder::{Ladder, Rung};
use super::state::Exit;
use crate::config::human;
use crate::deploy::switch::Outcome;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a draining instance's connections are counted.
pub const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Lines of the new instance's output kept for a failure report.
const TAIL: usize = 20;

/// How many auto ports a handoff tries before it gives up on a new instance that cannot bind.
pub const PORT_TRIES: usize = 3;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `deploy`: to a newly installed release.
    Deploy,
    /// `rollback`: back to the release before `current`.
    Rollback,
}

impl Kind {
    /// The word the operator typed.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
        }
    }
}

/// Which of the two instances an effect is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The one being started.
    Candidate,
    /// The one that served before, after traffic moved.
    Old,
}

/// Timing rules from the config.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Readiness deadline of the new instance.
    pub ready_timeout: Duration,
    /// How the new instance is stopped when the handoff fails: the config it starts from.
    pub stop: StopRules,
    /// How the old instance is stopped: the settings it was started with (a config change
    /// that moves the stop signal or timeout applies to the instances started under it).
    pub old_stop: StopRules,
    /// How long the old instance may take to lose its connections.
    pub drain_timeout: Duration,
    /// Instances share one listening socket: the old one drains on its stop signal.
    pub shared_socket: bool,
    /// Port mode auto: a new instance whose port was taken may be started on another.
    pub auto_port: bool,
}

/// How one instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopRules {
    /// The stop signal.
    pub signal: Signal,
    /// Grace period before SIGKILL.
    pub timeout: Duration,
    /// The thread-dump signal and when to send it while stopping, if configured.
    pub dump: Option<(Signal, Duration)>,
}

impl StopRules {
    /// The stop settings of a config.
    pub fn of(stop: &crate::config::StopSpec) -> StopRules {
        StopRules {
            signal: stop.signal,
            timeout: stop.timeout,
            dump: stop.dump_signal.map(|s| (s, stop.dump_after)),
        }
    }
}

/// Where a handoff is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Asked the loop to start the new instance.
    Spawning,
    /// The new instance runs; its probes have not all passed.
    Starting { pid: Pid, deadline: Instant },
    /// The switch worker moves traffic and publishes; the new instance may die meanwhile.
    Switching { candidate_gone: Option<Exit> },
    /// The old instance still holds connections.
    Draining { until: Instant, next_check: Instant },
    /// The old instance got its stop signal.
    StoppingOld { ladder: Ladder, leader_gone: bool },
    /// A step failed: the new instance is being stopped.
    Aborting {
        ladder: Ladder,
        leader_gone: bool,
        why: String,
    },
    /// Over: the client has its answer.
    Done,
}

/// An event the loop observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The loop started the new instance.
    Spawned { pid: Pid, port: Option<u16> },
    /// It could not.
    SpawnFailed(String),
    /// Every readiness check of the new instance passed (and no publisher races the switch).
    Ready,
    /// The new instance's leader exited; `port_taken` if it said its bind failed.
    CandidateExited { exit: Exit, port_taken: bool },
    /// The switch worker could not be started.
    SwitchNotRun(String),
    /// The switch worker's error line, as it printed it.
    SwitchSaid(String),
    /// The switch worker exited.
    SwitchFinished(Outcome),
    /// Established connections the old instance holds on its port.
    Connections(usize),
    /// The old instance's leader exited.
    OldExited,
    /// No process of that instance's group is left.
    Gone(Who),
    /// Some child was reaped: a group being stopped may be empty now.
    Reaped,
    /// Time passed; `waiting_for` says what the new instance's probes still wait for.
    Tick { waiting_for: String },
    /// The service is being stopped, or the serving instance died: give up.
    Cancel(String),
}

/// What the loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Start the new instance on a port none of `avoid` is; feed `Spawned` or `SpawnFailed`.
    Spawn { avoid: Vec<u16> },
    /// Stop watching the new instance's readiness.
    StopProbes,
    /// Start the switch worker from the serving instance to the new one.
    RunSwitch,
    /// Signal an instance's process group.
    Signal(Who, Signal),
    /// Signal the switch worker.
    SignalSwitch(Signal),
    /// Count the old instance's established connections; feed `Connections`.
    CountConnections,
    /// Feed `Gone(who)` if that group is empty.
    CheckGone(Who),
    /// The new instance serves: it becomes the instance machine's; the old one is kept aside.
    Promote,
    /// Tell the waiting client (and the log) one line of progress.
    Tell(String),
    /// Point `current` at the release, log the revision, prune; then answer `Ok(message)`.
    Commit(String),
    /// Answer the client with this failure; the handoff is over.
    Fail(String),
}

/// One handoff in progress; at most one per service.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// deploy or rollback.
    pub kind: Kind,
    /// The release handed over to.
    pub release: String,
    /// Where it is.
    pub phase: Phase,
    rules: Rules,
    started: Instant,
    step_since: Instant,
    /// The new instance's port, once spawned.
    port: Option<u16>,
    /// Auto ports new instances could not bind (taken between baton's pick and their bind).
    tried_ports: Vec<u16>,
    /// The serving instance (the old one once traffic moved) and its port.
    serving: (Pid, Option<u16>),
    /// What the switch worker last said went wrong.
    switch_error: Option<String>,
    /// The switch failed and could not put the proxy or registry back.
    restore_failed: bool,
    /// The new instance's own last lines, for a failure report.
    tail: VecDeque<String>,
}

impl Handoff {
    /// Begins a handoff to `release` from an instance serving on `serving_port`.
    pub fn begin(
        kind: Kind,
        release: &str,
        serving: (Pid, Option<u16>),
        rules: Rules,
        now: Instant,
    ) -> (Handoff, Vec<Effect>) {
        let avoid = serving.1.into_iter().collect();
        let h = Handoff {
            kind,
            release: release.to_string(),
            phase: Phase::Spawning,
            rules,
            started: now,
            step_since: now,
            port: None,
            tried_ports: Vec::new(),
            serving,
            switch_error: None,
            restore_failed: false,
            tail: VecDeque::new(),
        };
        (h, vec![Effect::Spawn { avoid }])
    }

    /// The phase's short name, as status reports it.
    pub fn step_name(&self) -> &'static str {
        match self.phase {
            Phase::Spawning | Phase::Starting { .. } => "starting",
            Phase::Switching { .. } => "switching",
            Phase::Draining { .. } => "draining",
            Phase::StoppingOld { .. } => "stopping-old",
            Phase::Aborting { .. } => "aborting",
            Phase::Done => "done",
        }
    }

    /// When the handoff began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The earliest time a `Tick` would change something.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Starting { deadline, .. } => Some(*deadline),
            Phase::Draining {
                until, next_check, ..
            } => Some((*until).min(*next_check)),
            Phase::StoppingOld { ladder, .. } => ladder.deadline(),
            Phase::Aborting { ladder, .. } => ladder.deadline(),
            Phase::Spawning | Phase::Switching { .. } | Phase::Done => None,
        }
    }

    /// Whether the new instance's last lines mention `text`.
    pub fn said(&self, text: &str) -> bool {
        self.tail.iter().any(|l| l.contains(text))
    }

    /// Records one line the new instance printed.
    pub fn remember(&mut self, line: &str) {
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    fn since(&mut self, now: Instant) -> String {
        let took = human(now.duration_since(self.step_since));
        self.step_since = now;
        took
    }

    /// Applies one input.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        use Phase::*;
        let phase = std::mem::replace(&mut self.phase, Done);
        let (next, effects) = match (phase, input) {
            // Anything that ends the handoff from outside ends it in every phase.
            (Done, _) => (Done, vec![]),
            (phase, Input::Cancel(why)) => self.cancel(phase, &why),

            (Spawning, Input::Spawned { pid, port }) => {
                let retried = self.port.is_some();
                self.port = port;
                let on = match (self.rules.shared_socket, port) {
                    (true, _) => " on the shared listening socket".to_string(),
                    (false, Some(p)) => format!(" on port {p}"),
                    (false, None) => String::new(),
                };
                let line = if retried {
                    format!("      started it again as pid {pid}{on}")
                } else {
                    format!("[1/5] started release {} as pid {pid}{on}", self.release)
                };
                let deadline = crate::clock::after(now, self.rules.ready_timeout);
                (Starting { pid, deadline }, vec![Effect::Tell(line)])
            }
            (Spawning, Input::SpawnFailed(e)) => {
                let why = format!("step 1 (start release {}) failed: {e}", self.release);
                (Done, vec![Effect::Fail(self.failure(&why))])
            }
            (
                Spawning,
                i @ (Input::Ready
                | Input::CandidateExited { .. }
                | Input::SwitchNotRun(_)
                | Input::SwitchSaid(_)
                | Input::SwitchFinished(_)
                | Input::Connections(_)
                | Input::OldExited
                | Input::Gone(_)
                | Input::Reaped
                | Input::Tick { .. }),
            ) => ignore(Spawning, &i),

            (Starting { .. }, Input::Ready) => {
                let line = format!("[2/5] ready after {}", self.since(now));
                (
                    Switching {
                        candidate_gone: None,
                    },
                    vec![Effect::StopProbes, Effect::Tell(line), Effect::RunSwitch],
                )
            }
            (Starting { .. }, Input::CandidateExited { exit, port_taken }) => {
                let port = self.port.filter(|_| port_taken && self.rules.auto_port);
                match port {
                    Some(p) if self.tried_ports.len() < PORT_TRIES => {
                        self.tried_ports.push(p);
                        self.tail.clear();
                        let mut avoid = self.tried_ports.clone();
                        avoid.extend(self.serving.1);
                        let line = format!(
                            "      port {p} was taken before the new instance could bind it (Address already in use): starting it on another"
                        );
                        (Spawning, vec![Effect::Tell(line), Effect::Spawn { avoid }])
                    }
                    _ => {
                        let why = format!(
                            "step 2 (readiness) failed: release {} {exit} before it was ready",
                            self.release
                        );
                        self.aborted(why, now)
                    }
                }
            }
            (Starting { pid, deadline }, Input::Tick { waiting_for }) => {
                if deadline <= now {
                    let why = format!(
                        "step 2 (readiness) failed: release {} not ready within {}; waiting for: {waiting_for}",
                        self.release,
                        human(self.rules.ready_timeout)
                    );
                    self.aborting(why, now)
                } else {
                    (Starting { pid, deadline }, vec![])
                }
            }
            (
                s @ Starting { .. },
                i @ (Input::Spawned { .. }
                | Input::SpawnFailed(_)
                | Input::SwitchNotRun(_)
                | Input::SwitchSaid(_)
                | Input::SwitchFinished(_)
                | Input::Connections(_)
                | Input::OldExited
                | Input::Gone(_)
                | Input::Reaped),
            ) => ignore(s, &i),

            (Switching { .. }, Input::SwitchNotRun(e)) => {
                let why = format!("step 3 (switch traffic) failed: cannot run the switch: {e}");
                self.aborting(why, now)
            }
            (Switching { candidate_gone }, Input::SwitchSaid(e)) => {
                self.switch_error = Some(e);
                (Switching { candidate_gone }, vec![])
            }
            // The worker finishes first and, with no instance to confirm, puts the proxy back.
            (Switching { .. }, Input::CandidateExited { exit, .. }) => {
                self.switch_error
                    .get_or_insert(format!("the new instance {exit}"));
                self.tail
                    .push_back(format!("(baton: the new instance {exit})"));
                (
                    Switching {
                        candidate_gone: Some(exit),
                    },
                    vec![],
                )
            }
            (Switching { candidate_gone, .. }, Input::SwitchFinished(outcome)) => {
                match (outcome, candidate_gone) {
                    (Outcome::Switched, None) => self.promote(now),
                    (outcome, gone) => {
                        // Switched to an instance that died meanwhile is not a handoff either.
                        self.restore_failed = outcome != Outcome::Undone;
                        let said =
                            self.switch_error
                                .clone()
                                .map(|e| match e.split_once("; hint: ") {
                                    // Its hint was relayed with its error line; said once is enough.
                                    Some((e, _)) => e.to_string(),
                                    None => e,
                                });
                        let why = format!(
                            "step 3 (switch traffic) failed: {}",
                            said.unwrap_or_else(|| "the switch failed".into())
                        );
                        if gone.is_some() {
                            self.aborted(why, now)
                        } else {
                            self.aborting(why, now)
                        }
                    }
                }
            }
            (
                s @ Switching { .. },
                i @ (Input::Spawned { .. }
                | Input::SpawnFailed(_)
                | Input::Ready
                | Input::Connections(_)
                | Input::OldExited
                | Input::Gone(_)
                | Input::Reaped
                | Input::Tick { .. }),
            ) => ignore(s, &i),

            (Draining { until, next_check }, Input::Tick { .. }) => {
                if next_check <= now || until <= now {
                    let next_check = now + DRAIN_CHECK_EVERY;
                    (
                        Draining { until, next_check },
                        vec![Effect::CountConnections],
                    )
                } else {
                    (Draining { until, next_check }, vec![])
                }
            }
            (Draining { until, next_check }, Input::Connections(left)) => {
                if left == 0 || until <= now {
                    let old = self.serving.0;
                    let line = if self.rules.shared_socket {
                        format!("[4/5] sent {} to the old instance (pid {old}): it stops accepting from the shared socket and drains", self.rules.old_stop.signal)
                    } else if left == 0 {
                        format!(
                            "[4/5] old instance (pid {old}) drained in {}",
                            self.since(now)
                        )
                    } else {
                        format!("[4/5] drain timeout: old instance (pid {old}) still holds {left} connection(s)")
                    };
                    self.step_since = now;
                    let ladder = self.ladder(Who::Old, now);
                    (
                        StoppingOld {
                            ladder,
                            leader_gone: false,
                        },
                        vec![
                            Effect::Signal(Who::Old, self.rules.old_stop.signal),
                            Effect::Tell(line),
                        ],
                    )
                } else {
                    (Draining { until, next_check }, vec![])
                }
            }
            (
                d @ Draining { .. },
                i @ (Input::Spawned { .. }
                | Input::SpawnFailed(_)
                | Input::Ready
                | Input::CandidateExited { .. }
                | Input::SwitchNotRun(_)
                | Input::SwitchSaid(_)
                | Input::SwitchFinished(_)
                | Input::Gone(_)
                | Input::Reaped),
            ) => ignore(d, &i),
            // It died on its own while draining: nothing left to drain.
            (Draining { .. }, Input::OldExited) => {
                let mut ladder = self.ladder(Who::Old, now);
                ladder.dump_at = None;
                let took = self.since(now);
                let line = format!(
                    "[4/5] old instance (pid {}) exited while draining, after {took}",
                    self.serving.0
                );
                (
                    StoppingOld {
                        ladder,
                        leader_gone: true,
                    },
                    vec![
                        Effect::Tell(line),
                        Effect::Signal(Who::Old, self.rules.old_stop.signal),
                        Effect::CheckGone(Who::Old),
                    ],
                )
            }

            (StoppingOld { mut ladder, .. }, Input::OldExited) => {
                ladder.dump_at = None;
                (
                    StoppingOld {
                        ladder,
                        leader_gone: true,
                    },
                    vec![Effect::CheckGone(Who::Old)],
                )
            }
            (
                StoppingOld {
                    ladder,
                    leader_gone: true,
                },
                Input::Reaped,
            ) => (
                StoppingOld {
                    ladder,
                    leader_gone: true,
                },
                vec![Effect::CheckGone(Who::Old)],
            ),
            (
                StoppingOld {
                    leader_gone: true, ..
                },
                Input::Gone(Who::Old),
            ) => self.finish(now),
            (
                StoppingOld {
                    mut ladder,
                    leader_gone,
                },
                Input::Tick { .. },
            ) => {
                let effects = self.climb(&mut ladder, Who::Old, now);
                (
                    StoppingOld {
                        ladder,
                        leader_gone,
                    },
                    effects,
                )
            }
            (
                s @ StoppingOld { .. },
                i @ (Input::Spawned { .. }
                | Input::SpawnFailed(_)
                | Input::Ready
                | Input::CandidateExited { .. }
                | Input::SwitchNotRun(_)
                | Input::SwitchSaid(_)
                | Input::SwitchFinished(_)
                | Input::Connections(_)
                | Input::Gone(_)
                | Input::Reaped),
            ) => ignore(s, &i),

            (
                Aborting {
                    mut ladder, why, ..
                },
                Input::CandidateExited { .. },
            ) => {
                ladder.dump_at = None;
                (
                    Aborting {
                        ladder,
                        leader_gone: true,
                        why,
                    },
                    vec![Effect::CheckGone(Who::Candidate)],
                )
            }
            (
                Aborting {
                    ladder,
                    leader_gone: true,
                    why,
                },
                Input::Reaped,
            ) => (
                Aborting {
                    ladder,
                    leader_gone: true,
                    why,
                },
                vec![Effect::CheckGone(Who::Candidate)],
            ),
            (
                Aborting {
                    leader_gone: true,
                    why,
                    ..
                },
                Input::Gone(Who::Candidate),
            ) => (Done, vec![Effect::Fail(self.failure(&why))]),
            (
                Aborting {
                    mut ladder,
                    leader_gone,
                    why,
                },
                Input::Tick { .. },
            ) => {
                let effects = self.climb(&mut ladder, Who::Candidate, now);
                (
                    Aborting {
                        ladder,
                        leader_gone,
                        why,
                    },
                    effects,
                )
            }
            (
                a @ Aborting { .. },
                i @ (Input::Spawned { .. }
                | Input::SpawnFailed(_)
                | Input::Ready
                | Input::SwitchNotRun(_)
                | Input::SwitchSaid(_)
                | Input::SwitchFinished(_)
                | Input::Connections(_)
                | Input::OldExited
                | Input::Gone(_)
                | Input::Reaped),
            ) => ignore(a, &i),
        };
        self.phase = next;
        effects
    }

    /// The new instance is taking traffic: promote it, then drain the old one.
    fn promote(&mut self, now: Instant) -> (Phase, Vec<Effect>) {
        let line = format!(
            "[3/5] traffic switched and published in {}",
            self.since(now)
        );
        // The old instance keeps accepting from a shared socket until told to stop; its stop
        // signal is the drain.
        let until = if self.rules.shared_socket {
            now
        } else {
            crate::clock::after(now, self.rules.drain_timeout)
        };
        (
            Phase::Draining {
                until,
                next_check: now,
            },
            vec![
                Effect::Tell(line),
                Effect::Promote,
                Effect::CountConnections,
            ],
        )
    }

    /// How `who` is stopped.
    fn stop_of(&self, who: Who) -> StopRules {
        match who {
            Who::Old => self.rules.old_stop,
            Who::Candidate => self.rules.stop,
        }
    }

    /// The stop ladder of `who` from `now`.
    fn ladder(&self, who: Who, now: Instant) -> Ladder {
        let stop = self.stop_of(who);
        Ladder::start(now, stop.timeout, stop.dump.map(|d| d.1))
    }

    /// The rungs of `ladder` due at `now`, as signals to `who` (and a word when SIGKILL goes).
    fn climb(&self, ladder: &mut Ladder, who: Who, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        for rung in ladder.tick(now) {
            match rung {
                Rung::Dump => effects.extend(
                    self.stop_of(who)
                        .dump
                        .map(|(sig, _)| Effect::Signal(who, sig)),
                ),
                Rung::Kill => {
                    let which = match who {
                        Who::Old => "old",
                        Who::Candidate => "new",
                    };
                    effects.push(Effect::Signal(who, Signal::SIGKILL));
                    effects.push(Effect::Tell(format!(
                        "      {which} instance still running after {}: sent SIGKILL",
                        human(self.stop_of(who).timeout)
                    )));
                }
            }
        }
        effects
    }

    /// A failed step while the new instance runs: stop it with the ladder.
    fn aborting(&mut self, why: String, now: Instant) -> (Phase, Vec<Effect>) {
        (
            Phase::Aborting {
                ladder: self.ladder(Who::Candidate, now),
                leader_gone: false,
                why,
            },
            vec![
                Effect::StopProbes,
                Effect::Signal(Who::Candidate, self.rules.stop.signal),
                Effect::Tell("      stopping the new instance".into()),
            ],
        )
    }

    /// A failed step once the new instance's leader is gone: what it left goes too.
    fn aborted(&mut self, why: String, now: Instant) -> (Phase, Vec<Effect>) {
        let mut ladder = self.ladder(Who::Candidate, now);
        ladder.dump_at = None;
        (
            Phase::Aborting {
                ladder,
                leader_gone: true,
                why,
            },
            vec![
                Effect::StopProbes,
                Effect::Signal(Who::Candidate, self.rules.stop.signal),
                Effect::CheckGone(Who::Candidate),
            ],
        )
    }

    /// The failure message: why, what is true now, and the new instance's last words.
    fn failure(&self, why: &str) -> String {
        let mut message = if self.restore_failed {
            format!(
                "{why}\nrelease {} stopped; the old instance still runs, but the proxy or registry was not put back as it was (see above)",
                self.release
            )
        } else {
            format!(
                "{why}\nrelease {} stopped; the old instance kept serving",
                self.release
            )
        };
        if !self.tail.is_empty() {
            message.push_str("\nlast output of the new instance:");
            for l in &self.tail {
                message.push_str(&format!("\n  | {l}"));
            }
        }
        message
    }

    /// The old instance is gone: commit the release and answer.
    fn finish(&mut self, now: Instant) -> (Phase, Vec<Effect>) {
        let line = format!("[5/5] old instance stopped in {}", self.since(now));
        let total = human(now.duration_since(self.started));
        (
            Phase::Done,
            vec![
                Effect::Tell(line),
                Effect::Commit(format!("{} took {total}", self.kind.name())),
            ],
        )
    }

    /// Stopped from outside: both instances get the stop signal (the instance machine's
    /// ladder that follows waits for every descendant, these included), the worker TERM.
    fn cancel(&mut self, phase: Phase, why: &str) -> (Phase, Vec<Effect>) {
        let mut effects = Vec::new();
        match &phase {
            Phase::Spawning | Phase::Done => {}
            Phase::Starting { .. } | Phase::Aborting { .. } => {
                effects.push(Effect::Signal(Who::Candidate, self.rules.stop.signal));
            }
            Phase::Switching { candidate_gone, .. } => {
                if candidate_gone.is_none() {
                    effects.push(Effect::Signal(Who::Candidate, self.rules.stop.signal));
                }
                effects.push(Effect::SignalSwitch(Signal::SIGTERM));
            }
            Phase::Draining { .. } | Phase::StoppingOld { .. } => {
                effects.push(Effect::Signal(Who::Old, self.rules.old_stop.signal));
            }
        }
        effects.push(Effect::Fail(format!(
            "{} of release {} abandoned: {why}",
            self.kind.name(),
            self.release
        )));
        (Phase::Done, effects)
    }
}

/// An input that means nothing in this phase (a late or duplicate event): kept as it was.
fn ignore(phase: Phase, input: &Input) -> (Phase, Vec<Effect>) {
    tracing::debug!("handoff: {input:?} ignored in {phase:?}");
    (phase, vec![])
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect as E;
    use Input as I;

    const MS: Duration = Duration::from_millis(1);
    const OLD: i32 = 100;
    const NEW: i32 = 200;

    fn rules() -> Rules {
        Rules {
            ready_timeout: 1000 * MS,
            stop: StopRules {
                signal: Signal::SIGTERM,
                timeout: 500 * MS,
                dump: None,
            },
            old_stop: StopRules {
                signal: Signal::SIGTERM,
                timeout: 500 * MS,
                dump: None,
            },
            drain_timeout: 2000 * MS,
            shared_socket: false,
            auto_port: true,
        }
    }

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    /// A handoff begun at `t0`, with its new instance spawned on port 2002.
    fn spawned(rules: Rules, t0: Instant) -> Handoff {
        let (mut h, fx) = Handoff::begin(Kind::Deploy, "r2", (pid(OLD), Some(2001)), rules, t0);
        assert_eq!(fx, vec![E::Spawn { avoid: vec![2001] }]);
        let fx = h.step(
            I::Spawned {
                pid: pid(NEW),
                port: Some(2002),
            },
            t0,
        );
        assert!(
            matches!(&fx[..], [E::Tell(l)] if l.starts_with("[1/5] started release r2 as pid 200 on ")),
            "{fx:?}"
        );
        h
    }

    fn tick() -> Input {
        I::Tick {
            waiting_for: "GET /health".into(),
        }
    }

    fn tells(fx: &[Effect]) -> Vec<&str> {
        fx.iter()
            .filter_map(|e| match e {
                E::Tell(l) => Some(l.as_str()),
                _ => None,
            })
            .collect()
    }

    fn without_tells(fx: Vec<Effect>) -> Vec<Effect> {
        fx.into_iter()
            .filter(|e| !matches!(e, E::Tell(_)))
            .collect()
    }

    fn failure(fx: &[Effect]) -> &str {
        fx.iter()
            .find_map(|e| match e {
                E::Fail(m) => Some(m.as_str()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no failure in {fx:?}"))
    }

    /// Drives a handoff through the switch to draining.
    fn switched(t0: Instant) -> Handoff {
        let mut h = spawned(rules(), t0);
        let fx = h.step(I::Ready, t0 + 10 * MS);
        assert_eq!(without_tells(fx), vec![E::StopProbes, E::RunSwitch]);
        assert_eq!(h.step_name(), "switching");
        let fx = h.step(I::SwitchFinished(Outcome::Switched), t0 + 20 * MS);
        assert_eq!(without_tells(fx), vec![E::Promote, E::CountConnections]);
        assert_eq!(h.step_name(), "draining");
        h
    }

    #[test]
    fn a_deploy_runs_every_step_in_order() {
        let t0 = Instant::now();
        let mut h = switched(t0);
        // Connections left: keep counting every DRAIN_CHECK_EVERY.
        assert_eq!(h.step(I::Connections(2), t0 + 20 * MS), vec![]);
        assert_eq!(h.deadline(), Some(t0 + 20 * MS));
        assert_eq!(h.step(tick(), t0 + 30 * MS), vec![E::CountConnections]);
        assert_eq!(h.deadline(), Some(t0 + 30 * MS + DRAIN_CHECK_EVERY));
        assert_eq!(h.step(tick(), t0 + 40 * MS), vec![], "not due yet");
        let fx = h.step(I::Connections(0), t0 + 90 * MS);
        assert_eq!(
            tells(&fx),
            vec!["[4/5] old instance (pid 100) drained in 70ms"]
        );
        assert_eq!(
            without_tells(fx),
            vec![E::Signal(Who::Old, Signal::SIGTERM)]
        );
        assert_eq!(
            h.step(I::OldExited, t0 + 100 * MS),
            vec![E::CheckGone(Who::Old)]
        );
        // A grandchild still runs: wait for the next reap.
        assert_eq!(
            h.step(I::Reaped, t0 + 110 * MS),
            vec![E::CheckGone(Who::Old)]
        );
        let fx = h.step(I::Gone(Who::Old), t0 + 120 * MS);
        assert_eq!(
            fx,
            vec![
                E::Tell("[5/5] old instance stopped in 30ms".into()),
                E::Commit("deploy took 120ms".into())
            ]
        );
        assert_eq!(h.phase, Phase::Done);
        assert_eq!(h.step(I::Reaped, t0 + 130 * MS), vec![], "over is over");
    }

    #[test]
    fn a_candidate_that_crashes_before_ready_is_cleaned_up_and_reported_with_its_output() {
        let t0 = Instant::now();
        let mut h = spawned(rules(), t0);
        h.remember("fatal: no database");
        let fx = h.step(
            I::CandidateExited {
                exit: Exit::Code(1),
                port_taken: false,
            },
            t0 + 5 * MS,
        );
        assert_eq!(
            fx,
            vec![
                E::StopProbes,
                E::Signal(Who::Candidate, Signal::SIGTERM),
                E::CheckGone(Who::Candidate)
            ]
        );
        let fx = h.step(I::Gone(Who::Candidate), t0 + 6 * MS);
        let m = failure(&fx);
        assert!(
            m.starts_with(
                "step 2 (readiness) failed: release r2 exited with code 1 before it was ready"
            ),
            "{m}"
        );
        assert!(m.contains("the old instance kept serving"), "{m}");
        assert!(
            m.ends_with("last output of the new instance:\n  | fatal: no database"),
            "{m}"
        );
        assert_eq!(h.phase, Phase::Done);
    }

    #[test]
    fn a_candidate_that_never_gets_ready_is_stopped_with_the_ladder() {
        let t0 = Instant::now();
        let mut h = spawned(rules(), t0);
        assert_eq!(h.deadline(), Some(t0 + 1000 * MS));
        assert_eq!(h.step(tick(), t0 + 999 * MS), vec![]);
        let fx = h.step(tick(), t0 + 1000 * MS);
        assert_eq!(
            without_tells(fx),
            vec![E::StopProbes, E::Signal(Who::Candidate, Signal::SIGTERM)]
        );
        assert_eq!(h.step_name(), "aborting");
        // It ignores TERM: SIGKILL at the stop timeout, once.
        assert_eq!(h.deadline(), Some(t0 + 1500 * MS));
        assert_eq!(
            without_tells(h.step(tick(), t0 + 1500 * MS)),
            vec![E::Signal(Who::Candidate, Signal::SIGKILL)]
        );
        assert_eq!(h.step(tick(), t0 + 1600 * MS), vec![]);
        assert_eq!(h.deadline(), None);
        assert_eq!(
            h.step(I::Gone(Who::Candidate), t0 + 1601 * MS),
            vec![],
            "the leader has not been reaped yet"
        );
        assert_eq!(
            h.step(
                I::CandidateExited {
                    exit: Exit::Signal(Signal::SIGKILL),
                    port_taken: false
                },
                t0 + 1602 * MS
            ),
            vec![E::CheckGone(Who::Candidate)]
        );
        let fx = h.step(I::Gone(Who::Candidate), t0 + 1603 * MS);
        assert!(
            failure(&fx).starts_with(
                "step 2 (readiness) failed: release r2 not ready within 1s; waiting for: GET /health"
            ),
            "{fx:?}"
        );
    }

    #[test]
    fn a_failed_switch_stops_the_candidate_and_names_the_step_once() {
        let t0 = Instant::now();
        let mut h = spawned(rules(), t0);
        h.step(I::Ready, t0);
        assert_eq!(
            h.step(
                I::SwitchSaid("proxy check: nginx -t failed; hint: fix proxy.template".into()),
                t0
            ),
            vec![]
        );
        let fx = h.step(I::SwitchFinished(Outcome::Undone), t0 + 10 * MS);
        assert_eq!(
            without_tells(fx),
            vec![E::StopProbes, E::Signal(Who::Candidate, Signal::SIGTERM)]
        );
        h.step(
            I::CandidateExited {
                exit: Exit::Signal(Signal::SIGTERM),
                port_taken: false,
            },
            t0 + 20 * MS,
        );
        let fx = h.step(I::Gone(Who::Candidate), t0 + 21 * MS);
        let m = failure(&fx);
        assert!(
            m.starts_with("step 3 (switch traffic) failed: proxy check: nginx -t failed\n"),
            "{m}"
        );
        assert!(!m.contains("hint"), "the hint was relayed already: {m}");
        assert!(m.contains("the old instance kept serving"), "{m}");
    }

    #[test]
    fn a_failed_restore_says_the_old_instance_still_runs_not_that_it_kept_serving() {
        let t0 = Instant::now();
        let mut h = spawned(rules(), t0);
        h.step(I::Ready, t0);
        h.step(I::SwitchFinished(Outcome::Left), t0);
        h.step(
            I::CandidateExited {
                exit: Exit::Code(0),
                port_taken: false,
            },
            t0,
        );
        let fx = h.step(I::Gone(Who::Candidate), t0);
        let m = failure(&fx);
        assert!(
            m.contains("the old instance still runs, but the proxy or registry was not put back"),
            "{m}"
        );
        assert!(!m.contains("kept serving"), "{m}");
    }

    #[test]
    fn a_candidate_dying_during_the_switch_is_no_handoff_even_if_the_switch_succeeded() {
        let t0 = Instant::now();
        let mut h = spawned(rules(), t0);
        h.step(I::Ready, t0);
        let exit = Exit::Code(2);
        assert_eq!(
            h.step(
                I::CandidateExited {
                    exit,
                    port_taken: false
                },
                t0
            ),
            vec![]
        );
        assert_eq!(
            h.phase,
            Phase::Switching {
                candidate_gone: Some(exit)
            }
        );
        let fx = h.step(I::SwitchFinished(Outcome::Switched), t0);
        assert!(fx.contains(&E::CheckGone(Who::Candidate)), "{fx:?}");
        assert!(!fx.contains(&E::Promote), "{fx:?}");
        let fx = h.step(I::Gone(Who::Candidate), t0);
        let m = failure(&fx);
        assert!(m.contains("the new instance exited with code 2"), "{m}");
        assert!(m.contains("still runs, but the proxy or registry"), "{m}");
    }

    #[test]
    fn each_instance_is_stopped_with_the_settings_it_was_started_with() {
        let t0 = Instant::now();
        let mut r = rules();
        r.old_stop = StopRules {
            signal: Signal::SIGINT,
            timeout: 300 * MS,
            dump: None,
        };
        r.stop = StopRules {
            signal: Signal::SIGUSR2,
            timeout: 900 * MS,
            dump: None,
        };
        // The old instance: its own signal, and SIGKILL after its own timeout.
        let mut h = spawned(r.clone(), t0);
        h.step(I::Ready, t0);
        h.step(I::SwitchFinished(Outcome::Switched), t0);
        let fx = h.step(I::Connections(0), t0);
        assert_eq!(without_tells(fx), vec![E::Signal(Who::Old, Signal::SIGINT)]);
        assert_eq!(h.deadline(), Some(t0 + 300 * MS));
        let fx = h.step(tick(), t0 + 300 * MS);
        assert_eq!(
            without_tells(fx),
            vec![E::Signal(Who::Old, Signal::SIGKILL)]
        );
        // The new instance of a failed handoff: the config it was started from.
        let mut h = spawned(r, t0);
        let fx = h.step(tick(), t0 + 1000 * MS);
        assert!(
            fx.contains(&E::Signal(Who::Candidate, Signal::SIGUSR2)),
            "{fx:?}"
        );
        assert_eq!(h.deadline(), Some(t0 + 1900 * MS));
    }

    #[test]
    fn a_drain_timeout_stops_the_old_instance_anyway() {
        let t0 = Instant::now();
        let mut h = switched(t0);
        h.step(I::Connections(3), t0 + 20 * MS);
        let fx = h.step(I::Connections(3), t0 + 2020 * MS);
        assert_eq!(
            tells(&fx),
            vec!["[4/5] drain timeout: old instance (pid 100) still holds 3 connection(s)"]
        );
        assert_eq!(
            without_tells(fx),
            vec![E::Signal(Who::Old, Signal::SIGTERM)]
        );
        let fx = h.step(tick(), t0 + 2520 * MS);
        assert_eq!(
            without_tells(fx),
            vec![E::Signal(Who::Old, Signal::SIGKILL)]
        );
    }

    #[test]
    fn the_dump_signal_comes_before_sigkill_on_the_old_instance() {
        let t0 = Instant::now();
        let mut r = rules();
        r.old_stop.dump = Some((Signal::SIGQUIT, 100 * MS));
        let mut h = spawned(r, t0);
        h.step(I::Ready, t0);
        h.step(I::SwitchFinished(Outcome::Switched), t0);
        h.step(I::Connections(0), t0);
        assert_eq!(h.deadline(), Some(t0 + 100 * MS));
        assert_eq!(
            h.step(tick(), t0 + 100 * MS),
            vec![E::Signal(Who::Old, Signal::SIGQUIT)]
        );
        assert_eq!(h.deadline(), Some(t0 + 500 * MS));
    }

    #[test]
    fn in_socket_mode_the_stop_signal_is_the_drain() {
        let t0 = Instant::now();
        let mut r = rules();
        r.shared_socket = true;
        let mut h = spawned(r, t0);
        h.step(I::Ready, t0);
        h.step(I::SwitchFinished(Outcome::Switched), t0);
        let fx = h.step(I::Connections(5), t0);
        assert!(tells(&fx)[0].starts_with("[4/5] sent SIGTERM to the old instance (pid 100): it stops accepting from the shared socket"), "{fx:?}");
    }

    #[test]
    fn a_port_taken_before_the_bind_is_retried_on_others_a_few_times() {
        let t0 = Instant::now();
        let mut h = spawned(rules(), t0);
        let taken = |h: &mut Handoff, port: u16| {
            let fx = h.step(
                I::CandidateExited {
                    exit: Exit::Code(1),
                    port_taken: true,
                },
                t0,
            );
            let fx2 = h.step(
                I::Spawned {
                    pid: pid(NEW + i32::from(port)),
                    port: Some(port),
                },
                t0,
            );
            (fx, fx2)
        };
        let (fx, fx2) = taken(&mut h, 2003);
        assert_eq!(
            without_tells(fx),
            vec![E::Spawn {
                avoid: vec![2002, 2001]
            }]
        );
        assert!(
            tells(&fx2)[0].contains("started it again as pid 2203 on port 2003"),
            "{fx2:?}"
        );
        let (fx, _) = taken(&mut h, 2004);
        assert_eq!(
            without_tells(fx),
            vec![E::Spawn {
                avoid: vec![2002, 2003, 2001]
            }]
        );
        let (fx, _) = taken(&mut h, 2005);
        assert_eq!(
            without_tells(fx),
            vec![E::Spawn {
                avoid: vec![2002, 2003, 2004, 2001]
            }]
        );
        // PORT_TRIES spent: the fourth is a failure.
        let fx = h.step(
            I::CandidateExited {
                exit: Exit::Code(1),
                port_taken: true,
            },
            t0,
        );
        assert!(fx.contains(&E::CheckGone(Who::Candidate)), "{fx:?}");
        // Not port-related, or not an auto port: no retry either.
        let mut r = rules();
        r.auto_port = false;
        let mut h = spawned(r, t0);
        let fx = h.step(
            I::CandidateExited {
                exit: Exit::Code(1),
                port_taken: true,
            },
            t0,
        );
        assert!(fx.contains(&E::CheckGone(Who::Candidate)), "{fx:?}");
    }

    #[test]
    fn a_spawn_failure_ends_the_handoff_at_once() {
        let t0 = Instant::now();
        let (mut h, _) = Handoff::begin(Kind::Rollback, "r1", (pid(OLD), None), rules(), t0);
        let fx = h.step(I::SpawnFailed("no such file".into()), t0);
        assert!(
            failure(&fx).starts_with("step 1 (start release r1) failed: no such file"),
            "{fx:?}"
        );
        assert_eq!(h.phase, Phase::Done);
    }

    #[test]
    fn cancel_in_every_phase_signals_what_runs_and_answers_once() {
        let t0 = Instant::now();
        let abandoned = |fx: &[Effect]| {
            assert_eq!(
                failure(fx),
                "deploy of release r2 abandoned: the service is being stopped"
            );
        };
        let cancel = || I::Cancel("the service is being stopped".into());

        let mut h = spawned(rules(), t0);
        let fx = h.step(cancel(), t0);
        assert_eq!(fx[0], E::Signal(Who::Candidate, Signal::SIGTERM));
        abandoned(&fx);
        assert_eq!(h.phase, Phase::Done);
        assert_eq!(h.step(cancel(), t0), vec![], "answered once");

        let mut h = spawned(rules(), t0);
        h.step(I::Ready, t0);
        let fx = h.step(cancel(), t0);
        assert_eq!(
            &fx[..2],
            &[
                E::Signal(Who::Candidate, Signal::SIGTERM),
                E::SignalSwitch(Signal::SIGTERM)
            ]
        );
        abandoned(&fx);

        let mut h = switched(t0);
        let fx = h.step(cancel(), t0);
        assert_eq!(fx[0], E::Signal(Who::Old, Signal::SIGTERM));
        abandoned(&fx);

        let mut h = switched(t0);
        h.step(I::Connections(0), t0);
        assert_eq!(h.step_name(), "stopping-old");
        let fx = h.step(cancel(), t0);
        assert_eq!(fx[0], E::Signal(Who::Old, Signal::SIGTERM));
        abandoned(&fx);

        let mut h = spawned(rules(), t0);
        h.step(tick(), t0 + 1000 * MS);
        assert_eq!(h.step_name(), "aborting");
        let fx = h.step(cancel(), t0);
        assert_eq!(fx[0], E::Signal(Who::Candidate, Signal::SIGTERM));
        abandoned(&fx);
    }

    #[test]
    fn late_inputs_change_nothing() {
        let t0 = Instant::now();
        let mut h = spawned(rules(), t0);
        for late in [
            I::Connections(1),
            I::OldExited,
            I::Gone(Who::Old),
            I::Reaped,
            I::SwitchFinished(Outcome::Switched),
        ] {
            assert_eq!(h.step(late, t0), vec![]);
            assert_eq!(h.step_name(), "starting");
        }
        let mut h = switched(t0);
        assert_eq!(h.step(I::Ready, t0), vec![]);
        assert_eq!(h.step_name(), "draining");
    }
}
