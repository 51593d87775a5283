//! Facts about the caller and the host that several parts ask for: who runs baton, where a program is.

/// Who runs this command, for records such as revisions.log and the ship lock: the user
/// behind sudo when there is one.
pub fn operator() -> Option<String> {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty())
}

/// `prog` in the directories of a PATH value, if it is there.
pub fn find_in_path(prog: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The `baton` operators run: the front beside this core (the core's path without its
/// `-core`, see src/front.rs), so what names baton for later runs (init scripts, units)
/// names the front and its short stop; this executable itself when no front is beside it.
pub fn front_path() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(front_of(&exe).filter(|p| p.is_file()).unwrap_or(exe))
}

/// `DIR/NAME` for a core at `DIR/NAME-core`.
fn front_of(core: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let front = core.as_os_str().as_bytes().strip_suffix(b"-core")?;
    (!front.is_empty() && !front.ends_with(b"/")).then(|| std::ffi::OsStr::from_bytes(front).into())
}

#[cfg(test)]
mod tests {
    use super::front_of;
    use std::path::Path;

    #[test]
    fn the_front_is_the_cores_path_without_core() {
        let front = |p: &str| front_of(Path::new(p));
        assert_eq!(
            front("/usr/local/bin/baton-core"),
            Some("/usr/local/bin/baton".into())
        );
        assert_eq!(front("/x/baton.v2-core"), Some("/x/baton.v2".into()));
        assert_eq!(front("/usr/local/bin/baton"), None);
        assert_eq!(front("/usr/local/bin/-core"), None);
    }
}
