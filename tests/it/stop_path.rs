//! What `baton stop` does before its request (issue 14's time to gone): the config's text
//! and its own trust first, the checks of the host it names (program, working directory)
//! only after the request, still told; directories reached without a symbolic link opened
//! in one step, and those reached through one still walked.

use crate::harness::{alive, own_program, Svc};
use std::path::Path;

/// `baton stop` under strace: its exit code and the system calls it made, one a line.
fn traced_stop(svc: &Svc) -> (i32, Vec<String>) {
    let (run, trace) = svc.traced(&["stop"]);
    (run.code, trace)
}

/// The index of the first traced line that `matches`.
pub(crate) fn first(trace: &[String], matches: impl Fn(&str) -> bool) -> Option<usize> {
    trace.iter().position(|l| matches(l))
}

/// A system call that looks at the path of `name`, by whole path or by name in a directory
/// (reads of the config, whose text names it, do not count).
fn looks_at(line: &str, name: &str) -> bool {
    [
        "statx(",
        "newfstatat(",
        "openat(",
        "openat2(",
        "access(",
        "stat(",
    ]
    .iter()
    .any(|call| line.contains(call))
        && (line.contains(&format!("/{name}\"")) || line.contains(&format!("\"{name}\"")))
}

#[test]
fn the_stop_request_goes_before_the_program_is_looked_at_which_still_is() {
    let svc = own_program("deferred");
    svc.start();
    let (code, trace) = traced_stop(&svc);
    assert_eq!(code, 0, "{}", trace.join("\n"));
    let request = first(&trace, |l| {
        l.contains("sendto(") && l.contains(r#"\"request\":\"stop\""#)
    })
    .unwrap_or_else(|| panic!("no stop request in the trace:\n{}", trace.join("\n")));
    let program = first(&trace, |l| looks_at(l, "serve"))
        .unwrap_or_else(|| panic!("the program was never checked:\n{}", trace.join("\n")));
    assert!(
        request < program,
        "the program was looked at (line {program}: {}) before the request (line {request})",
        trace[program]
    );
    // The config file itself is opened and checked before the request, as ever.
    let config = first(&trace, |l| {
        looks_at(
            l,
            &svc.config
                .file_name()
                .expect("a file name")
                .to_string_lossy(),
        )
    })
    .expect("the config was opened");
    assert!(config < request, "the config was read after the request");
    assert!(svc.processes().is_empty(), "the service outlived the stop");
}

#[test]
fn a_program_gone_since_the_start_still_gets_its_service_stopped_with_a_warning() {
    let svc = own_program("progone");
    svc.start();
    let supervisor = svc.pid_in_file().expect("a PID file");
    std::fs::remove_file(svc.path("bin/serve")).expect("rm the program");
    let stop = svc.baton(&["stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        stop.stderr.contains("warning: ") && stop.stderr.contains("not found"),
        "{stop:?}"
    );
    assert_eq!(stop.stdout, "progone stopped\n", "{stop:?}");
    assert!(svc.processes().is_empty(), "the service outlived the stop");
    assert!(!alive(supervisor), "the supervisor outlived the stop");
}

#[test]
fn a_config_broken_since_the_start_refuses_the_stop_and_lists_the_host_problems_too() {
    let svc = own_program("brokenlater");
    svc.start();
    let supervisor = svc.pid_in_file().expect("a PID file");
    let service = svc.processes();
    std::fs::remove_file(svc.path("bin/serve")).expect("rm the program");
    let text = std::fs::read_to_string(&svc.config).expect("read config");
    std::fs::write(&svc.config, format!("colour = \"blue\"\n{text}")).expect("break it");
    let stop = svc.baton(&["stop"]);
    // The code of the gravest problem, as when every check was made in place: the
    // missing program's LSB 5 (not installed) over the unknown key's 6.
    assert_eq!(stop.code, 5, "{stop:?}");
    assert!(stop.stderr.contains("colour: unknown key"), "{stop:?}");
    // The checks left for after a request are made before the refusal: every problem at once.
    assert!(stop.stderr.contains("not found"), "{stop:?}");
    assert!(alive(supervisor), "a refused stop stopped the supervisor");
    assert_eq!(
        svc.processes(),
        service,
        "a refused stop touched the service"
    );
    std::fs::write(&svc.config, text).expect("mend it");
    let stop = svc.stop();
    assert!(stop.stderr.contains("not found"), "{stop:?}");
    assert!(svc.processes().is_empty(), "the service outlived the stop");
}

#[test]
fn a_state_directory_behind_a_symbolic_link_is_walked_and_one_without_is_opened_at_once() {
    let svc = Svc::new("statelink", r#"["sleep", "1000"]"#, "");
    // {dir}/state, where the config puts the state, is a link this user made in its own
    // directory: trusted, so followed (by the walk: openat2 refuses any link).
    let real = svc.path("real-state");
    std::fs::create_dir_all(&real).expect("mkdir");
    std::os::unix::fs::symlink(&real, svc.path("state")).expect("ln -s");
    svc.start();
    let (code, trace) = traced_stop(&svc);
    assert_eq!(code, 0, "{}", trace.join("\n"));
    assert!(
        real.join("start.lock").exists(),
        "the command lock is not in the link's target"
    );
    assert!(svc.processes().is_empty(), "the service outlived the stop");
    let walked = first(&trace, |l| {
        l.contains("openat(") && l.contains("\"real-state\"")
    });
    assert!(
        walked.is_some(),
        "the link was not walked:\n{}",
        trace.join("\n")
    );

    // Without the link, the state directory opens in one openat2 that follows none.
    let plain = Svc::new("stateplain", r#"["sleep", "1000"]"#, "");
    plain.start();
    let (code, trace) = traced_stop(&plain);
    assert_eq!(code, 0, "{}", trace.join("\n"));
    let state = Path::new(&plain.dir).join("state");
    let opened = first(&trace, |l| {
        l.contains("openat2(")
            && l.contains(&format!("\"{}\"", state.display()))
            && l.contains("RESOLVE_NO_SYMLINKS")
    });
    assert!(
        opened.is_some(),
        "no openat2 of {}:\n{}",
        state.display(),
        trace.join("\n")
    );
    assert!(
        first(&trace, |l| l.contains("openat(") && l.contains("\"state\"")).is_none(),
        "the state directory was still walked:\n{}",
        trace.join("\n")
    );
}
