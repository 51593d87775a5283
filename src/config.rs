//! TOML service file -> validated [`Spec`], gathering every problem before reporting.
//!
//! The document is walked by hand over `toml_edit`'s spanned tree rather than
//! through serde, because serde stops at the first error and the operator wants
//! the whole list, each with file, line and key.

use crate::error::{Error, Result};
use crate::exit::Action;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml_edit::{ImDocument, Item, TableLike};

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

/// How the service's port is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// No port: `{port}` may not be used.
    None,
    /// Always this port.
    Fixed(u16),
    /// A free port from this range, picked at each spawn.
    Auto { from: u16, to: u16 },
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

/// Reads and validates a service file; every problem is reported at once.
pub fn load(file: &Path, name: &str) -> Result<Spec> {
    let text = std::fs::read_to_string(file).map_err(|e| {
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
    })?;
    let mut problems = Vec::new();
    check_file_safety(file, &mut problems);
    match parse(&text, file, name) {
        Ok(spec) if problems.is_empty() => Ok(spec),
        Ok(_) => Err(Problems {
            file: file.to_path_buf(),
            list: problems,
        }
        .into_error()),
        Err(mut more) => {
            problems.append(&mut more);
            Err(Problems {
                file: file.to_path_buf(),
                list: problems,
            }
            .into_error())
        }
    }
}

/// A root-run supervisor executing a command from a file others can write is a privilege escalation.
fn check_file_safety(file: &Path, problems: &mut Vec<Problem>) {
    if !Uid::effective().is_root() {
        return;
    }
    if let Ok(meta) = std::fs::metadata(file) {
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 || meta.uid() != 0 {
            problems.push(Problem {
                line: None,
                key: String::new(),
                message: format!(
                    "is writable by others (owner uid {}, mode {:o}); baton runs its command as root \
                     and refuses it: chown root and chmod go-w the file",
                    meta.uid(),
                    mode & 0o7777
                ),
                code: Action::NoPrivilege,
            });
        }
    }
}

/// Parses text into a spec, or returns every problem found.
pub fn parse(text: &str, file: &Path, name: &str) -> std::result::Result<Spec, Vec<Problem>> {
    let doc = match ImDocument::parse(text.to_string()) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            return Err(vec![Problem {
                line,
                key: String::new(),
                message: format!("TOML syntax error: {}", e.message().trim()),
                code: Action::NotConfigured,
            }]);
        }
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut r = Reader {
        text,
        problems: Vec::new(),
    };
    let spec = r.spec(doc.as_table(), &base, name);
    if r.problems.is_empty() {
        spec.map(|s| Spec {
            file: file.to_path_buf(),
            ..s
        })
        .ok_or_else(Vec::new)
    } else {
        r.problems.sort_by_key(|p| p.line);
        Err(r.problems)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Walks the document, turning values into types and collecting problems.
struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

const TOP_KEYS: &[&str] = &[
    "command",
    "user",
    "group",
    "workdir",
    "env",
    "env_file",
    "umask",
    "pidfile",
    "socket",
    "state_dir",
    "ready",
    "stop",
    "reload",
    "restart",
    "port",
    "log",
];

impl Reader<'_> {
    fn problem(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        self.problem_code(span, key, message, Action::NotConfigured);
    }

    fn problem_code(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
        code: Action,
    ) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.problems.push(Problem {
            line,
            key: key.to_string(),
            message: message.into(),
            code,
        });
    }

    /// Reports keys outside `allowed`; typos must not be silently ignored.
    fn known_keys(&mut self, t: &dyn TableLike, prefix: &str, allowed: &[&str]) {
        for (k, _) in t.iter() {
            if !allowed.contains(&k) {
                let span = t.key(k).and_then(|key| key.span());
                let path = join(prefix, k);
                self.problem(
                    span,
                    &path,
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn section<'d>(
        &mut self,
        t: &'d dyn TableLike,
        key: &str,
        allowed: &[&str],
    ) -> Option<&'d dyn TableLike> {
        let item = t.get(key)?;
        match item.as_table_like() {
            Some(sub) => {
                self.known_keys(sub, key, allowed);
                Some(sub)
            }
            None => {
                self.problem(
                    item.span(),
                    key,
                    format!("must be a table, not {}", item.type_name()),
                );
                None
            }
        }
    }

    fn string(
        &mut self,
        t: &dyn TableLike,
        prefix: &str,
        key: &str,
    ) -> Option<(String, Option<Range<usize>>)> {
        let item = t.get(key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), item.span())),
            None => {
                self.problem(
                    item.span(),
                    &join(prefix, key),
                    format!("must be a string, not {}", item.type_name()),
                );
                None
            }
        }
    }

    fn strings(&mut self, item: &Item, path: &str) -> Option<Vec<String>> {
        let Some(arr) = item.as_array() else {
            self.problem(
                item.span(),
                path,
                format!("must be an array of strings, not {}", item.type_name()),
            );
            return None;
        };
        let mut out = Vec::new();
        for v in arr.iter() {
            match v.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    self.problem(
                        v.span(),
                        path,
                        format!("must hold only strings, found {}", v.type_name()),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn integer(
        &mut self,
        t: &dyn TableLike,
        prefix: &str,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let item = t.get(key)?;
        match item.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problem(
                    item.span(),
                    &join(prefix, key),
                    format!("{n} is out of range {min}..={max}"),
                );
                None
            }
            None => {
                self.problem(
                    item.span(),
                    &join(prefix, key),
                    format!("must be an integer, not {}", item.type_name()),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &dyn TableLike, prefix: &str, key: &str) -> Option<Duration> {
        let (s, span) = self.string(t, prefix, key)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(span, &join(prefix, key), e);
                None
            }
        }
    }

    fn signal(&mut self, t: &dyn TableLike, prefix: &str, key: &str) -> Option<Signal> {
        let (s, span) = self.string(t, prefix, key)?;
        match parse_signal(&s) {
            Ok(sig) => Some(sig),
            Err(e) => {
                self.problem(span, &join(prefix, key), e);
                None
            }
        }
    }

    fn path(
        &mut self,
        t: &dyn TableLike,
        key: &str,
        default: &str,
        base: &Path,
        name: &str,
    ) -> PathBuf {
        let raw = self
            .string(t, "", key)
            .map(|(s, _)| s)
            .unwrap_or_else(|| default.to_string());
        absolutize(base, &raw.replace("{name}", name))
    }

    fn spec(&mut self, top: &dyn TableLike, base: &Path, name: &str) -> Option<Spec> {
        self.known_keys(top, "", TOP_KEYS);

        let port = self.port(top);
        let has_port = port != PortSpec::None;

        let command = match top.get("command") {
            None => {
                self.problem(
                    None,
                    "command",
                    "is missing: give the argv, e.g. command = [\"java\", \"-jar\", \"app.jar\"]",
                );
                None
            }
            Some(item) => match self.strings(item, "command") {
                Some(v) if v.is_empty() => {
                    self.problem(item.span(), "command", "must not be empty");
                    None
                }
                Some(v) => {
                    for arg in &v {
                        self.placeholders(arg, item.span(), "command", has_port);
                    }
                    let v: Vec<String> = v.into_iter().map(|a| a.replace("{name}", name)).collect();
                    self.program(&v[0], base, item.span());
                    Some(v)
                }
                None => None,
            },
        };

        let account = self.account(top);
        let workdir = self.string(top, "", "workdir").map(|(s, span)| {
            let p = absolutize(base, &s.replace("{name}", name));
            if !p.is_dir() {
                self.problem(
                    span,
                    "workdir",
                    format!(
                        "{} is not a directory: create it or fix the path",
                        p.display()
                    ),
                );
            }
            p
        });

        let mut env = Vec::new();
        if let Some((f, span)) = self.string(top, "", "env_file") {
            let path = absolutize(base, &f.replace("{name}", name));
            match std::fs::read_to_string(&path) {
                Ok(body) => match parse_env_file(&body) {
                    Ok(pairs) => env.extend(pairs),
                    Err((line, msg)) => self.problem(
                        span,
                        "env_file",
                        format!("{}:{line}: {msg}", path.display()),
                    ),
                },
                Err(e) => self.problem(
                    span,
                    "env_file",
                    format!("cannot read {}: {e}", path.display()),
                ),
            }
        }
        if let Some(item) = top.get("env") {
            match item.as_table_like() {
                Some(t) => {
                    for (k, v) in t.iter() {
                        match v.as_str() {
                            Some(s) => {
                                self.placeholders(s, v.span(), &join("env", k), has_port);
                                env.push((k.to_string(), s.replace("{name}", name)));
                            }
                            None => self.problem(
                                v.span(),
                                &join("env", k),
                                format!("must be a string, not {}", v.type_name()),
                            ),
                        }
                    }
                }
                None => self.problem(
                    item.span(),
                    "env",
                    "must be a table of strings, e.g. env = { JAVA_OPTS = \"-Xmx512m\" }",
                ),
            }
        }

        let umask = self.umask(top);
        let ready = self.ready(top, has_port);
        let stop = self.stop(top);
        let reload_signal = match self.section(top, "reload", &["signal"]) {
            Some(t) => self.signal(t, "reload", "signal"),
            None => None,
        }
        .unwrap_or(Signal::SIGHUP);
        let restart = self.restart(top);
        let log = self.log(top, base, name);

        let pidfile = self.path(top, "pidfile", "/run/baton/{name}.pid", base, name);
        let socket = self.path(top, "socket", "/run/baton/{name}.sock", base, name);
        let state_dir = self.path(top, "state_dir", "/var/lib/baton/{name}", base, name);
        // sun_path holds 108 bytes; a longer path fails only at bind time, far from the config.
        if socket.as_os_str().len() >= 100 {
            self.problem(
                None,
                "socket",
                format!(
                    "{} is too long for a Unix socket (max ~100 bytes)",
                    socket.display()
                ),
            );
        }

        Some(Spec {
            name: name.to_string(),
            file: PathBuf::new(),
            command: command?,
            account,
            workdir,
            env,
            umask,
            port,
            ready: ready?,
            stop: stop?,
            reload_signal,
            restart: restart?,
            log: log?,
            pidfile,
            socket,
            state_dir,
        })
    }

    /// Only `{name}` and `{port}` exist; anything else is a typo that would reach the service verbatim.
    fn placeholders(&mut self, s: &str, span: Option<Range<usize>>, key: &str, has_port: bool) {
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let word = &rest[open + 1..open + close];
            match word {
                "name" => {}
                "port" if has_port => {}
                "port" => self.problem(
                    span.clone(),
                    key,
                    "uses {port} but no [port] section says which port",
                ),
                _ if word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !word.is_empty() =>
                {
                    self.problem(
                        span.clone(),
                        key,
                        format!("unknown placeholder {{{word}}} (known: {{name}}, {{port}})"),
                    )
                }
                _ => {}
            }
            rest = &rest[open + close + 1..];
        }
    }

    /// A missing program is LSB "not installed"; catch it now, not at spawn.
    fn program(&mut self, prog: &str, base: &Path, span: Option<Range<usize>>) {
        if prog.contains("{port}") {
            return;
        }
        let found = if prog.contains('/') {
            let p = absolutize(base, prog);
            Some(p).filter(|p| p.exists())
        } else {
            find_in_path(prog)
        };
        match found {
            None => self.problem_code(
                span,
                "command",
                format!(
                    "program {prog:?} not found{}: install it or fix the path",
                    if prog.contains('/') { "" } else { " in PATH" }
                ),
                Action::NotInstalled,
            ),
            Some(p) => {
                let exec = std::fs::metadata(&p)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !matches!(exec, Ok(true)) {
                    self.problem_code(
                        span,
                        "command",
                        format!(
                            "{} is not an executable file: chmod +x it or fix the path",
                            p.display()
                        ),
                        Action::NotInstalled,
                    );
                }
            }
        }
    }

    fn account(&mut self, top: &dyn TableLike) -> Option<Account> {
        let user = self.string(top, "", "user");
        let group = self.string(top, "", "group");
        let (uname, uspan) = match user {
            Some(u) => u,
            None => {
                if let Some((_, span)) = group {
                    self.problem(
                        span,
                        "group",
                        "needs `user` too: baton drops to a user, not only a group",
                    );
                }
                return None;
            }
        };
        let pw = match User::from_name(&uname) {
            Ok(Some(pw)) => pw,
            Ok(None) => {
                self.problem(uspan, "user", format!("no such user {uname:?}: create it (useradd --system {uname}) or fix the name"));
                return None;
            }
            Err(e) => {
                self.problem(uspan, "user", format!("cannot look up {uname:?}: {e}"));
                return None;
            }
        };
        let gid = match group {
            None => pw.gid,
            Some((gname, gspan)) => match Group::from_name(&gname) {
                Ok(Some(g)) => g.gid,
                Ok(None) => {
                    self.problem(
                        gspan,
                        "group",
                        format!("no such group {gname:?}: create it or fix the name"),
                    );
                    return None;
                }
                Err(e) => {
                    self.problem(gspan, "group", format!("cannot look up {gname:?}: {e}"));
                    return None;
                }
            },
        };
        let groups = CString::new(uname.clone())
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, gid).ok())
            .unwrap_or_else(|| vec![gid]);
        Some(Account {
            name: pw.name,
            uid: pw.uid,
            gid,
            groups,
            home: pw.dir,
            shell: pw.shell,
        })
    }

    fn umask(&mut self, top: &dyn TableLike) -> Option<u32> {
        let item = top.get("umask")?;
        let parsed = match (item.as_str(), item.as_integer()) {
            (Some(s), _) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
            // An integer was almost certainly written meaning octal (umask = 027 is invalid TOML anyway).
            (_, Some(n)) => u32::from_str_radix(&n.to_string(), 8).ok(),
            _ => None,
        };
        match parsed {
            Some(m) if m <= 0o777 => Some(m),
            _ => {
                self.problem(item.span(), "umask", "must be an octal string like \"027\"");
                None
            }
        }
    }

    fn port(&mut self, top: &dyn TableLike) -> PortSpec {
        let Some(t) = self.section(top, "port", &["mode", "port", "range"]) else {
            return PortSpec::None;
        };
        let mode = self.string(t, "port", "mode");
        let fixed = self.integer(t, "port", "port", 1, 65535).map(|p| p as u16);
        let range = t.get("range").and_then(|item| {
            let arr = item.as_array().filter(|a| a.len() == 2);
            let pair = arr.and_then(|a| {
                let lo = a.get(0)?.as_integer()?;
                let hi = a.get(1)?.as_integer()?;
                (1 <= lo && lo <= hi && hi <= 65535).then_some((lo as u16, hi as u16))
            });
            if pair.is_none() {
                self.problem(
                    item.span(),
                    "port.range",
                    "must be [LOW, HIGH] with 1 <= LOW <= HIGH <= 65535",
                );
            }
            pair
        });
        match mode.as_ref().map(|(m, s)| (m.as_str(), s.clone())) {
            Some(("fixed", span)) | Some(("", span)) => match fixed {
                Some(p) => PortSpec::Fixed(p),
                None => {
                    self.problem(span, "port.port", "mode \"fixed\" needs port = N");
                    PortSpec::None
                }
            },
            None if fixed.is_some() => PortSpec::Fixed(fixed.unwrap_or_default()),
            Some(("auto", _)) | None => {
                let (from, to) = range.unwrap_or((20000, 29999));
                PortSpec::Auto { from, to }
            }
            Some((other, span)) => {
                self.problem(
                    span,
                    "port.mode",
                    format!("unknown mode {other:?} (expected fixed or auto)"),
                );
                PortSpec::None
            }
        }
    }

    fn ready(&mut self, top: &dyn TableLike, has_port: bool) -> Option<ReadySpec> {
        let mut probes = Vec::new();
        let mut timeout = Duration::from_secs(90);
        let Some(t) = self.section(
            top,
            "ready",
            &["tcp", "http", "exec", "log", "notify", "timeout"],
        ) else {
            return Some(ReadySpec { probes, timeout });
        };
        if let Some((s, span)) = self.string(t, "ready", "tcp") {
            self.placeholders(&s, span.clone(), "ready.tcp", has_port);
            if !s.contains(':') {
                self.problem(
                    span,
                    "ready.tcp",
                    "must be HOST:PORT, e.g. \"127.0.0.1:{port}\"",
                );
            }
            probes.push(ProbeSpec::Tcp(s));
        }
        if let Some((s, span)) = self.string(t, "ready", "http") {
            self.placeholders(&s, span.clone(), "ready.http", has_port);
            if let Err(e) =
                crate::probe::HttpTarget::parse(&s.replace("{port}", "1").replace("{name}", "x"))
            {
                self.problem(span, "ready.http", e);
            }
            probes.push(ProbeSpec::Http(s));
        }
        if let Some(item) = t.get("exec") {
            if let Some(argv) = self.strings(item, "ready.exec") {
                if argv.is_empty() {
                    self.problem(item.span(), "ready.exec", "must not be empty");
                } else {
                    for a in &argv {
                        self.placeholders(a, item.span(), "ready.exec", has_port);
                    }
                    probes.push(ProbeSpec::Exec(argv));
                }
            }
        }
        if let Some((s, span)) = self.string(t, "ready", "log") {
            match regex::Regex::new(&s) {
                Ok(_) => probes.push(ProbeSpec::Log(s)),
                Err(e) => self.problem(span, "ready.log", format!("invalid regex: {e}")),
            }
        }
        if let Some(item) = t.get("notify") {
            match item.as_bool() {
                Some(true) => probes.push(ProbeSpec::Notify),
                Some(false) => {}
                None => self.problem(item.span(), "ready.notify", "must be true or false"),
            }
        }
        if let Some(d) = self.duration(t, "ready", "timeout") {
            timeout = d;
        }
        Some(ReadySpec { probes, timeout })
    }

    fn stop(&mut self, top: &dyn TableLike) -> Option<StopSpec> {
        let mut spec = StopSpec {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(30),
            dump_signal: None,
            dump_after: Duration::ZERO,
        };
        let mut dump_after = None;
        if let Some(t) = self.section(
            top,
            "stop",
            &["signal", "timeout", "dump_signal", "dump_after"],
        ) {
            spec.signal = self.signal(t, "stop", "signal").unwrap_or(spec.signal);
            spec.timeout = self.duration(t, "stop", "timeout").unwrap_or(spec.timeout);
            spec.dump_signal = self.signal(t, "stop", "dump_signal");
            dump_after = self.duration(t, "stop", "dump_after");
            if let (Some(d), span) = (dump_after, t.get("dump_after").and_then(Item::span)) {
                if d >= spec.timeout {
                    self.problem(
                        span,
                        "stop.dump_after",
                        "must be shorter than stop.timeout, or the dump never happens",
                    );
                }
            }
        }
        // Half-way leaves the JVM time to write the dump before SIGKILL.
        spec.dump_after = dump_after.unwrap_or(spec.timeout / 2);
        Some(spec)
    }

    fn restart(&mut self, top: &dyn TableLike) -> Option<RestartSpec> {
        let mut spec = RestartSpec {
            policy: Policy::OnFailure,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max: None,
            window: Duration::from_secs(60),
            stable: Duration::from_secs(10),
        };
        let Some(t) = self.section(
            top,
            "restart",
            &["policy", "backoff", "max", "window", "stable"],
        ) else {
            return Some(spec);
        };
        if let Some((p, span)) = self.string(t, "restart", "policy") {
            match p.as_str() {
                "never" => spec.policy = Policy::Never,
                "on-failure" => spec.policy = Policy::OnFailure,
                "always" => spec.policy = Policy::Always,
                other => self.problem(
                    span,
                    "restart.policy",
                    format!("unknown policy {other:?} (expected never, on-failure or always)"),
                ),
            }
        }
        if let Some(item) = t.get("backoff") {
            match self.strings(item, "restart.backoff").as_deref() {
                Some([lo, hi]) => match (parse_duration(lo), parse_duration(hi)) {
                    (Ok(lo), Ok(hi)) if lo <= hi && !hi.is_zero() => {
                        spec.backoff_min = lo;
                        spec.backoff_max = hi;
                    }
                    (Ok(_), Ok(_)) => self.problem(
                        item.span(),
                        "restart.backoff",
                        "must be [MIN, MAX] with MIN <= MAX and MAX > 0",
                    ),
                    (Err(e), _) | (_, Err(e)) => self.problem(item.span(), "restart.backoff", e),
                },
                Some(_) => self.problem(
                    item.span(),
                    "restart.backoff",
                    "must be [MIN, MAX], e.g. [\"100ms\", \"30s\"]",
                ),
                None => {}
            }
        }
        spec.max = self
            .integer(t, "restart", "max", 1, 1_000_000)
            .map(|n| n as u32);
        spec.window = self.duration(t, "restart", "window").unwrap_or(spec.window);
        spec.stable = self.duration(t, "restart", "stable").unwrap_or(spec.stable);
        Some(spec)
    }

    fn log(&mut self, top: &dyn TableLike, base: &Path, name: &str) -> Option<LogSpec> {
        let mut spec = LogSpec {
            dir: PathBuf::from(format!("/var/log/{name}")),
            max_size: 100 * 1000 * 1000,
            keep: 10,
        };
        let Some(t) = self.section(top, "log", &["dir", "max_size", "keep"]) else {
            return Some(spec);
        };
        if let Some((d, _)) = self.string(t, "log", "dir") {
            spec.dir = absolutize(base, &d.replace("{name}", name));
        }
        if let Some((s, span)) = self.string(t, "log", "max_size") {
            match parse_size(&s) {
                Ok(n) => spec.max_size = n,
                Err(e) => self.problem(span, "log.max_size", e),
            }
        }
        if let Some(n) = self.integer(t, "log", "keep", 0, 1000) {
            spec.keep = n as u32;
        }
        Some(spec)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn absolutize(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `100ms`, `30s`, `5m`, `1h`, `1.5s`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. \"100ms\", \"30s\", \"5m\")"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "" => return Err(format!("{s:?} has no unit: write \"{s}s\" or \"{s}ms\"")),
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (expected ms, s, m or h)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `100MB`, `10KiB`, `1G`, `4096`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. \"100MB\")"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1000,
        "KIB" => 1 << 10,
        "M" | "MB" => 1000 * 1000,
        "MIB" => 1 << 20,
        "G" | "GB" => 1000 * 1000 * 1000,
        "GIB" => 1 << 30,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (expected B, KB, MB, GB or KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> std::result::Result<Signal, String> {
    let t = s.trim().to_ascii_uppercase();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{s:?} is not a signal number"));
    }
    let full = if t.starts_with("SIG") {
        t
    } else {
        format!("SIG{t}")
    };
    Signal::from_str(&full)
        .map_err(|_| format!("{s:?} is not a signal name (e.g. \"TERM\", \"INT\", \"QUIT\")"))
}

/// `KEY=VALUE` lines, `#` comments, optional `export ` and surrounding quotes.
fn parse_env_file(body: &str) -> std::result::Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err((i + 1, format!("expected KEY=VALUE, found {line:?}")));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((i + 1, format!("{k:?} is not a valid variable name")));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

impl Spec {
    /// Expands `{port}` in a string for one instance.
    pub fn expand(&self, s: &str, port: Option<u16>) -> String {
        match port {
            Some(p) => s.replace("{port}", &p.to_string()),
            None => s.to_string(),
        }
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
    fn durations() {
        let table = [
            ("100ms", 100),
            ("30s", 30_000),
            ("1.5s", 1500),
            ("2m", 120_000),
            ("1h", 3_600_000),
        ];
        for (s, ms) in table {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "30", "ms", "3 parsecs", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_signals() {
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert!(parse_size("0").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("TERMINATE").is_err());
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

    #[test]
    fn env_file_lines() {
        let pairs = parse_env_file("# c\nA=1\nexport B=\"two words\"\n\nC='x'\n");
        assert_eq!(
            pairs,
            Ok(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into())
            ])
        );
        assert_eq!(parse_env_file("A=1\nnope\n").map_err(|e| e.0), Err(2));
    }
}
