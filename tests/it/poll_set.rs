//! The loop's epoll set (src/supervisor/poll.rs): kept from one wake to the next, it must
//! follow descriptors closed and their numbers reused by new sources, and sleep in one call.

use crate::harness::{self, wait_until, Svc};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn sh(script: &str) -> String {
    format!("[\"/bin/sh\", \"-c\", \"{script}\"]")
}

/// A service that says "up" on stdout, readiness by that line: a new instance is ready only
/// once the supervisor has read its new pipe.
fn says_up(name: &str) -> Svc {
    Svc::new(
        name,
        &sh("echo up; exec sleep 1000"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"always\"\nbackoff = [\"0ms\", \"1ms\"]",
    )
}

/// The supervisor's pipes now: descriptor number -> pipe inode.
fn pipes_of(pid: i32) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the supervisor's fds") {
        let e = e.expect("an fd entry");
        let (Ok(target), Some(n)) = (
            std::fs::read_link(e.path()),
            e.file_name().to_str().and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with("pipe:") {
            out.insert(n, target);
        }
    }
    out
}

/// A status of `svc` as JSON, or none while it cannot answer.
fn status(svc: &Svc) -> serde_json::Value {
    svc.status().1
}

#[test]
fn a_service_killed_again_and_again_is_heard_through_pipes_whose_numbers_are_reused() {
    let svc = says_up("reuse");
    svc.start();
    let sup = svc.pid_in_file().expect("supervisor pid");
    // Which pipe each descriptor number has named, over all instances.
    let mut named: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut last = status(&svc)["service_pid"].as_i64().expect("a service pid");
    for round in 0..12 {
        for (n, pipe) in pipes_of(sup) {
            named.entry(n).or_default().insert(pipe);
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(last as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the service");
        // Ready again only if the new instance's "up" came through its new pipe.
        wait_until(
            T,
            &format!("instance {round} to be replaced and ready"),
            || {
                let st = status(&svc);
                let pid = st["service_pid"].as_i64();
                if st["state"] == "ready" && pid.is_some_and(|p| p != last) {
                    last = pid.unwrap_or(last);
                    true
                } else {
                    false
                }
            },
        );
    }
    for (n, pipe) in pipes_of(sup) {
        named.entry(n).or_default().insert(pipe);
    }
    assert!(
        named.values().any(|pipes| pipes.len() > 1),
        "no descriptor number was reused by a new pipe, so this test proved nothing: {named:?}"
    );
    assert!(
        status(&svc)["restarts"].as_u64().unwrap_or(0) >= 12,
        "{:?}",
        status(&svc)
    );
    svc.stop();
}

#[test]
fn control_clients_coming_and_going_at_reused_numbers_and_indices_are_each_answered() {
    let svc = says_up("clients");
    svc.start();
    let sock = svc.dir.join("run").join("clients.sock");
    for round in 0..5 {
        // Two clients that say nothing yet hold indices 0 and 1 and two numbers while others
        // come and go after them; when the first leaves, the second's index shifts to 0.
        let first = UnixStream::connect(&sock).expect("connect a silent client");
        let mut second = UnixStream::connect(&sock).expect("connect a second client");
        for _ in 0..4 {
            // Answered after both silent ones were taken (accepted in the order they came).
            let (code, st) = svc.status();
            assert_eq!(code, 0, "round {round}: {st:?}");
            assert_eq!(st["state"], "ready", "round {round}: {st:?}");
        }
        drop(first);
        second.set_read_timeout(Some(T)).expect("timeout");
        second.write_all(b"status\n").expect("send status");
        let mut reply = String::new();
        BufReader::new(&second)
            .read_line(&mut reply)
            .expect("a reply to the client whose index moved");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("a JSON reply");
        assert_eq!(reply["state"], "ready", "round {round}: {reply}");
        drop(second);
        for _ in 0..4 {
            assert_eq!(svc.status().0, 0, "round {round}, after both left");
        }
    }
    svc.stop();
}

#[test]
fn an_idle_supervisor_sleeps_in_one_wait_for_more_than_two_seconds() {
    let svc = says_up("idle");
    svc.start();
    let sup = svc.pid_in_file().expect("supervisor pid");
    // After the idle shed the loop sleeps with no timeout.
    wait_until(T, "the supervisor to sleep with no timeout", || {
        harness::loop_sleep(sup) == Some(false)
    });
    let out = svc.path("idle.strace");
    let traced = std::process::Command::new("timeout")
        .args(["-s", "INT", "2.5", "strace", "-qq", "-o"])
        .arg(&out)
        .args(["-p", &sup.to_string()])
        .status()
        .expect("run strace (scripts/setup-deps installs it)");
    // timeout's own code when it had to stop strace; anything else is strace's failure.
    assert_eq!(traced.code(), Some(124), "strace -p {sup}: {traced:?}");
    let calls = std::fs::read_to_string(&out).expect("the trace");
    let lines: Vec<&str> = calls.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "more than one call in 2.5 s idle:\n{calls}");
    assert!(
        lines[0].starts_with("epoll_pwait2("),
        "not one epoll_pwait2:\n{calls}"
    );
    svc.stop();
}
