//! Stamped output (`[log] timestamps = true`, the default): every line stored whole as
//! `TIME [PID] TEXT`, one time per read, in order, through floods, rotations, half lines,
//! both streams at once and a reexec, with no thread left once the flood is over.

use crate::harness;

use harness::{
    assert_flood_whole, fixture, flood_spec, open_gate, proc_number, rotated, wait_until, Spec, Svc,
};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn py(script: &str) -> String {
    format!(
        "[\"python3\", \"-c\", \"{}\"]",
        script
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// The serving instance's PID, as `status --json` reports it.
fn service_pid(svc: &Svc) -> u64 {
    let (_, json) = svc.status();
    json["service_pid"].as_u64().expect("service_pid in status")
}

/// Splits a stored line `2026-11-29T06:11:08.123456Z [PID] TEXT`, checking the time's
/// form (RFC 3339 UTC, microseconds, fixed width); returns time, PID and text.
fn parse(line: &str) -> (&str, u64, &str) {
    let (time, rest) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    let b = time.as_bytes();
    let digits = [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..26];
    assert!(
        time.len() == 27
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[26] == b'Z'
            && digits
                .iter()
                .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit)),
        "bad time in {line:?}"
    );
    let rest = rest
        .strip_prefix('[')
        .unwrap_or_else(|| panic!("no [PID] in {line:?}"));
    let (pid, text) = rest
        .split_once("] ")
        .unwrap_or_else(|| panic!("no [PID] in {line:?}"));
    (time, pid.parse().expect("numeric pid"), text)
}

/// Every line of `files` (oldest first), parsed; checks that each is stamped by `pid` and
/// that the times never go back.
fn stamped_lines(files: &[std::path::PathBuf], pid: u64) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for path in files {
        for line in std::fs::read_to_string(path).expect("read").lines() {
            let (time, by, text) = parse(line);
            assert_eq!(by, pid, "{line:?} in {}", path.display());
            if let Some((last, _)) = out.last() {
                assert!(last.as_str() <= time, "time went back at {line:?}");
            }
            out.push((time.to_string(), text.to_string()));
        }
    }
    out
}

#[test]
fn a_stamped_flood_is_stored_as_whole_prefixed_lines_in_order_across_rotations() {
    // 30 MB of 100-byte lines in 100 KB writes, files of 2 MB: many lines per read, so the
    // flood path (large reads, blocks written beside the reading) does the work.
    let n = 300_000;
    let svc = flood_spec("stampflood", n)
        .log("max_size = \"2MB\"\nkeep = 100")
        .create();
    svc.start_flood();
    let files = rotated(&svc, "stdout.log");
    assert!(files.len() > 10, "expected rotation, got {files:?}");
    // Whole lines, numbered 1..=n, none lost or repeated; every file within its limit.
    assert_flood_whole(&files, n, 2_000_000);
    let lines = stamped_lines(&files, service_pid(&svc));
    assert_eq!(lines.len(), n as usize + 1);
    // One time per read, not per line: a read of a flood holds many lines.
    let mut times: Vec<&str> = lines.iter().map(|(t, _)| t.as_str()).collect();
    times.dedup();
    assert!(
        times.len() * 20 < lines.len(),
        "{} distinct times for {} lines: not one per read",
        times.len(),
        lines.len()
    );
    // Once the output is quiet the supervisor gives back what the flood needed, its
    // writing thread included: an idle supervisor is one thread.
    let sup = svc.pid_in_file().expect("supervisor pid");
    wait_until(T, "the supervisor back to one thread", || {
        proc_number(sup, "status", "Threads:") == 1
    });
    assert_eq!(svc.stop().code, 0);
}

/// A service printing `lines` numbered 100-byte lines and the start of one more in one
/// write, then, once the test opens the gate (the FIFO `go`, [`open_gate`]), the rest of that line,
/// `after` more numbered lines and "done".
fn gated(name: &str, lines: u32, after: u32) -> Svc {
    let svc = Spec::new(
        name,
        &py(&format!(
            "import os, sys, time\n\
             def block(a, b): return ''.join('line %06d %s\\n' % (i, 'y' * 87) for i in range(a, b))\n\
             sys.stdout.write(block(1, {first}) + 'half-')\n\
             sys.stdout.flush()\n\
             open(os.environ['BATON_TEST_MARKER'] + '/go').readline()\n\
             sys.stdout.write('rest\\n' + block({first}, {last}) + 'done\\n')\n\
             sys.stdout.flush()\n\
             while True: time.sleep(3600)\n",
            first = lines + 1,
            last = lines + after + 1
        )),
    )
    .log("max_size = \"100MB\"")
    .create();
    nix::unistd::mkfifo(
        &svc.path("go"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    svc
}

/// Checks a [`gated`] service's stdout.log once "done" is in it: the numbered lines in
/// order, "half-rest" once and whole, stamped no earlier than the line before it.
fn assert_gated_whole(svc: &Svc, pid: u64, n: u32) {
    let lines = stamped_lines(&rotated(svc, "stdout.log"), pid);
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    let half = texts
        .iter()
        .position(|t| *t == "half-rest")
        .unwrap_or_else(|| panic!("no whole \"half-rest\" line"));
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("half") || t.contains("rest"))
            .count(),
        1,
        "the half line stored more than once or in pieces"
    );
    let mut expect = 1;
    for (i, text) in texts.iter().enumerate() {
        if i == half || *text == "done" {
            continue;
        }
        assert_eq!(
            text.get(5..11).and_then(|d| d.parse::<u32>().ok()),
            Some(expect),
            "line lost, torn or reordered: {text:?}"
        );
        assert_eq!(text.len(), 99, "torn line {text:?}");
        expect += 1;
    }
    assert_eq!(expect - 1, n, "every numbered line arrived");
    assert_eq!(texts.last(), Some(&"done"));
}

#[test]
fn a_half_line_at_the_end_of_a_read_is_ended_by_the_next_and_stamped_once() {
    let svc = gated("stamphalf", 2000, 2000);
    svc.start();
    wait_until(T, "the lines before the half line", || {
        svc.log("stdout.log").contains("line 002000 ")
    });
    assert!(
        !svc.log("stdout.log").contains("half"),
        "half a line was stored before its end came"
    );
    open_gate(&svc);
    wait_until(T, "done", || svc.log("stdout.log").contains("] done\n"));
    assert_gated_whole(&svc, service_pid(&svc), 4000);
    // Stamped when its end was read: after the block that held its start.
    let text = svc.log("stdout.log");
    let stamp_of = |needle: &str| {
        let line = text.lines().find(|l| l.contains(needle)).expect("line");
        parse(line).0.to_string()
    };
    assert!(stamp_of("line 002000 ") <= stamp_of("half-rest"));
    assert!(stamp_of("half-rest") <= stamp_of("line 002001 "));
    assert_eq!(svc.stop().code, 0);
}

#[test]
fn a_reexec_after_a_stamped_flood_carries_its_half_line_across_the_exec() {
    // 20 MB of lines, then a half line held open while the supervisor replaces its image:
    // it crosses the exec in the carried pipe state and is stored once, whole, after the
    // flood's last line.
    let svc = gated("stampreexec", 200_000, 1000);
    svc.start();
    wait_until(T, "the flood before the half line", || {
        svc.log("stdout.log").contains("line 200000 ")
    });
    let pid = service_pid(&svc);
    svc.reexec_in_place();
    open_gate(&svc);
    wait_until(T, "done", || svc.log("stdout.log").contains("] done\n"));
    assert_gated_whole(&svc, pid, 201_000);
    assert_eq!(svc.stop().code, 0);
}

#[test]
fn stdout_and_stderr_flooding_at_once_each_get_their_own_whole_lines() {
    let n = 100_000;
    let flood = fixture("flood");
    let svc = Spec::new(
        "stamptwo",
        &format!("[\"/bin/sh\", \"-c\", \"{flood} {n} & {flood} {n} 1>&2; wait\"]"),
    )
    .log("max_size = \"100MB\"")
    .create();
    svc.start();
    wait_until(T, "both floods done", || {
        svc.log("stdout.log").contains("flood done") && svc.log("stderr.log").contains("flood done")
    });
    assert_flood_whole(&rotated(&svc, "stdout.log"), n, 100_000_000);
    assert_flood_whole(&rotated(&svc, "stderr.log"), n, 100_000_000);
    let pid = service_pid(&svc);
    assert_eq!(
        stamped_lines(&rotated(&svc, "stdout.log"), pid).len(),
        n as usize + 1
    );
    assert_eq!(
        stamped_lines(&rotated(&svc, "stderr.log"), pid).len(),
        n as usize + 1
    );
    assert_eq!(svc.stop().code, 0);
}

#[test]
fn a_reexec_in_the_middle_of_a_stamped_flood_loses_no_block() {
    // The service writes numbered lines in 100 KB writes until the test makes a STOP file:
    // the reexec comes while blocks are being read, stamped and written, and the ones not
    // yet in the file when it comes must reach it before the exec.
    let svc = Spec::new(
        "stampmid",
        &py("import os, sys, time\n\
             stop = os.environ['BATON_TEST_MARKER'] + '/STOP'\n\
             i = 1\n\
             while not os.path.exists(stop):\n\
             \x20   sys.stdout.write(''.join('line %09d %s\\n' % (j, 'z' * 84) for j in range(i, i + 1000)))\n\
             \x20   i += 1000\n\
             sys.stdout.write('done\\n')\n\
             sys.stdout.flush()\n\
             while True: time.sleep(3600)\n"),
    )
    .log("max_size = \"20MB\"\nkeep = 1000")
    .create();
    svc.start();
    wait_until(T, "the flood under way", || {
        svc.log("stdout.log").contains("line 000010000 ")
    });
    let pid = service_pid(&svc);
    svc.reexec_in_place();
    std::fs::write(svc.path("STOP"), "").expect("STOP");
    let last = || rotated(&svc, "stdout.log").pop().expect("stdout.log");
    wait_until(T, "done", || {
        std::fs::read_to_string(last()).is_ok_and(|t| t.ends_with("] done\n"))
    });
    let lines = stamped_lines(&rotated(&svc, "stdout.log"), pid);
    let mut expect = 1u64;
    for (_, text) in &lines[..lines.len() - 1] {
        assert_eq!(text.len(), 99, "torn line {text:?}");
        assert_eq!(
            text.get(5..14).and_then(|d| d.parse::<u64>().ok()),
            Some(expect),
            "line lost or reordered: {text:?}"
        );
        expect += 1;
    }
    assert!(expect > 10_000, "only {expect} lines");
    assert_eq!(lines.last().map(|(_, t)| t.as_str()), Some("done"));
    assert_eq!(svc.stop().code, 0);
}
