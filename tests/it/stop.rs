//! `stop` sends its request before anything else it can defer: what it must still prove
//! first (the command lock, a supervisor to ask) and what it proves after (the
//! supervisor's identity, before any signal to it) keep their guarantees.

use crate::harness;

use harness::{alive, baton, baton_bin, wait_until, Spec, Svc};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A service that says "up" once started and then idles.
fn idler(name: &str, delay: &str) -> Svc {
    Svc::new(
        name,
        &format!("[\"/bin/sh\", \"-c\", \"{delay}echo up; exec sleep 1000\"]"),
        "[ready]\nlog = \"up\"\ntimeout = \"30s\"\n",
    )
}

fn socket(svc: &Svc) -> std::path::PathBuf {
    svc.dir.join("run").join(format!("{}.sock", svc.name))
}

/// A started idler whose control socket is gone, and its supervisor's PID.
fn started_without_socket(name: &str) -> (Svc, i32) {
    let svc = idler(name, "");
    svc.start();
    let sup = svc.pid_in_file().expect("supervisor pid");
    std::fs::remove_file(socket(&svc)).expect("remove the socket");
    (svc, sup)
}

#[test]
fn stop_read_in_every_shape_signals_before_it_logs_why() {
    let svc = idler("shapes", "");
    let config = svc.config.display().to_string();
    for line in [
        vec!["stop", "--config", config.as_str()],
        vec![
            "--config-dir=/nonexistent",
            "stop",
            "shapes",
            "--config",
            &config,
        ],
        vec!["--config", &config, "stop"],
    ] {
        svc.start();
        let r = baton(&line);
        assert_eq!(r.code, 0, "{line:?}: {r:?}");
        assert!(r.stdout.contains("shapes stopped"), "{line:?}: {r:?}");
        assert!(svc.processes().is_empty(), "{line:?}: {r:?}");
    }
    // What clap would refuse is still refused, with its usage code.
    let r = baton(&["stop", "--config", &config, "shapes", "extra"]);
    assert_eq!(r.code, 2, "{r:?}");
    // The signal is not held up by the line that says why it was sent.
    let log = svc.log("baton.log");
    let sent = log
        .find("sent SIGTERM to process group")
        .expect("sent line");
    let why = log
        .find("ready -> stopping (stop requested)")
        .expect("transition line");
    assert!(sent < why, "{log}");
}

#[test]
fn without_a_control_socket_stop_signals_the_proven_supervisor() {
    let (svc, sup) = started_without_socket("nosock");
    let r = svc.stop();
    assert!(
        r.stderr.contains("control socket unavailable")
            && r.stderr.contains(&format!("supervisor pid {sup}")),
        "{r:?}"
    );
    assert!(!alive(sup), "{r:?}");
    assert!(svc.processes().is_empty(), "{r:?}");
    assert_eq!(svc.status().0, 3);
}

#[test]
fn stop_never_signals_a_supervisor_it_cannot_prove() {
    let (svc, sup) = started_without_socket("unproven");
    // `start` returns when the supervisor answers it; state.json is written at the loop's
    // next turn, before it sleeps in ppoll again: wait for that, or the supervisor's write
    // could replace the test's below.
    harness::wait_asleep(sup);
    // The recorded start time no longer matches: as if the PID belonged to another process.
    let state = svc.path("state/state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json");
    let st = v["supervisor"]["starttime"].as_u64().expect("starttime");
    v["supervisor"]["starttime"] = (st + 1).into();
    std::fs::write(&state, v.to_string()).expect("write state");
    let r = svc.baton(&["stop"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("cannot be identified"), "{r:?}");
    assert!(
        alive(sup),
        "stop signalled a supervisor it could not prove: {r:?}"
    );
    assert!(
        !svc.processes().is_empty(),
        "the service was left as it was"
    );
    // Clean up by hand: SIGTERM is the supervisor's own stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    wait_until(T, "the supervisor to stop", || !alive(sup));
}

#[test]
fn an_env_file_gone_since_the_start_warns_but_does_not_block_stop() {
    let dir = std::env::temp_dir().join(format!("baton-envgone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let env = dir.join("svc.env");
    std::fs::write(&env, "GREETING=up\n").expect("env file");
    let svc = Spec::new(
        "envgone",
        "[\"/bin/sh\", \"-c\", \"echo $GREETING; exec sleep 1000\"]",
    )
    .top(&format!("env_file = \"{}\"", env.display()))
    .tables("[ready]\nlog = \"up\"\ntimeout = \"30s\"\n")
    .create();
    svc.start();
    let service = svc.status().1["service_pid"].as_i64().expect("service pid");
    std::fs::remove_file(&env).expect("rm env file");
    // A start would refuse the config now; the running service must still be stoppable.
    let r = svc.stop();
    assert!(
        r.stderr.contains("cannot read"),
        "the warning names the file: {r:?}"
    );
    wait_until(T, "the service to be gone", || {
        !alive(i32::try_from(service).expect("pid"))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stop_after_the_supervisor_died_cleans_up_and_succeeds() {
    let svc = idler("died", "");
    svc.start();
    let sup = svc.pid_in_file().expect("supervisor pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    wait_until(T, "the supervisor to be gone", || !alive(sup));
    // Its socket file is left behind; only its lock tells it is gone.
    assert!(socket(&svc).exists());
    let r = svc.stop();
    assert!(r.stderr.contains("removing stale PID file"), "{r:?}");
    assert!(!svc.pidfile().exists(), "{r:?}");
    wait_until(T, "the service to be gone", || svc.processes().is_empty());
    assert_eq!(svc.status().0, 3);
}

#[test]
fn a_stop_during_a_start_waits_for_the_start_to_finish() {
    // Ready 1 s after it starts: the start holds the command lock all that time.
    let svc = idler("during", "sleep 1; ");
    let config = svc.config.clone();
    let start = std::thread::spawn(move || {
        Command::new(baton_bin())
            .arg("--config")
            .arg(config)
            .arg("start")
            .output()
            .expect("start")
    });
    wait_until(T, "the service to be spawned", || {
        !svc.processes().is_empty()
    });
    let r = svc.stop();
    let started: harness::Run = start.join().expect("start thread").into();
    assert_eq!(
        started.code, 0,
        "the start was not cut short by the stop: {started:?}\nstop: {r:?}"
    );
    assert!(started.stdout.contains("is ready"), "{started:?}");
    assert!(r.stdout.contains("during stopped"), "{r:?}");
    assert!(svc.processes().is_empty(), "{r:?}");
}

#[test]
fn stop_gives_up_on_a_supervisor_that_never_answers_and_says_so() {
    let svc = Svc::new(
        "stuck",
        "[\"/bin/sh\", \"-c\", \"echo up; exec sleep 1000\"]",
        "[ready]\nlog = \"up\"\ntimeout = \"30s\"\n[stop]\ntimeout = \"1s\"\n",
    );
    svc.start();
    let sup = nix::unistd::Pid::from_raw(svc.pid_in_file().expect("supervisor pid"));
    // Stopped, it still holds its lock and its socket takes the connection: only the reply
    // never comes.
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let r = svc.baton(&["stop"]);
    let _ = nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no answer within 11s"), "{r:?}");
    assert!(r.stderr.contains("baton.log"), "says where to look: {r:?}");
    // Woken again, it reads the request it was sent and stops.
    wait_until(T, "the supervisor to act on the stop it read", || {
        !alive(sup.as_raw())
    });
    assert_eq!(svc.stop().code, 0);
}
