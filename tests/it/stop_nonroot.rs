//! A service run by an ordinary user: its own `start` and `stop` work without root, and its
//! `stop` always reads the config in full (stop cards are written and trusted by root only,
//! so no card exists for it and none is looked for in its stead).

use crate::harness;

use harness::{alive, skip_unless_root, wait_until, Spec, User};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn an_ordinary_users_stop_reads_its_config_in_full_and_leaves_no_card() {
    // Root only makes the user; everything after runs as that user.
    if skip_unless_root("it needs a throwaway user (useradd)") {
        return;
    }
    let user = User::new("nrstop");
    let svc = Spec::new("plain", "[\"sleep\", \"300\"]").create();
    let chown = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{0}:{0}", user.name))
        .arg(&svc.dir)
        .status()
        .expect("chown");
    assert!(chown.success());
    let bin = harness::baton_bin();
    let (bin, config) = (bin.display(), svc.config.display());

    user.sh(&format!("{bin} --config {config} start"));
    let pid = svc.pid_in_file().expect("a PID file once start returned");
    let uid = std::fs::metadata(format!("/proc/{pid}"))
        .expect("the supervisor")
        .uid();
    assert_eq!(
        uid, user.uid,
        "the supervisor runs as the user who started it"
    );
    let m = std::fs::metadata(&svc.config).expect("stat config");
    let card = format!("/run/baton/configs/{}-{}", m.dev(), m.ino());
    assert!(
        std::fs::symlink_metadata(&card).is_err(),
        "a supervisor not run by root wrote a stop card: {card}"
    );

    let trace = svc.path("stop.trace");
    let out = user.try_sh(&format!(
        "strace -f -e trace=openat,openat2 -o {} {bin} --config {config} stop",
        trace.display()
    ));
    assert!(out.status.success(), "stop as the user: {out:?}");
    let trace = std::fs::read_to_string(&trace).expect("the trace");
    let name = format!(
        "\"{}\"",
        svc.config
            .file_name()
            .expect("a file name")
            .to_string_lossy()
    );
    assert!(
        trace
            .lines()
            .any(|l| l.contains(&name) && !l.contains("= -1")),
        "a stop not run by root did not read its config:\n{trace}"
    );
    assert!(
        !trace.contains("/run/baton/configs"),
        "a stop not run by root looked for a stop card:\n{trace}"
    );
    wait_until(T, "the supervisor gone", || !alive(pid));
    assert!(svc.processes().is_empty(), "the service outlived its stop");
}
