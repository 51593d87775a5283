//! What one ship produces before any host is touched: the release's identity, the build, the staged files.

use super::config::{DeployFile, Env};
use super::ssh;
use crate::deploy::release::utc_stamps;
use crate::error::{Error, Result};
use crate::files::Dir;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The identity of one release, written into every host's properties file.
#[derive(Debug, Clone)]
pub struct Release {
    /// Capistrano-style `YYYYMMDDHHMMSS` (UTC).
    pub id: String,
    /// What the hosts must report afterwards.
    pub version: String,
    /// `git rev-parse HEAD` of the deploy file's directory, or "unknown".
    pub commit: String,
    /// When the ship started (UTC, RFC 3339).
    pub build_time: String,
    /// Who shipped it.
    pub shipped_by: String,
    /// The environment's name.
    pub environment: String,
}

impl Release {
    /// Names the release shipped now from `df` to `env`.
    pub fn new(df: &DeployFile, env: &Env, version: Option<&str>) -> Release {
        let (id, build_time) = utc_stamps(SystemTime::now());
        let version = version
            .map(str::to_string)
            .or_else(|| git(&df.base, &["describe", "--tags", "--always", "--dirty"]))
            .unwrap_or_else(|| id.clone());
        Release {
            id,
            version,
            commit: git(&df.base, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            build_time,
            shipped_by: shipped_by(),
            environment: env.name.clone(),
        }
    }

    /// The properties file the service serves, for `host`.
    pub fn properties(&self, host: &str) -> String {
        format!(
            "version={}\ncommit={}\nbuild_time={}\nshipped_by={}\nenvironment={}\nhost={host}\nrelease={}\n",
            self.version, self.commit, self.build_time, self.shipped_by, self.environment, self.id
        )
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// The shipping user: `$USER`, else the password database's name for our uid.
fn shipped_by() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::effective())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the build once, locally; on failure the error carries the build's output.
pub fn build(df: &DeployFile, rel: &Release) -> Result<Duration> {
    let started = Instant::now();
    let mut c = Command::new("sh");
    // One stream, so the output reads in the order it was printed.
    c.arg("-c")
        .arg(format!("exec 2>&1\n{}", df.build.command))
        .current_dir(&df.base)
        .env("BATON_VERSION", &rel.version)
        .env("BATON_RELEASE", &rel.id)
        .env("BATON_ENV", &rel.environment);
    let out = ssh::run(c, Duration::from_secs(3600), |_| {});
    if !out.ok() {
        let text = out.stdout.trim_end();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        return Err(Error::unable(
            format!("build {}", rel.version),
            format!(
                "`{}` failed ({}); no host was touched. Its output:\n{tail}",
                df.build.command,
                match out.code {
                    Some(c) => format!("exit {c}"),
                    None if out.timed_out => "timed out".into(),
                    None => "killed".into(),
                }
            ),
        )
        .hint(format!(
            "run `{}` in {} and fix the build",
            df.build.command,
            df.base.display()
        )));
    }
    if !df.build.artifact.exists() {
        return Err(Error::unable(
            format!("find the artifact {}", df.build.artifact.display()),
            "the build succeeded but did not produce it; no host was touched",
        )
        .hint("check build.artifact in the deploy file"));
    }
    Ok(started.elapsed())
}

/// Writes each host's release files (config files, properties, REVISION) under `root/HOST/`.
///
/// `root` is a private directory made for this ship alone (see [`crate::files::Dir::create_private`]);
/// every file in it is created anew (`O_EXCL|O_NOFOLLOW`), so nothing another local user
/// planted can be overwritten or shipped. Modes are the ones the hosts should get
/// (rsync -a keeps them): directories 0755, files 0644.
pub fn stage(env: &Env, rel: &Release, root: &Dir) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for h in &env.hosts {
        let host = Path::new(&h.address);
        let write = |rel_path: &str, text: &[u8]| -> Result<()> {
            root.create_tree_file(&host.join(rel_path), text, 0o755, 0o644)
                .map_err(|e| Error::io(format!("stage {rel_path} for {}", h.address), &e))
        };
        for (dest, src) in &env.files {
            let text =
                std::fs::read(src).map_err(|e| Error::io(format!("read {}", src.display()), &e))?;
            write(dest, &text)?;
        }
        write(&env.properties, rel.properties(&h.address).as_bytes())?;
        write("REVISION", format!("{}\n", rel.commit).as_bytes())?;
        dirs.push(root.path().join(host));
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn stamps() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_392_000 + 3723);
        let (id, iso) = utc_stamps(t);
        assert_eq!(id, "20261123010203");
        assert_eq!(iso, "2026-11-23T01:02:03Z");
        assert_eq!(
            utc_stamps(UNIX_EPOCH + Duration::from_secs(951_782_400)).0,
            "20000229000000"
        );
    }
}
