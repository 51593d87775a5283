//! The one error type: "unable to VERB OBJECT: cause", a hint, and its LSB code.

use crate::exit::Action;
use std::fmt;

/// Something baton could not do, phrased for the operator who has to act on it.
#[derive(Debug)]
pub struct Error {
    /// What baton was trying to do, as "VERB OBJECT" ("start web", "read /etc/baton/web.toml").
    what: String,
    /// Why it failed, already human-readable (may span several lines).
    cause: String,
    /// What the operator can do about it, when there is something to say.
    hint: Option<String>,
    /// The LSB action code this failure maps to.
    code: Action,
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure to do `what`, because of `cause`; LSB code 1 unless changed.
    pub fn unable(what: impl Into<String>, cause: impl fmt::Display) -> Self {
        Error {
            what: what.into(),
            cause: cause.to_string(),
            hint: None,
            code: Action::Generic,
        }
    }

    /// A failure caused by an OS error; permission errors map to LSB code 4.
    pub fn io(what: impl Into<String>, err: &std::io::Error) -> Self {
        let code = if err.kind() == std::io::ErrorKind::PermissionDenied {
            Action::NoPrivilege
        } else {
            Action::Generic
        };
        Error::unable(what, err).code(code)
    }

    /// Same as [`Error::io`] for errno values coming from nix.
    pub fn errno(what: impl Into<String>, err: nix::Error) -> Self {
        Error::io(what, &std::io::Error::from(err))
    }

    /// Overrides the LSB code.
    pub fn code(mut self, code: Action) -> Self {
        self.code = code;
        self
    }

    /// Adds what the operator can do about it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The LSB code the process should exit with.
    pub fn exit_code(&self) -> Action {
        self.code
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unable to {}: {}", self.what, self.cause)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
