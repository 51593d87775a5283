//! Walks the spanned TOML tree key by key, turning values into types and recording every problem.
//!
//! Done by hand over `toml_edit` rather than through serde, because serde stops at
//! the first error and the operator wants the whole list, each with line and key.

use super::units::{parse_duration, parse_env_file, parse_signal, parse_size};
use super::{
    line_of, Account, LogSpec, Policy, PortSpec, ProbeSpec, Problem, ReadySpec, RestartSpec, Spec,
    StopSpec,
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

pub(super) struct Reader<'t> {
    pub(super) text: &'t str,
    pub(super) problems: Vec<Problem>,
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
            None => self.wrong_type(item, key, "a table"),
        }
    }

    /// Records that `item` has the wrong type; always `None`, for the caller to return.
    fn wrong_type<T>(&mut self, item: &Item, path: &str, expected: &str) -> Option<T> {
        self.problem(
            item.span(),
            path,
            format!("must be {expected}, not {}", item.type_name()),
        );
        None
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
            None => self.wrong_type(item, &join(prefix, key), "a string"),
        }
    }

    fn strings(&mut self, item: &Item, path: &str) -> Option<Vec<String>> {
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
            None => self.wrong_type(item, &join(prefix, key), "an integer"),
        }
    }

    /// A string value in one of the config's own syntaxes (duration, size, signal).
    fn parsed<T>(
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

    fn duration(&mut self, t: &dyn TableLike, prefix: &str, key: &str) -> Option<Duration> {
        self.parsed(t, prefix, key, parse_duration)
    }

    fn signal(&mut self, t: &dyn TableLike, prefix: &str, key: &str) -> Option<Signal> {
        self.parsed(t, prefix, key, parse_signal)
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

    pub(super) fn spec(&mut self, top: &dyn TableLike, base: &Path, name: &str) -> Option<Spec> {
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
        if let Some(n) = self.parsed(t, "log", "max_size", parse_size) {
            spec.max_size = n;
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
