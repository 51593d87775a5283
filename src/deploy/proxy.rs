//! Moves a proxy's traffic to a new instance: render, check, install, reload, confirm, put back.
//!
//! The live file is only ever replaced by rename, and only after the proxy
//! accepted a candidate, so a bad template can never reach a running proxy.
//! A reload's exit status proves nothing (`nginx -s reload` exits 0 when the
//! new config fails to load), so the switch counts as done only once requests
//! through the proxy reach the new PID.

use crate::config::Switch;
use crate::deploy::Backend;
use crate::error::{Error, Result};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a check or reload command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive answers from the new PID that count as a confirmed switch.
const CONFIRMATIONS: u32 = 3;

/// Expands `{port}`, `{pid}`, `{release}` and `{name}` in `template` for the instance `to`.
pub fn render(template: &str, name: &str, to: &Backend) -> std::result::Result<String, String> {
    let mut out = template
        .replace("{pid}", &to.pid.to_string())
        .replace("{name}", name);
    for (key, value) in [
        ("{port}", to.port.map(|p| p.to_string())),
        ("{release}", to.release.clone()),
    ] {
        if out.contains(key) {
            match value {
                Some(v) => out = out.replace(key, &v),
                None => {
                    return Err(format!(
                        "the template uses {key} but the new instance has none"
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// The main nginx config with every mention of the live upstream file pointing at the candidate.
pub fn check_config(
    main: &str,
    live: &Path,
    candidate: &Path,
) -> std::result::Result<String, String> {
    crate::config::host::nginx_includes(main, live).map_err(|e| format!("the main config {e}"))?;
    Ok(main.replace(
        live.to_string_lossy().as_ref(),
        &candidate.to_string_lossy(),
    ))
}

/// A rendered upstream file next to the live one, not yet installed; removed unless installed.
pub struct Candidate {
    path: PathBuf,
}

impl Candidate {
    /// Where the candidate lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A hidden name in `path`'s directory: a leading dot keeps it out of `include *.conf` globs.
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upstream".into());
    path.with_file_name(format!(".{file}.baton-{tag}.{}", std::process::id()))
}

/// Writes `text` as a candidate beside `sw.upstream` and has the proxy check it.
///
/// `nginx` selects nginx's check: `nginx -t` on a copy of the main config that
/// includes the candidate instead of the live file.
pub fn check(sw: &Switch, nginx: bool, text: &str) -> Result<Candidate> {
    let candidate = Candidate {
        path: sibling(&sw.upstream, "candidate"),
    };
    crate::files::write_atomic(&candidate.path, text.as_bytes(), 0o644)
        .map_err(|e| Error::io(format!("write {}", candidate.path.display()), &e))?;
    let mut copy = None;
    let config = if nginx {
        let main = std::fs::read_to_string(&sw.config)
            .map_err(|e| Error::io(format!("read {}", sw.config.display()), &e))?;
        let text = check_config(&main, &sw.upstream, &candidate.path)
            .map_err(|e| Error::unable(format!("check {}", sw.upstream.display()), e))?;
        // Same directory as the main config, so its relative includes still resolve.
        let path = sibling(&sw.config, "check");
        let removed = Removed(path.clone());
        crate::files::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| Error::io(format!("write {}", path.display()), &e))?;
        copy = Some(removed);
        path
    } else {
        sw.config.clone()
    };
    let argv: Vec<String> = sw
        .check
        .iter()
        .map(|a| {
            let a = a.replace("{candidate}", &candidate.path.to_string_lossy());
            if nginx {
                a.replace("{config}", &config.to_string_lossy())
            } else {
                a
            }
        })
        .collect();
    let result = run(&argv).map_err(|cause| {
        Error::unable(
            format!("check the candidate {}", candidate.path.display()),
            cause,
        )
        .hint(format!(
            "the live file {} is untouched; fix proxy.template",
            sw.upstream.display()
        ))
    });
    drop(copy);
    result.map(|()| candidate)
}

/// Removes a temporary file when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What was in the live file before a candidate replaced it: enough to put it back.
pub struct Installed {
    live: PathBuf,
    previous: Option<Vec<u8>>,
}

/// Renames `candidate` over the live file, keeping the previous contents for [`put_back`].
pub fn install(sw: &Switch, candidate: Candidate) -> Result<Installed> {
    let previous = match std::fs::read(&sw.upstream) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("read {}", sw.upstream.display()), &e)),
    };
    // Keep the live file's permissions: the proxy may run as a user that only reads it through them.
    if let Ok(meta) = std::fs::metadata(&sw.upstream) {
        let _ = std::fs::set_permissions(candidate.path(), meta.permissions());
    }
    std::fs::rename(candidate.path(), &sw.upstream).map_err(|e| {
        Error::io(
            format!(
                "install {} over {}",
                candidate.path().display(),
                sw.upstream.display()
            ),
            &e,
        )
    })?;
    // Renamed away: nothing left for the candidate's Drop to remove.
    Ok(Installed {
        live: sw.upstream.clone(),
        previous,
    })
}

/// Runs the reload command.
pub fn reload(sw: &Switch) -> Result<()> {
    run(&sw.reload).map_err(|cause| {
        Error::unable(format!("reload the proxy ({})", sw.reload.join(" ")), cause)
    })
}

/// Puts the previous live file back (atomically); the caller reloads.
pub fn put_back(installed: &Installed) -> Result<()> {
    match &installed.previous {
        Some(bytes) => crate::files::write_atomic(&installed.live, bytes, 0o644)
            .map_err(|e| Error::io(format!("restore {}", installed.live.display()), &e)),
        None => std::fs::remove_file(&installed.live)
            .map_err(|e| Error::io(format!("remove {}", installed.live.display()), &e)),
    }
}

/// What proves that a request through the proxy reached an instance.
enum Proof<'a> {
    /// The response carries the instance's PID in this header (the service must send it).
    Header(&'a str),
    /// A connection to the instance's own port appears: needs nothing from the service.
    Connection(u16),
}

impl Proof<'_> {
    fn of<'a>(sw: &'a Switch, to: &Backend) -> Proof<'a> {
        match (&sw.confirm_header, to.port) {
            (Some(h), _) => Proof::Header(h),
            (None, Some(port)) => Proof::Connection(port),
            // On a shared listening socket only the service itself can tell instances apart.
            (None, None) => Proof::Header("X-Pid"),
        }
    }
}

/// The connections to an instance's port before the proxy reloaded, for [`confirm`].
pub struct Baseline(std::collections::HashMap<(std::net::IpAddr, u16), bool>);

/// Takes the [`Baseline`] for `to`; call it before the reload that should move traffic.
pub fn baseline(sw: &Switch, to: &Backend) -> Baseline {
    Baseline(match Proof::of(sw, to) {
        Proof::Connection(port) => crate::sockets::peers_of(port),
        Proof::Header(_) => Default::default(),
    })
}

/// Requests `url` through the proxy (a fresh connection each time) until [`CONFIRMATIONS`]
/// answers in a row come from `to`; Ok says who answers, Err why it is not confirmed.
///
/// The proof is the instance's PID in `proxy.confirm_header` when one is configured, else
/// observation, which needs nothing from the service: after each request, /proc/net/tcp must
/// show a connection to `to`'s own port that is new since the previous request, or one the
/// proxy keeps established there and did not hold before the reload (`before`: with upstream
/// keepalive, the new workers' first connections may come before this looks); and the answer must not
/// be a gateway error. Only the proxy's new configuration connects to that port, so this
/// proves the reload took. The streak waits out the first requests after a reload, which may
/// still reach the previous worker generation.
pub fn confirm(
    sw: &Switch,
    url: &str,
    to: &Backend,
    before: &Baseline,
) -> std::result::Result<String, String> {
    let proof = Proof::of(sw, to);
    let timeout = sw.confirm_timeout;
    let deadline = crate::clock::after(Instant::now(), timeout);
    let want = to.pid.to_string();
    let before = &before.0;
    let mut seen: std::collections::HashSet<_> = before.keys().copied().collect();
    let mut streak = 0;
    let mut last = String::from("no answer yet");
    let mut answered = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let whom = match proof {
                Proof::Header(h) => format!("pid {} did not answer (by its {h} header)", to.pid),
                Proof::Connection(port) => {
                    format!("requests did not reach pid {} on port {port}", to.pid)
                }
            };
            return Err(format!(
                "{whom} {CONFIRMATIONS} times in a row within {} (last: {last})",
                crate::config::human(timeout)
            ));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(left.min(Duration::from_secs(1)))
            .timeout(left.min(Duration::from_secs(2)))
            .max_idle_connections(0)
            .redirects(0)
            .build();
        let response = match agent.get(url).set("Connection", "close").call() {
            Ok(r) => Some(r),
            Err(ureq::Error::Status(_, r)) => Some(r),
            Err(e) => {
                // An answer says more than the timeout of a request cut short by the deadline.
                if !answered || !left_was_short(left) {
                    last = e.to_string();
                }
                None
            }
        };
        answered |= response.is_some();
        let hit = match (response, &proof) {
            (None, _) => false,
            (Some(r), Proof::Header(h)) => {
                let got = r.header(h).map(str::trim).map(str::to_owned);
                last = match &got {
                    Some(p) => format!("HTTP {} from pid {p}", r.status()),
                    None => format!("HTTP {} without an {h} header", r.status()),
                };
                got.as_deref() == Some(want.as_str())
            }
            (Some(r), Proof::Connection(port)) => {
                let now = crate::sockets::peers_of(*port);
                // A connection opened for this request, or one the proxy keeps alive to the
                // new instance (upstream keepalive reuses it), opened since the reload.
                let fresh = now.keys().any(|p| !seen.contains(p));
                let kept = now.iter().any(|(p, up)| *up && !before.contains_key(p));
                seen.extend(now.keys().copied());
                let gateway_error = matches!(r.status(), 502..=504);
                last = format!(
                    "HTTP {}, {}",
                    r.status(),
                    if fresh || kept {
                        format!("a connection to port {port}")
                    } else {
                        format!("no connection to port {port}")
                    }
                );
                (fresh || kept) && !gateway_error
            }
        };
        if hit {
            streak += 1;
            if streak == CONFIRMATIONS {
                return Ok(match proof {
                    Proof::Header(_) => format!("pid {} answers", to.pid),
                    Proof::Connection(port) => {
                        format!(
                            "requests reach pid {} (new connections to port {port})",
                            to.pid
                        )
                    }
                });
            }
            continue;
        }
        streak = 0;
        std::thread::sleep(
            Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
}

/// Whether a request had less time than a proxy needs to answer (it was cut short, not refused).
fn left_was_short(left: Duration) -> bool {
    left < Duration::from_millis(500)
}

/// Runs `argv` to completion within [`COMMAND_TIMEOUT`]; on failure, its output as one line.
///
/// Output goes to an unlinked temporary file, not a pipe: a reload command that
/// leaves a daemon behind (haproxy -D) would hold a pipe open forever.
fn run(argv: &[String]) -> std::result::Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut out = tempfile().map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let stdout = out.try_clone().map_err(|e| e.to_string())?;
    let stderr = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {COMMAND_TIMEOUT:?}; killed",
                    argv.join(" ")
                ));
            }
            Err(e) => return Err(format!("cannot wait for {program}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = out.rewind();
    let _ = out.take(64 * 1024).read_to_string(&mut text);
    let text = one_line(&text);
    Err(if text.is_empty() {
        format!("{} exited with {status}", argv.join(" "))
    } else {
        format!("{text} ({program} exited with {status})")
    })
}

/// Joins non-empty lines with "; " so a multi-line message stays one protocol line.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// An anonymous temporary file: it never has a name another user could plant or race.
fn tempfile() -> std::io::Result<std::fs::File> {
    crate::files::Dir::open(&std::env::temp_dir())?.anonymous()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        Backend {
            pid: 4242,
            port: Some(20001),
            release: Some("20261122".into()),
        }
    }

    #[test]
    fn render_expands_every_placeholder() {
        let t = "server 127.0.0.1:{port}; # {name} pid {pid} release {release}\n";
        assert_eq!(
            render(t, "web", &backend()).as_deref(),
            Ok("server 127.0.0.1:20001; # web pid 4242 release 20261122\n")
        );
    }

    #[test]
    fn render_refuses_a_placeholder_without_a_value() {
        let b = Backend {
            port: None,
            release: None,
            ..backend()
        };
        assert!(render("server 127.0.0.1:{port};", "web", &b)
            .expect_err("must fail")
            .contains("{port}"));
        assert!(render("# {release}", "web", &b)
            .expect_err("must fail")
            .contains("{release}"));
        assert_eq!(render("# {pid}", "web", &b).as_deref(), Ok("# 4242"));
    }

    #[test]
    fn check_config_points_every_include_at_the_candidate() {
        let main = "http {\n upstream a { include /etc/nginx/web.upstream; }\n # /etc/nginx/web.upstream\n}\n";
        let out = check_config(
            main,
            Path::new("/etc/nginx/web.upstream"),
            Path::new("/etc/nginx/.web.upstream.baton-candidate.7"),
        );
        assert_eq!(
            out.as_deref(),
            Ok("http {\n upstream a { include /etc/nginx/.web.upstream.baton-candidate.7; }\n # /etc/nginx/.web.upstream.baton-candidate.7\n}\n")
        );
    }

    #[test]
    fn check_config_refuses_a_config_that_does_not_include_the_file() {
        let main = "http { include conf.d/*.upstream; }";
        let err = check_config(
            main,
            Path::new("/etc/nginx/conf.d/web.upstream"),
            Path::new("/x"),
        )
        .expect_err("must fail");
        assert!(err.contains("include it by that path"), "{err}");
        assert!(err.contains("kind = \"command\""), "{err}");
    }

    #[test]
    fn sibling_is_hidden_and_in_the_same_directory() {
        let p = sibling(Path::new("/etc/nginx/conf.d/web.conf"), "candidate");
        assert_eq!(p.parent(), Some(Path::new("/etc/nginx/conf.d")));
        let f = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(f.starts_with(".web.conf.baton-candidate."), "{f}");
        assert!(!f.ends_with(".conf"));
    }

    #[test]
    fn run_reports_the_commands_output_as_one_line() {
        let argv: Vec<String> = [
            "sh",
            "-c",
            "echo 'first problem'; echo 'second' >&2; exit 1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let err = run(&argv).expect_err("must fail");
        assert!(err.starts_with("first problem; second ("), "{err}");
        assert!(run(&["true".to_string()]).is_ok());
    }
}
