//! What of a config a running supervisor can take in a handoff, and what needs a restart.

use super::{ProbeSpec, Spec};

/// The settings that differ between the running `old` and the on-disk `new` config yet
/// cannot change under a running supervisor, each named with why; empty if none.
///
/// Everything an instance is started from (command, env, user, workdir, probes, stop, port,
/// proxy, registry keys) is taken by the next handoff; what the supervisor itself holds
/// open or was found by is not.
pub fn unchangeable(old: &Spec, new: &Spec) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |key: &str, a: String, b: String, why: &str| {
        if a != b {
            out.push(format!("{key} ({a} -> {b}): {why}"));
        }
    };
    let path = |p: &std::path::Path| p.display().to_string();
    differs(
        "socket",
        path(&old.socket),
        path(&new.socket),
        "clients find the running supervisor by it",
    );
    differs(
        "pidfile",
        path(&old.pidfile),
        path(&new.pidfile),
        "it names the running supervisor",
    );
    differs(
        "state_dir",
        path(&old.state_dir),
        path(&new.state_dir),
        "the supervisor's lock and state live there",
    );
    differs(
        "log.dir",
        path(&old.log.dir),
        path(&new.log.dir),
        "the supervisor holds its log files open",
    );
    let listen = |s: &Spec| {
        s.listen
            .as_ref()
            .map_or("none".to_string(), |l| format!("{} fd {}", l.address, l.fd))
    };
    differs(
        "listen",
        listen(old),
        listen(new),
        "the supervisor holds the listening socket for its whole life",
    );
    let root = |s: &Spec| {
        s.release
            .as_ref()
            .map_or("none".to_string(), |r| path(&r.root))
    };
    differs(
        "release.root",
        root(old),
        root(new),
        "release IDs are resolved in it",
    );
    let notify = |s: &Spec| s.ready.probes.contains(&ProbeSpec::Notify).to_string();
    differs(
        "ready.notify",
        notify(old),
        notify(new),
        "the notify socket is made when the supervisor starts",
    );
    let ttl = |s: &Spec| s.registry.ttl.map_or("none".to_string(), super::human);
    differs(
        "registry.ttl",
        ttl(old),
        ttl(new),
        "the lease is kept by the running supervisor",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(extra: &str) -> Spec {
        let text = format!(
            "command = [\"/bin/true\"]\npidfile = \"/tmp/x/a.pid\"\nsocket = \"/tmp/x/a.sock\"\n\
             state_dir = \"/tmp/x/state\"\n{extra}\n[log]\ndir = \"/tmp/x/log\"\n"
        );
        super::super::parse(&text, Path::new("/tmp/x/a.toml"), "a").expect("valid")
    }

    #[test]
    fn what_an_instance_is_started_from_may_change() {
        let old = spec("");
        let new = spec("env = { A = \"1\" }\nworkdir = \"/tmp\"");
        assert!(unchangeable(&old, &new).is_empty());
    }

    #[test]
    fn what_the_supervisor_holds_is_named() {
        let old = spec("");
        let mut new = spec("");
        new.socket = "/tmp/y/a.sock".into();
        new.state_dir = "/tmp/y/state".into();
        let found = unchangeable(&old, &new);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("socket (/tmp/x/a.sock -> /tmp/y/a.sock)"));
        assert!(found[1].starts_with("state_dir"));
    }
}
