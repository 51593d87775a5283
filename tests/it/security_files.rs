//! Attacks on what baton opens, reads and passes on as root, performed for real.
//!
//! Each test plays the attacker (a throwaway `bhf*` user, another local user, a careless
//! operator), then checks that the target is untouched and that baton's refusal names the
//! path. They need root (useradd, chown); without it they skip with a message.

use crate::harness;

use harness::{baton_bin, skip_unless_root, wait_until, Run, Spec, Svc, User};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Why these tests are skipped when not run as root.
const ROOT_ONLY: &str = "the attacks need root (useradd, chown)";

/// A root-owned file holding a secret: what the attacker wants root to write to.
fn victim(dir: &Path) -> PathBuf {
    let p = dir.join("victim");
    std::fs::write(&p, "root's secret\n").expect("victim");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

fn assert_untouched(victim: &Path) {
    assert_eq!(
        std::fs::read_to_string(victim).expect("victim"),
        "root's secret\n",
        "root wrote through the planted link"
    );
    let meta = std::fs::metadata(victim).expect("victim");
    assert_eq!(meta.uid(), 0, "the victim changed owner");
    assert_eq!(meta.mode() & 0o777, 0o600, "the victim changed mode");
}

/// PIDs far enough ahead that nothing takes them before the test asks for them
/// (wrapping below pid_max, as the kernel does).
fn pids_ahead() -> u32 {
    let read = |f: &str| -> u32 {
        std::fs::read_to_string(f)
            .expect(f)
            .trim()
            .parse()
            .expect("a number")
    };
    let (last, max) = (
        read("/proc/sys/kernel/ns_last_pid"),
        read("/proc/sys/kernel/pid_max"),
    );
    if last + 2000 < max {
        last + 1000
    } else {
        1000
    }
}

/// The next process created gets a PID just above `base` (give or take what the rest of
/// the machine forks meanwhile): the attacker's guess made right.
fn next_pid_after(base: u32) {
    std::fs::write("/proc/sys/kernel/ns_last_pid", base.to_string()).expect("ns_last_pid");
}

/// The log directory as the Chef cookbook makes it: owned by the service user, 0750.
fn cookbook_log_dir(svc: &Svc, user: &User) -> PathBuf {
    let log = svc.path("log");
    std::fs::create_dir_all(&log).expect("log dir");
    nix::unistd::chown(
        &log,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.uid)),
    )
    .expect("chown");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    log
}

fn service_as(user: &User, name: &str, script: &str, tables: &str) -> Svc {
    Spec::new(name, &format!("[\"/bin/sh\", \"-c\", {script:?}]"))
        .top(&format!("user = \"{}\"", user.name))
        .tables(tables)
        .create()
}

#[test]
fn a_symlink_planted_as_stdout_log_is_refused_not_followed() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    let svc = service_as(&user, "symlog", "echo hello; exec sleep 1000", "");
    let victim = victim(&svc.dir);
    let log = cookbook_log_dir(&svc, &user);
    user.sh(&format!(
        "ln -s {} {}/stdout.log",
        victim.display(),
        log.display()
    ));

    let r = svc.baton(&["start"]);
    assert_ne!(r.code, 0, "{r:?}");
    let path = log.join("stdout.log");
    assert!(
        r.stderr.contains(&format!(
            "unable to open {}: it is a symbolic link",
            path.display()
        )),
        "{r:?}"
    );
    assert!(r.stderr.contains("remove"), "{r:?}");
    assert_untouched(&victim);
    assert!(svc.processes().is_empty(), "the service was started anyway");
}

#[test]
fn a_symlink_planted_as_baton_log_fails_start_loudly() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    let svc = service_as(&user, "symevents", "echo hello; exec sleep 1000", "");
    let victim = victim(&svc.dir);
    let log = cookbook_log_dir(&svc, &user);
    user.sh(&format!(
        "ln -s {} {}/baton.log",
        victim.display(),
        log.display()
    ));

    let r = svc.baton(&["start"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "unable to open {}: it is a symbolic link",
            log.join("baton.log").display()
        )),
        "{r:?}"
    );
    assert_untouched(&victim);
    assert!(svc.processes().is_empty(), "the service was started anyway");
}

#[test]
fn a_hard_link_planted_as_stderr_log_is_refused() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    let svc = service_as(&user, "hardlog", "echo hello; exec sleep 1000", "");
    let victim = victim(&svc.dir);
    let log = cookbook_log_dir(&svc, &user);
    // Root plants it here: fs.protected_hardlinks stops the user, not every kernel has it on.
    std::fs::hard_link(&victim, log.join("stderr.log")).expect("hard link");

    let r = svc.baton(&["start"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "unable to open {}: it has 2 hard links",
            log.join("stderr.log").display()
        )),
        "{r:?}"
    );
    assert_untouched(&victim);
}

#[test]
fn links_planted_for_rotation_and_reopen_logs_are_never_written_through() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    // Prints a line per HUP: the test decides when output happens.
    let svc = Spec::new(
        "rotlog",
        "[\"/bin/sh\", \"-c\", \"trap 'echo line-after-hup-xxxxxxxxxxxxxxxxxxxxxxxx' HUP; echo up; while :; do sleep 1 & wait $!; done\"]",
    )
    .top(&format!("user = \"{}\"", user.name))
    .log("max_size = \"64B\"\nkeep = 3")
    .tables("[ready]\nlog = \"up\"")
    .create();
    let victim = victim(&svc.dir);
    let log = cookbook_log_dir(&svc, &user);
    svc.start();

    // The rotated names: rotation renames over them, it must not write through them.
    for i in 1..=3 {
        user.sh(&format!(
            "ln -s {} {}/stdout.log.{i}",
            victim.display(),
            log.display()
        ));
    }
    for n in 1..=4 {
        assert_eq!(svc.baton(&["reload"]).code, 0);
        wait_until(T, "the line after HUP", || {
            svc.log("stdout.log").contains("line-after-hup")
                || svc.log("stdout.log.1").contains("line-after-hup") && n > 0
        });
    }
    assert_untouched(&victim);

    // As after an external logrotate: stdout.log is gone; the user plants a link there.
    user.sh(&format!(
        "rm -f {l}/stdout.log && ln -s {v} {l}/stdout.log",
        l = log.display(),
        v = victim.display()
    ));
    let r = svc.baton(&["reopen-logs"]);
    assert_eq!(r.code, 0, "{r:?}");
    let refusal = format!(
        "unable to open {}: it is a symbolic link",
        log.join("stdout.log").display()
    );
    // baton.log rotates by the same tiny size: the refusal may sit in a rotated copy.
    wait_until(T, "baton.log to record the refusal", || {
        ["baton.log", "baton.log.1", "baton.log.2", "baton.log.3"]
            .iter()
            .any(|f| svc.log(f).contains(&refusal))
    });
    // More output: it must not reach the victim through the link either.
    assert_eq!(svc.baton(&["reload"]).code, 0);
    assert_untouched(&victim);
    svc.stop();
    assert_untouched(&victim);
}

#[test]
fn a_symlink_planted_as_revisions_log_is_refused() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    let svc = Spec::new(
        "revlog",
        "[\"/bin/sh\", \"-c\", \"echo up; exec sleep 1000\"]",
    )
    .tables("[ready]\nlog = \"up\"\n[release]\nroot = \"{dir}/app\"")
    .create();
    let victim = victim(&svc.dir);
    // The release root belongs to the service user (the cookbook's /var/lib/NAME).
    let root = svc.path("app");
    std::fs::create_dir_all(root.join("releases")).expect("mkdir");
    Command::new("chown")
        .args(["-R", &format!("{0}:{0}", user.name)])
        .arg(&root)
        .status()
        .expect("chown");
    user.sh(&format!(
        "ln -s {} {}/revisions.log",
        victim.display(),
        root.display()
    ));
    let release = svc.path("build");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::write(release.join("app.txt"), "v1\n").expect("write");

    let r = svc.baton(&["deploy", "--release", &release.display().to_string()]);
    assert_untouched(&victim);
    let both = format!("{}{}", r.stdout, r.stderr);
    assert!(
        both.contains(&format!("{}", root.join("revisions.log").display()))
            && both.contains("symbolic link"),
        "the refusal must name revisions.log: {r:?}"
    );
}

#[test]
fn huge_durations_and_sizes_are_config_problems_not_crashes() {
    let svc = Svc::new("huge", "[\"/bin/sleep\", \"100\"]", "");
    std::fs::write(
        &svc.config,
        "command = [\"/bin/sleep\", \"100\"]\n[ready]\ntimeout = \"99999999999999999999s\"\n[stop]\ntimeout = \"9999999h\"\n[log]\nmax_size = \"99999999TB\"\n[restart]\nbackoff = [\"1ms\", \"100000000000000000000000000h\"]\n",
    )
    .expect("write");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 6, "{r:?}");
    for want in [
        "huge.toml:3: ready.timeout: \"99999999999999999999s\" is too long",
        "huge.toml:5: stop.timeout: \"9999999h\" is too long",
        "huge.toml:7: log.max_size:",
        "huge.toml:9: restart.backoff:",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?}: {r:?}");
    }
    // `start` refuses the same way, and nothing is left behind.
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(!svc.pidfile().exists());
}

#[test]
fn an_env_file_others_can_write_is_refused_as_root() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let svc = Spec::new("lax-env", "[\"/bin/sleep\", \"100\"]")
        .top("env_file = \"{dir}/conf/web.env\"")
        .create();
    let conf = svc.path("conf");
    std::fs::create_dir_all(&conf).expect("mkdir");
    let env_file = conf.join("web.env");
    std::fs::write(&env_file, "LD_PRELOAD=/tmp/evil.so\n").expect("write");

    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{} is writable by others", env_file.display())),
        "{r:?}"
    );
    assert!(r.stderr.contains("chmod go-w"), "{r:?}");
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(svc.processes().is_empty());

    // The file is fine, its directory is not: whoever can write it can swap the file.
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{} is writable by others", conf.display())),
        "{r:?}"
    );

    // Owned by another user: refused too, naming the fix.
    let user = User::new("bhf");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    nix::unistd::chown(&env_file, Some(nix::unistd::Uid::from_raw(user.uid)), None).expect("chown");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{} is owned by uid {}, not root: chown root it",
            env_file.display(),
            user.uid
        )),
        "{r:?}"
    );

    // Put right, it passes.
    nix::unistd::chown(&env_file, Some(nix::unistd::Uid::from_raw(0)), None).expect("chown");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_config_in_a_directory_others_can_write_is_refused_as_root() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let svc = Svc::new("laxdir", "[\"/bin/sleep\", \"100\"]", "");
    std::fs::set_permissions(&svc.dir, std::fs::Permissions::from_mode(0o757)).expect("chmod");
    let r = svc.baton(&["check"]);
    std::fs::set_permissions(&svc.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{} is writable by others", svc.dir.display())),
        "{r:?}"
    );
}

#[test]
fn a_root_service_program_others_can_write_is_refused() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let svc = Svc::new("laxprog", "[\"{dir}/bin/serve\"]", "");
    let bin = svc.path("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let prog = bin.join("serve");
    std::fs::write(&prog, "#!/bin/sh\nexec sleep 1000\n").expect("write");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "command: {} is writable by others",
            prog.display()
        )),
        "{r:?}"
    );
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn the_service_gets_a_clean_environment_not_the_callers() {
    let svc = Spec::new(
        "cleanenv",
        "[\"/bin/sh\", \"-c\", \"env | sort; echo up; exec sleep 1000\"]",
    )
    .top("inherit_env = [\"BHF_PASSED\"]")
    .env("FROM_CONFIG = \"yes\"")
    .tables("[ready]\nlog = \"up\"")
    .create();
    let r: Run = Command::new("timeout")
        .arg("120")
        .arg(baton_bin())
        .arg("--config")
        .arg(&svc.config)
        .arg("start")
        .env("BHF_SECRET", "hunter2")
        .env("BHF_PASSED", "allowed")
        .env(
            "PATH",
            format!(
                "/tmp/bhf-evil:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("LD_LIBRARY_PATH", "/tmp/bhf-evil")
        .output()
        .expect("start")
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let out = svc.log("stdout.log");
    assert!(
        !out.contains("hunter2"),
        "the caller's secret leaked: {out}"
    );
    assert!(!out.contains("BHF_SECRET"), "{out}");
    assert!(!out.contains("bhf-evil"), "the caller's PATH leaked: {out}");
    assert!(!out.contains("LD_LIBRARY_PATH"), "{out}");
    for want in [
        "BHF_PASSED=allowed\n",
        "FROM_CONFIG=yes\n",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
        "LANG=C.UTF-8\n",
        "HOME=",
        "SHELL=",
    ] {
        assert!(out.contains(want), "missing {want:?} in: {out}");
    }
    svc.stop();
}

#[test]
fn probe_hosts_are_resolved_when_the_config_is_read() {
    let port = harness::free_port();
    let svc = Svc::new(
        "probename",
        &format!("[\"/usr/bin/python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"{port}\"]"),
        &format!("[port]\nport = {port}\n[ready]\ntcp = \"localhost:{{port}}\"\nhttp = \"http://localhost:{{port}}/\"\ntimeout = \"30s\""),
    );
    svc.start();
    svc.stop();
    // A name that does not resolve is a config problem at once, not a probe failure later.
    std::fs::write(
        &svc.config,
        "command = [\"/bin/sleep\", \"100\"]\n[ready]\ntcp = \"no-such-host.invalid:80\"\n",
    )
    .expect("write");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains("probename.toml:3: ready.tcp: cannot resolve \"no-such-host.invalid\""),
        "{r:?}"
    );
}

#[test]
fn thirty_thousand_unknown_keys_are_reported_briefly() {
    let svc = Svc::new("manykeys", "[\"/bin/sleep\", \"100\"]", "");
    let mut text = String::from("command = [\"/bin/sleep\", \"100\"]\n");
    for i in 0..30_000 {
        text.push_str(&format!("unknown_{i} = 1\n"));
    }
    std::fs::write(&svc.config, text).expect("write");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("30000 problems"), "{}", &r.stderr[..200]);
    assert!(!r.stderr.contains("manykeys.toml:30001: unknown_29999"));
    assert!(r.stderr.contains("manykeys.toml:2: unknown_0: unknown key"));
    assert!(r.stderr.contains("and 29900 more"), "{}", r.stderr.len());
    assert!(
        r.stderr.lines().count() < 110,
        "{} lines",
        r.stderr.lines().count()
    );

    // Larger than a config can be: refused before parsing, naming the limit.
    let big = "# padding\n".repeat(200_000);
    std::fs::write(&svc.config, big).expect("write");
    let r = svc.baton(&["check"]);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("larger than 1048576 bytes"), "{r:?}");
}

/// A deploy file whose only host refuses connections: ship builds, stages, then fails to connect.
fn ship_project(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("conf")).expect("mkdir");
    std::fs::write(dir.join("conf/app.conf"), "mode=prod\n").expect("write");
    let closed = harness::free_port();
    std::fs::write(
        dir.join("deploy.toml"),
        format!(
            "service = \"web\"\n[build]\ncommand = \"mkdir -p out && echo jar > out/app.jar\"\nartifact = \"out/app.jar\"\n\
             [environments.prod]\nhosts = [\"127.0.0.1\"]\nport = {closed}\ndeploy_to = \"/srv/web\"\n\
             version_url = \"http://{{host}}:1/version\"\ncanary = 0\ntransfer = \"scp\"\n\
             [environments.prod.files]\n\"config/app.conf\" = \"conf/app.conf\"\n"
        ),
    )
    .expect("deploy file");
    dir.join("deploy.toml")
}

#[test]
fn ship_never_stages_in_a_directory_another_user_planted() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    let dir = std::env::temp_dir().join(format!("baton-it-{}-shipstage", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A /tmp of its own (sticky, world-writable), so the test sees every name in it.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let victim = victim(&dir);
    let file = ship_project(&dir.join("project"));

    // The attacker pre-creates the old predictable names for the next few hundred PIDs,
    // each with links where ship would write (and the ControlPath directory).
    let base = pids_ahead();
    let planted: Vec<u32> = (base + 1..base + 400).collect();
    let mut script = String::new();
    for pid in &planted {
        let t = tmp.display();
        script.push_str(&format!(
            "mkdir -p {t}/baton-ship-stage-{pid}/127.0.0.1/config {t}/baton-ship-{pid}\n\
             ln -s {v} {t}/baton-ship-stage-{pid}/127.0.0.1/REVISION\n\
             ln -s {v} {t}/baton-ship-stage-{pid}/127.0.0.1/config/app.conf\n",
            v = victim.display()
        ));
    }
    let plant = dir.join("plant.sh");
    std::fs::write(&plant, script).expect("script");
    user.sh(&format!("sh {}", plant.display()));
    let before: Vec<_> = std::fs::read_dir(&tmp)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();

    next_pid_after(base);
    let r: Run = Command::new("timeout")
        .arg("120")
        .arg(baton_bin())
        .args(["ship", "prod", "--file"])
        .arg(&file)
        .env("TMPDIR", &tmp)
        .env("XDG_RUNTIME_DIR", &tmp)
        .output()
        .expect("ship")
        .into();
    assert_ne!(r.code, 0, "the host refuses connections: {r:?}");
    assert_untouched(&victim);
    // Nothing of baton's landed in any planted directory.
    for pid in &planted {
        let cp = tmp.join(format!("baton-ship-{pid}"));
        assert_eq!(
            std::fs::read_dir(&cp).expect("planted").count(),
            0,
            "ssh used the planted ControlPath directory {}",
            cp.display()
        );
        let stage = tmp.join(format!("baton-ship-stage-{pid}/127.0.0.1"));
        let names: Vec<_> = std::fs::read_dir(&stage)
            .expect("planted")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "ship wrote into {}: {names:?}",
            stage.display()
        );
    }
    // And baton removed its own private directories.
    let after: Vec<_> = std::fs::read_dir(&tmp)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "baton left a directory behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_releases_symlink_planted_by_the_service_user_is_not_followed() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    let svc = Spec::new(
        "rellink",
        "[\"/bin/sh\", \"-c\", \"echo up; exec sleep 1000\"]",
    )
    .tables("[ready]\nlog = \"up\"\n[release]\nroot = \"{dir}/app\"")
    .create();
    // Root's directory the attacker wants release files written into.
    let elsewhere = svc.path("root-only");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let root = svc.path("app");
    std::fs::create_dir_all(&root).expect("mkdir");
    Command::new("chown")
        .arg(format!("{0}:{0}", user.name))
        .arg(&root)
        .status()
        .expect("chown");
    user.sh(&format!(
        "ln -s {} {}/releases",
        elsewhere.display(),
        root.display()
    ));
    let release = svc.path("build");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::write(release.join("app.txt"), "v1\n").expect("write");

    let r = svc.baton(&["deploy", "--release", &release.display().to_string()]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{} is a symbolic link in {}",
            root.join("releases").display(),
            root.display()
        )),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).expect("ls").count(),
        0,
        "root wrote through the planted link"
    );
}

#[test]
fn links_planted_as_pid_and_state_files_are_replaced_not_followed() {
    if skip_unless_root(ROOT_ONLY) {
        return;
    }
    let user = User::new("bhf");
    let svc = Svc::new(
        "pidlink",
        "[\"/bin/sh\", \"-c\", \"echo up; exec sleep 1000\"]",
        "[ready]\nlog = \"up\"",
    );
    let victim = victim(&svc.dir);
    // A careless operator lets the service user write the PID and state directories.
    for d in ["run", "state"] {
        let p = svc.path(d);
        std::fs::create_dir_all(&p).expect("mkdir");
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(user.uid)), None).expect("chown");
    }
    // The final names, and the temporary names an atomic write once used (NAME.tmp.PID)
    // for the next few hundred PIDs: the supervisor is one of them.
    let base = pids_ahead();
    let (v, d) = (victim.display(), svc.dir.display());
    let mut script = format!(
        "ln -s {v} {d}/run/pidlink.pid && ln -s {v} {d}/state/state.json && ln -s {v} {d}/state/registry.json\n"
    );
    for pid in base + 1..base + 400 {
        script.push_str(&format!(
            "ln -s {v} {d}/run/pidlink.tmp.{pid}; ln -s {v} {d}/state/state.tmp.{pid}\n"
        ));
    }
    let plant = svc.path("plant.sh");
    std::fs::write(&plant, script).expect("script");
    user.sh(&format!("sh {}", plant.display()));
    next_pid_after(base);
    svc.start();
    assert_untouched(&victim);
    let meta = std::fs::symlink_metadata(svc.pidfile()).expect("pid file");
    assert!(meta.file_type().is_file(), "the PID file is still a link");
    assert!(svc.pid_in_file().is_some());
    svc.stop();
    assert_untouched(&victim);
}
