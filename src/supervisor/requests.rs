//! Control requests: what each one asks of the loop given where the service is, decided
//! without touching anything; the loop carries the decision out.

use super::handoff::{self, Effect as HEffect, Handoff, Kind};
use super::instance::Instance;
use super::state::{Machine, Phase, Stop, Then};
use super::Supervisor;
use crate::config::{PortSpec, Spec};
use crate::control::{Envelope, Reply, Request};
use crate::exit::Action;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::time::Instant;

/// What the loop does for one request.
#[derive(Debug)]
pub enum Decision {
    /// Answer this and nothing more.
    Answer(Reply),
    /// The status report.
    Status,
    /// Start (or start now, out of a backoff) and answer when ready or failed.
    AwaitReady,
    /// Begin a deploy or rollback to this release.
    Handoff(Kind, String),
    /// Stop the service (and any handoff), telling the client how it goes.
    Stop,
    /// Send the reload signal.
    Reload,
    /// Reopen the log files.
    Reopen,
    /// Replace the supervisor's image.
    Reexec,
    /// Send this signal to the serving instance.
    Signal(Signal, Pid),
}

/// Decides `request` for service `name`, whose machine is `machine` and serving instance `serving`.
pub fn decide(
    request: std::result::Result<Envelope, String>,
    name: &str,
    machine: &Machine,
    serving: Option<&Instance>,
) -> Decision {
    let request = match request {
        Ok(e) => e.request,
        Err(message) => {
            return Decision::Answer(Reply::Error {
                message,
                code: Action::BadArgs,
            })
        }
    };
    match request {
        Request::Status => Decision::Status,
        Request::Start => match &machine.phase {
            Phase::Ready { .. } => Decision::Answer(Reply::Ok {
                message: format!("{name} is already running"),
            }),
            Phase::Done(_)
            | Phase::Stopping(Stop {
                then: Then::Exit, ..
            }) => Decision::Answer(Reply::Error {
                message: format!("{name} is {}", machine.name()),
                code: Action::Generic,
            }),
            // Answered when the service is ready, or has failed again.
            Phase::Idle
            | Phase::Starting { .. }
            | Phase::Backoff { .. }
            | Phase::Stopping(Stop {
                then: Then::Restart | Then::Fail(_),
                ..
            }) => Decision::AwaitReady,
        },
        Request::Deploy { release } | Request::Rollback { release }
            if !crate::deploy::release::valid_id(&release) =>
        {
            Decision::Answer(Reply::Error {
                message: format!("{release:?} is not a release ID"),
                code: Action::BadArgs,
            })
        }
        Request::Deploy { release } => Decision::Handoff(Kind::Deploy, release),
        Request::Rollback { release } => Decision::Handoff(Kind::Rollback, release),
        // The serving release again, from the config on disk (a service without
        // releases hands over all the same; "none" only labels its progress lines).
        Request::Reconfigure => Decision::Handoff(
            Kind::Deploy,
            serving
                .and_then(|i| i.release.clone())
                .unwrap_or_else(|| "none".into()),
        ),
        Request::Stop => Decision::Stop,
        Request::Reload => Decision::Reload,
        Request::Reopen => Decision::Reopen,
        Request::Reexec => Decision::Reexec,
        Request::Signal { signal } => match crate::config::units::parse_signal(&signal) {
            Err(e) => Decision::Answer(Reply::Error {
                message: e,
                code: Action::BadArgs,
            }),
            Ok(sig) => match signal_target(machine, serving) {
                Some(pid) => Decision::Signal(sig, pid),
                None => Decision::Answer(Reply::Error {
                    message: format!("{name} is {}: nothing to signal", machine.name()),
                    code: Action::NotRunning,
                }),
            },
        },
    }
}

/// The instance a reload or an operator's signal goes to: one that runs (starting or ready).
pub fn signal_target(machine: &Machine, serving: Option<&Instance>) -> Option<Pid> {
    match (&machine.phase, serving) {
        (Phase::Ready { .. } | Phase::Starting { .. }, Some(inst)) => Some(inst.pid),
        _ => None,
    }
}

/// A handoff ready to begin: its machine, its first effects, the config it starts from.
pub struct Begin {
    pub machine: Handoff,
    pub effects: Vec<HEffect>,
    pub spec: Spec,
}

/// `deploy ID` / `rollback ID`: the handoff to begin, or the refusal.
pub fn begin_handoff(
    sup: &Supervisor,
    kind: Kind,
    release: &str,
) -> std::result::Result<Begin, Reply> {
    let refuse = |message: String| Reply::Error {
        message,
        code: Action::Generic,
    };
    let name = &sup.spec.name;
    if let Some(h) = &sup.handoff {
        return Err(refuse(format!(
            "a {} of {name} to release {} is already in progress (step {}, for {}); wait for it to finish",
            h.machine.kind.name(),
            h.machine.release,
            h.machine.step_name(),
            crate::config::human(h.machine.started().elapsed())
        )));
    }
    let serving = match (&sup.machine.phase, &sup.instance) {
        (Phase::Ready { .. }, Some(i)) => (i.pid, i.port),
        // LSB's "not running" (7): an init script's reload of a crash-looping service.
        _ => {
            return Err(Reply::Error {
                message: format!(
                    "{name} is {}: a handoff needs a serving instance to hand over from",
                    sup.machine.name()
                ),
                code: Action::NotRunning,
            })
        }
    };
    // Every handoff starts the new instance from the config on disk: a config change is a handoff.
    let next = reread(&sup.spec)?;
    if let (PortSpec::Fixed(p), None) = (&next.port, &sup.listener) {
        return Err(refuse(format!(
            "port.mode is fixed ({p}): two instances cannot share it; use port.mode = \"auto\" or \"discover\", or a [listen] socket"
        )));
    }
    let rules = handoff::Rules {
        ready_timeout: next.ready.timeout,
        stop: handoff::StopRules::of(&next.stop),
        // The serving instance was started under the config the supervisor holds now.
        old_stop: handoff::StopRules::of(&sup.spec.stop),
        drain_timeout: next.deploy.drain_timeout,
        shared_socket: sup.listener.is_some(),
        auto_port: matches!(next.port, PortSpec::Auto { .. }),
    };
    let (machine, effects) = Handoff::begin(kind, release, serving, rules, Instant::now());
    Ok(Begin {
        machine,
        effects,
        spec: next,
    })
}

/// The config on disk now, for a handoff or a reexec: parsed, checked against the host, and
/// compared with the running one; Err is the refusal (exit 6, every problem named).
pub fn reread(running: &Spec) -> std::result::Result<Spec, Reply> {
    let refuse = |message: String| Reply::Error {
        message,
        code: Action::NotConfigured,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Policy, RestartSpec};
    use std::time::Duration;

    fn machine(phase: Phase) -> Machine {
        let ms = Duration::from_millis(1);
        let mut m = Machine::new(super::super::state::Rules {
            restart: RestartSpec {
                policy: Policy::Always,
                backoff_min: 100 * ms,
                backoff_max: 1000 * ms,
                max: None,
                window: 60_000 * ms,
                stable: 10_000 * ms,
            },
            ready_timeout: 1000 * ms,
            stop_signal: Signal::SIGTERM,
            stop_timeout: 1000 * ms,
            dump_after: None,
        });
        m.phase = phase;
        m
    }

    fn serving(release: Option<&str>) -> Instance {
        Instance {
            pid: Pid::from_raw(42),
            starttime: 1,
            port: Some(8080),
            release: release.map(String::from),
            probes: None,
            discovering: false,
            cgroup: None,
            mark: None,
        }
    }

    fn ask(r: Request) -> std::result::Result<Envelope, String> {
        Ok(Envelope::new(r))
    }

    #[test]
    fn every_request_in_every_phase_has_its_decision() {
        let now = Instant::now();
        let pid = Pid::from_raw(42);
        let ready = machine(Phase::Ready { pid, since: now });
        let backoff = machine(Phase::Backoff { until: now });
        let done = machine(Phase::Done(super::super::state::Outcome::Stopped));
        let inst = serving(Some("20260101T000000Z"));
        let d = |r, m: &Machine, i: Option<&Instance>| decide(ask(r), "web", m, i);

        assert!(matches!(d(Request::Status, &done, None), Decision::Status));
        assert!(matches!(
            d(Request::Start, &ready, Some(&inst)),
            Decision::Answer(Reply::Ok { .. })
        ));
        assert!(matches!(
            d(Request::Start, &backoff, None),
            Decision::AwaitReady
        ));
        assert!(matches!(
            d(Request::Start, &done, None),
            Decision::Answer(Reply::Error {
                code: Action::Generic,
                ..
            })
        ));
        assert!(matches!(
            d(Request::Reconfigure, &ready, Some(&inst)),
            Decision::Handoff(Kind::Deploy, r) if r == "20260101T000000Z"
        ));
        assert!(matches!(
            d(Request::Reconfigure, &ready, Some(&serving(None))),
            Decision::Handoff(Kind::Deploy, r) if r == "none"
        ));
        assert!(matches!(
            d(
                Request::Deploy {
                    release: "../etc".into()
                },
                &ready,
                Some(&inst)
            ),
            Decision::Answer(Reply::Error {
                code: Action::BadArgs,
                ..
            })
        ));
        assert!(matches!(
            d(
                Request::Signal {
                    signal: "HUP".into()
                },
                &ready,
                Some(&inst)
            ),
            Decision::Signal(Signal::SIGHUP, p) if p == pid
        ));
        assert!(matches!(
            d(
                Request::Signal {
                    signal: "HUP".into()
                },
                &backoff,
                Some(&inst)
            ),
            Decision::Answer(Reply::Error {
                code: Action::NotRunning,
                ..
            })
        ));
        assert!(matches!(
            d(
                Request::Signal {
                    signal: "NOPE".into()
                },
                &ready,
                Some(&inst)
            ),
            Decision::Answer(Reply::Error {
                code: Action::BadArgs,
                ..
            })
        ));
        assert!(matches!(
            d(Request::Stop, &ready, Some(&inst)),
            Decision::Stop
        ));
        assert!(matches!(
            decide(Err("bad".into()), "web", &ready, None),
            Decision::Answer(Reply::Error {
                code: Action::BadArgs,
                ..
            })
        ));
    }
}
