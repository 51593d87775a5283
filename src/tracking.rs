//! Which processes are the service's: its cgroup where one can be had, else the subreaper's tree.
//!
//! Both answer the same questions for the supervisor (who is in the service, is it
//! empty, signal all of it) and for a post-mortem (what a dead supervisor left, proven
//! ours before anything is signalled). The fallback never counts baton's own helpers
//! (see `process::is_helper`). A panic of the supervisor takes the service down with it.

use crate::cgroup::{self, Cgroup};
use crate::config::Spec;
use crate::pidfile::{self, StateFile};
use crate::process::{self, GroupIdentity, ProcStat};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How the supervisor knows the service's processes.
pub enum Tracker {
    /// A cgroup v2 of its own: membership is proof.
    Cgroup(Cgroup),
    /// Descendants of this (subreaper) supervisor, minus baton's helpers.
    Subreaper,
}

impl Tracker {
    /// A cgroup when the config allows it and the host has one to give, else the subreaper.
    pub fn setup(spec: &Spec) -> Tracker {
        if !spec.process.cgroup {
            return Tracker::Subreaper;
        }
        match Cgroup::create(&spec.name, &spec.state_dir) {
            Ok(Some(cg)) => Tracker::Cgroup(cg),
            Ok(None) => Tracker::Subreaper,
            Err(e) => {
                tracing::warn!(
                    "unable to create a cgroup for {}: {e}; tracking its processes as a subreaper instead",
                    spec.name
                );
                Tracker::Subreaper
            }
        }
    }

    /// The tracker of this supervisor's previous image (`baton reexec`): its cgroup, reopened.
    pub fn resumed(cgroup: Option<&Path>) -> std::io::Result<Tracker> {
        match cgroup {
            Some(path) => Cgroup::reopen(path).map(Tracker::Cgroup),
            None => Ok(Tracker::Subreaper),
        }
    }

    /// "cgroup" or "subreaper", as `status --json` reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Tracker::Cgroup(_) => "cgroup",
            Tracker::Subreaper => "subreaper",
        }
    }

    /// The cgroup's path, when tracking by cgroup.
    pub fn cgroup_path(&self) -> Option<&Path> {
        match self {
            Tracker::Cgroup(cg) => Some(cg.path()),
            Tracker::Subreaper => None,
        }
    }

    /// The cgroup a spawned service starts in.
    pub fn spawn_into(&self) -> Option<crate::sys::SpawnCgroup> {
        match self {
            Tracker::Cgroup(cg) => Some(cg.spawn_into()),
            Tracker::Subreaper => None,
        }
    }

    /// A cgroup of its own for the next instance, when tracking by cgroup.
    pub fn instance(&self) -> Option<cgroup::Leaf> {
        match self {
            Tracker::Cgroup(cg) => match cg.instance() {
                Ok(leaf) => Some(leaf),
                Err(e) => {
                    tracing::warn!(
                        "unable to create an instance cgroup in {}: {e}; the instance goes in the service's",
                        cg.path().display()
                    );
                    None
                }
            },
            Tracker::Subreaper => None,
        }
    }

    /// Polled with POLLPRI: the cgroup became empty (or populated).
    pub fn events_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Tracker::Cgroup(cg) => Some(cg.events_fd()),
            Tracker::Subreaper => None,
        }
    }

    /// The service's processes now; `except` are the supervisor's own children that are not (probes).
    pub fn members(&self, except: &[Pid]) -> Vec<Pid> {
        match self {
            Tracker::Cgroup(cg) => cg.members(),
            Tracker::Subreaper => process::service_tree(except)
                .into_iter()
                .map(|p| p.pid)
                .collect(),
        }
    }

    /// Whether no process of the service is left.
    pub fn empty(&self, except: &[Pid]) -> bool {
        match self {
            Tracker::Cgroup(cg) => !cg.populated(),
            Tracker::Subreaper => process::service_tree(except).is_empty(),
        }
    }

    /// Whether [`Tracker::signal`] with `sig` and an unreaped leader begins with the killpg
    /// of the leader's group (all but a cgroup's SIGKILL, which is `cgroup.kill`).
    pub fn signals_group_first(&self, sig: Signal) -> bool {
        !matches!(self, Tracker::Cgroup(_) if sig == Signal::SIGKILL)
    }

    /// Sends `sig` to the whole service: the leader's group (killpg, while the leader is
    /// unreaped so the number is surely ours; not again when `group_sent`, the loop's first
    /// act on a plain stop, see supervisor/first.rs), then every other process of the
    /// service. Returns how many processes outside the group were signalled.
    pub fn signal(
        &self,
        leader: Option<Pid>,
        leader_unreaped: bool,
        sig: Signal,
        except: &[Pid],
        group_sent: bool,
    ) -> usize {
        match self {
            Tracker::Cgroup(cg) if sig == Signal::SIGKILL => cg.signal(sig),
            Tracker::Cgroup(cg) => {
                let group = leader.filter(|_| leader_unreaped);
                // The leader is reaped and nothing is left (a service that exited alone, the
                // usual way into a respawn): one read of cgroup.events instead of a walk.
                if group.is_none() && !cg.populated() {
                    return 0;
                }
                if let Some(g) = group.filter(|_| !group_sent) {
                    process::signal_group(g, sig);
                }
                let path = cg.path();
                let mut others = 0;
                for pid in cg.members() {
                    let ours =
                        |s: &ProcStat| group != Some(s.pgrp) && cgroup::contains(path, s.pid);
                    if let Some(fd) = process::open_verified(pid, ours) {
                        process::signal_pidfd(&fd, pid, sig);
                        others += 1;
                    }
                }
                others
            }
            Tracker::Subreaper => {
                process::signal_tree(leader, leader_unreaped, sig, except, group_sent).len()
            }
        }
    }

    /// Removes the cgroup when the supervisor is done with it.
    pub fn finish(self) {
        if let Tracker::Cgroup(cg) = self {
            cg.remove();
        }
    }
}

/// How a post-mortem proves a process was the dead supervisor's service.
pub enum Proof {
    /// It is in the service's cgroup.
    Cgroup(PathBuf),
    /// It is in the recorded group, in the recorded session, no older than the group.
    Group(GroupIdentity),
}

impl Proof {
    /// Whether `p` is the service's by this proof.
    pub fn holds(&self, p: &ProcStat) -> bool {
        match self {
            Proof::Cgroup(path) => cgroup::contains(path, p.pid),
            Proof::Group(id) => id.owns(p),
        }
    }
}

/// Processes of a previous service whose supervisor died, still alive, with what proves them ours.
pub fn orphans(state: &StateFile) -> (Vec<ProcStat>, Option<Proof>) {
    if let Some(path) = &state.cgroup {
        let procs = cgroup::members(path)
            .into_iter()
            .filter_map(process::stat)
            .filter(|p| cgroup::contains(path, p.pid))
            .collect();
        return (procs, Some(Proof::Cgroup(path.clone())));
    }
    // Without the session a reused PID cannot be told from the group: claim nothing.
    let (Some(id), Some(session)) = (state.service, state.session) else {
        return (Vec::new(), None);
    };
    let id = GroupIdentity {
        pgid: Pid::from_raw(id.pid),
        leader_starttime: id.starttime,
        session: Pid::from_raw(session),
    };
    (process::group_members(&id), Some(Proof::Group(id)))
}

/// Kills what a dead supervisor left (each process proven ours again through its pidfd);
/// returns those still alive after `limit`. Removes an emptied cgroup.
pub fn kill_orphans(state: &StateFile, limit: Duration) -> Vec<Pid> {
    let (procs, proof) = orphans(state);
    let Some(proof) = proof else {
        return Vec::new();
    };
    let left = process::kill_and_wait(&procs, |p| proof.holds(p), limit);
    if let (Proof::Cgroup(path), true) = (&proof, left.is_empty()) {
        if cgroup::members(path).is_empty() {
            let _ = cgroup::remove_tree(path);
        }
    }
    left
}

/// What a panicking supervisor must take down, kept where the panic hook can reach it.
struct Takedown {
    cgroup: Option<PathBuf>,
    /// The leader and its start time, while it is our unreaped child.
    leader: Option<(Pid, u64)>,
    spec_state: PathBuf,
    socket: PathBuf,
    /// The supervisor loop's thread: a helper thread's panic (with unwinding) kills only that thread.
    thread: std::thread::ThreadId,
}

static TAKEDOWN: Mutex<Option<Takedown>> = Mutex::new(None);

/// Installs the panic hook: a supervisor that dies of a bug takes the service with it
/// (it could no longer stop it) and leaves a state file that says what happened.
///
/// With `panic = "abort"` the hook still runs before the abort.
pub fn arm(spec: &Spec, tracker: &Tracker) {
    if let Ok(mut t) = TAKEDOWN.lock() {
        *t = Some(Takedown {
            cgroup: tracker.cgroup_path().map(Path::to_path_buf),
            leader: None,
            spec_state: pidfile::state_path(&spec.state_dir),
            socket: spec.socket.clone(),
            thread: std::thread::current().id(),
        });
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        take_down(&info.to_string());
    }));
}

/// Records the service leader (or that it was reaped), for the panic hook.
pub fn set_leader(leader: Option<(Pid, u64)>) {
    if let Ok(mut t) = TAKEDOWN.lock() {
        if let Some(t) = t.as_mut() {
            t.leader = leader;
        }
    }
}

fn take_down(why: &str) {
    // try_lock: the panic may have happened while the lock was held.
    let Ok(mut guard) = TAKEDOWN.try_lock() else {
        return;
    };
    // Unwinding, a panic elsewhere than in the loop leaves the supervisor running; aborting,
    // every panic ends the process.
    let here = std::thread::current().id();
    if cfg!(panic = "unwind") && guard.as_ref().is_some_and(|t| t.thread != here) {
        return;
    }
    let Some(t) = guard.take() else {
        return;
    };
    drop(guard);
    let limit = Duration::from_secs(5);
    let left = match &t.cgroup {
        Some(path) => {
            let procs: Vec<ProcStat> = cgroup::members(path)
                .into_iter()
                .filter_map(process::stat)
                .collect();
            cgroup::signal(path, Signal::SIGKILL);
            process::kill_and_wait(&procs, |p| cgroup::contains(path, p.pid), limit)
        }
        None => {
            // Our unreaped child: its number, and so its group, is still ours.
            if let Some((pid, start)) = t.leader {
                if process::starttime(pid) == Some(start) {
                    process::signal_group(pid, Signal::SIGKILL);
                }
            }
            let procs = process::service_tree(&[]);
            process::kill_and_wait(&procs, |_| true, limit)
        }
    };
    let mut state: StateFile = std::fs::read(&t.spec_state)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut failure =
        format!("the supervisor crashed ({why}); it killed the service before exiting");
    if !left.is_empty() {
        failure.push_str(&format!("; still alive after SIGKILL: pid {left:?}"));
    }
    state.failure = Some(failure);
    state.state = "dead".into();
    state.service = None;
    state.supervisor = None;
    if let Ok(body) = serde_json::to_vec_pretty(&state) {
        let _ = crate::files::write_atomic(&t.spec_state, &body, 0o644);
    }
    if let Some(path) = &t.cgroup {
        let _ = cgroup::remove_tree(path);
    }
    let _ = std::fs::remove_file(&t.socket);
}
