//! What an idle supervisor keeps resident (benches/PROFILE-memory.md has the breakdown).

use crate::harness::{wait_until, Svc};
use std::path::Path;
use std::time::Duration;

/// kB of `exe`'s file pages mapped read-only (code, constants) and resident in process
/// `pid`: not the relocated data, which is read-only too once relocated, but anonymous.
fn resident_readonly_kb(pid: i32, exe: &Path) -> u64 {
    crate::harness::resident_file_kib(pid, exe, |perms| !perms.contains('w'))
}

#[test]
fn idle_supervisor_keeps_only_the_code_pages_of_its_sleep() {
    let svc = Svc::new("shed", r#"["sleep", "1000"]"#, "");
    svc.start();
    let pid = svc.pid_in_file().expect("pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the supervisor's exe");
    assert!(
        resident_readonly_kb(pid, &exe) > 64,
        "start-up maps much of the binary; if not, this test measures nothing"
    );
    // After a quiet second the supervisor drops its read-only pages, keeping the two
    // that hold the code between that drop and ppoll(2): any fault after the drop would
    // bring back 64 KB around it (the kernel's fault-around), for the whole idle time.
    wait_until(
        Duration::from_secs(20),
        "the idle supervisor to keep at most 16 kB of its code and constants",
        || resident_readonly_kb(pid, &exe) <= 16,
    );
    svc.stop();
}
