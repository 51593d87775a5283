//! The registry on a real 3-member etcd cluster (Debian's etcd-server, on loopback):
//! failover between members, no quorum, lost answers, leased keys that expire and come back.

use crate::harness;

use harness::lab::{EtcdCluster, PausedSwitch};
use harness::{free_port, processes_with_env, wait_until, Run, Spec, Svc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

/// A service publishing to `endpoints` under test/web, with `extra` lines in [registry].
fn service(endpoints: &str, extra: &str, port: u16) -> Svc {
    Spec::new("web", r#"["sleep", "300"]"#)
        .tables(&format!(
            "[port]\nport = {port}\n\n[registry]\nfile = \"{{dir}}/registry.json\"\netcd = [{endpoints}]\nprefix = \"test/web\"\nhost = \"web-1.test\"\n{extra}\n"
        ))
        .create()
}

fn switch(svc: &Svc, pid: i32, port: u16) -> Run {
    svc.baton(&[
        "__switch",
        "--pid",
        &pid.to_string(),
        "--port",
        &port.to_string(),
        "--release",
        "r1",
    ])
}

fn last_line(r: &Run) -> String {
    r.stdout.lines().last().unwrap_or_default().to_string()
}

#[test]
fn a_publish_goes_to_the_next_member_when_one_is_down() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let mut cluster = EtcdCluster::start(&test.dir);
    cluster.stop(0);
    let svc = service(&cluster.toml(&[0, 1, 2]), "", free_port());

    let r = switch(&svc, 4242, 20001);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("registry: etcd http://127.0.0.1:")
            && !r
                .stdout
                .contains(&format!("registry: etcd {} ", cluster.urls[0])),
        "a live member answered: {r:?}"
    );
    assert_eq!(
        cluster.get_at(1, "test/web/pid/current").as_deref(),
        Some("4242")
    );
    assert_eq!(
        cluster.get_at(2, "test/web/port/current").as_deref(),
        Some("20001")
    );
    // Without a ttl the keys stay as they always were: no lease, no endpoint key.
    assert_eq!(cluster.get_at(1, "test/web/endpoint"), None);
}

#[test]
fn without_quorum_the_publish_fails_naming_every_member_and_writes_nothing() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let mut cluster = EtcdCluster::start(&test.dir);
    let svc = service(&cluster.toml(&[0, 1, 2]), "", free_port());
    let r = switch(&svc, 4242, 20001);
    assert_eq!(r.code, 0, "{r:?}");
    let registry_before = std::fs::read(svc.path("registry.json")).expect("registry");

    cluster.stop(0);
    cluster.stop(1);
    wait_until(
        Duration::from_secs(20),
        "the last member to lose its leader",
        || !cluster.healthy(2),
    );
    let r = switch(&svc, 4343, 20002);
    assert_eq!(r.code, 1, "{r:?}");
    let last = last_line(&r);
    assert!(
        last.starts_with("error: registry: unable to reach etcd ("),
        "{r:?}"
    );
    for url in &cluster.urls {
        assert!(last.contains(url.as_str()), "names {url}: {last}");
    }
    assert!(last.contains("no leader"), "{last}");
    assert!(last.contains("nothing was switched"), "{last}");
    assert_eq!(
        std::fs::read(svc.path("registry.json")).expect("registry"),
        registry_before,
        "the local registry is untouched"
    );

    // Quorum back: the old keys are intact, nothing half-written.
    cluster.restart(0);
    cluster.wait_healthy(0);
    assert_eq!(
        cluster.get_at(0, "test/web/pid/current").as_deref(),
        Some("4242")
    );
    assert_eq!(cluster.get_at(0, "test/web/pid/previous"), None);
}

/// A proxy that is just a file and a reload command: enough to see it put back.
fn file_proxy(dir: &std::path::Path) -> String {
    format!(
        "[proxy]\nkind = \"command\"\nupstream = \"{d}/upstream.conf\"\ntemplate = \"server 127.0.0.1:{{port}};\"\ncheck = [\"true\"]\nreload = [\"true\"]\n",
        d = dir.display()
    )
}

/// A service behind the command proxy of [`file_proxy`], publishing to the members of
/// `cluster` in `order` with `extra` lines in [registry]; the upstream file as it was before.
fn proxied_web(test: &Svc, cluster: &EtcdCluster, order: &[usize], extra: &str) -> (Svc, Vec<u8>) {
    let svc = Spec::new("web", r#"["sleep", "300"]"#)
        .tables(&format!(
            "{}\n[registry]\nfile = \"{{dir}}/registry.json\"\netcd = [{}]\nprefix = \"test/web\"\n{extra}",
            file_proxy(&test.dir),
            cluster.toml(order)
        ))
        .create();
    std::fs::write(test.dir.join("upstream.conf"), "server 127.0.0.1:20001;\n").expect("upstream");
    let before = std::fs::read(test.dir.join("upstream.conf")).expect("upstream");
    (svc, before)
}

/// A switch to pid 4343 on port 20002, held for `ms` once the proxy has moved.
fn switch_held_after_reload(svc: &Svc, ms: u32) -> PausedSwitch {
    PausedSwitch::start(
        &svc.config,
        &["__switch", "--pid", "4343", "--port", "20002"].map(String::from),
        ms,
        "proxy: reloaded",
    )
}

/// The switch's output says the proxy was put back, and the upstream file is as `before`.
fn assert_proxy_put_back(test: &Svc, out: &[String], before: &[u8]) {
    assert!(
        out.iter()
            .any(|l| l.starts_with("proxy: restored the previous")),
        "{out:#?}"
    );
    assert_eq!(
        std::fs::read(test.dir.join("upstream.conf")).expect("upstream"),
        before
    );
}

#[test]
fn quorum_lost_after_the_proxy_moved_puts_the_proxy_back() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let mut cluster = EtcdCluster::start(&test.dir);
    let (svc, upstream_before) = proxied_web(&test, &cluster, &[0, 1, 2], "");

    let paused = switch_held_after_reload(&svc, 4000);
    assert_ne!(
        std::fs::read(test.dir.join("upstream.conf")).expect("upstream"),
        upstream_before,
        "the proxy moved: {:?}",
        paused.out
    );
    // The first member answered the preflight read; take two away during the pause.
    cluster.stop(0);
    cluster.stop(1);
    let (code, out) = paused.finish();

    assert_eq!(code, Some(1), "{out:#?}");
    let last = out.last().cloned().unwrap_or_default();
    assert!(last.starts_with("error: registry publish: "), "{out:#?}");
    assert!(
        last.contains("no etcd member could take the request"),
        "{last}"
    );
    assert!(last.contains("nothing was written to etcd"), "{last}");
    assert_proxy_put_back(&test, &out, &upstream_before);
    assert!(
        !svc.path("registry.json").exists(),
        "the local registry was put back"
    );
}

/// Kills the supervisor and its service outright (no chance to revoke anything).
fn kill_all(svc: &Svc) {
    if let Some(pid) = svc.pid_in_file() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for p in processes_with_env(&svc.marker) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

#[test]
fn leased_keys_vanish_within_the_ttl_after_the_supervisor_is_killed() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let cluster = EtcdCluster::start(&test.dir);
    let port = free_port();
    let svc = service(&cluster.toml(&[0, 1, 2]), "ttl = \"3s\"", port);
    let r = svc.start();
    assert_eq!(r.code, 0, "{r:?}");
    wait_until(
        Duration::from_secs(30),
        "the instance to be registered",
        || cluster.get_at(1, "test/web/endpoint").is_some(),
    );
    assert_eq!(
        cluster.get_at(1, "test/web/endpoint"),
        Some(format!("web-1.test:{port}"))
    );
    let (_, status) = svc.status();
    let pid = status["service_pid"].as_i64().expect("service pid");
    assert_eq!(
        cluster.get_at(2, "test/web/pid/current"),
        Some(pid.to_string())
    );
    let lease = status["registry_lease"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        lease.starts_with("lease ") && lease.contains("granted"),
        "{status}"
    );
    let text = svc.baton(&["status"]);
    assert!(text.stdout.contains("registry: lease "), "{text:?}");

    kill_all(&svc);
    wait_until(
        Duration::from_secs(30),
        "the keys to expire with the lease",
        || cluster.get_at(1, "test/web/pid/current").is_none(),
    );
    assert_eq!(cluster.get_at(0, "test/web/endpoint"), None);
    assert_eq!(cluster.get_at(0, "test/web/port/current"), None);
}

#[test]
fn a_supervisor_cut_off_longer_than_its_ttl_registers_again_and_says_so() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let mut cluster = EtcdCluster::start(&test.dir);
    let port = free_port();
    // The supervisor knows only member 0: stopping it partitions the supervisor, not the cluster.
    let svc = service(&cluster.toml(&[0]), "ttl = \"3s\"", port);
    assert_eq!(svc.start().code, 0);
    wait_until(
        Duration::from_secs(30),
        "the instance to be registered",
        || cluster.get_at(1, "test/web/endpoint").is_some(),
    );

    cluster.stop(0);
    // Generous: on a loaded machine the members left may re-elect, and a new leader extends leases.
    wait_until(
        Duration::from_secs(120),
        "the lease to expire on the cluster",
        || cluster.get_at(1, "test/web/pid/current").is_none(),
    );
    wait_until(
        Duration::from_secs(20),
        "status to show the failing renewal",
        || {
            svc.status().1["registry_lease"]
                .as_str()
                .is_some_and(|s| s.contains("renewal failing"))
        },
    );

    cluster.restart(0);
    cluster.wait_healthy(0);
    wait_until(
        Duration::from_secs(40),
        "the supervisor to register again",
        || cluster.get_at(1, "test/web/endpoint").is_some(),
    );
    assert_eq!(
        cluster.get_at(2, "test/web/endpoint"),
        Some(format!("web-1.test:{port}"))
    );
    let (code, status) = svc.status();
    assert_eq!(code, 0);
    let lease = status["registry_lease"].as_str().unwrap_or_default();
    assert!(
        lease.contains("re-registered") && lease.contains("expired"),
        "{status}"
    );
    assert_eq!(
        cluster.get_at(1, "test/web/pid/current"),
        status["service_pid"].as_i64().map(|p| p.to_string())
    );
    assert_eq!(svc.stop().code, 0);
}

#[test]
fn a_ttl_without_etcd_or_too_short_is_refused_by_check() {
    let svc = Spec::new("web", r#"["sleep", "300"]"#)
        .tables("[registry]\nttl = \"1s\"\n")
        .create();
    let r = svc.baton(&["check"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("registry.ttl"), "{r:?}");
    assert!(r.stderr.contains("too short"), "{r:?}");
}

#[test]
fn a_transaction_whose_answer_is_lost_is_read_back_before_anything_else() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let mut cluster = EtcdCluster::start(&test.dir);
    // Member 2 first: it answers the preflight read, then keeps the transaction without quorum.
    let (svc, upstream_before) = proxied_web(&test, &cluster, &[2, 0, 1], "");

    let paused = switch_held_after_reload(&svc, 3000);
    cluster.stop(0);
    cluster.stop(1);
    let (code, out) = paused.finish();

    // Sent, no answer, and no member with quorum to read back from: say so, never guess.
    assert_eq!(code, Some(3), "{out:#?}");
    let last = out.last().cloned().unwrap_or_default();
    assert!(
        last.contains("the answer was lost and reading back failed"),
        "{last}"
    );
    assert!(last.contains("read back test/web/pid/current"), "{last}");
    assert!(
        last.contains("check test/web/pid/current with etcdctl"),
        "{last}"
    );
    assert_proxy_put_back(&test, &out, &upstream_before);
    // Quorum back: a proposal made without a leader was dropped, and the read-back says so.
    cluster.restart(0);
    cluster.wait_healthy(0);
    assert_eq!(cluster.get_at(0, "test/web/pid/current"), None);
}

#[test]
fn a_clean_stop_revokes_the_lease_so_the_keys_go_at_once() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let cluster = EtcdCluster::start(&test.dir);
    // A TTL far longer than the wait below: only a revoke can remove the keys in time.
    let svc = service(&cluster.toml(&[0, 1, 2]), "ttl = \"120s\"", free_port());
    assert_eq!(svc.start().code, 0);
    wait_until(
        Duration::from_secs(30),
        "the instance to be registered",
        || cluster.get_at(1, "test/web/pid/current").is_some(),
    );
    assert_eq!(svc.stop().code, 0);
    wait_until(
        Duration::from_secs(30),
        "the keys to go with the revoked lease",
        || cluster.get_at(1, "test/web/pid/current").is_none(),
    );
    assert_eq!(cluster.get_at(2, "test/web/endpoint"), None);
}

#[test]
fn a_deploy_whose_lease_is_gone_fails_safely_and_says_why() {
    let test = Spec::new("etcd-holder", r#"["true"]"#).create();
    let cluster = EtcdCluster::start(&test.dir);
    let (svc, upstream_before) = proxied_web(&test, &cluster, &[0, 1, 2], "ttl = \"5s\"\n");
    // The lease the supervisor last held, since expired (a partition longer than the TTL).
    let granted = cluster.ctl_at(0, &["lease", "grant", "5"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    cluster.ctl_at(0, &["lease", "revoke", &id]);
    std::fs::create_dir_all(svc.path("state")).expect("state dir");
    std::fs::write(
        svc.path("state/etcd-lease"),
        format!("{}\n", i64::from_str_radix(&id, 16).expect("hex id")),
    )
    .expect("lease file");

    let r = switch(&svc, 4343, 20002);
    assert_eq!(r.code, 1, "{r:?}");
    let last = last_line(&r);
    assert!(last.starts_with("error: registry publish: "), "{r:?}");
    assert!(last.contains("requested lease not found"), "{last}");
    assert!(last.contains("the registry lease expired"), "{last}");
    assert!(r.stdout.contains("proxy: restored the previous"), "{r:?}");
    assert_eq!(
        std::fs::read(test.dir.join("upstream.conf")).expect("upstream"),
        upstream_before
    );
    assert_eq!(
        cluster.get_at(1, "test/web/pid/current"),
        None,
        "nothing written"
    );
}
