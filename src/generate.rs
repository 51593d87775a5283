//! Renders the files other init systems need to drive baton: an LSB init script and a systemd unit.
//!
//! Both are thin: every decision (readiness, the stop ladder, PID file checks,
//! exit codes) stays in baton, so a generated file only says *which* baton to
//! call with *which* config. The Chef cookbook renders the same text from its
//! own ERB copies (`chef/templates/`); `tests/provisioning/` checks they agree.

use crate::shell::quote_always;
use std::path::Path;
use std::time::Duration;

/// What a generated file needs to know about one service.
pub struct Target<'a> {
    /// Service name: the init script's name (`Provides:`) and baton's NAME argument.
    pub name: &'a str,
    /// The service's config file, passed to baton as `--config`.
    pub config: &'a Path,
    /// Absolute path of the baton binary.
    pub baton: &'a Path,
    /// One line for humans (`Short-Description:`, `Description=`).
    pub description: &'a str,
    /// baton's own `[stop] timeout`; systemd must wait longer than this.
    pub stop_timeout: Duration,
    /// Where baton keeps the PID file (documented in the init script header).
    pub pidfile: &'a Path,
    /// True when baton's `[restart] policy` restarts the service, so systemd must not.
    pub baton_restarts: bool,
}

/// The LSB init script template; `@KEY@` placeholders are filled by [`init_script`].
const INIT_TEMPLATE: &str = include_str!("../init.d/baton.init.in");

/// How much longer than baton's stop timeout systemd waits before its own SIGKILL:
/// baton still has to SIGKILL the group, reap it and remove its files.
const STOP_MARGIN: Duration = Duration::from_secs(15);

/// Renders the LSB init script for `t`.
pub fn init_script(t: &Target) -> String {
    let name = one_line(t.name);
    let description = one_line(t.description);
    let config = one_line(&t.config.to_string_lossy());
    let baton = one_line(&t.baton.to_string_lossy());
    let pidfile = one_line(&t.pidfile.to_string_lossy());
    // The longer keys first, so `@NAME@` never eats part of `@NAME_SH@`.
    [
        ("@NAME_SH@", quote_always(&name)),
        ("@DESCRIPTION_SH@", quote_always(&description)),
        ("@BATON_SH@", quote_always(&baton)),
        ("@CONFIG_SH@", quote_always(&config)),
        ("@NAME@", name),
        ("@DESCRIPTION@", description),
        ("@PIDFILE@", pidfile),
    ]
    .iter()
    .fold(INIT_TEMPLATE.to_string(), |text, (key, value)| {
        text.replace(key, value)
    })
}

/// Renders a systemd unit that runs `baton run NAME` in the foreground as a `Type=notify` service.
pub fn systemd_unit(t: &Target) -> String {
    let call = |verb: &str| {
        let config = t.config.to_string_lossy();
        let baton = t.baton.to_string_lossy();
        [baton.as_ref(), "--config", config.as_ref(), verb, t.name]
            .iter()
            .map(|arg| unit_arg(arg))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let stop_secs = t.stop_timeout.saturating_add(STOP_MARGIN).as_secs()
        + u64::from(t.stop_timeout.subsec_nanos() > 0);
    let restart = if t.baton_restarts {
        "# baton restarts the service ([restart] policy); systemd restarting too would double it.\n\
         Restart=no\n"
    } else {
        "# baton's [restart] policy is \"never\": systemd restarts a failed service.\n\
         Restart=on-failure\n\
         RestartSec=1\n"
    };
    format!(
        "# Rendered by `baton generate systemd-unit`: baton supervises {name}, systemd supervises baton.\n\
         [Unit]\n\
         Description={description}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={start}\n\
         ExecReload={reload}\n\
         # baton gives up on readiness after its own [ready] timeout and exits non-zero.\n\
         TimeoutStartSec=infinity\n\
         # baton stops the whole tree (stop signal, then SIGKILL after its stop timeout):\n\
         # systemd signals baton alone, and kills leftovers only after TimeoutStopSec.\n\
         KillMode=mixed\n\
         TimeoutStopSec={stop_secs}\n\
         # baton puts the service in a cgroup of its own below this unit's ([process] cgroup):\n\
         # the only way it tells the service's processes from daemons its proxy reload starts.\n\
         Delegate=yes\n\
         {restart}\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = one_line(t.name),
        description = one_line(t.description).replace('%', "%%"),
        start = call("run"),
        // A reload applies the config on disk by a zero-downtime handoff; the service's own
        // reload signal is `baton signal NAME HUP`.
        reload = call("deploy"),
    )
}

/// Values land on one line of a header or an assignment: control characters become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One word of an `Exec*=` line: `%` and `$` are systemd's, so doubled; quoted when it has spaces.
fn unit_arg(s: &str) -> String {
    let s = s.replace('%', "%%").replace('$', "$$");
    if !s.is_empty()
        && !s.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return s;
    }
    format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn target<'a>(
        name: &'a str,
        description: &'a str,
        baton: &'a Path,
        restarts: bool,
    ) -> Target<'a> {
        Target {
            name,
            config: Path::new("/etc/baton/web.toml"),
            baton,
            description,
            stop_timeout: Duration::from_secs(30),
            pidfile: Path::new("/run/baton/web.pid"),
            baton_restarts: restarts,
        }
    }

    fn web() -> Target<'static> {
        target("web", "Web shop", Path::new("/usr/local/bin/baton"), true)
    }

    fn header(script: &str) -> Vec<&str> {
        let start = script.find("### BEGIN INIT INFO").expect("header start");
        let end = script.find("### END INIT INFO").expect("header end");
        script[start..end].lines().skip(1).collect()
    }

    /// A fresh directory under the system's temp dir, removed when dropped (also on a failed assert).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static DIRS: AtomicUsize = AtomicUsize::new(0);
            let n = DIRS.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("baton-generate-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs the rendered script with sh; returns (exit code, stdout + stderr).
    fn run_script(script: &str, action: &str) -> (i32, String) {
        let dir = TempDir::new();
        let path = dir.0.join("script");
        std::fs::write(&path, script).expect("write script");
        let out = Command::new("sh")
            .arg(&path)
            .arg(action)
            .output()
            .expect("run sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().expect("exit code"), text)
    }

    #[test]
    fn init_script_fills_every_placeholder() {
        let s = init_script(&web());
        assert!(s.starts_with("#!/bin/sh\n"));
        let leftover = s
            .split('@')
            .skip(1)
            .step_by(2)
            .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        assert_eq!(leftover, None, "unfilled placeholder in:\n{s}");
        assert!(s.contains("NAME='web'\n"));
        assert!(s.contains("BATON='/usr/local/bin/baton'\n"));
        assert!(s.contains("CONFIG='/etc/baton/web.toml'\n"));
        assert!(s.contains("# pidfile: /run/baton/web.pid\n"));
    }

    #[test]
    fn init_script_has_the_lsb_header_insserv_needs() {
        let s = init_script(&web());
        let h = header(&s);
        for want in [
            "# Provides:          web",
            "# Required-Start:    $remote_fs $syslog $network",
            "# Required-Stop:     $remote_fs $syslog $network",
            "# Default-Start:     2 3 4 5",
            "# Default-Stop:      0 1 6",
            "# Short-Description: Web shop",
        ] {
            assert!(h.contains(&want), "missing {want:?} in {h:#?}");
        }
        // Continuation lines of Description start with '#' and two or more spaces.
        assert!(
            h.iter()
                .all(|l| l.starts_with("# ") || l.starts_with("#\t")),
            "{h:#?}"
        );
    }

    #[test]
    fn init_script_quotes_values_for_the_shell() {
        let t = target(
            "web",
            "Bob's $(shop)\nline two",
            Path::new("/opt/my baton/baton"),
            true,
        );
        let s = init_script(&t);
        assert!(s.contains(r"DESC='Bob'\''s $(shop) line two'"), "{s}");
        assert!(s.contains("# Short-Description: Bob's $(shop) line two\n"));
        assert!(s.contains("BATON='/opt/my baton/baton'\n"));
        let check = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .status()
            .expect("sh -n");
        assert!(check.success());
    }

    #[test]
    fn init_script_exit_codes_without_baton() {
        let missing = PathBuf::from("/nonexistent/baton");
        let s = init_script(&target("web", "Web", &missing, true));
        let (code, out) = run_script(&s, "bogus");
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("Usage:"), "{out}");
        let (code, out) = run_script(&s, "start");
        assert_eq!(code, 5, "{out}");
        assert!(
            out.contains("unable to start web: /nonexistent/baton is not installed"),
            "{out}"
        );
        assert_eq!(run_script(&s, "status").0, 4);
        assert_eq!(run_script(&s, "").0, 2);
    }

    #[test]
    fn init_script_passes_baton_exit_codes_through() {
        // A stand-in baton that exits with the code named by its action.
        let dir = TempDir::new();
        let fake = dir.0.join("baton");
        std::fs::write(
            &fake,
            "#!/bin/sh\n[ \"$1 $2\" = '--config /etc/baton/web.toml' ] || exit 99\n[ \"$4\" = web ] || exit 98\n\
             echo \"baton says $3\" >&2\ncase $3 in start) exit 0;; stop) exit 1;; deploy) exit 7;; status) exit 3;; *) exit 6;; esac\n",
        )
        .expect("write fake baton");
        Command::new("chmod")
            .arg("755")
            .arg(&fake)
            .status()
            .expect("chmod");
        let s = init_script(&target("web", "Web", &fake, true));
        // ACTION, the baton command it runs, the code: reloads are config handoffs.
        let cases = [
            ("start", "start", 0),
            ("stop", "stop", 1),
            ("reload", "deploy", 7),
            ("status", "status", 3),
            ("restart", "restart", 6),
            ("try-restart", "try-restart", 6),
            ("force-reload", "deploy", 7),
        ];
        for (action, command, want) in cases {
            let (code, out) = run_script(&s, action);
            // Root-only check reads /etc/baton/web.toml; absent here, so it never fires.
            assert_eq!(code, want, "{action}: {out}");
            assert!(
                out.contains(&format!("baton says {command}")),
                "{action}: {out}"
            );
        }
    }

    #[test]
    fn systemd_unit_runs_baton_in_the_foreground() {
        let u = systemd_unit(&web());
        for want in [
            "[Unit]\n",
            "Description=Web shop\n",
            "[Service]\nType=notify\n",
            "ExecStart=/usr/local/bin/baton --config /etc/baton/web.toml run web\n",
            "ExecReload=/usr/local/bin/baton --config /etc/baton/web.toml deploy web\n",
            "KillMode=mixed\n",
            "Delegate=yes\n",
            "[Install]\nWantedBy=multi-user.target\n",
        ] {
            assert!(u.contains(want), "missing {want:?} in:\n{u}");
        }
    }

    #[test]
    fn systemd_waits_longer_than_baton_to_stop() {
        let mut t = web();
        t.stop_timeout = Duration::from_millis(30_500);
        let u = systemd_unit(&t);
        let secs: u64 = u
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("TimeoutStopSec")
            .parse()
            .expect("whole seconds");
        assert!(Duration::from_secs(secs) > t.stop_timeout, "{secs}");
        assert_eq!(secs, 46);
    }

    #[test]
    fn exactly_one_of_baton_and_systemd_restarts() {
        let by_baton = systemd_unit(&web());
        assert!(by_baton.contains("\nRestart=no\n"));
        assert!(!by_baton.contains("Restart=on-failure"));
        let mut t = web();
        t.baton_restarts = false;
        let by_systemd = systemd_unit(&t);
        assert!(by_systemd.contains("\nRestart=on-failure\n"));
        assert!(!by_systemd.contains("Restart=no"));
        assert_eq!(by_systemd.matches("\nRestart=").count(), 1);
    }

    #[test]
    fn systemd_unit_escapes_specifiers_and_spaces() {
        let t = Target {
            config: Path::new("/etc/my baton/100%.toml"),
            ..target("web", "50% $HOME", Path::new("/usr/bin/baton"), true)
        };
        let u = systemd_unit(&t);
        assert!(u.contains("Description=50%% $HOME\n"), "{u}");
        assert!(
            u.contains("ExecStart=/usr/bin/baton --config \"/etc/my baton/100%%.toml\" run web\n"),
            "{u}"
        );
        assert_eq!(unit_arg("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(unit_arg("$X"), "$$X");
        assert_eq!(unit_arg(""), "\"\"");
    }
}
