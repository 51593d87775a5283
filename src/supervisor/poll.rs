//! What the loop sleeps on: the descriptors it polls and the nearest deadline it wakes for.

use super::instance::{Which, DISCOVER_EVERY};
use super::Supervisor;
use crate::error::{Error, Result};
use crate::probe::Probes;
use nix::poll::PollFlags;
use nix::sys::time::TimeSpec;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;

/// What a polled descriptor belongs to.
#[derive(Clone, Copy)]
pub enum Source {
    Signals,
    Control,
    Conn(usize),
    Notify,
    Pipe(usize),
    Probe(Which, usize),
    Worker,
    Publisher,
    Cgroup,
}

/// The buffers of the loop's poll(2), kept from one wake to the next: after a long sleep
/// every page malloc and free touch (their code, the arena, the chunks) is paid for, so a
/// wake allocates and frees nothing for its poll, and what is ready is read where the
/// kernel wrote it (benches/PROFILE-ready.md, "Wake round").
#[derive(Default)]
pub struct PollBufs {
    fds: Vec<libc::pollfd>,
    sources: Vec<Source>,
    /// What the last idle shed dropped (freed at the next one).
    shed: crate::sys::Shed,
}

impl PollBufs {
    /// Buffers with room for `n` descriptors, made now: made at the first wake instead,
    /// they would lie wherever the heap had room then, away from the rest of what a wake
    /// reads.
    pub fn with_room(n: usize) -> Self {
        PollBufs {
            fds: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            shed: Default::default(),
        }
    }

    /// What the last poll(2) found ready, and how, in the order polled.
    pub fn ready(&self) -> impl Iterator<Item = (Source, PollFlags)> + '_ {
        self.fds
            .iter()
            .zip(&self.sources)
            .filter(|(fd, _)| fd.revents != 0)
            .map(|(fd, src)| (*src, PollFlags::from_bits_truncate(fd.revents)))
    }

    /// The one descriptor found ready, if only one was.
    pub fn alone(&self) -> Option<(Source, PollFlags)> {
        let mut ready = self.ready();
        let first = ready.next();
        ready.next().map_or(first, |_| None)
    }
}

/// The descriptors of one poll(2), each with what it belongs to.
pub struct PollSet<'a> {
    bufs: PollBufs,
    /// The descriptors are borrowed from their owners for as long as the set lives.
    _fds: PhantomData<BorrowedFd<'a>>,
}

impl<'a> PollSet<'a> {
    /// An empty set filling `bufs` (their room kept from the last poll).
    fn over(mut bufs: PollBufs) -> Self {
        bufs.fds.clear();
        bufs.sources.clear();
        PollSet {
            bufs,
            _fds: PhantomData,
        }
    }

    /// Polls `fd` for `events` on behalf of `source`.
    pub fn add(&mut self, fd: BorrowedFd<'a>, events: PollFlags, source: Source) {
        self.bufs.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: events.bits(),
            revents: 0,
        });
        self.bufs.sources.push(source);
    }

    /// Sleeps until a descriptor is ready or `timeout` passes; the buffers, which say what
    /// is ready ([`PollBufs::ready`]).
    pub fn wait(mut self, timeout: Option<TimeSpec>) -> Result<PollBufs> {
        let polled = crate::sys::ppoll(&mut self.bufs.fds, timeout);
        self.ready(polled)
    }

    /// As `wait` with nothing due, after handing back the memory the idle loop does not
    /// need (`sys::shed_and_poll`).
    pub fn shed_and_wait(mut self) -> Result<PollBufs> {
        let b = &mut self.bufs;
        let polled = crate::sys::shed_and_poll(&mut b.fds, &mut b.shed);
        self.ready(polled)
    }

    fn ready(mut self, polled: nix::Result<libc::c_int>) -> Result<PollBufs> {
        match polled {
            Ok(_) => Ok(self.bufs),
            // Interrupted: nothing is ready.
            Err(nix::errno::Errno::EINTR) => {
                for fd in &mut self.bufs.fds {
                    fd.revents = 0;
                }
                Ok(self.bufs)
            }
            Err(e) => Err(Error::errno("wait for events", e)),
        }
    }
}

/// How long the loop may sleep: until the nearest deadline, or for ever when none is set.
pub fn timeout(sup: &Supervisor, now: Instant) -> Option<TimeSpec> {
    // ppoll's nanosecond timeout: a 1 ms backoff sleeps 1 ms, not poll's rounded-up 2.
    deadline(sup, now).map(|d| TimeSpec::from_duration(d.saturating_duration_since(now)))
}

/// The nearest moment something is due; none while the service runs quietly.
fn deadline(sup: &Supervisor, now: Instant) -> Option<Instant> {
    let candidate = sup.handoff.as_ref().and_then(|h| h.candidate.as_ref());
    let probes = |i: Option<&super::instance::Instance>| {
        i.and_then(|i| i.probes.as_ref())
            .and_then(Probes::next_deadline)
    };
    [
        sup.machine.deadline(),
        probes(sup.instance.as_ref()),
        sup.next_progress,
        sup.clients.deadline(),
        sup.handoff.as_ref().and_then(|h| h.machine.deadline()),
        probes(candidate),
        // Port discovery looks in /proc only while an instance starts.
        [sup.instance.as_ref(), candidate]
            .into_iter()
            .flatten()
            .any(|i| i.discovering)
            .then(|| now + DISCOVER_EVERY),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Every descriptor the loop waits on now, in `bufs`.
pub fn interests(sup: &Supervisor, bufs: PollBufs) -> PollSet<'_> {
    let mut set = PollSet::over(bufs);
    set.add(sup.sigfd.as_fd(), PollFlags::POLLIN, Source::Signals);
    sup.clients.interests(&mut set);
    if let Some((sock, _)) = &sup.notify {
        set.add(sock.as_fd(), PollFlags::POLLIN, Source::Notify);
    }
    for (i, p) in sup.pipes.iter().enumerate() {
        set.add(p.as_fd(), PollFlags::POLLIN, Source::Pipe(i));
    }
    let candidate = sup.handoff.as_ref().and_then(|h| h.candidate.as_ref());
    for (which, inst) in [
        (Which::Main, sup.instance.as_ref()),
        (Which::Candidate, candidate),
    ] {
        if let Some(probes) = inst.and_then(|i| i.probes.as_ref()) {
            for interest in probes.interests() {
                set.add(
                    interest.fd,
                    interest.events,
                    Source::Probe(which, interest.index),
                );
            }
        }
    }
    if let Some(fd) = sup
        .handoff
        .as_ref()
        .and_then(|h| h.worker.as_ref())
        .and_then(|(_, out)| out.as_fd())
    {
        set.add(fd, PollFlags::POLLIN, Source::Worker);
    }
    if let Some(fd) = sup.routing.fd() {
        set.add(fd, PollFlags::POLLIN, Source::Publisher);
    }
    // The kernel raises POLLPRI only when `populated` flips: no wakeup while idle.
    if let Some(fd) = sup.tracker.events_fd() {
        set.add(fd, PollFlags::POLLPRI, Source::Cgroup);
    }
    set
}
