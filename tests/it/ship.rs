//! `baton ship` end to end: real sshd test hosts (tests/ship-lab), each with its own root and its own baton.
//!
//! Every host is an OpenSSH `sshd` on its own loopback address, in its own mount
//! namespace where its directory is mounted on /srv/baton-ship. `ship` reaches
//! them over real ssh and runs the real `baton deploy` there. Needs root (the
//! tests skip with a message otherwise) and scripts/setup-deps (openssh, rsync).

use crate::harness;

use harness::{baton_bin, wait_until, Run};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static SEQ: AtomicU32 = AtomicU32::new(0);
const SSH_PORT: u16 = 2222;
const APP_PORT: u16 = 18080;
/// Where each host sees its own root.
const HOST_ROOT: &str = "/srv/baton-ship";

fn lab_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ship-lab")
        .join(name)
}

/// The service the hosts run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    /// tests/ship-lab/app.py: python3, ready in ~50 ms.
    Light,
    /// examples/jdk-service: the real Clojure service on the JDK, ready in ~1.5 s.
    Jvm,
}

/// N test hosts and a project directory holding deploy.toml.
struct Lab {
    dir: PathBuf,
    prefix: String,
    n: usize,
    service: Service,
    last_ship: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the deploy file says, beyond what every test shares.
#[derive(Clone)]
struct Deploy {
    build: String,
    canary: usize,
    max_parallel: usize,
    identity: String,
    known_hosts: String,
    /// Host entries (TOML), default: every lab host by address.
    hosts: Option<String>,
    /// More keys for every environment (etcd, lock_ttl).
    extra: String,
}

impl Lab {
    /// Starts `n` hosts; None (with a note) when not root: sshd and unshare need it.
    fn new(n: usize, service: Service) -> Option<Lab> {
        if !harness::is_root() {
            eprintln!("skipped: ship tests need root (sshd test hosts in mount namespaces)");
            return None;
        }
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("baton-ship-it-{pid}-{seq}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("proj")).expect("lab dir");
        // A loopback /24 of its own per test, so tests can run in parallel.
        let prefix = format!("127.{}.{}", 20 + pid % 200, seq + 1);
        let out = Command::new(lab_script("hosts-up"))
            .arg(&dir)
            .arg(n.to_string())
            .arg(&prefix)
            .arg(SSH_PORT.to_string())
            .output()
            .expect("run hosts-up");
        assert!(
            out.status.success(),
            "hosts-up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lab = Lab {
            dir,
            prefix,
            n,
            service,
            last_ship: 0,
        };
        for i in 1..=n {
            lab.write_service_config(i, "");
        }
        lab.write_files();
        Some(lab)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{i}", self.prefix)
    }

    /// Host i's root as the test sees it.
    fn root(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}/root"))
    }

    fn proj(&self) -> PathBuf {
        self.dir.join("proj")
    }

    /// The host's baton config, as provisioning (Chef) would install it.
    fn write_service_config(&self, i: usize, extra_env: &str) {
        let (command, env, ready) = match self.service {
            Service::Light => (
                "[\"/usr/bin/python3\", \"{release}/app.py\"]".to_string(),
                String::new(),
                "app: serving on",
            ),
            Service::Jvm => (
                "[\"{release}/run\"]".to_string(),
                "JAVA_OPTS = \"-Xmx96m\"\nINIT_MS = \"0\"\nDRAIN_TIMEOUT_MS = \"3000\"\n"
                    .to_string(),
                "jdk-service: serving on",
            ),
        };
        let text = format!(
            "command = {command}\npidfile = \"{HOST_ROOT}/run/app.pid\"\nsocket = \"{HOST_ROOT}/run/app.sock\"\n\
             state_dir = \"{HOST_ROOT}/state\"\n\n[env]\nBATON_TEST_MARKER = \"{marker}\"\n{env}{extra_env}\n\
             [release]\nroot = \"{HOST_ROOT}/app\"\nkeep = 3\n\n[listen]\naddress = \"{addr}:{APP_PORT}\"\nfd = 3\n\n\
             [ready]\nlog = \"{ready}\"\ntimeout = \"60s\"\n\n[stop]\ntimeout = \"10s\"\n\n[log]\ndir = \"{HOST_ROOT}/log\"\n",
            marker = self.dir.display(),
            addr = self.addr(i),
        );
        let etc = self.root(i).join("etc");
        std::fs::create_dir_all(&etc).expect("etc");
        std::fs::write(etc.join("app.toml"), text).expect("service config");
        // Only for the throwaway stand-in some development runs used; harmless otherwise.
        std::fs::write(self.root(i).join("addr"), self.addr(i)).expect("addr");
    }

    /// Per-environment config files in the project.
    fn write_files(&self) {
        for env in ["test", "production"] {
            let d = self.proj().join("config").join(env);
            std::fs::create_dir_all(&d).expect("config dir");
            std::fs::write(
                d.join("logging.properties"),
                format!("level={env}-logging\n"),
            )
            .expect("logging");
            std::fs::write(
                d.join("database.properties"),
                format!("url=jdbc:postgresql://db-{env}/app\n"),
            )
            .expect("database");
        }
    }

    /// The build: copies the service into `out/`, optionally broken.
    fn build(&self, broken: bool) -> String {
        let src = match self.service {
            Service::Light => lab_script("app.py").display().to_string(),
            Service::Jvm => {
                let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jdk-service");
                format!("{}/run {}/src", d.display(), d.display())
            }
        };
        let mut b =
            format!("rm -rf out && mkdir out && cp -r {src} out/ && echo built $BATON_VERSION");
        if broken {
            b.push_str(" && touch out/BROKEN && printf '#!/bin/sh\\nexit 3\\n' > out/run && chmod +x out/run");
        }
        b
    }

    fn deploy(&self) -> Deploy {
        Deploy {
            build: self.build(false),
            canary: 1,
            max_parallel: 4,
            identity: "../id_ed25519".into(),
            known_hosts: "../known_hosts".into(),
            hosts: None,
            extra: String::new(),
        }
    }

    fn write_deploy(&self, d: &Deploy) {
        let hosts = d.hosts.clone().unwrap_or_else(|| {
            (1..=self.n)
                .map(|i| format!("\"{}\"", self.addr(i)))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let baton = std::env::var("BATON_SHIP_TEST_REMOTE_BATON")
            .unwrap_or_else(|_| baton_bin().display().to_string());
        let mut text = format!(
            "service = \"app\"\n\n[build]\ncommand = {:?}\nartifact = \"out\"\n",
            d.build
        );
        for env in ["test", "production"] {
            text.push_str(&format!(
                "\n[environments.{env}]\nhosts = [{hosts}]\nuser = \"root\"\nport = {SSH_PORT}\nidentity = {:?}\n\
                 known_hosts = {:?}\ndeploy_to = \"{HOST_ROOT}/app\"\nbaton = {baton:?}\nconfig = \"{HOST_ROOT}/etc/app.toml\"\n\
                 version_url = \"http://{{host}}:{APP_PORT}/version\"\nverify_timeout = \"5s\"\nkeep_releases = 3\n\
                 max_parallel = {}\ncanary = {}\n{}\n[environments.{env}.files]\n\
                 \"config/logging.properties\" = \"config/{env}/logging.properties\"\n\
                 \"config/database.properties\" = \"config/{env}/database.properties\"\n",
                d.identity, d.known_hosts, d.max_parallel, d.canary, d.extra
            ));
        }
        std::fs::write(self.proj().join("deploy.toml"), text).expect("deploy.toml");
    }

    /// `baton ship ARGS` in the project directory, bounded.
    fn ship(&mut self, args: &[&str]) -> Run {
        // Release IDs have one-second resolution (Capistrano's): never two ships in one second.
        let last = self.last_ship;
        wait_until(Duration::from_secs(2), "the next second", || {
            now_secs() > last
        });
        self.last_ship = now_secs();
        let r: Run = Command::new("timeout")
            .arg("240")
            .arg(baton_bin())
            .arg("ship")
            .args(args)
            .current_dir(self.proj())
            .output()
            .expect("run baton ship")
            .into();
        self.last_ship = self.last_ship.max(now_secs());
        r
    }

    /// What host i answers on its version URL.
    fn version(&self, i: usize) -> Option<String> {
        let body = harness::fetch(&format!("http://{}:{APP_PORT}/version", self.addr(i)))?.body;
        (!body.is_empty()).then(|| body.strip_prefix("version=").unwrap_or(&body).to_string())
    }

    fn releases(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root(i).join("app/releases"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The release `current` points to on host i.
    fn current(&self, i: usize) -> Option<String> {
        let t = std::fs::read_link(self.root(i).join("app/current")).ok()?;
        Some(t.file_name()?.to_string_lossy().into_owned())
    }

    fn read(&self, i: usize, rel: &str) -> String {
        std::fs::read_to_string(self.root(i).join(rel)).unwrap_or_default()
    }

    /// Stops host i's sshd: the host becomes unreachable (connection refused).
    fn take_down(&self, i: usize) {
        let pid =
            std::fs::read_to_string(self.dir.join(format!("h{i}/sshd.pid"))).expect("sshd pid");
        let pid: i32 = pid.trim().parse().expect("pid");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_until(Duration::from_secs(5), "sshd to exit", || {
            !harness::alive(pid)
        });
    }

    /// Ships `version` and asserts every host took it.
    fn ship_ok(&mut self, version: &str) -> Run {
        let r = self.ship(&["test", "--version", version]);
        assert_eq!(r.code, 0, "ship {version} failed: {r:?}");
        for i in 1..=self.n {
            assert_eq!(
                self.version(i).as_deref(),
                Some(version),
                "host {i} after ship: {r:?}"
            );
        }
        r
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .arg("120")
            .arg(lab_script("hosts-down"))
            .arg(&self.dir)
            .arg(baton_bin())
            .arg(format!("{HOST_ROOT}/etc/app.toml"))
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The row of `host` in the final table.
fn row<'a>(r: &'a Run, host: &str) -> &'a str {
    r.stdout
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{host} ")))
        .unwrap_or_else(|| panic!("no table row for {host}: {r:?}"))
}

#[test]
fn clean_ship_of_the_jvm_service_to_three_hosts() {
    let Some(mut lab) = Lab::new(3, Service::Jvm) else {
        return;
    };
    lab.write_deploy(&lab.deploy());
    let r = lab.ship_ok("1.0.0");
    for i in 1..=3 {
        let a = lab.addr(i);
        assert!(
            row(&r, &a).contains("1.0.0") && row(&r, &a).ends_with("ok"),
            "{r:?}"
        );
        let releases = lab.releases(i);
        assert_eq!(releases.len(), 1, "host {i}: {releases:?}");
        let id = &releases[0];
        assert_eq!(id.len(), 14, "timestamped release name: {id}");
        assert_eq!(lab.current(i).as_deref(), Some(id.as_str()));
        let props = lab.read(i, &format!("app/releases/{id}/service.properties"));
        for want in [
            "version=1.0.0\n",
            "environment=test\n",
            "shipped_by=",
            "build_time=",
            "commit=",
        ] {
            assert!(
                props.contains(want),
                "host {i} properties lack {want}: {props}"
            );
        }
        assert!(props.contains(&format!("host={a}\n")), "{props}");
        assert!(!lab
            .read(i, &format!("app/releases/{id}/REVISION"))
            .trim()
            .is_empty());
        let log = lab.read(i, "app/revisions.log");
        assert!(
            log.contains(&format!("deployed as release {id}")),
            "host {i} revisions.log: {log}"
        );
    }
    // A second ship is a handoff from 1.0.0 to 1.1.0 on every host.
    let r = lab.ship_ok("1.1.0");
    for i in 1..=3 {
        let row = row(&r, &lab.addr(i));
        assert!(
            row.contains("1.0.0") && row.contains("1.1.0"),
            "old and new in {row}"
        );
        assert_eq!(lab.releases(i).len(), 2);
    }
}

#[test]
fn per_environment_config_files_land_in_the_release() {
    let Some(mut lab) = Lab::new(2, Service::Light) else {
        return;
    };
    lab.write_deploy(&lab.deploy());
    let r = lab.ship(&["production", "--version", "p1"]);
    assert_eq!(r.code, 0, "{r:?}");
    for i in 1..=2 {
        let cur = "app/current";
        assert_eq!(
            lab.read(i, &format!("{cur}/config/logging.properties")),
            "level=production-logging\n"
        );
        assert_eq!(
            lab.read(i, &format!("{cur}/config/database.properties")),
            "url=jdbc:postgresql://db-production/app\n"
        );
        let props = lab.read(i, &format!("{cur}/service.properties"));
        assert!(
            props.contains("environment=production\n") && props.contains("version=p1\n"),
            "{props}"
        );
        assert_eq!(lab.version(i).as_deref(), Some("p1"));
    }
    let r = lab.ship(&["test", "--version", "t1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        lab.read(1, "app/current/config/logging.properties"),
        "level=test-logging\n"
    );
}

#[test]
fn a_failing_canary_leaves_the_other_hosts_untouched() {
    let Some(mut lab) = Lab::new(3, Service::Light) else {
        return;
    };
    lab.write_deploy(&lab.deploy());
    lab.ship_ok("v1");
    let mut d = lab.deploy();
    d.build = lab.build(true);
    lab.write_deploy(&d);
    let r = lab.ship(&["test", "--version", "v2"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(row(&r, &lab.addr(1)).contains("FAILED at deploy"), "{r:?}");
    for i in 2..=3 {
        assert!(row(&r, &lab.addr(i)).contains("skipped"), "{r:?}");
        assert_eq!(lab.releases(i).len(), 1, "host {i} was touched");
    }
    // The canary's old instance kept serving; nobody moved.
    for i in 1..=3 {
        assert_eq!(lab.version(i).as_deref(), Some("v1"), "host {i}");
    }
    assert!(
        r.stdout
            .contains(&format!("--- {} (deploy) output", lab.addr(1))),
        "{r:?}"
    );
}

#[test]
fn an_unreachable_host_halts_the_rollout_and_rollback_on_failure_restores_the_others() {
    let Some(mut lab) = Lab::new(4, Service::Light) else {
        return;
    };
    let mut d = lab.deploy();
    d.max_parallel = 1; // hosts in order: 1 (canary), 2, 3 (down), 4
    lab.write_deploy(&d);
    lab.ship_ok("v1");
    let v1: Vec<Option<String>> = (1..=4).map(|i| lab.current(i)).collect();
    lab.take_down(3);
    let r = lab.ship(&["test", "--version", "v2", "--rollback-on-failure"]);
    assert_ne!(r.code, 0, "{r:?}");
    let failed = row(&r, &lab.addr(3));
    assert!(
        failed.contains("FAILED at connect") && failed.contains("Connection refused"),
        "{r:?}"
    );
    assert!(r.stdout.contains("rollout halted"), "{r:?}");
    assert!(row(&r, &lab.addr(4)).contains("skipped"), "{r:?}");
    assert_eq!(lab.releases(4).len(), 1, "host 4 was touched");
    for i in [1, 2] {
        assert!(row(&r, &lab.addr(i)).contains("rolled back"), "{r:?}");
        assert_eq!(lab.version(i).as_deref(), Some("v1"), "host {i} back on v1");
        assert_eq!(
            lab.current(i),
            v1[i - 1],
            "host {i} current back on v1's release"
        );
        let log = lab.read(i, "app/revisions.log");
        assert!(log.contains("rolled back to release"), "host {i}: {log}");
    }
    assert_eq!(lab.version(4).as_deref(), Some("v1"));
}

#[test]
fn wrong_ssh_credentials_fail_at_connect_and_touch_nothing() {
    let Some(mut lab) = Lab::new(2, Service::Light) else {
        return;
    };
    let other = lab.dir.join("other_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let mut d = lab.deploy();
    d.identity = other.display().to_string();
    lab.write_deploy(&d);
    let r = lab.ship(&["test", "--version", "v1"]);
    assert_ne!(r.code, 0, "{r:?}");
    let first = row(&r, &lab.addr(1));
    assert!(
        first.contains("FAILED at connect") && first.contains("Permission denied"),
        "{r:?}"
    );
    assert!(row(&r, &lab.addr(2)).contains("skipped"), "{r:?}");
    // A host key that does not match known_hosts is refused too (no prompt, no trust on first use).
    let empty = lab.dir.join("empty_known_hosts");
    std::fs::write(&empty, "").expect("empty known_hosts");
    let mut d = lab.deploy();
    d.known_hosts = empty.display().to_string();
    lab.write_deploy(&d);
    let r = lab.ship(&["test", "--version", "v1"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        row(&r, &lab.addr(1)).contains("Host key verification failed"),
        "{r:?}"
    );
    for i in 1..=2 {
        assert!(lab.releases(i).is_empty(), "host {i} was touched");
    }
}

#[test]
fn a_failing_build_stops_before_any_host_is_touched() {
    let Some(mut lab) = Lab::new(1, Service::Light) else {
        return;
    };
    let mut d = lab.deploy();
    d.build =
        "echo compiling app.clj; echo 'Syntax error compiling at (app.clj:3:1)' >&2; exit 2".into();
    lab.write_deploy(&d);
    let r = lab.ship(&["test", "--version", "v1"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("unable to build v1"), "{r:?}");
    assert!(
        r.stderr.contains("compiling app.clj") && r.stderr.contains("Syntax error compiling"),
        "{r:?}"
    );
    assert!(r.stderr.contains("no host was touched"), "{r:?}");
    assert!(!lab.root(1).join("app").exists(), "host touched");
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    // No lab needed: nothing may be reached. The hosts do not even exist.
    let dir = std::env::temp_dir().join(format!("baton-ship-dry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("conf")).expect("dir");
    std::fs::write(dir.join("conf/log.xml"), "<x/>").expect("file");
    std::fs::write(
        dir.join("deploy.toml"),
        "service = \"web\"\n[build]\ncommand = \"touch BUILT && mkdir -p out\"\nartifact = \"out\"\n\
         [environments.prod]\nhosts = [\"web1.invalid\", \"web2.invalid\", \"web3.invalid\"]\nuser = \"deploy\"\n\
         deploy_to = \"/var/lib/web\"\nversion_url = \"http://{host}:8080/version\"\ncanary = 1\nmax_parallel = 2\n\
         [environments.prod.files]\n\"config/log.xml\" = \"conf/log.xml\"\n",
    )
    .expect("deploy.toml");
    let r: Run = Command::new(baton_bin())
        .args(["ship", "prod", "--dry-run", "--version", "9.9"])
        .current_dir(&dir)
        .output()
        .expect("baton ship")
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    for want in [
        "plan: ship web 9.9 as release",
        "1. canary deploy@web1.invalid:22",
        "3. host   deploy@web3.invalid:22",
        "canary 1 first, then max_parallel 2",
        "/var/lib/web/releases/",
        "install ",
        "config/log.xml",
        "/usr/local/bin/baton --config /etc/baton/web.toml deploy --release /var/lib/web/releases/",
        "dry run: nothing was built, copied or changed",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?}: {r:?}");
    }
    assert!(!dir.join("BUILT").exists(), "dry run ran the build");
    // An unknown environment is a usage error naming the ones that exist.
    let r: Run = Command::new(baton_bin())
        .args(["ship", "staging", "--dry-run"])
        .current_dir(&dir)
        .output()
        .expect("baton ship")
        .into();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("defines only: prod"), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_verification_catches_a_host_reporting_the_wrong_version() {
    let Some(mut lab) = Lab::new(2, Service::Light) else {
        return;
    };
    // Host 2 serves a stale properties file, whatever the release says.
    std::fs::write(lab.root(2).join("stale.properties"), "version=0.9-stale\n").expect("stale");
    lab.write_service_config(
        2,
        &format!("VERSION_FILE = \"{HOST_ROOT}/stale.properties\"\n"),
    );
    lab.write_deploy(&lab.deploy());
    let r = lab.ship(&["test", "--version", "v1"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(row(&r, &lab.addr(1)).ends_with("ok"), "{r:?}");
    let bad = row(&r, &lab.addr(2));
    assert!(
        bad.contains("FAILED at verify")
            && bad.contains("reports version \"0.9-stale\", expected \"v1\""),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains("1 of 2 host(s) did not end on the intended version"),
        "{r:?}"
    );
}

#[test]
fn fleet_rollback_returns_every_host_to_its_previous_release() {
    let Some(mut lab) = Lab::new(2, Service::Light) else {
        return;
    };
    lab.write_deploy(&lab.deploy());
    lab.ship_ok("v1");
    let first: Vec<Option<String>> = (1..=2).map(|i| lab.current(i)).collect();
    lab.ship_ok("v2");
    let r = lab.ship(&["test", "--rollback"]);
    assert_eq!(r.code, 0, "{r:?}");
    for i in 1..=2 {
        let row = row(&r, &lab.addr(i));
        assert!(
            row.contains("v2") && row.contains("v1") && row.ends_with("ok"),
            "{r:?}"
        );
        assert_eq!(lab.version(i).as_deref(), Some("v1"));
        assert_eq!(lab.current(i), first[i - 1]);
    }
}

#[test]
fn keep_releases_prunes_old_releases_but_never_current() {
    let Some(mut lab) = Lab::new(1, Service::Light) else {
        return;
    };
    lab.write_deploy(&lab.deploy()); // keep_releases = 3
    for v in ["k1", "k2", "k3", "k4", "k5"] {
        lab.ship_ok(v);
    }
    let releases = lab.releases(1);
    assert_eq!(releases.len(), 3, "{releases:?}");
    let current = lab.current(1).expect("current");
    assert_eq!(releases.last(), Some(&current), "newest kept and current");
    let log = lab.read(1, "app/revisions.log");
    assert_eq!(
        log.matches("deployed as release").count(),
        5,
        "one line per deploy: {log}"
    );
}

/// `baton ship ARGS` started in the background (its output in files under the lab).
fn ship_child(lab: &Lab, args: &[&str], tag: &str) -> std::process::Child {
    ship_child_in(lab, args, tag, None)
}

/// [`ship_child`] with `tmp` as its TMPDIR (and no XDG_RUNTIME_DIR), when given.
fn ship_child_in(lab: &Lab, args: &[&str], tag: &str, tmp: Option<&Path>) -> std::process::Child {
    let out = std::fs::File::create(lab.dir.join(format!("{tag}.out"))).expect("out");
    let err = std::fs::File::create(lab.dir.join(format!("{tag}.err"))).expect("err");
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(baton_bin());
    cmd.arg("ship")
        .args(args)
        .current_dir(lab.proj())
        // Its own group, so a test can kill the shipper with its build.
        .process_group(0)
        .stdout(out)
        .stderr(err);
    if let Some(tmp) = tmp {
        cmd.env("TMPDIR", tmp).env_remove("XDG_RUNTIME_DIR");
    }
    cmd.spawn().expect("start baton ship")
}

fn child_output(lab: &Lab, tag: &str) -> String {
    format!(
        "{}{}",
        std::fs::read_to_string(lab.dir.join(format!("{tag}.out"))).unwrap_or_default(),
        std::fs::read_to_string(lab.dir.join(format!("{tag}.err"))).unwrap_or_default()
    )
}

/// A one-host lab whose environments take the fleet lock in a real 3-member etcd cluster; the build takes `build_secs`.
fn locked_lab(build_secs: u32) -> Option<(Lab, harness::lab::EtcdCluster)> {
    locked_lab_of(1, build_secs)
}

fn locked_lab_of(hosts: usize, build_secs: u32) -> Option<(Lab, harness::lab::EtcdCluster)> {
    let lab = Lab::new(hosts, Service::Light)?;
    let cluster = harness::lab::EtcdCluster::start(&lab.dir);
    let mut d = lab.deploy();
    d.build = format!("sleep {build_secs} && {}", d.build);
    d.extra = format!("etcd = [{}]\nlock_ttl = \"3s\"\n", cluster.toml(&[0, 1, 2]));
    lab.write_deploy(&d);
    Some((lab, cluster))
}

const LOCK_KEY: &str = "baton/lock/app/test";

#[test]
fn a_second_ship_is_refused_at_once_and_a_waiting_one_ships_after() {
    let Some((mut lab, cluster)) = locked_lab(4) else {
        return;
    };
    let mut first = ship_child(&lab, &["test", "--version", "1.0"], "first");
    wait_until(
        Duration::from_secs(30),
        "the first ship to hold the lock",
        || cluster.get_at(1, LOCK_KEY).is_some(),
    );
    let holder = cluster.get_at(1, LOCK_KEY).unwrap_or_default();
    assert!(
        holder.contains(&format!("\"pid\":{}", first.id())),
        "{holder}"
    );
    assert!(holder.contains("ship 1.0"), "{holder}");

    let r = lab.ship(&["test", "--version", "2.0"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{LOCK_KEY} is held by")),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains(&format!("(pid {}) doing ship 1.0 since ", first.id())),
        "{r:?}"
    );
    assert!(r.stderr.contains("--wait-lock"), "{r:?}");
    assert!(!r.stdout.contains("build:"), "nothing was built: {r:?}");

    let r = lab.ship(&["test", "--version", "3.0", "--wait-lock", "3m"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("waiting for the fleet lock"), "{r:?}");
    let status = first.wait().expect("wait first");
    assert!(status.success(), "{}", child_output(&lab, "first"));
    assert_eq!(lab.version(1).as_deref(), Some("3.0"));
    assert_eq!(cluster.get_at(0, LOCK_KEY), None, "released at the end");
}

#[test]
fn a_killed_shippers_lock_expires_with_its_lease() {
    let Some((mut lab, cluster)) = locked_lab(120) else {
        return;
    };
    let mut first = ship_child(&lab, &["test", "--version", "1.0"], "killed");
    wait_until(Duration::from_secs(30), "the ship to hold the lock", || {
        cluster.get_at(1, LOCK_KEY).is_some()
    });
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = first.wait();
    wait_until(Duration::from_secs(30), "the lock to expire", || {
        cluster.get_at(1, LOCK_KEY).is_none()
    });
    let mut d = lab.deploy();
    d.extra = format!("etcd = [{}]\nlock_ttl = \"3s\"\n", cluster.toml(&[0, 1, 2]));
    lab.write_deploy(&d);
    lab.ship_ok("2.0");
}

#[test]
fn unlock_breaks_the_lock_says_whose_it_was_and_the_holder_halts() {
    let Some((mut lab, cluster)) = locked_lab(5) else {
        return;
    };
    let mut first = ship_child(&lab, &["test", "--version", "1.0"], "broken");
    wait_until(Duration::from_secs(30), "the ship to hold the lock", || {
        cluster.get_at(1, LOCK_KEY).is_some()
    });
    let r = lab.ship(&["test", "--unlock"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("unlocked {LOCK_KEY}: it was held by ")),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("(pid {}) doing ship 1.0", first.id())),
        "{r:?}"
    );
    assert_eq!(cluster.get_at(0, LOCK_KEY), None);
    let status = first.wait().expect("wait");
    let out = child_output(&lab, "broken");
    assert!(!status.success(), "{out}");
    assert!(out.contains("the fleet lock was lost"), "{out}");
    assert_eq!(lab.current(1), None, "no host was touched: {out}");
    let r = lab.ship(&["test", "--unlock"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("was not locked"), "{r:?}");
}

#[test]
fn an_unreachable_lock_endpoint_stops_the_ship_before_any_host() {
    let Some(mut lab) = Lab::new(1, Service::Light) else {
        return;
    };
    let mut d = lab.deploy();
    d.extra = format!("etcd = [\"http://127.0.0.1:{}\"]\n", harness::free_port());
    lab.write_deploy(&d);
    let r = lab.ship(&["test", "--version", "1.0"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("unable to take the fleet lock baton/lock/app/test"),
        "{r:?}"
    );
    assert!(r.stderr.contains("no host was touched"), "{r:?}");
    assert!(lab.releases(1).is_empty());
    let r = lab.ship(&["test", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("fleet lock: baton/lock/app/test in etcd (http://127.0.0.1:"),
        "{r:?}"
    );
    let r = lab.ship(&["nowhere", "--version", "1.0"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("defines only: production, test"), "{r:?}");
}

#[test]
fn fleet_status_reads_every_host_as_a_table_and_as_json() {
    let Some(mut lab) = Lab::new(2, Service::Light) else {
        return;
    };
    let d = lab.deploy();
    lab.write_deploy(&d);
    lab.ship_ok("1.0");
    let release = lab.current(1).expect("current");

    let r = lab.ship(&["test", "--status"]);
    assert_eq!(r.code, 0, "{r:?}");
    let header = r.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("HOST") && header.contains("ANSWERS"),
        "{r:?}"
    );
    for i in 1..=2 {
        let line = row(&r, &lab.addr(i));
        assert!(line.contains(&release) && line.contains("ready"), "{line}");
        assert_eq!(line.matches("1.0").count(), 2, "version and answer: {line}");
    }

    let r = lab.ship(&["test", "--status", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["environment"], "test");
    let hosts = v["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    for h in hosts {
        assert_eq!(h["release"], release.as_str());
        assert_eq!(h["version"], "1.0");
        assert_eq!(h["answers"], "1.0");
        assert_eq!(h["state"], "ready");
        assert!(h["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{h}");
    }

    lab.take_down(2);
    let r = lab.ship(&["test", "--status", "--json"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("1 of 2 host(s) not ready"), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["hosts"][0]["state"], "ready");
    assert!(
        v["hosts"][1]["problem"]
            .as_str()
            .is_some_and(|p| p.starts_with("ssh: ")),
        "{v}"
    );
    assert_eq!(v["hosts"][1]["state"], serde_json::Value::Null);
}

#[test]
fn the_final_report_times_each_phase_per_host_also_as_json() {
    let Some(mut lab) = Lab::new(2, Service::Light) else {
        return;
    };
    let d = lab.deploy();
    lab.write_deploy(&d);
    let r = lab.ship(&["test", "--version", "1.0", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Only the report on stdout; the human view went to stderr, table included.
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).expect("stdout is one JSON document");
    assert!(
        r.stderr.contains("CONNECT") && r.stderr.contains("VERIFY"),
        "{r:?}"
    );
    assert_eq!(v["ok"], true);
    assert_eq!(v["environment"], "test");
    let hosts = v["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["host"], lab.addr(i + 1).as_str());
        assert_eq!(h["new"], "1.0");
        assert_eq!(h["result"], "ok");
        for p in ["connect", "upload", "deploy", "verify"] {
            assert!(
                h["phases"][p].as_f64().is_some_and(|s| s >= 0.0),
                "{p}: {h}"
            );
        }
        let sum: f64 = ["connect", "upload", "deploy", "verify"]
            .iter()
            .filter_map(|p| h["phases"][p].as_f64())
            .sum();
        assert!(
            sum <= h["secs"].as_f64().unwrap_or(0.0) + 0.01,
            "phases within the host's time: {h}"
        );
    }
    // The plain table carries the same columns.
    let r = lab.ship(&["test", "--version", "2.0"]);
    assert_eq!(r.code, 0, "{r:?}");
    let header = r
        .stdout
        .lines()
        .find(|l| l.starts_with("HOST"))
        .expect("table header");
    assert!(
        header.split_whitespace().collect::<Vec<_>>()
            == ["HOST", "OLD", "NEW", "TIME", "CONNECT", "UPLOAD", "DEPLOY", "VERIFY", "RESULT"],
        "{header}"
    );
    let line = row(&r, &lab.addr(1));
    assert!(
        line.starts_with(&format!("{}  1.0", lab.addr(1))) && line.ends_with("ok"),
        "{line}"
    );
}

#[test]
fn an_etcd_member_down_mid_rollout_does_not_disturb_the_lock() {
    let Some((mut lab, mut cluster)) = locked_lab(3) else {
        return;
    };
    let mut ship = ship_child(&lab, &["test", "--version", "1.0"], "member-down");
    wait_until(Duration::from_secs(30), "the ship to hold the lock", || {
        cluster.get_at(1, LOCK_KEY).is_some()
    });
    // The renewals and the release go to the members still up.
    cluster.stop(0);
    let status = ship.wait().expect("wait");
    let out = child_output(&lab, "member-down");
    assert!(status.success(), "{out}");
    assert!(!out.contains("the fleet lock was lost"), "{out}");
    assert_eq!(lab.version(1).as_deref(), Some("1.0"));
    assert_eq!(cluster.get_at(1, LOCK_KEY), None, "released: {out}");
    cluster.restart(0);
    cluster.wait_healthy(0);
    lab.ship_ok("2.0");
}

#[test]
fn a_ship_killed_mid_rollout_leaves_every_host_whole_and_status_shows_which() {
    let Some((mut lab, cluster)) = locked_lab_of(2, 0) else {
        return;
    };
    // Host 2's instances are ready only while HOST_ROOT/slow is absent: its next
    // handoff can be held open, and the ship killed while it runs.
    let conf = lab.root(2).join("etc/app.toml");
    let text = std::fs::read_to_string(&conf).expect("config");
    std::fs::write(
        &conf,
        text.replace(
            "[ready]\n",
            &format!("[ready]\nexec = [\"/bin/sh\", \"-c\", \"test ! -e {HOST_ROOT}/slow\"]\n"),
        ),
    )
    .expect("config");
    lab.ship_ok("1.0");
    let old2 = lab.current(2).expect("host 2 current");
    std::fs::write(lab.root(2).join("slow"), "").expect("slow marker");
    let mut d = lab.deploy();
    d.max_parallel = 1;
    d.extra = format!("etcd = [{}]\nlock_ttl = \"3s\"\n", cluster.toml(&[0, 1, 2]));
    lab.write_deploy(&d);
    let addr2 = lab.addr(2);
    let mut ship = ship_child(&lab, &["test", "--version", "2.0"], "killed-mid");
    wait_until(Duration::from_secs(90), "host 2's handoff to begin", || {
        child_output(&lab, "killed-mid")
            .lines()
            .any(|l| l.contains(&addr2) && l.contains("deploy: [1/5] started release"))
    });
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(ship.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = ship.wait();
    wait_until(Duration::from_secs(30), "the lock to expire", || {
        cluster.get_at(1, LOCK_KEY).is_none()
    });

    let r = lab.ship(&["test", "--status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let h = &v["hosts"];
    assert_eq!(h[0]["version"], "2.0", "{v}");
    assert_eq!(h[0]["answers"], "2.0", "{v}");
    // Host 2 is whole: still on its old release while the handoff runs. In shared-socket
    // mode the held-open candidate accepts on the same socket as the old instance (the
    // overlap the README documents), so either version may answer; both must answer.
    assert_eq!(h[1]["release"], old2.as_str(), "{v}");
    assert_eq!(h[1]["version"], "1.0", "{v}");
    assert!(
        h[1]["answers"] == "1.0" || h[1]["answers"] == "2.0",
        "host 2 must answer while its handoff is held open: {v}"
    );
    assert!(
        v["lock"].as_str().is_some_and(|l| l.ends_with(" free")),
        "{v}"
    );
}

/// Another local user plants what a predictable ship would use in a shared /tmp, then
/// races the ship for its ssh control directory while the real OpenSSH master runs in it.
#[test]
fn another_users_planted_and_raced_control_paths_neither_hijack_nor_break_a_ship() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let Some(lab) = Lab::new(1, Service::Light) else {
        return;
    };
    let attacker = harness::User::new("layout");
    // A /tmp of the test's own: world-writable and sticky, like the real one (and as short:
    // ssh's socket path must fit a sockaddr_un).
    let tmp = Gone(PathBuf::from(format!("/tmp/bsl{}", std::process::id())));
    let tmp = tmp.0.as_path();
    std::fs::create_dir_all(tmp).expect("tmp");
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let own = attacker.name.clone();
    std::fs::create_dir_all(lab.dir.join("loot")).expect("loot");
    nix::unistd::chown(
        &lab.dir.join("loot"),
        Some(nix::unistd::Uid::from_raw(attacker.uid)),
        None,
    )
    .expect("chown loot");
    let loot = lab.dir.join("loot");
    // What a ship with fixed names would walk into: her directories and links, in advance.
    attacker.sh(&format!(
        "cd {t} && mkdir baton-ship-ssh baton-ship-control && ln -s {l} baton-ship-mux \
         && ln -s /etc/shadow baton-ship-ssh/sock && echo planted > baton-ship-control/note",
        t = tmp.display(),
        l = loot.display()
    ));
    let planted = |tmp: &Path| -> Vec<(String, u64, u32)> {
        let mut v: Vec<(String, u64, u32)> =
            ["baton-ship-ssh", "baton-ship-control", "baton-ship-mux"]
                .iter()
                .flat_map(|d| {
                    let p = tmp.join(d);
                    let mut entries = vec![p.clone()];
                    if let Ok(rd) = std::fs::read_dir(&p) {
                        entries.extend(rd.flatten().map(|e| e.path()));
                    }
                    entries
                })
                .filter_map(|p| {
                    let m = std::fs::symlink_metadata(&p).ok()?;
                    Some((p.display().to_string(), m.ino(), m.uid()))
                })
                .collect();
        v.sort();
        v
    };
    let before = planted(tmp);

    // The remote baton takes its time, so the master connection stays up while we look.
    let slow = lab.dir.join("slow-baton");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nsleep 1\nexec {} \"$@\"\n",
            baton_bin().display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    lab.write_deploy(&lab.deploy());
    let deploy_file = lab.proj().join("deploy.toml");
    let text = std::fs::read_to_string(&deploy_file).expect("deploy.toml");
    let remote = format!("baton = {:?}", baton_bin().display().to_string());
    assert!(text.contains(&remote), "{text}");
    std::fs::write(
        &deploy_file,
        text.replace(
            &remote,
            &format!("baton = {:?}", slow.display().to_string()),
        ),
    )
    .expect("deploy.toml");

    let mut ship = ship_child_in(&lab, &["test", "--version", "1.0"], "raced", Some(tmp));
    // The real master socket, in whatever directory the ship made for it.
    let mut socket = None;
    wait_until(Duration::from_secs(60), "ssh's control socket", || {
        if let Ok(Some(status)) = ship.try_wait() {
            panic!(
                "the ship ended ({status}) before its control socket was seen: {}",
                child_output(&lab, "raced")
            );
        }
        socket = std::fs::read_dir(tmp).ok().and_then(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| std::fs::read_dir(e.path()).ok())
                .flat_map(|rd| rd.flatten())
                // ssh binds the master at `%C.RANDOM` and renames it to `%C` (a hash, no dot):
                // only the final name stays to be checked.
                .find(|e| {
                    e.file_type().is_ok_and(|t| t.is_socket())
                        && !e.file_name().to_string_lossy().contains('.')
                })
                .map(|e| e.path())
        });
        socket.is_some()
    });
    let socket = socket.expect("socket");
    let dir = socket.parent().expect("dir").to_path_buf();
    let meta = std::fs::metadata(&dir).expect("control dir");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o700),
        "{} is root's and private",
        dir.display()
    );
    assert!(
        !before.iter().any(|(p, _, _)| Path::new(p) == dir),
        "the ship used a directory she planted: {}",
        dir.display()
    );
    // It is the live master: root can talk to it...
    let check = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let mine = Command::new("ssh")
        .args(["-O", "check", "-S"])
        .arg(&socket)
        .arg("x")
        .output()
        .expect("ssh -O check");
    assert!(mine.status.success(), "root: {}", check(&mine));
    // ...and she cannot: not to hijack it, not to look inside, not to plant beside it.
    let hers = attacker.try_sh(&format!("ssh -O check -S {} x", socket.display()));
    assert!(!hers.status.success(), "{own} reached the master: {hers:?}");
    assert!(
        check(&hers).contains("Permission denied"),
        "{own}: {}",
        check(&hers)
    );
    let plant = attacker.try_sh(&format!(
        "ls {d} || ln -s /etc/shadow {d}/evil",
        d = dir.display()
    ));
    assert!(
        !plant.status.success(),
        "{own} got into {}: {plant:?}",
        dir.display()
    );
    assert!(!dir.join("evil").exists());

    let status = ship.wait().expect("wait ship");
    let out = child_output(&lab, "raced");
    assert!(status.success(), "{out}");
    assert_eq!(lab.version(1).as_deref(), Some("1.0"), "{out}");
    // Her files are as she left them, and the ship's own directory is gone.
    assert_eq!(planted(tmp), before);
    assert_eq!(
        std::fs::read_to_string(tmp.join("baton-ship-control/note")).expect("note"),
        "planted\n"
    );
    assert!(
        std::fs::read_dir(&loot).expect("loot").next().is_none(),
        "nothing written to her directory"
    );
    assert!(!dir.exists(), "{} is removed after the ship", dir.display());
}

/// A directory removed with everything in it when the test ends, however it ends.
struct Gone(PathBuf);

impl Drop for Gone {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ssh's control socket path must fit a sockaddr_un: a long TMPDIR made every connect fail
/// ("too long for Unix domain socket"); the control directory goes where it fits instead.
#[test]
fn a_long_tmpdir_does_not_break_the_ssh_connections() {
    let Some(lab) = Lab::new(1, Service::Light) else {
        return;
    };
    let long = lab
        .dir
        .join("a-temporary-directory-with-a-rather-long-name");
    std::fs::create_dir_all(&long).expect("long tmp");
    lab.write_deploy(&lab.deploy());
    let mut ship = ship_child_in(&lab, &["test", "--version", "1.0"], "longtmp", Some(&long));
    let status = ship.wait().expect("wait ship");
    let out = child_output(&lab, "longtmp");
    assert!(status.success(), "{out}");
    assert_eq!(lab.version(1).as_deref(), Some("1.0"), "{out}");
    assert!(
        std::fs::read_dir(&long).expect("long tmp").next().is_none(),
        "nothing left in TMPDIR"
    );
}
