//! The command line (clap derive); each command is a few lines calling one module.

use crate::config::{self, Policy, Spec};
use crate::error::{Error, Result};
use crate::exit::Action;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// A process supervisor whose `start` means ready.
///
/// It starts a long-running service, writes the PID file only once a readiness
/// probe passes, restarts it with backoff, captures its logs, and stops the
/// whole process tree gracefully. Exit codes follow LSB 4.1.
#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Exit codes (LSB 4.1): 0 ok, 1 failed, 2 bad arguments, 4 no privilege, 5 not installed,\n\
                  6 not configured, 7 not running. status: 0 running, 1 dead with PID file, 3 not running,\n\
                  4 unknown.\n\nExample: baton --config /etc/baton/web.toml start"
)]
pub struct Cli {
    /// The service's config file; NAME defaults to the file's stem.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where NAME.toml files live.
    #[arg(long, global = true, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR, hide_default_value = false)]
    pub config_dir: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The service a command acts on.
#[derive(Debug, Args)]
pub struct Target {
    /// Service name: reads CONFIG_DIR/NAME.toml unless --config is given.
    pub name: Option<String>,
}

/// The commands; each acts on one service.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the service and wait until it is ready; 0 if it already runs.
    Start(Target),
    /// Stop the service and every process it started; 0 if it was not running.
    Stop(Target),
    /// Stop the service if it runs, then start it.
    Restart(Target),
    /// Restart the service only if it is running.
    TryRestart(Target),
    /// Send the service its reload signal (SIGHUP unless [reload] says otherwise).
    Reload(Target),
    /// Reload the service; baton always has a reload signal, so this never falls back to restart.
    ForceReload(Target),
    /// Show the service's state. Exit: 0 running, 1 dead with PID file, 3 not running, 4 unknown.
    ///
    /// Without NAME (and without --config): one line for every NAME.toml in CONFIG_DIR, a
    /// config that does not parse included; exit 0 if every service runs, else 3.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text: one object, or an array of them without NAME.
        #[arg(long)]
        json: bool,
    },
    /// Print the service's latest output from its log files (works when it is stopped too).
    Logs(LogsArgs),
    /// Print every service in CONFIG_DIR as Prometheus metrics (for node_exporter's textfile collector).
    Metrics {
        /// Write to FILE atomically (a temporary file renamed in the same directory).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print baton's man page (roff; view it with `baton man | man -l -`).
    Man,
    /// Supervise the service in the foreground (for systemd Type=notify and containers).
    Run(Target),
    /// Validate the config and list every problem with file, line and key.
    Check(Target),
    /// Reopen the service's log files (after an external logrotate moved them).
    ReopenLogs(Target),
    /// Print a file that lets another init system drive baton.
    Generate {
        /// What to render.
        #[command(subcommand)]
        what: Generate,
    },
    /// Hand over to a new release with no failed request: start it beside the running one,
    /// wait until ready, switch traffic, drain and stop the old instance.
    ///
    /// The new instance always runs from the config as it is on disk now, so without
    /// --release this applies a config change (env, JVM flags, probes, stop...) to the
    /// current release the same way.
    Deploy {
        #[command(flatten)]
        target: Target,
        /// The release: a directory or a file (an uberjar), copied in as releases/ID; a
        /// directory already under releases/ is used in place. Default: the current release.
        #[arg(long, value_name = "PATH")]
        release: Option<PathBuf>,
        /// Keep this many releases (overrides [release] keep).
        #[arg(long, value_name = "N")]
        keep: Option<u32>,
    },
    /// Hand back to the release before `current`, the same way.
    Rollback(Target),
    /// Replace the running supervisor with the baton binary now on disk (after an upgrade),
    /// keeping the service running: same supervisor and service PIDs, no line of output lost.
    Reexec(Target),
    /// Send the service's main process a signal, e.g. HUP for its own config reload.
    Signal {
        /// [NAME] SIGNAL: the service (unless --config names it) and the signal, HUP, USR1,
        /// USR2, TERM... (with or without SIG).
        #[arg(required = true, num_args = 1..=2, value_names = ["NAME", "SIGNAL"])]
        args: Vec<String>,
    },
    /// Deploy a new version to every host of an environment over SSH (see the deploy file).
    ///
    /// Builds once, locally; uploads to each host's releases/ID, writes the environment's
    /// config files and a service.properties file there, runs `baton deploy` on each host
    /// (canaries first, at most max_parallel at once) and verifies the version each host
    /// reports. Exit 0 only if every host ended on the new version.
    #[command(disable_version_flag = true)]
    Ship(ShipArgs),
    /// Internal: the detached supervisor that `start` launches.
    #[command(hide = true)]
    Supervise(Target),
    /// Internal: the supervisor's next image after `reexec`, carrying on from its record.
    #[command(hide = true, name = "__resume")]
    Resume(Target),
    /// Internal: says whether this binary can take over a supervisor's record of FORMAT.
    #[command(hide = true, name = "__reexec-check")]
    ReexecCheck {
        /// The record format the running supervisor writes.
        format: u32,
    },
    /// Internal: a deploy's switch worker (registry preflight, proxy switch, publish).
    #[command(hide = true, name = "__switch")]
    Switch(SwitchArgs),
}

/// `baton logs`' arguments.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    target: Target,
    /// Print the last N lines.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
    lines: usize,
    /// Keep printing lines as they are written, across rotation and deploys, until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// The streams to show, merged by time; repeat or separate with commas. events is
    /// baton's own log (baton.log). Default: stdout,stderr.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STREAM")]
    stream: Vec<crate::logview::Stream>,
}

/// The instances a `__switch` worker moves traffic between.
#[derive(Debug, Args)]
pub struct SwitchArgs {
    #[command(flatten)]
    target: Target,
    /// PID of the new instance (what X-Pid must show through the proxy).
    #[arg(long)]
    pid: i32,
    /// Port of the new instance.
    #[arg(long)]
    port: Option<u16>,
    /// Release ID of the new instance.
    #[arg(long)]
    release: Option<String>,
    /// PID of the instance being replaced.
    #[arg(long)]
    old_pid: Option<i32>,
    /// Port of the instance being replaced.
    #[arg(long, requires = "old_pid")]
    old_port: Option<u16>,
    /// Release ID of the instance being replaced.
    #[arg(long, requires = "old_pid")]
    old_release: Option<String>,
}

/// `baton ship ENV`'s arguments.
#[derive(Debug, Args)]
pub struct ShipArgs {
    /// The environment in the deploy file (staging, production, ...).
    pub env: String,
    /// The deploy file.
    #[arg(long, short = 'f', value_name = "FILE", default_value = "deploy.toml")]
    pub file: PathBuf,
    /// The version the hosts must report (default: `git describe`, else the release ID).
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Print the plan; build nothing, touch no host.
    #[arg(long)]
    pub dry_run: bool,
    /// Hand every host back to its previous release instead of shipping.
    #[arg(long, conflicts_with = "version")]
    pub rollback: bool,
    /// If the rollout fails, hand the hosts already deployed back to their previous release.
    #[arg(long, conflicts_with = "rollback")]
    pub rollback_on_failure: bool,
    /// When another ship holds the environment's fleet lock, wait up to this long (e.g. 10m) instead of refusing.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub wait_lock: Option<std::time::Duration>,
    /// Break the environment's fleet lock (say whose it was) and exit.
    #[arg(long, conflicts_with_all = ["rollback", "dry_run", "status", "version"])]
    pub unlock: bool,
    /// Show every host's release, version, supervisor state and version URL, and exit.
    #[arg(long, conflicts_with_all = ["rollback", "dry_run", "version"])]
    pub status: bool,
    /// Machine-readable output (with --status, and for the final ship report).
    #[arg(long)]
    pub json: bool,
}

/// Files `generate` can render.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// An LSB init script for /etc/init.d/NAME.
    InitScript(Target),
    /// A systemd unit (Type=notify, ExecStart=baton run).
    SystemdUnit(Target),
}

/// What `main` should exit with.
pub type Code = i32;

/// The command line: the supervisor's own as `start` writes it, or `stop`'s, both read
/// without clap; else clap's parse.
///
/// Out of line, so that clap's locals are not in `main`'s frame under the supervisor's
/// loop for its whole life.
#[inline(never)]
pub fn parse() -> std::result::Result<Cli, clap::Error> {
    Cli::supervisor_argv()
        .or_else(|| Cli::parse_stop(std::env::args_os()))
        .map_or_else(parse_with_clap, Ok)
}

/// clap's parse, out of line: inlined, its code sat between the few blocks of `parse` a
/// `stop` runs, spreading them over three pages of text (benches/PROFILE-stop.md, ninth
/// round).
#[cold]
#[inline(never)]
fn parse_with_clap() -> std::result::Result<Cli, clap::Error> {
    Cli::try_parse()
}

impl Cli {
    /// `baton --config FILE supervise NAME`, exactly as `start` runs the supervisor
    /// (daemon.rs), recognised without clap: clap builds its whole command tree first
    /// (~360k instructions and a 150 KB heap peak, in whose holes the supervisor would
    /// then live). Any other command line goes to clap.
    fn supervisor_argv() -> Option<Cli> {
        Cli::supervisor_args(std::env::args_os().skip(1))
    }

    /// `supervisor_argv` of the arguments after the program name.
    fn supervisor_args(mut args: impl Iterator<Item = std::ffi::OsString>) -> Option<Cli> {
        let [Some(flag), Some(file), Some(command), Some(name), None] =
            [(); 5].map(|()| args.next())
        else {
            return None;
        };
        let option = |s: &std::ffi::OsStr| s.as_encoded_bytes().starts_with(b"-");
        if flag != "--config" || command != "supervise" || file.is_empty() || option(&name) {
            return None;
        }
        Some(Cli {
            config: Some(file.into()),
            config_dir: PathBuf::from(config::DEFAULT_CONFIG_DIR),
            command: Command::Supervise(Target {
                name: Some(name.into_string().ok()?),
            }),
        })
    }

    /// Reads `[--config FILE] [--config-dir DIR] stop [NAME]` (the globals in any place,
    /// `=VALUE` or not) without clap; None for any other command line, or anything unusual
    /// in this one, which clap then reads. Building clap's whole command tree is most of
    /// what a `stop` computes and touches before its request (the stop figure of
    /// benches/PROFILE-stop.md); a unit test holds this to what clap makes of the same line.
    pub fn parse_stop(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<Cli> {
        let mut args = args.into_iter().skip(1);
        let (mut config, mut config_dir, mut stop, mut name) = (None, None, false, None);
        // A value clap would read as one: not empty, not looking like a flag.
        let value = |v: Option<std::ffi::OsString>| {
            v.filter(|v| !v.is_empty() && !v.as_encoded_bytes().starts_with(b"-"))
                .map(PathBuf::from)
        };
        while let Some(arg) = args.next() {
            let bytes = arg.as_encoded_bytes();
            let (flag, inline) = match bytes.iter().position(|&b| b == b'=') {
                Some(i) if bytes.starts_with(b"--") => {
                    // Split at the first '=': both halves of valid encoded bytes.
                    let text = arg.to_str()?;
                    (&text[..i], Some(std::ffi::OsString::from(&text[i + 1..])))
                }
                _ => (arg.to_str().unwrap_or(""), None),
            };
            let slot = match flag {
                "--config" => &mut config,
                "--config-dir" => &mut config_dir,
                "stop" if !stop && inline.is_none() => {
                    stop = true;
                    continue;
                }
                word if stop && name.is_none() && inline.is_none() => {
                    if word.is_empty() || word.starts_with('-') {
                        return None;
                    }
                    name = Some(word.to_string());
                    continue;
                }
                _ => return None,
            };
            if slot.is_some() {
                return None;
            }
            *slot = Some(value(inline.or_else(|| args.next()))?);
        }
        stop.then(|| Cli {
            config,
            config_dir: config_dir.unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_DIR)),
            command: Command::Stop(Target { name }),
        })
    }
}

impl Cli {
    /// Runs the command; returns the exit code for a success (status has several).
    pub fn run(self) -> Result<Code> {
        match &self.command {
            // Each out of line, as `run_other` is. The supervisor's loop runs under this
            // frame for its whole life, and `run_other`'s is the size of every command's
            // locals (15 KB, every page of it touched by the stack probes); `stop` runs
            // after an idle wait, where each page of stack is a fault.
            Command::Supervise(t) => self.supervise(t),
            Command::Stop(t) => self.stop(t),
            _ => self.run_other(),
        }
    }

    fn locate(&self, t: &Target) -> Result<(PathBuf, String)> {
        let (file, name) = config::locate(
            self.config.as_deref(),
            Some(&self.config_dir),
            t.name.as_deref(),
        )?;
        Ok((absolute(&file), name))
    }

    fn load(&self, t: &Target) -> Result<Spec> {
        let (file, name) = self.locate(t)?;
        let mut spec = config::load(&file, &name)?;
        spec.file = file;
        Ok(spec)
    }

    /// The detached supervisor `start` launched: reports to it through the readiness pipe.
    #[inline(never)]
    fn supervise(&self, t: &Target) -> Result<Code> {
        let reporter = crate::daemon::Reporter::from_env();
        let spec = match self.load(t) {
            Ok(s) => s,
            Err(e) => {
                let mut reporter = reporter;
                reporter.failed(e.exit_code(), &e.to_string());
                return Err(e);
            }
        };
        let events = match crate::logs::EventLog::open(&spec.log) {
            Ok(ev) => ev,
            Err(e) => {
                let e = Error::unable("open the event log", e);
                let mut reporter = reporter;
                reporter.failed(e.exit_code(), &e.to_string());
                return Err(e);
            }
        };
        init_tracing(events.clone());
        crate::supervisor::run(
            spec,
            crate::supervisor::Options {
                reporter,
                systemd_notify: None,
                events,
                foreground: false,
            },
        )
    }

    /// The config's text and its own trust are checked before the request, as for every
    /// command; what it says of the host (program, working directory: only warnings for a
    /// service already running) is checked and told once the request is on its way. A
    /// config unchanged since its supervisor validated it is not read again: the card that
    /// supervisor left says what the stop needs (`config::card`).
    #[inline(never)]
    fn stop(&self, t: &Target) -> Result<Code> {
        // A stop `baton`'s front has sent already, with the card it went by.
        let mut front = crate::control::Sent::take();
        let (file, name) = self.locate(t)?;
        let card = match front.as_mut().and_then(|f| f.card.take()) {
            Some(open) => config::card::read_open(open, &file, &name),
            None => config::card::read(&file, &name),
        };
        if let Some(card) = card {
            let card = kept(card);
            let running = crate::service::stop((&*card).into(), front, || warn(card.warnings()))?;
            if !running {
                card.remove();
            }
            return Ok(0);
        }
        Self::stop_reading(file, &name, front)
    }

    /// A stop without a card: the full reading (`Cli::stop`). Out of line, so that its code
    /// does not sit between the blocks the card's path runs.
    #[inline(never)]
    fn stop_reading(
        file: PathBuf,
        name: &str,
        front: Option<crate::control::Sent>,
    ) -> Result<Code> {
        let (mut spec, later) = config::load_running_later(&file, name)?;
        spec.file = file;
        let spec = kept(spec);
        crate::service::stop((&*spec).into(), front, || warn(later.warnings())).map(|_| 0)
    }

    /// For a command addressed to the supervisor already running: a program or
    /// directory gone since the start is a warning, so the service can still be stopped.
    fn load_running(&self, t: &Target) -> Result<Spec> {
        let (file, name) = self.locate(t)?;
        let (mut spec, warnings) = config::load_running(&file, &name)?;
        warn(warnings);
        spec.file = file;
        Ok(spec)
    }

    #[inline(never)]
    fn run_other(self) -> Result<Code> {
        let load = |t: &Target| self.load(t);
        let load_running = |t: &Target| self.load_running(t);
        match &self.command {
            Command::Start(t) => crate::service::start_and_end(&kept(load(t)?)).map(|()| 0),
            Command::Stop(t) => self.stop(t),
            Command::Restart(t) => crate::service::restart(&kept(load(t)?)).map(|()| 0),
            Command::TryRestart(t) => crate::service::try_restart(&kept(load(t)?)).map(|()| 0),
            Command::Reload(t) | Command::ForceReload(t) => {
                crate::service::reload(&load(t)?).map(|()| 0)
            }
            Command::Deploy {
                target,
                release,
                keep,
            } => {
                let spec = load(target)?;
                match release {
                    Some(r) => crate::deploy::client::deploy(&spec, r, *keep),
                    None => crate::deploy::client::reconfigure(&spec),
                }
                .map(|()| 0)
            }
            Command::Rollback(t) => crate::deploy::client::rollback(&load(t)?).map(|()| 0),
            Command::Reexec(t) => crate::service::reexec(&load(t)?).map(|()| 0),
            Command::Signal { args } => {
                let (name, signal) = match &args[..] {
                    [name, signal] => (Some(name.clone()), signal),
                    [signal] => (None, signal),
                    _ => {
                        return Err(Error::unable("send a signal", "expected [NAME] SIGNAL")
                            .code(Action::BadArgs))
                    }
                };
                let sig = config::units::parse_signal(signal).map_err(|e| {
                    Error::unable(format!("send signal {signal}"), e).code(Action::BadArgs)
                })?;
                crate::service::signal(&load_running(&Target { name })?, sig).map(|()| 0)
            }
            Command::ReexecCheck { format } => crate::supervisor::reexec_check(*format).map(|()| 0),
            Command::Resume(t) => crate::supervisor::resume_from_env(
                || load(t),
                |foreground, log| {
                    let events = if foreground {
                        crate::logs::EventLog::stderr()
                    } else {
                        crate::logs::EventLog::open(log)
                            .map_err(|e| Error::unable("open the event log", e))?
                    };
                    init_tracing(events.clone());
                    Ok(events)
                },
            ),
            Command::ReopenLogs(t) => crate::service::reopen_logs(&load_running(t)?).map(|()| 0),
            Command::Status { target, json } if target.name.is_none() && self.config.is_none() => {
                match crate::overview::status(&self.config_dir, *json) {
                    Ok(code) => Ok(code.code()),
                    Err(e) => {
                        eprintln!("baton: {e}");
                        Ok(crate::exit::Status::Unknown.code())
                    }
                }
            }
            Command::Logs(a) => crate::logview::run(
                &load_running(&a.target)?,
                &crate::logview::Options {
                    lines: a.lines,
                    follow: a.follow,
                    streams: a.stream.clone(),
                },
            )
            .map(|()| 0),
            Command::Metrics { output } => {
                crate::metrics::run(&self.config_dir, output.as_deref()).map(|()| 0)
            }
            Command::Completions { shell } => {
                clap_complete::generate(
                    *shell,
                    &mut <Cli as clap::CommandFactory>::command(),
                    "baton",
                    &mut std::io::stdout(),
                );
                Ok(0)
            }
            Command::Man => {
                let mut out = Vec::new();
                clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                    .render(&mut out)
                    .map_err(|e| Error::io("render the man page", &e))?;
                std::io::Write::write_all(&mut std::io::stdout(), &out)
                    .map_err(|e| Error::io("write the man page", &e))?;
                Ok(0)
            }
            Command::Status { target, json } => match load_running(target) {
                Ok(spec) => crate::service::status(&spec, *json).map(|s| s.code()),
                // LSB: status of a service that cannot be read is "unknown".
                Err(e) => {
                    eprintln!("{e}");
                    Ok(crate::exit::Status::Unknown.code())
                }
            },
            Command::Check(t) => {
                let spec = load(t)?;
                let host = config::host::check(&spec);
                for w in &host.warnings {
                    eprintln!("warning: {w}");
                }
                if !host.errors.is_empty() {
                    return Err(Error::unable(
                        format!("use {} on this host", spec.file.display()),
                        host.errors.join("; "),
                    )
                    .code(Action::NotConfigured));
                }
                println!(
                    "{}: ok ({} {})",
                    spec.file.display(),
                    spec.name,
                    spec.command.join(" ")
                );
                Ok(0)
            }
            Command::Run(t) => {
                let spec = load(t)?;
                let opts = crate::supervisor::Options {
                    reporter: crate::daemon::Reporter::none(),
                    systemd_notify: std::env::var("NOTIFY_SOCKET").ok(),
                    events: crate::logs::EventLog::stderr(),
                    foreground: true,
                };
                init_tracing(opts.events.clone());
                crate::service::preflight(&spec)?;
                crate::supervisor::run(spec, opts)
            }
            Command::Supervise(t) => self.supervise(t),
            Command::Ship(a) => crate::ship::run(&crate::ship::Options {
                file: a.file.clone(),
                env: a.env.clone(),
                version: a.version.clone(),
                dry_run: a.dry_run,
                rollback: a.rollback,
                rollback_on_failure: a.rollback_on_failure,
                wait_lock: a.wait_lock,
                unlock: a.unlock,
                status: a.status,
                json: a.json,
            }),
            Command::Switch(a) => {
                let spec = match load(&a.target) {
                    Ok(s) => s,
                    // The supervisor relays stdout; keep the worker's protocol even here.
                    Err(e) => {
                        println!(
                            "error: config: {}",
                            crate::deploy::proxy::one_line(&e.to_string())
                        );
                        return Ok(1);
                    }
                };
                let to = crate::deploy::Backend {
                    pid: a.pid,
                    port: a.port,
                    release: a.release.clone(),
                };
                let from = a.old_pid.map(|pid| crate::deploy::Backend {
                    pid,
                    port: a.old_port,
                    release: a.old_release.clone(),
                });
                Ok(crate::deploy::switch::run(&spec, &to, from.as_ref()))
            }
            Command::Generate { what } => {
                let (t, init) = match what {
                    Generate::InitScript(t) => (t, true),
                    Generate::SystemdUnit(t) => (t, false),
                };
                let spec = load(t)?;
                let baton = crate::host::front_path()
                    .map_err(|e| Error::io("find the baton executable", &e))?;
                let description = format!("{} supervised by baton", spec.name);
                let target = crate::generate::Target {
                    name: &spec.name,
                    config: &spec.file,
                    baton: &baton,
                    description: &description,
                    stop_timeout: spec.stop.timeout,
                    pidfile: &spec.pidfile,
                    baton_restarts: spec.restart.policy != Policy::Never,
                };
                let text = if init {
                    crate::generate::init_script(&target)
                } else {
                    crate::generate::systemd_unit(&target)
                };
                print!("{text}");
                Ok(0)
            }
        }
    }
}

/// The spec of a command that waits (for readiness, for the supervisor's exit) and then
/// ends the process: never freed. Freeing it after the wait would write to every heap
/// page its strings live on (and can set malloc consolidating its free lists), each page
/// a cost for a process that has slept (benches/PROFILE-ready.md); the exit frees it all.
/// Tells the config's problems of the host that do not stop this command.
fn warn(warnings: Vec<String>) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn kept<T>(spec: T) -> std::mem::ManuallyDrop<T> {
    std::mem::ManuallyDrop::new(spec)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Routes the supervisor's own events to `events`.
fn init_tracing(events: crate::logs::EventLog) {
    let _ = tracing::subscriber::set_global_default(crate::logs::EventSubscriber(events));
}

/// Maps a clap failure to LSB's "invalid arguments" (2) while letting --help and --version exit 0.
pub fn usage_code(e: &clap::Error) -> Code {
    if e.use_stderr() {
        Action::BadArgs.code()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_supervisor_command_line_is_read_as_clap_reads_it() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let line = args(&["--config", "/etc/baton/web.toml", "supervise", "web"]);
        let fast = Cli::supervisor_args(line.clone().into_iter()).expect("recognised");
        let clap =
            Cli::try_parse_from(std::iter::once("baton".into()).chain(line)).expect("parses");
        assert_eq!(format!("{fast:?}"), format!("{clap:?}"));
        // Anything else is clap's to read (and to reject).
        for other in [
            &["supervise", "web"][..],
            &["--config", "/etc/baton/web.toml", "supervise"],
            &[
                "--config",
                "/etc/baton/web.toml",
                "supervise",
                "web",
                "--json",
            ],
            &["--config", "/etc/baton/web.toml", "start", "web"],
            &["--config", "/etc/baton/web.toml", "supervise", "--help"],
            &["--config", "", "supervise", "web"],
            &["--config-dir", "/etc/baton", "supervise", "web"],
        ] {
            assert!(
                Cli::supervisor_args(args(other).into_iter()).is_none(),
                "{other:?}"
            );
        }
    }

    /// `parse_stop` makes of a command line what clap makes of it, or leaves it to clap.
    #[test]
    fn the_stop_shortcut_reads_what_clap_reads_or_defers() {
        let words = [
            "stop",
            "--config",
            "--config-dir",
            "--config=a.toml",
            "--config-dir=",
            "web",
            "/etc/x.toml",
            "-",
            "--",
            "-h",
            "--help",
            "status",
            "",
            "a=b",
            "--config=",
            "--stop",
            "--version",
        ];
        let mut read = 0;
        // Every line of up to five words from the list: 1.5 million lines would be too
        // many, so the last two positions draw from a shorter list.
        let n = words.len();
        for a in 0..n {
            for b in 0..=n {
                for c in 0..=n {
                    for d in 0..=6 {
                        for e in 0..=6 {
                            let line: Vec<&str> = [Some(a), Some(b), Some(c), Some(d), Some(e)]
                                .into_iter()
                                .flatten()
                                .take_while(|&i| i < n)
                                .map(|i| words[i])
                                .collect();
                            let argv = std::iter::once("baton").chain(line.iter().copied());
                            let fast = Cli::parse_stop(argv.clone().map(Into::into));
                            let Some(fast) = fast else { continue };
                            read += 1;
                            let clap = Cli::try_parse_from(argv).unwrap_or_else(|e| {
                                panic!("{line:?}: clap refuses what the shortcut read: {e}")
                            });
                            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line:?}");
                        }
                    }
                }
            }
        }
        assert!(read > 20, "the shortcut read {read} lines");
        let some = |line: &[&str]| {
            Cli::parse_stop(
                std::iter::once("baton")
                    .chain(line.iter().copied())
                    .map(Into::into),
            )
            .is_some()
        };
        assert!(some(&["--config", "/etc/baton/web.toml", "stop"]));
        assert!(some(&["stop", "web", "--config-dir=/tmp/x"]));
        assert!(!some(&["stop", "web", "extra"]), "two names: clap's error");
        assert!(!some(&["start", "web"]));
    }
}
