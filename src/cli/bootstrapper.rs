//! `overlayd --role bootstrapper`: its options and their [`BootstrapperConfig`], with the live
//! map's settings when `--map-port` is given.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use super::{CliError, LogArgs, DEFAULT_KEY_FILE};
use crate::net::bootstrap_client::DEFAULT_BOOTSTRAP_PORT;
use crate::net::map_server::MapConfig;
use crate::roles::bootstrapper::BootstrapperConfig;

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role bootstrapper",
    about = "Serve each device its topology entry"
)]
pub struct BootstrapperArgs {
    /// Topology JSON file; edits are picked up without a restart.
    #[arg(long)]
    pub topology: PathBuf,
    /// Address to listen on (default `::`: every IPv4 and IPv6 address).
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    pub bind: IpAddr,
    /// TCP port to listen on.
    #[arg(long, default_value_t = DEFAULT_BOOTSTRAP_PORT)]
    pub port: u16,
    /// How often to look for edits of the topology file, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub reload_ms: u64,
    /// Serve the live map (a web page of the overlay, its trees and failures) on this TCP port;
    /// off when absent. Daemons report to the report port (--report-port).
    #[arg(long, value_name = "PORT")]
    pub map_port: Option<u16>,
    /// Address of the map page (default: --bind). Plain HTTP without authentication: use a
    /// management or loopback address.
    #[arg(long, value_name = "IP")]
    pub map_bind: Option<IpAddr>,
    /// TCP port where daemons' reports arrive (encrypted with the overlay key); default: --port + 10.
    #[arg(long, value_name = "PORT")]
    pub report_port: Option<u16>,
    /// Overlay key, to authenticate reports (with --map-port).
    #[arg(long, default_value = DEFAULT_KEY_FILE)]
    pub key_file: PathBuf,
    /// A daemon whose last report is older than this (milliseconds) is shown dead.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub map_dead_ms: u64,
    #[command(flatten)]
    pub log: LogArgs,
}

impl TryFrom<BootstrapperArgs> for BootstrapperConfig {
    type Error = CliError;

    /// Reads the overlay key when the live map is on (it authenticates reports); a key file
    /// others can read is logged as a warning, so logging must be set up before.
    fn try_from(a: BootstrapperArgs) -> Result<Self, CliError> {
        let mut cfg = BootstrapperConfig::new(a.topology, (a.bind, a.port).into());
        cfg.reload_interval = Duration::from_millis(a.reload_ms);
        if let Some(map_port) = a.map_port {
            let report_port = match a.report_port {
                Some(p) => p,
                None => a
                    .port
                    .checked_add(crate::wire::report::REPORT_PORT_OFFSET)
                    .context("--port + 10 is past 65535: give --report-port")?,
            };
            let key = crate::keyfile::load(&a.key_file)
                .context("the live map needs the overlay key to authenticate reports")?;
            for w in &key.warnings {
                tracing::warn!("{w}");
            }
            cfg.map = Some(MapConfig {
                http: (a.map_bind.unwrap_or(a.bind), map_port).into(),
                report: (a.bind, report_port).into(),
                psk: key.psk,
                dead_after: Duration::from_millis(a.map_dead_ms),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(line: &str) -> Result<BootstrapperConfig, CliError> {
        let a = BootstrapperArgs::try_parse_from(line.split_whitespace()).unwrap();
        BootstrapperConfig::try_from(a)
    }

    #[test]
    fn without_a_map_no_key_is_read() {
        let cfg = config(
            "b --topology t.json --bind 127.0.0.1 --port 7000 --reload-ms 20 \
                          --key-file /nonexistent/key",
        )
        .unwrap();
        assert_eq!(cfg.reload_interval, Duration::from_millis(20));
        assert!(cfg.map.is_none());
    }

    #[test]
    fn the_map_needs_the_key_and_a_report_port() {
        let e =
            config("b --topology t.json --map-port 7790 --key-file /nonexistent/key").unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.starts_with("the live map needs the overlay key"),
            "{text}"
        );
        let e = config("b --topology t.json --port 65530 --map-port 7790").unwrap_err();
        assert!(format!("{e:#}").contains("give --report-port"), "{e:#}");
    }
}
