//! The loop's control clients: accepting them, reading their requests, delivering what they wait for.

use super::poll::{Ident, PollSet, Source};
use crate::control::{Accepted, Awaits, Conn, Envelope, Incoming, Peeked, Reply, Server};
use nix::poll::PollFlags;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// The control socket and the clients connected to it.
pub struct Clients {
    server: Server,
    conns: Vec<Conn>,
    /// Accepting waits until then (out of file descriptors).
    paused_until: Option<Instant>,
}

impl Clients {
    /// Serves `server`, with no client yet.
    pub fn new(server: Server) -> Self {
        Clients {
            server,
            // Room made now: the first client after a long sleep (a `stop`) is taken
            // without a call into malloc before its signal.
            conns: Vec::with_capacity(4),
            paused_until: None,
        }
    }

    /// Takes over a client a previous image accepted (`baton reexec`).
    pub fn adopt(&mut self, conn: Conn) {
        self.conns.push(conn);
    }

    /// The listening descriptor, to carry across a reexec.
    pub fn server_fd(&self) -> RawFd {
        self.server.raw_fd()
    }

    /// Client `i`'s descriptor, to carry across a reexec.
    pub fn raw_fd(&self, i: usize) -> Option<RawFd> {
        self.conns.get(i).map(|c| c.as_fd().as_raw_fd())
    }

    /// The nearest moment something is due: accepting resumes, or an idle client is dropped.
    pub fn deadline(&self) -> Option<Instant> {
        let idle = self.conns.iter().filter_map(Conn::idle_deadline).min();
        [self.paused_until, idle].into_iter().flatten().min()
    }

    /// What to poll for: new clients (unless paused), requests, and room for pending replies.
    pub fn interests<'a>(&'a self, set: &mut PollSet<'a>) {
        // Out of file descriptors, accepting waits a moment: the socket would stay readable.
        if self.paused_until.is_none() {
            set.add_known(
                self.server.as_fd(),
                PollFlags::POLLIN,
                Source::Control,
                Ident::Life,
            );
        }
        for (i, c) in self.conns.iter().enumerate() {
            let events = if c.wants_write() {
                PollFlags::POLLIN | PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            set.add(c.as_fd(), events, Source::Conn(i));
        }
    }

    /// Accepts the next client waiting (out of file descriptors, stops accepting for a
    /// moment); returns its index.
    pub fn accept(&mut self, now: Instant) -> Option<usize> {
        let (new, how) = self.server.accept(self.conns.len(), now);
        if how == Accepted::OutOfFiles {
            self.paused_until = Some(now + crate::control::ACCEPT_PAUSE);
        }
        self.conns.push(new?);
        Some(self.conns.len() - 1)
    }

    /// Dates from `now` what the last [`Clients::accept`] stamped with an earlier time:
    /// client `i`'s activity (its idle deadline), and a pause of accepting it began.
    pub fn accepted_at(&mut self, i: Option<usize>, now: Instant) {
        if let Some(c) = i.and_then(|i| self.conns.get_mut(i)) {
            c.active_at(now);
        }
        if self.paused_until.is_some() {
            self.paused_until = Some(now + crate::control::ACCEPT_PAUSE);
        }
    }

    /// Whether client `i`'s next line, still unread, is this baton's own plain `stop`
    /// (false for a line longer than the room given to it: the loop reads it); none if no
    /// whole line is there yet.
    pub fn sent_own_stop(&self, i: usize) -> Option<bool> {
        // Room for the line with a user name of 60 characters; zeroed without a call to
        // memset.
        let mut buf = [0u8; 128];
        match self.conns.get(i)?.peek_line(&mut buf) {
            Peeked::Line(line) => Some(crate::control::is_own_stop(line)),
            Peeked::Long => Some(false),
            Peeked::Partial => None,
        }
    }

    /// Client `i` is ready for `flags`: sends what waits, reads what came; a complete request.
    pub fn on_ready(
        &mut self,
        i: usize,
        flags: PollFlags,
        now: Instant,
    ) -> Option<std::result::Result<Envelope, String>> {
        let c = self.conns.get_mut(i)?;
        if flags.contains(PollFlags::POLLOUT) {
            c.flush(now);
        }
        if !flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return None;
        }
        match c.read(now) {
            Incoming::Request(r) => Some(r),
            Incoming::Closed => {
                c.drop_now();
                None
            }
            Incoming::Nothing => None,
        }
    }

    /// Resumes accepting and drops idle clients when their time has come.
    pub fn on_time(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            self.server.refill_spare();
        }
        for c in self.conns.iter_mut() {
            if c.idle_deadline().is_some_and(|d| d <= now) {
                tracing::warn!("dropped an idle control connection");
                c.drop_now();
            }
        }
    }

    /// Forgets the clients that are done.
    pub fn sweep(&mut self) {
        let before = self.conns.len();
        self.conns.retain(|c| !c.done());
        // A closed client freed a descriptor: the reserve given up for it comes back first.
        if self.conns.len() < before {
            self.server.refill_spare();
        }
    }

    /// Sends `reply` to client `i`; true if the client waits for more.
    pub fn reply(&mut self, i: usize, reply: &Reply) -> bool {
        match self.conns.get_mut(i) {
            Some(c) => {
                c.send(reply);
                c.awaits != Awaits::Nothing
            }
            None => false,
        }
    }

    /// Sends `reply` to client `i`, who waits for more.
    pub fn tell(&mut self, i: usize, reply: &Reply) {
        if let Some(c) = self.conns.get_mut(i) {
            c.send(reply);
        }
    }

    /// Ends the conversation with client `i` once it has its replies.
    pub fn finish(&mut self, i: usize) {
        if let Some(c) = self.conns.get_mut(i) {
            c.finish();
        }
    }

    /// Client `i` waits for `what` after its first reply.
    pub fn wait_for(&mut self, i: usize, what: Awaits) {
        if let Some(c) = self.conns.get_mut(i) {
            c.awaits = what;
        }
    }

    /// Whether client `i` still waits for something.
    pub fn waits(&self, i: usize) -> bool {
        self.conns
            .get(i)
            .is_some_and(|c| c.awaits != Awaits::Nothing)
    }

    /// Whether any client waits for `what`.
    pub fn any_waits_for(&self, what: Awaits) -> bool {
        self.conns.iter().any(|c| c.awaits == what)
    }

    /// A progress line to every client waiting for `what`.
    pub fn progress(&mut self, what: Awaits, message: &str) {
        let reply = Reply::Progress {
            message: message.to_string(),
        };
        for c in self.conns.iter_mut().filter(|c| c.awaits == what) {
            c.send(&reply);
        }
    }

    /// The last answer to every client waiting for `what`, who then goes.
    pub fn answer(&mut self, what: Awaits, reply: &Reply) {
        for c in self.conns.iter_mut().filter(|c| c.awaits == what) {
            c.send(reply);
            c.awaits = Awaits::Nothing;
            c.finish();
        }
    }
}
