//! A wake's first act (issue 14, supervisor/first.rs): a wake that brings only this baton's
//! own plain `stop` sends its signal, and one that brings only the first READY=1 answers the
//! waiting `start`, before the loop's own step, which then runs as always. Each test holds
//! the outcome to the loop's own: one signal, not two; the same replies; and what the first
//! act must leave to the loop (a stranger's READY=1, a message it cannot read whole, a
//! second client) answered as before.

use crate::harness::{self, wait_asleep, wait_until, Spec, Svc};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Writes a line `term` to the file named by its argument at each SIGTERM, and lives on:
/// a stop that signalled the group twice would show two lines (the stop's timeout ends it).
const COUNTING: &str = "import signal, sys, time\n\
def term(s, f):\n    open(sys.argv[1], 'a').write('term\\n')\n\
signal.signal(signal.SIGTERM, term)\n\
print('up', flush=True)\n\
while True:\n    time.sleep(1000)\n";

/// A service counting its SIGTERMs in `terms`, ready by `ready` (TOML of `[ready]`).
pub(crate) fn counting(name: &str, ready: &str) -> Svc {
    Spec::new(
        name,
        &format!("[\"python3\", \"-c\", {COUNTING:?}, \"{{dir}}/terms\"]"),
    )
    .tables(&format!("[ready]\n{ready}\n[stop]\ntimeout = \"2s\""))
    .create()
}

/// How many SIGTERMs the service got.
pub(crate) fn terms(svc: &Svc) -> usize {
    std::fs::read_to_string(svc.path("terms")).map_or(0, |t| t.lines().count())
}

/// The line this baton's own client sends for `request` (Envelope::to_line without `by`).
fn own(request: &str) -> String {
    format!(
        "{{\"baton\":\"{}\",\"protocol\":1,\"request\":\"{request}\"}}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Every reply line on `conn` until the supervisor closes it (a stop's "sent SIGTERM"
/// progress comes before its "stopping" answer, as the loop has always sent them).
fn replies(conn: UnixStream) -> Vec<String> {
    BufReader::new(conn)
        .lines()
        .map_while(std::result::Result::ok)
        .collect()
}

/// How many descriptors process `pid` holds.
fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn the_socket(svc: &Svc) -> std::path::PathBuf {
    svc.path(&format!("run/{}.sock", svc.name))
}

#[test]
fn a_plain_stop_after_an_idle_wait_signals_once_and_reports_as_before() {
    let svc = counting("wrplain", "log = \"up\"\ntimeout = \"30s\"");
    let r = svc.start();
    assert_eq!(r.code, 0, "{r:?}");
    let sup = svc.pid_in_file().expect("the supervisor's PID");
    wait_asleep(sup);
    let r = svc.stop();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("wrplain stopped"), "{r:?}");
    assert_eq!(terms(&svc), 1, "one SIGTERM, not one per path: {r:?}");
    assert!(svc.processes().is_empty());
    let log = svc.log("baton.log");
    assert!(log.contains("ready -> stopping (stop requested)"), "{log}");
    assert!(log.contains("sent SIGTERM to process group"), "{log}");
}

#[test]
fn a_stop_whose_request_comes_after_its_connection_was_taken_signals_once() {
    let svc = counting("wrlate", "log = \"up\"\ntimeout = \"30s\"");
    assert_eq!(svc.start().code, 0);
    let sup = svc.pid_in_file().expect("the supervisor's PID");
    wait_asleep(sup);
    let before = fds(sup);
    let mut conn = UnixStream::connect(the_socket(&svc)).expect("connect");
    // The supervisor takes the connection and sleeps again, with no request yet: the
    // request then wakes it on the client's own descriptor.
    wait_until(LONG, "the supervisor to take the connection", || {
        fds(sup) > before
    });
    wait_asleep(sup);
    conn.write_all(own("stop").as_bytes()).expect("send stop");
    let lines = replies(conn);
    assert!(
        lines.iter().any(|l| l.contains("stopping wrlate")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("sent SIGTERM")),
        "{lines:?}"
    );
    wait_until(LONG, "the service to be gone", || {
        svc.processes().is_empty()
    });
    assert_eq!(terms(&svc), 1, "{lines:?}");
}

#[test]
fn a_stop_while_starting_signals_once_and_start_hears_why() {
    // Never ready: the stop comes while it starts (by the socket: `baton stop` would wait
    // for `start`'s command lock).
    let svc = counting("wrstarting", "notify = true\ntimeout = \"60s\"");
    let starting = svc.spawn_baton(&["start"]);
    wait_until(LONG, "the service to run", || {
        std::fs::read_to_string(svc.path("log/stdout.log")).is_ok_and(|l| l.contains("up"))
    });
    assert_eq!(svc.status().1["state"], "starting");
    let mut conn = UnixStream::connect(the_socket(&svc)).expect("connect");
    conn.write_all(own("stop").as_bytes()).expect("send stop");
    let lines = replies(conn);
    assert!(
        lines.iter().any(|l| l.contains("stopping wrstarting")),
        "{lines:?}"
    );
    let out = starting.wait_with_output().expect("start's output");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop requested before it was ready"), "{err}");
    assert!(svc.processes().is_empty());
    assert_eq!(terms(&svc), 1, "{lines:?}");
    assert!(
        !svc.pidfile().exists(),
        "no PID file for a start that failed"
    );
}

#[test]
fn a_status_and_a_stop_at_once_are_each_answered_and_the_group_signalled_once() {
    let svc = counting("wrtwo", "log = \"up\"\ntimeout = \"30s\"");
    assert_eq!(svc.start().code, 0);
    let sup = svc.pid_in_file().expect("the supervisor's PID");
    wait_asleep(sup);
    // Both requests written before the supervisor has woken for either.
    let mut status = UnixStream::connect(the_socket(&svc)).expect("connect");
    let mut stop = UnixStream::connect(the_socket(&svc)).expect("connect");
    status
        .write_all(own("status").as_bytes())
        .expect("send status");
    stop.write_all(own("stop").as_bytes()).expect("send stop");
    let status = replies(status);
    assert!(
        status.first().is_some_and(|l| l.contains("\"state\"")),
        "a status report: {status:?}"
    );
    let stop = replies(stop);
    assert!(
        stop.iter().any(|l| l.contains("stopping wrtwo")),
        "{stop:?}"
    );
    wait_until(LONG, "the service to be gone", || {
        svc.processes().is_empty()
    });
    assert_eq!(terms(&svc), 1, "{stop:?}");
}

#[test]
fn a_strangers_ready_1_is_refused_and_the_services_own_still_answers() {
    let svc = harness::gated_notify_service("wrforeign");
    let mut starting = svc.spawn_baton(&["start"]);
    wait_until(LONG, "the service to run", || svc.path("started").exists());
    wait_until(LONG, "the instance to be starting", || {
        svc.status().1["state"] == "starting"
    });
    // This test's own process: alive, allowed to send, and not the service's.
    let stranger = UnixDatagram::unbound().expect("socket");
    stranger
        .send_to(b"READY=1", svc.path("state/notify.sock"))
        .expect("send READY=1");
    wait_until(LONG, "the supervisor to refuse it", || {
        svc.log("baton.log")
            .contains("ignored a notify message from pid")
    });
    assert!(
        starting.try_wait().expect("start").is_none(),
        "start returned on a stranger's READY=1"
    );
    assert!(!svc.pidfile().exists(), "a PID file before readiness");
    assert_eq!(svc.status().1["state"], "starting");
    harness::open_gate(&svc);
    let out = starting.wait_with_output().expect("start's output");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let sup = svc.pid_in_file().expect("the PID file at readiness");
    assert!(harness::alive(sup), "the PID file names the supervisor");
    svc.stop();
}

#[test]
fn a_ready_1_in_a_message_too_long_to_peek_is_read_whole_and_answers() {
    // READY=1 past the first 128 bytes, and one at the head of a long message: both are
    // read by the loop, whole.
    for (name, message) in [
        ("wrlongtail", format!("STATUS={}\nREADY=1", "x".repeat(300))),
        ("wrlonghead", format!("READY=1\nSTATUS={}", "y".repeat(300))),
    ] {
        let svc = Svc::new(
            name,
            &format!(
                "[\"python3\", \"-c\", {:?}]",
                format!(
                    "import os, socket, time\n\
                     time.sleep(0.5)\n\
                     socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto({message:?}.encode(), os.environ['NOTIFY_SOCKET'])\n\
                     time.sleep(1000)\n"
                )
            ),
            "[ready]\nnotify = true\ntimeout = \"60s\"",
        );
        let r = svc.start();
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert!(
            svc.pid_in_file().is_some(),
            "{name}: the PID file at readiness"
        );
        assert_eq!(svc.status().1["state"], "ready", "{name}");
        svc.stop();
    }
}
