//! What the operator sees: one live line per host on a terminal, plain progress lines otherwise, a final table.

use super::rollout::{HostReport, Outcome};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

struct Row {
    host: String,
    step: String,
    detail: String,
    since: Instant,
    done: Option<String>,
}

/// The live view of a rollout.
pub struct View {
    tty: bool,
    rows: Vec<Row>,
    drawn: usize,
    last_draw: Instant,
    started: Instant,
}

impl View {
    /// A view of `hosts`; redrawn in place only when stdout is a terminal.
    pub fn new(hosts: &[String]) -> View {
        let now = Instant::now();
        View {
            tty: std::io::stdout().is_terminal(),
            rows: hosts
                .iter()
                .map(|h| Row {
                    host: h.clone(),
                    step: "waiting".into(),
                    detail: String::new(),
                    since: now,
                    done: None,
                })
                .collect(),
            drawn: 0,
            last_draw: now,
            started: now,
        }
    }

    /// Seconds since the view started, for plain progress lines (logs read like a timeline).
    fn clock(&self) -> String {
        format!("[{:6.1}s]", self.started.elapsed().as_secs_f64())
    }

    fn width(&self) -> usize {
        self.rows.iter().map(|r| r.host.len()).max().unwrap_or(4)
    }

    /// Host `i` started `step`.
    pub fn step(&mut self, i: usize, step: &str) {
        if let Some(r) = self.rows.get_mut(i) {
            r.step = step.to_string();
            r.detail.clear();
            r.since = Instant::now();
        }
        if self.tty {
            self.draw();
        } else if let Some(r) = self.rows.get(i) {
            println!("{} {:w$}  {step}", self.clock(), r.host, w = self.width());
        }
    }

    /// A progress line from host `i`'s current step (baton deploy's stderr).
    pub fn line(&mut self, i: usize, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if let Some(r) = self.rows.get_mut(i) {
            r.detail = line.to_string();
        }
        if self.tty {
            if self.last_draw.elapsed() > Duration::from_millis(100) {
                self.draw();
            }
        } else if let Some(r) = self.rows.get(i) {
            println!(
                "{} {:w$}  {}: {line}",
                self.clock(),
                r.host,
                r.step,
                w = self.width()
            );
        }
    }

    /// A transfer's progress (rsync's redrawn line): only a terminal shows it, logs would drown.
    pub fn progress(&mut self, i: usize, line: &str) {
        if !self.tty {
            return;
        }
        if let Some(r) = self.rows.get_mut(i) {
            r.detail = line
                .split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ");
        }
        if self.last_draw.elapsed() > Duration::from_millis(100) {
            self.draw();
        }
    }

    /// Host `i` finished with `summary`.
    pub fn done(&mut self, i: usize, summary: &str) {
        if let Some(r) = self.rows.get_mut(i) {
            r.done = Some(summary.to_string());
        }
        if self.tty {
            self.draw();
        } else if let Some(r) = self.rows.get(i) {
            println!(
                "{} {:w$}  {summary}",
                self.clock(),
                r.host,
                w = self.width()
            );
        }
    }

    /// Redraws elapsed times on a terminal; nothing otherwise.
    pub fn tick(&mut self) {
        if self.tty && self.last_draw.elapsed() >= Duration::from_millis(250) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let w = self.width();
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for r in &self.rows {
            let text = match &r.done {
                Some(s) => s.clone(),
                None if r.step == "waiting" => "waiting".into(),
                None => {
                    let mut s = format!("{} {:.1}s", r.step, r.since.elapsed().as_secs_f64());
                    if !r.detail.is_empty() {
                        s.push_str("  ");
                        s.push_str(&r.detail);
                    }
                    s
                }
            };
            let mut line = format!("{:w$}  {text}", r.host);
            line.truncate(150);
            out.push_str("\x1b[2K");
            out.push_str(&line);
            out.push('\n');
        }
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(out.as_bytes());
        let _ = so.flush();
        self.drawn = self.rows.len();
        self.last_draw = Instant::now();
    }
}

fn cell(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// The final table: host, old version, new version, duration, result.
pub fn table(reports: &[HostReport]) -> String {
    let mut rows = vec![[
        "HOST".to_string(),
        "OLD".to_string(),
        "NEW".to_string(),
        "TIME".to_string(),
        "RESULT".to_string(),
    ]];
    for r in reports {
        rows.push([
            r.host.clone(),
            cell(&r.old),
            cell(&r.new),
            match r.outcome {
                Outcome::Skipped => "-".into(),
                _ => format!("{:.1}s", r.took.as_secs_f64()),
            },
            r.outcome.to_string(),
        ]);
    }
    let mut w = [0usize; 4];
    for row in &rows {
        for (i, c) in row.iter().take(4).enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {:>w3$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        ));
    }
    out
}
