//! The fleet lock: one ship or rollback per environment at a time, a lease-backed etcd key held for the whole rollout.
//!
//! The key `baton/lock/SERVICE/ENV` is created only if absent, on a lease the
//! shipper renews every third of `lock_ttl`; a killed shipper's lock expires
//! with its lease. Waiting for a lock watches the key's deletion (no polling).

use super::config::Env;
use crate::error::{Error, Result};
use crate::etcd::{b64, Check, Client};
use crate::exit::Action;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Who holds a lock: the key's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// The user who shipped.
    pub who: String,
    /// The machine it ran on.
    pub from: String,
    /// The shipper's PID there.
    pub pid: u32,
    /// ship VERSION, or rollback.
    pub doing: String,
    /// When it took the lock (RFC 3339, UTC).
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} (pid {}) doing {} since {}",
            self.who, self.from, self.pid, self.doing, self.since
        )
    }
}

/// A held lock; dropping it releases the lock (revokes its lease).
pub struct Lock {
    key: String,
    lost: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The lock key of `service` in `env`.
pub fn key(service: &str, env: &str) -> String {
    format!("baton/lock/{service}/{env}")
}

fn me(doing: &str) -> Holder {
    Holder {
        who: crate::host::operator().unwrap_or_else(|| "unknown".into()),
        from: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into()),
        pid: std::process::id(),
        doing: doing.to_string(),
        since: crate::deploy::registry::rfc3339(SystemTime::now()),
    }
}

/// A lock value as a line: who, where, what, since (the raw value if it is not baton's).
pub fn holder_of(value: &str) -> String {
    serde_json::from_str::<Holder>(value).map_or_else(|_| value.to_string(), |h| h.to_string())
}

fn unreachable(env: &Env, key: &str, e: impl std::fmt::Display) -> Error {
    Error::unable(
        format!(
            "take the fleet lock {key} in etcd ({})",
            env.etcd.join(", ")
        ),
        e,
    )
    .hint(format!(
        "no host was touched; bring etcd back, or fix environments.{}.etcd in the deploy file",
        env.name
    ))
}

/// Takes the lock for `doing` (e.g. "ship 1.2.3"), waiting up to `wait` for a holder to finish.
pub fn acquire(env: &Env, service: &str, doing: &str, wait: Option<Duration>) -> Result<Lock> {
    let key = key(service, &env.name);
    let client = Arc::new(Client::new(&env.etcd));
    let ttl = env.lock_ttl.as_secs().max(3);
    let until = wait.map(|w| Instant::now() + w);
    loop {
        let lease = client.grant(ttl).map_err(|e| unreachable(env, &key, e))?;
        let value = serde_json::to_string(&me(doing))
            .map_err(|e| Error::unable("encode the fleet lock", e))?;
        let body = json!({
            "compare": [{"key": b64(&key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(&key), "value": b64(&value), "lease": lease.to_string()}}],
            "failure": [{"request_range": {"key": b64(&key)}}],
        });
        let check = Check {
            key: key.clone(),
            value: value.clone(),
            after: 0,
        };
        let txn = match client.txn(&body, &check) {
            Ok(t) => t,
            Err(e) => {
                let _ = client.revoke(lease);
                return Err(unreachable(env, &key, e));
            }
        };
        if txn.succeeded {
            return Ok(keep(client, key, lease, ttl));
        }
        let _ = client.revoke(lease);
        let Some(held) = txn.ranges.first().and_then(|r| r.first()).cloned() else {
            // Released between the compare and the read: try again.
            continue;
        };
        let refuse = || {
            Error::unable(
                format!("{doing} in {}", env.name),
                format!("{key} is held by {}", holder_of(&held.value)),
            )
            .code(Action::Generic)
            .hint(format!(
                "wait for it to finish, or pass --wait-lock DURATION; if that shipper is gone, its lock expires within {ttl}s, or `baton ship {} --unlock` breaks it",
                env.name
            ))
        };
        let Some(until) = until else {
            return Err(refuse());
        };
        if Instant::now() >= until {
            return Err(refuse());
        }
        println!(
            "waiting for the fleet lock: {key} is held by {}",
            holder_of(&held.value)
        );
        match client.wait_deleted(&key, held.mod_revision, until) {
            Ok(true) => continue,
            Ok(false) => return Err(refuse()),
            Err(e) => return Err(unreachable(env, &key, e)),
        }
    }
}

/// Keeps the lease alive on a thread; a lost lease is flagged for the rollout to halt.
fn keep(client: Arc<Client>, key: String, lease: i64, ttl: u64) -> Lock {
    let lost = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<()>();
    let flag = Arc::clone(&lost);
    let every = Duration::from_secs(ttl) / 3;
    let thread = std::thread::Builder::new()
        .name("fleet-lock".into())
        .spawn(move || loop {
            match rx.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => {
                    let _ = client.revoke(lease);
                    return;
                }
            }
            match client.keepalive(lease) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
                // Unreachable for now: the lease may still live; the next renewal tells.
                Err(_) => {}
            }
        })
        .ok();
    Lock {
        key,
        lost,
        stop: Some(tx),
        thread,
    }
}

impl Lock {
    /// Set once etcd no longer knows the lock's lease (expired or broken with --unlock).
    pub fn lost(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.lost)
    }

    /// The key held.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `--unlock`: deletes the lock and revokes its lease; says whose it was (None: nobody held it).
pub fn unlock(env: &Env, service: &str) -> Result<Option<String>> {
    let key = key(service, &env.name);
    let client = Client::new(&env.etcd);
    let fail = |e: crate::etcd::Fault| {
        Error::unable(
            format!(
                "break the fleet lock {key} in etcd ({})",
                env.etcd.join(", ")
            ),
            e,
        )
    };
    let Some(held) = client.get(&key).map_err(fail)? else {
        return Ok(None);
    };
    if held.lease != 0 {
        // The holder's renewals then find the lease gone, and its rollout halts.
        client.revoke(held.lease).map_err(fail)?;
    }
    client.delete(&key).map_err(fail)?;
    Ok(Some(holder_of(&held.value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_reads_as_who_where_what_and_since() {
        let h = Holder {
            who: "ana".into(),
            from: "build-1".into(),
            pid: 42,
            doing: "ship 1.2.3".into(),
            since: "2026-11-29T06:00:00Z".into(),
        };
        let v = serde_json::to_string(&h).expect("json");
        assert_eq!(
            holder_of(&v),
            "ana@build-1 (pid 42) doing ship 1.2.3 since 2026-11-29T06:00:00Z"
        );
        assert_eq!(holder_of("junk"), "junk");
        assert_eq!(key("web", "production"), "baton/lock/web/production");
    }
}
