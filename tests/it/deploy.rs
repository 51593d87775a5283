//! `deploy` and `rollback` against real nginx, real etcd, wrk and the real JVM example service.
//!
//! Each test starts what it needs on loopback in its own temporary directory
//! (tests/deploy-lab scripts) and stops it at the end.

use crate::harness;

use harness::lab::{get, Etcd, Load, Nginx};
use harness::{fixture, free_port, wait_until, Spec, Svc};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn jvm_release(dir: &Path, version: &str) -> PathBuf {
    harness::example_release(dir, "jdk-service", Some(version))
}

/// A release of the small Python version server; `extra` names marker files (CRASH, HANG).
fn py_release(dir: &Path, version: &str, extra: &[&str]) -> PathBuf {
    let rel = dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&rel).expect("release dir");
    std::fs::write(rel.join("VERSION"), format!("{version}\n")).expect("VERSION");
    for f in extra {
        std::fs::write(rel.join(f), "").expect("marker");
    }
    rel
}

fn deploy(svc: &Svc, release: &Path) -> harness::Run {
    svc.baton(&["deploy", "--release", release.to_str().expect("utf-8")])
}

/// Every version seen through `url` while `busy` runs, deduplicated in order.
fn versions_during(url: &str, busy: impl FnOnce()) -> Vec<String> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let url = url.to_string();
    let watcher = std::thread::spawn(move || {
        let mut seen: Vec<String> = Vec::new();
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some((_, v)) = get(&url) {
                if seen.last() != Some(&v) {
                    seen.push(v);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    busy();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    watcher.join().expect("watcher")
}

#[test]
fn socket_mode_deploy_and_rollback_under_load_fail_no_request() {
    let listen = free_port();
    let svc = Spec::new("jvmsock", "[\"{release}/run\"]")
        .env("JAVA_OPTS = \"-Xmx128m\"\nDRAIN_TIMEOUT_MS = \"8000\"\nINIT_MS = \"300\"")
        .tables(&format!(
            "[listen]\naddress = \"127.0.0.1:{listen}\"\nfd = 3\n\
             [release]\nroot = \"{{dir}}/app\"\n\
             [ready]\nlog = \"serving on\"\ntimeout = \"60s\"\n\
             [stop]\ntimeout = \"15s\"\n[deploy]\ndrain_timeout = \"10s\"\n"
        ))
        .create();
    let v1 = jvm_release(&svc.dir, "v1");
    let v2 = jvm_release(&svc.dir, "v2");
    let r = deploy(&svc, &v1);
    assert_eq!(r.code, 0, "first deploy starts v1: {r:?}");
    let nginx = Nginx::start(&svc.dir, listen);
    assert_eq!(
        get(&nginx.url("/version")).map(|x| x.1),
        Some("version=v1".into())
    );
    let sup = svc.pid_in_file().expect("PID file");

    let ka = Load::start(&nginx.url("/version"), "keepalive", 14);
    let close = Load::start(&nginx.url("/version"), "close", 14);
    // Every request after a handoff returned reaches the new version: the old one is gone.
    let only = |want: &str| {
        for _ in 0..5 {
            assert_eq!(
                get(&nginx.url("/version")).map(|x| x.1),
                Some(want.to_string())
            );
        }
    };
    let seen = versions_during(&nginx.url("/version"), || {
        let r = deploy(&svc, &v2);
        assert_eq!(r.code, 0, "deploy v2: {r:?}");
        only("version=v2");
        for step in ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"] {
            assert!(r.stderr.contains(step), "step {step} printed: {r:?}");
        }
        let (code, st) = svc.status();
        assert_eq!(code, 0);
        assert_eq!(
            st["supervisor_pid"], sup,
            "the PID file's supervisor serves throughout"
        );
        let r = svc.baton(&["rollback"]);
        assert_eq!(r.code, 0, "rollback: {r:?}");
        only("version=v1");
    });
    let (n_ka, failed_ka) = ka.finish();
    let (n_close, failed_close) = close.finish();
    assert!(n_ka > 100 && n_close > 100, "load ran: {n_ka} {n_close}");
    assert_eq!(failed_ka, 0, "keep-alive requests failed ({n_ka} sent)");
    assert_eq!(
        failed_close, 0,
        "Connection: close requests failed ({n_close} sent)"
    );
    // While both instances accept from the shared socket (between the new one's readiness
    // and the old one's drain) either may answer; before and after, only one does.
    assert_eq!(
        seen.first().map(String::as_str),
        Some("version=v1"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|v| v == "version=v2"), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("version=v1"),
        "{seen:?}"
    );
    assert_eq!(svc.pid_in_file(), Some(sup));
    let log = std::fs::read_to_string(svc.dir.join("app/revisions.log")).expect("revisions.log");
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(
        log.lines()
            .nth(2)
            .is_some_and(|l| l.contains("rolled back to release")),
        "{log}"
    );
    svc.stop();
}

#[test]
fn nginx_mode_switches_upstream_publishes_to_etcd_and_drains() {
    let etcd =
        Etcd::start(&std::env::temp_dir().join(format!("baton-etcd-{}", std::process::id())));
    // The same service throughout; only its [proxy] table changes.
    let tables = |proxy: &str| {
        format!(
            "[port]\nmode = \"auto\"\nrange = [32000, 32999]\n\
             [release]\nroot = \"{{dir}}/app\"\n\
             [ready]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ntimeout = \"60s\"\n\
             [stop]\ntimeout = \"15s\"\n[deploy]\ndrain_timeout = \"10s\"\n\
             [registry]\netcd = [\"{}\"]\nprefix = \"services/jvmng\"\n{proxy}",
            etcd.url
        )
    };
    let svc_spec = Spec::new("jvmng", "[\"{release}/run\", \"--port\", \"{port}\"]")
        .env("JAVA_OPTS = \"-Xmx128m\"\nDRAIN_TIMEOUT_MS = \"8000\"\nINIT_MS = \"300\"")
        .tables(&tables(""));
    let svc = svc_spec.clone().create();
    let v1 = jvm_release(&svc.dir, "v1");
    let v2 = jvm_release(&svc.dir, "v2");
    assert_eq!(deploy(&svc, &v1).code, 0);
    let (_, st) = svc.status();
    let p1 = st["port"].as_u64().expect("port") as u16;
    let pid1 = st["service_pid"].as_i64().expect("pid");
    let nginx = Nginx::start(&svc.dir, p1);
    // From now on deploys switch this nginx.
    let full = svc_spec
        .clone()
        .tables(&tables(&nginx.proxy_table(None, "10s")));
    svc.rewrite(&full);
    let before = std::fs::read(&nginx.upstream).expect("upstream");

    let close = Load::start(&nginx.url("/version"), "close", 8);
    let r = deploy(&svc, &v2);
    assert_eq!(r.code, 0, "deploy v2: {r:?}");
    let (n, failed) = close.finish();
    assert!(n > 100, "load ran: {n}");
    assert_eq!(
        failed, 0,
        "Connection: close requests failed during a reload-mode deploy"
    );
    let (_, st) = svc.status();
    let p2 = st["port"].as_u64().expect("port") as u16;
    let pid2 = st["service_pid"].as_i64().expect("pid");
    assert_ne!(p1, p2);
    let upstream = std::fs::read_to_string(&nginx.upstream).expect("upstream");
    assert!(upstream.contains(&format!("127.0.0.1:{p2}")), "{upstream}");
    assert_ne!(before, upstream.as_bytes());
    assert_eq!(
        get(&nginx.url("/version")),
        Some((pid2 as i32, "version=v2".into()))
    );
    assert_eq!(
        etcd.get("services/jvmng/port/current"),
        Some(p2.to_string())
    );
    assert_eq!(
        etcd.get("services/jvmng/port/previous"),
        Some(p1.to_string())
    );
    assert_eq!(
        etcd.get("services/jvmng/pid/current"),
        Some(pid2.to_string())
    );
    assert_eq!(
        etcd.get("services/jvmng/pid/previous"),
        Some(pid1.to_string())
    );
    assert!(!harness::alive(pid1 as i32), "old instance stopped");

    // A template nginx -t rejects: aborted, v2 serving, nginx config as before.
    let good = std::fs::read(&nginx.upstream).expect("upstream");
    let broken = svc_spec.tables(&tables(
        &nginx.proxy_table(Some("server 127.0.0.1:{port} no_such_flag;"), "10s"),
    ));
    svc.rewrite(&broken);
    let r = svc.baton(&["rollback"]);
    assert_ne!(r.code, 0, "a rejected upstream aborts: {r:?}");
    assert!(r.stderr.contains("step 3"), "names the step: {r:?}");
    assert_eq!(
        std::fs::read(&nginx.upstream).expect("upstream"),
        good,
        "live upstream untouched"
    );
    assert_eq!(
        get(&nginx.url("/version")),
        Some((pid2 as i32, "version=v2".into()))
    );
    assert_eq!(
        etcd.get("services/jvmng/port/current"),
        Some(p2.to_string()),
        "registry unchanged"
    );

    svc.rewrite(&full);
    let r = svc.baton(&["rollback"]);
    assert_eq!(r.code, 0, "rollback: {r:?}");
    let (_, st) = svc.status();
    let pid3 = st["service_pid"].as_i64().expect("pid");
    assert_eq!(
        get(&nginx.url("/version")),
        Some((pid3 as i32, "version=v1".into()))
    );
    assert_eq!(
        etcd.get("services/jvmng/pid/current"),
        Some(pid3.to_string())
    );
    assert_eq!(
        etcd.get("services/jvmng/pid/previous"),
        Some(pid2.to_string())
    );
    svc.stop();
}

fn py_service(name: &str, port_table: &str) -> Svc {
    Spec::new(
        name,
        &format!("[\"{}\", \"{{port}}\"]", fixture("version-server")),
    )
    .tables(&format!(
        "{port_table}\n[release]\nroot = \"{{dir}}/app\"\nkeep = 3\n\
             [ready]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ntimeout = \"3s\"\n\
             [stop]\ntimeout = \"5s\"\n[deploy]\ndrain_timeout = \"5s\"\n"
    ))
    .create()
}

fn registry(svc: &Svc) -> serde_json::Value {
    let text = std::fs::read_to_string(svc.dir.join("state/registry.json")).expect("registry.json");
    serde_json::from_str(&text).expect("registry json")
}

#[test]
fn a_release_that_crashes_or_never_gets_ready_changes_nothing() {
    let svc = py_service("pybad", "[port]\nmode = \"auto\"\nrange = [33000, 33999]");
    let v1 = py_release(&svc.dir, "v1", &[]);
    assert_eq!(deploy(&svc, &v1).code, 0);
    let v2 = py_release(&svc.dir, "v2", &[]);
    assert_eq!(
        deploy(&svc, &v2).code,
        0,
        "a good deploy first, so the registry has content"
    );
    let (_, st) = svc.status();
    let serving = (
        st["service_pid"].clone(),
        st["port"].clone(),
        st["release"].clone(),
    );
    let reg = registry(&svc);
    let current = std::fs::read_link(svc.dir.join("app/current")).expect("current");
    let url = format!("http://127.0.0.1:{}/", serving.1);
    let load = Load::start(&url, "keepalive", 6);

    let crash = py_release(&svc.dir, "v3", &["CRASH"]);
    let r = deploy(&svc, &crash);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("step 2"), "names the step: {r:?}");
    assert!(
        r.stderr.contains("crashing on purpose"),
        "shows its last output: {r:?}"
    );

    let hang = py_release(&svc.dir, "v4", &["HANG"]);
    let r = deploy(&svc, &hang);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not ready within"), "{r:?}");
    let (n, failed) = load.finish();
    assert!(n > 100, "load ran: {n}");
    assert_eq!(failed, 0, "requests to v1 failed during the failed deploys");

    let (code, st) = svc.status();
    assert_eq!(code, 0);
    assert_eq!(
        (
            st["service_pid"].clone(),
            st["port"].clone(),
            st["release"].clone()
        ),
        serving
    );
    assert!(st["handoff"].is_null(), "{st}");
    assert_eq!(registry(&svc), reg, "registry unchanged");
    assert_eq!(
        std::fs::read_link(svc.dir.join("app/current")).expect("current"),
        current
    );
    assert_eq!(
        get(&url).map(|x| x.1),
        Some("v2".into()),
        "v2 still serving"
    );
    svc.stop();
}

/// The version server on port 0 (baton discovers the port), with releases under `app`.
fn discovering_py_service(name: &str) -> Svc {
    Spec::new(name, &format!("[\"{}\", \"0\"]", fixture("version-server")))
        .tables(
            "[port]\nmode = \"discover\"\n[release]\nroot = \"{dir}/app\"\n\
             [ready]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"5s\"\n\
             [stop]\ntimeout = \"5s\"\n[deploy]\ndrain_timeout = \"5s\"\n",
        )
        .create()
}

#[test]
fn a_port_zero_service_is_discovered_and_a_second_deploy_is_refused() {
    // Port 0: the service binds an ephemeral port and baton finds it in /proc.
    let svc = discovering_py_service("pyzero");
    let v1 = py_release(&svc.dir, "v1", &[]);
    assert_eq!(deploy(&svc, &v1).code, 0);
    let (_, st) = svc.status();
    let port = st["port"].as_u64().expect("discovered port");
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).map(|x| x.1),
        Some("v1".into())
    );
    // A slow release keeps the first handoff busy while a second one is asked for.
    let slow = py_release(&svc.dir, "v2", &["HANG"]);
    let first = std::process::Command::new("timeout")
        .arg("60")
        .arg(harness::baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .args(["deploy", "--release", slow.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("first deploy");
    wait_until(T, "the first handoff to start", || {
        !svc.status().1["handoff"].is_null()
    });
    let v3 = py_release(&svc.dir, "v3", &[]);
    let r = deploy(&svc, &v3);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("already in progress"), "{r:?}");
    let out = first.wait_with_output().expect("first");
    assert!(
        !out.status.success(),
        "the hanging release fails its deploy"
    );
    let r = deploy(&svc, &v3);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, st) = svc.status();
    let port3 = st["port"].as_u64().expect("port");
    assert_ne!(port3, port, "a fresh ephemeral port");
    assert_eq!(
        get(&format!("http://127.0.0.1:{port3}/")).map(|x| x.1),
        Some("v3".into())
    );
    assert_eq!(registry(&svc)["port"]["current"], port3);
    svc.stop();
}

/// `deploy --release REL` as the operator `who` (by sudo's SUDO_USER, as an admin would run it).
fn deploy_as(svc: &Svc, release: &Path, who: &str) -> harness::Run {
    Command::new("timeout")
        .arg("60")
        .arg(harness::baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .args(["deploy", "--release", release.to_str().expect("utf-8")])
        .env("SUDO_USER", who)
        .output()
        .expect("deploy")
        .into()
}

#[test]
fn revisions_log_names_who_deployed_not_who_started_the_supervisor() {
    let svc = discovering_py_service("pywho");
    // carol's first deploy starts the supervisor; alice's second is a handoff inside it.
    let r = deploy_as(&svc, &py_release(&svc.dir, "v1", &[]), "carol");
    assert_eq!(r.code, 0, "{r:?}");
    let r = deploy_as(&svc, &py_release(&svc.dir, "v2", &[]), "alice");
    assert_eq!(r.code, 0, "{r:?}");
    let log = std::fs::read_to_string(svc.dir.join("app/revisions.log")).expect("revisions.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("carol deployed"), "{log}");
    assert!(
        lines[1].contains("alice deployed as release") && !lines[1].contains("carol"),
        "the handoff's line names its own deployer: {log}"
    );
    svc.stop();
}

#[test]
fn unreachable_etcd_fails_the_deploy_before_traffic_moves() {
    let dead = free_port();
    let spec = |registry: &str| {
        Spec::new(
            "pyetcd",
            &format!("[\"{}\", \"{{port}}\"]", fixture("version-server")),
        )
        .tables(&format!(
            "[port]\nmode = \"auto\"\nrange = [34000, 34999]\n[release]\nroot = \"{{dir}}/app\"\n\
             [ready]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ntimeout = \"5s\"\n{registry}"
        ))
    };
    // Started while etcd is not configured (a start that cannot publish fails: deploy_defects.rs).
    let svc = spec("").create();
    let v1 = py_release(&svc.dir, "v1", &[]);
    assert_eq!(deploy(&svc, &v1).code, 0);
    svc.rewrite(&spec(&format!(
        "[registry]\netcd = [\"http://127.0.0.1:{dead}\"]\n"
    )));
    let (_, st) = svc.status();
    let v2 = py_release(&svc.dir, "v2", &[]);
    let r = deploy(&svc, &v2);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("127.0.0.1:{dead}")),
        "names the endpoint: {r:?}"
    );
    let (_, after) = svc.status();
    assert_eq!(after["service_pid"], st["service_pid"], "v1 still serves");
    svc.stop();
}

#[test]
fn stop_during_a_deploy_ends_both_instances_and_fails_the_deploy() {
    let svc = py_service("pystop", "[port]\nmode = \"auto\"\nrange = [35000, 35999]");
    let v1 = py_release(&svc.dir, "v1", &[]);
    assert_eq!(deploy(&svc, &v1).code, 0);
    let slow = py_release(&svc.dir, "v2", &["HANG"]);
    let pending = Command::new("timeout")
        .arg("60")
        .arg(harness::baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .args(["deploy", "--release", slow.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("deploy");
    wait_until(T, "the handoff to start", || {
        !svc.status().1["handoff"].is_null()
    });
    svc.stop();
    let out = pending.wait_with_output().expect("deploy output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("abandoned"), "{err}");
    assert!(
        svc.processes().is_empty(),
        "nothing of either instance is left"
    );
    assert_eq!(svc.status().0, 3);
}

#[test]
fn a_first_release_that_cannot_start_is_not_left_current() {
    let svc = py_service("pyfirst", "[port]\nmode = \"auto\"\nrange = [36000, 36999]");
    let bad = py_release(&svc.dir, "v1", &["CRASH"]);
    let r = deploy(&svc, &bad);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("crashing on purpose"),
        "shows its output: {r:?}"
    );
    assert!(
        std::fs::symlink_metadata(svc.dir.join("app/current")).is_err(),
        "current must not name a release that never started"
    );
    let good = py_release(&svc.dir, "v2", &[]);
    assert_eq!(deploy(&svc, &good).code, 0);
    svc.stop();
}
