//! `deploy` and `rollback` from the operator's side: install the release, ask the supervisor
//! for a handoff, print each step as it happens. The handoff itself is `supervisor::handoff`.

use crate::config::Spec;
use crate::control::Request;
use crate::deploy::release;
use crate::error::{Error, Result};
use crate::pidfile;
use std::path::Path;
use std::time::Duration;

/// `baton deploy NAME --release PATH`: hands over to a new release (and the config on disk) with no failed request.
pub fn deploy(spec: &Spec, source: &Path, keep: Option<u32>) -> Result<()> {
    let root = release::root(spec)?.to_path_buf();
    crate::service::preflight(spec)?;
    let id = release::install(spec, source)?;
    eprintln!(
        "{}: release {id} in {}",
        spec.name,
        release::dir(&root, &id).display()
    );
    hand_over(spec, "deploy", &id)?;
    if let Some(keep) = keep {
        let current = release::current(spec);
        let mut protect: Vec<&str> = vec![&id];
        protect.extend(current.as_deref());
        let gone = release::prune(&root, keep, &protect);
        if !gone.is_empty() {
            eprintln!("removed old releases: {}", gone.join(", "));
        }
    }
    Ok(())
}

/// `baton deploy NAME` without a release: hands over to the current release with the config
/// on disk now, the zero-downtime way to apply a config change.
pub fn reconfigure(spec: &Spec) -> Result<()> {
    crate::service::preflight(spec)?;
    if !pidfile::supervisor_alive(&spec.state_dir)? {
        return Err(Error::unable(
            format!("apply the config of {}", spec.name),
            format!("{} is not running", spec.name),
        )
        .code(crate::exit::Action::NotRunning)
        .hint(format!(
            "`baton start {}` starts it with this config",
            spec.name
        )));
    }
    eprintln!(
        "{}: handing over to a new instance of the serving release with the config in {}",
        spec.name,
        spec.file.display()
    );
    let limit = handoff_limit(spec);
    crate::service::ask_as(
        spec,
        &Request::Reconfigure,
        &format!("apply the config of {}", spec.name),
        limit,
    )
    .map_err(|e| {
        e.hint(format!(
            "`baton status {}` shows what serves now; logs are in {}",
            spec.name,
            spec.log.dir.display()
        ))
    })
}

/// `baton rollback NAME`: the same handoff, back to the release before `current`.
pub fn rollback(spec: &Spec) -> Result<()> {
    crate::service::preflight(spec)?;
    let id = release::previous(spec)?;
    hand_over(spec, "rollback", &id)
}

fn hand_over(spec: &Spec, kind: &str, id: &str) -> Result<()> {
    let root = release::root(spec)?;
    if !pidfile::supervisor_alive(&spec.state_dir)? {
        // Nothing serves, so nothing to hand over from: this release simply starts.
        let before = std::fs::read_link(root.join("current")).ok();
        release::switch_current(root, id).map_err(|e| {
            Error::io(
                format!("point {} at {id}", root.join("current").display()),
                &e,
            )
        })?;
        eprintln!("{} is not running: starting release {id}", spec.name);
        if let Err(e) = crate::service::start(spec) {
            // A release that never started must not stay `current`.
            let prev = before
                .as_ref()
                .and_then(|b| b.file_name())
                .and_then(|n| n.to_str());
            let put_back = match prev {
                Some(prev) => release::switch_current(root, prev),
                None => std::fs::remove_file(root.join("current")),
            };
            if let Err(pe) = put_back {
                eprintln!(
                    "warning: unable to put {} back: {pe}",
                    root.join("current").display()
                );
            }
            return Err(e);
        }
        let who = crate::host::operator().unwrap_or_else(|| "root".into());
        if let Err(e) = release::log_revision(
            root,
            &format!("{who} deployed as release {id} (previous none, started)"),
        ) {
            eprintln!(
                "warning: unable to append to {}: {e}",
                root.join("revisions.log").display()
            );
        }
        return Ok(());
    }
    let limit = handoff_limit(spec);
    let label = format!("{kind} {} to release {id}", spec.name);
    let release = id.to_string();
    let request = match kind {
        "rollback" => Request::Rollback { release },
        _ => Request::Deploy { release },
    };
    crate::service::ask_as(spec, &request, &label, limit).map_err(|e| {
        e.hint(format!(
            "`baton status {}` shows what serves now; logs are in {}",
            spec.name,
            spec.log.dir.display()
        ))
    })
}

/// How long a client waits for a handoff: what the supervisor itself enforces, plus slack
/// for the proxy switch.
fn handoff_limit(spec: &Spec) -> Duration {
    spec.ready
        .timeout
        .saturating_add(spec.deploy.drain_timeout)
        .saturating_add(spec.stop.timeout.saturating_mul(2))
        .saturating_add(Duration::from_secs(60))
}
