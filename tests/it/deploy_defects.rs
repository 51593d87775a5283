//! Regressions of the deploy defects found under load (issue 10), with real nginx and a
//! service that sends no `X-Pid` header, as most services do not.

use crate::harness;

use harness::lab::Nginx;
use harness::{body, fetch, fixture, free_port, wait_until, Spec, Svc};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A release of the version server in `dir/build-VERSION`, with marker files (NOPID, CRASH,
/// ANYADDR…) and an executable `run`: the server, or `script` instead.
fn release(dir: &Path, version: &str, markers: &[&str], script: Option<&str>) -> PathBuf {
    let rel = dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&rel).expect("release dir");
    std::fs::write(rel.join("VERSION"), format!("{version}\n")).expect("VERSION");
    for m in markers {
        std::fs::write(rel.join(m), "").expect("marker");
    }
    let run = match script {
        Some(s) => format!("#!/bin/sh\n{s}\n"),
        None => format!("#!/bin/sh\nexec {} \"$@\"\n", fixture("version-server")),
    };
    let path = rel.join("run");
    std::fs::write(&path, run).expect("run");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    rel
}

/// Three consecutive ports below the kernel's ephemeral range, all free right now.
fn safe_range() -> u16 {
    // Each call its own range: the tests of this file run in parallel.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let seed = ((std::process::id() % 300) as u16 * 10 + call * 3) % 3000;
    (0..3000u16)
        .map(|i| 22000 + ((seed + i * 3) % 9000))
        .find(|&p| (p..p + 3).all(|q| std::net::TcpListener::bind(("0.0.0.0", q)).is_ok()))
        .expect("three free ports")
}

/// The service's tables around `extra` ([proxy], [registry]…).
fn tables(from: u16, to: u16, extra: &str) -> String {
    format!(
        "[port]\nmode = \"auto\"\nrange = [{from}, {to}]\n[release]\nroot = \"{{dir}}/app\"\n\
         [ready]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ntimeout = \"10s\"\n\
         [stop]\ntimeout = \"5s\"\n[deploy]\ndrain_timeout = \"5s\"\n{extra}"
    )
}

fn spec(name: &str, from: u16, to: u16, extra: &str) -> Spec {
    Spec::new(name, "[\"{release}/run\", \"{port}\"]").tables(&tables(from, to, extra))
}

fn deploy(svc: &Svc, release: &Path) -> harness::Run {
    svc.baton(&["deploy", "--release", release.to_str().expect("utf-8")])
}

fn service_pid(svc: &Svc) -> i64 {
    svc.status().1["service_pid"].as_i64().expect("service pid")
}

#[test]
fn a_release_that_prints_and_exits_at_once_shows_its_last_output() {
    let p = safe_range();
    let svc = spec("quickexit", p, p + 2, "").create();
    let v1 = release(&svc.dir, "v1", &["NOPID"], None);
    assert_eq!(deploy(&svc, &v1).code, 0);
    let serving = service_pid(&svc);
    // Printed and gone in the same instant: the exit and the last bytes arrive together.
    for n in 0..3 {
        let bad = release(
            &svc.dir,
            &format!("bad{n}"),
            &[],
            Some(&format!(
                "echo \"loading release bad{n}\"\necho \"fatal: no database configured ({n})\" >&2\nexit 1"
            )),
        );
        let r = deploy(&svc, &bad);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("step 2"), "names the step: {r:?}");
        assert!(r.stderr.contains("exited with code 1"), "{r:?}");
        assert!(
            r.stderr.contains(&format!("loading release bad{n}"))
                && r.stderr
                    .contains(&format!("fatal: no database configured ({n})")),
            "the deploy error carries the release's last output: {r:?}"
        );
    }
    assert_eq!(service_pid(&svc), serving, "v1 kept serving");
    svc.stop();
}

#[test]
fn start_with_a_proxy_means_ready_and_routed() {
    let p = safe_range();
    let base = spec("routed", p, p + 2, "").create();
    let nginx = Nginx::start(&base.dir, free_port());
    let proxied = |table: &str| spec("routed", p, p + 2, table);
    let good = nginx.proxy_table_observed(None, "10s");

    // A main config that does not include the upstream file cannot work: `check` and
    // `start` say so before anything starts.
    let other = base.path("other-nginx.conf");
    std::fs::write(&other, "events {}\nhttp {}\n").expect("other config");
    let unincluded = good.replace(
        &format!("config = \"{}/nginx.conf\"", nginx.dir.display()),
        &format!("config = \"{}\"", other.display()),
    );
    assert_ne!(unincluded, good);
    base.rewrite(&proxied(&unincluded));
    let r = base.baton(&["check"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "does not mention the upstream file {}",
            nginx.upstream.display()
        )),
        "{r:?}"
    );
    let v1 = release(&base.dir, "v1", &["NOPID"], None);
    let r = deploy(&base, &v1);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(base.processes().is_empty(), "nothing started");

    // Configured right: `start` returns once nginx routes to the instance, not before.
    base.rewrite(&proxied(&good));
    let r = deploy(&base, &v1);
    assert_eq!(r.code, 0, "{r:?}");
    let port = base.status().1["port"].as_u64().expect("port");
    assert!(
        nginx.upstream_text().contains(&format!("127.0.0.1:{port}")),
        "{}",
        nginx.upstream_text()
    );
    let through = fetch(&nginx.url("/")).expect("an answer through nginx");
    assert_eq!(
        (through.status, through.body.as_str()),
        (200, "v1"),
        "{through:?}"
    );
    assert_eq!(
        through.header("x-pid"),
        None,
        "the service sends no X-Pid header"
    );
    base.stop();

    // A first switch that fails fails `start`, with the reason, and leaves nothing running.
    let rejected = nginx.proxy_table_observed(Some("server 127.0.0.1:{port} no_such_flag;"), "10s");
    base.rewrite(&proxied(&rejected));
    let r = base.baton(&["start"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("route traffic to routed"), "{r:?}");
    assert!(r.stderr.contains("proxy check"), "says which step: {r:?}");
    assert!(r.stderr.contains("nothing is left running"), "{r:?}");
    assert!(base.processes().is_empty(), "nothing left running: {r:?}");
    assert_eq!(base.status().0, 3);
    assert!(base.pid_in_file().is_none());

    // A crash-restart whose publish fails is still running, and `status` says it is unrouted.
    base.rewrite(&proxied(&good));
    base.start();
    let pid = service_pid(&base);
    base.rewrite(&proxied(&rejected));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the service");
    wait_until(T, "status to show the failed publish", || {
        let (code, st) = base.status();
        code == 0
            && st["service_pid"].as_i64().is_some_and(|p| p != pid)
            && st["problem"]
                .as_str()
                .is_some_and(|p| p.contains("unable to route traffic"))
    });
    base.rewrite(&proxied(&good));
    base.stop();
}

#[test]
fn start_with_an_unreachable_etcd_fails_and_leaves_nothing() {
    let p = safe_range();
    let dead = free_port();
    let svc = spec(
        "etcdless",
        p,
        p + 2,
        &format!("[registry]\netcd = [\"http://127.0.0.1:{dead}\"]\nprefix = \"t/etcdless\"\n"),
    )
    .create();
    let v1 = release(&svc.dir, "v1", &["NOPID"], None);
    let r = deploy(&svc, &v1);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("127.0.0.1:{dead}")),
        "names the endpoint: {r:?}"
    );
    assert!(svc.processes().is_empty(), "nothing left running: {r:?}");
    assert_eq!(svc.status().0, 3);
}

#[test]
fn a_switch_is_confirmed_by_observation_without_x_pid() {
    let p = safe_range();
    let svc = spec("observed", p, p + 2, "").create();
    let nginx = Nginx::start(&svc.dir, free_port());
    let with = |table: &str| spec("observed", p, p + 2, table);
    svc.rewrite(&with(&nginx.proxy_table_observed(None, "10s")));
    let v1 = release(&svc.dir, "v1", &["NOPID"], None);
    assert_eq!(deploy(&svc, &v1).code, 0);
    let v2 = release(&svc.dir, "v2", &["NOPID"], None);
    let r = deploy(&svc, &v2);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, st) = svc.status();
    let (pid2, port2) = (st["service_pid"].clone(), st["port"].clone());
    assert!(
        r.stderr.contains(&format!(
            "confirmed requests reach pid {pid2} (new connections to port {port2})"
        )),
        "{r:?}"
    );
    let through = fetch(&nginx.url("/")).expect("answer");
    assert_eq!(
        (through.body.as_str(), through.header("x-pid")),
        ("v2", None)
    );

    // A proxy that does not take the new upstream (its first reload does nothing, yet exits
    // 0) is caught: nothing reaches the new port. The restore's reload is real, and seen.
    let mut table = nginx.proxy_table_observed(None, "15s");
    let reload_line = table
        .lines()
        .find(|l| l.starts_with("reload = "))
        .expect("reload line")
        .to_string();
    let d = nginx.dir.display();
    let once = svc.path("reloaded-once");
    let script = format!(
        "test -e {} || {{ touch {}; exit 0; }}; exec /usr/sbin/nginx -p {d}/ -e {d}/error.log -c {d}/nginx.conf -s reload",
        once.display(),
        once.display()
    );
    table = table.replace(
        &reload_line,
        &format!("reload = [\"sh\", \"-c\", {script:?}]"),
    );
    svc.rewrite(&with(&table));
    let v3 = release(&svc.dir, "v3", &["NOPID"], None);
    let r = deploy(&svc, &v3);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("step 3"), "{r:?}");
    assert!(r.stderr.contains("no connection to port"), "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("confirmed requests reach pid {pid2}"))
            && r.stderr.contains("again"),
        "the restore is confirmed by observation too: {r:?}"
    );
    assert!(r.stderr.contains("kept serving"), "{r:?}");
    assert_eq!(svc.status().1["service_pid"], pid2, "v2 still serves");
    assert_eq!(body(&nginx.url("/")).as_deref(), Some("v2"));
    svc.rewrite(&with(&nginx.proxy_table_observed(None, "10s")));
    svc.stop();
}

#[test]
fn a_failed_confirmation_and_a_failed_restore_say_what_is_true() {
    let p = safe_range();
    let svc = spec("untrue", p, p + 2, "").create();
    let nginx = Nginx::start(&svc.dir, free_port());
    let with = |table: &str| spec("untrue", p, p + 2, table);
    let good = nginx.proxy_table_observed(None, "10s");
    svc.rewrite(&with(&good));
    let v1 = release(&svc.dir, "v1", &["NOPID"], None);
    assert_eq!(deploy(&svc, &v1).code, 0);
    let (_, st) = svc.status();
    let (pid1, port1) = (st["service_pid"].clone(), st["port"].clone());
    // Nothing answers the confirm URL: neither the new instance nor, after the restore, the old.
    let nowhere = format!("http://127.0.0.1:{}/", free_port());
    svc.rewrite(&with(&good.replace(&nginx.url("/version"), &nowhere)));
    let v2 = release(&svc.dir, "v2", &["NOPID"], None);
    let r = deploy(&svc, &v2);
    assert_eq!(r.code, 1, "{r:?}");
    let err = &r.stderr;
    assert!(err.contains("AND restoring failed"), "{r:?}");
    assert!(
        err.contains(&format!(
            "requests through {nowhere} do not reach the old instance either"
        )),
        "{r:?}"
    );
    assert!(
        err.contains(&format!(
            "the old instance (pid {pid1}, port {port1}) still runs"
        )),
        "{r:?}"
    );
    assert_eq!(
        err.matches("hint: the old instance").count(),
        1,
        "what to do, said once: {r:?}"
    );
    assert!(!err.contains("hint: the proxy did not take"), "{r:?}");
    assert!(!err.contains("kept serving"), "{r:?}");
    assert_eq!(svc.status().1["service_pid"], pid1);
    // What it said is true: the previous upstream is back and nginx routes to v1.
    assert!(nginx
        .upstream_text()
        .contains(&format!("127.0.0.1:{port1}")));
    assert_eq!(body(&nginx.url("/")).as_deref(), Some("v1"));
    svc.stop();
}

/// Holds an outgoing connection from 127.0.0.2:`port` until dropped, as a client's
/// ephemeral port would: a service binding 0.0.0.0:`port` then gets EADDRINUSE.
struct Holder(std::process::Child);

impl Holder {
    fn hold(port: u16) -> Holder {
        let script = "import socket, sys\n\
            ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(4)\n\
            s = socket.socket(); s.bind(('127.0.0.2', int(sys.argv[1]))); s.connect(ls.getsockname())\n\
            peer = ls.accept()\n\
            print('held', flush=True)\n\
            sys.stdin.read()\n";
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", script, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "held");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_new_instance_whose_auto_port_was_taken_is_started_on_another() {
    let p = safe_range();
    let svc = spec("porttaken", p, p + 2, "").create();
    // The range overlaps no ephemeral port: `check` is quiet about it.
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("ephemeral"), "{r:?}");
    let v1 = release(&svc.dir, "v1", &["NOPID", "ANYADDR"], None);
    assert_eq!(deploy(&svc, &v1).code, 0);
    let sup = svc.pid_in_file().expect("supervisor") as u32;
    let x = svc.status().1["port"].as_u64().expect("port") as u16;
    // baton tries the range from a point its PID fixes: v1 got it, v2 gets the next one.
    assert_eq!(x, p + (sup % 3) as u16, "v1 on the first port baton tries");
    let first = p + (x - p + 1) % 3;
    let other = p + (x - p + 2) % 3;
    // Taken after baton's look (it checks 127.0.0.1), before the service binds 0.0.0.0.
    let _held = Holder::hold(first);
    let v2 = release(&svc.dir, "v2", &["NOPID", "ANYADDR"], None);
    let r = deploy(&svc, &v2);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "port {first} was taken before the new instance could bind it (Address already in use)"
        )),
        "{r:?}"
    );
    let (_, st) = svc.status();
    assert_eq!(st["port"].as_u64(), Some(u64::from(other)), "{st}");
    assert_eq!(
        body(&format!("http://127.0.0.1:{other}/")).as_deref(),
        Some("v2")
    );
    svc.stop();

    // A range inside the kernel's ephemeral ports gets a warning from `check`.
    let (lo, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range")
        .split_whitespace()
        .map(|v| v.parse::<u16>().expect("port"))
        .fold((0, 0), |(a, _), v| if a == 0 { (v, 0) } else { (a, v) });
    svc.rewrite(&spec("porttaken", lo, lo + 10, ""));
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 0, "a warning, not an error: {r:?}");
    assert!(
        r.stderr.contains("overlaps the kernel's ephemeral ports"),
        "{r:?}"
    );
}

/// With upstream keep-alive, nginx's new workers open a connection to the new instance once
/// and then reuse it: after the first requests, no new connection appears. Observation counts
/// an established connection the proxy did not hold before the reload as proof too, so it
/// confirms at once rather than when those connections idle out (here a minute, far beyond
/// the confirm timeout; the 4 s of the lab's default made that a ~10 s confirmation).
#[test]
fn observation_confirms_at_once_when_nginx_keeps_upstream_connections_alive() {
    let p = safe_range();
    let svc = spec("kaobs", p, p + 2, "").create();
    let nginx = Nginx::start_with(
        &svc.dir,
        free_port(),
        &[("NGINX_UPSTREAM_KEEPALIVE_TIMEOUT", "60s")],
    );
    svc.rewrite(&spec(
        "kaobs",
        p,
        p + 2,
        &nginx.proxy_table_observed(None, "10s"),
    ));
    let v1 = release(&svc.dir, "v1", &["NOPID"], None);
    assert_eq!(deploy(&svc, &v1).code, 0);
    // Clients that keep their connections too: nginx's workers keep theirs to the upstream busy.
    let load = harness::lab::Load::start(&nginx.url("/"), "keepalive", 8);
    for v in ["v2", "v3"] {
        let rel = release(&svc.dir, v, &["NOPID"], None);
        let r = deploy(&svc, &rel);
        assert_eq!(r.code, 0, "{r:?}");
        let pid = svc.status().1["service_pid"].clone();
        assert!(
            r.stderr
                .contains(&format!("confirmed requests reach pid {pid}")),
            "{r:?}"
        );
        assert_eq!(body(&nginx.url("/")).as_deref(), Some(v));
    }
    let (n, failed) = load.finish();
    assert!(n > 100, "the load ran: {n}");
    // What keep-alive clients can lose is nginx's (old workers closing idle client
    // connections as they exit), at most 4 per reload (tests/deploy-lab/README.md).
    assert!(failed <= 8, "{failed} of {n} failed");
    svc.stop();
}
