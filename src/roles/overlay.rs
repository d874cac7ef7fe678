//! Wiring of the overlay roles (server, node, edge): key, bootstrap, listener, node loop.
//!
//! A device loads the overlay key, asks the bootstrapper for its entry (retrying while the
//! bootstrapper is not up), then runs an overlay [`Node`] under the tokio [`NodeDriver`] until
//! SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use crate::net::bootstrap_client::{self, RetryPolicy};
use crate::net::node_driver::{DriverConfig, NodeDriver};
use crate::overlay::{LivenessConfig, Node, NodeConfig};
use crate::wire::overlay::OverlayRole;

/// Which overlay role was asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Node,
    /// A node forced to be an edge whatever the topology says.
    Edge,
}

/// Everything an overlay role needs from the command line.
#[derive(Debug, Clone)]
pub struct OverlayRoleConfig {
    pub name: String,
    pub kind: Kind,
    pub bootstrap: SocketAddr,
    pub bind: IpAddr,
    pub overlay_port: u16,
    pub key_file: PathBuf,
    pub liveness: LivenessConfig,
    pub videos: Option<PathBuf>,
    pub flood_interval: Duration,
    pub edge_port: u16,
}

/// Run an overlay role until a termination signal.
pub async fn run(cfg: OverlayRoleConfig) -> anyhow::Result<()> {
    let key = crate::keyfile::load(&cfg.key_file)?;
    for w in &key.warnings {
        warn!("{w}");
    }
    if let Some(dir) = &cfg.videos {
        // Checked before anything else so a typo fails fast.
        std::fs::read_dir(dir)
            .with_context(|| format!("cannot read --videos folder '{}'", dir.display()))?;
    }

    let entry =
        bootstrap_client::fetch_entry(cfg.bootstrap, &cfg.name, RetryPolicy::default()).await?;
    let device = entry.device;
    let edge = cfg.kind == Kind::Edge || (cfg.kind == Kind::Node && device.edge);
    let role = match cfg.kind {
        Kind::Server => OverlayRole::Server,
        _ if edge => OverlayRole::Edge,
        _ => OverlayRole::Node,
    };
    let neighbours: Vec<SocketAddr> = device
        .neighbours
        .iter()
        .map(|n| n.to_socket_addr(cfg.overlay_port))
        .collect();
    info!(
        name = %cfg.name, role = ?role,
        neighbours = %neighbours.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        "got topology entry from bootstrapper {}", cfg.bootstrap
    );

    let driver = NodeDriver::bind(DriverConfig {
        listen: SocketAddr::new(cfg.bind, cfg.overlay_port),
        dial_from: (!cfg.bind.is_unspecified()).then_some(cfg.bind),
        psk: key.psk,
        handshake_timeout: Duration::from_secs(3),
    })
    .await?;
    info!(listen = %driver.local_addr(), "overlay listening");
    // Honest about what this version does: links and keepalives only.
    warn!(
        "this version keeps encrypted overlay links and keepalives only: floods, routing, \
         streaming{} are not implemented yet",
        if edge {
            " and the edge's client service"
        } else {
            ""
        }
    );

    let node = Node::new(
        NodeConfig {
            name: cfg.name.clone(),
            role,
            listen_port: driver.local_addr().port(),
            neighbours,
            liveness: cfg.liveness.clone(),
            flood_interval: cfg.flood_interval,
            ..NodeConfig::default()
        },
        Instant::now(),
    );
    driver.run(node, super::shutdown_signal()).await;
    info!("shut down");
    Ok(())
}
