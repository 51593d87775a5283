//! The client commands (`start`, `stop`, ...) as the operator sees them: what they print
//! reaches a pipe whole and their exit codes are the ones they chose (every baton process
//! ends through `sys::exit`: stdout flushed, then _exit(2)), what a waiting `start` keeps,
//! and which config problems a command addressed to a running service only warns about.

use crate::harness::{alive, baton, core_bin, is_root, own_program, wait_until, Svc};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn start_and_stop_print_whole_lines_to_a_pipe_and_exit_with_their_codes() {
    let svc = Svc::new("piped", r#"["sleep", "1000"]"#, "");
    let started = svc.start();
    let pid = svc.pid_in_file().expect("a PID file after start");
    assert_eq!(
        started.stdout,
        format!("piped is ready (supervisor pid {pid})\n"),
        "{started:?}"
    );
    let again = svc.start();
    assert_eq!(again.stdout, "piped is already running\n", "{again:?}");
    let stopped = svc.stop();
    assert_eq!(stopped.stdout, "piped stopped\n", "{stopped:?}");
    let idle = svc.stop();
    assert_eq!(idle.stdout, "piped is not running\n", "{idle:?}");

    // An error's code comes through the same exit: a broken config is LSB 6.
    std::fs::write(&svc.config, "command = [\n").expect("break the config");
    let broken = svc.baton(&["stop"]);
    assert_eq!(broken.code, 6, "{broken:?}");
    assert!(broken.stderr.contains("TOML syntax error"), "{broken:?}");
}

#[test]
fn clap_answers_exit_with_their_codes_and_long_output_arrives_whole() {
    let version = baton(&["--version"]);
    assert_eq!(version.code, 0, "{version:?}");
    assert_eq!(
        version.stdout,
        format!("baton {}\n", env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
    let usage = baton(&["stop", "a", "b"]);
    assert_eq!(usage.code, 2, "{usage:?}");
    // The man page is one long write through stdout's buffer: all of it, to its last line.
    let man = baton(&["man"]);
    assert_eq!(man.code, 0, "{man:?}");
    assert!(
        man.stdout.starts_with(".ie \\n(.g .ds Aq"),
        "{}",
        &man.stdout[..80]
    );
    let last = man.stdout.lines().last().expect("a last line");
    assert!(
        last.contains(env!("CARGO_PKG_VERSION")),
        "the man page is cut short: it ends with {last:?}"
    );
    assert!(man.stdout.ends_with('\n'));
}

#[test]
fn a_start_waiting_for_readiness_holds_little_of_its_code_and_still_reports() {
    let svc = crate::harness::gated_notify_service("shed");
    let start = svc.spawn_baton(&["start"]);
    let pid = start.id() as i32;
    wait_until(Duration::from_secs(60), "the service to run", || {
        svc.path("started").exists()
    });
    // Asleep until the supervisor answers (in ppoll(2), or a read of the pipe): by then
    // `start` has let go of the code it ran (config, spawn) and keeps only the pages
    // around its sleep.
    wait_until(
        Duration::from_secs(60),
        "start to wait for the report",
        || {
            std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| {
                let nr = s.split_whitespace().next().unwrap_or("");
                nr == nix::libc::SYS_ppoll.to_string() || nr == nix::libc::SYS_read.to_string()
            })
        },
    );
    // The waiting `start` runs the core (the front exec'd it).
    let exe = std::fs::canonicalize(core_bin()).expect("the core's path");
    let text = crate::harness::resident_file_kib(pid, &exe, |p| p == "r-xp");
    assert!(
        text <= 512,
        "a waiting start keeps {text} KiB of baton's code resident"
    );
    crate::harness::open_gate(&svc);
    let out = start.wait_with_output().expect("start's exit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "start: {out:?}");
    let supervisor = svc.pid_in_file().expect("a PID file once start returned");
    assert_eq!(
        stdout,
        format!("shed is ready (supervisor pid {supervisor})\n")
    );
    svc.stop();
}

#[test]
fn a_root_service_whose_program_became_writable_by_others_is_still_stopped() {
    if !is_root() {
        eprintln!("skipped: the check applies to root only");
        return;
    }
    let svc = own_program("laxlater");
    let bin = svc.path("bin");
    svc.start();
    let pid = svc.pid_in_file().expect("a PID file");
    // Since the start, anyone may replace what the root service would execute next.
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let why = format!("{} is writable by others", bin.display());
    // What would execute it is refused, and the running service is left as it was.
    let restart = svc.baton(&["restart"]);
    assert_eq!(restart.code, 4, "{restart:?}");
    assert!(restart.stderr.contains(&why), "{restart:?}");
    assert!(alive(pid), "the refused restart stopped the supervisor");
    // What executes nothing reaches the service, and says what is wrong.
    let (code, status) = svc.status();
    assert_eq!(code, 0, "{status}");
    let stop = svc.baton(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stderr.contains("warning: "), "{stop:?}");
    assert!(stop.stderr.contains(&why), "{stop:?}");
    assert!(svc.processes().is_empty(), "the service outlived the stop");
    let start = svc.baton(&["start"]);
    assert_eq!(start.code, 4, "{start:?}");
    assert!(
        svc.processes().is_empty(),
        "a start refused still ran the service"
    );
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
