//! `baton ship ENV --status`: every host's release, version, supervisor state and version URL, read over SSH in parallel.

use super::config::{DeployFile, Env};
use super::http;
use super::rollout::read_current;
use super::ssh::Ssh;
use crate::error::{Error, Result};
use crate::shell::quote as sh_quote;
use serde::Serialize;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One host as `--status` sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostStatus {
    /// The host.
    pub host: String,
    /// The release `current` points to.
    pub release: Option<String>,
    /// That release's version (its properties file).
    pub version: Option<String>,
    /// When `current` last moved (RFC 3339, UTC).
    pub since: Option<String>,
    /// The supervisor's state (ready, starting, crash-looping, failed, not running...).
    pub state: Option<String>,
    /// The release the supervisor says serves.
    pub serving: Option<String>,
    /// The registry lease line of the supervisor's status, when it keeps one.
    pub registry_lease: Option<String>,
    /// What the version URL answered (its version), if it answered 200.
    pub answers: Option<String>,
    /// Why something could not be read.
    pub problem: Option<String>,
}

impl HostStatus {
    /// Reachable, supervised and ready, answering the version of its current release.
    pub fn healthy(&self) -> bool {
        self.problem.is_none()
            && self.state.as_deref() == Some("ready")
            && self.answers.is_some()
            && self.answers == self.version
    }
}

const MARK: &str = "---baton-status---";

fn read_host(ssh: &Ssh, env: &Env, address: &str, version_url: &str) -> HostStatus {
    let mut s = HostStatus {
        host: address.to_string(),
        ..HostStatus::default()
    };
    let root = sh_quote(&env.deploy_to);
    let script = format!(
        "{}\nstat -c 'since=%Y' {root}/current 2>/dev/null\necho {MARK}\n{} --config {} status --json 2>/dev/null\ntrue\n",
        read_current(env),
        sh_quote(&env.baton),
        sh_quote(&env.config)
    );
    let out = ssh.exec(address, &script, Duration::from_secs(30), |_| {});
    if out.code == Some(255) || !out.ok() {
        s.problem = Some(format!("ssh: {}", out.reason()));
    } else {
        let (files, status) = out.stdout.split_once(MARK).unwrap_or((&out.stdout, ""));
        let field = |key: &str| {
            files
                .lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                .filter(|v| !v.is_empty())
        };
        s.release = field("release=");
        s.version = field("version=");
        s.since = field("since=")
            .and_then(|t| t.parse::<u64>().ok())
            .map(|t| crate::deploy::registry::rfc3339(UNIX_EPOCH + Duration::from_secs(t)));
        match serde_json::from_str::<crate::control::Report>(status.trim()) {
            Ok(r) => {
                s.state = Some(r.state);
                s.serving = r.release;
                s.registry_lease = r.registry_lease;
            }
            Err(_) => {
                s.problem = Some(format!(
                    "no status from {} --config {}",
                    env.baton, env.config
                ))
            }
        }
    }
    match http::get(version_url, Duration::from_secs(3)) {
        Ok((200, body)) => s.answers = Some(http::version_of(&body)),
        Ok((code, _)) => {
            s.problem
                .get_or_insert(format!("GET {version_url}: HTTP {code}"));
        }
        Err(e) => {
            s.problem.get_or_insert(format!("GET {version_url}: {e}"));
        }
    }
    s
}

/// Reads every host (at most max_parallel at once) and prints a table or JSON; Ok(0) if every host is healthy.
pub fn run(df: &DeployFile, env: &Env, json: bool) -> Result<i32> {
    let ssh = Arc::new(Ssh::new(env)?);
    let env = Arc::new(env.clone());
    let mut rows: Vec<Option<HostStatus>> = vec![None; env.hosts.len()];
    let (tx, rx) = mpsc::channel();
    let mut next = 0;
    let mut in_flight = 0;
    while next < env.hosts.len() || in_flight > 0 {
        while next < env.hosts.len() && in_flight < env.max_parallel.max(1) {
            let (ssh, env, tx) = (Arc::clone(&ssh), Arc::clone(&env), tx.clone());
            let i = next;
            std::thread::spawn(move || {
                let h = &env.hosts[i];
                let _ = tx.send((i, read_host(&ssh, &env, &h.address, &h.version_url)));
            });
            next += 1;
            in_flight += 1;
        }
        match rx.recv() {
            Ok((i, s)) => {
                rows[i] = Some(s);
                in_flight -= 1;
            }
            Err(_) => break,
        }
    }
    for h in &env.hosts {
        ssh.close(&h.address);
    }
    let rows: Vec<HostStatus> = rows.into_iter().flatten().collect();
    let lock = lock_line(df, &env);
    if json {
        let v = serde_json::json!({
            "service": df.service,
            "environment": env.name,
            "checked": crate::deploy::registry::rfc3339(SystemTime::now()),
            "lock": lock,
            "hosts": rows,
        });
        println!("{v:#}");
    } else {
        print!("{}", table(&rows));
        if let Some(l) = &lock {
            println!("fleet lock: {l}");
        }
    }
    let bad = rows.iter().filter(|r| !r.healthy()).count();
    if bad == 0 {
        Ok(0)
    } else {
        Err(Error::unable(
            format!("confirm {} in {}", df.service, env.name),
            format!(
                "{bad} of {} host(s) not ready on their current release's version",
                rows.len()
            ),
        )
        .hint("see the table above"))
    }
}

/// Who holds the fleet lock, from etcd, when the environment names members.
fn lock_line(df: &DeployFile, env: &Env) -> Option<String> {
    if env.etcd.is_empty() {
        return None;
    }
    let key = super::lock::key(&df.service, &env.name);
    let client = crate::etcd::Client::new(&env.etcd);
    Some(match client.get(&key) {
        Ok(Some(kv)) => format!("{key} held by {}", super::lock::holder_of(&kv.value)),
        Ok(None) => format!("{key} free"),
        Err(e) => format!("{key} unknown: {e}"),
    })
}

fn cell(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// HOST RELEASE VERSION SINCE STATE ANSWERS, then problems.
pub fn table(rows: &[HostStatus]) -> String {
    let mut cells =
        vec![["HOST", "RELEASE", "VERSION", "SINCE", "STATE", "ANSWERS"].map(String::from)];
    for r in rows {
        cells.push([
            r.host.clone(),
            cell(&r.release),
            cell(&r.version),
            cell(&r.since),
            cell(&r.state),
            match (&r.answers, &r.problem) {
                (Some(v), _) => v.clone(),
                (None, Some(_)) => "no".into(),
                (None, None) => "-".into(),
            },
        ]);
    }
    let mut w = [0usize; 6];
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:w$}", w = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows {
        if let Some(p) = &r.problem {
            out.push_str(&format!("{}: {p}\n", r.host));
        }
        if let Some(l) = &r.registry_lease {
            out.push_str(&format!("{}: registry {l}\n", r.host));
        }
    }
    out
}
