//! `overlayd --role node` and `--role edge`: their options and their [`OverlayRoleConfig`].
//!
//! Both roles take the same options; `--role edge` only forces the device to be an edge
//! whatever the topology says ([`NodeArgs::forced_edge`]).

use clap::{Parser, ValueEnum};

use super::overlay::OverlayArgs;
use super::{CliError, DEFAULT_EDGE_PORT};
use crate::net::edge_ffmpeg::RelayStart;
use crate::roles::overlay::{Kind, OverlayRoleConfig, RelayMode};
use crate::service::edge::EdgeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role node",
    about = "Overlay relay (an edge if the topology says so)"
)]
pub struct NodeArgs {
    #[command(flatten)]
    pub overlay: OverlayArgs,
    /// UDP port for clients, used when this node is an edge.
    #[arg(long, default_value_t = DEFAULT_EDGE_PORT)]
    pub edge_port: u16,
    /// How an edge sends video to its clients: an ffmpeg child per client (raw MPEG-TS) or the
    /// built-in relay (numbered datagrams). Default: ffmpeg when it is installed, else native.
    #[arg(long, value_enum)]
    pub relay: Option<RelayArg>,
    /// How the ffmpeg relay starts a client's child: `warm` keeps children started ahead, so a
    /// session does not wait for ffmpeg to start, probes 40 ms of input and has them write
    /// packets without holding video for audio, one audio frame per PES; `cold` starts one
    /// when the session opens, with a 0.5 s probe (the behaviour before, for comparison, and
    /// for sources whose audio comes in long PES, which the short probe misses).
    #[arg(long, value_enum, default_value_t = RelayStartArg::Warm)]
    pub ffmpeg_relay_start: RelayStartArg,
    /// Hitless redundancy for every stream consumed here or below: keep a second parent on
    /// another path and merge both by sequence number (costs one extra feed of bandwidth in).
    #[arg(long)]
    pub redundant: bool,
    /// Hitless redundancy for these videos only (comma-separated names).
    #[arg(long, value_name = "A,B", value_parser = parse_video_list)]
    pub redundant_videos: Option<VideoList>,
    /// Bound of the GOP cache per video, in bytes (the chunks since the last keyframe,
    /// replayed to a joining client of an edge, or a joining child in the overlay, so its
    /// player starts at once; at most 192 chunks in the overlay); 0 turns the cache off.
    #[arg(long, default_value_t = EdgeConfig::DEFAULT_GOP_CACHE_BYTES)]
    pub gop_cache_bytes: usize,
    /// Most client sessions an edge serves at once; more are refused as busy.
    #[arg(long, default_value_t = EdgeConfig::DEFAULT_MAX_SESSIONS,
          value_parser = parse_max_clients)]
    pub max_clients: usize,
    /// Set by `--role edge`: an edge whatever the topology says.
    #[arg(skip)]
    pub forced_edge: bool,
}

/// A comma-separated list of video names, one argument. A newtype, because clap reads an
/// `Option<Vec<String>>` field as a repeatable option of single names and then panics on the
/// whole list this parser returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoList(pub Vec<String>);

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RelayStartArg {
    Warm,
    Cold,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RelayArg {
    Ffmpeg,
    Native,
}

impl TryFrom<NodeArgs> for OverlayRoleConfig {
    type Error = CliError;

    fn try_from(a: NodeArgs) -> Result<Self, CliError> {
        let kind = if a.forced_edge {
            Kind::Edge
        } else {
            Kind::Node
        };
        let mut cfg = a.overlay.config(kind)?;
        cfg.edge_port = a.edge_port;
        cfg.relay = match a.relay {
            None => RelayMode::Auto,
            Some(RelayArg::Ffmpeg) => RelayMode::Ffmpeg,
            Some(RelayArg::Native) => RelayMode::Native,
        };
        cfg.relay_start = match a.ffmpeg_relay_start {
            RelayStartArg::Warm => RelayStart::Warm,
            RelayStartArg::Cold => RelayStart::Cold,
        };
        cfg.redundant = a.redundant;
        cfg.redundant_videos = a.redundant_videos.map(|v| v.0).unwrap_or_default();
        cfg.gop_cache_bytes = a.gop_cache_bytes;
        cfg.max_clients = a.max_clients;
        Ok(cfg)
    }
}

fn parse_max_clients(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (1..=1_000_000).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of clients between 1 and 1000000"
        )),
    }
}

fn parse_video_list(s: &str) -> Result<VideoList, String> {
    let names: Vec<String> = s.split(',').map(|v| v.trim().to_string()).collect();
    if names.iter().any(String::is_empty) {
        return Err(format!("'{s}' has an empty video name"));
    }
    Ok(VideoList(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(line: &str) -> Result<OverlayRoleConfig, CliError> {
        let a = NodeArgs::try_parse_from(line.split_whitespace()).unwrap();
        OverlayRoleConfig::try_from(a)
    }

    #[test]
    fn node_options_reach_the_config() {
        let cfg = config(
            "n --name O1 --bootstrap 10.0.0.1:9000 --relay native --redundant-videos a,b \
             --max-clients 7 --ping-ms 50 --report-interval 0 --edge-port 9999",
        )
        .unwrap();
        assert_eq!(cfg.kind, Kind::Node);
        assert_eq!(cfg.bootstrap, "10.0.0.1:9000".parse().unwrap());
        assert_eq!(cfg.relay, RelayMode::Native);
        assert_eq!(cfg.redundant_videos, ["a", "b"]);
        assert!(!cfg.redundant);
        assert_eq!(cfg.max_clients, 7);
        assert_eq!(cfg.edge_port, 9999);
        assert_eq!(cfg.liveness.ping_interval.as_millis(), 50);
        assert_eq!(cfg.report_interval, None);
        // Defaults: the relay picks itself, the bootstrap port is 7700.
        let cfg = config("n --name O1 --bootstrap 10.0.0.1").unwrap();
        assert_eq!(cfg.relay, RelayMode::Auto);
        assert_eq!(cfg.relay_start, RelayStart::Warm);
        assert_eq!(cfg.bootstrap.port(), 7700);
        let cfg = config("n --name O1 --bootstrap 10.0.0.1 --ffmpeg-relay-start cold").unwrap();
        assert_eq!(cfg.relay_start, RelayStart::Cold);
        assert_eq!(cfg.report_interval.map(|d| d.as_millis()), Some(1000));
    }

    #[test]
    fn forced_edge_is_an_edge_and_a_bad_bootstrap_is_a_failure_naming_it() {
        let mut a =
            NodeArgs::try_parse_from(["n", "--name", "O5", "--bootstrap", "10.0.0.1"]).unwrap();
        a.forced_edge = true;
        assert_eq!(OverlayRoleConfig::try_from(a).unwrap().kind, Kind::Edge);
        let e = config("n --name O1 --bootstrap nowhere").unwrap_err();
        assert!(matches!(e, CliError::Failed(_)), "{e:?}");
        assert!(
            format!("{e:#}").contains("bad --bootstrap 'nowhere'"),
            "{e:#}"
        );
    }

    #[test]
    fn value_checks_say_what_is_wrong() {
        assert!(parse_video_list("a,,b")
            .unwrap_err()
            .contains("empty video name"));
        assert_eq!(parse_video_list(" a , b").unwrap().0, ["a", "b"]);
        assert!(parse_max_clients("0").is_err());
        assert_eq!(parse_max_clients("1000000"), Ok(1_000_000));
    }
}
