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
