//! Capistrano's layout on one host: `root/releases/ID`, a `current` symlink, `revisions.log`.

use crate::config::Spec;
use crate::error::{Error, Result};
use crate::exit::Action;
use std::path::{Path, PathBuf};

/// The release layout of a service, or an error saying how to configure one.
pub fn root(spec: &Spec) -> Result<&Path> {
    spec.release
        .as_ref()
        .map(|r| r.root.as_path())
        .ok_or_else(|| {
            Error::unable(
                format!("deploy {}", spec.name),
                "its config has no [release] section",
            )
            .code(Action::NotConfigured)
            .hint("add [release] root = \"/var/lib/NAME\" and use {release} in command")
        })
}

/// The ID `current` points to, if any.
pub fn current(spec: &Spec) -> Option<String> {
    let root = spec.release.as_ref()?.root.as_path();
    let target = std::fs::read_link(root.join("current")).ok()?;
    target.file_name()?.to_str().map(str::to_string)
}

/// Release IDs present, oldest first (timestamps sort as text).
pub fn list(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("releases"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The release before `current` in order: what `rollback` hands back to.
pub fn previous(spec: &Spec) -> Result<String> {
    let root = root(spec)?;
    let cur = current(spec).ok_or_else(|| {
        Error::unable(
            format!("roll back {}", spec.name),
            format!("{} does not exist", root.join("current").display()),
        )
        .hint("nothing was deployed yet")
    })?;
    list(root).into_iter().rfind(|id| *id < cur).ok_or_else(|| {
        Error::unable(
            format!("roll back {}", spec.name),
            format!("no release older than the current one ({cur})"),
        )
    })
}

/// A release ID must be one plain path component.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

/// Installs `source` as a release and returns its ID.
///
/// A path already under `root/releases/` is used in place (`ship` uploads there);
/// anything else is copied in as a new timestamped release, a file (an uberjar)
/// into the release directory under its own name.
pub fn install(spec: &Spec, source: &Path) -> Result<String> {
    let root = root(spec)?;
    let what = format!("install release {}", source.display());
    let source = source
        .canonicalize()
        .map_err(|e| Error::io(&what, &e).hint("check the --release path"))?;
    let releases = root.join("releases");
    if source.parent() == releases.canonicalize().ok().as_deref() {
        let id = source
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|id| valid_id(id))
            .ok_or_else(|| {
                Error::unable(&what, "its name is not a usable release ID")
                    .hint("use letters, digits, '-', '_', '.' or '+'")
            })?;
        return Ok(id.to_string());
    }
    std::fs::create_dir_all(&releases)
        .map_err(|e| Error::io(format!("create {}", releases.display()), &e))?;
    let mut id = timestamp();
    // Two deploys within a second must not share a directory.
    let mut n = 1;
    while releases.join(&id).exists() {
        id = format!("{}-{n}", timestamp());
        n += 1;
    }
    // root/ usually belongs to the service user, who could plant links in a predictable
    // temporary directory: copy into a fresh private one, reached only by descriptor.
    let dir = crate::files::Dir::open(&releases)
        .map_err(|e| Error::io(format!("open {}", releases.display()), &e))?;
    let tmp = dir
        .create_private(&format!(".{id}.partial-"))
        .map_err(|e| Error::io(format!("create a directory in {}", releases.display()), &e))?;
    let copied = if source.is_dir() {
        copy_dir(&source, &tmp)
    } else {
        let name = source
            .file_name()
            .unwrap_or(std::ffi::OsStr::new("artifact"));
        copy_file(&source, &tmp, name)
    };
    let tmp_name = tmp
        .path()
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    // Readable by the service user once complete, as releases always were.
    let done = copied
        .and_then(|()| tmp.set_mode(0o755))
        .and_then(|()| dir.rename(&tmp_name, std::ffi::OsStr::new(&id)));
    if let Err(e) = done {
        let _ = std::fs::remove_dir_all(tmp.path());
        return Err(Error::io(&what, &e).hint(format!(
            "check free space and permissions in {}",
            releases.display()
        )));
    }
    Ok(id)
}

/// Copies the tree at `from` into `to`, creating everything anew relative to `to`'s descriptor.
fn copy_dir(from: &Path, to: &crate::files::Dir) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let ty = e.file_type()?;
        let name = e.file_name();
        if ty.is_dir() {
            let sub = to.create_subdir(&name, 0o755)?;
            copy_dir(&e.path(), &sub)?;
        } else if ty.is_symlink() {
            to.symlink(&std::fs::read_link(e.path())?, &name)?;
        } else {
            copy_file(&e.path(), to, &name)?;
        }
    }
    Ok(())
}

/// Copies one file into `to` as `name` (created anew), keeping its permission bits.
fn copy_file(src: &Path, to: &crate::files::Dir, name: &std::ffi::OsStr) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut input = std::fs::File::open(src)?;
    let mode = input.metadata()?.permissions().mode() & 0o777;
    let mut out = to.create_new(name, mode)?;
    std::io::copy(&mut input, &mut out)?;
    // Exactly the source's bits, whatever baton's umask (as fs::copy did).
    out.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Points `current` at release `id` atomically (a new symlink renamed over the old).
pub fn switch_current(root: &Path, id: &str) -> std::io::Result<()> {
    crate::files::Dir::open(root)?.symlink_atomic(
        &Path::new("releases").join(id),
        std::ffi::OsStr::new("current"),
    )
}

/// Appends one line to `root/revisions.log`, Capistrano's audit trail.
///
/// `root` usually belongs to the service user: the log is opened through [`crate::files`],
/// so a link planted as `revisions.log` is refused rather than appended to as root.
pub fn log_revision(root: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = crate::files::open_append(&root.join("revisions.log"), 0o644)?;
    writeln!(f, "{} {line}", utc_stamps(std::time::SystemTime::now()).1)
}

/// Deletes the oldest releases beyond `keep`, never one in `protect`; returns what went.
pub fn prune(root: &Path, keep: u32, protect: &[&str]) -> Vec<String> {
    let ids = list(root);
    let excess = ids.len().saturating_sub(keep as usize);
    let mut gone = Vec::new();
    for id in ids.into_iter().take(excess) {
        if protect.contains(&id.as_str()) {
            continue;
        }
        if std::fs::remove_dir_all(root.join("releases").join(&id)).is_ok() {
            gone.push(id);
        }
    }
    gone
}

/// A handoff to `release` finished: `current` names it, `what` goes to revisions.log, and
/// old releases beyond `keep` go (never one of `protect`); the notes for the operator.
pub fn commit(
    r: &crate::config::ReleaseSpec,
    release: &str,
    what: &str,
    protect: &[&str],
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Err(e) = switch_current(&r.root, release) {
        notes.push(format!(
            "warning: unable to point {} at {release}: {e}",
            r.root.join("current").display()
        ));
    }
    if let Err(e) = log_revision(&r.root, what) {
        tracing::warn!("unable to append to revisions.log: {e}");
    }
    let gone = prune(&r.root, r.keep, protect);
    if !gone.is_empty() {
        notes.push(format!("removed old releases: {}", gone.join(", ")));
    }
    notes
}

/// The directory of release `id`.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join("releases").join(id)
}

/// UTC `YYYYMMDDHHMMSS`, Capistrano's release name.
pub fn timestamp() -> String {
    utc_stamps(std::time::SystemTime::now()).0
}

/// `(YYYYMMDDHHMMSS, YYYY-MM-DDTHH:MM:SSZ)` for `t` in UTC: release names and log times.
pub fn utc_stamps(t: std::time::SystemTime) -> (String, String) {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d, h, mi, s) = civil(secs);
    (
        format!("{y:04}{m:02}{d:02}{h:02}{mi:02}{s:02}"),
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
    )
}

/// Seconds since the epoch to a UTC date and time (Howard Hinnant's days_from_civil inverse).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_795_392_000 + 3661), (2026, 11, 23, 1, 1, 1));
    }

    #[test]
    fn ids_and_pruning() {
        assert!(valid_id("20261122120000"));
        assert!(!valid_id("../x") && !valid_id("a b") && !valid_id(".."));
        let root = std::env::temp_dir().join(format!("baton-rel-{}", std::process::id()));
        for id in ["1", "2", "3", "4", "5"] {
            std::fs::create_dir_all(dir(&root, id)).expect("mkdir");
        }
        switch_current(&root, "2").expect("current");
        assert_eq!(
            std::fs::read_link(root.join("current")).expect("link"),
            Path::new("releases/2")
        );
        let gone = prune(&root, 2, &["2", "5"]);
        assert_eq!(gone, vec!["1", "3"]);
        assert_eq!(list(&root), vec!["2", "4", "5"]);
        std::fs::remove_dir_all(&root).ok();
    }
}
