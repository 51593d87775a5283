//! The service's output: pipes moved into size-rotated files, whole lines, nothing lost.
//!
//! Two ways, chosen per pipe at each read. When nobody needs to see the lines (no
//! timestamps to prefix, no log probe waiting, one writer per file, far from the size
//! limit), the kernel moves the pipe's bytes into the file with `splice(2)`: one copy, where
//! read + write make two. Otherwise lines are read, and only whole lines are written, so a
//! rotation (which happens between two writes) never splits one and no line is dropped.
//! A flood of stamped lines is read a pipeful at a time and written by a thread of its own
//! (see [`Scribe`]) while the next pipeful is read and stamped.
//!
//! Spliced bytes may end in the middle of a line. The file remembers how long that
//! unfinished line is; before lines are read again (a second instance writes the same
//! file, the size limit is near, the logs are reopened) it is taken back out of the file
//! into the pipe's partial line, so files again hold only whole lines from one writer
//! each. Reading applies back-pressure instead of dropping: a service can be slowed by a
//! slow disk only once its pipe buffer (enlarged to 1 MiB) is full.

mod tail;

use crate::config::LogSpec;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use tail::Tail;

/// Lines longer than this are written in pieces rather than buffered without bound.
const MAX_LINE: usize = 64 * 1024;
/// Pipe capacity requested from the kernel.
const PIPE_SIZE: i32 = 1 << 20;
/// Bytes one [`Pipe::drain`] moves at most before the loop looks at other events.
const DRAIN_BUDGET: usize = 2 << 20;
/// The first read of a drain: enough for what a service says now and then (uninitialized).
const SMALL_READ: usize = 64 * 1024;
/// Splicing stops this far from the size limit: the rest of the file is filled by whole
/// lines, so the rotation falls between two of them.
const SPLICE_MARGIN: u64 = MAX_LINE as u64;

/// An append-only file rotated by size, keeping `keep` old copies as `.1`, `.2`, …
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
    keep: u32,
    /// Bytes after the file's last newline: the start of a line a splice wrote, which the
    /// same pipe's next bytes end.
    open_line: u64,
    /// Whether the descriptor has `O_APPEND` now: for writes, not splices (the kernel refuses
    /// to splice into an append-mode file, so splices go at an offset instead).
    appending: bool,
    /// Splicing into this file failed once (a file system without it, an append-only
    /// file): lines are read and written from then on.
    no_splice: bool,
}

impl RotatingFile {
    /// Opens (creating) `path` for appending.
    pub fn open(path: PathBuf, spec: &LogSpec) -> io::Result<Self> {
        let file = open_log(&path)?;
        let mut f = RotatingFile {
            path,
            file,
            size: 0,
            max: spec.max_size,
            keep: spec.keep,
            open_line: 0,
            appending: true,
            no_splice: false,
        };
        f.measure()?;
        Ok(f)
    }

    /// A copy sharing the open file (a duplicated descriptor), to stand in for this one
    /// while a [`Scribe`] has it.
    fn twin(&self) -> io::Result<Self> {
        Ok(RotatingFile {
            path: self.path.clone(),
            file: self.file.try_clone()?,
            size: self.size,
            max: self.max,
            keep: self.keep,
            open_line: self.open_line,
            appending: self.appending,
            no_splice: self.no_splice,
        })
    }

    /// Learns the size of a newly opened file and whether it ends in a line begun by a
    /// splice (the previous image of this supervisor left it for the pipe it carried).
    fn measure(&mut self) -> io::Result<()> {
        self.size = self.file.metadata()?.len();
        self.appending = true;
        self.open_line = match last_line_end(&self.file, 0, self.size)? {
            Some(end) => self.size - end,
            None => self.size.min(MAX_LINE as u64),
        };
        Ok(())
    }

    /// Writes whole lines, rotating first when they would not fit.
    pub fn write_lines(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = self.max.saturating_sub(self.size) as usize;
            if data.len() <= room {
                return self.append(data);
            }
            // Fill up to the last line boundary that fits, then rotate.
            let cut = data[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1);
            match cut {
                Some(n) => {
                    self.append(&data[..n])?;
                    data = &data[n..];
                    self.rotate()?;
                }
                // Nothing fits: a fresh file takes the line even if it is oversized.
                None if self.size > 0 => self.rotate()?,
                None => {
                    let n = data
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(data.len(), |i| i + 1);
                    self.append(&data[..n])?;
                    data = &data[n..];
                }
            }
        }
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.appending {
            fcntl(self.file.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_APPEND))?;
            self.appending = true;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }

    /// Whether a splice may write here now: room enough that no rotation can be near.
    fn splices(&self) -> bool {
        !self.no_splice && self.max.saturating_sub(self.size) > SPLICE_MARGIN
    }

    /// Moves what `pipe` holds (at most up to the splice margin) into the file inside the
    /// kernel, through `relay`; returns the offset where the first line it touched starts,
    /// the new end and how many bytes came from the pipe. `Ok(None)`: every writer has
    /// closed `pipe`.
    ///
    /// The relay is why this is fast. Moving pages from pipe to pipe copies nothing and
    /// holds the service's pipe only for that; the copy into the file is then made under
    /// the relay's lock alone, while the service goes on writing into its pipe. Splicing
    /// straight from the service's pipe would hold its lock for the whole copy, making the
    /// service's copy into the pipe and baton's into the file take turns.
    fn splice_from(
        &mut self,
        pipe: BorrowedFd<'_>,
        relay: &Relay,
    ) -> io::Result<Option<(u64, u64, usize)>> {
        if self.appending {
            fcntl(self.file.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty()))?;
            self.appending = false;
        }
        let room = self.max.saturating_sub(self.size + SPLICE_MARGIN);
        let len = room.min(PIPE_SIZE as u64) as usize;
        let moved = crate::sys::splice(pipe, relay.write.as_fd(), None, len)?;
        if moved == 0 {
            return Ok(None);
        }
        // The file's end, not the size counted: a `copytruncate` may have emptied it, and a
        // splice at the old offset would leave a hole.
        let end = nix::unistd::lseek(self.file.as_raw_fd(), 0, nix::unistd::Whence::SeekEnd)?;
        let start = u64::try_from(end).map_err(io::Error::other)?;
        if start < self.size {
            self.open_line = 0;
        }
        let mut at = start;
        while at < start + moved as u64 {
            let left = (start + moved as u64 - at) as usize;
            match crate::sys::splice(relay.read.as_fd(), self.file.as_fd(), Some(&mut at), left) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.size = at;
                    return Err(e);
                }
            }
        }
        self.size = at;
        let first = start - self.open_line.min(start);
        self.open_line = match last_line_end(&self.file, start, at)? {
            Some(line_end) => at - line_end,
            None => self.open_line + moved as u64,
        };
        // An overlong line is ended where it is, as one read would end it (`Pipe::take`).
        if self.open_line >= MAX_LINE as u64 {
            self.file.write_all_at(b"\n", at)?;
            self.size += 1;
            self.open_line = 0;
        }
        Ok(Some((first, self.size, moved)))
    }

    /// Writes the start of a line (no newline in it) that the pipe's next bytes continue.
    fn begin_line(&mut self, start: &[u8]) -> io::Result<()> {
        self.append(start)?;
        self.open_line += start.len() as u64;
        Ok(())
    }

    /// Takes the unfinished line a splice left at the end of the file back out of it, so
    /// the file ends with a whole line again; an overlong one is ended where it is instead.
    fn take_open_line(&mut self) -> io::Result<Vec<u8>> {
        let n = std::mem::take(&mut self.open_line);
        if n == 0 {
            return Ok(Vec::new());
        }
        let end = self.file.metadata()?.len();
        if n >= MAX_LINE as u64 || n > end {
            self.end_line_at(end)?;
            return Ok(Vec::new());
        }
        let mut line = vec![0u8; n as usize];
        self.file.read_exact_at(&mut line, end - n)?;
        self.file.set_len(end - n)?;
        self.size = end - n;
        Ok(line)
    }

    /// Ends a line a splice began and no pipe will finish (its writer is gone).
    fn end_line(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.open_line) > 0 {
            let end = self.file.metadata()?.len();
            self.end_line_at(end)?;
        }
        Ok(())
    }

    fn end_line_at(&mut self, end: u64) -> io::Result<()> {
        self.open_line = 0;
        if end > 0 {
            self.append(b"\n")?;
        }
        Ok(())
    }

    /// Renames `f` to `f.1` (shifting older copies) and starts a new `f`.
    ///
    /// Every rename and the new file are relative to the log directory's descriptor:
    /// the service user owns that directory and may have planted links in it.
    pub fn rotate(&mut self) -> io::Result<()> {
        let (dir, base) = crate::files::split(&self.path)?;
        let name = |i: u32| {
            let mut p = base.clone();
            p.push(format!(".{i}"));
            p
        };
        if self.keep == 0 {
            dir.remove(&base)?;
        } else {
            for i in (1..self.keep).rev() {
                match dir.rename(&name(i), &name(i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            dir.rename(&base, &name(1))?;
        }
        self.file = dir
            .open_log(&base, 0o640)
            .map_err(|e| open_error(&self.path, e))?;
        self.measure()
    }

    /// Starts writing to a new file at the same path (after an external logrotate moved the old one).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_log(&self.path)?;
        self.measure()
    }
}

/// Where the last line in `[from, to)` of `file` ends (the offset after its newline),
/// looking back at most [`MAX_LINE`] bytes from `to`; `None` if no newline is there.
fn last_line_end(file: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    let floor = from.max(to.saturating_sub(MAX_LINE as u64));
    let mut buf = [0u8; 4096];
    // A small first look: a line's end is usually among the last few bytes.
    let mut want = 512;
    let mut end = to;
    while end > floor {
        let start = end.saturating_sub(want).max(floor);
        let got = &mut buf[..(end - start) as usize];
        file.read_exact_at(got, start)?;
        if let Some(i) = got.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64 + 1));
        }
        end = start;
        want = buf.len() as u64;
    }
    Ok(None)
}

/// baton's own pipe between a service's pipe and a log file (see [`RotatingFile::splice_from`]).
struct Relay {
    read: OwnedFd,
    write: OwnedFd,
}

impl Relay {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // As large as the service's pipe, so that one move can empty it.
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Ok(Relay { read, write })
    }

    /// What a failed splice left in the relay, so that it is written another way.
    fn take(&self) -> Vec<u8> {
        let mut left = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
            left.extend_from_slice(&buf[..n]);
        }
        left
    }
}

/// Opens a log file through [`crate::files`]: a planted link is refused, never followed.
fn open_log(path: &std::path::Path) -> io::Result<File> {
    crate::files::open_log(path, 0o640).map_err(|e| open_error(path, e))
}

/// "unable to open /var/log/web/stdout.log: it is a symbolic link, ...": the path first.
fn open_error(path: &std::path::Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("unable to open {}: {e}", path.display()))
}

/// `t` as RFC 3339 UTC with microseconds (`2026-11-29T06:11:08.123456Z`), as baton.log's events.
///
/// Fixed width, so the text sorts in time order: `baton logs` merges streams by it.
pub fn stamp(t: std::time::SystemTime) -> String {
    let (_, secs) = crate::deploy::release::utc_stamps(t);
    let micros = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros());
    format!("{}.{micros:06}Z", secs.trim_end_matches('Z'))
}

/// Who sees each line of output, if anyone (a log probe waiting for its line).
pub type LineWatcher<'a, 'f> = Option<&'a mut (dyn FnMut(StreamKind, &str) + 'f)>;

/// Which of the service's streams a pipe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

/// The read end of one service pipe, with the partial line not yet written.
pub struct Pipe {
    fd: OwnedFd,
    /// Which stream this is.
    pub kind: StreamKind,
    /// The leader of the instance writing to it (two instances run during a deploy).
    pub owner: Pid,
    partial: Vec<u8>,
}

/// What one read from a pipe produced.
pub enum Drained {
    /// More may come.
    Open,
    /// Every writer has closed the pipe.
    Closed,
}

impl Pipe {
    /// Wraps a pipe read end: non-blocking, with a large buffer to absorb bursts.
    pub fn new(fd: OwnedFd, kind: StreamKind, owner: Pid) -> Self {
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        // Best effort: an unprivileged process may be capped by /proc/sys/fs/pipe-max-size.
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Pipe {
            fd,
            kind,
            owner,
            partial: Vec::new(),
        }
    }

    /// For the poll set.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A pipe a previous image of this supervisor read (`baton reexec`), with the start of
    /// a line it had read but not yet written.
    pub fn inherited(fd: OwnedFd, kind: StreamKind, owner: Pid, partial: Vec<u8>) -> Self {
        let mut p = Pipe::new(fd, kind, owner);
        p.partial = partial;
        p
    }

    /// The start of a line read but not yet ended, to carry across a reexec.
    pub fn partial(&self) -> &[u8] {
        &self.partial
    }

    /// Moves what is available (bounded, to stay fair to other events) into the log file
    /// and whole lines to `out`'s tail and to `on_line`.
    ///
    /// `alone`: no other pipe writes the same file now, so its bytes may be spliced
    /// straight into it when nobody needs to see the lines.
    pub fn drain<'f>(
        &mut self,
        out: &mut Output,
        mut on_line: LineWatcher<'_, 'f>,
        alone: bool,
    ) -> Drained {
        let mut budget = DRAIN_BUDGET;
        for _ in 0..16 {
            let step = if alone && on_line.is_none() && out.splices(self.kind) {
                self.splice(out)
            } else {
                self.drain_lines(out, on_line.as_deref_mut(), alone, budget)
            };
            match step {
                Step::More(n) if n >= budget => break,
                Step::More(n) => budget -= n,
                Step::Done(d) => return d,
            }
        }
        Drained::Open
    }

    /// Reads lines (at most `budget` bytes), after taking back what a splice left
    /// unfinished; stops as soon as splicing may take over again (past a rotation).
    ///
    /// A read of stamped lines that fills the small buffer means a flood: from then on
    /// (until the loop sheds its memory, [`Output::shed`]) reads go into a buffer as large
    /// as the pipe, so that one read, one clock reading and one write move a pipeful. A
    /// service that prints now and then never touches more than the small buffer.
    fn drain_lines<'f>(
        &mut self,
        out: &mut Output,
        mut on_line: LineWatcher<'_, 'f>,
        alone: bool,
        budget: usize,
    ) -> Step {
        // Only here: splicing never allocates these 64 KiB; a read touches only the bytes it
        // gets (never zeroed, not on the stack: see sys::ReadBuf). Made at the first read.
        let mut small = None;
        let mut large = out.read_buf.take();
        self.settle(out);
        let mut moved = 0;
        let mut step = Step::More(0);
        for _ in 0..16 {
            let buf = match large.as_mut() {
                Some(large) => large,
                None => small.get_or_insert_with(|| crate::sys::ReadBuf::new(SMALL_READ)),
            };
            // What the read may fill: `read` puts a short partial line first.
            let head = self.partial.len();
            let room = buf.capacity() - if head <= buf.capacity() / 2 { head } else { 0 };
            match self.read(buf, out, on_line.as_deref_mut()) {
                Step::More(n) => {
                    moved += n;
                    // Stamped only: unstamped lines are read near a size limit or while
                    // a probe watches, and splicing takes over again within 64 KiB.
                    if n == room && large.is_none() && out.timestamps {
                        large = Some(crate::sys::ReadBuf::new(PIPE_SIZE as usize));
                    }
                }
                done @ Step::Done(_) => {
                    step = done;
                    break;
                }
            }
            if moved >= budget || (alone && on_line.is_none() && out.splices(self.kind)) {
                break;
            }
        }
        out.read_buf = large;
        match step {
            Step::More(_) => Step::More(moved),
            done => done,
        }
    }

    /// One splice of the pipe into the file.
    fn splice(&mut self, out: &mut Output) -> Step {
        let kind = self.kind;
        if !self.partial.is_empty() {
            // The line lines-mode left unfinished goes first; the spliced bytes end it.
            let start = std::mem::take(&mut self.partial);
            if let Err(e) = out.file(kind).begin_line(&start) {
                self.partial = start;
                return out.no_splice(kind, &e);
            }
        }
        let relay = match out.relay() {
            Ok(r) => r,
            Err(e) => return out.no_splice(kind, &e),
        };
        match out.file(kind).splice_from(self.fd.as_fd(), &relay) {
            Ok(Some((from, to, moved))) => {
                out.relay = Some(relay);
                out.tail.spliced(kind, from, to);
                Step::More(moved)
            }
            Ok(None) => {
                out.relay = Some(relay);
                if let Err(e) = out.file(kind).end_line() {
                    out.write_failed(kind, &e);
                }
                Step::Done(Drained::Closed)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                out.relay = Some(relay);
                Step::Done(Drained::Open)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                out.relay = Some(relay);
                Step::More(0)
            }
            Err(e) => {
                // Bytes moved but not written are this pipe's next bytes: they go first.
                self.partial = relay.take();
                out.no_splice(kind, &e)
            }
        }
    }

    /// Before lines are read again: the unfinished line a splice left in the file comes
    /// back in front of the partial line, and the tail learns what was spliced.
    pub fn settle(&mut self, out: &mut Output) {
        let line = out.settle(self.kind);
        if !line.is_empty() {
            let rest = std::mem::replace(&mut self.partial, line);
            self.partial.extend_from_slice(&rest);
        }
    }

    /// One read of the pipe, its whole lines handed to `out`.
    fn read<'f>(
        &mut self,
        buf: &mut crate::sys::ReadBuf,
        out: &mut Output,
        on_line: LineWatcher<'_, 'f>,
    ) -> Step {
        // The line the last read left unfinished goes first in the buffer, so the
        // lines it completes are one slice: no copy of each read onto that line.
        buf.clear();
        if self.partial.len() <= buf.capacity() / 2 {
            buf.put(&self.partial);
            self.partial.clear();
        }
        let head = buf.filled().len();
        let got = buf.read_from(self.fd.as_raw_fd());
        if !matches!(got, Ok(n) if n > 0) {
            self.partial.extend_from_slice(&buf.filled()[..head]);
        }
        match got {
            Ok(0) => {
                if !self.partial.is_empty() {
                    self.partial.push(b'\n');
                    let rest = std::mem::take(&mut self.partial);
                    out.emit(self.kind, self.owner, &rest, on_line);
                }
                Step::Done(Drained::Closed)
            }
            Ok(n) => {
                self.take(buf.filled(), out, on_line);
                Step::More(n)
            }
            Err(nix::errno::Errno::EAGAIN) => Step::Done(Drained::Open),
            Err(nix::errno::Errno::EINTR) => Step::More(0),
            Err(e) => {
                tracing::warn!("unable to read service {:?}: {e}", self.kind);
                Step::Done(Drained::Closed)
            }
        }
    }

    fn take<'f>(&mut self, data: &[u8], out: &mut Output, mut on_line: LineWatcher<'_, 'f>) {
        match data.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                let (lines, rest) = data.split_at(last + 1);
                if self.partial.is_empty() {
                    out.emit(self.kind, self.owner, lines, on_line.as_deref_mut());
                } else {
                    self.partial.extend_from_slice(lines);
                    let joined = std::mem::take(&mut self.partial);
                    out.emit(self.kind, self.owner, &joined, on_line.as_deref_mut());
                }
                self.partial.extend_from_slice(rest);
            }
            None => self.partial.extend_from_slice(data),
        }
        if self.partial.len() >= MAX_LINE {
            self.partial.push(b'\n');
            let long = std::mem::take(&mut self.partial);
            out.emit(self.kind, self.owner, &long, on_line);
        }
    }
}

/// What one step of [`Pipe::drain`] left.
enum Step {
    /// Go on: there may be more (this many bytes were moved).
    More(usize),
    /// Stop with this.
    Done(Drained),
}

/// The two log files and the recent-lines tail, shared by every instance of the service.
pub struct Output {
    stdout: RotatingFile,
    stderr: RotatingFile,
    tail: Tail,
    /// Made at the first splice, kept for the next (see [`RotatingFile::splice_from`]).
    relay: Option<Relay>,
    /// Whether lines get the `TIME [PID] ` prefix ([`stamp`]).
    timestamps: bool,
    /// Reused for prefixed blocks, so a flood allocates once (until [`Output::shed`]).
    scratch: Vec<u8>,
    /// The read buffer of a flood (see [`Pipe::drain_lines`]); empty until one comes.
    read_buf: Option<crate::sys::ReadBuf>,
    /// During a stamped flood, the thread writing the blocks (see [`Scribe`]). While it
    /// runs, it has the files: `stdout` and `stderr` here are stale twins that every use
    /// but [`Output::emit`] first calls back ([`Output::flush`]).
    scribe: Option<Scribe>,
}

/// A thread that writes the stamped blocks of a flood while the loop reads and stamps the
/// next ones: the write into the page cache is most of a stamped flood's cost, and on its
/// own thread it runs beside the read instead of after it. One thread and a queue of one
/// block keep the blocks in order and bound the memory; it exists only during a flood
/// (started by a block as large as a read of a flood, ended when the files are needed
/// here or when the loop sheds its memory), so an idle supervisor has no thread.
struct Scribe {
    /// Blocks to write: which file, the buffer, how many of its bytes. A queue of one:
    /// the loop stamps the next block while this one is written, and waits (back-pressure,
    /// as a slow write) when it is two blocks ahead.
    jobs: std::sync::mpsc::SyncSender<(StreamKind, Vec<u8>, usize)>,
    /// Buffers written, for the next blocks.
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Gives the files back when `jobs` closes, once every block is written.
    thread: std::thread::JoinHandle<[RotatingFile; 2]>,
}

impl Scribe {
    /// Starts a thread writing to `files` (stdout's, stderr's).
    fn start(files: [RotatingFile; 2]) -> io::Result<Scribe> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(StreamKind, Vec<u8>, usize)>(1);
        // Bounded and made here: the thread's sends never block (three buffers at most
        // exist) and never allocate, so it makes no malloc arena of its own.
        let (back, spent) = std::sync::mpsc::sync_channel(3);
        let thread = std::thread::Builder::new()
            .name("baton-logs".into())
            // It only writes and rotates: a small stack, fewer pages touched.
            .stack_size(256 << 10)
            .spawn(move || {
                let mut files = files;
                for (kind, block, n) in queue {
                    let file = match kind {
                        StreamKind::Stdout => &mut files[0],
                        StreamKind::Stderr => &mut files[1],
                    };
                    if let Err(e) = file.write_lines(&block[..n]) {
                        write_error(file, &e);
                    }
                    let _ = back.send(block);
                }
                files
            })?;
        Ok(Scribe {
            jobs,
            spent,
            thread,
        })
    }
}

/// "unable to write service output to PATH: cause", in baton.log.
fn write_error(file: &RotatingFile, e: &io::Error) {
    tracing::error!(
        "unable to write service output to {}: {e}",
        file.path.display()
    );
}

impl Output {
    /// Opens `stdout.log` and `stderr.log` in the log directory.
    pub fn open(spec: &LogSpec) -> io::Result<Self> {
        Ok(Output {
            stdout: RotatingFile::open(spec.dir.join("stdout.log"), spec)?,
            stderr: RotatingFile::open(spec.dir.join("stderr.log"), spec)?,
            tail: Tail::default(),
            relay: None,
            timestamps: spec.timestamps,
            scratch: Vec::new(),
            read_buf: None,
            scribe: None,
        })
    }

    /// Gives back the buffers and the thread a flood needed: the loop is quiet, and an idle
    /// supervisor should keep neither resident.
    pub fn shed(&mut self) {
        self.flush();
        self.scratch = Vec::new();
        self.read_buf = None;
    }

    /// Waits until every block read so far is in its file, and takes the files back from
    /// the [`Scribe`] if one runs (before a reexec, and before any other use of the files).
    pub fn flush(&mut self) {
        let Some(scribe) = self.scribe.take() else {
            return;
        };
        drop(scribe.jobs);
        // Err only if the thread panicked (never in a release build: panics abort); the
        // twins here then go on, a rotation it made aside.
        if let Ok([stdout, stderr]) = scribe.thread.join() {
            self.stdout = stdout;
            self.stderr = stderr;
        }
    }

    /// Hands the files to a new [`Scribe`], unless one runs, a file ends in an unfinished
    /// line (which only the pipe's next read may end), or a twin or the thread cannot be
    /// made (then blocks are written here, as always).
    fn start_scribe(&mut self) {
        if self.scribe.is_some() || self.stdout.open_line > 0 || self.stderr.open_line > 0 {
            return;
        }
        let (Ok(stdout), Ok(stderr)) = (self.stdout.twin(), self.stderr.twin()) else {
            return;
        };
        let stdout = std::mem::replace(&mut self.stdout, stdout);
        let stderr = std::mem::replace(&mut self.stderr, stderr);
        match Scribe::start([stdout, stderr]) {
            Ok(s) => self.scribe = Some(s),
            Err(e) => {
                tracing::warn!("unable to start a thread writing the logs: {e}");
            }
        }
    }

    fn file(&mut self, kind: StreamKind) -> &mut RotatingFile {
        self.flush();
        match kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        }
    }

    /// Whether `kind`'s bytes may go to its file unread: no prefix to add, room to spare.
    fn splices(&self, kind: StreamKind) -> bool {
        let file = match kind {
            StreamKind::Stdout => &self.stdout,
            StreamKind::Stderr => &self.stderr,
        };
        !self.timestamps && file.splices()
    }

    /// Makes the relay now, while the supervisor is awake anyway, if output will be spliced
    /// and there is none: the first splice otherwise makes it, often at the service's exit
    /// after a long sleep (its last bytes, or the end of its pipes), on the way to a respawn
    /// or to the end of a stop. Failing here only means that splice makes it.
    pub fn prepare_relay(&mut self) {
        let splices = self.splices(StreamKind::Stdout) || self.splices(StreamKind::Stderr);
        if splices && self.relay.is_none() {
            self.relay = Relay::new().ok();
        }
    }

    /// The relay, taken out while a splice uses it (made if there is none yet).
    fn relay(&mut self) -> io::Result<Relay> {
        match self.relay.take() {
            Some(r) => Ok(r),
            None => Relay::new(),
        }
    }

    /// Splicing into `kind`'s file failed: say so once and read lines from now on.
    fn no_splice(&mut self, kind: StreamKind, e: &io::Error) -> Step {
        let file = self.file(kind);
        file.no_splice = true;
        tracing::warn!(
            "unable to splice service output into {}: {e}; reading it line by line instead",
            file.path.display()
        );
        Step::More(0)
    }

    fn write_failed(&mut self, kind: StreamKind, e: &io::Error) {
        // The twin's path is the file's: no need to call the scribe back for it.
        write_error(
            match kind {
                StreamKind::Stdout => &self.stdout,
                StreamKind::Stderr => &self.stderr,
            },
            e,
        );
    }

    /// Before `kind`'s lines are written whole again: the tail reads what was spliced while
    /// it is still in this file, and the unfinished line a splice left comes back out.
    fn settle(&mut self, kind: StreamKind) -> Vec<u8> {
        if self.scribe.is_some() {
            // Nothing to settle: a scribe starts only when neither file ends in an
            // unfinished line, and only splices make one (a stamped output never splices,
            // so it has no spliced range for the tail either).
            return Vec::new();
        }
        let file = match kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        };
        self.tail.resolve(kind, &file.file);
        match file.take_open_line() {
            Ok(line) => line,
            Err(e) => {
                self.write_failed(kind, &e);
                Vec::new()
            }
        }
    }

    /// Ends the line a splice began in `kind`'s file if no pipe is left to end it (a new
    /// instance's lines must not continue it).
    pub fn end_line(&mut self, kind: StreamKind) {
        if let Err(e) = self.file(kind).end_line() {
            self.write_failed(kind, &e);
        }
    }

    /// Writes a block of whole lines, keeps its last lines for the tail, and shows
    /// every line to `on_line` when someone (a log probe) is watching.
    fn emit<'f>(
        &mut self,
        kind: StreamKind,
        owner: Pid,
        lines: &[u8],
        on_line: LineWatcher<'_, 'f>,
    ) {
        if self.timestamps {
            self.stamp_block(kind, owner, lines);
        } else {
            self.flush();
            let file = match kind {
                StreamKind::Stdout => &mut self.stdout,
                StreamKind::Stderr => &mut self.stderr,
            };
            if let Err(e) = file.write_lines(lines) {
                self.write_failed(kind, &e);
            }
        }
        if let Some(f) = on_line {
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                f(kind, &String::from_utf8_lossy(line));
            }
        }
        self.tail.lines(lines);
    }

    /// Writes `lines` with the `TIME [PID] ` prefix: by the [`Scribe`] during a flood,
    /// else here.
    fn stamp_block(&mut self, kind: StreamKind, owner: Pid, lines: &[u8]) {
        // One clock read per block: every line in it reached baton at that moment.
        let prefix = format!("{} [{owner}] ", stamp(std::time::SystemTime::now()));
        if lines.len() >= SMALL_READ / 2 {
            self.start_scribe();
        }
        let Some(scribe) = &self.scribe else {
            let n = prefix_lines(&mut self.scratch, prefix.as_bytes(), lines);
            let file = match kind {
                StreamKind::Stdout => &mut self.stdout,
                StreamKind::Stderr => &mut self.stderr,
            };
            if let Err(e) = file.write_lines(&self.scratch[..n]) {
                self.write_failed(kind, &e);
            }
            return;
        };
        // A written buffer if one is back, else a new one: at most three exist (one being
        // written, one queued, this one).
        let mut block = scribe.spent.try_recv().unwrap_or_default();
        let n = prefix_lines(&mut block, prefix.as_bytes(), lines);
        // Blocks while the queue is full: back-pressure, as a slow write would be.
        if let Err(std::sync::mpsc::SendError((_, block, n))) = scribe.jobs.send((kind, block, n)) {
            // The thread is gone (it never ends while `jobs` is open): write here.
            self.flush();
            let file = self.file(kind);
            if let Err(e) = file.write_lines(&block[..n]) {
                self.write_failed(kind, &e);
            }
        }
    }

    /// The last lines the service printed, oldest first (what was spliced is read back
    /// from the files).
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.tail.last(n, |kind| match kind {
            StreamKind::Stdout => &self.stdout.file,
            StreamKind::Stderr => &self.stderr.file,
        })
    }

    /// Reopens both files (for external logrotate). The pipes must be settled first
    /// ([`Pipe::settle`]), so that no line begun in the old file ends in the new one.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.flush();
        self.tail.resolve(StreamKind::Stdout, &self.stdout.file);
        self.tail.resolve(StreamKind::Stderr, &self.stderr.file);
        self.stdout.reopen()?;
        self.stderr.reopen()
    }
}

impl Drop for Output {
    /// Every block read reaches its file before the supervisor goes.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Puts `prefix` before every line of `lines` (whole lines) in `out`, whose length is
/// its room (zeroed once, when it grows); returns how many bytes of `out` were filled.
///
/// A flood spends its time here: memchr finds each line's end, and each line is then
/// two copies into memory already there (no capacity check or allocation per line).
fn prefix_lines(out: &mut Vec<u8>, prefix: &[u8], lines: &[u8]) -> usize {
    let mut at = 0;
    let mut start = 0;
    while start < lines.len() {
        let end = memchr::memchr(b'\n', &lines[start..]).map_or(lines.len(), |i| start + i + 1);
        let line = &lines[start..end];
        let next = at + prefix.len() + line.len();
        if next > out.len() {
            // Lines of 100 bytes or more make the block at most 36% longer.
            out.resize(next.max(at + (lines.len() - start) * 3 / 2), 0);
        }
        out[at..at + prefix.len()].copy_from_slice(prefix);
        out[at + prefix.len()..next].copy_from_slice(line);
        at = next;
        start = end;
    }
    at
}

/// The supervisor's own event log (`baton.log`), reopenable for external logrotate.
#[derive(Clone)]
pub struct EventLog {
    /// Rotated like the service's output; `None` writes to stderr.
    file: std::sync::Arc<std::sync::Mutex<Option<RotatingFile>>>,
    /// Events that came while held ([`EventLog::hold`]), in order, written at the release.
    held: std::sync::Arc<std::sync::Mutex<Option<Vec<Held>>>>,
}

/// An event kept until the release: when it happened, and its line after the time.
enum Held {
    /// A tracing event, formatted when it came.
    Line(std::time::SystemTime, String),
    /// An INFO event of `target` whose message is made at the release ([`EventLog::later`]).
    Later(
        std::time::SystemTime,
        &'static str,
        Box<dyn FnOnce() -> String + Send>,
    ),
}

impl Held {
    fn line(self) -> String {
        let (at, rest) = match self {
            Held::Line(at, rest) => (at, rest),
            Held::Later(at, target, message) => {
                (at, format!("  INFO {}: {}", shown(target), message()))
            }
        };
        let mut line = stamp(at);
        line.push_str(&rest);
        line.push('\n');
        line
    }
}

/// An event's target as baton.log names it: the module path under `baton`, the name the
/// crate had before the core became a binary of its own (`baton-core`, whose crate name
/// is `baton_core`); the lines read as they always did.
fn shown(target: &str) -> std::borrow::Cow<'_, str> {
    match target.strip_prefix("baton_core") {
        Some(rest) if rest.is_empty() || rest.starts_with("::") => format!("baton{rest}").into(),
        _ => target.into(),
    }
}

impl EventLog {
    /// Appends to `baton.log` in the log directory, rotated by the same rules as the
    /// service's files. A link planted there is refused (an error); if the file cannot be
    /// opened for another reason, events go to stderr.
    pub fn open(spec: &LogSpec) -> io::Result<Self> {
        let file = match RotatingFile::open(spec.dir.join("baton.log"), spec) {
            Ok(f) => Some(f),
            // Refused by files.rs (a link, a stranger's file): the operator must hear of it.
            Err(e) if e.kind() == io::ErrorKind::Other => return Err(e),
            Err(_) => None,
        };
        Ok(EventLog {
            file: std::sync::Arc::new(std::sync::Mutex::new(file)),
            held: std::sync::Arc::default(),
        })
    }

    /// Events to stderr (foreground use).
    pub fn stderr() -> Self {
        EventLog {
            file: std::sync::Arc::new(std::sync::Mutex::new(None)),
            held: std::sync::Arc::default(),
        }
    }

    /// Keeps the lines of events from now on in memory until [`EventLog::release`]: the
    /// supervisor's wake on an exit writes its lines after the respawn, not before it (the
    /// write to the log file touches pages the spawn does not need). Order and timestamps
    /// stay those of the events.
    pub fn hold(&self) {
        if let Ok(mut held) = self.held.lock() {
            held.get_or_insert_with(Vec::new);
        }
    }

    /// Writes what was held, in one write, and stops holding.
    pub fn release(&self) {
        let held = self.held.lock().ok().and_then(|mut h| h.take());
        if let Some(held) = held.filter(|h| !h.is_empty()) {
            let lines: String = held.into_iter().map(Held::line).collect();
            let _ = EventWriter(self.clone()).write(lines.as_bytes());
        }
    }

    /// Says an INFO event of `target` whose message `message` makes: at the release when
    /// held (so that nothing is formatted before the wake's decisive act), else now.
    pub fn later(&self, target: &'static str, message: impl FnOnce() -> String + Send + 'static) {
        let now = std::time::SystemTime::now();
        if let Ok(mut held) = self.held.lock() {
            if let Some(held) = held.as_mut() {
                held.push(Held::Later(now, target, Box::new(message)));
                return;
            }
        }
        let line = Held::Later(now, target, Box::new(message)).line();
        let _ = EventWriter(self.clone()).write(line.as_bytes());
    }

    /// Reopens the file at its path.
    pub fn reopen(&self) {
        if let Ok(mut guard) = self.file.lock() {
            if let Some(f) = guard.as_mut() {
                let _ = f.reopen();
            }
        }
    }
}

/// A handle tracing writes one event through.
pub struct EventWriter(EventLog);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.file.lock() {
            Ok(mut guard) => match guard.as_mut() {
                // tracing hands over one whole formatted event per call.
                Some(f) => f.write_lines(buf).map(|()| buf.len()),
                None => io::stderr().write(buf),
            },
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The supervisor's events, one line each: `TIME  LEVEL target: message` (the format
/// tracing-subscriber's `fmt` wrote), at INFO and above.
///
/// baton records events only, never spans: this needs no span registry, whose slab
/// (32 KiB) stayed resident in every idle supervisor.
pub struct EventSubscriber(pub EventLog);

impl tracing::Subscriber for EventSubscriber {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        let now = std::time::SystemTime::now();
        let mut rest = format!(" {:>5} {}: ", meta.level(), shown(meta.target()));
        event.record(&mut Fields(&mut rest));
        if let Ok(mut held) = self.0.held.lock() {
            if let Some(held) = held.as_mut() {
                held.push(Held::Line(now, rest));
                return;
            }
        }
        // One write per event, so a rotation never splits one.
        let line = Held::Line(now, rest).line();
        let _ = EventWriter(self.0.clone()).write(line.as_bytes());
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Writes an event's fields: the message as it reads, any other field as ` name=value`.
struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = if field.name() == "message" {
            write!(self.0, "{value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    /// An event log in a fresh directory named for `tag`.
    fn scratch_log(tag: &str) -> (std::path::PathBuf, EventLog) {
        let dir = std::env::temp_dir().join(format!("baton-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let spec = LogSpec {
            dir: dir.clone(),
            max_size: 1 << 20,
            keep: 1,
            timestamps: true,
        };
        let log = EventLog::open(&spec).expect("open");
        (dir, log)
    }

    #[test]
    fn events_read_time_level_target_message() {
        let (dir, log) = scratch_log("events");
        tracing::subscriber::with_default(EventSubscriber(log), || {
            tracing::info!("spawned {} (pid {})", "svc", 42);
            tracing::warn!(code = 3, "unable to write");
            tracing::debug!("not shown");
        });
        let text = std::fs::read_to_string(dir.join("baton.log")).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // 2026-11-29T06:11:08.123456Z: fixed width, so `baton logs` can merge by it.
        let (time, rest) = lines[0].split_at(27);
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert_eq!(
            rest,
            "  INFO baton::logs::event_tests: spawned svc (pid 42)"
        );
        assert_eq!(
            &lines[1][27..],
            "  WARN baton::logs::event_tests: unable to write code=3"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn held_events_are_written_at_the_release_in_order_and_in_the_same_form() {
        let (dir, log) = scratch_log("held");
        let read = || std::fs::read_to_string(dir.join("baton.log")).unwrap_or_default();
        tracing::subscriber::with_default(EventSubscriber(log.clone()), || {
            log.later("baton::supervisor", || "before the hold".into());
            log.hold();
            log.later("baton::supervisor", || {
                "service (pid 7) exited with code 3".into()
            });
            tracing::info!("spawned {} (pid {})", "svc", 8);
            log.later("baton::supervisor", || "svc: stopping -> restarting".into());
            assert_eq!(read().lines().count(), 1, "nothing written while held");
            log.release();
            log.later("baton::supervisor", || "after the release".into());
        });
        let text = read();
        let rest: Vec<&str> = text.lines().map(|l| &l[27..]).collect();
        assert_eq!(
            rest,
            [
                "  INFO baton::supervisor: before the hold",
                "  INFO baton::supervisor: service (pid 7) exited with code 3",
                "  INFO baton::logs::event_tests: spawned svc (pid 8)",
                "  INFO baton::supervisor: svc: stopping -> restarting",
                "  INFO baton::supervisor: after the release",
            ],
            "{text}"
        );
        // The times are the events', not the release's: in order, and fixed width.
        let times: Vec<&str> = text.lines().map(|l| &l[..27]).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{text}");
        assert!(times.iter().all(|t| t.ends_with('Z')), "{text}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, max: u64, keep: u32) -> LogSpec {
        LogSpec {
            dir: dir.to_path_buf(),
            max_size: max,
            keep,
            timestamps: true,
        }
    }

    #[test]
    fn rotation_keeps_every_line_whole() {
        let dir = std::env::temp_dir().join(format!("baton-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut f = RotatingFile::open(dir.join("out.log"), &spec(&dir, 100, 100)).expect("open");
        let mut all = String::new();
        for i in 0..50 {
            let chunk = format!("line {i:03} xxxxxxxxxx\nline {i:03} yyyyy\n");
            all.push_str(&chunk);
            f.write_lines(chunk.as_bytes()).expect("write");
        }
        // Concatenate oldest to newest and compare: nothing lost, nothing split.
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .collect();
        let idx = |p: &PathBuf| {
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u32>().ok())
                .unwrap_or(0)
        };
        files.sort_by_key(|p| std::cmp::Reverse(idx(p)));
        let mut joined = String::new();
        for p in &files {
            let body = std::fs::read_to_string(p).expect("read");
            assert!(
                body.len() as u64 <= 100,
                "{} is {} bytes",
                p.display(),
                body.len()
            );
            assert!(body.ends_with('\n'), "{} ends mid-line", p.display());
            joined.push_str(&body);
        }
        assert_eq!(joined, all);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn lines_split_across_reads_and_overlong_lines_come_out_whole_and_in_order() {
        let dir = std::env::temp_dir().join(format!("baton-logs-pipe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut spec = spec(&dir, 1 << 30, 1);
        spec.timestamps = false;
        let mut out = Output::open(&spec).expect("open");
        // Close-on-exec: a child another test spawns must not hold the write end open.
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let mut pipe = Pipe::new(r, StreamKind::Stdout, Pid::from_raw(1));
        let mut w = File::from(w);
        let mut sent = Vec::new();
        let mut send = |w: &mut File, pipe: &mut Pipe, out: &mut Output, bytes: &[u8]| {
            w.write_all(bytes).expect("write");
            sent.extend_from_slice(bytes);
            assert!(matches!(pipe.drain(out, None, true), Drained::Open));
        };
        send(&mut w, &mut pipe, &mut out, b"first li");
        send(&mut w, &mut pipe, &mut out, b"ne\nsecond\nthi");
        // 100 KiB with no newline, in pieces a default pipe takes: longer than MAX_LINE.
        for _ in 0..10 {
            send(&mut w, &mut pipe, &mut out, &[b'x'; 10 * 1024]);
        }
        send(&mut w, &mut pipe, &mut out, b"rd\nlast");
        drop(w);
        // EOF once every copy of the write end is closed (a fork in flight may hold one).
        while let Drained::Open = pipe.drain(&mut out, None, true) {
            let mut fds = [nix::poll::PollFd::new(
                pipe.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            assert_eq!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20_000u16)),
                Ok(1),
                "no EOF within 20 s"
            );
        }
        let text = std::fs::read(dir.join("stdout.log")).expect("read");
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        assert_eq!(lines[0], b"first line");
        assert_eq!(lines[1], b"second");
        assert!(text.ends_with(b"rd\nlast\n"));
        // A line is cut once MAX_LINE is reached: a piece holds at most one read more.
        assert!(
            lines.iter().all(|l| l.len() < 2 * MAX_LINE),
            "a line over the cap"
        );
        assert!(lines.len() > 4, "the 100 KiB line was not cut");
        let strip = |v: &[u8]| {
            v.iter()
                .copied()
                .filter(|&b| b != b'\n')
                .collect::<Vec<u8>>()
        };
        assert_eq!(strip(&text), strip(&sent), "bytes lost or reordered");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_line_of_a_block_gets_the_prefix_once_whatever_its_length() {
        // Empty and one-byte lines make the block grow past its first guess; the last piece
        // has no newline (an overlong line's cut) and is prefixed all the same.
        let mut lines = Vec::new();
        let mut expect = Vec::new();
        for i in 0..3000 {
            let line = match i % 4 {
                0 => String::new(),
                1 => "x".to_string(),
                2 => format!("line {i}"),
                _ => "y".repeat(i % 300),
            };
            lines.extend_from_slice(line.as_bytes());
            lines.push(b'\n');
            expect.extend_from_slice(b"P> ");
            expect.extend_from_slice(line.as_bytes());
            expect.push(b'\n');
        }
        lines.extend_from_slice(b"tail");
        expect.extend_from_slice(b"P> tail");
        let mut out = vec![0u8; 16];
        let n = prefix_lines(&mut out, b"P> ", &lines);
        assert_eq!(&out[..n], &expect[..]);
        // The same buffer again, now large enough: the same bytes, nothing left over.
        let n = prefix_lines(&mut out, b"Q> ", b"a\nb\n");
        assert_eq!(&out[..n], b"Q> a\nQ> b\n");
    }

    #[test]
    fn a_stamped_flood_is_in_the_file_once_flushed() {
        let dir = std::env::temp_dir().join(format!("baton-logs-stamped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut out = Output::open(&spec(&dir, 1 << 30, 1)).expect("open");
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let mut pipe = Pipe::new(r, StreamKind::Stdout, Pid::from_raw(4242));
        let mut w = File::from(w);
        // 4 MiB in 256 KiB writes, each drained at once: floods, so a Scribe writes them.
        let n = 40_000;
        let mut sent = 0;
        while sent < n {
            let block: String = (sent..(sent + 2000).min(n))
                .map(|i| format!("line {i:06} {}\n", "z".repeat(87)))
                .collect();
            w.write_all(block.as_bytes()).expect("write");
            sent = (sent + 2000).min(n);
            assert!(matches!(pipe.drain(&mut out, None, true), Drained::Open));
        }
        assert!(
            out.scribe.is_some(),
            "a flood of stamped lines starts a writer thread"
        );
        out.flush();
        assert!(out.scribe.is_none());
        let text = std::fs::read_to_string(dir.join("stdout.log")).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), n, "every line in the file once flushed");
        for (i, line) in lines.iter().enumerate() {
            let (time, rest) = line.split_at(27);
            assert!(
                time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "{line:?}"
            );
            assert_eq!(rest, format!(" [4242] line {i:06} {}", "z".repeat(87)));
        }
        drop(w);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keep_bounds_rotated_copies() {
        let dir = std::env::temp_dir().join(format!("baton-logs-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut f = RotatingFile::open(dir.join("out.log"), &spec(&dir, 10, 2)).expect("open");
        for i in 0..20 {
            f.write_lines(format!("{i:08}\n").as_bytes())
                .expect("write");
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["out.log", "out.log.1", "out.log.2"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("out.log")).expect("r"),
            "00000019\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("out.log.2")).expect("r"),
            "00000017\n"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
