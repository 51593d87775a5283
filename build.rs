//! Link-time choices that make every baton process cheaper to start and to keep.
//!
//! Every `baton` command (a `stop`, a `status`, the supervisor itself) is a fresh
//! process, and after an idle wait its start-up cost grows with the pages it touches
//! (benches/PROFILE-memory.md). Two link flags, both safe on glibc ≥ 2.36:
//!
//! - `-z pack-relative-relocs` (DT_RELR): the ~3000 relative relocations of a PIE
//!   take a few hundred bytes of bitmaps instead of 70 KB of `Elf64_Rela` records,
//!   so the loader reads 17 pages fewer at every exec. ASLR is unchanged. A glibc
//!   without DT_RELR refuses the binary with a clear version error at exec
//!   (`GLIBC_ABI_DT_RELR not found`), never silently.
//! - The unwinder from libgcc_eh.a instead of libgcc_s.so.1: one shared library
//!   less to find, map, relocate and keep (its writable data is private to each
//!   process). std asks for `-lgcc_s` itself, so a linker script of that name in
//!   a directory searched first answers it with the static archive. glibc only
//!   reaches for libgcc_s.so.1 on its own for pthread_cancel, which baton never
//!   calls.
//!
//! - `-z separate-loadable-segments` (LLD): each segment starts on a page, so that the
//!   writable ones, which ld.so writes whole at every exec, span no page more than their
//!   size needs.
//! - `--symbol-ordering-file link/hot-order.txt` (LLD, rustc's default linker on
//!   x86_64 Linux since 1.90): the functions the paths after an idle wait run (the
//!   supervisor's wake on a stop, an exit, READY=1; `baton stop`; `start`'s end) first
//!   in .text, in order of first execution, so each path touches a few contiguous code
//!   pages instead of one page per function scattered over 1.8 MB
//!   (benches/PROFILE-layout.md). scripts/hot-order writes the file from traced runs;
//!   names it lists that the code no longer has are skipped without a warning
//!   (`--no-warn-symbol-ordering`): a stale file costs locality, never the build.
//!
//! All only for Linux with glibc; elsewhere (or without libgcc_eh.a, or with a linker
//! other than LLD) the defaults stay, with a warning.
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = |key: &str| env::var(format!("CARGO_CFG_TARGET_{key}")).unwrap_or_default();
    if target("OS") != "linux" || target("ENV") != "gnu" {
        return;
    }
    // The front: static, without the C library's start files or libraries, not PIE (so
    // nothing to relocate: the kernel maps it and jumps to `_start`).
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bin=baton={arg}");
    }
    println!("cargo:rustc-link-arg-bin=baton-core=-Wl,-z,pack-relative-relocs");
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    match links_with_lld() {
        Ok(()) if order.is_file() => {
            println!(
                "cargo:rustc-link-arg-bin=baton-core=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bin=baton-core=-Wl,--no-warn-symbol-ordering");
            // Each segment from a page boundary: the writable ones (62 KB, every page of them
            // written by ld.so's relocation in every process) then span the fewest pages
            // their size allows, 16, instead of 16 or 17 as the text before them shifts
            // their start (benches/PROFILE-stop.md, ninth round). The file grows by the
            // padding, a few KB, never mapped.
            println!("cargo:rustc-link-arg-bin=baton-core=-Wl,-z,separate-loadable-segments");
            // The markers that delimit the ordered text (src/sys.rs) are never called:
            // without this, a build without LTO would drop them as unreferenced.
            println!("cargo:rustc-link-arg-bin=baton-core=-Wl,--undefined=baton_hot_begin");
            println!("cargo:rustc-link-arg-bin=baton-core=-Wl,--undefined=baton_hot_end");
        }
        Ok(()) => println!("cargo:warning=no {}: hot code not ordered", order.display()),
        Err(why) => println!("cargo:warning=hot code not ordered: {why}"),
    }
    match libgcc_eh() {
        Some(archive) => {
            let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
            let script = format!("INPUT({})\n", archive.display());
            fs::write(out.join("libgcc_s.so"), script).expect("OUT_DIR is writable");
            println!("cargo:rustc-link-search=native={}", out.display());
        }
        None => {
            println!("cargo:warning=libgcc_eh.a not found: baton links libgcc_s.so.1 dynamically")
        }
    }
}

/// Whether rustc links with LLD, the linker that reads `--symbol-ordering-file`: its
/// default for x86_64-unknown-linux-gnu from 1.90 on, unless turned off by flags.
fn links_with_lld() -> Result<(), String> {
    let target = env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return Err(format!("the default linker for {target} is not LLD"));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker-features=-lld") || flags.contains("link-self-contained=-linker") {
        return Err("LLD is turned off in RUSTFLAGS".into());
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map_err(|e| format!("unable to run rustc --version: {e}"))?;
    let version = String::from_utf8_lossy(&version.stdout);
    // "rustc 1.95.0 (…)": the minor version.
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 90 => Ok(()),
        _ => Err(format!("{} links with the system linker", version.trim())),
    }
}

/// The static unwinder of the C compiler that links baton, if it ships one.
fn libgcc_eh() -> Option<PathBuf> {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // cc prints the bare name back when it has no such file.
    (path.is_absolute() && Path::new(&path).is_file()).then_some(path)
}
