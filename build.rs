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
//! Both only for Linux with glibc; elsewhere (or without libgcc_eh.a) the defaults
//! stay, with a warning.
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
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
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
