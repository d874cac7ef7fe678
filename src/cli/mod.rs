//! The command line: how `overlayd`'s arguments become a role's configuration or a tool's run.
//!
//! One module per role, each holding its clap struct and a `TryFrom` into that role's config
//! type: [`bootstrapper`], [`server`], [`node`] (also `--role edge`) and [`client`]; the options
//! that servers, nodes and edges share are in [`overlay`]. The tools are grouped by what they
//! touch: [`setup`] (`keygen`, `check-topology`: files prepared before a run), [`inspect`]
//! (`status`, `trace`: ask a running daemon) and [`emulate`] (`core-scenario`, `netns`).
//!
//! Each role has its own option set (and its own `--help`), so [`parse`] takes `--role` out of
//! the arguments first and hands the rest to that role's parser; without a role the arguments
//! name a tool. Every error clap finds is one line on stderr and exit status 2, printed here;
//! what only the conversion can judge comes back as a [`CliError`], for the binary to print as
//! one line (exit 2 for a bad argument, 1 for anything else that stops a role before it runs).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod bootstrapper;
pub mod client;
pub mod emulate;
pub mod inspect;
pub mod node;
pub mod overlay;
pub mod server;
pub mod setup;

pub use bootstrapper::BootstrapperArgs;
pub use client::ClientArgs;
pub use node::NodeArgs;
pub use server::ServerArgs;

pub const DEFAULT_OVERLAY_PORT: u16 = 7701;
pub const DEFAULT_EDGE_PORT: u16 = 7702;
pub const DEFAULT_CLIENT_PORT: u16 = 7703;
pub const DEFAULT_KEY_FILE: &str = "overlayd.key";

const ROLES_HELP: &str = "\
Roles (run `overlayd --role ROLE --help` for each role's options):
  bootstrapper  serves each device its entry of a topology JSON file
  server        streams the videos of a folder into the overlay
  node          overlay relay; an edge if the topology says \"edge\": true
  edge          overlay relay forced to be an edge (serves clients over UDP)
  client        asks an edge for a video and plays or records it

Examples:
  overlayd keygen --out overlayd.key
  overlayd check-topology topology/loopback-diamond.json
  overlayd --role bootstrapper --topology topology/loopback-diamond.json --bind 127.0.1.100
  overlayd --role node --name O1 --bootstrap 127.0.1.100 --bind 127.0.1.2
  overlayd status --node 127.0.1.2          # what O1 knows (its control endpoint)
  overlayd trace VIDEO --from 127.0.1.2     # the video's tree below O1, hop by hop
  overlayd --role bootstrapper --topology T.json --bind 127.0.1.100 --map-port 7790
                                            # live map at http://127.0.1.100:7790/

Default ports: bootstrapper 7700/tcp, overlay 7701/tcp, edge 7702/udp, client 7703/udp,
control endpoint 7704/tcp (plain HTTP, loopback only unless --control-bind), live map
reports 7710/tcp (bootstrap port + 10, encrypted with the overlay key).
Logging: --log-level or RUST_LOG (e.g. RUST_LOG=overlayd=debug).";

/// Top-level command line (no role given).
#[derive(Parser, Debug)]
#[command(
    name = "overlayd",
    version,
    about = "Application-layer multicast overlay for live video",
    after_help = ROLES_HELP
)]
struct Cli {
    /// Which device to run (see the list below).
    #[arg(long, value_enum)]
    role: Option<RoleName>,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum RoleName {
    Bootstrapper,
    Server,
    Node,
    Edge,
    Client,
}

/// The tools: everything `overlayd` does besides running a device.
#[derive(Subcommand, Debug)]
pub enum Tool {
    /// Write a new random pre-shared overlay key (hex, mode 0600).
    Keygen(setup::KeygenArgs),
    /// Check a topology file: print errors and warnings, exit non-zero on errors.
    CheckTopology(setup::CheckTopologyArgs),
    /// Show what a running daemon knows: neighbours, parent and route tables, grandfathers,
    /// link counters, edge clients (from its control endpoint).
    Status(inspect::StatusArgs),
    /// Trace a video's distribution tree from a node down, with the delay of every hop.
    Trace(inspect::TraceArgs),
    /// Generate CORE scenario files (CORE 9 .xml, legacy .imn) from topology files.
    CoreScenario(emulate::CoreScenarioArgs),
    /// Network-namespace emulator: build a topology, run it, inject faults (needs root).
    Netns(emulate::NetnsArgs),
}

impl Tool {
    /// Runs the tool; its exit status on success.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Tool::Keygen(a) => a.run(),
            Tool::CheckTopology(a) => Ok(a.run()),
            Tool::Status(a) => a.run(),
            Tool::Trace(a) => a.run(),
            Tool::CoreScenario(a) => a.run(),
            Tool::Netns(a) => a.run(),
        }
    }
}

/// What the command line asks for, parsed and checked by clap.
#[derive(Debug)]
pub enum Command {
    Bootstrapper(BootstrapperArgs),
    Server(ServerArgs),
    /// `--role node` or `--role edge` (then [`NodeArgs::forced_edge`] is set).
    Node(NodeArgs),
    Client(ClientArgs),
    Tool(Tool),
}

impl Command {
    /// The `--log-level` of a role; tools log nothing.
    pub fn log_level(&self) -> Option<&str> {
        let log = match self {
            Command::Bootstrapper(a) => &a.log,
            Command::Server(a) => &a.overlay.log,
            Command::Node(a) => &a.overlay.log,
            Command::Client(a) => &a.log,
            Command::Tool(_) => return None,
        };
        Some(&log.log_level)
    }
}

/// Logging options shared by every role.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
}

/// Why a parsed command line cannot start its role.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An argument that clap accepted but the role cannot use (exit status 2, as for clap's
    /// own argument errors).
    #[error("{0}")]
    Usage(String),
    /// Anything else that stops the role or tool (exit status 1); shown with its causes.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Parses the whole command line (`args[0]` is the program). On `--help`, `--version` or an
/// argument error it prints (help to stdout, the error as one line to stderr) and returns the
/// exit status instead.
pub fn parse(mut args: Vec<OsString>) -> Result<Command, ExitCode> {
    let Some(role) = take_role(&mut args)? else {
        let cli: Cli = parse_as(args)?;
        return match cli.command {
            Some(tool) => Ok(Command::Tool(tool)),
            None => {
                eprintln!("overlayd: give --role ROLE or a command (see --help)");
                Err(ExitCode::from(2))
            }
        };
    };
    let Ok(role) = RoleName::from_str(&role, true) else {
        eprintln!(
            "overlayd: unknown role '{role}': expected bootstrapper, server, node, edge or client"
        );
        return Err(ExitCode::from(2));
    };
    let role_name = format!("{role:?}").to_lowercase();
    args[0] = format!("overlayd --role {role_name}").into();
    Ok(match role {
        RoleName::Bootstrapper => Command::Bootstrapper(parse_as(args)?),
        RoleName::Server => Command::Server(parse_as(args)?),
        RoleName::Node | RoleName::Edge => {
            let mut a: NodeArgs = parse_as(args)?;
            a.forced_edge = role == RoleName::Edge;
            Command::Node(a)
        }
        RoleName::Client => Command::Client(parse_as(args)?),
    })
}

/// Parse with clap; argument errors become one line and exit status 2.
fn parse_as<T: Parser>(args: Vec<OsString>) -> Result<T, ExitCode> {
    match T::command().try_get_matches_from(args) {
        Ok(m) => T::from_arg_matches(&m).map_err(|e| arg_error(&e)),
        Err(e) => Err(arg_error(&e)),
    }
}

fn arg_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("overlayd: {first} (see --help)");
            ExitCode::from(2)
        }
    }
}

/// Take `--role X` / `--role=X` out of the arguments.
fn take_role(args: &mut Vec<OsString>) -> Result<Option<String>, ExitCode> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        if a == "--" {
            break;
        }
        if a == "--role" {
            if i + 1 >= args.len() {
                eprintln!(
                    "overlayd: --role needs a value: bootstrapper, server, node, edge or client"
                );
                return Err(ExitCode::from(2));
            }
            let v = args[i + 1].to_string_lossy().into_owned();
            args.drain(i..i + 2);
            return Ok(Some(v));
        }
        if let Some(v) = a.strip_prefix("--role=") {
            let v = v.to_string();
            args.remove(i);
            return Ok(Some(v));
        }
        i += 1;
    }
    Ok(None)
}

/// `--bootstrap IP[:PORT]` of every role that asks the bootstrapper.
fn parse_bootstrap(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    use crate::net::bootstrap_client::{parse_bootstrap_addr, DEFAULT_BOOTSTRAP_PORT};
    use anyhow::Context;
    parse_bootstrap_addr(s, DEFAULT_BOOTSTRAP_PORT)
        .with_context(|| format!("bad --bootstrap '{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        std::iter::once("overlayd")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn the_role_picks_the_parser_wherever_it_stands() {
        let c = parse(args("--name O1 --role=edge --bootstrap 10.0.0.1")).unwrap();
        let Command::Node(a) = c else { panic!("{c:?}") };
        assert!(a.forced_edge);
        assert_eq!(a.overlay.name, "O1");
        let c = parse(args("--role NODE --name O1 --bootstrap 10.0.0.1")).unwrap();
        assert!(matches!(&c, Command::Node(a) if !a.forced_edge), "{c:?}");
        assert_eq!(c.log_level(), Some("info"));
        let c = parse(args("check-topology t.json")).unwrap();
        assert!(matches!(&c, Command::Tool(Tool::CheckTopology(_))), "{c:?}");
        assert_eq!(c.log_level(), None);
    }

    #[test]
    fn role_after_a_double_dash_is_not_a_role() {
        let mut a = args("netns exec O1 -- --role node");
        assert_eq!(take_role(&mut a), Ok(None));
        assert_eq!(a.len(), 7);
        let mut a = args("--log-level debug --role client --name C1");
        assert_eq!(take_role(&mut a), Ok(Some("client".to_string())));
        assert_eq!(a, args("--log-level debug --name C1"));
    }

    #[test]
    fn bad_role_lines_are_exit_status_2() {
        for line in ["--role", "--role toaster", "", "--role node --name O1"] {
            assert_eq!(parse(args(line)).unwrap_err(), ExitCode::from(2), "{line}");
        }
        assert_eq!(
            parse(args("--role client --help")).unwrap_err(),
            ExitCode::SUCCESS
        );
    }
}
