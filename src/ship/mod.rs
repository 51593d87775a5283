//! `baton ship`: build once, push to every host of an environment over SSH, hand over on each, verify.

pub mod config;
pub mod http;
mod lock;
mod release;
mod report;
mod rollout;
mod ssh;
mod status;
mod view;

use crate::error::{Error, Result};
use crate::exit::Action;
use config::{DeployFile, Env, Transfer};
use release::Release;
use report::{HostReport, Outcome};
use rollout::{Job, Work};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// What the operator asked `ship` to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The deploy file.
    pub file: PathBuf,
    /// The environment's name.
    pub env: String,
    /// The version to ship (default: `git describe`, else the release ID).
    pub version: Option<String>,
    /// Print the plan only.
    pub dry_run: bool,
    /// Roll every host back to its previous release instead of shipping.
    pub rollback: bool,
    /// After a halted rollout, hand the deployed hosts back to their previous release.
    pub rollback_on_failure: bool,
    /// Wait this long for another ship's fleet lock instead of refusing.
    pub wait_lock: Option<std::time::Duration>,
    /// Break the fleet lock and exit.
    pub unlock: bool,
    /// Show the fleet's state and exit.
    pub status: bool,
    /// JSON output.
    pub json: bool,
}

/// Runs `baton ship`; Ok(0) only if every host ended on the intended version.
pub fn run(opts: &Options) -> Result<i32> {
    let df = config::load(&opts.file)?;
    let Some(env) = df.envs.get(&opts.env).cloned() else {
        let known: Vec<&str> = df.envs.keys().map(String::as_str).collect();
        return Err(Error::unable(
            format!("choose environment {:?}", opts.env),
            format!(
                "{} defines only: {}",
                df.file.display(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ),
        )
        .code(Action::BadArgs));
    };
    if opts.unlock {
        return unlock(&df, &env);
    }
    if opts.status {
        return status::run(&df, &env, opts.json);
    }
    let release = Release::new(&df, &env, opts.version.as_deref());
    if opts.json && !opts.dry_run {
        json_stdout()?;
    }
    if opts.dry_run {
        print!("{}", plan(&df, &env, &release, opts));
        return Ok(0);
    }
    let started = Instant::now();
    let all: Vec<usize> = (0..env.hosts.len()).collect();
    let doing = if opts.rollback {
        "rollback".to_string()
    } else {
        format!("ship {}", release.version)
    };
    // Held until this function returns: the whole rollout, rollback on failure included.
    let lock = take_lock(&df, &env, &doing, opts)?;
    let lock_lost = lock
        .as_ref()
        .map_or_else(|| Arc::new(AtomicBool::new(false)), lock::Lock::lost);
    if opts.rollback {
        let job = Arc::new(Job {
            ssh: ssh::Ssh::new(&env)?,
            artifact: df.build.artifact.clone(),
            stage: PathBuf::new(),
            env,
            release,
            lock_lost,
        });
        println!(
            "rolling back {} in {} on {} host(s)",
            df.service,
            job.env.name,
            all.len()
        );
        let names = names(&job.env, &all);
        let mut view = view::View::new(&names);
        let (reports, _) = rollout::run(&job, &all, Work::Rollback, 0, usize::MAX, &mut view);
        close(&job, &all);
        return finish(&reports, started, "roll back", &job.env.name);
    }

    println!(
        "shipping {} {} (release {}) to {}: {} host(s), canary {}, max_parallel {}, max_failed {}",
        df.service,
        release.version,
        release.id,
        env.name,
        env.hosts.len(),
        env.canary,
        env.max_parallel,
        env.max_failed
    );
    println!("build: {}", df.build.command);
    let took = release::build(&df, &release)?;
    println!(
        "build: ok in {:.1}s: {}",
        took.as_secs_f64(),
        df.build.artifact.display()
    );
    // A fresh private directory: a predictable /tmp name could be planted by another user.
    let tmp = std::env::temp_dir();
    let stage_dir = crate::files::Dir::open(&tmp)
        .and_then(|d| d.create_private("baton-ship-stage-"))
        .map_err(|e| {
            Error::io(
                format!("create a staging directory in {}", tmp.display()),
                &e,
            )
        })?;
    let stage = stage_dir.path().to_path_buf();
    let staged = release::stage(&env, &release, &stage_dir);
    let job = Arc::new(Job {
        ssh: ssh::Ssh::new(&env)?,
        artifact: df.build.artifact.clone(),
        stage: stage.clone(),
        env,
        release,
        lock_lost,
    });
    let result = staged.map(|_| {
        let names = names(&job.env, &all);
        let mut view = view::View::new(&names);
        let (mut reports, halted) = rollout::run(
            &job,
            &all,
            Work::Ship,
            job.env.canary,
            job.env.max_failed,
            &mut view,
        );
        if halted {
            let failed: Vec<&str> = reports
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Failed { .. }))
                .map(|r| r.host.as_str())
                .collect();
            println!(
                "rollout halted: {} failed; no further host was started",
                failed.join(", ")
            );
        }
        if opts.rollback_on_failure && reports.iter().any(|r| r.outcome != Outcome::Ok) {
            rollback_deployed(&job, &mut reports);
        }
        reports
    });
    close(&job, &all);
    let _ = std::fs::remove_dir_all(&stage);
    let reports = result?;
    finish(
        &reports,
        started,
        &format!("ship {}", job.release.version),
        &job.env.name,
    )
}

/// With --json: the real stdout, kept for the report while everything else goes to stderr.
static JSON_OUT: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Sends stdout's human output to stderr and keeps stdout for the JSON report alone.
fn json_stdout() -> Result<()> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let _ = std::io::stdout().flush();
    let real = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("keep stdout for --json", &e))?;
    nix::unistd::dup2(2, 1).map_err(|e| Error::errno("send progress to stderr for --json", e))?;
    if let Ok(mut o) = JSON_OUT.lock() {
        *o = Some(std::fs::File::from(real));
    }
    Ok(())
}

/// Takes the environment's fleet lock when the deploy file names etcd members for it.
fn take_lock(
    df: &DeployFile,
    env: &Env,
    doing: &str,
    opts: &Options,
) -> Result<Option<lock::Lock>> {
    if env.etcd.is_empty() {
        if opts.wait_lock.is_some() {
            return Err(Error::unable(
                "wait for the fleet lock",
                format!(
                    "environments.{} in {} names no etcd members, so there is no lock",
                    env.name,
                    df.file.display()
                ),
            )
            .code(Action::BadArgs)
            .hint(
                "add etcd = [\"http://HOST:2379\", ...] to the environment, or drop --wait-lock",
            ));
        }
        return Ok(None);
    }
    let l = lock::acquire(env, &df.service, doing, opts.wait_lock)?;
    println!(
        "fleet lock: holding {} (lease {}s)",
        l.key(),
        env.lock_ttl.as_secs()
    );
    Ok(Some(l))
}

/// `--unlock`: breaks the lock and says whose it was.
fn unlock(df: &DeployFile, env: &Env) -> Result<i32> {
    if env.etcd.is_empty() {
        return Err(Error::unable(
            format!("unlock {}", env.name),
            format!(
                "environments.{} in {} names no etcd members, so there is no lock",
                env.name,
                df.file.display()
            ),
        )
        .code(Action::BadArgs));
    }
    let key = lock::key(&df.service, &env.name);
    match lock::unlock(env, &df.service)? {
        Some(holder) => println!("unlocked {key}: it was held by {holder}"),
        None => println!("{key} was not locked"),
    }
    Ok(0)
}

fn names(env: &Env, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| env.hosts[i].address.clone()).collect()
}

/// Hands every host whose `current` moved back to its previous release.
fn rollback_deployed(job: &Arc<Job>, reports: &mut [HostReport]) {
    let back: Vec<usize> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| r.deployed)
        .map(|(i, _)| i)
        .collect();
    if back.is_empty() {
        println!("rollback on failure: no host had switched, nothing to undo");
        return;
    }
    println!(
        "rollback on failure: handing {} host(s) back to their previous release",
        back.len()
    );
    let mut view = view::View::new(&names(&job.env, &back));
    let (undone, _) = rollout::run(job, &back, Work::Rollback, 0, usize::MAX, &mut view);
    for (slot, u) in back.iter().zip(undone) {
        let r = &mut reports[*slot];
        r.took += u.took;
        r.phases.extend(
            u.phases
                .iter()
                .map(|&(p, d)| (if p == "verify" { "rollback verify" } else { p }, d)),
        );
        match u.outcome {
            Outcome::Ok => {
                r.new = u.new;
                r.outcome = Outcome::RolledBack;
            }
            Outcome::Failed { step, reason } => {
                r.new = u.new;
                r.outcome = Outcome::Failed {
                    step: if step == "verify" {
                        "rollback verify"
                    } else {
                        "rollback"
                    },
                    reason,
                };
                r.output = u.output;
            }
            Outcome::Skipped | Outcome::RolledBack => {}
        }
    }
}

fn close(job: &Job, idx: &[usize]) {
    for &i in idx {
        job.ssh.close(&job.env.hosts[i].address);
    }
}

/// Prints the table and every failure's output; the exit status says whether all hosts made it.
fn finish(reports: &[HostReport], started: Instant, what: &str, env: &str) -> Result<i32> {
    println!();
    print!("{}", view::table(reports));
    if let Some(mut out) = JSON_OUT.lock().ok().and_then(|mut o| o.take()) {
        use std::io::Write;
        let v = view::json(reports, what, env, started.elapsed());
        let _ = writeln!(out, "{v}");
    }
    for r in reports {
        if let Outcome::Failed { step, .. } = &r.outcome {
            if !r.output.trim().is_empty() {
                println!("\n--- {} ({step}) output:", r.host);
                let lines: Vec<&str> = r.output.trim_end().lines().collect();
                for l in &lines[lines.len().saturating_sub(30)..] {
                    println!("  {l}");
                }
            }
        }
    }
    let ok = reports.iter().filter(|r| r.outcome == Outcome::Ok).count();
    println!(
        "\n{ok}/{} host(s) ok in {:.1}s",
        reports.len(),
        started.elapsed().as_secs_f64()
    );
    if ok == reports.len() {
        Ok(0)
    } else {
        Err(Error::unable(
            format!("{what} to {env}"),
            format!(
                "{} of {} host(s) did not end on the intended version",
                reports.len() - ok,
                reports.len()
            ),
        )
        .hint("see the table and output above"))
    }
}

/// The plan `--dry-run` prints: what would be built, copied and run, host by host.
fn plan(df: &DeployFile, env: &Env, rel: &Release, opts: &Options) -> String {
    let mut s = String::new();
    let root = &env.deploy_to;
    let login = |h: &str| match &env.user {
        Some(u) => format!("{u}@{h}:{}", env.port),
        None => format!("{h}:{}", env.port),
    };
    if opts.rollback {
        s.push_str(&format!(
            "plan: roll back {} in {} ({} host(s), max_parallel {})\n",
            df.service,
            env.name,
            env.hosts.len(),
            env.max_parallel
        ));
        for h in &env.hosts {
            s.push_str(&format!(
                "  {}: {} --config {} rollback; verify {}\n",
                login(&h.address),
                env.baton,
                env.config,
                h.version_url
            ));
        }
    } else {
        s.push_str(&format!(
            "plan: ship {} {} as release {} to {}\n",
            df.service, rel.version, rel.id, env.name
        ));
        s.push_str(&format!(
            "build: in {}: {}\n  artifact: {}\n",
            df.base.display(),
            df.build.command,
            df.build.artifact.display()
        ));
        s.push_str(&format!(
            "rollout: {} host(s), canary {} first, then max_parallel {}, halt after {} failure(s){}\n",
            env.hosts.len(),
            env.canary.min(env.hosts.len()),
            env.max_parallel,
            env.max_failed + 1,
            if opts.rollback_on_failure {
                ", rollback on failure"
            } else {
                ""
            }
        ));
        for (i, h) in env.hosts.iter().enumerate() {
            let tag = if i < env.canary { "canary" } else { "host" };
            s.push_str(&format!(
                "  {:>2}. {tag:6} {}  verify {}\n",
                i + 1,
                login(&h.address),
                h.version_url
            ));
        }
        let dir = format!("{root}/releases/{}", rel.id);
        s.push_str("on each host:\n");
        s.push_str(&format!("  mkdir -p {dir}\n"));
        s.push_str(&format!(
            "  {} {} -> {dir}/\n",
            match env.transfer {
                Transfer::Rsync => "rsync -a",
                Transfer::Scp => "scp",
            },
            df.build.artifact.display()
        ));
        for (dest, src) in &env.files {
            s.push_str(&format!("  install {} -> {dir}/{dest}\n", src.display()));
        }
        s.push_str(&format!(
            "  write {dir}/{} (version={} commit={} environment={} host=HOST) and {dir}/REVISION\n",
            env.properties, rel.version, rel.commit, env.name
        ));
        s.push_str(&format!(
            "  {} --config {} deploy --release {dir} --keep {}\n",
            env.baton, env.config, env.keep_releases
        ));
        s.push_str(&format!(
            "  verify: the version URL reports {} within {}s\n",
            rel.version,
            env.verify_timeout.as_secs()
        ));
    }
    if !env.etcd.is_empty() {
        s.push_str(&format!(
            "fleet lock: {} in etcd ({}), lease {}s, held for the whole rollout\n",
            lock::key(&df.service, &env.name),
            env.etcd.join(", "),
            env.lock_ttl.as_secs()
        ));
    }
    s.push_str("dry run: nothing was built, copied or changed\n");
    s
}
