//! Deploys on one host: the operator's client, the switch worker, and what it drives (proxy, registry, release layout).

pub mod client;
pub mod proxy;
pub mod registry;
pub mod release;
pub mod switch;
