//! Deploys on one host: the operator's client, the switch worker, and what it drives (proxy, registry, release layout).

pub mod client;
pub mod proxy;
pub mod registry;
pub mod release;
pub mod switch;

/// One instance of the service, as the switch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Its process ID (what `X-Pid` must show once traffic reaches it).
    pub pid: i32,
    /// The port it listens on, if it has one of its own.
    pub port: Option<u16>,
    /// The release ID it runs.
    pub release: Option<String>,
}
