//! Bad input and faults: a clear "unable to …" message, the right LSB code, and nothing running touched.

use crate::harness;

use harness::{alive, is_root, Spec, Svc};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn running(name: &str) -> Svc {
    let svc = Svc::new(
        name,
        "[\"/bin/sh\", \"-c\", \"echo up; exec sleep 1000\"]",
        "[ready]\nlog = \"up\"",
    );
    svc.start();
    svc
}

#[test]
fn syntax_error_names_file_and_line() {
    let svc = Svc::new("syntax", "[\"/bin/sleep\", \"1\"]", "");
    std::fs::write(&svc.config, "command = [\"/bin/sleep\"]\n[ready\ntcp = 1\n").expect("write");
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("unable to use config {}", svc.config.display())),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("syntax.toml:2: TOML syntax error"),
        "{r:?}"
    );
}

#[test]
fn check_reports_every_problem_at_once() {
    let svc = Svc::new("many", "[\"/bin/sleep\", \"1\"]", "");
    std::fs::write(
        &svc.config,
        "command = [\"/bin/sleep\", \"1\"]\ntimeout = \"5s\"\n[stop]\nsignal = \"TERMINATE\"\ntimeout = \"30\"\n[restart]\npolicy = \"sometimes\"\n",
    )
    .expect("write");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 6, "{r:?}");
    for expected in [
        "many.toml:2: timeout: unknown key",
        "many.toml:4: stop.signal: \"TERMINATE\" is not a signal name",
        "many.toml:5: stop.timeout: \"30\" has no unit",
        "many.toml:7: restart.policy: unknown policy \"sometimes\"",
    ] {
        assert!(r.stderr.contains(expected), "missing {expected:?} in {r:?}");
    }
    assert!(r.stderr.contains("4 problems"), "{r:?}");
}

#[test]
fn a_bad_stop_signal_fails_start_not_a_later_stop() {
    let svc = Svc::new(
        "badsig",
        "[\"/bin/sleep\", \"100\"]",
        "[stop]\nsignal = \"SIGNOPE\"",
    );
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(svc.processes().is_empty());
}

#[test]
fn missing_program_is_not_installed() {
    let svc = Svc::new(
        "missing",
        "[\"/opt/nowhere/bin/java\", \"-jar\", \"app.jar\"]",
        "",
    );
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr
            .contains("program \"/opt/nowhere/bin/java\" not found"),
        "{r:?}"
    );
    assert_eq!(svc.baton(&["check"]).code, 5);
    let svc = Svc::new("missing2", "[\"no-such-program-baton\"]", "");
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("not found in PATH"), "{r:?}");
}

#[test]
fn non_executable_program_is_not_installed() {
    let svc = Spec::new("noexec", "[]").create();
    let script = svc.path("app.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 100\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    svc.rewrite(&Spec::new("noexec", &format!("[\"{}\"]", script.display())));
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("is not an executable file"), "{r:?}");
}

#[test]
fn unknown_user_is_not_configured() {
    let svc = Spec::new("nouser", "[\"/bin/sleep\", \"100\"]")
        .top("user = \"no-such-user-baton\"")
        .create();
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains("nouser.toml:5: user: no such user \"no-such-user-baton\""),
        "{r:?}"
    );
}

#[test]
fn missing_config_file() {
    let r: harness::Run = Command::new(harness::baton_bin())
        .args(["--config", "/nonexistent/web.toml", "start"])
        .output()
        .expect("run")
        .into();
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains("unable to read config /nonexistent/web.toml"),
        "{r:?}"
    );
    let r: harness::Run = Command::new(harness::baton_bin())
        .args(["--config-dir", "/nonexistent", "status", "web"])
        .output()
        .expect("run")
        .into();
    assert_eq!(
        r.code, 4,
        "status of an unreadable config is unknown: {r:?}"
    );
}

#[test]
fn no_name_and_no_config_is_a_usage_error() {
    let r: harness::Run = Command::new(harness::baton_bin())
        .arg("start")
        .output()
        .expect("run")
        .into();
    assert_eq!(r.code, 2, "{r:?}");
    let r: harness::Run = Command::new(harness::baton_bin())
        .arg("frobnicate")
        .output()
        .expect("run")
        .into();
    assert_eq!(r.code, 2, "{r:?}");
}

/// `start` refuses with the port named, and nothing was spawned.
fn refused_for_a_busy_port(svc: &Svc, port: u16) {
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("port {port} is already in use")),
        "{r:?}"
    );
    assert!(svc.processes().is_empty());
}

#[test]
fn port_in_use_is_refused_before_spawning() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let svc = Svc::new(
        "busy",
        "[\"/bin/sh\", \"-c\", \"exec sleep 100\"]",
        &format!("[port]\nmode = \"fixed\"\nport = {port}\n[ready]\ntcp = \"127.0.0.1:{{port}}\""),
    );
    refused_for_a_busy_port(&svc, port);
}

#[test]
fn a_port_held_on_another_address_or_the_wildcard_is_judged_by_where_the_service_listens() {
    // Held on 127.0.0.2 only: the service, answering on 127.0.0.1, can still have it.
    let elsewhere = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = elsewhere.local_addr().expect("addr").port();
    let config = |port: u16| format!("[port]\nmode = \"fixed\"\nport = {port}");
    let svc = Svc::new("aside", "[\"sleep\", \"100\"]", &config(port));
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 0, "{r:?}");
    svc.stop();

    // Held on the wildcard: every address is taken, 127.0.0.1 too.
    let everywhere = std::net::TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0");
    let port = everywhere.local_addr().expect("addr").port();
    svc.rewrite(&Spec::new("aside", "[\"sleep\", \"100\"]").tables(&config(port)));
    refused_for_a_busy_port(&svc, port);
}

#[test]
fn broken_config_while_running_touches_nothing() {
    let svc = running("touchy");
    let pid = svc.pid_in_file().expect("pid");
    let good = std::fs::read_to_string(&svc.config).expect("read");
    std::fs::write(&svc.config, good.replace("command =", "comand =")).expect("break it");
    for action in ["stop", "start", "restart"] {
        let r = svc.baton(&[action]);
        assert_eq!(r.code, 6, "{action}: {r:?}");
        assert!(
            alive(pid),
            "{action} with a broken config touched the running supervisor"
        );
    }
    std::fs::write(&svc.config, good).expect("fix");
    assert_eq!(svc.status().0, 0);
}

#[test]
fn config_writable_by_others_is_refused_as_root() {
    if !is_root() {
        eprintln!("skipped: the check applies to root only");
        return;
    }
    let svc = running("lax");
    let pid = svc.pid_in_file().expect("pid");
    std::fs::set_permissions(&svc.config, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let r = svc.baton(&["restart"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("is writable by others"), "{r:?}");
    assert!(alive(pid));
    std::fs::set_permissions(&svc.config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// Runs baton as `nobody` (root only).
fn as_nobody(svc: &Svc, args: &[&str]) -> harness::Run {
    Command::new("timeout")
        .args([
            "120",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ])
        .arg(harness::baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .args(args)
        .output()
        .expect("setpriv")
        .into()
}

#[test]
fn unwritable_pid_directory_is_a_privilege_error() {
    if !is_root() {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let svc = Svc::new("unwritable", "[\"/bin/sleep\", \"100\"]", "");
    // Test dir readable by nobody, its run/ directory not writable by nobody.
    std::fs::set_permissions(&svc.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&svc.config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::create_dir_all(svc.path("run")).expect("mkdir");
    let r = as_nobody(&svc, &["start"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "unable to write to PID file directory {}",
            svc.path("run").display()
        )),
        "{r:?}"
    );
    assert!(r.stderr.contains("Permission denied"), "{r:?}");
    assert!(svc.processes().is_empty());
}

#[test]
fn switching_user_without_root_is_a_privilege_error() {
    if !is_root() {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let svc = Spec::new("needroot", "[\"/bin/sleep\", \"100\"]")
        .top("user = \"daemon\"")
        .create();
    std::fs::set_permissions(&svc.dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(&svc.config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let r = as_nobody(&svc, &["start"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("unable to start needroot as user daemon: only root can switch users"),
        "{r:?}"
    );
}

#[test]
fn control_socket_refuses_other_users() {
    if !is_root() {
        eprintln!("skipped: needs root to run as another user");
        return;
    }
    let svc = running("private");
    let sock = svc.path("run/private.sock");
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket must be owner-only");
    // Even with the socket opened up, peer credentials keep others out.
    std::fs::set_permissions(svc.path("run"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(svc.path("state"), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    std::fs::set_permissions(&svc.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::fs::set_permissions(&svc.config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let pid = svc.pid_in_file().expect("pid");
    let r = as_nobody(&svc, &["stop"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains("permission denied: only root or the supervisor's user"),
        "{r:?}"
    );
    assert!(alive(pid), "another user stopped the service");
}
