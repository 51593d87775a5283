//! What the operator sees: one live line per host on a terminal, plain progress lines otherwise, a final table.

use super::report::{HostReport, Outcome};
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

/// The phases the final table and JSON report time, in order.
pub const PHASES: [&str; 4] = ["connect", "upload", "deploy", "verify"];

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// The final table: host, old version, new version, duration and each phase's, result.
pub fn table(reports: &[HostReport]) -> String {
    let mut rows: Vec<Vec<String>> = vec![[
        "HOST", "OLD", "NEW", "TIME", "CONNECT", "UPLOAD", "DEPLOY", "VERIFY", "RESULT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()];
    for r in reports {
        let mut row = vec![
            r.host.clone(),
            cell(&r.old),
            cell(&r.new),
            match r.outcome {
                Outcome::Skipped => "-".into(),
                _ => secs(Some(r.took)),
            },
        ];
        // A rollback's single step shows under DEPLOY: it is the handoff.
        for p in PHASES {
            let d = r
                .phase(p)
                .or_else(|| (p == "deploy").then(|| r.phase("rollback")).flatten());
            row.push(secs(d));
        }
        row.push(r.outcome.to_string());
        rows.push(row);
    }
    let n = rows[0].len();
    let mut w = vec![0usize; n];
    for row in &rows {
        for (i, c) in row.iter().enumerate().take(n - 1) {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i == n - 1 {
                line.push_str(c);
            } else if i >= 3 {
                line.push_str(&format!("{c:>w$}  ", w = w[i]));
            } else {
                line.push_str(&format!("{c:w$}  ", w = w[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The final report as JSON: one object per host, durations in seconds.
pub fn json(reports: &[HostReport], what: &str, env: &str, took: Duration) -> serde_json::Value {
    let hosts: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let (result, step, reason) = match &r.outcome {
                Outcome::Ok => ("ok", None, None),
                Outcome::Failed { step, reason } => ("failed", Some(*step), Some(reason.clone())),
                Outcome::Skipped => ("skipped", None, None),
                Outcome::RolledBack => ("rolled back", None, None),
            };
            let phases: serde_json::Map<String, serde_json::Value> = r
                .phases
                .iter()
                .map(|(p, d)| (p.to_string(), serde_json::json!(d.as_secs_f64())))
                .collect();
            serde_json::json!({
                "host": r.host,
                "old": r.old,
                "new": r.new,
                "result": result,
                "failed_step": step,
                "reason": reason,
                "secs": r.took.as_secs_f64(),
                "phases": phases,
            })
        })
        .collect();
    serde_json::json!({
        "what": what,
        "environment": env,
        "ok": reports.iter().all(|r| r.outcome == Outcome::Ok),
        "secs": took.as_secs_f64(),
        "hosts": hosts,
    })
}
