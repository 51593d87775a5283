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
use std::time::{Duration, SystemTime};

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
    crate::pidfile::write_atomic(file, text.as_bytes(), 0o644)
        .map_err(|e| Error::io(format!("write {}", file.display()), &e))?;
    Ok(previous)
}

/// Puts back what [`write_local`] replaced (removing the file if there was none).
pub fn restore_local(spec: &Spec, previous: Option<&[u8]>) -> Result<()> {
    let file = &spec.registry.file;
    match previous {
        Some(b) => crate::pidfile::write_atomic(file, b, 0o644),
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

/// An etcd endpoint that answered, and what it held.
pub struct Etcd {
    endpoint: String,
    prefix: String,
    agent: ureq::Agent,
    seen: Seen,
}

/// What a rotation wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The revision all puts of the transaction carry.
    pub revision: String,
}

impl Etcd {
    /// Reads PREFIX/ from the first endpoint that answers; an unreachable etcd fails here, before traffic moves.
    pub fn connect(spec: &Spec) -> Result<Etcd> {
        let prefix = spec.registry.prefix.trim_end_matches('/').to_string();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirects(0)
            .build();
        let key = format!("{prefix}/");
        let body = serde_json::json!({
            "key": B64.encode(&key),
            // Every key starting with PREFIX/: '/' + 1 is '0'.
            "range_end": B64.encode(format!("{prefix}0")),
        });
        let mut failures = Vec::new();
        for endpoint in &spec.registry.etcd {
            match post(&agent, endpoint, "/v3/kv/range", &body) {
                Ok(text) => {
                    let seen = parse_range(&text, &prefix).map_err(|e| {
                        Error::unable(format!("read {key} from etcd at {endpoint}"), e)
                    })?;
                    return Ok(Etcd {
                        endpoint: endpoint.clone(),
                        prefix,
                        agent,
                        seen,
                    });
                }
                Err(e) => failures.push(format!("{endpoint}: {e}")),
            }
        }
        Err(Error::unable(format!("reach etcd ({})", spec.registry.etcd.join(", ")), failures.join("; "))
            .hint(format!(
                "nothing was switched, the old instance keeps serving; start etcd, or fix registry.etcd in {}, then deploy again",
                spec.file.display()
            )))
    }

    /// The endpoint that answered.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What the prefix held when [`Etcd::connect`] read it.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Rotates current → previous and sets current, in one transaction that fails if anyone wrote current since connect.
    pub fn rotate(&self, port: Option<u16>, pid: i32) -> Result<Rotated> {
        let body = rotate_txn(&self.prefix, &self.seen, port, pid);
        let what = format!(
            "publish to etcd at {} under {}/",
            self.endpoint, self.prefix
        );
        let text = post(&self.agent, &self.endpoint, "/v3/kv/txn", &body)
            .map_err(|e| Error::unable(&what, e))?;
        let outcome = parse_txn(&text).map_err(|e| Error::unable(&what, e))?;
        if outcome.succeeded {
            return Ok(Rotated {
                revision: outcome.revision,
            });
        }
        let now = outcome.port_now.as_deref().unwrap_or("absent");
        Err(Error::unable(
            what,
            format!(
                "the registry changed under us (another deploy?): {}/port/current was {} at mod_revision {}, is now {now}; nothing was written",
                self.prefix,
                self.seen.port.as_deref().unwrap_or("absent"),
                self.seen.port_revision
            ),
        )
        .hint("check for a concurrent deploy of this service, then deploy again"))
    }
}

/// POSTs JSON to the gateway; the body of a 200, or why not.
fn post(
    agent: &ureq::Agent,
    endpoint: &str,
    path: &str,
    body: &serde_json::Value,
) -> std::result::Result<String, String> {
    let url = format!("{}{path}", endpoint.trim_end_matches('/'));
    match agent
        .post(&url)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Ok(r) => r
            .into_string()
            .map_err(|e| format!("reading the answer of {url}: {e}")),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            Err(format!(
                "{url}: HTTP {code}: {}",
                crate::deploy::proxy::one_line(&text)
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The transaction body: compare both current keys' mod_revisions, then put previous and current.
fn rotate_txn(prefix: &str, seen: &Seen, port: Option<u16>, pid: i32) -> serde_json::Value {
    let key = |k: &str| B64.encode(format!("{prefix}/{k}"));
    let put = |k: &str, v: &str| serde_json::json!({"request_put": {"key": key(k), "value": B64.encode(v)}});
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

/// A range response; etcd 3.4 omits `kvs` and `count` when nothing matched.
#[derive(Debug, Default, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<Kv>,
}

/// One key-value; `value` and `mod_revision` are omitted when empty or zero.
#[derive(Debug, Deserialize)]
struct Kv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: Option<String>,
}

/// A txn response; `succeeded` is omitted when false.
#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    revision: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ResponseOp {
    #[serde(default)]
    response_range: Option<RangeResponse>,
}

/// What a txn answered.
#[derive(Debug, PartialEq, Eq)]
struct TxnOutcome {
    succeeded: bool,
    revision: String,
    /// On failure: port/current's value now, from the failure branch's range.
    port_now: Option<String>,
}

fn unb64(s: &str) -> std::result::Result<String, String> {
    let bytes = B64
        .decode(s)
        .map_err(|e| format!("bad base64 {s:?} from etcd: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("etcd holds a non-UTF-8 value {s:?}"))
}

fn parse_range(body: &str, prefix: &str) -> std::result::Result<Seen, String> {
    let r: RangeResponse =
        serde_json::from_str(body).map_err(|e| format!("unexpected answer {body:?}: {e}"))?;
    let mut seen = Seen {
        port_revision: "0".into(),
        pid_revision: "0".into(),
        ..Seen::default()
    };
    for kv in &r.kvs {
        let key = unb64(&kv.key)?;
        let value = unb64(&kv.value)?;
        let revision = kv.mod_revision.clone().unwrap_or_else(|| "0".into());
        if key == format!("{prefix}/port/current") {
            seen.port = Some(value);
            seen.port_revision = revision;
        } else if key == format!("{prefix}/pid/current") {
            seen.pid = Some(value);
            seen.pid_revision = revision;
        }
    }
    Ok(seen)
}

fn parse_txn(body: &str) -> std::result::Result<TxnOutcome, String> {
    let r: TxnResponse =
        serde_json::from_str(body).map_err(|e| format!("unexpected answer {body:?}: {e}"))?;
    let mut port_now = None;
    for op in r.responses {
        if let Some(kv) = op.response_range.and_then(|rr| rr.kvs.into_iter().next()) {
            port_now = Some(unb64(&kv.value)?);
        }
    }
    Ok(TxnOutcome {
        succeeded: r.succeeded,
        revision: r.header.revision.unwrap_or_else(|| "0".into()),
        port_now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn b(s: &str) -> String {
        B64.encode(s)
    }

    #[test]
    fn an_empty_range_has_no_kvs_and_means_revision_zero() {
        // Verbatim shape of etcd 3.4.23's answer for a prefix with no keys.
        let body = r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"1","raft_term":"2"}}"#;
        let seen = parse_range(body, "baton/h/web").expect("parse");
        assert_eq!(seen.port, None);
        assert_eq!(seen.pid, None);
        assert_eq!(seen.port_revision, "0");
        assert_eq!(seen.pid_revision, "0");
    }

    #[test]
    fn a_range_yields_current_values_and_revisions() {
        let body = format!(
            r#"{{"header":{{"revision":"9"}},"kvs":[
              {{"key":"{}","create_revision":"2","mod_revision":"7","version":"3","value":"{}"}},
              {{"key":"{}","create_revision":"2","mod_revision":"7","version":"3","value":"{}"}},
              {{"key":"{}","create_revision":"5","mod_revision":"7","version":"2","value":"{}"}}],"count":"3"}}"#,
            b("p/pid/current"),
            b("1234"),
            b("p/port/current"),
            b("20001"),
            b("p/port/previous"),
            b("20000")
        );
        let seen = parse_range(&body, "p").expect("parse");
        assert_eq!(seen.port.as_deref(), Some("20001"));
        assert_eq!(seen.pid.as_deref(), Some("1234"));
        assert_eq!(seen.port_revision, "7");
    }

    #[test]
    fn a_failed_txn_has_no_succeeded_field() {
        let body = format!(
            r#"{{"header":{{"revision":"12"}},"responses":[{{"response_range":{{"header":{{"revision":"12"}},"kvs":[{{"key":"{}","mod_revision":"11","value":"{}"}}],"count":"1"}}}}]}}"#,
            b("p/port/current"),
            b("20009")
        );
        let out = parse_txn(&body).expect("parse");
        assert_eq!(
            out,
            TxnOutcome {
                succeeded: false,
                revision: "12".into(),
                port_now: Some("20009".into())
            }
        );
        let ok = parse_txn(r#"{"header":{"revision":"13"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"13"}}}]}"#)
            .expect("parse");
        assert!(ok.succeeded);
        assert_eq!(ok.revision, "13");
    }

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
        );
        assert_eq!(first["success"].as_array().map(Vec::len), Some(2));
        assert_eq!(first["compare"][0]["mod_revision"], "0");
        let seen = Seen {
            port: Some("20001".into()),
            pid: Some("42".into()),
            port_revision: "7".into(),
            pid_revision: "7".into(),
        };
        let next = rotate_txn("p", &seen, Some(20002), 43);
        let puts: Vec<(String, String)> = next["success"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|op| {
                let p = &op["request_put"];
                let s = |v: &serde_json::Value| {
                    unb64(v.as_str().unwrap_or_default()).unwrap_or_default()
                };
                (s(&p["key"]), s(&p["value"]))
            })
            .collect();
        let want = [
            ("p/port/previous", "20001"),
            ("p/port/current", "20002"),
            ("p/pid/previous", "42"),
            ("p/pid/current", "43"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(puts, want);
        assert_eq!(next["compare"][0]["mod_revision"], "7");
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
