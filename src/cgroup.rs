//! The service's own cgroup v2: where it goes, spawning into it, its members, its emptiness, its end.
//!
//! A cgroup is the one record of "this process descends from the service" that no
//! double fork, `setsid` or PID reuse can fool: a process enters it only by being
//! forked inside it (or by root moving it there), and leaves it only by dying.

use crate::sys;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The service's cgroup, with the descriptors the supervisor keeps open on it.
pub struct Cgroup {
    path: PathBuf,
    /// The directory itself: what `clone3(CLONE_INTO_CGROUP)` creates the service in.
    dir: OwnedFd,
    /// `cgroup.procs`, which a child writes itself into where clone3 cannot be used.
    procs: OwnedFd,
    /// `cgroup.events`: POLLPRI when `populated` flips, so emptiness is an event, not a poll.
    events: OwnedFd,
}

impl Cgroup {
    /// Creates the cgroup for the service whose state lives in `state_dir`.
    ///
    /// `Ok(None)` when cgroup v2 cannot be had here (no cgroup2 mount, not root, a
    /// systemd cgroup that was not delegated to us); the caller falls back to the subreaper.
    /// A populated cgroup of that name is never taken over (nor killed): what is in it
    /// cannot be proven ours, so the next free name is used.
    pub fn create(name: &str, state_dir: &Path) -> std::io::Result<Option<Cgroup>> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(None);
        }
        let Some(base) = base_dir() else {
            return Ok(None);
        };
        let leaf = leaf_name(name, state_dir)?;
        for n in 0..16 {
            let path = match n {
                0 => base.join(&leaf),
                n => base.join(format!("{leaf}.{n}")),
            };
            match Self::unused(path)? {
                Ok(cg) => return Ok(Some(cg)),
                Err(path) => tracing::warn!(
                    "{} still holds processes (of a supervisor that died?); not using it",
                    path.display()
                ),
            }
        }
        Err(std::io::Error::other(format!(
            "every cgroup named {leaf}[.N] in {} holds processes",
            base.display()
        )))
    }

    /// The cgroup at `path`, made if missing, when nothing is in it; Err(path) when something is.
    fn unused(path: PathBuf) -> std::io::Result<Result<Cgroup, PathBuf>> {
        match std::fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let cg = Self::open(path)?;
        Ok(if cg.populated() { Err(cg.path) } else { Ok(cg) })
    }

    /// The cgroup a previous image of this supervisor made (`baton reexec`), service and all.
    pub fn reopen(path: &Path) -> std::io::Result<Cgroup> {
        Self::open(path.to_path_buf())
    }

    fn open(path: PathBuf) -> std::io::Result<Cgroup> {
        let file = |name: &str, write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(path.join(name))
                .map(OwnedFd::from)
        };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map(OwnedFd::from)?;
        let procs = file("cgroup.procs", true)?;
        let events = file("cgroup.events", false)?;
        Ok(Cgroup {
            path,
            dir,
            procs,
            events,
        })
    }

    /// Where it is, e.g. `/sys/fs/cgroup/unified/baton/web.1a2b3c4d`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What spawning into it takes: the directory for clone3, `cgroup.procs` for a fork.
    pub fn spawn_into(&self) -> sys::SpawnCgroup {
        use std::os::fd::AsRawFd;
        sys::SpawnCgroup {
            dir: self.dir.as_raw_fd(),
            procs: self.procs.as_raw_fd(),
        }
    }

    /// The descriptor to poll with POLLPRI; reading `populated()` re-arms it.
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Whether any process is left in it (and re-arms the POLLPRI notification).
    pub fn populated(&self) -> bool {
        let mut buf = [0u8; 256];
        let n = match nix::sys::uio::pread(&self.events, &mut buf, 0) {
            Ok(n) => n,
            // Unreadable: say "populated", so nobody concludes the service is gone.
            Err(e) => {
                tracing::warn!("unable to read {}/cgroup.events: {e}", self.path.display());
                return true;
            }
        };
        parse_populated(&String::from_utf8_lossy(&buf[..n])).unwrap_or(true)
    }

    /// Its members now.
    pub fn members(&self) -> Vec<Pid> {
        members(&self.path)
    }

    /// Sends `sig` to every member; SIGKILL goes through `cgroup.kill`, which also
    /// catches a process forking at that very moment.
    pub fn signal(&self, sig: Signal) -> usize {
        signal(&self.path, sig)
    }

    /// Removes the cgroup once nothing is left in it (a non-empty one stays, and says so).
    pub fn remove(self) {
        let Cgroup { path, .. } = self;
        if let Err(e) = remove_tree(&path) {
            tracing::warn!("unable to remove cgroup {}: {e}", path.display());
        }
    }

    /// A cgroup of its own, below this one, for one instance of the service: stopping that
    /// instance (the old one after a deploy) takes its whole tree, however far a process
    /// strayed from its group, and nothing of the other instance's.
    pub fn instance(&self) -> std::io::Result<Leaf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        for _ in 0..16 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            // One a previous image of this supervisor made, still in use, is not ours to reuse.
            if let Ok(cg) = Self::unused(self.path.join(format!("instance-{n}")))? {
                return Ok(Leaf(Some(cg)));
            }
        }
        Err(std::io::Error::other(format!(
            "every instance cgroup tried under {} holds processes",
            self.path.display()
        )))
    }
}

/// One instance's cgroup below the service's; removed when the instance is forgotten.
pub struct Leaf(Option<Cgroup>);

impl Leaf {
    /// The leaf a previous image of this supervisor made for the serving instance (`baton reexec`).
    pub fn reopen(path: &Path) -> std::io::Result<Leaf> {
        Cgroup::open(path.to_path_buf()).map(|cg| Leaf(Some(cg)))
    }

    fn cg(&self) -> Option<&Cgroup> {
        self.0.as_ref()
    }

    /// Where it is.
    pub fn path(&self) -> Option<&Path> {
        self.cg().map(Cgroup::path)
    }

    /// What spawning the instance into it takes.
    pub fn spawn_into(&self) -> Option<sys::SpawnCgroup> {
        self.cg().map(Cgroup::spawn_into)
    }

    /// Whether any process of the instance is left.
    pub fn populated(&self) -> bool {
        self.cg().is_some_and(Cgroup::populated)
    }

    /// Sends `sig` to every process of the instance (SIGKILL by `cgroup.kill`).
    pub fn signal(&self, sig: Signal) -> usize {
        self.cg().map_or(0, |cg| cg.signal(sig))
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            // Still populated (a process that outlived its stop): the service's own stop
            // takes it, and removes the directory then.
            let _ = std::fs::remove_dir(cg.path());
        }
    }
}

/// Removes the cgroup at `path` and the empty ones below it.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    if let Ok(dir) = std::fs::read_dir(path) {
        for e in dir.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = remove_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(path)
}

/// Members of the cgroup at `path` and of those below it, its instances' (empty if it is gone).
pub fn members(path: &Path) -> Vec<Pid> {
    let mut text = String::new();
    match std::fs::File::open(path.join("cgroup.procs")) {
        Ok(mut f) => {
            let _ = f.read_to_string(&mut text);
        }
        Err(_) => return Vec::new(),
    }
    let mut out: Vec<Pid> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .map(Pid::from_raw)
        .collect();
    if let Ok(dir) = std::fs::read_dir(path) {
        for e in dir.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(members(&e.path()));
            }
        }
    }
    out
}

/// Sends `sig` to every member of the cgroup at `path`; returns how many were signalled.
///
/// Each member is opened as a pidfd and confirmed a member *after* opening, so a PID
/// that died and was reused between the listing and the signal is never hit.
pub fn signal(path: &Path, sig: Signal) -> usize {
    let pids = members(path);
    if sig == Signal::SIGKILL && !pids.is_empty() {
        match std::fs::write(path.join("cgroup.kill"), b"1") {
            Ok(()) => return pids.len(),
            // Before Linux 5.14 there is no cgroup.kill: one by one below.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("unable to write {}/cgroup.kill: {e}", path.display()),
        }
    }
    let mut sent = 0;
    for pid in pids {
        let Ok(fd) = sys::pidfd_open(pid) else {
            continue;
        };
        if !contains(path, pid) {
            continue;
        }
        match sys::pidfd_send_signal(fd.as_fd(), sig) {
            Ok(()) => sent += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => tracing::warn!("unable to send {sig} to pid {pid}: {e}"),
        }
    }
    sent
}

/// Whether `pid` is in the cgroup at `path`, or one below it, right now.
pub fn contains(path: &Path, pid: Pid) -> bool {
    let Some(rel) = of(pid) else {
        return false;
    };
    // Component by component: `web.1` does not contain `web.10`.
    mount_point().is_some_and(|m| m.join(rel.trim_start_matches('/')).starts_with(path))
}

/// A process's cgroup v2 path, relative to the mount (the `0::` line of /proc/PID/cgroup).
fn of(pid: Pid) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_v2_line(&text).map(str::to_string)
}

fn parse_v2_line(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

fn parse_populated(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .map(|v| v.trim() != "0")
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn mount_point() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
}

fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(mount.replace("\\040", " ")))
    })
}

/// The directory service cgroups go under: our own cgroup when systemd delegated it to
/// us (`Delegate=yes`), `baton/` at the top when we run in the root cgroup (no systemd).
fn base_dir() -> Option<PathBuf> {
    let mount = mount_point()?;
    let own = of(nix::unistd::getpid())?;
    if own == "/" {
        let base = mount.join("baton");
        match std::fs::DirBuilder::new().mode(0o755).create(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::warn!("unable to create {}: {e}", base.display());
                return None;
            }
        }
        return Some(base);
    }
    let dir = mount.join(own.trim_start_matches('/'));
    // A cgroup systemd did not delegate is systemd's to rearrange: stay out of it.
    let delegated = ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|x| sys::has_xattr(&dir, x));
    delegated.then_some(dir)
}

/// `NAME.HASH`: readable, and distinct for two services of one name in different state
/// directories, even where two mount namespaces show the same path (the hash covers the
/// directory's device and inode as well as its path).
fn leaf_name(name: &str, state_dir: &Path) -> std::io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(state_dir)?;
    let mut key = state_dir.as_os_str().as_bytes().to_vec();
    key.extend_from_slice(&meta.dev().to_le_bytes());
    key.extend_from_slice(&meta.ino().to_le_bytes());
    Ok(format!("{name}.{:016x}", fnv1a(&key)))
}

/// FNV-1a, 64 bits: stable across versions and builds, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_host() {
        let text = "22 1 0:21 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
                    30 22 0:26 / /sys/fs/cgroup/unified rw,relatime shared:7 - cgroup2 cgroup2 rw\n\
                    31 22 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_mountinfo("22 1 0:21 / /x rw - tmpfs t rw\n"), None);
    }

    #[test]
    fn reads_populated_and_the_v2_line() {
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
        assert_eq!(
            parse_v2_line("9:name=systemd:/\n0::/system.slice/web.service\n"),
            Some("/system.slice/web.service")
        );
    }

    #[test]
    fn leaf_names_differ_by_state_dir() {
        let tmp = std::env::temp_dir();
        let a = leaf_name("web", &tmp).expect("tmp");
        let b = leaf_name("web", Path::new("/")).expect("/");
        assert!(a.starts_with("web.") && b.starts_with("web."));
        assert_ne!(a, b);
        assert_eq!(a, leaf_name("web", &tmp).expect("tmp"));
        assert!(leaf_name("web", Path::new("/nonexistent/baton")).is_err());
    }
}
