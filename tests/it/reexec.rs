//! `baton reexec`: the supervisor replaces its image with the baton binary now on disk,
//! keeping its PID, the service and every line of its output.
//!
//! Each test runs its own copy of baton (the front and its core) from the test directory,
//! so it can replace the core, the supervisor's image, the way a package upgrade does
//! (write beside, rename over).

use crate::harness;

use harness::{baton_bin, core_bin, core_of, install, install_baton, wait_until, Spec, Svc};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A release that waits while its HOLD file exists, says "serving", then prints a counter,
/// each line tagged with its PID.
const RUN: &str = "#!/bin/sh\nd=$(dirname \"$0\")\nwhile [ -f \"$d/HOLD\" ]; do sleep 0.05; done\n\
echo \"serving $(basename \"$d\")\"\ni=0\nwhile :; do echo \"$$ line $i\"; i=$((i+1)); sleep 0.003; done\n";

fn release(dir: &Path, name: &str, hold: bool) -> PathBuf {
    harness::script_release(dir, name, RUN, hold.then_some("HOLD"))
}

fn service(name: &str) -> Svc {
    Spec::new(name, "[\"{release}/run\"]")
        .tables(
            "[release]\nroot = \"{dir}/app\"\n\
             [ready]\nlog = \"serving\"\ntimeout = \"60s\"\n\
             [stop]\ntimeout = \"10s\"\n[deploy]\ndrain_timeout = \"1s\"\n",
        )
        .create()
}

/// Counter values printed per service PID, in the order they reached stdout.log.
fn counters(svc: &Svc) -> BTreeMap<i32, Vec<u64>> {
    let mut out: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for l in svc.log("stdout.log").lines() {
        // The log may stamp each line (time, [pid]): the counter is the last three words.
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [.., pid, "line", n] = w[..] {
            if let (Ok(pid), Ok(n)) = (pid.parse(), n.parse()) {
                out.entry(pid).or_default().push(n);
            }
        }
    }
    out
}

/// Asserts each instance's counter reached the log whole: from 0, none lost, none twice.
fn assert_consecutive(svc: &Svc) {
    for (pid, ns) in counters(svc) {
        for (i, n) in ns.iter().enumerate() {
            assert_eq!(
                *n, i as u64,
                "pid {pid}: line {i} of stdout.log is counter {n} (lost or doubled across an exec)"
            );
        }
    }
}

fn lines_of(svc: &Svc, pid: i32) -> usize {
    counters(svc).get(&pid).map_or(0, Vec::len)
}

fn service_pid(svc: &Svc) -> i32 {
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    st["service_pid"].as_i64().expect("service pid") as i32
}

/// Release v1 deployed by a supervisor that runs a copy of baton at `DIR/bin/baton` (its
/// core at `DIR/bin/baton-core`, which a test can replace): the copy's path, the
/// supervisor's PID and the service's.
fn deployed_from_a_copy(svc: &Svc) -> (PathBuf, i32, i32) {
    let bin = svc.path("bin/baton");
    std::fs::create_dir_all(svc.path("bin")).expect("bin");
    install_baton(&bin);
    let v1 = release(&svc.dir, "v1", false);
    let r = svc.baton_with(&bin, &["deploy", "--release", v1.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "{r:?}");
    let sup = svc.pid_in_file().expect("PID file");
    (bin, sup, service_pid(svc))
}

#[test]
fn reexec_keeps_both_pids_and_every_line_then_a_deploy_works() {
    let svc = service("rxkeep");
    let (bin, sup, pid) = deployed_from_a_copy(&svc);
    let deadline = std::time::Instant::now() + T;
    while lines_of(&svc, pid) <= 50 {
        if std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        panic!(
            "no output of pid {pid} before the reexec; status {:?}; stdout.log starts {:?}",
            svc.status(),
            svc.log("stdout.log").lines().take(5).collect::<Vec<_>>()
        );
    }

    // The upgrade: a new pair at the same path; the running image (the core) is the
    // deleted one.
    let core = core_of(&bin);
    let exe = std::fs::read_link(format!("/proc/{sup}/exe")).expect("exe");
    assert_eq!(exe, core, "the supervisor runs the copy's core");
    install_baton(&bin);
    for round in 0..3 {
        let before = lines_of(&svc, pid);
        let r = svc.baton_with(&bin, &["reexec"]);
        assert_eq!(r.code, 0, "reexec {round}: {r:?}");
        assert!(
            r.stdout.contains("re-executed: baton ") && r.stdout.contains(" -> baton "),
            "the new image answers with both versions: {r:?}"
        );
        assert_eq!(svc.pid_in_file(), Some(sup), "same supervisor PID");
        let exe = std::fs::read_link(format!("/proc/{sup}/exe")).expect("exe");
        assert_eq!(exe, core, "the supervisor now runs the core on disk");
        let (code, st) = svc.status();
        assert_eq!(code, 0, "{st}");
        assert_eq!(st["service_pid"].as_i64(), Some(i64::from(pid)), "{st}");
        assert_eq!(st["supervisor_pid"].as_i64(), Some(i64::from(sup)), "{st}");
        assert!(st["supervisor_version"].is_string(), "{st}");
        wait_until(T, "output after the reexec", || {
            lines_of(&svc, pid) > before + 30
        });
    }
    assert_consecutive(&svc);

    // A deploy after the reexec: the new image runs handoffs too.
    let v2 = release(&svc.dir, "v2", false);
    let r = svc.baton_with(&bin, &["deploy", "--release", v2.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "deploy after reexec: {r:?}");
    let pid2 = service_pid(&svc);
    assert_ne!(pid2, pid);
    assert_eq!(svc.pid_in_file(), Some(sup));
    wait_until(T, "the new instance's output", || lines_of(&svc, pid2) > 20);
    let r = svc.baton_with(&bin, &["stop"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_consecutive(&svc);
}

#[test]
fn reexec_onto_a_file_that_is_not_baton_is_refused_and_changes_nothing() {
    let svc = service("rxnot");
    let (bin, sup, pid) = deployed_from_a_copy(&svc);

    // Something else at the core's path (a broken upgrade).
    let core = core_of(&bin);
    let script = svc.path("not-baton");
    std::fs::write(&script, "#!/bin/sh\necho hello\n").expect("script");
    install(&script, &core);
    let r = svc.baton(&["reexec"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("it is not baton"), "{r:?}");
    assert!(r.stderr.contains("carries on"), "{r:?}");
    // A file that cannot be executed at all.
    std::fs::set_permissions(&core, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = svc.baton(&["reexec"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("unable to run it"), "{r:?}");

    // The old image still supervises: same PIDs, it answers, it stops the service.
    assert_eq!(svc.pid_in_file(), Some(sup));
    assert_eq!(service_pid(&svc), pid);
    let exe = std::fs::read_link(format!("/proc/{sup}/exe")).expect("exe");
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");
    install(&core_bin(), &core);
    let r = svc.baton(&["reexec"]);
    assert_eq!(r.code, 0, "once baton is back: {r:?}");
    assert_eq!(service_pid(&svc), pid);
    svc.stop();
    assert!(!harness::alive(pid));
}

#[test]
fn reexec_while_a_deploy_is_in_flight_is_refused() {
    let svc = service("rxbusy");
    let v1 = release(&svc.dir, "v1", false);
    let r = svc.baton(&["deploy", "--release", v1.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "{r:?}");
    let pid = service_pid(&svc);
    let v2 = release(&svc.dir, "v2", true);
    let deploy = Command::new(baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .args(["deploy", "--release", v2.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("deploy");
    let mut held = None;
    wait_until(T, "the deploy to be in flight", || {
        let (_, st) = svc.status();
        held = st["handoff"]["release"]
            .as_str()
            .map(|r| svc.path(&format!("app/releases/{r}/HOLD")));
        held.is_some()
    });
    let r = svc.baton(&["reexec"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("a deploy is in progress"), "{r:?}");
    assert_eq!(service_pid(&svc), pid, "the old instance serves on");
    std::fs::remove_file(held.expect("hold")).expect("release the new instance");
    let out = deploy.wait_with_output().expect("deploy");
    assert!(out.status.success(), "{out:?}");
    let r = svc.baton(&["reexec"]);
    assert_eq!(r.code, 0, "after the deploy: {r:?}");
    assert_ne!(service_pid(&svc), pid);
    svc.stop();
}
