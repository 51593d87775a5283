//! Opening, creating and atomically replacing files as root in directories others may write.
//!
//! Every directory a service user (or any other local user) can write is hostile: a
//! planted symbolic or hard link must never make root write somewhere else. So a
//! directory is reached once, by a walk that follows a symbolic link only where no one
//! but root (or baton's own user) could have planted it, and every file in it is opened
//! relative to that directory's descriptor with `O_NOFOLLOW`, then checked with `fstat`
//! (a regular file, one link, an expected owner). New files are created with `O_EXCL`
//! under an unpredictable name and renamed into place. This is the only module that
//! opens files for writing in such directories; the rest of baton goes through it.

use crate::sys;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed in one walk before giving up, as the kernel's own limit.
const MAX_LINKS: u32 = 40;

/// A directory held open by descriptor: files are reached relative to it, never by path.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    stat: FileStat,
}

/// What a walk found wrong with the ownership or mode of the directories it passed.
pub type Untrusted = Vec<String>;

impl Dir {
    /// Opens the directory at `path`, following only symbolic links that nobody but root
    /// (or baton's own user) could have planted.
    pub fn open(path: &Path) -> io::Result<Dir> {
        walk(path, &mut None)
    }

    /// Like [`Dir::open`], also recording every directory on the way that someone other than
    /// root or baton's user owns or can write (sshd's StrictModes).
    pub fn open_checked(path: &Path, untrusted: &mut Untrusted) -> io::Result<Dir> {
        let mut seen = Some(std::mem::take(untrusted));
        let dir = walk(path, &mut seen);
        *untrusted = seen.unwrap_or_default();
        dir
    }

    /// The path this directory was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` for appending, creating it with `mode` if absent; refuses links and strangers' files.
    pub fn open_append(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT;
        self.open_existing_or_new(name, flags, mode)
    }

    /// Opens `name` for appending and for reading back what was appended (a log file whose
    /// writer checks where its last line ends), creating it if absent.
    pub fn open_log(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT;
        self.open_existing_or_new(name, flags, mode)
    }

    /// Opens `name` read-write for a lock, creating it if absent; refuses links and strangers' files.
    pub fn open_lock(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_existing_or_new(name, OFlag::O_RDWR | OFlag::O_CREAT, mode)
    }

    fn open_existing_or_new(&self, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<File> {
        plain_name(name)?;
        // O_NONBLOCK: a planted FIFO must not hang the supervisor in open(2); cleared below.
        let fd = sys::openat(
            Some(self.fd.as_fd()),
            Path::new(name),
            flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(mode as nix::libc::mode_t),
        )
        .map_err(|e| self.explain(name, e))?;
        self.check_file(name, &fd)?;
        let keep = flags & OFlag::O_APPEND;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(keep))?;
        Ok(File::from(fd))
    }

    /// Creates `name` anew (`O_EXCL`): fails if anything, even a dangling link, has that name.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        plain_name(name)?;
        let fd = sys::openat(
            Some(self.fd.as_fd()),
            Path::new(name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(mode as nix::libc::mode_t),
        )
        .map_err(|e| self.explain(name, e))?;
        Ok(File::from(fd))
    }

    /// A read-write file in this directory that has no name at all (`O_TMPFILE`), gone when closed.
    pub fn anonymous(&self) -> io::Result<File> {
        let fd = sys::openat(
            Some(self.fd.as_fd()),
            Path::new("."),
            OFlag::O_TMPFILE | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )?;
        Ok(File::from(fd))
    }

    /// Replaces `name` with `contents` atomically: a crash leaves the old file or the new one.
    ///
    /// The new contents go to a fresh file (`O_EXCL`, an unpredictable name beginning with a
    /// dot, so `include *.conf` globs skip it) that is renamed over `name`; rename never
    /// follows a link, so a planted one is replaced, not written through. No fsync; but on
    /// ext4 a rename over a file (`auto_da_alloc`) starts writing the new blocks out, so a
    /// file others read after a reboot (a proxy's upstream, the registry) is not found empty.
    pub fn write_atomic(&self, name: &OsStr, contents: &[u8], mode: u32) -> io::Result<()> {
        self.write_new(name, contents, mode, Dir::rename)
    }

    /// As [`Dir::write_atomic`], for files that describe running processes and mean nothing
    /// after a power loss (state.json, the PID file): put in place by [`Dir::replace`], which
    /// leaves the blocks to the usual writeback instead of writing them out at once.
    pub fn write_live(&self, name: &OsStr, contents: &[u8], mode: u32) -> io::Result<()> {
        self.write_new(name, contents, mode, Dir::replace)
    }

    fn write_new(
        &self,
        name: &OsStr,
        contents: &[u8],
        mode: u32,
        put: fn(&Dir, &OsStr, &OsStr) -> io::Result<()>,
    ) -> io::Result<()> {
        plain_name(name)?;
        let (tmp, f) = self.create_temporary(name, mode)?;
        self.fill_and_put(&tmp, f, contents, name, put)
    }

    /// Creates a fresh temporary for `name` (`O_EXCL`, named `.NAME.<16 hex>.tmp`: the form
    /// [`Dir::remove_stale_temporaries`] recognises), for contents put in place later.
    pub fn create_temporary(&self, name: &OsStr, mode: u32) -> io::Result<(OsString, File)> {
        let tmp = temporary_name(name);
        let f = self.create_new(&tmp, mode)?;
        Ok((tmp, f))
    }

    /// Writes `contents` into the temporary `tmp` ([`Dir::create_temporary`]) and puts it in
    /// place of `name` as [`Dir::write_live`] does; the temporary is removed on failure.
    pub fn fill_live(&self, tmp: &OsStr, f: File, contents: &[u8], name: &OsStr) -> io::Result<()> {
        self.fill_and_put(tmp, f, contents, name, Dir::replace)
    }

    fn fill_and_put(
        &self,
        tmp: &OsStr,
        mut f: File,
        contents: &[u8],
        name: &OsStr,
        put: fn(&Dir, &OsStr, &OsStr) -> io::Result<()>,
    ) -> io::Result<()> {
        let written = f.write_all(contents).and_then(|()| put(self, tmp, name));
        if written.is_err() {
            let _ = self.remove(tmp);
        }
        written
    }

    /// Removes the temporaries [`Dir::write_atomic`] makes for `name` that a process killed
    /// between create and rename left behind: regular files of this process's owner named
    /// `.NAME.<16 hex digits>.tmp`. Returns how many went. Only whoever holds `name`'s lock
    /// may call this, or it could take another writer's file from under its rename.
    pub fn remove_stale_temporaries(&self, name: &OsStr) -> io::Result<usize> {
        let dup = nix::unistd::dup(self.fd.as_raw_fd())?;
        let mut entries = nix::dir::Dir::from_fd(dup)?;
        let me = nix::unistd::geteuid().as_raw();
        let mut removed = 0;
        for entry in entries.iter() {
            let entry = entry?;
            let Some(suffix) = entry
                .file_name()
                .to_bytes()
                .strip_prefix(b".")
                .and_then(|rest| rest.strip_prefix(name.as_bytes()))
            else {
                continue;
            };
            let random = suffix
                .strip_prefix(b".")
                .and_then(|r| r.strip_suffix(b".tmp"));
            if !random.is_some_and(|r| r.len() == 16 && r.iter().all(u8::is_ascii_hexdigit)) {
                continue;
            }
            let file = OsStr::from_bytes(entry.file_name().to_bytes());
            let mine = nix::sys::stat::fstatat(
                Some(self.fd.as_raw_fd()),
                file,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| {
                SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
                    && st.st_uid == me
            });
            if mine && self.remove(file).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Renames within the directory (never follows a link: the entry itself moves).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let fd = Some(self.fd.as_raw_fd());
        Ok(nix::fcntl::renameat(fd, from, fd, to)?)
    }

    /// Puts the file `from` in place of `to`: a reader of `to` finds the old file or the new
    /// one, whole, never nothing. The two entries are swapped (`RENAME_EXCHANGE`) and the old
    /// one, now at `from`, removed. A rename over the old file would do it in one call, but
    /// on ext4 (`auto_da_alloc`) that call also starts writing the new file's blocks out:
    /// 0.3-1 ms, up to 5, after an idle wait, where the swap and the removal take tens of
    /// microseconds and leave the blocks to the usual writeback (benches/PROFILE-stop.md, "the
    /// tail after the service's exit"): for files a power loss makes meaningless anyway
    /// ([`Dir::write_live`]), not for those read after a reboot. Nothing at `to` yet, or a
    /// filesystem that cannot swap: a plain rename. Should the removal fail (`to` was a
    /// directory), the swap is undone, as a rename over it would have failed.
    pub fn replace(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let fd = Some(self.fd.as_raw_fd());
        let swap =
            || nix::fcntl::renameat2(fd, from, fd, to, nix::fcntl::RenameFlags::RENAME_EXCHANGE);
        match swap() {
            Ok(()) => self.remove(from).inspect_err(|_| {
                let _ = swap();
            }),
            Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                self.rename(from, to)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// As [`Dir::rename`], with names already made C strings.
    /// (The staged PID file's rename, on the readiness wake: without libc, `sys::rename_in`.)
    pub fn rename_c(&self, from: &std::ffi::CStr, to: &std::ffi::CStr) -> io::Result<()> {
        Ok(crate::sys::rename_in(self.fd.as_fd(), from, to)?)
    }

    /// Removes the entry `name` (a link is removed, not its target).
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        Ok(nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?)
    }

    /// Hands the entry `name` (not what a link there points to) to `uid`/`gid`.
    pub fn chown(&self, name: &OsStr, uid: Uid, gid: Gid) -> io::Result<()> {
        Ok(nix::unistd::fchownat(
            Some(self.fd.as_raw_fd()),
            name,
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// Points the symbolic link `name` at `target` atomically (a fresh link renamed over it).
    pub fn symlink_atomic(&self, target: &Path, name: &OsStr) -> io::Result<()> {
        let tmp = temporary_name(name);
        nix::unistd::symlinkat(target, Some(self.fd.as_raw_fd()), tmp.as_os_str())?;
        self.rename(&tmp, name).inspect_err(|_| {
            let _ = self.remove(&tmp);
        })
    }

    /// Creates a new private directory (mode 0700, an unpredictable name after `prefix`) in here.
    ///
    /// `mkdir` never reuses what exists, and the result is checked to be ours, so a name
    /// another user guessed and planted first is never used.
    pub fn create_private(&self, prefix: &str) -> io::Result<Dir> {
        for _ in 0..16 {
            let name = OsString::from(format!("{prefix}{}", random_suffix()));
            match nix::sys::stat::mkdirat(
                Some(self.fd.as_raw_fd()),
                name.as_os_str(),
                Mode::S_IRWXU,
            ) {
                Ok(()) => {}
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(self.explain(&name, e.into())),
            }
            let dir = self.open_subdir(&name)?;
            if Uid::from_raw(dir.stat.st_uid) != Uid::effective() || dir.stat.st_mode & 0o077 != 0 {
                return Err(io::Error::other(format!(
                    "{} is not the private directory just created: remove it",
                    dir.described()
                )));
            }
            return Ok(dir);
        }
        Err(io::Error::other(format!(
            "no unused name for a private directory in {}",
            self.path.display()
        )))
    }

    /// Creates the subdirectory `name` (nothing may exist there) and opens it.
    pub fn create_subdir(&self, name: &OsStr, mode: u32) -> io::Result<Dir> {
        plain_name(name)?;
        nix::sys::stat::mkdirat(
            Some(self.fd.as_raw_fd()),
            name,
            Mode::from_bits_truncate(mode as nix::libc::mode_t),
        )
        .map_err(|e| self.explain(name, e.into()))?;
        self.open_subdir(name)
    }

    /// Opens the subdirectory `name` private to baton's user (owned by it, mode 0700),
    /// creating it if absent; anything else found there (a link, another owner's directory,
    /// one others may enter) is refused, never used.
    pub fn private_subdir(&self, name: &OsStr) -> io::Result<Dir> {
        plain_name(name)?;
        match nix::sys::stat::mkdirat(Some(self.fd.as_raw_fd()), name, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.explain(name, e.into())),
        }
        let dir = self.open_subdir(name)?;
        let me = Uid::effective();
        if Uid::from_raw(dir.stat.st_uid) != me || dir.stat.st_mode & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{} is not a private directory of uid {me}: remove it",
                dir.described()
            )));
        }
        Ok(dir)
    }

    /// The entry `name` itself (a link is not followed).
    pub fn entry(&self, name: &OsStr) -> io::Result<FileStat> {
        Ok(nix::sys::stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// Opens the subdirectory `name`, refusing a link.
    fn open_subdir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = sys::openat(
            Some(self.fd.as_fd()),
            Path::new(name),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| self.explain(name, e))?;
        let stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
            stat,
        })
    }

    /// Creates the symbolic link `name` -> `target` (nothing may exist at `name`).
    pub fn symlink(&self, target: &Path, name: &OsStr) -> io::Result<()> {
        plain_name(name)?;
        Ok(nix::unistd::symlinkat(
            target,
            Some(self.fd.as_raw_fd()),
            name,
        )?)
    }

    /// Sets this directory's own permission bits (on the descriptor, not by path).
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        Ok(nix::sys::stat::fchmod(
            self.fd.as_raw_fd(),
            Mode::from_bits_truncate(mode as nix::libc::mode_t),
        )?)
    }

    /// Creates the file `rel` (a relative path below this directory) with `contents`,
    /// making missing directories (mode `dir_mode`) on the way; nothing may exist at `rel`.
    pub fn create_tree_file(
        &self,
        rel: &Path,
        contents: &[u8],
        dir_mode: u32,
        mode: u32,
    ) -> io::Result<()> {
        let mut names: Vec<&OsStr> = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n),
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} must stay below {}", rel.display(), self.path.display()),
                    ))
                }
            }
        }
        let Some((file, parents)) = names.split_last() else {
            return Err(io::Error::other(format!("{} names no file", rel.display())));
        };
        let mut owned: Option<Dir> = None;
        for name in parents {
            let here = owned.as_ref().unwrap_or(self);
            match nix::sys::stat::mkdirat(
                Some(here.fd.as_raw_fd()),
                *name,
                Mode::from_bits_truncate(dir_mode as nix::libc::mode_t),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(here.explain(name, e.into())),
            }
            owned = Some(here.open_subdir(name)?);
        }
        let here = owned.as_ref().unwrap_or(self);
        let mut f = here.create_new(file, mode).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", here.path.join(file).display()))
        })?;
        f.write_all(contents)
    }

    /// The directory's owner and mode, for messages: "(owner uid 1001, mode 0750)".
    fn described(&self) -> String {
        format!(
            "{} (owner uid {}, mode {:04o})",
            self.path.display(),
            self.stat.st_uid,
            self.stat.st_mode & 0o7777
        )
    }

    /// Turns an open error into the reason an operator can act on.
    fn explain(&self, name: &OsStr, e: io::Error) -> io::Error {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            return io::Error::other(format!(
                "it is a symbolic link, and baton never follows links in {}: remove {}",
                self.described(),
                self.path.join(name).display()
            ));
        }
        if e.raw_os_error() == Some(nix::libc::ENXIO) {
            return io::Error::other(format!(
                "it is not a regular file (a FIFO or socket): remove {}",
                self.path.join(name).display()
            ));
        }
        e
    }

    /// fstat on the opened descriptor: the file, not whatever the name points to now.
    fn check_file(&self, name: &OsStr, fd: &OwnedFd) -> io::Result<()> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        let path = self.path.join(name);
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFREG {
            return Err(io::Error::other(format!(
                "it is not a regular file: remove {}",
                path.display()
            )));
        }
        if st.st_nlink != 1 {
            return Err(io::Error::other(format!(
                "it has {} hard links, and baton never writes through a hard link in {}: remove {}",
                st.st_nlink,
                self.described(),
                path.display()
            )));
        }
        let me = Uid::effective().as_raw();
        // The directory's owner could replace the file anyway; anyone else's file is not ours to touch.
        if st.st_uid != me && st.st_uid != self.stat.st_uid {
            return Err(io::Error::other(format!(
                "it belongs to uid {}, neither baton (uid {me}) nor the owner of {}: remove {}",
                st.st_uid,
                self.described(),
                path.display()
            )));
        }
        Ok(())
    }
}

/// Replaces the file at `path` atomically (see [`Dir::write_atomic`]).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    dir.write_atomic(&name, contents, mode)
}

/// Replaces the file at `path`, which describes running processes (see [`Dir::write_live`]).
pub fn write_live(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    dir.write_live(&name, contents, mode)
}

/// Opens `path` for appending, creating it if absent (see [`Dir::open_append`]).
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let (dir, name) = split(path)?;
    dir.open_append(&name, mode)
}

/// [`Dir::open_log`] on `path`'s directory.
pub fn open_log(path: &Path, mode: u32) -> io::Result<File> {
    let (dir, name) = split(path)?;
    dir.open_log(&name, mode)
}

/// The directory holding `path`, opened, and the file's name in it.
pub fn split(path: &Path) -> io::Result<(Dir, OsString)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((Dir::open(parent)?, name.to_os_string()))
}

/// A file opened for reading by a walk that checked who could have changed it.
pub struct Checked {
    /// The open file: everything checked was checked on this descriptor.
    pub file: File,
    /// Why someone other than root (or baton's user) could have changed it; empty if nobody.
    pub untrusted: Untrusted,
    /// The file as it was checked (size, identity, times).
    pub stat: FileStat,
}

impl Checked {
    /// Reads at most `limit` bytes of the file; more is an error naming the limit. The
    /// buffer is sized by the check's fstat: one read and the one that finds the end,
    /// where growing from nothing took six reads and five reallocations for a small config.
    pub fn read_limited(&mut self, limit: u64) -> io::Result<Vec<u8>> {
        let len = u64::try_from(self.stat.st_size).unwrap_or(0);
        let mut out = Vec::with_capacity(len.min(limit) as usize + 1);
        (&mut self.file).take(limit + 1).read_to_end(&mut out)?;
        if out.len() as u64 > limit {
            return Err(io::Error::other(format!(
                "it is larger than {limit} bytes, the most baton reads"
            )));
        }
        Ok(out)
    }
}

/// Opens `path` for reading, StrictModes-style: records every directory on the way, and the
/// file itself, that is not owned by root or baton's user, or that group or others can write.
///
/// A symbolic link is followed only where nobody else could have planted it. The checks are
/// made on the descriptors that are then read, so the file cannot be swapped in between.
pub fn open_checked(path: &Path) -> io::Result<Checked> {
    let mut untrusted = Untrusted::new();
    // Absolute, so the walk checks every directory from /, not only those below the working one.
    let mut path = std::path::absolute(path)?;
    for _ in 0..MAX_LINKS {
        let (dir, name) = {
            let name = path
                .file_name()
                .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?
                .to_os_string();
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (Dir::open_checked(&parent, &mut untrusted)?, name)
        };
        let opened = sys::openat(
            Some(dir.fd.as_fd()),
            Path::new(&name),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        );
        match opened {
            Ok(fd) => {
                let stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
                let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                if kind != SFlag::S_IFREG {
                    return Err(io::Error::other("it is not a regular file"));
                }
                nix::fcntl::fcntl(
                    fd.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()),
                )?;
                if let Some(why) = untrusted_reason(&stat) {
                    untrusted.push(format!("{} {why}", path.display()));
                }
                return Ok(Checked {
                    file: File::from(fd),
                    untrusted,
                    stat,
                });
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                let link = nix::sys::stat::fstatat(
                    Some(dir.fd.as_raw_fd()),
                    name.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                if !link_trusted(&dir.stat, &link) {
                    return Err(dir.explain(&name, e));
                }
                let target = nix::fcntl::readlinkat(Some(dir.fd.as_raw_fd()), name.as_os_str())?;
                path = dir.path.join(target);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(nix::libc::ELOOP))
}

/// Reads the file `name` in `dir` only if nobody but root can have written it: `dir`
/// reached through no symbolic link at all, the file opened without following one, both
/// (checked on their descriptors) root's and writable by nobody else, the file a regular
/// one with a single link; at most `limit` bytes. For a reader that trusts root alone (the
/// stop card of `config::card`), which takes any refusal as "no such file".
pub fn read_root_only(dir: &Path, name: &OsStr, limit: u64) -> io::Result<Vec<u8>> {
    plain_name(name)?;
    let dir = open_dir_no_links(dir)?;
    root_only(&nix::sys::stat::fstat(dir.as_raw_fd())?)?;
    // O_NONBLOCK: a FIFO found there must not hang the reader in open(2).
    let fd = sys::openat(
        Some(dir.as_fd()),
        Path::new(name),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    read_root_file(File::from(fd), limit, 1..=1)
}

/// The content of `file`, already open, if it is root's own regular file that no one else
/// can write, with a number of names in `links`, and at most `limit` bytes long; read from
/// its start.
pub fn read_root_file(
    mut file: File,
    limit: u64,
    links: std::ops::RangeInclusive<u64>,
) -> io::Result<Vec<u8>> {
    let st = nix::sys::stat::fstat(file.as_raw_fd())?;
    root_only(&st)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG
        || !links.contains(&st.st_nlink)
    {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let mut out = Vec::with_capacity(size.min(limit) as usize + 1);
    file.rewind()?;
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    Ok(out)
}

/// Root's, and writable by no one else.
fn root_only(st: &FileStat) -> io::Result<()> {
    if st.st_uid == 0 && st.st_mode & 0o022 == 0 {
        Ok(())
    } else {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
}

/// The directory at the absolute `path`, reached through no symbolic link at all: one
/// openat2 where the kernel has it (Linux 5.6; valgrind does not), else a walk from `/`
/// with `O_NOFOLLOW` at each step.
fn open_dir_no_links(path: &Path) -> io::Result<OwnedFd> {
    match sys::open_dir_no_symlinks(path) {
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOSYS) => {}
        opened => return opened,
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
    let mut fd = sys::openat(None, Path::new("/"), flags, Mode::empty())?;
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => {
                fd = sys::openat(Some(fd.as_fd()), Path::new(name), flags, Mode::empty())?
            }
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
    Ok(fd)
}

/// Why a file or directory others could change cannot be trusted, if it cannot.
pub fn untrusted_reason(st: &FileStat) -> Option<String> {
    let me = Uid::effective().as_raw();
    if st.st_uid != 0 && st.st_uid != me {
        return Some(format!(
            "is owned by uid {}, not root: chown root it",
            st.st_uid
        ));
    }
    let mode = st.st_mode & 0o7777;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    // A sticky directory (/tmp) lets others add names but not replace ours.
    if mode & 0o022 != 0 && !(is_dir && mode & 0o1000 != 0) {
        return Some(format!(
            "is writable by others (mode {mode:04o}): chmod go-w it"
        ));
    }
    None
}

/// Whether a directory others cannot write into (or only as in /tmp) vouches for a link in it.
fn link_trusted(dir: &FileStat, link: &FileStat) -> bool {
    let me = Uid::effective().as_raw();
    let ours = |uid: u32| uid == 0 || uid == me;
    let mode = dir.st_mode & 0o7777;
    if !ours(dir.st_uid) {
        return false;
    }
    if mode & 0o022 == 0 {
        return true;
    }
    // Sticky and shared: only the link's owner could have made it (fs.protected_symlinks' rule).
    mode & 0o1000 != 0 && ours(link.st_uid)
}

/// Walks `path` component by component with `O_NOFOLLOW`, following a symbolic link only
/// where [`link_trusted`] says so; with `seen`, records directories that are not trusted.
fn walk(path: &Path, seen: &mut Option<Untrusted>) -> io::Result<Dir> {
    // No symbolic link anywhere on the way (the usual case): the walk would follow none
    // and reach the same directory, so one openat2(RESOLVE_NO_SYMLINKS) and an fstat do
    // instead of an open, fstat and close per component (most of a `stop`'s system calls
    // before its request, once). Anything else (a link, a directory missing, an old
    // kernel) takes the walk, which applies the rule above and says what is wrong. Not
    // when every directory on the way is to be judged (`seen`): that needs each one's stat.
    if seen.is_none() {
        if let Ok(fd) = sys::open_dir_no_symlinks(path) {
            let stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
            return Ok(Dir {
                fd,
                path: path.to_path_buf(),
                stat,
            });
        }
    }
    let start = if path.is_absolute() { "/" } else { "." };
    let open_dir = |at: Option<BorrowedFd<'_>>, name: &Path| {
        sys::openat(
            at,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
    };
    let root = |p: &str| -> io::Result<(OwnedFd, FileStat)> {
        let fd = sys::openat(
            None,
            Path::new(p),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        Ok((fd, st))
    };
    let (mut cur, mut cur_stat) = root(start)?;
    let mut walked = PathBuf::from(start);
    let mut ancestors: Vec<(OwnedFd, FileStat, PathBuf)> = Vec::new();
    // Remaining components, last first.
    let mut todo: Vec<OsString> = components(path);
    let mut links = 0;
    let note = |seen: &mut Option<Untrusted>, st: &FileStat, p: &Path| {
        if let (Some(list), Some(why)) = (seen.as_mut(), untrusted_reason(st)) {
            let line = format!("{} {why}", p.display());
            if !list.contains(&line) {
                list.push(line);
            }
        }
    };
    note(seen, &cur_stat, &walked);
    while let Some(c) = todo.pop() {
        if c == ".." {
            if let Some((fd, st, p)) = ancestors.pop() {
                (cur, cur_stat, walked) = (fd, st, p);
            } else if start == "." {
                let fd = open_dir(Some(cur.as_fd()), Path::new(".."))?;
                cur_stat = nix::sys::stat::fstat(fd.as_raw_fd())?;
                cur = fd;
                walked.push("..");
            }
            continue;
        }
        match open_dir(Some(cur.as_fd()), Path::new(&c)) {
            Ok(fd) => {
                let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
                let next = walked.join(&c);
                note(seen, &st, &next);
                ancestors.push((cur, cur_stat, std::mem::replace(&mut walked, next)));
                (cur, cur_stat) = (fd, st);
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::ELOOP) | Some(nix::libc::ENOTDIR)
                ) =>
            {
                let here = walked.join(&c);
                let link = nix::sys::stat::fstatat(
                    Some(cur.as_raw_fd()),
                    c.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                if SFlag::from_bits_truncate(link.st_mode) & SFlag::S_IFMT != SFlag::S_IFLNK {
                    return Err(io::Error::other(format!(
                        "{} is not a directory",
                        here.display()
                    )));
                }
                if !link_trusted(&cur_stat, &link) {
                    return Err(io::Error::other(format!(
                        "{} is a symbolic link in {} (owner uid {}, mode {:04o}), which others can write; \
                         baton does not follow it: replace the link with the real path",
                        here.display(),
                        walked.display(),
                        cur_stat.st_uid,
                        cur_stat.st_mode & 0o7777
                    )));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
                }
                let target = nix::fcntl::readlinkat(Some(cur.as_raw_fd()), c.as_os_str())?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    (cur, cur_stat) = root("/")?;
                    walked = PathBuf::from("/");
                    ancestors.clear();
                }
                todo.extend(components(&target));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", walked.join(&c).display()),
                ))
            }
        }
    }
    Ok(Dir {
        fd: cur,
        path: path.to_path_buf(),
        stat: cur_stat,
    })
}

/// The names to walk, last first (a stack), without the root or `.`.
fn components(p: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    v.reverse();
    v
}

/// A name inside a directory: no slash, not `.` or `..`.
fn plain_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(())
}

/// `.NAME.<16 hex>.tmp`: a temporary's name beside `name`, unpredictable, skipped by
/// `*.conf` globs (the leading dot), recognised by [`Dir::remove_stale_temporaries`].
fn temporary_name(name: &OsStr) -> OsString {
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", random_suffix()));
    tmp
}

/// 64 unpredictable bits as hex, for names another user must not guess in advance.
///
/// std seeds each `RandomState` from the kernel's getrandom(2) and keeps the SipHash
/// keys secret, so the hash of a counter is as good as reading /dev/urandom here,
/// without a dependency or unsafe code.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("baton-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn append_refuses_symlink_and_hard_link() {
        let d = scratch("links");
        let victim = d.join("victim");
        std::fs::write(&victim, "keep\n").expect("victim");
        std::os::unix::fs::symlink(&victim, d.join("sym.log")).expect("symlink");
        std::fs::hard_link(&victim, d.join("hard.log")).expect("hard link");
        let dir = Dir::open(&d).expect("open dir");
        let e = dir
            .open_append(OsStr::new("sym.log"), 0o640)
            .expect_err("symlink refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = dir
            .open_append(OsStr::new("hard.log"), 0o640)
            .expect_err("hard link refused");
        assert!(e.to_string().contains("hard link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep\n");
        let mut f = dir
            .open_append(OsStr::new("ok.log"), 0o640)
            .expect("plain file");
        f.write_all(b"x\n").expect("write");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn atomic_write_replaces_a_planted_link_instead_of_following_it() {
        let d = scratch("atomic");
        let victim = d.join("victim");
        std::fs::write(&victim, "keep\n").expect("victim");
        std::os::unix::fs::symlink(&victim, d.join("state.json")).expect("symlink");
        write_atomic(&d.join("state.json"), b"new\n", 0o644).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep\n");
        assert_eq!(
            std::fs::read_to_string(d.join("state.json")).expect("read"),
            "new\n"
        );
        let left: Vec<_> = std::fs::read_dir(&d).expect("ls").collect();
        assert_eq!(left.len(), 2, "no temporary file left behind");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn replace_swaps_a_file_in_falls_back_to_a_rename_and_leaves_a_directory_be() {
        let d = scratch("replace");
        let dir = Dir::open(&d).expect("open dir");
        let put = |name: &str, body: &[u8]| {
            let mut f = dir.create_new(OsStr::new(name), 0o644).expect("create");
            f.write_all(body).expect("write");
        };
        // Nothing there yet: a rename.
        put(".new", b"1");
        dir.replace(OsStr::new(".new"), OsStr::new("state.json"))
            .expect("first");
        // An old file: swapped out and removed.
        put(".new", b"2");
        dir.replace(OsStr::new(".new"), OsStr::new("state.json"))
            .expect("over the old");
        assert_eq!(std::fs::read(d.join("state.json")).expect("read"), b"2");
        let names: Vec<_> = std::fs::read_dir(&d)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from("state.json")],
            "nothing else left"
        );
        // A directory in the way: refused, as a rename over it is, and both left as they were.
        std::fs::create_dir(d.join("busy")).expect("mkdir");
        std::fs::write(d.join("busy/x"), b"x").expect("file in it");
        put(".new", b"3");
        dir.replace(OsStr::new(".new"), OsStr::new("busy"))
            .expect_err("a directory is not replaced");
        assert_eq!(std::fs::read(d.join("busy/x")).expect("still there"), b"x");
        assert_eq!(std::fs::read(d.join(".new")).expect("still there"), b"3");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn walk_follows_links_in_trusted_dirs_and_dotdot() {
        let d = scratch("walk");
        std::fs::create_dir_all(d.join("real/sub")).expect("mkdir");
        std::os::unix::fs::symlink("real", d.join("alias")).expect("symlink");
        let dir = Dir::open(&d.join("alias/sub/../sub")).expect("open through link");
        dir.write_atomic(OsStr::new("f"), b"1", 0o644)
            .expect("write");
        assert_eq!(
            std::fs::read(d.join("real/sub/f")).expect("read"),
            b"1".to_vec()
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn anonymous_files_have_no_name() {
        let d = scratch("anon");
        let mut f = Dir::open(&d).expect("open").anonymous().expect("O_TMPFILE");
        f.write_all(b"out").expect("write");
        assert_eq!(std::fs::read_dir(&d).expect("ls").count(), 0);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn private_dirs_are_fresh_and_0700() {
        let d = scratch("private");
        let dir = Dir::open(&d).expect("open");
        let a = dir.create_private("stage-").expect("a");
        let b = dir.create_private("stage-").expect("b");
        assert_ne!(a.path(), b.path());
        assert_eq!(a.stat.st_mode & 0o777, 0o700);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn stale_temporaries_of_one_name_go_and_nothing_else_does() {
        let d = scratch("stale");
        let dir = Dir::open(&d).expect("open");
        let stale = ".web.pid.0123456789abcdef.tmp";
        let keep = [
            "web.pid",
            ".web.pid.0123456789abcdef.tmp.x",
            ".web.pid.short.tmp",
            ".web.pidx.0123456789abcdef.tmp",
            ".api.pid.0123456789abcdef.tmp",
        ];
        for name in std::iter::once(&stale).chain(&keep) {
            std::fs::write(d.join(name), "1\n").expect("write");
        }
        // A link of that shape is not a file this process left: the link stays, its target too.
        std::fs::write(d.join("target"), "t").expect("target");
        std::os::unix::fs::symlink(d.join("target"), d.join(".web.pid.fedcba9876543210.tmp"))
            .expect("symlink");
        // Nor is a file someone else owns.
        let strangers = ".web.pid.00000000000000aa.tmp";
        std::fs::write(d.join(strangers), "").expect("write");
        let foreign = nix::unistd::geteuid().is_root();
        if foreign {
            std::os::unix::fs::chown(d.join(strangers), Some(65534), Some(65534)).expect("chown");
        }

        let removed = dir
            .remove_stale_temporaries(OsStr::new("web.pid"))
            .expect("sweep");
        assert_eq!(removed, if foreign { 1 } else { 2 });
        assert!(!d.join(stale).exists());
        for name in keep {
            assert!(d.join(name).exists(), "{name} was removed");
        }
        assert!(d
            .join(".web.pid.fedcba9876543210.tmp")
            .symlink_metadata()
            .is_ok());
        assert!(d.join("target").exists());
        assert_eq!(d.join(strangers).exists(), foreign);
        std::fs::remove_dir_all(&d).ok();
    }
}
