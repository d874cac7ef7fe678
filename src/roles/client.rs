//! Wiring of the client role.
//!
//! This version asks the bootstrapper for the client's edges and stops there: the edge-client
//! UDP protocol, playback and recording come with the media work, and until then the client
//! says so and exits non-zero rather than pretending to play.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use crate::net::bootstrap_client::{self, RetryPolicy};

/// Everything the client needs from the command line.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub bootstrap: SocketAddr,
    pub video: Option<String>,
    pub edge: String,
    pub player: bool,
    pub record: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub bind: IpAddr,
    pub client_port: u16,
    pub edge_port: u16,
}

pub async fn run(cfg: ClientConfig) -> anyhow::Result<()> {
    let entry =
        bootstrap_client::fetch_entry(cfg.bootstrap, &cfg.name, RetryPolicy::default()).await?;
    let edges: Vec<String> = entry
        .device
        .neighbours
        .iter()
        .map(|n| n.to_socket_addr(cfg.edge_port).to_string())
        .collect();
    info!(name = %cfg.name, edges = %edges.join(","), "got edges from bootstrapper {}", cfg.bootstrap);
    anyhow::bail!(
        "the client role is not implemented yet (edges known: {}); it arrives with the media and edge work",
        edges.join(", ")
    )
}
