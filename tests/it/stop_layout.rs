//! The `baton stop` client's code in the ordered text: its start-up code among its own.
//!
//! Every process runs crtbeginS.o's `frame_dummy` (from .init_array) before `main`. Its
//! symbol has no size, so scripts/hot-order once left it out of link/hot-order.txt and it
//! sat after the whole ordered text, one page of its own on the stop's path after an idle
//! wait (benches/PROFILE-stop.md, ninth round). Its name and `_start`'s carry no hash, so
//! even a debug build places them as listed.

use crate::harness::baton_bin;
use std::path::Path;
use std::process::Command;

/// (address, name) of every function symbol of the binary, sized or not, by address.
fn text_symbols(bin: &Path) -> Vec<(u64, String)> {
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(bin)
        .output()
        .expect("nm (binutils, installed with gcc) must be on PATH for this test");
    assert!(out.status.success(), "nm failed: {out:?}");
    let mut symbols: Vec<(u64, String)> = String::from_utf8(out.stdout)
        .expect("nm prints text")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, kind, name) = (f.first()?, f.get(1)?, f.get(2)?);
            matches!(*kind, "t" | "T").then(|| {
                let addr = u64::from_str_radix(addr, 16).expect("nm prints hex addresses");
                (addr, name.to_string())
            })
        })
        .collect();
    symbols.sort();
    symbols
}

#[test]
fn the_start_up_code_every_stop_runs_is_placed_with_the_clients_own() {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-order.txt");
    let listed: Vec<String> = std::fs::read_to_string(&order)
        .expect("link/hot-order.txt (written by scripts/hot-order)")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let at = |name: &str| {
        listed
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} is not listed in {}", order.display()))
    };
    // In the client's part (after the supervisor's), where `baton stop` runs them.
    for name in ["_start", "frame_dummy"] {
        assert!(
            at("baton_hot_end") < at(name),
            "{name} is listed among the supervisor's wake paths"
        );
    }
    let symbols = text_symbols(&baton_bin());
    let addr = |name: &str| {
        symbols
            .iter()
            .find(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("the binary has no {name}"))
            .0
    };
    let frame_dummy = addr("frame_dummy");
    assert!(
        addr("baton_hot_end") < frame_dummy,
        "frame_dummy lies before the client's part"
    );
    // Applied: listed functions follow it (left out, it came after all of them).
    let after: Vec<&str> = symbols
        .iter()
        .filter(|(a, n)| *a > frame_dummy && listed.contains(n))
        .map(|(_, n)| n.as_str())
        .collect();
    assert!(
        !after.is_empty(),
        "frame_dummy is not inside the ordered text: no listed function comes after it"
    );
}
