//! The few places baton needs `unsafe`: the pre-exec hook, adopting an inherited fd, pidfds, xattrs.
//!
//! Everything else uses nix's safe wrappers. Each block says why it is sound.

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The identity a child drops to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id (setuid).
    pub uid: Uid,
    /// Group id (setgid).
    pub gid: Gid,
    /// Supplementary groups (setgroups).
    pub groups: Vec<Gid>,
}

/// What the child must do to itself between fork and exec.
pub struct ChildSetup {
    /// Identity to drop to (setgroups, setgid, setuid), if any.
    pub account: Option<Credentials>,
    /// umask to apply.
    pub umask: Option<u32>,
    /// The supervisor's PID: if the child is orphaned before exec it must not run.
    pub parent: Pid,
    /// Make the child a session leader (for the detached supervisor) instead of a group leader.
    pub new_session: bool,
    /// Signal the child gets if the supervisor dies.
    pub parent_death_signal: Option<Signal>,
    /// The one inherited descriptor above stderr that survives exec (the readiness pipe).
    pub keep_fd: Option<RawFd>,
    /// A listening socket to hand over: (the supervisor's descriptor, the number the child gets).
    pub listen: Option<(RawFd, RawFd)>,
    /// An open `cgroup.procs` the child writes itself into before anything else, so that
    /// nothing it ever forks is outside the service's cgroup.
    pub cgroup_procs: Option<RawFd>,
}

/// Installs the pre-exec hook that applies `setup` in the child.
pub fn install(cmd: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        account,
        umask,
        parent,
        new_session,
        parent_death_signal,
        keep_fd,
        listen,
        cgroup_procs,
    } = setup;
    let hook = move || -> std::io::Result<()> {
        if let Some(fd) = cgroup_procs {
            // "0" means "the writing process"; done first, while still root.
            // SAFETY: the buffer is a static byte string and fd an open descriptor the
            // parent keeps open across the fork; write(2) is async-signal-safe.
            let r = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // The supervisor blocks the signals it reads from its signalfd; a child
        // inheriting that mask would never see SIGTERM.
        nix::sys::signal::SigSet::all().thread_unblock()?;
        // Whatever the caller left open (a pipe its reader waits to see closed) must not
        // live on in a daemon. Marked close-on-exec rather than closed, so std's own
        // exec-error pipe keeps working.
        match keep_fd {
            Some(k) => {
                cloexec_from(3, k as u32 - 1)?;
                cloexec_from(k as u32 + 1, u32::MAX)?;
            }
            None => cloexec_from(3, u32::MAX)?,
        }
        if let Some((from, to)) = listen {
            if from == to {
                // dup2 onto itself keeps the close-on-exec flag set just above.
                nix::fcntl::fcntl(
                    to,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
            } else {
                // The copy dup2 makes is not close-on-exec: it is the one the service inherits.
                nix::unistd::dup2(from, to)?;
            }
        }
        if new_session {
            nix::unistd::setsid()?;
        }
        if let Some(mask) = umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
                mask as libc::mode_t,
            ));
        }
        if let Some(a) = &account {
            // Order matters: groups and gid need the privilege that setuid gives up.
            nix::unistd::setgroups(&a.groups)?;
            nix::unistd::setgid(a.gid)?;
            nix::unistd::setuid(a.uid)?;
            nix::sys::prctl::set_no_new_privs()?;
        }
        if let Some(sig) = parent_death_signal {
            // Set after setuid: changing credentials clears the parent-death signal.
            nix::sys::prctl::set_pdeathsig(sig)?;
            // The supervisor may have died before the line above; then nobody would ever stop us.
            if nix::unistd::getppid() != parent {
                // ESRCH: "no such process", our parent.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only makes
    // async-signal-safe system calls (write, sigprocmask, close_range, dup2, fcntl, setsid, umask, setgroups, setgid, setuid,
    // prctl, getppid) on data moved in beforehand; it allocates nothing (every
    // error is an io::Error built from an errno).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Marks descriptors `lo..=hi` close-on-exec (Linux >= 5.11); an empty range is a no-op.
fn cloexec_from(lo: u32, hi: u32) -> std::io::Result<()> {
    if lo > hi {
        return Ok(());
    }
    // SAFETY: close_range only changes flags of this process's descriptors; it
    // takes plain integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lo as libc::c_uint,
            hi as libc::c_uint,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a file descriptor inherited from the parent process.
///
/// Returns `None` unless `fd` is open; the caller must be the only owner.
pub fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: the fd is open (checked above) and was passed to this process
    // by `baton start` for it alone; nothing else in this process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pollable handle that becomes readable when `pid` exits (Linux >= 5.3).
pub fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` to the process `pidfd` refers to: the very process that was opened, never
/// a successor that reuses its PID (Linux >= 5.1).
pub fn pidfd_send_signal(pidfd: std::os::fd::BorrowedFd<'_>, sig: Signal) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal takes an fd, a signal number, a null siginfo (the kernel
    // fills in a kill(2)-like one) and flags; no memory of ours is read or written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the directory `path` carries the extended attribute `name` (e.g. systemd's
/// `trusted.delegate` on a cgroup it delegated).
pub fn has_xattr(path: &std::path::Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and live across the call; a null buffer of
    // size 0 asks only for the value's length, so the kernel writes nothing.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    r >= 0
}

/// Hands memory the idle loop does not need back to the kernel.
///
/// Start-up (argument parsing, config parsing, spawning) touches most of the
/// binary, and those mappings would otherwise stay resident for the life of the
/// supervisor. Read-only segments of the executable and its libraries are
/// file-backed and never written, so dropping their mappings loses nothing: the
/// page cache keeps the files, and code the loop runs again comes back as a minor
/// fault. Freed heap goes back with malloc_trim. Called only once the loop has
/// been quiet for a moment (each wake after it refaults what it runs).
pub fn shed_idle_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
    // Last, so that as little of our code as possible runs (and is mapped back) after it.
    // SAFETY: dl_iterate_phdr calls `drop_readonly_segments` with pointers the
    // loader guarantees valid for the duration of each call; we pass no data.
    unsafe {
        libc::dl_iterate_phdr(Some(drop_readonly_segments), std::ptr::null_mut());
    }
}

/// dl_iterate_phdr callback: MADV_DONTNEED on each loaded object's non-writable PT_LOAD segments.
unsafe extern "C" fn drop_readonly_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid info for each loaded object in turn.
    let info = unsafe { &*info };
    let name: &[u8] = if info.dlpi_name.is_null() {
        b""
    } else {
        // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
        unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    // The vDSO is a special kernel mapping, not a file: leave it alone. The libraries'
    // text is shared with other processes (no USS), but dropping it keeps RSS small.
    if name.starts_with(b"linux-vdso") {
        return 0;
    }
    let page = 4096usize;
    for i in 0..usize::from(info.dlpi_phnum) {
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 {
            continue;
        }
        // Whole pages strictly inside the segment: a page shared with writable
        // (relocated) data must never be dropped.
        let start = (info.dlpi_addr as usize + ph.p_vaddr as usize).next_multiple_of(page);
        let end =
            (info.dlpi_addr as usize + ph.p_vaddr as usize + ph.p_memsz as usize) / page * page;
        if end > start {
            // SAFETY: [start, end) lies inside a read-only file-backed mapping of our
            // executable that nothing writes; MADV_DONTNEED only drops its page-table
            // entries, and the next access refaults the same bytes from the file.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    // 0: go on with the next object (the libraries are read-only file mappings too).
    0
}

/// `openat(2)` relative to `dir` (or the working directory), returning an owned descriptor.
///
/// The one place a raw descriptor from nix becomes owned; `files.rs` builds every safe
/// open on it. `O_CLOEXEC` is always added: nothing baton opens is meant for its children.
pub fn openat(
    dir: Option<std::os::fd::BorrowedFd<'_>>,
    name: &std::path::Path,
    flags: nix::fcntl::OFlag,
    mode: nix::sys::stat::Mode,
) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let fd = nix::fcntl::openat(
        dir.map(|d| d.as_raw_fd()),
        name,
        flags | nix::fcntl::OFlag::O_CLOEXEC,
        mode,
    )?;
    // SAFETY: openat just returned this descriptor; nothing else in the process knows it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor this process's previous image left open across
/// `execve` (`baton reexec`), marking it close-on-exec again so no child inherits it.
pub fn inherited(fd: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the descriptor is open (F_SETFD succeeded) and is named once, in the reexec
    // record the previous image wrote for this one: nothing else in this image owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
