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

/// The variables every instance starts from, before `env_file` and `env` (which `spec.env` holds).
pub fn base(spec: &Spec) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), SAFE_PATH.into()),
        ("LANG".into(), DEFAULT_LANG.into()),
    ];
    let me;
    let (name, home, shell) = match &spec.account {
        Some(a) => (a.name.clone(), a.home.clone(), a.shell.clone()),
        None => {
            // No `user`: the service runs as baton's own account, so that is whose these are.
            me = User::from_uid(Uid::effective()).ok().flatten();
            match &me {
                Some(u) => (u.name.clone(), u.dir.clone(), u.shell.clone()),
                None => (String::new(), "/".into(), "/bin/sh".into()),
            }
        }
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
