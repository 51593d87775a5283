//! Walks the spanned TOML tree key by key, turning values into types and recording every problem.
//!
//! Done by hand over `toml_edit` rather than through serde, because serde stops at
//! the first error and the operator wants the whole list, each with line and key.

use super::units::{parse_duration, parse_env_file, parse_signal, parse_size};
use super::{
    Account, DeploySpec, ListenSpec, LogSpec, Policy, PortSpec, ProbeSpec, Problem, ProcessSpec,
    ProxySpec, ReadySpec, RegistrySpec, ReleaseSpec, RestartSpec, Spec, StopSpec, Switch,
};
use crate::exit::Action;
use nix::sys::signal::Signal;
use nix::unistd::{Group, User};
use std::ffi::CString;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml_edit::{Item, TableLike};

/// The generic half of a TOML walk: typed reads that record a located problem instead of
/// failing, so a file's every mistake is reported at once. Shared by the service config
/// and `ship`'s deploy file.
pub(crate) struct Walker<'t> {
    pub(crate) problems: Vec<Problem>,
    /// Byte offset of every line's start, so locating a problem is a binary search,
    /// not a scan of the text (30k unknown keys once took a minute to report).
    line_starts: Vec<usize>,
    /// Spans point into this text.
    text: std::marker::PhantomData<&'t str>,
}

impl<'t> Walker<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Walker {
            problems: Vec::new(),
            line_starts,
            text: std::marker::PhantomData,
        }
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }
}

/// The service config's walk: the generic reads plus what placeholders may mean here.
pub(super) struct Reader<'t> {
    walker: Walker<'t>,
    /// Whether `{port}` has a meaning (a [port] section or a [listen] socket).
    has_port: bool,
    /// Whether `{release}` has a meaning (a [release] section).
    has_release: bool,
    /// Where the checks of the program and the working directory go when they are left
    /// for later ([`Reader::deferring`]); None: made during the walk.
    deferred: Option<Deferred>,
    /// The checks made during the walk, kept for a stop card to make again.
    made: Deferred,
}

impl<'t> Reader<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Reader {
            walker: Walker::new(text),
            has_port: false,
            has_release: false,
            deferred: None,
            made: Vec::new(),
        }
    }

    /// A walk that leaves the checks of the program and the working directory (stats and
    /// a root-trust walk of each, only warnings for a command addressed to the running
    /// supervisor) to [`Reader::take_checks`]'s caller: `stop` makes them after its
    /// request, which then waits for none of them.
    pub(super) fn deferring(text: &'t str) -> Self {
        Reader {
            deferred: Some(Vec::new()),
            ..Reader::new(text)
        }
    }

    /// The checks a deferring walk left, or those a walk made in place, each with the
    /// line it is about.
    pub(super) fn take_checks(&mut self) -> Deferred {
        self.deferred
            .take()
            .unwrap_or_else(|| std::mem::take(&mut self.made))
    }

    /// Makes `check` now and records what it finds, or leaves it for later.
    fn host_check(&mut self, check: HostCheck, span: Option<Range<usize>>) {
        let line = span.as_ref().map(|s| self.line_of(s.start));
        match self.deferred.as_mut() {
            Some(later) => later.push((check, line)),
            None => {
                for (key, message, code) in check.problems() {
                    self.host_problem(span.clone(), key, message, code);
                }
                self.made.push((check, line));
            }
        }
    }
}

impl<'t> std::ops::Deref for Reader<'t> {
    type Target = Walker<'t>;
    fn deref(&self) -> &Walker<'t> {
        &self.walker
    }
}

impl<'t> std::ops::DerefMut for Reader<'t> {
    fn deref_mut(&mut self) -> &mut Walker<'t> {
        &mut self.walker
    }
}

/// The checks of the host a walk left for later, each with the line it is about.
pub(super) type Deferred = Vec<(HostCheck, Option<usize>)>;

/// A check of the host a config names (not of its text): its problems stop `start` and
/// `check`, but only warn a command addressed to the running supervisor (see
/// [`Problem::host`]), which may therefore make them after its request.
#[derive(Debug, Clone)]
pub(super) enum HostCheck {
    /// `workdir` is a directory.
    Workdir(PathBuf),
    /// `env_file` can be read and parsed (made during the walk, which needs its pairs; kept
    /// only for a stop card).
    EnvFile(PathBuf),
    /// The command's program is there and executable and, for a root service run by
    /// root, nobody else can change it.
    Program {
        prog: String,
        base: PathBuf,
        search: std::ffi::OsString,
        as_root: bool,
    },
}

impl HostCheck {
    /// What is wrong: key, message and LSB code of each problem; empty when nothing is.
    pub(super) fn problems(&self) -> Vec<(&'static str, String, Action)> {
        match self {
            HostCheck::Workdir(p) if !p.is_dir() => vec![(
                "workdir",
                format!(
                    "{} is not a directory: create it or fix the path",
                    p.display()
                ),
                Action::NotConfigured,
            )],
            HostCheck::Workdir(_) => Vec::new(),
            HostCheck::EnvFile(p) => env_file(p)
                .1
                .into_iter()
                .map(|(message, code)| ("env_file", message, code))
                .collect(),
            HostCheck::Program {
                prog,
                base,
                search,
                as_root,
            } => program_problems(prog, base, search, *as_root)
                .into_iter()
                .map(|(message, code)| ("command", message, code))
                .collect(),
        }
    }
}

/// [`HostCheck::Program`]'s findings.
fn program_problems(prog: &str, base: &Path, search: &std::ffi::OsStr, as_root: bool) -> Findings {
    let found = if prog.contains('/') {
        let p = absolutize(base, prog);
        Some(p).filter(|p| p.exists())
    } else {
        crate::host::find_in_path(prog, search)
    };
    let Some(p) = found else {
        return vec![(
            format!(
                "program {prog:?} not found{}: install it or fix the path",
                if prog.contains('/') { "" } else { " in PATH" }
            ),
            Action::NotInstalled,
        )];
    };
    let exec = std::fs::metadata(&p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !matches!(exec, Ok(true)) {
        return vec![(
            format!(
                "{} is not an executable file: chmod +x it or fix the path",
                p.display()
            ),
            Action::NotInstalled,
        )];
    }
    if as_root && nix::unistd::Uid::effective().is_root() {
        return untrusted_program(&p);
    }
    Vec::new()
}

/// What a check of the host found: each problem's message and LSB code.
type Findings = Vec<(String, Action)>;

/// Reads `env_file` on one descriptor, checked like sshd's StrictModes when baton is root
/// (a file others can write could hand a root service LD_PRELOAD): its pairs, and each
/// problem's message and code.
fn env_file(path: &Path) -> (Vec<(String, String)>, Findings) {
    let read = crate::files::open_checked(path).and_then(|mut c| {
        let body = c.read_limited(MAX_ENV_FILE)?;
        Ok((body, c.untrusted))
    });
    let (body, untrusted) = match read {
        Ok(v) => v,
        Err(e) => {
            return (
                Vec::new(),
                vec![(
                    format!("cannot read {}: {e}", path.display()),
                    Action::NotConfigured,
                )],
            )
        }
    };
    let mut problems = Vec::new();
    if nix::unistd::Uid::effective().is_root() {
        for why in untrusted {
            problems.push((
                format!("{why}; baton runs as root and refuses an environment others could change"),
                Action::NoPrivilege,
            ));
        }
    }
    let Ok(body) = String::from_utf8(body) else {
        problems.push((
            format!("{} is not UTF-8 text", path.display()),
            Action::NotConfigured,
        ));
        return (Vec::new(), problems);
    };
    match parse_env_file(&body) {
        Ok(pairs) => (pairs, problems),
        Err((line, msg)) => {
            problems.push((
                format!("{}:{line}: {msg}", path.display()),
                Action::NotConfigured,
            ));
            (Vec::new(), problems)
        }
    }
}

/// A program run as root must be as safe as root's own: nobody else may change it or its
/// directories.
///
/// A problem of the machine, not of the file: `start` and `check` refuse it, but a `stop`
/// (or `status`, `signal`) of the service already running only warns, since it executes
/// nothing; else a directory made writable since the start would leave root no `baton
/// stop` for a service that runs on.
fn untrusted_program(p: &Path) -> Vec<(String, Action)> {
    match crate::files::open_checked(p) {
        Ok(c) => c
            .untrusted
            .into_iter()
            .map(|why| {
                (
                    format!("{why}; the service runs as root, so nobody else may be able to change what it executes"),
                    Action::NoPrivilege,
                )
            })
            .collect(),
        Err(e) => vec![(
            format!("cannot check {}: {e}", p.display()),
            Action::NoPrivilege,
        )],
    }
}

/// An env_file larger than this is not an env file.
const MAX_ENV_FILE: u64 = 1 << 20;

const TOP_KEYS: &[&str] = &[
    "command",
    "user",
    "group",
    "workdir",
    "env",
    "env_file",
    "inherit_env",
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
    "release",
    "listen",
    "deploy",
    "proxy",
    "registry",
    "process",
];

impl Walker<'_> {
    pub(crate) fn problem(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) {
        self.problem_code(span, key, message, Action::NotConfigured);
    }

    pub(crate) fn problem_code(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
        code: Action,
    ) {
        self.push(span, key, message.into(), code, false);
    }

    /// A problem with the machine as it is now, not with the file (see [`Problem::host`]).
    pub(crate) fn host_problem(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
        code: Action,
    ) {
        self.push(span, key, message.into(), code, true);
    }

    fn push(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: String,
        code: Action,
        host: bool,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.problems.push(Problem {
            line,
            key: key.to_string(),
            message,
            code,
            host,
        });
    }

    /// Reports keys outside `allowed`; typos must not be silently ignored.
    pub(crate) fn known_keys(&mut self, t: &dyn TableLike, prefix: &str, allowed: &[&str]) {
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

    pub(crate) fn section<'d>(
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
            None => self.wrong_type(item, key, "a table"),
        }
    }

    /// Records that `item` has the wrong type; always `None`, for the caller to return.
    pub(crate) fn wrong_type<T>(&mut self, item: &Item, path: &str, expected: &str) -> Option<T> {
        self.mistyped(item, path, expected);
        None
    }

    /// Records that `item` has the wrong type.
    pub(crate) fn mistyped(&mut self, item: &Item, path: &str, expected: &str) {
        self.problem(
            item.span(),
            path,
            format!("must be {expected}, not {}", item.type_name()),
        );
    }

    pub(crate) fn string(
        &mut self,
        t: &dyn TableLike,
        prefix: &str,
        key: &str,
    ) -> Option<(String, Option<Range<usize>>)> {
        let item = t.get(key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), item.span())),
            None => self.wrong_type(item, &join(prefix, key), "a string"),
        }
    }

    pub(crate) fn strings(&mut self, item: &Item, path: &str) -> Option<Vec<String>> {
        let Some(arr) = item.as_array() else {
            return self.wrong_type(item, path, "an array of strings");
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

    pub(crate) fn integer(
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
            None => self.wrong_type(item, &join(prefix, key), "an integer"),
        }
    }

    /// A string value in one of the config's own syntaxes (duration, size, signal).
    pub(crate) fn parsed<T>(
        &mut self,
        t: &dyn TableLike,
        prefix: &str,
        key: &str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Option<T> {
        let (s, span) = self.string(t, prefix, key)?;
        parse(&s)
            .map_err(|e| self.problem(span, &join(prefix, key), e))
            .ok()
    }

    pub(crate) fn duration(
        &mut self,
        t: &dyn TableLike,
        prefix: &str,
        key: &str,
    ) -> Option<Duration> {
        self.parsed(t, prefix, key, parse_duration)
    }

    pub(crate) fn signal(&mut self, t: &dyn TableLike, prefix: &str, key: &str) -> Option<Signal> {
        self.parsed(t, prefix, key, parse_signal)
    }
}

impl Reader<'_> {
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

    pub(super) fn spec(&mut self, top: &dyn TableLike, base: &Path, name: &str) -> Option<Spec> {
        self.known_keys(top, "", TOP_KEYS);

        let port = self.port(top);
        let listen = self.listen(top);
        self.has_port = port != PortSpec::None || listen.is_some();
        let release = self.release(top, base, name);
        self.has_release = release.is_some();

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
                        self.placeholders(arg, item.span(), "command");
                    }
                    let v: Vec<String> = v.into_iter().map(|a| a.replace("{name}", name)).collect();
                    Some(v)
                }
                None => None,
            },
        };

        let account = self.account(top);
        let workdir = self.string(top, "", "workdir").map(|(s, span)| {
            let p = absolutize(base, &s.replace("{name}", name));
            self.host_check(HostCheck::Workdir(p.clone()), span);
            p
        });

        let mut env = Vec::new();
        if let Some((f, span)) = self.string(top, "", "env_file") {
            let path = absolutize(base, &f.replace("{name}", name));
            self.env_file(&path, span, &mut env);
        }
        if let Some(item) = top.get("env") {
            match item.as_table_like() {
                Some(t) => {
                    for (k, v) in t.iter() {
                        let span = v.span();
                        if !super::units::valid_name(k) {
                            self.problem(
                                span.clone(),
                                &join("env", k),
                                format!("{k:?} is not a valid variable name (letters, digits, _)"),
                            );
                        }
                        match v.as_str() {
                            Some(s) => {
                                self.placeholders(s, span, &join("env", k));
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
        let inherit_env = self.inherit_env(top);
        if let (Some(argv), Some(item)) = (&command, top.get("command")) {
            // As the service will see it: its PATH, not baton's caller's.
            let path = super::units::lookup_path(&env, &inherit_env);
            let as_root = match &account {
                Some(a) => a.uid.is_root(),
                None => nix::unistd::Uid::effective().is_root(),
            };
            self.program(&argv[0], base, item.span(), &path, as_root);
        }

        let umask = self.umask(top);
        let ready = self.ready(top);
        let stop = self.stop(top);
        let reload_signal = match self.section(top, "reload", &["signal"]) {
            Some(t) => self.signal(t, "reload", "signal"),
            None => None,
        }
        .unwrap_or(Signal::SIGHUP);
        let restart = self.restart(top);
        let log = self.log(top, base, name);
        let deploy = self.deploy(top);
        let proxy = self.proxy(top, base, name);

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
            inherit_env,
            umask,
            port,
            ready: ready?,
            stop: stop?,
            reload_signal,
            restart: restart?,
            log: log?,
            registry: self.registry(top, base, name, &state_dir),
            pidfile,
            socket,
            state_dir,
            release,
            listen,
            deploy,
            proxy,
            process: self.process(top),
            origin: super::Origin::default(),
        })
    }

    fn process(&mut self, top: &dyn TableLike) -> ProcessSpec {
        let mut spec = ProcessSpec { cgroup: true };
        if let Some(t) = self.section(top, "process", &["cgroup"]) {
            if let Some(item) = t.get("cgroup") {
                match item.as_bool() {
                    Some(b) => spec.cgroup = b,
                    None => self.problem(item.span(), "process.cgroup", "must be true or false"),
                }
            }
        }
        spec
    }

    /// Only `{name}`, `{port}` and `{release}` exist; anything else is a typo that would reach the service verbatim.
    fn placeholders(&mut self, s: &str, span: Option<Range<usize>>, key: &str) {
        let has_port = self.has_port;
        let has_release = self.has_release;
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
                "release" if has_release => {}
                "release" => self.problem(
                    span.clone(),
                    key,
                    "uses {release} but no [release] section says where releases live",
                ),
                _ if word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !word.is_empty() =>
                {
                    self.problem(
                        span.clone(),
                        key,
                        format!("unknown placeholder {{{word}}} (known: {{name}}, {{port}}, {{release}})"),
                    )
                }
                _ => {}
            }
            rest = &rest[open + close + 1..];
        }
    }

    /// A missing program is LSB "not installed"; catch it now, not at spawn.
    fn program(
        &mut self,
        prog: &str,
        base: &Path,
        span: Option<Range<usize>>,
        search: &std::ffi::OsStr,
        as_root: bool,
    ) {
        // Resolved per instance (a release's own launcher): checked when it is spawned.
        if prog.contains("{port}") || prog.contains("{release}") {
            return;
        }
        let check = HostCheck::Program {
            prog: prog.to_string(),
            base: base.to_path_buf(),
            search: search.to_os_string(),
            as_root,
        };
        self.host_check(check, span);
    }

    /// Reads `env_file` into `env`, telling what is wrong with it (see [`env_file`]); the
    /// check is kept for a stop card to make again.
    fn env_file(
        &mut self,
        path: &Path,
        span: Option<Range<usize>>,
        env: &mut Vec<(String, String)>,
    ) {
        let (pairs, problems) = env_file(path);
        env.extend(pairs);
        for (message, code) in problems {
            self.host_problem(span.clone(), "env_file", message, code);
        }
        let line = span.map(|s| self.line_of(s.start));
        self.made
            .push((HostCheck::EnvFile(path.to_path_buf()), line));
    }

    /// `inherit_env = ["NAME", ...]`: the caller's variables the service may see.
    fn inherit_env(&mut self, top: &dyn TableLike) -> Vec<String> {
        let Some(item) = top.get("inherit_env") else {
            return Vec::new();
        };
        let Some(names) = self.strings(item, "inherit_env") else {
            return Vec::new();
        };
        for n in &names {
            if !super::units::valid_name(n) {
                self.problem(
                    item.span(),
                    "inherit_env",
                    format!("{n:?} is not a variable name (letters, digits, _)"),
                );
            }
        }
        names
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
            Some(("discover", _)) => PortSpec::Discover,
            Some((other, span)) => {
                self.problem(
                    span,
                    "port.mode",
                    format!("unknown mode {other:?} (expected fixed, auto or discover)"),
                );
                PortSpec::None
            }
        }
    }

    fn ready(&mut self, top: &dyn TableLike) -> Option<ReadySpec> {
        let mut probes = Vec::new();
        let mut timeout = Duration::from_secs(90);
        let Some(t) = self.section(
            top,
            "ready",
            &["tcp", "http", "exec", "log", "notify", "timeout"],
        ) else {
            return Some(ReadySpec {
                probes,
                timeout,
                hosts: Vec::new(),
            });
        };
        if let Some((s, span)) = self.string(t, "ready", "tcp") {
            self.placeholders(&s, span.clone(), "ready.tcp");
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
            self.placeholders(&s, span.clone(), "ready.http");
            if let Err(e) =
                crate::url::HttpTarget::parse(&s.replace("{port}", "1").replace("{name}", "x"))
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
                        self.placeholders(a, item.span(), "ready.exec");
                    }
                    probes.push(ProbeSpec::Exec(argv));
                }
            }
        }
        if let Some((s, span)) = self.string(t, "ready", "log") {
            match regex_lite::Regex::new(&s) {
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
        let mut hosts = Vec::new();
        for p in &probes {
            let (host, key) = match p {
                ProbeSpec::Tcp(a) => match a.rsplit_once(':') {
                    Some((h, _)) => (h.to_string(), "ready.tcp"),
                    None => continue,
                },
                ProbeSpec::Http(u) => match crate::url::HttpTarget::parse(
                    &u.replace("{port}", "1").replace("{name}", "x"),
                ) {
                    Ok(t) => (t.host, "ready.http"),
                    Err(_) => continue,
                },
                _ => continue,
            };
            let bare = host.trim_matches(|c| c == '[' || c == ']');
            if bare.parse::<std::net::IpAddr>().is_ok() || hosts.iter().any(|(h, _)| h == bare) {
                continue;
            }
            let span = t.get(key.trim_start_matches("ready.")).and_then(Item::span);
            if bare.contains('{') {
                self.problem(
                    span,
                    key,
                    format!("{host:?}: the host must be an address or a name, not a placeholder"),
                );
                continue;
            }
            // Once, here, where blocking is harmless; never in the supervisor's poll loop.
            use std::net::ToSocketAddrs;
            match (bare, 0u16).to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => hosts.push((bare.to_string(), a.ip())),
                Ok(None) => self.problem(span, key, format!("{bare:?} resolves to no address")),
                Err(e) => self.problem(
                    span,
                    key,
                    format!("cannot resolve {bare:?}: {e}; use an address such as 127.0.0.1"),
                ),
            }
        }
        Some(ReadySpec {
            probes,
            timeout,
            hosts,
        })
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

    fn release(&mut self, top: &dyn TableLike, base: &Path, name: &str) -> Option<ReleaseSpec> {
        let t = self.section(top, "release", &["root", "keep"])?;
        let root = match self.string(t, "release", "root") {
            Some((r, _)) => absolutize(base, &r.replace("{name}", name)),
            None => {
                self.problem(
                    None,
                    "release.root",
                    "is missing: where releases/ID and current live, e.g. \"/var/lib/{name}\"",
                );
                return None;
            }
        };
        let keep = self.integer(t, "release", "keep", 2, 1000).unwrap_or(5) as u32;
        Some(ReleaseSpec { root, keep })
    }

    fn listen(&mut self, top: &dyn TableLike) -> Option<ListenSpec> {
        let t = self.section(top, "listen", &["address", "fd"])?;
        let fd = match self.integer(t, "listen", "fd", 0, 3) {
            None | Some(3) => 3,
            Some(0) => 0,
            Some(n) => {
                let span = t.get("fd").and_then(Item::span);
                self.problem(
                    span,
                    "listen.fd",
                    format!(
                        "{n} is not supported: 3 (LISTEN_FDS) or 0 (a JVM's inherited channel)"
                    ),
                );
                3
            }
        };
        let Some((a, span)) = self.string(t, "listen", "address") else {
            self.problem(
                None,
                "listen.address",
                "is missing: HOST:PORT to listen on, e.g. \"127.0.0.1:8080\"",
            );
            return None;
        };
        match a.parse() {
            Ok(address) => Some(ListenSpec { address, fd }),
            Err(_) => {
                self.problem(
                    span,
                    "listen.address",
                    format!("{a:?} is not HOST:PORT with a numeric host, e.g. \"127.0.0.1:8080\""),
                );
                None
            }
        }
    }

    fn deploy(&mut self, top: &dyn TableLike) -> DeploySpec {
        let mut spec = DeploySpec {
            drain_timeout: Duration::from_secs(30),
        };
        if let Some(t) = self.section(top, "deploy", &["drain_timeout"]) {
            if let Some(d) = self.duration(t, "deploy", "drain_timeout") {
                spec.drain_timeout = d;
            }
        }
        spec
    }

    fn proxy(&mut self, top: &dyn TableLike, base: &Path, name: &str) -> ProxySpec {
        let Some(t) = self.section(
            top,
            "proxy",
            &[
                "kind",
                "upstream",
                "template",
                "config",
                "check",
                "reload",
                "confirm",
                "confirm_header",
                "confirm_timeout",
            ],
        ) else {
            return ProxySpec::None;
        };
        let kind = self.string(t, "proxy", "kind");
        let kind_span = kind.as_ref().and_then(|(_, s)| s.clone());
        let kind = kind.map(|(k, _)| k).unwrap_or_else(|| "nginx".into());
        if kind == "none" {
            return ProxySpec::None;
        }
        let nginx = kind == "nginx";
        if !nginx && kind != "command" {
            self.problem(
                kind_span,
                "proxy.kind",
                format!("unknown kind {kind:?} (expected nginx, command or none)"),
            );
            return ProxySpec::None;
        }
        let upstream = match self.string(t, "proxy", "upstream") {
            Some((u, _)) => absolutize(base, &u.replace("{name}", name)),
            None => {
                self.problem(None, "proxy.upstream", "is missing: the file the proxy includes, e.g. \"/etc/nginx/conf.d/{name}.upstream\"");
                PathBuf::new()
            }
        };
        let template = match self.string(t, "proxy", "template") {
            Some((s, _)) => s,
            None if nginx => "server 127.0.0.1:{port};\n".into(),
            None => {
                self.problem(
                    None,
                    "proxy.template",
                    "is missing: what the upstream file holds, with {port}",
                );
                String::new()
            }
        };
        let config = self
            .string(t, "proxy", "config")
            .map(|(c, _)| absolutize(base, &c))
            .unwrap_or_else(|| PathBuf::from("/etc/nginx/nginx.conf"));
        let command = |this: &mut Self, key: &str, default: &[&str]| -> Vec<String> {
            match t.get(key) {
                Some(item) => match this.strings(item, &join("proxy", key)) {
                    Some(v) if !v.is_empty() => v,
                    Some(_) => {
                        this.problem(item.span(), &join("proxy", key), "must not be empty");
                        Vec::new()
                    }
                    None => Vec::new(),
                },
                None if nginx => default.iter().map(|s| s.to_string()).collect(),
                None => {
                    this.problem(
                        None,
                        &join("proxy", key),
                        "is missing: kind = \"command\" needs check and reload commands",
                    );
                    Vec::new()
                }
            }
        };
        let check = command(self, "check", &["nginx", "-t", "-q", "-c", "{config}"]);
        let reload = command(self, "reload", &["nginx", "-s", "reload"]);
        let confirm = self.string(t, "proxy", "confirm").map(|(c, span)| {
            if let Err(e) = crate::url::HttpTarget::parse(&c) {
                self.problem(span, "proxy.confirm", e);
            }
            c
        });
        let confirm_header = self.string(t, "proxy", "confirm_header").map(|(h, span)| {
            let token = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
            if !token {
                self.problem(
                    span,
                    "proxy.confirm_header",
                    "is not an HTTP header name (e.g. \"X-Pid\")",
                );
            }
            h
        });
        let confirm_timeout = self
            .duration(t, "proxy", "confirm_timeout")
            .unwrap_or(Duration::from_secs(10));
        let switch = Switch {
            upstream,
            template,
            config,
            check,
            reload,
            confirm,
            confirm_header,
            confirm_timeout,
        };
        if nginx {
            ProxySpec::Nginx(switch)
        } else {
            ProxySpec::Command(switch)
        }
    }

    fn registry(
        &mut self,
        top: &dyn TableLike,
        base: &Path,
        name: &str,
        state_dir: &Path,
    ) -> RegistrySpec {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let mut spec = RegistrySpec {
            file: state_dir.join("registry.json"),
            etcd: Vec::new(),
            // Ports and PIDs are per host: two hosts must never share keys.
            prefix: format!("baton/{host}/{name}"),
            ttl: None,
            advertise: host.clone(),
        };
        let Some(t) = self.section(top, "registry", &["file", "etcd", "prefix", "ttl", "host"])
        else {
            return spec;
        };
        if let Some((f, _)) = self.string(t, "registry", "file") {
            spec.file = absolutize(base, &f.replace("{name}", name));
        }
        if let Some(item) = t.get("etcd") {
            if let Some(v) = self.strings(item, "registry.etcd") {
                for e in &v {
                    if !e.starts_with("http://") {
                        self.problem(item.span(), "registry.etcd", format!("{e:?} must be an http:// URL of etcd's client endpoint, e.g. \"http://127.0.0.1:2379\""));
                    }
                }
                spec.etcd = v;
            }
        }
        if let Some((p, _)) = self.string(t, "registry", "prefix") {
            spec.prefix = p
                .replace("{name}", name)
                .replace("{host}", &host)
                .trim_end_matches('/')
                .to_string();
        }
        if let Some((h, _)) = self.string(t, "registry", "host") {
            spec.advertise = h;
        }
        if let Some(ttl) = self.duration(t, "registry", "ttl") {
            // etcd leases count whole seconds, and a keepalive every ttl/3 needs room.
            if ttl < Duration::from_secs(3) {
                let span = t.get("ttl").and_then(|i| i.span());
                self.problem(span, "registry.ttl", format!("{}s is too short: a lease needs at least \"3s\" (keepalives go every third of it)", ttl.as_secs_f64()));
            } else if spec.etcd.is_empty() {
                let span = t.get("ttl").and_then(|i| i.span());
                self.problem(
                    span,
                    "registry.ttl",
                    "needs registry.etcd: a lease lives in etcd",
                );
            } else {
                spec.ttl = Some(ttl);
            }
        }
        spec
    }

    fn log(&mut self, top: &dyn TableLike, base: &Path, name: &str) -> Option<LogSpec> {
        let mut spec = LogSpec {
            dir: PathBuf::from(format!("/var/log/{name}")),
            max_size: 100 * 1000 * 1000,
            keep: 10,
            timestamps: true,
        };
        let Some(t) = self.section(top, "log", &["dir", "max_size", "keep", "timestamps"]) else {
            return Some(spec);
        };
        if let Some((d, _)) = self.string(t, "log", "dir") {
            spec.dir = absolutize(base, &d.replace("{name}", name));
        }
        if let Some(n) = self.parsed(t, "log", "max_size", parse_size) {
            spec.max_size = n;
        }
        if let Some(n) = self.integer(t, "log", "keep", 0, 1000) {
            spec.keep = n as u32;
        }
        if let Some(item) = t.get("timestamps") {
            match item.as_bool() {
                Some(b) => spec.timestamps = b,
                None => self.problem(item.span(), "log.timestamps", "must be true or false"),
            }
        }
        Some(spec)
    }
}

/// `prefix.key`, or `key` at the top level.
pub(crate) fn join(prefix: &str, key: &str) -> String {
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
