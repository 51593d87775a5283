//! A wake's first act: a plain `stop`'s signal, or the answer to the `start` waiting for the
//! first READY=1, done as the wake begins, only where the loop's own step would do exactly
//! that first.
//!
//! Both figures that follow an idle wait are paid per distinct page touched before that act
//! (HELPERS.md; benches/PROFILE-ready.md and PROFILE-stop.md, "Wake round"). The loop's own
//! step reaches it through the request's parse and allocations, the machine, its effects, and
//! for READY=1 the notify read, the probes and the conditions on every part of the
//! supervisor's state. Here the conditions are judged before the loop sleeps
//! ([`Armed::of`], while everything is warm) and what the wake must still see (the request's
//! bytes, the datagram and its sender) is peeked without allocating, then the act is done;
//! the loop then steps as always, reading the same request or datagram, and skips what is
//! done (`group_signalled`, `answered`). Anything else (another event in the same wake, a
//! request other than this baton's own `stop`, a READY=1 from any process but the leader, a
//! handoff under way) is left to the loop, unchanged.

use super::instance::Instance;
use super::poll::Source;
use super::Supervisor;
use nix::poll::PollFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::os::fd::AsFd;
use std::time::Instant;

/// What a wake may do first, judged before the loop sleeps.
#[derive(Default)]
pub struct Armed {
    /// A plain `stop` sends this signal to this leader's group first.
    stop: Option<(Pid, Signal)>,
    /// A READY=1 from this leader is the first readiness: it answers the waiting `start`.
    ready: Option<Pid>,
}

impl Armed {
    /// What `sup`, as it is now, would do first on a plain stop or a READY=1.
    pub fn of(sup: &Supervisor) -> Armed {
        let leader = sup.instance.as_ref().map(|i| i.pid);
        // During a handoff a stop first cancels it, and READY=1 may be the new instance's.
        if sup.handoff.is_some() || leader.is_none() {
            return Armed::default();
        }
        let stop = sup
            .machine
            .stop_signals()
            .filter(|&(pid, sig)| Some(pid) == leader && sup.tracker.signals_group_first(sig));
        let ready = leader.filter(|_| {
            sup.first_ready_due()
                && sup.records.stages(&sup.spec.pidfile)
                && sup
                    .instance
                    .as_ref()
                    .is_some_and(Instance::waits_only_for_notify)
        });
        Armed { stop, ready }
    }
}

impl Supervisor {
    /// The wake brought only `ready` (one descriptor, and how): a plain stop's signal, or
    /// the first readiness's answer, before the loop's own step. Returns a client it
    /// accepted, whose request the loop then reads as always; one that has sent no whole
    /// line yet is left for the wake its request brings (read now, it would find nothing,
    /// or a request the loop must then carry all the way to its signal).
    // Out of the loop's step (14 KB): this, with what it calls, is what the two figures run
    // after the wake, placed together by link/hot-order.txt.
    #[inline(never)]
    pub(super) fn act_first(
        &mut self,
        (src, flags): (Source, PollFlags),
        armed: &Armed,
        slept_at: Instant,
    ) -> Option<usize> {
        if !flags.contains(PollFlags::POLLIN) {
            return None;
        }
        match src {
            Source::Control => {
                armed.stop?;
                // The clock after the signal: the client is taken with the time the loop
                // went to sleep, and given the time now (its idle deadline, a pause of
                // accepting) once the group has its signal.
                let taken = self.clients.accept(slept_at);
                let stop = taken.and_then(|i| self.stop_first(armed, i));
                self.clients.accepted_at(taken, Instant::now());
                taken.filter(|_| stop.is_some())
            }
            // A client whose request came after its connection was taken; one with replies
            // to take first is left to the loop.
            Source::Conn(i) if !flags.contains(PollFlags::POLLOUT) => {
                armed.stop?;
                self.stop_first(armed, i);
                None
            }
            Source::Notify => {
                let leader = armed.ready?;
                let (sock, _) = self.notify.as_ref()?;
                // Short (zeroed without a call to memset): a READY=1 is a few bytes, and a
                // longer message (cut here) is read whole by the loop.
                let mut buf = [0u8; 128];
                let (n, sender) =
                    crate::sys::recv_with_sender(sock.as_fd(), &mut buf, true).ok()?;
                let said = buf
                    .get(..n)
                    .filter(|_| n < buf.len() && sender == Some(leader))
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .is_some_and(crate::probe::says_ready);
                if said {
                    self.answer_ready_now(true);
                }
                None
            }
            _ => None,
        }
    }

    /// If client `i` asks for a plain stop, its signal, now. Whether its first line was
    /// such a stop; none if it has sent no whole line yet.
    fn stop_first(&mut self, armed: &Armed, i: usize) -> Option<bool> {
        let stop = self.clients.sent_own_stop(i)?;
        if let Some((pid, sig)) = armed.stop.filter(|_| stop) {
            crate::process::signal_group(pid, sig);
            self.group_signalled = Some((pid, sig));
        }
        Some(stop)
    }

    /// The first readiness of a `start` answered where it is seen, before the machine steps:
    /// the PID file renamed into place, then "ready" to the waiting `start`. Only where the
    /// machine's own path would do exactly that and nothing first ([`first_ready_due`]) and
    /// every check has passed. The machine then steps as always and `ready_and_routed` skips
    /// what is done; a failed rename is left to it (it retries, and reports the failure).
    /// `start` is what the caller waits for (benches/PROFILE-ready.md, "Notify round").
    ///
    /// [`first_ready_due`]: Supervisor::first_ready_due
    pub(super) fn answer_first_ready(&mut self) {
        if self.first_ready_due() && self.instance.as_ref().is_some_and(Instance::passed) {
            self.answer_ready_now(false);
        }
    }

    /// Whether a readiness now would be the first one, answered by the machine's own path
    /// with the PID file and `start`'s answer before anything else: a `start` waits, the main
    /// instance is starting, no handoff, and nothing to publish first (no proxy, registry
    /// or release).
    fn first_ready_due(&self) -> bool {
        self.reporter.waiting()
            && self.handoff.is_none()
            && matches!(self.machine.phase, super::Phase::Starting { .. })
            && self.routing.nothing_to_publish(&self.spec)
    }

    /// Puts the PID file in place and tells the waiting `start`; `staged` when the staged
    /// file was found to be that PID file before the loop slept.
    fn answer_ready_now(&mut self, staged: bool) {
        let published = if staged {
            self.records.publish_staged(&self.spec.pidfile)
        } else {
            self.records.publish_pid(&self.spec.pidfile)
        };
        if let Ok(spent) = published {
            self.reporter.ready();
            self.answered = true;
            drop(spent);
        }
    }
}
