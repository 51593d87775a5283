//! Publishes the serving instance's port, PID and release: a local JSON file always, etcd when configured.
//!
//! etcd keeps the layout the original etcd + confd setup used
//! (`PREFIX/port/current`, `PREFIX/port/previous`, `PREFIX/pid/current`,
//! `PREFIX/pid/previous`, decimal strings) and is spoken to through its v3
//! JSON gateway, which needs no gRPC stack: bytes are base64, int64s are
//! strings, and false or zero fields are left out of responses.

use crate::config::Spec;
use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// A published value and the one it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair<T> {
    /// The serving instance's value.
    pub current: Option<T>,
    /// The value of the instance it replaced.
    pub previous: Option<T>,
}

/// The local registry file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Local {
    /// TCP port.
    pub port: Pair<u16>,
    /// Process ID.
    pub pid: Pair<i32>,
    /// Release ID.
    pub release: Pair<String>,
    /// When this was written (RFC 3339, UTC).
    pub updated: String,
}

/// The local registry file's contents, if there is a readable one.
pub fn read_local(spec: &Spec) -> Option<Local> {
    let text = std::fs::read_to_string(&spec.registry.file).ok()?;
    serde_json::from_str(&text).ok()
}

/// Names `to` as current in the local file, and as previous `from` (or, without one, the
/// instance the file named as current); returns what was written and what it replaced.
pub fn publish_local(
    spec: &Spec,
    to: &crate::deploy::Backend,
    from: Option<&crate::deploy::Backend>,
) -> Result<(Local, Option<Vec<u8>>)> {
    let old = read_local(spec).unwrap_or_default();
    let previous = match from {
        Some(b) => (b.port, Some(b.pid), b.release.clone()),
        None => (old.port.current, old.pid.current, old.release.current),
    };
    let local = Local {
        port: Pair {
            current: to.port,
            previous: previous.0,
        },
        pid: Pair {
            current: Some(to.pid),
            previous: previous.1,
        },
        release: Pair {
            current: to.release.clone(),
            previous: previous.2,
        },
        updated: rfc3339(std::time::SystemTime::now()),
    };
    let replaced = write_local(spec, &local)?;
    Ok((local, replaced))
}

/// Writes the local registry file atomically; returns the bytes it replaced, for [`restore_local`].
pub fn write_local(spec: &Spec, local: &Local) -> Result<Option<Vec<u8>>> {
    let file = &spec.registry.file;
    let previous = match std::fs::read(file) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("read {}", file.display()), &e)),
    };
    let mut text = serde_json::to_string(local)
        .map_err(|e| Error::unable(format!("encode {}", file.display()), e))?;
    text.push('\n');
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), &e))?;
    }
    crate::files::write_atomic(file, text.as_bytes(), 0o644)
        .map_err(|e| Error::io(format!("write {}", file.display()), &e))?;
    Ok(previous)
}

/// Puts back what [`write_local`] replaced (removing the file if there was none).
pub fn restore_local(spec: &Spec, previous: Option<&[u8]>) -> Result<()> {
    let file = &spec.registry.file;
    match previous {
        Some(b) => crate::files::write_atomic(file, b, 0o644),
        None => std::fs::remove_file(file),
    }
    .map_err(|e| Error::io(format!("restore {}", file.display()), &e))
}

/// `t` as RFC 3339 in UTC, to the second ("2026-11-22T23:51:48Z").
pub fn rfc3339(t: SystemTime) -> String {
    crate::deploy::release::utc_stamps(t).1
}

/// What etcd held under the prefix when the deploy began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// `PREFIX/port/current`, if set.
    pub port: Option<String>,
    /// `PREFIX/pid/current`, if set.
    pub pid: Option<String>,
    /// `PREFIX/port/current`'s mod_revision; "0" when absent (a MOD compare on a missing key is 0).
    pub port_revision: String,
    /// `PREFIX/pid/current`'s mod_revision, "0" when absent.
    pub pid_revision: String,
}

/// The etcd cluster as the switch worker found it, and what it held.
pub struct Etcd {
    client: crate::etcd::Client,
    prefix: String,
    seen: Seen,
    lease: Option<i64>,
    advertise: Option<String>,
}

/// What a rotation wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The revision all puts of the transaction carry.
    pub revision: String,
    /// The answer was lost and reading back showed it applied.
    pub read_back: bool,
}

/// Why a rotation failed, and whether etcd may hold it anyway.
#[derive(Debug)]
pub struct RotateError {
    /// What went wrong.
    pub error: Error,
    /// The transaction's answer was lost and could not be read back: etcd may name the new instance.
    pub unknown: bool,
}

impl Etcd {
    /// Reads PREFIX/ from the first member with quorum; an unreachable etcd fails here, before traffic moves.
    pub fn connect(spec: &Spec) -> Result<Etcd> {
        let prefix = spec.registry.prefix.trim_end_matches('/').to_string();
        let client = crate::etcd::Client::new(&spec.registry.etcd);
        let key = format!("{prefix}/");
        match client.range(&key, Some(&crate::etcd::prefix_end(&key))) {
            Ok((kvs, _)) => Ok(Etcd {
                seen: seen_of(&kvs, &prefix),
                client,
                prefix,
                lease: lease(spec),
                // Without a TTL the keys stay as they always were: no endpoint key.
                advertise: spec
                    .registry
                    .ttl
                    .map(|_| spec.registry.advertise.clone()),
            }),
            Err(e) => Err(Error::unable(
                format!("reach etcd ({}) to read {key}", spec.registry.etcd.join(", ")),
                e,
            )
            .hint(format!(
                "nothing was switched, the old instance keeps serving; bring etcd's quorum back, or fix registry.etcd in {}, then deploy again",
                spec.file.display()
            ))),
        }
    }

    /// The member that answered.
    pub fn endpoint(&self) -> String {
        self.client.endpoint()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What the prefix held when [`Etcd::connect`] read it.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// The lease the keys are attached to, if `[registry] ttl` is set and the supervisor holds one.
    pub fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// Rotates current → previous and sets current, in one transaction that fails if anyone wrote current since connect.
    pub fn rotate(&self, port: Option<u16>, pid: i32) -> std::result::Result<Rotated, RotateError> {
        let endpoint = port
            .zip(self.advertise.as_ref())
            .map(|(p, host)| format!("{host}:{p}"));
        let body = rotate_txn(
            &self.prefix,
            &self.seen,
            port,
            pid,
            self.lease,
            endpoint.as_deref(),
        );
        let what = format!(
            "publish to etcd ({}) under {}/",
            self.client.endpoints().join(", "),
            self.prefix
        );
        let check = crate::etcd::Check {
            key: format!("{}/pid/current", self.prefix),
            value: pid.to_string(),
            after: self.seen.pid_revision.parse().unwrap_or(0),
        };
        let outcome = match self.client.txn(&body, &check) {
            Ok(t) => t,
            Err(e) => {
                let unknown = matches!(e, crate::etcd::Fault::Unknown(_));
                let hint = if unknown {
                    format!("check {}/pid/current with etcdctl once etcd has quorum: if it names pid {pid}, point it back at the serving instance (`baton status` shows it)", self.prefix)
                } else if e.to_string().contains("lease not found") {
                    "the registry lease expired (etcd was out of reach longer than registry.ttl); the supervisor registers again with a new lease: deploy again once `baton status` shows it".to_string()
                } else {
                    "nothing was written to etcd; bring etcd's quorum back, then deploy again"
                        .to_string()
                };
                return Err(RotateError {
                    error: Error::unable(what, e).hint(hint),
                    unknown,
                });
            }
        };
        if outcome.succeeded {
            return Ok(Rotated {
                revision: outcome.revision.to_string(),
                read_back: outcome.read_back,
            });
        }
        let now = outcome
            .ranges
            .first()
            .and_then(|r| r.first())
            .map_or_else(|| "absent".to_string(), |kv| kv.value.clone());
        Err(RotateError {
            error: Error::unable(
                what,
                format!(
                    "the registry changed under us (another deploy?): {}/port/current was {} at mod_revision {}, is now {now}; nothing was written",
                    self.prefix,
                    self.seen.port.as_deref().unwrap_or("absent"),
                    self.seen.port_revision
                ),
            )
            .hint("check for a concurrent deploy of this service, then deploy again"),
            unknown: false,
        })
    }
}

/// The current keys and their revisions among `kvs`.
fn seen_of(kvs: &[crate::etcd::Kv], prefix: &str) -> Seen {
    let mut seen = Seen {
        port_revision: "0".into(),
        pid_revision: "0".into(),
        ..Seen::default()
    };
    for kv in kvs {
        if kv.key == format!("{prefix}/port/current") {
            seen.port = Some(kv.value.clone());
            seen.port_revision = kv.mod_revision.to_string();
        } else if kv.key == format!("{prefix}/pid/current") {
            seen.pid = Some(kv.value.clone());
            seen.pid_revision = kv.mod_revision.to_string();
        }
    }
    seen
}

/// The transaction body: compare both current keys' mod_revisions, then put previous and current.
fn rotate_txn(
    prefix: &str,
    seen: &Seen,
    port: Option<u16>,
    pid: i32,
    lease: Option<i64>,
    endpoint: Option<&str>,
) -> serde_json::Value {
    let key = |k: &str| B64.encode(format!("{prefix}/{k}"));
    let put = |k: &str, v: &str| {
        let mut p = serde_json::json!({"request_put": {"key": key(k), "value": B64.encode(v)}});
        if let Some(l) = lease {
            p["request_put"]["lease"] = serde_json::Value::String(l.to_string());
        }
        p
    };
    let mut success = Vec::new();
    if let Some(port) = port {
        if let Some(old) = &seen.port {
            success.push(put("port/previous", old));
        }
        success.push(put("port/current", &port.to_string()));
    }
    if let Some(old) = &seen.pid {
        success.push(put("pid/previous", old));
    }
    success.push(put("pid/current", &pid.to_string()));
    if let Some(e) = endpoint {
        success.push(put("endpoint", e));
    }
    serde_json::json!({
        "compare": [
            {"key": key("port/current"), "target": "MOD", "result": "EQUAL", "mod_revision": seen.port_revision},
            {"key": key("pid/current"), "target": "MOD", "result": "EQUAL", "mod_revision": seen.pid_revision},
        ],
        "success": success,
        // On a lost compare, fetch port/current to say what it is now.
        "failure": [{"request_range": {"key": key("port/current")}}],
    })
}

/// Where the etcd lease the registry keys live on is kept, by the supervisor's lease keeper.
pub fn lease_file(spec: &Spec) -> std::path::PathBuf {
    spec.state_dir.join("etcd-lease")
}

/// The lease the keeper holds now, if any (`[registry] ttl`): what the switch worker puts keys on.
pub fn lease(spec: &Spec) -> Option<i64> {
    spec.registry.ttl?;
    std::fs::read_to_string(lease_file(spec))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_txn_rotates_only_what_existed() {
        let first = rotate_txn(
            "p",
            &Seen {
                port_revision: "0".into(),
                pid_revision: "0".into(),
                ..Seen::default()
            },
            Some(20001),
            42,
            None,
            None,
        );
        assert_eq!(first["success"].as_array().map(Vec::len), Some(2));
        assert_eq!(first["compare"][0]["mod_revision"], "0");
        let seen = Seen {
            port: Some("20001".into()),
            pid: Some("42".into()),
            port_revision: "7".into(),
            pid_revision: "7".into(),
        };
        let next = rotate_txn("p", &seen, Some(20002), 43, Some(7), Some("h:20002"));
        let puts: Vec<(String, String)> = next["success"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|op| {
                let p = &op["request_put"];
                let s = |v: &serde_json::Value| {
                    String::from_utf8(
                        B64.decode(v.as_str().unwrap_or_default())
                            .unwrap_or_default(),
                    )
                    .unwrap_or_default()
                };
                (s(&p["key"]), s(&p["value"]))
            })
            .collect();
        let want = [
            ("p/port/previous", "20001"),
            ("p/port/current", "20002"),
            ("p/pid/previous", "42"),
            ("p/pid/current", "43"),
            ("p/endpoint", "h:20002"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(puts, want);
        assert_eq!(next["compare"][0]["mod_revision"], "7");
        assert_eq!(next["success"][0]["request_put"]["lease"], "7");
    }

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_391_508)),
            "2026-11-22T23:51:48Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
