//! The roles: what each `--role` runs once its configuration is known.
//!
//! [`overlay`] assembles a server, node or edge from the drivers in `net`, the state machines in
//! `overlay` and `service`, and the media sources; [`client`] does the same for a client, with
//! its player, recording and terminal table. [`bootstrapper`] is more than assembly: it is the
//! bootstrapper's whole TCP server (connection handling, limits, hot reload of the topology
//! file), plus the live map when asked. Each role's configuration comes from `cli`.

pub mod bootstrapper;
pub mod client;
pub mod overlay;

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
