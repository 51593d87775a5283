//! What a supervisor hands to its next image across `execve` (`baton reexec`): a typed,
//! versioned record in a memfd, and the descriptors it names kept open across the exec.

use crate::error::{Error, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The record's format; bump it when a field changes meaning. A binary reads only formats
/// it knows, and says so to `__reexec-check` before the running image execs it.
pub const FORMAT: u32 = 1;

/// The environment variable naming the memfd that holds the record.
pub const ENV: &str = "BATON_REEXEC_STATE";

/// Everything the next image needs to carry on supervising without a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Carried {
    /// [`FORMAT`] of the image that wrote it.
    pub format: u32,
    /// The baton version that wrote it.
    pub baton: String,
    /// The executable path the supervisor was started from (and re-executed).
    pub exe: PathBuf,
    /// Supervising in the foreground (`baton run`): events go to stderr.
    pub foreground: bool,
    /// The supervisor lock (a flock held by this open file).
    pub lock: RawFd,
    /// The control socket's listening descriptor.
    pub control: RawFd,
    /// The notify socket, when a probe waits for READY=1.
    pub notify: Option<RawFd>,
    /// The listening socket every instance shares ([listen]).
    pub listener: Option<RawFd>,
    /// The client that asked for the reexec: the new image answers it.
    pub client: Option<RawFd>,
    /// The serving instance.
    pub service: Service,
    /// The output pipes, with what was read of an unfinished line.
    pub pipes: Vec<CarriedPipe>,
    /// Restarts so far (for `status`).
    pub restarts: u32,
    /// How long the serving instance has been ready.
    pub uptime_ms: u64,
    /// The service's cgroup, when tracked by one (else the subreaper's tree).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Why the serving instance is not routed, if its publish failed.
    pub unrouted: Option<String>,
}

/// The serving instance's identity and what it was started with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Service {
    /// Its leader (and process group).
    pub pid: i32,
    /// The leader's start time (/proc), so the next image knows it is the same process.
    pub starttime: u64,
    /// Its port.
    pub port: Option<u16>,
    /// Its release.
    pub release: Option<String>,
    /// Its own cgroup below the service's, when it has one.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// One output pipe's read end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CarriedPipe {
    /// The descriptor.
    pub fd: RawFd,
    /// stdout (true) or stderr.
    pub stdout: bool,
    /// The instance writing to it.
    pub owner: i32,
    /// Bytes of a line not yet ended when the old image stopped reading.
    pub partial: Vec<u8>,
}

impl Carried {
    /// Every descriptor the record names, which must stay open across the exec.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut v = vec![self.lock, self.control];
        v.extend(self.notify);
        v.extend(self.listener);
        v.extend(self.client);
        v.extend(self.pipes.iter().map(|p| p.fd));
        v
    }

    /// Writes the record to a new memfd (kept open across exec); returns it.
    pub fn to_memfd(&self) -> Result<OwnedFd> {
        let text =
            serde_json::to_vec(self).map_err(|e| Error::unable("encode the reexec state", e))?;
        let fd = nix::sys::memfd::memfd_create(
            c"baton-reexec",
            nix::sys::memfd::MemFdCreateFlag::empty(),
        )
        .map_err(|e| Error::errno("create the reexec state memfd", e))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(&text)
            .and_then(|()| f.rewind())
            .map_err(|e| Error::io("write the reexec state", &e))?;
        Ok(OwnedFd::from(f))
    }

    /// Reads the record from the memfd named by [`ENV`], taking ownership of it.
    pub fn from_env() -> Result<Option<Carried>> {
        let Ok(v) = std::env::var(ENV) else {
            return Ok(None);
        };
        std::env::remove_var(ENV);
        let fd: RawFd = v.parse().map_err(|_| {
            Error::unable(
                "read the reexec state",
                format!("{ENV}={v:?} is not a descriptor"),
            )
        })?;
        let fd = crate::sys::inherited(fd)
            .map_err(|e| Error::io(format!("read the reexec state from descriptor {fd}"), &e))?;
        let mut f = std::fs::File::from(fd);
        let mut text = Vec::new();
        f.read_to_end(&mut text)
            .map_err(|e| Error::io("read the reexec state", &e))?;
        Self::decode(&text).map(Some)
    }

    /// Parses a record, refusing a format this baton does not know.
    pub fn decode(text: &[u8]) -> Result<Carried> {
        let v: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| Error::unable("read the reexec state", e))?;
        let format = v.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(FORMAT)) {
            return Err(Error::unable(
                "read the reexec state",
                format!(
                    "format {} written by baton {}; this baton {} reads format {FORMAT}",
                    format.map_or("?".to_string(), |f| f.to_string()),
                    v.get("baton").and_then(|b| b.as_str()).unwrap_or("?"),
                    crate::control::VERSION
                ),
            ));
        }
        serde_json::from_value(v).map_err(|e| Error::unable("read the reexec state", e))
    }
}

/// Lets `fd` cross (`keep`) or not cross an exec.
pub fn keep_across_exec(fd: RawFd, keep: bool) -> Result<()> {
    let flags = if keep {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(drop)
        .map_err(|e| Error::errno(format!("mark descriptor {fd} for exec"), e))
}

/// Takes ownership of a descriptor named by the record (close-on-exec again); Err if it is not open.
pub fn adopt(fd: RawFd) -> Result<OwnedFd> {
    crate::sys::inherited(fd)
        .map_err(|e| Error::io(format!("adopt descriptor {fd} of the previous image"), &e))
}

/// Replaces this image with `exe --config CONFIG __resume NAME`, the record's memfd named
/// in the environment. The signal mask survives execve, so a signal that comes meanwhile
/// waits for the new image's signalfd. Returns only if the exec failed.
pub fn exec(exe: &Path, config: &Path, name: &str, state: RawFd) -> Error {
    use std::os::unix::ffi::OsStrExt;
    let c = |s: &std::ffi::OsStr| std::ffi::CString::new(s.as_bytes());
    let argv: std::result::Result<Vec<_>, _> = [
        exe.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "__resume".as_ref(),
        name.as_ref(),
    ]
    .into_iter()
    .map(c)
    .collect();
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter(|(k, _)| k != ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            std::ffi::CString::new(kv).ok()
        })
        .collect();
    env.extend(std::ffi::CString::new(format!("{ENV}={state}")).ok());
    let (Ok(path), Ok(argv)) = (c(exe.as_os_str()), argv) else {
        return Error::unable("execute baton", "a path holds a NUL byte");
    };
    match nix::unistd::execve(&path, &argv, &env) {
        Err(e) => Error::errno(format!("execute {}", exe.display()), e),
        Ok(never) => match never {},
    }
}

/// The raw number of an owned descriptor, for the record.
pub fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Carried {
        Carried {
            format: FORMAT,
            baton: "0.1.0".into(),
            exe: "/usr/bin/baton".into(),
            foreground: false,
            lock: 3,
            control: 4,
            notify: None,
            listener: Some(5),
            client: Some(6),
            service: Service {
                pid: 42,
                starttime: 7,
                port: Some(8080),
                release: Some("r1".into()),
                cgroup: None,
            },
            pipes: vec![CarriedPipe {
                fd: 7,
                stdout: true,
                owner: 42,
                partial: b"half a li".to_vec(),
            }],
            restarts: 1,
            uptime_ms: 1500,
            cgroup: Some("/sys/fs/cgroup/baton/web.1a2b".into()),
            unrouted: None,
        }
    }

    #[test]
    fn the_record_round_trips_and_names_every_descriptor() {
        let c = sample();
        let text = serde_json::to_vec(&c).expect("encode");
        assert_eq!(Carried::decode(&text).expect("decode"), c);
        assert_eq!(c.fds(), vec![3, 4, 5, 6, 7]);
    }

    #[test]
    fn another_format_is_refused_with_both_versions() {
        let mut v = serde_json::to_value(sample()).expect("encode");
        v["format"] = 99.into();
        v["baton"] = "9.9.9".into();
        let e = Carried::decode(v.to_string().as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("format 99 written by baton 9.9.9"), "{e}");
        let e = Carried::decode(b"{\"restarts\":1}")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("format ?")));
    }
}
