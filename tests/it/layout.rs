//! The code layout: link/hot-order.txt, the order build.rs hands the linker, is applied.
//!
//! The paths after an idle wait pay per code page they touch (benches/PROFILE-layout.md);
//! the order puts their functions first in .text, together. Names in the file carry hashes
//! of one build, so a debug build finds only some of them (the markers, `main`, std's):
//! those must come first in the text and in the file's order.
//!
//! Every process also runs crtbeginS.o's `frame_dummy` (from .init_array) before `main`.
//! Its symbol has no size, so scripts/hot-order once left it out of the file and it sat
//! after the whole ordered text, one page of its own on the stop's path after an idle wait
//! (benches/PROFILE-stop.md, ninth round). Its name and `_start`'s carry no hash, so even
//! a debug build places them as listed.

use crate::harness::baton_bin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Address of every function symbol of the binary, by its (mangled) name.
fn text_symbols(bin: &Path) -> HashMap<String, u64> {
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(bin)
        .output()
        .expect("nm (binutils, installed with gcc) must be on PATH for this test");
    assert!(out.status.success(), "nm failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("nm prints text")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, kind, name) = (f.first()?, f.get(1)?, f.get(2)?);
            matches!(*kind, "t" | "T").then(|| {
                let addr = u64::from_str_radix(addr, 16).expect("nm prints hex addresses");
                (name.to_string(), addr)
            })
        })
        .collect()
}

/// link/hot-order.txt's path and the names it lists, in order.
fn listed() -> (PathBuf, Vec<String>) {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-order.txt");
    let listed = std::fs::read_to_string(&order)
        .expect("link/hot-order.txt (written by scripts/hot-order)")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    (order, listed)
}

#[test]
fn hot_functions_open_the_text_in_the_listed_order() {
    let (order, listed) = listed();
    let symbols = text_symbols(&baton_bin());
    let placed: Vec<(&str, u64)> = listed
        .iter()
        .filter_map(|n| Some((n.as_str(), *symbols.get(n)?)))
        .collect();
    // The markers (src/sys.rs) have the same names in every build.
    for marker in ["baton_hot_begin", "baton_hot_end", "main"] {
        assert!(
            placed.iter().any(|&(n, _)| n == marker),
            "{marker} is not both in {} and in the binary",
            order.display()
        );
    }
    let lowest = symbols.values().min().expect("the binary has functions");
    assert_eq!(
        placed[0],
        ("baton_hot_begin", *lowest),
        "the ordering was not applied: the first listed function does not open the text"
    );
    for pair in placed.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "the ordering was not applied: {} (at {:#x}) is listed before {} (at {:#x})",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1
        );
    }
}

#[test]
fn the_start_up_code_every_stop_runs_is_placed_with_the_clients_own() {
    let (order, listed) = listed();
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
        *symbols
            .get(name)
            .unwrap_or_else(|| panic!("the binary has no {name}"))
    };
    let frame_dummy = addr("frame_dummy");
    assert!(
        addr("baton_hot_end") < frame_dummy,
        "frame_dummy lies before the client's part"
    );
    // Applied: listed functions follow it (left out, it came after all of them).
    assert!(
        listed
            .iter()
            .any(|n| symbols.get(n).is_some_and(|&a| a > frame_dummy)),
        "frame_dummy is not inside the ordered text: no listed function comes after it"
    );
}
