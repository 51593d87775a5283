//! The supervisor's wake paths cut to the decisive act (issue 14): a respawn that reaps the
//! old leader and writes its log lines after the spawn, a spawn that clears the supervisor's
//! signal handlers in the kernel (CLONE_CLEAR_SIGHAND) and resets only the ignored signals,
//! control clients accepted one at a time, notify messages acted on as they come. Each keeps
//! what the longer path promised.

use crate::harness::{baton_bin, is_root, wait_until, Spec, Svc};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A hexadecimal signal mask line (`SigIgn`, `SigCgt`, ...) of /proc/PID/status.
fn mask(pid: i32, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
    u64::from_str_radix(hex.trim(), 16).expect("a hexadecimal mask")
}

/// The bit of signal `sig` in a /proc signal mask.
fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// The service's PID as `status` tells it; 0 between an exit and the respawn.
fn service_pid(svc: &Svc) -> i32 {
    let (_, st) = svc.status();
    st["service_pid"].as_i64().unwrap_or(0) as i32
}

/// `baton start` from a shell that ignores SIGUSR2, SIGWINCH and SIGRTMIN+3 (as `nohup`
/// ignores SIGHUP): the supervisor inherits them ignored, and must not pass them on.
fn start_ignoring(svc: &Svc, clone3: bool) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' USR2 WINCH 37; exec \"$0\" --config \"$1\" start")
        .arg(baton_bin())
        .arg(&svc.config);
    if !clone3 {
        cmd.env("BATON_TEST_NO_CLONE3", "1");
    }
    let out = cmd.output().expect("run baton start");
    assert!(out.status.success(), "start: {out:?}");
}

fn default_signals_though_the_supervisor_ignores_some(clone3: bool) {
    if !is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    let svc = Spec::new("sigs", r#"["sleep", "1000"]"#)
        .tables("[restart]\npolicy = \"always\"\nbackoff = [\"0ms\", \"1s\"]")
        .create();
    start_ignoring(&svc, clone3);
    let sup = svc.pid_in_file().expect("the supervisor's PID");
    let ignored = bit(libc::SIGUSR2) | bit(libc::SIGWINCH) | bit(37);
    // The premise: the supervisor ignores them (and SIGPIPE, its own doing).
    assert_eq!(
        mask(sup, "SigIgn") & ignored,
        ignored,
        "the supervisor inherited them ignored"
    );
    assert_ne!(mask(sup, "SigIgn") & bit(libc::SIGPIPE), 0);
    let defaults = |pid: i32| {
        assert_eq!(mask(pid, "SigIgn"), 0, "nothing ignored in pid {pid}");
        assert_eq!(mask(pid, "SigCgt"), 0, "no handler in pid {pid}");
        assert_eq!(mask(pid, "SigBlk"), 0, "nothing blocked in pid {pid}");
    };
    let first = service_pid(&svc);
    assert!(first > 0, "a service once `start` returned");
    defaults(first);
    // A respawn (killed, the service comes back) spawns again from the same supervisor.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the service");
    let mut next = first;
    wait_until(LONG, "the service respawned", || {
        next = service_pid(&svc);
        next != first && next > 0
    });
    defaults(next);
    svc.stop();
}

#[test]
fn a_service_gets_default_signals_from_a_supervisor_that_ignores_some_by_clone3() {
    default_signals_though_the_supervisor_ignores_some(true);
}

#[test]
fn a_service_gets_default_signals_from_a_supervisor_that_ignores_some_by_fork() {
    default_signals_though_the_supervisor_ignores_some(false);
}

/// The zombie children of `pid` (state Z in /proc/CHILD/stat, parent `pid`).
fn zombies_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        if f.next() == Some("Z") && f.next().and_then(|p| p.parse().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The respawn reaps the old leader after spawning the next one, and logs its exit then:
/// the exit is still told (code, order: exit, then the spawn), the old leader does not stay
/// a zombie, and every instance is counted.
#[test]
fn a_respawn_reaps_the_old_leader_and_tells_its_exit_in_order() {
    if !is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    // Each instance lives until the test removes its flag file, then exits 3.
    let svc = Spec::new(
        "reaped",
        r#"["sh", "-c", "touch {dir}/up.$$; while [ -e {dir}/up.$$ ]; do sleep 0.05; done; exit 3"]"#,
    )
    .tables("[restart]\npolicy = \"always\"\nbackoff = [\"0ms\", \"1s\"]")
    .create();
    svc.start();
    let sup = svc.pid_in_file().expect("the supervisor's PID");
    let mut pids = vec![service_pid(&svc)];
    assert!(pids[0] > 0, "a service once `start` returned");
    for _ in 0..3 {
        let old = *pids.last().expect("a pid");
        wait_until(LONG, "the instance's flag", || {
            svc.path(&format!("up.{old}")).exists()
        });
        std::fs::remove_file(svc.path(&format!("up.{old}"))).expect("end the instance");
        let mut next = old;
        wait_until(LONG, "the next instance", || {
            next = service_pid(&svc);
            next != old && next > 0
        });
        pids.push(next);
        // Reaped: no zombie of the supervisor is left once it sleeps again.
        wait_until(LONG, "the old leader reaped", || zombies_of(sup).is_empty());
    }
    let events = svc.log("baton.log");
    for pair in pids.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        let exited = events
            .find(&format!("service (pid {old}) exited with code 3"))
            .unwrap_or_else(|| panic!("the exit of {old} told:\n{events}"));
        let spawned = events
            .find(&format!("(pid {new})"))
            .unwrap_or_else(|| panic!("the spawn of {new} told:\n{events}"));
        assert!(
            exited < spawned,
            "exit of {old} before spawn of {new}:\n{events}"
        );
    }
    let (_, st) = svc.status();
    assert_eq!(st["restarts"].as_i64(), Some(3), "{st}");
    svc.stop();
    assert!(zombies_of(sup).is_empty());
}

/// Clients are accepted one at a time, each request acted on before the next accept: many
/// at once are all answered, and a stop among them still stops.
#[test]
fn many_control_clients_at_once_are_each_answered() {
    let svc = Svc::new("many", r#"["sleep", "1000"]"#, "");
    svc.start();
    let spawned: Vec<_> = (0..16)
        .map(|_| {
            Command::new(baton_bin())
                .arg("--config")
                .arg(&svc.config)
                .args(["status", "--json"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn status")
        })
        .collect();
    for child in spawned {
        let out = child.wait_with_output().expect("status");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"service_pid\""));
    }
    let r = svc.stop();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(svc.status().0, 3, "stopped");
}

/// Notify messages are acted on as they come: READY=1 after another message in the same
/// burst still makes the service ready, and a message before it does not.
#[test]
fn ready_1_after_other_notify_messages_in_one_burst() {
    let svc = Svc::new(
        "burst",
        &format!(
            "[\"python3\", \"-c\", {:?}]",
            "import os, socket, time\n\
             a = os.environ['NOTIFY_SOCKET']\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             for m in (b'STATUS=warming up', b'MAINPID=1', b'READY=1', b'STATUS=serving'):\n    s.sendto(m, a)\n\
             print('sent', flush=True)\n\
             time.sleep(1000)\n"
        ),
        "[ready]\nnotify = true\ntimeout = \"60s\"",
    );
    let r = svc.start();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(svc.pid_in_file().is_some(), "the PID file at readiness");
    let (code, st) = svc.status();
    assert_eq!(code, 0, "running: {st}");
    wait_until(LONG, "the service's report", || {
        svc.log("stdout.log").contains("sent")
    });
    svc.stop();
}
