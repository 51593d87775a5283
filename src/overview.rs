//! Every service in the config directory at a glance: `baton status` without a NAME.

use crate::config::{self, Spec};
use crate::control::Report;
use crate::error::{Error, Result};
use crate::exit::Status;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One service's line: its report and LSB status, and its config when it parses.
pub struct Row {
    /// What `status NAME` reports (for a broken config: its problem).
    pub report: Report,
    /// What `status NAME` exits with.
    pub code: Status,
    /// The validated config; `None` when it does not parse.
    pub spec: Option<Spec>,
}

/// State name of a service whose config cannot be used.
pub const INVALID: &str = "invalid config";

/// The `NAME.toml` files in `dir`, sorted by name.
pub fn configs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::io(format!("list config directory {}", dir.display()), &e)
            .hint("pass --config-dir DIR where the NAME.toml files are")
    })?;
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let is_file = std::fs::metadata(&path).is_ok_and(|m| m.is_file());
            (path.extension()? == "toml" && is_file && !name.starts_with('.'))
                .then(|| (name, std::path::absolute(&path).unwrap_or(path)))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Asks every service in `dir` for its state, all at once; one that does not answer within
/// the status timeout (plus a second) is reported "unknown" instead of holding up the rest.
pub fn gather(dir: &Path) -> Result<Vec<Row>> {
    let configs = configs(dir)?;
    let (tx, rx) = mpsc::channel();
    for (i, (name, file)) in configs.iter().enumerate() {
        let (tx, name, file) = (tx.clone(), name.clone(), file.clone());
        // Detached: a supervisor that hangs past the deadline leaves its thread behind,
        // which ends with the process.
        std::thread::spawn(move || {
            let _ = tx.send((i, row(&name, &file)));
        });
    }
    drop(tx);
    let mut rows: Vec<Option<Row>> = configs.iter().map(|_| None).collect();
    let deadline = Instant::now() + crate::service::STATUS_TIMEOUT + Duration::from_secs(1);
    while let Ok((i, row)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rows[i] = Some(row);
    }
    Ok(rows
        .into_iter()
        .zip(configs)
        .map(|(row, (name, _))| {
            row.unwrap_or_else(|| Row {
                report: Report {
                    name,
                    state: "unknown".into(),
                    problem: Some("the supervisor did not answer in time".into()),
                    ..Report::default()
                },
                code: Status::Unknown,
                spec: None,
            })
        })
        .collect())
}

fn row(name: &str, file: &Path) -> Row {
    match config::load_running(file, name) {
        Ok((mut spec, warnings)) => {
            spec.file = file.to_path_buf();
            let (mut report, code) = crate::service::report(&spec);
            // A program or directory gone since the start: the row says so beside the state.
            if report.problem.is_none() && !warnings.is_empty() {
                report.problem = Some(warnings.join("; "));
            }
            Row {
                report,
                code,
                spec: Some(spec),
            }
        }
        Err(e) => Row {
            report: Report {
                name: name.to_string(),
                state: INVALID.into(),
                problem: Some(one_line(&e)),
                ..Report::default()
            },
            code: Status::Unknown,
            spec: None,
        },
    }
}

/// A config error on one line: the located problems, without the header and the hint.
fn one_line(e: &Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("hint:"))
        .collect();
    match lines.as_slice() {
        [only] => only.to_string(),
        [_header, problems @ ..] => problems.join("; "),
        [] => text,
    }
}

/// `baton status` without NAME: prints every service and returns 0 only if all run.
pub fn status(dir: &Path, json: bool) -> Result<Status> {
    let rows = gather(dir)?;
    if json {
        let all: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| crate::service::status_json(&r.report, r.code))
            .collect();
        println!("{}", serde_json::Value::Array(all));
    } else if rows.is_empty() {
        eprintln!("no services: {} holds no NAME.toml", dir.display());
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", table(&rows, colour));
    }
    Ok(if rows.iter().all(|r| r.code == Status::Running) {
        Status::Running
    } else {
        Status::NotRunning
    })
}

const HEADER: [&str; 7] = [
    "NAME",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "RELEASE",
    "LAST EXIT",
];

/// Aligned columns; only the state is coloured, after padding, so escapes never skew widths.
fn table(rows: &[Row], colour: bool) -> String {
    let cells: Vec<[String; 7]> = rows.iter().map(|r| cells(&r.report)).collect();
    let mut width = HEADER.map(str::len);
    for c in &cells {
        for (w, cell) in width.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cols: &[String; 7], state_colour: Option<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cols.iter().zip(width).enumerate() {
            let last = i == cols.len() - 1;
            let padded = if last {
                cell.clone()
            } else {
                format!("{cell:<w$}  ")
            };
            match (i, state_colour) {
                (1, Some(c)) => out.push_str(&format!("\x1b[{c}m{padded}\x1b[0m")),
                _ => out.push_str(&padded),
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEADER.map(String::from), None);
    for (r, c) in rows.iter().zip(&cells) {
        out.push_str(&line(c, colour.then(|| ansi(&r.report.state))));
    }
    out
}

fn cells(r: &Report) -> [String; 7] {
    let dash = || "-".to_string();
    let mut last = r.last_exit.clone().unwrap_or_else(dash);
    if let Some(p) = &r.problem {
        last = if r.last_exit.is_some() {
            format!("{last}; {p}")
        } else {
            p.clone()
        };
    }
    [
        r.name.clone(),
        r.state.clone(),
        r.service_pid.map_or_else(dash, |p| p.to_string()),
        r.uptime_secs.map_or_else(dash, |s| uptime(s as u64)),
        if r.supervisor_pid.is_some() {
            r.restarts.to_string()
        } else {
            dash()
        },
        r.release.clone().unwrap_or_else(dash),
        last,
    ]
}

/// SGR colour for a state: green serving, yellow on its way, red needs a human.
fn ansi(state: &str) -> &'static str {
    match state {
        "ready" => "32",
        "starting" | "restarting" | "stopping" => "33",
        "not running" | "stopped" => "2",
        _ => "31",
    }
}

/// The two largest units, as `ps` and `uptime` print them: `3d4h`, `2h05m`, `4m07s`, `12s`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_keeps_two_units() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(247), "4m07s");
        assert_eq!(uptime(7500), "2h05m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 59), "3d4h");
    }

    #[test]
    fn table_aligns_and_colours_only_the_state() {
        let rows = vec![
            Row {
                report: Report {
                    name: "web".into(),
                    state: "ready".into(),
                    ready: true,
                    supervisor_pid: Some(10),
                    service_pid: Some(4242),
                    uptime_secs: Some(65.0),
                    release: Some("20261129061100".into()),
                    ..Report::default()
                },
                code: Status::Running,
                spec: None,
            },
            Row {
                report: Report {
                    name: "a-longer-name".into(),
                    state: INVALID.into(),
                    problem: Some("x.toml:3: ready.timeout: bad".into()),
                    ..Report::default()
                },
                code: Status::Unknown,
                spec: None,
            },
        ];
        let plain = table(&rows, false);
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 3, "{plain}");
        let col = |l: &str, word: &str| l.find(word).expect(word);
        assert_eq!(col(lines[0], "STATE"), col(lines[1], "ready"));
        assert_eq!(col(lines[0], "STATE"), col(lines[2], INVALID));
        assert_eq!(col(lines[0], "RELEASE"), col(lines[1], "2026"));
        assert!(lines[1].contains("1m05s") && lines[1].contains("4242"));
        assert!(lines[2].ends_with("x.toml:3: ready.timeout: bad"));
        assert!(!plain.contains('\x1b'));
        let coloured = table(&rows, true);
        assert!(coloured.contains("\x1b[32mready"));
        assert_eq!(coloured.matches('\x1b').count(), 4, "{coloured:?}");
    }
}
