//! How baton's core is linked: the loader's work at every exec (see build.rs). The front
//! has no loader at all (tests/it/layout.rs).

use crate::harness::core_bin;
use std::process::Command;

/// The binary's dynamic section, as readelf prints it.
fn dynamic_section() -> String {
    let out = Command::new("readelf")
        .arg("--dynamic")
        .arg(core_bin())
        .output()
        .expect("readelf (binutils, installed with gcc) must be on PATH for this test");
    assert!(out.status.success(), "readelf failed: {out:?}");
    String::from_utf8(out.stdout).expect("readelf prints text")
}

#[test]
fn needs_no_libgcc_s() {
    let dynamic = dynamic_section();
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    // libgcc_s.so.1 is one more library to find, map and relocate in every baton process:
    // build.rs links the unwinder from libgcc_eh.a instead. (A debug build also names
    // ld-linux for __tls_get_addr: the loader is mapped in every process anyway.)
    assert!(needed.contains(&"libc.so.6"), "{dynamic}");
    assert!(
        !needed.iter().any(|n| n.starts_with("libgcc_s")),
        "libgcc_s is linked dynamically again:\n{dynamic}"
    );
}

#[test]
fn relative_relocations_are_packed() {
    let dynamic = dynamic_section();
    // DT_RELR (-z pack-relative-relocs): the PIE's ~3000 relative relocations as a few
    // hundred bytes of bitmaps rather than 70 KB of RELA records read at every exec.
    assert!(dynamic.contains("(RELR)"), "no DT_RELR:\n{dynamic}");
    assert!(
        !dynamic.contains("(RELACOUNT)"),
        "relative RELA records remain:\n{dynamic}"
    );
}
