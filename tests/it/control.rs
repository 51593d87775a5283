//! The control socket: bounded, fully delivered replies; versioned requests; idle and
//! excess clients turned away.

use crate::harness;

use harness::{wait_until, Svc};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A service that prints ten 60 KB lines, then says it is ready and idles.
fn chatty() -> Svc {
    Svc::new(
        "chatty",
        r#"["python3", "-c", "import sys, time\nfor i in range(10):\n    print(str(i) * 60000, flush=True)\nprint('ready now', flush=True)\ntime.sleep(3600)"]"#,
        "[ready]\nlog = \"ready now\"\ntimeout = \"20s\"\n",
    )
}

fn socket(svc: &Svc) -> std::path::PathBuf {
    svc.dir.join("run").join(format!("{}.sock", svc.name))
}

/// Sends one raw request line; every reply line, parsed.
fn raw(svc: &Svc, line: &str) -> Vec<serde_json::Value> {
    let mut s = UnixStream::connect(socket(svc)).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    // A supervisor that turns us away may close before it reads: its reply is still there.
    let _ = s.write_all(format!("{line}\n").as_bytes());
    BufReader::new(s)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("line")).expect("a JSON reply line"))
        .collect()
}

#[test]
fn status_of_a_chatty_service_is_whole_and_bounded() {
    let svc = chatty();
    svc.start();
    // Several times: each reply must arrive whole however the socket buffers split it.
    for _ in 0..5 {
        let (code, st) = svc.status();
        assert_eq!(code, 0, "{st}");
        assert_eq!(st["state"], "ready");
        let tail = st["tail"].as_array().expect("tail");
        assert_eq!(tail.len(), 10, "{tail:?}");
        for line in &tail[..9] {
            let line = line.as_str().expect("text");
            assert!(line.len() <= 600, "capped: {} bytes", line.len());
            assert!(
                line.ends_with("more bytes)"),
                "says it was cut: {}",
                &line[500..]
            );
        }
        assert_eq!(tail[9], "ready now");
        assert_eq!(st["supervisor_version"], env!("CARGO_PKG_VERSION"));
    }
    svc.stop();
}

#[test]
fn requests_are_versioned_and_old_words_still_work() {
    let svc = chatty();
    svc.start();
    let version = env!("CARGO_PKG_VERSION");
    // Protocol 0: plain words, as a baton before versions sent them.
    let r = raw(&svc, "status");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["type"], "status");
    assert_eq!(r[0]["protocol"], 1);
    assert_eq!(r[0]["baton"], version);
    // A newer client asking for what this supervisor does not know hears who runs what.
    let r = raw(
        &svc,
        r#"{"protocol":2,"baton":"9.9.9","request":"frobnicate"}"#,
    );
    assert_eq!(r[0]["type"], "error", "{r:?}");
    assert_eq!(r[0]["code"], 2);
    let message = r[0]["message"].as_str().expect("message");
    assert!(
        message.starts_with(&format!(
            "supervisor runs baton {version} (protocol 1), this is baton 9.9.9 (protocol 2)"
        )),
        "{message}"
    );
    // …and what it does know still works for it.
    let r = raw(&svc, r#"{"protocol":2,"baton":"9.9.9","request":"status"}"#);
    assert_eq!(r[0]["type"], "status", "{r:?}");
    let r = raw(&svc, "no such thing");
    assert_eq!(r[0]["type"], "error");
    assert!(r[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("unknown request")));
    svc.stop();
}

#[test]
fn idle_and_excess_control_clients_are_turned_away() {
    let svc = chatty();
    svc.start();
    // 64 clients that never ask take every slot; the next one is told so.
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(socket(&svc)).expect("connect"))
        .collect();
    wait_until(T, "a client beyond the cap to be refused", || {
        let r = raw(&svc, "status");
        r.first().is_some_and(|r| {
            r["type"] == "error"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("too many control connections"))
        })
    });
    // Idle clients are dropped after the idle timeout: each reads end-of-file.
    for mut s in idle {
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut buf = [0u8; 16];
        assert_eq!(
            s.read(&mut buf).expect("read"),
            0,
            "closed by the supervisor"
        );
    }
    let (code, st) = svc.status();
    assert_eq!((code, &st["state"]), (0, &serde_json::json!("ready")));
    svc.stop();
}
