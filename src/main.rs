//! baton: a process supervisor whose `start` means ready. `main` is a switchboard.

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
mod tracking;
mod url;

fn main() {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(cli::usage_code(&e));
        }
    };
    let code = match cli.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e}");
            e.exit_code().code()
        }
    };
    std::process::exit(code);
}
