//! `baton`'s front (src/front.rs): a root stop whose card matches is sent by the front
//! before the core runs, with the core's very request line, and the core follows it up;
//! every stop the front cannot make itself is the core's whole, before any request; what
//! a local user can plant on the front's way is never followed; and the handoff's
//! environment entry is the front's alone. Root only (stop cards are root's); without it
//! they skip with a message.

use crate::harness;

use harness::{alive, skip_unless_root, wait_until, Run, Svc, User};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Why these tests are skipped when not run as root.
const ROOT_ONLY: &str = "the front's stop follows root's stop cards only";

/// The index of the first trace line holding all of `parts`.
fn line_with(trace: &[String], parts: &[&str]) -> Option<usize> {
    trace
        .iter()
        .position(|l| parts.iter().all(|p| l.contains(p)))
}

/// The index of the exec of the core.
fn core_exec(trace: &[String]) -> usize {
    line_with(trace, &["execve(", "-core\", [", "= 0"])
        .unwrap_or_else(|| panic!("the front never ran its core:\n{}", trace.join("\n")))
}

/// The line of the request a trace sent, if any: the string strace shows.
fn request_sent(trace: &[String]) -> Option<(usize, String)> {
    let i = line_with(trace, &["\\\"request\\\":\\\"stop\\\""])?;
    let l = &trace[i];
    let start = l.find("\"{")?;
    let end = l[start..].find("}\\n\"")? + start;
    Some((i, l[start + 1..end + 1].to_string()))
}

/// `strace -f -s 512 EXTRA -o TRACE` followed by what `set` adds (the program, its
/// arguments, its environment, its directory): what the command said, and its system
/// calls, one a line.
fn strace(svc: &Svc, extra: &[&str], set: impl FnOnce(&mut Command)) -> (Run, Vec<String>) {
    let out = svc.path("front.trace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-s", "512"])
        .args(extra)
        .arg("-o")
        .arg(&out);
    set(&mut cmd);
    let run: Run = cmd.output().expect("strace").into();
    let trace = std::fs::read_to_string(&out)
        .expect("the trace")
        .lines()
        .map(str::to_string)
        .collect();
    (run, trace)
}

fn started(name: &str) -> Svc {
    let svc = Svc::new(name, r#"["sleep", "300"]"#, "");
    svc.start();
    svc
}

#[test]
fn the_front_sends_the_stop_before_its_core_runs_and_the_core_follows_it_up() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let svc = started("fsend");
    let pid = svc.pid_in_file().expect("a PID file once started");
    let (run, trace) = svc.traced(&["stop"]);
    assert_eq!(run.code, 0, "stop: {run:?}");
    assert!(run.stdout.contains("fsend stopped"), "{run:?}");
    assert!(
        run.stderr.contains("sent SIGTERM"),
        "the supervisor's progress reached the operator: {run:?}"
    );
    let (sent, _) = request_sent(&trace)
        .unwrap_or_else(|| panic!("no request in the trace:\n{}", trace.join("\n")));
    assert!(
        sent < core_exec(&trace),
        "the request was not sent before the core ran:\n{}",
        trace.join("\n")
    );
    // The core neither locks again nor asks again: the front's lock and socket are its.
    let after = &trace[core_exec(&trace)..];
    assert!(
        request_sent(after).is_none() && line_with(after, &["start.lock"]).is_none(),
        "the core repeated the front's work:\n{}",
        after.join("\n")
    );
    wait_until(T, "the service gone", || !alive(pid));
    assert!(svc.processes().is_empty(), "the service outlived its stop");
}

/// The stop request `bin --config FILE stop` sends, run with `env` (None: unset) under
/// strace.
fn request_of(svc: &Svc, bin: &std::path::Path, env: &[(&str, Option<&str>)]) -> String {
    let (run, trace) = strace(svc, &[], |cmd| {
        cmd.arg(bin).arg("--config").arg(&svc.config).arg("stop");
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
    });
    assert_eq!(run.code, 0, "stop by {}: {run:?}", bin.display());
    request_sent(&trace)
        .unwrap_or_else(|| panic!("no request:\n{}", trace.join("\n")))
        .1
}

#[test]
fn the_fronts_request_is_byte_for_byte_the_cores() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let svc = started("fline");
    // Who asked, as host::operator and control::audit_name make it: SUDO_USER when set,
    // even empty (then no one), else USER, kept to a user name's characters.
    let cases: [&[(&str, Option<&str>)]; 3] = [
        &[("SUDO_USER", None), ("USER", Some("root"))],
        &[("SUDO_USER", Some("")), ("USER", Some("op"))],
        &[("SUDO_USER", Some("al ice\"@x!")), ("USER", Some("op"))],
    ];
    let mut seen = Vec::new();
    for env in cases {
        let front = request_of(&svc, &harness::baton_bin(), env);
        // The core run directly makes the whole stop itself.
        svc.start();
        let core = request_of(&svc, &harness::core_bin(), env);
        assert_eq!(
            front, core,
            "the front's request differs from the core's with {env:?}"
        );
        seen.push(front);
        svc.start();
    }
    assert!(
        seen[0].contains("root") && !seen[1].contains("\\\"by\\\""),
        "{seen:?}"
    );
    assert!(seen[2].contains("alice@x"), "{seen:?}");
    svc.stop();
}

#[test]
fn every_stop_the_front_cannot_make_is_the_cores_whole_before_any_request() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let svc = started("fwhole");
    let before_core = |trace: &[String]| {
        let at = core_exec(trace);
        request_sent(&trace[..at]).is_none() && line_with(&trace[..at], &["connect("]).is_none()
    };

    // A config edited since the start (its change time moved): the card no longer matches.
    let text = std::fs::read_to_string(&svc.config).expect("config");
    std::fs::write(&svc.config, text).expect("rewrite config");
    let (run, trace) = svc.traced(&["stop"]);
    assert_eq!(run.code, 0, "stop after an edit: {run:?}");
    assert!(run.stdout.contains("fwhole stopped"), "{run:?}");
    assert!(
        before_core(&trace),
        "an edited config's stop was sent by the front:\n{}",
        trace.join("\n")
    );

    // Not running: the core says so.
    let (run, trace) = svc.traced(&["stop"]);
    assert_eq!(run.code, 0, "stop when stopped: {run:?}");
    assert!(run.stdout.contains("not running"), "{run:?}");
    assert!(before_core(&trace), "{}", trace.join("\n"));

    // A relative config path and an unusual order of words: clap's, in the core.
    svc.start();
    let rel = svc
        .config
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (run, trace) = strace(&svc, &[], |cmd| {
        cmd.arg(harness::baton_bin())
            .args(["stop", "--config", &rel])
            .current_dir(&svc.dir);
    });
    assert_eq!(run.code, 0, "stop --config RELATIVE: {run:?}");
    assert!(run.stdout.contains("fwhole stopped"), "{run:?}");
    assert!(before_core(&trace), "{}", trace.join("\n"));
    assert!(svc.processes().is_empty(), "the service outlived its stop");
}

#[test]
fn a_link_planted_as_the_command_lock_is_not_followed_by_the_front() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bfront");
    let svc = started("flink");
    let pid = svc.pid_in_file().expect("a PID file");
    // The state directory is the user's (as when a config gives the service user its own):
    // the user swaps the command lock for a link to a file of root's.
    let state = svc.path("state");
    let victim = svc.path("victim");
    std::fs::write(&victim, "root's\n").expect("victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let chown = std::process::Command::new("chown")
        .arg(format!("{0}:{0}", user.name))
        .arg(&state)
        .status()
        .expect("chown");
    assert!(chown.success());
    user.sh(&format!(
        "rm -f {s}/start.lock && ln -s {v} {s}/start.lock",
        s = state.display(),
        v = victim.display()
    ));
    let (run, trace) = svc.traced(&["stop"]);
    let at = core_exec(&trace);
    assert!(
        request_sent(&trace[..at]).is_none(),
        "the front sent a stop through a planted lock:\n{}",
        trace.join("\n")
    );
    assert!(
        line_with(&trace[..at], &["\"start.lock\"", "ELOOP"]).is_some(),
        "the front did not refuse the link itself:\n{}",
        trace.join("\n")
    );
    let m = std::fs::symlink_metadata(&victim).expect("victim");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "root's\n");
    assert_eq!(
        (m.mode() & 0o7777, m.uid()),
        (0o600, 0),
        "the victim was altered"
    );
    assert_ne!(run.code, 0, "the core refuses the planted lock: {run:?}");
    assert!(
        run.stderr.contains("start.lock"),
        "the refusal names the lock: {run:?}"
    );
    assert!(alive(pid), "a refused stop left the service as it was");

    std::fs::remove_file(state.join("start.lock")).expect("remove the link");
    svc.stop();
    wait_until(T, "the service gone", || !alive(pid));
}

#[test]
fn the_handoffs_environment_entry_is_the_fronts_alone() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let svc = started("fenv");
    let (run, trace) = strace(&svc, &["-v", "-e", "trace=execve"], |cmd| {
        cmd.arg(harness::baton_bin())
            .arg("--config")
            .arg(&svc.config)
            .arg("stop")
            .env("BATON_STOP_SENT", "0,1,0,2");
    });
    assert_eq!(run.code, 0, "stop with a stray BATON_STOP_SENT: {run:?}");
    let core = trace
        .iter()
        .find(|l| l.contains("execve(") && l.contains("-core\", ["))
        .expect("the core's exec");
    assert!(
        !core.contains("BATON_STOP_SENT=0,1,0,2"),
        "a stray entry reached the core: {core}"
    );
    assert_eq!(
        core.matches("BATON_STOP_SENT=").count(),
        1,
        "the front's own entry, once: {core}"
    );
    assert!(run.stdout.contains("fenv stopped"), "{run:?}");
    assert!(svc.processes().is_empty(), "the service outlived its stop");
}
