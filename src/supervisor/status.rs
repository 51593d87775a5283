//! What the loop tells about itself: the status report, the state file, a stop's progress.

use super::ladder::Ladder;
use super::state::{Outcome, Phase, Stop};
use super::Supervisor;
use crate::control::Report;
use crate::pidfile::{Identity, StateFile};
use crate::probe::Probes;
use std::time::Instant;

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

/// The answer to `status`.
pub fn report(sup: &Supervisor) -> Report {
    let now = Instant::now();
    let inst = sup.instance.as_ref();
    let mut processes = vec![];
    if inst.is_some() {
        processes = sup
            .tracker
            .members(&sup.probe_pids())
            .into_iter()
            .map(|p| p.as_raw())
            .collect();
        processes.sort_unstable();
    }
    let machine = &sup.machine;
    let service_alive = matches!(
        machine.phase,
        Phase::Starting { .. }
            | Phase::Ready { .. }
            | Phase::Stopping(Stop {
                leader: Some(_),
                ..
            })
    );
    Report {
        name: sup.spec.name.clone(),
        state: machine.name().to_string(),
        ready: matches!(machine.phase, Phase::Ready { .. }),
        supervisor_pid: Some(nix::unistd::getpid().as_raw()),
        service_pid: inst.filter(|_| service_alive).map(|i| i.pid.as_raw()),
        processes,
        port: inst.and_then(|i| i.port),
        uptime_secs: match machine.phase {
            Phase::Ready { since, .. } => Some(now.duration_since(since).as_secs_f64()),
            _ => None,
        },
        restarts: machine.restarts,
        attempt: machine.attempt,
        next_try_in_secs: match machine.phase {
            Phase::Backoff { until } => Some(until.saturating_duration_since(now).as_secs_f64()),
            _ => None,
        },
        last_exit: machine.last_exit.map(|e| e.to_string()),
        problem: sup.routing.unrouted.clone(),
        waiting_for: inst.and_then(|i| i.probes.as_ref()).map(Probes::pending),
        tail: sup.output.tail(10).into_iter().map(cap_line).collect(),
        release: inst.and_then(|i| i.release.clone()),
        handoff: sup.handoff.as_ref().map(|h| h.report(now)),
        supervisor_version: Some(crate::control::VERSION.to_string()),
        registry_lease: sup.lease.as_ref().map(crate::lease::Keeper::describe),
        tracking: Some(sup.tracker.kind().to_string()),
        cgroup: sup.tracker.cgroup_path().map(|p| p.display().to_string()),
    }
}

/// Writes the state file: what a post-mortem (`status` after the supervisor died) needs.
pub fn persist(sup: &Supervisor) {
    let machine = &sup.machine;
    let service = sup
        .instance
        .as_ref()
        .filter(|_| !matches!(machine.phase, Phase::Backoff { .. } | Phase::Done(_)))
        .map(|i| Identity {
            pid: i.pid.as_raw(),
            starttime: i.starttime,
        });
    let failure = match &machine.phase {
        Phase::Done(Outcome::Dead(r) | Outcome::Failed(r)) => Some(r.clone()),
        _ => sup.start_failure.clone(),
    };
    let (me, session) = sup.records.me();
    let state = StateFile {
        supervisor: me,
        service,
        // The service's group lives in our session: with the leader's start time, its identity.
        session,
        cgroup: sup.tracker.cgroup_path().map(|p| p.to_path_buf()),
        state: machine.name().to_string(),
        last_exit: machine.last_exit.map(|e| e.to_string()),
        failure,
    };
    sup.records.write_state(&sup.spec, &state);
}

/// What a waiting `stop` hears while the tree goes down; None outside a stop.
pub fn stop_progress(sup: &Supervisor) -> Option<String> {
    let Phase::Stopping(Stop {
        ladder: Ladder {
            kill_at, killed, ..
        },
        ..
    }) = sup.machine.phase
    else {
        return None;
    };
    let mut pids: Vec<i32> = sup
        .tracker
        .members(&sup.probe_pids())
        .iter()
        .map(|p| p.as_raw())
        .collect();
    pids.sort_unstable();
    let shown: Vec<String> = pids.iter().take(8).map(i32::to_string).collect();
    let left = kill_at.saturating_duration_since(Instant::now());
    Some(if killed {
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
    })
}

/// Why a first start failed, for the waiting `baton start`: the reason, what the probes
/// still waited for, and the service's last output.
pub fn start_failure(sup: &Supervisor, why: &str) -> String {
    let pending = sup
        .instance
        .as_ref()
        .and_then(|i| i.probes.as_ref())
        .map(Probes::pending);
    let mut msg = why.to_string();
    if let Some(p) = pending.filter(|p| !p.is_empty()) {
        msg.push_str(&format!("\nwaiting for: {p}"));
    }
    let tail = sup.output.tail(20);
    if !tail.is_empty() {
        msg.push_str(&format!(
            "\nlast output (from {}):\n",
            sup.spec.log.dir.display()
        ));
        for l in tail {
            msg.push_str(&format!("  | {l}\n"));
        }
    }
    msg
}
