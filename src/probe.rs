//! Readiness probes as non-blocking state machines driven by the supervisor's poll loop.
//!
//! tcp and http are non-blocking sockets, exec is a child reaped by the loop,
//! log and notify are fed lines and datagrams the loop already reads. Nothing
//! needs a thread; a refused connect is retried within 2 to 5 ms, a service that
//! answers but is not ready yet (HTTP 503) at most every 50 ms,
//! so readiness is seen within milliseconds of the service getting there.

use crate::config::{ProbeSpec, Spec, Vars};
use crate::url::HttpTarget;
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::unistd::Pid;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_millis(1);
/// A refused connect on loopback costs microseconds: retrying often is cheap, and only while starting.
const MAX_RETRY_CONNECT: Duration = Duration::from_millis(5);
/// A service that answers but is not ready yet (HTTP 503) is not hammered.
const MAX_RETRY_ANSWERED: Duration = Duration::from_millis(50);
const MAX_RETRY_EXEC: Duration = Duration::from_millis(250);
/// One attempt may take this long before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a probe checks, resolved for one instance.
enum Check {
    Tcp {
        addr: SocketAddr,
        label: String,
    },
    Http {
        addr: SocketAddr,
        request: Vec<u8>,
        label: String,
    },
    /// Run with the service's identity: a probe gets no more privilege than the service.
    Exec {
        argv: Vec<String>,
        account: Option<crate::config::Account>,
    },
    Log {
        re: regex_lite::Regex,
    },
    Notify,
}

/// Where an active probe is in its current attempt.
enum Attempt {
    Waiting {
        at: Instant,
    },
    Connecting {
        sock: OwnedFd,
        deadline: Instant,
    },
    Exchanging {
        sock: OwnedFd,
        deadline: Instant,
        reply: Vec<u8>,
    },
    Running {
        pid: Pid,
        deadline: Instant,
    },
    /// Passive probes (log, notify) wait for the loop to feed them.
    Listening,
    Passed,
}

struct Probe {
    check: Check,
    attempt: Attempt,
    tries: u32,
    last_failure: Option<String>,
}

/// Whether a notify message says READY=1 (one of its lines, as sd_notify(3) writes them).
pub fn says_ready(message: &str) -> bool {
    message.lines().any(|l| l.trim() == "READY=1")
}

/// All probes of one instance; ready when every one has passed.
pub struct Probes {
    list: Vec<Probe>,
}

/// What a probe wants from the poll loop.
pub struct Interest<'a> {
    /// Index to hand back to [`Probes::on_fd`].
    pub index: usize,
    /// The descriptor.
    pub fd: BorrowedFd<'a>,
    /// Readable or writable.
    pub events: PollFlags,
}

impl Probes {
    /// Builds the probes for an instance on `port`; fails if an address does not resolve.
    pub fn new(spec: &Spec, vars: &Vars, now: Instant) -> Result<Self, String> {
        let mut list = Vec::new();
        for p in &spec.ready.probes {
            let check = match p {
                ProbeSpec::Tcp(a) => {
                    let label = spec.expand(a, vars);
                    Check::Tcp {
                        addr: resolve(&label, &spec.ready.hosts)?,
                        label,
                    }
                }
                ProbeSpec::Http(u) => {
                    let url = spec.expand(u, vars);
                    let t = HttpTarget::parse(&url)?;
                    let addr = resolve(
                        &format!(
                            "{}:{}",
                            t.host.trim_matches(|c| c == '[' || c == ']'),
                            t.port
                        ),
                        &spec.ready.hosts,
                    )?;
                    let request = format!(
                        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: baton\r\nConnection: close\r\n\r\n",
                        t.path, t.host, t.port
                    )
                    .into_bytes();
                    Check::Http {
                        addr,
                        request,
                        label: format!("GET {url}"),
                    }
                }
                ProbeSpec::Exec(argv) => Check::Exec {
                    argv: argv.iter().map(|a| spec.expand(a, vars)).collect(),
                    account: spec.account.clone(),
                },
                ProbeSpec::Log(re) => Check::Log {
                    re: regex_lite::Regex::new(re).map_err(|e| e.to_string())?,
                },
                ProbeSpec::Notify => Check::Notify,
            };
            let attempt = match check {
                Check::Log { .. } | Check::Notify => Attempt::Listening,
                _ => Attempt::Waiting { at: now },
            };
            list.push(Probe {
                check,
                attempt,
                tries: 0,
                last_failure: None,
            });
        }
        Ok(Probes { list })
    }

    /// Whether every probe has passed.
    pub fn passed(&self) -> bool {
        self.list
            .iter()
            .all(|p| matches!(p.attempt, Attempt::Passed))
    }

    /// The earliest time an attempt must start or time out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter_map(|p| match &p.attempt {
                Attempt::Waiting { at } => Some(*at),
                Attempt::Connecting { deadline, .. }
                | Attempt::Exchanging { deadline, .. }
                | Attempt::Running { deadline, .. } => Some(*deadline),
                Attempt::Listening | Attempt::Passed => None,
            })
            .min()
    }

    /// Descriptors to poll.
    pub fn interests(&self) -> Vec<Interest<'_>> {
        let mut out = Vec::new();
        for (index, p) in self.list.iter().enumerate() {
            match &p.attempt {
                Attempt::Connecting { sock, .. } => out.push(Interest {
                    index,
                    fd: sock.as_fd(),
                    events: PollFlags::POLLOUT,
                }),
                Attempt::Exchanging { sock, .. } => out.push(Interest {
                    index,
                    fd: sock.as_fd(),
                    events: PollFlags::POLLIN,
                }),
                _ => {}
            }
        }
        out
    }

    /// Starts attempts that are due and fails attempts that took too long.
    pub fn on_timer(&mut self, now: Instant) {
        for p in &mut self.list {
            match &p.attempt {
                Attempt::Waiting { at } if *at <= now => p.begin(now),
                Attempt::Connecting { deadline, .. } | Attempt::Exchanging { deadline, .. }
                    if *deadline <= now =>
                {
                    p.fail(
                        now,
                        format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
                    );
                }
                // Killed, its exit comes back through on_exit and counts as a failed try.
                Attempt::Running { pid, deadline } if *deadline <= now => {
                    crate::process::signal(*pid, nix::sys::signal::Signal::SIGKILL);
                }
                _ => {}
            }
        }
    }

    /// A polled descriptor is ready.
    pub fn on_fd(&mut self, index: usize, now: Instant) {
        if let Some(p) = self.list.get_mut(index) {
            p.advance(now);
        }
    }

    /// A child exited; returns true if it was one of our exec probes.
    pub fn on_exit(&mut self, pid: Pid, code: Option<i32>, now: Instant) -> bool {
        for p in &mut self.list {
            if let Attempt::Running { pid: running, .. } = p.attempt {
                if running == pid {
                    match code {
                        Some(0) => p.attempt = Attempt::Passed,
                        Some(c) => p.fail(now, format!("exited with code {c}")),
                        None => p.fail(now, "killed (timed out or by a signal)".to_string()),
                    }
                    return true;
                }
            }
        }
        false
    }

    /// Whether a log probe still waits for its line.
    pub fn watches_output(&self) -> bool {
        self.list.iter().any(|p| {
            matches!(
                (&p.check, &p.attempt),
                (Check::Log { .. }, Attempt::Listening)
            )
        })
    }

    /// A line of service output, for log probes.
    pub fn on_line(&mut self, line: &str) {
        for p in &mut self.list {
            if let (Check::Log { re }, Attempt::Listening) = (&p.check, &p.attempt) {
                if re.is_match(line) {
                    p.attempt = Attempt::Passed;
                }
            }
        }
    }

    /// Whether the notify probes are all that is left, each still listening: a READY=1
    /// passes every probe.
    pub fn wait_only_for_notify(&self) -> bool {
        let mut notify = false;
        for p in &self.list {
            match (&p.check, &p.attempt) {
                (Check::Notify, Attempt::Listening) => notify = true,
                (_, Attempt::Passed) => {}
                _ => return false,
            }
        }
        notify
    }

    /// A datagram on the notify socket.
    pub fn on_notify(&mut self, message: &str) {
        if says_ready(message) {
            for p in &mut self.list {
                if matches!(p.check, Check::Notify) {
                    p.attempt = Attempt::Passed;
                }
            }
        }
    }

    /// PIDs of running exec probes (not part of the service tree).
    pub fn exec_pids(&self) -> Vec<Pid> {
        self.list
            .iter()
            .filter_map(|p| match p.attempt {
                Attempt::Running { pid, .. } => Some(pid),
                _ => None,
            })
            .collect()
    }

    /// Kills exec probes still running; their exits are reaped by the loop.
    pub fn abort(&mut self) {
        for pid in self.exec_pids() {
            crate::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// What is still missing, e.g. "GET http://127.0.0.1:8080/health: 503 (after 41 tries)".
    pub fn pending(&self) -> String {
        let parts: Vec<String> = self
            .list
            .iter()
            .filter(|p| !matches!(p.attempt, Attempt::Passed))
            .map(|p| {
                let what = p.label();
                match &p.last_failure {
                    Some(f) => format!("{what}: {f} (after {} tries)", p.tries),
                    None if matches!(p.attempt, Attempt::Listening) => format!("{what}: not seen"),
                    None => format!("{what}: no answer yet"),
                }
            })
            .collect();
        parts.join("; ")
    }
}

impl Probe {
    fn label(&self) -> String {
        match &self.check {
            Check::Tcp { label, .. } => format!("connect {label}"),
            Check::Http { label, .. } => label.clone(),
            Check::Exec { argv, .. } => format!("exec {}", argv.join(" ")),
            Check::Log { re } => format!("log line matching /{}/", re.as_str()),
            Check::Notify => "READY=1 on NOTIFY_SOCKET".to_string(),
        }
    }

    /// The attempt failed without the service answering (refused, reset, no exec).
    fn fail(&mut self, now: Instant, why: String) {
        let cap = if matches!(self.check, Check::Exec { .. }) {
            MAX_RETRY_EXEC
        } else {
            MAX_RETRY_CONNECT
        };
        self.retry(now, why, cap);
    }

    /// The service answered, but not with success (an HTTP 503 while it warms up).
    fn fail_answered(&mut self, now: Instant, why: String) {
        self.retry(now, why, MAX_RETRY_ANSWERED);
    }

    fn retry(&mut self, now: Instant, why: String, cap: Duration) {
        self.tries += 1;
        self.last_failure = Some(why);
        let delay = FIRST_RETRY.saturating_mul(1 << self.tries.min(10)).min(cap);
        self.attempt = Attempt::Waiting {
            at: crate::clock::after(now, delay),
        };
    }

    fn begin(&mut self, now: Instant) {
        let deadline = now + ATTEMPT_TIMEOUT;
        match &self.check {
            Check::Tcp { addr, .. } | Check::Http { addr, .. } => match connect(addr) {
                Ok((sock, true)) => {
                    self.attempt = Attempt::Connecting { sock, deadline };
                    self.advance(now);
                }
                Ok((sock, false)) => self.attempt = Attempt::Connecting { sock, deadline },
                Err(e) => self.fail(now, e.desc().to_lowercase()),
            },
            Check::Exec { argv, account } => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                crate::sys::install(
                    &mut cmd,
                    crate::sys::ChildSetup {
                        account: account.as_ref().map(crate::config::Account::credentials),
                        umask: None,
                        parent: nix::unistd::getpid(),
                        new_session: false,
                        parent_death_signal: Some(nix::sys::signal::Signal::SIGKILL),
                        keep_fd: None,
                    },
                );
                let spawned = cmd.spawn();
                match spawned {
                    Ok(child) => {
                        self.attempt = Attempt::Running {
                            pid: Pid::from_raw(child.id() as i32),
                            deadline,
                        }
                    }
                    Err(e) => self.fail(now, format!("cannot run: {e}")),
                }
            }
            Check::Log { .. } | Check::Notify => self.attempt = Attempt::Listening,
        }
    }

    /// Moves a socket attempt forward after its descriptor became ready.
    fn advance(&mut self, now: Instant) {
        let attempt = std::mem::replace(&mut self.attempt, Attempt::Waiting { at: now });
        match attempt {
            Attempt::Connecting { sock, deadline } => {
                match socket::getsockopt(&sock, sockopt::SocketError) {
                    Ok(0) => match &self.check {
                        Check::Http { request, .. } => match nix::unistd::write(&sock, request) {
                            Ok(n) if n == request.len() => {
                                self.attempt = Attempt::Exchanging {
                                    sock,
                                    deadline,
                                    reply: Vec::new(),
                                }
                            }
                            Ok(_) => self.fail(now, "request not sent in one piece".into()),
                            Err(e) => self.fail(now, e.desc().to_lowercase()),
                        },
                        _ => self.attempt = Attempt::Passed,
                    },
                    Ok(err) => self.fail(now, Errno::from_raw(err).desc().to_lowercase()),
                    Err(e) => self.fail(now, e.desc().to_lowercase()),
                }
            }
            Attempt::Exchanging {
                sock,
                deadline,
                mut reply,
            } => {
                let mut buf = [0u8; 512];
                match nix::unistd::read(sock.as_raw_fd(), &mut buf) {
                    Ok(0) if reply.is_empty() => {
                        self.fail(now, "connection closed without a reply".into())
                    }
                    Ok(n) if n > 0 && !buf[..n].contains(&b'\n') && reply.len() < 4096 => {
                        reply.extend_from_slice(&buf[..n]);
                        self.attempt = Attempt::Exchanging {
                            sock,
                            deadline,
                            reply,
                        };
                    }
                    Ok(n) => {
                        reply.extend_from_slice(&buf[..n]);
                        match status_code(&reply) {
                            Some(c) if (200..300).contains(&c) => self.attempt = Attempt::Passed,
                            Some(c) => self.fail_answered(now, format!("HTTP {c}")),
                            None => self.fail_answered(now, "reply is not HTTP".into()),
                        }
                    }
                    Err(Errno::EAGAIN) => {
                        self.attempt = Attempt::Exchanging {
                            sock,
                            deadline,
                            reply,
                        }
                    }
                    Err(e) => self.fail(now, e.desc().to_lowercase()),
                }
            }
            other => self.attempt = other,
        }
    }
}

/// Starts a non-blocking connect; `true` if it completed at once.
fn connect(addr: &SocketAddr) -> nix::Result<(OwnedFd, bool)> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let sock = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match socket::connect(sock.as_raw_fd(), &SockaddrStorage::from(*addr)) {
        Ok(()) => Ok((sock, true)),
        Err(Errno::EINPROGRESS) => Ok((sock, false)),
        Err(e) => Err(e),
    }
}

/// HOST:PORT to an address without a DNS query: numeric, or a name the config reader resolved.
fn resolve(hostport: &str, hosts: &[(String, IpAddr)]) -> Result<SocketAddr, String> {
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| format!("{hostport:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{hostport:?}: {port:?} is not a port"))?;
    let host = host.trim_matches(|c| c == '[' || c == ']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    hosts
        .iter()
        .find(|(h, _)| h == host)
        .map(|(_, ip)| SocketAddr::new(*ip, port))
        .ok_or_else(|| format!("{host:?} was not resolved when the config was read"))
}

/// The status code of an HTTP/1.x status line.
fn status_code(reply: &[u8]) -> Option<u16> {
    let line = reply.split(|&b| b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            HttpTarget::parse("http://127.0.0.1:8080/health?x=1"),
            Ok(HttpTarget {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health?x=1".into()
            })
        );
        assert_eq!(
            HttpTarget::parse("http://localhost"),
            Ok(HttpTarget {
                host: "localhost".into(),
                port: 80,
                path: "/".into()
            })
        );
        assert!(HttpTarget::parse("https://x/").is_err());
        assert!(HttpTarget::parse("http://x:notaport/").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 503 Unavailable\r\n"), Some(503));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
    }

    #[test]
    fn retry_backoff_is_capped() {
        let now = Instant::now();
        let mut p = Probe {
            check: Check::Notify,
            attempt: Attempt::Listening,
            tries: 0,
            last_failure: None,
        };
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            p.fail(now, "x".into());
            let Attempt::Waiting { at } = p.attempt else {
                panic!("waiting")
            };
            let d = at - now;
            assert!(d >= last && d <= MAX_RETRY_CONNECT, "{d:?}");
            last = d;
        }
        assert_eq!(last, MAX_RETRY_CONNECT);
        for _ in 0..20 {
            p.fail_answered(now, "HTTP 503".into());
        }
        let Attempt::Waiting { at } = p.attempt else {
            panic!("waiting")
        };
        assert_eq!(
            at - now,
            MAX_RETRY_ANSWERED,
            "a service that answers is asked less often"
        );
    }
}
