//! The service's output path: spliced into its files when nobody needs its lines, read line
//! by line otherwise, and every switch between the two keeps each line whole and in order.

use crate::harness;

use harness::{
    assert_flood_whole, fixture, flood_spec, proc_number, rotated, wait_until, Spec, Svc,
};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn py(script: &str) -> String {
    format!("[\"python3\", \"-c\", {}]", toml_str(script))
}

fn sh(script: &str) -> String {
    format!("[\"/bin/sh\", \"-c\", {}]", toml_str(script))
}

fn toml_str(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// Bytes the supervisor read with read(2) and the like (`rchar`): a spliced flood
/// never passes through its memory, so this stays far below the flood's size.
fn supervisor_read_bytes(svc: &Svc) -> u64 {
    proc_number(svc.pid_in_file().expect("supervisor pid"), "io", "rchar:")
}

#[test]
fn a_spliced_flood_rotates_at_line_ends_and_loses_nothing() {
    // 30 MB in 100 KB writes, files of 2 MB: splices end anywhere in a line, and near each
    // limit the unfinished line comes back out of the file for the rotation.
    let n = 300_000;
    let svc = flood_spec("splice", n)
        .log("max_size = \"2MB\"\nkeep = 100\ntimestamps = false")
        .create();
    svc.start_flood();
    let read = supervisor_read_bytes(&svc);
    let files = rotated(&svc, "stdout.log");
    assert!(files.len() > 10, "expected rotation, got {files:?}");
    assert_flood_whole(&files, n, 2_000_000);
    assert!(
        read < u64::from(n) * 100 / 4,
        "the supervisor read {read} bytes of a {} byte flood: it was not spliced",
        u64::from(n) * 100
    );
}

#[test]
fn a_log_probe_reads_lines_until_it_matches_then_splicing_takes_over_and_keeps_every_line() {
    let n = 200_000;
    let svc = flood_spec("switch", n)
        .log("max_size = \"100MB\"\ntimestamps = false")
        .tables("[ready]\nlog = \"^line 000500 \"")
        .create();
    svc.start_flood();
    let read = supervisor_read_bytes(&svc);
    assert_flood_whole(&rotated(&svc, "stdout.log"), n, 100_000_000);
    assert!(
        read < u64::from(n) * 100 / 4,
        "the supervisor read {read} bytes of a {} byte flood: it went on reading lines after the probe passed",
        u64::from(n) * 100
    );
}

#[test]
fn with_timestamps_every_line_is_read_and_stamped() {
    let n = 50_000;
    let svc = flood_spec("stamped", n)
        .log("max_size = \"1MB\"\nkeep = 100")
        .create();
    svc.start_flood();
    let files = rotated(&svc, "stdout.log");
    let mut expect = 1;
    for path in &files {
        for line in std::fs::read_to_string(path).expect("read").lines() {
            // `2026-11-29T06:11:08.123456Z [PID] TEXT`
            let (time, text) = line.split_once(' ').expect("stamped");
            assert!(time.len() == 27 && time.ends_with('Z'), "{line:?}");
            let text = text.split_once("] ").expect("[PID]").1;
            if text != "flood done" {
                assert_eq!(text[5..11].parse::<u32>().ok(), Some(expect), "{line:?}");
                expect += 1;
            }
        }
    }
    assert_eq!(expect - 1, n);
}

/// A started service that printed "up" and half a line ("part-one "), spliced into
/// stdout.log; on SIGHUP (`baton reload`) it ends the line with "part-two" and prints "after".
fn half_line(name: &str) -> Svc {
    let svc = Spec::new(
        name,
        &sh("trap 'echo part-two; echo after' HUP; echo up; printf 'part-one '; while :; do sleep 1 & wait $!; done"),
    )
    .log("timestamps = false")
    .create();
    svc.start();
    wait_until(T, "the half line in stdout.log", || {
        svc.log("stdout.log").contains("part-one")
    });
    svc
}

/// Moves stdout.log away, reopens, lets the half line end: a supervisor that knows the file
/// ends mid-line takes "part-one " back into the new file; one that did not leaves it behind.
fn assert_half_line_taken_back_at_reopen(svc: &Svc) {
    std::fs::rename(svc.path("log/stdout.log"), svc.path("log/stdout.log.moved")).expect("mv");
    assert_eq!(svc.baton(&["reopen-logs"]).code, 0);
    assert_eq!(svc.baton(&["reload"]).code, 0);
    wait_until(T, "the rest of the line", || {
        svc.log("stdout.log").contains("after")
    });
    assert_eq!(
        svc.log("stdout.log.moved"),
        "up\n",
        "the half line was taken back"
    );
    assert_eq!(svc.log("stdout.log"), "part-one part-two\nafter\n");
}

#[test]
fn a_line_begun_by_a_splice_is_finished_whole_in_the_reopened_file() {
    // No probe watches the service's lines, so splicing put the half line in stdout.log.
    let svc = half_line("halfline");
    assert_half_line_taken_back_at_reopen(&svc);
}

#[test]
fn a_line_longer_than_the_pipe_is_kept_in_order_in_bounded_pieces() {
    // 3 MiB without a newline (three pipefuls), then short lines.
    let svc = Spec::new(
        "longline",
        &py("import sys\nw = sys.stdout.buffer\nfor i in range(48):\n    w.write(bytes([97 + i % 26]) * 65536)\nw.write(b'\\nafter 1\\nafter 2\\n')\nw.flush()\nimport time\ntime.sleep(3600)"),
    )
    .log("timestamps = false")
    .create();
    svc.start();
    wait_until(T, "the lines after the long one", || {
        svc.log("stdout.log").contains("after 2\n")
    });
    let body = std::fs::read(svc.path("log/stdout.log")).expect("read");
    let pieces: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    assert!(pieces.len() > 3, "the 3 MiB line was not cut");
    // Cut where a read (64 KiB) or a splice (at most a pipeful, 1 MiB) ends past 64 KiB.
    for p in &pieces {
        assert!(
            p.len() <= (1 << 20) + (64 << 10),
            "a piece of {} bytes",
            p.len()
        );
    }
    let joined: Vec<u8> = body.iter().copied().filter(|&b| b != b'\n').collect();
    let mut want: Vec<u8> = (0..48)
        .flat_map(|i| vec![97 + (i % 26) as u8; 65536])
        .collect();
    want.extend_from_slice(b"after 1after 2");
    assert!(joined == want, "bytes lost or reordered");
    assert!(
        body.ends_with(b"\nafter 1\nafter 2\n"),
        "the short lines are whole"
    );
}

#[test]
fn stdout_and_stderr_stay_apart_when_both_are_spliced() {
    let n = 100_000;
    let svc = Spec::new(
        "apart",
        &py(&format!("import sys\nfor i in range({n}):\n    sys.stdout.write('out %06d\\n' % i)\n    sys.stderr.write('err %06d\\n' % i)\nsys.stdout.write('out done\\n')\nsys.stdout.flush()\nsys.stderr.write('err done\\n')\nsys.stderr.flush()\nimport time\ntime.sleep(3600)")),
    )
    .log("timestamps = false")
    .create();
    svc.start();
    wait_until(T, "both streams done", || {
        svc.log("stdout.log").ends_with("out done\n")
            && svc.log("stderr.log").ends_with("err done\n")
    });
    for (file, tag) in [("stdout.log", "out"), ("stderr.log", "err")] {
        let body = svc.log(file);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), n + 1, "{file}");
        for (i, line) in lines[..n].iter().enumerate() {
            assert_eq!(*line, format!("{tag} {i:06}"), "{file}");
        }
    }
}

#[test]
fn a_failed_start_shows_the_spliced_output_read_back_from_the_files() {
    let svc = Spec::new("crashsplice", &format!("[\"{}\"]", fixture("crash-early")))
        .log("timestamps = false")
        .tables("[ready]\ntcp = \"127.0.0.1:1\"")
        .create();
    let r = svc.baton(&["start"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("| opening database /nonexistent/db"),
        "stdout's lines are shown: {r:?}"
    );
    assert!(
        r.stderr.contains("| fatal: cannot open /nonexistent/db"),
        "the last line is shown: {r:?}"
    );
}

#[test]
fn a_copytruncate_under_splicing_leaves_no_hole_and_keeps_what_follows() {
    // logrotate's copytruncate copies the file and empties it in place while baton keeps it
    // open. A splice goes at an offset, not in append mode: one at the old end would leave
    // a hole of NUL bytes as long as everything written before.
    let svc = half_line("copytrunc");
    let live = svc.path("log/stdout.log");
    std::fs::copy(&live, svc.path("log/stdout.log.1")).expect("copy the live log");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&live)
        .and_then(|f| f.set_len(0))
        .expect("truncate the live log");
    assert_eq!(svc.baton(&["reload"]).code, 0);
    wait_until(T, "the lines after the truncation", || {
        svc.log("stdout.log").contains("after")
    });
    assert_eq!(svc.log("stdout.log.1"), "up\npart-one ");
    assert_eq!(
        svc.log("stdout.log"),
        "part-two\nafter\n",
        "written from the file's new end, with no hole where the old one was"
    );
}

#[test]
fn a_line_begun_by_a_splice_is_finished_whole_after_the_supervisor_reexecs() {
    // The half line sits in stdout.log when the supervisor replaces its image; the new
    // image learns it from the file (no buffer of the old one survives the exec).
    let svc = half_line("halfreexec");
    svc.reexec_in_place();
    assert_half_line_taken_back_at_reopen(&svc);
}

/// Marks a file append-only (`chattr +a`) until dropped, so the test directory stays removable.
struct AppendOnly(std::path::PathBuf);

impl AppendOnly {
    fn set(path: std::path::PathBuf) -> AppendOnly {
        let st = std::process::Command::new("chattr")
            .arg("+a")
            .arg(&path)
            .status()
            .expect("run chattr");
        assert!(st.success(), "chattr +a {}", path.display());
        AppendOnly(path)
    }
}

impl Drop for AppendOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-a")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_file_that_refuses_splices_gets_every_line_written_whole_instead() {
    // An append-only file takes writes in append mode only: the offset splices are refused,
    // and the output goes on line by line with a warning, losing nothing.
    let n = 20_000;
    let svc = flood_spec("nosplice", n)
        .log("max_size = \"100MB\"\ntimestamps = false")
        .create();
    std::fs::create_dir_all(svc.path("log")).expect("log dir");
    std::fs::write(svc.path("log/stdout.log"), "").expect("stdout.log");
    let _guard = AppendOnly::set(svc.path("log/stdout.log"));
    svc.start_flood();
    assert_flood_whole(&[svc.path("log/stdout.log")], n, 100_000_000);
    assert!(
        svc.log("baton.log")
            .contains("reading it line by line instead"),
        "{}",
        svc.log("baton.log")
    );
    assert_eq!(svc.stop().code, 0);
}
