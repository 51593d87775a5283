//! TOML service file -> validated [`Spec`], gathering every problem before reporting.

pub mod card;
pub mod change;
pub mod host;
mod reader;
pub(crate) mod units;
pub(crate) use units::{human, parse_duration};

use reader::Reader;
pub(crate) use reader::{join, Walker};

use crate::error::{Error, Result};
use crate::exit::Action;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml_edit::ImDocument;

/// Where configs live when no `--config` is given.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/baton";

/// A fully validated service description.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Service name (the config file's stem or the NAME argument).
    pub name: String,
    /// The config file this came from.
    pub file: PathBuf,
    /// argv with `{name}` expanded; `{port}` is expanded per instance.
    pub command: Vec<String>,
    /// The account to run as, resolved; `None` keeps baton's own.
    pub account: Option<Account>,
    /// Working directory of the service.
    pub workdir: Option<PathBuf>,
    /// Extra environment (env_file first, then `env`), `{port}` expanded per instance.
    pub env: Vec<(String, String)>,
    /// Names of the caller's variables passed on to the service (everything else is dropped).
    pub inherit_env: Vec<String>,
    /// umask for the service.
    pub umask: Option<u32>,
    /// How the port is chosen.
    pub port: PortSpec,
    /// Readiness: all probes must pass within `timeout`.
    pub ready: ReadySpec,
    /// The stop ladder.
    pub stop: StopSpec,
    /// Signal delivered by `reload`.
    pub reload_signal: Signal,
    /// Restart policy and crash-loop limits.
    pub restart: RestartSpec,
    /// Where the service's output goes.
    pub log: LogSpec,
    /// PID file path (holds the supervisor's PID once ready).
    pub pidfile: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
    /// State directory (locks, state file, notify socket).
    pub state_dir: PathBuf,
    /// Where releases live, when the service is deployed with `baton deploy`.
    pub release: Option<ReleaseSpec>,
    /// A listening socket baton holds and hands to every instance (the zero-failure deploy mode).
    pub listen: Option<ListenSpec>,
    /// Deploy settings.
    pub deploy: DeploySpec,
    /// The proxy switched during a deploy.
    pub proxy: ProxySpec,
    /// Where the serving instance's port and PID are published.
    pub registry: RegistrySpec,
    /// How the service's processes are tracked.
    pub process: ProcessSpec,
    /// The file as [`load`] read it, for the stop card ([`card`]).
    pub origin: Origin,
}

/// A config file's identity and last change: equal fingerprints mean the same bytes, as any
/// write, truncation, chmod or chown moves the change time (which only root can set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: i64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Change time, seconds and nanoseconds.
    pub ctime: (i64, i64),
}

impl Fingerprint {
    /// The fingerprint of what `st` describes.
    pub fn of(st: &nix::sys::stat::FileStat) -> Fingerprint {
        Fingerprint {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// What [`load`] knew of the file a spec came from: what a stop card records.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The file's fingerprint when read; None when a change could hide behind it (below).
    pub fingerprint: Option<Fingerprint>,
    /// The checks of the host the reading made (program, working directory), each with
    /// its line, for a stop that skips the reading to make again after its request.
    checks: reader::Deferred,
}

/// `[process]`: how baton knows which processes are the service's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Track the service in a cgroup v2 of its own when the host has one (default true);
    /// false: as a child subreaper, by process identity.
    pub cgroup: bool,
}

/// Capistrano's layout: `root/releases/ID` and a `root/current` symlink.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    /// deploy_to.
    pub root: PathBuf,
    /// Releases kept (never deleting current or previous).
    pub keep: u32,
}

/// A listening socket held by the supervisor for its whole life.
#[derive(Debug, Clone)]
pub struct ListenSpec {
    /// HOST:PORT to bind.
    pub address: std::net::SocketAddr,
    /// 3 (socket activation: LISTEN_FDS=1) or 0 (a JVM's System.inheritedChannel()).
    pub fd: i32,
}

/// Deploy settings.
#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// How long the old instance may take to lose its established connections.
    pub drain_timeout: Duration,
}

/// The proxy in front of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySpec {
    /// Nothing to switch (clients use the registry, or the listening socket is shared).
    None,
    /// nginx: upstream file from a template, `nginx -t` on a candidate config, reload, confirm.
    Nginx(Switch),
    /// Any proxy: template, check and reload commands, confirm.
    Command(Switch),
}

/// How a proxy is switched to a new instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The live file the proxy reads (nginx: an upstream body included by `config`).
    pub upstream: PathBuf,
    /// What the file holds; `{port}`, `{pid}`, `{release}`, `{name}` expanded.
    pub template: String,
    /// nginx: the main config, copied with the candidate in place of `upstream` for `nginx -t`.
    pub config: PathBuf,
    /// Validates a candidate; `{candidate}` is its path. nginx: `nginx -t -c {config}`.
    pub check: Vec<String>,
    /// Makes the proxy read the installed file.
    pub reload: Vec<String>,
    /// URL requested through the proxy until the new instance answers.
    pub confirm: Option<String>,
    /// A response header that must carry the instance's PID (e.g. `X-Pid`); without it, a
    /// request counts as answered by an instance when a new connection to its port is seen.
    pub confirm_header: Option<String>,
    /// How long the confirmation may take before the switch is undone.
    pub confirm_timeout: Duration,
}

/// Where port and PID of the serving instance are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    /// Local registry file (JSON, written atomically); always kept.
    pub file: PathBuf,
    /// etcd v3 endpoints (JSON gateway), if any.
    pub etcd: Vec<String>,
    /// Key prefix: PREFIX/port/current, PREFIX/port/previous, PREFIX/pid/current, PREFIX/pid/previous.
    pub prefix: String,
    /// Lease TTL: the keys vanish this long after the supervisor stops renewing them.
    pub ttl: Option<Duration>,
    /// This host's name in PREFIX/endpoint (`host:port`); the system hostname by default.
    pub advertise: String,
}

/// What one instance's placeholders stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// `{port}`.
    pub port: Option<u16>,
    /// `{release}`: the release directory the instance runs from.
    pub release: Option<PathBuf>,
}

/// The identity a service runs under, looked up once in the password database.
#[derive(Debug, Clone)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: Uid,
    /// Primary group id (or the configured `group`).
    pub gid: Gid,
    /// Supplementary groups as initgroups(3) would set them.
    pub groups: Vec<Gid>,
    /// Home directory, exported as HOME.
    pub home: PathBuf,
    /// Login shell, exported as SHELL.
    pub shell: PathBuf,
}

impl Account {
    /// What the OS layer needs to drop to this account.
    pub fn credentials(&self) -> crate::sys::Credentials {
        crate::sys::Credentials {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }
}

/// How the service's port is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// No port: `{port}` may not be used.
    None,
    /// Always this port.
    Fixed(u16),
    /// A free port from this range, picked at each spawn.
    Auto { from: u16, to: u16 },
    /// The service binds port 0; baton finds the port it listens on in /proc.
    Discover,
}

/// One readiness probe, with `{port}` still unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    /// TCP connect to `host:port`.
    Tcp(String),
    /// HTTP GET expecting 2xx.
    Http(String),
    /// A command that exits 0 when the service is ready.
    Exec(Vec<String>),
    /// A regex matched against the service's output lines.
    Log(String),
    /// `READY=1` on `NOTIFY_SOCKET`.
    Notify,
}

/// Readiness settings.
#[derive(Debug, Clone)]
pub struct ReadySpec {
    /// All must pass; empty means ready as soon as the command is exec'd.
    pub probes: Vec<ProbeSpec>,
    /// How long `start` waits before giving up.
    pub timeout: Duration,
    /// Probe host names, resolved when the config was read: the poll loop must never
    /// block in getaddrinfo.
    pub hosts: Vec<(String, std::net::IpAddr)>,
}

/// The stop ladder: signal, optional thread dump, then SIGKILL.
#[derive(Debug, Clone)]
pub struct StopSpec {
    /// Sent to the whole group first.
    pub signal: Signal,
    /// Grace period before SIGKILL.
    pub timeout: Duration,
    /// Sent part-way through the grace period (SIGQUIT makes a JVM dump its threads).
    pub dump_signal: Option<Signal>,
    /// When, after the stop signal, the dump signal goes out.
    pub dump_after: Duration,
}

/// When to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Never restart.
    Never,
    /// Restart after an unclean exit.
    OnFailure,
    /// Restart after any exit.
    Always,
}

/// Restart settings.
#[derive(Debug, Clone)]
pub struct RestartSpec {
    /// When to restart.
    pub policy: Policy,
    /// Shortest backoff.
    pub backoff_min: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Crash-loop limit: at most this many restarts within `window`.
    pub max: Option<u32>,
    /// The crash-loop window.
    pub window: Duration,
    /// Ready this long and the backoff starts over.
    pub stable: Duration,
}

/// Log capture settings.
#[derive(Debug, Clone)]
pub struct LogSpec {
    /// Directory for `stdout.log`, `stderr.log` and `baton.log`.
    pub dir: PathBuf,
    /// Rotate a file before it grows past this many bytes.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: u32,
    /// Prefix each line of service output with the time baton read it and the writer's PID.
    pub timestamps: bool,
}

/// One thing wrong with a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `ready.timeout`.
    pub key: String,
    /// What is wrong and what would be right.
    pub message: String,
    /// The LSB code this problem implies (6 mostly, 5 for a missing program).
    pub code: Action,
    /// About the machine as it is now (a program or directory gone), not the file's text:
    /// it stops a start, but not a command addressed to a supervisor already running.
    pub host: bool,
}

/// Everything wrong with one file.
#[derive(Debug)]
pub struct Problems {
    /// The file.
    pub file: PathBuf,
    /// Each problem found.
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.list.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if i == MAX_PROBLEMS_SHOWN {
                return write!(f, "and {} more", self.list.len() - i);
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if p.key.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl Problems {
    /// The error for a config that must not be used.
    pub fn into_error(self) -> Error {
        let code = self
            .list
            .iter()
            .map(|p| p.code)
            .min()
            .unwrap_or(Action::NotConfigured);
        let n = self.list.len();
        Error::unable(
            format!("use config {}", self.file.display()),
            format!("{n} problem{}:\n{self}", if n == 1 { "" } else { "s" }),
        )
        .code(code)
        .hint("fix the lines above; `baton check` lists every problem")
    }
}

/// Resolves which file configures `name` (or which name a file configures).
pub fn locate(
    config: Option<&Path>,
    config_dir: Option<&Path>,
    name: Option<&str>,
) -> Result<(PathBuf, String)> {
    match (config, name) {
        (Some(file), Some(name)) => Ok((file.to_path_buf(), name.to_string())),
        (Some(file), None) => {
            let stem = file.file_stem().and_then(|s| s.to_str()).ok_or_else(|| {
                Error::unable(
                    format!("name the service of {}", file.display()),
                    "the file has no usable stem",
                )
                .code(Action::BadArgs)
                .hint("pass NAME explicitly")
            })?;
            Ok((file.to_path_buf(), stem.to_string()))
        }
        (None, Some(name)) => {
            let dir = config_dir.unwrap_or(Path::new(DEFAULT_CONFIG_DIR));
            Ok((dir.join(format!("{name}.toml")), name.to_string()))
        }
        (None, None) => Err(
            Error::unable("choose a service", "no NAME and no --config given")
                .code(Action::BadArgs)
                .hint("run `baton COMMAND NAME` or `baton --config FILE COMMAND`"),
        ),
    }
}

/// A service config larger than this is a mistake, not a config (and would be slow to report on).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// At most this many problems are listed; the rest are counted ("and 29990 more").
pub const MAX_PROBLEMS_SHOWN: usize = 100;

/// Reads and validates a service file; every problem is reported at once.
pub fn load(file: &Path, name: &str) -> Result<Spec> {
    let (text, mut problems, fingerprint) = read_checked(file)?;
    let (spec, mut more, checks) = parse_all_with(&text, file, name, Reader::new(&text));
    match spec {
        Some(spec) if problems.is_empty() && more.is_empty() => Ok(Spec {
            origin: Origin {
                fingerprint,
                checks,
            },
            ..spec
        }),
        _ => {
            problems.append(&mut more);
            Err(Problems {
                file: file.to_path_buf(),
                list: problems,
            }
            .into_error())
        }
    }
}

/// Reads a config file through one descriptor and reports, when baton is root, what about
/// it or its directories someone other than root could change (sshd's StrictModes): a
/// root-run supervisor executing a command from such a file is a privilege escalation.
/// The checks are made on the same descriptor that is read, so nothing can be swapped in.
///
/// Also the file's fingerprint as read, unless it changed within the current tick of the
/// coarse clock file times are taken from: a change made in that tick after the read could
/// leave the same times (and size), so such a fingerprint would not prove the same bytes.
pub(crate) fn read_checked(file: &Path) -> Result<(String, Vec<Problem>, Option<Fingerprint>)> {
    let io_error = |e: std::io::Error| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Action::NotConfigured,
            std::io::ErrorKind::PermissionDenied => Action::NoPrivilege,
            _ => Action::Generic,
        };
        Error::io(format!("read config {}", file.display()), &e)
            .code(code)
            .hint(format!(
                "create {} (see examples/) or pass --config FILE",
                file.display()
            ))
    };
    let floor = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE).ok();
    let mut checked = crate::files::open_checked(file).map_err(io_error)?;
    let fingerprint = Fingerprint::of(&checked.stat);
    let fingerprint = floor
        .filter(|t| fingerprint.ctime < (t.tv_sec(), t.tv_nsec()))
        .map(|_| fingerprint);
    let bytes = checked.read_limited(MAX_CONFIG_BYTES).map_err(|e| {
        Error::unable(format!("read config {}", file.display()), e).code(Action::NotConfigured)
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::unable(
            format!("read config {}", file.display()),
            "it is not UTF-8 text",
        )
        .code(Action::NotConfigured)
    })?;
    let mut problems = Vec::new();
    if Uid::effective().is_root() {
        for why in checked.untrusted {
            problems.push(Problem {
                line: None,
                key: String::new(),
                message: format!(
                    "{why}; baton runs its command as root and refuses a config others could change"
                ),
                code: Action::NoPrivilege,
                host: false,
            });
        }
    }
    Ok((text, problems, fingerprint))
}

/// Parses text into a spec, or returns every problem found.
#[cfg(test)]
pub fn parse(text: &str, file: &Path, name: &str) -> std::result::Result<Spec, Vec<Problem>> {
    match parse_all(text, file, name) {
        (Some(spec), problems) if problems.is_empty() => Ok(spec),
        (_, problems) => Err(problems),
    }
}

/// Reads a service file for a command addressed to its running supervisor (`stop`,
/// `status`, `signal`, `logs`, `reopen-logs`): the file's text must be right, but a
/// program or working directory that has gone since the start must not strand a running
/// service with no way to stop it. Those problems come back as warnings.
pub fn load_running(file: &Path, name: &str) -> Result<(Spec, Vec<String>)> {
    let (spec, later) = load_running_later(file, name)?;
    Ok((spec, later.warnings()))
}

/// [`load_running`] that leaves the checks of the program and the working directory
/// (only warnings here) for [`Later::warnings`], so that `stop` sends its request before
/// them. The file itself is checked now: its trust (as root) and its every problem of
/// text, each of which still refuses the command; then the checks are made at once, so
/// that the error lists every problem as [`load_running`]'s does.
pub fn load_running_later(file: &Path, name: &str) -> Result<(Spec, Later)> {
    let (text, read, _) = read_checked(file)?;
    let (spec, parsed, checks) = parse_all_with(&text, file, name, Reader::deferring(&text));
    let later = Later {
        file: file.to_path_buf(),
        read,
        parsed,
        checks,
    };
    match spec {
        Some(spec) if later.read.iter().chain(&later.parsed).all(|p| p.host) => Ok((spec, later)),
        _ => Err(Problems {
            file: file.to_path_buf(),
            list: later.problems(),
        }
        .into_error()),
    }
}

/// What [`load_running_later`] found about the host and what it left to check.
pub struct Later {
    file: PathBuf,
    /// Found reading the file (its trust).
    read: Vec<Problem>,
    /// Found walking its text, sorted by line.
    parsed: Vec<Problem>,
    checks: reader::Deferred,
}

impl Later {
    /// Makes the checks left for later; each problem of the host as a warning line.
    pub fn warnings(self) -> Vec<String> {
        let file = self.file.clone();
        self.problems()
            .into_iter()
            .map(|p| match p.line {
                Some(line) => format!("{}:{line}: {}", file.display(), p.message),
                None => format!("{}: {}", file.display(), p.message),
            })
            .collect()
    }

    /// Every problem, the deferred checks' among the walk's by line, as a walk that made
    /// them in place would have listed them.
    fn problems(self) -> Vec<Problem> {
        let mut walked = self.parsed;
        for (check, line) in self.checks {
            for (key, message, code) in check.problems() {
                walked.push(Problem {
                    line,
                    key: key.to_string(),
                    message,
                    code,
                    host: true,
                });
            }
        }
        walked.sort_by_key(|p| p.line);
        let mut all = self.read;
        all.append(&mut walked);
        all
    }
}

/// The spec (when the text makes one) and every problem found, sorted by line.
#[cfg(test)]
fn parse_all(text: &str, file: &Path, name: &str) -> (Option<Spec>, Vec<Problem>) {
    let (spec, problems, _) = parse_all_with(text, file, name, Reader::new(text));
    (spec, problems)
}

/// [`parse_all`] by `r`, also returning the checks of the host it made or left for later.
fn parse_all_with(
    text: &str,
    file: &Path,
    name: &str,
    mut r: Reader<'_>,
) -> (Option<Spec>, Vec<Problem>, reader::Deferred) {
    let doc = match ImDocument::parse(text.to_string()) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            let problem = Problem {
                line,
                key: String::new(),
                message: format!("TOML syntax error: {}", e.message().trim()),
                code: Action::NotConfigured,
                host: false,
            };
            return (None, vec![problem], Vec::new());
        }
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let spec = r.spec(doc.as_table(), &base, name).map(|s| Spec {
        file: file.to_path_buf(),
        ..s
    });
    r.problems.sort_by_key(|p| p.line);
    let checks = r.take_checks();
    (spec, std::mem::take(&mut r.problems), checks)
}

/// The 1-based line of byte `offset` in `text` (one lookup; a [`Walker`] keeps its index for many).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    Walker::new(text).line_of(offset)
}

/// Walks the document, turning values into types and collecting problems.
impl Spec {
    /// Expands `{port}` and `{release}` in a string for one instance.
    pub fn expand(&self, s: &str, vars: &Vars) -> String {
        let mut out = s.to_string();
        if let Some(p) = vars.port {
            out = out.replace("{port}", &p.to_string());
        }
        if let Some(r) = &vars.release {
            out = out.replace("{release}", &r.display().to_string());
        }
        out
    }

    /// The directory that relative command paths are resolved against (the config's).
    pub fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Spec {
        match parse(text, Path::new("/tmp/t/web.toml"), "web") {
            Ok(s) => s,
            Err(p) => panic!("unexpected problems: {p:?}"),
        }
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Path::new("/tmp/t/web.toml"), "web") {
            Ok(_) => panic!("expected problems"),
            Err(p) => p,
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = parse_ok("command = [\"/bin/sleep\", \"100\"]\npidfile = \"run/{name}.pid\"\n");
        assert_eq!(s.command, vec!["/bin/sleep", "100"]);
        assert_eq!(s.pidfile, PathBuf::from("/tmp/t/run/web.pid"));
        assert_eq!(s.stop.signal, Signal::SIGTERM);
        assert_eq!(s.stop.dump_after, Duration::from_secs(15));
        assert_eq!(s.restart.policy, Policy::OnFailure);
        assert!(s.ready.probes.is_empty());
        assert_eq!(s.log.dir, PathBuf::from("/var/log/web"));
    }

    #[test]
    fn every_problem_is_reported_with_line_and_key() {
        let text = "command = [\"/bin/sleep\"]\nbogus = 1\n[ready]\ntimeout = \"90\"\ntcp = \"127.0.0.1:{port}\"\n[stop]\nsignal = \"TERMINATE\"\n[restart]\npolicy = \"sometimes\"\n";
        let p = problems(text);
        let keys: Vec<(&str, Option<usize>)> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("bogus", Some(2)),
                ("ready.timeout", Some(4)),
                ("ready.tcp", Some(5)),
                ("stop.signal", Some(7)),
                ("restart.policy", Some(9)),
            ]
        );
    }

    #[test]
    fn missing_program_is_not_installed() {
        let p = problems("command = [\"/nonexistent/java\"]\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].code, Action::NotInstalled);
        assert_eq!(p[0].line, Some(1));
    }

    #[test]
    fn a_running_supervisor_is_reachable_with_its_program_gone_but_not_with_bad_text() {
        let dir = std::env::temp_dir().join(format!("baton-running-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gone.toml");
        std::fs::write(
            &file,
            "command = [\"/nonexistent/java\"]\nworkdir = \"/nonexistent\"\n",
        )
        .expect("write");
        let (spec, warnings) = load_running(&file, "gone").expect("host problems only");
        assert_eq!(spec.command, ["/nonexistent/java"]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(load(&file, "gone").is_err(), "a start still refuses");
        // An env_file gone or broken since the start: the next spawn refuses it, a stop does not.
        std::fs::write(
            &file,
            format!(
                "command = [\"/bin/sleep\"]\nenv_file = \"{}\"\n",
                dir.join("gone.env").display()
            ),
        )
        .expect("write");
        let (_, warnings) = load_running(&file, "gone").expect("a missing env_file is the host's");
        assert!(
            warnings.iter().any(|w| w.contains("cannot read")),
            "{warnings:?}"
        );
        assert!(load(&file, "gone").is_err(), "a start still refuses");
        std::fs::write(dir.join("gone.env"), "A=1\nnot an assignment\n").expect("write");
        assert!(
            load_running(&file, "gone").is_ok(),
            "a broken env_file is the host's too"
        );
        assert!(load(&file, "gone").is_err(), "a start still refuses");
        std::fs::write(&file, "command = [\"/nonexistent/java\"]\nbogus = 1\n").expect("write");
        assert!(
            load_running(&file, "gone").is_err(),
            "the file's own errors still count"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let p = problems("command = [\"/bin/sleep\"]\n[ready\n");
        assert_eq!(p[0].line, Some(2));
        assert!(p[0].message.contains("syntax"), "{}", p[0].message);
    }

    #[test]
    fn unknown_user_and_placeholder() {
        let p =
            problems("command = [\"/bin/sleep\", \"{release}\"]\nuser = \"no-such-user-baton\"\n");
        assert!(p
            .iter()
            .any(|p| p.key == "command" && p.message.contains("{release}")));
        assert!(p.iter().any(|p| p.key == "user" && p.line == Some(2)));
    }

    #[test]
    fn ports() {
        let s = parse_ok(
            "command = [\"/bin/sleep\", \"{port}\"]\n[port]\nmode = \"fixed\"\nport = 8080\n",
        );
        assert_eq!(s.port, PortSpec::Fixed(8080));
        let s = parse_ok(
            "command = [\"/bin/sleep\"]\n[port]\nmode = \"auto\"\nrange = [30000, 30010]\n",
        );
        assert_eq!(
            s.port,
            PortSpec::Auto {
                from: 30000,
                to: 30010
            }
        );
    }
}
