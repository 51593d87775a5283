//! LSB exit codes, as LSB Core 4.1 "Init Script Actions" defines them.
//!
//! Two tables exist: one for every action but `status`, one for `status`.
//! They overlap numerically but not in meaning, so they are separate types.

/// Exit codes of every action except `status`.
///
/// On the control socket and the readiness pipe they travel as their number and are decoded
/// once, here ([`Action::from_code`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "i32", from = "i32")]
#[allow(dead_code)] // the full LSB table, documented even where baton never fails that way
pub enum Action {
    /// 0: success.
    Ok = 0,
    /// 1: generic or unspecified error.
    Generic = 1,
    /// 2: invalid or excess argument(s).
    BadArgs = 2,
    /// 3: unimplemented feature.
    Unimplemented = 3,
    /// 4: user had insufficient privilege.
    NoPrivilege = 4,
    /// 5: program is not installed.
    NotInstalled = 5,
    /// 6: program is not configured.
    NotConfigured = 6,
    /// 7: program is not running.
    NotRunning = 7,
}

/// Exit codes of `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Status {
    /// 0: program is running or service is OK.
    Running = 0,
    /// 1: program is dead and the PID file exists.
    DeadWithPidfile = 1,
    /// 3: program is not running.
    NotRunning = 3,
    /// 4: program or service status is unknown.
    Unknown = 4,
}

impl Action {
    /// The numeric code handed to `exit(2)`.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The action a number names; a number LSB does not define is a generic error.
    pub fn from_code(code: i32) -> Action {
        match code {
            0 => Action::Ok,
            2 => Action::BadArgs,
            3 => Action::Unimplemented,
            4 => Action::NoPrivilege,
            5 => Action::NotInstalled,
            6 => Action::NotConfigured,
            7 => Action::NotRunning,
            _ => Action::Generic,
        }
    }
}

impl From<i32> for Action {
    fn from(code: i32) -> Action {
        Action::from_code(code)
    }
}

impl From<Action> for i32 {
    fn from(a: Action) -> i32 {
        a.code()
    }
}

impl Status {
    /// The numeric code handed to `exit(2)`.
    pub fn code(self) -> i32 {
        self as i32
    }
}
