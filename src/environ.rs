//! The service's environment: built from nothing, so nothing of the caller's leaks in by accident.
//!
//! Whoever runs `baton start` (root's shell with its PATH, an operator with secrets
//! exported) must not decide what the service sees. It gets a fixed PATH, LANG, the
//! account's HOME/USER/LOGNAME/SHELL, the caller's variables named in `inherit_env`,
//! then `env_file`, then `env` (each later one wins), then what baton itself sets
//! (PORT, BATON_RELEASE, NOTIFY_SOCKET, LISTEN_*).

use crate::config::Spec;
use nix::unistd::{Uid, User};
use std::ffi::OsString;

use crate::config::units::SAFE_PATH;

/// LANG unless the config sets one: UTF-8 without depending on generated locales.
pub const DEFAULT_LANG: &str = "C.UTF-8";

/// Name, home and shell of baton's own account, looked up once per process: a `user`
/// account is resolved once, when the config is read, and so is this one, rather than
/// reading /etc/passwd again on every respawn's path to the spawn.
fn own_account() -> &'static (String, std::path::PathBuf, std::path::PathBuf) {
    static OWN: std::sync::OnceLock<(String, std::path::PathBuf, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    OWN.get_or_init(|| match User::from_uid(Uid::effective()) {
        Ok(Some(u)) => (u.name, u.dir, u.shell),
        _ => (String::new(), "/".into(), "/bin/sh".into()),
    })
}

/// The variables every instance starts from, before `env_file` and `env` (which `spec.env` holds).
pub fn base(spec: &Spec) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), SAFE_PATH.into()),
        ("LANG".into(), DEFAULT_LANG.into()),
    ];
    let (name, home, shell) = match &spec.account {
        Some(a) => (a.name.clone(), a.home.clone(), a.shell.clone()),
        None => own_account().clone(),
    };
    if !name.is_empty() {
        out.push(("USER".into(), name.clone().into()));
        out.push(("LOGNAME".into(), name.into()));
    }
    out.push(("HOME".into(), home.into()));
    out.push(("SHELL".into(), shell.into()));
    for key in &spec.inherit_env {
        if let Some(v) = std::env::var_os(key) {
            out.push((key.into(), v));
        }
    }
    out
}
