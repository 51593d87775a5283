//! The instances the loop keeps: the serving one, and during a handoff the new and the old.

use super::handoff::Handoff;
use super::worker::WorkerOutput;
use crate::config::PortSpec;
use crate::control::HandoffReport;
use crate::probe::Probes;
use nix::unistd::Pid;
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
}

impl Instance {
    /// Whether every readiness check has passed.
    pub fn passed(&self) -> bool {
        !self.discovering && self.probes.as_ref().is_some_and(Probes::passed)
    }
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
