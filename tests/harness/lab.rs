//! The real nginx and etcd of tests/deploy-lab, started on loopback for one test and
//! stopped when dropped. Shared by the deploy and switch tests.

use super::{free_port, wait_until};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A deploy-lab script.
pub fn lab(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/deploy-lab")
        .join(script)
}

/// Runs a deploy-lab script, asserting success; returns its stdout.
pub fn lab_run(script: &str, args: &[&str]) -> String {
    lab_run_with(script, args, &[])
}

/// [`lab_run`] with `env` set for the script (its settings, such as NGINX_*).
pub fn lab_run_with(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("timeout")
        .arg("30")
        .arg(lab(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run deploy-lab script");
    assert!(
        out.status.success(),
        "{script} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The X-Pid of a fresh `GET /version` to 127.0.0.1:`port`, if anything answered.
pub fn served_by(port: u16) -> Option<i32> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /version HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("X-Pid: ")
                .or_else(|| l.strip_prefix("x-pid: "))
        })
        .and_then(|p| p.trim().parse().ok())
}

/// A private nginx (tests/deploy-lab/nginx-up) whose upstream file is `dir/upstream.conf`.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
    pub upstream: PathBuf,
}

impl Nginx {
    pub fn start(test: &Path, backend_port: u16) -> Nginx {
        Nginx::start_with(test, backend_port, &[])
    }

    /// An nginx with these settings of tests/deploy-lab/nginx-up (NGINX_UPSTREAM_KEEPALIVE_TIMEOUT…).
    pub fn start_with(test: &Path, backend_port: u16, env: &[(&str, &str)]) -> Nginx {
        let dir = test.join("nginx");
        let upstream = test.join("upstream.conf");
        std::fs::write(&upstream, format!("server 127.0.0.1:{backend_port};\n")).expect("upstream");
        let port = free_port();
        lab_run_with(
            "nginx-up",
            &[
                &dir.to_string_lossy(),
                &port.to_string(),
                &upstream.to_string_lossy(),
            ],
            env,
        );
        Nginx {
            dir,
            port,
            upstream,
        }
    }

    /// The [proxy] table switching this nginx, confirmed through it by the backend's X-Pid header.
    pub fn proxy_table(&self, template: Option<&str>, confirm_timeout: &str) -> String {
        self.proxy_table_observed(template, confirm_timeout) + "confirm_header = \"X-Pid\"\n"
    }

    /// The [proxy] table switching this nginx, confirmed through it by observation alone.
    pub fn proxy_table_observed(&self, template: Option<&str>, confirm_timeout: &str) -> String {
        let d = self.dir.display();
        let template = template
            .map(|t| format!("template = {t:?}\n"))
            .unwrap_or_default();
        format!(
            "[proxy]\nkind = \"nginx\"\nupstream = \"{}\"\nconfig = \"{d}/nginx.conf\"\n{template}\
             check = [\"/usr/sbin/nginx\", \"-p\", \"{d}/\", \"-e\", \"{d}/error.log\", \"-t\", \"-q\", \"-c\", \"{{config}}\"]\n\
             reload = [\"/usr/sbin/nginx\", \"-p\", \"{d}/\", \"-e\", \"{d}/error.log\", \"-c\", \"{d}/nginx.conf\", \"-s\", \"reload\"]\n\
             confirm = \"http://127.0.0.1:{}/version\"\nconfirm_timeout = \"{confirm_timeout}\"\n",
            self.upstream.display(),
            self.port
        )
    }

    /// A URL through this nginx.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn upstream_text(&self) -> String {
        std::fs::read_to_string(&self.upstream).expect("read upstream")
    }

    /// Several fresh requests through nginx all reach `pid`.
    pub fn serves(&self, pid: i32) -> bool {
        (0..4).all(|_| served_by(self.port) == Some(pid))
    }

    /// After a reload: the previous generation of workers keeps accepting for
    /// ~100 ms beside the new one (the master sleeps before telling it to quit).
    pub fn settles_on(&self, pid: i32) {
        wait_until(
            Duration::from_secs(3),
            "nginx to serve only the expected pid",
            || self.serves(pid),
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(lab("nginx-down"))
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// A private single-member etcd 3.4 (tests/deploy-lab/etcd-up).
pub struct Etcd {
    pub dir: PathBuf,
    pub url: String,
}

impl Etcd {
    pub fn start(test: &Path) -> Etcd {
        let dir = test.join("etcd");
        let port = free_port();
        let peer = free_port();
        lab_run(
            "etcd-up",
            &[&dir.to_string_lossy(), &port.to_string(), &peer.to_string()],
        );
        Etcd {
            dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        etcdctl(&self.url, "10", args)
    }

    /// The value of one key, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        let v = self
            .ctl(&["get", "--print-value-only", key])
            .trim()
            .to_string();
        (!v.is_empty()).then_some(v)
    }

    /// Every key under `prefix/` with its value.
    pub fn keys(&self, prefix: &str) -> BTreeMap<String, String> {
        let text = self.ctl(&["get", "--prefix", &format!("{prefix}/")]);
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = Command::new(lab("etcd-down"))
            .arg(&self.dir)
            .arg("--purge")
            .stdout(Stdio::null())
            .status();
    }
}

/// What one run of tests/deploy-lab/load counted.
#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    pub requests: u64,
    /// Non-2xx answers plus socket errors.
    pub failed: u64,
    /// Answers with a status above 399 (a 502 from nginx, a 503 from a stopping service).
    pub non2xx: u64,
    /// Connections closed before a response came.
    pub read: u64,
}

/// Steady wrk load (tests/deploy-lab/load) in the background: 2 connections, 1 thread.
/// Dropped unfinished (a test failed), it stops wrk rather than let it run on.
pub struct Load {
    child: Option<std::process::Child>,
    mode: &'static str,
}

impl Load {
    /// `mode` is "keepalive" or "close" (`Connection: close` on every request).
    pub fn start(url: &str, mode: &'static str, secs: u32) -> Load {
        let child = Command::new(lab("load"))
            .args([&secs.to_string(), url, mode])
            .env("CONNECTIONS", "2")
            .env("THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("load");
        Load {
            child: Some(child),
            mode,
        }
    }

    /// Whether wrk is still sending (a test checks its load covered every step).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the load to end and reads its summary line.
    pub fn result(mut self) -> LoadResult {
        let mode = self.mode;
        let child = self.child.take().expect("a load not yet read");
        let out = child.wait_with_output().expect("load output");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| -> u64 {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k}= in load output ({mode}): {text}"))
        };
        LoadResult {
            requests: field("requests"),
            failed: field("failed"),
            non2xx: field("non2xx"),
            read: field("read"),
        }
    }

    /// Ends the load now and reads its summary: wrk stops on SIGINT and still reports.
    /// Lets a test load for as long as its steps take, however slow the machine.
    pub fn stop(self) -> LoadResult {
        self.interrupt();
        self.result()
    }

    fn interrupt(&self) {
        let Some(child) = &self.child else { return };
        for pid in descendants(child.id() as i32) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "wrk" {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
        }
    }

    /// Waits for the load to end; returns (requests, failed).
    pub fn finish(self) -> (u64, u64) {
        let r = self.result();
        (r.requests, r.failed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.interrupt();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// Every live descendant of `root`, from the parent links in /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The field after the state, which follows the parenthesised command name.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.split_off(1)
}

/// (X-Pid, body) of a fresh GET of `url` that answered 200 with an X-Pid header.
pub fn get(url: &str) -> Option<(i32, String)> {
    let a = super::fetch(url).filter(|a| a.status == 200)?;
    let pid = a.header("x-pid")?.parse().ok()?;
    Some((pid, a.body))
}

/// A private 3-member etcd 3.4 cluster on loopback (free ports, data under `test/etcd-cluster`);
/// members can be stopped and restarted to take quorum away and give it back.
pub struct EtcdCluster {
    pub dir: PathBuf,
    /// Client URLs, member by member.
    pub urls: Vec<String>,
    peers: Vec<u16>,
    children: Vec<Option<std::process::Child>>,
}

impl EtcdCluster {
    pub fn start(test: &Path) -> EtcdCluster {
        let dir = test.join("etcd-cluster");
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut c = EtcdCluster {
            dir,
            urls: clients
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            peers,
            children: vec![None, None, None],
        };
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            c.wait_healthy(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("m{i}.log")))
            .expect("member log");
        let mut cmd = Command::new("etcd");
        // Environment ETCD_* variables would override flags; start clean.
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{i}.data")))
            .arg("--listen-client-urls")
            .arg(&self.urls[i])
            .arg("--advertise-client-urls")
            .arg(&self.urls[i])
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peers[i]))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peers[i]))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(self.dir.display().to_string())
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd member");
        self.children[i] = Some(child);
    }

    /// Member `i` answers /health with true (it has a leader and quorum).
    pub fn healthy(&self, i: usize) -> bool {
        let port: u16 = self.urls[i]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let Ok(mut s) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.contains("\"health\":\"true\"")
    }

    pub fn wait_healthy(&self, i: usize) {
        wait_until(
            Duration::from_secs(30),
            "an etcd member to be healthy",
            || self.healthy(i),
        );
    }

    /// Kills member `i` (as a crash or a partition would take it away).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (healthy once it has quorum: see [`EtcdCluster::wait_healthy`]).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    pub fn ctl_at(&self, i: usize, args: &[&str]) -> String {
        etcdctl(&self.urls[i], "20", args)
    }

    /// The value of one key, read through member `i`.
    pub fn get_at(&self, i: usize, key: &str) -> Option<String> {
        let v = self
            .ctl_at(i, &["get", "--print-value-only", key])
            .trim()
            .to_string();
        (!v.is_empty()).then_some(v)
    }

    /// The endpoints as a TOML array's contents.
    pub fn toml(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|&i| format!("\"{}\"", self.urls[i]))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.stop(i);
        }
        for i in 0..3 {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("m{i}.data")));
        }
    }
}

/// A switch worker held between the proxy switch and the registry publish
/// (`BATON_TEST_PUBLISH_DELAY_MS`), so a test can change the world in that pause.
pub struct PausedSwitch {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// What the worker printed up to the pause.
    pub out: Vec<String>,
}

impl PausedSwitch {
    /// Runs `baton --config CONFIG ARGS` (bounded by 60 s) with the publish delayed by
    /// `delay_ms`, and reads its output up to the first line starting with `until`.
    pub fn start(config: &Path, args: &[String], delay_ms: u32, until: &str) -> PausedSwitch {
        use std::io::BufRead;
        let mut child = Command::new("timeout")
            .arg("60")
            .arg(super::baton_bin())
            .arg("--config")
            .arg(config)
            .args(args)
            .env("BATON_TEST_PUBLISH_DELAY_MS", delay_ms.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run baton");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut out = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("read");
            out.push(line.clone());
            if line.starts_with(until) {
                break;
            }
            assert!(!line.starts_with("error:"), "{out:?}");
        }
        PausedSwitch { child, lines, out }
    }

    /// Lets the worker finish: its exit code and everything it printed.
    pub fn finish(mut self) -> (Option<i32>, Vec<String>) {
        self.out.extend(self.lines.map_while(Result::ok));
        let code = self.child.wait().expect("wait").code();
        (code, self.out)
    }
}

/// `etcdctl ARGS` against `endpoint`, killed after `limit` seconds; its output (it must succeed).
fn etcdctl(endpoint: &str, limit: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args([limit, "etcdctl", "--endpoints", endpoint])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
