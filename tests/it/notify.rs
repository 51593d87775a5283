//! READY=1 counts only for the instance it comes from: every instance of a service, and any
//! other process of its user, can send to the one notify socket, so each message is
//! attributed by its sender's credentials.

use crate::harness;

use harness::{Spec, Svc};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A release that says READY=1 at once and again every 0.1 s (as a service answering
/// reloads or health pings may); with a file NEVER beside it, it says nothing at all.
const RUN: &str = r#"#!/usr/bin/env python3
import os, socket, time
here = os.path.dirname(os.path.abspath(__file__))
print("booting", flush=True)
if os.path.exists(os.path.join(here, "NEVER")):
    while True:
        time.sleep(3600)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
while True:
    s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    time.sleep(0.1)
"#;

fn release(dir: &Path, name: &str, never: bool) -> PathBuf {
    harness::script_release(dir, name, RUN, never.then_some("NEVER"))
}

fn service(name: &str) -> Svc {
    Spec::new(name, "[\"{release}/run\"]")
        .tables(
            "[release]\nroot = \"{dir}/app\"\n\
             [ready]\nnotify = true\ntimeout = \"3s\"\n\
             [stop]\ntimeout = \"5s\"\n[deploy]\ndrain_timeout = \"1s\"\n",
        )
        .create()
}

fn deploy(svc: &Svc, release: &Path) -> harness::Run {
    svc.baton(&["deploy", "--release", release.to_str().expect("utf-8")])
}

#[test]
fn the_old_instances_ready_1_does_not_make_the_new_one_ready() {
    let svc = service("notifyold");
    let v1 = release(&svc.dir, "v1", false);
    let r = deploy(&svc, &v1);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, st) = svc.status();
    let serving = st["service_pid"].clone();

    // v2 never says READY=1 while v1 keeps saying it into the same socket.
    let v2 = release(&svc.dir, "v2", true);
    let r = deploy(&svc, &v2);
    assert_eq!(r.code, 1, "v1's READY=1 was taken for v2's: {r:?}");
    assert!(r.stderr.contains("not ready within"), "{r:?}");
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["service_pid"], serving, "v1 still serves: {st}");
    assert!(
        svc.log("baton.log")
            .contains("ignored a notify message from pid"),
        "{}",
        svc.log("baton.log")
    );
    svc.stop();
}

#[test]
fn a_process_outside_the_service_cannot_make_it_ready() {
    let svc = Spec::new("notifyout", "[\"sleep\", \"1000\"]")
        .tables("[ready]\nnotify = true\ntimeout = \"3s\"")
        .create();
    let socket = svc.path("state/notify.sock");
    let mut starting = svc.spawn_baton(&["start"]);
    harness::wait_until(
        Duration::from_secs(20),
        "the instance to be starting",
        || svc.status().1["state"] == "starting",
    );
    // This test's own process: alive, of a user allowed to send, and not the service's.
    let sender = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    sender.send_to(b"READY=1", &socket).expect("send READY=1");
    let waited = starting.wait().expect("wait for start");
    assert!(!waited.success(), "start succeeded on a stranger's READY=1");
    assert!(svc
        .log("baton.log")
        .contains("ignored a notify message from pid"));
}

#[test]
fn a_short_lived_helper_of_the_service_may_say_ready() {
    // `systemd-notify --ready` style: a child sends READY=1 and exits at once, often before
    // the supervisor reads the message; in the process group or gone, it still counts.
    let send = "import os, socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])";
    let svc = Spec::new(
        "notifyhelper",
        &format!("[\"/bin/sh\", \"-c\", \"python3 -c \\\"{send}\\\"; exec sleep 1000\"]"),
    )
    .tables("[ready]\nnotify = true\ntimeout = \"20s\"")
    .create();
    svc.start();
    assert_eq!(svc.status().1["state"], "ready");
    svc.stop();
}
