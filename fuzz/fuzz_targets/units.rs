//! Durations, sizes, signals and env files from arbitrary bytes: never a panic, always in bounds.
#![no_main]

// baton is a binary crate: its value syntaxes are compiled in here from the source itself.
#[path = "../../src/config/units.rs"]
#[allow(dead_code)]
mod units;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = units::parse_duration(s) {
        assert!(d <= units::MAX_DURATION);
    }
    if let Ok(n) = units::parse_size(s) {
        assert!(n > 0 && n <= units::MAX_SIZE);
    }
    let _ = units::parse_signal(s);
    let _ = units::parse_env_file(s);
});
