//! What a supervisor hands to its next image across `execve` (`baton reexec`): a typed,
//! versioned record in a memfd, and the descriptors it names kept open across the exec.

use crate::error::{Error, Result};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use serde::{Deserialize, Serialize};
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The record's format; bump it when a field changes meaning. A binary reads only formats
/// it knows, and says so to `__reexec-check` before the running image execs it.
pub const FORMAT: u32 = 1;

/// The environment variable naming the memfd that holds the record.
pub const ENV: &str = "BATON_REEXEC_STATE";

/// Names the previous image's executable (an `O_PATH` descriptor) and the record's memfd:
/// a new image that cannot take over runs the previous one again rather than die with it.
pub const FALLBACK_ENV: &str = "BATON_REEXEC_FALLBACK";

/// Tells the previous image, run again, why the new one could not take over.
pub const FELL_BACK_ENV: &str = "BATON_REEXEC_FELL_BACK";

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
    /// The etcd lease the registry keys live on (`[registry] ttl`): the next image renews it.
    #[serde(default)]
    pub lease: Option<i64>,
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
    /// Without a cgroup, the mark its processes carry (`BATON_INSTANCE`).
    #[serde(default)]
    pub mark: Option<String>,
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

    /// Reads the record from the memfd named by [`ENV`]. The descriptor stays open (marked
    /// close-on-exec) until [`Fallback::release`]: a fallback hands it back unread.
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
        keep_across_exec(fd, false)
            .map_err(|e| Error::unable(format!("read the reexec state from descriptor {fd}"), e))?;
        // A fresh open file of the same memfd: its own offset, so whoever reads next (the
        // previous image after a fallback) reads the record whole.
        let text = std::fs::read(format!("/proc/self/fd/{fd}"))
            .map_err(|e| Error::io(format!("read the reexec state from descriptor {fd}"), &e))?;
        Self::decode(&text).map(Some)
    }

    /// Fails unless every descriptor the record names is open in this image.
    pub fn check_open(&self) -> Result<()> {
        for fd in self.fds() {
            fcntl(fd, FcntlArg::F_GETFD).map_err(|e| {
                Error::errno(format!("find descriptor {fd} of the previous image"), e)
            })?;
        }
        Ok(())
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

/// The image to execute.
pub enum Image<'a> {
    /// The baton binary now at this path.
    Path(&'a Path),
    /// The previous image, by its executable's descriptor (it may be deleted on disk).
    Fd(RawFd),
}

/// Replaces this image with `IMAGE ARGS...`, the environment being this one's with `set`
/// (none of the reexec variables is inherited). The signal mask survives execve, so a
/// signal that comes meanwhile waits for the new image's signalfd. Returns only if the exec
/// failed.
pub fn exec(image: Image<'_>, args: &[&std::ffi::OsStr], set: &[(&str, String)]) -> Error {
    use std::os::unix::ffi::OsStrExt;
    let c = |s: &std::ffi::OsStr| std::ffi::CString::new(s.as_bytes());
    let argv0: &std::ffi::OsStr = match image {
        Image::Path(p) => p.as_os_str(),
        Image::Fd(_) => "baton".as_ref(),
    };
    let argv: std::result::Result<Vec<_>, _> = std::iter::once(argv0)
        .chain(args.iter().copied())
        .map(c)
        .collect();
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter(|(k, _)| ![ENV, FALLBACK_ENV, FELL_BACK_ENV].iter().any(|n| k == n))
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            std::ffi::CString::new(kv).ok()
        })
        .collect();
    env.extend(
        set.iter()
            .filter_map(|(k, v)| std::ffi::CString::new(format!("{k}={v}")).ok()),
    );
    let Ok(argv) = argv else {
        return Error::unable("execute baton", "an argument holds a NUL byte");
    };
    let done = match image {
        Image::Path(exe) => match c(exe.as_os_str()) {
            Ok(path) => nix::unistd::execve(&path, &argv, &env),
            Err(_) => return Error::unable("execute baton", "its path holds a NUL byte"),
        },
        Image::Fd(fd) => nix::unistd::execveat(
            Some(fd),
            c"",
            &argv,
            &env,
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        ),
    };
    match done {
        Err(e) => match image {
            Image::Path(exe) => Error::errno(format!("execute {}", exe.display()), e),
            Image::Fd(_) => Error::errno("execute the previous image", e),
        },
        Ok(never) => match never {},
    }
}

/// Replaces this image with `exe --config CONFIG __resume NAME`, the record's memfd named
/// in the environment and `fallback` (this image's executable) with it. Returns only if
/// the exec failed.
pub fn exec_next(exe: &Path, config: &Path, name: &str, state: RawFd, fallback: RawFd) -> Error {
    exec(
        Image::Path(exe),
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "__resume".as_ref(),
            name.as_ref(),
        ],
        &[
            (ENV, state.to_string()),
            (FALLBACK_ENV, format!("{fallback} {state}")),
        ],
    )
}

/// The way back to the previous image, for a new image that cannot take over.
#[derive(Debug)]
pub struct Fallback {
    exe: RawFd,
    state: RawFd,
}

impl Fallback {
    /// This image's executable, opened to be run again if the next image cannot take over;
    /// it stays valid when a package upgrade has replaced the file on disk.
    pub fn prepare() -> Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open("/proc/self/exe")
            .map(OwnedFd::from)
            .map_err(|e| Error::io("open this baton's executable (/proc/self/exe)", &e))
    }

    /// The previous image's descriptors from [`FALLBACK_ENV`] (none for an image the
    /// previous one ran again: there is no going back twice).
    pub fn from_env() -> Option<Fallback> {
        let v = std::env::var(FALLBACK_ENV).ok()?;
        std::env::remove_var(FALLBACK_ENV);
        let (exe, state) = v.split_once(' ')?;
        let fb = Fallback {
            exe: exe.parse().ok()?,
            state: state.parse().ok()?,
        };
        // Until released, neither may reach a child this image starts.
        let _ = keep_across_exec(fb.exe, false);
        let _ = keep_across_exec(fb.state, false);
        Some(fb)
    }

    /// Runs the previous image again on its record, with the arguments this one was given
    /// and `why` this one cannot take over. Returns only if that failed too.
    pub fn run(&self, why: &str) -> Error {
        if let Err(e) = keep_across_exec(self.state, true) {
            return e;
        }
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let one_line = why.replace('\n', "; ");
        exec(
            Image::Fd(self.exe),
            &args,
            &[(ENV, self.state.to_string()), (FELL_BACK_ENV, one_line)],
        )
    }

    /// This image has taken over: the previous image and the record are not needed.
    pub fn release(self) {
        drop(adopt(self.exe));
        drop(adopt(self.state));
    }
}

/// `r`, or, if it failed and there is a previous image to go back to, that image run again
/// (the error then says why that failed too).
pub fn or_fall_back<T>(r: Result<T>, back: Option<&Fallback>) -> Result<T> {
    match (r, back) {
        (Ok(v), _) => Ok(v),
        (Err(e), None) => Err(e),
        (Err(e), Some(back)) => {
            let why = e.to_string();
            tracing::error!(
                "unable to take over the supervisor: {why}; running the previous image again"
            );
            Err(Error::unable(
                "take over the supervisor",
                format!(
                    "{why}; and running the previous image again failed: {}",
                    back.run(&why)
                ),
            ))
        }
    }
}

/// Why the next image handed back, in the previous image run again; removed from the environment.
pub fn fell_back() -> Option<String> {
    let why = std::env::var(FELL_BACK_ENV).ok()?;
    std::env::remove_var(FELL_BACK_ENV);
    Some(why)
}

/// The answer to the client of a reexec whose new image handed back: what failed, and
/// that this image supervises on (logged as an error too).
pub fn fell_back_reply(
    name: &str,
    exe: &Path,
    why: &str,
    service: nix::unistd::Pid,
) -> crate::control::Reply {
    let message = format!(
        "unable to reexec {name} onto {}: the new image could not take over: {why}\n\
         baton {} (the image before) took the supervisor back; the service (pid {service}) kept running",
        exe.display(),
        crate::control::VERSION
    );
    tracing::error!("{}", message.replace('\n', "; "));
    crate::control::Reply::Error {
        message,
        code: crate::exit::Action::Generic,
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
                mark: None,
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
            lease: Some(0x694d_7a1c_22b0_1f05),
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
