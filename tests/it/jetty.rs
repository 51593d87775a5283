//! The original stack on the zero-downtime path: deploy and rollback of the real
//! Clojure/Jetty example (examples/clj-service) under steady wrk load, in shared socket
//! mode and in nginx reload mode, with real nginx.

use crate::harness;

use harness::lab::{get, Load, Nginx};
use harness::{alive, free_port, Spec, Svc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The two tests under load take turns: on a shared 2-core machine two wrk loads and
/// four JVMs at once only make every JVM boot slower.
static UNDER_LOAD: Mutex<()> = Mutex::new(());

fn one_under_load() -> MutexGuard<'static, ()> {
    // A test that failed while holding the lock leaves nothing behind that matters here.
    UNDER_LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds of load asked for: longer than any handoff; the test stops it once done.
const LONG: u32 = 600;

fn jetty_release(dir: &Path, version: &str) -> PathBuf {
    harness::example_release(dir, "clj-service", Some(version))
}

fn deploy(svc: &Svc, release: &Path) -> harness::Run {
    svc.baton(&["deploy", "--release", release.to_str().expect("utf-8")])
}

fn service_pid(svc: &Svc) -> i32 {
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    st["service_pid"].as_i64().expect("service_pid") as i32
}

/// Fresh requests to `url` are all answered by `pid` with `version`.
fn answers(url: &str, pid: i32, version: &str) {
    for _ in 0..5 {
        assert_eq!(get(url), Some((pid, format!("version={version}"))), "{url}");
    }
}

/// One handoff (a deploy, or a rollback when `release` is None) of a running service:
/// it succeeds, the new JVM answers `url` with `version`, the old JVM is gone.
fn hand_over(svc: &Svc, release: Option<&Path>, url: &str, version: &str) -> i32 {
    let old = service_pid(svc);
    let r = match release {
        Some(rel) => deploy(svc, rel),
        None => svc.baton(&["rollback"]),
    };
    assert_eq!(r.code, 0, "handoff to {version}: {r:?}");
    eprint!("{}", r.stderr);
    let new = service_pid(svc);
    assert_ne!(new, old, "a new JVM serves");
    answers(url, new, version);
    assert!(!alive(old), "the old JVM (pid {old}) is gone");
    new
}

#[test]
fn jetty_socket_mode_deploy_and_rollback_under_load_fail_no_request() {
    if !harness::jvm_available() {
        eprintln!("skipped: run scripts/setup-deps for Java, Clojure and Jetty");
        return;
    }
    let _turn = one_under_load();
    let listen = free_port();
    let svc = Spec::new("jettysock", "[\"{release}/run\"]")
        .env("JAVA_OPTS = \"-Xmx128m\"\nSTOP_TIMEOUT_MS = \"10000\"")
        .tables(&format!(
            "[listen]\naddress = \"127.0.0.1:{listen}\"\nfd = 0\n\
             [release]\nroot = \"{{dir}}/app\"\n\
             [ready]\nlog = 'serving on .*\\(inherited socket\\)'\ntimeout = \"90s\"\n\
             [stop]\ntimeout = \"20s\"\n[deploy]\ndrain_timeout = \"15s\"\n"
        ))
        .create();
    let v1 = jetty_release(&svc.dir, "v1");
    let v2 = jetty_release(&svc.dir, "v2");
    assert_eq!(deploy(&svc, &v1).code, 0, "the first deploy starts v1");
    let url = format!("http://127.0.0.1:{listen}/version");
    answers(&url, service_pid(&svc), "v1");
    let sup = svc.pid_in_file().expect("PID file");
    // Clients straight on the shared socket, and nginx with its idle upstream keep-alive
    // connections in front of it: Jetty itself must keep every request.
    let nginx = Nginx::start(&svc.dir, listen);

    let mut ka = Load::start(&url, "keepalive", LONG);
    let mut close = Load::start(&url, "close", LONG);
    let mut proxied = Load::start(&nginx.url("/version"), "keepalive", LONG);
    hand_over(&svc, Some(&v2), &url, "v2");
    let last = hand_over(&svc, None, &url, "v1");
    assert!(
        ka.running() && close.running() && proxied.running(),
        "the load covered both handoffs"
    );
    for (what, load) in [
        ("keep-alive", ka),
        ("Connection: close", close),
        ("keep-alive through nginx", proxied),
    ] {
        let r = load.stop();
        eprintln!("{what}: {r:?}");
        assert!(r.requests > 100, "{what}: load ran: {r:?}");
        assert_eq!(r.failed, 0, "{what} requests failed: {r:?}");
    }
    assert_eq!(get(&nginx.url("/version")).map(|x| x.0), Some(last));
    assert_eq!(svc.pid_in_file(), Some(sup), "one supervisor throughout");

    // Both old JVMs drained on the shared socket without closing it, so their output
    // kept reaching baton to the end (closing the JDK's inherited channel would have
    // put /dev/null on their stdout and stderr).
    let out = svc.log("stdout.log");
    assert_eq!(
        out.matches("stopped accepting (shared socket left open)")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(out.matches("baton-example: stopped\n").count(), 2, "{out}");
    let log = std::fs::read_to_string(svc.dir.join("app/revisions.log")).expect("revisions.log");
    assert_eq!(log.lines().count(), 3, "{log}");
    svc.stop();
}

#[test]
fn jetty_nginx_mode_deploy_and_rollback_under_load() {
    if !harness::jvm_available() {
        eprintln!("skipped: run scripts/setup-deps for Java, Clojure and Jetty");
        return;
    }
    let _turn = one_under_load();
    // Port 0: Jetty binds an ephemeral port, baton finds it in /proc.
    let tables = |proxy: &str| {
        format!(
            "[port]\nmode = \"discover\"\n[release]\nroot = \"{{dir}}/app\"\n\
             [ready]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ntimeout = \"90s\"\n\
             [stop]\ntimeout = \"20s\"\n[deploy]\ndrain_timeout = \"15s\"\n{proxy}"
        )
    };
    let spec = Spec::new("jettyng", "[\"{release}/run\", \"--port\", \"0\"]")
        .env("JAVA_OPTS = \"-Xmx128m\"\nSTOP_TIMEOUT_MS = \"10000\"");
    let svc = spec.clone().tables(&tables("")).create();
    let v1 = jetty_release(&svc.dir, "v1");
    let v2 = jetty_release(&svc.dir, "v2");
    assert_eq!(deploy(&svc, &v1).code, 0, "the first deploy starts v1");
    let (_, st) = svc.status();
    let p1 = st["port"].as_u64().expect("discovered port") as u16;
    let nginx = Nginx::start(&svc.dir, p1);
    // From now on deploys switch this nginx, confirmed by the X-Pid Jetty sends.
    svc.rewrite(&spec.tables(&tables(&nginx.proxy_table(None, "10s"))));
    let url = nginx.url("/version");
    answers(&url, service_pid(&svc), "v1");

    let mut ka = Load::start(&url, "keepalive", LONG);
    let mut close = Load::start(&url, "close", LONG);
    hand_over(&svc, Some(&v2), &url, "v2");
    let (_, st) = svc.status();
    let p2 = st["port"].as_u64().expect("port") as u16;
    assert_ne!(p1, p2, "a fresh port");
    assert!(
        nginx.upstream_text().contains(&format!("127.0.0.1:{p2}")),
        "{}",
        nginx.upstream_text()
    );
    hand_over(&svc, None, &url, "v1");
    assert!(
        ka.running() && close.running(),
        "the load covered both handoffs"
    );
    let r = close.stop();
    eprintln!("Connection: close: {r:?}");
    assert!(r.requests > 100, "load ran: {r:?}");
    assert_eq!(r.failed, 0, "Connection: close requests failed: {r:?}");
    let r = ka.stop();
    eprintln!("keep-alive: {r:?}");
    assert!(r.requests > 100, "load ran: {r:?}");
    // No request reached a Jetty that was stopping or gone (that would be a 502 or a
    // 503). What keep-alive clients can still lose is nginx's, not baton's or Jetty's:
    // an old nginx worker closes idle client connections as it exits after a reload, and
    // a request sent on one at that instant fails (a read error); 1-4 per reload measured
    // (tests/deploy-lab/README.md).
    assert_eq!(
        r.non2xx, 0,
        "keep-alive: answers with an error status: {r:?}"
    );
    assert_eq!(
        r.failed, r.read,
        "keep-alive: only closed connections: {r:?}"
    );
    assert!(r.failed <= 8, "keep-alive: at most 4 per reload: {r:?}");
    let out = svc.log("stdout.log");
    assert_eq!(out.matches("baton-example: stopped\n").count(), 2, "{out}");
    svc.stop();
}

#[test]
fn jetty_takes_a_socket_activation_socket_on_fd_3() {
    if !harness::jvm_available() {
        eprintln!("skipped: run scripts/setup-deps for Java, Clojure and Jetty");
        return;
    }
    let listen = free_port();
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clj-service/run");
    let svc = Spec::new("jettyfd3", &format!("[\"{}\"]", run.display()))
        .env("JAVA_OPTS = \"-Xmx128m\"\nSTOP_TIMEOUT_MS = \"5000\"")
        .tables(&format!(
            "[listen]\naddress = \"127.0.0.1:{listen}\"\nfd = 3\n\
             [ready]\nlog = 'serving on 127\\.0\\.0\\.1:{listen} .*\\(inherited socket\\)'\n\
             timeout = \"90s\"\n[stop]\ntimeout = \"20s\"\n"
        ))
        .create();
    svc.start();
    answers(
        &format!("http://127.0.0.1:{listen}/version"),
        service_pid(&svc),
        "dev",
    );
    svc.stop();
    let (code, st) = svc.status();
    assert_eq!(code, 3, "{st}");
    assert_eq!(st["last_exit"], "exited with code 143", "{st}");
    let out = svc.log("stdout.log");
    assert!(out.contains("drained in"), "{out}");
    assert!(out.contains("baton-example: stopped\n"), "{out}");
}

#[test]
fn the_jetty_example_configs_pass_check() {
    for config in ["clj-service-socket.toml", "clj-service-deploy.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(config);
        let r: harness::Run = Command::new(harness::baton_bin())
            .arg("--config")
            .arg(&path)
            .arg("check")
            .output()
            .expect("baton check")
            .into();
        assert_eq!(r.code, 0, "{config}: {r:?}");
    }
}
