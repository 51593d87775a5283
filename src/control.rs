//! The per-service Unix control socket: typed, versioned requests and replies, one JSON line each.
//!
//! A request is one line, `{"protocol":1,"baton":"0.1.0","request":"deploy","release":"ID"}`,
//! parsed once into an [`Envelope`]; the plain words of protocol 0 (`status`, `deploy ID`…) are
//! still understood. Every reply line carries the supervisor's protocol and version, so a
//! client of another baton can say "supervisor runs baton X, this is Y" instead of failing
//! obscurely. `stop` keeps the connection open and streams progress until the supervisor
//! exits; `start` keeps it open until the service is ready or has failed; `deploy` and
//! `rollback` until the handoff ends. Only root and the supervisor's own user may connect
//! (peer credentials). Output is buffered per connection and written as the client reads it.

use crate::error::{Error, Result};
use crate::exit::Action;
use nix::sys::socket::{self, MsgFlags};
use nix::unistd::Uid;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

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
    /// The running supervisor's baton version (absent from one older than protocol versions).
    #[serde(default)]
    pub supervisor_version: Option<String>,
    /// The etcd lease of the registry keys (`[registry] ttl`): held, renewal failing, or re-registered after a loss.
    #[serde(default)]
    pub registry_lease: Option<String>,
    /// How the service's processes are tracked: "cgroup" or "subreaper".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    /// The service's cgroup, when tracked by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
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

/// The control protocol this baton speaks: 0 was plain request words, 1 is a JSON envelope.
/// Bump it when a request or reply changes meaning; a new request alone needs no bump.
pub const PROTOCOL: u32 = 1;

/// This baton's version, as requests and replies carry it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The longest request line a supervisor reads.
const MAX_REQUEST: usize = 4096;

/// What a client asks the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    /// The status report.
    Status,
    /// Start a service that backs off or is stopping; answered once ready.
    Start,
    /// Stop everything; progress until the supervisor exits.
    Stop,
    /// Send the service its reload signal.
    Reload,
    /// Reopen the log files.
    Reopen,
    /// Hand over to a newly installed release.
    Deploy { release: String },
    /// Hand back to an earlier release.
    Rollback { release: String },
    /// Hand over to the serving release with the config as it is on disk now.
    Reconfigure,
    /// Replace the supervisor's image with the baton binary now on disk, keeping the service.
    Reexec,
    /// Send the service's main process a signal (by name, e.g. "SIGHUP").
    Signal { signal: String },
}

impl Request {
    /// The request's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Start => "start",
            Request::Stop => "stop",
            Request::Reload => "reload",
            Request::Reopen => "reopen",
            Request::Deploy { .. } => "deploy",
            Request::Rollback { .. } => "rollback",
            Request::Reconfigure => "reconfigure",
            Request::Reexec => "reexec",
            Request::Signal { .. } => "signal",
        }
    }

    /// Protocol 0's line for it, for a supervisor older than protocol versions.
    fn legacy_line(&self) -> String {
        match self {
            Request::Deploy { release } | Request::Rollback { release } => {
                format!("{} {release}", self.name())
            }
            Request::Signal { signal } => format!("signal {signal}"),
            other => other.name().to_string(),
        }
    }
}

/// A request with who sent it: the client's protocol and baton version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The client's protocol (0 for plain words).
    pub protocol: u32,
    /// The client's baton version ("" before protocol 1).
    pub baton: String,
    /// Who asked, as the client says (`SUDO_USER` or `USER`): the name a deploy writes to
    /// revisions.log. A label for the audit trail, not a credential; "" when unsaid.
    pub by: String,
    /// What it asks.
    pub request: Request,
}

impl Envelope {
    /// A request from this baton.
    pub fn new(request: Request) -> Envelope {
        Envelope {
            protocol: PROTOCOL,
            baton: VERSION.to_string(),
            by: crate::host::operator().map_or(String::new(), |u| audit_name(&u)),
            request,
        }
    }

    /// The wire line (without its newline).
    pub fn to_line(&self) -> String {
        self.plain_line().unwrap_or_else(|| self.tree_line())
    }

    /// [`Envelope::tree_line`]'s very bytes for a request without arguments of protocol 1
    /// whose version and name need no escape (every one this baton sends: `audit_name`
    /// keeps no quote, backslash or control character), written without the JSON tree: its map, its
    /// serializer and their allocations were most of the code `baton stop` ran between its
    /// lock and its request (benches/PROFILE-stop.md, ninth round). A unit test holds the
    /// two to the same bytes.
    fn plain_line(&self) -> Option<String> {
        let request = match self.request {
            Request::Deploy { .. } | Request::Rollback { .. } | Request::Signal { .. } => {
                return None
            }
            ref plain => plain.name(),
        };
        let bare = |s: &str| !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
        // The protocol as text without core::fmt, whose code and tables would be read for it
        // alone: this protocol, as `own_plain_parts` reads it.
        if !bare(&self.baton) || !bare(&self.by) || self.protocol != 1 || PROTOCOL != 1 {
            return None;
        }
        // serde_json's order: the keys sorted.
        let mut line = String::with_capacity(80 + self.baton.len() + self.by.len());
        line.push_str("{\"baton\":\"");
        line.push_str(&self.baton);
        if !self.by.is_empty() {
            line.push_str("\",\"by\":\"");
            line.push_str(&self.by);
        }
        line.push_str("\",\"protocol\":1,\"request\":\"");
        line.push_str(request);
        line.push_str("\"}");
        Some(line)
    }

    /// The wire line through serde_json's tree: any request.
    fn tree_line(&self) -> String {
        let mut v = serde_json::to_value(&self.request).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("protocol".into(), self.protocol.into());
            o.insert("baton".into(), self.baton.clone().into());
            if !self.by.is_empty() {
                o.insert("by".into(), self.by.clone().into());
            }
        }
        v.to_string()
    }

    /// Parses one request line, JSON or protocol 0's plain words; Err says why not, for the client.
    pub fn parse(line: &str) -> std::result::Result<Envelope, String> {
        let line = line.trim();
        if line.len() > MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
        if let Some(own) = Envelope::own_plain(line) {
            return Ok(own);
        }
        if !line.starts_with('{') {
            let (word, arg) = match line.split_once(' ') {
                Some((w, a)) => (w, Some(a.trim())),
                None => (line, None),
            };
            let request = match (word, arg) {
                ("status", None) => Request::Status,
                ("start", None) => Request::Start,
                ("stop", None) => Request::Stop,
                ("reload", None) => Request::Reload,
                ("reopen", None) => Request::Reopen,
                ("reexec", None) => Request::Reexec,
                ("reconfigure", None) => Request::Reconfigure,
                ("signal", Some(s)) => Request::Signal {
                    signal: s.to_string(),
                },
                ("deploy", Some(r)) => Request::Deploy {
                    release: r.to_string(),
                },
                ("rollback", Some(r)) => Request::Rollback {
                    release: r.to_string(),
                },
                _ => return Err(format!("unknown request {line:?}")),
            };
            return Ok(Envelope {
                protocol: 0,
                baton: String::new(),
                by: String::new(),
                request,
            });
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("unreadable request: {e}"))?;
        let protocol = v
            .get("protocol")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or("request without a protocol version")?;
        let baton = v
            .get("baton")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = v
            .get("request")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string();
        let by = v
            .get("by")
            .and_then(serde_json::Value::as_str)
            .map_or(String::new(), audit_name);
        match serde_json::from_value::<Request>(v) {
            Ok(request) => Ok(Envelope {
                protocol,
                baton,
                by,
                request,
            }),
            // A newer client asking for something this supervisor does not know.
            Err(_) if protocol > PROTOCOL || baton != VERSION => Err(format!(
                "supervisor runs baton {VERSION} (protocol {PROTOCOL}), this is baton {} (protocol {protocol}): \
                 the running supervisor does not know the request {name:?}; restart it (or `baton reexec` it) onto this version",
                if baton.is_empty() { "?" } else { &baton }
            )),
            Err(e) => Err(format!("unknown request {name:?}: {e}")),
        }
    }
}

impl Envelope {
    /// The line [`Envelope::to_line`] of this very baton writes for a request without
    /// arguments (serde_json's keys in their sorted order: `baton`, `by`, `protocol`,
    /// `request`), read without building a JSON tree: that tree, its map and the
    /// conversion into a [`Request`] are most of the code and heap pages a supervisor
    /// touches between a `stop`'s wake and its signal (benches/PROFILE-stop.md). Any
    /// other line, however little it differs, is None and goes to the full parse, which
    /// reads this one to the same envelope (a unit test holds the two together).
    fn own_plain(line: &str) -> Option<Envelope> {
        let (by, request) = own_plain_parts(line)?;
        let request = match request {
            "status" => Request::Status,
            "start" => Request::Start,
            "stop" => Request::Stop,
            "reload" => Request::Reload,
            "reopen" => Request::Reopen,
            "reconfigure" => Request::Reconfigure,
            "reexec" => Request::Reexec,
            _ => return None,
        };
        Some(Envelope {
            protocol: PROTOCOL,
            baton: VERSION.to_string(),
            by: by.to_string(),
            request,
        })
    }
}

/// Who asked and what, in a line of [`Envelope::own_plain`]'s form; nothing allocated.
fn own_plain_parts(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix(concat!("{\"baton\":\"", env!("CARGO_PKG_VERSION"), "\","))?;
    let (by, rest) = match rest.strip_prefix("\"by\":\"") {
        Some(quoted) => {
            let (by, rest) = quoted.split_once("\",")?;
            // Only what `audit_name` keeps, so it is the name as written.
            if by.is_empty() || by.len() > 64 || !by.chars().all(audit_char) {
                return None;
            }
            (by, rest)
        }
        None => ("", rest),
    };
    let (protocol, rest) = rest.strip_prefix("\"protocol\":")?.split_once(',')?;
    if protocol != "1" || PROTOCOL != 1 {
        return None;
    }
    let request = rest.strip_prefix("\"request\":\"")?.strip_suffix("\"}")?;
    Some((by, request))
}

/// Whether `line` (a request line, without its newline) is this baton's own plain `stop`,
/// which [`Envelope::parse`] reads as `Request::Stop`; judged without allocating, for the
/// supervisor's first act on a wake (supervisor/first.rs).
pub fn is_own_stop(line: &[u8]) -> bool {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| own_plain_parts(l.trim()))
        .is_some_and(|(_, request)| request == "stop")
}

/// Whether `c` may stand in a name that goes into a root-written log line.
fn audit_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')
}

/// `name` as it may go into a root-written log line: the characters of a user name only
/// (a newline or a space would forge or garble revisions.log), at most 64 of them.
fn audit_name(name: &str) -> String {
    name.chars().filter(|&c| audit_char(c)).take(64).collect()
}

/// One line the supervisor sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply {
    /// The status report.
    Status(Box<Report>),
    /// Request accepted.
    Ok { message: String },
    /// Request refused, with the LSB code the client exits with.
    Error { message: String, code: Action },
    /// Progress of a stop, start or handoff.
    Progress { message: String },
}

/// A reply as it travels: the supervisor's protocol and version beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    /// The supervisor's protocol; absent (0) from a supervisor older than versions.
    #[serde(default)]
    protocol: u32,
    /// The supervisor's baton version.
    #[serde(default)]
    baton: Option<String>,
    #[serde(flatten)]
    reply: Reply,
}

/// The baton version on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its protocol (0: before versions).
    pub protocol: u32,
    /// Its version, when it says.
    pub baton: Option<String>,
}

/// The most clients connected at once; more are turned away (a stuck script cannot exhaust us).
pub const MAX_CONNS: usize = 64;
/// How long a client may take to send its request, or to read what it was sent.
pub const IDLE: Duration = Duration::from_secs(10);
/// How much unread output a client may hold before it is dropped.
const MAX_PENDING: usize = 1 << 20;
/// How long accepting pauses when the supervisor is out of file descriptors.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The listening side, owned by the supervisor loop.
pub struct Server {
    listener: UnixListener,
    /// Our effective uid, the other one allowed to control us besides root: read once.
    euid: u32,
    /// A descriptor held in reserve (on /dev/null) and given up when accept(2) fails for lack
    /// of descriptors, so that one client is still taken: a supervisor at its limit with no
    /// connection of its own to close would otherwise never hear `stop` again.
    spare: Option<OwnedFd>,
}

/// A descriptor to hold in reserve; None if even that cannot be had.
fn spare_fd() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// What an accept round found besides new clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Everything waiting was taken.
    All,
    /// Out of file descriptors (EMFILE/ENFILE): stop polling the socket for a moment, or
    /// the loop would wake on it forever.
    OutOfFiles,
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
        Ok(Server {
            listener,
            euid: Uid::effective().as_raw(),
            spare: spare_fd(),
        })
    }

    /// Takes a descriptor back into reserve if it was given up (call when some were freed).
    pub fn refill_spare(&mut self) {
        if self.spare.is_none() {
            self.spare = spare_fd();
        }
    }

    /// For the poll set.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accepts the next waiting client whose peer credentials allow control, beside `open`
    /// others (the caller acts on its request before taking the next), refusing those
    /// before it that may not; none when nobody (allowed) waits. Nothing is allocated
    /// for a client taken: a stop's signal waits for that (benches/PROFILE-stop.md).
    pub fn accept(&mut self, open: usize, now: Instant) -> (Option<Conn>, Accepted) {
        let mut out = None;
        let mut exhausted = false;
        while out.is_none() && !exhausted {
            // Non-blocking from the accept itself: no second system call per client.
            let stream = match crate::sys::accept_nonblocking(&self.listener) {
                Ok(stream) => stream,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    tracing::warn!("unable to accept a control connection: {e}");
                    // The reserve makes room for this one client (its request may be
                    // `stop`); the rest wait until descriptors free up.
                    let taken = self.spare.take().and_then(|spare| {
                        drop(spare);
                        crate::sys::accept_nonblocking(&self.listener).ok()
                    });
                    match taken {
                        Some(stream) => {
                            exhausted = true;
                            stream
                        }
                        None => return (out, Accepted::OutOfFiles),
                    }
                }
                Err(_) => return (out, Accepted::All),
            };
            let mut c = Conn::new(stream, now);
            if open >= MAX_CONNS {
                c.send(&Reply::Error {
                    message: format!("too many control connections ({MAX_CONNS}); try again"),
                    code: Action::Generic,
                });
                continue;
            }
            match crate::sys::peer_credentials(c.stream.as_fd()) {
                Ok(cred) if cred.uid == 0 || cred.uid == self.euid => {
                    out = Some(c);
                }
                Ok(cred) => {
                    tracing::warn!(
                        "refused control connection from uid {} (pid {})",
                        cred.uid,
                        cred.pid
                    );
                    c.send(&Reply::Error {
                        message: "permission denied: only root or the supervisor's user".into(),
                        code: Action::NoPrivilege,
                    });
                }
                Err(e) => tracing::warn!("unable to read control peer credentials: {e}"),
            }
        }
        let how = if exhausted {
            Accepted::OutOfFiles
        } else {
            Accepted::All
        };
        (out, how)
    }
}

/// One client connection.
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Reply bytes the client has not taken yet.
    out: Vec<u8>,
    /// The conversation is over: close once `out` is delivered.
    closing: bool,
    /// The peer is gone, or misbehaved: drop it.
    dead: bool,
    /// When it last sent or took something.
    active: Instant,
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

/// The next line of a client, as [`Conn::peek_line`] finds it.
pub enum Peeked<'b> {
    /// The whole line, without its newline.
    Line(&'b [u8]),
    /// Longer than the room given.
    Long,
    /// No whole line yet (nothing, part of one, or part of it read already).
    Partial,
}

/// What reading a connection produced.
pub enum Incoming {
    /// A complete request line, parsed (or why it could not be).
    Request(std::result::Result<Envelope, String>),
    /// Nothing complete yet.
    Nothing,
    /// The client went away.
    Closed,
}

impl Server {
    /// The listening socket a previous image of this supervisor bound (`baton reexec`).
    pub fn inherited(fd: OwnedFd) -> Result<Self> {
        let listener = UnixListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configure control socket", &e))?;
        Ok(Server {
            listener,
            euid: Uid::effective().as_raw(),
            spare: spare_fd(),
        })
    }

    /// The listening descriptor, to carry across a reexec.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

impl Conn {
    /// A client connection a previous image of this supervisor accepted (`baton reexec`).
    pub fn inherited(fd: std::os::fd::OwnedFd, now: Instant) -> Conn {
        let stream = UnixStream::from(fd);
        let _ = stream.set_nonblocking(true);
        Conn::new(stream, now)
    }

    fn new(stream: UnixStream, now: Instant) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            closing: false,
            dead: false,
            active: now,
            awaits: Awaits::Nothing,
        }
    }

    /// For the poll set.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether output waits for the client to read (poll for POLLOUT).
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty() && !self.dead
    }

    /// Whether the connection can go: delivered and closed, or dead.
    pub fn done(&self) -> bool {
        self.dead || (self.closing && self.out.is_empty())
    }

    /// When an idle client is given up on: one that neither asks nor reads. A client
    /// waiting for a stop, start or handoff is not idle while it takes what it is sent.
    pub fn idle_deadline(&self) -> Option<Instant> {
        let waiting = self.awaits != Awaits::Nothing && self.out.is_empty();
        (!waiting && !self.dead).then(|| self.active + IDLE)
    }

    /// Counts the client active from `now`.
    pub fn active_at(&mut self, now: Instant) {
        self.active = now;
    }

    /// Gives up on the client.
    pub fn drop_now(&mut self) {
        self.dead = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Reads what is available; requests are single short lines.
    pub fn read(&mut self, now: Instant) -> Incoming {
        let mut chunk = [0u8; 512];
        match nix::unistd::read(self.stream.as_raw_fd(), &mut chunk) {
            Ok(0) => Incoming::Closed,
            Ok(n) => {
                self.active = now;
                self.buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                    self.buf.drain(..=i);
                    Incoming::Request(Envelope::parse(&line))
                } else if self.buf.len() > MAX_REQUEST {
                    Incoming::Closed
                } else {
                    Incoming::Nothing
                }
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Incoming::Nothing,
            Err(_) => Incoming::Closed,
        }
    }

    /// The next line [`Conn::read`] will read, peeked from the socket and left there:
    /// copied into `buf` if it fits.
    pub fn peek_line<'b>(&self, buf: &'b mut [u8]) -> Peeked<'b> {
        // Part of it read already: not whole in the socket.
        if !self.buf.is_empty() {
            return Peeked::Partial;
        }
        let room = buf.len();
        let Ok(n) = crate::sys::peek(self.stream.as_fd(), buf) else {
            return Peeked::Partial;
        };
        let got = &buf[..n.min(room)];
        match got.iter().position(|&b| b == b'\n') {
            Some(end) => Peeked::Line(&got[..end]),
            None if n >= room => Peeked::Long,
            None => Peeked::Partial,
        }
    }

    /// Ends the conversation: the client reads end-of-file once it has every reply.
    pub fn finish(&mut self) {
        self.closing = true;
        if self.out.is_empty() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Queues one reply line, with this supervisor's version, and writes what the client takes.
    pub fn send(&mut self, reply: &Reply) {
        if self.dead {
            return;
        }
        let line = Line {
            protocol: PROTOCOL,
            baton: Some(VERSION.to_string()),
            reply: reply.clone(),
        };
        if let Ok(mut bytes) = serde_json::to_vec(&line) {
            bytes.push(b'\n');
            self.out.extend_from_slice(&bytes);
        }
        if self.out.len() > MAX_PENDING {
            tracing::warn!("dropped a control client that does not read its replies");
            self.drop_now();
            return;
        }
        self.flush(Instant::now());
    }

    /// Writes as much queued output as the socket takes now (on POLLOUT, and after each send).
    pub fn flush(&mut self, now: Instant) {
        while !self.out.is_empty() && !self.dead {
            match socket::send(
                self.stream.as_raw_fd(),
                &self.out,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => {
                    self.out.drain(..n);
                    self.active = now;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    self.dead = true;
                    self.out.clear();
                }
            }
        }
        if self.closing && self.out.is_empty() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Conn {
    /// Reads what the client sent and nobody will answer: closing a socket with unread
    /// input resets the connection, and the client would lose the replies it has not read.
    fn drop(&mut self) {
        let mut chunk = [0u8; 512];
        for _ in 0..16 {
            match nix::unistd::read(self.stream.as_raw_fd(), &mut chunk) {
                Ok(n) if n > 0 => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                _ => break,
            }
        }
    }
}

/// Client side: sends `request` and returns a reader over the reply lines.
///
/// A supervisor older than protocol versions does not understand the JSON line: its
/// "unknown request" reply without a version is answered by asking again in its words.
pub fn request(path: &Path, request: &Request, timeout: Option<Duration>) -> Result<Replies> {
    let replies = send(path, &Envelope::new(request.clone()).to_line(), timeout)?;
    legacy_or(replies, path, request, timeout)
}

/// `replies` to `request` as they are, unless a supervisor older than protocol versions
/// refused it: then the request again, in protocol 0's words.
fn legacy_or(
    mut replies: Replies,
    path: &Path,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Replies> {
    let first = replies.next();
    let old = matches!(
        &first,
        Some(Ok(Reply::Error { message, .. })) if message.starts_with("unknown request")
    ) && replies.peer.as_ref().is_some_and(|p| p.protocol == 0);
    if old {
        return send(path, &request.legacy_line(), timeout);
    }
    replies.first = first;
    Ok(replies)
}

fn send(path: &Path, line: &str, timeout: Option<Duration>) -> Result<Replies> {
    // The line is made before the connection: the supervisor wakes at the connect, and
    // finds the request already there only if the write follows at once (else its wake
    // goes round the whole loop and waits again: benches/PROFILE-stop.md).
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let stream = UnixStream::connect(path).map_err(|e| {
        Error::io(format!("connect to control socket {}", path.display()), &e)
            .hint("is the supervisor running? `baton status` tells")
    })?;
    // A supervisor that refuses us replies and closes at once, so the write may fail
    // with EPIPE while its refusal waits to be read: read before giving up.
    // One write, so the supervisor wakes once for it.
    let sent = (&stream).write_all(text.as_bytes());
    receive(stream, sent, timeout)
}

/// The replies on `stream`, where a request was written (`sent`, or the error that
/// stopped its write).
fn receive(
    stream: UnixStream,
    sent: std::io::Result<()>,
    timeout: Option<Duration>,
) -> Result<Replies> {
    // Only reads wait for the supervisor, and the request is on its way before this call.
    // A new socket has no timeout: a system call only to set one.
    if timeout.is_some() {
        stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::io("configure control socket", &e))?;
    }
    let mut replies = Replies {
        reader: BufReader::new(stream),
        first: None,
        peer: None,
        timeout,
    };
    if let Err(e) = sent {
        match replies.next() {
            Some(reply) => replies.first = Some(reply),
            None => return Err(Error::io("send the request to the supervisor", &e)),
        }
    }
    Ok(replies)
}

/// The environment entry in which `baton`'s front hands over a stop it has sent
/// (src/front.rs): `LOCK,SOCKET,ERRNO,CARD`.
pub const SENT_ENV: &str = "BATON_STOP_SENT";

/// A stop request `baton`'s front sent before it ran this core: the command lock it took,
/// the socket it wrote the request on, and the stop card it went by.
#[derive(Debug)]
pub struct Sent {
    /// The command lock (`pidfile::lock_commands`'s), held while this lives.
    pub lock: OwnedFd,
    socket: UnixStream,
    /// The errno of the front's write; 0 when the line was written whole.
    error: i32,
    /// The card, open: the supervisor removes it as it exits, which may be before this
    /// core reads it (`config::card::read_open`).
    pub card: Option<std::fs::File>,
}

impl Sent {
    /// Takes the front's handoff out of the environment. None when there is none, or when
    /// it does not name a regular file, a socket and a regular file above stderr (then
    /// nothing named is kept: the stop is made in full, as if the front had not been there).
    pub fn take() -> Option<Sent> {
        let value = std::env::var_os(SENT_ENV)?;
        // Single-threaded here (a command's start): nothing reads the environment meanwhile.
        std::env::remove_var(SENT_ENV);
        let [lock, socket, error, card] = Sent::numbers(value.to_str()?)?;
        use nix::sys::stat::{fstat, SFlag};
        let kind = |fd| {
            fstat(fd)
                .ok()
                .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
        };
        if kind(lock)? != SFlag::S_IFREG
            || kind(socket)? != SFlag::S_IFSOCK
            || kind(card)? != SFlag::S_IFREG
        {
            return None;
        }
        Some(Sent {
            lock: crate::sys::inherited(lock).ok()?,
            socket: UnixStream::from(crate::sys::inherited(socket).ok()?),
            error,
            card: crate::sys::inherited(card).ok().map(std::fs::File::from),
        })
    }

    /// `LOCK,SOCKET,ERRNO,CARD`: three distinct descriptors above stderr and an errno.
    fn numbers(value: &str) -> Option<[i32; 4]> {
        let mut parts = value.split(',').map(|p| p.parse::<i32>().ok());
        let [lock, socket, error, card] = [(); 4].map(|()| parts.next().flatten());
        let (lock, socket, error, card) = (lock?, socket?, error?, card?);
        let distinct = lock != socket && card != lock && card != socket;
        if parts.next().is_some() || lock.min(socket).min(card) <= 2 || !distinct || error < 0 {
            return None;
        }
        Some([lock, socket, error, card])
    }

    /// The replies to the stop it sent, as [`request`] gives them (`path`: the control
    /// socket, for a supervisor that wants the request in older words).
    pub fn replies(
        self,
        path: &Path,
        request: &Request,
        timeout: Option<Duration>,
    ) -> (OwnedFd, Result<Replies>) {
        let sent = match self.error {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        };
        let replies =
            receive(self.socket, sent, timeout).and_then(|r| legacy_or(r, path, request, timeout));
        (self.lock, replies)
    }
}

/// What to tell the operator when a supervisor of another baton refused `request` as one
/// it does not know; None if the refusal is not that (or both run the same baton).
pub fn version_skew(
    peer: Option<&Peer>,
    request: &Request,
    name: &str,
    refusal: &str,
) -> Option<String> {
    let unknown =
        refusal.starts_with("unknown request") || refusal.contains("does not know the request");
    if !unknown {
        return None;
    }
    // The same version number yet not the same requests: a build from before the request.
    let theirs = match peer.and_then(|p| p.baton.clone()) {
        Some(v) if v == VERSION => format!("an older build of baton {VERSION}"),
        Some(v) => format!("baton {v}"),
        None => "baton from before protocol versions".into(),
    };
    Some(match request {
        Request::Reexec => format!(
            "supervisor runs {theirs}, this is {VERSION}, and that supervisor cannot re-execute itself: \
             `baton restart {name}` moves it to {VERSION} (the service restarts)"
        ),
        _ => format!("supervisor runs {theirs}, this is {VERSION}: run `baton reexec {name}`"),
    })
}

/// Reply lines from the supervisor.
pub struct Replies {
    reader: BufReader<UnixStream>,
    /// A reply already read (while checking a failed send, or the supervisor's version).
    first: Option<Result<Reply>>,
    /// Who answers, once a line has said.
    pub peer: Option<Peer>,
    /// How long one read may wait, for the message when it does.
    timeout: Option<Duration>,
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
            Ok(_) => Some(match serde_json::from_str::<Line>(&line) {
                Ok(l) => {
                    self.peer = Some(Peer {
                        protocol: l.protocol,
                        baton: l.baton,
                    });
                    Ok(l.reply)
                }
                Err(e) => Err(Error::unable(
                    "understand the supervisor's reply",
                    format!("{e}: {line:?}"),
                )
                .hint(format!(
                    "the running supervisor may be another baton version (this is {VERSION}); restart it"
                ))),
            }),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                let waited = self.timeout.map_or(0, |t| t.as_secs());
                Some(Err(Error::unable(
                    "read the supervisor's reply",
                    format!("no answer within {waited}s"),
                )
                .hint("the supervisor may be stuck: see its baton.log; `baton status` tells")
                .code(Action::Generic)))
            }
            Err(e) => Some(Err(
                Error::io("read the supervisor's reply", &e).code(Action::Generic)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_handoff_names_three_distinct_descriptors_above_stderr_and_an_errno() {
        assert_eq!(Sent::numbers("4,3,0,5"), Some([4, 3, 0, 5]));
        assert_eq!(Sent::numbers("4,3,32,5"), Some([4, 3, 32, 5]));
        for bad in [
            "",
            "4,3,0",
            "4,3,0,5,6",
            "4,4,0,5",
            "4,3,0,4",
            "2,3,0,5",
            "4,3,-1,5",
            "4,x,0,5",
            "4, 3,0,5",
        ] {
            assert_eq!(Sent::numbers(bad), None, "{bad:?}");
        }
    }

    /// Every request without arguments.
    const PLAIN: [Request; 7] = [
        Request::Status,
        Request::Start,
        Request::Stop,
        Request::Reload,
        Request::Reopen,
        Request::Reconfigure,
        Request::Reexec,
    ];

    /// The line written without a tree is byte for byte the tree's, wherever it is taken.
    #[test]
    fn a_plain_request_is_written_as_the_json_tree_writes_it() {
        let mut direct = 0;
        for r in PLAIN {
            for by in [
                "",
                "root",
                "alice.b-c_d@x",
                "a\"b",
                "back\\slash",
                "tab\t",
                "é\u{7f}",
            ] {
                for baton in [VERSION, "0.1.0-rc.1+git", "x\"y"] {
                    for protocol in [0, 1, 12] {
                        let e = Envelope {
                            protocol,
                            baton: baton.to_string(),
                            by: by.to_string(),
                            request: r.clone(),
                        };
                        let tree = e.tree_line();
                        assert_eq!(e.to_line(), tree);
                        if let Some(line) = e.plain_line() {
                            assert_eq!(line, tree);
                            direct += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(
            direct,
            7 * 4 * 2,
            "only lines that need an escape, or of another protocol, take the tree"
        );
        for r in [
            Request::Deploy {
                release: "r1".into(),
            },
            Request::Rollback {
                release: "r0".into(),
            },
            Request::Signal {
                signal: "SIGHUP".into(),
            },
        ] {
            assert!(Envelope::new(r).plain_line().is_none());
        }
    }

    #[test]
    fn this_batons_own_plain_requests_read_without_a_json_tree_as_with_one() {
        for r in PLAIN {
            for by in ["", "root", "alice.b-c_d@x", &"u".repeat(64)] {
                let e = Envelope {
                    by: by.to_string(),
                    ..Envelope::new(r.clone())
                };
                let line = e.to_line();
                assert_eq!(Envelope::own_plain(&line).as_ref(), Some(&e), "{line}");
                assert_eq!(Envelope::parse(&line), Ok(e), "{line}");
            }
        }
        // Near misses are left to the full parse, which still reads what it can.
        for line in [
            r#"{"baton":"0.0.1","protocol":1,"request":"stop"}"#,
            r#"{"baton":"0.2.0","protocol":2,"request":"stop"}"#,
            r#"{"protocol":1,"baton":"0.2.0","request":"stop"}"#,
            r#"{"baton":"0.2.0","by":"a b","protocol":1,"request":"stop"}"#,
            r#"{"baton":"0.2.0","by":"","protocol":1,"request":"stop"}"#,
            r#"{"baton":"0.2.0","protocol":1,"request":"stop","x":1}"#,
            r#"{"baton":"0.2.0","protocol":1,"request":"deploy"}"#,
            r#"{"baton":"0.2.0", "protocol":1,"request":"stop"}"#,
        ] {
            let line = line.replace("0.2.0", VERSION);
            let line = if line.contains("0.0.1") {
                line.replace(VERSION, "0.0.1")
            } else {
                line
            };
            assert_eq!(Envelope::own_plain(&line), None, "{line}");
        }
        let spaced = format!(r#"{{"baton":"{VERSION}", "protocol":1,"request":"stop"}}"#);
        assert_eq!(
            Envelope::parse(&spaced).map(|e| e.request),
            Ok(Request::Stop)
        );
    }

    #[test]
    fn a_line_taken_for_an_own_stop_unparsed_is_a_stop_parsed() {
        let stop = |by: &str| {
            Envelope {
                by: by.to_string(),
                ..Envelope::new(Request::Stop)
            }
            .to_line()
        };
        for by in ["", "root", "alice.b-c_d@x", &"u".repeat(64)] {
            let line = stop(by);
            assert!(is_own_stop(line.as_bytes()), "{line}");
            assert!(
                is_own_stop(format!(" {line}\r").as_bytes()),
                "trimmed as parse trims"
            );
        }
        // Anything else is left to the loop's parse: other requests, near misses, bytes
        // that are not UTF-8.
        let mut others = vec![
            Envelope::new(Request::Status).to_line(),
            Envelope::new(Request::Reload).to_line(),
            stop("").replace("\"protocol\":1", "\"protocol\":2"),
            stop("a b"),
            "stop".to_string(),
            format!(r#"{{"baton":"{VERSION}", "protocol":1,"request":"stop"}}"#),
        ];
        others.push(stop(&"u".repeat(65)));
        for line in &others {
            assert!(!is_own_stop(line.as_bytes()), "{line}");
        }
        let mut bad = stop("root").into_bytes();
        bad.insert(3, 0xff);
        assert!(!is_own_stop(&bad));
    }

    proptest! {
        #[test]
        fn what_is_taken_for_an_own_stop_parses_as_a_stop(
            at in 0usize..70,
            cut in 0usize..3,
            put in "\\PC{0,3}",
        ) {
            // This baton's own stop line, a little changed somewhere.
            let mut line = Envelope { by: "root".into(), ..Envelope::new(Request::Stop) }.to_line();
            let at = at.min(line.len());
            line.replace_range(at..(at + cut).min(line.len()), &put);
            if is_own_stop(line.as_bytes()) {
                prop_assert_eq!(Envelope::parse(&line).map(|e| e.request), Ok(Request::Stop));
            }
        }
    }

    #[test]
    fn requests_round_trip_and_protocol_0_words_still_parse() {
        for r in [
            Request::Status,
            Request::Start,
            Request::Stop,
            Request::Reload,
            Request::Reopen,
            Request::Reexec,
            Request::Reconfigure,
            Request::Signal {
                signal: "SIGHUP".into(),
            },
            Request::Deploy {
                release: "20261129-1".into(),
            },
            Request::Rollback {
                release: "r1".into(),
            },
        ] {
            let e = Envelope::new(r.clone());
            assert_eq!(Envelope::parse(&e.to_line()), Ok(e));
            let legacy = Envelope::parse(&r.legacy_line()).expect("legacy");
            assert_eq!((legacy.protocol, legacy.request), (0, r));
        }
        assert!(Envelope::parse("deploy").is_err());
        assert!(
            Envelope::parse("{\"request\":\"status\"}").is_err(),
            "no version"
        );
    }

    #[test]
    fn who_asked_travels_with_the_request_but_only_as_a_user_name() {
        let mut e = Envelope::new(Request::Deploy {
            release: "r2".into(),
        });
        e.by = "alice".into();
        assert_eq!(Envelope::parse(&e.to_line()).expect("parse").by, "alice");
        // A client that forges a second revisions.log line, or a very long name, gets neither.
        let forged = r#"{"request":"deploy","release":"r2","protocol":1,"baton":"0.2.0","by":"eve\nroot deployed as release r0 x"}"#;
        assert_eq!(
            Envelope::parse(forged).expect("parse").by,
            "everootdeployedasreleaser0x"
        );
        let long = format!(
            r#"{{"request":"status","protocol":1,"baton":"0.2.0","by":"{}"}}"#,
            "a".repeat(500)
        );
        assert_eq!(Envelope::parse(&long).expect("parse").by.len(), 64);
        // Older clients say nothing: empty, and the supervisor falls back to its own operator.
        assert_eq!(Envelope::parse("deploy r2").expect("parse").by, "");
    }

    /// An older supervisor simulated by the exact lines it writes: protocol 0 replies carry
    /// neither protocol nor version (no older baton build runs in unit tests).
    #[test]
    fn replies_of_an_older_supervisor_decode_and_name_both_versions() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        (&theirs)
            .write_all(
                b"{\"type\":\"status\",\"name\":\"web\",\"state\":\"ready\",\"ready\":true,\"supervisor_pid\":7,\"service_pid\":8,\"processes\":[8],\"port\":null,\"uptime_secs\":1.0,\"restarts\":0,\"attempt\":0,\"next_try_in_secs\":null,\"last_exit\":null,\"problem\":null,\"waiting_for\":null,\"tail\":[]}\n\
                  {\"type\":\"error\",\"message\":\"unknown request \\\"reexec\\\"\",\"code\":1}\n",
            )
            .expect("write");
        drop(theirs);
        let mut replies = Replies {
            reader: BufReader::new(ours),
            first: None,
            peer: None,
            timeout: None,
        };
        match replies.next() {
            Some(Ok(Reply::Status(r))) => {
                assert_eq!((r.name.as_str(), r.supervisor_version), ("web", None));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            replies.peer,
            Some(Peer {
                protocol: 0,
                baton: None
            })
        );
        let Some(Ok(Reply::Error { message, .. })) = replies.next() else {
            panic!("an error line");
        };
        let said = version_skew(replies.peer.as_ref(), &Request::Reload, "web", &message);
        assert_eq!(
            said.as_deref(),
            Some(format!("supervisor runs baton from before protocol versions, this is {VERSION}: run `baton reexec web`").as_str())
        );
        let said = version_skew(replies.peer.as_ref(), &Request::Reexec, "web", &message)
            .unwrap_or_default();
        assert!(said.contains("`baton restart web`"), "{said}");
        // A protocol 1 supervisor of another version says which request it does not know.
        let peer = Peer {
            protocol: 1,
            baton: Some("0.0.9".into()),
        };
        let refusal = "supervisor runs baton 0.0.9 (protocol 1), this is baton 0.1.0 (protocol 1): the running supervisor does not know the request \"signal\"";
        let said = version_skew(
            Some(&peer),
            &Request::Signal {
                signal: "SIGHUP".into(),
            },
            "web",
            refusal,
        );
        assert_eq!(
            said,
            Some(format!(
                "supervisor runs baton 0.0.9, this is {VERSION}: run `baton reexec web`"
            ))
        );
        // The same version that does not know the request: another build of it.
        let same = Peer {
            protocol: 1,
            baton: Some(VERSION.into()),
        };
        let said = version_skew(Some(&same), &Request::Reexec, "web", refusal).unwrap_or_default();
        assert!(
            said.starts_with(&format!("supervisor runs an older build of baton {VERSION}, this is {VERSION}, and that supervisor cannot")),
            "{said}"
        );
        // Another refusal: no skew to speak of.
        assert_eq!(
            version_skew(Some(&peer), &Request::Reexec, "web", "web is stopping"),
            None
        );
    }

    #[test]
    fn a_newer_client_hears_which_versions_differ() {
        let line = r#"{"protocol":2,"baton":"9.9.9","request":"frobnicate"}"#;
        let e = Envelope::parse(line).err().unwrap_or_default();
        assert!(
            e.starts_with(&format!("supervisor runs baton {VERSION} (protocol {PROTOCOL}), this is baton 9.9.9 (protocol 2)")),
            "{e}"
        );
        // Extra fields of a newer request do not stop an old one from being understood.
        let line = r#"{"protocol":2,"baton":"9.9.9","request":"status","verbose":true}"#;
        assert_eq!(
            Envelope::parse(line).map(|e| e.request),
            Ok(Request::Status)
        );
    }

    #[test]
    fn replies_carry_the_supervisor_version_and_the_code_as_a_number() {
        let line = Line {
            protocol: PROTOCOL,
            baton: Some(VERSION.into()),
            reply: Reply::Error {
                message: "no".into(),
                code: Action::NotRunning,
            },
        };
        let text = serde_json::to_string(&line).expect("json");
        assert!(text.contains("\"code\":7"), "{text}");
        let back: Line = serde_json::from_str(&text).expect("parse");
        assert!(matches!(
            back.reply,
            Reply::Error {
                code: Action::NotRunning,
                ..
            }
        ));
        assert_eq!(back.baton.as_deref(), Some(VERSION));
        // What a supervisor before versions sent.
        let old: Line = serde_json::from_str(r#"{"type":"ok","message":"fine"}"#).expect("old");
        assert_eq!(old.protocol, 0);
        let status = Line {
            protocol: PROTOCOL,
            baton: None,
            reply: Reply::Status(Box::default()),
        };
        let text = serde_json::to_string(&status).expect("json");
        assert!(matches!(
            serde_json::from_str::<Line>(&text).map(|l| l.reply),
            Ok(Reply::Status(_))
        ));
    }

    proptest! {
        #[test]
        fn the_request_parser_never_panics_and_bounds_what_it_accepts(line in "\\PC{0,300}") {
            if let Ok(e) = Envelope::parse(&line) {
                prop_assert!(line.len() <= MAX_REQUEST);
                // Whatever it accepted reads back the same.
                prop_assert_eq!(Envelope::parse(&e.to_line()).map(|x| x.request), Ok(e.request));
            }
        }

        #[test]
        fn json_requests_with_any_fields_parse_or_refuse(
            name in prop::sample::select(vec!["status", "deploy", "rollback", "stop", "reexec", ""]),
            release in proptest::option::of("\\PC{0,40}"),
            protocol in 0u32..4,
        ) {
            let mut v = serde_json::json!({"protocol": protocol, "baton": "1.0.0", "request": name});
            if let Some(r) = &release {
                v["release"] = serde_json::Value::from(r.clone());
            }
            match Envelope::parse(&v.to_string()) {
                Ok(e) => {
                    prop_assert_eq!(e.protocol, protocol);
                    prop_assert_eq!(e.request.name(), name);
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }

        #[test]
        fn reply_lines_round_trip(message in "\\PC{0,200}", code in -5i32..300) {
            let line = Line {
                protocol: PROTOCOL,
                baton: Some(VERSION.into()),
                reply: Reply::Error { message: message.clone(), code: Action::from_code(code) },
            };
            let text = serde_json::to_string(&line).expect("json");
            prop_assert!(!text.contains('\n'));
            let back: Line = serde_json::from_str(&text).expect("parse");
            match back.reply {
                Reply::Error { message: m, code: c } => {
                    prop_assert_eq!(m, message);
                    prop_assert_eq!(c, Action::from_code(code));
                }
                _ => prop_assert!(false),
            }
        }
    }
}
