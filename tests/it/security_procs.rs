//! Process identity, cgroups and runtime robustness, proven by performing the attacks for real (as root).
//!
//! A stranger placed on the old service PID (ns_last_pid), a real HAProxy daemonized
//! by the proxy reload, a double-forked escaping grandchild, huge durations and a
//! supervisor that panics. Each runs with cgroup tracking and with `[process] cgroup = false`.

use crate::harness;

use harness::{alive, fixture, is_root, wait_until, Spec, Svc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Runs `baton start` under tests/fixtures/reaper, a child subreaper: this host's PID 1
/// reaps nothing, so the PIDs of what the test kills by hand are freed only if something
/// reaps them. The reaper runs until dropped.
struct Reaper(std::process::Child);

impl Reaper {
    fn start(svc: &Svc) -> Reaper {
        use std::io::BufRead;
        let mut child = Command::new(fixture("reaper"))
            .arg(harness::baton_bin())
            .arg("--config")
            .arg(&svc.config)
            .arg("start")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("reaper");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("start's exit code");
        assert_eq!(line.trim(), "0", "start under the reaper");
        Reaper(child)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `pid` is gone for good: exited and reaped (by the reaper), its number free.
fn reap(pid: i32) {
    wait_until(LONG, &format!("pid {pid} to be reaped"), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
}

fn cgroup_table(cgroup: bool) -> &'static str {
    if cgroup {
        ""
    } else {
        "[process]\ncgroup = false\n"
    }
}

fn starttime(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn processes(status: &serde_json::Value) -> Vec<i32> {
    status["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_i64())
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// A service whose wrapper keeps a child in its group and double-forks an escapee.
fn escaper(cgroup: bool, extra: &str) -> (Svc, Vec<i32>, i32) {
    let svc = escaper_spec(cgroup, extra).create();
    svc.start();
    let (pids, escaped) = escaper_pids(&svc);
    (svc, pids, escaped)
}

fn escaper_spec(cgroup: bool, extra: &str) -> Spec {
    Spec::new(
        "esc",
        &format!(r#"["{}", "{{dir}}/pids"]"#, fixture("escaper")),
    )
    .tables(&format!("{}{extra}", cgroup_table(cgroup)))
}

/// (wrapper, its child), the escaped grandchild; once the escaper wrote them.
fn escaper_pids(svc: &Svc) -> (Vec<i32>, i32) {
    let pids_file = svc.path("pids");
    let escaped_file = svc.path("pids.escaped");
    wait_until(LONG, "the escaper's pid files", || {
        pids_in(&pids_file).len() == 2 && pids_in(&escaped_file).len() == 1
    });
    (pids_in(&pids_file), pids_in(&escaped_file)[0])
}

fn stop_kills_the_escaped_grandchild(cgroup: bool) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (svc, pids, escaped) = escaper(cgroup, "");
    let (code, st) = svc.status();
    assert_eq!(code, 0, "{st}");
    let listed = processes(&st);
    for p in pids.iter().chain([&escaped]) {
        assert!(listed.contains(p), "status lists {p}: {st}");
    }
    let cgroup_dir = st["cgroup"].as_str().map(std::path::PathBuf::from);
    if cgroup {
        assert_eq!(st["tracking"], "cgroup", "{st}");
        let dir = cgroup_dir.clone().expect("a cgroup path");
        assert!(dir.starts_with("/sys/fs/cgroup"), "{}", dir.display());
        // Each instance has a cgroup of its own below the service's: the tree is in the serving
        // one's. Beside it at most one more, empty: the next instance's, made ahead.
        let all: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .expect("cgroup dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        let leaves: Vec<&std::path::PathBuf> = all
            .iter()
            .filter(|l| !pids_in(&l.join("cgroup.procs")).is_empty())
            .collect();
        assert_eq!(
            leaves.len(),
            1,
            "one instance, one populated cgroup below the service's: {all:?}"
        );
        assert!(all.len() <= 2, "one spare at most: {all:?}");
        assert!(pids_in(&dir.join("cgroup.procs")).is_empty());
        let members = pids_in(&leaves[0].join("cgroup.procs"));
        for p in pids.iter().chain([&escaped]) {
            assert!(members.contains(p), "{p} in {members:?}");
        }
    } else {
        assert_eq!(st["tracking"], "subreaper", "{st}");
        assert!(cgroup_dir.is_none(), "{st}");
    }
    svc.stop();
    for p in pids.iter().chain([&escaped]) {
        assert!(!alive(*p), "pid {p} survived stop");
    }
    if let Some(dir) = cgroup_dir {
        assert!(!dir.exists(), "{} is removed after stop", dir.display());
    }
}

#[test]
fn cgroup_holds_the_tree_and_stop_kills_an_escaped_grandchild() {
    stop_kills_the_escaped_grandchild(true);
}

#[test]
fn subreaper_fallback_stop_kills_an_escaped_grandchild() {
    stop_kills_the_escaped_grandchild(false);
}

fn stranger_on_the_old_pid_is_left_alone(cgroup: bool) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let svc = escaper_spec(cgroup, "").create();
    let _reaper = Reaper::start(&svc);
    let (pids, escaped) = escaper_pids(&svc);
    let (_, st) = svc.status();
    let leader = st["service_pid"].as_i64().expect("service pid") as i32;
    assert_eq!(leader, pids[0]);
    let sup = st["supervisor_pid"].as_i64().expect("supervisor pid") as i32;
    // The supervisor dies hard; the leader goes with it (parent-death signal), the rest stays.
    kill(Pid::from_raw(sup), Signal::SIGKILL).expect("kill -9 supervisor");
    reap(sup);
    reap(leader);
    let (code, st) = svc.status();
    assert_eq!(code, 1, "dead, leftovers reported: {st}");
    assert!(processes(&st).contains(&pids[1]), "orphan listed: {st}");
    // The operator cleans up by hand: now the group's number is free for anyone.
    for p in [pids[1], escaped] {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        reap(p);
    }
    let marker = svc.path("stranger");
    let placed = Command::new(fixture("on-pid"))
        .arg(leader.to_string())
        .arg(&marker)
        .args(["sleep", "1003"])
        .output()
        .expect("on-pid");
    assert!(placed.status.success(), "{placed:?}");
    wait_until(LONG, "the stranger to run", || pids_in(&marker) == [leader]);
    let born = starttime(leader).expect("stranger runs");
    let stranger_is_untouched = || starttime(leader) == Some(born) && alive(leader);
    // Its identity is what the attack forges: the old PID, as process group (and session).
    let stat = std::fs::read_to_string(format!("/proc/{leader}/stat")).expect("stat");
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    assert_eq!((f[2], f[3]), (&*leader.to_string(), &*leader.to_string()));

    let (_, st) = svc.status();
    assert!(!processes(&st).contains(&leader), "stranger listed: {st}");
    assert!(
        !st["problem"]
            .as_str()
            .unwrap_or("")
            .contains(&leader.to_string()),
        "{st}"
    );
    let r = svc.baton(&["stop"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("killing"), "{r:?}");
    assert!(stranger_is_untouched(), "stop left the stranger alone");
    let r = svc.start();
    assert!(!r.stderr.contains("killing"), "{r:?}");
    assert!(stranger_is_untouched(), "start left the stranger alone");
    svc.stop();
    assert!(stranger_is_untouched(), "stop left the stranger alone");
    let _ = kill(Pid::from_raw(leader), Signal::SIGKILL);
    reap(leader);
}

#[test]
fn stranger_on_the_old_service_pid_survives_status_stop_start_with_cgroup() {
    stranger_on_the_old_pid_is_left_alone(true);
}

#[test]
fn stranger_on_the_old_service_pid_survives_status_stop_start_without_cgroup() {
    stranger_on_the_old_pid_is_left_alone(false);
}

const HAPROXY_CFG: &str = "global\n    pidfile {dir}/haproxy.pid\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\
frontend fe\n    bind 127.0.0.1:{front}\n    default_backend app\nbackend app\n    server s1 127.0.0.1:{port}\n";

/// Kills the HAProxy daemons named in its PID file when the test ends, passed or not.
struct HaproxyGuard(std::path::PathBuf);

impl Drop for HaproxyGuard {
    fn drop(&mut self) {
        for p in pids_in(&self.0) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

fn haproxy_daemon_survives_stop_and_crash_restart(cgroup: bool) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let front = harness::free_port();
    let port = harness::free_port();
    let svc = Spec::new("hap", r#"["sleep", "1000"]"#).create();
    let d = svc.dir.display().to_string();
    let cfg = svc.path("haproxy.cfg");
    let template = HAPROXY_CFG
        .replace("{dir}", &d)
        .replace("{front}", &front.to_string());
    std::fs::write(&cfg, template.replace("{port}", &port.to_string())).expect("cfg");
    let pidfile = svc.path("haproxy.pid");
    let _guard = HaproxyGuard(pidfile.clone());
    let first = Command::new("timeout")
        .args(["10", "haproxy", "-D", "-f", &cfg.to_string_lossy()])
        .status()
        .expect("haproxy");
    assert!(first.success());
    wait_until(LONG, "the first haproxy", || pids_in(&pidfile).len() == 1);
    let first = pids_in(&pidfile)[0];
    // The first publish reloads for real (a new daemon, under the supervisor); later ones
    // leave it be, so that what a crash-restart does to it can be seen.
    let reload = format!(
        "[ -e {d}/reloaded ] && exit 0; touch {d}/reloaded; exec haproxy -D -f {d}/haproxy.cfg -sf $(cat {d}/haproxy.pid)"
    );
    svc.rewrite(&Spec::new("hap", r#"["sleep", "1000"]"#).tables(&format!(
        "{}[port]\nmode = \"fixed\"\nport = {port}\n[restart]\npolicy = \"always\"\nbackoff = [\"10ms\", \"10ms\"]\n\
         [proxy]\nkind = \"command\"\nupstream = \"{d}/haproxy.cfg\"\ntemplate = {template:?}\n\
         check = [\"haproxy\", \"-c\", \"-q\", \"-f\", \"{{candidate}}\"]\nreload = [\"sh\", \"-c\", {reload:?}]\n\
         [registry]\nfile = \"{{dir}}/registry.json\"\n",
        cgroup_table(cgroup)
    )));
    svc.start();
    wait_until(LONG, "the reload's haproxy daemon", || {
        pids_in(&pidfile).first().is_some_and(|&p| p != first) && svc.path("reloaded").exists()
    });
    let daemon = pids_in(&pidfile)[0];
    let born = starttime(daemon).expect("haproxy daemon runs");
    let (_, st) = svc.status();
    let sup = st["supervisor_pid"].as_i64().expect("supervisor") as i32;
    let ppid = |p: i32| -> Option<i32> {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        s.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    // The attack's precondition: the subreaper supervisor adopted the reload's daemon.
    assert_eq!(ppid(daemon), Some(sup), "haproxy {daemon} adopted by {sup}");
    assert_eq!(st["tracking"], if cgroup { "cgroup" } else { "subreaper" });
    assert!(
        !processes(&st).contains(&daemon),
        "haproxy is not the service: {st}"
    );
    let untouched = || alive(daemon) && starttime(daemon) == Some(born);

    // Crash: the service dies, baton takes its tree down and restarts it.
    let leader = st["service_pid"].as_i64().expect("service pid") as i32;
    kill(Pid::from_raw(leader), Signal::SIGKILL).expect("kill service");
    wait_until(LONG, "the restart", || {
        let (_, st) = svc.status();
        st["restarts"] == 1 && st["ready"] == true && st["service_pid"] != leader
    });
    assert!(untouched(), "crash-restart left haproxy {daemon} alone");
    let (_, st) = svc.status();
    assert!(!processes(&st).contains(&daemon), "{st}");

    svc.stop();
    assert!(untouched(), "stop left haproxy {daemon} alone");
}

#[test]
fn haproxy_daemonized_by_the_reload_survives_stop_and_crash_with_cgroup() {
    haproxy_daemon_survives_stop_and_crash_restart(true);
}

#[test]
fn haproxy_daemonized_by_the_reload_survives_stop_and_crash_without_cgroup() {
    haproxy_daemon_survives_stop_and_crash_restart(false);
}

/// The largest value `check` accepts for a duration key (harden-files bounds them at parse time).
fn largest_accepted(key_table: &str, key: &str) -> String {
    for v in [
        "18446744073709551615s",
        "9223372036854775807s",
        "1000000000000s",
        "3153600000s",
        "31536000s",
        "604800s",
        "86400s",
    ] {
        let svc = Spec::new("big", r#"["sleep", "1000"]"#)
            .tables(&format!("[{key_table}]\n{key} = \"{v}\"\n"))
            .create();
        if svc.baton(&["check"]).code == 0 {
            return v.to_string();
        }
    }
    panic!("no large {key_table}.{key} accepted");
}

#[test]
fn huge_durations_cannot_crash_stop_or_a_restart() {
    let stop = largest_accepted("stop", "timeout");
    let ready = largest_accepted("ready", "timeout");
    let backoff = largest_accepted("restart", "window");
    for cgroup in [true, false] {
        let svc = Spec::new("big", &format!(r#"["{}", "{{dir}}/pids"]"#, fixture("escaper")))
            .tables(&format!(
                "{}[stop]\ntimeout = \"{stop}\"\ndump_signal = \"QUIT\"\ndump_after = \"1s\"\n\
                 [ready]\ntimeout = \"{ready}\"\n[restart]\npolicy = \"always\"\nwindow = \"{backoff}\"\n\
                 backoff = [\"10ms\", \"{backoff}\"]\n",
                cgroup_table(cgroup)
            ))
            .create();
        svc.start();
        wait_until(LONG, "the escaper's pid files", || {
            pids_in(&svc.path("pids")).len() == 2 && pids_in(&svc.path("pids.escaped")).len() == 1
        });
        let (_, st) = svc.status();
        let leader = st["service_pid"].as_i64().expect("service pid") as i32;
        // A crash: restart with the far backoff (the first one is the minimum).
        kill(Pid::from_raw(leader), Signal::SIGKILL).expect("kill service");
        wait_until(LONG, "the restart", || svc.status().1["restarts"] == 1);
        let r = svc.stop();
        assert!(r.stdout.contains("big stopped"), "{r:?}");
        let (code, st) = svc.status();
        assert_eq!(code, 3, "{st}");
        assert!(
            svc.processes().is_empty(),
            "nothing left: {:?}",
            svc.processes()
        );
    }
}

fn panic_takes_the_service_down(cgroup: bool) {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the panic trigger exists only in debug builds");
        return;
    }
    let (svc, pids, escaped) = {
        let spec = Spec::new(
            "pan",
            &format!(r#"["{}", "{{dir}}/pids"]"#, fixture("escaper")),
        )
        .tables(cgroup_table(cgroup));
        let svc = spec.create();
        let r: harness::Run = Command::new(harness::baton_bin())
            .arg("--config")
            .arg(&svc.config)
            .arg("start")
            .env("BATON_TEST_PANIC", "1")
            .output()
            .expect("start")
            .into();
        assert_eq!(r.code, 0, "{r:?}");
        wait_until(LONG, "the escaper's pid files", || {
            pids_in(&svc.path("pids")).len() == 2 && pids_in(&svc.path("pids.escaped")).len() == 1
        });
        let pids = pids_in(&svc.path("pids"));
        let escaped = pids_in(&svc.path("pids.escaped"))[0];
        (svc, pids, escaped)
    };
    let (_, st) = svc.status();
    let sup = st["supervisor_pid"].as_i64().expect("supervisor") as i32;
    let cgroup_dir = st["cgroup"].as_str().map(std::path::PathBuf::from);
    let r = svc.baton(&["reopen-logs"]);
    assert_ne!(r.code, 0, "the supervisor died answering: {r:?}");
    wait_until(LONG, "the supervisor to die", || !alive(sup));
    for p in pids.iter().chain([&escaped]) {
        assert!(!alive(*p), "pid {p} outlived the panicking supervisor");
    }
    let (code, st) = svc.status();
    assert_eq!(code, 1, "dead, PID file left: {st}");
    assert_eq!(st["state"], "dead", "{st}");
    assert!(processes(&st).is_empty(), "{st}");
    let problem = st["problem"].as_str().unwrap_or("");
    assert!(
        problem.contains("the supervisor crashed") && problem.contains("BATON_TEST_PANIC"),
        "{st}"
    );
    if let Some(dir) = cgroup_dir {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    // And the next start works from there.
    svc.start();
    svc.stop();
}

#[test]
fn a_panicking_supervisor_takes_its_cgroup_down_and_status_says_so() {
    panic_takes_the_service_down(true);
}

#[test]
fn a_panicking_supervisor_takes_its_tree_down_and_status_says_so_without_cgroup() {
    panic_takes_the_service_down(false);
}
