//! The few places baton needs `unsafe`: spawning the service (clone3), the pre-exec hook, adopting an inherited fd, pidfds, xattrs, splice.
//!
//! Everything else uses nix's safe wrappers. Each block says why it is sound.

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// What a child started by `Command` (the detached supervisor, an exec probe) must do to
/// itself between fork and exec; the service itself is started by [`spawn`].
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
    } = setup;
    let hook = move || -> std::io::Result<()> {
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
    // async-signal-safe system calls (sigprocmask, close_range, setsid, umask, setgroups, setgid, setuid,
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

/// Moves up to `len` bytes from the pipe `from` to `to` inside the kernel: `splice(2)`.
/// Into a file (`offset` given, advanced by what moved) that is one copy, where read +
/// write make two; into another pipe (no offset) it moves page references, no copy.
///
/// Never blocks on a pipe (`EAGAIN` when `from` is empty or `to` full); `Ok(0)` when every
/// writer has closed `from`. A file must not be open with `O_APPEND` (`EINVAL`).
pub fn splice(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    offset: Option<&mut u64>,
    len: usize,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut off: libc::loff_t = match offset.as_deref() {
        Some(&o) => libc::loff_t::try_from(o).map_err(std::io::Error::other)?,
        None => 0,
    };
    let off_ptr: *mut libc::loff_t = if offset.is_some() {
        &mut off
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: splice takes two descriptors we borrow for the call, a null input offset (a
    // pipe has none) and either null or a pointer to `off`, a live local the kernel reads
    // and updates; no other memory of ours is touched.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            off_ptr,
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if let Some(o) = offset {
        *o = off as u64;
    }
    Ok(n as usize)
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

/// Ends the process with `code` once stdout is flushed, without libc's exit(3): its exit
/// handlers and the loader's destructors do nothing baton needs, and a client that has
/// just woken from a long wait (`start` for readiness, `stop` for the supervisor's exit)
/// pays for every page they touch (benches/PROFILE-ready.md).
pub fn exit(code: i32) -> ! {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: _exit(2) only ends the process. stdout, the one buffer baton keeps across
    // calls, was flushed above (stderr is unbuffered); every other writer was dropped
    // before `main` got its exit code.
    unsafe { libc::_exit(code) }
}

/// What std's start-up does that baton relies on (main.rs says why it is skipped): the
/// standard descriptors open, so that no file baton opens becomes a process's stdout,
/// and SIGPIPE ignored, so that a peer gone from a pipe or socket is an EPIPE error
/// rather than the supervisor's death. A stack overflow is then a plain SIGSEGV,
/// without std's one-line message.
pub fn start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: a poll of three stack entries with no timeout; only revents is written.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    for p in fds {
        // POLLNVAL: not open. If poll itself failed, check each with fcntl, as std does.
        let closed = if polled < 0 {
            nix::fcntl::fcntl(p.fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF)
        } else {
            p.revents & libc::POLLNVAL != 0
        };
        // SAFETY: a NUL-terminated path; the lowest free descriptor is this closed one.
        if closed && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } < 0 {
            // As std does: without its standard descriptors, baton cannot run safely.
            std::process::abort();
        }
    }
    // SAFETY: SIG_IGN for SIGPIPE replaces no handler of ours; every child gets its
    // signals back to SIG_DFL before exec (`child_setup`).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// A run of whole pages, `[start, end)`.
type Span = (usize, usize);

const PAGE: usize = 4096;

/// Hands memory the idle loop does not need back to the kernel, then sleeps in ppoll(2)
/// until one of `fds` is ready (no timeout: the loop sheds only when nothing is due).
///
/// Start-up (argument parsing, config parsing, spawning) touches most of the binary, and
/// those mappings would otherwise stay resident for the life of the supervisor.
/// Read-only segments of the executable and its libraries are file-backed and never
/// written, so dropping their mappings loses nothing: the page cache keeps the files,
/// and code that runs again comes back as a minor fault. Freed heap goes back with
/// malloc_trim. Called only once the loop has been quiet for a moment.
///
/// The pages of the code that runs after the drop (the few instructions up to the
/// ppoll(2) syscall) are kept: a fault there would map back up to 64 KB around it
/// (the kernel's fault-around), and the executable's share of that was 200-260 KB
/// of private memory for the supervisor's whole idle life. With link/hot-order.txt
/// (build.rs), `drop_and_poll` opens the text and the wake paths follow it, so these two
/// pages also hold the start of every wake. Keeping more of the wake paths was measured
/// and not taken (benches/PROFILE-layout.md): they span 25-36 pages in three 64 KB
/// fault-around windows, and fewer kept pages than a window spares no fault.
///
/// What it dropped stays in `last` until the next shed frees it, warm: freed on return, it
/// would be the first thing a woken supervisor does (malloc's pages, benches/PROFILE-stop.md).
pub fn shed_and_poll(fds: &mut [libc::pollfd], last: &mut Shed) -> nix::Result<libc::c_int> {
    last.0 = Vec::new();
    last.0 = spans_keeping(
        drop_and_poll as *const () as usize,
        libc::ppoll as *const (),
    );
    drop_and_poll(&last.0, fds)
}

/// What a shed drops: all but the code that runs after the drop, the pages of the sleep
/// `sleep` and, without [`raw`], libc's `madvise` and the libc wrapper `wait` it calls.
fn spans_keeping(sleep: usize, wait: *const ()) -> Vec<Span> {
    // On the stack, not a Vec: freed as the poll returns, it would be the first thing a
    // woken supervisor does. With raw calls the libc wrappers never run after the drop.
    let keep = [
        code_pages(sleep),
        code_pages(libc::madvise as *const () as usize),
        code_pages(wait as usize),
    ];
    spans_to_shed(if RAW { &keep[..1] } else { &keep })
}

/// The spans the last [`shed_and_poll`] dropped, kept by its caller.
#[derive(Default)]
pub struct Shed(Vec<Span>);

/// The read-only segments to drop, all but the code pages in `keep` (what runs after the
/// drop); first gives the heap's free pages back.
fn spans_to_shed(keep: &[Span]) -> Vec<Span> {
    let spans = without(&readonly_segments(), keep);
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
    spans
}

/// `start`'s wait for its supervisor's report when a "ready" ends the process: sheds as
/// [`shed_and_poll`] does, sleeps until `fd` is readable, reads once into `got`, and if
/// that is exactly `expected` ("ready PID\n"), writes `line` to stdout and ends the
/// process with 0 right there. Anything else (a failure's report, a short read, an
/// error) returns the number of bytes read into `got` (0 for none) for the caller to
/// read on as before.
///
/// Why from right there: the woken `start` is what the caller waits for, and after its
/// long sleep every page it touches is paid for (benches/PROFILE-ready.md). Returning
/// through the report's parsing, `println!`'s machinery, the lock's release and main's
/// exit ran 49 pages of code, heap, stack and data before its first write; here it runs
/// this one function and three libc wrappers, whose pages the shed keeps. Nothing is
/// skipped that the exit does not do anyway: stdout is flushed before the sleep (the
/// caller's job), the lock goes with the descriptor at exit, the rest is memory.
pub fn shed_and_await_ready(
    fd: BorrowedFd<'_>,
    expected: &[u8],
    line: &[u8],
    got: &mut [u8],
) -> usize {
    let keep = [
        poll_read_and_finish as *const (),
        libc::madvise as *const (),
        libc::ppoll as *const (),
        libc::read as *const (),
        libc::write as *const (),
        libc::_exit as *const (),
    ]
    .map(|f| code_pages(f as usize));
    // With raw calls the libc wrappers never run after the drop.
    let spans = spans_to_shed(if RAW { &keep[..1] } else { &keep });
    // Both on the stack when they fit (they do but for a very long name): the woken
    // process then reads no heap page.
    let mut room = [0u8; 256];
    let (e, l) = (expected.len(), line.len());
    let fits = e + l <= room.len();
    if fits {
        room[..e].copy_from_slice(expected);
        room[e..e + l].copy_from_slice(line);
    }
    let (expected, line) = if fits {
        (&room[..e], &room[e..e + l])
    } else {
        (expected, line)
    };
    poll_read_and_finish(&spans, fd.as_raw_fd(), expected, line, got)
}

/// The part of [`shed_and_await_ready`] that runs after the first madvise: system calls
/// ([`raw`]) and plain loops only (no slice comparison, no iterator: each could be a call
/// into code the shed dropped).
#[inline(never)]
fn poll_read_and_finish(
    spans: &[Span],
    fd: RawFd,
    expected: &[u8],
    line: &[u8],
    got: &mut [u8],
) -> usize {
    drop_spans(spans);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on our stack; null timeout and sigmask: block until an event.
    // EINTR and errors fall through to the read, which blocks or reports.
    unsafe {
        raw::ppoll(&mut pfd, 1, std::ptr::null());
    }
    let n = loop {
        // SAFETY: `got` is a live, exclusive buffer of got.len() bytes.
        let r = unsafe { raw::read(fd, got.as_mut_ptr(), got.len()) };
        if r >= 0 {
            break r as usize;
        }
        if r != -(libc::EINTR as isize) {
            return 0;
        }
    };
    if n != expected.len() {
        return n;
    }
    let mut i = 0;
    while i < n {
        if got[i] != expected[i] {
            return n;
        }
        i += 1;
    }
    let mut done = 0;
    while done < line.len() {
        // SAFETY: the unwritten tail of `line`, live for the call.
        let r = unsafe { raw::write(1, line[done..].as_ptr(), line.len() - done) };
        if r > 0 {
            done += r as usize;
        } else if r == -(libc::EINTR as isize) {
            continue;
        } else if done == 0 {
            // Nothing out: the caller prints the usual way, and fails the usual way.
            return n;
        } else {
            break;
        }
    }
    // stdout was flushed before the wait and nothing has been buffered since (see
    // shed_and_await_ready).
    raw::exit(0)
}

/// The pages around a function's entry that its code (a few hundred bytes) may span.
fn code_pages(entry: usize) -> Span {
    let start = entry / PAGE * PAGE;
    (start, start + 2 * PAGE)
}

/// Marks the start of the ordered hot text (first in link/hot-order.txt, then
/// `drop_and_poll` and the supervisor's wake paths): tests/it/link.rs and
/// scripts/hot-order find the ordered region by the two markers' unmangled names, which,
/// unlike the hashed names of the rest, are the same in every build. Never called.
#[no_mangle]
#[inline(never)]
pub extern "C" fn baton_hot_begin() -> usize {
    // Bodies that differ, so that no pass merges the two markers into one address.
    0x6801
}

/// Marks the end of the supervisor's wake paths in the ordered text (listed after them
/// in link/hot-order.txt). Never called.
#[no_mangle]
#[inline(never)]
pub extern "C" fn baton_hot_end() -> usize {
    0x6802
}

/// `spans` with every page of `holes` taken out.
fn without(spans: &[Span], holes: &[Span]) -> Vec<Span> {
    let mut out = spans.to_vec();
    for &(hole_start, hole_end) in holes {
        out = out
            .into_iter()
            .flat_map(|(start, end)| [(start, end.min(hole_start)), (start.max(hole_end), end)])
            .filter(|(start, end)| start < end)
            .collect();
    }
    out
}

/// Drops the page-table entries of `spans`. Always inlined: it runs after its own page
/// may have been dropped, so it must be part of the kept function that calls it.
#[inline(always)]
fn drop_spans(spans: &[Span]) {
    // A plain index loop: a slice iterator would be a call into core in a debug build.
    let mut i = 0;
    while i < spans.len() {
        let (start, end) = spans[i];
        // SAFETY: [start, end) lies inside a read-only file-backed mapping (a PT_LOAD
        // segment without PF_W, whole pages only) that nothing writes; MADV_DONTNEED
        // only drops its page-table entries, and the next access refaults the same
        // bytes from the file.
        unsafe {
            raw::madvise(start, end - start, libc::MADV_DONTNEED);
        }
        i += 1;
    }
}

/// Drops `spans` and sleeps. Kept apart (and out of line) so that what runs after the
/// first madvise is only this function (and, without [`raw`], the two libc wrappers),
/// whose pages `shed_and_poll` keeps; it reads nothing but its arguments (stack and heap).
#[inline(never)]
fn drop_and_poll(spans: &[Span], fds: &mut [libc::pollfd]) -> nix::Result<libc::c_int> {
    drop_spans(spans);
    raw_ppoll(fds, None)
}

/// A new epoll(7) instance, closed on exec: the supervisor's loop keeps its interest set
/// there from one wake to the next (src/supervisor/poll.rs).
pub fn epoll_create() -> nix::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes no pointer; on success the descriptor is new and ours.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    nix::errno::Errno::result(fd)?;
    // SAFETY: `fd` was just made by epoll_create1 and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// epoll_ctl(2) on `epfd` for descriptor number `fd`: `op` is one of `libc::EPOLL_CTL_*`,
/// `data` comes back with each of its events. A number, not a borrowed descriptor: a
/// registration is taken out (EPOLL_CTL_DEL) after its owner may have closed it, and the
/// kernel then answers EBADF or ENOENT, which is all a stale number can do here.
pub fn epoll_ctl(
    epfd: BorrowedFd<'_>,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    data: u64,
) -> nix::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` lives on our stack for the call; epoll_ctl reads it and touches no other
    // memory, and on a number that is not (or no longer) a descriptor it only fails.
    let r = unsafe { libc::epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev) };
    nix::errno::Errno::result(r).map(drop)
}

/// epoll_pwait2(2) on `epfd` into `events`, for at most `timeout` (`None`: until an
/// event): the nanosecond timeout of ppoll(2), which epoll_wait's milliseconds would round
/// up. How many events it wrote. Linux 5.11 and later (Debian 12 has 6.1); a system call
/// ([`raw`]), so no C library wrapper is needed.
pub fn epoll_wait(
    epfd: BorrowedFd<'_>,
    events: &mut [libc::epoll_event],
    timeout: Option<nix::sys::time::TimeSpec>,
) -> nix::Result<usize> {
    let ts: *const libc::timespec = match &timeout {
        Some(t) => t.as_ref(),
        None => std::ptr::null(),
    };
    raw_epoll_wait(epfd.as_raw_fd(), events, ts)
}

/// [`shed_and_poll`] for an epoll set: hands back what the idle loop does not need, then
/// sleeps in epoll_pwait2(2) on `epfd` until an event (no timeout), into `events`. The
/// pages kept are those of the code that runs after the drop: [`drop_and_epoll`] (and,
/// without [`raw`], libc's `madvise` and `syscall`).
pub fn shed_and_epoll(
    epfd: BorrowedFd<'_>,
    events: &mut [libc::epoll_event],
    last: &mut Shed,
) -> nix::Result<usize> {
    last.0 = Vec::new();
    last.0 = spans_keeping(
        drop_and_epoll as *const () as usize,
        libc::syscall as *const (),
    );
    drop_and_epoll(&last.0, epfd.as_raw_fd(), events)
}

/// Drops `spans` and sleeps in epoll_pwait2(2): as [`drop_and_poll`], only this function
/// (and, without [`raw`], the two libc wrappers) runs after the first madvise.
#[inline(never)]
fn drop_and_epoll(
    spans: &[Span],
    epfd: RawFd,
    events: &mut [libc::epoll_event],
) -> nix::Result<usize> {
    drop_spans(spans);
    raw_epoll_wait(epfd, events, std::ptr::null())
}

/// epoll_pwait2(2) without a signal mask; `ts` null (until an event) or a live timespec,
/// which the kernel only reads. Plain code: `drop_and_epoll` runs it after the drop.
#[inline(always)]
fn raw_epoll_wait(
    epfd: RawFd,
    events: &mut [libc::epoll_event],
    ts: *const libc::timespec,
) -> nix::Result<usize> {
    let max = if events.len() > i32::MAX as usize {
        i32::MAX
    } else {
        events.len() as libc::c_int
    };
    // SAFETY: `events` is a live, exclusive buffer of at least `max` entries, which the
    // kernel fills from the front; `ts` is null or valid for reading (the caller's).
    let r = unsafe { raw::epoll_pwait2(epfd, events.as_mut_ptr(), max, ts) };
    if r == -(libc::ENOSYS as isize) {
        return epoll_wait_ms(epfd, events, max, ts);
    }
    checked(r)
}

/// epoll_wait(2), for where epoll_pwait2 is missing: kernels before 5.11, a seccomp
/// filter that does not know it, valgrind 3.19 (which `scripts/hot-order` and
/// `scripts/wake-pages` run the supervisor under). The timeout in milliseconds, rounded
/// up: a deadline is never woken for early. Out of line: never on a figure's path.
#[cold]
#[inline(never)]
fn epoll_wait_ms(
    epfd: RawFd,
    events: &mut [libc::epoll_event],
    max: libc::c_int,
    ts: *const libc::timespec,
) -> nix::Result<usize> {
    // SAFETY: `ts` is null or valid for reading (raw_epoll_wait's contract).
    let ms = match unsafe { ts.as_ref() } {
        None => -1,
        Some(t) => {
            let ms = (t.tv_sec as i128) * 1000 + (t.tv_nsec as i128 + 999_999) / 1_000_000;
            ms.clamp(0, libc::c_int::MAX as i128) as libc::c_int
        }
    };
    // SAFETY: as raw_epoll_wait's call: `events` holds at least `max` entries.
    checked(unsafe { raw::epoll_wait(epfd, events.as_mut_ptr(), max, ms) })
}

/// The pages of every loaded object's read-only segments (the vDSO's aside).
fn readonly_segments() -> Vec<Span> {
    let mut segments: Vec<Span> = Vec::with_capacity(16);
    // SAFETY: dl_iterate_phdr calls `add_readonly_segments` with pointers the loader
    // guarantees valid for the duration of each call; `data` is our Vec, borrowed
    // mutably for this call only.
    unsafe {
        libc::dl_iterate_phdr(
            Some(add_readonly_segments),
            (&mut segments as *mut Vec<Span>).cast(),
        );
    }
    segments
}

/// dl_iterate_phdr callback: adds the pages of each loaded object's non-writable PT_LOAD
/// segments to the `Vec<Span>` behind `data`.
unsafe extern "C" fn add_readonly_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid info for each loaded object in turn, and `data`
    // is the Vec that readonly_segments passed, not otherwise borrowed during the call.
    let (info, segments) = unsafe { (&*info, &mut *data.cast::<Vec<Span>>()) };
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
    // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    // Each PT_LOAD's pages as mapped ([start rounded down, end rounded up)), and whether
    // it is writable.
    let loads: Vec<(Span, bool)> = headers
        .iter()
        .filter(|ph| ph.p_type == libc::PT_LOAD)
        .map(|ph| {
            let first = info.dlpi_addr as usize + ph.p_vaddr as usize;
            let span = (
                first / PAGE * PAGE,
                (first + ph.p_memsz as usize).next_multiple_of(PAGE),
            );
            (span, ph.p_flags & libc::PF_W != 0)
        })
        .collect();
    for (i, &(span, writable)) in loads.iter().enumerate() {
        if writable {
            continue;
        }
        // Only pages no other segment reaches into: a page a read-only segment shares
        // with writable (relocated) data must never be dropped.
        let others: Vec<Span> = loads
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, &(other, _))| other)
            .collect();
        segments.extend(without(&[span], &others));
    }
    // 0: go on with the next object (the libraries are read-only file mappings too).
    0
}

/// Receives one datagram from `fd` into `buf` (with `peek`, copies it and leaves it
/// queued): its length, and its sender's PID as the kernel vouches for it
/// (SCM_CREDENTIALS, on a socket with SO_PASSCRED). As nix's `recvmsg` with room for the
/// credentials alone (a descriptor passed beside them is cut off, never installed), and
/// the same ENOBUFS when the control data was cut; but that room is on the stack, where
/// nix needs a Vec: one heap page less to touch after a long sleep.
pub fn recv_with_sender(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
    peek: bool,
) -> std::io::Result<(usize, Option<Pid>)> {
    const CRED: usize = std::mem::size_of::<libc::ucred>();
    // CMSG_SPACE(sizeof(struct ucred)) on 64-bit Linux: a 16-byte header, the 12-byte
    // credentials rounded up to 16. In u64s, for the header's alignment.
    let mut space = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid one (no name, no iovec, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space) as _;
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `msg` points at `iov` (describing `buf`, live and exclusive) and at `space`,
    // both on our stack and outliving the call.
    let n = checked(unsafe { raw::recvmsg(fd.as_raw_fd(), &mut msg, flags) })?;
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    let mut sender = None;
    // SAFETY: the kernel filled `space` with msg_controllen bytes of control messages;
    // CMSG_FIRSTHDR and CMSG_NXTHDR only return headers lying whole within them (or null),
    // and the credentials are read only from a message long enough to hold them, unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SCM_CREDENTIALS
                && h.cmsg_len as usize >= libc::CMSG_LEN(CRED as u32) as usize
            {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                sender = Some(Pid::from_raw(cred.pid));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, sender))
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

/// Opens the directory at `path` (read-only, close-on-exec) only if resolving it follows no
/// symbolic link at all (openat2(2) with RESOLVE_NO_SYMLINKS): ELOOP when one is on the
/// way, ENOSYS before Linux 5.6.
pub fn open_dir_no_symlinks(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // struct open_how, as the kernel reads it (libc's is non-exhaustive: not buildable).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: openat2 reads the NUL-terminated path and `how` (its size passed with it),
    // both alive for the call, and writes nothing of ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 just returned this descriptor; nothing else in the process knows it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) })
}

/// Accepts one connection on `listener`, the new socket non-blocking and close-on-exec from
/// the start (accept4): std's accept then `set_nonblocking` is one system call more.
pub fn accept_nonblocking(
    listener: &std::os::unix::net::UnixListener,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    // SAFETY: accept4 on our listening descriptor, with no address wanted (null pointers).
    let fd = checked(unsafe {
        raw::accept4(
            listener.as_raw_fd(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept4 just returned this descriptor; nothing else in the process knows it.
    Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd as RawFd) })
}

/// Takes ownership of a descriptor this process's previous image left open across
/// `execve` (`baton reexec`; `baton`'s front handing over a sent stop), marking it
/// close-on-exec again so no child inherits it.
pub fn inherited(fd: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the descriptor is open (F_SETFD succeeded) and is named once, in the reexec
    // record or the front's BATON_STOP_SENT (taken out of the environment as it is read):
    // open since the exec, so no descriptor this image opened has its number, and nothing
    // else in this image owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A service's cgroup as spawning needs it.
#[derive(Debug, Clone, Copy)]
pub struct SpawnCgroup {
    /// The directory: `clone3(CLONE_INTO_CGROUP)` creates the child in it, with no migration.
    pub dir: RawFd,
    /// `cgroup.procs`: where a child created by plain `fork` (no clone3) writes itself before exec.
    pub procs: RawFd,
}

/// Everything the service's child does between its creation and exec, prepared beforehand
/// so that the child itself only makes system calls.
pub struct Exec {
    /// Paths to try with execve, in order: the program itself when its name has a slash,
    /// else the name in each directory of the child's PATH (execvp's search, done here
    /// because execvp reads the environment and may allocate).
    pub candidates: Vec<CString>,
    /// The arguments, `argv[0]` first.
    pub argv: Vec<CString>,
    /// The whole environment, `NAME=value` each.
    pub envp: Vec<CString>,
    /// The working directory.
    pub workdir: CString,
    /// Descriptors that become the child's 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// A listening socket to hand over: (the supervisor's descriptor, the number the child gets).
    pub listen: Option<(RawFd, RawFd)>,
    /// Identity to drop to (setgroups, setgid, setuid), if any.
    pub account: Option<Credentials>,
    /// umask to apply.
    pub umask: Option<u32>,
    /// Signal the child gets if the supervisor dies.
    pub parent_death_signal: Option<Signal>,
    /// The service's cgroup, if it has one.
    pub cgroup: Option<SpawnCgroup>,
}

/// The step of a spawn that failed; the child reports it with the errno through a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating the error pipe, in the supervisor.
    Pipe,
    /// clone3 or fork, in the supervisor.
    Clone,
    /// Writing the child into `cgroup.procs` (only without clone3).
    Cgroup,
    /// dup2 of stdin, stdout, stderr.
    Stdio,
    /// chdir to the working directory.
    Workdir,
    /// setpgid: a process group of its own.
    ProcessGroup,
    /// Resetting every signal's disposition and the mask.
    Signals,
    /// Marking inherited descriptors close-on-exec.
    Descriptors,
    /// Placing the listening socket.
    Listen,
    /// setgroups.
    Groups,
    /// setgid.
    Gid,
    /// setuid.
    Uid,
    /// PR_SET_NO_NEW_PRIVS.
    NoNewPrivs,
    /// PR_SET_PDEATHSIG.
    ParentDeathSignal,
    /// The supervisor died before the parent-death signal was armed.
    ParentGone,
    /// execve.
    Exec,
}

impl Step {
    const ALL: [Step; 16] = [
        Step::Pipe,
        Step::Clone,
        Step::Cgroup,
        Step::Stdio,
        Step::Workdir,
        Step::ProcessGroup,
        Step::Signals,
        Step::Descriptors,
        Step::Listen,
        Step::Groups,
        Step::Gid,
        Step::Uid,
        Step::NoNewPrivs,
        Step::ParentDeathSignal,
        Step::ParentGone,
        Step::Exec,
    ];

    /// What the step does, for an error message ("unable to spawn X (setuid): ...").
    pub fn name(self) -> &'static str {
        match self {
            Step::Pipe => "pipe",
            Step::Clone => "clone",
            Step::Cgroup => "write cgroup.procs",
            Step::Stdio => "dup2 stdio",
            Step::Workdir => "chdir to the working directory",
            Step::ProcessGroup => "setpgid",
            Step::Signals => "reset signals",
            Step::Descriptors => "close_range",
            Step::Listen => "hand over the listening socket",
            Step::Groups => "setgroups",
            Step::Gid => "setgid",
            Step::Uid => "setuid",
            Step::NoNewPrivs => "set no_new_privs",
            Step::ParentDeathSignal => "set the parent-death signal",
            Step::ParentGone => "check the supervisor is alive",
            Step::Exec => "execve",
        }
    }
}

/// A failed spawn: the step and its error.
#[derive(Debug)]
pub struct SpawnError {
    /// Which step failed.
    pub step: Step,
    /// The errno it failed with.
    pub err: std::io::Error,
}

impl SpawnError {
    fn new(step: Step, err: std::io::Error) -> Self {
        SpawnError { step, err }
    }
}

/// clone3's argument block (include/uapi/linux/sched.h, `CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Linux 5.7: the child starts life in the cgroup `clone_args.cgroup` names.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// Linux 5.5: every signal the parent handles is at its default in the child.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// Whether clone3 is known not to work here (an old kernel, a seccomp filter): then
/// every spawn forks, and a child with a cgroup writes itself into `cgroup.procs`.
static CLONE3_UNUSABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A test-only switch (debug builds): spawn as kernels without clone3 do, to test that path here.
const TEST_NO_CLONE3: &str = "BATON_TEST_NO_CLONE3";

/// The raw pointers the child hands to execve, built in the supervisor before the clone.
struct Prepared<'a> {
    exec: &'a Exec,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// `/bin/sh FILE ARGS...` for a file execve refuses as ENOEXEC (execvp's fallback);
    /// slot 1 is filled in by the child with the file that was refused.
    sh_argv: Vec<*const libc::c_char>,
    /// The write end of the error pipe (close-on-exec: exec closes it, which says "ok"),
    /// for a child with a copy of our memory; -1 for a `CLONE_VM` child, which reports
    /// through `failure` instead.
    report: RawFd,
    /// A `CLONE_VM` child's report, written in our (shared) memory before it exits:
    /// (index in `Step::ALL`, errno); `None` after a successful exec.
    failure: Option<(u32, i32)>,
    /// The signals to set back to default in the child: only the ignored ones when the
    /// kernel clears the handled ones (`CLONE_CLEAR_SIGHAND`), else every one.
    reset: &'static [libc::c_int],
    /// The supervisor: the child checks it is still its parent once the death signal is armed.
    parent: libc::pid_t,
    /// The account's supplementary groups, as setgroups(2) takes them.
    groups: Vec<libc::gid_t>,
}

/// Starts the service's process as `exec` says and returns its PID once it has exec'd.
///
/// With cgroup tracking the child is created inside the cgroup by `clone3(CLONE_INTO_CGROUP)`:
/// no `cgroup.procs` write, so none of the migration's cost (the cgroup threadgroup lock
/// and an RCU grace period, 5-16 ms). `CLONE_VM | CLONE_VFORK` (on x86_64) shares our
/// memory with the child until it execs, as posix_spawn does, so nothing is copied.
/// Where clone3 is refused (Linux < 5.7, seccomp), the child is forked and writes itself
/// into `cgroup.procs` first, as before.
pub fn spawn(exec: &Exec) -> Result<Pid, SpawnError> {
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let argv = ptrs(&exec.argv);
    let envp = ptrs(&exec.envp);
    let mut sh_argv: Vec<*const libc::c_char> = vec![SH.as_ptr(), std::ptr::null()];
    sh_argv.extend(argv.iter().skip(1));
    if sh_argv.len() < 3 {
        sh_argv.push(std::ptr::null());
    }
    let mut prepared = Prepared {
        exec,
        argv,
        envp,
        sh_argv,
        report: -1,
        failure: None,
        reset: &ALL_SIGNALS,
        parent: std::process::id() as libc::pid_t,
        groups: exec
            .account
            .as_ref()
            .map(|a| a.groups.iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
    };
    let (pid, failure) = match start_child(&mut prepared)? {
        Started::Shared(pid) => (pid, prepared.failure),
        Started::Copy(pid, read_end) => (pid, read_report(&read_end)?),
    };
    let Some((step, errno)) = failure else {
        return Ok(pid);
    };
    // The child failed before exec and exits at once: reap it here, it was never the service.
    let _ = nix::sys::wait::waitpid(pid, None);
    let step = Step::ALL.get(step as usize).copied().unwrap_or(Step::Exec);
    Err(SpawnError::new(
        step,
        std::io::Error::from_raw_os_error(errno),
    ))
}

/// A child created, and how it reports a failure before exec.
enum Started {
    /// It shared our memory (`CLONE_VM`): its report is in `Prepared::failure`.
    Shared(Pid),
    /// It had a copy: its report comes through the error pipe, whose read end this is.
    Copy(Pid, OwnedFd),
}

/// What a child with a copy of our memory reported through the error pipe: nothing once it
/// has exec'd (the pipe closes on exec), else (step, errno).
fn read_report(read_end: &OwnedFd) -> Result<Option<(u32, i32)>, SpawnError> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(read_end.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(SpawnError::new(Step::Pipe, e.into())),
        }
    }
    if got == 0 {
        return Ok(None);
    }
    let [a, b, c, d, e, f, g, h] = buf;
    Ok(Some((
        u32::from_ne_bytes([a, b, c, d]),
        i32::from_ne_bytes([e, f, g, h]),
    )))
}

/// Every signal whose disposition can be changed (all but SIGKILL and SIGSTOP), 1 to 64.
static ALL_SIGNALS: [libc::c_int; 62] = {
    let mut all = [0; 62];
    let mut sig = 1;
    let mut i = 0;
    while sig <= 64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            all[i] = sig;
            i += 1;
        }
        sig += 1;
    }
    all
};

/// The signals this process ignores, read once (at the first spawn).
///
/// With `CLONE_CLEAR_SIGHAND` the kernel gives the child every handled signal back at its
/// default; an ignored one stays ignored, and across exec too, so the child resets these.
/// baton ignores a signal in one place only, `start` (SIGPIPE, before any spawn); the rest
/// were ignored by whoever started baton (`nohup`), before it ran. Hence once is enough.
fn ignored_signals() -> &'static [libc::c_int] {
    static IGNORED: std::sync::OnceLock<Vec<libc::c_int>> = std::sync::OnceLock::new();
    IGNORED.get_or_init(|| {
        ALL_SIGNALS
            .iter()
            .copied()
            .filter(|&sig| {
                let mut old = [0u64; 4];
                // SAFETY: a query only (no new action); the kernel writes the old action into
                // `old`, a kernel sigaction (handler, flags, restorer, 8-byte mask) on our stack.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        std::ptr::null::<libc::c_void>(),
                        old.as_mut_ptr(),
                        8usize,
                    )
                };
                r == 0 && old[0] == libc::SIG_IGN as u64
            })
            .collect()
    })
}

static SH: &std::ffi::CStr = c"/bin/sh";

/// The pipe the child reports a failure through, its write end above every descriptor
/// number the child assigns (0-2, and the listening socket's, at most 3).
fn error_pipe(exec: &Exec) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let highest = exec.listen.map_or(2, |(_, to)| to.max(2));
    use std::os::fd::AsRawFd;
    if w.as_raw_fd() > highest {
        return Ok((r, w));
    }
    let moved = nix::fcntl::fcntl(
        w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(highest + 1),
    )?;
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    Ok((r, unsafe { OwnedFd::from_raw_fd(moved) }))
}

/// Remembers (and says, once) that every spawn from now on forks.
fn clone3_unusable(why: &str) {
    use std::sync::atomic::Ordering;
    if !CLONE3_UNUSABLE.swap(true, Ordering::Relaxed) {
        tracing::info!(
            "clone3 is unusable here ({why}); spawning with fork, the child joining its cgroup by a cgroup.procs write (slower)"
        );
    }
}

/// Creates the child (clone3 where it works, else fork) and runs its setup there.
fn start_child(p: &mut Prepared<'_>) -> Result<Started, SpawnError> {
    use std::sync::atomic::Ordering;
    if cfg!(debug_assertions) && std::env::var_os(TEST_NO_CLONE3).is_some() {
        clone3_unusable(&format!("{TEST_NO_CLONE3} is set"));
    }
    if !CLONE3_UNUSABLE.load(Ordering::Relaxed) {
        let mut args = CloneArgs {
            // The kernel gives the child every handled signal back at its default, so the
            // child resets only the ignored ones (a handler of ours must never run in it).
            flags: libc::CLONE_VFORK as u64 | CLONE_CLEAR_SIGHAND,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        p.reset = ignored_signals();
        if let Some(cg) = p.exec.cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = cg.dir as u64;
        }
        match clone3(&mut args, p)? {
            Cloned::Pid(pid) => return Ok(pid),
            // No clone3 (< 5.3, or a seccomp filter), no CLONE_CLEAR_SIGHAND (< 5.5) or
            // CLONE_INTO_CGROUP (< 5.7), a larger clone_args than the kernel knows, or a
            // filter that denies it.
            Cloned::Refused(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM)
                ) =>
            {
                clone3_unusable(&e.to_string())
            }
            Cloned::Refused(e) => return Err(SpawnError::new(Step::Clone, e)),
        }
    }
    p.reset = &ALL_SIGNALS;
    let (read_end, write_end) = error_pipe(p.exec).map_err(|e| SpawnError::new(Step::Pipe, e))?;
    {
        use std::os::fd::AsRawFd;
        p.report = write_end.as_raw_fd();
    }
    // SAFETY: fork gives the child a copy of our memory; `child` never returns and only
    // makes async-signal-safe system calls before exec or _exit.
    let r = unsafe { libc::fork() };
    match r {
        0 => child(p, true),
        r if r > 0 => Ok(Started::Copy(Pid::from_raw(r), read_end)),
        _ => Err(SpawnError::new(
            Step::Clone,
            std::io::Error::last_os_error(),
        )),
    }
}

/// What clone3 did.
enum Cloned {
    /// A child, started.
    Pid(Started),
    /// The kernel refused, with this error.
    Refused(std::io::Error),
}

/// clone3 as vfork(2) uses clone: `CLONE_VM | CLONE_VFORK`, the child sharing our memory
/// until it execs, on our own stack below the frame we sleep in. Nothing is copied (no
/// page tables, no copy-on-write faults afterwards), nothing is mapped for the child (no
/// stack to mmap, fault in and unmap: the pages below our stack pointer are ones our
/// deeper calls have used before), and we sleep until the child has exec'd or exited.
/// The child reports a failure in `p.failure`, in the memory we share: no pipe.
#[cfg(target_arch = "x86_64")]
fn clone3(args: &mut CloneArgs, p: &mut Prepared<'_>) -> Result<Cloned, SpawnError> {
    args.flags |= libc::CLONE_VM as u64;
    // stack = 0: the child starts on our stack pointer (clone3 allows it without a size).
    args.stack = 0;
    args.stack_size = 0;
    p.report = -1;
    p.failure = None;
    // Every signal blocked across the clone: the child shares our memory, so none of our
    // handlers may run in it. The kernel clears the handled ones (CLONE_CLEAR_SIGHAND) and
    // the child resets the ignored ones before unblocking.
    // SAFETY: sigfillset and pthread_sigmask only write the sigsets passed, on our stack.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let ret: i64;
    // SAFETY: the kernel starts the child at the instruction after `syscall` with our rsp
    // (stack = 0). Without `nostack`, the compiler keeps nothing below rsp across this
    // block (no red zone), and we sleep until the child has exec'd or exited
    // (CLONE_VFORK), with every signal blocked: what the child writes below our rsp is
    // dead to us, and it never writes above it (it only grows down from 512 bytes below).
    // The child clears the frame pointer, aligns its stack and calls `child_entry` with
    // `p`, which never returns (`ud2` would trap if it did); it touches nothing of ours
    // but `p` and errno. r12 and r13 survive `syscall`; rcx and r11 do not and are
    // declared. The parent falls through with the PID or -errno in rax.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "sub rsp, 512",
            "and rsp, -16",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") (p as *mut Prepared<'_>).cast::<libc::c_void>(),
            in("r13") child_entry as extern "C" fn(*mut libc::c_void) -> !,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if ret > 0 {
        return Ok(Cloned::Pid(Started::Shared(Pid::from_raw(ret as i32))));
    }
    Ok(Cloned::Refused(std::io::Error::from_raw_os_error(
        -ret as i32,
    )))
}

/// clone3 without CLONE_VM where there is no hand-written entry for this architecture: the
/// child gets a copy of our memory, as with fork(2), and reports through the error pipe.
#[cfg(not(target_arch = "x86_64"))]
fn clone3(args: &mut CloneArgs, p: &mut Prepared<'_>) -> Result<Cloned, SpawnError> {
    let (read_end, write_end) = error_pipe(p.exec).map_err(|e| SpawnError::new(Step::Pipe, e))?;
    {
        use std::os::fd::AsRawFd;
        p.report = write_end.as_raw_fd();
    }
    // SAFETY: without CLONE_VM the child gets a copy of our memory: nothing it does
    // touches ours. It returns here on its own copy of this stack (stack = 0), and `child`
    // never returns: it only makes async-signal-safe system calls on data prepared
    // beforehand, then execs or _exits. The argument block is a valid clone_args of the
    // size passed. Raw clone3 skips glibc's fork handlers, so the child must not call into
    // glibc beyond thin syscall wrappers, and `child` does not.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        child(p, false);
    }
    if r < 0 {
        return Ok(Cloned::Refused(std::io::Error::last_os_error()));
    }
    drop(write_end);
    Ok(Cloned::Pid(Started::Copy(
        Pid::from_raw(r as i32),
        read_end,
    )))
}

/// Where a `CLONE_VM` child starts: `arg` is the `Prepared` of the spawn that made it.
#[cfg(target_arch = "x86_64")]
extern "C" fn child_entry(arg: *mut libc::c_void) -> ! {
    // SAFETY: `clone3` passes its `&mut Prepared`, which lives until we exec or exit
    // (the parent sleeps until then), and nothing else uses it meanwhile.
    let p = unsafe { &mut *arg.cast::<Prepared<'_>>() };
    child(p, false)
}

/// In the child: makes `from` the descriptor `to`, open across exec. dup2 clears
/// close-on-exec on the copy, but onto itself it does nothing, so then the flag is
/// cleared by hand. Returns what the system call did (negative: see errno).
fn place(from: RawFd, to: RawFd) -> libc::c_int {
    // SAFETY: one system call on integers; async-signal-safe, no allocation, no lock.
    unsafe {
        if from == to {
            libc::fcntl(to, libc::F_SETFD, 0)
        } else {
            libc::dup2(from, to)
        }
    }
}

/// The child's side: set itself up and exec, or report the failing step and exit 127.
///
/// Runs between clone and exec, in the supervisor's memory (`CLONE_VM`, the supervisor
/// asleep) or a copy of it (fork): nothing here may allocate, lock or call glibc beyond
/// thin system-call wrappers (no setuid(3): glibc's broadcasts to threads that do not
/// exist here), and nothing may panic. It writes nothing of the supervisor's but errno
/// and `p.sh_argv`.
fn child(p: &mut Prepared<'_>, write_procs: bool) -> ! {
    let e = p.exec;
    let report = p.report;
    let reset = p.reset;
    let failure: *mut Option<(u32, i32)> = &mut p.failure;
    let fail = |step: Step, errno: i32| -> ! {
        let idx = Step::ALL.iter().position(|s| *s == step).unwrap_or(0) as u32;
        if report < 0 {
            // SAFETY: `failure` points into the `Prepared` the supervisor holds, in the
            // memory we share (`CLONE_VM`); it sleeps until we exit, then reads it. _exit
            // is async-signal-safe.
            unsafe {
                failure.write_volatile(Some((idx, errno)));
                libc::_exit(127)
            }
        }
        let mut msg = [0u8; 8];
        let (a, b) = msg.split_at_mut(4);
        a.copy_from_slice(&idx.to_ne_bytes());
        b.copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write and _exit are async-signal-safe; msg lives on this stack.
        unsafe {
            libc::write(report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY (for every block below): each is one system call on descriptors, integers
    // or NUL-terminated strings prepared by the supervisor, alive until we exec or exit;
    // none allocates or takes a lock.
    if let (true, Some(cg)) = (write_procs, e.cgroup) {
        // "0" means "the writing process"; first, so nothing it ever forks is outside.
        // SAFETY: see above.
        if unsafe { libc::write(cg.procs, b"0".as_ptr().cast(), 1) } < 0 {
            fail(Step::Cgroup, errno());
        }
    }
    for (to, &from) in e.stdio.iter().enumerate() {
        let to = to as RawFd;
        if place(from, to) < 0 {
            fail(Step::Stdio, errno());
        }
    }
    // SAFETY: see above.
    if unsafe { libc::chdir(e.workdir.as_ptr()) } < 0 {
        fail(Step::Workdir, errno());
    }
    // SAFETY: see above.
    if unsafe { libc::setpgid(0, 0) } < 0 {
        fail(Step::ProcessGroup, errno());
    }
    // Every signal back to its default: an ignored signal stays ignored across exec, and
    // the supervisor ignores SIGPIPE (as every Rust program does) and may have inherited
    // more (`nohup` ignores SIGHUP, the very signal a reload may send). `reset` is every
    // signal, or only the ignored ones where clone3 cleared the handled ones
    // (CLONE_CLEAR_SIGHAND). Raw rt_sigaction: glibc refuses its own 32 and 33. A zeroed
    // kernel sigaction is SIG_DFL, no flags, an empty mask, whatever the field order; 8 is
    // the kernel's sigset size (64 signals).
    let dfl = [0u64; 4];
    for &sig in reset {
        // SAFETY: see above; the kernel reads 32 zero bytes and writes nothing (no old action).
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<libc::c_void>(),
                8usize,
            )
        };
        if r < 0 {
            fail(Step::Signals, errno());
        }
    }
    // The supervisor blocks the signals it reads from its signalfd; a child inheriting
    // that mask would never see SIGTERM.
    // SAFETY: see above; an empty sigset is a valid mask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) < 0 {
            fail(Step::Signals, errno());
        }
    }
    // Whatever the supervisor holds open (other pipes, sockets, the cgroup) must not
    // reach the service; the error pipe is close-on-exec already.
    // SAFETY: see above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        fail(Step::Descriptors, errno());
    }
    if let Some((from, to)) = e.listen {
        if place(from, to) < 0 {
            fail(Step::Listen, errno());
        }
    }
    if let Some(mask) = e.umask {
        // SAFETY: see above.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    if let Some(a) = &e.account {
        // Order matters: groups and gid need the privilege that setuid gives up. Raw
        // system calls: glibc's wrappers would signal the supervisor's other threads.
        // SAFETY: see above; the group list is a slice of gid_t.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) < 0 {
                fail(Step::Groups, errno());
            }
            if libc::syscall(libc::SYS_setgid, a.gid.as_raw()) < 0 {
                fail(Step::Gid, errno());
            }
            if libc::syscall(libc::SYS_setuid, a.uid.as_raw()) < 0 {
                fail(Step::Uid, errno());
            }
            let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) < 0 {
                fail(Step::NoNewPrivs, errno());
            }
        }
    }
    if let Some(sig) = e.parent_death_signal {
        // Set after setuid: changing credentials clears the parent-death signal.
        // SAFETY: see above.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) } < 0 {
            fail(Step::ParentDeathSignal, errno());
        }
        // The supervisor may have died before the line above; then nobody would stop us.
        // SAFETY: see above.
        if unsafe { libc::getppid() } != p.parent {
            fail(Step::ParentGone, libc::ESRCH);
        }
    }
    // execvp's search: a missing or unreachable candidate means "try the next", a
    // refused one is remembered, anything else ends the search.
    let mut denied = false;
    let mut last = libc::ENOENT;
    for path in &e.candidates {
        // SAFETY: see above; argv and envp are NULL-terminated arrays of pointers into
        // CStrings that `exec` keeps alive.
        unsafe { libc::execve(path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
        last = errno();
        match last {
            libc::ENOEXEC => {
                // Not a binary the kernel knows, no `#!`: a shell script, as execvp assumes.
                if let Some(slot) = p.sh_argv.get_mut(1) {
                    *slot = path.as_ptr();
                }
                // SAFETY: see above; sh_argv is NULL-terminated like argv.
                unsafe { libc::execve(SH.as_ptr(), p.sh_argv.as_ptr(), p.envp.as_ptr()) };
                fail(Step::Exec, errno());
            }
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => fail(Step::Exec, last),
        }
    }
    fail(Step::Exec, if denied { libc::EACCES } else { last })
}

/// A read buffer that is never zeroed: only the bytes put or read into it are touched.
///
/// The supervisor reads a service's output line by line into 64 KiB; as a zeroed array on
/// its stack they were 16 pages written at every wake with output to read (a log probe's
/// line among them), and after an idle wait each page written is paid for
/// (benches/PROFILE-ready.md). Not on the stack at all: a frame that large is probed page
/// by page (stack-clash protection), which touches all 16 again. On the heap, uninitialized,
/// only malloc's header and the pages a read fills are touched.
pub struct ReadBuf {
    bytes: Box<[std::mem::MaybeUninit<u8>]>,
    /// `bytes[..filled]` are initialized.
    filled: usize,
}

impl ReadBuf {
    /// An empty buffer of `capacity` bytes, its memory left as malloc gives it.
    pub fn new(capacity: usize) -> Self {
        ReadBuf {
            bytes: Box::new_uninit_slice(capacity),
            filled: 0,
        }
    }

    /// Empties it (nothing is written).
    pub fn clear(&mut self) {
        self.filled = 0;
    }

    /// Appends `data`; what does not fit is left out and its length returned.
    pub fn put(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.bytes.len() - self.filled);
        // SAFETY: `n` bytes fit after `filled` (checked above), the source is a live slice
        // that cannot overlap our exclusively borrowed array.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.bytes.as_mut_ptr().add(self.filled).cast::<u8>(),
                n,
            );
        }
        self.filled += n;
        data.len() - n
    }

    /// One read(2) of `fd` into the room left; the bytes read count as filled.
    pub fn read_from(&mut self, fd: RawFd) -> nix::Result<usize> {
        let room = self.bytes.len() - self.filled;
        // SAFETY: the kernel writes at most `room` bytes at that address, all inside our
        // exclusively borrowed array; uninitialized memory may be written to.
        let r = unsafe {
            libc::read(
                fd,
                self.bytes
                    .as_mut_ptr()
                    .add(self.filled)
                    .cast::<libc::c_void>(),
                room,
            )
        };
        let n = nix::errno::Errno::result(r)? as usize;
        self.filled += n;
        Ok(n)
    }

    /// The bytes put and read so far.
    pub fn filled(&self) -> &[u8] {
        // SAFETY: the first `filled` bytes were written by `put` or by the kernel's read.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast::<u8>(), self.filled) }
    }

    /// How many bytes it holds at most.
    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

/// Whether the wake paths' system calls go straight to the kernel ([`raw`]), so that no
/// libc page is kept for them by a shed.
const RAW: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// A [`raw`] result as nix's: the count, or the errno.
#[inline(always)]
fn checked(r: isize) -> nix::Result<usize> {
    if r < 0 {
        Err(errno_of(r))
    } else {
        Ok(r as usize)
    }
}

/// The errno of a failed [`raw`] call. Out of line and cold: its page is touched only on
/// an error.
#[cold]
#[inline(never)]
fn errno_of(r: isize) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(-r as i32)
}

/// ppoll(2) with `ts`, copied first: the kernel writes the time left into the one it is
/// given, and the caller's stays as it was (as glibc's wrapper keeps it). Plain matches, no
/// `Option` methods: in a debug build each would be a call into core's code, which the
/// shed dropped (`drop_and_poll` runs this after the drop).
#[inline(always)]
fn raw_ppoll(fds: &mut [libc::pollfd], ts: Option<&libc::timespec>) -> nix::Result<libc::c_int> {
    let copy;
    let ts: *const libc::timespec = match ts {
        Some(t) => {
            copy = *t;
            &copy
        }
        None => std::ptr::null(),
    };
    // SAFETY: `fds` is a live, exclusive slice of pollfds for the call; `ts` is null or
    // points at `copy` on our stack; no signal mask.
    match checked(unsafe { raw::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ts) }) {
        Ok(n) => Ok(n as libc::c_int),
        Err(e) => Err(e),
    }
}

/// Receives into `buf` what client socket `fd` has, leaving it queued (MSG_PEEK), without
/// waiting: its length.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<usize> {
    // SAFETY: `buf` is live and exclusive for the call, buf.len() bytes.
    checked(unsafe {
        raw::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    })
}

/// The credentials (pid, uid, gid) of the process at the other end of Unix socket `fd`,
/// as the kernel recorded them at connect (SO_PEERCRED), as nix's `PeerCredentials`.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> nix::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred` and the length into `len`,
    // both on our stack for the call.
    checked(unsafe {
        raw::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred)
}

/// kill(2): `sig` to `pid` (a negative `pid`: to that process group), as nix's `kill`.
/// Inlined: part of its caller's code (a stop's signal, `process::signal_group`).
#[inline]
pub fn kill(pid: Pid, sig: Signal) -> nix::Result<()> {
    // SAFETY: kill takes no pointer.
    checked(unsafe { raw::kill(pid.as_raw(), sig as libc::c_int) }).map(drop)
}

/// renameat(2) of `from` to `to`, both in directory `dir`.
pub fn rename_in(
    dir: BorrowedFd<'_>,
    from: &std::ffi::CStr,
    to: &std::ffi::CStr,
) -> nix::Result<()> {
    // SAFETY: two NUL-terminated names, live for the call; the kernel only reads them.
    checked(unsafe { raw::renameat(dir.as_raw_fd(), from.as_ptr(), to.as_ptr()) }).map(drop)
}

/// Writes all of `bytes` to `fd`, again after EINTR; a write that takes nothing is
/// WriteZero, as std's `write_all`. Inlined: part of its caller's code (the answer to
/// `start`, `daemon::Reporter::ready`).
#[inline]
pub fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is live for the call; write only reads it.
        match checked(unsafe { raw::write(fd.as_raw_fd(), bytes.as_ptr(), bytes.len()) }) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n.min(bytes.len())..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The system calls of the wake paths (a wake's first act, `start`'s end), made without
/// libc where that is known how (x86_64 Linux): each result is the kernel's own, the count
/// or `-errno`. After a long sleep every distinct page a woken process touches is paid for
/// (HELPERS.md), and a libc wrapper is three of them beside its system call: its code, the
/// GOT entry the call goes through, and libc's `.bss` (errno, the single-thread flag a
/// cancellation point reads). benches/PROFILE-ready.md, "Raw round", has the counts.
/// Elsewhere the libc call, its -1 and errno turned into the same `-errno`.
mod raw {
    use std::os::fd::RawFd;

    /// `syscall` with up to six arguments: src/syscall.rs's, which the front shares.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub use crate::syscall::call;

    /// A libc wrapper's result as the kernel's: -1 becomes `-errno`.
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    fn kernel(r: isize) -> isize {
        if r == -1 {
            -(nix::errno::Errno::last_raw() as isize)
        } else {
            r
        }
    }

    macro_rules! calls {
        ($(
            $(#[$doc:meta])*
            fn $name:ident($($arg:ident: $ty:ty),*) = $nr:ident, [$($raw:expr),*], $libc:expr;
        )*) => {$(
            $(#[$doc])*
            /// # Safety
            /// As the system call: every pointer valid for what it reads and writes.
            #[inline(always)]
            pub unsafe fn $name($($arg: $ty),*) -> isize {
                #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
                {
                    // Type-checked here too, never called: the other path stays buildable.
                    // SAFETY: never called.
                    let _ = || unsafe { $libc };
                    // SAFETY: the caller's contract, the system call's own.
                    unsafe { call(libc::$nr as usize, [$($raw as usize),*]) }
                }
                #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
                {
                    // SAFETY: the caller's contract, the libc wrapper's own.
                    kernel(unsafe { $libc } as isize)
                }
            }
        )*};
    }

    calls! {
        /// ppoll(2) without a signal mask (a null one: the kernel then reads no size).
        fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec) =
            SYS_ppoll, [fds, n, ts, 0, 0, 0],
            libc::ppoll(fds, n, ts, std::ptr::null());
        /// epoll_pwait2(2) without a signal mask (a null one: the kernel then reads no
        /// size).
        fn epoll_pwait2(
            epfd: RawFd,
            events: *mut libc::epoll_event,
            max: libc::c_int,
            ts: *const libc::timespec
        ) =
            SYS_epoll_pwait2, [epfd, events, max, ts, 0, 0],
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epfd,
                events,
                max,
                ts,
                std::ptr::null::<libc::sigset_t>(),
                std::mem::size_of::<libc::sigset_t>()
            );
        /// epoll_wait(2): [`epoll_pwait2`]'s fallback, a timeout in milliseconds.
        fn epoll_wait(
            epfd: RawFd,
            events: *mut libc::epoll_event,
            max: libc::c_int,
            timeout_ms: libc::c_int
        ) =
            SYS_epoll_wait, [epfd, events, max, timeout_ms, 0, 0],
            libc::epoll_wait(epfd, events, max, timeout_ms);
        /// madvise(2).
        fn madvise(addr: usize, len: usize, advice: libc::c_int) =
            SYS_madvise, [addr, len, advice, 0, 0, 0],
            libc::madvise(addr as *mut _, len, advice);
        /// read(2).
        fn read(fd: RawFd, buf: *mut u8, len: usize) =
            SYS_read, [fd, buf, len, 0, 0, 0],
            libc::read(fd, buf.cast(), len);
        /// write(2).
        fn write(fd: RawFd, buf: *const u8, len: usize) =
            SYS_write, [fd, buf, len, 0, 0, 0],
            libc::write(fd, buf.cast(), len);
        /// recvmsg(2).
        fn recvmsg(fd: RawFd, msg: *mut libc::msghdr, flags: libc::c_int) =
            SYS_recvmsg, [fd, msg, flags, 0, 0, 0],
            libc::recvmsg(fd, msg, flags);
        /// recv(2): recvfrom(2) with no address wanted.
        fn recv(fd: RawFd, buf: *mut u8, len: usize, flags: libc::c_int) =
            SYS_recvfrom, [fd, buf, len, flags, 0, 0],
            libc::recv(fd, buf.cast(), len, flags);
        /// accept4(2) with no address wanted.
        fn accept4(fd: RawFd, flags: libc::c_int) =
            SYS_accept4, [fd, 0, 0, flags, 0, 0],
            libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), flags);
        /// getsockopt(2).
        fn getsockopt(
            fd: RawFd,
            level: libc::c_int,
            name: libc::c_int,
            val: *mut libc::c_void,
            len: *mut libc::socklen_t
        ) =
            SYS_getsockopt, [fd, level, name, val, len, 0],
            libc::getsockopt(fd, level, name, val, len);
        /// kill(2).
        fn kill(pid: libc::pid_t, sig: libc::c_int) =
            SYS_kill, [pid, sig, 0, 0, 0, 0],
            libc::kill(pid, sig);
        /// renameat(2).
        fn renameat(dir: RawFd, from: *const libc::c_char, to: *const libc::c_char) =
            SYS_renameat, [dir, from, dir, to, 0, 0],
            libc::renameat(dir, from, dir, to);
    }

    /// exit_group(2): the process ends here, as `_exit` ends it, without libc's exit path.
    #[inline(always)]
    pub fn exit(code: libc::c_int) -> ! {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        // SAFETY: exit_group takes no pointer and does not return.
        unsafe {
            call(
                libc::SYS_exit_group as usize,
                [code as usize, 0, 0, 0, 0, 0],
            );
            std::hint::unreachable_unchecked()
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        // SAFETY: _exit(2) only ends the process.
        unsafe {
            libc::_exit(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn kept_pages_are_cut_out_of_the_spans_to_drop() {
        let spans = [(0x1000, 0x9000), (0x20000, 0x30000)];
        // A hole inside the first span, one straddling the second's start, one elsewhere.
        let holes = [(0x3000, 0x5000), (0x1f000, 0x21000), (0x50000, 0x52000)];
        assert_eq!(
            without(&spans, &holes),
            [(0x1000, 0x3000), (0x5000, 0x9000), (0x21000, 0x30000)]
        );
        // A hole covering a whole span removes it; no holes leaves the spans as they are.
        assert_eq!(without(&spans, &[(0, 0x10000)]), [(0x20000, 0x30000)]);
        assert_eq!(without(&spans, &[]), spans);
    }

    #[test]
    fn only_pages_of_readonly_file_mappings_are_dropped() {
        // What the loader mapped, as the kernel sees it: (start, end, writable, file-backed).
        let maps: Vec<(usize, usize, bool, bool)> = std::fs::read_to_string("/proc/self/maps")
            .expect("/proc/self/maps")
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (a, b) = f[0].split_once('-').expect("a range");
                let hex = |x| usize::from_str_radix(x, 16).expect("hex");
                (
                    hex(a),
                    hex(b),
                    f[1].contains('w'),
                    f.get(5).is_some_and(|p| p.starts_with('/')),
                )
            })
            .collect();
        let spans = readonly_segments();
        assert!(
            spans.len() >= 3,
            "this test binary, libc and ld.so have text: {spans:x?}"
        );
        for (start, end) in spans {
            assert!(
                start < end && start % PAGE == 0 && end % PAGE == 0,
                "{start:x}-{end:x}"
            );
            // Every page lies in a read-only mapping of a file, never a writable one.
            for page in (start..end).step_by(PAGE) {
                let m = maps.iter().find(|m| m.0 <= page && page < m.1);
                assert!(
                    m.is_some_and(|m| !m.2 && m.3),
                    "page {page:x} of {start:x}-{end:x} is in {m:x?}"
                );
            }
        }
    }

    // The wake paths' raw system calls (`raw`): each result and each error as libc's.

    /// A directory of its own, removed at the end.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("baton-sys-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("scratch dir");
            Scratch(d)
        }

        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn raw_calls_report_the_kernels_errno() {
        use nix::errno::Errno;
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut buf = [0u8; 8];
        assert_eq!(peek(r.as_fd(), &mut buf), Err(Errno::ENOTSOCK));
        assert_eq!(peer_credentials(r.as_fd()).err(), Some(Errno::ENOTSOCK));
        let e = recv_with_sender(r.as_fd(), &mut buf, true).expect_err("not a socket");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTSOCK), "{e}");
        // Beyond pid_max: nobody.
        assert_eq!(
            kill(Pid::from_raw(i32::MAX), Signal::SIGTERM),
            Err(Errno::ESRCH)
        );
        let e = write_all(r.as_fd(), b"x").expect_err("a read end");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        drop(r);
        // SIGPIPE is ignored by the test harness, as by baton (`sys::start`).
        let e = write_all(w.as_fd(), b"x").expect_err("no reader");
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "{e}");
        let dir = Scratch::new("errno");
        let d = std::fs::File::open(dir.path()).expect("open the directory");
        assert_eq!(
            rename_in(d.as_fd(), c"absent", c"there"),
            Err(Errno::ENOENT)
        );
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let e = accept_nonblocking(&listener).expect_err("nobody waits");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    }

    #[test]
    fn raw_calls_do_what_libcs_do() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let cred = peer_credentials(a.as_fd()).expect("SO_PEERCRED");
        assert_eq!(
            (cred.pid, cred.uid, cred.gid),
            (
                std::process::id() as i32,
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw()
            )
        );
        write_all(b.as_fd(), b"stop\n").expect("write");
        let mut buf = [0u8; 16];
        assert_eq!(peek(a.as_fd(), &mut buf), Ok(5));
        assert_eq!(&buf[..5], b"stop\n");
        let mut again = [0u8; 16];
        assert_eq!(
            nix::unistd::read(a.as_raw_fd(), &mut again),
            Ok(5),
            "left queued"
        );
        assert_eq!(&again[..5], b"stop\n");
        let dir = Scratch::new("calls");
        std::fs::write(dir.path().join(".pid.tmp"), "1\n").expect("write");
        let d = std::fs::File::open(dir.path()).expect("open the directory");
        rename_in(d.as_fd(), c".pid.tmp", c"pid").expect("rename");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pid")).expect("read"),
            "1\n"
        );
        assert!(!dir.path().join(".pid.tmp").exists());
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).expect("bind");
        let _client =
            std::os::unix::net::UnixStream::connect(dir.path().join("s")).expect("connect");
        let conn = accept_nonblocking(&listener).expect("accept4");
        let flags =
            nix::fcntl::fcntl(conn.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("F_GETFL");
        assert_ne!(flags & libc::O_NONBLOCK, 0, "non-blocking from the accept");
        let fd_flags =
            nix::fcntl::fcntl(conn.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        assert_ne!(
            fd_flags & libc::FD_CLOEXEC,
            0,
            "close-on-exec from the accept"
        );
    }

    #[test]
    fn the_raw_ppoll_reports_readiness_and_keeps_the_callers_timeout() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut fds = [libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let zero = nix::sys::time::TimeSpec::new(0, 0);
        assert_eq!(
            raw_ppoll(&mut fds, Some(zero.as_ref())),
            Ok(0),
            "nothing to read yet"
        );
        nix::unistd::write(&w, b"x").expect("write");
        // A timeout the kernel would count down: the caller's stays as it was.
        let t = libc::timespec {
            tv_sec: 30,
            tv_nsec: 0,
        };
        assert_eq!(raw_ppoll(&mut fds, Some(&t)), Ok(1));
        assert_eq!(fds[0].revents, libc::POLLIN);
        assert_eq!((t.tv_sec, t.tv_nsec), (30, 0));
        // A descriptor closed meanwhile only reads as POLLNVAL.
        let (r2, _w2) = nix::unistd::pipe().expect("pipe");
        let closed = r2.as_raw_fd();
        drop(r2);
        let mut fds = [libc::pollfd {
            fd: closed,
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(raw_ppoll(&mut fds, None), Ok(1));
        assert_eq!(fds[0].revents, libc::POLLNVAL);
    }

    #[test]
    fn epoll_wait_times_out_in_nanoseconds_and_reports_what_is_ready_with_its_data() {
        let ep = epoll_create().expect("epoll_create");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        epoll_ctl(
            ep.as_fd(),
            libc::EPOLL_CTL_ADD,
            r.as_raw_fd(),
            libc::EPOLLIN as u32,
            77,
        )
        .expect("add");
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let t = nix::sys::time::TimeSpec::new(0, 1_000);
        assert_eq!(
            epoll_wait(ep.as_fd(), &mut events, Some(t)),
            Ok(0),
            "nothing yet"
        );
        nix::unistd::write(&w, b"x").expect("write");
        assert_eq!(epoll_wait(ep.as_fd(), &mut events, None), Ok(1));
        let (got, data) = (events[0].events, events[0].u64);
        assert_eq!((got, data), (libc::EPOLLIN as u32, 77));
        // Taken out, it is no longer reported; a number that names nothing only fails.
        epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_DEL, r.as_raw_fd(), 0, 0).expect("del");
        assert_eq!(epoll_wait(ep.as_fd(), &mut events, Some(t)), Ok(0));
        let closed = r.as_raw_fd();
        drop(r);
        assert!(epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_DEL, closed, 0, 0).is_err());
    }

    #[test]
    fn without_epoll_pwait2_the_wait_falls_back_to_milliseconds_rounded_up() {
        let ep = epoll_create().expect("epoll_create");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let (fd, ev) = (r.as_raw_fd(), libc::EPOLLIN as u32);
        epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, fd, ev, 5).expect("add");
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let ep = ep.as_raw_fd();
        // 1 µs rounds up to a whole millisecond, never down to "return at once".
        let t = nix::sys::time::TimeSpec::new(0, 1_000);
        let started = std::time::Instant::now();
        assert_eq!(epoll_wait_ms(ep, &mut events, 2, t.as_ref()), Ok(0));
        assert!(started.elapsed() >= std::time::Duration::from_millis(1));
        nix::unistd::write(&w, b"x").expect("write");
        let forever = std::ptr::null();
        assert_eq!(epoll_wait_ms(ep, &mut events, 2, forever), Ok(1));
        let (got, data) = (events[0].events, events[0].u64);
        assert_eq!((got, data), (ev, 5));
    }

    extern "C" fn on_usr1(_: libc::c_int) {}

    #[test]
    fn a_signal_handled_during_the_shed_sleep_ends_it_with_eintr() {
        use std::os::unix::thread::JoinHandleExt;
        use std::sync::atomic::{AtomicI32, Ordering};
        use std::sync::Arc;
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_usr1),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler does nothing; no other test of this binary uses SIGUSR1.
        unsafe { nix::sys::signal::sigaction(Signal::SIGUSR1, &action) }.expect("sigaction");
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        let fd = r.as_raw_fd();
        let tid = Arc::new(AtomicI32::new(0));
        let told = Arc::clone(&tid);
        let sleeper = std::thread::spawn(move || {
            told.store(nix::unistd::gettid().as_raw(), Ordering::SeqCst);
            let mut fds = [libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut shed = Shed::default();
            shed_and_poll(&mut fds, &mut shed)
        });
        // In ppoll (nothing will ever be written): the signal's handler is what ends it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let ppoll_nr = format!("{} ", libc::SYS_ppoll);
        loop {
            let t = tid.load(Ordering::SeqCst);
            let asleep = t != 0
                && std::fs::read_to_string(format!("/proc/self/task/{t}/syscall"))
                    .is_ok_and(|s| s.starts_with(&ppoll_nr));
            if asleep {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never slept in ppoll"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // SAFETY: the thread is alive (it cannot leave ppoll without a signal) and SIGUSR1
        // has a handler.
        let sent = unsafe { libc::pthread_kill(sleeper.as_pthread_t(), libc::SIGUSR1) };
        assert_eq!(sent, 0);
        let polled = sleeper.join().expect("the sleeper");
        assert_eq!(polled, Err(nix::errno::Errno::EINTR));
        drop(r);
    }

    #[test]
    fn code_pages_cover_the_entry_and_the_next_page() {
        assert_eq!(code_pages(0x5_4321), (0x5_4000, 0x5_6000));
        assert_eq!(code_pages(0x5_4000), (0x5_4000, 0x5_6000));
    }

    #[test]
    fn a_read_buffer_holds_what_was_put_then_read_and_no_more() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, b"lo wor").expect("write");
        let mut buf = ReadBuf::new(8);
        assert_eq!(buf.put(b"hel"), 0);
        assert_eq!(
            buf.read_from(r.as_raw_fd()).expect("read"),
            5,
            "only the room left"
        );
        assert_eq!(buf.filled(), b"hello wo");
        assert_eq!(buf.put(b"x"), 1, "full: nothing more fits");
        buf.clear();
        assert_eq!(buf.filled(), b"");
        assert_eq!(buf.read_from(r.as_raw_fd()).expect("read"), 1);
        assert_eq!(buf.filled(), b"r");
    }
}
