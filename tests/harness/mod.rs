//! One harness for every integration test: a service in a temporary directory, driven through the real binary.

#![allow(dead_code)]

pub mod lab;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The baton binary under test: the command operators run (src/front.rs).
pub fn baton_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// The core the front runs (`baton-core` beside it): every command, the supervisor.
pub fn core_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton-core"))
}

/// Where the front at `front` looks for its core: its own path and `-core`.
pub fn core_of(front: &Path) -> PathBuf {
    let mut p = front.as_os_str().to_owned();
    p.push("-core");
    PathBuf::from(p)
}

/// A fixture script from tests/fixtures.
/// Waits until the supervisor `pid` sleeps in its loop's wait (epoll_pwait2(2)) again, or
/// a `start` in its ppoll(2): `start` is answered first, and the loop's turn after it
/// (state.json, the next instance's cgroup) comes before it sleeps; a test that measures
/// or replaces what that turn writes waits for it.
pub fn wait_asleep(pid: i32) {
    let ppoll = format!("{} ", nix::libc::SYS_ppoll);
    wait_until(
        Duration::from_secs(60),
        "the supervisor to sleep again",
        || {
            loop_sleep(pid).is_some()
                || std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                    .is_ok_and(|s| s.starts_with(&ppoll))
        },
    );
}

/// Whether the supervisor `pid` sleeps in its loop's wait now, and if so with a timeout
/// (`Some(true)`) or until an event (`Some(false)`), from /proc/PID/syscall.
pub fn loop_sleep(pid: i32) -> Option<bool> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let f: Vec<&str> = s.split_whitespace().collect();
    // epoll_pwait2(epfd, events, maxevents, timeout, ...): the timeout is the fourth.
    (f.first() == Some(&nix::libc::SYS_epoll_pwait2.to_string().as_str()))
        .then(|| f.get(4) != Some(&"0x0"))
}

/// `baton ARGS...` with ARGS as given (no `--config` put first), bounded like `Svc::baton`.
pub fn baton(args: &[&str]) -> Run {
    Command::new("timeout")
        .arg("120")
        .arg(baton_bin())
        .args(args)
        .output()
        .expect("run baton")
        .into()
}

pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A service that writes `started` in its directory once running, then waits for a line on
/// the FIFO `go` before it says READY=1 (notify probe): the test decides when it is ready.
pub fn gated_notify_service(name: &str) -> Svc {
    let svc = Spec::new(
        name,
        &format!(
            r#"["/bin/sh", "-c", "echo up > {{dir}}/started; read go < {{dir}}/go; exec {} 0"]"#,
            fixture("notify-ready")
        ),
    )
    .tables("[ready]\nnotify = true\ntimeout = \"60s\"")
    .create();
    nix::unistd::mkfifo(&svc.path("go"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    svc
}

/// Lets a service waiting for a line on its FIFO `go` go on ([`gated_notify_service`] says
/// READY=1).
pub fn open_gate(svc: &Svc) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(svc.path("go"))
        .and_then(|mut f| f.write_all(b"go\n"))
        .expect("let the service become ready");
}

/// KiB of process `pid`'s mappings of the file `path` whose permissions `perms` accepts,
/// resident now and still the file's pages (Rss less Anonymous: a private page written,
/// as by relocation, is no longer the file's).
pub fn resident_file_kib(pid: i32, path: &Path, perms: impl Fn(&str) -> bool) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let path = path.to_str().expect("a UTF-8 path");
    let mut ours = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // A mapping's header: ADDRESS PERMS OFFSET DEV INODE [PATH].
        if f.first()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
        {
            ours = f.get(5) == Some(&path) && f.get(1).is_some_and(|p| perms(p));
        } else if ours && f.first() == Some(&"Rss:") {
            kib += f[1].parse::<u64>().expect("Rss in kB");
        } else if ours && f.first() == Some(&"Anonymous:") {
            kib -= f[1].parse::<u64>().expect("Anonymous in kB");
        }
    }
    kib
}

/// A port nobody listens on right now, and that nothing else will take before the test's
/// server binds it: below the kernel's ephemeral range, which outgoing connections (of every
/// test running beside this one) draw from, and never the same twice in this process. A
/// port from `bind(:0)` is an ephemeral one, free for any `connect` to take in the meantime.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Each test binary starts at its own place, so two of them rarely walk the same ports.
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&first| first > LOW + 1000)
        .unwrap_or(32_768);
    let span = below - LOW;
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Ok(held) = TcpListener::bind(("127.0.0.1", port as u16)) {
            drop(held);
            return port as u16;
        }
    }
    panic!("no free port between {LOW} and {below}")
}

/// Polls `cond` until it holds or `timeout` passes; the condition is what the test waits for.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Installs `from` at `to` as a package manager does: a new file renamed over the old
/// (so a supervisor running the old one keeps its deleted image).
pub fn install(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("dpkg-new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, to).expect("rename");
}

/// Installs the baton under test at `to` as a package upgrade does: the core first (at
/// `to-core`), then the front, so the front never runs without its core.
pub fn install_baton(to: &Path) {
    install(&core_bin(), &core_of(to));
    install(&baton_bin(), to);
}

/// Whether a process exists (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The number after `key` (e.g. "Threads:", "rchar:") in /proc/PID/`file` (status, io).
pub fn proc_number(pid: i32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/{file}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/{file}"))
}

/// Every live process whose environment carries `marker`.
pub fn processes_with_env(marker: &str) -> Vec<i32> {
    processes_listing("environ", marker.as_bytes())
}

/// Live processes with `arg` as one of their command-line arguments.
pub fn processes_with_arg(arg: &[u8]) -> Vec<i32> {
    processes_listing("cmdline", arg)
}

/// Live processes whose NUL-separated /proc/PID/`file` (environ, cmdline) has `item`.
fn processes_listing(file: &str, item: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(list) = proc_list(pid, file) {
            if list.split(|&b| b == 0).any(|x| x == item) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

/// /proc/PID/`file` (environ, cmdline), whole or not at all. The file reads the memory the
/// process had when it was opened: once an execve replaces that memory, further reads end
/// early, and between the new memory and its new stack a fresh open reads nothing (~4% of
/// the reads of a shell that execs in a loop). So the file is read in one `read` (all of it
/// from one memory), and an empty read of a live user process is made again until the exec
/// is over; otherwise a service caught as `sh` just before `exec sleep` would drop out of a
/// listing. Kernel threads, whose files are always empty, are not waited on.
fn proc_list(pid: i32, file: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let path = format!("/proc/{pid}/{file}");
    let once = || -> Option<Vec<u8>> {
        let mut f = std::fs::File::open(&path).ok()?;
        // Far above any environment a test makes; one that fills it is read on to the end.
        let mut list = vec![0; 1 << 18];
        let n = f.read(&mut list).ok()?;
        if n == list.len() {
            f.read_to_end(&mut list).ok()?;
        } else {
            list.truncate(n);
        }
        Some(list)
    };
    for _ in 0..1000 {
        let list = once()?;
        if !list.is_empty() || !alive(pid) || kernel_thread(pid) {
            return Some(list);
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    once()
}

/// Whether PID is a kernel thread (PF_KTHREAD in its flags).
fn kernel_thread(pid: i32) -> bool {
    stat_flags(pid).is_some_and(|flags| flags & 0x0020_0000 != 0)
}

/// Whether PID has begun to exit (PF_EXITING: its memory may be gone, its /proc files read
/// nothing, though it is not yet a zombie) or is gone.
pub fn exiting(pid: i32) -> bool {
    stat_flags(pid).is_none_or(|flags| flags & 0x4 != 0)
}

/// The flags field of /proc/PID/stat; None once the process is reaped.
fn stat_flags(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()
}

/// The result of one baton invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What a test service's config says, beyond the paths the harness fills in.
#[derive(Clone, Default)]
pub struct Spec {
    name: String,
    command: String,
    top: String,
    env: String,
    log: String,
    tables: String,
}

impl Spec {
    /// A service `name` running `command` (TOML array text).
    pub fn new(name: &str, command: &str) -> Spec {
        Spec {
            name: name.into(),
            command: command.into(),
            ..Spec::default()
        }
    }
    /// Top-level keys (user, workdir, umask, env_file…).
    pub fn top(mut self, s: &str) -> Self {
        self.top = s.into();
        self
    }
    /// Lines for the [env] table.
    pub fn env(mut self, s: &str) -> Self {
        self.env = s.into();
        self
    }
    /// Lines for the [log] table besides `dir`.
    pub fn log(mut self, s: &str) -> Self {
        self.log = s.into();
        self
    }
    /// Further tables ([ready], [stop], [restart], [port]…).
    pub fn tables(mut self, s: &str) -> Self {
        self.tables = s.into();
        self
    }

    /// The config text; `{dir}` anywhere stands for the test's directory.
    fn render(&self, dir: &Path, marker: &str) -> String {
        let d = dir.display();
        let (k, v) = marker.split_once('=').expect("marker");
        let text = format!(
            "command = {}\npidfile = \"{d}/run/{{name}}.pid\"\nsocket = \"{d}/run/{{name}}.sock\"\nstate_dir = \"{d}/state\"\n{}\n[env]\n{k} = \"{v}\"\n{}\n[log]\ndir = \"{d}/log\"\n{}\n{}\n",
            self.command, self.top, self.env, self.log, self.tables
        );
        text.replace("{dir}", &d.to_string())
    }

    /// Creates the directory and config file.
    pub fn create(self) -> Svc {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("baton-it-{}-{n}-{}", std::process::id(), self.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let marker = format!("BATON_TEST_MARKER={}", dir.display());
        let svc = Svc {
            config: dir.join(format!("{}.toml", self.name)),
            dir,
            name: self.name.clone(),
            marker,
        };
        svc.rewrite(&self);
        svc
    }
}

/// A service under test, with all its paths inside one temporary directory.
pub struct Svc {
    pub dir: PathBuf,
    pub name: String,
    pub config: PathBuf,
    /// Put into the service's environment so the test can find every process it started.
    pub marker: String,
}

impl Svc {
    /// A service `name` running `command` (TOML array text) with extra tables `rest`.
    pub fn new(name: &str, command: &str, rest: &str) -> Svc {
        Spec::new(name, command).tables(rest).create()
    }

    /// Rewrites the config from a spec (same directory, same marker).
    pub fn rewrite(&self, spec: &Spec) {
        std::fs::write(&self.config, spec.render(&self.dir, &self.marker)).expect("write config");
    }

    /// Runs `baton --config FILE ARGS...`.
    pub fn baton(&self, args: &[&str]) -> Run {
        self.baton_with(&baton_bin(), args)
    }

    /// Runs `BIN --config FILE ARGS...`: a copy of baton, or an older build of it.
    pub fn baton_with(&self, bin: &Path, args: &[&str]) -> Run {
        // A hang must fail the test, not stall the suite: 124 is timeout's exit code.
        Command::new("timeout")
            .arg("120")
            .arg(bin)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run baton")
            .into()
    }

    /// Starts `baton --config FILE ARGS...` in the background, for a command the test acts
    /// on while it runs; its output waits in pipes for `wait_with_output` (a command's few
    /// lines fit in a pipe, so a plain `wait` does not block it).
    pub fn spawn_baton(&self, args: &[&str]) -> std::process::Child {
        Command::new(baton_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run baton")
    }

    /// `baton --config FILE ARGS...` under `strace -f`: what it said, and the system calls
    /// it made, one a line.
    pub fn traced(&self, args: &[&str]) -> (Run, Vec<String>) {
        let out = self.path(&format!("trace.{}", SEQ.fetch_add(1, Ordering::SeqCst)));
        let run = Command::new("strace")
            .args(["-f", "-s", "512", "-o"])
            .arg(&out)
            .arg(baton_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run strace (scripts/setup-deps installs it)");
        let trace = std::fs::read_to_string(&out).expect("the trace");
        let _ = std::fs::remove_file(&out);
        (run.into(), trace.lines().map(str::to_string).collect())
    }

    /// `start`, asserting success.
    pub fn start(&self) -> Run {
        let r = self.baton(&["start"]);
        assert_eq!(r.code, 0, "start failed: {r:?}");
        r
    }

    /// `stop`, asserting success.
    pub fn stop(&self) -> Run {
        let r = self.baton(&["stop"]);
        assert_eq!(r.code, 0, "stop failed: {r:?}");
        r
    }

    /// `status --json`, parsed, with its exit code.
    pub fn status(&self) -> (i32, serde_json::Value) {
        let r = self.baton(&["status", "--json"]);
        let v = serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("status --json: {e}: {r:?}"));
        (r.code, v)
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("run").join(format!("{}.pid", self.name))
    }

    /// The PID on the PID file's first line.
    pub fn pid_in_file(&self) -> Option<i32> {
        std::fs::read_to_string(self.pidfile())
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join("log").join(file)).unwrap_or_default()
    }

    /// `baton reexec`, which must succeed with the same supervisor (by its PID file) after.
    pub fn reexec_in_place(&self) {
        let sup = self.pid_in_file().expect("supervisor pid");
        let r = self.baton(&["reexec"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(
            self.pid_in_file(),
            Some(sup),
            "the same supervisor, re-executed"
        );
    }

    /// Live processes started for this service.
    pub fn processes(&self) -> Vec<i32> {
        processes_with_env(&self.marker)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = Command::new(baton_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("stop")
            .output();
        // A stop refused (a test that broke the config and then failed before mending it)
        // leaves the supervisor too: it runs as `baton --config CONFIG supervise …`.
        let config = self.config.as_os_str().as_encoded_bytes();
        for p in self
            .processes()
            .into_iter()
            .chain(processes_with_arg(config))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A service whose program is `{dir}/bin/serve` (a copy of `sleep`, run for 1000 s) in a
/// directory of its own, both mode 0755: for tests that change them after the start. A
/// binary, not a script: the shell opens a script by its path after the exec, so a test
/// removing it once `start` returned could make the service fail instead.
pub fn own_program(name: &str) -> Svc {
    use std::os::unix::fs::PermissionsExt;
    let svc = Spec::new(name, r#"["{dir}/bin/serve", "1000"]"#).create();
    let bin = svc.path("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let prog = bin.join("serve");
    std::fs::copy("/bin/sleep", &prog).expect("cp /bin/sleep");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    svc
}

/// Whether the tests run as root (privilege-drop tests need it).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// True (after saying why the test is skipped) when the tests do not run as root.
pub fn skip_unless_root(why: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

/// A release `dir/name` whose program is `run` (the script `script`), with an empty file
/// `marker` beside it when given (a switch the script reads, such as HOLD).
pub fn script_release(dir: &Path, name: &str, script: &str, marker: Option<&str>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let rel = dir.join(name);
    std::fs::create_dir_all(&rel).expect("release dir");
    let run = rel.join("run");
    std::fs::write(&run, script).expect("run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if let Some(marker) = marker {
        std::fs::write(rel.join(marker), "").expect("marker");
    }
    rel
}

/// A copy of `examples/EXAMPLE` in `dir` as a release, with its own service.properties
/// when `version` is given.
pub fn example_release(dir: &Path, example: &str, version: Option<&str>) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example);
    let rel = dir.join(format!("build-{}", version.unwrap_or("0")));
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&rel)
        .status()
        .expect("cp");
    assert!(ok.success(), "unable to copy {}", src.display());
    if let Some(v) = version {
        std::fs::write(rel.join("service.properties"), format!("version={v}\n")).expect("props");
    }
    rel
}

/// Whether Java, Clojure and Jetty are installed; in CI their absence is a failure, not a skip.
pub fn jvm_available() -> bool {
    let ok = Path::new("/usr/share/java/clojure.jar").exists()
        && Path::new("/usr/share/java/jetty9-server.jar").exists();
    // In CI the setup installs them; a silent skip there would hide a broken setup.
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "Java/Clojure/Jetty missing: run scripts/setup-deps"
    );
    ok
}

/// One answer to a fresh GET.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The header lines, lower-cased names.
    head: String,
    /// The body, trimmed.
    pub body: String,
}

impl Answer {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim())
        })
    }
}

/// A fresh GET of `url` (curl, a new connection each time, 5 s at most); None if nothing answered.
pub fn fetch(url: &str) -> Option<Answer> {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "5", url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let (head, body) = text.split_once("\n\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head: head.to_string(),
        body: body.trim().to_string(),
    })
}

/// The body of a fresh GET of `url` that answered 200.
pub fn body(url: &str) -> Option<String> {
    fetch(url).filter(|a| a.status == 200).map(|a| a.body)
}

static USERS: AtomicU32 = AtomicU32::new(0);

/// A throwaway system user named `PREFIX<pid>x<n>` (each helper's tests their own prefix),
/// deleted when dropped: the other local user of an attack.
pub struct User {
    pub name: String,
    pub uid: u32,
}

impl User {
    pub fn new(prefix: &str) -> User {
        let n = USERS.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}{}x{n}", std::process::id());
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd");
        assert!(out.status.success(), "useradd {name}: {out:?}");
        let uid = nix::unistd::User::from_name(&name)
            .expect("getpwnam")
            .expect("the new user")
            .uid
            .as_raw();
        User { name, uid }
    }

    /// Runs `sh -c script` as this user (the attacker's own hands); it must succeed.
    pub fn sh(&self, script: &str) {
        let out = self.try_sh(script);
        assert!(out.status.success(), "as {}: {script}: {out:?}", self.name);
    }

    /// Runs `sh -c script` as this user, whatever comes of it.
    pub fn try_sh(&self, script: &str) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.uid))
            .args(["--clear-groups", "--", "sh", "-c", script])
            .output()
            .expect("setpriv")
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A service running fixtures/flood: `n` numbered 100-byte lines, then "flood done".
pub fn flood_spec(name: &str, n: u32) -> Spec {
    Spec::new(name, &format!("[\"{}\", \"{n}\"]", fixture("flood")))
}

impl Svc {
    /// Starts a [`flood_spec`] service and waits until its last line is in stdout.log and
    /// the supervisor sleeps again: the last splice can land past the size limit, and the
    /// rotation that then moves the unfinished line's bytes out of the file comes after.
    pub fn start_flood(&self) {
        self.start();
        wait_until(Duration::from_secs(60), "flood done", || {
            self.log("stdout.log").contains("flood done")
        });
        if let Some(pid) = self.pid_in_file() {
            wait_asleep(pid);
        }
    }
}
/// `stdout.log` or `stderr.log` and its rotated copies, oldest first.
pub fn rotated(svc: &Svc, base: &str) -> Vec<PathBuf> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(svc.path("log"))
        .expect("ls")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let idx = if name == base {
                0
            } else {
                name.strip_prefix(&format!("{base}."))?.parse().ok()?
            };
            Some((idx, e.path()))
        })
        .collect();
    files.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    files.into_iter().map(|(_, p)| p).collect()
}

/// Checks the `flood` fixture's lines across `files`: each file ends in a whole line and
/// holds at most `max` bytes, numbers run 1..=n with none lost, repeated or garbled.
pub fn assert_flood_whole(files: &[PathBuf], n: u32, max: usize) {
    let mut expect = 1;
    for path in files {
        let body = std::fs::read_to_string(path).expect("read");
        assert!(
            body.len() <= max,
            "{} is {} bytes",
            path.display(),
            body.len()
        );
        assert!(
            body.is_empty() || body.ends_with('\n'),
            "{} ends mid-line",
            path.display()
        );
        for line in body.lines() {
            // With timestamps each line is stored as `TIME [PID] TEXT`.
            let line = line.split_once("] ").map_or(line, |(_, text)| text);
            if line == "flood done" {
                continue;
            }
            assert_eq!(line.len(), 99, "torn line {line:?} in {}", path.display());
            let num: u32 = line[5..11]
                .parse()
                .unwrap_or_else(|_| panic!("garbled line {line:?} in {}", path.display()));
            assert_eq!(num, expect, "line lost or reordered in {}", path.display());
            expect += 1;
        }
    }
    assert_eq!(expect - 1, n, "every line arrived");
}
