//! The service's output: pipes read line-wise into size-rotated files, nothing lost.
//!
//! Only whole lines are written, and rotation happens between two writes, so a
//! rotated file never ends in half a line and no line is dropped. Reading
//! applies back-pressure instead of dropping: a service can be slowed by a slow
//! disk only once its pipe buffer (enlarged to 1 MiB) is full.

use crate::config::LogSpec;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

/// Lines longer than this are written in pieces rather than buffered without bound.
const MAX_LINE: usize = 64 * 1024;
/// How many recent lines are kept for failure reports and status.
const TAIL_LINES: usize = 40;
/// Pipe capacity requested from the kernel.
const PIPE_SIZE: i32 = 1 << 20;

/// An append-only file rotated by size, keeping `keep` old copies as `.1`, `.2`, …
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
    keep: u32,
}

impl RotatingFile {
    /// Opens (creating) `path` for appending.
    pub fn open(path: PathBuf, spec: &LogSpec) -> io::Result<Self> {
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            size,
            max: spec.max_size,
            keep: spec.keep,
        })
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
        self.file.write_all(data)?;
        self.size += data.len() as u64;
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
            .open_append(&base, 0o640)
            .map_err(|e| open_error(&self.path, e))?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }

    /// Starts writing to a new file at the same path (after an external logrotate moved the old one).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }
}

/// Opens a log file through [`crate::files`]: a planted link is refused, never followed.
fn open_append(path: &std::path::Path) -> io::Result<File> {
    crate::files::open_append(path, 0o640).map_err(|e| open_error(path, e))
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

    /// Reads what is available (bounded, to stay fair to other events) and hands whole lines to `out`.
    pub fn drain<'f>(&mut self, out: &mut Output, mut on_line: LineWatcher<'_, 'f>) -> Drained {
        let mut buf = [0u8; 64 * 1024];
        for _ in 0..16 {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    if !self.partial.is_empty() {
                        self.partial.push(b'\n');
                        let rest = std::mem::take(&mut self.partial);
                        out.emit(self.kind, self.owner, &rest, on_line.as_deref_mut());
                    }
                    return Drained::Closed;
                }
                Ok(n) => self.take(&buf[..n], out, on_line.as_deref_mut()),
                Err(nix::errno::Errno::EAGAIN) => return Drained::Open,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("unable to read service {:?}: {e}", self.kind);
                    return Drained::Closed;
                }
            }
        }
        Drained::Open
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

/// The two log files and the recent-lines tail, shared by every instance of the service.
pub struct Output {
    stdout: RotatingFile,
    stderr: RotatingFile,
    tail: VecDeque<String>,
    /// Whether lines get the `TIME [PID] ` prefix ([`stamp`]).
    timestamps: bool,
    /// Reused for prefixed blocks, so a flood allocates once.
    scratch: Vec<u8>,
}

impl Output {
    /// Opens `stdout.log` and `stderr.log` in the log directory.
    pub fn open(spec: &LogSpec) -> io::Result<Self> {
        Ok(Output {
            stdout: RotatingFile::open(spec.dir.join("stdout.log"), spec)?,
            stderr: RotatingFile::open(spec.dir.join("stderr.log"), spec)?,
            tail: VecDeque::with_capacity(TAIL_LINES),
            timestamps: spec.timestamps,
            scratch: Vec::new(),
        })
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
        let file = match kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        };
        let written = if self.timestamps {
            // One clock read per block: every line in it reached baton at that moment.
            let prefix = format!("{} [{owner}] ", stamp(std::time::SystemTime::now()));
            self.scratch.clear();
            for line in lines.split_inclusive(|&b| b == b'\n') {
                self.scratch.extend_from_slice(prefix.as_bytes());
                self.scratch.extend_from_slice(line);
            }
            file.write_lines(&self.scratch)
        } else {
            file.write_lines(lines)
        };
        if let Err(e) = written {
            tracing::error!(
                "unable to write service output to {}: {e}",
                file.path.display()
            );
        }
        if let Some(f) = on_line {
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                f(kind, &String::from_utf8_lossy(line));
            }
        }
        // Only the block's last lines can end up in the tail: no per-line work on a flood.
        let mut last: Vec<&[u8]> = lines
            .rsplit(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .take(TAIL_LINES)
            .collect();
        last.reverse();
        for line in last {
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail
                .push_back(String::from_utf8_lossy(line).into_owned());
        }
    }

    /// The last lines the service printed, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.tail
            .iter()
            .skip(self.tail.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Reopens both files (for external logrotate).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.stdout.reopen()?;
        self.stderr.reopen()
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

/// The supervisor's own event log (`baton.log`), reopenable for external logrotate.
#[derive(Clone)]
pub struct EventLog {
    /// Rotated like the service's output; `None` writes to stderr.
    file: std::sync::Arc<std::sync::Mutex<Option<RotatingFile>>>,
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
        })
    }

    /// Events to stderr (foreground use).
    pub fn stderr() -> Self {
        EventLog {
            file: std::sync::Arc::new(std::sync::Mutex::new(None)),
        }
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
        let mut line = format!(
            "{} {:>5} {}: ",
            stamp(std::time::SystemTime::now()),
            meta.level(),
            meta.target()
        );
        event.record(&mut Fields(&mut line));
        line.push('\n');
        // One write per event, so a rotation never splits one.
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

    #[test]
    fn events_read_time_level_target_message() {
        let dir = std::env::temp_dir().join(format!("baton-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let spec = LogSpec {
            dir: dir.clone(),
            max_size: 1 << 20,
            keep: 1,
            timestamps: true,
        };
        let log = EventLog::open(&spec).expect("open");
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
}
