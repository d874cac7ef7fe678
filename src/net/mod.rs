//! Thin tokio drivers: the sockets, tasks and timers that feed the sans-IO state machines.

pub mod bootstrap_client;
pub mod node_driver;
pub mod transport;
