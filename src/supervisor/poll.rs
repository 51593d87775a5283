//! What the loop sleeps on: the descriptors it polls and the nearest deadline it wakes for.

use super::instance::{Which, DISCOVER_EVERY};
use super::Supervisor;
use crate::error::{Error, Result};
use crate::probe::Probes;
use nix::poll::{PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use std::os::fd::{AsFd, BorrowedFd};
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

/// The descriptors of one poll(2), each with what it belongs to.
#[derive(Default)]
pub struct PollSet<'a> {
    fds: Vec<PollFd<'a>>,
    sources: Vec<Source>,
}

impl<'a> PollSet<'a> {
    /// Polls `fd` for `events` on behalf of `source`.
    pub fn add(&mut self, fd: BorrowedFd<'a>, events: PollFlags, source: Source) {
        self.fds.push(PollFd::new(fd, events));
        self.sources.push(source);
    }

    /// Sleeps until a descriptor is ready or `timeout` passes; what is ready, and how.
    pub fn wait(mut self, timeout: Option<TimeSpec>) -> Result<Vec<(Source, PollFlags)>> {
        let polled = nix::poll::ppoll(&mut self.fds, timeout, None);
        self.ready(polled)
    }

    /// As `wait` with nothing due, after handing back the memory the idle loop does not
    /// need (`sys::shed_and_poll`).
    pub fn shed_and_wait(mut self) -> Result<Vec<(Source, PollFlags)>> {
        let polled = crate::sys::shed_and_poll(&mut self.fds);
        self.ready(polled)
    }

    fn ready(self, polled: nix::Result<libc::c_int>) -> Result<Vec<(Source, PollFlags)>> {
        match polled {
            Ok(_) => Ok(self
                .fds
                .iter()
                .zip(self.sources)
                .filter_map(|(fd, src)| fd.revents().filter(|r| !r.is_empty()).map(|r| (src, r)))
                .collect()),
            Err(nix::errno::Errno::EINTR) => Ok(Vec::new()),
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

/// Every descriptor the loop waits on now.
pub fn interests(sup: &Supervisor) -> PollSet<'_> {
    let mut set = PollSet::default();
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
