//! A config change is a handoff: `baton deploy NAME` with no release starts the current
//! release from the config on disk beside the running instance, under load, with the real
//! JVM example service behind the shared listening socket and a real nginx in front; and
//! a `baton reexec` under the same load fails no request.

use crate::harness;

use harness::lab::{Load, Nginx};
use harness::{body, Spec};
use std::path::Path;

/// The JVM example as the only release, in the test's directory.
fn jvm_release(dir: &Path) -> std::path::PathBuf {
    harness::example_release(dir, "jdk-service", None)
}

/// The service's config with this VERSION_FILE (the JVM reports the file's version over
/// HTTP: an env change it makes visible), JVM heap and listening address.
fn config(listen: u16, version_file: &str, xmx: &str) -> Spec {
    Spec::new("cfgho", "[\"{release}/run\"]")
        .env(&format!(
            "JAVA_OPTS = \"{xmx}\"\nVERSION_FILE = \"{version_file}\"\nDRAIN_TIMEOUT_MS = \"8000\"\nINIT_MS = \"300\""
        ))
        .tables(&format!(
            "[listen]\naddress = \"127.0.0.1:{listen}\"\nfd = 3\n\
             [release]\nroot = \"{{dir}}/app\"\n\
             [ready]\nlog = \"serving on\"\ntimeout = \"90s\"\n\
             [stop]\ntimeout = \"15s\"\n[deploy]\ndrain_timeout = \"10s\"\n"
        ))
}

fn cmdline(pid: i64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn config_change_is_a_handoff_and_reexec_fails_no_request_and_bad_configs_change_nothing() {
    let listen = harness::free_port();
    let spec = config(listen, "{dir}/a.properties", "-Xmx128m");
    let svc = spec.create();
    std::fs::write(svc.path("a.properties"), "version=env-a\n").expect("props");
    std::fs::write(svc.path("b.properties"), "version=env-b\n").expect("props");
    let rel = jvm_release(&svc.dir);
    let r = svc.baton(&["deploy", "--release", rel.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "first deploy starts the service: {r:?}");
    let nginx = Nginx::start(&svc.dir, listen);
    let url = nginx.url("/version");
    assert_eq!(body(&url).as_deref(), Some("version=env-a"));
    let (_, st) = svc.status();
    let pid1 = st["service_pid"].as_i64().expect("service pid");
    let sup = svc.pid_in_file().expect("PID file");
    assert!(cmdline(pid1).contains("-Xmx128m"), "{}", cmdline(pid1));

    // The change: another env var value and another JVM flag.
    svc.rewrite(&config(listen, "{dir}/b.properties", "-Xmx160m"));
    let ka = Load::start(&url, "keepalive", 12);
    let close = Load::start(&url, "close", 12);
    let r = svc.baton(&["deploy"]);
    assert_eq!(r.code, 0, "config handoff: {r:?}");
    assert!(r.stderr.contains("[5/5]"), "a full handoff: {r:?}");
    assert!(r.stderr.contains("with the config in"), "{r:?}");
    let (n_ka, failed_ka) = ka.finish();
    let (n_close, failed_close) = close.finish();
    assert!(n_ka > 100 && n_close > 100, "load ran: {n_ka} {n_close}");
    assert_eq!(failed_ka, 0, "keep-alive requests failed ({n_ka} sent)");
    assert_eq!(failed_close, 0, "close requests failed ({n_close} sent)");
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    let pid2 = st["service_pid"].as_i64().expect("service pid");
    assert_ne!(pid1, pid2, "a new instance took over");
    assert!(!harness::alive(pid1 as i32), "the old instance is gone");
    assert_eq!(st["supervisor_pid"], sup, "the same supervisor");
    for _ in 0..5 {
        assert_eq!(body(&url).as_deref(), Some("version=env-b"));
    }
    assert!(cmdline(pid2).contains("-Xmx160m"), "{}", cmdline(pid2));

    // A baton upgrade under the same load: the supervisor re-executes, the JVM serves on.
    let ka = Load::start(&url, "keepalive", 6);
    let close = Load::start(&url, "close", 6);
    let r = svc.baton(&["reexec"]);
    assert_eq!(r.code, 0, "reexec: {r:?}");
    let (n_ka, failed_ka) = ka.finish();
    let (n_close, failed_close) = close.finish();
    assert!(n_ka > 50 && n_close > 50, "load ran: {n_ka} {n_close}");
    assert_eq!(
        failed_ka, 0,
        "keep-alive requests failed across reexec ({n_ka} sent)"
    );
    assert_eq!(
        failed_close, 0,
        "close requests failed across reexec ({n_close} sent)"
    );
    let (_, st) = svc.status();
    assert_eq!(
        st["service_pid"].as_i64(),
        Some(pid2),
        "the JVM kept its PID: {st}"
    );
    assert_eq!(st["supervisor_pid"], sup, "the same supervisor: {st}");

    // A config that no longer parses: a clear error, nothing moves.
    let good = std::fs::read_to_string(&svc.config).expect("config");
    std::fs::write(&svc.config, format!("{good}\nbogus = [\n")).expect("config");
    let r = svc.baton(&["deploy"]);
    assert_eq!(
        r.code, 6,
        "an unparseable config is 'not configured': {r:?}"
    );
    assert!(r.stderr.contains("TOML syntax error"), "{r:?}");
    // Valid TOML the supervisor refuses on its own (a key check misses): still nothing moves.
    std::fs::write(
        &svc.config,
        good.replace("timeout = \"15s\"", "timeout = \"fifteen\""),
    )
    .expect("config");
    let r = svc.baton(&["deploy"]);
    assert_eq!(r.code, 6, "an invalid value: {r:?}");
    assert!(r.stderr.contains("stop.timeout"), "names the key: {r:?}");

    // A setting only a restart can change: named, nothing moves.
    let other = harness::free_port();
    svc.rewrite(&config(other, "{dir}/b.properties", "-Xmx160m"));
    let r = svc.baton(&["deploy"]);
    assert_eq!(r.code, 6, "an unchangeable setting: {r:?}");
    assert!(
        r.stderr.contains(&format!(
            "listen (127.0.0.1:{listen} fd 3 -> 127.0.0.1:{other} fd 3)"
        )),
        "names the setting and both values: {r:?}"
    );
    assert!(r.stderr.contains("baton restart"), "says what to do: {r:?}");

    let (code, st) = svc.status();
    assert_eq!(code, 0);
    assert_eq!(st["service_pid"].as_i64(), Some(pid2), "untouched: {st}");
    assert_eq!(body(&url).as_deref(), Some("version=env-b"));
    svc.rewrite(&config(listen, "{dir}/b.properties", "-Xmx160m"));
    svc.stop();
}

#[test]
fn the_services_own_reload_is_baton_signal_hup() {
    let svc = Spec::new(
        "cfgsig",
        &format!(
            "[\"{}\", \"{{dir}}/hups\"]",
            harness::fixture("hup-counter")
        ),
    )
    .tables("[ready]\nlog = \"ready\"")
    .create();
    let r = svc.baton(&["signal", "HUP"]);
    assert_eq!(r.code, 7, "nothing to signal while stopped: {r:?}");
    svc.start();
    let r = svc.baton(&["signal", "SIGBOGUS"]);
    assert_eq!(r.code, 2, "an unknown signal: {r:?}");
    let r = svc.baton(&["signal", "HUP"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("sent SIGHUP"), "{r:?}");
    harness::wait_until(
        std::time::Duration::from_secs(30),
        "the HUP to arrive",
        || std::fs::read_to_string(svc.path("hups")).unwrap_or_default() == "HUP\n",
    );
    svc.stop();
}

/// A service that says which stop signal reached it (into `{dir}/stops`) and exits.
fn says_its_stop_signal(signal: &str) -> Spec {
    Spec::new("cfgstop", "[\"/bin/sh\", \"-c\", \"trap 'echo $$ TERM >>{dir}/stops; exit 0' TERM; trap 'echo $$ INT >>{dir}/stops; exit 0' INT; echo serving; while :; do sleep 1 & wait $!; done\"]")
        .tables(&format!(
            "[ready]\nlog = \"serving\"\ntimeout = \"60s\"\n[stop]\nsignal = \"{signal}\"\ntimeout = \"30s\"\n"
        ))
}

#[test]
fn the_old_instance_is_stopped_with_the_stop_settings_it_was_started_with() {
    let svc = says_its_stop_signal("SIGTERM").create();
    svc.start();
    let (_, st) = svc.status();
    let pid1 = st["service_pid"].as_i64().expect("service pid");

    // The change moves the stop signal: the instance started under SIGTERM still gets SIGTERM.
    svc.rewrite(&says_its_stop_signal("SIGINT"));
    let r = svc.baton(&["deploy"]);
    assert_eq!(r.code, 0, "config handoff: {r:?}");
    let (_, st) = svc.status();
    let pid2 = st["service_pid"].as_i64().expect("service pid");
    assert_ne!(pid1, pid2);
    let stops = std::fs::read_to_string(svc.path("stops")).unwrap_or_default();
    assert_eq!(
        stops,
        format!("{pid1} TERM\n"),
        "the old instance's own signal"
    );

    // The new instance was started under SIGINT, and is stopped so.
    svc.stop();
    let stops = std::fs::read_to_string(svc.path("stops")).unwrap_or_default();
    assert_eq!(stops, format!("{pid1} TERM\n{pid2} INT\n"));
}
