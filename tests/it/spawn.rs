//! Spawning the service: born in its cgroup (clone3) or moved there (the fork fallback),
//! the same setup on every path, and failures that name the step and the cause.
//!
//! `BATON_TEST_NO_CLONE3` (read by debug builds only) makes the supervisor spawn as it
//! does on kernels without clone3: fork, then the child writes itself into `cgroup.procs`.

use crate::harness;

use harness::{is_root, wait_until, Spec, Svc};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// `baton start`, with the clone3 path turned off when `clone3` is false.
fn start(svc: &Svc, clone3: bool) {
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("120")
        .arg(harness::baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .arg("start");
    if !clone3 {
        cmd.env("BATON_TEST_NO_CLONE3", "1");
    }
    let out = cmd.output().expect("run baton start");
    assert!(out.status.success(), "start: {out:?}");
}

/// The `NAME:\tVALUE` line of /proc/PID/status.
fn status_field(pid: i64, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

/// Every setup step, read back from /proc of the exec'd service (a bare `sleep`, no shell
/// in between): identity, umask, signals, descriptors, group, directory, environment, cgroup.
fn service_is_set_up_completely(cgroup: bool, clone3: bool) {
    if !is_root() {
        eprintln!("skipped: needs root to switch users and make cgroups");
        return;
    }
    let process = if cgroup {
        ""
    } else {
        "[process]\ncgroup = false\n"
    };
    let svc = Spec::new("setup", r#"["sleep", "1000"]"#)
        .top("user = \"nobody\"\numask = \"027\"\nworkdir = \"{dir}/work\"")
        .tables(process)
        .create();
    std::fs::create_dir(svc.path("work")).expect("workdir");
    start(&svc, clone3);
    let (_, st) = svc.status();
    let pid = st["service_pid"].as_i64().expect("service pid");
    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Groups"), "65534");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Umask"), "0027");
    assert_eq!(
        status_field(pid, "SigBlk"),
        "0000000000000000",
        "mask reset"
    );
    assert_eq!(
        status_field(pid, "SigIgn"),
        "0000000000000000",
        "SIGPIPE reset"
    );
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .map(|e| e.expect("fd").file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"], "nothing of the supervisor's leaks in");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).expect("stdin"),
        Path::new("/dev/null")
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let pgrp = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .nth(2);
    assert_eq!(pgrp, Some(pid.to_string().as_str()), "a group of its own");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        svc.path("work")
    );
    let env = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let env: Vec<&[u8]> = env.split(|&b| b == 0).collect();
    assert!(env
        .iter()
        .any(|kv| kv.starts_with(b"PATH=/usr/local/sbin:")));
    assert!(env.iter().any(|kv| *kv == b"USER=nobody"));
    assert!(!env.iter().any(|kv| kv.starts_with(b"BATON_HELPER=")));
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2 line");
    if cgroup {
        assert_eq!(st["tracking"], "cgroup", "{st}");
        let path = st["cgroup"].as_str().expect("cgroup path");
        // Each instance is born in a cgroup of its own below the service's.
        let (service, leaf) = own.rsplit_once('/').expect("a cgroup below the service's");
        assert!(path.ends_with(service), "{path} vs {own}");
        assert!(leaf.starts_with("instance-"), "{own}");
        let members = std::fs::read_to_string(Path::new(path).join(leaf).join("cgroup.procs"))
            .expect("cgroup.procs");
        assert_eq!(members.trim(), pid.to_string());
    } else {
        assert_eq!(st["tracking"], "subreaper", "{st}");
        assert!(!own.contains("/baton/"), "{own}");
    }
    let events = svc.log("baton.log");
    assert_eq!(
        events.contains("spawning with fork, the child joining its cgroup"),
        !clone3,
        "{events}"
    );
    svc.stop();
}

#[test]
fn born_in_its_cgroup_by_clone3_with_every_setup_step() {
    service_is_set_up_completely(true, true);
}

#[test]
fn moved_into_its_cgroup_where_clone3_is_refused_with_every_setup_step() {
    service_is_set_up_completely(true, false);
}

#[test]
fn without_cgroup_every_setup_step_still_happens() {
    service_is_set_up_completely(false, true);
}

/// An executable without `#!` runs through /bin/sh, as execvp does it.
#[test]
fn a_script_without_an_interpreter_line_runs_through_sh() {
    let svc = Spec::new("nobang", r#"["{dir}/app"]"#)
        .tables("[ready]\nlog = \"^run by sh$\"")
        .create();
    let app = svc.path("app");
    std::fs::write(&app, "echo run by sh\nexec sleep 1000\n").expect("write");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    svc.start();
    svc.stop();
}

/// A service that exits once the test writes to its FIFO, after running `then`; a
/// `work` directory is made for it first. Started as [`start`] does with `clone3`.
fn exits_on_cue(name: &str, then: &str, top: &str, clone3: bool) -> Svc {
    let svc = Spec::new(name, r#"["{dir}/app"]"#)
        .top(top)
        .tables("[restart]\npolicy = \"always\"\nbackoff = [\"0ms\", \"1s\"]")
        .create();
    std::fs::create_dir(svc.path("work")).expect("workdir");
    let fifo = svc.path("cue");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let app = svc.path("app");
    std::fs::write(
        &app,
        format!("#!/bin/sh\nread x < {}\n{then}\nexit 1\n", fifo.display()),
    )
    .expect("write");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    start(&svc, clone3);
    std::fs::write(&fifo, "go\n").expect("cue");
    svc
}

fn wait_for_event(svc: &Svc, text: &str) {
    wait_until(LONG, &format!("{text:?} in baton.log"), || {
        svc.log("baton.log").contains(text)
    });
}

/// The program vanished before a respawn: execve's error, with the program named.
#[test]
fn a_failed_exec_at_respawn_names_the_program_and_the_cause() {
    let svc = exits_on_cue("gone", "rm -f \"$0\"", "", true);
    let app = svc.path("app");
    wait_for_event(
        &svc,
        &format!(
            "spawn failed: unable to spawn {}: No such file or directory",
            app.display()
        ),
    );
    // The program is still gone: `status` and `stop` reach the running supervisor anyway,
    // saying what is missing (a start would refuse; the running service must not be stranded).
    let (code, st) = svc.status();
    assert_ne!(code, 4, "status of a running supervisor is known: {st}");
    let r = svc.stop();
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("not found"),
        "{r:?}"
    );
    assert_eq!(svc.status().0, 3, "stopped");
    let r = svc.baton(&["start"]);
    assert_eq!(
        r.code, 5,
        "a start with the program gone is 'not installed': {r:?}"
    );
}

/// A step before exec failed (here chdir): the message names the step, not only the errno,
/// on both paths: through our shared memory from a `CLONE_VM` child, through the error
/// pipe from a forked one (no clone3).
fn a_failed_setup_step_at_respawn_is_named(clone3: bool) {
    let svc = exits_on_cue(
        if clone3 { "nowork" } else { "noworkfork" },
        "cd /; rmdir \"$(dirname \"$0\")/work\"",
        "workdir = \"{dir}/work\"",
        clone3,
    );
    wait_for_event(
        &svc,
        &format!(
            "spawn failed: unable to spawn {} (chdir to the working directory): No such file or directory",
            svc.path("app").display()
        ),
    );
    let events = svc.log("baton.log");
    assert_eq!(
        events.contains("spawning with fork"),
        !clone3,
        "the path taken: {events}"
    );
    // The working directory is still gone: `stop` warns and stops all the same.
    let r = svc.stop();
    assert!(r.stderr.contains("is not a directory"), "{r:?}");
    assert_eq!(svc.status().0, 3, "stopped");
}

#[test]
fn a_failed_setup_step_at_respawn_is_named_by_a_clone3_child() {
    a_failed_setup_step_at_respawn_is_named(true);
}

#[test]
fn a_failed_setup_step_at_respawn_is_named_by_a_forked_child() {
    if !is_root() {
        eprintln!("skipped: needs root for cgroups");
        return;
    }
    a_failed_setup_step_at_respawn_is_named(false);
}
