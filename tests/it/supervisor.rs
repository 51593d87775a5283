//! The core issue's behaviours, each driven through the real baton binary against real processes.

use crate::harness;

use harness::{alive, fixture, flood_spec, free_port, wait_until, Spec, Svc};
use std::net::TcpStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn sh(script: &str) -> String {
    format!("[\"/bin/sh\", \"-c\", {}]", toml_str(script))
}

/// A service running the `forker` fixture; returns it and the file where the fixture lists its PIDs.
fn forker(name: &str) -> (Svc, std::path::PathBuf) {
    let svc = Spec::new(
        name,
        &format!("[\"{}\", \"{{dir}}/pids\"]", fixture("forker")),
    )
    .tables("[ready]\nlog = \"waiting\"")
    .create();
    let pids = svc.path("pids");
    (svc, pids)
}

/// The PIDs the forker wrote: its own, its child, the child that escaped with setsid.
fn forker_pids(file: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .expect("pids")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect()
}

fn toml_str(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

// ---------- start means ready ----------

#[test]
fn start_returns_only_once_the_tcp_port_accepts() {
    let port = free_port();
    let svc = Svc::new(
        "slow",
        &format!("[\"{}\", \"0.7\", \"{port}\"]", fixture("slow-ready")),
        &format!("[ready]\ntcp = \"127.0.0.1:{port}\"\ntimeout = \"20s\""),
    );
    let r = svc.start();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "port closed right after start returned: {r:?}"
    );
    let pid = svc.pid_in_file().expect("PID file written once ready");
    assert!(alive(pid));
    let (code, st) = svc.status();
    assert_eq!(code, 0);
    assert_eq!(
        st["supervisor_pid"], pid,
        "the PID file holds the supervisor's PID"
    );
    assert_eq!(st["state"], "ready");
}

#[test]
fn pid_file_holds_the_pid_alone_on_its_first_line() {
    let svc = Svc::new(
        "pidline",
        &sh("echo up; exec sleep 1000"),
        "[ready]\nlog = \"^up$\"",
    );
    svc.start();
    let text = std::fs::read_to_string(svc.pidfile()).expect("pidfile");
    let first = text.lines().next().expect("a line");
    assert!(
        first.chars().all(|c| c.is_ascii_digit()),
        "first line {first:?}"
    );
    // Identity lives in the state directory: PID plus /proc start time.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(svc.path("state/state.json")).expect("state"),
    )
    .expect("json");
    let pid = first.parse::<i32>().expect("pid");
    assert_eq!(state["supervisor"]["pid"], pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let starttime: u64 = stat
        .rsplit(')')
        .next()
        .expect("fields")
        .split_whitespace()
        .nth(19)
        .expect("f22")
        .parse()
        .expect("n");
    assert_eq!(state["supervisor"]["starttime"], starttime);
}

#[test]
fn http_probe_waits_for_a_2xx() {
    let port = free_port();
    // Answers 503 for a while, then 200: only the 200 may count as ready.
    let script = format!(
        r#"import http.server, time, os
t0 = time.time()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if time.time() - t0 > 0.5 else 503
        if code == 200: open(os.environ["OKFILE"], "w").close()
        self.send_response(code); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()"#
    );
    let svc = Spec::new(
        "http",
        &format!("[\"python3\", \"-c\", {}]", toml_str(&script)),
    )
    .env("OKFILE = \"{dir}/ok\"")
    .tables(&format!(
        "[ready]\nhttp = \"http://127.0.0.1:{port}/health\"\ntimeout = \"20s\""
    ))
    .create();
    let okfile = svc.path("ok");
    svc.start();
    assert!(
        okfile.exists(),
        "start returned before the service answered 200"
    );
}

#[test]
fn log_probe_matches_a_line_of_output() {
    let svc = Spec::new(
        "logready",
        &sh("echo booting; sleep 0.3; echo 'Started ServerConnector@1a2b' >&2; exec sleep 1000"),
    )
    .tables("[ready]\nlog = \"Started ServerConnector@\\\\w+\"")
    .create();
    let t0 = std::time::Instant::now();
    svc.start();
    // The line comes 0.3 s after exec: returning sooner would mean not waiting for it.
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "ready after {:?}",
        t0.elapsed()
    );
    // baton writes a line to the log before matching it, so it is there when start returns.
    assert!(svc
        .log("stderr.log")
        .contains("Started ServerConnector@1a2b"));
    assert!(svc.log("stdout.log").contains("booting"));
}

#[test]
fn exec_probe_runs_until_it_exits_zero() {
    let svc = Spec::new("execready", &sh("sleep 0.4; touch flag; exec sleep 1000"))
        .top("workdir = \"{dir}\"")
        .tables("[ready]\nexec = [\"test\", \"-e\", \"{dir}/flag\"]")
        .create();
    svc.start();
    assert!(svc.path("flag").exists());
}

#[test]
fn notify_probe_waits_for_ready_1() {
    let svc = Svc::new(
        "notify",
        &format!("[\"{}\", \"0.5\"]", fixture("notify-ready")),
        "[ready]\nnotify = true",
    );
    let t0 = std::time::Instant::now();
    svc.start();
    // The fixture sleeps 0.5 s before it sends READY=1: returning earlier would mean not waiting for it.
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "ready after {:?}",
        t0.elapsed()
    );
    wait_until(T, "the fixture's own report", || {
        svc.log("stdout.log").contains("sent READY=1")
    });
}

#[test]
fn combined_probes_all_must_pass() {
    let port = free_port();
    // The log line comes first, the port 0.5 s later: ready means both.
    let svc = Svc::new(
        "both",
        &format!(
            "[\"/bin/sh\", \"-c\", \"echo warming up; exec {} 0.5 {port}\"]",
            fixture("slow-ready")
        ),
        &format!("[ready]\nlog = \"warming up\"\ntcp = \"127.0.0.1:{port}\""),
    );
    svc.start();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[test]
fn crash_before_ready_fails_start_with_reason_and_output() {
    let svc = Svc::new(
        "crash",
        &format!("[\"{}\"]", fixture("crash-early")),
        "[ready]\ntcp = \"127.0.0.1:1\"",
    );
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("exited with code 3 before it was ready"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("fatal: cannot open /nonexistent/db"),
        "the service's last output is shown: {r:?}"
    );
    assert!(!svc.pidfile().exists(), "no PID file after a failed start");
    assert!(
        svc.processes().is_empty(),
        "left processes: {:?}",
        svc.processes()
    );
    assert_eq!(svc.status().0, 3);
}

#[test]
fn never_ready_times_out_and_kills_the_tree() {
    let svc = Svc::new(
        "never",
        &format!("[\"{}\"]", fixture("never-ready")),
        "[ready]\ntcp = \"127.0.0.1:1\"\ntimeout = \"1s\"\n[stop]\ntimeout = \"2s\"",
    );
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not ready within 1s"), "{r:?}");
    assert!(
        r.stderr.contains("connect 127.0.0.1:1: connection refused"),
        "says what it waited for: {r:?}"
    );
    assert!(r.stderr.contains("booting"), "{r:?}");
    assert!(!svc.pidfile().exists());
    assert!(
        svc.processes().is_empty(),
        "left processes: {:?}",
        svc.processes()
    );
}

#[test]
fn start_returns_to_a_caller_that_reads_its_pipe_to_the_end() {
    // Chef, CI and `$(...)` read a command's output until every writer closes it:
    // no descriptor of the caller may live on in the supervisor or the service.
    let svc = Svc::new(
        "pipe",
        &sh("ls /proc/self/fd > {dir}/fds; echo up; exec sleep 1000"),
        "[ready]\nlog = \"up\"",
    );
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "exec 7>{0}/extra; {1} --config {0}/pipe.toml start 3>&1 2>&1 | cat",
            svc.dir.display(),
            harness::baton_bin().display()
        ))
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "start through a pipe hung or failed: {out:?}"
    );
    let fds = std::fs::read_to_string(svc.path("fds")).expect("fds");
    let mut fds: Vec<u32> = fds.lines().map(|l| l.parse().expect("fd")).collect();
    fds.sort_unstable();
    // 0-2 plus the one ls opened to list the directory.
    assert_eq!(fds, vec![0, 1, 2, 3], "the service inherited descriptors");
}

#[test]
fn start_on_a_running_service_starts_nothing() {
    let svc = Svc::new(
        "twice",
        &sh("echo up; exec sleep 1000"),
        "[ready]\nlog = \"up\"",
    );
    svc.start();
    let pid = svc.pid_in_file();
    let procs = svc.processes();
    let r = svc.start();
    assert!(r.stdout.contains("already running"), "{r:?}");
    assert_eq!(svc.pid_in_file(), pid);
    assert_eq!(svc.processes(), procs);
}

/// The listing every test counts processes with must not lose one that is in execve (its
/// environ reads empty for a moment): a shell that execs itself 1000 times is listed at
/// every look while it runs. `start_on_a_running_service_starts_nothing` once saw its
/// service, caught as `sh` just before `exec sleep`, vanish from the second look.
#[test]
fn a_process_in_the_middle_of_an_exec_is_still_listed() {
    let marker = format!("BATON_TEST_EXECLOOP={}", std::process::id());
    let (key, value) = marker.split_once('=').expect("KEY=VALUE");
    let mut child = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            r#"[ "$1" -gt 0 ] && exec /bin/sh -c "$0" "$0" $(($1 - 1))"#,
        ])
        .arg(r#"[ "$1" -gt 0 ] && exec /bin/sh -c "$0" "$0" $(($1 - 1))"#)
        .arg("1000")
        .env(key, value)
        .spawn()
        .expect("spawn the exec loop");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut looks = 0;
    while child.try_wait().expect("try_wait").is_none() {
        let listed = harness::processes_with_env(&marker);
        if !listed.contains(&pid) {
            // Missing because the loop has ended (the shell exiting, its memory gone), not
            // because the listing lost it.
            assert!(
                harness::exiting(pid),
                "the exec loop (pid {pid}) was missing from the listing after {looks} looks"
            );
        }
        looks += 1;
    }
    assert!(looks > 0, "the exec loop ended before the first look");
}

#[test]
fn concurrent_starts_yield_exactly_one_service() {
    let svc = Svc::new(
        "race",
        &sh("echo up; sleep 0.2; echo really; exec sleep 1000"),
        "[ready]\nlog = \"really\"",
    );
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let config = svc.config.clone();
            std::thread::spawn(move || {
                std::process::Command::new(harness::baton_bin())
                    .arg("--config")
                    .arg(config)
                    .arg("start")
                    .output()
                    .expect("run")
            })
        })
        .collect();
    for h in handles {
        let out = h.join().expect("thread");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, st) = svc.status();
    // One supervisor, one service: the sleep (the sh exec'd into it).
    assert_eq!(svc.processes().len(), 1, "{:?} / {st}", svc.processes());
    assert_eq!(st["restarts"], 0);
}

// ---------- stop is graceful and complete ----------

#[test]
fn stop_kills_grandchildren_including_setsid_escapees() {
    let (svc, pids) = forker("forker");
    svc.start();
    let listed = forker_pids(&pids);
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|&p| alive(p)));
    let r = svc.stop();
    for p in listed {
        assert!(!alive(p), "pid {p} survived stop: {r:?}");
    }
    assert!(svc.processes().is_empty());
    assert!(!svc.pidfile().exists());
    assert_eq!(svc.status().0, 3);
}

#[test]
fn stop_escalates_to_sigkill_after_a_thread_dump() {
    let svc = Svc::new(
        "stubborn",
        &format!("[\"{}\"]", fixture("ignore-term")),
        "[ready]\nlog = \".\"\n[stop]\ntimeout = \"2s\"\ndump_signal = \"QUIT\"\ndump_after = \"500ms\"",
    );
    svc.start();
    let r = svc.stop();
    assert!(
        r.stderr.contains("SIGKILL in"),
        "stop says what it is waiting for: {r:?}"
    );
    assert!(r.stderr.contains("sent SIGKILL"), "{r:?}");
    let out = svc.log("stdout.log");
    assert!(out.contains("got TERM"), "{out}");
    assert!(
        out.contains("THREAD DUMP"),
        "the dump signal went out before SIGKILL: {out}"
    );
    assert!(svc.processes().is_empty());
}

#[test]
fn stop_on_a_stopped_service_is_success() {
    let svc = Svc::new("idle", &sh("exec sleep 1000"), "");
    let r = svc.stop();
    assert!(r.stdout.contains("not running"), "{r:?}");
}

#[test]
fn stale_pid_file_naming_another_process_is_never_signalled() {
    let svc = Svc::new(
        "stale",
        &sh("echo up; exec sleep 1000"),
        "[ready]\nlog = \"up\"",
    );
    // A live process that is not ours, as after PID reuse.
    let mut bystander = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep");
    let pid = bystander.id() as i32;
    std::fs::create_dir_all(svc.path("run")).expect("dir");
    std::fs::write(svc.pidfile(), format!("{pid}\n")).expect("pidfile");

    let (code, st) = svc.status();
    assert_eq!(code, 1, "dead with a PID file: {st}");
    assert_eq!(st["state"], "dead");
    let r = svc.stop();
    assert!(
        alive(pid),
        "stop signalled a process that merely reuses the PID: {r:?}"
    );
    assert!(!svc.pidfile().exists(), "stop removes the stale PID file");
    assert_eq!(svc.status().0, 3);

    std::fs::write(svc.pidfile(), format!("{pid}\n")).expect("pidfile");
    svc.start();
    assert_ne!(
        svc.pid_in_file(),
        Some(pid),
        "start replaces a stale PID file"
    );
    svc.stop();
    assert!(alive(pid));
    bystander.kill().ok();
    bystander.wait().ok();
}

#[test]
fn pid_file_of_a_dead_process_reads_as_dead() {
    let svc = Svc::new("deadpid", &sh("exec sleep 1000"), "");
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    gone.wait().expect("wait");
    std::fs::create_dir_all(svc.path("run")).expect("dir");
    std::fs::write(svc.pidfile(), format!("{}\n", gone.id())).expect("pidfile");
    assert_eq!(svc.status().0, 1);
    svc.start();
    assert_eq!(svc.status().0, 0);
}

#[test]
fn killed_supervisor_leaves_no_silent_orphan() {
    let (svc, pids) = forker("kill9");
    svc.start();
    let sup = svc.pid_in_file().expect("pid");
    let listed = forker_pids(&pids);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    // The service leader dies with its supervisor (parent-death signal).
    wait_until(T, "service leader to die with the supervisor", || {
        !alive(listed[0])
    });
    let (code, st) = svc.status();
    assert_eq!(code, 1, "{st}");
    let problem = st["problem"].as_str().unwrap_or("");
    assert!(
        problem.contains("still run"),
        "status names the surviving group members: {st}"
    );
    // start works again and clears what the dead supervisor left in the group.
    svc.start();
    assert!(
        !alive(listed[1]),
        "orphan in the service's group survived the new start"
    );
    svc.stop();
    // The setsid escapee left the group; without a live subreaper nothing can find it.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(listed[2]),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn supervisor_killed_before_ready_still_leaves_no_silent_orphan() {
    // The service's identity must be on disk from the spawn, not from readiness.
    let svc = Spec::new(
        "kill9early",
        &format!("[\"{}\", \"{{dir}}/pids\"]", fixture("forker")),
    )
    .tables("[ready]\nlog = \"never printed\"\ntimeout = \"60s\"")
    .create();
    let pids = svc.path("pids");
    let mut starting = svc.spawn_baton(&["start"]);
    wait_until(T, "the forker to write its pids", || pids.exists());
    let listed = forker_pids(&pids);
    let (_, st) = svc.status();
    assert_eq!(st["state"], "starting", "{st}");
    let sup = st["supervisor_pid"].as_i64().expect("supervisor pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let waited = starting.wait().expect("wait for start");
    assert!(
        !waited.success(),
        "start reported success for a dead supervisor"
    );
    wait_until(T, "service leader to die with the supervisor", || {
        !alive(listed[0])
    });
    let (code, st) = svc.status();
    assert_eq!(code, 1, "{st}");
    assert!(
        st["processes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == listed[1])),
        "status names the surviving group member {}: {st}",
        listed[1]
    );
    let r = svc.baton(&["stop"]);
    assert_eq!(r.code, 0, "stop clears the orphans: {r:?}");
    assert!(!alive(listed[1]), "orphan survived stop");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(listed[2]),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Names in `dir` shaped like the PID file's staged copy: `.NAME.<random>.tmp`.
fn staged_pid_files(svc: &Svc) -> Vec<String> {
    let pidfile = svc.pidfile();
    let name = pidfile
        .file_name()
        .and_then(|n| n.to_str())
        .expect("pid file name");
    let dir = pidfile.parent().expect("pid dir");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!(".{name}.")) && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_pid_file_staged_by_a_supervisor_killed_before_ready_is_removed_by_the_next() {
    let svc = Spec::new(
        "stalestage",
        &sh("echo booting; if [ -e {dir}/go ]; then echo up; fi; exec sleep 1000"),
    )
    .tables("[ready]\nlog = \"^up$\"\ntimeout = \"60s\"")
    .create();
    let mut starting = svc.spawn_baton(&["start"]);
    wait_until(T, "the service's first line", || {
        svc.log("stdout.log").contains("booting")
    });
    let staged = staged_pid_files(&svc);
    assert_eq!(staged.len(), 1, "the PID file waits staged: {staged:?}");
    let (_, st) = svc.status();
    let sup = st["supervisor_pid"].as_i64().expect("supervisor pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(!starting.wait().expect("wait for start").success());
    assert_eq!(
        svc.stop().code,
        0,
        "stop clears what the dead supervisor left"
    );
    assert_eq!(
        staged_pid_files(&svc),
        staged,
        "nothing ran that could remove it"
    );

    std::fs::write(svc.path("go"), "").expect("go");
    svc.start();
    assert!(
        staged_pid_files(&svc).is_empty(),
        "the next supervisor removed its dead predecessor's staged file: {:?}",
        staged_pid_files(&svc)
    );
    assert_eq!(
        svc.pid_in_file(),
        svc.status().1["supervisor_pid"].as_i64().map(|p| p as i32)
    );
    assert_eq!(svc.stop().code, 0);
}

// ---------- supervision ----------

#[test]
fn crash_after_ready_is_restarted_with_backoff() {
    let svc = Svc::new(
        "flaky",
        &sh("echo up; sleep 0.3; exit 1"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"on-failure\"\nbackoff = [\"50ms\", \"200ms\"]",
    );
    svc.start();
    wait_until(T, "two restarts", || {
        svc.status().1["restarts"].as_u64().unwrap_or(0) >= 2
    });
    let (_, st) = svc.status();
    assert_eq!(st["last_exit"], "exited with code 1");
    svc.stop();
}

#[test]
fn crash_looping_status_says_attempt_and_next_try() {
    let svc = Svc::new(
        "looping",
        &sh("echo up; sleep 0.2; exit 2"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"always\"\nbackoff = [\"1s\", \"60s\"]",
    );
    svc.start();
    // One crash is a restart; the second in a row makes it a loop.
    wait_until(T, "the first backoff", || {
        svc.status().1["state"] == "restarting"
    });
    // The status judged is the one that saw the loop: a second read could land after
    // the next try (1-2 s later), which a loaded machine makes likely enough to flake.
    let mut looping = None;
    wait_until(T, "the second crash", || {
        let r = svc.baton(&["status"]);
        let seen = r.stdout.contains("crash-looping");
        looping = seen.then_some(r);
        seen
    });
    let r = looping.expect("wait_until returned, so the loop was seen");
    assert_eq!(r.code, 1, "not serving while backing off: {r:?}");
    assert!(
        r.stdout.contains("crash-looping, attempt 2, next try in"),
        "{r:?}"
    );
    assert!(r.stdout.contains("last exit: exited with code 2"), "{r:?}");
    svc.stop();
    assert_eq!(svc.status().0, 3);
}

#[test]
fn start_on_a_crash_looping_service_retries_now_and_waits_for_ready() {
    // The first run crashes after becoming ready; later runs stay up.
    let svc = Svc::new(
        "retry",
        &sh("if [ -e {dir}/crashed ]; then echo up; exec sleep 1000; fi; touch {dir}/crashed; echo up; sleep 0.2; exit 2"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"always\"\nbackoff = [\"60s\", \"60s\"]",
    );
    svc.start();
    wait_until(T, "backoff", || {
        svc.status().1["next_try_in_secs"].is_number()
    });
    let sup = svc.pid_in_file();
    let r = svc.start();
    assert!(r.stdout.contains("retry is ready"), "{r:?}");
    let (code, st) = svc.status();
    assert_eq!(code, 0, "start means ready, even out of a crash loop: {st}");
    assert_eq!(
        svc.pid_in_file(),
        sup,
        "the same supervisor spawned it, no second one"
    );
}

#[test]
fn start_on_a_crash_looping_service_fails_if_it_crashes_again() {
    // The first run becomes ready then crashes; every later run dies before it is ready.
    let svc = Svc::new(
        "again",
        &sh("if [ -e {dir}/crashed ]; then echo 'cannot bind'; exit 3; fi; touch {dir}/crashed; echo up; sleep 0.2; exit 2"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"always\"\nbackoff = [\"60s\", \"60s\"]",
    );
    svc.start();
    wait_until(T, "backoff", || {
        svc.status().1["next_try_in_secs"].is_number()
    });
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("unable to start again: exited with code 3 and is crash-looping"),
        "{r:?}"
    );
    let (code, st) = svc.status();
    assert_eq!(code, 1, "{st}");
    assert_eq!(st["state"], "crash-looping");
}

#[test]
fn crash_loop_limit_marks_the_service_failed() {
    let svc = Svc::new(
        "limit",
        &sh("echo up; sleep 0.1; exit 1"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"always\"\nbackoff = [\"10ms\", \"20ms\"]\nmax = 2\nwindow = \"60s\"",
    );
    svc.start();
    wait_until(T, "the supervisor to give up", || {
        svc.status().1["state"] == "dead"
    });
    let (code, st) = svc.status();
    assert_eq!(code, 1, "{st}");
    assert!(
        st["problem"]
            .as_str()
            .unwrap_or("")
            .contains("crash loop: 2 restarts within 60s"),
        "{st}"
    );
    assert!(svc.processes().is_empty(), "a failed service stays down");
    // `start` answers 0 only once the new instance printed "up": that is the service back.
    // (A `status` after it could land after this instance's 0.1 s life, in its backoff.)
    let r = svc.start();
    assert!(
        r.stdout.contains("is ready") || r.stderr.contains("is ready"),
        "start brings a failed service back: {r:?}"
    );
}

#[test]
fn policy_never_leaves_a_crashed_service_dead() {
    let svc = Svc::new(
        "never",
        &sh("echo up; sleep 0.2; exit 4"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"never\"",
    );
    svc.start();
    wait_until(T, "the service to die", || svc.processes().is_empty());
    wait_until(T, "status dead", || svc.status().0 == 1);
    let (_, st) = svc.status();
    assert_eq!(st["last_exit"], "exited with code 4");
}

#[test]
fn clean_exit_under_on_failure_is_not_restarted() {
    let svc = Svc::new(
        "oneshot",
        &sh("echo up; sleep 0.2; exit 0"),
        "[ready]\nlog = \"up\"",
    );
    svc.start();
    wait_until(T, "status not running", || svc.status().0 == 3);
    assert!(!svc.pidfile().exists());
}

#[test]
fn reload_delivers_the_reload_signal() {
    let svc = Spec::new(
        "hup",
        &format!("[\"{}\", \"{{dir}}/hups\"]", fixture("hup-counter")),
    )
    .tables("[ready]\nlog = \"ready\"")
    .create();
    let file = svc.path("hups");
    let r = svc.baton(&["reload"]);
    assert_eq!(r.code, 7, "reload of a stopped service: {r:?}");
    svc.start();
    assert_eq!(svc.baton(&["reload"]).code, 0);
    wait_until(T, "the HUP to arrive", || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    });
    assert_eq!(svc.baton(&["force-reload"]).code, 0);
    wait_until(T, "the second HUP", || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count()
            == 2
    });
}

#[test]
fn restart_and_try_restart() {
    let svc = Svc::new(
        "rs",
        &sh("echo up; exec sleep 1000"),
        "[ready]\nlog = \"up\"",
    );
    let r = svc.baton(&["try-restart"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        svc.status().0,
        3,
        "try-restart leaves a stopped service stopped"
    );
    assert_eq!(
        svc.baton(&["restart"]).code,
        0,
        "restart starts a stopped service"
    );
    let first = svc.pid_in_file();
    assert_eq!(svc.status().0, 0);
    assert_eq!(svc.baton(&["try-restart"]).code, 0);
    assert_eq!(svc.status().0, 0);
    assert_ne!(svc.pid_in_file(), first, "a new supervisor after restart");
}

#[test]
fn jvm_style_exit_143_after_stop_counts_as_clean() {
    let svc = Svc::new(
        "jvm",
        &sh("trap 'exit 143' TERM; echo up; while :; do sleep 1 & wait $!; done"),
        "[ready]\nlog = \"up\"\n[restart]\npolicy = \"on-failure\"",
    );
    svc.start();
    svc.stop();
    let (code, st) = svc.status();
    assert_eq!(code, 3, "{st}");
    assert_eq!(st["last_exit"], "exited with code 143");
    assert_eq!(st["state"], "not running", "{st}");
}

// ---------- logs ----------

#[test]
fn flood_of_lines_is_captured_whole_across_rotations() {
    let n = 200_000;
    let svc = flood_spec("flood", n)
        .log("max_size = \"1MB\"\nkeep = 100")
        .tables("[ready]\nlog = \"^line 000001\"")
        .create();
    svc.start_flood();
    let files = harness::rotated(&svc, "stdout.log");
    assert!(
        files.len() > 10,
        "expected rotation, got {} files",
        files.len()
    );
    harness::assert_flood_whole(&files, n, 1_000_000);
}

#[test]
fn supervisor_event_log_is_rotated_too() {
    // Each restart logs a few events; with 1 KB files baton.log must rotate, at line ends.
    let svc = Spec::new("events", &sh("echo up; sleep 0.05; exit 1"))
        .log("max_size = \"1KB\"\nkeep = 3")
        .tables(
            "[ready]\nlog = \"up\"\n[restart]\npolicy = \"always\"\nbackoff = [\"10ms\", \"10ms\"]",
        )
        .create();
    svc.start();
    wait_until(T, "baton.log to rotate", || {
        svc.path("log/baton.log.1").exists()
    });
    svc.stop();
    for name in ["baton.log", "baton.log.1"] {
        let body = svc.log(name);
        assert!(body.len() <= 1000, "{name} is {} bytes", body.len());
        assert!(body.ends_with('\n'), "{name} ends mid-line");
    }
    assert!(
        !svc.path("log/baton.log.4").exists(),
        "keep = 3 bounds the copies"
    );
}

#[test]
fn logs_reopen_after_external_rotation() {
    let svc = Svc::new(
        "reopen",
        &sh("trap 'echo reloaded' HUP; echo up; while :; do sleep 1 & wait $!; done"),
        "[ready]\nlog = \"up\"",
    );
    svc.start();
    std::fs::rename(svc.path("log/stdout.log"), svc.path("log/stdout.log.moved")).expect("mv");
    assert_eq!(svc.baton(&["reopen-logs"]).code, 0);
    assert_eq!(svc.baton(&["reload"]).code, 0);
    wait_until(T, "output in the new file", || {
        svc.log("stdout.log").contains("reloaded")
    });
    assert!(svc.log("stdout.log.moved").contains("up"));
    assert!(svc.log("baton.log").contains("reopened log files"));
}

// ---------- the service's environment ----------

#[test]
fn environment_workdir_and_umask_are_applied() {
    let svc = Spec::new(
        "envsvc",
        &sh("echo \"cwd=$(pwd) umask=$(umask) greet=$GREETING file=$FROM_FILE quoted=$QUOTED port=$PORT\"; echo up; exec sleep 1000"),
    )
    .top("workdir = \"{dir}\"\numask = \"027\"\nenv_file = \"extra.env\"")
    .env("GREETING = \"hello {name}\"")
    .tables("[port]\nmode = \"fixed\"\nport = 18999\n[ready]\nlog = \"up\"")
    .create();
    std::fs::write(
        svc.path("extra.env"),
        "# comment\nFROM_FILE=yes\nexport QUOTED=\"a b\"\n",
    )
    .expect("env file");
    svc.start();
    let out = svc.log("stdout.log");
    assert!(out.contains(&format!("cwd={}", svc.dir.display())), "{out}");
    assert!(out.contains("umask=0027"), "{out}");
    assert!(out.contains("greet=hello envsvc"), "{out}");
    assert!(out.contains("file=yes quoted=a b"), "{out}");
    assert!(out.contains("port=18999"), "{out}");
}

#[test]
fn without_user_every_respawn_gets_batons_own_account() {
    // baton's own account is looked up once per supervisor: a respawn must still get it whole.
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .expect("getpwuid")
        .expect("an account for this uid");
    let svc = Spec::new(
        "ownacct",
        &sh("echo account HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL; sleep 0.1; exit 1"),
    )
    .log("timestamps = false")
    .tables("[restart]\npolicy = \"always\"\nbackoff = [\"10ms\", \"10ms\"]")
    .create();
    let _ = svc.baton(&["start"]);
    let want = format!(
        "account HOME={} USER={} LOGNAME={} SHELL={}",
        me.dir.display(),
        me.name,
        me.name,
        me.shell.display()
    );
    wait_until(Duration::from_secs(30), "three instances", || {
        svc.log("stdout.log").matches("account ").count() >= 3
    });
    svc.stop();
    let out = svc.log("stdout.log");
    for line in out.lines().filter(|l| l.starts_with("account ")) {
        assert_eq!(line, want, "{out}");
    }
}

#[test]
fn privileges_are_dropped_completely() {
    if !harness::is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let svc = Spec::new(
        "dropped",
        &sh("id; echo HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL; grep NoNewPrivs /proc/self/status; echo up; exec sleep 1000"),
    )
    .top("user = \"nobody\"")
    .tables("[ready]\nlog = \"^up$\"")
    .create();
    svc.start();
    let out = svc.log("stdout.log");
    assert!(
        out.contains("uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"),
        "{out}"
    );
    assert!(
        out.contains("HOME=/nonexistent USER=nobody LOGNAME=nobody SHELL=/usr/sbin/nologin"),
        "{out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

// ---------- foreground ----------

#[test]
fn run_in_foreground_tells_systemd_ready_and_stops_cleanly_on_term() {
    use std::os::unix::net::UnixDatagram;
    let svc = Svc::new(
        "fg",
        &sh("trap 'exit 143' TERM; sleep 0.3; echo up; while :; do sleep 1 & wait $!; done"),
        "[ready]\nlog = \"up\"",
    );
    let sock_path = svc.path("systemd.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(T)).expect("timeout");
    let mut child = std::process::Command::new(harness::baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let mut buf = [0u8; 256];
    // A recv with a timeout is not restarted after this process is stopped and continued,
    // or traced, even without a handler (signal(7)): seen once in a full run (EINTR).
    let n = loop {
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.expect("READY=1 within 20s"),
        }
    };
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        svc.log("stdout.log").contains("up"),
        "READY=1 only after the probe passed"
    );
    assert_eq!(svc.status().0, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("term");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "143 after a requested stop is a clean exit"
    );
    assert!(svc.processes().is_empty());
}

// ---------- idle ----------

#[test]
fn idle_supervisor_does_not_wake_up() {
    let svc = Svc::new(
        "quiet",
        &sh("echo up; exec sleep 1000"),
        "[ready]\nlog = \"up\"",
    );
    svc.start();
    let pid = svc.pid_in_file().expect("pid");
    let switches = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        s.lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    };
    // start returns as soon as the PID file is written; after a quiet second the loop
    // sheds memory once and then sleeps in epoll_pwait2 with no timeout (a null pointer
    // in /proc/PID/syscall): from then on nothing may wake it.
    wait_until(
        T,
        "the supervisor to sleep in its wait with no timeout",
        || harness::loop_sleep(pid) == Some(false),
    );
    let before = switches();
    // Nothing can signal "nothing happened": this waits out a window on purpose.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(switches(), before, "an idle supervisor woke up");
}
