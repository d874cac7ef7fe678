//! Thin tokio drivers: the sockets, tasks and timers that feed the sans-IO state machines.

pub mod bind;
pub mod bootstrap_client;
pub mod client_driver;
pub mod edge_driver;
pub mod edge_ffmpeg;
pub mod http;
pub mod map_server;
pub mod node_driver;
pub mod reporter;
pub mod transport;
pub mod udp;

// The control endpoint (status, metrics, traces) and its client side.
pub mod control;

/// Sleeps until `deadline`, or forever without one: the timer arm of a driver loop whose
/// state machine may have nothing scheduled.
pub(crate) async fn sleep_until_or_never(deadline: Option<impl Into<tokio::time::Instant>>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
