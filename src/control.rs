//! The per-service Unix control socket: one request line in, JSON lines out.
//!
//! Requests: `status`, `start`, `stop`, `reload`, `reopen`. `stop` keeps the
//! connection open and streams progress until the supervisor exits, which
//! closes it; `start` keeps it open until the service is ready or has failed.
//! Only root and the supervisor's own user may connect (peer credentials).

use crate::error::{Error, Result};
use crate::exit::Action;
use nix::sys::socket::{self, sockopt, MsgFlags};
use nix::unistd::Uid;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// What `status` reports; also the `--json` output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Service name.
    pub name: String,
    /// starting | ready | restarting | stopping | crash-looping | stopped | dead | failed | not running.
    pub state: String,
    /// Whether the service is serving (probes passed).
    pub ready: bool,
    /// The supervisor's PID (the PID file's content).
    pub supervisor_pid: Option<i32>,
    /// The service's main PID (also its process group).
    pub service_pid: Option<i32>,
    /// Every process of the service tree.
    pub processes: Vec<i32>,
    /// The port of the current instance.
    pub port: Option<u16>,
    /// Seconds since the service became ready.
    pub uptime_secs: Option<f64>,
    /// Restarts since the supervisor started.
    pub restarts: u32,
    /// Consecutive failed runs (the backoff attempt).
    pub attempt: u32,
    /// Seconds until the next spawn, while backing off.
    pub next_try_in_secs: Option<f64>,
    /// How the service last ended.
    pub last_exit: Option<String>,
    /// Why the supervisor gave up, or what is wrong.
    pub problem: Option<String>,
    /// Readiness probes still pending, while starting.
    pub waiting_for: Option<String>,
    /// The last lines of service output.
    pub tail: Vec<String>,
    /// The release the serving instance runs.
    #[serde(default)]
    pub release: Option<String>,
    /// A deploy or rollback in progress.
    #[serde(default)]
    pub handoff: Option<HandoffReport>,
    /// The etcd lease of the registry keys (`[registry] ttl`): held, renewal failing, or re-registered after a loss.
    #[serde(default)]
    pub registry_lease: Option<String>,
}

/// The instance being handed over to, and where the handoff is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandoffReport {
    /// deploy | rollback.
    pub kind: String,
    /// starting | switching | draining | stopping-old | aborting.
    pub step: String,
    /// Release of the new instance.
    pub release: String,
    /// PID of the instance that is not serving: the new one until traffic moves, then the old one draining.
    pub pid: Option<i32>,
    /// That instance's port.
    pub port: Option<u16>,
    /// Seconds since the handoff began.
    pub elapsed_secs: f64,
}

/// One line the supervisor sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply {
    /// The status report.
    Status(Box<Report>),
    /// Request accepted.
    Ok { message: String },
    /// Request refused.
    Error { message: String, code: i32 },
    /// Progress of a stop.
    Progress { message: String },
}

/// The listening side, owned by the supervisor loop.
pub struct Server {
    listener: UnixListener,
}

impl Server {
    /// Binds the socket (replacing a stale one: the caller holds the supervisor lock) with mode 0600.
    pub fn bind(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("create control socket {}", path.display()), &e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("restrict control socket {}", path.display()), &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configure control socket", &e))?;
        Ok(Server { listener })
    }

    /// For the poll set.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accepts waiting clients whose peer credentials allow control.
    pub fn accept(&self) -> Vec<Conn> {
        let mut out = Vec::new();
        while let Ok((stream, _)) = self.listener.accept() {
            match socket::getsockopt(&stream, sockopt::PeerCredentials) {
                Ok(cred) if cred.uid() == 0 || cred.uid() == Uid::effective().as_raw() => {
                    if stream.set_nonblocking(true).is_ok() {
                        out.push(Conn {
                            stream,
                            buf: Vec::new(),
                            awaits: Awaits::Nothing,
                        });
                    }
                }
                Ok(cred) => {
                    tracing::warn!(
                        "refused control connection from uid {} (pid {})",
                        cred.uid(),
                        cred.pid()
                    );
                    let mut c = Conn {
                        stream,
                        buf: Vec::new(),
                        awaits: Awaits::Nothing,
                    };
                    c.send(&Reply::Error {
                        message: "permission denied: only root or the supervisor's user".into(),
                        code: 4,
                    });
                }
                Err(e) => tracing::warn!("unable to read control peer credentials: {e}"),
            }
        }
        out
    }
}

/// One client connection.
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// What this client still waits for after its first reply.
    pub awaits: Awaits,
}

/// Why a connection stays open after its request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaits {
    /// Nothing: close after the reply.
    Nothing,
    /// A `stop`: progress lines until the supervisor exits.
    Stopped,
    /// A `start`: one line when the service is ready, or why it is not.
    Ready,
    /// A `deploy` or `rollback`: progress lines, then how the handoff ended.
    Handoff,
}

/// What reading a connection produced.
pub enum Incoming {
    /// A complete request line.
    Request(String),
    /// Nothing complete yet.
    Nothing,
    /// The client went away.
    Closed,
}

impl Conn {
    /// For the poll set.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Reads what is available; requests are single short lines.
    pub fn read(&mut self) -> Incoming {
        let mut chunk = [0u8; 512];
        match nix::unistd::read(self.stream.as_raw_fd(), &mut chunk) {
            Ok(0) => Incoming::Closed,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&self.buf[..i]).trim().to_string();
                    self.buf.drain(..=i);
                    Incoming::Request(line)
                } else if self.buf.len() > 4096 {
                    Incoming::Closed
                } else {
                    Incoming::Nothing
                }
            }
            Err(nix::errno::Errno::EAGAIN) => Incoming::Nothing,
            Err(_) => Incoming::Closed,
        }
    }

    /// Ends the conversation: the client reads end-of-file, and our next read sees it closed.
    pub fn finish(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Sends one reply line; a client too slow to take a few hundred bytes misses it.
    pub fn send(&mut self, reply: &Reply) -> bool {
        let mut line = serde_json::to_vec(reply).unwrap_or_default();
        line.push(b'\n');
        socket::send(
            self.stream.as_raw_fd(),
            &line,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        )
        .is_ok()
    }
}

/// Client side: sends `request` and returns a reader over the reply lines.
pub fn request(path: &Path, request: &str, timeout: Option<Duration>) -> Result<Replies> {
    let stream = UnixStream::connect(path).map_err(|e| {
        Error::io(format!("connect to control socket {}", path.display()), &e)
            .hint("is the supervisor running? `baton status` tells")
    })?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| Error::io("configure control socket", &e))?;
    // A supervisor that refuses us replies and closes at once, so the write may fail
    // with EPIPE while its refusal waits to be read: read before giving up.
    // One write, so the supervisor wakes once for it.
    let sent = (&stream).write_all(format!("{request}\n").as_bytes());
    let mut replies = Replies {
        reader: BufReader::new(stream),
        first: None,
    };
    if let Err(e) = sent {
        match replies.next() {
            Some(reply) => replies.first = Some(reply),
            None => return Err(Error::io(format!("send {request:?} to the supervisor"), &e)),
        }
    }
    Ok(replies)
}

/// Reply lines from the supervisor.
pub struct Replies {
    reader: BufReader<UnixStream>,
    /// A reply already read while checking a failed send.
    first: Option<Result<Reply>>,
}

impl Iterator for Replies {
    type Item = Result<Reply>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).map_err(|e| {
                Error::unable(
                    "understand the supervisor's reply",
                    format!("{e}: {line:?}"),
                )
                .hint("the running supervisor may be another baton version; restart it")
            })),
            Err(e) => Some(Err(
                Error::io("read the supervisor's reply", &e).code(Action::Generic)
            )),
        }
    }
}
