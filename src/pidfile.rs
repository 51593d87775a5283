//! PID file, supervisor lock and state file: the only code that touches them.
//!
//! Truth about liveness comes from the supervisor's lock, not from the PID
//! file existing: the lock dies with the process, so a reused PID can never
//! look alive. The PID file holds the PID alone on its first line, as LSB's
//! `pidofproc` reads it; identity (start time) lives in the state file.

use crate::config::Spec;
use crate::error::{Error, Result};
use crate::exit::Action;
use crate::process;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Writes the PID file (the PID alone on the first line).
pub fn write(path: &Path, pid: Pid) -> Result<()> {
    crate::files::write_live(path, format!("{pid}\n").as_bytes(), 0o644)
        .map_err(|e| Error::io(format!("write PID file {}", path.display()), &e))
}

/// Reads the PID on the first line; `Ok(None)` if there is no file.
pub fn read(path: &Path) -> Result<Option<Pid>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let first = text.lines().next().unwrap_or("").trim();
            first
                .parse::<i32>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| Some(Pid::from_raw(n)))
                .ok_or_else(|| {
                    Error::unable(
                        format!("read PID file {}", path.display()),
                        format!("first line {first:?} is not a PID"),
                    )
                    .code(Action::Generic)
                    .hint("remove the file if no baton supervisor is running")
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read PID file {}", path.display()), &e)),
    }
}

/// Removes a file; absent is fine.
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("unable to remove {}: {e}", path.display()),
    }
}

/// Where the supervisor lock lives.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("supervisor.lock")
}

/// Where `start` serialises itself so concurrent starts yield one service.
pub fn start_lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("start.lock")
}

/// Where the last known state is kept for when the supervisor is gone.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    let (dir, name) = crate::files::split(path)?;
    // 0644: anyone allowed to run `status` may test the lock.
    dir.open_lock(&name, 0o644).or_else(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            File::open(path)
        } else {
            Err(e)
        }
    })
}

/// Held for the supervisor's lifetime.
pub struct SupervisorLock(#[allow(dead_code)] Flock<File>);

impl SupervisorLock {
    /// The lock's descriptor, to carry across a reexec (the flock belongs to the open file).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// The lock a previous image of this supervisor held, on the descriptor it left open:
    /// locking the same open file again succeeds at once.
    pub fn inherited(fd: std::os::fd::OwnedFd) -> Result<SupervisorLock> {
        Flock::lock(File::from(fd), FlockArg::LockExclusiveNonblock)
            .map(SupervisorLock)
            .map_err(|(_, e)| Error::errno("take over the supervisor lock", e))
    }
}

/// Takes the supervisor lock, or says another supervisor holds it.
pub fn lock_supervisor(state_dir: &Path) -> Result<Option<SupervisorLock>> {
    let path = lock_path(state_dir);
    let f = open_lock(&path).map_err(|e| Error::io(format!("open lock {}", path.display()), &e))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(SupervisorLock(l))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::errno(format!("lock {}", path.display()), e)),
    }
}

/// Held by one `start` (or `stop`) at a time; blocks until free.
pub struct CommandLock(#[allow(dead_code)] Flock<File>);

/// Serialises state-changing commands on one service.
pub fn lock_commands(state_dir: &Path) -> Result<CommandLock> {
    let path = start_lock_path(state_dir);
    let f = open_lock(&path).map_err(|e| Error::io(format!("open lock {}", path.display()), &e))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map(CommandLock)
        .map_err(|(_, e)| Error::errno(format!("lock {}", path.display()), e))
}

/// Whether a supervisor holds its lock right now.
pub fn supervisor_alive(state_dir: &Path) -> Result<bool> {
    let path = lock_path(state_dir);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("open lock {}", path.display()), &e)),
    };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(Error::errno(format!("test lock {}", path.display()), e)),
    }
}

/// Blocks until the supervisor has exited (its lock is released). No polling: flock sleeps in the kernel.
pub fn wait_supervisor_gone(state_dir: &Path) -> Result<()> {
    let path = lock_path(state_dir);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("open lock {}", path.display()), &e)),
    };
    Flock::lock(f, FlockArg::LockShared)
        .map(drop)
        .map_err(|(_, e)| Error::errno(format!("wait on lock {}", path.display()), e))
}

/// A process and the start time that proves it is still the same one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// The PID.
    pub pid: i32,
    /// /proc/PID/stat field 22.
    pub starttime: u64,
}

impl Identity {
    /// The identity of a live process.
    pub fn of(pid: Pid) -> Option<Identity> {
        process::starttime(pid).map(|starttime| Identity {
            pid: pid.as_raw(),
            starttime,
        })
    }

    /// Whether this exact process (not a successor with the same PID) still runs.
    #[cfg(test)]
    pub fn alive(&self) -> bool {
        process::starttime(Pid::from_raw(self.pid)) == Some(self.starttime)
    }
}

/// What the supervisor last recorded, readable after it is gone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateFile {
    /// The supervisor.
    pub supervisor: Option<Identity>,
    /// The service leader (also its process group).
    pub service: Option<Identity>,
    /// The session the service's group lives in (the supervisor's), part of its identity.
    #[serde(default)]
    pub session: Option<i32>,
    /// The service's cgroup, when tracked by one.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The state name, e.g. "ready", "failed".
    pub state: String,
    /// Why the service last ended.
    pub last_exit: Option<String>,
    /// Why the supervisor gave up, if it did.
    pub failure: Option<String>,
}

/// Records state for post-mortem `status` and orphan clean-up.
pub fn write_state(state_dir: &Path, state: &StateFile) {
    let path = state_path(state_dir);
    let body = serde_json::to_vec_pretty(state).unwrap_or_default();
    if let Err(e) = crate::files::write_live(&path, &body, 0o644) {
        tracing::warn!("unable to write state file {}: {e}", path.display());
    }
}

/// A staged PID file: its temporary name and the name it is renamed to, as C strings made
/// at start, so that readiness copies and parses no path (benches/PROFILE-ready.md).
struct Staged {
    tmp: std::ffi::CString,
    name: std::ffi::CString,
}

/// What putting the PID file in place leaves to free: dropped by the caller once `start`
/// has its answer (a free after a long sleep touches malloc's pages).
pub struct Spent {
    _names: Option<Staged>,
}

/// The supervisor's own records, kept ready so that writing them after a long sleep touches
/// little: the directories of the PID file and the state file held open (no walk from `/` at
/// each write), the supervisor's identity read once, and the PID file's content already in
/// place under a temporary name, so that readiness is one rename.
///
/// Everything falls back to the path-based writes above when a directory could not be opened
/// at start (the same error then comes at the same moment as before), or when a handoff
/// brought a config that names other paths.
pub struct Records {
    pid: Option<(PathBuf, crate::files::Dir)>,
    state: Option<(PathBuf, crate::files::Dir)>,
    /// The PID file's content under a temporary name in its directory, until readiness.
    staged: Option<Staged>,
    /// This supervisor and its session: neither changes for its life (nor across a reexec).
    me: Option<Identity>,
    session: Option<i32>,
    /// The state file's next content goes here: a new, empty file created ahead in the state
    /// directory (see [`Records::stage_state`]), taken by the next write.
    spare: std::cell::Cell<Option<(std::ffi::OsString, File)>>,
}

impl Records {
    /// Opens the directories and stages the PID file with this process's PID when `stage`
    /// (a supervisor not yet ready once); a failure here only means the slower path later.
    pub fn open(spec: &Spec, stage: bool) -> Records {
        let dir_of = |path: &Path| {
            let (dir, _) = crate::files::split(path).ok()?;
            Some((path.to_path_buf(), dir))
        };
        let me = nix::unistd::getpid();
        let mut records = Records {
            pid: dir_of(&spec.pidfile),
            state: dir_of(&state_path(&spec.state_dir)),
            staged: None,
            me: Identity::of(me),
            session: nix::unistd::getsid(None).ok().map(Pid::as_raw),
            spare: std::cell::Cell::new(None),
        };
        // A supervisor killed between creating a state file and renaming it (or holding a
        // spare, see `stage_state`) left it behind; this one holds the service's lock now.
        if let Some((path, dir)) = records.state.as_ref() {
            if let Some(name) = path.file_name() {
                if let Err(e) = dir.remove_stale_temporaries(name) {
                    tracing::warn!("unable to clean up {}: {e}", dir.path().display());
                }
            }
        }
        if stage {
            records.staged = records.pid.as_ref().and_then(|(path, dir)| {
                // A supervisor killed during its start-up (SIGKILL, a power cut of the
                // container) left its staged file; this one holds the service's lock now.
                if let Err(e) = dir.remove_stale_temporaries(path.file_name()?.as_ref()) {
                    tracing::warn!("unable to clean up {}: {e}", dir.path().display());
                }
                // The temporary's name holds a NUL only if the file's does: judged first.
                let name = std::ffi::CString::new(path.file_name()?.as_bytes()).ok()?;
                let (tmp, mut f) = dir.create_temporary(path.file_name()?, 0o644).ok()?;
                let staged = Staged {
                    tmp: std::ffi::CString::new(tmp.as_bytes()).ok()?,
                    name,
                };
                match std::io::Write::write_all(&mut f, format!("{me}\n").as_bytes()) {
                    Ok(()) => Some(staged),
                    Err(_) => {
                        let _ = dir.remove(&tmp);
                        None
                    }
                }
            });
        }
        records
    }

    /// This supervisor's identity and session, as the state file records them.
    pub fn me(&self) -> (Option<Identity>, Option<i32>) {
        (self.me, self.session)
    }

    /// Puts the PID file at `path` in place (holding this process's PID): the staged file
    /// renamed, else written anew.
    pub fn publish_pid(&mut self, path: &Path) -> Result<Spent> {
        let here = self.stages(path);
        self.publish(here, path)
    }

    /// As [`Records::publish_pid`] for a `path` that [`Records::stages`] was asked about
    /// earlier (nothing has changed either since): no comparison of paths after a long sleep,
    /// nor a look at `path` (a `&PathBuf` is not read) unless the staged file cannot be used.
    pub fn publish_staged(&mut self, path: &(impl AsRef<Path> + ?Sized)) -> Result<Spent> {
        self.publish(true, path)
    }

    /// Whether the staged file is the PID file at `path` (the very path it was staged for,
    /// byte for byte: no parse of the path's components).
    pub fn stages(&self, path: &Path) -> bool {
        self.staged.is_some()
            && self
                .pid
                .as_ref()
                .is_some_and(|(at, _)| at.as_os_str() == path.as_os_str())
    }

    fn publish(&mut self, here: bool, path: &(impl AsRef<Path> + ?Sized)) -> Result<Spent> {
        if let (Some(staged), Some((_, dir))) = (self.staged.take(), self.pid.as_ref()) {
            if here && dir.rename_c(&staged.tmp, &staged.name).is_ok() {
                return Ok(Spent {
                    _names: Some(staged),
                });
            }
            let _ = dir.remove(OsStr::from_bytes(staged.tmp.as_bytes()));
        }
        write(path.as_ref(), nix::unistd::getpid()).map(|()| Spent { _names: None })
    }

    /// Removes the staged PID file if readiness never came.
    pub fn unstage(&mut self) {
        if let (Some(staged), Some((_, dir))) = (self.staged.take(), self.pid.as_ref()) {
            let _ = dir.remove(OsStr::from_bytes(staged.tmp.as_bytes()));
        }
    }

    /// Records `state` in the state file of `spec`: into the spare when one is staged (no
    /// file to create), then put in place whole ([`crate::files::Dir::replace`]).
    pub fn write_state(&self, spec: &Spec, state: &StateFile) {
        let path = state_path(&spec.state_dir);
        let held = self.state.as_ref().filter(|(at, _)| *at == path);
        let (Some((_, dir)), Some(name)) = (held, path.file_name()) else {
            return write_state(&spec.state_dir, state);
        };
        let body = serde_json::to_vec_pretty(state).unwrap_or_default();
        let written = match self.spare.take() {
            Some((tmp, f)) => dir.fill_live(&tmp, f, &body, name),
            None => dir.write_live(name, &body, 0o644),
        };
        if let Err(e) = written {
            tracing::warn!("unable to write state file {}: {e}", path.display());
        }
    }

    /// Creates the state file's spare if there is none: done while the supervisor is awake
    /// anyway (before it sleeps), so that the next write after a long sleep, the last one of a
    /// stop above all, creates no file. Creating a file after an idle wait (an inode, a
    /// directory entry, the journal) took 0.3-1.6 ms on ext4 (benches/PROFILE-stop.md). A
    /// failure only means the next write creates its file itself.
    pub fn stage_state(&self, spec: &Spec) {
        let Some((at, dir)) = self.state.as_ref() else {
            return;
        };
        let spare = self.spare.take();
        if spare.is_some() || *at != state_path(&spec.state_dir) {
            self.spare.set(spare);
            return;
        }
        let Some(name) = at.file_name() else {
            return;
        };
        if let Ok(spare) = dir.create_temporary(name, 0o644) {
            self.spare.set(Some(spare));
        }
    }

    /// Removes the state file's spare, unused: the supervisor is leaving (or re-executing).
    pub fn drop_spare(&self) {
        if let (Some((tmp, _)), Some((_, dir))) = (self.spare.take(), self.state.as_ref()) {
            let _ = dir.remove(&tmp);
        }
    }
}

/// Reads the state file; missing or unreadable reads as empty.
pub fn read_state(state_dir: &Path) -> StateFile {
    std::fs::read(state_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_round_trip_and_garbage() {
        let dir = std::env::temp_dir().join(format!("baton-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let p = dir.join("x.pid");
        assert_eq!(read(&p).ok().flatten(), None);
        write(&p, Pid::from_raw(4242)).expect("write");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "4242\n");
        assert_eq!(read(&p).ok().flatten(), Some(Pid::from_raw(4242)));
        std::fs::write(&p, "garbage\n").expect("write");
        assert!(read(&p).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn identity_tells_reuse() {
        let me = Identity::of(nix::unistd::getpid()).expect("self");
        assert!(me.alive());
        let reused = Identity {
            starttime: me.starttime + 1,
            ..me
        };
        assert!(!reused.alive());
    }
}
