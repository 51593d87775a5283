//! `baton metrics`: every service's state in the Prometheus text exposition format.
//!
//! Written on demand (by cron or a timer into node_exporter's textfile directory),
//! so the supervisor carries no HTTP server.

use crate::error::{Error, Result};
use crate::overview::Row;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prints (or atomically writes to `output`) the metrics of every service in `dir`.
pub fn run(dir: &Path, output: Option<&Path>) -> Result<()> {
    let rows = crate::overview::gather(dir)?;
    let text = render(&rows, &history(&rows));
    match output {
        None => {
            print!("{text}");
            Ok(())
        }
        // tmp + rename in the same directory: the collector never reads half a file, and
        // the temporary name does not end in .prom, so it is never collected.
        Some(path) => crate::files::write_atomic(path, text.as_bytes(), 0o644)
            .map_err(|e| Error::io(format!("write metrics to {}", path.display()), &e)),
    }
}

/// What revisions.log says about a service's deploys: (count, Unix time of the last).
type Deploys = Option<(u64, f64)>;

fn history(rows: &[Row]) -> Vec<Deploys> {
    rows.iter()
        .map(|r| {
            let root = &r.spec.as_ref()?.release.as_ref()?.root;
            let log = root.join("revisions.log");
            let text = std::fs::read_to_string(&log).ok()?;
            let count = text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
            // The log is only ever appended to, one line per deploy or rollback.
            let mtime = std::fs::metadata(&log).ok()?.modified().ok()?;
            Some((count, unix(mtime)))
        })
        .collect()
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One metric family: its HELP and TYPE lines, then one sample per service that has one.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl Iterator<Item = Option<(String, String)>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples.flatten() {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn render(rows: &[Row], deploys: &[Deploys]) -> String {
    let now = unix(SystemTime::now());
    let service = |r: &Row| format!("service=\"{}\"", escape(&r.report.name));
    let mut out = String::new();
    family(
        &mut out,
        "baton_up",
        "gauge",
        "1 if the service is ready (its probes passed), 0 otherwise.",
        rows.iter()
            .map(|r| Some((service(r), u8::from(r.report.ready).to_string()))),
    );
    family(
        &mut out,
        "baton_status_code",
        "gauge",
        "What `baton status NAME` exits with (LSB: 0 running, 1 dead, 3 not running, 4 unknown).",
        rows.iter()
            .map(|r| Some((service(r), r.code.code().to_string()))),
    );
    family(
        &mut out,
        "baton_restarts_total",
        "counter",
        "Restarts of the service since its supervisor started.",
        rows.iter().map(|r| {
            r.report
                .supervisor_pid
                .map(|_| (service(r), r.report.restarts.to_string()))
        }),
    );
    family(
        &mut out,
        "baton_ready_since_seconds",
        "gauge",
        "Unix time at which the serving instance became ready.",
        rows.iter().map(|r| {
            let up = r.report.uptime_secs.filter(|_| r.report.ready)?;
            Some((service(r), format!("{:.3}", now - up)))
        }),
    );
    family(
        &mut out,
        "baton_deploys_total",
        "counter",
        "Deploys and rollbacks on this host (lines of the release root's revisions.log).",
        rows.iter()
            .zip(deploys)
            .map(|(r, d)| d.map(|(n, _)| (service(r), n.to_string()))),
    );
    family(
        &mut out,
        "baton_last_deploy_seconds",
        "gauge",
        "Unix time of the last deploy or rollback on this host.",
        rows.iter()
            .zip(deploys)
            .map(|(r, d)| d.map(|(_, t)| (service(r), format!("{t:.3}")))),
    );
    family(
        &mut out,
        "baton_release_info",
        "gauge",
        "The release the service runs (when stopped: the one `current` points at); always 1.",
        rows.iter().map(|r| {
            let release = r
                .report
                .release
                .clone()
                .or_else(|| crate::deploy::release::current(r.spec.as_ref()?))?;
            Some((
                format!("{},release=\"{}\"", service(r), escape(&release)),
                "1".into(),
            ))
        }),
    );
    out
}

/// A label value as the exposition format requires: backslash, quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Report;
    use crate::exit::Status;

    #[test]
    fn families_have_help_type_and_escaped_labels() {
        let rows = vec![
            Row {
                report: Report {
                    name: "web".into(),
                    state: "ready".into(),
                    ready: true,
                    supervisor_pid: Some(1),
                    uptime_secs: Some(10.0),
                    restarts: 2,
                    release: Some("r\"1\\".into()),
                    ..Report::default()
                },
                code: Status::Running,
                spec: None,
            },
            Row {
                report: Report {
                    name: "off".into(),
                    state: "not running".into(),
                    ..Report::default()
                },
                code: Status::NotRunning,
                spec: None,
            },
        ];
        let text = render(&rows, &[Some((3, 1_700_000_000.5)), None]);
        for name in [
            "baton_up",
            "baton_restarts_total",
            "baton_ready_since_seconds",
            "baton_deploys_total",
            "baton_last_deploy_seconds",
            "baton_release_info",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{text}");
        }
        assert!(text.contains("baton_up{service=\"web\"} 1\n"));
        assert!(text.contains("baton_up{service=\"off\"} 0\n"));
        assert!(text.contains("baton_restarts_total{service=\"web\"} 2\n"));
        assert!(!text.contains("baton_restarts_total{service=\"off\"}"));
        assert!(text.contains("baton_deploys_total{service=\"web\"} 3\n"));
        assert!(text.contains("baton_last_deploy_seconds{service=\"web\"} 1700000000.500\n"));
        assert!(text.contains("baton_release_info{service=\"web\",release=\"r\\\"1\\\\\"} 1\n"));
    }
}
