//! Routing a (re)started instance outside a handoff: the background `__switch` that points
//! the proxy and the registry at it, and whether the serving instance is routed.

use super::instance::Instance;
use super::state::Exit;
use super::worker::{self, WorkerOutput};
use crate::config::Spec;
use crate::deploy::switch::Outcome;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::os::fd::BorrowedFd;

/// The routing of the serving instance.
#[derive(Default)]
pub struct Routing {
    /// The `__switch` routing it: its PID, output and partial line.
    publisher: Option<(Pid, WorkerOutput)>,
    /// Ready, but a waiting `start` hears so only once traffic is routed; true on the first start.
    pub waiting: Option<bool>,
    /// Why the serving instance is not routed (its publish failed), for `status`.
    pub unrouted: Option<String>,
    /// What the running publisher said went wrong, before it exited.
    error: Option<String>,
}

/// How a publish ended.
pub enum Routed {
    /// Traffic reaches the instance; `waiting` is what a `start` waited for.
    Switched { waiting: Option<bool> },
    /// It does not; `why` says so.
    Failed { why: String, waiting: Option<bool> },
}

impl Routing {
    /// Whether `publish` does nothing for `spec` (no proxy, no registry, no release), so
    /// that readiness may be answered before it runs.
    pub fn nothing_to_publish(&self, spec: &Spec) -> bool {
        spec.proxy == crate::config::ProxySpec::None
            && spec.registry.etcd.is_empty()
            && spec.release.is_none()
    }

    /// Points the proxy and the registry at `inst`. True if a switch worker now does that (the
    /// loop hears when it exits); false if there was nothing to wait for.
    pub fn publish(&mut self, spec: &Spec, inst: &Instance) -> bool {
        let proxied = spec.proxy != crate::config::ProxySpec::None;
        if !proxied && spec.registry.etcd.is_empty() {
            // Only the local file: written here, no process, no wakeup later. A service
            // without releases never deploys and has no registry at all.
            if spec.release.is_some() {
                let me = crate::deploy::Backend {
                    pid: inst.pid.as_raw(),
                    port: inst.port,
                    release: inst.release.clone(),
                };
                if let Err(e) = crate::deploy::registry::publish_local(spec, &me, None) {
                    tracing::error!("{e}");
                }
            }
            return false;
        }
        let args = worker::args(&inst.side(), None);
        self.error = None;
        if let Some((old, _)) = self.publisher.take() {
            // Superseded: a newer instance is what must be published.
            crate::process::signal(old, Signal::SIGTERM);
        }
        match worker::spawn(&spec.file, &spec.name, &args) {
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

    /// Whether a publish is under way.
    pub fn running(&self) -> bool {
        self.publisher.is_some()
    }

    /// Whether `pid` is the publisher.
    pub fn is(&self, pid: Pid) -> bool {
        self.publisher.as_ref().is_some_and(|p| p.0 == pid)
    }

    /// The publisher's output, for the poll set.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.publisher.as_ref().and_then(|(_, out)| out.as_fd())
    }

    /// Logs what the publisher printed; keeps its error line for when it exits.
    pub fn on_output(&mut self) {
        if let Some(e) = self.read_output() {
            self.error = Some(e);
        }
    }

    fn read_output(&mut self) -> Option<String> {
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

    /// The publisher exited with `exit` while `name` (pid `pid`) serves: how it went.
    pub fn exited(&mut self, exit: Exit, name: &str, pid: i32) -> Routed {
        let said = self.read_output().or(self.error.take());
        self.publisher = None;
        let outcome = Outcome::from_code(match exit {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        });
        let waiting = self.waiting.take();
        if outcome == Outcome::Switched {
            self.unrouted = None;
            return Routed::Switched { waiting };
        }
        let why = format!(
            "unable to route traffic to {name} (pid {pid}): {}",
            said.unwrap_or_else(|| format!("the switch {exit}"))
        );
        tracing::error!("{why}");
        self.unrouted = Some(why.clone());
        Routed::Failed { why, waiting }
    }

    /// The service is gone: its switch still running would publish it; what it started stays.
    pub fn abandon(&mut self) {
        if let Some((pid, _)) = self.publisher.take() {
            crate::process::signal(pid, Signal::SIGTERM);
        }
    }
}
