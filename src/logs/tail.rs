//! The last lines the service printed (for failure reports and status): text when baton
//! read them, a range of the log file when they were spliced, read back when asked for.

use super::StreamKind;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// How many recent entries are kept; each holds at least one line.
const KEEP: usize = 40;
/// How far back from its end a spliced range is read for its last lines.
const READ_BACK: u64 = 64 * 1024;

/// One entry, oldest first in [`Tail`].
enum Recent {
    /// A line baton read.
    Line(String),
    /// Lines spliced into `kind`'s current file: those whose newline lies in `from..to`.
    Spliced {
        kind: StreamKind,
        from: u64,
        to: u64,
    },
}

/// The recent output of both streams in the order it arrived.
#[derive(Default)]
pub struct Tail {
    recent: VecDeque<Recent>,
}

impl Tail {
    /// Keeps the last lines of a block of whole lines.
    pub fn lines(&mut self, block: &[u8]) {
        // Only the block's last lines can end up in the tail: no per-line work on a flood.
        let mut last: Vec<&[u8]> = block
            .rsplit(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .take(KEEP)
            .collect();
        last.reverse();
        for line in last {
            self.push(Recent::Line(String::from_utf8_lossy(line).into_owned()));
        }
    }

    /// Records that `kind`'s file got the lines ending in `from..to` by splice (`from` is
    /// where the first of them starts, maybe before an earlier splice's end).
    pub fn spliced(&mut self, kind: StreamKind, from: u64, to: u64) {
        if let Some(Recent::Spliced {
            kind: k, to: end, ..
        }) = self.recent.back_mut()
        {
            if *k == kind {
                *end = to;
                return;
            }
        }
        self.push(Recent::Spliced { kind, from, to });
    }

    /// Turns `kind`'s spliced ranges into lines, read from `file` while it still holds them
    /// (before it is rotated, reopened or its unfinished line taken back).
    pub fn resolve(&mut self, kind: StreamKind, file: &File) {
        let mine = |r: &Recent| matches!(r, Recent::Spliced { kind: k, .. } if *k == kind);
        if !self.recent.iter().any(mine) {
            return;
        }
        for r in std::mem::take(&mut self.recent) {
            match r {
                Recent::Spliced { kind: k, from, to } if k == kind => {
                    for line in read_lines(file, from, to, KEEP) {
                        self.push(Recent::Line(line));
                    }
                }
                other => self.push(other),
            }
        }
    }

    /// The last `n` lines, oldest first; `file` gives the file a stream's ranges are in.
    pub fn last<'a>(&self, n: usize, file: impl Fn(StreamKind) -> &'a File) -> Vec<String> {
        let mut newest_first: Vec<String> = Vec::new();
        for r in self.recent.iter().rev() {
            let want = n.saturating_sub(newest_first.len());
            if want == 0 {
                break;
            }
            match r {
                Recent::Line(l) => newest_first.push(l.clone()),
                Recent::Spliced { kind, from, to } => {
                    newest_first
                        .extend(read_lines(file(*kind), *from, *to, want).into_iter().rev());
                }
            }
        }
        newest_first.reverse();
        newest_first
    }

    fn push(&mut self, r: Recent) {
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }
}

/// The last `n` non-empty lines of `file` whose newline lies in `from..to`, oldest first.
/// Nothing if the file no longer holds them (a `copytruncate` emptied it).
fn read_lines(file: &File, from: u64, to: u64, n: usize) -> Vec<String> {
    let start = from.max(to.saturating_sub(READ_BACK));
    let mut buf = vec![0u8; to.saturating_sub(start) as usize];
    if file.read_exact_at(&mut buf, start).is_err() {
        return Vec::new();
    }
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        return Vec::new();
    };
    let mut lines: Vec<&[u8]> = buf[..end].split(|&b| b == b'\n').collect();
    if start > from {
        // The window starts inside a line: that piece is not the whole line.
        lines.remove(0);
    }
    lines.retain(|l| !l.is_empty());
    let skip = lines.len().saturating_sub(n);
    lines[skip..]
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}
