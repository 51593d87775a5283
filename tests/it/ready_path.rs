//! The readiness path as the caller sees it: the supervisor answers the first READY=1 (or
//! log line) as it reads it, and `start` ends at that answer, printing a line it prepared
//! before its wait; what the answer promises must all be true when `start` has exited.

use crate::harness::{self, wait_until, Svc};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The one line `start` prints for a ready service.
fn ready_line(svc: &Svc, pid: i32) -> String {
    format!("{} is ready (supervisor pid {pid})\n", svc.name)
}

/// The PID file, the state and the log agree with the answer `start` ended on.
fn assert_ready(svc: &Svc, out: &harness::Run) {
    assert_eq!(out.code, 0, "{out:?}");
    let pid = svc
        .pid_in_file()
        .expect("the PID file in place when start has exited");
    // Exactly the prepared line, once: not a second print from the usual path.
    assert!(out.stdout.ends_with(&ready_line(svc, pid)), "{out:?}");
    assert_eq!(out.stdout.matches("is ready").count(), 1, "{out:?}");
    assert!(harness::alive(pid), "the supervisor {pid} is gone");
    // The answer came before the machine stepped; it still stepped.
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["supervisor_pid"], pid, "{st}");
    wait_until(LONG, "baton.log to say the service is ready", || {
        svc.log("baton.log").contains("starting -> ready")
    });
}

#[test]
fn start_ends_at_the_answer_with_its_line_the_pid_file_and_the_ready_state() {
    let svc = harness::gated_notify_service("rpnotify");
    let start = svc.spawn_baton(&["start"]);
    wait_until(LONG, "the service to run", || svc.path("started").exists());
    assert!(!svc.pidfile().exists(), "a PID file before readiness");
    harness::open_gate(&svc);
    let out: harness::Run = start.wait_with_output().expect("start's exit").into();
    assert_eq!(out.stderr, "", "{out:?}");
    assert_ready(&svc, &out);
    // The supervisor goes on as before: a second `start` asks it and hears "ready".
    let again = svc.baton(&["start"]);
    assert_eq!(again.code, 0, "{again:?}");
    svc.stop();
    assert!(!svc.pidfile().exists(), "the PID file outlived the stop");
}

#[test]
fn a_log_probe_answers_start_as_the_line_is_read() {
    let svc = Svc::new(
        "rplog",
        r#"["/bin/sh", "-c", "echo booting; read go < {dir}/go; echo serving; exec sleep 600"]"#,
        "[ready]\nlog = \"^serving$\"\ntimeout = \"60s\"",
    );
    nix::unistd::mkfifo(&svc.path("go"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let start = svc.spawn_baton(&["start"]);
    wait_until(LONG, "the service's first line", || {
        svc.log("stdout.log").contains("booting")
    });
    assert!(!svc.pidfile().exists(), "a PID file before the line");
    std::fs::write(svc.path("go"), "go\n").expect("let the service print its line");
    let out: harness::Run = start.wait_with_output().expect("start's exit").into();
    assert_ready(&svc, &out);
    svc.stop();
}

#[test]
fn a_failed_start_still_prints_the_reason_and_the_services_last_output() {
    // A report far longer than the one read `start` makes after its wait: the rest is read
    // on from the pipe, to its end.
    let svc = Svc::new(
        "rpfail",
        r#"["/bin/sh", "-c", "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo \"output line $i of the service\"; done; exit 3"]"#,
        "[ready]\nnotify = true\ntimeout = \"60s\"",
    );
    let r = svc.baton(&["start"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, "", "a failed start printed a ready line: {r:?}");
    assert!(r.stderr.contains("exited with code 3"), "{r:?}");
    assert!(
        r.stderr.contains("output line 40 of the service"),
        "the service's last output is missing: {r:?}"
    );
    assert!(!svc.pidfile().exists(), "a PID file for a failed start");
}

#[test]
fn restart_ends_at_the_new_supervisors_answer() {
    let svc = Svc::new(
        "rprestart",
        &format!(r#"["{}", "0"]"#, harness::fixture("notify-ready")),
        "[ready]\nnotify = true\ntimeout = \"60s\"",
    );
    svc.start();
    let old = svc.pid_in_file().expect("PID file after start");
    let out = svc.baton(&["restart"]);
    assert_ready(&svc, &out);
    let new = svc.pid_in_file().expect("PID file after restart");
    assert_ne!(old, new, "the same supervisor after a restart");
    svc.stop();
}
