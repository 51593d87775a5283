//! What the loop sleeps on: the descriptors it polls and the nearest deadline it wakes for.

use super::instance::{Which, DISCOVER_EVERY};
use super::Supervisor;
use crate::error::{Error, Result};
use crate::probe::Probes;
use nix::poll::PollFlags;
use nix::sys::time::TimeSpec;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Instant;

/// What a polled descriptor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What says that a descriptor number still names the file that was registered under it.
///
/// The kernel keys an epoll registration by descriptor number and open file, and drops it
/// when that file is closed; a number closed and reused between two sleeps (a respawned
/// service's pipes, a new client at the same index) would otherwise look registered and
/// never be heard.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ident {
    /// Opened at start and closed only at exit (the signalfd, the control and notify
    /// sockets, the cgroup's events file).
    Life,
    /// Made for one owner and never given to another (a pipe and the PID of the instance
    /// writing to it): same number and owner, same file.
    Owner(u64),
    /// Anything else: asked of the kernel before every sleep (EPOLL_CTL_MOD, which fails
    /// with ENOENT when the number now names another file).
    Ask,
}

/// One descriptor waited on: its number, what for, for whom, and the `data` its events
/// carry (its number and a serial, so an event of a registration since replaced is told
/// apart).
#[derive(Clone, Copy)]
struct Interest {
    fd: RawFd,
    events: PollFlags,
    source: Source,
    ident: Ident,
    data: u64,
}

/// Room for the events of one wake; more ready at once are taken at the next.
const EVENTS: usize = 32;

/// The loop's epoll(7) set and its buffers, kept from one wake to the next. Registering
/// is done before the sleep, and only for what changed, so that a wake re-polls only what
/// is ready: ppoll(2) on every descriptor re-polled them all and took its entry off each
/// one's wait queue before user space ran, each a kernel object untouched since the last
/// wake (benches/PROFILE-ready.md, "Kernel side of the wake"). After a long sleep every
/// page malloc and free touch is paid for too, so a wake allocates and frees nothing, and
/// what is ready is read where the kernel wrote it (same file, "Wake round").
pub struct PollBufs {
    epoll: Option<OwnedFd>,
    /// What the kernel has, in the order of the last `interests`.
    registered: Vec<Interest>,
    /// What the next sleep waits on, filled by `interests`.
    wanted: Vec<Interest>,
    /// On the heap, made with the rest by `with_room`: inline, its 384 bytes made every
    /// move of the buffers (into the set, back out at the wake) a call to libc's memmove,
    /// three pages of libc touched after the sleep (benches/PROFILE-ready.md).
    events: Vec<libc::epoll_event>,
    ready: usize,
    serial: u32,
    /// What the last idle shed dropped (freed at the next one).
    shed: crate::sys::Shed,
}

impl Default for PollBufs {
    fn default() -> Self {
        PollBufs::with_room(0)
    }
}

impl PollBufs {
    /// Buffers with room for `n` descriptors, made now: made at the first wake instead,
    /// they would lie wherever the heap had room then, away from the rest of what a wake
    /// reads. The epoll set is made at the first wait (a failure there is the loop's).
    pub fn with_room(n: usize) -> Self {
        PollBufs {
            epoll: None,
            registered: Vec::with_capacity(n),
            wanted: Vec::with_capacity(n),
            events: if n == 0 {
                Vec::new()
            } else {
                Self::no_events()
            },
            ready: 0,
            serial: 0,
            shed: Default::default(),
        }
    }

    fn no_events() -> Vec<libc::epoll_event> {
        vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS]
    }

    /// Room for a wake's events: buffers taken by `Default` (which allocates nothing)
    /// get it at their first `sync`.
    fn make_room(&mut self) {
        if self.events.is_empty() {
            self.events = Self::no_events();
        }
    }

    /// What the last wait found ready, and how, in the order of `interests`.
    pub fn ready(&self) -> impl Iterator<Item = (Source, PollFlags)> + '_ {
        let events = &self.events[..self.ready];
        self.registered.iter().filter_map(move |i| {
            events
                .iter()
                .find(|e| e.u64 == i.data)
                .map(|e| (i.source, PollFlags::from_bits_truncate(e.events as i16)))
        })
    }

    /// The one descriptor found ready, if only one was.
    pub fn alone(&self) -> Option<(Source, PollFlags)> {
        let mut ready = self.ready();
        let first = ready.next();
        ready.next().map_or(first, |_| None)
    }

    /// Brings the kernel's set to `wanted`: registrations no longer wanted out, new or
    /// changed ones in, the rest left alone (those of `Ident::Ask` asked about). Before
    /// the sleep, while all is warm; nothing allocated once the room suffices.
    fn sync(&mut self) -> Result<()> {
        use libc::{EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD};
        use nix::errno::Errno;
        if self.epoll.is_none() {
            let made =
                crate::sys::epoll_create().map_err(|e| Error::errno("make the poll set", e))?;
            self.epoll = Some(made);
        }
        self.make_room();
        let Some(epoll) = self.epoll.as_ref().map(AsFd::as_fd) else {
            return Ok(());
        };
        let fail = |e| Error::errno("register a descriptor to wait on", e);
        for old in &self.registered {
            if !self.wanted.iter().any(|w| w.fd == old.fd) {
                // Closed meanwhile (the kernel dropped it then): EBADF or ENOENT.
                let _ = crate::sys::epoll_ctl(epoll, EPOLL_CTL_DEL, old.fd, 0, 0);
            }
        }
        for w in &mut self.wanted {
            let old = self.registered.iter().find(|r| r.fd == w.fd);
            // The source is ours, looked up by `data` at the wake: the kernel needs no word
            // of a descriptor moving to another one (a client's index after another left).
            let same = old.filter(|r| r.events == w.events && r.ident == w.ident);
            let events = w.events.bits() as u16 as u32;
            match same {
                Some(r) if w.ident != Ident::Ask => w.data = r.data,
                Some(r) => {
                    w.data = r.data;
                    match crate::sys::epoll_ctl(epoll, EPOLL_CTL_MOD, w.fd, events, w.data) {
                        Err(Errno::ENOENT) => {
                            self.serial = self.serial.wrapping_add(1);
                            w.data = data(w.fd, self.serial);
                            crate::sys::epoll_ctl(epoll, EPOLL_CTL_ADD, w.fd, events, w.data)
                                .map_err(fail)?;
                        }
                        done => done.map_err(fail)?,
                    }
                }
                _ => {
                    self.serial = self.serial.wrapping_add(1);
                    w.data = data(w.fd, self.serial);
                    // A number registered before names either that file still (a new
                    // source for it: MOD) or a new one (the old one closed: ADD).
                    let (first, then) = match old {
                        Some(_) => (EPOLL_CTL_MOD, EPOLL_CTL_ADD),
                        None => (EPOLL_CTL_ADD, EPOLL_CTL_MOD),
                    };
                    match crate::sys::epoll_ctl(epoll, first, w.fd, events, w.data) {
                        Err(Errno::ENOENT | Errno::EEXIST) => {
                            crate::sys::epoll_ctl(epoll, then, w.fd, events, w.data)
                                .map_err(fail)?
                        }
                        done => done.map_err(fail)?,
                    }
                }
            }
        }
        std::mem::swap(&mut self.registered, &mut self.wanted);
        self.ready = 0;
        Ok(())
    }
}

/// An event's `data`: the descriptor's number and the serial of its registration.
fn data(fd: RawFd, serial: u32) -> u64 {
    u64::from(serial) << 32 | u64::from(fd as u32)
}

/// The descriptors of the next wait, each with what it belongs to.
pub struct PollSet<'a> {
    bufs: PollBufs,
    /// The descriptors are borrowed from their owners for as long as the set lives.
    _fds: PhantomData<BorrowedFd<'a>>,
}

impl<'a> PollSet<'a> {
    /// An empty set filling `bufs` (their room and registrations kept from the last wait).
    fn over(mut bufs: PollBufs) -> Self {
        bufs.wanted.clear();
        PollSet {
            bufs,
            _fds: PhantomData,
        }
    }

    /// Waits on `fd` for `events` on behalf of `source`; whether its number still names
    /// the file registered under it is asked of the kernel before each sleep.
    pub fn add(&mut self, fd: BorrowedFd<'a>, events: PollFlags, source: Source) {
        self.add_known(fd, events, source, Ident::Ask);
    }

    /// As `add`, for a descriptor whose file `ident` vouches for.
    pub fn add_known(
        &mut self,
        fd: BorrowedFd<'a>,
        events: PollFlags,
        source: Source,
        ident: Ident,
    ) {
        self.bufs.wanted.push(Interest {
            fd: fd.as_raw_fd(),
            events,
            source,
            ident,
            data: 0,
        });
    }

    /// Sleeps until a descriptor is ready or `timeout` passes; the buffers, which say what
    /// is ready ([`PollBufs::ready`]).
    pub fn wait(mut self, timeout: Option<TimeSpec>) -> Result<PollBufs> {
        self.bufs.sync()?;
        let b = &mut self.bufs;
        let polled = match b.epoll.as_ref() {
            Some(ep) => crate::sys::epoll_wait(ep.as_fd(), &mut b.events, timeout),
            None => Ok(0),
        };
        self.ready(polled)
    }

    /// As `wait` with nothing due, after handing back the memory the idle loop does not
    /// need (`sys::shed_and_epoll`).
    pub fn shed_and_wait(mut self) -> Result<PollBufs> {
        self.bufs.sync()?;
        let b = &mut self.bufs;
        let polled = match b.epoll.as_ref() {
            Some(ep) => crate::sys::shed_and_epoll(ep.as_fd(), &mut b.events, &mut b.shed),
            None => Ok(0),
        };
        self.ready(polled)
    }

    fn ready(mut self, polled: nix::Result<usize>) -> Result<PollBufs> {
        match polled {
            Ok(n) => {
                self.bufs.ready = n;
                Ok(self.bufs)
            }
            // Interrupted: nothing is ready.
            Err(nix::errno::Errno::EINTR) => Ok(self.bufs),
            Err(e) => Err(Error::errno("wait for events", e)),
        }
    }
}

/// How long the loop may sleep: until the nearest deadline, or for ever when none is set.
pub fn timeout(sup: &Supervisor, now: Instant) -> Option<TimeSpec> {
    // epoll_pwait2's nanosecond timeout: a 1 ms backoff sleeps 1 ms, not a rounded-up 2.
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
    set.add_known(
        sup.sigfd.as_fd(),
        PollFlags::POLLIN,
        Source::Signals,
        Ident::Life,
    );
    sup.clients.interests(&mut set);
    if let Some((sock, _)) = &sup.notify {
        set.add_known(sock.as_fd(), PollFlags::POLLIN, Source::Notify, Ident::Life);
    }
    for (i, p) in sup.pipes.iter().enumerate() {
        let owner = Ident::Owner(p.owner.as_raw() as u32 as u64);
        set.add_known(p.as_fd(), PollFlags::POLLIN, Source::Pipe(i), owner);
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
        set.add_known(fd, PollFlags::POLLPRI, Source::Cgroup, Ident::Life);
    }
    set
}

#[cfg(test)]
mod tests {
    //! The set against real pipes: what the kernel reports after descriptors are closed,
    //! their numbers reused, or their sources moved between two waits.
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().expect("pipe")
    }

    fn ready_within(bufs: PollBufs, fds: &[(&OwnedFd, Source, Ident)], ms: u64) -> PollBufs {
        let mut set = PollSet::over(bufs);
        for (fd, source, ident) in fds {
            set.add_known(fd.as_fd(), PollFlags::POLLIN, *source, *ident);
        }
        let timeout = TimeSpec::from_duration(std::time::Duration::from_millis(ms));
        set.wait(Some(timeout)).expect("wait")
    }

    fn sources(bufs: &PollBufs) -> Vec<(Source, bool)> {
        bufs.ready()
            .map(|(s, f)| (s, f.contains(PollFlags::POLLIN)))
            .collect()
    }

    /// A new pipe with a byte in it, its read end put at the number of `old`'s (dup2:
    /// `old`'s read end closed and its number reused at once, as no other thread can take
    /// it in between).
    fn readable_pipe_at_number_of(old: (OwnedFd, OwnedFd)) -> (OwnedFd, OwnedFd) {
        let (r, w) = pipe();
        nix::unistd::dup2(r.as_raw_fd(), old.0.as_raw_fd()).expect("dup2");
        nix::unistd::write(&w, b"x").expect("write");
        (old.0, w)
    }

    #[test]
    fn a_number_closed_and_reused_for_the_same_source_between_two_waits_is_heard() {
        for ident in [Ident::Ask, Ident::Owner(1)] {
            let first = pipe();
            let bufs = ready_within(
                PollBufs::with_room(4),
                &[(&first.0, Source::Pipe(0), ident)],
                1,
            );
            assert!(sources(&bufs).is_empty());
            let ident = match ident {
                Ident::Owner(_) => Ident::Owner(2),
                other => other,
            };
            let second = readable_pipe_at_number_of(first);
            let bufs = ready_within(bufs, &[(&second.0, Source::Pipe(0), ident)], 5000);
            assert_eq!(sources(&bufs), [(Source::Pipe(0), true)]);
        }
    }

    #[test]
    fn a_descriptor_moved_to_another_source_is_reported_under_the_new_one() {
        let (a, b) = (pipe(), pipe());
        let bufs = ready_within(
            PollBufs::with_room(4),
            &[
                (&a.0, Source::Conn(0), Ident::Ask),
                (&b.0, Source::Conn(1), Ident::Ask),
            ],
            1,
        );
        drop(a);
        nix::unistd::write(&b.1, b"x").expect("write");
        let bufs = ready_within(bufs, &[(&b.0, Source::Conn(0), Ident::Ask)], 5000);
        assert_eq!(sources(&bufs), [(Source::Conn(0), true)]);
        assert_eq!(bufs.alone().map(|(s, _)| s), Some(Source::Conn(0)));
    }

    #[test]
    fn a_descriptor_left_out_is_no_longer_reported_and_the_rest_come_in_set_order() {
        let (a, b, c) = (pipe(), pipe(), pipe());
        for p in [&a, &b, &c] {
            nix::unistd::write(&p.1, b"x").expect("write");
        }
        let all = [
            (&c.0, Source::Signals, Ident::Life),
            (&a.0, Source::Notify, Ident::Life),
            (&b.0, Source::Worker, Ident::Ask),
        ];
        let bufs = ready_within(PollBufs::with_room(4), &all, 5000);
        let order: Vec<Source> = bufs.ready().map(|(s, _)| s).collect();
        assert_eq!(order, [Source::Signals, Source::Notify, Source::Worker]);
        assert!(bufs.alone().is_none());
        // `a` is still readable, but no longer waited on.
        let bufs = ready_within(bufs, &[(&c.0, Source::Signals, Ident::Life)], 5000);
        assert_eq!(sources(&bufs), [(Source::Signals, true)]);
    }
}
