//! An etcd v3 client over the JSON gateway: member failover, transactions read back after a lost answer, leases, waiting for a key's deletion.
//!
//! The gateway needs no gRPC stack: bytes are base64, int64s are strings,
//! and false or zero fields are left out of answers. A request goes to the
//! member that last answered; one that refuses the connection, times out or
//! has no leader is skipped for the next. A member is asked whether it has
//! a leader before its first request, because without quorum a
//! linearizable request would hang for etcd's whole request timeout.
//!
//! A transaction whose answer is lost (sent, then a timeout or an ambiguous
//! "request timed out") may or may not have applied. It is never resent
//! blindly: the caller's [`Check`] is read back from a member with quorum,
//! and the key's value and mod_revision decide.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::fmt;
use std::io::BufRead;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-request limits; a member that does not answer within them is skipped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No member could take it (refused, timed out, no leader): nothing was applied. One entry per member tried.
    Unavailable(Vec<String>),
    /// etcd answered with an error (a lease not found, a malformed request).
    Refused(String),
    /// A transaction was sent, its answer lost, and reading back could not tell whether it applied.
    Unknown(Vec<String>),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Unavailable(tried) => write!(
                f,
                "no etcd member could take the request (no quorum?): {}",
                tried.join("; ")
            ),
            Fault::Refused(why) => write!(f, "etcd refused: {why}"),
            Fault::Unknown(tried) => write!(
                f,
                "the answer was lost and reading back failed, so it is unknown whether the write applied: {}",
                tried.join("; ")
            ),
        }
    }
}

/// What settles a lost transaction answer: it applied iff `key` holds `value` with a mod_revision above `after`.
#[derive(Debug, Clone)]
pub struct Check {
    /// A key the transaction's success branch writes.
    pub key: String,
    /// The value it writes there.
    pub value: String,
    /// The key's mod_revision before (0 if absent); the transaction's compare must guard it.
    pub after: i64,
}

/// One key-value as etcd holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value (UTF-8).
    pub value: String,
    /// Revision of its last change.
    pub mod_revision: i64,
    /// Its lease, 0 if none.
    pub lease: i64,
}

/// A transaction's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Txn {
    /// Whether the compares held.
    pub succeeded: bool,
    /// The store revision after it.
    pub revision: i64,
    /// The ranges of the branch that ran, in order.
    pub ranges: Vec<Vec<Kv>>,
    /// The member that answered (or that the read-back went to).
    pub endpoint: String,
    /// The answer was lost and the result comes from reading back.
    pub read_back: bool,
}

/// How a request may be retried on another member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Sending it twice does no harm (reads, lease keepalives, puts of the same value).
    Idempotent,
    /// A transaction: a lost answer must be read back before anything else.
    Txn,
}

/// Why one member did not answer.
enum Miss {
    /// Not applied there; try the next member.
    Skip(String),
    /// Sent, answer lost.
    Lost(String),
    /// A definite error answer.
    Refused(String),
}

/// A client of one etcd cluster.
pub struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// Index of the member that last answered, and whether each member was seen with a leader.
    state: Mutex<(usize, Vec<bool>)>,
}

/// `s` base64-encoded, as the gateway wants bytes.
pub fn b64(s: &str) -> String {
    B64.encode(s)
}

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".into()
}

fn unb64(s: &str) -> Result<String, String> {
    let bytes = B64
        .decode(s)
        .map_err(|e| format!("bad base64 {s:?} from etcd: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("etcd holds a non-UTF-8 value {s:?}"))
}

/// An int64 field: a string in JSON, absent when zero.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kvs(range: &Value) -> Result<Vec<Kv>, String> {
    let mut out = Vec::new();
    for kv in range["kvs"].as_array().into_iter().flatten() {
        out.push(Kv {
            key: unb64(kv["key"].as_str().unwrap_or_default())?,
            value: unb64(kv["value"].as_str().unwrap_or_default())?,
            mod_revision: int(&kv["mod_revision"]),
            lease: int(&kv["lease"]),
        });
    }
    Ok(out)
}

/// Parses a txn answer.
fn parse_txn(v: &Value, endpoint: &str) -> Result<Txn, String> {
    let mut ranges = Vec::new();
    for op in v["responses"].as_array().into_iter().flatten() {
        if let Some(r) = op.get("response_range") {
            ranges.push(kvs(r)?);
        }
    }
    Ok(Txn {
        succeeded: v["succeeded"].as_bool().unwrap_or(false),
        revision: int(&v["header"]["revision"]),
        ranges,
        endpoint: endpoint.to_string(),
        read_back: false,
    })
}

/// Whether a read-back of `check.key` shows the lost transaction applied.
fn applied(check: &Check, now: Option<&Kv>) -> bool {
    now.is_some_and(|kv| kv.value == check.value && kv.mod_revision > check.after)
}

/// Classifies an error answer: gRPC code 14 (Unavailable) without a leader was not applied anywhere.
fn classify_status(url: &str, code: u16, body: &str) -> Miss {
    // The first JSON value; anything after it (a trailer) is not ours.
    let v: Value = serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or(Value::Null);
    let msg = v["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().chars().take(200).collect());
    let what = format!("{url}: HTTP {code}: {msg}");
    if msg.contains("no leader") || msg.contains("not leader") || msg.contains("not capable") {
        Miss::Skip(what)
    } else if msg.contains("timed out") || msg.contains("leader changed") || code >= 500 {
        Miss::Lost(what)
    } else {
        Miss::Refused(msg)
    }
}

impl Client {
    /// A client of the cluster whose members answer at `endpoints` (http://HOST:PORT).
    pub fn new(endpoints: &[String]) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirects(0)
            .build();
        Client {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            agent,
            state: Mutex::new((0, vec![false; endpoints.len()])),
        }
    }

    /// The members, as configured.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The member that last answered.
    pub fn endpoint(&self) -> String {
        let at = self.state.lock().map(|s| s.0).unwrap_or(0);
        self.endpoints.get(at).cloned().unwrap_or_default()
    }

    /// One POST to one member; the parsed answer or why not.
    fn post(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value, Miss> {
        let url = format!("{endpoint}{path}");
        match self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
        {
            Ok(r) => {
                let text = r
                    .into_string()
                    .map_err(|e| Miss::Lost(format!("{url}: reading the answer: {e}")))?;
                serde_json::from_str(&text)
                    .map_err(|e| Miss::Refused(format!("unexpected answer from {url}: {e}")))
            }
            Err(ureq::Error::Status(code, r)) => {
                // The gateway ends error bodies with a gRPC trailer that ureq reads
                // as a broken chunk: keep what arrived before it.
                let mut bytes = Vec::new();
                let reader = r.into_reader();
                let _ = std::io::Read::read_to_end(
                    &mut std::io::Read::take(reader, 64 * 1024),
                    &mut bytes,
                );
                Err(classify_status(
                    &url,
                    code,
                    &String::from_utf8_lossy(&bytes),
                ))
            }
            Err(ureq::Error::Transport(t)) => match t.kind() {
                // Nothing reached the member.
                ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => {
                    Err(Miss::Skip(format!("{endpoint}: {}", short(&t.to_string()))))
                }
                _ => Err(Miss::Lost(format!("{endpoint}: {}", short(&t.to_string())))),
            },
        }
    }

    /// Whether `endpoint` currently follows a leader (a cheap local status request).
    fn has_leader(&self, endpoint: &str) -> Result<(), Miss> {
        let v = self.post(endpoint, "/v3/maintenance/status", &json!({}))?;
        // A uint64 member ID, as a string; absent (zero) without a leader.
        let leader = v["leader"].as_str().unwrap_or("0");
        if leader.is_empty() || leader == "0" {
            return Err(Miss::Skip(format!("{endpoint}: no leader")));
        }
        Ok(())
    }

    /// Sends to members in turn, starting with the one that last answered.
    fn call(&self, path: &str, body: &Value, mode: Mode) -> Result<(Value, String), Fault> {
        let (start, n) = {
            let s = self
                .state
                .lock()
                .map_err(|_| Fault::Refused("poisoned".into()))?;
            (s.0, self.endpoints.len())
        };
        let mut tried = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let endpoint = &self.endpoints[i];
            let checked = self.state.lock().map(|s| s.1[i]).unwrap_or(false);
            if !checked {
                match self.has_leader(endpoint) {
                    Ok(()) => self.mark(i, true),
                    Err(Miss::Skip(w) | Miss::Lost(w) | Miss::Refused(w)) => {
                        tried.push(w);
                        continue;
                    }
                }
            }
            match self.post(endpoint, path, body) {
                Ok(v) => {
                    if let Ok(mut s) = self.state.lock() {
                        s.0 = i;
                    }
                    return Ok((v, endpoint.clone()));
                }
                Err(Miss::Refused(why)) => return Err(Fault::Refused(why)),
                Err(Miss::Lost(w)) if mode == Mode::Txn => {
                    self.mark(i, false);
                    tried.push(w);
                    return Err(Fault::Unknown(tried));
                }
                Err(Miss::Skip(w) | Miss::Lost(w)) => {
                    self.mark(i, false);
                    tried.push(w);
                }
            }
        }
        Err(Fault::Unavailable(tried))
    }

    fn mark(&self, i: usize, ok: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.1[i] = ok;
        }
    }

    /// Every key in [key, end) (just `key` when `end` is None), with the store revision.
    pub fn range(&self, key: &str, end: Option<&str>) -> Result<(Vec<Kv>, i64), Fault> {
        let mut body = json!({"key": b64(key)});
        if let Some(end) = end {
            body["range_end"] = Value::String(b64(end));
        }
        let (v, _) = self.call("/v3/kv/range", &body, Mode::Idempotent)?;
        Ok((
            kvs(&v).map_err(Fault::Refused)?,
            int(&v["header"]["revision"]),
        ))
    }

    /// One key, if set.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, Fault> {
        Ok(self.range(key, None)?.0.into_iter().next())
    }

    /// Deletes one key.
    pub fn delete(&self, key: &str) -> Result<(), Fault> {
        self.call(
            "/v3/kv/deleterange",
            &json!({"key": b64(key)}),
            Mode::Idempotent,
        )
        .map(|_| ())
    }

    /// Runs a transaction (`body` as the gateway takes it). On a lost answer `check`
    /// is read back: applied → the success it was; not applied → the next member
    /// gets it (its compare guards against applying twice); unknown → [`Fault::Unknown`].
    pub fn txn(&self, body: &Value, check: &Check) -> Result<Txn, Fault> {
        let mut lost = Vec::new();
        for _ in 0..self.endpoints.len().max(1) {
            match self.call("/v3/kv/txn", body, Mode::Txn) {
                Ok((v, endpoint)) => return parse_txn(&v, &endpoint).map_err(Fault::Refused),
                Err(Fault::Unknown(tried)) => {
                    lost.extend(tried);
                    match self.get(&check.key) {
                        Ok(now) if applied(check, now.as_ref()) => {
                            return Ok(Txn {
                                succeeded: true,
                                revision: now.map_or(0, |kv| kv.mod_revision),
                                ranges: Vec::new(),
                                endpoint: self.endpoint(),
                                read_back: true,
                            })
                        }
                        Ok(_) => {
                            lost.push(format!(
                                "read back {}: not applied, sending again",
                                check.key
                            ));
                        }
                        Err(e) => {
                            lost.push(format!("read back {}: {e}", check.key));
                            return Err(Fault::Unknown(lost));
                        }
                    }
                }
                Err(Fault::Unavailable(tried)) => {
                    lost.extend(tried);
                    return Err(Fault::Unavailable(lost));
                }
                Err(e) => return Err(e),
            }
        }
        Err(Fault::Unavailable(lost))
    }

    /// A new lease of `ttl` seconds; its ID.
    pub fn grant(&self, ttl: u64) -> Result<i64, Fault> {
        let (v, _) = self.call(
            "/v3/lease/grant",
            &json!({"TTL": ttl.to_string()}),
            Mode::Idempotent,
        )?;
        match int(&v["ID"]) {
            0 => Err(Fault::Refused(format!("no lease ID in {v}"))),
            id => Ok(id),
        }
    }

    /// Renews lease `id`; the TTL it now has, or None if etcd no longer knows it.
    pub fn keepalive(&self, id: i64) -> Result<Option<i64>, Fault> {
        let (v, _) = self.call(
            "/v3/lease/keepalive",
            &json!({"ID": id.to_string()}),
            Mode::Idempotent,
        )?;
        let ttl = int(&v["result"]["TTL"]);
        Ok((ttl > 0).then_some(ttl))
    }

    /// Ends lease `id` and deletes its keys; a lease already gone is fine.
    pub fn revoke(&self, id: i64) -> Result<(), Fault> {
        match self.call(
            "/v3/lease/revoke",
            &json!({"ID": id.to_string()}),
            Mode::Idempotent,
        ) {
            Ok(_) => Ok(()),
            Err(Fault::Refused(why)) if why.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Blocks until `key` is deleted after `revision` or `until` passes; true if it was deleted.
    pub fn wait_deleted(&self, key: &str, revision: i64, until: Instant) -> Result<bool, Fault> {
        let mut tried = Vec::new();
        for endpoint in &self.endpoints {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // A watch answers only when something happens: its own agent, read-bounded by the deadline.
            let agent = ureq::AgentBuilder::new()
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(left)
                .build();
            let body = json!({"create_request": {
                "key": b64(key),
                "start_revision": (revision + 1).to_string(),
                "filters": ["NOPUT"],
            }});
            let url = format!("{endpoint}/v3/watch");
            let resp = match agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string())
            {
                Ok(r) => r,
                Err(e) => {
                    tried.push(format!("{endpoint}: {}", short(&e.to_string())));
                    continue;
                }
            };
            let reader = std::io::BufReader::new(resp.into_reader());
            for line in reader.lines() {
                let Ok(line) = line else {
                    // A read timeout: the deadline passed (or the member went away).
                    if Instant::now() >= until {
                        return Ok(false);
                    }
                    break;
                };
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let events = v["result"]["events"].as_array().map_or(0, Vec::len);
                if events > 0 {
                    return Ok(true);
                }
                if v["result"]["canceled"].as_bool() == Some(true) {
                    // Compacted past `revision`: the key changed long ago.
                    return Ok(true);
                }
            }
            tried.push(format!("{endpoint}: the watch ended"));
        }
        Err(Fault::Unavailable(tried))
    }
}

/// ureq's transport errors repeat the URL; one line is enough.
fn short(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end("svc/web/"), "svc/web0");
        assert_eq!(prefix_end("a"), "b");
    }

    #[test]
    fn a_lost_txn_applied_only_if_the_key_moved_past_the_guard_to_our_value() {
        let check = Check {
            key: "p/pid/current".into(),
            value: "43".into(),
            after: 7,
        };
        let kv = |v: &str, rev| Kv {
            key: check.key.clone(),
            value: v.into(),
            mod_revision: rev,
            lease: 0,
        };
        assert!(applied(&check, Some(&kv("43", 9))));
        // Unchanged since the guard: the txn never applied.
        assert!(!applied(&check, Some(&kv("42", 7))));
        // Someone else's write won.
        assert!(!applied(&check, Some(&kv("44", 9))));
        assert!(!applied(&check, None));
    }

    #[test]
    fn leaderless_answers_go_to_the_next_member_timeouts_are_lost() {
        let no_leader =
            r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
        assert!(matches!(
            classify_status("u", 503, no_leader),
            Miss::Skip(_)
        ));
        let timed_out = r#"{"error":"etcdserver: request timed out","code":14}"#;
        assert!(matches!(
            classify_status("u", 503, timed_out),
            Miss::Lost(_)
        ));
        let gone = "{\"error\":\"etcdserver: requested lease not found\",\"code\":5}Grpc-Trailer-Content-Type: application/grpc\r\n";
        assert!(
            matches!(classify_status("u", 404, gone), Miss::Refused(m) if m.contains("lease not found"))
        );
    }

    #[test]
    fn an_empty_range_has_no_kvs() {
        // Verbatim shape of etcd 3.4.23's answer for a prefix with no keys.
        let v: Value = serde_json::from_str(r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"1","raft_term":"2"}}"#).expect("json");
        assert_eq!(kvs(&v), Ok(vec![]));
    }

    #[test]
    fn a_failed_txn_has_no_succeeded_field() {
        let v: Value = serde_json::from_str(&format!(
            r#"{{"header":{{"revision":"12"}},"responses":[{{"response_range":{{"kvs":[{{"key":"{}","mod_revision":"11","value":"{}"}}],"count":"1"}}}}]}}"#,
            b64("p/port/current"),
            b64("20009")
        ))
        .expect("json");
        let t = parse_txn(&v, "e").expect("parse");
        assert!(!t.succeeded);
        assert_eq!(t.revision, 12);
        assert_eq!(t.ranges[0][0].value, "20009");
        assert_eq!(t.ranges[0][0].mod_revision, 11);
    }
}
