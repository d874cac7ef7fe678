//! Thin tokio drivers: the sockets, tasks and timers that feed the sans-IO state machines.

pub mod bootstrap_client;
pub mod client_driver;
pub mod edge_driver;
pub mod edge_ffmpeg;
pub mod map_server;
pub mod node_driver;
pub mod reporter;
pub mod transport;

// The control endpoint (status, metrics, traces) and its client side.
pub mod control;
