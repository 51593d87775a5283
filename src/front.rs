//! `baton`, the command operators run: a front of a few KB that sends the one request whose
//! latency is measured from the moment the command starts (`stop`: the service gets its
//! SIGTERM) and hands every command line to `baton-core`, installed beside it (the front's
//! own path and `-core`).
//!
//! Why a second binary. Time to service gone is the stop command's own start-up plus the
//! supervisor's wake. A 2 MB Rust program linked against glibc starts with ld.so mapping
//! and relocating libc and itself: ~185 pages touched before its request, 44 of them its
//! own, which nothing else on the machine keeps warm (benches/PROFILE-stop.md). The C
//! supervisors answer with a small client (`svc`, `sv`, `s6-svc`); this is baton's. It is
//! static, has no libc and no relocations, so the kernel maps it and jumps to `_start`: a
//! stop touches a handful of pages before its request is on the socket.
//!
//! What it does is only what the full `stop` does before its request, on the path a root
//! stop takes when the supervisor's stop card matches the config file
//! (`config::card`): the command lock, the look at the supervisor's lock, the connect and
//! the one-line request. It then execs `baton-core` with the lock and the socket open and
//! `BATON_STOP_SENT=LOCK,SOCKET,ERRNO,CARD` in the environment; the core reads the replies,
//! prints them, waits for the supervisor's exit and says the config's warnings, as ever.
//! Anything else, or anything unexpected on the way (no card, a card that does not match,
//! a link where a directory should be, not root, an unusual command line, a supervisor not
//! running), and it execs the core with the command line untouched, before any request:
//! the core then does the whole command and says what is wrong. The front never decides
//! anything the core would decide differently; at worst it leaves the work to the core.
//!
//! Everything here is raw system calls on x86_64 Linux: no allocation, no formatting, no
//! panics on any input (every index is checked), nothing that would need a relocation.

#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]
// The memory functions below are this program's own (there is no C library): LLVM must
// not make calls to them out of their own loops.
#![no_builtins]

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("baton's front (src/front.rs) makes x86_64 Linux system calls only");

/// The core is the front's own path with this after it: `baton-core` beside `baton`, and
/// a pair copied under another name (`baton.v2`, `baton.v2-core`) stays a pair.
const CORE: &[u8] = b"-core";
/// The environment entry that hands a sent stop to the core (`control::Sent`).
const SENT: &[u8] = b"BATON_STOP_SENT=";
/// Where the stop cards are (`config::card::DIR`).
const CARDS: &core::ffi::CStr = c"/run/baton/configs";
/// The first field of a card (`config::card::MAGIC`).
const MAGIC: &[u8] = b"baton-card 1";
/// Where a service's config is when only its name is given (`config::DEFAULT_CONFIG_DIR`).
const CONFIG_DIR: &[u8] = b"/etc/baton/";
/// The request's fields (`control::Envelope::plain_line`).
const VERSION: &[u8] = env!("CARGO_PKG_VERSION").as_bytes();
/// A card is a few hundred bytes; a larger one (many checks, long paths) is left to the
/// core. Every buffer here is small: each page of stack a frame spans is touched (stack
/// probes), and each is a fault.
const MAX_CARD: usize = 4096;
/// Entries of the environment the front copies to add its own; a larger one (never seen)
/// goes to the core as it is, without the shortcut.
const MAX_ENV: usize = 500;
/// The longest config file or state directory path the front handles (longer ones: the
/// core).
const PATH_MAX: usize = 1024;
/// The longest path of the front's own executable (`/proc/self/exe`).
const EXE_MAX: usize = 4096;

// `cargo test --all-targets` builds and runs every binary as a test, `test = false` or not,
// with this binary's link flags (build.rs: no start files): std's harness cannot start so.
// The test build's entry runs no test and exits 0, as `test = false` means; the front is
// tested as it runs, through the real binary (tests/it/front.rs, tests/it/layout.rs).
#[cfg(test)]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov eax, 231",
    "xor edi, edi",
    "syscall",
);

#[cfg(not(test))]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    sys::exit(70)
}

/// Named by the unwind tables of the precompiled `core` (built to unwind); with
/// panic = "abort" nothing ever unwinds, so nothing calls it.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// The process's start: `sp` is the stack as the kernel laid it out (argc, argv, NULL, envp,
/// NULL).
///
/// # Safety
/// Called once, by `_start`, with the kernel's initial stack pointer.
unsafe extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: the System V x86_64 process start: argc at sp, then argc argument pointers
    // and a NULL, then the environment's pointers and a NULL, all valid for the process's
    // life.
    let (argv, envp) = unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *const *const u8;
        (argv, argv.add(argc + 1))
    };
    let args = Strings::new(argv);
    let env = Strings::new(envp);
    let mut scratch = Scratch::new();
    if let Some(sent) = stop(&args, &env, &mut scratch) {
        run_core(argv, &env, Some(sent));
    }
    run_core(argv, &env, None)
}

/// A NULL-terminated array of C strings.
#[derive(Clone, Copy)]
struct Strings(*const *const u8);

impl Strings {
    fn new(p: *const *const u8) -> Strings {
        Strings(p)
    }

    /// The `i`th string, without its NUL; None past the end.
    fn get(&self, i: usize) -> Option<&'static [u8]> {
        for j in 0..=i {
            // SAFETY: the array is NULL-terminated and nothing is read past the NULL.
            let p = unsafe { *self.0.add(j) };
            if p.is_null() {
                return None;
            }
            if j == i {
                // SAFETY: a NUL-terminated string the kernel copied, alive for the process.
                return Some(unsafe { c_str(p) });
            }
        }
        None
    }

    fn len(&self) -> usize {
        let mut n = 0;
        // SAFETY: as in `get`.
        while !unsafe { *self.0.add(n) }.is_null() {
            n += 1;
        }
        n
    }
}

/// The bytes of the NUL-terminated string at `p`.
///
/// # Safety
/// `p` points to a NUL-terminated string that lives for the process.
unsafe fn c_str(p: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: the caller's contract; nothing past the NUL is read.
    unsafe {
        while *p.add(n) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}

/// The stack buffers of a stop: the card, the config path made NUL-terminated, the card's
/// name (two u64 in decimal, a dash, a NUL), the request.
struct Scratch {
    card: [u8; MAX_CARD + 1],
    file: [u8; PATH_MAX],
    name: [u8; 48],
    line: [u8; 256],
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            card: [0; MAX_CARD + 1],
            file: [0; PATH_MAX],
            name: [0; 48],
            line: [0; 256],
        }
    }
}

/// A stop handed to the core: the held command lock, the connected socket, the errno of
/// the request's write (0 when it was written whole) and the card, open.
struct Sent {
    lock: i32,
    socket: i32,
    error: i32,
    card: i32,
}

/// The command line's config file (NUL-terminated) and service name, for the shapes
/// `--config FILE stop [NAME]`, `--config=FILE stop [NAME]` and `stop NAME`; None for
/// anything else, which the core reads with clap.
fn stop_target<'a>(args: &Strings, buf: &'a mut [u8; PATH_MAX]) -> Option<(&'a [u8], &'a [u8])> {
    let word = |b: &&[u8]| !b.is_empty() && b[0] != b'-';
    let (given, at) = match args.get(1)? {
        b"--config" => (Some(args.get(2).filter(word)?), 3),
        a if a.starts_with(b"--config=") => (Some(a.get(9..).filter(word)?), 2),
        _ => (None, 1),
    };
    if args.get(at)? != b"stop" || args.get(at + 2).is_some() {
        return None;
    }
    let name = args.get(at + 1);
    if name.is_some_and(|n| !word(&n)) {
        return None;
    }
    let file = match given {
        Some(file) => join(buf, &[file])?,
        // `stop NAME`: /etc/baton/NAME.toml, as config::locate makes it.
        None => {
            let name = name.filter(|n| !n.contains(&b'/'))?;
            join(buf, &[CONFIG_DIR, name, b".toml"])?
        }
    };
    // Already what std::path::absolute makes of it (the core compares the card's path
    // with that): absolute, no empty or `.` component, no trailing slash.
    let path = &file[..file.len() - 1];
    let plain = path.first() == Some(&b'/')
        && !path.ends_with(b"/")
        && !path.ends_with(b"/.")
        && !contains(path, b"//")
        && !contains(path, b"/./");
    if !plain {
        return None;
    }
    let name = match name {
        Some(n) => n,
        None => stem(path)?,
    };
    Some((file, name))
}

/// Path::file_stem of `path`, as config::locate names a service.
fn stem(path: &[u8]) -> Option<&[u8]> {
    let base = &path[path.iter().rposition(|&b| b == b'/')? + 1..];
    if base == b".." || base.is_empty() {
        return None;
    }
    match base.iter().rposition(|&b| b == b'.') {
        Some(0) | None => Some(base),
        Some(dot) => Some(&base[..dot]),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The pieces one after the other in `buf`, NUL-terminated; None if they do not fit.
fn join<'a>(buf: &'a mut [u8], parts: &[&[u8]]) -> Option<&'a [u8]> {
    let mut at = 0;
    for part in parts {
        if part.contains(&0) {
            return None;
        }
        buf.get_mut(at..at + part.len())?.copy_from_slice(part);
        at += part.len();
    }
    *buf.get_mut(at)? = 0;
    Some(&buf[..=at])
}

/// The stop up to its request, when the command line is a stop and root's card for the
/// config matches it; None (with nothing held and nothing sent) to leave it to the core.
fn stop(args: &Strings, env: &Strings, s: &mut Scratch) -> Option<Sent> {
    // An environment too large to copy could not carry the handoff to the core, which
    // would then ask again and wait on the lock the front holds.
    if sys::geteuid() != 0 || env.len() > MAX_ENV {
        return None;
    }
    let (file, name) = stop_target(args, &mut s.file)?;
    let st = sys::stat(file.as_ptr())?;
    let (open, card) = read_card(&st, &mut s.name, &mut s.card)?;
    let card = Card::decode(card)?;
    let matches = card.name == name
        && card.file == &file[..file.len() - 1]
        && card.fingerprint
            == [
                st.dev as i64,
                st.ino as i64,
                st.size,
                st.mtime,
                st.mtime_nsec,
                st.ctime,
                st.ctime_nsec,
            ];
    if !matches {
        return None;
    }
    let line = request_line(env, &mut s.line)?;
    send(&card, open, line)
}

/// Reads root's card for the file `st` describes into `buf`: the card, open (the core
/// reads it again from there: its supervisor may have removed it by then), and its bytes.
fn read_card<'a>(
    st: &sys::Stat,
    name: &mut [u8; 48],
    buf: &'a mut [u8; MAX_CARD + 1],
) -> Option<(Fd, &'a [u8])> {
    let mut digits = [0u8; 20];
    let dev = decimal(st.dev, &mut digits);
    let mut digits2 = [0u8; 20];
    let ino = decimal(st.ino, &mut digits2);
    let key = join(name, &[dev, b"-", ino])?;
    let dir = Fd(sys::open_no_symlinks(
        CARDS.as_ptr().cast(),
        sys::O_DIRECTORY,
    )?);
    let root_only = |st: &sys::Stat| st.uid == 0 && st.mode & 0o022 == 0;
    if !root_only(&sys::fstat(dir.0)?) {
        return None;
    }
    let card = Fd(sys::openat(
        dir.0,
        key.as_ptr(),
        sys::O_RDONLY | sys::O_NOFOLLOW | sys::O_NONBLOCK | sys::O_NOCTTY,
    )?);
    let cst = sys::fstat(card.0)?;
    if !root_only(&cst) || cst.mode & sys::S_IFMT != sys::S_IFREG || cst.nlink != 1 {
        return None;
    }
    let mut len = 0;
    while len < buf.len() {
        let n = sys::read(card.0, &mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    (len <= MAX_CARD).then(|| (card, &buf[..len]))
}

/// `n` in decimal, in the end of `digits`.
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    &digits[at..]
}

/// What the front needs of a card (`config::card::decode` reads the same fields; the
/// checks that follow them are walked over, so that a card the core would refuse is
/// refused here too).
struct Card<'a> {
    fingerprint: [i64; 7],
    name: &'a [u8],
    file: &'a [u8],
    socket: &'a [u8],
    state_dir: &'a [u8],
}

impl<'a> Card<'a> {
    fn decode(bytes: &'a [u8]) -> Option<Card<'a>> {
        let body = bytes.strip_suffix(b"\0")?;
        let mut fields = body.split(|&b| b == 0);
        if fields.next()? != MAGIC {
            return None;
        }
        let mut numbers = [0i64; 9];
        for n in numbers.iter_mut() {
            *n = signed(fields.next()?)?;
        }
        let [dev, ino, size, ms, mns, cs, cns, timeout, checks] = numbers;
        if timeout < 0 || checks < 0 {
            return None;
        }
        let name = fields.next()?;
        core::str::from_utf8(name).ok()?;
        let file = fields.next()?;
        let socket = fields.next()?;
        let state_dir = fields.next()?;
        let (_pidfile, _log_dir) = (fields.next()?, fields.next()?);
        for _ in 0..checks {
            let line = fields.next()?;
            if !line.is_empty() {
                u32::try_from(signed(line)?).ok()?;
            }
            let rest = match fields.next()? {
                b"workdir" | b"env_file" => 1,
                b"program" => 4,
                _ => return None,
            };
            for _ in 0..rest {
                fields.next()?;
            }
        }
        if fields.next()? != b"end" || fields.next().is_some() {
            return None;
        }
        Some(Card {
            fingerprint: [dev, ino, size, ms, mns, cs, cns],
            name,
            file,
            socket,
            state_dir,
        })
    }
}

/// A decimal i64 as `to_string` writes it: an optional '-', then digits.
fn signed(field: &[u8]) -> Option<i64> {
    let (negative, digits) = match field.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, field),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// The stop request as `control::Envelope::plain_line` writes it, with its newline.
fn request_line<'a>(env: &Strings, buf: &'a mut [u8; 256]) -> Option<&'a [u8]> {
    // host::operator: SUDO_USER if set (an empty one says no one), else USER; then
    // control::audit_name: its name characters, at most 64.
    let by = lookup(env, b"SUDO_USER=")
        .or_else(|| lookup(env, b"USER="))
        .unwrap_or(b"");
    // A value that is not ASCII is left to the core (std::env::var reads it as Unicode).
    if !by.is_ascii() {
        return None;
    }
    let mut name = [0u8; 64];
    let mut n = 0;
    for &b in by {
        if n < name.len() && (b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@')) {
            name[n] = b;
            n += 1;
        }
    }
    let by: &[&[u8]] = if n == 0 {
        &[]
    } else {
        &[b"\",\"by\":\"", &name[..n]]
    };
    let mut at = 0;
    let mut put = |part: &[u8]| -> Option<()> {
        buf.get_mut(at..at + part.len())?.copy_from_slice(part);
        at += part.len();
        Some(())
    };
    put(b"{\"baton\":\"")?;
    put(VERSION)?;
    for part in by {
        put(part)?;
    }
    put(b"\",\"protocol\":1,\"request\":\"stop\"}\n")?;
    Some(&buf[..at])
}

/// The value of `key` (`NAME=`) in the environment.
fn lookup(env: &Strings, key: &[u8]) -> Option<&'static [u8]> {
    let mut i = 0;
    while let Some(entry) = env.get(i) {
        if let Some(value) = entry.strip_prefix(key) {
            return Some(value);
        }
        i += 1;
    }
    None
}

/// Takes the command lock, looks at the supervisor's, connects and writes `line`, as
/// `service::stop` does; None (all closed, nothing sent) when the supervisor is not
/// running or anything is not as the core would find it.
fn send(card: &Card<'_>, open: Fd, line: &[u8]) -> Option<Sent> {
    let mut state = [0u8; PATH_MAX];
    let state = join(&mut state, &[card.state_dir])?;
    let dir = Fd(sys::open_no_symlinks(state.as_ptr(), sys::O_DIRECTORY)?);
    let dst = sys::fstat(dir.0)?;
    // Files::open_lock's rules: a regular file with one link, baton's (root's) or the
    // directory owner's. Not created here: a first stop leaves that to the core. Left open
    // across the exec: the core holds the lock until it ends.
    let lock = Fd(sys::openat(
        dir.0,
        c"start.lock".as_ptr().cast(),
        sys::O_RDWR | sys::O_NOFOLLOW | sys::O_NONBLOCK | sys::O_NOCTTY,
    )?);
    let lst = sys::fstat(lock.0)?;
    if lst.mode & sys::S_IFMT != sys::S_IFREG
        || lst.nlink != 1
        || (lst.uid != 0 && lst.uid != dst.uid)
    {
        return None;
    }
    sys::clear_flags(lock.0)?;
    sys::flock(lock.0, sys::LOCK_EX)?;
    // pidfile::supervisor_alive: a shared lock taken means no supervisor holds it.
    let sup = Fd(sys::openat(
        dir.0,
        c"supervisor.lock".as_ptr().cast(),
        sys::O_RDONLY | sys::O_NOFOLLOW | sys::O_NONBLOCK | sys::O_CLOEXEC,
    )?);
    if sys::flock(sup.0, sys::LOCK_SH | sys::LOCK_NB).is_some() {
        return None;
    }
    drop(sup);
    drop(dir);
    let socket = Fd(sys::socket_unix()?);
    sys::connect_unix(socket.0, card.socket)?;
    let error = sys::send_all(socket.0, line);
    // The core's start-up (ld.so, libc, 2 MB of Rust) would run beside the supervisor's
    // wake and the service's exit, on a machine of few CPUs in their way: it waits for the
    // supervisor's first reply, which follows its signal (at most a second; the core
    // bounds the rest of the wait).
    if error == 0 {
        sys::wait_readable(socket.0, 1000);
    }
    Some(Sent {
        lock: lock.into_raw(),
        socket: socket.into_raw(),
        error,
        card: open.into_raw(),
    })
}

/// A descriptor closed when dropped, unless handed on.
struct Fd(i32);

impl Fd {
    fn into_raw(self) -> i32 {
        let fd = self.0;
        core::mem::forget(self);
        fd
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        sys::close(self.0);
    }
}

/// Execs `baton-core` beside this executable with the same arguments, and, for a sent
/// stop, its descriptors named in the environment. Never returns.
fn run_core(argv: *const *const u8, env: &Strings, sent: Option<Sent>) -> ! {
    let mut path = [0u8; EXE_MAX + 16];
    let core = core_path(&mut path);
    let mut value = [0u8; 80];
    let mut entries = [core::ptr::null::<u8>(); MAX_ENV + 2];
    let envp = environment(env, sent.as_ref(), &mut value, &mut entries);
    let error = match core {
        Some(p) => sys::execve(p.as_ptr(), argv, envp),
        None => 2,
    };
    // Only reached if the exec failed.
    let what: &[&[u8]] = match &sent {
        Some(_) => &[b"baton: the stop was sent, but its replies cannot be read: "],
        None => &[b"baton: "],
    };
    for part in what {
        sys::write_all(2, part);
    }
    sys::write_all(2, b"cannot run ");
    sys::write_all(
        2,
        core.map_or(b"baton-core" as &[u8], |p| &p[..p.len() - 1]),
    );
    sys::write_all(2, b" (");
    sys::write_all(2, errno_name(error));
    sys::write_all(2, b"): the core is installed beside baton under its name and `-core` (`make install` and the cookbook put both)\n");
    sys::exit(exit_code(&Strings::new(argv), error, sent.is_some()))
}

/// The LSB code of a core that cannot be run: a core missing or not executable is a
/// program not installed (5; for `status`, a status unknown, 4); anything else, or a stop
/// already sent, a generic error (1).
fn exit_code(args: &Strings, errno: i32, sent: bool) -> i32 {
    const ENOENT: i32 = 2;
    const ENOEXEC: i32 = 8;
    const EACCES: i32 = 13;
    if sent || !matches!(errno, ENOENT | ENOEXEC | EACCES) {
        return 1;
    }
    if command(args) == Some(b"status") {
        4
    } else {
        5
    }
}

/// The command word of the command line: the first argument that is neither an option
/// nor the value of `--config` or `--config-dir` (the global options that take one).
fn command(args: &Strings) -> Option<&'static [u8]> {
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        match arg {
            b"--config" | b"--config-dir" => i += 2,
            a if a.starts_with(b"-") => i += 1,
            word => return Some(word),
        }
    }
    None
}

/// The core's path: this executable's own, then `-core`, NUL-terminated.
fn core_path(buf: &mut [u8; EXE_MAX + 16]) -> Option<&[u8]> {
    let n = sys::readlink(c"/proc/self/exe".as_ptr().cast(), &mut buf[..EXE_MAX])?;
    let end = n + CORE.len();
    buf.get_mut(n..end)?.copy_from_slice(CORE);
    *buf.get_mut(end)? = 0;
    Some(&buf[..=end])
}

/// The environment for the core: this one without any `BATON_STOP_SENT` (only the front
/// says that), with the sent stop's when there is one.
fn environment(
    env: &Strings,
    sent: Option<&Sent>,
    value: &mut [u8; 80],
    entries: &mut [*const u8; MAX_ENV + 2],
) -> *const *const u8 {
    let n = env.len();
    if n > MAX_ENV {
        // Too many to copy: as it is, and never with a sent stop (`stop` declines first).
        // A stray entry there is the caller's own doing; the core adopts only a regular
        // file and a socket it finds at the numbers named.
        return env.0;
    }
    let mut at = 0;
    for i in 0..n {
        // SAFETY: i < n, the array's length.
        let p = unsafe { *env.0.add(i) };
        // SAFETY: an environment string, NUL-terminated, alive for the process.
        if !unsafe { c_str(p) }.starts_with(SENT) {
            entries[at] = p;
            at += 1;
        }
    }
    if let Some(s) = sent {
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        let mut c = [0u8; 20];
        let mut d = [0u8; 20];
        let parts = [
            SENT,
            decimal(s.lock as u64, &mut a),
            b",",
            decimal(s.socket as u64, &mut b),
            b",",
            decimal(s.error as u64, &mut c),
            b",",
            decimal(s.card as u64, &mut d),
        ];
        if join(value, &parts).is_some() {
            entries[at] = value.as_ptr();
            at += 1;
        }
    }
    entries[at] = core::ptr::null();
    entries.as_ptr()
}

/// A few errnos by name, for the one message the front writes itself.
fn errno_name(e: i32) -> &'static [u8] {
    match e {
        2 => b"no such file",
        13 => b"permission denied",
        8 => b"not an executable",
        20 => b"a path component is not a directory",
        36 => b"path too long",
        40 => b"too many links",
        _ => b"exec failed",
    }
}

// The memory functions the compiler calls for slice copies and comparisons; with no C
// library, these are the program's. Byte loops: the front moves a few hundred bytes.

/// # Safety
/// `d` and `s` valid for `n` bytes, not overlapping.
#[cfg(not(test))]
#[no_mangle]
unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract.
    unsafe { memmove(d, s, n) }
}

/// # Safety
/// `d` and `s` valid for `n` bytes.
#[cfg(not(test))]
#[no_mangle]
unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; copied in the direction that reads each byte before
    // it is overwritten.
    unsafe {
        if (d as usize) < (s as usize) {
            for i in 0..n {
                *d.add(i) = *s.add(i);
            }
        } else {
            for i in (0..n).rev() {
                *d.add(i) = *s.add(i);
            }
        }
    }
    d
}

/// # Safety
/// `d` valid for `n` bytes.
#[cfg(not(test))]
#[no_mangle]
unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        unsafe { *d.add(i) = c as u8 };
    }
    d
}

/// # Safety
/// `a` and `b` valid for `n` bytes.
#[cfg(not(test))]
#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As `memcmp`.
#[cfg(not(test))]
#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { memcmp(a, b, n) }
}

mod syscall;

/// The system calls, raw: x86_64 Linux's numbers and `struct stat`.
mod sys {
    use core::arch::asm;

    pub const O_RDONLY: usize = 0;
    pub const O_RDWR: usize = 2;
    pub const O_NOCTTY: usize = 0o400;
    pub const O_NONBLOCK: usize = 0o4000;
    pub const O_DIRECTORY: usize = 0o200000;
    pub const O_NOFOLLOW: usize = 0o400000;
    pub const O_CLOEXEC: usize = 0o2000000;
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFREG: u32 = 0o100000;
    pub const LOCK_SH: usize = 1;
    pub const LOCK_EX: usize = 2;
    pub const LOCK_NB: usize = 4;
    const EINTR: isize = 4;
    const AT_FDCWD: usize = -100isize as usize;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;

    use crate::syscall::call;

    /// A call restarted while it is interrupted; None on any other error.
    fn retried(nr: usize, a: [usize; 6]) -> Option<usize> {
        loop {
            // SAFETY: every caller below passes pointers valid for the call.
            let r = unsafe { call(nr, a) };
            if r >= 0 {
                return Some(r as usize);
            }
            if r != -EINTR {
                return None;
            }
        }
    }

    /// The parts of x86_64's `struct stat` the front reads.
    pub struct Stat {
        pub dev: u64,
        pub ino: u64,
        pub nlink: u64,
        pub mode: u32,
        pub uid: u32,
        pub size: i64,
        pub mtime: i64,
        pub mtime_nsec: i64,
        pub ctime: i64,
        pub ctime_nsec: i64,
    }

    fn stat_of(raw: &[u64; 18]) -> Stat {
        Stat {
            dev: raw[0],
            ino: raw[1],
            nlink: raw[2],
            mode: raw[3] as u32,
            uid: (raw[3] >> 32) as u32,
            size: raw[6] as i64,
            mtime: raw[11] as i64,
            mtime_nsec: raw[12] as i64,
            ctime: raw[13] as i64,
            ctime_nsec: raw[14] as i64,
        }
    }

    /// stat(2) of a NUL-terminated path (following links, as nix's stat).
    pub fn stat(path: *const u8) -> Option<Stat> {
        let mut raw = [0u64; 18];
        retried(4, [path as usize, raw.as_mut_ptr() as usize, 0, 0, 0, 0])?;
        Some(stat_of(&raw))
    }

    pub fn fstat(fd: i32) -> Option<Stat> {
        let mut raw = [0u64; 18];
        retried(5, [fd as usize, raw.as_mut_ptr() as usize, 0, 0, 0, 0])?;
        Some(stat_of(&raw))
    }

    /// openat2(RESOLVE_NO_SYMLINKS) of a NUL-terminated absolute path, close-on-exec.
    pub fn open_no_symlinks(path: *const u8, flags: usize) -> Option<i32> {
        let how: [u64; 3] = [
            (O_RDONLY | O_CLOEXEC | flags) as u64,
            0,
            RESOLVE_NO_SYMLINKS,
        ];
        let a = [AT_FDCWD, path as usize, how.as_ptr() as usize, 24, 0, 0];
        retried(437, a).map(|fd| fd as i32)
    }

    pub fn openat(dir: i32, name: *const u8, flags: usize) -> Option<i32> {
        retried(257, [dir as usize, name as usize, flags, 0, 0, 0]).map(|fd| fd as i32)
    }

    pub fn read(fd: i32, buf: &mut [u8]) -> Option<usize> {
        retried(
            0,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }

    /// Writes all of `buf`: 0, or the errno that stopped it.
    pub fn write_all(fd: i32, mut buf: &[u8]) -> i32 {
        while !buf.is_empty() {
            // SAFETY: buf is valid for reads of its length.
            let r = unsafe { call(1, [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0]) };
            if r == -EINTR {
                continue;
            }
            if r <= 0 {
                return if r == 0 { 5 } else { -r as i32 };
            }
            buf = buf.get(r as usize..).unwrap_or(&[]);
        }
        0
    }

    /// send(2) of all of `buf` with MSG_NOSIGNAL (a supervisor gone must not kill the
    /// front with SIGPIPE): 0, or the errno that stopped it.
    pub fn send_all(fd: i32, mut buf: &[u8]) -> i32 {
        while !buf.is_empty() {
            // SAFETY: buf is valid for reads of its length; no address.
            let r = unsafe {
                call(
                    44,
                    [fd as usize, buf.as_ptr() as usize, buf.len(), 0x4000, 0, 0],
                )
            };
            if r == -EINTR {
                continue;
            }
            if r <= 0 {
                return if r == 0 { 5 } else { -r as i32 };
            }
            buf = buf.get(r as usize..).unwrap_or(&[]);
        }
        0
    }

    /// poll(2) for input on `fd`, at most `ms` milliseconds; the outcome is not needed.
    pub fn wait_readable(fd: i32, ms: i32) {
        let mut pfd = [fd as u32 as u64 | (1u64 << 32)]; // events = POLLIN
                                                         // SAFETY: one pollfd, valid for the kernel's write of revents.
        unsafe { call(7, [pfd.as_mut_ptr() as usize, 1, ms as usize, 0, 0, 0]) };
    }

    pub fn close(fd: i32) {
        // SAFETY: no pointer.
        unsafe { call(3, [fd as usize, 0, 0, 0, 0, 0]) };
    }

    /// fcntl(F_SETFL, 0): clears O_NONBLOCK (the open's guard against a FIFO).
    pub fn clear_flags(fd: i32) -> Option<()> {
        retried(72, [fd as usize, 4, 0, 0, 0, 0]).map(drop)
    }

    pub fn flock(fd: i32, op: usize) -> Option<()> {
        retried(73, [fd as usize, op, 0, 0, 0, 0]).map(drop)
    }

    pub fn geteuid() -> u32 {
        // SAFETY: no pointer.
        unsafe { call(107, [0; 6]) as u32 }
    }

    /// A Unix stream socket, inherited across exec (the core reads the replies on it).
    pub fn socket_unix() -> Option<i32> {
        retried(41, [1, 1, 0, 0, 0, 0]).map(|fd| fd as i32)
    }

    /// connect(2) to the socket at `path` (not NUL-terminated; at most 107 bytes).
    pub fn connect_unix(fd: i32, path: &[u8]) -> Option<()> {
        let mut addr = [0u8; 110];
        addr[0] = 1; // AF_UNIX, little-endian u16
        addr.get_mut(2..2 + path.len())?.copy_from_slice(path);
        if path.is_empty() || path.len() > 107 || path.contains(&0) {
            return None;
        }
        let len = 2 + path.len() + 1;
        // SAFETY: addr is valid for `len` bytes. Not restarted: an interrupted connect
        // goes on in the background, so EINTR is left to the core's whole stop.
        let r = unsafe { call(42, [fd as usize, addr.as_ptr() as usize, len, 0, 0, 0]) };
        (r == 0).then_some(())
    }

    /// readlink(2) into `buf`: the length.
    pub fn readlink(path: *const u8, buf: &mut [u8]) -> Option<usize> {
        let n = retried(
            89,
            [path as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )?;
        (n < buf.len()).then_some(n)
    }

    /// execve(2); returns only on failure, with the errno.
    pub fn execve(path: *const u8, argv: *const *const u8, envp: *const *const u8) -> i32 {
        // SAFETY: NUL-terminated path and NULL-terminated arrays of C strings.
        let r = unsafe { call(59, [path as usize, argv as usize, envp as usize, 0, 0, 0]) };
        -r as i32
    }

    pub fn exit(code: i32) -> ! {
        // SAFETY: exit_group never returns.
        unsafe {
            asm!("syscall", in("rax") 231, in("rdi") code, options(noreturn, nostack));
        }
    }
}
