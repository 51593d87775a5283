//! The operator's tools: `status` of every service, `logs`, `metrics` (checked by promtool and
//! served by a real node_exporter), `completions` and `man`.
//!
//! Each test builds a config directory holding one running service, one stopped, and one
//! whose config does not parse, all with their files in temporary directories.

use crate::harness;

use harness::{baton, baton_bin, fixture, free_port, wait_until, Run, Spec, Svc};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A TOML array of strings (JSON's string syntax is TOML's basic string syntax).
fn argv(args: &[&str]) -> String {
    serde_json::to_string(args).expect("json")
}

/// A config directory: `web` (running), `idle` (stopped), `broken` (does not parse).
struct Fleet {
    cfg: PathBuf,
    web: Svc,
    idle: Svc,
}

impl Fleet {
    fn new(tag: &str, web: Spec) -> Fleet {
        let web = web.create();
        let idle = Spec::new("idle", &argv(&["sleep", "1000"])).create();
        let cfg = std::env::temp_dir().join(format!("baton-op-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cfg);
        std::fs::create_dir_all(&cfg).expect("config dir");
        // Copies: the configs hold absolute paths, so they work from any directory.
        std::fs::copy(&web.config, cfg.join("web.toml")).expect("copy web");
        std::fs::copy(&idle.config, cfg.join("idle.toml")).expect("copy idle");
        std::fs::write(
            cfg.join("broken.toml"),
            "command = [\"sleep\", \"1\"]\n[ready]\ntimeout = \"soon\"\n",
        )
        .expect("broken config");
        std::fs::write(cfg.join("README"), "not a config\n").expect("other file");
        Fleet { cfg, web, idle }
    }

    fn dir(&self) -> &str {
        self.cfg.to_str().expect("utf-8")
    }

    fn baton(&self, args: &[&str]) -> Run {
        let mut all = vec!["--config-dir", self.dir()];
        all.extend_from_slice(args);
        baton(&all)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.cfg);
    }
}

fn sleeper() -> Spec {
    Spec::new(
        "web",
        &argv(&["sh", "-c", "echo up; echo oops >&2; exec sleep 1000"]),
    )
}

// ---------- status of every service ----------

#[test]
fn status_without_name_lists_every_service_and_exits_3_unless_all_run() {
    let fleet = Fleet::new("status", sleeper());
    fleet.web.start();
    let (_, web) = fleet.web.status();
    let pid = web["service_pid"].as_i64().expect("service pid");

    let r = fleet.baton(&["status"]);
    assert_eq!(r.code, 3, "idle is stopped, broken is broken: {r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and one line per config: {r:?}");
    assert!(lines[0].starts_with("NAME") && lines[0].contains("LAST EXIT"));
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}: {r:?}"))
    };
    let names: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["broken", "idle", "web"], "sorted by name");
    assert!(row("web").contains(" ready "), "{r:?}");
    assert!(row("web").contains(&format!(" {pid} ")), "{r:?}");
    assert!(row("idle").contains("not running"), "{r:?}");
    assert!(row("broken").contains("invalid config"), "{r:?}");
    assert!(
        row("broken").contains("broken.toml:3: ready.timeout"),
        "the problem, located: {r:?}"
    );
    // Aligned: every state starts in the STATE column.
    let col = lines[0].find("STATE").expect("STATE");
    assert_eq!(row("web").find("ready"), Some(col), "{r:?}");
    assert_eq!(row("idle").find("not running"), Some(col), "{r:?}");
    assert!(
        !r.stdout.contains('\x1b'),
        "no colour when not on a terminal"
    );

    // --json: an array of what `status NAME --json` prints.
    let r = fleet.baton(&["status", "--json"]);
    assert_eq!(r.code, 3, "{r:?}");
    let all: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json array");
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 3);
    let by_name = |n: &str| {
        all.iter()
            .find(|o| o["name"] == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let one = fleet.baton(&["status", "web", "--json"]);
    let one: serde_json::Value = serde_json::from_str(one.stdout.trim()).expect("json");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(by_name("web")), keys(&one), "the same object shape");
    for k in [
        "state",
        "service_pid",
        "supervisor_pid",
        "status_code",
        "ready",
    ] {
        assert_eq!(by_name("web")[k], one[k], "{k}");
    }
    assert_eq!(by_name("idle")["state"], "not running");
    assert_eq!(by_name("idle")["status_code"], 3);
    assert_eq!(by_name("broken")["state"], "invalid config");
    assert_eq!(by_name("broken")["status_code"], 4);
    assert!(by_name("broken")["problem"]
        .as_str()
        .is_some_and(|p| p.contains("ready.timeout")));

    // Every service running: 0.
    std::fs::remove_file(fleet.cfg.join("broken.toml")).expect("rm");
    fleet.idle.start();
    let r = fleet.baton(&["status"]);
    assert_eq!(r.code, 0, "{r:?}");
    fleet.idle.stop();
    fleet.web.stop();
}

#[test]
fn status_without_name_does_not_wait_for_a_hung_supervisor() {
    let fleet = Fleet::new("hung", sleeper());
    fleet.web.start();
    fleet.idle.start();
    let (_, idle) = fleet.idle.status();
    let sup = nix::unistd::Pid::from_raw(idle["supervisor_pid"].as_i64().expect("pid") as i32);
    // A stopped supervisor holds its lock and socket but never answers.
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let r = fleet.baton(&["status", "--json"]);
    nix::sys::signal::kill(sup, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(r.code, 3, "{r:?}");
    let all: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json");
    let state = |n: &str| {
        all.as_array()
            .expect("array")
            .iter()
            .find(|o| o["name"] == n)
            .map(|o| (o["state"].clone(), o["status_code"].clone()))
            .expect("row")
    };
    assert_eq!(state("web"), ("ready".into(), 0.into()), "{r:?}");
    assert_eq!(state("idle"), ("unknown".into(), 4.into()), "{r:?}");
    fleet.idle.stop();
    fleet.web.stop();
}

// ---------- metrics ----------

/// A deployable web service: prints which version and PID it is, then serves HTTP.
fn versioned(port_range: &str) -> Spec {
    let script = format!(
        "echo \"hello from $(cat \"$BATON_RELEASE/VERSION\") pid $$\"; exec {} \"$0\"",
        fixture("version-server")
    );
    Spec::new("web", &argv(&["sh", "-c", &script, "{port}"])).tables(&format!(
        "[port]\nmode = \"auto\"\nrange = {port_range}\n\
         [release]\nroot = \"{{dir}}/app\"\nkeep = 3\n\
         [ready]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ntimeout = \"20s\"\n\
         [stop]\ntimeout = \"5s\"\n[deploy]\ndrain_timeout = \"5s\"\n"
    ))
}

fn release(svc: &Svc, version: &str) -> PathBuf {
    let rel = svc.dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&rel).expect("release dir");
    std::fs::write(rel.join("VERSION"), format!("{version}\n")).expect("VERSION");
    rel
}

fn deploy(svc: &Svc, rel: &Path) {
    let r = svc.baton(&["deploy", "--release", rel.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "deploy: {r:?}");
}

/// A node_exporter serving only its textfile collector, killed when dropped.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(textfile_dir: &Path) -> NodeExporter {
        let port = free_port();
        let child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!(
                "--collector.textfile.directory={}",
                textfile_dir.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-node-exporter (scripts/setup-deps installs it)");
        NodeExporter { child, port }
    }

    /// GET /metrics; None until it answers.
    fn scrape(&self) -> Option<String> {
        harness::body(&format!("http://127.0.0.1:{}/metrics", self.port))
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_pass_promtool_and_a_real_node_exporter_serves_them() {
    let fleet = Fleet::new("metrics", versioned("[35000, 35999]"));
    deploy(&fleet.web, &release(&fleet.web, "v1"));
    deploy(&fleet.web, &release(&fleet.web, "v2"));
    let (code, web) = fleet.web.status();
    assert_eq!(code, 0);
    let rel = web["release"].as_str().expect("release").to_string();

    let r = fleet.baton(&["metrics"]);
    assert_eq!(r.code, 0, "{r:?}");
    let text = r.stdout;
    for line in [
        "baton_up{service=\"web\"} 1".to_string(),
        "baton_up{service=\"idle\"} 0".to_string(),
        "baton_up{service=\"broken\"} 0".to_string(),
        "baton_restarts_total{service=\"web\"} 0".to_string(),
        "baton_deploys_total{service=\"web\"} 2".to_string(),
        format!("baton_release_info{{service=\"web\",release=\"{rel}\"}} 1"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for family in [
        "baton_up gauge",
        "baton_restarts_total counter",
        "baton_ready_since_seconds gauge",
        "baton_deploys_total counter",
        "baton_last_deploy_seconds gauge",
        "baton_release_info gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "{family}:\n{text}"
        );
    }
    let ready_since = text
        .lines()
        .find_map(|l| l.strip_prefix("baton_ready_since_seconds{service=\"web\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("ready since");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(ready_since > 1e9 && ready_since <= now, "{ready_since}");

    // promtool, from Debian's prometheus package, is the judge of the format.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup-deps installs prometheus)");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // --output for the textfile collector; a real node_exporter serves it.
    let textfile = fleet.web.dir.join("textfile");
    std::fs::create_dir_all(&textfile).expect("textfile dir");
    let prom = textfile.join("baton.prom");
    let r = fleet.baton(&["metrics", "--output", prom.to_str().expect("utf-8")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let files: Vec<String> = std::fs::read_dir(&textfile)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["baton.prom"], "no temporary file left behind");
    let exporter = NodeExporter::start(&textfile);
    let mut body = String::new();
    wait_until(T, "node_exporter to serve /metrics", || {
        exporter.scrape().is_some_and(|b| {
            body = b;
            true
        })
    });
    assert!(body.contains("baton_up{service=\"web\"} 1"), "{body}");
    assert!(body.contains("baton_up{service=\"idle\"} 0"), "{body}");
    assert!(
        body.contains("node_textfile_scrape_error 0"),
        "node_exporter parsed baton.prom: {body}"
    );
    fleet.web.stop();
}

#[test]
fn metrics_output_to_a_missing_directory_fails_clearly() {
    let fleet = Fleet::new("metrics-bad", sleeper());
    let r = fleet.baton(&["metrics", "--output", "/nonexistent/dir/baton.prom"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("unable to write metrics to /nonexistent/dir/baton.prom"),
        "{r:?}"
    );
}

// ---------- logs ----------

/// The text after a stored line's `TIME [PID] ` prefix, and the PID.
fn parse_stored(line: &str) -> (&str, i32, &str) {
    let (time, rest) = line.split_once(' ').expect("time");
    let rest = rest.strip_prefix('[').expect("[pid]");
    let (pid, text) = rest.split_once("] ").expect("pid]");
    (time, pid.parse().expect("pid"), text)
}

#[test]
fn logs_print_the_last_lines_of_each_stream_merged_by_time() {
    // Paced, so that baton reads the two pipes at distinct moments and the streams interleave.
    let script = "for i in $(seq 1 12); do echo out $i; sleep 0.05; echo err $i >&2; sleep 0.05; done; echo up; exec sleep 1000";
    let fleet = Fleet::new(
        "logs",
        Spec::new("web", &argv(&["sh", "-c", script])).tables("[ready]\nlog = \"^up$\""),
    );
    fleet.web.start();
    let (_, st) = fleet.web.status();
    let pid = st["service_pid"].as_i64().expect("pid") as i32;

    // -n N of one stream: exactly the file's last N lines, as stored.
    let r = fleet.baton(&["logs", "web", "-n", "3", "--stream", "stdout"]);
    assert_eq!(r.code, 0, "{r:?}");
    let file = fleet.web.log("stdout.log");
    let last3: Vec<&str> = file
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(r.stdout.lines().collect::<Vec<_>>(), last3);
    let texts: Vec<&str> = r.stdout.lines().map(|l| parse_stored(l).2).collect();
    assert_eq!(texts, ["out 11", "out 12", "up"]);
    assert!(
        r.stdout.lines().all(|l| parse_stored(l).1 == pid),
        "marked with the service's PID"
    );

    // Default: 20 lines of stdout and stderr together, merged by time, each tagged.
    let r = fleet.baton(&["logs", "web"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 20, "{r:?}");
    let times: Vec<&str> = lines.iter().map(|l| &l[..27]).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "merged by time: {r:?}");
    // Both files, merged by their times, give the same last 20 lines.
    let mut stored: Vec<(String, String)> = Vec::new();
    for (file, tag) in [("stdout.log", "stdout"), ("stderr.log", "stderr")] {
        for l in fleet.web.log(file).lines() {
            stored.push((
                l[..27].to_string(),
                format!("{} {tag} {}", &l[..27], &l[28..]),
            ));
        }
    }
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<&str> = stored[stored.len() - 20..]
        .iter()
        .map(|s| s.1.as_str())
        .collect();
    assert_eq!(lines, want);
    assert!(
        r.stdout.contains(" stderr [") && r.stdout.contains(" stdout ["),
        "{r:?}"
    );

    // events: baton's own log.
    let r = fleet.baton(&["logs", "web", "--stream", "events", "-n", "200"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("web: starting -> ready"), "{r:?}");

    // A stopped service: the files are still read.
    fleet.web.stop();
    let r = fleet.baton(&["logs", "web", "-n", "1", "--stream", "stdout,stderr"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 1, "{r:?}");
    assert!(
        r.stdout
            .trim_end()
            .ends_with(&format!(" stdout [{pid}] up")),
        "{r:?}"
    );

    // A service that never ran has no log directory: a clear error.
    let r = fleet.baton(&["logs", "idle"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("unable to read the logs of idle"),
        "{r:?}"
    );
    // A broken config is reported as such.
    let r = fleet.baton(&["logs", "broken"]);
    assert_eq!(r.code, 6, "{r:?}");
}

#[test]
fn logs_reach_back_into_rotated_files() {
    let fleet = Fleet::new(
        "logs-rot",
        Spec::new(
            "web",
            &argv(&["sh", "-c", "seq -f 'n %g' 1 400; echo up; exec sleep 1000"]),
        )
        .log("max_size = \"2KB\"\nkeep = 100")
        .tables("[ready]\nlog = \"^up$\""),
    );
    fleet.web.start();
    assert!(
        fleet.web.path("log/stdout.log.3").exists(),
        "rotated several times"
    );
    let r = fleet.baton(&["logs", "web", "-n", "201", "--stream", "stdout"]);
    assert_eq!(r.code, 0, "{r:?}");
    let texts: Vec<String> = r
        .stdout
        .lines()
        .map(|l| parse_stored(l).2.to_string())
        .collect();
    let want: Vec<String> = (200..=400)
        .map(|i| format!("n {i}"))
        .chain(["up".into()])
        .skip(1)
        .collect();
    assert_eq!(texts, want, "in order, none lost, none repeated");
    fleet.web.stop();
}

/// `baton logs -f ...` running in the background, read line by line.
struct Follow {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    fn start(config: &Path, args: &[&str]) -> Follow {
        let mut child = Command::new(baton_bin())
            .arg("--config")
            .arg(config)
            .arg("logs")
            .arg("-f")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("baton logs -f");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Follow { child, lines }
    }

    /// Lines up to and including the first that satisfies `last`.
    fn until(&self, what: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match self.lines.recv_timeout(T) {
                Ok(l) => {
                    let done = last(&l);
                    got.push(l);
                    if done {
                        return got;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what}: {e}; got {} lines: {:?}",
                    got.len(),
                    got.last()
                ),
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn logs_follow_across_rotations_loses_and_repeats_nothing() {
    let n = 20_000;
    let svc = Spec::new("flood", "[]").create();
    let fifo = svc.path("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let script = format!(
        "echo waiting; read x < \"{}\"; exec {} {n}",
        fifo.display(),
        fixture("flood")
    );
    svc.rewrite(
        &Spec::new("flood", &argv(&["sh", "-c", &script]))
            .log("max_size = \"100KB\"\nkeep = 100")
            .tables("[ready]\nlog = \"^waiting$\""),
    );
    svc.start();
    let follow = Follow::start(&svc.config, &["-n", "1", "--stream", "stdout"]);
    // The last line comes first: from then on, the watch is in place.
    let first = follow.until("the tail", |_| true);
    assert!(first[0].ends_with("] waiting"), "{first:?}");
    // Frozen while the flood starts, the follower wakes several rotations behind, with more
    // rotations happening as it catches up.
    let follower = nix::unistd::Pid::from_raw(follow.child.id() as i32);
    nix::sys::signal::kill(follower, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .and_then(|mut f| f.write_all(b"go\n"))
        .expect("release the flood");
    wait_until(T, "a few rotations", || {
        svc.path("log/stdout.log.4").exists()
    });
    nix::sys::signal::kill(follower, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    let lines = follow.until("flood done", |l| l.ends_with("] flood done"));
    assert!(
        svc.path("log/stdout.log.10").exists(),
        "the flood rotated stdout.log at least 10 times"
    );
    let mut expect = 1;
    for l in &lines[..lines.len() - 1] {
        let text = parse_stored(l).2;
        let num: u32 = text[5..11]
            .parse()
            .unwrap_or_else(|_| panic!("garbled line {l:?}"));
        assert_eq!(num, expect, "line lost or repeated while following");
        expect += 1;
    }
    assert_eq!(expect - 1, n, "every line followed");
    svc.stop();
}

#[test]
fn logs_follow_across_a_deploy_shows_both_instances_marked_by_pid() {
    let svc = versioned("[36000, 36999]").create();
    deploy(&svc, &release(&svc, "v1"));
    let (_, st) = svc.status();
    let old = st["service_pid"].as_i64().expect("pid") as i32;
    let follow = Follow::start(&svc.config, &["-n", "50", "--stream", "stdout,events"]);
    let before = follow.until("v1's line", |l| l.contains("hello from v1"));
    deploy(&svc, &release(&svc, "v2"));
    let (_, st) = svc.status();
    let new = st["service_pid"].as_i64().expect("pid") as i32;
    assert_ne!(old, new);
    // The serving v2 instance's line (under load, a handoff may retry on another port first).
    let during = follow.until("v2's line", |l| {
        l.contains(&format!("hello from v2 pid {new}"))
    });
    let marked = |l: &str| {
        let (_, rest) = l.split_once(" stdout [").expect("a tagged stdout line");
        rest.split_once(']')
            .expect("]")
            .0
            .parse::<i32>()
            .expect("pid")
    };
    let v1 = before.last().expect("v1 line");
    assert_eq!(marked(v1), old, "{v1}");
    assert!(v1.ends_with(&format!("hello from v1 pid {old}")), "{v1}");
    let v2 = during.last().expect("v2 line");
    assert_eq!(marked(v2), new, "{v2}");
    assert!(v2.ends_with(&format!("hello from v2 pid {new}")), "{v2}");
    // baton's events about the handoff arrive in the same, time-ordered stream.
    let all: Vec<&String> = before.iter().chain(&during).collect();
    for l in all
        .iter()
        .filter(|l| l.contains(" stdout [") && l.contains("hello from"))
    {
        assert!(
            l.ends_with(&format!("pid {}", marked(l))),
            "each line marked with its own instance: {l}"
        );
    }
    assert!(
        all.iter()
            .any(|l| l.contains(" events ") && l.contains(&format!("pid {new}"))),
        "{all:?}"
    );
    let times: Vec<&str> = during.iter().map(|l| &l[..27]).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "followed lines come in time order");
    svc.stop();
}

// ---------- completions and man page ----------

#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    let r = baton(&["completions", "bash"]);
    assert_eq!(r.code, 0, "{r:?}");
    for sub in ["status", "logs", "metrics", "completions", "deploy"] {
        assert!(r.stdout.contains(sub), "bash completion lacks {sub}");
    }
    let dir = std::env::temp_dir().join(format!("baton-op-compl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("baton.bash");
    std::fs::write(&file, &r.stdout).expect("write");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("bash -n");
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Sourced, it completes the subcommand `lo` to `logs`.
    let complete = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {}; COMP_WORDS=(baton lo); COMP_CWORD=1; COMP_LINE='baton lo'; COMP_POINT=8; _baton baton lo baton; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .expect("bash");
    assert_eq!(
        String::from_utf8_lossy(&complete.stdout).trim(),
        "logs",
        "{complete:?}"
    );

    let r = baton(&["completions", "zsh"]);
    assert!(
        r.code == 0 && r.stdout.starts_with("#compdef baton"),
        "{r:?}"
    );
    let r = baton(&["completions", "fish"]);
    assert!(
        r.code == 0 && r.stdout.contains("complete -c baton"),
        "{r:?}"
    );
    let r = baton(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "an unknown shell is a usage error: {r:?}");

    let r = baton(&["man"]);
    assert_eq!(r.code, 0, "{r:?}");
    let page = dir.join("baton.1");
    std::fs::write(&page, &r.stdout).expect("write");
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH baton 1"),
        "roff: {}",
        &r.stdout[..200.min(r.stdout.len())]
    );
    let groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .expect("groff");
    assert!(
        groff.status.success() && groff.stderr.is_empty(),
        "groff warns: {}",
        String::from_utf8_lossy(&groff.stderr)
    );
    let man = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .expect("man -l");
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success(), "{man:?}");
    for want in ["SYNOPSIS", "SUBCOMMANDS", "metrics", "completions"] {
        assert!(text.contains(want), "man page lacks {want}:\n{text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
