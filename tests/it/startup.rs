//! What every baton process sets up before its command runs (main.rs skips std's
//! start-up, sys::start does the part baton relies on).

use crate::harness::{baton_bin, wait_until, Svc};
use std::time::Duration;

/// Whether `SigIgn` in /proc/PID/status has SIGPIPE.
fn ignores_sigpipe(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).expect("a hex mask"))
        .expect("SigIgn");
    mask & (1 << (nix::libc::SIGPIPE - 1)) != 0
}

#[test]
fn closed_standard_descriptors_are_reopened_and_sigpipe_ignored() {
    let svc = Svc::new("fds", r#"["sleep", "1000"]"#, "");
    // A foreground supervisor started with 0, 1 and 2 closed: without /dev/null on them,
    // the first files it opens (its lock, its event log) would become its stdout.
    let mut sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"exec <&- >&- 2>&-; exec "$0" --config "$1" run"#)
        .arg(baton_bin())
        .arg(&svc.config)
        .spawn()
        .expect("sh");
    let pid = sh.id() as i32;
    wait_until(Duration::from_secs(20), "the service to run", || {
        !svc.processes().is_empty()
    });
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("an open fd");
        assert_eq!(target.to_str(), Some("/dev/null"), "fd {fd}");
    }
    // A client gone from its socket must be an EPIPE for the supervisor, not its death;
    // the service gets every signal back to its default.
    assert!(
        ignores_sigpipe(pid),
        "the supervisor does not ignore SIGPIPE"
    );
    for service in svc.processes() {
        assert!(
            !ignores_sigpipe(service),
            "the service inherited an ignored SIGPIPE"
        );
    }
    svc.stop();
    assert!(sh.wait().expect("wait").success());
}
