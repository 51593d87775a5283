//! The code layout: link/hot-order.txt, the order build.rs hands the core's linker, is
//! applied; the front is what the kernel runs as it is.
//!
//! The paths after an idle wait pay per code page they touch (benches/PROFILE-layout.md);
//! the order puts their functions first in the core's .text, together. Names in the file
//! carry hashes of one build, so a debug build finds only some of them (the markers,
//! `main`, std's): those must come first in the text and in the file's order.
//!
//! Every core process also runs crtbeginS.o's `frame_dummy` (from .init_array) before
//! `main`. Its symbol has no size, so scripts/hot-order once left it out of the file and it
//! sat after the whole ordered text, one page of its own on the stop's path after an idle
//! wait (benches/PROFILE-stop.md, ninth round). Its name and `_start`'s carry no hash, so
//! even a debug build places them as listed.
//!
//! The stop's own start-up is the front's (src/front.rs, benches/PROFILE-stop.md, tenth
//! round): a static executable with nothing for a loader to do, a few pages in all.

use crate::harness::{baton_bin, core_bin};
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
    let symbols = text_symbols(&core_bin());
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
    // In the client's part (after the supervisor's), where the core runs them for a stop
    // the front has sent (and for `start`).
    for name in ["_start", "frame_dummy"] {
        assert!(
            at("baton_hot_end") < at(name),
            "{name} is listed among the supervisor's wake paths"
        );
    }
    let symbols = text_symbols(&core_bin());
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

/// What readelf prints about `bin` with `flag`.
fn readelf(bin: &Path, flag: &str) -> String {
    let out = Command::new("readelf")
        .args([flag, "--wide"])
        .arg(bin)
        .output()
        .expect("readelf (binutils, installed with gcc) must be on PATH for this test");
    assert!(out.status.success(), "readelf {flag} failed: {out:?}");
    String::from_utf8(out.stdout).expect("readelf prints text")
}

#[test]
fn the_front_is_a_static_executable_the_kernel_runs_as_it_is() {
    let front = baton_bin();
    let header = readelf(&front, "--file-header");
    // ET_EXEC: linked at a fixed address, so not one pointer in it needs relocating.
    assert!(
        header
            .lines()
            .any(|l| l.trim_start().starts_with("Type:") && l.contains("EXEC (Executable file)")),
        "the front is not ET_EXEC (a PIE is relocated at every exec):\n{header}"
    );
    // No PT_INTERP: the kernel jumps to `_start` itself; no ld.so is mapped, no library
    // looked up, no page of libc touched.
    let segments = readelf(&front, "--program-headers");
    let types: Vec<&str> = segments
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for absent in ["INTERP", "DYNAMIC", "TLS"] {
        assert!(
            !types.contains(&absent),
            "the front has a {absent} segment:\n{segments}"
        );
    }
    assert!(types.contains(&"LOAD"), "no loadable segment?\n{segments}");
    let dynamic = readelf(&front, "--dynamic");
    assert!(
        dynamic.contains("There is no dynamic section"),
        "the front has a dynamic section:\n{dynamic}"
    );
    let relocations = readelf(&front, "--relocs");
    assert!(
        relocations.contains("There are no relocations"),
        "the front carries relocations:\n{relocations}"
    );
}

/// The size of each of `bin`'s sections, by name.
fn section_sizes(bin: &Path) -> HashMap<String, u64> {
    readelf(bin, "--section-headers")
        .lines()
        // "  [ 5] .text  PROGBITS  00000000002019e0 0009e0 0020a9 00  AX  0   0 16"
        .filter_map(|l| {
            let f: Vec<&str> = l.split(']').nth(1)?.split_whitespace().collect();
            let size = u64::from_str_radix(f.get(4)?, 16).ok()?;
            Some((f.first()?.to_string(), size))
        })
        .collect()
}

#[test]
fn the_front_is_a_few_pages() {
    const PAGE: u64 = 4096;
    let front = baton_bin();
    let text = *section_sizes(&front)
        .get(".text")
        .expect("the front has a .text section");
    let file = std::fs::metadata(&front).expect("the front's file").len();
    // The release build is what the bench and operators run: the stop's start-up is its
    // text, a page of read-only data, one of data and its stack (14 KB of file). An
    // unoptimized build carries its debug information and 4 to 6 times the code: only a
    // gross growth (std, formatting, a second copy of something) is caught there.
    let (max_text, max_file) = if cfg!(debug_assertions) {
        (32 * PAGE, 4 << 20)
    } else {
        (4 * PAGE, 64 << 10)
    };
    assert!(
        text <= max_text,
        "the front's text is {text} bytes (at most {max_text} in this profile)"
    );
    assert!(
        file < max_file,
        "the front's file is {file} bytes (under {max_file} in this profile)"
    );
}
