//! The integration tests: one crate, one harness (tests/harness), each module one topic,
//! every test driving the real `baton` binary against real services on loopback.
//!
//! Run one topic with `cargo test --test it deploy::`, one test by (part of) its name.

#[path = "../harness/mod.rs"]
mod harness;

mod bad_input;
mod client;
mod config_handoff;
mod control;
mod deploy;
mod deploy_defects;
mod etcd_cluster;
mod front;
mod front_install;
mod hardening;
mod jetty;
mod jvm;
mod layers;
mod layout;
mod link;
mod logpath;
mod memory;
mod notify;
mod operator;
mod poll_set;
mod raw_syscalls;
mod ready_path;
mod reexec;
mod security_files;
mod security_procs;
mod ship;
mod spawn;
mod stamped;
mod startup;
mod stop;
mod stop_card;
mod stop_nonroot;
mod stop_path;
mod stop_tail;
mod supervisor;
mod switch;
mod upgrade;
mod wake;
mod wake_paths;
mod wake_round;
