//! baton: a process supervisor whose `start` means ready. `main` is a switchboard.

// libc calls our `main` directly (see there); a test build keeps the test harness's.
#![cfg_attr(not(test), no_main)]

mod cgroup;
mod cli;
mod clock;
mod config;
mod control;
mod daemon;
mod deploy;
mod environ;
mod error;
mod etcd;
mod exit;
mod files;
mod generate;
mod host;
mod lease;
mod logs;
mod logview;
mod metrics;
mod overview;
mod pidfile;
mod probe;
mod process;
#[cfg(test)]
mod proptests;
mod service;
mod shell;
mod ship;
mod sockets;
mod supervisor;
mod sys;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod syscall;
mod tracking;
mod url;

/// The C entry point, in place of std's: std's start-up finds the main thread's stack
/// bounds for its stack-overflow message with pthread_getattr_np, which reads and parses
/// /proc/self/maps (~85k of the ~730k instructions of `baton --version`, 12 system
/// calls, a stdio buffer), in every baton process. What else it does that baton needs is
/// in `sys::start`; the arguments reach `std::env::args` from glibc all the same.
#[cfg_attr(not(test), no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    sys::start();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            sys::exit(cli::usage_code(&e));
        }
    };
    let code = match cli.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e}");
            e.exit_code().code()
        }
    };
    sys::exit(code);
}
