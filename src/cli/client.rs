//! `overlayd --role client`: its options and their [`ClientConfig`].

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::{parse_bootstrap, CliError, LogArgs, DEFAULT_CLIENT_PORT, DEFAULT_EDGE_PORT};
use crate::roles::client::{ClientConfig, PlayerInput};
use crate::service::client::DEFAULT_SUSPECT_FLOOR_MS;

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role client",
    about = "Watch or record a video from an edge"
)]
pub struct ClientArgs {
    /// This device's name in the topology file.
    #[arg(long)]
    pub name: String,
    /// Bootstrapper address, IP or IP:PORT (default port 7700).
    #[arg(long, value_name = "IP[:PORT]")]
    pub bootstrap: String,
    /// Video to play; without it the client lists the videos and asks.
    #[arg(long)]
    pub video: Option<String>,
    /// Edge to use: `auto` (best measured) or an address.
    #[arg(long, default_value = "auto")]
    pub edge: String,
    /// Player for the stream.
    #[arg(long, value_enum, default_value_t = Player::Ffplay)]
    pub player: Player,
    /// Record the received MPEG-TS stream to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Stop after this many seconds (headless runs).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Local address to bind (default `::`: every IPv4 and IPv6 address).
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// Local UDP port the edge streams to.
    #[arg(long, default_value_t = DEFAULT_CLIENT_PORT)]
    pub client_port: u16,
    /// The edges' UDP port.
    #[arg(long, default_value_t = DEFAULT_EDGE_PORT)]
    pub edge_port: u16,
    /// With --video: write the final statistics as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// How the stream reaches ffplay: `pipe` (its stdin: it shows the picture as soon as it is
    /// up) or `udp` (a local port, the way before: what arrives while ffplay starts is lost).
    #[arg(long, value_enum, default_value_t = PlayerInputArg::Pipe)]
    pub player_input: PlayerInputArg,
    /// With `--player-input udp`: the local port (on 127.0.0.1) ffplay listens on; 0 picks a
    /// free one.
    #[arg(long, default_value_t = 0)]
    pub player_port: u16,
    /// The edge is probed after a silence of twice the stream's peak gap between datagrams,
    /// and at least this many milliseconds, and suspected (the next-best one asked to continue
    /// the stream) when the probe goes unanswered; 0: no suspicion, an edge is left only after
    /// 1 s without any sign of life (the rule before).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_SUSPECT_FLOOR_MS)]
    pub edge_suspect_ms: u64,
    /// Latency budget of loss recovery with the built-in relay: a hole in the stream holds
    /// back the video behind it at most this long while the edge is asked to send it again.
    /// Default: 4 x the edge's round trip, at least 120 ms. 0: no recovery (holes are passed
    /// over at once).
    #[arg(long, value_name = "MS")]
    pub latency_ms: Option<u64>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlayerInputArg {
    Pipe,
    Udp,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Player {
    Ffplay,
    None,
}

impl TryFrom<ClientArgs> for ClientConfig {
    type Error = CliError;

    fn try_from(a: ClientArgs) -> Result<Self, CliError> {
        let bootstrap = parse_bootstrap(&a.bootstrap)?;
        let duration = a
            .duration
            .map(Duration::try_from_secs_f64)
            .transpose()
            .map_err(|_| {
                CliError::Usage("--duration must be a non-negative number of seconds".into())
            })?;
        Ok(ClientConfig {
            name: a.name,
            bootstrap,
            video: a.video,
            edge: a.edge,
            player: a.player == Player::Ffplay,
            record: a.record,
            duration,
            bind: a.bind,
            client_port: a.client_port,
            edge_port: a.edge_port,
            stats_json: a.stats_json,
            player_input: match a.player_input {
                PlayerInputArg::Pipe => PlayerInput::Pipe,
                PlayerInputArg::Udp => PlayerInput::Udp,
            },
            player_port: a.player_port,
            edge_suspect: (a.edge_suspect_ms > 0).then(|| Duration::from_millis(a.edge_suspect_ms)),
            latency: a.latency_ms.map(Duration::from_millis),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<ClientConfig, CliError> {
        let line = format!("c --name C1 --bootstrap 127.0.0.1 {extra}");
        ClientConfig::try_from(ClientArgs::try_parse_from(line.split_whitespace()).unwrap())
    }

    #[test]
    fn client_options_reach_the_config() {
        let cfg = config("--player none --duration 2.5 --video v --edge 10.0.0.2").unwrap();
        assert!(!cfg.player);
        assert_eq!(cfg.duration, Some(Duration::from_millis(2500)));
        assert_eq!(cfg.video.as_deref(), Some("v"));
        assert_eq!(cfg.edge, "10.0.0.2");
        assert_eq!(cfg.client_port, DEFAULT_CLIENT_PORT);
        let cfg = config("").unwrap();
        assert!(cfg.player);
        assert_eq!(cfg.player_input, PlayerInput::Pipe);
        assert_eq!(cfg.duration, None);
        let cfg = config("--player-input udp --player-port 5000").unwrap();
        assert_eq!(
            (cfg.player_input, cfg.player_port),
            (PlayerInput::Udp, 5000)
        );
        assert_eq!(
            cfg.edge_suspect,
            Some(Duration::from_millis(DEFAULT_SUSPECT_FLOOR_MS))
        );
        assert_eq!(config("--edge-suspect-ms 0").unwrap().edge_suspect, None);
        assert_eq!(cfg_latency(""), None);
        assert_eq!(cfg_latency("--latency-ms 0"), Some(Duration::ZERO));
        assert_eq!(
            cfg_latency("--latency-ms 250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            config("--edge-suspect-ms 150").unwrap().edge_suspect,
            Some(Duration::from_millis(150))
        );
    }

    fn cfg_latency(extra: &str) -> Option<Duration> {
        config(extra).unwrap().latency
    }

    #[test]
    fn a_duration_that_is_no_time_is_a_usage_error() {
        for bad in ["--duration=-1", "--duration=nan", "--duration=inf"] {
            match config(bad) {
                Err(CliError::Usage(m)) => assert!(m.contains("--duration"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
