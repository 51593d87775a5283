//! The supervisor's etcd lease (`[registry] ttl`): granted, kept alive, and re-registered after a loss, on a thread of its own.
//!
//! The registry keys (`PREFIX/{port,pid}/{current,previous}`, `PREFIX/endpoint`)
//! are attached to one lease, so a host whose supervisor dies drops out of the
//! registry within the TTL. The keeper renews it every third of the TTL: the
//! only periodic wakeup baton makes, and only when `ttl` is set (a 10 s TTL
//! costs 18 wakeups and 18 small HTTP requests a minute; the supervisor's own
//! loop never wakes for it). The lease ID goes to `STATE_DIR/etcd-lease` for
//! the switch worker, which attaches what it publishes to it. When etcd no
//! longer knows the lease (the supervisor was cut off for longer than the
//! TTL), the keeper grants a new one and registers again what the local
//! registry file says is serving — unless another writer got there first.

use crate::config::Spec;
use crate::deploy::registry;
use crate::etcd::{b64, Check, Client, Fault};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The lease keeper thread; dropping it revokes the lease (the keys go at once).
pub struct Keeper {
    state: Arc<Mutex<String>>,
    /// The lease held now (0: none), for a reexec to carry.
    id: Arc<AtomicI64>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping a lease when `[registry] ttl` is set: the one a previous image of this
    /// supervisor held (`carried`, across `baton reexec`) while etcd still knows it, else a new one.
    pub fn start(spec: &Spec, carried: Option<i64>) -> Option<Keeper> {
        let ttl = spec.registry.ttl?;
        let state = Arc::new(Mutex::new("no lease yet".to_string()));
        let (tx, rx) = mpsc::channel();
        // The first grant happens before the supervisor spawns anything: a switch worker that
        // read the lease file before the keeper thread wrote it would publish keys on no lease,
        // and those would outlive the supervisor.
        let secs = ttl.as_secs().max(3);
        let client = Client::new(&spec.registry.etcd);
        let resumed = carried.filter(|&id| id != 0).and_then(|id| {
            match client.keepalive(id) {
                // Renewed at once: the keys on it never went, and nothing is written again.
                Ok(Some(_)) => {
                    let line = format!("lease {id:x} ({secs}s) carried across a reexec {}", stamp());
                    tracing::info!("registry: {line}");
                    set(&state, line);
                    Some(id)
                }
                // etcd unreachable for now: the loop renews this lease, or registers again once
                // etcd says it is gone.
                Err(e) => {
                    let line = format!(
                        "lease {id:x} ({secs}s) carried across a reexec {}; renewal failing: {}",
                        stamp(),
                        crate::deploy::proxy::one_line(&e.to_string())
                    );
                    tracing::warn!("registry: {line}");
                    set(&state, line);
                    Some(id)
                }
                // Expired meanwhile: a new one, as at start.
                Ok(None) => {
                    tracing::warn!("registry: lease {id:x} carried across a reexec had expired; granting a new one");
                    None
                }
            }
        });
        let first = match resumed {
            Some(id) => id,
            None => match grant_and_register(&client, spec, secs) {
                Ok((id, what)) => {
                    let line = format!("lease {id:x} ({secs}s) granted {}; {what}", stamp());
                    tracing::info!("registry: {line}");
                    set(&state, line);
                    id
                }
                Err(e) => {
                    tracing::warn!("registry: no lease yet: {e}; the keeper retries");
                    0
                }
            },
        };
        let id = Arc::new(AtomicI64::new(first));
        let spec = spec.clone();
        let shared = Arc::clone(&state);
        let held = Arc::clone(&id);
        let thread = std::thread::Builder::new()
            .name("etcd-lease".into())
            .spawn(move || keep(&spec, ttl, &shared, &held, &rx))
            .map_err(|e| tracing::error!("unable to start the etcd lease keeper: {e}"))
            .ok()?;
        Some(Keeper {
            state,
            id,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The lease held now, if any: what a reexec carries to the next image.
    pub fn id(&self) -> Option<i64> {
        Some(self.id.load(Ordering::Acquire)).filter(|&id| id != 0)
    }

    /// One line for `status`: the lease, when last renewed, and any loss.
    pub fn describe(&self) -> String {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| "unknown".into())
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set(state: &Mutex<String>, text: String) {
    if let Ok(mut s) = state.lock() {
        *s = text;
    }
}

fn stamp() -> String {
    registry::rfc3339(SystemTime::now())
}

/// The keeper's loop: waits on its stop channel for a third of the TTL between renewals.
fn keep(
    spec: &Spec,
    ttl: Duration,
    state: &Mutex<String>,
    held: &AtomicI64,
    stop: &mpsc::Receiver<()>,
) {
    let client = Client::new(&spec.registry.etcd);
    let secs = ttl.as_secs().max(3);
    let every = Duration::from_secs(secs) / 3;
    // 0: none yet (the grant in `Keeper::start` failed), so the loop grants one.
    let mut lease: i64 = held.load(Ordering::Acquire);
    let mut last_renewed = Instant::now();
    // What was lost, said in status until the next loss.
    let mut history = String::new();
    loop {
        if lease == 0 {
            match grant_and_register(&client, spec, secs) {
                Ok((id, what)) => {
                    lease = id;
                    held.store(id, Ordering::Release);
                    last_renewed = Instant::now();
                    let line = if history.is_empty() {
                        format!("lease {id:x} ({secs}s) granted {}; {what}", stamp())
                    } else {
                        format!(
                            "lease {id:x} ({secs}s) re-registered {} after {history}; {what}",
                            stamp()
                        )
                    };
                    tracing::info!("registry: {line}");
                    set(state, line);
                }
                Err(e) => {
                    let line = format!("no lease: {e}; retrying every {}s", every.as_secs());
                    tracing::warn!("registry: {line}");
                    set(
                        state,
                        format!(
                            "{line}{}",
                            if history.is_empty() {
                                String::new()
                            } else {
                                format!(" (after {history})")
                            }
                        ),
                    );
                }
            }
        }
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            // Stopped: revoke, so the keys go now rather than after the TTL.
            _ => {
                if lease != 0 {
                    let _ = std::fs::remove_file(registry::lease_file(spec));
                    if let Err(e) = client.revoke(lease) {
                        tracing::warn!("registry: unable to revoke lease {lease:x}: {e}; its keys expire within {secs}s");
                    }
                }
                return;
            }
        }
        if lease == 0 {
            continue;
        }
        match client.keepalive(lease) {
            Ok(Some(_)) => {
                last_renewed = Instant::now();
                if let Ok(mut s) = state.lock() {
                    if let Some(i) = s.find("; renewal failing") {
                        s.truncate(i);
                    }
                }
            }
            Ok(None) => {
                history = format!("lease {lease:x} expired (lost at {})", stamp());
                tracing::warn!("registry: {history}; registering again");
                lease = 0;
                held.store(0, Ordering::Release);
            }
            Err(e) => {
                let line = format!(
                    "; renewal failing for {}s: {}",
                    last_renewed.elapsed().as_secs(),
                    crate::deploy::proxy::one_line(&e.to_string())
                );
                tracing::warn!("registry: lease {lease:x}{line}");
                if let Ok(mut s) = state.lock() {
                    if let Some(i) = s.find("; renewal failing") {
                        s.truncate(i);
                    }
                    s.push_str(&line);
                }
            }
        }
    }
}

/// Grants a lease, records it for the switch worker, and attaches what the local registry file says serves.
fn grant_and_register(client: &Client, spec: &Spec, secs: u64) -> Result<(i64, String), Fault> {
    let id = client.grant(secs)?;
    if let Err(e) = write_id(&registry::lease_file(spec), id) {
        tracing::warn!("registry: unable to record lease {id:x}: {e}");
    }
    let what = register(client, spec, id)?;
    Ok((id, what))
}

fn write_id(path: &Path, id: i64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::files::write_atomic(path, format!("{id}\n").as_bytes(), 0o644)
}

/// Puts the serving instance's keys on lease `id` if etcd names it (or nothing) as current.
fn register(client: &Client, spec: &Spec, id: i64) -> Result<String, Fault> {
    let Some(local) = registry::read_local(spec) else {
        return Ok("nothing published yet".into());
    };
    let Some(pid) = local.pid.current else {
        return Ok("nothing published yet".into());
    };
    let prefix = &spec.registry.prefix;
    let key = |k: &str| b64(&format!("{prefix}/{k}"));
    let lease = id.to_string();
    let mut puts = Vec::new();
    let mut put = |k: &str, v: String| {
        puts.push(json!({"request_put": {"key": key(k), "value": b64(&v), "lease": lease}}));
    };
    put("pid/current", pid.to_string());
    if let Some(p) = local.pid.previous {
        put("pid/previous", p.to_string());
    }
    if let Some(p) = local.port.current {
        put("port/current", p.to_string());
        put("endpoint", format!("{}:{p}", spec.registry.advertise));
    }
    if let Some(p) = local.port.previous {
        put("port/previous", p.to_string());
    }
    let pid_key = format!("{prefix}/pid/current");
    // Absent (expired with the old lease) or still ours: ours to register. A newer writer wins.
    for compare in [
        json!({"key": b64(&pid_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
        json!({"key": b64(&pid_key), "target": "VALUE", "result": "EQUAL", "value": b64(&pid.to_string())}),
    ] {
        let before = client.get(&pid_key)?.map_or(0, |kv| kv.mod_revision);
        let body = json!({"compare": [compare], "success": puts});
        let check = Check {
            key: pid_key.clone(),
            value: pid.to_string(),
            after: before,
        };
        if client.txn(&body, &check)?.succeeded {
            return Ok(format!("pid {pid} registered under {prefix}/"));
        }
    }
    Ok(format!("{pid_key} names another instance; left as it is"))
}
