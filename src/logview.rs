//! `baton logs`: the service's recent output read from its log files, merged by time, and followed.
//!
//! Reads only the files, so it works for a stopped service and never disturbs the
//! supervisor. Each line of stdout.log and stderr.log is stored as `TIME [PID] TEXT`
//! (see [`crate::logs::stamp`]); baton.log's events start with the same kind of time.
//! Both instances of a deploy write to the same files, each line marked with its PID.
//! Following is driven by inotify on the log directory; a rotated file is read to its
//! end before its successor, found by inode, so no line is skipped or repeated.

use crate::config::Spec;
use crate::error::{Error, Result};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A log stream of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stream {
    /// The service's standard output (stdout.log).
    Stdout,
    /// The service's standard error (stderr.log).
    Stderr,
    /// baton's own events for the service (baton.log).
    Events,
}

impl Stream {
    fn file(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout.log",
            Stream::Stderr => "stderr.log",
            Stream::Events => "baton.log",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Events => "events",
        }
    }
}

/// What `baton logs` was asked for.
pub struct Options {
    /// Lines printed from the end.
    pub lines: usize,
    /// Keep printing new lines.
    pub follow: bool,
    /// Streams to show; empty means stdout and stderr.
    pub streams: Vec<Stream>,
}

/// One line of one stream, with the time it starts with (inherited by lines that carry none).
struct Line {
    time: String,
    stream: Stream,
    text: String,
}

/// The fixed-width RFC 3339 time a line starts with, if it does.
fn time_of(line: &str) -> Option<&str> {
    let t = line.get(..27)?;
    let b = t.as_bytes();
    let shape = b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[26] == b'Z';
    shape.then_some(t)
}

/// Prints the last lines, then (with `follow`) new ones as they are written.
pub fn run(spec: &Spec, opts: &Options) -> Result<()> {
    let mut streams: Vec<Stream> = Vec::new();
    for s in &opts.streams {
        if !streams.contains(s) {
            streams.push(*s);
        }
    }
    if streams.is_empty() {
        streams = vec![Stream::Stdout, Stream::Stderr];
    }
    let dir = &spec.log.dir;
    if !dir.is_dir() {
        return Err(Error::unable(
            format!("read the logs of {}", spec.name),
            format!("{} does not exist", dir.display()),
        )
        .hint("the service has never run with this config, or [log] dir points elsewhere"));
    }
    // Watch before reading, so nothing written in between is missed.
    let watch = if opts.follow {
        let ino =
            Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| Error::errno("set up inotify", e))?;
        let mask = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE;
        ino.add_watch(dir, mask)
            .map_err(|e| Error::errno(format!("watch {}", dir.display()), e))?;
        Some(ino)
    } else {
        None
    };
    let tagged = streams.len() > 1;
    let mut followers = Vec::new();
    let mut recent = Vec::new();
    for &stream in &streams {
        let mut f = Follower::new(stream, dir, spec.log.keep);
        recent.extend(
            f.tail(opts.lines).map_err(|e| {
                Error::io(format!("read {}", dir.join(stream.file()).display()), &e)
            })?,
        );
        followers.push(f);
    }
    let mut out = std::io::stdout().lock();
    let skip = recent.len().saturating_sub(opts.lines);
    if !print(&mut out, merge(recent).into_iter().skip(skip), tagged) {
        return Ok(());
    }
    let Some(ino) = watch else {
        return Ok(());
    };
    loop {
        let events = match ino.read_events() {
            Ok(ev) => ev,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::errno(format!("watch {}", dir.display()), e)),
        };
        let mut batch = Vec::new();
        for f in &mut followers {
            let touched = events.iter().any(|e| {
                e.name
                    .as_ref()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(f.stream.file()))
            });
            if touched {
                batch.extend(
                    f.catch_up()
                        .map_err(|e| Error::io(format!("read {}", f.path.display()), &e))?,
                );
            }
        }
        // Closed stdout (`| head`): done, quietly.
        if !print(&mut out, merge(batch), tagged) {
            return Ok(());
        }
    }
}

/// Stable sort by time: each stream's own order is kept, streams interleave by time.
fn merge(mut lines: Vec<Line>) -> Vec<Line> {
    lines.sort_by(|a, b| a.time.cmp(&b.time));
    lines
}

/// Writes lines, with the stream's name after the time when several are shown; false once
/// stdout is gone.
fn print(out: &mut impl Write, lines: impl IntoIterator<Item = Line>, tagged: bool) -> bool {
    for l in lines {
        let r = if !tagged {
            writeln!(out, "{}", l.text)
        } else if l.text.starts_with(&l.time) && !l.time.is_empty() {
            let rest = l.text[l.time.len()..].trim_start();
            writeln!(out, "{} {} {rest}", l.time, l.stream.tag())
        } else {
            writeln!(out, "{} {}", l.stream.tag(), l.text)
        };
        if r.is_err() {
            return false;
        }
    }
    out.flush().is_ok()
}

/// One stream's files: where reading stands in the file being written.
struct Follower {
    stream: Stream,
    /// The live file (`stdout.log`); rotated copies are `stdout.log.1` …
    path: PathBuf,
    keep: u32,
    file: Option<File>,
    pos: u64,
    partial: Vec<u8>,
    time: String,
    /// A rotated file read to its end whose successor is not open yet (its inode).
    finished: Option<u64>,
}

impl Follower {
    fn new(stream: Stream, dir: &Path, keep: u32) -> Self {
        Follower {
            stream,
            path: dir.join(stream.file()),
            keep,
            file: None,
            pos: 0,
            partial: Vec::new(),
            time: String::new(),
            finished: None,
        }
    }

    fn rotated(&self, i: u32) -> PathBuf {
        if i == 0 {
            return self.path.clone();
        }
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    }

    /// The last `n` lines, reaching back into rotated copies when the live file has fewer;
    /// leaves the live file open at its end for following.
    fn tail(&mut self, n: usize) -> std::io::Result<Vec<Line>> {
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut have = 0;
        for i in 0..=self.keep {
            let file = match File::open(self.rotated(i)) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound && i == 0 => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            let (lines, end) = last_lines(&file, len, n.saturating_sub(have))?;
            if i == 0 {
                self.pos = end;
                self.file = Some(file);
            }
            have += lines.len();
            chunks.push(lines);
            if have >= n {
                break;
            }
        }
        let mut out = Vec::new();
        for text in chunks.into_iter().rev().flatten() {
            out.push(self.line(text));
        }
        Ok(out)
    }

    fn line(&mut self, text: String) -> Line {
        if let Some(t) = time_of(&text) {
            self.time = t.to_string();
        }
        Line {
            time: self.time.clone(),
            stream: self.stream,
            text,
        }
    }

    /// Reads what was written since the last call, following the file through rotations.
    fn catch_up(&mut self) -> std::io::Result<Vec<Line>> {
        let mut out = Vec::new();
        loop {
            if self.file.is_none() {
                let next = match self.finished.take() {
                    Some(ino) => self.successor(ino)?,
                    None => open_existing(&self.path)?,
                };
                match next {
                    Some(f) => {
                        self.file = Some(f);
                        self.pos = 0;
                    }
                    None => return Ok(out),
                }
            }
            self.read_new(&mut out)?;
            let Some(file) = &self.file else {
                return Ok(out);
            };
            let ino = file.metadata()?.ino();
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() == ino => {
                    // Truncated in place (copytruncate): start over at its beginning.
                    if m.len() < self.pos {
                        self.pos = 0;
                        self.read_new(&mut out)?;
                    }
                    return Ok(out);
                }
                _ => {}
            }
            // Rotated away: the writer is done with it; read its last lines, then go on with
            // its successor (found on the next turn, or on a later event if not there yet).
            self.read_new(&mut out)?;
            self.flush_partial(&mut out);
            self.file = None;
            self.finished = Some(ino);
        }
    }

    /// The file written after the one with inode `ino`, however many rotations happened
    /// since; `None` if it does not exist yet.
    fn successor(&mut self, ino: u64) -> std::io::Result<Option<File>> {
        let inode = |p: PathBuf| std::fs::metadata(p).ok().map(|m| m.ino());
        loop {
            // Copies only move to higher numbers, so an ascending search cannot miss it.
            let Some(j) = (1..=self.keep + 1).find(|&i| inode(self.rotated(i)) == Some(ino)) else {
                eprintln!(
                    "baton: lines of {} were rotated away before they could be read",
                    self.path.display()
                );
                return open_existing(&self.path);
            };
            let next = open_existing(&self.rotated(j - 1))?;
            // A rotation renames from the oldest copy down: while `ino` still sits at j, the
            // file at j - 1 has not moved either, so what was opened is its successor.
            if inode(self.rotated(j)) == Some(ino) {
                if next.is_none() {
                    self.finished = Some(ino);
                }
                return Ok(next);
            }
        }
    }

    /// Reads from the open file up to its end; whole lines go to `out`.
    fn read_new(&mut self, out: &mut Vec<Line>) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.pos))?;
        let mut buf = Vec::new();
        let n = file.read_to_end(&mut buf)?;
        self.pos += n as u64;
        self.partial.extend_from_slice(&buf);
        if let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') {
            let rest = self.partial.split_off(last + 1);
            let whole = std::mem::replace(&mut self.partial, rest);
            for l in String::from_utf8_lossy(&whole).lines() {
                let line = self.line(l.to_string());
                out.push(line);
            }
        }
        Ok(())
    }

    /// A rotated file ends in whole lines; anything left is a fragment worth showing anyway.
    fn flush_partial(&mut self, out: &mut Vec<Line>) {
        if !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            let line = self.line(text);
            out.push(line);
        }
    }
}

/// Opens `path` for reading; `None` if it does not exist.
fn open_existing(path: &Path) -> std::io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The last `n` whole lines of `file`'s first `len` bytes, read backwards in blocks, and
/// the offset just past the last whole line (where following starts).
fn last_lines(file: &File, len: u64, n: usize) -> std::io::Result<(Vec<String>, u64)> {
    const BLOCK: u64 = 64 * 1024;
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    // Enough when the buffer holds n line ends before the last one, or the file's start.
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
        let step = BLOCK.min(start);
        start -= step;
        let mut block = vec![0u8; step as usize];
        file.read_exact_at(&mut block, start)?;
        block.extend_from_slice(&buf);
        buf = block;
    }
    let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let end = start + whole as u64;
    let text = String::from_utf8_lossy(&buf[..whole]);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line may begin before the block: drop it, unless it is needed and whole.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok((
        lines.into_iter().skip(skip).map(str::to_string).collect(),
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_across_blocks() {
        let dir = std::env::temp_dir().join(format!("baton-logview-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("x.log");
        let body: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, format!("{body}partial")).expect("write");
        let f = File::open(&p).expect("open");
        let len = f.metadata().expect("meta").len();
        let (lines, end) = last_lines(&f, len, 3).expect("read");
        assert_eq!(lines, vec!["line 19997", "line 19998", "line 19999"]);
        assert_eq!(
            end,
            body.len() as u64,
            "following starts after the last whole line"
        );
        let (all, _) = last_lines(&f, len, 50_000).expect("read");
        assert_eq!(all.len(), 20_000);
        assert_eq!(all[0], "line 0");
        let (none, _) = last_lines(&f, len, 0).expect("read");
        assert!(none.is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn times_are_recognised_and_merge_interleaves() {
        assert_eq!(
            time_of("2026-11-29T06:11:08.123456Z [42] hi"),
            Some("2026-11-29T06:11:08.123456Z")
        );
        assert_eq!(time_of("line 000001 xxx"), None);
        let l = |t: &str, s, x: &str| Line {
            time: t.into(),
            stream: s,
            text: x.into(),
        };
        let merged = merge(vec![
            l("2026-01-01T00:00:01.000000Z", Stream::Stdout, "a"),
            l("2026-01-01T00:00:03.000000Z", Stream::Stdout, "c"),
            l("2026-01-01T00:00:02.000000Z", Stream::Stderr, "b"),
            l("2026-01-01T00:00:03.000000Z", Stream::Stderr, "d"),
        ]);
        let order: Vec<&str> = merged.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }
}
