//! baton installed as a pair: the front (`baton`) runs its core only from beside itself,
//! under its own name and `-core`, so a copy without its core says what is missing and a
//! pair copied under another name works as the original and names its own front.

use crate::harness;

use harness::{baton_bin, core_bin, core_of, install, Spec};
use std::process::Command;

/// `bin ARGS...` with nothing put first, its exit code and output.
fn run(bin: &std::path::Path, args: &[&str]) -> harness::Run {
    Command::new("timeout")
        .arg("120")
        .arg(bin)
        .args(args)
        .output()
        .expect("run the copy")
        .into()
}

#[test]
fn a_front_copied_without_its_core_fails_naming_the_missing_core() {
    let svc = Spec::new("lone", r#"["sleep", "300"]"#).create();
    std::fs::create_dir_all(svc.path("bin")).expect("bin");
    let bin = svc.path("bin/baton");
    install(&baton_bin(), &bin);
    let core = core_of(&bin);
    let said = format!("cannot run {} (no such file)", core.display());

    // LSB's "program is not installed".
    let r = run(&bin, &["--version"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains(&said), "names the missing core: {r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");

    // A command that would act: refused the same way, and nothing starts.
    let r = svc.baton_with(&bin, &["start"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains(&said), "{r:?}");
    assert_eq!(svc.pid_in_file(), None);
    assert!(svc.processes().is_empty(), "{:?}", svc.processes());
    // `status`: LSB's "status unknown".
    let r = svc.baton_with(&bin, &["status"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains(&said), "{r:?}");

    // The core beside it under the front's name: the same copy works.
    install(&core_bin(), &core);
    let r = run(&bin, &["--version"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, format!("baton {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_pair_copied_under_another_name_starts_and_stops_a_service() {
    let svc = Spec::new("bvx", r#"["sleep", "300"]"#).create();
    let bin = svc.path("bvx");
    let core = svc.path("bvx-core");
    install(&core_bin(), &core);
    install(&baton_bin(), &bin);

    let r = run(&bin, &["--version"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, format!("baton {}\n", env!("CARGO_PKG_VERSION")));

    // What it writes for later runs names the copy's front, not the core that wrote it.
    let r = svc.baton_with(&bin, &["generate", "init-script"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("\nBATON='{}'\n", bin.display())),
        "{}",
        r.stdout
    );
    let r = svc.baton_with(&bin, &["generate", "systemd-unit"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("\nExecStart={} --config ", bin.display())),
        "{}",
        r.stdout
    );

    let r = svc.baton_with(&bin, &["start"]);
    assert_eq!(r.code, 0, "{r:?}");
    let sup = svc.pid_in_file().expect("a PID file once start returned");
    let exe = std::fs::read_link(format!("/proc/{sup}/exe")).expect("the supervisor's exe");
    assert_eq!(exe, core, "the supervisor runs the copy's own core");
    let r = svc.baton_with(&bin, &["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, st) = svc.status();
    let pid = st["service_pid"].as_i64().expect("service pid") as i32;
    assert!(harness::alive(pid));

    let r = svc.baton_with(&bin, &["stop"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!harness::alive(sup), "the supervisor is gone");
    assert!(!harness::alive(pid), "the service is gone");
    assert!(svc.processes().is_empty(), "{:?}", svc.processes());
    let r = svc.baton_with(&bin, &["status"]);
    assert_eq!(r.code, 3, "not running: {r:?}");
}
