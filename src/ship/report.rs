//! What happened on each host of a rollout: the outcome, versions and phase timings the view shows.

use super::ssh::CmdOut;
use std::fmt;
use std::time::{Duration, Instant};

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// On the expected version.
    Ok,
    /// Stopped at `step` because of `reason`.
    Failed {
        /// The step that failed (connect, upload, deploy, verify, ...).
        step: &'static str,
        /// Why, in one line.
        reason: String,
    },
    /// Never touched: the rollout halted first.
    Skipped,
    /// Deployed, then handed back to its previous release.
    RolledBack,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Failed { step, reason } => write!(f, "FAILED at {step}: {reason}"),
            Outcome::Skipped => write!(f, "skipped (rollout halted)"),
            Outcome::RolledBack => write!(f, "rolled back"),
        }
    }
}

/// What happened on one host.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// The host.
    pub host: String,
    /// Version it served before (from its current release's properties).
    pub old: Option<String>,
    /// Version it reports now.
    pub new: Option<String>,
    /// Wall time of its pipeline.
    pub took: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// The failed command's output, for the report.
    pub output: String,
    /// `baton deploy` succeeded: the host's `current` moved (rollback-on-failure undoes it).
    pub deployed: bool,
    /// Wall time of each phase it went through (connect, upload, deploy, verify; rollback), in order.
    pub phases: Vec<(&'static str, Duration)>,
}

impl HostReport {
    pub(super) fn new(host: &str) -> HostReport {
        HostReport {
            host: host.to_string(),
            old: None,
            new: None,
            took: Duration::ZERO,
            outcome: Outcome::Skipped,
            output: String::new(),
            deployed: false,
            phases: Vec::new(),
        }
    }

    /// Records that `phase` began at `since` and ended now.
    pub(super) fn timed(&mut self, phase: &'static str, since: Instant) {
        self.phases.push((phase, since.elapsed()));
    }

    /// The duration of `phase`, if the host went through it.
    pub fn phase(&self, phase: &str) -> Option<Duration> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, d)| *d)
    }

    pub(super) fn fail(&mut self, step: &'static str, out: &CmdOut) {
        self.outcome = Outcome::Failed {
            step,
            reason: out.reason(),
        };
        self.output = out.output();
    }
}
