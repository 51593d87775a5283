//! The wake paths: what readiness and a respawn do right after a long sleep, and that doing
//! less there kept every promise (the PID file only at readiness, a straggler of the old
//! instance gone before the new one starts, in a cgroup of its own).

use crate::harness::{alive, is_root, wait_until, Svc};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The entries of `dir` whose name begins with a dot (temporary files of atomic writes).
fn dot_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// The `0::` line of /proc/PID/cgroup: the process's cgroup v2 path.
fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Where cgroup2 is mounted.
fn cgroup_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).expect("mount point")))
        })
        .expect("a cgroup2 mount")
}

fn pid_in(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn the_pid_file_appears_at_readiness_and_before_start_returns() {
    let svc = crate::harness::gated_notify_service("staged");
    let mut start = svc.spawn_baton(&["start"]);
    wait_until(LONG, "the service to run", || svc.path("started").exists());
    // Spawned, not ready: no PID file, and `start` still waits.
    assert!(!svc.pidfile().exists(), "a PID file before readiness");
    assert!(
        start.try_wait().expect("try_wait").is_none(),
        "start returned before readiness"
    );
    crate::harness::open_gate(&svc);
    let out = start.wait_with_output().expect("start's exit");
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // At the moment `start` returned the PID file was there, holding the supervisor.
    let pid = svc.pid_in_file().expect("a PID file once start returned");
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["supervisor_pid"], pid, "{st}");
    assert_eq!(st["state"], "ready", "{st}");
    // Staged under a temporary name and renamed: nothing of it is left beside the PID file.
    let run = svc.path("run");
    assert_eq!(dot_files(&run), Vec::<String>::new());
    svc.stop();
    assert!(!svc.pidfile().exists(), "the PID file outlived the stop");
    assert_eq!(dot_files(&run), Vec::<String>::new());
}

#[test]
fn a_start_that_fails_leaves_neither_pid_file_nor_staged_file() {
    let svc = Svc::new(
        "stagefail",
        r#"["/bin/sh", "-c", "echo giving up; exit 3"]"#,
        "[ready]\nnotify = true\ntimeout = \"60s\"",
    );
    let r = svc.baton(&["start"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("exited with code 3"), "{r:?}");
    assert!(
        !svc.pidfile().exists(),
        "a PID file for a service never ready"
    );
    assert_eq!(dot_files(&svc.path("run")), Vec::<String>::new());
}

#[test]
fn a_respawn_is_told_truly_and_claims_no_signal_it_did_not_send() {
    // The first run crashes at once, the second stays.
    let svc = Svc::new(
        "respawn",
        r#"["/bin/sh", "-c", "echo $$ >> {dir}/runs; [ $(wc -l < {dir}/runs) -ge 2 ] && exec sleep 1000; exit 1"]"#,
        "[restart]\npolicy = \"on-failure\"\nbackoff = [\"0ms\", \"1ms\"]",
    );
    svc.start();
    let runs = |svc: &Svc| -> Vec<i32> {
        std::fs::read_to_string(svc.path("runs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    wait_until(LONG, "the second run", || runs(&svc).len() == 2);
    let second = runs(&svc)[1];
    wait_until(LONG, "status to show the second run ready", || {
        let (_, st) = svc.status();
        st["service_pid"] == second && st["state"] == "ready"
    });
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["restarts"], 1, "{st}");
    assert_eq!(st["last_exit"], "exited with code 1", "{st}");
    // The state file (what `status` reads once the supervisor is gone) catches up before
    // the supervisor sleeps.
    let state = svc.path("state/state.json");
    wait_until(LONG, "the state file to name the second run", || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["service"]["pid"] == second)
    });
    // The first run ended alone and left nothing: no signal went anywhere, and the log says none did.
    let log = svc.log("baton.log");
    assert!(log.contains("exited with code 1"), "{log}");
    assert!(!log.contains("sent SIGTERM"), "{log}");
    svc.stop();
    assert!(!alive(second));
}

#[test]
fn a_respawn_waits_out_the_old_instances_straggler_and_runs_in_a_fresh_cgroup() {
    if !is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    // First run: a straggler in its own session that ignores SIGTERM, then a crash. Second
    // run: says whether the straggler was still there when it began.
    let script = "if [ ! -e {dir}/first ]; then echo $$ > {dir}/first; \
        setsid sh -c 'trap \\\"\\\" TERM; echo $$ > {dir}/straggler.tmp; mv {dir}/straggler.tmp {dir}/straggler; exec sleep 1000' & \
        while [ ! -e {dir}/straggler ]; do sleep 0.01; done; exit 1; fi; \
        s=$(cat {dir}/straggler); if [ -e /proc/$s ]; then echo overlap > {dir}/overlap; fi; \
        echo $$ > {dir}/second.tmp; mv {dir}/second.tmp {dir}/second; exec sleep 1000";
    let svc = Svc::new(
        "leaves",
        &format!(r#"["/bin/sh", "-c", "{script}"]"#),
        "[restart]\npolicy = \"on-failure\"\nbackoff = [\"0ms\", \"1ms\"]\n[stop]\ntimeout = \"1s\"",
    );
    svc.start();
    let (_, st) = svc.status();
    assert_eq!(st["tracking"], "cgroup", "{st}");
    let service_cgroup = PathBuf::from(st["cgroup"].as_str().expect("a cgroup path"));
    wait_until(LONG, "the straggler", || svc.path("straggler").exists());
    let straggler = pid_in(&svc.path("straggler")).expect("straggler pid");
    // It ignores SIGTERM: it lives until the stop timeout's SIGKILL, long enough to look at.
    let old_leaf = cgroup_of(straggler).expect("the straggler's cgroup");
    wait_until(LONG, "the second run", || svc.path("second").exists());
    let second = pid_in(&svc.path("second")).expect("second pid");
    assert!(
        !alive(straggler),
        "the old instance's straggler survived the respawn"
    );
    assert!(
        !svc.path("overlap").exists(),
        "the new instance started while the old instance's straggler lived"
    );
    let new_leaf = cgroup_of(second).expect("the new instance's cgroup");
    assert_ne!(
        new_leaf, old_leaf,
        "the new instance went into the old one's cgroup"
    );
    let mount = cgroup_mount();
    let under = |leaf: &str| mount.join(leaf.trim_start_matches('/'));
    assert!(under(&new_leaf).starts_with(&service_cgroup), "{new_leaf}");
    // The old leaf is removed once the instance is forgotten; only the new one is populated.
    wait_until(LONG, "the old instance's cgroup to go", || {
        !under(&old_leaf).exists()
    });
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["service_pid"], second, "{st}");
    let listed: Vec<i64> = st["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p.as_i64())
        .collect();
    assert_eq!(listed, vec![i64::from(second)], "{st}");
    svc.stop();
    assert!(!alive(second));
    assert!(
        !service_cgroup.exists(),
        "{} (and the next instance's, made ahead) outlived the stop",
        service_cgroup.display()
    );
}
