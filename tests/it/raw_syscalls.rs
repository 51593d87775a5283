//! The wake paths' system calls made without libc (issue 14, `sys::raw`: the supervisor's
//! sleep and first act, `start`'s wait and exit): what the operator sees is as before, and
//! a sleep the kernel interrupts and restarts (a stop and continue of the process, which
//! rewinds to the raw `syscall` instruction) goes on sleeping and then acts.
//!
//! The unit tests in src/sys.rs hold each raw call's results and errors to libc's;
//! scripts/wake-pages counts what the calls are for (benches/PROFILE-ready.md, "Raw round").

use crate::harness::{self, wait_asleep, wait_until};
use crate::wake_round::{counting, terms};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Stops process `pid` (SIGSTOP, seen stopped) and continues it (SIGCONT).
fn stop_and_continue(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
    wait_until(LONG, "the process to be stopped", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    });
    kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
}

#[test]
fn start_and_its_supervisor_stopped_and_continued_in_their_sleep_still_answer_ready() {
    let svc = harness::gated_notify_service("rawready");
    let starting = svc.spawn_baton(&["start"]);
    let start = starting.id() as i32;
    wait_until(LONG, "the service to run", || svc.path("started").exists());
    wait_until(LONG, "the instance to be starting", || {
        svc.status().1["state"] == "starting"
    });
    let sup = svc.status().1["supervisor_pid"]
        .as_i64()
        .expect("the supervisor's PID") as i32;
    // Both asleep in their raw ppoll (the supervisor's with the readiness timeout, `start`'s
    // without one), each stopped there and continued: the kernel restarts the call.
    wait_asleep(sup);
    wait_asleep(start);
    stop_and_continue(sup);
    stop_and_continue(start);
    wait_asleep(sup);
    wait_asleep(start);
    assert!(!svc.pidfile().exists(), "a PID file before readiness");
    harness::open_gate(&svc);
    let out = starting.wait_with_output().expect("start's output");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let pid = svc.pid_in_file().expect("the PID file at readiness");
    assert_eq!(pid, sup, "the PID file names the supervisor");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("rawready is ready (supervisor pid {sup})\n"),
        "{out:?}"
    );
    assert_eq!(svc.status().1["state"], "ready");
    let r = svc.stop();
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_supervisor_stopped_and_continued_in_its_idle_sleep_signals_once_on_stop() {
    let svc = counting("rawidle", "log = \"up\"\ntimeout = \"30s\"");
    let r = svc.start();
    assert_eq!(r.code, 0, "{r:?}");
    let sup = svc.pid_in_file().expect("the supervisor's PID");
    wait_asleep(sup);
    stop_and_continue(sup);
    wait_asleep(sup);
    assert!(harness::alive(sup));
    assert!(!svc.processes().is_empty(), "the service runs on");
    let r = svc.stop();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("rawidle stopped"), "{r:?}");
    assert_eq!(terms(&svc), 1, "one SIGTERM: {r:?}");
    assert!(svc.processes().is_empty());
    let log = svc.log("baton.log");
    assert!(log.contains("ready -> stopping (stop requested)"), "{log}");
}
