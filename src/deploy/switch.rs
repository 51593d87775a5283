//! The `__switch` worker of a deploy: registry preflight, proxy switch, publish, each undone on a later failure.
//!
//! It runs as a child of the supervisor, which relays its stdout line by line
//! to the operator: one line per step with its duration, and on failure a
//! last line `error: STEP: MESSAGE`. Exit 0 = switched and published, 1 =
//! failed and everything put back, 3 = failed and putting back failed too
//! (the message says what is left).

use crate::config::{ProxySpec, Spec, Switch};
use crate::deploy::proxy::{self, Installed};
use crate::deploy::registry::{self, Etcd};
use crate::deploy::Backend;
use crate::error::Error;
use std::time::{Duration, Instant};

/// Test-only: milliseconds to wait between the proxy switch and publishing, to let a test race the registry.
const PUBLISH_DELAY_ENV: &str = "BATON_TEST_PUBLISH_DELAY_MS";

/// How a switch worker ended; its exit code carries this to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Traffic moved and the registry names the new instance.
    Switched,
    /// Failed; the proxy and the registry are as they were.
    Undone,
    /// Failed, and putting things back failed too: the last line says what is left.
    Left,
}

impl Outcome {
    /// The worker's exit code.
    pub fn code(self) -> i32 {
        match self {
            Outcome::Switched => 0,
            Outcome::Undone => 1,
            Outcome::Left => 3,
        }
    }

    /// Decodes an exit code; anything unknown (a crash, a kill) leaves the state unknown.
    pub fn from_code(code: Option<i32>) -> Outcome {
        match code {
            Some(0) => Outcome::Switched,
            Some(1) => Outcome::Undone,
            _ => Outcome::Left,
        }
    }
}

/// Switches traffic and the registry from `from` to `to`; returns the worker's exit code.
pub fn run(spec: &Spec, to: &Backend, from: Option<&Backend>) -> i32 {
    // The supervisor blocks every signal in its threads and we inherited that
    // mask; unblocked, a SIGTERM from the supervisor ends us as it should.
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    match switch(spec, to, from) {
        Ok(()) => Outcome::Switched.code(),
        Err(f) => {
            println!("error: {}: {}", f.step, f.text());
            f.outcome.code()
        }
    }
}

/// Why the worker failed: the step, a one-line message, and the exit code.
struct Failure {
    step: &'static str,
    message: String,
    /// What the operator can do; said once, last.
    hint: Option<String>,
    outcome: Outcome,
}

impl Failure {
    fn new(step: &'static str, e: &Error) -> Failure {
        let text = proxy::one_line(&e.to_string());
        let (message, hint) = match text.split_once("; hint: ") {
            Some((m, h)) => (m.to_string(), Some(h.to_string())),
            None => (text, None),
        };
        Failure {
            step,
            message,
            hint,
            outcome: Outcome::Undone,
        }
    }

    /// The one line the worker prints after `error: STEP: `.
    fn text(&self) -> String {
        match &self.hint {
            Some(h) => format!("{}; hint: {h}", self.message),
            None => self.message.clone(),
        }
    }

    /// Adds what happened after the failure (the hint stays last).
    fn note(&mut self, note: &str) {
        self.message = format!("{}; {note}", self.message);
    }
}

fn say(line: String) {
    println!("{line}");
}

fn ms(since: Instant) -> String {
    format!("({} ms)", since.elapsed().as_millis())
}

fn show<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn switch(spec: &Spec, to: &Backend, from: Option<&Backend>) -> Result<(), Failure> {
    let etcd = if spec.registry.etcd.is_empty() {
        None
    } else {
        let t = Instant::now();
        let etcd = Etcd::connect(spec).map_err(|e| Failure::new("registry", &e))?;
        let seen = etcd.seen();
        say(format!(
            "registry: etcd {} reachable; {}/ holds port current={} pid current={} (mod_revision {}) {}",
            etcd.endpoint(),
            etcd.prefix(),
            show(&seen.port),
            show(&seen.pid),
            seen.port_revision,
            ms(t)
        ));
        Some(etcd)
    };

    let switched = match &spec.proxy {
        ProxySpec::None => {
            say("proxy: none configured; nothing to switch".into());
            None
        }
        ProxySpec::Nginx(sw) => Some((sw, switch_proxy(spec, sw, true, to, from)?)),
        ProxySpec::Command(sw) => Some((sw, switch_proxy(spec, sw, false, to, from)?)),
    };

    if let Some(ms) = std::env::var(PUBLISH_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms.min(60_000)));
    }

    if let Err(mut f) = publish(spec, etcd.as_ref(), to, from) {
        if let Some((sw, installed)) = switched {
            let t = Instant::now();
            match undo(sw, &installed, from) {
                Ok(how) => say(format!(
                    "proxy: restored the previous {} and reloaded{how} {}",
                    sw.upstream.display(),
                    ms(t)
                )),
                Err(left) => {
                    f.note(&format!("AND restoring the proxy failed: {left}"));
                    f.left(sw, from);
                }
            }
        }
        return Err(f);
    }
    Ok(())
}

/// Render, check, install, reload, confirm; on a failure after install, restore.
fn switch_proxy(
    spec: &Spec,
    sw: &Switch,
    nginx: bool,
    to: &Backend,
    from: Option<&Backend>,
) -> Result<Installed, Failure> {
    let t = Instant::now();
    let text = proxy::render(&sw.template, &spec.name, to).map_err(|cause| {
        Failure::new(
            "proxy check",
            &Error::unable("render proxy.template", cause),
        )
    })?;
    let candidate = proxy::check(sw, nginx, &text).map_err(|e| Failure::new("proxy check", &e))?;
    let checker = if nginx {
        "nginx -t".to_string()
    } else {
        sw.check.join(" ")
    };
    say(format!("proxy: candidate passed {checker} {}", ms(t)));

    let t = Instant::now();
    let before = proxy::baseline(sw, to);
    let installed = proxy::install(sw, candidate).map_err(|e| Failure::new("proxy reload", &e))?;
    let proxy_name = if nginx { "nginx" } else { "the proxy" };
    if let Err(e) = proxy::reload(sw) {
        return Err(restore_after(
            sw,
            &installed,
            from,
            Failure::new("proxy reload", &e),
        ));
    }
    match &sw.confirm {
        Some(url) => {
            match proxy::confirm(sw, url, to, &before) {
                Ok(seen) => say(format!(
                    "proxy: reloaded {proxy_name}; confirmed {seen} through {url} {}",
                    ms(t)
                )),
                Err(cause) => {
                    let f = Failure {
                        step: "proxy confirm",
                        message: format!("unable to confirm the switch through {url}: {cause}"),
                        hint: Some("the proxy did not take the new upstream (see its error log), or the new instance is not reachable from it".into()),
                        outcome: Outcome::Undone,
                    };
                    return Err(restore_after(sw, &installed, from, f));
                }
            }
        }
        None => say(format!(
            "proxy: reloaded {proxy_name}; warning: unconfirmed (a reload's exit status proves nothing; set proxy.confirm to a URL through the proxy) {}",
            ms(t)
        )),
    }
    Ok(installed)
}

/// Puts the previous upstream file back after `f`, and says so in the failure.
fn restore_after(
    sw: &Switch,
    installed: &Installed,
    from: Option<&Backend>,
    mut f: Failure,
) -> Failure {
    let t = Instant::now();
    match undo(sw, installed, from) {
        Ok(how) => {
            say(format!(
                "proxy: restored the previous {} and reloaded{how} {}",
                sw.upstream.display(),
                ms(t)
            ));
            f.note("the previous upstream file is back and the proxy reloaded");
        }
        Err(left) => {
            f.note(&format!("AND restoring failed: {left}"));
            f.left(sw, from);
        }
    }
    f
}

impl Failure {
    /// Putting back failed: what is true now, and the one thing the operator must do.
    fn left(&mut self, sw: &Switch, from: Option<&Backend>) {
        self.outcome = Outcome::Left;
        let old = from.map_or(String::new(), |b| {
            format!(
                "the old instance (pid {}{}) still runs; ",
                b.pid,
                b.port.map_or(String::new(), |p| format!(", port {p}"))
            )
        });
        let check = sw
            .confirm
            .as_ref()
            .map_or(String::new(), |u| format!(", then `curl {u}`"));
        self.hint = Some(format!(
            "{old}the proxy may be sending traffic nowhere: look at {} and the proxy's error log, fix the proxy{check}",
            sw.upstream.display()
        ));
    }
}

/// Restores the live file, reloads, and confirms the old instance answers again when it can.
///
/// Ok carries how far that was verified; Err says exactly what is left.
fn undo(sw: &Switch, installed: &Installed, from: Option<&Backend>) -> Result<String, String> {
    let before = from.map(|old| proxy::baseline(sw, old));
    if let Err(e) = proxy::put_back(installed) {
        return Err(format!(
            "{}; {} still holds the new instance's upstream and the proxy may be using it",
            proxy::one_line(&e.to_string()),
            sw.upstream.display()
        ));
    }
    proxy::reload(sw).map_err(|e| {
        format!(
            "{}; the previous {} is back in place but the proxy did not reload it: run `{}` once the cause is fixed",
            proxy::one_line(&e.to_string()),
            sw.upstream.display(),
            sw.reload.join(" ")
        )
    })?;
    // A reload is asynchronous and its exit status proves nothing: see the old instance answer again.
    let (Some(url), Some(old), Some(before)) = (&sw.confirm, from, before) else {
        return Ok(String::new());
    };
    proxy::confirm(sw, url, old, &before)
        .map(|seen| format!("; confirmed {seen} again"))
        .map_err(|cause| {
            format!(
                "the previous {} is back in place and the proxy reloaded, but requests through {url} do not reach the old instance either: {cause}",
                sw.upstream.display(),
            )
        })
}

/// Writes the local file, then rotates etcd; a failed rotation puts the local file back.
fn publish(
    spec: &Spec,
    etcd: Option<&Etcd>,
    to: &Backend,
    from: Option<&Backend>,
) -> Result<(), Failure> {
    let t = Instant::now();
    let (local, replaced) = registry::publish_local(spec, to, from)
        .map_err(|e| Failure::new("registry publish", &e))?;
    say(format!(
        "registry: wrote {} port current={} previous={} pid current={} previous={} release current={} previous={} {}",
        spec.registry.file.display(),
        show(&local.port.current),
        show(&local.port.previous),
        show(&local.pid.current),
        show(&local.pid.previous),
        show(&local.release.current),
        show(&local.release.previous),
        ms(t)
    ));
    let Some(etcd) = etcd else {
        return Ok(());
    };
    let t = Instant::now();
    match etcd.rotate(to.port, to.pid) {
        Ok(r) => {
            let seen = etcd.seen();
            say(format!(
                "registry: etcd {} {} port current={} previous={} pid current={} previous={} (revision {}{}{}) {}",
                etcd.endpoint(),
                etcd.prefix(),
                show(&to.port),
                show(&seen.port),
                to.pid,
                show(&seen.pid),
                r.revision,
                etcd.lease().map_or(String::new(), |l| format!(", lease {l:x}")),
                if r.read_back { ", answer lost: read back, applied" } else { "" },
                ms(t)
            ));
            Ok(())
        }
        Err(e) => {
            let mut f = Failure::new("registry publish", &e.error);
            if e.unknown {
                // etcd may name the new instance: not "everything put back".
                f.outcome = Outcome::Left;
            }
            match registry::restore_local(spec, replaced.as_deref()) {
                Ok(()) => say(format!(
                    "registry: restored {}",
                    spec.registry.file.display()
                )),
                Err(e) => {
                    f.note(&format!(
                        "AND {}: it names the new instance while etcd does not",
                        proxy::one_line(&e.to_string())
                    ));
                    f.outcome = Outcome::Left;
                }
            }
            Err(f)
        }
    }
}
