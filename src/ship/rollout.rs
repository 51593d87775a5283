//! The rollout: canaries first, then batches of at most max_parallel hosts, halting after max_failed.
//!
//! Each host runs its whole pipeline on its own thread; the threads only send
//! events, and this module's loop is the one owner of the rollout's state.

use super::config::{Env, Host};
use super::http;
use super::release::Release;
use super::report::{HostReport, Outcome};
use super::ssh::{CmdOut, Ssh};
use super::view::View;
use crate::shell::quote as sh_quote;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which pipeline each host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Upload, configure, deploy, verify.
    Ship,
    /// `baton rollback`, verify.
    Rollback,
}

/// Everything a host's pipeline needs, shared by all threads.
pub struct Job {
    /// Transport.
    pub ssh: Ssh,
    /// The environment.
    pub env: Env,
    /// What is shipped (unused by rollback).
    pub release: Release,
    /// The build's output.
    pub artifact: PathBuf,
    /// Per-host staged files: `stage/HOST/`.
    pub stage: PathBuf,
    /// Set when the fleet lock is lost: no further host is started.
    pub lock_lost: Arc<AtomicBool>,
}

enum Event {
    Step(usize, &'static str),
    Line(usize, String),
    Progress(usize, String),
    Done(usize, Box<HostReport>),
}

/// Reports progress and guarantees a `Done`, even if the pipeline panics.
struct Reporter {
    i: usize,
    tx: Sender<Event>,
    sent: bool,
}

impl Reporter {
    fn step(&self, s: &'static str) {
        let _ = self.tx.send(Event::Step(self.i, s));
    }
    fn line(&self, l: &str) {
        let _ = self.tx.send(Event::Line(self.i, l.to_string()));
    }
    fn progress(&self, l: &str) {
        let _ = self.tx.send(Event::Progress(self.i, l.to_string()));
    }
    fn done(mut self, r: HostReport) {
        self.sent = true;
        let _ = self.tx.send(Event::Done(self.i, Box::new(r)));
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if !self.sent {
            let mut r = HostReport::new("?");
            r.outcome = Outcome::Failed {
                step: "internal",
                reason: "the host's worker stopped without a result".into(),
            };
            let _ = self.tx.send(Event::Done(self.i, Box::new(r)));
        }
    }
}

/// Runs `work` on `hosts` (indices into `job.env.hosts`): the first `canary` alone
/// first, then the rest; stops taking hosts once more than `max_failed` failed
/// (any canary failure halts). Returns one report per host, in order, and whether it halted.
pub fn run(
    job: &Arc<Job>,
    hosts: &[usize],
    work: Work,
    canary: usize,
    max_failed: usize,
    view: &mut View,
) -> (Vec<HostReport>, bool) {
    let names: Vec<String> = hosts
        .iter()
        .map(|&i| job.env.hosts[i].address.clone())
        .collect();
    let limits = Limits {
        max_parallel: job.env.max_parallel,
        canary,
        max_failed,
    };
    let halt = Arc::clone(&job.lock_lost);
    let job = Arc::clone(job);
    let hosts = hosts.to_vec();
    schedule(&names, limits, &halt, view, move |slot, rep| {
        let host = &job.env.hosts[hosts[slot]];
        match work {
            Work::Ship => ship_host(&job, host, rep),
            Work::Rollback => rollback_host(&job, host, rep),
        }
    })
}

/// How a rollout proceeds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Hosts in flight at once.
    pub max_parallel: usize,
    /// Hosts that go first, alone; any failure among them halts.
    pub canary: usize,
    /// Failures after the canaries that are tolerated; one more halts.
    pub max_failed: usize,
}

/// The scheduler, apart from what each host does: one thread per host in flight,
/// and this loop the only owner of the rollout's state.
fn schedule<F>(
    names: &[String],
    limits: Limits,
    halt: &AtomicBool,
    view: &mut View,
    work: F,
) -> (Vec<HostReport>, bool)
where
    F: Fn(usize, &Reporter) -> HostReport + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let n = names.len();
    let mut reports: Vec<HostReport> = names.iter().map(|h| HostReport::new(h)).collect();
    let (tx, rx) = mpsc::channel::<Event>();
    let mut halted = false;
    let canary = limits.canary.min(n);
    let phases = [(0..canary, true), (canary..n, false)];
    let mut failures_after_canary = 0;
    for (range, is_canary) in phases {
        if halted {
            break;
        }
        let mut queue: VecDeque<usize> = range.collect();
        let mut in_flight = 0usize;
        loop {
            if halt.load(Ordering::SeqCst) && !halted {
                halted = true;
                println!("the fleet lock was lost (expired or broken): no further host is started");
            }
            while !halted && in_flight < limits.max_parallel.max(1) {
                let Some(slot) = queue.pop_front() else { break };
                let work = Arc::clone(&work);
                let rep = Reporter {
                    i: slot,
                    tx: tx.clone(),
                    sent: false,
                };
                in_flight += 1;
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut r = work(slot, &rep);
                    r.took = started.elapsed();
                    rep.done(r);
                });
            }
            if in_flight == 0 {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(Event::Step(i, s)) => view.step(i, s),
                Ok(Event::Line(i, l)) => view.line(i, &l),
                Ok(Event::Progress(i, l)) => view.progress(i, &l),
                Ok(Event::Done(i, r)) => {
                    in_flight -= 1;
                    let mut r = *r;
                    r.host.clone_from(&names[i]);
                    view.done(i, &r.outcome.to_string());
                    if matches!(r.outcome, Outcome::Failed { .. }) {
                        if is_canary {
                            halted = true;
                        } else {
                            failures_after_canary += 1;
                            if failures_after_canary > limits.max_failed {
                                halted = true;
                            }
                        }
                    }
                    reports[i] = r;
                }
                Err(_) => view.tick(),
            }
        }
    }
    (reports, halted)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(900);

/// The shell snippet printing `release=ID` and `version=V` of the host's current release.
pub(super) fn read_current(env: &Env) -> String {
    let root = sh_quote(&env.deploy_to);
    let props = sh_quote(&env.properties);
    format!(
        "if [ -L {root}/current ]; then c=$(readlink {root}/current); echo \"release=${{c##*/}}\"; \
         sed -n 's/^version=/version=/p' {root}/current/{props} 2>/dev/null | head -n 1; fi"
    )
}

/// ssh exits 255 when it cannot connect or authenticate; anything else came from the host.
fn connect_or(out: &CmdOut, step: &'static str) -> &'static str {
    if out.code == Some(255) {
        "connect"
    } else {
        step
    }
}

fn field(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .filter(|v| !v.is_empty())
}

fn check_baton(env: &Env) -> String {
    let b = sh_quote(&env.baton);
    // The path is quoted in the message too: inside double quotes `$(...)` would still run.
    format!(
        "if ! [ -x {b} ]; then echo \"baton is not installed at \"{b}\" on this host\" >&2; exit 5; fi"
    )
}

fn ship_host(job: &Job, host: &Host, rep: &Reporter) -> HostReport {
    let env = &job.env;
    let a = &host.address;
    let mut r = HostReport::new(a);
    let release_dir = format!("{}/releases/{}", env.deploy_to, job.release.id);
    let q = sh_quote(&release_dir);

    // The first command opens the shared connection: one handshake per host.
    rep.step("connect");
    let t = Instant::now();
    let root = sh_quote(&env.deploy_to);
    let script = format!(
        "set -e\n{}\n{}\nmkdir -p {root}/releases\nif ! mkdir {q} 2>/dev/null; then echo \"release directory {q} already exists on this host\" >&2; exit 1; fi\n",
        check_baton(env),
        read_current(env)
    );
    let out = job.ssh.exec(a, &script, CONNECT_TIMEOUT, |_| {});
    r.timed("connect", t);
    if !out.ok() {
        r.fail(connect_or(&out, "prepare"), &out);
        return r;
    }
    r.old = field(&out.stdout, "version=");
    let basis = field(&out.stdout, "release=").map(|id| format!("{}/releases/{id}", env.deploy_to));

    // The artifact and this host's config files, properties and REVISION, in one transfer.
    rep.step("upload");
    let t = Instant::now();
    let staged = job.stage.join(a);
    let out = job.ssh.upload(
        a,
        &[job.artifact.as_path(), staged.as_path()],
        &release_dir,
        basis.as_deref(),
        LONG,
        &mut |l| rep.progress(l),
    );
    r.timed("upload", t);
    if !out.ok() {
        r.fail("upload", &out);
        return r;
    }

    rep.step("deploy");
    let t = Instant::now();
    let cmd = format!(
        "{} --config {} deploy --release {q} --keep {}",
        sh_quote(&env.baton),
        sh_quote(&env.config),
        env.keep_releases
    );
    let out = job.ssh.exec(a, &cmd, LONG, |l| rep.line(l));
    r.timed("deploy", t);
    if !out.ok() {
        r.fail("deploy", &out);
        return r;
    }
    r.deployed = true;

    rep.step("verify");
    let t = Instant::now();
    verify(host, &job.release.version, env.verify_timeout, &mut r);
    r.timed("verify", t);
    r
}

fn rollback_host(job: &Job, host: &Host, rep: &Reporter) -> HostReport {
    let env = &job.env;
    let a = &host.address;
    let mut r = HostReport::new(a);

    rep.step("rollback");
    let t = Instant::now();
    let script = format!(
        "set -e\n{}\n{}\necho ---\n{} --config {} rollback >&2\n{}\n",
        check_baton(env),
        read_current(env),
        sh_quote(&env.baton),
        sh_quote(&env.config),
        read_current(env)
    );
    let out = job.ssh.exec(a, &script, LONG, |l| rep.line(l));
    r.timed("rollback", t);
    let (before, after) = out.stdout.split_once("---\n").unwrap_or((&out.stdout, ""));
    r.old = field(before, "version=");
    if !out.ok() {
        r.fail(connect_or(&out, "rollback"), &out);
        return r;
    }
    r.deployed = true;
    match field(after, "version=") {
        Some(v) => {
            rep.step("verify");
            let t = Instant::now();
            verify(host, &v, env.verify_timeout, &mut r);
            r.timed("verify", t);
        }
        None => {
            r.new = None;
            r.outcome = Outcome::Failed {
                step: "verify",
                reason: format!(
                    "the release rolled back to has no version in {}",
                    env.properties
                ),
            };
        }
    }
    r
}

/// Waits (bounded) until the host reports `expected` on its version URL.
fn verify(host: &Host, expected: &str, timeout: Duration, r: &mut HostReport) {
    let deadline = Instant::now() + timeout;
    let last = loop {
        let res = http::get(&host.version_url, Duration::from_secs(3));
        let seen = match &res {
            Ok((200, body)) => {
                let v = http::version_of(body);
                if v == expected {
                    r.new = Some(v);
                    r.outcome = Outcome::Ok;
                    return;
                }
                format!("reports version {v:?}, expected {expected:?}")
            }
            Ok((code, _)) => format!("GET {}: HTTP {code}", host.version_url),
            Err(e) => format!("GET {}: {e}", host.version_url),
        };
        if let Ok((200, body)) = res {
            r.new = Some(http::version_of(&body));
        }
        if Instant::now() >= deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    r.outcome = Outcome::Failed {
        step: "verify",
        reason: format!("{last} (after {}s)", timeout.as_secs()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn check_baton_runs_nothing_hidden_in_the_remote_path() {
        let dir = std::env::temp_dir().join(format!("baton-quote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let marker = dir.join("PWNED");
        let text = format!(
            "service = \"web\"\n[build]\ncommand = \"true\"\nartifact = \"a\"\n[environments.p]\n\
             hosts = [\"h\"]\ndeploy_to = \"/srv\"\nversion_url = \"http://h:1/v\"\n\
             baton = \"/nonexistent/$(touch {m})/`touch {m}`/'x\\\"/baton\"\n",
            m = marker.display()
        );
        let df = super::super::config::parse(
            &text,
            std::path::Path::new("deploy.toml"),
            std::path::Path::new("/tmp"),
        )
        .expect("parses");
        let env = &df.envs["p"];
        // The script the host's shell runs first, run by this machine's sh.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(check_baton(env))
            .output()
            .expect("sh");
        assert_eq!(out.status.code(), Some(5), "{out:?}");
        assert!(!marker.exists(), "a command hidden in the baton path ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "baton is not installed at {} on this host",
                env.baton
            )),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Runs a rollout of `n` hosts where the hosts in `failing` fail; returns outcomes and halted.
    fn rollout(
        n: usize,
        limits: Limits,
        together: usize,
        failing: &'static [usize],
    ) -> (Vec<&'static str>, bool, usize) {
        let names: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
        let mut view = View::new(&names);
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (now2, peak2) = (Arc::clone(&now), Arc::clone(&peak));
        let halt = AtomicBool::new(false);
        let (reports, halted) = schedule(&names, limits, &halt, &mut view, move |slot, rep| {
            let c = now2.fetch_add(1, Ordering::SeqCst) + 1;
            peak2.fetch_max(c, Ordering::SeqCst);
            rep.step("work");
            // A failing host fails at once; the others wait (bounded) until `together`
            // hosts run at the same time: the peak then shows what the scheduler allows,
            // and a failure is seen while the others are still in flight.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !failing.contains(&slot)
                && now2.load(Ordering::SeqCst) < together
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            now2.fetch_sub(1, Ordering::SeqCst);
            let mut r = HostReport::new("?");
            r.outcome = if failing.contains(&slot) {
                Outcome::Failed {
                    step: "work",
                    reason: "boom".into(),
                }
            } else {
                Outcome::Ok
            };
            r
        });
        let kinds = reports
            .iter()
            .map(|r| match r.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed { .. } => "failed",
                Outcome::Skipped => "skipped",
                Outcome::RolledBack => "rolled back",
            })
            .collect();
        (kinds, halted, peak.load(Ordering::SeqCst))
    }

    fn limits(max_parallel: usize, canary: usize, max_failed: usize) -> Limits {
        Limits {
            max_parallel,
            canary,
            max_failed,
        }
    }

    #[test]
    fn a_failed_canary_halts_before_any_other_host() {
        let (k, halted, _) = rollout(4, limits(4, 1, 3), 1, &[0]);
        assert!(halted);
        assert_eq!(k, ["failed", "skipped", "skipped", "skipped"]);
    }

    #[test]
    fn max_failed_failures_are_tolerated_one_more_halts() {
        // One at a time, so the order is deterministic.
        let (k, halted, _) = rollout(5, limits(1, 1, 1), 1, &[1]);
        assert!(!halted);
        assert_eq!(k, ["ok", "failed", "ok", "ok", "ok"]);
        let (k, halted, _) = rollout(5, limits(1, 1, 1), 1, &[1, 2]);
        assert!(halted);
        assert_eq!(k, ["ok", "failed", "failed", "skipped", "skipped"]);
    }

    #[test]
    fn never_more_than_max_parallel_in_flight() {
        let (k, _, peak) = rollout(9, limits(3, 0, 0), 3, &[]);
        assert!(k.iter().all(|k| *k == "ok"));
        assert_eq!(peak, 3);
        let (_, _, peak) = rollout(3, limits(8, 0, 0), 3, &[]);
        assert_eq!(peak, 3);
    }

    #[test]
    fn in_flight_hosts_finish_after_a_halt() {
        // Two in flight; host 0 fails: host 1 still finishes, hosts 2 and 3 never start.
        let (k, halted, _) = rollout(4, limits(2, 0, 0), 3, &[0]);
        assert!(halted);
        assert_eq!(k[0], "failed");
        assert_eq!(k[1], "ok");
        assert_eq!(&k[2..], ["skipped", "skipped"]);
    }
}
