//! The deploy's switch worker (`baton __switch`) against real nginx, HAProxy and etcd on loopback.

use crate::harness;

use harness::lab::{served_by, Etcd, Nginx, PausedSwitch};
use harness::{alive, free_port, wait_until, Run, Spec, Svc};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BACKEND: &str = r#"
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("pid %d\n" % os.getpid()).encode()
        self.send_response(200)
        self.send_header("X-Pid", str(os.getpid()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    def handle_error(self, request, address):
        pass  # clients that hang up (nginx, haproxy health of old workers) are no news
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A real HTTP server answering every GET with its own PID in `X-Pid`.
struct Backend {
    child: Child,
    port: u16,
}

impl Backend {
    fn start() -> Backend {
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-c", BACKEND, &port.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .expect("start python3 backend");
        let b = Backend { child, port };
        wait_until(Duration::from_secs(10), "the backend to answer", || {
            served_by(b.port).is_some()
        });
        b
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service with `tables` ([proxy]…) and a [registry] whose file is `{dir}/registry.json`,
/// with `registry` lines more.
fn web(tables: &str, registry: &str) -> Spec {
    Spec::new("web", r#"["sleep", "100"]"#).tables(&format!(
        "{tables}\n[registry]\nfile = \"{{dir}}/registry.json\"\n{registry}"
    ))
}

/// A service config in a temp dir with `tables` ([proxy]) and the local registry file.
fn service(tables: &str) -> Svc {
    web(tables, "").create()
}

/// Same, with etcd endpoints and a prefix in [registry].
fn service_etcd(tables: &str, endpoints: &[&str]) -> Svc {
    let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    web(
        tables,
        &format!("etcd = [{}]\nprefix = \"test/web\"\n", list.join(", ")),
    )
    .create()
}

/// `baton __switch` to `to` (pid, port) from `from`.
fn switch(svc: &Svc, to: (i32, u16), from: Option<(i32, u16)>) -> Run {
    let args = switch_args(to, from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    svc.baton(&args)
}

fn switch_args(to: (i32, u16), from: Option<(i32, u16)>) -> Vec<String> {
    let mut a = vec![
        "__switch".to_string(),
        "--pid".into(),
        to.0.to_string(),
        "--port".into(),
        to.1.to_string(),
        "--release".into(),
        format!("r{}", to.1),
    ];
    if let Some((pid, port)) = from {
        a.extend([
            "--old-pid".into(),
            pid.to_string(),
            "--old-port".into(),
            port.to_string(),
            "--old-release".into(),
            format!("r{port}"),
        ]);
    }
    a
}

fn last_line(r: &Run) -> &str {
    r.stdout.lines().last().unwrap_or("")
}

fn registry_json(svc: &Svc) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(svc.path("registry.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// No candidate or check copies left beside the upstream file or the nginx config.
fn no_leftovers(dirs: &[&Path]) {
    for d in dirs {
        for e in std::fs::read_dir(d).expect("read dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".baton-"),
                "left behind: {}",
                e.path().display()
            );
        }
    }
}

#[test]
fn nginx_switch_is_confirmed_and_published() {
    let old = Backend::start();
    let new = Backend::start();
    let svc = service("");
    let nginx = Nginx::start(&svc.dir, old.port);
    svc.rewrite(&web(&nginx.proxy_table(None, "5s"), ""));
    assert!(nginx.serves(old.pid()));

    let r = switch(&svc, (new.pid(), new.port), Some((old.pid(), old.port)));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("proxy: candidate passed nginx -t ("),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!(
            "proxy: reloaded nginx; confirmed pid {} answers through http://127.0.0.1:{}/version (",
            new.pid(),
            nginx.port
        )),
        "{r:?}"
    );
    nginx.settles_on(new.pid());
    assert_eq!(
        nginx.upstream_text(),
        format!("server 127.0.0.1:{};\n", new.port)
    );
    let reg = registry_json(&svc).expect("registry file");
    assert_eq!(reg["port"]["current"], new.port);
    assert_eq!(reg["port"]["previous"], old.port);
    assert_eq!(reg["pid"]["current"], new.pid());
    assert_eq!(reg["pid"]["previous"], old.pid());
    assert_eq!(reg["release"]["current"], format!("r{}", new.port));
    assert!(reg["updated"].as_str().is_some_and(|u| u.ends_with('Z')));
    no_leftovers(&[&svc.dir, &nginx.dir]);
}

#[test]
fn nginx_rejected_candidate_leaves_everything_as_it_was() {
    let old = Backend::start();
    let new = Backend::start();
    let svc = service("");
    let nginx = Nginx::start(&svc.dir, old.port);
    // `bogus` is no parameter of `server`: nginx -t refuses it.
    svc.rewrite(&web(
        &nginx.proxy_table(Some("server 127.0.0.1:{port} bogus;\n"), "5s"),
        "",
    ));
    let before = std::fs::read(&nginx.upstream).expect("upstream");

    let r = switch(&svc, (new.pid(), new.port), Some((old.pid(), old.port)));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(last_line(&r).starts_with("error: proxy check: "), "{r:?}");
    assert!(
        last_line(&r).contains("invalid parameter \"bogus\""),
        "{r:?}"
    );
    assert_eq!(std::fs::read(&nginx.upstream).expect("upstream"), before);
    assert!(nginx.serves(old.pid()));
    assert!(registry_json(&svc).is_none(), "nothing published");
    no_leftovers(&[&svc.dir, &nginx.dir]);
}

#[test]
fn nginx_switch_that_never_reaches_the_new_pid_is_undone() {
    let old = Backend::start();
    let svc = service("");
    let nginx = Nginx::start(&svc.dir, old.port);
    svc.rewrite(&web(&nginx.proxy_table(None, "1s"), ""));
    let before = std::fs::read(&nginx.upstream).expect("upstream");
    // nginx -t accepts a port nobody listens on (it does not connect): only confirmation catches it.
    let dead_port = free_port();

    let r = switch(&svc, (4_000_000, dead_port), Some((old.pid(), old.port)));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("proxy: candidate passed nginx -t"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!(
            "and reloaded; confirmed pid {} answers again (",
            old.pid()
        )),
        "{r:?}"
    );
    assert!(last_line(&r).starts_with("error: proxy confirm: "), "{r:?}");
    assert!(
        last_line(&r).contains("pid 4000000 did not answer"),
        "{r:?}"
    );
    assert_eq!(std::fs::read(&nginx.upstream).expect("upstream"), before);
    nginx.settles_on(old.pid());
    assert!(registry_json(&svc).is_none(), "nothing published");

    // A live backend that is not the expected pid is no confirmation either.
    let other = Backend::start();
    let r = switch(&svc, (other.pid() + 1_000_000, other.port), None);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        last_line(&r).contains(&format!("from pid {}", other.pid())),
        "{r:?}"
    );
    assert_eq!(std::fs::read(&nginx.upstream).expect("upstream"), before);
    nginx.settles_on(old.pid());
}

#[test]
fn etcd_keys_rotate_over_two_switches() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let etcd = Etcd::start(&test.dir);
    let svc = service_etcd("", &[&etcd.url]);
    let (a, b) = (Backend::start(), Backend::start());

    let r = switch(&svc, (a.pid(), a.port), None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("registry: etcd {} reachable; test/web/ holds port current=- pid current=- (mod_revision 0)", etcd.url)),
        "{r:?}"
    );
    let keys = etcd.keys("test/web");
    let want: BTreeMap<String, String> = [
        ("test/web/pid/current", a.pid().to_string()),
        ("test/web/port/current", a.port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(keys, want);

    let r = switch(&svc, (b.pid(), b.port), Some((a.pid(), a.port)));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "registry: etcd {} test/web port current={} previous={} pid current={} previous={}",
            etcd.url,
            b.port,
            a.port,
            b.pid(),
            a.pid()
        )),
        "{r:?}"
    );
    let keys = etcd.keys("test/web");
    let want: BTreeMap<String, String> = [
        ("test/web/pid/current", b.pid().to_string()),
        ("test/web/pid/previous", a.pid().to_string()),
        ("test/web/port/current", b.port.to_string()),
        ("test/web/port/previous", a.port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(keys, want);
    let reg = registry_json(&svc).expect("registry file");
    assert_eq!(reg["port"]["current"], b.port);
    assert_eq!(reg["port"]["previous"], a.port);
}

#[test]
fn unreachable_etcd_fails_before_the_proxy_moves() {
    let old = Backend::start();
    let new = Backend::start();
    let svc = service("");
    let nginx = Nginx::start(&svc.dir, old.port);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    svc.rewrite(&web(
        &nginx.proxy_table(None, "5s"),
        &format!("etcd = [\"{nowhere}\"]\n"),
    ));
    let before = std::fs::read(&nginx.upstream).expect("upstream");

    let r = switch(&svc, (new.pid(), new.port), Some((old.pid(), old.port)));
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 1, "no step ran: {r:?}");
    let line = last_line(&r);
    assert!(
        line.starts_with("error: registry: unable to reach etcd"),
        "{r:?}"
    );
    assert!(line.contains(&nowhere), "names the endpoint: {r:?}");
    assert!(
        line.contains("nothing was switched"),
        "says what to do: {r:?}"
    );
    assert_eq!(std::fs::read(&nginx.upstream).expect("upstream"), before);
    assert!(nginx.serves(old.pid()));
    assert!(registry_json(&svc).is_none());
}

#[test]
fn a_registry_changed_under_us_is_reported_and_the_proxy_restored() {
    let old = Backend::start();
    let new = Backend::start();
    let svc = service("");
    let nginx = Nginx::start(&svc.dir, old.port);
    let etcd = Etcd::start(&svc.dir);
    svc.rewrite(&web(
        &nginx.proxy_table(None, "5s"),
        &format!("etcd = [\"{}\"]\nprefix = \"test/web\"\n", etcd.url),
    ));
    // A first deploy published the old instance.
    let r = switch(&svc, (old.pid(), old.port), None);
    assert_eq!(r.code, 0, "{r:?}");
    let registry_before = std::fs::read(svc.path("registry.json")).expect("registry file");
    let upstream_before = std::fs::read(&nginx.upstream).expect("upstream");

    // The worker pauses between the proxy switch and publishing; another writer gets in.
    let paused = PausedSwitch::start(
        &svc.config,
        &switch_args((new.pid(), new.port), Some((old.pid(), old.port))),
        3000,
        "proxy: reloaded nginx; confirmed",
    );
    let t = Instant::now();
    etcd.ctl(&["put", "test/web/port/current", "9999"]);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "the write must land inside the pause"
    );
    let (code, out) = paused.finish();

    assert_eq!(code, Some(1), "{out:#?}");
    let last = out.last().cloned().unwrap_or_default();
    assert!(last.starts_with("error: registry publish: "), "{out:#?}");
    assert!(
        last.contains("the registry changed under us (another deploy?)"),
        "{out:#?}"
    );
    assert!(last.contains("is now 9999"), "{out:#?}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("proxy: restored the previous")),
        "{out:#?}"
    );
    assert_eq!(
        std::fs::read(&nginx.upstream).expect("upstream"),
        upstream_before
    );
    nginx.settles_on(old.pid());
    assert_eq!(
        std::fs::read(svc.path("registry.json")).expect("registry"),
        registry_before
    );
    let keys = etcd.keys("test/web");
    assert_eq!(
        keys.get("test/web/port/current").map(String::as_str),
        Some("9999")
    );
    assert_eq!(
        keys.get("test/web/pid/current"),
        Some(&old.pid().to_string())
    );
    assert!(
        !keys.contains_key("test/web/port/previous"),
        "nothing written: {keys:?}"
    );
}

#[test]
fn a_failed_restore_says_what_is_left_and_exits_3() {
    let svc = service("");
    let live = svc.path("proxy.conf");
    std::fs::write(&live, "old\n").expect("live file");
    // The first reload succeeds, every later one fails; nothing answers the confirm URL.
    svc.rewrite(&Spec::new("web", r#"["sleep", "100"]"#).tables(&format!(
        "[proxy]\nkind = \"command\"\nupstream = \"{{dir}}/proxy.conf\"\ntemplate = \"new {{port}}\\n\"\n\
         check = [\"true\"]\nreload = [\"sh\", \"-c\", \"test ! -e {{dir}}/reloaded && touch {{dir}}/reloaded || {{ echo proxy is wedged >&2; exit 1; }}\"]\n\
         confirm = \"http://127.0.0.1:{}/\"\nconfirm_timeout = \"300ms\"\n\
         [registry]\nfile = \"{{dir}}/registry.json\"\n",
        free_port()
    )));

    let r = switch(&svc, (4_000_001, 20001), Some((4_000_000, 20000)));
    assert_eq!(r.code, 3, "{r:?}");
    let line = last_line(&r);
    assert!(line.starts_with("error: proxy confirm: "), "{r:?}");
    assert!(
        line.contains("AND restoring failed: unable to reload the proxy (sh -c")
            && line.contains("proxy is wedged"),
        "{r:?}"
    );
    assert!(
        line.contains("is back in place but the proxy did not reload it: run `sh -c"),
        "says what is left: {r:?}"
    );
    assert_eq!(std::fs::read_to_string(&live).expect("live"), "old\n");
    assert!(registry_json(&svc).is_none());
}

const HAPROXY_CFG: &str = "global\n    pidfile {dir}/haproxy.pid\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
frontend fe\n    bind 127.0.0.1:{front}\n    default_backend app\nbackend app\n    server s1 127.0.0.1:{port}\n";

#[test]
fn haproxy_command_switch_is_confirmed() {
    let old = Backend::start();
    let new = Backend::start();
    let svc = service("");
    let front = free_port();
    let d = svc.dir.display().to_string();
    let cfg = svc.path("haproxy.cfg");
    let template = HAPROXY_CFG
        .replace("{dir}", &d)
        .replace("{front}", &front.to_string());
    std::fs::write(&cfg, template.replace("{port}", &old.port.to_string())).expect("cfg");
    let start = Command::new("timeout")
        .args(["10", "haproxy", "-D", "-f", &cfg.to_string_lossy()])
        .status()
        .expect("haproxy");
    assert!(start.success());
    let pidfile = svc.path("haproxy.pid");
    let pids = move || -> Vec<i32> {
        std::fs::read_to_string(&pidfile)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let _stop = Guard(Box::new(move || {
        for p in pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }));
    wait_until(
        Duration::from_secs(10),
        "haproxy to serve the old backend",
        || served_by(front) == Some(old.pid()),
    );
    // -sf: the new haproxy binds beside the old one (SO_REUSEPORT), then tells it to finish and exit.
    let reload = format!("haproxy -D -f {d}/haproxy.cfg -sf $(cat {d}/haproxy.pid)");
    svc.rewrite(&Spec::new("web", r#"["sleep", "100"]"#).tables(&format!(
        "[proxy]\nkind = \"command\"\nupstream = \"{d}/haproxy.cfg\"\ntemplate = {template:?}\n\
         check = [\"haproxy\", \"-c\", \"-q\", \"-f\", \"{{candidate}}\"]\nreload = [\"sh\", \"-c\", {reload:?}]\n\
         confirm = \"http://127.0.0.1:{front}/version\"\nconfirm_header = \"X-Pid\"\nconfirm_timeout = \"5s\"\n\
         [registry]\nfile = \"{{dir}}/registry.json\"\n"
    )));

    let r = switch(&svc, (new.pid(), new.port), Some((old.pid(), old.port)));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("proxy: candidate passed haproxy -c -q -f {candidate} ("),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(&format!(
            "proxy: reloaded the proxy; confirmed pid {}",
            new.pid()
        )),
        "{r:?}"
    );
    // The old haproxy stops accepting once told to by -sf, a moment after the new one binds.
    wait_until(
        Duration::from_secs(3),
        "haproxy to serve only the new pid",
        || (0..4).all(|_| served_by(front) == Some(new.pid())),
    );
    assert!(std::fs::read_to_string(&cfg)
        .expect("cfg")
        .contains(&format!("server s1 127.0.0.1:{}", new.port)));
    assert!(alive(old.pid()), "the switch never stops an instance");
    no_leftovers(&[&svc.dir]);
}

/// Runs a closure on drop (cleanup that must happen when an assertion fails).
struct Guard(Box<dyn Fn()>);

impl Drop for Guard {
    fn drop(&mut self) {
        (self.0)();
    }
}
