//! The supervisor under hostile conditions it must outlast: its control socket driven out of
//! file descriptors, a deploy's old instance whose grandchild left its process group.

use crate::harness;

use harness::{alive, wait_until, Svc};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// User plus system CPU time of `pid` so far, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The command name may hold spaces and parentheses: fields count from after its last ')'.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |n: usize| fields[n - 3].parse::<u64>().expect("ticks");
    tick(14) + tick(15)
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// Sets `pid`'s descriptor limit (soft and hard) to `limit`.
fn limit_fds(pid: i32, limit: usize) {
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .output()
        .expect("prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
}

#[test]
fn out_of_file_descriptors_the_supervisor_pauses_accepting_and_answers_again_after() {
    let svc = Svc::new("nofile", "[\"sleep\", \"1000\"]", "");
    let r = svc.start();
    assert_eq!(r.code, 0, "{r:?}");
    let sup = svc.pid_in_file().expect("PID file");
    let socket = svc.path("run/nofile.sock");
    // Counted once the loop's turn after `start` is over: the next instance's cgroup it
    // opens then would otherwise take one of the two descriptors left below, and with
    // none left no connection could ever be accepted to be closed again.
    harness::wait_asleep(sup);

    // Room for two more descriptors: the third client finds accept(2) failing with EMFILE.
    limit_fds(sup, open_fds(sup) + 2);

    let before = cpu_ticks(sup);
    // Clients that connect and say nothing: those accepted hold descriptors, the rest wait
    // in the backlog, and the listening socket stays readable the whole time.
    let clients: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    wait_until(T, "accept to fail with EMFILE", || {
        svc.log("baton.log").contains("Too many open files")
    });
    // The episode: a loop woken by the readable socket would burn a CPU for all of it.
    std::thread::sleep(Duration::from_secs(3));
    let burnt = cpu_ticks(sup) - before;
    assert!(
        burnt < 30,
        "the supervisor spent {burnt} ticks of CPU in 3 s out of file descriptors: it spins"
    );

    // The clients go (as an idle one would be dropped): the supervisor answers again.
    drop(clients);
    wait_until(T, "status to answer again", || svc.status().0 == 0);
    let (code, st) = svc.status();
    assert_eq!((code, st["state"].as_str()), (0, Some("ready")), "{st}");
    assert!(alive(sup));
    let r = svc.stop();
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn at_its_descriptor_limit_with_no_client_to_drop_the_supervisor_still_hears_stop() {
    let svc = Svc::new("nofile0", "[\"sleep\", \"1000\"]", "");
    svc.start();
    let sup = svc.pid_in_file().expect("PID file");
    let service = svc.processes();
    assert!(!service.is_empty(), "the service runs");
    harness::wait_asleep(sup);
    // Not one descriptor left, and no client connection of its own it could close: only
    // the descriptor it holds in reserve makes room for the `stop`.
    limit_fds(sup, open_fds(sup));
    let r = svc.stop();
    assert!(r.stdout.contains("stopped"), "{r:?}");
    assert!(!alive(sup), "the supervisor exited");
    assert!(service.iter().all(|&p| !alive(p)), "the service is gone");
    assert!(
        svc.log("baton.log").contains("Too many open files"),
        "the accept did fail for lack of descriptors first"
    );
}

/// A release that leaves a grandchild behind in a session of its own (its parent, a
/// subshell, exits at once, so the supervisor inherits it), records that grandchild's PID
/// in `escaped.pid` beside it, then serves.
const ESCAPING_RUN: &str = "#!/bin/sh\nd=$(dirname \"$0\")\n\
( setsid sh -c 'echo $$ > \"$1/escaped.pid\"; exec sleep 1000' sh \"$d\" </dev/null >/dev/null 2>&1 & )\n\
while [ ! -s \"$d/escaped.pid\" ]; do sleep 0.02; done\n\
echo serving\nexec sleep 1000\n";

fn escaping_release(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let rel = dir.join(name);
    std::fs::create_dir_all(&rel).expect("release dir");
    let run = rel.join("run");
    std::fs::write(&run, ESCAPING_RUN).expect("run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    rel
}

fn escaped_pid(svc: &Svc, release: &str) -> i32 {
    let path = svc.path(&format!("app/releases/{release}/escaped.pid"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("pid")
}

fn deploy_escaping(cgroup: bool) {
    if !harness::is_root() {
        eprintln!("skipped: needs root (cgroups, the subreaper's tree)");
        return;
    }
    let name = if cgroup { "escapecg" } else { "escapesr" };
    let svc = harness::Spec::new(name, "[\"{release}/run\"]")
        .tables(&format!(
            "[release]\nroot = \"{{dir}}/app\"\n[ready]\nlog = \"serving\"\ntimeout = \"30s\"\n\
             [stop]\ntimeout = \"10s\"\n[deploy]\ndrain_timeout = \"1s\"\n[process]\ncgroup = {cgroup}\n"
        ))
        .create();
    // Not the service's: started by the test, in a session of its own like the escapee.
    let stranger = Stranger(
        Command::new("setsid")
            .args(["sleep", "1000"])
            .spawn()
            .expect("stranger"),
    );
    let stranger_pid = stranger.0.id() as i32;

    let deploy = |release: &std::path::Path| {
        svc.baton(&["deploy", "--release", release.to_str().expect("utf-8")])
    };
    let r = deploy(&escaping_release(&svc.dir, "v1"));
    assert_eq!(r.code, 0, "{r:?}");
    let first = svc.status().1["release"]
        .as_str()
        .expect("release")
        .to_string();
    let escaped1 = escaped_pid(&svc, &first);
    assert!(alive(escaped1), "the first instance's grandchild runs");

    let r = deploy(&escaping_release(&svc.dir, "v2"));
    assert_eq!(r.code, 0, "{r:?}");
    let second = svc.status().1["release"]
        .as_str()
        .expect("release")
        .to_string();
    assert_ne!(first, second);
    let escaped2 = escaped_pid(&svc, &second);
    // The deploy answered once the old instance was gone: all of it, the escapee too.
    assert!(
        !alive(escaped1),
        "the old instance's grandchild (pid {escaped1}, own session) outlived the deploy"
    );
    assert!(
        alive(escaped2),
        "the new instance's grandchild was killed with the old instance"
    );
    assert!(alive(stranger_pid), "a stranger was killed by the deploy");

    let r = svc.stop();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!alive(escaped2), "the service's stop left its grandchild");
    assert!(alive(stranger_pid), "a stranger was killed by the stop");
}

/// A process of the test's own, killed when the test ends however it ends.
struct Stranger(std::process::Child);

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_deploy_stops_the_old_instances_whole_tree_by_its_cgroup_and_no_stranger() {
    deploy_escaping(true);
}

#[test]
fn without_cgroups_a_deploy_stops_the_old_instances_whole_tree_by_its_mark_and_no_stranger() {
    deploy_escaping(false);
}
