//! `overlayd --role server`: its options and their [`OverlayRoleConfig`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::overlay::OverlayArgs;
use super::CliError;
use crate::roles::overlay::{Kind, OverlayRoleConfig, SourcePreference};

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role server",
    about = "Stream the videos of a folder into the overlay"
)]
pub struct ServerArgs {
    #[command(flatten)]
    pub overlay: OverlayArgs,
    /// Folder of video files to stream.
    #[arg(long)]
    pub videos: PathBuf,
    /// How files become live streams: ffmpeg child, built-in paced reader (.ts only), or auto
    /// (the paced reader for plain MPEG-TS files that need no transcoding, which starts in a
    /// few ms; ffmpeg for the other files).
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// Flood interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub flood_ms: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    Auto,
    Ffmpeg,
    Paced,
}

impl TryFrom<ServerArgs> for OverlayRoleConfig {
    type Error = CliError;

    fn try_from(a: ServerArgs) -> Result<Self, CliError> {
        let mut cfg = a.overlay.config(Kind::Server)?;
        cfg.videos = Some(a.videos);
        cfg.source = match a.source {
            SourceArg::Auto => SourcePreference::Auto,
            SourceArg::Ffmpeg => SourcePreference::Ffmpeg,
            SourceArg::Paced => SourcePreference::Paced,
        };
        cfg.flood_interval = Duration::from_millis(a.flood_ms);
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_options_reach_the_config() {
        let a = ServerArgs::try_parse_from(
            "s --name S1 --bootstrap 10.0.0.1 --videos v --source paced --flood-ms 250"
                .split_whitespace(),
        )
        .unwrap();
        let cfg = OverlayRoleConfig::try_from(a).unwrap();
        assert_eq!(cfg.kind, Kind::Server);
        assert_eq!(cfg.videos, Some(PathBuf::from("v")));
        assert_eq!(cfg.source, SourcePreference::Paced);
        assert_eq!(cfg.flood_interval, Duration::from_millis(250));
    }
}
