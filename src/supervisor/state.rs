//! The service's lifecycle as one pure transition function: `step(input, now) -> effects`.
//!
//! Nothing here touches the OS, so every transition is tested with tables and
//! no sleeps. The loop in `mod.rs` feeds inputs and performs the effects.

use super::ladder::{Ladder, Rung};
use crate::config::human;
use crate::config::{Policy, RestartSpec};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// exit(code).
    Code(i32),
    /// Killed by a signal.
    Signal(Signal),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

impl Exit {
    /// Whether this ending is a success. After a requested stop, dying of the
    /// stop signal or exiting 128+signal (a JVM's 143 for TERM) is success too.
    pub fn clean(&self, stop_requested: bool, stop_signal: Signal) -> bool {
        match *self {
            Exit::Code(0) => true,
            Exit::Code(c) if stop_requested => {
                c == 128 + stop_signal as i32 || c == 128 + Signal::SIGTERM as i32
            }
            Exit::Signal(s) if stop_requested => {
                s == stop_signal || s == Signal::SIGKILL || s == Signal::SIGTERM
            }
            _ => false,
        }
    }
}

/// Where the service is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing spawned yet.
    Idle,
    /// Spawned; probes running.
    Starting {
        pid: Pid,
        since: Instant,
        deadline: Instant,
    },
    /// Probes passed.
    Ready { pid: Pid, since: Instant },
    /// Taking the tree down.
    Stopping(Stop),
    /// Waiting to respawn after a crash.
    Backoff { until: Instant },
    /// The supervisor is done and should exit.
    Done(Outcome),
}

/// The stop ladder in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The main process, until it is reaped.
    pub leader: Option<Pid>,
    /// Dump signal and SIGKILL, when due.
    pub ladder: Ladder,
    /// What happens once no process is left.
    pub then: Then,
}

/// What follows a completed stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// The operator asked for it, or the service finished and is not restarted.
    Exit,
    /// A crash: back off and spawn again (or give up at the crash-loop limit).
    Restart,
    /// Give up with this reason.
    Fail(String),
}

/// How the supervisor ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request, or finished cleanly.
    Stopped,
    /// The service died and is not restarted; the PID file stays as LSB's "dead" marker.
    Dead(String),
    /// Never became ready, or hit the crash-loop limit.
    Failed(String),
}

/// An event the loop observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Begin supervising.
    Start,
    /// The loop spawned the service.
    Spawned(Pid),
    /// Spawning failed.
    SpawnFailed(String),
    /// Every readiness probe passed.
    ProbesPassed,
    /// The main process exited.
    LeaderExited(Exit),
    /// No process of the tree is left.
    TreeEmpty,
    /// Time passed (a deadline may have come).
    Tick,
    /// The operator asked to stop.
    StopRequested,
    /// The operator asked to start while the service backs off: spawn now.
    StartNow,
}

/// What the loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Spawn the service and feed `Spawned` or `SpawnFailed`.
    Spawn,
    /// Send this signal to the whole tree.
    SignalTree(Signal),
    /// Send the thread-dump signal to the service group.
    Dump,
    /// The service is ready (`first` for the first time in this supervisor).
    Ready { first: bool },
    /// Check whether any process is left, and feed `TreeEmpty` if none.
    CheckTree,
}

/// Timing rules the machine follows, from the config.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Restart settings.
    pub restart: RestartSpec,
    /// Readiness deadline.
    pub ready_timeout: Duration,
    /// The stop signal.
    pub stop_signal: Signal,
    /// Grace period before SIGKILL.
    pub stop_timeout: Duration,
    /// When to send the dump signal, if configured.
    pub dump_after: Option<Duration>,
}

/// The service's state plus the history that decides restarts.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Where the service is.
    pub phase: Phase,
    rules: Rules,
    /// Whether the service was ever ready under this supervisor.
    pub ever_ready: bool,
    /// Consecutive crashes since the service was last stable.
    pub attempt: u32,
    /// Restarts performed in total.
    pub restarts: u32,
    recent: VecDeque<Instant>,
    /// How the service last ended.
    pub last_exit: Option<Exit>,
    /// Whether the operator asked to stop.
    pub stop_requested: bool,
}

impl Machine {
    /// A machine that has not started anything.
    pub fn new(rules: Rules) -> Self {
        Machine {
            phase: Phase::Idle,
            rules,
            ever_ready: false,
            attempt: 0,
            restarts: 0,
            recent: VecDeque::new(),
            last_exit: None,
            stop_requested: false,
        }
    }

    /// The next moment a `Tick` would change something.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Starting { deadline, .. } => Some(*deadline),
            Phase::Backoff { until } => Some(*until),
            Phase::Stopping(stop) => stop.ladder.deadline(),
            _ => None,
        }
    }

    /// What `StopRequested` sends first, and to which leader's group, when its first effect is
    /// that signal to a leader still running (Starting or Ready): the loop may send it as a
    /// plain stop's wake begins (`supervisor/first.rs`). A unit test holds it to `step`.
    pub fn stop_signals(&self) -> Option<(Pid, Signal)> {
        match self.phase {
            Phase::Starting { pid, .. } | Phase::Ready { pid, .. } => {
                Some((pid, self.rules.stop_signal))
            }
            _ => None,
        }
    }

    /// Applies one input; `jitter` in [0, 1) randomises the backoff.
    pub fn step(&mut self, input: Input, now: Instant, jitter: f64) -> Vec<Effect> {
        use Phase::*;
        let phase = std::mem::replace(&mut self.phase, Idle);
        let (next, effects) = match (phase, input) {
            (Idle, Input::Start) => (Idle, vec![Effect::Spawn]),
            (Idle | Backoff { .. }, Input::Spawned(pid)) => (
                Starting {
                    pid,
                    since: now,
                    deadline: crate::clock::after(now, self.rules.ready_timeout),
                },
                vec![],
            ),
            (Idle | Backoff { .. }, Input::SpawnFailed(why)) => self.crashed(|| why, now, jitter),
            (Backoff { until }, Input::Tick) if until <= now => {
                (Backoff { until }, vec![Effect::Spawn])
            }
            (Backoff { .. }, Input::StartNow) => (Backoff { until: now }, vec![Effect::Spawn]),
            (Idle | Backoff { .. }, Input::StopRequested) => {
                self.stop_requested = true;
                (Done(Outcome::Stopped), vec![])
            }
            // Nothing runs: no probe, leader or tree to hear of; a start is already under way.
            (
                Idle,
                i @ (Input::ProbesPassed
                | Input::LeaderExited(_)
                | Input::TreeEmpty
                | Input::Tick
                | Input::StartNow),
            ) => ignore(Idle, &i),
            // Waiting out the backoff: too early to spawn, and nothing runs.
            (Backoff { until }, Input::Tick) => (Backoff { until }, vec![]),
            (
                b @ Backoff { .. },
                i
                @ (Input::Start | Input::ProbesPassed | Input::LeaderExited(_) | Input::TreeEmpty),
            ) => ignore(b, &i),

            (Starting { pid, .. }, Input::ProbesPassed) => {
                let first = !self.ever_ready;
                self.ever_ready = true;
                (Ready { pid, since: now }, vec![Effect::Ready { first }])
            }
            (Starting { pid, deadline, .. }, Input::Tick) if deadline <= now => {
                let why = format!("not ready within {}", human(self.rules.ready_timeout));
                let then = if self.ever_ready {
                    Then::Restart
                } else {
                    Then::Fail(why)
                };
                self.stopping(Some(pid), then, now)
            }
            (Starting { .. }, Input::LeaderExited(exit)) => {
                self.last_exit = Some(exit);
                let then = if self.stop_requested {
                    Then::Exit
                } else if self.ever_ready {
                    Then::Restart
                } else {
                    Then::Fail(format!("{exit} before it was ready"))
                };
                self.stopping(None, then, now)
            }
            (Starting { pid, .. }, Input::StopRequested) => {
                self.stop_requested = true;
                let then = if self.ever_ready {
                    Then::Exit
                } else {
                    Then::Fail("stop requested before it was ready".into())
                };
                self.stopping(Some(pid), then, now)
            }
            // Before the ready deadline time changes nothing.
            (s @ Starting { .. }, Input::Tick) => (s, vec![]),
            // Already starting; another process of the tree ending is not the leader's exit.
            (
                s @ Starting { .. },
                i @ (Input::Start
                | Input::Spawned(_)
                | Input::SpawnFailed(_)
                | Input::TreeEmpty
                | Input::StartNow),
            ) => ignore(s, &i),

            (Ready { since, .. }, Input::LeaderExited(exit)) => {
                self.last_exit = Some(exit);
                if now.duration_since(since) >= self.rules.restart.stable {
                    self.attempt = 0;
                }
                let clean = exit.clean(false, self.rules.stop_signal);
                let then = match self.rules.restart.policy {
                    Policy::Always => Then::Restart,
                    Policy::OnFailure if !clean => Then::Restart,
                    Policy::Never if !clean => {
                        Then::Fail(format!("{exit}; restart policy is never"))
                    }
                    _ => Then::Exit,
                };
                self.stopping(None, then, now)
            }
            (Ready { pid, .. }, Input::StopRequested) => {
                self.stop_requested = true;
                self.stopping(Some(pid), Then::Exit, now)
            }
            // Ready has no deadline; a late probe, a start, a helper's tree change change nothing.
            (
                r @ Ready { .. },
                i @ (Input::Start
                | Input::Spawned(_)
                | Input::SpawnFailed(_)
                | Input::ProbesPassed
                | Input::TreeEmpty
                | Input::Tick
                | Input::StartNow),
            ) => ignore(r, &i),

            (Stopping(stop), Input::LeaderExited(exit)) => {
                self.last_exit = Some(exit);
                (
                    Stopping(Stop {
                        leader: None,
                        ..stop
                    }),
                    vec![Effect::CheckTree],
                )
            }
            (Stopping(stop), Input::StopRequested) => {
                self.stop_requested = true;
                (
                    Stopping(Stop {
                        then: Then::Exit,
                        ..stop
                    }),
                    vec![],
                )
            }
            (Stopping(mut stop), Input::Tick) => {
                let effects = stop
                    .ladder
                    .tick(now)
                    .into_iter()
                    .map(|rung| match rung {
                        Rung::Dump => Effect::Dump,
                        Rung::Kill => Effect::SignalTree(Signal::SIGKILL),
                    })
                    .collect();
                (Stopping(stop), effects)
            }
            (
                Stopping(Stop {
                    leader: None, then, ..
                }),
                Input::TreeEmpty,
            ) => match then {
                Then::Exit => {
                    let outcome = match self.last_exit {
                        Some(e)
                            if !self.stop_requested && !e.clean(false, self.rules.stop_signal) =>
                        {
                            Outcome::Dead(e.to_string())
                        }
                        _ => Outcome::Stopped,
                    };
                    (Done(outcome), vec![])
                }
                Then::Fail(why) if self.ever_ready => (Done(Outcome::Dead(why)), vec![]),
                Then::Fail(why) => (Done(Outcome::Failed(why)), vec![]),
                Then::Restart => {
                    let last = self.last_exit;
                    let why =
                        move || last.map_or_else(|| "not ready in time".into(), |e| e.to_string());
                    self.crashed(why, now, jitter)
                }
            },
            // The tree is empty only once the leader is reaped too: its exit comes next.
            (
                s @ Stopping(Stop {
                    leader: Some(_), ..
                }),
                Input::TreeEmpty,
            ) => (s, vec![]),
            // Stopping: nothing starts until the tree is down.
            (
                s @ Stopping(_),
                i @ (Input::Start
                | Input::Spawned(_)
                | Input::SpawnFailed(_)
                | Input::ProbesPassed
                | Input::StartNow),
            ) => ignore(s, &i),

            // The supervisor is finishing: nothing changes the outcome.
            (
                d @ Done(_),
                i @ (Input::Start
                | Input::Spawned(_)
                | Input::SpawnFailed(_)
                | Input::ProbesPassed
                | Input::LeaderExited(_)
                | Input::TreeEmpty
                | Input::Tick
                | Input::StopRequested
                | Input::StartNow),
            ) => ignore(d, &i),
        };
        self.phase = next;
        effects
    }

    fn stopping(&mut self, leader: Option<Pid>, then: Then, now: Instant) -> (Phase, Vec<Effect>) {
        // A thread dump needs a live leader to take it.
        let dump_after = self.rules.dump_after.filter(|_| leader.is_some());
        let ladder = Ladder::start(now, self.rules.stop_timeout, dump_after);
        let mut effects = vec![Effect::SignalTree(self.rules.stop_signal)];
        if leader.is_none() {
            effects.push(Effect::CheckTree);
        }
        (
            Phase::Stopping(Stop {
                leader,
                ladder,
                then,
            }),
            effects,
        )
    }

    /// A run ended badly: back off, or give up at the crash-loop limit.
    /// The service is down and restarts when its backoff ends, or is given up on (then
    /// `why` is what the outcome says). `why` is made only then: a respawn formats nothing
    /// before its spawn.
    fn crashed(
        &mut self,
        why: impl FnOnce() -> String,
        now: Instant,
        jitter: f64,
    ) -> (Phase, Vec<Effect>) {
        if !self.ever_ready {
            return (Phase::Done(Outcome::Failed(why())), vec![]);
        }
        let r = &self.rules.restart;
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) > r.window)
        {
            self.recent.pop_front();
        }
        if let Some(max) = r.max {
            if self.recent.len() as u32 >= max {
                let msg = format!(
                    "crash loop: {max} restarts within {}; last: {}",
                    human(r.window),
                    why()
                );
                return (Phase::Done(Outcome::Failed(msg)), vec![]);
            }
        }
        self.recent.push_back(now);
        self.attempt += 1;
        self.restarts += 1;
        let delay = backoff(self.attempt, r.backoff_min, r.backoff_max, jitter);
        (
            Phase::Backoff {
                until: crate::clock::after(now, delay),
            },
            vec![],
        )
    }

    /// The state's short name, as status reports it.
    /// A handoff made `pid` the serving instance: still Ready, with a new leader.
    /// A machine for a service already serving, taken over from this supervisor's previous
    /// image (`baton reexec`): ready since `since`, with the restarts it counted.
    pub fn resumed(rules: Rules, pid: Pid, since: Instant, restarts: u32) -> Self {
        let mut m = Machine::new(rules);
        m.phase = Phase::Ready { pid, since };
        m.ever_ready = true;
        m.restarts = restarts;
        m
    }

    pub fn handed_over(&mut self, pid: Pid, rules: Rules, now: Instant) {
        if let Phase::Ready { .. } = self.phase {
            self.phase = Phase::Ready { pid, since: now };
        }
        // The new instance runs from the config on disk: its restart and stop rules are the new ones.
        self.rules = rules;
    }

    pub fn name(&self) -> &'static str {
        match &self.phase {
            Phase::Idle => "starting",
            Phase::Starting { .. } if self.ever_ready => "restarting",
            Phase::Starting { .. } => "starting",
            Phase::Ready { .. } => "ready",
            Phase::Stopping(_) => "stopping",
            // One crash after a good run is a restart; a second in a row is a loop.
            Phase::Backoff { .. } if self.attempt >= 2 => "crash-looping",
            Phase::Backoff { .. } => "restarting",
            Phase::Done(Outcome::Stopped) => "stopped",
            Phase::Done(Outcome::Dead(_)) => "dead",
            Phase::Done(Outcome::Failed(_)) => "failed",
        }
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random, within [min, max].
///
/// The first restart after a good run waits exactly `min` (which may be zero): one
/// crash is not a loop, and jitter only matters once restarts repeat.
pub fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    if attempt <= 1 {
        return min;
    }
    let exp = min
        .max(Duration::from_millis(1))
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    // Checked: a backoff near Duration::MAX must not overflow into a panic.
    let spread =
        Duration::try_from_secs_f64(half.as_secs_f64() * jitter.clamp(0.0, 1.0)).unwrap_or(half);
    half.saturating_add(spread).max(min)
}

/// An input that changes nothing in `phase`: said at debug level, so a dropped input is seen.
fn ignore(phase: Phase, input: &Input) -> (Phase, Vec<Effect>) {
    tracing::debug!("{input:?} ignored in {phase:?}");
    (phase, vec![])
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect as E;
    use Input as I;

    const MS: Duration = Duration::from_millis(1);

    fn rules(policy: Policy, max: Option<u32>) -> Rules {
        Rules {
            restart: RestartSpec {
                policy,
                backoff_min: 100 * MS,
                backoff_max: 30_000 * MS,
                max,
                window: 60_000 * MS,
                stable: 10_000 * MS,
            },
            ready_timeout: 90_000 * MS,
            stop_signal: Signal::SIGTERM,
            stop_timeout: 30_000 * MS,
            dump_after: Some(15_000 * MS),
        }
    }

    fn pid(n: i32) -> Pid {
        Pid::from_raw(n)
    }

    /// A machine whose first instance (pid 10) became ready at `t0`.
    fn ready(rules: Rules, t0: Instant) -> Machine {
        let mut m = Machine::new(rules);
        m.step(I::Start, t0, 0.5);
        m.step(I::Spawned(pid(10)), t0, 0.5);
        m.step(I::ProbesPassed, t0, 0.5);
        m
    }

    /// Runs (offset in ms, input, expected effects, expected state name) rows.
    fn run(m: &mut Machine, t0: Instant, rows: &[(u64, Input, Vec<Effect>, &str)]) {
        for (i, (at, input, effects, state)) in rows.iter().enumerate() {
            let got = m.step(input.clone(), t0 + Duration::from_millis(*at), 0.5);
            assert_eq!(&got, effects, "row {i}: effects after {input:?}");
            assert_eq!(
                m.name(),
                *state,
                "row {i}: state after {input:?} ({:?})",
                m.phase
            );
        }
    }

    #[test]
    fn start_ready_stop() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(Policy::OnFailure, None));
        run(
            &mut m,
            t0,
            &[
                (0, I::Start, vec![E::Spawn], "starting"),
                (1, I::Spawned(pid(10)), vec![], "starting"),
                (
                    500,
                    I::ProbesPassed,
                    vec![E::Ready { first: true }],
                    "ready",
                ),
                (
                    900,
                    I::StopRequested,
                    vec![E::SignalTree(Signal::SIGTERM)],
                    "stopping",
                ),
                (
                    950,
                    I::LeaderExited(Exit::Code(143)),
                    vec![E::CheckTree],
                    "stopping",
                ),
                (951, I::TreeEmpty, vec![], "stopped"),
            ],
        );
        assert_eq!(
            m.phase,
            Phase::Done(Outcome::Stopped),
            "143 after a requested stop is clean"
        );
    }

    #[test]
    fn stop_signals_names_exactly_the_first_effect_of_a_stop_request() {
        let t0 = Instant::now();
        let mut rules = rules(Policy::Always, None);
        rules.stop_signal = Signal::SIGINT;
        // Every phase a machine passes through: idle, starting, ready, stopping (restart,
        // exit), backoff, done.
        let mut machines = Vec::new();
        let mut m = Machine::new(rules.clone());
        machines.push(m.clone());
        m.step(I::Start, t0, 0.5);
        m.step(I::Spawned(pid(10)), t0, 0.5);
        machines.push(m.clone());
        m.step(I::ProbesPassed, t0, 0.5);
        machines.push(m.clone());
        let mut exited = m.clone();
        exited.step(I::LeaderExited(Exit::Code(1)), t0, 0.5);
        machines.push(exited.clone());
        exited.step(I::TreeEmpty, t0, 0.5);
        machines.push(exited);
        let mut stopping = m.clone();
        stopping.step(I::StopRequested, t0, 0.5);
        machines.push(stopping.clone());
        stopping.step(I::LeaderExited(Exit::Code(143)), t0, 0.5);
        stopping.step(I::TreeEmpty, t0, 0.5);
        machines.push(stopping);
        let mut seen = 0;
        for m in machines {
            let said = m.stop_signals();
            let mut stepped = m.clone();
            let effects = stepped.step(I::StopRequested, t0, 0.5);
            let first = match (&stepped.phase, effects.first()) {
                (
                    Phase::Stopping(Stop {
                        leader: Some(leader),
                        ..
                    }),
                    Some(E::SignalTree(sig)),
                ) if m.phase != stepped.phase => Some((*leader, *sig)),
                _ => None,
            };
            assert_eq!(said, first, "in {:?}", m.phase);
            seen += usize::from(said.is_some());
        }
        assert_eq!(seen, 2, "starting and ready signal the leader first");
    }

    #[test]
    fn crash_before_ready_fails_start_without_restart() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(Policy::Always, None));
        run(
            &mut m,
            t0,
            &[
                (0, I::Start, vec![E::Spawn], "starting"),
                (1, I::Spawned(pid(10)), vec![], "starting"),
                (
                    200,
                    I::LeaderExited(Exit::Code(3)),
                    vec![E::SignalTree(Signal::SIGTERM), E::CheckTree],
                    "stopping",
                ),
                (201, I::TreeEmpty, vec![], "failed"),
            ],
        );
        assert_eq!(
            m.phase,
            Phase::Done(Outcome::Failed(
                "exited with code 3 before it was ready".into()
            ))
        );
    }

    #[test]
    fn never_ready_times_out_then_escalates() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(Policy::OnFailure, None));
        run(
            &mut m,
            t0,
            &[
                (0, I::Start, vec![E::Spawn], "starting"),
                (0, I::Spawned(pid(10)), vec![], "starting"),
                (89_999, I::Tick, vec![], "starting"),
                (
                    90_000,
                    I::Tick,
                    vec![E::SignalTree(Signal::SIGTERM)],
                    "stopping",
                ),
                (105_000, I::Tick, vec![E::Dump], "stopping"),
                (119_999, I::Tick, vec![], "stopping"),
                (
                    120_000,
                    I::Tick,
                    vec![E::SignalTree(Signal::SIGKILL)],
                    "stopping",
                ),
                (
                    120_001,
                    I::LeaderExited(Exit::Signal(Signal::SIGKILL)),
                    vec![E::CheckTree],
                    "stopping",
                ),
                (120_002, I::TreeEmpty, vec![], "failed"),
            ],
        );
        assert_eq!(
            m.phase,
            Phase::Done(Outcome::Failed("not ready within 90s".into()))
        );
    }

    #[test]
    fn crash_after_ready_backs_off_and_restarts() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(Policy::OnFailure, None));
        run(
            &mut m,
            t0,
            &[
                (0, I::Start, vec![E::Spawn], "starting"),
                (0, I::Spawned(pid(10)), vec![], "starting"),
                (10, I::ProbesPassed, vec![E::Ready { first: true }], "ready"),
                (
                    20,
                    I::LeaderExited(Exit::Signal(Signal::SIGSEGV)),
                    vec![E::SignalTree(Signal::SIGTERM), E::CheckTree],
                    "stopping",
                ),
                (20, I::TreeEmpty, vec![], "restarting"),
                (50, I::Tick, vec![], "restarting"),
                (120, I::Tick, vec![E::Spawn], "restarting"),
                (120, I::Spawned(pid(11)), vec![], "restarting"),
                (
                    125,
                    I::ProbesPassed,
                    vec![E::Ready { first: false }],
                    "ready",
                ),
            ],
        );
        assert_eq!(m.restarts, 1);
        assert_eq!(m.attempt, 1);
    }

    #[test]
    fn clean_exit_is_not_restarted_on_failure_but_is_always() {
        for (policy, expect) in [
            (Policy::OnFailure, "stopped"),
            (Policy::Always, "restarting"),
            (Policy::Never, "stopped"),
        ] {
            let t0 = Instant::now();
            let mut m = ready(rules(policy, None), t0);
            m.step(I::LeaderExited(Exit::Code(0)), t0, 0.5);
            m.step(I::TreeEmpty, t0, 0.5);
            assert_eq!(m.name(), expect, "{policy:?}");
        }
    }

    #[test]
    fn never_policy_leaves_it_dead() {
        let t0 = Instant::now();
        let mut m = ready(rules(Policy::Never, None), t0);
        m.step(I::LeaderExited(Exit::Code(1)), t0, 0.5);
        m.step(I::TreeEmpty, t0, 0.5);
        assert_eq!(
            m.phase,
            Phase::Done(Outcome::Dead(
                "exited with code 1; restart policy is never".into()
            ))
        );
    }

    #[test]
    fn crash_loop_limit_marks_failed() {
        let t0 = Instant::now();
        let mut m = ready(rules(Policy::Always, Some(3)), t0);
        let mut t = t0;
        for n in 0..3 {
            m.step(I::LeaderExited(Exit::Code(1)), t, 0.5);
            m.step(I::TreeEmpty, t, 0.5);
            let expect = if n == 0 {
                "restarting"
            } else {
                "crash-looping"
            };
            assert_eq!(m.name(), expect, "crash {n}");
            t = m.deadline().expect("backoff deadline");
            assert_eq!(m.step(I::Tick, t, 0.5), vec![E::Spawn]);
            m.step(I::Spawned(pid(11 + n)), t, 0.5);
        }
        m.step(I::LeaderExited(Exit::Code(1)), t, 0.5);
        m.step(I::TreeEmpty, t, 0.5);
        assert_eq!(m.name(), "failed");
        assert!(
            matches!(&m.phase, Phase::Done(Outcome::Failed(r)) if r.starts_with("crash loop: 3 restarts within 60s"))
        );
    }

    #[test]
    fn stable_run_resets_backoff() {
        let t0 = Instant::now();
        let mut m = ready(rules(Policy::Always, None), t0);
        let mut t = t0;
        for _ in 0..4 {
            m.step(I::LeaderExited(Exit::Code(1)), t, 0.5);
            m.step(I::TreeEmpty, t, 0.5);
            t = m.deadline().expect("backoff");
            m.step(I::Tick, t, 0.5);
            m.step(I::Spawned(pid(20)), t, 0.5);
            m.step(I::ProbesPassed, t, 0.5);
        }
        assert_eq!(m.attempt, 4);
        let later = t + Duration::from_secs(11);
        m.step(I::LeaderExited(Exit::Code(1)), later, 0.5);
        m.step(I::TreeEmpty, later, 0.5);
        assert_eq!(
            m.attempt, 1,
            "ready longer than `stable` starts the backoff over"
        );
    }

    #[test]
    fn stop_during_backoff_is_immediate_and_stop_during_restart_wins() {
        let t0 = Instant::now();
        let mut m = ready(rules(Policy::Always, None), t0);
        m.step(I::LeaderExited(Exit::Code(1)), t0, 0.5);
        assert_eq!(m.step(I::StopRequested, t0, 0.5), vec![]);
        m.step(I::TreeEmpty, t0, 0.5);
        assert_eq!(
            m.phase,
            Phase::Done(Outcome::Stopped),
            "a stop during the crash's clean-up is not overridden by a restart"
        );

        let mut m = ready(rules(Policy::Always, None), t0);
        m.step(I::LeaderExited(Exit::Code(1)), t0, 0.5);
        m.step(I::TreeEmpty, t0, 0.5);
        assert_eq!(m.name(), "restarting");
        m.step(I::StopRequested, t0, 0.5);
        assert_eq!(m.phase, Phase::Done(Outcome::Stopped));
    }

    #[test]
    fn start_during_backoff_spawns_now() {
        let t0 = Instant::now();
        let mut m = ready(rules(Policy::Always, None), t0);
        m.step(I::LeaderExited(Exit::Code(1)), t0, 0.5);
        m.step(I::TreeEmpty, t0, 0.5);
        assert_eq!(m.name(), "restarting");
        assert_eq!(m.step(I::StartNow, t0 + MS, 0.5), vec![E::Spawn]);
        m.step(I::Spawned(pid(11)), t0 + MS, 0.5);
        assert_eq!(
            m.step(I::ProbesPassed, t0 + 2 * MS, 0.5),
            vec![E::Ready { first: false }]
        );
        // Elsewhere StartNow changes nothing: ready is ready, a stop is not overridden.
        assert_eq!(m.step(I::StartNow, t0 + 3 * MS, 0.5), vec![]);
        assert_eq!(m.name(), "ready");
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        let (min, max) = (100 * MS, 30_000 * MS);
        assert_eq!(
            backoff(1, Duration::ZERO, max, 0.7),
            Duration::ZERO,
            "a zero minimum restarts at once"
        );
        assert!(
            backoff(2, Duration::ZERO, max, 0.0) > Duration::ZERO,
            "and still grows after that"
        );
        let table = [
            (1, 0.0, 100),
            (1, 0.99, 100),
            (2, 0.0, 100),
            (2, 1.0, 200),
            (3, 0.0, 200),
            (3, 1.0, 400),
            (20, 0.0, 15_000),
            (20, 1.0, 30_000),
        ];
        for (attempt, jitter, ms) in table {
            assert_eq!(
                backoff(attempt, min, max, jitter),
                ms * MS,
                "attempt {attempt} jitter {jitter}"
            );
        }
    }

    #[test]
    fn exit_cleanliness() {
        let t = Signal::SIGTERM;
        assert!(Exit::Code(0).clean(false, t));
        assert!(!Exit::Code(143).clean(false, t));
        assert!(Exit::Code(143).clean(true, t));
        assert!(Exit::Code(130).clean(true, Signal::SIGINT));
        assert!(!Exit::Code(1).clean(true, t));
        assert!(Exit::Signal(Signal::SIGTERM).clean(true, t));
        assert!(!Exit::Signal(Signal::SIGSEGV).clean(true, t));
    }

    #[test]
    fn the_largest_durations_never_overflow_a_deadline() {
        use Input as I;
        let mut r = rules(Policy::Always, None);
        r.restart.backoff_min = Duration::MAX;
        r.restart.backoff_max = Duration::MAX;
        r.restart.window = Duration::MAX;
        r.ready_timeout = Duration::MAX;
        r.stop_timeout = Duration::MAX;
        r.dump_after = Some(Duration::MAX);
        let mut m = Machine::new(r);
        let t0 = Instant::now();
        m.step(I::Start, t0, 0.5);
        m.step(I::Spawned(Pid::from_raw(42)), t0, 0.5);
        assert!(m.deadline().is_some_and(|d| d > t0), "far, not now");
        m.step(I::ProbesPassed, t0, 0.5);
        m.step(I::LeaderExited(Exit::Code(1)), t0, 0.5);
        m.step(I::TreeEmpty, t0, 1.0);
        assert!(matches!(m.phase, Phase::Backoff { until } if until > t0));
        m.step(I::StartNow, t0, 0.5);
        m.step(I::Spawned(Pid::from_raw(43)), t0, 0.5);
        m.step(I::ProbesPassed, t0, 0.5);
        m.step(I::StopRequested, t0, 0.5);
        assert!(matches!(&m.phase, Phase::Stopping(s) if s.ladder.kill_at > t0));
        m.step(I::Tick, t0, 0.5);
        m.step(I::LeaderExited(Exit::Signal(Signal::SIGTERM)), t0, 0.5);
        m.step(I::TreeEmpty, t0, 0.5);
        assert_eq!(m.phase, Phase::Done(Outcome::Stopped));
    }

    /// Inputs that mean nothing in a phase leave it as it was and do nothing, in every phase.
    #[test]
    fn inputs_that_mean_nothing_change_nothing() {
        let t0 = Instant::now();
        let all = || {
            vec![
                I::Start,
                I::Spawned(pid(11)),
                I::SpawnFailed("x".into()),
                I::ProbesPassed,
                I::LeaderExited(Exit::Code(0)),
                I::TreeEmpty,
                I::Tick,
                I::StopRequested,
                I::StartNow,
            ]
        };
        let meaningless = |phase: &Phase, input: &Input| match phase {
            Phase::Idle => matches!(
                input,
                I::ProbesPassed | I::LeaderExited(_) | I::TreeEmpty | I::Tick | I::StartNow
            ),
            Phase::Ready { .. } => !matches!(input, I::LeaderExited(_) | I::StopRequested),
            Phase::Done(_) => true,
            _ => false,
        };
        let mut done = ready(rules(Policy::Always, None), t0);
        done.step(I::StopRequested, t0, 0.5);
        done.step(I::LeaderExited(Exit::Code(0)), t0, 0.5);
        done.step(I::TreeEmpty, t0, 0.5);
        let starts = [
            Machine::new(rules(Policy::Always, None)),
            ready(rules(Policy::Always, None), t0),
            done,
        ];
        for m in starts {
            for input in all() {
                if !meaningless(&m.phase, &input) {
                    continue;
                }
                let mut after = m.clone();
                let effects = after.step(input.clone(), t0 + 10 * MS, 0.5);
                assert_eq!(effects, vec![], "{input:?} in {:?}", m.phase);
                assert_eq!(after.phase, m.phase, "{input:?} in {:?}", m.phase);
            }
        }
    }
}
