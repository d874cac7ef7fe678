//! The options every overlay device shares (server, node, edge) and the part of
//! [`OverlayRoleConfig`] they fill; [`server`](super::server) and [`node`](super::node) add
//! their own options on top.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::DEFAULT_OVERLAY_PORT;
use super::{parse_bootstrap, CliError, LogArgs, DEFAULT_EDGE_PORT, DEFAULT_KEY_FILE};
use crate::net::edge_ffmpeg::RelayStart;
use crate::roles::overlay::{Kind, OverlayRoleConfig, RelayMode, SourcePreference};
use crate::service::edge::EdgeConfig;

/// Options every overlay device (server, node, edge) shares.
#[derive(Args, Debug, Clone)]
pub struct OverlayArgs {
    /// This device's name in the topology file.
    #[arg(long)]
    pub name: String,
    /// Bootstrapper address, IP or IP:PORT (default port 7700).
    #[arg(long, value_name = "IP[:PORT]")]
    pub bootstrap: String,
    /// Local address to bind (and to dial from). Default `::`: every IPv4 and IPv6 address
    /// (0.0.0.0 on a host without IPv6), as in CORE. On one machine give each device its own
    /// 127.x address.
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// TCP port for overlay links, the same on every device unless the topology says IP:PORT.
    #[arg(long, default_value_t = DEFAULT_OVERLAY_PORT)]
    pub overlay_port: u16,
    /// Pre-shared overlay key (see `overlayd keygen`).
    #[arg(long, default_value = DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,
    /// Keepalive ping interval in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub ping_ms: u64,
    /// Hysteresis: switch parent only for a path better by this fraction (0.2 = 20%).
    #[arg(long, default_value_t = 0.2, value_parser = parse_margin)]
    pub switch_margin: f64,
    /// ... and only once the better path has stayed better this long (milliseconds), so a
    /// delay spike of a loaded host does not move streams back and forth.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub switch_sustain_ms: u64,
    /// A parent left because it stalled (a lossy or hung path) is not switched back to for
    /// this long (milliseconds), doubled for each further stall within 2 minutes; 0: off (the
    /// old rule: its delay alone brings the stream back).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub stall_damping_ms: u64,
    /// Old behaviour: when a link to a server goes down, do not flood a withdrawal of the
    /// routes over it (they expire after about 3.5 s of missed floods instead).
    #[arg(long)]
    pub no_route_withdrawal: bool,
    /// A neighbour silent this long (milliseconds) is dead.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub dead_ms: u64,
    /// The old liveness rule: a parent that falls silent is noticed only by the link's dead
    /// timer (--dead-ms). By default a parent silent well beyond its stream's own chunk
    /// spacing is suspected at once: the stream moves make-before-break to another parent, or
    /// (when none can and the parent is a relay) the link is probed fast (3 × 50 ms).
    #[arg(long)]
    pub no_suspicion: bool,
    /// On SIGTERM or SIGINT, first tell the neighbours and let every stream we feed move to
    /// another parent make-before-break, then exit; wait at most this long (milliseconds).
    /// 0: exit at once (the old behaviour). SIGKILL never drains.
    #[arg(long, default_value_t = crate::net::node_driver::DEFAULT_DRAIN_MS, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub drain_ms: u64,
    /// TCP port of the control endpoint (plain HTTP: /status, /metrics, /trace); 0 turns it off.
    #[arg(long, default_value_t = crate::net::control::DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
    /// Address of the control endpoint. Default: the --bind address when it is a loopback
    /// address, else 127.0.0.1. It has no authentication: never give an address the overlay
    /// (or anyone untrusted) can reach.
    #[arg(long, value_name = "IP")]
    pub control_bind: Option<IpAddr>,
    /// Send a state report to the bootstrapper's live map every this many milliseconds
    /// (100 to 10000; encrypted with the overlay key); 0 turns reporting off. Keep it well
    /// under the bootstrapper's --map-dead-ms.
    #[arg(long, default_value_t = 1000, value_parser = parse_report_interval)]
    pub report_interval: u64,
    /// The bootstrapper's report port (default: the bootstrap port + 10).
    #[arg(long, value_name = "PORT")]
    pub report_port: Option<u16>,
    #[command(flatten)]
    pub log: LogArgs,
}

impl OverlayArgs {
    /// The configuration of a device of `kind` with these options; what only servers or only
    /// nodes set keeps its default.
    pub fn config(&self, kind: Kind) -> Result<OverlayRoleConfig, CliError> {
        Ok(OverlayRoleConfig {
            name: self.name.clone(),
            kind,
            bootstrap: parse_bootstrap(&self.bootstrap)?,
            bind: self.bind,
            control: crate::net::control::control_addr(
                self.bind,
                self.control_bind,
                self.control_port,
            ),
            overlay_port: self.overlay_port,
            key_file: self.key_file.clone(),
            liveness: crate::overlay::LivenessConfig {
                ping_interval: Duration::from_millis(self.ping_ms),
                dead_after: Duration::from_millis(self.dead_ms),
                ..Default::default()
            },
            videos: None,
            source: SourcePreference::Auto,
            switch_margin: self.switch_margin,
            switch_sustain: Duration::from_millis(self.switch_sustain_ms),
            stall_damping: Duration::from_millis(self.stall_damping_ms),
            suspicion: !self.no_suspicion,
            drain: Duration::from_millis(self.drain_ms),
            route_withdrawal: !self.no_route_withdrawal,
            flood_interval: Duration::from_secs(1),
            edge_port: DEFAULT_EDGE_PORT,
            relay: RelayMode::Auto,
            relay_start: RelayStart::Warm,
            redundant: false,
            redundant_videos: Vec::new(),
            gop_cache_bytes: EdgeConfig::DEFAULT_GOP_CACHE_BYTES,
            max_clients: EdgeConfig::DEFAULT_MAX_SESSIONS,
            report_interval: (self.report_interval > 0)
                .then(|| Duration::from_millis(self.report_interval)),
            report_port: self.report_port,
        })
    }
}

fn parse_report_interval(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if v == 0 || (100..=10_000).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} ms: give 0 (off) or 100 to 10000"))
    }
}

fn parse_margin(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0 <= margin < 1"))
    }
}
