//! `baton reexec` at its edges: the etcd lease carried across the exec, a new image that
//! cannot take over, a supervisor killed mid-reexec, and a supervisor of an older build.

use crate::harness;

use harness::lab::EtcdCluster;
use harness::{free_port, wait_until, Spec};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `etcdctl get KEY -w json` through member 0: the key's lease (0 if none) and the revision.
fn lease_of(cluster: &EtcdCluster, key: &str) -> (i64, i64) {
    let v: serde_json::Value =
        serde_json::from_str(&cluster.ctl_at(0, &["get", key, "-w", "json"])).expect("json");
    let lease = v["kvs"][0]["lease"].as_i64().unwrap_or(0);
    (lease, v["header"]["revision"].as_i64().expect("revision"))
}

/// Seconds lease `id` has left, from `etcdctl lease timetolive`; panics once it expired.
fn ttl_left(cluster: &EtcdCluster, id: i64) -> u64 {
    let out = cluster.ctl_at(0, &["lease", "timetolive", &format!("{id:x}")]);
    let left = out
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok());
    left.unwrap_or_else(|| panic!("lease {id:x} is gone: {out}"))
}

#[test]
fn the_etcd_lease_crosses_a_reexec_and_the_new_image_renews_it() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let cluster = EtcdCluster::start(&test.dir);
    let port = free_port();
    let svc = Spec::new("web", r#"["sleep", "300"]"#)
        .tables(&format!(
            "[port]\nport = {port}\n\n[registry]\nfile = \"{{dir}}/registry.json\"\netcd = [{}]\nprefix = \"test/web\"\nhost = \"web-1.test\"\nttl = \"6s\"\n",
            cluster.toml(&[0, 1, 2])
        ))
        .create();
    svc.start();
    wait_until(T, "the instance to be registered", || {
        cluster.get_at(1, "test/web/endpoint").is_some()
    });
    let (lease, revision) = lease_of(&cluster, "test/web/pid/current");
    assert_ne!(lease, 0, "the keys live on a lease");
    // Every change to the keys from here on: there must be none (no delete, no re-put).
    let events = svc.path("watch.out");
    let mut watch = Command::new("etcdctl")
        .args([
            "--endpoints",
            &cluster.urls[0],
            "watch",
            "--prefix",
            "test/web/",
        ])
        .arg(format!("--rev={}", revision + 1))
        .env("ETCDCTL_API", "3")
        .stdout(std::fs::File::create(&events).expect("watch output"))
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");

    let r = svc.baton(&["reexec"]);
    assert_eq!(r.code, 0, "{r:?}");
    let (_, st) = svc.status();
    let said = st["registry_lease"].as_str().unwrap_or_default();
    assert!(
        said.starts_with(&format!("lease {lease:x} (6s) carried across a reexec")),
        "{st}"
    );
    // The new image renews it: what it has left rises, twice (every 2 s at a 6 s TTL).
    let mut rises = 0;
    let mut last = ttl_left(&cluster, lease);
    wait_until(T, "two renewals of the carried lease", || {
        let left = ttl_left(&cluster, lease);
        rises += usize::from(left > last);
        last = left;
        rises >= 2
    });
    assert_eq!(lease_of(&cluster, "test/web/pid/current").0, lease);
    assert_eq!(lease_of(&cluster, "test/web/endpoint").0, lease);
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(seen.trim().is_empty(), "the keys were not touched: {seen}");

    // A clean stop still revokes it: the new image holds it as its own.
    svc.stop();
    wait_until(T, "the keys to go with the revoked lease", || {
        cluster.get_at(1, "test/web/pid/current").is_none()
    });
}
