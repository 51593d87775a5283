//! The deploy file (TOML) read key by key into a validated [`DeployFile`], every problem located.
//!
//! Like the service config (src/config/reader.rs) this walks the spanned
//! `toml_edit` tree by hand instead of using serde, so that the operator gets
//! every problem at once, each with file, line and key.

use crate::config::{join, line_of, parse_duration, Problem, Walker};
use crate::error::{Error, Result};
use crate::exit::Action;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml_edit::{ImDocument, Item, TableLike};

/// A whole deploy file.
#[derive(Debug, Clone)]
pub struct DeployFile {
    /// The file it was read from.
    pub file: PathBuf,
    /// The directory builds run in and relative paths resolve against.
    pub base: PathBuf,
    /// The service's name on the hosts.
    pub service: String,
    /// How the artifact is built, once, locally.
    pub build: Build,
    /// Environments by name (staging, production, ...).
    pub envs: BTreeMap<String, Env>,
}

/// The local build.
#[derive(Debug, Clone)]
pub struct Build {
    /// Shell command (`sh -c`), run in the deploy file's directory.
    pub command: String,
    /// The file or directory the build produces; a directory's contents become the release.
    pub artifact: PathBuf,
}

/// One target host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// What ssh connects to (name or address).
    pub address: String,
    /// Where this host reports its version (`{host}` already expanded).
    pub version_url: String,
}

/// How files reach the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// `rsync -a -e ssh` (needs rsync on both ends).
    Rsync,
    /// `scp` for files, `tar | ssh tar` for directories (needs only OpenSSH and tar).
    Scp,
}

/// One environment: where and how to deploy.
#[derive(Debug, Clone)]
pub struct Env {
    /// Its name.
    pub name: String,
    /// Hosts in rollout order; the first `canary` are the canaries.
    pub hosts: Vec<Host>,
    /// SSH login, when not ssh's default.
    pub user: Option<String>,
    /// SSH port.
    pub port: u16,
    /// Private key (`ssh -i`).
    pub identity: Option<PathBuf>,
    /// known_hosts file checked strictly; ssh's own files when absent.
    pub known_hosts: Option<PathBuf>,
    /// Capistrano's deploy_to: `releases/ID` and `current` live here.
    pub deploy_to: String,
    /// Releases kept on each host (`baton deploy --keep`).
    pub keep_releases: u32,
    /// Hosts in flight at once.
    pub max_parallel: usize,
    /// Hosts that may fail after the canaries before the rollout halts.
    pub max_failed: usize,
    /// Hosts deployed first, alone; if one fails no other host is touched.
    pub canary: usize,
    /// The baton executable on the hosts (the front; `ship` uploads no binary: its core is
    /// installed beside it, as `make install` and the cookbook do).
    pub baton: String,
    /// The service's baton config on the hosts.
    pub config: String,
    /// Files installed into each release: path inside the release -> local source.
    pub files: BTreeMap<String, PathBuf>,
    /// Name of the generated properties file inside the release.
    pub properties: String,
    /// How long a host may take to report the new version after its deploy.
    pub verify_timeout: Duration,
    /// How files are copied.
    pub transfer: Transfer,
    /// etcd members holding the environment's fleet lock (none: no lock).
    pub etcd: Vec<String>,
    /// The fleet lock's lease: a killed shipper's lock expires this long after its last renewal.
    pub lock_ttl: Duration,
}

/// One thing wrong with the deploy file.
/// The deploy file's walk: the service config's generic reads (one [`Walker`]) plus its own sections.
struct Reader<'t>(Walker<'t>);

impl<'t> std::ops::Deref for Reader<'t> {
    type Target = Walker<'t>;
    fn deref(&self) -> &Walker<'t> {
        &self.0
    }
}

impl<'t> std::ops::DerefMut for Reader<'t> {
    fn deref_mut(&mut self) -> &mut Walker<'t> {
        &mut self.0
    }
}

const TOP_KEYS: &[&str] = &["service", "build", "environments"];
const BUILD_KEYS: &[&str] = &["command", "artifact"];
const ENV_KEYS: &[&str] = &[
    "hosts",
    "user",
    "port",
    "identity",
    "known_hosts",
    "deploy_to",
    "keep_releases",
    "max_parallel",
    "max_failed",
    "canary",
    "baton",
    "config",
    "version_url",
    "verify_timeout",
    "files",
    "properties",
    "transfer",
    "etcd",
    "lock_ttl",
];

/// Reads and validates a deploy file; every problem is reported at once.
pub fn load(file: &Path) -> Result<DeployFile> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::io(format!("read deploy file {}", file.display()), &e)
            .code(Action::NotConfigured)
            .hint("pass --file FILE or create deploy.toml (see examples/deploy.toml)")
    })?;
    let base = file
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let base = std::path::absolute(&base).unwrap_or(base);
    parse(&text, file, &base).map_err(|problems| {
        let n = problems.len();
        let list = crate::config::Problems {
            file: file.to_path_buf(),
            list: problems,
        };
        Error::unable(
            format!("use deploy file {}", file.display()),
            format!("{n} problem{}:\n{list}", if n == 1 { "" } else { "s" }),
        )
        .code(Action::NotConfigured)
        .hint("fix the lines above; examples/deploy.toml shows every key")
    })
}

/// Parses deploy-file text; `base` is where relative paths resolve.
pub(crate) fn parse(
    text: &str,
    file: &Path,
    base: &Path,
) -> std::result::Result<DeployFile, Vec<Problem>> {
    let doc = ImDocument::parse(text.to_string()).map_err(|e| {
        vec![Problem {
            line: e.span().map(|s| line_of(text, s.start)),
            key: String::new(),
            message: format!("TOML syntax error: {}", e.message().trim()),
            code: Action::NotConfigured,
            host: false,
        }]
    })?;
    let mut r = Reader(Walker::new(text));
    let top = doc.as_table();
    r.known_keys(top, "", TOP_KEYS);
    let service = r.required_string(top, "", "service", "the service's name on the hosts");
    let build = r.build(top, base);
    let mut envs = BTreeMap::new();
    match top.get("environments") {
        None => r.problem(
            None,
            "environments",
            "is missing: at least one [environments.NAME] table",
        ),
        Some(item) => match item.as_table_like() {
            None => r.mistyped(item, "environments", "a table"),
            Some(t) => {
                for (name, item) in t.iter() {
                    let path = format!("environments.{name}");
                    match item.as_table_like() {
                        Some(e) => {
                            if let Some(env) = r.env(e, &path, name, service.as_deref(), base) {
                                envs.insert(name.to_string(), env);
                            }
                        }
                        None => r.mistyped(item, &path, "a table"),
                    }
                }
            }
        },
    }
    if !r.problems.is_empty() {
        r.problems.sort_by_key(|p| p.line);
        return Err(std::mem::take(&mut r.problems));
    }
    match (service, build) {
        (Some(service), Some(build)) => Ok(DeployFile {
            file: file.to_path_buf(),
            base: base.to_path_buf(),
            service,
            build,
            envs,
        }),
        _ => Err(vec![Problem {
            line: None,
            key: String::new(),
            message: "incomplete".into(),
            code: Action::NotConfigured,
            host: false,
        }]),
    }
}

impl Reader<'_> {
    /// A string value; its span is not needed here.
    fn string(&mut self, t: &dyn TableLike, prefix: &str, key: &str) -> Option<String> {
        self.0.string(t, prefix, key).map(|(s, _)| s)
    }

    fn required_string(
        &mut self,
        t: &dyn TableLike,
        prefix: &str,
        key: &str,
        what: &str,
    ) -> Option<String> {
        if t.get(key).is_none() {
            self.problem(None, &join(prefix, key), format!("is missing: {what}"));
            return None;
        }
        let s = self.string(t, prefix, key)?;
        if s.trim().is_empty() {
            let span = t.get(key).and_then(Item::span);
            self.problem(
                span,
                &join(prefix, key),
                format!("must not be empty: {what}"),
            );
            return None;
        }
        Some(s)
    }

    fn build(&mut self, top: &dyn TableLike, base: &Path) -> Option<Build> {
        let Some(item) = top.get("build") else {
            self.problem(
                None,
                "build",
                "is missing: a [build] table with command and artifact",
            );
            return None;
        };
        let Some(t) = item.as_table_like() else {
            self.mistyped(item, "build", "a table");
            return None;
        };
        self.known_keys(t, "build", BUILD_KEYS);
        let command = self.required_string(
            t,
            "build",
            "command",
            "the build command, e.g. \"lein uberjar\" or \"mvn -q package\"",
        );
        let artifact = self.required_string(
            t,
            "build",
            "artifact",
            "the file or directory the build produces, e.g. \"target/app.jar\"",
        );
        Some(Build {
            command: command?,
            artifact: base.join(artifact?),
        })
    }

    fn env(
        &mut self,
        t: &dyn TableLike,
        p: &str,
        name: &str,
        service: Option<&str>,
        base: &Path,
    ) -> Option<Env> {
        self.known_keys(t, p, ENV_KEYS);
        let service = service.unwrap_or("SERVICE");
        // Optional here when every host names its own.
        let version_url = self.string(t, p, "version_url");
        let hosts = self.hosts(t, p, version_url.as_deref());
        let deploy_to = self.required_string(
            t,
            p,
            "deploy_to",
            "the release root on the hosts, e.g. \"/var/lib/web\"",
        );
        let port = self.integer(t, p, "port", 1, 65535).unwrap_or(22) as u16;
        let user = self.string(t, p, "user");
        // ssh expands `~` itself in both options, so such paths are passed on as written.
        let local = |s: String| {
            if s.starts_with('~') {
                PathBuf::from(s)
            } else {
                base.join(s)
            }
        };
        let identity = self.string(t, p, "identity").map(local);
        let known_hosts = self.string(t, p, "known_hosts").map(local);
        let keep_releases = self.integer(t, p, "keep_releases", 2, 1000).unwrap_or(5) as u32;
        let max_parallel = self.integer(t, p, "max_parallel", 1, 1000).unwrap_or(10) as usize;
        let max_failed = self.integer(t, p, "max_failed", 0, 1000).unwrap_or(0) as usize;
        let canary = self.integer(t, p, "canary", 0, 1000).unwrap_or(1) as usize;
        let baton = self
            .string(t, p, "baton")
            .unwrap_or_else(|| "/usr/local/bin/baton".into());
        let config = self
            .string(t, p, "config")
            .unwrap_or_else(|| format!("/etc/baton/{service}.toml"));
        let properties = self
            .string(t, p, "properties")
            .unwrap_or_else(|| "service.properties".into());
        let verify_timeout = match t.get("verify_timeout") {
            None => Duration::from_secs(30),
            Some(item) => match item.as_str().map(parse_duration) {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    self.problem(item.span(), &join(p, "verify_timeout"), e);
                    Duration::from_secs(30)
                }
                None => {
                    self.mistyped(item, &join(p, "verify_timeout"), "a duration string");
                    Duration::from_secs(30)
                }
            },
        };
        let rsync_here = which("rsync");
        let transfer = match self.string(t, p, "transfer").as_deref() {
            None if rsync_here => Transfer::Rsync,
            None | Some("scp") => Transfer::Scp,
            Some("rsync") => Transfer::Rsync,
            Some(other) => {
                let span = t.get("transfer").and_then(Item::span);
                self.problem(
                    span,
                    &join(p, "transfer"),
                    format!("{other:?} is not one of \"rsync\", \"scp\""),
                );
                Transfer::Scp
            }
        };
        let files = self.files(t, p, base);
        let mut etcd = Vec::new();
        if let Some(item) = t.get("etcd") {
            if let Some(v) = self.strings(item, &join(p, "etcd")) {
                for e in &v {
                    if !e.starts_with("http://") {
                        self.problem(
                            item.span(),
                            &join(p, "etcd"),
                            format!("{e:?} must be an http:// URL of an etcd member's client endpoint, e.g. \"http://10.0.0.5:2379\""),
                        );
                    }
                }
                etcd = v;
            }
        }
        let lock_ttl = match self.duration(t, p, "lock_ttl") {
            Some(d) if d < Duration::from_secs(3) => {
                let span = t.get("lock_ttl").and_then(Item::span);
                self.problem(
                    span,
                    &join(p, "lock_ttl"),
                    "must be at least \"3s\" (the lock is renewed every third of it)",
                );
                Duration::from_secs(15)
            }
            Some(d) => d,
            None => Duration::from_secs(15),
        };
        if let Some(c) = t.get("canary") {
            if let (Some(n), Some(h)) = (c.as_integer(), hosts.as_ref()) {
                if n as usize > h.len() {
                    self.problem(
                        c.span(),
                        &join(p, "canary"),
                        format!("{n} canaries but only {} hosts", h.len()),
                    );
                }
            }
        }
        Some(Env {
            name: name.to_string(),
            hosts: hosts?,
            user,
            port,
            identity,
            known_hosts,
            deploy_to: deploy_to?.trim_end_matches('/').to_string(),
            keep_releases,
            max_parallel,
            max_failed,
            canary,
            baton,
            config,
            files: files?,
            properties,
            verify_timeout,
            transfer,
            etcd,
            lock_ttl,
        })
    }

    /// `hosts = ["a", { address = "b", version_url = "..." }]`.
    fn hosts(&mut self, t: &dyn TableLike, p: &str, url: Option<&str>) -> Option<Vec<Host>> {
        let path = join(p, "hosts");
        let Some(item) = t.get("hosts") else {
            self.problem(None, &path, "is missing: the hosts to deploy to");
            return None;
        };
        let Some(arr) = item.as_array() else {
            self.mistyped(item, &path, "an array");
            return None;
        };
        if arr.is_empty() {
            self.problem(item.span(), &path, "must name at least one host");
            return None;
        }
        let mut out: Vec<Host> = Vec::new();
        for v in arr.iter() {
            let host = if let Some(s) = v.as_str() {
                Some((s.to_string(), None))
            } else if let Some(tab) = v.as_inline_table() {
                for (k, _) in tab.iter() {
                    if k != "address" && k != "version_url" {
                        self.problem(
                            v.span(),
                            &path,
                            format!("unknown key {k:?} in a host (expected address, version_url)"),
                        );
                    }
                }
                let address = tab.get("address").and_then(|a| a.as_str());
                let own = tab.get("version_url").and_then(|a| a.as_str());
                match address {
                    Some(a) => Some((a.to_string(), own.map(str::to_string))),
                    None => {
                        self.problem(v.span(), &path, "a host table needs address = \"...\"");
                        None
                    }
                }
            } else {
                self.problem(
                    v.span(),
                    &path,
                    format!(
                        "must hold host names or {{ address, version_url }} tables, found {}",
                        v.type_name()
                    ),
                );
                None
            };
            let Some((address, own)) = host else { continue };
            if address.is_empty()
                || address.starts_with('-')
                || address.contains(char::is_whitespace)
            {
                self.problem(v.span(), &path, format!("{address:?} is not a host name"));
                continue;
            }
            if out.iter().any(|h| h.address == address) {
                self.problem(v.span(), &path, format!("{address} is listed twice"));
                continue;
            }
            let Some(version_url) = own
                .or_else(|| url.map(str::to_string))
                .map(|u| u.replace("{host}", &address))
            else {
                self.problem(
                    v.span(),
                    &path,
                    format!(
                        "{address} has no version URL: set {p}.version_url, e.g. \"http://{{host}}:8080/version\", \
                         or the host's own version_url"
                    ),
                );
                continue;
            };
            if crate::url::HttpTarget::parse(&version_url).is_err() {
                self.problem(
                    v.span(),
                    &path,
                    format!("version URL {version_url:?} is not http://HOST:PORT/PATH"),
                );
            }
            out.push(Host {
                address,
                version_url,
            });
        }
        Some(out)
    }

    fn files(
        &mut self,
        t: &dyn TableLike,
        p: &str,
        base: &Path,
    ) -> Option<BTreeMap<String, PathBuf>> {
        let path = join(p, "files");
        let mut out = BTreeMap::new();
        let Some(item) = t.get("files") else {
            return Some(out);
        };
        let Some(tab) = item.as_table_like() else {
            self.mistyped(
                item,
                &path,
                "a table of \"path in release\" = \"local file\"",
            );
            return None;
        };
        for (dest, v) in tab.iter() {
            let key = join(&path, dest);
            let Some(src) = v.as_str() else {
                self.mistyped(v, &key, "a string (the local file)");
                continue;
            };
            if dest.starts_with('/') || dest.split('/').any(|c| c == ".." || c.is_empty()) {
                self.problem(v.span(), &key, "must be a relative path inside the release");
                continue;
            }
            let src = base.join(src);
            if !src.is_file() {
                self.problem(
                    v.span(),
                    &key,
                    format!("{} is not a readable file", src.display()),
                );
                continue;
            }
            out.insert(dest.to_string(), src);
        }
        Some(out)
    }
}

/// Whether `prog` is on PATH.
pub fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .and_then(|p| crate::host::find_in_path(prog, &p))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(text, Path::new("deploy.toml"), Path::new("/tmp")) {
            Ok(_) => panic!("expected problems"),
            Err(p) => p
                .iter()
                .map(|p| format!("{:?} {} {}", p.line, p.key, p.message))
                .collect(),
        }
    }

    #[test]
    fn reads_a_full_file() {
        let text = r#"
service = "web"
[build]
command = "true"
artifact = "app.jar"
[environments.staging]
hosts = ["a", { address = "b", version_url = "http://b:9/v" }]
user = "deploy"
port = 2222
deploy_to = "/srv/web/"
version_url = "http://{host}:8080/version"
canary = 1
"#;
        let d = parse(text, Path::new("deploy.toml"), Path::new("/tmp")).expect("parses");
        let e = &d.envs["staging"];
        assert_eq!(e.hosts[0].version_url, "http://a:8080/version");
        assert_eq!(e.hosts[1].version_url, "http://b:9/v");
        assert_eq!(e.deploy_to, "/srv/web");
        assert_eq!(e.port, 2222);
        assert_eq!(e.keep_releases, 5);
        assert_eq!(e.config, "/etc/baton/web.toml");
        assert_eq!(d.build.artifact, Path::new("/tmp/app.jar"));
    }

    #[test]
    fn every_problem_with_line_and_key() {
        let p = problems(
            "service = \"web\"\nbuild = { command = \"x\" }\n[environments.prod]\nhosts = [\"a\", \"a\"]\nport = 0\ncanry = 1\nversion_url = \"ftp://x\"\ndeploy_to = \"/x\"\n",
        );
        let all = p.join("\n");
        assert!(all.contains("build.artifact is missing"), "{all}");
        assert!(
            all.contains("Some(4) environments.prod.hosts a is listed twice"),
            "{all}"
        );
        assert!(
            all.contains("Some(5) environments.prod.port 0 is out of range"),
            "{all}"
        );
        assert!(
            all.contains("Some(6) environments.prod.canry unknown key"),
            "{all}"
        );
        assert!(all.contains("is not http://HOST:PORT/PATH"), "{all}");
    }

    #[test]
    fn a_host_needs_a_version_url_of_its_own_or_the_environments() {
        let base = "service = \"w\"\n[build]\ncommand = \"x\"\nartifact = \"y\"\n[environments.p]\ndeploy_to = \"/x\"\n";
        let p = problems(&format!(
            "{base}hosts = [\"a\", {{ address = \"b\", version_url = \"http://b:1/v\" }}]\n"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("a has no version URL"), "{p:?}");
        let text =
            format!("{base}hosts = [{{ address = \"b\", version_url = \"http://b:1/v\" }}]\n");
        assert!(parse(&text, Path::new("d.toml"), Path::new("/tmp")).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 weeks").is_err());
    }
}
