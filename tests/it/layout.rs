//! The code layout: link/hot-order.txt, the order build.rs hands the linker, is applied.
//!
//! The paths after an idle wait pay per code page they touch (benches/PROFILE-layout.md);
//! the order puts their functions first in .text, together. Names in the file carry hashes
//! of one build, so a debug build finds only some of them (the markers, `main`, std's):
//! those must come first in the text and in the file's order.

use crate::harness::baton_bin;
use std::collections::HashMap;
use std::path::Path;
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

#[test]
fn hot_functions_open_the_text_in_the_listed_order() {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-order.txt");
    let listed: Vec<String> = std::fs::read_to_string(&order)
        .expect("link/hot-order.txt (written by scripts/hot-order)")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
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
