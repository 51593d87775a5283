//! Setting the loop up: the descriptors it owns (signalfd, control and notify sockets, the
//! shared listener, logs), the tracker, and the rules its machine starts with.

use super::clients::Clients;
use super::routing::Routing;
use super::state::{Machine, Rules};
use super::Supervisor;
use crate::config::Spec;
use crate::control::Server;
use crate::daemon::Reporter;
use crate::error::{Error, Result};
use crate::logs::Output;
use crate::pidfile;
use crate::process;
use crate::tracking::{self, Tracker};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// How the supervisor process was started.
pub struct Options {
    /// Reports ready/failed to a waiting `baton start`.
    pub reporter: Reporter,
    /// The systemd notify socket to tell READY=1, under `run`.
    pub systemd_notify: Option<String>,
    /// Where the supervisor's own events go.
    pub events: crate::logs::EventLog,
    /// Supervising in the foreground (`baton run`): a reexec keeps it so.
    pub foreground: bool,
}

/// Resolved once at start: after a package upgrade replaced the file, /proc/self/exe names
/// the deleted old image, while this path holds the new binary.
fn own_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => PathBuf::from(p),
        None => exe,
    }
}

/// A new supervisor for `spec`, holding `lock`; on failure the reporter, to tell `start` why.
pub fn setup(
    spec: Spec,
    reporter: Reporter,
    systemd: Option<String>,
    events: crate::logs::EventLog,
    lock: pidfile::SupervisorLock,
    foreground: bool,
) -> std::result::Result<Supervisor, (Error, Reporter)> {
    let r = (|| {
        let sigfd = signals()?;
        // Before the first child: every helper we start carries the mark, the service never.
        // (A reexec keeps the mark: the environment crosses the exec.)
        process::mark_helpers();
        let output = open_output(&spec)?;
        let server = Server::bind(&spec.socket)?;
        let notify = if spec
            .ready
            .probes
            .contains(&crate::config::ProbeSpec::Notify)
        {
            let path = spec.state_dir.join("notify.sock");
            // By name in a directory held open: remove and chown act on the entry, never a planted link's target.
            let dir = crate::files::Dir::open(&spec.state_dir)
                .map_err(|e| Error::io(format!("open {}", spec.state_dir.display()), &e))?;
            let _ = dir.remove(std::ffi::OsStr::new("notify.sock"));
            let sock = UnixDatagram::bind(&path)
                .map_err(|e| Error::io(format!("create notify socket {}", path.display()), &e))?;
            sock.set_nonblocking(true)
                .map_err(|e| Error::io("configure notify socket", &e))?;
            pass_credentials(&sock)?;
            if let Some(a) = &spec.account {
                dir.chown(std::ffi::OsStr::new("notify.sock"), a.uid, a.gid)
                    .map_err(|e| Error::io(format!("hand {} to {}", path.display(), a.name), &e))?;
            }
            Some((sock, path))
        } else {
            None
        };
        let listener = match &spec.listen {
            Some(l) => Some(bind_listener(l.address)?),
            None => None,
        };
        Ok((sigfd, output, server, notify, listener))
    })();
    let (sigfd, output, server, notify, listener) = match r {
        Ok(v) => v,
        Err(e) => return Err((e, reporter)),
    };
    let tracker = Tracker::setup(&spec);
    tracking::arm(&spec, &tracker);
    tracing::info!(
        "tracking {} by {}{}",
        spec.name,
        tracker.kind(),
        tracker
            .cgroup_path()
            .map_or(String::new(), |p| format!(" {}", p.display()))
    );
    let rules = rules_of(&spec);
    Ok(assemble(
        spec,
        Machine::new(rules),
        Parts {
            sigfd,
            output,
            server,
            notify,
            listener,
            reporter,
            systemd,
            events,
            lock,
            foreground,
            tracker,
            lease: None,
        },
    ))
}

/// What the loop needs beyond the config and the machine, however it was set up.
pub struct Parts {
    pub sigfd: SignalFd,
    pub output: Output,
    pub server: Server,
    pub notify: Option<(UnixDatagram, PathBuf)>,
    pub listener: Option<OwnedFd>,
    pub reporter: Reporter,
    pub systemd: Option<String>,
    pub events: crate::logs::EventLog,
    pub lock: pidfile::SupervisorLock,
    pub foreground: bool,
    pub tracker: Tracker,
    /// The etcd lease a previous image held (`baton reexec`).
    pub lease: Option<i64>,
}

/// The supervisor from its parts, nothing spawned yet.
pub fn assemble(spec: Spec, machine: Machine, p: Parts) -> Supervisor {
    let lease = crate::lease::Keeper::start(&spec, p.lease);
    // Not yet ready once (a first start): the PID file can be staged.
    let records = pidfile::Records::open(&spec, !machine.ever_ready);
    Supervisor {
        sigfd: p.sigfd,
        machine,
        spec,
        instance: None,
        pipes: Vec::new(),
        output: p.output,
        clients: Clients::new(p.server),
        // Made (and zeroed) once here: zeroing 4 KB at each READY=1 was most of the
        // instructions between the wake and the answer, and a page of stack.
        notify_buf: if p.notify.is_some() {
            vec![0; NOTIFY_MAX]
        } else {
            Vec::new()
        },
        // Made now, not at the first wake (see `with_room`).
        poll: super::poll::PollBufs::with_room(16),
        notify: p.notify,
        reporter: p.reporter,
        systemd: p.systemd,
        events: p.events,
        next_progress: None,
        worked: true,
        shed_at: None,
        dirty: false,
        jitter: Jitter::seeded(),
        queue: VecDeque::new(),
        handoff: None,
        handoff_queue: VecDeque::new(),
        routing: Routing::default(),
        start_failure: None,
        listener: p.listener,
        lease,
        lock: p.lock,
        exe: own_path(),
        foreground: p.foreground,
        tracker: p.tracker,
        records,
        spare: None,
        want_spare: false,
        spare_pipes: None,
        zombie: None,
        answered: false,
        group_signalled: None,
        card: None,
        card_due: true,
    }
}

/// The longest notify message read whole (systemd's own limit, `NOTIFY_BUFFER_MAX`).
const NOTIFY_MAX: usize = 4096;

/// Blocks the signals the loop reads and returns the signalfd they arrive on; makes this
/// process the subreaper of its descendants.
pub fn signals() -> Result<SignalFd> {
    // Descendants that daemonize (double fork, setsid) are re-parented to us, not to init,
    // so a stop can find and reap every one of them without cgroups.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::errno("become a child subreaper", e))?;
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| Error::errno("block signals", e))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::errno("create signalfd", e))
}

/// The service's log files.
pub fn open_output(spec: &Spec) -> Result<Output> {
    Output::open(&spec.log)
        .map_err(|e| Error::io(format!("open log files in {}", spec.log.dir.display()), &e))
}

/// The instance machine's rules from a config.
pub fn rules_of(spec: &Spec) -> Rules {
    Rules {
        restart: spec.restart.clone(),
        ready_timeout: spec.ready.timeout,
        stop_signal: spec.stop.signal,
        stop_timeout: spec.stop.timeout,
        dump_after: spec.stop.dump_signal.map(|_| spec.stop.dump_after),
    }
}

/// Binds the listening socket every instance inherits; SO_REUSEADDR so a restart of
/// baton does not wait out TIME_WAIT.
fn bind_listener(addr: std::net::SocketAddr) -> Result<OwnedFd> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let what = format!("listen on {addr}");
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| Error::errno(&what, e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| Error::errno(&what, e))?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| {
        let err = Error::errno(&what, e);
        if e == nix::errno::Errno::EADDRINUSE {
            err.hint(format!(
                "another process listens on {addr}: find it with `ss -ltnp 'sport = :{}'`",
                addr.port()
            ))
        } else {
            err
        }
    })?;
    socket::listen(
        &fd,
        socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(|e| Error::errno(&what, e))?;
    Ok(fd)
}

/// Has the kernel attach each notify message's sender (SCM_CREDENTIALS), so that a READY=1
/// counts only for the instance it comes from: every instance of a service, and any other
/// process of its user, can send to the one socket.
pub fn pass_credentials(sock: &UnixDatagram) -> Result<()> {
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(|e| Error::errno("configure notify socket", e))
}

/// Sends one sd_notify message to systemd's socket (path or @abstract).
pub fn sd_notify(addr: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(message.as_bytes(), &a)?;
    } else {
        sock.send_to(message.as_bytes(), addr)?;
    }
    Ok(())
}

/// Restart jitter: xorshift64, enough to de-synchronise restarts, no dependency needed.
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and the PID, so supervisors started together differ.
    fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id());
        Jitter(seed | 1)
    }

    /// The next value in [0, 1).
    pub fn draw(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
