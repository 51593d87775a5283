//! The stop ladder both machines climb: stop signal, optional dump signal, deadline, SIGKILL.

use std::time::{Duration, Instant};

/// A stop in progress, after the stop signal went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    /// When the dump signal is due; None once sent or if not configured.
    pub dump_at: Option<Instant>,
    /// When SIGKILL is due.
    pub kill_at: Instant,
    /// Whether SIGKILL went out.
    pub killed: bool,
}

/// A rung reached: what to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    /// The thread-dump signal (a JVM's QUIT), once, while there is still time.
    Dump,
    /// SIGKILL to what is left.
    Kill,
}

impl Ladder {
    /// The stop signal went out at `now`; `dump_after` only while the leader lives.
    pub fn start(now: Instant, timeout: Duration, dump_after: Option<Duration>) -> Ladder {
        Ladder {
            dump_at: dump_after.map(|d| crate::clock::after(now, d)),
            kill_at: crate::clock::after(now, timeout),
            killed: false,
        }
    }

    /// The next moment [`Ladder::tick`] would send something.
    pub fn deadline(&self) -> Option<Instant> {
        let kill = (!self.killed).then_some(self.kill_at);
        match (self.dump_at, kill) {
            (Some(d), Some(k)) => Some(d.min(k)),
            (d, k) => d.or(k),
        }
    }

    /// The rungs due at `now`, each reached once.
    pub fn tick(&mut self, now: Instant) -> Vec<Rung> {
        let mut due = Vec::new();
        if self.dump_at.is_some_and(|d| d <= now) {
            self.dump_at = None;
            due.push(Rung::Dump);
        }
        if !self.killed && self.kill_at <= now {
            self.killed = true;
            due.push(Rung::Kill);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_then_kill_each_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Ladder::start(t0, 10 * s, Some(2 * s));
        assert_eq!(l.deadline(), Some(t0 + 2 * s));
        assert_eq!(l.tick(t0 + s), vec![]);
        assert_eq!(l.tick(t0 + 2 * s), vec![Rung::Dump]);
        assert_eq!(l.deadline(), Some(t0 + 10 * s));
        assert_eq!(l.tick(t0 + 3 * s), vec![]);
        assert_eq!(l.tick(t0 + 10 * s), vec![Rung::Kill]);
        assert_eq!(l.tick(t0 + 11 * s), vec![]);
        assert_eq!(l.deadline(), None);
        let mut quick = Ladder::start(t0, s, Some(5 * s));
        assert_eq!(quick.tick(t0 + 6 * s), vec![Rung::Dump, Rung::Kill]);
    }
}
